/*
 * Preloading a snapshot in restoreprof's own process, while CRIU restores the application.
 *
 * RELOAD streams the snapshot back inside the application, so it can only start once CRIU and
 * the driver's restore are done. Preloading moves that transfer earlier: restoreprof creates the
 * physical memory itself (exportable as a POSIX file descriptor), fills it from the snapshot's
 * chunks with the engine (every MiB piece's BLAKE3-256 checked as it is copied; a version 1 or 2
 * snapshot: from the file, every piece's crc32c), and, once the application is back, hands the
 * descriptors over its control socket (ADOPT, control.c). The application maps them at the
 * addresses its allocations kept reserved: its pointers stay valid, and the GPU memory
 * transfer has overlapped CRIU instead of following the driver.
 *
 * An application's own physical allocation (cuMemCreate, app_vmm.c) is preloaded the same way:
 * the memory made here has its properties plus the POSIX descriptor type (the application's may
 * not have been exportable); ADOPT names its handle, and the application maps it where that
 * handle was mapped, presenting it under the same handle value.
 *
 * Loaded by restoreprof with ctypes (nothing interposed, no control channel). The memory
 * outlives this process once adopted: each side holds its own reference.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct rp_preloaded {
    uint64_t address;  /* where the application's allocation is reserved */
    uint64_t size;     /* bytes of data */
    uint64_t reserved; /* bytes of physical memory (the allocation's reservation) */
    int32_t device;    /* ordinal, in this process's numbering */
    int32_t fd;        /* POSIX fd of the physical memory; -1 until exported */
    uint64_t handle;   /* this process's handle; while set, the item holds one reference
                        * to its device's primary context (made current for the copy) */
    uint64_t local;    /* where it is mapped in this process, 0 when not */
    uint8_t uuid[16];  /* of the device, for the application to check against its own */
    uint64_t app_handle; /* the application's handle for a physical allocation; 0: an address */
};

RP_EXPORT void rp_preloaded_release(struct rp_preloaded *items, long count)
{
    for (long i = 0; i < count; i++) {
        struct rp_preloaded *p = &items[i];
        if (p->local) {
            rp_real.cuMemUnmap(p->local, p->reserved);
            rp_real.cuMemAddressFree(p->local, p->reserved);
        }
        if (p->handle) {
            rp_real.cuMemRelease(p->handle);
            CUdevice dev;
            if (rp_real.cuDeviceGet(&dev, p->device) == CUDA_SUCCESS)
                rp_real.cuDevicePrimaryCtxRelease_v2(dev);
        }
        if (p->fd >= 0)
            close(p->fd);
        p->local = p->handle = 0;
        p->fd = -1;
    }
}

/* The record's own properties, made exportable; plain device memory for an allocation (or when
 * the properties cannot be had exportable). */
static CUresult create_exportable(CUdevice dev, const struct snap_record *r, size_t size,
                                  CUmemGenericAllocationHandle *handle)
{
    if (r->kind == RP_SNAP_PHYSICAL) {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof(prop));
        prop.type = r->prop.type;
        prop.location.type = r->prop.location_type;
        prop.location.id = dev;
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        prop.allocFlags.compressionType = r->prop.compression;
        prop.allocFlags.gpuDirectRDMACapable = r->prop.rdma;
        prop.allocFlags.usage = r->prop.usage;
        if (rp_real.cuMemCreate(handle, size, &prop, 0) == CUDA_SUCCESS)
            return CUDA_SUCCESS;
    }
    return rp_vmm_create(dev, size, 1, handle);
}

