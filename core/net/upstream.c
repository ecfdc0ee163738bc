/*
 * upstream.c: the HTTP/1.1 client of upstream.h.
 *
 * Objects and lifetimes. A pool owns connections (struct conn). A request borrows one
 * connection per exchange (one request line sent, one response read); a redirect or a
 * retry is a new exchange, on another connection. Everything asynchronous lives in
 * the connection: its uv_tcp_t, its uv_timer_t (connect timeout, no-progress timeout,
 * idle timeout, or a 0 ms "kick" after upstream_resume), its uv_getaddrinfo_t, its
 * uv_connect_t and its writes. A connection's memory is freed in the close callbacks
 * of its two handles (and not before a pending getaddrinfo has called back), so a
 * request can drop a connection at any moment by detaching and closing it.
 *
 * A request is plain memory with a reference count: one reference while it is active
 * (until on_done or upstream_cancel), one more for every libuv callback frame that
 * works on it. That is what makes upstream_cancel safe from inside on_head, on_body
 * and on_done: the request is freed only when the outermost frame lets go of it.
 *
 * Pause. The response is parsed straight out of the connection's 256 KiB read buffer
 * (held while the connection is lent to a request, given back when it goes idle).
 * When the consumer pauses from inside on_body (or on_head), the llhttp callback
 * returns HPE_PAUSED; the bytes that the parser has not consumed stay in the read
 * buffer (conn->pending), reading stops, and upstream_resume arms the kick, which
 * feeds them to the parser again before reading the socket resumes. The read buffer
 * is not refilled while bytes are pending, so nothing is dropped or seen twice.
 *
 * Transport seam. Bytes go out only through transport_write() and come in only
 * through on_tcp_read() -> conn_on_data() / conn_on_eof(); reading is switched with
 * transport_read_start()/transport_read_stop(), and a new connection becomes usable
 * in transport_connected().
 *
 * TLS (https) is a tls_stream (tls_stream.h, the pump the server uses too) on the same
 * uv_tcp_t. transport_connected() starts the handshake (state CONN_HANDSHAKE, under the
 * connect timeout, reading whether or not the request is paused) and conn_ready() comes
 * when it is done and the server is verified. The socket is read straight into the
 * session's input buffer; tls_pump() decrypts into the 256 KiB plaintext buffer that
 * conn_on_data() parses, and stops when the request pauses (ciphertext not yet decrypted
 * stays in the session, so upstream_resume() kicks the pump before the socket is read
 * again). transport_write() hands the request to the stream, which encrypts it and writes
 * the ciphertext from the session's own buffer. A connection whose session still holds
 * bytes, or still writes, after the response is not pooled.
 *
 * Request bodies. The caller gives a body one piece at a time (upstream_send_body): the
 * piece is copied (framed as a chunk for a chunked body) and waits in the request until
 * its head has gone out, then goes to transport_write as a write of its own; when it is
 * written, the caller's callback asks for the next. On https one write job runs at a
 * time, so a piece waits for the head's job (and the end for the last piece's). The
 * response is read while the body goes out: an answer that comes before the body's end
 * (a refusal) is the response, and that connection is not pooled.
 */
#include "net/upstream.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "net/tls_stream.h"
#include "base/url.h"

#ifndef CC_VERSION
#define CC_VERSION "dev"
#endif

/* A response is read in pieces of this size (a cold 200 MiB pull took 3,266 reads at
 * 64 KiB, and about a tenth less CPU at 256 KiB). */
#define READ_BUF_SIZE (256 * 1024)
#define MAX_HEAD_BYTES (64 * 1024)
#define MAX_HEADERS 100
/* A redirect's body is read and thrown away (to keep the connection) up to this size. */
#define MAX_REDIRECT_DRAIN (64 * 1024)

enum conn_state {
    CONN_RESOLVING,  /* getaddrinfo in flight; the timer is the connect timeout */
    CONN_CONNECTING, /* uv_tcp_connect in flight; the timer is the connect timeout */
    CONN_HANDSHAKE,  /* TLS handshake; the timer is the connect timeout again */
    CONN_ACTIVE,     /* lent to a request; the timer is the io timeout or the kick */
    CONN_IDLE,       /* in the pool; reading to notice a close; the timer is idle */
    CONN_CLOSING,    /* handles closing; freed when both have called back */
};

struct conn {
    struct upstream_pool *pool;
    struct upstream_req *req; /* the request using it, or NULL */
    struct conn *idle_next;   /* in pool->idle, most recently used first */
    enum conn_state state;
    bool tls;
    uint16_t port;
    char host[256];
    struct tls_stream ts; /* https, once connected (ts_on) */
    bool ts_on;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_getaddrinfo_t resolve;
    bool resolving;                   /* resolve has not called back yet */
    struct addrinfo *addrs;           /* what it resolved to (freed with the conn) */
    const struct addrinfo *next_addr; /* the next one to try when a connect fails */
    bool reading;                     /* uv_read_start is in effect */
    bool kick;                        /* the timer is a 0 ms kick, not a timeout */
    bool trailing;                    /* bytes followed the end of the response: not reusable */
    int closes_pending;
    int writes_pending;
    char *rbuf; /* READ_BUF_SIZE bytes while active, else NULL */
    /* Bytes of rbuf that the parser has not consumed yet (the request paused). */
    bool has_pending;
    const char *pending;
    size_t pending_len;
};

struct conn_write {
    uv_write_t req;
    char *data; /* owned */
    bool body;  /* a piece (or the end) of the request body */
};

/* An https write job: its plaintext (owned) and what it was. */
struct tls_out {
    struct conn *conn;
    char *data;
    bool body;
};

struct upstream_pool {
    uv_loop_t *loop;
    struct upstream_pool_opts opts;
    struct conn *idle;
    size_t n_conns; /* allocated, including closing ones */
    size_t n_reqs;  /* allocated requests */
    bool closing;
    char idle_scratch[64]; /* what idle connections read (and drop) */
};

struct head_field {
    uint32_t name_off, name_len, value_off, value_len;
};

struct upstream_req {
    struct upstream_pool *pool;
    struct upstream_callbacks cbs;
    void *ud;
    int refs;
    bool finished; /* on_done called or cancelled: no more callbacks */
    bool paused;

    /* The request as the caller gave it. */
    char *method;
    bool is_head;
    bool idempotent; /* GET or HEAD: may be redirected and retried */
    bool says_close; /* the caller sent "Connection: close" */
    /* The request body (upstream_send_body), when has_body. */
    bool has_body;
    int64_t body_length;    /* -1: chunked */
    uint64_t body_given;    /* bytes the caller has given */
    char *body_piece;       /* a framed piece waiting to be written, or NULL */
    size_t body_piece_len;  /* its length, framing included */
    bool body_piece_is_end; /* the piece is the chunked body's last chunk (no callback) */
    bool body_writing;      /* a piece is with the transport */
    bool body_ended;        /* upstream_end_body came */
    bool body_end_queued;   /* ...and what it sends is queued or sent */
    bool body_all_written;  /* every byte of the body is written */
    bool body_broken;       /* a write of it failed: only the response is awaited */
    bool head_written;      /* the request head has gone to the transport */
    upstream_body_cb body_cb;
    void *body_arg;
    bool has_user_agent;
    struct upstream_header *headers; /* copies, strings in the same block */
    size_t n_headers;
    int max_redirects;
    char *orig_url_text;
    struct url orig; /* scheme, host and port of the original URL */

    /* The current exchange. */
    char *url_text;   /* the URL being fetched */
    struct url cur;   /* its scheme, host and port */
    char *path_query; /* its request-target */
    char hostport[300];
    int redirects;
    char *redirect_to;
    struct conn *conn;
    bool conn_reused;
    bool retried;
    bool got_bytes;
    bool informational;        /* the response being parsed is a 1xx */
    int interim;               /* 1xx responses of this exchange so far */
    uint64_t head_deadline_ns; /* uv_hrtime by which the final head must have come */
    bool head_done;            /* on_head was called */
    bool redirect_pending;
    bool message_complete;
    bool keep_alive;
    bool done_pending; /* complete, but paused: on_done waits for resume */
    int parse_err;     /* set by a parser callback that stops the parse */
    llhttp_t parser;
    int64_t content_length;
    uint64_t body_bytes;

    /* The response head, collected across reads. */
    char *hbuf;
    size_t hbuf_len, hbuf_cap;
    size_t head_bytes; /* status text, names and values seen: capped */
    struct head_field fields[MAX_HEADERS];
    size_t n_fields;
    int field_state; /* 0 none, 1 in a name, 2 in a value */

