/*
 * caches_api.c: the caches API. See caches_api.h.
 *
 * A request goes: route (404 / 405 before anything else) -> who is it (identity.h) ->
 * may it (403) -> its body, for POST and PUT (read whole, at most CACHES_API_MAX_BODY)
 * -> the state (a write is answered once committed). A client that goes away at any
 * step ends the exchange; a write already queued still completes and is then dropped.
 */
#include "front/caches_api.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bytes.h"
#include "base/json.h"
#include "base/log.h"
#include "base/url.h"

#define BASIC_CHALLENGE "Basic realm=\"content-cache front\""
#define RESPONSE_MAX (256 * 1024)

struct caches_api {
    const struct config *cfg;
    struct front_state *st;
    struct identity *id;
    unsigned in_flight;
};

enum api_route {
    API_CACHES,    /* /api/v0/content_caches */
    API_CACHE,     /* /api/v0/content_caches/{id} */
    API_SETTINGS,  /* /api/v0/accounts/{user}/settings */
    API_ACCOUNT,   /* /api/v0/accounts/{user} */
    API_NOT_FOUND, /* anything else */
};

struct api_req {
    struct caches_api *api;
    struct http_exchange *x;
    enum api_route route;
    int64_t cache_id;                 /* API_CACHE */
    char account[FRONT_USER_MAX + 1]; /* API_SETTINGS */
    struct identity_job *job;
    struct identity_verdict who;
    char *body;
    size_t body_len, body_cap;
    bool too_big;
    bool writing; /* a state write is queued: its callback ends the request */
    bool gone;
};

struct caches_api *caches_api_new(const struct config *cfg, struct front_state *st,
                                  struct identity *id)
{
    struct caches_api *api = calloc(1, sizeof(*api));
    if (api == NULL) return NULL;
    api->cfg = cfg;
    api->st = st;
    api->id = id;
    return api;
}

void caches_api_free(struct caches_api *api)
{
    free(api);
}

unsigned caches_api_in_flight(const struct caches_api *api)
{
    return api->in_flight;
}

bool caches_api_path(const char *path, size_t len)
{
    size_t n = strlen(CACHES_API_PREFIX);
    return len >= n && memcmp(path, CACHES_API_PREFIX, n) == 0;
}

bool caches_api_is_admin(const struct caches_api *api, const char *user, size_t len)
{
    for (size_t i = 0; i < api->cfg->n_admins; i++)
        if (strlen(api->cfg->admins[i]) == len && memcmp(api->cfg->admins[i], user, len) == 0)
            return true;
    return false;
}

/* --- Answers ---------------------------------------------------------------------------- */

static void req_free(struct api_req *r)
{
    r->api->in_flight--;
    free(r->body);
    free(r);
}

static void answer_json(struct api_req *r, int status, const char *json, size_t len)
{
    struct http_header h = {"Content-Type", 12, "application/json", 16};
    if (http_respond_full(r->x, status, &h, 1, json, len) != 0) http_respond_abort(r->x);
}

/* {"errors":[{"code":..,"message":..,"detail":{"field":..}}]} with `status`. */
static void answer_error(struct api_req *r, int status, const char *code, const char *field,
                         const char *message)
{
    char buf[1024];
    struct textbuf t;
    textbuf_init(&t, buf, sizeof(buf));
    textbuf_puts(&t, "{\"errors\":[{\"code\":\"");
    textbuf_put_json(&t, code);
    textbuf_puts(&t, "\",\"message\":\"");
    textbuf_put_json(&t, message);
    textbuf_puts(&t, "\",\"detail\":");
    if (field != NULL) {
        textbuf_puts(&t, "{\"field\":\"");
        textbuf_put_json(&t, field);
        textbuf_puts(&t, "\"}");
    } else {
        textbuf_puts(&t, "null");
    }
    textbuf_puts(&t, "}]}\n");
    http_log_set_error(r->x, message);
    struct http_header h[2] = {
        {"Content-Type", 12, "application/json", 16},
        {"WWW-Authenticate", 16, BASIC_CHALLENGE, sizeof(BASIC_CHALLENGE) - 1}};
    /* The profile page signs in itself: a challenge would make its browser ask too. */
    bool challenge = status == 401 && http_req_header(r->x, CACHES_API_UI_HEADER) == NULL;
    if (http_respond_full(r->x, status, h, challenge ? 2 : 1, buf, t.len) != 0)
        http_respond_abort(r->x);
}

