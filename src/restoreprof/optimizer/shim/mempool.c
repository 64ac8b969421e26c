/*
 * Stream-ordered allocations (cuMemAllocAsync, cuMemAllocFromPoolAsync, cuMemFreeAsync), served
 * from the library's VMM so that OFFLOAD saves and releases them like cuMemAlloc memory, and
 * RELOAD / ADOPT bring them back at the same addresses.
 *
 * The semantics are the driver's: an allocation is usable at once in stream order; a free is
 * stream-ordered, so the memory is reused only once an event recorded on the freeing stream
 * has completed (or, without waiting, by a later allocation on that same stream). Freed blocks
 * are kept in a per-pool cache, reused for an allocation of the same rounded size, so that a
 * program allocating per tensor (PyTorch's cudaMallocAsync backend) does not pay cuMemCreate
 * each time. The cache holds up to the pool's release threshold, and at least
 * RP_POOL_CACHE_FLOOR_BYTES; cuMemPoolTrimTo and cuMemPoolDestroy release it. Before OFFLOAD it
 * is released entirely: memory nobody uses is not saved.
 *
 * Left to the driver: allocations below RP_POOL_MIN_BYTES (rounding them to the 2 MiB VMM
 * granularity would waste memory; the driver's checkpoint carries them cheaply), pools that
 * can be shared between processes (export handle types) or are size-limited, pools on another
 * device than the caller's context, and allocations made while a stream is being captured into
 * a graph (those become the graph's memory nodes). A free captured into a graph leaves the
 * block allocated: the graph may still touch it on a later launch.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define RP_POOL_MIN_BYTES RP_MIB
#define RP_POOL_CACHE_FLOOR_BYTES (256 * RP_MIB)
#define RP_POOL_MAX_ACCESS 16

struct block {
    struct rp_allocation a;
    CUevent done; /* pending: recorded on `stream` at the free */
    CUstream stream;
};

struct block_list {
    struct block *items;
    size_t count, capacity;
};

struct rp_pool {
    CUmemoryPool handle; /* the driver's pool object, which the application names */
    CUdevice device;
    size_t granularity; /* of its memory; 0 until first asked */
    int served; /* its allocations come from our VMM */
    int destroyed;
    uint64_t threshold;
    size_t used, used_high, reserved, reserved_high; /* ours; the driver's are added to these */
    struct block_list pending; /* freed; the GPU may still use them */
    struct block_list cached;  /* free for reuse */
    size_t cached_bytes;
    CUmemAccessDesc access[RP_POOL_MAX_ACCESS]; /* other devices' access (cuMemPoolSetAccess) */
    size_t n_access;
};

struct spare_event {
    CUcontext context;
    CUevent event;
};

static struct {
    pthread_mutex_t lock;
    struct rp_pool **pools;
    size_t n_pools, cap_pools;
    struct spare_event *events;
    size_t n_events, cap_events;
} state = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int list_push(struct block_list *l, const struct block *b)
{
    if (rp_grow((void **)&l->items, &l->capacity, l->count + 1, sizeof(*l->items)))
        return -1;
    l->items[l->count++] = *b;
    return 0;
}

static struct block list_remove(struct block_list *l, size_t i)
{
    struct block b = l->items[i];
    memmove(&l->items[i], &l->items[i + 1], (l->count - i - 1) * sizeof(*l->items));
    l->count--;
    return b;
}

/* ---- pools ---- */

static struct rp_pool *pool_add(CUmemoryPool handle, CUdevice device, int served)
{
    struct rp_pool *p = calloc(1, sizeof(*p));
    if (!p || rp_grow((void **)&state.pools, &state.cap_pools, state.n_pools + 1,
                   sizeof(*state.pools))) {
        free(p);
        return NULL;
    }
    p->handle = handle;
    p->device = device;
    p->served = served;
    state.pools[state.n_pools++] = p;
    return p;
}

/* Our record of the pool `handle`; a pool first seen here is served only when it is device's
 * default pool (its properties are known: plain device memory). */
