/*
 * test_fetch.c: one upstream fetch per missing blob (cache/fetch.h), against a scripted
 * origin on the fake network (fakenet.h) and a store in a temporary directory.
 *
 * Each test starts a fetch of a blob whose bytes follow pattern(), lets readers follow it
 * as the blob handler does (fetch_wait, then pread from fetch_fd up to fetch_readable, or
 * fetch_copy_window in a pass-through), runs the loop until the fetch has ended and its
 * readers have read what it had, and checks the outcome: the state, the bytes the readers
 * got, what is on disk (the blob at its final path, or nothing; no temporary file and no
 * fetch lock left), the manager's counters and the commit hook. Every reader checks at
 * every wake-up that fetch_readable never reaches the blob's size before the digest
 * matched. Each test ends by closing everything and checking uv_loop_close() == 0.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"
#include "cache/fetch.h"
#include "cache/store.h"
#include "check.h"
#include "fakenet.h"
#include "net/chain.h"
#include "net/upstream.h"

#define WAIT_MS 20000
#define BLOB_SMALL (300u * 1024)
/* Twice the 16 MiB that a pass-through keeps in memory for its slowest reader. */
#define BLOB_LARGE (32u * 1024 * 1024)

/* The byte at offset i of every blob (the wrong one flips its last byte). */
static unsigned char pattern(uint64_t i)
{
    return (unsigned char)((i * 131) ^ (i >> 9));
}

static void blob_hex(size_t size, char hex[65])
{
    struct digest_sha256 ctx;
    unsigned char buf[65536], bin[32];
    digest_sha256_init(&ctx);
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(off + i);
        digest_sha256_update(&ctx, buf, n);
        off += n;
    }
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
}

/* --- The scripted origin ------------------------------------------------------------- */

enum body_form {
    BODY_LENGTH,       /* Content-Length and the whole body */
    BODY_CHUNKED,      /* chunked, 64 KiB a chunk, and the last chunk */
    BODY_CUT,          /* Content-Length, and half the body before the connection ends */
    BODY_CHUNKED_HALF, /* chunked, half the body, properly ended */
    BODY_WRONG,        /* Content-Length, the body with its last byte changed */
};

struct origin {
    struct fakenet_server *srv;
    char *reply;
    size_t reply_len;
    size_t chunk;
    size_t stall_at;      /* 0: no stall */
    size_t last_chunk_at; /* BODY_CHUNKED: where "0\r\n\r\n" starts */
    unsigned gets, heads;
    char first_line[256]; /* of the last request */
};

static void origin_answer(void *ud, const char *head, size_t len, struct fakenet_reply *out)
{
    struct origin *o = ud;
    fakenet_request_line(head, len, o->first_line, sizeof(o->first_line));
    if (strncmp(head, "GET ", 4) == 0) o->gets++;
    if (strncmp(head, "HEAD ", 5) == 0) o->heads++;
    out->data = o->reply;
    out->len = o->reply_len;
    out->chunk = o->chunk;
    out->stall_at = o->stall_at;
}

