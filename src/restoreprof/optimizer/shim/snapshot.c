/*
 * The snapshot table: written at OFFLOAD (control.c), read at RELOAD (control.c) and by the
 * preload (preload.c). The versions and their layouts are in shim.h.
 *
 * Version 4 (written now): header, the chunk folder's path, then per record its mappings, chunk
 * names (BLAKE3) and a crc32c per MiB piece. The bytes are chunks in a content-addressed folder
 * (chunks.c): written by the engine's threads in parallel, each named and checksummed by the
 * thread that drained it, so an offload is not serialized on one file, and a restore checks
 * every piece as it copies it instead of in a second pass. Names stay BLAKE3 (what the store
 * dedups and verifies by); the per-piece check is crc32c because it sits in the copy path,
 * where BLAKE3 held the H200's page-cache load to 35.8 GB/s.
 *
 * Version 3 (the same, a BLAKE3 per piece) is still read and checked by its BLAKE3s; versions
 * 1 and 2 (the bytes inside the file, crc32c per piece) too: their table is brought to the
 * in-memory layout on load (a version 1 table converted to version 2's records).
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

/* ---- layouts ---- */

/* Version 1 and 2's header: version 3's up to table_bytes, then 16 reserved bytes (zero) where
 * version 3 has dir_bytes and written_bytes; no piece_bytes. */
#define OLD_HEADER_BYTES (offsetof(struct snap_header, dir_bytes) + 2 * sizeof(uint64_t))

/* Versions 1, 2: crc32c arrays padded to 8 bytes so that every record stays 8-byte aligned. */
static size_t sums_bytes(size_t n_chunks)
{
    return 4 * align_up(n_chunks, 2);
}

/* Versions 3, 4: a record's chunk names, then its piece checks: a BLAKE3-256 each (version 3)
 * or a crc32c each (version 4, padded); a multiple of 8 bytes. */
static size_t checks_bytes(uint32_t version, size_t n_chunks, size_t size)
{
    size_t pieces = rp_chunk_count(size, RP_PIECE_BYTES);
    return RP_HASH_BYTES * n_chunks + (version == 3 ? RP_HASH_BYTES * pieces : sums_bytes(pieces));
}

static size_t record_bytes(uint32_t version, const struct snap_record *r)
{
    return sizeof(*r) + r->n_mappings * sizeof(struct snap_mapping) +
           (version >= 3 ? checks_bytes(version, r->n_chunks, r->size) : sums_bytes(r->n_chunks));
}

static uint32_t version_of(const char *table)
{
    return ((const struct snap_header *)table)->version;
}

static int is_chunked(const char *table)
{
    return version_of(table) >= 3;
}

const struct snap_record *rp_snapshot_first(const char *table)
{
    const struct snap_header *h = (const struct snap_header *)table;
    return (const struct snap_record *)(table + sizeof(*h) + h->dir_bytes);
}

const struct snap_mapping *rp_snapshot_mappings(const struct snap_record *r)
{
    return (const struct snap_mapping *)(r + 1);
}

const struct snap_record *rp_snapshot_next(const char *table, const struct snap_record *r)
{
    return (const struct snap_record *)((const char *)r + record_bytes(version_of(table), r));
}

/* What follows a record's mappings: versions 3, 4: the chunk names, then the piece checks;
 * versions 1, 2: the crc32c values. */
static uint8_t *after_mappings(const struct snap_record *r)
{
    return (uint8_t *)(rp_snapshot_mappings(r) + r->n_mappings);
}

/* Versions 3, 4: where the piece checks start. */
static uint8_t *piece_checks(const struct snap_record *r)
{
    return after_mappings(r) + (size_t)r->n_chunks * RP_HASH_BYTES;
}

const uint8_t *rp_snapshot_names(const char *table, const struct snap_record *r)
{
    return is_chunked(table) ? after_mappings(r) : NULL;
}

const uint32_t *rp_snapshot_sums(const char *table, const struct snap_record *r)
{
    uint32_t version = version_of(table);
    return version == 4 ? (const uint32_t *)piece_checks(r)
         : version < 3  ? (const uint32_t *)after_mappings(r)
                        : NULL;
}

const uint8_t *rp_snapshot_pieces(const char *table, const struct snap_record *r)
{
    return version_of(table) == 3 ? piece_checks(r) : NULL;
}

