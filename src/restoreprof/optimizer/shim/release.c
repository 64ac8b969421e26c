/*
 * Release hooks: functions the program registers (restoreprof's Python start-up hook does, for
 * PyTorch's and CuPy's caching allocators) that give memory the program holds but no longer
 * uses back to the driver. OFFLOAD runs them before the gate closes, so freed memory is never
 * saved: a Llama-3-8B-shaped PyTorch process held 21 GB of GPU memory for 16 GB of tensors.
 *
 * They run on a thread of their own, and OFFLOAD waits for them at most a bounded time: a
 * Python hook needs the GIL, and a program that never lets it go must not hang a checkpoint.
 * A hook still running when the wait ends is left to finish; its frees then wait at the gate
 * until RELOAD, which is harmless, and no second run starts while it is inside.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RP_MAX_RELEASE_HOOKS 8

static struct {
    pthread_mutex_t lock;
    pthread_cond_t finished;
    rp_release_hook hooks[RP_MAX_RELEASE_HOOKS];
    int count;
    int running;  /* a run is inside the hooks (perhaps one an earlier OFFLOAD gave up on) */
    int failures; /* of the last run: hooks that returned nonzero */
} release = { .lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t cond_once = PTHREAD_ONCE_INIT;

static void init_cond(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&release.finished, &attr);
    pthread_condattr_destroy(&attr);
}

/* 0 when registered (or already registered), -1 when the table is full or fn is NULL. */
RP_EXPORT int rp_register_before_offload(rp_release_hook fn)
{
    int rc = -1;
    pthread_mutex_lock(&release.lock);
    for (int i = 0; fn && i < release.count; i++)
        if (release.hooks[i] == fn)
            rc = 0;
    if (fn && rc != 0 && release.count < RP_MAX_RELEASE_HOOKS) {
        release.hooks[release.count++] = fn;
        rc = 0;
    }
    pthread_mutex_unlock(&release.lock);
    return rc;
}

/* For a program that is ending (the Python hook unregisters at exit: a callback into a
 * finalised interpreter would crash). 0 when it was registered. */
