/*
 * auth.h: who may pull what. Two independent parts, for the loop thread (no I/O but the
 * bundle file read once by auth_token_verifier_new; only the signature checks of
 * auth_token_check run elsewhere, on libuv's thread pool, see below). The decision
 * cache may be shared by the loops of one process (workers): each call on it holds its
 * mutex throughout (auth.c). A verifier is one loop's (auth_token_verifier_attach).
 *
 * - The decision cache (auth.c) remembers, for a short time, what an upstream answered
 *   to "may this credential do this action on this repository", so that the server
 *   asks the upstream (with the client's Authorization) at most once per TTL for each
 *   credential, origin, repository and action.
 * - The token verifier (jwt.c) checks a bearer token itself against the issuer's
 *   certificate bundle of the standard auth.token config section, as Docker
 *   Distribution does: signature, issuer, audience, validity and the access claim.
 *
 * Blobs: a blob is stored once per digest but linked per repository at the origin, so
 * an upstream's 2xx to HEAD /v2/<repo>/blobs/<digest> says two things: the credential
 * may pull <repo>, and <digest> is in <repo>. A caller keeps them apart, as two keys of
 * one cache: (origin, credential, repo, "pull"), which a 401 or 403 refuses, and
 * (origin, "", repo, "blob sha256:<hex>"), which a 404 refuses; bytes from disk need
 * both to be allowed. Otherwise one allowed repository would open every cached blob.
 *
 * Errors are negative errno values; 0 is success. Credentials are never stored, logged
 * or copied into a message: the cache keeps only a SHA-256 over them, and the reasons
 * written by the verifier never quote the token.
 */
#ifndef CC_AUTH_H
#define CC_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* ---- the decision cache ---------------------------------------------------------------- */

#define AUTH_CACHE_DEFAULT_ENTRIES 65536
#define AUTH_CACHE_DEFAULT_ALLOW_TTL_MS 60000
#define AUTH_CACHE_DEFAULT_DENY_TTL_MS 5000
#define AUTH_CACHE_MAX_ENTRIES (1u << 24)
#define AUTH_CACHE_CHALLENGE_MAX 512 /* longest WWW-Authenticate kept with a refusal */

struct auth_cache;

struct auth_cache_stats {
    uint64_t hits;      /* lookups that found a fresh decision */
    uint64_t misses;    /* lookups that did not (none stored, or expired) */
    uint64_t evictions; /* fresh or stale entries dropped to make room */
    size_t entries;     /* entries held now (some may have expired, not yet dropped) */
};

/*
 * Creates a cache of at most max_entries (1..AUTH_CACHE_MAX_ENTRIES) decisions. Allowed
 * decisions are kept allow_ttl_ms, refusals deny_ttl_ms; a TTL of 0 keeps none of that
 * kind. Returns NULL when max_entries is out of range or memory ran out. Memory grows
 * with the entries held: ~64 bytes each (plus its challenge, for a refusal), and 4 bytes
 * per slot of a table sized once for max_entries.
 */
struct auth_cache *auth_cache_new(size_t max_entries, unsigned allow_ttl_ms, unsigned deny_ttl_ms);

void auth_cache_free(struct auth_cache *c);

/*
 * A decision is keyed by SHA-256 over the length-prefixed origin, credential, repository
 * and action, so that an answer for one of them never answers for another:
 *   origin      the upstream entry's originhost as configured (C string), so one
 *               origin's answer never opens another origin's repository
 *   credential  the client's whole Authorization header value, credential[0..cred_len);
 *               "" (cred_len 0, credential may be NULL) for an anonymous client
 *   repository  repo[0..repo_len), the name as routed (registry.h)
 *   action      "pull", or any other C string naming what was asked (the cache gives
 *               it no meaning; see "Blobs" above)
 *
 * auth_cache_lookup returns true and the decision in *status_out (200 for allowed, else
 * the refusal status: 401, 403 or 404) when a decision is stored and now_ms is before
 * its expiry, and marks it recently used; else false (an expired entry is dropped).
 * When challenge_out is not NULL it receives the WWW-Authenticate value stored with a
 * refusal (NUL-terminated, owned by the cache, valid until the next call on it), or
 * NULL. Every call counts a hit or a miss.
 */
