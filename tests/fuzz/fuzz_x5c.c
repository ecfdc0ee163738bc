/*
 * fuzz_x5c.c: x5c certificate chains through the checks made before any signature
 * (x5c_chain_add, x5c_chain_precheck), the top-down verification (x5c_chain_verify), and
 * whole tokens carrying them (auth_token_verify), all against a bundle made here.
 *
 * At start the harness makes, from a DRBG with a fixed seed (so that a certificate in a
 * seed or a crash file stays signed by the same key), a bundle of two CAs: EC P-256 with a
 * subject key ID ("CN=fuzz x5c CA EC") and RSA 2048 without key IDs ("CN=fuzz x5c CA
 * RSA"), written as the verifier's rootcertbundle in a temporary file.
 *
 * Input: byte 0 picks what runs: bit 0, step 2 (x5c_chain_verify) when step 1 passed;
 * bit 1, the same chain in a token's x5c (header {"alg":"ES256"|"RS256" by bit 2}, claims
 * that grant the pull, a junk signature) through auth_token_verify. Then up to 9
 * certificates, each a 2-byte big-endian length and that many bytes of DER (a short last
 * one takes what is left).
 *
 * FUZZ_X5C_VERBOSE=1 prints each verdict. FUZZ_X5C_WRITE_SEEDS=DIR in the environment writes the
 * seeds of corpus/x5c/ into DIR (chains made with the harness's keys: good ones, through
 * intermediates in any order, and each refusal of x5c.h: issue 13's RSA-8192 key, a 2^32+1
 * exponent, P-521, a wrong authority key ID, no path, nine certificates) and exits.
 *
 * Checked: every result is a documented one and a refusal says why; a chain that passes
 * step 1 has only keys within the limits, and its path starts at the leaf, uses each
 * certificate once, links issuer to subject byte for byte (and key IDs where both have
 * them) and ends at the bundle certificate it names; step 2 never passes a chain that
 * step 1 refused (it is not called), and a token that verifies has such a chain.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/x509_crt.h>

#include "access/auth.h"
#include "access/x5c.h"
#include "harness.h"

#define FUZZ_ISSUER "fuzz-issuer"
#define FUZZ_SERVICE "fuzz-service"
#define FUZZ_REPO "library/alpine"
#define FUZZ_NOW 1800000000 /* 2027-01-15 */
#define EC_CA_NAME "CN=fuzz x5c CA EC"
#define RSA_CA_NAME "CN=fuzz x5c CA RSA"
#define MAX_INPUT_CERTS 9

static struct harness {
    mbedtls_ctr_drbg_context drbg;
    mbedtls_pk_context ec_ca, rsa_ca;
    unsigned char ec_ca_der[2048], rsa_ca_der[2048];
    size_t ec_ca_len, rsa_ca_len;
    mbedtls_x509_crt bundle;
    struct x5c_anchor anchors[2];
    struct auth_verifier *verifier;
    struct tm now;
    bool ready;
} h;

static int fixed_entropy(void *ud, unsigned char *out, size_t len)
{
    memset(out, 0x5c, len);
    return 0;
}

/* A certificate for subject_key, named subject, issued as issuer (name) by issuer_key;
 * DER into out (at most cap bytes). */
static size_t make_cert(mbedtls_pk_context *subject_key, const char *subject,
                        mbedtls_pk_context *issuer_key, const char *issuer, bool ca, bool key_ids,
                        int serial_no, unsigned char *out, size_t cap)
{
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    static unsigned char buf[8192];
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    mbedtls_mpi_lset(&serial, serial_no);
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, subject_key);
    mbedtls_x509write_crt_set_issuer_key(&w, issuer_key);
    int rc = mbedtls_x509write_crt_set_subject_name(&w, subject);
    if (rc == 0) rc = mbedtls_x509write_crt_set_issuer_name(&w, issuer);
    if (rc == 0) rc = mbedtls_x509write_crt_set_serial(&w, &serial);
    if (rc == 0) rc = mbedtls_x509write_crt_set_validity(&w, "20200101000000", "20991231235959");
    if (rc == 0) rc = mbedtls_x509write_crt_set_basic_constraints(&w, ca, -1);
    if (rc == 0 && key_ids) rc = mbedtls_x509write_crt_set_subject_key_identifier(&w);
    if (rc == 0 && key_ids) rc = mbedtls_x509write_crt_set_authority_key_identifier(&w);
    if (rc == 0)
        rc = mbedtls_x509write_crt_der(&w, buf, sizeof(buf), mbedtls_ctr_drbg_random, &h.drbg);
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
    HARNESS_REQUIRE(rc > 0 && (size_t)rc <= cap, "a certificate");
    memcpy(out, buf + sizeof(buf) - rc, (size_t)rc);
    return (size_t)rc;
}

