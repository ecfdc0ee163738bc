/*
 * manifest.c: manifests by digest from disk, tags from the origin, and the outage policy
 * for both. See manifest.h.
 *
 * A request goes through: authorization from memory (by digest) -> the disk (a hit) or the
 * upstream (its answer buffered whole, at most RELAY_MANIFEST_MAX bytes, then relayed and
 * kept) -> when every upstream failed, the outage policy, with what the disk holds.
 * Writing a manifest to the store is a job of its own on the thread pool, which outlives
 * the request (the client is answered before it is on disk).
 */
#include "cache/manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "access/auth.h"
#include "base/config.h"
#include "base/digest.h"
#include "base/bytes.h"
#include "base/log.h"
#include "cache/links.h"
#include "cache/pulls.h"
#include "net/chain.h"
#include "registry/image_manifest.h"
#include "registry/relay.h"
#include "registry/respond.h"

#define MAX_FORWARDED 24
#define MAX_RELAYED 16
#define MEDIA_MAX 256
#define MAX_REFS 1024 /* blobs and platform manifests a manifest may name, as remembered */
#define REL_MEDIA "docker/registry/v2/_content-cache/manifests"

struct manifest_service {
    uv_loop_t *loop;
    struct store *store;
    struct upstreams *upstreams;
    const struct config *cfg;
    struct auth_cache *auth;
    struct auth_verifier *verifier;
    struct answers *answers;
    struct outage *outage;
    struct pulls *pulls;
    void (*on_commit)(void *ud, const char *hex, uint64_t size);
    void *commit_ud;
    unsigned in_flight;
    struct manifest_stats stats;
};

/* What the disk holds of one manifest (read on the thread pool). */
struct held {
    bool stored;                /* the blob is there, a manifest of at most the cap */
    bool linked;                /* and linked in the repository (revisions) */
    bool refs_stored;           /* every blob and platform manifest it names is stored */
    char media_type[MEDIA_MAX]; /* the Content-Type the origin sent with it */
    char *body;                 /* its bytes (malloc'd) */
    size_t len;
    char refs[128][65]; /* what it names: blobs [0, n_blobs), then platform manifests */
    size_t n_refs, n_blobs;
};

struct mreq {
    struct manifest_service *ms;
    struct http_exchange *x;
    size_t entry;
    struct upstreams_req_info info;
    bool by_digest;
    char hex[65]; /* the manifest: asked for by digest, or the tag's (stored or outage) */
    char tag[REGISTRY_REFERENCE_MAX + 1];
    const char *credential; /* the client's Authorization (the exchange owns it) */
    size_t cred_len;
    bool need_credential; /* the upstream's answer decides the credential */
    bool token_ok;        /* auth.token verified it here */
    struct auth_token_job *token_job;
    char **bases;
    size_t n_bases;
    struct chain_req *up;

    /* The upstream's answer. */
    int status;
    int64_t content_length;
    struct http_header hdrs[MAX_RELAYED]; /* names and values malloc'd */
    size_t n_hdrs;
    char *dcd, *challenge;
    char *body;
    size_t body_len, body_cap;
    char err_msg[400];
    int err;
    char base[512]; /* the upstream that answered, or was tried last */

    /* Disk work: a hit, or the outage's gathering. */
    uv_work_t work;
    bool busy;
    struct held held;
    bool outage;    /* gathering for the outage policy */
    bool tag_found; /* the tag's last digest is known */
    double tag_when;
    struct outage_auth oa; /* the credential's last answer */
    char challenge_kept[ANSWERS_CHALLENGE_MAX];
    bool gone, done;
};

