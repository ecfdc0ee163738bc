"""End-to-end: the cache relays the registry pull API to a real origin.

A Docker Distribution origin gets a 3-layer image (pushed with skopeo); content-cache
runs in front of it; skopeo pulls through the cache and every byte is compared with what
was pushed. Raw HTTP checks cover the API surface: /v2/, manifests, blobs (HEAD and GET,
known and unknown), tags/list, refused writes, invalid names and digests, path
traversal, the access log, keep-alive, pipelining and oversized headers. A second origin
with htpasswd auth checks that the cache relays 401 challenges and credentials.
`--check` is tested on good and bad configs.

Section 1 needs only the origin and skopeo (it checks the harness and the test image).
Everything from section 2 on needs the content-cache binary ($CC_BINARY).

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_pull_relay.py
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq, expect_error, expect_status  # noqa: E402

REPO = "e2e/app"
TAG = "v1"
TAG2 = "v2"
PRIVATE_REPO = "private/app"
USER, PASSWORD = "alice", "wonder-land-42"
LAYER_SIZES = [4096, 300_000, 2_000_000]  # payload bytes per layer
UNKNOWN_DIGEST = h.sha256_digest(b"no blob has these bytes")


def expect_api_version(resp):
    expect_eq(resp.header(h.API_VERSION_HEADER), h.API_VERSION,
              "%s header" % h.API_VERSION_HEADER)


def expect_invalid(resp, code):
    """An invalid name or digest: 400 with `code` (the contract also allows 404)."""
    if resp.status == 404:
        h.log("  note: answered 404 rather than 400 %s (allowed)" % code)
        return
    expect_error(resp, 400, code)
    expect_api_version(resp)


def origin_saw(origin, predicate):
    """The origin's access-log entries (after settling) for which predicate(entry)."""
    h.settle(lambda: len(origin.access_log()))
    return [e for e in origin.access_log() if predicate(e)]


