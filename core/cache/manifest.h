/*
 * manifest.h: GET and HEAD of /v2/<name>/manifests/<reference>: manifests by digest from
 * the cache's disk, tags always from the origin, and both from what is held when every
 * upstream fails and the outage policy says so.
 *
 * By digest (sha256): a manifest is content addressed, so once the origin has given it
 * it is kept, as Docker Registry keeps one: its bytes as a blob (store.h), a link
 * repositories/<name>/_manifests/revisions/sha256/<hex>/link (links.h), and beside it, in
 * _content-cache/manifests/<2 hex>/<hex>, the Content-Type the origin sent, so that a hit
 * answers with Content-Type, Docker-Content-Digest and Content-Length exactly as the
 * origin did. A request is authorized as a blob's is (blob.h): the credential may pull
 * the repository (remembered from the origin, or auth.token) and the manifest is in it
 * (the origin's 2xx for it under that name, remembered); both known and the manifest
 * stored: served from disk, a hit, no upstream request. Otherwise the request goes
 * upstream with the client's credential, and its answer is relayed and kept.
 *
 * By tag: always asked of the origin (the upstreams), as the document requires; a 200
 * with a sha256 Docker-Content-Digest records the tag's digest with the time
 * (_manifests/tags/<tag>/current/link) and, for a GET, keeps the manifest as above.
 *
 * Every answer kept is checked first: the body hashes to the digest (the one asked for,
 * and the Docker-Content-Digest the origin sent), at most RELAY_MANIFEST_MAX bytes (a
 * longer one is refused, as before). The origin's answer for a manifest also vouches for
 * what it names (Docker Distribution accepts a manifest only when every blob and platform
 * manifest it names is in the repository): those are remembered as in the repository
 * too, for the decision cache's allow time, so a pull needs no more upstream requests for
 * them. A 2xx, 401 or 403 is kept on disk as the credential's last answer (answers.h).
 *
 * When every upstream fails (refused, timed out, 5xx) the outage policy decides (outage.h):
 * by default the client gets 503 UNAVAILABLE (502 for an upstream that answered nonsense)
 * naming the upstream, at once.
 *
 * Everything runs on the loop; disk work on the thread pool.
 */
#ifndef CC_MANIFEST_H
#define CC_MANIFEST_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/metrics.h"
#include "cache/answers.h"
#include "cache/outage.h"
#include "cache/store.h"
#include "net/server.h"
#include "registry/registry.h"
#include "registry/upstreams.h"

struct manifest_service;
struct auth_cache;
struct auth_verifier;
struct config;
struct pulls;

struct manifest_service *manifest_service_new(uv_loop_t *loop, struct store *store,
                                              struct upstreams *upstreams);
void manifest_service_free(struct manifest_service *ms);

/* Authorization as for blobs (blob_service_set_auth): the same decision cache, verifier. */
void manifest_service_set_auth(struct manifest_service *ms, const struct config *cfg,
                               struct auth_cache *cache, struct auth_verifier *verifier);
/* Where answers are kept, the outage policy, pull counts; each may be NULL. */
void manifest_service_set_outage(struct manifest_service *ms, struct answers *answers,
                                 struct outage *outage);
void manifest_service_set_pulls(struct manifest_service *ms, struct pulls *pulls);
/* Called after each manifest stored as a blob (for the store's totals). */
void manifest_service_on_commit(struct manifest_service *ms,
                                void (*cb)(void *ud, const char *hex, uint64_t size), void *ud);

/*
 * Keeps a manifest the origin gave as a GET's answer is kept: body (taken: the service
 * frees it) as blob `hex` with its media type, its revision link in `repo`, the _layers
 * links of the blobs it names, and tag's link when tag is not NULL; entry is the
 * upstreams entry that answered. The caller has checked that body hashes to hex and is
 * at most RELAY_MANIFEST_MAX bytes. The work runs on the thread pool; done(ud, err) comes
 * from the loop once it is on disk (0 or -errno). Returns 0, or a negative error (then
 * done is not called and body is freed). For `content-cache warm`, which walks a
 * manifest itself.
 */
typedef void (*manifest_kept_fn)(void *ud, int err);
int manifest_keep(struct manifest_service *ms, size_t entry, const char *repo, const char *tag,
                  const char *hex, char *body, size_t len, const char *media_type,
                  manifest_kept_fn done, void *ud);

/* Handles GET or HEAD of a manifest route of upstreams entry `entry` (a sha256 digest or
 * a tag; other digests are relayed unchanged by the caller). */
void manifest_handle(struct manifest_service *ms, struct http_exchange *x,
                     const struct registry_route *route, size_t entry);

/* Requests in flight (for a drain, and tests). */
unsigned manifest_in_flight(const struct manifest_service *ms);

struct manifest_stats {
    uint64_t hits;     /* served from disk after a remembered authorization */
    uint64_t upstream; /* asked upstream */
    uint64_t stored;   /* manifests verified and kept */
    uint64_t mismatch; /* answers whose body did not hash to the digest: not kept */
};
const struct manifest_stats *manifest_service_stats(const struct manifest_service *ms);
/* A metrics_render_fn over a struct manifest_service. */
void manifest_render_metrics(const void *manifest_service, struct textbuf *out);

/*
 * The /v2/ check while every upstream fails (a relay_fallback_fn, ud the service): with
 * the outage policy's yes, 200, or the origin's last challenge (401) to a client that
 * sent no credential; otherwise the error.
 */
void manifest_base_fallback(void *manifest_service, struct http_exchange *x,
                            const struct policy_request *req, size_t entry, int err,
                            const char *why);

#endif
