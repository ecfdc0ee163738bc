/*
 * json.h: a small, strict JSON reader (RFC 8259) for the bits of JSON the cache must read
 * itself, such as a bearer token's header and claims (auth.h), and the string escaping
 * that every JSON the cache writes goes through (error bodies, JSON log lines).
 *
 * json_parse checks the whole text and splits it into tokens, one per value and one per
 * object key, in document order, into an array the caller provides. Nothing is copied or
 * allocated: tokens point into the text, which must outlive the document. The parser is
 * a loop with an explicit stack: nesting past JSON_MAX_DEPTH is refused, not recursed
 * into, and no byte outside text[0..len) is ever read, whatever the input.
 *
 * Strict means: only the RFC's grammar (no comments, trailing commas, single quotes,
 * leading zeros, NaN, bare control bytes in strings), exactly one value with only
 * whitespace around it, valid UTF-8, and \u escapes whose surrogates come in pairs.
 * Objects may repeat a key; json_object_get refuses to pick one of them.
 */
#ifndef CC_JSON_H
#define CC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32
#define JSON_MAX_TEXT (16u * 1024 * 1024)

enum json_type {
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING, /* values and object keys */
    JSON_ARRAY,
    JSON_OBJECT,
};

/* The fields are for json.c; callers use the functions below. */
struct json_token {
    uint8_t type;   /* enum json_type */
    uint32_t start; /* the value's bytes: text[start .. start+len), quotes included */
    uint32_t len;
    uint32_t end;   /* index of the first token after this value (and its children) */
    uint32_t count; /* arrays: elements; objects: members */
};

struct json_doc {
    const char *text;
    const struct json_token *tokens; /* tokens[0] is the root value */
    size_t n_tokens;
};

/*
 * A token array of this many entries is enough for any valid text of len bytes (every
 * value or key but the first needs a byte of its own and a separator before it).
 */
static inline size_t json_tokens_for(size_t len)
{
    return (len + 1) / 2 + 1;
}

/*
 * Parses text[0..len) into tokens[0..cap). Returns 0 and fills *doc, or -EINVAL (not
 * strict JSON), -ELOOP (nested deeper than JSON_MAX_DEPTH), -E2BIG (more tokens than
 * cap, or len past JSON_MAX_TEXT).
 */
int json_parse(const char *text, size_t len, struct json_token *tokens, size_t cap,
               struct json_doc *doc);

/* The type of token i (i < doc->n_tokens). */
static inline enum json_type json_type_of(const struct json_doc *doc, size_t i)
{
    return (enum json_type)doc->tokens[i].type;
}

/*
 * Element iteration: for an array at index a, the first element is at a + 1 (when
 * json_count > 0) and each next one at json_skip of the previous. Objects hold key,
 * value, key, value...: a member's key is a string token and its value follows it.
 */
static inline size_t json_count(const struct json_doc *doc, size_t i)
{
    return doc->tokens[i].count;
}

static inline size_t json_skip(const struct json_doc *doc, size_t i)
{
    return doc->tokens[i].end;
}

/*
 * Finds the member `key` (a C string, compared after decoding escapes) of the object at
 * index obj. Returns 0 with the value's index in *value, -ENOENT when there is no such
 * member, -EINVAL when obj is not an object or the key occurs more than once.
 */
int json_object_get(const struct json_doc *doc, size_t obj, const char *key, size_t *value);

/* True when token i is a string whose decoded bytes are exactly s[0..n). */
bool json_string_equals(const struct json_doc *doc, size_t i, const char *s, size_t n);

/*
 * Decodes string token i (escapes resolved, \u as UTF-8) into buf, NUL-terminated, and
 * its length (without the NUL; the string may itself contain NUL bytes) into *out_len.
 * Returns 0, -EINVAL when token i is not a string, or -ENOSPC when buf is too small.
 * A decoded string is never longer than its token's len - 2.
 */
int json_string_decode(const struct json_doc *doc, size_t i, char *buf, size_t cap,
                       size_t *out_len);

/*
 * The number at token i as an integer, a fraction truncated toward zero. Returns 0,
 * -EINVAL when the token is not a number, -ERANGE when it does not fit an int64_t.
 */
int json_number_int64(const struct json_doc *doc, size_t i, int64_t *out);

/*
 * The number at token i when it is written as an integer (no fraction, no exponent), as
 * Go's encoding/json reads an int64: "300" and "-0" are, "300.5", "300.0" and "3e2" are
 * not. Returns 0, -EINVAL when the token is not a number written so, -ERANGE when it
 * does not fit an int64_t.
 */
int json_integer_int64(const struct json_doc *doc, size_t i, int64_t *out);

/* --- Writing ------------------------------------------------------------------------ */

/*
 * JSON string escaping of src[0..n) into buf (without quotes), NUL-terminated. Returns
 * length or -ENOSPC (buf is then unspecified). '"' and '\\' get a backslash; control bytes,
 * DEL, the C1 controls and U+2028/U+2029 are written as \u00XX / \u20XX; other valid
 * UTF-8 passes through; each byte of invalid UTF-8 becomes \ufffd.
 */
int json_escape(const char *src, size_t n, char *buf, size_t len);

/*
 * The same escaping, as much of src as fits: writes whole escapes only (never half of one
 * or of a UTF-8 sequence) into buf[0..cap), without a NUL. Returns the bytes written and
 * sets *consumed to the bytes of src they stand for.
 */
size_t json_escape_prefix(const char *src, size_t n, char *buf, size_t cap, size_t *consumed);

/*
 * Decodes one UTF-8 sequence at s[0..n): returns its length (1..4) and the code point in
 * *cp, or 0 when the bytes there are not valid UTF-8 (overlong, surrogate, > U+10FFFF,
 * truncated, stray continuation byte).
 */
size_t json_utf8_decode(const unsigned char *s, size_t n, unsigned int *cp);

#endif
