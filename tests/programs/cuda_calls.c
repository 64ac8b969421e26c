/* Calls each CUDA function the profiler probes, with known sizes, kinds and host buffers.
 *
 *   cuda_calls [--wait]        the scripted sequence (tests/integration/test_probes_cuda.py
 *                              holds the figures it must produce); --wait reads one byte
 *                              from stdin first, so a tracer can attach to the PID
 *   cuda_calls --loop N        N 4-byte cuMemcpyHtoD_v2 calls; prints the ns per call
 *
 * The driver is the library named by RESTOREPROF_LIBCUDA (the fake libcuda in tests); the
 * runtime and the extra driver entry points come from the libraries this program links.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* the fake runtime (fake_cudart.c) */
int cudaMemcpy(void *dst, const void *src, size_t count, int kind);
int cudaMemcpyAsync(void *dst, const void *src, size_t count, int kind, void *stream);
int cudaMalloc(void **p, size_t size);
int cudaFree(void *p);
int cudaMallocHost(void **p, size_t size);
int cudaHostAlloc(void **p, size_t size, unsigned int flags);
int cudaFreeHost(void *p);
int cudaHostRegister(void *p, size_t size, unsigned int flags);
int cudaHostUnregister(void *p);
int cudaDeviceSynchronize(void);
int cudaStreamSynchronize(void *s);

static void *driver;
static int failures;

static void *get_from(void *handle, const char *name)
{
    void *fn = dlsym(handle, name);
    if (!fn) {
        fprintf(stderr, "cuda_calls: %s missing\n", name);
        exit(4);
    }
    return fn;
}

