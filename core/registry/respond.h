/*
 * respond.h: answering a client with the registry's JSON error body.
 *
 * Every error the cache (and the relay, and the blob handler) sends goes through here, so
 * each has the shape Docker Distribution gives it:
 *   {"errors":[{"code":"BLOB_UNKNOWN","message":"...","detail":...}]}
 * with the status of its code (registry.h), Content-Type application/json and, for
 * UNSUPPORTED, an Allow header. The message is also the access-log line's error field.
 */
#ifndef CC_RESPOND_H
#define CC_RESPOND_H

#include <stddef.h>

#include "base/http_types.h"
#include "net/server.h"
#include "registry/registry.h"

/*
 * Answers x with the error body of `code` and ends the exchange. message (NULL: the
 * code's own) and detail (NULL: null) are copied into the body.
 */
void respond_error(struct http_exchange *x, enum registry_error_code code, const char *message,
                   const char *detail);

/*
 * The same with up to 5 extra headers (copied; e.g. WWW-Authenticate) and, when
 * status > 0, another status than the code's.
 */
void respond_error_with(struct http_exchange *x, enum registry_error_code code, int status,
                        const struct http_header *extra, size_t n_extra, const char *message,
                        const char *detail);

#endif
