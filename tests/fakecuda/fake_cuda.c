/*
 * A fake libcuda.so.1 for tests on machines without a GPU.
 *
 * "Device" memory is host memory: cuMemAlloc returns a malloc'd address, VMM reservations are
 * PROT_NONE mmaps and physical allocations are memfds mapped over them, so programs that move
 * bytes through the driver API get the same bytes back. Streams run every operation at once.
 * The signatures are the real ones from cuda.h so a caller compiled against the toolkit (or
 * cuda-python) cannot tell the difference at the ABI level.
 *
 * Test hooks:
 *   FAKECUDA_FAIL=name:N[:K][,name2:M...]  the call `name` (exported symbol name) succeeds N
 *                                          times, then fails with CUDA_ERROR_UNKNOWN (K times,
 *                                          or forever when K is absent).
 *   FAKECUDA_DEVICES=n                     number of devices (default 1).
 *   FAKECUDA_TRACE_PROC=1                  print each cuGetProcAddress request on stderr.
 *   fakecuda_calls("cuMemcpyHtoD_v2")      how many times that entry point was called.
 *   fakecuda_reset()                       zero the counters and the copy record.
 *   fakecuda_async_max_bytes()             largest cuMemcpy{HtoD,DtoH}Async_v2 since reset
 *   fakecuda_async_streams()               distinct streams those copies ran on
 *   fakecuda_async_threads()               distinct host threads that issued them
 *   FAKECUDA_COPY_DELAY_US=n               each of those copies takes n us (so that every
 *                                          engine thread gets chunks, as on a real link)
 *   fakecuda_async_pinned/_pageable()      how many of them staged through memory from
 *                                          cuMemHostAlloc/cuMemAllocHost, or through other memory
 *   fakecuda_host_alloc_bytes_max()        largest pinned allocation since reset
 *   FAKECUDA_HOST_ALLOC_DELAY_US=n         each cuMemHostAlloc takes n us (pinning a real
 *                                          snapshot takes seconds: a hot intake under way)
 *   fakecuda_device_of(ptr)                the device that memory is on (-1: not device memory)
 *   fakecuda_ctx_device()                  the current context's device (-1: none)
 *
 * Devices have distinct UUIDs ("fakecuda" then the ordinal in the last byte). A restore with
 * CUcheckpointRestoreArgs.gpuPairs moves the process to the new devices, as the driver does: its
 * contexts and memory report the new device, and cuDevicePrimaryCtxRetain(new) returns the
 * context it had on the old one. The restoring process cannot reach the target's memory, so it
 * leaves the map in FAKECUDA_STATE_DIR/pid-N.gpumap (a map other than the identity needs that
 * directory) and the target applies it at its next driver call.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define FAKE_VERSION 13000
#define FAKE_GRANULARITY (2u << 20)
#define MAX_DEVICES 8

/* ---------- call counters and fault injection ---------- */

#define MAX_COUNTED 128
struct counter {
    const char *name;
    atomic_ulong calls;
    long fail_after; /* -1: never fails */
    long fail_times; /* -1: forever */
};
static struct counter counters[MAX_COUNTED];
static atomic_int counter_count;
static pthread_mutex_t counter_lock = PTHREAD_MUTEX_INITIALIZER;

static void load_fail_spec(struct counter *c)
{
    c->fail_after = -1;
    c->fail_times = -1;
    const char *spec = getenv("FAKECUDA_FAIL");
    size_t len = strlen(c->name);
    for (const char *p = spec; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        if (strncmp(p, c->name, len) == 0 && p[len] == ':') {
            char *end;
            c->fail_after = strtol(p + len + 1, &end, 10);
            if (*end == ':')
                c->fail_times = strtol(end + 1, NULL, 10);
            return;
        }
    }
}

/* Counters are created on first use; the name is a string literal so it outlives us. */
static struct counter *counter_for(const char *name, int create)
{
    int n = atomic_load(&counter_count);
    for (int i = 0; i < n; i++)
        if (strcmp(counters[i].name, name) == 0)
            return &counters[i];
    if (!create)
        return NULL;
    pthread_mutex_lock(&counter_lock);
    struct counter *found = NULL;
    n = atomic_load(&counter_count);
    for (int i = 0; i < n && !found; i++)
        if (strcmp(counters[i].name, name) == 0)
            found = &counters[i];
    if (!found && n < MAX_COUNTED) {
        found = &counters[n];
        found->name = name;
        load_fail_spec(found);
        atomic_store(&counter_count, n + 1);
    }
    pthread_mutex_unlock(&counter_lock);
    return found;
}

/* Counts the call; returns nonzero when fault injection says this call must fail. */
static int enter(const char *name)
{
    struct counter *c = counter_for(name, 1);
    if (!c)
        return 0;
    unsigned long n = atomic_fetch_add(&c->calls, 1);
    if (c->fail_after < 0 || (long)n < c->fail_after)
        return 0;
    return c->fail_times < 0 || (long)n < c->fail_after + c->fail_times;
}

EXPORT unsigned long fakecuda_calls(const char *name)
{
    struct counter *c = counter_for(name, 0);
    return c ? atomic_load(&c->calls) : 0;
}

static void reset_record(void);

EXPORT void fakecuda_reset(void)
{
    reset_record();
    int n = atomic_load(&counter_count);
    for (int i = 0; i < n; i++)
        atomic_store(&counters[i].calls, 0);
}

#define ENTER(name)                       \
    do {                                  \
        if (enter(name))                  \
            return CUDA_ERROR_UNKNOWN;    \
    } while (0)

#define ENTER_INIT(name)                          \
    do {                                          \
        ENTER(name);                              \
        if (!initialized)                         \
            return CUDA_ERROR_NOT_INITIALIZED;    \
        apply_pending_gpu_map();                  \
    } while (0)

/* ---------- devices and contexts ---------- */

struct fake_ctx {
    int device;
    int primary;
    int refcount;
    unsigned long long id; /* cuCtxGetId's: a new one each time the context is made */
    size_t stack_size; /* CU_LIMIT_STACK_SIZE; 0 means the default, 1024 */
};

static int initialized;
static int device_count = 1;
static struct fake_ctx primary_ctx[MAX_DEVICES];
/* Which primary_ctx a device's is: a restore onto other GPUs permutes it. */
static int primary_slot[MAX_DEVICES] = { 0, 1, 2, 3, 4, 5, 6, 7 };
#define PRIMARY(dev) (primary_ctx[primary_slot[dev]])
/* Contexts from cuCtxCreate, so that a GPU map can move them too. */
static struct fake_ctx *created_ctx[64];
static void apply_pending_gpu_map(void);
static __thread struct fake_ctx *current_ctx;
static void start_restore_thread(void);

EXPORT CUresult cuInit(unsigned int flags)
{
    ENTER("cuInit");
    start_restore_thread();
    const char *n = getenv("FAKECUDA_DEVICES");
    device_count = n ? atoi(n) : 1;
    if (device_count < 0 || device_count > MAX_DEVICES)
        device_count = 1;
    for (int i = 0; i < MAX_DEVICES; i++) {
        primary_ctx[i].device = i;
        primary_ctx[i].primary = 1;
    }
    initialized = 1;
    return device_count ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}

EXPORT CUresult cuDriverGetVersion(int *version)
{
    ENTER("cuDriverGetVersion");
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = FAKE_VERSION;
    return CUDA_SUCCESS;
}

static CUresult check_device(CUdevice dev)
{
    return dev >= 0 && dev < device_count ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal)
{
    ENTER_INIT("cuDeviceGet");
    if (!dev || check_device(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *count)
{
    ENTER_INIT("cuDeviceGetCount");
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = device_count;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    ENTER_INIT("cuDeviceGetName");
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (check_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "Fake CUDA Device %d", dev);
    return CUDA_SUCCESS;
}

static CUresult fill_uuid(CUuuid *uuid, CUdevice dev)
{
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    if (check_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    memset(uuid->bytes, 0, sizeof(uuid->bytes));
    memcpy(uuid->bytes, "fakecuda", 8);
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}

/* cuda.h maps cuDeviceGetUuid to _v2; the old symbol is still exported by the driver. */
CUresult cuDeviceGetUuid_v1(CUuuid *uuid, CUdevice dev) __asm__("cuDeviceGetUuid");

EXPORT CUresult cuDeviceGetUuid_v1(CUuuid *uuid, CUdevice dev)
{
    ENTER_INIT("cuDeviceGetUuid");
    return fill_uuid(uuid, dev);
}

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    ENTER_INIT("cuDeviceGetUuid_v2");
    return fill_uuid(uuid, dev);
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    ENTER_INIT("cuDeviceTotalMem_v2");
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    *bytes = 80ull << 30;
    return check_device(dev);
}

EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    ENTER_INIT("cuDeviceGetAttribute");
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: *pi = 2; break;
    default: *pi = 0; break;
    }
    return check_device(dev);
}

static void free_host_memory_of(void *ctx);

static unsigned long long next_context_id(void)
{
    static unsigned long long last;
    return __atomic_add_fetch(&last, 1, __ATOMIC_SEQ_CST);
}

