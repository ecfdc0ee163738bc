/*
 * auth.c: the decision cache and the 401 challenge of auth.h (token verification is in
 * jwt.c).
 *
 * The cache is a chained hash table over an array of entries that grows by doubling up
 * to the bound, with entries linked by index: one chain per bucket (the bucket is the
 * first bytes of the key, a SHA-256, so no further hashing is needed), one list in order
 * of use for eviction, and one list of free slots.
 *
 * Threads: one cache serves every loop of the process (workers). Its mutex is held for
 * the whole of each public call on it and nothing else; a challenge handed out by a
 * lookup is a copy in the calling thread's own buffer, so another loop's store or
 * eviction cannot free it under the caller.
 */
#include "access/auth.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/digest.h"

#define NIL UINT32_MAX

struct auth_entry {
    unsigned char key[32];
    uint64_t expires_ms;
    char *challenge;       /* a refusal's WWW-Authenticate, or NULL */
    uint32_t chain;        /* next entry in the bucket, or next free slot */
    uint32_t newer, older; /* the use list */
    int status;
};

struct auth_cache {
    struct auth_entry *entries;
    size_t n_alloc; /* slots allocated */
    size_t n_used;  /* slots ever handed out (the rest are untouched) */
    size_t n_live;
    size_t max_entries;
    uint32_t *buckets;
    size_t bucket_mask;
    uint32_t newest, oldest;
    uint32_t free_list;
    unsigned allow_ttl_ms, deny_ttl_ms;
    uint64_t hits, misses, evictions;
    pthread_mutex_t lock;
};

struct auth_cache *auth_cache_new(size_t max_entries, unsigned allow_ttl_ms, unsigned deny_ttl_ms)
{
    if (max_entries == 0 || max_entries > AUTH_CACHE_MAX_ENTRIES) return NULL;
    struct auth_cache *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    size_t n_buckets = 16;
    while (n_buckets < max_entries)
        n_buckets *= 2;
    c->buckets = malloc(n_buckets * sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < n_buckets; i++)
        c->buckets[i] = NIL;
    c->bucket_mask = n_buckets - 1;
    c->max_entries = max_entries;
    pthread_mutex_init(&c->lock, NULL);
    c->newest = c->oldest = c->free_list = NIL;
    c->allow_ttl_ms = allow_ttl_ms;
    c->deny_ttl_ms = deny_ttl_ms;
    return c;
}

void auth_cache_free(struct auth_cache *c)
{
    if (c == NULL) return;
    for (size_t i = 0; i < c->n_used; i++)
        free(c->entries[i].challenge);
    free(c->entries);
    free(c->buckets);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void auth_cache_stats(const struct auth_cache *c, struct auth_cache_stats *out)
{
    struct auth_cache *locked = (struct auth_cache *)c; /* the lock, not the figures */
    pthread_mutex_lock(&locked->lock);
    out->hits = c->hits;
    out->misses = c->misses;
    out->evictions = c->evictions;
    out->entries = c->n_live;
    pthread_mutex_unlock(&locked->lock);
}

static void hash_field(struct digest_sha256 *ctx, const void *data, size_t len)
{
    unsigned char prefix[8];
    uint64_t n = len;
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(n >> (8 * i));
    digest_sha256_update(ctx, prefix, sizeof(prefix));
    if (len > 0) digest_sha256_update(ctx, data, len);
}

static void make_key(const char *origin, const char *credential, size_t cred_len, const char *repo,
                     size_t repo_len, const char *action, unsigned char key[32])
{
    struct digest_sha256 ctx;
    digest_sha256_init(&ctx);
    hash_field(&ctx, origin, origin ? strlen(origin) : 0);
    hash_field(&ctx, credential, cred_len);
    hash_field(&ctx, repo, repo_len);
    hash_field(&ctx, action, action ? strlen(action) : 0);
    digest_sha256_final(&ctx, key);
}

static size_t bucket_of(const struct auth_cache *c, const unsigned char key[32])
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    return (size_t)h & c->bucket_mask;
}

static uint32_t find(const struct auth_cache *c, const unsigned char key[32])
{
    for (uint32_t i = c->buckets[bucket_of(c, key)]; i != NIL; i = c->entries[i].chain)
        if (memcmp(c->entries[i].key, key, 32) == 0) return i;
    return NIL;
}

static void use_unlink(struct auth_cache *c, uint32_t i)
{
    struct auth_entry *e = &c->entries[i];
    if (e->newer != NIL)
        c->entries[e->newer].older = e->older;
    else
        c->newest = e->older;
    if (e->older != NIL)
        c->entries[e->older].newer = e->newer;
    else
        c->oldest = e->newer;
}

static void use_push_newest(struct auth_cache *c, uint32_t i)
{
    struct auth_entry *e = &c->entries[i];
    e->newer = NIL;
    e->older = c->newest;
    if (c->newest != NIL) c->entries[c->newest].newer = i;
    c->newest = i;
    if (c->oldest == NIL) c->oldest = i;
}