static CUresult make_exportable(struct rp_preloaded *p, const struct snap_record *r)
{
    CUdevice dev;
    CUcontext ctx;
    CUresult rc = rp_real.cuDeviceGet(&dev, p->device);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuDeviceGetUuid_v2((CUuuid *)p->uuid, dev);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = rp_real.cuCtxSetCurrent(ctx);
    CUmemGenericAllocationHandle handle = 0;
    if (rc == CUDA_SUCCESS)
        rc = create_exportable(dev, r, p->reserved, &handle);
    if (rc != CUDA_SUCCESS) {
        rp_real.cuDevicePrimaryCtxRelease_v2(dev);
        return rc;
    }
    p->handle = handle; /* from here the context reference is the item's (rp_preloaded_release) */
    CUdeviceptr local = 0;
    rc = rp_real.cuMemAddressReserve(&local, p->reserved, 0, 0, 0);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = rp_vmm_map_handle(local, p->reserved, dev, handle);
    if (rc != CUDA_SUCCESS) {
        rp_real.cuMemAddressFree(local, p->reserved);
        return rc;
    }
    p->local = local;
    return CUDA_SUCCESS;
}

/* Fills out[0..count) from the snapshot open on fd (read with pread: its offset is left alone)
 * and returns count, or -1 with err set (and nothing left allocated). params: the caller's
 * settings, used as given (its chunk rounded up to whole MiB pieces, each checked). Each
 * item's fd is the memory, ready for ADOPT. The caller keeps fd. */
