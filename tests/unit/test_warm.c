/*
 * test_warm.c: what `content-cache warm` accepts before anything starts: references (the
 * sha256 ones the store keeps) and platforms. The warm itself, against
 * a real origin, is tests/e2e/test_warm.py.
 */
#include <errno.h>
#include <string.h>

#include "cache/warm.h"
#include "check.h"

#define HEX64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define DIGEST "sha256:" HEX64
#define SHA512_HEX HEX64 HEX64

static void test_references(void)
{
    /* The grammar is registry_image_ref_parse's (test_registry.c); the store keeps sha256
     * blobs only. */
    char why[300];
    CHECK_INT(warm_reference_check("127.0.0.1:5000/team/app:1", why, sizeof(why)), 0);
    CHECK_INT(warm_reference_check("team/app@" DIGEST, why, sizeof(why)), 0);
    CHECK_INT(warm_reference_check("Team/App:1", why, sizeof(why)), -EINVAL);
    CHECK_CONTAINS(why, "not a valid repository name");
    CHECK_INT(warm_reference_check("team/app@sha512:" SHA512_HEX, why, sizeof(why)), -EINVAL);
    CHECK_CONTAINS(why, "only sha256 digests");
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
    RUN(test_references);
    RUN(test_start_refuses_bad_arguments);
    RUN(test_state_names);
    return check_summary();
}
