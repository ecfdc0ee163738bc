/*
 * in_use.c: the blobs being read now, for the whole process. See in_use.h.
 */
#include "cache/in_use.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/digest.h"

/* A bucket per value of a digest's first byte: digests are uniform, so buckets hold
 * a few entries each even with thousands of blobs in use. */
#define IN_USE_BUCKETS 256

struct in_use_entry {
    char hex[DIGEST_SHA256_HEX_LEN];
    unsigned readers;
};

struct in_use_bucket {
    struct in_use_entry *entries;
    size_t n, cap;
};

struct in_use {
    pthread_mutex_t lock;
    size_t n_blobs;
    struct in_use_bucket buckets[IN_USE_BUCKETS];
};

struct in_use *in_use_new(void)
{
    struct in_use *t = calloc(1, sizeof(*t));
    if (t != NULL && pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

void in_use_free(struct in_use *t)
{
    if (t == NULL) return;
    for (size_t i = 0; i < IN_USE_BUCKETS; i++)
        free(t->buckets[i].entries);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 0;
}

static struct in_use_bucket *bucket_of(struct in_use *t, const char *hex)
{
    return &t->buckets[hex_value(hex[0]) * 16 + hex_value(hex[1])];
}

/* With the lock held: the entry of hex in b, or NULL. */
static struct in_use_entry *find(struct in_use_bucket *b, const char *hex)
{
    for (size_t i = 0; i < b->n; i++)
        if (memcmp(b->entries[i].hex, hex, DIGEST_SHA256_HEX_LEN) == 0) return &b->entries[i];
    return NULL;
}

int in_use_add(struct in_use *t, const char *hex)
{
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    struct in_use_bucket *b = bucket_of(t, hex);
    struct in_use_entry *e = find(b, hex);
    if (e != NULL) {
        e->readers++;
    } else {
        if (b->n == b->cap) {
            size_t cap = b->cap ? b->cap * 2 : 4;
            struct in_use_entry *grown = realloc(b->entries, cap * sizeof(*grown));
            if (grown != NULL) {
                b->entries = grown;
                b->cap = cap;
            }
        }
        if (b->n < b->cap) {
            e = &b->entries[b->n++];
            memcpy(e->hex, hex, DIGEST_SHA256_HEX_LEN);
            e->readers = 1;
            t->n_blobs++;
        } else {
            rc = -ENOMEM;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void in_use_remove(struct in_use *t, const char *hex)
{
    pthread_mutex_lock(&t->lock);
    struct in_use_bucket *b = bucket_of(t, hex);
    struct in_use_entry *e = find(b, hex);
    if (e != NULL && --e->readers == 0) {
        *e = b->entries[--b->n];
        t->n_blobs--;
    }
    pthread_mutex_unlock(&t->lock);
}

bool in_use_has(struct in_use *t, const char *hex)
{
    pthread_mutex_lock(&t->lock);
    bool has = find(bucket_of(t, hex), hex) != NULL;
    pthread_mutex_unlock(&t->lock);
    return has;
}

size_t in_use_count(struct in_use *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->n_blobs;
    pthread_mutex_unlock(&t->lock);
    return n;
}
