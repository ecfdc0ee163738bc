/*
 * blob.c: serving blobs: authorize with the upstream, then a hit from disk or a miss
 * through a fetch. See blob.h.
 *
 * A request's body is pumped: read a chunk at `pos` (from the file with uv_fs_read on
 * the thread pool, or from a pass-through window), write it to the client, and when the
 * write is done read the next one. A follower of a running fetch waits for the fetch's
 * next progress when it has caught up. One chunk buffer per request, nothing else.
 */
#include "cache/blob.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "access/auth.h"
#include "access/grant.h"
#include "access/keyring.h"
#include "cache/budget.h"
#include "cache/in_use.h"
#include "cache/answers.h"
#include "cache/links.h"
#include "cache/outage.h"
#include "cache/pulls.h"
#include "net/chain.h"
#include "base/config.h"
#include "cache/expire.h"
#include "base/log.h"
#include "registry/respond.h"
#include "base/digest.h"

#define BLOB_CHUNK (256 * 1024)
/* A miss of at least this many bytes sends its head as soon as the upstream's GET
 * answered 200, before the first bytes are on disk (time to first byte); a smaller one
 * waits for its first bytes, so a body that fails at once is still a clean registry
 * error. Either way a GET that the upstream refuses is a clean error. */
#define BLOB_EARLY_HEAD_MIN (1024 * 1024)
#define BLOB_MAX_FORWARDED 24
#define BLOB_FD_CACHE 128
/* Chunks that pump sends in a row when the socket takes each at once (see pump). */
#define BLOB_SYNC_CHUNKS 4
/* Stored blobs up to this size are kept in memory with their cached descriptor. */
#define BLOB_SMALL_COPY 4096

struct blob_service {
    double ttl_s; /* the configured blobttl, for how often a pull refreshes its time */
    /* Authorization: decisions remembered, and local token verification (auth.token). */
    struct auth_cache *auth;
    struct auth_verifier *verifier;
    struct keyring *grant_keys; /* the front's keys: grants are verified here */
    const struct config *cfg;
    struct blob_auth_stats auth_stats;
    struct budget *budget;   /* may be NULL */
    struct pulls *pulls;     /* may be NULL */
    struct answers *answers; /* the credentials' answers on disk; may be NULL */
    struct outage *outage;   /* when every upstream fails; may be NULL */
    blob_admit_fn admit;     /* may be NULL: store every blob */
    void *admit_ud;
    /* Stored blobs open for reading now, and by how many requests: not evicted, not
     * expired. The process's table (shared by the loops), or this service's own. */
    struct in_use *in_use;
    bool own_in_use;
    /* Descriptors of stored blobs kept open: a hot hit needs no open/fstat/close on the
     * thread pool. An entry is checked (fstat: still linked?) at each use. */
    struct {
        char hex[DIGEST_SHA256_HEX_LEN + 1];
        uv_file fd;
        unsigned refs;
        uint64_t used;
        bool stale;          /* unlinked: closed when its last reader is done */
        uint64_t checked_ms; /* the loop time of the last fstat that found it linked */
        struct stat sb;      /* what that fstat said */
        char *bytes;         /* a small blob's whole content, read once (fdc_small) */
        size_t n_bytes;
    } fdc[BLOB_FD_CACHE];
    uint64_t fdc_clock;
    uv_loop_t *loop;
    struct store *store;
    struct fetch_manager *fetches;
    struct upstreams *upstreams;
};

struct blob_req {
    struct blob_service *bs;
    unsigned reading; /* counts of this request in the in-use table (reading_begin) */
    struct http_exchange *x;
    char hex[DIGEST_SHA256_HEX_LEN + 1];
    char digest[DIGEST_SHA256_REF_LEN + 1];
    char **bases; /* where this request's upstream requests go, in order (asked of the
                     select_upstream policy at the first upstream request, not before) */
    size_t n_bases;
    size_t entry;                   /* the upstreams entry: decisions are remembered per origin */
    struct upstreams_req_info info; /* the request as the policies see it */

    struct chain_req *auth;
    struct auth_token_job *token_job;  /* auth.token: a check on the thread pool */
    struct keyring_check *grant_check; /* a redirect grant being verified */
    int auth_status;
    bool need_credential;   /* the upstream's answer decides the credential too */
    bool token_ok;          /* auth.token verified the credential here */
    bool asked_upstream;    /* a HEAD went upstream for this request (never twice) */
    const char *credential; /* the client's Authorization value (the exchange owns it) */
    size_t credential_len;
    bool waiting_size;  /* a follower that waits for its fetch's length */
    bool admit_at_head; /* this request started the fetch without a length: admit at its head */
    int64_t size;       /* from the upstream's HEAD, -1 when it gave none */
    char *challenge;

    /* What is sent: [pos, end) of the blob; end is UINT64_MAX while the size is unknown. */
    int status;
    uint64_t pos, end;
    uint64_t total;
    bool head_ready;

    uv_file fd;
    bool own_fd;
    int fdc_slot; /* the descriptor cache entry used, or -1 */
    struct fetch *fetch;
    struct fetch_follower follower;
    bool following; /* follower is in the fetch's list */
    struct fetch_waiter waiter;

    char *buf;
    size_t buf_cap;
    void *span; /* the fetch's memory being sent (fetch_span_borrow), or NULL */
    uv_fs_t fs;
    uv_work_t hit_work; /* the store's open (or stat, for a HEAD) of the stored blob */
    struct stat hit_sb;
    int hit_result;
    bool hit_stat_only; /* a HEAD: the size is all it needs */
    bool rechecked;     /* the store was looked at again once no fetch was found */
    bool fs_busy;
    bool writing;
    bool gone;
    bool done;

    /* Every upstream failed: what the disk holds (outage.h), gathered on the pool. */
    struct outage_auth oa;
    bool held_stored, held_linked;
    char outage_msg[400];
    int outage_err;
    char challenge_kept[ANSWERS_CHALLENGE_MAX];
};

static void pump(struct blob_req *r);

struct blob_service *blob_service_new(uv_loop_t *loop, struct store *store,
                                      struct fetch_manager *fetches, struct upstreams *upstreams)
{
    struct blob_service *bs = calloc(1, sizeof(*bs));
    if (bs == NULL) return NULL;
    bs->loop = loop;
    for (int i = 0; i < BLOB_FD_CACHE; i++)
        bs->fdc[i].fd = -1;
    bs->store = store;
    bs->fetches = fetches;
    bs->upstreams = upstreams;
    bs->in_use = in_use_new();
    bs->own_in_use = true;
    if (bs->in_use == NULL) {
        free(bs);
        return NULL;
    }
    return bs;
}

void blob_service_set_in_use(struct blob_service *bs, struct in_use *table)
{
    if (bs->own_in_use) in_use_free(bs->in_use);
    bs->in_use = table;
    bs->own_in_use = false;
}

void blob_service_set_auth(struct blob_service *bs, const struct config *cfg,
                           struct auth_cache *cache, struct auth_verifier *verifier)
{
    bs->cfg = cfg;
    bs->auth = cache;
    bs->verifier = verifier;
}

const struct blob_auth_stats *blob_auth_stats(const struct blob_service *bs)
{
    return &bs->auth_stats;
}

