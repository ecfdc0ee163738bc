"""End-to-end: blobttl deletes blobs that were not pulled for that long, counted from the
last pull, and the last-pulled time survives a restart of the cache.

A real origin holds an image; a cache with `blobttl: 3s` pulls its blobs. The test waits
(bounded) for the files to disappear, checks that a blob pulled again stays longer than
one that was not, that `content-cache expire CONFIG` removes what has expired, and that
a restart does not reset the clock.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_blobttl.py
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "ttl/app"
TTL_S = 3.0


def blob_file(cache, digest):
    hexd = digest.split(":", 1)[1]
    return os.path.join(cache.storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


def pull_blob(cache, digest, expected):
    r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest))
    h.expect_status(r, 200)
    expect_eq(h.sha256_digest(r.body), digest, "digest of the pulled body")
    expect_eq(len(r.body), len(expected), "length of the pulled body")


def body(run):
    work = run.work
    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([10_000, 20_000, 30_000, 15_000, 25_000],
                                                                seed=5),
                              tag="v1")
    h.push(work, image, origin, REPO, "v1")
    ((d_kept, _, b_kept), (d_gone, _, b_gone), (d_restart, _, b_restart), (d_zero, _, b_zero),
     (d_nil, _, b_nil)) = image.layers

    cache = run.cache([origin], blobttl="%ds" % TTL_S)

    def stored_then_expired():
        t0 = time.monotonic()
        pull_blob(cache, d_kept, b_kept)
        pull_blob(cache, d_gone, b_gone)
        # The commit (fsync, rename) follows the response: wait for it.
        h.wait_until(lambda: os.path.exists(blob_file(cache, d_kept)), 10, "first blob stored")
        h.wait_until(lambda: os.path.exists(blob_file(cache, d_gone)), 10, "second blob stored")
        # Pull the first one again at about 2/3 of the TTL: its clock starts over.
        time.sleep(max(0.0, t0 + TTL_S * 2 / 3 - time.monotonic()))
        pull_blob(cache, d_kept, b_kept)
        t_repull = time.monotonic()
        h.wait_until(lambda: not os.path.exists(blob_file(cache, d_gone)), TTL_S * 4,
                     "the blob not pulled again to expire")
        t_gone = time.monotonic() - t0
        expect(t_gone >= TTL_S - 0.05, "expired after %.2fs, before its TTL of %.1fs"
               % (t_gone, TTL_S))
        # The re-pulled blob outlives the other one by about the time between the pulls.
        expect(os.path.exists(blob_file(cache, d_kept)) or
               time.monotonic() - t_repull >= TTL_S - 0.05,
               "the blob pulled again expired as if it had not been pulled")
        h.wait_until(lambda: not os.path.exists(blob_file(cache, d_kept)), TTL_S * 4,
                     "the re-pulled blob to expire after its own TTL")
        t_kept = time.monotonic() - t_repull
        expect(t_kept >= TTL_S - 0.05, "re-pulled blob expired %.2fs after its last pull"
               % t_kept)
        h.log("  expired %.2fs after the last pull (ttl %.1fs); re-pulled one %.2fs after its "
              "second pull" % (t_gone, TTL_S, t_kept))
        lines = [l for l in h.read_lines(cache.stderr_path) if "expired blob" in l]
        expect(len(lines) >= 2, "no 'expired blob' log lines:\n" + h.tail(cache.stderr_path))
        # After expiry the blob is fetched again, correctly.
        pull_blob(cache, d_gone, b_gone)
        h.wait_until(lambda: os.path.exists(blob_file(cache, d_gone)), 10,
                     "the blob to be stored again")

    run.check("blobttl 3s: a blob not pulled for 3s is deleted; a pull restarts its clock",
              stored_then_expired)

    def survives_restart_and_expire_command():
        pull_blob(cache, d_restart, b_restart)
        path = blob_file(cache, d_restart)
        h.wait_until(lambda: os.path.exists(path), 10, "the blob to be stored")
        cache.stop()
        # While the cache is down, the TTL passes; the pull time is on disk.
        time.sleep(TTL_S + 0.5)
        cp = h.run_binary(["expire", cache.config_path])
        expect_eq(cp.returncode, 0, "expire exit code (stderr: %s)" % cp.stderr)
        expect(d_restart.split(":")[1] in cp.stdout,
               "expire did not report the expired blob:\n" + cp.stdout)
        expect(not os.path.exists(path), "expire left the expired blob on disk")

    run.check("the last-pulled time is on disk: `content-cache expire` removes what expired "
              "while the cache was down", survives_restart_and_expire_command)

    def expire_command_uses_drop_in_ttl():
        # No blobttl: a drop-in blob_ttl alone decides. 0 s for one blob, nil (keep) for
        # the other; the command must ask the policy as the running cache would.
        pol = work.sub("ttl-policies")
        os.makedirs(pol, exist_ok=True)
        with open(os.path.join(pol, "50-ttl.lua"), "w") as f:
            f.write("return { blob_ttl = function(blob)\n"
                    "  if blob.digest == %r then return 0 end\n"
                    "  return nil\nend }\n" % d_zero)
        c2 = run.cache([origin], name="cache-dropin-ttl",
                       extra_downstream_yaml="        policydir: %s\n" % pol)
        pull_blob(c2, d_zero, b_zero)
        pull_blob(c2, d_nil, b_nil)
        p_zero, p_nil = blob_file(c2, d_zero), blob_file(c2, d_nil)
        h.wait_until(lambda: os.path.exists(p_zero) and os.path.exists(p_nil), 10,
                     "both blobs to be stored")
        c2.stop()
        cp = h.run_binary(["expire", c2.config_path])
        h.log("  expire with a drop-in blob_ttl: %s" % cp.stdout.strip().replace("\n", "; "))
        expect_eq(cp.returncode, 0, "expire exit code (stderr: %s)" % cp.stderr)
        expect(not os.path.exists(p_zero), "expire kept the blob whose drop-in TTL is 0 s")
        expect(os.path.exists(p_nil), "expire removed the blob the drop-in keeps (nil)")
        expect("1 blobs removed" in cp.stdout, "expire's count:\n" + cp.stdout)

    run.check("`content-cache expire` uses a drop-in blob_ttl when no blobttl is set",
              expire_command_uses_drop_in_ttl)


if __name__ == "__main__":
    h.main("test_blobttl", body)
