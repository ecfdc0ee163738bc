/*
 * test_log.c: the text and JSON formatters, quoting of hostile values, levels, fields,
 * the line cap, and the access log.
 *
 * Output is captured by putting a pipe in place of stderr or stdout for the duration of
 * one call; lines are then parsed back (logfmt or JSON) and compared with what went in,
 * so a forged field or a raw newline would show up as a mismatch.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* F_SETPIPE_SZ */
#endif
#include "check.h"
#include "base/config.h"
#include "base/log.h"
#include "base/json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- capture --------------------------------------------------------------------------- */

struct capture {
    int fd;
    int saved;
    int read_end;
};

static void capture_begin(struct capture *c, int fd)
{
    int p[2];

    fflush(NULL);
    if (pipe(p) != 0) {
        perror("pipe");
        exit(2);
    }
    (void)fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    c->fd = fd;
    c->saved = dup(fd);
    c->read_end = p[0];
    dup2(p[1], fd);
    close(p[1]);
}

/* Restores the descriptor and returns what was written (NUL-terminated, malloc'ed). */
static char *capture_end(struct capture *c, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);

    dup2(c->saved, c->fd);
    close(c->saved);
    for (;;) {
        if (cap - n < 4096) out = realloc(out, cap *= 2);
        ssize_t r = read(c->read_end, out + n, cap - n - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(c->read_end);
    out[n] = '\0';
    if (len) *len = n;
    return out;
}

static int count_char(const char *s, size_t n, char c)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == c;
    return k;
}

/* ---- a logfmt reader: key=value pairs, values bare or quoted with our escapes ---------- */

#define MAX_PAIRS 32