    char errmsg[512];
};

static void conn_close(struct conn *c);
static void conn_feed(struct conn *c, const char *data, size_t len);
static int exchange_start(struct upstream_req *r, bool fresh_only);
static void exchange_done(struct upstream_req *r);
static void on_timer(uv_timer_t *t);

/* --- Small helpers ----------------------------------------------------------------- */

struct strbuf {
    char *data;
    size_t len, cap;
    bool failed;
};

static void sb_add(struct strbuf *sb, const char *s, size_t n)
{
    if (sb->failed) return;
    if (sb->failed || n > (1u << 30) || sb->len > (1u << 30)) {
        sb->failed = true; /* nothing here is near that size: refuse rather than wrap */
        return;
    }
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 256;
        while (cap < sb->len + n + 1)
            cap *= 2;
        char *p = realloc(sb->data, cap);
        if (p == NULL) {
            sb->failed = true;
            return;
        }
        sb->data = p;
        sb->cap = cap;
    }
    memcpy(sb->data + sb->len, s, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
}

static void sb_adds(struct strbuf *sb, const char *s)
{
    sb_add(sb, s, strlen(s));
}

/* Returns the built string (the caller frees it), or NULL when memory ran out. */
static char *sb_finish(struct strbuf *sb, size_t *len)
{
    if (sb->failed || sb->data == NULL) {
        free(sb->data);
        return NULL;
    }
    if (len) *len = sb->len;
    return sb->data;
}

static bool is_token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s)
{
    if (*s == '\0') return false;
    for (; *s; s++)
        if (!is_token_char((unsigned char)*s)) return false;
    return true;
}

/* True when the comma-separated list `value` has `token` (case-insensitive). */
static bool has_token(const char *value, const char *token)
{
    size_t n = strlen(token);
    while (*value) {
        value += strspn(value, " \t,");
        size_t len = strcspn(value, ",");
        size_t end = len;
        while (end > 0 && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end == n && strncasecmp(value, token, n) == 0) return true;
        value += len;
    }
    return false;
}

/* A URL byte that may be sent as is: visible ASCII. */
static bool is_url_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f;
}

/* "30s" or "250ms". */
static const char *format_ms(unsigned ms, char *buf, size_t len)
{
    if (ms % 1000 == 0)
        snprintf(buf, len, "%us", ms / 1000);
    else
        snprintf(buf, len, "%ums", ms);
    return buf;
}

static void format_hostport(const struct url *u, char *buf, size_t len)
{
    bool ipv6 = strchr(u->host, ':') != NULL;
    snprintf(buf, len, "%s%s%s:%u", ipv6 ? "[" : "", u->host, ipv6 ? "]" : "", (unsigned)u->port);
}

/* The length of url without its query and fragment, for messages (a query may hold a
 * signature). */
static int url_shown(const char *url)
{
    return (int)strcspn(url, "?#");
}

static bool same_origin(const struct url *a, const struct url *b)
{
    return a->tls == b->tls && a->port == b->port && strcasecmp(a->host, b->host) == 0;
}

/*
 * Splits an absolute URL into its origin (parsed by url_parse into *u) and its
 * request-target ("/path?query", without a fragment; "/" when empty), which is
 * returned in *path_query (the caller frees it). Returns 0, UV_EINVAL with a reason in
 * *why, or UV_ENOMEM.
 */
static int target_parse(const char *text, struct url *u, char **path_query, const char **why)
{
    const char *sep = strstr(text, "://");
    if (sep == NULL) {
        *why = "missing scheme: expected http:// or https://";
        return UV_EINVAL;
    }
    const char *authority = sep + 3;
    const char *rest = authority + strcspn(authority, "/?#");
    size_t origin_len = (size_t)(rest - text);
    char origin[600];
    if (origin_len >= sizeof(origin)) {
        *why = "host name too long";
        return UV_EINVAL;
    }
    memcpy(origin, text, origin_len);
    origin[origin_len] = '\0';
    if (url_parse(origin, u, why) != 0) return UV_EINVAL;

    size_t rest_len = strcspn(rest, "#");
    for (size_t i = 0; i < rest_len; i++) {
        if (!is_url_char((unsigned char)rest[i])) {
            *why = "spaces, control and non-ASCII characters are not allowed";
            return UV_EINVAL;
        }
    }
    bool add_slash = rest_len == 0 || rest[0] == '?';
    char *pq = malloc(rest_len + 2);
    if (pq == NULL) return UV_ENOMEM;
    size_t n = 0;
    if (add_slash) pq[n++] = '/';
    memcpy(pq + n, rest, rest_len);
    pq[n + rest_len] = '\0';
    *path_query = pq;
    return 0;
}

/* RFC 3986 5.2.4, in place (the output is never longer than the input). */
static void remove_dot_segments(char *path)
{
    const char *in = path;
    size_t out_len = 0;
    while (*in) {
        if (strncmp(in, "../", 3) == 0) {
            in += 3;
        } else if (strncmp(in, "./", 2) == 0) {
            in += 2;
        } else if (strncmp(in, "/./", 3) == 0) {
            in += 2;
        } else if (strcmp(in, "/.") == 0) {
            in = "/";
        } else if (strncmp(in, "/../", 4) == 0 || strcmp(in, "/..") == 0) {
            in = in[3] ? in + 3 : "/";
            while (out_len > 0 && path[--out_len] != '/')
                ;
        } else if (strcmp(in, ".") == 0 || strcmp(in, "..") == 0) {
            in += strlen(in);
        } else {
            size_t n = in[0] == '/' ? 1 + strcspn(in + 1, "/") : strcspn(in, "/");
            memmove(path + out_len, in, n);
            out_len += n;
            in += n;
        }
    }
    path[out_len] = '\0';
}

/* The length of a "scheme:" prefix of s (without the ':'), or 0 when it has none. */
static size_t scheme_length(const char *s, size_t len)
{
    if (len == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) return 0;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (c == ':') return i;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '-' || c == '.'))
            return 0;
    }
    return 0;
}

/*
 * Resolves a Location value against `base` (an absolute URL that target_parse
 * accepted). Returns the absolute URL (the caller frees it), or NULL when the value
 * has bytes that cannot be sent or memory ran out.
 */
static char *resolve_location(const char *base, const char *loc, size_t loc_len)
{
    while (loc_len > 0 && (*loc == ' ' || *loc == '\t'))
        loc++, loc_len--;
    while (loc_len > 0 && (loc[loc_len - 1] == ' ' || loc[loc_len - 1] == '\t'))
        loc_len--;
    for (size_t i = 0; i < loc_len; i++)
        if (!is_url_char((unsigned char)loc[i])) return NULL;
    const char *hash = memchr(loc, '#', loc_len);
    if (hash != NULL) loc_len = (size_t)(hash - loc);

    struct strbuf sb = {0};
    const char *base_authority = strstr(base, "://") + 3;
    size_t origin_len = (size_t)(base_authority - base) + strcspn(base_authority, "/?#");
    const char *base_path = base + origin_len;
    size_t base_path_len = strcspn(base_path, "?#");

    if (scheme_length(loc, loc_len) > 0) {
        sb_add(&sb, loc, loc_len);
    } else if (loc_len >= 2 && loc[0] == '/' && loc[1] == '/') {
        sb_add(&sb, base, (size_t)(base_authority - base) - 2); /* "scheme:" */
        sb_add(&sb, loc, loc_len);
    } else {
        const char *q = memchr(loc, '?', loc_len);
        size_t path_len = q ? (size_t)(q - loc) : loc_len;
        struct strbuf path = {0};
        if (path_len == 0) {
            sb_add(&path, base_path, base_path_len);
        } else if (loc[0] == '/') {
            sb_add(&path, loc, path_len);
        } else {
            const char *slash = NULL;
            for (size_t i = base_path_len; i > 0; i--) {
                if (base_path[i - 1] == '/') {
                    slash = base_path + i - 1;
                    break;
                }
            }
            if (slash != NULL)
                sb_add(&path, base_path, (size_t)(slash - base_path) + 1);
            else
                sb_add(&path, "/", 1);
            sb_add(&path, loc, path_len);
        }
        char *p = sb_finish(&path, NULL);
        if (p == NULL) {
            if (path_len == 0 && base_path_len == 0) p = strdup("");
            if (p == NULL) {
                free(sb.data);
                return NULL;
            }
        }
        remove_dot_segments(p);
        sb_add(&sb, base, origin_len);
        sb_adds(&sb, p);
        free(p);
        if (q != NULL)
            sb_add(&sb, q, loc_len - path_len);
        else if (loc_len == 0)
            sb_add(&sb, base_path + base_path_len, strcspn(base_path + base_path_len, "#"));
    }
    return sb_finish(&sb, NULL);
}

