/*
 * test_in_use.c: the process's table of blobs being read (cache/in_use.h).
 */
#include <stdio.h>
#include <uv.h>

#include "cache/in_use.h"
#include "check.h"

/* A digest of 64 hex digits that differs from the others by n (in its first and last
 * digits, so that some share a bucket and some do not). */
static void make_hex(char *hex, unsigned n)
{
    snprintf(hex, 65, "%02x%060u%02x", n % 3, 0u, n % 256);
}

static void test_readers_counted(void)
{
    struct in_use *t = in_use_new();
    char a[65], b[65];
    make_hex(a, 1);
    make_hex(b, 4); /* the same bucket as a (first byte 01), another blob */
    CHECK(!in_use_has(t, a));
    CHECK_INT(in_use_add(t, a), 0);
    CHECK_INT(in_use_add(t, a), 0);
    CHECK_INT(in_use_add(t, b), 0);
    CHECK_INT(in_use_count(t), 2);
    in_use_remove(t, a);
    CHECK(in_use_has(t, a)); /* its second reader still reads */
    in_use_remove(t, a);
    CHECK(!in_use_has(t, a));
    CHECK(in_use_has(t, b));
    in_use_remove(t, a); /* not in the table: nothing happens */
    CHECK(in_use_has(t, b));
    in_use_remove(t, b);
    CHECK_INT(in_use_count(t), 0);
    in_use_free(t);
}

/* Loops add and remove readers from their own threads while another asks. */
#define THREADS 4
#define ROUNDS 20000

struct reader {
    struct in_use *t;
    unsigned id;
    unsigned missing; /* its blob was not in the table while it read it */
};

static void reader_main(void *arg)
{
    struct reader *r = arg;
    char hex[65], shared[65];
    make_hex(hex, 100 + r->id);
    make_hex(shared, 7);
    for (unsigned i = 0; i < ROUNDS; i++) {
        in_use_add(r->t, hex);
        in_use_add(r->t, shared);
        if (!in_use_has(r->t, hex) || !in_use_has(r->t, shared)) r->missing++;
        in_use_remove(r->t, shared);
        in_use_remove(r->t, hex);
    }
}

static void test_threads(void)
{
    struct in_use *t = in_use_new();
    struct reader readers[THREADS];
    uv_thread_t threads[THREADS];
    char held[65];
    make_hex(held, 7); /* one reader holds the shared blob throughout */
    CHECK_INT(in_use_add(t, held), 0);
    for (unsigned i = 0; i < THREADS; i++) {
        readers[i] = (struct reader){t, i, 0};
        CHECK_INT(uv_thread_create(&threads[i], reader_main, &readers[i]), 0);
    }
    unsigned lost = 0;
    for (unsigned i = 0; i < ROUNDS; i++)
        lost += !in_use_has(t, held);
    for (unsigned i = 0; i < THREADS; i++) {
        uv_thread_join(&threads[i]);
        CHECK_INT(readers[i].missing, 0);
    }
    CHECK_INT(lost, 0);
    CHECK_INT(in_use_count(t), 1);
    in_use_remove(t, held);
    CHECK_INT(in_use_count(t), 0);
    in_use_free(t);
}

int main(void)
{
    RUN(test_readers_counted);
    RUN(test_threads);
    return check_summary();
}