/* The origin's reply to every request from now on. */
static void origin_script(struct origin *o, int status, enum body_form form, size_t size)
{
    free(o->reply);
    size_t cap = size + size / 1000 + 1024;
    char *r = malloc(cap);
    size_t n = 0, body = form == BODY_CUT || form == BODY_CHUNKED_HALF ? size / 2 : size;
    bool chunked = form == BODY_CHUNKED || form == BODY_CHUNKED_HALF;
    if (chunked)
        n = (size_t)snprintf(r, cap, "HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n", status);
    else
        n = (size_t)snprintf(r, cap, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n\r\n", status, size);
    for (size_t off = 0; off < body;) {
        size_t piece = chunked && body - off > 65536 ? 65536 : body - off;
        if (chunked) n += (size_t)snprintf(r + n, cap - n, "%zx\r\n", piece);
        for (size_t i = 0; i < piece; i++)
            r[n++] = (char)pattern(off + i);
        off += piece;
        if (chunked) n += (size_t)snprintf(r + n, cap - n, "\r\n");
    }
    if (form == BODY_WRONG) r[n - 1] ^= 1;
    o->last_chunk_at = n;
    if (chunked) n += (size_t)snprintf(r + n, cap - n, "0\r\n\r\n");
    o->reply = r;
    o->reply_len = n;
}

/* --- The environment: loop, store, pool, manager ------------------------------------ */

struct env {
    uv_loop_t loop;
    char root[64];
    struct store *store;
    struct upstream_pool *pool;
    struct fetch_manager *m;
    struct origin origin;
    char base[64];
    char target[128];
    char hex[65];
    size_t size;
    unsigned commits;
    char committed_hex[65];
    uint64_t committed_size;
};

static void on_commit(void *ud, const char *hex, uint64_t size)
{
    struct env *e = ud;
    e->commits++;
    snprintf(e->committed_hex, sizeof(e->committed_hex), "%s", hex);
    e->committed_size = size;
}

static void env_init(struct env *e, size_t size)
{
    memset(e, 0, sizeof(*e));
    CHECK_INT(uv_loop_init(&e->loop), 0);
    const char *tmp = getenv("TMPDIR");
    snprintf(e->root, sizeof(e->root), "%s/cc-fetch-XXXXXX",
             tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    CHECK(mkdtemp(e->root) != NULL);
    char err[256];
    CHECK_INT(store_open(e->root, &e->store, NULL, err, sizeof(err)), 0);
    struct upstream_pool_opts po = {.connect_timeout_ms = 5000, .io_timeout_ms = 5000};
    e->pool = upstream_pool_new(&e->loop, &po);
    e->m = fetch_manager_new(&e->loop, e->store, e->pool);
    CHECK(e->pool != NULL && e->m != NULL);
    fetch_manager_on_commit(e->m, on_commit, e);
    CHECK_INT(fakenet_server_start(&e->loop, origin_answer, &e->origin, &e->origin.srv), 0);
    snprintf(e->base, sizeof(e->base), "http://127.0.0.1:%u",
             (unsigned)fakenet_server_port(e->origin.srv));
    e->size = size;
    blob_hex(size, e->hex);
    snprintf(e->target, sizeof(e->target), "/v2/lib/app/blobs/sha256:%s", e->hex);
}

static int env_start(struct env *e, const char *base, int64_t expected, bool store_it,
                     struct fetch **out)
{
    const char *bases[] = {base ? base : e->base};
    struct chain_spec spec = {.method = "GET", .bases = bases, .n_bases = 1, .target = e->target};
    return fetch_start(e->m, e->hex, &spec, expected, store_it, out);
}

static unsigned count_entries(const char *dir)
{
    unsigned n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* Temporary files and fetch locks in the store. */
static unsigned leftovers(struct env *e)
{
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/docker/registry/v2/_content-cache/tmp", e->root);
    unsigned n = count_entries(dir);
    snprintf(dir, sizeof(dir), "%s/docker/registry/v2/_content-cache/fetching", e->root);
    return n + count_entries(dir);
}

static bool no_leftovers(void *arg)
{
    return leftovers(arg) == 0;
}

/* No temporary file and no fetch lock is left (their removal runs on the loop). */
static void check_no_leftovers(struct env *e)
{
    CHECK(fakenet_run_until(&e->loop, no_leftovers, e, WAIT_MS));
}

/* The size of the stored blob, or -1 when it is not stored. */
static int64_t stored_size(struct env *e)
{
    char path[4096];
    struct stat sb;
    CHECK_INT(store_blob_path(e->store, e->hex, path, sizeof(path)), 0);
    return stat(path, &sb) == 0 ? (int64_t)sb.st_size : -1;
}

/* True when the stored blob holds the pattern's bytes. */
static bool stored_bytes_right(struct env *e)
{
    char path[4096];
    CHECK_INT(store_blob_path(e->store, e->hex, path, sizeof(path)), 0);
    FILE *f = fopen(path, "rb");
    if (f == NULL) return false;
    int c;
    uint64_t i = 0;
    bool ok = true;
    while ((c = getc(f)) != EOF)
        ok = ok && (unsigned char)c == pattern(i++);
    fclose(f);
    return ok && i == e->size;
}

static void rm_rf(const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    CHECK_INT(system(cmd), 0);
}

static void env_finish(struct env *e)
{
    CHECK_INT(fetch_manager_active(e->m), 0);
    fetch_manager_cancel_all(e->m);
    fetch_manager_free(e->m);
    upstream_pool_close(e->pool);
    fakenet_server_stop(e->origin.srv);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&e->loop), 0);
    free(e->origin.reply);
    store_close(e->store);
    rm_rf(e->root);
}

/* --- A reader: follows a fetch as the blob handler does ------------------------------ */

struct reader {
    struct fetch *f;
    struct fetch_waiter w;
    struct fetch_follower fl;
    bool following;
    bool paused;  /* reads nothing (and reports no progress) until resumed */
    bool ended;   /* saw the fetch end with everything it had read */
    uint64_t got; /* bytes read, all checked against pattern() */
    uint64_t from_disk, from_window;
    uint64_t max_readable;
    unsigned wakes;
    bool bad_bytes;  /* a byte that was not the pattern's */
    bool early_last; /* fetch_readable reached the size before the blob was verified */
    struct fetch_manager *m;
    const char *hex;
};

static void reader_pump(struct reader *r);

static void reader_woken(struct fetch_waiter *w)
{
    struct reader *r = (struct reader *)((char *)w - offsetof(struct reader, w));
    r->wakes++;
    reader_pump(r);
}

static void reader_end(struct reader *r)
{
    r->ended = true;
    fetch_unwait(r->f, &r->w);
    if (r->following) fetch_follow_end(r->f, &r->fl);
    r->following = false;
}

static void reader_pump(struct reader *r)
{
    struct fetch *f = r->f;
    if (r->ended) return;
    int64_t size = fetch_size(f);
    uint64_t readable = fetch_readable(f);
    if (readable > r->max_readable) r->max_readable = readable;
    if (size > 0 && readable >= (uint64_t)size && !fetch_complete(f)) r->early_last = true;
    if (fetch_state(f) == FETCH_FAILED) {
        reader_end(r);
        return;
    }
    while (!r->paused && r->got < readable) {
        char buf[65536];
        size_t want = readable - r->got < sizeof(buf) ? (size_t)(readable - r->got) : sizeof(buf);
        ssize_t n;
        if (fetch_in_memory(f, r->got)) {
            n = (ssize_t)fetch_copy_window(f, r->got, buf, want);
            if (n == 0) break;
            r->from_window += (uint64_t)n;
        } else {
            n = pread(fetch_fd(f), buf, want, (off_t)r->got);
            if (n <= 0) {
                r->bad_bytes = true;
                reader_end(r);
                return;
            }
            r->from_disk += (uint64_t)n;
        }
        for (ssize_t i = 0; i < n; i++)
            if ((unsigned char)buf[i] != pattern(r->got + (uint64_t)i)) r->bad_bytes = true;
        r->got += (uint64_t)n;
        r->fl.offset = r->got;
        fetch_follow_moved(f);
    }
    if (fetch_state(f) == FETCH_DONE && r->got == (uint64_t)fetch_size(f)) {
        reader_end(r);
        return;
    }
    fetch_wait(f, &r->w);
}

static void reader_start(struct reader *r, struct env *e, struct fetch *f)
{
    memset(r, 0, sizeof(*r));
    r->f = f;
    r->m = e->m;
    r->hex = e->hex;
    r->w.cb = reader_woken;
    fetch_follow_begin(f, &r->fl);
    r->following = true;
    fetch_wait(f, &r->w); /* the first wake-up comes from the loop, as for a client */
}

static void reader_resume(struct reader *r)
{
    r->paused = false;
    reader_pump(r);
}

static bool reader_ended(void *arg)
{
    return ((struct reader *)arg)->ended;
}

/* Starts a fetch of the env's blob from base (NULL: the origin) with a reader on it. */
static struct fetch *start_read(struct env *e, struct reader *r, const char *base, int64_t expected,
                                bool store_it)
{
    struct fetch *f = NULL;
    CHECK_INT(env_start(e, base, expected, store_it, &f), 0);
    if (f != NULL) reader_start(r, e, f);
    return f;
}

/* The manager's counters. */
static void check_counts(struct env *e, uint64_t started, uint64_t committed, uint64_t failed,
                         uint64_t passthrough)
{
    const struct fetch_stats *st = fetch_stats(e->m);
    CHECK_INT(st->started, started);
    CHECK_INT(st->committed, committed);
    CHECK_INT(st->failed, failed);
    CHECK_INT(st->passthrough, passthrough);
}

/* --- Waiting for conditions ---------------------------------------------------------- */

struct progress {
    struct reader *r;
    uint64_t at_least;
};

static bool reader_got(void *arg)
{
    struct progress *p = arg;
    return p->r->got >= p->at_least;
}

static bool readable_past(void *arg)
{
    struct progress *p = arg;
    return fetch_readable(p->r->f) > p->at_least;
}

/* --- Commit ------------------------------------------------------------------------- */

/* A whole fetch: the blob lands at its final path, the reader gets every byte. */
static void test_commit(void)
{
    struct env e;
    struct reader r;
    env_init(&e, BLOB_SMALL);
    e.origin.chunk = 16384;
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct fetch *f = start_read(&e, &r, NULL, -1, true);
    CHECK(fetch_find(e.m, e.hex) == f); /* a second client would follow this one */
    CHECK_INT(fetch_manager_active(e.m), 1);
    CHECK_INT(fetch_state(f), FETCH_RUNNING);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));

    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK(fetch_complete(f));
    CHECK_INT(fetch_size(f), e.size);
    CHECK_INT(fetch_readable(f), e.size);
    CHECK_STR(fetch_upstream(f), e.base);
    CHECK_INT(r.got, e.size);
    CHECK(!r.bad_bytes);
    CHECK(!r.early_last);
    /* Bytes go to the reader from the spool as they come; none waits for the disk. */
    CHECK(r.from_window > 0);
    CHECK_INT(r.from_window + r.from_disk, e.size);
    CHECK(fetch_find(e.m, e.hex) == NULL);
    /* The commit hook, once, with the blob. */
    CHECK_INT(e.commits, 1);
    CHECK_STR(e.committed_hex, e.hex);
    CHECK_INT(e.committed_size, e.size);
    CHECK_INT(stored_size(&e), e.size);
    CHECK(stored_bytes_right(&e));
    check_no_leftovers(&e);
    /* One GET of the blob's path went to the origin. */
    CHECK_INT(e.origin.gets, 1);
    char line[256];
    snprintf(line, sizeof(line), "GET %s HTTP/1.1", e.target);
    CHECK_STR(e.origin.first_line, line);
    check_counts(&e, 1, 1, 0, 0);
    /* The descriptor stays valid while a reference is held, also after the commit. */
    char c;
    CHECK_INT(pread(fetch_fd(f), &c, 1, (off_t)e.size - 1), 1);
    CHECK_INT((unsigned char)c, pattern(e.size - 1));
    fetch_unref(f);
    env_finish(&e);
}

