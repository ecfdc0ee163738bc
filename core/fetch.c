/*
 * fetch.c: one upstream fetch per missing blob. See fetch.h for the contract.
 *
 * Bytes move: upstream -> `collect` (memory, on the loop) -> one work item at a time
 * on the thread pool: pwrite at `written`, then sha256 of the same bytes -> `written`
 * grows and the followers are woken. The upstream is paused while `collect` holds
 * more than COLLECT_HIGH bytes, so the disk sets the pace.
 */
#include "fetch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "digest.h"
#include "log.h"

#define COLLECT_HIGH (8u << 20)  /* pause the upstream past this much unwritten data */
#define COLLECT_LOW (2u << 20)   /* and resume below this */
#define WINDOW_HIGH (16u << 20)  /* pass-through: pause past this much unread data */

struct fetch_manager {
    uv_loop_t *loop;
    struct store *store;
    struct upstream_pool *pool;
    struct fetch *active; /* running fetches that take followers */
    unsigned n_active;
    struct fetch_stats stats;
    void (*on_commit)(void *ud, const char *hex, uint64_t size);
    void *hook_ud;
};

void fetch_manager_on_commit(struct fetch_manager *m,
                             void (*cb)(void *ud, const char *hex, uint64_t size), void *ud)
{
    m->on_commit = cb;
    m->hook_ud = ud;
}

struct fetch {
    struct fetch_manager *m;
    struct fetch *next, *prev; /* the manager's list, while registered */
    bool registered;
    int refs;
    char hex[65];
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

    /* Writing: `collect` gathers, `batch` is being written by the work item. */
    char *collect;
    size_t collect_len, collect_cap;
    char *batch;
    size_t batch_len, batch_cap;
    bool batch_pending;
    int batch_err;
    uv_work_t batch_work;
    uint64_t written;
    struct digest_sha256 sha;

    bool committing;
    uv_work_t commit_work;
    int commit_err;

    /* Pass-through after a disk failure: bytes [win_start, win_start + win_len). */
    bool disk_failed;
    uint64_t win_start;
    char *win;
    size_t win_len, win_cap;

    struct fetch_follower *followers;
    struct fetch_waiter *waiters;
};

