/*
 * process.c: the serving scaffold the cache and the front share. See process.h.
 */
#include "app/process.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/chain.h"
#include "net/tls.h"

#define PROCESS_MAX_EXTRA_HEADERS 64

/* What loop 0 asks of a worker (bits of struct process.asked). */
#define ASK_STOP 1u
#define ASK_RELOAD 2u
#define ASK_GATHER 4u

/* The most a worker's sections of /metrics take. */
#define PROCESS_METRICS_MAX (256 * 1024)

/* Loop 0's view of the workers: their structs and threads. */
struct process_group {
    unsigned n;            /* loops, loop 0 included */
    struct process *loops; /* [1..n): the workers' (loops[0] unused) */
    uv_thread_t *threads;  /* [1..n) */
    unsigned started;      /* threads started (and to join) */
    uv_sem_t ready;        /* posted by each worker once built (or failed) */
    uv_async_t ended;      /* on loop 0: a worker's loop has ended */
    _Atomic unsigned n_ended;
    bool drained;            /* loop 0's server has drained: it stops once every worker did */
    uv_mutex_t control_lock; /* a worker's control handle is sent to only while open */
    /* A gather of the workers' metrics: one at a time. */
    uv_async_t gathered; /* on loop 0: the last worker has rendered */
    _Atomic unsigned gather_pending;
    bool gathering;
    char **texts; /* [1..n): each worker's rendering, PROCESS_METRICS_MAX bytes */
    size_t *text_len;
    debug_gathered_fn gather_done;
    void *gather_arg;
    struct process_mode mode;
};

void process_init(struct process *p, const struct config *cfg)
{
    memset(p, 0, sizeof(*p));
    p->cfg = cfg;
    p->loop = uv_default_loop();
}

int process_pool(struct process *p, struct upstream_pool **out)
{
    const struct config *cfg = p->cfg;
    char err[512];
    struct upstream_pool_opts opts = {.connect_timeout_ms = cfg->upstream_connect_ms,
                                      .io_timeout_ms = cfg->upstream_progress_ms,
                                      .head_timeout_ms = cfg->upstream_head_ms};
    if (tls_client_config_new((const char *const *)cfg->cas, cfg->n_cas, true, &opts.tls, err,
                              sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "cas: %s", err);
        return -EINVAL;
    }
    *out = upstream_pool_new(p->loop, &opts);
    tls_config_free(opts.tls); /* the pool holds its own reference */
    if (*out == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return -ENOMEM;
    }
    return 0;
}

/* The server's section while it serves (a drained server is freed before loop 0's debug
 * server stops, when other loops still drain). */
static void render_server(const void *proc, struct textbuf *out)
{
    const struct process *p = proc;
    if (p->server != NULL) http_server_render_metrics(p->server, out);
}

