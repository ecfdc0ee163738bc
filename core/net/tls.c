/*
 * tls.c: TLS sessions over mbedTLS 2.28 with buffers instead of sockets. See tls.h.
 *
 * mbedTLS reads and writes through two callbacks (mbedtls_ssl_set_bio): bio_recv takes
 * ciphertext from the session's input buffer and says WANT_READ when it is empty;
 * bio_send appends to the output buffer and says WANT_WRITE when it has no room. The
 * output buffer never moves bytes that wait to be consumed: it is reset to its start
 * only when it is empty, so a caller may write straight out of it.
 *
 * mbedtls_ssl_write, once it returned WANT_WRITE, holds an encrypted record in its own
 * buffer and expects the same call again. tls_write never lets it come to that: it
 * encrypts a record only when the output has room for a whole one. Should mbedTLS
 * still hold bytes back (a handshake message or an alert met a full buffer), they are
 * flushed with a zero-length write (which in mbedTLS 2.28 only flushes) as soon as
 * there is room again, in tls_out_consume and before the next record.
 */
#include "net/tls.h"

#include <stdatomic.h>

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <mbedtls/asn1.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

/* The loops (workers) share one server configuration: its random generator and session
 * ticket keys are guarded by mbedTLS's own mutexes, which it has only with this. */
#if !defined(MBEDTLS_THREADING_C)
#error "mbedTLS is built without MBEDTLS_THREADING_C; content-cache's loops share TLS state"
#endif

#if MBEDTLS_VERSION_MAJOR != 2
#error "tls.c is written for mbedTLS 2.x (Debian 12 ships 2.28)"
#endif

/* The largest record that one mbedtls_ssl_write can produce: 16 KiB of plaintext, the
 * header, and the worst expansion of a cipher suite (IV, MAC, CBC padding). */
#define RECORD_MAX (16384 + 5 + 16 + 48 + 256)
#define IN_CAP TLS_BUFFER_LIMIT
#define OUT_CAP (TLS_BUFFER_LIMIT + RECORD_MAX)
#define MAX_PEER_NAMES 6

struct tls_config {
    atomic_int refs; /* loops of one process may share a server config (workers) */
    bool server;
    mbedtls_ssl_config conf;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca;   /* client: trusted CAs */
    mbedtls_x509_crt cert; /* server: own chain */
    mbedtls_pk_context key;
    mbedtls_ssl_ticket_context ticket; /* server: session tickets (resumption) */
    size_t n_ca;
};

/*
 * What a server offers: ECDHE key exchange with AEAD ciphers only, ChaCha20-Poly1305
 * first (mbedTLS's AES-GCM is several times slower on CPUs like the test machines'), for
 * ECDSA and RSA certificates. mbedTLS 2.28 picks by the server's order.
 */
static const int server_ciphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

/* How long a session ticket resumes a session (its key changes as often). */
#define TICKET_LIFETIME_S 86400

enum session_state { SESSION_HANDSHAKE, SESSION_OPEN, SESSION_CLOSED, SESSION_FAILED };

struct tls_session {
    struct tls_config *cfg;
    mbedtls_ssl_context ssl;
    enum session_state state;
    int err; /* the sticky error of a failed session */
    bool sent_close_notify;
    char *in; /* IN_CAP bytes while it holds any, else NULL */
    size_t in_head, in_tail;
    char *out; /* OUT_CAP bytes while it holds any, else NULL */
    size_t out_head, out_tail;
    unsigned char ip[16]; /* the server_name when it is an IP literal */
    size_t ip_len;
    char server_name[256];
    unsigned char first[8]; /* the first bytes the peer sent, to spot plain HTTP */
    size_t first_len;
    /* What the verify callback saw of the peer's certificates. */
    bool leaf_expired, leaf_future, ca_expired;
    mbedtls_x509_time leaf_valid_from, leaf_valid_to;
    char peer_names[200];
    char protocol[96];
    char errmsg[320];
};

