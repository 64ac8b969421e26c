/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
/*
 * restoreprof's CRIU plugin: shared declarations (see plugin.c for the design).
 */
#ifndef RESTOREPROF_CRIU_PLUGIN_H
#define RESTOREPROF_CRIU_PLUGIN_H

#include <cuda.h>
#include <stddef.h>

#include "criu-plugin.h"

#define RPC_NAME "restoreprof"
#define RPC_EXPORT __attribute__((visibility("default")))
/* Beside CRIU's images: which processes, which snapshot. */
#define RPC_RECORD "restoreprof-criu.txt"
#define RPC_MAX_TASKS 256
#define RPC_LINE 4096

/* CRIU's log levels (criu/include/log.h); print_on_level is exported by the criu binary. Weak,
 * so the plugin also loads outside CRIU (the tests' settings check), logging to stderr. */
#define RPC_LOG_ERROR 1
#define RPC_LOG_WARN 2
#define RPC_LOG_INFO 3
#define RPC_LOG_DEBUG 4
void rpc_log(unsigned int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <pthread.h>
#include <stdbool.h>

/* CRIU_CUDA_* (settings.c): the ranges come from restoreprof.settings.schema, passed
 * as -D flags by build.py, so Python and C accept exactly the same values. */
struct rpc_settings {
    int streams;
    int chunk_mb;
    int pinned;
    int parallel; /* 0: the plain driver path only (no offload, no preload) */
};
int rpc_settings_load(struct rpc_settings *out, char *err, size_t len);

/* One CUDA process of this dump or restore. */
struct rpc_task {
    int pid;                /* as CRIU sees it (the host's PID namespace) */
    int vpid;               /* in its own PID namespace: the same at dump and at restore */
    char snapshot[64];      /* offloaded GPU memory beside the images, or "" */
    long long bytes;
    int state;              /* dump: 1 locked, 2 checkpointed; restore: 1 seen by the hook */
    /* restore: the finisher's per-process thread */
    pthread_t thread;
    int threaded;
    int released;           /* wait_released()'s answer */
    CUresult driver_rc;
    CUprocessState driver_state;
};

/* plugin.c: state of this CRIU run, shared by the dump (dump.c) and restore (restore.c) halves */
extern struct rpc_task rpc_tasks[RPC_MAX_TASKS];
extern int rpc_ntasks;
extern int rpc_stage;                        /* CR_PLUGIN_STAGE__* of this run */
extern struct rpc_settings rpc_settings_now;
extern char rpc_images[RPC_LINE];            /* CRIU's images folder */
extern char rpc_recorded_libcuda[RPC_LINE];  /* restore: the driver library the dump used */
void rpc_log_agent_line(const char *text);   /* an agent's LOG line into CRIU's log */
int rpc_images_fd(void);
int rpc_record_append(const struct rpc_task *t);
int rpc_record_load(void);                   /* 1 loaded, 0 none (not ours), -1 unreadable */
/* dump.c and restore.c */
void rpc_dump_fini(int ret);
int rpc_restore_init(void);
void rpc_restore_fini(int ret);


/* The CUDA driver, opened with dlopen (cuda.c): one table, every call goes through it. */
struct rpc_cuda {
    CUresult (*init)(unsigned int flags);
    CUresult (*get_state)(int pid, CUprocessState *state);
    CUresult (*lock)(int pid, CUcheckpointLockArgs *args);
    CUresult (*checkpoint)(int pid, CUcheckpointCheckpointArgs *args);
    CUresult (*restore)(int pid, CUcheckpointRestoreArgs *args);
    CUresult (*unlock)(int pid, CUcheckpointUnlockArgs *args);
    CUresult (*error_name)(CUresult rc, const char **name);
};
extern struct rpc_cuda rpc_cu;
extern char rpc_cuda_path[RPC_LINE]; /* the library loaded, handed on to the agent */
/* pid: a process that uses CUDA (its libcuda is the last resort); recorded: the dump's. */
int rpc_cuda_load(int pid, const char *recorded, char *err, size_t len);
const char *rpc_cuda_error(CUresult rc);
const char *rpc_cuda_state_name(CUprocessState state);

/* The Python agent (agent.c; restoreprof/criu_plugin/agent.py): one line each way. */
/* libcuda: the driver library found (or NULL), given to the agent as RESTOREPROF_LIBCUDA. */
int rpc_agent_start(const char *stage, const char *images, const char *libcuda, char *err,
                    size_t len);
int rpc_agent_running(void);
/* Sends line, reads the answer: 0 and reply = the text after OK, or -1 and reply = why.
 * Lines the agent sends as "LOG <text>" before it are handed to log_line (may be NULL). */
int rpc_agent_request(const char *line, char *reply, size_t len,
                      void (*log_line)(const char *text));
void rpc_agent_close(void);

/* /proc (agent.c). */
int rpc_maps(int pid, const char *needle);   /* pid maps a file whose path contains needle */
int rpc_inner_pid(int pid);                  /* pid in its own PID namespace (NSpid), or pid */
int rpc_released(int pid);                   /* 1: no tracer, 0: traced, -1: gone or dying */

#endif
