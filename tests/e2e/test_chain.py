"""End-to-end: a two-level chain on one machine.

Cache B has `upstreamhosts: [A1, A2]` and the origin as `originhost`; caches A1 and A2
pull from the origin. Eight distinct cold blobs pulled through B are split 4/4 between
A1 and A2 (round robin), each A fetches each blob from the origin at most once, a HEAD of
an uncached blob works through the chain, and with A1 stopped pulls through B still
succeed (A2, or the origin as the last resort).

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_chain.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "chain/app"


def get_blob(cache, digest):
    r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest))
    h.expect_status(r, 200)
    expect_eq(h.sha256_digest(r.body), digest, "digest of the body from %s" % cache.name)
    return r


def blob_gets(cache, digest):
    return cache.count_access(method="GET", uri="/v2/%s/blobs/%s" % (REPO, digest), status=200)


def body(run):
    work = run.work
    origin = run.origin()
    sizes = [20_000 + 1000 * i for i in range(10)]
    image = h.make_oci_layout(work.sub("layout"), h.random_layers(sizes, seed=21), tag="v1")
    h.push(work, image, origin, REPO, "v1")
    digests = [d for d, _, _ in image.layers]

    a1 = run.cache([origin], name="a1")
    a2 = run.cache([origin], name="a2")
    b = run.cache([{"originhost": origin.url, "upstreamhosts": [a1.url, a2.url]}], name="b")

    def split_four_four():
        for d in digests[:8]:
            get_blob(b, d)
        # A1/A2 write their access lines after their last byte went out: wait for all 8.
        h.wait_for_count(lambda: sum(blob_gets(c, d) for c in (a1, a2) for d in digests[:8]),
                         8, what="A1 and A2's blob GET lines")
        n1 = sum(blob_gets(a1, d) for d in digests[:8])
        n2 = sum(blob_gets(a2, d) for d in digests[:8])
        h.log("  blob GETs served: A1 %d, A2 %d" % (n1, n2))
        expect_eq((n1, n2), (4, 4), "blob fetches served by (A1, A2)")
        for d in digests[:8]:
            expect(origin.count_blob_gets(d) <= 1, "the origin served %s %d times"
                   % (d, origin.count_blob_gets(d)))
            expect_eq(blob_gets(a1, d) + blob_gets(a2, d), 1, "fetches of %s through A1+A2" % d)
        # Pulled again through B: hits in B, nothing new upstream (once B's commits are
        # done: they go on behind the first responses).
        h.wait_until(lambda: all(os.path.exists(b.blob_file(d)) for d in digests[:8]), 10,
                     "the 8 blobs on B's disk")
        before = [blob_gets(a1, d) + blob_gets(a2, d) for d in digests[:8]]
        for d in digests[:8]:
            get_blob(b, d)
        after = h.settle(lambda: [blob_gets(a1, d) + blob_gets(a2, d) for d in digests[:8]])
        expect_eq(after, before, "A1/A2 blob GETs after a second pull through B")
        h.wait_until(lambda: b.count_access(method="GET", cache="hit") >= 8, 10,
                     "B's access log to show the 8 hits")

    run.check("8 cold blobs through B are split 4/4 between A1 and A2; each fetched once",
              split_four_four)

    def head_through_chain():
        d = digests[8]
        r = h.request(b.port, "HEAD", "/v2/%s/blobs/%s" % (REPO, d))
        h.expect_status(r, 200)
        expect_eq(r.header("Docker-Content-Digest"), d, "Docker-Content-Digest")
        expect_eq(int(r.header("Content-Length")), image.layers[8][1], "Content-Length")
        expect_eq(r.body, b"", "HEAD body")
        expect_eq(origin.count_blob_gets(d), 0, "origin GETs of a blob only HEADed")

    run.check("HEAD of an uncached blob through the chain answers size and digest",
              head_through_chain)

    def a1_down():
        a1.stop()
        for d in digests[8:]:
            get_blob(b, d)
        # Also the 8 already in B still come from B's disk.
        get_blob(b, digests[0])

    run.check("with A1 stopped, pulls through B still succeed", a1_down)


if __name__ == "__main__":
    h.main("test_chain", body)
