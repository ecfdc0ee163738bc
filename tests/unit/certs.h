/*
 * certs.h: a small PKI made when a test runs (no key or certificate is committed).
 *
 * certs_make() writes, with mbedTLS's x509write API and P-256 keys, PEM files into a
 * new temporary directory; cert_path(name) is the path of one of them; certs_remove()
 * deletes them. The files:
 *
 *   ca.pem, other-ca.pem       two self-signed CAs ("Test CA", "Other CA")
 *   server.pem, server.key     localhost + 127.0.0.1, signed by Test CA
 *   expired.pem                the same, valid 2000-2001
 *   future.pem                 the same, valid from 2048
 *   noip.pem                   localhost only (no iPAddress SAN)
 *   other-server.pem, other.key   localhost + 127.0.0.1, signed by Other CA
 *   chain.pem                  server.key's certificate signed by an intermediate,
 *                              followed by the intermediate (signed by Test CA)
 *   leaf-of-inter.pem          the same leaf without the intermediate
 *   inter.pem                  the intermediate alone
 *   not-pem.pem                a line of text
 *
 * Static functions in a header, like check.h: include it in one test file.
 */
#ifndef CC_TEST_CERTS_H
#define CC_TEST_CERTS_H

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

static mbedtls_entropy_context certs_entropy;
static mbedtls_ctr_drbg_context certs_drbg;
static char certs_dir[64];
static int certs_serial = 1;

static void certs_gen_key(mbedtls_pk_context *pk)
{
    mbedtls_pk_init(pk);
    CHECK_INT(mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)), 0);
    CHECK_INT(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk),
                                  mbedtls_ctr_drbg_random, &certs_drbg),
              0);
}

struct cert_spec {
    const char *subject;
    mbedtls_pk_context *key;
    const char *issuer;
    mbedtls_pk_context *issuer_key;
    bool is_ca;
    const char *not_before, *not_after; /* "YYYYMMDDhhmmss" */
    const char *dns;                    /* a dNSName SAN, or NULL */
    const unsigned char *ip4;           /* an iPAddress SAN, or NULL */
};

/* Appends the PEM certificate of spec to the file certs_dir/name. */
static void certs_write_cert(const char *name, const struct cert_spec *spec)
{
    mbedtls_x509write_cert crt;
    mbedtls_x509write_crt_init(&crt);
    mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_mpi sn;
    mbedtls_mpi_init(&sn);
    mbedtls_mpi_lset(&sn, certs_serial++);
    CHECK_INT(mbedtls_x509write_crt_set_serial(&crt, &sn), 0);
    mbedtls_mpi_free(&sn);
    CHECK_INT(mbedtls_x509write_crt_set_validity(&crt, spec->not_before, spec->not_after), 0);
    CHECK_INT(mbedtls_x509write_crt_set_subject_name(&crt, spec->subject), 0);
    CHECK_INT(mbedtls_x509write_crt_set_issuer_name(&crt, spec->issuer), 0);
    mbedtls_x509write_crt_set_subject_key(&crt, spec->key);
    mbedtls_x509write_crt_set_issuer_key(&crt, spec->issuer_key);
    mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
    CHECK_INT(mbedtls_x509write_crt_set_basic_constraints(&crt, spec->is_ca, -1), 0);
    if (spec->is_ca)
        CHECK_INT(mbedtls_x509write_crt_set_key_usage(&crt, MBEDTLS_X509_KU_KEY_CERT_SIGN |
                                                                MBEDTLS_X509_KU_CRL_SIGN),
                  0);
    if (spec->dns != NULL || spec->ip4 != NULL) {
        /* SEQUENCE { [2] dNSName, [7] iPAddress }, every length below 128. */
        unsigned char san[128];
        size_t n = 2;
        if (spec->dns != NULL) {
            size_t l = strlen(spec->dns);
            san[n++] = 0x82;
            san[n++] = (unsigned char)l;
            memcpy(san + n, spec->dns, l);
            n += l;
        }
        if (spec->ip4 != NULL) {
            san[n++] = 0x87;
            san[n++] = 4;
            memcpy(san + n, spec->ip4, 4);
            n += 4;
        }
        san[0] = 0x30;
        san[1] = (unsigned char)(n - 2);
        CHECK_INT(mbedtls_x509write_crt_set_extension(
                      &crt, MBEDTLS_OID_SUBJECT_ALT_NAME,
                      MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, san, n),
                  0);
    }
    unsigned char pem[4096];
    CHECK_INT(
        mbedtls_x509write_crt_pem(&crt, pem, sizeof(pem), mbedtls_ctr_drbg_random, &certs_drbg), 0);
    mbedtls_x509write_crt_free(&crt);
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", certs_dir, name);
    FILE *f = fopen(path, "a");
    CHECK(f != NULL);
    if (f == NULL) return;
    fputs((const char *)pem, f);
    fclose(f);
}