static const char *origin_of(const struct manifest_service *ms, size_t entry)
{
    return ms->cfg != NULL && entry < ms->cfg->n_upstreams ? ms->cfg->upstreams[entry].originhost
                                                           : "";
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the service ---------------------------------------------------------------------- */

struct manifest_service *manifest_service_new(uv_loop_t *loop, struct store *store,
                                              struct upstreams *upstreams)
{
    struct manifest_service *ms = calloc(1, sizeof(*ms));
    if (ms == NULL) return NULL;
    ms->loop = loop;
    ms->store = store;
    ms->upstreams = upstreams;
    return ms;
}

void manifest_service_free(struct manifest_service *ms)
{
    free(ms);
}

void manifest_service_set_auth(struct manifest_service *ms, const struct config *cfg,
                               struct auth_cache *cache, struct auth_verifier *verifier)
{
    ms->cfg = cfg;
    ms->auth = cache;
    ms->verifier = verifier;
}

void manifest_service_set_outage(struct manifest_service *ms, struct answers *answers,
                                 struct outage *outage)
{
    ms->answers = answers;
    ms->outage = outage;
}

void manifest_service_set_pulls(struct manifest_service *ms, struct pulls *pulls)
{
    ms->pulls = pulls;
}

void manifest_service_on_commit(struct manifest_service *ms,
                                void (*cb)(void *ud, const char *hex, uint64_t size), void *ud)
{
    ms->on_commit = cb;
    ms->commit_ud = ud;
}

unsigned manifest_in_flight(const struct manifest_service *ms)
{
    return ms->in_flight;
}

const struct manifest_stats *manifest_service_stats(const struct manifest_service *ms)
{
    return &ms->stats;
}

void manifest_render_metrics(const void *manifest_service, struct textbuf *out)
{
    const struct manifest_stats *s = manifest_service_stats(manifest_service);
    static const char name[] = "content_cache_manifest_requests_total";
    metrics_help(out, name, "counter",
                 "Manifest requests by how they were answered: hit (from disk, by digest), "
                 "upstream (asked of the upstreams).");
    metrics_labelled(out, name, "result", "hit", s->hits);
    metrics_labelled(out, name, "result", "upstream", s->upstream);
    metrics_value(out, "content_cache_manifests_stored_total", "counter",
                  "Manifests verified against their digest and kept.", s->stored);
    metrics_value(out, "content_cache_manifest_mismatches_total", "counter",
                  "Manifests from upstream that did not hash to their digest (not kept).",
                  s->mismatch);
}

/* ---- the disk: reading a manifest ------------------------------------------------------- */

static int media_dir(const struct store *st, const char *hex, bool create)
{
    char rel[128];
    snprintf(rel, sizeof(rel), "%s/%.2s", REL_MEDIA, hex);
    return store_dir_open_sync(st, rel, create);
}

struct refs_found {
    char (*refs)[65];
    size_t n, max;
    bool platforms;
};

static int found_ref(void *ud, const struct image_ref *r)
{
    struct refs_found *f = ud;
    if ((r->kind == IMAGE_REF_MANIFEST) == f->platforms && f->n < f->max)
        memcpy(f->refs[f->n++], r->hex, 65);
    return 0;
}

/* The digests a manifest names, sha256 only: its blobs (config, layers), or with
 * platforms its platform manifests (an index's "manifests"). Into refs (hex), at most
 * max. Returns how many, 0 for what does not parse. */
static size_t manifest_refs(const char *body, size_t len, bool platforms, char (*refs)[65],
                            size_t max)
{
    struct refs_found f = {.refs = refs, .max = max, .platforms = platforms};
    return image_manifest_walk(body, len, found_ref, &f, NULL) < 0 ? 0 : f.n;
}

/* Reads what the disk holds of manifest hex in repo (the thread pool). */
static void held_read(const struct store *st, const char *repo, const char *hex, struct held *h)
{
    struct stat sb;
    memset(h, 0, sizeof(*h));
    int fd = store_open_blob_sync(st, hex, &sb);
    if (fd < 0) return;
    if ((uint64_t)sb.st_size <= RELAY_MANIFEST_MAX && (h->body = malloc(sb.st_size + 1))) {
        ssize_t n = pread(fd, h->body, (size_t)sb.st_size, 0);
        h->len = n > 0 ? (size_t)n : 0;
        h->stored = n == sb.st_size;
        /* A read of a manifest is a pull: its access time, as a blob's (expire.h). */
        struct timespec times[2] = {{.tv_nsec = UTIME_NOW}, {.tv_nsec = UTIME_OMIT}};
        futimens(fd, times);
    }
    close(fd);
    int dir = h->stored ? media_dir(st, hex, false) : -1;
    int tfd = dir >= 0 ? store_file_open_at(dir, hex, &sb) : -1;
    if (dir >= 0) close(dir);
    ssize_t n = tfd >= 0 ? read(tfd, h->media_type, MEDIA_MAX - 1) : -1;
    if (tfd >= 0) close(tfd);
    if (n <= 0) { /* kept without its type (or it went): not a manifest we can answer for */
        h->stored = false;
        free(h->body);
        h->body = NULL;
        h->len = 0;
        return;
    }
    h->media_type[n] = '\0';
    h->linked = repo != NULL && links_exists_sync(st, LINKS_REVISION, repo, hex) == 0;
    h->n_blobs = manifest_refs(h->body, h->len, false, h->refs, 64);
    h->n_refs = h->n_blobs + manifest_refs(h->body, h->len, true, h->refs + h->n_blobs, 64);
    h->refs_stored = true;
    for (size_t i = 0; i < h->n_refs && h->refs_stored; i++)
        h->refs_stored = store_stat_blob_sync(st, h->refs[i], &sb) == 0;
}

/* The manifest is in the repository (the origin said so): so is what it names, for the
 * decision cache's allow time (manifest.h). */
static void vouch(struct manifest_service *ms, const char *origin, const char *repo,
                  char (*refs)[65], size_t n_refs, size_t n_blobs)
{
    char action[96];
    for (size_t i = 0; ms->auth != NULL && repo != NULL && i < n_refs; i++) {
        snprintf(action, sizeof(action), "%s sha256:%s", i < n_blobs ? "blob" : "manifest",
                 refs[i]);
        auth_cache_store(ms->auth, origin, NULL, 0, repo, strlen(repo), action, 200, NULL, 0,
                         mono_ms());
    }
}

/* ---- the disk: keeping a manifest --------------------------------------------------------- */

struct store_job {
    uv_work_t work;
    struct manifest_service *ms;
    char repo[REGISTRY_NAME_MAX + 1];
    char tag[REGISTRY_REFERENCE_MAX + 1]; /* "" for none */
    char hex[65];
    char media_type[MEDIA_MAX];
    char origin[512];
    char *body; /* NULL: only the tag link */
    size_t len;
    bool committed; /* the blob is new in the store */
    int rc;
    char (*refs)[65]; /* what it names: blobs [0, n_blobs), then platform manifests */
    size_t n_refs, n_blobs;
    manifest_kept_fn done; /* may be NULL */
    void *done_ud;
};

/* Writes the manifest as a blob (unless it is there), its media type and its links. */
static void store_work(uv_work_t *w)
{
    struct store_job *j = w->data;
    const struct store *st = j->ms->store;
    struct stat sb;
    j->rc = 0;
    if (j->body != NULL) {
        if (store_stat_blob_sync(st, j->hex, &sb) != 0) {
            char tmp[4096];
            int fd = store_tmp_create_sync(st, j->hex, tmp, sizeof(tmp));
            j->rc = fd < 0 ? fd : 0;
            if (fd >= 0) {
                j->rc = pwrite(fd, j->body, j->len, 0) == (ssize_t)j->len ? 0 : -EIO;
                if (j->rc == 0)
                    j->rc = store_commit_sync(st, fd, tmp, j->hex);
                else
                    unlink(tmp);
                close(fd);
                j->committed = j->rc == 0;
            }
        }
        if (j->rc == 0) {
            int dir = media_dir(st, j->hex, true);
            j->rc = dir < 0 ? dir
                            : store_file_replace_at(dir, j->hex, j->media_type,
                                                    strlen(j->media_type), false);
            if (dir >= 0) close(dir);
        }
        if (j->rc == 0) j->rc = links_write_sync(st, LINKS_REVISION, j->repo, j->hex);
        if ((j->refs = calloc(MAX_REFS, sizeof(*j->refs))) != NULL) {
            j->n_blobs = manifest_refs(j->body, j->len, false, j->refs, MAX_REFS);
            j->n_refs = j->n_blobs + manifest_refs(j->body, j->len, true, j->refs + j->n_blobs,
                                                   MAX_REFS - j->n_blobs);
        }
        /* The origin's answer vouches for the blobs the manifest names (manifest.h): they
         * are in the repository, as its _layers links say (platform manifests get their
         * revision links when they are kept). */
        for (size_t i = 0; j->rc == 0 && i < j->n_blobs; i++)
            links_write_sync(st, LINKS_LAYER, j->repo, j->refs[i]);
    }
    if (j->rc == 0 && j->tag[0] != '\0') j->rc = links_tag_write_sync(st, j->repo, j->tag, j->hex);
}

static void store_done(uv_work_t *w, int status)
{
    struct store_job *j = w->data;
    struct manifest_service *ms = j->ms;
    if (status == 0 && j->rc != 0)
        log_msg(LOG_WARN, "cannot keep manifest sha256:%s of %s: %s", j->hex, j->repo,
                strerror(-j->rc));
    if (status == 0 && j->rc == 0 && j->body != NULL) ms->stats.stored++;
    if (j->committed && ms->on_commit) ms->on_commit(ms->commit_ud, j->hex, j->len);
    if (j->rc == 0) vouch(ms, j->origin, j->repo, j->refs, j->n_refs, j->n_blobs);
    if (j->done != NULL) j->done(j->done_ud, status != 0 ? status : j->rc);
    free(j->refs);
    free(j->body);
    free(j);
}

int manifest_keep(struct manifest_service *ms, size_t entry, const char *repo, const char *tag,
                  const char *hex, char *body, size_t len, const char *media_type,
                  manifest_kept_fn done, void *ud)
{
    struct store_job *j = calloc(1, sizeof(*j));
    if (j == NULL || repo == NULL) {
        free(j);
        free(body);
        return UV_ENOMEM;
    }
    j->ms = ms;
    snprintf(j->repo, sizeof(j->repo), "%s", repo);
    snprintf(j->tag, sizeof(j->tag), "%s", tag ? tag : "");
    memcpy(j->hex, hex, 65);
    snprintf(j->media_type, sizeof(j->media_type), "%s",
             media_type ? media_type : "application/octet-stream");
    snprintf(j->origin, sizeof(j->origin), "%s", origin_of(ms, entry));
    j->body = body;
    j->len = len;
    j->done = done;
    j->done_ud = ud;
    j->work.data = j;
    int rc = uv_queue_work(ms->loop, &j->work, store_work, store_done);
    if (rc != 0) {
        free(j->body);
        free(j);
    }
    return rc;
}

/* Keeps body (taken) as manifest hex of the request's repository, and tag's link when
 * tag is not NULL. */
static void keep(struct mreq *r, const char *hex, char *body, size_t len, const char *media_type,
                 const char *tag)
{
    manifest_keep(r->ms, r->entry, r->info.req.repository, tag, hex, body, len, media_type, NULL,
                  NULL);
}

/* ---- the end of a request ------------------------------------------------------------------ */

static void free_answer(struct mreq *r)
{
    for (size_t i = 0; i < r->n_hdrs; i++) {
        free((char *)r->hdrs[i].name);
        free((char *)r->hdrs[i].value);
    }
    r->n_hdrs = 0;
    free(r->dcd);
    free(r->challenge);
    free(r->body);
    r->dcd = r->challenge = r->body = NULL;
    r->body_len = r->body_cap = 0;
}

static void release(struct mreq *r)
{
    if (r->up != NULL) chain_cancel(r->up);
    if (r->token_job != NULL) auth_token_job_cancel(r->token_job);
    free_answer(r);
    free(r->held.body);
    for (size_t i = 0; i < r->n_bases; i++)
        free(r->bases[i]);
    free(r->bases);
    r->ms->in_flight--;
    free(r);
}

/* The exchange is answered (or must be closed): free r unless disk work still holds it. */
static void finish(struct mreq *r)
{
    r->done = true;
    if (!r->busy) release(r);
}

static void fail(struct mreq *r, enum registry_error_code code, const char *msg)
{
    if (r->done) return;
    if (r->gone) {
        http_respond_abort(r->x);
    } else {
        log_msg(LOG_WARN, "%s %s: %s", http_req_method(r->x), http_req_target(r->x), msg);
        respond_error(r->x, code, msg, NULL);
    }
    finish(r);
}

static void on_gone(struct http_exchange *x, void *arg)
{
    struct mreq *r = arg;
    r->gone = true;
    if (r->done) return;
    if (r->up != NULL) {
        chain_cancel(r->up);
        r->up = NULL;
    }
    if (r->token_job != NULL) {
        auth_token_job_cancel(r->token_job);
        r->token_job = NULL;
    }
    if (!r->busy) {
        http_respond_abort(r->x);
        finish(r);
    }
}

/* A refusal: status and challenge, as the origin gave them. */
static void refuse(struct mreq *r, int st, const char *challenge)
{
    struct http_header h;
    size_t nh = 0;
    char msg[160];
    int code = st == 401   ? REG_ERR_UNAUTHORIZED
               : st == 403 ? REG_ERR_DENIED
               : st == 404 ? REG_ERR_MANIFEST_UNKNOWN
                           : REG_ERR_DENIED;
    if (challenge != NULL && challenge[0] != '\0') {
        h = (struct http_header){"WWW-Authenticate", 16, challenge, strlen(challenge)};
        nh = 1;
    }
    snprintf(msg, sizeof(msg), "the upstream answered %d for this manifest in this repository", st);
    respond_error_with(r->x, code, st, &h, nh, msg, NULL);
    finish(r);
}

/* Answers with a held manifest (a hit, or stale with the outage policy's yes). */
static void serve_held(struct mreq *r, struct held *h, bool stale, uint64_t age_s)
{
    char digest[72], etag[80];
    snprintf(digest, sizeof(digest), "sha256:%s", r->hex);
    snprintf(etag, sizeof(etag), "\"%s\"", digest);
    struct http_header hd[3] = {
        {"Content-Type", 12, h->media_type, strlen(h->media_type)},
        {"Docker-Content-Digest", 21, digest, strlen(digest)},
        {"Etag", 4, etag, strlen(etag)},
    };
    http_log_set_cache(r->x, "hit");
    if (stale) {
        http_log_set_stale(r->x, age_s);
        outage_count_stale(r->ms->outage, "manifest");
    } else {
        r->ms->stats.hits++;
    }
    pulls_count(r->ms->pulls, r->hex);
    if (!stale)
        vouch(r->ms, origin_of(r->ms, r->entry), r->info.req.repository, h->refs, h->n_refs,
              h->n_blobs);
    if (http_req_is_head(r->x)) {
        http_respond_head(r->x, 200, hd, 3, (int64_t)h->len);
        http_respond_end(r->x);
    } else if (http_respond_full(r->x, 200, hd, 3, h->body, h->len) != 0) {
        http_respond_abort(r->x);
    }
    finish(r);
}

/* ---- upstream -------------------------------------------------------------------------------- */

static void outage_begin(struct mreq *r);

static void up_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                    int64_t content_length)
{
    struct mreq *r = ud;
    r->status = status;
    r->content_length = content_length;
    for (size_t i = 0; i < n; i++) {
        const struct http_header *h = &hdrs[i];
        if (http_header_is(h, "Docker-Content-Digest") && r->dcd == NULL)
            r->dcd = strndup(h->value, h->value_len);
        if (http_header_is(h, "WWW-Authenticate") && r->challenge == NULL)
            r->challenge = strndup(h->value, h->value_len);
        if (!relay_response_header(h) || r->n_hdrs >= MAX_RELAYED) continue;
        char *name = strndup(h->name, h->name_len), *value = strndup(h->value, h->value_len);
        if (name == NULL || value == NULL) {
            free(name);
            free(value);
            continue;
        }
        r->hdrs[r->n_hdrs++] = (struct http_header){name, h->name_len, value, h->value_len};
    }
    if (status < 500 && content_length > (int64_t)RELAY_MANIFEST_MAX) {
        snprintf(r->err_msg, sizeof(r->err_msg),
                 "%s announced a manifest of %lld bytes, more than the %llu allowed",
                 chain_base(r->up), (long long)content_length,
                 (unsigned long long)RELAY_MANIFEST_MAX);
        r->err = UV_E2BIG;
        chain_cancel(r->up);
        r->up = NULL;
        fail(r, REG_ERR_UPSTREAM_FAILED, r->err_msg);
    }
}

