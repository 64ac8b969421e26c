/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
/*
 * restoreprof's CRIU plugin: the fast GPU path inside `criu dump` / `criu restore`, so that
 * container runtimes (podman, CRI-O, containerd), which run CRIU with its plugins, get it.
 *
 * Division of labour. The driver's checkpoint API is called here, in C, through one dlopen'd
 * table (cuda.c): it is the plain path, and it must work when nothing else does. Everything
 * that moves GPU memory fast is restoreprof's Python (agent.py, started by this plugin and fed
 * one line at a time): the offload through the interception library at dump, the preload
 * (through the warm pool when one runs) while CRIU restores, and the adoption afterwards. That
 * code exists, is tested, and finds the library's socket however the process is namespaced;
 * a second copy in C would drift. Any agent failure falls back to the driver's own path.
 *
 * Dump (hooks run in CRIU's main thread):
 *   PAUSE_DEVICES(pid)   runs while pid still runs, just before CRIU seizes it. A CUDA process
 *                        is offloaded (agent: GPU memory -> CRIU's images folder, so an exported
 *                        container checkpoint carries it), then locked and checkpointed by the
 *                        driver here. NVIDIA's plugin checkpoints later, in CHECKPOINT_DEVICES,
 *                        on a frozen process, which needs CRIU's internal ptrace helpers to let
 *                        the driver's restore thread run; checkpointing before the freeze needs
 *                        none, and is what `restoreprof checkpoint` does around criu dump.
 *   fini(DUMP)           the processes are still frozen. Those that live on (--leave-running, or
 *                        a failed dump) are handed to the agent, which resumes them (driver
 *                        restore + unlock, reload of offloaded memory) once CRIU lets them go.
 * Restore:
 *   init(RESTORE)        reads restoreprof-criu.txt from the images; when snapshots are there,
 *                        starts the agent, which starts preloading at once, while CRIU works.
 *   RESUME_DEVICES_LATE  notes the process and starts the finisher thread. The processes are
 *                        still stopped by CRIU here, which the driver's restore cannot run on.
 *   finisher thread      waits until CRIU has let the processes go, then per process: driver
 *                        restore + unlock (here), then the agent's adoption of the preloaded
 *                        memory (or, failing that, a reload inside the process). Until then the
 *                        interception library holds the process's CUDA calls; nothing runs on
 *                        missing memory. It writes no CRIU log (CRIU's logger is not
 *                        thread-safe): its lines are printed at fini.
 *   fini(RESTORE)        waits for the finisher and logs what it did. With --restore-detached
 *                        (and always through CRIU's RPC, as runc, crun and podman use it), fini
 *                        runs after the processes are resumed, so `criu restore` returns with
 *                        the GPU memory back.
 *
 * Files: plugin.c (this: init and fini, the record beside the images, logging), dump.c and
 * restore.c (the two halves), cuda.c (the driver table), agent.c (the agent and /proc), settings.c.
 *
 * NVIDIA's cuda_plugin.so hooks the same points; CRIU runs the first plugin that handles a
 * hook for a process, in directory order. Two plugins for one GPU is never what was meant, so
 * this plugin refuses to load beside it (init fails, before any process is touched).
 */
#define _GNU_SOURCE
#include "plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern void print_on_level(unsigned int loglevel, const char *format, ...) __attribute__((weak));
extern int criu_get_image_dir(void) __attribute__((weak));

/* State shared by the dump and restore halves (plugin.h). */
struct rpc_task rpc_tasks[RPC_MAX_TASKS];
int rpc_ntasks;
int rpc_stage = -1;
struct rpc_settings rpc_settings_now;
char rpc_images[RPC_LINE];
char rpc_recorded_libcuda[RPC_LINE];

/* ---- logging ---- */

void rpc_log(unsigned int level, const char *fmt, ...)
{
    char text[RPC_LINE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    const char *kind = level == RPC_LOG_ERROR ? "Error: " : level == RPC_LOG_WARN ? "Warn: " : "";
    if (print_on_level)
        print_on_level(level, "%s" RPC_NAME ": %s\n", kind, text);
    else
        fprintf(stderr, "%s" RPC_NAME ": %s\n", kind, text);
}

void rpc_log_agent_line(const char *text)
{
    rpc_log(RPC_LOG_INFO, "agent: %s", text);
}

/* ---- the images folder and the record in it ---- */

int rpc_images_fd(void)
{
    return criu_get_image_dir ? criu_get_image_dir() : -1;
}

static int find_images_path(void)
{
    char link[64];
    int fd = rpc_images_fd();
    if (fd < 0)
        return -1;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, rpc_images, sizeof(rpc_images) - 1);
    if (n <= 0)
        return -1;
    rpc_images[n] = '\0';
    return 0;
}

