/*
 * test_url.c: url_parse and url_format_origin.
 */
#include <errno.h>

#include "check.h"
#include "base/url.h"

/* Parses text, which must succeed, and checks what came out. */
static void expect_url(const char *text, int tls, const char *host, int port, int port_explicit,
                       const char *path)
{
    struct url u;
    const char *why = NULL;
    int rc = url_parse(text, &u, &why);
    if (rc != 0) {
        fprintf(stderr, "url_parse(\"%s\") failed: %s\n", text, why ? why : "(null)");
        CHECK_INT(rc, 0);
        return;
    }
    CHECK_INT(u.tls, tls);
    CHECK_STR(u.host, host);
    CHECK_INT(u.port, port);
    CHECK_INT(u.port_explicit, port_explicit);
    CHECK_STR(u.path, path);
}

/* Parses text, which must fail with a reason that contains `reason`. */
static void expect_bad(const char *text, const char *reason)
{
    struct url u;
    const char *why = NULL;
    int rc = url_parse(text, &u, &why);
    if (rc != -EINVAL)
        fprintf(stderr, "url_parse(\"%s\") returned %d, expected -EINVAL\n", text, rc);
    CHECK_INT(rc, -EINVAL);
    CHECK_CONTAINS(why, reason);
}

static void test_accepted(void)
{
    expect_url("https://dtr.example.com", 1, "dtr.example.com", 443, 0, "");
    expect_url("http://dtr.example.com", 0, "dtr.example.com", 80, 0, "");
    expect_url("HTTPS://Dtr.Example.com", 1, "Dtr.Example.com", 443, 0, "");
    expect_url("https://dtr.example.com/", 1, "dtr.example.com", 443, 0, "");
    expect_url("https://dtr.example.com:8443", 1, "dtr.example.com", 8443, 1, "");
    expect_url("https://dtr.example.com:443", 1, "dtr.example.com", 443, 1, "");
    expect_url("http://cache:1/", 0, "cache", 1, 1, "");
    expect_url("http://cache:65535", 0, "cache", 65535, 1, "");
    expect_url("http://localhost:5000/mirror/", 0, "localhost", 5000, 1, "/mirror");
    expect_url("http://localhost:5000/a/b//", 0, "localhost", 5000, 1, "/a/b");
    expect_url("http://localhost/a%20b", 0, "localhost", 80, 0, "/a%20b");
    expect_url("http://10.0.0.7:5000", 0, "10.0.0.7", 5000, 1, "");
    expect_url("http://[::1]:5000/v2", 0, "::1", 5000, 1, "/v2");
    expect_url("https://[2001:db8::7]", 1, "2001:db8::7", 443, 0, "");
    expect_url("http://under_score.example.com", 0, "under_score.example.com", 80, 0, "");
    expect_url("http://example.com.", 0, "example.com.", 80, 0, "");
}

static void test_refused(void)
{
    expect_bad("", "empty URL");
    expect_bad("dtr.example.com", "missing scheme");
    expect_bad("//dtr.example.com", "missing scheme");
    expect_bad("ftp://dtr.example.com", "unsupported scheme");
    expect_bad("httpx://dtr.example.com", "unsupported scheme");
    expect_bad("://dtr.example.com", "unsupported scheme");
    expect_bad("https://user@dtr.example.com", "user information");
    expect_bad("https://user:pw@dtr.example.com/", "user information");
    expect_bad("https://dtr.example.com?x=1", "query");
    expect_bad("https://dtr.example.com/v2?x=1", "query");
    expect_bad("https://dtr.example.com#top", "fragment");
    expect_bad("https://dtr.example.com/a#top", "fragment");
    expect_bad("https://", "empty host");
    expect_bad("https:///path", "empty host");
    expect_bad("https://:443", "empty host");
    expect_bad("https://[]:443", "empty host");
    expect_bad("https://dtr.example.com:0", "bad port");
    expect_bad("https://dtr.example.com:65536", "bad port");
    expect_bad("https://dtr.example.com:99999999", "bad port");
    expect_bad("https://dtr.example.com:", "bad port");
    expect_bad("https://dtr.example.com:80a", "bad port");
    expect_bad("https://dtr.example.com:-1", "bad port");
    expect_bad("https://dtr.example.com:+80", "bad port");
    expect_bad("https://dtr.example.com :80", "spaces");
    expect_bad(" https://dtr.example.com", "spaces");
    expect_bad("https://dtr.example.com/a b", "spaces");
    expect_bad("https://dtr.example.com\n", "control");
    expect_bad("https://dtr.example.com/\t", "control");
    expect_bad("https://dtr.ex\x7f"
               "ample.com",
               "control");
    expect_bad("https://dtr.exämple.com", "non-ASCII");
    expect_bad("https://dtr..example.com", "empty label");
    expect_bad("https://.example.com", "empty label");
    expect_bad("https://-dtr.example.com", "starts with '-'");
    expect_bad("https://dtr-.example.com", "ends with '-'");
    expect_bad("https://dtr.exa*mple.com", "bad host name");
    expect_bad("https://256.1.1.1", "bad IPv4");
    expect_bad("https://1.2.3", "bad IPv4");
    expect_bad("https://[::1", "missing ']'");
    expect_bad("https://[::g]", "bad IPv6");
    expect_bad("https://[::1]x", "after ']'");
    expect_bad("https://[::1]:0", "bad port");
    expect_bad("https://[fe80::1%25eth0]", "bad IPv6");
    expect_bad("https://dtr.example.com/a%zz", "%-escape");
    expect_bad("https://dtr.example.com/a%2", "%-escape");
    expect_bad("https://dtr.example.com/a\"b", "bad character");
}