/*
 * The whole body has come, the upstream's response not over (its last chunk stalls):
 * the last byte waits for the digest. Once the response ends, it is readable.
 */
static void test_last_byte_held_back(void)
{
    struct env e;
    struct reader r;
    env_init(&e, BLOB_SMALL);
    origin_script(&e.origin, 200, BODY_CHUNKED, e.size);
    e.origin.stall_at = e.origin.last_chunk_at;
    struct fetch *f = start_read(&e, &r, NULL, (int64_t)e.size, true);
    struct progress all_but_one = {&r, e.size - 1};
    CHECK(fakenet_run_until(&e.loop, reader_got, &all_but_one, WAIT_MS));
    CHECK_INT(fetch_readable(f), e.size - 1);
    CHECK_INT(r.got, e.size - 1);
    CHECK(!fetch_complete(f));
    CHECK_INT(fetch_state(f), FETCH_RUNNING);
    CHECK_INT(stored_size(&e), -1);

    fakenet_server_resume(e.origin.srv);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));
    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(r.got, e.size);
    CHECK(!r.bad_bytes);
    CHECK(!r.early_last);
    CHECK_INT(e.commits, 1);
    CHECK_INT(stored_size(&e), e.size);
    check_no_leftovers(&e);
    fetch_unref(f);
    env_finish(&e);
}

