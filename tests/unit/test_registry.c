/*
 * test_registry.c: route parsing, the name/tag/digest grammar, and the JSON error bodies.
 *
 * Every path is parsed from a heap copy without a terminating NUL, so AddressSanitizer
 * reports any read past the length.
 */
#include "check.h"
#include "registry/registry.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#define SHA256_HEX "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA256_DIGEST "sha256:" SHA256_HEX
#define SHA512_DIGEST                                                                              \
    "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff83"  \
    "18d2877eec2f63b931bd47417a81a538327af927da3e"

/* An exact-size heap copy of s without a NUL. */
static char *copy_unterminated(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (p && n) memcpy(p, s, n);
    return p;
}

static bool name_valid(const char *s)
{
    size_t n = strlen(s);
    char *p = copy_unterminated(s, n);
    bool ok = registry_name_valid(p, n);
    free(p);
    return ok;
}

static bool tag_valid(const char *s)
{
    size_t n = strlen(s);
    char *p = copy_unterminated(s, n);
    bool ok = registry_tag_valid(p, n);
    free(p);
    return ok;
}

static bool digest_valid(const char *s)
{
    size_t n = strlen(s);
    char *p = copy_unterminated(s, n);
    bool ok = registry_digest_valid(p, n);
    free(p);
    return ok;
}

/* What a parse gave, with the spans copied out as strings. */
struct parsed {
    enum registry_error_code err;
    enum registry_route_kind kind;
    char name[REGISTRY_PATH_MAX + 1];
    char reference[REGISTRY_PATH_MAX + 1];
    bool has_name, has_reference, is_digest;
};

static void parse_bytes(const char *path, size_t n, struct parsed *r)
{
    struct registry_route route;
    char *p = copy_unterminated(path, n);

    memset(r, 0, sizeof *r);
    r->err = registry_route_parse(p, n, &route);
    r->kind = route.kind;
    r->has_name = route.name != NULL;
    r->has_reference = route.reference != NULL;
    r->is_digest = route.reference_is_digest;
    if (route.name) {
        CHECK(route.name >= p && route.name + route.name_len <= p + n);
        memcpy(r->name, route.name, route.name_len);
        r->name[route.name_len] = '\0';
    }
    if (route.reference) {
        CHECK(route.reference >= p && route.reference + route.reference_len <= p + n);
        memcpy(r->reference, route.reference, route.reference_len);
        r->reference[route.reference_len] = '\0';
    }
    free(p);
}

static void parse(const char *path, struct parsed *r)
{
    parse_bytes(path, strlen(path), r);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_names(void)
{
    static const char *valid[] = {
        "a",       "0",           "library/ubuntu",    "a/b/c",     "foo.bar",
        "foo_bar", "foo__bar",    "foo-bar",           "foo---bar", "a0/b1.c2",
        "a-b_c.d", "x1/y-2/z__3", "a/b/c/manifests/x", "blobs",
    };
    static const char *invalid[] = {
        "",          "A",        "Library/ubuntu", "foo/",     "/foo",    "foo//bar", "foo..bar",
        "foo___bar", "foo.",     ".foo",           "-foo",     "foo-",    "_foo",     "foo_",
        "foo_.bar",  "foo._bar", "foo.-bar",       "foo-_bar", "foo bar", "foo:bar",  "foo/Bar",
        "foo/-bar",  "foo@bar",  "foo+bar",        "a/./b",    "a/../b",  "..",       "é",
    };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        if (!name_valid(valid[i])) fprintf(stderr, "name should be valid: %s\n", valid[i]);
        CHECK(name_valid(valid[i]));
    }
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        if (name_valid(invalid[i])) fprintf(stderr, "name should be invalid: %s\n", invalid[i]);
        CHECK(!name_valid(invalid[i]));
    }

    /* 255 characters in all, components included. */
    char *s = repeat('a', 256);
    CHECK(name_valid(s + 1));
    CHECK(!name_valid(s));
    s[100] = '/';
    CHECK(name_valid(s + 1));
    CHECK(!name_valid(s));
    free(s);

    /* A NUL inside the span is just an invalid byte. */
    CHECK(!registry_name_valid("ab\0cd", 5));
}

