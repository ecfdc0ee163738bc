/*
 * test_router.c: which handler answers a request (app/router.h), wired as main.c wires
 * it: a real http_server on 127.0.0.1 hands each request to router_handle, which sends
 * it to the relay, to the blob service (with a store in a temporary directory and a fetch
 * manager), or answers it itself. Behind them is a scripted origin on the fake network
 * (fakenet.h) that records the first line of every request it gets and answers /v2/, a
 * manifest, one sha256 blob (HEAD and GET), a sha512 blob, and 404 to anything else.
 *
 * Each request is sent by the fake network's client on a connection of its own (then
 * half-closed), and the test reads the whole response: status, headers, body. The access
 * facts of each exchange come from the server's on_complete. Everything is closed at the
 * end and the loop must close (uv_loop_close() == 0).
 */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "app/router.h"
#include "base/config.h"
#include "base/digest.h"
#include "cache/blob.h"
#include "cache/fetch.h"
#include "cache/store.h"
#include "check.h"
#include "fakenet.h"
#include "net/server.h"
#include "net/upstream.h"
#include "registry/relay.h"
#include "registry/upstreams.h"

#define WAIT_MS 20000
#define BLOB_SIZE 4096
#define MAX_LINES 32
#define SHA512_HEX                                                                                 \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"                             \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static const char manifest[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}";
static const char sha512_body[] = "bytes of a sha512 blob";

/* --- The scripted origin ------------------------------------------------------------- */

struct origin {
    struct fakenet_server *srv;
    char hex[65];
    char blob[BLOB_SIZE];
    char replies[6][8192];
    size_t reply_len[6];
    unsigned n_lines;
    char lines[MAX_LINES][256]; /* the first line of every request, in order */
};

enum { R_BASE, R_MANIFEST, R_BLOB_HEAD, R_BLOB_GET, R_SHA512, R_404 };

static void origin_reply(struct origin *o, int which, const char *head, const char *body,
                         size_t body_len, bool send_body)
{
    int n = snprintf(o->replies[which], sizeof(o->replies[which]),
                     "HTTP/1.1 %sContent-Length: %zu\r\n\r\n", head, body_len);
    if (send_body) memcpy(o->replies[which] + n, body, body_len);
    o->reply_len[which] = (size_t)n + (send_body ? body_len : 0);
}

static void origin_init(struct origin *o)
{
    for (size_t i = 0; i < BLOB_SIZE; i++)
        o->blob[i] = (char)(i * 7 + 3);
    struct digest_sha256 ctx;
    unsigned char bin[32];
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, o->blob, BLOB_SIZE);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, o->hex);
    char head[512];
    origin_reply(o, R_BASE, "200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n", "{}", 2,
                 true);
    origin_reply(o, R_MANIFEST,
                 "200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                 "Docker-Content-Digest: sha256:feed\r\n",
                 manifest, sizeof(manifest) - 1, true);
    snprintf(head, sizeof(head),
             "200 OK\r\nContent-Type: application/octet-stream\r\n"
             "Docker-Content-Digest: sha256:%s\r\n",
             o->hex);
    origin_reply(o, R_BLOB_HEAD, head, o->blob, BLOB_SIZE, false);
    origin_reply(o, R_BLOB_GET, head, o->blob, BLOB_SIZE, true);
    origin_reply(o, R_SHA512, "200 OK\r\nContent-Type: application/octet-stream\r\n", sha512_body,
                 sizeof(sha512_body) - 1, true);
    origin_reply(o, R_404, "404 Not Found\r\n", "", 0, true);
}

static void origin_answer(void *ud, const char *head, size_t len, struct fakenet_reply *out)
{
    struct origin *o = ud;
    char line[256];
    fakenet_request_line(head, len, line, sizeof(line));
    if (o->n_lines < MAX_LINES) memcpy(o->lines[o->n_lines++], line, sizeof(line));
    char blob_path[128];
    snprintf(blob_path, sizeof(blob_path), "/blobs/sha256:%s ", o->hex);
    int r = R_404;
    if (strstr(line, " /v2/ ") != NULL)
        r = R_BASE;
    else if (strstr(line, "/manifests/") != NULL)
        r = R_MANIFEST;
    else if (strstr(line, blob_path) != NULL)
        r = strncmp(line, "HEAD ", 5) == 0 ? R_BLOB_HEAD : R_BLOB_GET;
    else if (strstr(line, "/blobs/sha512:") != NULL)
        r = R_SHA512;
    out->data = o->replies[r];
    out->len = o->reply_len[r];
    out->keep_alive = true;
}

