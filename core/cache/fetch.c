/*
 * fetch.c: one upstream fetch per missing blob. See fetch.h for the contract.
 *
 * Bytes move: upstream -> the spool (chunks in memory, appended on the loop). Followers
 * are woken as bytes arrive and send them from the spool at once (all but the last byte
 * before the digest is checked), so a client's bytes never wait for the disk. Two work
 * items run on the thread pool, each at its own pace and each over the spool in order:
 * one pwritev()s [written, ...) into the temporary file, the other adds [hashed, ...) to
 * the sha256. A chunk is freed once it is written and hashed (a follower behind it reads
 * the file); the upstream is paused while the spool holds more than SPOOL_HIGH bytes, so
 * the slower of the disk and the hash sets the pace beyond that. The digest is checked
 * once everything is hashed (the last byte goes out then); the commit (fsync, rename)
 * waits for the writes and goes on behind the clients.
 *
 * In pass-through (no disk, or a disk that failed), chunks are freed once hashed and read
 * by every follower, and the spool is bounded by SPOOL_PASS_HIGH: the slowest follower
 * sets the pace.
 */
#include "cache/fetch.h"

#include "cache/fetch_board.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base/bytes.h"
#include "base/errors.h"
#include "base/digest.h"
#include "base/log.h"
#include "cache/pulls.h"

#define CHUNK_BYTES (1u << 20) /* the spool's unit */
/* Pause the upstream past this much unwritten or unhashed. Larger lets a client outrun a
 * slow disk for longer, but fresh memory costs about what the page cache does here (a
 * 200 MiB cold pull: 16,148 page faults and 901 ms of CPU at 64 MiB, 4,433 and 443 ms at
 * 16 MiB, where the spare chunks cover it; `perf stat -e page-faults,task-clock`). */
#define SPOOL_HIGH (16u << 20)
#define SPOOL_PASS_HIGH (16u << 20) /* pass-through: past this much unread */
#define JOB_MAX (8u << 20)          /* bytes one write or hash work item takes */
#define JOB_MIN (1u << 20)          /* and waits for, unless the body is all in */
/* Chunks kept for reuse by the manager: their pages stay mapped (a fresh chunk costs 256
 * page faults as it fills). They go back to the system once no fetch has run for
 * SPARE_IDLE_MS: a burst of misses reuses them, an idle cache (one per loop, with
 * workers) does not hold 16 MiB each. */
#define SPARE_CHUNKS 16
#define SPARE_IDLE_MS 2000
#define JOB_IOV 10 /* chunks one work item takes (JOB_MAX / CHUNK_BYTES + 2) */
/* A blob body without a length may be at most this long. Registries send a length for
 * every blob; one that does not, and never ends, must not fill the disk. */
#define UNSIZED_MAX ((uint64_t)256 << 20)
/* Files a follower may have served bytes from before its fetch was taken over; past
 * this many takeovers the fetch fails. */
#define SERVED_FROM_MAX 4
/* Why a fetch fails when bytes sent from a followed file are not the blob's. */
static const char SERVED_MISMATCH[] =
    "the bytes its clients were sent from the file of a replica it followed are not the "
    "blob's: they are cut off";

struct chunk;

struct fetch_manager {
    uv_loop_t *loop;
    struct store *store;
    struct upstream_pool *pool;
    struct fetch *active; /* running fetches that take followers */
    unsigned n_active;
    struct fetch_stats stats;
    void (*on_commit)(void *ud, const char *hex, uint64_t size);
    void *hook_ud;
    uv_timer_t *beat;  /* touches the fetch locks this process holds */
    bool beat_pending; /* a touch work item is out */
    uv_work_t beat_work;
    char (
        *beat_hexes)[DIGEST_SHA256_HEX_LEN + 1]; /* the locks to touch, copied for the work item */
    size_t n_beat;
    struct chunk *spare; /* freed chunks, for reuse */
    unsigned n_spare;
    uv_timer_t *spare_timer;   /* frees the spares when no fetch runs (SPARE_IDLE_MS) */
    bool stopped;              /* fetch_manager_cancel_all ran: no timer starts any more */
    struct fetch_board *board; /* the process's other loops (workers), or NULL */
};

void fetch_manager_on_commit(struct fetch_manager *m,
                             void (*cb)(void *ud, const char *hex, uint64_t size), void *ud)
{
    m->on_commit = cb;
    m->hook_ud = ud;
}

/* A piece of the body in memory: bytes [off, off + len) of the blob. */
struct chunk {
    struct chunk *next;
    uint64_t off;
    size_t len;
    unsigned pins; /* spans lent to followers (fetch_span_borrow): not freed while > 0 */
    char data[];
};

/* A write or a hash over [off, off + len) of the spool, on the thread pool. The chunks
 * it reads are listed when it starts: the loop appends to the spool meanwhile (after its
 * end only), and frees no chunk it covers. */
struct spool_job {
    uv_work_t work;
    struct fetch *f;
    struct iovec iov[JOB_IOV];
    int n_iov;
    uint64_t off;
    size_t len;
    bool pending;
    int err;
    bool mismatch; /* hash job: bytes sent from a followed file differ from these */
};

struct fetch {
    struct fetch_manager *m;
    struct fetch *next, *prev; /* the manager's list, while registered */
    bool registered;
    int refs;
    char hex[DIGEST_SHA256_HEX_LEN + 1];
    enum fetch_state state;
    char error[300];
    char *upstream;

    struct chain_req *up;
    bool up_done;
    int up_err;
    bool up_paused;
    int64_t size;
    uint64_t received;

    /* The temporary file. */
    uv_file fd;
    bool fd_ready;
    char tmp_path[4096];
    uv_work_t open_work;
    int open_err;
    /* What open_work found, applied by open_done on the loop (which reads fd, locked,
     * remote and size meanwhile): the file, whether the lock is ours, whether another
     * process's file is followed instead, the size its lock says. */
    uv_file opened_fd;
    bool opened_locked, opened_remote;
    bool opened_committed; /* the blob was in the store once the lock was ours */
    bool found_stored;     /* (so this fetch reads the stored blob: fetch_found_stored) */
    int64_t opened_size;
    int64_t opened_size_hint; /* the size for the lock, as it was when open_work began */

    /* The spool: [head->off, received) in memory, appended at the tail. */
    struct chunk *head, *tail;
    size_t spooled; /* bytes in the chunks */
    struct spool_job write_job, hash_job;
    uint64_t written; /* in the file (remote: in the followed file) */
    uint64_t hashed;  /* in `sha` */
    struct digest_sha256 sha;

    bool head_seen; /* the upstream's response head arrived (the length, if any, known) */
    bool verified;  /* the digest matched: followers may complete (the commit goes on) */
    bool committing;
    uv_work_t commit_work;
    int commit_err;

    /* Pass-through: nothing is (or will be) written; the spool is all there is. */
    bool disk_failed;
    bool refused; /* ... because the blob is not to be stored (admit, budget), not because
                     the disk failed: loops that follow it must not store it either */

    struct fetch_follower *followers;
    struct fetch_waiter *waiters;

    /* The upstream request, kept to start it after the lock (or again at a takeover). */
    struct chain_spec spec;
    char **spec_bases;
    char *spec_target;
    struct upstream_header *spec_headers;

    /* Replicas sharing the root: the lock is ours, or we follow another process's file. */
    bool locked;
    bool remote;
    char remote_tmp[4096]; /* the followed temporary file */
    uv_timer_t *poll;      /* remote: watches the followed file */
    uv_work_t poll_work;
    bool poll_pending;
    unsigned poll_ticks;
    int poll_err;          /* fstat of the followed file failed */
    int64_t poll_size;     /* of the followed file */
    bool poll_unlinked;    /* its last name is gone */
    int64_t poll_final;    /* size of the committed blob, -1 while there is none */
    uv_file poll_final_fd; /* the committed blob, when it is not the file followed */
    int poll_lock;         /* 0 fresh, 1 stale, 2 missing, -1 not read this tick */
    unsigned lock_missing; /* ticks in a row */

