/*
 * restoreprof's interception library: shared declarations.
 *
 * Ground floor (call nothing above them):
 *   util.c     logging, the clock, driver error names
 *   crc32c.c   the per-chunk checksum
 *   config.c   the settings' environment variables (settings_defaults.h, generated from
 *              restoreprof/settings/schema.py at build)
 *   driver.c   loads the real libcuda, and interposes dlsym and cuGetProcAddress so that
 *              programs which look driver functions up (cudart, cuda-python, PyTorch) get ours
 * Mechanisms:
 *   engine.c   chunked copies through the staging pool (pinned buffers, streams), several threads
 *   vmm.c      device allocations served from VMM, their registry, and the offload gate
 *   hot.c      hot snapshots: pinned host copies of snapshots, checked, sent by DMA
 *   app_vmm.c  the application's own VMM memory (cuMemCreate, cuMemMap, ...): tracked under
 *              stable handle values, offloaded and put back at the same addresses
 *   mempool.c  stream-ordered allocations (cuMemAllocAsync, memory pools) served from VMM
 *   chunks.c   content-addressed chunk folders (BLAKE3 names; the store's, a checkpoint's)
 *   snapshot.c the snapshot table: write (from live memory, as chunks) and read it (any version)
 * Users of the mechanisms:
 *   copies.c   large pageable H2D / D2H copies routed through the engine
 *   preload.c  snapshots loaded into exportable memory in restoreprof's own process
 *   control.c  the control socket: OFFLOAD / RELOAD / ADOPT / STATUS
 *   release.c  the program's release hooks (caching allocators' free blocks), run before OFFLOAD
 *   coverage.c what the library serves, per allocation kind, for STATUS
 *   init.c     start-up (the constructor)
 *
 * "Staging pool" always means the engine's pinned buffers; the warm pool is a process
 * (restoreprof warm, in Python) and has no code here.
 */
#ifndef RESTOREPROF_SHIM_H
#define RESTOREPROF_SHIM_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RP_EXPORT __attribute__((visibility("default")))
#define RP_MIB ((size_t)1 << 20)

/* ---- real driver entry points (driver.c) ---- */