void blob_service_set_grants(struct blob_service *bs, struct keyring *keys)
{
    bs->grant_keys = keys;
}

void blob_service_set_budget(struct blob_service *bs, struct budget *budget)
{
    bs->budget = budget;
}

void blob_service_set_pulls(struct blob_service *bs, struct pulls *pulls)
{
    bs->pulls = pulls;
}

void blob_service_set_outage(struct blob_service *bs, struct answers *answers,
                             struct outage *outage)
{
    bs->answers = answers;
    bs->outage = outage;
}

void blob_service_set_admit(struct blob_service *bs, blob_admit_fn admit, void *ud)
{
    bs->admit = admit;
    bs->admit_ud = ud;
}

/* --- Links: the origin confirmed a blob in a repository ---------------------------- */

struct link_job {
    uv_work_t work;
    const struct store *store;
    char repo[REGISTRY_NAME_MAX + 1];
    char hex[65];
    int result;
};

static void link_work(uv_work_t *w)
{
    struct link_job *j = w->data;
    j->result = links_write_sync(j->store, LINKS_LAYER, j->repo, j->hex);
}

static void link_done(uv_work_t *w, int status)
{
    struct link_job *j = w->data;
    if (status == 0 && j->result != 0)
        log_msg(LOG_WARN, "cannot record blob sha256:%s in repository %s: %s", j->hex, j->repo,
                strerror(-j->result));
    free(j);
}

/* Writes repositories/<repo>/_layers/sha256/<hex>/link on the thread pool (links.h). */
static void link_blob(struct blob_req *r)
{
    if (r->info.req.repository == NULL) return;
    struct link_job *j = calloc(1, sizeof(*j));
    if (j == NULL) return;
    j->store = r->bs->store;
    snprintf(j->repo, sizeof(j->repo), "%s", r->info.req.repository);
    memcpy(j->hex, r->hex, 65);
    j->work.data = j;
    if (uv_queue_work(r->bs->loop, &j->work, link_work, link_done) != 0) free(j);
}

bool blob_service_in_use(const struct blob_service *bs, const char *hex)
{
    return in_use_has(bs->in_use, hex);
}

/* The request reads the stored blob (or will, once its fetch commits): it must not be
 * evicted or expired under it. Each call is undone by one reading_end. */
static void reading_begin(struct blob_req *r)
{
    /* Without memory the blob may be deleted while it is read: the reader's descriptor
     * keeps its bytes. */
    if (in_use_add(r->bs->in_use, r->hex) == 0) r->reading++;
}

static void reading_end(struct blob_req *r)
{
    if (r->reading == 0) return;
    r->reading--;
    in_use_remove(r->bs->in_use, r->hex);
}

static void close_fs_cb(uv_fs_t *req);

static void fdc_close(struct blob_service *bs, int i)
{
    uv_fs_t *req = malloc(sizeof(*req));
    if (req == NULL || uv_fs_close(bs->loop, req, bs->fdc[i].fd, close_fs_cb) != 0) {
        free(req);
        close(bs->fdc[i].fd);
    }
    free(bs->fdc[i].bytes);
    memset(&bs->fdc[i], 0, sizeof(bs->fdc[i]));
    bs->fdc[i].fd = -1;
}

/*
 * A cached descriptor of blob hex that still names a stored file: its slot (a reference
 * taken) and its stat in *sb; -1 when there is none.
 *
 * fstat of an open descriptor reads the inode in memory (it does not wait for the disk);
 * nlink 0 says that the blob was expired, evicted or repaired away. Requests for one
 * blob come in bursts (a loop turn answers tens of hits), and the fstat was 7% of a hit's
 * CPU: its answer serves the requests of the same loop time (uv_now, one millisecond at
 * most). An unlink in that millisecond is seen a millisecond later, as one just after
 * an fstat always was: a response that began goes on from the open descriptor either way.
 */
static int fdc_get(struct blob_service *bs, const char *hex, struct stat *sb)
{
    uint64_t now_ms = uv_now(bs->loop);
    for (int i = 0; i < BLOB_FD_CACHE; i++) {
        if (bs->fdc[i].hex[0] == '\0' || bs->fdc[i].stale ||
            memcmp(bs->fdc[i].hex, hex, DIGEST_SHA256_HEX_LEN))
            continue;
        if (bs->fdc[i].checked_ms != now_ms || now_ms == 0) {
            if (fstat(bs->fdc[i].fd, sb) != 0 || sb->st_nlink == 0) {
                if (bs->fdc[i].refs == 0)
                    fdc_close(bs, i);
                else
                    bs->fdc[i].stale = true;
                return -1;
            }
            bs->fdc[i].sb = *sb;
            bs->fdc[i].checked_ms = now_ms;
        } else {
            *sb = bs->fdc[i].sb;
        }
        bs->fdc[i].refs++;
        bs->fdc[i].used = ++bs->fdc_clock;
        return i;
    }
    return -1;
}

/* Keeps fd (just opened for hex) in the cache; returns its slot (one reference taken),
 * or -1 when every slot is in use (the caller keeps and closes the fd itself). */
static int fdc_put(struct blob_service *bs, const char *hex, uv_file fd)
{
    int victim = -1;
    for (int i = 0; i < BLOB_FD_CACHE; i++) {
        if (bs->fdc[i].hex[0] == '\0' && bs->fdc[i].refs == 0) {
            victim = i;
            break;
        }
        if (bs->fdc[i].refs == 0 && (victim < 0 || bs->fdc[i].used < bs->fdc[victim].used))
            victim = i;
    }
    if (victim < 0) return -1;
    if (bs->fdc[victim].hex[0] != '\0') fdc_close(bs, victim);
    memcpy(bs->fdc[victim].hex, hex, DIGEST_SHA256_HEX_LEN + 1);
    bs->fdc[victim].fd = fd;
    bs->fdc[victim].refs = 1;
    bs->fdc[victim].stale = false;
    bs->fdc[victim].used = ++bs->fdc_clock;
    bs->fdc[victim].checked_ms = 0; /* fstat at its next use */
    return victim;
}

static void fdc_release(struct blob_service *bs, int i)
{
    if (--bs->fdc[i].refs == 0 && bs->fdc[i].stale) fdc_close(bs, i);
}

/*
 * The whole content of the small blob (at most BLOB_SMALL_COPY bytes) of cache slot i,
 * whose size is size: read from the page cache once, then served from memory (a cached
 * 1 KiB hit was one preadv2 of four syscalls). The bytes are the file's, and the file
 * is never written once stored: they stay right for as long as the slot names the
 * blob, and go with it (fdc_close). NULL when the blob is larger, or its bytes are not
 * in the page cache (RWF_NOWAIT), or memory ran out: then the file is read as before.
 */
static const char *fdc_small(struct blob_service *bs, int i, uint64_t size)
{
    if (bs->fdc[i].bytes != NULL) return bs->fdc[i].n_bytes == size ? bs->fdc[i].bytes : NULL;
    if (size == 0 || size > BLOB_SMALL_COPY) return NULL;
    char *copy = malloc((size_t)size);
    if (copy == NULL) return NULL;
    struct iovec iov = {copy, (size_t)size};
    if (preadv2(bs->fdc[i].fd, &iov, 1, 0, RWF_NOWAIT) != (ssize_t)size) {
        free(copy);
        return NULL;
    }
    bs->fdc[i].bytes = copy;
    bs->fdc[i].n_bytes = (size_t)size;
    return copy;
}

