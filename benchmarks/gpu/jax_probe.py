"""Why does a JAX process fail the driver's restore? A matrix of XLA settings, each tried two ways.

    python benchmarks/gpu/jax_probe.py [--gib 2] [--variants NAME ...] [--modes driver criu]

For each variant (environment for the JAX program), a JAX program holding --gib of weights and a
jitted matmul chain is started, and its outputs are hashed. Then:
  driver: the driver's lock + checkpoint + restore + unlock on the live process (no CRIU);
  criu:   `restoreprof checkpoint` (plain: driver + criu dump) and `restoreprof restore`.
After each, the program recomputes and compares (SIGUSR1 protocol of restoreprof.workloads). One
line per (variant, mode): ok / MISMATCH / the failure, with the kernel log's NVRM lines.
Run on the GPU machine after `source benchmarks/h100/env.sh`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROGRAM = textwrap.dedent('''
    import hashlib, os, sys
    from pathlib import Path
    import numpy as np
    import jax, jax.numpy as jnp
    from restoreprof.workloads.hold_memory import serve
    gib, state = float(sys.argv[1]), Path(sys.argv[2])
    width = 8192
    layers = max(1, int(gib * 2**30) // (width * width * 2))
    key = jax.random.PRNGKey(0)
    ws = [jax.random.normal(jax.random.fold_in(key, i), (width, width), jnp.bfloat16) * 0.01
          for i in range(layers)]
    x = jax.random.normal(key, (64, width), jnp.bfloat16)
    @jax.jit
    def forward(x, ws):
        for w in ws:
            x = jnp.tanh(x @ w)
        return x
    def digest():
        out = np.asarray(forward(x, ws).astype(jnp.float32))
        sha = hashlib.sha256(out.tobytes())
        for w in ws[:4]:
            sha.update(np.asarray(w.astype(jnp.float32)).tobytes())
        return sha.hexdigest()
    serve(state, digest(), digest)
''')

VARIANTS = {
    "default": {},
    "no-prealloc": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    "platform-alloc": {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"},
    "no-cmdbuf": {"XLA_FLAGS": "--xla_gpu_enable_command_buffer="},
    "no-prealloc+no-cmdbuf": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                              "XLA_FLAGS": "--xla_gpu_enable_command_buffer="},
    "platform+no-cmdbuf": {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform",
                           "XLA_FLAGS": "--xla_gpu_enable_command_buffer="},
    "no-cudagraph-async": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                           "XLA_FLAGS": "--xla_gpu_enable_command_buffer= "
                                        "--xla_gpu_enable_cublaslt=false"},
}


def dmesg_tail(since_lines: int) -> list[str]:
    out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out[since_lines:] if "NVRM" in line or "segfault" in line][-4:]


def dmesg_len() -> int:
    return len(subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", default=["driver", "criu"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-jax"))
    args = parser.parse_args()
    import jax

    from restoreprof.cuda import driver as cu
    from restoreprof.workloads.controller import HeldMemory
    print(f"jax {jax.__version__}, driver {cu.driver_version()}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    program = args.work / "jax_program.py"
    program.write_text(PROGRAM)
    for name in args.variants:
        for mode in args.modes:
            state = args.work / f"{name}-{mode}"
            env = {**VARIANTS[name], "PYTHONUNBUFFERED": "1"}
            start = time.monotonic()
            try:
                held = HeldMemory.start_command([sys.executable, str(program), str(args.gib),
                                                 str(state)], state, env=env, timeout_s=240)
            except Exception as exc:
                print(f"{name:<24} {mode:<6} START FAILED {str(exc)[-300:]}", flush=True)
                continue
            mark = dmesg_len()
            verdict = ""
            try:
                if mode == "driver":
                    cu.process_lock(held.pid, 20_000)
                    cu.process_checkpoint(held.pid)
                    cu.process_restore(held.pid)
                    cu.process_unlock(held.pid)
                else:
                    ckpt = args.work / f"ckpt-{name}"
                    r = subprocess.run([sys.executable, "-m", "restoreprof", "checkpoint", "-p",
                                        str(held.pid), "-D", str(ckpt)], capture_output=True,
                                       text=True, timeout=300)
                    if r.returncode:
                        raise RuntimeError("checkpoint: " + (r.stderr or r.stdout)[-400:])
                    held.stop()
                    r = subprocess.run([sys.executable, "-m", "restoreprof", "restore", "-D",
                                        str(ckpt)], capture_output=True, text=True, timeout=300)
                    if r.returncode:
                        raise RuntimeError("restore: " + (r.stderr or r.stdout)[-400:])
                verdict = "ok" if held.verify(timeout_s=120) else "MISMATCH"
            except Exception as exc:
                verdict = f"FAILED {str(exc)[-400:]}"
            finally:
                held.stop()
            seconds = time.monotonic() - start
            print(f"{name:<24} {mode:<6} {verdict} ({seconds:.1f} s)", flush=True)
            for line in dmesg_tail(mark):
                print(f"    {line}", flush=True)
            shutil.rmtree(args.work / f"ckpt-{name}", ignore_errors=True)


if __name__ == "__main__":
    main()