static struct rp_pool *pool_for(CUmemoryPool handle, CUdevice device)
{
    for (size_t i = 0; i < state.n_pools; i++)
        if (state.pools[i]->handle == handle && !state.pools[i]->destroyed)
            return state.pools[i];
    CUmemoryPool fallback = NULL;
    int is_default = rp_real.cuDeviceGetDefaultMemPool &&
                     rp_real.cuDeviceGetDefaultMemPool(&fallback, device) == CUDA_SUCCESS &&
                     fallback == handle;
    return pool_add(handle, device, is_default);
}

/* The driver keeps freed memory until the next synchronization when over the threshold; we see
 * no synchronizations, so keep as much as the pool ever had in use (a program that needed it
 * once needs it again), the threshold, or the floor, whichever is largest. */
static size_t cache_limit(const struct rp_pool *p)
{
    size_t limit = p->threshold > RP_POOL_CACHE_FLOOR_BYTES ? (size_t)p->threshold
                                                           : RP_POOL_CACHE_FLOOR_BYTES;
    return p->used_high > limit ? p->used_high : limit;
}

/* Makes ctx current for work of ours on an application thread; the caller puts back what this
 * returns (the application's current context must not change under it). */
static CUcontext switch_to(CUcontext ctx)
{
    CUcontext before = NULL;
    rp_real.cuCtxGetCurrent(&before);
    if (before != ctx)
        rp_real.cuCtxSetCurrent(ctx);
    return before;
}

static void switch_back(CUcontext before, CUcontext now)
{
    if (before != now)
        rp_real.cuCtxSetCurrent(before);
}

static void spare_event(CUcontext ctx, CUevent ev)
{
    if (!ev)
        return;
    if (rp_grow((void **)&state.events, &state.cap_events, state.n_events + 1, sizeof(*state.events)))
        rp_real.cuEventDestroy_v2(ev);
    else
        state.events[state.n_events++] = (struct spare_event){ ctx, ev };
}

/* An event of ctx (the freed block's, so of its stream's context): a spare, else a new one. */
static CUresult take_event(CUcontext ctx, CUevent *ev)
{
    for (size_t i = state.n_events; i-- > 0;)
        if (state.events[i].context == ctx) {
            *ev = state.events[i].event;
            state.events[i] = state.events[--state.n_events];
            return CUDA_SUCCESS;
        }
    CUcontext before = switch_to(ctx);
    CUresult rc = rp_real.cuEventCreate(ev, CU_EVENT_DISABLE_TIMING);
    switch_back(before, ctx);
    return rc;
}

/* Gives a block's memory back to the driver. */
static void release_block(struct rp_pool *p, struct block *b)
{
    CUcontext before = switch_to(b->a.context);
    CUresult rc = rp_vmm_destroy(&b->a);
    switch_back(before, b->a.context);
    if (rc != CUDA_SUCCESS)
        rp_log("releasing a stream-ordered block at %#llx failed: %s",
               (unsigned long long)b->a.address, rp_error_name(rc));
    p->reserved -= b->a.reserved;
}

static void cache_block(struct rp_pool *p, struct block *b)
{
    spare_event(b->a.context, b->done);
    b->done = NULL;
    if (p->destroyed || list_push(&p->cached, b) != 0) {
        release_block(p, b);
        return;
    }
    p->cached_bytes += b->a.reserved;
    while (p->cached_bytes > cache_limit(p) && p->cached.count > 0) { /* oldest first */
        struct block old = list_remove(&p->cached, 0);
        p->cached_bytes -= old.a.reserved;
        release_block(p, &old);
    }
}

/* Moves pending blocks whose free has completed on the GPU into the cache. Events on one stream
 * complete in order: after the first not ready, that stream's later ones are not asked. */
static void harvest(struct rp_pool *p)
{
    CUstream blocked[16];
    size_t n_blocked = 0;
    for (size_t i = 0; i < p->pending.count;) {
        struct block *b = &p->pending.items[i];
        int skip = 0;
        for (size_t k = 0; k < n_blocked && !skip; k++)
            skip = blocked[k] == b->stream;
        CUresult rc = skip ? CUDA_ERROR_NOT_READY : rp_real.cuEventQuery(b->done);
        if (rc == CUDA_SUCCESS) {
            struct block done = list_remove(&p->pending, i);
            cache_block(p, &done);
            continue;
        }
        if (!skip && n_blocked < 16)
            blocked[n_blocked++] = b->stream;
        i++;
    }
}