/* X(name, return, params): every driver function the library calls or wraps. */
#define RP_REAL_FUNCTIONS(X)                                                                   \
    X(cuInit, (unsigned int))                                                                  \
    X(cuGetErrorName, (CUresult, const char **))                                               \
    X(cuCtxGetCurrent, (CUcontext *))                                                          \
    X(cuCtxSetCurrent, (CUcontext))                                                            \
    X(cuCtxGetDevice, (CUdevice *))                                                            \
    X(cuCtxGetId, (CUcontext, unsigned long long *))                                           \
    X(cuCtxSynchronize, (void))                                                                \
    X(cuCtxGetLimit, (size_t *, CUlimit))                                                      \
    X(cuCtxSetLimit, (CUlimit, size_t))                                                        \
    X(cuMemHostAlloc, (void **, size_t, unsigned int))                                         \
    X(cuMemFreeHost, (void *))                                                                 \
    X(cuMemHostGetFlags, (unsigned int *, void *))                                             \
    X(cuPointerGetAttribute, (void *, CUpointer_attribute, CUdeviceptr))                       \
    X(cuStreamCreate, (CUstream *, unsigned int))                                              \
    X(cuStreamDestroy_v2, (CUstream))                                                          \
    X(cuStreamWaitEvent, (CUstream, CUevent, unsigned int))                                    \
    X(cuEventCreate, (CUevent *, unsigned int))                                                \
    X(cuEventRecord, (CUevent, CUstream))                                                      \
    X(cuEventSynchronize, (CUevent))                                                           \
    X(cuEventDestroy_v2, (CUevent))                                                            \
    X(cuMemGetAllocationGranularity,                                                           \
      (size_t *, const CUmemAllocationProp *, CUmemAllocationGranularity_flags))               \
    X(cuMemAddressReserve, (CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long))   \
    X(cuMemAddressFree, (CUdeviceptr, size_t))                                                 \
    X(cuMemCreate,                                                                             \
      (CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long)) \
    X(cuMemRelease, (CUmemGenericAllocationHandle))                                            \
    X(cuMemMap, (CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long)) \
    X(cuMemUnmap, (CUdeviceptr, size_t))                                                       \
    X(cuMemSetAccess, (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t))                  \
    X(cuMemExportToShareableHandle,                                                            \
      (void *, CUmemGenericAllocationHandle, CUmemAllocationHandleType, unsigned long long))   \
    X(cuMemImportFromShareableHandle,                                                          \
      (CUmemGenericAllocationHandle *, void *, CUmemAllocationHandleType))                     \
    X(cuDeviceGet, (CUdevice *, int))                                                          \
    X(cuDeviceGetUuid_v2, (CUuuid *, CUdevice))                                                \
    X(cuDevicePrimaryCtxRetain, (CUcontext *, CUdevice))                                       \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice))                                                \
    X(cuEventQuery, (CUevent))                                                                 \
    X(cuStreamSynchronize, (CUstream))                                                         \
    X(cuStreamIsCapturing, (CUstream, CUstreamCaptureStatus *))                                \
    X(cuDeviceGetMemPool, (CUmemoryPool *, CUdevice))                                          \
    X(cuDeviceGetDefaultMemPool, (CUmemoryPool *, CUdevice))                                   \
    /* wrapped, the application's VMM (app_vmm.c; cuMemCreate ... above are wrapped too): */  \
    X(cuMemRetainAllocationHandle, (CUmemGenericAllocationHandle *, void *))                   \
    X(cuMemGetAllocationPropertiesFromHandle,                                                  \
      (CUmemAllocationProp *, CUmemGenericAllocationHandle))                                   \
    X(cuMemMapArrayAsync, (CUarrayMapInfo *, unsigned int, CUstream))                          \
    X(cuMemMapArrayAsync_ptsz, (CUarrayMapInfo *, unsigned int, CUstream))                     \
    /* wrapped, stream-ordered allocation (mempool.c): */                                      \
    X(cuMemAllocAsync, (CUdeviceptr *, size_t, CUstream))                                      \
    X(cuMemAllocAsync_ptsz, (CUdeviceptr *, size_t, CUstream))                                 \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr *, size_t, CUmemoryPool, CUstream))                \
    X(cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr *, size_t, CUmemoryPool, CUstream))           \
    X(cuMemFreeAsync, (CUdeviceptr, CUstream))                                                 \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr, CUstream))                                            \
    X(cuMemPoolCreate, (CUmemoryPool *, const CUmemPoolProps *))                               \
    X(cuMemPoolDestroy, (CUmemoryPool))                                                        \
    X(cuMemPoolTrimTo, (CUmemoryPool, size_t))                                                 \
    X(cuMemPoolSetAttribute, (CUmemoryPool, CUmemPool_attribute, void *))                      \
    X(cuMemPoolGetAttribute, (CUmemoryPool, CUmemPool_attribute, void *))                      \
    X(cuMemPoolSetAccess, (CUmemoryPool, const CUmemAccessDesc *, size_t))                     \
    /* wrapped: */                                                                             \
    X(cuGetProcAddress_v1, (const char *, void **, int, cuuint64_t)) /* "cuGetProcAddress" */  \
    X(cuGetProcAddress_v2,                                                                     \
      (const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *))              \
    X(cuMemAlloc_v2, (CUdeviceptr *, size_t))                                                  \
    X(cuMemFree_v2, (CUdeviceptr))                                                             \
    X(cuMemcpy, (CUdeviceptr, CUdeviceptr, size_t))                                            \
    X(cuMemcpy_ptds, (CUdeviceptr, CUdeviceptr, size_t))                                       \
    X(cuMemcpyAsync, (CUdeviceptr, CUdeviceptr, size_t, CUstream))                             \
    X(cuMemcpyAsync_ptsz, (CUdeviceptr, CUdeviceptr, size_t, CUstream))                        \
    X(cuMemcpyHtoD_v2, (CUdeviceptr, const void *, size_t))                                    \
    X(cuMemcpyHtoD_v2_ptds, (CUdeviceptr, const void *, size_t))                               \
    X(cuMemcpyDtoH_v2, (void *, CUdeviceptr, size_t))                                          \
    X(cuMemcpyDtoH_v2_ptds, (void *, CUdeviceptr, size_t))                                     \
    X(cuMemcpyHtoDAsync_v2, (CUdeviceptr, const void *, size_t, CUstream))                     \
    X(cuMemcpyHtoDAsync_v2_ptsz, (CUdeviceptr, const void *, size_t, CUstream))                \
    X(cuMemcpyDtoHAsync_v2, (void *, CUdeviceptr, size_t, CUstream))                           \
    X(cuMemcpyDtoHAsync_v2_ptsz, (void *, CUdeviceptr, size_t, CUstream))                      \
    X(cuLaunchKernel, (CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,     \
                       unsigned int, unsigned int, unsigned int, CUstream, void **, void **))  \
    X(cuLaunchKernel_ptsz, (CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, \
                            unsigned int, unsigned int, unsigned int, CUstream, void **,       \
                            void **))                                                          \
    X(cuLaunchKernelEx, (const CUlaunchConfig *, CUfunction, void **, void **))                \
    X(cuLaunchKernelEx_ptsz, (const CUlaunchConfig *, CUfunction, void **, void **))           \
    X(cuGraphLaunch, (CUgraphExec, CUstream))                                                  \
    X(cuGraphLaunch_ptsz, (CUgraphExec, CUstream))                                             \
    /* wrapped, gated only (copies.c): the other calls that write or read GPU memory */        \
    X(cuMemsetD8_v2, (CUdeviceptr, unsigned char, size_t))                                     \
    X(cuMemsetD8_v2_ptds, (CUdeviceptr, unsigned char, size_t))                                \
    X(cuMemsetD8Async, (CUdeviceptr, unsigned char, size_t, CUstream))                         \
    X(cuMemsetD8Async_ptsz, (CUdeviceptr, unsigned char, size_t, CUstream))                    \
    X(cuMemsetD16_v2, (CUdeviceptr, unsigned short, size_t))                                   \
    X(cuMemsetD16_v2_ptds, (CUdeviceptr, unsigned short, size_t))                              \
    X(cuMemsetD16Async, (CUdeviceptr, unsigned short, size_t, CUstream))                       \
    X(cuMemsetD16Async_ptsz, (CUdeviceptr, unsigned short, size_t, CUstream))                  \
    X(cuMemsetD32_v2, (CUdeviceptr, unsigned int, size_t))                                     \
    X(cuMemsetD32_v2_ptds, (CUdeviceptr, unsigned int, size_t))                                \
    X(cuMemsetD32Async, (CUdeviceptr, unsigned int, size_t, CUstream))                         \
    X(cuMemsetD32Async_ptsz, (CUdeviceptr, unsigned int, size_t, CUstream))                    \
    X(cuMemsetD2D8_v2, (CUdeviceptr, size_t, unsigned char, size_t, size_t))                   \
    X(cuMemsetD2D8_v2_ptds, (CUdeviceptr, size_t, unsigned char, size_t, size_t))              \
    X(cuMemsetD2D8Async, (CUdeviceptr, size_t, unsigned char, size_t, size_t, CUstream))       \
    X(cuMemsetD2D8Async_ptsz, (CUdeviceptr, size_t, unsigned char, size_t, size_t, CUstream))  \
    X(cuMemsetD2D16_v2, (CUdeviceptr, size_t, unsigned short, size_t, size_t))                 \
    X(cuMemsetD2D16_v2_ptds, (CUdeviceptr, size_t, unsigned short, size_t, size_t))            \
    X(cuMemsetD2D16Async, (CUdeviceptr, size_t, unsigned short, size_t, size_t, CUstream))     \
    X(cuMemsetD2D16Async_ptsz, (CUdeviceptr, size_t, unsigned short, size_t, size_t, CUstream)) \
    X(cuMemsetD2D32_v2, (CUdeviceptr, size_t, unsigned int, size_t, size_t))                   \
    X(cuMemsetD2D32_v2_ptds, (CUdeviceptr, size_t, unsigned int, size_t, size_t))              \
    X(cuMemsetD2D32Async, (CUdeviceptr, size_t, unsigned int, size_t, size_t, CUstream))       \
    X(cuMemsetD2D32Async_ptsz, (CUdeviceptr, size_t, unsigned int, size_t, size_t, CUstream))  \
    X(cuMemcpyDtoD_v2, (CUdeviceptr, CUdeviceptr, size_t))                                     \
    X(cuMemcpyDtoD_v2_ptds, (CUdeviceptr, CUdeviceptr, size_t))                                \
    X(cuMemcpyDtoDAsync_v2, (CUdeviceptr, CUdeviceptr, size_t, CUstream))                      \
    X(cuMemcpyDtoDAsync_v2_ptsz, (CUdeviceptr, CUdeviceptr, size_t, CUstream))                 \
    X(cuMemcpy2D_v2, (const CUDA_MEMCPY2D *))                                                  \
    X(cuMemcpy2D_v2_ptds, (const CUDA_MEMCPY2D *))                                             \
    X(cuMemcpy2DUnaligned_v2, (const CUDA_MEMCPY2D *))                                         \
    X(cuMemcpy2DUnaligned_v2_ptds, (const CUDA_MEMCPY2D *))                                    \
    X(cuMemcpy3D_v2, (const CUDA_MEMCPY3D *))                                                  \
    X(cuMemcpy3D_v2_ptds, (const CUDA_MEMCPY3D *))                                             \
    X(cuMemcpy2DAsync_v2, (const CUDA_MEMCPY2D *, CUstream))                                   \
    X(cuMemcpy2DAsync_v2_ptsz, (const CUDA_MEMCPY2D *, CUstream))                              \
    X(cuMemcpy3DAsync_v2, (const CUDA_MEMCPY3D *, CUstream))                                   \
    X(cuMemcpy3DAsync_v2_ptsz, (const CUDA_MEMCPY3D *, CUstream))                              \
    X(cuMemcpyPeer, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t))                  \
    X(cuMemcpyPeer_ptds, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t))             \
    X(cuMemcpyPeerAsync, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t, CUstream))   \
    X(cuMemcpyPeerAsync_ptsz, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t, CUstream)) \
    X(cuMemcpy3DPeer, (const CUDA_MEMCPY3D_PEER *))                                            \
    X(cuMemcpy3DPeer_ptds, (const CUDA_MEMCPY3D_PEER *))                                       \
    X(cuMemcpy3DPeerAsync, (const CUDA_MEMCPY3D_PEER *, CUstream))                             \
    X(cuMemcpy3DPeerAsync_ptsz, (const CUDA_MEMCPY3D_PEER *, CUstream))                        \
    X(cuStreamWriteValue32_v2, (CUstream, CUdeviceptr, cuuint32_t, unsigned int))              \
    X(cuStreamWriteValue32_v2_ptsz, (CUstream, CUdeviceptr, cuuint32_t, unsigned int))         \
    X(cuStreamWriteValue64_v2, (CUstream, CUdeviceptr, cuuint64_t, unsigned int))              \
    X(cuStreamWriteValue64_v2_ptsz, (CUstream, CUdeviceptr, cuuint64_t, unsigned int))         \
    X(cuStreamBatchMemOp_v2, (CUstream, unsigned int, CUstreamBatchMemOpParams *, unsigned int)) \
    X(cuStreamBatchMemOp_v2_ptsz,                                                                  \
      (CUstream, unsigned int, CUstreamBatchMemOpParams *, unsigned int))                          \
    X(cuLaunchCooperativeKernel, (CUfunction, unsigned int, unsigned int, unsigned int,         \
                                  unsigned int, unsigned int, unsigned int, unsigned int,         \
                                  CUstream, void **))                                             \
    X(cuLaunchCooperativeKernel_ptsz, (CUfunction, unsigned int, unsigned int, unsigned int,    \
                                       unsigned int, unsigned int, unsigned int, unsigned int,    \
                                       CUstream, void **))