static void test_tags(void)
{
    static const char *valid[] = {"latest",  "v1.0",       "_x", "A",  "1",
                                  "a-b_c.D", "1.0-rc.1_x", "__", "a.."};
    static const char *invalid[] = {"", ".x", "-x", "a:b", "a/b", "a b", "a+b", "a@b", "é"};

    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        CHECK(tag_valid(valid[i]));
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        if (tag_valid(invalid[i])) fprintf(stderr, "tag should be invalid: %s\n", invalid[i]);
        CHECK(!tag_valid(invalid[i]));
    }
    char *s = repeat('t', 129);
    CHECK(tag_valid(s + 1));
    CHECK(!tag_valid(s));
    free(s);
}

static void test_digests(void)
{
    CHECK(digest_valid(SHA256_DIGEST));
    CHECK(digest_valid(SHA512_DIGEST));

    static const char *invalid[] = {
        "",
        "sha256:",
        "sha256",
        "sha256:" SHA256_HEX "0",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "SHA256:" SHA256_HEX,
        "sha256-" SHA256_HEX,
        "sha256::" SHA256_HEX,
        "sha384:" SHA256_HEX,
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha512:" SHA256_HEX,
        "sha256:" SHA256_HEX SHA256_HEX,
        " sha256:" SHA256_HEX,
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        if (digest_valid(invalid[i])) fprintf(stderr, "digest should be invalid: %s\n", invalid[i]);
        CHECK(!digest_valid(invalid[i]));
    }
}

struct route_case {
    const char *path;
    enum registry_error_code err;
    enum registry_route_kind kind;
    const char *name;      /* NULL: no name */
    const char *reference; /* NULL: no reference */
    bool is_digest;
};

static void check_route_cases(const struct route_case *cases, size_t n)
{
    struct parsed r;

    for (size_t i = 0; i < n; i++) {
        const struct route_case *c = &cases[i];
        int before = check_failures;
        parse(c->path, &r);
        CHECK_INT(r.err, c->err);
        CHECK_INT(r.kind, c->kind);
        CHECK_INT(r.has_name, c->name != NULL);
        if (c->name && r.has_name) CHECK_STR(r.name, c->name);
        CHECK_INT(r.has_reference, c->reference != NULL);
        if (c->reference && r.has_reference) {
            CHECK_STR(r.reference, c->reference);
            CHECK_INT(r.is_digest, c->is_digest);
        }
        if (check_failures != before) fprintf(stderr, "  ... for path \"%s\"\n", c->path);
    }
}

