/*
 * warm.c: references resolved, indexes walked, manifests kept and blobs fetched into the
 * store, bounded. See warm.h.
 *
 * A warm holds its references (struct image); each asks for manifests (struct mget: one
 * GET, retried once with a realm's token after a Bearer challenge; the token is renewed
 * before it expires, for the fetches that start late) and queues its blobs
 * (struct wblob). Blobs run at most `jobs` at a time: a stat on the thread pool (stored
 * already: done, untouched), then the fetch manager's running fetch of that digest or a
 * new one, followed until it is committed or failed. A digest named twice in one warm is
 * fetched once: the later task waits for the first. A reference ends when nothing of it
 * is in flight (its `pending` count is 0); the warm ends when every reference has.
 */
#include "cache/warm.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access/pull_auth.h"
#include "base/bytes.h"
#include "base/digest.h"
#include "base/log.h"
#include "net/chain.h"
#include "registry/image_manifest.h"
#include "registry/registry.h"
#include "registry/relay.h"

#define WARM_AUTH_MAX 8192
#define WARM_MAX_DEPTH 2 /* an index of indexes of manifests, no deeper */
#define WARM_MAX_CHILDREN 256

static const char accept_manifests[] = "application/vnd.oci.image.index.v1+json, "
                                       "application/vnd.docker.distribution.manifest.list.v2+json, "
                                       "application/vnd.oci.image.manifest.v1+json, "
                                       "application/vnd.docker.distribution.manifest.v2+json";

struct image;

/* One blob of a reference: queued, stat'ed, fetched. */
struct wblob {
    struct image *img;
    char hex[65];
    uint64_t size; /* as the manifest gives it */
    uv_work_t work;
    bool stored; /* the stat found it */
    struct fetch *fetch;
    struct fetch_waiter waiter;
    struct wblob *first;     /* the task of the same digest this one waits for, or NULL */
    struct wblob *followers; /* tasks waiting for this one (linked by next_follower) */
    struct wblob *next_follower;
    struct wblob *next_queued;                 /* the warm's queue */
    struct wblob *prev_running, *next_running; /* the warm's running list */
    struct wblob *next_all;                    /* every task of the warm, for the digest lookup */
    bool ended;
    bool ok;
};

/* One manifest GET. */
struct mget {
    struct image *img;
    char reference[REGISTRY_REFERENCE_MAX + 1]; /* tag or "sha256:<hex>" */
    bool top;                                   /* the reference itself, not a child */
    int depth;
    bool waiting_token; /* the image's pull_auth asks the realm for this GET */
    struct chain_req *up;
    int status;
    char *body;
    size_t len, cap;
    bool too_long;
    char dcd[80];
    char media_type[256];
    char challenge[1024];
    char why[300];
    struct mget *prev, *next; /* the warm's list of requests in flight */
};

struct image {
    struct warm *w;
    size_t index;
    struct warm_image_status st;
    char *text;                    /* the reference as given */
    struct registry_image_ref ref; /* the reference, read */
    size_t entry;
    char target_query[320]; /* "?ns=<registry>" when one was named, else "" */
    struct pull_auth *auth; /* the credential, and the realm's token after a challenge */
    bool renewing;          /* the token is being renewed ... */
    struct wblob *waiting;  /* ... for these blobs (linked by next_queued) */
    char **bases;
    size_t n_bases;
    unsigned pending; /* manifest GETs, keeps and blob tasks not ended */
    bool ended;
};

struct warm {
    struct warm_env env;
    struct warm_opts opts;
    char **platforms;
    struct image *images;
    size_t n_images;
    size_t n_ended, n_failed;
    struct wblob *queue_head, *queue_tail;
    struct wblob *running;
    struct wblob *all;
    unsigned n_running;
    struct mget *mgets;
    unsigned pool_work; /* stats and keeps on the thread pool */
    uv_timer_t start;   /* the references begin from the loop, after warm_start */
    bool start_closed;
    bool cancelled, finished, done_called;
};

static void mget_start(struct image *img, const char *reference, bool top, int depth);
static void maybe_finished(struct warm *w);
static void pump(struct warm *w);

