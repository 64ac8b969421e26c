/* Reads known sizes from a file with each of the four read calls the profiler counts.
 *
 *   readers FILE     read(): 3 x 4096, pread64(): 5 x 8192, preadv(): 7 x (2 x 4096),
 *                    preadv2(): 11 x (3 x 4096); FILE must hold at least 1 MiB.
 * It waits for a byte on stdin first when given --wait, so a tracer can attach.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static char buf[3][4096];

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: readers FILE [--wait]\n");
        return 2;
    }
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
