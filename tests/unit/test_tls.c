/*
 * test_tls.c: TLS sessions connected to each other in memory, no sockets.
 *
 * The certificates are made when the test runs (certs.h): a CA, a server certificate
 * for localhost and 127.0.0.1 signed by it, the same server expired and not yet valid,
 * one behind an intermediate CA, and one from another CA, as PEM files in a temporary
 * directory (the configs read files), which is removed at the end.
 */
#include "certs.h"
#include "check.h"
#include "net/tls.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

/* --- Sessions in memory -------------------------------------------------------------- */

static struct tls_config *client_config(const char *ca_file)
{
    const char *files[] = {cert_path(ca_file)};
    struct tls_config *cfg = NULL;
    char err[256] = "";
    int rc = tls_client_config_new(files, 1, false, &cfg, err, sizeof(err));
    CHECK_INT(rc, 0);
    if (rc != 0) fprintf(stderr, "client config: %s\n", err);
    return cfg;
}

static struct tls_config *server_config(const char *cert, const char *key)
{
    struct tls_config *cfg = NULL;
    char err[256] = "";
    int rc =
        tls_server_config_new(cert_path(cert), cert_path(key), "tls1.2", &cfg, err, sizeof(err));
    CHECK_INT(rc, 0);
    if (rc != 0) fprintf(stderr, "server config: %s\n", err);
    return cfg;
}

struct pair {
    struct tls_config *client_cfg, *server_cfg;
    struct tls_session *c, *s;
};

static void pair_open(struct pair *p, const char *ca, const char *cert, const char *key,
                      const char *server_name)
{
    memset(p, 0, sizeof(*p));
    p->client_cfg = client_config(ca);
    p->server_cfg = server_config(cert, key);
    CHECK_INT(tls_session_new(p->client_cfg, server_name, &p->c), 0);
    CHECK_INT(tls_session_new(p->server_cfg, NULL, &p->s), 0);
}

static void pair_close(struct pair *p)
{
    tls_session_free(p->c);
    tls_session_free(p->s);
    tls_config_free(p->client_cfg);
    tls_config_free(p->server_cfg);
}

/* Moves the output of `from` into `to`, at most `step` bytes at a time. Returns bytes moved. */
static size_t move(struct tls_session *from, struct tls_session *to, size_t step)
{
    size_t moved = 0, len;
    const char *data;
    while ((data = tls_out_peek(from, &len)) != NULL) {
        size_t took = tls_feed(to, data, len < step ? len : step);
        if (took == 0) break;
        tls_out_consume(from, took);
        moved += took;
    }
    return moved;
}

/* Runs both handshakes; returns 0, or the first failure (the client's, when both fail). */
static int pair_handshake(struct pair *p)
{
    for (int round = 0; round < 50; round++) {
        int rc_c = tls_handshake(p->c);
        move(p->c, p->s, SIZE_MAX);
        int rc_s = tls_handshake(p->s);
        move(p->s, p->c, SIZE_MAX);
        if (rc_c != 0 && rc_c != UV_EAGAIN) {
            tls_handshake(p->s); /* let the server see the alert */
            return rc_c;
        }
        if (rc_s != 0 && rc_s != UV_EAGAIN) {
            tls_handshake(p->c);
            return rc_s;
        }
        if (rc_c == 0 && rc_s == 0) return 0;
    }
    return UV_ETIMEDOUT;
}

/* Reads everything `s` has into buf; returns the length (or the error when none). */
static ssize_t read_all(struct tls_session *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = tls_read(s, buf + n, cap - n);
        if (r < 0) return n > 0 ? (ssize_t)n : r;
        n += (size_t)r;
    }
}

/* --- Tests ----------------------------------------------------------------------------- */