/* A second client finds the running fetch (fetch_find) and follows it from byte 0. */
static void test_coalescing(void)
{
    struct env e;
    struct reader r1, r2;
    env_init(&e, BLOB_SMALL);
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    e.origin.stall_at = e.origin.reply_len / 2;
    struct fetch *f = start_read(&e, &r1, NULL, -1, true);
    struct progress some = {&r1, 1};
    CHECK(fakenet_run_until(&e.loop, reader_got, &some, WAIT_MS));

    struct fetch *again = fetch_find(e.m, e.hex);
    CHECK(again == f);
    fetch_ref(again);
    reader_start(&r2, &e, again);
    fakenet_server_resume(e.origin.srv);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r1, WAIT_MS));
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r2, WAIT_MS));
    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(r1.got, e.size);
    CHECK_INT(r2.got, e.size);
    CHECK(!r1.bad_bytes && !r2.bad_bytes);
    CHECK(!r1.early_last && !r2.early_last);
    CHECK_INT(e.origin.gets, 1);
    check_counts(&e, 1, 1, 0, 0);
    CHECK_INT(e.commits, 1);
    CHECK(fetch_find(e.m, e.hex) == NULL);
    fetch_unref(again);
    fetch_unref(f);
    env_finish(&e);
}

/*
 * A request looked at the store before another fetch committed the blob, and starts a
 * fetch after it (on another loop, after that loop let go of its claim): the fetch finds
 * the blob stored once its lock is taken and reads it, asking no upstream.
 */
