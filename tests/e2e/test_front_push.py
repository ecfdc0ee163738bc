"""End-to-end: the front relays the registry API both ways, pushes included (issue 18,
step 2).

A real docker-registry origin with htpasswd users, and a front before it. skopeo pushes
an image through the front and it lands in the origin byte for byte; uploads by hand
through the front (a chunked PATCH in pieces, a Content-Range PATCH, a monolithic PUT of
48 MiB whose memory stays bounded, a manifest PUT and a DELETE) land too, with every
upload Location naming the front; 401 challenges come back as the origin sent them; a
client that chose no cache sees the origin's answers exactly (status, body and the
registry's headers). Then the same push and a pull through a front before an origin
with token auth (tests/e2e/token_server.py).

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_front_push.py
"""

import http.client
import json
import os
import secrets
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_front import TokenAuth, front  # noqa: E402

REPO = "org/app"
PASSWORDS = {u: "%s-pw-%s" % (u, secrets.token_hex(8)) for u in ("admin", "alice")}
ADMIN = ("admin", PASSWORDS["admin"])
ALICE = ("alice", PASSWORDS["alice"])


def auth(creds):
    return {"Authorization": h.basic_auth(*creds)}


def path_of(location, front_url):
    """The path of a Location, which must name the front."""
    expect(location.startswith(front_url + "/v2/"),
           "the Location names the front (%s): %r" % (front_url, location))
    return location[len(front_url):]


