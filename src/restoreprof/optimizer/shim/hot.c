/*
 * Hot snapshots: a snapshot's bytes held in pinned host memory by the warm pool, so that a
 * restore moves them to the GPU by DMA straight from there, at the link's rate: no read, no
 * memcpy into staging (the page-cache path costs a memcpy per byte, 10.6 GB/s per thread on the
 * H200, and the staging round trip).
 *
 * A hot copy is a list of verified chunks: for each of the snapshot's records, one pinned buffer
 * whose every piece matched the table when it was taken in (rp_hot_intake): version 4's crc32c
 * or version 3's BLAKE3 per MiB, read from the chunk files; versions 1 and 2's crc32c, read from
 * the file. Nothing is
 * kept unless every chunk passed. An intake gives way to a restore: the pool sets its cancel
 * token, and the intake stops between records' pinning and between pieces, frees what it pinned
 * and returns RP_HOT_CANCELLED (pinning holds the driver's locks, and reading competes for
 * memory bandwidth: a restore under an intake ran at a quarter of its speed on the H200). rp_hot_upload checks each chunk again as it sends it (the
 * pinned copy lives for hours; a stray write to it must not reach a GPU unnoticed), then queues
 * the DMA: T threads take spans of chunks, check them, and issue each span's copy on one of S
 * streams, so the checks run under the copies already queued.
 *
 * Loaded by restoreprof with ctypes (the warm pool, optimizer/hot_snapshots.py); nothing here
 * runs in an application.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOT_MAX_STREAMS 32
#define HOT_MAX_THREADS 128
/* One DMA per span: large enough that the per-copy cost (about 5 us) is noise at 55 GB/s,
 * small enough that 16 threads keep every stream fed from the first millisecond. */
#define HOT_SPAN_BYTES (32 * RP_MIB)

/* ---- the table, for the pool's identity check ---- */

/* Copies the table (header, records, checksums) of the snapshot open on fd into out when it
 * fits in max bytes; returns its length (call again with a larger buffer when it exceeds max),
 * or -1 with err set. */
RP_EXPORT long rp_hot_table(int fd, char *out, long max, char *err, size_t errlen)
{
    struct snap_header h;
    char *table = rp_snapshot_table(fd, &h, err, errlen);
    if (!table)
        return -1;
    long n = (long)h.table_bytes;
    if (n <= max)
        memcpy(out, table, (size_t)n);
    free(table);
    return n;
}

/* ---- intake: file -> pinned buffers, every chunk checked ---- */


struct intake_item {
    const struct snap_record *record;
    void *host;
    size_t offset;
    size_t bytes;
    uint32_t expected;     /* versions 1, 2, 4: the crc32c */
    const uint8_t *piece;  /* version 3: the BLAKE3-256 instead */
    const uint8_t *hashes; /* versions 3, 4: the record's chunk names (the bytes are chunks);
                            * versions 1, 2: NULL (the bytes are in the file) */
};

struct intake_job {
    int fd;
    const int *cancel;  /* the pool's token: nonzero asks this intake to stop */
    struct rp_chunk_store *chunks;
    size_t chunk_bytes; /* versions 3, 4: each chunk file's */
    struct intake_item *items;
    size_t n_items;
    atomic_size_t next;
    atomic_size_t done;  /* items read and checked */
    atomic_long failed; /* index + 1 of the first failing item; <0: I/O error */
};

/* The token belongs to one intake (the caller makes a fresh one for each), so a cancel that
 * comes before an intake starts stops it at once, and one that comes after it ended reaches
 * nobody: no cancel can leak into the next intake. */
static int intake_cancelled(const int *cancel)
{
    return cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE) != 0;
}

/* Reads item it into its place in the pinned buffer: from its chunk file (versions 3, 4; a piece
 * never spans two chunk files: whole MiB chunks) or from the snapshot file (versions 1, 2). */
static int intake_read(struct intake_job *job, const struct intake_item *it, char *dst)
{
    if (!it->hashes)
        return rp_pread_full(job->fd, dst, it->bytes,
                             (off_t)(it->record->data_offset + it->offset));
    size_t k = it->offset / job->chunk_bytes, size = it->record->size - k * job->chunk_bytes;
    return rp_chunks_read(job->chunks, it->hashes + k * RP_HASH_BYTES,
                          size < job->chunk_bytes ? size : job->chunk_bytes, dst, it->bytes,
                          it->offset - k * job->chunk_bytes);
}

