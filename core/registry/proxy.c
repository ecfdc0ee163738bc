/*
 * proxy.c: routing of pull-API requests and their relay to an upstream.
 */
#include "registry/proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/bytes.h"
#include "cache/blob.h"
#include "net/chain.h"
#include "lua/policy.h"
#include "registry/registry.h"

#define PROXY_MAX_CANDIDATES 16
#define PROXY_MAX_FORWARDED 24
#define PROXY_MANIFEST_MAX ((uint64_t)4 << 20)

struct proxy {
    uv_loop_t *loop;
    const struct config *cfg;
    struct upstream_pool *pool;
    unsigned in_flight;
    /* Per upstreams entry: base URLs ("scheme://host:port/prefix"), the upstreamhosts in
     * config order, then the origin. */
    struct proxy_entry {
        char *bases[PROXY_MAX_CANDIDATES];
        size_t n_bases;
        size_t n_hosts; /* how many of bases are upstreamhosts */
        size_t cursor;  /* round-robin position among the hosts */
    } * entries;
    size_t n_entries;
    const char *order[PROXY_MAX_CANDIDATES]; /* scratch for proxy_select */
    struct policy_engine *policy;            /* select_upstream, when set */
    struct blob_service *blobs;              /* NULL: blobs are relayed like everything else */
};

/* One relayed exchange. */
struct relay {
    struct proxy *proxy;
    struct http_exchange *x;
    struct proxy_req_info info;
    struct chain_req *ureq;
    bool head_sent;
    bool upstream_done;
    int upstream_err;
    bool finished;
    uint64_t limit; /* body bytes relayed at most (manifests), 0: none */
    uint64_t relayed;
    /* Body bytes: `inflight` is being written to the client, `pending` waits. */
    char *inflight;
    size_t inflight_cap;
    char *pending;
    size_t pending_len, pending_cap;
    bool writing;
    char last_error[256];
};

static char *join_base(const struct url *u)
{
    char origin[400];
    if (url_format_origin(u, origin, sizeof(origin)) < 0) return NULL;
    size_t n = strlen(origin) + strlen(u->path) + 1;
    char *s = malloc(n);
    if (s != NULL) snprintf(s, n, "%s%s", origin, u->path);
    return s;
}

struct proxy *proxy_new(uv_loop_t *loop, const struct config *cfg, struct upstream_pool *pool)
{
    struct proxy *p = calloc(1, sizeof(*p));
    if (p == NULL) return NULL;
    p->loop = loop;
    p->cfg = cfg;
    p->pool = pool;
    p->entries = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof(*p->entries));
    if (p->entries == NULL) {
        free(p);
        return NULL;
    }
    p->n_entries = cfg->n_upstreams;
    bool ok = true;
    for (size_t e = 0; e < cfg->n_upstreams; e++) {
        const struct config_upstream *up = &cfg->upstreams[e];
        struct proxy_entry *pe = &p->entries[e];
        for (size_t i = 0; i < up->n_upstreamhosts && pe->n_bases < PROXY_MAX_CANDIDATES - 1; i++)
            pe->bases[pe->n_bases++] = join_base(&up->upstream_urls[i]);
        pe->n_hosts = pe->n_bases;
        pe->bases[pe->n_bases++] = join_base(&up->origin);
        for (size_t i = 0; i < pe->n_bases; i++)
            ok = ok && pe->bases[i] != NULL;
    }
    if (!ok) {
        proxy_free(p);
        return NULL;
    }
    return p;
}

void proxy_free(struct proxy *p)
{
    if (p == NULL) return;
    for (size_t e = 0; e < p->n_entries; e++)
        for (size_t i = 0; i < p->entries[e].n_bases; i++)
            free(p->entries[e].bases[i]);
    free(p->entries);
    free(p);
}

unsigned proxy_in_flight(const struct proxy *p)
{
    return p->in_flight;
}