EXPORT CUresult cuCtxGetId(CUcontext ctx, unsigned long long *id)
{
    ENTER_INIT("cuCtxGetId");
    struct fake_ctx *c = ctx ? (struct fake_ctx *)ctx : current_ctx;
    if (!id)
        return CUDA_ERROR_INVALID_VALUE;
    if (!c || (c->primary && c->refcount <= 0))
        return CUDA_ERROR_INVALID_CONTEXT; /* none, or a primary context that was destroyed */
    *id = c->id;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    ENTER_INIT("cuDevicePrimaryCtxRetain");
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (check_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (__atomic_add_fetch(&PRIMARY(dev).refcount, 1, __ATOMIC_SEQ_CST) == 1)
        PRIMARY(dev).id = next_context_id(); /* made anew: at the same address, as the driver */
    *pctx = (CUcontext)&PRIMARY(dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    ENTER_INIT("cuDevicePrimaryCtxRelease_v2");
    if (check_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (__atomic_sub_fetch(&PRIMARY(dev).refcount, 1, __ATOMIC_SEQ_CST) == 0) {
        /* the last reference: the driver destroys the primary context and what was made in it */
        if (current_ctx == &PRIMARY(dev))
            current_ctx = NULL;
        free_host_memory_of(&PRIMARY(dev));
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    ENTER_INIT("cuDevicePrimaryCtxGetState");
    if (check_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (flags)
        *flags = 0;
    if (active)
        *active = PRIMARY(dev).refcount > 0;
    return CUDA_SUCCESS;
}

/* For tests: the references held on dev's primary context. */
EXPORT int fakecuda_primary_refcount(int dev)
{
    return check_device(dev) ? -1 : PRIMARY(dev).refcount;
}

static CUresult create_ctx(CUcontext *pctx, CUdevice dev)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (check_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    struct fake_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return CUDA_ERROR_OUT_OF_MEMORY;
    ctx->device = dev;
    ctx->refcount = 1;
    ctx->id = next_context_id();
    for (size_t i = 0; i < sizeof created_ctx / sizeof *created_ctx; i++)
        if (__sync_bool_compare_and_swap(&created_ctx[i], NULL, ctx))
            break;
    current_ctx = ctx; /* cuCtxCreate makes the new context current, like the driver. */
    *pctx = (CUcontext)ctx;
    return CUDA_SUCCESS;
}

/* The pre-12.5 form, still exported by the driver for old binaries. */
EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    ENTER_INIT("cuCtxCreate_v2");
    return create_ctx(pctx, dev);
}

EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                               CUdevice dev)
{
    ENTER_INIT("cuCtxCreate_v4");
    return create_ctx(pctx, dev);
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    ENTER_INIT("cuCtxDestroy_v2");
    struct fake_ctx *c = (struct fake_ctx *)ctx;
    if (!c || c->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (current_ctx == c)
        current_ctx = NULL;
    free_host_memory_of(c);
    free(c);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    ENTER_INIT("cuCtxSetCurrent");
    current_ctx = (struct fake_ctx *)ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    ENTER_INIT("cuCtxGetCurrent");
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = (CUcontext)current_ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    ENTER_INIT("cuCtxPushCurrent_v2");
    current_ctx = (struct fake_ctx *)ctx; /* a one-deep stack is enough for tests */
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    ENTER_INIT("cuCtxPopCurrent_v2");
    if (pctx)
        *pctx = (CUcontext)current_ctx;
    current_ctx = NULL;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *dev)
{
    ENTER_INIT("cuCtxGetDevice");
    if (!current_ctx)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = current_ctx->device;
    return CUDA_SUCCESS;
}

/* Work that touches memory needs a current context, as with the real driver. */
#define NEED_CTX()                                \
    do {                                          \
        if (!current_ctx)                         \
            return CUDA_ERROR_INVALID_CONTEXT;    \
    } while (0)

EXPORT CUresult cuCtxSynchronize(void)
{
    ENTER_INIT("cuCtxSynchronize");
    NEED_CTX();
    return CUDA_SUCCESS;
}

/* Only the stack size is kept (the one limit restoreprof's library changes); the others
 * read as the driver's defaults. */
EXPORT CUresult cuCtxGetLimit(size_t *value, CUlimit limit)
{
    ENTER_INIT("cuCtxGetLimit");
    NEED_CTX();
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    *value = limit == CU_LIMIT_STACK_SIZE ? (current_ctx->stack_size ? current_ctx->stack_size : 1024)
             : limit == CU_LIMIT_MALLOC_HEAP_SIZE ? 8u << 20
                                                  : 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    ENTER_INIT("cuCtxSetLimit");
    NEED_CTX();
    if (limit == CU_LIMIT_STACK_SIZE)
        current_ctx->stack_size = value;
    return CUDA_SUCCESS;
}

/* ---------- memory registry: what cuPointerGetAttribute and cuMemFree know ---------- */

enum region_kind { REGION_DEVICE, REGION_HOST_ALLOC, REGION_HOST_REGISTERED, REGION_VMM };

struct region {
    uintptr_t base;
    size_t size;
    enum region_kind kind;
    int device; /* the current context's when it was made (device memory only) */
    void *owner; /* pinned host memory: the context current when it was made, which takes it
                  * along when it is destroyed (as the driver does) */
    struct region *next;
};

static struct region *regions;
static pthread_mutex_t region_lock = PTHREAD_MUTEX_INITIALIZER;

static int add_region_on(uintptr_t base, size_t size, enum region_kind kind, int device)
{
    struct region *r = malloc(sizeof(*r));
    if (!r)
        return -1;
    *r = (struct region){ base, size, kind, device, kind == REGION_HOST_ALLOC ? current_ctx : NULL,
                          NULL };
    pthread_mutex_lock(&region_lock);
    r->next = regions;
    regions = r;
    pthread_mutex_unlock(&region_lock);
    return 0;
}

/* Removes the region starting exactly at base; returns its size, 0 when none. */
static size_t remove_region(uintptr_t base, enum region_kind kind)
{
    size_t size = 0;
    pthread_mutex_lock(&region_lock);
    for (struct region **p = &regions; *p; p = &(*p)->next) {
        if ((*p)->base == base && (*p)->kind == kind) {
            struct region *r = *p;
            *p = r->next;
            size = r->size;
            free(r);
            break;
        }
    }
    pthread_mutex_unlock(&region_lock);
    return size;
}

/* A destroyed context's pinned host memory goes with it: unmapped, so that a stale pointer into
 * it faults (EFAULT in a read(2) into it), as with the driver. */
static void free_host_memory_of(void *ctx)
{
    pthread_mutex_lock(&region_lock);
    for (struct region **p = &regions; *p;) {
        struct region *r = *p;
        if (r->kind == REGION_HOST_ALLOC && r->owner == ctx) {
            *p = r->next;
            munmap((void *)r->base, r->size);
            free(r);
        } else {
            p = &r->next;
        }
    }
    pthread_mutex_unlock(&region_lock);
}

static int find_region(uintptr_t addr, struct region *out);

static int vmm_device_at(uintptr_t addr);

/* The device addr's memory is on: for a VMM range, that of the physical memory mapped there. */
static int region_device(const struct region *r, uintptr_t addr)
{
    int mapped = r->kind == REGION_VMM ? vmm_device_at(addr) : -1;
    return mapped >= 0 ? mapped : r->device;
}

static int add_region(uintptr_t base, size_t size, enum region_kind kind)
{
    return add_region_on(base, size, kind, current_ctx ? current_ctx->device : 0);
}

EXPORT int fakecuda_device_of(CUdeviceptr ptr)
{
    struct region r;
    if (!find_region(ptr, &r) || (r.kind != REGION_DEVICE && r.kind != REGION_VMM))
        return -1;
    return region_device(&r, ptr);
}

EXPORT int fakecuda_ctx_device(void)
{
    return current_ctx ? current_ctx->device : -1;
}

static int is_region(const void *p, enum region_kind kind)
{
    struct region r;
    return find_region((uintptr_t)p, &r) && r.kind == kind;
}

static int find_region(uintptr_t addr, struct region *out)
{
    int found = 0;
    pthread_mutex_lock(&region_lock);
    for (struct region *r = regions; r && !found; r = r->next) {
        if (addr >= r->base && addr < r->base + r->size) {
            *out = *r;
            found = 1;
        }
    }
    pthread_mutex_unlock(&region_lock);
    return found;
}

/* ---------- what the engine did: its copies' sizes, streams and staging ---------- */

#define MAX_SEEN_STREAMS 256
static atomic_size_t async_max_bytes, host_alloc_max_bytes;
static atomic_ulong async_pinned, async_pageable;
static CUstream seen_streams[MAX_SEEN_STREAMS];
static int n_seen_streams;
static pthread_t seen_threads[MAX_SEEN_STREAMS];
static int n_seen_threads;
static pthread_mutex_t record_lock = PTHREAD_MUTEX_INITIALIZER;

static void raise_to(atomic_size_t *max, size_t value)
{
    size_t old = atomic_load(max);
    while (value > old && !atomic_compare_exchange_weak(max, &old, value))
        ;
}

static void record_async(const void *host, size_t n, CUstream s)
{
    raise_to(&async_max_bytes, n);
    atomic_fetch_add(is_region(host, REGION_HOST_ALLOC) ? &async_pinned : &async_pageable, 1);
    pthread_mutex_lock(&record_lock);
    int seen = 0;
    for (int i = 0; i < n_seen_streams && !seen; i++)
        seen = seen_streams[i] == s;
    if (!seen && n_seen_streams < MAX_SEEN_STREAMS)
        seen_streams[n_seen_streams++] = s;
    seen = 0;
    for (int i = 0; i < n_seen_threads && !seen; i++)
        seen = pthread_equal(seen_threads[i], pthread_self());
    if (!seen && n_seen_threads < MAX_SEEN_STREAMS)
        seen_threads[n_seen_threads++] = pthread_self();
    pthread_mutex_unlock(&record_lock);
    const char *delay = getenv("FAKECUDA_COPY_DELAY_US");
    if (delay && *delay)
        usleep((useconds_t)atoi(delay));
}

EXPORT int fakecuda_async_threads(void)
{
    pthread_mutex_lock(&record_lock);
    int n = n_seen_threads;
    pthread_mutex_unlock(&record_lock);
    return n;
}

EXPORT size_t fakecuda_async_max_bytes(void) { return atomic_load(&async_max_bytes); }
EXPORT unsigned long fakecuda_async_pinned(void) { return atomic_load(&async_pinned); }
EXPORT unsigned long fakecuda_async_pageable(void) { return atomic_load(&async_pageable); }
EXPORT size_t fakecuda_host_alloc_bytes_max(void) { return atomic_load(&host_alloc_max_bytes); }

EXPORT int fakecuda_async_streams(void)
{
    pthread_mutex_lock(&record_lock);
    int n = n_seen_streams;
    pthread_mutex_unlock(&record_lock);
    return n;
}

static void reset_record(void)
{
    atomic_store(&async_max_bytes, 0);
    atomic_store(&host_alloc_max_bytes, 0);
    atomic_store(&async_pinned, 0);
    atomic_store(&async_pageable, 0);
    pthread_mutex_lock(&record_lock);
    n_seen_streams = n_seen_threads = 0;
    pthread_mutex_unlock(&record_lock);
}

/* ---------- allocation ---------- */

static void *page_alloc(size_t size)
{
    void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    ENTER_INIT("cuMemAlloc_v2");
    NEED_CTX();
    if (!dptr || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    void *p = page_alloc(size);
    if (!p || add_region((uintptr_t)p, size, REGION_DEVICE))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *dptr = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}

static CUresult pool_free(CUdeviceptr dptr); /* stream-ordered allocations, below */

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    ENTER_INIT("cuMemFree_v2");
    if (!dptr)
        return CUDA_SUCCESS;
    if (pool_free(dptr) == CUDA_SUCCESS) /* a stream-ordered allocation */
        return CUDA_SUCCESS;
    size_t size = remove_region(dptr, REGION_DEVICE);
    if (!size)
        return CUDA_ERROR_INVALID_VALUE;
    munmap((void *)dptr, size);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    ENTER_INIT("cuMemGetInfo_v2");
    if (free_bytes)
        *free_bytes = 79ull << 30;
    if (total)
        *total = 80ull << 30;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    ENTER_INIT("cuMemGetAddressRange_v2");
    struct region r;
    if (!find_region(dptr, &r) || (r.kind != REGION_DEVICE && r.kind != REGION_VMM))
        return CUDA_ERROR_NOT_FOUND;
    if (pbase)
        *pbase = r.base;
    if (psize)
        *psize = r.size;
    return CUDA_SUCCESS;
}

static CUresult host_alloc(void **pp, size_t size)
{
    if (!pp)
        return CUDA_ERROR_INVALID_VALUE;
    void *p = page_alloc(size);
    if (!p || add_region((uintptr_t)p, size, REGION_HOST_ALLOC))
        return CUDA_ERROR_OUT_OF_MEMORY;
    raise_to(&host_alloc_max_bytes, size);
    *pp = p;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t size)
{
    ENTER_INIT("cuMemAllocHost_v2");
    NEED_CTX();
    return host_alloc(pp, size);
}

EXPORT CUresult cuMemHostAlloc(void **pp, size_t size, unsigned int flags)
{
    ENTER_INIT("cuMemHostAlloc");
    NEED_CTX();
    const char *delay = getenv("FAKECUDA_HOST_ALLOC_DELAY_US");
    if (delay && *delay)
        usleep((useconds_t)atoi(delay));
    return host_alloc(pp, size);
}

EXPORT CUresult cuMemFreeHost(void *p)
{
    ENTER_INIT("cuMemFreeHost");
    size_t size = remove_region((uintptr_t)p, REGION_HOST_ALLOC);
    if (!size)
        return CUDA_ERROR_INVALID_VALUE;
    munmap(p, size);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemHostRegister_v2(void *p, size_t size, unsigned int flags)
{
    ENTER_INIT("cuMemHostRegister_v2");
    NEED_CTX();
    struct region r;
    if (!p || !size)
        return CUDA_ERROR_INVALID_VALUE;
    if (find_region((uintptr_t)p, &r))
        return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    return add_region((uintptr_t)p, size, REGION_HOST_REGISTERED) ? CUDA_ERROR_OUT_OF_MEMORY
                                                                   : CUDA_SUCCESS;
}

EXPORT CUresult cuMemHostUnregister(void *p)
{
    ENTER_INIT("cuMemHostUnregister");
    return remove_region((uintptr_t)p, REGION_HOST_REGISTERED) ? CUDA_SUCCESS
                                                               : CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}

EXPORT CUresult cuMemHostGetFlags(unsigned int *flags, void *p)
{
    ENTER_INIT("cuMemHostGetFlags");
    struct region r;
    if (!flags || !find_region((uintptr_t)p, &r))
        return CUDA_ERROR_INVALID_VALUE;
    if (r.kind != REGION_HOST_ALLOC && r.kind != REGION_HOST_REGISTERED)
        return CUDA_ERROR_INVALID_VALUE;
    *flags = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    ENTER_INIT("cuPointerGetAttribute");
    struct region r;
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    if (!find_region(ptr, &r))
        return CUDA_ERROR_INVALID_VALUE; /* what the driver says for pageable memory */
    int is_device = r.kind == REGION_DEVICE || r.kind == REGION_VMM;
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = is_device ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = is_device ? region_device(&r, ptr) : 0;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = r.base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = r.size;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

/* ---------- copies and memset: all synchronous, on host memory ---------- */

static CUresult copy(CUdeviceptr dst, const void *src, size_t n)
{
    NEED_CTX();
    if ((!dst || !src) && n)
        return CUDA_ERROR_INVALID_VALUE;
    memmove((void *)dst, src, n);
    return CUDA_SUCCESS;
}

#define SRC(p) ((const void *)(uintptr_t)(p))

EXPORT CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    ENTER_INIT("cuMemcpy");
    return copy(dst, SRC(src), n);
}

EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    ENTER_INIT("cuMemcpyAsync");
    return copy(dst, SRC(src), n);
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    ENTER_INIT("cuMemcpyHtoD_v2");
    return copy(dst, src, n);
}

EXPORT CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    ENTER_INIT("cuMemcpyDtoH_v2");
    return copy((CUdeviceptr)dst, SRC(src), n);
}

EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    ENTER_INIT("cuMemcpyDtoD_v2");
    return copy(dst, SRC(src), n);
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    ENTER_INIT("cuMemcpyHtoDAsync_v2");
    record_async(src, n, s);
    return copy(dst, src, n);
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    ENTER_INIT("cuMemcpyDtoHAsync_v2");
    record_async(dst, n, s);
    return copy((CUdeviceptr)dst, SRC(src), n);
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n)
{
    ENTER_INIT("cuMemsetD8_v2");
    NEED_CTX();
    memset((void *)dst, value, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int value, size_t n)
{
    ENTER_INIT("cuMemsetD32_v2");
    NEED_CTX();
    unsigned int *p = (unsigned int *)dst;
    for (size_t i = 0; i < n; i++)
        p[i] = value;
    return CUDA_SUCCESS;
}

/* A kernel launch does nothing, but is counted so tests can see it was (not) let through. */
EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared, CUstream s, void **params, void **extra)
{
    ENTER_INIT("cuLaunchKernel");
    NEED_CTX();
    return CUDA_SUCCESS;
}

/* ---------- streams and events: handles only, work is already done ----------
 *
 * Work on a stream is done at once, except on a stream a test holds (fakecuda_hold_stream):
 * an event recorded on it stays "not ready" until the test lets the stream go, which is how
 * tests see that a stream-ordered free is not reused before the GPU is done with the memory. */

struct fake_handle {
    int held;                         /* a stream: its work "still runs" */
    struct fake_handle *recorded_on;  /* an event: the stream of its last record */
};

static CUresult new_handle(void **out)
{
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    *out = calloc(1, sizeof(struct fake_handle));
    return *out ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

/* For tests: hold (1) or let go (0) a stream created with cuStreamCreate. */
EXPORT void fakecuda_hold_stream(CUstream s, int held)
{
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD)
        ((struct fake_handle *)s)->held = held;
}

static int is_held(CUstream s)
{
    return s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD &&
           ((struct fake_handle *)s)->held;
}

EXPORT CUresult cuStreamCreate(CUstream *s, unsigned int flags)
{
    ENTER_INIT("cuStreamCreate");
    NEED_CTX();
    return new_handle((void **)s);
}

EXPORT CUresult cuStreamDestroy_v2(CUstream s)
{
    ENTER_INIT("cuStreamDestroy_v2");
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    free(s);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamSynchronize(CUstream s)
{
    ENTER_INIT("cuStreamSynchronize");
    NEED_CTX();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamQuery(CUstream s)
{
    ENTER_INIT("cuStreamQuery");
    return is_held(s) ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
}

EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *status)
{
    ENTER_INIT("cuStreamIsCapturing");
    if (!status)
        return CUDA_ERROR_INVALID_VALUE;
    *status = CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags)
{
    ENTER_INIT("cuStreamWaitEvent");
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuEventCreate(CUevent *e, unsigned int flags)
{
    ENTER_INIT("cuEventCreate");
    NEED_CTX();
    return new_handle((void **)e);
}

EXPORT CUresult cuEventRecord(CUevent e, CUstream s)
{
    ENTER_INIT("cuEventRecord");
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    ((struct fake_handle *)e)->recorded_on = is_held(s) ? (struct fake_handle *)s : NULL;
    return CUDA_SUCCESS;
}

/* A held stream's work never finishes in a test: synchronizing on it would hang. */
EXPORT CUresult cuEventSynchronize(CUevent e)
{
    ENTER_INIT("cuEventSynchronize");
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fake_handle *on = ((struct fake_handle *)e)->recorded_on;
    return on && on->held ? CUDA_ERROR_ILLEGAL_STATE : CUDA_SUCCESS;
}

EXPORT CUresult cuEventQuery(CUevent e)
{
    ENTER_INIT("cuEventQuery");
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    struct fake_handle *on = ((struct fake_handle *)e)->recorded_on;
    return on && on->held ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
}

EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent start, CUevent end)
{
    ENTER_INIT("cuEventElapsedTime_v2");
    if (!ms)
        return CUDA_ERROR_INVALID_VALUE;
    *ms = 0.0f;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent e)
{
    ENTER_INIT("cuEventDestroy_v2");
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    free(e);
    return CUDA_SUCCESS;
}

/* ---------- virtual memory management: mmap reservations, memfd physical memory ----------
 *
 * As in the driver: a physical allocation lives while the application holds a reference to
 * its handle (create, retain, import) or while it is mapped; handle values are never reused
 * (a new allocation after a release, or after a restore, gets a new value); a mapping must lie
 * in a reservation and cover a range not mapped yet; access is per mapping and per device. */

#define FAKE_HANDLE_BASE 0x00c0de0000000000ull

struct fake_phys {
    unsigned long long id;
    int fd;
    size_t size;
    int refs; /* the application's handle references */
    int maps; /* mappings of it */
    CUmemAllocationProp prop;
    struct fake_phys *next;
};

struct fake_map {
    uintptr_t va;
    size_t size;
    size_t offset;
    struct fake_phys *phys;
    CUmemAccess_flags access[MAX_DEVICES];
    struct fake_map *next;
};

static struct fake_phys *phys_list;
static struct fake_map *map_list;
static unsigned long long next_phys_id = 1;
static pthread_mutex_t vmm_lock = PTHREAD_MUTEX_INITIALIZER;

static CUmemGenericAllocationHandle phys_handle(const struct fake_phys *p)
{
    return FAKE_HANDLE_BASE + p->id;
}

static struct fake_phys *find_phys(CUmemGenericAllocationHandle handle)
{
    for (struct fake_phys *p = phys_list; p; p = p->next)
        if (phys_handle(p) == handle)
            return p;
    return NULL;
}

static struct fake_map *map_at(uintptr_t addr)
{
    for (struct fake_map *m = map_list; m; m = m->next)
        if (addr >= m->va && addr < m->va + m->size)
            return m;
    return NULL;
}

static int vmm_device_at(uintptr_t addr)
{
    pthread_mutex_lock(&vmm_lock);
    struct fake_map *m = map_at(addr);
    int device = m ? m->phys->prop.location.id : -1;
    pthread_mutex_unlock(&vmm_lock);
    return device;
}

/* Frees p once nothing refers to it (vmm_lock held). */
static void phys_settle(struct fake_phys *p)
{
    if (p->refs > 0 || p->maps > 0)
        return;
    for (struct fake_phys **q = &phys_list; *q; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            break;
        }
    close(p->fd);
    free(p);
}

static struct fake_phys *phys_new(int fd, size_t size, const CUmemAllocationProp *prop)
{
    struct fake_phys *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->fd = fd;
    p->size = size;
    p->refs = 1;
    p->prop = *prop;
    p->id = next_phys_id++;
    p->next = phys_list;
    phys_list = p;
    return p;
}

/* For tests: physical allocations alive now, and their bytes. */
EXPORT long fakecuda_phys_live(size_t *bytes)
{
    long n = 0;
    size_t total = 0;
    pthread_mutex_lock(&vmm_lock);
    for (struct fake_phys *p = phys_list; p; p = p->next, n++)
        total += p->size;
    pthread_mutex_unlock(&vmm_lock);
    if (bytes)
        *bytes = total;
    return n;
}

EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                              CUmemAllocationGranularity_flags option)
{
    ENTER_INIT("cuMemGetAllocationGranularity");
    if (!granularity || !prop)
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = FAKE_GRANULARITY;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                    CUdeviceptr addr, unsigned long long flags)
{
    ENTER_INIT("cuMemAddressReserve");
    if (!ptr || !size || size % FAKE_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    int mflags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    void *p = mmap((void *)addr, size, PROT_NONE, addr ? mflags | MAP_FIXED_NOREPLACE : mflags,
                   -1, 0);
    if (p == MAP_FAILED && addr) /* the driver treats addr as a hint */
        p = mmap(NULL, size, PROT_NONE, mflags, -1, 0);
    if (p == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (add_region((uintptr_t)p, size, REGION_VMM)) {
        munmap(p, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *ptr = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    ENTER_INIT("cuMemAddressFree");
    pthread_mutex_lock(&vmm_lock);
    int mapped = 0;
    for (struct fake_map *m = map_list; m; m = m->next)
        mapped |= m->va >= ptr && m->va < ptr + size;
    pthread_mutex_unlock(&vmm_lock);
    if (mapped) /* the driver refuses to free a range that is still mapped */
        return CUDA_ERROR_INVALID_VALUE;
    if (remove_region(ptr, REGION_VMM) != size)
        return CUDA_ERROR_INVALID_VALUE;
    munmap((void *)ptr, size);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                            const CUmemAllocationProp *prop, unsigned long long flags)
{
    ENTER_INIT("cuMemCreate");
    if (!handle || !prop || !size || size % FAKE_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || check_device(prop->location.id))
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->requestedHandleTypes & ~CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_NOT_SUPPORTED; /* no fabric (IMEX) here, no Win32 */
    /* its name carries its device, for the process that imports it (see memfd_device) */
    char name[32];
    snprintf(name, sizeof name, "fakecuda-phys-dev%d", prop->location.id);
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0)
            close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&vmm_lock);
    struct fake_phys *p = phys_new(fd, size, prop);
    if (p)
        *handle = phys_handle(p);
    pthread_mutex_unlock(&vmm_lock);
    if (!p) {
        close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

/* A mapping holds its own reference, so release-while-mapped works as in CUDA. */
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    ENTER_INIT("cuMemRelease");
    pthread_mutex_lock(&vmm_lock);
    struct fake_phys *p = find_phys(handle);
    CUresult rc = p && p->refs > 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        p->refs--;
        phys_settle(p);
    }
    pthread_mutex_unlock(&vmm_lock);
    return rc;
}

EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    ENTER_INIT("cuMemRetainAllocationHandle");
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&vmm_lock);
    struct fake_map *m = map_at((uintptr_t)addr);
    if (m) {
        m->phys->refs++;
        *handle = phys_handle(m->phys);
    }
    pthread_mutex_unlock(&vmm_lock);
    return m ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                       CUmemGenericAllocationHandle handle)
{
    ENTER_INIT("cuMemGetAllocationPropertiesFromHandle");
    if (!prop)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&vmm_lock);
    struct fake_phys *p = find_phys(handle);
    if (p)
        *prop = p->prop;
    pthread_mutex_unlock(&vmm_lock);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Shareable handles: the exported descriptor is a duplicate of the memfd, and importing one
 * makes a new handle over the same memory, as sharing physical memory between processes does.
 * As in the driver, only a type requested at creation can be exported. */
EXPORT CUresult cuMemExportToShareableHandle(void *shareable, CUmemGenericAllocationHandle handle,
                                             CUmemAllocationHandleType type,
                                             unsigned long long flags)
{
    ENTER_INIT("cuMemExportToShareableHandle");
    if (!shareable || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&vmm_lock);
    struct fake_phys *p = find_phys(handle);
    int fd = -1;
    CUresult rc = !p                                   ? CUDA_ERROR_INVALID_VALUE
                  : !(p->prop.requestedHandleTypes & type) ? CUDA_ERROR_NOT_PERMITTED
                                                           : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS && (fd = fcntl(p->fd, F_DUPFD_CLOEXEC, 0)) < 0)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_unlock(&vmm_lock);
    if (rc == CUDA_SUCCESS)
        *(int *)shareable = fd;
    return rc;
}

/* The device of physical memory another process exported (0 when the fd does not say). */
static int memfd_device(int fd)
{
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    int device = 0;
    if (n > 0) {
        target[n] = 0;
        const char *at = strstr(target, "fakecuda-phys-dev");
        if (at)
            device = atoi(at + strlen("fakecuda-phys-dev"));
    }
    return device >= 0 && device < MAX_DEVICES ? device : 0;
}

EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle,
                                               void *shareable, CUmemAllocationHandleType type)
{
    ENTER_INIT("cuMemImportFromShareableHandle");
    struct stat st;
    int given = (int)(intptr_t)shareable;
    if (!handle || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || fstat(given, &st) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    int fd = fcntl(given, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                                 .location = { CU_MEM_LOCATION_TYPE_DEVICE,
                                               memfd_device(given) } };
    pthread_mutex_lock(&vmm_lock);
    struct fake_phys *p = phys_new(fd, (size_t)st.st_size, &prop);
    if (p)
        *handle = phys_handle(p);
    pthread_mutex_unlock(&vmm_lock);
    if (!p) {
        close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                         CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    ENTER_INIT("cuMemMap");
    struct region r;
    if (!size || !find_region(ptr, &r) || r.kind != REGION_VMM || ptr + size > r.base + r.size)
        return CUDA_ERROR_INVALID_VALUE; /* must land inside a reservation */
    pthread_mutex_lock(&vmm_lock);
    struct fake_phys *p = find_phys(handle);
    CUresult rc = !p || offset + size > p->size ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    for (struct fake_map *m = map_list; rc == CUDA_SUCCESS && m; m = m->next)
        if (m->va < ptr + size && ptr < m->va + m->size)
            rc = CUDA_ERROR_INVALID_VALUE; /* already mapped */
    struct fake_map *m = rc == CUDA_SUCCESS ? calloc(1, sizeof(*m)) : NULL;
    if (rc == CUDA_SUCCESS && !m)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS &&
        mmap((void *)ptr, size, PROT_NONE, MAP_FIXED | MAP_SHARED, p->fd, (off_t)offset) ==
            MAP_FAILED)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) {
        *m = (struct fake_map){ .va = ptr, .size = size, .offset = offset, .phys = p,
                                .next = map_list };
        map_list = m;
        p->maps++;
    } else {
        free(m);
    }
    pthread_mutex_unlock(&vmm_lock);
    return rc;
}