static void test_handshake_and_data(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "localhost");
    CHECK(!tls_handshake_done(p.c));
    CHECK_INT(pair_handshake(&p), 0);
    CHECK(tls_handshake_done(p.c));
    CHECK(tls_handshake_done(p.s));
    CHECK_CONTAINS(tls_session_protocol(p.c), "TLSv1.2 TLS-ECDHE-ECDSA-");
    CHECK_STR(tls_session_error(p.c), "");

    char buf[256];
    CHECK_INT(tls_read(p.s, buf, sizeof(buf)), UV_EAGAIN);
    CHECK_INT(tls_write(p.c, "GET / HTTP/1.1\r\n\r\n", 18), 18);
    move(p.c, p.s, SIZE_MAX);
    CHECK(tls_read_pending(p.s));
    CHECK_INT(read_all(p.s, buf, sizeof(buf)), 18);
    CHECK(memcmp(buf, "GET / HTTP/1.1\r\n\r\n", 18) == 0);
    CHECK(!tls_read_pending(p.s));
    CHECK_INT(tls_write(p.s, "HTTP/1.1 200 OK\r\n\r\n", 19), 19);
    move(p.s, p.c, SIZE_MAX);
    CHECK_INT(read_all(p.c, buf, sizeof(buf)), 19);

    /* close_notify: the peer reads the end, and it stays there. */
    CHECK_INT(tls_close_notify(p.c), 0);
    CHECK_INT(tls_close_notify(p.c), 0);
    CHECK_INT(tls_write(p.c, "x", 1), UV_EPIPE);
    move(p.c, p.s, SIZE_MAX);
    CHECK_INT(tls_read(p.s, buf, sizeof(buf)), UV_EOF);
    CHECK_INT(tls_read(p.s, buf, sizeof(buf)), UV_EOF);
    CHECK(tls_read_pending(p.s));
    pair_close(&p);
}

static void test_chain_with_intermediate(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "chain.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), 0);
    pair_close(&p);
    /* Without the intermediate in the file the client cannot build the chain... */
    pair_open(&p, "ca.pem", "leaf-of-inter.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate signed by unknown authority");
    pair_close(&p);
    /* ...unless it trusts the intermediate itself. */
    pair_open(&p, "inter.pem", "leaf-of-inter.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), 0);
    pair_close(&p);
}

static void test_ip_literal(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "127.0.0.1");
    CHECK_INT(pair_handshake(&p), 0);
    pair_close(&p);

    pair_open(&p, "ca.pem", "server.pem", "server.key", "127.0.0.2");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate name mismatch (wanted 127.0.0.2, the "
                                      "certificate is for localhost, 127.0.0.1)");
    pair_close(&p);

    pair_open(&p, "ca.pem", "server.pem", "server.key", "::1");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_CONTAINS(tls_session_error(p.c), "certificate name mismatch (wanted ::1");
    pair_close(&p);

    /* A certificate for the name only does not do for the address. */
    pair_open(&p, "ca.pem", "noip.pem", "server.key", "127.0.0.1");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate name mismatch (wanted 127.0.0.1, the "
                                      "certificate is for localhost)");
    pair_close(&p);
}

static void test_unknown_authority(void)
{
    struct pair p;
    pair_open(&p, "other-ca.pem", "server.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate signed by unknown authority");
    CHECK(!tls_handshake_done(p.c));
    /* The client told the server why. */
    CHECK_STR(tls_session_error(p.s), "handshake failed: the peer sent the fatal alert "
                                      "unknown_ca (48)");
    /* Failed stays failed. */
    char buf[16];
    CHECK_INT(tls_read(p.c, buf, sizeof(buf)), UV_EPROTO);
    CHECK_INT(tls_write(p.c, "x", 1), UV_EPROTO);
    CHECK_INT(tls_handshake(p.c), UV_EPROTO);
    CHECK(tls_read_pending(p.c));
    CHECK(!tls_peer_sent_plain_http(p.c));
    pair_close(&p);

    /* A server certificate from another CA. */
    pair_open(&p, "ca.pem", "other-server.pem", "other.key", "localhost");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate signed by unknown authority");
    pair_close(&p);
}

static void test_name_mismatch(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "registry.example.com");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate name mismatch (wanted registry.example.com, "
                                      "the certificate is for localhost, 127.0.0.1)");
    pair_close(&p);
    /* Names compare without regard to case. */
    pair_open(&p, "ca.pem", "server.pem", "server.key", "LocalHost");
    CHECK_INT(pair_handshake(&p), 0);
    pair_close(&p);
}