static void certs_write_key(const char *name, mbedtls_pk_context *key)
{
    unsigned char pem[2048];
    CHECK_INT(mbedtls_pk_write_key_pem(key, pem, sizeof(pem)), 0);
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", certs_dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f == NULL) return;
    fputs((const char *)pem, f);
    fclose(f);
}

static void certs_write_text(const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", certs_dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f == NULL) return;
    fputs(text, f);
    fclose(f);
}

/* The path of a file in the temporary directory (one of four rotating buffers). */
static const char *cert_path(const char *name)
{
    static char paths[4][128];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 128, "%s/%s", certs_dir, name);
    return p;
}

static const char *const certs_generated[] = {
    "ca.pem",     "other-ca.pem",     "server.pem",        "server.key", "expired.pem",
    "future.pem", "other-server.pem", "other.key",         "chain.pem",  "not-pem.pem",
    "inter.pem",  "noip.pem",         "leaf-of-inter.pem",
};

static void certs_make(void)
{
    mbedtls_entropy_init(&certs_entropy);
    mbedtls_ctr_drbg_init(&certs_drbg);
    CHECK_INT(mbedtls_ctr_drbg_seed(&certs_drbg, mbedtls_entropy_func, &certs_entropy, NULL, 0), 0);
    snprintf(certs_dir, sizeof(certs_dir), "/tmp/cc-test-certs-XXXXXX");
    CHECK(mkdtemp(certs_dir) != NULL);

    mbedtls_pk_context ca, other_ca, inter, server, other;
    certs_gen_key(&ca);
    certs_gen_key(&other_ca);
    certs_gen_key(&inter);
    certs_gen_key(&server);
    certs_gen_key(&other);
    static const unsigned char localhost_ip[4] = {127, 0, 0, 1};
    const char *from = "20200101000000", *to = "20491231235959";
    certs_write_cert("ca.pem", &(struct cert_spec){"CN=Test CA", &ca, "CN=Test CA", &ca, true, from,
                                                   to, NULL, NULL});
    certs_write_cert("other-ca.pem", &(struct cert_spec){"CN=Other CA", &other_ca, "CN=Other CA",
                                                         &other_ca, true, from, to, NULL, NULL});
    certs_write_cert("server.pem", &(struct cert_spec){"CN=localhost", &server, "CN=Test CA", &ca,
                                                       false, from, to, "localhost", localhost_ip});
    certs_write_key("server.key", &server);
    certs_write_cert("expired.pem", &(struct cert_spec){"CN=localhost", &server, "CN=Test CA", &ca,
                                                        false, "20000101000000", "20010101000000",
                                                        "localhost", localhost_ip});
    certs_write_cert("future.pem", &(struct cert_spec){"CN=localhost", &server, "CN=Test CA", &ca,
                                                       false, "20480101000000", "20490101000000",
                                                       "localhost", localhost_ip});
    certs_write_cert("noip.pem", &(struct cert_spec){"CN=localhost", &server, "CN=Test CA", &ca,
                                                     false, from, to, "localhost", NULL});
    certs_write_cert("other-server.pem",
                     &(struct cert_spec){"CN=localhost", &other, "CN=Other CA", &other_ca, false,
                                         from, to, "localhost", localhost_ip});
    certs_write_key("other.key", &other);
    /* The server's certificate behind an intermediate: the file holds the chain. */
    certs_write_cert("chain.pem",
                     &(struct cert_spec){"CN=localhost", &server, "CN=Intermediate", &inter, false,
                                         from, to, "localhost", localhost_ip});
    certs_write_cert("chain.pem", &(struct cert_spec){"CN=Intermediate", &inter, "CN=Test CA", &ca,
                                                      true, from, to, NULL, NULL});
    certs_write_cert("leaf-of-inter.pem",
                     &(struct cert_spec){"CN=localhost", &server, "CN=Intermediate", &inter, false,
                                         from, to, "localhost", localhost_ip});
    certs_write_cert("inter.pem", &(struct cert_spec){"CN=Intermediate", &inter, "CN=Test CA", &ca,
                                                      true, from, to, NULL, NULL});
    certs_write_text("not-pem.pem", "this is not a certificate\n");
    mbedtls_pk_free(&ca);
    mbedtls_pk_free(&other_ca);
    mbedtls_pk_free(&inter);
    mbedtls_pk_free(&server);
    mbedtls_pk_free(&other);
}

static void certs_remove(void)
{
    for (size_t i = 0; i < sizeof(certs_generated) / sizeof(*certs_generated); i++)
        unlink(cert_path(certs_generated[i]));
    rmdir(certs_dir);
    mbedtls_ctr_drbg_free(&certs_drbg);
    mbedtls_entropy_free(&certs_entropy);
}

#endif