/* Ends the request with an error (or, for a client that went, quietly). */
static void fail(struct api_req *r, int status, const char *code, const char *field,
                 const char *message)
{
    if (r->gone)
        http_respond_end(r->x);
    else
        answer_error(r, status, code, field, message);
    req_free(r);
}

static void put_cache(struct textbuf *t, const struct front_cache *c)
{
    textbuf_printf(t, "{\"id\":\"%" PRId64 "\",\"name\":\"", c->id);
    textbuf_put_json(t, c->name);
    textbuf_puts(t, "\",\"host\":\"");
    textbuf_put_json(t, c->host);
    textbuf_puts(t, "\"}");
}

static void answer_cache(struct api_req *r, int status, const struct front_cache *c)
{
    char buf[2048];
    struct textbuf t;
    textbuf_init(&t, buf, sizeof(buf));
    put_cache(&t, c);
    textbuf_puts(&t, "\n");
    answer_json(r, status, buf, t.len);
}

static void answer_settings(struct api_req *r, const struct front_cache *c)
{
    char buf[512];
    struct textbuf t;
    textbuf_init(&t, buf, sizeof(buf));
    if (c == NULL) {
        textbuf_puts(&t, "{\"contentCache\":null}\n");
    } else {
        textbuf_puts(&t, "{\"contentCache\":\"");
        textbuf_put_json(&t, c->name);
        textbuf_puts(&t, "\"}\n");
    }
    answer_json(r, 200, buf, t.len);
}

/* The signed-in user's choice, as the state holds it now. */
static void answer_user_settings(struct api_req *r)
{
    struct front_cache c;
    bool chosen = front_state_user_cache(r->api->st, r->account, strlen(r->account), &c);
    answer_settings(r, chosen ? &c : NULL);
}

static void answer_account(struct api_req *r)
{
    char buf[800];
    struct textbuf t;
    textbuf_init(&t, buf, sizeof(buf));
    textbuf_puts(&t, "{\"name\":\"");
    textbuf_put_json(&t, r->account);
    textbuf_printf(&t, "\",\"isAdmin\":%s}\n",
                   caches_api_is_admin(r->api, r->account, strlen(r->account)) ? "true" : "false");
    answer_json(r, 200, buf, t.len);
}

static void answer_list(struct api_req *r)
{
    struct front_cache *list;
    long n = front_state_caches(r->api->st, &list);
    char *buf = n >= 0 ? malloc(RESPONSE_MAX) : NULL;
    if (buf == NULL) {
        free(list);
        answer_error(r, 500, "UNKNOWN", NULL, "out of memory");
        return;
    }
    struct textbuf t;
    textbuf_init(&t, buf, RESPONSE_MAX);
    textbuf_puts(&t, "[");
    for (long i = 0; i < n; i++) {
        if (i > 0) textbuf_puts(&t, ",");
        put_cache(&t, &list[i]);
    }
    free(list);
    textbuf_puts(&t, "]\n");
    if (t.cut)
        answer_error(r, 500, "UNKNOWN", NULL, "too many caches to list");
    else
        answer_json(r, 200, buf, t.len);
    free(buf);
}

/* --- Validation -------------------------------------------------------------------------- */

static bool name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > FRONT_CACHE_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
    }
    return true;
}

const char *caches_api_check(const char *name, const char *host, char *host_out, size_t host_cap,
                             char *why, size_t why_len)
{
    if (!name_valid(name)) {
        snprintf(why, why_len,
                 "name: expected 1 to %d letters, digits, '.', '_' or '-', starting with a "
                 "letter or a digit",
                 FRONT_CACHE_NAME_MAX);
        return "name";
    }
    struct url u;
    const char *reason = "not a URL";
    size_t n = strlen(host);
    while (n > 0 && host[n - 1] == '/')
        n--;
    if (n == 0 || n > FRONT_CACHE_HOST_MAX || n >= host_cap) {
        snprintf(why, why_len, "host: expected an http or https URL of at most %d bytes",
                 FRONT_CACHE_HOST_MAX);
        return "host";
    }
    memcpy(host_out, host, n);
    host_out[n] = '\0';
    if (url_parse(host_out, &u, &reason) != 0) {
        snprintf(why, why_len, "host: expected an absolute http or https URL: %s", reason);
        return "host";
    }
    return NULL;
}

/* --- The body ---------------------------------------------------------------------------- */