static void test_expired_and_not_yet_valid(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "expired.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate expired (valid until 2001-01-01 00:00:00 UTC)");
    CHECK_CONTAINS(tls_session_error(p.s), "certificate_expired (45)");
    pair_close(&p);

    pair_open(&p, "ca.pem", "future.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c),
              "certificate not valid yet (valid from 2048-01-01 00:00:00 UTC)");
    pair_close(&p);
}

static unsigned char pattern(size_t i, unsigned salt)
{
    return (unsigned char)((i * 131 + salt) ^ (i >> 9));
}

/* One direction of the transfer: a writer in small pieces, a reader in smaller ones. */
struct stream {
    struct tls_session *from, *to;
    unsigned salt;
    size_t written, read;
    bool ok;
};

static void stream_step(struct stream *st, size_t total, size_t write_piece, size_t move_step,
                        size_t read_piece, size_t *max_pending)
{
    char piece[4096];
    if (st->written < total) {
        size_t n = total - st->written < write_piece ? total - st->written : write_piece;
        for (size_t i = 0; i < n; i++)
            piece[i] = (char)pattern(st->written + i, st->salt);
        ssize_t took = tls_write(st->from, piece, n);
        CHECK(took > 0 || took == UV_EAGAIN);
        if (took > 0) st->written += (size_t)took;
    }
    size_t pending = tls_out_pending(st->from);
    if (pending > *max_pending) *max_pending = pending;
    /* Move a little, as a slow network would. */
    size_t len;
    const char *data = tls_out_peek(st->from, &len);
    if (data != NULL) {
        size_t took = tls_feed(st->to, data, len < move_step ? len : move_step);
        tls_out_consume(st->from, took);
    }
    ssize_t r = tls_read(st->to, piece, read_piece);
    if (r > 0) {
        for (ssize_t i = 0; i < r; i++)
            if ((unsigned char)piece[i] != pattern(st->read + (size_t)i, st->salt)) st->ok = false;
        st->read += (size_t)r;
    } else {
        CHECK_INT(r, UV_EAGAIN);
    }
}

static void test_transfer_4mib_both_ways(void)
{
    const size_t total = 4u * 1024 * 1024;
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), 0);
    struct stream up = {p.c, p.s, 7, 0, 0, true}, down = {p.s, p.c, 11, 0, 0, true};
    size_t max_pending = 0;
    long rounds = 0;
    while ((up.read < total || down.read < total) && rounds < 10000000) {
        /* Writes in pieces of 3000, moves in 2777-byte steps, reads in 1000-byte bites. */
        stream_step(&up, total, 3000, 2777, 1000, &max_pending);
        stream_step(&down, total, 3000, 2777, 1000, &max_pending);
        rounds++;
    }
    CHECK_INT(up.read, total);
    CHECK_INT(down.read, total);
    CHECK(up.ok);
    CHECK(down.ok);
    CHECK(max_pending <= TLS_BUFFER_LIMIT + 17 * 1024 + 1024);
    pair_close(&p);
}

static void test_backpressure_and_stable_output(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), 0);
    static char big[256 * 1024];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)pattern(i, 3);

    /* Nothing is sent: tls_write stops once 64 KiB wait. */
    size_t taken = 0;
    ssize_t n;
    while ((n = tls_write(p.s, big + taken, sizeof(big) - taken)) > 0)
        taken += (size_t)n;
    CHECK_INT(n, UV_EAGAIN);
    CHECK(taken >= TLS_BUFFER_LIMIT - 16 * 1024 && taken < sizeof(big));
    size_t pending = tls_out_pending(p.s);
    CHECK(pending >= TLS_BUFFER_LIMIT && pending <= TLS_BUFFER_LIMIT + 17 * 1024 + 1024);

    /* As a server with a write in flight: the bytes stay where they were. */
    size_t len1, len2;
    const char *first = tls_out_peek(p.s, &len1);
    char *copy = malloc(len1);
    memcpy(copy, first, len1);
    tls_out_consume(p.s, 1000); /* a first write completed */
    const char *rest = tls_out_peek(p.s, &len2);
    CHECK(rest == first + 1000);
    CHECK_INT(len2, len1 - 1000);
    n = tls_write(p.s, big + taken, sizeof(big) - taken);
    CHECK_INT(n, UV_EAGAIN); /* still too much waiting */
    CHECK(memcmp(rest, copy + 1000, len2) == 0);

    /* The reader side: at most 64 KiB of ciphertext is taken in. */
    CHECK_INT(tls_feed(p.c, copy, len1), TLS_BUFFER_LIMIT);
    size_t room;
    CHECK(tls_in_space(p.c, &room) == NULL);
    CHECK_INT(room, 0);
    tls_out_consume(p.s, TLS_BUFFER_LIMIT - 1000);
    free(copy);

    /* Drain everything and check it arrived whole. */
    static char got[256 * 1024];
    size_t got_len = 0;
    for (int rounds = 0; rounds < 100000 && got_len < sizeof(big); rounds++) {
        if (taken < sizeof(big) && (n = tls_write(p.s, big + taken, sizeof(big) - taken)) > 0)
            taken += (size_t)n;
        move(p.s, p.c, SIZE_MAX);
        ssize_t r;
        while ((r = tls_read(p.c, got + got_len, sizeof(got) - got_len)) > 0)
            got_len += (size_t)r;
    }
    CHECK_INT(got_len, sizeof(big));
    CHECK(memcmp(got, big, sizeof(big)) == 0);
    pair_close(&p);
}