static void *intake_worker(void *raw)
{
    struct intake_job *job = raw;
    for (;;) {
        if (atomic_load(&job->failed) || intake_cancelled(job->cancel))
            return NULL;
        size_t i = atomic_fetch_add(&job->next, 1);
        if (i >= job->n_items)
            return NULL;
        struct intake_item *it = &job->items[i];
        char *dst = (char *)it->host + it->offset;
        long failed = intake_read(job, it, dst) != 0 ? -(long)i - 1
                    : !rp_piece_matches(dst, it->bytes, it->piece ? NULL : &it->expected,
                                        it->piece) ? (long)i + 1
                                                     : 0;
        if (failed) { /* the first failure is the one reported */
            long expected = 0;
            atomic_compare_exchange_strong(&job->failed, &expected, failed);
            return NULL;
        }
        atomic_fetch_add(&job->done, 1);
    }
}

RP_EXPORT void rp_hot_free(struct rp_hot_buffer *buffers, long count)
{
    for (long i = 0; i < count; i++) {
        struct rp_hot_buffer *b = &buffers[i];
        CUdevice dev;
        CUcontext ctx;
        if (b->device >= 0 && rp_real.cuDeviceGet(&dev, b->device) == CUDA_SUCCESS) {
            /* freed on the context that made it (the buffer's reference keeps it alive) */
            if (b->host && rp_real.cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS) {
                rp_real.cuCtxSetCurrent(ctx);
                rp_real.cuMemFreeHost(b->host);
                rp_real.cuDevicePrimaryCtxRelease_v2(dev);
            }
            rp_real.cuDevicePrimaryCtxRelease_v2(dev);
        }
        b->host = NULL;
        b->device = -1;
    }
}

/* Pinned memory for each record (on device 0's primary context, which each buffer keeps a
 * reference to: pinned memory dies with the context that made it). Stops before the next
 * record's pinning once cancel is set (the caller sees the token, and frees the made ones). */
static CUresult allocate_buffers(const char *table, const struct snap_header *h,
                                 struct rp_hot_buffer *out, long *made, const int *cancel)
{
    const struct snap_record *r = rp_snapshot_first(table);
    CUdevice dev;
    CUresult rc = rp_real.cuDeviceGet(&dev, 0);
    for (*made = 0; rc == CUDA_SUCCESS && *made < (long)h->count && !intake_cancelled(cancel);
         r = rp_snapshot_next(table, r)) {
        struct rp_hot_buffer *b = &out[*made];
        *b = (struct rp_hot_buffer){ .address = r->address, .bytes = r->size, .device = -1 };
        CUcontext ctx;
        rc = rp_real.cuDevicePrimaryCtxRetain(&ctx, dev);
        if (rc != CUDA_SUCCESS)
            break;
        b->device = 0;
        (*made)++;
        rc = rp_real.cuCtxSetCurrent(ctx);
        if (rc == CUDA_SUCCESS && r->size)
            rc = rp_real.cuMemHostAlloc(&b->host, r->size, CU_MEMHOSTALLOC_PORTABLE);
    }
    return rc;
}

static struct intake_item *intake_items(const char *table, const struct snap_header *h,
                                        const struct rp_hot_buffer *buffers, size_t *n)
{
    size_t check = rp_snapshot_check_bytes(table); /* a MiB piece, or a version 1/2 crc32c's */
    const struct snap_record *r = rp_snapshot_first(table);
    size_t total = 0;
    for (uint64_t i = 0; i < h->count; i++, r = rp_snapshot_next(table, r))
        total += rp_chunk_count(r->size, check);
    struct intake_item *items = calloc(total ? total : 1, sizeof(*items));
    if (!items)
        return NULL;
    r = rp_snapshot_first(table);
    *n = 0;
    for (uint64_t i = 0; i < h->count; i++, r = rp_snapshot_next(table, r)) {
        const uint32_t *sums = rp_snapshot_sums(table, r);
        const uint8_t *pieces = rp_snapshot_pieces(table, r);
        size_t count = rp_chunk_count(r->size, check);
        for (size_t c = 0; c < count; c++) {
            size_t offset = c * check;
            size_t left = r->size - offset;
            items[(*n)++] = (struct intake_item){
                .record = r, .host = buffers[i].host, .offset = offset,
                .bytes = left < check ? left : check, .expected = sums ? sums[c] : 0,
                .piece = pieces ? pieces + c * RP_HASH_BYTES : NULL,
                .hashes = rp_snapshot_names(table, r) };
        }
    }
    return items;
}

