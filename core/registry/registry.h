/*
 * registry.h: the registry API's paths, names, references and errors.
 *
 * Pure functions over bytes: no I/O, no allocation. The grammar is the OCI
 * distribution spec's:
 *   name      [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
 *             at most 255 characters in all
 *   tag       [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
 *   digest    algorithm ":" encoded, where only the registered algorithms are accepted:
 *             sha256 (64 lowercase hex) and sha512 (128 lowercase hex)
 */
#ifndef CC_REGISTRY_H
#define CC_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

enum registry_route_kind {
    ROUTE_BASE,      /* /v2/ (and /v2) */
    ROUTE_MANIFEST,  /* /v2/<name>/manifests/<reference> */
    ROUTE_BLOB,      /* /v2/<name>/blobs/<digest> */
    ROUTE_TAGS,      /* /v2/<name>/tags/list */
    ROUTE_REFERRERS, /* /v2/<name>/referrers/<digest> */
    ROUTE_CATALOG,   /* /v2/_catalog */
    ROUTE_V2_OTHER,  /* under /v2/ but none of the above (uploads, unknown): 404 for reads */
    ROUTE_NOT_V2,    /* anything else */
};

enum registry_error_code {
    REG_ERR_NONE = 0,
    REG_ERR_NAME_INVALID,     /* 400 */
    REG_ERR_TAG_INVALID,      /* 400 */
    REG_ERR_DIGEST_INVALID,   /* 400 */
    REG_ERR_MANIFEST_INVALID, /* 400 */
    REG_ERR_NAME_UNKNOWN,     /* 404 */
    REG_ERR_MANIFEST_UNKNOWN, /* 404 */
    REG_ERR_BLOB_UNKNOWN,     /* 404 */
    REG_ERR_NOT_FOUND,        /* 404, code "NOT_FOUND": a path the API does not have */
    REG_ERR_UNAUTHORIZED,     /* 401 */
    REG_ERR_DENIED,           /* 403 */
    REG_ERR_UNSUPPORTED,      /* 405 */
    REG_ERR_RANGE_INVALID,    /* 416, code "RANGE_INVALID" */
    REG_ERR_TOOMANYREQUESTS,  /* 429 */
    REG_ERR_UPSTREAM_FAILED,  /* 502, code "UNKNOWN": the upstream answered nonsense or failed
                                 mid-way */
    REG_ERR_UNAVAILABLE,      /* 503, code "UNAVAILABLE": the upstream could not be reached */
    REG_ERR_INTERNAL,         /* 500, code "UNKNOWN" */
};

struct registry_route {
    enum registry_route_kind kind;
    const char *name; /* spans into the parsed path; NULL when the route has none */
    size_t name_len;
    const char *reference; /* tag or digest (manifests), digest (blobs, referrers) */
    size_t reference_len;
    bool reference_is_digest;
};

/* The longest repository name the grammar allows. */
#define REGISTRY_NAME_MAX 255
/* The longest reference: a tag has at most 128 bytes, a digest at most "sha512:" + 128. */
#define REGISTRY_REFERENCE_MAX 135

/* Longer request paths are REG_ERR_NOT_FOUND (the longest valid one has 405 bytes). */
#define REGISTRY_PATH_MAX 2048

/*
 * Splits a request path (without the query; path[0..len), not NUL-terminated) into a
 * route and checks name, tag and digest. Returns REG_ERR_NONE, or the error to answer
 * with (NAME_INVALID, DIGEST_INVALID, MANIFEST_UNKNOWN); *out is filled as far as it
 * could be. The name is everything between "/v2/" and the last "/manifests/", "/blobs/",
 * "/referrers/" or a trailing "/tags/list", so a name may itself contain "manifests".
 * A manifest reference with a ':' is a digest (DIGEST_INVALID when it is not a valid
 * one), else a tag; one that is neither (".INVALID_MANIFEST_NAME") names no manifest:
 * MANIFEST_UNKNOWN, a 404, as registries answer. "/v2/<name>/blobs/uploads"
 * and anything under it, an empty reference, a trailing '/' and unknown paths under
 * /v2/ are ROUTE_V2_OTHER with REG_ERR_NONE (the caller answers 404, or 405 to writes);
 * a clean path outside /v2 is ROUTE_NOT_V2 with REG_ERR_NONE.
 *
 * A path that does not start with '/', is longer than REGISTRY_PATH_MAX, or contains
 * '%', '\\', "//", a "." or ".." component, NUL, control bytes or bytes >= 0x80 is
 * REG_ERR_NOT_FOUND, with kind ROUTE_NOT_V2.
 */
enum registry_error_code registry_route_parse(const char *path, size_t len,
                                              struct registry_route *out);

/*
 * An image reference as clients write one: [registry/]name[:tag][@digest]. The first
 * component is a registry (host[:port]) when the reference has a '/' after it and it
 * holds a '.' or a ':', or is "localhost", as Docker reads it (no default registry, no
 * "library/" prefix). Neither tag nor digest: the tag "latest"; a digest: tag "" (a tag
 * beside a digest is checked, then the digest decides).
 */
struct registry_image_ref {
    char registry[256]; /* host[:port], or "" when none is named */
    char name[REGISTRY_NAME_MAX + 1];
    char tag[REGISTRY_REFERENCE_MAX + 1];    /* "" by digest */
    char digest[REGISTRY_REFERENCE_MAX + 1]; /* "algorithm:hex", or "" by tag */
};

/* Reads text into *out. Returns 0, or -EINVAL with a sentence naming the part that is
 * wrong in why (NUL-terminated, cut to why_len). */
int registry_image_ref_parse(const char *text, struct registry_image_ref *out, char *why,
                             size_t why_len);

bool registry_name_valid(const char *s, size_t len);
bool registry_tag_valid(const char *s, size_t len);
bool registry_digest_valid(const char *s, size_t len);

/*
 * HTTP status for an error code, the code's wire name ("BLOB_UNKNOWN") and Docker
 * Distribution's message for it ("blob unknown to registry"). REG_ERR_NONE is 200 with
 * an empty name; a value outside the enum is treated as REG_ERR_INTERNAL.
 */
int registry_error_status(enum registry_error_code code);
const char *registry_error_name(enum registry_error_code code);
const char *registry_error_message(enum registry_error_code code);

/*
 * Writes {"errors":[{"code":"...","message":"...","detail":...}]} into buf, with the
 * message and detail JSON-escaped; detail is written as a JSON string, or null when it is
 * NULL. A NULL message means registry_error_message(code). Returns the length written
 * (NUL-terminated; a message or detail too long for buf is cut, message first served,
 * and the JSON stays valid), or -ENOSPC when buf cannot hold even the skeleton.
 */
int registry_error_json(enum registry_error_code code, const char *message, const char *detail,
                        char *buf, size_t len);

#endif
