/*
 * digest.h: sha256, with the x86 SHA extensions (SHA-NI) where the CPU has them and
 * mbedTLS's implementation otherwise. The choice is made once, at run time.
 *
 * A context is plain memory owned by the caller: no allocation, nothing to free. One
 * context must not be used by two threads at once; different contexts may.
 */
#ifndef CC_DIGEST_H
#define CC_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The lengths every sha256 name in the cache has. A buffer for one with its NUL is the
 * length + 1: char hex[DIGEST_SHA256_HEX_LEN + 1], char ref[DIGEST_SHA256_REF_LEN + 1]. */
#define DIGEST_SHA256_LEN 32     /* bytes of a digest */
#define DIGEST_SHA256_HEX_LEN 64 /* its lowercase hex digits, as a store names a blob */
#define DIGEST_SHA256_PREFIX "sha256:"
#define DIGEST_SHA256_PREFIX_LEN 7
#define DIGEST_SHA256_REF_LEN 71 /* "sha256:<64 hex>", as the registry API names a blob */

/* The fields are the module's own: callers only pass the struct around. */
struct digest_sha256 {
    uint32_t state[8];       /* H0..H7 in the standard order, whichever path runs */
    uint64_t total_len;      /* bytes hashed so far */
    unsigned char block[64]; /* a partial block waiting for more input */
    size_t block_len;
    bool hw; /* this context uses SHA-NI (fixed at init) */
};

/*
 * init starts a context on the implementation selected at that moment (see
 * digest_sha256_use_hw); update may be called any number of times with any lengths;
 * final writes the 32-byte digest and leaves the context to be init'ed again.
 */
void digest_sha256_init(struct digest_sha256 *ctx);
void digest_sha256_update(struct digest_sha256 *ctx, const void *data, size_t len);
void digest_sha256_final(struct digest_sha256 *ctx, unsigned char out[DIGEST_SHA256_LEN]);

/* Writes 64 lowercase hex digits and a NUL into out. */
void digest_hex(const unsigned char bin[DIGEST_SHA256_LEN], char out[DIGEST_SHA256_HEX_LEN + 1]);

/* True when s[0..n) has the shape of a sha256 reference: "sha256:" and 64 more bytes
 * (whether those are lowercase hex is the registry grammar's to check). */
static inline bool digest_ref_is_sha256(const char *s, size_t n)
{
    return n == DIGEST_SHA256_REF_LEN &&
           memcmp(s, DIGEST_SHA256_PREFIX, DIGEST_SHA256_PREFIX_LEN) == 0;
}

/* "sha-ni" or "mbedtls": which implementation a context initialized now would use. */
const char *digest_sha256_impl(void);

/* True when this CPU has the SHA extensions (whether or not they are allowed). */
bool digest_sha256_hw_available(void);

/*
 * For tests and the benchmark: force the portable path (false) or the default (true).
 * Affects contexts initialized afterwards; a context keeps the path it started with.
 */
void digest_sha256_use_hw(bool allow);

#endif
