/*
 * test_auth.c: the decision cache (keys, TTLs, the token's exp, eviction against a model),
 * the 401 challenge, and bearer-token verification with keys, certificates and tokens
 * made here at run time with mbedTLS: no key material is kept in the repository.
 *
 * The PKI made for the tests (all certificates valid 2020..2040 unless said otherwise):
 *   ca          EC P-256, self-signed CA                          in the bundle
 *   rsa_signer  RSA 2048, issued by ca                            in the bundle
 *   ec_leaf     EC P-256, issued by ca                            not in the bundle (x5c)
 *   p384_leaf   EC P-384, issued by ca                            not in the bundle (x5c)
 *   expired     EC P-256, issued by ca, valid 2020..2021          not in the bundle (x5c)
 *   rogue       EC P-256, self-signed CA with ca's very name      not in the bundle
 * and, for the x5c limits and paths, keys with a public part only (an RSA-8192 key whose
 * exponent is as long as its modulus), intermediates, and a CA with key IDs in a bundle
 * of its own. auth_token_check runs on a loop of its own (signatures on its thread pool).
 */
#include "access/auth.h"
#include "check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/x509_crt.h>

#define NOW_S INT64_C(1767225600) /* 2026-01-01T00:00:00Z */
#define NOW_MS ((uint64_t)NOW_S * 1000)
#define ISSUER "test-issuer"
#define SERVICE "test-service"
#define REPO "alice/app"

/* ---- the decision cache ------------------------------------------------------------------ */

#define ORIGIN "https://registry.example.com"

static bool lookup(struct auth_cache *c, const char *origin, const char *cred, const char *repo,
                   const char *action, uint64_t now_ms, int *status)
{
    return auth_cache_lookup(c, origin, cred, strlen(cred), repo, strlen(repo), action, now_ms,
                             status, NULL);
}

static bool store(struct auth_cache *c, const char *origin, const char *cred, const char *repo,
                  const char *action, int status, uint64_t now_ms)
{
    return auth_cache_store(c, origin, cred, strlen(cred), repo, strlen(repo), action, status, NULL,
                            0, now_ms);
}

static void test_cache_store_lookup(void)
{
    struct auth_cache *c = auth_cache_new(16, 60000, 5000);
    struct auth_cache_stats st;
    int status = 0;

    CHECK(!lookup(c, ORIGIN, "Basic YTpi", REPO, "pull", NOW_MS, &status));
    CHECK(store(c, ORIGIN, "Basic YTpi", REPO, "pull", 200, NOW_MS));
    CHECK(lookup(c, ORIGIN, "Basic YTpi", REPO, "pull", NOW_MS + 1, &status));
    CHECK_INT(status, 200);
    /* Any 2xx is an allowance, stored as 200. */
    CHECK(store(c, ORIGIN, "", REPO, "pull", 206, NOW_MS));
    CHECK(lookup(c, ORIGIN, "", REPO, "pull", NOW_MS, &status));
    CHECK_INT(status, 200);
    /* A NULL credential with length 0 is the anonymous one. */
    CHECK(auth_cache_lookup(c, ORIGIN, NULL, 0, REPO, strlen(REPO), "pull", NOW_MS, &status, NULL));
    /* A new answer replaces the old one. */
    CHECK(store(c, ORIGIN, "Basic YTpi", REPO, "pull", 403, NOW_MS + 2));
    CHECK(lookup(c, ORIGIN, "Basic YTpi", REPO, "pull", NOW_MS + 3, &status));
    CHECK_INT(status, 403);

    auth_cache_stats(c, &st);
    CHECK_INT(st.hits, 4);
    CHECK_INT(st.misses, 1);
    CHECK_INT(st.entries, 2);
    CHECK_INT(st.evictions, 0);
    auth_cache_free(c);

    CHECK(auth_cache_new(0, 1, 1) == NULL);
    CHECK(auth_cache_new(AUTH_CACHE_MAX_ENTRIES + 1, 1, 1) == NULL);
    auth_cache_free(NULL);
}