bool auth_cache_lookup(struct auth_cache *c, const char *origin, const char *credential,
                       size_t cred_len, const char *repo, size_t repo_len, const char *action,
                       uint64_t now_ms, int *status_out, const char **challenge_out);

/*
 * Stores the upstream's answer `status` for that key at time now_ms, replacing an entry
 * already there. 2xx is kept as allowed (200) for allow_ttl_ms, but never past the
 * token's own `exp` when the credential is "Bearer <JWT>" with a readable exp (see
 * auth_bearer_exp; an exp already past stores nothing). 401, 403 and 404 are kept
 * deny_ttl_ms, with a copy of the upstream's challenge[0..challenge_len) (its
 * WWW-Authenticate, so that a cached 401 can be answered as the upstream did; NULL/0
 * for none; one longer than AUTH_CACHE_CHALLENGE_MAX or holding a control byte stores
 * nothing). Any other status stores nothing. When the cache is full, the least recently
 * used entry is dropped. Returns true when the decision was stored.
 */
bool auth_cache_store(struct auth_cache *c, const char *origin, const char *credential,
                      size_t cred_len, const char *repo, size_t repo_len, const char *action,
                      int status, const char *challenge, size_t challenge_len, uint64_t now_ms);

void auth_cache_stats(const struct auth_cache *c, struct auth_cache_stats *out);

/* ---- bearer tokens (jwt.c) ----------------------------------------------------------- */

#define AUTH_TOKEN_MAX 8192 /* longer Authorization values are refused unread */
/* The action of a verification that asks only "is this a valid token of the issuer for
 * this service" (a signed-in user, whatever its access claim grants): no repository. */
#define AUTH_ACTION_SIGNED_IN ""
#define AUTH_TOKEN_LEEWAY_S 60 /* exp and nbf are honoured with this much clock skew */
#define AUTH_KID_SIZE 60       /* a libtrust key ID: 59 characters and a NUL */

struct auth_verifier;

/*
 * Loads the PEM certificate bundle at rootcertbundle_path (one or more certificates, all
 * of which must parse) and keeps copies of issuer and service. Returns 0 and a verifier
 * in *out (free with auth_token_verifier_free), or -ENOENT/-EACCES/-EINVAL/-ENOMEM with
 * a message naming the path in err (NUL-terminated; err may be NULL when errlen is 0).
 */
int auth_token_verifier_new(const char *rootcertbundle_path, const char *issuer,
                            const char *service, char *err, size_t errlen,
                            struct auth_verifier **out);

void auth_token_verifier_free(struct auth_verifier *v);

/* How many certificates the bundle held. */
size_t auth_token_verifier_certs(const struct auth_verifier *v);

/*
 * Verifies an Authorization header value, header[0..len), for `action` ("pull") on the
 * repository repo[0..repo_len) at time now_s (Unix seconds). It must be "Bearer <jwt>"
 * (scheme in any case, one space), at most AUTH_TOKEN_MAX bytes, with a compact JWS of
 * alg RS256, RS384, RS512, ES256, ES384 or ES512 whose signature verifies with:
 *   - the first certificate of the header's x5c chain, when there is one: the chain
 *     (standard base64 DER, leaf first) must verify against the bundle, each
 *     certificate valid at now_s; or else
 *   - the bundle certificate whose public key's libtrust ID equals the header's kid; or
 *     else, with neither x5c nor kid, any bundle certificate.
 * and whose claims hold: iss == issuer; aud == service, or an array holding it; exp
 * present and now_s <= exp + leeway; nbf absent or nbf <= now_s + leeway; an access entry
 * {"type": "repository", "name": repo, "actions": [... action or "*" ...]} (with action
 * AUTH_ACTION_SIGNED_IN, "", no access entry is needed: repo is not looked at). exp, nbf and
 * iat are read as Docker Distribution reads them (Go's int64): each an integer, absent or
 * null (null is absent), and a fraction or an exponent (300.5, 3e2) refuses the token.
 *
 * Returns 0 when all hold. Else writes a short reason into why (never a byte of the
 * token; why may be NULL when why_len is 0) and returns -EINVAL (not "Bearer" or not a
 * well-formed token: base64url, JSON, header fields), -EMSGSIZE (over AUTH_TOKEN_MAX),
 * -ENOTSUP (an algorithm or critical header not supported), -EPERM (no trusted key or
 * the signature does not verify), -EACCES (the claims do not grant the access: issuer,
 * audience, times, scope) or -ENOMEM. Any bytes are safe to pass.
 */
