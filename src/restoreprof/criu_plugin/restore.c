/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
/*
 * The restore half of the plugin (plugin.c says how the halves fit): the agent preloads from
 * init on; RESUME_DEVICES_LATE notes each process; the finisher thread waits until CRIU lets
 * them go, restores them through the driver (a thread each) and has each adopt its memory.
 */
#define _GNU_SOURCE
#include "plugin.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern bool check_and_remove_inventory_plugin(const char *name, size_t n) __attribute__((weak));

#define RELEASE_TIMEOUT_S 120 /* how long the finisher waits for CRIU to let a process go */

static int active; /* the images hold a record of this plugin */
static pthread_t finisher;
static int finisher_started;
static pthread_mutex_t finisher_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int finisher_cancel;
static char finisher_log[RPC_MAX_TASKS * 2][RPC_LINE / 4];
static int finisher_lines;
static int finisher_failed;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    if (finisher_lines == (int)(sizeof(finisher_log) / sizeof(finisher_log[0])))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(finisher_log[finisher_lines++], sizeof(finisher_log[0]), fmt, ap);
    va_end(ap);
}

static void note_agent_line(const char *text)
{
    note("agent: %s", text);
}

/* Waits until CRIU has let pid go: 1 released, 0 gone, -1 timed out or cancelled. */
static int wait_released(int pid)
{
    struct timespec tick = { 0, 1000000 };
    for (long i = 0; i < RELEASE_TIMEOUT_S * 1000L; i++) {
        int r = rpc_released(pid);
        if (r != 0)
            return r > 0 ? 1 : 0;
        if (finisher_cancel)
            return -1;
        nanosleep(&tick, NULL);
    }
    return -1;
}

/* One process's driver restore + unlock, on a thread of its own: the driver restores several
 * processes at once faster than one after another (4 x 4 GiB: 1.8 s against 4.4 s, H100). */
static void *driver_step(void *arg)
{
    struct rpc_task *t = arg;
    t->driver_state = CU_PROCESS_STATE_RUNNING;
    t->released = wait_released(t->pid);
    if (t->released <= 0)
        return NULL;
    CUresult rc = rpc_cu.get_state(t->pid, &t->driver_state);
    if (rc == CUDA_SUCCESS && t->driver_state == CU_PROCESS_STATE_CHECKPOINTED &&
        (rc = rpc_cu.restore(t->pid, NULL)) == CUDA_SUCCESS)
        t->driver_state = CU_PROCESS_STATE_LOCKED;
    if (rc == CUDA_SUCCESS && t->driver_state == CU_PROCESS_STATE_LOCKED &&
        (rc = rpc_cu.unlock(t->pid, NULL)) == CUDA_SUCCESS)
        t->driver_state = CU_PROCESS_STATE_RUNNING;
    t->driver_rc = rc;
    return NULL;
}

/* After the driver's step: the adoption of the preloaded memory (the agent answers one request
 * at a time, and each takes milliseconds). */
static void adopt_step(struct rpc_task *t)
{
    char line[128], reply[RPC_LINE];
    if (t->released <= 0) {
        if (t->released < 0)
            note("Error: PID %d was not let go by CRIU in time; its GPU is not restored", t->pid);
        finisher_failed |= t->released < 0;
        return;
    }
    if (t->driver_rc != CUDA_SUCCESS) {
        finisher_failed = 1;
        note("Error: PID %d: the driver's restore failed (%s); the process is held by the driver"
             " (%s): resume it with 'python -m restoreprof.criu_plugin.agent resume %d'", t->pid,
             rpc_cuda_error(t->driver_rc), rpc_cuda_state_name(t->driver_state), t->pid);
        return;
    }
    if (!t->snapshot[0]) {
        note("PID %d: CUDA restored and unlocked (the driver's path)", t->pid);
        return;
    }
    snprintf(line, sizeof(line), "ADOPT %d %d %s", t->pid, t->vpid, t->snapshot);
    if (rpc_agent_request(line, reply, sizeof(reply), note_agent_line) != 0) {
        finisher_failed = 1;
        note("Error: PID %d: its GPU memory is not back (%s); the process is held before its "
             "next CUDA call and %s/%s is intact: run 'python -m restoreprof.criu_plugin.agent "
             "reload %d %s/%s'", t->pid, reply, rpc_images, t->snapshot, t->pid, rpc_images,
             t->snapshot);
        return;
    }
    note("PID %d: CUDA restored and unlocked; GPU memory back: %s", t->pid, reply);
}