/* Takes entry i out of its bucket and the use list, and puts it on the free list. */
static void drop(struct auth_cache *c, uint32_t i)
{
    uint32_t *link = &c->buckets[bucket_of(c, c->entries[i].key)];
    while (*link != i)
        link = &c->entries[*link].chain;
    *link = c->entries[i].chain;
    use_unlink(c, i);
    free(c->entries[i].challenge);
    c->entries[i].challenge = NULL;
    c->entries[i].chain = c->free_list;
    c->free_list = i;
    c->n_live--;
}

/* A free slot, growing the array or evicting the least recently used entry. */
static uint32_t take_slot(struct auth_cache *c)
{
    if (c->free_list == NIL && c->n_live >= c->max_entries) {
        drop(c, c->oldest);
        c->evictions++;
    }
    if (c->free_list != NIL) {
        uint32_t i = c->free_list;
        c->free_list = c->entries[i].chain;
        return i;
    }
    if (c->n_used == c->n_alloc) {
        size_t want = c->n_alloc == 0 ? 64 : c->n_alloc * 2;
        if (want > c->max_entries) want = c->max_entries;
        struct auth_entry *grown = realloc(c->entries, want * sizeof(*grown));
        if (grown == NULL) return NIL;
        c->entries = grown;
        c->n_alloc = want;
    }
    c->entries[c->n_used].challenge = NULL;
    return (uint32_t)c->n_used++;
}

static bool lookup_locked(struct auth_cache *c, const unsigned char key[32], uint64_t now_ms,
                          int *status_out, const char **challenge_out);

