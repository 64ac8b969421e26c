/* The native front door's JSON (front.h): just enough of it for one request and one reply.
 * Python's json.dumps writes the reply with ensure_ascii, so every non-ASCII character arrives
 * as \uXXXX (a pair for one beyond the BMP) and is written out as UTF-8 here. */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "front.h"

static void put(struct text *t, const char *s, size_t n)
{
    if (t->full || t->len + n > t->cap) {
        t->full = 1;
        return;
    }
    memcpy(t->at + t->len, s, n);
    t->len += n;
}

void put_text(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

void put_string(struct text *t, const char *s)
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
int parse_reply(const char *data, size_t len, struct reply *r)
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
            if (ok == 0) { /* a pool from before restores were served says this */
                r->old_pool = !strncmp(text, "expected a preload", 18);
                free(text);
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