    /* Bytes followers were sent from files that are not the blob's final file: the
     * files of replicas that were taken over, kept open (reads may be in flight). The
     * blob completes only once [0, len) of each matches the final file (served_check). */
    struct served_from {
        uv_file fd;
        uint64_t len;
    } served[SERVED_FROM_MAX];
    unsigned n_served;
    bool served_checked;
    bool check_pending;
    bool check_ok;
    uint64_t check_limit; /* bytes of the final file there to compare with */
    uv_work_t check_work;

    /* Loops of one process (fetch_board.h): the claim this fetch holds for the others;
     * or, for a mirror (a fetch another loop runs, followed here), the claim it follows,
     * woken through follow_wake. */
    struct fetch_board_claim *claim;
    bool mirror;
    struct fetch_board_follower follow;
    uv_async_t *follow_wake;
};

static void spares_free(struct fetch_manager *m);
static void fetch_maybe_finish(struct fetch *f);
static void fetch_fail(struct fetch *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --- Manager ---------------------------------------------------------------------- */

struct fetch_manager *fetch_manager_new(uv_loop_t *loop, struct store *store,
                                        struct upstream_pool *pool)
{
    struct fetch_manager *m = calloc(1, sizeof(*m));
    if (m == NULL) return NULL;
    m->loop = loop;
    m->store = store;
    m->pool = pool;
    return m;
}

void fetch_manager_free(struct fetch_manager *m)
{
    spares_free(m);
    free(m->beat_hexes);
    free(m);
}

const struct fetch_stats *fetch_stats(const struct fetch_manager *m)
{
    return &m->stats;
}

unsigned fetch_manager_active(const struct fetch_manager *m)
{
    return m->n_active;
}

struct fetch *fetch_find(struct fetch_manager *m, const char *hex)
{
    /* A pass-through takes no new followers: its spool has moved on for the ones it has. */
    for (struct fetch *f = m->active; f != NULL; f = f->next)
        if (!f->disk_failed && memcmp(f->hex, hex, DIGEST_SHA256_HEX_LEN) == 0) return f;
    return NULL;
}

static void unregister(struct fetch *f)
{
    if (!f->registered) return;
    f->registered = false;
    if (f->prev)
        f->prev->next = f->next;
    else
        f->m->active = f->next;
    if (f->next) f->next->prev = f->prev;
    f->m->n_active--;
    f->next = f->prev = NULL;
    fetch_unref(f); /* the manager's reference */
}

/* --- References and wake-ups ------------------------------------------------------- */

void fetch_ref(struct fetch *f)
{
    f->refs++;
}

static void close_cb(uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    free(req);
}

/* A chunk for the spool: a spare one when there is one. */
static struct chunk *chunk_new(struct fetch_manager *m)
{
    struct chunk *c = m->spare;
    if (c != NULL) {
        m->spare = c->next;
        m->n_spare--;
        return c;
    }
    return malloc(sizeof(*c) + CHUNK_BYTES);
}

static void spares_free(struct fetch_manager *m)
{
    while (m->spare != NULL) {
        struct chunk *c = m->spare;
        m->spare = c->next;
        free(c);
    }
    m->n_spare = 0;
}

static void spare_idle(uv_timer_t *t)
{
    struct fetch_manager *m = t->data;
    if (m->n_active == 0)
        spares_free(m);
    else
        uv_timer_start(t, spare_idle, SPARE_IDLE_MS, 0);
}

static void chunk_free(struct fetch_manager *m, struct chunk *c)
{
    if (m->n_spare < SPARE_CHUNKS) {
        c->next = m->spare;
        m->spare = c;
        m->n_spare++;
        if (m->stopped) return; /* (freed with the manager) */
        if (m->spare_timer == NULL && (m->spare_timer = malloc(sizeof(uv_timer_t))) != NULL) {
            uv_timer_init(m->loop, m->spare_timer);
            m->spare_timer->data = m;
            uv_unref((uv_handle_t *)m->spare_timer); /* it never keeps the loop alive */
        }
        if (m->spare_timer != NULL) uv_timer_start(m->spare_timer, spare_idle, SPARE_IDLE_MS, 0);
    } else {
        free(c);
    }
}

static void spool_free(struct fetch *f)
{
    while (f->head != NULL) {
        struct chunk *c = f->head;
        f->head = c->next;
        chunk_free(f->m, c);
    }
    f->tail = NULL;
    f->spooled = 0;
}

void fetch_unref(struct fetch *f)
{
    if (--f->refs > 0) return;
    if (f->fd >= 0) {
        uv_fs_t *req = malloc(sizeof(*req));
        if (req == NULL || uv_fs_close(f->m->loop, req, f->fd, close_cb) != 0) {
            free(req);
            close(f->fd);
        }
    }
    for (unsigned i = 0; i < f->n_served; i++)
        close(f->served[i].fd);
    if (f->poll_final_fd >= 0) close(f->poll_final_fd);
    for (size_t i = 0; i < f->spec.n_bases; i++)
        free(f->spec_bases[i]);
    free(f->spec_bases);
    for (size_t i = 0; i < f->spec.n_headers; i++) {
        free((char *)f->spec_headers[i].name);
        free((char *)f->spec_headers[i].value);
    }
    free(f->spec_headers);
    free(f->spec_target);
    free(f->upstream);
    spool_free(f);
    free(f);
}

static void board_publish(struct fetch *f);

static void wake(struct fetch *f)
{
    board_publish(f);
    struct fetch_waiter *list = f->waiters;
    f->waiters = NULL;
    fetch_ref(f);
    while (list != NULL) {
        struct fetch_waiter *w = list;
        list = w->next;
        w->next = NULL;
        w->queued = false;
        w->cb(w);
    }
    fetch_unref(f);
}

void fetch_wait(struct fetch *f, struct fetch_waiter *w)
{
    if (w->queued) return;
    w->queued = true;
    w->next = f->waiters;
    f->waiters = w;
}

void fetch_unwait(struct fetch *f, struct fetch_waiter *w)
{
    if (!w->queued) return;
    for (struct fetch_waiter **pp = &f->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    w->queued = false;
    w->next = NULL;
}

/* --- Accessors -------------------------------------------------------------------- */

enum fetch_state fetch_state(const struct fetch *f)
{
    return f->state;
}

bool fetch_head_seen(const struct fetch *f)
{
    return f->head_seen || (f->remote && !f->mirror) || f->state != FETCH_RUNNING;
}

bool fetch_complete(const struct fetch *f)
{
    return f->state == FETCH_DONE || (f->state == FETCH_RUNNING && f->verified);
}

int64_t fetch_size(const struct fetch *f)
{
    return f->size;
}

uint64_t fetch_readable(const struct fetch *f)
{
    uint64_t n = f->remote ? f->written : f->received;
    if (f->state != FETCH_DONE && !f->verified && f->size > 0 && n >= (uint64_t)f->size)
        n = (uint64_t)f->size - 1; /* the last byte waits for the digest */
    return n;
}

uv_file fetch_fd(const struct fetch *f)
{
    return f->fd;
}

const char *fetch_error(const struct fetch *f)
{
    return f->error;
}

const char *fetch_upstream(const struct fetch *f)
{
    return f->upstream;
}

bool fetch_in_memory(const struct fetch *f, uint64_t offset)
{
    return !f->remote && offset >= (f->head != NULL ? f->head->off : f->received);
}

size_t fetch_copy_window(const struct fetch *f, uint64_t offset, char *buf, size_t len)
{
    uint64_t readable = fetch_readable(f);
    if (!fetch_in_memory(f, offset) || offset >= readable) return 0;
    if (len > readable - offset) len = (size_t)(readable - offset);
    size_t done = 0;
    for (const struct chunk *c = f->head; c != NULL && done < len; c = c->next) {
        uint64_t at = offset + done;
        if (at >= c->off + c->len) continue;
        size_t from = (size_t)(at - c->off);
        size_t n = c->len - from;
        if (n > len - done) n = len - done;
        memcpy(buf + done, c->data + from, n);
        done += n;
    }
    return done;
}

size_t fetch_span_borrow(struct fetch *f, uint64_t offset, size_t len, const char **data,
                         void **token)
{
    uint64_t readable = fetch_readable(f);
    if (!fetch_in_memory(f, offset) || offset >= readable) return 0;
    if (len > readable - offset) len = (size_t)(readable - offset);
    for (struct chunk *c = f->head; c != NULL; c = c->next) {
        if (offset >= c->off + c->len) continue;
        size_t from = (size_t)(offset - c->off);
        if (len > c->len - from) len = c->len - from;
        c->pins++;
        *data = c->data + from;
        *token = c;
        return len;
    }
    return 0;
}

static void spool_trim(struct fetch *f);

void fetch_span_release(struct fetch *f, void *token)
{
    struct chunk *c = token;
    if (c == NULL || c->pins == 0) return;
    c->pins--;
    if (c->pins == 0) spool_trim(f);
}

/* --- The spool ---------------------------------------------------------------------- */

static bool up_should_pause(const struct fetch *f)
{
    return f->spooled >= (f->disk_failed ? SPOOL_PASS_HIGH : SPOOL_HIGH);
}

/*
 * Frees the chunks nobody needs any more: written and hashed (in pass-through: hashed
 * and read by every follower), and lets the upstream go on when the spool is below half
 * its bound.
 */
static void spool_trim(struct fetch *f)
{
    uint64_t keep = f->hashed;
    /* (a write still on the pool reads its chunks, also once the disk has failed) */
    if (!f->disk_failed || f->write_job.pending) {
        if (f->written < keep) keep = f->written;
    }
    if (f->disk_failed) {
        for (struct fetch_follower *fl = f->followers; fl != NULL; fl = fl->next)
            if (fl->offset < keep) keep = fl->offset;
    }
    while (f->head != NULL && f->head->off + f->head->len <= keep && f->head->pins == 0 &&
           (f->head->next != NULL || f->head->len == CHUNK_BYTES || f->up_done)) {
        struct chunk *c = f->head;
        f->head = c->next;
        if (f->head == NULL) f->tail = NULL;
        f->spooled -= c->len;
        chunk_free(f->m, c);
    }
    size_t high = f->disk_failed ? SPOOL_PASS_HIGH : SPOOL_HIGH;
    if (f->up_paused && f->spooled < high / 2 && !f->up_done && f->up != NULL) {
        f->up_paused = false;
        chain_resume(f->up);
    }
}

/* Appends upstream bytes to the spool. Returns 0 or -ENOMEM. */
static int spool_append(struct fetch *f, const char *data, size_t len)
{
    while (len > 0) {
        struct chunk *c = f->tail;
        if (c == NULL || c->len == CHUNK_BYTES) {
            c = chunk_new(f->m);
            if (c == NULL) return -ENOMEM;
            c->next = NULL;
            c->off = f->received;
            c->len = 0;
            c->pins = 0;
            if (f->tail != NULL)
                f->tail->next = c;
            else
                f->head = c;
            f->tail = c;
        }
        size_t n = CHUNK_BYTES - c->len;
        if (n > len) n = len;
        memcpy(c->data + c->len, data, n);
        c->len += n;
        f->spooled += n;
        f->received += n;
        data += n;
        len -= n;
    }
    return 0;
}

/* Lists the spool's bytes from `from` (at most JOB_MAX, in whole iovecs) into job. */
static void job_fill(struct fetch *f, struct spool_job *j, uint64_t from)
{
    j->off = from;
    j->len = 0;
    j->n_iov = 0;
    for (struct chunk *c = f->head; c != NULL && j->n_iov < JOB_IOV && j->len < JOB_MAX;
         c = c->next) {
        if (from >= c->off + c->len) continue;
        size_t skip = (size_t)(from - c->off);
        j->iov[j->n_iov++] = (struct iovec){c->data + skip, c->len - skip};
        j->len += c->len - skip;
        from = c->off + c->len;
    }
}

void fetch_follow_begin(struct fetch *f, struct fetch_follower *fl)
{
    fl->prev = NULL;
    fl->next = f->followers;
    if (f->followers) f->followers->prev = fl;
    f->followers = fl;
}

void fetch_follow_moved(struct fetch *f)
{
    if (f->disk_failed) spool_trim(f);
}

void fetch_follow_end(struct fetch *f, struct fetch_follower *fl)
{
    if (fl->prev == NULL && f->followers != fl) return; /* never began, or already ended */
    if (fl->prev)
        fl->prev->next = fl->next;
    else
        f->followers = fl->next;
    if (fl->next) fl->next->prev = fl->prev;
    fl->prev = fl->next = NULL;
    if (f->disk_failed) spool_trim(f);
    if (f->disk_failed && f->followers == NULL && f->state == FETCH_RUNNING) {
        /* Nothing can be stored and nobody is reading: stop. */
        fetch_fail(f, "every client left a fetch that could not be stored");
    } else if (f->size < 0 && f->followers == NULL && f->state == FETCH_RUNNING && !f->remote) {
        /* A body of unknown length goes on only while someone reads it: an upstream that
         * never ends it must not fill the disk. (With a length, the fetch finishes to
         * fill the cache after its clients have gone.) */
        fetch_fail(f, "every client left, and the upstream gave no length for the blob");
    }
}

/* --- Locks between replicas ------------------------------------------------------- */

struct lock_release {
    uv_work_t work;
    struct store *store;
    char hex[DIGEST_SHA256_HEX_LEN + 1];
};

static void release_work(uv_work_t *w)
{
    struct lock_release *lr = (struct lock_release *)w;
    store_lock_release_sync(lr->store, lr->hex);
}

static void release_done(uv_work_t *w, int status)
{
    free(w);
}

/* Gives the fetch lock back (on the thread pool); followers elsewhere see why. */
static void lock_release(struct fetch *f)
{
    if (!f->locked) return;
    f->locked = false;
    struct lock_release *lr = malloc(sizeof(*lr));
    if (lr == NULL) return; /* it goes stale and is taken over */
    lr->store = f->m->store;
    memcpy(lr->hex, f->hex, DIGEST_SHA256_HEX_LEN + 1);
    if (uv_queue_work(f->m->loop, &lr->work, release_work, release_done) != 0) free(lr);
}

static void beat_work(uv_work_t *w)
{
    struct fetch_manager *m = w->data;
    for (size_t i = 0; i < m->n_beat; i++)
        store_lock_touch_sync(m->store, m->beat_hexes[i]);
}

static void beat_done(uv_work_t *w, int status)
{
    struct fetch_manager *m = w->data;
    m->beat_pending = false;
}

/* Every STORE_LOCK_BEAT_S: touches the locks of the fetches this process runs. */
static void beat_tick(uv_timer_t *t)
{
    struct fetch_manager *m = t->data;
    if (m->beat_pending) return;
    size_t n = 0;
    for (struct fetch *f = m->active; f != NULL; f = f->next)
        n += f->locked;
    if (n == 0) {
        uv_timer_stop(t);
        return;
    }
    free(m->beat_hexes);
    m->beat_hexes = calloc(n, sizeof(*m->beat_hexes));
    m->n_beat = 0;
    for (struct fetch *f = m->active; m->beat_hexes != NULL && f != NULL; f = f->next)
        if (f->locked) memcpy(m->beat_hexes[m->n_beat++], f->hex, DIGEST_SHA256_HEX_LEN + 1);
    m->beat_work.data = m;
    if (m->n_beat > 0 && uv_queue_work(m->loop, &m->beat_work, beat_work, beat_done) == 0)
        m->beat_pending = true;
}

static void beat_ensure(struct fetch_manager *m)
{
    if (m->beat == NULL) {
        m->beat = malloc(sizeof(*m->beat));
        if (m->beat == NULL) return;
        uv_timer_init(m->loop, m->beat);
        m->beat->data = m;
        uv_unref((uv_handle_t *)m->beat); /* it never keeps the loop alive by itself */
    }
    if (!uv_is_active((uv_handle_t *)m->beat)) {
        unsigned ms = (unsigned)(STORE_LOCK_BEAT_S * 1000);
        uv_timer_start(m->beat, beat_tick, ms, ms);
    }
}

static void handle_free_cb(uv_handle_t *h)
{
    free(h);
}

static void poll_stop(struct fetch *f)
{
    if (f->poll != NULL) {
        uv_close((uv_handle_t *)f->poll, handle_free_cb);
        f->poll = NULL;
    }
}

/* --- Loops of one process: the board ------------------------------------------------- */

/* Tells the loops that follow this fetch how it stands; lets go of the claim at the end. */
static void board_publish(struct fetch *f)
{
    if (f->claim == NULL) return;
    struct fetch_board_view v = {
        .size = f->size,
        .written = f->written,
        .head_seen = fetch_head_seen(f),
        .verified = f->verified,
        .done = f->state == FETCH_DONE,
        .failed = f->state == FETCH_FAILED,
        .moved = f->state == FETCH_RUNNING && f->disk_failed,
        .refused = f->state == FETCH_RUNNING && f->disk_failed && f->refused,
    };
    if (v.failed) snprintf(v.error, sizeof(v.error), "%s", f->error);
    fetch_board_publish(f->claim, &v);
    if (v.done || v.failed || v.moved) {
        fetch_board_release(f->claim);
        f->claim = NULL;
    }
}

/* This fetch's file is no longer the one to follow (taken over): the loops that follow
 * it go on by themselves, and the blob is free to be claimed again. */
static void board_drop(struct fetch *f)
{
    if (f->claim == NULL) return;
    struct fetch_board_view v = {.size = f->size, .written = f->written, .moved = true};
    fetch_board_publish(f->claim, &v);
    fetch_board_release(f->claim);
    f->claim = NULL;
}

static void takeover(struct fetch *f, const char *why);
static void refused_elsewhere(struct fetch *f);

static void mirror_stop(struct fetch *f)
{
    if (f->follow_wake == NULL) return;
    fetch_board_unfollow(&f->follow); /* no wake-up comes after this */
    uv_close((uv_handle_t *)f->follow_wake, handle_free_cb);
    f->follow_wake = NULL;
}

/* A mirror reads what the owner published: bytes on disk, the size, the end. */
static void mirror_update(struct fetch *f)
{
    if (f->state != FETCH_RUNNING || f->follow_wake == NULL) return;
    struct fetch_board_view v;
    int fd = f->fd;
    fetch_board_read(&f->follow, &v, &fd);
    f->fd = fd;
    if (v.failed || (v.written > 0 && f->fd < 0)) {
        fetch_fail(f, "on another loop: %s", v.failed ? v.error : "its file cannot be opened");
        return;
    }
    if (v.moved) {
        /* What was sent from the old file is checked against the blob at the end, as
         * after a replica's takeover; from here on this loop fetches (or follows) it,
         * and stores it only when the other loop's disk was the reason it stopped. */
        mirror_stop(f);
        f->mirror = false;
        if (v.refused)
            refused_elsewhere(f);
        else
            takeover(f, "on another loop stopped storing it or was taken over");
        return;
    }
    f->size = v.size;
    f->head_seen = v.head_seen;
    f->written = v.written;
    f->verified = v.verified && v.size >= 0 && v.written == (uint64_t)v.size;
    if (v.done) {
        f->state = FETCH_DONE;
        mirror_stop(f);
        unregister(f);
    }
    wake(f);
}

static void mirror_woken(uv_async_t *h)
{
    struct fetch *f = h->data;
    fetch_ref(f);
    mirror_update(f);
    fetch_unref(f);
}

/*
 * A fetch of this loop that follows the fetch another loop of the process runs for
 * `hex`: registered like any fetch (later requests here join it), reading the other
 * loop's file. Returns 0 and a reference in *out, -ENOENT when no loop holds it any
 * more, or -ENOMEM.
 */
static int spec_copy(struct fetch *f, const struct chain_spec *spec);

/* A fetch of blob hex with a copy of spec (kept to start it, or start it again at a
 * takeover), holding one reference; NULL when memory ran out. */
static struct fetch *fetch_new(struct fetch_manager *m, const char *hex, int64_t size,
                               const struct chain_spec *spec)
{
    struct fetch *f = calloc(1, sizeof(*f));
    if (f == NULL) return NULL;
    f->m = m;
    memcpy(f->hex, hex, DIGEST_SHA256_HEX_LEN + 1);
    f->fd = -1;
    f->poll_final_fd = -1;
    f->size = size;
    f->refs = 1;
    digest_sha256_init(&f->sha);
    if (spec_copy(f, spec) != 0) {
        fetch_unref(f);
        return NULL;
    }
    return f;
}

/* Lists f among the manager's running fetches: a second reference, the manager's. */
static void manager_register(struct fetch_manager *m, struct fetch *f)
{
    f->refs++;
    f->registered = true;
    f->next = m->active;
    if (m->active) m->active->prev = f;
    m->active = f;
    m->n_active++;
}

static int mirror_start(struct fetch_manager *m, const char *hex, const struct chain_spec *spec,
                        struct fetch **out)
{
    uv_async_t *wake_handle = malloc(sizeof(*wake_handle));
    struct fetch *f = wake_handle != NULL ? fetch_new(m, hex, -1, spec) : NULL;
    if (f == NULL) {
        free(wake_handle);
        return -ENOMEM;
    }
    f->mirror = true;
    f->remote = true;
    uv_async_init(m->loop, wake_handle, mirror_woken);
    wake_handle->data = f;
    f->follow.wake = wake_handle;
    f->follow_wake = wake_handle;
    if (fetch_board_follow(m->board, hex, &f->follow) != 0) {
        uv_close((uv_handle_t *)wake_handle, handle_free_cb);
        fetch_unref(f);
        return -ENOENT;
    }
    manager_register(m, f);
    log_msg(LOG_INFO, "blob sha256:%s is being fetched on another loop: following it", hex);
    mirror_update(f);
    *out = f;
    return 0;
}

bool fetch_follows_loop(const struct fetch *f)
{
    return f->mirror;
}

bool fetch_found_stored(const struct fetch *f)
{
    return f->found_stored;
}

void fetch_manager_set_board(struct fetch_manager *m, struct fetch_board *board)
{
    m->board = board;
}

static void queue_open(struct fetch *f);

/*
 * The file followers read from stops being the one they will read from: it is kept
 * (open) with how much of it they may have been sent, [0, written), to be checked
 * against the blob's final file before the blob completes. False when too many files
 * are kept already.
 */
static bool served_push(struct fetch *f)
{
    if (f->fd >= 0 && f->written > 0) {
        if (f->n_served == SERVED_FROM_MAX) return false;
        f->served[f->n_served++] = (struct served_from){f->fd, f->written};
        f->served_checked = false;
    } else if (f->fd >= 0) {
        close(f->fd); /* nothing was read from it */
    }
    f->fd = -1;
    return true;
}

/* The file followed so far stops being followed: kept for the check of what was sent from
 * it (served_push), and this fetch's own file fills from 0. False when the fetch failed
 * instead (too many files kept). */
static bool leave_followed(struct fetch *f)
{
    if (!served_push(f)) {
        fetch_fail(f, "taken over %d times: the bytes already sent cannot be accounted for",
                   SERVED_FROM_MAX);
        return false;
    }
    f->remote = false;
    f->written = 0;
    return true;
}

/* The replica we followed stopped (dead, silent, or its file is gone): take the lock
 * again, which fetches it ourselves or follows whoever was faster to take over.
 * Followers keep their offsets: the new file fills from 0, and what they were sent
 * from the old one is checked against the blob at the end (served_check). The old
 * file is left where it is: a takeover removes nothing it did not make. */
static void takeover(struct fetch *f, const char *why)
{
    log_msg(LOG_WARN, "the replica fetching blob sha256:%s %s: taking the fetch over", f->hex, why);
    board_drop(f); /* this loop's followers on other loops read the old file: they stop */
    poll_stop(f);
    if (!leave_followed(f)) return;
    queue_open(f);
}

static void disk_fail(struct fetch *f, int err);
static void start_upstream(struct fetch *f);

/* The loop we followed stopped storing the blob by decision (the admit policy, or the
 * disk budget, said no): neither does this one, as its clients would have been served
 * on one loop (fetch_dont_store). The bytes are in the other loop's memory only now, so
 * this loop fetches the blob for its own clients as a pass-through; what they were sent
 * from the followed file is compared with the new stream as it is hashed (hash_work). */
static void refused_elsewhere(struct fetch *f)
{
    log_msg(LOG_INFO,
            "blob sha256:%s is not to be stored (decided on the loop that fetched it): "
            "fetching it again for this loop's clients, without storing",
            f->hex);
    if (!leave_followed(f)) return;
    f->refused = true;
    disk_fail(f, 0);
    start_upstream(f);
}

/* Reads exactly len bytes at off. */
static bool pread_full(int fd, char *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return true;
}

/* On the pool: does every file followers were sent bytes from hold, in [0, len), the
 * bytes of the final file f->fd? Only its first check_limit bytes are there to read. */
static void check_work(uv_work_t *w)
{
    struct fetch *f = w->data;
    const size_t cap = 256 * 1024;
    char *a = malloc(cap), *b = malloc(cap);
    bool ok = a != NULL && b != NULL && f->fd >= 0;
    for (unsigned i = 0; ok && i < f->n_served; i++) {
        uint64_t len = f->served[i].len;
        ok = len <= f->check_limit;
        for (uint64_t off = 0; ok && off < len; off += cap) {
            size_t n = len - off < cap ? (size_t)(len - off) : cap;
            ok = pread_full(f->served[i].fd, a, n, off) && pread_full(f->fd, b, n, off) &&
                 memcmp(a, b, n) == 0;
        }
    }
    free(a);
    free(b);
    f->check_ok = ok;
}

static void remote_complete(struct fetch *f);

static void check_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    f->check_pending = false;
    if (f->state == FETCH_RUNNING) {
        if (status != 0 || !f->check_ok) {
            fetch_fail(f, "%s", SERVED_MISMATCH);
        } else {
            f->served_checked = true;
            if (f->remote)
                remote_complete(f);
            else
                fetch_maybe_finish(f);
        }
    }
    fetch_unref(f);
}

/* Checks, on the pool, the bytes followers were sent from files that are not the final
 * one; the fetch completes after, or fails. */
static void served_check(struct fetch *f)
{
    if (f->check_pending) return;
    f->check_limit = f->written;
    f->check_ok = false;
    f->check_pending = true;
    f->check_work.data = f;
    fetch_ref(f);
    if (uv_queue_work(f->m->loop, &f->check_work, check_work, check_done) != 0) {
        f->check_pending = false;
        fetch_unref(f);
        fetch_fail(f, "cannot check the bytes already sent");
    }
}

/* A followed fetch whose blob is committed: done, once the bytes sent from other files
 * are accounted for. */
static void remote_complete(struct fetch *f)
{
    if (f->n_served > 0 && !f->served_checked) {
        served_check(f);
        return;
    }
    f->state = FETCH_DONE;
    unregister(f);
    wake(f);
}

/* On the pool: the followed file, the final file and (every 20th tick) the lock. */
static void poll_work_cb(uv_work_t *w)
{
    struct fetch *f = w->data;
    struct stat sb, fin;
    f->poll_err = fstat(f->fd, &sb) == 0 ? 0 : -errno;
    if (f->poll_err == 0) {
        f->poll_size = sb.st_size;
        f->poll_unlinked = sb.st_nlink == 0;
    }
    f->poll_final = -1;
    if (f->poll_err == 0 && store_stat_blob_sync(f->m->store, f->hex, &fin) == 0) {
        if (fin.st_dev == sb.st_dev && fin.st_ino == sb.st_ino) {
            f->poll_final = fin.st_size; /* the file we follow, committed */
        } else {
            /* Committed from another file (another replica's takeover finished first). */
            int fd = store_open_blob_sync(f->m->store, f->hex, &fin);
            if (fd >= 0) {
                f->poll_final_fd = fd;
                f->poll_final = fin.st_size;
            }
        }
    }
    f->poll_lock = -1;
    if (f->poll_ticks % 20 == 0) {
        struct store_lock_info li;
        int rc = store_lock_read_sync(f->m->store, f->hex, &li);
        bool invalid = rc == -EINVAL || rc == -ELOOP || rc == -EFBIG;
        f->poll_lock = rc == -ENOENT                        ? 2
                       : invalid                            ? 1
                       : rc != 0                            ? 0
                       : li.age_s > STORE_LOCK_STALE_S      ? 1
                       : strcmp(li.tmp, f->remote_tmp) != 0 ? 1
                                                            : 0;
    }
}

/*
 * Why the followed file holds bytes a follower cannot account for (written into buf),
 * or NULL: it shrank below what followers may have been sent, or grew past the size
 * the blob has.
 */
static const char *poll_unaccountable(const struct fetch *f, char *buf, size_t len)
{
    if ((uint64_t)f->poll_size < f->written)
        snprintf(buf, len, "shrank from %llu to %lld bytes", (unsigned long long)f->written,
                 (long long)f->poll_size);
    else if (f->size >= 0 && f->poll_size > f->size)
        snprintf(buf, len, "grew to %lld bytes, past the blob's %lld", (long long)f->poll_size,
                 (long long)f->size);
    else if (f->size < 0 && (uint64_t)f->poll_size > UNSIZED_MAX)
        snprintf(buf, len, "grew past %llu MiB with no size known",
                 (unsigned long long)(UNSIZED_MAX >> 20));
    else if (f->poll_final >= 0 && f->size >= 0 && f->poll_final != f->size)
        snprintf(buf, len, "was committed with %lld bytes, not the blob's %lld",
                 (long long)f->poll_final, (long long)f->size);
    else
        return NULL;
    return buf;
}

static void poll_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    f->poll_pending = false;
    uv_file final_fd = f->poll_final_fd;
    f->poll_final_fd = -1;
    char why[128];
    if (f->state != FETCH_RUNNING || !f->remote || status != 0) {
        if (final_fd >= 0) close(final_fd);
        fetch_unref(f);
        return;
    }
    if (f->poll_err != 0) {
        /* Over NFS, ESTALE once another host removed it: gone, like an unlinked file. */
        takeover(f, "removed its file (it can no longer be read)");
    } else if (poll_unaccountable(f, why, sizeof(why)) != NULL) {
        if (final_fd >= 0) close(final_fd);
        fetch_fail(f, "the file of the replica it followed (%s) %s: its clients are cut off",
                   f->remote_tmp, why);
    } else if (f->poll_final >= 0) {
        /* Committed: our descriptor reads it when it is the file we followed (renamed);
         * else the rest comes from the committed file, and what was sent from ours is
         * checked against it first. */
        poll_stop(f);
        if (final_fd >= 0 && !served_push(f)) {
            close(final_fd);
            fetch_fail(f, "the bytes already sent cannot be accounted for");
            fetch_unref(f);
            return;
        }
        /* Loops following us were sent bytes from the file we followed: they take it
         * over and check them against a stream of their own (board_drop), rather than
         * go on in a file that is not the blob's. */
        if (final_fd >= 0) board_drop(f);
        if (final_fd >= 0) f->fd = final_fd;
        f->size = f->poll_final;
        f->written = (uint64_t)f->poll_final;
        remote_complete(f);
    } else if (f->poll_unlinked) {
        /* Its file is gone and no blob came of it: failed, or taken over by another. */
        takeover(f, "removed its file");
    } else {
        if ((uint64_t)f->poll_size > f->written) {
            f->written = (uint64_t)f->poll_size;
            wake(f);
        }
        if (f->poll_lock == 2 && ++f->lock_missing >= 3)
            fetch_fail(f, "the replica that fetched it stopped without storing it");
        else if (f->poll_lock == 1)
            takeover(f, "stopped (no heartbeat, or its process is gone)");
        else if (f->poll_lock == 0)
            f->lock_missing = 0;
    }
    fetch_unref(f);
}

