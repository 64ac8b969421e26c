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
#define RPC_RECORD "restoreprof-criu.txt" /* beside CRIU's images: which processes, which snapshot */
#define RPC_MAX_TASKS 256
#define RPC_LINE 4096

/* CRIU's log levels (criu/include/log.h); print_on_level is exported by the criu binary. Weak,
 * so the plugin also loads outside CRIU (the tests' settings check), logging to stderr. */
#define RPC_LOG_ERROR 1
#define RPC_LOG_WARN 2
#define RPC_LOG_INFO 3
#define RPC_LOG_DEBUG 4
void rpc_log(unsigned int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* CRIU_CUDA_* (settings.c): the ranges come from restoreprof.settings.schema, passed
 * as -D flags by build.py, so Python and C accept exactly the same values. */
struct rpc_settings {
    int streams;
    int chunk_mb;
    int pinned;
    int parallel; /* 0: the plain driver path only (no offload, no preload) */
};
int rpc_settings_load(struct rpc_settings *out, char *err, size_t len);

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
