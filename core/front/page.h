/*
 * page.h: the front's profile page (the document's "user profile page"): a small HTML
 * page with its script and style sheet (core/front/ui/, built into the binary), which
 * signs in with registry credentials, lists the registered caches, lets the user choose
 * one or none, and lets admins register and remove caches, all through the caches API
 * (caches_api.h). No external asset: everything is served from here.
 *
 *   GET /              the page (also /index.html)
 *   GET /ui/app.js     its script
 *   GET /ui/app.css    its style sheet
 *
 * Responses carry a Content-Security-Policy that allows only these and the API, and
 * forbid framing. HEAD is answered too; other methods are 405.
 */
#ifndef CC_FRONT_PAGE_H
#define CC_FRONT_PAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "net/server.h"

/* True for a path the page serves (path[0..len), as http_req_path gives it). */
bool page_path(const char *path, size_t len);

/* Answers x (a request for a page_path) and ends the exchange. */
void page_handle(struct http_exchange *x);

#endif
