/*
 * relay.h: relaying a pull-API request the cache does not keep (/v2/, manifests, tags,
 * referrers, the catalog, blobs of digests other than sha256) to the upstreams.
 *
 * The request goes to the bases that upstreams_select gives (with failover, chain.h)
 * with the client's Authorization, Accept and conditional headers; the answer comes back
 * streamed with backpressure: the status, the registry's headers (Content-Type,
 * Docker-Content-Digest, WWW-Authenticate, ...) and the body. An upstream that cannot be
 * reached is a 503, one that fails before its head a 502, each naming the upstream; a
 * body that breaks off closes the connection, so the client sees it short. Manifests and
 * referrers are capped at 4 MiB, as Docker Distribution caps them.
 *
 * Writes (POST, PUT, PATCH, DELETE: the push API, which only the front relays) go to the
 * first base only, with Content-Type and Content-Range besides, and their request body
 * streamed: a piece of the client's body goes upstream before the next is read, so
 * neither side runs ahead by more than a piece. An upstream that answers before the
 * body's end is the answer; the rest of the body is not read (the connection closes
 * after the response).
 */
#ifndef CC_RELAY_H
#define CC_RELAY_H

#include <stdbool.h>
#include <stddef.h>

#include "net/server.h"
#include "registry/registry.h"
#include "registry/upstreams.h"

struct relay_service;

/* upstreams must outlive the service. Returns NULL on allocation failure. */
struct relay_service *relay_service_new(struct upstreams *upstreams);

/*
 * From now on a Location header that names the upstream that answered (an upload's next
 * URL, as Docker Distribution writes it, absolute) is rewritten to name this server:
 * public_origin ("https://registry.example.com", http.host) when given, else the scheme
 * (https or not) and the Host the client sent. Returns 0 or -ENOMEM.
 */
int relay_service_rewrite_location(struct relay_service *rs, bool https, const char *public_origin);

/* Frees the service; no relay may be in flight (relay_in_flight). */
void relay_service_free(struct relay_service *rs);

/* Relays x, whose path is `route`, to upstreams entry `entry`, and ends the exchange. */
void relay_handle(struct relay_service *rs, struct http_exchange *x,
                  const struct registry_route *route, size_t entry);

/*
 * The same, with `authorization` (NULL: none) instead of the client's Authorization, and
 * `target` (NULL: the client's) as the request target: the front fetching, with its own
 * account, a blob a cache asks for with a grant (which the origin is not sent).
 */
void relay_handle_as(struct relay_service *rs, struct http_exchange *x,
                     const struct registry_route *route, size_t entry, const char *authorization,
                     const char *target);

/*
 * When every upstream failed before answering (unreachable, timed out, broken), the
 * fallback gets the exchange instead of the error response and must end it: req is the
 * request as the policies see it (valid during the call), err the failure (a libuv error)
 * and why a sentence naming the upstream. A 5xx head is relayed as it is.
 */
typedef void (*relay_fallback_fn)(void *ud, struct http_exchange *x,
                                  const struct policy_request *req, size_t entry, int err,
                                  const char *why);
void relay_handle_or(struct relay_service *rs, struct http_exchange *x,
                     const struct registry_route *route, size_t entry, relay_fallback_fn fallback,
                     void *fallback_ud);

/* Manifests are small (Docker Distribution refuses more than 4 MiB). */
#define RELAY_MANIFEST_MAX ((uint64_t)4 << 20)

/* True for the response headers that go back to the client with a relayed answer
 * (Content-Type, Docker-Content-Digest, WWW-Authenticate, ETag, ...). */
bool relay_response_header(const struct http_header *h);

/* Relays still in flight (for a drain, and tests). */
unsigned relay_in_flight(const struct relay_service *rs);

#endif
