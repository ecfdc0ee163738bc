/*
 * relay.c: the relay of what the cache does not keep. See relay.h.
 */
#include "registry/relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/bytes.h"
#include "base/log.h"
#include "base/url.h"
#include "net/chain.h"
#include "registry/respond.h"

#define RELAY_MAX_FORWARDED 24

struct relay_service {
    struct upstreams *upstreams;
    unsigned in_flight;
    bool rewrite_location; /* Location headers naming the upstream name us instead */
    char public_scheme[8]; /* "http" or "https": how clients reach us */
    char *public_origin;   /* "scheme://host[:port]", or NULL: from the client's Host */
};

struct relay_service *relay_service_new(struct upstreams *upstreams)
{
    struct relay_service *rs = calloc(1, sizeof(*rs));
    if (rs != NULL) rs->upstreams = upstreams;
    return rs;
}

void relay_service_free(struct relay_service *rs)
{
    if (rs != NULL) free(rs->public_origin);
    free(rs);
}

int relay_service_rewrite_location(struct relay_service *rs, bool https, const char *public_origin)
{
    char *copy = NULL;
    if (public_origin != NULL && public_origin[0] != '\0') {
        size_t n = strlen(public_origin);
        while (n > 0 && public_origin[n - 1] == '/')
            n--;
        if ((copy = strndup(public_origin, n)) == NULL) return -ENOMEM;
    }
    free(rs->public_origin);
    rs->public_origin = copy;
    rs->rewrite_location = true;
    snprintf(rs->public_scheme, sizeof(rs->public_scheme), "%s", https ? "https" : "http");
    return 0;
}

unsigned relay_in_flight(const struct relay_service *rs)
{
    return rs->in_flight;
}

/* One relayed exchange. */
struct relay {
    struct relay_service *rs;
    struct http_exchange *x;
    struct upstreams_req_info info;
    struct chain_req *ureq;
    bool head_sent;
    bool upstream_done;
    int upstream_err;
    bool finished;
    uint64_t limit;             /* body bytes relayed at most (manifests), 0: none */
    relay_fallback_fn fallback; /* every upstream failed before a head: may take over */
    void *fallback_ud;
    uint64_t relayed;
    /* The client's request body (a push), streamed to the upstream one piece at a time. */
    bool has_body;
    bool body_started;
    char *location;      /* a rewritten Location, while the head is being sent */
    bool as_other;       /* relay_handle_as: not the client's credentials, but: */
    char *authorization; /* ...these (NULL: none) */
    char *target;        /* relay_handle_as's target, or NULL: the client's */
    /* Body bytes: `inflight` is being written to the client, `pending` waits. */
    char *inflight;
    size_t inflight_cap;
    char *pending;
    size_t pending_len, pending_cap;
    bool writing;
    char last_error[256];
};

static void relay_free(struct relay *r)
{
    r->rs->in_flight--;
    free(r->inflight);
    free(r->pending);
    free(r->location);
    free(r->authorization);
    free(r->target);
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
    } else if (!r->head_sent && r->fallback != NULL && r->upstream_err != UV_E2BIG &&
               r->upstream_err != UV_ECANCELED) {
        /* Every upstream failed: the fallback answers the exchange (and ends it). */
        char msg[400];
        snprintf(msg, sizeof(msg), "upstream failed: %s", r->last_error);
        http_exchange_on_gone(r->x, NULL, NULL); /* the fallback's now, with the exchange */
        r->fallback(r->fallback_ud, r->x, &r->info.req, r->info.entry, r->upstream_err, msg);
    } else if (!r->head_sent) {
        int err = r->upstream_err;
        int code = (err == UV_ECONNREFUSED || err == UV_EHOSTUNREACH || err == UV_ENETUNREACH ||
                    err == UV_EAI_NONAME || err == UV_EAI_AGAIN || err == UV_ECONNRESET)
                       ? REG_ERR_UNAVAILABLE
                       : REG_ERR_UPSTREAM_FAILED;
        char msg[400];
        snprintf(msg, sizeof(msg), "upstream failed: %s", r->last_error);
        log_msg(LOG_WARN, "%s %s: %s", http_req_method(r->x), http_log_uri(r->x), msg);
        respond_error(r->x, code, msg, NULL);
    } else {
        /* The body broke off after the head went out: close, so the client can tell. */
        char msg[400];
        snprintf(msg, sizeof(msg), "upstream body broke off: %s", r->last_error);
        log_msg(LOG_WARN, "%s %s: %s", http_req_method(r->x), http_log_uri(r->x), msg);
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
    /* The push API's: where an upload goes on (rewritten), what it holds. */
    "Location",
    "Range",
    "Docker-Upload-UUID",
    "OCI-Chunk-Min-Length",
    "OCI-Subject",
};