/* A refusal keeps the upstream's challenge, so a cached 401 can be answered in full. */
static void test_cache_challenge(void)
{
    struct auth_cache *c = auth_cache_new(4, 60000, 5000);
    const char *ch = "Bearer realm=\"https://auth.example.com/token\",service=\"reg\","
                     "scope=\"repository:alice/app:pull\"";
    const char *got = "unset";
    int status;
    char big[AUTH_CACHE_CHALLENGE_MAX + 2];

    CHECK(auth_cache_store(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", 401, ch, strlen(ch),
                           NOW_MS));
    CHECK(auth_cache_lookup(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", NOW_MS, &status, &got));
    CHECK_INT(status, 401);
    CHECK_STR(got, ch);
    /* Replaced by an allowance: no challenge with it. */
    CHECK(auth_cache_store(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", 200, ch, strlen(ch),
                           NOW_MS));
    CHECK(auth_cache_lookup(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", NOW_MS, &status, &got));
    CHECK_INT(status, 200);
    CHECK(got == NULL);
    /* A refusal without one; only the first len bytes are kept. */
    CHECK(auth_cache_store(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", 403, NULL, 0, NOW_MS));
    CHECK(auth_cache_lookup(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", NOW_MS, &status, &got));
    CHECK(got == NULL);
    CHECK(auth_cache_store(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", 401, "Basic xyz", 5,
                           NOW_MS));
    CHECK(auth_cache_lookup(c, ORIGIN, "", 0, REPO, strlen(REPO), "pull", NOW_MS, &status, &got));
    CHECK_STR(got, "Basic");
    /* Too long, or holding a control byte: the refusal is not kept at all. */
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(!auth_cache_store(c, ORIGIN, "x", 1, REPO, strlen(REPO), "pull", 401, big,
                            AUTH_CACHE_CHALLENGE_MAX + 1, NOW_MS));
    CHECK(auth_cache_store(c, ORIGIN, "x", 1, REPO, strlen(REPO), "pull", 401, big,
                           AUTH_CACHE_CHALLENGE_MAX, NOW_MS));
    CHECK(!auth_cache_store(c, ORIGIN, "y", 1, REPO, strlen(REPO), "pull", 401, "a\r\nb: c", 8,
                            NOW_MS));
    CHECK(!auth_cache_lookup(c, ORIGIN, "y", 1, REPO, strlen(REPO), "pull", NOW_MS, &status, NULL));
    /* Evicted and expired entries let go of theirs (LeakSanitizer checks). */
    for (int i = 0; i < 10; i++) {
        char repo[16];
        snprintf(repo, sizeof(repo), "r%d", i);
        CHECK(auth_cache_store(c, ORIGIN, "", 0, repo, strlen(repo), "pull", 401, ch, strlen(ch),
                               NOW_MS));
    }
    CHECK(!auth_cache_lookup(c, ORIGIN, "", 0, "r9", 2, "pull", NOW_MS + 5000, &status, NULL));
    auth_cache_free(c);
}

static void test_cache_ttls(void)
{
    struct auth_cache *c =
        auth_cache_new(AUTH_CACHE_DEFAULT_ENTRIES, AUTH_CACHE_DEFAULT_ALLOW_TTL_MS,
                       AUTH_CACHE_DEFAULT_DENY_TTL_MS);
    struct auth_cache_stats st;
    int status = 0;

    CHECK(store(c, ORIGIN, "Basic YTpi", REPO, "pull", 200, NOW_MS));
    CHECK(lookup(c, ORIGIN, "Basic YTpi", REPO, "pull", NOW_MS + 59999, &status));
    CHECK(!lookup(c, ORIGIN, "Basic YTpi", REPO, "pull", NOW_MS + 60000, &status));
    auth_cache_stats(c, &st);
    CHECK_INT(st.entries, 0); /* the expired entry was dropped */

    static const int refusals[] = {401, 403, 404};
    for (size_t i = 0; i < 3; i++) {
        CHECK(store(c, ORIGIN, "", REPO, "pull", refusals[i], NOW_MS));
        CHECK(lookup(c, ORIGIN, "", REPO, "pull", NOW_MS + 4999, &status));
        CHECK_INT(status, refusals[i]);
        CHECK(!lookup(c, ORIGIN, "", REPO, "pull", NOW_MS + 5000, &status));
    }
    static const int not_kept[] = {0, 100, 301, 400, 429, 500, 502, 503, -1};
    for (size_t i = 0; i < sizeof(not_kept) / sizeof(not_kept[0]); i++) {
        CHECK(!store(c, ORIGIN, "", REPO, "pull", not_kept[i], NOW_MS));
        CHECK(!lookup(c, ORIGIN, "", REPO, "pull", NOW_MS, &status));
    }
    auth_cache_free(c);

    /* A TTL of 0 keeps nothing of its kind. */
    c = auth_cache_new(4, 0, 5000);
    CHECK(!store(c, ORIGIN, "", REPO, "pull", 200, NOW_MS));
    CHECK(store(c, ORIGIN, "", REPO, "pull", 401, NOW_MS));
    auth_cache_free(c);
    c = auth_cache_new(4, 60000, 0);
    CHECK(!store(c, ORIGIN, "", REPO, "pull", 404, NOW_MS));
    CHECK(store(c, ORIGIN, "", REPO, "pull", 200, NOW_MS));
    auth_cache_free(c);
}

/* base64url without padding of in[0..n), NUL-terminated into out. */
static void b64url(const void *in, size_t n, char *out, size_t cap)
{
    size_t olen = 0;
    CHECK_INT(mbedtls_base64_encode((unsigned char *)out, cap, &olen, in, n), 0);
    size_t w = 0;
    for (size_t r = 0; r < olen; r++) {
        if (out[r] == '=') continue;
        out[w++] = out[r] == '+' ? '-' : out[r] == '/' ? '_' : out[r];
    }
    out[w] = '\0';
}

/* "Bearer <h>.<p>." with the given JSON payload and no signature (for exp peeking). */
static void unsigned_bearer(const char *payload, char *out, size_t cap)
{
    char h[64], p[1024];
    b64url("{\"alg\":\"none\"}", 14, h, sizeof(h));
    b64url(payload, strlen(payload), p, sizeof(p));
    snprintf(out, cap, "Bearer %s.%s.", h, p);
}

static void test_cache_jwt_exp(void)
{
    struct auth_cache *c = auth_cache_new(16, 60000, 5000);
    char cred[1200], payload[128];
    int status;

    /* exp 10 s away: the allowance ends with the token, not after 60 s. */
    snprintf(payload, sizeof(payload), "{\"iss\":\"x\",\"exp\":%" PRId64 "}", NOW_S + 10);
    unsigned_bearer(payload, cred, sizeof(cred));
    CHECK(store(c, ORIGIN, cred, REPO, "pull", 200, NOW_MS));
    CHECK(lookup(c, ORIGIN, cred, REPO, "pull", NOW_MS + 9999, &status));
    CHECK(!lookup(c, ORIGIN, cred, REPO, "pull", NOW_MS + 10000, &status));
    /* Refusals are not capped (nor extended) by exp. */
    CHECK(store(c, ORIGIN, cred, REPO, "pull", 403, NOW_MS));
    CHECK(lookup(c, ORIGIN, cred, REPO, "pull", NOW_MS + 4999, &status));
    CHECK(!lookup(c, ORIGIN, cred, REPO, "pull", NOW_MS + 5000, &status));

    /* exp past or now: nothing stored. */
    snprintf(payload, sizeof(payload), "{\"exp\":%" PRId64 "}", NOW_S);
    unsigned_bearer(payload, cred, sizeof(cred));
    CHECK(!store(c, ORIGIN, cred, REPO, "pull", 200, NOW_MS));

    /* exp far away, no exp, an opaque bearer token: the full allow TTL. */
    static const char *const payloads[] = {"{\"exp\":99999999999}", "{\"sub\":\"a\"}",
                                           "{\"exp\":\"soon\"}", "not json"};
    for (size_t i = 0; i < 4; i++) {
        unsigned_bearer(payloads[i], cred, sizeof(cred));
        CHECK(store(c, ORIGIN, cred, REPO, "pull", 200, NOW_MS));
        CHECK(lookup(c, ORIGIN, cred, REPO, "pull", NOW_MS + 59999, &status));
        CHECK(!lookup(c, ORIGIN, cred, REPO, "pull", NOW_MS + 60000, &status));
    }
    CHECK(store(c, ORIGIN, "Bearer opaque-token", REPO, "pull", 200, NOW_MS));
    CHECK(lookup(c, ORIGIN, "Bearer opaque-token", REPO, "pull", NOW_MS + 59999, &status));
    auth_cache_free(c);
}

static void test_cache_keys(void)
{
    struct auth_cache *c = auth_cache_new(64, 60000, 5000);
    int status;

    CHECK(store(c, ORIGIN, "Basic YTpi", REPO, "pull", 200, NOW_MS));
    CHECK(!lookup(c, ORIGIN, "Basic YTpj", REPO, "pull", NOW_MS, &status));
    CHECK(!lookup(c, ORIGIN, "", REPO, "pull", NOW_MS, &status));
    CHECK(!lookup(c, ORIGIN, "Basic YTpi", "alice/other", "pull", NOW_MS, &status));
    CHECK(!lookup(c, ORIGIN, "Basic YTpi", REPO, "push", NOW_MS, &status));
    CHECK(!lookup(c, "https://other.example.com", "Basic YTpi", REPO, "pull", NOW_MS, &status));
    CHECK(lookup(c, ORIGIN, "Basic YTpi", REPO, "pull", NOW_MS, &status));

    /* The fields are length-prefixed: moving bytes between them makes another key. */
    CHECK(store(c, ORIGIN, "ab", "c", "pull", 200, NOW_MS));
    CHECK(!lookup(c, ORIGIN, "a", "bc", "pull", NOW_MS, &status));
    CHECK(!lookup(c, ORIGIN "ab", "", "c", "pull", NOW_MS, &status));
    CHECK(lookup(c, ORIGIN, "ab", "c", "pull", NOW_MS, &status));
    auth_cache_free(c);
}

/* The cache against a plain model: random stores and lookups, the same answers. */
struct model_entry {
    int key;
    int status;
    uint64_t expires, used;
};

static void test_cache_eviction_model(void)
{
    enum { MAX = 8, KEYS = 24 };
    struct auth_cache *c = auth_cache_new(MAX, 1000, 300);
    struct model_entry m[MAX];
    size_t n = 0;
    uint64_t now = NOW_MS, clock = 0, evictions = 0, hits = 0, misses = 0;
    uint64_t rng = 0x243f6a8885a308d3ULL;

    for (int op = 0; op < 20000; op++) {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        uint64_t r = rng * 0x2545f4914f6cdd1dULL;
        int key = (int)(r % KEYS);
        char repo[16];
        snprintf(repo, sizeof(repo), "r%d", key);
        now += (r >> 8) % 50;
        size_t at = n;
        for (size_t i = 0; i < n; i++)
            if (m[i].key == key) at = i;
        if ((r >> 20) % 2 == 0) {
            int status = (r >> 24) % 3 == 0 ? 403 : 200;
            bool stored = store(c, ORIGIN, "", repo, "pull", status, now);
            CHECK(stored);
            if (at == n && n == MAX) {
                size_t lru = 0;
                for (size_t i = 1; i < n; i++)
                    if (m[i].used < m[lru].used) lru = i;
                m[lru] = m[--n];
                evictions++;
                at = n;
            }
            if (at == n) n++;
            m[at] = (struct model_entry){key, status, now + (status == 200 ? 1000 : 300), ++clock};
        } else {
            int status = 0;
            bool hit = lookup(c, ORIGIN, "", repo, "pull", now, &status);
            bool want = at < n && now < m[at].expires;
            if (at < n && !want) m[at] = m[--n];
            CHECK_INT(hit, want);
            if (hit && want) {
                CHECK_INT(status, m[at].status);
                m[at].used = ++clock;
            }
            hit ? hits++ : misses++;
        }
    }
    struct auth_cache_stats st;
    auth_cache_stats(c, &st);
    CHECK_INT(st.entries, n);
    CHECK_INT(st.evictions, evictions);
    CHECK_INT(st.hits, hits);
    CHECK_INT(st.misses, misses);
    CHECK(evictions > 100);
    auth_cache_free(c);
}

static void test_cache_bound(void)
{
    struct auth_cache *c = auth_cache_new(1000, 60000, 5000);
    struct auth_cache_stats st;
    char repo[32];
    int status;

    for (int i = 0; i < 5000; i++) {
        snprintf(repo, sizeof(repo), "team/repo%d", i);
        CHECK(store(c, ORIGIN, "", repo, "pull", 200, NOW_MS));
    }
    auth_cache_stats(c, &st);
    CHECK_INT(st.entries, 1000);
    CHECK_INT(st.evictions, 4000);
    for (int i = 0; i < 5000; i++) {
        snprintf(repo, sizeof(repo), "team/repo%d", i);
        CHECK_INT(lookup(c, ORIGIN, "", repo, "pull", NOW_MS, &status), i >= 4000);
    }
    auth_cache_free(c);
}

/* ---- the challenge ----------------------------------------------------------------------- */

static void test_challenge(void)
{
    char buf[256];
    const char *want = "Bearer realm=\"https://auth.example.com/token\",service=\"registry.example."
                       "com\",scope=\"repository:alice/app:pull\"";
    int n = auth_challenge("https://auth.example.com/token", "registry.example.com", REPO,
                           strlen(REPO), buf, sizeof(buf));
    CHECK_INT(n, strlen(want));
    CHECK_STR(buf, want);
    CHECK_INT(auth_challenge("https://auth.example.com/token", "registry.example.com", REPO,
                             strlen(REPO), buf, strlen(want) + 1),
              strlen(want));
    CHECK_INT(auth_challenge("https://auth.example.com/token", "registry.example.com", REPO,
                             strlen(REPO), buf, strlen(want)),
              -ENOSPC);

    CHECK(auth_challenge("https://a/t", "svc", NULL, 0, buf, sizeof(buf)) > 0);
    CHECK_STR(buf, "Bearer realm=\"https://a/t\",service=\"svc\"");
    CHECK(auth_challenge("https://a/\"t\\", "s", NULL, 0, buf, sizeof(buf)) > 0);
    CHECK_STR(buf, "Bearer realm=\"https://a/\\\"t\\\\\",service=\"s\"");
    CHECK_INT(auth_challenge("https://a/t\r\nX: y", "s", NULL, 0, buf, sizeof(buf)), -EINVAL);
    CHECK_INT(auth_challenge("r", "s", "a\nb", 3, buf, sizeof(buf)), -EINVAL);
    CHECK_INT(auth_challenge("r", "s", NULL, 0, buf, 0), -ENOSPC);
}

/* ---- keys and certificates, made at run time --------------------------------------------- */

struct test_key {
    mbedtls_pk_context pk;
    unsigned char cert[4096]; /* DER */
    size_t cert_len;
    char kid[AUTH_KID_SIZE];
};

static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static struct test_key ca, rsa_signer, ec_leaf, p384_leaf, expired, rogue;
static char tmpdir[64], bundle_path[128];
static struct auth_verifier *verifier;
static bool pki_ok;

static int gen_ec(struct test_key *k, mbedtls_ecp_group_id curve)
{
    mbedtls_pk_init(&k->pk);
    if (mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0) return -1;
    return mbedtls_ecp_gen_key(curve, mbedtls_pk_ec(k->pk), mbedtls_ctr_drbg_random, &drbg);
}

static int gen_rsa(struct test_key *k)
{
    mbedtls_pk_init(&k->pk);
    if (mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) != 0) return -1;
    return mbedtls_rsa_gen_key(mbedtls_pk_rsa(k->pk), mbedtls_ctr_drbg_random, &drbg, 2048, 65537);
}

static int make_cert_ids(struct test_key *k, const char *subject, mbedtls_pk_context *issuer_key,
                         const char *issuer, bool is_ca, const char *from, const char *to,
                         int serial_no, bool key_ids);

/* Writes k's certificate (DER), signed by issuer_key, and k's libtrust kid. */
static int make_cert(struct test_key *k, const char *subject, mbedtls_pk_context *issuer_key,
                     const char *issuer, bool is_ca, const char *from, const char *to,
                     int serial_no)
{
    return make_cert_ids(k, subject, issuer_key, issuer, is_ca, from, to, serial_no, false);
}

/* The same, with a subject key ID and an authority key ID (from issuer_key) when key_ids. */
static int make_cert_ids(struct test_key *k, const char *subject, mbedtls_pk_context *issuer_key,
                         const char *issuer, bool is_ca, const char *from, const char *to,
                         int serial_no, bool key_ids)
{
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    unsigned char buf[4096];
    int rc;

    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, &k->pk);
    mbedtls_x509write_crt_set_issuer_key(&w, issuer_key);
    rc = mbedtls_mpi_lset(&serial, serial_no);
    if (rc == 0) rc = mbedtls_x509write_crt_set_serial(&w, &serial);
    if (rc == 0) rc = mbedtls_x509write_crt_set_subject_name(&w, subject);
    if (rc == 0) rc = mbedtls_x509write_crt_set_issuer_name(&w, issuer);
    if (rc == 0) rc = mbedtls_x509write_crt_set_validity(&w, from, to);
    if (rc == 0) rc = mbedtls_x509write_crt_set_basic_constraints(&w, is_ca, -1);
    if (rc == 0 && key_ids) rc = mbedtls_x509write_crt_set_subject_key_identifier(&w);
    if (rc == 0 && key_ids) rc = mbedtls_x509write_crt_set_authority_key_identifier(&w);
    if (rc == 0)
        rc = mbedtls_x509write_crt_set_key_usage(&w, is_ca ? MBEDTLS_X509_KU_KEY_CERT_SIGN |
                                                                 MBEDTLS_X509_KU_DIGITAL_SIGNATURE
                                                           : MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
    if (rc == 0) {
        rc = mbedtls_x509write_crt_der(&w, buf, sizeof(buf), mbedtls_ctr_drbg_random, &drbg);
        if (rc > 0) {
            memcpy(k->cert, buf + sizeof(buf) - (size_t)rc, (size_t)rc);
            k->cert_len = (size_t)rc;
            rc = 0;
        }
    }
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
    if (rc == 0) {
        int n = mbedtls_pk_write_pubkey_der(&k->pk, buf, sizeof(buf));
        if (n <= 0) return -1;
        auth_libtrust_kid(buf + sizeof(buf) - n, (size_t)n, k->kid);
    }
    return rc;
}

static bool append_pem(FILE *f, const struct test_key *k)
{
    unsigned char pem[8192];
    size_t olen;
    if (mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n",
                                 k->cert, k->cert_len, pem, sizeof(pem), &olen) != 0)
        return false;
    return fwrite(pem, 1, olen - 1, f) == olen - 1; /* olen counts the NUL */
}

static bool write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

static bool setup_pki(void)
{
    static const char pers[] = "test_auth";
    const char *from = "20200101000000", *to = "20400101000000";
    const char *ca_name = "CN=content-cache test CA,O=tests";
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, (const unsigned char *)pers,
                              sizeof(pers)) != 0)
        return false;
    if (gen_ec(&ca, MBEDTLS_ECP_DP_SECP256R1) != 0 || gen_rsa(&rsa_signer) != 0 ||
        gen_ec(&ec_leaf, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
        gen_ec(&p384_leaf, MBEDTLS_ECP_DP_SECP384R1) != 0 ||
        gen_ec(&expired, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
        gen_ec(&rogue, MBEDTLS_ECP_DP_SECP256R1) != 0)
        return false;
    if (make_cert(&ca, ca_name, &ca.pk, ca_name, true, from, to, 1) != 0 ||
        make_cert(&rsa_signer, "CN=token signer RSA", &ca.pk, ca_name, false, from, to, 2) != 0 ||
        make_cert(&ec_leaf, "CN=token signer EC", &ca.pk, ca_name, false, from, to, 3) != 0 ||
        make_cert(&p384_leaf, "CN=token signer P-384", &ca.pk, ca_name, false, from, to, 4) != 0 ||
        make_cert(&expired, "CN=token signer old", &ca.pk, ca_name, false, from, "20210101000000",
                  5) != 0 ||
        make_cert(&rogue, ca_name, &rogue.pk, ca_name, true, from, to, 1) != 0)
        return false;

    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/test_auth.XXXXXX",
             base && strlen(base) < 40 ? base : "/tmp");
    if (mkdtemp(tmpdir) == NULL) return false;
    snprintf(bundle_path, sizeof(bundle_path), "%s/bundle.pem", tmpdir);
    FILE *f = fopen(bundle_path, "w");
    if (f == NULL) return false;
    bool ok = append_pem(f, &ca) && append_pem(f, &rsa_signer);
    if (fclose(f) != 0 || !ok) return false;
    char err[256];
    return auth_token_verifier_new(bundle_path, ISSUER, SERVICE, err, sizeof(err), &verifier) == 0;
}

static void teardown_pki(void)
{
    auth_token_verifier_free(verifier);
    struct test_key *keys[] = {&ca, &rsa_signer, &ec_leaf, &p384_leaf, &expired, &rogue};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        mbedtls_pk_free(&keys[i]->pk);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    if (bundle_path[0] != '\0') unlink(bundle_path);
    if (tmpdir[0] != '\0') rmdir(tmpdir);
}

/* ---- tokens ------------------------------------------------------------------------------ */

/* Standard base64 (padded) of a certificate, for x5c. */
static void b64std(const struct test_key *k, char *out, size_t cap)
{
    size_t olen;
    CHECK_INT(mbedtls_base64_encode((unsigned char *)out, cap, &olen, k->cert, k->cert_len), 0);
}

/*
 * "Bearer <header>.<payload>.<signature>" with signer's signature by alg (RS* with an
 * RSA key, ES* with an EC key). Returns a heap string; the caller frees it.
 */
static char *sign_token(const char *header_json, const char *payload_json, const char *alg,
                        struct test_key *signer)
{
    size_t cap = 2 * (strlen(header_json) + strlen(payload_json)) + 1024;
    char *out = malloc(cap);
    int n = snprintf(out, cap, "Bearer ");
    b64url(header_json, strlen(header_json), out + n, cap - (size_t)n);
    n += (int)strlen(out + n);
    out[n++] = '.';
    b64url(payload_json, strlen(payload_json), out + n, cap - (size_t)n);
    n += (int)strlen(out + n);

    mbedtls_md_type_t md = strstr(alg, "256")   ? MBEDTLS_MD_SHA256
                           : strstr(alg, "384") ? MBEDTLS_MD_SHA384
                                                : MBEDTLS_MD_SHA512;
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(md);
    unsigned char hash[64], sig[1024];
    size_t sig_len = 0;
    CHECK_INT(mbedtls_md(info, (const unsigned char *)out + 7, (size_t)n - 7, hash), 0);
    size_t hash_len = mbedtls_md_get_size(info);
    if (alg[0] == 'R') {
        CHECK_INT(mbedtls_pk_sign(&signer->pk, md, hash, hash_len, sig, &sig_len,
                                  mbedtls_ctr_drbg_random, &drbg),
                  0);
    } else {
        mbedtls_ecp_keypair *kp = mbedtls_pk_ec(signer->pk);
        size_t coord = (kp->grp.pbits + 7) / 8;
        mbedtls_mpi r, s;
        mbedtls_mpi_init(&r);
        mbedtls_mpi_init(&s);
        CHECK_INT(mbedtls_ecdsa_sign(&kp->grp, &r, &s, &kp->d, hash, hash_len,
                                     mbedtls_ctr_drbg_random, &drbg),
                  0);
        CHECK_INT(mbedtls_mpi_write_binary(&r, sig, coord), 0);
        CHECK_INT(mbedtls_mpi_write_binary(&s, sig + coord, coord), 0);
        sig_len = 2 * coord;
        mbedtls_mpi_free(&r);
        mbedtls_mpi_free(&s);
    }
    out[n++] = '.';
    b64url(sig, sig_len, out + n, cap - (size_t)n);
    return out;
}

/* A header {"typ":"JWT","alg":alg} plus extra members (",\"kid\":...") into buf. */
static const char *header(char *buf, size_t cap, const char *alg, const char *extra)
{
    snprintf(buf, cap, "{\"typ\":\"JWT\",\"alg\":\"%s\"%s}", alg, extra);
    return buf;
}

static const char *kid_of(char *buf, size_t cap, const struct test_key *k)
{
    snprintf(buf, cap, ",\"kid\":\"%s\"", k->kid);
    return buf;
}

/* Claims that grant pulling REPO at NOW_S, with the given parts replaced. */
struct claims {
    const char *iss; /* JSON value, or NULL to leave the claim out */
    const char *aud;
    int64_t exp, nbf; /* INT64_MIN: leave out */
    const char *access;
};

static const struct claims good = {
    "\"" ISSUER "\"",
    "\"" SERVICE "\"",
    NOW_S + 300,
    NOW_S - 10,
    "[{\"type\":\"repository\",\"name\":\"" REPO "\",\"actions\":[\"pull\"]}]",
};

static const char *payload(char *buf, size_t cap, struct claims c)
{
    int n = snprintf(buf, cap, "{\"sub\":\"alice\",\"jti\":\"j1\",\"iat\":%" PRId64, NOW_S - 10);
    if (c.iss) n += snprintf(buf + n, cap - (size_t)n, ",\"iss\":%s", c.iss);
    if (c.aud) n += snprintf(buf + n, cap - (size_t)n, ",\"aud\":%s", c.aud);
    if (c.exp != INT64_MIN) n += snprintf(buf + n, cap - (size_t)n, ",\"exp\":%" PRId64, c.exp);
    if (c.nbf != INT64_MIN) n += snprintf(buf + n, cap - (size_t)n, ",\"nbf\":%" PRId64, c.nbf);
    if (c.access) n += snprintf(buf + n, cap - (size_t)n, ",\"access\":%s", c.access);
    snprintf(buf + n, cap - (size_t)n, "}");
    return buf;
}

/*
 * Verifies token for REPO at now and checks the result; a refusal must come with a
 * reason that holds no part of the token. Frees token.
 */
static void expect_at(char *token, int64_t now, int want, const char *reason_part, int line)
{
    char why[200] = "";
    int rc = auth_token_verify(verifier, token, strlen(token), REPO, strlen(REPO), "pull", now, why,
                               sizeof(why));
    if (rc != want)
        fprintf(stderr, "line %d: verify returned %d (%s), expected %d\n", line, rc, why, want);
    CHECK_INT(rc, want);
    if (want != 0) {
        CHECK(why[0] != '\0');
        CHECK(strstr(why, "eyJ") == NULL);
        if (reason_part != NULL) CHECK_CONTAINS(why, reason_part);
    }
    free(token);
}

#define EXPECT(token, want, reason) expect_at((token), NOW_S, (want), (reason), __LINE__)

static void test_token_keys(void)
{
    char h[8192], p[2048], extra[8192];
    const char *pl = payload(p, sizeof(p), good);
    char c1[4096], c2[4096];

    /* kid naming a bundle certificate's key. */
    EXPECT(sign_token(header(h, sizeof(h), "RS256", kid_of(extra, sizeof(extra), &rsa_signer)), pl,
                      "RS256", &rsa_signer),
           0, NULL);
    EXPECT(sign_token(header(h, sizeof(h), "RS384", kid_of(extra, sizeof(extra), &rsa_signer)), pl,
                      "RS384", &rsa_signer),
           0, NULL);
    EXPECT(sign_token(header(h, sizeof(h), "RS512", kid_of(extra, sizeof(extra), &rsa_signer)), pl,
                      "RS512", &rsa_signer),
           0, NULL);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", kid_of(extra, sizeof(extra), &ca)), pl, "ES256",
                      &ca),
           0, NULL);
    /* Neither kid nor x5c: every bundle key is tried. */
    EXPECT(sign_token(header(h, sizeof(h), "RS256", ""), pl, "RS256", &rsa_signer), 0, NULL);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", ""), pl, "ES256", &ca), 0, NULL);

    /* x5c: a leaf issued by the bundle's CA, alone or with the CA after it. */
    b64std(&ec_leaf, c1, sizeof(c1));
    b64std(&ca, c2, sizeof(c2));
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c1);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &ec_leaf), 0, NULL);
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\",\"%s\"]", c1, c2);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &ec_leaf), 0, NULL);
    /* A bundle certificate may come in x5c too. */
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c2);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &ca), 0, NULL);
    /* x5c wins over a kid that names another key. */
    snprintf(extra, sizeof(extra), ",\"kid\":\"%s\",\"x5c\":[\"%s\"]", ca.kid, c1);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &ec_leaf), 0, NULL);
    b64std(&p384_leaf, c1, sizeof(c1));
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c1);
    EXPECT(sign_token(header(h, sizeof(h), "ES384", extra), pl, "ES384", &p384_leaf), 0, NULL);
    /* JSON may escape '/' in the base64 of x5c. */
    b64std(&ec_leaf, c1, sizeof(c1));
    {
        char esc[8192];
        size_t w = 0;
        for (size_t r = 0; c1[r] != '\0'; r++) {
            if (c1[r] == '/') esc[w++] = '\\';
            esc[w++] = c1[r];
        }
        esc[w] = '\0';
        snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", esc);
        EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &ec_leaf), 0, NULL);
    }
}

