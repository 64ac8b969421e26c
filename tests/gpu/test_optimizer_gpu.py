"""The optimizer on a real GPU: the library (its C engine) under cuda-python and PyTorch,
bit-exact through intercepted copies and an offload/reload."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from restoreprof.system import paths

pytestmark = pytest.mark.gpu


def _real_gpu() -> str | None:
    path = paths.libcuda_path()
    if not path or "fakecuda" in path:
        return None
    try:
        lib = ctypes.CDLL(path)
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
        return path if count.value > 0 else None
    except OSError:
        return None


LIBCUDA = _real_gpu()
needs_gpu = pytest.mark.skipif(LIBCUDA is None, reason="no NVIDIA GPU and driver here")


def _exec_env(tmp_path):
    from restoreprof.commands.exec_ import exec_environment
    from restoreprof.optimizer.config import OptimizerConfig

    env = exec_environment(OptimizerConfig(), os.environ)
    env["RESTOREPROF_RUN_DIR"] = str(tmp_path)
    return env


CUDA_PYTHON_APP = textwrap.dedent("""
    import numpy as np, os
    from cuda.bindings import driver as cu
    from restoreprof.optimizer.control import ShimControl
    cu.cuInit(0)
    cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
    n = 512 << 20
    data = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8)
    d = cu.cuMemAlloc(n)[1]
    assert cu.cuMemcpyHtoD(d, data.ctypes.data, n)[0] == 0
    back = np.zeros_like(data)
    assert cu.cuMemcpyDtoH(back.ctypes.data, d, n)[0] == 0
    assert (back == data).all()
    status = ShimControl(os.getpid()).status()
    assert status["intercepted"] >= 2 and status["allocations"] == 1, status
    print("ok")
""")


@needs_gpu
def test_shim_with_cuda_python(tmp_path):
    out = subprocess.run([sys.executable, "-c", CUDA_PYTHON_APP], env=_exec_env(tmp_path),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


TORCH_APP = textwrap.dedent("""
    import os, torch
    from restoreprof.optimizer.control import ShimControl
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(8)]).cuda()
    x = torch.randn(64, 4096)
    host = torch.randn((256 << 20) // 4)              # pageable, 256 MiB
    on_gpu = host.cuda()
    assert torch.equal(on_gpu.cpu(), host)
    before = model(x.cuda()).cpu()
    ctl = ShimControl(os.getpid())
    snap = os.path.join(os.environ["RESTOREPROF_RUN_DIR"], "torch.snap")
    import threading
    # offload from another thread, as restoreprof does from outside; this thread would wait
    # at the gate if it touched the GPU meanwhile
    t = threading.Thread(target=lambda: (ctl.offload(snap), ctl.reload(snap)))
    t.start(); t.join()
    after = model(x.cuda()).cpu()
    assert torch.equal(before, after)
    print("ok", ctl.status())
""")


@needs_gpu
def test_shim_with_pytorch(tmp_path):
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", TORCH_APP], env=_exec_env(tmp_path),
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
