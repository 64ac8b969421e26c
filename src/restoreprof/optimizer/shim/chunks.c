/*
 * Content-addressed chunk folders: <folder>/<hh>/<64 hex digits of the chunk's name>, the name
 * being the BLAKE3-256 of the BLAKE3-256 of each MiB piece (rp_chunk_name). The snapshot's table
 * holds a check per piece (a crc32c since version 4, the piece's BLAKE3 in version 3), so a
 * restore checks any MiB-aligned part of a chunk on its own.
 *
 * Each engine thread writes its own chunks to their own files, so offloads are no longer
 * serialized on one file's inode lock (one file: 2.4 GB/s into the page cache on the H200;
 * benchmarks/bench_parallel_write.py measures files side by side). A chunk is written under a
 * temporary name and renamed: a name, once there, always holds a complete chunk, whatever
 * crashes; a chunk already there is not written again (dedup, incremental checkpoints). The
 * contents are never trusted by name: every reader checks them against the table's piece checks
 * (or, restoreprof store verify, against the name itself).
 */
#define _GNU_SOURCE
#include "shim.h"

#include "blake3.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void rp_hash(const void *data, size_t n, uint8_t out[RP_HASH_BYTES])
{
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, data, n);
    blake3_hasher_finalize(&h, out, RP_HASH_BYTES);
}

int rp_piece_matches(const void *data, size_t n, const uint32_t *crc, const uint8_t *hash)
{
    if (crc)
        return rp_crc32c(0, data, n) == *crc;
    uint8_t got[RP_HASH_BYTES];
    rp_hash(data, n, got);
    return memcmp(got, hash, RP_HASH_BYTES) == 0;
}

void rp_hash_hex(const uint8_t hash[RP_HASH_BYTES], char out[2 * RP_HASH_BYTES + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < RP_HASH_BYTES; i++) {
        out[2 * i] = digits[hash[i] >> 4];
        out[2 * i + 1] = digits[hash[i] & 15];
    }
    out[2 * RP_HASH_BYTES] = '\0';
}

