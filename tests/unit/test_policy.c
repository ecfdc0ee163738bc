/*
 * test_policy.c: the Lua policy engine: the default policies called through C, drop-in
 * overrides, hooks that fail in every way (error, endless loop, memory hog, wrong type),
 * work the budget must see (finalizers, patterns that backtrack, loops inside C library
 * functions), reloads good and bad, the sandbox, and the rate limit of the logs.
 *
 * Fixture policies are in tests/data/policies ($CC_TEST_DATA, else tests/data from the
 * repository root). Time is injected: nothing here sleeps. What must never hang runs in
 * a child process with a time bound (finishes_within), so that a regression fails the
 * test instead of hanging the suite.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "base/config.h"
#include "base/log.h"
#include "lua/policy.h"
#include "base/json.h"

static char err[1024];
static char data_dir[PATH_MAX];
static double fake_now = 1795820400.5; /* 2026-11-27T23:00:00.5Z */

static double fake_clock(void *ud)
{
    return *(double *)ud;
}

/* ---- a config, as config_parse would leave it (only what the engine reads) -------------- */

static char *hosts_ab[] = {"https://a.example.com", "https://b.example.com"};
static struct config_upstream upstreams[] = {
    {.originhost = "https://dtr.example.com", .upstreamhosts = hosts_ab, .n_upstreamhosts = 2},
    {.originhost = "https://origin2.example.com"},
};
static struct log_field log_fields[] = {{"environment", "staging"}, {"msg", "x y"}};

static struct config test_config(void)
{
    struct config cfg = {0};

    cfg.has_blobttl = true;
    cfg.blobttl_ns = UINT64_C(86400000000000); /* 24h */
    cfg.upstreams = upstreams;
    cfg.n_upstreams = 2;
    cfg.storage_root = "/var/lib/registry";
    cfg.log_formatter = "text";
    cfg.log_fields = log_fields;
    cfg.n_log_fields = 2;
    return cfg;
}

static const char *fixture(const char *name)
{
    static char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/policies/%s", data_dir, name);
    return path;
}

/* An engine over the defaults and, when dropin is given, that fixture directory. */
static struct policy_engine *engine_with(struct config *cfg, const char *dropin)
{
    struct policy_engine *pe = NULL;
    int rc;

    cfg->policydir = dropin ? (char *)fixture(dropin) : NULL;
    rc = policy_engine_new(cfg, CC_POLICY_DIR, &pe, err, sizeof err);
    cfg->policydir = NULL;
    CHECK_INT(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "policy_engine_new: %s\n", err);
        exit(1);
    }
    policy_engine_set_clock(pe, fake_clock, &fake_now);
    return pe;
}

/* ---- capturing stderr, to count log lines ------------------------------------------------- */

static int saved_stderr = -1;
static FILE *captured;

static void capture_begin(void)
{
    fflush(stderr);
    captured = tmpfile();
    saved_stderr = dup(STDERR_FILENO);
    dup2(fileno(captured), STDERR_FILENO);
}

/* Stops capturing; returns what was written (static buffer). */
static const char *capture_end(void)
{
    static char text[65536];
    size_t n;

    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    rewind(captured);
    n = fread(text, 1, sizeof text - 1, captured);
    text[n] = '\0';
    fclose(captured);
    return text;
}

static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Runs fn in a child process and waits for it at most `seconds`. True when the child ran
 * its checks without a failure and exited within the time; a child still running then is
 * killed (by its pid) and the failure says so.
 */
static bool finishes_within(void (*fn)(void), double seconds, const char *what)
{
    double deadline = seconds_now() + seconds;
    int status = 0;
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        int before = check_failures;
        fn();
        fflush(stdout);
        fflush(stderr);
        _exit(check_failures == before ? 0 : 1);
    }
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (seconds_now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "%s: still running after %.0f s (killed)\n", what, seconds);
            return false;
        }
        usleep(10000);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* ---- defaults through C ------------------------------------------------------------------ */

static void check_urls(char **urls, size_t n, const char *a, const char *b, const char *c)
{
    const char *want[] = {a, b, c};
    size_t n_want = c ? 3 : b ? 2 : 1;

    CHECK_INT(n, n_want);
    for (size_t i = 0; i < n && i < n_want; i++)
        CHECK_STR(urls[i], want[i]);
}

static void test_defaults_define_every_hook(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, NULL);

    for (int h = 0; h < POLICY_HOOK_COUNT; h++) {
        CHECK(policy_has_hook(pe, (enum policy_hook)h));
        CHECK_INT(policy_error_count(pe, (enum policy_hook)h), 0);
    }
    CHECK_STR(policy_hook_name(POLICY_HOOK_SELECT_UPSTREAM), "select_upstream");
    CHECK_STR(policy_hook_name(POLICY_HOOK_COUNT), "?");
    CHECK(policy_engine_memory(pe) > 0);
    CHECK(policy_engine_memory(pe) < POLICY_DEFAULT_MEMORY / 8);
    policy_engine_free(pe);
}

