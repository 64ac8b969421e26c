/*
 * The control channel: a Unix socket on which restoreprof asks the library to move the
 * process's GPU memory out to a snapshot file (before the driver checkpoint) and back in
 * (after the driver restore).
 *
 * One request per connection, one line each way; the library closes the connection as soon
 * as it has replied, so by the time the client has read the reply no connected socket is left
 * for `criu dump` to trip over (CRIU can dump a listening socket, not one joined to a peer
 * outside the dumped tree). The listening socket itself is restored by CRIU at its path.
 *
 *   OFFLOAD <path> <streams> <chunk_mb> <threads> <pinned> [<chunk dir> [<sync>]]
 *                                                  -> OK <bytes> <ns> written=<bytes> | ERR
 *     (the table at path, the chunks in the chunk folder: relative to path's folder unless
 *     absolute, default <path's name>.chunks; sync 1: durable before OK)
 *   RELOAD <path> <streams> <chunk_mb> <threads> <pinned>   -> OK <bytes> <ns> | ERR <message>
 *   (a number left out or negative: this process's own setting, from its environment)
 *   ADOPT <address> <gpu uuid> + one fd (SCM_RIGHTS) -> OK <bytes> <ns> remaining=<n> | ERR
 *   STATUS                                          -> OK state=<running|offloaded> ...
 *
 * ADOPT maps memory restoreprof preloaded from the snapshot (preload.c) at one offloaded
 * allocation's address; when none is left offloaded, it is as if RELOAD had run.
 *
 * While offloaded the gate is closed: the application's intercepted calls (copies, kernel and
 * graph launches, allocations) wait inside the library until RELOAD has put the memory back.
 * Calls the library does not intercept are not held; see README in the Python package docs.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static pid_t owner_pid;
static int offloaded;

/* A snapshot of the registry, so the long copies run without holding its lock. */
struct alloc_list {
    struct rp_allocation *items;
    size_t count;
};

static int collect_one(struct rp_allocation *a, void *arg)
{
    struct alloc_list *list = arg;
    list->items[list->count++] = *a;
    return 0;
}

static int collect(struct alloc_list *list)
{
    size_t count, bytes;
    rp_registry_totals(&count, &bytes);
    list->count = 0;
    list->items = calloc(count ? count : 1, sizeof(*list->items));
    if (!list->items)
        return -1;
    /* The gate is closed, so nothing can allocate between the count and the copy. */
    rp_registry_each(collect_one, list);
    return 0;
}

/* Updates the registry entry at a->address with a's handle (after map/unmap on a copy). */
static int store_handle(struct rp_allocation *entry, void *arg)
{
    struct rp_allocation *a = arg;
    if (entry->address != a->address)
        return 0;
    entry->handle = a->handle;
    return 1;
}

static CUresult drain_contexts(struct alloc_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        CUresult rc = rp_real.cuCtxSetCurrent(list->items[i].context);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuCtxSynchronize();
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}

static struct rp_engine_params params_from(int streams, int chunk_mb, int threads, int pinned)
{
    struct rp_engine_params p = rp_engine_default_params();
    if (pinned == 0 || pinned == 1)
        p.pinned = pinned;
    if (streams > 0)
        p.streams = streams;
    if (chunk_mb > 0)
        p.chunk_bytes = (size_t)chunk_mb * RP_MIB;
    if (threads > 0)
        p.threads = threads;
    return p;
}

/* ---- per-thread stacks ----
 *
 * A context keeps local memory for the stack of every thread the GPU can hold (on an H100,
 * 1 KiB x 2048 threads x 132 SMs: 260 of a bare context's 524 MiB). Its contents live only
 * while a kernel runs, yet the driver's checkpoint copies it out, CRIU dumps and restores it
 * and the driver's restore copies it back. While offloaded no kernel runs (the gate is closed
 * and the contexts drained), so the stack limit is lowered for the checkpoint and put back,
 * exactly, before the gate opens again. */

#define RP_MAX_CONTEXTS 64
#define RP_OFFLOAD_STACK_BYTES 16

static struct {
    CUcontext context;
    size_t stack;
} saved_stacks[RP_MAX_CONTEXTS];
static int n_saved_stacks;