/* What cancelled intakes had pinned, freed only once the restore that cancelled them is over
 * (rp_hot_free_cancelled): unpinning gigabytes holds the driver's locks. (On the H200 a pool's
 * second restore, cancelling the auto-hold intake of the first one's snapshot, preloaded 8.7 GB
 * in 0.6 to 0.8 s against 0.25 s for the first: most likely this free; not measured since.) */
static pthread_mutex_t cancelled_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rp_hot_buffer *cancelled;
static long cancelled_count;

static void keep_cancelled(struct rp_hot_buffer *out, long made)
{
    if (made <= 0)
        return;
    pthread_mutex_lock(&cancelled_lock);
    struct rp_hot_buffer *grown = realloc(cancelled, (size_t)(cancelled_count + made) * sizeof *grown);
    if (grown) {
        memcpy(grown + cancelled_count, out, (size_t)made * sizeof *out);
        cancelled = grown;
        cancelled_count += made;
    }
    pthread_mutex_unlock(&cancelled_lock);
    if (!grown) /* no room to keep them aside: free them now */
        rp_hot_free(out, made);
    for (long i = 0; i < made; i++)
        out[i] = (struct rp_hot_buffer){ .device = -1 };
}

/* Frees what cancelled intakes kept; the pool calls it once no restore runs. Returns how many
 * buffers it freed. */
RP_EXPORT long rp_hot_free_cancelled(void)
{
    pthread_mutex_lock(&cancelled_lock);
    struct rp_hot_buffer *list = cancelled;
    long count = cancelled_count;
    cancelled = NULL;
    cancelled_count = 0;
    pthread_mutex_unlock(&cancelled_lock);
    rp_hot_free(list, count);
    free(list);
    return count;
}

/* Host memory that cancelled intakes keep pinned until rp_hot_free_cancelled. */
RP_EXPORT unsigned long long rp_hot_cancelled_bytes(void)
{
    unsigned long long total = 0;
    pthread_mutex_lock(&cancelled_lock);
    for (long i = 0; i < cancelled_count; i++)
        total += cancelled[i].host ? cancelled[i].bytes : 0;
    pthread_mutex_unlock(&cancelled_lock);
    return total;
}

/* Nothing held by the intake, "cancelled" in err: what a cancelled intake returns. What it had
 * pinned is kept aside until the restore is over (keep_cancelled). */
static long intake_gave_way(struct rp_hot_buffer *out, long made, char *err, size_t errlen)
{
    keep_cancelled(out, made);
    snprintf(err, errlen, "cancelled: a restore came first; nothing was kept");
    return RP_HOT_CANCELLED;
}

/* Takes the snapshot open on fd into pinned memory: out[0..count) one buffer per record, every
 * chunk read with pread by `threads` threads and checked against the table. Returns count, or
 * -1 with err set and nothing held; RP_HOT_CANCELLED, nothing held, once *cancel is set (NULL:
 * never cancelled), checked before each record's pinning and each piece: the wait is at most
 * one record's cuMemHostAlloc. */