static const char *alpn_protocols[] = {"http/1.1", NULL};

/* --- Configs ------------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* mbedtls_strerror without its "X509 - " / "PK - " module prefix. */
static const char *strerror_plain(int ret, char *buf, size_t len)
{
    mbedtls_strerror(ret, buf, len);
    char *dash = strstr(buf, " - ");
    if (dash != NULL && dash - buf < 12) return dash + 3;
    return buf;
}

static struct tls_config *config_alloc(bool server, char *err, size_t errlen)
{
    struct tls_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    cfg->refs = 1;
    cfg->server = server;
    mbedtls_ssl_config_init(&cfg->conf);
    mbedtls_entropy_init(&cfg->entropy);
    mbedtls_ctr_drbg_init(&cfg->drbg);
    mbedtls_x509_crt_init(&cfg->ca);
    mbedtls_x509_crt_init(&cfg->cert);
    mbedtls_pk_init(&cfg->key);
    mbedtls_ssl_ticket_init(&cfg->ticket);
    static const char pers[] = "content-cache tls";
    char buf[128];
    int ret = mbedtls_ctr_drbg_seed(&cfg->drbg, mbedtls_entropy_func, &cfg->entropy,
                                    (const unsigned char *)pers, sizeof(pers) - 1);
    if (ret == 0)
        ret = mbedtls_ssl_config_defaults(&cfg->conf,
                                          server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                          MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (ret == 0) ret = mbedtls_ssl_conf_alpn_protocols(&cfg->conf, alpn_protocols);
    if (ret != 0) {
        set_err(err, errlen, "TLS setup: %s", strerror_plain(ret, buf, sizeof(buf)));
        tls_config_free(cfg);
        return NULL;
    }
    mbedtls_ssl_conf_rng(&cfg->conf, mbedtls_ctr_drbg_random, &cfg->drbg);
    mbedtls_ssl_conf_min_version(&cfg->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    return cfg;
}

/* Adds the certificates of a PEM file to *chain. Returns 0 or UV_EINVAL with err. */
static int load_certs(mbedtls_x509_crt *chain, const char *path, const char *what, char *err,
                      size_t errlen)
{
    char buf[128];
    int ret = mbedtls_x509_crt_parse_file(chain, path);
    if (ret == MBEDTLS_ERR_PK_FILE_IO_ERROR) {
        set_err(err, errlen, "%s %s: cannot be read", what, path);
        return UV_EINVAL;
    }
    if (ret < 0) {
        set_err(err, errlen, "%s %s: not a PEM certificate (%s)", what, path,
                strerror_plain(ret, buf, sizeof(buf)));
        return UV_EINVAL;
    }
    if (ret > 0) {
        set_err(err, errlen, "%s %s: %d certificate%s could not be parsed", what, path, ret,
                ret == 1 ? "" : "s");
        return UV_EINVAL;
    }
    return 0;
}

int tls_client_config_new(const char *const *ca_files, size_t n_ca, bool system_store,
                          struct tls_config **out, char *err, size_t errlen)
{
    *out = NULL;
    if (n_ca > 0 && ca_files == NULL) return UV_EINVAL;
    struct tls_config *cfg = config_alloc(false, err, errlen);
    if (cfg == NULL) return UV_ENOMEM;
    /* The system store is not the operator's file: what mbedTLS cannot parse in it
     * (or a store that is not there) is skipped. */
    if (system_store && mbedtls_x509_crt_parse_file(&cfg->ca, TLS_SYSTEM_CA_FILE) >= 0) cfg->n_ca++;
    for (size_t i = 0; i < n_ca; i++) {
        if (load_certs(&cfg->ca, ca_files[i], "CA certificate file", err, errlen) != 0) {
            tls_config_free(cfg);
            return UV_EINVAL;
        }
        cfg->n_ca++;
    }
    mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&cfg->conf, &cfg->ca, NULL);
    *out = cfg;
    return 0;
}

int tls_server_config_new(const char *cert_file, const char *key_file, const char *min_version,
                          struct tls_config **out, char *err, size_t errlen)
{
    *out = NULL;
    if (cert_file == NULL || key_file == NULL) {
        set_err(err, errlen, "TLS needs both a certificate and a key file");
        return UV_EINVAL;
    }
    if (min_version != NULL && *min_version != '\0' && strcmp(min_version, "tls1.2") != 0) {
        if (strcmp(min_version, "tls1.3") == 0) {
            set_err(err, errlen,
                    "minimum TLS version tls1.3 is not available: this build's mbedTLS %s has "
                    "no TLS 1.3 (use tls1.2)",
                    MBEDTLS_VERSION_STRING);
            return UV_ENOTSUP;
        }
        set_err(err, errlen, "minimum TLS version %s: expected tls1.2 or tls1.3", min_version);
        return UV_EINVAL;
    }
    struct tls_config *cfg = config_alloc(true, err, errlen);
    if (cfg == NULL) return UV_ENOMEM;
    char buf[128];
    int rc = load_certs(&cfg->cert, cert_file, "certificate file", err, errlen);
    if (rc == 0) {
        int ret = mbedtls_pk_parse_keyfile(&cfg->key, key_file, NULL);
        if (ret == MBEDTLS_ERR_PK_FILE_IO_ERROR) {
            set_err(err, errlen, "key file %s: cannot be read", key_file);
            rc = UV_EINVAL;
        } else if (ret != 0) {
            set_err(err, errlen, "key file %s: not a usable private key (%s)", key_file,
                    strerror_plain(ret, buf, sizeof(buf)));
            rc = UV_EINVAL;
        } else if (mbedtls_pk_check_pair(&cfg->cert.pk, &cfg->key) != 0) {
            set_err(err, errlen, "key file %s does not match the certificate in %s", key_file,
                    cert_file);
            rc = UV_EINVAL;
        }
    }
    if (rc == 0) {
        int ret = mbedtls_ssl_conf_own_cert(&cfg->conf, &cfg->cert, &cfg->key);
        if (ret != 0) {
            set_err(err, errlen, "certificate file %s: %s", cert_file,
                    strerror_plain(ret, buf, sizeof(buf)));
            rc = ret == MBEDTLS_ERR_SSL_ALLOC_FAILED ? UV_ENOMEM : UV_EINVAL;
        }
    }
    if (rc == 0) {
        /* Resumption: a returning client skips the ECDHE exchange and the signature. */
        int ret = mbedtls_ssl_ticket_setup(&cfg->ticket, mbedtls_ctr_drbg_random, &cfg->drbg,
                                           MBEDTLS_CIPHER_AES_256_GCM, TICKET_LIFETIME_S);
        if (ret != 0) {
            set_err(err, errlen, "session tickets: %s", strerror_plain(ret, buf, sizeof(buf)));
            rc = UV_ENOMEM;
        } else {
            mbedtls_ssl_conf_session_tickets_cb(&cfg->conf, mbedtls_ssl_ticket_write,
                                                mbedtls_ssl_ticket_parse, &cfg->ticket);
        }
    }
    if (rc == 0) mbedtls_ssl_conf_ciphersuites(&cfg->conf, server_ciphersuites);
    if (rc != 0) {
        tls_config_free(cfg);
        return rc;
    }
    mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_NONE);
    *out = cfg;
    return 0;
}

