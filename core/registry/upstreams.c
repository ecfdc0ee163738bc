/*
 * upstreams.c: the configured upstreams as base URLs, and the choice among them. See
 * upstreams.h.
 */
#include "registry/upstreams.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "net/chain.h"
#include "registry/registry.h"

#define UPSTREAMS_MAX_CANDIDATES 16
#define UPSTREAMS_FRESH_MS 60000u /* an answer this recent makes the upstreams healthy */

struct upstreams {
    const struct config *cfg;
    struct upstream_pool *pool;
    /* Per upstreams entry: base URLs ("scheme://host:port/prefix"), the upstreamhosts in
     * config order, then the origin. */
    struct upstreams_entry {
        char *bases[UPSTREAMS_MAX_CANDIDATES];
        size_t n_bases;
        size_t n_hosts; /* how many of bases are upstreamhosts */
    } * entries;
    size_t n_entries;
    const char *order[UPSTREAMS_MAX_CANDIDATES]; /* what upstreams_select returns */
    struct policy_engine *policy;                /* select_upstream, when set */
    struct probe *probes;                        /* health probes in flight */
    bool probes_stopped;                         /* upstreams_stop_probes was called */
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

struct upstreams *upstreams_new(const struct config *cfg, struct upstream_pool *pool)
{
    struct upstreams *u = calloc(1, sizeof(*u));
    if (u == NULL) return NULL;
    u->cfg = cfg;
    u->pool = pool;
    u->entries = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof(*u->entries));
    if (u->entries == NULL) {
        free(u);
        return NULL;
    }
    u->n_entries = cfg->n_upstreams;
    bool ok = true;
    for (size_t e = 0; e < cfg->n_upstreams; e++) {
        const struct config_upstream *up = &cfg->upstreams[e];
        struct upstreams_entry *ue = &u->entries[e];
        for (size_t i = 0; i < up->n_upstreamhosts && ue->n_bases < UPSTREAMS_MAX_CANDIDATES - 1;
             i++)
            ue->bases[ue->n_bases++] = join_base(&up->upstream_urls[i]);
        ue->n_hosts = ue->n_bases;
        ue->bases[ue->n_bases++] = join_base(&up->origin);
        for (size_t i = 0; i < ue->n_bases; i++)
            ok = ok && ue->bases[i] != NULL;
    }
    if (!ok) {
        upstreams_free(u);
        return NULL;
    }
    return u;
}

void upstreams_free(struct upstreams *u)
{
    if (u == NULL) return;
    for (size_t e = 0; e < u->n_entries; e++)
        for (size_t i = 0; i < u->entries[e].n_bases; i++)
            free(u->entries[e].bases[i]);
    free(u->entries);
    free(u);
}

void upstreams_set_policy(struct upstreams *u, struct policy_engine *pe)
{
    u->policy = pe;
}

struct upstream_pool *upstreams_pool(const struct upstreams *u)
{
    return u->pool;
}

size_t upstreams_count(const struct upstreams *u)
{
    return u->n_entries;
}

/* --- Which entry ---------------------------------------------------------------------- */

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

int upstreams_entry_for(const struct upstreams *u, const struct http_exchange *x, char *ns,
                        size_t ns_len)
{
    size_t qlen;
    const char *q = http_req_query(x, &qlen);
    ns[0] = '\0';
    while (q != NULL && qlen > 0) {
        const char *amp = memchr(q, '&', qlen);
        size_t plen = amp ? (size_t)(amp - q) : qlen;
        if (plen > 3 && memcmp(q, "ns=", 3) == 0) {
            if (!percent_decode(q + 3, plen - 3, ns, ns_len)) {
                ns[0] = '\0'; /* (it may hold part of it, unterminated) */
                return -1;
            }
            break;
        }
        if (amp == NULL) break;
        qlen -= plen + 1;
        q = amp + 1;
    }
    if (ns[0] == '\0') return 0; /* no namespace: the first entry serves */
    return upstreams_entry_for_registry(u, ns);
}

