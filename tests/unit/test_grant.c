/*
 * test_grant.c: redirect grants (core/access/grant.c): signed and verified, every byte of
 * a grant altered, the expiry and its 5 s of leeway, another repository or blob (403),
 * another key, other algorithms, the key pair made once and kept (0600, atomic), the
 * JWKS written and read back, the query parameter, and what a verification costs.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "access/grant.h"
#include "base/base64.h"

static const char *REPO = "org/app";
static const char *DIGEST =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
static const int64_t NOW = 1800000000;

static struct grant_key key, other;

static int sign(const struct grant_key *k, const char *user, const char *repo, const char *digest,
                int64_t exp, char *out, size_t cap)
{
    struct grant_claims c = {.iat = NOW, .exp = exp};
    snprintf(c.user, sizeof(c.user), "%s", user);
    snprintf(c.repository, sizeof(c.repository), "%s", repo);
    snprintf(c.digest, sizeof(c.digest), "%s", digest);
    return grant_sign(k, &c, out, cap);
}

static int verify(const struct grant_key *k, const char *g, const char *repo, const char *digest,
                  int64_t now)
{
    char why[200];
    return grant_verify(k, g, strlen(g), repo, strlen(repo), digest, strlen(digest), now, NULL, why,
                        sizeof(why));
}

static void test_sign_verify(void)
{
    char g[GRANT_MAX];
    int n = sign(&key, "alice", REPO, DIGEST, NOW + 300, g, sizeof(g));
    CHECK(n > 0 && (size_t)n == strlen(g));
    fprintf(stderr, "a grant is %d bytes\n", n);
    struct grant_claims c;
    char why[200] = "x";
    CHECK_INT(grant_verify(&key, g, (size_t)n, REPO, strlen(REPO), DIGEST, strlen(DIGEST), NOW, &c,
                           why, sizeof(why)),
              0);
    CHECK_STR(c.user, "alice");
    CHECK_STR(c.repository, REPO);
    CHECK_STR(c.digest, DIGEST);
    CHECK(c.exp == NOW + 300 && c.iat == NOW);
    char kid[AUTH_KID_SIZE];
    CHECK_INT(grant_kid(g, (size_t)n, kid), 0);
    CHECK_STR(kid, key.kid);
    /* Deterministic: the same claims sign the same grant. */
    char g2[GRANT_MAX];
    sign(&key, "alice", REPO, DIGEST, NOW + 300, g2, sizeof(g2));
    CHECK_STR(g2, g);
    /* A user name is escaped into the claims and read back. */
    sign(&key, "o\"dd \\ user", REPO, DIGEST, NOW + 300, g2, sizeof(g2));
    CHECK_INT(grant_verify(&key, g2, strlen(g2), REPO, strlen(REPO), DIGEST, strlen(DIGEST), NOW,
                           &c, why, sizeof(why)),
              0);
    CHECK_STR(c.user, "o\"dd \\ user");
    /* No private key, no user, control bytes, no room. */
    struct grant_key pub = key;
    pub.has_private = false;
    CHECK_INT(sign(&pub, "alice", REPO, DIGEST, NOW, g2, sizeof(g2)), -EINVAL);
    CHECK_INT(sign(&key, "", REPO, DIGEST, NOW, g2, sizeof(g2)), -EINVAL);
    CHECK_INT(sign(&key, "a\nb", REPO, DIGEST, NOW, g2, sizeof(g2)), -EINVAL);
    CHECK_INT(sign(&key, "alice", REPO, DIGEST, NOW, g2, 100), -ENOSPC);
}

/* Every byte changed, one at a time, to another base64url character (or a dot): never
 * accepted. */
static void test_every_byte_altered(void)
{
    char g[GRANT_MAX];
    int n = sign(&key, "alice", REPO, DIGEST, NOW + 300, g, sizeof(g));
    static const char alphabet[] = "Q_."; /* two other characters, and a dot */
    int refused = 0;
    for (int i = 0; i < n; i++) {
        char saved = g[i];
        for (const char *a = alphabet; *a; a++) {
            if (*a == saved) continue;
            g[i] = *a;
            int rc = verify(&key, g, REPO, DIGEST, NOW);
            CHECK(rc == -EPERM || rc == -EINVAL);
            refused += rc != 0;
        }
        g[i] = saved;
    }
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW), 0);
    fprintf(stderr, "%d altered grants refused\n", refused);
    /* Cut short, lengthened, nothing at all. */
    CHECK(verify(&key, "", REPO, DIGEST, NOW) == -EINVAL);
    g[n - 1] = '\0';
    CHECK(verify(&key, g, REPO, DIGEST, NOW) == -EPERM);
    char longer[GRANT_MAX + 10];
    snprintf(longer, sizeof(longer), "%s%s", g, "AAAA");
    CHECK(verify(&key, longer, REPO, DIGEST, NOW) == -EPERM);
}

