/* Driver entry points the shared fake libcuda (tests/fakecuda) does not export: the
 * per-thread-default-stream variants, 2D and peer copies, managed, pitched and stream-ordered
 * allocation. Host memory stands in for device memory, as in the fake libcuda; the test
 * program links this library so that the profiler probes it like any object it maps.
 */
#include <cuda.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define MOVE(dst, src, n) (memmove((void *)(dst), (const void *)(src), (n)), CUDA_SUCCESS)

EXPORT CUresult cuMemcpy_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyAsync_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr d, const void *s, size_t n) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyDtoH_v2_ptds(void *d, CUdeviceptr s, size_t n) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr d, const void *s, size_t n, CUstream st) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void *d, CUdeviceptr s, size_t n, CUstream st) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyPeer(CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n) { return MOVE(d, s, n); }
EXPORT CUresult cuMemcpyPeerAsync(CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n,
                                  CUstream st) { return MOVE(d, s, n); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream st) { return CUDA_SUCCESS; }
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream st) { return CUDA_SUCCESS; }

static CUresult copy2d(const CUDA_MEMCPY2D *c)
{
    const char *src = c->srcMemoryType == CU_MEMORYTYPE_HOST ? c->srcHost : (const char *)c->srcDevice;
    char *dst = c->dstMemoryType == CU_MEMORYTYPE_HOST ? c->dstHost : (char *)c->dstDevice;
    for (size_t row = 0; row < c->Height; row++)
        memmove(dst + row * c->dstPitch, src + row * c->srcPitch, c->WidthInBytes);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D *c) { return copy2d(c); }
EXPORT CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *c, CUstream st) { return copy2d(c); }

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned int flags)
{
    *p = (CUdeviceptr)malloc(n);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int e)
{
    *pitch = w;
    *p = (CUdeviceptr)malloc(w * h);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream st)
{
    *p = (CUdeviceptr)malloc(n);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream st)
{
    free((void *)p);
    return CUDA_SUCCESS;
}
#undef cuMemHostRegister /* cuda.h maps the old name to _v2: export the old name itself */
EXPORT CUresult cuMemHostRegister(void *p, size_t n, unsigned int flags) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxCreate_v3(CUcontext *c, void *params, int n, unsigned int flags, CUdevice d)
{
    static int ctx;
    *c = (CUcontext)&ctx;
    return CUDA_SUCCESS;
}