/* The range must be mapped; the host protection is the widest access granted. */
EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                               size_t count)
{
    ENTER_INIT("cuMemSetAccess");
    if (!desc || !count || !size)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++)
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
            check_device(desc[i].location.id))
            return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&vmm_lock);
    size_t covered = 0;
    for (struct fake_map *m = map_list; m; m = m->next)
        if (m->va >= ptr && m->va + m->size <= ptr + size)
            covered += m->size;
    CUresult rc = covered == size ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    int prot = PROT_NONE;
    for (struct fake_map *m = map_list; rc == CUDA_SUCCESS && m; m = m->next) {
        if (m->va < ptr || m->va + m->size > ptr + size)
            continue;
        for (size_t i = 0; i < count; i++)
            m->access[desc[i].location.id] = desc[i].flags;
        for (int d = 0; d < MAX_DEVICES; d++)
            prot |= m->access[d] == CU_MEM_ACCESS_FLAGS_PROT_READWRITE ? PROT_READ | PROT_WRITE
                    : m->access[d] == CU_MEM_ACCESS_FLAGS_PROT_READ    ? PROT_READ
                                                                       : PROT_NONE;
    }
    pthread_mutex_unlock(&vmm_lock);
    if (rc == CUDA_SUCCESS && mprotect((void *)ptr, size, prot) != 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    return rc;
}

