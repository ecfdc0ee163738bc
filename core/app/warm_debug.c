/*
 * warm_debug.c: POST /debug/warm and GET /debug/warm/{id}. See warm_debug.h.
 */
#include "app/warm_debug.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bytes.h"
#include "base/json.h"
#include "base/log.h"

#define STATUS_MAX (256 * 1024)

struct job {
    unsigned id; /* 0: the slot is free */
    struct warm *warm;
    char *authorization; /* the POST's, or NULL */
    bool done;
};

struct warm_debug {
    struct warm_env env;
    struct job jobs[WARM_DEBUG_KEPT];
    unsigned next_id;
    bool stopped;
};

/* A POST whose body is being read. */
struct post {
    struct warm_debug *wd;
    struct http_exchange *x;
    char *body;
    size_t len, cap;
    bool ended;
};

struct warm_debug *warm_debug_new(const struct warm_env *env)
{
    struct warm_debug *wd = calloc(1, sizeof(*wd));
    if (wd != NULL) wd->env = *env;
    return wd;
}

static void job_clear(struct job *j)
{
    warm_free(j->warm);
    free(j->authorization);
    memset(j, 0, sizeof(*j));
}

void warm_debug_free(struct warm_debug *wd)
{
    if (wd == NULL) return;
    for (size_t i = 0; i < WARM_DEBUG_KEPT; i++)
        job_clear(&wd->jobs[i]);
    free(wd);
}

void warm_debug_stop(struct warm_debug *wd)
{
    if (wd == NULL) return;
    wd->stopped = true;
    for (size_t i = 0; i < WARM_DEBUG_KEPT; i++)
        if (wd->jobs[i].warm != NULL && !wd->jobs[i].done) warm_cancel(wd->jobs[i].warm);
}

/* ---- answers ------------------------------------------------------------------------ */

static void answer(struct http_exchange *x, int status, const char *body, size_t len,
                   const char *location)
{
    struct http_header h[2] = {{"Content-Type", 12, "application/json", 16}};
    size_t n = 1;
    if (location != NULL) h[n++] = (struct http_header){"Location", 8, location, strlen(location)};
    if (http_respond_full(x, status, h, n, body, len) != 0) http_respond_abort(x);
}

static void answer_error(struct http_exchange *x, int status, const char *msg)
{
    char buf[1024];
    struct textbuf t;
    textbuf_init(&t, buf, sizeof(buf));
    textbuf_puts(&t, "{\"error\":\"");
    textbuf_put_json(&t, msg);
    textbuf_puts(&t, "\"}\n");
    answer(x, status, t.buf, t.len, NULL);
}

/* ---- jobs ----------------------------------------------------------------------------- */

static void job_done(void *ud, struct warm *w)
{
    struct job *j = ud;
    (void)w;
    j->done = true;
    free(j->authorization); /* needed no more */
    j->authorization = NULL;
}

static const char *job_authorization(void *ud, const char *registry)
{
    (void)registry; /* the caller's credential, for the registry it asked this cache of */
    return ((struct job *)ud)->authorization;
}

/* A free slot: an empty one, else the oldest finished job's (NULL when none). */
static struct job *job_slot(struct warm_debug *wd)
{
    struct job *oldest = NULL;
    for (size_t i = 0; i < WARM_DEBUG_KEPT; i++) {
        struct job *j = &wd->jobs[i];
        if (j->id == 0) return j;
        if (j->done && (oldest == NULL || j->id < oldest->id)) oldest = j;
    }
    if (oldest != NULL) job_clear(oldest);
    return oldest;
}

static unsigned jobs_running(const struct warm_debug *wd)
{
    unsigned n = 0;
    for (size_t i = 0; i < WARM_DEBUG_KEPT; i++)
        n += wd->jobs[i].id != 0 && !wd->jobs[i].done;
    return n;
}

/* Reads the strings of array `arr` into out (at most max); -EINVAL when one is not a
 * string or there are more. Strings are decoded into buf (of cap bytes, used so far *at). */
static int json_strings(const struct json_doc *doc, size_t arr, const char **out, size_t max,
                        size_t *n, char *buf, size_t cap, size_t *at)
{
    if (json_type_of(doc, arr) != JSON_ARRAY || json_count(doc, arr) > max) return -EINVAL;
    size_t i = arr + 1;
    *n = 0;
    for (size_t k = 0; k < json_count(doc, arr); k++) {
        size_t len;
        if (json_type_of(doc, i) != JSON_STRING ||
            json_string_decode(doc, i, buf + *at, cap - *at, &len) != 0 || len == 0 ||
            memchr(buf + *at, '\0', len) != NULL)
            return -EINVAL;
        out[(*n)++] = buf + *at;
        *at += len + 1;
        i = json_skip(doc, i);
    }
    return 0;
}

