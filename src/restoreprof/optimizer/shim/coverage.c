/*
 * What the library serves, per allocation kind, for STATUS and OFFLOAD: `restoreprof
 * checkpoint` reports it beside what the driver is left to copy. Counted from the registry
 * when asked (STATUS and OFFLOAD are rare; allocation and free pay nothing for it).
 */
#define _GNU_SOURCE
#include "shim.h"

#include <stdio.h>

static const char *kind_names[RP_KIND_COUNT] = {
    [RP_KIND_MEMALLOC] = "cuMemAlloc",
    [RP_KIND_APP_VMM] = "vmm",
    [RP_KIND_STREAM_ORDERED] = "async",
};

/* Which kind a registry entry is: the registry holds what the library allocates itself,
 * cuMemAlloc and stream-ordered (from a pool, mempool.c). */
static enum rp_kind kind_of(const struct rp_allocation *a)
{
    return a->pool ? RP_KIND_STREAM_ORDERED : RP_KIND_MEMALLOC;
}

static int count_one(struct rp_allocation *a, void *arg)
{
    struct rp_kind_totals *totals = arg;
    enum rp_kind kind = kind_of(a);
    totals[kind].count++;
    totals[kind].bytes += a->reserved;
    return 0;
}

void rp_coverage(struct rp_kind_totals totals[RP_KIND_COUNT])
{
    for (int k = 0; k < RP_KIND_COUNT; k++)
        totals[k] = (struct rp_kind_totals){ 0, 0 };
    rp_registry_each(count_one, totals);
    /* The application's own VMM memory is counted by app_vmm.c (its physical allocations). */
    rp_app_vmm_totals(&totals[RP_KIND_APP_VMM].count, &totals[RP_KIND_APP_VMM].bytes);
}

size_t rp_coverage_bytes(void)
{
    struct rp_kind_totals totals[RP_KIND_COUNT];
    size_t total = 0;
    rp_coverage(totals);
    for (int k = 0; k < RP_KIND_COUNT; k++)
        total += totals[k].bytes;
    return total;
}

int rp_coverage_format(char *out, size_t len)
{
    struct rp_kind_totals totals[RP_KIND_COUNT];
    size_t used = 0;
    rp_coverage(totals);
    for (int k = 0; k < RP_KIND_COUNT && used < len; k++) {
        int n = snprintf(out + used, len - used, "%skind.%s=%zu:%zu", k ? " " : "",
                         kind_names[k], totals[k].count, totals[k].bytes);
        if (n < 0)
            return -1;
        used += (size_t)n;
    }
    return used < len ? 0 : -1;
}
