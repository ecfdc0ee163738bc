/*
 * test_json.c: the strict JSON reader: what it accepts and how it splits it, what it
 * refuses, decoding of strings and numbers, and hostile input that must neither crash
 * nor be read past its end (run under ASan: every input is copied into a buffer of its
 * exact length).
 */
#include "check.h"
#include "base/json.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Parses s (copied to a heap buffer of exactly its length); returns the parse result. */
static int parse_exact(const char *s, size_t len, struct json_token *tok, size_t cap,
                       struct json_doc *doc, char **copy)
{
    *copy = malloc(len > 0 ? len : 1);
    memcpy(*copy, s, len);
    return json_parse(*copy, len, tok, cap, doc);
}

static int parse_str(const char *s)
{
    struct json_token tok[256];
    struct json_doc doc;
    char *copy;
    int rc = parse_exact(s, strlen(s), tok, 256, &doc, &copy);
    free(copy);
    return rc;
}

static void test_accepts(void)
{
    static const char *const ok[] = {
        "{}",
        "[]",
        " \t\r\n{ } \n",
        "0",
        "-0",
        "1.5e+10",
        "-12.25E-3",
        "true",
        "false",
        "null",
        "\"\"",
        "\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"",
        "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"",
        "{\"a\":[1,2,{\"b\":null}],\"c\":{}}",
        "[[[[[[]]]]]]",
        "{\"a\":1,\"a\":2}", /* parses; json_object_get refuses to choose */
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int rc = parse_str(ok[i]);
        if (rc != 0) fprintf(stderr, "refused: %s\n", ok[i]);
        CHECK_INT(rc, 0);
    }
}

static void test_refuses(void)
{
    static const char *const bad[] = {
        "",
        " ",
        "{",
        "}",
        "[1,]",
        "{\"a\":1,}",
        "{,}",
        "[,1]",
        "{\"a\" 1}",
        "{\"a\":}",
        "{a:1}",
        "{'a':1}",
        "[1 2]",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "+1",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "truex",
        "[true false]",
        "\"abc",
        "\"a\x01\"",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"\\uD83D\"",        /* high surrogate alone */
        "\"\\uDE00\"",        /* low surrogate alone */
        "\"\\uD83D\\u0041\"", /* high surrogate, then no low one */
        "\"\xc3\"",           /* truncated UTF-8 */
        "\"\xc0\xaf\"",       /* overlong */
        "\"\xed\xa0\x80\"",   /* a surrogate in UTF-8 */
        "\"\xff\"",
        "{} {}",
        "[] x",
        "/* c */ {}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse_str(bad[i]);
        if (rc != -EINVAL) fprintf(stderr, "not refused as -EINVAL (%d): %s\n", rc, bad[i]);
        CHECK_INT(rc, -EINVAL);
    }
    /* An embedded NUL after a complete value, seen through the length. */
    struct json_token tok[4];
    struct json_doc doc;
    char *copy;
    CHECK_INT(parse_exact("[1]\0", 4, tok, 4, &doc, &copy), -EINVAL);
    free(copy);
}

static void test_depth_and_capacity(void)
{
    char deep[2 * JSON_MAX_DEPTH + 4];
    struct json_token tok[JSON_MAX_DEPTH + 2];
    struct json_doc doc;
    char *copy;

    for (int d = JSON_MAX_DEPTH; d <= JSON_MAX_DEPTH + 1; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        int rc = parse_exact(deep, 2 * (size_t)d, tok, JSON_MAX_DEPTH + 2, &doc, &copy);
        CHECK_INT(rc, d == JSON_MAX_DEPTH ? 0 : -ELOOP);
        free(copy);
    }
    /* A deep prefix that never closes: refused without recursion, whatever its length. */
    size_t n = 100000;
    char *opens = malloc(n);
    memset(opens, '[', n);
    CHECK_INT(json_parse(opens, n, tok, JSON_MAX_DEPTH + 2, &doc), -ELOOP);
    memset(opens, '{', n);
    CHECK_INT(json_parse(opens, n, tok, JSON_MAX_DEPTH + 2, &doc), -EINVAL);
    free(opens);

    CHECK_INT(parse_exact("[1,2,3]", 7, tok, 3, &doc, &copy), -E2BIG);
    free(copy);
    CHECK_INT(parse_exact("[1,2,3]", 7, tok, 4, &doc, &copy), 0);
    CHECK_INT(doc.n_tokens, 4);
    free(copy);
}