/* A JSON object body: parsed into doc (tokens malloc'd into *tokens), or answered 400. */
static bool parse_body(struct api_req *r, struct json_doc *doc, struct json_token **tokens)
{
    size_t cap = json_tokens_for(r->body_len);
    *tokens = calloc(cap, sizeof(**tokens));
    if (*tokens == NULL) {
        fail(r, 500, "UNKNOWN", NULL, "out of memory");
        return false;
    }
    if (r->body == NULL || json_parse(r->body, r->body_len, *tokens, cap, doc) != 0 ||
        json_type_of(doc, 0) != JSON_OBJECT) {
        free(*tokens);
        fail(r, 400, "INVALID_JSON", NULL, "the body is not a JSON object");
        return false;
    }
    return true;
}

/* A string member into buf, or false (missing, not a string, too long, holding NUL). */
static bool member_string(const struct json_doc *doc, const char *key, char *buf, size_t cap)
{
    size_t at, n = 0;
    return json_object_get(doc, 0, key, &at) == 0 && json_type_of(doc, at) == JSON_STRING &&
           json_string_decode(doc, at, buf, cap, &n) == 0 && strlen(buf) == n;
}

/* --- Acting ----------------------------------------------------------------------------- */

static void written(void *arg, int rc, const struct front_cache *c);

static void act_post(struct api_req *r)
{
    struct json_doc doc;
    struct json_token *tokens;
    if (!parse_body(r, &doc, &tokens)) return;
    char name[FRONT_CACHE_NAME_MAX + 2] = "", host[FRONT_CACHE_HOST_MAX + 2] = "";
    char norm[FRONT_CACHE_HOST_MAX + 1], why[200];
    const char *field = NULL;
    if (!member_string(&doc, "name", name, sizeof(name))) {
        field = "name";
        snprintf(why, sizeof(why), "name: expected a string");
    } else if (!member_string(&doc, "host", host, sizeof(host))) {
        field = "host";
        snprintf(why, sizeof(why), "host: expected a string");
    } else {
        field = caches_api_check(name, host, norm, sizeof(norm), why, sizeof(why));
    }
    free(tokens);
    if (field != NULL) {
        fail(r, 400, "INVALID_PARAMETER", field, why);
        return;
    }
    int rc = front_state_add_cache(r->api->st, name, norm, written, r);
    if (rc != 0) {
        fail(r, 500, "UNKNOWN", NULL, "cannot save the cache");
        return;
    }
    r->writing = true;
}

static void act_put_settings(struct api_req *r)
{
    struct json_doc doc;
    struct json_token *tokens;
    if (!parse_body(r, &doc, &tokens)) return;
    size_t at;
    int64_t cache_id = 0;
    char name[FRONT_CACHE_NAME_MAX + 2] = "";
    bool ok = json_object_get(&doc, 0, "contentCache", &at) == 0;
    if (ok && json_type_of(&doc, at) != JSON_NULL) {
        ok = member_string(&doc, "contentCache", name, sizeof(name));
        struct front_cache c;
        bool known = ok && front_state_cache_by_name(r->api->st, name, &c);
        if (ok && !known) {
            free(tokens);
            fail(r, 400, "INVALID_PARAMETER", "contentCache",
                 "contentCache: no cache of that name is registered");
            return;
        }
        if (known) cache_id = c.id;
    }
    free(tokens);
    if (!ok) {
        fail(r, 400, "INVALID_PARAMETER", "contentCache",
             "contentCache: expected the name of a registered cache, or null");
        return;
    }
    if (front_state_set_user_cache(r->api->st, r->account, cache_id, written, r) != 0) {
        fail(r, 500, "UNKNOWN", NULL, "cannot save the setting");
        return;
    }
    r->writing = true;
}

/* A state write is committed (or refused): the answer. */
static void written(void *arg, int rc, const struct front_cache *c)
{
    struct api_req *r = arg;
    bool post = r->route == API_CACHES, del = r->route == API_CACHE;
    if (rc == -EEXIST) {
        fail(r, 409, "ALREADY_EXISTS", "name", "name: a cache of that name is registered");
        return;
    }
    if (rc == -ENOENT) {
        if (del)
            fail(r, 404, "NOT_FOUND", NULL, "no cache with that id");
        else
            fail(r, 400, "INVALID_PARAMETER", "contentCache",
                 "contentCache: no cache of that name is registered");
        return;
    }
    if (rc != 0) {
        fail(r, 500, "UNKNOWN", NULL, "the change could not be saved");
        return;
    }
    if (r->gone) {
        http_respond_end(r->x);
    } else if (post && c != NULL) {
        char loc[64];
        snprintf(loc, sizeof(loc), "/api/v0/content_caches/%" PRId64, c->id);
        http_respond_add_header(r->x, "Location", loc);
        log_msg(LOG_INFO, "cache %s (%s) registered by %s", c->name, c->host, r->who.user);
        answer_cache(r, 201, c);
    } else if (del) {
        log_msg(LOG_INFO, "cache %" PRId64 " removed by %s", r->cache_id, r->who.user);
        if (http_respond_full(r->x, 204, NULL, 0, NULL, 0) != 0) http_respond_abort(r->x);
    } else {
        answer_user_settings(r);
    }
    req_free(r);
}

