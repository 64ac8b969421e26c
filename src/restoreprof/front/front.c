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
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &second, sizeof(second));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &second, sizeof(second));
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

/* --- JSON: the request written, the reply read ---------------------------------------------- */

struct text {
    char *at;
    size_t len, cap;
    int full;
};

static void put(struct text *t, const char *s, size_t n)
{
    if (t->full || t->len + n > t->cap) {
        t->full = 1;
        return;
    }
    memcpy(t->at + t->len, s, n);
    t->len += n;
}

static void put_text(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

static void put_string(struct text *t, const char *s)
{
    put_text(t, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p;
            put(t, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            put(t, esc, 6);
        } else if (*p < 0x80) {
            put(t, (const char *)p, 1);
        } else {
            /* Not UTF-8 (a path's raw bytes): the pool would decode it otherwise than the
             * Python client does (surrogateescape); leave such a request to Python. */
            const unsigned char *q = p;
            int extra = *q >= 0xf0 ? 3 : *q >= 0xe0 ? 2 : *q >= 0xc0 ? 1 : -1;
            for (int i = 1; extra > 0 && i <= extra; i++)
                if ((q[i] & 0xc0) != 0x80)
                    extra = -1;
            if (extra < 0) {
                t->full = 1;
                return;
            }
            put(t, (const char *)p, (size_t)extra + 1);
            p += extra;
        }
    }
    put_text(t, "\"");
}

struct reply {
    char *stdout_text, *stderr_text;
    size_t stdout_len, stderr_len;
    long exit_code;
    int has_exit_code, declined, old_pool, error;
};

struct cursor {
    const char *p, *end;
};

static void skip_space(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
}

static size_t utf8(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12), out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18), out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f)), out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int hex4(struct cursor *c, unsigned *v)
{
    if (c->end - c->p < 4)
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char h = *c->p++;
        *v = *v << 4 | (unsigned)(h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                  : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 99);
        if (*v > 0xffff)
            return -1;
    }
    return 0;
}