size_t rp_snapshot_check_bytes(const char *table)
{
    return is_chunked(table) ? RP_PIECE_BYTES : ((const struct snap_header *)table)->chunk_bytes;
}

const char *rp_snapshot_check_name(const char *table)
{
    return version_of(table) == 3 ? "BLAKE3" : "crc32c";
}

void rp_snapshot_source(const char *table, const struct snap_record *r, int fd,
                        struct rp_chunk_store *chunks, struct rp_transfer *t)
{
    const struct snap_header *h = (const struct snap_header *)table;
    t->bytes = r->size;
    if (is_chunked(table)) {
        t->fd = -1;
        t->chunks = chunks;
        t->hashes = after_mappings(r);
        t->pieces = h->version == 3 ? piece_checks(r) : NULL;
        t->piece_crcs = h->version == 3 ? NULL : (uint32_t *)piece_checks(r);
        t->chunk_file_bytes = h->chunk_bytes;
    } else {
        t->fd = fd;
        t->file_offset = (off_t)r->data_offset;
        t->checksums = (uint32_t *)(rp_snapshot_mappings(r) + r->n_mappings);
        t->checksum_bytes = h->chunk_bytes;
    }
}

/* dir resolved against the folder of table_path unless it is absolute, into out. */
static void resolve_dir(const char *dir, const char *table_path, char *out, size_t len)
{
    if (dir[0] == '/' || !table_path) {
        snprintf(out, len, "%s", dir);
        return;
    }
    char copy[4096];
    snprintf(copy, sizeof(copy), "%s", table_path);
    snprintf(out, len, "%s/%s", dirname(copy), dir);
}

int rp_snapshot_open_chunks(const char *table, const char *table_path, struct rp_chunk_store *s,
                            char *err, size_t errlen)
{
    s->dirfd = -1;
    if (!is_chunked(table))
        return 0; /* the bytes are in the snapshot file itself */
    char folder[4200];
    resolve_dir(table + sizeof(struct snap_header), table_path, folder, sizeof(folder));
    return rp_chunks_open(s, folder, 0, 0, err, errlen);
}

/* ---- writing (version 4) ---- */

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

/* Copies the items' bytes out as chunks, one engine batch per run of items on one context. */
/* Runs the D2H transfers t[i] (one per item), one engine batch per run of items on the same
 * context; 0, or -1 with err naming the first record of the batch that failed. */
static int copy_out_by_context(struct rp_transfer *t, const struct rp_snap_item *items,
                               const struct snap_record *const *records, size_t count,
                               struct rp_engine_params p, char *err, size_t errlen)
{
    for (size_t start = 0, end; start < count; start = end) {
        for (end = start + 1; end < count && items[end].context == items[start].context;)
            end++;
        CUresult cr = rp_real.cuCtxSetCurrent(items[start].context);
        if (cr == CUDA_SUCCESS)
            cr = rp_engine_run_batch(&t[start], end - start, p, 1);
        if (cr != CUDA_SUCCESS) {
            const struct snap_record *r = records[start];
            int physical = r->kind == RP_SNAP_PHYSICAL;
            snprintf(err, errlen, "copying %s %#llx%s out failed: %s",
                     physical ? "GPU memory handle" : "allocation",
                     (unsigned long long)(physical ? r->handle : r->address),
                     end - start > 1 ? " and the others on its context" : "", rp_error_name(cr));
            return -1;
        }
    }
    return 0;
}

static int write_chunks(const struct rp_snap_item *items, size_t count,
                        const struct snap_record *const *records, struct rp_chunk_store *chunks,
                        const struct rp_free_ranges *free_ranges, uint64_t *free_bytes,
                        struct rp_engine_params p, char *err, size_t errlen)
{
    struct rp_transfer *t = calloc(count ? count : 1, sizeof(*t));
    if (!t)
        return snprintf(err, errlen, "out of memory"), -1;
    for (size_t i = 0; i < count; i++) /* names and piece crc32c go straight into the table */
        t[i] = (struct rp_transfer){ .direction = RP_D2H, .device = items[i].source, .fd = -1,
                                     .bytes = records[i]->size, .chunks = chunks,
                                     .hashes = after_mappings(records[i]),
                                     .piece_crcs = (uint32_t *)piece_checks(records[i]),
                                     .chunk_file_bytes = p.chunk_bytes,
                                     /* the program's free blocks are its allocations' */
                                     .free = records[i]->kind == RP_SNAP_ALLOCATION
                                                 ? free_ranges : NULL,
                                     .free_base = records[i]->address };
    int rc = copy_out_by_context(t, items, records, count, p, err, errlen);
    for (size_t i = 0; i < count; i++)
        *free_bytes += t[i].free_bytes;
    free(t);
    return rc;
}

