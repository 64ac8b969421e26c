/*
 * Reaching the real driver, and making sure programs reach us instead.
 *
 * A program finds driver functions in three ways, and each needs its own interposition:
 *   1. by symbol, linked against libcuda:        LD_PRELOAD puts our exports first;
 *   2. dlopen("libcuda.so.1") + dlsym(handle):   a handle lookup skips LD_PRELOAD, so we wrap
 *                                                dlsym itself (cuda-python, cudart do this);
 *   3. cuGetProcAddress("cuMemcpyHtoD", ver):    what cudart and PyTorch use for everything;
 *                                                we answer with our wrapper where we have one.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct rp_real rp_real;
static void *real_handle;
static void *(*real_dlsym)(void *, const char *);
static pthread_once_t real_once = PTHREAD_ONCE_INIT;
static int real_loaded; /* 1 loaded, -1 failed */

/* glibc 2.34 moved dlsym into libc with a new version; older systems have only 2.2.5. */
static void find_real_dlsym(void)
{
    if (real_dlsym)
        return;
    real_dlsym = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!real_dlsym)
        real_dlsym = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
}

static void load_real_once(void)
{
    find_real_dlsym();
    /* The one restoreprof's Python side resolves (RESTOREPROF_LIBCUDA) when it loads this
     * library itself, so both reach the same driver instance. */
    const char *path = getenv("RESTOREPROF_REAL_LIBCUDA");
    if (!path || !*path)
        path = getenv("RESTOREPROF_LIBCUDA");
    if (!path || !*path)
        path = "libcuda.so.1";
    real_handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!real_handle || !real_dlsym) {
        rp_log("cannot load the CUDA driver %s: %s; passing nothing through", path, dlerror());
        real_loaded = -1;
        return;
    }
    /* The handle lookup searches libcuda itself, never this library: no recursion. */
#define RESOLVE(name, params)                                                                \
    *(void **)&rp_real.name = real_dlsym(real_handle, strcmp(#name, "cuGetProcAddress_v1") \
                                                          ? #name                          \
                                                          : "cuGetProcAddress");
    RP_REAL_FUNCTIONS(RESOLVE)
#undef RESOLVE
    real_loaded = 1;
    RP_DEBUG("driver %s loaded", path);
}

int rp_load_real(void)
{
    pthread_once(&real_once, load_real_once);
    return real_loaded == 1 ? 0 : -1;
}

/* ---- the table of what we wrap ---- */