EXPORT CUresult cuMemGetAccess(unsigned long long *flags, const CUmemLocation *location,
                               CUdeviceptr ptr)
{
    ENTER_INIT("cuMemGetAccess");
    if (!flags || !location || location->type != CU_MEM_LOCATION_TYPE_DEVICE ||
        check_device(location->id))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&vmm_lock);
    struct fake_map *m = map_at(ptr);
    if (m)
        *flags = m->access[location->id];
    pthread_mutex_unlock(&vmm_lock);
    return m ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Unmapping puts an inaccessible anonymous mapping back: the reservation stays. The range must
 * be whole mappings, as in the driver. */
EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    ENTER_INIT("cuMemUnmap");
    pthread_mutex_lock(&vmm_lock);
    CUresult rc = CUDA_SUCCESS;
    for (struct fake_map *m = map_list; m; m = m->next)
        if (m->va < ptr + size && ptr < m->va + m->size &&
            (m->va < ptr || m->va + m->size > ptr + size))
            rc = CUDA_ERROR_INVALID_VALUE; /* would split a mapping */
    for (struct fake_map **q = &map_list; rc == CUDA_SUCCESS && *q;) {
        struct fake_map *m = *q;
        if (m->va >= ptr && m->va + m->size <= ptr + size) {
            *q = m->next;
            m->phys->maps--;
            phys_settle(m->phys);
            free(m);
        } else {
            q = &m->next;
        }
    }
    pthread_mutex_unlock(&vmm_lock);
    if (rc != CUDA_SUCCESS)
        return rc;
    void *p = mmap((void *)ptr, size, PROT_NONE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

/* ---------- stream-ordered allocation: memory pools ----------
 *
 * Each device has a default pool and a current one; an allocation is host memory, as with
 * cuMemAlloc, counted in its pool's used and reserved bytes. */

struct fake_pool {
    CUmemPoolProps props;
    cuuint64_t threshold;
    cuuint64_t used, used_high;
    int destroyed;
};

static struct fake_pool default_pool[MAX_DEVICES];
static struct fake_pool *current_pool[MAX_DEVICES];

struct fake_block {
    uintptr_t address;
    size_t size;
    struct fake_pool *pool;
    struct fake_block *next;
};
static struct fake_block *blocks;

static struct fake_pool *device_pool(CUdevice dev)
{
    if (!default_pool[dev].props.location.type) {
        default_pool[dev].props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        default_pool[dev].props.location = (CUmemLocation){ CU_MEM_LOCATION_TYPE_DEVICE, dev };
    }
    return current_pool[dev] ? current_pool[dev] : &default_pool[dev];
}

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev)
{
    ENTER_INIT("cuDeviceGetDefaultMemPool");
    if (!pool || check_device(dev))
        return CUDA_ERROR_INVALID_VALUE;
    device_pool(dev);
    *pool = (CUmemoryPool)&default_pool[dev];
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    ENTER_INIT("cuDeviceGetMemPool");
    if (!pool || check_device(dev))
        return CUDA_ERROR_INVALID_VALUE;
    *pool = (CUmemoryPool)device_pool(dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool)
{
    ENTER_INIT("cuDeviceSetMemPool");
    if (!pool || check_device(dev))
        return CUDA_ERROR_INVALID_VALUE;
    current_pool[dev] = (struct fake_pool *)pool;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    ENTER_INIT("cuMemPoolCreate");
    if (!pool || !props || props->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        check_device(props->location.id))
        return CUDA_ERROR_INVALID_VALUE;
    struct fake_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    p->props = *props;
    *pool = (CUmemoryPool)p;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    ENTER_INIT("cuMemPoolDestroy");
    struct fake_pool *p = (struct fake_pool *)pool;
    if (!p || p->destroyed || (p >= default_pool && p < default_pool + MAX_DEVICES))
        return CUDA_ERROR_INVALID_VALUE;
    p->destroyed = 1; /* kept: blocks may still point at it */
    for (int d = 0; d < MAX_DEVICES; d++)
        if (current_pool[d] == p)
            current_pool[d] = NULL;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep)
{
    ENTER_INIT("cuMemPoolTrimTo");
    return pool ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc *map, size_t count)
{
    ENTER_INIT("cuMemPoolSetAccess");
    return pool && map ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    ENTER_INIT("cuMemPoolSetAttribute");
    struct fake_pool *p = (struct fake_pool *)pool;
    if (!p || !value)
        return CUDA_ERROR_INVALID_VALUE;
    if (attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        p->threshold = *(cuuint64_t *)value;
    else if (attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH || attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)
        p->used_high = p->used;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    ENTER_INIT("cuMemPoolGetAttribute");
    struct fake_pool *p = (struct fake_pool *)pool;
    if (!p || !value)
        return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *(cuuint64_t *)value = p->threshold; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT:
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *(cuuint64_t *)value = p->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *(cuuint64_t *)value = p->used_high; break;
    default: *(int *)value = 0; break;
    }
    return CUDA_SUCCESS;
}

static CUresult pool_alloc(CUdeviceptr *dptr, size_t size, struct fake_pool *pool)
{
    NEED_CTX();
    if (!dptr || !size || !pool || pool->destroyed)
        return CUDA_ERROR_INVALID_VALUE;
    void *p = page_alloc(size);
    struct fake_block *b = malloc(sizeof(*b));
    if (!p || !b || add_region_on((uintptr_t)p, size, REGION_DEVICE, pool->props.location.id)) {
        free(b);
        if (p)
            munmap(p, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&vmm_lock);
    *b = (struct fake_block){ (uintptr_t)p, size, pool, blocks };
    blocks = b;
    pool->used += size;
    if (pool->used > pool->used_high)
        pool->used_high = pool->used;
    pthread_mutex_unlock(&vmm_lock);
    *dptr = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}

static CUresult pool_free(CUdeviceptr dptr)
{
    struct fake_block *found = NULL;
    pthread_mutex_lock(&vmm_lock);
    for (struct fake_block **q = &blocks; *q; q = &(*q)->next)
        if ((*q)->address == dptr) {
            found = *q;
            *q = found->next;
            found->pool->used -= found->size;
            break;
        }
    pthread_mutex_unlock(&vmm_lock);
    if (!found || remove_region(dptr, REGION_DEVICE) != found->size) {
        free(found);
        return CUDA_ERROR_INVALID_VALUE;
    }
    munmap((void *)dptr, found->size);
    free(found);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    ENTER_INIT("cuMemAllocAsync");
    NEED_CTX();
    return pool_alloc(dptr, size, device_pool(current_ctx->device));
}

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    ENTER_INIT("cuMemAllocAsync_ptsz");
    NEED_CTX();
    return pool_alloc(dptr, size, device_pool(current_ctx->device));
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                        CUstream stream)
{
    ENTER_INIT("cuMemAllocFromPoolAsync");
    return pool_alloc(dptr, size, (struct fake_pool *)pool);
}

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                             CUstream stream)
{
    ENTER_INIT("cuMemAllocFromPoolAsync_ptsz");
    return pool_alloc(dptr, size, (struct fake_pool *)pool);
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    ENTER_INIT("cuMemFreeAsync");
    return pool_free(dptr);
}

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    ENTER_INIT("cuMemFreeAsync_ptsz");
    return pool_free(dptr);
}