void blob_service_set_ttl(struct blob_service *bs, double ttl_s)
{
    bs->ttl_s = ttl_s;
}

static void touch_done(uv_fs_t *req)
{
    if (req->result < 0)
        log_msg(LOG_WARN, "cannot record the pull time of a blob: %s",
                uv_strerror((int)req->result));
    uv_fs_req_cleanup(req);
    free(req);
}

/* Records a pull: the data file's access time is the blob's last-pulled time. When it
 * starts a futime, that time goes to *when too (unless NULL). */
static void touch_times(struct blob_req *r, double atime, double mtime, struct timespec *when)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    if (!expire_touch_due(atime, now, r->bs->ttl_s)) return;
    uv_fs_t *req = malloc(sizeof(*req));
    if (req == NULL || uv_fs_futime(r->bs->loop, req, r->fd, now, mtime, touch_done) != 0) {
        free(req);
        return;
    }
    if (when != NULL) *when = ts;
}

static void touch(struct blob_req *r, const struct stat *sb)
{
    touch_times(r, (double)sb->st_atim.tv_sec + (double)sb->st_atim.tv_nsec / 1e9,
                (double)sb->st_mtim.tv_sec + (double)sb->st_mtim.tv_nsec / 1e9, NULL);
}

void blob_service_free(struct blob_service *bs)
{
    for (int i = 0; i < BLOB_FD_CACHE; i++) {
        if (bs->fdc[i].hex[0] != '\0') close(bs->fdc[i].fd);
        free(bs->fdc[i].bytes);
    }
    if (bs->own_in_use) in_use_free(bs->in_use);
    free(bs);
}

/* --- Range ------------------------------------------------------------------------ */

static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 19) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

enum blob_range_result blob_parse_range(const char *value, size_t len, uint64_t size,
                                        uint64_t *start, uint64_t *end)
{
    while (len > 0 && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        len--;
    }
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;
    if (len < 7 || strncasecmp(value, "bytes=", 6) != 0) return RANGE_NONE;
    const char *spec = value + 6;
    size_t n = len - 6;
    if (memchr(spec, ',', n) != NULL) return RANGE_NONE;
    const char *dash = memchr(spec, '-', n);
    if (dash == NULL) return RANGE_NONE;
    size_t a_len = (size_t)(dash - spec);
    size_t b_len = n - a_len - 1;
    uint64_t a, b;
    if (a_len == 0) {
        /* bytes=-n: the last n bytes. */
        if (!parse_u64(dash + 1, b_len, &b)) return RANGE_NONE;
        if (b == 0 || size == 0) return RANGE_UNSATISFIABLE;
        *start = b >= size ? 0 : size - b;
        *end = size;
        return RANGE_PARTIAL;
    }
    if (!parse_u64(spec, a_len, &a)) return RANGE_NONE;
    if (b_len == 0) {
        b = UINT64_MAX;
    } else {
        if (!parse_u64(dash + 1, b_len, &b)) return RANGE_NONE;
        if (b < a) return RANGE_NONE;
    }
    if (a >= size) return RANGE_UNSATISFIABLE;
    *start = a;
    *end = b >= size - 1 ? size : b + 1;
    return RANGE_PARTIAL;
}

/* --- The end of a request ----------------------------------------------------------- */

static void close_fs_cb(uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    free(req);
}

static void release(struct blob_req *r)
{
    if (r->auth != NULL) {
        chain_cancel(r->auth);
        r->auth = NULL;
    }
    if (r->token_job != NULL) {
        auth_token_job_cancel(r->token_job);
        r->token_job = NULL;
    }
    if (r->grant_check != NULL) {
        keyring_check_cancel(r->grant_check);
        r->grant_check = NULL;
    }
    if (r->fetch != NULL) {
        fetch_unwait(r->fetch, &r->waiter);
        fetch_span_release(r->fetch, r->span);
        r->span = NULL;
        if (r->following) {
            fetch_follow_end(r->fetch, &r->follower);
            reading_end(r);
        }
        fetch_unref(r->fetch);
        r->fetch = NULL;
    }
    if (r->fdc_slot >= 0) {
        reading_end(r);
        fdc_release(r->bs, r->fdc_slot);
        r->fdc_slot = -1;
        r->fd = -1;
    }
    if (r->own_fd && r->fd >= 0) {
        reading_end(r);
        uv_fs_t *req = malloc(sizeof(*req));
        if (req == NULL || uv_fs_close(r->bs->loop, req, r->fd, close_fs_cb) != 0) free(req);
        r->fd = -1;
    }
    for (size_t i = 0; i < r->n_bases; i++)
        free(r->bases[i]);
    free(r->bases);
    free(r->buf);
    free(r->challenge);
    free(r);
}

/* Ends the exchange: normally when the body is complete, else by closing. */
static void finish(struct blob_req *r, bool complete)
{
    if (r->done) return;
    r->done = true;
    struct http_exchange *x = r->x;
    if (r->fetch != NULL && fetch_upstream(r->fetch) != NULL)
        http_log_set_upstream(x, fetch_upstream(r->fetch));
    if (complete)
        http_respond_end(x);
    else
        http_respond_abort(x);
    release(r);
}

/* Fails the request: a clean registry error while nothing was sent, else a close. */
static void fail(struct blob_req *r, int code, const char *message)
{
    if (r->done) return;
    if (!http_exchange_head_sent(r->x) && !r->gone) {
        r->done = true;
        respond_error(r->x, code, message, NULL);
        release(r);
        return;
    }
    http_log_set_error(r->x, message);
    finish(r, false);
}

static void on_gone(struct http_exchange *x, void *arg)
{
    struct blob_req *r = arg;
    r->gone = true;
    if (r->fetch != NULL) fetch_unwait(r->fetch, &r->waiter);
    if (!r->fs_busy && !r->writing) finish(r, false);
}

/* --- Sending ---------------------------------------------------------------------- */

static void set_head(struct blob_req *r)
{
    if (r->head_ready) return;
    r->head_ready = true;
    char range[96];
    char etag[80];
    struct http_header h[6];
    size_t n = 0;
    snprintf(etag, sizeof(etag), "\"%s\"", r->digest);
    h[n++] = (struct http_header){"Content-Type", 12, "application/octet-stream", 24};
    h[n++] = (struct http_header){"Docker-Content-Digest", 21, r->digest, strlen(r->digest)};
    h[n++] = (struct http_header){"ETag", 4, etag, strlen(etag)};
    h[n++] = (struct http_header){"Accept-Ranges", 13, "bytes", 5};
    h[n++] = (struct http_header){"Cache-Control", 13, "max-age=31536000, immutable", 27};
    if (r->status == 206) {
        int l = snprintf(range, sizeof(range), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, r->pos,
                         r->end - 1, r->total);
        h[n++] = (struct http_header){"Content-Range", 13, range, (size_t)l};
    }
    int64_t length = r->end == UINT64_MAX ? -1 : (int64_t)(r->end - r->pos);
    http_respond_head(r->x, r->status, h, n, length);
}

