/*
 * Device allocations served from the driver's virtual memory management API.
 *
 * cuMemAlloc memory can only go away with its address; VMM memory can be unmapped and released
 * while the address range stays reserved, then re-created at the same address. That is what
 * lets OFFLOAD empty the GPU before the driver's checkpoint (which then has almost nothing to
 * copy) and RELOAD bring it back at PCIe speed with every application pointer still valid.
 *
 * Allocations below RP_VMM_MIN_BYTES stay with cuMemAlloc: rounding each to the 2 MiB
 * granularity would waste memory, and the driver's own checkpoint carries them cheaply.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define RP_VMM_MIN_BYTES RP_MIB

static struct {
    pthread_mutex_t lock;
    struct rp_allocation *items;
    size_t count, capacity;
} registry = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ---- the gates ----
 *
 * Two of them, of one kind: calls enter and leave; closing waits for those inside to leave and
 * makes new ones wait until it opens. The offload gate holds every intercepted call that uses
 * GPU memory while it is offloaded; the layout gate holds only the calls that free or unmap
 * memory, while PRECOPY reads the memory of a program that runs on (control.c). */

struct gate {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int closed;
    int inside;
    uint64_t passes; /* calls let through so far (release.c's free ranges check it) */
};

static struct gate offload_gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 };
static struct gate layout_gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 };

static void gate_enter(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    while (g->closed)
        pthread_cond_wait(&g->changed, &g->lock);
    g->inside++;
    g->passes++;
    pthread_mutex_unlock(&g->lock);
}

static void gate_leave(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    if (--g->inside == 0)
        pthread_cond_broadcast(&g->changed);
    pthread_mutex_unlock(&g->lock);
}

static void gate_close(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->closed = 1;
    while (g->inside > 0)
        pthread_cond_wait(&g->changed, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->closed = 0;
    pthread_cond_broadcast(&g->changed);
    pthread_mutex_unlock(&g->lock);
}

void rp_gate_enter(void) { gate_enter(&offload_gate); }
void rp_gate_leave(void) { gate_leave(&offload_gate); }
void rp_gate_close(void) { gate_close(&offload_gate); }
void rp_gate_open(void) { gate_open(&offload_gate); }

int rp_gate_is_closed(void)
{
    pthread_mutex_lock(&offload_gate.lock);
    int closed = offload_gate.closed;
    pthread_mutex_unlock(&offload_gate.lock);
    return closed;
}

uint64_t rp_gate_passes(void)
{
    pthread_mutex_lock(&offload_gate.lock);
    uint64_t passes = offload_gate.passes;
    pthread_mutex_unlock(&offload_gate.lock);
    return passes;
}

void rp_layout_enter(void) { gate_enter(&layout_gate); }
void rp_layout_leave(void) { gate_leave(&layout_gate); }
void rp_layout_close(void) { gate_close(&layout_gate); }
void rp_layout_open(void) { gate_open(&layout_gate); }

/* ---- registry ---- */

int rp_registry_add(const struct rp_allocation *a)
{
    pthread_mutex_lock(&registry.lock);
    if (registry.count == registry.capacity) {
        size_t capacity = registry.capacity ? 2 * registry.capacity : 64;
        void *grown = realloc(registry.items, capacity * sizeof(*registry.items));
        if (!grown) {
            pthread_mutex_unlock(&registry.lock);
            return -1;
        }
        registry.items = grown;
        registry.capacity = capacity;
    }
    registry.items[registry.count++] = *a;
    pthread_mutex_unlock(&registry.lock);
    return 0;
}

int rp_registry_take(CUdeviceptr address, struct rp_allocation *out)
{
    int found = -1;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.count; i++) {
        if (registry.items[i].address == address) {
            *out = registry.items[i];
            registry.items[i] = registry.items[--registry.count];
            found = 0;
            break;
        }
    }
    pthread_mutex_unlock(&registry.lock);
    return found;
}

int rp_registry_each(int (*fn)(struct rp_allocation *, void *), void *arg)
{
    int rc = 0;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.count && rc == 0; i++)
        rc = fn(&registry.items[i], arg);
    pthread_mutex_unlock(&registry.lock);
    return rc;
}

void rp_registry_totals(size_t *count, size_t *bytes)
{
    pthread_mutex_lock(&registry.lock);
    *count = registry.count;
    *bytes = 0;
    for (size_t i = 0; i < registry.count; i++)
        *bytes += registry.items[i].reserved;
    pthread_mutex_unlock(&registry.lock);
}

/* ---- VMM steps ---- */

static CUmemAllocationProp device_prop(CUdevice device)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    return prop;
}

CUresult rp_vmm_create(CUdevice device, size_t size, int exportable,
                       CUmemGenericAllocationHandle *handle)
{
    CUmemAllocationProp prop = device_prop(device);
    if (exportable)
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return rp_real.cuMemCreate(handle, size, &prop, 0);
}