struct tls_config *tls_config_ref(struct tls_config *cfg)
{
    if (cfg != NULL) atomic_fetch_add(&cfg->refs, 1);
    return cfg;
}

void tls_config_free(struct tls_config *cfg)
{
    if (cfg == NULL || atomic_fetch_sub(&cfg->refs, 1) > 1) return;
    mbedtls_ssl_config_free(&cfg->conf);
    mbedtls_x509_crt_free(&cfg->ca);
    mbedtls_x509_crt_free(&cfg->cert);
    mbedtls_pk_free(&cfg->key);
    mbedtls_ssl_ticket_free(&cfg->ticket);
    mbedtls_ctr_drbg_free(&cfg->drbg);
    mbedtls_entropy_free(&cfg->entropy);
    free(cfg);
}

/* --- Certificate checks and messages ---------------------------------------------- */

/*
 * The iPAddress entries of the certificate's subjectAltName (mbedTLS 2.28 lists only
 * dNSName and otherName): up to max of them, 4 or 16 bytes each, into ips/lens.
 */
static size_t crt_ip_sans(const mbedtls_x509_crt *crt, unsigned char ips[][16], size_t *lens,
                          size_t max)
{
    static const unsigned char san_oid[] = {0x55, 0x1d, 0x11}; /* 2.5.29.17 */
    const int seq = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;
    unsigned char *p = crt->v3_ext.p;
    const unsigned char *end = p + crt->v3_ext.len;
    size_t len, n = 0;
    if (p == NULL || mbedtls_asn1_get_tag(&p, end, &len, seq) != 0) return 0;
    end = p + len;
    while (p < end) {
        if (mbedtls_asn1_get_tag(&p, end, &len, seq) != 0) break;
        const unsigned char *ext_end = p + len;
        size_t oid_len, oct_len;
        if (mbedtls_asn1_get_tag(&p, ext_end, &oid_len, MBEDTLS_ASN1_OID) != 0) break;
        bool is_san = oid_len == sizeof(san_oid) && memcmp(p, san_oid, oid_len) == 0;
        p += oid_len;
        int critical;
        if (p < ext_end && *p == MBEDTLS_ASN1_BOOLEAN &&
            mbedtls_asn1_get_bool(&p, ext_end, &critical) != 0)
            break;
        if (mbedtls_asn1_get_tag(&p, ext_end, &oct_len, MBEDTLS_ASN1_OCTET_STRING) != 0) break;
        if (is_san) {
            unsigned char *q = p;
            const unsigned char *q_end = p + oct_len;
            size_t names_len;
            if (mbedtls_asn1_get_tag(&q, q_end, &names_len, seq) != 0) break;
            q_end = q + names_len;
            while (q < q_end && n < max) {
                unsigned char tag = *q++;
                size_t l;
                if (mbedtls_asn1_get_len(&q, q_end, &l) != 0) break;
                if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_IP_ADDRESS) &&
                    (l == 4 || l == 16)) {
                    memcpy(ips[n], q, l);
                    lens[n++] = l;
                }
                q += l;
            }
        }
        p = (unsigned char *)ext_end;
    }
    return n;
}