static void gen_ec(mbedtls_pk_context *pk, mbedtls_ecp_group_id curve)
{
    mbedtls_pk_init(pk);
    HARNESS_REQUIRE(
        mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) == 0 &&
            mbedtls_ecp_gen_key(curve, mbedtls_pk_ec(*pk), mbedtls_ctr_drbg_random, &h.drbg) == 0,
        "an EC key");
}

static void setup(void)
{
    static const char pers[] = "content-cache fuzz_x5c";
    mbedtls_ctr_drbg_init(&h.drbg);
    HARNESS_REQUIRE(mbedtls_ctr_drbg_seed(&h.drbg, fixed_entropy, NULL, (const unsigned char *)pers,
                                          sizeof(pers) - 1) == 0,
                    "DRBG seed");
    gen_ec(&h.ec_ca, MBEDTLS_ECP_DP_SECP256R1);
    mbedtls_pk_init(&h.rsa_ca);
    HARNESS_REQUIRE(mbedtls_pk_setup(&h.rsa_ca, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) == 0 &&
                        mbedtls_rsa_gen_key(mbedtls_pk_rsa(h.rsa_ca), mbedtls_ctr_drbg_random,
                                            &h.drbg, 2048, 65537) == 0,
                    "an RSA key");
    h.ec_ca_len = make_cert(&h.ec_ca, EC_CA_NAME, &h.ec_ca, EC_CA_NAME, true, true, 1, h.ec_ca_der,
                            sizeof(h.ec_ca_der));
    h.rsa_ca_len = make_cert(&h.rsa_ca, RSA_CA_NAME, &h.rsa_ca, RSA_CA_NAME, true, false, 2,
                             h.rsa_ca_der, sizeof(h.rsa_ca_der));
    mbedtls_x509_crt_init(&h.bundle);
    HARNESS_REQUIRE(mbedtls_x509_crt_parse_der(&h.bundle, h.ec_ca_der, h.ec_ca_len) == 0 &&
                        mbedtls_x509_crt_parse_der(&h.bundle, h.rsa_ca_der, h.rsa_ca_len) == 0,
                    "the bundle parses");
    HARNESS_REQUIRE(x5c_anchor_init(&h.anchors[0], &h.bundle) == 0 &&
                        x5c_anchor_init(&h.anchors[1], h.bundle.next) == 0,
                    "the bundle's key IDs");
    HARNESS_REQUIRE(h.anchors[0].ski != NULL && h.anchors[1].ski == NULL,
                    "a subject key ID where one was written");

    char dir[4096], path[4200];
    harness_tmpdir("x5c", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/bundle.pem", dir);
    FILE *f = fopen(path, "w");
    HARNESS_REQUIRE(f != NULL, "bundle file");
    const unsigned char *ders[2] = {h.ec_ca_der, h.rsa_ca_der};
    size_t lens[2] = {h.ec_ca_len, h.rsa_ca_len};
    for (int i = 0; i < 2; i++) {
        unsigned char pem[4096];
        size_t olen;
        HARNESS_REQUIRE(mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n",
                                                 "-----END CERTIFICATE-----\n", ders[i], lens[i],
                                                 pem, sizeof(pem), &olen) == 0,
                        "PEM");
        HARNESS_REQUIRE(fwrite(pem, 1, olen - 1, f) == olen - 1, "bundle written");
    }
    fclose(f);
    char err[512];
    HARNESS_REQUIRE(auth_token_verifier_new(path, FUZZ_ISSUER, FUZZ_SERVICE, err, sizeof(err),
                                            &h.verifier) == 0,
                    "the verifier takes the bundle");
    time_t t = FUZZ_NOW;
    gmtime_r(&t, &h.now);
    h.ready = true;
}

