/*
 * process.h: what every serving mode of the binary does around its request handler.
 *
 * The cache (main.c) and the front (front.c) serve different requests from the same
 * config format; this module does what they share, once: the upstream connection pool
 * with the config's TLS trust (cas) and timeouts, the listener with the config's http.*
 * settings (address, TLS, headers added to every response), the debug server
 * (http.debug.addr), the signals (SIGTERM and SIGINT drain for http.draintimeout and
 * stop, a second one stops at once; SIGHUP calls the mode's reload) and the access log's
 * flush before the loop waits.
 *
 * Everything runs on the loop's thread. A function that fails logs why and returns a
 * negative error; nothing it started needs undoing but by process_run's end.
 */
#ifndef CC_PROCESS_H
#define CC_PROCESS_H

#include <stdbool.h>
#include <uv.h>

#include "app/debug.h"
#include "base/config.h"
#include "base/log.h"
#include "lua/policy.h"
#include "net/server.h"
#include "net/upstream.h"

/* Exit codes of a serving mode (main.c's usage text explains them all). */
enum process_exit {
    PROCESS_EXIT_OK = 0,      /* a clean stop */
    PROCESS_EXIT_CONFIG = 1,  /* the configuration is invalid */
    PROCESS_EXIT_RUNTIME = 3, /* could not start serving */
};

struct process {
    uv_loop_t *loop;
    const struct config *cfg;
    struct http_server *server;
    struct debug *debug; /* NULL without http.debug.addr */
    /* The mode's callbacks (any may be NULL), with ud: */
    void (*on_reload)(void *ud);  /* SIGHUP */
    void (*on_stopped)(void *ud); /* the server has drained: close what keeps the loop */
    void *ud;
    /* process.c's own. */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_prepare_t log_prepare;
    uv_check_t log_check;
    bool stopping;
};

/* Sets up p for cfg on the default loop (nothing is started yet). */
void process_init(struct process *p, const struct config *cfg);

/*
 * An upstream pool with the system's CAs and cfg's cas, and cfg's upstream timeouts.
 * Returns 0 and the pool in *out, or -EINVAL (a CA that does not load, logged) or
 * -ENOMEM.
 */
int process_pool(struct process *p, struct upstream_pool **out);

/*
 * Listens on http.addr (https with http.tls) with http.headers added to every response;
 * every request goes to on_request(x, ud). format_access and on_complete are the
 * server's (http_server_opts). Returns 0, or -EINVAL (the TLS files) or the listen error,
 * logged.
 */
int process_listen(struct process *p, http_request_cb on_request, void *ud,
                   size_t (*format_access)(void *ud, const struct log_access_entry *e, char *buf,
                                           size_t cap),
                   void (*on_complete)(void *ud, const struct log_access_entry *e),
                   void *format_ud);

/* Starts the debug server when http.debug.addr is set (p->debug). Returns 0 or the error,
 * logged. */
int process_debug(struct process *p);

/*
 * The access log's line of an entry: the policies' format_log (ud is the struct
 * policy_engine), in C while the hook in force is the shipped one byte for byte
 * (policy_hook_is_shipped), else as Lua.
 */
size_t process_format_access(void *policy_engine, const struct log_access_entry *e, char *buf,
                             size_t cap);

/* Counts a finished request for /metrics (debug_observe). */
void process_observe(void *unused, const struct log_access_entry *e);

/* Runs the loop until a stop signal has drained the server and every handle is closed. */
void process_run(struct process *p);

#endif
