/*
 * Where the page-cache path to the GPU loses against the link (issue 14): one snapshot-like
 * folder of 2 MiB chunk files, each MiB piece with its crc32c (as restoreprof's store keeps
 * them), loaded into one device allocation by T threads, each with two pinned staging slots
 * (2 MiB unless a row says otherwise) and one of 4 shared streams ("own": one each).
 *
 *   /tmp/diag DIR GIB SHIM_SO [slots|mapped [THREADS...]]      (gcc -O2 -pthread ... -ldl)
 *
 * slots: the link against each way of filling the staging, by slot and granule size
 *   dma        the DMA of the slots alone, nothing read: the link with DMAs of this size
 *   memcpy     T threads copying pageable memory (1 GiB in all) into their slots
 *   engine     what restoreprof's engine does: pread a chunk file into a slot, crc32c its
 *              pieces, send the slot (with a slot of several chunk files: all of them, then send)
 *   gNNN       pread and crc32c NNN KiB at a time (each granule checked while it is still in
 *              the core's cache), then send the slot
 *   gNNN-eager the same, each MiB piece sent as soon as it is checked
 *   cpu-...    a way without any DMA: what the CPU side gives alone
 * mapped: reading the page cache without pread
 *   mapped     each chunk mapped (MAP_POPULATE), checked there, copied into the slot, unmapped
 *   map-on-use each chunk mapped by the thread that takes it, each granule (256 KiB) copied
 *              into the slot and checked there; unmapped after the run (that time printed)
 *   registered each chunk mapped and registered with the driver (read-only), checked where it
 *              lies and sent from there: no copy; unregistered and unmapped after the run
 *   premapped  every chunk mapped once before these rows; each granule copied and checked as
 *              in map-on-use
 *
 * SHIM_SO is restoreprof's interception library (its rp_crc32c is the engine's). Each row: the
 * median GB/s of three runs and their range, and whether every piece matched its crc32c. A
 * diagnostic for the engine's design, not a product path; results in benchmarks/RESULTS.md.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (2u << 20)
#define PIECE (1u << 20)

typedef int CUresult;
typedef void *CUcontext, *CUstream, *CUevent;
typedef unsigned long long CUdeviceptr;
static CUresult (*cuInit)(unsigned);
static CUresult (*cuDeviceGet)(int *, int);
static CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, int);
static CUresult (*cuCtxSetCurrent)(CUcontext);
static CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*cuMemHostAlloc)(void **, size_t, unsigned);
static CUresult (*cuStreamCreate)(CUstream *, unsigned);
static CUresult (*cuEventCreate)(CUevent *, unsigned);
static CUresult (*cuEventRecord)(CUevent, CUstream);
static CUresult (*cuEventSynchronize)(CUevent);
static CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
static CUresult (*cuMemHostRegister)(void *, size_t, unsigned);
static CUresult (*cuMemHostUnregister)(void *);
#define READ_ONLY_REGISTRATION 0x08 /* CU_MEMHOSTREGISTER_READ_ONLY */
static uint32_t (*rp_crc32c)(uint32_t, const void *, size_t);

#define CHECK(call)                                                                         \
    do {                                                                                    \
        CUresult rc_ = (call);                                                              \
        if (rc_) {                                                                          \
            fprintf(stderr, "%s: %d\n", #call, rc_);                                        \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

static void *need(void *lib, const char *name)
{
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "no %s\n", name);
        exit(1);
    }
    return f;
}

static const char *dir;
static size_t n_files;
static uint32_t *crcs; /* two per file */
static CUcontext ctx;
#define SOURCE_CHUNKS 512 /* 1 GiB of pageable memory: beyond any cache */
static char *source;
static CUdeviceptr device;

enum way { ENGINE, MAPPED, PREMAPPED, MAP_ON_USE, REGISTERED, GRANULE, GRANULE_EAGER, DMA_ONLY, MEMCPY };
struct run {
    enum way way;
    size_t granule;
    int dma;
    int threads;
    size_t slot;  /* bytes of each staging buffer: one DMA each (the eager ways: one a piece) */
    int streams;  /* shared by the threads in turn; 0: a stream of each thread's own */
    atomic_size_t next;
    atomic_int bad;
};

#define MAX_THREADS 32
#define MAX_SLOT (32u << 20)
struct slot {
    char *buf;
    CUevent done;
    int pending;
};
static struct slot pinned[2 * MAX_THREADS]; /* made once, before any timing */
static CUstream streams[2 * MAX_THREADS];   /* [0, MAX_THREADS): shared; then each thread's */
struct worker {
    struct run *run;
    int id;
    struct slot *slots;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int open_chunk(size_t i)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%03zx/%06zx", dir, i & 0xfff, i);
    return open(path, O_RDONLY | O_CLOEXEC);
}

static void read_full(int fd, char *buf, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pread(fd, buf, len, off);
        if (n <= 0) {
            perror("pread");
            exit(1);
        }
        buf += n, len -= (size_t)n, off += n;
    }
}

