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

void fakenet_allow(uint16_t port);
void fakenet_redirect(uint16_t port);

/* --- The scripted server ---------------------------------------------------------- */

struct fakenet_reply {
    const char *data; /* must stay valid until the connection is closed */
    size_t len;
    size_t chunk; /* slice size, 0: one write */
};

/*
 * Called once per connection with the request head (everything up to and including the
 * first CRLF CRLF, or the first 16 KiB when none came), to choose the reply. After the
 * reply the server shuts its side down, reads and discards until the client closes, and
 * closes the connection.
 */
typedef void (*fakenet_answer_fn)(void *ud, const char *head, size_t len,
                                  struct fakenet_reply *out);

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

/* --- The scripted client ---------------------------------------------------------- */

struct fakenet_client_stats {
    bool connected;
    bool done; /* the connection is closed */
    size_t bytes_written;
    size_t bytes_read;
    char first_bytes[32]; /* the first bytes read, NUL-terminated */
};

/*
 * Connects to 127.0.0.1:port, sends data[0..len) in slices of `chunk` (0: one write),
 * shuts its side down, reads until the server closes, then closes. `data` must stay
 * valid until stats->done. stats (the caller's) is updated as it goes; stats->done
 * becomes true once the connection is closed, also after a failed start.
 */
int fakenet_client_run(uv_loop_t *loop, uint16_t port, const char *data, size_t len, size_t chunk,
                       struct fakenet_client_stats *stats);

#endif