const char *warm_state_name(enum warm_image_state s)
{
    static const char *const names[] = {"queued", "resolving", "fetching", "done", "failed"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

/* ---- references ----------------------------------------------------------------------- */

int warm_reference_check(const char *ref, char *why, size_t why_len)
{
    struct registry_image_ref r;
    if (registry_image_ref_parse(ref, &r, why, why_len) != 0) return -EINVAL;
    if (r.digest[0] != '\0' && strncmp(r.digest, "sha256:", 7) != 0) {
        snprintf(why, why_len, "%s: only sha256 digests are stored by this cache", ref);
        return -EINVAL;
    }
    return 0;
}

/* "os/arch" or "os/arch/variant", each part a lowercase word. */
static bool platform_valid(const char *p)
{
    unsigned parts = 1;
    size_t run = 0;
    for (; *p; p++) {
        if (*p == '/') {
            if (run == 0) return false;
            parts++;
            run = 0;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
                   *p == '.') {
            run++;
        } else {
            return false;
        }
    }
    return run > 0 && (parts == 2 || parts == 3);
}

/* ---- a reference's end -------------------------------------------------------------------- */

static void image_fail(struct image *img, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void image_fail(struct image *img, const char *fmt, ...)
{
    if (img->st.state == WARM_FAILED) return; /* the first reason is the one told */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(img->st.error, sizeof(img->st.error), fmt, ap);
    va_end(ap);
    img->st.state = WARM_FAILED;
}

/* One thing of img ended: when it was the last, the reference ends. */
static void image_release(struct image *img)
{
    struct warm *w = img->w;
    if (--img->pending > 0 || img->ended) return;
    img->ended = true;
    img->st.ended_ms = uv_now(w->env.loop);
    if (img->st.state != WARM_FAILED) img->st.state = WARM_DONE;
    w->n_ended++;
    if (img->st.state == WARM_FAILED) {
        w->n_failed++;
        log_msg(LOG_WARN, "warm %s: %s", img->text, img->st.error);
    } else {
        log_msg(LOG_INFO,
                "warm %s: %u blobs (%llu bytes): %u fetched, %u already stored; %u manifests",
                img->text, img->st.blobs_total, (unsigned long long)img->st.bytes_total,
                img->st.blobs_fetched, img->st.blobs_present, img->st.manifests);
    }
    if (w->opts.on_image_done) w->opts.on_image_done(w->opts.ud, w, img->index);
    maybe_finished(w);
}

static void maybe_finished(struct warm *w)
{
    if (w->done_called || !w->start_closed || w->n_ended < w->n_images || w->pool_work > 0 ||
        w->n_running > 0)
        return;
    w->done_called = w->finished = true;
    if (w->opts.on_done) w->opts.on_done(w->opts.ud, w);
}

/* ---- blobs ---------------------------------------------------------------------------- */

static void blob_end(struct wblob *b, bool ok, bool fetched, const char *why);
static void hand_over(struct warm *w, struct wblob *b);
static void blob_wait_token(struct wblob *b);

static void running_remove(struct warm *w, struct wblob *b)
{
    if (b->prev_running)
        b->prev_running->next_running = b->next_running;
    else
        w->running = b->next_running;
    if (b->next_running) b->next_running->prev_running = b->prev_running;
    b->prev_running = b->next_running = NULL;
    w->n_running--;
}

static void blob_fetch_watch(struct fetch_waiter *wt)
{
    struct wblob *b = (struct wblob *)((char *)wt - offsetof(struct wblob, waiter));
    enum fetch_state s = fetch_state(b->fetch);
    if (s == FETCH_RUNNING) {
        fetch_wait(b->fetch, &b->waiter);
        return;
    }
    char why[400];
    if (s == FETCH_FAILED)
        snprintf(why, sizeof(why), "blob sha256:%s: %s", b->hex, fetch_error(b->fetch));
    fetch_unref(b->fetch);
    b->fetch = NULL;
    running_remove(b->img->w, b);
    blob_end(b, s == FETCH_DONE, true, s == FETCH_DONE ? NULL : why);
    pump(b->img->w);
}

static void blob_start_fetch(struct wblob *b)
{
    struct image *img = b->img;
    struct warm *w = img->w;
    struct fetch *f = fetch_find(w->env.fetches, b->hex);
    if (f != NULL) {
        fetch_ref(f);
    } else {
        char target[REGISTRY_PATH_MAX + 400];
        snprintf(target, sizeof(target), "/v2/%s/blobs/sha256:%s%s", img->ref.name, b->hex,
                 img->target_query);
        struct upstream_header hdr = {"Authorization", pull_auth_header(img->auth), true};
        struct chain_spec spec = {
            .method = "GET",
            .bases = (const char *const *)img->bases,
            .n_bases = img->n_bases,
            .target = target,
            .headers = &hdr,
            .n_headers = hdr.value != NULL ? 1 : 0,
            .max_redirects = 5,
        };
        int rc = fetch_start(w->env.fetches, b->hex, &spec, -1, true, &f);
        if (rc < 0) {
            char why[200];
            snprintf(why, sizeof(why), "blob sha256:%s: cannot start fetching: %s", b->hex,
                     uv_strerror(rc));
            running_remove(w, b);
            blob_end(b, false, false, why);
            return;
        }
    }
    b->fetch = f;
    b->waiter.cb = blob_fetch_watch;
    fetch_wait(f, &b->waiter);
}

/* The admit policy and the disk budget, asked as for a client's miss of the blob. */
static bool blob_admitted(struct wblob *b)
{
    const struct warm_env *env = &b->img->w->env;
    if (env->admit == NULL) return true;
    char digest[72];
    snprintf(digest, sizeof(digest), "sha256:%s", b->hex);
    struct policy_request req = {.method = "GET",
                                 .repository = b->img->ref.name,
                                 .reference = digest,
                                 .digest = digest,
                                 .kind = "blob"};
    return env->admit(env->admit_ud, digest, (int64_t)b->size, &req);
}

static void blob_stat_work(uv_work_t *req)
{
    struct wblob *b = req->data;
    struct stat sb;
    /* A stat, not an open: the access time (the last pull) is left alone. */
    b->stored = store_stat_blob_sync(b->img->w->env.store, b->hex, &sb) == 0;
}

static void blob_stat_done(uv_work_t *req, int status)
{
    struct wblob *b = req->data;
    struct warm *w = b->img->w;
    w->pool_work--;
    if (w->cancelled || b->img->st.state == WARM_FAILED || status != 0) {
        running_remove(w, b);
        hand_over(w, b);
        blob_end(b, false, false, NULL);
    } else if (b->stored) {
        running_remove(w, b);
        blob_end(b, true, false, NULL);
    } else if (!blob_admitted(b)) {
        running_remove(w, b);
        b->img->st.blobs_refused++;
        hand_over(w, b); /* (the policy may answer another repository otherwise) */
        blob_end(b, false, false, NULL);
    } else if (pull_auth_renewal_due(b->img->auth)) {
        blob_wait_token(b);
    } else {
        blob_start_fetch(b);
    }
    pump(w);
}

/* Ends task b (and those waiting for it), with the reference's counts. */
static void blob_end(struct wblob *b, bool ok, bool fetched, const char *why)
{
    struct image *img = b->img;
    b->ended = true;
    b->ok = ok;
    if (ok) {
        img->st.blobs_done++;
        img->st.bytes_done += b->size;
        if (fetched) {
            img->st.blobs_fetched++;
            img->st.bytes_fetched += b->size;
        } else {
            img->st.blobs_present++;
        }
    } else if (why != NULL) {
        image_fail(img, "%s", why);
    } else if (img->w->cancelled) {
        image_fail(img, "interrupted");
    }
    struct wblob *f = b->followers;
    b->followers = NULL;
    while (f != NULL) {
        struct wblob *next = f->next_follower;
        blob_end(f, ok, false, ok ? NULL : "a blob it shares with another reference failed");
        f = next;
    }
    image_release(img);
    maybe_finished(img->w);
}

/* A task of a failed reference is not run: when other references wait for it, the first
 * of them takes its place (at the queue's head). */
static void hand_over(struct warm *w, struct wblob *b)
{
    struct wblob *f = b->followers;
    if (f == NULL || w->cancelled) return;
    b->followers = NULL;
    f->first = NULL;
    f->followers = f->next_follower;
    f->next_follower = NULL;
    for (struct wblob *o = f->followers; o != NULL; o = o->next_follower)
        o->first = f;
    f->next_queued = w->queue_head;
    w->queue_head = f;
    if (w->queue_tail == NULL) w->queue_tail = f;
}

/* Starts queued tasks while fewer than `jobs` run. */
static void pump(struct warm *w)
{
    while (w->queue_head != NULL && (w->n_running < w->opts.jobs || w->cancelled)) {
        struct wblob *b = w->queue_head;
        w->queue_head = b->next_queued;
        if (w->queue_head == NULL) w->queue_tail = NULL;
        b->next_queued = NULL;
        if (w->cancelled || b->img->st.state == WARM_FAILED) {
            hand_over(w, b);
            blob_end(b, false, false, NULL);
            continue;
        }
        b->next_running = w->running;
        if (w->running) w->running->prev_running = b;
        w->running = b;
        w->n_running++;
        b->work.data = b;
        if (uv_queue_work(w->env.loop, &b->work, blob_stat_work, blob_stat_done) != 0) {
            running_remove(w, b);
            blob_end(b, false, false, "cannot queue work on the thread pool");
            continue;
        }
        w->pool_work++;
    }
}

/* Queues blob hex (size bytes) of img. */
static void blob_add(struct image *img, const char *hex, uint64_t size)
{
    struct warm *w = img->w;
    for (struct wblob *o = w->all; o != NULL; o = o->next_all)
        if (o->img == img && strcmp(o->hex, hex) == 0) return; /* named twice in one image */
    struct wblob *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        image_fail(img, "out of memory");
        return;
    }
    b->img = img;
    memcpy(b->hex, hex, 65);
    b->size = size;
    img->st.blobs_total++;
    img->st.bytes_total += size;
    img->pending++;
    struct wblob *first = NULL;
    for (struct wblob *o = w->all; o != NULL && first == NULL; o = o->next_all)
        if (strcmp(o->hex, hex) == 0 && o->first == NULL && (o->ok || !o->ended)) first = o;
    b->next_all = w->all;
    w->all = b;
    if (first != NULL && first->ended) {
        blob_end(b, first->ok, false,
                 first->ok ? NULL : "a blob it shares with another reference failed");
        return;
    }
    if (first != NULL) { /* another reference's task has it: wait for that one */
        b->first = first;
        b->next_follower = first->followers;
        first->followers = b;
        return;
    }
    if (w->queue_tail)
        w->queue_tail->next_queued = b;
    else
        w->queue_head = b;
    w->queue_tail = b;
}

/* ---- the realm's token, renewed ---------------------------------------------------------- */

/* The renewal's end: the waiting blobs go on (with the new token, or the one held). */
static void token_renewed(void *arg, int err, const char *why)
{
    struct image *img = arg;
    struct warm *w = img->w;
    img->renewing = false;
    if (err != 0) log_msg(LOG_WARN, "warm %s: %s: going on with the token held", img->text, why);
    struct wblob *b = img->waiting;
    img->waiting = NULL;
    while (b != NULL) {
        struct wblob *next = b->next_queued;
        b->next_queued = NULL;
        if (w->cancelled || img->st.state == WARM_FAILED) {
            running_remove(w, b);
            hand_over(w, b);
            blob_end(b, false, false, NULL);
        } else {
            blob_start_fetch(b);
        }
        b = next;
    }
    pump(w);
}

/* Fetches b once the image's token is renewed (renewing it unless that is under way). A
 * long warm outlives a token: registries give them for minutes. */
static void blob_wait_token(struct wblob *b)
{
    struct image *img = b->img;
    if (!img->renewing) {
        if (pull_auth_renew(img->auth, token_renewed, img) != 0) {
            blob_start_fetch(b); /* the token held goes on serving */
            return;
        }
        img->renewing = true;
    }
    b->next_queued = img->waiting;
    img->waiting = b;
}

/* At a cancel: the renewal stops, its waiting blobs end. */
static void token_cancel(struct image *img)
{
    if (img->auth != NULL && img->renewing) pull_auth_cancel(img->auth);
    img->renewing = false;
    struct wblob *b = img->waiting;
    img->waiting = NULL;
    while (b != NULL) {
        struct wblob *next = b->next_queued;
        b->next_queued = NULL;
        running_remove(img->w, b);
        blob_end(b, false, false, "interrupted");
        b = next;
    }
}

/* ---- manifests ---------------------------------------------------------------------------- */

/* Whether platform ("os/arch[/variant]") is chosen: every one when none is
 * given; "linux/arm" chooses every variant of it. */
static bool platform_chosen(const struct warm *w, const char *platform)
{
    if (w->opts.n_platforms == 0) return true;
    for (size_t i = 0; i < w->opts.n_platforms; i++) {
        size_t n = strlen(w->platforms[i]);
        if (strncmp(platform, w->platforms[i], n) == 0 &&
            (platform[n] == '\0' || platform[n] == '/'))
            return true;
    }
    return false;
}

/* A walk of one manifest (image_manifest_walk): blobs queued, platform manifests asked. */
struct walk {
    struct mget *m;
    size_t children, chosen;
    char seen[512]; /* the platforms an index has, for a refusal */
    size_t at;
};

static int walk_ref(void *ud, const struct image_ref *r)
{
    struct walk *k = ud;
    struct image *img = k->m->img;
    if (r->kind != IMAGE_REF_MANIFEST) {
        blob_add(img, r->hex, r->size);
        return 0;
    }
    if (k->m->depth >= WARM_MAX_DEPTH) {
        image_fail(img, "manifest %s: indexes nested deeper than %d", k->m->reference,
                   WARM_MAX_DEPTH);
        return 1;
    }
    if (++k->children > WARM_MAX_CHILDREN) return 1;
    if (k->at < sizeof(k->seen))
        k->at += (size_t)snprintf(k->seen + k->at, sizeof(k->seen) - k->at, "%s%s",
                                  k->at ? ", " : "", r->platform[0] ? r->platform : "(none)");
    if (r->platform[0] != '\0' && !platform_chosen(img->w, r->platform)) return 0;
    char ref[80];
    snprintf(ref, sizeof(ref), "sha256:%s", r->hex);
    k->chosen++;
    mget_start(img, ref, false, k->m->depth + 1);
    return 0;
}

/* What manifest m names: an image's blobs are queued, an index's chosen platform
 * manifests asked for. */
static void walk(struct mget *m)
{
    struct image *img = m->img;
    struct walk k = {.m = m};
    size_t skipped = 0;
    int kind = image_manifest_walk(m->body, m->len, walk_ref, &k, &skipped);
    if (kind < 0)
        image_fail(img, "manifest %s is not a JSON object", m->reference);
    else if (skipped > 0)
        image_fail(img, "manifest %s names %zu descriptor%s without a sha256 digest", m->reference,
                   skipped, skipped == 1 ? "" : "s");
    else if (kind == IMAGE_MANIFEST_INDEX && k.chosen == 0)
        image_fail(img, "the index %s names no manifest of the platforms asked for (it has: %s)",
                   img->st.digest, k.seen[0] ? k.seen : "none");
    else if (kind == IMAGE_MANIFEST_OTHER)
        image_fail(img, "manifest %s (%s) names no layers: not an image this cache can warm",
                   m->reference, m->media_type[0] ? m->media_type : "no media type");
    if (kind == IMAGE_MANIFEST_IMAGE) {
        img->st.platforms++;
        if (img->st.state == WARM_RESOLVING) img->st.state = WARM_FETCHING; /* blobs from now */
    }
}

/* The kept manifest is on disk. */
static void kept(void *ud, int err)
{
    struct image *img = ud;
    img->w->pool_work--;
    if (err != 0)
        image_fail(img, "cannot keep a manifest in the store: %s", strerror(err < 0 ? -err : err));
    else
        img->st.manifests++;
    image_release(img);
    pump(img->w);
}

static void mget_free(struct mget *m)
{
    struct warm *w = m->img->w;
    if (m->prev)
        m->prev->next = m->next;
    else
        w->mgets = m->next;
    if (m->next) m->next->prev = m->prev;
    free(m->body);
    free(m);
}

/* A 200: checked, kept, walked. */
static void mget_answered(struct mget *m)
{
    struct image *img = m->img;
    struct warm *w = img->w;
    struct digest_sha256 ctx;
    unsigned char bin[DIGEST_SHA256_LEN];
    char hex[65];
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, m->body, m->len);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    bool by_digest = strncmp(m->reference, "sha256:", 7) == 0;
    if ((by_digest && strcmp(m->reference + 7, hex) != 0) ||
        (m->dcd[0] != '\0' && (strncmp(m->dcd, "sha256:", 7) != 0 || strcmp(m->dcd + 7, hex)))) {
        image_fail(img, "manifest %s: the body the registry sent does not hash to its digest",
                   m->reference);
        return;
    }
    if (m->top) snprintf(img->st.digest, sizeof(img->st.digest), "sha256:%s", hex);
    walk(m);
    if (img->st.state == WARM_FAILED) return;
    /* Kept as the manifest cache keeps a GET's answer (the tag's link for a tag). */
    char *body = m->body;
    m->body = NULL;
    img->pending++;
    w->pool_work++;
    int rc =
        manifest_keep(w->env.manifests, img->entry, img->ref.name, by_digest ? NULL : m->reference,
                      hex, body, m->len, m->media_type[0] ? m->media_type : NULL, kept, img);
    if (rc != 0) {
        w->pool_work--;
        img->pending--;
        image_fail(img, "cannot keep manifest %s: %s", m->reference, uv_strerror(rc));
    }
}

static void mget_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                      int64_t content_length)
{
    struct mget *m = ud;
    m->status = status;
    for (size_t i = 0; i < n; i++) {
        char *dst = NULL;
        size_t cap = 0;
        if (hdrs[i].name_len == 21 && strncasecmp(hdrs[i].name, "Docker-Content-Digest", 21) == 0)
            dst = m->dcd, cap = sizeof(m->dcd);
        else if (hdrs[i].name_len == 12 && strncasecmp(hdrs[i].name, "Content-Type", 12) == 0)
            dst = m->media_type, cap = sizeof(m->media_type);
        else if (hdrs[i].name_len == 16 && strncasecmp(hdrs[i].name, "WWW-Authenticate", 16) == 0)
            dst = m->challenge, cap = sizeof(m->challenge);
        if (dst != NULL && hdrs[i].value_len < cap) {
            memcpy(dst, hdrs[i].value, hdrs[i].value_len);
            dst[hdrs[i].value_len] = '\0';
        }
    }
    if (content_length > (int64_t)RELAY_MANIFEST_MAX) m->too_long = true;
}

