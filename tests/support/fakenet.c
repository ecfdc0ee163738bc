/*
 * fakenet.c: the interposed connect(2) and getaddrinfo(3), and the scripted peers. See
 * fakenet.h.
 */
#include "fakenet.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FAKENET_HEAD_MAX 16384

static uint16_t allowed_ports[FAKENET_MAX_ALLOWED];
static size_t n_allowed;
static uint16_t redirect_port;

void fakenet_allow(uint16_t port)
{
    if (n_allowed < FAKENET_MAX_ALLOWED) allowed_ports[n_allowed++] = port;
}

void fakenet_disallow(uint16_t port)
{
    for (size_t i = 0; i < n_allowed; i++) {
        if (allowed_ports[i] == port) {
            allowed_ports[i] = allowed_ports[--n_allowed];
            return;
        }
    }
}

void fakenet_redirect(uint16_t port)
{
    redirect_port = port;
}

static bool port_allowed(uint16_t port)
{
    for (size_t i = 0; i < n_allowed; i++)
        if (allowed_ports[i] == port) return true;
    return false;
}

/* The harness's own definition wins over libc's for libuv and every other caller. */
int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (addr == NULL || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
        return (int)syscall(SYS_connect, fd, addr, len);
    if (addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (in->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && port_allowed(ntohs(in->sin_port)))
            return (int)syscall(SYS_connect, fd, addr, len);
        if (redirect_port != 0) {
            struct sockaddr_in to = *in;
            to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            to.sin_port = htons(redirect_port);
            return (int)syscall(SYS_connect, fd, (const struct sockaddr *)&to, sizeof(to));
        }
    }
    errno = ECONNREFUSED;
    return -1;
}

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static getaddrinfo_fn real;
    if (real == NULL) real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (real == NULL) return EAI_FAIL;
    if (node == NULL) return real(node, service, hints, res);
    struct addrinfo h;
    memset(&h, 0, sizeof(h));
    if (hints != NULL) {
        h.ai_socktype = hints->ai_socktype;
        h.ai_protocol = hints->ai_protocol;
    }
    h.ai_family = AF_INET;
    h.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    return real("127.0.0.1", service, &h, res);
}

/* --- Slices: one write per loop iteration ----------------------------------------- */

/*
 * Sends data in slices from an idle handle; calls done(sl, status) once at the end. While
 * `holding`, it stops once hold_at bytes are out (stalled) until slicer_release.
 */
struct slicer {
    uv_idle_t idle;
    uv_stream_t *stream;
    const char *data;
    size_t len, off, chunk;
    size_t hold_at;
    bool holding;
    bool writing;
    bool stalled;
    bool finished;
    void (*done)(struct slicer *sl, int status);
    uv_write_t wreq;
};

static void slicer_next(uv_idle_t *h);

static void slicer_finish(struct slicer *sl, int status)
{
    if (sl->finished) return;
    sl->finished = true;
    uv_idle_stop(&sl->idle);
    sl->done(sl, status);
}

static void slicer_written(uv_write_t *w, int status)
{
    struct slicer *sl = w->data;
    sl->writing = false;
    if (status < 0) {
        slicer_finish(sl, status);
        return;
    }
    if (sl->off >= sl->len && !sl->holding)
        slicer_finish(sl, 0);
    else if (!uv_is_closing((uv_handle_t *)&sl->idle))
        uv_idle_start(&sl->idle, slicer_next); /* (a write that completed before a close
                                                   reports success during the close) */
}

static void slicer_next(uv_idle_t *h)
{
    struct slicer *sl = h->data;
    uv_idle_stop(h);
    if (sl->writing || sl->finished) return;
    if (sl->holding && sl->off >= sl->hold_at) {
        sl->stalled = true;
        return;
    }
    if (sl->off >= sl->len) {
        slicer_finish(sl, 0);
        return;
    }
    size_t n = sl->len - sl->off;
    if (sl->chunk != 0 && n > sl->chunk) n = sl->chunk;
    if (sl->holding && n > sl->hold_at - sl->off) n = sl->hold_at - sl->off;
    uv_buf_t b = uv_buf_init((char *)sl->data + sl->off, (unsigned)n);
    sl->off += n;
    sl->wreq.data = sl;
    sl->writing = true;
    int rc = uv_write(&sl->wreq, sl->stream, &b, 1, slicer_written);
    if (rc != 0) {
        sl->writing = false;
        slicer_finish(sl, rc);
    }
}

