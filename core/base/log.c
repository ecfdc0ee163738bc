/*
 * log.c: diagnostic lines (text or JSON) to stderr and access lines to stdout.
 *
 * A line is built whole in a buffer on the stack and handed to one write(2). The
 * configured fields are rendered once, by log_configure, in both formats.
 *
 * Threads (workers: several loops in one process): log_configure runs before any loop
 * starts, and what it sets is only read afterwards. Each thread buffers its own access
 * lines (thread-local); every write to a descriptor, of one line or of a buffer of whole
 * lines, happens under one process-wide mutex, so lines of different loops never
 * interleave, even when write(2) takes part of a buffer.
 */
#include "base/log.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/json.h"

#define LOG_FIELDS_MAX 4096

enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

static atomic_int current_level = LOG_INFO;
static atomic_int current_format = LOG_FORMAT_TEXT;

/* The config's fields, ready to append: ` k=v k2=v2` and `,"k":"v","k2":"v2"`. */
static char fields_text[LOG_FIELDS_MAX];
static size_t fields_text_len;
static char fields_json[LOG_FIELDS_MAX];
static size_t fields_json_len;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

/* ---- escaping -------------------------------------------------------------------------- */

/* An escaper writes whole escapes of src into buf[0..cap) and says how much it consumed. */
typedef size_t (*escape_fn)(const char *src, size_t n, char *buf, size_t cap, size_t *consumed);

static bool is_safe_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '/' || c == ':' || c == '@' || c == '+' || c == '-';
}

static bool needs_quotes(const char *s, size_t n)
{
    if (n == 0) return true;
    for (size_t i = 0; i < n; i++)
        if (!is_safe_char((unsigned char)s[i])) return true;
    return false;
}

