/*
 * test_config.c: the config.yml loader: values, defaults, every error with its line and
 * column, warnings, environment overrides, durations, and inputs that must not crash.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "base/config.h"

/* The deployment of the content cache document, lines 1 to 12; tests add from line 13. */
#define HEAD                                                                                       \
    "version: 0.1\n"                                                                               \
    "storage:\n"                                                                                   \
    "  delete:\n"                                                                                  \
    "    enabled: true\n"                                                                          \
    "  filesystem:\n"                                                                              \
    "    rootdirectory: /var/lib/registry\n"                                                       \
    "http:\n"                                                                                      \
    "  addr: :5000\n"                                                                              \
    "middleware:\n"                                                                                \
    "  registry:\n"                                                                                \
    "      - name: downstream\n"                                                                   \
    "        options:\n"

/* Two lines of upstreams, for after HEAD. */
#define UPSTREAMS                                                                                  \
    "          upstreams:\n"                                                                       \
    "            - originhost: https://dtr.example.com\n"

/* The document's config.yml, with dtr.example.com as the origin (17 lines). */
#define SEED                                                                                       \
    HEAD "          blobttl: 24h\n" UPSTREAMS "          cas:\n"                                   \
         "            - /certs/dtr-ca.pem\n"

/* A minimal downstream middleware section (6 lines), to end a config with. */
#define DOWNSTREAM                                                                                 \
    "middleware:\n"                                                                                \
    "  registry:\n"                                                                                \
    "    - name: downstream\n"                                                                     \
    "      options:\n"                                                                             \
    "        upstreams:\n"                                                                         \
    "          - originhost: https://dtr.example.com\n"

#define DURATION_EXPECTED "expected a positive integer with an optional unit (ns, us, ms, s, m, h)"

static char err[1024];

static int parse_env(const char *yaml, char *const *env, struct config **cfg)
{
    return config_parse("config.yml", yaml, strlen(yaml), env, cfg, err, sizeof(err));
}

static struct config *parse_ok_env(const char *yaml, char *const *env)
{
    struct config *cfg = NULL;
    int rc = parse_env(yaml, env, &cfg);
    if (rc != 0) {
        fprintf(stderr, "unexpected error %d: %s\n--- in ---\n%s---\n", rc, err, yaml);
        return NULL;
    }
    return cfg;
}

static struct config *parse_ok(const char *yaml)
{
    return parse_ok_env(yaml, NULL);
}

/*
 * Parses yaml, which must fail with -EINVAL and a message that starts with `prefix`
 * (e.g. "config.yml:13:20: middleware.registry[0].options.blobttl: ") and contains
 * `part`. Prints what happened when not.
 */
static bool fails_env(const char *yaml, char *const *env, const char *prefix, const char *part)
{
    struct config *cfg = (struct config *)&cfg; /* must be set to NULL */
    int rc = parse_env(yaml, env, &cfg);
    bool ok = rc == -EINVAL && cfg == NULL && strncmp(err, prefix, strlen(prefix)) == 0 &&
              strstr(err, part) != NULL;
    if (!ok) {
        fprintf(stderr, "expected -EINVAL \"%s...%s\", got %d \"%s\"\n--- in ---\n%s---\n", prefix,
                part, rc, rc ? err : "", yaml);
        if (rc == 0) config_free(cfg);
    }
    return ok;
}

static bool fails(const char *yaml, const char *prefix, const char *part)
{
    return fails_env(yaml, NULL, prefix, part);
}

/* Parses yaml, which must fail with exactly `message`. */
static bool fails_exactly(const char *yaml, char *const *env, const char *message)
{
    if (!fails_env(yaml, env, "", "")) return false;
    if (strcmp(err, message) != 0) {
        fprintf(stderr, "got      \"%s\"\nexpected \"%s\"\n", err, message);
        return false;
    }
    return true;
}

/* True when some warning of cfg contains `part`. */
static bool has_warning(const struct config *cfg, const char *part)
{
    for (size_t i = 0; i < cfg->n_warnings; i++)
        if (strstr(cfg->warnings[i], part)) return true;
    fprintf(stderr, "no warning contains \"%s\"; the %zu warnings are:\n", part, cfg->n_warnings);
    for (size_t i = 0; i < cfg->n_warnings; i++)
        fprintf(stderr, "  %s\n", cfg->warnings[i]);
    return false;
}

static const char *data_dir(void)
{
    const char *dir = getenv("CC_TEST_DATA");
    return dir ? dir : "tests/data";
}

/* ---- The document's example ------------------------------------------------------------ */

static void test_seed_example(void)
{
    struct config *cfg = parse_ok(SEED);
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    CHECK_STR(cfg->file, "config.yml");
    CHECK(cfg->delete_enabled);
    CHECK_STR(cfg->storage_root, "/var/lib/registry");
    CHECK_STR(cfg->http_addr, ":5000");
    CHECK(cfg->has_downstream);
    CHECK(cfg->has_blobttl);
    CHECK(cfg->blobttl_ns == 24ULL * 3600 * 1000000000);
    CHECK_INT(cfg->n_upstreams, 1);
    CHECK_STR(cfg->upstreams[0].originhost, "https://dtr.example.com");
    CHECK(cfg->upstreams[0].origin.tls);
    CHECK_STR(cfg->upstreams[0].origin.host, "dtr.example.com");
    CHECK_INT(cfg->upstreams[0].origin.port, 443);
    CHECK_STR(cfg->upstreams[0].origin.path, "");
    CHECK_INT(cfg->upstreams[0].n_upstreamhosts, 0);
    CHECK_INT(cfg->n_cas, 1);
    CHECK_STR(cfg->cas[0], "/certs/dtr-ca.pem");
    CHECK_INT(cfg->n_warnings, 0);
    /* Defaults for what the file does not say. */
    CHECK_STR(cfg->log_level, "info");
    CHECK_STR(cfg->log_formatter, "text");
    CHECK_STR(cfg->http_tls_minimumtls, "tls1.2");
    CHECK(cfg->http_host == NULL);
    CHECK(cfg->http_tls_certificate == NULL);
    CHECK(cfg->auth_token_realm == NULL);
    CHECK(cfg->policydir == NULL);
    CHECK(cfg->http_draintimeout_ns == 0);
    CHECK_INT(cfg->n_http_headers, 0);
    CHECK_INT(cfg->n_log_fields, 0);
    config_free(cfg);
}

/* examples/config.yml is the document's deployment: it must load, without warnings. */
static void test_example_file(void)
{
    char path[1024];
    struct config *cfg = NULL;
    snprintf(path, sizeof(path), "%s/../../examples/config.yml", data_dir());
    int rc = config_load(path, NULL, &cfg, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "%s\n", err);
    CHECK_INT(rc, 0);
    if (cfg == NULL) return;
    CHECK_STR(cfg->upstreams[0].originhost, "https://dtr.example.com");
    CHECK(cfg->blobttl_ns == 86400ULL * 1000000000);
    CHECK_STR(cfg->cas[0], "/certs/dtr-ca.pem");
    CHECK_INT(cfg->n_warnings, 0);
    config_free(cfg);
}

static void test_defaults(void)
{
    struct config *cfg = parse_ok("version: 0.1\n" DOWNSTREAM);
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    CHECK_STR(cfg->storage_root, "/var/lib/registry");
    CHECK_STR(cfg->http_addr, ":5000");
    CHECK_STR(cfg->log_level, "info");
    CHECK_STR(cfg->log_formatter, "text");
    CHECK(!cfg->delete_enabled);
    CHECK(!cfg->has_blobttl);
    CHECK_INT(cfg->n_cas, 0);
    CHECK_INT(cfg->n_warnings, 0);
    config_free(cfg);

    /* Null values and empty sections leave the defaults in place. */
    cfg = parse_ok("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory:\nhttp:\n"
                   "  addr: ~\nlog:\n" DOWNSTREAM);
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    CHECK_STR(cfg->storage_root, "/var/lib/registry");
    CHECK_STR(cfg->http_addr, ":5000");
    config_free(cfg);
}