static void mget_body(void *ud, const char *data, size_t len)
{
    struct mget *m = ud;
    if (m->status != 200 || m->too_long) return;
    if (m->len + len > RELAY_MANIFEST_MAX) {
        m->too_long = true;
        return;
    }
    if (bytes_append(&m->body, &m->len, &m->cap, data, len, 16384) != 0) m->too_long = true;
}

static void mget_send(struct mget *m);

/* The realm answered the image's pull_auth for this GET: asked again with the token. */
static void token_got(void *arg, int err, const char *why)
{
    struct mget *m = arg;
    struct image *img = m->img;
    m->waiting_token = false;
    if (err != 0) {
        image_fail(img, "unauthorized: %s", why);
        image_release(img);
        mget_free(m);
        return;
    }
    mget_send(m);
}

static void mget_done(void *ud, int err)
{
    struct mget *m = ud;
    struct image *img = m->img;
    m->up = NULL;
    if (err == 0 && m->status == 401 && !img->w->cancelled &&
        pull_auth_challenged(img->auth, m->challenge, token_got, m) == 0) {
        m->waiting_token = true;
        free(m->body);
        m->body = NULL;
        m->len = m->cap = 0;
        return;
    }
    if (err != 0)
        image_fail(img, "manifest %s: %s", m->reference, m->why);
    else if (m->status == 401 || m->status == 403)
        image_fail(img, "unauthorized: the registry answered %d to manifest %s of %s (%s)",
                   m->status, m->reference, img->ref.name,
                   pull_auth_header(img->auth) ? "the credentials were refused"
                                               : "no credentials given");
    else if (m->status == 404)
        image_fail(img, "not found: the registry has no manifest %s in %s", m->reference,
                   img->ref.name);
    else if (m->status != 200)
        image_fail(img, "manifest %s: the registry answered %d", m->reference, m->status);
    else if (m->too_long)
        image_fail(img, "manifest %s is longer than %llu bytes", m->reference,
                   (unsigned long long)RELAY_MANIFEST_MAX);
    else if (!img->w->cancelled)
        mget_answered(m);
    image_release(img);
    mget_free(m);
    pump(img->w);
}