/* The body has come: a job starts, or the error is answered. */
static void start_job(struct post *p)
{
    struct warm_debug *wd = p->wd;
    struct http_exchange *x = p->x;
    char why[600];
    const char *images[WARM_MAX_IMAGES], *platforms[WARM_MAX_PLATFORMS];
    size_t n_images = 0, n_platforms = 0, at = 0, v;
    char *strings = malloc(p->len + 1);
    struct json_token *tok = malloc(json_tokens_for(p->len) * sizeof(*tok));
    struct json_doc doc;
    int64_t jobs = 0;
    const char *err = NULL;
    if (strings == NULL || tok == NULL) {
        err = "out of memory";
    } else if (json_parse(p->body, p->len, tok, json_tokens_for(p->len), &doc) != 0 ||
               json_type_of(&doc, 0) != JSON_OBJECT) {
        err = "the body is not a JSON object: {\"images\": [\"name:tag\", ...], "
              "\"platforms\": [\"linux/amd64\", ...]}";
    } else if (json_object_get(&doc, 0, "images", &v) != 0 ||
               json_strings(&doc, v, images, WARM_MAX_IMAGES, &n_images, strings, p->len + 1,
                            &at) != 0 ||
               n_images == 0) {
        err = "\"images\" must be a list of 1 to 64 image references (strings)";
    } else if (json_object_get(&doc, 0, "platforms", &v) == 0 &&
               json_strings(&doc, v, platforms, WARM_MAX_PLATFORMS, &n_platforms, strings,
                            p->len + 1, &at) != 0) {
        err = "\"platforms\" must be a list of at most 16 platforms (\"os/arch[/variant]\")";
    } else if (json_object_get(&doc, 0, "jobs", &v) == 0 &&
               (json_integer_int64(&doc, v, &jobs) != 0 || jobs < 1 || jobs > WARM_MAX_JOBS)) {
        err = "\"jobs\" must be a number from 1 to 64";
    }
    if (err != NULL) {
        answer_error(x, err[0] == 'o' ? 503 : 400, err);
        free(strings);
        free(tok);
        return;
    }
    const struct http_header *auth = http_req_header(x, "Authorization");
    size_t other = 0;
    if (auth != NULL && !upstreams_images_one_entry(wd->env.upstreams, images, n_images, &other)) {
        /* The caller's login is one registry's: it never goes to another. */
        snprintf(why, sizeof(why),
                 "the Authorization is one registry's login, and %s and %s are for two: "
                 "post each registry's images with its own",
                 images[0], images[other]);
        answer_error(x, 400, why);
        free(strings);
        free(tok);
        return;
    }
    struct job *j = wd->stopped ? NULL : job_slot(wd);
    if (j == NULL) {
        answer_error(x, 503, wd->stopped ? "the cache is stopping" : "no job slot free");
        free(strings);
        free(tok);
        return;
    }
    if (auth != NULL && (j->authorization = malloc(auth->value_len + 1)) != NULL) {
        memcpy(j->authorization, auth->value, auth->value_len);
        j->authorization[auth->value_len] = '\0';
    }
    struct warm_opts opts = {.jobs = (unsigned)jobs,
                             .platforms = platforms,
                             .n_platforms = n_platforms,
                             .authorization = job_authorization,
                             .on_done = job_done,
                             .ud = j};
    int rc = warm_start(&wd->env, &opts, images, n_images, &j->warm, why, sizeof(why));
    free(strings);
    free(tok);
    if (rc != 0) {
        job_clear(j);
        answer_error(x, rc == -EINVAL ? 400 : 503, rc == -EINVAL ? why : "out of memory");
        return;
    }
    j->id = ++wd->next_id;
    log_msg(LOG_INFO, "warm job %u: %zu image%s, asked by %s", j->id, n_images,
            n_images == 1 ? "" : "s", http_req_remote_addr(x));
    char body[128], location[64];
    snprintf(location, sizeof(location), "/debug/warm/%u", j->id);
    int len = snprintf(body, sizeof(body), "{\"id\":\"%u\",\"status\":\"%s\"}\n", j->id, location);
    answer(x, 202, body, (size_t)len, location);
}

