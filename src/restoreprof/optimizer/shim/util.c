/*
 * Utilities every other file uses: logging, the clock, driver error names. Nothing here calls
 * into another file of the library except the driver table (rp_real) for error names.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void rp_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(line, sizeof(line), "restoreprof-shim[%d]: ", (int)getpid());
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    strcat(line, "\n");
    /* write(2), not stdio: we may run inside a signal-unsafe or half-initialised program */
    ssize_t ignored = write(STDERR_FILENO, line, strlen(line));
    (void)ignored;
}

uint64_t rp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *rp_error_name(CUresult rc)
{
    const char *name = NULL;
    if (rp_real.cuGetErrorName && rp_real.cuGetErrorName(rc, &name) == CUDA_SUCCESS && name)
        return name;
    return "CUDA_ERROR_(unknown)";
}

int rp_grow(void **array, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? 2 * *cap : 16;
    while (cap2 < need)
        cap2 *= 2;
    void *grown = realloc(*array, cap2 * item);
    if (!grown)
        return -1;
    *array = grown;
    *cap = cap2;
    return 0;
}

int rp_pread_full(int fd, void *buf, size_t n, off_t offset)
{
    for (size_t done = 0; done < n;) {
        ssize_t got = pread(fd, (char *)buf + done, n - done, offset + (off_t)done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EBADMSG; /* the file ends before n bytes: cut short */
            return -1;
        }
        done += (size_t)got;
    }
    return 0;
}

int rp_pwrite_full(int fd, const void *buf, size_t n, off_t offset)
{
    for (size_t done = 0; done < n;) {
        ssize_t put = pwrite(fd, (const char *)buf + done, n - done, offset + (off_t)done);
        if (put < 0 && errno == EINTR)
            continue;
        if (put <= 0)
            return -1;
        done += (size_t)put;
    }
    return 0;
}