/* Gives back the span of the fetch's memory that was being sent, if any. */
static void span_release(struct blob_req *r)
{
    if (r->span != NULL) {
        fetch_span_release(r->fetch, r->span);
        r->span = NULL;
    }
}

static void write_done(struct http_exchange *x, int status, void *arg)
{
    struct blob_req *r = arg;
    r->writing = false;
    span_release(r);
    if (status < 0 || r->gone) {
        r->gone = true;
        finish(r, false);
        return;
    }
    pump(r);
}

/*
 * Sends data[0..n) (r->buf, or a span of the fetch's memory). With may_try, what the
 * socket takes at once goes out without a write request (plain HTTP only): returns true
 * when all of it did, and the caller goes on at r->pos. Otherwise the rest goes out with
 * a write whose callback (write_done) goes on, and it returns false, as it does when the
 * request ended (r is then freed).
 */
static bool send_from(struct blob_req *r, const char *data, size_t n, bool may_try)
{
    set_head(r);
    r->pos += n;
    if (r->fetch != NULL) {
        r->follower.offset = r->pos;
        fetch_follow_moved(r->fetch);
    }
    int rc = 0;
    if (may_try) {
        rc = http_respond_try(r->x, data, n);
        if (rc >= 0) {
            data += rc;
            n -= (size_t)rc;
            if (n == 0) {
                span_release(r);
                return true;
            }
            rc = 0;
        }
    }
    if (rc == 0) {
        r->writing = true;
        rc = http_respond_body(r->x, data, n, write_done, r);
    }
    if (rc < 0) {
        r->writing = false;
        span_release(r);
        r->gone = true;
        finish(r, false);
    }
    return false;
}

static void read_done(uv_fs_t *req)
{
    struct blob_req *r = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    r->fs_busy = false;
    if (r->gone) {
        finish(r, false);
        return;
    }
    if (n <= 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "reading blob %s at offset %" PRIu64 ": %s", r->digest, r->pos,
                 n == 0 ? "unexpected end of file" : uv_strerror((int)n));
        log_msg(LOG_ERROR, "%s", msg);
        fail(r, REG_ERR_INTERNAL, msg);
        return;
    }
    if (send_from(r, r->buf, (size_t)n, true)) pump(r);
}

static void serve(struct blob_req *r, int64_t size);

static void on_progress(struct fetch_waiter *w)
{
    struct blob_req *r = (struct blob_req *)((char *)w - offsetof(struct blob_req, waiter));
    if (r->done || r->fs_busy || r->writing) return;
    if (fetch_found_stored(r->fetch)) http_log_set_cache(r->x, "hit");
    if (r->waiting_size) {
        if (fetch_size(r->fetch) < 0 && !fetch_head_seen(r->fetch)) {
            fetch_wait(r->fetch, &r->waiter);
            return;
        }
        r->waiting_size = false;
        if (r->admit_at_head) {
            r->admit_at_head = false;
            int64_t size = fetch_size(r->fetch);
            if (!budget_fits(r->bs->budget, size) ||
                !r->bs->admit(r->bs->admit_ud, r->digest, size, &r->info.req))
                fetch_dont_store(r->fetch);
        }
        serve(r, fetch_size(r->fetch)); /* (may wait again: an HTTP/1.0 client, no size) */
        return;
    }
    pump(r);
}

/*
 * Sends the next chunk, or waits for the fetch when it has caught up, or ends the
 * request. Returns true when the chunk went out at once (send_from with may_try) and
 * the caller may go on; false when a callback goes on, or r has been freed.
 */
static bool pump_step(struct blob_req *r, bool may_try)
{
    if (r->done || r->fs_busy || r->writing) return false;
    if (r->gone) {
        finish(r, false);
        return false;
    }
    struct fetch *f = r->fetch;
    if (f != NULL && fetch_state(f) == FETCH_FAILED) {
        char msg[400];
        snprintf(msg, sizeof(msg), "fetching %s failed: %s", r->digest, fetch_error(f));
        fail(r, REG_ERR_UPSTREAM_FAILED, msg);
        return false;
    }
    if (r->end == UINT64_MAX && f != NULL && fetch_complete(f))
        r->end = (uint64_t)fetch_size(f); /* a length that only the end told */
    if (r->pos >= r->end) {
        finish(r, true);
        return false;
    }
    uint64_t avail = f != NULL ? fetch_readable(f) : r->end;
    if (avail > r->end) avail = r->end;
    /* No response completes before the digest matched, whatever its range: its own last
     * byte waits for the verification (the fetch holds back only the blob's last byte). */
    if (f != NULL && !fetch_complete(f) && r->end != UINT64_MAX && avail == r->end) avail--;
    if (r->pos >= avail) {
        if (f != NULL && fetch_head_seen(f) && r->end != UINT64_MAX &&
            r->end - r->pos >= BLOB_EARLY_HEAD_MIN && !http_exchange_head_sent(r->x)) {
            set_head(r); /* the head alone; write_done comes back here to wait */
            r->writing = true;
            if (http_respond_body(r->x, r->buf, 0, write_done, r) == 0) return false;
            r->writing = false;
        }
        fetch_wait(f, &r->waiter);
        return false;
    }
    uint64_t want = avail - r->pos;
    size_t n = want > r->buf_cap ? r->buf_cap : (size_t)want;
    if (f != NULL && fetch_in_memory(f, r->pos)) {
        /* Straight from the fetch's memory: no copy. */
        const char *data;
        size_t got = fetch_span_borrow(f, r->pos, n, &data, &r->span);
        if (got == 0) {
            fetch_wait(f, &r->waiter);
            return false;
        }
        return send_from(r, data, got, may_try);
    }
    const char *small =
        f == NULL && r->fdc_slot >= 0 ? fdc_small(r->bs, r->fdc_slot, r->total) : NULL;
    if (small != NULL) return send_from(r, small + r->pos, (size_t)want, may_try);
    if (r->buf == NULL && (r->buf = malloc(r->buf_cap)) == NULL) {
        fail(r, REG_ERR_INTERNAL, "out of memory");
        return false;
    }
    uv_file fd = f != NULL ? fetch_fd(f) : r->fd;
    /* Bytes in the page cache are read right here: RWF_NOWAIT never waits for the disk
     * (it answers EAGAIN instead), so only cold reads take the thread pool. */
    struct iovec iov = {r->buf, n};
    ssize_t got = preadv2(fd, &iov, 1, (off_t)r->pos, RWF_NOWAIT);
    if (got > 0) return send_from(r, r->buf, (size_t)got, may_try);
    uv_buf_t b = uv_buf_init(r->buf, (unsigned)n);
    r->fs.data = r;
    r->fs_busy = true;
    int rc = uv_fs_read(r->bs->loop, &r->fs, fd, &b, 1, (int64_t)r->pos, read_done);
    if (rc < 0) {
        r->fs_busy = false;
        fail(r, REG_ERR_INTERNAL, "cannot read the blob file");
    }
    return false;
}

