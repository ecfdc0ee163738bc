/*
 * url.c: parsing of the absolute http(s) URLs that name upstreams (see url.h).
 *
 * The accepted form is deliberately narrow: scheme "://" host [":" port] [path]. A URL
 * with anything that this cache would have to interpret or drop (credentials, a query,
 * a fragment, spaces) is refused rather than half-understood.
 */
#include "base/url.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A path byte: RFC 3986 pchar (unreserved, sub-delims, ':', '@') or '/'; '%' is checked
 * apart, as it must start a "%XX" escape. */
static bool is_path_char(char c)
{
    return is_alnum(c) || (c != '\0' && strchr("-._~!$&'()*+,;=:@/", c) != NULL);
}

/*
 * Checks a host name: labels of letters, digits, '-' and '_' separated by single dots,
 * no label starting or ending with '-', an optional trailing dot. IPv4 addresses pass
 * as names made of digits. Returns NULL when valid, else the reason.
 */
static const char *check_host_name(const char *host, size_t len)
{
    size_t label_len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        if (c == '.') {
            if (label_len == 0) return "bad host name: empty label";
            if (host[i - 1] == '-') return "bad host name: a label ends with '-'";
            label_len = 0;
        } else if (is_alnum(c) || c == '_' || c == '-') {
            if (c == '-' && label_len == 0) return "bad host name: a label starts with '-'";
            if (++label_len > 63) return "bad host name: a label is longer than 63 characters";
        } else {
            return "bad host name: only letters, digits, '-', '_' and '.' are allowed";
        }
    }
    if (len > 0 && host[len - 1] == '-') return "bad host name: a label ends with '-'";
    if (strspn(host, "0123456789.") == len) { /* all digits: must be an IPv4 address */
        char addr[16];
        struct in_addr bin;
        if (len >= sizeof(addr)) return "bad IPv4 address";
        memcpy(addr, host, len);
        addr[len] = '\0';
        if (inet_pton(AF_INET, addr, &bin) != 1) return "bad IPv4 address";
    }
    return NULL;
}

static int fail(const char **why, const char *reason)
{
    if (why) *why = reason;
    return -EINVAL;
}

int url_parse(const char *text, struct url *out, const char **why)
{
    if (text == NULL) return fail(why, "empty URL");
    memset(out, 0, sizeof(*out));

    for (const char *p = text; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f)
            return fail(why, "spaces, control and non-ASCII characters are not allowed");
    }
    if (*text == '\0') return fail(why, "empty URL");

    const char *sep = strstr(text, "://");
    if (sep == NULL) return fail(why, "missing scheme: expected http:// or https://");
    size_t scheme_len = (size_t)(sep - text);
    if (scheme_len == 4 && strncasecmp(text, "http", 4) == 0) {
        out->tls = false;
        out->port = 80;
    } else if (scheme_len == 5 && strncasecmp(text, "https", 5) == 0) {
        out->tls = true;
        out->port = 443;
    } else {
        return fail(why, "unsupported scheme: expected http:// or https://");
    }

    const char *authority = sep + 3;
    size_t authority_len = strcspn(authority, "/?#");
    const char *rest = authority + authority_len;
    if (memchr(authority, '@', authority_len) != NULL)
        return fail(why, "user information (user@host) is not allowed");

    /* The host, and where the optional ":port" starts. */
    const char *host;
    size_t host_len;
    const char *port_part;
    if (authority_len > 0 && authority[0] == '[') {
        const char *close = memchr(authority, ']', authority_len);
        if (close == NULL) return fail(why, "bad IPv6 address: missing ']'");
        host = authority + 1;
        host_len = (size_t)(close - host);
        char addr[64];
        unsigned char bin[16];
        if (host_len == 0) return fail(why, "empty host");
        if (host_len >= sizeof(addr)) return fail(why, "bad IPv6 address");
        memcpy(addr, host, host_len);
        addr[host_len] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1) return fail(why, "bad IPv6 address");
        port_part = close + 1;
        if (port_part != authority + authority_len && *port_part != ':')
            return fail(why, "bad IPv6 address: unexpected characters after ']'");
    } else {
        host = authority;
        const char *colon = memchr(authority, ':', authority_len);
        host_len = colon ? (size_t)(colon - authority) : authority_len;
        port_part = authority + host_len;
        if (host_len == 0) return fail(why, "empty host");
        const char *reason = check_host_name(host, host_len);
        if (reason) return fail(why, reason);
    }
    if (host_len >= sizeof(out->host)) return fail(why, "host name too long");
    memcpy(out->host, host, host_len);
    out->host[host_len] = '\0';

    if (port_part < authority + authority_len) { /* ":port" */
        const char *digits = port_part + 1;
        size_t n = (size_t)(authority + authority_len - digits);
        if (n == 0 || n > 5) return fail(why, "bad port: expected 1 to 65535");
        unsigned long port = 0;
        for (size_t i = 0; i < n; i++) {
            if (digits[i] < '0' || digits[i] > '9')
                return fail(why, "bad port: expected 1 to 65535");
            port = port * 10 + (unsigned long)(digits[i] - '0');
        }
        if (port == 0 || port > 65535) return fail(why, "bad port: expected 1 to 65535");
        out->port = (uint16_t)port;
        out->port_explicit = true;
    }

    if (*rest == '?') return fail(why, "a query (?...) is not allowed");
    if (*rest == '#') return fail(why, "a fragment (#...) is not allowed");
    size_t path_len = strlen(rest);
    for (size_t i = 0; i < path_len; i++) {
        if (rest[i] == '?') return fail(why, "a query (?...) is not allowed");
        if (rest[i] == '#') return fail(why, "a fragment (#...) is not allowed");
        if (rest[i] == '%') {
            if (i + 2 >= path_len || !is_hex(rest[i + 1]) || !is_hex(rest[i + 2]))
                return fail(why, "bad %-escape in the path");
        } else if (!is_path_char(rest[i])) {
            return fail(why, "bad character in the path");
        }
    }
    while (path_len > 0 && rest[path_len - 1] == '/')
        path_len--;
    if (path_len >= sizeof(out->path)) return fail(why, "path too long");
    memcpy(out->path, rest, path_len);
    out->path[path_len] = '\0';
    return 0;
}

int url_format_origin(const struct url *u, char *buf, size_t len)
{
    const char *scheme = u->tls ? "https" : "http";
    bool ipv6 = strchr(u->host, ':') != NULL;
    bool default_port = u->port == (u->tls ? 443 : 80);
    char port[8] = "";
    if (!default_port) snprintf(port, sizeof(port), ":%u", (unsigned)u->port);
    int n = snprintf(buf, len, "%s://%s%s%s%s", scheme, ipv6 ? "[" : "", u->host, ipv6 ? "]" : "",
                     port);
    if (n < 0 || (size_t)n >= len) return -ENOSPC;
    return n;
}
