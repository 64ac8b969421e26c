/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
/*
 * The dump half of the plugin (plugin.c says how the halves fit): offload, then the driver's
 * lock and checkpoint of each CUDA process before CRIU freezes it; at fini, the processes that
 * live on are handed to the agent to get their GPU back once CRIU lets them go.
 */
#define _GNU_SOURCE
#include "plugin.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Not in the UAPI header, but exported by the criu binary and used by CRIU's own GPU plugins:
 * a plugin named in the inventory image must be loaded at restore, else CRIU refuses ("Missing
 * required plugin"). So a checkpoint this plugin made is never restored without it (which
 * would leave its processes held by the driver). Weak: absent, the record alone decides. */
extern int add_inventory_plugin(const char *name) __attribute__((weak));

#define LOCK_TIMEOUT_MS 10000 /* as restoreprof checkpoint's default --lock-timeout */

static void reload_now(const struct rpc_task *t)
{
    char line[128], reply[RPC_LINE];
    if (!t->snapshot[0])
        return;
    snprintf(line, sizeof(line), "RELOAD %d %d %s", t->pid, t->vpid, t->snapshot);
    if (rpc_agent_request(line, reply, sizeof(reply), rpc_log_agent_line) != 0)
        rpc_log(RPC_LOG_ERROR, "PID %d: its offloaded GPU memory could not be reloaded (%s); it "
                "is held before its next CUDA call and %s/%s is intact: run 'python -m "
                "restoreprof.criu_plugin.agent reload %d %s/%s'", t->pid, reply, rpc_images,
                t->snapshot, t->pid, rpc_images, t->snapshot);
}

/* 0: go on; -1: the process runs a runtime whose checkpoint cannot be restored
 * (restoreprof.checkpoint.compat decides, in the agent): refuse before anything is touched. */
static int check_restorable(int pid)
{
    char line[64], reply[RPC_LINE], err[RPC_LINE];
    if (!rpc_agent_running() &&
        rpc_agent_start("dump", rpc_images, rpc_cuda_path, err, sizeof(err)) != 0) {
        rpc_log(RPC_LOG_WARN, "PID %d: the restoreprof agent did not start (%s): no offload, "
                "and no check for runtimes the driver cannot restore", pid, err);
        return 0;
    }
    snprintf(line, sizeof(line), "CHECK %d", pid);
    if (rpc_agent_request(line, reply, sizeof(reply), rpc_log_agent_line) == 0)
        return 0;
    if (!rpc_agent_running()) { /* the agent died: not a verdict */
        rpc_log(RPC_LOG_WARN, "PID %d: %s", pid, reply);
        return 0;
    }
    rpc_log(RPC_LOG_ERROR, "%s", reply);
    return -1;
}

static void offload(struct rpc_task *t)
{
    char line[128], reply[RPC_LINE];
    if (!rpc_agent_running()) {
        rpc_log(RPC_LOG_WARN, "PID %d: no restoreprof agent: the driver checkpoints its GPU "
                "memory (the plain path)", t->pid);
        return;
    }
    snprintf(line, sizeof(line), "OFFLOAD %d %d", t->pid, t->vpid);
    if (rpc_agent_request(line, reply, sizeof(reply), rpc_log_agent_line) != 0) {
        rpc_log(RPC_LOG_WARN, "PID %d: offload failed (%s): the driver checkpoints its GPU "
                "memory (the plain path)", t->pid, reply);
        return;
    }
    if (sscanf(reply, "%63s %lld", t->snapshot, &t->bytes) != 2 || strcmp(t->snapshot, "-") == 0)
        t->snapshot[0] = '\0';
    else
        rpc_log(RPC_LOG_INFO, "PID %d: %lld bytes of GPU memory offloaded to %s", t->pid,
                t->bytes, t->snapshot);
}

/* Gives pid back its GPU (driver restore + unlock) after a failure part way; pid still runs. */
static void undo_driver(struct rpc_task *t)
{
    CUresult rc;
    if (t->state == 2 && (rc = rpc_cu.restore(t->pid, NULL)) != CUDA_SUCCESS)
        rpc_log(RPC_LOG_ERROR, "PID %d: driver restore failed: %s", t->pid, rpc_cuda_error(rc));
    if (t->state >= 1 && (rc = rpc_cu.unlock(t->pid, NULL)) != CUDA_SUCCESS)
        rpc_log(RPC_LOG_ERROR, "PID %d: driver unlock failed: %s", t->pid, rpc_cuda_error(rc));
    t->state = 0;
}