static void settle(struct slot *s)
{
    if (s->pending)
        CHECK(cuEventSynchronize(s->done));
    s->pending = 0;
}

static char **premapped; /* each chunk file's mapping, where a way maps them */

/* Chunk file i mapped, its pages populated (from the page cache). */
static char *map_chunk(size_t i)
{
    int fd = open_chunk(i);
    char *m = fd < 0 ? MAP_FAILED
                     : mmap(NULL, CHUNK, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    close(fd);
    return m;
}

/* One file's bytes into buf, checked, the way r says; DMA of single pieces for the eager ways. */

static void fill_file(struct run *r, size_t i, char *buf, CUdeviceptr dst, CUstream stream)
{
    if (r->way == REGISTERED) { /* no copy: the page cache itself pinned, checked, sent */
        premapped[i] = map_chunk(i);
        CHECK(cuMemHostRegister(premapped[i], CHUNK, READ_ONLY_REGISTRATION));
        for (size_t p = 0; p < CHUNK / PIECE; p++)
            if (rp_crc32c(0, premapped[i] + p * PIECE, PIECE) != crcs[2 * i + p])
                atomic_store(&r->bad, 1);
        CHECK(cuMemcpyHtoDAsync(dst, premapped[i], CHUNK, stream));
        return;
    }
    if (r->way == PREMAPPED || r->way == MAP_ON_USE) {
        /* copied a granule at a time, each checked in staging while it is in the core's cache
         * (the bytes checked are the bytes sent); MAP_ON_USE maps the file first and leaves
         * it mapped until the run is over (unmapped after the timing) */
        if (r->way == MAP_ON_USE)
            premapped[i] = map_chunk(i);
        const char *m = premapped[i];
        for (size_t p = 0; p < CHUNK / PIECE; p++) {
            uint32_t crc = 0;
            for (size_t g = 0; g < PIECE; g += r->granule) {
                memcpy(buf + p * PIECE + g, m + p * PIECE + g, r->granule);
                crc = rp_crc32c(crc, buf + p * PIECE + g, r->granule);
            }
            if (crc != crcs[2 * i + p])
                atomic_store(&r->bad, 1);
        }
        return;
    }
    int fd = open_chunk(i);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || (size_t)st.st_size != CHUNK) {
        perror("chunk");
        exit(1);
    }
    if (r->way == MAPPED) {
        char *m = map_chunk(i);
        for (size_t p = 0; p < CHUNK / PIECE; p++) {
            if (rp_crc32c(0, m + p * PIECE, PIECE) != crcs[2 * i + p])
                atomic_store(&r->bad, 1);
            memcpy(buf + p * PIECE, m + p * PIECE, PIECE);
        }
        munmap(m, CHUNK);
    } else if (r->way == ENGINE) {
        read_full(fd, buf, CHUNK, 0);
        for (size_t p = 0; p < CHUNK / PIECE; p++)
            if (rp_crc32c(0, buf + p * PIECE, PIECE) != crcs[2 * i + p])
                atomic_store(&r->bad, 1);
    } else {
        for (size_t p = 0; p < CHUNK / PIECE; p++) {
            uint32_t crc = 0;
            for (size_t g = 0; g < PIECE; g += r->granule) {
                char *at = buf + p * PIECE + g;
                read_full(fd, at, r->granule, (off_t)(p * PIECE + g));
                crc = rp_crc32c(crc, at, r->granule);
            }
            if (crc != crcs[2 * i + p])
                atomic_store(&r->bad, 1);
            if (r->dma && r->way == GRANULE_EAGER)
                CHECK(cuMemcpyHtoDAsync(dst + p * PIECE, buf + p * PIECE, PIECE, stream));
        }
    }
    close(fd);
}

static void *worker(void *raw)
{
    struct worker *w = raw;
    struct run *r = w->run;
    struct slot *slots = w->slots;
    CUstream stream = streams[r->streams ? w->id % r->streams : MAX_THREADS + w->id];
    CHECK(cuCtxSetCurrent(ctx));
    size_t files = r->slot / CHUNK, units = n_files / files;
    int turn = 0;
    for (size_t u; (u = atomic_fetch_add(&r->next, 1)) < units; turn ^= 1) {
        struct slot *s = &slots[turn];
        settle(s);
        CUdeviceptr dst = device + u * (CUdeviceptr)r->slot;
        if (r->way == MEMCPY) {
            memcpy(s->buf, source + (u % (SOURCE_CHUNKS / files)) * r->slot, r->slot);
            continue;
        }
        if (r->way != DMA_ONLY)
            for (size_t f = 0; f < files; f++)
                fill_file(r, u * files + f, s->buf + f * CHUNK, dst + f * CHUNK, stream);
        if (r->dma && r->way != GRANULE_EAGER && r->way != REGISTERED)
            CHECK(cuMemcpyHtoDAsync(dst, s->buf, r->slot, stream));
        if (r->dma) {
            CHECK(cuEventRecord(s->done, stream));
            s->pending = 1;
        }
    }
    settle(&slots[0]);
    settle(&slots[1]);
    return NULL;
}