static void poll_tick(uv_timer_t *t)
{
    struct fetch *f = t->data;
    if (f->poll_pending || f->state != FETCH_RUNNING) return;
    f->poll_ticks++;
    f->poll_pending = true;
    f->poll_work.data = f;
    fetch_ref(f);
    if (uv_queue_work(f->m->loop, &f->poll_work, poll_work_cb, poll_done) != 0) {
        f->poll_pending = false;
        fetch_unref(f);
    }
}

static void poll_start(struct fetch *f)
{
    f->poll = malloc(sizeof(*f->poll));
    if (f->poll == NULL) {
        fetch_fail(f, "out of memory");
        return;
    }
    uv_timer_init(f->m->loop, f->poll);
    f->poll->data = f;
    uv_timer_start(f->poll, poll_tick, 0, 25);
}

/* --- Disk ------------------------------------------------------------------------- */

static void unlink_cb(uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    free(req);
}

static void unlink_tmp(struct fetch *f)
{
    if (f->tmp_path[0] == '\0') return;
    uv_fs_t *req = malloc(sizeof(*req));
    if (req == NULL || uv_fs_unlink(f->m->loop, req, f->tmp_path, unlink_cb) != 0) {
        free(req);
        unlink(f->tmp_path);
    }
    f->tmp_path[0] = '\0';
}

