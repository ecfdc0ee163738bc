/*
 * url.h: parsing of the absolute http(s) URLs that name upstreams.
 *
 * Accepted: scheme "http" or "https" (case-insensitive), a host (a name, an IPv4
 * address, or an IPv6 address in brackets), an optional port 1..65535, an optional
 * path prefix. Refused: anything else, including userinfo ("user@host"), a query, a
 * fragment, spaces and control characters, an empty host.
 */
#ifndef CC_URL_H
#define CC_URL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct url {
    bool tls;       /* https */
    char host[256]; /* without brackets for IPv6 */
    uint16_t port;  /* explicit, or 80 / 443 by scheme */
    bool port_explicit;
    char path[1024]; /* "" or a prefix starting with '/', without a trailing '/' */
};

/*
 * Parses `text` into *out. Returns 0, or -EINVAL with a short reason in *why (a static
 * string, e.g. "missing scheme: expected http:// or https://").
 */
int url_parse(const char *text, struct url *out, const char **why);

/*
 * Writes "scheme://host[:port]" (the origin: brackets for IPv6, the port only when it
 * is not the scheme's default) into buf. Returns the length, or -ENOSPC.
 */
int url_format_origin(const struct url *u, char *buf, size_t len);

#endif