/* The claims of a real grant changed and signed again with another key: refused. */
static void test_other_key_and_claims(void)
{
    char g[GRANT_MAX];
    sign(&other, "alice", REPO, DIGEST, NOW + 300, g, sizeof(g));
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW), -EPERM); /* another kid, another key */
    /* The other key's grant with our kid in its header: the signature fails. */
    struct grant_key liar = other;
    memcpy(liar.kid, key.kid, sizeof(liar.kid));
    sign(&liar, "alice", REPO, DIGEST, NOW + 300, g, sizeof(g));
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW), -EPERM);
    CHECK_INT(grant_status(-EPERM), 401);
}

static void test_expiry_and_leeway(void)
{
    char g[GRANT_MAX];
    sign(&key, "alice", REPO, DIGEST, NOW, g, sizeof(g));
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW), 0);
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW + GRANT_LEEWAY_S), 0);
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW + GRANT_LEEWAY_S + 1), -EKEYEXPIRED);
    CHECK_INT(verify(&key, g, REPO, DIGEST, NOW + 3600), -EKEYEXPIRED);
    CHECK_INT(grant_status(-EKEYEXPIRED), 401);
}

static void test_other_repository_or_blob(void)
{
    char g[GRANT_MAX];
    sign(&key, "alice", REPO, DIGEST, NOW + 300, g, sizeof(g));
    const char *other_digest =
        "sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    CHECK_INT(verify(&key, g, "org/other", DIGEST, NOW), -EACCES);
    CHECK_INT(verify(&key, g, "org/ap", DIGEST, NOW), -EACCES);
    CHECK_INT(verify(&key, g, REPO, other_digest, NOW), -EACCES);
    CHECK_INT(grant_status(-EACCES), 403);
    /* Expired comes first: an expired grant for another blob is 401. */
    CHECK_INT(verify(&key, g, "org/other", DIGEST, NOW + 400), -EKEYEXPIRED);
}

/* A token of another algorithm, or none, with our kid: not a grant. */
static void test_other_algorithms(void)
{
    const char *headers[] = {"{\"alg\":\"none\",\"kid\":\"%s\"}",
                             "{\"alg\":\"HS256\",\"kid\":\"%s\"}",
                             "{\"alg\":\"ES384\",\"kid\":\"%s\"}"};
    for (size_t i = 0; i < 3; i++) {
        char h[200], hb[300], tok[800];
        snprintf(h, sizeof(h), headers[i], key.kid);
        base64_encode((const unsigned char *)h, strlen(h), true, hb, sizeof(hb));
        snprintf(tok, sizeof(tok), "%s.eyJzdWIiOiJhbGljZSJ9.AAAA", hb);
        CHECK_INT(verify(&key, tok, REPO, DIGEST, NOW), -EINVAL);
    }
}

