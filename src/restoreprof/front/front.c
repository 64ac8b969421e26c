/* The `restoreprof` command's front door, native: a restore is handed to this user's running
 * warm pool without starting Python, whose start (the interpreter, site, the client's imports)
 * was 0.05 to 0.09 s of a 0.6 s hot restore on the H200. Everything else, and a restore that
 * no pool takes, runs restoreprof-py, the Python entry point installed beside this program.
 *
 * The client half of restoreprof.commands.pooled_restore, with the socket checks of
 * restoreprof.system.sockets (connect_checked), in C. Where in doubt it does not decide: a run
 * directory or listener that cannot be trusted, a reply it cannot read, a pool that declines,
 * all go to restoreprof-py, which says what it found and restores there or through the pool.
 * Once the pool has accepted a restore its answer is the restore's (as in Python): a pool that
 * hangs up midway is reported, never retried (the processes may be restored already).
 *
 * Request:  {"op": "restore", "argv": [...], "cwd": "...", "env": {every variable}}
 *           (the pool keeps only the variables that matter to a restore: one list, in Python;
 *           the listener was proved to be this user or root, who can read /proc/PID/environ
 *           of this process anyway, so the whole environment tells it nothing new)
 * Reply:    {"stdout": "...", "stderr": "...", "exit_code": N} or {"declined": "why"}
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "front.h"

#define PYTHON_ENTRY "restoreprof-py"
#define POOL_OFF_ENV "RESTOREPROF_POOL_RESTORE" /* "0": restore in this process */
#define REQUEST_MAX (1 << 16)                  /* the pool reads one message of this many bytes */
#define REPLY_MAX (1 << 22)
#define EXIT_FAILURE_RP 1
#define EXIT_ENVIRONMENT 3
#define EXIT_INTERRUPTED 130

extern char **environ;

/* --- the way to Python ---------------------------------------------------------------------- */

static void run_python(char **argv, int declined)
{
    char self[PATH_MAX], entry[PATH_MAX + sizeof(PYTHON_ENTRY) + 1];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "restoreprof: error: cannot find this program (/proc/self/exe: %s)\n",
                strerror(errno));
        exit(EXIT_ENVIRONMENT);
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    snprintf(entry, sizeof(entry), "%s/%s", self, PYTHON_ENTRY);
    if (declined) /* asked and declined: the Python client need not ask again */
        setenv(POOL_OFF_ENV, "0", 1);
    execv(entry, argv);
    fprintf(stderr, "restoreprof: error: cannot run %s (%s)\n  -> restoreprof's Python entry "
                    "point belongs beside this program: reinstall restoreprof (pip install)\n",
            entry, strerror(errno));
    exit(EXIT_ENVIRONMENT);
}

/* --- the pool's socket, trusted only when proved (system/sockets.py) ------------------------ */

enum { ABSENT = 0, FOUND = 1, DOUBT = -1 };

/* A connection to dir/name in conn, FOUND; ABSENT where nothing listens there; DOUBT where
 * Python must look (it warns, or refuses). */
static int connect_in(const char *dir, const char *name, uid_t uid, int *conn)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return errno == ELOOP || errno == ENOTDIR ? DOUBT : ABSENT;
    struct stat d, s;
    int result = ABSENT;
    int has_socket = fstatat(dfd, name, &s, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(s.st_mode);
    if (fstat(dfd, &d) != 0 || !S_ISDIR(d.st_mode) || (d.st_uid != uid && d.st_uid != 0) ||
        (d.st_mode & 022)) {
        result = has_socket ? DOUBT : ABSENT;
        goto out;
    }
    if (!has_socket)
        goto out;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (snprintf(addr.sun_path, sizeof(addr.sun_path), "/proc/self/fd/%d/%s", dfd, name) >=
        (int)sizeof(addr.sun_path))
        goto out;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto out;
    struct timeval second = {.tv_sec = 1}; /* a pool that does not answer at once is absent */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &second, sizeof(second)); /* connect and send */
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd); /* a stale socket, or one we may not use */
        goto out;
    }
    struct ucred peer;
    socklen_t len = sizeof(peer);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 ||
        (peer.uid != uid && peer.uid != 0)) {
        close(fd);
        result = DOUBT;
        goto out;
    }
    *conn = fd;
    result = FOUND;
out:
    close(dfd);
    return result;
}

