/*
 * fuzz_request.c: raw bytes from a client into the real connection handler.
 *
 * One process-wide stack, wired as main.c wires it: http_server -> router_handle ->
 * blob service / relay -> chain -> upstream pool, with a store in a temporary directory
 * that holds one blob, and the default Lua policies choosing upstreams in setups 1 and 2
 * (below). The upstream is faked: a scripted origin on 127.0.0.1 (fakenet.h)
 * answers by path with canned responses (the base, a manifest, the stored blob, another
 * blob whose bytes do not match its digest, a chunked tag list, a 401 challenge, a 500,
 * a redirect, 404). Every other address is refused at connect(2), so nothing leaves the
 * process.
 *
 * Input: byte 0 picks the upstream setup (bits 0-1) and how the client slices what it
 * sends (bits 2-7: slices of that many bytes, one per loop iteration; 0 sends all at once),
 * which exercises incremental parsing and pipelining. The setups:
 *   0  the scripted origin alone, upstreams chosen in C;
 *   1  a dead upstream cache before the origin, chosen by the Lua policy;
 *   2  nothing reachable (Lua policy);
 *   3  as 0, but the origin answers every request with the input's own bytes: the input
 *      is the client's bytes, a NUL byte, and the origin's answer.
 * The client's bytes are sent on a new TCP connection, which is then half-closed; the
 * response is read to the end. A write under /v2/ that carries a body (a push) goes to the
 * relay, as the front relays pushes: its body is read and streamed to the origin, which
 * answers before or after it.
 *
 * Each input runs the loop until every handle it made is closed, then checks that the
 * first response starts with a well-formed status line and that nothing is left: no
 * connection, no exchange in flight, no fetch, no origin connection.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <uv.h>

#include "cache/blob.h"
#include "base/config.h"
#include "base/digest.h"
#include "fakenet.h"
#include "cache/fetch.h"
#include "harness.h"
#include "base/log.h"
#include "lua/policy.h"
#include "app/router.h"
#include "registry/registry.h"
#include "registry/relay.h"
#include "registry/upstreams.h"
#include "net/server.h"
#include "cache/store.h"
#include "net/upstream.h"

#define N_SETUPS 3
#define BLOB_SIZE 2048
#define BLOB_HEX "7c7272c96bd53928d659650ce0d351531ccca5b7ce618d14f48ec5c8ffd4919f"
#define DEAD_CACHE "http://127.0.0.1:1"
#define DEAD_ORIGIN "http://127.0.0.1:2"

enum canned {
    R_BASE,
    R_MANIFEST,
    R_BLOB_GET,
    R_BLOB_HEAD,
    R_WRONG_GET,
    R_WRONG_HEAD,
    R_BLOB_404,
    R_TAGS,
    R_401,
    R_500,
    R_REDIRECT,
    R_404,
    N_CANNED
};

static struct harness {
    uv_loop_t loop;
    struct fakenet_server *origin;
    struct config *cfg[N_SETUPS];
    struct upstream_pool *pool[N_SETUPS];
    struct upstreams *upstreams[N_SETUPS];
    struct relay_service *relays[N_SETUPS];
    struct router *router[N_SETUPS];
    struct fetch_manager *fetches[N_SETUPS];
    struct blob_service *blobs[N_SETUPS];
    struct policy_engine *policy[N_SETUPS];
    struct router *current;
    struct relay_service *current_relays; /* pushes go here, as on the front */
    struct store *store;
    struct http_server *server;
    uint16_t server_port;
    char root[4096];
    char *canned[N_CANNED];
    size_t canned_len[N_CANNED];
    const char *answer; /* setup 3: the origin's answer to everything */
    size_t answer_len;
} h;

static char blob_byte(size_t i)
{
    return (char)((i * 31 + 7) & 0xff);
}

/* --- The scripted origin ---------------------------------------------------------- */

/*
 * A canned response: the status line and headers given, then Content-Length (of body)
 * and Connection: close, then the body unless it answers a HEAD.
 */
