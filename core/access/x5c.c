/*
 * x5c.c: a token's x5c chain against the bundle, checked before any signature and then
 * verified from the top down. See x5c.h.
 */
#include "access/x5c.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <mbedtls/asn1.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/rsa.h>

static void set_why(char *why, size_t why_len, const char *msg)
{
    if (why != NULL && why_len > 0) snprintf(why, why_len, "%s", msg);
}

/* ---- key IDs ----------------------------------------------------------------------------- */

/*
 * Finds the subject key ID (2.5.29.14: an OCTET STRING) and the authority key ID's
 * keyIdentifier (2.5.29.35: SEQUENCE { [0] IMPLICIT OCTET STRING OPTIONAL, ... }) in the
 * extensions of crt, which mbedTLS has already parsed once (so they are well formed).
 * Either may be absent (NULL). Returns 0, or -EINVAL when the extensions do not parse.
 */
static int key_ids(const mbedtls_x509_crt *crt, const unsigned char **ski, size_t *ski_len,
                   const unsigned char **aki, size_t *aki_len)
{
    *ski = *aki = NULL;
    *ski_len = *aki_len = 0;
    if (crt->v3_ext.len == 0) return 0;
    unsigned char *p = crt->v3_ext.p, *end = p + crt->v3_ext.len;
    size_t len;
    if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
        return -EINVAL;
    end = p + len;
    while (p < end) {
        if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) !=
            0)
            return -EINVAL;
        unsigned char *ext_end = p + len;
        mbedtls_asn1_buf oid;
        if (mbedtls_asn1_get_tag(&p, ext_end, &oid.len, MBEDTLS_ASN1_OID) != 0) return -EINVAL;
        oid.p = p;
        p += oid.len;
        int critical;
        if (p < ext_end && *p == MBEDTLS_ASN1_BOOLEAN &&
            mbedtls_asn1_get_bool(&p, ext_end, &critical) != 0)
            return -EINVAL;
        if (mbedtls_asn1_get_tag(&p, ext_end, &len, MBEDTLS_ASN1_OCTET_STRING) != 0) return -EINVAL;
        unsigned char *value = p, *value_end = p + len;
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER, &oid) == 0) {
            if (mbedtls_asn1_get_tag(&value, value_end, &len, MBEDTLS_ASN1_OCTET_STRING) != 0)
                return -EINVAL;
            *ski = value;
            *ski_len = len;
        } else if (MBEDTLS_OID_CMP(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER, &oid) == 0) {
            if (mbedtls_asn1_get_tag(&value, value_end, &len,
                                     MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
                return -EINVAL;
            value_end = value + len;
            if (value < value_end && *value == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0)) {
                if (mbedtls_asn1_get_tag(&value, value_end, &len, MBEDTLS_ASN1_CONTEXT_SPECIFIC) !=
                    0)
                    return -EINVAL;
                *aki = value;
                *aki_len = len;
            }
        }
        p = ext_end;
    }
    return 0;
}

int x5c_anchor_init(struct x5c_anchor *a, const mbedtls_x509_crt *crt)
{
    const unsigned char *aki;
    size_t aki_len;
    a->crt = crt;
    return key_ids(crt, &a->ski, &a->ski_len, &aki, &aki_len);
}

/* ---- the chain --------------------------------------------------------------------------- */

void x5c_chain_init(struct x5c_chain *c)
{
    memset(c, 0, sizeof(*c));
    mbedtls_x509_crt_init(&c->certs);
}

void x5c_chain_free(struct x5c_chain *c)
{
    mbedtls_x509_crt_free(&c->certs);
    memset(c, 0, sizeof(*c));
}

int x5c_chain_add(struct x5c_chain *c, const unsigned char *der, size_t len, char *why,
                  size_t why_len)
{
    if (c->n == X5C_MAX_CERTS) {
        set_why(why, why_len, "x5c holds more than 8 certificates");
        return -E2BIG;
    }
    int rc = mbedtls_x509_crt_parse_der(&c->certs, der, len);
    if (rc == MBEDTLS_ERR_X509_ALLOC_FAILED) {
        set_why(why, why_len, "out of memory");
        return -ENOMEM;
    }
    mbedtls_x509_crt *crt = &c->certs;
    for (size_t i = 0; i < c->n; i++)
        crt = crt->next;
    if (rc != 0 || crt == NULL || crt->raw.len == 0 ||
        key_ids(crt, &c->ids[c->n].ski, &c->ids[c->n].ski_len, &c->ids[c->n].aki,
                &c->ids[c->n].aki_len) != 0) {
        /* A certificate that failed to parse may have been linked; the chain is dropped. */
        set_why(why, why_len, "a certificate in x5c does not parse");
        return -EINVAL;
    }
    c->n++;
    c->prechecked = false;
    return 0;
}

mbedtls_pk_context *x5c_chain_leaf_key(struct x5c_chain *c)
{
    return &c->certs.pk;
}