/* The text formatter's escaping of a quoted value (see log_append_kv in log.h). */
static size_t text_escape_prefix(const char *src, size_t n, char *buf, size_t cap, size_t *consumed)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)src;
    size_t in = 0, out = 0;

    while (in < n) {
        /* A run of printable ASCII that needs no escape goes in one copy. */
        size_t run = 0;
        while (in + run < n && s[in + run] >= 0x20 && s[in + run] < 0x7f && s[in + run] != '"' &&
               s[in + run] != '\\')
            run++;
        if (run > 0) {
            if (run > cap - out) run = cap - out;
            memcpy(buf + out, src + in, run);
            out += run;
            in += run;
            if (out == cap) break;
            continue;
        }
        char esc[6];
        const char *piece = esc;
        size_t piece_len = 2, step = 1;
        unsigned int c = s[in], cp = 0;

        esc[0] = '\\';
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
        } else if (c == '\n') {
            esc[1] = 'n';
        } else if (c == '\r') {
            esc[1] = 'r';
        } else if (c == '\t') {
            esc[1] = 't';
        } else if (c < 0x20 || c == 0x7f ||
                   (c >= 0x80 && (step = json_utf8_decode(s + in, n - in, &cp)) == 0)) {
            step = 1;
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 0xf];
            piece_len = 4;
        } else if (c >= 0x80 && (cp <= 0x9f || cp == 0x2028 || cp == 0x2029)) {
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

/* The access log's escaping: only control bytes, as \xNN; everything else as given. */
static size_t control_escape_prefix(const char *src, size_t n, char *buf, size_t cap,
                                    size_t *consumed)
{
    static const char hex[] = "0123456789abcdef";
    size_t in = 0, out = 0;

    for (; in < n; in++) {
        unsigned char c = (unsigned char)src[in];
        if (c >= 0x20 && c != 0x7f) {
            if (out == cap) break;
            buf[out++] = (char)c;
        } else {
            if (cap - out < 4) break;
            buf[out++] = '\\';
            buf[out++] = 'x';
            buf[out++] = hex[c >> 4];
            buf[out++] = hex[c & 0xf];
        }
    }
    *consumed = in;
    return out;
}

/*
 * Writes escape(src) into buf[0..cap); when it does not fit, as much as fits followed by
 * "...". Returns the bytes written.
 */
static size_t put_escaped_cut(escape_fn escape, const char *src, size_t n, char *buf, size_t cap)
{
    size_t consumed, written = escape(src, n, buf, cap, &consumed);

    if (consumed == n || cap < 3) return written;
    written = escape(src, n, buf, cap - 3, &consumed);
    memcpy(buf + written, "...", 3);
    return written + 3;
}

/* Appends a text value, quoted when it needs it, cut with "..." to fit buf[*pos..cap). */
static void put_text_value(char *buf, size_t cap, size_t *pos, const char *v, size_t n)
{
    if (!needs_quotes(v, n)) {
        *pos += put_escaped_cut(text_escape_prefix, v, n, buf + *pos, cap - *pos);
        return;
    }
    if (cap - *pos < 2) return;
    buf[(*pos)++] = '"';
    *pos += put_escaped_cut(text_escape_prefix, v, n, buf + *pos, cap - *pos - 1);
    buf[(*pos)++] = '"';
}

/* Appends a JSON string, cut with "..." to fit buf[*pos..cap). */
static void put_json_string(char *buf, size_t cap, size_t *pos, const char *v, size_t n)
{
    if (cap - *pos < 2) return;
    buf[(*pos)++] = '"';
    *pos += put_escaped_cut(json_escape_prefix, v, n, buf + *pos, cap - *pos - 1);
    buf[(*pos)++] = '"';
}

/* Appends s when it fits whole. */
static bool put_raw(char *buf, size_t cap, size_t *pos, const char *s, size_t n)
{
    if (n > cap - *pos) return false;
    memcpy(buf + *pos, s, n);
    *pos += n;
    return true;
}

int log_append_kv(char *buf, size_t cap, size_t *pos, const char *key, const char *value,
                  size_t value_len)
{
    size_t at = *pos, key_len = strlen(key), consumed;

    if (value == NULL) {
        value = "";
        value_len = 0;
    }
    if (at > cap || (at > 0) + key_len + 1 > cap - at) return -ENOSPC;
    if (at > 0) buf[at++] = ' ';
    for (size_t i = 0; i < key_len; i++)
        buf[at++] = is_safe_char((unsigned char)key[i]) ? key[i] : '_';
    buf[at++] = '=';

    bool quoted = needs_quotes(value, value_len);
    size_t room = cap - at;
    if (room < (quoted ? 3u : 1u)) return -ENOSPC;
    if (quoted) buf[at++] = '"';
    at += text_escape_prefix(value, value_len, buf + at, room - (quoted ? 3 : 1), &consumed);
    if (consumed < value_len) return -ENOSPC;
    if (quoted) buf[at++] = '"';
    buf[at] = '\0';
    *pos = at;
    return 0;
}

/* ---- time and levels ------------------------------------------------------------------- */

/* Writes v as exactly `width` decimal digits (zero-padded, the high digits cut). */
static void put_digits(char *at, unsigned long long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        at[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

void log_format_time_at(char *buf, size_t len, const struct timespec *ts)
{
    /* "2006-01-02T15:04:05" of the last second formatted by this thread: a loop logs
     * many lines a second (the access log), and gmtime_r is the dear part. */
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[20];
    time_t sec = ts->tv_sec;

    if (len == 0) return;
    if (sec != cached_sec) {
        struct tm tm;
        if (gmtime_r(&sec, &tm) == NULL) {
            snprintf(buf, len, "1970-01-01T00:00:00.000Z");
            return;
        }
        if (tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999) { /* not four digits */
            snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(ts->tv_nsec / 1000000));
            return;
        }
        char *c = cached;
        put_digits(c, (unsigned long long)(tm.tm_year + 1900), 4);
        c[4] = '-';
        put_digits(c + 5, (unsigned long long)(tm.tm_mon + 1), 2);
        c[7] = '-';
        put_digits(c + 8, (unsigned long long)tm.tm_mday, 2);
        c[10] = 'T';
        put_digits(c + 11, (unsigned long long)tm.tm_hour, 2);
        c[13] = ':';
        put_digits(c + 14, (unsigned long long)tm.tm_min, 2);
        c[16] = ':';
        put_digits(c + 17, (unsigned long long)tm.tm_sec, 2);
        c[19] = '\0';
        cached_sec = sec;
    }
    char out[25];
    memcpy(out, cached, 19);
    out[19] = '.';
    put_digits(out + 20, (unsigned long long)(ts->tv_nsec / 1000000) % 1000, 3);
    out[23] = 'Z';
    out[24] = '\0';
    size_t n = len - 1 < sizeof(out) - 1 ? len - 1 : sizeof(out) - 1;
    memcpy(buf, out, n);
    buf[n] = '\0';
}

void log_format_time(char *buf, size_t len)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    log_format_time_at(buf, len, &ts);
}

int log_level_parse(const char *text, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {{"error", LOG_ERROR},
                 {"warn", LOG_WARN},
                 {"warning", LOG_WARN},
                 {"info", LOG_INFO},
                 {"debug", LOG_DEBUG}};

    if (text == NULL) return -EINVAL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(text, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -EINVAL;
}

int log_enabled(enum log_level level)
{
    return (int)level <= atomic_load_explicit(&current_level, memory_order_relaxed);
}

/* ---- configuration --------------------------------------------------------------------- */

/* logrus's rule: a field may not take the name of a built-in key. */
static void field_key(const char *key, char *out, size_t len)
{
    bool clash = strcmp(key, "time") == 0 || strcmp(key, "level") == 0 || strcmp(key, "msg") == 0;
    snprintf(out, len, "%s%s", clash ? "fields." : "", key);
}

/* Renders one field in both formats; false (nothing appended) when it does not fit. */
static bool render_field(const char *key, const char *value)
{
    char prefixed[256], text[LOG_FIELDS_MAX], json[LOG_FIELDS_MAX];
    size_t text_len = 0, json_len = 0, consumed;
    size_t value_len = value ? strlen(value) : 0;

    field_key(key, prefixed, sizeof prefixed);
    text[0] = ' ';
    if (log_append_kv(text + 1, sizeof text - 1, &text_len, prefixed, value, value_len) != 0)
        return false;
    text_len++;

    json[json_len++] = ',';
    json[json_len++] = '"';
    json_len += json_escape_prefix(prefixed, strlen(prefixed), json + json_len,
                                   sizeof json - json_len, &consumed);
    if (consumed < strlen(prefixed) || !put_raw(json, sizeof json, &json_len, "\":\"", 3))
        return false;
    json_len += json_escape_prefix(value ? value : "", value_len, json + json_len,
                                   sizeof json - json_len, &consumed);
    if (consumed < value_len || !put_raw(json, sizeof json, &json_len, "\"", 1)) return false;

    if (text_len > sizeof fields_text - fields_text_len ||
        json_len > sizeof fields_json - fields_json_len)
        return false;
    memcpy(fields_text + fields_text_len, text, text_len);
    fields_text_len += text_len;
    memcpy(fields_json + fields_json_len, json, json_len);
    fields_json_len += json_len;
    return true;
}

void log_configure(const struct log_options *opts)
{
    enum log_level level = LOG_INFO;
    size_t dropped = 0;

    fields_text_len = 0;
    fields_json_len = 0;
    if (opts == NULL) {
        atomic_store(&current_level, LOG_INFO);
        atomic_store(&current_format, LOG_FORMAT_TEXT);
        return;
    }
    if (opts->level && log_level_parse(opts->level, &level) != 0) level = LOG_INFO;
    atomic_store(&current_level, (int)level);
    atomic_store(&current_format, opts->formatter && strcasecmp(opts->formatter, "json") == 0
                                      ? LOG_FORMAT_JSON
                                      : LOG_FORMAT_TEXT);
    for (size_t i = 0; i < opts->n_fields; i++)
        if (opts->fields[i].key == NULL ||
            !render_field(opts->fields[i].key, opts->fields[i].value))
            dropped++;
    if (dropped > 0)
        log_msg(LOG_WARN, "log.fields: %zu of %zu fields dropped (more than %d bytes in all)",
                dropped, opts->n_fields, LOG_FIELDS_MAX);
}

/* ---- output ---------------------------------------------------------------------------- */

/*
 * Writes all of buf with as few write(2) calls as the kernel allows: one, unless it
 * takes part of the line or a signal interrupts it. A descriptor that is non-blocking
 * and full is waited for, up to about a second in all; other errors drop the line.
 */
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

static void write_line_locked(int fd, const char *buf, size_t n);

static void write_line(int fd, const char *buf, size_t n)
{
    pthread_mutex_lock(&write_lock);
    write_line_locked(fd, buf, n);
    pthread_mutex_unlock(&write_lock);
}

static void write_line_locked(int fd, const char *buf, size_t n)
{
    int waits = 0;

    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w > 0) {
            buf += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && waits++ < 10) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            (void)poll(&pfd, 1, 100);
        } else {
            return;
        }
    }
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX], line[LOG_LINE_MAX], now[32];
    size_t msg_len, pos = 0;
    va_list ap;
    int n;

    if (!log_enabled(level)) return;
    if ((unsigned)level > LOG_DEBUG) level = LOG_DEBUG;
    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = snprintf(msg, sizeof msg, "(unformattable message: %s)", fmt);
    msg_len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    log_format_time(now, sizeof now);

    /* Room for the fields and the end of the line is kept before the message. */
    if (atomic_load_explicit(&current_format, memory_order_relaxed) == LOG_FORMAT_JSON) {
        pos = (size_t)snprintf(line, sizeof line, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":", now,
                               level_names[level]);
        put_json_string(line, sizeof line - fields_json_len - 2, &pos, msg, msg_len);
        put_raw(line, sizeof line, &pos, fields_json, fields_json_len);
        line[pos++] = '}';
    } else {
        pos = (size_t)snprintf(line, sizeof line, "time=\"%s\" level=%s msg=", now,
                               level_names[level]);
        put_text_value(line, sizeof line - fields_text_len - 1, &pos, msg, msg_len);
        put_raw(line, sizeof line, &pos, fields_text, fields_text_len);
    }
    line[pos++] = '\n';
    write_line(STDERR_FILENO, line, pos);
}