static void test_stored_meanwhile(void)
{
    struct env e;
    struct reader r1, r2;
    env_init(&e, BLOB_SMALL);
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct fetch *f = start_read(&e, &r1, NULL, -1, true);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r1, WAIT_MS));
    CHECK_INT(stored_size(&e), e.size);
    CHECK(!fetch_found_stored(f));
    fetch_unref(f);
    CHECK(fetch_find(e.m, e.hex) == NULL);
    struct fetch *late = start_read(&e, &r2, NULL, (int64_t)e.size, true);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r2, WAIT_MS));
    CHECK(fetch_found_stored(late));
    CHECK_INT(fetch_state(late), FETCH_DONE);
    CHECK_INT(r2.got, e.size);
    CHECK(!r2.bad_bytes && !r2.early_last);
    CHECK_INT(e.origin.gets, 1); /* the first fetch's only */
    CHECK_INT(e.commits, 1);
    CHECK_INT(stored_size(&e), e.size);
    check_no_leftovers(&e);
    fetch_unref(late);
    env_finish(&e);
}

/* --- Pass-through ----------------------------------------------------------------------- */

/* A pass-through that ended: its reader got every byte from memory; nothing stored. */
static void check_passed_through(struct env *e, struct reader *r, struct fetch *f)
{
    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(r->got, e->size);
    CHECK_INT(r->from_window, e->size);
    CHECK(!r->bad_bytes);
    CHECK(!r->early_last);
    CHECK_INT(e->commits, 0);
    CHECK_INT(stored_size(e), -1);
    check_no_leftovers(e);
    check_counts(e, 1, 0, 0, 1);
}