static void note_use(struct rp_pool *p, size_t size)
{
    p->used += size;
    if (p->used > p->used_high)
        p->used_high = p->used;
    if (p->reserved > p->reserved_high)
        p->reserved_high = p->reserved;
}

/* A block for size bytes on stream: cached, or freed earlier on the same stream (stream order
 * makes it safe at once), or new. */
static CUresult serve(struct rp_pool *p, size_t size, CUstream stream, struct rp_allocation *out)
{
    if (!p->granularity) {
        CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                     .location = { CU_MEM_LOCATION_TYPE_DEVICE, p->device } };
        if (rp_real.cuMemGetAllocationGranularity(&p->granularity, &prop,
                                                  CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS)
            p->granularity = 2 * RP_MIB;
    }
    size_t granularity = p->granularity;
    size_t bucket = (size + granularity - 1) / granularity * granularity;
    harvest(p);
    for (size_t i = p->cached.count; i-- > 0;)
        if (p->cached.items[i].a.reserved == bucket) {
            struct block b = list_remove(&p->cached, i);
            p->cached_bytes -= bucket;
            *out = b.a;
            out->size = size;
            return CUDA_SUCCESS;
        }
    for (size_t i = 0; i < p->pending.count; i++)
        if (p->pending.items[i].a.reserved == bucket && p->pending.items[i].stream == stream) {
            struct block b = list_remove(&p->pending, i);
            spare_event(b.a.context, b.done);
            *out = b.a;
            out->size = size;
            return CUDA_SUCCESS;
        }
    CUresult rc = rp_vmm_new(size, out);
    if (rc == CUDA_ERROR_OUT_OF_MEMORY) { /* what the cache holds may be what is missing */
        rp_log("GPU memory is short; releasing the stream-ordered cache");
        for (size_t i = 0; i < state.n_pools; i++)
            while (state.pools[i]->cached.count > 0) {
                struct block old = list_remove(&state.pools[i]->cached, 0);
                state.pools[i]->cached_bytes -= old.a.reserved;
                release_block(state.pools[i], &old);
            }
        rc = rp_vmm_new(size, out);
    }
    if (rc != CUDA_SUCCESS)
        return rc;
    out->pool = p;
    p->reserved += out->reserved;
    if (p->n_access)
        rc = rp_real.cuMemSetAccess(out->address, out->reserved, p->access, p->n_access);
    if (rc != CUDA_SUCCESS) {
        rp_vmm_destroy(out);
        p->reserved -= out->reserved;
    }
    return rc;
}

/* The stream a handle means, so that "the same stream" compares equal: 0 is the legacy stream,
 * or the per-thread one for the _ptsz entry points. */
static CUstream stream_of(CUstream s, int per_thread)
{
    return s ? s : per_thread ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY;
}

