/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
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
#include <string.h>
#include <sys/stat.h>

struct rpc_cuda rpc_cu;
char rpc_cuda_path[RPC_LINE];
static void *handle;
static int loaded; /* 1 loaded and initialised, -1 failed for good */

static void *entry(const char *name, char *err, size_t len)
{
    void *fn = dlsym(handle, name);
    if (!fn)
        snprintf(err, len, "the CUDA driver has no %s (driver >= 550 is needed)", name);
    return fn;
}

/* The driver library pid maps, as this process reaches it (through pid's root: a container's
 * libcuda is the host driver's, mounted in by the NVIDIA container toolkit). */
static int mapped_libcuda(int pid, char *path, size_t len)
{
    char maps[64], line[RPC_LINE];
    snprintf(maps, sizeof(maps), "/proc/%d/maps", pid);
    FILE *f = pid > 0 ? fopen(maps, "re") : NULL;
    int found = 0;
    while (f && !found && fgets(line, sizeof(line), f)) {
        char *file = strchr(line, '/');
        if (!file || !strstr(file, "/libcuda.so"))
            continue;
        file[strcspn(file, "\n")] = '\0';
        snprintf(path, len, "/proc/%d/root%s", pid, file);
        found = 1;
    }
    if (f)
        fclose(f);
    return found;
}

int rpc_cuda_load(int pid, const char *recorded, char *err, size_t len)
{
    if (loaded)
        return loaded > 0 ? 0 : (snprintf(err, len, "the CUDA driver could not be loaded"), -1);
    loaded = -1;
    /* $RESTOREPROF_LIBCUDA, the one the dump used (restore), the system's, the process's. CRIU
     * started by a container runtime gets none of the caller's environment. */
    char mapped[RPC_LINE];
    const char *choices[] = { getenv("RESTOREPROF_LIBCUDA"), recorded, "libcuda.so.1",
                              mapped_libcuda(pid, mapped, sizeof(mapped)) ? mapped : NULL };
    for (size_t i = 0; i < sizeof(choices) / sizeof(choices[0]) && !handle; i++)
        if (choices[i] && *choices[i] && (handle = dlopen(choices[i], RTLD_NOW | RTLD_LOCAL)))
            snprintf(rpc_cuda_path, sizeof(rpc_cuda_path), "%s", choices[i]);
    if (!handle) {
        snprintf(err, len, "cannot load libcuda.so.1: %s", dlerror());
        return -1;
    }
    /* Reached through a process's root: where the host has that very file at the same path
     * (the container toolkit's bind mount of the host driver), name it so; a /proc/PID path
     * is no use once PID has gone. */
    const char *inner = strncmp(rpc_cuda_path, "/proc/", 6) == 0 ? strstr(rpc_cuda_path, "/root/")
                                                                 : NULL;
    struct stat a, b;
    if (inner && stat(rpc_cuda_path, &a) == 0 && stat(inner + 5, &b) == 0 &&
        a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        memmove(rpc_cuda_path, inner + 5, strlen(inner + 5) + 1);
    if (strcmp(rpc_cuda_path, "libcuda.so.1") == 0) { /* name the file, for the record */
        Dl_info info;
        void *fn = dlsym(handle, "cuInit");
        if (fn && dladdr(fn, &info) && info.dli_fname)
            snprintf(rpc_cuda_path, sizeof(rpc_cuda_path), "%s", info.dli_fname);
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
