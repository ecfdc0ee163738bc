"""End-to-end: one cache, two origins. A request names its registry with the `ns` query
parameter (as containerd does for a mirror), matched against each upstreams entry's
originhost; without it the first entry serves; an ns that names no entry is refused.
The response echoes ns in `OCI-Namespace`. Authorization stays per origin: a blob on
disk because it came from origin 1 is served for origin 2 only if origin 2 says so.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_multi_origin.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "shared/app"


def body(run):
    work = run.work
    one = run.origin(name="origin1")
    two = run.origin(name="origin2")
    only_one = os.urandom(50_000)
    only_two = os.urandom(60_000)
    d1 = one.upload_blob(REPO, only_one)
    d2 = two.upload_blob(REPO, only_two)
    # The same repository and tag on both origins, with different manifests.
    img1 = h.make_oci_layout(work.sub("layout1"), h.random_layers([3000], seed=1), tag="v1")
    img2 = h.make_oci_layout(work.sub("layout2"), h.random_layers([4000], seed=2), tag="v1")
    h.push(work, img1, one, REPO, "v1")
    h.push(work, img2, two, REPO, "v1")
    cache = run.cache([one, two])

    def get(path, ns=None, method="GET"):
        if ns is not None:
            path += "?ns=" + ns
        return h.request(cache.port, method, path, headers={"Accept": h.OCI_MANIFEST})

    def ns_routes():
        r = get("/v2/%s/manifests/v1" % REPO, ns=one.host)
        h.expect_status(r, 200)
        expect_eq(r.header("Docker-Content-Digest"), img1.manifest_digest, "manifest via ns=1")
        expect_eq(r.header("OCI-Namespace"), one.host, "OCI-Namespace echo")
        r = get("/v2/%s/manifests/v1" % REPO, ns=two.host)
        h.expect_status(r, 200)
        expect_eq(r.header("Docker-Content-Digest"), img2.manifest_digest, "manifest via ns=2")
        expect_eq(r.header("OCI-Namespace"), two.host, "OCI-Namespace echo")
        # Percent-encoded, as Go's url.Values writes ':'.
        r = get("/v2/%s/manifests/v1" % REPO, ns=two.host.replace(":", "%3A"))
        expect_eq(r.header("Docker-Content-Digest"), img2.manifest_digest, "encoded ns")
        # Blobs: each from its own origin.
        r = get("/v2/%s/blobs/%s" % (REPO, d2), ns=two.host)
        h.expect_status(r, 200)
        expect_eq(h.sha256_digest(r.body), d2, "blob of origin 2")
        expect_eq(two.count_blob_gets(d2), 1, "origin 2 served its blob")
        expect_eq(one.count_blob_gets(d2, status=None), 0, "origin 1 saw no GET of it")
        # Without ns: the first entry.
        r = get("/v2/%s/manifests/v1" % REPO)
        expect_eq(r.header("Docker-Content-Digest"), img1.manifest_digest, "manifest without ns")
        expect_eq(r.header("OCI-Namespace"), None, "no OCI-Namespace without ns")

    run.check("ns picks the origin (manifests, blobs); without ns the first entry serves",
              ns_routes)

    def unknown_ns():
        r = get("/v2/%s/manifests/v1" % REPO, ns="registry.example.com")
        h.expect_error(r, 404, "NAME_UNKNOWN")

    run.check("an ns that names no upstream entry is refused (404 NAME_UNKNOWN)", unknown_ns)

    def per_origin_authorization():
        # d2 is on the cache's disk now. Origin 1 does not have it: asked under origin 1,
        # the cache must not serve it.
        r = get("/v2/%s/blobs/%s" % (REPO, d2), ns=one.host)
        expect_eq(r.status, 404, "origin 2's blob asked through origin 1")
        expect(h.sha256_digest(r.body) != d2, "bytes of origin 2's blob through origin 1")
        r = get("/v2/%s/blobs/%s" % (REPO, d2))
        expect_eq(r.status, 404, "origin 2's blob asked without ns (origin 1)")
        # Through origin 2 again: a hit.
        r = get("/v2/%s/blobs/%s" % (REPO, d2), ns=two.host)
        h.expect_status(r, 200)
        expect_eq(two.count_blob_gets(d2), 1, "origin 2 GETs after the hit")
        r = get("/v2/%s/blobs/%s" % (REPO, d1), ns=one.host)
        expect_eq(h.sha256_digest(r.body), d1, "origin 1's own blob")

    run.check("a 'yes' from one origin never opens a blob of another", per_origin_authorization)


if __name__ == "__main__":
    h.main("test_multi_origin", body)
