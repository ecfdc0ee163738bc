/*
 * bytes.h: two byte buffers.
 *
 * bytes_append grows a buffer kept in three variables (pointer, length, capacity), as the
 * fetch window, the relay's pending bytes and a connection's held input keep it.
 *
 * struct textbuf is a bounded text buffer over memory the caller owns: every append
 * writes at most what fits, keeps the text NUL-terminated, and records that something
 * was cut, so a renderer (metrics, a health body) can add pieces without counting.
 */
#ifndef CC_BYTES_H
#define CC_BYTES_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Appends n bytes of data to *buf (of *len bytes used out of *cap), growing it by
 * doubling from first_cap. Returns 0, or -ENOMEM with the buffer unchanged.
 */
int bytes_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n,
                 size_t first_cap);

struct textbuf {
    char *buf;
    size_t cap; /* bytes at buf, the NUL included */
    size_t len; /* text written, without the NUL; always < cap */
    bool cut;   /* an append did not fit whole */
};

/* An empty text over buf[0..cap) (cap >= 1). */
void textbuf_init(struct textbuf *t, char *buf, size_t cap);

/* Appends s[0..n), or as much of it as fits. */
void textbuf_put(struct textbuf *t, const char *s, size_t n);

/* Appends a C string, or as much of it as fits. */
void textbuf_puts(struct textbuf *t, const char *s);

/* Appends formatted text, or as much of it as fits (never a byte past cap). */
void textbuf_printf(struct textbuf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends s as the inside of a JSON string (escaped as json_escape does), as much as fits
 * in whole escapes. */
void textbuf_put_json(struct textbuf *t, const char *s);

#endif