#define RP_DECLARE_REAL(name, params) CUresult (*name) params;
struct rp_real {
    RP_REAL_FUNCTIONS(RP_DECLARE_REAL)
};
#undef RP_DECLARE_REAL

extern struct rp_real rp_real;

/* Loads the real driver once; 0 when it is there. */
int rp_load_real(void);
/* "CUDA_ERROR_..." for logs (util.c). */
const char *rp_error_name(CUresult rc);
/* Makes room for need items of item bytes in *array (capacity *cap, doubled as needed); 0, or
 * -1 when out of memory (the array is left as it was) (util.c). */
int rp_grow(void **array, size_t *cap, size_t need, size_t item);
/* All n bytes at offset, through EINTR and short transfers; 0, or -1 with errno set (EBADMSG
 * when the file ends first) (util.c). */
int rp_pread_full(int fd, void *buf, size_t n, off_t offset);
int rp_pwrite_full(int fd, const void *buf, size_t n, off_t offset);

/* ---- configuration (config.c) ---- */

struct rp_config {
    int streams;
    size_t chunk_bytes;
    int threads;
    int pinned;
    size_t min_intercept_bytes;
    int offload;   /* serve allocations from VMM, run the control socket */
    int intercept; /* route big pageable copies through the engine */
    int release_caches;          /* run the program's release hooks before OFFLOAD */
    unsigned release_timeout_ms; /* and wait for them at most this long */
    int debug;
};

