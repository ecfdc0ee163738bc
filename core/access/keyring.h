/*
 * keyring.h: the front's public keys as a cache knows them, to verify redirect grants
 * (grant.h) without asking anyone.
 *
 * The keys are a JWKS fetched from GRANT_KEYS_PATH of the bases a cache pulls from (its
 * upstream caches, which relay the path, then its origin: the front), in that order,
 * with failover (chain.h). A grant that names a kid the ring does not hold asks for a
 * refresh: one fetch at a time, every waiter answered by it, and at most one fetch per
 * KEYRING_REFRESH_MIN_MS (a flood of grants with made-up kids costs the front one
 * request per that time, not one each). A fetched set replaces the ring; a failed fetch
 * keeps what the ring holds.
 *
 * A function that returns an error never calls its callback; callbacks come from the
 * loop. Loop thread only.
 */
#ifndef CC_KEYRING_H
#define CC_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "access/grant.h"
#include "net/upstream.h"

#define KEYRING_MAX_KEYS 16
#define KEYRING_REFRESH_MIN_MS 10000
#define KEYRING_MAX_BODY (64 * 1024)

struct keyring;
struct keyring_wait;

/* The refresh a waiter asked for is over (err 0: the ring holds what was fetched). */
typedef void (*keyring_cb)(void *arg, int err);

/* The pool must outlive the ring. NULL when memory runs out. */
struct keyring *keyring_new(uv_loop_t *loop, struct upstream_pool *pool);
/* Frees the ring; a fetch in flight is cancelled (waiters must have been cancelled). */
void keyring_free(struct keyring *kr);

/* The key named kid, or NULL. Valid until the next refresh completes. */
const struct grant_key *keyring_find(const struct keyring *kr, const char *kid);

/* Keys held now. */
size_t keyring_size(const struct keyring *kr);

/*
 * Asks for a refresh from bases[0..n) (copied): the fetch in flight is joined, a new one
 * started when the last began at least KEYRING_REFRESH_MIN_MS ago, else the callback
 * comes (from the loop) with what the ring holds. Returns 0 with *wait (valid until the
 * callback, or keyring_wait_cancel), or a negative error.
 */
int keyring_refresh(struct keyring *kr, const char *const *bases, size_t n, keyring_cb cb,
                    void *arg, struct keyring_wait **wait);

/* The callback will not be called. */
void keyring_wait_cancel(struct keyring_wait *wait);

/* Puts key (the front's own) in the ring, for keyring_verify. Returns 0 or -ENOSPC. */
int keyring_add(struct keyring *kr, const struct grant_key *key);

/* --- Verifying a grant ----------------------------------------------------------------- */

struct keyring_check;

struct keyring_verdict {
    int rc;     /* grant_verify's: 0, -EINVAL, -EPERM (also: no key of that kid), ... */
    int status; /* what a refusal answers: grant_status(rc) */
    char why[160];
    struct grant_claims claims; /* when rc is 0 */
};

typedef void (*keyring_check_cb)(void *arg, const struct keyring_verdict *v);

/*
 * Verifies grant token[0..len) for the blob digest of repo at the wall clock's now: the
 * key its kid names from the ring (refreshed from bases[0..n_bases) when it is unknown;
 * none is still -EPERM), the signature on libuv's thread pool. The strings are copied.
 * Returns 0 with *check (valid until the callback, or keyring_check_cancel), or a
 * negative error.
 */
int keyring_verify(struct keyring *kr, const char *const *bases, size_t n_bases, const char *token,
                   size_t len, const char *repo, size_t repo_len, const char *digest,
                   size_t digest_len, keyring_check_cb cb, void *arg, struct keyring_check **check);

/* The callback will not be called (work on the thread pool finishes, then is freed). */
void keyring_check_cancel(struct keyring_check *check);

#endif