#define get(name) get_from(driver, name)
/* D: from the driver; X: from the extra library this program links (found by the loader) */
#define D(name, ...) check(#name, ((__typeof__(&name))get(#name))(__VA_ARGS__))
#define X(name, type, ...) check(#name, ((type)get_from(RTLD_DEFAULT, #name))(__VA_ARGS__))
typedef CUresult (*any_fn)();
static void check(const char *what, int rc)
{
    if (rc != 0) {
        fprintf(stderr, "cuda_calls: %s returned %d\n", what, rc);
        failures++;
    }
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *path = getenv("RESTOREPROF_LIBCUDA");
    driver = dlopen(path ? path : "libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!driver) {
        fprintf(stderr, "cuda_calls: %s\n", dlerror());
        return 3;
    }
    if (argc > 1 && strcmp(argv[1], "--wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 5;
    }
    CUdevice dev;
    CUcontext primary, ctx2, ctx3;
    D(cuInit, 0);
    D(cuDeviceGet, &dev, 0);
    D(cuDevicePrimaryCtxRetain, &primary, dev);
    D(cuCtxSetCurrent, primary);

    if (argc > 2 && strcmp(argv[1], "--loop") == 0) {
        long n = atol(argv[2]);
        CUdeviceptr d;
        int word = 7;
        D(cuMemAlloc_v2, &d, 4096);
        CUresult (*htod)(CUdeviceptr, const void *, size_t) = get("cuMemcpyHtoD_v2");
        double t0 = now_ns();
        for (long i = 0; i < n; i++)
            htod(d, &word, 4);
        printf("%.1f\n", (now_ns() - t0) / n);
        return 0;
    }

    check("cuCtxCreate_v2", ((any_fn)get("cuCtxCreate_v2"))(&ctx2, 0u, dev));
    X(cuCtxCreate_v3, any_fn, &ctx3, NULL, 0, 0, dev);
    D(cuCtxSetCurrent, primary);

    CUdeviceptr d1, d2, managed, pitched, stream_ordered;
    size_t pitch;
    D(cuMemAlloc_v2, &d1, 1 << 20);
    D(cuMemAlloc_v2, &d2, 1 << 20);
    void *pinned1, *pinned2;
    D(cuMemHostAlloc, &pinned1, 256 << 10, 0);
    D(cuMemAllocHost_v2, &pinned2, 128 << 10);
    char *pageable = malloc(1 << 20);
    memset(pageable, 1, 1 << 20);
    char *registered = aligned_alloc(4096, 512 << 10);
    D(cuMemHostRegister_v2, registered, 512 << 10, 0);

    /* synchronous copies with the direction in the name */
    D(cuMemcpyHtoD_v2, d1, pageable, 100000);              /* htod pageable */
    D(cuMemcpyHtoD_v2, d1, pinned1, 200000);               /* htod pinned (cuMemHostAlloc) */
    D(cuMemcpyHtoD_v2, d1, registered, 300000);            /* htod pinned (registered) */
    D(cuMemcpyDtoH_v2, pageable, d1, 40000);               /* dtoh pageable */
    D(cuMemcpyDtoH_v2, pinned2, d1, 50000);                /* dtoh pinned (cuMemAllocHost) */
    D(cuMemcpyDtoD_v2, d2, d1, 60000);                     /* dtod */
    /* generic copies: the direction comes from the pointers */
    D(cuMemcpy, d2, (CUdeviceptr)pinned1, 7000);           /* htod pinned */
    D(cuMemcpy, (CUdeviceptr)pageable, d2, 8000);          /* dtoh pageable */
    D(cuMemcpy, d2, d1, 9000);                             /* dtod */

    /* async copies, completed by stream, event and context synchronization */
    CUstream s1, s2;
    CUevent ev;
    D(cuStreamCreate, &s1, 0);
    D(cuStreamCreate, &s2, 0);
    D(cuEventCreate, &ev, 0);
    D(cuMemcpyHtoDAsync_v2, d1, pinned1, 11000, s1);       /* htod pinned */
    D(cuMemcpyDtoHAsync_v2, pinned2, d1, 12000, s1);       /* dtoh pinned */
    D(cuMemcpyAsync, d2, d1, 13000, s1);                   /* dtod */
    D(cuStreamSynchronize, s1);
    D(cuMemcpyHtoDAsync_v2, d1, pageable, 14000, s2);      /* htod pageable */
    D(cuEventRecord, ev, s2);
    D(cuEventSynchronize, ev);
    D(cuMemcpyHtoDAsync_v2, d2, pageable, 15000, s1);      /* htod pageable */
    D(cuCtxSynchronize);

    /* VMM: a mapped range is device memory for the generic copy */
    CUdeviceptr va;
    CUmemGenericAllocationHandle handle;
    CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    CUmemAccessDesc access = { { CU_MEM_LOCATION_TYPE_DEVICE, 0 }, CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    D(cuMemAddressReserve, &va, 2 << 20, 0, 0, 0);
    D(cuMemCreate, &handle, 2 << 20, &prop, 0);
    D(cuMemMap, va, 2 << 20, 0, handle, 0);
    D(cuMemSetAccess, va, 2 << 20, &access, 1);
    D(cuMemcpy, va, (CUdeviceptr)pageable, 16000);         /* htod pageable */
    D(cuMemUnmap, va, 2 << 20);
    D(cuMemRelease, handle);
    D(cuMemAddressFree, va, 2 << 20);

    /* the driver checkpoint API, on a pretend pid */
    CUprocessState state;
    D(cuCheckpointProcessGetState, 4242, &state);
    D(cuCheckpointProcessLock, 4242, NULL);
    D(cuCheckpointProcessCheckpoint, 4242, NULL);
    D(cuCheckpointProcessRestore, 4242, NULL);
    D(cuCheckpointProcessUnlock, 4242, NULL);

    /* entry points from the extra library */
    X(cuMemcpyHtoD_v2_ptds, any_fn, d1, pinned1, 1000);            /* htod pinned */
    X(cuMemcpyDtoH_v2_ptds, any_fn, pageable, d1, 2000);           /* dtoh pageable */
    X(cuMemcpyDtoD_v2_ptds, any_fn, d2, d1, 3000);                 /* dtod */
    X(cuMemcpy_ptds, any_fn, d2, (CUdeviceptr)pageable, 4000);     /* htod pageable */
    X(cuMemcpyHtoDAsync_v2_ptsz, any_fn, d1, pinned1, 5000, s1);   /* htod pinned */
    X(cuMemcpyDtoHAsync_v2_ptsz, any_fn, pinned2, d1, 6000, s1);   /* dtoh pinned */
    X(cuMemcpyDtoDAsync_v2, any_fn, d2, d1, 7000, s1);             /* dtod */
    X(cuMemcpyDtoDAsync_v2_ptsz, any_fn, d2, d1, 8000, s1);        /* dtod */
    X(cuMemcpyAsync_ptsz, any_fn, d2, d1, 9000, s1);               /* dtod */
    X(cuStreamSynchronize_ptsz, any_fn, s1);
    X(cuMemcpyPeer, any_fn, d2, ctx2, d1, primary, 10000);         /* dtod */
    X(cuMemcpyPeerAsync, any_fn, d2, ctx2, d1, primary, 11000, s2);/* dtod */
    X(cuEventRecord_ptsz, any_fn, ev, s2);
    CUDA_MEMCPY2D copy = { .srcMemoryType = CU_MEMORYTYPE_HOST, .srcHost = pageable, .srcPitch = 1000,
                           .dstMemoryType = CU_MEMORYTYPE_DEVICE, .dstDevice = d1, .dstPitch = 1000,
                           .WidthInBytes = 1000, .Height = 12 };
    X(cuMemcpy2D_v2, any_fn, &copy);                               /* htod pageable 12000 */
    copy.srcHost = pinned1;
    X(cuMemcpy2DAsync_v2, any_fn, &copy, s2);                      /* htod pinned 12000 */
    X(cuMemAllocManaged, any_fn, &managed, 4096, 1);
    X(cuMemAllocPitch_v2, any_fn, &pitched, &pitch, 512, 8, 4);
    X(cuMemAllocAsync, any_fn, &stream_ordered, 8192, s2);
    X(cuMemFreeAsync, any_fn, stream_ordered, s2);
    X(cuMemHostRegister, any_fn, pageable + (900 << 10), 4096, 0u);

    /* after unregistering, the same buffer is pageable again */
    D(cuMemHostUnregister, registered);
    D(cuMemcpyHtoD_v2, d1, registered, 18000);             /* htod pageable */

    /* the runtime: each call forwards to one driver call, counted once */
    void *rd, *rh, *rh2;
    check("cudaMalloc", cudaMalloc(&rd, 1 << 20));
    check("cudaHostAlloc", cudaHostAlloc(&rh, 64 << 10, 0));
    check("cudaMallocHost", cudaMallocHost(&rh2, 64 << 10));
    check("cudaMemcpy", cudaMemcpy(rd, rh, 21000, 1));     /* htod pinned */
    check("cudaMemcpy", cudaMemcpy(rh, rd, 22000, 2));     /* dtoh pinned */
    check("cudaMemcpy", cudaMemcpy(rd, pageable, 23000, 4)); /* htod pageable (Default) */
    check("cudaMemcpyAsync", cudaMemcpyAsync(rd, rh2, 24000, 1, s1)); /* htod pinned */
    check("cudaStreamSynchronize", cudaStreamSynchronize(s1));
    check("cudaHostRegister", cudaHostRegister(pageable + (512 << 10), 64 << 10, 0));
    check("cudaMemcpy", cudaMemcpy(rd, pageable + (512 << 10), 25000, 1)); /* htod pinned */
    check("cudaHostUnregister", cudaHostUnregister(pageable + (512 << 10)));
    check("cudaDeviceSynchronize", cudaDeviceSynchronize());
    check("cudaFreeHost", cudaFreeHost(rh));
    check("cudaFreeHost", cudaFreeHost(rh2));
    check("cudaFree", cudaFree(rd));

    D(cuMemFreeHost, pinned1);
    D(cuMemFreeHost, pinned2);
    D(cuMemFree_v2, d1);
    D(cuMemFree_v2, d2);
    printf("done %d\n", failures);
    return failures ? 1 : 0;
}
