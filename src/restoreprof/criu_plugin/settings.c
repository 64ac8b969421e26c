/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
/*
 * The CRIU_CUDA_* settings. The shim keeps a default on a bad value (it cannot stop the
 * program); here a bad value fails the CRIU run at the plugin's init, before any process is
 * touched, with the reason in CRIU's log: a checkpoint must not silently run on other settings
 * than the ones asked for.
 */
#define _GNU_SOURCE
#include "plugin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef RPC_STREAMS_LOW /* build.py passes the schema's ranges; these are its values today */
#define RPC_STREAMS_LOW 1
#define RPC_STREAMS_HIGH 32
#define RPC_CHUNK_MB_LOW 1
#define RPC_CHUNK_MB_HIGH 4096
#endif

/* 0 and *value set, or 0 and *value untouched when unset or empty, or -1 with err. */
static int read_setting(const char *name, long low, long high, int *value, char *err, size_t len)
{
    const char *text = getenv(name);
    if (!text || !*text)
        return 0;
    char *end;
    errno = 0;
    long parsed = strtol(text, &end, 0); /* as the schema reads it: 0x.. too */
    if (errno || end == text || *end || parsed < low || parsed > high) {
        snprintf(err, len, "%s=%s is not valid: it must be %s%ld to %ld (the range of "
                 "restoreprof.settings.schema); fix or unset it and run criu again",
                 name, text, low == 0 && high == 1 ? "" : "an integer from ", low, high);
        return -1;
    }
    *value = (int)parsed;
    return 0;
}

RPC_EXPORT int rpc_settings_load(struct rpc_settings *out, char *err, size_t len)
{
    /* Defaults: the agent's OptimizerConfig supplies the rest; these say only what was asked. */
    struct rpc_settings s = { .streams = 0, .chunk_mb = 0, .pinned = 1, .parallel = 1 };
    if (read_setting("CRIU_CUDA_STREAMS", RPC_STREAMS_LOW, RPC_STREAMS_HIGH, &s.streams, err,
                     len) ||
        read_setting("CRIU_CUDA_CHUNK_MB", RPC_CHUNK_MB_LOW, RPC_CHUNK_MB_HIGH, &s.chunk_mb, err,
                     len) ||
        read_setting("CRIU_CUDA_USE_PINNED_MEM", 0, 1, &s.pinned, err, len) ||
        read_setting("CRIU_CUDA_PARALLEL_RESTORE", 0, 1, &s.parallel, err, len))
        return -1;
    *out = s;
    return 0;
}