static void canned_set(enum canned which, const char *head, const char *body, size_t body_len,
                       bool for_head)
{
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    if (f == NULL) HARNESS_FAIL("out of memory");
    fprintf(f, "%sContent-Length: %zu\r\nConnection: close\r\n\r\n", head, body_len);
    if (!for_head && body_len > 0) fwrite(body, 1, body_len, f);
    if (fclose(f) != 0) HARNESS_FAIL("out of memory");
    h.canned[which] = s;
    h.canned_len[which] = n;
}

static void canned_init(uint16_t port)
{
    char head[1024];
    char blob[BLOB_SIZE];
    for (size_t i = 0; i < BLOB_SIZE; i++)
        blob[i] = blob_byte(i);
    static const char json_type[] = "Content-Type: application/json; charset=utf-8\r\n";
    canned_set(R_BASE, "HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n", "{}",
               2, false);
    static const char manifest[] =
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
        "\"layers\":[{\"digest\":\"sha256:" BLOB_HEX "\",\"size\":2048}]}";
    canned_set(R_MANIFEST,
               "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
               "Docker-Content-Digest: sha256:" BLOB_HEX "\r\nETag: \"x\"\r\n",
               manifest, sizeof(manifest) - 1, false);
    static const char blob_head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                    "Docker-Content-Digest: sha256:" BLOB_HEX "\r\n"
                                    "Accept-Ranges: bytes\r\n";
    canned_set(R_BLOB_GET, blob_head, blob, BLOB_SIZE, false);
    canned_set(R_BLOB_HEAD, blob_head, blob, BLOB_SIZE, true);
    static const char wrong[] = "not this blob";
    static const char wrong_head[] =
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n";
    canned_set(R_WRONG_GET, wrong_head, wrong, sizeof(wrong) - 1, false);
    canned_set(R_WRONG_HEAD, wrong_head, wrong, sizeof(wrong) - 1, true);
    static const char unknown[] =
        "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown\",\"detail\":null}]}";
    snprintf(head, sizeof(head), "HTTP/1.1 404 Not Found\r\n%s", json_type);
    canned_set(R_BLOB_404, head, unknown, sizeof(unknown) - 1, false);
    /* A chunked body: no Content-Length. */
    static const char tags[] =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Link: </v2/a/tags/list?n=1&last=b>; rel=\"next\"\r\nConnection: close\r\n\r\n"
        "c\r\n{\"name\":\"a\",\r\n11\r\n\"tags\":[\"1\",\"b\"]}\r\n0\r\n\r\n";
    h.canned[R_TAGS] = strdup(tags);
    h.canned_len[R_TAGS] = sizeof(tags) - 1;
    snprintf(head, sizeof(head),
             "HTTP/1.1 401 Unauthorized\r\n%sWWW-Authenticate: Bearer "
             "realm=\"http://127.0.0.1:2/token\",service=\"fuzz\","
             "scope=\"repository:private:pull\"\r\n",
             json_type);
    canned_set(R_401, head, "{}", 2, false);
    canned_set(R_500, "HTTP/1.1 500 Internal Server Error\r\n", NULL, 0, false);
    snprintf(head, sizeof(head),
             "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:%u/v2/\r\n",
             (unsigned)port);
    canned_set(R_REDIRECT, head, NULL, 0, false);
    canned_set(R_404, "HTTP/1.1 404 Not Found\r\n", NULL, 0, false);
}

static void origin_answer(void *ud, const char *head, size_t len, struct fakenet_reply *out)
{
    char line[2048];
    fakenet_request_line(head, len, line, sizeof(line));
    bool is_head = strncmp(line, "HEAD ", 5) == 0;
    enum canned r = R_404;
    if (strstr(line, " /v2/ ") != NULL)
        r = R_BASE;
    else if (strstr(line, "/v2/private") != NULL)
        r = R_401;
    else if (strstr(line, "/v2/broken") != NULL)
        r = R_500;
    else if (strstr(line, "/v2/moved") != NULL)
        r = R_REDIRECT;
    else if (strstr(line, "/manifests/") != NULL)
        r = R_MANIFEST;
    else if (strstr(line, "/tags/list") != NULL)
        r = R_TAGS;
    else if (strstr(line, "/blobs/sha256:" BLOB_HEX) != NULL)
        r = is_head ? R_BLOB_HEAD : R_BLOB_GET;
    else if (strstr(line, "/v2/missing") != NULL)
        r = R_BLOB_404;
    else if (strstr(line, "/blobs/") != NULL)
        r = is_head ? R_WRONG_HEAD : R_WRONG_GET;
    out->data = h.canned[r];
    out->len = h.canned_len[r];
    out->chunk = 0;
    if (h.answer != NULL) { /* setup 3 */
        out->data = h.answer;
        out->len = h.answer_len;
    }
}

