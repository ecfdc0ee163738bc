/*
 * fuzz_config.c: any bytes as a config.yml, through config_parse.
 *
 * Each input is parsed without an environment, and a config that parses is parsed again
 * with a small fixed environment of REGISTRY_* overrides (one that applies to a scalar,
 * one that enables deletes, one unknown), so that the override path runs on valid files.
 * Besides the sanitizers, the harness checks what config.h promises of a parsed config
 * and of an error message, and aborts when a promise is broken.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/config.h"
#include "harness.h"

static char *const fuzz_env[] = {
    "REGISTRY_HTTP_SECRET=fuzz-secret",
    "REGISTRY_STORAGE_DELETE_ENABLED=true",
    "REGISTRY_LOG_FIELDS_SERVICE=fuzz",
    "REGISTRY_NOSUCH_KEY=1",
    "PATH=/usr/bin",
    NULL,
};

static int one_of(const char *s, const char *a, const char *b, const char *c, const char *d)
{
    return s != NULL && ((a && strcmp(s, a) == 0) || (b && strcmp(s, b) == 0) ||
                         (c && strcmp(s, c) == 0) || (d && strcmp(s, d) == 0));
}

static void check_config(const struct config *cfg)
{
    HARNESS_REQUIRE(cfg->has_downstream && cfg->n_upstreams >= 1, "a parsed config has upstreams");
    HARNESS_REQUIRE(one_of(cfg->log_level, "error", "warn", "info", "debug"), "log.level is known");
    HARNESS_REQUIRE(one_of(cfg->log_formatter, "text", "json", NULL, NULL),
                    "log.formatter is known");
    HARNESS_REQUIRE(cfg->storage_root != NULL, "storage root is set");
    HARNESS_REQUIRE(cfg->http_addr != NULL, "http.addr is set");
    HARNESS_REQUIRE(cfg->n_warnings <= 100, "at most 100 warnings");
    int n_auth = (cfg->auth_token_realm != NULL) + (cfg->auth_token_service != NULL) +
                 (cfg->auth_token_issuer != NULL) + (cfg->auth_token_rootcertbundle != NULL);
    HARNESS_REQUIRE(n_auth == 0 || n_auth == 4, "auth.token is all or nothing");
    HARNESS_REQUIRE(!cfg->has_blobttl || (cfg->blobttl_ns > 0 && cfg->delete_enabled),
                    "blobttl needs deletes");
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const struct config_upstream *u = &cfg->upstreams[i];
        HARNESS_REQUIRE(u->originhost != NULL && u->origin.host[0] != '\0', "originhost parsed");
        for (size_t k = 0; k < u->n_upstreamhosts; k++)
            HARNESS_REQUIRE(u->upstreamhosts[k] != NULL && u->upstream_urls[k].host[0] != '\0',
                            "upstreamhosts parsed");
    }
    for (size_t i = 0; i < cfg->n_cas; i++)
        HARNESS_REQUIRE(cfg->cas[i] != NULL && cfg->cas[i][0] == '/', "cas paths are absolute");
    HARNESS_REQUIRE(cfg->policydir == NULL || cfg->policydir[0] == '/', "policydir is absolute");
}

static void parse_once(const char *data, size_t size, char *const *env, int *ok)
{
    char err[512];
    memset(err, 'x', sizeof(err));
    struct config *cfg = NULL;
    int rc = config_parse("fuzz.yml", data, size, env, &cfg, err, sizeof(err));
    if (rc == 0) {
        HARNESS_REQUIRE(cfg != NULL, "success gives a config");
        check_config(cfg);
        config_free(cfg);
        *ok = 1;
    } else {
        HARNESS_REQUIRE(cfg == NULL, "failure gives no config");
        HARNESS_REQUIRE(memchr(err, '\0', sizeof(err)) != NULL, "the message is NUL-terminated");
        HARNESS_REQUIRE(err[0] != '\0', "a failure says why");
        *ok = 0;
    }
    /* errlen 0 with a NULL buffer is allowed too. */
    cfg = NULL;
    if (config_parse("fuzz.yml", data, size, env, &cfg, NULL, 0) == 0) config_free(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int ok = 0;
    parse_once((const char *)data, size, NULL, &ok);
    if (ok) parse_once((const char *)data, size, fuzz_env, &ok);
    return 0;
}
