/*
 * tls_stream.c: the pump between a libuv stream and a TLS session. See tls_stream.h.
 *
 * Output is written where the session keeps it: tls_out_peek shows everything waiting,
 * the first `in_flight` bytes of it are already with libuv, and the rest goes out in one
 * more uv_write. Writes complete in order, so each write callback consumes its own count
 * from the front of the output.
 */
#include "net/tls_stream.h"

#include <stdlib.h>
#include <string.h>

/* One uv_write of ciphertext straight from the session's output. */
struct tls_wreq {
    uv_write_t req;
    struct tls_stream *ts;
    size_t count;
};

int tls_stream_init(struct tls_stream *ts, uv_stream_t *stream, struct tls_config *cfg,
                    const char *server_name, tls_stream_written_cb on_written, void *owner)
{
    memset(ts, 0, sizeof(*ts));
    int rc = tls_session_new(cfg, server_name, &ts->session);
    if (rc != 0) return rc;
    ts->stream = stream;
    ts->on_written = on_written;
    ts->owner = owner;
    return 0;
}

void tls_stream_free(struct tls_stream *ts)
{
    tls_session_free(ts->session);
    ts->session = NULL;
}

/* Ends the job with status; its callback may close the owner (and so the stream). */
static void job_end(struct tls_stream *ts, int status)
{
    tls_stream_job_cb cb = ts->job.cb;
    void *arg = ts->job.arg;
    ts->job.cb = NULL;
    if (cb != NULL) cb(arg, status);
}

void tls_stream_close(struct tls_stream *ts)
{
    if (ts->closed) return;
    ts->closed = true;
    /* A job whose writes are all back would wait for nothing: it ends now. */
    if (ts->job.cb != NULL && ts->writes == 0) job_end(ts, UV_ECANCELED);
}

/* --- Writing ------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status);

int tls_stream_flush(struct tls_stream *ts)
{
    if (ts->closed) return 0;
    size_t pending;
    const char *out = tls_out_peek(ts->session, &pending);
    if (pending <= ts->in_flight) return 0;
    struct tls_wreq *w = malloc(sizeof(*w));
    if (w == NULL) return UV_ENOMEM;
    w->ts = ts;
    w->count = pending - ts->in_flight;
    uv_buf_t b = uv_buf_init((char *)out + ts->in_flight, (unsigned)w->count);
    int rc = uv_write(&w->req, ts->stream, &b, 1, on_write);
    if (rc != 0) {
        free(w);
        return rc;
    }
    ts->in_flight = pending;
    ts->writes++;
    return 0;
}

/* Encrypts as much of the job as the session takes now, then sends the output. */
static int pump(struct tls_stream *ts)
{
    while (ts->job.cb != NULL && ts->job.i < ts->job.n) {
        const uv_buf_t *b = &ts->job.bufs[ts->job.i];
        if (ts->job.off == b->len) {
            ts->job.i++;
            ts->job.off = 0;
            continue;
        }
        ssize_t n = tls_write(ts->session, b->base + ts->job.off, b->len - ts->job.off);
        if (n == UV_EAGAIN) break;
        if (n < 0) return (int)n;
        ts->job.off += (size_t)n;
    }
    return tls_stream_flush(ts);
}

static bool job_written(const struct tls_stream *ts)
{
    return ts->job.cb != NULL && ts->job.i == ts->job.n && ts->in_flight == 0;
}

static void on_write(uv_write_t *req, int status)
{
    struct tls_wreq *w = (struct tls_wreq *)req;
    struct tls_stream *ts = w->ts;
    ts->in_flight -= w->count;
    ts->writes--;
    tls_out_consume(ts->session, w->count);
    free(w);
    int err = status;
    if (err == 0 && ts->closed) err = UV_ECANCELED;
    if (err == 0) err = pump(ts);
    if (err < 0)
        job_end(ts, err);
    else if (job_written(ts))
        job_end(ts, 0);
    if (ts->on_written != NULL) ts->on_written(ts->owner, err);
}