/* store_it false: the bytes go from memory to the reader; nothing is stored. */
static void test_pass_through_without_storing(void)
{
    struct env e;
    struct reader r;
    env_init(&e, BLOB_SMALL);
    e.origin.chunk = 16384;
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct fetch *f = start_read(&e, &r, NULL, (int64_t)e.size, false);
    CHECK(fetch_find(e.m, e.hex) == NULL);   /* it takes no followers: others fetch anew */
    CHECK_INT(fetch_manager_active(e.m), 1); /* but it runs (and a stop would fail it) */
    CHECK(fetch_in_memory(f, 0));
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));
    check_passed_through(&e, &r, f);
    fetch_unref(f);
    env_finish(&e);
}

/*
 * The memory window waits for its slowest reader: while a reader reads nothing, the
 * fetch holds at most the window (the upstream is paused), far from the whole blob; once
 * it reads on, the rest comes.
 */
static void test_pass_through_window_waits_for_reader(void)
{
    struct env e;
    struct reader r;
    env_init(&e, BLOB_LARGE);
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct fetch *f = start_read(&e, &r, NULL, (int64_t)e.size, false);
    r.paused = true;
    struct progress window = {&r, 4u << 20};
    CHECK(fakenet_run_until(&e.loop, readable_past, &window, WAIT_MS));
    /* Nothing makes it hold more than the window: this wait must run out. */
    struct progress too_far = {&r, e.size * 3 / 4};
    CHECK(!fakenet_run_until(&e.loop, readable_past, &too_far, 300));
    CHECK_INT(fetch_state(f), FETCH_RUNNING);
    CHECK_INT(r.got, 0);
    reader_resume(&r);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));
    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(r.got, e.size);
    CHECK(!r.bad_bytes);
    CHECK(!r.early_last);
    CHECK(r.max_readable <= e.size);
    CHECK_INT(stored_size(&e), -1);
    fetch_unref(f);
    env_finish(&e);
}

/*
 * The disk fails part-way (writes past RLIMIT_FSIZE fail with EFBIG): the fetch goes on
 * from memory (the reader gets its bytes from the spool, or what the spool no longer
 * holds from the unlinked file), nothing is stored, and the fetch takes no new followers.
 */
static void test_disk_fails_mid_fetch(void)
{
    struct env e;
    struct reader r;
    env_init(&e, 2u << 20);
    e.origin.chunk = 16384;
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct rlimit old, small;
    CHECK_INT(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 256 * 1024;
    signal(SIGXFSZ, SIG_IGN);
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &small), 0);
    struct fetch *f = start_read(&e, &r, NULL, (int64_t)e.size, true);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);

    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(r.got, e.size);
    CHECK(!r.bad_bytes);
    CHECK(!r.early_last);
    CHECK(r.from_window > 0);
    CHECK_INT(r.from_window + r.from_disk, e.size);
    CHECK_INT(e.commits, 0);
    CHECK_INT(stored_size(&e), -1);
    check_no_leftovers(&e);
    check_counts(&e, 1, 0, 0, 1);
    fetch_unref(f);
    env_finish(&e);
}

/* A write past RLIMIT_FSIZE raises SIGXFSZ in the thread that made it (a work item on the
 * thread pool): this handler holds that write there until the test lets it fail. */
static atomic_bool write_held, write_release;