RP_EXPORT long rp_snapshot_preload_fd(int fd, const struct rp_engine_params *params,
                                      struct rp_preloaded *out, long max, char *err,
                                      size_t errlen)
{
    if (rp_load_real() || !rp_real.cuMemExportToShareableHandle || !rp_real.cuDeviceGetUuid_v2 ||
        !rp_real.cuDevicePrimaryCtxRelease_v2) {
        snprintf(err, errlen, "the CUDA driver lacks what preloading needs");
        return -1;
    }
    CUresult init = rp_real.cuInit(0); /* may run before this process's own pre-warm */
    if (init != CUDA_SUCCESS) {
        snprintf(err, errlen, "cuInit: %s", rp_error_name(init));
        return -1;
    }
    struct snap_header h;
    struct rp_chunk_store chunks = { .dirfd = -1 };
    char *table = rp_snapshot_table(fd, &h, err, errlen);
    /* A relative chunk folder is beside the table: find the table's path from its fd (which
     * may have come from another process, as the warm pool's does). */
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t got = readlink(link, path, sizeof(path) - 1);
    path[got > 0 ? got : 0] = '\0';
    if (table && (got <= 0 || rp_snapshot_open_chunks(table, path, &chunks, err, errlen) != 0)) {
        if (got <= 0)
            snprintf(err, errlen, "cannot tell where the snapshot table is (%s)", link);
        free(table);
        table = NULL;
    }
    long n = 0;
    CUresult rc = CUDA_SUCCESS;
    if (table && (long)h.count > max) {
        snprintf(err, errlen, "the snapshot holds %llu allocations, more than %ld",
                 (unsigned long long)h.count, max);
        rc = CUDA_ERROR_INVALID_VALUE;
    }
    /* The memory of every record first, then the bytes of all records in one engine batch per
     * device (the chunks of many small allocations shared out across the threads), then the
     * descriptors. */
    const struct snap_record *r = table ? rp_snapshot_first(table) : NULL;
    const struct snap_record **records = table ? calloc(h.count ? h.count : 1, sizeof(*records))
                                               : NULL;
    struct rp_transfer *t = table ? calloc(h.count ? h.count : 1, sizeof(*t)) : NULL;
    if (table && (!records || !t) && rc == CUDA_SUCCESS) {
        snprintf(err, errlen, "out of memory");
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (; table && rc == CUDA_SUCCESS && n < (long)h.count; n++, r = rp_snapshot_next(table, r)) {
        struct rp_preloaded *p = &out[n];
        *p = (struct rp_preloaded){ .address = r->address, .size = r->size,
                                    .reserved = r->reserved, .device = r->device, .fd = -1,
                                    .app_handle = r->kind == RP_SNAP_PHYSICAL ? r->handle : 0 };
        records[n] = r;
        rc = make_exportable(p, r);
        if (rc != CUDA_SUCCESS)
            snprintf(err, errlen, "preloading %#llx (%llu bytes): %s",
                     (unsigned long long)r->address, (unsigned long long)r->size,
                     rp_error_name(rc));
    }
    for (long first = 0; rc == CUDA_SUCCESS && first < n; first++) {
        if (out[first].fd == -2)
            continue; /* loaded with an earlier device's batch */
        size_t count = 0;
        for (long i = first; i < n; i++) {
            if (out[i].device != out[first].device || out[i].fd == -2)
                continue;
            t[count] = (struct rp_transfer){ .direction = RP_H2D, .device = out[i].local };
            rp_snapshot_source(table, records[i], fd, &chunks, &t[count++]);
            out[i].fd = -2; /* marks "in a batch"; every fd is set below */
        }
        CUdevice dev;
        CUcontext ctx;
        rc = rp_real.cuDeviceGet(&dev, out[first].device);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuDevicePrimaryCtxRetain(&ctx, dev);
        if (rc == CUDA_SUCCESS) {
            rc = rp_real.cuCtxSetCurrent(ctx);
            if (rc == CUDA_SUCCESS)
                rc = rp_engine_run_batch(t, count, *params, 1);
            rp_real.cuDevicePrimaryCtxRelease_v2(dev); /* each item holds its own reference */
        }
        if (rc != CUDA_SUCCESS && (rc != CUDA_ERROR_INVALID_IMAGE || h.version < 3))
            snprintf(err, errlen, "preloading %zu allocations on GPU %d: %s", count,
                     (int)out[first].device,
                     rc != CUDA_ERROR_INVALID_IMAGE ? rp_error_name(rc) : "checksum mismatch");
        else if (rc != CUDA_SUCCESS)
            snprintf(err, errlen, "preloading %zu allocations on GPU %d: a chunk is damaged or "
                     "missing (%s mismatch; nothing of it was used)", count,
                     (int)out[first].device, rp_snapshot_check_name(table));
    }
    for (long i = 0; i < n; i++)
        out[i].fd = -1;
    for (long i = 0; rc == CUDA_SUCCESS && i < n; i++) {
        int exported = -1;
        rc = rp_real.cuMemExportToShareableHandle(&exported, out[i].handle,
                                                  CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        out[i].fd = exported;
        if (rc != CUDA_SUCCESS)
            snprintf(err, errlen, "exporting %#llx: %s", (unsigned long long)out[i].address,
                     rp_error_name(rc));
    }
    rp_chunks_close(&chunks);
    free(records);
    free(t);
    free(table);
    if (!table || rc != CUDA_SUCCESS) {
        rp_preloaded_release(out, n);
        return -1;
    }
    return n;
}

/* rp_snapshot_preload_fd on the snapshot at path. */
RP_EXPORT long rp_snapshot_preload(const char *path, const struct rp_engine_params *params,
                                   struct rp_preloaded *out, long max, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %.200s: %m", path);
        return -1;
    }
    long n = rp_snapshot_preload_fd(fd, params, out, max, err, errlen);
    close(fd);
    return n;
}

/* Exports each item's memory as a POSIX fd (for ADOPT). */
static CUresult export_all(struct rp_preloaded *items, long n)
{
    CUresult rc = CUDA_SUCCESS;
    for (long i = 0; rc == CUDA_SUCCESS && i < n; i++) {
        int exported = -1;
        rc = rp_real.cuMemExportToShareableHandle(&exported, items[i].handle,
                                                  CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        items[i].fd = exported;
    }
    return rc;
}

/* Copies every record whose item is on device `device` from its hot buffer, on that device's
 * primary context (the items hold a reference to it), in one rp_hot_upload. */
static CUresult upload_device(int device, const char *table, const struct snap_header *h,
                              const struct rp_hot_buffer *hot, struct rp_preloaded *items,
                              struct rp_hot_segment *segments, struct rp_engine_params p,
                              char *err, size_t errlen)
{
    const struct snap_record *r = rp_snapshot_first(table);
    long n = 0;
    CUcontext ctx = NULL;
    for (uint64_t i = 0; i < h->count; i++, r = rp_snapshot_next(table, r))
        if (items[i].device == device && r->size)
            segments[n++] = (struct rp_hot_segment){ items[i].local, hot[i].host, r->size,
                                                     rp_snapshot_sums(table, r),
                                                     rp_snapshot_pieces(table, r) };
    CUdevice dev;
    CUresult rc = rp_real.cuDeviceGet(&dev, device);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = rp_real.cuCtxSetCurrent(ctx);
    if (rc == CUDA_SUCCESS && n)
        rc = rp_hot_upload(segments, n, rp_snapshot_check_bytes(table), p, err, errlen);
    rp_real.cuDevicePrimaryCtxRelease_v2(dev);
    return rc;
}

/* rp_snapshot_preload_fd, with the bytes from a hot copy (hot.c) instead of the file: table is
 * the one the hot copy was checked against when taken in (the caller has checked that the
 * snapshot asked for still has it), hot[0..count) its buffers. Each chunk is checked again as
 * it is sent. Returns count, or -1 with err set and nothing left allocated. phase_ns[0..3):
 * nanoseconds spent making the GPU memory, copying into it, exporting it (where it went). */
RP_EXPORT long rp_snapshot_preload_hot(const char *table, long table_len,
                                       const struct rp_hot_buffer *hot, long count,
                                       const struct rp_engine_params *params,
                                       struct rp_preloaded *out, long max, char *err,
                                       size_t errlen, uint64_t *phase_ns)
{
    uint64_t t0 = rp_now_ns();
    if (rp_load_real() || !rp_real.cuMemExportToShareableHandle || !rp_real.cuDeviceGetUuid_v2 ||
        rp_real.cuInit(0) != CUDA_SUCCESS) {
        snprintf(err, errlen, "the CUDA driver lacks what preloading needs");
        return -1;
    }
    const struct snap_header *h = (const struct snap_header *)table;
    if (table_len < (long)sizeof(*h) || (long)h->table_bytes != table_len ||
        (long)h->count != count || count > max) {
        snprintf(err, errlen, "the hot copy does not match its table");
        return -1;
    }
    struct rp_hot_segment *segments = calloc(count ? count : 1, sizeof(*segments));
    if (!segments) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const struct snap_record *r = rp_snapshot_first(table);
    long n = 0;
    CUresult rc = CUDA_SUCCESS;
    for (; rc == CUDA_SUCCESS && n < count; n++, r = rp_snapshot_next(table, r)) {
        out[n] = (struct rp_preloaded){ .address = r->address, .size = r->size,
                                        .reserved = r->reserved, .device = r->device, .fd = -1,
                                        .app_handle = r->kind == RP_SNAP_PHYSICAL ? r->handle
                                                                                  : 0 };
        rc = hot[n].bytes == r->size && hot[n].address == r->address && (hot[n].host || !r->size)
                 ? make_exportable(&out[n], r)
                 : CUDA_ERROR_INVALID_VALUE;
    }
    uint64_t t1 = rp_now_ns();
    /* one upload per device, each on its own context, its records together */
    for (long i = 0; rc == CUDA_SUCCESS && i < count; i++) {
        int seen = 0;
        for (long k = 0; k < i; k++)
            seen |= out[k].device == out[i].device;
        if (!seen)
            rc = upload_device(out[i].device, table, h, hot, out, segments, *params, err, errlen);
    }
    uint64_t t2 = rp_now_ns();
    if (rc == CUDA_SUCCESS)
        rc = export_all(out, count);
    phase_ns[0] = t1 - t0;
    phase_ns[1] = t2 - t1;
    phase_ns[2] = rp_now_ns() - t2;
    free(segments);
    if (rc != CUDA_SUCCESS) {
        if (!err[0])
            snprintf(err, errlen, "preloading from the hot copy: %s", rp_error_name(rc));
        rp_preloaded_release(out, n);
        return -1;
    }
    return count;
}