static void *finish(void *arg)
{
    char err[RPC_LINE];
    (void)arg;
    /* Every task exists by now (the hook runs after they were all made), so cuInit here puts
     * no driver descriptor into them; it overlaps CRIU's last steps. */
    int pid = 0;
    for (int i = 0; i < rpc_ntasks && !pid; i++)
        pid = rpc_tasks[i].state ? rpc_tasks[i].pid : 0;
    int driver_ok = rpc_cuda_load(pid, rpc_recorded_libcuda, err, sizeof(err)) == 0;
    /* CRIU runs the hook for every process before it lets any go: once the first is let go,
     * the list is complete. */
    wait_released(pid);
    if (!driver_ok) {
        finisher_failed = 1;
        note("Error: the CUDA driver is out of reach (%s): the restored CUDA processes stay held;"
             " resume each with 'python -m restoreprof.criu_plugin.agent resume PID'", err);
        return NULL;
    }
    for (int i = 0; i < rpc_ntasks; i++) {
        struct rpc_task *t = &rpc_tasks[i];
        t->threaded = t->state && pthread_create(&t->thread, NULL, driver_step, t) == 0;
        if (t->state && !t->threaded)
            driver_step(t); /* no thread to be had: in this one */
    }
    for (int i = 0; i < rpc_ntasks; i++)
        if (rpc_tasks[i].threaded)
            pthread_join(rpc_tasks[i].thread, NULL);
    for (int i = 0; i < rpc_ntasks; i++)
        if (rpc_tasks[i].state)
            adopt_step(&rpc_tasks[i]);
    return NULL;
}

static int resume_devices_late(int pid)
{
    if (rpc_stage != CR_PLUGIN_STAGE__RESTORE || !active)
        return -ENOTSUP;
    int vpid = rpc_inner_pid(pid);
    pthread_mutex_lock(&finisher_lock);
    struct rpc_task *t = NULL;
    for (int i = 0; i < rpc_ntasks && !t; i++)
        if (rpc_tasks[i].vpid == vpid && !rpc_tasks[i].state)
            t = &rpc_tasks[i];
    if (t) {
        t->pid = pid;
        t->state = 1;
    }
    pthread_mutex_unlock(&finisher_lock);
    if (!t)
        return -ENOTSUP;
    if (!finisher_started) {
        if (pthread_create(&finisher, NULL, finish, NULL) != 0) {
            rpc_log(RPC_LOG_ERROR, "cannot start the finisher thread");
            return -1;
        }
        finisher_started = 1;
    }
    return 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESUME_DEVICES_LATE, resume_devices_late)

int rpc_restore_init(void)
{
    char err[RPC_LINE];
    if (check_and_remove_inventory_plugin) /* we are loaded: CRIU's check must pass */
        check_and_remove_inventory_plugin(RPC_NAME, strlen(RPC_NAME) + 1);
    int found = rpc_record_load();
    if (found < 0) {
        rpc_log(RPC_LOG_ERROR, "cannot read %s/%s: %s", rpc_images, RPC_RECORD, strerror(errno));
        return -1;
    }
    active = found;
    if (!active)
        return 0;
    int snapshots = 0;
    for (int i = 0; i < rpc_ntasks; i++)
        snapshots += rpc_tasks[i].snapshot[0] != 0;
    rpc_log(RPC_LOG_INFO, "%d CUDA process(es) to restore, %d with offloaded GPU memory",
            rpc_ntasks, snapshots);
    /* CRIU_CUDA_PARALLEL_RESTORE=0 still adopts nothing preloaded: the agent reloads instead. */
    if (snapshots &&
        rpc_agent_start("restore", rpc_images, rpc_recorded_libcuda, err, sizeof(err)) != 0)
        rpc_log(RPC_LOG_WARN, "the restoreprof agent did not start (%s); offloaded GPU memory "
                "cannot come back", err);
    return 0;
}

void rpc_restore_fini(int ret)
{
    if (finisher_started) {
        if (ret)
            finisher_cancel = 1; /* CRIU failed and killed the processes */
        pthread_join(finisher, NULL);
        for (int i = 0; i < finisher_lines; i++)
            rpc_log(strncmp(finisher_log[i], "Error: ", 7) == 0 ? RPC_LOG_ERROR : RPC_LOG_INFO,
                    "%s", strncmp(finisher_log[i], "Error: ", 7) == 0 ? finisher_log[i] + 7
                                                                      : finisher_log[i]);
        if (finisher_failed)
            rpc_log(RPC_LOG_ERROR, "the GPU restore did not complete for every process (above)");
    }
    rpc_agent_close(); /* the agent drops what it preloaded and nobody adopted, and exits */
}

