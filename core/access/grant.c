/*
 * grant.c: ES256 redirect grants with mbedTLS. See grant.h.
 *
 * Each call loads its own group and key from the plain bytes of struct grant_key: mbedTLS
 * caches a precomputation in the group it multiplies with, so a group shared by two
 * threads would be written by both.
 */
#include "access/grant.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>

#include "base/base64.h"
#include "base/digest.h"
#include "base/json.h"

#define KEY_FILE_MAX (16 * 1024)

static void set_why(char *why, size_t len, const char *msg)
{
    if (why != NULL && len > 0) snprintf(why, len, "%s", msg);
}

/* getrandom(2) for mbedTLS: a new key, and the blinding of a deterministic signature. */
static int os_random(void *ctx, unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = getrandom(buf, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return MBEDTLS_ERR_ECP_RANDOM_FAILED;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* --- Keys -------------------------------------------------------------------------------- */

/* The bytes (and kid) of a parsed P-256 key; the private scalar when with_private. */
static int key_from_pk(mbedtls_pk_context *pk, struct grant_key *k, bool with_private)
{
    memset(k, 0, sizeof(*k));
    if (mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECKEY) return -EINVAL;
    mbedtls_ecp_keypair *kp = mbedtls_pk_ec(*pk);
    if (kp->grp.id != MBEDTLS_ECP_DP_SECP256R1) return -EINVAL;
    size_t olen = 0;
    if (mbedtls_ecp_point_write_binary(&kp->grp, &kp->Q, MBEDTLS_ECP_PF_UNCOMPRESSED, &olen, k->q,
                                       sizeof(k->q)) != 0 ||
        olen != sizeof(k->q))
        return -EINVAL;
    if (with_private) {
        if (mbedtls_mpi_write_binary(&kp->d, k->d, sizeof(k->d)) != 0) return -EINVAL;
        k->has_private = true;
    }
    unsigned char der[256];
    int n = mbedtls_pk_write_pubkey_der(pk, der, sizeof(der));
    if (n <= 0) return -EINVAL;
    auth_libtrust_kid(der + sizeof(der) - (size_t)n, (size_t)n, k->kid);
    return 0;
}

static int generate_pk(mbedtls_pk_context *pk)
{
    if (mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0 ||
        mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), os_random, NULL) != 0)
        return -EIO;
    return 0;
}

int grant_key_generate(struct grant_key *k)
{
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int rc = generate_pk(&pk);
    if (rc == 0) rc = key_from_pk(&pk, k, true) == 0 ? 0 : -EIO;
    mbedtls_pk_free(&pk);
    return rc;
}

/* Writes text to path through a temporary file beside it: synced, renamed, the directory
 * synced, so the path holds the old file or the whole new one. */