/* ---- checks -------------------------------------------------------------------------------- */

static bool same(const mbedtls_x509_buf *a, const mbedtls_x509_buf *b)
{
    return a->len == b->len && memcmp(a->p, b->p, a->len) == 0;
}

static bool key_within_limits(const mbedtls_pk_context *pk)
{
    mbedtls_pk_type_t type = mbedtls_pk_get_type(pk);
    if (type == MBEDTLS_PK_RSA) {
        mbedtls_mpi e;
        mbedtls_mpi_init(&e);
        bool ok = mbedtls_pk_get_bitlen(pk) <= 4096 &&
                  mbedtls_rsa_export(mbedtls_pk_rsa(*pk), NULL, NULL, NULL, NULL, &e) == 0 &&
                  mbedtls_mpi_bitlen(&e) <= 32;
        mbedtls_mpi_free(&e);
        return ok;
    }
    if (type != MBEDTLS_PK_ECKEY && type != MBEDTLS_PK_ECDSA) return false;
    mbedtls_ecp_group_id id = mbedtls_pk_ec(*pk)->grp.id;
    return id == MBEDTLS_ECP_DP_SECP256R1 || id == MBEDTLS_ECP_DP_SECP384R1;
}

static void check_path(struct x5c_chain *c)
{
    HARNESS_REQUIRE(c->path_len >= 1 && c->path_len <= c->n, "a path of 1..n certificates");
    HARNESS_REQUIRE(c->path[0] == &c->certs && c->path_at[0] == 0, "the path starts at the leaf");
    HARNESS_REQUIRE(c->anchor < 2, "the path ends at a bundle certificate");
    bool used[X5C_MAX_CERTS] = {false};
    for (size_t i = 0; i < c->path_len; i++) {
        size_t at = c->path_at[i];
        HARNESS_REQUIRE(at < c->n && !used[at], "each certificate once");
        used[at] = true;
        const mbedtls_x509_crt *parent = i + 1 < c->path_len ? c->path[i + 1] : NULL;
        const mbedtls_x509_buf *subject =
            parent != NULL ? &parent->subject_raw : &h.anchors[c->anchor].crt->subject_raw;
        HARNESS_REQUIRE(same(&c->path[i]->issuer_raw, subject), "issuer is the next one's subject");
        const unsigned char *aki = c->ids[at].aki;
        const unsigned char *ski =
            parent != NULL ? c->ids[c->path_at[i + 1]].ski : h.anchors[c->anchor].ski;
        size_t ski_len =
            parent != NULL ? c->ids[c->path_at[i + 1]].ski_len : h.anchors[c->anchor].ski_len;
        if (aki != NULL && ski != NULL)
            HARNESS_REQUIRE(c->ids[at].aki_len == ski_len && memcmp(aki, ski, ski_len) == 0,
                            "key IDs match where both are present");
    }
    const mbedtls_x509_crt *crt = &c->certs;
    for (size_t i = 0; i < c->n; i++, crt = crt->next)
        HARNESS_REQUIRE(key_within_limits(&crt->pk), "every key within the limits");
}

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = abc[(v >> 6) & 63];
        if (i + 2 < n) out[o++] = abc[v & 63];
    }
    return o;
}

