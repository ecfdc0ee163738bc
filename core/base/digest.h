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
void digest_sha256_final(struct digest_sha256 *ctx, unsigned char out[32]);

/* Writes 64 lowercase hex digits and a NUL into out. */
void digest_hex(const unsigned char bin[32], char out[65]);

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