static int write_atomically(const char *path, const char *text, size_t len)
{
    char tmp[1100];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -errno;
    int rc = 0;
    if (write(fd, text, len) != (ssize_t)len || fsync(fd) != 0) rc = errno ? -errno : -EIO;
    if (close(fd) != 0 && rc == 0) rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0) rc = -errno;
    if (rc != 0) {
        unlink(tmp);
        return rc;
    }
    char dir[1100];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL) {
        *slash = '\0';
        int dfd = open(slash == dir ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return 0;
}

static int read_key_file(const char *path, unsigned char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -errno;
    unsigned char *buf = malloc(KEY_FILE_MAX + 1);
    ssize_t n = buf != NULL ? read(fd, buf, KEY_FILE_MAX) : -1;
    int rc = n < 0 ? (buf == NULL ? -ENOMEM : -errno) : 0;
    close(fd);
    if (rc != 0 || n == KEY_FILE_MAX) {
        free(buf);
        return rc != 0 ? rc : -EFBIG;
    }
    buf[n] = '\0'; /* PEM is parsed with its NUL */
    *out = buf;
    *len = (size_t)n + 1;
    return 0;
}

int grant_key_load_or_create(const char *path, struct grant_key *k, bool *created, char *err,
                             size_t errlen)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    *created = false;
    int rc = read_key_file(path, &buf, &len);
    if (rc == 0) {
        if (mbedtls_pk_parse_key(&pk, buf, len, NULL, 0) != 0 || key_from_pk(&pk, k, true) != 0) {
            snprintf(err, errlen, "grant key %s: not an EC P-256 private key in PEM", path);
            rc = -EINVAL;
        }
    } else if (rc == -ENOENT) {
        unsigned char pem[1024];
        rc = generate_pk(&pk);
        if (rc == 0 && mbedtls_pk_write_key_pem(&pk, pem, sizeof(pem)) != 0) rc = -EIO;
        if (rc == 0) rc = write_atomically(path, (const char *)pem, strlen((const char *)pem));
        if (rc == 0) rc = key_from_pk(&pk, k, true) == 0 ? 0 : -EIO;
        if (rc == 0)
            *created = true;
        else
            snprintf(err, errlen, "grant key %s: cannot make one: %s", path, strerror(-rc));
        mbedtls_platform_zeroize(pem, sizeof(pem));
    } else {
        snprintf(err, errlen, "grant key %s: %s", path, strerror(-rc));
    }
    if (buf != NULL) {
        mbedtls_platform_zeroize(buf, len);
        free(buf);
    }
    mbedtls_pk_free(&pk);
    return rc;
}

int grant_jwks_write(const struct grant_key *keys, size_t n, char *buf, size_t cap)
{
    size_t pos = 0;
    int w = snprintf(buf, cap, "{\"keys\":[");
    if (w < 0 || (size_t)w >= cap) return -ENOSPC;
    pos = (size_t)w;
    for (size_t i = 0; i < n; i++) {
        char x[48], y[48];
        base64_encode(keys[i].q + 1, 32, true, x, sizeof(x));
        base64_encode(keys[i].q + 33, 32, true, y, sizeof(y));
        w = snprintf(buf + pos, cap - pos,
                     "%s{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ES256\",\"use\":\"sig\","
                     "\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"}",
                     i ? "," : "", keys[i].kid, x, y);
        if (w < 0 || (size_t)w >= cap - pos) return -ENOSPC;
        pos += (size_t)w;
    }
    w = snprintf(buf + pos, cap - pos, "]}\n");
    if (w < 0 || (size_t)w >= cap - pos) return -ENOSPC;
    return (int)(pos + (size_t)w);
}

/* True when q (65 bytes) is a point of P-256. */
static bool on_curve(const unsigned char *q)
{
    mbedtls_ecp_group grp;
    mbedtls_ecp_point pt;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&pt);
    bool ok = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) == 0 &&
              mbedtls_ecp_point_read_binary(&grp, &pt, q, 65) == 0 &&
              mbedtls_ecp_check_pubkey(&grp, &pt) == 0;
    mbedtls_ecp_point_free(&pt);
    mbedtls_ecp_group_free(&grp);
    return ok;
}

static bool string_is(const struct json_doc *d, size_t obj, const char *key, const char *want)
{
    size_t at;
    return json_object_get(d, obj, key, &at) == 0 && json_string_equals(d, at, want, strlen(want));
}

/* A base64url coordinate of 32 bytes, member `key` of object obj, into out. */
static bool coordinate(const struct json_doc *d, size_t obj, const char *key, unsigned char *out)
{
    size_t at, n = 0;
    char b64[64];
    unsigned char raw[48];
    return json_object_get(d, obj, key, &at) == 0 &&
           json_string_decode(d, at, b64, sizeof(b64), &n) == 0 &&
           base64_decode(b64, n, true, raw, &n) == 0 && n == 32 && memcpy(out, raw, 32);
}

