/*
 * redirect.h: the front's blob redirect (the document's "DTR redirects the layer download
 * to the cache configured by the user").
 *
 * A GET of /v2/<name>/blobs/<digest> is redirected when all of these hold:
 *   1. it is no cache's own request (a User-Agent of content-cache/: a cache that pulls
 *      through the front by name is served, never sent to itself);
 *   2. the client is signed in (identity.h: the origin accepts its credentials);
 *   3. a cache is chosen: the select_cache policy (lua/policy.h), whose built-in answer is
 *      the cache the user chose (state.h); nil means none;
 *   4. the client may pull this blob: a HEAD of it at the origin with the client's own
 *      Authorization answers 2xx. As on a cache, the answer is remembered as two facts
 *      (this credential may pull this repository; this digest is in it), for the decision
 *      cache's TTLs (auth.h), so a pull costs the origin one HEAD per credential,
 *      repository and blob and minute at most.
 * Then the answer is `307 Temporary Redirect` with
 *   Location: <cache host>/v2/<name>/blobs/<digest>?grant=<grant>
 * (grant.h: ES256, repository, digest, user, exp = now + granttl), signed on libuv's
 * thread pool, and `Cache-Control: no-store`. Otherwise the request goes to `fallback`
 * (the relay: the client sees the origin's own answer, a refusal included). The access
 * log says cache=redirect and the cache's host as upstream.
 *
 * Everything runs on the loop's thread but the signature.
 */
#ifndef CC_FRONT_REDIRECT_H
#define CC_FRONT_REDIRECT_H

#include <stdint.h>
#include <uv.h>

#include "access/auth.h"
#include "access/grant.h"
#include "front/identity.h"
#include "front/state.h"
#include "lua/policy.h"
#include "net/server.h"
#include "net/upstream.h"
#include "registry/registry.h"

struct redirect_service;

struct redirect_opts {
    uv_loop_t *loop;
    struct upstream_pool *pool;
    const char *origin_base; /* "http://host:port[/prefix]" (copied) */
    const char *origin_key;  /* the originhost as configured: decisions are kept per origin */
    struct identity *identity;
    struct front_state *state;
    struct policy_engine *policy; /* may be NULL: the built-in choice */
    struct auth_cache *memory;    /* may be NULL: the origin is asked every time */
    const struct grant_key *key;  /* with its private part */
    uint64_t granttl_s;
    /* Serves what is not redirected (the relay). */
    void (*fallback)(void *ud, struct http_exchange *x, const struct registry_route *route);
    void *ud;
};

/* Everything in opts must outlive the service (it keeps copies of the strings). */
struct redirect_service *redirect_service_new(const struct redirect_opts *opts);
/* No redirect may be in flight. */
void redirect_service_free(struct redirect_service *rs);

/* Handles a blob GET (route->kind ROUTE_BLOB) that carries no grant, and ends it. */
void redirect_handle(struct redirect_service *rs, struct http_exchange *x,
                     const struct registry_route *route);

struct redirect_stats {
    uint64_t redirected; /* 307s */
    uint64_t relayed;    /* blob GETs that went to fallback */
};
const struct redirect_stats *redirect_stats(const struct redirect_service *rs);
/* A metrics_render_fn over a struct redirect_service. */
void redirect_render_metrics(const void *redirect_service, struct textbuf *out);

/* Redirects in flight (a drain, tests). */
unsigned redirect_in_flight(const struct redirect_service *rs);

#endif