int rp_chunks_open(struct rp_chunk_store *s, const char *path, int create, int sync, char *err,
                   size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->dirfd = -1;
    s->sync = sync;
    if (create && mkdir(path, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot make the chunk folder %.200s: %s", path, strerror(errno));
        return -1;
    }
    s->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        snprintf(err, errlen, "cannot open the chunk folder %.200s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

void rp_chunks_close(struct rp_chunk_store *s)
{
    if (s->dirfd >= 0)
        close(s->dirfd);
    s->dirfd = -1;
}

/* "hh/<hex>" for hash. */
static void chunk_name(const uint8_t hash[RP_HASH_BYTES], char *out, size_t len)
{
    char hex[2 * RP_HASH_BYTES + 1];
    rp_hash_hex(hash, hex);
    snprintf(out, len, "%.2s/%s", hex, hex);
}

int rp_chunks_put(struct rp_chunk_store *s, const uint8_t hash[RP_HASH_BYTES], const void *data,
                  size_t n)
{
    char name[2 * RP_HASH_BYTES + 8], tmp[sizeof(name) + 64];
    struct stat st;
    chunk_name(hash, name, sizeof(name));
    if (fstatat(s->dirfd, name, &st, 0) == 0 && (size_t)st.st_size == n) {
        atomic_fetch_add(&s->reused_bytes, n);
        return 0; /* complete (renamed into place); its contents are checked when read */
    }
    char sub[3] = { name[0], name[1], '\0' };
    if (mkdirat(s->dirfd, sub, 0700) != 0 && errno != EEXIST)
        return -1;
    /* Unique per thread and call: two threads may store the same chunk (zeros) at once. */
    static _Atomic unsigned long serial;
    snprintf(tmp, sizeof(tmp), "%s/.tmp-%d-%lu", sub, (int)getpid(),
             atomic_fetch_add(&serial, 1));
    int fd = openat(s->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = rp_pwrite_full(fd, data, n, 0); /* a new file */
    if (rc == 0 && s->sync)
        rc = fsync(fd);
    int saved = errno;
    if (close(fd) != 0 && rc == 0)
        rc = -1, saved = errno;
    /* Another thread may have put the same chunk meanwhile (zeros, a repeated tensor): then it
     * is reused, not written twice in the count. A chunk of the wrong size there is replaced. */
    int raced = 0;
    if (rc == 0 && renameat2(s->dirfd, tmp, s->dirfd, name, RENAME_NOREPLACE) != 0) {
        if (errno == EEXIST && fstatat(s->dirfd, name, &st, 0) == 0 && (size_t)st.st_size == n)
            raced = 1;
        else if ((errno == EEXIST || errno == EINVAL || errno == ENOSYS) &&
                 renameat(s->dirfd, tmp, s->dirfd, name) == 0)
            ; /* replaced a damaged one, or no RENAME_NOREPLACE on this file system */
        else
            rc = -1, saved = errno;
    }
    if (rc != 0 || raced) {
        unlinkat(s->dirfd, tmp, 0);
        errno = saved;
        if (rc != 0)
            return -1;
        atomic_fetch_add(&s->reused_bytes, n);
        return 0;
    }
    atomic_store(&s->touched[hash[0]], 1);
    atomic_fetch_add(&s->written_bytes, n);
    return 0;
}

int rp_chunks_read(struct rp_chunk_store *s, const uint8_t hash[RP_HASH_BYTES], size_t size,
                   void *buf, size_t len, size_t offset)
{
    char name[2 * RP_HASH_BYTES + 8];
    struct stat st;
    chunk_name(hash, name, sizeof(name));
    int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fstat(fd, &st);
    if (rc == 0 && (size_t)st.st_size != size)
        rc = -1, errno = EBADMSG;
    if (rc == 0)
        rc = rp_pread_full(fd, buf, len, (off_t)offset);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

void rp_chunk_name(const void *data, size_t n, uint8_t *pieces, uint32_t *crcs,
                   uint8_t name[RP_HASH_BYTES])
{
    /* The name hashes the pieces' hashes as a stream: no buffer of them is needed when the
     * caller keeps none (version 4 tables keep only the crc32c). */
    blake3_hasher outer;
    blake3_hasher_init(&outer);
    size_t count = (n + RP_PIECE_BYTES - 1) / RP_PIECE_BYTES;
    for (size_t i = 0; i < count; i++) {
        size_t at = i * RP_PIECE_BYTES;
        size_t len = n - at < RP_PIECE_BYTES ? n - at : RP_PIECE_BYTES;
        const char *piece = (const char *)data + at;
        uint8_t hash[RP_HASH_BYTES];
        rp_hash(piece, len, hash);
        blake3_hasher_update(&outer, hash, RP_HASH_BYTES);
        if (pieces)
            memcpy(pieces + i * RP_HASH_BYTES, hash, RP_HASH_BYTES);
        if (crcs) /* the piece is in cache now, after its hash */
            crcs[i] = rp_crc32c(0, piece, len);
    }
    blake3_hasher_finalize(&outer, name, RP_HASH_BYTES);
}

int rp_chunks_sync(struct rp_chunk_store *s)
{
    if (!s->sync)
        return 0;
    for (int i = 0; i < 256; i++) {
        if (!atomic_load(&s->touched[i]))
            continue;
        char sub[8];
        snprintf(sub, sizeof(sub), "%02x", i);
        int fd = openat(s->dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) {
            int saved = errno;
            if (fd >= 0)
                close(fd);
            errno = saved;
            return -1;
        }
        close(fd);
    }
    return fsync(s->dirfd);
}

/* BLAKE3-256, and a chunk's name, for restoreprof's Python side (ctypes: the GIL is released
 * while they run), so that the store's export and check use the code that named the chunks. */
RP_EXPORT void rp_blake3(const void *data, size_t n, uint8_t *out)
{
    rp_hash(data, n, out);
}

RP_EXPORT int rp_blake3_chunk_name(const void *data, size_t n, uint8_t *out)
{
    rp_chunk_name(data, n, NULL, NULL, out);
    return 0;
}

/* BLAKE3-256 of length bytes of fd from offset, read in 4 MiB blocks on the calling thread:
 * one call per segment of a checkpoint's images (checkpoint/manifest.py), so a Python thread
 * hashing a 32 MiB segment gives the GIL up once, not twice per MiB. 0, or -1 with errno
 * (EIO for a file shorter than offset + length). */
RP_EXPORT int rp_blake3_file(int fd, uint64_t offset, uint64_t length, uint8_t *out)
{
    enum { BLOCK = 4 << 20 };
    uint8_t *buffer = malloc(length < BLOCK ? (length ? length : 1) : BLOCK);
    if (!buffer)
        return -1;
    blake3_hasher h;
    blake3_hasher_init(&h);
    uint64_t done = 0;
    int rc = 0;
    while (done < length) {
        size_t want = length - done < BLOCK ? (size_t)(length - done) : BLOCK;
        ssize_t n = pread(fd, buffer, want, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            rc = -1;
            break;
        }
        blake3_hasher_update(&h, buffer, (size_t)n);
        done += (uint64_t)n;
    }
    free(buffer);
    if (rc == 0)
        blake3_hasher_finalize(&h, out, RP_HASH_BYTES);
    return rc;
}
