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
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern void print_on_level(unsigned int loglevel, const char *format, ...) __attribute__((weak));
extern int criu_get_image_dir(void) __attribute__((weak));
/* Not in the UAPI header, but exported by the criu binary and used by CRIU's own GPU plugins:
 * a plugin named in the inventory image must be loaded at restore, else CRIU refuses ("Missing
 * required plugin"). So a checkpoint this plugin made is never restored without it (which
 * would leave its processes held by the driver). Weak: absent, the record alone decides. */
extern int add_inventory_plugin(const char *name) __attribute__((weak));
extern bool check_and_remove_inventory_plugin(const char *name, size_t n) __attribute__((weak));

#define LOCK_TIMEOUT_MS 10000 /* as restoreprof checkpoint's default --lock-timeout */
#define RELEASE_TIMEOUT_S 120 /* how long the finisher waits for CRIU to let a process go */

struct task {
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

static struct task tasks[RPC_MAX_TASKS];
static int ntasks;
static int stage_now = -1;
static int active; /* restore: the images hold a record of this plugin */
static struct rpc_settings settings;
static char images[RPC_LINE];
static char recorded_libcuda[RPC_LINE]; /* restore: the driver library the dump used */

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

static void log_agent_line(const char *text)
{
    rpc_log(RPC_LOG_INFO, "agent: %s", text);
}

/* ---- the images folder and the record in it ---- */

static int images_fd(void)
{
    return criu_get_image_dir ? criu_get_image_dir() : -1;
}

static int find_images_path(void)
{
    char link[64];
    int fd = images_fd();
    if (fd < 0)
        return -1;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, images, sizeof(images) - 1);
    if (n <= 0)
        return -1;
    images[n] = '\0';
    return 0;
}

