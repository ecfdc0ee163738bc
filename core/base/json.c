/*
 * json.c: the strict JSON reader of json.h.
 *
 * json_parse is one loop over the text with a state and a stack of open containers
 * (token indexes); values are checked as they are met, so that later reads (decoding
 * a string, converting a number) can trust the bytes of a token.
 */
#include "base/json.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads 4 hex digits at s[0..n); -1 when they are not there. */
static long read_hex4(const char *s, size_t n)
{
    if (n < 4) return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hex_value(s[k]);
        if (h < 0) return -1;
        v = (v << 4) | h;
    }
    return v;
}

/*
 * Checks the string that starts with the quote at text[pos]; returns the index one past
 * its closing quote, or 0 when it is not a valid string.
 */
static size_t scan_string(const char *text, size_t len, size_t pos)
{
    size_t p = pos + 1;
    while (p < len) {
        unsigned char c = (unsigned char)text[p];
        if (c == '"') return p + 1;
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (p + 1 >= len) return 0;
            char e = text[p + 1];
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
                e == 't') {
                p += 2;
                continue;
            }
            if (e != 'u') return 0;
            long u = read_hex4(text + p + 2, len - (p + 2));
            if (u < 0 || (u >= 0xdc00 && u <= 0xdfff))
                return 0; /* not hex, or a low surrogate on its own */
            p += 6;
            if (u >= 0xd800 && u <= 0xdbff) {
                if (p + 1 >= len || text[p] != '\\' || text[p + 1] != 'u') return 0;
                long lo = read_hex4(text + p + 2, len - (p + 2));
                if (lo < 0xdc00 || lo > 0xdfff) return 0;
                p += 6;
            }
            continue;
        }
        if (c < 0x80) {
            p++;
            continue;
        }
        unsigned int cp;
        size_t step = json_utf8_decode((const unsigned char *)text + p, len - p, &cp);
        if (step == 0) return 0;
        p += step;
    }
    return 0;
}

/* Checks the number at text[pos]; returns the index one past it, or 0. */
static size_t scan_number(const char *text, size_t len, size_t pos)
{
    size_t p = pos;
    if (p < len && text[p] == '-') p++;
    if (p >= len || !is_digit(text[p])) return 0;
    if (text[p] == '0') {
        p++;
    } else {
        while (p < len && is_digit(text[p]))
            p++;
    }
    if (p < len && text[p] == '.') {
        p++;
        if (p >= len || !is_digit(text[p])) return 0;
        while (p < len && is_digit(text[p]))
            p++;
    }
    if (p < len && (text[p] == 'e' || text[p] == 'E')) {
        p++;
        if (p < len && (text[p] == '+' || text[p] == '-')) p++;
        if (p >= len || !is_digit(text[p])) return 0;
        while (p < len && is_digit(text[p]))
            p++;
    }
    return p;
}

enum parse_state {
    EXPECT_VALUE,       /* a value (the root, an element, a member's value) */
    EXPECT_FIRST,       /* just after '[' or '{': a first element/key, or the close */
    EXPECT_KEY,         /* after ',' in an object */
    EXPECT_COLON,       /* after a key */
    EXPECT_COMMA_CLOSE, /* after an element or member */
    EXPECT_END,         /* the root is complete: only whitespace may follow */
};

int json_parse(const char *text, size_t len, struct json_token *tokens, size_t cap,
               struct json_doc *doc)
{
    uint32_t stack[JSON_MAX_DEPTH];
    size_t depth = 0, n = 0, pos = 0;
    enum parse_state state = EXPECT_VALUE;