int grant_jwks_read(const char *json, size_t len, struct grant_key *out, size_t cap, size_t *n)
{
    size_t ntok = json_tokens_for(len);
    struct json_token *toks = calloc(ntok, sizeof(*toks));
    struct json_doc d;
    size_t keys;
    *n = 0;
    if (toks == NULL) return -ENOMEM;
    if (json_parse(json, len, toks, ntok, &d) != 0 || json_type_of(&d, 0) != JSON_OBJECT ||
        json_object_get(&d, 0, "keys", &keys) != 0 || json_type_of(&d, keys) != JSON_ARRAY) {
        free(toks);
        return -EINVAL;
    }
    size_t e = keys + 1;
    for (size_t i = 0; i < json_count(&d, keys) && *n < cap; i++, e = json_skip(&d, e)) {
        struct grant_key k;
        memset(&k, 0, sizeof(k));
        size_t at, kl = 0;
        if (json_type_of(&d, e) != JSON_OBJECT || !string_is(&d, e, "kty", "EC") ||
            !string_is(&d, e, "crv", "P-256") || json_object_get(&d, e, "kid", &at) != 0 ||
            json_string_decode(&d, at, k.kid, sizeof(k.kid), &kl) != 0 || kl == 0 ||
            strlen(k.kid) != kl)
            continue;
        k.q[0] = 0x04;
        if (!coordinate(&d, e, "x", k.q + 1) || !coordinate(&d, e, "y", k.q + 33) || !on_curve(k.q))
            continue;
        out[(*n)++] = k;
    }
    free(toks);
    return 0;
}

/* --- Grants ------------------------------------------------------------------------------ */

/* SHA-256 of the signing input, header "." claims. */
static void signing_hash(const char *input, size_t len, unsigned char hash[32])
{
    struct digest_sha256 ctx;
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, (const unsigned char *)input, len);
    digest_sha256_final(&ctx, hash);
}

static bool printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return true;
}

int grant_sign(const struct grant_key *k, const struct grant_claims *c, char *out, size_t cap)
{
    if (!k->has_private || !printable(c->user) || !printable(c->repository) ||
        !printable(c->digest) || c->user[0] == '\0')
        return -EINVAL;
    char header[160], claims[1024], user[GRANT_USER_MAX * 6 + 1];
    if (json_escape(c->user, strlen(c->user), user, sizeof(user)) < 0) return -EINVAL;
    int hl = snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
                      k->kid);
    int cl = snprintf(claims, sizeof(claims),
                      "{\"iss\":\"%s\",\"sub\":\"%s\",\"repository\":\"%s\",\"digest\":\"%s\","
                      "\"iat\":%" PRId64 ",\"exp\":%" PRId64 "}",
                      GRANT_ISSUER, user, c->repository, c->digest, c->iat, c->exp);
    if (hl < 0 || (size_t)hl >= sizeof(header) || cl < 0 || (size_t)cl >= sizeof(claims))
        return -EINVAL;
    size_t need = base64_encoded_len((size_t)hl, true) + base64_encoded_len((size_t)cl, true) +
                  base64_encoded_len(64, true) + 3;
    if (cap < need) return -ENOSPC;
    int n1 = base64_encode((const unsigned char *)header, (size_t)hl, true, out, cap);
    out[n1] = '.';
    int n2 = base64_encode((const unsigned char *)claims, (size_t)cl, true, out + n1 + 1,
                           cap - (size_t)n1 - 1);
    size_t input_len = (size_t)n1 + 1 + (size_t)n2;
    unsigned char hash[32], sig[64];
    signing_hash(out, input_len, hash);

    mbedtls_ecp_group grp;
    mbedtls_mpi d, r, s;
    mbedtls_ecp_group_init(&grp);
    mbedtls_mpi_init(&d);
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    int rc = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) == 0 &&
                     mbedtls_mpi_read_binary(&d, k->d, sizeof(k->d)) == 0 &&
                     mbedtls_ecdsa_sign_det_ext(&grp, &r, &s, &d, hash, sizeof(hash),
                                                MBEDTLS_MD_SHA256, os_random, NULL) == 0 &&
                     mbedtls_mpi_write_binary(&r, sig, 32) == 0 &&
                     mbedtls_mpi_write_binary(&s, sig + 32, 32) == 0
                 ? 0
                 : -EIO;
    mbedtls_mpi_free(&s);
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&d);
    mbedtls_ecp_group_free(&grp);
    if (rc != 0) return rc;
    out[input_len] = '.';
    int n3 = base64_encode(sig, sizeof(sig), true, out + input_len + 1, cap - input_len - 1);
    return (int)(input_len + 1 + (size_t)n3);
}

