/*
 * tls.h: TLS sessions over mbedTLS 2.28 that know nothing of sockets.
 *
 * Threads: a session is one loop's. A configuration may be shared by the loops of one
 * process (workers: one server configuration, so that a session ticket issued on one
 * loop resumes on another): it is not written after it is made, its reference count is
 * atomic, and mbedTLS (built with MBEDTLS_THREADING_C, as Debian's is) guards its random
 * generator and its ticket keys with mutexes of its own.
 *
 * A session is a "memory BIO": the caller moves ciphertext between the session and
 * whatever carries it (a uv_tcp_t, or another session in a test), and the session turns
 * it into plaintext and back. The same code serves the upstream client, the server and
 * the unit tests, which connect a client session to a server session in memory.
 *
 * Driving a session, in one picture:
 *
 *   bytes from the peer -> tls_in_space/tls_in_commit (or tls_feed)
 *   tls_handshake / tls_read / tls_write / tls_close_notify
 *   bytes for the peer  <- tls_out_peek, then tls_out_consume once they are sent
 *
 * Any call except tls_out_peek may leave new output (handshake messages, records,
 * alerts; tls_out_consume moves output that mbedTLS had to hold back): after each
 * one, send what tls_out_peek shows. Pending output stays in place until it is
 * consumed (later output is appended after it), so a caller may hand it to uv_write
 * as it is and consume it in the write callback, with several writes in flight.
 *
 * Bounds. Input: a session holds at most 64 KiB of received ciphertext that tls_read
 * has not decrypted (tls_in_space offers no room past that: stop reading until
 * tls_read has drained it). Output: tls_write stops encrypting once 64 KiB wait to be
 * consumed (it returns what it took, or UV_EAGAIN), so pending output never exceeds
 * 64 KiB plus one record (about 17 KiB). A session's buffers exist only while they
 * hold bytes: an idle session costs what mbedTLS keeps (about 33 KiB).
 *
 * The handshake runs by itself inside tls_read and tls_write; tls_handshake lets a
 * caller drive it alone (a client that must not send its request before the server is
 * verified, or a server that wants to log the handshake apart).
 *
 * Errors are negative libuv codes: UV_EAGAIN (nothing to do until more input arrives
 * or pending output is consumed), UV_EOF (the peer sent close_notify), UV_EPROTO for
 * every TLS failure (handshake, certificate, a bad record, a fatal alert), UV_ENOMEM,
 * UV_EINVAL. A session that failed stays failed: every later call returns the same
 * error, and tls_session_error says why in a sentence ("certificate signed by unknown
 * authority", "certificate name mismatch (wanted registry.example)", "certificate
 * expired (valid until ...)", "handshake failed: ..."). After a failure the output
 * may still hold an alert for the peer; sending it before closing is polite, not
 * required.
 *
 * Ownership: configs are reference-counted; a session holds a reference to its
 * config, so tls_config_free may come before the sessions made from it are freed.
 * Nothing here is thread-safe: a config and its sessions belong to one thread (the
 * loop's). Every config has its own random generator (CTR-DRBG seeded from the
 * system entropy).
 */
#ifndef CC_TLS_H
#define CC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct tls_config;
struct tls_session;

/* The ciphertext a session holds in each direction beyond one record. */
#define TLS_BUFFER_LIMIT (64 * 1024)