CUresult cuMemcpy_ptds(CUdeviceptr, CUdeviceptr, size_t);
CUresult cuMemcpyAsync_ptsz(CUdeviceptr, CUdeviceptr, size_t, CUstream);
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2_ptds(void *, CUdeviceptr, size_t);
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr, const void *, size_t, CUstream);
CUresult cuMemcpyDtoHAsync_v2_ptsz(void *, CUdeviceptr, size_t, CUstream);
CUresult cuLaunchKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                             unsigned int, unsigned int, unsigned int, CUstream, void **, void **);
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuGraphLaunch_ptsz(CUgraphExec, CUstream);
CUresult cuGetProcAddress_v1(const char *, void **, int, cuuint64_t) __asm__("cuGetProcAddress");
CUresult cuMemMapArrayAsync_ptsz(CUarrayMapInfo *, unsigned int, CUstream);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
CUresult cuMemsetD8_v2_ptds(CUdeviceptr, unsigned char, size_t);
CUresult cuMemsetD8Async_ptsz(CUdeviceptr, unsigned char, size_t, CUstream);
CUresult cuMemsetD16_v2_ptds(CUdeviceptr, unsigned short, size_t);
CUresult cuMemsetD16Async_ptsz(CUdeviceptr, unsigned short, size_t, CUstream);
CUresult cuMemsetD32_v2_ptds(CUdeviceptr, unsigned int, size_t);
CUresult cuMemsetD32Async_ptsz(CUdeviceptr, unsigned int, size_t, CUstream);
CUresult cuMemsetD2D8_v2_ptds(CUdeviceptr, size_t, unsigned char, size_t, size_t);
CUresult cuMemsetD2D8Async_ptsz(CUdeviceptr, size_t, unsigned char, size_t, size_t, CUstream);
CUresult cuMemsetD2D16_v2_ptds(CUdeviceptr, size_t, unsigned short, size_t, size_t);
CUresult cuMemsetD2D16Async_ptsz(CUdeviceptr, size_t, unsigned short, size_t, size_t, CUstream);
CUresult cuMemsetD2D32_v2_ptds(CUdeviceptr, size_t, unsigned int, size_t, size_t);
CUresult cuMemsetD2D32Async_ptsz(CUdeviceptr, size_t, unsigned int, size_t, size_t, CUstream);
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr, CUdeviceptr, size_t);
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr, CUdeviceptr, size_t, CUstream);
CUresult cuMemcpy2D_v2_ptds(const CUDA_MEMCPY2D *);
CUresult cuMemcpy2DUnaligned_v2_ptds(const CUDA_MEMCPY2D *);
CUresult cuMemcpy3D_v2_ptds(const CUDA_MEMCPY3D *);
CUresult cuMemcpy2DAsync_v2_ptsz(const CUDA_MEMCPY2D *, CUstream);
CUresult cuMemcpy3DAsync_v2_ptsz(const CUDA_MEMCPY3D *, CUstream);
CUresult cuMemcpyPeer_ptds(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t);
CUresult cuMemcpyPeerAsync_ptsz(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t, CUstream);
CUresult cuMemcpy3DPeer_ptds(const CUDA_MEMCPY3D_PEER *);
CUresult cuMemcpy3DPeerAsync_ptsz(const CUDA_MEMCPY3D_PEER *, CUstream);
CUresult cuStreamWriteValue32_v2_ptsz(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
CUresult cuStreamWriteValue64_v2_ptsz(CUstream, CUdeviceptr, cuuint64_t, unsigned int);
CUresult cuStreamBatchMemOp_v2_ptsz(CUstream, unsigned int, CUstreamBatchMemOpParams *,
                                    unsigned int);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int,
                                        unsigned int, unsigned int, unsigned int, unsigned int,
                                        CUstream, void **);

struct wrapped {
    const char *base;   /* the name cuGetProcAddress is asked for */
    int min_version;    /* the CUDA version from which `base` means this variant */
    int per_thread;     /* the _ptds/_ptsz variant (CU_GET_PROC_ADDRESS_PER_THREAD_...);
                         * ANY: the function takes no stream, one entry serves both modes */
    void **real;        /* slot in rp_real */
    void *wrapper;
};

#define ANY -1
#define W(base, version, per_thread, name) \
    { base, version, per_thread, (void **)&rp_real.name, (void *)name }
