/* bytes.c: see bytes.h. */
#include "base/bytes.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