/* Where Debian keeps the system's trusted CA certificates. */
#define TLS_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/*
 * A client config: TLS 1.2 or later, the server's certificate verified (REQUIRED)
 * against the CA certificates in the PEM files ca_files[0..n_ca) and, when
 * system_store, those of TLS_SYSTEM_CA_FILE if it exists. Returns 0 and *out, or
 * UV_EINVAL with a sentence naming the file in err ("CA certificate file /x: cannot
 * be read"), or UV_ENOMEM. A file that cannot be read or holds a certificate that
 * does not parse is an error; in the system store such certificates are skipped.
 */
int tls_client_config_new(const char *const *ca_files, size_t n_ca, bool system_store,
                          struct tls_config **out, char *err, size_t errlen);

/*
 * A server config: the certificate chain in cert_file (PEM: the server's certificate
 * first, then intermediates), its private key in key_file (PEM or DER, unencrypted),
 * and the lowest protocol version accepted, "tls1.2" (also for NULL or "") or
 * "tls1.3". mbedTLS 2.28 has no usable TLS 1.3: "tls1.3" is refused with UV_ENOTSUP
 * and a sentence saying so, never quietly lowered. Clients are not asked for
 * certificates. The server offers ECDHE with AEAD ciphers only (ChaCha20-Poly1305
 * first, then AES-GCM) and resumes sessions with tickets (RFC 5077) sealed by a key
 * kept in memory, which changes daily. Returns 0 and *out, or UV_EINVAL / UV_ENOTSUP /
 * UV_ENOMEM with err.
 */
int tls_server_config_new(const char *cert_file, const char *key_file, const char *min_version,
                          struct tls_config **out, char *err, size_t errlen);

/* Drops the caller's reference (sessions keep theirs). No-op on NULL. */
void tls_config_free(struct tls_config *cfg);

/* Takes another reference (for a holder that outlives the creator's), returns cfg. */
struct tls_config *tls_config_ref(struct tls_config *cfg);

/*
 * A session with nothing exchanged yet. On a client config, server_name is required:
 * a DNS name is sent as SNI and the certificate must name it (SAN or CN, wildcards
 * allowed); an IPv4 or IPv6 literal (no brackets) is not sent as SNI (RFC 6066), and
 * the certificate must hold it as an iPAddress SAN (checked here: mbedTLS 2.28 does
 * not). On a server config it must be NULL. Returns 0 and *out, UV_EINVAL or UV_ENOMEM.
 */
int tls_session_new(struct tls_config *cfg, const char *server_name, struct tls_session **out);

/* Frees the session (without saying close_notify: see tls_close_notify). No-op on NULL. */
void tls_session_free(struct tls_session *s);

/* --- Ciphertext in ----------------------------------------------------------------- */

/*
 * Room for ciphertext from the peer: *len bytes at the returned pointer (a uv_alloc_cb
 * can hand it to libuv). *len is 0 (and the pointer NULL) when 64 KiB wait to be
 * decrypted, or memory ran out: do not read then. Valid until the next call on the
 * session; tls_in_commit says how many bytes were written there.
 */
char *tls_in_space(struct tls_session *s, size_t *len);
void tls_in_commit(struct tls_session *s, size_t n);

/* Copies up to len bytes of ciphertext in; returns how many were taken (0 when full). */
size_t tls_feed(struct tls_session *s, const void *data, size_t len);

/* --- Plaintext ---------------------------------------------------------------------- */

/*
 * Advances the handshake with what was fed. Returns 0 once it is complete (also on
 * every later call), UV_EAGAIN while it waits for the peer (send the output first),
 * or UV_EPROTO / UV_ENOMEM on failure.
 */
int tls_handshake(struct tls_session *s);

/* True once the handshake completed (and the session has not failed since). */
bool tls_handshake_done(const struct tls_session *s);

/*
 * Decrypts into buf (len > 0). Returns the number of plaintext bytes (> 0; at most one
 * record's worth per call), UV_EAGAIN when more ciphertext is needed, UV_EOF after the
 * peer's close_notify, or an error. Completes the handshake first when it is not.
 */
ssize_t tls_read(struct tls_session *s, char *buf, size_t len);

/*
 * True when the session has something for tls_read without more input: plaintext of a
 * record partly read, ciphertext not yet decrypted (which may be only part of a
 * record), or an end (EOF, failure) not yet reported. A caller that stopped calling
 * tls_read (backpressure) calls it again before it waits for the socket.
 */
bool tls_read_pending(const struct tls_session *s);

/*
 * Encrypts plaintext. Returns how many bytes of data were taken (> 0, possibly fewer
 * than len), UV_EAGAIN when nothing could be taken (the handshake is not complete, or
 * TLS_BUFFER_LIMIT of output waits: send it, consume it, and call again), UV_EPIPE
 * after tls_close_notify, or an error. Completes the handshake first when it is not.
 */
ssize_t tls_write(struct tls_session *s, const char *data, size_t len);

/*
 * Queues a close_notify alert (send the output, then shut the socket down). Returns 0
 * (also when it was queued before, or when the handshake never completed: there is
 * nothing to close then) or an error. tls_write fails with UV_EPIPE afterwards.
 */
int tls_close_notify(struct tls_session *s);

/* --- Ciphertext out ----------------------------------------------------------------- */

/*
 * The output waiting to be sent, oldest first: returns a pointer to *len bytes (NULL
 * and 0 when none). The bytes stay in place until consumed.
 */
const char *tls_out_peek(const struct tls_session *s, size_t *len);

/* The first n bytes of the output were sent: drops them (n <= what peek showed). */
void tls_out_consume(struct tls_session *s, size_t n);

/* All output waiting, including any mbedTLS still holds back (for backpressure). */
size_t tls_out_pending(const struct tls_session *s);

/* --- Diagnostics -------------------------------------------------------------------- */

/* A sentence for the failure, "" while none. Valid until the session is freed. */
const char *tls_session_error(const struct tls_session *s);

/*
 * True when the peer spoke plain HTTP instead of TLS (the handshake then failed with
 * "the client sent plain HTTP" or "the server answered in plain HTTP"): a server may
 * answer such a client with a plain 400 before it closes.
 */
bool tls_peer_sent_plain_http(const struct tls_session *s);

/* "TLSv1.2 TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384" once the handshake is done, else "". */
const char *tls_session_protocol(const struct tls_session *s);

#endif