static void test_token_untrusted_keys(void)
{
    char h[8192], p[2048], extra[8192], c1[4096];
    const char *pl = payload(p, sizeof(p), good);

    /* A key that is not in the bundle, by kid or by trying each. */
    EXPECT(sign_token(header(h, sizeof(h), "ES256", kid_of(extra, sizeof(extra), &ec_leaf)), pl,
                      "ES256", &ec_leaf),
           -EPERM, "kid");
    EXPECT(sign_token(header(h, sizeof(h), "ES256", ""), pl, "ES256", &rogue), -EPERM, NULL);
    /* A kid that names a bundle key, with a signature by another key. */
    EXPECT(sign_token(header(h, sizeof(h), "ES256", kid_of(extra, sizeof(extra), &ca)), pl, "ES256",
                      &rogue),
           -EPERM, "signature");
    /* An alg that does not fit the key the kid names. */
    EXPECT(sign_token(header(h, sizeof(h), "RS256", kid_of(extra, sizeof(extra), &ca)), pl, "RS256",
                      &rsa_signer),
           -EPERM, NULL);
    EXPECT(sign_token(header(h, sizeof(h), "ES384", kid_of(extra, sizeof(extra), &ca)), pl, "ES384",
                      &p384_leaf),
           -EPERM, NULL);
    /* x5c: a self-signed certificate with the CA's name but not its key. */
    b64std(&rogue, c1, sizeof(c1));
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c1);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &rogue), -EPERM, "bundle");
    /* x5c: a good chain, but the token signed by another key. */
    b64std(&ec_leaf, c1, sizeof(c1));
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c1);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &ca), -EPERM, "signature");
    /* x5c: a certificate that expired in 2021 is refused now and good in 2020. */
    b64std(&expired, c1, sizeof(c1));
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c1);
    EXPECT(sign_token(header(h, sizeof(h), "ES256", extra), pl, "ES256", &expired), -EPERM, "time");
    struct claims in_2020 = good;
    int64_t t2020 = INT64_C(1593561600); /* 2020-07-01 */
    in_2020.exp = t2020 + 300;
    in_2020.nbf = t2020 - 10;
    expect_at(sign_token(h, payload(p, sizeof(p), in_2020), "ES256", &expired), t2020, 0, NULL,
              __LINE__);
    /* ...and none of them before its notBefore. */
    in_2020.exp = INT64_C(1546300800) + 300; /* 2019-01-01 */
    in_2020.nbf = INT64_C(1546300800);
    expect_at(sign_token(h, payload(p, sizeof(p), in_2020), "ES256", &expired), INT64_C(1546300800),
              -EPERM, "time", __LINE__);
}

