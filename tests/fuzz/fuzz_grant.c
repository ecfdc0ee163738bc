/*
 * fuzz_grant.c: what a cache reads from the network about redirect grants (grant.h): a
 * grant in a request's query (grant_in_query, grant_kid, grant_verify, grant_redact,
 * grant_strip) and the front's keys (grant_jwks_read).
 *
 * At start the harness makes a key pair (grant_key_load_or_create in its temporary
 * directory) and signs one real grant with it, for org/app and a fixed digest.
 *
 * Input: byte 0, bit 0, picks the mode:
 *   0  the rest is a request's query: its grant, if any, is read, verified for org/app
 *      and the fixed digest at a fixed time, and the target is redacted and stripped;
 *   1  the rest is a JWKS.
 * In mode 0, byte 0's bit 1 puts the real grant's signature after the input's grant
 * (a signature that verifies, glued to other claims).
 *
 * Checked: every result is a documented one; only the real grant (byte for byte)
 * verifies; a redacted or stripped target holds no byte of the grant; every key read
 * from a JWKS has a kid and a point on the curve (grant_verify can use it).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access/grant.h"
#include "harness.h"

#define FUZZ_REPO "org/app"
#define FUZZ_DIGEST "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define FUZZ_NOW 1800000000

static struct {
    struct grant_key key;
    char grant[GRANT_MAX];
    size_t grant_len;
    bool ready;
} h;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[4096], path[4200], err[512];
    bool created;
    harness_tmpdir("grant", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/grant-key.pem", dir);
    if (grant_key_load_or_create(path, &h.key, &created, err, sizeof(err)) != 0) HARNESS_FAIL(err);
    struct grant_claims c = {.iat = FUZZ_NOW, .exp = FUZZ_NOW + 300};
    snprintf(c.user, sizeof(c.user), "alice");
    snprintf(c.repository, sizeof(c.repository), FUZZ_REPO);
    snprintf(c.digest, sizeof(c.digest), FUZZ_DIGEST);
    int n = grant_sign(&h.key, &c, h.grant, sizeof(h.grant));
    HARNESS_REQUIRE(n > 0, "the harness's grant is signed");
    h.grant_len = (size_t)n;
    h.ready = true;
    return 0;
}

static void query_mode(const char *q, size_t len, bool glue)
{
    size_t glen = 0;
    const char *g = grant_in_query(q, len, &glen);
    HARNESS_REQUIRE(g == NULL || (g >= q && g + glen <= q + len), "the grant lies in the query");
    char token[GRANT_MAX * 2 + 2];
    size_t tlen = 0;
    if (g != NULL && glen < GRANT_MAX) {
        memcpy(token, g, glen);
        tlen = glen;
        if (glue) {
            const char *sig = strrchr(h.grant, '.');
            size_t sl = strlen(sig);
            memcpy(token + tlen, sig, sl);
            tlen += sl;
        }
        token[tlen] = '\0';
        char kid[AUTH_KID_SIZE];
        int krc = grant_kid(token, tlen, kid);
        HARNESS_REQUIRE(krc == 0 || krc == -EINVAL, "grant_kid's result");
        HARNESS_REQUIRE(krc != 0 || strlen(kid) > 0, "a kid read is not empty");
        struct grant_claims c;
        char why[160];
        int rc = grant_verify(&h.key, token, tlen, FUZZ_REPO, strlen(FUZZ_REPO), FUZZ_DIGEST,
                              strlen(FUZZ_DIGEST), FUZZ_NOW, &c, why, sizeof(why));
        HARNESS_REQUIRE(rc == 0 || rc == -EINVAL || rc == -EPERM || rc == -EKEYEXPIRED ||
                            rc == -EACCES,
                        "grant_verify's result");
        HARNESS_REQUIRE(rc != 0 || (tlen == h.grant_len && memcmp(token, h.grant, tlen) == 0),
                        "only the harness's grant verifies");
        HARNESS_REQUIRE(rc == 0 || strlen(why) > 0, "a refusal says why");
    }
    /* What the logs show, and what the origin is sent. */
    char target[GRANT_MAX * 3];
    int tl = snprintf(target, sizeof(target), "/v2/%s/blobs/%s?%.*s", FUZZ_REPO, FUZZ_DIGEST,
                      (int)(len < GRANT_MAX ? len : GRANT_MAX), q);
    if (tl <= 0 || memchr(target, '\0', (size_t)tl) != NULL) return;
    char out[sizeof(target)];
    bool redacted = grant_redact(target, out, sizeof(out));
    size_t tg;
    const char *tq = strchr(target, '?');
    const char *tgrant = grant_in_query(tq + 1, strlen(tq + 1), &tg);
    HARNESS_REQUIRE(redacted == (tgrant != NULL), "grant_redact finds what grant_in_query does");
    if (redacted) {
        /* The grant's place says REDACTED; everything else is as it was. */
        size_t head = (size_t)(tgrant - target);
        HARNESS_REQUIRE(strncmp(out, target, head) == 0 &&
                            strncmp(out + head, "REDACTED", 8) == 0 &&
                            strcmp(out + head + 8, tgrant + tg) == 0,
                        "the redacted target is the target with its grant replaced");
    }
    bool stripped = grant_strip(target, out, sizeof(out));
    HARNESS_REQUIRE(stripped == redacted, "grant_strip finds what grant_redact does");
    HARNESS_REQUIRE(!stripped || strlen(out) < strlen(target), "a stripped target is shorter");
}

static void jwks_mode(const char *json, size_t len)
{
    struct grant_key keys[8];
    size_t n = 99;
    int rc = grant_jwks_read(json, len, keys, 8, &n);
    HARNESS_REQUIRE(rc == 0 || rc == -EINVAL || rc == -ENOMEM, "grant_jwks_read's result");
    HARNESS_REQUIRE(n <= 8, "at most cap keys");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        HARNESS_REQUIRE(keys[i].kid[0] != '\0' && keys[i].q[0] == 0x04 && !keys[i].has_private,
                        "a key read has a kid and a public point only");
        char why[160];
        int v = grant_verify(&keys[i], h.grant, h.grant_len, FUZZ_REPO, strlen(FUZZ_REPO),
                             FUZZ_DIGEST, strlen(FUZZ_DIGEST), FUZZ_NOW, NULL, why, sizeof(why));
        HARNESS_REQUIRE(v == 0 || v == -EPERM, "a key read can verify");
        HARNESS_REQUIRE(v != 0 || memcmp(keys[i].q, h.key.q, 65) == 0,
                        "only the harness's key verifies its grant");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!h.ready || size == 0) return 0;
    const char *rest = (const char *)data + 1;
    size_t len = size - 1;
    if (data[0] & 1)
        jwks_mode(rest, len);
    else
        query_mode(rest, len, (data[0] & 2) != 0);
    return 0;
}