static void test_select_upstream_rotates_per_entry(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, NULL);
    struct policy_request req = {.method = "GET",
                                 .repository = "library/alpine",
                                 .reference = "sha256:abc",
                                 .digest = "sha256:abc",
                                 .kind = "blob"};
    const char *a = "https://a.example.com", *b = "https://b.example.com";
    const char *origin = "https://dtr.example.com";
    char **urls;
    size_t n;

    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, a, b, origin);
    policy_free_list(urls, n);

    /* The second entry has no upstreamhosts, and its calls do not move the first's cursor. */
    CHECK_INT(policy_select_upstream(pe, &req, 1, &urls, &n), 0);
    check_urls(urls, n, "https://origin2.example.com", NULL, NULL);
    policy_free_list(urls, n);

    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, b, a, origin);
    policy_free_list(urls, n);
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, a, b, origin);
    policy_free_list(urls, n);

    CHECK_INT(policy_select_upstream(pe, &req, 2, &urls, &n), -ERANGE);
    CHECK(urls == NULL && n == 0);
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_SELECT_UPSTREAM), 0);
    policy_engine_free(pe);
}

static void test_blob_ttl_from_config(void)
{
    struct config cfg = test_config();
    const char *repos[] = {"library/alpine"};
    struct policy_blob blob = {.digest = "sha256:abc",
                               .size = 10,
                               .last_pulled = 1795820000,
                               .repositories = repos,
                               .n_repositories = 1};
    struct policy_engine *pe = engine_with(&cfg, NULL);
    bool has_ttl = false;
    double ttl = -1;

    CHECK_INT(policy_blob_ttl(pe, &blob, &has_ttl, &ttl), 0);
    CHECK(has_ttl);
    CHECK(ttl == 86400);
    policy_engine_free(pe);

    cfg.blobttl_ns = UINT64_C(1500000000); /* 1500ms: a fraction of a second */
    pe = engine_with(&cfg, NULL);
    CHECK_INT(policy_blob_ttl(pe, &blob, &has_ttl, &ttl), 0);
    CHECK(has_ttl && ttl == 1.5);
    policy_engine_free(pe);

    cfg.has_blobttl = false;
    pe = engine_with(&cfg, NULL);
    CHECK_INT(policy_blob_ttl(pe, &blob, &has_ttl, &ttl), 0);
    CHECK(!has_ttl);
    CHECK(ttl == 0);
    policy_engine_free(pe);
}

static struct log_access_entry sample_entry(void)
{
    struct log_access_entry e = {
        .time = 1795820400.123,
        .method = "GET",
        .uri = "/v2/library/alpine/blobs/sha256:abc",
        .repository = "library/alpine",
        .digest = "sha256:abc",
        .status = 200,
        .bytes = 3401,
        .duration_ms = 1.234,
        .cache = "hit",
        .upstream = "https://a.example.com",
        .remote_addr = "10.0.0.7:51234",
        .user_agent = "docker/24.0.7 go/go1.20",
    };
    return e;
}

static void test_format_log_text(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, NULL);
    struct log_access_entry e = sample_entry();
    char line[LOG_LINE_MAX], small[16];
    size_t n;

    CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
    CHECK_STR(line, "time=\"2026-11-27T23:00:00.123Z\" level=info msg=\"response completed\" "
                    "environment=staging fields.msg=\"x y\" http.request.method=GET "
                    "http.request.uri=/v2/library/alpine/blobs/sha256:abc "
                    "http.request.remoteaddr=10.0.0.7:51234 "
                    "http.request.useragent=\"docker/24.0.7 go/go1.20\" vars.name=library/alpine "
                    "vars.digest=sha256:abc http.response.status=200 http.response.written=3401 "
                    "http.response.duration=1.234ms cache=hit upstream=https://a.example.com");
    CHECK_INT(n, strlen(line));

    /* Missing values are left out; no time means cache.now(). */
    struct log_access_entry bare = {
        .method = "HEAD", .uri = "/v2/", .status = 401, .duration_ms = -1};
    CHECK_INT(policy_format_log(pe, &bare, line, sizeof line, &n), 0);
    CHECK_STR(line, "time=\"2026-11-27T23:00:00.500Z\" level=info msg=\"response completed\" "
                    "environment=staging fields.msg=\"x y\" http.request.method=HEAD "
                    "http.request.uri=/v2/ http.response.status=401 http.response.written=0");

    /* A short buffer gets the start of the line. */
    CHECK_INT(policy_format_log(pe, &e, small, sizeof small, &n), 0);
    CHECK_STR(small, "time=\"2026-11-2");
    CHECK_INT(n, 15);
    policy_engine_free(pe);
}

