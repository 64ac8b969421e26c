/*
 * The application's own VMM memory: what a program (PyTorch's expandable segments, vLLM's
 * CuMem allocator, NCCL's buffers) builds itself with cuMemCreate, cuMemAddressReserve,
 * cuMemMap and cuMemSetAccess.
 *
 * Every physical allocation, every mapping of it (address, size, offset) and the access set on
 * each mapping are tracked. OFFLOAD saves each physical allocation's bytes once (a handle mapped
 * twice is one record), unmaps it and releases it; the reservations stay. RELOAD and ADOPT make
 * new memory with the same properties, map it at the same addresses and offsets, and set the
 * same access again.
 *
 * The driver hands out a new handle value for the new memory, so the application never sees
 * the driver's values: it gets handle values of our own (RP_VHANDLE_BASE + n, never reused),
 * and every interposed call translates them. A value we did not hand out (a multicast object,
 * an allocation of the library's own) passes through untouched.
 *
 * The driver holds one reference of ours per physical allocation while the application holds
 * any (create, retain and import each count one): its extra retains and releases are counted
 * here, so the same count can be replayed on memory made anew.
 *
 * Memory shared with another process (exported or imported handles) cannot be released and
 * made again without breaking the sharing, and the driver cannot checkpoint it either: OFFLOAD
 * refuses it with the reason, before anything is touched.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "rp" in the top bytes: above every user-space pointer, so no driver value looks like one. */
#define RP_VHANDLE_BASE 0x7270000000000000ull

struct access {
    size_t offset; /* within the mapping */
    size_t size;
    CUmemAccessDesc desc;
};

struct phys;

struct mapping {
    CUdeviceptr va;
    size_t size;
    size_t offset;
    struct phys *phys;
    struct access *access; /* in the order set; replayed in that order */
    size_t n_access;
};

struct phys {
    uint64_t handle;                   /* the application's value */
    CUmemGenericAllocationHandle real; /* the driver's; 0 while offloaded */
    CUmemAllocationProp prop;
    unsigned long long flags;
    size_t size; /* 0 when unknown (imported) */
    CUcontext context;
    int refs;          /* the application's references to the handle */
    int n_maps;        /* its mappings */
    unsigned exported; /* CUmemAllocationHandleType bits exported */
    int imported;      /* came from another process */
    int in_array;      /* mapped into a CUDA array (cuMemMapArrayAsync) */
    int offloaded;
    int prepared; /* RELOAD: new memory mapped, its bytes not loaded yet */
    int live;     /* prepared, though not offloaded (adopted before the RELOAD) */
    int adopted;  /* the memory now is restoreprof's preloaded, exportable memory */
    /* OFFLOAD's copy: where the bytes are read, and what was made for it */
    CUdeviceptr window;
    int window_mapped; /* the window is a range of our own */
    int extra_ref;     /* a reference taken for the window */
    struct snap_mapping *snap_maps;
};

static struct {
    pthread_mutex_t lock;
    struct phys **phys; /* index: handle - RP_VHANDLE_BASE - 1; NULL once gone */
    size_t n_phys, cap_phys;
    struct mapping *maps;
    size_t n_maps, cap_maps;
    size_t reserved_bytes; /* the application's own reservations */
} app = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int tracking(void)
{
    return rp_config.offload;
}

static struct phys *phys_of(uint64_t handle)
{
    if (handle <= RP_VHANDLE_BASE || handle - RP_VHANDLE_BASE > app.n_phys)
        return NULL;
    return app.phys[handle - RP_VHANDLE_BASE - 1];
}