/* The chain in a token (junk signature) through the whole verifier. */
static void check_token(const unsigned char *const *der, const size_t *len, size_t n, bool rsa)
{
    size_t cap = 64;
    for (size_t i = 0; i < n; i++)
        cap += len[i] / 3 * 4 + 8;
    char *header = malloc(cap + 64);
    HARNESS_REQUIRE(header != NULL, "memory");
    size_t w = (size_t)snprintf(header, cap, "{\"alg\":\"%s\",\"x5c\":[", rsa ? "RS256" : "ES256");
    for (size_t i = 0; i < n; i++) {
        size_t olen;
        if (i > 0) header[w++] = ',';
        header[w++] = '"';
        HARNESS_REQUIRE(mbedtls_base64_encode((unsigned char *)header + w, cap + 64 - w, &olen,
                                              der[i], len[i]) == 0,
                        "base64");
        w += olen;
        header[w++] = '"';
    }
    w += (size_t)snprintf(header + w, cap + 64 - w, "]}");
    static const char claims[] =
        "{\"iss\":\"" FUZZ_ISSUER "\",\"aud\":\"" FUZZ_SERVICE "\",\"exp\":1800000300,\"access\":"
        "[{\"type\":\"repository\",\"name\":\"" FUZZ_REPO "\",\"actions\":[\"pull\"]}]}";
    static const unsigned char junk[256] = {1};
    size_t tcap = 16 + w * 2 + sizeof(claims) * 2 + sizeof(junk) * 2;
    char *token = malloc(tcap);
    HARNESS_REQUIRE(token != NULL, "memory");
    size_t t = 7;
    memcpy(token, "Bearer ", 7);
    t += b64url((const unsigned char *)header, w, token + t);
    token[t++] = '.';
    t += b64url((const unsigned char *)claims, sizeof(claims) - 1, token + t);
    token[t++] = '.';
    t += b64url(junk, rsa ? 256 : 64, token + t);
    char why[AUTH_TOKEN_WHY_MAX];
    int rc = auth_token_verify(h.verifier, token, t, FUZZ_REPO, strlen(FUZZ_REPO), "pull", FUZZ_NOW,
                               why, sizeof(why));
    HARNESS_REQUIRE(rc == -EINVAL || rc == -EMSGSIZE || rc == -EPERM || rc == -ENOMEM ||
                        rc == -E2BIG,
                    "a junk signature never verifies; a documented result");
    HARNESS_REQUIRE(why[0] != '\0' && memchr(why, '\0', sizeof(why)) != NULL, "a refusal says why");
    free(token);
    free(header);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void write_seeds(const char *dir);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!h.ready) {
        setup();
        const char *seeds = getenv("FUZZ_X5C_WRITE_SEEDS");
        if (seeds != NULL) {
            write_seeds(seeds);
            _exit(0); /* before libFuzzer's exit handler, which would call this a crash */
        }
    }
    if (size == 0) return 0;
    bool verbose = getenv("FUZZ_X5C_VERBOSE") != NULL;
    unsigned mode = data[0];
    const unsigned char *der[MAX_INPUT_CERTS];
    size_t len[MAX_INPUT_CERTS], n = 0, at = 1;
    while (at < size && n < MAX_INPUT_CERTS) {
        size_t l = at + 2 <= size ? (size_t)data[at] << 8 | data[at + 1] : 0;
        at += 2;
        if (at > size) break;
        if (l > size - at) l = size - at;
        der[n] = data + at;
        len[n++] = l;
        at += l;
    }

    struct x5c_chain c;
    char why[AUTH_TOKEN_WHY_MAX];
    x5c_chain_init(&c);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        /* An exact copy, so that an overread is caught. */
        unsigned char *copy = malloc(len[i] ? len[i] : 1);
        HARNESS_REQUIRE(copy != NULL, "memory");
        memcpy(copy, der[i], len[i]);
        why[0] = '\0';
        rc = x5c_chain_add(&c, copy, len[i], why, sizeof(why));
        free(copy);
        HARNESS_REQUIRE(rc == 0 || rc == -EINVAL || rc == -E2BIG || rc == -ENOMEM,
                        "add: a documented result");
        if (rc != 0) HARNESS_REQUIRE(why[0] != '\0', "add: a refusal says why");
        if (rc == -E2BIG) HARNESS_REQUIRE(i == X5C_MAX_CERTS, "at most 8 certificates");
    }
    if (rc == 0) {
        why[0] = '\0';
        rc = x5c_chain_precheck(&c, h.anchors, 2, why, sizeof(why));
        HARNESS_REQUIRE(rc == 0 || rc == -EINVAL || rc == -EPERM, "precheck: a documented result");
        if (rc != 0) HARNESS_REQUIRE(why[0] != '\0', "precheck: a refusal says why");
        if (rc == -EINVAL) HARNESS_REQUIRE(n == 0, "only an empty chain is malformed here");
        if (verbose) fprintf(stderr, "precheck: %d %s\n", rc, rc ? why : "ok");
        if (rc == 0) {
            check_path(&c);
            if (mode & 1) {
                why[0] = '\0';
                int vrc = x5c_chain_verify(&c, h.anchors, 2, &h.now, why, sizeof(why));
                if (verbose) fprintf(stderr, "verify: %d %s\n", vrc, vrc ? why : "ok");
                HARNESS_REQUIRE(vrc == 0 || vrc == -EPERM || vrc == -ENOMEM,
                                "verify: a documented result");
                if (vrc != 0) HARNESS_REQUIRE(why[0] != '\0', "verify: a refusal says why");
            }
        }
    }
    x5c_chain_free(&c);
    if ((mode & 2) && n > 0) check_token(der, len, n, (mode & 4) != 0);
    return 0;
}