extern struct rp_config rp_config;
void rp_config_load(void);

void rp_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t rp_now_ns(void); /* CLOCK_MONOTONIC */
#define RP_DEBUG(...)                \
    do {                             \
        if (rp_config.debug)         \
            rp_log(__VA_ARGS__);     \
    } while (0)

/* ---- engine (engine.c) ---- */

enum rp_direction { RP_H2D, RP_D2H };

/* One transfer: device memory <-> host memory (host != NULL) or a file (fd, file_offset). */
struct rp_transfer {
    enum rp_direction direction;
    CUdeviceptr device;
    void *host;
    int fd;
    off_t file_offset;
    size_t bytes;
    CUstream after;      /* H2D/D2H start after the work queued on this stream so far */
    int order_after;     /* whether `after` is meaningful (0 = no ordering needed) */
    uint32_t *checksums; /* per checksum_bytes: written for D2H, verified for H2D; NULL = none */
    size_t checksum_bytes; /* what each checksum covers; 0: one per copied chunk */
    /* Instead of fd: the bytes are chunk files of chunk_file_bytes in this folder, named by
     * hashes[k] (RP_HASH_BYTES each); each RP_PIECE_BYTES piece is checked by its crc32c in
     * piece_crcs[] (version 4) or its BLAKE3-256 in pieces[] (version 3; RP_HASH_BYTES each).
     * D2H: one engine chunk per chunk file (chunk_file_bytes is the engine's), names computed,
     * and whichever of piece_crcs / pieces is not NULL. H2D: any whole-MiB engine chunk, read
     * from the files it spans, every piece checked before it is sent. */
    struct rp_chunk_store *chunks;
    uint8_t *hashes;
    uint8_t *pieces;
    uint32_t *piece_crcs;
    size_t chunk_file_bytes;
    /* D2H to chunks: engine chunks wholly inside these ranges (the program's addresses,
     * free_base being that of device) are not copied but saved as zeros; free_bytes counts them
     * (added to atomically). NULL: none. */
    const struct rp_free_ranges *free;
    uint64_t free_base;
    uint64_t free_bytes;
};

/* Every setting a transfer uses, given per call (restoreprof passes its resolved settings; a
 * program under the library gets rp_engine_default_params(): its environment's). Python mirrors
 * this struct in restoreprof/optimizer/engine.py (EngineParams). */
struct rp_engine_params {
    int streams;
    int threads;
    size_t chunk_bytes; /* rounded up to a multiple of the transfer's checksum_bytes */
    int pinned;         /* stage through pinned (1) or pageable (0) buffers */
};

struct rp_engine_params rp_engine_default_params(void);
/* Runs the transfer on the caller's current context; blocks until every byte has landed.
 * Returns CUDA_SUCCESS, the first driver error, or CUDA_ERROR_INVALID_VALUE on I/O or checksum
 * failure (with a log line). Returns CUDA_ERROR_NOT_READY when another transfer holds the
 * engine and `wait` is 0, so a caller can fall back instead of queueing. */
CUresult rp_engine_run(struct rp_transfer *t, struct rp_engine_params p, int wait);
/* The same for n transfers in one direction, their chunks shared out across the threads (many
 * small allocations go as fast as one large); the first error of any. */
CUresult rp_engine_run_batch(struct rp_transfer *t, size_t n, struct rp_engine_params p, int wait);
/* Frees the staging pool (it is allocated again on next use). */
void rp_engine_release(void);
/* Nanoseconds spent setting up staging pools so far (pinning, streams, events). */
uint64_t rp_engine_staging_setup_ns(void);
size_t rp_chunk_count(size_t bytes, size_t chunk);
/* crc32c.c */
uint32_t rp_crc32c(uint32_t crc, const void *data, size_t n);

/* ---- hot snapshots (hot.c): pinned host memory -> device, every chunk checked ---- */

struct rp_hot_segment {
    CUdeviceptr device;
    const void *host;          /* pinned */
    size_t bytes;
    const uint32_t *checksums; /* one crc32c per chunk_bytes (versions 1, 2, 4); NULL = none */
    const uint8_t *pieces;     /* or (version 3) one BLAKE3-256 per chunk_bytes (RP_PIECE_BYTES) */
};