/* ---- step 1: no signature ---------------------------------------------------------------- */

/* Whether a key is one whose checks cost a bounded, small time; else a reason. */
static bool key_within_limits(const mbedtls_pk_context *pk, char *reason, size_t len)
{
    mbedtls_pk_type_t type = mbedtls_pk_get_type(pk);
    if (type == MBEDTLS_PK_RSA) {
        size_t bits = mbedtls_pk_get_bitlen(pk);
        if (bits > X5C_RSA_MAX_BITS) {
            snprintf(reason, len, "an RSA key of %zu bits (at most %d)", bits, X5C_RSA_MAX_BITS);
            return false;
        }
        mbedtls_mpi e;
        mbedtls_mpi_init(&e);
        int rc = mbedtls_rsa_export(mbedtls_pk_rsa(*pk), NULL, NULL, NULL, NULL, &e);
        size_t e_bits = mbedtls_mpi_bitlen(&e);
        mbedtls_mpi_free(&e);
        if (rc != 0 || e_bits > X5C_RSA_MAX_EXPONENT_BITS) {
            snprintf(reason, len, "an RSA key whose public exponent has %zu bits (at most 2^32)",
                     e_bits);
            return false;
        }
        return true;
    }
    if (type == MBEDTLS_PK_ECKEY || type == MBEDTLS_PK_ECDSA) {
        mbedtls_ecp_group_id id = mbedtls_pk_ec(*pk)->grp.id;
        if (id == MBEDTLS_ECP_DP_SECP256R1 || id == MBEDTLS_ECP_DP_SECP384R1) return true;
        const mbedtls_ecp_curve_info *info = mbedtls_ecp_curve_info_from_grp_id(id);
        snprintf(reason, len, "an EC key on %s (only P-256 and P-384)",
                 info != NULL ? info->name : "an unnamed curve");
        return false;
    }
    snprintf(reason, len, "a key that is neither RSA nor EC");
    return false;
}

static bool same_bytes(const unsigned char *a, size_t a_len, const unsigned char *b, size_t b_len)
{
    return a_len == b_len && memcmp(a, b, a_len) == 0;
}

/*
 * Whether a certificate whose issuer is child's (and whose authority key ID is aki) may
 * have been issued by a certificate with that subject and subject key ID: names equal as
 * DER, key IDs equal where both are present.
 */
static bool may_issue(const mbedtls_x509_crt *child, const unsigned char *aki, size_t aki_len,
                      const mbedtls_x509_crt *parent, const unsigned char *ski, size_t ski_len)
{
    if (!same_bytes(child->issuer_raw.p, child->issuer_raw.len, parent->subject_raw.p,
                    parent->subject_raw.len))
        return false;
    return aki == NULL || ski == NULL || same_bytes(aki, aki_len, ski, ski_len);
}

int x5c_chain_precheck(struct x5c_chain *c, const struct x5c_anchor *anchors, size_t n_anchors,
                       char *why, size_t why_len)
{
    mbedtls_x509_crt *cert[X5C_MAX_CERTS];
    c->prechecked = false;
    c->path_len = 0;
    if (c->n == 0) {
        set_why(why, why_len, "x5c holds no certificate");
        return -EINVAL;
    }
    mbedtls_x509_crt *crt = &c->certs;
    for (size_t i = 0; i < c->n; i++, crt = crt->next) {
        char reason[96];
        cert[i] = crt;
        if (!key_within_limits(&crt->pk, reason, sizeof(reason))) {
            if (why != NULL && why_len > 0)
                snprintf(why, why_len, "x5c certificate %zu of %zu has %s", i + 1, c->n, reason);
            return -EPERM;
        }
    }

    /* Breadth first from the leaf: the shortest path, ended as early as the bundle allows. */
    size_t queue[X5C_MAX_CERTS], from[X5C_MAX_CERTS], head = 0, tail = 0;
    bool seen[X5C_MAX_CERTS] = {true};
    queue[tail++] = 0;
    while (head < tail) {
        size_t i = queue[head++];
        for (size_t a = 0; a < n_anchors; a++) {
            if (!may_issue(cert[i], c->ids[i].aki, c->ids[i].aki_len, anchors[a].crt,
                           anchors[a].ski, anchors[a].ski_len))
                continue;
            size_t len = 0;
            for (size_t k = i;; k = from[k]) {
                len++;
                if (k == 0) break;
            }
            c->path_len = len;
            for (size_t k = i;; k = from[k]) {
                c->path[--len] = cert[k];
                c->path_at[len] = k;
                if (k == 0) break;
            }
            c->anchor = a;
            c->prechecked = true;
            return 0;
        }
        for (size_t j = 1; j < c->n; j++) {
            if (seen[j] || !may_issue(cert[i], c->ids[i].aki, c->ids[i].aki_len, cert[j],
                                      c->ids[j].ski, c->ids[j].ski_len))
                continue;
            seen[j] = true;
            from[j] = i;
            queue[tail++] = j;
        }
    }
    set_why(
        why, why_len,
        "the x5c chain does not lead to a certificate of the bundle (by issuer name and key ID)");
    return -EPERM;
}