/* "localhost, 127.0.0.1" into s->peer_names: the names the peer's certificate holds. */
static void note_peer_names(struct tls_session *s, const mbedtls_x509_crt *crt)
{
    size_t used = 0, count = 0;
    s->peer_names[0] = '\0';
#define ADD_NAME(fmt, ...)                                                                         \
    do {                                                                                           \
        if (count < MAX_PEER_NAMES && used < sizeof(s->peer_names)) {                              \
            int w = snprintf(s->peer_names + used, sizeof(s->peer_names) - used, "%s" fmt,         \
                             count ? ", " : "", __VA_ARGS__);                                      \
            if (w > 0) used += (size_t)w;                                                          \
            count++;                                                                               \
        }                                                                                          \
    } while (0)
    for (const mbedtls_x509_sequence *san = &crt->subject_alt_names; san != NULL && san->buf.p;
         san = san->next)
        if (san->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME))
            ADD_NAME("%.*s", (int)san->buf.len, (const char *)san->buf.p);
    unsigned char ips[MAX_PEER_NAMES][16];
    size_t lens[MAX_PEER_NAMES];
    size_t n_ips = crt_ip_sans(crt, ips, lens, MAX_PEER_NAMES);
    for (size_t i = 0; i < n_ips; i++) {
        char text[INET6_ADDRSTRLEN];
        if (inet_ntop(lens[i] == 4 ? AF_INET : AF_INET6, ips[i], text, sizeof(text)) != NULL)
            ADD_NAME("%s", text);
    }
    if (count == 0) {
        for (const mbedtls_x509_name *a = &crt->subject; a != NULL; a = a->next)
            if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &a->oid) == 0)
                ADD_NAME("%.*s", (int)a->val.len, (const char *)a->val.p);
    }