/* A hot snapshot, as the warm pool holds it: one pinned buffer per record, in table order
 * (optimizer/hot_snapshots.py mirrors it). */
struct rp_hot_buffer {
    uint64_t address; /* the record's device address */
    uint64_t bytes;
    void *host;       /* pinned (PORTABLE); NULL for an empty record */
    int32_t device;   /* whose primary context this buffer holds a reference to; -1: none */
    int32_t pad;
};

/* rp_hot_intake's answer when its cancel token was set (a restore came first): nothing held. */
#define RP_HOT_CANCELLED (-2L)

/* Copies every segment on the caller's current context (S streams, T threads checking the
 * chunks as they queue them); blocks until all has landed. CUDA_ERROR_INVALID_IMAGE, with err
 * set, when a chunk no longer matches its checksum. */
CUresult rp_hot_upload(const struct rp_hot_segment *segments, long count, size_t chunk_bytes,
                       struct rp_engine_params p, char *err, size_t errlen);

/* ---- VMM allocations, registry and gate (vmm.c) ---- */

struct rp_pool;

struct rp_allocation {
    CUdeviceptr address;
    size_t size;     /* what the application asked for */
    size_t reserved; /* rounded up to the granularity */
    CUdevice device;
    CUcontext context;
    CUmemGenericAllocationHandle handle; /* 0 while offloaded */
    struct rp_pool *pool; /* stream-ordered (mempool.c): its pool; NULL for cuMemAlloc */
};

/* Calls fn for each live allocation, under the registry lock. Stops at the first nonzero. */
int rp_registry_each(int (*fn)(struct rp_allocation *, void *), void *arg);
void rp_registry_totals(size_t *count, size_t *bytes);
CUresult rp_vmm_unmap(struct rp_allocation *a);
CUresult rp_vmm_map(struct rp_allocation *a);
/* Physical memory on device (exportable: as a POSIX fd, for another process to map). */
CUresult rp_vmm_create(CUdevice device, size_t size, int exportable,
                       CUmemGenericAllocationHandle *handle);
/* A new reserved and mapped allocation of size bytes on the current context (not registered). */
CUresult rp_vmm_new(size_t size, struct rp_allocation *a);
/* Unmaps, releases and frees the address range of an allocation not in the registry. */
CUresult rp_vmm_destroy(struct rp_allocation *a);
int rp_registry_add(const struct rp_allocation *a);
/* Removes the allocation at address into *out; 0 when found. */
int rp_registry_take(CUdeviceptr address, struct rp_allocation *out);
/* Maps handle at address and allows read/write from device; nothing stays mapped on failure. */
CUresult rp_vmm_map_handle(CUdeviceptr address, size_t size, CUdevice device,
                           CUmemGenericAllocationHandle handle);

/* The gate: intercepted application calls wait while GPU memory is offloaded. */
void rp_gate_enter(void);
void rp_gate_leave(void);
void rp_gate_close(void); /* waits for calls inside the gate to leave */
void rp_gate_open(void);
int rp_gate_is_closed(void);
/* How many intercepted calls have passed the offload gate so far. */
uint64_t rp_gate_passes(void);
/* The layout gate: calls that free or unmap GPU memory wait while PRECOPY reads it. Entered
 * after the offload gate, left before it. */
void rp_layout_enter(void);
void rp_layout_leave(void);
void rp_layout_close(void);
void rp_layout_open(void);

/* ---- content-addressed chunks (chunks.c) ----
 *
 * A snapshot's bytes are chunks, each named by a BLAKE3-256 hash (of its MiB pieces' hashes),
 * in a chunk folder: <folder>/<first 2 hex digits>/<64 hex digits>. The folder is a checkpoint's own
 * (DIR/gpu-<pid>.chunks), a store shared by checkpoints (restoreprof.store: an identical chunk is
 * kept once, and a second checkpoint writes only the chunks that changed), or an export. Chunks
 * are written under a temporary name and renamed, so a name always holds a complete chunk. A
 * later source (hot snapshots in pinned memory, issue 14) serves the same names from memory. */

#define RP_HASH_BYTES 32
/* What one integrity hash covers: chunk files are whole MiB multiples, so a restore copies in
 * any whole-MiB chunk of its own (the tuned one) and checks each piece before it is sent. */
#define RP_PIECE_BYTES RP_MIB

struct rp_chunk_store {
    int dirfd;    /* the folder (O_DIRECTORY); -1 when closed */
    int sync;     /* fsync each chunk before its rename, and the folders at rp_chunks_sync */
    _Atomic uint64_t written_bytes; /* chunk bytes written by this handle */
    _Atomic uint64_t reused_bytes;  /* chunk bytes found already there (not written again) */
    _Atomic uint8_t touched[256];   /* fan-out folders written to, for rp_chunks_sync */
};

/* BLAKE3-256 of data (the vendored library, blake3/). */
void rp_hash(const void *data, size_t n, uint8_t out[RP_HASH_BYTES]);
void rp_hash_hex(const uint8_t hash[RP_HASH_BYTES], char out[2 * RP_HASH_BYTES + 1]);
/* Whether n bytes match their piece check: *crc (crc32c: versions 1, 2, 4) when crc is not NULL,
 * else hash (BLAKE3-256: version 3). */