static const struct wrapped wrapped[] = {
    W("cuGetProcAddress", 11030, 0, cuGetProcAddress_v1),
    W("cuGetProcAddress", 12000, 0, cuGetProcAddress_v2),
    W("cuMemAlloc", 3020, ANY, cuMemAlloc_v2),
    W("cuMemFree", 3020, ANY, cuMemFree_v2),
    /* the application's VMM (app_vmm.c) */
    W("cuMemCreate", 10020, ANY, cuMemCreate),
    W("cuMemRelease", 10020, ANY, cuMemRelease),
    W("cuMemAddressReserve", 10020, ANY, cuMemAddressReserve),
    W("cuMemAddressFree", 10020, ANY, cuMemAddressFree),
    W("cuMemMap", 10020, ANY, cuMemMap),
    W("cuMemUnmap", 10020, ANY, cuMemUnmap),
    W("cuMemSetAccess", 10020, ANY, cuMemSetAccess),
    W("cuMemRetainAllocationHandle", 11000, ANY, cuMemRetainAllocationHandle),
    W("cuMemGetAllocationPropertiesFromHandle", 10020, ANY,
      cuMemGetAllocationPropertiesFromHandle),
    W("cuMemExportToShareableHandle", 10020, ANY, cuMemExportToShareableHandle),
    W("cuMemImportFromShareableHandle", 10020, ANY, cuMemImportFromShareableHandle),
    W("cuMemMapArrayAsync", 11010, 0, cuMemMapArrayAsync),
    W("cuMemMapArrayAsync", 11010, 1, cuMemMapArrayAsync_ptsz),
    /* stream-ordered allocation (mempool.c) */
    W("cuMemAllocAsync", 11020, 0, cuMemAllocAsync),
    W("cuMemAllocAsync", 11020, 1, cuMemAllocAsync_ptsz),
    W("cuMemAllocFromPoolAsync", 11020, 0, cuMemAllocFromPoolAsync),
    W("cuMemAllocFromPoolAsync", 11020, 1, cuMemAllocFromPoolAsync_ptsz),
    W("cuMemFreeAsync", 11020, 0, cuMemFreeAsync),
    W("cuMemFreeAsync", 11020, 1, cuMemFreeAsync_ptsz),
    W("cuMemPoolCreate", 11020, ANY, cuMemPoolCreate),
    W("cuMemPoolDestroy", 11020, ANY, cuMemPoolDestroy),
    W("cuMemPoolTrimTo", 11020, ANY, cuMemPoolTrimTo),
    W("cuMemPoolSetAttribute", 11020, ANY, cuMemPoolSetAttribute),
    W("cuMemPoolGetAttribute", 11020, ANY, cuMemPoolGetAttribute),
    W("cuMemPoolSetAccess", 11020, ANY, cuMemPoolSetAccess),
    W("cuMemcpy", 4000, 0, cuMemcpy),
    W("cuMemcpy", 7000, 1, cuMemcpy_ptds),
    W("cuMemcpyAsync", 4000, 0, cuMemcpyAsync),
    W("cuMemcpyAsync", 7000, 1, cuMemcpyAsync_ptsz),
    W("cuMemcpyHtoD", 3020, 0, cuMemcpyHtoD_v2),
    W("cuMemcpyHtoD", 7000, 1, cuMemcpyHtoD_v2_ptds),
    W("cuMemcpyDtoH", 3020, 0, cuMemcpyDtoH_v2),
    W("cuMemcpyDtoH", 7000, 1, cuMemcpyDtoH_v2_ptds),
    W("cuMemcpyHtoDAsync", 3020, 0, cuMemcpyHtoDAsync_v2),
    W("cuMemcpyHtoDAsync", 7000, 1, cuMemcpyHtoDAsync_v2_ptsz),
    W("cuMemcpyDtoHAsync", 3020, 0, cuMemcpyDtoHAsync_v2),
    W("cuMemcpyDtoHAsync", 7000, 1, cuMemcpyDtoHAsync_v2_ptsz),
    W("cuLaunchKernel", 4000, 0, cuLaunchKernel),
    W("cuLaunchKernel", 7000, 1, cuLaunchKernel_ptsz),
    W("cuLaunchKernelEx", 11060, 0, cuLaunchKernelEx),
    W("cuLaunchKernelEx", 11060, 1, cuLaunchKernelEx_ptsz),
    W("cuGraphLaunch", 10000, 0, cuGraphLaunch),
    W("cuGraphLaunch", 10000, 1, cuGraphLaunch_ptsz),
    /* gated only (copies.c) */
    W("cuMemsetD8", 3020, 0, cuMemsetD8_v2),
    W("cuMemsetD8", 7000, 1, cuMemsetD8_v2_ptds),
    W("cuMemsetD8Async", 3020, 0, cuMemsetD8Async),
    W("cuMemsetD8Async", 7000, 1, cuMemsetD8Async_ptsz),
    W("cuMemsetD16", 3020, 0, cuMemsetD16_v2),
    W("cuMemsetD16", 7000, 1, cuMemsetD16_v2_ptds),
    W("cuMemsetD16Async", 3020, 0, cuMemsetD16Async),
    W("cuMemsetD16Async", 7000, 1, cuMemsetD16Async_ptsz),
    W("cuMemsetD32", 3020, 0, cuMemsetD32_v2),
    W("cuMemsetD32", 7000, 1, cuMemsetD32_v2_ptds),
    W("cuMemsetD32Async", 3020, 0, cuMemsetD32Async),
    W("cuMemsetD32Async", 7000, 1, cuMemsetD32Async_ptsz),
    W("cuMemsetD2D8", 3020, 0, cuMemsetD2D8_v2),
    W("cuMemsetD2D8", 7000, 1, cuMemsetD2D8_v2_ptds),
    W("cuMemsetD2D8Async", 3020, 0, cuMemsetD2D8Async),
    W("cuMemsetD2D8Async", 7000, 1, cuMemsetD2D8Async_ptsz),
    W("cuMemsetD2D16", 3020, 0, cuMemsetD2D16_v2),
    W("cuMemsetD2D16", 7000, 1, cuMemsetD2D16_v2_ptds),
    W("cuMemsetD2D16Async", 3020, 0, cuMemsetD2D16Async),
    W("cuMemsetD2D16Async", 7000, 1, cuMemsetD2D16Async_ptsz),
    W("cuMemsetD2D32", 3020, 0, cuMemsetD2D32_v2),
    W("cuMemsetD2D32", 7000, 1, cuMemsetD2D32_v2_ptds),
    W("cuMemsetD2D32Async", 3020, 0, cuMemsetD2D32Async),
    W("cuMemsetD2D32Async", 7000, 1, cuMemsetD2D32Async_ptsz),
    W("cuMemcpyDtoD", 3020, 0, cuMemcpyDtoD_v2),
    W("cuMemcpyDtoD", 7000, 1, cuMemcpyDtoD_v2_ptds),
    W("cuMemcpyDtoDAsync", 3020, 0, cuMemcpyDtoDAsync_v2),
    W("cuMemcpyDtoDAsync", 7000, 1, cuMemcpyDtoDAsync_v2_ptsz),
    W("cuMemcpy2D", 3020, 0, cuMemcpy2D_v2),
    W("cuMemcpy2D", 7000, 1, cuMemcpy2D_v2_ptds),
    W("cuMemcpy2DUnaligned", 3020, 0, cuMemcpy2DUnaligned_v2),
    W("cuMemcpy2DUnaligned", 7000, 1, cuMemcpy2DUnaligned_v2_ptds),
    W("cuMemcpy3D", 3020, 0, cuMemcpy3D_v2),
    W("cuMemcpy3D", 7000, 1, cuMemcpy3D_v2_ptds),
    W("cuMemcpy2DAsync", 3020, 0, cuMemcpy2DAsync_v2),
    W("cuMemcpy2DAsync", 7000, 1, cuMemcpy2DAsync_v2_ptsz),
    W("cuMemcpy3DAsync", 3020, 0, cuMemcpy3DAsync_v2),
    W("cuMemcpy3DAsync", 7000, 1, cuMemcpy3DAsync_v2_ptsz),
    W("cuMemcpyPeer", 4000, 0, cuMemcpyPeer),
    W("cuMemcpyPeer", 7000, 1, cuMemcpyPeer_ptds),
    W("cuMemcpyPeerAsync", 4000, 0, cuMemcpyPeerAsync),
    W("cuMemcpyPeerAsync", 7000, 1, cuMemcpyPeerAsync_ptsz),
    W("cuMemcpy3DPeer", 4000, 0, cuMemcpy3DPeer),
    W("cuMemcpy3DPeer", 7000, 1, cuMemcpy3DPeer_ptds),
    W("cuMemcpy3DPeerAsync", 4000, 0, cuMemcpy3DPeerAsync),
    W("cuMemcpy3DPeerAsync", 7000, 1, cuMemcpy3DPeerAsync_ptsz),
    W("cuStreamWriteValue32", 11070, 0, cuStreamWriteValue32_v2),
    W("cuStreamWriteValue32", 11070, 1, cuStreamWriteValue32_v2_ptsz),
    W("cuStreamWriteValue64", 11070, 0, cuStreamWriteValue64_v2),
    W("cuStreamWriteValue64", 11070, 1, cuStreamWriteValue64_v2_ptsz),
    W("cuStreamBatchMemOp", 11070, 0, cuStreamBatchMemOp_v2),
    W("cuStreamBatchMemOp", 11070, 1, cuStreamBatchMemOp_v2_ptsz),
    W("cuLaunchCooperativeKernel", 9000, 0, cuLaunchCooperativeKernel),
    W("cuLaunchCooperativeKernel", 9000, 1, cuLaunchCooperativeKernel_ptsz),
};
#undef W
#define N_WRAPPED (sizeof(wrapped) / sizeof(wrapped[0]))

