/*
 * base64.h: strict base64 (RFC 4648), standard with padding or base64url without: what
 * the bearer tokens (jwt.c), HTTP Basic credentials and the front's grants are made of.
 *
 * Decoding is strict: one encoding per byte string (the bits a last partial group leaves
 * over must be zero), no whitespace, padding only in the standard alphabet.
 */
#ifndef CC_BASE64_H
#define CC_BASE64_H

#include <stdbool.h>
#include <stddef.h>

/* Bytes base64_encode writes for n bytes (without the NUL). */
static inline size_t base64_encoded_len(size_t n, bool url)
{
    return url ? (n * 4 + 2) / 3 : (n + 2) / 3 * 4;
}

/*
 * Decodes in[0..n) (url: base64url without padding; else standard with its padding) into
 * out, which needs n / 4 * 3 + 2 bytes. Returns 0 and *out_len, or -EINVAL.
 */
int base64_decode(const char *in, size_t n, bool url, unsigned char *out, size_t *out_len);

/* Encodes in[0..n) into out (base64_encoded_len + 1 bytes, NUL-terminated). Returns the
 * length, or -ENOSPC when cap is too small. */
int base64_encode(const unsigned char *in, size_t n, bool url, char *out, size_t cap);

#endif
