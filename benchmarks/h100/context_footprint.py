"""What a bare CUDA context holds in device memory, and what shrinking its limits gives back.

    python benchmarks/h100/context_footprint.py

The driver's checkpoint copies a context's device memory into the process (CRIU then dumps it,
and the driver's restore copies it back): this measures how much of it the stack-size limit
(local memory for every resident thread) accounts for.
"""

import pynvml
from cuda.bindings import driver as cu

pynvml.nvmlInit()
nvml_gpu = pynvml.nvmlDeviceGetHandleByIndex(0)


def used() -> int:
    return pynvml.nvmlDeviceGetMemoryInfo(nvml_gpu).used


cu.cuInit(0)
before = used()
ctx = cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1]
cu.cuCtxSetCurrent(ctx)
with_ctx = used()
print(f"context: {(with_ctx - before) / 2**20:.0f} MiB of device memory")
limits = {name: getattr(cu.CUlimit, name) for name in
          ("CU_LIMIT_STACK_SIZE", "CU_LIMIT_MALLOC_HEAP_SIZE", "CU_LIMIT_PRINTF_FIFO_SIZE")}
for name, limit in limits.items():
    print(f"{name} = {cu.cuCtxGetLimit(limit)[1]}")
stack = cu.cuCtxGetLimit(limits["CU_LIMIT_STACK_SIZE"])[1]
for value in (16, 256, stack):
    rc = cu.cuCtxSetLimit(limits["CU_LIMIT_STACK_SIZE"], value)[0]
    print(f"stack {value}: rc {int(rc)}, context now {(used() - before) / 2**20:.0f} MiB")