static void test_routes(void)
{
    static const struct route_case cases[] = {
        {"/v2", REG_ERR_NONE, ROUTE_BASE, NULL, NULL, false},
        {"/v2/", REG_ERR_NONE, ROUTE_BASE, NULL, NULL, false},
        {"/v2/_catalog", REG_ERR_NONE, ROUTE_CATALOG, NULL, NULL, false},
        {"/v2/library/ubuntu/manifests/latest", REG_ERR_NONE, ROUTE_MANIFEST, "library/ubuntu",
         "latest", false},
        {"/v2/ubuntu/manifests/" SHA256_DIGEST, REG_ERR_NONE, ROUTE_MANIFEST, "ubuntu",
         SHA256_DIGEST, true},
        {"/v2/ubuntu/manifests/" SHA512_DIGEST, REG_ERR_NONE, ROUTE_MANIFEST, "ubuntu",
         SHA512_DIGEST, true},
        {"/v2/a/b/c/blobs/" SHA256_DIGEST, REG_ERR_NONE, ROUTE_BLOB, "a/b/c", SHA256_DIGEST, true},
        {"/v2/alice/app/tags/list", REG_ERR_NONE, ROUTE_TAGS, "alice/app", NULL, false},
        {"/v2/alice/app/referrers/" SHA256_DIGEST, REG_ERR_NONE, ROUTE_REFERRERS, "alice/app",
         SHA256_DIGEST, true},
        /* The last marker wins, and the name before it is checked like any other. */
        {"/v2/a/b/c/manifests/x/manifests/latest", REG_ERR_NONE, ROUTE_MANIFEST,
         "a/b/c/manifests/x", "latest", false},
        {"/v2/a/manifests/b/blobs/" SHA256_DIGEST, REG_ERR_NONE, ROUTE_BLOB, "a/manifests/b",
         SHA256_DIGEST, true},
        {"/v2/a/blobs/tags/list", REG_ERR_NONE, ROUTE_TAGS, "a/blobs", NULL, false},
        {"/v2/tags/tags/list", REG_ERR_NONE, ROUTE_TAGS, "tags", NULL, false},
        {"/v2/A/manifests/x/manifests/latest", REG_ERR_NAME_INVALID, ROUTE_MANIFEST,
         "A/manifests/x", NULL, false},
        {"/v2/a/b/c/manifests/X/manifests/latest", REG_ERR_NAME_INVALID, ROUTE_MANIFEST,
         "a/b/c/manifests/X", NULL, false},
        /* Errors in the parts. */
        {"/v2/Ubuntu/manifests/latest", REG_ERR_NAME_INVALID, ROUTE_MANIFEST, "Ubuntu", NULL,
         false},
        {"/v2/foo__-bar/tags/list", REG_ERR_NAME_INVALID, ROUTE_TAGS, "foo__-bar", NULL, false},
        /* A manifest reference that is neither a tag nor a digest names no manifest: 404
         * MANIFEST_UNKNOWN, as registries answer (the OCI conformance suite's name). */
        {"/v2/ubuntu/manifests/-latest", REG_ERR_MANIFEST_UNKNOWN, ROUTE_MANIFEST, "ubuntu",
         "-latest", false},
        {"/v2/ubuntu/manifests/.INVALID_MANIFEST_NAME", REG_ERR_MANIFEST_UNKNOWN, ROUTE_MANIFEST,
         "ubuntu", ".INVALID_MANIFEST_NAME", false},
        {"/v2/ubuntu/manifests/sha256:totallywrong", REG_ERR_DIGEST_INVALID, ROUTE_MANIFEST,
         "ubuntu", "sha256:totallywrong", true},
        {"/v2/ubuntu/manifests/sha256:abc", REG_ERR_DIGEST_INVALID, ROUTE_MANIFEST, "ubuntu",
         "sha256:abc", true},
        {"/v2/ubuntu/manifests/lat est", REG_ERR_MANIFEST_UNKNOWN, ROUTE_MANIFEST, "ubuntu",
         "lat est", false},
        {"/v2/ubuntu/manifests/latest:1", REG_ERR_DIGEST_INVALID, ROUTE_MANIFEST, "ubuntu",
         "latest:1", true},
        {"/v2/ubuntu/blobs/latest", REG_ERR_DIGEST_INVALID, ROUTE_BLOB, "ubuntu", "latest", true},
        {"/v2/ubuntu/blobs/sha256:" SHA256_HEX "0", REG_ERR_DIGEST_INVALID, ROUTE_BLOB, "ubuntu",
         "sha256:" SHA256_HEX "0", true},
        {"/v2/ubuntu/referrers/latest", REG_ERR_DIGEST_INVALID, ROUTE_REFERRERS, "ubuntu", "latest",
         true},
        /* Under /v2/ but not a read route. */
        {"/v2/ubuntu/blobs/uploads/", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/blobs/uploads", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/blobs/uploads/3f2a-11", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/a/b/blobs/uploads/3f2a-11", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/manifests/", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/tags/list/", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/tags/lis", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/tags", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/manifests/latest", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/tags/list", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/_catalog/", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/manifest/latest", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        {"/v2/ubuntu/manifests/a/b", REG_ERR_NONE, ROUTE_V2_OTHER, NULL, NULL, false},
        /* Outside /v2. */
        {"/", REG_ERR_NONE, ROUTE_NOT_V2, NULL, NULL, false},
        {"/v1/ubuntu", REG_ERR_NONE, ROUTE_NOT_V2, NULL, NULL, false},
        {"/v2x", REG_ERR_NONE, ROUTE_NOT_V2, NULL, NULL, false},
        {"/V2/", REG_ERR_NONE, ROUTE_NOT_V2, NULL, NULL, false},
        {"/metrics", REG_ERR_NONE, ROUTE_NOT_V2, NULL, NULL, false},
    };
    check_route_cases(cases, sizeof cases / sizeof cases[0]);
}

static void test_hostile_paths(void)
{
    static const char *hostile[] = {
        "",
        "v2/",
        "*",
        "http://example.com/v2/",
        "/v2/ubuntu/manifests/%6catest",
        "/v2/%2e%2e/manifests/latest",
        "/v2//ubuntu/manifests/latest",
        "/v2/ubuntu//manifests/latest",
        "//v2/",
        "/v2/./ubuntu/manifests/latest",
        "/v2/ubuntu/../manifests/latest",
        "/v2/../../etc/passwd",
        "/v2/..",
        "/v2/.",
        "/v2/ubuntu/manifests/..",
        "/v2/ubuntu/blobs/.",
        "/..",
        "/v2/ubuntu\\..\\x/manifests/latest",
        "/v2/ubuntu/manifests/lat\test",
        "/v2/ubuntu/manifests/latest\r\nX-Injected: 1",
        "/v2/ubuntu/manifests/lat\x7f",
        "/v2/ubuntu/manifests/lat\x1b[31m",
        "/v2/ub\xc3\xa9untu/manifests/latest",
        "/v2/ubuntu/manifests/lat\xff",
    };
    struct parsed r;

    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        parse(hostile[i], &r);
        if (r.err != REG_ERR_NOT_FOUND) fprintf(stderr, "hostile path accepted: %s\n", hostile[i]);
        CHECK_INT(r.err, REG_ERR_NOT_FOUND);
        CHECK_INT(r.kind, ROUTE_NOT_V2);
        CHECK(!r.has_name && !r.has_reference);
    }

    /* NUL bytes inside the span. */
    static const char with_nul[] = "/v2/ubuntu/manifests/latest\0/../x";
    parse_bytes(with_nul, sizeof with_nul - 1, &r);
    CHECK_INT(r.err, REG_ERR_NOT_FOUND);
    parse_bytes("/v2/\0", 5, &r);
    CHECK_INT(r.err, REG_ERR_NOT_FOUND);

    /* The length is what counts, not a NUL: a prefix of a longer string is parsed alone. */
    parse_bytes("/v2/ubuntu/manifests/latest/../../x", 27, &r);
    CHECK_INT(r.err, REG_ERR_NONE);
    CHECK_STR(r.reference, "latest");
}