/* Every key content-cache reads, with a value that is not the default. */
static void test_all_keys(void)
{
    struct config *cfg = parse_ok("version: \"0.1\"\n"
                                  "log:\n"
                                  "  level: DEBUG\n"
                                  "  formatter: json\n"
                                  "  fields:\n"
                                  "    service: cache\n"
                                  "    region: us\n"
                                  "    empty:\n"
                                  "storage:\n"
                                  "  filesystem:\n"
                                  "    rootdirectory: /srv/cache\n"
                                  "  delete:\n"
                                  "    enabled: yes\n"
                                  "http:\n"
                                  "  addr: 127.0.0.1:5443\n"
                                  "  host: https://cache.example.com:5443\n"
                                  "  secret: s3cret\n"
                                  "  draintimeout: 60s\n"
                                  "  headers:\n"
                                  "    X-Content-Type-Options: [nosniff]\n"
                                  "    Cache-Control:\n"
                                  "      - no-store\n"
                                  "      - \"max-age=0\"\n"
                                  "  tls:\n"
                                  "    certificate: /certs/cache.crt\n"
                                  "    key: /certs/cache.key\n"
                                  "    minimumtls: tls1.3\n"
                                  "  debug:\n"
                                  "    addr: localhost:5001\n"
                                  "auth:\n"
                                  "  token:\n"
                                  "    realm: https://auth.example.com/token\n"
                                  "    service: registry.example.com\n"
                                  "    issuer: auth.example.com\n"
                                  "    rootcertbundle: /certs/token.pem\n"
                                  "middleware:\n"
                                  "  registry:\n"
                                  "    - name: downstream\n"
                                  "      options:\n"
                                  "        blobttl: 90m\n"
                                  "        policydir: /etc/content-cache/policies\n"
                                  "        upstreams:\n"
                                  "          - originhost: https://origin.example.com/\n"
                                  "            upstreamhosts:\n"
                                  "              - https://cache-a.example.com:5000\n"
                                  "              - http://[fd00::7]:5000/mirror/\n"
                                  "          - originhost: http://10.1.2.3:8080\n"
                                  "        cas:\n"
                                  "          - /certs/a.pem\n"
                                  "          - /certs/b.pem\n");
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    CHECK_STR(cfg->log_level, "debug");
    CHECK_STR(cfg->log_formatter, "json");
    CHECK_INT(cfg->n_log_fields, 3);
    CHECK_STR(cfg->log_fields[0].key, "service");
    CHECK_STR(cfg->log_fields[0].value, "cache");
    CHECK_STR(cfg->log_fields[1].key, "region");
    CHECK_STR(cfg->log_fields[1].value, "us");
    CHECK_STR(cfg->log_fields[2].key, "empty");
    CHECK_STR(cfg->log_fields[2].value, "");
    CHECK_STR(cfg->storage_root, "/srv/cache");
    CHECK(cfg->delete_enabled);
    CHECK_STR(cfg->http_addr, "127.0.0.1:5443");
    CHECK_STR(cfg->http_host, "https://cache.example.com:5443");
    CHECK_STR(cfg->http_secret, "s3cret");
    CHECK(cfg->http_draintimeout_ns == 60ULL * 1000000000);
    CHECK_INT(cfg->n_http_headers, 2);
    CHECK_STR(cfg->http_headers[0].name, "X-Content-Type-Options");
    CHECK_INT(cfg->http_headers[0].n_values, 1);
    CHECK_STR(cfg->http_headers[0].values[0], "nosniff");
    CHECK_STR(cfg->http_headers[1].name, "Cache-Control");
    CHECK_INT(cfg->http_headers[1].n_values, 2);
    CHECK_STR(cfg->http_headers[1].values[0], "no-store");
    CHECK_STR(cfg->http_headers[1].values[1], "max-age=0");
    CHECK_STR(cfg->http_tls_certificate, "/certs/cache.crt");
    CHECK_STR(cfg->http_tls_key, "/certs/cache.key");
    CHECK_STR(cfg->http_tls_minimumtls, "tls1.3");
    CHECK_STR(cfg->http_debug_addr, "localhost:5001");
    CHECK_STR(cfg->auth_token_realm, "https://auth.example.com/token");
    CHECK_STR(cfg->auth_token_service, "registry.example.com");
    CHECK_STR(cfg->auth_token_issuer, "auth.example.com");
    CHECK_STR(cfg->auth_token_rootcertbundle, "/certs/token.pem");
    CHECK(cfg->blobttl_ns == 90ULL * 60 * 1000000000);
    CHECK_STR(cfg->policydir, "/etc/content-cache/policies");
    CHECK_INT(cfg->n_upstreams, 2);
    CHECK_STR(cfg->upstreams[0].originhost, "https://origin.example.com/");
    CHECK_STR(cfg->upstreams[0].origin.path, "");
    CHECK_INT(cfg->upstreams[0].n_upstreamhosts, 2);
    CHECK_STR(cfg->upstreams[0].upstreamhosts[0], "https://cache-a.example.com:5000");
    CHECK_STR(cfg->upstreams[0].upstream_urls[0].host, "cache-a.example.com");
    CHECK_INT(cfg->upstreams[0].upstream_urls[0].port, 5000);
    CHECK(cfg->upstreams[0].upstream_urls[0].tls);
    CHECK_STR(cfg->upstreams[0].upstreamhosts[1], "http://[fd00::7]:5000/mirror/");
    CHECK_STR(cfg->upstreams[0].upstream_urls[1].host, "fd00::7");
    CHECK_STR(cfg->upstreams[0].upstream_urls[1].path, "/mirror");
    CHECK(!cfg->upstreams[0].upstream_urls[1].tls);
    CHECK_STR(cfg->upstreams[1].originhost, "http://10.1.2.3:8080");
    CHECK_INT(cfg->upstreams[1].origin.port, 8080);
    CHECK_INT(cfg->upstreams[1].n_upstreamhosts, 0);
    CHECK_INT(cfg->n_cas, 2);
    CHECK_STR(cfg->cas[1], "/certs/b.pem");
    CHECK_INT(cfg->n_warnings, 0);
    config_free(cfg);
}

/* ---- Durations ------------------------------------------------------------------------- */

static void test_durations(void)
{
    static const struct {
        const char *text;
        int rc;
        uint64_t ns;
    } cases[] = {
        {"1", 0, 1},
        {"1000000000", 0, 1000000000},
        {"7ns", 0, 7},
        {"7us", 0, 7000},
        {"7ms", 0, 7000000},
        {"3s", 0, 3000000000},
        {"2m", 0, 120000000000},
        {"24h", 0, 86400000000000},
        {"007s", 0, 7000000000},
        {"18446744073709551615", 0, UINT64_MAX},
        {"18446744073709551615ns", 0, UINT64_MAX},
        {"18446744073709551us", 0, 18446744073709551000ULL},
        {"18446744073709ms", 0, 18446744073709000000ULL},
        {"18446744073s", 0, 18446744073000000000ULL},
        {"307445734m", 0, 307445734ULL * 60000000000},
        {"5124095h", 0, 5124095ULL * 3600000000000},
        {"0", -ERANGE, 0},
        {"0s", -ERANGE, 0},
        {"000h", -ERANGE, 0},
        {"18446744073709551616", -ERANGE, 0},
        {"18446744073709551616ns", -ERANGE, 0},
        {"99999999999999999999999999h", -ERANGE, 0},
        {"18446744073709552us", -ERANGE, 0},
        {"18446744074s", -ERANGE, 0},
        {"307445735m", -ERANGE, 0},
        {"5124096h", -ERANGE, 0},
        {"5124095576030432h", -ERANGE, 0},
        {"", -EINVAL, 0},
        {"-1", -EINVAL, 0},
        {"+1", -EINVAL, 0},
        {"1.5h", -EINVAL, 0},
        {".5h", -EINVAL, 0},
        {"1d", -EINVAL, 0},
        {"1H", -EINVAL, 0},
        {"1sec", -EINVAL, 0},
        {"1hh", -EINVAL, 0},
        {"1h30m", -EINVAL, 0},
        {"5 s", -EINVAL, 0},
        {" 1s", -EINVAL, 0},
        {"1s ", -EINVAL, 0},
        {"s", -EINVAL, 0},
        {"1e9", -EINVAL, 0},
        {"0x10", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t ns = 12345;
        int rc = config_parse_duration(cases[i].text, &ns);
        if (rc != cases[i].rc || (rc == 0 && ns != cases[i].ns) || (rc != 0 && ns != 12345))
            fprintf(stderr, "config_parse_duration(\"%s\") = %d, %" PRIu64 "\n", cases[i].text, rc,
                    ns);
        CHECK_INT(rc, cases[i].rc);
        if (rc == 0)
            CHECK(ns == cases[i].ns);
        else
            CHECK(ns == 12345); /* untouched on error */
    }
    uint64_t ns;
    CHECK_INT(config_parse_duration(NULL, &ns), -EINVAL);
}

/* blobttl errors in the file: line 13, column 20 is where the value starts. */
static void test_blobttl_errors(void)
{
    static const struct {
        const char *value;
        const char *got;
    } cases[] = {
        {"1.5h", "got \"1.5h\""},
        {"1d", "got \"1d\""},
        {"0", "got \"0\""},
        {"-1", "got \"-1\""},
        {"\"5 s\"", "got \"5 s\""},
        {"\" 1s\"", "got \" 1s\""},
        {"\"1s \"", "got \"1s \""},
        {"\"\"", "got \"\""},
        {"18446744073709551616", "got \"18446744073709551616\" (more than "
                                 "18446744073709551615ns, about 584 years)"},
        {"5124095576030432h", "got \"5124095576030432h\" (more than"},
        {"[24h]", "got a list"},
        {"{h: 24}", "got a map"},
    };
    char yaml[1024];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml), HEAD "          blobttl: %s\n" UPSTREAMS, cases[i].value);
        CHECK(fails(yaml,
                    "config.yml:13:20: middleware.registry[0].options.blobttl: " DURATION_EXPECTED
                    ", ",
                    cases[i].got));
    }
    /* The message of the issue, exactly. */
    CHECK(fails_exactly(HEAD "          blobttl: 1.5h\n" UPSTREAMS, NULL,
                        "config.yml:13:20: middleware.registry[0].options.blobttl: expected a "
                        "positive integer with an optional unit (ns, us, ms, s, m, h), got "
                        "\"1.5h\""));
    /* An unquoted integer is a plain scalar: nanoseconds. The maximum is fine. */
    struct config *cfg = parse_ok(HEAD "          blobttl: 18446744073709551615\n" UPSTREAMS);
    CHECK(cfg && cfg->blobttl_ns == UINT64_MAX);
    config_free(cfg);
    cfg = parse_ok(HEAD "          blobttl: 1000000000\n" UPSTREAMS);
    CHECK(cfg && cfg->blobttl_ns == 1000000000);
    config_free(cfg);
    cfg = parse_ok(HEAD "          blobttl:\n" UPSTREAMS); /* null: no blobttl */
    CHECK(cfg && !cfg->has_blobttl);
    config_free(cfg);
}

static void test_blobttl_needs_delete(void)
{
    static const char without[] = "version: 0.1\n"
                                  "middleware:\n"
                                  "  registry:\n"
                                  "    - name: downstream\n"
                                  "      options:\n"
                                  "        blobttl: 24h\n"
                                  "        upstreams:\n"
                                  "          - originhost: https://dtr.example.com\n";
    static const char message[] = "config.yml:6:18: middleware.registry[0].options.blobttl: "
                                  "blobttl requires storage.delete.enabled: true (expired blobs "
                                  "are deleted)";
    CHECK(fails_exactly(without, NULL, message));

    static const char disabled[] = "version: 0.1\n"
                                   "storage:\n"
                                   "  delete:\n"
                                   "    enabled: false\n"
                                   "middleware:\n"
                                   "  registry:\n"
                                   "    - name: downstream\n"
                                   "      options:\n"
                                   "        blobttl: 24h\n"
                                   "        upstreams:\n"
                                   "          - originhost: https://dtr.example.com\n";
    CHECK(fails(disabled, "config.yml:9:18: middleware.registry[0].options.blobttl: ",
                "blobttl requires storage.delete.enabled: true"));

    /* The check runs after the environment is read. */
    char *enable[] = {"REGISTRY_STORAGE_DELETE_ENABLED=true", NULL};
    struct config *cfg = parse_ok_env(disabled, enable);
    CHECK(cfg && cfg->delete_enabled && cfg->has_blobttl);
    config_free(cfg);
    char *disable[] = {"REGISTRY_STORAGE_DELETE_ENABLED=false", NULL};
    CHECK(fails_env(SEED, disable, "config.yml:13:20: middleware.registry[0].options.blobttl: ",
                    "requires storage.delete.enabled: true"));
}