/*
 * Sends what can be sent now. A chunk that the socket takes at once needs no write
 * request: no callback one loop turn later, and no epoll_ctl when libuv's write queue
 * drains (a cached 1 KiB hit is one writev and done). At most BLOB_SYNC_CHUNKS go out
 * that way in a row, so that a fast reader of a large blob gives the loop back.
 */
static void pump(struct blob_req *r)
{
    for (int i = 0; pump_step(r, i < BLOB_SYNC_CHUNKS); i++)
        ;
}

/* Decides status and range against the blob's size, then starts pumping. */
static void serve(struct blob_req *r, int64_t size)
{
    if (size < 0 && r->fetch != NULL && !http_req_can_chunk(r->x) &&
        fetch_state(r->fetch) == FETCH_RUNNING && !fetch_complete(r->fetch)) {
        /* An HTTP/1.0 client would take a body that broke off for a whole one: it gets
         * the blob once it is verified, with its length (on_progress comes back). */
        r->waiting_size = true;
        fetch_wait(r->fetch, &r->waiter);
        return;
    }
    r->status = 200;
    r->pos = 0;
    r->end = size >= 0 ? (uint64_t)size : UINT64_MAX;
    r->total = size >= 0 ? (uint64_t)size : 0;
    pulls_count(r->bs->pulls, r->hex); /* a GET served: blob.pulls of the policies */
    const struct http_header *range = http_req_header(r->x, "Range");
    if (range != NULL && size >= 0) {
        uint64_t a, b;
        enum blob_range_result rr =
            blob_parse_range(range->value, range->value_len, (uint64_t)size, &a, &b);
        if (rr == RANGE_UNSATISFIABLE) {
            char cr[64];
            snprintf(cr, sizeof(cr), "bytes */%" PRId64, size);
            struct http_header h = {"Content-Range", 13, cr, strlen(cr)};
            r->done = true;
            respond_error_with(r->x, REG_ERR_RANGE_INVALID, 416, &h, 1,
                               "requested range not satisfiable", NULL);
            release(r);
            return;
        }
        if (rr == RANGE_PARTIAL) {
            r->status = 206;
            r->pos = a;
            r->end = b;
        }
    }
    uint64_t span = r->end == UINT64_MAX ? BLOB_CHUNK : r->end - r->pos;
    r->buf_cap = span > BLOB_CHUNK ? BLOB_CHUNK : (span < 4096 ? 4096 : (size_t)span);
    /* A stored blob's chunk buffer waits until a read needs it (a small one has none). */
    if (r->fetch != NULL && (r->buf = malloc(r->buf_cap)) == NULL) {
        fail(r, REG_ERR_INTERNAL, "out of memory");
        return;
    }
    if (r->fetch != NULL) {
        r->follower.offset = r->pos;
        fetch_follow_begin(r->fetch, &r->follower);
        r->following = true;
        reading_begin(r); /* once committed, it must not be evicted under us */
    }
    pump(r);
}

/* --- Upstream requests made for a client --------------------------------------------- */

/* A request to the upstreams on behalf of r's client: its credentials, this blob. */
struct upstream_call {
    struct upstream_header fwd[BLOB_MAX_FORWARDED];
    char scratch[16384 + BLOB_MAX_FORWARDED * 2];
    char *target;
    struct chain_spec spec;
};

/* Where this request's upstream requests go: asked of the select_upstream policy once,
 * at the first of them (a hit authorized from memory never asks). */
static int ensure_bases(struct blob_req *r)
{
    if (r->bases != NULL) return 0;
    size_t n_bases;
    const char *const *bases = upstreams_select(r->bs->upstreams, &r->info.req, r->entry, &n_bases);
    r->bases = calloc(n_bases ? n_bases : 1, sizeof(*r->bases));
    for (size_t i = 0; r->bases != NULL && i < n_bases; i++) {
        r->bases[i] = strdup(bases[i]);
        r->n_bases += r->bases[i] != NULL;
    }
    return r->bases != NULL && r->n_bases == n_bases ? 0 : UV_ENOMEM;
}

static int upstream_call_init(struct upstream_call *c, struct blob_req *r, const char *method)
{
    c->target = NULL;
    int rc = ensure_bases(r);
    if (rc != 0) return rc;
    /* The whole target: an upstream cache needs the ns parameter too. */
    c->target = strdup(http_req_target(r->x));
    if (c->target == NULL) return UV_ENOMEM;
    c->spec = (struct chain_spec){
        .method = method,
        .bases = (const char *const *)r->bases,
        .n_bases = r->n_bases,
        .target = c->target,
        .headers = c->fwd,
        .n_headers = upstreams_forward_headers(r->x, false, c->fwd, BLOB_MAX_FORWARDED, c->scratch,
                                               sizeof(c->scratch)),
        .max_redirects = 5,
    };
    return 0;
}

static void upstream_call_free(struct upstream_call *c)
{
    free(c->target);
}

/* --- Hit or miss -------------------------------------------------------------------- */

static void open_work(uv_work_t *w);
static void open_done(uv_work_t *w, int status);

static void start_fetch(struct blob_req *r)
{
    struct blob_service *bs = r->bs;
    struct fetch *f = fetch_find(bs->fetches, r->hex);
    if (f == NULL && !r->rechecked) {
        /* No fetch runs, but one may have committed (on this loop or another) since the
         * store was looked at: its rename comes before it leaves the fetch table. One
         * more look, so that it is served, not fetched from upstream a second time. */
        r->rechecked = true;
        r->hit_stat_only = false;
        r->fs_busy = true;
        if (uv_queue_work(bs->loop, &r->hit_work, open_work, open_done) == 0) return;
        r->fs_busy = false;
    }
    if (f != NULL) {
        fetch_ref(f);
        http_log_set_cache(r->x, "coalesced");
    } else {
        struct upstream_call call;
        bool store_it = budget_fits(bs->budget, r->size);
        /* The admit policy decides with the blob's length: known from the HEAD, or (when
         * the authorization came from memory) from the fetch's head, see on_progress. */
        if (store_it && bs->admit != NULL && r->size >= 0)
            store_it = bs->admit(bs->admit_ud, r->digest, r->size, &r->info.req);
        else if (store_it && bs->admit != NULL)
            r->admit_at_head = true;
        int rc = upstream_call_init(&call, r, "GET");
        if (rc == 0) rc = fetch_start(bs->fetches, r->hex, &call.spec, r->size, store_it, &f);
        upstream_call_free(&call);
        if (rc < 0) {
            char msg[200];
            snprintf(msg, sizeof(msg), "cannot start fetching %s: %s", r->digest, uv_strerror(rc));
            fail(r, REG_ERR_UNAVAILABLE, msg);
            return;
        }
        http_log_set_cache(r->x, fetch_follows_loop(f) ? "coalesced" : "miss");
    }
    r->fetch = f;
    r->waiter.cb = on_progress;
    if (r->size < 0 && fetch_size(f) < 0 && !fetch_head_seen(f)) {
        /* Authorized from memory, so no HEAD told the length: the fetch's head will (or
         * says there is none: then the body goes out chunked). */
        r->waiting_size = true;
        fetch_wait(f, &r->waiter);
        return;
    }
    serve(r, r->size >= 0 ? r->size : fetch_size(f));
}