static void shrink_stacks(struct alloc_list *list)
{
    n_saved_stacks = 0;
    for (size_t i = 0; i < list->count && n_saved_stacks < RP_MAX_CONTEXTS; i++) {
        CUcontext ctx = list->items[i].context;
        int seen = 0;
        for (int k = 0; k < n_saved_stacks; k++)
            seen |= saved_stacks[k].context == ctx;
        size_t stack = 0;
        if (seen || !rp_real.cuCtxGetLimit || !rp_real.cuCtxSetLimit ||
            rp_real.cuCtxSetCurrent(ctx) != CUDA_SUCCESS ||
            rp_real.cuCtxGetLimit(&stack, CU_LIMIT_STACK_SIZE) != CUDA_SUCCESS ||
            stack <= RP_OFFLOAD_STACK_BYTES)
            continue;
        if (rp_real.cuCtxSetLimit(CU_LIMIT_STACK_SIZE, RP_OFFLOAD_STACK_BYTES) == CUDA_SUCCESS)
            saved_stacks[n_saved_stacks++] = (typeof(saved_stacks[0])){ ctx, stack };
    }
}

/* Puts every lowered stack limit back; 0, or -1 with err set (the gate must stay closed: the
 * application's kernels would not launch with the lowered limit). */
static int restore_stacks(char *err, size_t errlen)
{
    while (n_saved_stacks > 0) {
        typeof(saved_stacks[0]) *s = &saved_stacks[n_saved_stacks - 1];
        CUresult rc = rp_real.cuCtxSetCurrent(s->context);
        if (rc == CUDA_SUCCESS)
            rc = rp_real.cuCtxSetLimit(CU_LIMIT_STACK_SIZE, s->stack);
        if (rc != CUDA_SUCCESS) {
            snprintf(err, errlen, "putting the stack size limit back to %zu failed: %s (free "
                     "GPU memory and retry)", s->stack, rp_error_name(rc));
            return -1;
        }
        n_saved_stacks--;
    }
    return 0;
}

/* ---- OFFLOAD ---- */

static int unmap_all(struct alloc_list *list, char *err, size_t errlen)
{
    int failures = 0;
    for (size_t i = 0; i < list->count; i++) {
        struct rp_allocation *a = &list->items[i];
        CUresult rc = rp_vmm_unmap(a);
        rp_registry_each(store_handle, a);
        if (rc != CUDA_SUCCESS && !failures++)
            snprintf(err, errlen, "releasing %#llx failed: %s; the snapshot is complete, "
                     "RELOAD resumes", (unsigned long long)a->address, rp_error_name(rc));
    }
    return failures ? -1 : 0;
}

/* chunk_dir: the chunk folder, relative to the snapshot's folder unless absolute (a store). */
static void do_offload(const char *path, const char *chunk_dir, int sync,
                       struct rp_engine_params p, char *reply, size_t len)
{
    if (offloaded) {
        snprintf(reply, len, "ERR already offloaded: RELOAD first");
        return;
    }
    uint64_t start = rp_now_ns(), total = 0, written = 0;
    char err[256] = "";
    struct alloc_list list = { 0 };
    rp_gate_close(); /* the application's intercepted calls wait from here */
    CUresult drained = CUDA_SUCCESS;
    int rc = -1;
    if (collect(&list) != 0)
        snprintf(err, sizeof(err), "out of memory");
    else if ((drained = drain_contexts(&list)) != CUDA_SUCCESS)
        snprintf(err, sizeof(err), "waiting for the GPU failed: %s", rp_error_name(drained));
    else
        rc = rp_snapshot_write(path, chunk_dir, sync, list.items, list.count, p, &total,
                               &written, err, sizeof(err));
    if (rc != 0) {
        rp_gate_open(); /* nothing was released: the application just carries on */
        snprintf(reply, len, "ERR %s", err);
    } else {
        offloaded = 1; /* from here the gate stays closed until RELOAD */
        /* The pinned staging pool would only add its size to CRIU's images and may not survive
         * the driver's checkpoint: RELOAD makes a new one. */
        rp_engine_release();
        shrink_stacks(&list);
        if (unmap_all(&list, err, sizeof(err)) != 0)
            snprintf(reply, len, "ERR %s", err);
        else
            snprintf(reply, len, "OK %llu %llu written=%llu", (unsigned long long)total,
                     (unsigned long long)(rp_now_ns() - start), (unsigned long long)written);
    }
    free(list.items);
}

/* ---- RELOAD ---- */

static struct rp_allocation *find_in(struct alloc_list *list, const struct snap_record *r)
{
    for (size_t i = 0; i < list->count; i++)
        if (list->items[i].address == r->address && list->items[i].size == r->size)
            return &list->items[i];
    return NULL;
}