static void body_data(struct http_exchange *x, const char *data, size_t len, void *arg)
{
    struct api_req *r = arg;
    if (r->too_big) return;
    if (r->body_len + len > CACHES_API_MAX_BODY ||
        bytes_append(&r->body, &r->body_len, &r->body_cap, data, len, 1024) != 0) {
        r->too_big = true;
        http_req_body_pause(x);
        fail(r, 413, "TOO_LARGE", NULL, "the body is larger than 64 KiB");
    }
}

static void body_end(struct http_exchange *x, void *arg)
{
    struct api_req *r = arg;
    if (r->route == API_CACHES)
        act_post(r);
    else
        act_put_settings(r);
}

/* The client may: GET answers now, a body is read first, DELETE goes to the state. */
static void act(struct api_req *r)
{
    const char *method = http_req_method(r->x);
    if (strcmp(method, "GET") == 0) {
        if (r->route == API_CACHES) {
            answer_list(r);
        } else if (r->route == API_CACHE) {
            struct front_cache c;
            if (!front_state_cache_by_id(r->api->st, r->cache_id, &c)) {
                fail(r, 404, "NOT_FOUND", NULL, "no cache with that id");
                return;
            }
            answer_cache(r, 200, &c);
        } else if (r->route == API_ACCOUNT) {
            answer_account(r);
        } else {
            answer_user_settings(r);
        }
        req_free(r);
        return;
    }
    if (strcmp(method, "DELETE") == 0) {
        if (!front_state_cache_by_id(r->api->st, r->cache_id, NULL)) {
            fail(r, 404, "NOT_FOUND", NULL, "no cache with that id");
            return;
        }
        if (front_state_remove_cache(r->api->st, r->cache_id, written, r) != 0) {
            fail(r, 500, "UNKNOWN", NULL, "cannot remove the cache");
            return;
        }
        r->writing = true;
        return;
    }
    /* POST or PUT: the body first. */
    int64_t len = http_req_body_length(r->x);
    if (len > CACHES_API_MAX_BODY) {
        fail(r, 413, "TOO_LARGE", NULL, "the body is larger than 64 KiB");
        return;
    }
    if (!http_req_has_body(r->x)) {
        body_end(r->x, r);
        return;
    }
    static const struct http_body_callbacks cbs = {body_data, body_end};
    if (http_req_body_start(r->x, &cbs, r) != 0) fail(r, 500, "UNKNOWN", NULL, "cannot read");
}

/* Who the client is is known: may it do this? */
static void signed_in(struct api_req *r, const struct identity_verdict *v)
{
    r->who = *v;
    if (v->rc == -EIO) {
        log_msg(LOG_WARN, "%s %s: cannot sign in: %s", http_req_method(r->x), http_log_uri(r->x),
                v->why);
        fail(r, 503, "UNAVAILABLE", NULL, "the origin could not check the credentials");
        return;
    }
    if (v->rc != 0) {
        fail(r, 401, "UNAUTHORIZED", NULL,
             v->rc == -ENOENT ? "sign in with your registry credentials"
                              : "the registry refused the credentials");
        return;
    }
    bool admin = caches_api_is_admin(r->api, v->user, strlen(v->user));
    const char *method = http_req_method(r->x);
    bool writes_caches = r->route != API_SETTINGS && strcmp(method, "GET") != 0;
    if (writes_caches && !admin) {
        fail(r, 403, "DENIED", NULL, "only the registry's admins may register and remove caches");
        return;
    }
    if ((r->route == API_SETTINGS || r->route == API_ACCOUNT) && !admin &&
        strcmp(v->user, r->account) != 0) {
        fail(r, 403, "DENIED", NULL, "only the user or an admin may see or change these settings");
        return;
    }
    act(r);
}