/* On the pool: the store opens (or, for a HEAD, stats) the stored blob; it refuses
 * what is not a regular file and follows no symbolic link (store.h). */
static void open_work(uv_work_t *w)
{
    struct blob_req *r = w->data;
    r->hit_result = r->hit_stat_only ? store_stat_blob_sync(r->bs->store, r->hex, &r->hit_sb)
                                     : store_open_blob_sync(r->bs->store, r->hex, &r->hit_sb);
}

static void open_done(uv_work_t *w, int status)
{
    struct blob_req *r = w->data;
    int result = status < 0 ? status : r->hit_result;
    r->fs_busy = false;
    if (result >= 0) {
        r->fd = result;
        r->own_fd = true;
        reading_begin(r);
    }
    if (r->gone) {
        finish(r, false);
        return;
    }
    if (result < 0) {
        if (result != UV_ENOENT)
            log_msg(LOG_WARN, "cannot open stored blob %s (%s): fetching it", r->digest,
                    uv_strerror(result));
        start_fetch(r);
        return;
    }
    int64_t size = (int64_t)r->hit_sb.st_size;
    touch(r, &r->hit_sb);
    if (r->size >= 0 && size != r->size)
        log_msg(LOG_WARN,
                "blob %s: stored size %" PRId64 " differs from the upstream's %" PRId64
                "; serving the stored (verified) file",
                r->digest, size, r->size);
    int slot = fdc_put(r->bs, r->hex, r->fd);
    if (slot >= 0) {
        r->fdc_slot = slot;
        r->own_fd = false; /* the cache closes it */
    }
    http_log_set_cache(r->x, "hit");
    serve(r, size);
}

static void ask_upstream(struct blob_req *r);
static void outage_begin(struct blob_req *r, int err, const char *msg);

static void head_stat_done(uv_work_t *w, int status)
{
    struct blob_req *r = w->data;
    int64_t size = status == 0 && r->hit_result == 0 ? (int64_t)r->hit_sb.st_size : -1;
    r->fs_busy = false;
    if (r->gone) {
        finish(r, false);
        return;
    }
    if (size < 0) {
        ask_upstream(r); /* not stored: only the upstream knows the size */
        return;
    }
    r->size = size;
    http_log_set_cache(r->x, "hit");
    r->status = 200;
    r->pos = 0;
    r->end = (uint64_t)size;
    r->done = true;
    set_head(r);
    http_respond_end(r->x);
    release(r);
}

/* The client may have the blob: answer a HEAD, serve a GET from disk or a fetch. */
static void authorized(struct blob_req *r)
{
    r->hit_work.data = r;
    if (http_req_is_head(r->x)) {
        if (r->size < 0 && !r->asked_upstream) {
            /* Authorized from memory: the stored file tells the size. */
            r->fs_busy = true;
            r->hit_stat_only = true;
            if (uv_queue_work(r->bs->loop, &r->hit_work, open_work, head_stat_done) < 0) {
                r->fs_busy = false;
                ask_upstream(r);
            }
            return;
        }
        /* The upstream's answer had no length: the HEAD has none either. */
        r->status = 200;
        r->pos = 0;
        r->end = r->size >= 0 ? (uint64_t)r->size : UINT64_MAX;
        r->done = true;
        set_head(r);
        http_respond_end(r->x);
        release(r);
        return;
    }
    struct stat sb;
    int slot = fdc_get(r->bs, r->hex, &sb);
    if (slot >= 0) {
        /* A hot hit: no thread-pool round trip to open and stat. */
        r->fdc_slot = slot;
        r->fd = r->bs->fdc[slot].fd;
        reading_begin(r);
        /* The requests that share this fstat (fdc_get) see the blob touched: one futime
         * a second, not one each. */
        touch_times(r, (double)sb.st_atim.tv_sec + (double)sb.st_atim.tv_nsec / 1e9,
                    (double)sb.st_mtim.tv_sec + (double)sb.st_mtim.tv_nsec / 1e9,
                    &r->bs->fdc[slot].sb.st_atim);
        http_log_set_cache(r->x, "hit");
        serve(r, (int64_t)sb.st_size);
        return;
    }
    r->fs_busy = true;
    if (uv_queue_work(r->bs->loop, &r->hit_work, open_work, open_done) < 0) {
        r->fs_busy = false;
        start_fetch(r);
    }
}

/* --- Authorization ------------------------------------------------------------------ */

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* Decisions are per origin: a 'yes' from one origin never opens a blob of another. */
static const char *origin_key(const struct blob_req *r)
{
    const struct config *cfg = r->bs->cfg;
    return cfg != NULL && r->entry < cfg->n_upstreams ? cfg->upstreams[r->entry].originhost : "";
}

/* The action under which "this digest is in this repository" is remembered. */
static void blob_action(const struct blob_req *r, char *buf, size_t len)
{
    snprintf(buf, len, "blob %s", r->digest);
}

/* A refusal: the status and the challenge, a registry error, no byte of the blob. */
static void refuse(struct blob_req *r, int st, const char *challenge)
{
    char msg[160];
    int code = st == 401   ? REG_ERR_UNAUTHORIZED
               : st == 403 ? REG_ERR_DENIED
               : st == 404 ? REG_ERR_BLOB_UNKNOWN
               : st == 429 ? REG_ERR_TOOMANYREQUESTS
               : st >= 500 ? REG_ERR_UPSTREAM_FAILED
                           : REG_ERR_DENIED;
    int status = st >= 500 ? 502 : st;
    struct http_header h;
    size_t nh = 0;
    if (challenge != NULL && challenge[0] != '\0') {
        h = (struct http_header){"WWW-Authenticate", 16, challenge, strlen(challenge)};
        nh = 1;
    }
    snprintf(msg, sizeof(msg), "the upstream answered %d for this blob in this repository", st);
    r->done = true;
    respond_error_with(r->x, code, status, &h, nh, msg, NULL);
    release(r);
}

static void auth_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                      int64_t content_length)
{
    struct blob_req *r = ud;
    r->auth_status = status;
    r->size = content_length;
    const struct http_header *ch = http_header_find(hdrs, n, "WWW-Authenticate");
    if (ch != NULL) {
        free(r->challenge);
        r->challenge = strndup(ch->value, ch->value_len);
    }
}

static void auth_body(void *ud, const char *data, size_t len) {}