/* ---- step 2: the signatures -------------------------------------------------------------- */

/* Whether child's signature verifies with key (the check mbedTLS makes for a parent). */
static bool signed_by(const mbedtls_x509_crt *child, mbedtls_pk_context *key)
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(child->sig_md);
    unsigned char hash[MBEDTLS_MD_MAX_SIZE];
    if (md == NULL || !mbedtls_pk_can_do(key, child->sig_pk) ||
        mbedtls_md(md, child->tbs.p, child->tbs.len, hash) != 0)
        return false;
    return mbedtls_pk_verify_ext(child->sig_pk, child->sig_opts, key, child->sig_md, hash,
                                 mbedtls_md_get_size(md), child->sig.p, child->sig.len) == 0;
}

/* Is t (a certificate's UTC time) before (< 0), at or after (> 0) the broken-down now? */
static int x509_time_cmp(const mbedtls_x509_time *t, const struct tm *now)
{
    const int a[6] = {t->year, t->mon, t->day, t->hour, t->min, t->sec};
    const int b[6] = {now->tm_year + 1900, now->tm_mon + 1, now->tm_mday,
                      now->tm_hour,        now->tm_min,     now->tm_sec};
    for (int i = 0; i < 6; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

/* Judges each certificate's dates by the caller's clock, not the system's. */
static int chain_time_cb(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    const struct tm *now = arg;
    *flags &= ~(uint32_t)(MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE);
    if (x509_time_cmp(&crt->valid_to, now) < 0) *flags |= MBEDTLS_X509_BADCERT_EXPIRED;
    if (x509_time_cmp(&crt->valid_from, now) > 0) *flags |= MBEDTLS_X509_BADCERT_FUTURE;
    return 0;
}

int x5c_chain_verify(struct x5c_chain *c, const struct x5c_anchor *anchors, size_t n_anchors,
                     const struct tm *now, char *why, size_t why_len)
{
    if (!c->prechecked || c->anchor >= n_anchors) {
        set_why(why, why_len, "the x5c chain was not checked");
        return -EINVAL;
    }
    mbedtls_x509_crt *top = c->path[c->path_len - 1];
    mbedtls_x509_crt trust, path;
    mbedtls_x509_crt_init(&trust);
    mbedtls_x509_crt_init(&path);
    int rc = -EPERM;
    set_why(why, why_len, "the x5c chain is not signed by a certificate of the bundle");

    /* The top first, with a copy of a bundle certificate that may have issued it (several
     * may share a name when the issuer rolled its key; the first that verifies is kept). */
    size_t t = c->path_at[c->path_len - 1];
    for (size_t a = c->anchor; a < n_anchors && rc != 0; a++) {
        if (!may_issue(top, c->ids[t].aki, c->ids[t].aki_len, anchors[a].crt, anchors[a].ski,
                       anchors[a].ski_len))
            continue;
        const mbedtls_x509_crt *b = anchors[a].crt;
        mbedtls_x509_crt_free(&trust);
        mbedtls_x509_crt_init(&trust);
        if (mbedtls_x509_crt_parse_der(&trust, b->raw.p, b->raw.len) != 0) {
            set_why(why, why_len, "out of memory");
            rc = -ENOMEM;
            goto out;
        }
        if (signed_by(top, &trust.pk)) rc = 0;
    }
    if (rc != 0) goto out;
    /* Then down the path: each certificate with the key of the one above it. */
    for (size_t i = c->path_len - 1; i > 0; i--) {
        if (!signed_by(c->path[i - 1], &c->path[i]->pk)) {
            if (why != NULL && why_len > 0)
                snprintf(why, why_len,
                         "a certificate of the x5c chain is not signed by its issuer (link %zu)",
                         i);
            rc = -EPERM;
            goto out;
        }
    }

    /* All signatures hold: now the rest of X.509 (CA bits, key usage, path length, the
     * profile's hashes and key sizes, dates at now), by mbedTLS, on exactly this path. */
    for (size_t i = 0; i < c->path_len; i++) {
        if (mbedtls_x509_crt_parse_der(&path, c->path[i]->raw.p, c->path[i]->raw.len) != 0) {
            set_why(why, why_len, "out of memory");
            rc = -ENOMEM;
            goto out;
        }
    }
    uint32_t flags = 0;
    if (mbedtls_x509_crt_verify(&path, &trust, NULL, NULL, &flags, chain_time_cb, (void *)now) !=
        0) {
        set_why(why, why_len,
                flags & (MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE)
                    ? "the x5c chain is not valid at this time"
                    : "the x5c chain does not lead to a certificate of the bundle");
        rc = -EPERM;
        goto out;
    }
    rc = 0;
out:
    mbedtls_x509_crt_free(&trust);
    mbedtls_x509_crt_free(&path);
    return rc;
}