static void test_token_claims(void)
{
    char h[512], p[2048], extra[128];
    const char *hd = header(h, sizeof(h), "RS256", kid_of(extra, sizeof(extra), &rsa_signer));
    struct claims c;
#define CLAIMS_EXPECT(want, reason)                                                                \
    EXPECT(sign_token(hd, payload(p, sizeof(p), c), "RS256", &rsa_signer), want, reason)

    c = good, c.iss = "\"other-issuer\"";
    CLAIMS_EXPECT(-EACCES, "issuer");
    c = good, c.iss = NULL;
    CLAIMS_EXPECT(-EACCES, "issuer");
    c = good, c.iss = "[\"" ISSUER "\"]";
    CLAIMS_EXPECT(-EACCES, "issuer");
    c = good, c.aud = "\"other-service\"";
    CLAIMS_EXPECT(-EACCES, "audience");
    c = good, c.aud = NULL;
    CLAIMS_EXPECT(-EACCES, "audience");
    c = good, c.aud = "[\"a\",\"" SERVICE "\"]";
    CLAIMS_EXPECT(0, NULL);
    c = good, c.aud = "[\"a\",\"b\"]";
    CLAIMS_EXPECT(-EACCES, "audience");
    c = good, c.aud = "[]";
    CLAIMS_EXPECT(-EACCES, "audience");

    /* exp and nbf, with 60 s of leeway each way. */
    c = good, c.exp = NOW_S - 60;
    CLAIMS_EXPECT(0, NULL);
    c = good, c.exp = NOW_S - 61;
    CLAIMS_EXPECT(-EACCES, "expired");
    c = good, c.exp = INT64_MIN;
    CLAIMS_EXPECT(-EACCES, "exp");
    c = good, c.nbf = NOW_S + 60;
    CLAIMS_EXPECT(0, NULL);
    c = good, c.nbf = NOW_S + 61;
    CLAIMS_EXPECT(-EACCES, "not valid yet");
    c = good, c.nbf = INT64_MIN;
    CLAIMS_EXPECT(0, NULL);

    /* exp, nbf and iat as Docker Distribution reads them (Go's int64): integers only; a
     * fraction or an exponent refuses the token; null or absent is 0 (for exp: expired). */
    {
        static const struct {
            const char *times;
            int want;
            const char *reason;
        } cases[] = {
            {"\"exp\":%1$lld", 0, NULL},
            {"\"exp\":%1$lld.5", -EACCES, "exp"},
            {"\"exp\":%1$lld.0", -EACCES, "exp"},
            {"\"exp\":1.7672259e9", -EACCES, "exp"},
            {"\"exp\":\"%1$lld\"", -EACCES, "exp"},
            {"\"exp\":null", -EACCES, "exp"},
            {"\"exp\":%1$lld,\"nbf\":null,\"iat\":null", 0, NULL},
            {"\"exp\":%1$lld,\"nbf\":-0,\"iat\":0", 0, NULL},
            {"\"exp\":%1$lld,\"nbf\":%2$lld.5", -EACCES, "nbf"},
            {"\"exp\":%1$lld,\"nbf\":true", -EACCES, "nbf"},
            {"\"exp\":%1$lld,\"iat\":%2$lld.5", -EACCES, "iat"},
            {"\"exp\":%1$lld,\"iat\":\"now\"", -EACCES, "iat"},
            {"\"exp\":%1$lld,\"iat\":9223372036854775808", -EACCES, "iat"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            char times[256], pl[1024];
            snprintf(times, sizeof(times), cases[i].times, (long long)(NOW_S + 300),
                     (long long)(NOW_S - 10));
            snprintf(pl, sizeof(pl),
                     "{\"iss\":\"" ISSUER "\",\"aud\":\"" SERVICE "\",%s,\"access\":%s}", times,
                     good.access);
            expect_at(sign_token(hd, pl, "RS256", &rsa_signer), NOW_S, cases[i].want,
                      cases[i].reason, __LINE__);
        }
    }

    /* access */
    c = good,
    c.access = "[{\"type\":\"repository\",\"name\":\"alice/other\",\"actions\":[\"pull\"]}]";
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = "[{\"type\":\"repository\",\"name\":\"" REPO "\",\"actions\":[\"push\"]}]";
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = "[{\"type\":\"repository\",\"name\":\"" REPO "\",\"actions\":[]}]";
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = "[{\"type\":\"registry\",\"name\":\"" REPO "\",\"actions\":[\"pull\"]}]";
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = "[{\"type\":\"repository\",\"name\":\"" REPO "\",\"actions\":\"pull\"}]";
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = "[]";
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = NULL;
    CLAIMS_EXPECT(-EACCES, "access");
    c = good, c.access = "[{\"type\":\"repository\",\"name\":\"" REPO "\",\"actions\":[\"*\"]}]";
    CLAIMS_EXPECT(0, NULL);
    c = good, c.access = "[{\"type\":\"repository\",\"name\":\"x\",\"actions\":[\"pull\"]},"
                         "{\"type\":\"repository\",\"name\":\"" REPO
                         "\",\"actions\":[\"push\",\"pull\"]}]";
    CLAIMS_EXPECT(0, NULL);
    /* Escapes are decoded before comparing. */
    c = good, c.access = "[{\"type\":\"repository\",\"name\":\"alice\\/app\",\"actions\":"
                         "[\"pu\\u006cl\"]}]";
    CLAIMS_EXPECT(0, NULL);
#undef CLAIMS_EXPECT

    /* The action asked for is the one checked. */
    char why[128];
    char *t = sign_token(hd, payload(p, sizeof(p), good), "RS256", &rsa_signer);
    CHECK_INT(auth_token_verify(verifier, t, strlen(t), REPO, strlen(REPO), "push", NOW_S, why,
                                sizeof(why)),
              -EACCES);
    CHECK_INT(
        auth_token_verify(verifier, t, strlen(t), "alice/ap", 8, "pull", NOW_S, why, sizeof(why)),
        -EACCES);
    CHECK_INT(auth_token_verify(verifier, t, strlen(t), REPO, strlen(REPO), "pull", NOW_S, NULL, 0),
              0);
    free(t);
}

/* Replaces the part'th (0..2) dot-separated part of token with text. */
static char *replace_part(const char *token, int part, const char *text)
{
    char *out = malloc(strlen(token) + strlen(text) + 1);
    const char *start = token + 7, *end;
    for (int k = 0; k < part; k++)
        start = strchr(start, '.') + 1;
    end = strchr(start, '.');
    if (end == NULL) end = start + strlen(start);
    sprintf(out, "%.*s%s%s", (int)(start - token), token, text, end);
    return out;
}

static void test_token_malformed(void)
{
    char h[512], p[2048], extra[128], b[1024];
    const char *pl = payload(p, sizeof(p), good);
    const char *hd = header(h, sizeof(h), "ES256", kid_of(extra, sizeof(extra), &ca));
    char *good_token = sign_token(hd, pl, "ES256", &ca);
    EXPECT(strdup(good_token), 0, NULL);

    /* Tampered payload: the same signature over other claims. */
    struct claims other = good;
    other.access = "[{\"type\":\"repository\",\"name\":\"bob/app\",\"actions\":[\"pull\"]}]";
    const char *pl2 = payload(b, sizeof(b), other);
    char pl2_b64[2048];
    b64url(pl2, strlen(pl2), pl2_b64, sizeof(pl2_b64));
    EXPECT(replace_part(good_token, 1, pl2_b64), -EPERM, "signature");
    /* A signature with a bit flipped, cut short, or empty. */
    char *t = strdup(good_token);
    t[strlen(t) - 5] = t[strlen(t) - 5] == 'A' ? 'B' : 'A';
    EXPECT(t, -EPERM, NULL);
    t = strdup(good_token);
    t[strlen(t) - 2] = '\0'; /* 86 base64url characters cut to 84: 63 bytes */
    EXPECT(t, -EPERM, NULL);
    EXPECT(replace_part(good_token, 2, ""), -EPERM, NULL);

    /* alg none (unsigned), HS256 and unknown algs. */
    b64url("{\"alg\":\"none\"}", 14, b, sizeof(b));
    t = replace_part(good_token, 0, b);
    EXPECT(replace_part(t, 2, ""), -ENOTSUP, "alg");
    free(t);
    EXPECT(sign_token("{\"alg\":\"HS256\"}", pl, "ES256", &ca), -ENOTSUP, "alg");
    EXPECT(sign_token("{\"alg\":\"es256\"}", pl, "ES256", &ca), -ENOTSUP, "alg");
    EXPECT(sign_token("{\"typ\":\"JWT\"}", pl, "ES256", &ca), -EINVAL, "alg");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"alg\":\"ES256\"}", pl, "ES256", &ca), -EINVAL, "alg");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"crit\":[\"exp\"]}", pl, "ES256", &ca), -ENOTSUP,
           "crit");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"kid\":7}", pl, "ES256", &ca), -EINVAL, "kid");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"x5c\":\"AAAA\"}", pl, "ES256", &ca), -EINVAL, "x5c");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"x5c\":[]}", pl, "ES256", &ca), -EINVAL, "x5c");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"x5c\":[\"not base64!\"]}", pl, "ES256", &ca), -EINVAL,
           "x5c");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"x5c\":[\"AAAA\"]}", pl, "ES256", &ca), -EINVAL, "x5c");
    EXPECT(sign_token("{\"alg\":\"ES256\",\"x5c\":[1]}", pl, "ES256", &ca), -EINVAL, "x5c");

    /* Not JSON, or not an object, in the header or (signed) in the payload. */
    EXPECT(sign_token("{\"alg\":\"ES256\"", pl, "ES256", &ca), -EINVAL, "header");
    EXPECT(sign_token("[\"ES256\"]", pl, "ES256", &ca), -EINVAL, "header");
    EXPECT(sign_token(hd, "{\"iss\":", "ES256", &ca), -EINVAL, "claims");
    EXPECT(sign_token(hd, "\"claims\"", "ES256", &ca), -EINVAL, "claims");

    /* base64url: the standard alphabet, padding, stray bits and bad lengths. */
    /* A '+' or '/' put into the signature: the token need not hold a '-' or '_' to swap. */
    t = strdup(good_token);
    strrchr(t, '.')[1] = '+';
    EXPECT(t, -EINVAL, NULL);
    t = strdup(good_token);
    strrchr(t, '.')[2] = '/';
    EXPECT(t, -EINVAL, NULL);
    b64url(hd, strlen(hd), b, sizeof(b));
    strcat(b, "=");
    EXPECT(replace_part(good_token, 0, b), -EINVAL, NULL);
    b64url(hd, strlen(hd), b, sizeof(b));
    strcat(b, "A"); /* a length of 4k+1 */
    if (strlen(b) % 4 != 1) strcat(b, "AA");
    EXPECT(replace_part(good_token, 0, b), -EINVAL, NULL);
    EXPECT(replace_part(good_token, 0, "e30"), -EINVAL, NULL); /* "{}" with a stray bit */

    /* The frame: scheme, parts, size. */
    EXPECT(replace_part(good_token, 0, ""), -EINVAL, NULL);
    const char *frames[] = {"",           "Bearer",     "Bearer ",        "Basic YTpi",
                            "Bearer abc", "Bearer a.b", "Bearer a.b.c.d", "Bearer  a.b.c",
                            "Bearera.b.c"};
    for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++)
        EXPECT(strdup(frames[i]), -EINVAL, NULL);
    t = strdup(good_token);
    memcpy(t, "bEARER", 6);
    EXPECT(t, 0, NULL);
    t = malloc(strlen(good_token) + 2);
    sprintf(t, "%s ", good_token);
    EXPECT(t, -EINVAL, NULL);

    /* A 9 KiB token is refused before it is read, and so is one of 8 KiB + 1. */
    char big_aud[9300];
    memset(big_aud, 'a', 9 * 1024);
    big_aud[0] = '"';
    big_aud[9 * 1024 - 1] = '"';
    big_aud[9 * 1024] = '\0';
    other = good;
    other.aud = big_aud;
    char *big_payload = malloc(12000);
    payload(big_payload, 12000, other);
    t = sign_token(hd, big_payload, "ES256", &ca);
    CHECK(strlen(t) > 9 * 1024);
    EXPECT(t, -EMSGSIZE, "8 KiB");
    free(big_payload);
    t = calloc(AUTH_TOKEN_MAX + 2, 1);
    memset(t, 'A', AUTH_TOKEN_MAX + 1);
    memcpy(t, "Bearer ", 7);
    EXPECT(t, -EMSGSIZE, NULL);
    free(good_token);
}

