"""End-to-end: the disk budget (downstream option `diskbudget`, our extension).

With a budget of a few blobs, pulling more keeps the store under the budget, evicts the
least recently pulled first (a blob pulled again moves to the back), a blob larger than
the budget passes through without being stored, and every pull stays correct. A drop-in
`evict` policy (most recently pulled first, to tell it from the default) is obeyed.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_budget.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "budget/app"
BLOB = 100_000                  # bytes per small blob
BUDGET = 350_000                # room for three of them
HIGH, LOW = 90, 60              # eviction above 315,000 bytes, down to 210,000


def stored(cache):
    root = os.path.join(cache.storage, "docker/registry/v2/blobs/sha256")
    out = {}
    for dirpath, _, files in os.walk(root):
        if "data" in files:
            out["sha256:" + os.path.basename(dirpath)] = os.path.getsize(
                os.path.join(dirpath, "data"))
    return out


def get(cache, digest, data):
    r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest))
    h.expect_status(r, 200)
    expect_eq(h.sha256_digest(r.body), digest, "digest of the body")
    expect_eq(len(r.body), len(data), "length of the body")


def settle_under(cache, limit):
    h.wait_until(lambda: sum(stored(cache).values()) <= limit, 10,
                 "the store to be within %d bytes" % limit)


def quiet(cache):
    """Waits until the cache is at rest: no fetch runs (a commit follows its response, so
    the next request can come first), the budget's totals match the disk, and they are
    within the high watermark (no eviction pending)."""
    def at_rest():
        m = cache.metrics()
        on_disk = sum(stored(cache).values())
        return (m.get("content_cache_fetches_running") == 0
                and m.get("content_cache_stored_bytes") == on_disk
                and on_disk <= BUDGET * HIGH // 100)
    h.wait_until(at_rest, 10, "the cache at rest (fetches done, eviction done)")


def body(run):
    work = run.work
    origin = run.origin()
    blobs = []
    for i in range(7):
        data = os.urandom(BLOB)
        blobs.append((origin.upload_blob(REPO, data), data))
    big = os.urandom(BUDGET + 50_000)
    big_digest = origin.upload_blob(REPO, big)

    budget_yaml = ("        diskbudget:\n          maxsize: %d\n          highwatermark: %d\n"
                   "          lowwatermark: %d\n" % (BUDGET, HIGH, LOW))
    cache = run.cache([origin], extra_downstream_yaml=budget_yaml, debug=True)

    def lru_order():
        # b0, b1, b2 fit (300,000 <= 315,000).
        for d, data in blobs[:3]:
            get(cache, d, data)
            time.sleep(0.05)  # distinct last-pulled times
        h.wait_until(lambda: len(stored(cache)) == 3, 10, "three blobs stored")
        # Pull b0 again (a pull records its time at most once a second): now b1 is the
        # least recently pulled.
        time.sleep(1.1)
        get(cache, blobs[0][0], blobs[0][1])
        time.sleep(0.05)
        # b3 pushes the store past the high watermark: evict down to 210,000 (two blobs).
        get(cache, blobs[3][0], blobs[3][1])
        settle_under(cache, BUDGET * LOW // 100)
        left = set(stored(cache))
        expect_eq(left, {blobs[0][0], blobs[3][0]},
                  "blobs left after eviction (b1, b2 were pulled least recently)")
        lines = [l for l in h.read_lines(cache.stderr_path) if "evicted blob" in l]
        expect(len(lines) == 2, "expected 2 'evicted blob' lines, got:\n" + "\n".join(lines))
        expect(blobs[1][0].split(":")[1] in lines[0] or blobs[1][0].split(":")[1] in lines[1],
               "b1 was not among the evicted")

    run.check("past the high watermark, the least recently pulled blobs are evicted to the "
              "low watermark", lru_order)

    def stays_correct_and_bounded():
        for d, data in blobs[4:] + blobs[:4]:
            get(cache, d, data)
            # Eviction follows the commit, which follows the response: at rest, the store
            # is within the high watermark.
            quiet(cache)
        settle_under(cache, BUDGET)
        h.log("  stored after cycling 7 blobs through: %d blobs, %d bytes"
              % (len(stored(cache)), sum(stored(cache).values())))

    run.check("pulling more blobs than fit keeps the store under the budget; every pull correct",
              stays_correct_and_bounded)

    def too_big_passes_through():
        quiet(cache)
        before = set(stored(cache))
        get(cache, big_digest, big)
        expect(big_digest not in stored(cache), "a blob larger than the budget was stored")
        h.wait_until(lambda: any("larger than the disk budget" in l
                                 for l in h.read_lines(cache.stderr_path)), 10,
                     "the pass-through log line")
        expect(set(stored(cache)) <= before | set(), "pass-through changed the stored set")

    run.check("a blob larger than the budget streams through without being stored",
              too_big_passes_through)

    # A drop-in evict policy: largest first (unlike the default), whatever the pull times.
    sized = []
    for size in (100_000, 105_000, 110_000, 95_000):
        data = os.urandom(size)
        sized.append((origin.upload_blob(REPO, data), data))
    pol = work.sub("policies", mkdir=True)
    with open(os.path.join(pol, "50-largest-first.lua"), "w") as f:
        f.write(h.LARGEST_FIRST_EVICT)
    custom = run.cache([origin], name="largest-first",
                       extra_downstream_yaml=budget_yaml + "        policydir: %s\n" % pol)

    def policy_order():
        for d, data in sized[:3]:
            get(custom, d, data)
        h.wait_until(lambda: len(stored(custom)) == 3, 10, "three blobs stored")
        # 315,000 bytes: at the high watermark, not above. The 95,000-byte blob passes it:
        # the policy frees 200,000 bytes, largest first: the 110,000 and 105,000 ones.
        get(custom, sized[3][0], sized[3][1])
        settle_under(custom, BUDGET * LOW // 100)
        expect_eq(set(stored(custom)), {sized[0][0], sized[3][0]},
                  "blobs left under the largest-first policy")

    run.check("a drop-in evict policy chooses the victims", policy_order)


if __name__ == "__main__":
    h.main("test_budget", body)