static void mget_error_cb(void *ud, int err);

static void mget_send(struct mget *m)
{
    struct image *img = m->img;
    char target[REGISTRY_PATH_MAX + 400];
    snprintf(target, sizeof(target), "/v2/%s/manifests/%s%s", img->ref.name, m->reference,
             img->target_query);
    struct upstream_header hdrs[2] = {{"Accept", accept_manifests, false},
                                      {"Authorization", pull_auth_header(img->auth), true}};
    struct chain_spec spec = {
        .method = "GET",
        .bases = (const char *const *)img->bases,
        .n_bases = img->n_bases,
        .target = target,
        .headers = hdrs,
        .n_headers = hdrs[1].value != NULL ? 2 : 1,
        .max_redirects = 5,
    };
    static const struct upstream_callbacks cbs = {mget_head, mget_body, mget_error_cb};
    m->status = 0;
    m->too_long = false;
    int rc = chain_request(upstreams_pool(img->w->env.upstreams), &spec, &cbs, m, &m->up);
    if (rc != 0) {
        image_fail(img, "manifest %s: cannot ask the registry: %s", m->reference, uv_strerror(rc));
        image_release(img);
        mget_free(m);
    }
}

/* on_done of the chain: keep its sentence before the request is freed. */
static void mget_error_cb(void *ud, int err)
{
    struct mget *m = ud;
    if (err != 0 && m->up != NULL)
        snprintf(m->why, sizeof(m->why), "%s", chain_error_message(m->up));
    mget_done(ud, err);
}

