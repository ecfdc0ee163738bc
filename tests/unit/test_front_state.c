/*
 * test_front_state.c: the front's state (core/front/state.c): caches and users' choices
 * written to SQLite and read back after a reopen, ids never reused, duplicates and
 * unknown caches refused by the database, writes on the thread pool in order, two loops'
 * views of one state on two threads, a second
 * process refused, and kill -9 in the middle of writes: the reopened database passes
 * SQLite's integrity check, holds every write that was reported done, and nothing
 * half-done.
 */
#include "check.h"
#include "front/state.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[] = "/tmp/test_front_state.XXXXXX";

struct result {
    int calls;
    int rc;
    int64_t id;
};

static void on_write(void *arg, int rc, const struct front_cache *c)
{
    struct result *r = arg;
    r->calls++;
    r->rc = rc;
    r->id = c != NULL ? c->id : 0;
}

static struct result set_user(struct front_state *st, const char *user, int64_t id)
{
    struct result r = {0};
    CHECK_INT(front_state_set_user_cache(st, user, id, on_write, &r), 0);
    CHECK_INT(r.calls, 1);
    return r;
}

/* The name of user's cache, or "(none)" (a static copy: the next call overwrites it). */
static const char *user_cache(struct front_state *st, const char *user)
{
    static struct front_cache c;
    return front_state_user_cache(st, user, strlen(user), &c) ? c.name : "(none)";
}

static bool cache_named(struct front_state *st, const char *name, struct front_cache *out)
{
    return front_state_cache_by_name(st, name, out);
}

static void wipe(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s/front", dir);
    CHECK_INT(system(cmd), 0);
}