static double one_run(struct run *r, int *bad)
{
    struct worker w[MAX_THREADS];
    pthread_t t[MAX_THREADS];
    atomic_store(&r->next, 0);
    atomic_store(&r->bad, 0);
    double t0 = now();
    for (int k = 0; k < r->threads; k++) {
        w[k] = (struct worker){ r, k, &pinned[2 * k] };
        pthread_create(&t[k], NULL, worker, &w[k]);
    }
    for (int k = 0; k < r->threads; k++)
        pthread_join(t[k], NULL);
    double s = now() - t0;
    *bad |= atomic_load(&r->bad);
    return s;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void row(const char *name, enum way way, size_t granule, int dma, int threads,
                size_t slot_mib, int n_streams)
{
    struct run r = { .way = way, .granule = granule, .dma = dma, .threads = threads,
                     .slot = slot_mib << 20, .streams = n_streams };
    double s[3];
    int bad = 0;
    double unmap = 0;
    for (int k = 0; k < 3; k++) {
        s[k] = one_run(&r, &bad);
        if (way == MAP_ON_USE || way == REGISTERED) {
            double t0 = now();
            for (size_t i = 0; i < n_files; i++) {
                if (way == REGISTERED)
                    CHECK(cuMemHostUnregister(premapped[i]));
                munmap(premapped[i], CHUNK);
            }
            unmap += (now() - t0) / 3;
        }
    }
    qsort(s, 3, sizeof(double), by_value);
    double bytes = (double)n_files * CHUNK;
    char streams_text[16];
    snprintf(streams_text, sizeof(streams_text), n_streams ? "%d" : "own", n_streams);
    printf("%-12s threads %3d  slot %2zu MiB  streams %3s  %6.1f GB/s  (%.1f-%.1f)  %s\n", name,
           threads, slot_mib, streams_text, bytes / s[1] / 1e9, bytes / s[2] / 1e9,
           bytes / s[0] / 1e9,
           way == DMA_ONLY || way == MEMCPY ? "-" : bad ? "MISMATCH" : "checked");
    if (way == MAP_ON_USE || way == REGISTERED)
        printf("  (then every mapping %sunmapped, after each run: %.3f s)\n",
               way == REGISTERED ? "unregistered and " : "", unmap);
    fflush(stdout);
}

/* Writes the chunk files (random bytes, one folder per 4096) and records their crc32c; then
 * reads every file once so the page cache holds them all. */
static void make_files(void)
{
    char *buf = malloc(CHUNK);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n_files; i++) {
        for (size_t k = 0; k < CHUNK / 8; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            ((uint64_t *)buf)[k] = x;
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/%03zx", dir, i & 0xfff);
        mkdir(path, 0700);
        snprintf(path, sizeof(path), "%s/%03zx/%06zx", dir, i & 0xfff, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || write(fd, buf, CHUNK) != CHUNK) {
            perror(path);
            exit(1);
        }
        close(fd);
        crcs[2 * i] = rp_crc32c(0, buf, PIECE);
        crcs[2 * i + 1] = rp_crc32c(0, buf + PIECE, PIECE);
    }
    for (size_t i = 0; i < n_files; i++) {
        int fd = open_chunk(i);
        read_full(fd, buf, CHUNK, 0);
        close(fd);
    }
    free(buf);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s DIR GIB SHIM_SO [slots|mapped [THREADS...]]\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    n_files = (size_t)atoi(argv[2]) * 512;
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW), *shim = dlopen(argv[3], RTLD_NOW);
    if (!cuda || !shim) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    cuInit = need(cuda, "cuInit");
    cuDeviceGet = need(cuda, "cuDeviceGet");
    cuDevicePrimaryCtxRetain = need(cuda, "cuDevicePrimaryCtxRetain");
    cuCtxSetCurrent = need(cuda, "cuCtxSetCurrent");
    cuMemAlloc = need(cuda, "cuMemAlloc_v2");
    cuMemHostAlloc = need(cuda, "cuMemHostAlloc");
    cuStreamCreate = need(cuda, "cuStreamCreate");
    cuEventCreate = need(cuda, "cuEventCreate");
    cuEventRecord = need(cuda, "cuEventRecord");
    cuEventSynchronize = need(cuda, "cuEventSynchronize");
    cuMemcpyHtoDAsync = need(cuda, "cuMemcpyHtoDAsync_v2");
    rp_crc32c = need(shim, "rp_crc32c");
    cuMemHostRegister = need(cuda, "cuMemHostRegister_v2");
    cuMemHostUnregister = need(cuda, "cuMemHostUnregister");
    int dev;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuMemAlloc(&device, n_files * (size_t)CHUNK));
    crcs = calloc(2 * n_files, sizeof(*crcs));
    source = malloc((size_t)SOURCE_CHUNKS * CHUNK);
    memset(source, 1, (size_t)SOURCE_CHUNKS * CHUNK);
    mkdir(dir, 0700);
    double t0 = now();
    make_files();
    printf("%zu chunk files of 2 MiB in %s, written and read once in %.1f s\n", n_files, dir,
           now() - t0);
    for (int k = 0; k < 2 * MAX_THREADS; k++) {
        CHECK(cuMemHostAlloc((void **)&pinned[k].buf, MAX_SLOT, 1));
        CHECK(cuEventCreate(&pinned[k].done, 2));
        memset(pinned[k].buf, 0, MAX_SLOT);
        CHECK(cuStreamCreate(&streams[k], 1));
    }
    const char *set = argc > 4 ? argv[4] : "mapped";
    int threads[16], n_threads = 0;
    for (int k = 5; k < argc && n_threads < 16; k++)
        threads[n_threads++] = atoi(argv[k]) > MAX_THREADS ? MAX_THREADS : atoi(argv[k]);
    if (!n_threads)
        threads[n_threads++] = 16;
    if (!strcmp(set, "slots")) { /* the link against each fill, by staging slot and granule */
        static const size_t slots[] = { 2, 8, 16, 32 };
        for (int k = 0; k < n_threads; k++) {
            int t = threads[k];
            for (int j = 0; j < 4; j++)
                row("dma", DMA_ONLY, 0, 1, t, slots[j], 4);
            row("dma", DMA_ONLY, 0, 1, t, 2, 0);
            row("dma", DMA_ONLY, 0, 1, t, 16, 0);
            row("memcpy", MEMCPY, 0, 0, t, 2, 4);
            row("cpu-engine", ENGINE, 0, 0, t, 2, 4);
            row("cpu-g256", GRANULE, 256 << 10, 0, t, 2, 4);
            row("engine", ENGINE, 0, 1, t, 2, 4);
            row("g1024", GRANULE, 1 << 20, 1, t, 2, 4);
            row("g256", GRANULE, 256 << 10, 1, t, 2, 4);
            for (int j = 1; j < 4; j++) {
                row("engine", ENGINE, 0, 1, t, slots[j], 4);
                row("g1024", GRANULE, 1 << 20, 1, t, slots[j], 4);
                row("g256", GRANULE, 256 << 10, 1, t, slots[j], 4);
            }
            row("g256", GRANULE, 256 << 10, 1, t, 16, 0);
            row("g256-eager", GRANULE_EAGER, 256 << 10, 1, t, 2, 4);
            row("g64-eager", GRANULE_EAGER, 64 << 10, 1, t, 2, 4);
        }
        return 0;
    }
    if (strcmp(set, "mapped")) {
        fprintf(stderr, "SET: slots or mapped\n");
        return 2;
    }
    /* reading the page cache without pread: mapped per chunk, registered, mapped ahead */
    premapped = calloc(n_files, sizeof(*premapped));
    for (int k = 0; k < n_threads; k++) {
        row("engine", ENGINE, 0, 1, threads[k], 2, 4);
        row("mapped", MAPPED, 0, 1, threads[k], 2, 4);
        row("map-on-use", MAP_ON_USE, 256 << 10, 1, threads[k], 2, 4);
        row("registered", REGISTERED, 0, 1, threads[k], 2, 4);
    }
    t0 = now();
    for (size_t i = 0; i < n_files; i++)
        premapped[i] = map_chunk(i);
    printf("every chunk file mapped (MAP_POPULATE) in %.3f s\n", now() - t0);
    for (int k = 0; k < n_threads; k++) {
        int t = threads[k];
        row("dma", DMA_ONLY, 0, 1, t, 2, 4);
        row("cpu-engine", ENGINE, 0, 0, t, 2, 4);
        row("cpu-premapped", PREMAPPED, 256 << 10, 0, t, 2, 4);
        row("engine", ENGINE, 0, 1, t, 2, 4);
        row("premapped", PREMAPPED, 256 << 10, 1, t, 2, 4);
        row("premapped-1m", PREMAPPED, 1 << 20, 1, t, 2, 4);
        row("premapped", PREMAPPED, 256 << 10, 1, t, 8, 4);
    }
    return 0;
}
