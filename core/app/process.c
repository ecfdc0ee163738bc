/*
 * process.c: the serving scaffold the cache and the front share. See process.h.
 */
#include "app/process.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "net/tls.h"

#define PROCESS_MAX_EXTRA_HEADERS 64

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
    };
    if (cfg->http_tls_certificate != NULL &&
        tls_server_config_new(cfg->http_tls_certificate, cfg->http_tls_key,
                              cfg->http_tls_minimumtls, &opts.tls, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "http.tls: %s", err);
        return -EINVAL;
    }
    int rc = http_server_listen(p->loop, cfg->http_addr, &opts, &p->server, err, sizeof(err));
    tls_config_free(opts.tls); /* the server holds its own reference */
    if (rc != 0) {
        log_msg(LOG_ERROR, "%s", err);
        p->server = NULL;
        uv_run(p->loop, UV_RUN_DEFAULT); /* the listener's close */
        return rc;
    }
    log_msg(LOG_INFO, "content-cache %s listening on %s (%s)", CC_VERSION,
            http_server_address(p->server), cfg->http_tls_certificate ? "https" : "http");
    return 0;
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
    return 0;
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

void process_observe(void *unused, const struct log_access_entry *e)
{
    debug_observe(e);
}

/* The server has drained: the mode closes its own, then the scaffold's handles go. */
static void server_stopped(void *arg)
{
    struct process *p = arg;
    log_access_set_buffered(false); /* the flush handles close below; lines still come */
    p->server = NULL;
    if (p->on_stopped != NULL) p->on_stopped(p->ud);
    debug_stop(p->debug);
    p->debug = NULL;
    uv_close((uv_handle_t *)&p->sig_term, NULL);
    uv_close((uv_handle_t *)&p->sig_int, NULL);
    uv_close((uv_handle_t *)&p->sig_hup, NULL);
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

static void on_stop_signal(uv_signal_t *h, int signum)
{
    struct process *p = h->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (p->stopping) {
        log_msg(LOG_WARN, "second %s: stopping now", name);
        exit(0);
    }
    p->stopping = true;
    unsigned drain_ms = (unsigned)(p->cfg->http_draintimeout_ns / 1000000ULL);
    log_msg(LOG_INFO, "%s received: draining (up to %ums), then stopping", name, drain_ms);
    http_server_shutdown(p->server, drain_ms, server_stopped, p);
}

static void on_hup(uv_signal_t *h, int signum)
{
    struct process *p = h->data;
    if (p->on_reload != NULL) p->on_reload(p->ud);
}

void process_run(struct process *p)
{
    uv_signal_init(p->loop, &p->sig_term);
    uv_signal_init(p->loop, &p->sig_int);
    uv_signal_init(p->loop, &p->sig_hup);
    p->sig_term.data = p->sig_int.data = p->sig_hup.data = p;
    uv_signal_start(&p->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&p->sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&p->sig_hup, on_hup, SIGHUP);

    uv_prepare_init(p->loop, &p->log_prepare);
    uv_check_init(p->loop, &p->log_check);
    uv_prepare_start(&p->log_prepare, flush_before_poll);
    uv_check_start(&p->log_check, flush_after_io);
    uv_unref((uv_handle_t *)&p->log_prepare);
    uv_unref((uv_handle_t *)&p->log_check);
    log_access_set_buffered(true);

    uv_run(p->loop, UV_RUN_DEFAULT);
    log_access_set_buffered(false);
    log_msg(LOG_INFO, "stopped");
}