/* The disk failed (err < 0), or the blob must not be stored (err == 0): keep going
 * from memory, without storing. */
static void disk_fail(struct fetch *f, int err)
{
    if (err < 0)
        log_msg(LOG_ERROR,
                "cannot store blob sha256:%s in %s (%s): passing it through to its clients "
                "without storing; hits are still served",
                f->hex, store_root(f->m->store), strerror(-err));
    else
        log_msg(LOG_INFO,
                "blob sha256:%s (%lld bytes) is not stored (larger than the disk budget allows, "
                "or the admit policy said so): passing it through",
                f->hex, (long long)f->size);
    fetch_ref(f);
    f->disk_failed = true;
    f->m->stats.passthrough++;
    /* It stays registered (running, and stopped at shutdown) but takes no new followers
     * (fetch_find): they start their own fetch. */
    /* What is written stays readable through the open descriptor; the rest is in the
     * spool, which from now on waits for the followers. */
    unlink_tmp(f);
    lock_release(f);
    /* The spool's bound changes meaning: what is hashed and read goes now, and the
     * upstream, maybe paused for the disk, goes on. Nothing else may come to do it: the
     * hash and every follower may be waiting for the upstream already. */
    spool_trim(f);
    wake(f);
    fetch_unref(f);
}

static void write_work(uv_work_t *w)
{
    struct spool_job *j = w->data;
    struct fetch *f = j->f;
    struct iovec *iov = j->iov;
    int n = j->n_iov;
    uint64_t off = j->off;
    j->err = 0;
    while (n > 0) {
        ssize_t got = pwritev(f->fd, iov, n, (off_t)off);
        if (got < 0) {
            if (errno == EINTR) continue;
            j->err = -errno;
            return;
        }
        if (got == 0) {
            j->err = -EIO;
            return;
        }
        off += (uint64_t)got;
        /* A short write: go on from where it stopped. */
        while (n > 0 && (size_t)got >= iov->iov_len) {
            got -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + got;
            iov->iov_len -= (size_t)got;
        }
    }
}

