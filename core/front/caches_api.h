/*
 * caches_api.h: the front's caches API, JSON over HTTP, as the document's registry has it:
 *
 *   POST   /api/v0/content_caches            {"name", "host"}  201 {"id", "name", "host"}
 *   GET    /api/v0/content_caches                               200 [{"id", "name", "host"}]
 *   GET    /api/v0/content_caches/{id}                          200 {"id", "name", "host"}
 *   DELETE /api/v0/content_caches/{id}                          204
 *   GET    /api/v0/accounts/{user}/settings                     200 {"contentCache": ...}
 *   PUT    /api/v0/accounts/{user}/settings  {"contentCache": "<name>" | null}  200 (same)
 *   GET    /api/v0/accounts/{user}                              200 {"name", "isAdmin"}
 *
 * Who may: POST and DELETE, the config's admins (403 for anyone else); GET of the caches,
 * any signed-in user; an account and its settings, that user or an admin (403
 * otherwise). A client is signed in with HTTP Basic credentials of the origin or a
 * bearer token (identity.h); without, or refused, it gets 401 with `WWW-Authenticate:
 * Basic realm="content-cache front"` (not when it sends CACHES_API_UI_HEADER: the
 * profile page asks for credentials itself, and a challenge would make the browser ask
 * too), and 503 when the origin could not be asked.
 *
 * What is valid: a name is 1 to 64 of [A-Za-z0-9._-] starting with a letter or a digit; a
 * host is an absolute http(s) URL (url.h: no user, query or fragment; a path prefix is
 * kept, a trailing '/' dropped) of at most 512 bytes. A body that is not a JSON object is
 * 400 INVALID_JSON; a field that is missing or not valid is 400 INVALID_PARAMETER naming
 * it ("detail": {"field": "name"}); a body over 64 KiB is 413. A duplicate name is 409; an
 * unknown cache (an id to GET or DELETE) is 404, an unknown one to choose is 400 naming
 * contentCache. Removing a cache leaves the users who had chosen it with none. Errors
 * have the registry's shape: {"errors": [{"code", "message", "detail"}]}.
 *
 * The state is state.h's: a change is answered once it is on disk. Loop thread only.
 */
#ifndef CC_CACHES_API_H
#define CC_CACHES_API_H

#include <stdbool.h>
#include <stddef.h>

#include "base/config.h"
#include "front/identity.h"
#include "front/state.h"
#include "net/server.h"

#define CACHES_API_PREFIX "/api/v0/"
#define CACHES_API_MAX_BODY (64 * 1024)
#define CACHES_API_UI_HEADER "X-Content-Cache-UI"

struct caches_api;

/* cfg (its admins), st and id must outlive the object. NULL when memory runs out. */
struct caches_api *caches_api_new(const struct config *cfg, struct front_state *st,
                                  struct identity *id);
void caches_api_free(struct caches_api *api);

/* True for a path under CACHES_API_PREFIX (path[0..len), as http_req_path gives it). */
bool caches_api_path(const char *path, size_t len);

/* Answers x (a request for a caches_api_path) and ends the exchange. */
void caches_api_handle(struct caches_api *api, struct http_exchange *x);

/* True when user[0..len) is one of the config's admins. */
bool caches_api_is_admin(const struct caches_api *api, const char *user, size_t len);

/* Requests in flight (for tests). */
unsigned caches_api_in_flight(const struct caches_api *api);

/*
 * Checks a cache's name and host as POST does. Returns NULL when both are valid (host
 * normalized into host_out, host_cap bytes), else the field at fault ("name", "host")
 * with a sentence in why.
 */
const char *caches_api_check(const char *name, const char *host, char *host_out, size_t host_cap,
                             char *why, size_t why_len);

#endif
