/*
 * state.c: the front's state in SQLite, mirrored in memory. See state.h.
 *
 * struct state_db is the state every loop shares; struct front_state is one loop's view
 * of it (its loop and its queue of writes). One connection, used by one thread at a
 * time under write_lock: the opener's at open, the last view's at close, a thread pool
 * worker's for each write. The mirror is under mirror_lock: a write's worker applies
 * what it committed (holding both locks, so the mirror follows the database's order),
 * readers on any loop copy out under the read lock.
 */
#include "front/state.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <sqlite3.h>

#include "base/log.h"

#define USER_BUCKETS 1024

struct user_entry {
    struct user_entry *next;
    int64_t cache_id;
    size_t len;
    char name[]; /* NUL-terminated */
};

enum job_kind { JOB_ADD_CACHE, JOB_REMOVE_CACHE, JOB_SET_USER };

struct state_job {
    uv_work_t work;
    struct front_state *st;
    struct state_job *next;
    enum job_kind kind;
    struct front_cache cache; /* add: name and host in, id out; remove: id */
    char user[FRONT_USER_MAX + 1];
    int64_t cache_id; /* set-user */
    int rc;
    bool added_lost; /* committed, but the mirror could not take it (out of memory) */
    char why[256];   /* a database failure, for the log */
    front_state_cb cb;
    void *arg;
};

struct state_db {
    pthread_mutex_t write_lock; /* the connection; the view count */
    pthread_rwlock_t mirror_lock;
    unsigned views;
    sqlite3 *db;
    char path[1024];
    struct front_cache *caches; /* by id */
    size_t n_caches;
    struct user_entry *users[USER_BUCKETS];
    size_t n_users;
};

struct front_state {
    struct state_db *sd;
    uv_loop_t *loop; /* NULL until attached: writes are done at once */
    struct state_job *head, *tail;
    bool running;
};

/* --- Memory ------------------------------------------------------------------------------ */

static size_t user_bucket(const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return (size_t)(h % USER_BUCKETS);
}

static struct user_entry **user_find(struct state_db *st, const char *name, size_t len)
{
    struct user_entry **pp = &st->users[user_bucket(name, len)];
    while (*pp != NULL && ((*pp)->len != len || memcmp((*pp)->name, name, len) != 0))
        pp = &(*pp)->next;
    return pp;
}

/* Sets (cache_id > 0) or clears a user's choice in memory. */
static int user_set(struct state_db *st, const char *name, size_t len, int64_t cache_id)
{
    struct user_entry **pp = user_find(st, name, len);
    if (*pp != NULL) {
        if (cache_id > 0) {
            (*pp)->cache_id = cache_id;
        } else {
            struct user_entry *e = *pp;
            *pp = e->next;
            free(e);
            st->n_users--;
        }
        return 0;
    }
    if (cache_id <= 0) return 0;
    struct user_entry *e = malloc(sizeof(*e) + len + 1);
    if (e == NULL) return -ENOMEM;
    e->cache_id = cache_id;
    e->len = len;
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    e->next = *pp;
    *pp = e;
    st->n_users++;
    return 0;
}