/* Loads one record; on an engine failure, rebuilds the staging pool and tries once more
 * (pinned buffers made before a driver checkpoint may not survive it on every driver). */
static CUresult load_record(struct rp_chunk_store *chunks, size_t chunk_file_bytes,
                            struct rp_allocation *a, const struct snap_record *r,
                            struct rp_engine_params p, uint64_t *map_ns)
{
    uint8_t *names = (uint8_t *)(r + 1);
    struct rp_transfer t = { .direction = RP_H2D, .device = a->address, .fd = -1,
                             .bytes = r->size, .chunks = chunks, .hashes = names,
                             .pieces = names + r->n_chunks * RP_HASH_BYTES,
                             .chunk_file_bytes = chunk_file_bytes };
    CUresult rc = rp_real.cuCtxSetCurrent(a->context);
    if (rc == CUDA_SUCCESS && a->handle == 0) {
        uint64_t start = rp_now_ns();
        rc = rp_vmm_map(a);
        rp_registry_each(store_handle, a);
        *map_ns += rp_now_ns() - start;
    }
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = rp_engine_run(&t, p, 1);
    if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_INVALID_IMAGE) {
        rp_log("reload of %#llx failed (%s); retrying with a new staging pool",
               (unsigned long long)a->address, rp_error_name(rc));
        rc = rp_engine_run(&t, p, 1); /* the engine dropped the pool on the driver error */
    }
    return rc;
}

static void do_reload(const char *path, struct rp_engine_params p, char *reply, size_t len)
{
    if (!offloaded) {
        snprintf(reply, len, "ERR not offloaded: nothing to reload");
        return;
    }
    uint64_t start = rp_now_ns(), total = 0, map_ns = 0;
    uint64_t pool_ns = rp_engine_staging_setup_ns();
    char err[256] = "";
    struct snap_header h;
    struct alloc_list list = { 0 };
    struct rp_chunk_store chunks = { .dirfd = -1 };
    char *table = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        snprintf(err, sizeof(err), "cannot open %.160s: %s", path, strerror(errno));
    else if ((table = rp_snapshot_table(fd, &h, err, sizeof(err))) &&
             rp_snapshot_open_chunks(table, path, &chunks, err, sizeof(err)) == 0 &&
             collect(&list) != 0)
        snprintf(err, sizeof(err), "out of memory");
    const struct snap_record *r = table ? rp_snapshot_first(table) : NULL;
    for (uint64_t i = 0; table && !err[0] && i < h.count; i++, r = rp_snapshot_next(r)) {
        struct rp_allocation *a = find_in(&list, r);
        CUresult rc = a ? load_record(&chunks, h.chunk_bytes, a, r, p, &map_ns)
                        : CUDA_ERROR_NOT_FOUND;
        if (rc != CUDA_SUCCESS)
            snprintf(err, sizeof(err), "%s %#llx (%llu bytes): %s",
                     a ? "reloading" : "no allocation in this process at",
                     (unsigned long long)r->address, (unsigned long long)r->size,
                     rc == CUDA_ERROR_INVALID_IMAGE ? "a chunk is damaged or missing (BLAKE3 "
                                                      "mismatch; see the process's log)"
                                                    : rp_error_name(rc));
        total += r->size;
    }
    if (!err[0] && table && h.count != list.count)
        snprintf(err, sizeof(err), "the snapshot holds %llu allocations, the process %zu",
                 (unsigned long long)h.count, list.count);
    if (fd >= 0)
        close(fd);
    rp_chunks_close(&chunks);
    free(table);
    free(list.items);
    if (!err[0])
        restore_stacks(err, sizeof(err));
    if (err[0]) { /* the gate stays closed: the process must not run on missing memory */
        snprintf(reply, len, "ERR %s", err);
        return;
    }
    offloaded = 0;
    rp_gate_open();
    snprintf(reply, len, "OK %llu %llu map_ns=%llu pool_ns=%llu", (unsigned long long)total,
             (unsigned long long)(rp_now_ns() - start), (unsigned long long)map_ns,
             (unsigned long long)(rp_engine_staging_setup_ns() - pool_ns));
}

/* ---- ADOPT ---- */

static int count_offloaded(struct rp_allocation *a, void *arg)
{
    *(size_t *)arg += a->handle == 0;
    return 0;
}

struct adoption {
    CUdeviceptr address;
    struct rp_allocation found;
    int matched;
};