int upstreams_entry_for_registry(const struct upstreams *u, const char *registry)
{
    /* Docker Hub's names: containerd says docker.io, the registry is registry-1. */
    const char *name = registry;
    if (strcasecmp(registry, "docker.io") == 0 || strcasecmp(registry, "index.docker.io") == 0)
        name = "registry-1.docker.io";
    for (size_t e = 0; e < u->n_entries; e++) {
        const struct url *o = &u->cfg->upstreams[e].origin;
        char hostport[300];
        snprintf(hostport, sizeof(hostport), strchr(o->host, ':') ? "[%s]:%u" : "%s:%u", o->host,
                 (unsigned)o->port);
        if (strcasecmp(name, hostport) == 0) return (int)e;
        /* "registry.example.com" names the entry on the scheme's default port. */
        if (o->port == (o->tls ? 443 : 80) && strcasecmp(name, o->host) == 0) return (int)e;
    }
    return -1;
}

/* --- Which upstreams, in which order ------------------------------------------------- */

/* The base (as joined at start) of a URL as the config writes it, or NULL. */
static const char *base_of_config_url(const struct upstreams *u, size_t entry, const char *url)
{
    const struct config_upstream *up = &u->cfg->upstreams[entry];
    const struct upstreams_entry *ue = &u->entries[entry];
    if (strcmp(url, up->originhost) == 0) return ue->bases[ue->n_bases - 1];
    for (size_t i = 0; i < up->n_upstreamhosts && i < ue->n_hosts; i++)
        if (strcmp(url, up->upstreamhosts[i]) == 0) return ue->bases[i];
    return NULL;
}

const char *const *upstreams_select(struct upstreams *u, const struct policy_request *req,
                                    size_t entry, size_t *n)
{
    if (entry >= u->n_entries) entry = 0;
    struct upstreams_entry *ue = &u->entries[entry];
    /* The select_upstream policy decides: policies/upstream.lua's round robin, or a
     * drop-in's order. */
    if (u->policy != NULL) {
        char **urls = NULL;
        size_t n_urls = 0, k = 0;
        if (policy_select_upstream(u->policy, req, entry, &urls, &n_urls) == 0) {
            for (size_t i = 0; i < n_urls && k < UPSTREAMS_MAX_CANDIDATES; i++) {
                const char *b = base_of_config_url(u, entry, urls[i]);
                if (b != NULL) u->order[k++] = b;
            }
            policy_free_list(urls, n_urls);
            if (k > 0) {
                *n = k;
                return u->order;
            }
        }
    }
    /* No policy, or it failed (logged and counted by the engine): the config's order, the
     * upstreamhosts as written and then the origin. A last resort, not a second policy:
     * no rotation. */
    for (size_t i = 0; i < ue->n_bases; i++)
        u->order[i] = ue->bases[i];
    *n = ue->n_bases;
    return u->order;
}

/* --- What goes with a request --------------------------------------------------------- */

static const char *const forwarded_request_headers[] = {
    "Accept", "Range", "If-None-Match", "If-Modified-Since", "If-Range",
};

