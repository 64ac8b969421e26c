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