static int find_offloaded(struct rp_allocation *a, void *arg)
{
    struct adoption *want = arg;
    if (a->address != want->address || a->handle != 0)
        return 0;
    want->found = *a;
    want->matched = 1;
    return 1;
}

static void uuid_hex(const CUuuid *u, char *out)
{
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", (unsigned char)u->bytes[i]);
}

/* Maps memory that restoreprof preloaded (preload.c), passed as fd, at an offloaded
 * allocation's address. When the last offloaded allocation is back, the gate opens. */
static void do_adopt(CUdeviceptr address, const char *uuid, int fd, char *reply, size_t len)
{
    uint64_t start = rp_now_ns();
    struct adoption want = { .address = address };
    char ours[33];
    CUuuid u;
    if (!offloaded || fd < 0) {
        snprintf(reply, len, "ERR %s", fd < 0 ? "ADOPT needs the memory's descriptor"
                                              : "not offloaded: nothing to adopt");
        return;
    }
    rp_registry_each(find_offloaded, &want);
    if (!want.matched) {
        snprintf(reply, len, "ERR no offloaded allocation at %#llx", (unsigned long long)address);
        return;
    }
    struct rp_allocation *a = &want.found;
    CUresult rc = rp_real.cuDeviceGetUuid_v2 && rp_real.cuMemImportFromShareableHandle
                      ? rp_real.cuDeviceGetUuid_v2(&u, a->device)
                      : CUDA_ERROR_NOT_SUPPORTED;
    if (rc == CUDA_SUCCESS)
        uuid_hex(&u, ours);
    if (rc == CUDA_SUCCESS && strcmp(ours, uuid) != 0) {
        snprintf(reply, len, "ERR %#llx lives on GPU %s, the memory offered is on %s",
                 (unsigned long long)address, ours, uuid);
        return;
    }
    CUmemGenericAllocationHandle handle = 0;
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuCtxSetCurrent(a->context);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemImportFromShareableHandle(&handle, (void *)(intptr_t)fd,
                                                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (rc == CUDA_SUCCESS)
        rc = rp_vmm_map_handle(a->address, a->reserved, a->device, handle);
    if (rc != CUDA_SUCCESS) {
        if (handle)
            rp_real.cuMemRelease(handle);
        snprintf(reply, len, "ERR adopting %#llx: %s", (unsigned long long)address,
                 rp_error_name(rc));
        return;
    }
    a->handle = handle;
    rp_registry_each(store_handle, a);
    size_t remaining = 0;
    rp_registry_each(count_offloaded, &remaining);
    char err[256];
    if (remaining == 0 && restore_stacks(err, sizeof(err)) != 0) {
        snprintf(reply, len, "ERR %s", err); /* adopted, but held: RELOAD retries the limit */
        return;
    }
    if (remaining == 0) {
        offloaded = 0;
        rp_gate_open();
    }
    snprintf(reply, len, "OK %zu %llu remaining=%zu", a->size,
             (unsigned long long)(rp_now_ns() - start), remaining);
}

/* ---- STATUS and the server ---- */

static void do_status(char *reply, size_t len)
{
    size_t count, bytes;
    rp_registry_totals(&count, &bytes);
    snprintf(reply, len,
             "OK state=%s allocations=%zu bytes=%zu intercepted=%lu intercepted_bytes=%lu "
             "fallbacks=%lu gate=%s",
             offloaded ? "offloaded" : "running", count, bytes, rp_stats.intercepted,
             rp_stats.intercepted_bytes, rp_stats.fallbacks,
             rp_gate_is_closed() ? "closed" : "open");
}

/* "<snapshot's file name>.chunks", beside it, written into buf. */
static const char *default_chunk_dir(const char *path, char *buf)
{
    const char *base = strrchr(path, '/');
    snprintf(buf, 4096, "%.4000s.chunks", base ? base + 1 : path);
    return buf;
}

static void handle(const char *line, int fd, char *reply, size_t len)
{
    char path[4096], uuid[40], chunk_dir[4096] = "";
    unsigned long long address = 0;
    int streams = 0, chunk_mb = 0, threads = 0, pinned = -1, sync = 0;
    if (strcmp(line, "STATUS") == 0)
        do_status(reply, len);
    else if (sscanf(line, "ADOPT %llx %39s", &address, uuid) == 2)
        do_adopt((CUdeviceptr)address, uuid, fd, reply, len);
    else if (sscanf(line, "OFFLOAD %4095s %d %d %d %d %4095s %d", path, &streams, &chunk_mb,
                    &threads, &pinned, chunk_dir, &sync) >= 1)
        do_offload(path, chunk_dir[0] ? chunk_dir : default_chunk_dir(path, chunk_dir), sync,
                   params_from(streams, chunk_mb, threads, pinned), reply, len);
    else if (sscanf(line, "RELOAD %4095s %d %d %d %d", path, &streams, &chunk_mb, &threads,
                    &pinned) >= 1)
        do_reload(path, params_from(streams, chunk_mb, threads, pinned), reply, len);
    else
        snprintf(reply, len, "ERR unknown request (OFFLOAD, RELOAD, ADOPT or STATUS)");
}

static int peer_allowed(int conn)
{
    struct ucred cred;
    socklen_t n = sizeof(cred);
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &n) != 0)
        return 0;
    return cred.uid == 0 || cred.uid == geteuid();
}