struct parts {
    const char *header, *claims, *sig;
    size_t header_len, claims_len, sig_len;
};

static int split(const char *token, size_t len, struct parts *p)
{
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (len > GRANT_MAX || dot1 == NULL || dot2 == NULL ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return -EINVAL;
    p->header = token;
    p->header_len = (size_t)(dot1 - token);
    p->claims = dot1 + 1;
    p->claims_len = (size_t)(dot2 - dot1 - 1);
    p->sig = dot2 + 1;
    p->sig_len = len - (size_t)(dot2 + 1 - token);
    return 0;
}

/* A base64url part as a JSON object: its decoded bytes in raw, its tokens in toks. */
static int read_part(const char *b64, size_t n, char *raw, struct json_token *toks, size_t cap,
                     struct json_doc *d)
{
    size_t len = 0;
    if (base64_decode(b64, n, true, (unsigned char *)raw, &len) != 0 ||
        json_parse(raw, len, toks, cap, d) != 0 || json_type_of(d, 0) != JSON_OBJECT)
        return -EINVAL;
    return 0;
}

int grant_kid(const char *token, size_t len, char kid[AUTH_KID_SIZE])
{
    struct parts p;
    char raw[GRANT_MAX];
    struct json_token toks[64];
    struct json_doc d;
    size_t at, n = 0;
    kid[0] = '\0';
    if (split(token, len, &p) != 0 ||
        read_part(p.header, p.header_len, raw, toks, sizeof(toks) / sizeof(*toks), &d) != 0 ||
        json_object_get(&d, 0, "kid", &at) != 0 ||
        json_string_decode(&d, at, kid, AUTH_KID_SIZE, &n) != 0 || n == 0 || strlen(kid) != n) {
        kid[0] = '\0';
        return -EINVAL;
    }
    return 0;
}

static bool signature_verifies(const struct grant_key *k, const struct parts *p)
{
    unsigned char sig[64 + 2], hash[32];
    size_t n = 0;
    if (p->sig_len != base64_encoded_len(64, true) ||
        base64_decode(p->sig, p->sig_len, true, sig, &n) != 0 || n != 64)
        return false;
    signing_hash(p->header, p->header_len + 1 + p->claims_len, hash);
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_mpi r, s;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    bool ok = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) == 0 &&
              mbedtls_ecp_point_read_binary(&grp, &q, k->q, sizeof(k->q)) == 0 &&
              mbedtls_mpi_read_binary(&r, sig, 32) == 0 &&
              mbedtls_mpi_read_binary(&s, sig + 32, 32) == 0 &&
              mbedtls_ecdsa_verify(&grp, hash, sizeof(hash), &q, &r, &s) == 0;
    mbedtls_mpi_free(&s);
    mbedtls_mpi_free(&r);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    return ok;
}

static bool claim_string(const struct json_doc *d, const char *key, char *buf, size_t cap)
{
    size_t at, n = 0;
    return json_object_get(d, 0, key, &at) == 0 && json_string_decode(d, at, buf, cap, &n) == 0 &&
           strlen(buf) == n && n > 0;
}

