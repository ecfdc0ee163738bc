/*
 * metrics.c: the Prometheus text format's lines. See metrics.h.
 */
#include "base/metrics.h"

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