def send(port, method, path, headers=None, body=None, chunks=None, timeout=h.HTTP_TIMEOUT):
    """One request; chunks (a list of bytes) sends a chunked body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if chunks is not None:
            conn.request(method, path, body=iter(chunks), headers=headers or {},
                         encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return h.Response(r.status, r.reason, list(r.getheaders()), r.read(), r.version)
    finally:
        conn.close()


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def body(run):
    work = run.work
    origin = run.origin(users=PASSWORDS)
    # Under AddressSanitizer freed memory waits in a quarantine (256 MiB by default), which
    # would count against the peak the 48 MiB push measures: keep it small.
    asan = os.environ.get("ASAN_OPTIONS", "")
    f = front(run, origin, env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                                "quarantine_size_mb=1"})
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([300_000, 1_200_000],
                                                                  seed=180), tag="1")

    def skopeo_push():
        h.push(work, image, f, REPO, "1", creds=ADMIN)
        out = work.sub("from-origin")
        h.pull(work, origin, REPO, "1", out, creds=ADMIN)
        expect_eq(h.verify_pulled(out, image), [], "the image read back from the origin")
        for method, what in (("POST", "upload starts"), ("PUT", "upload ends and manifest")):
            expect(origin.count(method=method) >= 1, "the origin saw the %s" % what)
        expect(f.count_access(method="PUT", status=201) >= 3,
               "the front's log shows the PUTs (blobs and manifest), 201")

    run.check("skopeo pushes <front>/org/app:1 as admin; it lands in the origin byte for byte",
              skopeo_push)

    def challenges():
        for method, path in (("GET", "/v2/"), ("POST", "/v2/%s/blobs/uploads/" % REPO),
                             ("GET", "/v2/%s/manifests/1" % REPO)):
            want = h.request(origin.port, method, path)
            got = h.request(f.port, method, path)
            expect_eq(got.status, 401, "%s %s without credentials" % (method, path))
            expect_eq(got.header("WWW-Authenticate"), want.header("WWW-Authenticate"),
                      "the challenge of %s %s" % (method, path))
            expect_eq(got.body, want.body, "the body of the 401")

    run.check("401 challenges come back as the origin sent them (docker login works)", challenges)

    def chunked_upload():
        blob = os.urandom(700_000)
        digest = h.sha256_digest(blob)
        r = send(f.port, "POST", "/v2/%s/blobs/uploads/" % REPO, auth(ADMIN))
        expect_eq(r.status, 202, "POST to start an upload: %r" % r)
        loc = path_of(r.header("Location"), f.url)
        expect(r.header("Docker-Upload-UUID"), "Docker-Upload-UUID relayed")
        # A streamed PATCH with a chunked body in pieces, then one with a Content-Range.
        pieces = [blob[:1], blob[1:70_000], blob[70_000:400_000]]
        r = send(f.port, "PATCH", loc,
                 dict(auth(ADMIN), **{"Content-Type": "application/octet-stream"}),
                 chunks=pieces)
        expect_eq(r.status, 202, "chunked PATCH: %r" % r)
        expect_eq(r.header("Range"), "0-399999", "Range after the chunked PATCH")
        loc = path_of(r.header("Location"), f.url)
        r = send(f.port, "PATCH", loc,
                 dict(auth(ADMIN), **{"Content-Type": "application/octet-stream",
                                      "Content-Range": "400000-699999"}),
                 body=blob[400_000:])
        expect_eq(r.status, 202, "PATCH with Content-Range: %r" % r)
        loc = path_of(r.header("Location"), f.url)
        r = send(f.port, "PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest,
                 auth(ADMIN))
        expect_eq(r.status, 201, "PUT to close the upload: %r" % r)
        expect_eq(r.header("Docker-Content-Digest"), digest, "Docker-Content-Digest")
        path_of(r.header("Location"), f.url)
        r = h.request(origin.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest), headers=auth(ADMIN))
        expect_eq(r.status, 200, "the blob at the origin")
        expect_eq(r.body, blob, "the blob's bytes at the origin")

    run.check("a chunked PATCH in pieces, a Content-Range PATCH and the closing PUT land the "
              "blob in the origin; every Location names the front", chunked_upload)

    def monolithic_put():
        blob = os.urandom(48 << 20)
        digest = h.sha256_digest(blob)
        r = send(f.port, "POST", "/v2/%s/blobs/uploads/" % REPO, auth(ADMIN))
        expect_eq(r.status, 202, "POST: %r" % r)
        loc = path_of(r.header("Location"), f.url)
        before = vm_hwm_kib(f.proc.pid)
        r = send(f.port, "PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest,
                 dict(auth(ADMIN), **{"Content-Type": "application/octet-stream"}), body=blob,
                 timeout=h.CLIENT_TIMEOUT)
        expect_eq(r.status, 201, "monolithic PUT of 48 MiB: %r" % r)
        after = vm_hwm_kib(f.proc.pid)
        h.log("  the front's peak memory: %d KiB before, %d KiB after the 48 MiB push"
              % (before, after))
        expect(after - before < 8 * 1024, "the front's peak memory grew by %d KiB for a 48 MiB "
               "push: the body is streamed, not held" % (after - before))
        r = h.request(origin.port, "HEAD", "/v2/%s/blobs/%s" % (REPO, digest), headers=auth(ADMIN))
        expect_eq((r.status, r.header("Content-Length")), (200, str(len(blob))),
                  "the blob at the origin")

    run.check("a monolithic PUT of 48 MiB streams through the front in bounded memory",
              monolithic_put)

    def manifest_put_delete():
        headers = dict(auth(ADMIN), **{"Content-Type": h.OCI_MANIFEST})
        r = send(f.port, "PUT", "/v2/%s/manifests/2" % REPO, headers, body=image.manifest_bytes)
        expect_eq(r.status, 201, "manifest PUT: %r" % r)
        expect_eq(r.header("Docker-Content-Digest"), image.manifest_digest, "its digest")
        path_of(r.header("Location"), f.url)
        r = h.request(origin.port, "GET", "/v2/%s/manifests/2" % REPO,
                      headers=dict(auth(ADMIN), Accept=h.OCI_MANIFEST))
        expect_eq((r.status, r.body), (200, image.manifest_bytes), "the manifest at the origin")
        r = send(f.port, "DELETE", "/v2/%s/manifests/%s" % (REPO, image.manifest_digest),
                 auth(ADMIN))
        expect_eq(r.status, 202, "DELETE of the manifest: %r" % r)
        r = h.request(f.port, "GET", "/v2/%s/manifests/2" % REPO,
                      headers=dict(auth(ADMIN), Accept=h.OCI_MANIFEST))
        h.expect_error(r, 404, "MANIFEST_UNKNOWN")

    run.check("a manifest PUT and a DELETE go through the front to the origin",
              manifest_put_delete)

    def same_as_origin():
        h.push(work, image, origin, REPO, "3", creds=ADMIN)
        layer = image.layer_digests[0]
        requests = [
            ("GET", "/v2/", {}), ("GET", "/v2/", auth(ALICE)),
            ("GET", "/v2/%s/manifests/3" % REPO, dict(auth(ALICE), Accept=h.OCI_MANIFEST)),
            ("HEAD", "/v2/%s/manifests/3" % REPO, dict(auth(ALICE), Accept=h.OCI_MANIFEST)),
            ("GET", "/v2/%s/manifests/nope" % REPO, auth(ALICE)),
            ("GET", "/v2/%s/tags/list" % REPO, auth(ALICE)),
            ("GET", "/v2/_catalog", auth(ALICE)),
            ("GET", "/v2/%s/blobs/%s" % (REPO, layer), auth(ALICE)),
            ("HEAD", "/v2/%s/blobs/%s" % (REPO, layer), auth(ALICE)),
            ("GET", "/v2/%s/blobs/sha256:%s" % (REPO, "0" * 64), auth(ALICE)),
            ("GET", "/v2/other/app/tags/list", auth(ALICE)),
        ]
        for method, path, headers in requests:
            want = h.request(origin.port, method, path, headers=headers)
            got = h.request(f.port, method, path, headers=headers)
            what = "%s %s" % (method, path)
            expect_eq(got.status, want.status, "status of " + what)
            expect_eq(got.body, want.body, "body of " + what)
            for name in ("Content-Type", "Content-Length", "Docker-Content-Digest",
                         "WWW-Authenticate", h.API_VERSION_HEADER):
                expect_eq(got.header(name), want.header(name), "%s of %s" % (name, what))

    run.check("a user without a cache sees the origin's answers: status, body, headers",
              same_as_origin)

    # ---- Token auth: the client gets its tokens from the origin's realm ---------------
    tokens = TokenAuth(work, {"admin": {"password": PASSWORDS["admin"],
                                        "grants": {REPO: ["pull", "push"]}},
                              "alice": {"password": PASSWORDS["alice"],
                                        "grants": {REPO: ["pull"]}}})
    token_origin = run.origin(name="token-origin", extra_yaml=tokens.yaml())
    token_front = front(run, token_origin, name="token-front")

    def token_push_pull():
        h.push(work, image, token_front, REPO, "1", creds=ADMIN)
        out = work.sub("token-pull")
        h.pull(work, token_origin, REPO, "1", out, creds=ALICE)
        expect_eq(h.verify_pulled(out, image), [], "the image read back from the origin")
        out = work.sub("token-pull-front")
        h.pull(work, token_front, REPO, "1", out, creds=ALICE)
        expect_eq(h.verify_pulled(out, image), [], "the image pulled through the front")
        r = h.request(token_front.port, "POST", "/v2/%s/blobs/uploads/" % REPO,
                      headers={"Authorization": "Bearer " + tokens.token(ALICE, [
                          "repository:%s:pull,push" % REPO])})
        expect_eq(r.status, 401, "alice may not push: the origin's refusal, relayed")
        expect("Bearer realm=" in (r.header("WWW-Authenticate") or ""), "a Bearer challenge")

    run.check("with token auth, skopeo pushes through the front and pulls back; the origin's "
              "refusals are relayed", token_push_pull)


if __name__ == "__main__":
    h.main("front_push", body)