/* ---- The downstream middleware ---------------------------------------------------------- */

static void test_upstreams_errors(void)
{
    CHECK(fails_exactly(HEAD "          upstreams: []\n", NULL,
                        "config.yml:13:22: middleware.registry[0].options.upstreams: expected a "
                        "non-empty list of upstreams, each with an originhost, got an empty list"));
    CHECK(fails(HEAD "          upstreams:\n",
                "config.yml:13:21: middleware.registry[0].options.upstreams: ", "got nothing"));
    CHECK(fails(HEAD "          upstreams: https://dtr.example.com\n",
                "config.yml:13:22: middleware.registry[0].options.upstreams: ",
                "got \"https://dtr.example.com\""));
    CHECK(fails(HEAD "          upstreams:\n            originhost: https://dtr.example.com\n",
                "config.yml:14:13: middleware.registry[0].options.upstreams: ", "got a map"));
    /* upstreams missing from the options, or no options at all */
    CHECK(fails_exactly(HEAD "          blobttl: 24h\n", NULL,
                        "config.yml:13:11: middleware.registry[0].options.upstreams: missing: "
                        "expected a non-empty list of upstreams, each with an originhost"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: downstream\n",
                "config.yml:4:7: middleware.registry[0].options.upstreams: missing", ""));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: downstream\n      options:\n",
                "config.yml:4:7: middleware.registry[0].options.upstreams: missing", ""));
    /* an upstream without originhost */
    CHECK(fails_exactly(HEAD "          upstreams:\n"
                             "            - upstreamhosts: [https://cache.example.com]\n",
                        NULL,
                        "config.yml:14:15: middleware.registry[0].options.upstreams[0].originhost: "
                        "missing: expected a fully qualified http or https URL"));
    CHECK(fails(HEAD "          upstreams:\n            - https://dtr.example.com\n",
                "config.yml:14:15: middleware.registry[0].options.upstreams[0]: ",
                "expected a map with originhost, got \"https://dtr.example.com\""));
    CHECK(fails(HEAD "          upstreams:\n            - originhost:\n",
                "config.yml:14:26: middleware.registry[0].options.upstreams[0].originhost: ",
                "expected a fully qualified http or https URL, got nothing"));
    CHECK(fails(HEAD "          upstreams:\n            - originhost: [https://a.example.com]\n",
                "config.yml:14:27: middleware.registry[0].options.upstreams[0].originhost: ",
                "got a list"));
}

static void test_url_errors(void)
{
    static const struct {
        const char *url;
        const char *why;
    } cases[] = {
        {"ftp://dtr.example.com", "unsupported scheme"},
        {"dtr.example.com", "missing scheme"},
        {"https://user:pw@dtr.example.com", "user information"},
        {"https://dtr.example.com/?x=1", "a query"},
        {"https://dtr.example.com:0", "bad port"},
        {"https://dtr.example.com:65536", "bad port"},
        {"\"https://dtr.example.com \"", "spaces"},
        {"https://", "empty host"},
    };
    char yaml[1024], part[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml), HEAD "          upstreams:\n            - originhost: %s\n",
                 cases[i].url);
        snprintf(part, sizeof(part), ": %s", cases[i].why);
        CHECK(fails(yaml,
                    "config.yml:14:27: middleware.registry[0].options.upstreams[0].originhost: "
                    "expected a fully qualified http or https URL, got \"",
                    part));
    }
    CHECK(fails_exactly(HEAD UPSTREAMS "              upstreamhosts:\n"
                                       "                - https://cache-a.example.com\n"
                                       "                - cache-b.example.com:5000\n",
                        NULL,
                        "config.yml:17:19: "
                        "middleware.registry[0].options.upstreams[0].upstreamhosts[1]: expected "
                        "a fully qualified http or https URL, got \"cache-b.example.com:5000\": "
                        "missing scheme: expected http:// or https://"));
    CHECK(fails(HEAD UPSTREAMS "              upstreamhosts: https://cache-a.example.com\n",
                "config.yml:15:30: middleware.registry[0].options.upstreams[0].upstreamhosts: ",
                "expected a list of URLs, got \"https://cache-a.example.com\""));
}

static void test_cas_and_policydir(void)
{
    CHECK(fails_exactly(HEAD UPSTREAMS "          cas:\n"
                                       "            - /certs/a.pem\n"
                                       "            - certs/dtr-ca.pem\n",
                        NULL,
                        "config.yml:17:15: middleware.registry[0].options.cas[1]: expected an "
                        "absolute path to a PEM CA certificate, got \"certs/dtr-ca.pem\""));
    CHECK(fails(HEAD UPSTREAMS "          cas: /certs/dtr-ca.pem\n",
                "config.yml:15:16: middleware.registry[0].options.cas: ",
                "expected a list of absolute paths to PEM CA certificates, got "
                "\"/certs/dtr-ca.pem\""));
    CHECK(fails(HEAD UPSTREAMS "          cas:\n            -\n",
                "config.yml:16:14: middleware.registry[0].options.cas[0]: ", "got nothing"));
    CHECK(fails(HEAD UPSTREAMS "          policydir: policies\n",
                "config.yml:15:22: middleware.registry[0].options.policydir: ",
                "expected an absolute directory path, got \"policies\""));
    CHECK(fails(HEAD UPSTREAMS "          policydir: [/a]\n",
                "config.yml:15:22: middleware.registry[0].options.policydir: ", "got a list"));
    struct config *cfg = parse_ok(HEAD UPSTREAMS "          cas: []\n          policydir: /p\n");
    CHECK(cfg && cfg->n_cas == 0 && strcmp(cfg->policydir, "/p") == 0);
    config_free(cfg);
}

/* Our extensions: diskbudget and upstreamtimeouts. */
static void test_diskbudget_and_timeouts(void)
{
    struct config *cfg = parse_ok(HEAD UPSTREAMS "          diskbudget:\n"
                                                 "            maxsize: 10GiB\n"
                                                 "            highwatermark: 95\n"
                                                 "          upstreamtimeouts:\n"
                                                 "            connect: 2s\n"
                                                 "            progress: 1500ms\n"
                                                 "            head: 45s\n");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK(cfg->has_budget);
        CHECK(cfg->budget_bytes == 10ULL << 30);
        CHECK_INT(cfg->budget_high_pct, 95);
        CHECK_INT(cfg->budget_low_pct, 80);
        CHECK_INT(cfg->upstream_connect_ms, 2000);
        CHECK_INT(cfg->upstream_progress_ms, 1500);
        CHECK_INT(cfg->upstream_head_ms, 45000);
    }
    config_free(cfg);
    cfg = parse_ok(HEAD UPSTREAMS "          upstreamtimeouts:\n"
                                  "            progress: 1h\n"
                                  "            retries: 3\n");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_INT(cfg->upstream_connect_ms, 0); /* unset: the pool's default */
        CHECK_INT(cfg->upstream_progress_ms, 3600000);
        CHECK_INT(cfg->upstream_head_ms, 0); /* unset: the pool's default */
        CHECK(has_warning(cfg, "upstreamtimeouts.retries"));
        CHECK(!cfg->has_budget);
    }
    config_free(cfg);
    CHECK(fails(HEAD UPSTREAMS "          upstreamtimeouts:\n            connect: 0\n",
                "config.yml:16:22: middleware.registry[0].options.upstreamtimeouts.connect: ",
                DURATION_EXPECTED ", from 1ms to 1h, got \"0\""));
    CHECK(fails(HEAD UPSTREAMS "          upstreamtimeouts:\n            progress: 2h\n",
                "config.yml:16:23: middleware.registry[0].options.upstreamtimeouts.progress: ",
                "from 1ms to 1h, got \"2h\""));
    CHECK(fails(HEAD UPSTREAMS "          upstreamtimeouts:\n            head: 0s\n",
                "config.yml:16:19: middleware.registry[0].options.upstreamtimeouts.head: ",
                "from 1ms to 1h"));
    CHECK(fails(HEAD UPSTREAMS "          upstreamtimeouts:\n            connect: 999us\n",
                "config.yml:16:22: ", "from 1ms to 1h"));
    CHECK(fails(HEAD UPSTREAMS "          upstreamtimeouts:\n            connect: 1.5s\n",
                "config.yml:16:22: ", DURATION_EXPECTED));
    CHECK(fails(HEAD UPSTREAMS "          upstreamtimeouts: 10s\n",
                "config.yml:15:29: middleware.registry[0].options.upstreamtimeouts: ",
                "expected a map with connect, progress and head"));
    CHECK(fails(HEAD UPSTREAMS "          diskbudget:\n            highwatermark: 90\n",
                "config.yml:16:13: middleware.registry[0].options.diskbudget.maxsize: ",
                "is required in diskbudget"));
    CHECK(fails(HEAD UPSTREAMS "          diskbudget:\n            maxsize: 10 GB\n",
                "config.yml:16:22: middleware.registry[0].options.diskbudget.maxsize: ",
                "expected a positive size in bytes"));
    CHECK(fails(HEAD UPSTREAMS "          diskbudget:\n            maxsize: 1GB\n"
                               "            highwatermark: 101\n",
                "config.yml:17:28: middleware.registry[0].options.diskbudget.highwatermark: ",
                "expected a percentage from 1 to 100"));
    CHECK(fails(HEAD UPSTREAMS "          diskbudget:\n            maxsize: 1GB\n"
                               "            lowwatermark: 90\n",
                "config.yml:16:13: middleware.registry[0].options.diskbudget: ",
                "lowwatermark (90) must be below highwatermark (90)"));
}