int rp_snapshot_write(const char *path, const char *chunk_dir, int sync,
                      const struct rp_snap_item *items, size_t count,
                      const struct rp_free_ranges *free_ranges, struct rp_engine_params p,
                      uint64_t *total, uint64_t *written, uint64_t *free_bytes, char *err,
                      size_t errlen)
{
    *total = *written = *free_bytes = 0;
    size_t dir_bytes = align_up(strlen(chunk_dir) + 1, 8);
    /* chunk files hold whole pieces (chunk_mb is whole MiB: this only guards odd callers) */
    p.chunk_bytes = align_up(p.chunk_bytes ? p.chunk_bytes : RP_PIECE_BYTES, RP_PIECE_BYTES);
    size_t table = sizeof(struct snap_header) + dir_bytes;
    for (size_t i = 0; i < count; i++) {
        struct snap_record r = items[i].record;
        r.n_chunks = (uint32_t)rp_chunk_count(r.size, p.chunk_bytes);
        table += record_bytes(RP_SNAP_VERSION, &r);
    }
    char folder[4200];
    struct rp_chunk_store chunks;
    char *buf = calloc(1, table);
    const struct snap_record **records = calloc(count ? count : 1, sizeof(*records));
    if (!buf || !records) {
        free(buf);
        free(records);
        return snprintf(err, errlen, "out of memory"), -1;
    }
    resolve_dir(chunk_dir, path, folder, sizeof(folder));
    if (rp_chunks_open(&chunks, folder, 1, sync, err, errlen) != 0) {
        free(buf);
        free(records);
        return -1;
    }
    struct snap_header *h = (struct snap_header *)buf;
    memcpy(h->magic, RP_SNAP_MAGIC, 8);
    h->version = RP_SNAP_VERSION;
    h->checksum_kind = RP_SNAP_BLAKE3_CRC32C;
    h->chunk_bytes = p.chunk_bytes;
    h->count = count;
    h->table_bytes = table;
    h->dir_bytes = dir_bytes;
    h->piece_bytes = RP_PIECE_BYTES;
    memcpy(buf + sizeof(*h), chunk_dir, strlen(chunk_dir));
    struct snap_record *r = (struct snap_record *)rp_snapshot_first(buf);
    for (size_t i = 0; i < count; i++, r = (struct snap_record *)rp_snapshot_next(buf, r)) {
        *r = items[i].record;
        r->data_offset = 0; /* the bytes are chunks */
        r->n_chunks = (uint32_t)rp_chunk_count(r->size, p.chunk_bytes);
        if (r->n_mappings)
            memcpy((void *)rp_snapshot_mappings(r), items[i].mappings,
                   r->n_mappings * sizeof(struct snap_mapping));
        records[i] = r;
        h->total_bytes += r->size;
    }
    int rc = write_chunks(items, count, records, &chunks, free_ranges, free_bytes, p, err, errlen);
    if (rc == 0 && rp_chunks_sync(&chunks) != 0) {
        snprintf(err, errlen, "syncing the chunk folder %.160s failed: %s", folder,
                 strerror(errno));
        rc = -1;
    }
    h->written_bytes = chunks.written_bytes;
    /* Last: the table names only chunks that are complete (renamed into place). No path: only
     * the chunks (PRECOPY). */
    if (rc == 0 && path)
        rc = write_table(path, buf, table, sync, err, errlen);
    *total = h->total_bytes;
    *written = h->written_bytes;
    rp_chunks_close(&chunks);
    free(records);
    free(buf);
    return rc;
}

/* ---- writing version 2 (the bytes inside the file), for OFFLOAD to a descriptor ---- */

#define RP_SNAP_CHECKSUM_BYTES RP_MIB /* what one crc32c covers in the version 2 written here */

