/*
 * log.h: diagnostics (stderr) and the access log (stdout).
 *
 * A diagnostic line is logrus-style text, as Docker Registry writes it:
 *   time="2026-11-27T23:00:00.123Z" level=info msg="listening on 127.0.0.1:5000"
 * or one JSON object per line with log.formatter json:
 *   {"time":"2026-11-27T23:00:00.123Z","level":"info","msg":"listening on ...","k":"v"}
 * The config's log.fields follow msg on every diagnostic line, in the config's order (a
 * field named time, level or msg is written as fields.time, as logrus does). Values are
 * escaped so that no byte from a client can start a new line or forge a field. Never pass
 * a credential.
 *
 * Every line is written with one write(2) (continued only after a partial write or
 * EINTR), so lines from several processes or threads do not interleave where the kernel
 * makes a write atomic (pipes up to PIPE_BUF, files opened O_APPEND), and is at most
 * LOG_LINE_MAX bytes: a longer message is cut and ends with "...".
 *
 * Logging is safe from any thread; log_configure is not, and should run before other
 * threads log (at start and at a reload on the loop thread, with workers idle).
 */
#ifndef CC_LOG_H
#define CC_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* The longest line written, newline included. */
#define LOG_LINE_MAX 16384

/* One of log.fields: a key and value written after msg on every diagnostic line. */
struct log_field {
    char *key;
    char *value;
};

/* What the config's log section says (config.h keeps it in this shape). */
struct log_options {
    const char *level;     /* "error", "warn", "info", "debug"; NULL: info */
    const char *formatter; /* "json", else text */
    const struct log_field *fields;
    size_t n_fields;
};

/*
 * Sets level, formatter and extra fields (NULL: defaults, which are level info, format
 * text, no fields). An unknown level means info, a formatter other than "json" means
 * text (config validation refuses both before this). The fields are copied; fields past
 * 4 KiB of rendered text are dropped with a warning.
 */
void log_configure(const struct log_options *opts);

/* Parses "error", "warn"/"warning", "info", "debug", in any case. Returns 0 or -EINVAL. */
int log_level_parse(const char *text, enum log_level *out);

/* True when a message at `level` would be written. */
int log_enabled(enum log_level level);

/* One diagnostic line with a printf-style message. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One access-log line's facts. */
struct log_access_entry {
    double time; /* when the response completed, seconds since the epoch */
    const char *method;
    const char *uri; /* the request target as received */
    const char *repository;
    const char *digest;
    int status;
    uint64_t bytes; /* body bytes written */
    double duration_ms;
    const char *cache;       /* "hit", "miss", "coalesced", "bypass", or NULL */
    const char *upstream;    /* base URL that answered, or NULL */
    const char *remote_addr; /* "ip:port" */
    const char *user_agent;
    bool incomplete;   /* the response was cut short (closed before its end): incomplete=true */
    const char *error; /* a short sentence, or NULL */
    /* Served from what the cache held while every upstream failed (the outage policy):
     * stale=true stale_age=<whole seconds of the oldest fact it relied on>. */
    bool stale;
    uint64_t stale_age_s;
};

/*
 * Formats an access-log line (without a newline) in the configured format: Docker
 * Registry's "response completed" line in logrus text, or one JSON object; time, level,
 * msg, the config's log.fields, then the entry's fields that are set. This is the C
 * twin of the default policy's format_log (policies/logformat.lua), byte for byte
 * (tests/unit/test_policy.c holds them to it). Returns the length (cut to fit cap - 1,
 * NUL-terminated).
 */
size_t log_format_access(const struct log_access_entry *e, char *buf, size_t cap);

/*
 * One access-log line to stdout, written as given except that a trailing newline is
 * dropped, control bytes (a newline inside included) become \xNN, and a line longer
 * than LOG_LINE_MAX is cut with "..."; a newline is added.
 */
void log_access_line(const char *line, size_t len);

/*
 * With buffering on, access lines gather in memory (at most 64 KiB, then they are
 * written) until log_access_flush: the server flushes before the loop waits for I/O and
 * after each round of I/O callbacks, so a line is out before the loop sleeps, at one
 * write(2) for many requests. Turning it off flushes; so does exit() (the main thread's
 * buffer). Off by default. Per thread: each loop's thread has its own buffer and turns it
 * on and off for itself; writes never interleave (log.c).
 */
void log_access_set_buffered(bool on);
void log_access_flush(void);

/*
 * Appends `key=value` to buf at *pos, capacity cap, preceded by one space when *pos > 0
 * (so consecutive calls build a line), in the text formatter's quoting: bare when the value is made
 * of [A-Za-z0-9._/:@+-] and not empty, else in double quotes with '"', '\\', \n, \r, \t escaped
 * with a backslash, other control bytes and invalid UTF-8 as \xNN, the C1 controls and
 * U+2028/U+2029 as \uXXXX, and other UTF-8 as is. Key bytes outside that set become '_'. value may
 * be NULL when value_len is 0. On success advances *pos, NUL-terminates and returns 0; returns
 * -ENOSPC, *pos unchanged, when the pair and its NUL do not fit. Never writes past cap.
 */
int log_append_kv(char *buf, size_t cap, size_t *pos, const char *key, const char *value,
                  size_t value_len);

/* RFC 3339 UTC time with milliseconds of the wall clock, into buf (>= 32 bytes). */
void log_format_time(char *buf, size_t len);

/* The same for a given time: "2026-11-27T23:00:00.123Z". */
void log_format_time_at(char *buf, size_t len, const struct timespec *ts);

#endif
