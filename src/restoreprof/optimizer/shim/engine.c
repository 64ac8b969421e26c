/*
 * The engine in C: one transfer split into chunks, handed out to T threads, each with two
 * pinned staging buffers and one of S streams. While one buffer's DMA runs, the thread fills
 * (H2D) or drains (D2H) the other, so memcpy/pread/pwrite overlap the PCIe transfer.
 *
 * The staging pool is allocated on first use and kept: pinning costs 0.2-0.7 s per GiB on the
 * H100, far more than the copies it speeds up. Its buffers are PORTABLE pinned memory, usable
 * from any context; the streams and events belong to one context and are re-made if the
 * caller's context changes.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_STREAMS 32
#define MAX_THREADS 128

/* Distinct codes for failures that are not the driver's, so logs and callers can tell. */
#define RP_ERROR_IO CUDA_ERROR_OPERATING_SYSTEM
#define RP_ERROR_CHECKSUM CUDA_ERROR_INVALID_IMAGE

struct slot {
    void *buffer;
    CUevent done; /* recorded after the DMA that uses `buffer` */
    int pending;  /* `done` was recorded and not yet waited for */
    int zero;     /* D2H: the chunk lies in memory the program freed: zeros, no DMA */
};

static struct {
    pthread_mutex_t busy; /* one transfer at a time owns the pool */
    CUcontext context;
    unsigned long long context_id; /* cuCtxGetId's: never reused in a process, unlike handles */
    CUstream streams[MAX_STREAMS];
    int n_streams;
    struct slot slots[2 * MAX_THREADS];
    int n_slots;
    size_t slot_bytes;
    int pinned;
    CUevent order; /* "the caller's stream reached this point" */
} staging = { .busy = PTHREAD_MUTEX_INITIALIZER };

struct rp_engine_params rp_engine_default_params(void)
{
    return (struct rp_engine_params){ rp_config.streams, rp_config.threads,
                                      rp_config.chunk_bytes, rp_config.pinned };
}

size_t rp_chunk_count(size_t bytes, size_t chunk)
{
    return (bytes + chunk - 1) / chunk;
}

/* ---- the staging pool: pinned buffers, streams and events the workers copy through ---- */

/* The driver's unique id of ctx, 0 when it has none (a driver without cuCtxGetId, or a context
 * that no longer exists). */
static unsigned long long context_id(CUcontext ctx)
{
    unsigned long long id = 0;
    if (!ctx || !rp_real.cuCtxGetId || rp_real.cuCtxGetId(ctx, &id) != CUDA_SUCCESS)
        return 0;
    return id;
}

/* Whether the context the pool was made on still exists. A context that was destroyed took the
 * pool's pinned buffers, streams and events with it; its handle value may since have been given
 * to a new context (the driver reuses them: a preload's primary context, released by its last
 * holder, came back at the same address, and the engine read into buffers that were gone). */
static int staging_context_alive(void)
{
    if (!staging.context)
        return 0;
    if (!rp_real.cuCtxGetId) /* no way to tell: trust the handle, as before */
        return 1;
    return context_id(staging.context) == staging.context_id;
}

/* Drops the pool's pointers without freeing them: their context, and everything in it, is
 * gone. */
static void staging_forget(void)
{
    RP_DEBUG("staging pool: its context ended; made anew on the next transfer");
    memset(staging.slots, 0, sizeof(staging.slots));
    memset(staging.streams, 0, sizeof(staging.streams));
    staging.order = NULL;
    staging.n_slots = staging.n_streams = 0;
    staging.context = NULL;
    staging.context_id = 0;
}

static void staging_free(void)
{
    if (staging.context && !staging_context_alive()) {
        staging_forget();
        return;
    }
    if (staging.context)
        rp_real.cuCtxSetCurrent(staging.context);
    for (int i = 0; i < staging.n_slots; i++) {
        if (staging.slots[i].done)
            rp_real.cuEventDestroy_v2(staging.slots[i].done);
        if (staging.slots[i].buffer && staging.pinned)
            rp_real.cuMemFreeHost(staging.slots[i].buffer);
        else
            free(staging.slots[i].buffer);
        staging.slots[i] = (struct slot){ 0 };
    }
    for (int i = 0; i < staging.n_streams; i++)
        rp_real.cuStreamDestroy_v2(staging.streams[i]);
    if (staging.order)
        rp_real.cuEventDestroy_v2(staging.order);
    staging.order = NULL;
    staging.n_slots = staging.n_streams = 0;
    staging.context = NULL;
    staging.context_id = 0;
}

