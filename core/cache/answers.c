/*
 * answers.c: the origin's authorization answers on disk, as hashes. See answers.h.
 */
#include "cache/answers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"
#include "base/log.h"

#define REL_AUTH "docker/registry/v2/_content-cache/auth"
#define MAGIC 0x43434131u /* "CCA1" */
#define QUEUE_MAX 4096    /* answers waiting to be written; past it, the oldest are dropped */

/* One record: the key, when (ms since the epoch), the status, a magic. */
struct record {
    unsigned char key[32];
    int64_t when_ms;
    int32_t status;
    uint32_t magic;
};
_Static_assert(sizeof(struct record) == ANSWERS_RECORD, "a record is ANSWERS_RECORD bytes");

struct challenge {
    char name[64]; /* challenge-<16 hex> */
    char text[ANSWERS_CHALLENGE_MAX];
    size_t len;
};

struct answers {
    uv_loop_t *loop;
    const struct store *st;
    int dir; /* the answers file's directory (the file is opened for each batch and lookup:
                no descriptor open for writing stays, so the root can be remounted) */
    /* Waiting to be written, in order; and the batch being written. */
    struct record *queue;
    size_t n_queue;
    struct record *batch;
    size_t n_batch;
    struct challenge *cqueue, *cbatch;
    size_t n_cqueue, n_cbatch;
    uv_work_t work;
    bool writing;
};

void answers_key(const char *origin, const char *credential, size_t cred_len, const char *repo,
                 size_t repo_len, unsigned char key[32])
{
    struct digest_sha256 ctx;
    size_t origin_len = origin ? strlen(origin) : 0;
    const struct {
        const char *p;
        size_t n;
    } parts[3] = {{origin, origin_len}, {credential, cred_len}, {repo, repo_len}};
    digest_sha256_init(&ctx);
    for (int i = 0; i < 3; i++) {
        uint64_t n = parts[i].n;
        digest_sha256_update(&ctx, &n, sizeof(n));
        if (n > 0) digest_sha256_update(&ctx, parts[i].p, parts[i].n);
    }
    digest_sha256_final(&ctx, key);
}

static off_t slot_offset(const unsigned char key[32])
{
    uint32_t v = (uint32_t)key[0] << 24 | (uint32_t)key[1] << 16 | (uint32_t)key[2] << 8 | key[3];
    return (off_t)(v % ANSWERS_SLOTS) * ANSWERS_RECORD;
}

struct answers *answers_open(uv_loop_t *loop, const struct store *st)
{
    struct answers *a = calloc(1, sizeof(*a));
    if (a == NULL) return NULL;
    a->loop = loop;
    a->st = st;
    a->dir = store_dir_open_sync(st, REL_AUTH, true);
    if (a->dir < 0) {
        log_msg(LOG_WARN,
                "cannot keep authorization answers under %s/%s (%s): the outage policy will "
                "see none",
                store_root(st), REL_AUTH, strerror(-a->dir));
        free(a);
        return NULL;
    }
    return a;
}