/* Random edits of a valid token: refused (never accepted, never a crash). */
static void test_token_mutations(void)
{
    char h[512], p[2048], extra[128];
    const char *hd = header(h, sizeof(h), "ES256", kid_of(extra, sizeof(extra), &ca));
    char *good_token = sign_token(hd, payload(p, sizeof(p), good), "ES256", &ca);
    size_t len = strlen(good_token);
    uint64_t rng = 0x853c49e6748fea9bULL;
    int accepted = 0;

    for (int round = 0; round < 3000; round++) {
        char *t = malloc(len);
        memcpy(t, good_token, len);
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        uint64_t r = rng * 0x2545f4914f6cdd1dULL;
        size_t at = 7 + (size_t)(r % (len - 7));
        size_t n = len;
        switch ((r >> 32) % 3) {
        case 0:
            t[at] = (char)(t[at] ^ (1u << ((r >> 40) % 8)));
            break;
        case 1:
            n = at;
            break;
        default:
            t[at] = "AQgw-_.=+/ "[(r >> 40) % 11];
            break;
        }
        bool same = n == len && memcmp(t, good_token, len) == 0;
        int rc = auth_token_verify(verifier, t, n, REPO, strlen(REPO), "pull", NOW_S, NULL, 0);
        if (rc == 0 && !same) accepted++;
        free(t);
    }
    CHECK_INT(accepted, 0);
    free(good_token);
}

/* ---- x5c: what is refused before any signature ---------------------------------------------- */

/*
 * A key with a public part only: a random odd modulus of `bits` bits and exponent e (hex),
 * or, when e is NULL, the modulus minus two (an exponent as long as the modulus: the
 * stalling key of issue 13).
 */
