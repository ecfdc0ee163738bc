/*
 * pulls.c: pull counts in memory, added to files on disk every few seconds. See pulls.h.
 */
#include "cache/pulls.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"

#define REL_PULLS "docker/registry/v2/_content-cache/pulls"

struct pending {
    char hex[65]; /* "" for a free slot */
    uint64_t count;
};

struct pulls {
    uv_loop_t *loop;
    const struct store *st;
    uv_timer_t timer;
    /* Open addressing over the first hex digits (a digest is uniformly random). */
    struct pending *slots;
    size_t cap, used;
    uint64_t dropped;
    /* The flush in flight: the counts it writes, taken out of the table. */
    uv_work_t work;
    bool flushing;
    struct pending *batch;
    size_t n_batch;
    bool stopping, timer_closed;
    /* Every loop of the process counts here (workers): the table, the batch's bounds and
     * flushing are read and written under lock; the timer and the flush are the loop's
     * that made it (loop 0), and flush_work reads the batch alone, while flushing. */
    pthread_mutex_t lock;
};

/* --- the files ------------------------------------------------------------------------- */

/* The directory of hex's counter, "<pulls>/<first two hex>" (with create, made). */
static int counter_dir(const struct store *st, const char *hex, bool create)
{
    char rel[128];
    snprintf(rel, sizeof(rel), "%s/%.2s", REL_PULLS, hex);
    return store_dir_open_sync(st, rel, create);
}

static uint64_t parse_count(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    return errno == 0 && end != buf && (*end == '\n' || *end == '\0') ? (uint64_t)v : 0;
}

uint64_t pulls_read_sync(const struct store *st, const char *hex)
{
    struct stat sb;
    if (!store_hex_valid(hex)) return 0;
    int dir = counter_dir(st, hex, false);
    if (dir < 0) return 0;
    int fd = store_file_open_at(dir, hex, &sb);
    close(dir);
    if (fd < 0) return 0;
    uint64_t v = parse_count(fd);
    close(fd);
    return v;
}