static void up_body(void *ud, const char *data, size_t len)
{
    struct mreq *r = ud;
    if (r->body_len + len > RELAY_MANIFEST_MAX) {
        snprintf(r->err_msg, sizeof(r->err_msg), "manifest longer than %llu bytes",
                 (unsigned long long)RELAY_MANIFEST_MAX);
        chain_cancel(r->up);
        r->up = NULL;
        fail(r, REG_ERR_UPSTREAM_FAILED, r->err_msg);
        return;
    }
    if (bytes_append(&r->body, &r->body_len, &r->body_cap, data, len, 16384) != 0) {
        chain_cancel(r->up);
        r->up = NULL;
        fail(r, REG_ERR_INTERNAL, "out of memory");
        return;
    }
}

/* The action under which "this manifest is in this repository" is remembered. */
static void manifest_action(const char *hex, char *buf, size_t len)
{
    snprintf(buf, len, "manifest sha256:%s", hex);
}

/* Remembers what the upstream's answer says about the credential and the manifest. */
static void remember(struct mreq *r, const char *hex)
{
    struct manifest_service *ms = r->ms;
    const char *origin = origin_of(ms, r->entry);
    const char *repo = r->info.req.repository;
    size_t repo_len = repo ? strlen(repo) : 0;
    int st = r->status;
    char action[96];
    if (repo == NULL) return;
    /* The credential's answer, on disk for the outage policy (only its hash). */
    if (!r->token_ok && ((st >= 200 && st < 300) || st == 401 || st == 403)) {
        unsigned char key[32];
        answers_key(origin, r->credential, r->cred_len, repo, repo_len, key);
        answers_record(ms->answers, key, st);
    }
    if (st == 401 && r->cred_len == 0 && r->challenge != NULL)
        answers_challenge_record(ms->answers, origin, r->challenge, strlen(r->challenge));
    if (ms->auth == NULL) return;
    uint64_t now = mono_ms();
    if (st >= 200 && st < 300) {
        if (r->need_credential)
            auth_cache_store(ms->auth, origin, r->credential, r->cred_len, repo, repo_len, "pull",
                             200, NULL, 0, now);
        if (hex != NULL) {
            manifest_action(hex, action, sizeof(action));
            auth_cache_store(ms->auth, origin, NULL, 0, repo, repo_len, action, 200, NULL, 0, now);
        }
    } else if ((st == 401 || st == 403) && r->need_credential) {
        auth_cache_store(ms->auth, origin, r->credential, r->cred_len, repo, repo_len, "pull", st,
                         r->challenge, r->challenge ? strlen(r->challenge) : 0, now);
    } else if (st == 404 && r->by_digest) {
        manifest_action(r->hex, action, sizeof(action));
        auth_cache_store(ms->auth, origin, NULL, 0, repo, repo_len, action, 404, NULL, 0, now);
    }
}

