/* Reads known sizes from a file with each of the four read calls the profiler counts.
 *
 *   readers FILE     read(): 3 x 4096, pread64(): 5 x 8192, preadv(): 7 x (2 x 4096),
 *                    preadv2(): 11 x (3 x 4096); FILE must hold at least 1 MiB.
 * It waits for a byte on stdin first when given --wait, so a tracer can attach.
 *
 *   readers FILE --rate R --seconds S    1-byte pread64 calls at R per second for S seconds
 *                                        (benchmarks/bench_probes.py); prints calls made
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static char buf[3][4096];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* pread64 calls paced to rate per second, in batches of 1000, for seconds */
static int paced(const char *path, double rate, double seconds)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    char c;
    long calls = 0;
    double start = now_s();
    while (now_s() - start < seconds) {
        for (int i = 0; i < 1000; i++)
            calls += pread(fd, &c, 1, 0) == 1;
        double due = start + calls / rate;
        double wait = due - now_s();
        if (wait > 0)
            usleep((useconds_t)(wait * 1e6));
    }
    printf("%ld %.3f\n", calls, now_s() - start);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: readers FILE [--wait]\n");
        return 2;
    }
    if (argc > 5 && strcmp(argv[2], "--rate") == 0)
        return paced(argv[1], atof(argv[3]), atof(argv[5]));
    if (argc > 2 && strcmp(argv[2], "--wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 3;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    long total = 0;
    for (int i = 0; i < 3; i++)
        total += read(fd, buf[0], 4096);
    static char big[8192];
    for (int i = 0; i < 5; i++)
        total += pread(fd, big, sizeof(big), (off_t)i * 8192);
    struct iovec two[2] = { { buf[0], 4096 }, { buf[1], 4096 } };
    for (int i = 0; i < 7; i++)
        total += preadv(fd, two, 2, (off_t)i * 8192);
    struct iovec three[3] = { { buf[0], 4096 }, { buf[1], 4096 }, { buf[2], 4096 } };
    for (int i = 0; i < 11; i++)
        total += syscall(SYS_preadv2, fd, three, 3, (long)i * 12288, 0L, 0);
    close(fd);
    printf("%ld\n", total);
    return 0;
}