static void test_limits(void)
{
    char text[2048];
    /* A 63-byte label is fine, 64 is not. */
    snprintf(text, sizeof(text), "https://%.63s.example.com",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    expect_url(text, 1, text + 8, 443, 0, "");
    snprintf(text, sizeof(text), "https://%.64s.example.com",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    expect_bad(text, "longer than 63");

    /* A host past 255 bytes does not fit struct url. */
    size_t pos = (size_t)snprintf(text, sizeof(text), "https://");
    for (int i = 0; i < 40; i++)
        pos += (size_t)snprintf(text + pos, sizeof(text) - pos, "abcdefg.");
    snprintf(text + pos, sizeof(text) - pos, "com");
    expect_bad(text, "too long");

    /* A path of 1023 bytes fits, 1024 does not. */
    pos = (size_t)snprintf(text, sizeof(text), "http://h");
    memset(text + pos, 'p', 1023);
    text[pos] = '/';
    text[pos + 1023] = '\0';
    struct url u;
    CHECK_INT(url_parse(text, &u, NULL), 0);
    CHECK_INT(strlen(u.path), 1023);
    text[pos + 1023] = 'p';
    text[pos + 1024] = '\0';
    expect_bad(text, "path too long");
    CHECK_INT(url_parse(NULL, &u, NULL), -EINVAL);
}

static void test_format_origin(void)
{
    struct url u;
    char buf[300];
    CHECK_INT(url_parse("https://dtr.example.com/v2/", &u, NULL), 0);
    CHECK_INT(url_format_origin(&u, buf, sizeof(buf)), (int)strlen("https://dtr.example.com"));
    CHECK_STR(buf, "https://dtr.example.com");
    CHECK_INT(url_parse("https://dtr.example.com:443", &u, NULL), 0);
    url_format_origin(&u, buf, sizeof(buf));
    CHECK_STR(buf, "https://dtr.example.com");
    CHECK_INT(url_parse("http://cache:5000/mirror", &u, NULL), 0);
    url_format_origin(&u, buf, sizeof(buf));
    CHECK_STR(buf, "http://cache:5000");
    CHECK_INT(url_parse("HTTP://[::1]:80", &u, NULL), 0);
    url_format_origin(&u, buf, sizeof(buf));
    CHECK_STR(buf, "http://[::1]");
    CHECK_INT(url_parse("https://[2001:db8::7]:8443", &u, NULL), 0);
    url_format_origin(&u, buf, sizeof(buf));
    CHECK_STR(buf, "https://[2001:db8::7]:8443");
    CHECK_INT(url_format_origin(&u, buf, 26), -ENOSPC); /* needs 27 with the NUL */
    CHECK_INT(url_format_origin(&u, buf, 27), 26);
}

int main(void)
{
    RUN(test_accepted);
    RUN(test_refused);
    RUN(test_limits);
    RUN(test_format_origin);
    return check_summary();
}