def body(run):
    work = run.work

    # ---- 1. Origin and test image (no binary needed) ---------------------------------
    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"), h.random_layers(LAYER_SIZES, seed=11), tag=TAG)
    h.push(work, image, origin, REPO, TAG)
    h.push(work, image, origin, REPO, TAG2)
    big_digest, big_size, _ = image.layers[-1]
    small_digest, small_size, small_bytes = image.layers[0]

    def origin_has_image():
        r = h.request(origin.port, "GET", "/v2/%s/manifests/%s" % (REPO, TAG),
                      headers={"Accept": h.OCI_MANIFEST})
        expect_status(r, 200)
        expect_eq(r.header("Docker-Content-Digest"), image.manifest_digest, "manifest digest")
        expect_eq(r.body, image.manifest_bytes, "manifest bytes")
        out = work.sub("pull-origin")
        h.pull(work, origin, REPO, TAG, out)
        expect_eq(h.verify_pulled(out, image), [], "pull straight from the origin")

    run.check("origin serves the pushed image byte for byte (harness sanity)", origin_has_image)

    # ---- 2. The binary's command line (needs the binary from here on) ---------------
    h.log("---- checks below need the content-cache binary: %s" % h.binary_path())

    def version_and_help():
        v = h.run_binary(["--version"])
        expect_eq(v.returncode, 0, "--version exit code (stderr: %s)" % v.stderr)
        expect((v.stdout + v.stderr).strip() != "", "--version printed nothing")
        hp = h.run_binary(["--help"])
        expect_eq(hp.returncode, 0, "--help exit code (stderr: %s)" % hp.stderr)
        expect("--check" in hp.stdout + hp.stderr, "--help does not mention --check")

    run.check("--version and --help exit 0", version_and_help)

    def check_good_config():
        cfg = h.Cache(work, [origin], name="checked")
        port = h.free_port()
        path = cfg.write_config(port)
        cp = h.run_binary(["--check", path])
        out = cp.stdout + cp.stderr
        expect_eq(cp.returncode, 0, "--check exit code on a good config; output:\n%s" % out)
        expect("127.0.0.1:%d" % port in out, "--check does not print the listen address:\n" + out)
        expect(origin.url in out, "--check does not print the upstream %s:\n%s" % (origin.url, out))
        expect(not h.port_open(port), "--check left something listening on %d" % port)

    run.check("--check accepts a good config, prints listen address and upstream",
              check_good_config)

    def check_blobttl_without_delete():
        cfg = h.Cache(work, [origin], name="bad-ttl", blobttl="1h", delete_enabled=False)
        path = cfg.write_config()
        cp = h.run_binary(["--check", path])
        out = cp.stdout + cp.stderr
        expect_eq(cp.returncode, 1, "--check exit code for blobttl without delete; output:\n" + out)
        expect("blobttl" in out and "delete" in out,
               "the reason names neither blobttl nor storage.delete:\n" + out)

    run.check("--check refuses blobttl without storage.delete.enabled (exit 1, says why)",
              check_blobttl_without_delete)

    def check_syntax_error():
        path = work.write("broken.yml", "version: 0.1\nhttp:\n  addr: [127.0.0.1:5000\n")
        cp = h.run_binary(["--check", path])
        out = cp.stdout + cp.stderr
        expect_eq(cp.returncode, 1, "--check exit code for a YAML syntax error; output:\n" + out)
        expect(re.search(re.escape(path) + r":\d+", out),
               "the error does not name %s:LINE:\n%s" % (path, out))
        missing = h.run_binary(["--check", work.sub("no-such-config.yml")])
        expect_eq(missing.returncode, 1, "--check exit code for a missing file")

    run.check("--check refuses a YAML syntax error naming file:line, and a missing file",
              check_syntax_error)

    # ---- 3. The cache in front of the anonymous origin ------------------------------
    cache = run.cache([origin])

    def api_root():
        r = h.request(cache.port, "GET", "/v2/")
        expect_status(r, 200)
        expect_api_version(r)

    run.check("GET /v2/ -> 200 with Docker-Distribution-Api-Version", api_root)

    def skopeo_pull():
        out = work.sub("pull-cache-tag")
        h.pull(work, cache, REPO, TAG, out)
        expect_eq(h.verify_pulled(out, image), [], "pull by tag through the cache")
        out = work.sub("pull-cache-digest")
        h.pull(work, cache, REPO, image.manifest_digest, out)
        expect_eq(h.verify_pulled(out, image), [], "pull by digest through the cache")

    run.check("skopeo pulls through the cache: manifest and every blob identical",
              skopeo_pull)

    def manifest_get_head():
        path = "/v2/%s/manifests/%s" % (REPO, TAG)
        accept = {"Accept": h.OCI_MANIFEST}
        r = h.request(cache.port, "GET", path, headers=accept)
        expect_status(r, 200)
        expect_eq(r.body, image.manifest_bytes, "manifest body")
        expect_eq(r.header("Docker-Content-Digest"), image.manifest_digest, "Docker-Content-Digest")
        expect_eq(r.header("Content-Type"), h.OCI_MANIFEST, "Content-Type")
        expect_api_version(r)
        r = h.request(cache.port, "HEAD", path, headers=accept)
        expect_status(r, 200)
        expect_eq(r.body, b"", "HEAD body")
        expect_eq(r.header("Content-Length"), str(len(image.manifest_bytes)), "HEAD Content-Length")
        expect_eq(r.header("Docker-Content-Digest"), image.manifest_digest, "HEAD digest")
        r = h.request(cache.port, "GET", "/v2/%s/manifests/%s" % (REPO, image.manifest_digest),
                      headers=accept)
        expect_status(r, 200)
        expect_eq(r.body, image.manifest_bytes, "manifest by digest")

    run.check("manifest GET/HEAD by tag and digest: body, Content-Type, Docker-Content-Digest",
              manifest_get_head)

    def blob_head_and_get():
        with h.RawConnection(cache.port) as c:
            c.send_request("HEAD", "/v2/%s/blobs/%s" % (REPO, big_digest))
            r = c.read_response(method="HEAD")
            expect_status(r, 200)
            expect_eq(r.header("Content-Length"), str(big_size), "HEAD Content-Length")
            expect_eq(r.header("Docker-Content-Digest"), big_digest, "HEAD Docker-Content-Digest")
            expect_api_version(r)
            # Had the HEAD carried a body, this response would not parse.
            c.send_request("GET", "/v2/")
            r2 = c.read_response()
            expect_status(r2, 200, "GET /v2/ after HEAD on the same connection")
            expect_api_version(r2)
        r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, small_digest))
        expect_status(r, 200)
        expect_eq(h.sha256_digest(r.body), small_digest, "GET blob content digest")
        expect_eq(r.header("Docker-Content-Digest"), small_digest, "GET Docker-Content-Digest")

    run.check("blob HEAD -> 200 with Content-Length and Docker-Content-Digest, no body; GET bytes",
              blob_head_and_get)

    def unknown_blob_and_manifest():
        path = "/v2/%s/blobs/%s" % (REPO, UNKNOWN_DIGEST)
        r = h.request(cache.port, "HEAD", path)
        expect_status(r, 404)
        expect_eq(r.body, b"", "HEAD 404 body")
        r = h.request(cache.port, "GET", path)
        expect_error(r, 404, "BLOB_UNKNOWN")
        expect_api_version(r)
        r = h.request(cache.port, "GET", "/v2/%s/manifests/no-such-tag" % REPO,
                      headers={"Accept": h.OCI_MANIFEST})
        expect_error(r, 404, "MANIFEST_UNKNOWN")
        r = h.request(cache.port, "GET", "/v2/e2e/no-such-repo/manifests/latest")
        expect_status(r, 404)
        expect(r.error_codes(), "404 for an unknown repository has no registry error body: %r" % r)

    run.check("unknown blob -> 404 BLOB_UNKNOWN (HEAD and GET); unknown manifest -> 404",
              unknown_blob_and_manifest)

    def writes_refused():
        mark = len(origin.access_log())
        attempts = [
            ("PUT", "/v2/%s/manifests/evil" % REPO, image.manifest_bytes,
             {"Content-Type": h.OCI_MANIFEST}),
            ("POST", "/v2/%s/blobs/uploads/" % REPO, b"", {}),
            ("PATCH", "/v2/%s/blobs/uploads/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0" % REPO, b"xyz",
             {"Content-Type": "application/octet-stream"}),
            ("PUT", "/v2/%s/blobs/uploads/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0?digest=%s"
             % (REPO, UNKNOWN_DIGEST), b"", {}),
            ("DELETE", "/v2/%s/manifests/%s" % (REPO, image.manifest_digest), None, {}),
            ("DELETE", "/v2/%s/blobs/%s" % (REPO, small_digest), None, {}),
        ]
        for method, path, payload, headers in attempts:
            r = h.request(cache.port, method, path, headers=headers, body=payload)
            expect_error(r, 405, "UNSUPPORTED")
            expect_api_version(r)
        writes = [e for e in origin_saw(origin, lambda e: True)[mark:]
                  if e["method"] not in ("GET", "HEAD")]
        expect_eq(writes, [], "write requests that reached the origin")
        r = h.request(origin.port, "GET", "/v2/%s/manifests/%s" % (REPO, image.manifest_digest),
                      headers={"Accept": h.OCI_MANIFEST})
        expect_status(r, 200, "the manifest is still at the origin")

    run.check("PUT/POST/PATCH/DELETE -> 405 UNSUPPORTED, and none reaches the origin",
              writes_refused)

    def invalid_names_and_digests():
        bad = [
            ("/v2/UPPER/app/manifests/latest", "NAME_INVALID"),
            ("/v2/e2e/app_/manifests/latest", "NAME_INVALID"),
            ("/v2/%s/blobs/sha256:abc" % REPO, "DIGEST_INVALID"),
            ("/v2/%s/blobs/sha256:%s" % (REPO, "g" * 64), "DIGEST_INVALID"),
            ("/v2/%s/blobs/sha256:%s" % (REPO, "A" * 64), "DIGEST_INVALID"),
        ]
        for path, code in bad:
            for method in ("GET", "HEAD"):
                r = h.request(cache.port, method, path)
                if method == "HEAD":
                    expect_status(r, (400, 404), "HEAD %s" % path)
                else:
                    expect_invalid(r, code)
        relayed = origin_saw(origin, lambda e: e["uri"] in [p for p, _ in bad])
        expect_eq(relayed, [], "invalid requests relayed to the origin")

    run.check("invalid name -> 400 NAME_INVALID, invalid digest -> 400 DIGEST_INVALID, "
              "not relayed", invalid_names_and_digests)

    def path_traversal():
        paths = [
            "/v2/../etc/passwd",
            "/v2/../../../../../../etc/passwd",
            "/v2/%2e%2e/%2e%2e/etc/passwd",
            "/v2/%s/blobs/sha256:..%%2F..%%2F..%%2F..%%2Fetc%%2Fpasswd" % REPO,
            "/v2/%s/blobs/../../../../../etc/passwd" % REPO,
            "/v2/e2e/../../../etc/blobs/%s" % small_digest,
            "/v2/%s/manifests/..%%2f..%%2f..%%2fetc%%2fpasswd" % REPO,
            "/v2/%s/blobs/sha256%%3a..%%2f..%%2fetc%%2fpasswd" % REPO,
        ]
        for path in paths:
            r = h.request(cache.port, "GET", path)
            expect_status(r, (400, 404), "GET %s" % path)
            expect(b"root:" not in r.body, "GET %s returned a file's content: %r" % (path, r))
        weird = origin_saw(origin, lambda e: ".." in e["uri"] or "%2f" in e["uri"].lower()
                           or "passwd" in e["uri"])
        expect_eq(weird, [], "traversal attempts relayed to the origin")

    run.check("path traversal attempts -> 400/404, no file content, nothing relayed",
              path_traversal)

    def tags_list():
        r = h.request(cache.port, "GET", "/v2/%s/tags/list" % REPO)
        expect_status(r, 200)
        direct = h.request(origin.port, "GET", "/v2/%s/tags/list" % REPO)
        expect_eq(r.json(), direct.json(), "tags/list through the cache vs the origin")
        expect_eq(sorted(r.json()["tags"]), [TAG, TAG2], "tags")
        expect_api_version(r)
        # Distribution 2.8 ignores n (no pagination): the query must still reach it.
        query_path = "/v2/%s/tags/list?n=1" % REPO
        r = h.request(cache.port, "GET", query_path)
        expect_status(r, 200)
        expect_eq(r.json(), h.request(origin.port, "GET", query_path).json(),
                  "tags/list?n=1 through the cache vs the origin")
        expect(origin_saw(origin, lambda e: e["uri"] == query_path),
               "the origin never saw %s: the query was not relayed" % query_path)

    run.check("tags/list relayed, with its query string", tags_list)

    def access_log_lines():
        probes = [
            ("GET", "/v2/", 200),
            ("GET", "/v2/%s/manifests/log-probe" % REPO, 404),
            ("HEAD", "/v2/%s/blobs/%s" % (REPO, big_digest), 200),
            ("DELETE", "/v2/%s/manifests/log-probe" % REPO, 405),
        ]
        for method, uri, status in probes:
            before = cache.count_access(method=method, uri=uri, status=status)
            r = h.request(cache.port, method, uri)
            expect_status(r, status, "%s %s" % (method, uri))
            after = h.wait_for_count(
                lambda: cache.count_access(method=method, uri=uri, status=status), before + 1,
                what="access-log line for %s %s" % (method, uri))
            expect_eq(after - before, 1, "access-log lines for one %s %s" % (method, uri))
        lines = [ln for ln in h.read_lines(cache.stdout_path) if ln.strip()]
        stray = [ln for ln in lines if "http.request.method" not in h.parse_logfmt(ln)]
        expect_eq(stray, [], "stdout lines that are not access-log lines")

    run.check("access log: one stdout line per request with method, uri and status",
              access_log_lines)

    def keep_alive():
        with h.RawConnection(cache.port) as c:
            for i in range(3):
                c.send_request("GET", "/v2/%s/tags/list" % REPO if i % 2 else "/v2/")
                r = c.read_response()
                expect_status(r, 200, "request %d on one connection" % (i + 1))
        with h.RawConnection(cache.port) as c:
            c.send_request("GET", "/v2/", headers={"Connection": "close"})
            expect_status(c.read_response(), 200)
            expect(c.closed_by_peer(timeout=5), "the cache kept the connection after "
                   "'Connection: close'")
        with h.RawConnection(cache.port) as c:
            c.send(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            expect_status(c.read_response(), 200)
            expect(c.closed_by_peer(timeout=5), "the cache kept an HTTP/1.0 connection open")

    run.check("keep-alive: several requests on one connection; Connection: close and "
              "HTTP/1.0 close it", keep_alive)

    def pipelining():
        with h.RawConnection(cache.port) as c:
            one_write = (b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                         b"GET /v2/" + REPO.encode() + b"/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /v2/" + REPO.encode() + b"/blobs/" + UNKNOWN_DIGEST.encode()
                         + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"HEAD /v2/" + REPO.encode() + b"/blobs/" + small_digest.encode()
                         + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            c.send(one_write)
            r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
            r4 = c.read_response(method="HEAD")
            expect_status(r1, 200, "1st pipelined response (GET /v2/)")
            expect_eq(r1.json(), {}, "1st pipelined body")
            expect_status(r2, 200, "2nd pipelined response (tags/list)")
            expect_eq(r2.json().get("name"), REPO, "2nd pipelined body")
            expect_error(r3, 404, "BLOB_UNKNOWN")
            expect_status(r4, 200, "4th pipelined response (HEAD blob)")
            expect_eq(r4.header("Content-Length"), str(small_size), "4th Content-Length")
            c.send_request("GET", "/v2/")
            expect_status(c.read_response(), 200, "a request after the pipelined ones")

    run.check("pipelined requests in one write are answered in order", pipelining)

    def oversized_headers():
        with h.RawConnection(cache.port) as c:
            c.send_request("GET", "/v2/", headers={"X-Big": "a" * (17 * 1024)})
            expect_status(c.read_response(), 431, "one 17 KiB header")
        with h.RawConnection(cache.port) as c:
            many = {"X-Filler-%03d" % i: "b" * 500 for i in range(40)}
            c.send_request("GET", "/v2/", headers=many)
            expect_status(c.read_response(), 431, "40 headers of 500 bytes")
        expect_status(h.request(cache.port, "GET", "/v2/"), 200, "a request afterwards")

    run.check("request headers over 16 KiB -> 431, and the cache serves on", oversized_headers)

    # ---- 4. A cache in front of an origin with Basic auth ---------------------------
    private = run.origin(name="origin-auth", users={USER: PASSWORD})
    creds = (USER, PASSWORD)
    h.push(work, image, private, PRIVATE_REPO, TAG, creds=creds)
    auth_cache = run.cache([private], name="cache-auth")
    good = {"Authorization": h.basic_auth(USER, PASSWORD)}
    wrong = {"Authorization": h.basic_auth(USER, "not-the-password")}

    def challenge_relayed():
        direct = h.request(private.port, "GET", "/v2/")
        expect_status(direct, 401, "the origin itself")
        r = h.request(auth_cache.port, "GET", "/v2/")
        expect_status(r, 401)
        expect_eq(r.header("WWW-Authenticate"), direct.header("WWW-Authenticate"),
                  "WWW-Authenticate relayed unchanged")
        expect_api_version(r)
        expect_status(h.request(auth_cache.port, "GET", "/v2/", headers=good), 200,
                      "GET /v2/ with the right credentials")
        expect_status(h.request(auth_cache.port, "GET", "/v2/", headers=wrong), 401,
                      "GET /v2/ with a wrong password")
        r = h.request(auth_cache.port, "GET", "/v2/%s/manifests/%s" % (PRIVATE_REPO, TAG))
        expect_status(r, 401, "manifest without credentials")
        expect_eq(r.header("WWW-Authenticate"), direct.header("WWW-Authenticate"),
                  "manifest challenge")

    run.check("401 from the origin relayed with its WWW-Authenticate; Basic credentials "
              "relayed", challenge_relayed)

    def skopeo_with_creds():
        out = work.sub("pull-auth")
        h.pull(work, auth_cache, PRIVATE_REPO, TAG, out, creds=creds)
        expect_eq(h.verify_pulled(out, image), [], "authenticated pull through the cache")

    run.check("skopeo --src-creds pulls through the cache from the auth origin",
              skopeo_with_creds)

    def no_bytes_without_credentials():
        # The layers were just pulled with credentials: a client without them, or with
        # wrong ones, must still get none of their bytes (README.md, Access control).
        for headers in ({}, wrong):
            for method in ("GET", "HEAD"):
                r = h.request(auth_cache.port, method,
                              "/v2/%s/blobs/%s" % (PRIVATE_REPO, small_digest), headers=headers)
                expect_status(r, 401, "%s blob with %s" % (
                    method, "a wrong password" if headers else "no credentials"))
                expect(small_bytes not in r.body, "blob bytes served without authorization")
        out = work.sub("pull-auth-anonymous")
        cp = h.pull(work, auth_cache, PRIVATE_REPO, TAG, out, check=False)
        expect(cp.returncode != 0, "an anonymous skopeo pull of a private image succeeded")

    run.check("no blob bytes for a client without valid credentials, even once cached",
              no_bytes_without_credentials)

    def credentials_not_logged():
        secrets = [PASSWORD, h.basic_auth(USER, PASSWORD).split()[1]]
        for path in (auth_cache.stdout_path, auth_cache.stderr_path):
            text = "\n".join(h.read_lines(path))
            for secret in secrets:
                expect(secret not in text, "%s contains a credential" % os.path.basename(path))

    run.check("credentials never appear in the cache's logs", credentials_not_logged)


if __name__ == "__main__":
    h.main("pull_relay", body)
