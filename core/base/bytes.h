/*
 * bytes.h: a growable byte buffer in three variables (pointer, length, capacity), as
 * the fetch window, the relay's pending bytes and a connection's held input keep it.
 */
#ifndef CC_BYTES_H
#define CC_BYTES_H

#include <stddef.h>

/*
 * Appends n bytes of data to *buf (of *len bytes used out of *cap), growing it by
 * doubling from first_cap. Returns 0, or -ENOMEM with the buffer unchanged.
 */
int bytes_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n,
                 size_t first_cap);

#endif