/* Values a client controls, for the escaping checks. */
static const char *const hostile[] = {
    "x\nlevel=error msg=forged",
    "say \"hi\" \\ bye",
    "\x01\x7f\x1b[31m",
    "tab\there\r",
    "caf\xc3\xa9",
    "\xff\xfe",
    "\xe2\x80\xa8",
    "\xc2\x85",
    "\xed\xa0\x80",
    "\xf4\x90\x80\x80",
    "\xe0\x80\x80",
    "",
    "\xf0\x9f\x90\xb3 whale",
    "trunc\xe2\x82",
};

static void test_format_log_escapes_as_core_log(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, NULL);
    struct log_access_entry e = sample_entry();
    char line[LOG_LINE_MAX], want[4096], escaped[4096];
    size_t n, pos;

    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        e.user_agent = hostile[i];
        CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
        pos = 0;
        CHECK_INT(log_append_kv(want, sizeof want, &pos, "http.request.useragent", hostile[i],
                                strlen(hostile[i])),
                  0);
        CHECK_CONTAINS(line, want);
        CHECK(strchr(line, '\n') == NULL);
        CHECK_INT(count_lines_with(line, " level="), 1);
    }
    policy_engine_free(pe);

    cfg.log_formatter = "json";
    pe = engine_with(&cfg, NULL);
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        e.user_agent = hostile[i];
        CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
        CHECK(json_escape(hostile[i], strlen(hostile[i]), escaped, sizeof escaped) >= 0);
        snprintf(want, sizeof want, "\"http.request.useragent\":\"%s\"", escaped);
        CHECK_CONTAINS(line, want);
        CHECK(line[0] == '{' && line[n - 1] == '}');
        for (size_t j = 0; j < n; j++)
            CHECK((unsigned char)line[j] >= 0x20 && line[j] != 0x7f);
    }
    policy_engine_free(pe);
}

/*
 * The core formats access lines itself while the built-in format_log is in force
 * (log_format_access): the two must agree byte for byte, in both formats, with the
 * config's fields, hostile values and missing fields.
 */
static void test_format_log_c_twin(void)
{
    static const char *const formatters[] = {"text", "json"};
    /* With the C side's integer rounding put to the test: halfway cases (2.0000005 ms,
     * 1234.5675 ms), what rounds to nothing or to the next unit, a NaN. */
    static const double durations[] = {1.234,       0,         999.9999,     1000, 2500.5,
                                       73000.25,    2.0000005, 1234.5675,    5e-7, 0.1214,
                                       999.9999996, 1e10,      1000.0000005, NAN,  -1};
    for (size_t f = 0; f < 2; f++) {
        struct config cfg = test_config();
        cfg.log_formatter = (char *)formatters[f];
        struct log_options log_opts = config_log_options(&cfg);
        log_configure(&log_opts);
        struct policy_engine *pe = engine_with(&cfg, NULL);
        CHECK(policy_hook_is_builtin(pe, POLICY_HOOK_FORMAT_LOG));
        CHECK(policy_hook_is_shipped(pe, POLICY_HOOK_FORMAT_LOG));
        struct log_access_entry e = sample_entry();
        char lua[LOG_LINE_MAX], c[LOG_LINE_MAX];
        size_t n;
        const size_t n_hostile = sizeof hostile / sizeof hostile[0];
        const size_t n_durations = sizeof durations / sizeof durations[0];
        for (size_t i = 0; i < n_hostile || i < n_durations; i++) {
            e.user_agent = hostile[i % n_hostile];
            e.error = i % 2 ? hostile[i % n_hostile] : NULL;
            e.incomplete = i % 5 == 1;
            e.stale = i % 3 == 2;
            e.stale_age_s = (uint64_t)i * 7919;
            e.cache = i % 3 ? "miss" : NULL;
            e.duration_ms = durations[i % n_durations];
            e.status = i % 4 ? 200 : 0;
            e.time = 1795820400.0 + (double)i * 0.0317;
            CHECK_INT(policy_format_log(pe, &e, lua, sizeof lua, &n), 0);
            size_t cn = log_format_access(&e, c, sizeof c);
            CHECK_INT(cn, n);
            CHECK_STR(c, lua);
        }
        policy_engine_free(pe);
    }
    log_configure(NULL);
    /* A drop-in that replaces format_log is not the built-in one. */
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "override");
    CHECK(!policy_hook_is_builtin(pe, POLICY_HOOK_FORMAT_LOG));
    CHECK(!policy_hook_is_builtin(pe, POLICY_HOOK_SELECT_UPSTREAM));
    CHECK(policy_hook_is_builtin(pe, POLICY_HOOK_EVICT));
    policy_engine_free(pe);
}