int process_listen(struct process *p, http_request_cb on_request, void *ud,
                   size_t (*format_access)(void *ud, const struct log_access_entry *e, char *buf,
                                           size_t cap),
                   void (*on_complete)(void *ud, const struct log_access_entry *e), void *format_ud)
{
    const struct config *cfg = p->cfg;
    char err[512];
    struct http_header extra[PROCESS_MAX_EXTRA_HEADERS];
    size_t n_extra = 0;
    for (size_t i = 0; i < cfg->n_http_headers; i++) {
        const struct config_header *h = &cfg->http_headers[i];
        for (size_t k = 0; k < h->n_values && n_extra < PROCESS_MAX_EXTRA_HEADERS; k++)
            extra[n_extra++] =
                (struct http_header){h->name, strlen(h->name), h->values[k], strlen(h->values[k])};
    }
    struct http_server_opts opts = {
        .extra_headers = extra,
        .n_extra_headers = n_extra,
        .on_request = on_request,
        .ud = ud,
        .format_access = format_access,
        .on_complete = on_complete,
        .format_ud = format_ud,
        .reuseport = p->reuseport,
        .max_connections = cfg->http_maxconnections,
        .connections = p->connections != NULL ? p->connections : &p->connections_open,
    };
    if (cfg->http_tls_certificate != NULL && p->server_tls != NULL) {
        opts.tls = tls_config_ref(p->server_tls);
    } else if (cfg->http_tls_certificate != NULL &&
               tls_server_config_new(cfg->http_tls_certificate, cfg->http_tls_key,
                                     cfg->http_tls_minimumtls, &opts.tls, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "http.tls: %s", err);
        return -EINVAL;
    }
    const char *addr = p->listen_addr != NULL ? p->listen_addr : cfg->http_addr;
    int rc = http_server_listen(p->loop, addr, &opts, &p->server, err, sizeof(err));
    if (rc == 0 && p->index == 0 && p->reuseport && p->server_tls == NULL)
        p->server_tls = tls_config_ref(opts.tls); /* for the workers (NULL for http) */
    tls_config_free(opts.tls);                    /* the server holds its own reference */
    if (rc != 0) {
        log_msg(LOG_ERROR, "%s", err);
        p->server = NULL;
        uv_run(p->loop, UV_RUN_DEFAULT); /* the listener's close */
        return rc;
    }
    /* The server's figures and this loop's labelled ones, after the mode's sections. */
    process_add_section(p, render_server, p);
    process_add_section(p, process_render_loop_metrics, p);
    if (p->index == 0)
        log_msg(LOG_INFO, "content-cache %s listening on %s (%s)", CC_VERSION,
                http_server_address(p->server), cfg->http_tls_certificate ? "https" : "http");
    return 0;
}

/* content_cache_loops: how many loops serve (workers). */
static void render_loops(const void *proc, struct textbuf *out)
{
    metrics_value(out, "content_cache_loops", "gauge",
                  "Event loops serving, each on its own thread (workers).",
                  process_loops((const struct process *)proc));
}

int process_debug(struct process *p)
{
    char err[512];
    if (p->cfg->http_debug_addr == NULL) return 0;
    int rc = debug_start(p->loop, p->cfg->http_debug_addr, &p->debug, err, sizeof(err));
    if (rc != 0) {
        log_msg(LOG_ERROR, "http.debug.addr: %s", err);
        return rc;
    }
    log_msg(LOG_INFO, "debug server (/metrics, /debug/health) on %s", debug_address(p->debug));
    debug_add_section(p->debug, render_loops, p);
    debug_add_section(p->debug, chain_render_metrics, NULL);
    for (size_t i = 0; i < p->n_sections; i++)
        debug_add_section(p->debug, p->sections[i], p->section_sources[i]);
    debug_set_gather(p->debug, process_gather, p);
    return 0;
}

void process_add_section(struct process *p, metrics_render_fn fn, const void *source)
{
    if (p->n_sections == PROCESS_LOOP_SECTIONS) {
        log_msg(LOG_ERROR, "metrics: more than %d sections on loop %u; one is left out",
                PROCESS_LOOP_SECTIONS, p->index);
        return;
    }
    p->sections[p->n_sections] = fn;
    p->section_sources[p->n_sections++] = source;
}

size_t process_format_access(void *policy_engine, const struct log_access_entry *e, char *buf,
                             size_t cap)
{
    struct policy_engine *policy = policy_engine;
    size_t n;
    /* The C twin runs while the hook in force is the shipped one byte for byte; an edited
     * default or a drop-in runs as Lua. */
    if (policy != NULL && policy_has_hook(policy, POLICY_HOOK_FORMAT_LOG) &&
        !policy_hook_is_shipped(policy, POLICY_HOOK_FORMAT_LOG) &&
        policy_format_log(policy, e, buf, cap, &n) == 0)
        return n;
    return log_format_access(e, buf, cap);
}

void process_render_loop_metrics(const void *proc, struct textbuf *out)
{
    const struct process *p = proc;
    char loop[16];
    if (p->server == NULL) return; /* (drained) */
    snprintf(loop, sizeof(loop), "%u", p->index);
    metrics_help(out, "content_cache_loop_connections", "gauge",
                 "Client connections open, by loop (workers: how the kernel spreads them).");
    metrics_labelled(out, "content_cache_loop_connections", "loop", loop,
                     http_server_connections(p->server));
    metrics_help(out, "content_cache_loop_requests_total", "counter",
                 "Requests answered, by loop (their sum is content_cache_http_requests_total's).");
    metrics_labelled(out, "content_cache_loop_requests_total", "loop", loop,
                     http_server_requests(p->server));
}

