"""End-to-end: `content-cache fsck CONFIG [--repair]` on a store the cache filled.

A byte of one stored blob is flipped behind the cache's back: fsck names it and exits 4;
with --repair it removes it (and only it) and exits 0; the next pull fetches it again,
correct. fsck does not count as a pull (the blobs' access times are unchanged).

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_fsck.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "fsck/app"


def body(run):
    origin = run.origin()
    good, bad = os.urandom(70_000), os.urandom(90_000)
    dg, db = origin.upload_blob(REPO, good), origin.upload_blob(REPO, bad)
    cache = run.cache([origin])

    def fsck_finds_and_repairs():
        for d in (dg, db):
            h.expect_status(h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, d)), 200)
        path_bad = cache.blob_file(db)
        path_good = cache.blob_file(dg)
        # The commit (fsync, rename) follows the response.
        h.wait_until(lambda: os.path.exists(path_bad) and os.path.exists(path_good), 10,
                     "both blobs stored")
        with open(path_bad, "r+b") as f:
            f.seek(1234)
            byte = f.read(1)
            f.seek(1234)
            f.write(bytes([byte[0] ^ 0xFF]))
        atime_good = os.stat(path_good).st_atime_ns
        cp = h.run_binary(["fsck", cache.config_path])
        expect_eq(cp.returncode, 4, "fsck exit code with a damaged blob (stdout: %s)" % cp.stdout)
        expect(db.split(":")[1] in cp.stdout, "fsck does not name the damaged blob:\n" + cp.stdout)
        expect(dg.split(":")[1] not in cp.stdout, "fsck names the good blob:\n" + cp.stdout)
        expect(os.path.exists(path_bad), "fsck without --repair removed something")
        expect_eq(os.stat(path_good).st_atime_ns, atime_good, "the good blob's access time")
        cp = h.run_binary(["fsck", cache.config_path, "--repair"])
        expect_eq(cp.returncode, 0, "fsck --repair exit code (stdout: %s)" % cp.stdout)
        expect(not os.path.exists(path_bad), "fsck --repair left the damaged blob")
        expect(os.path.exists(path_good), "fsck --repair removed the good blob")
        cp = h.run_binary(["fsck", cache.config_path])
        expect_eq(cp.returncode, 0, "fsck after the repair (stdout: %s)" % cp.stdout)
        r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, db))
        h.expect_status(r, 200)
        expect_eq(h.sha256_digest(r.body), db, "the repaired blob, fetched again")

    run.check("fsck names a damaged blob (exit 4), --repair removes only it, the next pull "
              "fetches it again", fsck_finds_and_repairs)


if __name__ == "__main__":
    h.main("test_fsck", body)
