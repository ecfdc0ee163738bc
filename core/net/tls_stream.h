/*
 * tls_stream.h: a TLS session (tls.h) on a libuv stream: the one pump between a uv_stream_t
 * and mbedTLS. The server's https connections and the upstream client's https connections
 * both move their bytes through it.
 *
 * Reading stays the owner's: it decides when the socket is read. Its alloc callback hands
 * libuv tls_stream_read_space, its read callback passes what came to tls_stream_read_commit,
 * and then it takes plaintext with tls_stream_read (or lets tls_stream_handshake use it).
 *
 * Writing is zero-copy. Ciphertext goes to uv_write straight from the session's output,
 * each byte once, and is consumed in the write callback; the stream counts what it has
 * handed to libuv and not seen written (tls_stream_in_flight). tls_stream_write takes a job
 * of plaintext buffers and encrypts it as fast as the session takes it (at most
 * TLS_BUFFER_LIMIT of ciphertext waits, tls.h), resuming after each completed write, and
 * calls the job's callback once every byte of its ciphertext is written. Whatever else the
 * session has to say (handshake messages, alerts, close_notify) goes out by
 * tls_stream_flush, which reading, the handshake and writing call by themselves.
 *
 * Callbacks come only from the loop (libuv's write callbacks), never from inside a
 * function of this module: a function that fails returns the error and calls nothing.
 * After each completed uv_write the stream first advances or ends its job (the job's
 * callback gets the write's error, or UV_ECANCELED once the stream is closed) and then
 * calls on_written(owner, status), so the owner can restart a timer or close on an error.
 * Either callback may close the owner's handle (tls_stream_close first).
 *
 * Ownership: the owner embeds the struct (its fields are this module's), keeps it valid
 * until its stream's close callback (libuv calls the write callbacks before that one), and
 * frees the session with tls_stream_free. Loop thread only.
 */
#ifndef CC_TLS_STREAM_H
#define CC_TLS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#include "net/tls.h"

/* A job's end: 0 when all of its ciphertext was written, else the error. */
typedef void (*tls_stream_job_cb)(void *arg, int status);

/* After every completed write (status 0 or the error). */
typedef void (*tls_stream_written_cb)(void *owner, int status);

#define TLS_STREAM_JOB_BUFS 6

/* The fields are tls_stream.c's; owners use the functions below. */
struct tls_stream {
    uv_stream_t *stream;
    struct tls_session *session;
    tls_stream_written_cb on_written;
    void *owner;
    size_t in_flight; /* ciphertext handed to uv_write, not yet written */
    unsigned writes;  /* uv_write requests outstanding */
    bool closed;      /* tls_stream_close came: no more writes, jobs are cancelled */
    struct {          /* the plaintext job being encrypted */
        uv_buf_t bufs[TLS_STREAM_JOB_BUFS];
        unsigned n, i;        /* buffers, and the one being encrypted */
        size_t off;           /* bytes of bufs[i] taken */
        tls_stream_job_cb cb; /* NULL: no job */
        void *arg;
    } job;
};

/*
 * Starts a stream over `stream` with a new session of cfg (server_name as tls_session_new
 * wants it: the upstream's host on a client config, NULL on a server config). Returns 0,
 * or UV_EINVAL / UV_ENOMEM and then nothing needs freeing.
 */
int tls_stream_init(struct tls_stream *ts, uv_stream_t *stream, struct tls_config *cfg,
                    const char *server_name, tls_stream_written_cb on_written, void *owner);

/* Frees the session (after the stream's handle is closed). No-op when none was made. */
void tls_stream_free(struct tls_stream *ts);

/* The owner is closing the handle: no more writes; a job still running ends with
 * UV_ECANCELED when its writes come back. */
void tls_stream_close(struct tls_stream *ts);

/* --- Reading ------------------------------------------------------------------------- */

/* Room for ciphertext (an alloc callback's buffer): len 0 when the session is full. */
uv_buf_t tls_stream_read_space(struct tls_stream *ts);
/* n bytes of ciphertext arrived in that room. */
void tls_stream_read_commit(struct tls_stream *ts, size_t n);

/*
 * Decrypts into buf and flushes what reading made the session say. Returns the number of
 * plaintext bytes (> 0), UV_EAGAIN when more ciphertext is needed, UV_EOF after the peer's
 * close_notify, or an error (UV_EPROTO: tls_stream_error says why).
 */
ssize_t tls_stream_read(struct tls_stream *ts, char *buf, size_t len);

/* True when tls_stream_read has something without more input (tls_read_pending). */
bool tls_stream_read_pending(const struct tls_stream *ts);

/*
 * Advances the handshake with what was read and sends what it has to say. Returns 0 once
 * it is complete, UV_EAGAIN while it waits for the peer, or an error.
 */
int tls_stream_handshake(struct tls_stream *ts);

bool tls_stream_handshake_done(const struct tls_stream *ts);

/* --- Writing ------------------------------------------------------------------------- */

/*
 * Encrypts and sends bufs[0..n) (n <= TLS_STREAM_JOB_BUFS; the caller keeps the bytes valid
 * until cb). One job at a time: UV_EBUSY while one runs. Returns 0 (cb will come) or an
 * error (the stream is closed, the session failed, a write could not start; cb will not).
 */
int tls_stream_write(struct tls_stream *ts, const uv_buf_t *bufs, unsigned n, tls_stream_job_cb cb,
                     void *arg);

/* True while a job runs. */
bool tls_stream_writing(const struct tls_stream *ts);

/*
 * Sends the session's output that is not in flight yet. Returns 0 or the error of
 * uv_write (then the owner should close).
 */
int tls_stream_flush(struct tls_stream *ts);

/*
 * Says close_notify after everything written so far (tls_close_notify) and sends it
 * (tls_stream_flush): the owner shuts its socket down once tls_stream_in_flight is 0, from
 * on_written. Returns 0 (also when the handshake never completed: there is nothing to
 * close then) or an error; UV_EBUSY while a job runs. Writing fails afterwards.
 */
int tls_stream_close_notify(struct tls_stream *ts);

/*
 * Encrypts a few bytes (an interim response: all of them or nothing) behind what was
 * written so far and sends them with the stream's own writes, without a callback (the
 * owner's on_written still comes). Returns 0, UV_EBUSY while a job runs, UV_ENOBUFS when
 * the session does not take them whole now, or an error of tls_stream_flush.
 */
int tls_stream_send_small(struct tls_stream *ts, const char *text, size_t len);

/*
 * Best effort before a close, for a few bytes (an error answer, an alert): encrypts text
 * when the handshake is done and text is not NULL, then writes the output not in flight
 * with uv_try_write, without a callback.
 */
void tls_stream_send_now(struct tls_stream *ts, const char *text, size_t len);

/* Ciphertext handed to libuv and not written yet, and uv_writes outstanding. */
size_t tls_stream_in_flight(const struct tls_stream *ts);
unsigned tls_stream_writes(const struct tls_stream *ts);

/* --- The session -------------------------------------------------------------------- */

/* The session's failure in a sentence, "" while none (tls_session_error). */
const char *tls_stream_error(const struct tls_stream *ts);
/* The peer spoke plain HTTP (tls_peer_sent_plain_http). */
bool tls_stream_peer_sent_plain_http(const struct tls_stream *ts);

#endif