static void test_format_log_json(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe;
    struct log_access_entry e = sample_entry();
    char line[LOG_LINE_MAX];
    size_t n;

    cfg.log_formatter = "json";
    cfg.n_log_fields = 1;
    pe = engine_with(&cfg, NULL);
    CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
    CHECK_STR(line, "{\"time\":\"2026-11-27T23:00:00.123Z\",\"level\":\"info\","
                    "\"msg\":\"response completed\",\"environment\":\"staging\","
                    "\"http.request.method\":\"GET\","
                    "\"http.request.uri\":\"/v2/library/alpine/blobs/sha256:abc\","
                    "\"http.request.remoteaddr\":\"10.0.0.7:51234\","
                    "\"http.request.useragent\":\"docker/24.0.7 go/go1.20\","
                    "\"vars.name\":\"library/alpine\",\"vars.digest\":\"sha256:abc\","
                    "\"http.response.status\":200,\"http.response.written\":3401,"
                    "\"http.response.duration\":\"1.234ms\",\"cache\":\"hit\","
                    "\"upstream\":\"https://a.example.com\"}");
    policy_engine_free(pe);
}

static void test_evict_least_recently_pulled(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, NULL);
    struct policy_blob cands[] = {
        {.digest = "sha256:1", .size = 100, .last_pulled = 40},
        {.digest = "sha256:2", .size = 100, .last_pulled = 10},
        {.digest = "sha256:3", .size = 100, .last_pulled = 30},
        {.digest = "sha256:4", .size = 100, .last_pulled = 20},
    };
    size_t *victims, n;

    CHECK_INT(policy_evict(pe, cands, 4, 150, &victims, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_INT(victims[0], 1);
        CHECK_INT(victims[1], 3);
    }
    free(victims);

    CHECK_INT(policy_evict(pe, cands, 4, 0, &victims, &n), 0);
    CHECK_INT(n, 0);
    CHECK(victims == NULL);
    CHECK_INT(policy_evict(pe, cands, 4, 10000, &victims, &n), 0);
    CHECK_INT(n, 4);
    free(victims);
    CHECK_INT(policy_evict(pe, NULL, 0, 10, &victims, &n), 0);
    CHECK_INT(n, 0);
    policy_engine_free(pe);
}

/* ---- drop-ins ------------------------------------------------------------------------------ */

static void test_dropin_overrides_by_name_order(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "override");
    struct policy_request req = {.method = "GET", .repository = "library/alpine", .kind = "blob"};
    struct policy_blob blob = {.digest = "sha256:abc", .size = 1, .last_pulled = 1};
    struct policy_blob cands[] = {{.digest = "sha256:new", .size = 5, .last_pulled = 20},
                                  {.digest = "sha256:old", .size = 5, .last_pulled = 10}};
    struct log_access_entry e = sample_entry();
    char line[256], **urls;
    size_t n, *victims;
    bool has_ttl;
    double ttl;

    /* 10-ttl.lua and 20-ttl-and-log.lua both define blob_ttl: the later name wins. */
    CHECK_INT(policy_blob_ttl(pe, &blob, &has_ttl, &ttl), 0);
    CHECK(has_ttl && ttl == 120);
    CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
    CHECK_STR(line, "custom GET /v2/library/alpine/blobs/sha256:abc");
    /* 30-origin-first.lua uses a module from its lib/ subdirectory. */
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, "https://dtr.example.com", "https://a.example.com",
               "https://b.example.com");
    policy_free_list(urls, n);
    /* No drop-in defines evict: the default stays. */
    CHECK_INT(policy_evict(pe, cands, 2, 1, &victims, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1) CHECK_INT(victims[0], 1);
    free(victims);
    policy_engine_free(pe);
}

/* ---- failing hooks --------------------------------------------------------------------------- */

/* blob_ttl of the misbehaving policy for a blob whose digest says how to fail. */
static int ttl_of(struct policy_engine *pe, const char *how, double *ttl)
{
    struct policy_blob blob = {.digest = how, .size = 1, .last_pulled = 1};
    bool has_ttl;
    int rc = policy_blob_ttl(pe, &blob, &has_ttl, ttl);
    if (rc != 0) CHECK(!has_ttl);
    return rc;
}

static void test_failing_hooks_fall_back_and_count(void)
{
    static const struct {
        const char *how;
        int rc;
    } cases[] = {
        {"error", -EIO},        {"loop", -ETIMEDOUT}, {"pcall-loop", -ETIMEDOUT}, {"hog", -ENOMEM},
        {"bigstring", -ENOMEM}, {"wrong", -EINVAL},   {"negative", -EINVAL},
    };
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "misbehaving");
    size_t baseline = policy_engine_memory(pe);
    double ttl;

    capture_begin();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_INT(ttl_of(pe, cases[i].how, &ttl), cases[i].rc);
        CHECK_INT(policy_error_count(pe, POLICY_HOOK_BLOB_TTL), i + 1);
        /* The engine still answers the next good call. */
        CHECK_INT(ttl_of(pe, "fine", &ttl), 0);
        CHECK(ttl == 42);
        CHECK_INT(policy_error_count(pe, POLICY_HOOK_BLOB_TTL), i + 1);
    }
    const char *log = capture_end();
    /* One line for the first failure; the others came within POLICY_LOG_INTERVAL. */
    CHECK_INT(count_lines_with(log, "policy: blob_ttl failed"), 1);
    CHECK_CONTAINS(log, "10-misbehave.lua:4: policy bug");
    CHECK_CONTAINS(log, "stack traceback");
    /* After the memory cap the state was collected back to about where it was. */
    CHECK(policy_engine_memory(pe) < baseline + (1u << 20));
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_SELECT_UPSTREAM), 0);
    policy_engine_free(pe);
}