/* Do [off, off + len) of the files followers were sent bytes from (served) hold `data`
 * where they overlap it? Read on the pool, beside the hash. */
static bool served_match(const struct fetch *f, const char *data, size_t len, uint64_t off)
{
    char buf[64 * 1024];
    for (unsigned i = 0; i < f->n_served; i++) {
        uint64_t end = f->served[i].len;
        for (uint64_t at = off; at < end && at < off + len; at += sizeof(buf)) {
            size_t n = sizeof(buf);
            if (at + n > end) n = (size_t)(end - at);
            if (at + n > off + len) n = (size_t)(off + len - at);
            if (!pread_full(f->served[i].fd, buf, n, at) || memcmp(buf, data + (at - off), n) != 0)
                return false;
        }
    }
    return true;
}

/* Hashes the job's bytes; after a takeover, also compares them with what followers were
 * sent from the files followed before (the comparison that served_check makes with the
 * final file, made here because a fetch that cannot store has no final file to read). */
static void hash_work(uv_work_t *w)
{
    struct spool_job *j = w->data;
    struct fetch *f = j->f;
    uint64_t off = j->off;
    j->mismatch = false;
    for (int i = 0; i < j->n_iov; i++) {
        digest_sha256_update(&f->sha, j->iov[i].iov_base, j->iov[i].iov_len);
        if (f->n_served > 0 && !served_match(f, j->iov[i].iov_base, j->iov[i].iov_len, off))
            j->mismatch = true;
        off += j->iov[i].iov_len;
    }
}