int auth_token_verify(const struct auth_verifier *v, const char *header, size_t len,
                      const char *repo, size_t repo_len, const char *action, int64_t now_s,
                      char *why, size_t why_len);

/* ---- checking tokens for the server (token_check.c) ------------------------------------- */

/*
 * The server does not call auth_token_verify: an x5c chain or an ECDSA key costs
 * milliseconds of arithmetic (and before these checks, a hostile chain could cost half a
 * second), too long for the event loop. auth_token_check does on the loop only what is
 * cheap and bounded, remembers outcomes, and verifies signatures on libuv's thread pool,
 * one token at a time (AUTH_TOKEN_LANES), in the order asked:
 *
 *   1. A token longer than AUTH_TOKEN_MAX is refused unread (and not remembered).
 *   2. Remembered: an allowance for this token and repository (AUTH_CACHE allow TTL,
 *      never past the token's exp) is a yes; a refusal of this token (deny TTL, whatever
 *      the repository) is a no (-EPERM, with the first reason and " (remembered)"); a
 *      verified signature (allow TTL, never past exp) leaves only the claims to check.
 *   3. jwt_check_begin's checks (the frame, the header, the key it names; an x5c chain's
 *      key limits and its path to the bundle, x5c.h): a refusal is remembered.
 *   4. The signatures, on the thread pool; the outcome is remembered; then the claims.
 *
 * Every refusal other than out-of-memory and length is remembered by the SHA-256 of the
 * whole Authorization value, so a token that failed costs nothing more for the deny TTL;
 * claims (issuer, audience, times, access) are checked again at each request.
 */

#define AUTH_TOKEN_WHY_MAX 200 /* a reason, NUL included */
#define AUTH_TOKEN_PENDING 1   /* auth_token_check: the callback will tell */

struct auth_token_query {
    const char *header; /* the Authorization value, header[0..len); NULL/0 when none */
    size_t len;
    const char *repo; /* the repository, repo[0..repo_len) */
    size_t repo_len;
    const char *action; /* "pull" */
    int64_t now_s;      /* the wall clock: exp, nbf and certificate dates */
    uint64_t now_ms;    /* the decision cache's clock */
};

struct auth_token_verdict {
    int rc;          /* 0: allowed; else auth_token_verify's errors (-EPERM when remembered) */
    bool remembered; /* decided from memory, nothing verified */
    char why[AUTH_TOKEN_WHY_MAX]; /* a refusal's reason ("" when allowed) */
};

struct auth_token_job;

/* Called once, from the loop, with the verdict (valid during the call only). */
typedef void (*auth_token_cb)(void *arg, const struct auth_token_verdict *verdict);

/*
 * From now on auth_token_check verifies signatures on loop's thread pool and remembers
 * outcomes in memory (which must outlive the verifier). Without it, auth_token_check
 * decides everything before it returns and remembers nothing. Returns 0 or -ENOMEM.
 * The verifier must then be freed only when no check is pending (after uv_run).
 */
int auth_token_verifier_attach(struct auth_verifier *v, uv_loop_t *loop, struct auth_cache *memory);

