/*
 * Large copies between pageable host memory and the device, routed through the engine.
 *
 * From pageable memory the driver stages through its own small bounce buffers at ~9 GB/s on
 * the H100; the engine's pinned pool, threads and streams reach the link's ~55 GB/s.
 *
 * Semantics kept: the driver returns from a pageable H2D copy once the source may be reused,
 * and from a pageable D2H copy once the data is there, for sync and async calls alike; the
 * engine returns only when every chunk has landed, which satisfies both. Ordering: the copy
 * starts after the work already queued on the caller's stream (an event recorded there and
 * waited for by the engine's streams; on the legacy default stream that event also waits for
 * the blocking streams, as the copy itself would have). Anything unusual (pinned or managed
 * memory, small copies, no current context, the engine busy or failing) goes to the real call.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <stdatomic.h>

enum stream_mode { LEGACY, PER_THREAD };

static CUstream caller_stream(CUstream s, enum stream_mode mode)
{
    /* Stream 0 means the per-thread default stream in the _ptds/_ptsz variants. */
    return s == NULL && mode == PER_THREAD ? CU_STREAM_PER_THREAD : s;
}

/* Pinned if the driver knows the range as host memory it allocated or registered. */
static int is_pageable(const void *host)
{
    unsigned int type = 0, flags = 0;
    if (rp_real.cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                      (CUdeviceptr)host) != CUDA_SUCCESS)
        return 1; /* unknown to the driver: ordinary malloc'd memory */
    if (type != CU_MEMORYTYPE_HOST)
        return 0; /* device or managed memory behind a host-looking address */
    /* With HMM the driver may know pageable memory as HOST; only pinned memory has flags. */
    return rp_real.cuMemHostGetFlags(&flags, (void *)host) != CUDA_SUCCESS;
}

static int is_device(CUdeviceptr p)
{
    unsigned int type = 0;
    int managed = 0;
    if (rp_real.cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p) != CUDA_SUCCESS ||
        type != CU_MEMORYTYPE_DEVICE)
        return 0;
    if (rp_real.cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, p) ==
            CUDA_SUCCESS &&
        managed)
        return 0;
    return 1;
}

static int worth_intercepting(size_t bytes)
{
    return rp_config.intercept && bytes >= rp_config.min_intercept_bytes && bytes > 0;
}

