/* SPDX-License-Identifier: GPL-2.0-or-later (loaded into CRIU, built on its GPL-2.0+ plugin header; the rest of restoreprof is Apache-2.0) */
/*
 * The Python agent (restoreprof/criu_plugin/agent.py): started by the plugin, talked to over a
 * socketpair on the agent's fd 3, one request line and one answer line ("OK ..." or
 * "ERR ..."), with "LOG ..." lines before the answer for CRIU's log.
 *
 * It is started detached (double fork, own session): never CRIU's child, so CRIU's SIGCHLD
 * handling during a restore never sees it, and it may outlive CRIU where a dump's processes
 * must be resumed after CRIU has let them go.
 */
#define _GNU_SOURCE
#include "plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef RPC_PYTHON /* build.py bakes in the Python that has restoreprof installed */
#define RPC_PYTHON "python3"
#endif

static int channel = -1;
static char pending[RPC_LINE * 2];
static size_t pending_len;

int rpc_agent_running(void)
{
    return channel >= 0;
}

static void exec_agent(int fd, const char *stage, const char *images, const char *libcuda)
{
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL); /* CRIU blocks signals the agent needs */
    if (dup2(fd, 3) < 0)
        _exit(127);
    syscall(SYS_close_range, 4U, ~0U, 0); /* CRIU's service descriptors stay with CRIU */
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
        dup2(null, 0);
        if (null != 0)
            close(null);
    }
    /* $RESTOREPROF_PYTHON, else the Python that built the plugin, else python3 on PATH (a
     * wheel is built by a Python that may be gone when the plugin runs). */
    if (libcuda && *libcuda) /* the driver the plugin found, for restoreprof's Python too */
        setenv("RESTOREPROF_LIBCUDA", libcuda, 0);
    const char *choices[] = { getenv("RESTOREPROF_PYTHON"), RPC_PYTHON, "python3" };
    for (size_t i = 0; i < sizeof(choices) / sizeof(choices[0]); i++)
        if (choices[i] && *choices[i])
            execlp(choices[i], choices[i], "-m", "restoreprof.criu_plugin.agent", stage, images,
                   (char *)NULL);
    fprintf(stderr, "restoreprof criu plugin: cannot run Python (%s): set RESTOREPROF_PYTHON\n",
            strerror(errno));
    _exit(127);
}

int rpc_agent_start(const char *stage, const char *images, const char *libcuda, char *err,
                    size_t len)
{
    int sv[2];
    if (channel >= 0)
        return 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        snprintf(err, len, "socketpair: %s", strerror(errno));
        return -1;
    }
    pid_t child = fork();
    if (child < 0) {
        snprintf(err, len, "fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (child == 0) {
        setsid();
        if (fork() == 0)
            exec_agent(sv[1], stage, images, libcuda);
        _exit(0);
    }
    close(sv[1]);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    channel = sv[0];
    pending_len = 0;
    return 0;
}

/* One line (without its newline) into line; -1 on EOF or error. */
static int read_line(char *line, size_t len)
{
    for (;;) {
        char *nl = memchr(pending, '\n', pending_len);
        if (nl) {
            size_t n = (size_t)(nl - pending);
            snprintf(line, len, "%.*s", (int)n, pending);
            memmove(pending, nl + 1, pending_len - n - 1);
            pending_len -= n + 1;
            return 0;
        }
        if (pending_len == sizeof(pending)) /* an over-long line: keep its head */
            pending_len = 0;
        ssize_t got = read(channel, pending + pending_len, sizeof(pending) - pending_len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        pending_len += (size_t)got;
    }
}

int rpc_agent_request(const char *line, char *reply, size_t len,
                      void (*log_line)(const char *text))
{
    char text[RPC_LINE];
    if (channel < 0) {
        snprintf(reply, len, "the restoreprof agent is not running");
        return -1;
    }
    snprintf(text, sizeof(text), "%s\n", line);
    size_t off = 0, want = strlen(text);
    while (off < want) {
        ssize_t n = send(channel, text + off, want - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(reply, len, "the restoreprof agent hung up (%s)", strerror(errno));
            rpc_agent_close();
            return -1;
        }
        off += (size_t)n;
    }
    for (;;) {
        if (read_line(text, sizeof(text)) != 0) {
            snprintf(reply, len, "the restoreprof agent exited without an answer "
                     "(its errors are on CRIU's standard error)");
            rpc_agent_close();
            return -1;
        }
        if (strncmp(text, "LOG ", 4) == 0) {
            if (log_line)
                log_line(text + 4);
            continue;
        }
        if (strncmp(text, "OK", 2) == 0) {
            snprintf(reply, len, "%s", text[2] ? text + 3 : "");
            return 0;
        }
        snprintf(reply, len, "%s", strncmp(text, "ERR ", 4) == 0 ? text + 4 : text);
        return -1;
    }
}

void rpc_agent_close(void)
{
    if (channel >= 0)
        close(channel);
    channel = -1;
}

/* ---- /proc ---- */

int rpc_maps(int pid, const char *needle)
{
    char path[64], line[RPC_LINE];
    snprintf(path, sizeof(path), "/proc/%d/maps", pid);
    FILE *f = fopen(path, "re");
    int found = 0;
    while (f && !found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return found;
}

/* A status field's text after "name:\t", or NULL. */
static char *status_field(int pid, const char *name, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "re");
    char *found = NULL;
    size_t n = strlen(name);
    while (f && !found && fgets(buf, (int)len, f))
        if (strncmp(buf, name, n) == 0 && buf[n] == ':')
            found = buf + n + 1;
    if (f)
        fclose(f);
    return found;
}

int rpc_inner_pid(int pid)
{
    char buf[512];
    char *text = status_field(pid, "NSpid", buf, sizeof(buf));
    int inner = pid;
    for (char *word = text ? strtok(text, " \t\n") : NULL; word; word = strtok(NULL, " \t\n"))
        inner = atoi(word);
    return inner;
}

int rpc_released(int pid)
{
    char buf[512];
    char *state = status_field(pid, "State", buf, sizeof(buf));
    if (!state || strchr(state, 'Z') || strchr(state, 'X'))
        return -1;
    /* A SIGKILL pending (CRIU kills a dumped tree on detach) is as good as gone. */
    char *pending_sig = status_field(pid, "ShdPnd", buf, sizeof(buf));
    if (pending_sig && (strtoull(pending_sig, NULL, 16) & (1ULL << (SIGKILL - 1))))
        return -1;
    pending_sig = status_field(pid, "SigPnd", buf, sizeof(buf));
    if (pending_sig && (strtoull(pending_sig, NULL, 16) & (1ULL << (SIGKILL - 1))))
        return -1;
    char *tracer = status_field(pid, "TracerPid", buf, sizeof(buf));
    return tracer && atoi(tracer) == 0 ? 1 : 0;
}