#undef ADD_NAME
}

/*
 * Called by mbedTLS for each certificate of the peer's chain, root first, with the
 * flags of that certificate: checks an IP literal against the leaf's iPAddress SANs,
 * and notes what the messages need.
 */
static int verify_cb(void *ctx, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    struct tls_session *s = ctx;
    if (depth > 0) {
        if (*flags & MBEDTLS_X509_BADCERT_EXPIRED) s->ca_expired = true;
        return 0;
    }
    if (s->ip_len > 0) {
        unsigned char ips[16][16];
        size_t lens[16];
        size_t n = crt_ip_sans(crt, ips, lens, 16);
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = lens[i] == s->ip_len && memcmp(ips[i], s->ip, s->ip_len) == 0;
        if (!found) *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    }
    s->leaf_expired = (*flags & MBEDTLS_X509_BADCERT_EXPIRED) != 0;
    s->leaf_future = (*flags & MBEDTLS_X509_BADCERT_FUTURE) != 0;
    s->leaf_valid_from = crt->valid_from;
    s->leaf_valid_to = crt->valid_to;
    if (*flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) note_peer_names(s, crt);
    return 0;
}

static const char *alert_name(int alert)
{
    static const struct {
        int code;
        const char *name;
    } alerts[] = {{10, "unexpected_message"},
                  {20, "bad_record_mac"},
                  {22, "record_overflow"},
                  {40, "handshake_failure"},
                  {42, "bad_certificate"},
                  {43, "unsupported_certificate"},
                  {44, "certificate_revoked"},
                  {45, "certificate_expired"},
                  {46, "certificate_unknown"},
                  {47, "illegal_parameter"},
                  {48, "unknown_ca"},
                  {49, "access_denied"},
                  {50, "decode_error"},
                  {51, "decrypt_error"},
                  {70, "protocol_version"},
                  {71, "insufficient_security"},
                  {80, "internal_error"},
                  {86, "inappropriate_fallback"},
                  {90, "user_canceled"},
                  {100, "no_renegotiation"},
                  {110, "unsupported_extension"},
                  {112, "unrecognized_name"},
                  {120, "no_application_protocol"}};
    for (size_t i = 0; i < sizeof(alerts) / sizeof(*alerts); i++)
        if (alerts[i].code == alert) return alerts[i].name;
    return "unknown alert";
}

static void format_time(const mbedtls_x509_time *t, char *buf, size_t len)
{
    snprintf(buf, len, "%04d-%02d-%02d %02d:%02d:%02d UTC", t->year, t->mon, t->day, t->hour,
             t->min, t->sec);
}

/* The reason a certificate was refused, from mbedTLS's verify flags. */
static void describe_verify(struct tls_session *s, uint32_t flags, char *buf, size_t len)
{
    char when[48];
    if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) {
        snprintf(buf, len, "certificate signed by unknown authority%s",
                 s->cfg->n_ca == 0 ? " (no CA certificates are loaded)" : "");
    } else if ((flags & MBEDTLS_X509_BADCERT_EXPIRED) && s->leaf_expired) {
        format_time(&s->leaf_valid_to, when, sizeof(when));
        snprintf(buf, len, "certificate expired (valid until %s)", when);
    } else if (flags & MBEDTLS_X509_BADCERT_EXPIRED) {
        snprintf(buf, len, "certificate expired (a CA certificate of its chain)");
    } else if ((flags & MBEDTLS_X509_BADCERT_FUTURE) && s->leaf_future) {
        format_time(&s->leaf_valid_from, when, sizeof(when));
        snprintf(buf, len, "certificate not valid yet (valid from %s)", when);
    } else if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) {
        snprintf(buf, len, "certificate name mismatch (wanted %s%s%s)", s->server_name,
                 s->peer_names[0] ? ", the certificate is for " : "", s->peer_names);
    } else {
        char info[256];
        int n = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
        while (n > 0 && info[n - 1] == '\n')
            info[--n] = '\0';
        for (char *nl = strchr(info, '\n'); nl != NULL; nl = strchr(nl, '\n'))
            *nl = ';';
        snprintf(buf, len, "certificate rejected: %s", n > 0 ? info : "unknown reason");
    }
}