static void test_structure(void)
{
    const char *text = "{\"a\":[1,{\"x\":true},\"s\"],\"b\":null,\"c\\u0064\":-7}";
    struct json_token tok[32];
    struct json_doc doc;
    char *copy;
    size_t at, v;

    CHECK_INT(parse_exact(text, strlen(text), tok, 32, &doc, &copy), 0);
    CHECK_INT(json_type_of(&doc, 0), JSON_OBJECT);
    CHECK_INT(json_count(&doc, 0), 3);
    CHECK_INT(json_skip(&doc, 0), doc.n_tokens);

    CHECK_INT(json_object_get(&doc, 0, "a", &at), 0);
    CHECK_INT(json_type_of(&doc, at), JSON_ARRAY);
    CHECK_INT(json_count(&doc, at), 3);
    size_t e = at + 1;
    CHECK_INT(json_type_of(&doc, e), JSON_NUMBER);
    e = json_skip(&doc, e);
    CHECK_INT(json_type_of(&doc, e), JSON_OBJECT);
    CHECK_INT(json_object_get(&doc, e, "x", &v), 0);
    CHECK_INT(json_type_of(&doc, v), JSON_TRUE);
    e = json_skip(&doc, e);
    CHECK(json_string_equals(&doc, e, "s", 1));

    CHECK_INT(json_object_get(&doc, 0, "b", &at), 0);
    CHECK_INT(json_type_of(&doc, at), JSON_NULL);
    /* Keys are compared decoded: "c\u0064" is "cd". */
    CHECK_INT(json_object_get(&doc, 0, "cd", &at), 0);
    int64_t num;
    CHECK_INT(json_number_int64(&doc, at, &num), 0);
    CHECK_INT(num, -7);

    CHECK_INT(json_object_get(&doc, 0, "x", &at), -ENOENT); /* not a top-level key */
    CHECK_INT(json_object_get(&doc, 1, "x", &at), -EINVAL); /* not an object */
    free(copy);

    const char *dup = "{\"k\":1,\"\\u006b\":2}";
    CHECK_INT(parse_exact(dup, strlen(dup), tok, 32, &doc, &copy), 0);
    CHECK_INT(json_object_get(&doc, 0, "k", &at), -EINVAL);
    free(copy);
}