/* The digest of the answer, as hex: the one asked for, or the origin's for a tag (checked
 * against the body of a GET). NULL when it is not a sha256 digest or does not match. */
static const char *answer_digest(struct mreq *r, char *hex)
{
    bool get = !http_req_is_head(r->x);
    char computed[65] = "";
    if (get) {
        unsigned char bin[32];
        struct digest_sha256 ctx;
        digest_sha256_init(&ctx);
        digest_sha256_update(&ctx, r->body ? r->body : "", r->body_len);
        digest_sha256_final(&ctx, bin);
        digest_hex(bin, computed);
    }
    if (r->dcd != NULL &&
        !(digest_ref_is_sha256(r->dcd, strlen(r->dcd)) && store_hex_valid(r->dcd + 7)))
        return NULL; /* another algorithm: relayed, not kept */
    const char *said = r->by_digest ? r->hex : r->dcd ? r->dcd + 7 : NULL;
    if (r->by_digest && r->dcd != NULL && strcmp(r->dcd + 7, r->hex) != 0) said = NULL;
    if (get) {
        if (said != NULL && strcmp(said, computed) != 0) said = NULL;
        if (said == NULL && r->dcd == NULL && !r->by_digest) said = computed;
        if (said == NULL) {
            r->ms->stats.mismatch++;
            log_msg(LOG_WARN,
                    "%s %s: the manifest from %s hashes to sha256:%s, not the digest "
                    "given: relayed, not kept",
                    http_req_method(r->x), http_req_target(r->x), r->base, computed);
            return NULL;
        }
    }
    if (said == NULL) return NULL;
    memcpy(hex, said, 65);
    return hex;
}