    if (len > JSON_MAX_TEXT) return -E2BIG;
    for (;;) {
        while (pos < len && is_ws(text[pos]))
            pos++;
        if (state == EXPECT_END) {
            if (pos != len) return -EINVAL;
            break;
        }
        if (pos >= len) return -EINVAL;
        char c = text[pos];
        struct json_token *top = depth > 0 ? &tokens[stack[depth - 1]] : NULL;

        if (state == EXPECT_COLON) {
            if (c != ':') return -EINVAL;
            pos++;
            state = EXPECT_VALUE;
            continue;
        }
        if (state == EXPECT_COMMA_CLOSE || state == EXPECT_FIRST) {
            char close = top->type == JSON_OBJECT ? '}' : ']';
            if (c == close) {
                top->len = (uint32_t)(pos + 1 - top->start);
                top->end = (uint32_t)n;
                depth--;
                pos++;
                state = depth == 0 ? EXPECT_END : EXPECT_COMMA_CLOSE;
                continue;
            }
            if (state == EXPECT_COMMA_CLOSE) {
                if (c != ',') return -EINVAL;
                pos++;
                while (pos < len && is_ws(text[pos]))
                    pos++;
                if (pos >= len) return -EINVAL;
                c = text[pos];
            }
            state = top->type == JSON_OBJECT ? EXPECT_KEY : EXPECT_VALUE;
        }

        /* A key or a value starts at pos. */
        if (n >= cap) return -E2BIG;
        struct json_token *t = &tokens[n];
        t->start = (uint32_t)pos;
        t->count = 0;
        if (state == EXPECT_KEY) {
            if (c != '"') return -EINVAL;
            size_t after = scan_string(text, len, pos);
            if (after == 0) return -EINVAL;
            t->type = JSON_STRING;
            t->len = (uint32_t)(after - pos);
            t->end = (uint32_t)(++n);
            top->count++;
            pos = after;
            state = EXPECT_COLON;
            continue;
        }
        /* EXPECT_VALUE */
        if (top != NULL && top->type == JSON_ARRAY) top->count++;
        if (c == '{' || c == '[') {
            if (depth >= JSON_MAX_DEPTH) return -ELOOP;
            t->type = c == '{' ? JSON_OBJECT : JSON_ARRAY;
            stack[depth++] = (uint32_t)n++;
            pos++;
            state = EXPECT_FIRST;
            continue;
        }
        size_t after;
        if (c == '"') {
            after = scan_string(text, len, pos);
            t->type = JSON_STRING;
        } else if (c == '-' || is_digit(c)) {
            after = scan_number(text, len, pos);
            t->type = JSON_NUMBER;
        } else if (len - pos >= 4 && memcmp(text + pos, "true", 4) == 0) {
            after = pos + 4;
            t->type = JSON_TRUE;
        } else if (len - pos >= 5 && memcmp(text + pos, "false", 5) == 0) {
            after = pos + 5;
            t->type = JSON_FALSE;
        } else if (len - pos >= 4 && memcmp(text + pos, "null", 4) == 0) {
            after = pos + 4;
            t->type = JSON_NULL;
        } else {
            return -EINVAL;
        }
        if (after == 0) return -EINVAL;
        t->len = (uint32_t)(after - pos);
        t->end = (uint32_t)(++n);
        pos = after;
        state = depth == 0 ? EXPECT_END : EXPECT_COMMA_CLOSE;
    }
    doc->text = text;
    doc->tokens = tokens;
    doc->n_tokens = n;
    return 0;
}

/*
 * Decodes one character of a checked string body at s[*p] (not the closing quote) into
 * out; returns its byte count (1..4) and moves *p past it.
 */