void proxy_respond_error_with(struct http_exchange *x, int code, int status,
                              const struct http_header *extra, size_t n_extra, const char *message,
                              const char *detail)
{
    char body[2048];
    int n =
        registry_error_json((enum registry_error_code)code, message, detail, body, sizeof(body));
    if (n < 0) n = 0;
    struct http_header hdrs[8];
    size_t nh = 0;
    hdrs[nh++] = (struct http_header){"Content-Type", 12, "application/json; charset=utf-8", 31};
    hdrs[nh++] = (struct http_header){"X-Content-Type-Options", 22, "nosniff", 7};
    if (code == REG_ERR_UNSUPPORTED) hdrs[nh++] = (struct http_header){"Allow", 5, "GET, HEAD", 9};
    for (size_t i = 0; i < n_extra && nh < 8; i++)
        hdrs[nh++] = extra[i];
    if (status <= 0) status = registry_error_status((enum registry_error_code)code);
    http_log_set_error(x, message);
    if (http_respond_full(x, status, hdrs, nh, body, (size_t)n) != 0) http_respond_abort(x);
}

void proxy_respond_error(struct http_exchange *x, int code, const char *message, const char *detail)
{
    proxy_respond_error_with(x, code, 0, NULL, 0, message, detail);
}

/* --- Relay ------------------------------------------------------------------------ */

static void relay_free(struct relay *r)
{
    r->proxy->in_flight--;
    free(r->inflight);
    free(r->pending);
    free(r);
}

/* Ends the exchange once the upstream is done and every byte is written. */
static void relay_maybe_finish(struct relay *r)
{
    if (r->finished || !r->upstream_done || r->writing) return;
    r->finished = true;
    if (http_exchange_client_gone(r->x)) {
        http_respond_end(r->x);
    } else if (r->upstream_err == 0) {
        http_respond_end(r->x);
    } else if (!r->head_sent) {
        int err = r->upstream_err;
        int code = (err == UV_ECONNREFUSED || err == UV_EHOSTUNREACH || err == UV_ENETUNREACH ||
                    err == UV_EAI_NONAME || err == UV_EAI_AGAIN || err == UV_ECONNRESET)
                       ? REG_ERR_UNAVAILABLE
                       : REG_ERR_UPSTREAM_FAILED;
        char msg[400];
        snprintf(msg, sizeof(msg), "upstream failed: %s", r->last_error);
        log_msg(LOG_WARN, "%s %s: %s", http_req_method(r->x), http_req_target(r->x), msg);
        proxy_respond_error(r->x, code, msg, NULL);
    } else {
        /* The body broke off after the head went out: close, so the client can tell. */
        char msg[400];
        snprintf(msg, sizeof(msg), "upstream body broke off: %s", r->last_error);
        log_msg(LOG_WARN, "%s %s: %s", http_req_method(r->x), http_req_target(r->x), msg);
        http_log_set_error(r->x, msg);
        http_respond_abort(r->x);
    }
    relay_free(r);
}

static void relay_write_pending(struct relay *r);

static void relay_write_done(struct http_exchange *x, int status, void *arg)
{
    struct relay *r = arg;
    r->writing = false;
    if (status < 0) {
        /* The client is gone: stop the upstream too. */
        if (!r->upstream_done) {
            chain_cancel(r->ureq);
            r->ureq = NULL;
            r->upstream_done = true;
            r->upstream_err = status;
        }
        r->pending_len = 0;
        relay_maybe_finish(r);
        return;
    }
    if (r->pending_len > 0) {
        relay_write_pending(r);
        return;
    }
    if (!r->upstream_done && r->ureq != NULL) chain_resume(r->ureq);
    relay_maybe_finish(r);
}

/* Moves pending bytes into flight. */
static void relay_write_pending(struct relay *r)
{
    char *tmp = r->inflight;
    size_t tmp_cap = r->inflight_cap;
    r->inflight = r->pending;
    r->inflight_cap = r->pending_cap;
    size_t len = r->pending_len;
    r->pending = tmp;
    r->pending_cap = tmp_cap;
    r->pending_len = 0;
    r->writing = true;
    int rc = http_respond_body(r->x, r->inflight, len, relay_write_done, r);
    if (rc < 0) {
        r->writing = false;
        relay_write_done(r->x, rc, r);
    }
}