static bool first_bytes_plain_http(const struct tls_session *s)
{
    /* A TLS record starts with a content type from 20 to 24; HTTP with a letter. */
    return s->first_len > 0 && s->first[0] >= 'A' && s->first[0] <= 'Z';
}

/* Makes the session failed with the reason for mbedTLS's ret; returns the error. */
static int session_fail(struct tls_session *s, int ret)
{
    if (s->state == SESSION_FAILED) return s->err;
    bool in_handshake = s->state == SESSION_HANDSHAKE;
    s->state = SESSION_FAILED;
    s->err = ret == MBEDTLS_ERR_SSL_ALLOC_FAILED ? UV_ENOMEM : UV_EPROTO;
    char reason[256];
    if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        describe_verify(s, mbedtls_ssl_get_verify_result(&s->ssl), reason, sizeof(reason));
        snprintf(s->errmsg, sizeof(s->errmsg), "%s", reason);
        return s->err;
    }
    if (in_handshake && first_bytes_plain_http(s)) {
        snprintf(s->errmsg, sizeof(s->errmsg), "handshake failed: the %s plain HTTP, not TLS",
                 s->cfg->server ? "client sent" : "server answered in");
        return s->err;
    }
    if (ret == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE && s->ssl.in_msg != NULL) {
        int alert = s->ssl.in_msg[1];
        snprintf(reason, sizeof(reason), "the peer sent the fatal alert %s (%d)", alert_name(alert),
                 alert);
    } else {
        char buf[160];
        snprintf(reason, sizeof(reason), "%s", strerror_plain(ret, buf, sizeof(buf)));
    }
    snprintf(s->errmsg, sizeof(s->errmsg), "%s%s", in_handshake ? "handshake failed: " : "",
             reason);
    return s->err;
}

/* --- The memory BIO ------------------------------------------------------------------ */

static int bio_send(void *ctx, const unsigned char *data, size_t len)
{
    struct tls_session *s = ctx;
    if (s->out_head == s->out_tail) s->out_head = s->out_tail = 0;
    if (s->out == NULL && (s->out = malloc(OUT_CAP)) == NULL) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    size_t room = OUT_CAP - s->out_tail;
    if (room == 0) return MBEDTLS_ERR_SSL_WANT_WRITE;
    size_t n = len < room ? len : room;
    memcpy(s->out + s->out_tail, data, n);
    s->out_tail += n;
    return (int)n;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct tls_session *s = ctx;
    size_t avail = s->in_tail - s->in_head;
    if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = len < avail ? len : avail;
    memcpy(buf, s->in + s->in_head, n);
    s->in_head += n;
    return (int)n;
}

/* Gives the input buffer back once it is empty. */
static void in_release_if_empty(struct tls_session *s)
{
    if (s->in_head == s->in_tail) {
        free(s->in);
        s->in = NULL;
        s->in_head = s->in_tail = 0;
    }
}

