"""End-to-end: the pull checks of the OCI distribution-spec conformance suite, against
the cache in front of a real Docker Distribution origin.

The suite itself (github.com/opencontainers/distribution-spec, conformance/) cannot be
built on these machines: its releases need Go modules that Debian does not package
(bloodorangeio/reggie, onsi/gomega) and its current version needs Go 1.24 (Debian 12
has 1.19), and only Debian's and npm's registries are reachable. So these are its pull
workflow's checks, written again here from what it asks (no code of it is copied):

  blobs      HEAD and GET of an unknown digest: 404; of a known one: 200, the bytes, its
             Content-Length, and Docker-Content-Digest equal to the digest when present
  manifests  HEAD and GET by digest (two manifests, one of them untagged) and by tag:
             200, Content-Type and Content-Length of the manifest, the digest header,
             the bytes (GET) or an empty body (HEAD); a reference that is neither a tag
             nor a digest (".INVALID_MANIFEST_NAME"), a missing tag and a random digest:
             404; "sha256:totallywrong" and "sha256:baddigeststring": 404, or 400 with
             a code of the spec's list
  ranges     on a 2048-byte blob, before and after it is cached: bytes=500-1499, 500-,
             -500, 2000-5000 answered 206 with the bytes, Content-Length and
             Content-Range; 5000-10000: 416. (The suite's current version also wants 416
             for bytes=500-0, a last byte before the first: the cache ignores such a range
             and serves the whole blob, as RFC 9110 allows; not checked here.)
  other      /v2/ answers 200; an invalid repository name: 404, or 400 NAME_INVALID

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_conformance_pull.py
"""

import os
import secrets
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq, expect_status  # noqa: E402

REPO = "conformance/pull"
TAG = "tagtest0"
SPEC_ERROR_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN",
                    "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID",
                    "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID",
                    "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}