static void test_long_paths(void)
{
    struct parsed r;
    char *name = repeat('a', 255);
    char path[REGISTRY_PATH_MAX + 64];

    /* The longest valid path: a 255-character name and a sha512 digest. */
    snprintf(path, sizeof path, "/v2/%s/referrers/%s", name, SHA512_DIGEST);
    CHECK_INT(strlen(path), 405);
    parse(path, &r);
    CHECK_INT(r.err, REG_ERR_NONE);
    CHECK_INT(r.kind, ROUTE_REFERRERS);
    CHECK_INT(strlen(r.name), 255);

    snprintf(path, sizeof path, "/v2/%sa/manifests/latest", name);
    parse(path, &r);
    CHECK_INT(r.err, REG_ERR_NAME_INVALID);
    free(name);

    /* Longer than any valid path: refused before any grammar runs. */
    char *big = repeat('a', REGISTRY_PATH_MAX + 10);
    memcpy(big, "/v2/", 4);
    parse_bytes(big, REGISTRY_PATH_MAX, &r);
    CHECK_INT(r.err, REG_ERR_NONE);
    CHECK_INT(r.kind, ROUTE_V2_OTHER);
    parse_bytes(big, REGISTRY_PATH_MAX + 1, &r);
    CHECK_INT(r.err, REG_ERR_NOT_FOUND);
    free(big);

    /* Many components. */
    size_t n = 0;
    big = malloc(REGISTRY_PATH_MAX);
    memcpy(big, "/v2", 3);
    for (n = 3; n + 2 <= REGISTRY_PATH_MAX; n += 2)
        memcpy(big + n, "/a", 2);
    parse_bytes(big, n, &r);
    CHECK_INT(r.err, REG_ERR_NONE);
    CHECK_INT(r.kind, ROUTE_V2_OTHER);
    free(big);
}

/* Random mutations of valid paths: never a crash, and a NONE result is always consistent. */
static void test_route_fuzz(void)
{
    static const char *seeds[] = {
        "/v2/library/ubuntu/manifests/latest",
        "/v2/a/b/blobs/" SHA256_DIGEST,
        "/v2/x/tags/list",
        "/v2/a/referrers/" SHA256_DIGEST,
        "/v2/_catalog",
    };
    static const char alphabet[] = "/.:%\\-_aZ09\0\n\x80\xff";
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    char buf[128];
    struct registry_route route;

    for (int iter = 0; iter < 200000; iter++) {
        const char *seed = seeds[iter % 5];
        size_t n = strlen(seed);
        memcpy(buf, seed, n);
        for (int k = 0; k < 3; k++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            size_t at = (size_t)(rng % (n + 1));
            char c = alphabet[(rng >> 32) % (sizeof alphabet - 1)];
            switch ((rng >> 48) % 3) {
            case 0:
                if (at < n) buf[at] = c;
                break;
            case 1:
                if (n < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = c;
                    n++;
                }
                break;
            default:
                n = at;
                break;
            }
        }
        char *p = copy_unterminated(buf, n);
        enum registry_error_code err = registry_route_parse(p, n, &route);
        if (err == REG_ERR_NONE && route.name) {
            CHECK(registry_name_valid(route.name, route.name_len));
            CHECK(route.name >= p && route.name + route.name_len <= p + n);
        }
        if (err == REG_ERR_NONE && route.reference) {
            CHECK(route.reference_is_digest
                      ? registry_digest_valid(route.reference, route.reference_len)
                      : registry_tag_valid(route.reference, route.reference_len));
            CHECK(route.reference + route.reference_len == p + n);
        }
        free(p);
    }
}

