"""End-to-end: the blob cache in front of a real origin (README.md, Storage).

A Docker Distribution origin gets blobs uploaded straight through its blob upload API
(and one image pushed with skopeo). Two caches: one in front of the origin, one behind a
slow proxy (fake_upstream.py, role proxy: relays to the origin, paces bodies at
PROXY_RATE, counts requests) so that a fetch can be caught in the middle. Checked:

  1. 16 concurrent GETs of one cold 50 MB blob: every body whole and right; the origin
     served its GET once; the access log has one cache=miss, the rest coalesced or hit.
  2. A client that arrives when half of the blob is in the temporary file gets it whole
     and right, its first bytes before the fetch is over; the upstream saw one GET.
     The client that started a fetch hangs up: the one that joined still gets it all.
  3. Range on a hit and on a miss (mid-fetch): exact bytes, Content-Range, 416.
  4. HEAD of an uncached blob: answered from the upstream's HEAD, no GET, no file.
  5. skopeo pulls an image twice: the second pull is all hits, no new origin GETs.
  6. Nothing is left in the temporary directories.

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_blob_cache.py
"""

import os
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402

REPO = "e2e/blobs"
IMAGE_REPO = "e2e/pulled-twice"
MB = 1 << 20
COLD_SIZE = 50 * MB + 12345          # check 1 (odd sizes: no chunk-aligned luck)
LATE_SIZE = 40 * MB + 777            # check 2, through the slow proxy
RANGE_MISS_SIZE = 60 * MB + 4321     # check 3, through the slow proxy (3 s: time for
                                     # the ranges to join on a loaded machine)
HEAD_SIZE = 2 * MB + 99              # check 4
LEAVER_SIZE = 20 * MB + 3            # check 2b, through the slow proxy
# Bytes per second through the slow proxy: slower on a sanitizer build (h.SCALE), whose
# clients take longer to join a fetch that must still be running.
PROXY_RATE = 20e6 / h.SCALE
CLIENTS = 16


def blob_bytes(size, seed):
    return random.Random(seed).randbytes(size)


def blob_path(digest, repo=REPO):
    return "/v2/%s/blobs/%s" % (repo, digest)


def fetch_time(size):
    """A bound for one fetch of `size` bytes through the slow proxy."""
    return (size / PROXY_RATE * 3 + 10) * h.SCALE


def expect_whole(body, digest, size, what):
    expect_eq(body.status, 200, "%s: status (%r)" % (what, body))
    expect_eq(body.content_length, size, "%s: Content-Length" % what)
    expect(body.complete, "%s: body incomplete: %r" % (what, body))
    expect_eq(body.received, size, "%s: bytes received" % what)
    expect_eq(body.sha256, digest, "%s: sha256 of the body" % what)
    expect_eq(body.header("Docker-Content-Digest"), digest, "%s: Docker-Content-Digest" % what)


def access(cache, method, uri):
    return [e for e in cache.access_lines()
            if e.get("http.request.method") == method and e.get("http.request.uri") == uri]


def wait_access(cache, method, uri, n):
    """Waits for n access-log lines of method+uri (bounded) and returns them, settled."""
    h.wait_for_count(lambda: len(access(cache, method, uri)), n,
                     what="%s's access-log lines for %s %s" % (cache.name, method, uri))
    return access(cache, method, uri)


def proxy_gets(proxy, digest, repo=REPO):
    """GETs of the blob the proxy was sent (query strings allowed)."""
    pat = re.compile(r"^GET /v2/%s/blobs/%s(\?.*)?$" % (re.escape(repo), re.escape(digest)))
    return sum(n for k, n in proxy.stats()["requests"].items() if pat.match(k))


def expect_stored(cache, digest, what):
    """The blob is at its final path (bounded wait: the rename may trail the last byte)
    and its bytes are right."""
    path = cache.blob_file(digest)
    try:
        h.wait_until(lambda: os.path.isfile(path), h.LOG_TIMEOUT, "%s to be stored" % digest)
    except h.WaitTimeout:
        raise AssertionError("%s: nothing stored at %s" % (what, path))
    expect_eq(h.sha256_file(path), digest, "%s: sha256 of the stored file" % what)


