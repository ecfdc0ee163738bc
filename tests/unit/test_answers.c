/* Unit tests of answers.c and outage.c: the origin's answers kept on disk as hashes only,
 * in order, in bounded slots; and the outage rules no policy can change. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "cache/answers.h"
#include "cache/outage.h"
#include "check.h"
#include "store_fixture.h"

static const char ORIGIN[] = "https://dtr.example.com";
static const char SECRET[] = "Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk"; /* alice:secret-password */

static void key(const char *cred, const char *repo, unsigned char out[32])
{
    answers_key(ORIGIN, cred, strlen(cred), repo, strlen(repo), out);
}

/* Whether any file under dir holds needle. */
static bool tree_holds(const char *dir, const char *needle)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "grep -rqF '%s' '%s'", needle, dir);
    return system(cmd) == 0;
}

static void test_kept_in_order_as_hashes(void)
{
    char root[64];
    uv_loop_t loop;
    unsigned char k[32], other[32];
    int status;
    double when, t0 = (double)time(NULL) - 1;
    struct store *st = fixture_store_open(root, "answers");
    uv_loop_init(&loop);
    struct answers *a = answers_open(&loop, st);
    CHECK(a != NULL);
    key(SECRET, "team/app", k);
    key(SECRET, "team/other", other);
    CHECK(!answers_lookup_queued(a, k, &status, &when));
    answers_record(a, k, 200);
    answers_record(a, k, 401); /* a refusal after a yes: the refusal stands */
    answers_record(a, other, 204);
    answers_record(a, other, 404); /* not an answer about the credential: not kept */
    answers_challenge_record(a, ORIGIN, "Basic realm=\"r\"", 15);
    CHECK(answers_lookup_queued(a, k, &status, &when));
    CHECK_INT(status, 401);
    CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0); /* the writes on the pool */
    CHECK(!answers_lookup_queued(a, k, &status, &when));
    CHECK(answers_lookup_sync(a, k, &status, &when));
    CHECK_INT(status, 401);
    CHECK(when >= t0 && when <= (double)time(NULL) + 1);
    CHECK(answers_lookup_sync(a, other, &status, &when));
    CHECK_INT(status, 200);
    char challenge[ANSWERS_CHALLENGE_MAX];
    CHECK(answers_challenge_sync(a, ORIGIN, challenge, sizeof(challenge)));
    CHECK_STR(challenge, "Basic realm=\"r\"");
    CHECK(!answers_challenge_sync(a, "https://elsewhere", challenge, sizeof(challenge)));
    /* Only hashes: no credential under the root. */
    CHECK(!tree_holds(root, "YWxpY2U6c2VjcmV0LXBhc3N3b3Jk"));
    CHECK(!tree_holds(root, "secret-password"));
    answers_close(a);
    /* Kept across a restart. */
    a = answers_open(&loop, st);
    CHECK(answers_lookup_sync(a, k, &status, &when));
    CHECK_INT(status, 401);
    answers_close(a);
    CHECK_INT(uv_loop_close(&loop), 0);
    store_close(st);
    fixture_rm_rf(root);
}

static void test_slots_are_bounded_and_never_turn_a_no_into_a_yes(void)
{
    char root[64], repo[64];
    uv_loop_t loop;
    unsigned char k[32], other[32];
    int status;
    double when;
    struct store *st = fixture_store_open(root, "answers");
    uv_loop_init(&loop);
    struct answers *a = answers_open(&loop, st);
    key(SECRET, "team/app", k);
    answers_record(a, k, 403);
    /* Another key in the same slot (same first four bytes mod the slots). */
    for (int i = 0;; i++) {
        snprintf(repo, sizeof(repo), "team/app-%d", i);
        key(SECRET, repo, other);
        uint32_t x = (uint32_t)k[0] << 24 | (uint32_t)k[1] << 16 | (uint32_t)k[2] << 8 | k[3];
        uint32_t y = (uint32_t)other[0] << 24 | (uint32_t)other[1] << 16 | (uint32_t)other[2] << 8 |
                     other[3];
        if (x % ANSWERS_SLOTS == y % ANSWERS_SLOTS) break;
    }
    answers_record(a, other, 200);
    CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK(answers_lookup_sync(a, other, &status, &when));
    CHECK_INT(status, 200);
    CHECK(!answers_lookup_sync(a, k, &status, &when)); /* forgotten, not a yes */
    struct stat sb;
    char path[256];
    snprintf(path, sizeof(path), "%s/docker/registry/v2/_content-cache/auth/answers", root);
    CHECK(stat(path, &sb) == 0 && sb.st_size <= (off_t)ANSWERS_SLOTS * ANSWERS_RECORD);
    answers_close(a);
    CHECK_INT(uv_loop_close(&loop), 0);
    store_close(st);
    fixture_rm_rf(root);
}

static bool policy_answer;
static int policy_calls;

static bool policy(void *ud, const struct policy_request *req, const struct policy_outage *k)
{
    policy_calls++;
    return policy_answer;
}

static void test_rules_no_policy_changes(void)
{
    struct outage *o = outage_new(NULL, policy, NULL);
    struct policy_request manifest = {.method = "GET", .kind = "manifest", .repository = "a/b"};
    struct policy_request base = {.method = "GET", .kind = "base"};
    struct policy_outage known = {.has_tag = true, .tag_age = 100};
    struct outage_auth yes = {.found = true, .status = 200, .when = 1000};
    struct outage_auth no = {.found = true, .status = 401, .when = 1000};
    struct outage_auth unknown = {0};
    struct outage_auth token = {.token_verified = true};
    uint64_t age;
    int status;
    policy_answer = true;
    /* A refusal is the origin's, again, whatever the policy would say. */
    CHECK_INT(outage_decide(o, &manifest, &known, &no, true, 2000, &age, &status), OUTAGE_REFUSE);
    CHECK_INT(status, 401);
    /* No answer known, or nothing held: nothing served. */
    CHECK_INT(outage_decide(o, &manifest, &known, &unknown, true, 2000, &age, &status),
              OUTAGE_FAIL);
    CHECK_INT(outage_decide(o, &manifest, &known, &yes, false, 2000, &age, &status), OUTAGE_FAIL);
    policy_calls = 0;
    /* Otherwise the policy decides, and the age is the oldest fact's. */
    CHECK_INT(outage_decide(o, &manifest, &known, &yes, true, 2000, &age, &status), OUTAGE_SERVE);
    CHECK_INT(age, 1000);
    CHECK(known.has_auth && known.auth_allowed && !known.auth_verified_here);
    CHECK_INT(policy_calls, 1);
    CHECK_INT(outage_decide(o, &manifest, &known, &token, true, 2000, &age, &status), OUTAGE_SERVE);
    CHECK_INT(age, 100);
    CHECK(known.auth_verified_here);
    policy_answer = false;
    CHECK_INT(outage_decide(o, &manifest, &known, &yes, true, 2000, &age, &status), OUTAGE_FAIL);
    /* /v2/ needs no credential's answer: the policy alone. */
    struct policy_outage none = {0};
    CHECK_INT(outage_decide(o, &base, &none, &unknown, true, 2000, &age, &status), OUTAGE_FAIL);
    policy_answer = true;
    CHECK_INT(outage_decide(o, &base, &none, &unknown, true, 2000, &age, &status), OUTAGE_SERVE);
    outage_free(o);
}

int main(void)
{
    RUN(test_kept_in_order_as_hashes);
    RUN(test_slots_are_bounded_and_never_turn_a_no_into_a_yes);
    RUN(test_rules_no_policy_changes);
    return check_summary();
}
