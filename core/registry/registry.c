/*
 * registry.c: routing of /v2/ paths, the OCI name/tag/digest grammar, and the registry's
 * JSON error bodies. Every function reads only the bytes it is given and allocates
 * nothing.
 */
#include "registry/registry.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "base/json.h"
#include "base/digest.h"

#define NAME_MAX_LEN 255
#define TAG_MAX_LEN 128

/* ---- errors ---------------------------------------------------------------------------- */

static const struct {
    int status;
    const char *name;
    const char *message;
} error_table[] = {
    [REG_ERR_NONE] = {200, "", ""},
    [REG_ERR_NAME_INVALID] = {400, "NAME_INVALID", "invalid repository name"},
    [REG_ERR_TAG_INVALID] = {400, "TAG_INVALID", "manifest tag did not match URI"},
    [REG_ERR_DIGEST_INVALID] = {400, "DIGEST_INVALID",
                                "provided digest did not match uploaded content"},
    [REG_ERR_MANIFEST_INVALID] = {400, "MANIFEST_INVALID", "manifest invalid"},
    [REG_ERR_NAME_UNKNOWN] = {404, "NAME_UNKNOWN", "repository name not known to registry"},
    [REG_ERR_MANIFEST_UNKNOWN] = {404, "MANIFEST_UNKNOWN", "manifest unknown"},
    [REG_ERR_BLOB_UNKNOWN] = {404, "BLOB_UNKNOWN", "blob unknown to registry"},
    [REG_ERR_NOT_FOUND] = {404, "NOT_FOUND", "not found"},
    [REG_ERR_UNAUTHORIZED] = {401, "UNAUTHORIZED", "authentication required"},
    [REG_ERR_DENIED] = {403, "DENIED", "requested access to the resource is denied"},
    [REG_ERR_UNSUPPORTED] = {405, "UNSUPPORTED", "The operation is unsupported."},
    [REG_ERR_RANGE_INVALID] = {416, "RANGE_INVALID", "invalid content range"},
    [REG_ERR_TOOMANYREQUESTS] = {429, "TOOMANYREQUESTS", "too many requests"},
    [REG_ERR_UPSTREAM_FAILED] = {502, "UNKNOWN", "upstream registry failed"},
    [REG_ERR_UNAVAILABLE] = {503, "UNAVAILABLE", "service unavailable"},
    [REG_ERR_INTERNAL] = {500, "UNKNOWN", "unknown error"},
};

static unsigned error_index(enum registry_error_code code)
{
    unsigned i = (unsigned)code;
    return i < sizeof error_table / sizeof error_table[0] ? i : (unsigned)REG_ERR_INTERNAL;
}

int registry_error_status(enum registry_error_code code)
{
    return error_table[error_index(code)].status;
}

const char *registry_error_name(enum registry_error_code code)
{
    return error_table[error_index(code)].name;
}

const char *registry_error_message(enum registry_error_code code)
{
    return error_table[error_index(code)].message;
}

/* ---- grammar --------------------------------------------------------------------------- */

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_lower_hex(char c)
{
    return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9');
}

static bool is_tag_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

/* A separator inside a name component: ".", "_", "__" or one or more '-'. */
static bool name_separator_valid(const char *s, size_t n)
{
    if (n == 1) return true;
    if (n == 2 && s[0] == '_' && s[1] == '_') return true;
    for (size_t i = 0; i < n; i++)
        if (s[i] != '-') return false;
    return true;
}

/* [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* */
static bool name_component_valid(const char *s, size_t n)
{
    size_t i = 0;

    for (;;) {
        size_t run = i;
        while (i < n && is_lower_alnum(s[i]))
            i++;
        if (i == run) return false;
        if (i == n) return true;
        size_t sep = i;
        while (i < n && (s[i] == '.' || s[i] == '_' || s[i] == '-'))
            i++;
        if (i == sep || i == n || !name_separator_valid(s + sep, i - sep)) return false;
    }
}

bool registry_name_valid(const char *s, size_t len)
{
    size_t start = 0;

    if (len == 0 || len > NAME_MAX_LEN) return false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '/') continue;
        if (!name_component_valid(s + start, i - start)) return false;
        start = i + 1;
    }
    return true;
}

bool registry_tag_valid(const char *s, size_t len)
{
    if (len == 0 || len > TAG_MAX_LEN || s[0] == '.' || s[0] == '-') return false;
    for (size_t i = 0; i < len; i++)
        if (!is_tag_char(s[i])) return false;
    return true;
}