void process_observe(void *unused, const struct log_access_entry *e)
{
    debug_observe(e);
}

static void all_stopped(struct process *p);
static void gather_answer(struct process *p, bool render);
static void gather_finish(struct process_group *g);

/* The server has drained: the mode closes its own, then the scaffold's handles go. Loop
 * 0 waits for every worker's loop to end first: its services (the budget) serve them. */
static void server_stopped(void *arg)
{
    struct process *p = arg;
    struct process_group *g = p->index == 0 ? p->group : NULL;
    p->server = NULL;
    if (g != NULL && atomic_load(&g->n_ended) < g->started) {
        g->drained = true;
        return;
    }
    all_stopped(p);
}

/* On loop 0: a worker's loop ended; the last one lets loop 0 stop when it has drained. */
static void worker_ended(uv_async_t *h)
{
    struct process *p = h->data;
    struct process_group *g = p->group;
    if (g->drained && atomic_load(&g->n_ended) == g->started) {
        g->drained = false;
        all_stopped(p);
    }
}

static void all_stopped(struct process *p)
{
    if (p->index == 0 && p->group != NULL) {
        gather_finish(p->group); /* (every worker answered: they have all ended) */
        uv_close((uv_handle_t *)&p->group->ended, NULL);
        uv_close((uv_handle_t *)&p->group->gathered, NULL);
    }
    log_access_set_buffered(false); /* the flush handles close below; lines still come */
    p->server = NULL;
    if (p->on_stopped != NULL) p->on_stopped(p->ud);
    debug_stop(p->debug);
    p->debug = NULL;
    if (p->index > 0) {
        struct process_group *g = p->group;
        uv_mutex_lock(&g->control_lock);
        p->control_closed = true;
        uv_close((uv_handle_t *)&p->control, NULL);
        unsigned asked = atomic_exchange(&p->asked, 0);
        uv_mutex_unlock(&g->control_lock);
        if (asked & ASK_GATHER) gather_answer(p, false);
    } else {
        uv_close((uv_handle_t *)&p->sig_term, NULL);
        uv_close((uv_handle_t *)&p->sig_int, NULL);
        uv_close((uv_handle_t *)&p->sig_hup, NULL);
    }
    uv_close((uv_handle_t *)&p->log_prepare, NULL);
    uv_close((uv_handle_t *)&p->log_check, NULL);
}

static void flush_before_poll(uv_prepare_t *h)
{
    log_access_flush();
}

static void flush_after_io(uv_check_t *h)
{
    log_access_flush();
}

/* Asks every worker still running for `what` (ASK_*): it acts on it on its own loop.
 * For a gather, each one asked counts in gather_pending. */
static void ask_workers(struct process *p, unsigned what)
{
    struct process_group *g = p->group;
    if (g == NULL) return;
    uv_mutex_lock(&g->control_lock);
    for (unsigned i = 1; i < g->started + 1; i++) {
        struct process *w = &g->loops[i];
        if (w->control_closed) continue;
        if (what & ASK_GATHER) atomic_fetch_add(&g->gather_pending, 1);
        atomic_fetch_or(&w->asked, what);
        uv_async_send(&w->control);
    }
    uv_mutex_unlock(&g->control_lock);
}

/* A worker's part of a gather: its sections (or nothing, when it is stopping). */
static void gather_answer(struct process *p, bool render)
{
    struct process_group *g = p->group;
    g->text_len[p->index] = 0;
    if (render && g->texts[p->index] == NULL) g->texts[p->index] = malloc(PROCESS_METRICS_MAX);
    if (render && g->texts[p->index] != NULL && p->server != NULL) {
        struct textbuf out;
        textbuf_init(&out, g->texts[p->index], PROCESS_METRICS_MAX);
        for (size_t i = 0; i < p->n_sections; i++)
            p->sections[i](p->section_sources[i], &out);
        g->text_len[p->index] = out.len;
    }
    if (atomic_fetch_sub(&g->gather_pending, 1) == 1) uv_async_send(&g->gathered);
}