static int make_rsa_public(struct test_key *k, size_t bits, const char *e_hex)
{
    mbedtls_mpi n, e;
    mbedtls_mpi_init(&n);
    mbedtls_mpi_init(&e);
    mbedtls_pk_init(&k->pk);
    int rc = mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA));
    if (rc == 0) rc = mbedtls_mpi_fill_random(&n, bits / 8, mbedtls_ctr_drbg_random, &drbg);
    if (rc == 0) rc = mbedtls_mpi_set_bit(&n, bits - 1, 1);
    if (rc == 0) rc = mbedtls_mpi_set_bit(&n, 0, 1);
    if (rc == 0)
        rc =
            e_hex != NULL ? mbedtls_mpi_read_string(&e, 16, e_hex) : mbedtls_mpi_sub_int(&e, &n, 2);
    if (rc == 0) rc = mbedtls_rsa_import(mbedtls_pk_rsa(k->pk), &n, NULL, NULL, NULL, &e);
    if (rc == 0) rc = mbedtls_rsa_complete(mbedtls_pk_rsa(k->pk));
    mbedtls_mpi_free(&n);
    mbedtls_mpi_free(&e);
    return rc;
}

/*
 * Replaces k's certificate signature by junk: sig_len bytes (the first one 0, so that it is
 * below any modulus of that length) under sha256WithRSAEncryption: a certificate whose
 * check with an RSA key of sig_len bytes runs the whole modular exponentiation.
 */