def expect_range(cache, uri, spec, src, start, end, what):
    """GET with Range: spec -> 206, Content-Range bytes start-(end-1)/size, exact bytes."""
    b = h.get_body(cache.port, uri, headers={"Range": spec}, keep=True,
                   timeout=fetch_time(len(src)))
    expect_eq(b.status, 206, "%s %s: status (%r)" % (what, spec, b))
    expect_eq(b.header("Content-Range"), "bytes %d-%d/%d" % (start, end - 1, len(src)),
              "%s %s: Content-Range" % (what, spec))
    expect_eq(b.content_length, end - start, "%s %s: Content-Length" % (what, spec))
    expect(b.complete, "%s %s: incomplete body %r" % (what, spec, b))
    if b.data != src[start:end]:
        at = next((i for i, (x, y) in enumerate(zip(b.data, src[start:end])) if x != y),
                  min(len(b.data), end - start))
        raise AssertionError("%s %s: %d bytes received, first difference from the source at "
                             "offset %d" % (what, spec, len(b.data), start + at))
    return b


def expect_416(cache, uri, size, what):
    b = h.get_body(cache.port, uri, headers={"Range": "bytes=%d-" % size}, keep=True,
                   timeout=fetch_time(size))
    expect_eq(b.status, 416, "%s bytes=%d-: status (%r)" % (what, size, b))
    expect_eq(b.header("Content-Range"), "bytes */%d" % size,
              "%s bytes=%d-: Content-Range" % (what, size))
    return b


def range_cases(size):
    """(Range header, start, end) for the ranges checked on a hit and on a miss."""
    mid = size // 2
    return [
        ("bytes=0-99", 0, 100),
        ("bytes=1000-", 1000, size),
        ("bytes=-500", size - 500, size),
        ("bytes=%d-%d" % (mid - 70000, mid + 69999), mid - 70000, mid + 70000),
        ("bytes=%d-%d" % (size - 10, size + 1000), size - 10, size),
    ]


