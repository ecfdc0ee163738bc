/*
 * upstreams.h: where a client's request goes upstream, and what goes with it.
 *
 * The config's `upstreams` entries (an origin, and the upstream caches of a chain) as
 * base URLs; which entry a request is for (the `ns` query parameter); the ordered list of
 * bases to try for it (the select_upstream policy, or the built-in round robin); the
 * client headers that go with it; and the pool of upstream connections they share. The
 * relay, the blob handler and the health check all ask here, so each request's upstream
 * requests go to one place: a blob's authorization HEAD and its fetch go to the same
 * upstream.
 *
 * Everything runs on the loop's thread. The config and the pool must outlive the object.
 */
#ifndef CC_UPSTREAMS_H
#define CC_UPSTREAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "base/config.h"
#include "base/metrics.h"
#include "lua/policy.h"
#include "net/server.h"
#include "net/upstream.h"
#include "registry/registry.h"

struct upstreams;

/* Builds the bases of every entry of cfg. Returns NULL on allocation failure. */
struct upstreams *upstreams_new(const struct config *cfg, struct upstream_pool *pool);
void upstreams_free(struct upstreams *u);

/* Upstream selection asks this engine's select_upstream from now on (NULL: built-in). */
void upstreams_set_policy(struct upstreams *u, struct policy_engine *pe);

struct upstream_pool *upstreams_pool(const struct upstreams *u);

/* How many entries the config has (0: nothing to relay to). */
size_t upstreams_count(const struct upstreams *u);

/*
 * The upstreams entry a request is for: the one whose originhost is the registry named
 * by the `ns` query parameter (host[:port], as containerd sends it to a mirror; docker.io
 * and index.docker.io name registry-1.docker.io), or the first without one. -1 when ns
 * names none of them or does not decode. The decoded ns goes to ns ("" when absent or
 * when it does not decode).
 */
int upstreams_entry_for(const struct upstreams *u, const struct http_exchange *x, char *ns,
                        size_t ns_len);

/* The entry whose originhost is `registry` (host[:port], matched as the ns parameter
 * is), or -1. For a reference that names its registry (`content-cache warm`). */
int upstreams_entry_for_registry(const struct upstreams *u, const char *registry);

/* Whether image references (registry_image_ref_parse) all go to one upstreams entry, as
 * a login that is one registry's must: a reference naming no registry is the first
 * entry's; one that does not parse or names no entry is left out (it fails on its own).
 * False with *other the index of the first that goes elsewhere than images[0]'s. */
bool upstreams_images_one_entry(const struct upstreams *u, const char *const *images, size_t n,
                                size_t *other);

/*
 * The base URLs to try for one client request of entry `entry`, in order: what the
 * select_upstream policy answers (each URL mapped to the configured upstream it names;
 * the default, policies/upstream.lua, rotates the upstreamhosts and puts the originhost
 * last). When no policy is set, none defines the hook or it fails: the config's order,
 * the upstreamhosts as written then the originhost (a last resort: no rotation). Call it
 * once per client request that goes upstream, and only then (each call is a Lua call, and
 * the default's cursor moves at each), and use the list for every upstream request made
 * for it. The array is valid until the next call.
 */
const char *const *upstreams_select(struct upstreams *u, const struct policy_request *req,
                                    size_t entry, size_t *n);

/*
 * Copies the request headers that go upstream with a request made for x: Authorization
 * (marked sensitive), every Accept, and with_conditionals also Range, If-None-Match,
 * If-Modified-Since, If-Range. Values are NUL-terminated copies in scratch. Returns how
 * many were written to out (at most max).
 */
size_t upstreams_forward_headers(const struct http_exchange *x, bool with_conditionals,
                                 struct upstream_header *out, size_t max, char *scratch,
                                 size_t scratch_len);

/*
 * Copies the headers that describe a request body, for a write relayed upstream:
 * Content-Type, Content-Range, Content-Encoding. As upstreams_forward_headers; returns
 * how many were written.
 */
size_t upstreams_forward_content_headers(const struct http_exchange *x, struct upstream_header *out,
                                         size_t max, char *scratch, size_t scratch_len);

/* What the policies are told about a request: a policy_request and its strings. */
struct upstreams_req_info {
    struct policy_request req;
    size_t entry; /* the upstreams entry serving it */
    char repository[REGISTRY_NAME_MAX + 1];
    char reference[REGISTRY_REFERENCE_MAX + 1];
};
void upstreams_req_info_init(struct upstreams_req_info *ri, const struct http_exchange *x,
                             const struct registry_route *route, size_t entry);

/*
 * A health_check_fn (metrics.h) over a struct upstreams: healthy when an upstream answered
 * in the last minute; else it asks the first entry's upstreams for /v2/ now (any answer
 * but a 5xx will do) and answers from that.
 */
void upstreams_health_check(void *upstreams, uv_loop_t *loop, health_done_fn done, void *arg);

/*
 * At shutdown, before the upstream pool closes: cancels the health probes in flight,
 * answering each check "not healthy, stopping" before it returns, and answers every
 * later check so at once. Without it a probe of an upstream that does not answer would
 * hold the loop (and the stop) for its timeouts.
 */
void upstreams_stop_probes(struct upstreams *u);

#endif