def body(run):
    work = run.work
    origin = run.origin()
    first = h.make_oci_layout(work.sub("layout0"), h.random_layers([3000, 40_000], seed=71),
                              tag=TAG)
    second = h.make_oci_layout(work.sub("layout1"), h.random_layers([5000], seed=81),
                               tag="second")
    h.push(work, first, origin, REPO, TAG)
    # The suite pushes its second manifest by digest only; skopeo needs a tag, which no
    # check here uses: the second manifest is asked for by digest only.
    h.push(work, second, origin, REPO, "second")
    range_blob = bytes((i * 7 + 3) % 251 for i in range(2048))
    range_digest = origin.upload_blob(REPO, range_blob)
    range_blob_cold = bytes((i * 11 + 5) % 251 for i in range(2048))
    range_digest_cold = origin.upload_blob(REPO, range_blob_cold)
    cache = run.cache([origin])
    port = cache.port
    manifest_accept = {"Accept": "%s, %s" % (h.OCI_INDEX, h.OCI_MANIFEST)}
    blobs = first.blobs()
    blobs.update(second.blobs())
    dummy = h.sha256_digest(secrets.token_bytes(64))

    def ping():
        expect_status(h.request(port, "GET", "/v2/"), 200, "GET /v2/")

    run.check("GET /v2/ answers 200", ping)

    def blob_path(digest):
        return "/v2/%s/blobs/%s" % (REPO, digest)

    def digest_header(r, digest, what):
        value = r.header("Docker-Content-Digest")
        if value is not None:
            expect_eq(value, digest, "%s: Docker-Content-Digest" % what)

    def pull_blobs():
        for method in ("HEAD", "GET"):
            r = h.request(port, method, blob_path(dummy))
            expect_status(r, 404, "%s of an unknown blob" % method)
        for digest, data in sorted(blobs.items()):
            for method in ("HEAD", "GET", "HEAD"):  # the second HEAD: after it is cached
                r = h.request(port, method, blob_path(digest))
                what = "%s %s" % (method, blob_path(digest))
                expect_status(r, 200, what)
                expect_eq(r.header("Content-Length"), str(len(data)), what + ": Content-Length")
                digest_header(r, digest, what)
                expect_eq(r.body, data if method == "GET" else b"", what + ": body")

    run.check("blobs: HEAD and GET of an unknown digest are 404; of each blob of both images "
              "200 with its bytes, Content-Length and Docker-Content-Digest", pull_blobs)

    def manifest_path(ref):
        return "/v2/%s/manifests/%s" % (REPO, ref)

    def pull_manifests():
        for ref, image in ((first.manifest_digest, first), (second.manifest_digest, second),
                           (TAG, first)):
            for method in ("HEAD", "GET"):
                r = h.request(port, method, manifest_path(ref), headers=manifest_accept)
                what = "%s %s" % (method, manifest_path(ref))
                expect_status(r, 200, what)
                expect_eq(r.header("Content-Type"), h.OCI_MANIFEST, what + ": Content-Type")
                expect_eq(r.header("Content-Length"), str(len(image.manifest_bytes)),
                          what + ": Content-Length")
                digest_header(r, image.manifest_digest, what)
                expect_eq(r.body, image.manifest_bytes if method == "GET" else b"",
                          what + ": body")

    run.check("manifests: HEAD and GET by digest (both manifests) and by tag are 200 with "
              "Content-Type, Content-Length, Docker-Content-Digest and the bytes",
              pull_manifests)

    def unknown_manifests():
        missing_tag = "missing-%s" % secrets.token_hex(8)
        for ref in (".INVALID_MANIFEST_NAME", missing_tag, dummy):
            for method in ("HEAD", "GET"):
                r = h.request(port, method, manifest_path(ref), headers=manifest_accept)
                expect_status(r, 404, "%s %s" % (method, manifest_path(ref)))
                if method == "GET":
                    expect_eq(r.error_codes(), ["MANIFEST_UNKNOWN"],
                              "GET %s: the error code" % manifest_path(ref))

    run.check("manifests: a reference that is neither a tag nor a digest "
              "(.INVALID_MANIFEST_NAME), a missing tag and an unknown digest are 404 "
              "MANIFEST_UNKNOWN, GET and HEAD", unknown_manifests)

    def malformed_digests():
        for ref in ("sha256:totallywrong", "sha256:baddigeststring"):
            r = h.request(port, "GET", manifest_path(ref), headers=manifest_accept)
            expect(r.status in (400, 404), "GET %s: %d, expected 400 or 404" % (ref, r.status))
            if r.status == 400:
                codes = r.error_codes()
                expect(codes and codes[0] in SPEC_ERROR_CODES,
                       "GET %s: 400 with the spec's error codes, got %r" % (ref, codes))

    run.check("manifests: a malformed digest is 404, or 400 with an error code of the spec",
              malformed_digests)

    def ranges(digest, data):
        n = len(data)
        cases = [("bytes=500-1499", 500, 1500), ("bytes=500-", 500, n), ("bytes=-500", n - 500, n),
                 ("bytes=2000-5000", 2000, n)]
        for spec, start, end in cases:
            r = h.request(port, "GET", blob_path(digest), headers={"Range": spec})
            what = "GET %s with Range: %s" % (digest[:19], spec)
            expect_status(r, 206, what)
            expect_eq(r.body, data[start:end], what + ": bytes")
            expect_eq(r.header("Content-Length"), str(end - start), what + ": Content-Length")
            expect_eq(r.header("Content-Range"), "bytes %d-%d/%d" % (start, end - 1, n),
                      what + ": Content-Range")
        r = h.request(port, "GET", blob_path(digest), headers={"Range": "bytes=5000-10000"})
        expect_status(r, 416, "Range past the end of a %d-byte blob" % n)

    def ranges_cold_and_cached():
        ranges(range_digest_cold, range_blob_cold)  # the first request is a ranged miss
        r = h.request(port, "GET", blob_path(range_digest))
        expect_eq(r.body, range_blob, "the whole range blob")
        h.wait_until(lambda: os.path.exists(cache.blob_file(range_digest)), 10, "it stored")
        ranges(range_digest, range_blob)

    run.check("ranges on a 2048-byte blob, as a miss and as a hit: 500-1499, 500-, -500, "
              "2000-5000 are 206 with bytes, Content-Length and Content-Range; 5000-10000 is 416",
              ranges_cold_and_cached)

    def invalid_names():
        for path in ("/v2/UPPER/manifests/%s" % TAG, "/v2/bad__name/blobs/%s" % dummy):
            r = h.request(port, "GET", path)
            expect(r.status in (400, 404), "GET %s: %d, expected 400 or 404" % (path, r.status))
            if r.status == 400:
                expect_eq(r.error_codes(), ["NAME_INVALID"], "GET %s: the error code" % path)

    run.check("an invalid repository name is 404, or 400 NAME_INVALID", invalid_names)


if __name__ == "__main__":
    h.main("conformance_pull", body)
