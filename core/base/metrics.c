/*
 * metrics.c: the Prometheus text format's lines. See metrics.h.
 */
#include "base/metrics.h"

#include <stdlib.h>
#include <string.h>

void metrics_help(struct textbuf *out, const char *name, const char *type, const char *text)
{
    textbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

void metrics_value(struct textbuf *out, const char *name, const char *type, const char *text,
                   uint64_t value)
{
    metrics_help(out, name, type, text);
    textbuf_printf(out, "%s %llu\n", name, (unsigned long long)value);
}

void metrics_label_value(struct textbuf *out, const char *value)
{
    for (const char *v = value; *v != '\0';) {
        size_t plain = strcspn(v, "\"\\\n");
        textbuf_put(out, v, plain);
        v += plain;
        if (*v == '\0') break;
        textbuf_puts(out, *v == '\n' ? "\\n" : *v == '"' ? "\\\"" : "\\\\");
        v++;
    }
}

void metrics_labelled(struct textbuf *out, const char *name, const char *label, const char *value,
                      uint64_t n)
{
    textbuf_printf(out, "%s{%s=\"", name, label);
    metrics_label_value(out, value);
    textbuf_printf(out, "\"} %llu\n", (unsigned long long)n);
}

/* --- Sums over loops ------------------------------------------------------------------ */

/* One line of the total being built: its text, and for a sample its key and new value. */
struct sum_line {
    const char *text;
    size_t len;      /* without the newline */
    size_t key_len;  /* a sample's "name{labels}"; 0 for a comment */
    size_t name_len; /* a sample's metric name */
    double value;
    bool changed; /* value differs from the text's */
};

static void sum_line_parse(struct sum_line *l, const char *text, size_t len)
{
    memset(l, 0, sizeof(*l));
    l->text = text;
    l->len = len;
    if (len == 0 || text[0] == '#') return;
    const char *space = NULL;
    for (size_t i = len; i > 0; i--)
        if (text[i - 1] == ' ') {
            space = text + i - 1;
            break;
        }
    if (space == NULL) return;
    l->key_len = (size_t)(space - text);
    l->name_len = strcspn(text, "{ ");
    if (l->name_len > l->key_len) l->name_len = l->key_len;
    char num[64];
    size_t n = len - l->key_len - 1;
    if (n >= sizeof(num)) n = sizeof(num) - 1;
    memcpy(num, space + 1, n);
    num[n] = '\0';
    l->value = strtod(num, NULL);
}

static bool same_key(const struct sum_line *a, const struct sum_line *b)
{
    return a->key_len > 0 && a->key_len == b->key_len && memcmp(a->text, b->text, a->key_len) == 0;
}

/* Splits text into lines appended to *lines (grown as needed). False when memory ran
 * out. */
static bool sum_lines_add(struct sum_line **lines, size_t *n, size_t *cap, const char *text,
                          size_t len, size_t at)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 256;
        struct sum_line *grown = realloc(*lines, ncap * sizeof(**lines));
        if (grown == NULL) return false;
        *lines = grown;
        *cap = ncap;
    }
    memmove(*lines + at + 1, *lines + at, (*n - at) * sizeof(**lines));
    sum_line_parse(*lines + at, text, len);
    (*n)++;
    return true;
}

void metrics_sum_into(struct textbuf *total, const char *more, size_t more_len)
{
    char *old = malloc(total->len + 1);
    if (old == NULL) return;
    memcpy(old, total->buf, total->len);
    size_t old_len = total->len;
    struct sum_line *lines = NULL;
    size_t n = 0, cap = 0;
    bool ok = true;
    for (size_t at = 0; ok && at < old_len;) {
        size_t end = at;
        while (end < old_len && old[end] != '\n')
            end++;
        ok = sum_lines_add(&lines, &n, &cap, old + at, end - at, n);
        at = end + 1;
    }
    for (size_t at = 0; ok && at < more_len;) {
        size_t end = at;
        while (end < more_len && more[end] != '\n')
            end++;
        struct sum_line l;
        sum_line_parse(&l, more + at, end - at);
        size_t i = 0, family_end = n;
        for (; i < n; i++) {
            if (l.key_len == 0
                    ? (lines[i].len == l.len && memcmp(lines[i].text, l.text, l.len) == 0)
                    : same_key(&lines[i], &l))
                break;
            if (l.key_len > 0 && lines[i].name_len == l.name_len &&
                memcmp(lines[i].text, l.text, l.name_len) == 0)
                family_end = i + 1;
        }
        if (i < n && l.key_len > 0) {
            lines[i].value += l.value;
            lines[i].changed = true;
        } else if (i == n && l.len > 0) {
            ok = sum_lines_add(&lines, &n, &cap, l.text, l.len, l.key_len > 0 ? family_end : n);
        }
        at = end + 1;
    }
    if (ok) {
        total->len = 0;
        total->buf[0] = '\0';
        total->cut = false;
        for (size_t i = 0; i < n; i++) {
            if (!lines[i].changed) {
                textbuf_put(total, lines[i].text, lines[i].len);
            } else {
                textbuf_put(total, lines[i].text, lines[i].key_len);
                double v = lines[i].value;
                if (v == (double)(long long)v && v < 9e15 && v > -9e15)
                    textbuf_printf(total, " %lld", (long long)v);
                else
                    textbuf_printf(total, " %.17g", v);
            }
            textbuf_put(total, "\n", 1);
        }
    }
    free(lines);
    free(old);
}
