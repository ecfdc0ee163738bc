/*
 * http_types.h: the few HTTP types that the server and the upstream client share.
 */
#ifndef CC_HTTP_TYPES_H
#define CC_HTTP_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/* A header as spans of bytes. Who owns the bytes is said where a header is handed over. */
struct http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* True when the header's name is `name` (ASCII case-insensitive). */
static inline bool http_header_is(const struct http_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* The first header named `name` among hdrs[0..n), or NULL. */
static inline const struct http_header *http_header_find(const struct http_header *hdrs, size_t n,
                                                         const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (http_header_is(&hdrs[i], name)) return &hdrs[i];
    return NULL;
}

#endif
