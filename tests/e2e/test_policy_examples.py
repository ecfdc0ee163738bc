"""End-to-end: each example drop-in of examples/policies/ changes what the cache does.

With a real origin (Docker Distribution), caches that load one example each (copied into a
policydir as an operator would), next to a cache with the built-in policies:

  * 50-base-image-ttl.lua: with a blobttl of 2 s, a layer pulled under library/debian stays
    past it while a layer of app/web pulled after it expires (the default expires both);
  * 70-s3fifo-evict.lua: under a disk budget, a blob pulled three times stays and a
    one-time scan is evicted, where the default (least recently pulled first) evicts the
    re-used blob;
  * 80-admit-max-size.lua (its limit edited to 10,000 bytes): a larger blob reaches its
    client whole and verified, and nothing of it is stored; a smaller one is stored;
  * 81-admit-second-request.lua: a blob is streamed through on its first request and
    stored on the second;
  * 60-json-logs.lua: access lines are JSON with the extra fields.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_policy_examples.py
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

EXAMPLES = os.path.join(h.SOURCE_DIR, "examples", "policies")


def policydir(run, name, example, edit=None):
    """A policydir holding the example (with edit = (old, new) applied to it)."""
    path = run.work.sub(name, mkdir=True)
    with open(os.path.join(EXAMPLES, example)) as f:
        text = f.read()
    if edit:
        expect(edit[0] in text, "%s holds %r" % (example, edit[0]))
        text = text.replace(edit[0], edit[1], 1)
    with open(os.path.join(path, example), "w") as f:
        f.write(text)
    return "        policydir: %s\n" % path


def get_blob(cache, repo, digest, size):
    r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (repo, digest))
    h.expect_status(r, 200)
    expect_eq(h.sha256_digest(r.body), digest, "digest of the body")
    expect_eq(len(r.body), size, "length of the body")
    return r


def wait_stored(cache, digest):
    h.wait_until(lambda: os.path.exists(cache.blob_file(digest)), h.LOG_TIMEOUT,
                 "%s to store %s" % (cache.name, digest))


def expect_gone(cache, digest, timeout):
    h.wait_until(lambda: not os.path.exists(cache.blob_file(digest)), timeout,
                 "%s to remove %s" % (cache.name, digest))


def body(run):
    origin = run.origin()

    # --- 50-base-image-ttl ----------------------------------------------------------
    debian = os.urandom(30_000)
    web = os.urandom(31_000)
    d_debian = origin.upload_blob("library/debian", debian)
    d_web = origin.upload_blob("app/web", web)
    base = run.cache([origin], name="base-ttl", blobttl="2s",
                     extra_downstream_yaml=policydir(run, "p50", "50-base-image-ttl.lua"))
    plain = run.cache([origin], name="plain-ttl", blobttl="2s")

    def base_images_outlive_blobttl():
        for c in (base, plain):
            get_blob(c, "library/debian", d_debian, len(debian))
            wait_stored(c, d_debian)
            get_blob(c, "app/web", d_web, len(web))
            wait_stored(c, d_web)
        # The app/web layer, pulled after the debian one, expires at its blobttl ...
        expect_gone(base, d_web, 20 * h.SCALE)
        # ... and the default expires the debian layer too, pulled as long ago.
        expect_gone(plain, d_debian, 20 * h.SCALE)
        expect_gone(plain, d_web, 20 * h.SCALE)
        # The debian layer, older than the blobttl, is still there with the drop-in.
        expect(os.path.exists(base.blob_file(d_debian)),
               "the library/debian layer is kept past the blobttl")
        dry = base.run_binary(["expire", base.config_path, "--dry-run"]).stdout
        expect(d_debian not in dry, "expire --dry-run keeps it too:\n" + dry)

    run.check("50-base-image-ttl: a library/debian layer outlives the blobttl, an app/web "
              "layer does not (the default expires both)", base_images_outlive_blobttl)

    # --- 70-s3fifo-evict against the default LRU ----------------------------------------
    # Ten blobs of 100,000 bytes in a budget of 1,000,000: eviction starts above 900,000
    # (the tenth) and goes down to 800,000 (two blobs go).
    size = 100_000
    hot = os.urandom(size)
    d_hot = origin.upload_blob("team/hot", hot)
    scan = [os.urandom(size) for _ in range(9)]
    d_scan = [origin.upload_blob("team/scan", b) for b in scan]
    budget = ("        diskbudget:\n          maxsize: 1000000B\n"
              "          highwatermark: 90\n          lowwatermark: 80\n")
    s3 = run.cache([origin], name="s3fifo", debug=True,
                   extra_downstream_yaml=budget + policydir(run, "p70", "70-s3fifo-evict.lua"))
    lru = run.cache([origin], name="lru", debug=True, extra_downstream_yaml=budget)

    def s3fifo_keeps_the_reused_blob():
        for c in (s3, lru):
            for _ in range(3):
                get_blob(c, "team/hot", d_hot, size)
            wait_stored(c, d_hot)
            for d, data in zip(d_scan, scan):
                get_blob(c, "team/scan", d, size)
                wait_stored(c, d)
            h.wait_until(lambda c=c: c.metrics().get("content_cache_evicted_blobs_total", 0) >= 2,
                         h.LOG_TIMEOUT, "%s to evict" % c.name)
            h.wait_until(lambda c=c: len(c.stored_digests()) <= 8, h.LOG_TIMEOUT, "%s at rest" % c.name)
        expect(d_hot in s3.stored_digests(), "S3-FIFO keeps the blob pulled three times")
        expect(d_scan[0] not in s3.stored_digests() and d_scan[1] not in s3.stored_digests(),
               "S3-FIFO evicts the oldest one-time pulls")
        expect(d_hot not in lru.stored_digests(), "the default LRU evicts the blob pulled three times "
               "(its last pull is the oldest)")
        expect(d_scan[0] in lru.stored_digests() or d_scan[1] in lru.stored_digests(),
               "the default keeps part of the scan")

    run.check("70-s3fifo-evict: a re-used blob survives a one-time scan, which the default LRU "
              "evicts it for", s3fifo_keeps_the_reused_blob)

    # --- 80-admit-max-size, its limit edited -------------------------------------------
    big = os.urandom(64_000)
    small = os.urandom(5_000)
    d_big = origin.upload_blob("ml/model", big)
    d_small = origin.upload_blob("ml/model", small)
    capped = run.cache([origin], name="admit-size", debug=True,
                       extra_downstream_yaml=policydir(
                           run, "p80", "80-admit-max-size.lua",
                           ("local MAX_BYTES = 2 * 1024 * 1024 * 1024",
                            "local MAX_BYTES = 10000")))

    def large_blob_streamed_not_stored():
        for _ in range(2):
            get_blob(capped, "ml/model", d_big, len(big))
        h.wait_for_count(lambda: origin.count_blob_gets(d_big), 2)
        h.wait_until(lambda: capped.metrics().get(
            'content_cache_fetches_total{outcome="passthrough"}', 0) >= 2, h.LOG_TIMEOUT,
            "two pass-through fetches")
        expect(not os.path.exists(capped.blob_file(d_big)), "nothing stored of the large blob")
        expect_eq(capped.tmp_files(d_big), {}, "temporary files of the large blob")
        expect_eq(capped.count_access(cache="miss", uri="/v2/ml/model/blobs/%s" % d_big), 2,
                  "both requests were misses")
        get_blob(capped, "ml/model", d_small, len(small))
        wait_stored(capped, d_small)

    run.check("80-admit-max-size: a blob over the limit reaches its client whole and nothing "
              "of it is stored; a smaller one is stored", large_blob_streamed_not_stored)

    # --- 81-admit-second-request ---------------------------------------------------------
    twice = os.urandom(12_000)
    d_twice = origin.upload_blob("team/app", twice)
    # One loop: the example remembers first requests in its Lua state, one per loop (its
    # header says what that means with several).
    second = run.cache([origin], name="admit-second", workers=1,
                       extra_downstream_yaml=policydir(run, "p81", "81-admit-second-request.lua"))

    def stored_on_the_second_request():
        get_blob(second, "team/app", d_twice, len(twice))
        h.wait_until(lambda: second.count_access(cache="miss") == 1, h.LOG_TIMEOUT,
                     "the first access line")
        expect(not os.path.exists(second.blob_file(d_twice)), "not stored on the first request")
        get_blob(second, "team/app", d_twice, len(twice))
        wait_stored(second, d_twice)
        get_blob(second, "team/app", d_twice, len(twice))
        h.wait_until(lambda: second.count_access(cache="hit") == 1, h.LOG_TIMEOUT,
                     "the third request a hit")
        expect_eq(origin.count_blob_gets(d_twice), 2, "GETs of the blob at the origin")

    run.check("81-admit-second-request: streamed through on the first request, stored on the "
              "second, a hit on the third", stored_on_the_second_request)

    # --- 60-json-logs ----------------------------------------------------------------------
    js = run.cache([origin], name="json-logs",
                   extra_downstream_yaml=policydir(run, "p60", "60-json-logs.lua"))

    def json_access_lines():
        get_blob(js, "library/debian", d_debian, len(debian))

        def lines():
            out = []
            for line in h.read_lines(js.stdout_path):
                if line.startswith("{"):
                    out.append(json.loads(line))
            return out
        h.wait_until(lambda: any(e.get("vars.digest") == d_debian for e in lines()),
                     h.LOG_TIMEOUT, "a JSON access line for the blob")
        e = [e for e in lines() if e.get("vars.digest") == d_debian][0]
        expect_eq(e.get("service"), "content-cache", "service")
        expect_eq(e.get("namespace"), "library", "namespace")
        expect_eq(e.get("cache_hit"), False, "cache_hit of a miss")

    run.check("60-json-logs: access lines are JSON with the extra fields", json_access_lines)


if __name__ == "__main__":
    h.main("test_policy_examples", body)