/* --- Set-up ------------------------------------------------------------------------- */

static struct config *setup_config(const char *origin, const char *cache)
{
    char yaml[8192];
    snprintf(yaml, sizeof(yaml),
             "version: 0.1\n"
             "log: {level: error}\n"
             "storage:\n  filesystem: {rootdirectory: %s}\n  delete: {enabled: true}\n"
             "middleware:\n  registry:\n    - name: downstream\n      options:\n"
             "        blobttl: 1h\n"
             "        upstreams:\n          - originhost: %s\n%s%s%s",
             h.root, origin, cache ? "            upstreamhosts: [" : "", cache ? cache : "",
             cache ? "]\n" : "");
    char err[512];
    struct config *cfg = NULL;
    if (config_parse("fuzz.yml", yaml, strlen(yaml), NULL, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        HARNESS_FAIL("the harness's config does not parse");
    }
    return cfg;
}

static void seed_blob(void)
{
    char blob[BLOB_SIZE];
    for (size_t i = 0; i < BLOB_SIZE; i++)
        blob[i] = blob_byte(i);
    struct digest_sha256 ctx;
    unsigned char bin[32];
    char hex[65];
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, blob, sizeof(blob));
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    if (strcmp(hex, BLOB_HEX) != 0) HARNESS_FAIL("BLOB_HEX is not the digest of the blob");
    char tmp[4096];
    int fd = store_tmp_create_sync(h.store, hex, tmp, sizeof(tmp));
    if (fd < 0 || write(fd, blob, sizeof(blob)) != (ssize_t)sizeof(blob) ||
        store_commit_sync(h.store, fd, tmp, hex) != 0)
        HARNESS_FAIL("cannot store the blob");
    close(fd);
}

static void on_request(struct http_exchange *x, void *ud)
{
    size_t len;
    const char *path = http_req_path(x, &len);
    struct registry_route route;
    if (http_req_has_body(x) && !http_req_is_get(x) && !http_req_is_head(x) &&
        registry_route_parse(path, len, &route) == REG_ERR_NONE && route.kind != ROUTE_NOT_V2) {
        relay_handle(h.current_relays, x, &route, 0);
        return;
    }
    router_handle(x, h.current);
}

