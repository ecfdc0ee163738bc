/*
 * x5c.h: the certificate chain of a bearer token's x5c header (RFC 7515, 4.1.6), checked
 * against the issuer's bundle so that the token never decides how much arithmetic is done.
 * Internal to access/ (jwt.c, and the fuzz target); the contract for the server is auth.h.
 *
 * Two steps:
 *
 * 1. x5c_chain_add (each certificate, leaf first) and x5c_chain_precheck: no signature is
 *    verified. Every certificate must parse and hold a key within X5C's limits: RSA of at
 *    most X5C_RSA_MAX_BITS bits with a public exponent of at most 2^32, or EC on P-256 or
 *    P-384. Then a path must lead from the leaf, through certificates of the chain (in any
 *    order, each used once), to a certificate of the bundle: each one's issuer is the
 *    next one's subject, compared byte for byte as DER (as Go's crypto/x509 pools match
 *    them), and where the child has an authority key ID and the parent a subject key ID,
 *    they are equal. The shortest path is taken. A few microseconds per certificate.
 * 2. x5c_chain_verify: the signatures of that path only, from the top down: first the
 *    top certificate with the key of the bundle certificate it names, so a forged
 *    certificate costs one check made with the operator's key; then, when all hold,
 *    mbedTLS's verification of the path against that bundle certificate (CA bits, key
 *    usage, path length, its profile, and dates judged at `now`). At most three signature
 *    checks per certificate of the path, each with a key within the limits (or the
 *    bundle's); costly enough (an ECDSA P-384 check is ~2 ms here) that the server runs
 *    this step on the thread pool.
 *
 * Both steps touch only the chain and the bundle certificates' DER (step 2 parses its own
 * copy of the bundle certificate it uses), so different chains may be verified on
 * different threads at once. Errors are negative errno values, with a reason written into
 * why (NUL-terminated; why may be NULL when why_len is 0) that quotes no byte of the chain.
 */
#ifndef CC_X5C_H
#define CC_X5C_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <mbedtls/x509_crt.h>

#define X5C_MAX_CERTS 8
#define X5C_RSA_MAX_BITS 4096
#define X5C_RSA_MAX_EXPONENT_BITS 32 /* e < 2^32 (e is odd, so e <= 2^32 is the same) */

/* A certificate of the bundle as the chain check sees it. */
struct x5c_anchor {
    const mbedtls_x509_crt *crt; /* parsed; only its DER fields are read */
    const unsigned char *ski;    /* its subject key ID (inside crt's DER), or NULL */
    size_t ski_len;
};

/* Fills a for crt (which must outlive it). Returns 0, or -EINVAL when crt's extensions do
 * not parse. */
int x5c_anchor_init(struct x5c_anchor *a, const mbedtls_x509_crt *crt);

struct x5c_chain {
    mbedtls_x509_crt certs; /* as given, leaf first */
    size_t n;
    struct {
        const unsigned char *aki, *ski; /* key IDs inside the DER, or NULL */
        size_t aki_len, ski_len;
    } ids[X5C_MAX_CERTS];
    /* Set by x5c_chain_precheck: */
    mbedtls_x509_crt *path[X5C_MAX_CERTS]; /* leaf first; path[i + 1] issued path[i] */
    size_t path_at[X5C_MAX_CERTS];         /* where path[i] is in the chain as given */
    size_t path_len;
    size_t anchor; /* the index, among the anchors, of the one the path ends at */
    bool prechecked;
};

void x5c_chain_init(struct x5c_chain *c);
void x5c_chain_free(struct x5c_chain *c);

/*
 * Parses der[0..len) as the chain's next certificate (the first is the leaf). Returns 0,
 * -E2BIG past X5C_MAX_CERTS, -EINVAL when it does not parse, -ENOMEM.
 */
int x5c_chain_add(struct x5c_chain *c, const unsigned char *der, size_t len, char *why,
                  size_t why_len);

/*
 * Step 1 (see above) against anchors[0..n_anchors). Returns 0 with the path set, -EINVAL
 * for an empty chain, or -EPERM: a key out of the limits, or no path to the bundle.
 */
int x5c_chain_precheck(struct x5c_chain *c, const struct x5c_anchor *anchors, size_t n_anchors,
                       char *why, size_t why_len);

/*
 * Step 2 (see above), after a successful x5c_chain_precheck with the same anchors: 0
 * when the path verifies at now (UTC), else -EPERM (or -ENOMEM, -EINVAL when called
 * without a path).
 */
int x5c_chain_verify(struct x5c_chain *c, const struct x5c_anchor *anchors, size_t n_anchors,
                     const struct tm *now, char *why, size_t why_len);

/* The leaf's public key (the chain must hold a certificate). */
mbedtls_pk_context *x5c_chain_leaf_key(struct x5c_chain *c);

#endif