static bool hex_digest_valid(const char *s, size_t len, const char *algorithm, size_t hex_len)
{
    size_t alen = strlen(algorithm);

    if (len != alen + 1 + hex_len || memcmp(s, algorithm, alen) != 0 || s[alen] != ':')
        return false;
    for (size_t i = alen + 1; i < len; i++)
        if (!is_lower_hex(s[i])) return false;
    return true;
}

bool registry_digest_valid(const char *s, size_t len)
{
    return hex_digest_valid(s, len, "sha256", DIGEST_SHA256_HEX_LEN) ||
           hex_digest_valid(s, len, "sha512", 128);
}

/* ---- routes ---------------------------------------------------------------------------- */

static bool span_is(const char *s, size_t n, const char *literal)
{
    return n == strlen(literal) && memcmp(s, literal, n) == 0;
}

/*
 * Anything a registry path never has: no leading '/', too long, escapes ('%', '\\'),
 * bytes outside printable ASCII, empty components ("//", but a trailing '/' is allowed),
 * and "." or ".." components.
 */
static bool path_is_hostile(const char *p, size_t len)
{
    size_t start = 1;

    if (len == 0 || len > REGISTRY_PATH_MAX || p[0] != '/') return true;
    for (size_t i = 1; i <= len; i++) {
        if (i < len) {
            unsigned char c = (unsigned char)p[i];
            if (c < 0x20 || c >= 0x7f || c == '%' || c == '\\') return true;
            if (c != '/') continue;
        }
        size_t n = i - start;
        if (n == 0 && i < len) return true;
        if (span_is(p + start, n, ".") || span_is(p + start, n, "..")) return true;
        start = i + 1;
    }
    return false;
}

/* Index of the last '/' in s[0..n), or n when there is none. */
static size_t last_slash(const char *s, size_t n)
{
    for (size_t i = n; i > 0; i--)
        if (s[i - 1] == '/') return i - 1;
    return n;
}

enum registry_error_code registry_route_parse(const char *path, size_t len,
                                              struct registry_route *out)
{
    memset(out, 0, sizeof *out);
    out->kind = ROUTE_NOT_V2;

    if (path_is_hostile(path, len)) return REG_ERR_NOT_FOUND;
    if (span_is(path, len, "/v2") || span_is(path, len, "/v2/")) {
        out->kind = ROUTE_BASE;
        return REG_ERR_NONE;
    }
    if (len < 4 || memcmp(path, "/v2/", 4) != 0) return REG_ERR_NONE;

    const char *rest = path + 4;
    size_t rest_len = len - 4;
    out->kind = ROUTE_V2_OTHER;
    if (span_is(rest, rest_len, "_catalog")) {
        out->kind = ROUTE_CATALOG;
        return REG_ERR_NONE;
    }

    /* rest = <name> "/" <word> "/" <last>, where <last> has no '/'. */
    size_t slash2 = last_slash(rest, rest_len);
    if (slash2 == rest_len) return REG_ERR_NONE;
    size_t slash1 = last_slash(rest, slash2);
    if (slash1 == slash2) return REG_ERR_NONE;
    const char *word = rest + slash1 + 1;
    size_t word_len = slash2 - slash1 - 1;
    const char *last = rest + slash2 + 1;
    size_t last_len = rest_len - slash2 - 1;

    if (last_len == 0) return REG_ERR_NONE;
    if (span_is(word, word_len, "tags") && span_is(last, last_len, "list"))
        out->kind = ROUTE_TAGS;
    else if (span_is(word, word_len, "manifests"))
        out->kind = ROUTE_MANIFEST;
    else if (span_is(word, word_len, "blobs") && !span_is(last, last_len, "uploads"))
        out->kind = ROUTE_BLOB;
    else if (span_is(word, word_len, "referrers"))
        out->kind = ROUTE_REFERRERS;
    else
        return REG_ERR_NONE;

    out->name = rest;
    out->name_len = slash1;
    if (!registry_name_valid(out->name, out->name_len)) return REG_ERR_NAME_INVALID;
    if (out->kind == ROUTE_TAGS) return REG_ERR_NONE;

    out->reference = last;
    out->reference_len = last_len;
    out->reference_is_digest = out->kind != ROUTE_MANIFEST || memchr(last, ':', last_len);
    if (out->reference_is_digest)
        return registry_digest_valid(last, last_len) ? REG_ERR_NONE : REG_ERR_DIGEST_INVALID;
    /* Neither a tag nor a digest: no manifest can have that name (registries answer 404
     * here, and the OCI conformance suite requires it). */
    return registry_tag_valid(last, last_len) ? REG_ERR_NONE : REG_ERR_MANIFEST_UNKNOWN;
}