def body(run):
    work = run.work
    origin = run.origin()

    h.log("uploading test blobs to the origin")
    cold = blob_bytes(COLD_SIZE, 1)
    late = blob_bytes(LATE_SIZE, 2)
    ranged = blob_bytes(RANGE_MISS_SIZE, 3)
    headed = blob_bytes(HEAD_SIZE, 4)
    leaver = blob_bytes(LEAVER_SIZE, 5)
    cold_d = origin.upload_blob(REPO, cold)
    late_d = origin.upload_blob(REPO, late)
    ranged_d = origin.upload_blob(REPO, ranged)
    headed_d = origin.upload_blob(REPO, headed)
    leaver_d = origin.upload_blob(REPO, leaver)
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([3000, 400_000, 1_500_000],
                                                                   seed=21), tag="v1")
    h.push(work, image, origin, IMAGE_REPO, "v1")

    cache = run.cache([origin])
    proxy = FakeUpstream(work, name="slow-proxy", role="proxy", target=origin,
                         rate=PROXY_RATE).start()
    slow = run.cache([proxy.url], name="cache-slow")

    # ---- 1. Concurrent cold GETs ----------------------------------------------------
    def concurrent_cold():
        uri = blob_path(cold_d)
        expect(not os.path.exists(cache.blob_file(cold_d)), "the blob is stored before any GET")
        t0 = time.monotonic()
        bodies = h.parallel([lambda: h.get_body(cache.port, uri, timeout=h.HTTP_TIMEOUT * 3)
                           for _ in range(CLIENTS)], timeout=h.CLIENT_TIMEOUT)
        h.log("  %d clients got %d MB each in %.2f s" % (CLIENTS, COLD_SIZE // MB,
                                                         time.monotonic() - t0))
        for i, b in enumerate(bodies):
            expect_whole(b, cold_d, COLD_SIZE, "client %d" % (i + 1))
        gets = origin.wait_for_count(lambda: origin.count_blob_gets(cold_d, status=None), 1)
        expect_eq(gets, 1, "GETs of the blob that the origin served")
        lines = wait_access(cache, "GET", uri, CLIENTS)
        expect_eq(len(lines), CLIENTS, "access-log lines for the blob")
        kinds = [e.get("cache") for e in lines]
        h.log("  cache fields: %s" % ", ".join("%s=%d" % (k, kinds.count(k))
                                              for k in sorted(set(kinds), key=str)))
        expect_eq(kinds.count("miss"), 1, "access-log lines with cache=miss (%r)" % kinds)
        expect(all(k in ("miss", "coalesced", "hit") for k in kinds),
               "cache fields other than miss/coalesced/hit: %r" % kinds)
        for e in lines:
            expect_eq(str(e.get("http.response.status")), "200", "logged status")
            expect_eq(str(e.get("http.response.written")), str(COLD_SIZE), "logged bytes written")
        expect_stored(cache, cold_d, "after the concurrent GETs")

    run.check("16 concurrent GETs of a cold 50 MB blob: all right, origin GET once, "
              "one cache=miss, rest coalesced/hit", concurrent_cold)

    # ---- 2. A client that arrives half-way -------------------------------------------
    def late_joiner():
        uri = blob_path(late_d)
        bound = fetch_time(LATE_SIZE)
        first = h.background(lambda: h.get_body(slow.port, uri, timeout=bound))
        h.wait_until(lambda: sum(slow.tmp_files(late_d).values()) >= LATE_SIZE // 2, bound,
                     "the temporary file of %s to hold half of its %d bytes" % (late_d,
                                                                               LATE_SIZE))
        at_half = sum(slow.tmp_files(late_d).values())
        expect(not os.path.exists(slow.blob_file(late_d)),
               "the blob was committed before the second client came")
        seen = {}

        def at_first_byte(b):
            # Where the fetch was when the late client's first bytes came.
            seen["stored"] = os.path.exists(slow.blob_file(late_d))
            seen["tmp"] = sum(slow.tmp_files(late_d).values())

        second = h.get_body(slow.port, uri, timeout=bound, on_first_byte=at_first_byte)
        one = first(bound)
        h.log("  second client came at %d bytes in; its first bytes after %.3f s, with %s "
              "bytes in the temporary file; the first client's body ended %.3f s after it "
              "came" % (at_half, second.t_first_byte or -1, seen.get("tmp"),
                        one.started + one.t_end - second.started))
        expect_whole(one, late_d, LATE_SIZE, "the first client")
        expect_whole(second, late_d, LATE_SIZE, "the client that came half-way")
        expect(seen and not seen["stored"] and seen["tmp"] < LATE_SIZE,
               "the late client's first bytes came only once the fetch was over (%r): it "
               "was not served from the growing file" % seen)
        n = h.wait_for_count(lambda: proxy_gets(proxy, late_d), 1,
                             what="the proxy's count of GETs")
        expect_eq(n, 1, "GETs of the blob that reached the proxy")
        expect_eq(h.settle(lambda: origin.count_blob_gets(late_d, status=None)), 1,
                  "GETs of the blob that the origin served")
        kinds = [e.get("cache") for e in wait_access(slow, "GET", uri, 2)]
        expect_eq(kinds, ["coalesced", "miss"] if kinds[0] == "coalesced" else
                  ["miss", "coalesced"], "cache fields of the two GETs")
        expect_stored(slow, late_d, "after the late joiner")

    run.check("a client arriving with half the blob in gets it whole, from the growing file; "
              "one GET upstream", late_joiner)

    def starter_leaves():
        uri = blob_path(leaver_d)
        bound = fetch_time(LEAVER_SIZE)
        with h.RawConnection(slow.port, timeout=bound) as starter:
            starter.send_request("GET", uri)
            head = starter.fp.readline()
            expect(head.startswith(b"HTTP/1.1 200"), "the starter's status line: %r" % head)
            h.wait_until(lambda: sum(slow.tmp_files(leaver_d).values()) >= 2 * MB, bound,
                         "the fetch of %s to be under way" % leaver_d)
            joined = threading.Event()
            joiner = h.background(lambda: h.get_body(slow.port, uri, timeout=bound,
                                                   on_first_byte=lambda b: joined.set()))
            expect(joined.wait(bound), "the second client got no byte")
            starter.fp.read1(65536)
        # The starter hung up mid-body: the fetch goes on for the joiner.
        b = joiner(bound)
        expect_whole(b, leaver_d, LEAVER_SIZE, "the client that joined, after the starter left")
        expect_stored(slow, leaver_d, "after the starter left")
        n = h.wait_for_count(lambda: proxy_gets(proxy, leaver_d), 1,
                             what="the proxy's count of GETs")
        expect_eq(n, 1, "GETs of the blob that reached the proxy")

    run.check("the client that started a fetch hangs up mid-body: the one that joined gets "
              "every byte, the blob is stored, one GET upstream", starter_leaves)

    # ---- 3. Range on a hit and on a miss ---------------------------------------------
    def ranges_on_hit():
        uri = blob_path(cold_d)
        expect(os.path.isfile(cache.blob_file(cold_d)), "the blob is not stored (check 1)")
        before = len(access(cache, "GET", uri))
        cases = range_cases(COLD_SIZE)
        for spec, start, end in cases:
            expect_range(cache, uri, spec, cold, start, end, "hit")
        expect_416(cache, uri, COLD_SIZE, "hit")
        lines = wait_access(cache, "GET", uri, before + len(cases) + 1)[before:]
        kinds = [e.get("cache") for e in lines]
        expect_eq(kinds, ["hit"] * (len(cases) + 1), "cache fields of the range requests")
        expect_eq(h.settle(lambda: origin.count_blob_gets(cold_d, status=None)), 1,
                  "origin GETs of the blob (ranges on a hit must not fetch)")

    run.check("Range on a hit: 0-99, 1000-, -500, across the middle, past the end -> 206 "
              "with exact bytes and Content-Range; <size>- -> 416", ranges_on_hit)

    def ranges_on_miss():
        uri = blob_path(ranged_d)
        size = RANGE_MISS_SIZE
        bound = fetch_time(size)
        cases = range_cases(size)
        spec0, start0, end0 = cases[1]  # bytes=1000-: starts the fetch
        starter = h.background(lambda: expect_range(slow, uri, spec0, ranged, start0, end0, "miss"))
        h.wait_until(lambda: sum(slow.tmp_files(ranged_d).values()) >= 2 * MB, bound,
                     "the fetch of %s to begin" % ranged_d)
        # The head of the blob is served while the fetch is still running.
        expect_range(slow, uri, "bytes=0-99", ranged, 0, 100, "miss")
        expect(not os.path.exists(slow.blob_file(ranged_d)) and slow.tmp_files(ranged_d),
               "bytes=0-99 was answered only after the fetch had ended")
        others = [c for c in cases if c[0] not in (spec0, "bytes=0-99")]
        fns = [lambda c=c: expect_range(slow, uri, c[0], ranged, c[1], c[2], "miss")
               for c in others]
        fns.append(lambda: expect_416(slow, uri, size, "miss"))
        h.parallel(fns, timeout=bound)
        starter(bound)
        n = h.wait_for_count(lambda: proxy_gets(proxy, ranged_d), 1,
                             what="the proxy's count of GETs")
        expect_eq(n, 1, "GETs of the blob that reached the proxy")
        lines = wait_access(slow, "GET", uri, len(cases) + 1)
        ranged_lines = [e for e in lines if str(e.get("http.response.status")) == "206"]
        kinds = [e.get("cache") for e in ranged_lines]
        expect_eq(len(kinds), len(cases), "206 lines in the access log")
        expect_eq(kinds.count("miss"), 1, "range requests logged cache=miss (%r)" % kinds)
        expect(kinds.count("coalesced") >= 2,
               "range requests that joined the running fetch (cache=coalesced): %r" % kinds)
        expect_stored(slow, ranged_d, "after the ranges on a miss")

    run.check("Range on a miss (mid-fetch, slow upstream): same exact bytes and headers, "
              "served from the growing file, one GET upstream", ranges_on_miss)

    # ---- 4. HEAD of an uncached blob ---------------------------------------------------
    def head_on_miss():
        uri = blob_path(headed_d)
        with h.RawConnection(cache.port) as c:
            c.send_request("HEAD", uri)
            r = c.read_response(method="HEAD")
            expect_eq(r.status, 200, "HEAD status (%r)" % r)
            expect_eq(r.header("Content-Length"), str(HEAD_SIZE), "HEAD Content-Length")
            expect_eq(r.header("Docker-Content-Digest"), headed_d, "HEAD Docker-Content-Digest")
            # No body followed the HEAD: the next response on the connection parses.
            c.send_request("GET", "/v2/")
            expect_eq(c.read_response().status, 200, "GET /v2/ after the HEAD")
        heads = origin.wait_for_count(
            lambda: origin.count(method="HEAD", uri=uri), 1)
        expect(heads >= 1, "the origin was not asked (HEAD)")
        expect_eq(h.settle(lambda: origin.count_blob_gets(headed_d, status=None)), 0,
                  "GETs of the blob that the origin served after a HEAD")
        expect(not os.path.exists(cache.blob_file(headed_d)),
               "a HEAD stored the blob at %s" % cache.blob_file(headed_d))
        expect_eq(cache.tmp_files(headed_d), {}, "temporary files of the blob after a HEAD")
        kinds = [e.get("cache") for e in wait_access(cache, "HEAD", uri, 1)]
        expect("hit" not in kinds, "a HEAD of an uncached blob was logged cache=hit")

    run.check("HEAD of an uncached blob: 200 with Content-Length and digest, no GET "
              "upstream, nothing stored", head_on_miss)

    # ---- 5. skopeo pulls the same image twice ---------------------------------------
    def pull_twice():
        digests = [image.config_digest] + image.layer_digests
        out = work.sub("pull-1")
        h.pull(work, cache, IMAGE_REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "first pull through the cache")
        for d in digests:
            expect_stored(cache, d, "after the first pull")
        origin_gets = {d: h.settle(lambda d=d: origin.count_blob_gets(d, status=None))
                       for d in digests}
        expect(all(n >= 1 for n in origin_gets.values()),
               "the first pull did not fetch every blob from the origin: %r" % origin_gets)
        h.settle(lambda: len(cache.access_lines()))
        mark = len(cache.access_lines())
        out = work.sub("pull-2")
        h.pull(work, cache, IMAGE_REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "second pull through the cache")
        h.settle(lambda: len(cache.access_lines()))
        blob_re = re.compile(r"^/v2/%s/blobs/(sha256:[0-9a-f]{64})$" % re.escape(IMAGE_REPO))
        gets = [e for e in cache.access_lines()[mark:]
                if e.get("http.request.method") == "GET"
                and blob_re.match(e.get("http.request.uri", ""))]
        got = sorted(set(blob_re.match(e["http.request.uri"]).group(1) for e in gets))
        expect_eq(got, sorted(digests), "blobs the second pull GOT through the cache")
        not_hits = [(e["http.request.uri"], e.get("cache")) for e in gets
                    if e.get("cache") != "hit"]
        expect_eq(not_hits, [], "blob GETs of the second pull not logged cache=hit")
        for d in digests:
            expect_eq(h.settle(lambda d=d: origin.count_blob_gets(d, status=None)),
                      origin_gets[d], "origin GETs of %s after the second pull" % d)

    run.check("skopeo pulls an image twice: second pull all cache=hit, no new origin GETs",
              pull_twice)

    # ---- 6. Nothing left behind ------------------------------------------------------
    def tmp_dirs_empty():
        for c in (cache, slow):
            expect(os.path.isdir(c.tmp_dir), "%s has no temporary directory %s" % (c.name,
                                                                                  c.tmp_dir))
            left = h.settle(lambda c=c: sorted(os.listdir(c.tmp_dir)))
            expect_eq(left, [], "files left in %s's %s" % (c.name, c.tmp_dir))

    run.check("no files left in the temporary directories", tmp_dirs_empty)

    proxy.stop()


if __name__ == "__main__":
    h.main("blob_cache", body)