struct pairs {
    int n;
    char key[MAX_PAIRS][64];
    char value[MAX_PAIRS][LOG_LINE_MAX];
    size_t value_len[MAX_PAIRS];
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Appends the UTF-8 of code point cp (< 0x10000, not a surrogate) to out. */
static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* Reads \uXXXX at s (after the backslash-u); -1 when malformed. */
static long read_u4(const char *s)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/*
 * Parses one text line (with its '\n') into pairs. Returns false on anything the
 * formatter should never produce: raw control bytes, a bad escape, a missing space.
 */
static bool parse_logfmt(const char *line, size_t len, struct pairs *out)
{
    size_t i = 0;

    out->n = 0;
    if (len == 0 || line[len - 1] != '\n') return false;
    len--;
    while (i < len) {
        if (out->n == MAX_PAIRS) return false;
        size_t k = 0;
        while (i < len && line[i] != '=' && line[i] != ' ' && k < 63)
            out->key[out->n][k++] = line[i++];
        out->key[out->n][k] = '\0';
        if (k == 0 || i >= len || line[i] != '=') return false;
        i++;
        char *v = out->value[out->n];
        size_t vn = 0;
        if (i < len && line[i] == '"') {
            i++;
            for (;;) {
                if (i >= len) return false;
                unsigned char c = (unsigned char)line[i];
                if (c < 0x20 || c == 0x7f) return false;
                if (c == '"') {
                    i++;
                    break;
                }
                if (c != '\\') {
                    v[vn++] = (char)c;
                    i++;
                    continue;
                }
                if (i + 1 >= len) return false;
                char e = line[i + 1];
                i += 2;
                if (e == '"' || e == '\\')
                    v[vn++] = e;
                else if (e == 'n')
                    v[vn++] = '\n';
                else if (e == 'r')
                    v[vn++] = '\r';
                else if (e == 't')
                    v[vn++] = '\t';
                else if (e == 'x' && i + 2 <= len && hexval(line[i]) >= 0 &&
                         hexval(line[i + 1]) >= 0) {
                    v[vn++] = (char)(hexval(line[i]) * 16 + hexval(line[i + 1]));
                    i += 2;
                } else if (e == 'u' && i + 4 <= len && read_u4(line + i) >= 0) {
                    vn += put_utf8(v + vn, (unsigned)read_u4(line + i));
                    i += 4;
                } else {
                    return false;
                }
            }
        } else {
            while (i < len && line[i] != ' ') {
                unsigned char c = (unsigned char)line[i];
                bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                            (c >= '0' && c <= '9') || strchr("._/:@+-", c) != NULL;
                if (!safe) return false;
                v[vn++] = line[i++];
            }
        }
        v[vn] = '\0';
        out->value_len[out->n] = vn;
        out->n++;
        if (i < len) {
            if (line[i] != ' ') return false;
            i++;
            if (i == len) return false;
        }
    }
    return true;
}

/* ---- a JSON reader for one object of string values, decoding the strings ------------- */

static bool parse_json_string(const char *s, size_t len, size_t *i, char *out, size_t *out_len)
{
    size_t n = 0;

    if (*i >= len || s[*i] != '"') return false;
    (*i)++;
    for (;;) {
        if (*i >= len) return false;
        unsigned char c = (unsigned char)s[*i];
        if (c < 0x20) return false;
        if (c == '"') {
            (*i)++;
            break;
        }
        if (c >= 0x80) {
            unsigned cp;
            size_t step = json_utf8_decode((const unsigned char *)s + *i, len - *i, &cp);
            if (step == 0) return false;
            memcpy(out + n, s + *i, step);
            n += step;
            *i += step;
            continue;
        }
        if (c != '\\') {
            out[n++] = (char)c;
            (*i)++;
            continue;
        }
        if (*i + 1 >= len) return false;
        char e = s[*i + 1];
        *i += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple != NULL) {
            out[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
        } else if (e == 'u' && *i + 4 <= len && read_u4(s + *i) >= 0) {
            long cp = read_u4(s + *i);
            if (cp >= 0xd800 && cp <= 0xdfff) return false; /* we never write surrogates */
            n += put_utf8(out + n, (unsigned)cp);
            *i += 4;
        } else {
            return false;
        }
    }
    out[n] = '\0';
    *out_len = n;
    return true;
}

static bool parse_json_line(const char *line, size_t len, struct pairs *out)
{
    size_t i = 0, klen;

    out->n = 0;
    if (len < 3 || line[len - 1] != '\n' || line[0] != '{' || line[len - 2] != '}') return false;
    len--;
    i = 1;
    for (;;) {
        if (out->n == MAX_PAIRS) return false;
        char key[LOG_LINE_MAX];
        if (!parse_json_string(line, len, &i, key, &klen) || klen >= 64) return false;
        memcpy(out->key[out->n], key, klen + 1);
        if (i >= len || line[i++] != ':') return false;
        if (!parse_json_string(line, len, &i, out->value[out->n], &out->value_len[out->n]))
            return false;
        out->n++;
        if (i < len && line[i] == ',') {
            i++;
            continue;
        }
        return i == len - 1 && line[i] == '}';
    }
}

/* ---- helpers --------------------------------------------------------------------------- */

static struct config test_config;
static struct log_field test_kv[64];

static void configure(const char *level, const char *formatter, const char *const *kv,
                      size_t n_fields)
{
    memset(&test_config, 0, sizeof test_config);
    test_config.log_level = (char *)level;
    test_config.log_formatter = (char *)formatter;
    for (size_t i = 0; i < n_fields; i++) {
        test_kv[i].key = (char *)kv[2 * i];
        test_kv[i].value = (char *)kv[2 * i + 1];
    }
    test_config.log_fields = test_kv;
    test_config.n_log_fields = n_fields;
    struct log_options opts = config_log_options(&test_config);
    log_configure(&opts);
}

/* Logs one message at `level` with stderr captured; returns the output. */
static char *log_captured(enum log_level level, const char *msg, size_t *len)
{
    struct capture c;
    capture_begin(&c, STDERR_FILENO);
    log_msg(level, "%s", msg);
    return capture_end(&c, len);
}

static bool time_value_valid(const char *t)
{
    /* 2026-11-27T23:00:00.123Z */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (strlen(t) != sizeof shape - 1) return false;
    for (size_t i = 0; i < sizeof shape - 1; i++)
        if (shape[i] == 'd' ? !(t[i] >= '0' && t[i] <= '9') : t[i] != shape[i]) return false;
    return true;
}

/* Logs msg in the given format and checks that it reads back as exactly time, level, msg. */
static void check_round_trip(bool json, const char *msg, const char *want_msg)
{
    static struct pairs p;
    size_t len;
    int before = check_failures;
    char *out = log_captured(LOG_INFO, msg, &len);
    bool ok = json ? parse_json_line(out, len, &p) : parse_logfmt(out, len, &p);

    CHECK(ok);
    CHECK_INT(count_char(out, len, '\n'), 1);
    if (ok) {
        CHECK_INT(p.n, 3);
        CHECK_STR(p.key[0], "time");
        CHECK(time_value_valid(p.value[0]));
        CHECK_STR(p.key[1], "level");
        CHECK_STR(p.value[1], "info");
        CHECK_STR(p.key[2], "msg");
        CHECK_STR(p.value[2], want_msg ? want_msg : msg);
    }
    if (check_failures != before) fprintf(stderr, "  ... line: %s", out);
    free(out);
}

/* The line without its time="..." / {"time":"...", prefix, for exact comparisons. */
static const char *after_time(const char *line, bool json)
{
    size_t skip = json ? strlen("{\"time\":\"2026-11-27T23:00:00.123Z\",")
                       : strlen("time=\"2026-11-27T23:00:00.123Z\" ");
    return strlen(line) >= skip ? line + skip : "";
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_level_parse(void)
{
    enum log_level l = LOG_ERROR;

    CHECK_INT(log_level_parse("error", &l), 0);
    CHECK_INT(l, LOG_ERROR);
    CHECK_INT(log_level_parse("warn", &l), 0);
    CHECK_INT(l, LOG_WARN);
    CHECK_INT(log_level_parse("warning", &l), 0);
    CHECK_INT(l, LOG_WARN);
    CHECK_INT(log_level_parse("INFO", &l), 0);
    CHECK_INT(l, LOG_INFO);
    CHECK_INT(log_level_parse("debug", &l), 0);
    CHECK_INT(l, LOG_DEBUG);
    l = LOG_INFO;
    CHECK_INT(log_level_parse("", &l), -EINVAL);
    CHECK_INT(log_level_parse("verbose", &l), -EINVAL);
    CHECK_INT(log_level_parse("info ", &l), -EINVAL);
    CHECK_INT(log_level_parse(NULL, &l), -EINVAL);
    CHECK_INT(l, LOG_INFO);
}

static void test_time_format(void)
{
    char buf[32];
    struct timespec ts = {.tv_sec = 1795820400, .tv_nsec = 123999999};

    log_format_time_at(buf, sizeof buf, &ts);
    CHECK_STR(buf, "2026-11-27T23:00:00.123Z");
    /* The date and time of a second are kept for the next line: the same second with
     * other milliseconds, the next second, a short buffer (cut, as snprintf cuts). */
    ts.tv_nsec = 7000000;
    log_format_time_at(buf, sizeof buf, &ts);
    CHECK_STR(buf, "2026-11-27T23:00:00.007Z");
    ts.tv_sec += 86399;
    ts.tv_nsec = 999999999;
    log_format_time_at(buf, sizeof buf, &ts);
    CHECK_STR(buf, "2026-11-28T22:59:59.999Z");
    log_format_time_at(buf, 11, &ts);
    CHECK_STR(buf, "2026-11-28");
    ts.tv_sec = 0;
    ts.tv_nsec = 0;
    log_format_time_at(buf, sizeof buf, &ts);
    CHECK_STR(buf, "1970-01-01T00:00:00.000Z");
    log_format_time(buf, sizeof buf);
    CHECK(time_value_valid(buf));
}

static void test_defaults(void)
{
    size_t len;
    char *out;

    configure("debug", "json", NULL, 0);
    log_configure(NULL);
    CHECK(log_enabled(LOG_ERROR));
    CHECK(log_enabled(LOG_INFO));
    CHECK(!log_enabled(LOG_DEBUG));

    out = log_captured(LOG_INFO, "listening on 127.0.0.1:5000", &len);
    CHECK(strncmp(out, "time=\"", 6) == 0);
    CHECK_STR(after_time(out, false), "level=info msg=\"listening on 127.0.0.1:5000\"\n");
    free(out);

    out = log_captured(LOG_INFO, "ready", &len);
    CHECK_STR(after_time(out, false), "level=info msg=ready\n");
    free(out);

    out = log_captured(LOG_INFO, "", &len);
    CHECK_STR(after_time(out, false), "level=info msg=\"\"\n");
    free(out);

    out = log_captured(LOG_DEBUG, "hidden", &len);
    CHECK_INT(len, 0);
    free(out);
}

static void test_text_hostile_values(void)
{
    size_t len;
    char *out;

    log_configure(NULL);
    check_round_trip(false, "a\nlevel=error msg=forged", NULL);
    check_round_trip(false, "say \"hi\" level=error", NULL);
    check_round_trip(false, "C:\\path\\\" x=1", NULL);
    check_round_trip(false, "ctl \x01\x1b[31m\x7f\r\t end", NULL);
    check_round_trip(false, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", NULL);
    check_round_trip(false, "nel\xc2\x85 ls\xe2\x80\xa8", NULL);
    /* Invalid UTF-8 reads back byte for byte (\xNN). */
    check_round_trip(false, "bad \xff\xc3 \xed\xa0\x80", NULL);

    out = log_captured(LOG_INFO, "a\nlevel=error msg=forged", &len);
    CHECK_STR(after_time(out, false), "level=info msg=\"a\\nlevel=error msg=forged\"\n");
    free(out);
    out = log_captured(LOG_INFO, "q\"b\\c\x01\xc3\xa9\xff", &len);
    CHECK_STR(after_time(out, false), "level=info msg=\"q\\\"b\\\\c\\x01\xc3\xa9\\xff\"\n");
    free(out);
    out = log_captured(LOG_WARN, "nel\xc2\x85", &len);
    CHECK_STR(after_time(out, false), "level=warning msg=\"nel\\u0085\"\n");
    free(out);
}

static void test_json_format(void)
{
    size_t len;
    char *out;

    configure("info", "json", NULL, 0);
    out = log_captured(LOG_ERROR, "upstream \"a\" failed\n", &len);
    CHECK(strncmp(out, "{\"time\":\"", 9) == 0);
    CHECK_STR(after_time(out, true),
              "\"level\":\"error\",\"msg\":\"upstream \\\"a\\\" failed\\u000a\"}\n");
    free(out);

    check_round_trip(true, "a\nlevel=error msg=forged", NULL);
    check_round_trip(true, "\",\"level\":\"error", NULL);
    check_round_trip(true, "back\\slash \x01\x1f\x7f \t\r", NULL);
    check_round_trip(true, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe2\x80\xa8", NULL);
    check_round_trip(true, "bad \xff!", "bad \xef\xbf\xbd!");
    log_configure(NULL);
}

static void test_level_filtering(void)
{
    size_t len;
    char *out;

    configure("warn", NULL, NULL, 0);
    CHECK(!log_enabled(LOG_INFO));
    CHECK(log_enabled(LOG_WARN));
    out = log_captured(LOG_INFO, "dropped", &len);
    CHECK_INT(len, 0);
    free(out);
    out = log_captured(LOG_DEBUG, "dropped", &len);
    CHECK_INT(len, 0);
    free(out);
    out = log_captured(LOG_WARN, "kept", &len);
    CHECK_STR(after_time(out, false), "level=warning msg=kept\n");
    free(out);
    out = log_captured(LOG_ERROR, "kept", &len);
    CHECK_STR(after_time(out, false), "level=error msg=kept\n");
    free(out);

    configure("error", NULL, NULL, 0);
    out = log_captured(LOG_WARN, "dropped", &len);
    CHECK_INT(len, 0);
    free(out);

    configure("DEBUG", NULL, NULL, 0);
    out = log_captured(LOG_DEBUG, "kept", &len);
    CHECK_STR(after_time(out, false), "level=debug msg=kept\n");
    free(out);

    /* An unknown level is info, as is no level. */
    configure("loud", NULL, NULL, 0);
    CHECK(log_enabled(LOG_INFO) && !log_enabled(LOG_DEBUG));
    configure(NULL, NULL, NULL, 0);
    CHECK(log_enabled(LOG_INFO) && !log_enabled(LOG_DEBUG));
    log_configure(NULL);
}

static void test_fields(void)
{
    static const char *const kv[] = {
        "service", "registry", "environment",     "prod east", "time",
        "x",       "evil key", "v\n level=error", "empty",     "",
    };
    size_t len;
    char *out;

    configure(NULL, "text", kv, 5);
    out = log_captured(LOG_INFO, "hello", &len);
    CHECK_STR(after_time(out, false),
              "level=info msg=hello service=registry environment=\"prod east\" fields.time=x "
              "evil_key=\"v\\n level=error\" empty=\"\"\n");
    free(out);

    configure(NULL, "json", kv, 5);
    out = log_captured(LOG_INFO, "hello", &len);
    CHECK_STR(after_time(out, true),
              "\"level\":\"info\",\"msg\":\"hello\",\"service\":\"registry\",\"environment\":"
              "\"prod east\",\"fields.time\":\"x\",\"evil key\":\"v\\u000a level=error\","
              "\"empty\":\"\"}\n");
    static struct pairs p;
    CHECK(parse_json_line(out, len, &p));
    CHECK_INT(p.n, 8);
    free(out);

    /* Reset: no fields any more. */
    log_configure(NULL);
    out = log_captured(LOG_INFO, "hello", &len);
    CHECK_STR(after_time(out, false), "level=info msg=hello\n");
    free(out);
}

static void test_fields_overflow(void)
{
    static const char *kv[2 * 64];
    static char values[64][200];
    struct capture c;
    size_t len;

    for (int i = 0; i < 64; i++) {
        memset(values[i], 'v', sizeof values[i] - 1);
        values[i][sizeof values[i] - 1] = '\0';
        kv[2 * i] = "k";
        kv[2 * i + 1] = values[i];
    }
    capture_begin(&c, STDERR_FILENO);
    configure(NULL, NULL, kv, 64);
    char *out = capture_end(&c, &len);
    CHECK_CONTAINS(out, "level=warning");
    CHECK_CONTAINS(out, "fields dropped");
    free(out);

    /* The fields that fit are on every line, and a long message still leaves them room. */
    char *msg = malloc(LOG_LINE_MAX * 2);
    memset(msg, 'm', LOG_LINE_MAX * 2 - 1);
    msg[LOG_LINE_MAX * 2 - 1] = '\0';
    out = log_captured(LOG_INFO, msg, &len);
    CHECK(len <= LOG_LINE_MAX);
    CHECK_INT(count_char(out, len, '\n'), 1);
    CHECK(len > 0 && out[len - 1] == '\n');
    static struct pairs p;
    CHECK(parse_logfmt(out, len, &p));
    CHECK(p.n > 3 + 10);
    CHECK_STR(p.key[p.n - 1], "k");
    CHECK_INT(p.value_len[p.n - 1], 199);
    CHECK(p.value_len[2] > 8000 && strcmp(p.value[2] + p.value_len[2] - 3, "...") == 0);
    free(out);
    free(msg);
    log_configure(NULL);
}

static void check_truncated(bool json, const char *msg, char fill)
{
    static struct pairs p;
    size_t len;
    char *out = log_captured(LOG_INFO, msg, &len);
    bool ok = json ? parse_json_line(out, len, &p) : parse_logfmt(out, len, &p);

    CHECK(ok);
    CHECK(len <= LOG_LINE_MAX);
    CHECK(len >= LOG_LINE_MAX - 8);
    CHECK_INT(count_char(out, len, '\n'), 1);
    if (ok) {
        CHECK_INT(p.n, 3);
        size_t n = p.value_len[2];
        CHECK(n > 3 && strcmp(p.value[2] + n - 3, "...") == 0);
        bool same = true;
        for (size_t i = 0; i + 3 < n; i++)
            same &= p.value[2][i] == fill;
        CHECK(same);
    }
    free(out);
}

static void test_truncation(void)
{
    size_t big = 3 * LOG_LINE_MAX;
    char *msg = malloc(big + 1);

    log_configure(NULL);
    memset(msg, 'a', big);
    msg[big] = '\0';
    check_truncated(false, msg, 'a');
    size_t len;
    char *out = log_captured(LOG_INFO, msg, &len);
    CHECK_INT(len, LOG_LINE_MAX);
    CHECK(len > 4 && memcmp(out + len - 4, "...\n", 4) == 0);
    free(out);

    /* Escapes are never cut in half. */
    memset(msg, '\n', big);
    check_truncated(false, msg, '\n');
    memset(msg, '\x01', big);
    check_truncated(false, msg, '\x01');
    for (size_t i = 0; i + 2 <= big; i += 2)
        memcpy(msg + i, "\xc3\xa9", 2);
    out = log_captured(LOG_INFO, msg, &len);
    static struct pairs p;
    CHECK(parse_logfmt(out, len, &p));
    CHECK(p.n == 3 && p.value_len[2] % 2 == 1); /* whole characters, then "..." */
    free(out);

    configure(NULL, "json", NULL, 0);
    memset(msg, 'a', big);
    check_truncated(true, msg, 'a');
    memset(msg, '"', big);
    check_truncated(true, msg, '"');
    memset(msg, '\x02', big);
    check_truncated(true, msg, '\x02');

    /* Just under the cap: written whole. */
    log_configure(NULL);
    size_t fits = LOG_LINE_MAX - strlen("time=\"2026-11-27T23:00:00.123Z\" level=info msg=\n");
    memset(msg, 'a', big);
    msg[fits] = '\0';
    out = log_captured(LOG_INFO, msg, &len);
    CHECK_INT(len, LOG_LINE_MAX);
    CHECK(strstr(out, "...") == NULL);
    free(out);
    msg[fits] = 'a';
    msg[fits + 1] = '\0';
    out = log_captured(LOG_INFO, msg, &len);
    CHECK_INT(len, LOG_LINE_MAX);
    CHECK(strstr(out, "...\n") != NULL);
    free(out);
    free(msg);
}

static void test_append_kv(void)
{
    char buf[64];
    size_t pos = 0;

    /* Consecutive calls build a line: a space before every pair but the first. */
    CHECK_INT(log_append_kv(buf, sizeof buf, &pos, "cache", "hit", 3), 0);
    CHECK_INT(log_append_kv(buf, sizeof buf, &pos, "ua", "docker/24 (linux)", 17), 0);
    CHECK_INT(log_append_kv(buf, sizeof buf, &pos, "x y=", "a\nb\"", 4), 0);
    CHECK_INT(log_append_kv(buf, sizeof buf, &pos, "e", NULL, 0), 0);
    CHECK_STR(buf, "cache=hit ua=\"docker/24 (linux)\" x_y_=\"a\\nb\\\"\" e=\"\"");
    CHECK_INT(pos, strlen(buf));

    /* Every capacity: -ENOSPC and *pos unchanged until it fits, never a byte past cap. */
    static const struct {
        const char *key, *value;
        const char *want;
    } cases[] = {
        {"k", "value", "k=value"},
        {"k", "two words", "k=\"two words\""},
        {"k", "\x01\n", "k=\"\\x01\\n\""},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (size_t start = 0; start <= 2; start += 2) {
            /* At 0 the pair alone; further on, a space and the pair. */
            size_t need = (start > 0) + strlen(cases[c].want) + 1;
            for (size_t cap = 0; cap <= need + 1; cap++) {
                char big[64];
                memset(big, '#', sizeof big);
                size_t at = start;
                int r = log_append_kv(big, start + cap, &at, cases[c].key, cases[c].value,
                                      strlen(cases[c].value));
                if (cap < need) {
                    CHECK_INT(r, -ENOSPC);
                    CHECK_INT(at, start);
                } else {
                    CHECK_INT(r, 0);
                    CHECK_INT(at, start + need - 1);
                    CHECK(start == 0 || big[start] == ' ');
                    CHECK_STR(big + start + (start > 0), cases[c].want);
                }
                for (size_t i = start + cap; i < sizeof big; i++)
                    CHECK(big[i] == '#');
            }
        }
    }

    /* A position already past the capacity is refused. */
    pos = 10;
    CHECK_INT(log_append_kv(buf, 5, &pos, "k", "v", 1), -ENOSPC);
    CHECK_INT(pos, 10);
}

static void test_access_lines(void)
{
    struct capture c;
    size_t len;
    char *out;

    capture_begin(&c, STDOUT_FILENO);
    log_access_line("GET /v2/ 200", 12);
    log_access_line("with newline\n", 13);
    log_access_line("in\nside\r\x01 x", 11);
    log_access_line("", 0);
    out = capture_end(&c, &len);
    CHECK_STR(out, "GET /v2/ 200\nwith newline\nin\\x0aside\\x0d\\x01 x\n\n");
    free(out);

    /* Not filtered by level: the access log is its own stream. */
    configure("error", NULL, NULL, 0);
    capture_begin(&c, STDOUT_FILENO);
    log_access_line("kept", 4);
    out = capture_end(&c, &len);
    CHECK_STR(out, "kept\n");
    free(out);
    log_configure(NULL);

    /* Cut at the cap with "...", escapes kept whole. */
    size_t big = 2 * LOG_LINE_MAX;
    char *line = malloc(big);
    memset(line, 'x', big);
    capture_begin(&c, STDOUT_FILENO);
    log_access_line(line, big);
    log_access_line(line, LOG_LINE_MAX - 1);
    log_access_line(line, LOG_LINE_MAX);
    memset(line, '\n', big);
    log_access_line(line, big);
    out = capture_end(&c, &len);
    CHECK_INT(len, 4 * LOG_LINE_MAX);
    CHECK_INT(count_char(out, len, '\n'), 4);
    char *second = out + LOG_LINE_MAX, *third = second + LOG_LINE_MAX;
    CHECK(memcmp(second - 4, "...\n", 4) == 0);
    CHECK(memcmp(third - 4, "xxx\n", 4) == 0);
    char *fourth = strchr(third, '\n') + 1;
    CHECK(fourth - third == LOG_LINE_MAX);
    CHECK(out + len - fourth <= LOG_LINE_MAX);
    CHECK(memcmp(out + len - 8, "\\x0a...\n", 8) == 0);
    free(out);
    free(line);
}

int main(void)
{
    RUN(test_level_parse);
    RUN(test_time_format);
    RUN(test_defaults);
    RUN(test_text_hostile_values);
    RUN(test_json_format);
    RUN(test_level_filtering);
    RUN(test_fields);
    RUN(test_fields_overflow);
    RUN(test_truncation);
    RUN(test_append_kv);
    RUN(test_access_lines);
    return check_summary();
}
