/*
 * test_warm.c: what `content-cache warm` accepts before anything starts: references (the
 * registry, repository, tag and digest grammar) and platforms. The warm itself, against
 * a real origin, is tests/e2e/test_warm.py.
 */
#include <errno.h>
#include <string.h>

#include "cache/warm.h"
#include "check.h"

#define DIGEST "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static int check_ref(const char *ref, char *why, size_t len)
{
    why[0] = '\0';
    return warm_reference_check(ref, why, len);
}

static void test_references_accepted(void)
{
    static const char *const ok[] = {
        "team/app:1",
        "team/app",                  /* latest */
        "team/app@" DIGEST,          /* by digest */
        "team/app:1@" DIGEST,        /* the digest decides */
        "127.0.0.1:5000/team/app:1", /* a registry with a port, as containerd names it */
        "registry.example.com/org/app:2.0",
        "localhost/app:x",
        "a/b/c/d:v1.2_3-rc",
    };
    char why[300];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CHECK_INT(check_ref(ok[i], why, sizeof(why)), 0);
        CHECK_STR(why, "");
    }
}

static void test_references_refused(void)
{
    static const struct {
        const char *ref, *says;
    } bad[] = {
        {"", "not an image reference"},
        {"Team/App:1", "not a valid repository name"},
        {"team/app:", "not a valid tag"},
        {"team/app:bad tag", "not a valid tag"},
        {"team/app@sha256:abc", "a digest must be sha256"},
        {"team/app@md5:0123", "a digest must be sha256"},
        {"registry.example.com/:1", "not a valid repository name"},
        {"team//app:1", "not a valid repository name"},
    };
    char why[300];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(check_ref(bad[i].ref, why, sizeof(why)), -EINVAL);
        CHECK_CONTAINS(why, bad[i].says);
    }
}

static void test_start_refuses_bad_arguments(void)
{
    /* Refused before the env is looked at: it may be empty here. */
    struct warm_env env;
    memset(&env, 0, sizeof(env));
    struct warm *w = NULL;
    char why[300];
    const char *images[] = {"team/app:1"};
    const char *platforms[] = {"linux"};
    struct warm_opts opts = {.platforms = platforms, .n_platforms = 1};
    CHECK_INT(warm_start(&env, &opts, images, 1, &w, why, sizeof(why)), -EINVAL);
    CHECK_CONTAINS(why, "\"linux\" is not a platform");
    platforms[0] = "linux/AMD64";
    CHECK_INT(warm_start(&env, &opts, images, 1, &w, why, sizeof(why)), -EINVAL);
    opts.n_platforms = 0;
    CHECK_INT(warm_start(&env, &opts, images, 0, &w, why, sizeof(why)), -EINVAL);
    CHECK_CONTAINS(why, "between 1 and 64 image references");
    CHECK(w == NULL);
}

static void test_state_names(void)
{
    CHECK_STR(warm_state_name(WARM_QUEUED), "queued");
    CHECK_STR(warm_state_name(WARM_DONE), "done");
    CHECK_STR(warm_state_name(WARM_FAILED), "failed");
}

int main(void)
{
    RUN(test_references_accepted);
    RUN(test_references_refused);
    RUN(test_start_refuses_bad_arguments);
    RUN(test_state_names);
    return check_summary();
}