static void test_strings(void)
{
    const char *text =
        "[\"a\\\"b\\\\c\\/d\\n\",\"\\u00e9\\u20ac\\uD83D\\uDE00\",\"x\\u0000y\",\"\"]";
    struct json_token tok[8];
    struct json_doc doc;
    char *copy;
    char buf[64];
    size_t n;

    CHECK_INT(parse_exact(text, strlen(text), tok, 8, &doc, &copy), 0);
    CHECK_INT(json_string_decode(&doc, 1, buf, sizeof(buf), &n), 0);
    CHECK_STR(buf, "a\"b\\c/d\n");
    CHECK_INT(n, 8);
    CHECK_INT(json_string_decode(&doc, 2, buf, sizeof(buf), &n), 0);
    CHECK_STR(buf, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    CHECK(json_string_equals(&doc, 2, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    CHECK(!json_string_equals(&doc, 2, "\xc3\xa9\xe2\x82\xac", 5));
    CHECK_INT(json_string_decode(&doc, 3, buf, sizeof(buf), &n), 0);
    CHECK_INT(n, 3);
    CHECK(memcmp(buf, "x\0y", 3) == 0);
    CHECK(json_string_equals(&doc, 3, "x\0y", 3));
    CHECK(!json_string_equals(&doc, 3, "x", 1));
    CHECK_INT(json_string_decode(&doc, 4, buf, sizeof(buf), &n), 0);
    CHECK_INT(n, 0);
    CHECK(json_string_equals(&doc, 4, "", 0));

    /* Buffers too small, by one and by all. */
    CHECK_INT(json_string_decode(&doc, 1, buf, 8, &n), -ENOSPC);
    CHECK_INT(json_string_decode(&doc, 1, buf, 9, &n), 0);
    CHECK_INT(json_string_decode(&doc, 4, buf, 0, &n), -ENOSPC);
    CHECK_INT(json_string_decode(&doc, 0, buf, sizeof(buf), &n), -EINVAL); /* the array */
    CHECK(!json_string_equals(&doc, 0, "", 0));
    free(copy);
}

static void test_numbers(void)
{
    static const struct {
        const char *text;
        int rc;
        int64_t value;
    } cases[] = {
        {"0", 0, 0},
        {"-0", 0, 0},
        {"1767225600", 0, 1767225600},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", -ERANGE, 0},
        {"-9223372036854775809", -ERANGE, 0},
        {"99999999999999999999999", -ERANGE, 0},
        {"1767225600.9", 0, 1767225600},
        {"1.7672256e9", 0, 1767225600},
        {"-2.5", 0, -2},
        {"1e400", -ERANGE, 0},
        {"1e19", -ERANGE, 0},
        {"0.000000000000000000000000000000000000000000000000000000000000000001", -ERANGE, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_token tok[2];
        struct json_doc doc;
        char *copy;
        int64_t v = 12345;
        CHECK_INT(parse_exact(cases[i].text, strlen(cases[i].text), tok, 2, &doc, &copy), 0);
        int rc = json_number_int64(&doc, 0, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].value))
            fprintf(stderr, "number case %s\n", cases[i].text);
        CHECK_INT(rc, cases[i].rc);
        if (rc == 0) CHECK_INT(v, cases[i].value);
        free(copy);
    }
    struct json_token tok[2];
    struct json_doc doc;
    char *copy;
    int64_t v;
    CHECK_INT(parse_exact("\"1\"", 3, tok, 2, &doc, &copy), 0);
    CHECK_INT(json_number_int64(&doc, 0, &v), -EINVAL);
    free(copy);
}

/* Integers as Go's encoding/json reads an int64: no fraction, no exponent, in range. */
static void test_integers(void)
{
    static const struct {
        const char *text;
        int rc;
        int64_t value;
    } cases[] = {
        {"300", 0, 300},
        {"-0", 0, 0},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", -ERANGE, 0},
        {"300.5", -EINVAL, 0},
        {"300.0", -EINVAL, 0},
        {"3e2", -EINVAL, 0},
        {"3E2", -EINVAL, 0},
        {"\"300\"", -EINVAL, 0},
        {"null", -EINVAL, 0},
        {"true", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_token tok[2];
        struct json_doc doc;
        char *copy;
        int64_t v = 12345;
        CHECK_INT(parse_exact(cases[i].text, strlen(cases[i].text), tok, 2, &doc, &copy), 0);
        int rc = json_integer_int64(&doc, 0, &v);
        if (rc != cases[i].rc) fprintf(stderr, "integer case %s\n", cases[i].text);
        CHECK_INT(rc, cases[i].rc);
        CHECK_INT(v, rc == 0 ? cases[i].value : 12345); /* untouched on failure */
        free(copy);
    }
}

/* xorshift64*: deterministic, so a failure can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

/*
 * Mutations of a valid document and random bytes from a JSON-ish alphabet: never a
 * crash or a read past the end (ASan), and whenever a text parses, json_tokens_for(len)
 * tokens were enough and every string in it decodes.
 */
static void test_hostile(void)
{
    static const char seed[] =
        "{\"iss\":\"issuer\",\"aud\":[\"svc\",\"x\"],\"exp\":1767225900,\"nbf\":-1.5e3,"
        "\"access\":[{\"type\":\"repository\",\"name\":\"alice/app\",\"actions\":[\"pull\"]}],"
        "\"s\":\"\\u00e9\\uD83D\\uDE00\\n\",\"t\":true,\"f\":false,\"z\":null}";
    static const char alphabet[] =
        "{}[]\",:\\u0123456789abcdefABCDEF-+.eEtrufalsn \t\n\x80\xc3\xff";
    size_t seed_len = strlen(seed);
    size_t parsed = 0;

    for (int round = 0; round < 200000; round++) {
        char text[512];
        size_t len;
        if (round % 2 == 0) {
            len = seed_len;
            memcpy(text, seed, len);
            int edits = 1 + (int)(rng_next() % 4);
            for (int k = 0; k < edits; k++) {
                size_t at = (size_t)(rng_next() % len);
                switch (rng_next() % 3) {
                case 0:
                    text[at] = alphabet[rng_next() % (sizeof(alphabet) - 1)];
                    break;
                case 1:
                    len = at; /* truncate */
                    break;
                default:
                    text[at] = (char)(rng_next() & 0xff);
                    break;
                }
                if (len == 0) break;
            }
        } else {
            len = (size_t)(rng_next() % 64);
            for (size_t k = 0; k < len; k++)
                text[k] = alphabet[rng_next() % (sizeof(alphabet) - 1)];
        }
        size_t cap = json_tokens_for(len);
        struct json_token *tok = malloc(cap * sizeof(*tok));
        char *copy = malloc(len > 0 ? len : 1);
        memcpy(copy, text, len);
        struct json_doc doc;
        int rc = json_parse(copy, len, tok, cap, &doc);
        CHECK(rc == 0 || rc == -EINVAL || rc == -ELOOP);
        if (rc == 0) {
            parsed++;
            for (size_t i = 0; i < doc.n_tokens; i++) {
                char buf[512];
                size_t n;
                int64_t v;
                if (json_type_of(&doc, i) == JSON_STRING)
                    CHECK_INT(json_string_decode(&doc, i, buf, sizeof(buf), &n), 0);
                if (json_type_of(&doc, i) == JSON_NUMBER) {
                    int r = json_number_int64(&doc, i, &v);
                    CHECK(r == 0 || r == -ERANGE);
                }
                if (json_type_of(&doc, i) == JSON_OBJECT) (void)json_object_get(&doc, i, "exp", &n);
            }
        }
        free(copy);
        free(tok);
    }
    CHECK(parsed > 100); /* the mutations did reach the decoders */
}

static void check_escape(const char *src, size_t n, const char *want)
{
    char buf[256];
    int r = json_escape(src, n, buf, sizeof buf);
    CHECK_INT(r, strlen(want));
    CHECK_STR(buf, want);
}

static void test_json_escape(void)
{
    check_escape("", 0, "");
    check_escape("plain text", 10, "plain text");
    check_escape("a\"b\\c", 5, "a\\\"b\\\\c");
    check_escape("\n\r\t\x01\x1f\x7f", 6, "\\u000a\\u000d\\u0009\\u0001\\u001f\\u007f");
    check_escape("nul\0x", 5, "nul\\u0000x");
    check_escape("</script>", 9, "</script>");
    /* Valid UTF-8 passes through; C1 controls and line separators are escaped. */
    check_escape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14,
                 "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    check_escape("\xc2\x85|\xe2\x80\xa8|\xe2\x80\xa9", 10, "\\u0085|\\u2028|\\u2029");
    /* Each invalid byte is one replacement. */
    check_escape("\xff", 1, "\\ufffd");
    check_escape("a\x80z", 3, "a\\ufffdz");
    check_escape("\xc3", 1, "\\ufffd");
    check_escape("\xe2\x82", 2, "\\ufffd\\ufffd");
    check_escape("\xc0\xaf", 2, "\\ufffd\\ufffd");                       /* overlong '/' */
    check_escape("\xe0\x80\xaf", 3, "\\ufffd\\ufffd\\ufffd");            /* overlong '/' */
    check_escape("\xed\xa0\x80", 3, "\\ufffd\\ufffd\\ufffd");            /* surrogate */
    check_escape("\xf4\x90\x80\x80", 4, "\\ufffd\\ufffd\\ufffd\\ufffd"); /* > U+10FFFF */
    check_escape("\xf8\x88\x80\x80\x80", 5, "\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd");
    check_escape("\xc3\xa9\xc3", 3, "\xc3\xa9\\ufffd");

    char small[8];
    CHECK_INT(json_escape("1234567", 7, small, sizeof small), 7);
    CHECK_INT(json_escape("12345678", 8, small, sizeof small), -ENOSPC);
    CHECK_INT(json_escape("123456\n", 7, small, sizeof small), -ENOSPC);
    CHECK_INT(json_escape("", 0, small, 0), -ENOSPC);

    /* The prefix form never splits an escape or a UTF-8 sequence. */
    static const char mixed[] = "a\"\xc3\xa9\n\xff\xf0\x9f\x98\x80z";
    char full[64], part[64];
    size_t consumed;
    size_t full_len = json_escape_prefix(mixed, sizeof mixed - 1, full, sizeof full, &consumed);
    CHECK_INT(consumed, sizeof mixed - 1);
    static const size_t boundaries[] = {0, 1, 3, 5, 11, 17, 21, 22};
    for (size_t cap = 0; cap <= full_len; cap++) {
        size_t w = json_escape_prefix(mixed, sizeof mixed - 1, part, cap, &consumed);
        size_t want = 0;
        for (size_t i = 0; i < sizeof boundaries / sizeof boundaries[0]; i++)
            if (boundaries[i] <= cap) want = boundaries[i];
        CHECK_INT(w, want);
        CHECK(memcmp(part, full, w) == 0);
    }
    CHECK_INT(full_len, 22);
}

static void test_utf8_decode(void)
{
    unsigned int cp = 0;
    CHECK_INT(json_utf8_decode((const unsigned char *)"A", 1, &cp), 1);
    CHECK_INT(cp, 'A');
    CHECK_INT(json_utf8_decode((const unsigned char *)"\xc3\xa9", 2, &cp), 2);
    CHECK_INT(cp, 0xe9);
    CHECK_INT(json_utf8_decode((const unsigned char *)"\xef\xbf\xbd", 3, &cp), 3);
    CHECK_INT(cp, 0xfffd);
    CHECK_INT(json_utf8_decode((const unsigned char *)"\xf4\x8f\xbf\xbf", 4, &cp), 4);
    CHECK_INT(cp, 0x10ffff);
    CHECK_INT(json_utf8_decode((const unsigned char *)"\xc3\xa9", 1, &cp), 0);
    CHECK_INT(json_utf8_decode((const unsigned char *)"\xc3(", 2, &cp), 0);
    CHECK_INT(json_utf8_decode((const unsigned char *)"", 0, &cp), 0);
}

int main(void)
{
    RUN(test_accepts);
    RUN(test_refuses);
    RUN(test_depth_and_capacity);
    RUN(test_structure);
    RUN(test_strings);
    RUN(test_numbers);
    RUN(test_integers);
    RUN(test_hostile);
    RUN(test_json_escape);
    RUN(test_utf8_decode);
    return check_summary();
}
