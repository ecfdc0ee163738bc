/*
 * jwt.c: bearer tokens as Docker Distribution's auth.token checks them (see auth.h):
 * compact JWS, RSA PKCS#1 v1.5 or ECDSA over SHA-2, keys from the x5c chain or the
 * issuer's certificate bundle, then the claims.
 *
 * Everything read from a token is bounded by AUTH_TOKEN_MAX: the base64url parts are
 * decoded strictly into buffers of their exact size, and JSON is read with json.h.
 * The signature is checked before the claims are parsed, in the steps of jwt.h: what
 * needs no signature check first (an x5c chain's limits and path: x5c.c), then the
 * signatures, with copies of the bundle's keys so that checks may run on any thread.
 */
#include "access/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "access/jwt.h"
#include "access/x5c.h"
#include "base/base64.h"
#include "base/digest.h"
#include "base/json.h"

#define BUNDLE_MAX_BYTES (1024 * 1024)
#define RSA_MIN_BITS 2048

struct bundle_key {
    mbedtls_x509_crt *crt; /* a link of the verifier's bundle chain */
    char kid[AUTH_KID_SIZE];
};

struct auth_verifier {
    mbedtls_x509_crt bundle;
    struct bundle_key *keys;
    struct x5c_anchor *anchors; /* the same certificates, for x5c chains */
    size_t n_keys;
    char *issuer;
    char *service;
    struct token_lane *lane; /* token_check.c */
};

static void set_why(char *why, size_t why_len, const char *msg)
{
    if (why != NULL && why_len > 0) snprintf(why, why_len, "%s", msg);
}

/* ---- the compact form ------------------------------------------------------------------- */

struct jwt_parts {
    const char *header, *payload, *signature; /* base64url, as in the token */
    size_t header_len, payload_len, signature_len;
};

/* Splits "Bearer <h>.<p>.<s>" (the scheme in any case) into its three parts. */
static int split_bearer(const char *value, size_t len, struct jwt_parts *parts)
{
    if (len > AUTH_TOKEN_MAX) return -EMSGSIZE;
    if (value == NULL || len < 7 || strncasecmp(value, "bearer ", 7) != 0) return -EINVAL;
    const char *tok = value + 7, *end = value + len;
    const char *dot1 = memchr(tok, '.', (size_t)(end - tok));
    if (dot1 == NULL) return -EINVAL;
    const char *dot2 = memchr(dot1 + 1, '.', (size_t)(end - dot1 - 1));
    if (dot2 == NULL || memchr(dot2 + 1, '.', (size_t)(end - dot2 - 1)) != NULL) return -EINVAL;
    parts->header = tok;
    parts->header_len = (size_t)(dot1 - tok);
    parts->payload = dot1 + 1;
    parts->payload_len = (size_t)(dot2 - dot1 - 1);
    parts->signature = dot2 + 1;
    parts->signature_len = (size_t)(end - dot2 - 1);
    if (parts->header_len == 0 || parts->payload_len == 0) return -EINVAL;
    return 0;
}

/* A decoded JSON part: the bytes and their tokens, both owned. */
struct json_part {
    unsigned char *raw;
    struct json_token *tokens;
    struct json_doc doc;
};

static void json_part_free(struct json_part *jp)
{
    free(jp->raw);
    free(jp->tokens);
    jp->raw = NULL;
    jp->tokens = NULL;
}

/* Decodes a base64url part and parses it as a JSON object. */
static int json_part_read(const char *b64, size_t n, struct json_part *jp)
{
    size_t raw_len;
    memset(jp, 0, sizeof(*jp));
    jp->raw = malloc(n / 4 * 3 + 3);
    if (jp->raw == NULL) return -ENOMEM;
    if (base64_decode(b64, n, true, jp->raw, &raw_len) != 0) return -EINVAL;
    size_t cap = json_tokens_for(raw_len);
    jp->tokens = malloc(cap * sizeof(*jp->tokens));
    if (jp->tokens == NULL) return -ENOMEM;
    if (json_parse((const char *)jp->raw, raw_len, jp->tokens, cap, &jp->doc) != 0 ||
        json_type_of(&jp->doc, 0) != JSON_OBJECT)
        return -EINVAL;
    return 0;
}