static int record_append(const struct task *t)
{
    char line[256];
    int fd = openat(images_fd(), RPC_RECORD, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int ok = 1;
    if (ntasks == 0) { /* first line: the driver library, for the agent at restore */
        int n = snprintf(line, sizeof(line), "libcuda %.200s\n", rpc_cuda_path);
        ok = write(fd, line, (size_t)n) == n;
    }
    int n = snprintf(line, sizeof(line), "%d %s %lld\n", t->vpid, t->snapshot[0] ? t->snapshot : "-",
                     t->bytes);
    ok = ok && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    return close(fd) == 0 && ok ? 0 : -1;
}

/* 1 and tasks[] filled from the record, 0 when there is none (not ours), -1 when unreadable. */
static int record_load(void)
{
    int fd = openat(images_fd(), RPC_RECORD, O_RDONLY | O_CLOEXEC);
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
    ntasks = 0;
    while (ntasks < RPC_MAX_TASKS && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "libcuda ", 8) == 0) {
            snprintf(recorded_libcuda, sizeof(recorded_libcuda), "%s", line + 8);
            recorded_libcuda[strcspn(recorded_libcuda, "\n")] = '\0';
            if (access(recorded_libcuda, R_OK) != 0) /* another machine's, or a gone PID's */
                recorded_libcuda[0] = '\0';
            continue;
        }
        if (sscanf(line, "%d %63s %lld", &vpid, name, &bytes) != 3)
            continue;
        struct task *t = &tasks[ntasks++];
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

/* ---- dump ---- */

static void reload_now(const struct task *t)
{
    char line[128], reply[RPC_LINE];
    if (!t->snapshot[0])
        return;
    snprintf(line, sizeof(line), "RELOAD %d %d %s", t->pid, t->vpid, t->snapshot);
    if (rpc_agent_request(line, reply, sizeof(reply), log_agent_line) != 0)
        rpc_log(RPC_LOG_ERROR, "PID %d: its offloaded GPU memory could not be reloaded (%s); it "
                "is held before its next CUDA call and %s/%s is intact: run 'python -m "
                "restoreprof.criu_plugin.agent reload %d %s/%s'", t->pid, reply, images,
                t->snapshot, t->pid, images, t->snapshot);
}

/* 0: go on; -1: the process runs a runtime whose checkpoint cannot be restored
 * (restoreprof.checkpoint.compat decides, in the agent): refuse before anything is touched. */
static int check_restorable(int pid)
{
    char line[64], reply[RPC_LINE], err[RPC_LINE];
    if (!rpc_agent_running() &&
        rpc_agent_start("dump", images, rpc_cuda_path, err, sizeof(err)) != 0) {
        rpc_log(RPC_LOG_WARN, "PID %d: the restoreprof agent did not start (%s): no offload, "
                "and no check for runtimes the driver cannot restore", pid, err);
        return 0;
    }
    snprintf(line, sizeof(line), "CHECK %d", pid);
    if (rpc_agent_request(line, reply, sizeof(reply), log_agent_line) == 0)
        return 0;
    if (!rpc_agent_running()) { /* the agent died: not a verdict */
        rpc_log(RPC_LOG_WARN, "PID %d: %s", pid, reply);
        return 0;
    }
    rpc_log(RPC_LOG_ERROR, "%s", reply);
    return -1;
}

static void offload(struct task *t)
{
    char line[128], reply[RPC_LINE];
    if (!rpc_agent_running()) {
        rpc_log(RPC_LOG_WARN, "PID %d: no restoreprof agent: the driver checkpoints its GPU "
                "memory (the plain path)", t->pid);
        return;
    }
    snprintf(line, sizeof(line), "OFFLOAD %d %d", t->pid, t->vpid);
    if (rpc_agent_request(line, reply, sizeof(reply), log_agent_line) != 0) {
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
static void undo_driver(struct task *t)
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
    if (stage_now != CR_PLUGIN_STAGE__DUMP || !rpc_maps(pid, "libcuda.so"))
        return -ENOTSUP; /* not a CUDA process: another plugin's, or nobody's */
    if (ntasks == RPC_MAX_TASKS) {
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
    if (ntasks == 0 && add_inventory_plugin && add_inventory_plugin(RPC_NAME) != 0) {
        rpc_log(RPC_LOG_ERROR, "cannot add the plugin to CRIU's inventory image");
        return -1;
    }
    struct task *t = &tasks[ntasks];
    memset(t, 0, sizeof(*t));
    t->pid = pid;
    t->vpid = rpc_inner_pid(pid);
    if (settings.parallel && rpc_maps(pid, "librestoreprof_shim"))
        offload(t);
    CUcheckpointLockArgs lock_args = { .timeoutMs = LOCK_TIMEOUT_MS };
    rc = rpc_cu.lock(pid, &lock_args);
    if (rc == CUDA_SUCCESS) {
        t->state = 1;
        rc = rpc_cu.checkpoint(pid, NULL);
    }
    if (rc == CUDA_SUCCESS) {
        t->state = 2;
        if (record_append(t) != 0) {
            rpc_log(RPC_LOG_ERROR, "cannot write %s/%s: %s", images, RPC_RECORD, strerror(errno));
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
    ntasks++;
    rpc_log(RPC_LOG_INFO, "PID %d (PID %d in its namespace): CUDA locked and checkpointed", pid,
            t->vpid);
    return 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__PAUSE_DEVICES, pause_devices)

/* The processes are frozen until fini returns: the agent resumes those that live on. */
static void dump_fini(int ret)
{
    char line[RPC_LINE], reply[RPC_LINE], err[RPC_LINE];
    if (ntasks == 0) {
        rpc_agent_close();
        return;
    }
    if (!rpc_agent_running() &&
        rpc_agent_start("dump", images, rpc_cuda_path, err, sizeof(err)) != 0) {
        rpc_log(RPC_LOG_ERROR, "the restoreprof agent did not start (%s): CUDA processes that "
                "live on stay locked; resume each with 'python -m restoreprof.criu_plugin.agent "
                "resume PID'", err);
        return;
    }
    for (int i = 0; i < ntasks; i++) {
        snprintf(line, sizeof(line), "WATCH %d %d %s", tasks[i].pid, tasks[i].vpid,
                 tasks[i].snapshot[0] ? tasks[i].snapshot : "-");
        if (rpc_agent_request(line, reply, sizeof(reply), log_agent_line) != 0)
            rpc_log(RPC_LOG_ERROR, "PID %d: %s", tasks[i].pid, reply);
    }
    /* The agent answers at once and works on after we hang up. */
    if (rpc_agent_request(ret ? "RESUME failed" : "RESUME done", reply, sizeof(reply),
                          log_agent_line) != 0)
        rpc_log(RPC_LOG_ERROR, "resuming CUDA processes that live on: %s", reply);
    rpc_agent_close();
}

/* ---- restore ---- */

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
    struct task *t = arg;
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
static void adopt_step(struct task *t)
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
             "reload %d %s/%s'", t->pid, reply, images, t->snapshot, t->pid, images,
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
    for (int i = 0; i < ntasks && !pid; i++)
        pid = tasks[i].state ? tasks[i].pid : 0;
    int driver_ok = rpc_cuda_load(pid, recorded_libcuda, err, sizeof(err)) == 0;
    /* CRIU runs the hook for every process before it lets any go: once the first is let go,
     * the list is complete. */
    wait_released(pid);
    if (!driver_ok) {
        finisher_failed = 1;
        note("Error: the CUDA driver is out of reach (%s): the restored CUDA processes stay held;"
             " resume each with 'python -m restoreprof.criu_plugin.agent resume PID'", err);
        return NULL;
    }
    for (int i = 0; i < ntasks; i++) {
        struct task *t = &tasks[i];
        t->threaded = t->state && pthread_create(&t->thread, NULL, driver_step, t) == 0;
        if (t->state && !t->threaded)
            driver_step(t); /* no thread to be had: in this one */
    }
    for (int i = 0; i < ntasks; i++)
        if (tasks[i].threaded)
            pthread_join(tasks[i].thread, NULL);
    for (int i = 0; i < ntasks; i++)
        if (tasks[i].state)
            adopt_step(&tasks[i]);
    return NULL;
}

static int resume_devices_late(int pid)
{
    if (stage_now != CR_PLUGIN_STAGE__RESTORE || !active)
        return -ENOTSUP;
    int vpid = rpc_inner_pid(pid);
    pthread_mutex_lock(&finisher_lock);
    struct task *t = NULL;
    for (int i = 0; i < ntasks && !t; i++)
        if (tasks[i].vpid == vpid && !tasks[i].state)
            t = &tasks[i];
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

static int restore_init(void)
{
    char err[RPC_LINE];
    if (check_and_remove_inventory_plugin) /* we are loaded: CRIU's check must pass */
        check_and_remove_inventory_plugin(RPC_NAME, strlen(RPC_NAME) + 1);
    int found = record_load();
    if (found < 0) {
        rpc_log(RPC_LOG_ERROR, "cannot read %s/%s: %s", images, RPC_RECORD, strerror(errno));
        return -1;
    }
    active = found;
    if (!active)
        return 0;
    int snapshots = 0;
    for (int i = 0; i < ntasks; i++)
        snapshots += tasks[i].snapshot[0] != 0;
    rpc_log(RPC_LOG_INFO, "%d CUDA process(es) to restore, %d with offloaded GPU memory", ntasks,
            snapshots);
    /* CRIU_CUDA_PARALLEL_RESTORE=0 still adopts nothing preloaded: the agent reloads instead. */
    if (snapshots && rpc_agent_start("restore", images, recorded_libcuda, err, sizeof(err)) != 0)
        rpc_log(RPC_LOG_WARN, "the restoreprof agent did not start (%s); offloaded GPU memory "
                "cannot come back", err);
    return 0;
}

static void restore_fini(int ret)
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

/* ---- init / fini ---- */

static int plugin_init(int stage)
{
    char err[RPC_LINE];
    stage_now = stage;
    ntasks = 0;
    if (stage == CR_PLUGIN_STAGE__PRE_DUMP)
        return 0; /* GPU state is not pre-dumped */
    if (rpc_settings_load(&settings, err, sizeof(err)) != 0) {
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
    rpc_log(RPC_LOG_INFO, "loaded (stage %d, images %s, parallel %d)", stage, images,
            settings.parallel);
    if (stage == CR_PLUGIN_STAGE__DUMP) /* a record left by an earlier dump into this folder */
        unlinkat(images_fd(), RPC_RECORD, 0);
    return stage == CR_PLUGIN_STAGE__RESTORE ? restore_init() : 0;
}

static void plugin_fini(int stage, int ret)
{
    if (stage == CR_PLUGIN_STAGE__DUMP)
        dump_fini(ret);
    else if (stage == CR_PLUGIN_STAGE__RESTORE)
        restore_fini(ret);
}

RPC_EXPORT CR_PLUGIN_REGISTER(RPC_NAME, plugin_init, plugin_fini)