static void slicer_init(struct slicer *sl, uv_loop_t *loop, uv_stream_t *stream)
{
    memset(sl, 0, sizeof(*sl));
    uv_idle_init(loop, &sl->idle);
    sl->idle.data = sl;
    sl->stream = stream;
}

/* hold_at 0: no hold; else stall after min(hold_at, len) bytes. */
static void slicer_start(struct slicer *sl, const char *data, size_t len, size_t chunk,
                         size_t hold_at)
{
    sl->data = data;
    sl->len = len;
    sl->off = 0;
    sl->chunk = chunk;
    sl->holding = hold_at != 0;
    sl->hold_at = hold_at > len ? len : hold_at;
    sl->stalled = false;
    sl->finished = false;
    uv_idle_start(&sl->idle, slicer_next);
}

/* The rest of a held reply goes out (now, or once it reaches its hold). */
static void slicer_release(struct slicer *sl)
{
    sl->holding = false;
    if (sl->stalled && !sl->finished && !uv_is_closing((uv_handle_t *)&sl->idle)) {
        sl->stalled = false;
        uv_idle_start(&sl->idle, slicer_next);
    }
}

/*
 * Makes a close reset the connection instead of leaving it in TIME_WAIT: thousands of
 * connections a second would use up the ports. Only once both sides are done.
 */
static void no_linger(uv_tcp_t *tcp)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)tcp, &fd) == 0) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
}

/* --- The scripted server ---------------------------------------------------------- */

struct sconn;

struct fakenet_server {
    uv_tcp_t listener;
    uint16_t port;
    unsigned n_conns;
    unsigned accepted;
    unsigned requests;
    bool stopping;
    bool listener_closed;
    struct sconn *conns;
    fakenet_answer_fn answer;
    void *ud;
};

struct sconn {
    uv_tcp_t tcp;
    struct slicer out;
    uv_shutdown_t shutdown;
    struct fakenet_server *srv;
    struct sconn *prev, *next; /* the server's connections */
    int handles;               /* open handles: tcp and the slicer's idle */
    unsigned answered;         /* requests answered */
    bool replying;             /* a reply is going out */
    bool keep_alive;           /* ...and the connection stays for the next request */
    bool peer_eof;             /* the client closed its side: nothing more to read */
    bool closing;
    size_t in_len; /* request bytes not answered yet */
    char in[FAKENET_HEAD_MAX];
    char readbuf[4096];
};

static void server_maybe_free(struct fakenet_server *s)
{
    if (s->stopping && s->listener_closed && s->n_conns == 0) free(s);
}

static void sconn_handle_closed(uv_handle_t *h)
{
    struct sconn *sc = h->data;
    if (--sc->handles > 0) return;
    struct fakenet_server *s = sc->srv;
    if (sc->prev != NULL)
        sc->prev->next = sc->next;
    else
        s->conns = sc->next;
    if (sc->next != NULL) sc->next->prev = sc->prev;
    s->n_conns--;
    free(sc);
    server_maybe_free(s);
}

static void sconn_close(struct sconn *sc)
{
    if (sc->closing) return;
    sc->closing = true;
    sc->out.idle.data = sc;
    uv_close((uv_handle_t *)&sc->out.idle, sconn_handle_closed);
    uv_close((uv_handle_t *)&sc->tcp, sconn_handle_closed);
}

static void sconn_shut(uv_shutdown_t *req, int status)
{
    struct sconn *sc = req->data;
    if (status < 0 || sc->peer_eof) {
        if (sc->peer_eof) no_linger(&sc->tcp);
        sconn_close(sc);
    }
    /* else: read on until the client closes */
}

static void sconn_next_request(struct sconn *sc);

static void sconn_sent(struct slicer *sl, int status)
{
    struct sconn *sc = (struct sconn *)((char *)sl - offsetof(struct sconn, out));
    if (sc->closing) return;
    sc->replying = false;
    if (status == 0 && sc->keep_alive && !sc->peer_eof) {
        sconn_next_request(sc); /* one that came meanwhile, or wait for it */
        return;
    }
    sc->shutdown.data = sc;
    if (status < 0 || uv_shutdown(&sc->shutdown, (uv_stream_t *)&sc->tcp, sconn_shut) != 0)
        sconn_close(sc);
}

static void sconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct sconn *sc = h->data;
    b->base = sc->readbuf;
    b->len = sizeof(sc->readbuf);
}

void fakenet_request_line(const char *head, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    while (n < len && n + 1 < cap && head[n] != '\r')
        n++;
    memcpy(out, head, n);
    out[n] = '\0';
}