/* Relays the upstream's answer to the client, and keeps what it says. */
static void answered(struct mreq *r)
{
    char hex[65];
    const char *digest = r->status == 200 ? answer_digest(r, hex) : NULL;
    remember(r, digest);
    if (digest != NULL) {
        const char *type = NULL;
        for (size_t i = 0; i < r->n_hdrs; i++)
            if (http_header_is(&r->hdrs[i], "Content-Type")) type = r->hdrs[i].value;
        bool get = !http_req_is_head(r->x);
        char *copy = get ? malloc(r->body_len ? r->body_len : 1) : NULL;
        if (copy != NULL) memcpy(copy, r->body, r->body_len);
        /* A GET keeps the manifest (and a tag's link); a HEAD of a tag, the link. */
        if ((get && copy != NULL) || (!get && !r->by_digest))
            keep(r, hex, copy, r->body_len, type, r->by_digest ? NULL : r->tag);
    }
    if (http_req_is_head(r->x)) {
        http_respond_head(r->x, r->status, r->hdrs, r->n_hdrs, r->content_length);
        http_respond_end(r->x);
    } else if (http_respond_full(r->x, r->status, r->hdrs, r->n_hdrs, r->body ? r->body : "",
                                 r->body_len) != 0) {
        http_respond_abort(r->x);
    }
    finish(r);
}