static size_t put(char *buf, size_t at, const char *s)
{
    size_t n = strlen(s);
    memcpy(buf + at, s, n);
    return at + n;
}

int registry_error_json(enum registry_error_code code, const char *message, const char *detail,
                        char *buf, size_t len)
{
    static const char head[] = "{\"errors\":[{\"code\":\"";
    static const char mid[] = "\",\"message\":\"";
    static const char detail_key[] = "\",\"detail\":";
    static const char tail[] = "}]}";
    const char *name = registry_error_name(code);
    size_t skeleton, budget, at = 0, consumed;

    if (message == NULL) message = registry_error_message(code);
    skeleton = strlen(head) + strlen(name) + strlen(mid) + strlen(detail_key) +
               (detail ? 2 : strlen("null")) + strlen(tail) + 1;
    if (len > INT_MAX) len = INT_MAX;
    if (len < skeleton) return -ENOSPC;
    budget = len - skeleton;

    at = put(buf, at, head);
    at = put(buf, at, name);
    at = put(buf, at, mid);
    size_t w = json_escape_prefix(message, strlen(message), buf + at, budget, &consumed);
    at += w;
    budget -= w;
    at = put(buf, at, detail_key);
    if (detail) {
        buf[at++] = '"';
        at += json_escape_prefix(detail, strlen(detail), buf + at, budget, &consumed);
        buf[at++] = '"';
    } else {
        at = put(buf, at, "null");
    }
    at = put(buf, at, tail);
    buf[at] = '\0';
    return (int)at;
}

/* ---- image references ------------------------------------------------------------------- */

int registry_image_ref_parse(const char *text, struct registry_image_ref *out, char *why,
                             size_t why_len)
{
    memset(out, 0, sizeof(*out));
    size_t len = strlen(text);
    if (len == 0 || len > REGISTRY_PATH_MAX) {
        snprintf(why, why_len, "\"%.64s\" is not an image reference", text);
        return -EINVAL;
    }
    const char *name = text, *end = text + len;
    const char *slash = strchr(text, '/');
    if (slash != NULL) {
        size_t first = (size_t)(slash - text);
        if (memchr(text, '.', first) != NULL || memchr(text, ':', first) != NULL ||
            (first == 9 && memcmp(text, "localhost", 9) == 0)) {
            if (first >= sizeof(out->registry)) {
                snprintf(why, why_len, "%s: the registry's name is too long", text);
                return -EINVAL;
            }
            memcpy(out->registry, text, first);
            name = slash + 1;
        }
    }
    const char *at = strchr(name, '@');
    if (at != NULL) {
        size_t dlen = (size_t)(end - at - 1);
        if (!registry_digest_valid(at + 1, dlen)) {
            snprintf(why, why_len, "%s: \"%.*s\" is not a digest (sha256:<64 hex digits>)", text,
                     (int)(dlen < 80 ? dlen : 80), at + 1);
            return -EINVAL;
        }
        memcpy(out->digest, at + 1, dlen);
        end = at;
    }
    const char *colon = NULL; /* the tag's, after the name's last '/' */
    for (const char *p = end; p > name && p[-1] != '/' && colon == NULL; p--)
        if (p[-1] == ':') colon = p - 1;
    if (colon != NULL) {
        size_t tlen = (size_t)(end - colon - 1);
        if (!registry_tag_valid(colon + 1, tlen)) {
            snprintf(why, why_len, "%s: \"%.*s\" is not a valid tag", text,
                     (int)(tlen < 140 ? tlen : 140), colon + 1);
            return -EINVAL;
        }
        if (out->digest[0] == '\0') memcpy(out->tag, colon + 1, tlen);
        end = colon;
    } else if (out->digest[0] == '\0') {
        memcpy(out->tag, "latest", 7);
    }
    size_t nlen = (size_t)(end - name);
    if (nlen == 0 || nlen > REGISTRY_NAME_MAX || !registry_name_valid(name, nlen)) {
        snprintf(why, why_len, "%s: \"%.*s\" is not a valid repository name", text,
                 (int)(nlen < 260 ? nlen : 260), name);
        return -EINVAL;
    }
    memcpy(out->name, name, nlen);
    return 0;
}