static int capturing(CUstream s)
{
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    if (!rp_real.cuStreamIsCapturing)
        return 0;
    return rp_real.cuStreamIsCapturing(s, &status) != CUDA_SUCCESS ||
           status != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* Our allocation for the application, or CUDA_ERROR_NOT_SUPPORTED when the driver should do
 * it (see the file's comment). pool 0: the device's current pool. */
static CUresult alloc_ours(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream stream)
{
    CUdevice device;
    CUresult rc = rp_real.cuCtxGetDevice(&device);
    if (rc == CUDA_SUCCESS && !pool)
        rc = rp_real.cuDeviceGetMemPool ? rp_real.cuDeviceGetMemPool(&pool, device)
                                        : CUDA_ERROR_NOT_SUPPORTED;
    if (rc != CUDA_SUCCESS || capturing(stream))
        return CUDA_ERROR_NOT_SUPPORTED;
    struct rp_allocation a;
    pthread_mutex_lock(&state.lock);
    struct rp_pool *p = pool_for(pool, device);
    rc = p && p->served && p->device == device ? serve(p, size, stream, &a)
                                               : CUDA_ERROR_NOT_SUPPORTED;
    if (rc == CUDA_SUCCESS && rp_registry_add(&a) != 0) {
        cache_block(p, &(struct block){ .a = a });
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (rc == CUDA_SUCCESS) {
        note_use(p, size);
        *dptr = a.address;
    }
    pthread_mutex_unlock(&state.lock);
    return rc;
}

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*alloc_pool_fn)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
typedef CUresult (*free_fn)(CUdeviceptr, CUstream);

static CUresult alloc_async(alloc_fn real, alloc_pool_fn real_pool, CUdeviceptr *dptr,
                            size_t size, CUmemoryPool pool, CUstream stream, int per_thread)
{
    if (!rp_config.offload || !dptr || size < RP_POOL_MIN_BYTES)
        return real ? real(dptr, size, stream) : real_pool(dptr, size, pool, stream);
    rp_gate_enter();
    CUresult rc = alloc_ours(dptr, size, pool, stream_of(stream, per_thread));
    if (rc != CUDA_SUCCESS) {
        if (rc != CUDA_ERROR_NOT_SUPPORTED)
            RP_DEBUG("stream-ordered allocation of %zu bytes from VMM failed (%s); the driver "
                     "makes it", size, rp_error_name(rc));
        rc = real ? real(dptr, size, stream) : real_pool(dptr, size, pool, stream);
    }
    rp_gate_leave();
    return rc;
}

static int is_address(struct rp_allocation *a, void *arg)
{
    return a->address == *(CUdeviceptr *)arg;
}

static CUresult free_async(free_fn real, CUdeviceptr dptr, CUstream stream, int per_thread)
{
    if (!rp_config.offload || !dptr)
        return real(dptr, stream);
    rp_gate_enter();
    rp_layout_enter();
    stream = stream_of(stream, per_thread);
    struct rp_allocation a;
    CUresult rc;
    if (capturing(stream)) {
        /* The free belongs to a graph: keep the block for the graph's launches. */
        rc = rp_registry_each(is_address, &dptr) ? CUDA_SUCCESS : real(dptr, stream);
    } else if (rp_registry_take(dptr, &a) != 0) {
        rc = real(dptr, stream);
    } else if (!a.pool) { /* cuMemAlloc memory freed in stream order */
        rc = rp_real.cuStreamSynchronize(stream);
        if (rc == CUDA_SUCCESS)
            rc = rp_vmm_destroy(&a);
    } else {
        pthread_mutex_lock(&state.lock);
        struct rp_pool *p = a.pool;
        struct block b = { .a = a, .stream = stream };
        rc = take_event(a.context, &b.done);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuEventRecord(b.done, stream);
        p->used -= a.size;
        if (rc == CUDA_SUCCESS && list_push(&p->pending, &b) == 0) {
            rc = CUDA_SUCCESS;
        } else { /* no event: wait for the stream here instead */
            rc = rp_real.cuStreamSynchronize(stream);
            cache_block(p, &b);
        }
        pthread_mutex_unlock(&state.lock);
    }
    rp_layout_leave();
    rp_gate_leave();
    return rc;
}

CUresult rp_mempool_free_now(struct rp_allocation *a)
{
    pthread_mutex_lock(&state.lock);
    a->pool->used -= a->size;
    cache_block(a->pool, &(struct block){ .a = *a });
    pthread_mutex_unlock(&state.lock);
    return CUDA_SUCCESS;
}

/* Releases cached blocks (oldest first) while the pool keeps at least keep bytes reserved;
 * pending ones are waited for first. */
static void trim(struct rp_pool *p, size_t keep)
{
    while (p->pending.count > 0) {
        struct block b = list_remove(&p->pending, 0);
        rp_real.cuEventSynchronize(b.done); /* needs no current context */
        cache_block(p, &b);
    }
    while (p->cached.count > 0 && p->reserved - p->cached.items[0].a.reserved >= keep) {
        struct block old = list_remove(&p->cached, 0);
        p->cached_bytes -= old.a.reserved;
        release_block(p, &old);
    }
}

size_t rp_mempool_release_cached(void)
{
    size_t released = 0;
    pthread_mutex_lock(&state.lock);
    for (size_t i = 0; i < state.n_pools; i++) {
        size_t before = state.pools[i]->reserved;
        trim(state.pools[i], 0);
        released += before - state.pools[i]->reserved;
    }
    pthread_mutex_unlock(&state.lock);
    return released;
}

struct access_job {
    struct rp_pool *pool;
    CUresult rc;
};

static int grant_one(struct rp_allocation *a, void *arg)
{
    struct access_job *job = arg;
    if (a->pool == job->pool && job->rc == CUDA_SUCCESS && a->handle)
        job->rc = rp_real.cuMemSetAccess(a->address, a->reserved, job->pool->access,
                                         job->pool->n_access);
    return 0;
}

CUresult rp_mempool_after_map(const struct rp_allocation *a)
{
    if (!a->pool || !a->pool->n_access)
        return CUDA_SUCCESS;
    return rp_real.cuMemSetAccess(a->address, a->reserved, a->pool->access, a->pool->n_access);
}

/* ---- the interposed calls ---- */

#define NEED_REAL(name)                           \
    do {                                          \
        if (rp_load_real() || !rp_real.name)      \
            return CUDA_ERROR_NOT_INITIALIZED;    \
    } while (0)

RP_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    NEED_REAL(cuMemAllocAsync);
    return alloc_async(rp_real.cuMemAllocAsync, NULL, dptr, size, NULL, stream, 0);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *, size_t, CUstream);
RP_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    NEED_REAL(cuMemAllocAsync_ptsz);
    return alloc_async(rp_real.cuMemAllocAsync_ptsz, NULL, dptr, size, NULL, stream, 1);
}