/* Reads one request line, byte by byte so nothing after it is consumed; a file descriptor
 * sent with it (SCM_RIGHTS, for ADOPT) lands in *fd, else *fd is -1. */
static int read_request(int conn, char *line, size_t len, int *fd)
{
    size_t used = 0;
    *fd = -1;
    while (used + 1 < len) {
        union {
            struct cmsghdr header;
            char space[CMSG_SPACE(sizeof(int))];
        } control;
        struct iovec iov = { line + used, 1 };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                              .msg_controllen = sizeof(control) };
        ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && *fd < 0)
                memcpy(fd, CMSG_DATA(c), sizeof(int));
        if (line[used] == '\n')
            break;
        used++;
    }
    line[used] = '\0';
    return 0;
}

static void serve_one(int conn)
{
    char line[4200], reply[512];
    int fd = -1;
    struct timeval timeout = { .tv_sec = 10 };
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    if (!peer_allowed(conn))
        snprintf(reply, sizeof(reply), "ERR permission denied: only the process owner or root");
    else if (read_request(conn, line, sizeof(line), &fd) != 0)
        snprintf(reply, sizeof(reply), "ERR no request");
    else
        handle(line, fd, reply, sizeof(reply));
    if (fd >= 0)
        close(fd);
    strcat(reply, "\n");
    ssize_t ignored = write(conn, reply, strlen(reply));
    (void)ignored;
    close(conn); /* before the client sees EOF: no connected socket outlives a request */
}

static void *serve(void *arg)
{
    int listener = (int)(intptr_t)arg;
    for (;;) {
        int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            rp_log("control socket: accept failed: %s; control channel stopped", strerror(errno));
            return NULL;
        }
        serve_one(conn);
    }
}

/* $RESTOREPROF_RUN_DIR, else /run/restoreprof, else /tmp/restoreprof-<uid> (private). */
static int choose_dir(char *dir, size_t len)
{
    const char *env = getenv("RESTOREPROF_RUN_DIR");
    if (env && *env) {
        mkdir(env, 0700);
        snprintf(dir, len, "%s", env);
        return access(dir, W_OK);
    }
    snprintf(dir, len, "/run/restoreprof");
    if ((mkdir(dir, 0755) == 0 || errno == EEXIST) && access(dir, W_OK) == 0)
        return 0;
    snprintf(dir, len, "/tmp/restoreprof-%u", (unsigned)geteuid());
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -1;
    return access(dir, W_OK);
}

static void remove_socket(void)
{
    if (getpid() == owner_pid && socket_path[0])
        unlink(socket_path);
}

void rp_control_start(void)
{
    char dir[sizeof(socket_path) - 32];
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (choose_dir(dir, sizeof(dir)) != 0) {
        rp_log("no writable run directory for the control socket; offload unavailable");
        return;
    }
    owner_pid = getpid();
    snprintf(socket_path, sizeof(socket_path), "%s/shim-%d.sock", dir, (int)owner_pid);
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(socket_path); /* a stale one from an earlier process with this pid */
    mode_t old = umask(0177); /* the socket file is created 0600 */
    int bound = fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
    umask(old);
    pthread_t tid;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (!bound || listen(fd, 8) != 0 ||
        pthread_create(&tid, &attr, serve, (void *)(intptr_t)fd) != 0) {
        rp_log("control socket %s: %s; offload unavailable", socket_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        socket_path[0] = '\0';
    } else {
        atexit(remove_socket);
        RP_DEBUG("control socket %s", socket_path);
    }
    pthread_attr_destroy(&attr);
}
