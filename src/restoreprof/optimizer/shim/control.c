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
 *   OFFLOAD <path> <streams> <chunk_mb> <threads> <pinned> <release_s> [<chunk dir> [<sync>]]
 *                                           -> READY <bytes> <ns> written=<bytes> | ERR <message>
 *     then COMMIT                           -> OK <bytes> <ns> written=<bytes> reserved=<bytes>
 *                                              released=<bytes> release=<outcome>
 *                                              release_ns=<ns> ready_ns=<ns> | ERR <message>
 *     (release_ns: the release hooks; ready_ns: from the request to READY, the hooks and the
 *     snapshot; the rest of <ns> is giving the memory back)
 *     (the table at path, the chunks in the chunk folder: relative to path's folder unless
 *     absolute, default <path's name>.chunks; sync 1: durable before READY)
 *   PRECOPY <chunk dir> <streams> <chunk_mb> <threads> <pinned> <release_s>
 *                                           -> OK <bytes> <ns> written=<bytes> release_ns=<ns>
 *     (OFFLOAD's chunks, no table, while the program runs on; nothing released: see do_precopy;
 *     the chunk folder is absolute)
 *   RELOAD <path> <streams> <chunk_mb> <threads> <pinned>   -> OK <bytes> <ns> | ERR <message>
 *   (a number left out or negative: this process's own setting, from its environment)
 *   ADOPT <address> <gpu uuid> [<handle>] + one fd (SCM_RIGHTS)
 *                                                   -> OK <bytes> <ns> remaining=<n> | ERR
 *   ADOPTV <gpu uuid> <address>:<handle> ... + one fd each, in order (SCM_RIGHTS, at most
 *     RP_ADOPT_BATCH)               -> OK <bytes> <ns> remaining=<n> adopted=<n> | ERR
 *     (ADOPT of each in turn, in one request: a program with hundreds of physical allocations,
 *     PyTorch's expandable segments, paid a connection per allocation; the first refusal ends
 *     it, those before it stay adopted, and its ERR says how many)
 *   (OFFLOAD/RELOAD of path "-": the file is the descriptor sent with the request,
 *   SCM_RIGHTS; a process in its own mount namespace cannot reach a host path, e.g. CRIU's
 *   images folder. OFFLOAD to a descriptor writes snapshot version 2, the bytes inside it:
 *   such a process cannot reach a chunk folder either)
 *   STATUS                                          -> OK state=<running|offloaded> ...
 *                                                     kind.<name>=<count>:<bytes> ...
 *
 * OFFLOAD first runs the program's release hooks (release.c), waiting at most release_s seconds
 * (0: not at all), so the free blocks of its caching allocators are not saved: reserved is what
 * the library served before them, released what they gave back.
 *
 * ADOPT maps memory restoreprof preloaded from the snapshot (preload.c) at one offloaded
 * allocation's address, or, given a handle, where the application's physical allocation of
 * that handle was mapped (app_vmm.c); when none is left offloaded, it is as if RELOAD had run.
 *
 * OFFLOAD saves the library's allocations (cuMemAlloc and stream-ordered, mempool.c) and the
 * application's own physical allocations (app_vmm.c). Memory shared with another process is
 * refused before anything is written or released; the stream-ordered cache (memory nobody
 * uses) is released, not saved.
 *
 * OFFLOAD is two-phase so that no process is left offloaded with nobody to bring it back: the
 * memory is released only once the client has read READY (the snapshot is complete) and
 * confirmed with COMMIT. A client that hangs up first, or is silent for RP_COMMIT_TIMEOUT_MS,
 * gets nothing released: the gate reopens and the application runs on, as if no OFFLOAD had
 * come. (The alternative, releasing at once and mapping and reloading everything again when the
 * reply cannot be delivered, would read the whole snapshot back for nothing, and could not
 * tell a reply that was delivered from one that was sent and then never read.) A request whose
 * client hung up before it was served, as when it was queued while the process was stopped,
 * is dropped. Replies are sent with MSG_NOSIGNAL: a client gone never kills the application.
 *
 * Where the socket lives (sockets.py's user_run_dirs lists the same places, in the same
 * order): $RESTOREPROF_RUN_DIR, then /run/restoreprof for root, else
 * $XDG_RUNTIME_DIR/restoreprof and /tmp/restoreprof-<uid>. A directory is used only when it is
 * a real directory of this user (or root) that group and others cannot write; a foreign one
 * (as another user could plant in /tmp) is refused and logged.
 *
 * While offloaded the gate is closed: the application's intercepted calls (copies, kernel and
 * graph launches, allocations) wait inside the library until RELOAD has put the memory back.
 * Calls the library does not intercept are not held; see README in the Python package docs.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* How long OFFLOAD waits for the client's COMMIT after READY; the client sends it at once. */
#define RP_COMMIT_TIMEOUT_MS 10000
/* ADOPTV's allocations per request (optimizer/control.py's ADOPT_BATCH), and the longest
 * request line: two paths of 4095 bytes (OFFLOAD), or a batch of <address>:<handle> pairs. */
#define RP_ADOPT_BATCH 64
#define RP_REQUEST_BYTES 8448

static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static pid_t owner_pid;
static int offloaded;

static int read_request(int conn, char *line, size_t len, int *fds, int *n_fds);

/* One reply line, sent so that a client that hung up cannot kill us with SIGPIPE. */
static int send_reply(int conn, const char *reply)
{
    char line[600];
    int n = snprintf(line, sizeof(line), "%s\n", reply);
    if (n < 0 || (size_t)n >= sizeof(line))
        return -1;
    return send(conn, line, (size_t)n, MSG_NOSIGNAL) == n ? 0 : -1;
}

/* Whether the client hung up: nobody would read a reply, or bring the memory back. */
static int client_gone(int conn)
{
    struct pollfd p = { .fd = conn, .events = POLLRDHUP };
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* 0 once the client sent COMMIT within RP_COMMIT_TIMEOUT_MS; -1 when it hung up, was silent or
 * sent anything else. */
static int await_commit(int conn)
{
    char line[16];
    int fds[RP_ADOPT_BATCH], n_fds = 0;
    struct pollfd p = { .fd = conn, .events = POLLIN };
    int rc = poll(&p, 1, RP_COMMIT_TIMEOUT_MS) > 0 &&
                     read_request(conn, line, sizeof(line), fds, &n_fds) == 0
                 ? strcmp(line, "COMMIT")
                 : -1;
    for (int k = 0; k < n_fds; k++)
        close(fds[k]);
    return rc == 0 ? 0 : -1;
}

/* A snapshot of the registry, so the long copies run without holding its lock. */
struct alloc_list {
    struct rp_allocation *items;
    size_t count, capacity;
};

static int collect_one(struct rp_allocation *a, void *arg)
{
    struct alloc_list *list = arg;
    if (list->count == list->capacity)
        return 1; /* made after the count (PRECOPY leaves the gate open): not this time */
    list->items[list->count++] = *a;
    return 0;
}

static int collect(struct alloc_list *list)
{
    size_t count, bytes;
    rp_registry_totals(&count, &bytes);
    list->count = 0;
    list->capacity = count;
    list->items = calloc(count ? count : 1, sizeof(*list->items));
    if (!list->items)
        return -1;
    /* With the gate closed nothing can allocate between the count and the copy; PRECOPY's
     * layout gate holds only frees, so what was allocated meanwhile is left out. */
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

static CUresult drain_contexts(const struct rp_snap_item *items, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        CUresult rc = rp_real.cuCtxSetCurrent(items[i].context);
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

static void shrink_stacks(const struct rp_snap_item *items, size_t count)
{
    n_saved_stacks = 0;
    for (size_t i = 0; i < count && n_saved_stacks < RP_MAX_CONTEXTS; i++) {
        CUcontext ctx = items[i].context;
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

/* Where a snapshot opened on fd lies (path, or for "-" the descriptor's own path, as this
 * process sees it), to find a chunk folder relative to it. */
static const char *table_path(const char *path, int fd, char *buf, size_t len)
{
    if (strcmp(path, "-") != 0)
        return path;
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t got = readlink(link, buf, len - 1);
    buf[got > 0 ? got : 0] = '\0';
    return buf;
}

/* The snapshot file: the descriptor sent with the request when path is "-", else path. */
static int open_snapshot(const char *path, int given, int flags)
{
    if (strcmp(path, "-") == 0)
        return given >= 0 ? fcntl(given, F_DUPFD_CLOEXEC, 0) : (errno = EBADF, -1);
    return open(path, flags | O_CLOEXEC, 0600);
}

/* What OFFLOAD and PRECOPY copy: the library's allocations (a snapshot of the registry), then
 * the snapshot's items, made from them and from the application's physical allocations. */
struct copy_set {
    struct alloc_list list;
    struct rp_snap_item *items;
    size_t count;
};

static void copy_set_free(struct copy_set *set)
{
    free(set->items);
    free(set->list.items);
    *set = (struct copy_set){ 0 };
}

/* Fills set: the library's allocations, then the application's physical ones (each with a
 * window to read it through; rp_app_vmm_close_windows closes them). 0, or -1 with err set
 * (copy_set_free frees what was made either way). */
static int offload_items(struct copy_set *set, char *err, size_t errlen)
{
    set->count = 0;
    if (collect(&set->list) != 0)
        return snprintf(err, errlen, "out of memory"), -1;
    size_t capacity = set->list.count ? set->list.count : 1;
    set->items = calloc(capacity, sizeof(*set->items));
    if (!set->items)
        return snprintf(err, errlen, "out of memory"), -1;
    for (size_t i = 0; i < set->list.count; i++) {
        const struct rp_allocation *a = &set->list.items[i];
        set->items[set->count++] = (struct rp_snap_item){
            .record = { .address = a->address, .size = a->size, .reserved = a->reserved,
                        .device = a->device, .kind = RP_SNAP_ALLOCATION },
            .source = a->address,
            .context = a->context,
        };
    }
    return rp_app_vmm_items(&set->items, &set->count, &capacity, err, errlen);
}

/* The program's release hooks: release_s seconds at most; 0: not run; negative: this process's
 * own settings (RESTOREPROF_RELEASE_CACHES, RESTOREPROF_RELEASE_TIMEOUT_S). */
static enum rp_release_outcome release_hooks(int release_s, uint64_t *ns)
{
    return rp_release_run(release_s < 0 ? rp_config.release_caches : release_s > 0,
                          release_s > 0 ? (unsigned)release_s * 1000u
                                        : rp_config.release_timeout_ms, ns);
}

/* chunk_dir: the chunk folder, relative to the snapshot's folder unless absolute (a store).
 * path "-": the snapshot goes to the descriptor given with the request, in version 2 (the bytes
 * inside it): a process that cannot reach the images folder (a container's) cannot reach a
 * chunk folder beside it either. release_s: see release_hooks. */
static void do_offload(int conn, const char *path, int given, const char *chunk_dir, int sync,
                       struct rp_engine_params p, int release_s, char *reply, size_t len)
{
    if (offloaded) {
        snprintf(reply, len, "ERR already offloaded: RELOAD first");
        return;
    }
    uint64_t start = rp_now_ns(), total = 0, written = 0, release_ns = 0, free_bytes = 0;
    char err[512] = "";
    struct copy_set set = { 0 };
    /* The program frees its cached blocks first, while it may still call the driver. */
    long long hooks_reserved = (long long)rp_coverage_bytes();
    enum rp_release_outcome hooks = release_hooks(release_s, &release_ns);
    long long hooks_released = hooks_reserved - (long long)rp_coverage_bytes();
    rp_gate_close(); /* the application's intercepted calls wait from here */
    /* the blocks its hooks reported free, if nothing used the GPU since they were read */
    struct rp_free_ranges freed;
    enum rp_free_state free_state = rp_free_ranges_take(1, &freed);
    /* Refused before anything is written: a refused checkpoint leaves nothing behind. */
    if (rp_app_vmm_refusal(err, sizeof(err)) != 0) {
        rp_gate_open();
        rp_free_ranges_done(&freed);
        snprintf(reply, len, "ERR cannot checkpoint: %s", err);
        return;
    }
    int to_fd = strcmp(path, "-") == 0;
    CUresult drained = CUDA_SUCCESS;
    int rc = -1;
    if (offload_items(&set, err, sizeof(err)) != 0)
        ; /* err says why */
    else if ((drained = drain_contexts(set.items, set.count)) != CUDA_SUCCESS)
        snprintf(err, sizeof(err), "waiting for the GPU failed: %s", rp_error_name(drained));
    else {
        size_t cached = rp_mempool_release_cached(); /* free memory is not the application's */
        if (cached)
            RP_DEBUG("released %zu bytes of cached stream-ordered memory", cached);
        int fd = to_fd ? open_snapshot(path, given, O_WRONLY) : -1;
        if (to_fd && fd < 0)
            snprintf(err, sizeof(err), "OFFLOAD - needs the snapshot's descriptor (SCM_RIGHTS)");
        else if (to_fd)
            rc = rp_snapshot_write_fd(fd, set.items, set.count, p, &total, err, sizeof(err));
        else
            rc = rp_snapshot_write(path, chunk_dir, sync, set.items, set.count, &freed, p,
                                   &total, &written, &free_bytes, err, sizeof(err));
        if (to_fd)
            written = total;
        if (fd >= 0 && close(fd) != 0 && rc == 0) {
            snprintf(err, sizeof(err), "closing the snapshot's descriptor failed: %s",
                     strerror(errno));
            rc = -1;
        }
    }
    rp_app_vmm_close_windows();
    rp_free_ranges_done(&freed);
    if (rc != 0) {
        rp_gate_open(); /* nothing was released: the application just carries on */
        snprintf(reply, len, "ERR %s", err);
        copy_set_free(&set);
        return;
    }
    /* The snapshot is complete and the memory still mapped: release it only for a client that
     * is there to bring it back. */
    char ready[128];
    uint64_t ready_ns = rp_now_ns() - start;
    snprintf(ready, sizeof(ready), "READY %llu %llu written=%llu", (unsigned long long)total,
             (unsigned long long)ready_ns, (unsigned long long)written);
    if (send_reply(conn, ready) != 0 || await_commit(conn) != 0) {
        rp_gate_open();
        rp_log("OFFLOAD to %.160s rolled back: the client hung up or did not confirm within %d s; "
               "nothing was released and the application runs on", path,
               RP_COMMIT_TIMEOUT_MS / 1000);
        reply[0] = '\0'; /* nobody to answer */
        copy_set_free(&set);
        return;
    }
    offloaded = 1; /* from here the gate stays closed until RELOAD */
    /* The pinned staging pool would only add its size to CRIU's images and may not survive
     * the driver's checkpoint: RELOAD makes a new one. */
    rp_engine_release();
    shrink_stacks(set.items, set.count); /* the contexts of both kinds of memory */
    int released = unmap_all(&set.list, err, sizeof(err));
    if (rp_app_vmm_release(err[0] ? err + strlen(err) : err, sizeof(err) - strlen(err)) != 0 ||
        released != 0)
        snprintf(reply, len, "ERR %s", err);
    else
        snprintf(reply, len,
                 "OK %llu %llu written=%llu reserved=%lld released=%lld release=%s release_ns=%llu "
                 "ready_ns=%llu free=%llu free_blocks=%s",
                 (unsigned long long)total, (unsigned long long)(rp_now_ns() - start),
                 (unsigned long long)written, hooks_reserved, hooks_released,
                 rp_release_outcome_name(hooks), (unsigned long long)release_ns,
                 (unsigned long long)ready_ns, (unsigned long long)free_bytes,
                 rp_free_state_name(free_state));
    copy_set_free(&set);
}

/* ---- PRECOPY ---- */

/* Writes the chunks of every allocation OFFLOAD would save into chunk_dir while the program
 * runs on: a checkpoint that follows finds those chunks in the folder and writes only
 * the ones that changed meanwhile, so the process is stopped for the copy and the hashing, not
 * for the writes (checkpoint --pre-copy). Nothing is released and the offload gate stays open;
 * only calls that free or unmap memory wait (the layout gate), since a copy must never read
 * memory that was given back. What the program writes meanwhile may make a chunk torn: it is
 * only a chunk nobody names, since OFFLOAD reads and hashes every byte again. The engine's
 * pinned staging is kept for that OFFLOAD (which frees it before the driver's checkpoint):
 * pinning it again would lengthen the downtime. */
static void do_precopy(const char *chunk_dir, struct rp_engine_params p, int release_s,
                       char *reply, size_t len)
{
    if (offloaded) {
        snprintf(reply, len, "ERR the memory is offloaded: nothing to pre-copy");
        return;
    }
    if (chunk_dir[0] != '/') {
        snprintf(reply, len, "ERR PRECOPY needs an absolute chunk folder");
        return;
    }
    uint64_t start = rp_now_ns(), total = 0, written = 0, release_ns = 0, free_bytes = 0;
    char err[512] = "";
    struct copy_set set = { 0 };
    /* as OFFLOAD: the caching allocators' free blocks are not copied (their report is only a
     * hint here: the program runs on, and OFFLOAD copies whatever it uses since) */
    release_hooks(release_s, &release_ns);
    rp_layout_close();
    struct rp_free_ranges freed;
    rp_free_ranges_take(0, &freed);
    int rc = -1;
    if (rp_app_vmm_refusal(err, sizeof(err)) != 0)
        ; /* the checkpoint would refuse: say so now */
    else if (offload_items(&set, err, sizeof(err)) == 0)
        rc = rp_snapshot_write(NULL, chunk_dir, 0, set.items, set.count, &freed, p, &total,
                               &written, &free_bytes, err, sizeof(err));
    rp_app_vmm_close_windows();
    rp_layout_open();
    rp_free_ranges_done(&freed);
    copy_set_free(&set);
    if (rc != 0)
        snprintf(reply, len, "ERR %s", err);
    else
        snprintf(reply, len, "OK %llu %llu written=%llu release_ns=%llu free=%llu",
                 (unsigned long long)total, (unsigned long long)(rp_now_ns() - start),
                 (unsigned long long)written, (unsigned long long)release_ns,
                 (unsigned long long)free_bytes);
}

/* ---- RELOAD ---- */

static struct rp_allocation *find_in(struct alloc_list *list, const struct snap_record *r)
{
    for (size_t i = 0; i < list->count; i++)
        if (list->items[i].address == r->address && list->items[i].size == r->size)
            return &list->items[i];
    return NULL;
}

/* Physical memory for an offloaded allocation again, at its address (nothing when it is mapped:
 * adopted before this RELOAD, its bytes are simply loaded again). */
static CUresult map_allocation(struct rp_allocation *a, uint64_t *map_ns)
{
    CUresult rc = rp_real.cuCtxSetCurrent(a->context);
    if (rc == CUDA_SUCCESS && a->handle == 0) {
        uint64_t start = rp_now_ns();
        rc = rp_vmm_map(a);
        if (rc == CUDA_SUCCESS)
            rc = rp_mempool_after_map(a);
        rp_registry_each(store_handle, a);
        *map_ns += rp_now_ns() - start;
    }
    return rc;
}

/* Where one record's bytes go. */
struct load {
    const struct snap_record *record;
    CUdeviceptr device;
    CUcontext context;
    int done;
};

/* Loads every record, one engine batch per context (chunks of all records shared out across
 * the threads). On an engine failure, rebuilds the staging pool and tries once more (pinned
 * buffers made before a driver checkpoint may not survive it on every driver). */
static CUresult load_all(const char *table, int fd, struct rp_chunk_store *chunks,
                         struct load *loads, size_t n, struct rp_engine_params p)
{
    struct rp_transfer *t = calloc(n ? n : 1, sizeof(*t));
    if (!t)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = CUDA_SUCCESS;
    for (size_t first = 0; first < n && rc == CUDA_SUCCESS; first++) {
        if (loads[first].done)
            continue;
        size_t count = 0;
        for (size_t i = first; i < n; i++) {
            if (loads[i].done || loads[i].context != loads[first].context)
                continue;
            const struct snap_record *r = loads[i].record;
            t[count] = (struct rp_transfer){ .direction = RP_H2D, .device = loads[i].device };
            rp_snapshot_source(table, r, fd, chunks, &t[count++]);
            loads[i].done = 1;
        }
        rc = rp_real.cuCtxSetCurrent(loads[first].context);
        if (rc == CUDA_SUCCESS)
            rc = rp_engine_run_batch(t, count, p, 1);
        if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_INVALID_IMAGE) {
            rp_log("reload of %zu allocations failed (%s); retrying with a new staging pool",
                   count, rp_error_name(rc));
            rc = rp_engine_run_batch(t, count, p, 1); /* the engine dropped the pool */
        }
    }
    free(t);
    return rc;
}

static void do_reload(const char *path, int given, struct rp_engine_params p, char *reply,
                      size_t len)
{
    if (!offloaded) {
        snprintf(reply, len, "ERR not offloaded: nothing to reload");
        return;
    }
    uint64_t start = rp_now_ns(), total = 0, map_ns = 0;
    uint64_t pool_ns = rp_engine_staging_setup_ns();
    char err[256] = "", link[4096];
    struct snap_header h;
    struct alloc_list list = { 0 };
    struct rp_chunk_store chunks = { .dirfd = -1 };
    char *table = NULL;
    struct load *loads = NULL;
    size_t n_loads = 0;
    int fd = open_snapshot(path, given, O_RDONLY);
    if (fd < 0)
        snprintf(err, sizeof(err), "cannot open %.160s: %s", path, strerror(errno));
    else if ((table = rp_snapshot_table(fd, &h, err, sizeof(err))) &&
             rp_snapshot_open_chunks(table, table_path(path, fd, link, sizeof(link)), &chunks,
                                     err, sizeof(err)) == 0 &&
             (collect(&list) != 0 || !(loads = calloc(h.count ? h.count : 1, sizeof(*loads)))))
        snprintf(err, sizeof(err), "out of memory");
    const struct snap_record *r = table && !err[0] ? rp_snapshot_first(table) : NULL;
    uint64_t allocations = 0;
    /* First the memory, every record's, then the bytes, all records at once. */
    for (uint64_t i = 0; r && !err[0] && i < h.count; i++, r = rp_snapshot_next(table, r)) {
        int physical = r->kind == RP_SNAP_PHYSICAL;
        struct rp_allocation *a = physical ? NULL : find_in(&list, r);
        struct load *l = &loads[n_loads];
        l->record = r;
        CUresult rc = physical ? rp_app_vmm_prepare(r, &l->device, &l->context, &map_ns)
                      : a      ? map_allocation(a, &map_ns)
                               : CUDA_ERROR_NOT_FOUND;
        if (a) {
            l->device = a->address;
            l->context = a->context;
        }
        allocations += !physical;
        n_loads += rc == CUDA_SUCCESS;
        if (rc != CUDA_SUCCESS)
            snprintf(err, sizeof(err), "%s %s %#llx (%llu bytes): %s",
                     physical || a ? "reloading" : "no allocation in this process at",
                     physical ? "GPU memory handle" : "allocation",
                     (unsigned long long)(physical ? r->handle : r->address),
                     (unsigned long long)r->size,
                     rc == CUDA_ERROR_NOT_FOUND && physical
                         ? "no such offloaded handle in this process"
                         : rp_error_name(rc));
        total += r->size;
    }
    CUresult loaded = err[0] ? CUDA_ERROR_NOT_READY
                             : load_all(table, fd, &chunks, loads, n_loads, p);
    if (!err[0] && loaded != CUDA_SUCCESS && (loaded != CUDA_ERROR_INVALID_IMAGE || h.version < 3))
        snprintf(err, sizeof(err), "reloading %zu allocations from %.160s: %s", n_loads, path,
                 loaded != CUDA_ERROR_INVALID_IMAGE ? rp_error_name(loaded) : "checksum mismatch");
    else if (!err[0] && loaded != CUDA_SUCCESS)
        snprintf(err, sizeof(err), "reloading %zu allocations from %.120s: a chunk is damaged or "
                 "missing (%s mismatch; see the process's log)", n_loads, path,
                 rp_snapshot_check_name(table));
    rp_app_vmm_finish(loaded == CUDA_SUCCESS);
    if (!err[0] && table && allocations != list.count)
        snprintf(err, sizeof(err), "the snapshot holds %llu allocations, the process %zu",
                 (unsigned long long)allocations, list.count);
    size_t missing = table && !err[0] ? rp_app_vmm_offloaded() : 0;
    if (missing)
        snprintf(err, sizeof(err), "%zu of the process's GPU memory handles are not in the "
                 "snapshot", missing);
    if (fd >= 0)
        close(fd);
    rp_chunks_close(&chunks);
    free(loads);
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

/* Maps memory that restoreprof preloaded (preload.c), passed as fd, at an offloaded
 * allocation's address. When the last offloaded allocation is back, the gate opens. */
/* Both kinds still offloaded; when none is left, the gate opens (after the stack limits). */
static void finish_adopt(size_t bytes, uint64_t start, char *reply, size_t len)
{
    size_t remaining = rp_app_vmm_offloaded();
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
    snprintf(reply, len, "OK %zu %llu remaining=%zu", bytes,
             (unsigned long long)(rp_now_ns() - start), remaining);
}

static void do_adopt(CUdeviceptr address, const char *uuid, uint64_t handle, int fd, char *reply,
                     size_t len)
{
    uint64_t start = rp_now_ns();
    struct adoption want = { .address = address };
    char ours[33];
    if (!offloaded || fd < 0) {
        snprintf(reply, len, "ERR %s", fd < 0 ? "ADOPT needs the memory's descriptor"
                                              : "not offloaded: nothing to adopt");
        return;
    }
    if (handle) {
        char err[256];
        size_t bytes = 0;
        if (rp_app_vmm_adopt(handle, uuid, fd, &bytes, err, sizeof(err)) != 0)
            snprintf(reply, len, "ERR %s", err);
        else
            finish_adopt(bytes, start, reply, len);
        return;
    }
    rp_registry_each(find_offloaded, &want);
    if (!want.matched) {
        snprintf(reply, len, "ERR no offloaded allocation at %#llx", (unsigned long long)address);
        return;
    }
    struct rp_allocation *a = &want.found;
    CUresult rc = rp_real.cuMemImportFromShareableHandle && rp_device_uuid_hex(a->device, ours) == 0
                      ? CUDA_SUCCESS
                      : CUDA_ERROR_NOT_SUPPORTED;
    if (rc == CUDA_SUCCESS && strcmp(ours, uuid) != 0) {
        snprintf(reply, len, "ERR %#llx lives on GPU %s, the memory offered is on %s",
                 (unsigned long long)address, ours, uuid);
        return;
    }
    CUmemGenericAllocationHandle memory = 0;
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuCtxSetCurrent(a->context);
    if (rc == CUDA_SUCCESS)
        rc = rp_real.cuMemImportFromShareableHandle(&memory, (void *)(intptr_t)fd,
                                                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (rc == CUDA_SUCCESS)
        rc = rp_vmm_map_handle(a->address, a->reserved, a->device, memory);
    if (rc == CUDA_SUCCESS) {
        a->handle = memory;
        rc = rp_mempool_after_map(a);
        if (rc != CUDA_SUCCESS)
            rp_real.cuMemUnmap(a->address, a->reserved);
        a->handle = rc == CUDA_SUCCESS ? memory : 0;
    }
    if (rc != CUDA_SUCCESS) {
        if (memory)
            rp_real.cuMemRelease(memory);
        snprintf(reply, len, "ERR adopting %#llx: %s", (unsigned long long)address,
                 rp_error_name(rc));
        return;
    }
    rp_registry_each(store_handle, a);
    finish_adopt(a->size, start, reply, len);
}

/* ADOPTV: args is "<uuid> <address>:<handle> ...", fds one per allocation. */
static void do_adopt_many(const char *args, const int *fds, int n_fds, char *reply, size_t len)
{
    uint64_t start = rp_now_ns();
    char uuid[40], one[512] = "";
    int used = 0, entries = 0;
    if (sscanf(args, "%39s%n", uuid, &used) != 1) {
        snprintf(reply, len, "ERR ADOPTV needs a GPU uuid");
        return;
    }
    for (const char *p = args + used; *p;) {
        while (*p == ' ')
            p++;
        if (*p) {
            entries++;
            while (*p && *p != ' ')
                p++;
        }
    }
    if (entries == 0 || entries != n_fds) {
        snprintf(reply, len, "ERR ADOPTV lists %d allocations and carries %d descriptors",
                 entries, n_fds);
        return;
    }
    size_t bytes = 0, remaining = 0;
    const char *p = args + used;
    for (int i = 0; i < entries; i++) {
        unsigned long long address = 0, handle = 0;
        int n = 0;
        if (sscanf(p, " %llx:%llx%n", &address, &handle, &n) != 2) {
            snprintf(reply, len, "ERR after %d of %d: entry %d is not <address>:<handle>", i,
                     entries, i + 1);
            return;
        }
        p += n;
        do_adopt((CUdeviceptr)address, uuid, handle, fds[i], one, sizeof(one));
        size_t got = 0;
        if (strncmp(one, "OK ", 3) != 0 ||
            sscanf(one, "OK %zu %*u remaining=%zu", &got, &remaining) != 2) {
            snprintf(reply, len, "ERR after %d of %d: %s", i, entries,
                     strncmp(one, "ERR ", 4) == 0 ? one + 4 : one);
            return;
        }
        bytes += got;
    }
    snprintf(reply, len, "OK %zu %llu remaining=%zu adopted=%d", bytes,
             (unsigned long long)(rp_now_ns() - start), remaining, entries);
}

/* ---- STATUS and the server ---- */

static void do_status(char *reply, size_t len)
{
    size_t count, bytes, app_count, app_bytes;
    char kinds[256] = "";
    rp_registry_totals(&count, &bytes);
    rp_app_vmm_totals(&app_count, &app_bytes);
    rp_coverage_format(kinds, sizeof(kinds));
    snprintf(reply, len,
             "OK state=%s allocations=%zu bytes=%zu intercepted=%lu intercepted_bytes=%lu "
             "fallbacks=%lu gate=%s app_handles=%zu app_bytes=%zu %s",
             offloaded ? "offloaded" : "running", count, bytes, rp_stats.intercepted,
             rp_stats.intercepted_bytes, rp_stats.fallbacks,
             rp_gate_is_closed() ? "closed" : "open", app_count, app_bytes, kinds);
}

/* "<snapshot's file name>.chunks", beside it, written into buf. */
static const char *default_chunk_dir(const char *path, char *buf)
{
    const char *base = strrchr(path, '/');
    snprintf(buf, 4096, "%.4000s.chunks", base ? base + 1 : path);
    return buf;
}

static void handle(int conn, const char *line, const int *fds, int n_fds, char *reply,
                   size_t len)
{
    int fd = n_fds > 0 ? fds[0] : -1;
    char path[4096], uuid[40], chunk_dir[4096] = "";
    unsigned long long address = 0, app_handle = 0;
    int streams = 0, chunk_mb = 0, threads = 0, pinned = -1, release_s = -1, sync = 0;
    if (strcmp(line, "STATUS") == 0)
        do_status(reply, len);
    else if (strncmp(line, "ADOPTV ", 7) == 0)
        do_adopt_many(line + 7, fds, n_fds, reply, len);
    else if (sscanf(line, "ADOPT %llx %39s %llx", &address, uuid, &app_handle) >= 2)
        do_adopt((CUdeviceptr)address, uuid, app_handle, fd, reply, len);
    else if (sscanf(line, "OFFLOAD %4095s %d %d %d %d %d %4095s %d", path, &streams, &chunk_mb,
                    &threads, &pinned, &release_s, chunk_dir, &sync) >= 1)
        do_offload(conn, path, fd, chunk_dir[0] ? chunk_dir : default_chunk_dir(path, chunk_dir),
                   sync, params_from(streams, chunk_mb, threads, pinned), release_s, reply, len);
    else if (sscanf(line, "PRECOPY %4095s %d %d %d %d %d", chunk_dir, &streams, &chunk_mb,
                    &threads, &pinned, &release_s) >= 1)
        do_precopy(chunk_dir, params_from(streams, chunk_mb, threads, pinned), release_s, reply,
                   len);
    else if (sscanf(line, "RELOAD %4095s %d %d %d %d", path, &streams, &chunk_mb, &threads,
                    &pinned) >= 1)
        do_reload(path, fd, params_from(streams, chunk_mb, threads, pinned), reply, len);
    else
        snprintf(reply, len,
                 "ERR unknown request (OFFLOAD, PRECOPY, RELOAD, ADOPT, ADOPTV or STATUS)");
}

static int peer_allowed(int conn)
{
    struct ucred cred;
    socklen_t n = sizeof(cred);
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &n) != 0)
        return 0;
    return cred.uid == 0 || cred.uid == geteuid();
}

/* Reads one request line, byte by byte so nothing after it is consumed; the file descriptors
 * sent with it (SCM_RIGHTS: ADOPT's one, ADOPTV's one per allocation, OFFLOAD/RELOAD of "-")
 * land in fds, at most RP_ADOPT_BATCH (any more are closed), their count in *n_fds. */
static int read_request(int conn, char *line, size_t len, int *fds, int *n_fds)
{
    size_t used = 0;
    *n_fds = 0;
    while (used + 1 < len) {
        union {
            struct cmsghdr header;
            char space[CMSG_SPACE(sizeof(int) * RP_ADOPT_BATCH)];
        } control;
        struct iovec iov = { line + used, 1 };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                              .msg_controllen = sizeof(control) };
        ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t k = 0; k < count; k++) {
                int got;
                memcpy(&got, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
                if (*n_fds < RP_ADOPT_BATCH)
                    fds[(*n_fds)++] = got;
                else
                    close(got);
            }
        }
        if (line[used] == '\n')
            break;
        used++;
    }
    line[used] = '\0';
    return 0;
}

static void serve_one(int conn)
{
    char line[RP_REQUEST_BYTES], reply[512] = "";
    int fds[RP_ADOPT_BATCH], n_fds = 0;
    struct timeval timeout = { .tv_sec = 10 };
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    if (!peer_allowed(conn))
        snprintf(reply, sizeof(reply), "ERR permission denied: only the process owner or root");
    else if (read_request(conn, line, sizeof(line), fds, &n_fds) != 0)
        snprintf(reply, sizeof(reply), "ERR no request");
    else if (client_gone(conn)) /* queued while we were stopped, say: nobody waits for it */
        rp_log("request dropped, its client hung up before it was served: %.40s", line);
    else
        handle(conn, line, fds, n_fds, reply, sizeof(reply));
    for (int k = 0; k < n_fds; k++)
        close(fds[k]);
    if (reply[0] && send_reply(conn, reply) != 0)
        RP_DEBUG("control socket: the reply was not delivered: %s", strerror(errno));
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

/* 0 when dir may hold the control socket: a real directory (no symbolic link), of this user
 * or root, that group and others cannot write, and that we can write. 1 with why set when it is
 * foreign (sockets.py: directory_problem); -1 when it is merely unusable (absent, no access). */
static int check_dir(const char *dir, char *why, size_t len)
{
    struct stat st;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ELOOP && errno != ENOTDIR)
            return -1;
        snprintf(why, len, "it is a symbolic link or not a directory");
        return 1;
    }
    int rc = fstat(fd, &st);
    close(fd);
    if (rc != 0)
        return -1;
    if (st.st_uid != geteuid() && st.st_uid != 0) {
        snprintf(why, len, "it is owned by UID %u", (unsigned)st.st_uid);
        return 1;
    }
    if (st.st_mode & 022) {
        snprintf(why, len, "group or others may write to it (mode %04o)",
                 (unsigned)(st.st_mode & 07777));
        return 1;
    }
    return access(dir, W_OK) == 0 ? 0 : -1;
}

/* The first usable run directory, created 0700 when missing (see the top of this file). */
static int choose_dir(char *dir, size_t len)
{
    char candidates[3][256];
    int n = 0;
    const char *env = getenv("RESTOREPROF_RUN_DIR");
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (env && *env)
        snprintf(candidates[n++], sizeof(candidates[0]), "%s", env);
    if (geteuid() == 0) {
        snprintf(candidates[n++], sizeof(candidates[0]), "/run/restoreprof");
    } else {
        if (runtime && runtime[0] == '/') /* the XDG spec: a relative value is invalid */
            snprintf(candidates[n++], sizeof(candidates[0]), "%s/restoreprof", runtime);
        snprintf(candidates[n++], sizeof(candidates[0]), "/tmp/restoreprof-%u",
                 (unsigned)geteuid());
    }
    for (int i = 0; i < n; i++) {
        char why[96];
        if (strlen(candidates[i]) >= len) {
            rp_log("run directory %s: too long for a socket path", candidates[i]);
            continue;
        }
        mkdir(candidates[i], 0700);
        int rc = check_dir(candidates[i], why, sizeof(why));
        if (rc == 1)
            rp_log("run directory %s refused: %s (another user could swap the socket there)",
                   candidates[i], why);
        if (rc == 0) {
            snprintf(dir, len, "%s", candidates[i]);
            return 0;
        }
    }
    return -1;
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
