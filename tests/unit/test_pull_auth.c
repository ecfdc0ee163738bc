/*
 * test_pull_auth.c: what a pulling client's credential does before any realm is asked:
 * which Authorization it sends, which challenges it answers with a token request and
 * which it refuses at once. Tokens from a real realm, and their renewal, are
 * tests/e2e/test_warm.py's (with tests/e2e/token_server.py).
 */
#include <errno.h>
#include <string.h>
#include <uv.h>

#include "access/pull_auth.h"
#include "check.h"

static uv_loop_t loop;
static struct upstream_pool *pool;

static void never(void *arg, int err, const char *why)
{
    (void)arg;
    (void)err;
    (void)why;
    CHECK(!"no callback may come");
}

static void test_headers(void)
{
    struct pull_auth *none = pull_auth_new(&loop, pool, "team/app", NULL);
    struct pull_auth *basic = pull_auth_new(&loop, pool, "team/app", "Basic YTpi");
    struct pull_auth *bearer = pull_auth_new(&loop, pool, "team/app", "Bearer tok");
    CHECK(pull_auth_header(none) == NULL);
    CHECK_STR(pull_auth_header(basic), "Basic YTpi");
    CHECK_STR(pull_auth_header(bearer), "Bearer tok");
    CHECK(!pull_auth_renewal_due(basic));
    pull_auth_free(none);
    pull_auth_free(basic);
    pull_auth_free(bearer);
    pull_auth_free(NULL);
}

static void test_challenges_refused_at_once(void)
{
    struct pull_auth *basic = pull_auth_new(&loop, pool, "team/app", "Basic YTpi");
    struct pull_auth *bearer = pull_auth_new(&loop, pool, "team/app", "Bearer tok");
    /* A Basic challenge: the credential itself was refused, no token can help. */
    CHECK_INT(pull_auth_challenged(basic, "Basic realm=\"r\"", never, NULL), -EACCES);
    CHECK_INT(pull_auth_challenged(basic, NULL, never, NULL), -EACCES);
    CHECK_INT(pull_auth_challenged(basic, "not a challenge", never, NULL), -EACCES);
    /* A token the client gave was refused: asking the realm is not ours to do. */
    CHECK_INT(pull_auth_challenged(
                  bearer, "Bearer realm=\"http://127.0.0.1:1/token\",service=\"s\"", never, NULL),
              -EACCES);
    /* No token was got: there is nothing to renew. */
    CHECK_INT(pull_auth_renew(basic, never, NULL), -EINVAL);
    CHECK(!pull_auth_renewal_due(basic));
    pull_auth_free(basic);
    pull_auth_free(bearer);
}

static void test_cancelled_request_calls_nothing(void)
{
    struct pull_auth *a = pull_auth_new(&loop, pool, "team/app", "Basic YTpi");
    CHECK_INT(pull_auth_challenged(a, "Bearer realm=\"http://127.0.0.1:1/token\",service=\"s\"",
                                   never, NULL),
              0);
    /* One challenge is answered once. */
    CHECK_INT(pull_auth_challenged(a, "Bearer realm=\"http://127.0.0.1:1/token\"", never, NULL),
              -EACCES);
    CHECK_INT(pull_auth_renew(a, never, NULL), -EBUSY);
    pull_auth_free(a); /* cancels the request: no callback */
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Last: nothing of the pull_auths is left on the loop. */
static void test_nothing_left(void)
{
    upstream_pool_close(pool);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    uv_loop_init(&loop);
    pool = upstream_pool_new(&loop, NULL);
    RUN(test_headers);
    RUN(test_challenges_refused_at_once);
    RUN(test_cancelled_request_calls_nothing);
    RUN(test_nothing_left);
    return check_summary();
}