int rpc_record_append(const struct rpc_task *t)
{
    char line[256];
    int fd = openat(rpc_images_fd(), RPC_RECORD, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                    0600);
    if (fd < 0)
        return -1;
    int ok = 1;
    if (rpc_ntasks == 0) { /* first line: the driver library, for the agent at restore */
        int n = snprintf(line, sizeof(line), "libcuda %.200s\n", rpc_cuda_path);
        ok = write(fd, line, (size_t)n) == n;
    }
    int n = snprintf(line, sizeof(line), "%d %s %lld\n", t->vpid,
                     t->snapshot[0] ? t->snapshot : "-", t->bytes);
    ok = ok && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    return close(fd) == 0 && ok ? 0 : -1;
}

/* 1 and rpc_tasks[] filled from the record, 0 when there is none (not ours), -1 when unreadable. */
int rpc_record_load(void)
{
    int fd = openat(rpc_images_fd(), RPC_RECORD, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return -1;
    }
    char line[256], name[64];
    long long bytes;
    int vpid;
    rpc_ntasks = 0;
    while (rpc_ntasks < RPC_MAX_TASKS && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "libcuda ", 8) == 0) {
            snprintf(rpc_recorded_libcuda, sizeof(rpc_recorded_libcuda), "%s", line + 8);
            rpc_recorded_libcuda[strcspn(rpc_recorded_libcuda, "\n")] = '\0';
            if (access(rpc_recorded_libcuda, R_OK) != 0) /* another machine's, or a gone PID's */
                rpc_recorded_libcuda[0] = '\0';
            continue;
        }
        if (sscanf(line, "%d %63s %lld", &vpid, name, &bytes) != 3)
            continue;
        struct rpc_task *t = &rpc_tasks[rpc_ntasks++];
        memset(t, 0, sizeof(*t));
        t->vpid = vpid;
        t->bytes = bytes;
        if (strcmp(name, "-") != 0)
            snprintf(t->snapshot, sizeof(t->snapshot), "%s", name);
    }
    fclose(f);
    return 1;
}

/* ---- refusing to run beside NVIDIA's plugin ---- */

/* CRIU loads every *.so of one folder (--lib, $CRIU_LIBS_DIR or /usr/lib/criu): ours. */
static int beside_cuda_plugin(char *where, size_t len)
{
    Dl_info info;
    if (!dladdr((void *)beside_cuda_plugin, &info) || !info.dli_fname)
        return 0;
    char self[RPC_LINE];
    snprintf(self, sizeof(self), "%s", info.dli_fname);
    snprintf(where, len, "%s/cuda_plugin.so", dirname(self));
    struct stat st;
    return stat(where, &st) == 0;
}

/* ---- init / fini ---- */

static int plugin_init(int stage)
{
    char err[RPC_LINE];
    rpc_stage = stage;
    rpc_ntasks = 0;
    if (stage == CR_PLUGIN_STAGE__PRE_DUMP)
        return 0; /* GPU state is not pre-dumped */
    if (rpc_settings_load(&rpc_settings_now, err, sizeof(err)) != 0) {
        rpc_log(RPC_LOG_ERROR, "%s", err);
        return -1;
    }
    if (beside_cuda_plugin(err, sizeof(err))) {
        rpc_log(RPC_LOG_ERROR, "NVIDIA's CUDA plugin %s is in the same plugin folder: both would "
                "checkpoint the same GPUs. restoreprof's plugin replaces it: keep one of the two "
                "in that folder (or give criu --lib a folder with only one); nothing was touched",
                err);
        return -1;
    }
    if (find_images_path() != 0) {
        rpc_log(RPC_LOG_ERROR, "cannot find CRIU's images folder");
        return -1;
    }
    rpc_log(RPC_LOG_INFO, "loaded (stage %d, images %s, parallel %d)", stage, rpc_images,
            rpc_settings_now.parallel);
    if (stage == CR_PLUGIN_STAGE__DUMP) /* a record left by an earlier dump into this folder */
        unlinkat(rpc_images_fd(), RPC_RECORD, 0);
    return stage == CR_PLUGIN_STAGE__RESTORE ? rpc_restore_init() : 0;
}

static void plugin_fini(int stage, int ret)
{
    if (stage == CR_PLUGIN_STAGE__DUMP)
        rpc_dump_fini(ret);
    else if (stage == CR_PLUGIN_STAGE__RESTORE)
        rpc_restore_fini(ret);
}

RPC_EXPORT CR_PLUGIN_REGISTER(RPC_NAME, plugin_init, plugin_fini)
