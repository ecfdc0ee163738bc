/*
 * router.h: the cache's request handler: which handler answers each request.
 *
 * Writes (POST, PUT, PATCH, DELETE) under /v2/ are refused with 405 UNSUPPORTED (pushes
 * go to the origin); the `ns` parameter picks the upstreams entry (404 NAME_UNKNOWN when
 * it names none, echoed in OCI-Namespace); the path is checked against the registry's
 * grammar (400 NAME_INVALID, TAG_INVALID, DIGEST_INVALID); a blob GET/HEAD of a sha256
 * digest goes to the blob service, a manifest GET/HEAD of a tag or a sha256 digest to
 * the manifest service (when set), /v2/ to the relay with the manifest service's outage
 * fallback, every other pull-API request to the relay, and anything else is a 404, but
 * for the front's grant keys (GRANT_KEYS_PATH, grant.h), relayed for the caches below
 * this one in a chain. A grant in a request's query is redacted from what the logs show.
 */
#ifndef CC_ROUTER_H
#define CC_ROUTER_H

#include "cache/blob.h"
#include "cache/manifest.h"
#include "net/server.h"
#include "registry/relay.h"
#include "registry/upstreams.h"

struct router;

/*
 * Creates the handler. Everything given must outlive it; blobs may be NULL (then blobs
 * are relayed like everything else). Returns NULL on allocation failure.
 */
struct router *router_new(struct upstreams *upstreams, struct relay_service *relays,
                          struct blob_service *blobs);
void router_free(struct router *r);

/* Manifests (by sha256 digest, and tags) and the /v2/ check during an outage go to the
 * manifest service from now on (manifest.h); without one they are relayed. */
void router_set_manifests(struct router *r, struct manifest_service *manifests);

/* The server's request callback: pass router_handle with the router as ud. */
void router_handle(struct http_exchange *x, void *router);

#endif