static void test_failing_hooks_of_every_kind(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "misbehaving");
    struct policy_request req = {.method = "GET", .kind = "blob"};
    struct log_access_entry e = {.method = "wrong"};
    struct policy_blob cands[] = {{.digest = "sha256:a", .size = 1},
                                  {.digest = "sha256:b", .size = 1},
                                  {.digest = NULL, .size = 1}};
    char line[64], **urls;
    size_t n, *victims;
    const char *bad[] = {"wrong", "empty", "number", "loop"};
    const int bad_rc[] = {-EINVAL, -EINVAL, -EINVAL, -ETIMEDOUT};

    capture_begin();
    for (size_t i = 0; i < 4; i++) {
        req.repository = bad[i];
        CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), bad_rc[i]);
        CHECK(urls == NULL && n == 0);
    }
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_SELECT_UPSTREAM), 4);
    req.repository = "fine";
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, "https://dtr.example.com", NULL, NULL);
    policy_free_list(urls, n);

    CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), -EINVAL);
    CHECK_STR(line, "");
    e.method = "GET";
    CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
    CHECK_STR(line, "ok GET");
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_FORMAT_LOG), 1);

    /* evict: numbers are a wrong type; unknown and repeated digests are dropped. */
    CHECK_INT(policy_evict(pe, cands, 3, 1, &victims, &n), -EINVAL);
    CHECK(victims == NULL);
    CHECK_INT(policy_evict(pe, cands, 3, 2, &victims, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_INT(victims[0], 1);
        CHECK_INT(victims[1], 0);
    }
    free(victims);
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_EVICT), 1);
    const char *log = capture_end();
    CHECK_CONTAINS(log, "neither the originhost nor an upstreamhost");
    CHECK_CONTAINS(log, "format_log returned a table, expected a string");
    CHECK_CONTAINS(log, "evict returned a list whose item 1 is a number");
    policy_engine_free(pe);
}

static void test_failure_log_is_rate_limited(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "misbehaving");
    double ttl, start = fake_now;

    capture_begin();
    for (int i = 0; i < 5; i++)
        CHECK_INT(ttl_of(pe, "error", &ttl), -EIO);
    fake_now += POLICY_LOG_INTERVAL - 0.5;
    CHECK_INT(ttl_of(pe, "error", &ttl), -EIO);
    fake_now += 1;
    CHECK_INT(ttl_of(pe, "error", &ttl), -EIO);
    const char *log = capture_end();
    CHECK_INT(count_lines_with(log, "policy: blob_ttl failed"), 2);
    CHECK_CONTAINS(log, "(and 5 more failures not logged)");
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_BLOB_TTL), 7);
    fake_now = start;
    policy_engine_free(pe);
}

static void test_limits_are_settable(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, NULL);
    struct policy_blob cands[64];
    struct policy_request req = {.method = "GET", .kind = "blob"};
    char digests[64][16], **urls;
    size_t n, *victims;

    /* 10 instructions are not enough to build a list of three URLs. */
    policy_engine_set_limits(pe, 10, 0);
    capture_begin();
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), -ETIMEDOUT);
    /* A cap below what the state holds refuses the next allocation. */
    policy_engine_set_limits(pe, 0, policy_engine_memory(pe));
    for (int i = 0; i < 64; i++) {
        snprintf(digests[i], sizeof digests[i], "sha256:%02d", i);
        cands[i] = (struct policy_blob){.digest = digests[i], .size = 1, .last_pulled = i};
    }
    CHECK_INT(policy_evict(pe, cands, 64, 1, &victims, &n), -ENOMEM);
    capture_end();
    policy_engine_set_limits(pe, 0, 0);
    CHECK_INT(policy_evict(pe, cands, 64, 2, &victims, &n), 0);
    CHECK_INT(n, 2);
    free(victims);
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    policy_free_list(urls, n);
    policy_engine_free(pe);
}

/* ---- loading and reloading --------------------------------------------------------------------
 */