/* ---- seeds --------------------------------------------------------------------------------- */

static void put_seed(const char *dir, const char *name, unsigned mode,
                     const unsigned char *const *der, const size_t *len, size_t n)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    HARNESS_REQUIRE(f != NULL, "a seed file");
    fputc((int)mode, f);
    for (size_t i = 0; i < n; i++) {
        fputc((int)(len[i] >> 8), f);
        fputc((int)(len[i] & 0xff), f);
        HARNESS_REQUIRE(fwrite(der[i], 1, len[i], f) == len[i], "a seed written");
    }
    HARNESS_REQUIRE(fclose(f) == 0, "a seed closed");
}

/* An RSA key with a public part only: a random odd modulus of `bits` bits and exponent
 * e_hex, or (NULL) the modulus minus two. */
static void rsa_public(mbedtls_pk_context *pk, size_t bits, const char *e_hex)
{
    mbedtls_mpi n, e;
    mbedtls_mpi_init(&n);
    mbedtls_mpi_init(&e);
    mbedtls_pk_init(pk);
    int rc = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA));
    if (rc == 0) rc = mbedtls_mpi_fill_random(&n, bits / 8, mbedtls_ctr_drbg_random, &h.drbg);
    if (rc == 0) rc = mbedtls_mpi_set_bit(&n, bits - 1, 1);
    if (rc == 0) rc = mbedtls_mpi_set_bit(&n, 0, 1);
    if (rc == 0)
        rc = e_hex ? mbedtls_mpi_read_string(&e, 16, e_hex) : mbedtls_mpi_sub_int(&e, &n, 2);
    if (rc == 0) rc = mbedtls_rsa_import(mbedtls_pk_rsa(*pk), &n, NULL, NULL, NULL, &e);
    if (rc == 0) rc = mbedtls_rsa_complete(mbedtls_pk_rsa(*pk));
    HARNESS_REQUIRE(rc == 0, "an RSA public key");
    mbedtls_mpi_free(&n);
    mbedtls_mpi_free(&e);
}

/* A copy of cert's DER whose signature is sig_len junk bytes under sha256WithRSA. */
static size_t junk_rsa_signature(unsigned char *cert, size_t cert_len, size_t cap, size_t sig_len)
{
    mbedtls_x509_crt crt;
    static unsigned char buf[8192], junk[1024];
    mbedtls_x509_crt_init(&crt);
    HARNESS_REQUIRE(mbedtls_x509_crt_parse_der(&crt, cert, cert_len) == 0 && sig_len <= 1024,
                    "a certificate to resign");
    memset(junk, 0x5a, sig_len);
    junk[0] = 0;
    unsigned char *p = buf + sizeof(buf);
    int l = mbedtls_asn1_write_bitstring(&p, buf, junk, sig_len * 8);
    l += mbedtls_asn1_write_algorithm_identifier(&p, buf, MBEDTLS_OID_PKCS1_SHA256,
                                                 MBEDTLS_OID_SIZE(MBEDTLS_OID_PKCS1_SHA256), 0);
    p -= crt.tbs.len;
    memcpy(p, crt.tbs.p, crt.tbs.len);
    l += (int)crt.tbs.len;
    l += mbedtls_asn1_write_len(&p, buf, (size_t)l);
    l += mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
    mbedtls_x509_crt_free(&crt);
    HARNESS_REQUIRE(l > 0 && (size_t)l <= cap, "a resigned certificate");
    memcpy(cert, p, (size_t)l);
    return (size_t)l;
}