bool auth_cache_lookup(struct auth_cache *c, const char *origin, const char *credential,
                       size_t cred_len, const char *repo, size_t repo_len, const char *action,
                       uint64_t now_ms, int *status_out, const char **challenge_out)
{
    static _Thread_local char challenge_copy[AUTH_CACHE_CHALLENGE_MAX + 1];
    unsigned char key[32];
    const char *challenge = NULL;
    make_key(origin, credential, cred_len, repo, repo_len, action, key);
    pthread_mutex_lock(&c->lock);
    bool found = lookup_locked(c, key, now_ms, status_out, &challenge);
    if (found && challenge_out != NULL) {
        *challenge_out = NULL;
        if (challenge != NULL) {
            snprintf(challenge_copy, sizeof(challenge_copy), "%s", challenge);
            *challenge_out = challenge_copy;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static bool lookup_locked(struct auth_cache *c, const unsigned char key[32], uint64_t now_ms,
                          int *status_out, const char **challenge_out)
{
    uint32_t i = find(c, key);
    if (i != NIL && now_ms >= c->entries[i].expires_ms) {
        drop(c, i);
        i = NIL;
    }
    if (i == NIL) {
        c->misses++;
        return false;
    }
    use_unlink(c, i);
    use_push_newest(c, i);
    c->hits++;
    *status_out = c->entries[i].status;
    *challenge_out = c->entries[i].challenge;
    return true;
}

/* When a decision for `status` stored at now_ms expires; 0 when it is not to be stored. */
static uint64_t expiry_for(const struct auth_cache *c, const char *credential, size_t cred_len,
                           int status, uint64_t now_ms)
{
    if (status == 401 || status == 403 || status == 404)
        return c->deny_ttl_ms > 0 ? now_ms + c->deny_ttl_ms : 0;
    if (status < 200 || status > 299 || c->allow_ttl_ms == 0) return 0;
    uint64_t expires = now_ms + c->allow_ttl_ms;
    int64_t exp_s;
    if (credential != NULL && auth_bearer_exp(credential, cred_len, &exp_s) == 0) {
        if (exp_s <= 0) return 0;
        uint64_t exp_ms = (uint64_t)exp_s > UINT64_MAX / 1000 ? UINT64_MAX : (uint64_t)exp_s * 1000;
        if (exp_ms <= now_ms) return 0;
        if (exp_ms < expires) expires = exp_ms;
    }
    return expires;
}

/* A copy of a challenge fit to keep, NUL-terminated; NULL when none or not fit. */
static bool copy_challenge(const char *challenge, size_t len, char **out)
{
    *out = NULL;
    if (challenge == NULL || len == 0) return true;
    if (len > AUTH_CACHE_CHALLENGE_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)challenge[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return false;
    }
    *out = strndup(challenge, len);
    return *out != NULL;
}

static bool store_locked(struct auth_cache *c, const unsigned char key[32], bool allowed,
                         int status, char *kept, uint64_t expires);

bool auth_cache_store(struct auth_cache *c, const char *origin, const char *credential,
                      size_t cred_len, const char *repo, size_t repo_len, const char *action,
                      int status, const char *challenge, size_t challenge_len, uint64_t now_ms)
{
    uint64_t expires = expiry_for(c, credential, cred_len, status, now_ms);
    if (expires == 0) return false;
    bool allowed = status >= 200 && status <= 299;
    char *kept = NULL;
    if (!allowed && !copy_challenge(challenge, challenge_len, &kept)) return false;
    unsigned char key[32];
    make_key(origin, credential, cred_len, repo, repo_len, action, key);
    pthread_mutex_lock(&c->lock);
    bool stored = store_locked(c, key, allowed, status, kept, expires);
    pthread_mutex_unlock(&c->lock);
    return stored;
}

static bool store_locked(struct auth_cache *c, const unsigned char key[32], bool allowed,
                         int status, char *kept, uint64_t expires)
{
    uint32_t i = find(c, key);
    if (i != NIL) {
        use_unlink(c, i);
        free(c->entries[i].challenge);
    } else {
        i = take_slot(c);
        if (i == NIL) {
            free(kept);
            return false;
        }
        struct auth_entry *e = &c->entries[i];
        memcpy(e->key, key, 32);
        size_t b = bucket_of(c, key);
        e->chain = c->buckets[b];
        c->buckets[b] = i;
        c->n_live++;
    }
    c->entries[i].status = allowed ? 200 : status;
    c->entries[i].challenge = kept;
    c->entries[i].expires_ms = expires;
    use_push_newest(c, i);
    return true;
}

/* ---- the challenge ----------------------------------------------------------------------- */

struct out_buf {
    char *p;
    size_t len, cap;
    int err;
};

static void put(struct out_buf *o, const char *s, size_t n, bool quoted)
{
    for (size_t i = 0; i < n && o->err == 0; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (quoted && (ch < 0x20 || ch == 0x7f)) {
            o->err = -EINVAL;
            return;
        }
        bool esc = quoted && (ch == '"' || ch == '\\');
        if (o->len + (esc ? 2 : 1) >= o->cap) {
            o->err = -ENOSPC;
            return;
        }
        if (esc) o->p[o->len++] = '\\';
        o->p[o->len++] = (char)ch;
    }
}

static void put_lit(struct out_buf *o, const char *s)
{
    put(o, s, strlen(s), false);
}

int auth_challenge(const char *realm, const char *service, const char *repo, size_t repo_len,
                   char *buf, size_t len)
{
    struct out_buf o = {buf, 0, len, 0};
    if (len == 0) return -ENOSPC;
    put_lit(&o, "Bearer realm=\"");
    put(&o, realm ? realm : "", realm ? strlen(realm) : 0, true);
    put_lit(&o, "\",service=\"");
    put(&o, service ? service : "", service ? strlen(service) : 0, true);
    if (repo != NULL) {
        put_lit(&o, "\",scope=\"repository:");
        put(&o, repo, repo_len, true);
        put_lit(&o, ":pull");
    }
    put_lit(&o, "\"");
    if (o.err != 0) return o.err;
    buf[o.len] = '\0';
    return (int)o.len;
}

/* One parameter's value into dst (cap bytes, NUL-terminated); false when it does not fit. */
static bool param_copy(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap) return false;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return true;
}

int auth_challenge_parse(const char *value, size_t len, struct auth_challenge_params *out)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    size_t s0 = i;
    while (i < len && value[i] != ' ' && value[i] != '\t')
        i++;
    if (i == s0 || !param_copy(out->scheme, sizeof(out->scheme), value + s0, i - s0))
        return -EINVAL;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        if (i == len) break;
        size_t n0 = i;
        while (i < len && value[i] != '=' && value[i] != ',' && value[i] != ' ')
            i++;
        size_t name_len = i - n0;
        if (i == len || value[i] != '=' || name_len == 0) return -EINVAL;
        i++;
        char v[1024];
        size_t vn = 0;
        if (i < len && value[i] == '"') {
            for (i++; i < len && value[i] != '"'; i++) {
                if (value[i] == '\\' && i + 1 < len) i++;
                if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f || vn + 1 >= sizeof(v))
                    return -EINVAL;
                v[vn++] = value[i];
            }
            if (i == len) return -EINVAL;
            i++;
        } else {
            while (i < len && value[i] != ',' && value[i] != ' ') {
                if ((unsigned char)value[i] < 0x20 || vn + 1 >= sizeof(v)) return -EINVAL;
                v[vn++] = value[i++];
            }
        }
        const char *name = value + n0;
        bool ok = true;
        if (name_len == 5 && strncasecmp(name, "realm", 5) == 0)
            ok = param_copy(out->realm, sizeof(out->realm), v, vn);
        else if (name_len == 7 && strncasecmp(name, "service", 7) == 0)
            ok = param_copy(out->service, sizeof(out->service), v, vn);
        else if (name_len == 5 && strncasecmp(name, "scope", 5) == 0)
            ok = param_copy(out->scope, sizeof(out->scope), v, vn);
        if (!ok) return -EINVAL;
    }
    return 0;
}