/*
 * A Location that names the upstream that answered (scheme, host and port, as a URL
 * compares) is rewritten to name us, as the client reached us: Docker Distribution
 * writes absolute URLs from the Host it was sent, which is the upstream's. Returns a new
 * string, or NULL when the Location names another place (a relative one, a storage
 * backend's) or we are not set to rewrite.
 */
static char *rewritten_location(const struct relay *r, const struct http_header *loc)
{
    const struct relay_service *rs = r->rs;
    if (!rs->rewrite_location || r->ureq == NULL) return NULL;
    const char *v = loc->value;
    size_t n = loc->value_len;
    const char *sep = memmem(v, n, "://", 3);
    if (sep == NULL) return NULL;
    size_t origin_len = (size_t)(sep + 3 - v);
    while (origin_len < n && v[origin_len] != '/' && v[origin_len] != '?' && v[origin_len] != '#')
        origin_len++;
    char origin[300];
    struct url theirs, ours;
    const char *why;
    if (origin_len >= sizeof(origin)) return NULL;
    memcpy(origin, v, origin_len);
    origin[origin_len] = '\0';
    if (url_parse(origin, &theirs, &why) != 0 || url_parse(chain_base(r->ureq), &ours, &why) != 0)
        return NULL;
    if (theirs.tls != ours.tls || theirs.port != ours.port ||
        strcasecmp(theirs.host, ours.host) != 0)
        return NULL;
    char public_origin[600];
    if (rs->public_origin != NULL) {
        snprintf(public_origin, sizeof(public_origin), "%s", rs->public_origin);
    } else {
        const struct http_header *host = http_req_header(r->x, "Host");
        if (host == NULL || host->value_len == 0 || host->value_len > 255 ||
            memchr(host->value, '/', host->value_len) != NULL)
            return NULL;
        snprintf(public_origin, sizeof(public_origin), "%s://%.*s", rs->public_scheme,
                 (int)host->value_len, host->value);
    }
    size_t rest = n - origin_len;
    size_t pl = strlen(public_origin);
    char *out = malloc(pl + rest + 1);
    if (out == NULL) return NULL;
    memcpy(out, public_origin, pl);
    memcpy(out + pl, v + origin_len, rest);
    out[pl + rest] = '\0';
    return out;
}

bool relay_response_header(const struct http_header *h)
{
    for (size_t k = 0; k < sizeof(relayed_response_headers) / sizeof(*relayed_response_headers);
         k++)
        if (http_header_is(h, relayed_response_headers[k])) return true;
    return false;
}

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
        if (!relay_response_header(&hdrs[i])) continue;
        out[n] = hdrs[i];
        if (http_header_is(&hdrs[i], "Location") && r->location == NULL &&
            (r->location = rewritten_location(r, &hdrs[i])) != NULL) {
            out[n].value = r->location;
            out[n].value_len = strlen(r->location);
        }
        n++;
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
    if (r->body_started && !http_exchange_client_gone(r->x))
        http_req_body_pause(r->x); /* the answer is in: the rest of the body is not read */
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

/* --- The client's body, to the upstream -------------------------------------------- */

/* A piece is written upstream: the client's next one may come. */
static void relay_body_written(void *arg, int status)
{
    struct relay *r = arg;
    if (!r->upstream_done) http_req_body_resume(r->x);
}

/* A piece of the client's body: to the upstream, and no more until it is written. */
static void relay_body_data(struct http_exchange *x, const char *data, size_t len, void *arg)
{
    struct relay *r = arg;
    http_req_body_pause(x);
    if (r->upstream_done || r->ureq == NULL) return;
    /* A refusal: the upstream wants no more of it, and its answer is on its way. */
    chain_send_body(r->ureq, data, len, relay_body_written, r);
}

static void relay_body_end(struct http_exchange *x, void *arg)
{
    struct relay *r = arg;
    if (!r->upstream_done && r->ureq != NULL) chain_end_body(r->ureq);
}

static void relay_start_body(struct relay *r)
{
    static const struct http_body_callbacks cbs = {relay_body_data, relay_body_end};
    if (http_req_body_start(r->x, &cbs, r) == 0) r->body_started = true;
}