static void *allocate_staging(size_t bytes, int pinned)
{
    void *p = NULL;
    if (pinned) {
        CUresult rc = rp_real.cuMemHostAlloc(&p, bytes, CU_MEMHOSTALLOC_PORTABLE);
        if (rc != CUDA_SUCCESS) {
            rp_log("cuMemHostAlloc(%zu) failed: %s", bytes, rp_error_name(rc));
            return NULL;
        }
        return p;
    }
    return posix_memalign(&p, 4096, bytes) == 0 ? p : NULL;
}

/* Time spent pinning staging buffers and making streams, summed over the process's life and
 * over the threads that did it (they pin while others already copy); RELOAD reports it. */
static _Atomic uint64_t staging_setup_ns;

uint64_t rp_engine_staging_setup_ns(void)
{
    return atomic_load(&staging_setup_ns);
}

/* A worker's two slots, made on its first chunk: pinning costs about 0.4 s a GiB on the H100
 * (the pages are faulted, zeroed and locked), so the first workers copy while later ones still
 * pin, instead of every worker waiting for the whole staging. */
static CUresult ensure_slots(int worker)
{
    for (int i = 2 * worker; i < 2 * worker + 2; i++) {
        struct slot *s = &staging.slots[i];
        if (s->buffer)
            continue;
        uint64_t start = rp_now_ns();
        s->buffer = allocate_staging(staging.slot_bytes, staging.pinned);
        CUresult rc = s->buffer ? rp_real.cuEventCreate(&s->done, CU_EVENT_DISABLE_TIMING)
                                : CUDA_ERROR_OUT_OF_MEMORY;
        atomic_fetch_add(&staging_setup_ns, rp_now_ns() - start);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}

/* Makes the pool fit p on context ctx (the caller's current one). */
static CUresult staging_fit(struct rp_engine_params p, CUcontext ctx)
{
    int want_slots = 2 * p.threads;
    if (staging.context && !staging_context_alive())
        staging_forget();
    if (staging.context == ctx && staging.slot_bytes == p.chunk_bytes && staging.n_slots == want_slots &&
        staging.n_streams == p.streams && staging.pinned == p.pinned)
        return CUDA_SUCCESS;
    uint64_t start = rp_now_ns();
    staging_free();
    rp_real.cuCtxSetCurrent(ctx);
    staging.context = ctx;
    staging.context_id = context_id(ctx);
    staging.slot_bytes = p.chunk_bytes;
    staging.pinned = p.pinned;
    CUresult rc = rp_real.cuEventCreate(&staging.order, CU_EVENT_DISABLE_TIMING);
    while (rc == CUDA_SUCCESS && staging.n_streams < p.streams) {
        rc = rp_real.cuStreamCreate(&staging.streams[staging.n_streams], CU_STREAM_NON_BLOCKING);
        staging.n_streams += rc == CUDA_SUCCESS;
    }
    staging.n_slots = want_slots; /* empty: each worker fills its own pair (ensure_slots) */
    if (rc != CUDA_SUCCESS) {
        rp_log("staging pool (%d x %zu MiB) failed: %s", want_slots, p.chunk_bytes / RP_MIB,
               rp_error_name(rc));
        staging_free();
    } else {
        RP_DEBUG("staging pool: %d x %zu MiB %s, %d streams", want_slots, p.chunk_bytes / RP_MIB,
                 p.pinned ? "pinned" : "pageable", p.streams);
    }
    atomic_fetch_add(&staging_setup_ns, rp_now_ns() - start);
    return rc;
}

RP_EXPORT void rp_engine_release(void)
{
    pthread_mutex_lock(&staging.busy);
    staging_free();
    pthread_mutex_unlock(&staging.busy);
}

/* ---- a batch of transfers, chunks handed out across all of them ----
 *
 * Many small allocations (PyTorch's expandable segments map 20 MiB handles) would each be a
 * transfer of one or two chunks, served by one thread at a time: the batch lets every thread
 * work on every transfer's chunks. */

struct job {
    struct rp_transfer *t; /* n_transfers, all in one direction */
    size_t n_transfers;
    size_t *first; /* first global chunk of each transfer; first[n_transfers] = n_chunks */
    size_t chunk;
    size_t n_chunks;
    atomic_size_t next;
    _Atomic CUresult rc;
};

/* The transfer holding global chunk `index`, and the chunk's index within it. */
static struct rp_transfer *locate(struct job *job, size_t index, size_t *local)
{
    size_t low = 0, high = job->n_transfers - 1;
    while (low < high) { /* the last transfer whose first chunk is <= index */
        size_t mid = (low + high + 1) / 2;
        if (job->first[mid] <= index)
            low = mid;
        else
            high = mid - 1;
    }
    *local = index - job->first[low];
    return &job->t[low];
}

static void fail(struct job *job, CUresult rc)
{
    CUresult expected = CUDA_SUCCESS;
    atomic_compare_exchange_strong(&job->rc, &expected, rc);
}

/* The next chunk index, or n_chunks when done or when another thread failed. */
static size_t take_chunk(struct job *job)
{
    if (atomic_load(&job->rc) != CUDA_SUCCESS)
        return job->n_chunks;
    size_t i = atomic_fetch_add(&job->next, 1);
    return i < job->n_chunks ? i : job->n_chunks;
}

/* Checks (H2D) or writes (D2H) the checksum of each piece of the chunk at offset: a chunk may
 * cover several checksums (chunk_bytes is a multiple of checksum_bytes, see rp_engine_run). */
static CUresult check_pieces(struct job *job, struct rp_transfer *t, const void *buf,
                             size_t offset, size_t n, int verify)
{
    size_t piece = t->checksum_bytes ? t->checksum_bytes : job->chunk;
    for (size_t done = 0; t->checksums && done < n; done += piece) {
        size_t len = n - done < piece ? n - done : piece;
        size_t index = (offset + done) / piece;
        uint32_t crc = rp_crc32c(0, (const char *)buf + done, len);
        if (!verify) {
            t->checksums[index] = crc;
        } else if (crc != t->checksums[index]) {
            rp_log("checksum mismatch in piece %zu of %#llx: refusing to load it", index,
                   (unsigned long long)t->device);
            return RP_ERROR_CHECKSUM;
        }
    }
    return CUDA_SUCCESS;
}

/* Waits for the slot's last DMA, if any. */
static CUresult settle(struct slot *s)
{
    if (!s->pending)
        return CUDA_SUCCESS;
    s->pending = 0;
    return rp_real.cuEventSynchronize(s->done);
}

/* Starts the DMA of the staging buffer (filled and checked) to the device. */
static CUresult h2d_send(struct slot *s, CUstream stream, CUdeviceptr to, size_t n)
{
    CUresult rc = rp_real.cuMemcpyHtoDAsync_v2(to, s->buffer, n, stream);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuEventRecord(s->done, stream);
    s->pending = rc == CUDA_SUCCESS;
    return rc;
}

/* H2D from a chunk folder: read the engine chunk at offset from the chunk files it spans,
 * check each piece (this thread, in parallel with the others) and send it only if every piece
 * matches the table. The integrity check is in the copy path: nothing reads the snapshot a
 * second time. Version 4's crc32c (the CPU's instruction, 10.4 GB/s a core on 1 MiB pieces
 * against 3.9 for BLAKE3, CPU machine) keeps it off the critical path; version 3's BLAKE3 held
 * the H200's page-cache load to 35.8 GB/s. */
static CUresult h2d_from_chunks(struct rp_transfer *t, struct slot *s, CUstream stream,
                                size_t offset, size_t n)
{
    size_t file = t->chunk_file_bytes;
    char hex[2 * RP_HASH_BYTES + 1];
    for (size_t pos = offset; pos < offset + n;) {
        size_t k = pos / file, within = pos - k * file;
        size_t size = t->bytes - k * file < file ? t->bytes - k * file : file;
        size_t len = size - within < offset + n - pos ? size - within : offset + n - pos;
        const uint8_t *want = t->hashes + k * RP_HASH_BYTES;
        if (rp_chunks_read(t->chunks, want, size, (char *)s->buffer + (pos - offset), len,
                           within) != 0) {
            int why = errno;
            rp_hash_hex(want, hex);
            rp_log("chunk %s (%zu of this allocation) %s: refusing to load it", hex, k,
                   why == ENOENT ? "is missing" : why == EBADMSG ? "has the wrong size"
                                                                 : strerror(why));
            /* missing or cut short: damage, like a mismatch (no retry can fix it) */
            return why == ENOENT || why == EBADMSG ? RP_ERROR_CHECKSUM : RP_ERROR_IO;
        }
        pos += len;
    }
    for (size_t pos = offset; pos < offset + n; pos += RP_PIECE_BYTES) {
        size_t len = offset + n - pos < RP_PIECE_BYTES ? offset + n - pos : RP_PIECE_BYTES;
        size_t piece = pos / RP_PIECE_BYTES;
        if (!rp_piece_matches((const char *)s->buffer + (pos - offset), len,
                              t->piece_crcs ? t->piece_crcs + piece : NULL,
                              t->pieces + piece * RP_HASH_BYTES)) {
            size_t k = pos / file;
            rp_hash_hex(t->hashes + k * RP_HASH_BYTES, hex);
            rp_log("chunk %s (%zu of this allocation) is damaged (%s mismatch at byte %zu of "
                   "it): refusing to load it", hex, k, t->piece_crcs ? "crc32c" : "BLAKE3",
                   pos - k * file);
            return RP_ERROR_CHECKSUM;
        }
    }
    return h2d_send(s, stream, t->device + offset, n);
}

/* H2D: fill the staging buffer from memory or file, check it, send it. */
static CUresult h2d_chunk(struct job *job, struct slot *s, CUstream stream, size_t global)
{
    size_t index;
    struct rp_transfer *t = locate(job, global, &index);
    size_t offset = index * job->chunk;
    size_t n = t->bytes - offset < job->chunk ? t->bytes - offset : job->chunk;
    CUresult rc = settle(s);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (t->chunks)
        return h2d_from_chunks(t, s, stream, offset, n);
    if (t->host)
        memcpy(s->buffer, (const char *)t->host + offset, n);
    else if (rp_pread_full(t->fd, s->buffer, n, t->file_offset + (off_t)offset))
        return RP_ERROR_IO;
    rc = check_pieces(job, t, s->buffer, offset, n, 1);
    if (rc != CUDA_SUCCESS)
        return rc;
    return h2d_send(s, stream, t->device + offset, n);
}

/* D2H, second half: wait for the chunk in the slot to land, checksum it, drain it. */
static CUresult d2h_drain(struct job *job, struct slot *s, size_t global)
{
    size_t index;
    struct rp_transfer *t = locate(job, global, &index);
    size_t offset = index * job->chunk;
    size_t n = t->bytes - offset < job->chunk ? t->bytes - offset : job->chunk;
    CUresult rc = settle(s);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (s->zero)
        memset(s->buffer, 0, n);
    if (t->chunks) { /* hash here, in each thread: one chunk file per chunk, no shared inode */
        uint8_t *hash = t->hashes + index * RP_HASH_BYTES;
        size_t piece = offset / RP_PIECE_BYTES;
        rp_chunk_name(s->buffer, n, t->pieces ? t->pieces + piece * RP_HASH_BYTES : NULL,
                      t->piece_crcs ? t->piece_crcs + piece : NULL, hash);
        if (rp_chunks_put(t->chunks, hash, s->buffer, n) != 0) {
            rp_log("writing chunk %zu failed: %s", index, strerror(errno));
            return RP_ERROR_IO;
        }
        return CUDA_SUCCESS;
    }
    check_pieces(job, t, s->buffer, offset, n, 0);
    if (t->host)
        memcpy((char *)t->host + offset, s->buffer, n);
    else if (rp_pwrite_full(t->fd, s->buffer, n, t->file_offset + (off_t)offset))
        return RP_ERROR_IO;
    return CUDA_SUCCESS;
}

/* D2H, first half: start the DMA of chunk `index` into the slot. */
static CUresult d2h_start(struct job *job, struct slot *s, CUstream stream, size_t global)
{
    size_t index;
    struct rp_transfer *t = locate(job, global, &index);
    size_t offset = index * job->chunk;
    size_t n = t->bytes - offset < job->chunk ? t->bytes - offset : job->chunk;
    s->zero = t->chunks && rp_free_ranges_cover(t->free, t->free_base + offset, n);
    if (s->zero) { /* freed by the program: nothing to read (d2h_drain writes zeros) */
        __atomic_fetch_add(&t->free_bytes, n, __ATOMIC_RELAXED);
        s->pending = 0;
        return CUDA_SUCCESS;
    }
    CUresult rc = rp_real.cuMemcpyDtoHAsync_v2(s->buffer, t->device + offset, n, stream);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuEventRecord(s->done, stream);
    s->pending = rc == CUDA_SUCCESS;
    return rc;
}

struct worker_arg {
    struct job *job;
    int id;
};

static void *worker(void *raw)
{
    struct worker_arg *arg = raw;
    struct job *job = arg->job;
    struct slot *pair[2] = { &staging.slots[2 * arg->id], &staging.slots[2 * arg->id + 1] };
    CUstream stream = staging.streams[arg->id % staging.n_streams];
    size_t in_flight[2] = { job->n_chunks, job->n_chunks }; /* D2H chunk held by each slot */
    CUresult rc = rp_real.cuCtxSetCurrent(staging.context);
    if (rc == CUDA_SUCCESS)
        rc = ensure_slots(arg->id);
    int turn = 0;
    for (size_t i; rc == CUDA_SUCCESS && (i = take_chunk(job)) < job->n_chunks; turn ^= 1) {
        if (job->t->direction == RP_H2D) {
            rc = h2d_chunk(job, pair[turn], stream, i);
            continue;
        }
        /* Start chunk i in this slot, then finish the one the other slot holds. */
        rc = d2h_start(job, pair[turn], stream, i);
        in_flight[turn] = i;
        if (rc == CUDA_SUCCESS && in_flight[!turn] < job->n_chunks)
            rc = d2h_drain(job, pair[!turn], in_flight[!turn]);
        in_flight[!turn] = job->n_chunks;
    }
    for (int k = 0; k < 2; k++) { /* finish (or, after an error, just wait for) the rest */
        if (rc == CUDA_SUCCESS && in_flight[k] < job->n_chunks)
            rc = d2h_drain(job, pair[k], in_flight[k]);
        CUresult settled = settle(pair[k]);
        if (rc == CUDA_SUCCESS)
            rc = settled;
    }
    if (rc != CUDA_SUCCESS)
        fail(job, rc);
    return NULL;
}

/* Engine streams start after what the caller's stream holds so far. */
static CUresult order_after_caller(struct rp_transfer *t)
{
    if (!t->order_after)
        return CUDA_SUCCESS;
    CUresult rc = rp_real.cuEventRecord(staging.order, t->after);
    for (int i = 0; rc == CUDA_SUCCESS && i < staging.n_streams; i++)
        rc = rp_real.cuStreamWaitEvent(staging.streams[i], staging.order, 0);
    return rc;
}

static CUresult run_job(struct rp_transfer *t, size_t n, struct rp_engine_params p)
{
    struct job job = { .t = t, .n_transfers = n, .chunk = p.chunk_bytes };
    job.first = malloc((n + 1) * sizeof(*job.first));
    if (!job.first)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++) {
        job.first[i] = job.n_chunks;
        job.n_chunks += rp_chunk_count(t[i].bytes, p.chunk_bytes);
    }
    job.first[n] = job.n_chunks;
    atomic_init(&job.next, 0);
    CUresult ordered = CUDA_SUCCESS;
    for (size_t i = 0; i < n && ordered == CUDA_SUCCESS; i++)
        ordered = order_after_caller(&t[i]);
    atomic_init(&job.rc, ordered);
    int threads = (size_t)p.threads < job.n_chunks ? p.threads : (int)job.n_chunks;
    pthread_t tids[MAX_THREADS];
    struct worker_arg args[MAX_THREADS];
    int started = 0;
    for (int i = 1; i < threads; i++, started++) {
        args[i] = (struct worker_arg){ &job, i };
        if (pthread_create(&tids[i], NULL, worker, &args[i]) != 0)
            break; /* fewer threads still finish the job: chunks are handed out dynamically */
    }
    args[0] = (struct worker_arg){ &job, 0 };
    worker(&args[0]); /* this thread is worker 0 */
    for (int i = 1; i <= started; i++)
        pthread_join(tids[i], NULL);
    free(job.first);
    return atomic_load(&job.rc);
}