static void test_broken_files_do_not_load(void)
{
    static const struct {
        const char *dir, *where, *what;
    } cases[] = {
        {"broken-syntax", "10-bad.lua:4:", "near 'end'"},
        {"broken-return", "10-number.lua:4:", "must return a table of hooks, not number"},
        {"broken-hook", "10-hook.lua:", "hook 'blob_ttl' is a number, expected a function"},
    };
    struct config cfg = test_config();
    struct policy_engine *pe = NULL;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg.policydir = (char *)fixture(cases[i].dir);
        CHECK_INT(policy_engine_new(&cfg, CC_POLICY_DIR, &pe, err, sizeof err), -EINVAL);
        CHECK(pe == NULL);
        CHECK_CONTAINS(err, cases[i].where);
        CHECK_CONTAINS(err, cases[i].what);
        CHECK(strchr(err, '\n') == NULL);
    }
    cfg.policydir = (char *)fixture("no-such-dir");
    CHECK_INT(policy_engine_new(&cfg, CC_POLICY_DIR, &pe, err, sizeof err), -ENOENT);
    CHECK_CONTAINS(err, "no-such-dir");
    cfg.policydir = NULL;
    CHECK_INT(policy_engine_new(&cfg, "/nonexistent", &pe, err, sizeof err), -ENOENT);
    CHECK_CONTAINS(err, "no default.lua in /nonexistent");
    CHECK_INT(policy_engine_new(NULL, CC_POLICY_DIR, &pe, err, sizeof err), 0);
    policy_engine_free(pe);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (f == NULL) return;
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static double ttl_now(struct policy_engine *pe)
{
    struct policy_blob blob = {.digest = "sha256:abc", .size = 1, .last_pulled = 1};
    bool has_ttl = false;
    double ttl = -1;

    CHECK_INT(policy_blob_ttl(pe, &blob, &has_ttl, &ttl), 0);
    return has_ttl ? ttl : -1;
}

static void test_reload_swaps_only_good_states(void)
{
    char dir[] = "/tmp/test_policy.XXXXXX";
    struct config cfg = test_config();
    struct policy_engine *pe = NULL;
    struct policy_request req = {.method = "GET", .kind = "blob"};
    char **urls;
    size_t n;

    CHECK(mkdtemp(dir) != NULL);
    write_file(dir, "10-ttl.lua", "return { blob_ttl = function() return 1 end }\n");
    cfg.policydir = dir;
    CHECK_INT(policy_engine_new(&cfg, CC_POLICY_DIR, &pe, err, sizeof err), 0);
    cfg.policydir = NULL;
    if (pe == NULL) return;
    CHECK(ttl_now(pe) == 1);

    /* Advance the round-robin cursor; a failed reload keeps it, a good one resets it. */
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    policy_free_list(urls, n);

    write_file(dir, "10-ttl.lua", "return {\n  blob_ttl = function() return 2 end\n  oops\n}\n");
    CHECK_INT(policy_engine_reload(pe, NULL, err, sizeof err), -EINVAL);
    CHECK_CONTAINS(err, "10-ttl.lua:3:");
    CHECK(ttl_now(pe) == 1);
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, "https://b.example.com", "https://a.example.com",
               "https://dtr.example.com");
    policy_free_list(urls, n);

    write_file(dir, "10-ttl.lua", "return { blob_ttl = function() return 2 end }\n");
    write_file(dir, "20-runtime.lua", "local x = nil\nreturn { evict = x.y }\n");
    CHECK_INT(policy_engine_reload(pe, NULL, err, sizeof err), -EINVAL);
    CHECK_CONTAINS(err, "20-runtime.lua:2: attempt to index a nil value");
    CHECK(ttl_now(pe) == 1);
    write_file(dir, "20-runtime.lua", "while true do end\n");
    CHECK_INT(policy_engine_reload(pe, NULL, err, sizeof err), -EINVAL);
    CHECK_CONTAINS(err, "instruction budget exceeded");
    remove_file(dir, "20-runtime.lua");

    CHECK_INT(policy_engine_reload(pe, NULL, err, sizeof err), 0);
    CHECK(ttl_now(pe) == 2);
    CHECK_INT(policy_select_upstream(pe, &req, 0, &urls, &n), 0);
    check_urls(urls, n, "https://a.example.com", "https://b.example.com",
               "https://dtr.example.com");
    policy_free_list(urls, n);

    /* A reload with a new config: the defaults see it (and the drop-in dir it names). */
    remove_file(dir, "10-ttl.lua");
    cfg.blobttl_ns = UINT64_C(3600000000000);
    cfg.policydir = dir;
    CHECK_INT(policy_engine_reload(pe, &cfg, err, sizeof err), 0);
    cfg.policydir = NULL;
    CHECK(ttl_now(pe) == 3600);
    CHECK_INT(policy_engine_reload(pe, NULL, err, sizeof err), 0);
    CHECK(ttl_now(pe) == 3600);
    policy_engine_free(pe);
    rmdir(dir);
}

/* ---- work the budget must see ---------------------------------------------------------------- */

static void finalizer_routes(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "finalizers");
    double ttl;

    capture_begin();
    /* setmetatable refuses __gc, even false (a function could be put there later). */
    CHECK_INT(ttl_of(pe, "gc", &ttl), -EIO);
    CHECK_INT(ttl_of(pe, "gc-false", &ttl), -EIO);
    /* __gc added after setmetatable: the table is collected and nothing runs. */
    CHECK_INT(ttl_of(pe, "gc-later", &ttl), 0);
    CHECK(ttl == 7);
    CHECK_INT(ttl_of(pe, "gc-pcall", &ttl), 0);
    CHECK(ttl == 8);
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_BLOB_TTL), 2);
    const char *log = capture_end();
    CHECK_CONTAINS(log, "10-finalizers.lua:13: bad argument #2 to 'setmetatable' (a metatable "
                        "with __gc is not allowed in a policy");
    policy_engine_free(pe);
}