/* Moves what mbedTLS holds back into the output buffer. Returns 0 or an error. */
static int flush_held_back(struct tls_session *s)
{
    if (s->ssl.out_left == 0 || (s->state != SESSION_OPEN && s->state != SESSION_CLOSED)) return 0;
    int ret = mbedtls_ssl_write(&s->ssl, (const unsigned char *)"", 0);
    if (ret >= 0 || ret == MBEDTLS_ERR_SSL_WANT_WRITE) return 0;
    return session_fail(s, ret);
}

/* --- Sessions ------------------------------------------------------------------------ */

int tls_session_new(struct tls_config *cfg, const char *server_name, struct tls_session **out)
{
    *out = NULL;
    if (cfg == NULL || (cfg->server ? server_name != NULL : server_name == NULL) ||
        (server_name != NULL && (*server_name == '\0' || strlen(server_name) >= 256)))
        return UV_EINVAL;
    struct tls_session *s = calloc(1, sizeof(*s));
    if (s == NULL) return UV_ENOMEM;
    mbedtls_ssl_init(&s->ssl);
    s->cfg = tls_config_ref(cfg);
    int ret = mbedtls_ssl_setup(&s->ssl, &cfg->conf);
    if (ret == 0 && server_name != NULL) {
        snprintf(s->server_name, sizeof(s->server_name), "%s", server_name);
        if (inet_pton(AF_INET, server_name, s->ip) == 1)
            s->ip_len = 4;
        else if (inet_pton(AF_INET6, server_name, s->ip) == 1)
            s->ip_len = 16;
        else
            ret = mbedtls_ssl_set_hostname(&s->ssl, server_name);
        mbedtls_ssl_set_verify(&s->ssl, verify_cb, s);
    }
    if (ret != 0) {
        tls_session_free(s);
        return ret == MBEDTLS_ERR_SSL_ALLOC_FAILED ? UV_ENOMEM : UV_EINVAL;
    }
    mbedtls_ssl_set_bio(&s->ssl, s, bio_send, bio_recv, NULL);
    *out = s;
    return 0;
}

void tls_session_free(struct tls_session *s)
{
    if (s == NULL) return;
    mbedtls_ssl_free(&s->ssl);
    tls_config_free(s->cfg);
    free(s->in);
    free(s->out);
    free(s);
}

char *tls_in_space(struct tls_session *s, size_t *len)
{
    *len = 0;
    if (s->in == NULL && (s->in = malloc(IN_CAP)) == NULL) return NULL;
    if (s->in_head > 0) {
        memmove(s->in, s->in + s->in_head, s->in_tail - s->in_head);
        s->in_tail -= s->in_head;
        s->in_head = 0;
    }
    *len = IN_CAP - s->in_tail;
    return *len > 0 ? s->in + s->in_tail : NULL;
}

void tls_in_commit(struct tls_session *s, size_t n)
{
    if (s->in == NULL || n > IN_CAP - s->in_tail) return;
    size_t take = sizeof(s->first) - s->first_len;
    if (take > n) take = n;
    memcpy(s->first + s->first_len, s->in + s->in_tail, take);
    s->first_len += take;
    s->in_tail += n;
}

size_t tls_feed(struct tls_session *s, const void *data, size_t len)
{
    size_t room;
    char *space = tls_in_space(s, &room);
    size_t n = len < room ? len : room;
    if (n == 0) return 0;
    memcpy(space, data, n);
    tls_in_commit(s, n);
    return n;
}

int tls_handshake(struct tls_session *s)
{
    if (s->state == SESSION_FAILED) return s->err;
    if (s->state != SESSION_HANDSHAKE) return 0;
    int ret = mbedtls_ssl_handshake(&s->ssl);
    if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
        in_release_if_empty(s);
        return UV_EAGAIN;
    }
    if (ret != 0) return session_fail(s, ret);
    s->state = SESSION_OPEN;
    snprintf(s->protocol, sizeof(s->protocol), "%s %s", mbedtls_ssl_get_version(&s->ssl),
             mbedtls_ssl_get_ciphersuite(&s->ssl));
    return 0;
}

