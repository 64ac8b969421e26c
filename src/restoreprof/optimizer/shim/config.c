/*
 * The library's configuration: the environment variables, ranges and defaults of
 * restoreprof.settings.schema, through the header the build generates from it
 * (settings_defaults.h). `restoreprof exec` sets every variable from the settings it resolved
 * and validated; here a bad value cannot stop the program, so it is logged and the default kept.
 */
#define _GNU_SOURCE
#include "shim.h"
#include "settings_defaults.h"

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

/* The setting's value from its variables, else the schema's default (settings_defaults.h). */
#define SETTING(NAME)                                                                         \
    env_long(RP_SETTING_##NAME##_ENV, RP_SETTING_##NAME##_ALIAS, RP_SETTING_##NAME##_LOW,     \
             RP_SETTING_##NAME##_HIGH, RP_SETTING_##NAME##_DEFAULT)

void rp_config_load(void)
{
    rp_config.streams = (int)SETTING(STREAMS);
    rp_config.chunk_bytes = (size_t)SETTING(CHUNK_MB) * RP_MIB;
    rp_config.threads = (int)SETTING(THREADS);
    rp_config.pinned = (int)SETTING(PINNED);
    rp_config.min_intercept_bytes = (size_t)SETTING(MIN_INTERCEPT_BYTES);
    rp_config.offload = (int)SETTING(OFFLOAD);
    rp_config.intercept = (int)SETTING(INTERCEPT);
    rp_config.release_caches = (int)SETTING(RELEASE_CACHES);
    rp_config.release_timeout_ms = (unsigned)SETTING(RELEASE_TIMEOUT_S) * 1000u;
    rp_config.debug = (int)env_long("RESTOREPROF_SHIM_DEBUG", NULL, 0, 1, 0);
    /* CRIU_CUDA_PARALLEL_RESTORE=0 means "the driver alone": no engine, no VMM. */
    if (!SETTING(PARALLEL))
        rp_config.intercept = rp_config.offload = 0;
    RP_DEBUG("config: streams=%d chunk=%zu MiB threads=%d pinned=%d min_intercept=%zu "
             "offload=%d intercept=%d",
             rp_config.streams, rp_config.chunk_bytes / RP_MIB, rp_config.threads,
             rp_config.pinned, rp_config.min_intercept_bytes, rp_config.offload,
             rp_config.intercept);
}