RP_EXPORT int rp_unregister_before_offload(rp_release_hook fn)
{
    int rc = -1;
    pthread_mutex_lock(&release.lock);
    for (int i = 0; i < release.count; i++) {
        if (release.hooks[i] == fn) {
            release.hooks[i] = release.hooks[--release.count];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&release.lock);
    return rc;
}

static int first_context(struct rp_allocation *a, void *arg)
{
    *(CUcontext *)arg = a->context;
    return 1;
}

static void *run_hooks(void *arg)
{
    rp_release_hook hooks[RP_MAX_RELEASE_HOOKS];
    /* A new thread has no current context, and the frees a hook makes need one: give it the
     * context the program's memory lives in (a framework sets its own device anyway). */
    CUcontext context = NULL;
    rp_registry_each(first_context, &context);
    if (context)
        rp_real.cuCtxSetCurrent(context);
    pthread_mutex_lock(&release.lock);
    int count = release.count;
    memcpy(hooks, release.hooks, sizeof(hooks));
    pthread_mutex_unlock(&release.lock);
    int failures = 0;
    for (int i = 0; i < count; i++)
        failures += hooks[i]() != 0;
    pthread_mutex_lock(&release.lock);
    release.failures = failures;
    release.running = 0;
    pthread_cond_broadcast(&release.finished);
    pthread_mutex_unlock(&release.lock);
    return NULL;
}

const char *rp_release_outcome_name(enum rp_release_outcome outcome)
{
    static const char *names[] = { "off", "none", "ok", "failed", "timeout", "busy", "error" };
    return outcome < sizeof(names) / sizeof(names[0]) ? names[outcome] : "error";
}

enum rp_release_outcome rp_release_run(int enabled, unsigned timeout_ms, uint64_t *ns)
{
    uint64_t start = rp_now_ns();
    *ns = 0;
    rp_free_ranges_clear(); /* only what this run's hooks report counts */
    if (!enabled)
        return RP_RELEASE_OFF;
    pthread_once(&cond_once, init_cond);
    pthread_mutex_lock(&release.lock);
    if (release.count == 0) {
        pthread_mutex_unlock(&release.lock);
        return RP_RELEASE_NONE;
    }
    if (release.running) { /* an earlier run never came back: do not pile up another */
        pthread_mutex_unlock(&release.lock);
        return RP_RELEASE_BUSY;
    }
    pthread_t tid;
    release.running = 1;
    if (pthread_create(&tid, NULL, run_hooks, NULL) != 0) {
        release.running = 0;
        pthread_mutex_unlock(&release.lock);
        return RP_RELEASE_ERROR;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    int timed_out = 0;
    while (release.running && !timed_out)
        timed_out = pthread_cond_timedwait(&release.finished, &release.lock, &deadline) != 0;
    enum rp_release_outcome outcome = release.running    ? RP_RELEASE_TIMEOUT
                                      : release.failures ? RP_RELEASE_FAILED
                                                         : RP_RELEASE_OK;
    pthread_mutex_unlock(&release.lock);
    /* A thread that returned is joined, so none is left exiting while CRIU dumps the process;
     * one that did not is left to finish on its own. */
    if (outcome == RP_RELEASE_TIMEOUT)
        pthread_detach(tid);
    else
        pthread_join(tid, NULL);
    *ns = rp_now_ns() - start;
    if (outcome == RP_RELEASE_TIMEOUT)
        rp_log("the program's release hook did not return within %u ms; offloading without it "
               "(its freed memory is saved too)", timeout_ms);
    return outcome;
}

/* ---- blocks the program freed inside memory it keeps ----
 *
 * A caching allocator frees what it can (empty_cache), but a block freed inside a segment that
 * also holds live tensors stays allocated from the driver's view: PyTorch loading a Llama-shaped
 * model (fp32 temporaries converted to bf16) keeps 4.4 GB of such blocks for 16 GB of weights.
 * A hook may report them: it reads rp_free_ranges_begin() (a stamp), then the allocator's view
 * of its free blocks, then hands both to rp_free_ranges_note(). OFFLOAD, with the gate closed,
 * uses them only when no intercepted call passed the gate since the stamp was read: every write
 * to GPU memory (a kernel, a copy, a memset) passes it, so none can have used a block the
 * allocator handed out after reporting it free. Chunks that lie wholly inside the ranges are
 * not copied: they are saved as zeros (one chunk, by content), and come back as zeros. */

static struct {
    pthread_mutex_t lock;
    int noted;       /* ranges were noted by this run of the hooks */
    uint64_t stamp;  /* the gate's pass count when the hook read the allocator */
    uint64_t *pairs; /* [start, end) pairs, sorted, merged */
    size_t n;
} freed = { .lock = PTHREAD_MUTEX_INITIALIZER };

RP_EXPORT uint64_t rp_free_ranges_begin(void)
{
    return rp_gate_passes();
}

static int by_start(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ranges: n (address, size) pairs the program's allocator holds free, as read after stamp
 * (rp_free_ranges_begin). 0, or -1 when out of memory (nothing is noted then). */
RP_EXPORT int rp_free_ranges_note(uint64_t stamp, const uint64_t *ranges, size_t n)
{
    uint64_t *pairs = malloc((n ? n : 1) * 2 * sizeof(*pairs));
    if (!pairs)
        return -1;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (ranges[2 * i + 1] == 0 || ranges[2 * i] + ranges[2 * i + 1] < ranges[2 * i])
            continue; /* empty, or wrapping around: not a range */
        pairs[2 * kept] = ranges[2 * i];
        pairs[2 * kept + 1] = ranges[2 * i] + ranges[2 * i + 1];
        kept++;
    }
    qsort(pairs, kept, 2 * sizeof(*pairs), by_start);
    size_t merged = 0;
    for (size_t i = 0; i < kept; i++) {
        if (merged && pairs[2 * i] <= pairs[2 * merged - 1]) {
            if (pairs[2 * i + 1] > pairs[2 * merged - 1])
                pairs[2 * merged - 1] = pairs[2 * i + 1];
            continue;
        }
        pairs[2 * merged] = pairs[2 * i];
        pairs[2 * merged + 1] = pairs[2 * i + 1];
        merged++;
    }
    pthread_mutex_lock(&freed.lock);
    free(freed.pairs);
    freed.pairs = pairs;
    freed.n = merged;
    freed.stamp = stamp;
    freed.noted = 1;
    pthread_mutex_unlock(&freed.lock);
    return 0;
}

void rp_free_ranges_clear(void)
{
    pthread_mutex_lock(&freed.lock);
    free(freed.pairs);
    freed.pairs = NULL;
    freed.n = 0;
    freed.noted = 0;
    pthread_mutex_unlock(&freed.lock);
}

const char *rp_free_state_name(enum rp_free_state state)
{
    static const char *names[] = { "none", "used", "stale", "error" };
    return state < sizeof(names) / sizeof(names[0]) ? names[state] : "error";
}

enum rp_free_state rp_free_ranges_take(int check, struct rp_free_ranges *out)
{
    *out = (struct rp_free_ranges){ 0 };
    pthread_mutex_lock(&freed.lock);
    enum rp_free_state state = !freed.noted                           ? RP_FREE_NONE
                               : check && freed.stamp != rp_gate_passes() ? RP_FREE_STALE
                                                                          : RP_FREE_USED;
    if (state == RP_FREE_USED && freed.n) {
        out->pairs = malloc(freed.n * 2 * sizeof(*out->pairs));
        if (out->pairs) {
            memcpy(out->pairs, freed.pairs, freed.n * 2 * sizeof(*out->pairs));
            out->n = freed.n;
        } else {
            state = RP_FREE_ERROR;
        }
    }
    pthread_mutex_unlock(&freed.lock);
    return state;
}

void rp_free_ranges_done(struct rp_free_ranges *ranges)
{
    free(ranges->pairs);
    *ranges = (struct rp_free_ranges){ 0 };
}

int rp_free_ranges_cover(const struct rp_free_ranges *ranges, uint64_t address, size_t n)
{
    if (!ranges || !ranges->n || n == 0)
        return 0;
    /* the last range starting at or before address */
    size_t lo = 0, hi = ranges->n;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (ranges->pairs[2 * mid] <= address)
            lo = mid;
        else
            hi = mid;
    }
    return ranges->pairs[2 * lo] <= address && address + n <= ranges->pairs[2 * lo + 1];
}