RP_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                           CUstream stream)
{
    NEED_REAL(cuMemAllocFromPoolAsync);
    if (!pool)
        return rp_real.cuMemAllocFromPoolAsync(dptr, size, pool, stream);
    return alloc_async(NULL, rp_real.cuMemAllocFromPoolAsync, dptr, size, pool, stream, 0);
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
RP_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size,
                                                CUmemoryPool pool, CUstream stream)
{
    NEED_REAL(cuMemAllocFromPoolAsync_ptsz);
    if (!pool)
        return rp_real.cuMemAllocFromPoolAsync_ptsz(dptr, size, pool, stream);
    return alloc_async(NULL, rp_real.cuMemAllocFromPoolAsync_ptsz, dptr, size, pool, stream, 1);
}

RP_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    NEED_REAL(cuMemFreeAsync);
    return free_async(rp_real.cuMemFreeAsync, dptr, stream, 0);
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
RP_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    NEED_REAL(cuMemFreeAsync_ptsz);
    return free_async(rp_real.cuMemFreeAsync_ptsz, dptr, stream, 1);
}

RP_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    NEED_REAL(cuMemPoolCreate);
    CUresult rc = rp_real.cuMemPoolCreate(pool, props);
    if (rc != CUDA_SUCCESS || !rp_config.offload)
        return rc;
    int plain = props->allocType == CU_MEM_ALLOCATION_TYPE_PINNED &&
                props->location.type == CU_MEM_LOCATION_TYPE_DEVICE &&
                props->handleTypes == CU_MEM_HANDLE_TYPE_NONE && props->maxSize == 0;
    pthread_mutex_lock(&state.lock);
    if (!pool_add(*pool, props->location.id, plain))
        RP_DEBUG("no memory to track pool %p: the driver serves it", (void *)*pool);
    pthread_mutex_unlock(&state.lock);
    return rc;
}

/* Our record of a pool the application names: one it created, or the current device's default
 * pool (which it may configure before its first allocation: PyTorch sets the release threshold
 * and peer access first). NULL for any other: the driver's alone. */
static struct rp_pool *known_pool(CUmemoryPool handle)
{
    for (size_t i = 0; i < state.n_pools; i++)
        if (state.pools[i]->handle == handle && !state.pools[i]->destroyed)
            return state.pools[i];
    CUdevice device;
    CUmemoryPool fallback = NULL;
    if (!rp_config.offload || rp_real.cuCtxGetDevice(&device) != CUDA_SUCCESS ||
        !rp_real.cuDeviceGetDefaultMemPool ||
        rp_real.cuDeviceGetDefaultMemPool(&fallback, device) != CUDA_SUCCESS || fallback != handle)
        return NULL;
    return pool_add(handle, device, 1);
}

