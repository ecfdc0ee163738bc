/*
 * realm.c: a token from a realm. See realm.h.
 */
#include "access/realm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/bytes.h"
#include "base/json.h"

struct realm_req {
    struct upstream_req *up;
    realm_cb cb;
    void *arg;
    int status;
    char *body;
    size_t len, cap;
    bool too_big;
};

/* Appends s percent-encoded (RFC 3986 unreserved kept) to out; false when it is full. */
static bool append_encoded(char *out, size_t cap, size_t *pos, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~';
        if (*pos + (plain ? 1 : 3) >= cap) return false;
        if (plain) {
            out[(*pos)++] = (char)c;
        } else {
            out[(*pos)++] = '%';
            out[(*pos)++] = hex[c >> 4];
            out[(*pos)++] = hex[c & 15];
        }
    }
    out[*pos] = '\0';
    return true;
}

static void realm_free(struct realm_req *r)
{
    free(r->body);
    free(r);
}

static void on_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                    int64_t content_length)
{
    struct realm_req *r = ud;
    r->status = status;
}

static void on_body(void *ud, const char *data, size_t len)
{
    struct realm_req *r = ud;
    if (r->len + len > REALM_MAX_BODY) {
        r->too_big = true;
        return;
    }
    if (bytes_append(&r->body, &r->len, &r->cap, data, len, 1024) != 0) r->too_big = true;
}

/* The token of a 200's body into *token (malloc'd), and its lifetime. */
static int read_token(const struct realm_req *r, char **token, int64_t *expires_in)
{
    size_t cap = json_tokens_for(r->len);
    struct json_token *toks = calloc(cap, sizeof(*toks));
    struct json_doc doc;
    size_t at;
    int rc = toks != NULL ? 0 : -ENOMEM;
    if (rc == 0 &&
        (json_parse(r->body, r->len, toks, cap, &doc) != 0 || json_type_of(&doc, 0) != JSON_OBJECT))
        rc = UV_EPROTO;
    if (rc == 0 && json_object_get(&doc, 0, "token", &at) != 0 &&
        json_object_get(&doc, 0, "access_token", &at) != 0)
        rc = UV_EPROTO;
    if (rc == 0) {
        size_t n = 0;
        char *t = malloc(r->len + 1);
        if (t == NULL || json_string_decode(&doc, at, t, r->len + 1, &n) != 0 || n == 0 ||
            strlen(t) != n) {
            free(t);
            rc = t == NULL ? -ENOMEM : UV_EPROTO;
        } else {
            *token = t;
        }
    }
    *expires_in = REALM_DEFAULT_EXPIRES_S;
    if (rc == 0 && json_object_get(&doc, 0, "expires_in", &at) == 0 &&
        (json_number_int64(&doc, at, expires_in) != 0 || *expires_in <= 0))
        *expires_in = REALM_DEFAULT_EXPIRES_S;
    free(toks);
    return rc;
}

static void on_done(void *ud, int err)
{
    struct realm_req *r = ud;
    struct realm_answer a = {.status = r->status};
    char *token = NULL;
    if (err == 0 && r->status == 200) {
        if (r->too_big || r->body == NULL)
            err = UV_EPROTO;
        else
            err = read_token(r, &token, &a.expires_in);
        a.token = token;
    }
    r->cb(r->arg, err, err == 0 ? &a : NULL);
    free(token);
    realm_free(r);
}

int realm_request(struct upstream_pool *pool, const struct auth_challenge_params *ch,
                  const char *scope, const char *authorization, realm_cb cb, void *arg,
                  struct realm_req **out)
{
    if (strncasecmp(ch->realm, "http://", 7) != 0 && strncasecmp(ch->realm, "https://", 8) != 0)
        return UV_EINVAL;
    char url[2048];
    size_t pos = (size_t)snprintf(url, sizeof(url), "%s%sservice=", ch->realm,
                                  strchr(ch->realm, '?') ? "&" : "?");
    if (pos >= sizeof(url) || !append_encoded(url, sizeof(url), &pos, ch->service))
        return UV_EINVAL;
    if (scope == NULL) scope = "";
    if (scope[0] != '\0') {
        if (pos + 7 >= sizeof(url)) return UV_EINVAL;
        memcpy(url + pos, "&scope=", 7);
        pos += 7;
        if (!append_encoded(url, sizeof(url), &pos, scope)) return UV_EINVAL;
    }
    struct realm_req *r = calloc(1, sizeof(*r));
    if (r == NULL) return UV_ENOMEM;
    r->cb = cb;
    r->arg = arg;
    struct upstream_header h = {"Authorization", authorization ? authorization : "", true};
    struct upstream_request_spec spec = {.method = "GET",
                                         .url = url,
                                         .headers = &h,
                                         .n_headers = authorization ? 1 : 0,
                                         .max_redirects = 3};
    static const struct upstream_callbacks cbs = {on_head, on_body, on_done};
    int rc = upstream_request(pool, &spec, &cbs, r, &r->up);
    if (rc != 0) {
        realm_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void realm_cancel(struct realm_req *r)
{
    if (r == NULL) return;
    upstream_cancel(r->up);
    realm_free(r);
}