static void test_plain_http_peer(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "localhost");
    const char req[] = "GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    CHECK_INT(tls_feed(p.s, req, sizeof(req) - 1), sizeof(req) - 1);
    char buf[64];
    CHECK_INT(tls_read(p.s, buf, sizeof(buf)), UV_EPROTO);
    CHECK(tls_peer_sent_plain_http(p.s));
    CHECK_STR(tls_session_error(p.s), "handshake failed: the client sent plain HTTP, not TLS");

    CHECK_INT(tls_handshake(p.c), UV_EAGAIN); /* the ClientHello is out */
    const char resp[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    tls_feed(p.c, resp, sizeof(resp) - 1);
    CHECK_INT(tls_handshake(p.c), UV_EPROTO);
    CHECK(tls_peer_sent_plain_http(p.c));
    CHECK_STR(tls_session_error(p.c),
              "handshake failed: the server answered in plain HTTP, not TLS");
    pair_close(&p);
}

static void test_corrupt_record(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "localhost");
    CHECK_INT(pair_handshake(&p), 0);
    CHECK_INT(tls_write(p.c, "hello", 5), 5);
    size_t len;
    const char *data = tls_out_peek(p.c, &len);
    char rec[256];
    CHECK(len < sizeof(rec));
    memcpy(rec, data, len);
    rec[len - 1] ^= 1; /* a bit of the tag */
    tls_feed(p.s, rec, len);
    char buf[64];
    CHECK_INT(tls_read(p.s, buf, sizeof(buf)), UV_EPROTO);
    CHECK_CONTAINS(tls_session_error(p.s), "MAC");
    CHECK(!tls_handshake_done(p.s));
    pair_close(&p);
}

