/*
 * test_fetch_board.c: the fetches of a process's loops (cache/fetch_board.h): one claim
 * per blob, followers woken by their own uv_async_t from the owner's thread, the owner's
 * file readable through a follower's own descriptor, the claim freed by the last holder.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "cache/fetch_board.h"
#include "check.h"

static const char HEX_A[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char HEX_B[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/* One claim per blob; a second loop follows it; another blob is free. */
static void test_claim_and_follow(void)
{
    struct fetch_board *b = fetch_board_new();
    struct fetch_board_claim *c = NULL, *again = NULL, *other = NULL;
    CHECK(b != NULL);
    CHECK_INT(fetch_board_claim(b, HEX_A, &c), 0);
    CHECK(c != NULL);
    CHECK_INT(fetch_board_claim(b, HEX_A, &again), -EEXIST);
    CHECK(again == NULL);
    CHECK_INT(fetch_board_claim(b, HEX_B, &other), 0);

    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_async_t wake;
    uv_async_init(&loop, &wake, NULL);
    struct fetch_board_follower fl = {.wake = &wake}, none = {.wake = &wake};
    CHECK_INT(fetch_board_follow(b, HEX_A, &fl), 0);
    CHECK(fl.claim == c);
    fetch_board_release(other);
    CHECK_INT(fetch_board_follow(b, HEX_B, &none), -ENOENT);

    /* Released by its owner: the blob is free to be claimed again, while the follower
     * still reads the old claim, which says its owner stopped without a last word. */
    fetch_board_release(c);
    CHECK_INT(fetch_board_claim(b, HEX_A, &again), 0);
    struct fetch_board_view v;
    int fd = -1;
    fetch_board_read(&fl, &v, &fd);
    CHECK(v.failed);
    CHECK_CONTAINS(v.error, "stopped");
    CHECK_INT(fd, -1);
    fetch_board_unfollow(&fl); /* the last holder frees it (ASan says whether it did) */
    fetch_board_release(again);
    fetch_board_free(b);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* What the owner publishes reaches the follower; its file through a descriptor of its
 * own, which outlives the owner's. */
static void test_view_and_file(void)
{
    struct fetch_board *b = fetch_board_new();
    struct fetch_board_claim *c = NULL;
    CHECK_INT(fetch_board_claim(b, HEX_A, &c), 0);
    char path[] = "/tmp/cc-test-board-XXXXXX";
    int owner_fd = mkstemp(path);
    CHECK(owner_fd >= 0);
    unlink(path);
    CHECK(write(owner_fd, "hello", 5) == 5);
    CHECK_INT(fetch_board_set_fd(c, owner_fd), 0);
    close(owner_fd); /* the owner's goes; the board has its own */

    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_async_t wake;
    uv_async_init(&loop, &wake, NULL);
    struct fetch_board_follower fl = {.wake = &wake};
    CHECK_INT(fetch_board_follow(b, HEX_A, &fl), 0);
    struct fetch_board_view v = {.size = 5, .written = 5, .head_seen = true, .verified = true};
    fetch_board_publish(c, &v);
    struct fetch_board_view got;
    int fd = -1;
    fetch_board_read(&fl, &got, &fd);
    CHECK(got.size == 5 && got.written == 5 && got.head_seen && got.verified && !got.done);
    CHECK(fd >= 0);
    char buf[8] = {0};
    CHECK(pread(fd, buf, sizeof(buf), 0) == 5);
    CHECK_STR(buf, "hello");
    /* A second read keeps the descriptor the follower has. */
    int same = fd;
    fetch_board_read(&fl, &got, &fd);
    CHECK_INT(fd, same);
    close(fd);

    v.done = true;
    fetch_board_publish(c, &v);
    fetch_board_release(c);
    fetch_board_read(&fl, &got, &fd);
    CHECK(got.done && !got.failed);
    fetch_board_unfollow(&fl);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
    fetch_board_free(b);
}

/* The owner runs on another thread: each change it publishes wakes the follower's loop
 * (no polling), which sees the bytes grow until the end; unchanged views wake nobody. */
struct owner_thread {
    struct fetch_board_claim *claim;
    uv_sem_t followed;
};

static void owner_main(void *arg)
{
    struct owner_thread *o = arg;
    uv_sem_wait(&o->followed);
    struct fetch_board_view v = {.size = 300, .head_seen = true};
    for (int i = 1; i <= 3; i++) {
        v.written = (uint64_t)i * 100;
        fetch_board_publish(o->claim, &v);
        fetch_board_publish(o->claim, &v); /* the same again: no wake-up of its own */
    }
    v.verified = v.done = true;
    fetch_board_publish(o->claim, &v);
    fetch_board_release(o->claim);
}

struct follower_side {
    struct fetch_board_follower fl;
    uv_async_t wake;
    uv_timer_t limit; /* the wait is bounded: no wake-up in 10 s fails the test */
    unsigned wakes;
    uint64_t last_written;
    bool saw_done;
};

static void follower_woken(uv_async_t *h)
{
    struct follower_side *s = h->data;
    struct fetch_board_view v;
    int fd = -1;
    s->wakes++;
    fetch_board_read(&s->fl, &v, &fd);
    CHECK(v.written >= s->last_written); /* never backwards */
    s->last_written = v.written;
    if (v.done) {
        s->saw_done = true;
        fetch_board_unfollow(&s->fl);
        uv_close((uv_handle_t *)h, NULL);
        uv_close((uv_handle_t *)&s->limit, NULL);
    }
}

static void follower_gave_up(uv_timer_t *t)
{
    struct follower_side *s = t->data;
    fprintf(stderr, "no wake-up with the end within 10 s\n");
    fetch_board_unfollow(&s->fl);
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_wakes_across_threads(void)
{
    struct fetch_board *b = fetch_board_new();
    struct owner_thread o;
    CHECK_INT(fetch_board_claim(b, HEX_A, &o.claim), 0);
    uv_sem_init(&o.followed, 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct follower_side s = {0};
    uv_async_init(&loop, &s.wake, follower_woken);
    s.wake.data = &s;
    s.fl.wake = &s.wake;
    uv_timer_init(&loop, &s.limit);
    s.limit.data = &s;
    uv_timer_start(&s.limit, follower_gave_up, 10000, 0);
    CHECK_INT(fetch_board_follow(b, HEX_A, &s.fl), 0);
    uv_thread_t t;
    CHECK_INT(uv_thread_create(&t, owner_main, &o), 0);
    uv_sem_post(&o.followed);
    uv_run(&loop, UV_RUN_DEFAULT); /* ends when the follower closes its handle at done */
    uv_thread_join(&t);
    CHECK(s.saw_done);
    CHECK_INT((int)s.last_written, 300);
    CHECK(s.wakes >= 1 && s.wakes <= 4); /* uv_async_send coalesces; 4 changes at most */
    CHECK_INT(uv_loop_close(&loop), 0);
    uv_sem_destroy(&o.followed);
    fetch_board_free(b);
}

int main(void)
{
    RUN(test_claim_and_follow);
    RUN(test_view_and_file);
    RUN(test_wakes_across_threads);
    return check_summary();
}