/* Forgets every user's choice of cache_id (the cache is gone). */
static void users_drop_cache(struct state_db *st, int64_t cache_id)
{
    for (size_t b = 0; b < USER_BUCKETS; b++) {
        struct user_entry **pp = &st->users[b];
        while (*pp != NULL) {
            if ((*pp)->cache_id == cache_id) {
                struct user_entry *e = *pp;
                *pp = e->next;
                free(e);
                st->n_users--;
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

static int caches_add(struct state_db *st, const struct front_cache *c)
{
    struct front_cache *grown = realloc(st->caches, (st->n_caches + 1) * sizeof(*grown));
    if (grown == NULL) return -ENOMEM;
    st->caches = grown;
    size_t at = st->n_caches;
    while (at > 0 && st->caches[at - 1].id > c->id)
        at--;
    memmove(&st->caches[at + 1], &st->caches[at], (st->n_caches - at) * sizeof(*c));
    st->caches[at] = *c;
    st->n_caches++;
    return 0;
}

static void caches_remove(struct state_db *st, int64_t id)
{
    for (size_t i = 0; i < st->n_caches; i++) {
        if (st->caches[i].id == id) {
            memmove(&st->caches[i], &st->caches[i + 1],
                    (st->n_caches - i - 1) * sizeof(*st->caches));
            st->n_caches--;
            return;
        }
    }
}

static const struct front_cache *find_id(const struct state_db *sd, int64_t id)
{
    for (size_t i = 0; i < sd->n_caches; i++)
        if (sd->caches[i].id == id) return &sd->caches[i];
    return NULL;
}

/* Copies c into out (when both are there); true when c is. */
static bool copy_out(const struct front_cache *c, struct front_cache *out)
{
    if (c != NULL && out != NULL) *out = *c;
    return c != NULL;
}

long front_state_caches(const struct front_state *st, struct front_cache **list)
{
    struct state_db *sd = st->sd;
    long n = 0;
    *list = NULL;
    pthread_rwlock_rdlock(&sd->mirror_lock);
    if (sd->n_caches > 0 && (*list = malloc(sd->n_caches * sizeof(**list))) == NULL) {
        n = -ENOMEM;
    } else if (sd->n_caches > 0) {
        memcpy(*list, sd->caches, sd->n_caches * sizeof(**list));
        n = (long)sd->n_caches;
    }
    pthread_rwlock_unlock(&sd->mirror_lock);
    return n;
}

bool front_state_cache_by_id(const struct front_state *st, int64_t id, struct front_cache *out)
{
    pthread_rwlock_rdlock(&st->sd->mirror_lock);
    bool found = copy_out(find_id(st->sd, id), out);
    pthread_rwlock_unlock(&st->sd->mirror_lock);
    return found;
}

bool front_state_cache_by_name(const struct front_state *st, const char *name,
                               struct front_cache *out)
{
    struct state_db *sd = st->sd;
    const struct front_cache *c = NULL;
    pthread_rwlock_rdlock(&sd->mirror_lock);
    for (size_t i = 0; c == NULL && i < sd->n_caches; i++)
        if (strcmp(sd->caches[i].name, name) == 0) c = &sd->caches[i];
    bool found = copy_out(c, out);
    pthread_rwlock_unlock(&sd->mirror_lock);
    return found;
}

bool front_state_user_cache(const struct front_state *st, const char *user, size_t len,
                            struct front_cache *out)
{
    struct state_db *sd = st->sd;
    pthread_rwlock_rdlock(&sd->mirror_lock);
    struct user_entry **pp = user_find(sd, user, len);
    bool found = copy_out(*pp != NULL ? find_id(sd, (*pp)->cache_id) : NULL, out);
    pthread_rwlock_unlock(&sd->mirror_lock);
    return found;
}

size_t front_state_users(const struct front_state *st)
{
    pthread_rwlock_rdlock(&st->sd->mirror_lock);
    size_t n = st->sd->n_users;
    pthread_rwlock_unlock(&st->sd->mirror_lock);
    return n;
}

/* --- The database ---------------------------------------------------------------------- */

static const char schema[] = "CREATE TABLE IF NOT EXISTS caches ("
                             " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                             " name TEXT NOT NULL UNIQUE,"
                             " host TEXT NOT NULL,"
                             " created INTEGER NOT NULL);"
                             "CREATE TABLE IF NOT EXISTS user_settings ("
                             " username TEXT PRIMARY KEY,"
                             " cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE);"
                             "PRAGMA user_version = 1;";

/* Runs sql (no results) and writes SQLite's message into why on failure. */
static int exec(sqlite3 *db, const char *sql, char *why, size_t why_len)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) snprintf(why, why_len, "%s", msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return rc;
}

static int load(struct state_db *st, char *why, size_t why_len)
{
    sqlite3_stmt *q = NULL;
    int rc =
        sqlite3_prepare_v2(st->db, "SELECT id, name, host FROM caches ORDER BY id", -1, &q, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        struct front_cache c = {.id = sqlite3_column_int64(q, 0)};
        snprintf(c.name, sizeof(c.name), "%s", (const char *)sqlite3_column_text(q, 1));
        snprintf(c.host, sizeof(c.host), "%s", (const char *)sqlite3_column_text(q, 2));
        if (caches_add(st, &c) != 0)
            rc = SQLITE_NOMEM;
        else
            rc = SQLITE_OK;
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) goto failed;
    q = NULL;
    rc = sqlite3_prepare_v2(st->db, "SELECT username, cache_id FROM user_settings", -1, &q, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(q, 0);
        size_t len = (size_t)sqlite3_column_bytes(q, 0);
        rc = name != NULL && user_set(st, name, len, sqlite3_column_int64(q, 1)) == 0
                 ? SQLITE_OK
                 : SQLITE_NOMEM;
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) goto failed;
    return 0;
failed:
    snprintf(why, why_len, "%s", rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(st->db));
    return -EIO;
}

static void db_free(struct state_db *sd)
{
    if (sd->db != NULL) sqlite3_close(sd->db);
    for (size_t b = 0; b < USER_BUCKETS; b++) {
        while (sd->users[b] != NULL) {
            struct user_entry *e = sd->users[b];
            sd->users[b] = e->next;
            free(e);
        }
    }
    free(sd->caches);
    pthread_rwlock_destroy(&sd->mirror_lock);
    pthread_mutex_destroy(&sd->write_lock);
    free(sd);
}

/* A view of sd for one loop (sd's view count is the caller's to raise). */
static struct front_state *view_new(struct state_db *sd)
{
    struct front_state *st = calloc(1, sizeof(*st));
    if (st != NULL) st->sd = sd;
    return st;
}

int front_state_open(const char *dir, struct front_state **out, char *err, size_t errlen)
{
    char why[512] = "";
    *out = NULL;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "state directory %s: %s", dir, strerror(errno));
        return -errno;
    }
    struct state_db *st = calloc(1, sizeof(*st));
    if (st == NULL) return -ENOMEM;
    if (pthread_mutex_init(&st->write_lock, NULL) != 0) {
        free(st);
        return -ENOMEM;
    }
    if (pthread_rwlock_init(&st->mirror_lock, NULL) != 0) {
        pthread_mutex_destroy(&st->write_lock);
        free(st);
        return -ENOMEM;
    }
    snprintf(st->path, sizeof(st->path), "%s/%s", dir, FRONT_STATE_DB);
    int rc = sqlite3_open_v2(st->path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK) chmod(st->path, 0600);
    /* WAL: a commit is one append; FULL: synced before it is reported; EXCLUSIVE: ours
     * alone (the write below takes the lock and keeps it). */
    if (rc == SQLITE_OK)
        rc = exec(st->db,
                  "PRAGMA locking_mode = EXCLUSIVE;"
                  "PRAGMA journal_mode = WAL;"
                  "PRAGMA synchronous = FULL;"
                  "PRAGMA foreign_keys = ON;",
                  why, sizeof(why));
    if (rc == SQLITE_OK) rc = exec(st->db, schema, why, sizeof(why));
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
        snprintf(err, errlen, "%s: in use by another process (one front per state directory)",
                 st->path);
        db_free(st);
        return -EBUSY;
    }
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", st->path,
                 why[0]   ? why
                 : st->db ? sqlite3_errmsg(st->db)
                          : sqlite3_errstr(rc));
        db_free(st);
        return -EIO;
    }
    if (load(st, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: %s", st->path, why);
        db_free(st);
        return -EIO;
    }
    if ((*out = view_new(st)) == NULL) {
        db_free(st);
        return -ENOMEM;
    }
    st->views = 1;
    return 0;
}