bool tls_handshake_done(const struct tls_session *s)
{
    return s->state == SESSION_OPEN || s->state == SESSION_CLOSED;
}

ssize_t tls_read(struct tls_session *s, char *buf, size_t len)
{
    if (len == 0) return UV_EINVAL;
    int rc = tls_handshake(s);
    if (rc != 0) return rc;
    if (s->state == SESSION_CLOSED) return UV_EOF;
    int ret = mbedtls_ssl_read(&s->ssl, (unsigned char *)buf, len);
    if (ret > 0) return ret;
    if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
        in_release_if_empty(s);
        return UV_EAGAIN;
    }
    if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || ret == 0) {
        s->state = SESSION_CLOSED;
        return UV_EOF;
    }
    return session_fail(s, ret);
}

bool tls_read_pending(const struct tls_session *s)
{
    return s->state == SESSION_FAILED || s->state == SESSION_CLOSED || s->in_tail > s->in_head ||
           mbedtls_ssl_check_pending(&s->ssl) != 0;
}

ssize_t tls_write(struct tls_session *s, const char *data, size_t len)
{
    int rc = tls_handshake(s);
    if (rc != 0) return rc;
    if (s->sent_close_notify) return UV_EPIPE;
    if (len == 0) return 0;
    if ((rc = flush_held_back(s)) != 0) return rc;
    if (s->ssl.out_left != 0) return UV_EAGAIN;
    int max = mbedtls_ssl_get_max_out_record_payload(&s->ssl);
    size_t record = max > 0 ? (size_t)max : 1024;
    size_t done = 0;
    while (done < len) {
        size_t pending = s->out_tail - s->out_head;
        size_t room = pending == 0 ? OUT_CAP : OUT_CAP - s->out_tail;
        if (pending >= TLS_BUFFER_LIMIT || room < RECORD_MAX) break;
        size_t n = len - done < record ? len - done : record;
        int ret = mbedtls_ssl_write(&s->ssl, (const unsigned char *)data + done, n);
        if (ret > 0) {
            done += (size_t)ret;
        } else if (ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
            done += n; /* encrypted; mbedTLS holds the rest of the record back */
            break;
        } else if (ret == MBEDTLS_ERR_SSL_WANT_READ) {
            break;
        } else {
            return session_fail(s, ret);
        }
    }
    return done > 0 ? (ssize_t)done : UV_EAGAIN;
}

int tls_close_notify(struct tls_session *s)
{
    if (s->state == SESSION_FAILED) return s->err;
    if (s->sent_close_notify || s->state == SESSION_HANDSHAKE) return 0;
    int rc = flush_held_back(s);
    if (rc != 0) return rc;
    if (s->ssl.out_left != 0) return UV_EAGAIN;
    int ret = mbedtls_ssl_close_notify(&s->ssl);
    if (ret != 0 && ret != MBEDTLS_ERR_SSL_WANT_WRITE) return session_fail(s, ret);
    s->sent_close_notify = true;
    return 0;
}

const char *tls_out_peek(const struct tls_session *s, size_t *len)
{
    *len = s->out_tail - s->out_head;
    return *len > 0 ? s->out + s->out_head : NULL;
}

void tls_out_consume(struct tls_session *s, size_t n)
{
    size_t pending = s->out_tail - s->out_head;
    s->out_head += n < pending ? n : pending;
    if (s->out_head == s->out_tail) {
        free(s->out);
        s->out = NULL;
        s->out_head = s->out_tail = 0;
    }
    flush_held_back(s);
}

size_t tls_out_pending(const struct tls_session *s)
{
    return s->out_tail - s->out_head + s->ssl.out_left;
}

const char *tls_session_error(const struct tls_session *s)
{
    return s->errmsg;
}

bool tls_peer_sent_plain_http(const struct tls_session *s)
{
    return s->state == SESSION_FAILED && first_bytes_plain_http(s);
}

const char *tls_session_protocol(const struct tls_session *s)
{
    return s->protocol;
}