/* Access lines wait here while buffering is on (a loop runs); one write takes them all. */
#define ACCESS_BUF_FLUSH (64 * 1024)
static _Thread_local char access_buf[ACCESS_BUF_FLUSH + LOG_LINE_MAX];
static _Thread_local size_t access_len;
static _Thread_local bool access_buffered;

void log_access_flush(void)
{
    if (access_len > 0) write_line(STDOUT_FILENO, access_buf, access_len);
    access_len = 0;
}

void log_access_set_buffered(bool on)
{
    static atomic_bool at_exit; /* (the main thread's buffer is flushed at exit) */
    if (on && !atomic_exchange(&at_exit, true)) atexit(log_access_flush);
    if (!on) log_access_flush();
    access_buffered = on;
}

void log_access_line(const char *text, size_t len)
{
    char line[LOG_LINE_MAX];
    size_t pos;

    if (len > 0 && text[len - 1] == '\n') len--;
    if (access_buffered) {
        pos = put_escaped_cut(control_escape_prefix, text, len, access_buf + access_len,
                              LOG_LINE_MAX - 1);
        access_buf[access_len + pos++] = '\n';
        access_len += pos;
        if (access_len >= ACCESS_BUF_FLUSH) log_access_flush();
        return;
    }
    pos = put_escaped_cut(control_escape_prefix, text, len, line, sizeof line - 1);
    line[pos++] = '\n';
    write_line(STDOUT_FILENO, line, pos);
}