static void test_middleware_entries(void)
{
    /* No middleware at all, or none named downstream. */
    CHECK(fails_exactly("version: 0.1\nstorage:\n  delete:\n    enabled: true\n", NULL,
                        "config.yml:1:1: middleware.registry: no downstream middleware: nothing "
                        "to cache from (a front names a contentcaches middleware instead)"));
    CHECK(fails("# a comment\n\nversion: 0.1\n",
                "config.yml:3:1: middleware.registry: ", "no downstream middleware"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: redirect\n"
                "      options: {baseurl: https://example.com}\n",
                "config.yml:4:5: middleware.registry: ", "no downstream middleware"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n",
                "config.yml:3:12: middleware.registry: ", "no downstream middleware"));

    /* Other middleware is a warning; so are unknown keys of the entry. */
    struct config *cfg = parse_ok("version: 0.1\n"
                                  "middleware:\n"
                                  "  registry:\n"
                                  "    - name: redirect\n"
                                  "      options: {baseurl: https://example.com}\n"
                                  "    - name: downstream\n"
                                  "      disabled: false\n"
                                  "      extra: 1\n"
                                  "      options:\n"
                                  "        upstreams:\n"
                                  "          - originhost: https://dtr.example.com\n"
                                  "            weight: 3\n"
                                  "        colour: blue\n"
                                  "  repository:\n"
                                  "    - name: something\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->n_warnings, 5);
        CHECK(has_warning(cfg, "config.yml:4: middleware.registry[0]: middleware \"redirect\" is "
                               "not supported by content-cache (ignored)"));
        CHECK(has_warning(cfg, "config.yml:8: middleware.registry[1].extra: not used"));
        CHECK(has_warning(cfg,
                          "config.yml:12: middleware.registry[1].options.upstreams[0].weight: "));
        CHECK(has_warning(cfg, "config.yml:13: middleware.registry[1].options.colour: "));
        CHECK(has_warning(cfg, "config.yml:14: middleware.repository: not used by content-cache "
                               "(ignored)"));
        config_free(cfg);
    }

    /* A disabled downstream does not count. */
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: downstream\n"
                "      disabled: true\n",
                "config.yml:4:5: middleware.registry: ", "no downstream middleware"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: downstream\n"
                "      disabled: maybe\n",
                "config.yml:5:17: middleware.registry[0].disabled: ",
                "expected a boolean (true or false), got \"maybe\""));
    /* Two downstreams, a nameless entry, entries of the wrong type. */
    CHECK(fails(HEAD UPSTREAMS "      - name: downstream\n        options: {upstreams: "
                               "[{originhost: https://b.example.com}]}\n",
                "config.yml:15:9: middleware.registry[1]: ",
                "a second downstream middleware (the first is at line 11)"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - options: {}\n",
                "config.yml:4:7: middleware.registry[0].name: ",
                "missing: expected the middleware's name"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: [downstream]\n",
                "config.yml:4:13: middleware.registry[0].name: ",
                "expected the middleware's name, got a list"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - downstream\n",
                "config.yml:4:7: middleware.registry[0]: ",
                "expected a map with name and options, got \"downstream\""));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    name: downstream\n",
                "config.yml:4:5: middleware.registry: ",
                "expected a list of middleware entries (name, options), got a map"));
    CHECK(
        fails(HEAD "          - upstreams: []\n",
              "config.yml:13:11: middleware.registry[0].options: ", "expected a map, got a list"));
}

/* ---- Other keys ------------------------------------------------------------------------- */

static void test_version(void)
{
    CHECK(fails_exactly(DOWNSTREAM, NULL,
                        "config.yml:1:1: version: expected 0.1, but the key is missing"));
    CHECK(fails_exactly("version: 0.2\n" DOWNSTREAM, NULL,
                        "config.yml:1:10: version: expected 0.1, got \"0.2\""));
    CHECK(fails("storage: {}\nversion: 1\n", "config.yml:2:10: version: ", "got \"1\""));
    CHECK(fails("version:\n", "config.yml:1:9: version: ", "expected 0.1, got nothing"));
    CHECK(fails("version: [0.1]\n", "config.yml:1:10: version: ", "expected 0.1, got a list"));
    CHECK(fails("", "config.yml:1:1: version: ", "expected 0.1, got an empty document"));
    CHECK(fails("# only a comment\n", "config.yml:", "version: expected 0.1"));
    CHECK(fails("- version: 0.1\n",
                "config.yml:1:1: ", "expected a map of configuration keys, got a list"));
}

static void test_booleans(void)
{
    static const struct {
        const char *text;
        bool value;
    } cases[] = {
        {"true", true}, {"True", true}, {"TRUE", true},   {"yes", true},
        {"Yes", true},  {"on", true},   {"false", false}, {"False", false},
        {"no", false},  {"NO", false},  {"off", false},   {"\"true\"", true},
    };
    char yaml[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml),
                 "version: 0.1\nstorage:\n  delete:\n    enabled: %s\n" DOWNSTREAM, cases[i].text);
        struct config *cfg = parse_ok(yaml);
        CHECK(cfg != NULL);
        if (cfg) {
            if (cfg->delete_enabled != cases[i].value)
                fprintf(stderr, "enabled: %s read as %d\n", cases[i].text, cfg->delete_enabled);
            CHECK(cfg->delete_enabled == cases[i].value);
            config_free(cfg);
        }
    }
    CHECK(fails_exactly("version: 0.1\nstorage:\n  delete:\n    enabled: maybe\n" DOWNSTREAM, NULL,
                        "config.yml:4:14: storage.delete.enabled: expected a boolean (true or "
                        "false), got \"maybe\""));
    CHECK(fails("version: 0.1\nstorage:\n  delete:\n    enabled: 1\n" DOWNSTREAM,
                "config.yml:4:14: storage.delete.enabled: ", "got \"1\""));
    CHECK(fails("version: 0.1\nstorage:\n  delete:\n    enabled: [true]\n" DOWNSTREAM,
                "config.yml:4:14: storage.delete.enabled: ",
                "expected a boolean (true or false), got a list"));
}

static void test_log_and_tls_values(void)
{
    struct config *cfg =
        parse_ok("version: 0.1\nlog:\n  level: warning\n  formatter: logstash\n" DOWNSTREAM);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_STR(cfg->log_level, "warn");
        CHECK_STR(cfg->log_formatter, "json");
        CHECK_INT(cfg->n_warnings, 1);
        CHECK(has_warning(cfg, "config.yml:4: log.formatter: the logstash formatter is written "
                               "as json"));
        config_free(cfg);
    }
    CHECK(fails_exactly("version: 0.1\nlog:\n  level: loud\n" DOWNSTREAM, NULL,
                        "config.yml:3:10: log.level: expected one of error, warn, info, debug, got "
                        "\"loud\""));
    CHECK(fails("version: 0.1\nlog:\n  formatter: xml\n" DOWNSTREAM,
                "config.yml:3:14: log.formatter: ", "expected one of text, json, got \"xml\""));
    CHECK(fails(
        "version: 0.1\nlog:\n  level:\n    a: b\n" DOWNSTREAM,
        "config.yml:4:5: log.level: ", "expected one of error, warn, info, debug, got a map"));
    CHECK(fails("version: 0.1\nlog:\n  fields: [a, b]\n" DOWNSTREAM,
                "config.yml:3:11: log.fields: ", "expected a map of names to values, got a list"));
    CHECK(fails("version: 0.1\nlog:\n  fields:\n    a: [b]\n" DOWNSTREAM,
                "config.yml:4:8: log.fields.a: ", "expected a single value, got a list"));
    CHECK(fails_exactly("version: 0.1\nhttp:\n  tls:\n    minimumtls: tls1.0\n" DOWNSTREAM, NULL,
                        "config.yml:4:17: http.tls.minimumtls: expected tls1.2 or tls1.3, got "
                        "\"tls1.0\""));
    CHECK(fails("version: 0.1\nhttp:\n  draintimeout: 1.5s\n" DOWNSTREAM,
                "config.yml:3:17: http.draintimeout: ", DURATION_EXPECTED ", got \"1.5s\""));
    CHECK(fails("version: 0.1\nhttp:\n  tls:\n    certificate: /c.pem\n" DOWNSTREAM,
                "config.yml:4:18: http.tls.certificate: ",
                "http.tls needs both certificate and key, key is missing"));
    CHECK(fails("version: 0.1\nhttp:\n  tls:\n    key: /k.pem\n" DOWNSTREAM,
                "config.yml:4:10: http.tls.key: ", "certificate is missing"));
}

static void test_http_headers(void)
{
    CHECK(fails("version: 0.1\nhttp:\n  headers: [nosniff]\n" DOWNSTREAM,
                "config.yml:3:12: http.headers: ",
                "expected a map of header names to lists of values, got a list"));
    CHECK(fails("version: 0.1\nhttp:\n  headers:\n    X-Frame-Options: DENY\n" DOWNSTREAM,
                "config.yml:4:22: http.headers.X-Frame-Options: ",
                "expected a list of header values, got \"DENY\""));
    CHECK(fails("version: 0.1\nhttp:\n  headers:\n    X-A: [{a: b}]\n" DOWNSTREAM,
                "config.yml:4:11: http.headers.X-A[0]: ", "got a map"));
    CHECK(fails_exactly(
        "version: 0.1\nhttp:\n  headers:\n    X-A: [\"a\\r\\nX-B: b\"]\n" DOWNSTREAM, NULL,
        "config.yml:4:11: http.headers.X-A[0]: expected a header value without "
        "control characters, got \"a\\x0d\\x0aX-B: b\""));
    CHECK(fails("version: 0.1\nhttp:\n  headers:\n    \"X A\": [b]\n" DOWNSTREAM,
                "config.yml:4:5: http.headers.X?A: ", "expected an HTTP header name, got \"X A\""));
    /* A header with null values is dropped. */
    struct config *cfg =
        parse_ok("version: 0.1\nhttp:\n  headers:\n    X-A:\n    X-B: []\n" DOWNSTREAM);
    CHECK(cfg && cfg->n_http_headers == 1 && cfg->http_headers[0].n_values == 0);
    config_free(cfg);
}

static void test_auth_token(void)
{
    CHECK(fails_exactly("version: 0.1\n"
                        "auth:\n"
                        "  token:\n"
                        "    realm: https://auth.example.com/token\n"
                        "    service: registry\n" DOWNSTREAM,
                        NULL,
                        "config.yml:4:5: auth.token: expected realm, service, issuer and "
                        "rootcertbundle, missing issuer, rootcertbundle"));
    CHECK(fails("version: 0.1\nauth:\n  token: {}\n" DOWNSTREAM,
                "config.yml:3:10: auth.token: ", "missing realm, service, issuer, rootcertbundle"));
    CHECK(fails("version: 0.1\nauth:\n  token: yes\n" DOWNSTREAM,
                "config.yml:3:10: auth.token: ", "expected a map, got \"yes\""));
    /* Other kinds of auth are warnings: the cache does not support them. */
    struct config *cfg = parse_ok("version: 0.1\n"
                                  "auth:\n"
                                  "  htpasswd:\n"
                                  "    realm: basic-realm\n"
                                  "    path: /etc/htpasswd\n"
                                  "  silly:\n"
                                  "    realm: silly\n" DOWNSTREAM);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->n_warnings, 2);
        CHECK(has_warning(cfg, "config.yml:3: auth.htpasswd: only auth.token is supported by "
                               "content-cache (ignored)"));
        CHECK(has_warning(cfg, "config.yml:6: auth.silly: only auth.token is supported"));
        CHECK(cfg->auth_token_realm == NULL);
        config_free(cfg);
    }
}