static int relay_append_pending(struct relay *r, const char *data, size_t len)
{
    return bytes_append(&r->pending, &r->pending_len, &r->pending_cap, data, len, 16384);
}

static const char *const relayed_response_headers[] = {
    "Content-Type",
    "Docker-Content-Digest",
    "WWW-Authenticate",
    "ETag",
    "Link",
    "Content-Range",
    "Accept-Ranges",
    "Retry-After",
    "OCI-Filters-Applied",
    "Last-Modified",
    "Cache-Control",
    "X-Content-Type-Options",
    "Warning",
};

static void relay_on_head(void *ud, int status, const struct http_header *hdrs, size_t n_hdrs,
                          int64_t content_length)
{
    struct relay *r = ud;
    if (r->limit && content_length > (int64_t)r->limit) {
        snprintf(r->last_error, sizeof(r->last_error),
                 "%s announced a manifest of %lld bytes, more than the %llu allowed",
                 chain_base(r->ureq), (long long)content_length, (unsigned long long)r->limit);
        chain_cancel(r->ureq);
        r->ureq = NULL;
        r->upstream_done = true;
        r->upstream_err = UV_E2BIG;
        relay_maybe_finish(r);
        return;
    }
    struct http_header out[32];
    size_t n = 0;
    for (size_t i = 0; i < n_hdrs && n < 32; i++) {
        for (size_t k = 0; k < sizeof(relayed_response_headers) / sizeof(*relayed_response_headers);
             k++) {
            if (http_header_is(&hdrs[i], relayed_response_headers[k])) {
                out[n++] = hdrs[i];
                break;
            }
        }
    }
    http_log_set_upstream(r->x, chain_base(r->ureq));
    http_respond_head(r->x, status, out, n, content_length);
    r->head_sent = true;
}

static void relay_on_body(void *ud, const char *data, size_t len)
{
    struct relay *r = ud;
    if (http_exchange_client_gone(r->x)) return;
    r->relayed += len;
    if (r->limit && r->relayed > r->limit) {
        /* A manifest without end: cut it (the client sees a short body, never a whole
         * wrong one). */
        snprintf(r->last_error, sizeof(r->last_error), "manifest longer than %llu bytes",
                 (unsigned long long)r->limit);
        chain_cancel(r->ureq);
        r->ureq = NULL;
        r->upstream_done = true;
        r->upstream_err = UV_E2BIG;
        r->pending_len = 0;
        relay_maybe_finish(r);
        return;
    }
    if (!r->writing && r->pending_len == 0) {
        int w = http_respond_try(r->x, data, len);
        if (w < 0) {
            return; /* the write path will notice the closed connection */
        }
        data += w;
        len -= (size_t)w;
        if (len == 0) return;
    }
    if (relay_append_pending(r, data, len) < 0) {
        snprintf(r->last_error, sizeof(r->last_error), "out of memory");
        chain_cancel(r->ureq);
        r->ureq = NULL;
        r->upstream_done = true;
        r->upstream_err = UV_ENOMEM;
        r->pending_len = 0;
        relay_maybe_finish(r);
        return;
    }
    chain_pause(r->ureq);
    if (!r->writing) relay_write_pending(r);
}

static void relay_on_done(void *ud, int err)
{
    struct relay *r = ud;
    if (err < 0) snprintf(r->last_error, sizeof(r->last_error), "%s", chain_error_message(r->ureq));
    r->ureq = NULL;
    r->upstream_done = true;
    r->upstream_err = err;
    relay_maybe_finish(r);
}

static void relay_client_gone(struct http_exchange *x, void *arg)
{
    struct relay *r = arg;
    if (!r->upstream_done && r->ureq != NULL) {
        chain_cancel(r->ureq);
        r->ureq = NULL;
        r->upstream_done = true;
        r->upstream_err = UV_ECANCELED;
    }
    r->pending_len = 0;
    relay_maybe_finish(r);
}

static const char *const forwarded_request_headers[] = {
    "Accept", "Range", "If-None-Match", "If-Modified-Since", "If-Range",
};