int auth_bearer_exp(const char *header, size_t len, int64_t *exp_s)
{
    struct jwt_parts parts;
    struct json_part payload;
    size_t at;
    int rc = split_bearer(header, len, &parts);
    if (rc != 0) return -EINVAL;
    rc = json_part_read(parts.payload, parts.payload_len, &payload);
    if (rc == 0) {
        rc = json_object_get(&payload.doc, 0, "exp", &at);
        if (rc == 0)
            rc = json_number_int64(&payload.doc, at, exp_s) == 0 ? 0 : -ENOENT;
        else
            rc = -ENOENT;
    } else {
        rc = -EINVAL;
    }
    json_part_free(&payload);
    return rc;
}

int auth_basic_user(const char *header, size_t len, char *buf, size_t cap)
{
    unsigned char decoded[1024];
    size_t n = 0;
    if (cap == 0) return -EINVAL;
    buf[0] = '\0';
    if (len < 7 || strncasecmp(header, "Basic ", 6) != 0) return -EINVAL;
    const char *b64 = header + 6;
    size_t b64_len = len - 6;
    while (b64_len > 0 && *b64 == ' ')
        b64++, b64_len--;
    if (b64_len > sizeof(decoded) / 3 * 4 || base64_decode(b64, b64_len, false, decoded, &n) != 0)
        return -EINVAL;
    const unsigned char *colon = memchr(decoded, ':', n);
    size_t user_len = colon ? (size_t)(colon - decoded) : 0;
    if (colon == NULL || user_len == 0 || user_len >= cap || memchr(decoded, '\0', user_len))
        return -EINVAL;
    for (size_t i = 0; i < user_len; i++)
        if (decoded[i] < 0x20 || decoded[i] == 0x7f) return -EINVAL;
    memcpy(buf, decoded, user_len);
    buf[user_len] = '\0';
    return 0;
}

int auth_bearer_subject(const char *header, size_t len, char *buf, size_t cap)
{
    struct jwt_parts parts;
    struct json_part payload;
    size_t at, n = 0;
    if (cap == 0 || split_bearer(header, len, &parts) != 0) return -EINVAL;
    int rc = json_part_read(parts.payload, parts.payload_len, &payload);
    if (rc == 0) {
        if (json_object_get(&payload.doc, 0, "sub", &at) != 0 ||
            json_string_decode(&payload.doc, at, buf, cap, &n) != 0 || n == 0 || strlen(buf) != n)
            rc = -ENOENT;
    } else {
        rc = -EINVAL;
    }
    json_part_free(&payload);
    if (rc != 0) buf[0] = '\0';
    return rc;
}

/* ---- keys -------------------------------------------------------------------------------- */

void auth_libtrust_kid(const unsigned char *spki_der, size_t len, char out[AUTH_KID_SIZE])
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    unsigned char sum[32];
    struct digest_sha256 ctx;
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, spki_der, len);
    digest_sha256_final(&ctx, sum);

    /* 30 bytes are 240 bits: 48 base32 characters, no partial group. */
    size_t o = 0;
    for (int chunk = 0; chunk < 6; chunk++) {
        uint64_t v = 0;
        for (int b = 0; b < 5; b++)
            v = (v << 8) | sum[chunk * 5 + b];
        for (int k = 7; k >= 0; k--) {
            size_t ch = (size_t)chunk * 8 + (size_t)(7 - k);
            if (ch > 0 && ch % 4 == 0) out[o++] = ':';
            out[o++] = alphabet[(v >> (5 * k)) & 31];
        }
    }
    out[o] = '\0';
}

/* The libtrust ID of a parsed key; false when it cannot be written. */
static bool pk_kid(mbedtls_pk_context *pk, char out[AUTH_KID_SIZE])
{
    unsigned char der[4096];
    int n = mbedtls_pk_write_pubkey_der(pk, der, sizeof(der));
    if (n <= 0) return false;
    auth_libtrust_kid(der + sizeof(der) - (size_t)n, (size_t)n, out);
    return true;
}