/* --- Requests: references, errors, the end ----------------------------------------- */

static void pool_maybe_free(struct upstream_pool *pool)
{
    if (pool->closing && pool->n_conns == 0 && pool->n_reqs == 0) {
        tls_config_free(pool->opts.tls);
        free(pool);
    }
}

static void req_free(struct upstream_req *r)
{
    struct upstream_pool *pool = r->pool;
    free(r->method);
    free(r->headers);
    free(r->orig_url_text);
    free(r->url_text);
    free(r->path_query);
    free(r->redirect_to);
    free(r->hbuf);
    free(r->body_piece);
    free(r);
    pool->n_reqs--;
    pool_maybe_free(pool);
}

static void req_ref(struct upstream_req *r)
{
    r->refs++;
}

static void req_unref(struct upstream_req *r)
{
    if (--r->refs == 0) req_free(r);
}

__attribute__((format(printf, 2, 3))) static void req_set_error(struct upstream_req *r,
                                                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof(r->errmsg), fmt, ap);
    va_end(ap);
}

/* Detaches the request from its connection and closes the connection. */
static void req_drop_conn(struct upstream_req *r)
{
    struct conn *c = r->conn;
    if (c == NULL) return;
    r->conn = NULL;
    c->req = NULL;
    conn_close(c);
}

/* Ends the request: closes a connection still attached, calls on_done, lets go. */
static void req_finish(struct upstream_req *r, int err)
{
    if (r->finished) return;
    r->finished = true;
    req_drop_conn(r);
    if (r->cbs.on_done) r->cbs.on_done(r->ud, err);
    req_unref(r);
}

__attribute__((format(printf, 3, 4))) static void req_fail(struct upstream_req *r, int err,
                                                           const char *fmt, ...)
{
    if (r->finished) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof(r->errmsg), fmt, ap);
    va_end(ap);
    req_finish(r, err);
}

/* --- Transport (the TLS seam) ------------------------------------------------------ */

/*
 * An active connection reads into its own 256 KiB buffer, allocated on first use. An
 * idle one has given it back: whatever it reads closes it, so it reads into a few
 * bytes that the whole pool shares.
 */
static void on_tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    if (c->state == CONN_IDLE) {
        *buf = uv_buf_init(c->pool->idle_scratch, sizeof(c->pool->idle_scratch));
        return;
    }
    if (c->ts_on) {
        /* Ciphertext goes straight into the session (never full while reading: the
         * pump drains it before reading starts again). */
        *buf = tls_stream_read_space(&c->ts); /* len 0: UV_ENOBUFS */
        return;
    }
    if (c->rbuf == NULL) c->rbuf = malloc(READ_BUF_SIZE);
    *buf = uv_buf_init(c->rbuf, c->rbuf ? READ_BUF_SIZE : 0); /* 0: UV_ENOBUFS */
}

static void conn_on_data(struct conn *c, const char *data, size_t len);
static void conn_on_eof(struct conn *c, int err);
static void tls_on_read(struct conn *c, ssize_t nread);

/* Raw bytes from the socket: plaintext for the parser, or ciphertext for the session. */
static void on_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (c->ts_on && c->state != CONN_IDLE)
        tls_on_read(c, nread);
    else if (nread > 0)
        conn_on_data(c, buf->base, (size_t)nread);
    else if (nread < 0)
        conn_on_eof(c, (int)nread);
}

static int transport_read_start(struct conn *c)
{
    if (c->reading) return 0;
    int err = uv_read_start((uv_stream_t *)&c->tcp, on_tcp_alloc, on_tcp_read);
    if (err == 0) c->reading = true;
    return err;
}