static void test_type_errors(void)
{
    CHECK(fails_exactly("version: 0.1\nhttp: [a]\n" DOWNSTREAM, NULL,
                        "config.yml:2:7: http: expected a map, got a list"));
    CHECK(fails("version: 0.1\nhttp: :5000\n" DOWNSTREAM,
                "config.yml:2:7: http: ", "expected a map, got \":5000\""));
    CHECK(fails_exactly("version: 0.1\nhttp:\n  addr:\n    a: b\n" DOWNSTREAM, NULL,
                        "config.yml:4:5: http.addr: expected a single value, got a map"));
    CHECK(fails("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: [/a, /b]\n" DOWNSTREAM,
                "config.yml:4:20: storage.filesystem.rootdirectory: ",
                "expected a single value, got a list"));
    CHECK(fails("version: 0.1\nmiddleware: [registry]\n",
                "config.yml:2:13: middleware: ", "expected a map, got a list"));
    CHECK(fails("version: 0.1\n? [a, b]\n: c\n", "config.yml:2:3: ", "expected a key, got a list"));
    CHECK(fails("version: 0.1\nhttp:\n  ? {a: b}\n  : c\n",
                "config.yml:3:5: http: ", "expected a key, got a map"));
}

static void test_duplicate_keys(void)
{
    CHECK(fails_exactly("version: 0.1\nversion: 0.1\n" DOWNSTREAM, NULL,
                        "config.yml:2:1: version: duplicate key (first set at line 1)"));
    CHECK(fails_exactly("version: 0.1\nhttp:\n  addr: :5000\n  host: h\n  addr: :6000\n" DOWNSTREAM,
                        NULL, "config.yml:5:3: http.addr: duplicate key (first set at line 3)"));
    CHECK(fails(HEAD "          blobttl: 1h\n          blobttl: 2h\n" UPSTREAMS,
                "config.yml:14:11: middleware.registry[0].options.blobttl: ",
                "duplicate key (first set at line 13)"));
    CHECK(fails("version: 0.1\nlog:\n  fields: {a: 1, b: 2, a: 3}\n" DOWNSTREAM,
                "config.yml:3:24: log.fields.a: ", "duplicate key (first set at line 3)"));
    /* The earliest repeat in the document is the one reported. */
    CHECK(fails("version: 0.1\nz: 1\na: 1\nz: 2\na: 2\n" DOWNSTREAM,
                "config.yml:4:1: z: ", "duplicate key (first set at line 2)"));
}

static void test_syntax_errors(void)
{
    /* Lines and columns as libyaml reports them (1-based). */
    CHECK(fails("version: 0.1\nhttp:\n  addr: :5000\n bad: x\n",
                "config.yml:4:2: invalid YAML: did not find expected key", ""));
    CHECK(fails("version: 0.1\nhttp:\n\taddr: x\n",
                "config.yml:3:1: invalid YAML: found character that cannot start any token", ""));
    CHECK(fails("version: 0.1\nhttp:\n  addr: \"x\n",
                "config.yml:4:1: invalid YAML: found unexpected end of stream",
                "while scanning a quoted scalar at line 3, column 9"));
    CHECK(fails("version: 0.1\nhttp:\n  addr: x\n    host: y\n",
                "config.yml:4:9: invalid YAML: mapping values are not allowed in this context",
                ""));
    CHECK(fails("version: 0.1\nhttp: [a, b\n",
                "config.yml:3:1: invalid YAML: did not find expected ',' or ']'", ""));
    CHECK(fails("version: 0.1\n---\nversion: 0.1\n",
                "config.yml:2:1: only one YAML document is allowed", ""));
    CHECK(fails("version: 0.1\nx: \xff\n", "config.yml:2:4: invalid YAML: invalid leading UTF-8",
                ""));
    /* A NUL byte in the text, and one written as an escape. */
    static const char nul[] = "version: 0.1\nhttp: a\0b\n";
    struct config *cfg = NULL;
    CHECK_INT(config_parse("config.yml", nul, sizeof(nul) - 1, NULL, &cfg, err, sizeof(err)),
              -EINVAL);
    CHECK_CONTAINS(err, "config.yml:2:8: invalid YAML: control characters are not allowed");
    CHECK(fails("version: 0.1\nhttp:\n  addr: \"a\\0b\"\n",
                "config.yml:3:9: ", "a value holds a NUL character"));
}

static void test_anchors(void)
{
    struct config *cfg = parse_ok("version: 0.1\n"
                                  "x-caches: &caches\n"
                                  "  - https://a.example.com\n"
                                  "  - https://b.example.com\n"
                                  "middleware:\n"
                                  "  registry:\n"
                                  "    - name: downstream\n"
                                  "      options:\n"
                                  "        upstreams:\n"
                                  "          - originhost: &origin https://o.example.com\n"
                                  "            upstreamhosts: *caches\n"
                                  "          - originhost: *origin\n"
                                  "            upstreamhosts: *caches\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->n_upstreams, 2);
        CHECK_STR(cfg->upstreams[1].originhost, "https://o.example.com");
        CHECK_INT(cfg->upstreams[1].n_upstreamhosts, 2);
        CHECK_STR(cfg->upstreams[1].upstreamhosts[1], "https://b.example.com");
        CHECK_INT(cfg->n_warnings, 1);
        CHECK(has_warning(cfg, "config.yml:2: x-caches: not used"));
        config_free(cfg);
    }
    CHECK(fails("version: 0.1\nhttp:\n  addr: *nope\n",
                "config.yml:3:9: ", "alias \"nope\" names no anchor defined before it"));
    CHECK(fails("version: 0.1\nx: &a [1, *a]\n",
                "config.yml:2:11: ", "alias \"a\" names no anchor defined before it"));

    /* Aliases that expand to more than the walk may visit. */
    char *yaml = malloc(64 * 1024);
    size_t pos = (size_t)sprintf(yaml, "version: 0.1\nh: &h [");
    for (int i = 0; i < 200; i++)
        pos += (size_t)sprintf(yaml + pos, "%shttp://a", i ? ", " : "");
    pos += (size_t)sprintf(yaml + pos, "]\ne: &e {originhost: http://o, upstreamhosts: *h}\n"
                                       "middleware:\n  registry:\n    - name: downstream\n"
                                       "      options:\n        upstreams: [");
    for (int i = 0; i < 200; i++)
        pos += (size_t)sprintf(yaml + pos, "%s*e", i ? ", " : "");
    sprintf(yaml + pos, "]\n");
    /* An alias's node is the anchored one: the message names where the anchor is. */
    CHECK(fails(yaml, "config.yml:2:4: middleware.registry[0].options.upstreams[",
                "too many values (more than 10000, counting aliases)"));
    free(yaml);
}

/* ---- Warnings ---------------------------------------------------------------------------- */

static void test_unknown_keys(void)
{
    struct config *cfg = parse_ok("version: 0.1\n"
                                  "storage:\n"
                                  "  cache:\n"
                                  "    blobdescriptor: inmemory\n"
                                  "  s3:\n"
                                  "    bucket: b\n"
                                  "  filesystem:\n"
                                  "    rootdirectory: /srv\n"
                                  "  filesytem: {}\n"
                                  "health: {}\n"
                                  "http:\n"
                                  "  prefix: /reg\n"
                                  "  relativeurls: true\n"
                                  "  http2:\n"
                                  "    disabled: true\n" DOWNSTREAM);
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    static const char *const expected[] = {
        "config.yml:3: storage.cache: not used by content-cache (ignored)",
        "config.yml:5: storage.s3: only the filesystem storage driver is supported (ignored)",
        ("config.yml:9: storage.filesytem: only the filesystem storage driver is supported "
         "(ignored)"),
        "config.yml:10: health: not used by content-cache (ignored)",
        "config.yml:12: http.prefix: not used by content-cache (ignored)",
        "config.yml:13: http.relativeurls: not used by content-cache (ignored)",
        "config.yml:14: http.http2: not used by content-cache (ignored)",
    };
    CHECK_INT(cfg->n_warnings, sizeof(expected) / sizeof(expected[0]));
    for (size_t i = 0; i < cfg->n_warnings && i < sizeof(expected) / sizeof(expected[0]); i++)
        CHECK_STR(cfg->warnings[i], expected[i]);
    CHECK_STR(cfg->storage_root, "/srv");
    config_free(cfg);
}

