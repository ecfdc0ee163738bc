/*
 * fuzz_tls_handshake.c: what a stranger can send an https port before any HTTP is
 * parsed: bytes into the server's TLS session (net/tls.h), as the server feeds them
 * (tls_in_space/tls_in_commit, then tls_read, which drives the handshake).
 *
 * Two variants, by bit 7 of input byte 0:
 *   raw     the rest of the input is the client's bytes: garbage, truncated and
 *           oversized records, anything;
 *   guided  a real client session (tls.h, trusting the test CA) talks to the server, and
 *           the input is XORed over what the client sends, flight after flight, so the
 *           mutations reach the later handshake messages and the first records.
 * Bits 0-5 of byte 0 slice what the server is fed (that many bytes per feed; 0: all that
 * is there), which exercises records cut anywhere.
 *
 * Checked, besides the sanitizers: the server's pending output never passes
 * TLS_BUFFER_LIMIT plus one record; a failed session stays failed, with the same error
 * and a sentence saying why; plaintext comes out only once the handshake is done; the
 * exchange ends (no loop without progress).
 *
 * The server's certificate comes from tests/unit/certs.h, made once per process.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "certs.h"
#include "harness.h"
#include "net/tls.h"

#define OUTPUT_BOUND (TLS_BUFFER_LIMIT + 32 * 1024)
#define MAX_ROUNDS 64

static struct tls_config *server_cfg, *client_cfg;

static void setup(void)
{
    char err[256];
    certs_make();
    atexit(certs_remove);
    if (tls_server_config_new(cert_path("server.pem"), cert_path("server.key"), NULL, &server_cfg,
                              err, sizeof(err)) != 0)
        HARNESS_FAIL(err);
    const char *ca = cert_path("ca.pem");
    if (tls_client_config_new(&ca, 1, false, &client_cfg, err, sizeof(err)) != 0) HARNESS_FAIL(err);
}

/* Feeds data[0..len) to the server in slices of `slice` (0: as much as it takes). Returns
 * how much it took (it stops taking when 64 KiB wait to be decrypted). */
static size_t feed(struct tls_session *s, const unsigned char *data, size_t len, size_t slice)
{
    size_t done = 0;
    while (done < len) {
        size_t room;
        char *space = tls_in_space(s, &room);
        if (room == 0) break;
        size_t n = len - done;
        if (slice > 0 && n > slice) n = slice;
        if (n > room) n = room;
        memcpy(space, data + done, n);
        tls_in_commit(s, n);
        done += n;
        /* Each slice is read at once, as the server reads after every socket read. */
        char plain[4096];
        ssize_t r;
        while ((r = tls_read(s, plain, sizeof plain)) > 0)
            HARNESS_REQUIRE(tls_handshake_done(s), "plaintext before the handshake was done");
    }
    return done;
}

/* The server's answer to what it was fed: checked, then handed to `to` (may be NULL). */
static void drain(struct tls_session *from, struct tls_session *to)
{
    size_t len;
    const char *out;
    HARNESS_REQUIRE(tls_out_pending(from) <= OUTPUT_BOUND, "pending output past its bound");
    while ((out = tls_out_peek(from, &len)) != NULL) {
        if (to != NULL) len = tls_feed(to, out, len);
        if (len == 0) break;
        tls_out_consume(from, len);
    }
}

/* A failed server session stays failed with the same error, and says why. */
static void check_failed_state(struct tls_session *s)
{
    char plain[64];
    ssize_t first = tls_read(s, plain, sizeof plain);
    if (first != UV_EPROTO) return;
    HARNESS_REQUIRE(tls_session_error(s)[0] != '\0', "a failed session without a reason");
    HARNESS_REQUIRE(tls_read(s, plain, sizeof plain) == UV_EPROTO, "a failure that went away");
    HARNESS_REQUIRE(tls_write(s, "x", 1) == UV_EPROTO, "a failed session took plaintext");
}

static void run_raw(const unsigned char *data, size_t len, size_t slice)
{
    struct tls_session *server;
    if (tls_session_new(server_cfg, NULL, &server) != 0) HARNESS_FAIL("tls_session_new");
    size_t off = 0;
    for (int round = 0; off < len && round < MAX_ROUNDS * 16; round++) {
        size_t took = feed(server, data + off, len - off, slice);
        drain(server, NULL);
        if (took == 0) break; /* full: the server reads no more until it decrypts */
        off += took;
    }
    check_failed_state(server);
    tls_session_free(server);
}

static void run_guided(const unsigned char *data, size_t len, size_t slice)
{
    struct tls_session *server, *client;
    if (tls_session_new(server_cfg, NULL, &server) != 0) HARNESS_FAIL("tls_session_new");
    if (tls_session_new(client_cfg, "localhost", &client) != 0) HARNESS_FAIL("tls_session_new");
    size_t used = 0;
    for (int round = 0; round < MAX_ROUNDS; round++) {
        int crc = tls_handshake(client);
        if (crc == 0) tls_write(client, "GET /v2/ HTTP/1.1\r\n\r\n", 21);
        size_t clen;
        const char *cout = tls_out_peek(client, &clen);
        if (cout == NULL) break;
        /* The client's flight, mutated by the next bytes of the input. */
        unsigned char *flight = malloc(clen);
        if (flight == NULL) HARNESS_FAIL("out of memory");
        memcpy(flight, cout, clen);
        tls_out_consume(client, clen);
        for (size_t i = 0; i < clen && used < len; i++)
            flight[i] ^= data[used++];
        feed(server, flight, clen, slice);
        free(flight);
        drain(server, client);
        if (crc != 0 && crc != UV_EAGAIN) break; /* the client gave up */
    }
    check_failed_state(server);
    tls_session_free(client);
    tls_session_free(server);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size == 0) return 0;
    size_t slice = data[0] & 0x3f;
    if (data[0] & 0x80)
        run_guided(data + 1, size - 1, slice);
    else
        run_raw(data + 1, size - 1, slice);
    return 0;
}