/* The bytes followers were sent from other files are all compared (hash_work) once the
 * hash has passed the longest of them. */
static bool served_all_hashed(const struct fetch *f)
{
    for (unsigned i = 0; i < f->n_served; i++)
        if (f->served[i].len > f->hashed) return false;
    return true;
}

static void spool_kick(struct fetch *f);

static void write_done(uv_work_t *w, int status)
{
    struct spool_job *j = w->data;
    struct fetch *f = j->f;
    j->pending = false;
    /* A pass-through since this write left: its chunks may go now. */
    if (f->state == FETCH_RUNNING && f->disk_failed) spool_trim(f);
    if (f->state == FETCH_RUNNING && !f->disk_failed) {
        if (status == UV_ECANCELED) j->err = -ECANCELED;
        if (j->err != 0) {
            disk_fail(f, j->err);
        } else {
            f->written += j->len;
            board_publish(f); /* other loops read it from the file */
            spool_trim(f);
            spool_kick(f);
        }
        fetch_maybe_finish(f);
    }
    fetch_unref(f);
}

static void hash_done(uv_work_t *w, int status)
{
    struct spool_job *j = w->data;
    struct fetch *f = j->f;
    j->pending = false;
    if (status == UV_ECANCELED) hash_work(w); /* it never ran: here, on the loop */
    f->hashed += j->len;
    if (f->state == FETCH_RUNNING && f->n_served > 0 && !f->served_checked) {
        if (j->mismatch) {
            fetch_fail(f, "%s", SERVED_MISMATCH);
        } else if (served_all_hashed(f)) {
            f->served_checked = true;
        }
    }
    if (f->state == FETCH_RUNNING) {
        spool_trim(f);
        spool_kick(f);
        fetch_maybe_finish(f);
    }
    fetch_unref(f);
}

/* Starts j over the spool from `from`; false when it could not be queued. */
static bool job_start(struct fetch *f, struct spool_job *j, uint64_t from, uv_work_cb work,
                      uv_after_work_cb done)
{
    job_fill(f, j, from);
    if (j->len == 0) return true;
    j->f = f;
    j->work.data = j;
    fetch_ref(f);
    if (uv_queue_work(f->m->loop, &j->work, work, done) != 0) {
        fetch_unref(f);
        return false;
    }
    j->pending = true;
    return true;
}

/* Starts the write and the hash of what the spool holds past them, when they are idle
 * and there is enough (or the body is all in): fewer, larger work items. */
static void spool_kick(struct fetch *f)
{
    if (f->state != FETCH_RUNNING || f->remote) return;
    uint64_t min = f->up_done ? 1 : JOB_MIN;
    if (!f->hash_job.pending && f->received - f->hashed >= min &&
        !job_start(f, &f->hash_job, f->hashed, hash_work, hash_done)) {
        /* No thread pool: hash here. */
        job_fill(f, &f->hash_job, f->hashed);
        f->hash_job.f = f;
        hash_work(&f->hash_job.work);
        f->hash_job.work.data = &f->hash_job;
        f->hashed += f->hash_job.len;
        if (f->hash_job.mismatch) {
            fetch_fail(f, "%s", SERVED_MISMATCH);
            return;
        }
    }
    if (f->fd_ready && !f->disk_failed && !f->write_job.pending &&
        f->received - f->written >= min &&
        !job_start(f, &f->write_job, f->written, write_work, write_done))
        disk_fail(f, -EIO);
}

