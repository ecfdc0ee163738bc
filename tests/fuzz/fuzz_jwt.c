/*
 * fuzz_jwt.c: bearer tokens through the verifier (auth_token_verify), the exp reader
 * (auth_bearer_exp) and the decision cache (auth_cache_store/lookup), all in auth.h.
 *
 * At start the harness makes an RSA 2048 key and a self-signed certificate for it
 * (deterministic: a fixed DRBG seed, so a key ID or certificate in a seed or a crash file
 * stays valid) and writes the certificate as the verifier's bundle in a temporary file.
 *
 * Input: byte 0, bits 0-1, picks the mode:
 *   0, 3  raw: the rest is the whole Authorization value;
 *   1     signed: the rest is the JOSE header JSON, a '\n', and the claims JSON; the
 *         harness encodes them and signs them with the bundle's key (bits 2-3 of byte 0:
 *         SHA-256, -384, -512), so that the claims are checked after a good signature;
 *   2     as 1, but the header is prefixed to the signed token unencoded ("Bearer " is
 *         not added): a malformed token with a real signature.
 * FUZZ_JWT_VERBOSE=1 in the environment prints the key ID, the certificate and every
 * verdict (to write seeds).
 *
 * Checked: the results are the documented ones; a token the verifier accepts is one the
 * harness signed, with claims that name the issuer; it has a readable exp that has not
 * passed; the cache finds what it said it stored, and stores nothing for an expired
 * token.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/x509_crt.h>

#include "access/auth.h"
#include "harness.h"

#define FUZZ_ISSUER "fuzz-issuer"
#define FUZZ_SERVICE "fuzz-service"
#define FUZZ_REPO "library/alpine"
#define FUZZ_NOW 1800000000 /* 2027-01-15 */

static struct harness {
    mbedtls_pk_context key;
    mbedtls_ctr_drbg_context drbg;
    struct auth_verifier *verifier;
    struct auth_cache *cache;
    char bundle_path[4200];
    char kid[AUTH_KID_SIZE];
    bool ready;
} h;

/* The DRBG's entropy: constant, so that the key is the same in every run. */
static int fixed_entropy(void *ud, unsigned char *out, size_t len)
{
    memset(out, 0x5c, len);
    return 0;
}

static void setup(void)
{
    static const char pers[] = "content-cache fuzz_jwt";
    mbedtls_ctr_drbg_init(&h.drbg);
    mbedtls_pk_init(&h.key);
    HARNESS_REQUIRE(mbedtls_ctr_drbg_seed(&h.drbg, fixed_entropy, NULL, (const unsigned char *)pers,
                                          sizeof(pers) - 1) == 0,
                    "DRBG seed");
    HARNESS_REQUIRE(mbedtls_pk_setup(&h.key, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) == 0,
                    "pk setup");
    HARNESS_REQUIRE(mbedtls_rsa_gen_key(mbedtls_pk_rsa(h.key), mbedtls_ctr_drbg_random, &h.drbg,
                                        2048, 65537) == 0,
                    "RSA key");

    mbedtls_x509write_cert crt;
    mbedtls_mpi serial;
    mbedtls_x509write_crt_init(&crt);
    mbedtls_mpi_init(&serial);
    mbedtls_mpi_lset(&serial, 1);
    mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_subject_key(&crt, &h.key);
    mbedtls_x509write_crt_set_issuer_key(&crt, &h.key);
    mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
    HARNESS_REQUIRE(
        mbedtls_x509write_crt_set_subject_name(&crt, "CN=fuzz token issuer") == 0 &&
            mbedtls_x509write_crt_set_issuer_name(&crt, "CN=fuzz token issuer") == 0 &&
            mbedtls_x509write_crt_set_serial(&crt, &serial) == 0 &&
            mbedtls_x509write_crt_set_validity(&crt, "20000101000000", "20991231235959") == 0 &&
            mbedtls_x509write_crt_set_basic_constraints(&crt, 1, -1) == 0,
        "certificate fields");
    static unsigned char pem[8192];
    HARNESS_REQUIRE(
        mbedtls_x509write_crt_pem(&crt, pem, sizeof(pem), mbedtls_ctr_drbg_random, &h.drbg) == 0,
        "certificate");
    mbedtls_x509write_crt_free(&crt);
    mbedtls_mpi_free(&serial);

    char dir[4096];
    harness_tmpdir("jwt", dir, sizeof(dir));
    snprintf(h.bundle_path, sizeof(h.bundle_path), "%s/bundle.pem", dir);
    int fd = open(h.bundle_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    HARNESS_REQUIRE(fd >= 0, "bundle file");
    size_t pem_len = strlen((const char *)pem);
    HARNESS_REQUIRE(write(fd, pem, pem_len) == (ssize_t)pem_len, "bundle written");
    close(fd);
    char err[512];
    HARNESS_REQUIRE(auth_token_verifier_new(h.bundle_path, FUZZ_ISSUER, FUZZ_SERVICE, err,
                                            sizeof(err), &h.verifier) == 0,
                    "the verifier takes the bundle");

    unsigned char spki[1024];
    int n = mbedtls_pk_write_pubkey_der(&h.key, spki, sizeof(spki));
    HARNESS_REQUIRE(n > 0, "public key");
    auth_libtrust_kid(spki + sizeof(spki) - n, (size_t)n, h.kid);

    h.cache = auth_cache_new(64, 60000, 5000);
    HARNESS_REQUIRE(h.cache != NULL, "a cache");
    h.ready = true;
    if (getenv("FUZZ_JWT_VERBOSE") != NULL) /* for writing seeds */
        fprintf(stderr, "kid %s\n%s", h.kid, pem);
}

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
    }
    return o;
}