/*
 * Decides whether q's token may q->action on q->repo (see above). The query's strings
 * are copied when needed. Returns 0 with the verdict in *now, or AUTH_TOKEN_PENDING:
 * then cb(arg, verdict) comes later from the loop, unless auth_token_job_cancel(*job) is
 * called first; *job is valid until then.
 */
int auth_token_check(struct auth_verifier *v, const struct auth_token_query *q,
                     struct auth_token_verdict *now, auth_token_cb cb, void *arg,
                     struct auth_token_job **job);

/* The callback of a pending check will not be called (its outcome is still remembered). */
void auth_token_job_cancel(struct auth_token_job *job);

/* AUTH_TOKEN_LANES: how many signature checks run on the thread pool at once (libuv's
 * pool has 4 threads, shared with file reads). */
#define AUTH_TOKEN_LANES 1

/*
 * The `exp` claim of a bearer credential, read WITHOUT verifying anything: header[0..len)
 * must be "Bearer " and a JWT (three base64url parts, at most AUTH_TOKEN_MAX bytes)
 * whose payload is a JSON object with a numeric exp. Returns 0 and exp (Unix seconds) in
 * *exp_s, -ENOENT when there is no such claim, -EINVAL when it is not such a token. For
 * capping a cache TTL only, never for granting anything.
 */
int auth_bearer_exp(const char *header, size_t len, int64_t *exp_s);

/*
 * The user name of an HTTP Basic credential ("Basic <base64 of user:password>"), into
 * buf: 0, or -EINVAL (not such a credential, no ':' or an empty name, a control byte
 * in the name, a name of cap bytes or more). The password is neither checked nor kept.
 */
int auth_basic_user(const char *header, size_t len, char *buf, size_t cap);

/*
 * The `sub` claim of a bearer credential (the user a token was issued to), read WITHOUT
 * verifying anything, as auth_bearer_exp: into buf (NUL-terminated). Returns 0, -ENOENT
 * (no sub, an empty one, one holding NUL or longer than cap - 1), -EINVAL (not such a
 * token). Only for a token that was verified, or accepted by the origin.
 */
int auth_bearer_subject(const char *header, size_t len, char *buf, size_t cap);

/*
 * The libtrust key ID of a public key given as DER SubjectPublicKeyInfo: the base32
 * (RFC 4648, no padding) of the first 240 bits of its SHA-256, in 12 groups of 4
 * characters joined by ':'. out receives 59 characters and a NUL.
 */
void auth_libtrust_kid(const unsigned char *spki_der, size_t len, char out[AUTH_KID_SIZE]);

/* ---- the challenge (auth.c) ---------------------------------------------------------- */

/*
 * Writes the WWW-Authenticate value of a 401 for pulling repo[0..repo_len) into buf:
 *   Bearer realm="<realm>",service="<service>",scope="repository:<repo>:pull"
 * (without the scope when repo is NULL, as for /v2/). '"' and '\\' in the values are
 * backslash-escaped. Returns the length (NUL-terminated), or -ENOSPC when buf is too
 * small or -EINVAL when a value holds a control byte (buf then holds no string).
 */
int auth_challenge(const char *realm, const char *service, const char *repo, size_t repo_len,
                   char *buf, size_t len);

/* A WWW-Authenticate challenge, read: its scheme and the parameters a token client needs. */
struct auth_challenge_params {
    char scheme[16]; /* "Bearer", "Basic", ... as sent */
    char realm[512];
    char service[256];
    char scope[512];
};

/*
 * Reads the first challenge of value[0..len): the scheme, then comma-separated
 * name=value or name="quoted\"value" parameters (realm, service and scope are kept, others
 * skipped). Returns 0, or -EINVAL for what is not such a challenge, or a kept parameter
 * that does not fit or holds a control byte.
 */
int auth_challenge_parse(const char *value, size_t len, struct auth_challenge_params *out);

#endif