CUresult rp_vmm_map_handle(CUdeviceptr address, size_t size, CUdevice device,
                           CUmemGenericAllocationHandle handle)
{
    CUresult rc = rp_real.cuMemMap(address, size, 0, handle, 0);
    if (rc != CUDA_SUCCESS)
        return rc;
    CUmemAccessDesc access = { .location = device_prop(device).location,
                               .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    rc = rp_real.cuMemSetAccess(address, size, &access, 1);
    if (rc != CUDA_SUCCESS)
        rp_real.cuMemUnmap(address, size);
    return rc;
}

/* Physical memory for a reserved range: create, map, allow read/write from its device. */
CUresult rp_vmm_map(struct rp_allocation *a)
{
    /* a's context is current (the caller's contract): after a restore onto other GPUs (a GPU
     * map), the driver moved it, so its device is where the memory goes now */
    CUdevice now;
    if (rp_real.cuCtxGetDevice(&now) == CUDA_SUCCESS)
        a->device = now;
    CUmemGenericAllocationHandle handle = 0;
    CUresult rc = rp_vmm_create(a->device, a->reserved, 0, &handle);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = rp_vmm_map_handle(a->address, a->reserved, a->device, handle);
    if (rc != CUDA_SUCCESS) {
        rp_real.cuMemRelease(handle);
        return rc;
    }
    a->handle = handle;
    return CUDA_SUCCESS;
}

/* Gives the physical memory back; the address range stays reserved for rp_vmm_map. */
CUresult rp_vmm_unmap(struct rp_allocation *a)
{
    if (!a->handle)
        return CUDA_SUCCESS;
    CUresult rc = rp_real.cuMemUnmap(a->address, a->reserved);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemRelease(a->handle);
    if (rc == CUDA_SUCCESS)
        a->handle = 0;
    return rc;
}

CUresult rp_vmm_new(size_t size, struct rp_allocation *a)
{
    *a = (struct rp_allocation){ .size = size };
    CUresult rc = rp_real.cuCtxGetCurrent(&a->context);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuCtxGetDevice(&a->device);
    size_t granularity = 0;
    CUmemAllocationProp prop = device_prop(a->device);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemGetAllocationGranularity(&granularity, &prop,
                                                   CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (rc != CUDA_SUCCESS)
        return rc;
    a->reserved = (size + granularity - 1) / granularity * granularity;
    rc = rp_real.cuMemAddressReserve(&a->address, a->reserved, 0, 0, 0);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = rp_vmm_map(a);
    if (rc != CUDA_SUCCESS)
        rp_real.cuMemAddressFree(a->address, a->reserved);
    return rc;
}

CUresult rp_vmm_destroy(struct rp_allocation *a)
{
    CUresult rc = rp_vmm_unmap(a);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemAddressFree(a->address, a->reserved);
    return rc;
}

static CUresult vmm_alloc(CUdeviceptr *dptr, size_t size)
{
    struct rp_allocation a;
    CUresult rc = rp_vmm_new(size, &a);
    if (rc == CUDA_SUCCESS && rp_registry_add(&a) != 0) {
        rp_vmm_destroy(&a);
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (rc == CUDA_SUCCESS)
        *dptr = a.address;
    return rc;
}

RP_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    if (rp_load_real() || !rp_real.cuMemAlloc_v2)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!rp_config.offload || !dptr || size < RP_VMM_MIN_BYTES)
        return rp_real.cuMemAlloc_v2(dptr, size);
    rp_gate_enter();
    CUresult rc = vmm_alloc(dptr, size);
    if (rc != CUDA_SUCCESS) {
        RP_DEBUG("VMM allocation of %zu bytes failed (%s); using cuMemAlloc", size,
                 rp_error_name(rc));
        rc = rp_real.cuMemAlloc_v2(dptr, size);
    }
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    if (rp_load_real() || !rp_real.cuMemFree_v2)
        return CUDA_ERROR_NOT_INITIALIZED;
    rp_gate_enter();
    rp_layout_enter();
    struct rp_allocation a;
    CUresult rc;
    if (dptr && rp_registry_take(dptr, &a) == 0) {
        /* cuMemFree waits for work using the memory; unmapping does not, so sync first. */
        rc = rp_real.cuCtxSynchronize();
        if (rc == CUDA_SUCCESS)
            rc = a.pool ? rp_mempool_free_now(&a) : rp_vmm_destroy(&a);
        if (rc != CUDA_SUCCESS)
            rp_log("freeing VMM allocation %#llx failed: %s", (unsigned long long)dptr,
                   rp_error_name(rc));
    } else {
        rc = rp_real.cuMemFree_v2(dptr);
    }
    rp_layout_leave();
    rp_gate_leave();
    return rc;
}
