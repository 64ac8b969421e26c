/*
 * The library's configuration: the environment variables of restoreprof.optimizer.config
 * (which validates them before `restoreprof exec` starts a program). Here a bad value cannot
 * stop the program, so it is logged and the default kept.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <stdlib.h>

struct rp_config rp_config;
struct rp_stats rp_stats;

/* The first variable that is set wins: RESTOREPROF_* before the seed plan's aliases. */
static long env_long(const char *primary, const char *alias, long low, long high, long fallback)
{
    const char *names[] = { primary, alias };
    for (int i = 0; i < 2; i++) {
        const char *text = names[i] ? getenv(names[i]) : NULL;
        if (!text || !*text)
            continue;
        char *end;
        errno = 0;
        long value = strtol(text, &end, 0);
        if (errno || *end || value < low || value > high) {
            rp_log("%s=%s is not valid (expected %ld to %ld); using %ld", names[i], text, low,
                   high, fallback);
            return fallback;
        }
        return value;
    }
    return fallback;
}

void rp_config_load(void)
{
    rp_config.streams = (int)env_long("RESTOREPROF_STREAMS", "CRIU_CUDA_STREAMS", 1, 32, 8);
    rp_config.chunk_bytes =
        (size_t)env_long("RESTOREPROF_CHUNK_MB", "CRIU_CUDA_CHUNK_MB", 1, 4096, 64) * RP_MIB;
    rp_config.threads = (int)env_long("RESTOREPROF_THREADS", NULL, 1, 128, 8);
    rp_config.pinned = (int)env_long("RESTOREPROF_PINNED", "CRIU_CUDA_USE_PINNED_MEM", 0, 1, 1);
    rp_config.pool_bytes = (size_t)env_long("RESTOREPROF_POOL_MB", NULL, 0, 1L << 20, 0) * RP_MIB;
    rp_config.min_intercept_bytes =
        (size_t)env_long("RESTOREPROF_MIN_INTERCEPT_BYTES", NULL, 0, 1L << 50, 16L << 20);
    rp_config.offload = (int)env_long("RESTOREPROF_OFFLOAD", NULL, 0, 1, 1);
    rp_config.intercept = (int)env_long("RESTOREPROF_INTERCEPT", "CUDA_INTERCEPT_RESTORE", 0, 1, 1);
    rp_config.release_caches = (int)env_long("RESTOREPROF_RELEASE_CACHES", NULL, 0, 1, 1);
    rp_config.release_timeout_ms =
        (unsigned)env_long("RESTOREPROF_RELEASE_TIMEOUT_S", NULL, 1, 3600, 10) * 1000u;
    rp_config.debug = (int)env_long("RESTOREPROF_SHIM_DEBUG", NULL, 0, 1, 0);
    /* CRIU_CUDA_PARALLEL_RESTORE=0 means "the driver alone": no engine, no VMM. */
    if (!env_long("RESTOREPROF_PARALLEL", "CRIU_CUDA_PARALLEL_RESTORE", 0, 1, 1))
        rp_config.intercept = rp_config.offload = 0;
    RP_DEBUG("config: streams=%d chunk=%zu MiB threads=%d pinned=%d min_intercept=%zu "
             "offload=%d intercept=%d",
             rp_config.streams, rp_config.chunk_bytes / RP_MIB, rp_config.threads,
             rp_config.pinned, rp_config.min_intercept_bytes, rp_config.offload,
             rp_config.intercept);
}