int front_state_share(struct front_state *st, struct front_state **out)
{
    if ((*out = view_new(st->sd)) == NULL) return -ENOMEM;
    pthread_mutex_lock(&st->sd->write_lock);
    st->sd->views++;
    pthread_mutex_unlock(&st->sd->write_lock);
    return 0;
}

void front_state_attach(struct front_state *st, uv_loop_t *loop)
{
    st->loop = loop;
}

bool front_state_busy(const struct front_state *st)
{
    return st->running || st->head != NULL;
}

void front_state_close(struct front_state *st)
{
    if (st == NULL) return;
    struct state_db *sd = st->sd;
    free(st);
    pthread_mutex_lock(&sd->write_lock);
    bool last = --sd->views == 0;
    pthread_mutex_unlock(&sd->write_lock);
    if (last) db_free(sd);
}

/* --- Writes: on a worker ----------------------------------------------------------------- */

/* Binds texts and integers ("t" / "i" per '?') and steps a statement that returns no rows.
 * Returns SQLite's code. */
static int run_stmt(sqlite3 *db, const char *sql, const char *types, const char *t1, const char *t2,
                    int64_t i1, int64_t i2)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);
    const char *texts[2] = {t1, t2};
    int64_t ints[2] = {i1, i2};
    int nt = 0, ni = 0;
    for (int k = 0; rc == SQLITE_OK && types[k]; k++)
        rc = types[k] == 't' ? sqlite3_bind_text(q, k + 1, texts[nt++], -1, SQLITE_TRANSIENT)
                             : sqlite3_bind_int64(q, k + 1, ints[ni++]);
    if (rc == SQLITE_OK) rc = sqlite3_step(q);
    sqlite3_finalize(q);
    return rc;
}