static void hold_write(int sig)
{
    (void)sig;
    atomic_store(&write_held, true);
    while (!atomic_load(&write_release)) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

static bool write_is_held(void *arg)
{
    (void)arg;
    return atomic_load(&write_held);
}

/*
 * The disk fails only once the spool is full: the write that fails is held on the pool
 * while the upstream fills the spool and is paused, the hash catches up and the reader
 * reads all there is. From then on nothing moves by itself (no hash to finish, no reader
 * to move on), so the failure itself must free what is hashed and read and let the
 * upstream go on; else the reader waits for ever (the e2e full-disk check under ASan).
 */
static void test_disk_fails_with_spool_full(void)
{
    struct env e;
    struct reader r;
    env_init(&e, BLOB_LARGE);
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct rlimit old, small;
    CHECK_INT(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 256 * 1024;
    struct sigaction hold = {.sa_handler = hold_write}, before;
    sigemptyset(&hold.sa_mask);
    atomic_store(&write_held, false);
    atomic_store(&write_release, false);
    CHECK_INT(sigaction(SIGXFSZ, &hold, &before), 0);
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &small), 0);
    struct fetch *f = start_read(&e, &r, NULL, (int64_t)e.size, true);
    CHECK(fakenet_run_until(&e.loop, write_is_held, NULL, WAIT_MS));
    /* Nothing is written, so the spool holds all that came: the reader reads up to its
     * 16 MiB bound and no further (the upstream is paused; this wait must run out, and
     * gives the hash the time to catch up). */
    struct progress full = {&r, 15u << 20};
    CHECK(fakenet_run_until(&e.loop, reader_got, &full, WAIT_MS));
    struct progress past_bound = {&r, 20u << 20};
    CHECK(!fakenet_run_until(&e.loop, readable_past, &past_bound, 1000));
    CHECK_INT(r.got, fetch_readable(f));
    CHECK_INT(fetch_state(f), FETCH_RUNNING);
    atomic_store(&write_release, true); /* the write fails (EFBIG): a pass-through */
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &old), 0);
    CHECK_INT(sigaction(SIGXFSZ, &before, NULL), 0);

    check_passed_through(&e, &r, f);
    fetch_unref(f);
    env_finish(&e);
}

/* --- Clients that leave ---------------------------------------------------------------- */

static bool origin_idle(void *arg)
{
    return fakenet_server_connections(arg) == 0;
}

/* Starts a fetch whose origin stalls half-way, and a reader that leaves once it has read. */
static struct fetch *start_and_leave(struct env *e, enum body_form form, int64_t expected,
                                     bool store_it)
{
    struct reader r;
    origin_script(&e->origin, 200, form, e->size);
    e->origin.stall_at = e->origin.reply_len / 2;
    struct fetch *f = start_read(e, &r, NULL, expected, store_it);
    struct progress some = {&r, 1};
    CHECK(fakenet_run_until(&e->loop, reader_got, &some, WAIT_MS));
    reader_end(&r);
    return f;
}

/*
 * With a length, a fetch finishes (and fills the cache) after its last client left;
 * without one, or in a pass-through, it stops at once and closes the upstream connection.
 */
static void test_clients_leave(void)
{
    struct env e;
    env_init(&e, BLOB_SMALL);
    struct fetch *f = start_and_leave(&e, BODY_LENGTH, -1, true);
    CHECK_INT(fetch_state(f), FETCH_RUNNING);
    fakenet_server_resume(e.origin.srv);
    CHECK(fakenet_run_until(&e.loop, no_leftovers, &e, WAIT_MS) && e.commits == 1);
    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(stored_size(&e), e.size);
    fetch_unref(f);
    CHECK_INT(store_remove_sync(e.store, e.hex), 0);

    f = start_and_leave(&e, BODY_LENGTH, (int64_t)e.size, false);
    CHECK_INT(fetch_state(f), FETCH_FAILED);
    CHECK_CONTAINS(fetch_error(f), "every client left");
    CHECK(fakenet_run_until(&e.loop, origin_idle, e.origin.srv, WAIT_MS));
    fetch_unref(f);

    f = start_and_leave(&e, BODY_CHUNKED, -1, true);
    CHECK_INT(fetch_state(f), FETCH_FAILED);
    CHECK_CONTAINS(fetch_error(f), "gave no length");
    CHECK(fakenet_run_until(&e.loop, origin_idle, e.origin.srv, WAIT_MS));
    fetch_unref(f);
    check_no_leftovers(&e);
    CHECK_INT(e.commits, 1);
    check_counts(&e, 3, 1, 2, 1);
    env_finish(&e);
}

/* --- Failure -------------------------------------------------------------------------- */

