"""Re-record preadv_restore.rptrace (root, real eBPF): python tests/tui/data/record_fixture.py

Traces restore_workload.py with the same TraceSession that 'restoreprof trace' uses, reading a
64 MB image and copying it to the fake driver's device. Regenerate the TUI snapshots after.
"""

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from restoreprof.probes.session import Target, record  # noqa: E402
from tests.fakecuda.build import build_fake_libcuda  # noqa: E402

IMAGE_BYTES = 64 << 20


def main() -> None:
    libcuda = build_fake_libcuda()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "pages-1.img"
        image.write_bytes(os.urandom(1 << 20) * (IMAGE_BYTES >> 20))
        command = [sys.executable, str(HERE / "restore_workload.py"), str(image), str(libcuda)]
        trace = record(Target(command=command))
    # Paths of this machine's temporary folder mean nothing in a fixture.
    trace.meta.target = "command: python3 restore_workload.py pages-1.img libcuda.so.1"
    trace.meta.command = ["python3", "restore_workload.py", "pages-1.img", "libcuda.so.1"]
    trace.meta.hostname = "ci"
    for event in trace.events:
        if event.path.startswith(tmp):
            event.path = event.path.replace(tmp, "/ckpt")
    out = trace.save(HERE / "preadv_restore.rptrace")
    names = sorted({e.name for e in trace.events})
    print(f"{out}: {len(trace.events)} events, lost {trace.meta.lost_events}: {', '.join(names)}")


if __name__ == "__main__":
    main()