static size_t string_unit(const char *s, size_t *p, unsigned char out[4])
{
    size_t i = *p;
    if (s[i] != '\\') {
        out[0] = (unsigned char)s[i];
        *p = i + 1;
        return 1;
    }
    char e = s[i + 1];
    *p = i + 2;
    switch (e) {
    case 'b':
        out[0] = '\b';
        return 1;
    case 'f':
        out[0] = '\f';
        return 1;
    case 'n':
        out[0] = '\n';
        return 1;
    case 'r':
        out[0] = '\r';
        return 1;
    case 't':
        out[0] = '\t';
        return 1;
    case 'u':
        break;
    default: /* '"', '\\', '/' */
        out[0] = (unsigned char)e;
        return 1;
    }
    unsigned long cp = (unsigned long)read_hex4(s + i + 2, 4);
    *p = i + 6;
    if (cp >= 0xd800 && cp <= 0xdbff) {
        unsigned long lo = (unsigned long)read_hex4(s + i + 8, 4);
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        *p = i + 12;
    }
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

bool json_string_equals(const struct json_doc *doc, size_t i, const char *s, size_t n)
{
    if (i >= doc->n_tokens || doc->tokens[i].type != JSON_STRING) return false;
    const struct json_token *t = &doc->tokens[i];
    const char *body = doc->text + t->start;
    size_t p = 1, last = t->len - 1, matched = 0;
    while (p < last) {
        unsigned char unit[4];
        size_t k = string_unit(body, &p, unit);
        if (k > n - matched || memcmp(unit, s + matched, k) != 0) return false;
        matched += k;
    }
    return matched == n;
}

int json_string_decode(const struct json_doc *doc, size_t i, char *buf, size_t cap, size_t *out_len)
{
    if (i >= doc->n_tokens || doc->tokens[i].type != JSON_STRING) return -EINVAL;
    const struct json_token *t = &doc->tokens[i];
    const char *body = doc->text + t->start;
    size_t p = 1, last = t->len - 1, n = 0;
    while (p < last) {
        unsigned char unit[4];
        size_t k = string_unit(body, &p, unit);
        if (cap < 1 || k > cap - 1 - n) return -ENOSPC;
        memcpy(buf + n, unit, k);
        n += k;
    }
    if (cap < 1) return -ENOSPC;
    buf[n] = '\0';
    *out_len = n;
    return 0;
}

int json_object_get(const struct json_doc *doc, size_t obj, const char *key, size_t *value)
{
    if (obj >= doc->n_tokens || doc->tokens[obj].type != JSON_OBJECT) return -EINVAL;
    size_t key_len = strlen(key), found = 0, members = doc->tokens[obj].count;
    bool have = false;
    size_t k = obj + 1;
    for (size_t m = 0; m < members; m++) {
        if (json_string_equals(doc, k, key, key_len)) {
            if (have) return -EINVAL;
            have = true;
            found = k + 1;
        }
        k = doc->tokens[k + 1].end;
    }
    if (!have) return -ENOENT;
    *value = found;
    return 0;
}

/* True when number token t is written as an integer: no fraction, no exponent. */
static bool written_as_integer(const char *s, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (s[k] == '.' || s[k] == 'e' || s[k] == 'E') return false;
    return true;
}

int json_integer_int64(const struct json_doc *doc, size_t i, int64_t *out)
{
    if (i >= doc->n_tokens || doc->tokens[i].type != JSON_NUMBER) return -EINVAL;
    const struct json_token *t = &doc->tokens[i];
    const char *s = doc->text + t->start;
    size_t n = t->len;
    if (!written_as_integer(s, n)) return -EINVAL;
    /* Exact, with overflow checked (the parser let only digits and a leading '-' in). */
    bool neg = s[0] == '-';
    uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (size_t k = neg ? 1 : 0; k < n; k++) {
        unsigned d = (unsigned)(s[k] - '0');
        if (v > (limit - d) / 10) return -ERANGE;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

int json_number_int64(const struct json_doc *doc, size_t i, int64_t *out)
{
    if (i >= doc->n_tokens || doc->tokens[i].type != JSON_NUMBER) return -EINVAL;
    const struct json_token *t = &doc->tokens[i];
    const char *s = doc->text + t->start;
    size_t n = t->len;
    if (written_as_integer(s, n)) return json_integer_int64(doc, i, out);
    char copy[64];
    if (n >= sizeof(copy)) return -ERANGE;
    memcpy(copy, s, n);
    copy[n] = '\0';
    double d = strtod(copy, NULL);
    if (!(d > -9223372036854775808.0 && d < 9223372036854775808.0)) return -ERANGE;
    *out = (int64_t)d;
    return 0;
}

/* ---- Writing JSON strings --------------------------------------------------------------- */

size_t json_utf8_decode(const unsigned char *s, size_t n, unsigned int *cp)
{
    unsigned char c, lo = 0x80, hi = 0xbf; /* lo..hi: the allowed second bytes */
    size_t len;
    unsigned int v;

    if (n == 0) return 0;
    c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        if (c == 0xe0) lo = 0xa0; /* overlong */
        if (c == 0xed) hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xf0) lo = 0x90; /* overlong */
        if (c == 0xf4) hi = 0x8f; /* past U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

size_t json_escape_prefix(const char *src, size_t n, char *buf, size_t cap, size_t *consumed)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)src;
    size_t in = 0, out = 0;

    while (in < n) {
        char esc[6];
        const char *piece = esc;
        size_t piece_len, step = 1;
        unsigned int cp = s[in];

        if (cp >= 0x80) {
            step = json_utf8_decode(s + in, n - in, &cp);
            if (step == 0) {
                step = 1;
                cp = 0xfffd;
            }
        }
        if (cp == '"' || cp == '\\') {
            esc[0] = '\\';
            esc[1] = (char)cp;
            piece_len = 2;
        } else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 ||
                   cp == 0xfffd) {
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = hex[(cp >> 12) & 0xf];
            esc[3] = hex[(cp >> 8) & 0xf];
            esc[4] = hex[(cp >> 4) & 0xf];
            esc[5] = hex[cp & 0xf];
            piece_len = 6;
        } else {
            piece = src + in;
            piece_len = step;
        }
        if (piece_len > cap - out) break;
        memcpy(buf + out, piece, piece_len);
        out += piece_len;
        in += step;
    }
    *consumed = in;
    return out;
}

int json_escape(const char *src, size_t n, char *buf, size_t len)
{
    size_t consumed, written;

    if (len == 0) return -ENOSPC;
    if (len - 1 > INT_MAX) len = (size_t)INT_MAX + 1;
    written = json_escape_prefix(src, n, buf, len - 1, &consumed);
    if (consumed < n) return -ENOSPC;
    buf[written] = '\0';
    return (int)written;
}