/* ---------- driver checkpoint API: a state machine per pid ---------- */

#define MAX_PIDS 64
static struct {
    int pid;
    CUprocessState state;
} pid_states[MAX_PIDS];
static pthread_mutex_t pid_lock = PTHREAD_MUTEX_INITIALIZER;

/* With FAKECUDA_STATE_DIR set, each pid's state lives in a file there, shared by every process
 * (as a real driver's is): a guardian process can then restore and unlock what another locked.
 * Without it, the state is this process's own, as before. */
static int shared_state_path(int pid, char *path, size_t len)
{
    const char *dir = getenv("FAKECUDA_STATE_DIR");
    if (!dir || !*dir)
        return 0;
    snprintf(path, len, "%s/pid-%d", dir, pid);
    return 1;
}

/* When pid's process started (clock ticks since boot), 0 when it is gone: which incarnation of
 * a PID a state belongs to. */
static unsigned long long start_time_of(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long start = 0;
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    if (p)
        start = strtoull(p + 1, NULL, 10);
    return start;
}

/* The state lives in the process, as the real driver's does: a file says it for the
 * incarnation of the PID that wrote it. Another incarnation is a process CRIU restored from a
 * checkpoint image (pid-N.image: the state the image was taken in), else a new one (running). */
static CUprocessState shared_state_read(const char *path, int pid)
{
    CUprocessState state = CU_PROCESS_STATE_RUNNING;
    unsigned long long written_by = 0, now = start_time_of(pid);
    int value, known = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        known = fscanf(f, "%d %llu", &value, &written_by) >= 1;
        fclose(f);
    }
    if (known && (written_by == 0 || now == 0 || written_by == now))
        return (CUprocessState)value;
    char image[4200];
    snprintf(image, sizeof image, "%s.image", path);
    f = fopen(image, "r");
    if (f) {
        if (fscanf(f, "%d", &value) == 1)
            state = (CUprocessState)value;
        fclose(f);
    }
    return state;
}