/* Answers the request whose head is in[0..head_len), and drops it from the input. */
static void sconn_answer(struct sconn *sc, size_t head_len)
{
    struct fakenet_reply reply;
    memset(&reply, 0, sizeof(reply));
    sc->answered++;
    sc->srv->requests++;
    sc->replying = true;
    sc->srv->answer(sc->srv->ud, sc->in, head_len, &reply);
    memmove(sc->in, sc->in + head_len, sc->in_len - head_len);
    sc->in_len -= head_len;
    sc->keep_alive = reply.keep_alive;
    slicer_start(&sc->out, reply.data, reply.len, reply.chunk, reply.stall_at);
}

/* Answers the next whole head in the input, if there is one. */
static void sconn_next_request(struct sconn *sc)
{
    if (sc->replying || sc->closing) return;
    const char *end = memmem(sc->in, sc->in_len, "\r\n\r\n", 4);
    if (end != NULL)
        sconn_answer(sc, (size_t)(end + 4 - sc->in));
    else if (sc->in_len == sizeof(sc->in))
        sconn_answer(sc, sc->in_len);
}

static void sconn_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct sconn *sc = st->data;
    if (n < 0) {
        if (n == UV_EOF && !sc->replying && (sc->answered == 0 || sc->in_len > 0)) {
            sc->peer_eof = true;
            uv_read_stop(st);
            sconn_answer(sc, sc->in_len); /* a client that sent no whole head still gets
                                             the reply */
            return;
        }
        if (n == UV_EOF && sc->out.finished) no_linger(&sc->tcp);
        sconn_close(sc);
        return;
    }
    size_t take = (size_t)n;
    if (take > sizeof(sc->in) - sc->in_len) take = sizeof(sc->in) - sc->in_len;
    memcpy(sc->in + sc->in_len, b->base, take);
    sc->in_len += take;
    sconn_next_request(sc);
}

static void listener_closed(uv_handle_t *h)
{
    struct fakenet_server *s = h->data;
    s->listener_closed = true;
    server_maybe_free(s);
}

static void server_on_connection(uv_stream_t *listener, int status)
{
    struct fakenet_server *s = listener->data;
    if (status < 0 || s->stopping) return;
    struct sconn *sc = calloc(1, sizeof(*sc));
    if (sc == NULL) abort();
    sc->srv = s;
    uv_tcp_init(listener->loop, &sc->tcp);
    sc->tcp.data = sc;
    slicer_init(&sc->out, listener->loop, (uv_stream_t *)&sc->tcp);
    sc->out.done = sconn_sent;
    sc->handles = 2;
    sc->next = s->conns;
    if (s->conns != NULL) s->conns->prev = sc;
    s->conns = sc;
    s->n_conns++;
    if (uv_accept(listener, (uv_stream_t *)&sc->tcp) != 0) {
        sconn_close(sc);
        return;
    }
    s->accepted++;
    if (uv_read_start((uv_stream_t *)&sc->tcp, sconn_alloc, sconn_read) != 0) sconn_close(sc);
}

int fakenet_server_start(uv_loop_t *loop, fakenet_answer_fn answer, void *ud,
                         struct fakenet_server **out)
{
    struct fakenet_server *s = calloc(1, sizeof(*s));
    if (s == NULL) return UV_ENOMEM;
    s->answer = answer;
    s->ud = ud;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 128, server_on_connection);
    struct sockaddr_in bound;
    int bl = sizeof(bound);
    if (rc == 0) rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &bl);
    if (rc != 0) {
        s->stopping = true; /* freed once the listener is closed */
        uv_close((uv_handle_t *)&s->listener, listener_closed);
        return rc;
    }
    s->port = ntohs(bound.sin_port);
    fakenet_allow(s->port);
    uv_unref((uv_handle_t *)&s->listener);
    *out = s;
    return 0;
}

uint16_t fakenet_server_port(const struct fakenet_server *s)
{
    return s->port;
}

unsigned fakenet_server_connections(const struct fakenet_server *s)
{
    return s->n_conns;
}

unsigned fakenet_server_accepted(const struct fakenet_server *s)
{
    return s->accepted;
}

unsigned fakenet_server_requests(const struct fakenet_server *s)
{
    return s->requests;
}

void fakenet_server_resume(struct fakenet_server *s)
{
    for (struct sconn *sc = s->conns; sc != NULL; sc = sc->next)
        slicer_release(&sc->out);
}

