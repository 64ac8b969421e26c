"""Issue 15 on the GPU machine, side by side in one run: checkpoint into the page cache, a cold
restore against the disk's rate, incremental and replica dedup, and the damaged-chunk refusal.

    sudo .venv/bin/python benchmarks/bench_storage.py [--dir /var/tmp/rp-storage] [--layers 32]

Needs root (CRIU, drop_caches), one GPU with 20 GB free, torch, ~40 GB of disk and ~60 GB of
RAM. Runs about 4-6 minutes for the 16 GB model (32 layers); --layers 4 makes a 3 GB smoke run.
Dry run on a machine without a GPU (the fake driver, no torch; about a minute):

    RESTOREPROF_LIBCUDA=$(.venv/bin/python tests/fakecuda/build.py) \
        sudo -E .venv/bin/python benchmarks/bench_storage.py --smoke-mib 256

Steps (each printed with its measured numbers, then a JSON summary on the last line):
  1. process A (Llama-3-8B-shaped, 16.06 GB bf16, seed 1) under restoreprof exec
  2. checkpoint 1 of A into the store, the process STOPPED (a preemption: its downtime): the
     wall time (target <= 2.5 s), every step of it, and the offload's GB/s into the page cache
  3. A restored from checkpoint 1 (warm page cache), its steps, and A verified bit-exact
  4. checkpoint 2 of the restored A, unchanged, stopped: its steps, and the bytes written vs
     checkpoint 1's (target <= 5 %)
  5. process B, same weights: checkpoint 3: share of its chunks already stored (target >= 95 %)
  6. the disk's cold read rate (a 4 GiB file, 8 readers, caches dropped), then a cold restore of
     checkpoint 2 (caches dropped): wall time against bytes read from disk / that rate
     (target <= 1.1x); A verified bit-exact
  7. one chunk of checkpoint 3 damaged in the store: the restore refuses, B stays held

With --prefault-gib N, before anything: N GiB of anonymous memory touched once and freed (on
the GPU machine, a fresh VM, memory touched for the first time is backed by the hypervisor on
the spot: buffered writes into it ran at 2.3 GB/s with 8 threads, then at 26 to 33 GB/s once
touched; benchmarks/h100/diag_write.py). A host that has run anything has done this already.

With --pre-copy, first (and with --pre-copy-only, instead of steps 2-7 but for A's checkpoint 1,
the plain one beside it):
  0. process C (other weights, seed 2) checkpointed with --pre-copy, stopped: its chunks written
     while it ran, then written back to disk, then the checkpoint proper; the downtime (target
     <= 2.5 s), the whole command, and C restored and verified bit-exact
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:  # a container without it: the "cold" figures are then warm
        print(f"   WARNING: cannot drop caches ({exc.strerror}): cold figures are not cold",
              flush=True)


def disk_read_kib() -> int:
    """KiB read from block devices so far (pgpgin)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("pgpgin "):
            return int(line.split()[1])
    return 0


def disk_read_gbps(folder: Path, gib: int = 4, readers: int = 8) -> float:
    """Cold read rate of the disk under folder: a file written, synced, dropped, read back."""
    path = folder / "disk-rate.bin"
    block = os.urandom(64 << 20)
    with open(path, "wb") as f:
        for _ in range(gib * 16):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    drop_caches()
    size, chunk = path.stat().st_size, 8 << 20

    def read(i: int) -> int:
        fd = os.open(path, os.O_RDONLY)
        done = 0
        try:
            for off in range(i * chunk, size, readers * chunk):
                done += len(os.pread(fd, chunk, off))
        finally:
            os.close(fd)
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(read, range(readers)))
    seconds = time.perf_counter() - start
    path.unlink()
    return total / seconds / 1e9


def chunk_read_gbps(store, readers: int = 16) -> float:
    """Cold read rate of every chunk file in the store (whole files, 16 readers)."""
    files = list(store.chunk_files())
    drop_caches()

    def read(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            return sum(len(b) for b in iter(lambda: os.read(fd, 16 << 20), b""))
        finally:
            os.close(fd)

    start = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(read, files))
    return total / (time.perf_counter() - start) / 1e9


def dirty_gb() -> tuple[float, float]:
    """GB of the page cache dirty, and under writeback, now (/proc/meminfo)."""
    kib = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        kib[key] = int(value.split()[0])
    return kib.get("Dirty", 0) * 1024 / 1e9, kib.get("Writeback", 0) * 1024 / 1e9