/* Our wrapper for a real driver function pointer, or NULL when we do not wrap it. */
static void *wrapper_for_pointer(void *fn)
{
    for (size_t i = 0; fn && i < N_WRAPPED; i++)
        if (*wrapped[i].real == fn)
            return wrapped[i].wrapper;
    return NULL;
}

/*
 * By name, for a driver that answers cuGetProcAddress with internal entry points rather than
 * its exported symbols: the variant `base` means for this version and stream mode.
 */
static void *wrapper_for_request(const char *base, int version, cuuint64_t flags)
{
    int per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const struct wrapped *best = NULL;
    for (size_t i = 0; i < N_WRAPPED; i++) {
        const struct wrapped *w = &wrapped[i];
        if (strcmp(w->base, base) != 0 || w->min_version > version || !*w->real)
            continue;
        if (w->per_thread != ANY && w->per_thread != per_thread &&
            strcmp(base, "cuGetProcAddress") != 0)
            continue;
        if (!best || w->min_version > best->min_version)
            best = w;
    }
    return best ? best->wrapper : NULL;
}

static void substitute(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    if (!pfn || !*pfn)
        return;
    void *ours = wrapper_for_pointer(*pfn);
    if (!ours)
        ours = wrapper_for_request(symbol, version, flags);
    if (ours) {
        RP_DEBUG("cuGetProcAddress(%s, %d, %llu) -> restoreprof", symbol, version,
                 (unsigned long long)flags);
        *pfn = ours;
    }
}