static void fetch_maybe_finish(struct fetch *f);
static void fetch_fail(struct fetch *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --- Manager ---------------------------------------------------------------------- */

struct fetch_manager *fetch_manager_new(uv_loop_t *loop, struct store *store,
                                        struct upstream_pool *pool)
{
    struct fetch_manager *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->loop = loop;
    m->store = store;
    m->pool = pool;
    return m;
}

void fetch_manager_free(struct fetch_manager *m)
{
    free(m);
}

const struct fetch_stats *fetch_manager_stats(const struct fetch_manager *m)
{
    return &m->stats;
}

unsigned fetch_manager_active(const struct fetch_manager *m)
{
    return m->n_active;
}

struct fetch *fetch_find(struct fetch_manager *m, const char *hex)
{
    for (struct fetch *f = m->active; f != NULL; f = f->next)
        if (memcmp(f->hex, hex, 64) == 0)
            return f;
    return NULL;
}

static void unregister(struct fetch *f)
{
    if (!f->registered)
        return;
    f->registered = false;
    if (f->prev)
        f->prev->next = f->next;
    else
        f->m->active = f->next;
    if (f->next)
        f->next->prev = f->prev;
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

void fetch_unref(struct fetch *f)
{
    if (--f->refs > 0)
        return;
    if (f->fd >= 0) {
        uv_fs_t *req = malloc(sizeof(*req));
        if (req == NULL || uv_fs_close(f->m->loop, req, f->fd, close_cb) != 0) {
            free(req);
            close(f->fd);
        }
    }
    free(f->upstream);
    free(f->collect);
    free(f->batch);
    free(f->win);
    free(f);
}

static void wake(struct fetch *f)
{
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
    if (w->queued)
        return;
    w->queued = true;
    w->next = f->waiters;
    f->waiters = w;
}

void fetch_unwait(struct fetch *f, struct fetch_waiter *w)
{
    if (!w->queued)
        return;
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

int64_t fetch_size(const struct fetch *f)
{
    return f->size;
}

uint64_t fetch_readable(const struct fetch *f)
{
    uint64_t n = f->disk_failed ? f->win_start + f->win_len : f->written;
    if (f->state != FETCH_DONE && f->size > 0 && n >= (uint64_t)f->size)
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
    return f->disk_failed && offset >= f->win_start;
}

size_t fetch_copy_window(const struct fetch *f, uint64_t offset, char *buf, size_t len)
{
    if (!f->disk_failed || offset < f->win_start || offset >= f->win_start + f->win_len)
        return 0;
    size_t at = (size_t)(offset - f->win_start);
    size_t n = f->win_len - at;
    uint64_t readable = fetch_readable(f);
    if (offset + n > readable)
        n = readable > offset ? (size_t)(readable - offset) : 0;
    if (n > len)
        n = len;
    memcpy(buf, f->win + at, n);
    return n;
}

/* --- Pass-through window ------------------------------------------------------------ */

static void window_trim(struct fetch *f)
{
    if (!f->disk_failed)
        return;
    uint64_t low = f->win_start + f->win_len;
    for (struct fetch_follower *fl = f->followers; fl != NULL; fl = fl->next)
        if (fl->offset < low)
            low = fl->offset;
    if (low > f->win_start) {
        size_t drop = (size_t)(low - f->win_start);
        memmove(f->win, f->win + drop, f->win_len - drop);
        f->win_len -= drop;
        f->win_start = low;
    }
    if (f->up_paused && f->win_len < WINDOW_HIGH / 2 && !f->up_done) {
        f->up_paused = false;
        chain_resume(f->up);
    }
}

void fetch_follow_begin(struct fetch *f, struct fetch_follower *fl)
{
    fl->prev = NULL;
    fl->next = f->followers;
    if (f->followers)
        f->followers->prev = fl;
    f->followers = fl;
}

void fetch_follow_moved(struct fetch *f)
{
    window_trim(f);
}

void fetch_follow_end(struct fetch *f, struct fetch_follower *fl)
{
    if (fl->prev == NULL && f->followers != fl)
        return; /* never began, or already ended */
    if (fl->prev)
        fl->prev->next = fl->next;
    else
        f->followers = fl->next;
    if (fl->next)
        fl->next->prev = fl->prev;
    fl->prev = fl->next = NULL;
    window_trim(f);
    if (f->disk_failed && f->followers == NULL && f->state == FETCH_RUNNING) {
        /* Nothing can be stored and nobody is reading: stop. */
        fetch_fail(f, "every client left a fetch that could not be stored");
    }
}

/* --- Disk ------------------------------------------------------------------------- */

static int append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256 * 1024;
        while (c < *len + n)
            c *= 2;
        char *nb = realloc(*buf, c);
        if (nb == NULL)
            return -ENOMEM;
        *buf = nb;
        *cap = c;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

static void unlink_cb(uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    free(req);
}

static void unlink_tmp(struct fetch *f)
{
    if (f->tmp_path[0] == '\0')
        return;
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
                "blob sha256:%s (%lld bytes) is larger than the disk budget allows: passing it "
                "through without storing",
                f->hex, (long long)f->size);
    fetch_ref(f);
    f->disk_failed = true;
    f->m->stats.passthrough++;
    unregister(f); /* no new followers: they start their own fetch */
    f->win_start = f->written;
    /* The unwritten bytes, in order: the failed batch, then what was collected since. */
    if (f->batch_len > 0 && append(&f->win, &f->win_len, &f->win_cap, f->batch, f->batch_len))
        goto oom;
    if (f->collect_len > 0 &&
        append(&f->win, &f->win_len, &f->win_cap, f->collect, f->collect_len))
        goto oom;
    digest_sha256_update(&f->sha, f->win, f->win_len);
    f->batch_len = f->collect_len = 0;
    unlink_tmp(f);
    wake(f);
    fetch_unref(f);
    return;
oom:
    fetch_fail(f, "out of memory while passing a blob through");
    fetch_unref(f);
}

static void batch_work(uv_work_t *w)
{
    struct fetch *f = w->data;
    size_t done = 0;
    f->batch_err = 0;
    while (done < f->batch_len) {
        ssize_t n = pwrite(f->fd, f->batch + done, f->batch_len - done,
                           (off_t)(f->written + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            f->batch_err = -errno;
            return;
        }
        if (n == 0) {
            f->batch_err = -EIO;
            return;
        }
        done += (size_t)n;
    }
    digest_sha256_update(&f->sha, f->batch, f->batch_len);
}

static void submit_batch(struct fetch *f);

static void batch_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    f->batch_pending = false;
    if (f->state != FETCH_RUNNING) {
        fetch_unref(f);
        return;
    }
    if (status == UV_ECANCELED)
        f->batch_err = -ECANCELED;
    if (f->batch_err != 0) {
        disk_fail(f, f->batch_err);
    } else {
        f->written += f->batch_len;
        f->batch_len = 0;
        if (f->up_paused && f->collect_len < COLLECT_LOW && !f->up_done) {
            f->up_paused = false;
            chain_resume(f->up);
        }
        wake(f);
        submit_batch(f);
    }
    fetch_maybe_finish(f);
    fetch_unref(f);
}

static void submit_batch(struct fetch *f)
{
    if (f->batch_pending || !f->fd_ready || f->disk_failed || f->collect_len == 0 ||
        f->state != FETCH_RUNNING)
        return;
    /* Swap the buffers: collect becomes the batch, the old batch buffer collects. */
    char *b = f->batch;
    size_t bc = f->batch_cap;
    f->batch = f->collect;
    f->batch_cap = f->collect_cap;
    f->batch_len = f->collect_len;
    f->collect = b;
    f->collect_cap = bc;
    f->collect_len = 0;
    f->batch_pending = true;
    f->batch_work.data = f;
    fetch_ref(f);
    if (uv_queue_work(f->m->loop, &f->batch_work, batch_work, batch_done) != 0) {
        f->batch_pending = false;
        fetch_unref(f);
        disk_fail(f, -EIO);
    }
}

static void open_work(uv_work_t *w)
{
    struct fetch *f = w->data;
    int fd = store_tmp_create_sync(f->m->store, f->hex, f->tmp_path, sizeof(f->tmp_path));
    if (fd < 0) {
        f->open_err = fd;
        f->tmp_path[0] = '\0';
    } else {
        f->fd = fd;
    }
}

static void open_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    if (f->state != FETCH_RUNNING) {
        /* Failed meanwhile: the file has no use. */
        unlink_tmp(f);
        fetch_unref(f);
        return;
    }
    if (status == UV_ECANCELED)
        f->open_err = -ECANCELED;
    if (f->open_err != 0) {
        disk_fail(f, f->open_err);
    } else {
        f->fd_ready = true;
        submit_batch(f);
    }
    fetch_maybe_finish(f);
    fetch_unref(f);
}

/* --- Commit and the end ------------------------------------------------------------- */

static void fetch_fail(struct fetch *f, const char *fmt, ...)
{
    if (f->state != FETCH_RUNNING)
        return;
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
    if (f->fd_ready)
        unlink_tmp(f); /* a pending write lands in the unlinked file, harmlessly */
    unregister(f);
    wake(f);
    fetch_unref(f);
}

static void commit_work(uv_work_t *w)
{
    struct fetch *f = w->data;
    f->commit_err = store_commit_sync(f->m->store, f->fd, f->tmp_path, f->hex);
}

static void commit_done(uv_work_t *w, int status)
{
    struct fetch *f = w->data;
    f->committing = false;
    f->tmp_path[0] = '\0'; /* renamed, or unlinked by store_commit_sync */
    if (status == UV_ECANCELED)
        f->commit_err = -ECANCELED;
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
    if (f->state != FETCH_RUNNING || !f->up_done || f->committing)
        return;
    if (f->up_err != 0) {
        char why[sizeof(f->error)];
        snprintf(why, sizeof(why), "%s", f->error[0] ? f->error : "upstream failed");
        f->error[0] = '\0';
        fetch_fail(f, "%s", why);
        return;
    }
    if (!f->disk_failed && (!f->fd_ready || f->batch_pending || f->collect_len > 0))
        return; /* still writing */
    if (f->size >= 0 && f->received != (uint64_t)f->size) {
        fetch_fail(f, "short body from %s: %llu of %lld bytes", f->upstream ? f->upstream : "?",
                   (unsigned long long)f->received, (long long)f->size);
        return;
    }
    unsigned char bin[32];
    char hex[65];
    digest_sha256_final(&f->sha, bin);
    digest_hex(bin, hex);
    if (memcmp(hex, f->hex, 64) != 0) {
        fetch_fail(f, "digest mismatch: %s sent %llu bytes hashing to sha256:%s",
                   f->upstream ? f->upstream : "the upstream", (unsigned long long)f->received,
                   hex);
        return;
    }
    if (f->size < 0)
        f->size = (int64_t)f->received;
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
    wake(f);
}

static void up_body(void *ud, const char *data, size_t len)
{
    struct fetch *f = ud;
    if (f->state != FETCH_RUNNING)
        return;
    f->received += len;
    if (f->size >= 0 && f->received > (uint64_t)f->size) {
        fetch_fail(f, "%s sent more than the %lld bytes it announced", f->upstream,
                   (long long)f->size);
        return;
    }
    if (f->disk_failed) {
        if (append(&f->win, &f->win_len, &f->win_cap, data, len) != 0) {
            fetch_fail(f, "out of memory while passing a blob through");
            return;
        }
        digest_sha256_update(&f->sha, data, len);
        if (f->win_len >= WINDOW_HIGH && !f->up_paused) {
            f->up_paused = true;
            chain_pause(f->up);
        }
        wake(f);
        return;
    }
    if (append(&f->collect, &f->collect_len, &f->collect_cap, data, len) != 0) {
        fetch_fail(f, "out of memory while fetching");
        return;
    }
    if (f->collect_len >= COLLECT_HIGH && !f->up_paused) {
        f->up_paused = true;
        chain_pause(f->up);
    }
    submit_batch(f);
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
    fetch_maybe_finish(f);
    fetch_unref(f);
}

int fetch_start(struct fetch_manager *m, const char *hex, const struct chain_spec *spec,
                int64_t expected_size, bool store_it, struct fetch **out)
{
    if (!store_hex_valid(hex))
        return UV_EINVAL;
    struct fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return UV_ENOMEM;
    f->m = m;
    memcpy(f->hex, hex, 65);
    f->fd = -1;
    f->size = expected_size;
    f->refs = 2; /* the manager's and the caller's */
    digest_sha256_init(&f->sha);
    static const struct upstream_callbacks cbs = {up_head, up_body, up_done};
    int rc = chain_request(m->pool, spec, &cbs, f, &f->up);
    if (rc < 0) {
        free(f);
        return rc;
    }
    f->registered = true;
    f->next = m->active;
    if (m->active)
        m->active->prev = f;
    m->active = f;
    m->n_active++;
    m->stats.started++;
    *out = f;
    if (!store_it) {
        disk_fail(f, 0);
        return 0;
    }
    f->open_work.data = f;
    fetch_ref(f);
    if (uv_queue_work(m->loop, &f->open_work, open_work, open_done) != 0) {
        fetch_unref(f);
        disk_fail(f, -EIO);
    }
    return 0;
}

void fetch_manager_cancel_all(struct fetch_manager *m)
{
    while (m->active != NULL)
        fetch_fail(m->active, "the cache is stopping");
}
