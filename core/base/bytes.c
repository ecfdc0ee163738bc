/* bytes.c: see bytes.h. */
#include "base/bytes.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"

int bytes_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n, size_t first_cap)
{
    if (n > SIZE_MAX / 2 - *len) return -ENOMEM;
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : (first_cap ? first_cap : 256);
        while (c < *len + n)
            c *= 2;
        char *nb = realloc(*buf, c);
        if (nb == NULL) return -ENOMEM;
        *buf = nb;
        *cap = c;
    }
    if (n > 0) memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

void textbuf_init(struct textbuf *t, char *buf, size_t cap)
{
    *t = (struct textbuf){.buf = buf, .cap = cap};
    buf[0] = '\0';
}

void textbuf_put(struct textbuf *t, const char *s, size_t n)
{
    size_t room = t->cap - 1 - t->len;
    if (n > room) {
        n = room;
        t->cut = true;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
}

void textbuf_puts(struct textbuf *t, const char *s)
{
    textbuf_put(t, s, strlen(s));
}

void textbuf_printf(struct textbuf *t, const char *fmt, ...)
{
    size_t room = t->cap - t->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        t->buf[t->len] = '\0';
        t->cut = true;
        return;
    }
    if ((size_t)n >= room) {
        t->len = t->cap - 1;
        t->cut = true;
    } else {
        t->len += (size_t)n;
    }
}

void textbuf_put_json(struct textbuf *t, const char *s)
{
    size_t n = strlen(s), consumed;
    t->len += json_escape_prefix(s, n, t->buf + t->len, t->cap - 1 - t->len, &consumed);
    t->buf[t->len] = '\0';
    if (consumed < n) t->cut = true;
}