/* This user's pool, tried where sockets.user_run_dirs puts it, in that order. */
static int connect_pool(int *conn)
{
    uid_t uid = geteuid();
    char name[64], dirs[4][PATH_MAX];
    int n = 0;
    snprintf(name, sizeof(name), "warm-%u.sock", (unsigned)uid);
    const char *run_dir = getenv("RESTOREPROF_RUN_DIR");
    if (run_dir && *run_dir)
        snprintf(dirs[n++], PATH_MAX, "%s", run_dir);
    if (uid == 0) {
        snprintf(dirs[n++], PATH_MAX, "/run/restoreprof");
    } else {
        const char *runtime = getenv("XDG_RUNTIME_DIR");
        if (runtime && runtime[0] == '/')
            snprintf(dirs[n++], PATH_MAX, "%s/restoreprof", runtime);
        snprintf(dirs[n++], PATH_MAX, "/tmp/restoreprof-%u", (unsigned)uid);
    }
    for (int i = 0; i < n; i++) {
        int found = connect_in(dirs[i], name, uid, conn);
        if (found != ABSENT)
            return found;
    }
    return ABSENT;
}

/* --- the restore ---------------------------------------------------------------------------- */

static void interrupted(int sig)
{
    static const char said[] = "restoreprof restore: interrupted; the warm pool finishes the "
                               "restore it began\n  -> see the pool's output for how it went\n";
    (void)sig;
    ssize_t ignored = write(2, said, sizeof(said) - 1);
    (void)ignored;
    _exit(EXIT_INTERRUPTED);
}

static void write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return; /* a reader gone (`| head`): the exit code still says how it went */
        }
        s += w, n -= (size_t)w;
    }
}

/* The request for `restoreprof restore argv...`, or 0 bytes when it cannot be written here. */
static size_t write_request(struct text *t, int argc, char **argv)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return 0;
    put_text(t, "{\"op\": \"restore\", \"argv\": [");
    for (int i = 0; i < argc; i++) {
        if (i)
            put_text(t, ", ");
        put_string(t, argv[i]);
    }
    put_text(t, "], \"cwd\": ");
    put_string(t, cwd);
    put_text(t, ", \"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char *name = strndup(*e, (size_t)(eq - *e));
        if (!name)
            return 0;
        if (!first)
            put_text(t, ", ");
        first = 0;
        put_string(t, name);
        put_text(t, ": ");
        put_string(t, eq + 1);
        free(name);
    }
    put_text(t, "}}");
    return t->full ? 0 : t->len;
}

/* "0", with spaces around it: Python's value.strip() == "0". */
static int is_zero(const char *value)
{
    if (!value)
        return 0;
    value += strspn(value, " \t\n\r");
    if (*value++ != '0')
        return 0;
    return value[strspn(value, " \t\n\r")] == '\0';
}

int main(int argc, char **argv)
{
    int pool_off = is_zero(getenv(POOL_OFF_ENV));
    if (argc < 2 || strcmp(argv[1], "restore") != 0 || pool_off)
        run_python(argv, 0);

    char request[REQUEST_MAX];
    struct text t = {request, 0, sizeof(request), 0};
    size_t len = write_request(&t, argc - 2, argv + 2);
    int conn = -1;
    if (len == 0 || connect_pool(&conn) != FOUND)
        run_python(argv, 0); /* Python connects again: it warns of what it cannot trust */

    signal(SIGINT, interrupted); /* from here on, the pool may have begun the restore */
    if (send(conn, request, len, MSG_NOSIGNAL) != (ssize_t)len) {
        close(conn);
        run_python(argv, 0); /* nothing was asked: restore there */
    }
    /* no receive timeout: a restore of a large checkpoint from a cold cache is long */
    char *data = malloc(REPLY_MAX + 1);
    ssize_t got;
    do
        got = data ? recv(conn, data, REPLY_MAX, MSG_TRUNC) : -1;
    while (got < 0 && errno == EINTR);
    int lost = got < 0 ? errno : 0;
    close(conn);

    struct reply r = {0};
    int readable = got > 0 && got <= REPLY_MAX;
    if (readable) {
        data[got] = '\0'; /* strtol in the parser stops here at the latest */
        readable = parse_reply(data, (size_t)got, &r) == 0;
    }
    if (readable && (r.declined || r.old_pool))
        run_python(argv, r.declined); /* the pool runs otherwise than this restore would */
    if (!readable || !r.has_exit_code) {
        fprintf(stderr, "restoreprof restore: error: the warm pool stopped answering during the "
                        "restore (%s)\n  -> see the pool's output: the processes may be restored "
                        "already, or held; 'restoreprof restore -D DIR --gpu-only' resumes a "
                        "GPU step\n",
                got < 0 ? strerror(lost) : got == 0 ? "hung up" : !readable ? "an unreadable answer"
                                                                    : "no exit code");
        return EXIT_FAILURE_RP;
    }
    write_all(1, r.stdout_text ? r.stdout_text : "", r.stdout_len);
    write_all(2, r.stderr_text ? r.stderr_text : "", r.stderr_len);
    return (int)r.exit_code;
}