static void test_error_table(void)
{
    static const struct {
        enum registry_error_code code;
        int status;
        const char *name;
    } table[] = {
        {REG_ERR_NAME_INVALID, 400, "NAME_INVALID"},
        {REG_ERR_TAG_INVALID, 400, "TAG_INVALID"},
        {REG_ERR_DIGEST_INVALID, 400, "DIGEST_INVALID"},
        {REG_ERR_MANIFEST_INVALID, 400, "MANIFEST_INVALID"},
        {REG_ERR_NAME_UNKNOWN, 404, "NAME_UNKNOWN"},
        {REG_ERR_MANIFEST_UNKNOWN, 404, "MANIFEST_UNKNOWN"},
        {REG_ERR_BLOB_UNKNOWN, 404, "BLOB_UNKNOWN"},
        {REG_ERR_NOT_FOUND, 404, "NOT_FOUND"},
        {REG_ERR_UNAUTHORIZED, 401, "UNAUTHORIZED"},
        {REG_ERR_DENIED, 403, "DENIED"},
        {REG_ERR_UNSUPPORTED, 405, "UNSUPPORTED"},
        {REG_ERR_RANGE_INVALID, 416, "RANGE_INVALID"},
        {REG_ERR_TOOMANYREQUESTS, 429, "TOOMANYREQUESTS"},
        {REG_ERR_UPSTREAM_FAILED, 502, "UNKNOWN"},
        {REG_ERR_UNAVAILABLE, 503, "UNAVAILABLE"},
        {REG_ERR_INTERNAL, 500, "UNKNOWN"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        CHECK_INT(registry_error_status(table[i].code), table[i].status);
        CHECK_STR(registry_error_name(table[i].code), table[i].name);
        CHECK(registry_error_message(table[i].code)[0] != '\0');
    }
    CHECK_STR(registry_error_message(REG_ERR_BLOB_UNKNOWN), "blob unknown to registry");
    CHECK_INT(registry_error_status(REG_ERR_NONE), 200);
    CHECK_INT(registry_error_status((enum registry_error_code)999), 500);
    CHECK_STR(registry_error_name((enum registry_error_code)999), "UNKNOWN");
}

static void test_error_json_exact(void)
{
    char buf[512];
    int n;

    n = registry_error_json(REG_ERR_BLOB_UNKNOWN, "blob unknown to registry", NULL, buf,
                            sizeof buf);
    CHECK_STR(buf, "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown to "
                   "registry\",\"detail\":null}]}");
    CHECK_INT(n, strlen(buf));

    n = registry_error_json(REG_ERR_UNSUPPORTED, NULL, NULL, buf, sizeof buf);
    CHECK_STR(buf, "{\"errors\":[{\"code\":\"UNSUPPORTED\",\"message\":\"The operation is "
                   "unsupported.\",\"detail\":null}]}");
    CHECK_INT(n, strlen(buf));

    n = registry_error_json(REG_ERR_UPSTREAM_FAILED, "upstream \"origin\" failed",
                            "read: connection reset\n\x01\\", buf, sizeof buf);
    CHECK_STR(buf, "{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"upstream \\\"origin\\\" "
                   "failed\",\"detail\":\"read: connection reset\\u000a\\u0001\\\\\"}]}");
    CHECK_INT(n, strlen(buf));

    n = registry_error_json(REG_ERR_NAME_INVALID, "", "", buf, sizeof buf);
    CHECK_STR(buf, "{\"errors\":[{\"code\":\"NAME_INVALID\",\"message\":\"\",\"detail\":\"\"}]}");
}

static void test_error_json_truncation(void)
{
    static const char skeleton_null[] =
        "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"\",\"detail\":null}]}";
    static const char message[] = "denied \"x\"\n\xc3\xa9";
    char full[256], buf[256];
    int full_len = registry_error_json(REG_ERR_DENIED, message, NULL, full, sizeof full);

    CHECK_STR(full,
              "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"denied \\\"x\\\"\\u000a\xc3\xa9"
              "\",\"detail\":null}]}");
    for (size_t len = 0; len <= (size_t)full_len + 1; len++) {
        memset(buf, 'Z', sizeof buf);
        int n = registry_error_json(REG_ERR_DENIED, message, NULL, buf, len);
        if (len < sizeof skeleton_null) {
            CHECK_INT(n, -ENOSPC);
            continue;
        }
        CHECK(n >= 0 && (size_t)n < len);
        CHECK_INT(strlen(buf), n);
        CHECK(buf[n + 1] == 'Z' || (size_t)n + 1 == len);
        /* The message is a whole-escape prefix of the full one, the rest intact. */
        const char *tail = "\",\"detail\":null}]}";
        CHECK(n >= (int)strlen(tail) && strcmp(buf + n - strlen(tail), tail) == 0);
        size_t head = strlen("{\"errors\":[{\"code\":\"DENIED\",\"message\":\"");
        size_t msg_len = (size_t)n - strlen(tail) - head;
        CHECK(memcmp(buf, full, head + msg_len) == 0);
        static const size_t msg_boundaries[] = {0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 18, 20};
        bool at_boundary = false;
        for (size_t i = 0; i < sizeof msg_boundaries / sizeof msg_boundaries[0]; i++)
            at_boundary |= msg_boundaries[i] == msg_len;
        CHECK(at_boundary);
    }

    /* With a detail the skeleton has two more bytes, and the message is served first. */
    int n = registry_error_json(REG_ERR_DENIED, "abcdef", "ghijkl", buf,
                                sizeof skeleton_null - strlen("null") + 2 + 8);
    CHECK(n > 0);
    CHECK_STR(buf, "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"abcdef\",\"detail\":\"gh\"}]}");
}

#define IMAGE_DIGEST "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_image_refs_accepted(void)
{
    static const struct {
        const char *text, *registry, *name, *tag, *digest;
    } ok[] = {
        {"team/app:1", "", "team/app", "1", ""},
        {"team/app", "", "team/app", "latest", ""},
        {"app", "", "app", "latest", ""},
        {"team/app@" IMAGE_DIGEST, "", "team/app", "", IMAGE_DIGEST},
        {"team/app:1@" IMAGE_DIGEST, "", "team/app", "", IMAGE_DIGEST},
        {"127.0.0.1:5000/team/app:1", "127.0.0.1:5000", "team/app", "1", ""},
        {"registry.example.com/org/app:2.0", "registry.example.com", "org/app", "2.0", ""},
        {"localhost/app:x", "localhost", "app", "x", ""},
        {"localhost:5000/a/b/c:v1.2_3-rc", "localhost:5000", "a/b/c", "v1.2_3-rc", ""},
        {"team.io", "", "team.io", "latest", ""}, /* no '/': a name, not a registry */
    };
    char why[300];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct registry_image_ref r;
        why[0] = '\0';
        CHECK_INT(registry_image_ref_parse(ok[i].text, &r, why, sizeof(why)), 0);
        CHECK_STR(why, "");
        CHECK_STR(r.registry, ok[i].registry);
        CHECK_STR(r.name, ok[i].name);
        CHECK_STR(r.tag, ok[i].tag);
        CHECK_STR(r.digest, ok[i].digest);
    }
}