/* A looping finalizer ran with hooks off: in collectgarbage() the call never returned. */
static void test_finalizers_never_run_policy_code(void)
{
    CHECK(finishes_within(finalizer_routes, 30, "finalizer routes"));
}

static char finalizer_dir[64];

static void reload_with_global_finalizer(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = NULL;
    char reload_err[1024];

    write_file(finalizer_dir, "10-ttl.lua", "return { blob_ttl = function() return 1 end }\n");
    cfg.policydir = finalizer_dir;
    CHECK_INT(policy_engine_new(&cfg, CC_POLICY_DIR, &pe, err, sizeof err), 0);
    if (pe == NULL) return;
    /* A finalizer kept in a global would run in lua_close, at the next reload. */
    write_file(finalizer_dir, "20-keep.lua",
               "KEEP = setmetatable({}, { __gc = function() while true do end end })\n"
               "return {}\n");
    CHECK_INT(policy_engine_reload(pe, NULL, reload_err, sizeof reload_err), -EINVAL);
    CHECK_CONTAINS(reload_err, "20-keep.lua:1: bad argument #2 to 'setmetatable'");
    CHECK(ttl_now(pe) == 1);
    remove_file(finalizer_dir, "20-keep.lua");
    write_file(finalizer_dir, "10-ttl.lua", "return { blob_ttl = function() return 2 end }\n");
    CHECK_INT(policy_engine_reload(pe, NULL, reload_err, sizeof reload_err), 0);
    CHECK(ttl_now(pe) == 2);
    policy_engine_free(pe);
}

/* The file that keeps a finalizer does not load, so no reload or free can hang on it. */
static void test_reload_never_runs_a_finalizer(void)
{
    snprintf(finalizer_dir, sizeof finalizer_dir, "/tmp/test_policy.XXXXXX");
    CHECK(mkdtemp(finalizer_dir) != NULL);
    CHECK(finishes_within(reload_with_global_finalizer, 30, "reload with a global finalizer"));
    remove_file(finalizer_dir, "10-ttl.lua");
    remove_file(finalizer_dir, "20-keep.lua");
    rmdir(finalizer_dir);
}

static void c_work_is_charged(void)
{
    static const char *const heavy[] = {"find",      "match", "gmatch", "gsub",       "pcall-find",
                                        "rep-empty", "move",  "insert", "concat-loop"};
    const size_t n = sizeof heavy / sizeof heavy[0];
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "c-work");
    double ttl, start, slowest = 0, clock_start = fake_now;

    capture_begin();
    for (size_t i = 0; i < n; i++) {
        fake_now += POLICY_LOG_INTERVAL; /* every failure is logged */
        start = seconds_now();
        CHECK_INT(ttl_of(pe, heavy[i], &ttl), -ETIMEDOUT);
        if (seconds_now() - start > slowest) slowest = seconds_now() - start;
        /* The next call is served as usual. */
        CHECK_INT(ttl_of(pe, "fine", &ttl), 0);
        CHECK(ttl == 10999);
    }
    const char *log = capture_end();
    fake_now = clock_start;
    CHECK_CONTAINS(log, "10-c-work.lua:10: instruction budget exceeded");
    CHECK_INT(policy_error_count(pe, POLICY_HOOK_BLOB_TTL), n);
    /* Each was stopped by its steps (1M: a few ms, a few hundred under ASan), none by
     * the deadline (1 s). */
    CHECK_INT(count_lines_with(log, "instruction budget exceeded"), n);
    CHECK(strstr(log, "deadline") == NULL);
    printf("  work in C: the slowest of %zu cases was stopped after %.1f ms\n", n, slowest * 1e3);
    CHECK(slowest < 2.0);
    policy_engine_free(pe);
}

/* Backtracking patterns took from seconds to hours, string.rep("", huge) and table.move
 * of 2^40 elements looped forever: none of that was an instruction. */
static void test_work_in_c_is_charged(void)
{
    CHECK(finishes_within(c_work_is_charged, 60, "work in C"));
}

/* Work that no step counts (comparing two strings of 4 MB, again and again: each
 * comparison is one instruction) runs into the call's deadline. */
