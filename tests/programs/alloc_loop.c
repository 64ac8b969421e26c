/* Times the allocation paths an application drives itself, for benchmarks/bench_alloc_path.py.
 *
 *   alloc_loop ITERATIONS SIZE_BYTES
 *
 * prints one line of name=value pairs:
 *   async_pair_ns     one cuMemAllocAsync + cuMemFreeAsync of SIZE on one stream
 *   async_batch_ns    per allocation, when 64 are live at once, then all freed (stream order)
 *   vmm_cycle_ns      cuMemCreate + cuMemMap + cuMemSetAccess + cuMemUnmap + cuMemRelease
 *   driver_calls      driver entry points called per async pair (only on the fake driver,
 *                     which counts them; -1 elsewhere)
 *
 * The driver is RESTOREPROF_LIBCUDA (default libcuda.so.1), loaded globally; functions are
 * looked up by symbol, so under LD_PRELOAD the interception library answers first.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 64

static void *need(const char *name)
{
    void *fn = dlsym(RTLD_DEFAULT, name);
    if (!fn) {
        fprintf(stderr, "alloc_loop: %s missing\n", name);
        exit(2);
    }
    return fn;
}

#define FN(name) static __typeof__(&name) p_##name
FN(cuInit);
FN(cuDeviceGet);
FN(cuDevicePrimaryCtxRetain);
FN(cuCtxSetCurrent);
FN(cuStreamCreate);
FN(cuStreamSynchronize);
FN(cuMemAllocAsync);
FN(cuMemFreeAsync);
FN(cuMemCreate);
FN(cuMemRelease);
FN(cuMemAddressReserve);
FN(cuMemMap);
FN(cuMemUnmap);
FN(cuMemSetAccess);
FN(cuMemGetAllocationGranularity);
#define LOAD(name) p_##name = (__typeof__(&name))need(#name)

static void check(CUresult rc, const char *what)
{
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "alloc_loop: %s failed: %d\n", what, (int)rc);
        exit(3);
    }
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static unsigned long total_calls(unsigned long (*calls)(const char *))
{
    static const char *names[] = {
        "cuCtxGetCurrent", "cuCtxGetDevice", "cuDeviceGetMemPool", "cuDeviceGetDefaultMemPool",
        "cuStreamIsCapturing", "cuMemGetAllocationGranularity", "cuEventCreate", "cuEventRecord",
        "cuEventQuery", "cuMemAllocAsync", "cuMemFreeAsync", "cuMemCreate", "cuMemMap",
        "cuMemSetAccess", "cuMemUnmap", "cuMemRelease", "cuMemAddressReserve",
        "cuMemAddressFree", "cuCtxSetCurrent", "cuStreamSynchronize",
    };
    unsigned long n = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        n += calls(names[i]);
    return n;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 10000;
    size_t size = argc > 2 ? (size_t)atoll(argv[2]) : (8u << 20);
    const char *lib = getenv("RESTOREPROF_LIBCUDA");
    if (!dlopen(lib && *lib ? lib : "libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) {
        fprintf(stderr, "alloc_loop: %s\n", dlerror());
        return 2;
    }
    LOAD(cuInit); LOAD(cuDeviceGet); LOAD(cuDevicePrimaryCtxRetain); LOAD(cuCtxSetCurrent);
    LOAD(cuStreamCreate); LOAD(cuStreamSynchronize); LOAD(cuMemAllocAsync); LOAD(cuMemFreeAsync);
    LOAD(cuMemCreate); LOAD(cuMemRelease); LOAD(cuMemAddressReserve); LOAD(cuMemMap);
    LOAD(cuMemUnmap); LOAD(cuMemSetAccess); LOAD(cuMemGetAllocationGranularity);
    unsigned long (*calls)(const char *) = dlsym(RTLD_DEFAULT, "fakecuda_calls");

    CUdevice dev;
    CUcontext ctx;
    CUstream s;
    check(p_cuInit(0), "cuInit");
    check(p_cuDeviceGet(&dev, 0), "cuDeviceGet");
    check(p_cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(p_cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    check(p_cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");

    CUdeviceptr p, batch[BATCH];
    for (int i = 0; i < 16; i++) { /* warm: the first allocation makes the block */
        check(p_cuMemAllocAsync(&p, size, s), "cuMemAllocAsync");
        check(p_cuMemFreeAsync(p, s), "cuMemFreeAsync");
    }
    check(p_cuStreamSynchronize(s), "cuStreamSynchronize");
    unsigned long before = calls ? total_calls(calls) : 0;
    double t0 = now_ns();
    for (long i = 0; i < iterations; i++) {
        check(p_cuMemAllocAsync(&p, size, s), "cuMemAllocAsync");
        check(p_cuMemFreeAsync(p, s), "cuMemFreeAsync");
    }
    double pair_ns = (now_ns() - t0) / iterations;
    long per_pair = calls ? (long)((total_calls(calls) - before) / iterations) : -1;
    check(p_cuStreamSynchronize(s), "cuStreamSynchronize");

    long rounds = iterations / BATCH > 0 ? iterations / BATCH : 1;
    t0 = now_ns();
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < BATCH; i++)
            check(p_cuMemAllocAsync(&batch[i], size, s), "cuMemAllocAsync");
        for (int i = 0; i < BATCH; i++)
            check(p_cuMemFreeAsync(batch[i], s), "cuMemFreeAsync");
    }
    double batch_ns = (now_ns() - t0) / (rounds * BATCH);
    check(p_cuStreamSynchronize(s), "cuStreamSynchronize");

    CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .location = { CU_MEM_LOCATION_TYPE_DEVICE, dev } };
    CUmemAccessDesc access = { .location = prop.location,
                               .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    size_t gran = 0;
    check(p_cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
          "cuMemGetAllocationGranularity");
    size_t vsize = (size + gran - 1) / gran * gran;
    CUdeviceptr va;
    check(p_cuMemAddressReserve(&va, vsize, 0, 0, 0), "cuMemAddressReserve");
    long cycles = iterations / 10 > 0 ? iterations / 10 : 1;
    t0 = now_ns();
    for (long i = 0; i < cycles; i++) {
        CUmemGenericAllocationHandle h;
        check(p_cuMemCreate(&h, vsize, &prop, 0), "cuMemCreate");
        check(p_cuMemMap(va, vsize, 0, h, 0), "cuMemMap");
        check(p_cuMemSetAccess(va, vsize, &access, 1), "cuMemSetAccess");
        check(p_cuMemUnmap(va, vsize), "cuMemUnmap");
        check(p_cuMemRelease(h), "cuMemRelease");
    }
    double cycle_ns = (now_ns() - t0) / cycles;
    printf("async_pair_ns=%.0f async_batch_ns=%.0f vmm_cycle_ns=%.0f driver_calls=%ld\n", pair_ns,
           batch_ns, cycle_ns, per_pair);
    return 0;
}
