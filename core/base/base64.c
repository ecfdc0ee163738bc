/*
 * base64.c: strict base64. See base64.h.
 */
#include "base/base64.h"

#include <errno.h>
#include <stdint.h>

static int b64_value(char c, bool url)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

int base64_decode(const char *in, size_t n, bool url, unsigned char *out, size_t *out_len)
{
    if (!url) {
        if (n % 4 != 0) return -EINVAL;
        if (n > 0 && in[n - 1] == '=') n--;
        if (n > 0 && in[n - 1] == '=') n--;
    }
    if (n % 4 == 1) return -EINVAL;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(in[i], url);
        if (v < 0) return -EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -EINVAL;
    *out_len = o;
    return 0;
}

int base64_encode(const unsigned char *in, size_t n, bool url, char *out, size_t cap)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char safe[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *alphabet = url ? safe : std;
    size_t need = base64_encoded_len(n, url);
    if (cap < need + 1) return -ENOSPC;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = alphabet[(v >> 6) & 63];
        if (!url) {
            if (i + 1 >= n) out[o++] = '=';
            out[o++] = '=';
        }
    }
    out[o] = '\0';
    return (int)o;
}