int rp_piece_matches(const void *data, size_t n, const uint32_t *crc, const uint8_t *hash);
/* Opens (create: makes) the folder at path; 0, or -1 with err set. */
int rp_chunks_open(struct rp_chunk_store *s, const char *path, int create, int sync, char *err,
                   size_t errlen);
void rp_chunks_close(struct rp_chunk_store *s);
/* Stores n bytes under hash unless a complete chunk of that name is there; 0, or -1 (errno). */
int rp_chunks_put(struct rp_chunk_store *s, const uint8_t hash[RP_HASH_BYTES], const void *data,
                  size_t n);
/* Reads len bytes at offset of the chunk named hash, which must be exactly size bytes long,
 * into buf; 0, or -1 (errno; ENOENT: missing, EBADMSG: another size or cut short). The caller
 * checks the contents against the table's piece hashes. */
int rp_chunks_read(struct rp_chunk_store *s, const uint8_t hash[RP_HASH_BYTES], size_t size,
                   void *buf, size_t len, size_t offset);
/* A chunk's name: the BLAKE3-256 of the BLAKE3-256 of each RP_PIECE_BYTES piece of it, in
 * order. Unless NULL, the piece hashes go to pieces (n / RP_PIECE_BYTES rounded up, 32 bytes
 * each) and each piece's crc32c to crcs (as many, 4 bytes each). */
void rp_chunk_name(const void *data, size_t n, uint8_t *pieces, uint32_t *crcs,
                   uint8_t name[RP_HASH_BYTES]);
/* With sync: fsync every fan-out folder written to, then the folder; 0, or -1 (errno). */
int rp_chunks_sync(struct rp_chunk_store *s);

/* ---- snapshot tables (snapshot.c; control.c writes and reads them, preload.c reads them) ----
 *
 * Versions (one magic; the version field tells them apart; all four are read):
 *   1  allocations only; each allocation's bytes inside the file, crc32c per piece
 *   2  version 1 plus record kinds (the application's physical allocations: handle,
 *      properties, mappings); the bytes still inside the file, crc32c per piece
 *   3  version 2's records and mappings, the bytes as chunks in a content-addressed folder,
 *      named by BLAKE3 (chunks.c), each piece checked by BLAKE3
 *   4  (written now) version 3 with each piece checked by crc32c instead: the chunks are named
 *      exactly as in version 3 (the same store, the same dedup), but a restore recomputes a
 *      crc32c per MiB (the CPU's instruction: 10.4 GB/s a core on 1 MiB pieces on the CPU
 *      machine, against 3.9 for BLAKE3); BLAKE3 in the copy path held the H200's page-cache
 *      load to 35.8 GB/s, and a hot snapshot's to 46.9 of the link's 55.
 *      Version 2 is still written for OFFLOAD to a descriptor (a container's process reaches no
 *      chunk folder)
 *
 * Versions 3 and 4's file is a table: header, the chunk folder's path (dir_bytes, NUL-padded
 * to 8; relative to the table's own folder unless absolute), then per record: the record, its
 * n_mappings mappings, the names of its n_chunks chunks (chunk_bytes each, the last one
 * shorter; rp_chunk_name), then per piece (piece_bytes each, the last one shorter) its
 * BLAKE3-256 (version 3) or its crc32c (version 4: uint32, the array padded to 8 bytes). The
 * table is small: the checkpoint's manifest hashes it (SHA-256), and it names every chunk by a
 * strong hash, so nothing that is not listed can be loaded; a piece altered after the
 * checkpoint (a damaged disk, a stray write) fails its check, refusing the load.
 *
 * Versions 1 and 2 have a shorter header (no dir_bytes, written_bytes, piece_bytes), and after
 * each record (and its mappings) n_chunks crc32c values (padded to 8 bytes); the bytes follow the
 * table at each record's data_offset. rp_snapshot_table reads any version into one layout in
 * memory: this header (dir_bytes 0 and version 2 for versions 1 and 2), then the records as in
 * the file's version. */

#define RP_SNAP_MAGIC "RPSNAP1"
#define RP_SNAP_VERSION 4 /* written; 1, 2 and 3 are read */
#define RP_SNAP_CRC32C 1  /* checksum_kind of versions 1 and 2 */
#define RP_SNAP_BLAKE3 2  /* checksum_kind of version 3: chunks named and checked by BLAKE3-256 */
#define RP_SNAP_BLAKE3_CRC32C 3 /* version 4's: chunks named by BLAKE3, pieces checked by crc32c */
#define RP_SNAP_ALIGN 4096

/* What a record holds. */
enum rp_snap_kind {
    RP_SNAP_ALLOCATION = 0, /* served by the library (cuMemAlloc, stream-ordered): an address */
    RP_SNAP_PHYSICAL = 1,   /* the application's physical allocation (cuMemCreate): a handle */
};

struct snap_header {
    char magic[8];
    uint32_t version;
    uint32_t checksum_kind;
    uint64_t chunk_bytes; /* versions 3, 4: each chunk's (the last of a record's shorter); 1, 2:
                           * what each crc32c covers */
    uint64_t count;
    uint64_t total_bytes;
    uint64_t table_bytes;   /* header + folder path + records + hashes */
    /* versions 3, 4 (versions 1 and 2 end here): */
    uint64_t dir_bytes;     /* the chunk folder's path, with its padding */
    uint64_t written_bytes; /* chunk bytes this write added (the rest were in the folder) */
    uint64_t piece_bytes;   /* RP_PIECE_BYTES */
};

