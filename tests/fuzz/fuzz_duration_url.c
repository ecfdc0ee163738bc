/*
 * fuzz_duration_url.c: bytes (a NUL-terminated copy, cut at the first NUL) through
 * config_parse_duration and url_parse.
 *
 * Checked: a duration that parses is positive and parses again to the same value when
 * written as plain nanoseconds; a URL that parses gives a non-empty host and a port, and
 * url_format_origin followed by the path parses again to the same scheme, host, port
 * and path; a refusal always says why.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/config.h"
#include "harness.h"
#include "base/url.h"

static void require(int cond, const char *what, const char *input)
{
    if (!cond) {
        fprintf(stderr, "fuzz_duration_url: input \"%s\"\n", input);
        HARNESS_FAIL(what);
    }
}

static void check_duration(const char *text)
{
    uint64_t ns = 0;
    int rc = config_parse_duration(text, &ns);
    require(rc == 0 || rc == -EINVAL || rc == -ERANGE, "a documented result", text);
    if (rc != 0) return;
    require(ns > 0, "a duration is positive", text);
    char again[32];
    snprintf(again, sizeof(again), "%" PRIu64, ns);
    uint64_t ns2 = 0;
    require(config_parse_duration(again, &ns2) == 0 && ns2 == ns, "plain ns round trip", text);
}

static void check_url(const char *text)
{
    struct url u;
    const char *why = NULL;
    int rc = url_parse(text, &u, &why);
    if (rc != 0) {
        require(rc == -EINVAL && why != NULL && why[0] != '\0', "a refusal says why", text);
        return;
    }
    require(u.host[0] != '\0' && u.port != 0, "a host and a port", text);
    require(u.path[0] == '\0' || (u.path[0] == '/' && u.path[strlen(u.path) - 1] != '/'),
            "the path is empty or /... without a trailing /", text);
    char buf[sizeof(u.host) + sizeof(u.path) + 32];
    int n = url_format_origin(&u, buf, sizeof(buf));
    require(n > 0 && (size_t)n == strlen(buf), "the origin is formatted", text);
    /* Too small a buffer is refused, never overrun. */
    char *tight = malloc((size_t)n);
    require(tight != NULL && url_format_origin(&u, tight, (size_t)n) == -ENOSPC,
            "a short buffer is -ENOSPC", text);
    free(tight);
    memcpy(buf + n, u.path, strlen(u.path) + 1);
    struct url v;
    require(url_parse(buf, &v, &why) == 0, "the formatted URL parses", buf);
    require(v.tls == u.tls && strcmp(v.host, u.host) == 0 && v.port == u.port &&
                strcmp(v.path, u.path) == 0,
            "the formatted URL is the same URL", buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    check_duration(text);
    check_url(text);
    free(text);
    return 0;
}