static void test_key_file(void)
{
    char dir[] = "/tmp/test_grant.XXXXXX", path[64], err[300];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/grant-key.pem", dir);
    struct grant_key a, b;
    bool created = false;
    CHECK_INT(grant_key_load_or_create(path, &a, &created, err, sizeof(err)), 0);
    CHECK(created && a.has_private);
    struct stat st;
    CHECK_INT(stat(path, &st), 0);
    CHECK_INT(st.st_mode & 0777, 0600);
    CHECK_INT(grant_key_load_or_create(path, &b, &created, err, sizeof(err)), 0);
    CHECK(!created);
    CHECK_STR(b.kid, a.kid);
    CHECK(memcmp(a.d, b.d, 32) == 0 && memcmp(a.q, b.q, 65) == 0);
    /* What one signs, the other verifies. */
    char g[GRANT_MAX];
    sign(&a, "alice", REPO, DIGEST, NOW + 10, g, sizeof(g));
    CHECK_INT(verify(&b, g, REPO, DIGEST, NOW), 0);
    /* A file that is not a key is refused and left as it is. */
    FILE *f = fopen(path, "w");
    fputs("not a key\n", f);
    fclose(f);
    CHECK_INT(grant_key_load_or_create(path, &b, &created, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "not an EC P-256 private key");
    f = fopen(path, "r");
    char line[32] = "";
    CHECK(fgets(line, sizeof(line), f) != NULL);
    fclose(f);
    CHECK_STR(line, "not a key\n");
    unlink(path);
    rmdir(dir);
}

static void test_jwks(void)
{
    struct grant_key both[2] = {key, other}, read[4];
    char json[2048];
    int n = grant_jwks_write(both, 2, json, sizeof(json));
    CHECK(n > 0);
    CHECK(strstr(json, "\"d\"") == NULL); /* nothing private */
    size_t got = 0;
    CHECK_INT(grant_jwks_read(json, (size_t)n, read, 4, &got), 0);
    CHECK_INT(got, 2);
    CHECK_STR(read[0].kid, key.kid);
    CHECK(memcmp(read[0].q, key.q, 65) == 0 && !read[0].has_private);
    CHECK_STR(read[1].kid, other.kid);
    char g[GRANT_MAX];
    sign(&key, "alice", REPO, DIGEST, NOW + 10, g, sizeof(g));
    CHECK_INT(verify(&read[0], g, REPO, DIGEST, NOW), 0);
    /* Keys of other kinds, points off the curve, no kid: skipped; not a JWKS: refused. */
    const char *mixed = "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
                        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"bad\","
                        "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
                        "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}";
    CHECK_INT(grant_jwks_read(mixed, strlen(mixed), read, 4, &got), 0);
    CHECK_INT(got, 0);
    CHECK_INT(grant_jwks_read("[]", 2, read, 4, &got), -EINVAL);
    CHECK_INT(grant_jwks_write(both, 2, json, 100), -ENOSPC);
}

static void test_query(void)
{
    size_t len;
    const char *q = "ns=x&grant=abc.def.ghi&n=1";
    const char *g = grant_in_query(q, strlen(q), &len);
    CHECK(g != NULL && len == 11 && memcmp(g, "abc.def.ghi", 11) == 0);
    CHECK(grant_in_query("grant=x", 7, &len) != NULL && len == 1);
    CHECK(grant_in_query("grants=x", 8, &len) == NULL);
    CHECK(grant_in_query("agrant=x", 8, &len) == NULL);
    CHECK(grant_in_query("grant=", 6, &len) == NULL);
    CHECK(grant_in_query(NULL, 0, &len) == NULL);
    /* What the logs show, and what the origin is sent. */
    char out[256];
    CHECK(grant_redact("/v2/a/blobs/sha256:x?grant=abc.def.ghi", out, sizeof(out)));
    CHECK_STR(out, "/v2/a/blobs/sha256:x?grant=REDACTED");
    CHECK(grant_redact("/v2/a?ns=o&grant=g.g.g&n=1", out, sizeof(out)));
    CHECK_STR(out, "/v2/a?ns=o&grant=REDACTED&n=1");
    CHECK(!grant_redact("/v2/a?ns=o", out, sizeof(out)));
    CHECK(grant_strip("/v2/a/blobs/sha256:x?grant=abc.def.ghi", out, sizeof(out)));
    CHECK_STR(out, "/v2/a/blobs/sha256:x");
    CHECK(grant_strip("/v2/a?ns=o&grant=g.g.g&n=1", out, sizeof(out)));
    CHECK_STR(out, "/v2/a?ns=o&n=1");
    CHECK(grant_strip("/v2/a?ns=o&grant=g.g.g", out, sizeof(out)));
    CHECK_STR(out, "/v2/a?ns=o");
    CHECK(grant_strip("/v2/a?grant=g.g.g&n=1", out, sizeof(out)));
    CHECK_STR(out, "/v2/a?n=1");
    CHECK(!grant_strip("/v2/a", out, sizeof(out)));
}

/* What one signature and one verification cost (on the thread pool, at run time). */
static void test_cost(void)
{
    char g[GRANT_MAX];
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 20; i++)
        sign(&key, "alice", REPO, DIGEST, NOW + i, g, sizeof(g));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int i = 0; i < 20; i++)
        CHECK_INT(verify(&key, g, REPO, DIGEST, NOW), 0);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    double sign_ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6) / 20;
    double ver_ms = ((double)(t2.tv_sec - t1.tv_sec) * 1e3 + (t2.tv_nsec - t1.tv_nsec) / 1e6) / 20;
    fprintf(stderr, "  a grant signed in %.2f ms, verified in %.2f ms\n", sign_ms, ver_ms);
}

int main(void)
{
    CHECK_INT(grant_key_generate(&key), 0);
    CHECK_INT(grant_key_generate(&other), 0);
    CHECK(strcmp(key.kid, other.kid) != 0);
    RUN(test_sign_verify);
    RUN(test_every_byte_altered);
    RUN(test_other_key_and_claims);
    RUN(test_expiry_and_leeway);
    RUN(test_other_repository_or_blob);
    RUN(test_other_algorithms);
    RUN(test_key_file);
    RUN(test_jwks);
    RUN(test_query);
    RUN(test_cost);
    return check_summary();
}