/* A JSON string at c (its opening quote), decoded into a new buffer (out may be NULL: skip). */
static int read_string(struct cursor *c, char **out, size_t *len)
{
    if (c->p >= c->end || *c->p != '"')
        return -1;
    c->p++;
    char *buf = malloc((size_t)(c->end - c->p) + 1);
    size_t n = 0;
    if (!buf)
        return -1;
    while (c->p < c->end && *c->p != '"') {
        if (*c->p != '\\') {
            buf[n++] = *c->p++;
            continue;
        }
        if (++c->p >= c->end)
            break;
        char e = *c->p++;
        unsigned cp;
        switch (e) {
        case 'n': buf[n++] = '\n'; break;
        case 't': buf[n++] = '\t'; break;
        case 'r': buf[n++] = '\r'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case '"': case '\\': case '/': buf[n++] = e; break;
        case 'u':
            if (hex4(c, &cp) != 0)
                goto bad;
            if (cp >= 0xd800 && cp < 0xdc00 && c->end - c->p >= 6 && c->p[0] == '\\' &&
                c->p[1] == 'u') {
                struct cursor low = {c->p + 2, c->end};
                unsigned lo;
                if (hex4(&low, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    c->p = low.p;
                }
            }
            if (cp >= 0xd800 && cp < 0xe000)
                cp = 0xfffd; /* a lone surrogate: what Python's "replace" writes */
            n += utf8(cp, buf + n);
            break;
        default:
            goto bad;
        }
    }
    if (c->p >= c->end)
        goto bad;
    c->p++;
    buf[n] = '\0';
    if (out) {
        *out = buf;
        *len = n;
    } else {
        free(buf);
    }
    return 0;
bad:
    free(buf);
    return -1;
}

/* Any JSON value at c, passed over. */
static int skip_value(struct cursor *c)
{
    skip_space(c);
    if (c->p >= c->end)
        return -1;
    if (*c->p == '"')
        return read_string(c, NULL, NULL);
    if (*c->p == '{' || *c->p == '[') {
        char close = *c->p == '{' ? '}' : ']';
        c->p++;
        skip_space(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return 0;
        }
        for (;;) {
            if (close == '}') {
                skip_space(c);
                if (read_string(c, NULL, NULL) != 0)
                    return -1;
                skip_space(c);
                if (c->p >= c->end || *c->p++ != ':')
                    return -1;
            }
            if (skip_value(c) != 0)
                return -1;
            skip_space(c);
            if (c->p >= c->end)
                return -1;
            if (*c->p == ',') {
                c->p++;
                continue;
            }
            if (*c->p++ == close)
                return 0;
            return -1;
        }
    }
    while (c->p < c->end && strchr("-+.0123456789eEtruefalsn", *c->p))
        c->p++;
    return 0;
}

/* The reply object; -1 when it is not one (the restore may have run: reported as lost). */
static int parse_reply(const char *data, size_t len, struct reply *r)
{
    struct cursor c = {data, data + len};
    skip_space(&c);
    if (c.p >= c.end || *c.p++ != '{')
        return -1;
    skip_space(&c);
    if (c.p < c.end && *c.p == '}')
        return 0;
    for (;;) {
        char *key;
        size_t key_len;
        skip_space(&c);
        if (read_string(&c, &key, &key_len) != 0)
            return -1;
        skip_space(&c);
        if (c.p >= c.end || *c.p++ != ':') {
            free(key);
            return -1;
        }
        skip_space(&c);
        int ok = 0;
        if (!strcmp(key, "stdout") || !strcmp(key, "stderr")) {
            int out = !strcmp(key, "stdout");
            ok = read_string(&c, out ? &r->stdout_text : &r->stderr_text,
                             out ? &r->stdout_len : &r->stderr_len);
        } else if (!strcmp(key, "exit_code")) {
            char *end;
            r->exit_code = strtol(c.p, &end, 10);
            ok = end == c.p ? -1 : 0;
            r->has_exit_code = ok == 0;
            c.p = end;
        } else if (!strcmp(key, "error")) {
            char *text;
            size_t n;
            ok = read_string(&c, &text, &n);
            if (ok == 0) {
                r->error = 1; /* a pool from before restores were served says this */
                r->old_pool = !strncmp(text, "expected a preload", 18);
                free(text);
            } else {
                ok = skip_value(&c);
            }
        } else {
            r->declined |= !strcmp(key, "declined");
            ok = skip_value(&c);
        }
        free(key);
        if (ok != 0)
            return -1;
        skip_space(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        return c.p < c.end && *c.p == '}' ? 0 : -1;
    }
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
    struct timeval forever = {0}; /* a restore of a large checkpoint from a cold cache is long */
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof(forever));
    char *data = malloc(REPLY_MAX);
    ssize_t got;
    do
        got = data ? recv(conn, data, REPLY_MAX, MSG_TRUNC) : -1;
    while (got < 0 && errno == EINTR);
    close(conn);

    struct reply r = {0};
    int readable = got > 0 && got <= REPLY_MAX && parse_reply(data, (size_t)got, &r) == 0;
    if (readable && (r.declined || r.old_pool))
        run_python(argv, r.declined); /* the pool runs otherwise than this restore would */
    if (!readable || !r.has_exit_code) {
        fprintf(stderr, "restoreprof restore: error: the warm pool stopped answering during the "
                        "restore (%s)\n  -> see the pool's output: the processes may be restored "
                        "already, or held; 'restoreprof restore -D DIR --gpu-only' resumes a "
                        "GPU step\n",
                got < 0 ? strerror(errno) : got == 0 ? "hung up" : !readable ? "an unreadable answer"
                                                                     : "no exit code");
        return EXIT_FAILURE_RP;
    }
    write_all(1, r.stdout_text ? r.stdout_text : "", r.stdout_len);
    write_all(2, r.stderr_text ? r.stderr_text : "", r.stderr_len);
    return (int)r.exit_code;
}