/* On loop 0: every worker answered; their sum goes to the scrape. */
static void gather_finish(struct process_group *g)
{
    if (!g->gathering) return;
    g->gathering = false;
    (void)atomic_load(&g->gather_pending); /* (after the workers' texts: they were written
                                              before their decrement) */
    char *buf = malloc(PROCESS_METRICS_MAX);
    struct textbuf total = {buf, PROCESS_METRICS_MAX, 0, false};
    if (buf != NULL) buf[0] = '\0';
    for (unsigned i = 1; buf != NULL && i < g->started + 1; i++)
        if (g->text_len[i] > 0) metrics_sum_into(&total, g->texts[i], g->text_len[i]);
    g->gather_done(g->gather_arg, buf != NULL ? buf : "", total.len);
    free(buf);
}

static void on_gathered(uv_async_t *h)
{
    gather_finish(h->data);
}

void process_gather(void *ud, debug_gathered_fn done, void *arg)
{
    struct process *p = ud;
    struct process_group *g = p->group;
    if (g == NULL || g->gathering) {
        done(arg, "", 0);
        return;
    }
    g->gathering = true;
    g->gather_done = done;
    g->gather_arg = arg;
    atomic_store(&g->gather_pending, 1); /* ours, until every worker is asked */
    ask_workers(p, ASK_GATHER);
    if (atomic_fetch_sub(&g->gather_pending, 1) == 1) gather_finish(g);
}

static void drain(struct process *p)
{
    p->stopping = true;
    unsigned drain_ms = (unsigned)(p->cfg->http_draintimeout_ns / 1000000ULL);
    http_server_shutdown(p->server, drain_ms, server_stopped, p);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    struct process *p = h->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (p->stopping) {
        log_msg(LOG_WARN, "second %s: stopping now", name);
        if (p->group == NULL) exit(0);
        /* Other loops run on their threads: exit's clean-up would pull things from under
         * them. This thread's access lines go out; the rest stop where they are. */
        log_access_flush();
        _exit(0);
    }
    unsigned drain_ms = (unsigned)(p->cfg->http_draintimeout_ns / 1000000ULL);
    log_msg(LOG_INFO, "%s received: draining %u loop%s (up to %ums), then stopping", name,
            process_loops(p), process_loops(p) > 1 ? "s" : "", drain_ms);
    ask_workers(p, ASK_STOP);
    drain(p);
}

static void on_hup(uv_signal_t *h, int signum)
{
    struct process *p = h->data;
    if (p->on_reload != NULL) p->on_reload(p->ud);
    ask_workers(p, ASK_RELOAD);
}

/* A worker's: what loop 0 asked. */
static void on_control(uv_async_t *h)
{
    struct process *p = h->data;
    unsigned asked = atomic_exchange(&p->asked, 0);
    if (asked & ASK_GATHER) gather_answer(p, true);
    if ((asked & ASK_RELOAD) && p->on_reload != NULL && !p->stopping) p->on_reload(p->ud);
    if ((asked & ASK_STOP) && !p->stopping) drain(p);
}

static void worker_main(void *arg)
{
    struct process *p = arg;
    struct process_group *g = p->group;
    p->start_rc = g->mode.build(p, g->mode.ud);
    uv_sem_post(&g->ready);
    if (p->start_rc == 0)
        process_run(p);
    else
        uv_close((uv_handle_t *)&p->control, NULL);
    uv_run(p->loop, UV_RUN_DEFAULT); /* (what a failed build left closing) */
    g->mode.finish(p);
    uv_loop_close(p->loop);
    atomic_fetch_add(&g->n_ended, 1);
    uv_async_send(&g->ended);
}