static void relay_start(struct relay *r)
{
    struct http_exchange *x = r->x;
    struct upstream_header fwd[RELAY_MAX_FORWARDED];
    char scratch[16384 + RELAY_MAX_FORWARDED * 2];
    bool read_only = http_req_is_get(x) || http_req_is_head(x);
    size_t nf =
        upstreams_forward_headers(x, true, fwd, RELAY_MAX_FORWARDED, scratch, sizeof(scratch));
    if (r->as_other) {
        /* The client's credentials stay here; these go instead. */
        size_t k = 0;
        for (size_t i = 0; i < nf; i++)
            if (strcmp(fwd[i].name, "Authorization") != 0) fwd[k++] = fwd[i];
        nf = k;
        if (r->authorization != NULL && nf < RELAY_MAX_FORWARDED)
            fwd[nf++] = (struct upstream_header){"Authorization", r->authorization, true};
    }
    if (!read_only) {
        size_t used = 0;
        for (size_t i = 0; i < nf; i++)
            used += strlen(fwd[i].value) + 1;
        nf += upstreams_forward_content_headers(x, fwd + nf, RELAY_MAX_FORWARDED - nf,
                                                scratch + used, sizeof(scratch) - used);
    }
    size_t n_bases;
    struct chain_spec spec = {
        .method = http_req_method(x),
        .bases = upstreams_select(r->rs->upstreams, &r->info.req, r->info.entry, &n_bases),
        .n_bases = n_bases,
        .target = r->target ? r->target : http_req_target(x),
        .headers = fwd,
        .n_headers = nf,
        .max_redirects = read_only ? 5 : 0,
        .has_body = r->has_body,
        .body_length = r->has_body ? http_req_body_length(x) : 0,
    };
    static const struct upstream_callbacks cbs = {
        .on_head = relay_on_head,
        .on_body = relay_on_body,
        .on_done = relay_on_done,
    };
    int rc = chain_request(upstreams_pool(r->rs->upstreams), &spec, &cbs, r, &r->ureq);
    if (rc < 0) {
        snprintf(r->last_error, sizeof(r->last_error), "%s: %s",
                 n_bases > 0 ? spec.bases[0] : "upstream",
                 rc == UV_ENOTSUP ? "https upstreams are not supported by this build yet"
                                  : uv_strerror(rc));
        r->ureq = NULL;
        r->upstream_done = true;
        r->upstream_err = rc;
        relay_maybe_finish(r);
        return;
    }
    if (r->has_body) relay_start_body(r);
}

static void relay_handle_with(struct relay_service *rs, struct http_exchange *x,
                              const struct registry_route *route, size_t entry, bool as_other,
                              const char *authorization, const char *target,
                              relay_fallback_fn fallback, void *fallback_ud);

void relay_handle(struct relay_service *rs, struct http_exchange *x,
                  const struct registry_route *route, size_t entry)
{
    relay_handle_with(rs, x, route, entry, false, NULL, NULL, NULL, NULL);
}

void relay_handle_as(struct relay_service *rs, struct http_exchange *x,
                     const struct registry_route *route, size_t entry, const char *authorization,
                     const char *target)
{
    relay_handle_with(rs, x, route, entry, true, authorization, target, NULL, NULL);
}

void relay_handle_or(struct relay_service *rs, struct http_exchange *x,
                     const struct registry_route *route, size_t entry, relay_fallback_fn fallback,
                     void *fallback_ud)
{
    relay_handle_with(rs, x, route, entry, false, NULL, NULL, fallback, fallback_ud);
}

static void relay_handle_with(struct relay_service *rs, struct http_exchange *x,
                              const struct registry_route *route, size_t entry, bool as_other,
                              const char *authorization, const char *target,
                              relay_fallback_fn fallback, void *fallback_ud)
{
    if (upstreams_count(rs->upstreams) == 0) {
        respond_error(x, REG_ERR_UNAVAILABLE, "no upstream configured", NULL);
        return;
    }
    struct relay *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        respond_error(x, REG_ERR_INTERNAL, "out of memory", NULL);
        return;
    }
    r->rs = rs;
    r->x = x;
    r->as_other = as_other;
    if ((authorization != NULL && (r->authorization = strdup(authorization)) == NULL) ||
        (target != NULL && (r->target = strdup(target)) == NULL)) {
        free(r->authorization);
        free(r);
        respond_error(x, REG_ERR_INTERNAL, "out of memory", NULL);
        return;
    }
    upstreams_req_info_init(&r->info, x, route, entry);
    /* Manifests are small (Docker Distribution refuses more than 4 MiB): an upstream that
     * sends more is broken, and a relay must not stream it without end. */
    if ((route->kind == ROUTE_MANIFEST || route->kind == ROUTE_REFERRERS) &&
        (http_req_is_get(x) || http_req_is_head(x)))
        r->limit = RELAY_MANIFEST_MAX;
    r->has_body = http_req_has_body(x);
    r->fallback = fallback;
    r->fallback_ud = fallback_ud;
    rs->in_flight++;
    http_exchange_on_gone(x, relay_client_gone, r);
    relay_start(r);
}