def fsync_probe_ms(folder: Path, runs: int = 5) -> float:
    """Median ms of a small file's write + fsync + rename in folder: what one journal phase
    cost when the journal was fsynced without --sync (it no longer is)."""
    times = []
    for i in range(runs):
        tmp, path = folder / f".fsync-probe-{i}.tmp", folder / f".fsync-probe-{i}"
        start = time.perf_counter()
        with open(tmp, "wb") as f:
            f.write(b"x" * 1024)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        times.append(time.perf_counter() - start)
        path.unlink()
    return sorted(times)[runs // 2] * 1e3


def start_model(state: Path, seed: int, layers: int, smoke_mib: int = 0):
    from restoreprof.workloads.controller import HeldMemory

    if smoke_mib:  # no torch, no GPU: the fake driver's memory (a dry run of this script)
        return HeldMemory.start(state, 16, gpu_mib=smoke_mib, seed=seed,
                                prefix=[sys.executable, "-m", "restoreprof", "exec", "--"])
    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable,
           str(REPO / "benchmarks" / "_llama_weights.py"), "--state", str(state),
           "--seed", str(seed), "--layers", str(layers)]
    return HeldMemory.start_command(cmd, state, timeout_s=300)


def step_s(result, name: str) -> float:
    return sum(s.seconds for s in result.steps if s.name == name)


def show_steps(result, wall_s: float) -> dict:
    """Print every step of a checkpoint or restore, and how much of the wall time they cover;
    returns {step: seconds} (a name seen twice is summed)."""
    from restoreprof.commands._output import print_steps

    print_steps(result.steps)
    print(f"   wall {wall_s:.3f} s; its steps span {result.total_s:.3f} s "
          f"({wall_s - result.total_s:.3f} s outside them)", flush=True)
    steps: dict[str, float] = {}
    for s in result.steps:
        steps[s.name] = round(steps.get(s.name, 0.0) + s.seconds, 4)
    return steps


def offload_parts(record: dict) -> str:
    """The offload inside the library: release hooks, the snapshot, giving the memory back."""
    hooks, ready = record.get("release_seconds", 0.0), record.get("ready_seconds", 0.0)
    library = record.get("library_seconds", 0.0)
    return (f"inside the library {library:.3f} s: release hooks {hooks:.3f}, snapshot "
            f"{ready - hooks:.3f}, memory given back {library - ready:.3f}")


def vm_writeback_settings() -> str:
    names = ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes",
             "dirty_expire_centisecs")
    return ", ".join(f"{n}={Path('/proc/sys/vm', n).read_text().strip()}" for n in names)


def pre_copy_run(args, store_dir: Path, out: dict) -> None:
    """Step 0: process C checkpointed with --pre-copy, then restored and verified."""
    from restoreprof.checkpoint import checkpoint, restore

    print(f"   vm: {vm_writeback_settings()}", flush=True)
    c = start_model(args.dir / "state-c", 2, args.layers, args.smoke_mib)
    print(f"0. process C (other weights): PID {c.pid}", flush=True)
    result, wall = timed(checkpoint, c.pid, args.dir / "c0", store=store_dir,
                         leave_running=False, pre_copy=True)
    rec = result.manifest.processes[0].offload
    pre = rec.get("pre_copy", {})
    out["pre_copy"] = {"downtime_s": result.downtime_s, "total_s": wall,
                       "steps_s": result.total_s, "bytes": rec["bytes"],
                       "pre_copy_written_bytes": pre.get("written_bytes", 0),
                       "pre_copy_s": pre.get("seconds", 0.0),
                       "written_at_stop_bytes": rec["written_bytes"],
                       "offload_s": rec["seconds"], "criu_dump_s": step_s(result, "criu dump")}
    print(f"   checkpoint with --pre-copy, process stopped: downtime {result.downtime_s:.2f} s "
          f"(target <= 2.5 s) of {wall:.2f} s in all; pre-copy wrote "
          f"{pre.get('written_bytes', 0) / 1e9:.2f} GB in {pre.get('seconds', 0.0):.2f} s "
          f"while C ran; the stop wrote {rec['written_bytes'] / 1e6:.1f} MB; offload "
          f"{rec['seconds']:.2f} s ({offload_parts(rec)})", flush=True)
    out["pre_copy"]["steps"] = show_steps(result, wall)
    restored, wall_r = timed(restore, args.dir / "c0")
    out["pre_copy"]["restore_s"] = wall_r
    out["pre_copy"]["restore_notes"] = restored.notes
    out["pre_copy"]["verified"] = c.verify()
    print(f"   C restored in {wall_r:.2f} s, verified bit-exact: {out['pre_copy']['verified']}",
          flush=True)
    c.stop()