RP_EXPORT long rp_hot_intake(int fd, int threads, struct rp_hot_buffer *out, long max,
                             const int *cancel, char *err, size_t errlen)
{
    if (intake_cancelled(cancel)) /* cancelled before it began: not even the driver is asked */
        return intake_gave_way(out, 0, err, errlen);
    if (rp_load_real() || rp_real.cuInit(0) != CUDA_SUCCESS) {
        snprintf(err, errlen, "the CUDA driver is not usable here");
        return -1;
    }
    if (threads < 1 || threads > HOT_MAX_THREADS)
        threads = threads < 1 ? 1 : HOT_MAX_THREADS;
    struct snap_header h;
    char *table = rp_snapshot_table(fd, &h, err, errlen);
    if (!table)
        return -1;
    if ((long)h.count > max) {
        snprintf(err, errlen, "the snapshot holds %llu allocations, more than %ld",
                 (unsigned long long)h.count, max);
        free(table);
        return -1;
    }
    long made = 0;
    CUresult rc = allocate_buffers(table, &h, out, &made, cancel);
    if (intake_cancelled(cancel)) {
        free(table);
        return intake_gave_way(out, made, err, errlen);
    }
    if (rc != CUDA_SUCCESS) {
        snprintf(err, errlen, "pinning %llu bytes of host memory failed: %s",
                 (unsigned long long)h.total_bytes, rp_error_name(rc));
        rp_hot_free(out, made);
        free(table);
        return -1;
    }
    /* versions 3, 4: the chunks, in the folder the table names (beside it, as this process
     * sees the descriptor's path, or a store) */
    struct rp_chunk_store chunks = { .dirfd = -1 };
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t got = readlink(link, path, sizeof(path) - 1);
    path[got > 0 ? got : 0] = '\0';
    if (rp_snapshot_open_chunks(table, path, &chunks, err, errlen) != 0) {
        rp_hot_free(out, made);
        free(table);
        return -1;
    }
    struct intake_job job = { .fd = fd, .cancel = cancel, .chunks = &chunks,
                              .chunk_bytes = h.chunk_bytes };
    job.items = intake_items(table, &h, out, &job.n_items);
    if (!job.items) {
        snprintf(err, errlen, "out of memory");
        rp_hot_free(out, made);
        rp_chunks_close(&chunks);
        free(table);
        return -1;
    }
    atomic_init(&job.next, 0);
    atomic_init(&job.done, 0);
    atomic_init(&job.failed, 0);
    pthread_t tids[HOT_MAX_THREADS];
    int started = 0;
    for (int i = 1; i < threads; i++, started++)
        if (pthread_create(&tids[started], NULL, intake_worker, &job) != 0)
            break;
    intake_worker(&job);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    long failed = atomic_load(&job.failed);
    if (failed) {
        struct intake_item *it = &job.items[(failed > 0 ? failed : -failed) - 1];
        const char *what = failed < 0 ? "read failed"
                         : it->piece ? "checksum mismatch (BLAKE3)"
                                     : "checksum mismatch (crc32c)";
        snprintf(err, errlen, "%s at %#llx + %zu (%zu bytes): nothing was kept", what,
                 (unsigned long long)it->record->address, it->offset, it->bytes);
        rp_hot_free(out, made);
        made = -1;
    } else if (atomic_load(&job.done) < job.n_items) { /* only a cancel stops workers early */
        made = intake_gave_way(out, made, err, errlen);
    }
    free(job.items);
    rp_chunks_close(&chunks);
    free(table);
    return made;
}

/* ---- upload: pinned buffers -> device, every chunk checked again ---- */

struct span {
    const struct rp_hot_segment *segment;
    size_t offset; /* within the segment, a multiple of the checksum chunk */
    size_t bytes;
};

struct upload_job {
    struct span *spans;
    size_t n_spans;
    size_t chunk_bytes;
    CUcontext context;
    CUstream *streams;
    int n_streams;
    atomic_size_t next;
    _Atomic CUresult rc;
    atomic_size_t bad_span; /* index + 1 of a span whose check failed */
};

static CUresult send_span(struct upload_job *job, size_t index)
{
    const struct span *s = &job->spans[index];
    const char *host = (const char *)s->segment->host + s->offset;
    const uint32_t *crcs = s->segment->checksums;
    const uint8_t *hashes = s->segment->pieces;
    for (size_t done = 0; (crcs || hashes) && done < s->bytes; done += job->chunk_bytes) {
        size_t n = s->bytes - done < job->chunk_bytes ? s->bytes - done : job->chunk_bytes;
        size_t piece = (s->offset + done) / job->chunk_bytes;
        if (!rp_piece_matches(host + done, n, crcs ? crcs + piece : NULL,
                              hashes ? hashes + piece * RP_HASH_BYTES : NULL)) {
            atomic_store(&job->bad_span, index + 1);
            return CUDA_ERROR_INVALID_IMAGE;
        }
    }
    return rp_real.cuMemcpyHtoDAsync_v2(s->segment->device + s->offset, host, s->bytes,
                                        job->streams[index % (size_t)job->n_streams]);
}

static void *upload_worker(void *raw)
{
    struct upload_job *job = raw;
    CUresult rc = rp_real.cuCtxSetCurrent(job->context);
    while (rc == CUDA_SUCCESS && atomic_load(&job->rc) == CUDA_SUCCESS) {
        size_t i = atomic_fetch_add(&job->next, 1);
        if (i >= job->n_spans)
            break;
        rc = send_span(job, i);
    }
    if (rc != CUDA_SUCCESS) {
        CUresult expected = CUDA_SUCCESS;
        atomic_compare_exchange_strong(&job->rc, &expected, rc);
    }
    return NULL;
}

