/*
 * The CUDA driver's process checkpoint API, opened with dlopen: the plugin builds and loads
 * without a driver, and CRIU runs without one for every process that does not use CUDA.
 * RESTOREPROF_LIBCUDA (restoreprof.system.paths) is tried first, then libcuda.so.1.
 */
#define _GNU_SOURCE
#include "plugin.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

struct rpc_cuda rpc_cu;
static void *handle;
static int loaded; /* 1 loaded and initialised, -1 failed for good */

static void *entry(const char *name, char *err, size_t len)
{
    void *fn = dlsym(handle, name);
    if (!fn)
        snprintf(err, len, "the CUDA driver has no %s (driver >= 550 is needed)", name);
    return fn;
}

int rpc_cuda_load(char *err, size_t len)
{
    if (loaded)
        return loaded > 0 ? 0 : (snprintf(err, len, "the CUDA driver could not be loaded"), -1);
    loaded = -1;
    const char *override = getenv("RESTOREPROF_LIBCUDA");
    handle = override && *override ? dlopen(override, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!handle)
        handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(err, len, "cannot load libcuda.so.1: %s", dlerror());
        return -1;
    }
    if (!(rpc_cu.init = entry("cuInit", err, len)) ||
        !(rpc_cu.get_state = entry("cuCheckpointProcessGetState", err, len)) ||
        !(rpc_cu.lock = entry("cuCheckpointProcessLock", err, len)) ||
        !(rpc_cu.checkpoint = entry("cuCheckpointProcessCheckpoint", err, len)) ||
        !(rpc_cu.restore = entry("cuCheckpointProcessRestore", err, len)) ||
        !(rpc_cu.unlock = entry("cuCheckpointProcessUnlock", err, len)) ||
        !(rpc_cu.error_name = entry("cuGetErrorName", err, len)))
        return -1;
    /* The driver's restore needs cuInit in the caller (or persistence mode). */
    CUresult rc = rpc_cu.init(0);
    if (rc != CUDA_SUCCESS) {
        snprintf(err, len, "cuInit failed: %s", rpc_cuda_error(rc));
        return -1;
    }
    loaded = 1;
    return 0;
}

const char *rpc_cuda_error(CUresult rc)
{
    const char *name = NULL;
    if (rpc_cu.error_name && rpc_cu.error_name(rc, &name) == CUDA_SUCCESS && name)
        return name;
    return "unknown CUDA error";
}

const char *rpc_cuda_state_name(CUprocessState state)
{
    switch (state) {
    case CU_PROCESS_STATE_RUNNING:
        return "running";
    case CU_PROCESS_STATE_LOCKED:
        return "locked";
    case CU_PROCESS_STATE_CHECKPOINTED:
        return "checkpointed";
    case CU_PROCESS_STATE_FAILED:
        return "failed";
    default:
        return "in an unknown state";
    }
}