static void write_file(const char *path, const char *text)
{
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static void shared_state_write(const char *path, int pid, CUprocessState state)
{
    char text[64], image[4200];
    snprintf(text, sizeof text, "%d %llu\n", (int)state, start_time_of(pid));
    write_file(path, text);
    if (state == CU_PROCESS_STATE_CHECKPOINTED) { /* what a restore of this image starts from */
        snprintf(image, sizeof image, "%s.image", path);
        write_file(image, text);
    }
}

/* Moves pid from `from` to `to`; CUDA_ERROR_ILLEGAL_STATE when it is not in `from`. */
static CUresult transition(int pid, CUprocessState from, CUprocessState to)
{
    CUresult rc = CUDA_ERROR_ILLEGAL_STATE;
    char path[4096];
    pthread_mutex_lock(&pid_lock);
    if (shared_state_path(pid, path, sizeof path)) {
        if (shared_state_read(path, pid) == from) {
            shared_state_write(path, pid, to);
            rc = CUDA_SUCCESS;
        }
        pthread_mutex_unlock(&pid_lock);
        return rc;
    }
    int slot = -1;
    for (int i = 0; i < MAX_PIDS && slot < 0; i++)
        if (pid_states[i].pid == pid)
            slot = i;
    for (int i = 0; i < MAX_PIDS && slot < 0; i++)
        if (pid_states[i].pid == 0) {
            slot = i;
            pid_states[i].pid = pid;
            pid_states[i].state = CU_PROCESS_STATE_RUNNING;
        }
    if (slot >= 0 && pid_states[slot].state == from) {
        pid_states[slot].state = to;
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&pid_lock);
    return rc;
}

static int restore_thread_stopped(int pid);

EXPORT CUresult cuCheckpointProcessGetState(int pid, CUprocessState *state)
{
    ENTER_INIT("cuCheckpointProcessGetState");
    if (!state)
        return CUDA_ERROR_INVALID_VALUE;
    if (restore_thread_stopped(pid))
        return CUDA_ERROR_NOT_READY; /* the real driver asks the process: it waits for good */
    *state = CU_PROCESS_STATE_RUNNING;
    char path[4096];
    pthread_mutex_lock(&pid_lock);
    if (shared_state_path(pid, path, sizeof path))
        *state = shared_state_read(path, pid);
    else
        for (int i = 0; i < MAX_PIDS; i++)
            if (pid_states[i].pid == pid)
                *state = pid_states[i].state;
    pthread_mutex_unlock(&pid_lock);
    return CUDA_SUCCESS;
}

/* The driver restores a process's GPU state on a thread of that process, its restore thread.
 * With FAKECUDA_STATE_DIR the fake has one too: cuInit starts it and names it in pid-N.tid, and
 * a restore needs it to run (not stopped), as the real driver's does. Each restore writes the
 * state of every thread of the process at that moment into pid-N.restore ("tid state" lines),
 * so that tests can tell whether the program's own threads were held. */
/* The driver's own host memory, restored by the driver's thread (FAKECUDA_DRIVER_HOST_MIB):
 * filled with a pattern at cuInit; at the first restore the restore thread reads its first
 * quarter, unmaps the second, discards the third (madvise DONTNEED: it must read as zeros) and
 * moves the fourth (mremap), as a real driver's restore maps and unmaps. It notes how many of
 * its pages were not yet in when it began (mincore): those were brought in meanwhile by the
 * lazy page server, whose following of the changes is what a test of that looks at. */
static unsigned char *host_state;
static size_t host_quarter; /* bytes */
static unsigned char *host_moved; /* the fourth quarter, once moved */

static unsigned char host_byte(size_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13);
}

static void make_host_state(void)
{
    const char *mib = getenv("FAKECUDA_DRIVER_HOST_MIB");
    if (!mib || atoi(mib) <= 0)
        return;
    size_t bytes = (size_t)atoi(mib) << 20;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    host_state = p;
    host_quarter = bytes / 4;
    for (size_t i = 0; i < bytes; i++)
        host_state[i] = host_byte(i);
}

static int host_matches(const unsigned char *at, size_t from, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (at[i] != host_byte(from + i))
            return 0;
    return 1;
}

static size_t missing_pages(unsigned char *at, size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = bytes / page, missing = 0;
    unsigned char *in = malloc(pages);
    if (in && mincore(at, pages * page, in) == 0)
        for (size_t i = 0; i < pages; i++)
            missing += !(in[i] & 1);
    free(in);
    return missing;
}

/* The restore thread's work for one restore: "ok missing=A,B,C,D" (pages of each quarter not
 * yet in when it began) or "bad ...", into reply. */