static void up_done(void *ud, int err)
{
    struct mreq *r = ud;
    if (r->done) return;
    if (err < 0 || r->status >= 500)
        snprintf(r->err_msg, sizeof(r->err_msg), "upstream failed: %s",
                 r->status >= 500 ? "it answered a server error" : chain_error_message(r->up));
    if (r->up != NULL) {
        snprintf(r->base, sizeof(r->base), "%s", chain_base(r->up));
        http_log_set_upstream(r->x, r->base);
    }
    r->up = NULL;
    if (r->gone) {
        http_respond_abort(r->x);
        finish(r);
        return;
    }
    if ((err < 0 && r->status == 0) || r->status >= 500) {
        r->err = err < 0 ? err : UV_EPROTO;
        outage_begin(r); /* every upstream failed */
        return;
    }
    if (err < 0) { /* broke off after the head: nothing went out yet, a clean error */
        fail(r, REG_ERR_UPSTREAM_FAILED, r->err_msg);
        return;
    }
    answered(r);
}

static int ensure_bases(struct mreq *r)
{
    if (r->bases != NULL) return 0;
    size_t n;
    const char *const *bases = upstreams_select(r->ms->upstreams, &r->info.req, r->entry, &n);
    r->bases = calloc(n ? n : 1, sizeof(*r->bases));
    for (size_t i = 0; r->bases != NULL && i < n; i++) {
        r->bases[i] = strdup(bases[i]);
        r->n_bases += r->bases[i] != NULL;
    }
    return r->bases != NULL && r->n_bases == n ? 0 : UV_ENOMEM;
}

static void go_upstream(struct mreq *r)
{
    struct upstream_header fwd[MAX_FORWARDED];
    char scratch[16384 + MAX_FORWARDED * 2];
    static const struct upstream_callbacks cbs = {up_head, up_body, up_done};
    int rc = ensure_bases(r);
    r->ms->stats.upstream++;
    if (rc == 0) {
        struct chain_spec spec = {
            .method = http_req_is_head(r->x) ? "HEAD" : "GET",
            .bases = (const char *const *)r->bases,
            .n_bases = r->n_bases,
            .target = http_req_target(r->x),
            .headers = fwd,
            .n_headers =
                upstreams_forward_headers(r->x, true, fwd, MAX_FORWARDED, scratch, sizeof(scratch)),
            .max_redirects = 5,
        };
        rc = chain_request(upstreams_pool(r->ms->upstreams), &spec, &cbs, r, &r->up);
    }
    if (rc < 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "cannot ask the upstream: %s", uv_strerror(rc));
        fail(r, REG_ERR_UNAVAILABLE, msg);
    }
}

/* ---- a hit ----------------------------------------------------------------------------------- */

static void hit_work(uv_work_t *w)
{
    struct mreq *r = w->data;
    held_read(r->ms->store, r->info.req.repository, r->hex, &r->held);
}

static void hit_done(uv_work_t *w, int status)
{
    struct mreq *r = w->data;
    r->busy = false;
    if (r->gone) {
        http_respond_abort(r->x);
        finish(r);
        return;
    }
    if (status == 0 && r->held.stored) {
        serve_held(r, &r->held, false, 0);
        return;
    }
    go_upstream(r); /* not (or no longer) on disk */
}

/* ---- authorization, by digest ---------------------------------------------------------------- */

static void authorize_manifest(struct mreq *r);

static bool token_verdict(struct mreq *r, const struct auth_token_verdict *v)
{
    struct manifest_service *ms = r->ms;
    const char *repo = r->info.req.repository;
    if (v->rc == 0) {
        r->need_credential = false;
        r->token_ok = true;
        return true;
    }
    char ch[1024];
    log_msg(LOG_INFO, "token refused for %s: %s", repo, v->why);
    auth_challenge(ms->cfg->auth_token_realm, ms->cfg->auth_token_service, repo, strlen(repo), ch,
                   sizeof(ch));
    struct http_header h = {"WWW-Authenticate", 16, ch, strlen(ch)};
    respond_error_with(r->x, REG_ERR_UNAUTHORIZED, 401, &h, 1, "authentication required", v->why);
    finish(r);
    return false;
}

static void token_checked(void *arg, const struct auth_token_verdict *v)
{
    struct mreq *r = arg;
    r->token_job = NULL;
    if (r->gone) {
        http_respond_abort(r->x);
        finish(r);
        return;
    }
    if (token_verdict(r, v)) {
        if (r->outage)
            outage_begin(r);
        else
            authorize_manifest(r);
    }
}