int process_start_workers(struct process *p, unsigned n, const struct process_mode *mode)
{
    if (n <= 1) return 0;
    struct process_group *g = calloc(1, sizeof(*g));
    if (g != NULL) {
        g->loops = calloc(n, sizeof(*g->loops));
        g->threads = calloc(n, sizeof(*g->threads));
        g->texts = calloc(n, sizeof(*g->texts));
        g->text_len = calloc(n, sizeof(*g->text_len));
    }
    if (g == NULL || g->loops == NULL || g->threads == NULL || g->texts == NULL ||
        g->text_len == NULL || uv_sem_init(&g->ready, 0) != 0 ||
        uv_mutex_init(&g->control_lock) != 0) {
        log_msg(LOG_ERROR, "out of memory at start");
        return PROCESS_EXIT_RUNTIME;
    }
    g->n = n;
    g->mode = *mode;
    p->group = g;
    uv_async_init(p->loop, &g->ended, worker_ended);
    g->ended.data = p;
    uv_unref((uv_handle_t *)&g->ended);
    uv_async_init(p->loop, &g->gathered, on_gathered);
    g->gathered.data = g;
    uv_unref((uv_handle_t *)&g->gathered);
    for (unsigned i = 1; i < n; i++) {
        struct process *w = &g->loops[i];
        w->cfg = p->cfg;
        w->index = i;
        w->group = g;
        w->reuseport = true;
        w->listen_addr = http_server_address(p->server);
        w->connections = &p->connections_open; /* max_connections is the process's */
        w->server_tls = p->server_tls;
        int rc = uv_loop_init(&w->own_loop);
        w->loop = &w->own_loop;
        if (rc == 0) rc = uv_async_init(w->loop, &w->control, on_control);
        w->control.data = w;
        if (rc == 0) rc = uv_thread_create(&g->threads[i], worker_main, w);
        if (rc != 0) {
            log_msg(LOG_ERROR, "cannot start worker loop %u: %s", i, uv_strerror(rc));
            return PROCESS_EXIT_RUNTIME;
        }
        g->started++;
        uv_sem_wait(&g->ready);
        if (w->start_rc != 0) return w->start_rc;
    }
    log_msg(LOG_INFO, "%u loops serve on %s (workers: %u)", n, http_server_address(p->server), n);
    return 0;
}

unsigned process_loops(const struct process *p)
{
    return p->group != NULL ? p->group->n : 1;
}

struct process *process_loop(struct process *p, unsigned i)
{
    return i == 0 ? p : &p->group->loops[i];
}

void process_run(struct process *p)
{
    if (p->index == 0) { /* the signals are loop 0's; a worker hears loop 0 (on_control) */
        uv_signal_init(p->loop, &p->sig_term);
        uv_signal_init(p->loop, &p->sig_int);
        uv_signal_init(p->loop, &p->sig_hup);
        p->sig_term.data = p->sig_int.data = p->sig_hup.data = p;
        uv_signal_start(&p->sig_term, on_stop_signal, SIGTERM);
        uv_signal_start(&p->sig_int, on_stop_signal, SIGINT);
        uv_signal_start(&p->sig_hup, on_hup, SIGHUP);
    }

    uv_prepare_init(p->loop, &p->log_prepare);
    uv_check_init(p->loop, &p->log_check);
    uv_prepare_start(&p->log_prepare, flush_before_poll);
    uv_check_start(&p->log_check, flush_after_io);
    uv_unref((uv_handle_t *)&p->log_prepare);
    uv_unref((uv_handle_t *)&p->log_check);
    log_access_set_buffered(true);

    uv_run(p->loop, UV_RUN_DEFAULT);
    log_access_set_buffered(false);
    if (p->index > 0) return;
    struct process_group *g = p->group;
    for (unsigned i = 1; g != NULL && i < g->started + 1; i++)
        uv_thread_join(&g->threads[i]);
    tls_config_free(p->server_tls); /* every worker has ended */
    p->server_tls = NULL;
    if (g != NULL) {
        uv_sem_destroy(&g->ready);
        uv_mutex_destroy(&g->control_lock);
        for (unsigned i = 0; i < g->n; i++)
            free(g->texts[i]);
        free(g->texts);
        free(g->text_len);
        free(g->threads);
        free(g->loops);
        free(g);
        p->group = NULL;
    }
    log_msg(LOG_INFO, "stopped");
}