size_t proxy_forward_headers(const struct http_exchange *x, bool with_conditionals,
                             struct upstream_header *out, size_t max, char *scratch,
                             size_t scratch_len)
{
    const struct http_header *hdrs;
    size_t n_hdrs, nf = 0, sp = 0;
    http_req_headers(x, &hdrs, &n_hdrs);
    for (size_t i = 0; i < n_hdrs && nf < max; i++) {
        const char *name = NULL;
        bool sensitive = false;
        if (http_header_is(&hdrs[i], "Authorization")) {
            name = "Authorization";
            sensitive = true;
        } else if (http_header_is(&hdrs[i], "Accept")) {
            name = "Accept";
        } else if (with_conditionals) {
            for (size_t k = 1;
                 k < sizeof(forwarded_request_headers) / sizeof(*forwarded_request_headers); k++)
                if (http_header_is(&hdrs[i], forwarded_request_headers[k]))
                    name = forwarded_request_headers[k];
        }
        if (name == NULL || sp + hdrs[i].value_len + 1 > scratch_len) continue;
        memcpy(scratch + sp, hdrs[i].value, hdrs[i].value_len);
        scratch[sp + hdrs[i].value_len] = '\0';
        out[nf++] = (struct upstream_header){name, scratch + sp, sensitive};
        sp += hdrs[i].value_len + 1;
    }
    return nf;
}

static void relay_start(struct relay *r)
{
    struct http_exchange *x = r->x;
    struct upstream_header fwd[PROXY_MAX_FORWARDED];
    char scratch[16384 + PROXY_MAX_FORWARDED * 2];
    size_t nf = proxy_forward_headers(x, true, fwd, PROXY_MAX_FORWARDED, scratch, sizeof(scratch));
    size_t n_bases;
    struct chain_spec spec = {
        .method = http_req_is_head(x) ? "HEAD" : "GET",
        .bases = proxy_select(r->proxy, &r->info.req, r->info.entry, &n_bases),
        .n_bases = n_bases,
        .target = http_req_target(x),
        .headers = fwd,
        .n_headers = nf,
        .max_redirects = 5,
    };
    static const struct upstream_callbacks cbs = {
        .on_head = relay_on_head,
        .on_body = relay_on_body,
        .on_done = relay_on_done,
    };
    int rc = chain_request(r->proxy->pool, &spec, &cbs, r, &r->ureq);
    if (rc < 0) {
        snprintf(r->last_error, sizeof(r->last_error), "%s: %s",
                 r->proxy->entries[r->info.entry].bases[0],
                 rc == UV_ENOTSUP ? "https upstreams are not supported by this build yet"
                                  : uv_strerror(rc));
        r->ureq = NULL;
        r->upstream_done = true;
        r->upstream_err = rc;
        relay_maybe_finish(r);
    }
}

/* Relays x to the upstreams. */
static void relay(struct proxy *p, struct http_exchange *x, const struct registry_route *route,
                  size_t entry)
{
    if (p->n_entries == 0) {
        proxy_respond_error(x, REG_ERR_UNAVAILABLE, "no upstream configured", NULL);
        return;
    }
    struct relay *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        proxy_respond_error(x, REG_ERR_INTERNAL, "out of memory", NULL);
        return;
    }
    r->proxy = p;
    r->x = x;
    proxy_req_info_init(&r->info, x, route, entry);
    /* Manifests are small (Docker Distribution refuses more than 4 MiB): an upstream that
     * sends more is broken, and a relay must not stream it without end. */
    if (route->kind == ROUTE_MANIFEST || route->kind == ROUTE_REFERRERS)
        r->limit = PROXY_MANIFEST_MAX;
    p->in_flight++;
    http_exchange_on_gone(x, relay_client_gone, r);
    relay_start(r);
}

/* --- Routing ---------------------------------------------------------------------- */