static void test_write_reopen(void)
{
    wipe();
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/front", dir);
    char err[512];
    struct front_state *st = NULL;
    CHECK_INT(front_state_open(sub, &st, err, sizeof(err)), 0);
    struct front_cache *list;
    CHECK_INT(front_state_caches(st, &list), 0);
    CHECK(list == NULL);
    struct result us = {0}, eu = {0}, dup = {0};
    CHECK_INT(front_state_add_cache(st, "region-us", "http://10.0.0.1:5000", on_write, &us), 0);
    CHECK_INT(front_state_add_cache(st, "region-eu", "http://10.0.0.2:5000", on_write, &eu), 0);
    CHECK_INT(front_state_add_cache(st, "region-us", "http://10.0.0.3:5000", on_write, &dup), 0);
    CHECK_INT(us.rc, 0);
    CHECK_INT(eu.rc, 0);
    CHECK_INT(dup.rc, -EEXIST);
    CHECK(us.id > 0 && eu.id > us.id);
    CHECK_INT(set_user(st, "alice", us.id).rc, 0);
    CHECK_INT(set_user(st, "bob", eu.id).rc, 0);
    CHECK_INT(set_user(st, "carol", eu.id).rc, 0);
    CHECK_INT(set_user(st, "carol", 0).rc, 0);
    CHECK_INT(set_user(st, "dave", 12345).rc, -ENOENT); /* no such cache */
    CHECK_STR(user_cache(st, "alice"), "region-us");
    CHECK_STR(user_cache(st, "bob"), "region-eu");
    CHECK_STR(user_cache(st, "carol"), "(none)");
    CHECK_INT(front_state_users(st), 2);
    front_state_close(st);

    /* Reopened: the same state; removing region-eu leaves bob without a cache. */
    CHECK_INT(front_state_open(sub, &st, err, sizeof(err)), 0);
    CHECK_INT(front_state_caches(st, &list), 2);
    CHECK_STR(list[0].name, "region-us");
    CHECK_STR(list[0].host, "http://10.0.0.1:5000");
    CHECK_STR(list[1].name, "region-eu");
    free(list);
    CHECK_STR(user_cache(st, "alice"), "region-us");
    CHECK_STR(user_cache(st, "bob"), "region-eu");
    struct result rm = {0}, rm2 = {0};
    CHECK_INT(front_state_remove_cache(st, eu.id, on_write, &rm), 0);
    CHECK_INT(rm.rc, 0);
    CHECK_INT(front_state_remove_cache(st, eu.id, on_write, &rm2), 0);
    CHECK_INT(rm2.rc, -ENOENT);
    CHECK_STR(user_cache(st, "bob"), "(none)");
    /* An id is never reused. */
    struct result again = {0};
    CHECK_INT(front_state_add_cache(st, "region-eu", "http://10.0.0.9:5000", on_write, &again), 0);
    CHECK(again.id > eu.id);
    front_state_close(st);
    CHECK_INT(front_state_open(sub, &st, err, sizeof(err)), 0);
    CHECK_STR(user_cache(st, "bob"), "(none)");
    struct front_cache got;
    CHECK(cache_named(st, "region-eu", &got) && got.id == again.id);
    CHECK(!front_state_cache_by_id(st, eu.id, NULL));
    /* Too long is refused before anything. */
    char longname[FRONT_CACHE_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK_INT(front_state_add_cache(st, longname, "http://x", on_write, &again), -EINVAL);
    front_state_close(st);
}

/* Writes on the thread pool: queued, done in order, the mirror follows each commit. */
struct async {
    struct front_state *st;
    int order[8];
    int n;
};

static void async_cb(void *arg, int rc, const struct front_cache *c);

static struct {
    struct async *a;
    int tag;
} tags[8];

static void async_cb(void *arg, int rc, const struct front_cache *c)
{
    int k = (int)(intptr_t)arg;
    struct async *a = tags[k].a;
    a->order[a->n++] = k;
    if (k == 0) {
        CHECK_INT(rc, 0);
        CHECK(cache_named(a->st, "edge", NULL));
    }
    if (k == 1) CHECK_INT(rc, -EEXIST);
    if (k == 2) {
        CHECK_INT(rc, 0);
        CHECK_STR(user_cache(a->st, "erin"), "edge");
    }
}

static void test_writes_on_the_pool(void)
{
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/pool", dir);
    uv_loop_t loop;
    CHECK_INT(uv_loop_init(&loop), 0);
    char err[512];
    struct async a = {0};
    CHECK_INT(front_state_open(sub, &a.st, err, sizeof(err)), 0);
    front_state_attach(a.st, &loop);
    for (int k = 0; k < 3; k++)
        tags[k].a = &a;
    CHECK_INT(front_state_add_cache(a.st, "edge", "http://e:5000", async_cb, (void *)0), 0);
    CHECK_INT(front_state_add_cache(a.st, "edge", "http://f:5000", async_cb, (void *)1), 0);
    /* The cache is not known yet (not committed): the user's choice names its id,
     * which the first write will give: 1 in a fresh database. */
    CHECK_INT(front_state_set_user_cache(a.st, "erin", 1, async_cb, (void *)2), 0);
    CHECK(front_state_busy(a.st));
    CHECK_INT(a.n, 0); /* nothing before the loop runs */
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(a.n, 3);
    CHECK(a.order[0] == 0 && a.order[1] == 1 && a.order[2] == 2);
    CHECK(!front_state_busy(a.st));
    front_state_close(a.st);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* Two loops on two threads (workers), each with its view of one state: each view's
 * writes are done in its order, the other view sees them at once (the mirror is shared),
 * a reader on a third thread copies while they are written, and the database holds all
 * of them after the last view closed. ThreadSanitizer runs this (.ci/run). */
#define VIEW_WRITES 25

struct view_loop {
    uv_loop_t loop;
    struct front_state *st;
    int tag;
    int added, chosen, next_expected;
    bool out_of_order;
    pthread_t thread;
};

static void view_chosen(void *arg, int rc, const struct front_cache *c)
{
    struct view_loop *v = arg;
    (void)c;
    if (rc == 0) v->chosen++;
}

static void view_added(void *arg, int rc, const struct front_cache *c)
{
    struct view_loop *v = arg;
    if (rc != 0 || c == NULL) return;
    int i = -1, tag = -1;
    if (sscanf(c->name, "t%d-%d", &tag, &i) != 2 || tag != v->tag || i != v->next_expected)
        v->out_of_order = true;
    v->next_expected = i + 1;
    v->added++;
    char user[32];
    snprintf(user, sizeof(user), "u%d-%d", v->tag, i);
    if (front_state_set_user_cache(v->st, user, c->id, view_chosen, v) != 0) v->out_of_order = true;
}

static void *view_thread(void *arg)
{
    struct view_loop *v = arg;
    for (int i = 0; i < VIEW_WRITES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "t%d-%d", v->tag, i);
        if (front_state_add_cache(v->st, name, "http://c:5000", view_added, v) != 0)
            v->out_of_order = true;
    }
    uv_run(&v->loop, UV_RUN_DEFAULT);
    return NULL;
}

static _Atomic bool readers_stop;

static void *reader_thread(void *arg)
{
    struct front_state *st = arg;
    long reads = 0;
    while (!atomic_load(&readers_stop)) {
        struct front_cache *list;
        long n = front_state_caches(st, &list);
        for (long i = 0; i < n; i++)
            if (strncmp(list[i].host, "http://", 7) != 0) abort(); /* torn */
        free(list);
        user_cache(st, "u0-3");
        reads++;
    }
    return (void *)reads;
}

static void test_views_on_two_loops(void)
{
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/views", dir);
    char err[512];
    struct front_state *first = NULL;
    CHECK_INT(front_state_open(sub, &first, err, sizeof(err)), 0);
    struct view_loop v[2];
    memset(v, 0, sizeof(v));
    v[0].st = first;
    CHECK_INT(front_state_share(first, &v[1].st), 0);
    struct front_state *reader = NULL;
    CHECK_INT(front_state_share(first, &reader), 0);
    pthread_t rt;
    CHECK_INT(pthread_create(&rt, NULL, reader_thread, reader), 0);
    for (int k = 0; k < 2; k++) {
        v[k].tag = k;
        CHECK_INT(uv_loop_init(&v[k].loop), 0);
        front_state_attach(v[k].st, &v[k].loop);
        CHECK_INT(pthread_create(&v[k].thread, NULL, view_thread, &v[k]), 0);
    }
    for (int k = 0; k < 2; k++)
        CHECK_INT(pthread_join(v[k].thread, NULL), 0);
    atomic_store(&readers_stop, true);
    void *reads = NULL;
    CHECK_INT(pthread_join(rt, &reads), 0);
    CHECK((long)reads > 0);
    for (int k = 0; k < 2; k++) {
        CHECK_INT(v[k].added, VIEW_WRITES);
        CHECK_INT(v[k].chosen, VIEW_WRITES);
        CHECK(!v[k].out_of_order);
        CHECK(!front_state_busy(v[k].st));
    }
    /* Each view sees the other's writes. */
    CHECK_STR(user_cache(v[0].st, "u1-7"), "t1-7");
    CHECK_STR(user_cache(v[1].st, "u0-7"), "t0-7");
    CHECK_INT(front_state_users(v[1].st), 2 * VIEW_WRITES);
    front_state_close(v[1].st);
    front_state_close(reader);
    front_state_close(first); /* the last view: the database closes */
    for (int k = 0; k < 2; k++)
        CHECK_INT(uv_loop_close(&v[k].loop), 0);
    CHECK_INT(front_state_open(sub, &first, err, sizeof(err)), 0);
    struct front_cache *list;
    long n = front_state_caches(first, &list);
    CHECK_INT(n, 2 * VIEW_WRITES);
    for (long i = 1; i < n; i++)
        CHECK(list[i].id > list[i - 1].id);
    free(list);
    CHECK_STR(user_cache(first, "u1-24"), "t1-24");
    front_state_close(first);
}

/* One front per state directory. */
static void test_second_process_refused(void)
{
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/excl", dir);
    char err[512];
    struct front_state *st = NULL;
    CHECK_INT(front_state_open(sub, &st, err, sizeof(err)), 0);
    int fds[2];
    CHECK_INT(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct front_state *other = NULL;
        char e2[512];
        int rc = front_state_open(sub, &other, e2, sizeof(e2));
        char b = rc == -EBUSY && strstr(e2, "in use by another process") != NULL ? 'y' : 'n';
        if (write(fds[1], &b, 1) != 1) _exit(2);
        _exit(0);
    }
    char b = 0;
    CHECK_INT(read(fds[0], &b, 1), 1);
    CHECK(b == 'y');
    waitpid(pid, NULL, 0);
    close(fds[0]);
    close(fds[1]);
    front_state_close(st);
}

/*
 * kill -9 while writing. The child adds caches and moves users between them as fast as
 * it can, and after each write that was reported done writes its number to a pipe. The
 * parent kills it at a moment of its choosing, then reopens: the database must pass the
 * integrity check, hold every write reported done (the last number read), and no user
 * may name a cache that is not there.
 */
static void writer(const char *sub, int fd)
{
    char err[512];
    struct front_state *st = NULL;
    if (front_state_open(sub, &st, err, sizeof(err)) != 0) _exit(3);
    for (int i = 1;; i++) {
        char name[32], user[32];
        snprintf(name, sizeof(name), "cache-%d", i);
        snprintf(user, sizeof(user), "user-%d", i % 50);
        struct result r = {0};
        if (front_state_add_cache(st, name, "http://c:5000", on_write, &r) != 0 || r.rc != 0)
            _exit(4);
        struct result u = {0};
        if (front_state_set_user_cache(st, user, r.id, on_write, &u) != 0 || u.rc != 0) _exit(5);
        if (i % 3 == 0) {
            struct result rm = {0};
            snprintf(name, sizeof(name), "cache-%d", i - 2);
            struct front_cache c;
            if (cache_named(st, name, &c) && front_state_remove_cache(st, c.id, on_write, &rm) != 0)
                _exit(6);
        }
        if (write(fd, &i, sizeof(i)) != sizeof(i)) _exit(7);
    }
}

static int integrity(const char *sub)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", sub, FRONT_STATE_DB);
    sqlite3 *db = NULL;
    int ok = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *q = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL) == SQLITE_OK &&
            sqlite3_step(q) == SQLITE_ROW)
            ok = strcmp((const char *)sqlite3_column_text(q, 0), "ok") == 0;
        sqlite3_finalize(q);
    }
    sqlite3_close(db);
    return ok;
}