int rp_snapshot_write_fd(int fd, const struct rp_snap_item *items, size_t count,
                         struct rp_engine_params p, uint64_t *total, char *err, size_t errlen)
{
    *total = 0;
    size_t table = OLD_HEADER_BYTES;
    for (size_t i = 0; i < count; i++) {
        struct snap_record r = items[i].record;
        r.n_chunks = (uint32_t)rp_chunk_count(r.size, RP_SNAP_CHECKSUM_BYTES);
        table += record_bytes(2, &r);
    }
    char *buf = calloc(1, table > sizeof(struct snap_header) ? table : sizeof(struct snap_header));
    struct rp_transfer *t = calloc(count ? count : 1, sizeof(*t));
    const struct snap_record **records = calloc(count ? count : 1, sizeof(*records));
    if (!buf || !t || !records) {
        free(buf);
        free(t);
        free(records);
        return snprintf(err, errlen, "out of memory"), -1;
    }
    struct snap_header *h = (struct snap_header *)buf; /* only its first OLD_HEADER_BYTES */
    memcpy(h->magic, RP_SNAP_MAGIC, 8);
    h->version = 2;
    h->checksum_kind = RP_SNAP_CRC32C;
    h->chunk_bytes = RP_SNAP_CHECKSUM_BYTES; /* copies go in p.chunk_bytes, a multiple of it */
    h->count = count;
    h->table_bytes = table;
    uint64_t data = align_up(table, RP_SNAP_ALIGN);
    struct snap_record *r = (struct snap_record *)(buf + OLD_HEADER_BYTES);
    for (size_t i = 0; i < count; i++) {
        *r = items[i].record;
        r->data_offset = data;
        r->n_chunks = (uint32_t)rp_chunk_count(r->size, RP_SNAP_CHECKSUM_BYTES);
        if (r->n_mappings)
            memcpy((void *)rp_snapshot_mappings(r), items[i].mappings,
                   r->n_mappings * sizeof(struct snap_mapping));
        records[i] = r;
        t[i] = (struct rp_transfer){ .direction = RP_D2H, .device = items[i].source, .fd = fd,
                                     .file_offset = (off_t)data, .bytes = r->size,
                                     .checksums = (uint32_t *)(rp_snapshot_mappings(r) +
                                                               r->n_mappings),
                                     .checksum_bytes = RP_SNAP_CHECKSUM_BYTES };
        h->total_bytes += r->size;
        data = align_up(data + r->size, RP_SNAP_ALIGN);
        r = (struct snap_record *)((char *)r + record_bytes(2, r));
    }
    int rc = copy_out_by_context(t, items, records, count, p, err, errlen);
    /* Last: the table, so that a file cut short by a failure is never a valid snapshot. */
    if (rc == 0 && pwrite(fd, buf, table, 0) != (ssize_t)table) {
        snprintf(err, errlen, "writing the snapshot table failed: %s", strerror(errno));
        rc = -1;
    }
    *total = h->total_bytes;
    free(records);
    free(t);
    free(buf);
    return rc;
}

/* ---- reading (every version) ---- */

/* Version 1's record: an allocation, its checksums after it. */
struct snap_record_v1 {
    uint64_t address;
    uint64_t size;
    uint64_t reserved;
    uint64_t data_offset;
    int32_t device;
    uint32_t n_chunks;
};

/* A version 1 table (old header, then v1 records) in the in-memory layout: version 3's header
 * saying version 2, then version 2's records (every one an allocation without mappings). */
static char *upgrade_v1(const char *old, struct snap_header *h, char *err, size_t errlen)
{
    size_t bytes = sizeof(*h), offset = OLD_HEADER_BYTES;
    for (uint64_t i = 0; i < h->count; i++) { /* sizes first: the old table's own bounds */
        const struct snap_record_v1 *r = (const void *)(old + offset);
        if (offset + sizeof(*r) > h->table_bytes ||
            offset + sizeof(*r) + sums_bytes(r->n_chunks) > h->table_bytes) {
            snprintf(err, errlen, "the snapshot table is damaged");
            return NULL;
        }
        offset += sizeof(*r) + sums_bytes(r->n_chunks);
        bytes += sizeof(struct snap_record) + sums_bytes(r->n_chunks);
    }
    char *table = calloc(1, bytes);
    if (!table) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->version = 2;
    h->table_bytes = bytes;
    memcpy(table, h, sizeof(*h));
    offset = OLD_HEADER_BYTES;
    struct snap_record *r = (struct snap_record *)rp_snapshot_first(table);
    for (uint64_t i = 0; i < h->count; i++, r = (struct snap_record *)rp_snapshot_next(table, r)) {
        const struct snap_record_v1 *v1 = (const void *)(old + offset);
        *r = (struct snap_record){ .address = v1->address, .size = v1->size,
                                   .reserved = v1->reserved, .data_offset = v1->data_offset,
                                   .device = v1->device, .n_chunks = v1->n_chunks,
                                   .kind = RP_SNAP_ALLOCATION };
        memcpy(after_mappings(r), v1 + 1, 4 * (size_t)v1->n_chunks);
        offset += sizeof(*v1) + sums_bytes(v1->n_chunks);
    }
    return table;
}