static void post_data(struct http_exchange *x, const char *data, size_t len, void *arg)
{
    struct post *p = arg;
    if (p->len + len > WARM_DEBUG_BODY_MAX ||
        bytes_append(&p->body, &p->len, &p->cap, data, len, 4096) != 0) {
        /* The rest of the body is not read (the connection closes); no callback of
         * this exchange comes after its answer. */
        answer_error(x, 413, "the body is longer than 65536 bytes");
        free(p->body);
        free(p);
    }
}

static void post_end(struct http_exchange *x, void *arg)
{
    struct post *p = arg;
    (void)x;
    if (!p->ended) {
        p->ended = true;
        start_job(p);
    }
    free(p->body);
    free(p);
}

static void post_gone(struct http_exchange *x, void *arg)
{
    struct post *p = arg;
    if (!p->ended) {
        p->ended = true;
        http_respond_abort(x);
    }
    free(p->body);
    free(p);
}

static void handle_post(struct warm_debug *wd, struct http_exchange *x)
{
    if (wd->stopped) {
        answer_error(x, 503, "the cache is stopping");
        return;
    }
    if (jobs_running(wd) >= WARM_DEBUG_RUNNING) {
        answer_error(x, 429, "4 warms are running already: ask again when one has finished");
        return;
    }
    int64_t len = http_req_body_length(x);
    if (!http_req_has_body(x)) {
        answer_error(x, 400, "a JSON body is needed: {\"images\": [\"name:tag\", ...]}");
        return;
    }
    if (len > WARM_DEBUG_BODY_MAX) {
        answer_error(x, 413, "the body is longer than 65536 bytes");
        return;
    }
    struct post *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        answer_error(x, 503, "out of memory");
        return;
    }
    p->wd = wd;
    p->x = x;
    static const struct http_body_callbacks cbs = {post_data, post_end};
    http_exchange_on_gone(x, post_gone, p);
    if (http_req_body_start(x, &cbs, p) != 0) {
        http_exchange_on_gone(x, NULL, NULL);
        free(p);
        http_respond_abort(x);
    }
}

static void handle_get(struct warm_debug *wd, struct http_exchange *x, const char *id_text,
                       size_t id_len)
{
    char *buf = malloc(STATUS_MAX);
    struct textbuf t;
    if (buf == NULL) {
        answer_error(x, 503, "out of memory");
        return;
    }
    textbuf_init(&t, buf, STATUS_MAX);
    if (id_text == NULL) {
        textbuf_puts(&t, "{\"jobs\":[");
        bool first = true;
        for (unsigned id = 1; id <= wd->next_id; id++)
            for (size_t i = 0; i < WARM_DEBUG_KEPT; i++)
                if (wd->jobs[i].id == id) {
                    textbuf_printf(&t, "%s{\"id\":\"%u\",\"state\":\"%s\"}", first ? "" : ",", id,
                                   wd->jobs[i].done ? "finished" : "running");
                    first = false;
                }
        textbuf_puts(&t, "]}\n");
        answer(x, 200, t.buf, t.len, NULL);
        free(buf);
        return;
    }
    unsigned id = 0;
    bool digits = id_len > 0 && id_len < 10;
    for (size_t i = 0; digits && i < id_len; i++) {
        digits = id_text[i] >= '0' && id_text[i] <= '9';
        id = id * 10 + (unsigned)(id_text[i] - '0');
    }
    struct job *j = NULL;
    for (size_t i = 0; digits && id != 0 && i < WARM_DEBUG_KEPT; i++)
        if (wd->jobs[i].id == id) j = &wd->jobs[i];
    if (j == NULL) {
        char msg[160];
        snprintf(msg, sizeof(msg), "no warm job %.*s (the last %d are kept)",
                 (int)(id_len < 20 ? id_len : 20), id_text, WARM_DEBUG_KEPT);
        answer_error(x, 404, msg);
    } else {
        warm_status_json(j->warm, &t);
        answer(x, 200, t.buf, t.len, NULL);
    }
    free(buf);
}

void warm_debug_handle(struct http_exchange *x, void *ud)
{
    struct warm_debug *wd = ud;
    size_t len;
    const char *path = http_req_path(x, &len);
    const size_t plen = strlen("/debug/warm");
    bool one = len > plen + 1; /* /debug/warm/{id} */
    if (!one && strcmp(http_req_method(x), "POST") == 0) {
        handle_post(wd, x);
    } else if (http_req_is_get(x)) {
        handle_get(wd, x, one ? path + plen + 1 : NULL, one ? len - plen - 1 : 0);
    } else {
        struct http_header allow = {"Allow", 5, one ? "GET" : "GET, POST", one ? 3 : 9};
        if (http_respond_full(x, 405, &allow, 1, "method not allowed\n", 19) != 0)
            http_respond_abort(x);
    }
}
