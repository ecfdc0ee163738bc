/*
 * blob.h: GET and HEAD of /v2/<name>/blobs/sha256:<hex>, the cache's main job.
 *
 * Every request is first authorized by the upstream: a HEAD of that blob in that
 * repository with the client's Authorization. A refusal is relayed (status and
 * challenge) and no byte of the blob is sent. A request redirected by the front carries
 * a grant (?grant=, grant.h) instead: it is verified here, with the front's keys
 * (keyring.h), and authorizes the request alone (no upstream is asked: a hit costs no
 * request); a grant that does not verify is 401 (forged, altered, expired) or 403
 * (another repository or blob), and no byte. A miss goes up with the grant in its URL.
 * Then a HEAD is answered from the upstream's answer; a GET is served from disk when the
 * blob is stored (a hit), else from a fetch (fetch.h): the one already running for that
 * digest (coalesced), or a new one (a miss). Range requests (one range) get 206 or 416,
 * on hits and on misses. The upstream's 2xx to the HEAD also records the blob in that
 * repository (links.h: the registry's _layers link), on the thread pool.
 */
#ifndef CC_BLOB_H
#define CC_BLOB_H

#include <stdint.h>
#include <uv.h>

#include "cache/fetch.h"
#include "registry/upstreams.h"
#include "registry/registry.h"
#include "net/server.h"
#include "cache/store.h"
#include "base/metrics.h"

struct blob_service;

struct blob_service *blob_service_new(uv_loop_t *loop, struct store *store,
                                      struct fetch_manager *fetches, struct upstreams *upstreams);
void blob_service_free(struct blob_service *bs);

struct auth_cache;
struct auth_verifier;
struct config;

struct blob_auth_stats {
    uint64_t from_memory;    /* decided by remembered answers, no upstream request */
    uint64_t from_upstream;  /* asked the upstream (a HEAD with the client's credential) */
    uint64_t token_verified; /* auth.token: tokens verified here */
    uint64_t token_refused;  /* auth.token: tokens refused here (401) */
    uint64_t grant_verified; /* redirect grants verified here */
    uint64_t grant_refused;  /* redirect grants refused here (401/403) */
};

/*
 * Authorization from memory: remembered upstream answers (cache), and with auth.token
 * the verifier (may be NULL). Without a cache every request asks the upstream.
 */
void blob_service_set_auth(struct blob_service *bs, const struct config *cfg,
                           struct auth_cache *cache, struct auth_verifier *verifier);
const struct blob_auth_stats *blob_auth_stats(const struct blob_service *bs);
/* A metrics_render_fn over a struct blob_service: authorization decisions by source. */
void blob_render_metrics(const void *blob_service, struct textbuf *out);

struct keyring;
/* Requests that carry a grant are authorized by it, with these keys (may be NULL: the
 * grant is ignored, the upstream asked as for any request). */
void blob_service_set_grants(struct blob_service *bs, struct keyring *keys);

struct budget;
/* The disk budget: a blob larger than it allows passes through without storing. */
void blob_service_set_budget(struct blob_service *bs, struct budget *budget);

struct answers;
struct outage;
/* The credentials' answers kept on disk, and what to do when every upstream fails
 * (outage.h): with the on_upstream_failure policy's yes, a stored blob linked in the
 * repository is served to a credential the origin said yes to (or auth.token verified). */
void blob_service_set_outage(struct blob_service *bs, struct answers *answers,
                             struct outage *outage);

struct pulls;
/* Every GET served (hit, miss, coalesced, range) counts a pull of the blob (pulls.h). */
void blob_service_set_pulls(struct blob_service *bs, struct pulls *pulls);

/*
 * Whether a blob this request makes the cache fetch is stored (true) or only streamed to
 * its clients (false): the admit policy. size is the length the upstream announced, -1
 * when none. Called on the loop, once per fetch started, before it starts.
 */
typedef bool (*blob_admit_fn)(void *ud, const char *digest, int64_t size,
                              const struct policy_request *req);
void blob_service_set_admit(struct blob_service *bs, blob_admit_fn admit, void *ud);
/* True while a request reads stored blob `hex` (eviction and expiry leave it alone): a
 * request of this service, or of any service sharing its table (blob_service_set_in_use). */
bool blob_service_in_use(const struct blob_service *bs, const char *hex);

struct in_use;
/*
 * The table of blobs being read (in_use.h) that this service counts its readers in,
 * instead of its own: the loops of one process share one, so that loop 0's eviction
 * and expiry see the readers of every loop. Set before the first request; the table
 * must outlive the service.
 */
void blob_service_set_in_use(struct blob_service *bs, struct in_use *table);

/* The configured blobttl in seconds (0: none): how often a hit records its pull time. */
void blob_service_set_ttl(struct blob_service *bs, double ttl_s);

/* Handles a blob route whose digest is sha256, for upstreams entry `entry`. */
void blob_handle(struct blob_service *bs, struct http_exchange *x,
                 const struct registry_route *route, size_t entry);

enum blob_range_result { RANGE_NONE = 0, RANGE_PARTIAL = 1, RANGE_UNSATISFIABLE = -1 };

/*
 * Interprets a Range header value against a blob of `size` bytes. One range of the
 * forms "bytes=a-b", "bytes=a-", "bytes=-n" is honoured: RANGE_PARTIAL with
 * [*start, *end) set. Anything this function does not honour (several ranges,
 * another unit, bad syntax) is RANGE_NONE: the whole blob is sent, as RFC 9110 allows.
 * A well-formed range that lies past the end is RANGE_UNSATISFIABLE.
 */
enum blob_range_result blob_parse_range(const char *value, size_t len, uint64_t size,
                                        uint64_t *start, uint64_t *end);

#endif
