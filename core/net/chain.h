/*
 * chain.h: one request to the first upstream that answers, out of an ordered list of
 * base URLs (the upstream caches of a chain, then the origin).
 *
 * A base is skipped, and the next one tried, when it cannot be reached or fails
 * before its response head (connect refused, timeout, malformed response) or answers
 * 5xx; the consumer sees only the head of the base that answered (or, when every base
 * failed, the last failure). Once a head has been handed over there is no failover:
 * the bytes of a body cannot be taken back. The callbacks and their rules are those
 * of upstream.h.
 *
 * A request with a body (a push) is sent to the first base only, without failover (its
 * body cannot be sent again): with it, a failure or a 5xx is the answer.
 *
 * Threads: a request lives on its pool's loop. What is known of each base (backoff,
 * counters, the last answer) is one table for the whole process, guarded by a mutex in
 * chain.c, so every loop (workers) sees the same backoff and /metrics the same totals.
 */
#ifndef CC_CHAIN_H
#define CC_CHAIN_H

#include "base/metrics.h"
#include "net/upstream.h"

struct chain_req;

struct chain_spec {
    const char *method;       /* "GET" or "HEAD" */
    const char *const *bases; /* "scheme://host:port[/prefix]", tried in order; copied */
    size_t n_bases;
    const char *target;                    /* "/v2/...[?query]"; copied */
    const struct upstream_header *headers; /* copied */
    size_t n_headers;
    int max_redirects;
    bool has_body;       /* a request body follows (chain_send_body), upstream.h's */
    int64_t body_length; /* its length, -1: chunked */
};

/*
 * A base that failed (unreachable, or 5xx) is tried after the others for a backoff time
 * (1 s, doubling per failure up to 30 s) and logged; its first good answer clears it.
 * True while `base` is backing off.
 */
bool chain_backing_off(const char *base);

/* Per upstream base, since start (for metrics and health). */
#define CHAIN_LATENCY_BUCKETS 10
extern const double chain_latency_buckets[CHAIN_LATENCY_BUCKETS]; /* seconds, upper bounds */
struct chain_host_stats {
    uint64_t requests;    /* attempts started */
    uint64_t errors;      /* attempts that failed (unreachable, broken, 5xx) */
    uint64_t bytes;       /* body bytes received */
    double latency_sum_s; /* time to the response head */
    uint64_t latency_count;
    uint64_t latency_buckets[CHAIN_LATENCY_BUCKETS]; /* cumulative: <= bucket bound */
    uint64_t last_ok_ms; /* monotonic ms of the last answer that was not a 5xx */
};
void chain_hosts_foreach(void (*fn)(void *ud, const char *base, const struct chain_host_stats *st),
                         void *ud);
/* Monotonic ms (uv_hrtime based) of the last non-5xx answer of any upstream, 0: never. */
uint64_t chain_last_answer_ms(void);

/* A metrics_render_fn (source unused): requests, errors, bytes and the response-time
 * histogram of every upstream host. */
void chain_render_metrics(const void *unused, struct textbuf *out);

/* Starts the request. Returns 0 (callbacks will come) or a negative error (none will). */
int chain_request(struct upstream_pool *pool, const struct chain_spec *spec,
                  const struct upstream_callbacks *cbs, void *ud, struct chain_req **out);

/* upstream_send_body and upstream_end_body of the attempt under way (UV_ECANCELED when
 * none is). */
int chain_send_body(struct chain_req *req, const char *data, size_t len, upstream_body_cb cb,
                    void *arg);
int chain_end_body(struct chain_req *req);

void chain_pause(struct chain_req *req);
void chain_resume(struct chain_req *req);
/* No callback after this. Safe from inside on_head and on_body; a no-op from inside
 * on_done (the request is freed when on_done returns), as upstream_cancel. */
void chain_cancel(struct chain_req *req);

/* The base URL that answered (or was tried last), valid until on_done returns. */
const char *chain_base(const struct chain_req *req);
/* A sentence naming the failure of the last base tried, valid until on_done returns. */
const char *chain_error_message(const struct chain_req *req);

#endif