/* 0 when the engine did the copy; nonzero means "do the real call". */
static int try_engine(enum rp_direction dir, CUdeviceptr device, void *host, size_t bytes,
                      CUstream stream)
{
    struct rp_transfer t = { .direction = dir, .device = device, .host = host, .bytes = bytes,
                             .after = stream, .order_after = 1, .fd = -1 };
    CUresult rc = rp_engine_run(&t, rp_engine_default_params(), 0);
    if (rc == CUDA_SUCCESS) {
        __atomic_add_fetch(&rp_stats.intercepted, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&rp_stats.intercepted_bytes, bytes, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_add_fetch(&rp_stats.fallbacks, 1, __ATOMIC_RELAXED);
    RP_DEBUG("engine %s of %zu bytes: %s; using the driver's copy", dir == RP_H2D ? "H2D" : "D2H",
             bytes, rp_error_name(rc));
    return 1;
}

static int route_h2d(CUdeviceptr dst, const void *src, size_t bytes, CUstream stream)
{
    return worth_intercepting(bytes) && is_pageable(src)
               ? try_engine(RP_H2D, dst, (void *)src, bytes, stream)
               : 1;
}

static int route_d2h(void *dst, CUdeviceptr src, size_t bytes, CUstream stream)
{
    return worth_intercepting(bytes) && is_pageable(dst)
               ? try_engine(RP_D2H, src, dst, bytes, stream)
               : 1;
}

/* cuMemcpy with unified addressing: the direction comes from what the pointers are. */
static int route_generic(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream)
{
    if (!worth_intercepting(bytes))
        return 1;
    if (is_device(dst) && is_pageable((const void *)src))
        return try_engine(RP_H2D, dst, (void *)src, bytes, stream);
    if (is_device(src) && is_pageable((const void *)dst))
        return try_engine(RP_D2H, src, (void *)dst, bytes, stream);
    return 1;
}

#define MISSING(fn) (rp_load_real() || !rp_real.fn)

/* Every wrapper: gate, try the engine, else the real call. */
#define COPY_WRAPPER(name, route, mode, params, dst_arg, src_arg, bytes_arg, stream_arg, args) \
    RP_EXPORT CUresult name params                                                             \
    {                                                                                          \
        if (MISSING(name))                                                                     \
            return CUDA_ERROR_NOT_FOUND;                                                       \
        rp_gate_enter();                                                                       \
        CUresult rc = CUDA_SUCCESS;                                                            \
        if (route(dst_arg, src_arg, bytes_arg, caller_stream(stream_arg, mode)))              \
            rc = rp_real.name args;                                                            \
        rp_gate_leave();                                                                       \
        return rc;                                                                             \
    }

COPY_WRAPPER(cuMemcpyHtoD_v2, route_h2d, LEGACY,
             (CUdeviceptr dst, const void *src, size_t n), dst, src, n, NULL, (dst, src, n))
COPY_WRAPPER(cuMemcpyHtoD_v2_ptds, route_h2d, PER_THREAD,
             (CUdeviceptr dst, const void *src, size_t n), dst, src, n, NULL, (dst, src, n))
COPY_WRAPPER(cuMemcpyDtoH_v2, route_d2h, LEGACY,
             (void *dst, CUdeviceptr src, size_t n), dst, src, n, NULL, (dst, src, n))
COPY_WRAPPER(cuMemcpyDtoH_v2_ptds, route_d2h, PER_THREAD,
             (void *dst, CUdeviceptr src, size_t n), dst, src, n, NULL, (dst, src, n))
COPY_WRAPPER(cuMemcpyHtoDAsync_v2, route_h2d, LEGACY,
             (CUdeviceptr dst, const void *src, size_t n, CUstream s), dst, src, n, s,
             (dst, src, n, s))
COPY_WRAPPER(cuMemcpyHtoDAsync_v2_ptsz, route_h2d, PER_THREAD,
             (CUdeviceptr dst, const void *src, size_t n, CUstream s), dst, src, n, s,
             (dst, src, n, s))
COPY_WRAPPER(cuMemcpyDtoHAsync_v2, route_d2h, LEGACY,
             (void *dst, CUdeviceptr src, size_t n, CUstream s), dst, src, n, s,
             (dst, src, n, s))
COPY_WRAPPER(cuMemcpyDtoHAsync_v2_ptsz, route_d2h, PER_THREAD,
             (void *dst, CUdeviceptr src, size_t n, CUstream s), dst, src, n, s,
             (dst, src, n, s))
COPY_WRAPPER(cuMemcpy, route_generic, LEGACY,
             (CUdeviceptr dst, CUdeviceptr src, size_t n), dst, src, n, NULL, (dst, src, n))
COPY_WRAPPER(cuMemcpy_ptds, route_generic, PER_THREAD,
             (CUdeviceptr dst, CUdeviceptr src, size_t n), dst, src, n, NULL, (dst, src, n))
COPY_WRAPPER(cuMemcpyAsync, route_generic, LEGACY,
             (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), dst, src, n, s,
             (dst, src, n, s))
COPY_WRAPPER(cuMemcpyAsync_ptsz, route_generic, PER_THREAD,
             (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), dst, src, n, s,
             (dst, src, n, s))

/* Kernel and graph launches only pass the gate: they must not run while memory is away. */
#define GATED(name, params, args)                   \
    RP_EXPORT CUresult name params                  \
    {                                               \
        if (MISSING(name))                          \
            return CUDA_ERROR_NOT_FOUND;            \
        rp_gate_enter();                            \
        CUresult rc = rp_real.name args;            \
        rp_gate_leave();                            \
        return rc;                                  \
    }

#define LAUNCH_PARAMS                                                                            \
    (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,           \
     unsigned int by, unsigned int bz, unsigned int shared, CUstream s, void **params,          \
     void **extra)
#define LAUNCH_ARGS (f, gx, gy, gz, bx, by, bz, shared, s, params, extra)

GATED(cuLaunchKernel, LAUNCH_PARAMS, LAUNCH_ARGS)
GATED(cuLaunchKernel_ptsz, LAUNCH_PARAMS, LAUNCH_ARGS)
GATED(cuLaunchKernelEx, (const CUlaunchConfig *c, CUfunction f, void **params, void **extra),
      (c, f, params, extra))
GATED(cuLaunchKernelEx_ptsz, (const CUlaunchConfig *c, CUfunction f, void **params, void **extra),
      (c, f, params, extra))
GATED(cuGraphLaunch, (CUgraphExec g, CUstream s), (g, s))
GATED(cuGraphLaunch_ptsz, (CUgraphExec g, CUstream s), (g, s))

/* The other calls that write (or read) GPU memory: memsets, device-to-device, 2D, 3D and peer
 * copies, stream memory operations, cooperative launches. None may run while the memory is
 * away, nor pass unseen: the free ranges a release hook reports (release.c) hold only if no
 * call that could write GPU memory passed the gate since they were read. */
/* One width of memset: sync and async, each with its per-thread variant, 1D and 2D. */
#define MEMSET_FAMILY(bits, type)                                                                 \
    GATED(cuMemsetD##bits##_v2, (CUdeviceptr d, type v, size_t n), (d, v, n))                     \
    GATED(cuMemsetD##bits##_v2_ptds, (CUdeviceptr d, type v, size_t n), (d, v, n))                \
    GATED(cuMemsetD##bits##Async, (CUdeviceptr d, type v, size_t n, CUstream s), (d, v, n, s))    \
    GATED(cuMemsetD##bits##Async_ptsz, (CUdeviceptr d, type v, size_t n, CUstream s),             \
          (d, v, n, s))                                                                           \
    GATED(cuMemsetD2D##bits##_v2, (CUdeviceptr d, size_t pitch, type v, size_t w, size_t h),     \
          (d, pitch, v, w, h))                                                                    \
    GATED(cuMemsetD2D##bits##_v2_ptds, (CUdeviceptr d, size_t pitch, type v, size_t w, size_t h), \
          (d, pitch, v, w, h))                                                                    \
    GATED(cuMemsetD2D##bits##Async,                                                               \
          (CUdeviceptr d, size_t pitch, type v, size_t w, size_t h, CUstream s),                  \
          (d, pitch, v, w, h, s))                                                                 \
    GATED(cuMemsetD2D##bits##Async_ptsz,                                                          \
          (CUdeviceptr d, size_t pitch, type v, size_t w, size_t h, CUstream s),                  \
          (d, pitch, v, w, h, s))
MEMSET_FAMILY(8, unsigned char)
MEMSET_FAMILY(16, unsigned short)
MEMSET_FAMILY(32, unsigned int)
GATED(cuMemcpyDtoD_v2, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n))
GATED(cuMemcpyDtoD_v2_ptds, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n))
GATED(cuMemcpyDtoDAsync_v2, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s),
      (dst, src, n, s))
GATED(cuMemcpyDtoDAsync_v2_ptsz, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s),
      (dst, src, n, s))
GATED(cuMemcpy2D_v2, (const CUDA_MEMCPY2D *c), (c))
GATED(cuMemcpy2D_v2_ptds, (const CUDA_MEMCPY2D *c), (c))
GATED(cuMemcpy2DUnaligned_v2, (const CUDA_MEMCPY2D *c), (c))
GATED(cuMemcpy2DUnaligned_v2_ptds, (const CUDA_MEMCPY2D *c), (c))
GATED(cuMemcpy3D_v2, (const CUDA_MEMCPY3D *c), (c))
GATED(cuMemcpy3D_v2_ptds, (const CUDA_MEMCPY3D *c), (c))
GATED(cuMemcpy2DAsync_v2, (const CUDA_MEMCPY2D *c, CUstream s), (c, s))
GATED(cuMemcpy2DAsync_v2_ptsz, (const CUDA_MEMCPY2D *c, CUstream s), (c, s))
GATED(cuMemcpy3DAsync_v2, (const CUDA_MEMCPY3D *c, CUstream s), (c, s))
GATED(cuMemcpy3DAsync_v2_ptsz, (const CUDA_MEMCPY3D *c, CUstream s), (c, s))
GATED(cuMemcpyPeer, (CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx, size_t n),
      (dst, dctx, src, sctx, n))
GATED(cuMemcpyPeer_ptds, (CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx,
      size_t n),
      (dst, dctx, src, sctx, n))
GATED(cuMemcpyPeerAsync, (CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx,
      size_t n, CUstream s),
      (dst, dctx, src, sctx, n, s))
GATED(cuMemcpyPeerAsync_ptsz, (CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx,
      size_t n, CUstream s),
      (dst, dctx, src, sctx, n, s))
GATED(cuMemcpy3DPeer, (const CUDA_MEMCPY3D_PEER *c), (c))
GATED(cuMemcpy3DPeer_ptds, (const CUDA_MEMCPY3D_PEER *c), (c))
GATED(cuMemcpy3DPeerAsync, (const CUDA_MEMCPY3D_PEER *c, CUstream s), (c, s))
GATED(cuMemcpy3DPeerAsync_ptsz, (const CUDA_MEMCPY3D_PEER *c, CUstream s), (c, s))
GATED(cuStreamWriteValue32_v2, (CUstream s, CUdeviceptr a, cuuint32_t v, unsigned int f),
      (s, a, v, f))
GATED(cuStreamWriteValue32_v2_ptsz, (CUstream s, CUdeviceptr a, cuuint32_t v, unsigned int f),
      (s, a, v, f))
GATED(cuStreamWriteValue64_v2, (CUstream s, CUdeviceptr a, cuuint64_t v, unsigned int f),
      (s, a, v, f))
GATED(cuStreamWriteValue64_v2_ptsz, (CUstream s, CUdeviceptr a, cuuint64_t v, unsigned int f),
      (s, a, v, f))
GATED(cuStreamBatchMemOp_v2, (CUstream s, unsigned int n, CUstreamBatchMemOpParams *ops,
      unsigned int f),
      (s, n, ops, f))
GATED(cuStreamBatchMemOp_v2_ptsz, (CUstream s, unsigned int n, CUstreamBatchMemOpParams *ops,
      unsigned int f),
      (s, n, ops, f))
#define COOPERATIVE_PARAMS                                                                       \
    (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,           \
     unsigned int by, unsigned int bz, unsigned int shared, CUstream s, void **params)
#define COOPERATIVE_ARGS (f, gx, gy, gz, bx, by, bz, shared, s, params)
GATED(cuLaunchCooperativeKernel, COOPERATIVE_PARAMS, COOPERATIVE_ARGS)
GATED(cuLaunchCooperativeKernel_ptsz, COOPERATIVE_PARAMS, COOPERATIVE_ARGS)