/* A physical allocation's properties (CUmemAllocationProp without the Win32 pointer). */
struct snap_prop {
    int32_t type;
    int32_t location_type;
    int32_t location_id;
    uint32_t handle_types; /* requestedHandleTypes */
    uint8_t compression;
    uint8_t rdma; /* gpuDirectRDMACapable */
    uint16_t usage;
    uint32_t padding;
};

/* Where a physical allocation was mapped: [va, va + size) shows [offset, offset + size). */
struct snap_mapping {
    uint64_t va;
    uint64_t size;
    uint64_t offset;
};

struct snap_record {
    uint64_t address; /* the allocation's; a physical one: its first mapping's, or 0 */
    uint64_t size;    /* bytes saved */
    uint64_t reserved;
    uint64_t data_offset; /* unused since version 2 (0): the bytes are chunks */
    int32_t device;
    uint32_t n_chunks;
    /* version 2 and later: */
    uint32_t kind; /* enum rp_snap_kind */
    uint32_t n_mappings;
    uint64_t handle; /* a physical allocation: the handle value the application holds */
    struct snap_prop prop;
    /* followed by n_mappings struct snap_mapping, then (versions 3, 4) the n_chunks chunk
     * names (RP_HASH_BYTES each) and per piece its BLAKE3 (version 3, RP_HASH_BYTES) or its
     * crc32c (version 4, uint32_t, padded to 8 bytes), or (versions 1, 2) n_chunks uint32_t
     * crc32c (padded to 8 bytes) */
};

/* What the writer saves: a record, and where its bytes are read from now. */
struct rp_snap_item {
    struct snap_record record; /* address, size, reserved, device, kind, handle, prop */
    CUdeviceptr source;        /* device address of the bytes (the allocation, or a window) */
    CUcontext context;
    const struct snap_mapping *mappings;
};

/* The table of the snapshot open on fd (any version, in the layout above), malloc'd; NULL and a
 * message in err when it is not a snapshot, of a newer version, or is cut short or damaged. */
char *rp_snapshot_table(int fd, struct snap_header *h, char *err, size_t errlen);
/* The first record of a table, and the record after r in it. */
const struct snap_record *rp_snapshot_first(const char *table);
const struct snap_record *rp_snapshot_next(const char *table, const struct snap_record *r);
const struct snap_mapping *rp_snapshot_mappings(const struct snap_record *r);
/* A record's checks: its crc32c values (versions 1, 2: per chunk_bytes; version 4: per piece;
 * else NULL), its piece hashes (version 3; else NULL), and the bytes each one covers. */
const uint32_t *rp_snapshot_sums(const char *table, const struct snap_record *r);
const uint8_t *rp_snapshot_pieces(const char *table, const struct snap_record *r);
size_t rp_snapshot_check_bytes(const char *table);
/* A record's chunk names (versions 3, 4; else NULL). */
const uint8_t *rp_snapshot_names(const char *table, const struct snap_record *r);
/* What its pieces are checked by, for messages: "crc32c" or "BLAKE3". */
const char *rp_snapshot_check_name(const char *table);
/* Opens the chunk folder a table names, for reading; table_path locates a relative one. A table
 * of version 1 or 2 names none: s is left closed (dirfd -1) and 0 returned. */
int rp_snapshot_open_chunks(const char *table, const char *table_path, struct rp_chunk_store *s,
                            char *err, size_t errlen);
/* The source half of an H2D transfer of record r's bytes: the chunk folder chunks (3, 4),
 * or the snapshot file fd at the record's offset (versions 1, 2), with the checks each carries. */
void rp_snapshot_source(const char *table, const struct snap_record *r, int fd,
                        struct rp_chunk_store *chunks, struct rp_transfer *t);
/* Writes every item's bytes as chunks into the folder chunk_dir (relative to the table path's
 * folder unless absolute; made if missing), through the engine on each item's context (one
 * batch per context), then the table (version 4) to path (a temporary name, renamed; path NULL:
 * no table, and chunk_dir must be absolute: PRECOPY). Chunks of allocations wholly inside
 * free_ranges (NULL: none) are saved as zeros, not copied. With
 * sync, chunks, folders and the table are durable before it returns. Leaves the memory mapped.
 * 0, or -1 with err set; *total: logical bytes, *written: bytes the folder did not hold yet,
 * *free_bytes: bytes saved as zeros because the program had freed them. */
int rp_snapshot_write(const char *path, const char *chunk_dir, int sync,
                      const struct rp_snap_item *items, size_t count,
                      const struct rp_free_ranges *free_ranges, struct rp_engine_params p,
                      uint64_t *total, uint64_t *written, uint64_t *free_bytes, char *err,
                      size_t errlen);
/* Writes a version 2 snapshot (the bytes inside it, crc32c per MiB) to fd: for OFFLOAD to a
 * descriptor, whose process cannot reach a chunk folder by path. 0, or -1 with err set. */
int rp_snapshot_write_fd(int fd, const struct rp_snap_item *items, size_t count,
                         struct rp_engine_params p, uint64_t *total, char *err, size_t errlen);

/* ---- the application's VMM memory (app_vmm.c) ---- */

/* 0, or -1 with the reason in err when some of it cannot be checkpointed (exported, imported,
 * mapped into an array): nothing is touched then. */
int rp_app_vmm_refusal(char *err, size_t errlen);
/* Appends a snapshot item per physical allocation to offload, each readable through a window
 * (its own mapping, or one made for the copy); -1 when out of memory or a window failed. */