static void unref_handle(uv_handle_t *handle, void *arg)
{
    uv_unref(handle);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&h.loop) != 0) HARNESS_FAIL("uv_loop_init");
    harness_tmpdir("request", h.root, sizeof(h.root));
    char err[512];
    if (store_open(h.root, &h.store, NULL, err, sizeof(err)) != 0) HARNESS_FAIL(err);
    seed_blob();

    if (fakenet_server_start(&h.loop, origin_answer, NULL, &h.origin) != 0)
        HARNESS_FAIL("cannot start the origin");
    uint16_t port = fakenet_server_port(h.origin);
    canned_init(port);
    char origin[64];
    snprintf(origin, sizeof(origin), "http://127.0.0.1:%u", (unsigned)port);
    h.cfg[0] = setup_config(origin, NULL);
    h.cfg[1] = setup_config(origin, DEAD_CACHE);
    h.cfg[2] = setup_config(DEAD_ORIGIN, NULL);
    struct log_options log_opts = config_log_options(h.cfg[0]);
    log_configure(&log_opts);

    struct upstream_pool_opts po = {.connect_timeout_ms = 2000, .io_timeout_ms = 2000};
    for (int i = 0; i < N_SETUPS; i++) {
        h.pool[i] = upstream_pool_new(&h.loop, &po);
        h.upstreams[i] = h.pool[i] ? upstreams_new(h.cfg[i], h.pool[i]) : NULL;
        h.relays[i] = h.upstreams[i] ? relay_service_new(h.upstreams[i]) : NULL;
        h.fetches[i] = h.pool[i] ? fetch_manager_new(&h.loop, h.store, h.pool[i]) : NULL;
        h.blobs[i] = h.upstreams[i] && h.fetches[i]
                         ? blob_service_new(&h.loop, h.store, h.fetches[i], h.upstreams[i])
                         : NULL;
        h.router[i] =
            h.relays[i] && h.blobs[i] ? router_new(h.upstreams[i], h.relays[i], h.blobs[i]) : NULL;
        if (h.router[i] == NULL) HARNESS_FAIL("out of memory");
        blob_service_set_ttl(h.blobs[i], 3600);
        /* Setups 1 and 2 choose upstreams with the default Lua policy, 0 with the C one. */
        if (i > 0) {
            if (policy_engine_new(h.cfg[i], CC_POLICY_DIR, &h.policy[i], err, sizeof(err)) != 0)
                HARNESS_FAIL(err);
            upstreams_set_policy(h.upstreams[i], h.policy[i]);
        }
    }

    static const struct http_header extra[] = {{"X-Fuzz", 6, "1", 1}};
    struct http_server_opts opts = {
        .max_header_bytes = 8192,
        .max_headers = 32,
        .extra_headers = extra,
        .n_extra_headers = 1,
        .on_request = on_request,
    };
    if (http_server_listen(&h.loop, "127.0.0.1:0", &opts, &h.server, err, sizeof(err)) != 0)
        HARNESS_FAIL(err);
    const char *addr = http_server_address(h.server);
    const char *colon = strrchr(addr, ':');
    h.server_port = (uint16_t)atoi(colon + 1);
    fakenet_allow(h.server_port);
    /* The listeners stay for the whole run and must not keep uv_run from returning. */
    uv_walk(&h.loop, unref_handle, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (h.server == NULL) setup();
    if (size == 0) return 0;
    unsigned setup_no = data[0] & 3;
    h.current = h.router[setup_no == 3 ? 0 : setup_no];
    h.current_relays = h.relays[setup_no == 3 ? 0 : setup_no];
    size_t chunk = data[0] >> 2;
    const char *request = (const char *)data + 1;
    size_t request_len = size - 1;
    h.answer = NULL;
    if (setup_no == 3) {
        const char *nul = memchr(request, '\0', request_len);
        h.answer = nul ? nul + 1 : request + request_len;
        h.answer_len = (size_t)(request + request_len - h.answer);
        request_len = nul ? (size_t)(nul - request) : request_len;
    }

    struct fakenet_client_stats st;
    if (fakenet_client_run(&h.loop, h.server_port, request, request_len, chunk, &st) != 0)
        HARNESS_FAIL("cannot connect to the server");
    uv_run(&h.loop, UV_RUN_DEFAULT);

    /* Whatever came in, the server answered with a well-formed status line. */
    if (st.bytes_read >= 13) {
        const char *l = st.response;
        HARNESS_REQUIRE((strncmp(l, "HTTP/1.1 ", 9) == 0 || strncmp(l, "HTTP/1.0 ", 9) == 0) &&
                            l[9] >= '1' && l[9] <= '5' && l[10] >= '0' && l[10] <= '9' &&
                            l[11] >= '0' && l[11] <= '9' && l[12] == ' ',
                        "the response starts with HTTP/1.x and a status of 100 to 599");
    }
    if (!st.done) HARNESS_FAIL("the client connection is still open after the loop ran out");
    if (http_server_connections(h.server) != 0)
        HARNESS_FAIL("a server connection outlived its client");
    for (int i = 0; i < N_SETUPS; i++) {
        if (relay_in_flight(h.relays[i]) != 0) HARNESS_FAIL("an exchange is still in flight");
        if (fetch_manager_active(h.fetches[i]) != 0) HARNESS_FAIL("a fetch is still running");
    }
    if (fakenet_server_connections(h.origin) != 0)
        HARNESS_FAIL("an origin connection is still open");
    return 0;
}
