/*
 * The snapshot file format: written at OFFLOAD (control.c), read at RELOAD (control.c) and by the
 * preload (preload.c). Layout: header, then one record (plus its chunk checksums) per
 * allocation, then each allocation's bytes at a 4 KiB-aligned offset (for O_DIRECT readers).
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

static size_t table_bytes(const struct rp_allocation *items, size_t count, size_t chunk)
{
    size_t n = sizeof(struct snap_header);
    for (size_t i = 0; i < count; i++)
        n += sizeof(struct snap_record) + sums_bytes(rp_chunk_count(items[i].size, chunk));
    return n;
}

/* Writes every allocation's bytes and the table; leaves the memory mapped. */
int rp_snapshot_write(int fd, const struct rp_allocation *items, size_t count,
                      struct rp_engine_params p, uint64_t *total, char *err, size_t errlen)
{
    size_t table = table_bytes(items, count, RP_SNAP_CHECKSUM_BYTES);
    char *buf = calloc(1, table);
    if (!buf)
        return snprintf(err, errlen, "out of memory"), -1;
    struct snap_header *h = (struct snap_header *)buf;
    memcpy(h->magic, RP_SNAP_MAGIC, 8);
    h->version = RP_SNAP_VERSION;
    h->checksum_kind = RP_SNAP_CRC32C;
    h->chunk_bytes = RP_SNAP_CHECKSUM_BYTES; /* copies go in p.chunk_bytes, a multiple of it */
    h->count = count;
    h->table_bytes = table;
    uint64_t data = align_up(table, RP_SNAP_ALIGN);
    char *cursor = buf + sizeof(*h);
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const struct rp_allocation *a = &items[i];
        struct snap_record *r = (struct snap_record *)cursor;
        uint32_t *sums = (uint32_t *)(r + 1);
        *r = (struct snap_record){ a->address, a->size, a->reserved, data, a->device,
                                   (uint32_t)rp_chunk_count(a->size, RP_SNAP_CHECKSUM_BYTES) };
        cursor = (char *)sums + sums_bytes(r->n_chunks);
        struct rp_transfer t = { .direction = RP_D2H, .device = a->address, .fd = fd,
                                 .file_offset = (off_t)data, .bytes = a->size, .checksums = sums,
                                 .checksum_bytes = RP_SNAP_CHECKSUM_BYTES };
        CUresult cr = rp_real.cuCtxSetCurrent(a->context);
        if (cr == CUDA_SUCCESS)
            cr = rp_engine_run(&t, p, 1);
        if (cr != CUDA_SUCCESS) {
            snprintf(err, errlen, "copying %#llx (%zu bytes) out failed: %s",
                     (unsigned long long)a->address, a->size, rp_error_name(cr));
            rc = -1;
        }
        h->total_bytes += a->size;
        data = align_up(data + a->size, RP_SNAP_ALIGN);
    }
    if (rc == 0 && pwrite(fd, buf, table, 0) != (ssize_t)table) {
        snprintf(err, errlen, "writing the snapshot table failed: %s", strerror(errno));
        rc = -1;
    }
    *total = h->total_bytes;
    free(buf);
    return rc;
}

char *rp_snapshot_table(int fd, struct snap_header *h, char *err, size_t errlen)
{
    if (pread(fd, h, sizeof(*h), 0) != sizeof(*h) || memcmp(h->magic, RP_SNAP_MAGIC, 8) != 0 ||
        h->version != RP_SNAP_VERSION || h->checksum_kind != RP_SNAP_CRC32C) {
        snprintf(err, errlen, "not a restoreprof snapshot (or another version)");
        return NULL;
    }
    char *table = malloc(h->table_bytes);
    if (!table || pread(fd, table, h->table_bytes, 0) != (ssize_t)h->table_bytes) {
        snprintf(err, errlen, "the snapshot table is truncated");
        free(table);
        return NULL;
    }
    return table;
}

const struct snap_record *rp_snapshot_next(const struct snap_record *r)
{
    return (const struct snap_record *)((const char *)(r + 1) + sums_bytes(r->n_chunks));
}