/* Runs one fetch that must fail, and checks that nothing of it stayed. */
static void expect_failure(struct env *e, const char *base, int64_t expected, const char *why)
{
    struct reader r;
    unsigned failed_before = (unsigned)fetch_stats(e->m)->failed;
    struct fetch *f = start_read(e, &r, base, expected, true);
    CHECK(fakenet_run_until(&e->loop, reader_ended, &r, WAIT_MS));
    CHECK_INT(fetch_state(f), FETCH_FAILED);
    CHECK(!fetch_complete(f));
    CHECK_CONTAINS(fetch_error(f), why);
    CHECK(!r.early_last);
    CHECK(!r.bad_bytes);
    CHECK(r.max_readable < e->size);
    CHECK(fetch_find(e->m, e->hex) == NULL);
    CHECK_INT(fetch_stats(e->m)->failed, failed_before + 1);
    CHECK_INT(e->commits, 0);
    CHECK_INT(stored_size(e), -1);
    fetch_unref(f);
    check_no_leftovers(e);
}

/*
 * The right length with a wrong last byte: the reader never gets that byte, the fetch
 * fails. The next fetch of the blob, from an origin that now sends it right, commits.
 */
static void test_digest_mismatch(void)
{
    struct env e;
    env_init(&e, BLOB_SMALL);
    origin_script(&e.origin, 200, BODY_WRONG, e.size);
    expect_failure(&e, NULL, -1, "digest mismatch");

    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    struct reader r;
    struct fetch *f = start_read(&e, &r, NULL, -1, true);
    CHECK(fakenet_run_until(&e.loop, reader_ended, &r, WAIT_MS));
    CHECK_INT(fetch_state(f), FETCH_DONE);
    CHECK_INT(e.commits, 1);
    CHECK_INT(stored_size(&e), e.size);
    fetch_unref(f);
    env_finish(&e);
}

/* Bodies that do not have the length they should. */
static void test_wrong_length(void)
{
    struct env e;
    env_init(&e, BLOB_SMALL);
    /* The connection ends before the Content-Length is reached: an upstream error. */
    origin_script(&e.origin, 200, BODY_CUT, e.size);
    expect_failure(&e, NULL, -1, "");
    /* A body that ends properly, short of the size the HEAD announced. */
    origin_script(&e.origin, 200, BODY_CHUNKED_HALF, e.size);
    expect_failure(&e, NULL, (int64_t)e.size, "short body");
    /* A length that disagrees with the HEAD's. */
    origin_script(&e.origin, 200, BODY_LENGTH, e.size);
    expect_failure(&e, NULL, (int64_t)e.size + 1, "its HEAD said");
    /* A body without a length that goes on past the HEAD's. */
    origin_script(&e.origin, 200, BODY_CHUNKED, e.size);
    expect_failure(&e, NULL, (int64_t)e.size / 2, "sent more than");
    env_finish(&e);
}

static void test_upstream_5xx_and_refused(void)
{
    struct env e;
    env_init(&e, BLOB_SMALL);
    origin_script(&e.origin, 503, BODY_LENGTH, 10);
    expect_failure(&e, NULL, -1, "answered 503");
    origin_script(&e.origin, 404, BODY_LENGTH, 10);
    expect_failure(&e, NULL, -1, "answered 404");
    CHECK_INT(e.origin.gets, 2);
    /* Nothing listens there (the fake network refuses it at once). */
    expect_failure(&e, "http://127.0.0.1:1", -1, "127.0.0.1:1");
    env_finish(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(120);
    RUN(test_commit);
    RUN(test_last_byte_held_back);
    RUN(test_coalescing);
    RUN(test_stored_meanwhile);
    RUN(test_pass_through_without_storing);
    RUN(test_pass_through_window_waits_for_reader);
    RUN(test_disk_fails_mid_fetch);
    RUN(test_disk_fails_with_spool_full);
    RUN(test_clients_leave);
    RUN(test_digest_mismatch);
    RUN(test_wrong_length);
    RUN(test_upstream_5xx_and_refused);
    return check_summary();
}
