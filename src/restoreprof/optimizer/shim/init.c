/*
 * Start-up: the constructor that reads the settings, loads the real driver when its path is
 * known, and starts the control channel for applications run under the library. It sits above
 * every other file; nothing calls into it.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <stdlib.h>
#include <string.h>

__attribute__((constructor)) static void rp_init(void)
{
    rp_config_load();
    /* With an explicit driver path, load it now: the program's own dlopen("libcuda.so.1")
     * then finds it by soname instead of searching the system for one. */
    const char *path = getenv("RESTOREPROF_REAL_LIBCUDA");
    if (path && *path)
        rp_load_real();
    /* The control channel belongs to applications started under the library, not to a
     * program (restoreprof itself) that only loads it for its engine. */
    const char *preload = getenv("LD_PRELOAD");
    if (rp_config.offload && preload && strstr(preload, "librestoreprof_shim"))
        rp_control_start();
}