static void set_msg(char *buf, size_t len, const char *fmt, const char *a, const char *b)
{
    if (buf != NULL && len > 0) snprintf(buf, len, fmt, a, b);
}

void auth_token_verifier_free(struct auth_verifier *v)
{
    if (v == NULL) return;
    token_lane_free(v->lane);
    mbedtls_x509_crt_free(&v->bundle);
    free(v->keys);
    free(v->anchors);
    free(v->issuer);
    free(v->service);
    free(v);
}

size_t auth_token_verifier_certs(const struct auth_verifier *v)
{
    return v->n_keys;
}

struct token_lane **jwt_verifier_lane(struct auth_verifier *v)
{
    return &v->lane;
}

/* Reads a whole file of at most BUNDLE_MAX_BYTES, NUL-terminated. */
static int read_small_file(const char *path, unsigned char **out, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -errno;
    unsigned char *buf = malloc(BUNDLE_MAX_BYTES + 1);
    if (buf == NULL) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(buf, 1, BUNDLE_MAX_BYTES + 1, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || n > BUNDLE_MAX_BYTES) {
        free(buf);
        return failed ? -EIO : -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

int auth_token_verifier_new(const char *rootcertbundle_path, const char *issuer,
                            const char *service, char *err, size_t errlen,
                            struct auth_verifier **out)
{
    *out = NULL;
    if (rootcertbundle_path == NULL || issuer == NULL || service == NULL) {
        set_msg(err, errlen, "%s%s", "auth.token: rootcertbundle, issuer and service are all ",
                "needed");
        return -EINVAL;
    }
    struct auth_verifier *v = calloc(1, sizeof(*v));
    if (v == NULL) return -ENOMEM;
    mbedtls_x509_crt_init(&v->bundle);
    v->issuer = strdup(issuer);
    v->service = strdup(service);
    if (v->issuer == NULL || v->service == NULL) {
        auth_token_verifier_free(v);
        return -ENOMEM;
    }
    unsigned char *pem = NULL;
    size_t pem_len = 0;
    int rc = read_small_file(rootcertbundle_path, &pem, &pem_len);
    if (rc != 0) {
        set_msg(err, errlen, "auth.token.rootcertbundle: %s: %s", rootcertbundle_path,
                rc == -EFBIG ? "larger than 1 MiB" : strerror(-rc));
        auth_token_verifier_free(v);
        return rc == -EFBIG || rc == -EIO ? -EINVAL : rc;
    }
    rc = pem_len > 0 && strstr((const char *)pem, "-----BEGIN CERTIFICATE-----") != NULL
             ? mbedtls_x509_crt_parse(&v->bundle, pem, pem_len + 1)
             : -1;
    free(pem);
    if (rc != 0) {
        set_msg(err, errlen, "auth.token.rootcertbundle: %s: %s", rootcertbundle_path,
                rc > 0 ? "a certificate in the bundle does not parse"
                       : "not a PEM bundle of certificates");
        auth_token_verifier_free(v);
        return -EINVAL;
    }
    for (mbedtls_x509_crt *c = &v->bundle; c != NULL && c->raw.len > 0; c = c->next)
        v->n_keys++;
    v->keys = calloc(v->n_keys, sizeof(*v->keys));
    v->anchors = calloc(v->n_keys, sizeof(*v->anchors));
    if (v->keys == NULL || v->anchors == NULL) {
        auth_token_verifier_free(v);
        return -ENOMEM;
    }
    size_t i = 0;
    for (mbedtls_x509_crt *c = &v->bundle; i < v->n_keys; c = c->next, i++) {
        v->keys[i].crt = c;
        if (!pk_kid(&c->pk, v->keys[i].kid) || x5c_anchor_init(&v->anchors[i], c) != 0) {
            set_msg(err, errlen, "auth.token.rootcertbundle: %s: %s", rootcertbundle_path,
                    "a certificate's public key or key IDs cannot be read");
            auth_token_verifier_free(v);
            return -EINVAL;
        }
    }
    *out = v;
    return 0;
}

/* ---- signatures -------------------------------------------------------------------------- */

struct jws_alg {
    const char *name;
    mbedtls_md_type_t md;
    bool ec;
    mbedtls_ecp_group_id curve; /* ec: the curve, and the size of r and s */
    size_t coord_len;
};

static const struct jws_alg jws_algs[] = {
    {"RS256", MBEDTLS_MD_SHA256, false, MBEDTLS_ECP_DP_NONE, 0},
    {"RS384", MBEDTLS_MD_SHA384, false, MBEDTLS_ECP_DP_NONE, 0},
    {"RS512", MBEDTLS_MD_SHA512, false, MBEDTLS_ECP_DP_NONE, 0},
    {"ES256", MBEDTLS_MD_SHA256, true, MBEDTLS_ECP_DP_SECP256R1, 32},
    {"ES384", MBEDTLS_MD_SHA384, true, MBEDTLS_ECP_DP_SECP384R1, 48},
    {"ES512", MBEDTLS_MD_SHA512, true, MBEDTLS_ECP_DP_SECP521R1, 66},
};

/* True when key pk made signature sig over the digest hash with alg. */
static bool signature_ok(const struct jws_alg *alg, mbedtls_pk_context *pk,
                         const unsigned char *hash, size_t hash_len, const unsigned char *sig,
                         size_t sig_len)
{
    mbedtls_pk_type_t type = mbedtls_pk_get_type(pk);
    if (!alg->ec) {
        if (type != MBEDTLS_PK_RSA || mbedtls_pk_get_bitlen(pk) < RSA_MIN_BITS ||
            sig_len != mbedtls_pk_get_len(pk))
            return false;
        return mbedtls_pk_verify(pk, alg->md, hash, hash_len, sig, sig_len) == 0;
    }
    if (type != MBEDTLS_PK_ECKEY && type != MBEDTLS_PK_ECDSA) return false;
    mbedtls_ecp_keypair *kp = mbedtls_pk_ec(*pk);
    if (kp->grp.id != alg->curve || sig_len != 2 * alg->coord_len) return false;
    mbedtls_mpi r, s;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    bool ok = mbedtls_mpi_read_binary(&r, sig, alg->coord_len) == 0 &&
              mbedtls_mpi_read_binary(&s, sig + alg->coord_len, alg->coord_len) == 0 &&
              mbedtls_ecdsa_verify(&kp->grp, hash, hash_len, &kp->Q, &r, &s) == 0;
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
    return ok;
}

/* What step 2 checks: everything in it is the check's own (see jwt.h). */
struct jwt_check {
    const struct jws_alg *alg;
    unsigned char hash[MBEDTLS_MD_MAX_SIZE]; /* of what was signed */
    size_t hash_len;
    unsigned char *sig;
    size_t sig_len;
    enum { KEY_X5C, KEY_KID, KEY_ANY } key;
    char kid[AUTH_KID_SIZE];
    struct x5c_chain chain; /* KEY_X5C: parsed and prechecked */
    struct tm now;
};

void jwt_check_free(struct jwt_check *c)
{
    if (c == NULL) return;
    x5c_chain_free(&c->chain);
    free(c->sig);
    free(c);
}

/* Reads the header's x5c (an array of standard base64 DER, leaf first) into the chain. */
static int x5c_read(const struct json_doc *h, size_t x5c, struct x5c_chain *chain, char *why,
                    size_t why_len)
{
    size_t n = json_count(h, x5c);
    if (json_type_of(h, x5c) != JSON_ARRAY || n == 0 || n > X5C_MAX_CERTS) {
        set_why(why, why_len, "x5c is not an array of 1 to 8 certificates");
        return -EINVAL;
    }
    size_t at = x5c + 1;
    for (size_t k = 0; k < n; k++, at = json_skip(h, at)) {
        size_t raw_len = json_type_of(h, at) == JSON_STRING ? h->tokens[at].len : 0;
        char *b64 = malloc(raw_len + 1);
        unsigned char *der = malloc(raw_len / 4 * 3 + 3);
        size_t b64_len = 0, der_len = 0;
        int rc = b64 == NULL || der == NULL ? -ENOMEM : 0;
        if (rc == 0 &&
            (raw_len == 0 || json_string_decode(h, at, b64, raw_len + 1, &b64_len) != 0 ||
             base64_decode(b64, b64_len, false, der, &der_len) != 0)) {
            set_why(why, why_len, "x5c holds something other than base64 certificates");
            rc = -EINVAL;
        }
        if (rc == 0) rc = x5c_chain_add(chain, der, der_len, why, why_len);
        free(b64);
        free(der);
        if (rc == -ENOMEM) set_why(why, why_len, "out of memory");
        if (rc != 0) return rc;
    }
    return 0;
}

/* The key the JOSE header names, as far as it can be known without a signature check. */
static int choose_key(const struct auth_verifier *v, const struct json_doc *h, struct jwt_check *c,
                      char *why, size_t why_len)
{
    size_t x5c, kid, kid_len;
    int has_x5c = json_object_get(h, 0, "x5c", &x5c);
    int has_kid = json_object_get(h, 0, "kid", &kid);
    if (has_x5c == -EINVAL || has_kid == -EINVAL) {
        set_why(why, why_len, "the token header repeats a key");
        return -EINVAL;
    }
    if (has_x5c == 0) {
        /* Everything that is decided without a signature, before any is checked. */
        c->key = KEY_X5C;
        int rc = x5c_read(h, x5c, &c->chain, why, why_len);
        if (rc == 0) rc = x5c_chain_precheck(&c->chain, v->anchors, v->n_keys, why, why_len);
        return rc;
    }
    if (has_kid == 0) {
        c->key = KEY_KID;
        if (json_type_of(h, kid) != JSON_STRING ||
            json_string_decode(h, kid, c->kid, sizeof(c->kid), &kid_len) != 0) {
            set_why(why, why_len, "the token's kid is not a key ID");
            return -EINVAL;
        }
        for (size_t i = 0; i < v->n_keys; i++)
            if (strlen(v->keys[i].kid) == kid_len && memcmp(v->keys[i].kid, c->kid, kid_len) == 0)
                return 0;
        set_why(why, why_len, "the token's kid names no key of the bundle");
        return -EPERM;
    }
    c->key = KEY_ANY;
    return 0;
}

int jwt_check_begin(const struct auth_verifier *v, const char *header, size_t len, int64_t now_s,
                    struct jwt_check **out, char *why, size_t why_len)
{
    struct jwt_parts parts;
    struct json_part hp = {0};
    size_t at;
    *out = NULL;
    int rc = split_bearer(header, len, &parts);
    if (rc != 0) {
        set_why(why, why_len,
                rc == -EMSGSIZE ? "the token is longer than 8 KiB" : "not a Bearer JWT");
        return rc;
    }
    struct jwt_check *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        set_why(why, why_len, "out of memory");
        return -ENOMEM;
    }
    x5c_chain_init(&c->chain);
    time_t t = (time_t)now_s;
    if (gmtime_r(&t, &c->now) == NULL) {
        set_why(why, why_len, "the time is out of range");
        rc = -EPERM;
        goto out;
    }
    rc = json_part_read(parts.header, parts.header_len, &hp);
    if (rc != 0) {
        set_why(why, why_len,
                rc == -ENOMEM ? "out of memory" : "the token header is not base64url JSON");
        goto out;
    }
    const struct json_doc *h = &hp.doc;
    rc = -EINVAL;
    if (json_object_get(h, 0, "alg", &at) != 0 || json_type_of(h, at) != JSON_STRING) {
        set_why(why, why_len, "the token header has no alg");
        goto out;
    }
    for (size_t i = 0; i < sizeof(jws_algs) / sizeof(jws_algs[0]); i++)
        if (json_string_equals(h, at, jws_algs[i].name, strlen(jws_algs[i].name)))
            c->alg = &jws_algs[i];
    if (c->alg == NULL) {
        set_why(why, why_len, "the token's alg is not one of RS256/384/512, ES256/384/512");
        rc = -ENOTSUP;
        goto out;
    }
    if (json_object_get(h, 0, "crit", &at) != -ENOENT) {
        set_why(why, why_len, "the token header has crit");
        rc = -ENOTSUP;
        goto out;
    }
    c->sig = malloc(parts.signature_len / 4 * 3 + 3);
    if (c->sig == NULL) {
        set_why(why, why_len, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    if (base64_decode(parts.signature, parts.signature_len, true, c->sig, &c->sig_len) != 0) {
        set_why(why, why_len, "the token signature is not base64url");
        goto out;
    }
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(c->alg->md);
    size_t signed_len = parts.header_len + 1 + parts.payload_len;
    if (md == NULL ||
        mbedtls_md(md, (const unsigned char *)parts.header, signed_len, c->hash) != 0) {
        set_why(why, why_len, "cannot hash the token");
        rc = -ENOTSUP;
        goto out;
    }
    c->hash_len = mbedtls_md_get_size(md);
    rc = choose_key(v, h, c, why, why_len);
out:
    json_part_free(&hp);
    if (rc != 0) {
        jwt_check_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* Whether the signature verifies with a copy of bundle certificate crt's public key (a copy:
 * mbedTLS keeps tables in a key as it uses it, and checks may run on several threads). */
static int signed_by_bundle_key(const struct jwt_check *c, const mbedtls_x509_crt *crt)
{
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int rc = mbedtls_pk_parse_public_key(&pk, crt->pk_raw.p, crt->pk_raw.len);
    if (rc == 0) rc = signature_ok(c->alg, &pk, c->hash, c->hash_len, c->sig, c->sig_len) ? 0 : 1;
    mbedtls_pk_free(&pk);
    return rc == 0 ? 0 : rc == 1 ? -EPERM : -ENOMEM;
}

int jwt_check_signatures(const struct auth_verifier *v, struct jwt_check *c, char *why,
                         size_t why_len)
{
    if (c->key == KEY_X5C) {
        /* The token's signature first: with a forged leaf key it is the only check made,
         * and it is one with a key x5c_chain_precheck has bounded. */
        if (!signature_ok(c->alg, x5c_chain_leaf_key(&c->chain), c->hash, c->hash_len, c->sig,
                          c->sig_len)) {
            set_why(why, why_len, "the token signature does not verify with the x5c certificate");
            return -EPERM;
        }
        return x5c_chain_verify(&c->chain, v->anchors, v->n_keys, &c->now, why, why_len);
    }
    int rc = -EPERM;
    set_why(why, why_len,
            c->key == KEY_KID ? "the token signature does not verify with the key its kid names"
                              : "the token signature verifies with no key of the bundle");
    for (size_t i = 0; i < v->n_keys && rc != 0; i++) {
        if (c->key == KEY_KID && strcmp(v->keys[i].kid, c->kid) != 0) continue; /* no NUL */
        rc = signed_by_bundle_key(c, v->keys[i].crt);
        if (rc == -ENOMEM) set_why(why, why_len, "out of memory");
    }
    return rc;
}

/* ---- claims ------------------------------------------------------------------------------ */

static bool string_is(const struct json_doc *d, size_t i, const char *s)
{
    return json_string_equals(d, i, s, strlen(s));
}

static bool grants(const struct json_doc *d, size_t access, const char *repo, size_t repo_len,
                   const char *action)
{
    size_t e = access + 1;
    for (size_t k = 0; k < json_count(d, access); k++, e = json_skip(d, e)) {
        size_t type, name, actions;
        if (json_object_get(d, e, "type", &type) != 0 || !string_is(d, type, "repository") ||
            json_object_get(d, e, "name", &name) != 0 ||
            !json_string_equals(d, name, repo, repo_len) ||
            json_object_get(d, e, "actions", &actions) != 0 ||
            json_type_of(d, actions) != JSON_ARRAY)
            continue;
        size_t a = actions + 1;
        for (size_t m = 0; m < json_count(d, actions); m++, a = json_skip(d, a))
            if (string_is(d, a, action) || string_is(d, a, "*")) return true;
    }
    return false;
}

/*
 * A time claim (exp, nbf, iat) as Docker Distribution reads it, into an int64 with Go's
 * encoding/json: an integer (no fraction, no exponent: 300.5 and 3e2 refuse the whole
 * token), or absent or null (*present false). Returns 0, or -EINVAL for anything else.
 */
static int time_claim(const struct json_doc *d, const char *name, bool *present, int64_t *t)
{
    size_t at;
    int rc = json_object_get(d, 0, name, &at);
    *present = false;
    if (rc == -ENOENT || (rc == 0 && json_type_of(d, at) == JSON_NULL)) return 0;
    if (rc != 0 || json_integer_int64(d, at, t) != 0) return -EINVAL;
    *present = true;
    return 0;
}

static int check_claims(const struct auth_verifier *v, const struct json_doc *d, const char *repo,
                        size_t repo_len, const char *action, int64_t now_s, const char **why)
{
    size_t at;
    int64_t t;
    if (json_object_get(d, 0, "iss", &at) != 0 || !string_is(d, at, v->issuer)) {
        *why = "the token's issuer is not the configured one";
        return -EACCES;
    }
    bool aud_ok = false;
    if (json_object_get(d, 0, "aud", &at) == 0) {
        if (json_type_of(d, at) == JSON_ARRAY) {
            size_t a = at + 1;
            for (size_t k = 0; k < json_count(d, at) && !aud_ok; k++, a = json_skip(d, a))
                aud_ok = string_is(d, a, v->service);
        } else {
            aud_ok = string_is(d, at, v->service);
        }
    }
    if (!aud_ok) {
        *why = "the token's audience is not this service";
        return -EACCES;
    }
    bool present;
    if (time_claim(d, "exp", &present, &t) != 0 || !present) {
        *why = "the token has no valid exp (an integer)";
        return -EACCES;
    }
    if (t < now_s - AUTH_TOKEN_LEEWAY_S) {
        *why = "the token has expired";
        return -EACCES;
    }
    if (time_claim(d, "nbf", &present, &t) != 0) {
        *why = "the token's nbf is not an integer";
        return -EACCES;
    }
    if (present && t > now_s + AUTH_TOKEN_LEEWAY_S) {
        *why = "the token is not valid yet";
        return -EACCES;
    }
    if (time_claim(d, "iat", &present, &t) != 0) {
        *why = "the token's iat is not an integer";
        return -EACCES;
    }
    if (action[0] == '\0') return 0; /* AUTH_ACTION_SIGNED_IN: a valid token is enough */
    if (json_object_get(d, 0, "access", &at) != 0 || json_type_of(d, at) != JSON_ARRAY ||
        !grants(d, at, repo, repo_len, action)) {
        *why = "the token grants no such access to this repository";
        return -EACCES;
    }
    return 0;
}

int jwt_check_claims(const struct auth_verifier *v, const char *header, size_t len,
                     const char *repo, size_t repo_len, const char *action, int64_t now_s,
                     char *why, size_t why_len)
{
    struct jwt_parts parts;
    struct json_part payload = {0};
    const char *reason = "not a Bearer JWT";
    int rc = split_bearer(header, len, &parts);
    if (rc == 0) {
        rc = json_part_read(parts.payload, parts.payload_len, &payload);
        if (rc != 0)
            reason = rc == -ENOMEM ? "out of memory" : "the token claims are not base64url JSON";
    }
    if (rc == 0)
        rc =
            check_claims(v, &payload.doc, repo, repo_len, action ? action : "pull", now_s, &reason);
    json_part_free(&payload);
    if (rc != 0) set_why(why, why_len, reason);
    return rc;
}

int auth_token_verify(const struct auth_verifier *v, const char *header, size_t len,
                      const char *repo, size_t repo_len, const char *action, int64_t now_s,
                      char *why, size_t why_len)
{
    struct jwt_check *c;
    int rc = jwt_check_begin(v, header, len, now_s, &c, why, why_len);
    if (rc == 0) rc = jwt_check_signatures(v, c, why, why_len);
    jwt_check_free(c);
    if (rc == 0) rc = jwt_check_claims(v, header, len, repo, repo_len, action, now_s, why, why_len);
    return rc;
}
