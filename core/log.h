/*
 * log.h: diagnostics (stderr) and the access log (stdout).
 *
 * A diagnostic line is logrus-style text, as Docker Registry writes it:
 *   time="2026-11-27T23:00:00.123Z" level=info msg="listening on 127.0.0.1:5000"
 * or one JSON object per line with log.formatter json. Values are escaped so that no
 * byte from a client can start a new line or forge a field. Never pass a credential.
 */
#ifndef CC_LOG_H
#define CC_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

struct config;

/* Sets level, formatter and extra fields from the config (NULL: defaults). */
void log_configure(const struct config *cfg);

/* Parses "error", "warn"/"warning", "info", "debug". Returns 0 or -EINVAL. */
int log_level_parse(const char *text, enum log_level *out);

/* True when a message at `level` would be written. */
int log_enabled(enum log_level level);

/* One diagnostic line with a printf-style message. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One access-log line, written as given (a trailing newline is added). */
void log_access_line(const char *line, size_t len);

/*
 * Appends `key=value` to buf (at *pos, capacity cap) in the text formatter's quoting:
 * bare when the value is made of safe characters, else in double quotes with '"', '\\'
 * and control bytes escaped. Never writes past cap; returns 0 or -ENOSPC.
 */
int log_append_kv(char *buf, size_t cap, size_t *pos, const char *key, const char *value,
                  size_t value_len);

/* RFC 3339 UTC time with milliseconds of the wall clock, into buf (>= 32 bytes). */
void log_format_time(char *buf, size_t len);

#endif