static struct phys *phys_add(CUmemGenericAllocationHandle real, const CUmemAllocationProp *prop,
                             size_t size, unsigned long long flags)
{
    struct phys *p = calloc(1, sizeof(*p));
    if (!p || rp_grow((void **)&app.phys, &app.cap_phys, app.n_phys + 1, sizeof(*app.phys))) {
        free(p);
        return NULL;
    }
    p->real = real;
    p->prop = *prop;
    p->size = size;
    p->flags = flags;
    p->refs = 1;
    /* the current context copies its bytes, when it is on the memory's own device (else the
     * device's primary context will, see phys_context) */
    CUdevice device;
    if (rp_real.cuCtxGetCurrent(&p->context) != CUDA_SUCCESS ||
        rp_real.cuCtxGetDevice(&device) != CUDA_SUCCESS || device != prop->location.id)
        p->context = NULL;
    app.phys[app.n_phys++] = p;
    p->handle = RP_VHANDLE_BASE + app.n_phys;
    return p;
}

/* Forgets p once the application holds neither a reference nor a mapping. */
static void phys_settle(struct phys *p)
{
    if (p->refs > 0 || p->n_maps > 0)
        return;
    app.phys[p->handle - RP_VHANDLE_BASE - 1] = NULL;
    free(p->snap_maps);
    free(p);
}

static struct mapping *mapping_at(CUdeviceptr address)
{
    for (size_t i = 0; i < app.n_maps; i++)
        if (address >= app.maps[i].va && address < app.maps[i].va + app.maps[i].size)
            return &app.maps[i];
    return NULL;
}

static int same_location(const CUmemLocation *a, const CUmemLocation *b)
{
    return a->type == b->type && a->id == b->id;
}

/* Records access set on [offset, offset + size) of m; entries it covers for the same location
 * are dropped, so the list stays as short as the application's distinct settings. */
static int access_add(struct mapping *m, size_t offset, size_t size, const CUmemAccessDesc *desc)
{
    size_t kept = 0;
    for (size_t i = 0; i < m->n_access; i++) {
        struct access *a = &m->access[i];
        int covered = same_location(&a->desc.location, &desc->location) && a->offset >= offset &&
                      a->offset + a->size <= offset + size;
        if (!covered)
            m->access[kept++] = *a;
    }
    void *grown = realloc(m->access, (kept + 1) * sizeof(*m->access));
    if (!grown)
        return -1;
    m->access = grown;
    m->access[kept] = (struct access){ offset, size, *desc };
    m->n_access = kept + 1;
    return 0;
}

/* The access m gives device to its whole range (0 when none or only part). */
static unsigned long long whole_access(const struct mapping *m, int device)
{
    unsigned long long flags = 0;
    for (size_t i = 0; i < m->n_access; i++) {
        const struct access *a = &m->access[i];
        if (a->desc.location.type == CU_MEM_LOCATION_TYPE_DEVICE && a->desc.location.id == device)
            flags = a->offset == 0 && a->size == m->size ? a->desc.flags : 0;
    }
    return flags;
}

int rp_device_uuid_hex(CUdevice device, char out[33])
{
    CUuuid u;
    if (!rp_real.cuDeviceGetUuid_v2 || rp_real.cuDeviceGetUuid_v2(&u, device) != CUDA_SUCCESS)
        return -1;
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", (unsigned char)u.bytes[i]);
    return 0;
}

/* ---- the interposed calls ---- */

#define NEED_REAL(name)                           \
    do {                                          \
        if (rp_load_real() || !rp_real.name)      \
            return CUDA_ERROR_NOT_INITIALIZED;    \
    } while (0)

