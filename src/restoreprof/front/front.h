/* The native front door's JSON: the request written, the reply read (json.c). */
#ifndef RESTOREPROF_FRONT_H
#define RESTOREPROF_FRONT_H

#include <stddef.h>

/* A request being written into a fixed buffer; full once it would not fit. */
struct text {
    char *at;
    size_t len, cap;
    int full;
};

void put_text(struct text *t, const char *s);
/* s as a JSON string; a byte sequence that is not UTF-8 marks t full (left to Python). */
void put_string(struct text *t, const char *s);

/* What the pool answered: the restore's output and exit code, or why it did not run it. */
struct reply {
    char *stdout_text, *stderr_text;
    size_t stdout_len, stderr_len;
    long exit_code;
    int has_exit_code, declined, old_pool;
};

/* The reply object in data; -1 when it is not one (the restore may have run: reported lost). */
int parse_reply(const char *data, size_t len, struct reply *r);

#endif
