/*
 * metrics.h: what the debug server (app/debug.h) asks of the modules: their figures in
 * the Prometheus text format (version 0.0.4), and their health.
 *
 * Each module that keeps figures renders its own section with these helpers, through a
 * callback of the shape metrics_render_fn; a module that can tell whether the cache is
 * healthy offers a health_check_fn. The debug server calls what it was given, in order,
 * so it includes nobody's internals. Output goes into a bounded textbuf (bytes.h): a
 * section can never write past the buffer.
 */
#ifndef CC_METRICS_H
#define CC_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/bytes.h"

/* A section of /metrics: renders the figures of `source` (a module's object) into out. */
typedef void (*metrics_render_fn)(const void *source, struct textbuf *out);

/* "# HELP name text" and "# TYPE name type" (type: counter, gauge, histogram). */
void metrics_help(struct textbuf *out, const char *name, const char *type, const char *text);

/* A metric with one value and no labels: its help, its type and its line. */
void metrics_value(struct textbuf *out, const char *name, const char *type, const char *text,
                   uint64_t value);

/* One line `name{label="value"} n`; value is written escaped as the format says. */
void metrics_labelled(struct textbuf *out, const char *name, const char *label, const char *value,
                      uint64_t n);

/* A label value, escaped as the format says (backslash, double quote, newline). */
void metrics_label_value(struct textbuf *out, const char *value);

/*
 * Adds `more` (Prometheus text, as rendered by the sections of another loop of the
 * process) into `total`, in place: a sample whose name and labels are in total gets the
 * sum of both values; one that is not is added after the last sample of its family (or
 * at the end, with its HELP and TYPE lines). Comment lines of `more` that total has are
 * dropped. total holds total->len bytes of a buffer of total->cap; what does not fit is
 * cut, as textbuf does. Values are written as integers when they are whole.
 */
void metrics_sum_into(struct textbuf *total, const char *more, size_t more_len);

/*
 * A health check's answer: ok or not, and a short sentence for the health body (copied;
 * "writable", "storage root /x is not writable: read-only file system").
 */
typedef void (*health_done_fn)(void *arg, bool ok, const char *detail);

/*
 * Checks `source` on `loop` and calls done exactly once, from the loop or before it
 * returns. A check must end by itself (its own timeouts): the health answer waits for it.
 */
typedef void (*health_check_fn)(void *source, uv_loop_t *loop, health_done_fn done, void *arg);

#endif
