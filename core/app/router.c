/*
 * router.c: which handler answers a request. See router.h.
 */
#include "app/router.h"

#include <stdlib.h>
#include <string.h>

#include "access/grant.h"
#include "base/digest.h"
#include "registry/respond.h"

struct router {
    struct upstreams *upstreams;
    struct relay_service *relays;
    struct blob_service *blobs;         /* NULL: blobs are relayed like everything else */
    struct manifest_service *manifests; /* NULL: manifests are relayed */
};

struct router *router_new(struct upstreams *upstreams, struct relay_service *relays,
                          struct blob_service *blobs)
{
    struct router *r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    r->upstreams = upstreams;
    r->relays = relays;
    r->blobs = blobs;
    return r;
}

void router_free(struct router *r)
{
    free(r);
}

void router_set_manifests(struct router *r, struct manifest_service *manifests)
{
    r->manifests = manifests;
}

void router_handle(struct http_exchange *x, void *ud)
{
    struct router *r = ud;
    size_t path_len;
    const char *path = http_req_path(x, &path_len);
    bool under_v2 =
        path_len >= 3 && memcmp(path, "/v2", 3) == 0 && (path_len == 3 || path[3] == '/');
    /* A redirect grant is a credential: the logs show the URI without it. */
    char redacted[REGISTRY_PATH_MAX + GRANT_MAX + 64];
    if (grant_redact(http_req_target(x), redacted, sizeof(redacted))) http_log_set_uri(x, redacted);

    if (!http_req_is_get(x) && !http_req_is_head(x)) {
        if (under_v2)
            respond_error(x, REG_ERR_UNSUPPORTED,
                          "the cache serves pulls only; push to the origin registry", NULL);
        else
            respond_error(x, REG_ERR_NOT_FOUND, "not found", NULL);
        return;
    }

    char ns[300];
    int entry = upstreams_entry_for(r->upstreams, x, ns, sizeof(ns));
    if (ns[0] != '\0') http_respond_add_header(x, "OCI-Namespace", ns);
    if (entry < 0) {
        respond_error(x, REG_ERR_NAME_UNKNOWN,
                      "no upstream of this cache is the registry named by ns", ns);
        return;
    }

    struct registry_route route;
    enum registry_error_code err = registry_route_parse(path, path_len, &route);
    if (path_len == strlen(GRANT_KEYS_PATH) && memcmp(path, GRANT_KEYS_PATH, path_len) == 0) {
        /* The front's public keys, for caches below this one in a chain: relayed. */
        relay_handle(r->relays, x, &route, (size_t)entry);
        return;
    }
    if (route.name != NULL)
        http_log_set_target(x, route.name, route.name_len,
                            route.reference_is_digest ? route.reference : NULL,
                            route.reference_len);
    if (err != REG_ERR_NONE) {
        const char *msg = err == REG_ERR_NAME_INVALID       ? "invalid repository name"
                          : err == REG_ERR_TAG_INVALID      ? "invalid tag"
                          : err == REG_ERR_DIGEST_INVALID   ? "invalid digest"
                          : err == REG_ERR_MANIFEST_UNKNOWN ? "manifest unknown"
                                                            : "not found";
        respond_error(x, err, msg, NULL);
        return;
    }
    switch (route.kind) {
    case ROUTE_BLOB:
        if (r->blobs != NULL && digest_ref_is_sha256(route.reference, route.reference_len)) {
            blob_handle(r->blobs, x, &route, (size_t)entry);
            return;
        }
        http_log_set_cache(x, "bypass");
        relay_handle(r->relays, x, &route, (size_t)entry);
        return;
    case ROUTE_MANIFEST:
        if (r->manifests != NULL && (!route.reference_is_digest ||
                                     digest_ref_is_sha256(route.reference, route.reference_len))) {
            manifest_handle(r->manifests, x, &route, (size_t)entry);
            return;
        }
        relay_handle(r->relays, x, &route, (size_t)entry);
        return;
    case ROUTE_BASE:
        if (r->manifests != NULL) {
            relay_handle_or(r->relays, x, &route, (size_t)entry, manifest_base_fallback,
                            r->manifests);
            return;
        }
        relay_handle(r->relays, x, &route, (size_t)entry);
        return;
    case ROUTE_TAGS:
    case ROUTE_REFERRERS:
    case ROUTE_CATALOG:
        relay_handle(r->relays, x, &route, (size_t)entry);
        return;
    case ROUTE_V2_OTHER:
    case ROUTE_NOT_V2:
        break;
    }
    respond_error(x, REG_ERR_NOT_FOUND, "not found", NULL);
}
