/* Unit tests of pulls.c: pull counts in memory, added to their files on disk by a timer
 * (and at stop), read back, reset when a blob is stored again. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "cache/pulls.h"
#include "check.h"
#include "store_fixture.h"

static const char a[] = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
static const char b[] = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";
static const char c[] = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

static void test_files(void)
{
    char root[64];
    struct store *st = fixture_store_open(root, "pulls");
    CHECK_INT(pulls_read_sync(st, a), 0);
    CHECK_INT(pulls_add_sync(st, a, 3), 0);
    CHECK_INT(pulls_add_sync(st, a, 4), 0);
    CHECK_INT(pulls_read_sync(st, a), 7);
    CHECK_INT(pulls_read_sync(st, b), 0);
    CHECK_INT(pulls_reset_sync(st, a), 0);
    CHECK_INT(pulls_read_sync(st, a), 0);
    CHECK_INT(pulls_reset_sync(st, a), 0); /* none: still fine */
    CHECK_INT(pulls_add_sync(st, "../../etc", 1), -EINVAL);
    store_close(st);
    fixture_rm_rf(root);
}

static void test_counted_in_memory_then_on_disk(void)
{
    char root[64];
    uv_loop_t loop;
    struct store *st = fixture_store_open(root, "pulls");
    uv_loop_init(&loop);
    struct pulls *p = pulls_new(&loop, st);
    CHECK(p != NULL);
    fixture_blob_put(root, a);
    fixture_blob_put(root, b);
    for (int i = 0; i < 5; i++)
        pulls_count(p, a);
    pulls_count(p, b);
    pulls_count(p, c);         /* served but not stored (passed through): no count file */
    pulls_count(p, "not hex"); /* ignored */
    CHECK_INT(pulls_pending(p, a), 5);
    CHECK_INT(pulls_pending(p, b), 1);
    CHECK_INT(pulls_read_sync(st, a), 0); /* not on disk before a flush */
    pulls_stop(p);                        /* writes what waits */
    CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(pulls_read_sync(st, a), 5);
    CHECK_INT(pulls_read_sync(st, b), 1);
    CHECK_INT(pulls_read_sync(st, c), 0);
    char path[512];
    snprintf(path, sizeof(path), "%s/docker/registry/v2/_content-cache/pulls/%.2s/%s", root, c, c);
    CHECK(access(path, F_OK) != 0);
    CHECK_INT(uv_loop_close(&loop), 0);
    store_close(st);
    fixture_rm_rf(root);
}

static void test_many_blobs_grow_the_table(void)
{
    char root[64], hex[65];
    uv_loop_t loop;
    struct store *st = fixture_store_open(root, "pulls");
    uv_loop_init(&loop);
    struct pulls *p = pulls_new(&loop, st);
    snprintf(hex, sizeof(hex), "%064x", 1234);
    fixture_blob_put(root, hex);
    for (int i = 0; i < 2000; i++) {
        snprintf(hex, sizeof(hex), "%064x", i);
        pulls_count(p, hex);
        pulls_count(p, hex);
    }
    snprintf(hex, sizeof(hex), "%064x", 1234);
    CHECK_INT(pulls_pending(p, hex), 2);
    CHECK_INT(pulls_dropped(p), 0);
    pulls_stop(p);
    CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(pulls_read_sync(st, hex), 2);
    CHECK_INT(uv_loop_close(&loop), 0);
    store_close(st);
    fixture_rm_rf(root);
}

int main(void)
{
    RUN(test_files);
    RUN(test_counted_in_memory_then_on_disk);
    RUN(test_many_blobs_grow_the_table);
    return check_summary();
}