/* The mirror follows what j committed (under both locks: in the database's order). */
static void mirror_apply(struct state_db *sd, struct state_job *j)
{
    pthread_rwlock_wrlock(&sd->mirror_lock);
    switch (j->kind) {
    case JOB_ADD_CACHE:
        if (caches_add(sd, &j->cache) != 0) j->added_lost = true;
        break;
    case JOB_REMOVE_CACHE:
        caches_remove(sd, j->cache.id);
        users_drop_cache(sd, j->cache.id);
        break;
    case JOB_SET_USER:
        if (user_set(sd, j->user, strlen(j->user), j->cache_id) != 0) j->added_lost = true;
        break;
    }
    pthread_rwlock_unlock(&sd->mirror_lock);
}

static void job_work(uv_work_t *w)
{
    struct state_job *j = w->data;
    struct state_db *sd = j->st->sd;
    pthread_mutex_lock(&sd->write_lock);
    sqlite3 *db = sd->db;
    int rc = SQLITE_OK;
    switch (j->kind) {
    case JOB_ADD_CACHE:
        rc = run_stmt(db, "INSERT INTO caches (name, host, created) VALUES (?, ?, ?)", "tti",
                      j->cache.name, j->cache.host, (int64_t)time(NULL), 0);
        if (rc == SQLITE_DONE) j->cache.id = sqlite3_last_insert_rowid(db);
        if (rc == SQLITE_CONSTRAINT) j->rc = -EEXIST;
        break;
    case JOB_REMOVE_CACHE:
        rc = run_stmt(db, "DELETE FROM caches WHERE id = ?", "i", NULL, NULL, j->cache.id, 0);
        if (rc == SQLITE_DONE && sqlite3_changes(db) == 0) j->rc = -ENOENT;
        break;
    case JOB_SET_USER:
        if (j->cache_id > 0)
            rc = run_stmt(db,
                          "INSERT INTO user_settings (username, cache_id) VALUES (?, ?) "
                          "ON CONFLICT(username) DO UPDATE SET cache_id = excluded.cache_id",
                          "ti", j->user, NULL, j->cache_id, 0);
        else
            rc = run_stmt(db, "DELETE FROM user_settings WHERE username = ?", "t", j->user, NULL, 0,
                          0);
        if (rc == SQLITE_CONSTRAINT) j->rc = -ENOENT; /* the cache went meanwhile */
        break;
    }
    if (rc != SQLITE_DONE && j->rc == 0) {
        j->rc = -EIO;
        snprintf(j->why, sizeof(j->why), "%s", sqlite3_errmsg(db));
    }
    if (j->rc == 0) mirror_apply(sd, j);
    pthread_mutex_unlock(&sd->write_lock);
}