static void identity_done(void *arg, const struct identity_verdict *v)
{
    struct api_req *r = arg;
    r->job = NULL;
    signed_in(r, v);
}

static void on_gone(struct http_exchange *x, void *arg)
{
    struct api_req *r = arg;
    r->gone = true;
    if (r->writing) return; /* the write's callback ends it */
    if (r->job != NULL) identity_job_cancel(r->job);
    http_respond_end(x);
    req_free(r);
}

/* --- Routing ---------------------------------------------------------------------------- */

/* Decodes %XX escapes of s[0..n) into out (cap bytes); false when it does not fit or is
 * malformed, or the result holds a NUL. */
static bool decode_segment(const char *s, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return false;
            char hex[3] = {s[i + 1], s[i + 2], 0};
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end != '\0' || v <= 0) return false;
            c = (char)v;
            i += 2;
        }
        if (k + 1 >= cap) return false;
        out[k++] = c;
    }
    out[k] = '\0';
    return k > 0;
}

static bool segment_is(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && memcmp(s, word, n) == 0;
}

/* The route of path[0..len), and its id or account; the methods it allows in *allow. */
static enum api_route route_of(struct api_req *r, const char *path, size_t len, const char **allow)
{
    const char *seg[5];
    size_t seg_len[5], n = 0;
    size_t i = strlen(CACHES_API_PREFIX);
    while (i < len && n < 5) {
        size_t start = i;
        while (i < len && path[i] != '/')
            i++;
        seg[n] = path + start;
        seg_len[n++] = i - start;
        if (i < len) i++;
    }
    if (i < len) return API_NOT_FOUND;
    if (n == 1 && segment_is(seg[0], seg_len[0], "content_caches")) {
        *allow = "GET, POST";
        return API_CACHES;
    }
    if (n == 2 && segment_is(seg[0], seg_len[0], "content_caches") && seg_len[1] > 0 &&
        seg_len[1] < 19) {
        char digits[20];
        memcpy(digits, seg[1], seg_len[1]);
        digits[seg_len[1]] = '\0';
        char *end;
        long long id = strtoll(digits, &end, 10);
        if (*end != '\0' || id <= 0 || digits[0] == '0') return API_NOT_FOUND;
        r->cache_id = id;
        *allow = "GET, DELETE";
        return API_CACHE;
    }
    if ((n == 2 || (n == 3 && segment_is(seg[2], seg_len[2], "settings"))) &&
        segment_is(seg[0], seg_len[0], "accounts") &&
        decode_segment(seg[1], seg_len[1], r->account, sizeof(r->account))) {
        for (const char *p = r->account; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == ':') return API_NOT_FOUND;
        *allow = n == 3 ? "GET, PUT" : "GET";
        return n == 3 ? API_SETTINGS : API_ACCOUNT;
    }
    return API_NOT_FOUND;
}

void caches_api_handle(struct caches_api *api, struct http_exchange *x)
{
    struct api_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        http_respond_full(x, 500, NULL, 0, NULL, 0);
        return;
    }
    r->api = api;
    r->x = x;
    api->in_flight++;
    size_t len;
    const char *path = http_req_path(x, &len);
    const char *allow = "";
    r->route = route_of(r, path, len, &allow);
    if (r->route == API_NOT_FOUND) {
        fail(r, 404, "NOT_FOUND", NULL, "no such API");
        return;
    }
    const char *method = http_req_method(x);
    size_t ml = strlen(method);
    bool allowed = false;
    for (const char *p = allow; *p;) {
        size_t n = strcspn(p, ",");
        if (n == ml && memcmp(p, method, n) == 0) allowed = true;
        p += n;
        while (*p == ',' || *p == ' ')
            p++;
    }
    if (!allowed) {
        http_respond_add_header(x, "Allow", allow);
        fail(r, 405, "UNSUPPORTED", NULL, "method not allowed here");
        return;
    }
    http_exchange_on_gone(x, on_gone, r);
    const struct http_header *authz = http_req_header(x, "Authorization");
    struct identity_verdict now;
    int rc = identity_check(api->id, authz ? authz->value : NULL, authz ? authz->value_len : 0,
                            &now, identity_done, r, &r->job);
    if (rc == IDENTITY_PENDING) return;
    if (rc < 0) {
        fail(r, 500, "UNKNOWN", NULL, "cannot check the credentials");
        return;
    }
    signed_in(r, &now);
}