static void write_seeds(const char *dir)
{
    static unsigned char certs[10][4096];
    size_t len[10];
    const unsigned char *der[10];
    for (int i = 0; i < 10; i++)
        der[i] = certs[i];
    mkdir(dir, 0755);
    mbedtls_pk_context leaf, inter, leaf2, p521, big, e33, wrong;
    gen_ec(&leaf, MBEDTLS_ECP_DP_SECP256R1);
    gen_ec(&inter, MBEDTLS_ECP_DP_SECP384R1);
    gen_ec(&leaf2, MBEDTLS_ECP_DP_SECP256R1);
    gen_ec(&p521, MBEDTLS_ECP_DP_SECP521R1);
    gen_ec(&wrong, MBEDTLS_ECP_DP_SECP256R1);

    /* Good: a leaf of the EC CA (key IDs), one of the RSA CA, and one under an
     * intermediate, in order, reversed and with an unrelated certificate. */
    len[0] = make_cert(&leaf, "CN=leaf", &h.ec_ca, EC_CA_NAME, false, true, 10, certs[0], 4096);
    put_seed(dir, "good-leaf-ec-ca", 3, der, len, 1);
    len[0] = make_cert(&leaf, "CN=leaf", &h.rsa_ca, RSA_CA_NAME, false, false, 11, certs[0], 4096);
    put_seed(dir, "good-leaf-rsa-ca", 3, der, len, 1);
    len[0] = make_cert(&leaf2, "CN=leaf2", &inter, "CN=inter", false, true, 12, certs[0], 4096);
    len[1] = make_cert(&inter, "CN=inter", &h.ec_ca, EC_CA_NAME, true, true, 13, certs[1], 4096);
    put_seed(dir, "good-intermediate", 1, der, len, 2);
    memcpy(certs[2], certs[1], len[1]);
    len[2] = len[1];
    len[1] =
        make_cert(&wrong, "CN=unrelated", &wrong, "CN=unrelated", true, true, 14, certs[1], 4096);
    put_seed(dir, "good-with-extra", 3, der, len, 3);
    put_seed(dir, "bundle-cert-itself", 1, (const unsigned char *const[]){h.ec_ca_der},
             (const size_t[]){h.ec_ca_len}, 1);

    /* Refused before any signature. */
    rsa_public(&big, 8192, NULL);
    len[0] = make_cert(&leaf, "CN=hostile leaf", &h.rsa_ca, "CN=hostile", false, false, 20,
                       certs[0], 4096);
    len[0] = junk_rsa_signature(certs[0], len[0], 4096, 1024);
    len[1] = make_cert(&big, "CN=hostile", &h.rsa_ca, RSA_CA_NAME, true, false, 21, certs[1], 4096);
    put_seed(dir, "issue13-rsa8192-exponent", 7, der, len, 2);
    rsa_public(&e33, 4096, "100000001");
    len[1] = make_cert(&e33, "CN=hostile", &h.rsa_ca, RSA_CA_NAME, true, false, 22, certs[1], 4096);
    put_seed(dir, "rsa-exponent-33-bits", 1, der, len, 2);
    len[0] = make_cert(&p521, "CN=p521", &h.ec_ca, EC_CA_NAME, false, true, 23, certs[0], 4096);
    put_seed(dir, "ec-p521", 3, der, len, 1);
    len[0] = make_cert(&leaf, "CN=wrong aki", &wrong, EC_CA_NAME, false, true, 24, certs[0], 4096);
    put_seed(dir, "wrong-authority-key-id", 1, der, len, 1);
    len[0] = make_cert(&leaf2, "CN=leaf2", &inter, "CN=inter", false, true, 25, certs[0], 4096);
    put_seed(dir, "no-path", 3, der, len, 1);
    for (int i = 1; i < 9; i++) {
        memcpy(certs[i], certs[0], len[0]);
        len[i] = len[0];
    }
    put_seed(dir, "nine-certificates", 0, der, len, 9);
    static const unsigned char garbage[] = {0x30, 0x82, 0x01, 0x00, 0x30, 0x03, 0x02, 0x01};
    put_seed(dir, "garbage", 3, (const unsigned char *const[]){garbage},
             (const size_t[]){sizeof(garbage)}, 1);
    mbedtls_pk_context *keys[] = {&leaf, &inter, &leaf2, &p521, &big, &e33, &wrong};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        mbedtls_pk_free(keys[i]);
    fprintf(stderr, "fuzz_x5c: seeds written to %s\n", dir);
}