/* ---- the access line ------------------------------------------------------------------- */

/* Go's way of writing a duration below an hour: "1.234ms", "2.5s", "0ms". */
/* Decimal digits of v into buf (at least 21 bytes, NUL-terminated); returns how many. */
static size_t format_u64(unsigned long long v, char *buf)
{
    char rev[21];
    size_t n = 0;
    do {
        rev[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        buf[i] = rev[n - 1 - i];
    buf[n] = '\0';
    return n;
}

/* "0.1214ms", "2.5s": six decimals at most, trailing zeros cut, as printf's %.6f rounds.
 * In integers where that is sure: printf's %f costs more than the rest of an access-log
 * line. */
static void format_duration_ms(double ms, char *buf, size_t len)
{
    const char *unit = "ms";
    if (ms != ms || ms < 0) ms = 0;
    if (ms >= 1000) {
        ms /= 1000;
        unit = "s";
    }
    if (len >= 48 && ms < 1e9) {
        /* q rounds ms to six decimals as %.6f does only when the exact ms * 10^6 lies
         * strictly between q - 0.5 and q + 0.5 (fma sees the exact product); a tie, or
         * a product too close to call, goes to printf below. */
        unsigned long long q = (unsigned long long)(ms * 1e6 + 0.5);
        if (fma(ms, 1e6, 0.5 - (double)q) > 0 && fma(ms, 1e6, -0.5 - (double)q) < 0) {
            size_t n = format_u64(q / 1000000, buf);
            unsigned long long frac = q % 1000000;
            if (frac != 0) {
                int width = 6;
                while (frac % 10 == 0) {
                    frac /= 10;
                    width--;
                }
                buf[n++] = '.';
                put_digits(buf + n, frac, width);
                n += (size_t)width;
            }
            memcpy(buf + n, unit, strlen(unit) + 1);
            return;
        }
    }
    int n = snprintf(buf, len, "%.6f", ms);
    while (n > 0 && buf[n - 1] == '0')
        n--;
    if (n > 0 && buf[n - 1] == '.') n--;
    snprintf(buf + n, len - (size_t)n, "%s", unit);
}

/* RFC 3339 with milliseconds of t seconds since the epoch, cut, not rounded. */
static void format_time_double(double t, char *buf, size_t len)
{
    long long us = (long long)(t * 1e6 + 0.5);
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000};
    log_format_time_at(buf, len, &ts);
}

struct access_writer {
    char *buf;
    size_t cap, pos;
    bool json;
};

static void access_str(struct access_writer *w, const char *key, const char *value)
{
    if (value == NULL) return;
    size_t n = strlen(value);
    if (w->json) {
        if (!put_raw(w->buf, w->cap, &w->pos, ",\"", 2)) return;
        put_raw(w->buf, w->cap, &w->pos, key, strlen(key));
        put_raw(w->buf, w->cap, &w->pos, "\":", 2);
        put_json_string(w->buf, w->cap, &w->pos, value, n);
    } else {
        put_raw(w->buf, w->cap, &w->pos, " ", 1);
        put_raw(w->buf, w->cap, &w->pos, key, strlen(key));
        put_raw(w->buf, w->cap, &w->pos, "=", 1);
        put_text_value(w->buf, w->cap, &w->pos, value, n);
    }
}

static void access_num(struct access_writer *w, const char *key, unsigned long long v)
{
    char num[32];
    size_t n = format_u64(v, num);
    if (w->json) {
        put_raw(w->buf, w->cap, &w->pos, ",\"", 2);
        put_raw(w->buf, w->cap, &w->pos, key, strlen(key));
        put_raw(w->buf, w->cap, &w->pos, "\":", 2);
    } else {
        put_raw(w->buf, w->cap, &w->pos, " ", 1);
        put_raw(w->buf, w->cap, &w->pos, key, strlen(key));
        put_raw(w->buf, w->cap, &w->pos, "=", 1);
    }
    put_raw(w->buf, w->cap, &w->pos, num, n);
}

size_t log_format_access(const struct log_access_entry *e, char *buf, size_t cap)
{
    char now[40], dur[48];
    struct access_writer w = {buf, cap - 1, 0,
                              atomic_load_explicit(&current_format, memory_order_relaxed) ==
                                  LOG_FORMAT_JSON};
    if (e->time > 0) {
        format_time_double(e->time, now, sizeof now);
    } else {
        log_format_time(now, sizeof now);
    }
    static const char json_head[] = "{\"time\":\"", text_head[] = "time=\"";
    static const char json_rest[] = "\",\"level\":\"info\",\"msg\":\"response completed\"";
    static const char text_rest[] = "\" level=info msg=\"response completed\"";
    /* The head in pieces (no printf); a buffer too small for it gets what fits of it. */
    const char *head = w.json ? json_head : text_head, *rest = w.json ? json_rest : text_rest;
    if (put_raw(buf, w.cap, &w.pos, head, strlen(head)) &&
        put_raw(buf, w.cap, &w.pos, now, strlen(now)) &&
        put_raw(buf, w.cap, &w.pos, rest, strlen(rest)))
        put_raw(buf, w.cap, &w.pos, w.json ? fields_json : fields_text,
                w.json ? fields_json_len : fields_text_len);
    if (w.pos > w.cap) w.pos = w.cap;
    access_str(&w, "http.request.method", e->method);
    access_str(&w, "http.request.uri", e->uri);
    access_str(&w, "http.request.remoteaddr", e->remote_addr);
    access_str(&w, "http.request.useragent", e->user_agent);
    access_str(&w, "vars.name", e->repository);
    access_str(&w, "vars.digest", e->digest);
    if (e->status != 0) access_num(&w, "http.response.status", (unsigned long long)e->status);
    access_num(&w, "http.response.written", (unsigned long long)e->bytes);
    if (e->duration_ms >= 0) {
        format_duration_ms(e->duration_ms, dur, sizeof dur);
        access_str(&w, "http.response.duration", dur);
    }
    access_str(&w, "cache", e->cache);
    access_str(&w, "upstream", e->upstream);
    if (e->stale) {
        access_str(&w, "stale", "true");
        access_num(&w, "stale_age", (unsigned long long)e->stale_age_s);
    }
    access_str(&w, "incomplete", e->incomplete ? "true" : NULL);
    access_str(&w, "error", e->error);
    if (w.json) put_raw(buf, cap, &w.pos, "}", 1);
    buf[w.pos] = '\0';
    return w.pos;
}