void proxy_req_info_init(struct proxy_req_info *ri, const struct http_exchange *x,
                         const struct registry_route *route, size_t entry)
{
    static const char *const kinds[] = {
        [ROUTE_BASE] = "base",      [ROUTE_MANIFEST] = "manifest",   [ROUTE_BLOB] = "blob",
        [ROUTE_TAGS] = "tags",      [ROUTE_REFERRERS] = "referrers", [ROUTE_CATALOG] = "catalog",
        [ROUTE_V2_OTHER] = "other", [ROUTE_NOT_V2] = "other",
    };
    memset(ri, 0, sizeof(*ri));
    ri->entry = entry;
    ri->req.method = http_req_method(x);
    ri->req.kind = kinds[route->kind];
    if (route->name != NULL && route->name_len < sizeof(ri->repository)) {
        memcpy(ri->repository, route->name, route->name_len);
        ri->req.repository = ri->repository;
    }
    if (route->reference != NULL && route->reference_len < sizeof(ri->reference)) {
        memcpy(ri->reference, route->reference, route->reference_len);
        ri->req.reference = ri->reference;
        if (route->reference_is_digest) ri->req.digest = ri->reference;
    }
}

void proxy_handle(struct http_exchange *x, void *ud)
{
    struct proxy *p = ud;
    size_t path_len;
    const char *path = http_req_path(x, &path_len);
    bool under_v2 =
        path_len >= 3 && memcmp(path, "/v2", 3) == 0 && (path_len == 3 || path[3] == '/');

    if (!http_req_is_get(x) && !http_req_is_head(x)) {
        if (under_v2)
            proxy_respond_error(x, REG_ERR_UNSUPPORTED,
                                "the cache serves pulls only; push to the origin registry", NULL);
        else
            proxy_respond_error(x, REG_ERR_NOT_FOUND, "not found", NULL);
        return;
    }

    char ns[300];
    int entry = proxy_entry_for(p, x, ns, sizeof(ns));
    if (ns[0] != '\0') http_respond_add_header(x, "OCI-Namespace", ns);
    if (entry < 0) {
        proxy_respond_error(x, REG_ERR_NAME_UNKNOWN,
                            "no upstream of this cache is the registry named by ns", ns);
        return;
    }

    struct registry_route route;
    enum registry_error_code err = registry_route_parse(path, path_len, &route);
    if (route.name != NULL)
        http_log_set_target(x, route.name, route.name_len,
                            route.reference_is_digest ? route.reference : NULL,
                            route.reference_len);
    if (err != REG_ERR_NONE) {
        const char *msg = err == REG_ERR_NAME_INVALID     ? "invalid repository name"
                          : err == REG_ERR_TAG_INVALID    ? "invalid tag"
                          : err == REG_ERR_DIGEST_INVALID ? "invalid digest"
                                                          : "not found";
        proxy_respond_error(x, err, msg, NULL);
        return;
    }
    switch (route.kind) {
    case ROUTE_BASE:
    case ROUTE_MANIFEST:
    case ROUTE_BLOB:
    case ROUTE_TAGS:
    case ROUTE_REFERRERS:
    case ROUTE_CATALOG:
        if (route.kind == ROUTE_BLOB) {
            if (p->blobs != NULL && route.reference_len == 71 &&
                memcmp(route.reference, "sha256:", 7) == 0) {
                blob_handle(p->blobs, x, &route, (size_t)entry);
                return;
            }
            http_log_set_cache(x, CACHE_BYPASS);
        }
        relay(p, x, &route, (size_t)entry);
        return;
    case ROUTE_V2_OTHER:
    case ROUTE_NOT_V2:
        break;
    }
    proxy_respond_error(x, REG_ERR_NOT_FOUND, "not found", NULL);
}

/* The base (as joined at start) of a URL as the config writes it, or NULL. */
static const char *base_of_config_url(const struct proxy *p, size_t entry, const char *url)
{
    const struct config_upstream *up = &p->cfg->upstreams[entry];
    const struct proxy_entry *pe = &p->entries[entry];
    if (strcmp(url, up->originhost) == 0) return pe->bases[pe->n_bases - 1];
    for (size_t i = 0; i < up->n_upstreamhosts && i < pe->n_hosts; i++)
        if (strcmp(url, up->upstreamhosts[i]) == 0) return pe->bases[i];
    return NULL;
}