static void open_work(uv_work_t *w)
{
    struct fetch *f = w->data;
    struct store *st = f->m->store;
    f->opened_fd = -1;
    f->opened_locked = f->opened_remote = f->opened_committed = false;
    f->opened_size = -1;
    int fd = store_tmp_create_sync(st, f->hex, f->tmp_path, sizeof(f->tmp_path));
    if (fd < 0) {
        f->open_err = fd;
        f->tmp_path[0] = '\0';
        return;
    }
    f->opened_fd = fd;
    struct store_lock_info held;
    int rc = store_lock_acquire_sync(st, f->hex, f->tmp_path, f->opened_size_hint, &held);
    struct stat sb;
    if (rc == 0) {
        /* The blob may have been committed (by another loop or replica, which then let
         * go of its claim and lock) after the request looked at the store and before
         * the claim and the lock were ours: then it is followed as committed, not
         * fetched a second time. */
        int bfd = store_open_blob_sync(st, f->hex, &sb);
        if (bfd < 0) {
            f->opened_locked = true;
            return;
        }
        store_lock_release_sync(st, f->hex);
        close(fd);
        unlink(f->tmp_path);
        f->tmp_path[0] = '\0';
        f->opened_fd = bfd;
        f->opened_remote = f->opened_committed = true;
        f->remote_tmp[0] = '\0';
        f->opened_size = sb.st_size;
        return;
    }
    if (rc != -EEXIST) return; /* no lock to be had: fetch on our own */
    /* Another process sharing the root fetches it: follow its file. */
    close(fd);
    unlink(f->tmp_path);
    f->tmp_path[0] = '\0';
    f->opened_fd = -1;
    int rfd = store_lock_tmp_open_sync(st, &held, &sb);
    if (rfd < 0) rfd = store_open_blob_sync(st, f->hex, &sb); /* it may have just committed */
    if (rfd < 0) {
        f->open_err = -EAGAIN;
        return;
    }
    f->opened_fd = rfd;
    f->opened_remote = true;
    snprintf(f->remote_tmp, sizeof(f->remote_tmp), "%s", held.tmp);
    f->opened_size = held.size;
}

static void start_upstream(struct fetch *f);

static void open_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    if (f->opened_fd >= 0) f->fd = f->opened_fd;
    f->opened_fd = -1;
    if (f->opened_locked) f->locked = true;
    if (f->opened_remote) f->remote = true;
    if (f->opened_remote && f->size < 0 && f->opened_size >= 0) f->size = f->opened_size;
    if (f->state != FETCH_RUNNING) {
        /* Failed meanwhile: the file and the lock have no use. */
        if (!f->remote) unlink_tmp(f);
        lock_release(f);
        fetch_unref(f);
        return;
    }
    if (status == UV_ECANCELED) f->open_err = -ECANCELED;
    if (f->open_err == -EAGAIN) {
        fetch_fail(f, "the replica that fetched it has just stopped; ask again");
    } else if (f->open_err != 0) {
        disk_fail(f, f->open_err);
        start_upstream(f);
    } else if (f->remote && f->opened_committed) {
        f->found_stored = true;
        log_msg(LOG_DEBUG, "blob sha256:%s was stored meanwhile: served from the store", f->hex);
        if (f->claim != NULL && fetch_board_set_fd(f->claim, f->fd) != 0) board_drop(f);
        poll_start(f); /* (its first look finds the blob committed: done) */
    } else if (f->remote) {
        log_msg(LOG_INFO,
                "blob sha256:%s is being fetched by another replica: following its "
                "file %s",
                f->hex, f->remote_tmp);
        f->m->stats.followed++;
        if (f->claim != NULL && fetch_board_set_fd(f->claim, f->fd) != 0) board_drop(f);
        poll_start(f);
    } else {
        /* Taken over or not, a file another replica made is never removed here: the
         * start-up clean-up (of whichever replica starts next) or fsck --repair does. */
        f->fd_ready = true;
        if (f->claim != NULL && fetch_board_set_fd(f->claim, f->fd) != 0) board_drop(f);
        if (f->locked) beat_ensure(f->m);
        start_upstream(f);
        spool_kick(f);
    }
    fetch_maybe_finish(f);
    fetch_unref(f);
}

static void queue_open(struct fetch *f)
{
    f->open_err = 0;
    f->opened_size_hint = f->size; /* (read on the pool: a copy) */
    f->opened_fd = -1;             /* (until open_work says otherwise) */
    f->opened_locked = f->opened_remote = false;
    f->open_work.data = f;
    fetch_ref(f);
    if (uv_queue_work(f->m->loop, &f->open_work, open_work, open_done) != 0) {
        fetch_unref(f);
        disk_fail(f, -EIO);
        start_upstream(f);
    }
}

/* --- Commit and the end ------------------------------------------------------------- */

static void fetch_fail(struct fetch *f, const char *fmt, ...)
{
    if (f->state != FETCH_RUNNING) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->error, sizeof(f->error), fmt, ap);
    va_end(ap);
    f->state = FETCH_FAILED;
    f->m->stats.failed++;
    log_msg(LOG_ERROR, "fetch of blob sha256:%s failed: %s; nothing stored", f->hex, f->error);
    fetch_ref(f);
    if (f->up != NULL && !f->up_done) {
        chain_cancel(f->up);
        f->up = NULL;
        f->up_done = true;
    }
    /* A commit in flight on the thread pool owns the file and the lock (it renames or
     * removes the one and releases the other): neither is touched here meanwhile. */
    if (f->fd_ready && !f->committing)
        unlink_tmp(f); /* a pending write lands in the unlinked file, harmlessly */
    if (!f->committing) lock_release(f);
    poll_stop(f);
    mirror_stop(f);
    unregister(f);
    wake(f);
    fetch_unref(f);
}

static void commit_work(uv_work_t *w)
{
    struct fetch *f = w->data;
    f->commit_err = store_commit_sync(f->m->store, f->fd, f->tmp_path, f->hex);
    /* Stored anew: its pull count (pulls.h) starts again, as its created time does. */
    if (f->commit_err == 0) pulls_reset_sync(f->m->store, f->hex);
    if (f->locked) store_lock_release_sync(f->m->store, f->hex);
}

static void commit_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    f->committing = false;
    f->locked = false;     /* released by commit_work */
    f->tmp_path[0] = '\0'; /* renamed, or unlinked by store_commit_sync */
    if (status == UV_ECANCELED) f->commit_err = -ECANCELED;
    if (f->commit_err == 0 && f->m->on_commit != NULL)
        f->m->on_commit(f->m->hook_ud, f->hex, f->received);
    if (f->commit_err != 0)
        log_msg(LOG_ERROR,
                "blob sha256:%s was verified but could not be stored (%s): its clients get it "
                "whole, the next request fetches it again",
                f->hex, strerror(-f->commit_err));
    else
        f->m->stats.committed++;
    f->state = FETCH_DONE;
    log_msg(LOG_DEBUG, "blob sha256:%s: %llu bytes verified%s", f->hex,
            (unsigned long long)f->received, f->commit_err ? "" : " and stored");
    unregister(f);
    wake(f);
    fetch_unref(f);
}

/* When the body is in and written: check it, then commit. */
static void fetch_maybe_finish(struct fetch *f)
{
    if (f->state != FETCH_RUNNING || !f->up_done || f->committing || f->check_pending) return;
    if (f->up_err != 0) {
        char why[sizeof(f->error)];
        snprintf(why, sizeof(why), "%s", f->error[0] ? f->error : "upstream failed");
        f->error[0] = '\0';
        fetch_fail(f, "%s", why);
        return;
    }
    if (f->hash_job.pending || f->hashed < f->received) return; /* still hashing */
    if (f->size >= 0 && f->received != (uint64_t)f->size) {
        fetch_fail(f, "short body from %s: %llu of %lld bytes", f->upstream ? f->upstream : "?",
                   (unsigned long long)f->received, (long long)f->size);
        return;
    }
    bool writing =
        !f->disk_failed && (!f->fd_ready || f->write_job.pending || f->written < f->received);
    if (f->n_served > 0 && !f->served_checked) {
        /* Taken over: what followers got from the old file is compared with ours first,
         * once ours is written. */
        if (!writing) served_check(f);
        return;
    }
    if (!f->verified) {
        unsigned char bin[DIGEST_SHA256_LEN];
        char hex[DIGEST_SHA256_HEX_LEN + 1];
        digest_sha256_final(&f->sha, bin);
        digest_hex(bin, hex);
        if (memcmp(hex, f->hex, DIGEST_SHA256_HEX_LEN) != 0) {
            fetch_fail(f, "digest mismatch: %s sent %llu bytes hashing to sha256:%s",
                       f->upstream ? f->upstream : "the upstream", (unsigned long long)f->received,
                       hex);
            return;
        }
        if (f->size < 0) f->size = (int64_t)f->received;
        /* Verified: the followers may send the last byte now, from the spool; making it
         * durable (the rest of the writes, fsync, rename) goes on behind them. */
        f->verified = true;
        wake(f);
        if (f->state != FETCH_RUNNING) return;
    }
    if (writing) return; /* write_done comes back */
    if (f->disk_failed) {
        f->state = FETCH_DONE;
        unregister(f);
        wake(f);
        return;
    }
    f->committing = true;
    f->commit_work.data = f;
    fetch_ref(f);
    if (uv_queue_work(f->m->loop, &f->commit_work, commit_work, commit_done) != 0) {
        f->committing = false;
        fetch_unref(f);
        fetch_fail(f, "cannot queue the commit");
    }
}