/* A full Docker Registry config: every key it has that the cache does not use warns. */
static void test_full_registry_config(void)
{
    char path[1024];
    struct config *cfg = NULL;
    snprintf(path, sizeof(path), "%s/config/registry-full.yml", data_dir());
    int rc = config_load(path, NULL, &cfg, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "%s\n", err);
    CHECK_INT(rc, 0);
    if (cfg == NULL) return;
    static const struct {
        int line;
        const char *rest;
    } expected[] = {
        {5, "log.accesslog: not used by content-cache (ignored)"},
        {12, "log.hooks: not used"},
        {26, "loglevel: not used"},
        {30, "storage.filesystem.maxthreads: not used"},
        {31, "storage.s3: only the filesystem storage driver is supported (ignored)"},
        {38, "storage.redirect: not used"},
        {40, "storage.cache: not used"},
        {42, "storage.maintenance: not used"},
        {51, "auth.silly: only auth.token is supported by content-cache (ignored)"},
        {54, "auth.htpasswd: only auth.token is supported"},
        {70, "middleware.storage: not used"},
        {77, "reporting: not used"},
        {86, "http.prefix: not used"},
        {89, "http.relativeurls: not used"},
        {94, "http.tls.clientcas: not used"},
        {100, "http.debug.prometheus: not used"},
        {106, "http.http2: not used"},
        {108, "notifications: not used"},
        {120, "redis: not used"},
        {124, "health: not used"},
        {129, "proxy: not used"},
        {133, "compatibility: not used"},
        {136, "validation: not used"},
    };
    CHECK_INT(cfg->n_warnings, sizeof(expected) / sizeof(expected[0]));
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        char want[1400];
        snprintf(want, sizeof(want), "%s:%d: %s", path, expected[i].line, expected[i].rest);
        CHECK(has_warning(cfg, want));
    }
    CHECK_STR(cfg->log_level, "debug");
    CHECK_INT(cfg->n_log_fields, 2);
    CHECK_STR(cfg->storage_root, "/srv/registry");
    CHECK(cfg->delete_enabled);
    CHECK_STR(cfg->http_addr, "localhost:5000");
    CHECK_STR(cfg->http_host, "https://myregistryaddress.org:5000");
    CHECK(cfg->http_draintimeout_ns == 60ULL * 1000000000);
    CHECK_INT(cfg->n_http_headers, 2);
    CHECK_STR(cfg->http_headers[1].values[1], "includeSubDomains");
    CHECK_STR(cfg->http_tls_minimumtls, "tls1.2");
    CHECK_STR(cfg->http_debug_addr, "localhost:5001");
    CHECK(cfg->blobttl_ns == 168ULL * 3600 * 1000000000);
    CHECK_INT(cfg->n_upstreams, 1);
    CHECK_INT(cfg->upstreams[0].n_upstreamhosts, 2);
    CHECK_STR(cfg->upstreams[0].upstream_urls[1].path, "/mirror");
    CHECK_STR(cfg->policydir, "/etc/content-cache/policies");
    config_free(cfg);
}

static void test_warning_limit(void)
{
    size_t cap = 64 * 1024, pos = 0;
    char *yaml = malloc(cap);
    pos += (size_t)snprintf(yaml, cap, "version: 0.1\n");
    for (int i = 0; i < 150; i++)
        pos += (size_t)snprintf(yaml + pos, cap - pos, "unknown%d: %d\n", i, i);
    snprintf(yaml + pos, cap - pos, DOWNSTREAM);
    struct config *cfg = parse_ok(yaml);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->n_warnings, 100);
        CHECK_STR(cfg->warnings[98], "config.yml:100: unknown98: not used by content-cache "
                                     "(ignored)");
        CHECK_STR(cfg->warnings[99], "config.yml: 51 more warnings not shown");
        config_free(cfg);
    }
    free(yaml);
}

/* ---- The environment ---------------------------------------------------------------------- */

static void test_env_overrides(void)
{
    char *env[] = {
        "PATH=/usr/bin",
        "REGISTRY_HTTP_ADDR=0.0.0.0:6000",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/data",
        "REGISTRY_LOG_LEVEL=debug",
        "REGISTRY_LOG_FORMATTER=json",
        "REGISTRY_STORAGE_DELETE_ENABLED=true",
        "REGISTRY_HTTP_HOST=https://cache.example.com",
        "REGISTRY_HTTP_SECRET=s3cret",
        "REGISTRY_HTTP_DRAINTIMEOUT=30s",
        "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/c.pem",
        "REGISTRY_HTTP_TLS_KEY=/certs/k.pem",
        "REGISTRY_HTTP_TLS_MINIMUMTLS=tls1.3",
        "REGISTRY_HTTP_DEBUG_ADDR=:5001",
        "REGISTRY_AUTH_TOKEN_REALM=https://auth.example.com/token",
        "REGISTRY_AUTH_TOKEN_SERVICE=registry",
        "REGISTRY_AUTH_TOKEN_ISSUER=issuer",
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE=/certs/token.pem",
        "NOT_AN_ASSIGNMENT",
        NULL,
    };
    /* The file sets some of these; the environment wins, and needs no key in the file. */
    struct config *cfg =
        parse_ok_env("version: 0.1\nhttp:\n  addr: :5000\nlog:\n  level: error\n" DOWNSTREAM, env);
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    CHECK_STR(cfg->http_addr, "0.0.0.0:6000");
    CHECK_STR(cfg->storage_root, "/data");
    CHECK_STR(cfg->log_level, "debug");
    CHECK_STR(cfg->log_formatter, "json");
    CHECK(cfg->delete_enabled);
    CHECK_STR(cfg->http_host, "https://cache.example.com");
    CHECK_STR(cfg->http_secret, "s3cret");
    CHECK(cfg->http_draintimeout_ns == 30ULL * 1000000000);
    CHECK_STR(cfg->http_tls_certificate, "/certs/c.pem");
    CHECK_STR(cfg->http_tls_key, "/certs/k.pem");
    CHECK_STR(cfg->http_tls_minimumtls, "tls1.3");
    CHECK_STR(cfg->http_debug_addr, ":5001");
    CHECK_STR(cfg->auth_token_realm, "https://auth.example.com/token");
    CHECK_STR(cfg->auth_token_service, "registry");
    CHECK_STR(cfg->auth_token_issuer, "issuer");
    CHECK_STR(cfg->auth_token_rootcertbundle, "/certs/token.pem");
    CHECK_INT(cfg->n_warnings, 0);
    config_free(cfg);
}

static void test_env_errors(void)
{
    char *level[] = {"REGISTRY_LOG_LEVEL=loud", NULL};
    CHECK(fails_exactly("version: 0.1\n" DOWNSTREAM, level,
                        "REGISTRY_LOG_LEVEL: expected one of error, warn, info, debug, got "
                        "\"loud\""));
    char *enabled[] = {"REGISTRY_STORAGE_DELETE_ENABLED=sure", NULL};
    CHECK(fails_exactly("version: 0.1\n" DOWNSTREAM, enabled,
                        "REGISTRY_STORAGE_DELETE_ENABLED: expected a boolean (true or false), got "
                        "\"sure\""));
    char *drain[] = {"REGISTRY_HTTP_DRAINTIMEOUT=1d", NULL};
    CHECK(fails_exactly("version: 0.1\n" DOWNSTREAM, drain,
                        "REGISTRY_HTTP_DRAINTIMEOUT: " DURATION_EXPECTED ", got \"1d\""));
    char *tls[] = {"REGISTRY_HTTP_TLS_MINIMUMTLS=tls1.1", NULL};
    CHECK(fails_env("version: 0.1\n" DOWNSTREAM, tls,
                    "REGISTRY_HTTP_TLS_MINIMUMTLS: ", "expected tls1.2 or tls1.3, got \"tls1.1\""));
    char *key_only[] = {"REGISTRY_HTTP_TLS_KEY=/k.pem", NULL};
    CHECK(fails_env("version: 0.1\n" DOWNSTREAM, key_only,
                    "REGISTRY_HTTP_TLS_KEY: ", "certificate is missing"));
    char *realm[] = {"REGISTRY_AUTH_TOKEN_REALM=https://auth.example.com", NULL};
    CHECK(fails_exactly("version: 0.1\n" DOWNSTREAM, realm,
                        "REGISTRY_AUTH_TOKEN_REALM: auth.token: expected realm, service, issuer "
                        "and rootcertbundle, missing service, issuer, rootcertbundle"));

    /* A bad value in the file is fine when the environment replaces it. */
    char *fix[] = {"REGISTRY_LOG_LEVEL=warn", NULL};
    struct config *cfg = parse_ok_env("version: 0.1\nlog:\n  level: loud\n" DOWNSTREAM, fix);
    CHECK(cfg && strcmp(cfg->log_level, "warn") == 0);
    config_free(cfg);
    /* The environment completes what the file starts. */
    char *complete[] = {"REGISTRY_AUTH_TOKEN_ISSUER=i", "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE=/b",
                        NULL};
    cfg = parse_ok_env("version: 0.1\nauth:\n  token:\n    realm: r\n    service: s\n" DOWNSTREAM,
                       complete);
    CHECK(cfg && strcmp(cfg->auth_token_issuer, "i") == 0);
    config_free(cfg);
    /* An empty value means the default; the last of two assignments wins. */
    char *empty[] = {"REGISTRY_HTTP_ADDR=:7000", "REGISTRY_HTTP_ADDR=", NULL};
    cfg = parse_ok_env("version: 0.1\nhttp:\n  addr: :6000\n" DOWNSTREAM, empty);
    CHECK(cfg && strcmp(cfg->http_addr, ":5000") == 0);
    config_free(cfg);
    /* Variables the cache does not know are warnings, like Docker Registry's. */
    char *unknown[] = {"REGISTRY_STORAGE_S3_BUCKET=b", "REGISTRY_HTTP_HEADERS=x", NULL};
    cfg = parse_ok_env("version: 0.1\n" DOWNSTREAM, unknown);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->n_warnings, 2);
        CHECK(has_warning(cfg, "REGISTRY_STORAGE_S3_BUCKET: environment variable not used by "
                               "content-cache (ignored)"));
        config_free(cfg);
    }
}