static void transport_read_stop(struct conn *c)
{
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

static void io_timer_restart(struct conn *c);
static void conn_lost(struct upstream_req *r, int err, const char *what);
static int conn_listen(struct conn *c);

/* A write is over: progress restarts the io timer; a failure loses the connection. */
static void conn_written(struct conn *c, int status)
{
    if (status == UV_ECANCELED || c->state == CONN_CLOSING) return;
    struct upstream_req *r = c->req;
    if (r == NULL) {
        if (status < 0) conn_close(c);
        return;
    }
    if (status < 0 && r->has_body && !r->message_complete && status != UV_ENOMEM) {
        /* A server may answer a request before its body's end (a refusal) and close:
         * the answer may be on its way. Nothing more is sent; the response, or the
         * end of the connection, decides. */
        if (!r->body_broken) {
            r->body_broken = true;
            req_set_error(r, "write to %s: %s", r->hostport, uv_strerror(status));
        }
        if (!r->paused && conn_listen(c) != 0) {
            req_ref(r);
            conn_lost(r, status, "write");
            req_unref(r);
        }
        return;
    }
    if (status < 0) {
        req_ref(r);
        conn_lost(r, status, "write");
        req_unref(r);
        return;
    }
    io_timer_restart(c);
}

static void body_written(struct upstream_req *r, int status);

static void on_tcp_write(uv_write_t *w, int status)
{
    struct conn_write *cw = (struct conn_write *)w;
    struct conn *c = w->data;
    struct upstream_req *r = cw->body && c->state != CONN_CLOSING ? c->req : NULL;
    free(cw->data);
    free(cw);
    c->writes_pending--;
    if (r != NULL) req_ref(r);
    conn_written(c, status);
    if (r != NULL) {
        body_written(r, status);
        req_unref(r);
    }
}

/* Writes `data` to the socket (malloc'd; owned from here on, also on failure). */
static int tcp_write(struct conn *c, char *data, size_t len, bool body)
{
    struct conn_write *cw = malloc(sizeof(*cw));
    if (cw == NULL) {
        free(data);
        return UV_ENOMEM;
    }
    cw->data = data;
    cw->body = body;
    cw->req.data = c;
    uv_buf_t buf = uv_buf_init(data, (unsigned)len);
    int err = uv_write(&cw->req, (uv_stream_t *)&c->tcp, &buf, 1, on_tcp_write);
    if (err != 0) {
        free(data);
        free(cw);
        return err;
    }
    c->writes_pending++;
    return 0;
}

static void body_flush(struct upstream_req *r);

/* An https job is written: the body's next piece may go (one job at a time). */
static void tls_job_written(void *arg, int status)
{
    struct tls_out *out = arg;
    struct conn *c = out->conn;
    struct upstream_req *r = c->state != CONN_CLOSING ? c->req : NULL;
    bool body = out->body;
    free(out->data);
    free(out);
    if (r == NULL) return;
    req_ref(r);
    if (body) body_written(r, status);
    if (status == 0 && !r->finished && r->conn == c) body_flush(r);
    req_unref(r);
}

/* After each write of ciphertext (tls_stream.h), as after a plain one. */
static void tls_written(void *owner, int status)
{
    conn_written(owner, status);
}

/*
 * Sends `data` (malloc'd; owned from here on, also on failure), encrypted for https;
 * `body` marks a piece of the request body (body_written follows its write). On https
 * UV_EBUSY (data not taken, still the caller's) while another job runs.
 */
static int transport_write(struct conn *c, char *data, size_t len, bool body)
{
    if (!c->ts_on) return tcp_write(c, data, len, body);
    if (tls_stream_writing(&c->ts)) return UV_EBUSY;
    struct tls_out *out = malloc(sizeof(*out));
    if (out == NULL) {
        free(data);
        return UV_ENOMEM;
    }
    *out = (struct tls_out){c, data, body};
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int err = tls_stream_write(&c->ts, &b, 1, tls_job_written, out);
    if (err != 0) {
        free(data);
        free(out);
    }
    return err;
}

static void conn_ready(struct conn *c);

/*
 * Advances the TLS handshake with what was read, sends what it has to say, and once it
 * is done lets the request go out. Called with a reference on the request.
 */
static void tls_handshake_step(struct conn *c)
{
    struct upstream_req *r = c->req;
    int rc = tls_stream_handshake(&c->ts);
    if (rc == UV_EAGAIN) return;
    if (rc != 0 && rc != UV_EPROTO) {
        req_fail(r, rc, "write to %s: %s", r->hostport, uv_strerror(rc));
        return;
    }
    if (rc != 0) {
        req_fail(r, rc, "TLS to %s: %s", r->hostport, tls_stream_error(&c->ts));
        return;
    }
    /* Done: reading goes on when the request is sent, unless it is paused. */
    uv_timer_stop(&c->timer);
    transport_read_stop(c);
    c->state = CONN_ACTIVE;
    conn_ready(c);
}

/* The TCP connection is up: ready for http, the handshake first for https. */
static void transport_connected(struct conn *c)
{
    uv_tcp_nodelay(&c->tcp, 1);
    if (!c->tls) {
        conn_ready(c);
        return;
    }
    struct upstream_req *r = c->req;
    int err =
        tls_stream_init(&c->ts, (uv_stream_t *)&c->tcp, c->pool->opts.tls, c->host, tls_written, c);
    if (err == 0) {
        c->ts_on = true;
        c->state = CONN_HANDSHAKE;
        uv_timer_start(&c->timer, on_timer, c->pool->opts.connect_timeout_ms, 0);
        err = uv_read_start((uv_stream_t *)&c->tcp, on_tcp_alloc, on_tcp_read);
    }
    if (err != 0) {
        req_fail(r, err, "TLS to %s: %s", r->hostport, uv_strerror(err));
        return;
    }
    c->reading = true;
    tls_handshake_step(c);
}

/*
 * Decrypts what the session holds and hands it to the parser, up to a buffer at a
 * time, until the session needs more ciphertext or the request pauses, ends or lets go
 * of the connection. Called with a reference on the request.
 */
static void tls_pump(struct conn *c)
{
    struct upstream_req *r = c->req;
    while (c->state == CONN_ACTIVE && c->req == r && !r->finished && !r->paused &&
           !c->has_pending) {
        if (c->rbuf == NULL && (c->rbuf = malloc(READ_BUF_SIZE)) == NULL) {
            req_fail(r, UV_ENOMEM, "%s: out of memory for the response", r->hostport);
            return;
        }
        size_t n = 0;
        ssize_t rc = 0;
        while (n < READ_BUF_SIZE &&
               (rc = tls_stream_read(&c->ts, c->rbuf + n, READ_BUF_SIZE - n)) > 0)
            n += (size_t)rc;
        if (n > 0) {
            conn_on_data(c, c->rbuf, n);
            continue; /* an end or failure that followed comes again from tls_read */
        }
        if (rc == UV_EAGAIN) return;
        if (rc == UV_EOF)
            conn_on_eof(c, UV_EOF); /* close_notify */
        else
            req_fail(r, (int)rc, "TLS to %s: %s", r->hostport, tls_stream_error(&c->ts));
        return;
    }
}

/* Bytes (or the end) from the socket of an https connection that is not idle. */
static void tls_on_read(struct conn *c, ssize_t nread)
{
    struct upstream_req *r = c->req;
    if (nread == 0) return;
    if (r == NULL) {
        conn_close(c);
        return;
    }
    if (nread > 0) tls_stream_read_commit(&c->ts, (size_t)nread);
    req_ref(r);
    if (c->state == CONN_HANDSHAKE) {
        if (nread == UV_EOF)
            req_fail(r, UV_ECONNRESET, "TLS to %s: connection closed during the handshake",
                     r->hostport);
        else if (nread < 0)
            req_fail(r, (int)nread, "TLS to %s: %s", r->hostport, uv_strerror((int)nread));
        else
            tls_handshake_step(c);
    } else if (nread > 0) {
        io_timer_restart(c);
        tls_pump(c);
    } else {
        conn_on_eof(c, (int)nread);
    }
    req_unref(r);
}

/* --- Connections and the pool ------------------------------------------------------ */

static void conn_maybe_free(struct conn *c)
{
    if (c->state != CONN_CLOSING || c->closes_pending > 0 || c->resolving) return;
    struct upstream_pool *pool = c->pool;
    uv_freeaddrinfo(c->addrs);
    if (c->ts_on) tls_stream_free(&c->ts);
    free(c->rbuf);
    free(c);
    pool->n_conns--;
    pool_maybe_free(pool);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->closes_pending--;
    conn_maybe_free(c);
}

static void idle_unlink(struct conn *c)
{
    struct conn **pp = &c->pool->idle;
    while (*pp != NULL && *pp != c)
        pp = &(*pp)->idle_next;
    if (*pp == c) *pp = c->idle_next;
    c->idle_next = NULL;
}

/* Closes the connection; its memory goes in the close callbacks. Idempotent. */
static void conn_close(struct conn *c)
{
    if (c->state == CONN_CLOSING) return;
    if (c->state == CONN_IDLE) idle_unlink(c);
    c->state = CONN_CLOSING;
    c->req = NULL;
    c->reading = false;
    if (c->ts_on) tls_stream_close(&c->ts);
    if (c->resolving) uv_cancel((uv_req_t *)&c->resolve);
    c->closes_pending = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

/* True when the request's final head is overdue. */
static bool head_overdue(const struct upstream_req *r)
{
    return !r->head_done && r->head_deadline_ns != 0 && uv_hrtime() >= r->head_deadline_ns;
}

/*
 * Starts the no-progress timer, when a request reads this connection unpaused; before
 * the final head it fires by the head deadline at the latest.
 */
static void io_timer_restart(struct conn *c)
{
    if (c->state != CONN_ACTIVE || c->req == NULL || c->req->paused || c->kick) return;
    uint64_t ms = c->pool->opts.io_timeout_ms;
    const struct upstream_req *r = c->req;
    if (!r->head_done && r->head_deadline_ns != 0) {
        uint64_t now = uv_hrtime();
        uint64_t left = r->head_deadline_ns > now ? (r->head_deadline_ns - now) / 1000000u + 1 : 0;
        if (left < ms) ms = left;
    }
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* Reads the socket again and restarts the no-progress timer. */
static int conn_listen(struct conn *c)
{
    int err = transport_read_start(c);
    if (err == 0) io_timer_restart(c);
    return err;
}

/* Stops reading and the no-progress timer (the request paused). */
static void conn_quiet(struct conn *c)
{
    transport_read_stop(c);
    c->kick = false;
    uv_timer_stop(&c->timer);
}

static bool conn_is_for(const struct conn *c, bool tls, const char *host, uint16_t port)
{
    return c->tls == tls && c->port == port && strcasecmp(c->host, host) == 0;
}

/* Takes an idle connection to (tls, host, port) out of the pool, or returns NULL. */
static struct conn *pool_take(struct upstream_pool *pool, const struct url *u)
{
    for (struct conn *c = pool->idle; c != NULL; c = c->idle_next) {
        if (conn_is_for(c, u->tls, u->host, u->port)) {
            idle_unlink(c);
            c->state = CONN_ACTIVE;
            c->trailing = false;
            conn_quiet(c);
            return c;
        }
    }
    return NULL;
}

/* Puts a connection whose response was read to the end back in the pool. */
static void pool_release(struct conn *c)
{
    struct upstream_pool *pool = c->pool;
    unsigned same = 0;
    for (struct conn *i = pool->idle; i != NULL; i = i->idle_next)
        if (conn_is_for(i, c->tls, c->host, c->port)) same++;
    if (pool->closing || same >= pool->opts.max_idle_per_host) {
        conn_close(c);
        return;
    }
    c->req = NULL;
    c->kick = false;
    c->has_pending = false;
    free(c->rbuf);
    c->rbuf = NULL;
    c->state = CONN_IDLE;
    c->idle_next = pool->idle;
    pool->idle = c;
    uv_timer_start(&c->timer, on_timer, pool->opts.idle_timeout_ms, 0);
    if (transport_read_start(c) != 0) conn_close(c);
}

static struct conn *conn_create(struct upstream_pool *pool, bool tls, const char *host,
                                uint16_t port, int *err);
static int conn_connect_next(struct conn *c);

/*
 * A connect failed, and the name had more addresses: go on with the next one, on a new
 * connection (a uv_tcp_t that has tried one address is not used for another).
 * Returns 0, or the error of the last address tried.
 */
static int conn_fall_back(struct upstream_req *r, struct conn *c)
{
    int err = 0;
    struct conn *next = conn_create(c->pool, c->tls, c->host, c->port, &err);
    if (next == NULL) return err;
    next->addrs = c->addrs;
    next->next_addr = c->next_addr;
    c->addrs = NULL;
    c->next_addr = NULL;
    req_drop_conn(r);
    r->conn = next;
    next->req = r;
    return conn_connect_next(next);
}

static void on_connected(uv_connect_t *cr, int status)
{
    struct conn *c = cr->data;
    if (status == UV_ECANCELED || c->state == CONN_CLOSING) return;
    struct upstream_req *r = c->req;
    if (r == NULL) {
        conn_close(c);
        return;
    }
    req_ref(r);
    if (status < 0 && c->next_addr != NULL) {
        int err = conn_fall_back(r, c);
        if (err != UV_EAI_NONAME) /* (no address left of a usable family) */
            status = err;
    }
    if (status < 0) {
        req_fail(r, status, "connect to %s: %s", r->hostport, uv_strerror(status));
    } else if (r->conn == c) {
        uv_timer_stop(&c->timer);
        c->state = CONN_ACTIVE;
        transport_connected(c);
    }
    req_unref(r);
}

static int conn_connect(struct conn *c, const struct sockaddr *sa)
{
    c->state = CONN_CONNECTING;
    return uv_tcp_connect(&c->connect, &c->tcp, sa, on_connected);
}

/* Connects to the next resolved address. Returns 0 or the last error. */
static int conn_connect_next(struct conn *c)
{
    int err = UV_EAI_NONAME;
    while (c->next_addr != NULL) {
        const struct addrinfo *ai = c->next_addr;
        c->next_addr = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
        err = conn_connect(c, ai->ai_addr);
        if (err == 0) break;
    }
    return err;
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    struct conn *c = g->data;
    c->resolving = false;
    c->addrs = res;
    c->next_addr = res;
    if (c->state == CONN_CLOSING) {
        conn_maybe_free(c);
        return;
    }
    struct upstream_req *r = c->req;
    if (r == NULL) {
        conn_close(c);
        return;
    }
    req_ref(r);
    if (status < 0) {
        req_fail(r, status, "resolve %s: %s", c->host, uv_strerror(status));
    } else {
        int err = conn_connect_next(c);
        if (err != 0) req_fail(r, err, "connect to %s: %s", r->hostport, uv_strerror(err));
    }
    req_unref(r);
}

/* Resolves the host (unless it is a numeric address) and connects. */
static int conn_start(struct conn *c)
{
    struct sockaddr_storage ss;
    if (uv_ip4_addr(c->host, c->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(c->host, c->port, (struct sockaddr_in6 *)&ss) == 0)
        return conn_connect(c, (const struct sockaddr *)&ss);
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)c->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->state = CONN_RESOLVING;
    int err = uv_getaddrinfo(c->pool->loop, &c->resolve, on_resolved, c->host, port, &hints);
    if (err == 0) c->resolving = true;
    return err;
}

/*
 * A new connection to (tls, host, port), not connected yet; its connect timeout runs.
 * Returns NULL with *err on failure.
 */
static struct conn *conn_create(struct upstream_pool *pool, bool tls, const char *host,
                                uint16_t port, int *err)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    c->pool = pool;
    c->tls = tls;
    c->port = port;
    snprintf(c->host, sizeof(c->host), "%s", host);
    *err = uv_tcp_init(pool->loop, &c->tcp);
    if (*err != 0) {
        free(c);
        return NULL;
    }
    uv_timer_init(pool->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->connect.data = c;
    c->resolve.data = c;
    pool->n_conns++;
    c->state = CONN_CONNECTING;
    uv_timer_start(&c->timer, on_timer, pool->opts.connect_timeout_ms, 0);
    return c;
}

/* A new connection to u, connecting. NULL and *err on failure. */
static struct conn *conn_new(struct upstream_pool *pool, const struct url *u, int *err)
{
    struct conn *c = conn_create(pool, u->tls, u->host, u->port, err);
    if (c == NULL) return NULL;
    *err = conn_start(c);
    if (*err != 0) {
        conn_close(c);
        return NULL;
    }
    return c;
}

/* --- The response parser ------------------------------------------------------------ */

static int head_append(struct upstream_req *r, const char *at, size_t len)
{
    if (len == 0) return 0;
    if (r->hbuf_len + len > r->hbuf_cap) {
        size_t cap = r->hbuf_cap ? r->hbuf_cap : 4096;
        while (cap < r->hbuf_len + len)
            cap *= 2;
        char *p = realloc(r->hbuf, cap);
        if (p == NULL) {
            r->parse_err = UV_ENOMEM;
            req_set_error(r, "%s: out of memory for the response headers", r->hostport);
            return -1;
        }
        r->hbuf = p;
        r->hbuf_cap = cap;
    }
    memcpy(r->hbuf + r->hbuf_len, at, len);
    r->hbuf_len += len;
    return 0;
}

/* Counts head bytes against the 64 KiB cap. */
static int head_count(struct upstream_req *r, size_t len)
{
    r->head_bytes += len;
    if (r->head_bytes > MAX_HEAD_BYTES) {
        r->parse_err = UV_E2BIG;
        req_set_error(r, "%s: response headers larger than %u KiB", r->hostport,
                      MAX_HEAD_BYTES / 1024);
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct upstream_req *r = p->data;
    r->hbuf_len = 0;
    r->head_bytes = 0;
    r->n_fields = 0;
    r->field_state = 0;
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    return head_count(p->data, len) == 0 ? 0 : HPE_USER;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct upstream_req *r = p->data;
    if (head_count(r, len) != 0) return HPE_USER;
    if (r->field_state != 1) {
        if (r->n_fields == MAX_HEADERS) {
            r->parse_err = UV_E2BIG;
            req_set_error(r, "%s: more than %d response headers", r->hostport, MAX_HEADERS);
            return HPE_USER;
        }
        struct head_field *f = &r->fields[r->n_fields++];
        f->name_off = (uint32_t)r->hbuf_len;
        f->name_len = 0;
        f->value_off = (uint32_t)r->hbuf_len;
        f->value_len = 0;
        r->field_state = 1;
    }
    if (head_append(r, at, len) != 0) return HPE_USER;
    r->fields[r->n_fields - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct upstream_req *r = p->data;
    if (head_count(r, len) != 0) return HPE_USER;
    if (r->n_fields == 0) return 0;
    struct head_field *f = &r->fields[r->n_fields - 1];
    if (r->field_state != 2) {
        f->value_off = (uint32_t)r->hbuf_len;
        r->field_state = 2;
    }
    if (head_append(r, at, len) != 0) return HPE_USER;
    f->value_len += (uint32_t)len;
    return 0;
}

static bool is_redirect_status(int status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/*
 * The head is complete: a 1xx is skipped, a redirect is noted (and followed once the
 * response is done), anything else is the final response and goes to on_head. Returns
 * 1 for HEAD (no body follows), HPE_PAUSED when the consumer paused, -1 to stop.
 */
static int on_headers_complete(llhttp_t *p)
{
    struct upstream_req *r = p->data;
    int status = p->status_code;
    if (status < 100 || status > 599) {
        /* llhttp takes "HTTP/1.1  200" as 0 and "HTTP/1.1 20" as 20: not HTTP. */
        r->parse_err = UV_EPROTO;
        req_set_error(r, "%s: malformed response: status %d", r->hostport, status);
        return -1;
    }
    for (size_t i = 0; i < r->n_fields; i++) {
        if (r->fields[i].name_len == 0) {
            r->parse_err = UV_EPROTO;
            req_set_error(r, "%s: malformed response: a header without a name", r->hostport);
            return -1;
        }
    }
    if (status >= 100 && status < 200) {
        if (status == 101) {
            r->parse_err = UV_EPROTO;
            req_set_error(r, "%s: malformed response: unexpected 101 Switching Protocols",
                          r->hostport);
            return -1;
        }
        if (++r->interim > UPSTREAM_MAX_INTERIM) {
            r->parse_err = UV_EPROTO;
            req_set_error(r, "%s: more than %d interim (1xx) responses", r->hostport,
                          UPSTREAM_MAX_INTERIM);
            return -1;
        }
        r->informational = true;
        return 0;
    }

    struct http_header hdrs[MAX_HEADERS];
    for (size_t i = 0; i < r->n_fields; i++) {
        const struct head_field *f = &r->fields[i];
        size_t vlen = f->value_len;
        while (vlen > 0 && (r->hbuf[f->value_off + vlen - 1] == ' ' ||
                            r->hbuf[f->value_off + vlen - 1] == '\t'))
            vlen--;
        hdrs[i] =
            (struct http_header){r->hbuf + f->name_off, f->name_len, r->hbuf + f->value_off, vlen};
    }
    size_t n = r->n_fields;

    if (is_redirect_status(status) && r->idempotent && r->max_redirects > 0) {
        const struct http_header *loc = http_header_find(hdrs, n, "Location");
        if (loc != NULL) {
            if (r->redirects >= r->max_redirects) {
                r->parse_err = UV_ELOOP;
                req_set_error(r, "too many redirects (%d) from %.*s", r->redirects + 1,
                              url_shown(r->orig_url_text), r->orig_url_text);
                return -1;
            }
            char *next = resolve_location(r->url_text, loc->value, loc->value_len);
            if (next == NULL) {
                r->parse_err = UV_EPROTO;
                req_set_error(r, "%s: malformed response: unusable redirect Location", r->hostport);
                return -1;
            }
            free(r->redirect_to);
            r->redirect_to = next;
            r->redirect_pending = true;
            return r->is_head ? 1 : 0;
        }
    }

    int64_t content_length = -1;
    if ((p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED)) {
        if (p->content_length > (uint64_t)INT64_MAX) {
            r->parse_err = UV_EPROTO;
            req_set_error(r, "%s: malformed response: Content-Length too large", r->hostport);
            return -1;
        }
        content_length = (int64_t)p->content_length;
    }
    r->content_length = content_length;
    r->head_done = true;
    if (r->cbs.on_head) r->cbs.on_head(r->ud, status, hdrs, n, content_length);
    if (r->finished) return -1;
    if (r->is_head) return 1;
    return r->paused ? HPE_PAUSED : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct upstream_req *r = p->data;
    if (len == 0) return 0;
    if (r->redirect_pending) {
        r->body_bytes += len;
        /* Too much to drain: stop here, and the connection is closed. */
        return r->body_bytes > MAX_REDIRECT_DRAIN ? HPE_PAUSED : 0;
    }
    if (!r->head_done) return 0;
    r->body_bytes += len;
    if (r->cbs.on_body) r->cbs.on_body(r->ud, at, len);
    if (r->finished) return HPE_USER;
    return r->paused ? HPE_PAUSED : 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct upstream_req *r = p->data;
    if (r->informational) {
        r->informational = false;
        return 0;
    }
    r->message_complete = true;
    r->keep_alive = llhttp_should_keep_alive(p);
    /* Stop: what follows in the buffer is not part of this response. */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* --- Exchanges ---------------------------------------------------------------------- */

static void exchange_reset(struct upstream_req *r)
{
    llhttp_init(&r->parser, HTTP_RESPONSE, &parser_settings);
    r->parser.data = r;
    r->got_bytes = false;
    r->informational = false;
    r->interim = 0;
    r->head_deadline_ns = 0;
    r->head_done = false;
    r->redirect_pending = false;
    r->message_complete = false;
    r->keep_alive = false;
    r->done_pending = false;
    r->parse_err = 0;
    r->content_length = -1;
    r->body_bytes = 0;
    r->hbuf_len = 0;
    r->head_bytes = 0;
    r->n_fields = 0;
    r->field_state = 0;
}

/* The request line and headers of the current exchange, or NULL when memory ran out. */
static char *head_build(struct upstream_req *r, size_t *len)
{
    char origin[400];
    const char *host = "";
    if (url_format_origin(&r->cur, origin, sizeof(origin)) > 0) host = strstr(origin, "://") + 3;
    bool send_sensitive = same_origin(&r->cur, &r->orig);

    struct strbuf sb = {0};
    sb_adds(&sb, r->method);
    sb_adds(&sb, " ");
    sb_adds(&sb, r->path_query);
    sb_adds(&sb, " HTTP/1.1\r\nHost: ");
    sb_adds(&sb, host);
    sb_adds(&sb, "\r\n");
    if (!r->has_user_agent) sb_adds(&sb, "User-Agent: content-cache/" CC_VERSION "\r\n");
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct upstream_header *h = &r->headers[i];
        if (h->sensitive && !send_sensitive) continue;
        sb_adds(&sb, h->name);
        sb_adds(&sb, ": ");
        sb_adds(&sb, h->value);
        sb_adds(&sb, "\r\n");
    }
    if (r->has_body && r->body_length < 0) {
        sb_adds(&sb, "Transfer-Encoding: chunked\r\n");
    } else if (r->has_body || strcmp(r->method, "POST") == 0 || strcmp(r->method, "PUT") == 0 ||
               strcmp(r->method, "PATCH") == 0) {
        /* A method that means to carry content says how much, also none. */
        char cl[48];
        snprintf(cl, sizeof(cl), "Content-Length: %lld\r\n",
                 (long long)(r->has_body ? r->body_length : 0));
        sb_adds(&sb, cl);
    }
    sb_adds(&sb, "\r\n");
    return sb_finish(&sb, len);
}

/* Writes the request on r->conn and starts reading (unless paused). */
static int exchange_send(struct upstream_req *r)
{
    struct conn *c = r->conn;
    size_t len;
    char *head = head_build(r, &len);
    if (head == NULL) return UV_ENOMEM;
    int err = transport_write(c, head, len, false);
    if (err != 0) return err;
    r->head_written = true;
    /* The final head is due once the whole request is sent: with a body, its end
     * starts the clock (upstream_end_body). */
    if (!r->has_body || r->body_ended)
        r->head_deadline_ns = uv_hrtime() + (uint64_t)c->pool->opts.head_timeout_ms * 1000000u;
    body_flush(r);
    if (!r->paused) return conn_listen(c);
    return 0;
}

/* A new connection is ready for the request that waits on it. */
static void conn_ready(struct conn *c)
{
    struct upstream_req *r = c->req;
    int err = exchange_send(r);
    if (err != 0) req_fail(r, err, "write to %s: %s", r->hostport, uv_strerror(err));
}

/*
 * Starts an exchange for r->url_text: on an idle pooled connection when there is one
 * (unless fresh_only), else on a new one. Never calls a callback; on failure returns
 * the error with r->errmsg set.
 */
static int exchange_start(struct upstream_req *r, bool fresh_only)
{
    struct url u;
    char *path_query = NULL;
    const char *why = "bad URL";
    int err = target_parse(r->url_text, &u, &path_query, &why);
    if (err != 0) {
        req_set_error(r, "bad URL %.*s: %s", url_shown(r->url_text), r->url_text,
                      err == UV_ENOMEM ? "out of memory" : why);
        return err;
    }
    if (u.tls && r->pool->opts.tls == NULL) {
        free(path_query);
        req_set_error(r, "%.*s: https is not available (the upstream pool has no TLS config)",
                      url_shown(r->url_text), r->url_text);
        return UV_ENOTSUP;
    }
    free(r->path_query);
    r->path_query = path_query;
    r->cur = u;
    format_hostport(&u, r->hostport, sizeof(r->hostport));
    exchange_reset(r);

    struct conn *c;
    while (!fresh_only && (c = pool_take(r->pool, &u)) != NULL) {
        r->conn = c;
        c->req = r;
        r->conn_reused = true;
        if (exchange_send(r) == 0) return 0;
        req_drop_conn(r); /* it went bad while idle: try the next one */
    }
    c = conn_new(r->pool, &u, &err);
    if (c == NULL) {
        req_set_error(r, "connect to %s: %s", r->hostport, uv_strerror(err));
        return err;
    }
    r->conn = c;
    c->req = r;
    r->conn_reused = false;
    return 0;
}

/* Follows r->redirect_to (the previous connection is already released). */
static void redirect_follow(struct upstream_req *r)
{
    free(r->url_text);
    r->url_text = r->redirect_to;
    r->redirect_to = NULL;
    r->redirects++;
    int err = exchange_start(r, false);
    if (err != 0) req_finish(r, err);
}

/*
 * The response of the current exchange is over (or, for a redirect, no longer
 * wanted): the connection goes back to the pool when it can, else it is closed; then
 * the redirect is followed or the request ends. On a paused request the end waits
 * for upstream_resume.
 */
static void exchange_done(struct upstream_req *r)
{
    struct conn *c = r->conn;
    if (!r->redirect_pending && r->paused) {
        r->done_pending = true;
        conn_quiet(c);
        return;
    }
    bool reuse =
        r->message_complete && r->keep_alive && !r->says_close && !c->trailing &&
        c->writes_pending == 0 && (!r->has_body || r->body_all_written) &&
        (!c->ts_on || (tls_stream_writes(&c->ts) == 0 && !tls_stream_read_pending(&c->ts)));
    r->conn = NULL;
    c->req = NULL;
    if (reuse)
        pool_release(c);
    else
        conn_close(c);
    if (r->redirect_pending)
        redirect_follow(r);
    else
        req_finish(r, 0);
}

/* The connection failed before the response was complete: retry once, or fail. */
static void conn_lost(struct upstream_req *r, int err, const char *what)
{
    if (!r->got_bytes && r->conn_reused && !r->retried && r->idempotent) {
        /* A pooled connection that the server had closed: once more on a new one. */
        r->retried = true;
        req_drop_conn(r);
        int rc = exchange_start(r, true);
        if (rc != 0) req_finish(r, rc);
        return;
    }
    if (r->body_broken && !r->head_done) {
        req_fail(r, UV_ECONNRESET, "%s: the connection broke while the request body was sent (%s)",
                 r->hostport, r->errmsg);
        return;
    }
    if (err == UV_EOF) {
        if (!r->got_bytes)
            req_fail(r, UV_ECONNRESET, "%s: connection closed before a response", r->hostport);
        else if (!r->head_done && !r->redirect_pending)
            req_fail(r, UV_ECONNRESET, "%s: connection closed in the middle of the response head",
                     r->hostport);
        else if (r->content_length >= 0)
            req_fail(r, UV_ECONNRESET, "%s: connection closed after %llu of %lld body bytes",
                     r->hostport, (unsigned long long)r->body_bytes, (long long)r->content_length);
        else
            req_fail(r, UV_ECONNRESET,
                     "%s: connection closed before the end of the chunked body (%llu bytes)",
                     r->hostport, (unsigned long long)r->body_bytes);
        return;
    }
    req_fail(r, err, "%s to %s: %s", what, r->hostport, uv_strerror(err));
}

/*
 * Parses bytes of the response. Stops at the end of the response (then the exchange
 * is done), at a pause (the unparsed rest is kept for upstream_resume), or at an error.
 */
static void conn_feed(struct conn *c, const char *data, size_t len)
{
    struct upstream_req *r = c->req;
    llhttp_errno_t e = llhttp_execute(&r->parser, data, len);
    if (r->finished) return; /* cancelled from a callback: the connection is already closed */
    if (r->parse_err != 0) {
        req_finish(r, r->parse_err);
        return;
    }
    if (e == HPE_OK) {
        /* All consumed, the response goes on. A redirect whose body has no end but
         * the connection's is not waited for. */
        if (r->redirect_pending && llhttp_message_needs_eof(&r->parser)) exchange_done(r);
        return;
    }
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&r->parser);
        llhttp_resume(&r->parser);
        if (r->message_complete) {
            c->trailing = pos < data + len;
            exchange_done(r);
        } else if (r->redirect_pending) {
            exchange_done(r); /* too large to drain: not reusable */
        } else {
            c->has_pending = true;
            c->pending = pos;
            c->pending_len = (size_t)(data + len - pos);
            conn_quiet(c);
        }
        return;
    }
    req_fail(r, UV_EPROTO, "%s: malformed response: %s", r->hostport,
             llhttp_get_error_reason(&r->parser) ? llhttp_get_error_reason(&r->parser)
                                                 : llhttp_errno_name(e));
}

static void conn_on_data(struct conn *c, const char *data, size_t len)
{
    struct upstream_req *r = c->req;
    if (c->state != CONN_ACTIVE || r == NULL) {
        conn_close(c); /* an idle connection must not speak */
        return;
    }
    r->got_bytes = true;
    io_timer_restart(c);
    req_ref(r);
    conn_feed(c, data, len);
    req_unref(r);
}

static void conn_on_eof(struct conn *c, int err)
{
    struct upstream_req *r = c->req;
    if (c->state != CONN_ACTIVE || r == NULL) {
        conn_close(c);
        return;
    }
    req_ref(r);
    if (err == UV_EOF && r->got_bytes) {
        /* A body delimited by the end of the connection ends here; any other is cut. */
        llhttp_finish(&r->parser);
        if (r->message_complete) {
            r->keep_alive = false;
            exchange_done(r);
        } else if (r->redirect_pending) {
            exchange_done(r); /* the redirect's body was cut: follow it anyway */
        } else {
            conn_lost(r, err, "read");
        }
    } else {
        conn_lost(r, err, "read");
    }
    req_unref(r);
}

/* After upstream_resume: what was read and not parsed first, then the socket. */
static void conn_continue(struct conn *c)
{
    struct upstream_req *r = c->req;
    if (r->done_pending) {
        r->done_pending = false;
        exchange_done(r);
        return;
    }
    if (c->has_pending) {
        const char *data = c->pending;
        size_t len = c->pending_len;
        c->has_pending = false;
        c->pending = NULL;
        c->pending_len = 0;
        conn_feed(c, data, len);
        if (r->finished || r->conn != c || r->paused || c->has_pending) return;
    }
    if (c->ts_on && tls_stream_read_pending(&c->ts)) {
        tls_pump(c);
        if (r->finished || r->conn != c || r->paused || c->has_pending) return;
    }
    if (conn_listen(c) != 0) conn_lost(r, UV_EPIPE, "read");
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    struct upstream_req *r = c->req;
    char dur[32];
    switch (c->state) {
    case CONN_IDLE:
        conn_close(c);
        return;
    case CONN_CLOSING:
        return;
    case CONN_RESOLVING:
    case CONN_CONNECTING:
    case CONN_HANDSHAKE:
    case CONN_ACTIVE:
        break;
    }
    if (r == NULL) {
        conn_close(c);
        return;
    }
    req_ref(r);
    if (c->state == CONN_HANDSHAKE) {
        req_fail(r, UV_ETIMEDOUT, "TLS to %s: handshake timed out after %s", r->hostport,
                 format_ms(c->pool->opts.connect_timeout_ms, dur, sizeof(dur)));
    } else if (c->state != CONN_ACTIVE) {
        req_fail(r, UV_ETIMEDOUT, "connect to %s: timed out after %s", r->hostport,
                 format_ms(c->pool->opts.connect_timeout_ms, dur, sizeof(dur)));
    } else if (c->kick) {
        c->kick = false;
        conn_continue(c);
    } else if (r->redirect_pending) {
        exchange_done(r); /* the redirect's body stalled: follow it anyway */
    } else if (head_overdue(r)) {
        req_fail(r, UV_ETIMEDOUT, "%s: no final response head within %s%s", r->hostport,
                 format_ms(c->pool->opts.head_timeout_ms, dur, sizeof(dur)),
                 r->interim > 0 ? " (interim responses kept coming)" : "");
    } else if (!r->head_done) {
        req_fail(r, UV_ETIMEDOUT, "%s: no response within %s", r->hostport,
                 format_ms(c->pool->opts.io_timeout_ms, dur, sizeof(dur)));
    } else {
        req_fail(r, UV_ETIMEDOUT, "%s: response body stalled: nothing received for %s", r->hostport,
                 format_ms(c->pool->opts.io_timeout_ms, dur, sizeof(dur)));
    }
    req_unref(r);
}

/* --- The API ----------------------------------------------------------------------- */

struct upstream_pool *upstream_pool_new(uv_loop_t *loop, const struct upstream_pool_opts *opts)
{
    struct upstream_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL) return NULL;
    pool->loop = loop;
    if (opts != NULL) pool->opts = *opts;
    if (pool->opts.connect_timeout_ms == 0)
        pool->opts.connect_timeout_ms = UPSTREAM_DEFAULT_CONNECT_MS;
    if (pool->opts.io_timeout_ms == 0) pool->opts.io_timeout_ms = UPSTREAM_DEFAULT_IO_MS;
    if (pool->opts.head_timeout_ms == 0) pool->opts.head_timeout_ms = UPSTREAM_DEFAULT_HEAD_MS;
    if (pool->opts.idle_timeout_ms == 0) pool->opts.idle_timeout_ms = 30000;
    if (pool->opts.max_idle_per_host == 0) pool->opts.max_idle_per_host = 16;
    tls_config_ref(pool->opts.tls);
    return pool;
}

void upstream_pool_close(struct upstream_pool *pool)
{
    if (pool == NULL || pool->closing) return;
    pool->closing = true;
    while (pool->idle != NULL)
        conn_close(pool->idle);
    pool_maybe_free(pool);
}

/* Copies the caller's headers into one block. Returns 0, UV_EINVAL or UV_ENOMEM. */
static int copy_headers(struct upstream_req *r, const struct upstream_header *hs, size_t n)
{
    size_t bytes = n * sizeof(*hs);
    for (size_t i = 0; i < n; i++) {
        if (hs[i].name == NULL || hs[i].value == NULL || !is_token(hs[i].name) ||
            strcasecmp(hs[i].name, "Host") == 0 || strcasecmp(hs[i].name, "Content-Length") == 0 ||
            strcasecmp(hs[i].name, "Transfer-Encoding") == 0 ||
            strpbrk(hs[i].value, "\r\n") != NULL)
            return UV_EINVAL;
        bytes += strlen(hs[i].name) + strlen(hs[i].value) + 2;
    }
    if (n == 0) return 0;
    struct upstream_header *copy = malloc(bytes);
    if (copy == NULL) return UV_ENOMEM;
    char *s = (char *)(copy + n);
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(hs[i].name) + 1, vl = strlen(hs[i].value) + 1;
        copy[i].name = memcpy(s, hs[i].name, nl);
        s += nl;
        copy[i].value = memcpy(s, hs[i].value, vl);
        s += vl;
        copy[i].sensitive = hs[i].sensitive;
        if (strcasecmp(hs[i].name, "User-Agent") == 0) r->has_user_agent = true;
        if (strcasecmp(hs[i].name, "Connection") == 0 && has_token(hs[i].value, "close"))
            r->says_close = true;
    }
    r->headers = copy;
    r->n_headers = n;
    return 0;
}

int upstream_request(struct upstream_pool *pool, const struct upstream_request_spec *spec,
                     const struct upstream_callbacks *cbs, void *ud, struct upstream_req **out)
{
    if (pool == NULL || spec == NULL || cbs == NULL || out == NULL || spec->method == NULL ||
        spec->url == NULL || !is_token(spec->method) || pool->closing ||
        (spec->n_headers > 0 && spec->headers == NULL))
        return UV_EINVAL;
    struct url orig;
    char *path_query = NULL;
    const char *why;
    int err = target_parse(spec->url, &orig, &path_query, &why);
    if (err != 0) return err;
    free(path_query);
    if (orig.tls && pool->opts.tls == NULL) return UV_ENOTSUP;

    struct upstream_req *r = calloc(1, sizeof(*r));
    if (r == NULL) return UV_ENOMEM;
    r->pool = pool;
    r->cbs = *cbs;
    r->ud = ud;
    r->refs = 1;
    r->orig = orig;
    r->max_redirects = spec->max_redirects;
    r->is_head = strcmp(spec->method, "HEAD") == 0;
    r->has_body = spec->has_body;
    r->body_length = spec->body_length < 0 ? -1 : spec->body_length;
    r->idempotent = !r->has_body && (r->is_head || strcmp(spec->method, "GET") == 0);
    pool->n_reqs++;
    r->method = strdup(spec->method);
    r->orig_url_text = strdup(spec->url);
    r->url_text = strdup(spec->url);
    err = (r->method && r->orig_url_text && r->url_text) ? 0 : UV_ENOMEM;
    if (err == 0) err = copy_headers(r, spec->headers, spec->n_headers);
    /* What cannot be sent twice goes on a new connection: one the server closed while it
     * was idle would lose it, and it is not retried. */
    if (err == 0) err = exchange_start(r, !r->idempotent);
    if (err != 0) {
        r->finished = true;
        req_drop_conn(r);
        req_unref(r);
        return err;
    }
    *out = r;
    return 0;
}

void upstream_pause(struct upstream_req *r)
{
    if (r == NULL || r->finished || r->paused) return;
    r->paused = true;
    struct conn *c = r->conn;
    if (c != NULL && c->state == CONN_ACTIVE) conn_quiet(c);
}

void upstream_resume(struct upstream_req *r)
{
    if (r == NULL || r->finished || !r->paused) return;
    r->paused = false;
    struct conn *c = r->conn;
    if (c == NULL || c->state != CONN_ACTIVE)
        return; /* still connecting: reading starts once the request is sent */
    if (c->has_pending || r->done_pending || (c->ts_on && tls_stream_read_pending(&c->ts))) {
        /* Deliver from the loop, not from inside the caller. */
        c->kick = true;
        uv_timer_start(&c->timer, on_timer, 0, 0);
    } else if (conn_listen(c) != 0) {
        c->kick = true; /* let the kick report the failure from the loop */
        uv_timer_start(&c->timer, on_timer, 0, 0);
    }
}

void upstream_cancel(struct upstream_req *r)
{
    if (r == NULL || r->finished) return;
    r->finished = true;
    req_drop_conn(r);
    req_unref(r);
}

/* --- The request body ---------------------------------------------------------------- */

/*
 * Writes what of the body waits, when it can go: after the head, one write at a time on
 * https. A piece's callback comes in body_written; the end (the last chunk) has none.
 */
static void body_flush(struct upstream_req *r)
{
    struct conn *c = r->conn;
    if (r->finished || c == NULL || c->state != CONN_ACTIVE || !r->head_written ||
        r->body_writing || r->body_broken)
        return;
    if (r->body_piece == NULL && r->body_ended && !r->body_end_queued) {
        r->body_end_queued = true;
        if (r->body_length >= 0) {
            r->body_all_written = true; /* every piece was written before the end came */
            return;
        }
        r->body_piece = strdup("0\r\n\r\n");
        r->body_piece_len = 5;
        r->body_piece_is_end = true;
        if (r->body_piece == NULL) {
            req_fail(r, UV_ENOMEM, "%s: out of memory for the request body", r->hostport);
            return;
        }
    }
    if (r->body_piece == NULL) return;
    char *piece = r->body_piece;
    int err = transport_write(c, piece, r->body_piece_len, true);
    if (err == UV_EBUSY) return; /* after the job that runs (tls_job_written) */
    r->body_piece = NULL;
    if (err != 0) {
        req_fail(r, err, "write to %s: %s", r->hostport, uv_strerror(err));
        return;
    }
    r->body_writing = true;
}

/* A write of the body is over (a failure is conn_written's to report). */
static void body_written(struct upstream_req *r, int status)
{
    if (!r->body_writing) return;
    r->body_writing = false;
    if (status < 0 || r->finished) return;
    if (r->body_piece_is_end) {
        r->body_piece_is_end = false;
        r->body_all_written = true;
        return;
    }
    upstream_body_cb cb = r->body_cb;
    r->body_cb = NULL;
    if (cb != NULL) cb(r->body_arg, 0);
    if (!r->finished && r->body_piece == NULL) body_flush(r); /* the end, when it came */
}

int upstream_send_body(struct upstream_req *r, const char *data, size_t len, upstream_body_cb cb,
                       void *arg)
{
    if (r == NULL || r->finished || r->body_broken) return UV_ECANCELED;
    if (!r->has_body || r->body_ended || len == 0 || r->body_piece != NULL || r->body_writing ||
        (r->body_length >= 0 && r->body_given + len > (uint64_t)r->body_length))
        return UV_EINVAL;
    bool chunked = r->body_length < 0;
    char frame[24] = "";
    int fl = chunked ? snprintf(frame, sizeof(frame), "%zx\r\n", len) : 0;
    char *piece = malloc((size_t)fl + len + (chunked ? 2 : 0));
    if (piece == NULL) return UV_ENOMEM;
    memcpy(piece, frame, (size_t)fl);
    memcpy(piece + fl, data, len);
    if (chunked) memcpy(piece + fl + len, "\r\n", 2);
    r->body_piece = piece;
    r->body_piece_len = (size_t)fl + len + (chunked ? 2 : 0);
    r->body_given += len;
    r->body_cb = cb;
    r->body_arg = arg;
    body_flush(r);
    return 0;
}

int upstream_end_body(struct upstream_req *r)
{
    if (r == NULL || r->finished) return UV_ECANCELED;
    if (!r->has_body || r->body_ended ||
        (r->body_length >= 0 && r->body_given != (uint64_t)r->body_length))
        return UV_EINVAL;
    r->body_ended = true;
    if (r->head_written) {
        r->head_deadline_ns = uv_hrtime() + (uint64_t)r->pool->opts.head_timeout_ms * 1000000u;
        if (r->conn != NULL) io_timer_restart(r->conn);
    }
    body_flush(r);
    return 0;
}

const char *upstream_error_message(const struct upstream_req *r)
{
    return r ? r->errmsg : "";
}

const char *upstream_final_url(const struct upstream_req *r)
{
    return r ? r->url_text : "";
}
