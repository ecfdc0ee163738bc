/*
 * fakenet.h: a hermetic network for the tests that talk TCP (the unit tests and the fuzz
 * targets; the library cc_test_support).
 *
 * Interposition: a binary linked with this file defines connect(2) and getaddrinfo(3)
 * itself, so that whatever host a test or a fuzz input names (a redirect's Location, an
 * upstream URL), no byte ever leaves the process and no DNS query is made:
 *   - getaddrinfo resolves every name to 127.0.0.1;
 *   - connect to 127.0.0.1 on an allowed port (fakenet_allow) goes through;
 *   - any other IPv4 connect goes to 127.0.0.1 on the redirect port when one is set
 *     (fakenet_redirect), else fails at once with ECONNREFUSED, as does every IPv6 one.
 * Only stream and datagram sockets of the inet families are affected.
 *
 * The scripted peer (fakenet_server) and client (fakenet_client) run on the harness's
 * libuv loop. Both send their bytes in slices of `chunk` bytes (0: all at once), one slice
 * per loop iteration, so that the other side's parser sees them in separate reads.
 * Everything runs on the loop thread; a function that fails returns a negative libuv
 * error and calls no callback.
 */
#ifndef CC_TEST_FAKENET_H
#define CC_TEST_FAKENET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Lets connections to 127.0.0.1:port through (at most FAKENET_MAX_ALLOWED at once), or no
 * longer. */
#define FAKENET_MAX_ALLOWED 64
void fakenet_allow(uint16_t port);
void fakenet_disallow(uint16_t port);
void fakenet_redirect(uint16_t port);

/* --- The scripted server ---------------------------------------------------------- */

/*
 * A reply: data[0..len), sent in slices of `chunk`. A reply shorter than the length its
 * head announces is a body cut short (the client sees the connection end first).
 */
struct fakenet_reply {
    const char *data; /* must stay valid until the connection is closed */
    size_t len;
    size_t chunk; /* slice size, 0: one write */
    /*
     * After the reply the connection waits for the next request head, as a keep-alive
     * server does, instead of ending. Only for a reply that ends where its head says.
     */
    bool keep_alive;
    /*
     * Not 0: the reply stops after its first stall_at bytes (all of them when stall_at >=
     * len; with len 0, a request never answered), and the connection stays open without
     * a byte more until fakenet_server_resume, which sends the rest and ends the reply as
     * usual. The client closing its side ends it at once.
     */
    size_t stall_at;
};

/*
 * Called for each request with its head (everything up to and including the first CRLF
 * CRLF, or the first 16 KiB when none came; a client that ends its side before a whole
 * head gets a reply to what it sent, also to nothing on a new connection), to choose the
 * reply. The head is valid
 * during the call only. The bytes after a head (a body) are taken as the start of the
 * next request. After a reply without keep_alive the server shuts its side down, reads
 * and discards until the client closes, and closes the connection.
 */
typedef void (*fakenet_answer_fn)(void *ud, const char *head, size_t len,
                                  struct fakenet_reply *out);

/* Copies the request line of a head (up to its CR, cut to fit) into out, NUL-terminated. */
void fakenet_request_line(const char *head, size_t len, char *out, size_t cap);

struct fakenet_server;

/*
 * Listens on 127.0.0.1 on a free port (added to the allowed ports). The listener does not
 * keep the loop alive (uv_unref): uv_run returns when the connections are done.
 */
int fakenet_server_start(uv_loop_t *loop, fakenet_answer_fn answer, void *ud,
                         struct fakenet_server **out);
uint16_t fakenet_server_port(const struct fakenet_server *s);
/* Connections open now. */
unsigned fakenet_server_connections(const struct fakenet_server *s);
/* Connections accepted, and requests answered, since the start. */
unsigned fakenet_server_accepted(const struct fakenet_server *s);
unsigned fakenet_server_requests(const struct fakenet_server *s);
/* Every reply that stalled, or will at its stall_at, goes on (later replies stall as
 * scripted). */
void fakenet_server_resume(struct fakenet_server *s);
/*
 * Closes the listener and every connection (a reply still going is cut), disallows the
 * port, and frees the server once its handles are closed (the loop must run for that).
 */
void fakenet_server_stop(struct fakenet_server *s);

/* --- The scripted client ---------------------------------------------------------- */

#define FAKENET_CLIENT_KEEP 16384

struct fakenet_client_stats {
    bool connected;
    bool done; /* the connection is closed */
    size_t bytes_written;
    size_t bytes_read;
    char response[FAKENET_CLIENT_KEEP]; /* the first bytes read, NUL-terminated */
};

/*
 * Connects to 127.0.0.1:port, sends data[0..len) in slices of `chunk` (0: one write),
 * shuts its side down, reads until the server closes, then closes. `data` must stay
 * valid until stats->done. stats (the caller's) is updated as it goes; stats->done
 * becomes true once the connection is closed, also after a failed start.
 */
int fakenet_client_run(uv_loop_t *loop, uint16_t port, const char *data, size_t len, size_t chunk,
                       struct fakenet_client_stats *stats);

/* --- Waiting ------------------------------------------------------------------------ */

/*
 * Runs the loop until done(arg) is true, at most timeout_ms. done is asked after every
 * turn of the loop, and a timer of its own turns it every 10 ms, so a condition that only
 * time makes true (a backoff that ends) is seen too. Returns done(arg) at the end.
 */
bool fakenet_run_until(uv_loop_t *loop, bool (*done)(void *arg), void *arg, unsigned timeout_ms);

#endif
