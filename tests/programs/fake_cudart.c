/* A fake libcudart for tests: the runtime calls the profiler probes, forwarded to the driver
 * named by RESTOREPROF_LIBCUDA (the fake libcuda), as the real cudart forwards to libcuda.
 * Built as libcudart.so.13 and also linked statically into an executable (a "static cudart").
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

typedef int cudaError_t;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
typedef unsigned long long CUdeviceptr;
enum { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
       cudaMemcpyDeviceToDevice, cudaMemcpyDefault };

static void *driver;

static void *sym(const char *name)
{
    if (!driver) {
        const char *path = getenv("RESTOREPROF_LIBCUDA");
        driver = dlopen(path ? path : "libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
        if (!driver) {
            fprintf(stderr, "fake cudart: %s\n", dlerror());
            exit(90);
        }
    }
    void *fn = dlsym(driver, name);
    if (!fn) {
        fprintf(stderr, "fake cudart: no %s in the driver\n", name);
        exit(91);
    }
    return fn;
}

#define CALL(name, type, ...) ((type)sym(name))(__VA_ARGS__)
typedef int (*copy_fn)(CUdeviceptr, const void *, size_t);
typedef int (*copy_async_fn)(CUdeviceptr, const void *, size_t, void *);
typedef int (*alloc_fn)(void **, size_t);
typedef int (*host_alloc_fn)(void **, size_t, unsigned int);
typedef int (*ptr_fn)(void *);
typedef int (*void_fn)(void);
typedef int (*register_fn)(void *, size_t, unsigned int);
typedef int (*record_fn)(void *, void *);

static const char *copy_name(int kind, int async)
{
    static const char *sync_names[] = { "cuMemcpy", "cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2",
                                        "cuMemcpyDtoD_v2", "cuMemcpy" };
    static const char *async_names[] = { "cuMemcpyAsync", "cuMemcpyHtoDAsync_v2",
                                         "cuMemcpyDtoHAsync_v2", "cuMemcpyAsync", "cuMemcpyAsync" };
    if (kind < 0 || kind > 4)
        kind = 4;
    return async ? async_names[kind] : sync_names[kind];
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, int kind)
{
    return CALL(copy_name(kind, 0), copy_fn, (CUdeviceptr)dst, src, count);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, int kind, cudaStream_t s)
{
    return CALL(copy_name(kind, 1), copy_async_fn, (CUdeviceptr)dst, src, count, s);
}

cudaError_t cudaMalloc(void **p, size_t size) { return CALL("cuMemAlloc_v2", alloc_fn, p, size); }
cudaError_t cudaFree(void *p) { return CALL("cuMemFree_v2", ptr_fn, p); }
cudaError_t cudaMallocHost(void **p, size_t size) { return CALL("cuMemAllocHost_v2", alloc_fn, p, size); }
cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int flags)
{
    return CALL("cuMemHostAlloc", host_alloc_fn, p, size, flags);
}
cudaError_t cudaFreeHost(void *p) { return CALL("cuMemFreeHost", ptr_fn, p); }
cudaError_t cudaHostRegister(void *p, size_t size, unsigned int flags)
{
    return CALL("cuMemHostRegister_v2", register_fn, p, size, flags);
}
cudaError_t cudaHostUnregister(void *p) { return CALL("cuMemHostUnregister", ptr_fn, p); }
cudaError_t cudaDeviceSynchronize(void) { return CALL("cuCtxSynchronize", void_fn); }
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return CALL("cuStreamSynchronize", ptr_fn, s); }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) { return CALL("cuEventRecord", record_fn, e, s); }
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return CALL("cuEventSynchronize", ptr_fn, e); }