/* Checks p and gives the caller's current context, which the pool is made to fit. */
static CUresult caller_context(struct rp_engine_params p, CUcontext *ctx)
{
    if (p.threads < 1 || p.threads > MAX_THREADS || p.streams < 1 || p.streams > MAX_STREAMS ||
        p.chunk_bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = rp_real.cuCtxGetCurrent(ctx);
    if (rc != CUDA_SUCCESS || !*ctx)
        return rc != CUDA_SUCCESS ? rc : CUDA_ERROR_INVALID_CONTEXT;
    return CUDA_SUCCESS;
}

CUresult rp_engine_run(struct rp_transfer *t, struct rp_engine_params p, int wait)
{
    return rp_engine_run_batch(t, 1, p, wait);
}

CUresult rp_engine_run_batch(struct rp_transfer *t, size_t n, struct rp_engine_params p, int wait)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i].direction != t[0].direction)
            return CUDA_ERROR_INVALID_VALUE;
        bytes += t[i].bytes;
        if (t[i].chunks && t[i].direction == RP_D2H) {
            /* one chunk file per engine chunk: a batch shares one chunk file size */
            if (t[i].chunk_file_bytes != t[0].chunk_file_bytes || !t[0].chunks)
                return CUDA_ERROR_INVALID_VALUE;
            p.chunk_bytes = t[i].chunk_file_bytes;
        } else if (t[i].chunks && p.chunk_bytes % RP_PIECE_BYTES) { /* whole pieces, checked */
            p.chunk_bytes = (p.chunk_bytes / RP_PIECE_BYTES + 1) * RP_PIECE_BYTES;
        }
        size_t piece = t[i].checksums ? t[i].checksum_bytes : 0;
        if (piece && p.chunk_bytes % piece) { /* an older snapshot's coarser checksums */
            RP_DEBUG("chunk %zu B rounded up to a multiple of the %zu B checksums",
                     p.chunk_bytes, piece);
            p.chunk_bytes = (p.chunk_bytes / piece + 1) * piece;
        }
    }
    CUcontext ctx = NULL;
    CUresult rc = caller_context(p, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (wait)
        pthread_mutex_lock(&staging.busy);
    else if (pthread_mutex_trylock(&staging.busy) != 0)
        return CUDA_ERROR_NOT_READY;
    rc = staging_fit(p, ctx);
    if (rc == CUDA_SUCCESS && bytes)
        rc = run_job(t, n, p);
    if (rc != CUDA_SUCCESS && rc != RP_ERROR_IO && rc != RP_ERROR_CHECKSUM)
        staging_free(); /* a pool a driver error left in doubt (or half made) is made anew */
    rp_real.cuCtxSetCurrent(ctx); /* worker 0 ran here and set the pool's: put the caller's back */
    pthread_mutex_unlock(&staging.busy);
    return rc;
}