def prefault(gib: int, workers: int = 8) -> None:
    """Touch gib GiB of anonymous memory once (MAP_POPULATE, in parallel processes), then free
    it; prints the first-touch rate."""
    size = (gib << 30) // workers
    code = (f"import mmap; mmap.mmap(-1, {size}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | "
            f"mmap.MAP_POPULATE)")
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(workers)]
    failed = sum(p.wait() != 0 for p in procs)
    seconds = time.monotonic() - start
    print(f"   prefault: {gib} GiB of memory touched once in {seconds:.1f} s "
          f"({gib * (1 << 30) / seconds / 1e9:.1f} GB/s){'; FAILED in part' if failed else ''}",
          flush=True)


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


def main() -> int:
    from restoreprof.checkpoint import checkpoint, restore
    from restoreprof.errors import RestoreprofError
    from restoreprof.store.layout import Store
    from restoreprof.store.measure import measure
    from restoreprof.store.table import read_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/rp-storage"))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--chunk-mb", type=int, default=0,
                        help="the store's chunk size (default: the store's default)")
    parser.add_argument("--prefault-gib", type=int, default=0,
                        help="touch this much memory once first (see the docstring)")
    parser.add_argument("--pre-copy", action="store_true",
                        help="first, step 0: another process checkpointed with --pre-copy")
    parser.add_argument("--pre-copy-only", action="store_true",
                        help="step 0 and A's checkpoint 1 (plain, beside it) and its restore only")
    parser.add_argument("--smoke-mib", type=int, default=0,
                        help="dry run without torch: hold_memory with this much 'GPU' memory "
                             "(for the fake driver: see this script's docstring)")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    store_dir = args.dir / "store"
    out: dict = {}
    if args.chunk_mb:
        Store.open(store_dir, create=True, chunk_mb=args.chunk_mb)
    print(f"store {store_dir}: {Store.open(store_dir, create=True).chunk_mb} MiB chunks",
          flush=True)

    if args.prefault_gib:
        prefault(args.prefault_gib)
    if args.pre_copy or args.pre_copy_only:
        pre_copy_run(args, store_dir, out)
    a = start_model(args.dir / "state-a", 1, args.layers, args.smoke_mib)
    print(f"1. process A: PID {a.pid}", flush=True)
    # The preemption: A stopped and gone once the checkpoint returns; this is its downtime.
    c1, wall1 = timed(checkpoint, a.pid, args.dir / "c1", store=store_dir, leave_running=False)
    rec1 = c1.manifest.processes[0].offload
    out["checkpoint1"] = {"stopped": True, "total_s": wall1, "steps_s": c1.total_s,
                          "offload_s": rec1["seconds"], "bytes": rec1["bytes"],
                          "offload_gbps": rec1["bytes"] / rec1["seconds"] / 1e9,
                          "written_bytes": rec1["written_bytes"],
                          "criu_dump_s": step_s(c1, "criu dump")}
    print(f"2. checkpoint 1, process stopped (a preemption's downtime): {wall1:.2f} s "
          f"(target <= 2.5 s); offload {rec1['bytes'] / 1e9:.2f} GB in {rec1['seconds']:.2f} s "
          f"({out['checkpoint1']['offload_gbps']:.1f} GB/s into the page cache)", flush=True)
    print(f"   offload {offload_parts(rec1)}", flush=True)
    out["checkpoint1"]["steps"] = show_steps(c1, wall1)
    dirty, writeback = dirty_gb()
    probe = fsync_probe_ms(args.dir)
    out["checkpoint1"]["after"] = {"dirty_gb": dirty, "writeback_gb": writeback,
                                   "small_fsync_ms": probe}
    print(f"   diagnostic: just after it, {dirty:.1f} GB dirty and {writeback:.1f} GB under "
          f"writeback; a small file's write + fsync + rename takes {probe:.1f} ms (median of 5):"
          f" what each of the 6 fsyncs after the offload (5 journal phases, the manifest) cost "
          f"while they were made without --sync",
          flush=True)

    r1, wall_r1 = timed(restore, args.dir / "c1")
    out["restore1"] = {"seconds": wall_r1, "notes": r1.notes}
    print(f"3. A restored from checkpoint 1 (warm page cache): {wall_r1:.2f} s"
          f"{'; notes: ' + '; '.join(r1.notes) if r1.notes else ''}", flush=True)
    out["restore1"]["steps"] = show_steps(r1, wall_r1)
    out["restore1"]["verified"] = a.verify()
    print(f"   A verified bit-exact: {out['restore1']['verified']}", flush=True)
    if args.pre_copy_only:
        a.stop()
        print(json.dumps(out))
        return 0

    c2, wall2 = timed(checkpoint, a.pid, args.dir / "c2", store=store_dir, leave_running=False)
    rec2 = c2.manifest.processes[0].offload
    share2 = rec2["written_bytes"] / max(1, rec1["written_bytes"])
    out["checkpoint2"] = {"stopped": True, "total_s": wall2, "steps_s": c2.total_s,
                          "offload_s": rec2["seconds"], "written_bytes": rec2["written_bytes"],
                          "written_vs_first": share2}
    print(f"4. checkpoint 2 of the restored A (unchanged, stopped): {wall2:.2f} s, wrote "
          f"{rec2['written_bytes'] / 1e6:.1f} MB = {100 * share2:.2f} % of checkpoint 1's "
          f"(target <= 5 %), offload {rec2['seconds']:.2f} s", flush=True)
    out["checkpoint2"]["steps"] = show_steps(c2, wall2)

    b = start_model(args.dir / "state-b", 1, args.layers, args.smoke_mib)
    c3 = checkpoint(b.pid, args.dir / "c3", store=store_dir, leave_running=False)
    rec3 = c3.manifest.processes[0].offload
    t1 = read_table(args.dir / "c1" / rec1["snapshot"])
    t3 = read_table(args.dir / "c3" / rec3["snapshot"])
    chunks_a, chunks_b = {h for h, _ in t1.chunks()}, {h for h, _ in t3.chunks()}
    shared = len(chunks_a & chunks_b) / max(1, len(chunks_b))
    out["replica"] = {"shared_chunks": shared, "written_bytes": rec3["written_bytes"],
                      "bytes": rec3["bytes"]}
    print(f"5. process B (same weights): {100 * shared:.1f} % of its chunks shared with A "
          f"(target >= 95 %); its checkpoint wrote {rec3['written_bytes'] / 1e9:.2f} of "
          f"{rec3['bytes'] / 1e9:.2f} GB", flush=True)
    m = measure(Store.open(store_dir))
    out["store"] = {k: m[k] for k in ("logical_bytes", "stored_bytes", "dedup_ratio", "chunks")}
    print(f"   store: {m['logical_bytes'] / 1e9:.1f} GB named, {m['stored_bytes'] / 1e9:.1f} GB "
          f"stored, dedup ratio {m['dedup_ratio']}", flush=True)

    rate = disk_read_gbps(args.dir)
    drop_caches()
    before = disk_read_kib()
    start = time.monotonic()
    r = restore(args.dir / "c2")
    cold = time.monotonic() - start
    read_bytes = (disk_read_kib() - before) * 1024
    floor = read_bytes / (rate * 1e9)
    out["cold_restore"] = {"seconds": cold, "disk_read_gbps": rate, "bytes_read": read_bytes,
                           "floor_s": floor, "ratio": cold / floor, "notes": r.notes,
                           "steps": {s.name: round(s.seconds, 3) for s in r.steps}}
    print(f"6. disk reads {rate:.2f} GB/s cold; cold restore {cold:.2f} s, {read_bytes / 1e9:.2f} "
          f"GB read from disk: floor {floor:.2f} s, ratio {cold / floor:.2f} (target <= 1.1)"
          f"{'; notes: ' + '; '.join(r.notes) if r.notes else ''}", flush=True)
    out["cold_restore"]["verified"] = a.verify()
    print(f"   A verified bit-exact: {out['cold_restore']['verified']}", flush=True)
    a.stop()
    chunk_rate = chunk_read_gbps(Store.open(store_dir))
    out["cold_restore"]["chunk_files_read_gbps"] = chunk_rate
    print(f"   diagnostic: the store's chunk files read cold at {chunk_rate:.2f} GB/s (16 "
          f"readers) against {rate:.2f} GB/s for one big file", flush=True)

    from _snapshots import damage_chunk

    damaged = damage_chunk(args.dir / "c3" / rec3["snapshot"], index=len(t3.chunks()) // 2)
    try:
        restore(args.dir / "c3")
        refused = "NOT REFUSED"
    except RestoreprofError as exc:
        refused = str(exc).splitlines()[0]
    from restoreprof.optimizer.control import ShimControl

    held = b.alive() and ShimControl(b.pid).status()["gate"] == "closed"
    out["damage"] = {"chunk": damaged.name, "refused": refused, "held": held}
    print(f"7. damaged chunk {damaged.name[:16]}: {refused}; B held: {held}", flush=True)
    b.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