static void test_deadline_stops_what_steps_miss(void)
{
    char dir[] = "/tmp/test_policy.XXXXXX";
    struct config cfg = test_config();
    struct policy_engine *pe = NULL;
    double ttl, start;

    CHECK(mkdtemp(dir) != NULL);
    write_file(dir, "10-compare.lua",
               "return { blob_ttl = function()\n"
               "  local chunk = ('x'):rep(1024)\n"
               "  local a, b = chunk:rep(4000), chunk:rep(3999) .. chunk\n"
               "  while a == b do end\n"
               "end }\n");
    cfg.policydir = dir;
    CHECK_INT(policy_engine_new(&cfg, CC_POLICY_DIR, &pe, err, sizeof err), 0);
    cfg.policydir = NULL;
    if (pe == NULL) return;
    capture_begin();
    start = seconds_now();
    CHECK_INT(ttl_of(pe, "x", &ttl), -ETIMEDOUT);
    double took = seconds_now() - start;
    const char *log = capture_end();
    CHECK_CONTAINS(log, "the call ran past its deadline of 1000 ms");
    printf("  a loop of 4 MB string comparisons: stopped by the deadline after %.2f s\n", took);
    CHECK(took >= 1.0 && took < 3.0);
    policy_engine_free(pe);
    remove_file(dir, "10-compare.lua");
    rmdir(dir);
}

/* ---- the sandbox
 * --------------------------------------------------------------------------------- */

static void test_sandbox(void)
{
    struct config cfg = test_config();
    struct policy_engine *pe = engine_with(&cfg, "sandbox");
    struct log_access_entry e = {.method = "GET"};
    char line[1024];
    size_t n;

    CHECK_INT(policy_format_log(pe, &e, line, sizeof line, &n), 0);
    CHECK_STR(line, "io=nil os=nil debug=nil package=nil coroutine=nil dofile=nil loadfile=nil "
                    "dump=nil binary=false text=2 outside=false dotdot=false slash=false "
                    "builtin=function same=true cache_module=true config_write=false "
                    "nested_write=false cache_write=false pairs_write=false "
                    "nested_pairs_write=false rawset_cache=false rawset_config=false "
                    "setmetatable_config=false keys=5 hosts=2 ttl=86400 "
                    "root=/var/lib/registry now=1795820400.5");
    policy_engine_free(pe);
}

static void test_script_log_is_rate_limited(void)
{
    char dir[] = "/tmp/test_policy.XXXXXX";
    struct config cfg = test_config();
    struct policy_engine *pe = NULL;
    double ttl, start = fake_now;

    CHECK(mkdtemp(dir) != NULL);
    write_file(dir, "10-chatty.lua",
               "return { blob_ttl = function(blob)\n"
               "  for i = 1, 30 do cache.log('info', 'line ' .. i .. '\\nforged') end\n"
               "  print('printed', 1, nil)\n"
               "  cache.log('loud', 'x')\n"
               "end }\n");
    cfg.policydir = dir;
    CHECK_INT(policy_engine_new(&cfg, CC_POLICY_DIR, &pe, err, sizeof err), 0);
    cfg.policydir = NULL;
    if (pe == NULL) return;
    policy_engine_set_clock(pe, fake_clock, &fake_now);

    capture_begin();
    CHECK_INT(ttl_of(pe, "x", &ttl), -EIO);
    fake_now += POLICY_LOG_INTERVAL;
    CHECK_INT(ttl_of(pe, "x", &ttl), -EIO);
    const char *log = capture_end();
    CHECK_INT(count_lines_with(log, "msg=\"policy: line "), 2 * POLICY_LOG_BURST);
    CHECK_CONTAINS(log, "policy: line 1\\nforged");
    CHECK_CONTAINS(log, "policy: 11 cache.log lines not written");
    CHECK_CONTAINS(log, "bad argument #1 to 'log'");
    CHECK_INT(count_lines_with(log, "printed"), 0);
    fake_now = start;
    policy_engine_free(pe);
    remove_file(dir, "10-chatty.lua");
    rmdir(dir);
}

int main(void)
{
    const char *env = getenv("CC_TEST_DATA");
    if (realpath(env ? env : "tests/data", data_dir) == NULL) {
        fprintf(stderr, "test data not found: set CC_TEST_DATA or run from the repository\n");
        return 1;
    }
    log_configure(NULL);

    RUN(test_defaults_define_every_hook);
    RUN(test_select_upstream_rotates_per_entry);
    RUN(test_blob_ttl_from_config);
    RUN(test_format_log_text);
    RUN(test_format_log_escapes_as_core_log);
    RUN(test_format_log_json);
    RUN(test_format_log_c_twin);
    RUN(test_evict_least_recently_pulled);
    RUN(test_dropin_overrides_by_name_order);
    RUN(test_failing_hooks_fall_back_and_count);
    RUN(test_failing_hooks_of_every_kind);
    RUN(test_failure_log_is_rate_limited);
    RUN(test_limits_are_settable);
    RUN(test_broken_files_do_not_load);
    RUN(test_reload_swaps_only_good_states);
    RUN(test_finalizers_never_run_policy_code);
    RUN(test_reload_never_runs_a_finalizer);
    RUN(test_work_in_c_is_charged);
    RUN(test_deadline_stops_what_steps_miss);
    RUN(test_sandbox);
    RUN(test_script_log_is_rate_limited);
    return check_summary();
}