/* Makes the whole staging pool now, on the caller's current context, for transfers with these
 * parameters: a process that serves transfers later (restoreprof warm) pays the pinning once,
 * ahead of them, instead of inside the first (which finds the pool fitting and keeps it). */
RP_EXPORT CUresult rp_engine_warm(const struct rp_engine_params *params)
{
    if (rp_load_real())
        return CUDA_ERROR_NOT_INITIALIZED;
    struct rp_engine_params p = *params;
    CUcontext ctx = NULL;
    CUresult rc = caller_context(p, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&staging.busy);
    rc = staging_fit(p, ctx);
    for (int worker = 0; rc == CUDA_SUCCESS && worker < p.threads; worker++)
        rc = ensure_slots(worker);
    if (rc != CUDA_SUCCESS)
        staging_free();
    pthread_mutex_unlock(&staging.busy);
    return rc;
}

/* The staging buffers the pool holds now: up to max base addresses into bases, each of
 * *slot_bytes; returns how many (0 when they are not pinned: nothing to report). For a
 * profiler that starts watching a process after its pool was made (restoreprof warm). */
RP_EXPORT long rp_engine_staging(uint64_t *bases, long max, size_t *slot_bytes)
{
    long n = 0;
    pthread_mutex_lock(&staging.busy);
    for (int i = 0; staging.pinned && i < staging.n_slots && n < max; i++)
        if (staging.slots[i].buffer)
            bases[n++] = (uint64_t)(uintptr_t)staging.slots[i].buffer;
    *slot_bytes = staging.slot_bytes;
    pthread_mutex_unlock(&staging.busy);
    return n;
}