const char *const *proxy_select(struct proxy *p, const struct policy_request *req, size_t entry,
                                size_t *n)
{
    if (entry >= p->n_entries) entry = 0;
    struct proxy_entry *pe = &p->entries[entry];
    /* The built-in select_upstream is the round robin below, done in C (spec/ holds
     * the Lua one to the same order): only a drop-in's costs a Lua call. */
    if (p->policy != NULL && policy_has_hook(p->policy, POLICY_HOOK_SELECT_UPSTREAM) &&
        !policy_hook_is_builtin(p->policy, POLICY_HOOK_SELECT_UPSTREAM)) {
        char **urls = NULL;
        size_t n_urls = 0, k = 0;
        if (policy_select_upstream(p->policy, req, entry, &urls, &n_urls) == 0) {
            for (size_t i = 0; i < n_urls && k < PROXY_MAX_CANDIDATES; i++) {
                const char *b = base_of_config_url(p, entry, urls[i]);
                if (b != NULL) p->order[k++] = b;
            }
            policy_free_list(urls, n_urls);
            if (k > 0) {
                *n = k;
                return p->order;
            }
        }
    }
    /* The built-in order, as the default policy's: the upstream caches in round-robin
     * order from the cursor, then the origin as the last resort. */
    for (size_t i = 0; i < pe->n_hosts; i++)
        p->order[i] = pe->bases[(pe->cursor + i) % pe->n_hosts];
    for (size_t i = pe->n_hosts; i < pe->n_bases; i++)
        p->order[i] = pe->bases[i];
    if (pe->n_hosts > 0) pe->cursor = (pe->cursor + 1) % pe->n_hosts;
    *n = pe->n_bases;
    return p->order;
}

/* Decodes %XX escapes of src[0..n) into out; false when it does not fit or is malformed. */
static bool percent_decode(const char *src, size_t n, char *out, size_t len)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '%') {
            if (i + 2 >= n) return false;
            char hex[3] = {src[i + 1], src[i + 2], 0};
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end != '\0' || v <= 0) return false;
            c = (char)v;
            i += 2;
        }
        if (k + 1 >= len) return false;
        out[k++] = c;
    }
    out[k] = '\0';
    return true;
}

int proxy_entry_for(const struct proxy *p, const struct http_exchange *x, char *ns, size_t ns_len)
{
    size_t qlen;
    const char *q = http_req_query(x, &qlen);
    ns[0] = '\0';
    while (q != NULL && qlen > 0) {
        const char *amp = memchr(q, '&', qlen);
        size_t plen = amp ? (size_t)(amp - q) : qlen;
        if (plen > 3 && memcmp(q, "ns=", 3) == 0) {
            if (!percent_decode(q + 3, plen - 3, ns, ns_len)) return -1;
            break;
        }
        if (amp == NULL) break;
        qlen -= plen + 1;
        q = amp + 1;
    }
    if (ns[0] == '\0') return 0; /* no namespace: the first entry serves */
    /* Docker Hub's names: containerd says docker.io, the registry is registry-1. */
    const char *name = ns;
    if (strcasecmp(ns, "docker.io") == 0 || strcasecmp(ns, "index.docker.io") == 0)
        name = "registry-1.docker.io";
    for (size_t e = 0; e < p->n_entries; e++) {
        const struct url *u = &p->cfg->upstreams[e].origin;
        char hostport[300];
        snprintf(hostport, sizeof(hostport), strchr(u->host, ':') ? "[%s]:%u" : "%s:%u", u->host,
                 (unsigned)u->port);
        if (strcasecmp(name, hostport) == 0) return (int)e;
        /* "registry.example.com" names the entry on the scheme's default port. */
        if (u->port == (u->tls ? 443 : 80) && strcasecmp(name, u->host) == 0) return (int)e;
    }
    return -1;
}

void proxy_set_policy(struct proxy *p, struct policy_engine *pe)
{
    p->policy = pe;
}

struct upstream_pool *proxy_pool(const struct proxy *p)
{
    return p->pool;
}

void proxy_set_blob_service(struct proxy *p, struct blob_service *bs)
{
    p->blobs = bs;
}