/* Checks the client's token (auth.token): true when it decided now and the request goes on. */
static bool check_token(struct mreq *r)
{
    const char *repo = r->info.req.repository;
    struct auth_token_query q = {r->credential, r->cred_len,         repo,     strlen(repo),
                                 "pull",        (int64_t)time(NULL), mono_ms()};
    struct auth_token_verdict v;
    if (auth_token_check(r->ms->verifier, &q, &v, token_checked, r, &r->token_job) ==
        AUTH_TOKEN_PENDING)
        return false;
    return token_verdict(r, &v);
}

/* Two facts open the disk, as for a blob: the credential may pull the repository, and the
 * manifest is in it. Either refusal answers at once; anything unknown asks upstream. */
static void authorize_manifest(struct mreq *r)
{
    struct manifest_service *ms = r->ms;
    const char *origin = origin_of(ms, r->entry);
    const char *repo = r->info.req.repository;
    size_t repo_len = strlen(repo);
    int st;
    const char *challenge;
    char action[96];
    if (!r->token_ok && ms->auth != NULL &&
        auth_cache_lookup(ms->auth, origin, r->credential, r->cred_len, repo, repo_len, "pull",
                          mono_ms(), &st, &challenge)) {
        if (st != 200) {
            refuse(r, st, challenge);
            return;
        }
        r->need_credential = false;
    }
    bool in_repo = false;
    manifest_action(r->hex, action, sizeof(action));
    if (ms->auth != NULL && auth_cache_lookup(ms->auth, origin, NULL, 0, repo, repo_len, action,
                                              mono_ms(), &st, &challenge)) {
        if (st == 404 && !r->need_credential) {
            refuse(r, 404, NULL);
            return;
        }
        in_repo = st == 200;
    }
    if (r->need_credential || !in_repo) {
        go_upstream(r);
        return;
    }
    r->busy = true;
    r->work.data = r;
    if (uv_queue_work(ms->loop, &r->work, hit_work, hit_done) != 0) {
        r->busy = false;
        go_upstream(r);
    }
}

/* ---- the outage ------------------------------------------------------------------------------ */

static void outage_work(uv_work_t *w)
{
    struct mreq *r = w->data;
    const struct store *st = r->ms->store;
    const char *repo = r->info.req.repository;
    outage_auth_sync(r->ms->outage, &r->oa);
    answers_challenge_sync(r->ms->answers, origin_of(r->ms, r->entry), r->challenge_kept,
                           sizeof(r->challenge_kept));
    if (!r->by_digest)
        r->tag_found = links_tag_read_sync(st, repo, r->tag, r->hex, &r->tag_when) == 0;
    if (r->by_digest || r->tag_found) held_read(st, repo, r->hex, &r->held);
}

static void outage_done(uv_work_t *w, int status)
{
    struct mreq *r = w->data;
    struct manifest_service *ms = r->ms;
    char digest[72];
    r->busy = false;
    if (r->gone) {
        http_respond_abort(r->x);
        finish(r);
        return;
    }
    double now = wall_now();
    snprintf(digest, sizeof(digest), "sha256:%s", r->hex);
    struct policy_outage known = {
        .upstream = r->base[0] ? r->base : NULL,
        .error = r->err_msg,
        .has_tag = r->tag_found,
        .tag_digest = digest,
        .tag_age = r->tag_found && now > r->tag_when ? now - r->tag_when : 0,
        .has_manifest = r->by_digest || r->tag_found,
        .manifest_digest = digest,
        .manifest_stored = r->held.stored,
        .manifest_in_repository = r->held.linked,
        .manifest_blobs_stored = r->held.refs_stored,
    };
    uint64_t age = 0;
    int refused = 0;
    enum outage_answer a =
        status != 0 ? OUTAGE_FAIL
                    : outage_decide(ms->outage, &r->info.req, &known, &r->oa,
                                    r->held.stored && r->held.linked, now, &age, &refused);
    if (a == OUTAGE_SERVE) {
        log_msg(LOG_INFO,
                "%s %s: every upstream failed (%s): served what is held, %" PRIu64
                " s old (the on_upstream_failure policy)",
                http_req_method(r->x), http_req_target(r->x), r->err_msg, age);
        serve_held(r, &r->held, true, age);
        return;
    }
    if (a == OUTAGE_REFUSE) {
        refuse(r, refused, r->challenge_kept[0] ? r->challenge_kept : NULL);
        return;
    }
    if (r->status >= 500) { /* the origin's own answer, as before */
        answered(r);
        return;
    }
    fail(r,
         r->err == UV_ECONNREFUSED || r->err == UV_EHOSTUNREACH || r->err == UV_ENETUNREACH ||
                 r->err == UV_EAI_NONAME || r->err == UV_EAI_AGAIN || r->err == UV_ECONNRESET ||
                 r->err == UV_ETIMEDOUT
             ? REG_ERR_UNAVAILABLE
             : REG_ERR_UPSTREAM_FAILED,
         r->err_msg);
}