RP_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                       cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    if (rp_load_real() || !rp_real.cuGetProcAddress_v2)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = rp_real.cuGetProcAddress_v2(symbol, pfn, version, flags, status);
    if (rc == CUDA_SUCCESS)
        substitute(symbol, pfn, version, flags);
    return rc;
}

RP_EXPORT CUresult cuGetProcAddress_v1(const char *symbol, void **pfn, int version,
                                       cuuint64_t flags)
{
    if (rp_load_real() || !rp_real.cuGetProcAddress_v1)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = rp_real.cuGetProcAddress_v1(symbol, pfn, version, flags);
    if (rc == CUDA_SUCCESS)
        substitute(symbol, pfn, version, flags);
    return rc;
}

/* ---- dlsym ---- */

/*
 * RTLD_NEXT is relative to the caller; through us the caller would look like this library.
 * Search the objects loaded after the caller's, as glibc would have.
 */
static void *next_after(const void *caller, const char *name)
{
    Dl_info info;
    struct link_map *map = NULL;
    if (!dladdr1(caller, &info, (void **)&map, RTLD_DL_LINKMAP) || !map)
        return NULL;
    for (struct link_map *l = map->l_next; l; l = l->l_next) {
        void *found = real_dlsym(l, name); /* a link_map is a glibc dlopen handle */
        if (found)
            return found;
    }
    return NULL;
}

RP_EXPORT void *dlsym(void *handle, const char *name)
{
    find_real_dlsym();
    if (!real_dlsym)
        return NULL;
    void *found = handle == RTLD_NEXT ? next_after(__builtin_return_address(0), name)
                                      : real_dlsym(handle, name);
    if (!found || strncmp(name, "cu", 2) != 0)
        return found;
    /* A handle to libcuda skips LD_PRELOAD: hand out our wrapper for what we wrap. */
    if (rp_load_real() == 0) {
        void *ours = wrapper_for_pointer(found);
        if (ours) {
            RP_DEBUG("dlsym(%s) -> restoreprof", name);
            return ours;
        }
    }
    return found;
}