static void test_image_refs_refused(void)
{
    static const struct {
        const char *text, *says;
    } bad[] = {
        {"", "not an image reference"},
        {"Team/App:1", "\"Team/App\" is not a valid repository name"},
        {"team/app:", "\"\" is not a valid tag"},
        {"team/app:bad tag", "not a valid tag"},
        {"team/app@sha256:abc", "\"sha256:abc\" is not a digest"},
        {"team/app@md5:0123", "is not a digest"},
        {"registry.example.com/:1", "not a valid repository name"},
        {"team//app:1", "not a valid repository name"},
        {"registry.example.com/", "not a valid repository name"},
    };
    char why[300];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct registry_image_ref r;
        CHECK_INT(registry_image_ref_parse(bad[i].text, &r, why, sizeof(why)), -EINVAL);
        CHECK_CONTAINS(why, bad[i].says);
    }
}

int main(void)
{
    RUN(test_names);
    RUN(test_tags);
    RUN(test_digests);
    RUN(test_routes);
    RUN(test_hostile_paths);
    RUN(test_long_paths);
    RUN(test_route_fuzz);
    RUN(test_error_table);
    RUN(test_error_json_exact);
    RUN(test_error_json_truncation);
    RUN(test_image_refs_accepted);
    RUN(test_image_refs_refused);
    return check_summary();
}
