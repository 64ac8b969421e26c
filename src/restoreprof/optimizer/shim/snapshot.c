/*
 * The snapshot table (version 2): written at OFFLOAD (control.c), read at RELOAD (control.c) and
 * by the preload (preload.c). Layout: header, the chunk folder's path, then one record per
 * allocation followed by the BLAKE3-256 of each of its chunks (shim.h). The bytes are chunks in
 * a content-addressed folder (chunks.c): written by the engine's threads in parallel, each
 * hashed by the thread that drained it, so an offload is not serialized on one file and a
 * restore checks every chunk as it copies it instead of in a second pass.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* A record's chunk names and piece hashes: a multiple of 8, so records stay 8-byte aligned. */
static size_t hashes_bytes(size_t n_chunks, size_t size)
{
    return RP_HASH_BYTES * (n_chunks + rp_chunk_count(size, RP_PIECE_BYTES));
}

static size_t table_bytes(const struct rp_allocation *items, size_t count, size_t chunk,
                          size_t dir_bytes)
{
    size_t n = sizeof(struct snap_header) + dir_bytes;
    for (size_t i = 0; i < count; i++)
        n += sizeof(struct snap_record) +
             hashes_bytes(rp_chunk_count(items[i].size, chunk), items[i].size);
    return n;
}

/* dir resolved against the folder of table_path unless it is absolute, into out. */
static void resolve_dir(const char *dir, const char *table_path, char *out, size_t len)
{
    if (dir[0] == '/') {
        snprintf(out, len, "%s", dir);
        return;
    }
    char copy[4096];
    snprintf(copy, sizeof(copy), "%s", table_path);
    snprintf(out, len, "%s/%s", dirname(copy), dir);
}

static int write_table(const char *path, const char *buf, size_t n, int sync, char *err,
                       size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int ok = fd >= 0 && pwrite(fd, buf, n, 0) == (ssize_t)n && (!sync || fsync(fd) == 0);
    int saved = errno;
    if (fd >= 0 && close(fd) != 0 && ok)
        ok = 0, saved = errno;
    if (ok && rename(tmp, path) != 0)
        ok = 0, saved = errno;
    if (!ok) {
        unlink(tmp);
        snprintf(err, errlen, "writing the snapshot table %.160s failed: %s", path,
                 strerror(saved));
        return -1;
    }
    if (sync) { /* the rename itself must be durable: fsync the table's folder */
        char copy[4096];
        snprintf(copy, sizeof(copy), "%s", path);
        int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) != 0) {
            snprintf(err, errlen, "syncing the folder of %.160s failed: %s", path,
                     strerror(errno));
            if (dfd >= 0)
                close(dfd);
            return -1;
        }
        close(dfd);
    }
    return 0;
}

int rp_snapshot_write(const char *path, const char *chunk_dir, int sync,
                      const struct rp_allocation *items, size_t count, struct rp_engine_params p,
                      uint64_t *total, uint64_t *written, char *err, size_t errlen)
{
    size_t dir_bytes = align_up(strlen(chunk_dir) + 1, 8);
    /* chunk files hold whole pieces (chunk_mb is whole MiB: this only guards odd callers) */
    p.chunk_bytes = align_up(p.chunk_bytes, RP_PIECE_BYTES);
    size_t table = table_bytes(items, count, p.chunk_bytes, dir_bytes);
    char folder[4200];
    struct rp_chunk_store chunks;
    char *buf = calloc(1, table);
    if (!buf)
        return snprintf(err, errlen, "out of memory"), -1;
    resolve_dir(chunk_dir, path, folder, sizeof(folder));
    if (rp_chunks_open(&chunks, folder, 1, sync, err, errlen) != 0) {
        free(buf);
        return -1;
    }
    struct snap_header *h = (struct snap_header *)buf;
    memcpy(h->magic, RP_SNAP_MAGIC, 8);
    h->version = RP_SNAP_VERSION;
    h->checksum_kind = RP_SNAP_BLAKE3;
    h->chunk_bytes = p.chunk_bytes;
    h->count = count;
    h->table_bytes = table;
    h->dir_bytes = dir_bytes;
    h->piece_bytes = RP_PIECE_BYTES;
    memcpy(buf + sizeof(*h), chunk_dir, strlen(chunk_dir));
    char *cursor = buf + sizeof(*h) + dir_bytes;
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const struct rp_allocation *a = &items[i];
        struct snap_record *r = (struct snap_record *)cursor;
        *r = (struct snap_record){ a->address, a->size, a->reserved, 0, a->device,
                                   (uint32_t)rp_chunk_count(a->size, p.chunk_bytes) };
        uint8_t *hashes = (uint8_t *)(r + 1);
        cursor = (char *)hashes + hashes_bytes(r->n_chunks, r->size);
        struct rp_transfer t = { .direction = RP_D2H, .device = a->address, .fd = -1,
                                 .bytes = a->size, .chunks = &chunks, .hashes = hashes,
                                 .pieces = hashes + r->n_chunks * RP_HASH_BYTES,
                                 .chunk_file_bytes = p.chunk_bytes };
        CUresult cr = rp_real.cuCtxSetCurrent(a->context);
        if (cr == CUDA_SUCCESS)
            cr = rp_engine_run(&t, p, 1);
        if (cr != CUDA_SUCCESS) {
            snprintf(err, errlen, "copying %#llx (%zu bytes) out failed: %s",
                     (unsigned long long)a->address, a->size, rp_error_name(cr));
            rc = -1;
        }
        h->total_bytes += a->size;
    }
    if (rc == 0 && rp_chunks_sync(&chunks) != 0) {
        snprintf(err, errlen, "syncing the chunk folder %.160s failed: %s", folder,
                 strerror(errno));
        rc = -1;
    }
    h->written_bytes = chunks.written_bytes;
    /* Last: the table names only chunks that are complete (renamed into place). */
    if (rc == 0)
        rc = write_table(path, buf, table, sync, err, errlen);
    *total = h->total_bytes;
    *written = h->written_bytes;
    rp_chunks_close(&chunks);
    free(buf);
    return rc;
}