/*
 * Builds "Bearer <b64 header>.<b64 claims>.<b64 signature>" (or, raw_header, the header
 * bytes unencoded in place of "Bearer <b64 header>") into a new buffer. Returns its
 * length.
 */
static size_t sign_token(const uint8_t *header, size_t header_len, const uint8_t *claims,
                         size_t claims_len, mbedtls_md_type_t md_type, bool raw_header, char **out)
{
    size_t cap = 16 + header_len * 2 + claims_len * 2 + 1024;
    char *t = malloc(cap);
    HARNESS_REQUIRE(t != NULL, "memory");
    size_t n = 0;
    if (raw_header) {
        memcpy(t, header, header_len);
        n = header_len;
    } else {
        memcpy(t, "Bearer ", 7);
        n = 7 + b64url(header, header_len, t + 7);
    }
    size_t signed_from = raw_header ? 0 : 7;
    t[n++] = '.';
    n += b64url(claims, claims_len, t + n);
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(md_type);
    unsigned char hash[MBEDTLS_MD_MAX_SIZE], sig[MBEDTLS_MPI_MAX_SIZE];
    size_t sig_len = 0;
    HARNESS_REQUIRE(
        mbedtls_md(md, (const unsigned char *)t + signed_from, n - signed_from, hash) == 0, "hash");
    HARNESS_REQUIRE(mbedtls_pk_sign(&h.key, md_type, hash, mbedtls_md_get_size(md), sig, &sig_len,
                                    mbedtls_ctr_drbg_random, &h.drbg) == 0,
                    "sign");
    t[n++] = '.';
    n += b64url(sig, sig_len, t + n);
    *out = t;
    return n;
}

static void check_token(const char *token, size_t len, bool signed_by_us, const uint8_t *claims,
                        size_t claims_len)
{
    char why[256];
    memset(why, 'x', sizeof(why));
    int rc = auth_token_verify(h.verifier, token, len, FUZZ_REPO, strlen(FUZZ_REPO), "pull",
                               FUZZ_NOW, why, sizeof(why));
    HARNESS_REQUIRE(rc == 0 || rc == -EINVAL || rc == -EMSGSIZE || rc == -ENOTSUP || rc == -EPERM ||
                        rc == -EACCES || rc == -ENOMEM,
                    "a documented result");
    if (getenv("FUZZ_JWT_VERBOSE") != NULL) fprintf(stderr, "verify: %d %s\n", rc, rc ? why : "ok");
    if (rc == 0) {
        HARNESS_REQUIRE(signed_by_us, "only what the harness signed verifies");
        /* The claims must name what was granted (a cheap look: the JSON decides). */
        HARNESS_REQUIRE(memmem(claims, claims_len, FUZZ_ISSUER, strlen(FUZZ_ISSUER)) != NULL ||
                            memchr(claims, '\\', claims_len) != NULL,
                        "an accepted token names the issuer");
    } else {
        HARNESS_REQUIRE(memchr(why, '\0', sizeof(why)) != NULL, "the reason is a string");
        HARNESS_REQUIRE(why[0] != '\0', "a refusal says why");
    }
    /* A NULL reason buffer is allowed. */
    (void)auth_token_verify(h.verifier, token, len, FUZZ_REPO, strlen(FUZZ_REPO), NULL, FUZZ_NOW,
                            NULL, 0);

    int64_t exp = 0;
    int erc = auth_bearer_exp(token, len, &exp);
    HARNESS_REQUIRE(erc == 0 || erc == -ENOENT || erc == -EINVAL, "exp: a documented result");
    if (rc == 0)
        HARNESS_REQUIRE(erc == 0 && exp >= FUZZ_NOW - AUTH_TOKEN_LEEWAY_S,
                        "a token that verifies has a readable exp, not past");

    /* The cache: an allowed answer is kept unless the token's exp has passed. */
    uint64_t now_ms = (uint64_t)FUZZ_NOW * 1000;
    bool stored = auth_cache_store(h.cache, "http://origin", token, len, FUZZ_REPO,
                                   strlen(FUZZ_REPO), "pull", 200, NULL, 0, now_ms);
    int status = 0;
    bool found = auth_cache_lookup(h.cache, "http://origin", token, len, FUZZ_REPO,
                                   strlen(FUZZ_REPO), "pull", now_ms, &status, NULL);
    HARNESS_REQUIRE(found == stored, "what was stored is found");
    if (found) HARNESS_REQUIRE(status == 200, "as allowed");
    if (erc == 0 && exp < FUZZ_NOW)
        HARNESS_REQUIRE(!stored, "an expired token's answer is not kept");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!h.ready) setup();
    if (size == 0) return 0;
    unsigned mode = data[0] & 3;
    const uint8_t *rest = data + 1;
    size_t rest_len = size - 1;
    if (mode == 0 || mode == 3) {
        char *copy = malloc(rest_len ? rest_len : 1); /* exact size: overreads are caught */
        HARNESS_REQUIRE(copy != NULL, "memory");
        memcpy(copy, rest, rest_len);
        check_token(copy, rest_len, false, NULL, 0);
        free(copy);
        return 0;
    }
    static const mbedtls_md_type_t mds[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_SHA512,
                                            MBEDTLS_MD_SHA256};
    const uint8_t *nl = memchr(rest, '\n', rest_len);
    size_t header_len = nl ? (size_t)(nl - rest) : rest_len;
    const uint8_t *claims = nl ? nl + 1 : rest + rest_len;
    size_t claims_len = rest_len - header_len - (nl ? 1 : 0);
    char *token = NULL;
    size_t len = sign_token(rest, header_len, claims, claims_len, mds[(data[0] >> 2) & 3],
                            mode == 2, &token);
    check_token(token, len, true, claims, claims_len);
    free(token);
    return 0;
}