static void job_pump(struct front_state *st);

/* On the loop (the mirror already follows): the caller is told. */
static void job_done(struct state_job *j)
{
    struct state_db *sd = j->st->sd;
    if (j->rc == -EIO)
        log_msg(LOG_ERROR, "front state %s: a change was not saved: %s", sd->path, j->why);
    if (j->added_lost)
        log_msg(LOG_ERROR,
                "front state %s: a change was saved but is not served until a restart: out "
                "of memory",
                sd->path);
    j->cb(j->arg, j->rc, j->rc == 0 && j->kind == JOB_ADD_CACHE ? &j->cache : NULL);
    free(j);
}

static void job_after(uv_work_t *w, int status)
{
    struct state_job *j = w->data;
    struct front_state *st = j->st;
    st->running = false;
    if (status < 0 && j->rc == 0) {
        j->rc = -EIO;
        snprintf(j->why, sizeof(j->why), "%s", uv_strerror(status));
    }
    job_done(j);
    job_pump(st);
}

static void job_pump(struct front_state *st)
{
    while (!st->running && st->head != NULL) {
        struct state_job *j = st->head;
        st->head = j->next;
        if (st->head == NULL) st->tail = NULL;
        st->running = true;
        j->work.data = j;
        if (uv_queue_work(st->loop, &j->work, job_work, job_after) != 0) {
            /* (cannot happen with a valid loop) */
            job_work(&j->work);
            job_after(&j->work, 0);
        }
    }
}

static int job_queue(struct front_state *st, struct state_job *j, front_state_cb cb, void *arg)
{
    j->st = st;
    j->cb = cb;
    j->arg = arg;
    j->work.data = j;
    if (st->loop == NULL) {
        job_work(&j->work);
        job_done(j);
        return 0;
    }
    if (st->tail != NULL)
        st->tail->next = j;
    else
        st->head = j;
    st->tail = j;
    job_pump(st);
    return 0;
}

int front_state_add_cache(struct front_state *st, const char *name, const char *host,
                          front_state_cb cb, void *arg)
{
    if (strlen(name) > FRONT_CACHE_NAME_MAX || strlen(host) > FRONT_CACHE_HOST_MAX) return -EINVAL;
    struct state_job *j = calloc(1, sizeof(*j));
    if (j == NULL) return -ENOMEM;
    j->kind = JOB_ADD_CACHE;
    snprintf(j->cache.name, sizeof(j->cache.name), "%s", name);
    snprintf(j->cache.host, sizeof(j->cache.host), "%s", host);
    return job_queue(st, j, cb, arg);
}

int front_state_remove_cache(struct front_state *st, int64_t id, front_state_cb cb, void *arg)
{
    struct state_job *j = calloc(1, sizeof(*j));
    if (j == NULL) return -ENOMEM;
    j->kind = JOB_REMOVE_CACHE;
    j->cache.id = id;
    return job_queue(st, j, cb, arg);
}

int front_state_set_user_cache(struct front_state *st, const char *user, int64_t cache_id,
                               front_state_cb cb, void *arg)
{
    if (strlen(user) == 0 || strlen(user) > FRONT_USER_MAX) return -EINVAL;
    struct state_job *j = calloc(1, sizeof(*j));
    if (j == NULL) return -ENOMEM;
    j->kind = JOB_SET_USER;
    snprintf(j->user, sizeof(j->user), "%s", user);
    j->cache_id = cache_id;
    return job_queue(st, j, cb, arg);
}