/* --- Upstream callbacks ------------------------------------------------------------ */

static void up_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                    int64_t content_length)
{
    struct fetch *f = ud;
    free(f->upstream);
    f->upstream = strdup(chain_base(f->up));
    if (status != 200) {
        fetch_fail(f, "%s answered %d to GET of the blob", chain_base(f->up), status);
        return;
    }
    if (content_length >= 0) {
        if (f->size >= 0 && content_length != f->size) {
            fetch_fail(f, "%s announced %lld bytes, its HEAD said %lld", chain_base(f->up),
                       (long long)content_length, (long long)f->size);
            return;
        }
        f->size = content_length;
    }
    f->head_seen = true;
    wake(f);
}

static void up_body(void *ud, const char *data, size_t len)
{
    struct fetch *f = ud;
    if (f->state != FETCH_RUNNING) return;
    uint64_t total = f->received + len;
    if (f->size < 0 && total > UNSIZED_MAX) {
        fetch_fail(f, "%s sent more than %llu MiB of a blob without announcing its length",
                   f->upstream, (unsigned long long)(UNSIZED_MAX >> 20));
        return;
    }
    if (f->size >= 0 && total > (uint64_t)f->size) {
        fetch_fail(f, "%s sent more than the %lld bytes it announced", f->upstream,
                   (long long)f->size);
        return;
    }
    if (spool_append(f, data, len) != 0) {
        fetch_fail(f, "out of memory while fetching");
        return;
    }
    if (up_should_pause(f) && !f->up_paused) {
        f->up_paused = true;
        chain_pause(f->up);
    }
    spool_kick(f);
    wake(f); /* followers that caught up send what came, from the spool */
}

static void up_done(void *ud, int err)
{
    struct fetch *f = ud;
    if (err < 0 && f->state == FETCH_RUNNING)
        snprintf(f->error, sizeof(f->error), "%s", chain_error_message(f->up));
    f->up = NULL;
    f->up_done = true;
    f->up_err = err;
    fetch_ref(f);
    spool_kick(f); /* the rest of the body, however small */
    wake(f);
    fetch_maybe_finish(f);
    fetch_unref(f);
}

/* Keeps a copy of the upstream request: it starts after the lock, maybe twice. */
static int spec_copy(struct fetch *f, const struct chain_spec *spec)
{
    f->spec = *spec;
    f->spec.n_bases = 0;
    f->spec.n_headers = 0;
    f->spec_bases = calloc(spec->n_bases ? spec->n_bases : 1, sizeof(char *));
    f->spec_headers = calloc(spec->n_headers ? spec->n_headers : 1, sizeof(*f->spec_headers));
    f->spec_target = strdup(spec->target);
    if (f->spec_bases == NULL || f->spec_headers == NULL || f->spec_target == NULL)
        return UV_ENOMEM;
    for (size_t i = 0; i < spec->n_bases; i++) {
        if ((f->spec_bases[i] = strdup(spec->bases[i])) == NULL) return UV_ENOMEM;
        f->spec.n_bases++;
    }
    for (size_t i = 0; i < spec->n_headers; i++) {
        f->spec_headers[i].name = strdup(spec->headers[i].name);
        f->spec_headers[i].value = strdup(spec->headers[i].value);
        f->spec_headers[i].sensitive = spec->headers[i].sensitive;
        f->spec.n_headers++;
        if (f->spec_headers[i].name == NULL || f->spec_headers[i].value == NULL) return UV_ENOMEM;
    }
    f->spec.bases = (const char *const *)f->spec_bases;
    f->spec.headers = f->spec_headers;
    f->spec.target = f->spec_target;
    return 0;
}

static void start_upstream(struct fetch *f)
{
    static const struct upstream_callbacks cbs = {up_head, up_body, up_done};
    if (f->state != FETCH_RUNNING) return;
    f->up_done = false;
    f->up_err = 0;
    /* From the start (also after a takeover: the followed replica wrote to its own file,
     * and no work item of ours is out). */
    spool_free(f);
    f->received = 0;
    f->hashed = 0;
    digest_sha256_init(&f->sha);
    int rc = chain_request(f->m->pool, &f->spec, &cbs, f, &f->up);
    if (rc < 0) {
        f->up = NULL;
        f->up_done = true;
        fetch_fail(f, "cannot ask the upstream: %s", uv_strerror(rc));
    }
}

int fetch_start(struct fetch_manager *m, const char *hex, const struct chain_spec *spec,
                int64_t expected_size, bool store_it, struct fetch **out)
{
    if (!store_hex_valid(hex)) return UV_EINVAL;
    /* Another loop of the process fetches it: follow that one. (Between its release
     * and our claim the blob may change hands: a few tries.) */
    struct fetch_board_claim *claim = NULL;
    for (int tries = 0; m->board != NULL && store_it && tries < 3; tries++) {
        int rc = fetch_board_claim(m->board, hex, &claim);
        if (rc == 0) break;
        if (rc == -EEXIST && (rc = mirror_start(m, hex, spec, out)) != -ENOENT) return rc;
        if (rc == -ENOMEM) return UV_ENOMEM;
    }
    struct fetch *f = fetch_new(m, hex, expected_size, spec);
    if (f == NULL) {
        if (claim != NULL) fetch_board_release(claim);
        return UV_ENOMEM;
    }
    f->claim = claim;
    manager_register(m, f);
    m->stats.started++;
    *out = f;
    if (!store_it) {
        f->refused = true;
        disk_fail(f, 0);
        start_upstream(f);
        return 0;
    }
    queue_open(f); /* the lock and the file first, then the upstream (or another's file) */
    return 0;
}

void fetch_dont_store(struct fetch *f)
{
    if (f->state != FETCH_RUNNING || f->disk_failed || f->committing || f->verified || f->remote)
        return;
    f->refused = true; /* (loops that follow it learn why: board_publish) */
    disk_fail(f, 0);
}

void fetch_manager_cancel_all(struct fetch_manager *m)
{
    m->stopped = true;
    while (m->active != NULL)
        fetch_fail(m->active, "the cache is stopping");
    if (m->beat != NULL) {
        uv_close((uv_handle_t *)m->beat, handle_free_cb);
        m->beat = NULL;
    }
    if (m->spare_timer != NULL) {
        uv_close((uv_handle_t *)m->spare_timer, handle_free_cb);
        m->spare_timer = NULL;
    }
}

void fetch_render_metrics(const void *fetch_manager, struct textbuf *out)
{
    static const char name[] = "content_cache_fetches_total";
    const struct fetch_stats *fs = fetch_stats(fetch_manager);
    metrics_help(out, name, "counter",
                 "Upstream blob fetches, by outcome (started, committed, failed, passthrough).");
    metrics_labelled(out, name, "outcome", "started", fs->started);
    metrics_labelled(out, name, "outcome", "committed", fs->committed);
    metrics_labelled(out, name, "outcome", "failed", fs->failed);
    metrics_labelled(out, name, "outcome", "passthrough", fs->passthrough);
    metrics_value(out, "content_cache_fetches_running", "gauge", "Fetches in progress.",
                  fetch_manager_active(fetch_manager));
}