static int junk_rsa_signature(struct test_key *k, size_t sig_len)
{
    mbedtls_x509_crt crt;
    unsigned char buf[8192], junk[1024];
    mbedtls_x509_crt_init(&crt);
    int rc = mbedtls_x509_crt_parse_der(&crt, k->cert, k->cert_len);
    if (rc != 0 || sig_len > sizeof(junk) || crt.tbs.len + sig_len + 64 > sizeof(buf)) {
        mbedtls_x509_crt_free(&crt);
        return -1;
    }
    memset(junk, 0x5a, sig_len);
    junk[0] = 0;
    unsigned char *p = buf + sizeof(buf);
    int len = mbedtls_asn1_write_bitstring(&p, buf, junk, sig_len * 8);
    len += mbedtls_asn1_write_algorithm_identifier(&p, buf, MBEDTLS_OID_PKCS1_SHA256,
                                                   MBEDTLS_OID_SIZE(MBEDTLS_OID_PKCS1_SHA256), 0);
    p -= crt.tbs.len;
    memcpy(p, crt.tbs.p, crt.tbs.len);
    len += (int)crt.tbs.len;
    len += mbedtls_asn1_write_len(&p, buf, (size_t)len);
    len += mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
    mbedtls_x509_crt_free(&crt);
    if (len <= 0 || (size_t)len > sizeof(k->cert)) return -1;
    memcpy(k->cert, p, (size_t)len);
    k->cert_len = (size_t)len;
    return 0;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "Bearer ..." signed by signer (ES256 or ES512 by its curve), with x5c of the certs. */
static char *x5c_token(struct test_key *signer, struct test_key *const *certs, size_t n,
                       const char *alg)
{
    char h[16384], p[2048], extra[16000], b64[6000];
    int w = snprintf(extra, sizeof(extra), ",\"x5c\":[");
    for (size_t i = 0; i < n; i++) {
        b64std(certs[i], b64, sizeof(b64));
        w += snprintf(extra + w, sizeof(extra) - (size_t)w, "%s\"%s\"", i ? "," : "", b64);
    }
    snprintf(extra + w, sizeof(extra) - (size_t)w, "]");
    return sign_token(header(h, sizeof(h), alg, extra), payload(p, sizeof(p), good), alg, signer);
}

/* Each refusal rule of x5c.h, decided on the loop: microseconds, not a signature check. */
static void test_x5c_refused_unsigned(void)
{
    struct test_key hostile, leaf, rsa_big, rsa_e33, rsa_e32, p521, brainpool;
    const char *from = "20200101000000", *to = "20400101000000";
    const char *ca_name = "CN=content-cache test CA,O=tests";
    CHECK_INT(gen_ec(&leaf, MBEDTLS_ECP_DP_SECP256R1), 0);

    /* Issue 13's token: an RSA-8192 "intermediate" whose exponent is as long as its
     * modulus (its signature check: ~0.4 s), and a leaf naming it as issuer. */
    CHECK_INT(make_rsa_public(&hostile, 8192, NULL), 0);
    CHECK_INT(
        make_cert(&hostile, "CN=hostile intermediate", &rogue.pk, ca_name, true, from, to, 40), 0);
    CHECK_INT(make_cert(&leaf, "CN=hostile leaf", &rsa_signer.pk, "CN=hostile intermediate", false,
                        from, to, 41),
              0);
    CHECK_INT(junk_rsa_signature(&leaf, 1024), 0);
    struct test_key *chain[] = {&leaf, &hostile};
    char *t = x5c_token(&leaf, chain, 2, "ES256");
    char why[AUTH_TOKEN_WHY_MAX];
    double start = mono_s();
    int rc = auth_token_verify(verifier, t, strlen(t), REPO, strlen(REPO), "pull", NOW_S, why,
                               sizeof(why));
    double took = mono_s() - start;
    fprintf(stderr, "  the hostile token of issue 13 refused in %.3f ms: %s\n", took * 1e3, why);
    CHECK_INT(rc, -EPERM);
    CHECK_CONTAINS(why, "8192 bits");
    CHECK(took < 0.05); /* its signature check alone took 0.4 s */
    free(t);

    /* RSA over 4096 bits, or with an exponent over 2^32; 2^32 - 1 is within the limits. */
    CHECK_INT(make_rsa_public(&rsa_big, 4160, "10001"), 0);
    CHECK_INT(make_cert(&rsa_big, "CN=big", &ca.pk, ca_name, true, from, to, 42), 0);
    CHECK_INT(make_rsa_public(&rsa_e33, 4096, "100000001"), 0);
    CHECK_INT(make_cert(&rsa_e33, "CN=e33", &ca.pk, ca_name, true, from, to, 43), 0);
    CHECK_INT(make_rsa_public(&rsa_e32, 4096, "FFFFFFFF"), 0);
    CHECK_INT(make_cert(&rsa_e32, "CN=e32", &ca.pk, ca_name, true, from, to, 44), 0);
    struct test_key *big[] = {&ec_leaf, &rsa_big};
    EXPECT(x5c_token(&ec_leaf, big, 2, "ES256"), -EPERM, "RSA key of 4160 bits");
    struct test_key *e33[] = {&ec_leaf, &rsa_e33};
    EXPECT(x5c_token(&ec_leaf, e33, 2, "ES256"), -EPERM, "exponent has 33 bits");
    struct test_key *e32[] = {&ec_leaf, &rsa_e32};
    EXPECT(x5c_token(&ec_leaf, e32, 2, "ES256"), 0, NULL); /* an extra certificate: unused */
    struct test_key *e32_leaf[] = {&rsa_e32};
    EXPECT(x5c_token(&ec_leaf, e32_leaf, 1, "ES256"), -EPERM, "signature"); /* within limits */

    /* EC only on P-256 and P-384: a P-521 leaf issued by the bundle's CA is refused. */
    CHECK_INT(gen_ec(&p521, MBEDTLS_ECP_DP_SECP521R1), 0);
    CHECK_INT(make_cert(&p521, "CN=p521", &ca.pk, ca_name, false, from, to, 45), 0);
    struct test_key *p521_chain[] = {&p521};
    EXPECT(x5c_token(&p521, p521_chain, 1, "ES512"), -EPERM, "secp521r1");
    CHECK_INT(gen_ec(&brainpool, MBEDTLS_ECP_DP_BP256R1), 0);
    CHECK_INT(make_cert(&brainpool, "CN=bp", &ca.pk, ca_name, false, from, to, 46), 0);
    struct test_key *bp_chain[] = {&ec_leaf, &brainpool};
    EXPECT(x5c_token(&ec_leaf, bp_chain, 2, "ES256"), -EPERM, "brainpoolP256r1");

    /* No path to the bundle: a leaf whose issuer is in neither the chain nor the bundle. */
    struct test_key *orphan[] = {&leaf};
    EXPECT(x5c_token(&leaf, orphan, 1, "ES256"), -EPERM, "does not lead");

    struct test_key *keys[] = {&hostile, &leaf, &rsa_big, &rsa_e33, &rsa_e32, &p521, &brainpool};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        mbedtls_pk_free(&keys[i]->pk);
}

/* Paths: through intermediates in any order, and key IDs where both sides have them. */
static void test_x5c_paths(void)
{
    struct test_key inter, leaf2, ids_ca, ids_leaf, wrong_aki;
    const char *from = "20200101000000", *to = "20400101000000";
    const char *ca_name = "CN=content-cache test CA,O=tests";
    CHECK_INT(gen_ec(&inter, MBEDTLS_ECP_DP_SECP384R1), 0);
    CHECK_INT(gen_ec(&leaf2, MBEDTLS_ECP_DP_SECP256R1), 0);
    CHECK_INT(make_cert(&inter, "CN=intermediate", &ca.pk, ca_name, true, from, to, 50), 0);
    CHECK_INT(make_cert(&leaf2, "CN=leaf2", &inter.pk, "CN=intermediate", false, from, to, 51), 0);
    struct test_key *in_order[] = {&leaf2, &inter};
    EXPECT(x5c_token(&leaf2, in_order, 2, "ES256"), 0, NULL);
    struct test_key *with_extra[] = {&leaf2, &rogue, &rsa_signer, &inter};
    EXPECT(x5c_token(&leaf2, with_extra, 4, "ES256"), 0, NULL);
    struct test_key *missing[] = {&leaf2, &rogue};
    EXPECT(x5c_token(&leaf2, missing, 2, "ES256"), -EPERM, "does not lead");
    /* An intermediate that names the CA but was signed by another key: found by the first
     * signature checked, the top one. */
    struct test_key forged;
    CHECK_INT(gen_ec(&forged, MBEDTLS_ECP_DP_SECP256R1), 0);
    CHECK_INT(make_cert(&forged, "CN=intermediate", &rogue.pk, ca_name, true, from, to, 52), 0);
    struct test_key *forged_chain[] = {&leaf2, &forged};
    EXPECT(x5c_token(&leaf2, forged_chain, 2, "ES256"), -EPERM, "not signed by a certificate");

    /* Key IDs: a bundle CA with a subject key ID; a leaf whose authority key ID is another
     * key's is refused by name and key ID, before any signature. */
    char path[192], err[256];
    CHECK_INT(gen_ec(&ids_ca, MBEDTLS_ECP_DP_SECP256R1), 0);
    CHECK_INT(gen_ec(&ids_leaf, MBEDTLS_ECP_DP_SECP256R1), 0);
    CHECK_INT(gen_ec(&wrong_aki, MBEDTLS_ECP_DP_SECP256R1), 0);
    CHECK_INT(
        make_cert_ids(&ids_ca, "CN=ids CA", &ids_ca.pk, "CN=ids CA", true, from, to, 60, true), 0);
    CHECK_INT(
        make_cert_ids(&ids_leaf, "CN=ids leaf", &ids_ca.pk, "CN=ids CA", false, from, to, 61, true),
        0);
    CHECK_INT(make_cert_ids(&wrong_aki, "CN=wrong aki", &rogue.pk, "CN=ids CA", false, from, to, 62,
                            true),
              0);
    snprintf(path, sizeof(path), "%s/ids.pem", tmpdir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL && append_pem(f, &ids_ca));
    if (f != NULL) fclose(f);
    struct auth_verifier *ids_verifier = NULL;
    CHECK_INT(auth_token_verifier_new(path, ISSUER, SERVICE, err, sizeof(err), &ids_verifier), 0);
    struct test_key *good_ids[] = {&ids_leaf}, *bad_ids[] = {&wrong_aki};
    char *t = x5c_token(&ids_leaf, good_ids, 1, "ES256");
    char why[AUTH_TOKEN_WHY_MAX] = "";
    CHECK_INT(auth_token_verify(ids_verifier, t, strlen(t), REPO, strlen(REPO), "pull", NOW_S, why,
                                sizeof(why)),
              0);
    free(t);
    t = x5c_token(&wrong_aki, bad_ids, 1, "ES256");
    CHECK_INT(auth_token_verify(ids_verifier, t, strlen(t), REPO, strlen(REPO), "pull", NOW_S, why,
                                sizeof(why)),
              -EPERM);
    CHECK_CONTAINS(why, "key ID");
    free(t);
    auth_token_verifier_free(ids_verifier);
    unlink(path);
    struct test_key *keys[] = {&inter, &leaf2, &forged, &ids_ca, &ids_leaf, &wrong_aki};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        mbedtls_pk_free(&keys[i]->pk);
}

/* ---- auth_token_check: memory and the thread pool ---------------------------------------------
 */

struct verdicts {
    int calls;
    struct auth_token_verdict last;
};

static void on_verdict(void *arg, const struct auth_token_verdict *v)
{
    struct verdicts *vs = arg;
    vs->calls++;
    vs->last = *v;
}

static int check_at(struct auth_verifier *v, const char *token, const char *repo, uint64_t now_ms,
                    struct auth_token_verdict *now, struct verdicts *vs,
                    struct auth_token_job **job)
{
    struct auth_token_query q = {token, strlen(token), repo, strlen(repo), "pull", NOW_S, now_ms};
    return auth_token_check(v, &q, now, on_verdict, vs, job);
}

static void test_token_check(void)
{
    uv_loop_t loop;
    struct auth_verifier *v = NULL;
    char err[256];
    struct auth_token_verdict now;
    struct auth_token_job *job;
    struct verdicts vs = {0};
    CHECK_INT(uv_loop_init(&loop), 0);
    struct auth_cache *memory = auth_cache_new(64, 60000, 5000);
    CHECK_INT(auth_token_verifier_new(bundle_path, ISSUER, SERVICE, err, sizeof(err), &v), 0);

    /* Not attached: decided before it returns, every time. */
    struct test_key *leaf_chain[] = {&ec_leaf};
    char *good_token = x5c_token(&ec_leaf, leaf_chain, 1, "ES256");
    double start = mono_s();
    CHECK_INT(check_at(v, good_token, REPO, NOW_MS, &now, &vs, &job), 0);
    fprintf(stderr, "  a good x5c token (ES256, P-256 leaf of a P-256 CA) verified in %.2f ms\n",
            (mono_s() - start) * 1e3);
    CHECK_INT(now.rc, 0);
    CHECK(!now.remembered);
    CHECK_INT(auth_token_verifier_attach(v, &loop, memory), 0);

    /* A good token: its signatures on the pool, then remembered. */
    CHECK_INT(check_at(v, good_token, REPO, NOW_MS, &now, &vs, &job), AUTH_TOKEN_PENDING);
    CHECK(job != NULL);
    CHECK_INT(vs.calls, 0); /* never before it returns */
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(vs.calls, 1);
    CHECK_INT(vs.last.rc, 0);
    CHECK(!vs.last.remembered);
    CHECK_INT(check_at(v, good_token, REPO, NOW_MS + 1, &now, &vs, &job), 0);
    CHECK_INT(now.rc, 0);
    CHECK(now.remembered);
    /* Another repository: the signature is remembered, the claims are checked again. */
    CHECK_INT(check_at(v, good_token, "bob/app", NOW_MS + 2, &now, &vs, &job), 0);
    CHECK_INT(now.rc, -EACCES);
    CHECK(now.remembered);

    /* A bad signature: found on the pool, then the refusal is remembered for 5 s, for any
     * repository. */
    char h[8192], p[2048], extra[8192], c1[4096];
    b64std(&ec_leaf, c1, sizeof(c1));
    snprintf(extra, sizeof(extra), ",\"x5c\":[\"%s\"]", c1);
    char *bad_sig =
        sign_token(header(h, sizeof(h), "ES256", extra), payload(p, sizeof(p), good), "ES256", &ca);
    CHECK_INT(check_at(v, bad_sig, REPO, NOW_MS, &now, &vs, &job), AUTH_TOKEN_PENDING);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(vs.calls, 2);
    CHECK_INT(vs.last.rc, -EPERM);
    CHECK_INT(check_at(v, bad_sig, "other/repo", NOW_MS + 4999, &now, &vs, &job), 0);
    CHECK_INT(now.rc, -EPERM);
    CHECK(now.remembered);
    CHECK_CONTAINS(now.why, "signature");
    CHECK_CONTAINS(now.why, "(remembered)");
    CHECK_INT(check_at(v, bad_sig, REPO, NOW_MS + 5000, &now, &vs, &job), AUTH_TOKEN_PENDING);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(vs.calls, 3);

    /* Refused before any signature: decided on the loop, and remembered. */
    char *kid_less = sign_token(header(h, sizeof(h), "ES256", ",\"kid\":\"AAAA\""),
                                payload(p, sizeof(p), good), "ES256", &ca);
    CHECK_INT(check_at(v, kid_less, REPO, NOW_MS, &now, &vs, &job), 0);
    CHECK_INT(now.rc, -EPERM);
    CHECK(!now.remembered);
    CHECK_INT(check_at(v, kid_less, REPO, NOW_MS + 1, &now, &vs, &job), 0);
    CHECK_INT(now.rc, -EPERM);
    CHECK(now.remembered);

    /* A kid token is verified on the pool too (ECDSA: about a millisecond). Two at once:
     * the second waits for the lane; cancelled there, it is never called back; the first,
     * cancelled while it runs, neither, but its outcome is remembered. */
    char *kid_token = sign_token(header(h, sizeof(h), "ES256", kid_of(extra, sizeof(extra), &ca)),
                                 payload(p, sizeof(p), good), "ES256", &ca);
    struct auth_token_job *first, *second;
    CHECK_INT(check_at(v, kid_token, REPO, NOW_MS, &now, &vs, &first), AUTH_TOKEN_PENDING);
    CHECK_INT(check_at(v, good_token, "alice/other", NOW_MS + 70000, &now, &vs, &second),
              AUTH_TOKEN_PENDING);
    auth_token_job_cancel(second);
    auth_token_job_cancel(first);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(vs.calls, 3);
    CHECK_INT(check_at(v, kid_token, REPO, NOW_MS + 1, &now, &vs, &job), 0);
    CHECK_INT(now.rc, 0);
    CHECK(now.remembered);

    /* Several waiting for the lane are answered in order, one callback each. */
    int before = vs.calls;
    for (int i = 0; i < 3; i++) {
        char repo[32];
        snprintf(repo, sizeof(repo), "queue/r%d", i);
        CHECK_INT(check_at(v, bad_sig, repo, NOW_MS + 20000, &now, &vs, &job), AUTH_TOKEN_PENDING);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(vs.calls, before + 3);
    CHECK_INT(vs.last.rc, -EPERM);
    CHECK(vs.last.remembered); /* the later ones were answered from the first one's outcome */

    /* Too long: refused unread. */
    char *huge = calloc(AUTH_TOKEN_MAX + 2, 1);
    memset(huge, 'A', AUTH_TOKEN_MAX + 1);
    memcpy(huge, "Bearer ", 7);
    CHECK_INT(check_at(v, huge, REPO, NOW_MS, &now, &vs, &job), 0);
    CHECK_INT(now.rc, -EMSGSIZE);

    free(huge);
    free(good_token);
    free(bad_sig);
    free(kid_less);
    free(kid_token);
    auth_token_verifier_free(v);
    auth_cache_free(memory);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* ---- key IDs, exp, the verifier's file ----------------------------------------------------- */

static void test_libtrust_kid(void)
{
    /*
     * The P-256 public key of libtrust-py's test fixture tests/fixtures/ec-public.pem,
     * whose key ID that project's tests/test_ec_key.py expects. The same value from
     * Python's standard library:
     *   python3 -c 'import hashlib,base64; d=base64.b64decode("MFkw...KKg=="); s=base64.
     *   b32encode(hashlib.sha256(d).digest()[:30]).decode(); print(":".join(s[i:i+4]
     *   for i in range(0,48,4)))'
     */
    static const char pem[] = "-----BEGIN PUBLIC KEY-----\n"
                              "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4pBqYlc5IU5pJh5AOvijtEccStyJ\n"
                              "u0dSAiz4OlDGGFk5PvSlSh+wqUcSyp1ZRSP5kX7Pluof72g5MniaoFrLKg==\n"
                              "-----END PUBLIC KEY-----\n";
    const char *want = "UEV2:PPF2:4DMU:WZYF:WOWU:677P:B7XU:SGFA:BMUG:NCTC:R7CL:XFKZ";
    char kid[AUTH_KID_SIZE];
    unsigned char der[256];
    size_t der_len;

    const char *b64 = strchr(pem, '\n') + 1;
    char joined[128];
    size_t w = 0;
    for (const char *q = b64; *q != '-'; q++)
        if (*q != '\n') joined[w++] = *q;
    CHECK_INT(mbedtls_base64_decode(der, sizeof(der), &der_len, (const unsigned char *)joined, w),
              0);
    CHECK_INT(der_len, 91);
    auth_libtrust_kid(der, der_len, kid);
    CHECK_STR(kid, want);
    CHECK_INT(strlen(kid), AUTH_KID_SIZE - 1);

    /* The same key parsed and written again by mbedTLS (as the verifier does). */
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    CHECK_INT(mbedtls_pk_parse_public_key(&pk, (const unsigned char *)pem, sizeof(pem)), 0);
    int n = mbedtls_pk_write_pubkey_der(&pk, der, sizeof(der));
    CHECK_INT(n, 91);
    auth_libtrust_kid(der + sizeof(der) - n, (size_t)n, kid);
    CHECK_STR(kid, want);
    mbedtls_pk_free(&pk);

    /* Two more, from: python3 -c '...sha256(b"")...' and bytes(range(91)). */
    auth_libtrust_kid((const unsigned char *)"", 0, kid);
    CHECK_STR(kid, "4OYM:IQUY:7QOB:JGX3:6TEJ:S35Z:EQT2:4QPE:MSNZ:GTFE:SWMR:W6CS");
    for (int i = 0; i < 91; i++)
        der[i] = (unsigned char)i;
    auth_libtrust_kid(der, 91, kid);
    CHECK_STR(kid, "LDJJ:IWNS:CMFC:4FIS:KLKA:ROK6:NWWE:ETCW:IBRO:XEI4:Y5SE:BS4S");
}

static void test_bearer_exp(void)
{
    char cred[512];
    int64_t exp = 0;

    unsigned_bearer("{\"exp\":1767225900}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_exp(cred, strlen(cred), &exp), 0);
    CHECK_INT(exp, 1767225900);
    unsigned_bearer("{\"exp\":1767225900.5,\"nbf\":1}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_exp(cred, strlen(cred), &exp), 0);
    CHECK_INT(exp, 1767225900);
    unsigned_bearer("{\"nbf\":1}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_exp(cred, strlen(cred), &exp), -ENOENT);
    unsigned_bearer("{\"exp\":\"1\"}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_exp(cred, strlen(cred), &exp), -ENOENT);
    unsigned_bearer("{\"exp\":1,\"exp\":2}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_exp(cred, strlen(cred), &exp), -ENOENT);
    unsigned_bearer("[1]", cred, sizeof(cred));
    CHECK_INT(auth_bearer_exp(cred, strlen(cred), &exp), -EINVAL);
    CHECK_INT(auth_bearer_exp("Basic YTpi", 10, &exp), -EINVAL);
    CHECK_INT(auth_bearer_exp("Bearer opaque", 13, &exp), -EINVAL);
    CHECK_INT(auth_bearer_exp(NULL, 0, &exp), -EINVAL);
}

static void test_verifier_files(void)
{
    char err[512], path[192];
    struct auth_verifier *v = NULL;

    CHECK(verifier != NULL);
    CHECK_INT(auth_token_verifier_certs(verifier), 2);

    snprintf(path, sizeof(path), "%s/missing.pem", tmpdir);
    CHECK_INT(auth_token_verifier_new(path, ISSUER, SERVICE, err, sizeof(err), &v), -ENOENT);
    CHECK(v == NULL);
    CHECK_CONTAINS(err, path);

    snprintf(path, sizeof(path), "%s/junk.pem", tmpdir);
    CHECK(write_file(path, "hello\n"));
    CHECK_INT(auth_token_verifier_new(path, ISSUER, SERVICE, err, sizeof(err), &v), -EINVAL);
    CHECK_CONTAINS(err, "junk.pem");
    CHECK(write_file(path, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
    CHECK_INT(auth_token_verifier_new(path, ISSUER, SERVICE, err, sizeof(err), &v), -EINVAL);
    CHECK(write_file(path, ""));
    CHECK_INT(auth_token_verifier_new(path, ISSUER, SERVICE, err, sizeof(err), &v), -EINVAL);
    unlink(path);
    CHECK_INT(auth_token_verifier_new(bundle_path, NULL, SERVICE, NULL, 0, &v), -EINVAL);
}

/* The user of a Basic credential, the sub of a token: what the front signs in with. */
static void test_basic_user_and_subject(void)
{
    char user[64], cred[512];
    /* "alice:s3cret" and "bob:" and ":pw" and "nocolon" */
    CHECK_INT(auth_basic_user("Basic YWxpY2U6czNjcmV0", 22, user, sizeof(user)), 0);
    CHECK_STR(user, "alice");
    CHECK_INT(auth_basic_user("basic  Ym9iOg==", 15, user, sizeof(user)), 0);
    CHECK_STR(user, "bob");
    CHECK_INT(auth_basic_user("Basic OnB3", 10, user, sizeof(user)), -EINVAL);
    CHECK_INT(auth_basic_user("Basic bm9jb2xvbg==", 18, user, sizeof(user)), -EINVAL);
    CHECK_INT(auth_basic_user("Basic !!!!", 10, user, sizeof(user)), -EINVAL);
    CHECK_INT(auth_basic_user("Bearer abc", 10, user, sizeof(user)), -EINVAL);
    CHECK_INT(auth_basic_user("Basic YWxpY2U6czNjcmV0", 22, user, 5), -EINVAL); /* too long */
    unsigned_bearer("{\"sub\":\"alice\",\"exp\":1}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_subject(cred, strlen(cred), user, sizeof(user)), 0);
    CHECK_STR(user, "alice");
    unsigned_bearer("{\"sub\":\"\"}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_subject(cred, strlen(cred), user, sizeof(user)), -ENOENT);
    unsigned_bearer("{\"sub\":\"a\\u0000b\"}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_subject(cred, strlen(cred), user, sizeof(user)), -ENOENT);
    unsigned_bearer("{\"sub\":7}", cred, sizeof(cred));
    CHECK_INT(auth_bearer_subject(cred, strlen(cred), user, sizeof(user)), -ENOENT);
    CHECK_INT(auth_bearer_subject("Basic YTpi", 10, user, sizeof(user)), -EINVAL);
}

/* A WWW-Authenticate challenge read back: quoted values with escapes, bare values, the
 * parameters a token client needs, and what is not a challenge. */
static void test_challenge_parse(void)
{
    struct auth_challenge_params p;
    const char *v = "Bearer realm=\"https://auth.example.com/token\",service=\"registry\","
                    "scope=\"repository:a/b:pull,push\",error=\"insufficient_scope\"";
    CHECK_INT(auth_challenge_parse(v, strlen(v), &p), 0);
    CHECK_STR(p.scheme, "Bearer");
    CHECK_STR(p.realm, "https://auth.example.com/token");
    CHECK_STR(p.service, "registry");
    CHECK_STR(p.scope, "repository:a/b:pull,push");
    v = "Basic realm=\"a \\\"quoted\\\" realm\"";
    CHECK_INT(auth_challenge_parse(v, strlen(v), &p), 0);
    CHECK_STR(p.scheme, "Basic");
    CHECK_STR(p.realm, "a \"quoted\" realm");
    v = "Bearer realm=http://x/token, service=svc";
    CHECK_INT(auth_challenge_parse(v, strlen(v), &p), 0);
    CHECK_STR(p.realm, "http://x/token");
    CHECK_STR(p.service, "svc");
    /* What we write, we read. */
    char ch[512];
    int n = auth_challenge("https://r/t", "s v", "x/y", 3, ch, sizeof(ch));
    CHECK(n > 0);
    CHECK_INT(auth_challenge_parse(ch, (size_t)n, &p), 0);
    CHECK_STR(p.realm, "https://r/t");
    CHECK_STR(p.service, "s v");
    CHECK_STR(p.scope, "repository:x/y:pull");
    CHECK_INT(auth_challenge_parse("", 0, &p), -EINVAL);
    CHECK_INT(auth_challenge_parse("Bearer realm=\"unterminated", 26, &p), -EINVAL);
    CHECK_INT(auth_challenge_parse("Bearer realm", 12, &p), -EINVAL);
    CHECK_INT(auth_challenge_parse("Bearer realm=\"a\nb\"", 17, &p), -EINVAL);
}

int main(void)
{
    RUN(test_cache_store_lookup);
    RUN(test_cache_challenge);
    RUN(test_cache_ttls);
    RUN(test_cache_jwt_exp);
    RUN(test_cache_keys);
    RUN(test_cache_eviction_model);
    RUN(test_cache_bound);
    RUN(test_challenge);
    RUN(test_libtrust_kid);
    RUN(test_bearer_exp);
    RUN(test_basic_user_and_subject);
    RUN(test_challenge_parse);

    pki_ok = setup_pki();
    CHECK(pki_ok);
    if (pki_ok) {
        RUN(test_verifier_files);
        RUN(test_token_keys);
        RUN(test_token_untrusted_keys);
        RUN(test_token_claims);
        RUN(test_token_malformed);
        RUN(test_token_mutations);
        RUN(test_x5c_refused_unsigned);
        RUN(test_x5c_paths);
        RUN(test_token_check);
    } else {
        check_tests_failed++;
        fprintf(stderr, "FAILED: making the test PKI\n");
    }
    teardown_pki();
    return check_summary();
}