static void restore_host_state(char *reply, size_t len)
{
    if (!host_state) {
        snprintf(reply, len, "ok none");
        return;
    }
    /* not yet in, per quarter: the server copies from low addresses up, so the last quarter
     * (moved first, below) is the one most surely still coming */
    size_t missing[4] = { 0 };
    if (!host_moved)
        for (int q = 0; q < 4; q++)
            missing[q] = missing_pages(host_state + q * host_quarter, host_quarter);
    if (!host_moved) {
        void *to = mmap(NULL, host_quarter, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void *moved = to == MAP_FAILED ? MAP_FAILED :
            mremap(host_state + 3 * host_quarter, host_quarter, host_quarter,
                   MREMAP_MAYMOVE | MREMAP_FIXED, to);
        if (moved == MAP_FAILED) {
            snprintf(reply, len, "bad: mremap: %s", strerror(errno));
            return;
        }
        host_moved = moved;
        madvise(host_state + 2 * host_quarter, host_quarter, MADV_DONTNEED);
        munmap(host_state + host_quarter, host_quarter);
        for (size_t i = 0; i < host_quarter; i++)
            if (host_state[2 * host_quarter + i]) {
                snprintf(reply, len, "bad: a discarded page reads back its old bytes");
                return;
            }
    }
    if (!host_matches(host_state, 0, host_quarter)) {
        snprintf(reply, len, "bad: the first quarter differs");
        return;
    }
    if (!host_matches(host_moved, 3 * host_quarter, host_quarter)) {
        snprintf(reply, len, "bad: the moved quarter differs");
        return;
    }
    snprintf(reply, len, "ok missing=%zu,%zu,%zu,%zu", missing[0], missing[1], missing[2],
             missing[3]);
}

static pthread_mutex_t restore_thread_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t restore_thread_named = PTHREAD_COND_INITIALIZER;
static int restore_thread_ready;

/* Waits on pid-N.fifo for each restore's request; answers in pid-N.reply. */
static void *restore_thread_main(void *unused)
{
    (void)unused;
    char path[4096], tid_path[4200], fifo[4200], reply_path[4200], tmp[4300], reply[256];
    pthread_setname_np(pthread_self(), "cuda-restore");
    int shared = shared_state_path((int)getpid(), path, sizeof path);
    if (shared) {
        snprintf(tid_path, sizeof tid_path, "%s.tid", path);
        FILE *out = fopen(tid_path, "w");
        if (out) {
            fprintf(out, "%ld\n", (long)syscall(SYS_gettid));
            fclose(out);
        }
        snprintf(fifo, sizeof fifo, "%s.fifo", path);
        snprintf(reply_path, sizeof reply_path, "%s.reply", path);
        unlink(fifo);
        shared = mkfifo(fifo, 0600) == 0;
    }
    pthread_mutex_lock(&restore_thread_lock);
    restore_thread_ready = 1;
    pthread_cond_broadcast(&restore_thread_named);
    pthread_mutex_unlock(&restore_thread_lock);
    for (;;) {
        if (!shared) {
            struct timespec ts = { 3600, 0 };
            nanosleep(&ts, NULL);
            continue;
        }
        int fd = open(fifo, O_RDONLY); /* a checkpoint interrupts it; it is opened again */
        if (fd < 0) {
            usleep(1000);
            continue;
        }
        char request;
        ssize_t n = read(fd, &request, 1);
        close(fd);
        if (n != 1)
            continue;
        restore_host_state(reply, sizeof reply);
        snprintf(tmp, sizeof tmp, "%s.tmp", reply_path);
        FILE *out = fopen(tmp, "w");
        if (out) {
            fputs(reply, out);
            fclose(out);
            rename(tmp, reply_path);
        }
    }
    return NULL;
}

static void start_restore_thread(void)
{
    static int started;
    char path[4096];
    if (started || !shared_state_path((int)getpid(), path, sizeof path))
        return;
    started = 1;
    make_host_state();
    pthread_t thread;
    if (pthread_create(&thread, NULL, restore_thread_main, NULL))
        return;
    pthread_detach(thread);
    pthread_mutex_lock(&restore_thread_lock); /* named before cuInit returns */
    while (!restore_thread_ready)
        pthread_cond_wait(&restore_thread_named, &restore_thread_lock);
    pthread_mutex_unlock(&restore_thread_lock);
}

static int restore_tid_of(int pid)
{
    char path[4096], tid_path[4200];
    int tid = pid;
    if (!shared_state_path(pid, path, sizeof path))
        return tid;
    snprintf(tid_path, sizeof tid_path, "%s.tid", path);
    FILE *f = fopen(tid_path, "r");
    if (f) {
        if (fscanf(f, "%d", &tid) != 1)
            tid = pid;
        fclose(f);
    }
    return tid;
}

/* The state letter of pid's thread tid (R, S, T, t...), '?' when it is gone. */
static char thread_state(int pid, int tid)
{
    char path[128], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close = strrchr(buf, ')');
    return close && close[1] && close[2] ? close[2] : '?';
}

/* 1 when pid has a restore thread (shared state) and it is stopped. */
static int restore_thread_stopped(int pid)
{
    char path[4096];
    if (!shared_state_path(pid, path, sizeof path))
        return 0;
    char own = thread_state(pid, restore_tid_of(pid));
    return own == 'T' || own == 't';
}

/* Writes every thread's state into pid-N.restore; 0 when the restore thread can run. */
static int note_threads_at_restore(int pid)
{
    char path[4096], out_path[4200], task[64], name[300];
    if (!shared_state_path(pid, path, sizeof path))
        return 0;
    int tid = restore_tid_of(pid);
    snprintf(out_path, sizeof out_path, "%s.restore", path);
    FILE *out = fopen(out_path, "w");
    snprintf(task, sizeof task, "/proc/%d/task", pid);
    DIR *dir = opendir(task);
    struct dirent *entry;
    while (out && dir && (entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        int t = atoi(entry->d_name);
        snprintf(name, sizeof name, "%d %c%s\n", t, thread_state(pid, t),
                 t == tid ? " restore" : "");
        fputs(name, out);
    }
    if (dir)
        closedir(dir);
    if (out)
        fclose(out);
    char own = thread_state(pid, tid);
    return own == 'T' || own == 't';
}

/* Has pid's restore thread do the driver's host-side work of a restore (restore_host_state) and
 * waits for it; its answer is added to pid-N.restore. 0: done (or no thread listens: a process
 * from before the thread existed); -1: it found its memory wrong, or did not answer. */
static int ask_restore_thread(int pid)
{
    char path[4096], fifo[4200], reply_path[4200], record[4200], reply[256] = "";
    if (!shared_state_path(pid, path, sizeof path))
        return 0;
    snprintf(fifo, sizeof fifo, "%s.fifo", path);
    snprintf(reply_path, sizeof reply_path, "%s.reply", path);
    snprintf(record, sizeof record, "%s.restore", path);
    unlink(reply_path);
    /* ENXIO: no reader yet; the thread, just let run, may be on its way back into its open()
     * (a checkpoint interrupted it there): give it time. ENOENT: a process without the thread. */
    int fd = -1;
    for (int waited_ms = 0; waited_ms < 5000; waited_ms++) {
        fd = open(fifo, O_WRONLY | O_NONBLOCK);
        if (fd >= 0 || errno != ENXIO)
            break;
        usleep(1000);
    }
    if (fd < 0)
        return 0;
    char request = 'r';
    ssize_t n = write(fd, &request, 1);
    close(fd);
    if (n != 1)
        return -1;
    for (int waited_ms = 0; waited_ms < 20000; waited_ms++) {
        FILE *f = fopen(reply_path, "r");
        if (f) {
            if (!fgets(reply, sizeof reply, f))
                reply[0] = 0;
            fclose(f);
            unlink(reply_path);
            break;
        }
        usleep(1000);
    }
    FILE *out = fopen(record, "a");
    if (out) {
        fprintf(out, "reply %s\n", reply[0] ? reply : "none");
        fclose(out);
    }
    return strncmp(reply, "ok", 2) ? -1 : 0;
}

EXPORT CUresult cuCheckpointProcessGetRestoreThreadId(int pid, int *tid)
{
    ENTER_INIT("cuCheckpointProcessGetRestoreThreadId");
    if (!tid)
        return CUDA_ERROR_INVALID_VALUE;
    /* tests: "none", the driver names no thread; "gone", one that does not exist; "foreign",
     * a thread of another process (the caller's) */
    const char *test = getenv("FAKECUDA_RESTORE_TID");
    if (test && !strcmp(test, "none"))
        return CUDA_ERROR_NOT_SUPPORTED;
    if (restore_thread_stopped(pid))
        return CUDA_ERROR_NOT_READY; /* as cuCheckpointProcessGetState */
    *tid = test && !strcmp(test, "gone") ? 4194000
         : test && !strcmp(test, "foreign") ? (int)getpid() : restore_tid_of(pid);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCheckpointProcessLock(int pid, CUcheckpointLockArgs *args)
{
    ENTER_INIT("cuCheckpointProcessLock");
    return transition(pid, CU_PROCESS_STATE_RUNNING, CU_PROCESS_STATE_LOCKED);
}

EXPORT CUresult cuCheckpointProcessCheckpoint(int pid, CUcheckpointCheckpointArgs *args)
{
    ENTER_INIT("cuCheckpointProcessCheckpoint");
    return transition(pid, CU_PROCESS_STATE_LOCKED, CU_PROCESS_STATE_CHECKPOINTED);
}

/* The ordinal of a fake device's UUID; -1 when it is none of this machine's. */
static int device_of_uuid(const CUuuid *uuid)
{
    for (int dev = 0; dev < device_count; dev++) {
        CUuuid known;
        fill_uuid(&known, dev);
        if (!memcmp(known.bytes, uuid->bytes, sizeof known.bytes))
            return dev;
    }
    return -1;
}

/* Reads args' GPU pairs into map (old ordinal -> new); 1 when some GPU moves, 0 for the identity,
 * -1 for a UUID no device has or two GPUs sent to one (the driver refuses both). */
static int gpu_map_from_args(const CUcheckpointRestoreArgs *args, int map[MAX_DEVICES])
{
    int moved = 0, taken[MAX_DEVICES] = { 0 };
    for (int dev = 0; dev < MAX_DEVICES; dev++)
        map[dev] = dev;
    if (!args || !args->gpuPairsCount)
        return 0;
    if (!args->gpuPairs)
        return -1;
    for (unsigned int i = 0; i < args->gpuPairsCount; i++) {
        int old = device_of_uuid(&args->gpuPairs[i].oldUuid);
        int new = device_of_uuid(&args->gpuPairs[i].newUuid);
        if (old < 0 || new < 0)
            return -1;
        map[old] = new;
        moved |= old != new;
    }
    for (int dev = 0; dev < device_count; dev++)
        if (taken[map[dev]]++)
            return -1;
    return moved;
}

EXPORT CUresult cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *args)
{
    ENTER_INIT("cuCheckpointProcessRestore");
    int map[MAX_DEVICES];
    int moved = gpu_map_from_args(args, map);
    if (moved < 0)
        return CUDA_ERROR_INVALID_VALUE;
    char path[4096];
    if (moved && !shared_state_path(pid, path, sizeof path))
        return CUDA_ERROR_NOT_SUPPORTED; /* the fake cannot reach another process without it */
    if (note_threads_at_restore(pid))
        return CUDA_ERROR_NOT_READY; /* the real driver waits for its restore thread: never here */
    if (ask_restore_thread(pid))
        return CUDA_ERROR_UNKNOWN; /* its memory came back wrong */
    /* tests: a driver whose restore also waits on the process's main thread (up to 30 s) */
    for (int ms = 0; getenv("FAKECUDA_RESTORE_WAITS_FOR_MAIN") && ms < 30000; ms++) {
        char main_state = thread_state(pid, pid);
        if (main_state != 'T' && main_state != 't')
            break;
        usleep(1000);
    }
    CUresult rc = transition(pid, CU_PROCESS_STATE_CHECKPOINTED, CU_PROCESS_STATE_LOCKED);
    if (rc != CUDA_SUCCESS || !moved)
        return rc;
    char map_path[4200], tmp[4300];
    snprintf(map_path, sizeof map_path, "%s.gpumap", path);
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", map_path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return CUDA_ERROR_OPERATING_SYSTEM;
    for (int dev = 0; dev < device_count; dev++)
        fprintf(f, "%d %d\n", dev, map[dev]);
    fclose(f);
    return rename(tmp, map_path) ? CUDA_ERROR_OPERATING_SYSTEM : CUDA_SUCCESS;
}

/* In the restored process: takes the map a restore left for it and moves its contexts and
 * device memory to their new devices. */
static void apply_pending_gpu_map(void)
{
    char path[4096], map_path[4200];
    if (!shared_state_path((int)getpid(), path, sizeof path))
        return;
    snprintf(map_path, sizeof map_path, "%s.gpumap", path);
    FILE *f = fopen(map_path, "r");
    if (!f)
        return;
    int map[MAX_DEVICES], old, new;
    for (int dev = 0; dev < MAX_DEVICES; dev++)
        map[dev] = dev;
    while (fscanf(f, "%d %d", &old, &new) == 2)
        if (old >= 0 && old < MAX_DEVICES && new >= 0 && new < MAX_DEVICES)
            map[old] = new;
    fclose(f);
    unlink(map_path);
    int slot[MAX_DEVICES];
    for (int dev = 0; dev < MAX_DEVICES; dev++)
        slot[map[dev]] = primary_slot[dev];
    memcpy(primary_slot, slot, sizeof slot);
    for (int i = 0; i < MAX_DEVICES; i++)
        primary_ctx[i].device = map[primary_ctx[i].device];
    for (size_t i = 0; i < sizeof created_ctx / sizeof *created_ctx; i++)
        if (created_ctx[i])
            created_ctx[i]->device = map[created_ctx[i]->device];
    pthread_mutex_lock(&region_lock);
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == REGION_DEVICE || r->kind == REGION_VMM)
            r->device = map[r->device];
    pthread_mutex_unlock(&region_lock);
    pthread_mutex_lock(&vmm_lock); /* physical memory kept through the checkpoint moves too */
    for (struct fake_phys *p = phys_list; p; p = p->next)
        if (p->prop.location.type == CU_MEM_LOCATION_TYPE_DEVICE)
            p->prop.location.id = map[p->prop.location.id];
    pthread_mutex_unlock(&vmm_lock);
}

EXPORT CUresult cuCheckpointProcessUnlock(int pid, CUcheckpointUnlockArgs *args)
{
    ENTER_INIT("cuCheckpointProcessUnlock");
    return transition(pid, CU_PROCESS_STATE_LOCKED, CU_PROCESS_STATE_RUNNING);
}

/* ---------- errors ---------- */

static const struct {
    CUresult code;
    const char *name;
    const char *text;
} errors[] = {
    { CUDA_SUCCESS, "CUDA_SUCCESS", "no error" },
    { CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument" },
    { CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory" },
    { CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error" },
    { CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected" },
    { CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal" },
    { CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context" },
    { CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle" },
    { CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found" },
    { CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation is not permitted "
                                                             "in the current state" },
    { CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported" },
    { CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted" },
    { CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready" },
    { CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
      "part or all of the requested memory range is already mapped" },
    { CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
      "pointer does not correspond to a registered memory region" },
    { CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error (injected by FAKECUDA_FAIL)" },
};

static int error_index(CUresult code)
{
    for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
        if (errors[i].code == code)
            return (int)i;
    return -1;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char **str)
{
    int i = error_index(error);
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    *str = i >= 0 ? errors[i].text : NULL;
    return i >= 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorName(CUresult error, const char **str)
{
    int i = error_index(error);
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    *str = i >= 0 ? errors[i].name : NULL;
    return i >= 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---------- cuGetProcAddress ---------- */

CUresult cuGetProcAddress_v1(const char *symbol, void **pfn, int version, cuuint64_t flags)
    __asm__("cuGetProcAddress");

/*
 * The driver is asked for base names ("cuMemAlloc") and a CUDA version, and answers with the
 * newest variant that version knows ("cuMemAlloc_v2" from 3.2 on). A static table, not dlsym:
 * a preloaded shim may wrap dlsym, and the fake must hand out its own functions.
 */
static const struct {
    const char *base;
    int min_version;
    void *fn;
    void *per_thread; /* the _ptsz/_ptds variant, where there is one */
} proc_table[] = {
#define PROC(base, version, fn) { base, version, (void *)fn, NULL }
#define PTSZ(base, version, fn, ptsz) { base, version, (void *)fn, (void *)ptsz }
    PROC("cuInit", 2000, cuInit),
    PROC("cuDriverGetVersion", 2020, cuDriverGetVersion),
    PROC("cuDeviceGet", 2000, cuDeviceGet),
    PROC("cuDeviceGetCount", 2000, cuDeviceGetCount),
    PROC("cuDeviceGetName", 2000, cuDeviceGetName),
    PROC("cuDeviceGetUuid", 9020, cuDeviceGetUuid_v1),
    PROC("cuDeviceGetUuid", 11040, cuDeviceGetUuid_v2),
    PROC("cuDeviceTotalMem", 3020, cuDeviceTotalMem_v2),
    PROC("cuDeviceGetAttribute", 2000, cuDeviceGetAttribute),
    PROC("cuDevicePrimaryCtxRetain", 7000, cuDevicePrimaryCtxRetain),
    PROC("cuDevicePrimaryCtxRelease", 11000, cuDevicePrimaryCtxRelease_v2),
    PROC("cuDevicePrimaryCtxGetState", 7000, cuDevicePrimaryCtxGetState),
    PROC("cuCtxGetId", 12000, cuCtxGetId),
    PROC("cuCtxCreate", 3020, cuCtxCreate_v2),
    PROC("cuCtxCreate", 12050, cuCtxCreate_v4),
    PROC("cuCtxDestroy", 4000, cuCtxDestroy_v2),
    PROC("cuCtxSetCurrent", 4000, cuCtxSetCurrent),
    PROC("cuCtxGetCurrent", 4000, cuCtxGetCurrent),
    PROC("cuCtxPushCurrent", 4000, cuCtxPushCurrent_v2),
    PROC("cuCtxPopCurrent", 4000, cuCtxPopCurrent_v2),
    PROC("cuCtxGetDevice", 2000, cuCtxGetDevice),
    PROC("cuCtxSynchronize", 2000, cuCtxSynchronize),
    PROC("cuCtxGetLimit", 3010, cuCtxGetLimit),
    PROC("cuCtxSetLimit", 3010, cuCtxSetLimit),
    PROC("cuMemAlloc", 3020, cuMemAlloc_v2),
    PROC("cuMemFree", 3020, cuMemFree_v2),
    PROC("cuMemGetInfo", 3020, cuMemGetInfo_v2),
    PROC("cuMemGetAddressRange", 3020, cuMemGetAddressRange_v2),
    PROC("cuMemAllocHost", 3020, cuMemAllocHost_v2),
    PROC("cuMemHostAlloc", 2020, cuMemHostAlloc),
    PROC("cuMemFreeHost", 2000, cuMemFreeHost),
    PROC("cuMemHostRegister", 6050, cuMemHostRegister_v2),
    PROC("cuMemHostUnregister", 4000, cuMemHostUnregister),
    PROC("cuMemHostGetFlags", 2030, cuMemHostGetFlags),
    PROC("cuPointerGetAttribute", 4000, cuPointerGetAttribute),
    PROC("cuMemcpy", 4000, cuMemcpy),
    PROC("cuMemcpyAsync", 4000, cuMemcpyAsync),
    PROC("cuMemcpyHtoD", 3020, cuMemcpyHtoD_v2),
    PROC("cuMemcpyDtoH", 3020, cuMemcpyDtoH_v2),
    PROC("cuMemcpyDtoD", 3020, cuMemcpyDtoD_v2),
    PROC("cuMemcpyHtoDAsync", 3020, cuMemcpyHtoDAsync_v2),
    PROC("cuMemcpyDtoHAsync", 3020, cuMemcpyDtoHAsync_v2),
    PROC("cuMemsetD8", 3020, cuMemsetD8_v2),
    PROC("cuMemsetD32", 3020, cuMemsetD32_v2),
    PROC("cuLaunchKernel", 4000, cuLaunchKernel),
    PROC("cuStreamCreate", 2000, cuStreamCreate),
    PROC("cuStreamDestroy", 4000, cuStreamDestroy_v2),
    PROC("cuStreamSynchronize", 2000, cuStreamSynchronize),
    PROC("cuStreamQuery", 2000, cuStreamQuery),
    PROC("cuStreamWaitEvent", 3020, cuStreamWaitEvent),
    PROC("cuEventCreate", 2000, cuEventCreate),
    PROC("cuEventRecord", 2000, cuEventRecord),
    PROC("cuEventSynchronize", 2000, cuEventSynchronize),
    PROC("cuEventQuery", 2000, cuEventQuery),
    PROC("cuEventElapsedTime", 12080, cuEventElapsedTime_v2),
    PROC("cuEventDestroy", 4000, cuEventDestroy_v2),
    PROC("cuMemGetAllocationGranularity", 10020, cuMemGetAllocationGranularity),
    PROC("cuMemAddressReserve", 10020, cuMemAddressReserve),
    PROC("cuMemAddressFree", 10020, cuMemAddressFree),
    PROC("cuMemCreate", 10020, cuMemCreate),
    PROC("cuMemRelease", 10020, cuMemRelease),
    PROC("cuMemMap", 10020, cuMemMap),
    PROC("cuMemUnmap", 10020, cuMemUnmap),
    PROC("cuMemSetAccess", 10020, cuMemSetAccess),
    PROC("cuMemExportToShareableHandle", 10020, cuMemExportToShareableHandle),
    PROC("cuMemRetainAllocationHandle", 11000, cuMemRetainAllocationHandle),
    PROC("cuMemGetAllocationPropertiesFromHandle", 10020, cuMemGetAllocationPropertiesFromHandle),
    PROC("cuMemGetAccess", 10020, cuMemGetAccess),
    PROC("cuStreamIsCapturing", 10000, cuStreamIsCapturing),
    PROC("cuDeviceGetDefaultMemPool", 11020, cuDeviceGetDefaultMemPool),
    PROC("cuDeviceGetMemPool", 11020, cuDeviceGetMemPool),
    PROC("cuDeviceSetMemPool", 11020, cuDeviceSetMemPool),
    PROC("cuMemPoolCreate", 11020, cuMemPoolCreate),
    PROC("cuMemPoolDestroy", 11020, cuMemPoolDestroy),
    PROC("cuMemPoolTrimTo", 11020, cuMemPoolTrimTo),
    PROC("cuMemPoolSetAccess", 11020, cuMemPoolSetAccess),
    PROC("cuMemPoolSetAttribute", 11020, cuMemPoolSetAttribute),
    PROC("cuMemPoolGetAttribute", 11020, cuMemPoolGetAttribute),
    PTSZ("cuMemAllocAsync", 11020, cuMemAllocAsync, cuMemAllocAsync_ptsz),
    PTSZ("cuMemAllocFromPoolAsync", 11020, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz),
    PTSZ("cuMemFreeAsync", 11020, cuMemFreeAsync, cuMemFreeAsync_ptsz),
    PROC("cuMemImportFromShareableHandle", 10020, cuMemImportFromShareableHandle),
    PROC("cuCheckpointProcessGetState", 12080, cuCheckpointProcessGetState),
    PROC("cuCheckpointProcessGetRestoreThreadId", 12080, cuCheckpointProcessGetRestoreThreadId),
    PROC("cuCheckpointProcessLock", 12080, cuCheckpointProcessLock),
    PROC("cuCheckpointProcessCheckpoint", 12080, cuCheckpointProcessCheckpoint),
    PROC("cuCheckpointProcessRestore", 12080, cuCheckpointProcessRestore),
    PROC("cuCheckpointProcessUnlock", 12080, cuCheckpointProcessUnlock),
    PROC("cuGetErrorString", 6000, cuGetErrorString),
    PROC("cuGetErrorName", 6000, cuGetErrorName),
    PROC("cuGetProcAddress", 11030, cuGetProcAddress_v1),
    PROC("cuGetProcAddress", 12000, cuGetProcAddress_v2),
#undef PROC
#undef PTSZ
};

static CUresult lookup_proc(const char *symbol, void **pfn, int version, cuuint64_t flags,
                            CUdriverProcAddressQueryResult *status)
{
    void *best = NULL;
    int best_version = -1, known = 0;
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    if (getenv("FAKECUDA_TRACE_PROC"))
        fprintf(stderr, "fakecuda: cuGetProcAddress(%s, version %d, flags %llu)\n", symbol,
                version, (unsigned long long)flags);
    for (size_t i = 0; i < sizeof(proc_table) / sizeof(proc_table[0]); i++) {
        if (strcmp(proc_table[i].base, symbol) != 0)
            continue;
        known = 1;
        if (proc_table[i].min_version <= version && proc_table[i].min_version > best_version) {
            best = proc_table[i].per_thread && (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
                       ? proc_table[i].per_thread
                       : proc_table[i].fn;
            best_version = proc_table[i].min_version;
        }
    }
    *pfn = best;
    if (status)
        *status = best ? CU_GET_PROC_ADDRESS_SUCCESS
                  : known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                          : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return best ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress_v1(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    ENTER("cuGetProcAddress");
    return lookup_proc(symbol, pfn, version, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status)
{
    ENTER("cuGetProcAddress_v2");
    return lookup_proc(symbol, pfn, version, flags, status);
}
