/*
 * The snapshot file format: written at OFFLOAD (control.c), read at RELOAD (control.c) and by the
 * preload (preload.c). Layout: header, then one record (plus its mappings and chunk checksums)
 * per allocation, then each allocation's bytes at a 4 KiB-aligned offset (for O_DIRECT readers).
 *
 * Version 2 added the record's kind (an allocation of the library's, or a physical allocation
 * of the application's with its handle, properties and mappings). Version 1 files are still
 * read: their table is converted to version 2's layout on load.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* Checksum arrays are padded to 8 bytes so that every record stays 8-byte aligned. */
static size_t sums_bytes(size_t n_chunks)
{
    return 4 * align_up(n_chunks, 2);
}

static size_t record_bytes(uint32_t n_mappings, size_t n_chunks)
{
    return sizeof(struct snap_record) + n_mappings * sizeof(struct snap_mapping) +
           sums_bytes(n_chunks);
}

static size_t table_bytes(const struct rp_snap_item *items, size_t count, size_t chunk)
{
    size_t n = sizeof(struct snap_header);
    for (size_t i = 0; i < count; i++)
        n += record_bytes(items[i].record.n_mappings, rp_chunk_count(items[i].record.size, chunk));
    return n;
}

const struct snap_record *rp_snapshot_first(const char *table)
{
    return (const struct snap_record *)(table + sizeof(struct snap_header));
}

const struct snap_mapping *rp_snapshot_mappings(const struct snap_record *r)
{
    return (const struct snap_mapping *)(r + 1);
}

uint32_t *rp_snapshot_sums(const struct snap_record *r)
{
    return (uint32_t *)(rp_snapshot_mappings(r) + r->n_mappings);
}

const struct snap_record *rp_snapshot_next(const struct snap_record *r)
{
    return (const struct snap_record *)((const char *)r + record_bytes(r->n_mappings, r->n_chunks));
}

/* Copies the items' bytes out, one engine batch per run of items on the same context. */
static int write_data(int fd, const struct rp_snap_item *items, size_t count,
                      const struct snap_record *const *records, struct rp_engine_params p,
                      char *err, size_t errlen)
{
    struct rp_transfer *t = calloc(count ? count : 1, sizeof(*t));
    if (!t)
        return snprintf(err, errlen, "out of memory"), -1;
    for (size_t i = 0; i < count; i++)
        t[i] = (struct rp_transfer){ .direction = RP_D2H, .device = items[i].source, .fd = fd,
                                     .file_offset = (off_t)records[i]->data_offset,
                                     .bytes = records[i]->size,
                                     .checksums = rp_snapshot_sums(records[i]),
                                     .checksum_bytes = RP_SNAP_CHECKSUM_BYTES };
    int rc = 0;
    for (size_t start = 0, end; start < count && rc == 0; start = end) {
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
            rc = -1;
        }
    }
    free(t);
    return rc;
}

/* Writes every item's bytes and the table; leaves the memory mapped. */
int rp_snapshot_write(int fd, const struct rp_snap_item *items, size_t count,
                      struct rp_engine_params p, uint64_t *total, char *err, size_t errlen)
{
    size_t table = table_bytes(items, count, RP_SNAP_CHECKSUM_BYTES);
    char *buf = calloc(1, table);
    const struct snap_record **records = calloc(count ? count : 1, sizeof(*records));
    if (!buf || !records) {
        free(buf);
        free(records);
        return snprintf(err, errlen, "out of memory"), -1;
    }
    struct snap_header *h = (struct snap_header *)buf;
    memcpy(h->magic, RP_SNAP_MAGIC, 8);
    h->version = RP_SNAP_VERSION;
    h->checksum_kind = RP_SNAP_CRC32C;
    h->chunk_bytes = RP_SNAP_CHECKSUM_BYTES; /* copies go in p.chunk_bytes, a multiple of it */
    h->count = count;
    h->table_bytes = table;
    uint64_t data = align_up(table, RP_SNAP_ALIGN);
    struct snap_record *r = (struct snap_record *)(buf + sizeof(*h));
    for (size_t i = 0; i < count; i++, r = (struct snap_record *)rp_snapshot_next(r)) {
        *r = items[i].record;
        r->data_offset = data;
        r->n_chunks = (uint32_t)rp_chunk_count(r->size, RP_SNAP_CHECKSUM_BYTES);
        if (r->n_mappings)
            memcpy((void *)rp_snapshot_mappings(r), items[i].mappings,
                   r->n_mappings * sizeof(struct snap_mapping));
        records[i] = r;
        h->total_bytes += r->size;
        data = align_up(data + r->size, RP_SNAP_ALIGN);
    }
    int rc = write_data(fd, items, count, records, p, err, errlen);
    if (rc == 0 && pwrite(fd, buf, table, 0) != (ssize_t)table) {
        snprintf(err, errlen, "writing the snapshot table failed: %s", strerror(errno));
        rc = -1;
    }
    *total = h->total_bytes;
    free(records);
    free(buf);
    return rc;
}