static void test_config_errors(void)
{
    struct tls_config *cfg = NULL;
    char err[256];
    const char *missing[] = {"/nonexistent/ca.pem"};
    CHECK_INT(tls_client_config_new(missing, 1, false, &cfg, err, sizeof(err)), UV_EINVAL);
    CHECK(cfg == NULL);
    CHECK_STR(err, "CA certificate file /nonexistent/ca.pem: cannot be read");

    const char *not_pem[] = {cert_path("not-pem.pem")};
    CHECK_INT(tls_client_config_new(not_pem, 1, false, &cfg, err, sizeof(err)), UV_EINVAL);
    CHECK_CONTAINS(err, "not-pem.pem: not a PEM certificate");

    char cert[128], key[128];
    snprintf(cert, sizeof(cert), "%s", cert_path("server.pem"));
    snprintf(key, sizeof(key), "%s", cert_path("other.key"));
    CHECK_INT(tls_server_config_new(cert, key, NULL, &cfg, err, sizeof(err)), UV_EINVAL);
    char expect[384];
    snprintf(expect, sizeof(expect), "key file %s does not match the certificate in %s", key, cert);
    CHECK_STR(err, expect);

    CHECK_INT(tls_server_config_new(cert, "/nonexistent/key", NULL, &cfg, err, sizeof(err)),
              UV_EINVAL);
    CHECK_STR(err, "key file /nonexistent/key: cannot be read");
    CHECK_INT(tls_server_config_new(cert, cert, NULL, &cfg, err, sizeof(err)), UV_EINVAL);
    CHECK_CONTAINS(err, "not a usable private key");
    CHECK_INT(tls_server_config_new("/nonexistent/cert", key, NULL, &cfg, err, sizeof(err)),
              UV_EINVAL);
    CHECK_STR(err, "certificate file /nonexistent/cert: cannot be read");

    snprintf(key, sizeof(key), "%s", cert_path("server.key"));
    CHECK_INT(tls_server_config_new(cert, key, "tls1.3", &cfg, err, sizeof(err)), UV_ENOTSUP);
    CHECK_CONTAINS(err, "minimum TLS version tls1.3 is not available");
    CHECK_INT(tls_server_config_new(cert, key, "tls1.1", &cfg, err, sizeof(err)), UV_EINVAL);
    CHECK_CONTAINS(err, "expected tls1.2 or tls1.3");
    CHECK(cfg == NULL);

    /* Sessions: a client needs a name, a server takes none. */
    CHECK_INT(tls_server_config_new(cert, key, "", &cfg, err, sizeof(err)), 0);
    struct tls_session *s = NULL;
    CHECK_INT(tls_session_new(cfg, "localhost", &s), UV_EINVAL);
    CHECK(s == NULL);
    tls_config_free(cfg);
    cfg = client_config("ca.pem");
    CHECK_INT(tls_session_new(cfg, NULL, &s), UV_EINVAL);
    CHECK_INT(tls_session_new(cfg, "", &s), UV_EINVAL);
    tls_config_free(cfg);
}

static void test_config_outlived_by_sessions(void)
{
    struct pair p;
    pair_open(&p, "ca.pem", "server.pem", "server.key", "localhost");
    tls_config_free(p.client_cfg);
    tls_config_free(p.server_cfg);
    p.client_cfg = p.server_cfg = NULL;
    CHECK_INT(pair_handshake(&p), 0);
    pair_close(&p);
}

static void test_system_store(void)
{
    struct tls_config *cfg = NULL;
    char err[256] = "";
    const char *files[] = {cert_path("other-ca.pem")};
    CHECK_INT(tls_client_config_new(files, 1, true, &cfg, err, sizeof(err)), 0);
    /* Our test CA is in neither. */
    struct pair p;
    memset(&p, 0, sizeof(p));
    p.client_cfg = cfg;
    p.server_cfg = server_config("server.pem", "server.key");
    CHECK_INT(tls_session_new(p.client_cfg, "localhost", &p.c), 0);
    CHECK_INT(tls_session_new(p.server_cfg, NULL, &p.s), 0);
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c), "certificate signed by unknown authority");
    pair_close(&p);

    /* No CA at all: said in the message. */
    CHECK_INT(tls_client_config_new(NULL, 0, false, &cfg, err, sizeof(err)), 0);
    memset(&p, 0, sizeof(p));
    p.client_cfg = cfg;
    p.server_cfg = server_config("server.pem", "server.key");
    CHECK_INT(tls_session_new(p.client_cfg, "localhost", &p.c), 0);
    CHECK_INT(tls_session_new(p.server_cfg, NULL, &p.s), 0);
    CHECK_INT(pair_handshake(&p), UV_EPROTO);
    CHECK_STR(tls_session_error(p.c),
              "certificate signed by unknown authority (no CA certificates are loaded)");
    pair_close(&p);
}

int main(void)
{
    alarm(120);
    certs_make();
    RUN(test_handshake_and_data);
    RUN(test_chain_with_intermediate);
    RUN(test_ip_literal);
    RUN(test_unknown_authority);
    RUN(test_name_mismatch);
    RUN(test_expired_and_not_yet_valid);
    RUN(test_transfer_4mib_both_ways);
    RUN(test_backpressure_and_stable_output);
    RUN(test_plain_http_peer);
    RUN(test_corrupt_record);
    RUN(test_config_errors);
    RUN(test_config_outlived_by_sessions);
    RUN(test_system_store);
    certs_remove();
    return check_summary();
}