size_t upstreams_forward_headers(const struct http_exchange *x, bool with_conditionals,
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

size_t upstreams_forward_content_headers(const struct http_exchange *x, struct upstream_header *out,
                                         size_t max, char *scratch, size_t scratch_len)
{
    static const char *const names[] = {"Content-Type", "Content-Range", "Content-Encoding"};
    size_t nf = 0, sp = 0;
    for (size_t k = 0; k < sizeof(names) / sizeof(*names) && nf < max; k++) {
        const struct http_header *h = http_req_header(x, names[k]);
        if (h == NULL || sp + h->value_len + 1 > scratch_len) continue;
        memcpy(scratch + sp, h->value, h->value_len);
        scratch[sp + h->value_len] = '\0';
        out[nf++] = (struct upstream_header){names[k], scratch + sp, false};
        sp += h->value_len + 1;
    }
    return nf;
}

void upstreams_req_info_init(struct upstreams_req_info *ri, const struct http_exchange *x,
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

/* --- Health --------------------------------------------------------------------------- */

/* A probe of /v2/ in flight, in its upstreams' list until it answers or is stopped. */
struct probe {
    health_done_fn done;
    void *arg;
    struct chain_req *req;
    int status;
    struct upstreams *u;
    struct probe *prev, *next;
};

static void probe_unlink(struct probe *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        p->u->probes = p->next;
    if (p->next != NULL) p->next->prev = p->prev;
}

static void probe_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                       int64_t content_length)
{
    struct probe *p = ud;
    p->status = status;
}

static void probe_body(void *ud, const char *data, size_t len) {}

static void probe_done(void *ud, int err)
{
    struct probe *p = ud;
    char detail[400];
    bool ok = p->status != 0 && p->status < 500;
    if (ok)
        snprintf(detail, sizeof(detail), "answered %llums ago",
                 (unsigned long long)(uv_hrtime() / 1000000u - chain_last_answer_ms()));
    else
        snprintf(detail, sizeof(detail), "no upstream answered: %s",
                 p->status ? "5xx" : chain_error_message(p->req));
    health_done_fn done = p->done;
    void *arg = p->arg;
    probe_unlink(p);
    free(p);
    done(arg, ok, detail);
}

void upstreams_stop_probes(struct upstreams *u)
{
    if (u == NULL) return;
    u->probes_stopped = true;
    while (u->probes != NULL) {
        struct probe *p = u->probes;
        probe_unlink(p);
        chain_cancel(p->req);
        health_done_fn done = p->done;
        void *arg = p->arg;
        free(p);
        done(arg, false, "no upstream answered: the cache is stopping");
    }
}

void upstreams_health_check(void *upstreams, uv_loop_t *loop, health_done_fn done, void *arg)
{
    struct upstreams *u = upstreams;
    if (u->probes_stopped) {
        done(arg, false, "no upstream answered: the cache is stopping");
        return;
    }
    char detail[100];
    uint64_t last = chain_last_answer_ms();
    uint64_t now = uv_hrtime() / 1000000u;
    if (last != 0 && now - last < UPSTREAMS_FRESH_MS) {
        snprintf(detail, sizeof(detail), "answered %llums ago", (unsigned long long)(now - last));
        done(arg, true, detail);
        return;
    }
    struct probe *p = calloc(1, sizeof(*p));
    if (u->n_entries > 0 && p != NULL) {
        p->done = done;
        p->arg = arg;
        p->u = u;
        struct policy_request req = {.method = "GET", .kind = "base"};
        size_t n;
        const char *const *bases = upstreams_select(u, &req, 0, &n);
        struct chain_spec spec = {.method = "GET", .bases = bases, .n_bases = n, .target = "/v2/"};
        static const struct upstream_callbacks cbs = {probe_head, probe_body, probe_done};
        if (chain_request(u->pool, &spec, &cbs, p, &p->req) == 0) {
            p->next = u->probes;
            if (p->next != NULL) p->next->prev = p;
            u->probes = p;
            return;
        }
    }
    free(p);
    done(arg, false, "no upstream answered: cannot ask the upstream");
}

bool upstreams_images_one_entry(const struct upstreams *u, const char *const *images, size_t n,
                                size_t *other)
{
    int first = -2;
    for (size_t i = 0; i < n; i++) {
        struct registry_image_ref r;
        char ignored[300];
        if (registry_image_ref_parse(images[i], &r, ignored, sizeof(ignored)) != 0) continue;
        int e = r.registry[0] ? upstreams_entry_for_registry(u, r.registry) : 0;
        if (e < 0) continue;
        if (first == -2) first = e;
        if (e != first) {
            *other = i;
            return false;
        }
    }
    return true;
}
