"""The interception library in real processes, on the fake libcuda.

A small C program reaches the driver in the three ways real programs do (by symbol, through
cuGetProcAddress, through dlsym on a dlopen'd handle), copies pageable memory to the device and
back, checks the bytes and prints the fake driver's call counters. cuda-python is the fourth.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from restoreprof.optimizer.shim.build import build_library
from restoreprof.system.cbuild import cuda_include_dir

MIB = 1 << 20

PROBE_C = textwrap.dedent(r"""
    #define _GNU_SOURCE
    #include <cuda.h>
    #include <dlfcn.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>

    typedef CUresult (*htod_t)(CUdeviceptr, const void *, size_t);
    typedef CUresult (*dtoh_t)(void *, CUdeviceptr, size_t);
    typedef unsigned long (*calls_t)(const char *);

    #define CHECK(x) do { CUresult rc_ = (x); if (rc_) { \
        fprintf(stderr, "%s: %d\n", #x, rc_); return 2; } } while (0)

    /* probe MODE SIZE OFFSET PINNED: MODE is symbol, procaddr, dlsym or async */
    int main(int argc, char **argv) {
        const char *mode = argv[1];
        size_t size = strtoull(argv[2], 0, 0), off = strtoull(argv[3], 0, 0);
        int pinned = atoi(argv[4]);
        void *lib = dlopen("libcuda.so.1", RTLD_NOW);
        calls_t calls = (calls_t)dlsym(lib, "fakecuda_calls");
        htod_t htod = cuMemcpyHtoD_v2;
        dtoh_t dtoh = cuMemcpyDtoH_v2;
        CUdevice dev; CUcontext ctx; CUdeviceptr d;
        CHECK(cuInit(0));
        CHECK(cuDeviceGet(&dev, 0));
        CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
        CHECK(cuCtxSetCurrent(ctx));
        if (!strcmp(mode, "procaddr")) {
            CUdriverProcAddressQueryResult st;
            CHECK(cuGetProcAddress_v2("cuMemcpyHtoD", (void **)&htod, 12000, 0, &st));
            CHECK(cuGetProcAddress_v2("cuMemcpyDtoH", (void **)&dtoh, 12000, 0, &st));
        } else if (!strcmp(mode, "dlsym")) {
            htod = (htod_t)dlsym(lib, "cuMemcpyHtoD_v2");
            dtoh = (dtoh_t)dlsym(lib, "cuMemcpyDtoH_v2");
        }
        unsigned char *src, *dst;
        if (pinned) {
            CHECK(cuMemAllocHost_v2((void **)&src, size + off));
            CHECK(cuMemAllocHost_v2((void **)&dst, size + off));
        } else {
            src = malloc(size + off); dst = malloc(size + off);
        }
        for (size_t i = 0; i < size + off; i++) src[i] = (unsigned char)(i * 2654435761u >> 13);
        memset(dst, 0, size + off);
        CHECK(cuMemAlloc_v2(&d, size + off));
        if (!strcmp(mode, "async")) {
            CHECK(cuMemcpyHtoDAsync_v2(d + off, src + off, size, 0));
            CHECK(cuMemcpyDtoHAsync_v2(dst + off, d + off, size, 0));
        } else {
            CHECK(htod(d + off, src + off, size));
            CHECK(dtoh(dst + off, d + off, size));
        }
        CHECK(cuMemFree_v2(d));
        printf("{\"equal\": %d, \"htod\": %lu, \"dtoh\": %lu, \"htod_async\": %lu,"
               " \"dtoh_async\": %lu}\n",
               memcmp(src + off, dst + off, size) == 0,
               calls("cuMemcpyHtoD_v2"), calls("cuMemcpyDtoH_v2"),
               calls("cuMemcpyHtoDAsync_v2"), calls("cuMemcpyDtoHAsync_v2"));
        return 0;
    }
""")


@pytest.fixture(scope="module")
def fake(fake_libcuda):
    return fake_libcuda


@pytest.fixture(scope="module")
def shim():
    return build_library()


@pytest.fixture(scope="module")
def probe(fake, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    (out / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-O1", "-o", str(out / "probe"), str(out / "probe.c"),
                    f"-I{cuda_include_dir()}", str(fake),
                    f"-Wl,-rpath,{fake.parent}", "-ldl"], check=True)
    return out / "probe"


def shim_env(fake, shim, tmp_path, **extra):
    env = dict(os.environ, LD_PRELOAD=str(shim), RESTOREPROF_REAL_LIBCUDA=str(fake),
               RESTOREPROF_LIBCUDA=str(fake), RESTOREPROF_RUN_DIR=str(tmp_path),
               RESTOREPROF_CHUNK_MB="1", RESTOREPROF_THREADS="3", RESTOREPROF_STREAMS="2",
               RESTOREPROF_MIN_INTERCEPT_BYTES=str(MIB))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_probe(probe, env, mode="symbol", size=5 * MIB + 12345, offset=7, pinned=0):
    out = subprocess.run([str(probe), mode, str(size), str(offset), str(pinned)], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def chunks(size):
    return -(-size // MIB)


@pytest.mark.parametrize("mode", ["symbol", "procaddr", "dlsym", "async"])
def test_large_pageable_copies_go_through_the_engine(probe, fake, shim, tmp_path, mode):
    size = 5 * MIB + 12345
    got = run_probe(probe, shim_env(fake, shim, tmp_path), mode, size)
    assert got["equal"] == 1
    assert got["htod"] == got["dtoh"] == 0  # the driver's sync copies were not called
    # the application's own async calls reach the shim, not the driver: only chunks are counted
    assert got["htod_async"] == chunks(size)
    assert got["dtoh_async"] == chunks(size)


def test_without_shim_the_driver_does_it(probe, fake, tmp_path):
    got = run_probe(probe, dict(os.environ), "symbol")
    assert got == {"equal": 1, "htod": 1, "dtoh": 1, "htod_async": 0, "dtoh_async": 0}


@pytest.mark.parametrize(("size", "offset"), [(MIB, 0), (MIB + 1, 1), (3 * MIB - 1, 4095),
                                              (7 * MIB + 333, 13)])
def test_odd_sizes_and_offsets_bit_exact(probe, fake, shim, tmp_path, size, offset):
    got = run_probe(probe, shim_env(fake, shim, tmp_path), "symbol", size, offset)
    assert got["equal"] == 1 and got["htod_async"] == chunks(size)


def test_small_copies_untouched(probe, fake, shim, tmp_path):
    got = run_probe(probe, shim_env(fake, shim, tmp_path), "symbol", size=4096)
    assert got["htod"] == got["dtoh"] == 1 and got["htod_async"] == got["dtoh_async"] == 0


def test_pinned_copies_untouched(probe, fake, shim, tmp_path):
    got = run_probe(probe, shim_env(fake, shim, tmp_path), "symbol", pinned=1)
    assert got["equal"] == 1
    assert got["htod"] == got["dtoh"] == 1 and got["htod_async"] == 0


@pytest.mark.parametrize("var", ["CUDA_INTERCEPT_RESTORE", "RESTOREPROF_INTERCEPT",
                                 "CRIU_CUDA_PARALLEL_RESTORE"])
def test_interception_switched_off(probe, fake, shim, tmp_path, var):
    got = run_probe(probe, shim_env(fake, shim, tmp_path, **{var: 0}), "procaddr")
    assert got["equal"] == 1 and got["htod"] == 1 and got["htod_async"] == 0


def test_injected_failure_falls_back_with_correct_data(probe, fake, shim, tmp_path):
    env = shim_env(fake, shim, tmp_path, FAKECUDA_FAIL="cuMemcpyHtoDAsync_v2:2")
    got = run_probe(probe, env, "symbol", size=6 * MIB + 5)
    assert got["equal"] == 1
    assert got["htod"] == 1  # the engine failed on its third chunk; the driver's copy ran
    assert got["dtoh"] == 0 and got["dtoh_async"] == 7


def test_bad_env_value_is_logged_and_default_kept(probe, fake, shim, tmp_path):
    env = shim_env(fake, shim, tmp_path, CRIU_CUDA_STREAMS="99")
    del env["RESTOREPROF_STREAMS"]  # it would win over the alias
    out = subprocess.run([str(probe), "symbol", str(2 * MIB), "0", "0"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0
    assert "CRIU_CUDA_STREAMS=99 is not valid (expected 1 to 32)" in out.stderr


CUDA_PYTHON_APP = textwrap.dedent("""
    import ctypes, json, os, sys
    import numpy as np
    from cuda.bindings import driver as cu
    calls = ctypes.CDLL(os.environ["RESTOREPROF_REAL_LIBCUDA"]).fakecuda_calls
    calls.restype = ctypes.c_ulong
    assert cu.cuInit(0)[0] == 0
    _, dev = cu.cuDeviceGet(0)
    _, ctx = cu.cuDevicePrimaryCtxRetain(dev)
    cu.cuCtxSetCurrent(ctx)
    size = int(sys.argv[1])
    data = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8)
    _, d = cu.cuMemAlloc(size)
    assert cu.cuMemcpyHtoD(d, data.ctypes.data, size)[0] == 0
    back = np.zeros_like(data)
    assert cu.cuMemcpyDtoH(back.ctypes.data, d, size)[0] == 0
    print(json.dumps({"equal": bool((back == data).all()),
                      "htod": calls(b"cuMemcpyHtoD_v2"),
                      "htod_async": calls(b"cuMemcpyHtoDAsync_v2")}))