static void mget_start(struct image *img, const char *reference, bool top, int depth)
{
    struct warm *w = img->w;
    struct mget *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        image_fail(img, "out of memory");
        return;
    }
    m->img = img;
    snprintf(m->reference, sizeof(m->reference), "%s", reference);
    m->top = top;
    m->depth = depth;
    m->next = w->mgets;
    if (w->mgets) w->mgets->prev = m;
    w->mgets = m;
    img->pending++;
    mget_send(m);
}

/* ---- the warm ------------------------------------------------------------------------- */

/* The registry an entry's origin is, host[:port] as its originhost writes it. */
static void entry_registry(const struct config *cfg, size_t entry, char *buf, size_t len)
{
    const struct url *o = &cfg->upstreams[entry].origin;
    if (o->port_explicit)
        snprintf(buf, len, strchr(o->host, ':') ? "[%s]:%u" : "%s:%u", o->host, (unsigned)o->port);
    else
        snprintf(buf, len, "%s", o->host);
}

static int image_init(struct warm *w, struct image *img, size_t i, const char *text, char *why,
                      size_t why_len)
{
    img->w = w;
    img->index = i;
    if ((img->text = strdup(text)) == NULL) return -ENOMEM;
    img->st.reference = img->text;
    int rc = warm_reference_check(text, why, why_len);
    if (rc != 0) return rc;
    registry_image_ref_parse(text, &img->ref, why, why_len);
    int entry = 0;
    if (img->ref.registry[0] != '\0') {
        entry = upstreams_entry_for_registry(w->env.upstreams, img->ref.registry);
        snprintf(img->target_query, sizeof(img->target_query), "?ns=%s", img->ref.registry);
    }
    if (entry < 0 || upstreams_count(w->env.upstreams) == 0) /* (it fails when it begins) */
        image_fail(img, "no upstreams entry has the origin %s: this cache does not serve it",
                   img->ref.registry[0] ? img->ref.registry : "(none configured)");
    img->entry = entry < 0 ? 0 : (size_t)entry;
    return 0;
}