/* Every upstream failed: what does the disk hold, and what does the policy say? */
static void outage_begin(struct mreq *r)
{
    struct manifest_service *ms = r->ms;
    if (ms->outage == NULL || r->info.req.repository == NULL) {
        r->outage = true;
        r->busy = false;
        outage_done(&(uv_work_t){.data = r}, UV_ECANCELED);
        return;
    }
    if (!r->outage) {
        r->outage = true;
        /* With auth.token the credential is checked here, and needs no remembered answer. */
        if (ms->verifier != NULL && !r->token_ok && !check_token(r)) return;
    }
    outage_auth_init(&r->oa, origin_of(ms, r->entry), r->credential, r->cred_len,
                     r->info.req.repository, strlen(r->info.req.repository), r->token_ok);
    outage_auth_queued(ms->outage, &r->oa);
    free(r->held.body);
    memset(&r->held, 0, sizeof(r->held));
    r->busy = true;
    r->work.data = r;
    if (uv_queue_work(ms->loop, &r->work, outage_work, outage_done) != 0) {
        r->busy = false;
        outage_done(&r->work, UV_ECANCELED);
    }
}

/* ---- entry ---------------------------------------------------------------------------------- */

void manifest_handle(struct manifest_service *ms, struct http_exchange *x,
                     const struct registry_route *route, size_t entry)
{
    struct mreq *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        respond_error(x, REG_ERR_INTERNAL, "out of memory", NULL);
        return;
    }
    ms->in_flight++;
    r->ms = ms;
    r->x = x;
    r->entry = entry;
    r->need_credential = true;
    upstreams_req_info_init(&r->info, x, route, entry);
    r->by_digest = route->reference_is_digest;
    if (r->by_digest) {
        memcpy(r->hex, route->reference + 7, 64);
        r->hex[64] = '\0';
    } else {
        snprintf(r->tag, sizeof(r->tag), "%.*s", (int)route->reference_len, route->reference);
    }
    const struct http_header *authz = http_req_header(x, "Authorization");
    if (authz != NULL) {
        r->credential = authz->value;
        r->cred_len = authz->value_len;
    }
    http_exchange_on_gone(x, on_gone, r);
    if (!r->by_digest || r->info.req.repository == NULL) {
        go_upstream(r); /* a tag is always asked of the origin */
        return;
    }
    if (ms->verifier != NULL && !check_token(r)) return;
    authorize_manifest(r);
}

/* ---- /v2/ while the upstreams fail ------------------------------------------------------------
 */

struct base_job {
    uv_work_t work;
    struct manifest_service *ms;
    struct http_exchange *x;
    struct policy_request req;
    char origin[512];
    char why[400];
    int err;
    char challenge[ANSWERS_CHALLENGE_MAX];
    bool gone;
};

static void base_gone(struct http_exchange *x, void *arg)
{
    ((struct base_job *)arg)->gone = true;
}

static void base_work(uv_work_t *w)
{
    struct base_job *j = w->data;
    if (!answers_challenge_sync(j->ms->answers, j->origin, j->challenge, sizeof(j->challenge)))
        j->challenge[0] = '\0';
}

static void base_done(uv_work_t *w, int status)
{
    struct base_job *j = w->data;
    struct http_exchange *x = j->x;
    struct outage_auth none = {0};
    struct policy_outage known = {.upstream = NULL, .error = j->why};
    uint64_t age;
    int refused;
    if (j->gone) {
        http_respond_abort(x);
    } else if (j->ms->outage != NULL && outage_decide(j->ms->outage, &j->req, &known, &none, true,
                                                      wall_now(), &age, &refused) == OUTAGE_SERVE) {
        outage_count_stale(j->ms->outage, "base");
        http_log_set_stale(x, 0);
        if (http_req_header(x, "Authorization") == NULL && j->challenge[0] != '\0') {
            struct http_header h = {"WWW-Authenticate", 16, j->challenge, strlen(j->challenge)};
            respond_error_with(x, REG_ERR_UNAUTHORIZED, 401, &h, 1, "authentication required",
                               NULL);
        } else {
            struct http_header h = {"Content-Type", 12, "application/json; charset=utf-8", 31};
            if (http_respond_full(x, 200, &h, 1, "{}", 2) != 0) http_respond_abort(x);
        }
    } else {
        log_msg(LOG_WARN, "%s %s: %s", http_req_method(x), http_req_target(x), j->why);
        respond_error(x,
                      j->err == UV_ECONNREFUSED || j->err == UV_EHOSTUNREACH ||
                              j->err == UV_ENETUNREACH || j->err == UV_EAI_NONAME ||
                              j->err == UV_EAI_AGAIN || j->err == UV_ECONNRESET
                          ? REG_ERR_UNAVAILABLE
                          : REG_ERR_UPSTREAM_FAILED,
                      j->why, NULL);
    }
    (void)status;
    j->ms->in_flight--;
    free(j);
}

void manifest_base_fallback(void *manifest_service, struct http_exchange *x,
                            const struct policy_request *req, size_t entry, int err,
                            const char *why)
{
    struct manifest_service *ms = manifest_service;
    struct base_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        respond_error(x, REG_ERR_UNAVAILABLE, why, NULL);
        return;
    }
    ms->in_flight++;
    j->ms = ms;
    j->x = x;
    j->req = (struct policy_request){.method = req->method, .kind = "base"};
    j->err = err;
    snprintf(j->origin, sizeof(j->origin), "%s", origin_of(ms, entry));
    snprintf(j->why, sizeof(j->why), "%s", why);
    http_exchange_on_gone(x, base_gone, j);
    j->work.data = j;
    if (uv_queue_work(ms->loop, &j->work, base_work, base_done) != 0) base_done(&j->work, -1);
}
