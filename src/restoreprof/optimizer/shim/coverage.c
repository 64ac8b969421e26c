/*
 * What the library serves, per allocation kind, for STATUS: `restoreprof checkpoint` reports
 * it beside what the driver is left to copy. Each file that serves a kind counts its live
 * allocations here as they come and go.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <stdio.h>

static const char *kind_names[RP_KIND_COUNT] = {
    [RP_KIND_MEMALLOC] = "cuMemAlloc",
    [RP_KIND_APP_VMM] = "vmm",
    [RP_KIND_STREAM_ORDERED] = "async",
};

static struct {
    long count;
    long long bytes;
} kinds[RP_KIND_COUNT];

void rp_coverage_add(enum rp_kind kind, long count, long long bytes)
{
    if (kind >= RP_KIND_COUNT)
        return;
    __atomic_add_fetch(&kinds[kind].count, count, __ATOMIC_RELAXED);
    __atomic_add_fetch(&kinds[kind].bytes, bytes, __ATOMIC_RELAXED);
}

long long rp_coverage_bytes(void)
{
    long long total = 0;
    for (int k = 0; k < RP_KIND_COUNT; k++)
        total += __atomic_load_n(&kinds[k].bytes, __ATOMIC_RELAXED);
    return total;
}

int rp_coverage_format(char *out, size_t len)
{
    size_t used = 0;
    for (int k = 0; k < RP_KIND_COUNT && used < len; k++) {
        long count = __atomic_load_n(&kinds[k].count, __ATOMIC_RELAXED);
        long long bytes = __atomic_load_n(&kinds[k].bytes, __ATOMIC_RELAXED);
        int n = snprintf(out + used, len - used, "%skind.%s=%ld:%lld", k ? " " : "",
                         kind_names[k], count, bytes);
        if (n < 0)
            return -1;
        used += (size_t)n;
    }
    return used < len ? 0 : -1;
}
