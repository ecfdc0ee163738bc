/*
 * grant.h: redirect grants, the front's permission for one user to pull one blob of one
 * repository from a cache, for a short time, verified by the cache without asking anyone.
 *
 * A grant is a compact JWS (ES256: ECDSA P-256 with SHA-256, the signature as r || s,
 * 64 bytes, in base64url), three base64url parts joined by '.':
 *
 *   header  {"alg":"ES256","typ":"JWT","kid":"<libtrust key ID of the signing key>"}
 *   claims  {"iss":"content-cache-front","sub":"<user>","repository":"<name>",
 *            "digest":"sha256:<hex>","iat":<s>,"exp":<s>}
 *
 * It rides in the redirect's query: <cache>/v2/<name>/blobs/<digest>?grant=<grant>, and
 * up a chain unchanged. A grant verifies when its signature does with the key its kid
 * names, its exp is not more than GRANT_LEEWAY_S in the past, and its repository and
 * digest are the request's. The front makes its key pair at first start and keeps it in
 * its state directory (PEM, 0600); caches get the public keys as a JWKS (RFC 7517: EC
 * P-256, kid, x, y) from GRANT_KEYS_PATH of their origin (the front) or their upstreams.
 *
 * Every function here is pure computation over its arguments (keys are plain bytes, each
 * call makes its own mbedTLS contexts), so signing and verifying may run on any thread,
 * several at once: the callers run them on libuv's thread pool. Randomness (a new key,
 * the signature's blinding) comes from getrandom(2); signatures are deterministic
 * (RFC 6979). Errors are negative errno values; a token's bytes are never quoted in a
 * reason.
 */
#ifndef CC_GRANT_H
#define CC_GRANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "access/auth.h"
#include "registry/registry.h"

#define GRANT_LEEWAY_S 5    /* clock skew allowed on exp */
#define GRANT_MAX 2048      /* longer grants are refused unread */
#define GRANT_PARAM "grant" /* the query parameter that carries one */
#define GRANT_ISSUER "content-cache-front"
#define GRANT_KEYS_PATH "/api/v0/content_caches/grant-key" /* the front's JWKS */
#define GRANT_USER_MAX 255

/* A P-256 key: the public point, and the private scalar when it is ours. */
struct grant_key {
    char kid[AUTH_KID_SIZE];
    unsigned char q[65]; /* uncompressed point: 0x04 || x || y */
    bool has_private;
    unsigned char d[32];
};

/* What a grant says. */
struct grant_claims {
    char user[GRANT_USER_MAX + 1];
    char repository[REGISTRY_NAME_MAX + 1];
    char digest[8 + REGISTRY_REFERENCE_MAX];
    int64_t iat, exp;
};

/* --- Keys -------------------------------------------------------------------------------- */

/* A new key pair. Returns 0 or -EIO (no randomness, or mbedTLS failed). */
int grant_key_generate(struct grant_key *k);

/*
 * The private key at `path` (PEM, as grant_key_save writes it), or a new one written
 * there (mode 0600, through a temporary file, synced, renamed: never half a key) when
 * there is none; *created says which. Returns 0, or a negative error with a sentence in
 * err (a file that is there but not a P-256 private key is -EINVAL, and is not replaced).
 */
int grant_key_load_or_create(const char *path, struct grant_key *k, bool *created, char *err,
                             size_t errlen);

/* The JWKS of keys[0..n) (public parts only): {"keys":[{"kty":"EC",...}]}. Returns the
 * length (NUL-terminated), or -ENOSPC. */
int grant_jwks_write(const struct grant_key *keys, size_t n, char *buf, size_t cap);

/*
 * Reads a JWKS: its EC P-256 keys with a kid, x and y (others are skipped), at most cap
 * of them, into out (public only). A point must be on the curve. Returns 0 and *n, or
 * -EINVAL (not a JWKS).
 */
int grant_jwks_read(const char *json, size_t len, struct grant_key *out, size_t cap, size_t *n);

/* --- Grants ------------------------------------------------------------------------------ */

/* Signs c with k (which must have its private part). Returns the grant's length (written
 * NUL-terminated into out), -ENOSPC, -EINVAL (a claim too long or holding control
 * bytes) or -EIO. */
int grant_sign(const struct grant_key *k, const struct grant_claims *c, char *out, size_t cap);

/* The kid of token[0..len)'s header, read without verifying anything: 0, or -EINVAL. */
int grant_kid(const char *token, size_t len, char kid[AUTH_KID_SIZE]);

/*
 * Verifies token[0..len) with k for the blob digest[0..digest_len) of repository
 * repo[0..repo_len) at now_s: the signature first, then exp (GRANT_LEEWAY_S), then the
 * repository and the digest. Returns 0 with the claims in *out (may be NULL), or, with a
 * reason in why: -EINVAL (not a grant: malformed, another algorithm, longer than
 * GRANT_MAX), -EPERM (the signature does not verify: forged or altered, or another key),
 * -EKEYEXPIRED (expired), -EACCES (a grant for another repository or digest).
 */
int grant_verify(const struct grant_key *k, const char *token, size_t len, const char *repo,
                 size_t repo_len, const char *digest, size_t digest_len, int64_t now_s,
                 struct grant_claims *out, char *why, size_t why_len);

/* The status a verification error answers: 403 for -EACCES, else 401. */
int grant_status(int rc);

/*
 * The value of the query's GRANT_PARAM (query[0..qlen), without '?'), not decoded (a
 * grant is base64url and dots), and its length; NULL when there is none.
 */
const char *grant_in_query(const char *query, size_t qlen, size_t *len);

/*
 * The request target with the value of its GRANT_PARAM replaced by "REDACTED", for logs:
 * a grant is a credential. Writes at most cap bytes (NUL-terminated). Returns true when
 * the target holds a grant (out is then set), false when it holds none.
 */
bool grant_redact(const char *target, char *out, size_t cap);

/* The request target without its GRANT_PARAM (and without the '?' when nothing else is
 * left), as grant_redact: what the front sends the origin. */
bool grant_strip(const char *target, char *out, size_t cap);

#endif