int rp_app_vmm_items(struct rp_snap_item **items, size_t *count, size_t *capacity, char *err,
                     size_t errlen);
/* Unmaps the windows rp_app_vmm_items made. */
void rp_app_vmm_close_windows(void);
/* Unmaps every offloaded allocation's mappings and releases its memory; 0 or -1 with err. */
int rp_app_vmm_release(char *err, size_t errlen);
/* RELOAD, first half: re-creates the physical allocation of record r (same properties), maps
 * it where it was, with the same access, and gives where its bytes go (on context). */
CUresult rp_app_vmm_prepare(const struct snap_record *r, CUdeviceptr *window, CUcontext *context,
                            uint64_t *map_ns);
/* Second half, for every prepared one: loaded (back in use), or not (offloaded again). */
void rp_app_vmm_finish(int loaded);
/* Maps memory imported from fd (preloaded by restoreprof) as the application's handle;
 * *bytes is its size. 0, or -1 with err set. */
int rp_app_vmm_adopt(uint64_t handle, const char *uuid, int fd, size_t *bytes, char *err,
                     size_t errlen);
/* Physical allocations offloaded and not back yet; all tracked and their bytes. */
size_t rp_app_vmm_offloaded(void);
void rp_app_vmm_totals(size_t *count, size_t *bytes);
/* "0123..." (32 hex digits) for device's UUID; 0 when known. */
int rp_device_uuid_hex(CUdevice device, char out[33]);

/* ---- stream-ordered allocations (mempool.c) ---- */

/* Waits for pending frees and releases every cached block (before OFFLOAD: cached memory is
 * not the application's data); returns the bytes released. */
size_t rp_mempool_release_cached(void);
/* Called by cuMemFree for a stream-ordered allocation (taken from the registry already). */
CUresult rp_mempool_free_now(struct rp_allocation *a);
/* After the allocation's memory is mapped again (RELOAD, ADOPT): the pool's extra access. */
CUresult rp_mempool_after_map(const struct rp_allocation *a);

/* ---- control socket (control.c) ---- */

void rp_control_start(void);

/* ---- release hooks (release.c) ---- */

/* A program's function that frees memory it holds but does not use; nonzero means it failed. */
typedef int (*rp_release_hook)(void);
enum rp_release_outcome {
    RP_RELEASE_OFF,     /* switched off (release_caches: --no-release-caches) */
    RP_RELEASE_NONE,    /* no hook registered (not Python, or started without the start-up hook) */
    RP_RELEASE_OK,
    RP_RELEASE_FAILED,  /* a hook returned nonzero */
    RP_RELEASE_TIMEOUT, /* not back within the timeout: offloaded without waiting for it */
    RP_RELEASE_BUSY,    /* an earlier run has not returned yet */
    RP_RELEASE_ERROR,   /* no thread to run them on */
};
/* Runs every registered hook (when enabled) on a thread of its own; waits at most timeout_ms. */
enum rp_release_outcome rp_release_run(int enabled, unsigned timeout_ms, uint64_t *ns);
const char *rp_release_outcome_name(enum rp_release_outcome outcome);

/* Blocks a hook reported free inside allocations the program keeps (release.c): [start, end)
 * pairs, sorted and merged. */
struct rp_free_ranges {
    uint64_t *pairs;
    size_t n;
};
enum rp_free_state {
    RP_FREE_NONE,  /* no hook reported any */
    RP_FREE_USED,  /* reported, and usable */
    RP_FREE_STALE, /* reported, but a call passed the gate since: not used */
    RP_FREE_ERROR, /* out of memory: not used */
};
/* What this run of the hooks reported (RP_FREE_USED: a copy in *out, for rp_free_ranges_done).
 * check: only when no call passed the offload gate since the hook read its allocator (the gate
 * must be closed); 0: as a hint (PRECOPY, whose result OFFLOAD checks again). */
enum rp_free_state rp_free_ranges_take(int check, struct rp_free_ranges *out);
void rp_free_ranges_done(struct rp_free_ranges *ranges);
void rp_free_ranges_clear(void);
const char *rp_free_state_name(enum rp_free_state state);
/* Whether [address, address + n) lies wholly inside one range. */
int rp_free_ranges_cover(const struct rp_free_ranges *ranges, uint64_t address, size_t n);

/* ---- coverage per allocation kind (coverage.c) ---- */

enum rp_kind {
    RP_KIND_MEMALLOC,       /* cuMemAlloc served from VMM (vmm.c) */
    RP_KIND_APP_VMM,        /* the application's own cuMemCreate / cuMemMap memory */
    RP_KIND_STREAM_ORDERED, /* cuMemAllocAsync and memory pools */
    RP_KIND_COUNT
};
struct rp_kind_totals {
    size_t count, bytes; /* live allocations, and their reserved bytes */
};
/* What the library serves now, per kind. */
void rp_coverage(struct rp_kind_totals totals[RP_KIND_COUNT]);
/* All kinds' bytes together. */
size_t rp_coverage_bytes(void);
/* "kind.cuMemAlloc=<count>:<bytes> kind.vmm=... kind.async=..."; 0, or -1 when cut short. */
int rp_coverage_format(char *out, size_t len);

/* ---- counters for STATUS ---- */

struct rp_stats {
    unsigned long intercepted;
    unsigned long intercepted_bytes;
    unsigned long fallbacks;
};
extern struct rp_stats rp_stats;

#endif