static void test_kill_9_while_writing(void)
{
    for (int round = 0; round < 6; round++) {
        char sub[300];
        snprintf(sub, sizeof(sub), "%s/kill%d", dir, round);
        int fds[2];
        CHECK_INT(pipe(fds), 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            writer(sub, fds[1]);
        }
        close(fds[1]);
        /* Kill it once it has reported some writes (more each round): it is then in
         * the middle of the next one, or between two. */
        int target = 1 + round * round * 3, last = 0, got;
        while (last < target && read(fds[0], &got, sizeof(got)) == sizeof(got))
            last = got;
        kill(pid, SIGKILL);
        while (read(fds[0], &got, sizeof(got)) == sizeof(got))
            last = got;
        close(fds[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        CHECK(last > 0);

        CHECK(integrity(sub));
        char err[512];
        struct front_state *st = NULL;
        CHECK_INT(front_state_open(sub, &st, err, sizeof(err)), 0);
        if (st == NULL) continue;
        /* Every write reported done is there. */
        char name[32], user[32];
        snprintf(name, sizeof(name), "cache-%d", last);
        snprintf(user, sizeof(user), "user-%d", last % 50);
        if (cache_named(st, name, NULL)) {
            CHECK_STR(user_cache(st, user), name);
        } else {
            /* Only write last + 2 removes cache-<last>: it may have committed before the
             * kill without being reported; then its user has no cache, not a dangling one. */
            CHECK((last + 2) % 3 == 0);
            CHECK_STR(user_cache(st, user), "(none)");
        }
        /* No user names a cache that is not there (the mirror is built from the rows). */
        struct front_cache *list;
        long n = front_state_caches(st, &list);
        free(list);
        CHECK(n > 0);
        fprintf(stderr, "round %d: killed after %d writes reported done, %ld caches, %zu users\n",
                round, last, n, front_state_users(st));
        front_state_close(st);
    }
}

int main(void)
{
    alarm(60);
    CHECK(mkdtemp(dir) != NULL);
    RUN(test_write_reopen);
    RUN(test_writes_on_the_pool);
    RUN(test_views_on_two_loops);
    RUN(test_second_process_refused);
    RUN(test_kill_9_while_writing);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return check_summary();
}