int grant_verify(const struct grant_key *k, const char *token, size_t len, const char *repo,
                 size_t repo_len, const char *digest, size_t digest_len, int64_t now_s,
                 struct grant_claims *out, char *why, size_t why_len)
{
    struct parts p;
    char raw[GRANT_MAX];
    struct json_token toks[64];
    struct json_doc d;
    size_t at;
    struct grant_claims c;
    memset(&c, 0, sizeof(c));
    if (split(token, len, &p) != 0 ||
        read_part(p.header, p.header_len, raw, toks, sizeof(toks) / sizeof(*toks), &d) != 0) {
        set_why(why, why_len, "not a grant");
        return -EINVAL;
    }
    if (!string_is(&d, 0, "alg", "ES256")) {
        set_why(why, why_len, "the grant's algorithm is not ES256");
        return -EINVAL;
    }
    if (!string_is(&d, 0, "kid", k->kid) || !signature_verifies(k, &p)) {
        set_why(why, why_len, "the grant's signature does not verify");
        return -EPERM;
    }
    if (read_part(p.claims, p.claims_len, raw, toks, sizeof(toks) / sizeof(*toks), &d) != 0 ||
        !string_is(&d, 0, "iss", GRANT_ISSUER) || json_object_get(&d, 0, "exp", &at) != 0 ||
        json_integer_int64(&d, at, &c.exp) != 0 ||
        !claim_string(&d, "sub", c.user, sizeof(c.user)) ||
        !claim_string(&d, "repository", c.repository, sizeof(c.repository)) ||
        !claim_string(&d, "digest", c.digest, sizeof(c.digest))) {
        set_why(why, why_len, "the grant's claims are not a grant's");
        return -EINVAL;
    }
    if (json_object_get(&d, 0, "iat", &at) == 0) json_integer_int64(&d, at, &c.iat);
    if (now_s > c.exp + GRANT_LEEWAY_S) {
        set_why(why, why_len, "the grant has expired");
        return -EKEYEXPIRED;
    }
    if (strlen(c.repository) != repo_len || memcmp(c.repository, repo, repo_len) != 0) {
        set_why(why, why_len, "the grant is for another repository");
        return -EACCES;
    }
    if (strlen(c.digest) != digest_len || memcmp(c.digest, digest, digest_len) != 0) {
        set_why(why, why_len, "the grant is for another blob");
        return -EACCES;
    }
    if (out != NULL) *out = c;
    return 0;
}

int grant_status(int rc)
{
    return rc == -EACCES ? 403 : 401;
}

const char *grant_in_query(const char *query, size_t qlen, size_t *len)
{
    size_t name = strlen(GRANT_PARAM);
    while (query != NULL && qlen > 0) {
        const char *amp = memchr(query, '&', qlen);
        size_t plen = amp ? (size_t)(amp - query) : qlen;
        if (plen > name + 1 && memcmp(query, GRANT_PARAM, name) == 0 && query[name] == '=') {
            *len = plen - name - 1;
            return query + name + 1;
        }
        if (amp == NULL) break;
        qlen -= plen + 1;
        query = amp + 1;
    }
    *len = 0;
    return NULL;
}

bool grant_redact(const char *target, char *out, size_t cap)
{
    const char *q = strchr(target, '?');
    size_t glen;
    const char *g = q ? grant_in_query(q + 1, strlen(q + 1), &glen) : NULL;
    if (g == NULL || cap == 0) return false;
    snprintf(out, cap, "%.*sREDACTED%s", (int)(g - target), target, g + glen);
    return true;
}

bool grant_strip(const char *target, char *out, size_t cap)
{
    const char *q = strchr(target, '?');
    size_t glen;
    const char *g = q ? grant_in_query(q + 1, strlen(q + 1), &glen) : NULL;
    if (g == NULL || cap == 0) return false;
    const char *param = g - strlen(GRANT_PARAM) - 1; /* "grant=" */
    const char *after = g + glen;
    size_t head = (size_t)(param - target);
    if (*after == '&') {
        after++; /* "...&grant=x&rest" -> "...&rest" */
    } else if (head > 0 && target[head - 1] == '&') {
        head--; /* "...&grant=x" -> "..." */
    } else if (head > 0 && target[head - 1] == '?') {
        head--; /* "?grant=x" -> "" */
    }
    snprintf(out, cap, "%.*s%s", (int)head, target, after);
    return true;
}