""")


def test_cuda_python_is_intercepted(fake, shim, tmp_path):
    """cuda-python finds the driver with dlopen + dlsym(cuGetProcAddress) + cuGetProcAddress."""
    env = shim_env(fake, shim, tmp_path)
    out = subprocess.run([sys.executable, "-c", CUDA_PYTHON_APP, str(4 * MIB + 3)], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got == {"equal": True, "htod": 0, "htod_async": 5}


def test_exec_command_sets_up_the_environment(fake, shim, tmp_path):
    env = dict(os.environ, RESTOREPROF_LIBCUDA=str(fake), RESTOREPROF_RUN_DIR=str(tmp_path))
    env.pop("RESTOREPROF_REAL_LIBCUDA", None)
    out = subprocess.run(
        [sys.executable, "-m", "restoreprof", "exec", "--streams", "3", "--no-pinned", "--",
         "sh", "-c", "echo $LD_PRELOAD $RESTOREPROF_STREAMS $RESTOREPROF_PINNED "
                     "$RESTOREPROF_REAL_LIBCUDA"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    preload, streams, pinned, real = out.stdout.split()
    assert preload.endswith("librestoreprof_shim.so") and (streams, pinned) == ("3", "0")
    assert real == str(fake)


def test_exec_rejects_bad_env(fake, tmp_path):
    env = dict(os.environ, RESTOREPROF_LIBCUDA=str(fake), CRIU_CUDA_CHUNK_MB="lots")
    out = subprocess.run([sys.executable, "-m", "restoreprof", "exec", "--", "true"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "CRIU_CUDA_CHUNK_MB='lots' is not valid" in out.stderr