/* Version 1's record: an allocation, its checksums after it. */
struct snap_record_v1 {
    uint64_t address;
    uint64_t size;
    uint64_t reserved;
    uint64_t data_offset;
    int32_t device;
    uint32_t n_chunks;
};

/* A version 1 table in version 2's layout (every record an allocation without mappings). */
static char *upgrade_v1(char *old, struct snap_header *h, char *err, size_t errlen)
{
    size_t bytes = sizeof(*h), offset = sizeof(*h);
    for (uint64_t i = 0; i < h->count; i++) { /* sizes first: the old table's own bounds */
        const struct snap_record_v1 *r = (const void *)(old + offset);
        if (offset + sizeof(*r) > h->table_bytes ||
            offset + sizeof(*r) + sums_bytes(r->n_chunks) > h->table_bytes) {
            snprintf(err, errlen, "the snapshot table is damaged");
            free(old);
            return NULL;
        }
        offset += sizeof(*r) + sums_bytes(r->n_chunks);
        bytes += record_bytes(0, r->n_chunks);
    }
    char *table = calloc(1, bytes);
    if (!table) {
        snprintf(err, errlen, "out of memory");
        free(old);
        return NULL;
    }
    memcpy(table, h, sizeof(*h));
    offset = sizeof(*h);
    struct snap_record *r = (struct snap_record *)(table + sizeof(*h));
    for (uint64_t i = 0; i < h->count; i++, r = (struct snap_record *)rp_snapshot_next(r)) {
        const struct snap_record_v1 *v1 = (const void *)(old + offset);
        *r = (struct snap_record){ .address = v1->address, .size = v1->size,
                                   .reserved = v1->reserved, .data_offset = v1->data_offset,
                                   .device = v1->device, .n_chunks = v1->n_chunks,
                                   .kind = RP_SNAP_ALLOCATION };
        memcpy(rp_snapshot_sums(r), v1 + 1, 4 * (size_t)v1->n_chunks);
        offset += sizeof(*v1) + sums_bytes(v1->n_chunks);
    }
    free(old);
    h->version = RP_SNAP_VERSION;
    h->table_bytes = bytes;
    memcpy(table, h, sizeof(*h));
    return table;
}

/* Every record lies inside the table (a damaged table must not send readers astray). */
static int table_sane(const char *table, const struct snap_header *h)
{
    size_t offset = sizeof(*h);
    for (uint64_t i = 0; i < h->count; i++) {
        const struct snap_record *r = (const void *)(table + offset);
        if (offset + sizeof(*r) > h->table_bytes ||
            offset + record_bytes(r->n_mappings, r->n_chunks) > h->table_bytes ||
            r->kind > RP_SNAP_PHYSICAL)
            return 0;
        offset += record_bytes(r->n_mappings, r->n_chunks);
    }
    return 1;
}

char *rp_snapshot_table(int fd, struct snap_header *h, char *err, size_t errlen)
{
    if (pread(fd, h, sizeof(*h), 0) != sizeof(*h) || memcmp(h->magic, RP_SNAP_MAGIC, 8) != 0 ||
        h->version < 1 || h->version > RP_SNAP_VERSION || h->checksum_kind != RP_SNAP_CRC32C) {
        snprintf(err, errlen, "not a restoreprof snapshot (or a newer version: update "
                 "restoreprof)");
        return NULL;
    }
    if (h->table_bytes < sizeof(*h) || h->table_bytes > ((uint64_t)1 << 34)) {
        snprintf(err, errlen, "the snapshot table is damaged");
        return NULL;
    }
    char *table = malloc(h->table_bytes);
    if (!table || pread(fd, table, h->table_bytes, 0) != (ssize_t)h->table_bytes) {
        snprintf(err, errlen, "the snapshot table is truncated");
        free(table);
        return NULL;
    }
    if (h->version == 1)
        return upgrade_v1(table, h, err, errlen);
    if (!table_sane(table, h)) {
        snprintf(err, errlen, "the snapshot table is damaged");
        free(table);
        return NULL;
    }
    return table;
}