static int pause_devices(int pid)
{
    char err[RPC_LINE];
    if (rpc_stage != CR_PLUGIN_STAGE__DUMP || !rpc_maps(pid, "libcuda.so"))
        return -ENOTSUP; /* not a CUDA process: another plugin's, or nobody's */
    if (rpc_ntasks == RPC_MAX_TASKS) {
        rpc_log(RPC_LOG_ERROR, "more than %d CUDA processes in one dump", RPC_MAX_TASKS);
        return -1;
    }
    if (rpc_cuda_load(pid, NULL, err, sizeof(err)) != 0) {
        rpc_log(RPC_LOG_ERROR, "PID %d uses CUDA, but the driver is out of reach: %s; run criu "
                "where the process's GPU driver is installed", pid, err);
        return -1;
    }
    CUprocessState state;
    CUresult rc = rpc_cu.get_state(pid, &state);
    if (rc != CUDA_SUCCESS) {
        rpc_log(RPC_LOG_INFO, "PID %d maps libcuda but holds no CUDA state (%s)", pid,
                rpc_cuda_error(rc));
        return -ENOTSUP;
    }
    if (state != CU_PROCESS_STATE_RUNNING) {
        rpc_log(RPC_LOG_ERROR, "PID %d is already %s by the CUDA driver: another checkpoint is in "
                "progress, or a restore did not finish; nothing was changed", pid,
                rpc_cuda_state_name(state));
        return -1;
    }
    if (check_restorable(pid) != 0)
        return -1;
    if (rpc_ntasks == 0 && add_inventory_plugin && add_inventory_plugin(RPC_NAME) != 0) {
        rpc_log(RPC_LOG_ERROR, "cannot add the plugin to CRIU's inventory image");
        return -1;
    }
    struct rpc_task *t = &rpc_tasks[rpc_ntasks];
    memset(t, 0, sizeof(*t));
    t->pid = pid;
    t->vpid = rpc_inner_pid(pid);
    if (rpc_settings_now.parallel && rpc_maps(pid, "librestoreprof_shim"))
        offload(t);
    CUcheckpointLockArgs lock_args = { .timeoutMs = LOCK_TIMEOUT_MS };
    rc = rpc_cu.lock(pid, &lock_args);
    if (rc == CUDA_SUCCESS) {
        t->state = 1;
        rc = rpc_cu.checkpoint(pid, NULL);
    }
    if (rc == CUDA_SUCCESS) {
        t->state = 2;
        if (rpc_record_append(t) != 0) {
            rpc_log(RPC_LOG_ERROR, "cannot write %s/%s: %s", rpc_images, RPC_RECORD,
                    strerror(errno));
            rc = CUDA_ERROR_UNKNOWN;
        }
    } else {
        rpc_log(RPC_LOG_ERROR, "PID %d: driver %s failed: %s", pid,
                t->state ? "checkpoint" : "lock", rpc_cuda_error(rc));
    }
    if (rc != CUDA_SUCCESS) { /* pid still runs: put it back as it was, now */
        undo_driver(t);
        reload_now(t);
        rpc_log(RPC_LOG_ERROR, "PID %d was given its GPU back and runs on; the dump fails", pid);
        return -1;
    }
    rpc_ntasks++;
    rpc_log(RPC_LOG_INFO, "PID %d (PID %d in its namespace): CUDA locked and checkpointed", pid,
            t->vpid);
    return 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__PAUSE_DEVICES, pause_devices)

/* The processes are frozen until fini returns: the agent resumes those that live on. */
void rpc_dump_fini(int ret)
{
    char line[RPC_LINE], reply[RPC_LINE], err[RPC_LINE];
    if (rpc_ntasks == 0) {
        rpc_agent_close();
        return;
    }
    if (!rpc_agent_running() &&
        rpc_agent_start("dump", rpc_images, rpc_cuda_path, err, sizeof(err)) != 0) {
        rpc_log(RPC_LOG_ERROR, "the restoreprof agent did not start (%s): CUDA processes that "
                "live on stay locked; resume each with 'python -m restoreprof.criu_plugin.agent "
                "resume PID'", err);
        return;
    }
    for (int i = 0; i < rpc_ntasks; i++) {
        snprintf(line, sizeof(line), "WATCH %d %d %s", rpc_tasks[i].pid, rpc_tasks[i].vpid,
                 rpc_tasks[i].snapshot[0] ? rpc_tasks[i].snapshot : "-");
        if (rpc_agent_request(line, reply, sizeof(reply), rpc_log_agent_line) != 0)
            rpc_log(RPC_LOG_ERROR, "PID %d: %s", rpc_tasks[i].pid, reply);
    }
    /* The agent answers at once and works on after we hang up. */
    if (rpc_agent_request(ret ? "RESUME failed" : "RESUME done", reply, sizeof(reply),
                          rpc_log_agent_line) != 0)
        rpc_log(RPC_LOG_ERROR, "resuming CUDA processes that live on: %s", reply);
    rpc_agent_close();
}