/* Asks for img's manifest: the bases (as a pull would get them), the credential. */
static void image_begin(struct image *img)
{
    struct warm *w = img->w;
    const char *reference = img->ref.digest[0] ? img->ref.digest : img->ref.tag;
    struct policy_request req = {.method = "GET",
                                 .repository = img->ref.name,
                                 .reference = reference,
                                 .digest = img->ref.digest[0] ? reference : NULL,
                                 .kind = "manifest"};
    size_t n = 0;
    const char *const *bases = upstreams_select(w->env.upstreams, &req, img->entry, &n);
    img->bases = calloc(n ? n : 1, sizeof(*img->bases));
    for (size_t k = 0; img->bases != NULL && k < n; k++)
        if ((img->bases[img->n_bases] = strdup(bases[k])) != NULL) img->n_bases++;
    const char *given = NULL;
    if (w->opts.authorization != NULL) {
        char registry[300];
        entry_registry(w->env.cfg, img->entry, registry, sizeof(registry));
        given = w->opts.authorization(w->opts.ud, registry);
        if (given != NULL && strlen(given) >= WARM_AUTH_MAX) given = NULL;
    }
    img->auth = pull_auth_new(w->env.loop, upstreams_pool(w->env.upstreams), img->ref.name, given);
    img->st.state = WARM_RESOLVING;
    img->st.started_ms = uv_now(w->env.loop);
    img->pending++; /* held while the first request starts */
    if (img->auth == NULL)
        image_fail(img, "out of memory");
    else if (img->n_bases == 0)
        image_fail(img, "no upstream to ask");
    else
        mget_start(img, reference, true, 0);
    image_release(img);
}

