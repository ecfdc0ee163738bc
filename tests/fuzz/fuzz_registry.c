/*
 * fuzz_registry.c: bytes as a request path through registry_route_parse, and as the
 * message and detail of registry_error_json and json_escape.
 *
 * The input is the path, as sent. For the JSON functions, a NUL-terminated copy is the
 * message, what follows its first NUL byte (if any) is the detail, the first byte picks
 * the error code (values outside the enum included) and the last byte the size of a small
 * output buffer. Checked: the spans a route points to lie inside the input and name
 * valid names, tags and digests; every JSON written parses as strict JSON (json.h) with
 * the expected code, or the call said -ENOSPC; nothing is written past the buffer.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "base/json.h"
#include "registry/registry.h"

static int inside(const char *span, size_t n, const char *base, size_t len)
{
    return span >= base && span + n <= base + len;
}

static void check_route(const char *path, size_t len)
{
    struct registry_route r;
    enum registry_error_code e = registry_route_parse(path, len, &r);
    if (e == REG_ERR_NOT_FOUND) {
        HARNESS_REQUIRE(r.kind == ROUTE_NOT_V2, "a hostile path is ROUTE_NOT_V2");
        return;
    }
    HARNESS_REQUIRE(e == REG_ERR_NONE || e == REG_ERR_NAME_INVALID || e == REG_ERR_DIGEST_INVALID ||
                        (e == REG_ERR_MANIFEST_UNKNOWN && r.kind == ROUTE_MANIFEST),
                    "the error is one of those documented");
    if (r.name != NULL)
        HARNESS_REQUIRE(inside(r.name, r.name_len, path, len), "the name lies in the path");
    if (r.reference != NULL)
        HARNESS_REQUIRE(inside(r.reference, r.reference_len, path, len),
                        "the reference lies in the path");
    if (e != REG_ERR_NONE) return;
    switch (r.kind) {
    case ROUTE_MANIFEST:
        HARNESS_REQUIRE(registry_name_valid(r.name, r.name_len), "manifest: valid name");
        HARNESS_REQUIRE(r.reference_is_digest ? registry_digest_valid(r.reference, r.reference_len)
                                              : registry_tag_valid(r.reference, r.reference_len),
                        "manifest: valid reference");
        break;
    case ROUTE_BLOB:
    case ROUTE_REFERRERS:
        HARNESS_REQUIRE(registry_name_valid(r.name, r.name_len), "blob: valid name");
        HARNESS_REQUIRE(r.reference_is_digest &&
                            registry_digest_valid(r.reference, r.reference_len),
                        "blob: valid digest");
        break;
    case ROUTE_TAGS:
        HARNESS_REQUIRE(registry_name_valid(r.name, r.name_len), "tags: valid name");
        break;
    default:
        break;
    }
}

/* Parses buf[0..n) as strict JSON; returns the token count, or aborts. */
static void require_json(const char *buf, size_t n, const char *code_name)
{
    size_t cap = json_tokens_for(n);
    struct json_token *tokens = malloc(cap * sizeof(*tokens));
    struct json_doc doc;
    HARNESS_REQUIRE(tokens != NULL, "memory");
    int rc = json_parse(buf, n, tokens, cap, &doc);
    if (rc != 0) fprintf(stderr, "fuzz_registry: not JSON (%d): %.*s\n", rc, (int)n, buf);
    HARNESS_REQUIRE(rc == 0, "registry_error_json writes valid JSON");
    if (code_name != NULL) {
        size_t errors, code;
        HARNESS_REQUIRE(json_object_get(&doc, 0, "errors", &errors) == 0, "has errors");
        HARNESS_REQUIRE(json_type_of(&doc, errors) == JSON_ARRAY && json_count(&doc, errors) == 1,
                        "errors is one entry");
        HARNESS_REQUIRE(json_object_get(&doc, errors + 1, "code", &code) == 0, "has a code");
        HARNESS_REQUIRE(json_string_equals(&doc, code, code_name, strlen(code_name)), "the code");
    }
    free(tokens);
}

static void check_json(const uint8_t *data, size_t size)
{
    char *msg = malloc(size + 1);
    HARNESS_REQUIRE(msg != NULL, "memory");
    memcpy(msg, data, size);
    msg[size] = '\0';
    size_t msg_len = strlen(msg);
    const char *detail = msg_len < size ? msg + msg_len + 1 : NULL;
    enum registry_error_code code =
        (enum registry_error_code)(size > 0 ? data[0] % (REG_ERR_INTERNAL + 4) : 0);
    const char *name = registry_error_name(code);

    /* Big enough for everything: 6 bytes per input byte at most, and the skeleton. */
    size_t big_len = 6 * size + 256;
    char *big = malloc(big_len);
    HARNESS_REQUIRE(big != NULL, "memory");
    int n = registry_error_json(code, size & 1 ? msg : NULL, detail, big, big_len);
    HARNESS_REQUIRE(n > 0 && (size_t)n == strlen(big), "returns the length written");
    require_json(big, (size_t)n, name);

    /* A small buffer, exactly sized on the heap so that ASan sees any overrun. */
    size_t small_len = size > 0 ? data[size - 1] : 0;
    char *small = malloc(small_len ? small_len : 1);
    HARNESS_REQUIRE(small != NULL, "memory");
    n = registry_error_json(code, msg, detail, small, small_len);
    if (n >= 0) {
        HARNESS_REQUIRE((size_t)n < small_len && (size_t)n == strlen(small),
                        "fits and is terminated");
        require_json(small, (size_t)n, name);
    } else {
        HARNESS_REQUIRE(n == -ENOSPC, "only -ENOSPC");
    }

    /* json_escape: the escape of the whole input, between quotes, is a string. */
    n = json_escape((const char *)data, size, big + 1, big_len - 2);
    HARNESS_REQUIRE(n >= 0, "6 bytes per byte are enough");
    big[0] = '"';
    big[n + 1] = '"';
    require_json(big, (size_t)n + 2, NULL);
    size_t consumed = 0;
    size_t w = json_escape_prefix((const char *)data, size, small, small_len, &consumed);
    HARNESS_REQUIRE(w <= small_len && consumed <= size, "the prefix stays in bounds");

    free(small);
    free(big);
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: a read past the path is caught. */
    char *path = malloc(size ? size : 1);
    if (path == NULL) return 0;
    memcpy(path, data, size);
    check_route(path, size);
    free(path);
    check_json(data, size);
    return 0;
}