/* ---- Files ---------------------------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_check_files(void)
{
    char dir[] = "/tmp/test_config.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char good[256], bad[256], missing[256], yaml[2048];
    snprintf(good, sizeof(good), "%s/ca.pem", dir);
    snprintf(bad, sizeof(bad), "%s/notpem.pem", dir);
    snprintf(missing, sizeof(missing), "%s/missing.pem", dir);
    write_file(good, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    write_file(bad, "not a certificate\n");

    struct config *cfg;
    snprintf(yaml, sizeof(yaml), HEAD UPSTREAMS "          cas: [%s]\n          policydir: %s\n",
             good, dir);
    cfg = parse_ok(yaml);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(config_check_files(cfg, err, sizeof(err)), 0);
        config_free(cfg);
    }
    snprintf(yaml, sizeof(yaml), HEAD UPSTREAMS "          cas: [%s, %s]\n", good, missing);
    cfg = parse_ok(yaml);
    if (cfg) {
        CHECK_INT(config_check_files(cfg, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, "cas ");
        CHECK_CONTAINS(err, "missing.pem: cannot read: No such file or directory");
        config_free(cfg);
    }
    snprintf(yaml, sizeof(yaml), HEAD UPSTREAMS "          cas: [%s]\n", bad);
    cfg = parse_ok(yaml);
    if (cfg) {
        CHECK_INT(config_check_files(cfg, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, "notpem.pem: no \"-----BEGIN CERTIFICATE-----\" in the file");
        config_free(cfg);
    }
    snprintf(yaml, sizeof(yaml), HEAD UPSTREAMS "          cas: [%s]\n", dir);
    cfg = parse_ok(yaml);
    if (cfg) {
        CHECK_INT(config_check_files(cfg, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, "cannot read");
        config_free(cfg);
    }
    snprintf(yaml, sizeof(yaml), HEAD UPSTREAMS "          policydir: %s\n", good);
    cfg = parse_ok(yaml);
    if (cfg) {
        CHECK_INT(config_check_files(cfg, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, "policydir ");
        CHECK_CONTAINS(err, "not a directory");
        config_free(cfg);
    }
    snprintf(yaml, sizeof(yaml),
             "version: 0.1\nhttp:\n  tls:\n    certificate: %s\n    key: %s\n" DOWNSTREAM, good,
             bad);
    cfg = parse_ok(yaml);
    if (cfg) {
        CHECK_INT(config_check_files(cfg, err, sizeof(err)), -EINVAL);
        CHECK_CONTAINS(err, "http.tls.key ");
        config_free(cfg);
    }
    unlink(good);
    unlink(bad);
    rmdir(dir);
}

static void test_load(void)
{
    struct config *cfg = (struct config *)&cfg;
    CHECK_INT(config_load("/nonexistent/config.yml", NULL, &cfg, err, sizeof(err)), -ENOENT);
    CHECK(cfg == NULL);
    CHECK_STR(err, "/nonexistent/config.yml: No such file or directory");

    /* Exactly 1 MiB is read; one byte more is refused. */
    char path[] = "/tmp/test_config_big.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    static const char head[] = "version: 0.1\n" DOWNSTREAM;
    fputs(head, f);
    for (size_t n = strlen(head); n < 1024 * 1024; n++)
        fputc(n % 64 == 63 ? '\n' : '#', f);
    fclose(f);
    CHECK_INT(config_load(path, NULL, &cfg, err, sizeof(err)), 0);
    config_free(cfg);
    f = fopen(path, "a");
    fputc('\n', f);
    fclose(f);
    CHECK_INT(config_load(path, NULL, &cfg, err, sizeof(err)), -EFBIG);
    CHECK(cfg == NULL);
    CHECK_CONTAINS(err, "larger than 1048576 bytes");
    unlink(path);

    /* config_parse refuses the same. */
    char *big = calloc(1, 1024 * 1024 + 2);
    memset(big, '#', 1024 * 1024 + 1);
    CHECK_INT(config_parse("big.yml", big, 1024 * 1024 + 1, NULL, &cfg, err, sizeof(err)), -EINVAL);
    CHECK_STR(err, "big.yml: larger than 1048576 bytes");
    free(big);
}

/* ---- Inputs that must not crash ------------------------------------------------------------ */

static void test_nesting_limit(void)
{
    char yaml[512];
    size_t pos = (size_t)snprintf(yaml, sizeof(yaml), "version: 0.1\nx: ");
    for (int i = 0; i < 100; i++)
        yaml[pos++] = '[';
    yaml[pos] = '\0';
    /* The top-level map is level 1: the 64th list, at column 67, is level 65. */
    CHECK(fails(yaml, "config.yml:2:67: ", "nesting deeper than 64 levels"));
    pos = (size_t)snprintf(yaml, sizeof(yaml), "version: 0.1\nx: ");
    for (int i = 0; i < 63; i++)
        yaml[pos++] = '[';
    for (int i = 0; i < 63; i++)
        yaml[pos++] = ']';
    snprintf(yaml + pos, sizeof(yaml) - pos, "\n" DOWNSTREAM);
    struct config *cfg = parse_ok(yaml);
    CHECK(cfg != NULL);
    config_free(cfg);
}

static uint32_t next_random(uint32_t *state)
{
    *state = *state * 1103515245u + 12345u;
    return *state >> 8;
}

/* Truncations and byte mutations of real configs: any result but a crash or a leak. */
static void test_garbage(void)
{
    static const char *const bases[] = {
        SEED,
        "version: 0.1\nlog:\n  fields: {a: b}\nhttp:\n  headers:\n    X: [y]\n"
        "auth:\n  token: {realm: r}\nx: &a [1, *a]\n" DOWNSTREAM,
    };
    static const char alphabet[] = "\0\t\n :-[]{},&*!|>'\"%@`#?\\\xff\xc3";
    uint32_t state = 42;
    int parsed = 0;
    for (size_t b = 0; b < sizeof(bases) / sizeof(bases[0]); b++) {
        size_t len = strlen(bases[b]);
        char *copy = malloc(len + 1);
        for (size_t cut = 0; cut <= len; cut++) {
            struct config *cfg = NULL;
            memcpy(copy, bases[b], len);
            if (config_parse("g.yml", copy, cut, NULL, &cfg, err, sizeof(err)) == 0) parsed++;
            config_free(cfg);
        }
        for (int round = 0; round < 2000; round++) {
            struct config *cfg = NULL;
            memcpy(copy, bases[b], len);
            for (int m = 0; m < 1 + (int)(next_random(&state) % 4); m++)
                copy[next_random(&state) % len] =
                    alphabet[next_random(&state) % (sizeof(alphabet) - 1)];
            if (config_parse("g.yml", copy, len, NULL, &cfg, err, sizeof(err)) == 0) parsed++;
            config_free(cfg);
        }
        free(copy);
    }
    /* Random bytes. */
    char buf[256];
    for (int round = 0; round < 2000; round++) {
        struct config *cfg = NULL;
        size_t len = next_random(&state) % sizeof(buf);
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)next_random(&state);
        config_parse("r.yml", buf, len, NULL, &cfg, err, sizeof(err));
        config_free(cfg);
    }
    CHECK(parsed > 0);
    /* A tiny error buffer is always terminated; a NULL one is allowed with length 0. */
    struct config *cfg = NULL;
    char small[8];
    CHECK_INT(config_parse("config.yml", "x", 1, NULL, &cfg, small, sizeof(small)), -EINVAL);
    CHECK_STR(small, "config.");
    CHECK_INT(config_parse("config.yml", "x", 1, NULL, &cfg, NULL, 0), -EINVAL);
    config_free(NULL);
}

/* ---- The front: the contentcaches middleware -------------------------------------------- */

/* The front config (lines 1 to 18). */
#define FRONT                                                                                      \
    "version: 0.1\n"                                                                               \
    "storage:\n"                                                                                   \
    "  filesystem:\n"                                                                              \
    "    rootdirectory: /var/lib/content-cache-front\n"                                            \
    "http:\n"                                                                                      \
    "  addr: :5000\n"                                                                              \
    "middleware:\n"                                                                                \
    "  registry:\n"                                                                                \
    "    - name: contentcaches\n"                                                                  \
    "      options:\n"                                                                             \
    "        originhost: http://registry.internal:5000\n"                                          \
    "        cas: [/certs/registry-ca.pem]\n"                                                      \
    "        admins: [admin]\n"                                                                    \
    "        username: cache-reader\n"                                                             \
    "        password: secret\n"                                                                   \
    "        granttl: 5m\n"

/* FRONT without its last line (granttl): 15 lines, for tests that add line 16. */
#define FRONT_HEAD15                                                                               \
    "version: 0.1\n"                                                                               \
    "storage:\n"                                                                                   \
    "  filesystem:\n"                                                                              \
    "    rootdirectory: /var/lib/content-cache-front\n"                                            \
    "http:\n"                                                                                      \
    "  addr: :5000\n"                                                                              \
    "middleware:\n"                                                                                \
    "  registry:\n"                                                                                \
    "    - name: contentcaches\n"                                                                  \
    "      options:\n"                                                                             \
    "        originhost: http://registry.internal:5000\n"                                          \
    "        cas: [/certs/registry-ca.pem]\n"                                                      \
    "        username: cache-reader\n"                                                             \
    "        password: secret\n"                                                                   \
    "        policydir: /etc/content-cache/policies\n"

static void test_front_config(void)
{
    struct config *cfg = parse_ok(FRONT);
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK(cfg->has_contentcaches);
        CHECK(!cfg->has_downstream);
        CHECK_INT(cfg->n_upstreams, 1);
        CHECK_STR(cfg->upstreams[0].originhost, "http://registry.internal:5000");
        CHECK_STR(cfg->upstreams[0].origin.host, "registry.internal");
        CHECK_INT(cfg->upstreams[0].n_upstreamhosts, 0);
        CHECK_INT(cfg->n_cas, 1);
        CHECK_INT(cfg->n_admins, 1);
        CHECK_STR(cfg->admins[0], "admin");
        CHECK_STR(cfg->front_username, "cache-reader");
        CHECK_STR(cfg->front_password, "secret");
        CHECK(cfg->granttl_ns == 300ULL * 1000000000ULL);
        CHECK_INT(cfg->n_warnings, 0);
        config_free(cfg);
    }
    /* The least a front needs: an origin. No account (anonymous), the default TTL. */
    cfg = parse_ok("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n"
                   "      options:\n        originhost: https://dtr.example.com\n");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK(cfg->front_username == NULL && cfg->front_password == NULL);
        CHECK(cfg->granttl_ns == CONFIG_GRANTTL_DEFAULT_NS);
        CHECK_INT(cfg->n_admins, 0);
        config_free(cfg);
    }
    /* Keys of a cache are not the front's: a warning naming the line. */
    cfg = parse_ok(FRONT "        blobttl: 24h\n");
    CHECK(cfg != NULL && has_warning(cfg, "config.yml:17: middleware.registry[0].options.blobttl: "
                                          "not used by content-cache (ignored)"));
    config_free(cfg);
}