/* Every record lies inside the table and agrees with the header (a damaged table must not
 * send readers astray). */
static int table_sane(const char *table, const struct snap_header *h)
{
    int chunked = is_chunked(table);
    uint32_t version = version_of(table);
    size_t offset = sizeof(*h) + h->dir_bytes;
    for (uint64_t i = 0; i < h->count; i++) {
        const struct snap_record *r = (const void *)(table + offset);
        if (offset + sizeof(*r) > h->table_bytes || r->kind > RP_SNAP_PHYSICAL ||
            r->n_mappings > h->table_bytes / sizeof(struct snap_mapping) ||
            r->size > ((uint64_t)1 << 46) ||
            offset + record_bytes(version, r) > h->table_bytes ||
            (chunked && r->n_chunks != rp_chunk_count(r->size, h->chunk_bytes)))
            return 0;
        offset += record_bytes(version, r);
    }
    return !chunked || memchr(table + sizeof(*h), '\0', h->dir_bytes) != NULL;
}

static uint32_t checksum_kind_of(uint32_t version)
{
    return version == 4 ? RP_SNAP_BLAKE3_CRC32C : version == 3 ? RP_SNAP_BLAKE3 : RP_SNAP_CRC32C;
}

char *rp_snapshot_table(int fd, struct snap_header *h, char *err, size_t errlen)
{
    memset(h, 0, sizeof(*h));
    if (pread(fd, h, OLD_HEADER_BYTES, 0) != (ssize_t)OLD_HEADER_BYTES ||
        memcmp(h->magic, RP_SNAP_MAGIC, 8) != 0 || h->version < 1 ||
        h->version > RP_SNAP_VERSION || h->checksum_kind != checksum_kind_of(h->version)) {
        snprintf(err, errlen, "not a restoreprof snapshot (or a newer version: update "
                 "restoreprof)");
        return NULL;
    }
    int chunked = h->version >= 3;
    size_t header = chunked ? sizeof(*h) : OLD_HEADER_BYTES;
    if (chunked && pread(fd, h, sizeof(*h), 0) != (ssize_t)sizeof(*h)) {
        snprintf(err, errlen, "the snapshot table is truncated");
        return NULL;
    }
    if (!chunked) /* the old header's reserved bytes: no chunk folder */
        h->dir_bytes = h->written_bytes = h->piece_bytes = 0;
    if (h->table_bytes < header || h->table_bytes > ((uint64_t)1 << 34) ||
        h->chunk_bytes == 0 ||
        (chunked && (h->dir_bytes == 0 || h->dir_bytes > 4096 ||
                     h->table_bytes < header + h->dir_bytes || h->piece_bytes != RP_PIECE_BYTES ||
                     h->chunk_bytes % RP_PIECE_BYTES))) {
        snprintf(err, errlen, "the snapshot table's header is damaged");
        return NULL;
    }
    char *file = malloc(h->table_bytes);
    if (!file || pread(fd, file, h->table_bytes, 0) != (ssize_t)h->table_bytes) {
        snprintf(err, errlen, "the snapshot table is truncated");
        free(file);
        return NULL;
    }
    if (h->version == 1) {
        char *table = upgrade_v1(file, h, err, errlen);
        free(file);
        return table;
    }
    char *table = file;
    if (!chunked) { /* version 2: the records behind the longer header */
        size_t bytes = h->table_bytes - OLD_HEADER_BYTES + sizeof(*h);
        table = calloc(1, bytes);
        if (table) {
            memcpy(table + sizeof(*h), file + OLD_HEADER_BYTES, h->table_bytes - OLD_HEADER_BYTES);
            h->table_bytes = bytes;
            memcpy(table, h, sizeof(*h));
        }
        free(file);
        if (!table) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
    }
    if (!table_sane(table, h)) {
        snprintf(err, errlen, "the snapshot table is damaged");
        free(table);
        return NULL;
    }
    return table;
}