static struct span *make_spans(const struct rp_hot_segment *segments, long count,
                               size_t span_bytes, size_t *n)
{
    size_t total = 0;
    for (long i = 0; i < count; i++)
        total += rp_chunk_count(segments[i].bytes, span_bytes);
    struct span *spans = calloc(total ? total : 1, sizeof(*spans));
    if (!spans)
        return NULL;
    *n = 0;
    for (long i = 0; i < count; i++)
        for (size_t off = 0; off < segments[i].bytes; off += span_bytes) {
            size_t left = segments[i].bytes - off;
            spans[(*n)++] = (struct span){ &segments[i], off, left < span_bytes ? left : span_bytes };
        }
    return spans;
}

/* Waits for every stream, then destroys them; the first error, if any. */
static CUresult drain_streams(CUstream *streams, int n)
{
    CUresult first = CUDA_SUCCESS;
    for (int i = 0; i < n; i++) {
        CUevent done = NULL;
        CUresult rc = rp_real.cuEventCreate(&done, CU_EVENT_DISABLE_TIMING);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuEventRecord(done, streams[i]);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuEventSynchronize(done);
        if (done)
            rp_real.cuEventDestroy_v2(done);
        rp_real.cuStreamDestroy_v2(streams[i]);
        if (first == CUDA_SUCCESS)
            first = rc;
    }
    return first;
}

CUresult rp_hot_upload(const struct rp_hot_segment *segments, long count, size_t chunk_bytes,
                       struct rp_engine_params p, char *err, size_t errlen)
{
    CUcontext ctx = NULL;
    CUresult rc = rp_real.cuCtxGetCurrent(&ctx);
    if (rc != CUDA_SUCCESS || !ctx || chunk_bytes == 0)
        return rc != CUDA_SUCCESS ? rc : CUDA_ERROR_INVALID_CONTEXT;
    int n_streams = p.streams < 1 ? 1 : p.streams > HOT_MAX_STREAMS ? HOT_MAX_STREAMS : p.streams;
    int threads = p.threads < 1 ? 1 : p.threads > HOT_MAX_THREADS ? HOT_MAX_THREADS : p.threads;
    size_t span_bytes = HOT_SPAN_BYTES < chunk_bytes ? chunk_bytes
                                                     : HOT_SPAN_BYTES / chunk_bytes * chunk_bytes;
    struct upload_job job = { .chunk_bytes = chunk_bytes, .context = ctx };
    job.spans = make_spans(segments, count, span_bytes, &job.n_spans);
    if (!job.spans)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUstream streams[HOT_MAX_STREAMS];
    int made = 0;
    for (; rc == CUDA_SUCCESS && made < n_streams; made += rc == CUDA_SUCCESS)
        rc = rp_real.cuStreamCreate(&streams[made], CU_STREAM_NON_BLOCKING);
    job.streams = streams;
    job.n_streams = made;
    atomic_init(&job.next, 0);
    atomic_init(&job.rc, rc);
    atomic_init(&job.bad_span, 0);
    if (threads > (int)job.n_spans)
        threads = job.n_spans ? (int)job.n_spans : 1;
    pthread_t tids[HOT_MAX_THREADS];
    int started = 0;
    for (int i = 1; rc == CUDA_SUCCESS && i < threads; i++, started++)
        if (pthread_create(&tids[started], NULL, upload_worker, &job) != 0)
            break;
    if (rc == CUDA_SUCCESS)
        upload_worker(&job);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    CUresult drained = drain_streams(streams, made); /* even after a failure: no DMA outlives us */
    rc = atomic_load(&job.rc);
    if (rc == CUDA_SUCCESS)
        rc = drained;
    size_t bad = atomic_load(&job.bad_span);
    if (bad)
        snprintf(err, errlen, "the hot copy of %#llx + %zu no longer matches the snapshot's "
                 "checksums", (unsigned long long)job.spans[bad - 1].segment->device,
                 job.spans[bad - 1].offset);
    free(job.spans);
    rp_real.cuCtxSetCurrent(ctx);
    return rc;
}

/* Pinned host memory straight to device memory, every chunk of chunk_bytes checked against
 * checksums (NULL: none): the microbenchmark's door to rp_hot_upload (benchmarks/). */
RP_EXPORT CUresult rp_hot_copy(CUdeviceptr device, const void *host, size_t bytes,
                               const uint32_t *checksums, size_t chunk_bytes,
                               const struct rp_engine_params *p)
{
    if (rp_load_real())
        return CUDA_ERROR_NOT_INITIALIZED;
    struct rp_hot_segment segment = { device, host, bytes, checksums, NULL };
    char err[256] = "";
    CUresult rc = rp_hot_upload(&segment, 1, chunk_bytes, *p, err, sizeof(err));
    if (err[0])
        rp_log("%s", err);
    return rc;
}