RP_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    NEED_REAL(cuMemPoolDestroy);
    pthread_mutex_lock(&state.lock);
    struct rp_pool *p = known_pool(pool);
    if (p) { /* blocks still allocated are released when freed (cache_block) */
        trim(p, 0);
        p->destroyed = 1;
    }
    pthread_mutex_unlock(&state.lock);
    return rp_real.cuMemPoolDestroy(pool);
}

RP_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep)
{
    NEED_REAL(cuMemPoolTrimTo);
    pthread_mutex_lock(&state.lock);
    struct rp_pool *p = known_pool(pool);
    if (p)
        trim(p, keep);
    pthread_mutex_unlock(&state.lock);
    return rp_real.cuMemPoolTrimTo(pool, keep);
}

RP_EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr,
                                         void *value)
{
    NEED_REAL(cuMemPoolSetAttribute);
    CUresult rc = rp_real.cuMemPoolSetAttribute(pool, attr, value);
    pthread_mutex_lock(&state.lock);
    struct rp_pool *p = rc == CUDA_SUCCESS ? known_pool(pool) : NULL;
    if (p && attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        p->threshold = *(cuuint64_t *)value;
    else if (p && attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH)
        p->used_high = p->used;
    else if (p && attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)
        p->reserved_high = p->reserved;
    pthread_mutex_unlock(&state.lock);
    return rc;
}

/* The memory figures count ours beside the driver's (which holds the small allocations). */
RP_EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr,
                                         void *value)
{
    NEED_REAL(cuMemPoolGetAttribute);
    CUresult rc = rp_real.cuMemPoolGetAttribute(pool, attr, value);
    pthread_mutex_lock(&state.lock);
    struct rp_pool *p = rc == CUDA_SUCCESS ? known_pool(pool) : NULL;
    cuuint64_t *figure = value;
    if (p && attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
        *figure += p->used;
    else if (p && attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH)
        *figure += p->used_high;
    else if (p && attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
        *figure += p->reserved;
    else if (p && attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)
        *figure += p->reserved_high;
    pthread_mutex_unlock(&state.lock);
    return rc;
}

/* Other devices' access to the pool: kept, and granted on every block of it, now and later. */
RP_EXPORT CUresult cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc *map, size_t count)
{
    NEED_REAL(cuMemPoolSetAccess);
    CUresult rc = rp_real.cuMemPoolSetAccess(pool, map, count);
    pthread_mutex_lock(&state.lock);
    struct rp_pool *p = rc == CUDA_SUCCESS ? known_pool(pool) : NULL;
    for (size_t i = 0; p && i < count; i++) {
        if (map[i].location.type == CU_MEM_LOCATION_TYPE_DEVICE &&
            map[i].location.id == p->device)
            continue; /* its own device always has read/write */
        size_t k = 0;
        while (k < p->n_access && (p->access[k].location.type != map[i].location.type ||
                                   p->access[k].location.id != map[i].location.id))
            k++;
        if (k == RP_POOL_MAX_ACCESS) {
            rc = CUDA_ERROR_NOT_SUPPORTED;
            break;
        }
        p->access[k] = map[i];
        p->n_access += k == p->n_access;
    }
    if (p && rc == CUDA_SUCCESS && p->n_access) {
        struct access_job job = { p, CUDA_SUCCESS };
        rp_registry_each(grant_one, &job);
        struct block_list *lists[] = { &p->pending, &p->cached };
        for (int l = 0; l < 2 && job.rc == CUDA_SUCCESS; l++)
            for (size_t i = 0; i < lists[l]->count && job.rc == CUDA_SUCCESS; i++)
                job.rc = rp_real.cuMemSetAccess(lists[l]->items[i].a.address,
                                                lists[l]->items[i].a.reserved, p->access,
                                                p->n_access);
        rc = job.rc;
    }
    pthread_mutex_unlock(&state.lock);
    return rc;
}