char *rp_snapshot_table(int fd, struct snap_header *h, char *err, size_t errlen)
{
    if (pread(fd, h, sizeof(*h), 0) != sizeof(*h) || memcmp(h->magic, RP_SNAP_MAGIC, 8) != 0 ||
        h->version != RP_SNAP_VERSION || h->checksum_kind != RP_SNAP_BLAKE3) {
        snprintf(err, errlen, "not a restoreprof snapshot of version %d (take the checkpoint "
                 "again with this restoreprof)", RP_SNAP_VERSION);
        return NULL;
    }
    if (h->table_bytes < sizeof(*h) + h->dir_bytes || h->dir_bytes == 0 || h->dir_bytes > 4096 ||
        h->table_bytes > ((uint64_t)1 << 34) || h->piece_bytes != RP_PIECE_BYTES ||
        h->chunk_bytes == 0 || h->chunk_bytes % RP_PIECE_BYTES) {
        snprintf(err, errlen, "the snapshot table's header is damaged");
        return NULL;
    }
    char *table = malloc(h->table_bytes);
    if (!table || pread(fd, table, h->table_bytes, 0) != (ssize_t)h->table_bytes) {
        snprintf(err, errlen, "the snapshot table is truncated");
        free(table);
        return NULL;
    }
    /* every record and its hashes must lie inside the table, and the path must end */
    const char *end = table + h->table_bytes;
    const struct snap_record *r = rp_snapshot_first(table);
    for (uint64_t i = 0; i < h->count; i++, r = rp_snapshot_next(r)) {
        if ((const char *)(r + 1) > end || r->size > ((uint64_t)1 << 46) ||
            r->n_chunks != rp_chunk_count(r->size, h->chunk_bytes) ||
            (const char *)rp_snapshot_next(r) > end) {
            snprintf(err, errlen, "the snapshot table is damaged (record %llu)",
                     (unsigned long long)i);
            free(table);
            return NULL;
        }
    }
    if (memchr(table + sizeof(*h), '\0', h->dir_bytes) == NULL) {
        snprintf(err, errlen, "the snapshot table is damaged (chunk folder)");
        free(table);
        return NULL;
    }
    return table;
}

const struct snap_record *rp_snapshot_first(const char *table)
{
    const struct snap_header *h = (const struct snap_header *)table;
    return (const struct snap_record *)(table + sizeof(*h) + h->dir_bytes);
}

const struct snap_record *rp_snapshot_next(const struct snap_record *r)
{
    const char *after = (const char *)(r + 1) + hashes_bytes(r->n_chunks, r->size);
    return (const struct snap_record *)after;
}

int rp_snapshot_open_chunks(const char *table, const char *table_path, struct rp_chunk_store *s,
                            char *err, size_t errlen)
{
    char folder[4200];
    resolve_dir(table + sizeof(struct snap_header), table_path, folder, sizeof(folder));
    return rp_chunks_open(s, folder, 0, 0, err, errlen);
}