static void start_closed(uv_handle_t *h)
{
    struct warm *w = h->data;
    w->start_closed = true;
    maybe_finished(w);
}

/* The references begin (or, cancelled before, end at once). */
static void start_now(uv_timer_t *t)
{
    struct warm *w = t->data;
    for (size_t i = 0; i < w->n_images; i++) {
        struct image *img = &w->images[i];
        if (!w->cancelled && img->st.state != WARM_FAILED) {
            image_begin(img);
            continue;
        }
        image_fail(img, "interrupted"); /* (unless it failed already) */
        img->pending++;
        image_release(img);
    }
    pump(w);
    uv_close((uv_handle_t *)t, start_closed);
}

int warm_start(const struct warm_env *env, const struct warm_opts *opts, const char *const *images,
               size_t n, struct warm **out, char *why, size_t why_len)
{
    if (n == 0 || n > WARM_MAX_IMAGES) {
        snprintf(why, why_len, "between 1 and %d image references, please (got %zu)",
                 WARM_MAX_IMAGES, n);
        return -EINVAL;
    }
    if (opts->n_platforms > WARM_MAX_PLATFORMS) {
        snprintf(why, why_len, "at most %d platforms", WARM_MAX_PLATFORMS);
        return -EINVAL;
    }
    for (size_t i = 0; i < opts->n_platforms; i++)
        if (!platform_valid(opts->platforms[i])) {
            snprintf(why, why_len, "\"%s\" is not a platform (os/arch or os/arch/variant)",
                     opts->platforms[i]);
            return -EINVAL;
        }
    struct warm *w = calloc(1, sizeof(*w));
    if (w == NULL) return -ENOMEM;
    w->env = *env;
    w->opts = *opts;
    if (w->opts.jobs == 0) w->opts.jobs = WARM_DEFAULT_JOBS;
    if (w->opts.jobs > WARM_MAX_JOBS) w->opts.jobs = WARM_MAX_JOBS;
    w->platforms = calloc(opts->n_platforms + 1, sizeof(char *));
    w->images = calloc(n, sizeof(*w->images));
    int rc = w->platforms && w->images ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < opts->n_platforms; i++)
        if ((w->platforms[i] = strdup(opts->platforms[i])) == NULL) rc = -ENOMEM;
    w->opts.platforms = (const char *const *)w->platforms;
    w->n_images = n;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = image_init(w, &w->images[i], i, images[i], why, why_len);
    if (rc != 0) {
        if (rc == -ENOMEM) snprintf(why, why_len, "out of memory");
        warm_free(w);
        return rc;
    }
    uv_timer_init(env->loop, &w->start);
    w->start.data = w;
    uv_timer_start(&w->start, start_now, 0, 0);
    *out = w;
    return 0;
}