void fakenet_server_stop(struct fakenet_server *s)
{
    if (s->stopping) return;
    s->stopping = true;
    fakenet_disallow(s->port);
    uv_close((uv_handle_t *)&s->listener, listener_closed);
    for (struct sconn *sc = s->conns; sc != NULL; sc = sc->next)
        sconn_close(sc);
}

/* --- The scripted client ---------------------------------------------------------- */

struct cconn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_shutdown_t shutdown;
    struct slicer out;
    struct fakenet_client_stats *stats;
    int handles;
    bool closing;
    char readbuf[65536];
};

static void cconn_handle_closed(uv_handle_t *h)
{
    struct cconn *cc = h->data;
    if (--cc->handles > 0) return;
    cc->stats->done = true;
    free(cc);
}

static void cconn_close(struct cconn *cc)
{
    if (cc->closing) return;
    cc->closing = true;
    no_linger(&cc->tcp);
    cc->out.idle.data = cc;
    uv_close((uv_handle_t *)&cc->out.idle, cconn_handle_closed);
    uv_close((uv_handle_t *)&cc->tcp, cconn_handle_closed);
}

static void cconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct cconn *cc = h->data;
    b->base = cc->readbuf;
    b->len = sizeof(cc->readbuf);
}

static void cconn_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct cconn *cc = st->data;
    if (n < 0) {
        cconn_close(cc);
        return;
    }
    struct fakenet_client_stats *stats = cc->stats;
    size_t room = sizeof(stats->response) - 1;
    size_t have = stats->bytes_read < room ? stats->bytes_read : room;
    size_t take = (size_t)n < room - have ? (size_t)n : room - have;
    memcpy(stats->response + have, b->base, take);
    stats->response[have + take] = '\0';
    stats->bytes_read += (size_t)n;
}

static void cconn_shut(uv_shutdown_t *req, int status)
{
    if (status < 0) cconn_close(req->data);
}

static void cconn_sent(struct slicer *sl, int status)
{
    struct cconn *cc = (struct cconn *)((char *)sl - offsetof(struct cconn, out));
    if (cc->closing) return;
    cc->stats->bytes_written = sl->off;
    cc->shutdown.data = cc;
    if (status < 0 || uv_shutdown(&cc->shutdown, (uv_stream_t *)&cc->tcp, cconn_shut) != 0)
        cconn_close(cc);
}

static void cconn_connected(uv_connect_t *req, int status)
{
    struct cconn *cc = req->data;
    if (status < 0) {
        cconn_close(cc);
        return;
    }
    cc->stats->connected = true;
    if (uv_read_start((uv_stream_t *)&cc->tcp, cconn_alloc, cconn_read) != 0) {
        cconn_close(cc);
        return;
    }
    uv_idle_start(&cc->out.idle, slicer_next);
}

int fakenet_client_run(uv_loop_t *loop, uint16_t port, const char *data, size_t len, size_t chunk,
                       struct fakenet_client_stats *stats)
{
    struct cconn *cc = calloc(1, sizeof(*cc));
    if (cc == NULL) return UV_ENOMEM;
    memset(stats, 0, sizeof(*stats));
    cc->stats = stats;
    uv_tcp_init(loop, &cc->tcp);
    cc->tcp.data = cc;
    slicer_init(&cc->out, loop, (uv_stream_t *)&cc->tcp);
    cc->out.done = cconn_sent;
    cc->out.data = data;
    cc->out.len = len;
    cc->out.chunk = chunk;
    cc->handles = 2;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    cc->connect.data = cc;
    int rc =
        uv_tcp_connect(&cc->connect, &cc->tcp, (const struct sockaddr *)&addr, cconn_connected);
    if (rc != 0) {
        cconn_close(cc); /* sets stats->done once closed */
        return rc;
    }
    return 0;
}

/* --- Waiting ------------------------------------------------------------------------ */

static void deadline_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void tick_cb(uv_timer_t *t) {}

bool fakenet_run_until(uv_loop_t *loop, bool (*done)(void *arg), void *arg, unsigned timeout_ms)
{
    uv_timer_t deadline, tick;
    bool expired = false;
    uv_timer_init(loop, &deadline);
    uv_timer_init(loop, &tick);
    deadline.data = &expired;
    uv_timer_start(&deadline, deadline_cb, timeout_ms, 0);
    uv_timer_start(&tick, tick_cb, 10, 10);
    while (!expired && !done(arg))
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* (their close callbacks) */
    return done(arg);
}