/* Remembers what the upstream's answer says about the credential and the blob. */
static void remember(struct blob_req *r, int st)
{
    struct blob_service *bs = r->bs;
    if (st >= 200 && st < 300)
        link_blob(r); /* the origin says the blob is in this repository: the registry's link */
    size_t repo_len;
    const char *repo = http_log_repo(r->x, &repo_len);
    /* The credential's answer, on disk (its hash only) for the outage policy. */
    if (r->need_credential && repo != NULL && ((st >= 200 && st < 300) || st == 401 || st == 403)) {
        unsigned char key[32];
        answers_key(origin_key(r), r->credential, r->credential_len, repo, repo_len, key);
        answers_record(bs->answers, key, st);
    }
    if (st == 401 && r->credential_len == 0 && r->challenge != NULL)
        answers_challenge_record(bs->answers, origin_key(r), r->challenge, strlen(r->challenge));
    if (bs->auth == NULL) return;
    char action[96];
    blob_action(r, action, sizeof(action));
    uint64_t now = mono_ms();
    if (st >= 200 && st < 300) {
        if (r->need_credential)
            auth_cache_store(bs->auth, origin_key(r), r->credential, r->credential_len, repo,
                             repo_len, "pull", 200, NULL, 0, now);
        auth_cache_store(bs->auth, origin_key(r), NULL, 0, repo, repo_len, action, 200, NULL, 0,
                         now);
    } else if ((st == 401 || st == 403) && r->need_credential) {
        auth_cache_store(bs->auth, origin_key(r), r->credential, r->credential_len, repo, repo_len,
                         "pull", st, r->challenge, r->challenge ? strlen(r->challenge) : 0, now);
    } else if (st == 404) {
        auth_cache_store(bs->auth, origin_key(r), NULL, 0, repo, repo_len, action, 404, NULL, 0,
                         now);
    }
}

static void auth_done(void *ud, int err)
{
    struct blob_req *r = ud;
    char msg[400];
    if (err < 0 && r->auth_status == 0)
        snprintf(msg, sizeof(msg), "upstream failed: %s", chain_error_message(r->auth));
    r->auth = NULL;
    if (r->gone) {
        finish(r, false);
        return;
    }
    if ((err < 0 && r->auth_status == 0) || r->auth_status >= 500) {
        /* Every upstream failed: the outage policy may answer from the disk. */
        if (r->auth_status >= 500)
            snprintf(msg, sizeof(msg), "upstream failed: it answered %d", r->auth_status);
        outage_begin(r, err < 0 ? err : UV_EPROTO, msg);
        return;
    }
    int st = r->auth_status;
    remember(r, st);
    if (st >= 200 && st < 300) {
        authorized(r);
        return;
    }
    refuse(r, st, r->challenge);
}

/* --- When every upstream failed -------------------------------------------------------- */

static void outage_work(uv_work_t *w)
{
    struct blob_req *r = w->data;
    struct stat sb;
    size_t repo_len;
    const char *repo = http_log_repo(r->x, &repo_len);
    char name[REGISTRY_NAME_MAX + 1];
    snprintf(name, sizeof(name), "%.*s", (int)repo_len, repo ? repo : "");
    outage_auth_sync(r->bs->outage, &r->oa);
    answers_challenge_sync(r->bs->answers, origin_key(r), r->challenge_kept,
                           sizeof(r->challenge_kept));
    r->held_stored = store_stat_blob_sync(r->bs->store, r->hex, &sb) == 0;
    r->held_linked = links_exists_sync(r->bs->store, LINKS_LAYER, name, r->hex) == 0;
}

static void outage_fail(struct blob_req *r)
{
    if (r->auth_status >= 500) {
        refuse(r, r->auth_status, NULL); /* (a 502, as before) */
        return;
    }
    log_msg(LOG_WARN, "%s %s: %s", http_req_method(r->x), http_log_uri(r->x), r->outage_msg);
    int err = r->outage_err;
    fail(r,
         err == UV_ECONNREFUSED || err == UV_ETIMEDOUT ? REG_ERR_UNAVAILABLE
                                                       : REG_ERR_UPSTREAM_FAILED,
         r->outage_msg);
}

static void outage_done(uv_work_t *w, int status)
{
    struct blob_req *r = w->data;
    r->fs_busy = false;
    if (r->gone) {
        finish(r, false);
        return;
    }
    if (status != 0) {
        outage_fail(r);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct policy_outage known = {
        .upstream = r->n_bases ? r->bases[r->n_bases - 1] : NULL,
        .error = r->outage_msg,
        .has_blob = true,
        .blob_digest = r->digest,
        .blob_stored = r->held_stored,
        .blob_in_repository = r->held_linked,
    };
    uint64_t age = 0;
    int refused = 0;
    switch (outage_decide(r->bs->outage, &r->info.req, &known, &r->oa,
                          r->held_stored && r->held_linked,
                          (double)ts.tv_sec + (double)ts.tv_nsec / 1e9, &age, &refused)) {
    case OUTAGE_SERVE:
        log_msg(LOG_INFO,
                "%s %s: every upstream failed (%s): served from disk, %" PRIu64
                " s old (the on_upstream_failure policy)",
                http_req_method(r->x), http_log_uri(r->x), r->outage_msg, age);
        http_log_set_stale(r->x, age);
        outage_count_stale(r->bs->outage, "blob");
        r->asked_upstream = false; /* a HEAD takes its length from the stored file */
        r->size = -1;
        authorized(r);
        return;
    case OUTAGE_REFUSE:
        refuse(r, refused, r->challenge_kept[0] ? r->challenge_kept : NULL);
        return;
    case OUTAGE_FAIL:
        break;
    }
    outage_fail(r);
}

/* Every upstream failed (err, msg): what does the disk hold, and what does the policy say? */
static void outage_begin(struct blob_req *r, int err, const char *msg)
{
    size_t repo_len;
    const char *repo = http_log_repo(r->x, &repo_len);
    snprintf(r->outage_msg, sizeof(r->outage_msg), "%s", msg);
    r->outage_err = err;
    if (r->bs->outage == NULL || repo == NULL) {
        outage_fail(r);
        return;
    }
    outage_auth_init(&r->oa, origin_key(r), r->credential, r->credential_len, repo, repo_len,
                     r->token_ok);
    outage_auth_queued(r->bs->outage, &r->oa);
    r->fs_busy = true;
    r->hit_work.data = r;
    if (uv_queue_work(r->bs->loop, &r->hit_work, outage_work, outage_done) != 0) {
        r->fs_busy = false;
        outage_fail(r);
    }
}

/* Asks the upstream: a HEAD of this blob in this repository with the client's credential. */
static void ask_upstream(struct blob_req *r)
{
    r->asked_upstream = true;
    r->bs->auth_stats.from_upstream++;
    struct upstream_call call;
    static const struct upstream_callbacks cbs = {auth_head, auth_body, auth_done};
    int rc = upstream_call_init(&call, r, "HEAD");
    if (rc == 0)
        rc = chain_request(upstreams_pool(r->bs->upstreams), &call.spec, &cbs, r, &r->auth);
    upstream_call_free(&call);
    if (rc < 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "cannot ask the upstream: %s", uv_strerror(rc));
        fail(r, REG_ERR_UNAVAILABLE, msg);
    }
}

static void authorize_blob(struct blob_req *r, const char *repo, size_t repo_len);

/* auth.token's verdict on the client's token: true to go on, else answered (401). */
static bool token_verdict(struct blob_req *r, const char *repo, size_t repo_len,
                          const struct auth_token_verdict *v)
{
    struct blob_service *bs = r->bs;
    if (v->rc == 0) {
        if (!v->remembered) bs->auth_stats.token_verified++;
        r->need_credential = false;
        r->token_ok = true;
        return true;
    }
    char ch[1024];
    bs->auth_stats.token_refused++;
    log_msg(LOG_INFO, "token refused for %.*s: %s", (int)repo_len, repo, v->why);
    auth_challenge(bs->cfg->auth_token_realm, bs->cfg->auth_token_service, repo, repo_len, ch,
                   sizeof(ch));
    r->done = true;
    struct http_header h = {"WWW-Authenticate", 16, ch, strlen(ch)};
    respond_error_with(r->x, REG_ERR_UNAUTHORIZED, 401, &h, 1, "authentication required", v->why);
    release(r);
    return false;
}

