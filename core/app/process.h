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
 * Workers (the config's `workers`, several loops in one process): loop 0 runs on the
 * main thread and is the one operators talk to: it takes the signals and serves the
 * debug server. Each further loop runs on a thread of its own with a struct process of
 * its own, its own listener on the same address (SO_REUSEPORT: the kernel spreads the
 * connections) and its own instances of the mode's services, built by the mode's
 * build callback on that thread. Loop 0 tells the others to drain (SIGTERM, SIGINT) and
 * to reload (SIGHUP) through a uv_async_t of each (the only thing touched across
 * threads here, with an atomic word saying what is asked), and process_run on loop 0
 * returns only once every loop has ended and its thread is joined. With workers: 1
 * nothing of this exists: one loop, as before.
 *
 * http.maxconnections bounds the client connections of the process, not of a loop:
 * every loop's server counts its connections in loop 0's `connections_open` (an atomic
 * counter, the one thing of loop 0's struct that other threads write; server.h).
 *
 * Everything else runs on the loop's own thread. A function that fails logs why and
 * returns a negative error; nothing it started needs undoing but by process_run's end.
 */
#ifndef CC_PROCESS_H
#define CC_PROCESS_H

#include <stdatomic.h>
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

struct process_group;

#define PROCESS_LOOP_SECTIONS 12 /* sections of /metrics a loop keeps for itself */

struct process {
    uv_loop_t *loop;
    unsigned index;              /* 0: the main thread's loop; 1..: a worker's */
    struct process_group *group; /* loop 0's, with more than one loop; else NULL */
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
    bool reuseport;                /* listen with SO_REUSEPORT (more than one loop) */
    const char *listen_addr;       /* NULL: cfg->http_addr; a worker's: loop 0's bound address */
    atomic_uint connections_open;  /* loop 0's: client connections open in the process */
    atomic_uint *connections;      /* a worker's: loop 0's connections_open (NULL: ours) */
    struct tls_config *server_tls; /* loop 0's https configuration, which every loop uses
                                      (session tickets resume on any loop): loop 0 holds a
                                      reference, a worker borrows it */
    /* A worker's: its loop, and what loop 0 asks of it. */
    uv_loop_t own_loop;
    uv_async_t control;
    _Atomic unsigned asked;
    int start_rc;
    bool control_closed; /* under the group's lock: loop 0 asks no more */
    /* This loop's own sections of /metrics (process_add_section). */
    metrics_render_fn sections[PROCESS_LOOP_SECTIONS];
    const void *section_sources[PROCESS_LOOP_SECTIONS];
    size_t n_sections;
};

/*
 * The mode's life on a worker's loop, called on the worker's thread: build makes the
 * mode's services on p->loop and listens (process_listen); it sets p->on_reload,
 * p->on_stopped and p->ud as loop 0 does, and returns 0 or the mode's exit code. finish
 * frees what build made, after the loop ended (also when build failed).
 */
struct process_mode {
    int (*build)(struct process *p, void *ud);
    void (*finish)(struct process *p);
    void *ud;
};

/* Sets up p for cfg on the default loop (nothing is started yet): loop 0. */
void process_init(struct process *p, const struct config *cfg);

/*
 * Starts n - 1 more loops after loop 0 listens (n = config_workers, 1: nothing to do),
 * each on its own thread, and waits until each has built its services and listens on
 * loop 0's address. Returns 0, or the first nonzero exit code of mode->build (logged by
 * it): then the process is to exit with it (loops that started are left running).
 */
int process_start_workers(struct process *p, unsigned n, const struct process_mode *mode);

/*
 * A section of /metrics that is this loop's own (not the process's): rendered by loop 0's
 * debug server for loop 0, and by each worker on its own thread when loop 0 gathers them,
 * the loops' series summed (labelled ones kept apart: metrics_sum_into). Added while the
 * loop is built, before process_listen (which adds the server's sections after the
 * mode's); at most PROCESS_LOOP_SECTIONS (more are left out, logged).
 */
void process_add_section(struct process *p, metrics_render_fn fn, const void *source);

/*
 * A gather of debug.h (ud: loop 0's struct process): every worker renders its sections
 * (process_add_section) on its own thread; done gets their sum on loop 0. Without
 * workers, or while another gather is out, done gets nothing at once.
 */
void process_gather(void *ud, debug_gathered_fn done, void *arg);

/* How many loops serve (1 without workers). */
unsigned process_loops(const struct process *p);
/* Loop i's struct process (0: p itself), from loop 0. */
struct process *process_loop(struct process *p, unsigned i);

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

/* Starts the debug server when http.debug.addr is set (p->debug), with the sections both
 * modes show: content_cache_loops, the upstreams' state (the process's), and loop 0's own
 * sections summed with the workers' (process_add_section, process_gather); the mode adds
 * its process-wide sections and health checks after. Returns 0 or the error, logged. */
int process_debug(struct process *p);

/*
 * The access log's line of an entry: the policies' format_log (ud is the struct
 * policy_engine), in C while the hook in force is the shipped one byte for byte
 * (policy_hook_is_shipped), else as Lua.
 */
size_t process_format_access(void *policy_engine, const struct log_access_entry *e, char *buf,
                             size_t cap);

/*
 * A metrics_render_fn over a struct process: this loop's own series, labelled with its
 * index, which the sum over the loops keeps apart (metrics_sum_into):
 * content_cache_loop_connections{loop="N"} (open now) and
 * content_cache_loop_requests_total{loop="N"} (answered). Renders on the loop's thread.
 */
void process_render_loop_metrics(const void *proc, struct textbuf *out);

/* Counts a finished request for /metrics (debug_observe). */
void process_observe(void *unused, const struct log_access_entry *e);

/* Runs the loop until a stop signal has drained the server and every handle is closed;
 * on loop 0, then waits for every worker's loop to end likewise. */
void process_run(struct process *p);

#endif