void warm_cancel(struct warm *w)
{
    if (w->cancelled || w->finished) return;
    w->cancelled = true;
    while (w->mgets != NULL) {
        struct mget *m = w->mgets;
        struct image *img = m->img;
        if (m->up) chain_cancel(m->up);
        if (m->waiting_token) pull_auth_cancel(img->auth);
        image_fail(img, "interrupted");
        mget_free(m);
        image_release(img);
    }
    for (size_t i = 0; i < w->n_images; i++)
        token_cancel(&w->images[i]);
    /* Running fetches are left to the manager; the warm stops waiting for them. */
    for (struct wblob *b = w->running, *next; b != NULL; b = next) {
        next = b->next_running;
        if (b->fetch == NULL) continue; /* a stat on the pool: it ends by itself */
        fetch_unwait(b->fetch, &b->waiter);
        fetch_unref(b->fetch);
        b->fetch = NULL;
        running_remove(w, b);
        blob_end(b, false, false, "interrupted");
    }
    pump(w); /* the queued ones end, not started */
    for (size_t i = 0; i < w->n_images; i++)
        if (!w->images[i].ended && w->images[i].st.state != WARM_QUEUED)
            image_fail(&w->images[i], "interrupted");
    maybe_finished(w);
}

size_t warm_image_count(const struct warm *w)
{
    return w->n_images;
}

void warm_image(const struct warm *w, size_t i, struct warm_image_status *out)
{
    *out = w->images[i].st;
    for (const struct wblob *b = w->running; b != NULL; b = b->next_running)
        if (b->img == &w->images[i] && b->fetch != NULL) {
            uint64_t got = fetch_readable(b->fetch);
            out->bytes_done += got < b->size ? got : b->size;
            out->bytes_fetched += got < b->size ? got : b->size;
        }
}

bool warm_finished(const struct warm *w)
{
    return w->finished;
}

size_t warm_failed_count(const struct warm *w)
{
    return w->n_failed;
}

void warm_free(struct warm *w)
{
    if (w == NULL) return;
    for (struct wblob *b = w->all, *next; b != NULL; b = next) {
        next = b->next_all;
        free(b);
    }
    for (size_t i = 0; w->images != NULL && i < w->n_images; i++) {
        struct image *img = &w->images[i];
        free(img->text);
        pull_auth_free(img->auth);
        for (size_t k = 0; k < img->n_bases; k++)
            free(img->bases[k]);
        free(img->bases);
    }
    for (size_t i = 0; w->platforms != NULL && w->platforms[i] != NULL; i++)
        free(w->platforms[i]);
    free(w->platforms);
    free(w->images);
    free(w);
}

void warm_status_json(const struct warm *w, struct textbuf *out)
{
    textbuf_printf(out, "{\"state\":\"%s\",\"images\":[", w->finished ? "finished" : "running");
    for (size_t i = 0; i < w->n_images; i++) {
        struct warm_image_status s;
        warm_image(w, i, &s);
        uint64_t end = s.ended_ms ? s.ended_ms : uv_now(w->env.loop);
        textbuf_printf(out, "%s{\"reference\":\"", i ? "," : "");
        textbuf_put_json(out, s.reference);
        textbuf_printf(out, "\",\"status\":\"%s\",\"digest\":\"%s\"", warm_state_name(s.state),
                       s.digest);
        if (s.state == WARM_FAILED) {
            textbuf_puts(out, ",\"error\":\"");
            textbuf_put_json(out, s.error);
            textbuf_puts(out, "\"");
        }
        textbuf_printf(out,
                       ",\"platforms\":%u,\"manifests\":%u,\"blobs\":%u,\"blobs_done\":%u,"
                       "\"fetched\":%u,\"already_stored\":%u,\"not_admitted\":%u,"
                       "\"bytes\":%llu,\"bytes_done\":%llu,\"bytes_fetched\":%llu,"
                       "\"seconds\":%.3f}",
                       s.platforms, s.manifests, s.blobs_total, s.blobs_done, s.blobs_fetched,
                       s.blobs_present, s.blobs_refused, (unsigned long long)s.bytes_total,
                       (unsigned long long)s.bytes_done, (unsigned long long)s.bytes_fetched,
                       s.started_ms ? (double)(end - s.started_ms) / 1000.0 : 0.0);
    }
    textbuf_printf(out, "],\"failed\":%zu}\n", w->n_failed);
}