/* --- The cache, wired as main.c wires it --------------------------------------------- */

struct env {
    uv_loop_t loop;
    char root[64];
    struct origin origin;
    struct config *cfg;
    struct store *store;
    struct upstream_pool *pool;
    struct upstreams *upstreams;
    struct relay_service *relays;
    struct fetch_manager *fetches;
    struct blob_service *blobs;
    struct router *router;
    struct http_server *server;
    uint16_t port;
    char origin_host[32]; /* 127.0.0.1:PORT, as ns names it */
    /* The access facts of the last exchange. */
    unsigned completed;
    int status;
    char cache[16];
};

static void on_complete(void *ud, const struct log_access_entry *e)
{
    struct env *env = ud;
    env->completed++;
    env->status = e->status;
    snprintf(env->cache, sizeof(env->cache), "%s", e->cache ? e->cache : "");
}

static void env_init(struct env *e)
{
    memset(e, 0, sizeof(*e));
    CHECK_INT(uv_loop_init(&e->loop), 0);
    const char *tmp = getenv("TMPDIR");
    snprintf(e->root, sizeof(e->root), "%s/cc-router-XXXXXX",
             tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    CHECK(mkdtemp(e->root) != NULL);
    origin_init(&e->origin);
    CHECK_INT(fakenet_server_start(&e->loop, origin_answer, &e->origin, &e->origin.srv), 0);
    snprintf(e->origin_host, sizeof(e->origin_host), "127.0.0.1:%u",
             (unsigned)fakenet_server_port(e->origin.srv));

    char yaml[2048], err[512];
    snprintf(yaml, sizeof(yaml),
             "version: 0.1\n"
             "storage:\n  filesystem: {rootdirectory: %s}\n"
             "middleware:\n  registry:\n    - name: downstream\n      options:\n"
             "        upstreams:\n"
             "          - originhost: http://%s\n"
             "          - originhost: http://registry.example.com\n",
             e->root, e->origin_host);
    CHECK_INT(config_parse("router.yml", yaml, strlen(yaml), NULL, &e->cfg, err, sizeof(err)), 0);
    CHECK_INT(store_open(e->root, &e->store, NULL, err, sizeof(err)), 0);
    struct upstream_pool_opts po = {.connect_timeout_ms = 5000, .io_timeout_ms = 5000};
    e->pool = upstream_pool_new(&e->loop, &po);
    e->upstreams = e->pool ? upstreams_new(e->cfg, e->pool) : NULL;
    e->relays = e->upstreams ? relay_service_new(e->upstreams) : NULL;
    e->fetches = e->pool ? fetch_manager_new(&e->loop, e->store, e->pool) : NULL;
    e->blobs = e->upstreams && e->fetches
                   ? blob_service_new(&e->loop, e->store, e->fetches, e->upstreams)
                   : NULL;
    e->router = e->relays && e->blobs ? router_new(e->upstreams, e->relays, e->blobs) : NULL;
    CHECK(e->router != NULL);

    struct http_server_opts opts = {
        .on_request = router_handle,
        .ud = e->router,
        .on_complete = on_complete,
        .format_ud = e,
    };
    CHECK_INT(http_server_listen(&e->loop, "127.0.0.1:0", &opts, &e->server, err, sizeof(err)), 0);
    const char *colon = strrchr(http_server_address(e->server), ':');
    e->port = (uint16_t)atoi(colon + 1);
    fakenet_allow(e->port);
}

static void server_closed(void *arg)
{
    *(bool *)arg = true;
}

static void env_finish(struct env *e)
{
    bool closed = false;
    http_server_shutdown(e->server, 0, server_closed, &closed);
    CHECK_INT(relay_in_flight(e->relays), 0);
    CHECK_INT(fetch_manager_active(e->fetches), 0);
    fetch_manager_cancel_all(e->fetches);
    upstream_pool_close(e->pool);
    fakenet_server_stop(e->origin.srv);
    fakenet_disallow(e->port);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK(closed);
    CHECK_INT(uv_loop_close(&e->loop), 0);
    blob_service_free(e->blobs);
    fetch_manager_free(e->fetches);
    router_free(e->router);
    relay_service_free(e->relays);
    upstreams_free(e->upstreams);
    store_close(e->store);
    config_free(e->cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->root);
    CHECK_INT(system(cmd), 0);
}

/* --- One exchange from the client's side --------------------------------------------- */

struct response {
    struct fakenet_client_stats st;
    int status;
    const char *body; /* into st.response */
};

static bool client_done(void *arg)
{
    return ((struct fakenet_client_stats *)arg)->done;
}

/* Sends `method target` with `extra` header lines and reads the whole response. */
static void ask(struct env *e, struct response *r, const char *method, const char *target,
                const char *extra)
{
    static char request[4096];
    snprintf(request, sizeof(request), "%s %s HTTP/1.1\r\nHost: cache\r\n%s\r\n", method, target,
             extra ? extra : "");
    unsigned before = e->completed;
    CHECK_INT(fakenet_client_run(&e->loop, e->port, request, strlen(request), 0, &r->st), 0);
    CHECK(fakenet_run_until(&e->loop, client_done, &r->st, WAIT_MS));
    CHECK_INT(e->completed, before + 1);
    r->status = -1;
    sscanf(r->st.response, "HTTP/1.1 %d ", &r->status);
    const char *end = strstr(r->st.response, "\r\n\r\n");
    r->body = end ? end + 4 : "";
}

/* The value of response header `name`, or "" when it has none. */
static const char *header(const struct response *r, const char *name)
{
    static char value[512];
    char want[128];
    snprintf(want, sizeof(want), "\r\n%s: ", name);
    const char *end = strstr(r->st.response, "\r\n\r\n");
    const char *at = strcasestr(r->st.response, want);
    value[0] = '\0';
    if (at == NULL || end == NULL || at > end) return value;
    at += strlen(want);
    size_t n = strcspn(at, "\r");
    snprintf(value, sizeof(value), "%.*s", (int)n, at);
    return value;
}

/* An error response: the status, the code in the body, JSON. */
static void check_error(const struct response *r, int status, const char *code)
{
    char want[64];
    snprintf(want, sizeof(want), "{\"errors\":[{\"code\":\"%s\"", code);
    CHECK_INT(r->status, status);
    CHECK_CONTAINS(r->body, want);
    CHECK_STR(header(r, "Content-Type"), "application/json; charset=utf-8");
}

/* --- Tests ------------------------------------------------------------------------- */

/* Pushes go to the origin, not here: 405 UNSUPPORTED with Allow under /v2/, else 404. */
static void test_writes_refused(void)
{
    struct env e;
    struct response r;
    env_init(&e);
    static const char *const writes[][2] = {
        {"PUT", "/v2/lib/app/manifests/latest"},
        {"POST", "/v2/lib/app/blobs/uploads/"},
        {"PATCH", "/v2/lib/app/blobs/uploads/some-uuid"},
        {"DELETE", "/v2/lib/app/manifests/sha256:" SHA512_HEX},
        {"POST", "/v2"},
    };
    for (size_t i = 0; i < sizeof(writes) / sizeof(*writes); i++) {
        ask(&e, &r, writes[i][0], writes[i][1], NULL);
        check_error(&r, 405, "UNSUPPORTED");
        CHECK_STR(header(&r, "Allow"), "GET, HEAD");
    }
    /* With a body (a push's), answered without reading it. */
    ask(&e, &r, "PUT", "/v2/lib/app/blobs/uploads/x?digest=sha256:abc",
        "Content-Length: 5\r\n\r\nhello");
    check_error(&r, 405, "UNSUPPORTED");
    /* Outside /v2/ a write is just not found. */
    ask(&e, &r, "POST", "/v2x/lib", NULL);
    check_error(&r, 404, "NOT_FOUND");
    CHECK_STR(header(&r, "Allow"), "");
    ask(&e, &r, "DELETE", "/", NULL);
    check_error(&r, 404, "NOT_FOUND");
    CHECK_INT(e.origin.n_lines, 0);
    env_finish(&e);
}

/*
 * ns picks the upstreams entry and is echoed in OCI-Namespace; one that names no
 * upstream is 404 NAME_UNKNOWN (also one that does not decode, which is not echoed).
 */
static void test_namespace(void)
{
    struct env e;
    struct response r;
    char target[256];
    env_init(&e);
    ask(&e, &r, "GET", "/v2/lib/app/manifests/latest?ns=nowhere.example:5000", NULL);
    check_error(&r, 404, "NAME_UNKNOWN");
    CHECK_STR(header(&r, "OCI-Namespace"), "nowhere.example:5000");
    CHECK_CONTAINS(r.body, "\"detail\":\"nowhere.example:5000\"");
    CHECK_INT(e.origin.n_lines, 0);

    snprintf(target, sizeof(target), "/v2/lib/app/manifests/latest?ns=%s", e.origin_host);
    ask(&e, &r, "GET", target, NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(header(&r, "OCI-Namespace"), e.origin_host);
    CHECK_STR(r.body, manifest);
    CHECK_INT(e.origin.n_lines, 1);

    /* The second entry, named by its host (on http's default port). */
    ask(&e, &r, "GET", "/v2/?ns=registry.example.com", NULL);
    CHECK_STR(header(&r, "OCI-Namespace"), "registry.example.com");
    CHECK_INT(r.status, 503); /* refused by the fake network: unreachable */
    CHECK_INT(e.origin.n_lines, 1);

    /* An ns that does not decode names no upstream, and nothing of it is echoed. */
    ask(&e, &r, "GET", "/v2/lib/app/manifests/latest?ns=ab%zz", NULL);
    check_error(&r, 404, "NAME_UNKNOWN");
    CHECK_STR(header(&r, "OCI-Namespace"), "");
    CHECK_CONTAINS(r.body, "\"detail\":\"\"");
    char longer[512] = "/v2/lib/app/manifests/latest?ns=";
    memset(longer + strlen(longer), 'a', 400); /* longer than any host name */
    ask(&e, &r, "GET", longer, NULL);
    check_error(&r, 404, "NAME_UNKNOWN");
    CHECK_STR(header(&r, "OCI-Namespace"), "");
    CHECK_CONTAINS(r.body, "\"detail\":\"\"");
    /* One that decodes to a line break is not echoed into the head. */
    ask(&e, &r, "GET", "/v2/lib/app/manifests/latest?ns=a%0d%0aX-Injected:%201", NULL);
    check_error(&r, 404, "NAME_UNKNOWN");
    CHECK_STR(header(&r, "X-Injected"), "");
    CHECK_STR(header(&r, "OCI-Namespace"), "");
    CHECK_INT(e.origin.n_lines, 1);
    env_finish(&e);
}

/* Names, tags and digests against the grammar: 400 with the code that says which. */
static void test_grammar(void)
{
    struct env e;
    struct response r;
    env_init(&e);
    ask(&e, &r, "GET", "/v2/Lib/App/manifests/latest", NULL);
    check_error(&r, 400, "NAME_INVALID");
    ask(&e, &r, "HEAD", "/v2/lib//app/tags/list", NULL);
    CHECK_INT(r.status, 404); /* "//" is no path of the API */
    /* A reference that is neither a tag nor a digest names no manifest (as registries
     * answer it, and the OCI conformance suite requires). */
    ask(&e, &r, "GET", "/v2/lib/app/manifests/-latest", NULL);
    check_error(&r, 404, "MANIFEST_UNKNOWN");
    ask(&e, &r, "GET", "/v2/lib/app/manifests/sha256:abc", NULL);
    check_error(&r, 400, "DIGEST_INVALID");
    ask(&e, &r, "GET", "/v2/lib/app/blobs/sha256:ABCDEF", NULL);
    check_error(&r, 400, "DIGEST_INVALID");
    ask(&e, &r, "GET", "/v2/lib/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", NULL);
    check_error(&r, 400, "DIGEST_INVALID");
    ask(&e, &r, "GET", "/v2/lib/app/referrers/latest", NULL);
    check_error(&r, 400, "DIGEST_INVALID");
    CHECK_INT(e.origin.n_lines, 0);
    env_finish(&e);
}

static bool no_fetch_running(void *fetches)
{
    return fetch_manager_active(fetches) == 0;
}

/* A sha256 blob goes to the blob service: the origin authorizes (HEAD), then serves (GET). */
static void test_sha256_blob_to_blob_service(void)
{
    struct env e;
    struct response r;
    char target[256], line[256];
    env_init(&e);
    snprintf(target, sizeof(target), "/v2/lib/app/blobs/sha256:%s", e.origin.hex);
    ask(&e, &r, "GET", target, NULL);
    CHECK_INT(r.status, 200);
    CHECK_INT(r.st.bytes_read - (size_t)(r.body - r.st.response), BLOB_SIZE);
    CHECK(memcmp(r.body, e.origin.blob, BLOB_SIZE) == 0);
    CHECK_STR(e.cache, "miss");
    CHECK_INT(e.origin.n_lines, 2);
    snprintf(line, sizeof(line), "HEAD %s HTTP/1.1", target);
    CHECK_STR(e.origin.lines[0], line);
    snprintf(line, sizeof(line), "GET %s HTTP/1.1", target);
    CHECK_STR(e.origin.lines[1], line);
    /* The commit runs behind the response; then the blob is a hit (the origin is only
     * asked to authorize it). */
    CHECK(fakenet_run_until(&e.loop, no_fetch_running, e.fetches, WAIT_MS));
    CHECK_INT(fetch_stats(e.fetches)->committed, 1);
    ask(&e, &r, "GET", target, NULL);
    CHECK_INT(r.status, 200);
    CHECK(memcmp(r.body, e.origin.blob, BLOB_SIZE) == 0);
    CHECK_STR(e.cache, "hit");
    CHECK_INT(e.origin.n_lines, 3);
    snprintf(line, sizeof(line), "HEAD %s HTTP/1.1", target);
    CHECK_STR(e.origin.lines[2], line);
    env_finish(&e);
}

/* A blob of another digest is relayed (cache=bypass); so are manifests, /v2/ and tags. */
static void test_relayed(void)
{
    struct env e;
    struct response r;
    env_init(&e);
    ask(&e, &r, "GET", "/v2/lib/app/blobs/sha512:" SHA512_HEX, NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(r.body, sha512_body);
    CHECK_STR(e.cache, "bypass");
    CHECK_INT(e.origin.n_lines, 1);
    CHECK_STR(e.origin.lines[0], "GET /v2/lib/app/blobs/sha512:" SHA512_HEX " HTTP/1.1");

    ask(&e, &r, "GET", "/v2/lib/app/manifests/latest", NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(r.body, manifest);
    CHECK_STR(header(&r, "Content-Type"), "application/vnd.oci.image.manifest.v1+json");
    CHECK_STR(header(&r, "Docker-Content-Digest"), "sha256:feed");
    CHECK_STR(header(&r, "OCI-Namespace"), "");
    CHECK_STR(e.cache, "");
    CHECK_STR(e.origin.lines[1], "GET /v2/lib/app/manifests/latest HTTP/1.1");

    ask(&e, &r, "HEAD", "/v2/", NULL);
    CHECK_INT(r.status, 200);
    CHECK_STR(header(&r, "Docker-Distribution-Api-Version"), "registry/2.0");
    CHECK_STR(e.origin.lines[2], "HEAD /v2/ HTTP/1.1");

    ask(&e, &r, "GET", "/v2/lib/app/tags/list?n=10", NULL);
    CHECK_INT(r.status, 404); /* the origin's answer, relayed */
    CHECK_STR(e.origin.lines[3], "GET /v2/lib/app/tags/list?n=10 HTTP/1.1");
    CHECK_INT(e.origin.n_lines, 4);
    env_finish(&e);
}

/* Anything that is no pull API path is a 404 NOT_FOUND here, never asked upstream. */
static void test_anything_else(void)
{
    struct env e;
    struct response r;
    env_init(&e);
    static const char *const paths[] = {
        "/",
        "/favicon.ico",
        "/v2x",
        "/v2/lib/app/blobs/uploads/",
        "/v2/lib/app/other",
        "/v2/lib/app/manifests/",
        "/v1/_ping",
        "/v2/lib/../app/manifests/latest",
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(*paths); i++) {
        ask(&e, &r, "GET", paths[i], NULL);
        check_error(&r, 404, "NOT_FOUND");
    }
    CHECK_INT(e.origin.n_lines, 0);
    env_finish(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(120);
    RUN(test_writes_refused);
    RUN(test_namespace);
    RUN(test_grammar);
    RUN(test_sha256_blob_to_blob_service);
    RUN(test_relayed);
    RUN(test_anything_else);
    return check_summary();
}