/* A token check that ran on the thread pool is done. */
static void token_checked(void *arg, const struct auth_token_verdict *v)
{
    struct blob_req *r = arg;
    size_t repo_len;
    const char *repo = http_log_repo(r->x, &repo_len);
    r->token_job = NULL;
    if (r->gone) {
        finish(r, false);
        return;
    }
    if (token_verdict(r, repo, repo_len, v)) authorize_blob(r, repo, repo_len);
}

/*
 * Decides what memory can decide. Two facts make a 'yes': this credential may pull
 * this repository (from the upstream, or from a locally verified token), and this
 * digest is in this repository (from the upstream). Either refusal answers at once;
 * anything unknown asks the upstream.
 */
static void authorize(struct blob_req *r, const char *repo, size_t repo_len)
{
    struct blob_service *bs = r->bs;
    uint64_t now = mono_ms();
    int st;
    const char *challenge;
    r->need_credential = true;
    if (bs->verifier != NULL) {
        /* auth.token: the token is checked here, against the issuer's certificates (its
         * signatures on the thread pool: then token_checked goes on). */
        struct auth_token_query q = {r->credential, r->credential_len,   repo, repo_len,
                                     "pull",        (int64_t)time(NULL), now};
        struct auth_token_verdict v;
        if (auth_token_check(bs->verifier, &q, &v, token_checked, r, &r->token_job) ==
                AUTH_TOKEN_PENDING ||
            !token_verdict(r, repo, repo_len, &v))
            return;
    } else if (bs->auth != NULL &&
               auth_cache_lookup(bs->auth, origin_key(r), r->credential, r->credential_len, repo,
                                 repo_len, "pull", now, &st, &challenge)) {
        if (st != 200) {
            bs->auth_stats.from_memory++;
            refuse(r, st, challenge);
            return;
        }
        r->need_credential = false;
    }
    authorize_blob(r, repo, repo_len);
}

/* The second fact: whether this digest is in this repository. */
static void authorize_blob(struct blob_req *r, const char *repo, size_t repo_len)
{
    struct blob_service *bs = r->bs;
    int st;
    const char *challenge;
    bool have_blob = false;
    char action[96];
    blob_action(r, action, sizeof(action));
    if (bs->auth != NULL && auth_cache_lookup(bs->auth, origin_key(r), NULL, 0, repo, repo_len,
                                              action, mono_ms(), &st, &challenge)) {
        if (st == 404 && !r->need_credential) {
            /* Told only to a client the upstream has accepted: to any other, the
             * upstream's own answer (a challenge, most likely) is the one to give. */
            bs->auth_stats.from_memory++;
            refuse(r, 404, NULL);
            return;
        }
        have_blob = st == 200;
    }
    if (!r->need_credential && have_blob) {
        bs->auth_stats.from_memory++;
        authorized(r);
        return;
    }
    ask_upstream(r);
}

/* A grant's verdict: the grant alone authorizes, or the request is refused, no byte sent. */
static void grant_checked(void *arg, const struct keyring_verdict *v)
{
    struct blob_req *r = arg;
    r->grant_check = NULL;
    if (r->gone) {
        finish(r, false);
        return;
    }
    if (v->rc != 0) {
        char msg[200];
        r->bs->auth_stats.grant_refused++;
        snprintf(msg, sizeof(msg), "grant refused: %s", v->why);
        log_msg(LOG_INFO, "%s %s: %s", http_req_method(r->x), http_log_uri(r->x), msg);
        r->done = true;
        respond_error_with(r->x, v->status == 403 ? REG_ERR_DENIED : REG_ERR_UNAUTHORIZED,
                           v->status, NULL, 0, msg, NULL);
        release(r);
        return;
    }
    r->bs->auth_stats.grant_verified++;
    authorized(r);
}

/* A request redirected by the front: its grant, verified here with the front's keys. */
static bool authorize_by_grant(struct blob_req *r, const struct registry_route *route)
{
    size_t qlen, glen;
    const char *q = http_req_query(r->x, &qlen);
    const char *grant = grant_in_query(q, qlen, &glen);
    if (grant == NULL || r->bs->grant_keys == NULL) return false;
    /* The keys are fetched (when unknown) from where this request's upstream requests go. */
    if (ensure_bases(r) != 0) {
        fail(r, REG_ERR_INTERNAL, "out of memory");
        return true;
    }
    int rc = keyring_verify(r->bs->grant_keys, (const char *const *)r->bases, r->n_bases, grant,
                            glen, route->name, route->name_len, r->digest, strlen(r->digest),
                            grant_checked, r, &r->grant_check);
    if (rc != 0) fail(r, REG_ERR_INTERNAL, "cannot verify the grant");
    return true;
}

void blob_handle(struct blob_service *bs, struct http_exchange *x,
                 const struct registry_route *route, size_t entry)
{
    struct blob_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        respond_error(x, REG_ERR_INTERNAL, "out of memory", NULL);
        return;
    }
    r->bs = bs;
    r->x = x;
    r->fd = -1;
    r->fdc_slot = -1;
    r->size = -1;
    r->entry = entry;
    memcpy(r->hex, route->reference + DIGEST_SHA256_PREFIX_LEN, DIGEST_SHA256_HEX_LEN);
    r->hex[DIGEST_SHA256_HEX_LEN] = '\0';
    snprintf(r->digest, sizeof(r->digest), "sha256:%s", r->hex);
    http_exchange_on_gone(x, on_gone, r);
    const struct http_header *authz = http_req_header(x, "Authorization");
    if (authz != NULL) {
        r->credential = authz->value;
        r->credential_len = authz->value_len;
    }

    upstreams_req_info_init(&r->info, x, route, entry);
    if (authorize_by_grant(r, route)) return;
    authorize(r, route->name, route->name_len);
}

void blob_render_metrics(const void *blob_service, struct textbuf *out)
{
    static const char name[] = "content_cache_authorizations_total";
    const struct blob_auth_stats *as = blob_auth_stats(blob_service);
    metrics_help(out, name, "counter",
                 "Blob authorization decisions, by where they came from: memory (remembered "
                 "answers), upstream (a HEAD with the client's credential), token (verified "
                 "here).");
    metrics_labelled(out, name, "source", "memory", as->from_memory);
    metrics_labelled(out, name, "source", "upstream", as->from_upstream);
    metrics_labelled(out, name, "source", "token", as->token_verified);
    metrics_labelled(out, name, "source", "grant", as->grant_verified);
    metrics_value(out, "content_cache_token_refusals_total", "counter",
                  "Bearer tokens refused by local verification (auth.token).", as->token_refused);
    metrics_value(out, "content_cache_grant_refusals_total", "counter",
                  "Redirect grants refused (forged, altered, expired, another blob).",
                  as->grant_refused);
}