int tls_stream_write(struct tls_stream *ts, const uv_buf_t *bufs, unsigned n, tls_stream_job_cb cb,
                     void *arg)
{
    if (ts->closed) return UV_ECANCELED;
    if (ts->job.cb != NULL) return UV_EBUSY;
    if (n == 0 || n > TLS_STREAM_JOB_BUFS || cb == NULL) return UV_EINVAL;
    memcpy(ts->job.bufs, bufs, n * sizeof(*bufs));
    ts->job.n = n;
    ts->job.i = 0;
    ts->job.off = 0;
    ts->job.cb = cb;
    ts->job.arg = arg;
    int rc = pump(ts);
    if (rc == 0 && ts->in_flight == 0 && ts->job.i == n) rc = UV_EPROTO; /* nothing to send */
    if (rc < 0) ts->job.cb = NULL; /* the caller hears it from the return value */
    return rc;
}

bool tls_stream_writing(const struct tls_stream *ts)
{
    return ts->job.cb != NULL;
}

int tls_stream_close_notify(struct tls_stream *ts)
{
    if (ts->closed) return UV_ECANCELED;
    if (ts->job.cb != NULL) return UV_EBUSY;
    int rc = tls_close_notify(ts->session);
    return rc != 0 ? rc : tls_stream_flush(ts);
}

int tls_stream_send_small(struct tls_stream *ts, const char *text, size_t len)
{
    if (ts->closed) return UV_ECANCELED;
    if (ts->job.cb != NULL) return UV_EBUSY;
    if (!tls_handshake_done(ts->session)) return UV_EINVAL;
    ssize_t n = tls_write(ts->session, text, len);
    if (n < 0) return (int)n;
    if ((size_t)n != len) return UV_ENOBUFS; /* (a few bytes always fit a record) */
    return tls_stream_flush(ts);
}

void tls_stream_send_now(struct tls_stream *ts, const char *text, size_t len)
{
    if (ts->closed) return;
    if (text != NULL &&
        (!tls_handshake_done(ts->session) || tls_write(ts->session, text, len) <= 0))
        return;
    size_t pending;
    const char *out = tls_out_peek(ts->session, &pending);
    if (pending <= ts->in_flight) return;
    uv_buf_t b = uv_buf_init((char *)out + ts->in_flight, (unsigned)(pending - ts->in_flight));
    uv_try_write(ts->stream, &b, 1);
}

size_t tls_stream_in_flight(const struct tls_stream *ts)
{
    return ts->in_flight;
}

unsigned tls_stream_writes(const struct tls_stream *ts)
{
    return ts->writes;
}

/* --- Reading ------------------------------------------------------------------------- */

uv_buf_t tls_stream_read_space(struct tls_stream *ts)
{
    size_t len = 0;
    char *space = tls_in_space(ts->session, &len);
    return uv_buf_init(space, (unsigned)len);
}

void tls_stream_read_commit(struct tls_stream *ts, size_t n)
{
    tls_in_commit(ts->session, n);
}

ssize_t tls_stream_read(struct tls_stream *ts, char *buf, size_t len)
{
    ssize_t n = tls_read(ts->session, buf, len);
    /* What reading made the session say (handshake messages, an alert), and a job that
     * waited for the handshake. */
    int err = pump(ts);
    return n > 0 || err == 0 ? n : err;
}

bool tls_stream_read_pending(const struct tls_stream *ts)
{
    return tls_read_pending(ts->session);
}

int tls_stream_handshake(struct tls_stream *ts)
{
    int rc = tls_handshake(ts->session);
    int err = tls_stream_flush(ts);
    return err != 0 && (rc == 0 || rc == UV_EAGAIN) ? err : rc;
}

bool tls_stream_handshake_done(const struct tls_stream *ts)
{
    return tls_handshake_done(ts->session);
}

/* --- The session -------------------------------------------------------------------- */

const char *tls_stream_error(const struct tls_stream *ts)
{
    return tls_session_error(ts->session);
}

bool tls_stream_peer_sent_plain_http(const struct tls_stream *ts)
{
    return tls_peer_sent_plain_http(ts->session);
}