int pulls_add_sync(const struct store *st, const char *hex, uint64_t n)
{
    if (!store_hex_valid(hex)) return -EINVAL;
    int dir = counter_dir(st, hex, true);
    if (dir < 0) return dir;
    int fd = openat(dir, hex, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : 0;
    close(dir);
    struct stat sb;
    if (rc == 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) rc = -EINVAL;
    if (rc == 0 && flock(fd, LOCK_EX) != 0) rc = -errno;
    if (rc == 0) {
        char text[32];
        uint64_t total = parse_count(fd) + n;
        int len = snprintf(text, sizeof(text), "%" PRIu64 "\n", total);
        if (pwrite(fd, text, (size_t)len, 0) != len || ftruncate(fd, len) != 0) rc = -errno;
    }
    if (fd >= 0) close(fd); /* (the lock goes with it) */
    return rc;
}

int pulls_reset_sync(const struct store *st, const char *hex)
{
    if (!store_hex_valid(hex)) return -EINVAL;
    int dir = counter_dir(st, hex, false);
    if (dir < 0) return dir == -ENOENT ? 0 : dir;
    int rc = unlinkat(dir, hex, 0) == 0 || errno == ENOENT ? 0 : -errno;
    close(dir);
    return rc;
}

/* --- counting in memory ------------------------------------------------------------------- */

static size_t slot_of(const char *hex, size_t cap)
{
    uint64_t h = 0;
    for (int i = 0; i < 15; i++)
        h = h << 4 | (uint64_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
    return (size_t)(h & (cap - 1));
}

static struct pending *find(const struct pending *slots, size_t cap, const char *hex)
{
    if (cap == 0) return NULL;
    for (size_t i = slot_of(hex, cap), k = 0; k < cap; i = (i + 1) & (cap - 1), k++) {
        if (slots[i].hex[0] == '\0') return (struct pending *)&slots[i];
        if (memcmp(slots[i].hex, hex, 64) == 0) return (struct pending *)&slots[i];
    }
    return NULL;
}

static bool grow(struct pulls *p)
{
    size_t cap = p->cap ? p->cap * 2 : 256;
    struct pending *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL) return false;
    for (size_t i = 0; i < p->cap; i++)
        if (p->slots[i].hex[0] != '\0') *find(slots, cap, p->slots[i].hex) = p->slots[i];
    free(p->slots);
    p->slots = slots;
    p->cap = cap;
    return true;
}

static void count_locked(struct pulls *p, const char *hex);

void pulls_count(struct pulls *p, const char *hex)
{
    if (p == NULL || !store_hex_valid(hex)) return;
    pthread_mutex_lock(&p->lock);
    count_locked(p, hex);
    pthread_mutex_unlock(&p->lock);
}

static void count_locked(struct pulls *p, const char *hex)
{
    struct pending *e = find(p->slots, p->cap, hex);
    if (e != NULL && e->hex[0] != '\0') {
        e->count++;
        return;
    }
    if (p->used >= PULLS_PENDING_MAX || ((p->used + 1) * 4 > p->cap * 3 && !grow(p))) {
        p->dropped++;
        return;
    }
    e = find(p->slots, p->cap, hex);
    memcpy(e->hex, hex, 65);
    e->count = 1;
    p->used++;
}

uint64_t pulls_pending(const struct pulls *p, const char *hex)
{
    uint64_t n = 0;
    if (p == NULL || !store_hex_valid(hex)) return 0;
    pthread_mutex_t *lock = (pthread_mutex_t *)&p->lock; /* (the lock, not the counts) */
    pthread_mutex_lock(lock);
    const struct pending *e = find(p->slots, p->cap, hex);
    if (e != NULL && e->hex[0] != '\0') n += e->count;
    for (size_t i = 0; p->flushing && i < p->n_batch; i++)
        if (memcmp(p->batch[i].hex, hex, 64) == 0) n += p->batch[i].count;
    pthread_mutex_unlock(lock);
    return n;
}

uint64_t pulls_dropped(const struct pulls *p)
{
    if (p == NULL) return 0;
    pthread_mutex_t *lock = (pthread_mutex_t *)&p->lock;
    pthread_mutex_lock(lock);
    uint64_t n = p->dropped;
    pthread_mutex_unlock(lock);
    return n;
}

/* --- flushing ------------------------------------------------------------------------------ */

/* Moves the table's counts into p->batch (which the caller writes). */
static bool take_batch(struct pulls *p)
{
    if (p->used == 0) return false;
    free(p->batch);
    p->batch = malloc(p->used * sizeof(*p->batch));
    if (p->batch == NULL) return false;
    p->n_batch = 0;
    for (size_t i = 0; i < p->cap; i++)
        if (p->slots[i].hex[0] != '\0') p->batch[p->n_batch++] = p->slots[i];
    memset(p->slots, 0, p->cap * sizeof(*p->slots));
    p->used = 0;
    return true;
}

static void write_batch(const struct store *st, const struct pending *batch, size_t n)
{
    int failures = 0, last = 0;
    for (size_t i = 0; i < n; i++) {
        /* A blob that is not stored (passed through, evicted, or still being fetched:
         * its commit starts the count again) gets no count file. */
        struct stat sb;
        if (store_stat_blob_sync(st, batch[i].hex, &sb) != 0) continue;
        int rc = pulls_add_sync(st, batch[i].hex, batch[i].count);
        if (rc != 0) {
            failures++;
            last = rc;
        }
    }
    if (failures)
        log_msg(LOG_WARN, "pull counts of %d blobs not written (%s): their policies see fewer",
                failures, strerror(-last));
}

static void flush_work(uv_work_t *w)
{
    struct pulls *p = w->data;
    write_batch(p->st, p->batch, p->n_batch);
}

static void maybe_free(struct pulls *p)
{
    if (p->stopping && p->timer_closed && !p->flushing) {
        free(p->slots);
        free(p->batch);
        pthread_mutex_destroy(&p->lock);
        free(p);
    }
}

static void flush_done(uv_work_t *w, int status)
{
    struct pulls *p = w->data;
    pthread_mutex_lock(&p->lock);
    p->flushing = false;
    p->n_batch = 0;
    pthread_mutex_unlock(&p->lock);
    maybe_free(p);
}

static void tick(uv_timer_t *t)
{
    struct pulls *p = t->data;
    pthread_mutex_lock(&p->lock);
    bool go = !p->flushing && take_batch(p);
    if (go) p->flushing = true; /* (the batch is the flush's from here) */
    pthread_mutex_unlock(&p->lock);
    if (!go) return;
    p->work.data = p;
    if (uv_queue_work(p->loop, &p->work, flush_work, flush_done) != 0) {
        write_batch(p->st, p->batch, p->n_batch); /* (cannot queue: now) */
        pthread_mutex_lock(&p->lock);
        p->flushing = false;
        p->n_batch = 0;
        pthread_mutex_unlock(&p->lock);
    }
}

struct pulls *pulls_new(uv_loop_t *loop, const struct store *st)
{
    struct pulls *p = calloc(1, sizeof(*p));
    if (p == NULL) return NULL;
    p->loop = loop;
    p->st = st;
    pthread_mutex_init(&p->lock, NULL);
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, tick, PULLS_FLUSH_MS, PULLS_FLUSH_MS);
    uv_unref((uv_handle_t *)&p->timer);
    return p;
}

static void timer_closed(uv_handle_t *h)
{
    struct pulls *p = h->data;
    p->timer_closed = true;
    maybe_free(p);
}

void pulls_stop(struct pulls *p)
{
    if (p == NULL) return;
    p->stopping = true;
    uv_timer_stop(&p->timer);
    pthread_mutex_lock(&p->lock); /* (every other loop has stopped: for the record) */
    if (!p->flushing && take_batch(p)) {
        write_batch(p->st, p->batch, p->n_batch);
        p->n_batch = 0;
    } else if (p->flushing) {
        /* The flush in flight writes its batch; what came since is written here, now. */
        struct pending *rest = NULL;
        size_t n = 0;
        if (p->used > 0 && (rest = malloc(p->used * sizeof(*rest))) != NULL)
            for (size_t i = 0; i < p->cap; i++)
                if (p->slots[i].hex[0] != '\0') rest[n++] = p->slots[i];
        write_batch(p->st, rest, n);
        free(rest);
    }
    pthread_mutex_unlock(&p->lock);
    uv_close((uv_handle_t *)&p->timer, timer_closed);
}