/* The answers file, for writing or reading (a regular file, never through a link). */
static int open_file(const struct answers *a, bool write)
{
    int fd =
        openat(a->dir, "answers",
               (write ? O_RDWR | O_CREAT : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    struct stat sb;
    if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        close(fd);
        return -EINVAL;
    }
    return fd < 0 ? -errno : fd;
}

/* --- writing ----------------------------------------------------------------------------- */

static void write_work(uv_work_t *w)
{
    struct answers *a = w->data;
    int fd = a->n_batch ? open_file(a, true) : -1;
    if (a->n_batch && fd < 0)
        log_msg(LOG_WARN, "cannot write authorization answers: %s", strerror(-fd));
    for (size_t i = 0; fd >= 0 && i < a->n_batch; i++)
        if (pwrite(fd, &a->batch[i], sizeof(a->batch[i]), slot_offset(a->batch[i].key)) !=
            (ssize_t)sizeof(a->batch[i]))
            log_msg(LOG_WARN, "cannot write an authorization answer: %s", strerror(errno));
    if (fd >= 0) close(fd);
    for (size_t i = 0; i < a->n_cbatch; i++)
        store_file_replace_at(a->dir, a->cbatch[i].name, a->cbatch[i].text, a->cbatch[i].len,
                              false);
}

static void flush(struct answers *a);

static void write_done(uv_work_t *w, int status)
{
    struct answers *a = w->data;
    a->writing = false;
    free(a->batch);
    free(a->cbatch);
    a->batch = NULL;
    a->cbatch = NULL;
    a->n_batch = a->n_cbatch = 0;
    flush(a);
}

/* The queues become the batch the writer takes. */
static void take_queue(struct answers *a)
{
    a->batch = a->queue;
    a->n_batch = a->n_queue;
    a->cbatch = a->cqueue;
    a->n_cbatch = a->n_cqueue;
    a->queue = NULL;
    a->cqueue = NULL;
    a->n_queue = a->n_cqueue = 0;
}

/* Hands the queue to the writer when it is idle. */
static void flush(struct answers *a)
{
    if (a->writing || (a->n_queue == 0 && a->n_cqueue == 0)) return;
    take_queue(a);
    a->work.data = a;
    if (uv_queue_work(a->loop, &a->work, write_work, write_done) == 0) {
        a->writing = true;
        return;
    }
    write_work(&a->work); /* (cannot queue: now) */
    write_done(&a->work, 0);
}

void answers_record(struct answers *a, const unsigned char key[32], int status)
{
    if (a == NULL) return;
    if (!((status >= 200 && status < 300) || status == 401 || status == 403)) return;
    if (a->n_queue >= QUEUE_MAX) {
        memmove(a->queue, a->queue + 1, (a->n_queue - 1) * sizeof(*a->queue));
        a->n_queue--;
    }
    struct record *q = realloc(a->queue, (a->n_queue + 1) * sizeof(*q));
    if (q == NULL) return;
    a->queue = q;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct record *r = &a->queue[a->n_queue++];
    memcpy(r->key, key, 32);
    r->when_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    r->status = status >= 200 && status < 300 ? 200 : status;
    r->magic = MAGIC;
    flush(a);
}

static void challenge_name(const char *origin, char *buf, size_t len)
{
    unsigned char bin[32];
    char hex[65];
    struct digest_sha256 ctx;
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, origin, strlen(origin));
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    snprintf(buf, len, "challenge-%.16s", hex);
}

void answers_challenge_record(struct answers *a, const char *origin, const char *challenge,
                              size_t len)
{
    if (a == NULL || origin == NULL || challenge == NULL || len == 0 ||
        len >= ANSWERS_CHALLENGE_MAX)
        return;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)challenge[i] < 0x20 || challenge[i] == 0x7f) return;
    if (a->n_cqueue >= 16) return; /* a handful per flush is plenty */
    struct challenge *q = realloc(a->cqueue, (a->n_cqueue + 1) * sizeof(*q));
    if (q == NULL) return;
    a->cqueue = q;
    struct challenge *c = &a->cqueue[a->n_cqueue++];
    challenge_name(origin, c->name, sizeof(c->name));
    memcpy(c->text, challenge, len);
    c->len = len;
    flush(a);
}

void answers_close(struct answers *a)
{
    if (a == NULL) return;
    /* A write in flight finishes on the pool; what is queued is written now. */
    if (!a->writing && (a->n_queue || a->n_cqueue)) {
        take_queue(a);
        write_work(&(uv_work_t){.data = a});
        free(a->batch);
        free(a->cbatch);
    }
    free(a->queue);
    free(a->cqueue);
    close(a->dir);
    free(a);
}

/* --- reading ----------------------------------------------------------------------------- */

bool answers_lookup_queued(const struct answers *a, const unsigned char key[32], int *status,
                           double *when)
{
    if (a == NULL) return false;
    const struct record *lists[2] = {a->queue, a->batch};
    size_t counts[2] = {a->n_queue, a->writing ? a->n_batch : 0};
    for (int l = 0; l < 2; l++) /* the queue is newer than the batch being written */
        for (size_t i = counts[l]; i-- > 0;)
            if (memcmp(lists[l][i].key, key, 32) == 0) {
                *status = lists[l][i].status;
                *when = (double)lists[l][i].when_ms / 1000.0;
                return true;
            }
    return false;
}

bool answers_lookup_sync(const struct answers *a, const unsigned char key[32], int *status,
                         double *when)
{
    struct record r;
    int fd = a ? open_file(a, false) : -1;
    if (fd < 0) return false;
    ssize_t n = pread(fd, &r, sizeof(r), slot_offset(key));
    close(fd);
    if (n != (ssize_t)sizeof(r)) return false;
    if (r.magic != MAGIC || memcmp(r.key, key, 32) != 0) return false;
    if (r.status != 200 && r.status != 401 && r.status != 403) return false;
    *status = r.status;
    *when = (double)r.when_ms / 1000.0;
    return true;
}

bool answers_challenge_sync(const struct answers *a, const char *origin, char *buf, size_t len)
{
    char name[64];
    struct stat sb;
    if (a == NULL || len == 0) return false;
    challenge_name(origin, name, sizeof(name));
    int fd = store_file_open_at(a->dir, name, &sb);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    return true;
}