static void test_front_config_errors(void)
{
    /* Both middlewares in one file: the error names both lines, in either order. */
    CHECK(fails_exactly(FRONT "    - name: downstream\n      options:\n        upstreams:\n"
                              "          - originhost: https://dtr.example.com\n",
                        NULL,
                        "config.yml:17:7: middleware.registry[1]: a contentcaches middleware "
                        "(line 9) and a downstream middleware (line 17) in one file: a process is "
                        "either a cache (downstream) or the front (contentcaches)"));
    CHECK(fails_exactly(HEAD UPSTREAMS "      - name: contentcaches\n        options:\n"
                                       "          originhost: https://dtr.example.com\n",
                        NULL,
                        "config.yml:15:9: middleware.registry[1]: a downstream middleware "
                        "(line 11) and a contentcaches middleware (line 15) in one file: a "
                        "process is either a cache (downstream) or the front (contentcaches)"));
    CHECK(fails(FRONT "    - name: contentcaches\n      options: {originhost: http://b:5000}\n",
                "config.yml:17:7: middleware.registry[1]: ",
                "a second contentcaches middleware (the first is at line 9)"));
    /* What the options must hold. */
    CHECK(fails_exactly("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n"
                        "      options:\n        admins: [admin]\n",
                        NULL,
                        "config.yml:6:9: middleware.registry[0].options.originhost: missing: "
                        "expected a fully qualified http or https URL of the origin registry"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n",
                "config.yml:4:7: middleware.registry[0].options.originhost: ", "missing"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n"
                "      options:\n        originhost: registry.internal:5000\n",
                "config.yml:6:21: middleware.registry[0].options.originhost: ",
                "expected a fully qualified http or https URL"));
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n"
                "      options:\n        originhost: http://o\n        username: reader\n",
                "config.yml:6:9: middleware.registry[0].options: ",
                "username and password go together (the front's pull-only account at the "
                "origin), password is missing"));
    CHECK(fails(FRONT "        admins: x\n",
                "config.yml:17:9: middleware.registry[0].options.admins: ",
                "duplicate key (first set at line 13)"));
    CHECK(fails_exactly(FRONT_HEAD15 "        admins: [ok, \"bad:name\"]\n", NULL,
                        "config.yml:16:22: middleware.registry[0].options.admins[1]: expected a "
                        "user name (1 to 255 bytes, no ':' and no control characters), got "
                        "\"bad:name\""));
    CHECK(fails(FRONT_HEAD15 "        admins: admin\n",
                "config.yml:16:17: middleware.registry[0].options.admins: ",
                "expected a list of user names, got \"admin\""));
    CHECK(fails(FRONT_HEAD15 "        granttl: 0s\n",
                "config.yml:16:18: middleware.registry[0].options.granttl: ",
                "from 1s to 24h, got \"0s\""));
    CHECK(fails(FRONT_HEAD15 "        granttl: 25h\n",
                "config.yml:16:18: middleware.registry[0].options.granttl: ", "got \"25h\""));
    CHECK(fails(FRONT_HEAD15 "        granttl: 500ms\n",
                "config.yml:16:18: middleware.registry[0].options.granttl: ", "got \"500ms\""));
    /* A password is never quoted back. */
    CHECK(fails("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n"
                "      options:\n        originhost: http://o\n        password: [hunter2]\n",
                "config.yml:7:19: middleware.registry[0].options.password: ",
                "expected a password, got a list"));
    CHECK(fails(FRONT "        cas: [relative.pem]\n",
                "config.yml:17:9: middleware.registry[0].options.cas: ", "duplicate key"));
}

static void test_front_env(void)
{
    char *env[] = {
        "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ORIGINHOST=https://other.example.com:8443",
        "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_USERNAME=reader2",
        "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_PASSWORD=from-env",
        "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_GRANTTL=90s",
        "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ADMINS=root, ops",
        "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_POLICYDIR=/etc/front/policies",
        NULL,
    };
    struct config *cfg = parse_ok_env(FRONT, env);
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_STR(cfg->upstreams[0].originhost, "https://other.example.com:8443");
        CHECK_INT(cfg->upstreams[0].origin.port, 8443);
        CHECK_STR(cfg->front_username, "reader2");
        CHECK_STR(cfg->front_password, "from-env");
        CHECK(cfg->granttl_ns == 90ULL * 1000000000ULL);
        CHECK_INT(cfg->n_admins, 2);
        CHECK_STR(cfg->admins[0], "root");
        CHECK_STR(cfg->admins[1], "ops");
        CHECK_STR(cfg->policydir, "/etc/front/policies");
        CHECK_INT(cfg->n_warnings, 0);
        config_free(cfg);
    }
    /* The environment completes a file that lacks the origin or half the account. */
    char *origin[] = {"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ORIGINHOST=http://o:5000",
                      "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_PASSWORD=p", NULL};
    cfg = parse_ok_env("version: 0.1\nmiddleware:\n  registry:\n    - name: contentcaches\n"
                       "      options:\n        username: reader\n",
                       origin);
    CHECK(cfg && strcmp(cfg->upstreams[0].originhost, "http://o:5000") == 0 &&
          strcmp(cfg->front_password, "p") == 0);
    config_free(cfg);
    /* Errors name the variable; the password is not quoted back. */
    char *bad_url[] = {"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ORIGINHOST=o:5000", NULL};
    CHECK(fails_env(FRONT, bad_url, "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ORIGINHOST: ",
                    "expected a fully qualified http or https URL, got \"o:5000\""));
    char *bad_ttl[] = {"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_GRANTTL=1d", NULL};
    CHECK(fails_env(FRONT, bad_ttl, "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_GRANTTL: ",
                    "from 1s to 24h, got \"1d\""));
    char *bad_admins[] = {"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ADMINS=a,,b", NULL};
    CHECK(fails_env(FRONT, bad_admins, "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ADMINS: ",
                    "expected a comma-separated list of user names"));
    char *unknown[] = {"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_COLOUR=blue", NULL};
    cfg = parse_ok_env(FRONT, unknown);
    CHECK(cfg && has_warning(cfg, "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_COLOUR: environment "
                                  "variable not used by content-cache (ignored)"));
    config_free(cfg);
    /* A cache's file: the front's variables are not used, and said so. */
    char *on_cache[] = {"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_PASSWORD=x", NULL};
    cfg = parse_ok_env("version: 0.1\n" DOWNSTREAM, on_cache);
    CHECK(cfg && has_warning(cfg, "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_PASSWORD: "
                                  "environment variable not used: the file names no "
                                  "contentcaches middleware (ignored)"));
    config_free(cfg);
}

/* ---- workers: loops in one process --------------------------------------------------- */

static void test_workers(void)
{
    struct config *cfg = parse_ok(HEAD UPSTREAMS);
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    /* Unset: one loop per CPU this process may use, at least 1, at most 64. */
    CHECK(cfg->workers == 0);
    CHECK(config_workers(cfg) >= 1 && config_workers(cfg) <= CONFIG_WORKERS_MAX);
    config_free(cfg);

    cfg = parse_ok(HEAD UPSTREAMS "          workers: 3\n");
    CHECK(cfg != NULL);
    if (cfg == NULL) return;
    CHECK(cfg->workers == 3);
    CHECK(config_workers(cfg) == 3);
    config_free(cfg);

    cfg = parse_ok(HEAD UPSTREAMS "          workers: 64\n");
    CHECK(cfg != NULL && cfg->workers == 64);
    config_free(cfg);

    const char *at = "config.yml:15:20: middleware.registry[0].options.workers: ";
    CHECK(fails(HEAD UPSTREAMS "          workers: 0\n", at,
                "expected a whole number of worker loops from 1 to 64 (one per core is the most "
                "that helps), got \"0\""));
    CHECK(fails(HEAD UPSTREAMS "          workers: 65\n", at, "from 1 to 64 (one per core"));
    CHECK(fails(HEAD UPSTREAMS "          workers: 99999999999999999999\n", at,
                "from 1 to 64 (one per core"));
    CHECK(fails(HEAD UPSTREAMS "          workers: -2\n", at,
                "expected a whole number of worker loops from 1 to 64, got \"-2\""));
    CHECK(fails(HEAD UPSTREAMS "          workers: 1.5\n", at, "got \"1.5\""));
    CHECK(fails(HEAD UPSTREAMS "          workers: two\n", at, "got \"two\""));
    CHECK(fails(HEAD UPSTREAMS "          workers: [2]\n", at, "got a list"));
}

/* ---- http.maxconnections: the process's bound on client connections ---------------- */

static void test_maxconnections(void)
{
    struct config *cfg = parse_ok(HEAD UPSTREAMS);
    CHECK(cfg != NULL && cfg->http_maxconnections == 0); /* not set: the server's default */
    config_free(cfg);
    cfg = parse_ok("version: 0.1\nhttp:\n  maxconnections: 3\n" DOWNSTREAM);
    CHECK(cfg != NULL && cfg->http_maxconnections == 3);
    config_free(cfg);
    char *const env[] = {"REGISTRY_HTTP_MAXCONNECTIONS=7", NULL};
    cfg = parse_ok_env("version: 0.1\nhttp:\n  maxconnections: 3\n" DOWNSTREAM, env);
    CHECK(cfg != NULL && cfg->http_maxconnections == 7); /* a scalar key: the environment's */
    config_free(cfg);
    const char *at = "config.yml:3:19: http.maxconnections: ";
    CHECK(fails("version: 0.1\nhttp:\n  maxconnections: 0\n" DOWNSTREAM, at,
                "expected a whole number of connections from 1 to 1048576, got \"0\""));
    CHECK(fails("version: 0.1\nhttp:\n  maxconnections: 1048577\n" DOWNSTREAM, at,
                "from 1 to 1048576"));
    CHECK(fails("version: 0.1\nhttp:\n  maxconnections: -1\n" DOWNSTREAM, at, "got \"-1\""));
    CHECK(fails("version: 0.1\nhttp:\n  maxconnections: many\n" DOWNSTREAM, at, "got \"many\""));
}

int main(void)
{
    RUN(test_seed_example);
    RUN(test_maxconnections);
    RUN(test_example_file);
    RUN(test_defaults);
    RUN(test_all_keys);
    RUN(test_durations);
    RUN(test_blobttl_errors);
    RUN(test_blobttl_needs_delete);
    RUN(test_upstreams_errors);
    RUN(test_url_errors);
    RUN(test_cas_and_policydir);
    RUN(test_diskbudget_and_timeouts);
    RUN(test_middleware_entries);
    RUN(test_version);
    RUN(test_booleans);
    RUN(test_log_and_tls_values);
    RUN(test_http_headers);
    RUN(test_auth_token);
    RUN(test_type_errors);
    RUN(test_duplicate_keys);
    RUN(test_syntax_errors);
    RUN(test_anchors);
    RUN(test_unknown_keys);
    RUN(test_full_registry_config);
    RUN(test_warning_limit);
    RUN(test_env_overrides);
    RUN(test_env_errors);
    RUN(test_check_files);
    RUN(test_load);
    RUN(test_nesting_limit);
    RUN(test_garbage);
    RUN(test_front_config);
    RUN(test_front_config_errors);
    RUN(test_front_env);
    RUN(test_workers);
    return check_summary();
}