RP_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                               const CUmemAllocationProp *prop, unsigned long long flags)
{
    NEED_REAL(cuMemCreate);
    if (!tracking() || !handle || !prop)
        return rp_real.cuMemCreate(handle, size, prop, flags);
    rp_gate_enter();
    CUmemGenericAllocationHandle real = 0;
    CUresult rc = rp_real.cuMemCreate(&real, size, prop, flags);
    if (rc == CUDA_SUCCESS) {
        pthread_mutex_lock(&app.lock);
        struct phys *p = phys_add(real, prop, size, flags);
        if (p)
            *handle = p->handle;
        pthread_mutex_unlock(&app.lock);
        if (!p) {
            rp_real.cuMemRelease(real);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    NEED_REAL(cuMemRelease);
    if (!tracking())
        return rp_real.cuMemRelease(handle);
    rp_gate_enter();
    rp_layout_enter();
    pthread_mutex_lock(&app.lock);
    struct phys *p = phys_of(handle);
    CUresult rc;
    if (!p) {
        rc = rp_real.cuMemRelease(handle);
    } else if (p->refs <= 0) {
        rc = CUDA_ERROR_INVALID_VALUE; /* released more often than held */
    } else {
        /* our one reference with the driver goes with the application's last */
        rc = p->refs == 1 ? rp_real.cuMemRelease(p->real) : CUDA_SUCCESS;
        if (rc == CUDA_SUCCESS) {
            p->refs--;
            phys_settle(p);
        }
    }
    pthread_mutex_unlock(&app.lock);
    rp_layout_leave();
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                       CUdeviceptr addr, unsigned long long flags)
{
    NEED_REAL(cuMemAddressReserve);
    CUresult rc = rp_real.cuMemAddressReserve(ptr, size, alignment, addr, flags);
    if (rc == CUDA_SUCCESS && tracking())
        __atomic_add_fetch(&app.reserved_bytes, size, __ATOMIC_RELAXED);
    return rc;
}

RP_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    NEED_REAL(cuMemAddressFree);
    CUresult rc = rp_real.cuMemAddressFree(ptr, size);
    if (rc == CUDA_SUCCESS && tracking())
        __atomic_sub_fetch(&app.reserved_bytes, size, __ATOMIC_RELAXED);
    return rc;
}

RP_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                            CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    NEED_REAL(cuMemMap);
    if (!tracking())
        return rp_real.cuMemMap(ptr, size, offset, handle, flags);
    rp_gate_enter();
    pthread_mutex_lock(&app.lock);
    struct phys *p = phys_of(handle);
    CUresult rc = rp_real.cuMemMap(ptr, size, offset, p ? p->real : handle, flags);
    if (rc == CUDA_SUCCESS && p) {
        if (rp_grow((void **)&app.maps, &app.cap_maps, app.n_maps + 1, sizeof(*app.maps)) == 0) {
            app.maps[app.n_maps++] = (struct mapping){ .va = ptr, .size = size, .offset = offset,
                                                       .phys = p };
            p->n_maps++;
        } else {
            rp_real.cuMemUnmap(ptr, size);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    pthread_mutex_unlock(&app.lock);
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    NEED_REAL(cuMemUnmap);
    if (!tracking())
        return rp_real.cuMemUnmap(ptr, size);
    rp_gate_enter();
    rp_layout_enter();
    pthread_mutex_lock(&app.lock);
    CUresult rc = rp_real.cuMemUnmap(ptr, size);
    for (size_t i = 0; rc == CUDA_SUCCESS && i < app.n_maps;) {
        struct mapping *m = &app.maps[i];
        if (m->va < ptr || m->va + m->size > ptr + size) {
            i++;
            continue;
        }
        struct phys *p = m->phys;
        free(m->access);
        app.maps[i] = app.maps[--app.n_maps];
        p->n_maps--;
        phys_settle(p);
    }
    pthread_mutex_unlock(&app.lock);
    rp_layout_leave();
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                  size_t count)
{
    NEED_REAL(cuMemSetAccess);
    if (!tracking())
        return rp_real.cuMemSetAccess(ptr, size, desc, count);
    rp_gate_enter();
    pthread_mutex_lock(&app.lock);
    CUresult rc = rp_real.cuMemSetAccess(ptr, size, desc, count);
    for (size_t i = 0; rc == CUDA_SUCCESS && i < app.n_maps; i++) {
        struct mapping *m = &app.maps[i];
        CUdeviceptr start = m->va > ptr ? m->va : ptr;
        CUdeviceptr end = m->va + m->size < ptr + size ? m->va + m->size : ptr + size;
        for (size_t k = 0; start < end && k < count; k++)
            if (access_add(m, start - m->va, end - start, &desc[k]) != 0)
                rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_unlock(&app.lock);
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    NEED_REAL(cuMemRetainAllocationHandle);
    if (!tracking() || !handle)
        return rp_real.cuMemRetainAllocationHandle(handle, addr);
    rp_gate_enter();
    pthread_mutex_lock(&app.lock);
    struct mapping *m = mapping_at((CUdeviceptr)(uintptr_t)addr);
    CUresult rc = CUDA_SUCCESS;
    if (!m) {
        rc = rp_real.cuMemRetainAllocationHandle(handle, addr); /* not the application's VMM */
    } else {
        struct phys *p = m->phys;
        CUmemGenericAllocationHandle real = 0;
        if (p->refs == 0) /* our reference went with the last release: take one again */
            rc = rp_real.cuMemRetainAllocationHandle(&real, addr);
        if (rc == CUDA_SUCCESS) {
            p->refs++;
            *handle = p->handle;
        }
    }
    pthread_mutex_unlock(&app.lock);
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                          CUmemGenericAllocationHandle handle)
{
    NEED_REAL(cuMemGetAllocationPropertiesFromHandle);
    if (!tracking() || !prop)
        return rp_real.cuMemGetAllocationPropertiesFromHandle(prop, handle);
    pthread_mutex_lock(&app.lock);
    struct phys *p = phys_of(handle);
    CUresult rc = CUDA_SUCCESS;
    if (p) /* as created: adopted memory is restoreprof's exportable kind underneath */
        *prop = p->prop;
    else
        rc = rp_real.cuMemGetAllocationPropertiesFromHandle(prop, handle);
    pthread_mutex_unlock(&app.lock);
    return rc;
}

RP_EXPORT CUresult cuMemExportToShareableHandle(void *shareable,
                                                CUmemGenericAllocationHandle handle,
                                                CUmemAllocationHandleType type,
                                                unsigned long long flags)
{
    NEED_REAL(cuMemExportToShareableHandle);
    if (!tracking())
        return rp_real.cuMemExportToShareableHandle(shareable, handle, type, flags);
    rp_gate_enter();
    pthread_mutex_lock(&app.lock);
    struct phys *p = phys_of(handle);
    CUresult rc;
    if (p && p->adopted && !(p->prop.requestedHandleTypes & type))
        rc = CUDA_ERROR_NOT_PERMITTED; /* what the memory as created would have said */
    else
        rc = rp_real.cuMemExportToShareableHandle(shareable, p ? p->real : handle, type, flags);
    if (rc == CUDA_SUCCESS && p)
        p->exported |= (unsigned)type;
    pthread_mutex_unlock(&app.lock);
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle,
                                                  void *shareable,
                                                  CUmemAllocationHandleType type)
{
    NEED_REAL(cuMemImportFromShareableHandle);
    if (!tracking() || !handle)
        return rp_real.cuMemImportFromShareableHandle(handle, shareable, type);
    rp_gate_enter();
    CUmemGenericAllocationHandle real = 0;
    CUresult rc = rp_real.cuMemImportFromShareableHandle(&real, shareable, type);
    if (rc == CUDA_SUCCESS) {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof(prop));
        if (rp_real.cuMemGetAllocationPropertiesFromHandle)
            rp_real.cuMemGetAllocationPropertiesFromHandle(&prop, real);
        pthread_mutex_lock(&app.lock);
        struct phys *p = phys_add(real, &prop, 0, 0);
        if (p) {
            p->imported = 1;
            *handle = p->handle;
        }
        pthread_mutex_unlock(&app.lock);
        if (!p) {
            rp_real.cuMemRelease(real);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    rp_gate_leave();
    return rc;
}

/* Sparse arrays and mipmaps bound to the application's memory: translated, and marked, since
 * restoreprof cannot bind them again after a restore. */
static CUresult map_array(CUresult (*real)(CUarrayMapInfo *, unsigned int, CUstream),
                          CUarrayMapInfo *infos, unsigned int count, CUstream stream)
{
    if (!tracking() || !infos || !count)
        return real(infos, count, stream);
    rp_gate_enter();
    pthread_mutex_lock(&app.lock);
    CUarrayMapInfo *copy = malloc(count * sizeof(*copy));
    CUresult rc = copy ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    for (unsigned int i = 0; copy && i < count; i++) {
        copy[i] = infos[i];
        struct phys *p = infos[i].memHandleType == CU_MEM_HANDLE_TYPE_GENERIC
                             ? phys_of(infos[i].memHandle.memHandle)
                             : NULL;
        if (p) {
            copy[i].memHandle.memHandle = p->real;
            p->in_array = 1;
        }
    }
    if (rc == CUDA_SUCCESS)
        rc = real(copy, count, stream);
    free(copy);
    pthread_mutex_unlock(&app.lock);
    rp_gate_leave();
    return rc;
}

RP_EXPORT CUresult cuMemMapArrayAsync(CUarrayMapInfo *infos, unsigned int count, CUstream stream)
{
    NEED_REAL(cuMemMapArrayAsync);
    return map_array(rp_real.cuMemMapArrayAsync, infos, count, stream);
}

CUresult cuMemMapArrayAsync_ptsz(CUarrayMapInfo *infos, unsigned int count, CUstream stream);
RP_EXPORT CUresult cuMemMapArrayAsync_ptsz(CUarrayMapInfo *infos, unsigned int count,
                                           CUstream stream)
{
    NEED_REAL(cuMemMapArrayAsync_ptsz);
    return map_array(rp_real.cuMemMapArrayAsync_ptsz, infos, count, stream);
}

/* ---- OFFLOAD ---- */

static int offloadable(const struct phys *p)
{
    return p && !p->imported && !p->offloaded && p->real && p->size &&
           p->prop.location.type == CU_MEM_LOCATION_TYPE_DEVICE;
}

static const char *handle_types(unsigned types)
{
    if (types & CU_MEM_HANDLE_TYPE_FABRIC)
        return "as a fabric handle";
    if (types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return "as a POSIX file descriptor";
    return "as a shareable handle";
}

int rp_app_vmm_refusal(char *err, size_t errlen)
{
    int refused = 0;
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys && !refused; i++) {
        struct phys *p = app.phys[i];
        if (!p)
            continue;
        refused = 1;
        if (p->exported)
            snprintf(err, errlen, "GPU memory handle %#llx (%zu MiB, cuMemCreate) was exported %s "
                     "(cuMemExportToShareableHandle): another process may map it, and neither "
                     "restoreprof nor the CUDA driver can checkpoint shared memory; stop sharing "
                     "it (release it here and in its importers) before checkpointing",
                     (unsigned long long)p->handle, p->size / RP_MIB, handle_types(p->exported));
        else if (p->imported)
            snprintf(err, errlen, "GPU memory handle %#llx was imported from another process "
                     "(cuMemImportFromShareableHandle): shared memory cannot be checkpointed; "
                     "release it before checkpointing", (unsigned long long)p->handle);
        else if (p->in_array)
            snprintf(err, errlen, "GPU memory handle %#llx (%zu MiB) is bound to a CUDA array "
                     "(cuMemMapArrayAsync), which restoreprof cannot bind again after a "
                     "restore; unbind it before checkpointing",
                     (unsigned long long)p->handle, p->size / RP_MIB);
        else
            refused = 0;
    }
    pthread_mutex_unlock(&app.lock);
    return refused ? -1 : 0;
}

/* The context p's bytes are copied on: the one current at cuMemCreate, else its device's
 * primary context (kept retained: the process uses that device anyway). */
static CUresult phys_context(struct phys *p)
{
    if (!p->context) {
        CUdevice dev;
        CUresult rc = rp_real.cuDeviceGet(&dev, p->prop.location.id);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuDevicePrimaryCtxRetain(&p->context, dev);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return rp_real.cuCtxSetCurrent(p->context);
}

/* Somewhere the whole of p is mapped with the access `need` for its own device: one of the
 * application's mappings when it fits, else a range of our own (window_mapped). */
static CUresult open_window(struct phys *p, unsigned long long need)
{
    p->window = 0;
    p->window_mapped = 0;
    for (size_t i = 0; i < app.n_maps; i++) {
        struct mapping *m = &app.maps[i];
        unsigned long long flags = whole_access(m, p->prop.location.id);
        if (m->phys == p && m->offset == 0 && m->size == p->size &&
            (flags == need || flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)) {
            p->window = m->va;
            return CUDA_SUCCESS;
        }
    }
    CUresult rc = CUDA_SUCCESS;
    if (p->refs == 0 && p->n_maps > 0) { /* mapped only: a reference to map it once more */
        CUmemGenericAllocationHandle again = 0;
        for (size_t i = 0; i < app.n_maps; i++)
            if (app.maps[i].phys == p) {
                rc = rp_real.cuMemRetainAllocationHandle(&again, (void *)(uintptr_t)app.maps[i].va);
                break;
            }
        p->extra_ref = rc == CUDA_SUCCESS;
    }
    CUdeviceptr va = 0;
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemAddressReserve(&va, p->size, 0, 0, 0);
    if (rc == CUDA_SUCCESS) {
        CUdevice dev = p->prop.location.id;
        rc = rp_vmm_map_handle(va, p->size, dev, p->real);
        if (rc != CUDA_SUCCESS)
            rp_real.cuMemAddressFree(va, p->size);
    }
    if (rc == CUDA_SUCCESS) {
        p->window = va;
        p->window_mapped = 1;
    }
    return rc;
}

static void close_window(struct phys *p)
{
    if (p->window_mapped) {
        rp_real.cuMemUnmap(p->window, p->size);
        rp_real.cuMemAddressFree(p->window, p->size);
    }
    if (p->extra_ref)
        rp_real.cuMemRelease(p->real);
    p->window = 0;
    p->window_mapped = p->extra_ref = 0;
}

static struct snap_prop pack_prop(const CUmemAllocationProp *prop)
{
    return (struct snap_prop){ .type = prop->type,
                               .location_type = prop->location.type,
                               .location_id = prop->location.id,
                               .handle_types = (uint32_t)prop->requestedHandleTypes,
                               .compression = prop->allocFlags.compressionType,
                               .rdma = prop->allocFlags.gpuDirectRDMACapable,
                               .usage = prop->allocFlags.usage };
}

static int describe(struct phys *p, struct rp_snap_item *item)
{
    size_t n = 0;
    free(p->snap_maps);
    p->snap_maps = calloc(p->n_maps ? (size_t)p->n_maps : 1, sizeof(*p->snap_maps));
    if (!p->snap_maps)
        return -1;
    for (size_t i = 0; i < app.n_maps; i++)
        if (app.maps[i].phys == p)
            p->snap_maps[n++] = (struct snap_mapping){ app.maps[i].va, app.maps[i].size,
                                                       app.maps[i].offset };
    *item = (struct rp_snap_item){
        .record = { .address = n ? p->snap_maps[0].va : 0, .size = p->size,
                    .reserved = p->size, .device = p->prop.location.id,
                    .kind = RP_SNAP_PHYSICAL, .n_mappings = (uint32_t)n, .handle = p->handle,
                    .prop = pack_prop(&p->prop) },
        .source = p->window,
        .context = p->context,
        .mappings = p->snap_maps,
    };
    return 0;
}

int rp_app_vmm_items(struct rp_snap_item **items, size_t *count, size_t *capacity, char *err,
                     size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys && rc == 0; i++) {
        struct phys *p = app.phys[i];
        if (!offloadable(p))
            continue;
        CUresult cr = phys_context(p);
        if (cr == CUDA_SUCCESS)
            cr = open_window(p, CU_MEM_ACCESS_FLAGS_PROT_READ);
        if (cr != CUDA_SUCCESS) {
            snprintf(err, errlen, "reading GPU memory handle %#llx (%zu bytes) failed: %s",
                     (unsigned long long)p->handle, p->size, rp_error_name(cr));
            rc = -1;
        } else if (rp_grow((void **)items, capacity, *count + 1, sizeof(**items)) != 0 ||
                   describe(p, &(*items)[*count]) != 0) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        } else {
            ++*count;
        }
    }
    pthread_mutex_unlock(&app.lock);
    return rc;
}

void rp_app_vmm_close_windows(void)
{
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys; i++)
        if (app.phys[i] && (app.phys[i]->window_mapped || app.phys[i]->extra_ref)) {
            rp_real.cuCtxSetCurrent(app.phys[i]->context);
            close_window(app.phys[i]);
        }
    pthread_mutex_unlock(&app.lock);
}

int rp_app_vmm_release(char *err, size_t errlen)
{
    int failures = 0;
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys; i++) {
        struct phys *p = app.phys[i];
        if (!offloadable(p))
            continue;
        CUresult rc = rp_real.cuCtxSetCurrent(p->context);
        for (size_t k = 0; rc == CUDA_SUCCESS && k < app.n_maps; k++)
            if (app.maps[k].phys == p)
                rc = rp_real.cuMemUnmap(app.maps[k].va, app.maps[k].size);
        if (rc == CUDA_SUCCESS && p->refs > 0)
            rc = rp_real.cuMemRelease(p->real);
        if (rc == CUDA_SUCCESS) {
            p->real = 0;
            p->offloaded = 1;
        } else if (!failures++) {
            snprintf(err, errlen, "releasing GPU memory handle %#llx failed: %s; the snapshot is "
                     "complete, RELOAD resumes", (unsigned long long)p->handle,
                     rp_error_name(rc));
        }
    }
    pthread_mutex_unlock(&app.lock);
    return failures ? -1 : 0;
}

/* ---- RELOAD and ADOPT ---- */

/* Maps real at every mapping of p, with the access the application set, in its order; on
 * failure nothing of it stays mapped. */
static CUresult remap(struct phys *p, CUmemGenericAllocationHandle real)
{
    CUresult rc = CUDA_SUCCESS;
    size_t done = 0;
    for (; rc == CUDA_SUCCESS && done < app.n_maps; done++) {
        struct mapping *m = &app.maps[done];
        if (m->phys != p)
            continue;
        rc = rp_real.cuMemMap(m->va, m->size, m->offset, real, 0);
        for (size_t k = 0; rc == CUDA_SUCCESS && k < m->n_access; k++)
            rc = rp_real.cuMemSetAccess(m->va + m->access[k].offset, m->access[k].size,
                                        &m->access[k].desc, 1);
        if (rc != CUDA_SUCCESS && rp_real.cuMemUnmap(m->va, m->size) != CUDA_SUCCESS)
            RP_DEBUG("unmapping %#llx after a failed map failed", (unsigned long long)m->va);
    }
    if (rc != CUDA_SUCCESS)
        for (size_t i = 0; i + 1 < done; i++)
            if (app.maps[i].phys == p)
                rp_real.cuMemUnmap(app.maps[i].va, app.maps[i].size);
    return rc;
}

/* Takes p back from offloaded: its memory is now real, mapped as before. The application's
 * references are one reference of ours with the driver, or none (mappings only). */
static void settle_back(struct phys *p, CUmemGenericAllocationHandle real)
{
    if (p->refs == 0)
        rp_real.cuMemRelease(real);
    p->real = real;
    p->offloaded = 0;
}

static void unmap_all(struct phys *p)
{
    for (size_t i = 0; i < app.n_maps; i++)
        if (app.maps[i].phys == p)
            rp_real.cuMemUnmap(app.maps[i].va, app.maps[i].size);
}

CUresult rp_app_vmm_prepare(const struct snap_record *r, CUdeviceptr *window, CUcontext *context,
                            uint64_t *map_ns)
{
    pthread_mutex_lock(&app.lock);
    struct phys *p = phys_of(r->handle);
    CUresult rc = p && p->real && !p->offloaded && !p->prepared && p->size == r->size
                      ? phys_context(p)
                      : CUDA_ERROR_NOT_FOUND;
    if (rc == CUDA_SUCCESS) { /* adopted before this RELOAD: only its bytes again */
        rc = open_window(p, CU_MEM_ACCESS_FLAGS_PROT_READWRITE); /* a reference if need be */
        p->prepared = p->live = rc == CUDA_SUCCESS;
        *window = p->window;
        *context = p->context;
        pthread_mutex_unlock(&app.lock);
        return rc;
    }
    rc = p && p->offloaded && !p->prepared && p->size == r->size ? phys_context(p)
                                                                 : CUDA_ERROR_NOT_FOUND;
    CUmemGenericAllocationHandle real = 0;
    uint64_t start = rp_now_ns();
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemCreate(&real, p->size, &p->prop, p->flags);
    if (rc == CUDA_SUCCESS) {
        p->real = real; /* for the window */
        rc = remap(p, real);
    }
    if (rc == CUDA_SUCCESS) {
        int refs = p->refs;
        p->refs = 1; /* we hold real: no extra reference for the window */
        rc = open_window(p, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
        p->refs = refs;
        if (rc != CUDA_SUCCESS)
            unmap_all(p);
    }
    if (rc == CUDA_SUCCESS) {
        p->prepared = 1;
        *window = p->window;
        *context = p->context;
    } else if (real) {
        rp_real.cuMemRelease(real);
        p->real = 0;
    }
    *map_ns += rp_now_ns() - start;
    pthread_mutex_unlock(&app.lock);
    return rc;
}

void rp_app_vmm_finish(int loaded)
{
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys; i++) {
        struct phys *p = app.phys[i];
        if (!p || !p->prepared)
            continue;
        rp_real.cuCtxSetCurrent(p->context);
        close_window(p);
        p->prepared = 0;
        if (p->live) { /* it was mapped before: it stays so */
            p->live = 0;
        } else if (loaded) {
            settle_back(p, p->real);
        } else { /* offloaded again: a later RELOAD starts over */
            unmap_all(p);
            rp_real.cuMemRelease(p->real);
            p->real = 0;
        }
    }
    pthread_mutex_unlock(&app.lock);
}

int rp_app_vmm_adopt(uint64_t handle, const char *uuid, int fd, size_t *bytes, char *err,
                     size_t errlen)
{
    pthread_mutex_lock(&app.lock);
    struct phys *p = phys_of(handle);
    char ours[33];
    CUresult rc = CUDA_SUCCESS;
    CUmemGenericAllocationHandle real = 0;
    if (!p || !p->offloaded) {
        snprintf(err, errlen, "no offloaded GPU memory handle %#llx", (unsigned long long)handle);
        pthread_mutex_unlock(&app.lock);
        return -1;
    }
    if (rp_device_uuid_hex(p->prop.location.id, ours) != 0)
        snprintf(ours, sizeof(ours), "(unknown)");
    if (strcmp(ours, uuid) != 0) {
        snprintf(err, errlen, "handle %#llx lives on GPU %s, the memory offered is on %s",
                 (unsigned long long)handle, ours, uuid);
        pthread_mutex_unlock(&app.lock);
        return -1;
    }
    rc = phys_context(p);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemImportFromShareableHandle(&real, (void *)(intptr_t)fd,
                                                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (rc == CUDA_SUCCESS) {
        rc = remap(p, real);
        if (rc != CUDA_SUCCESS)
            rp_real.cuMemRelease(real);
    }
    if (rc == CUDA_SUCCESS) {
        settle_back(p, real);
        p->adopted = 1;
        *bytes = p->size;
    } else {
        snprintf(err, errlen, "adopting handle %#llx: %s", (unsigned long long)handle,
                 rp_error_name(rc));
    }
    pthread_mutex_unlock(&app.lock);
    return rc == CUDA_SUCCESS ? 0 : -1;
}

size_t rp_app_vmm_offloaded(void)
{
    size_t n = 0;
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys; i++)
        n += app.phys[i] && app.phys[i]->offloaded;
    pthread_mutex_unlock(&app.lock);
    return n;
}

void rp_app_vmm_totals(size_t *count, size_t *bytes)
{
    *count = *bytes = 0;
    pthread_mutex_lock(&app.lock);
    for (size_t i = 0; i < app.n_phys; i++)
        if (app.phys[i]) {
            ++*count;
            *bytes += app.phys[i]->size;
        }
    pthread_mutex_unlock(&app.lock);
}
