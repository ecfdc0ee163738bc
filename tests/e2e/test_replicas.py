"""End-to-end: three content-cache processes on one storage root (replicas behind a load
balancer, sharing an NFS export in production; here one local directory).

- 30 concurrent cold requests spread over the three replicas: the upstream serves the
  blob once; every client gets the right bytes.
- kill -9 of the replica that fetches a blob mid-way: another replica takes the fetch
  over; every client of the surviving replicas finishes with the right bytes, the killed
  replica's clients see a cut connection (never a complete wrong body), and the blob
  ends up stored once, correct.

The origin sits behind a pacing proxy so that fetches are really in flight.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_replicas.py
"""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "replicas/app"
MB = 1 << 20
RATE = 20 * MB  # bytes per second through the proxy


def lock_owner(root, digest):
    path = os.path.join(root, "docker/registry/v2/_content-cache/fetching",
                        digest.split(":")[1])
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("owner="):
                    return int(line.strip().split("/")[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def body(run):
    work = run.work
    origin = run.origin()
    proxy = FakeUpstream(work, name="pacer", role="proxy", target=origin, rate=RATE).start()
    root = work.sub("shared-root", mkdir=True)
    blob_a = os.urandom(16 * MB)
    blob_b = os.urandom(40 * MB)
    da = origin.upload_blob(REPO, blob_a)
    db = origin.upload_blob(REPO, blob_b)
    replicas = [run.cache([proxy.url], name="replica%d" % i, storage=root) for i in range(3)]

    def one_fetch_for_thirty():
        uri = "/v2/%s/blobs/%s" % (REPO, da)
        bodies = h.parallel([(lambda i=i: h.get_body(replicas[i % 3].port, uri,
                                                   timeout=h.HTTP_TIMEOUT * 6))
                           for i in range(30)], timeout=h.CLIENT_TIMEOUT)
        for i, b in enumerate(bodies):
            expect(b.complete and b.status == 200, "client %d: %r" % (i, b.error or b.status))
            expect_eq(b.sha256, da, "client %d's digest" % i)
        gets = origin.wait_for_count(lambda: origin.count_blob_gets(da, status=None), 1)
        expect_eq(gets, 1, "GETs of the blob the origin served")
        expect_eq(proxy.count("GET", uri), 1, "GETs through the proxy")
        followed = sum(1 for r in replicas
                       if any("being fetched by another replica" in l
                              for l in h.read_lines(r.stderr_path)))
        h.log("  1 upstream fetch for 30 clients; %d replicas followed another's file"
              % followed)
        expect(followed >= 1, "no replica followed another's fetch")

    run.check("30 concurrent cold requests over 3 replicas: one upstream fetch, all correct",
              one_fetch_for_thirty)

    def takeover_after_kill_9():
        uri = "/v2/%s/blobs/%s" % (REPO, db)
        results = {}

        def client(i):
            results[i] = h.get_body(replicas[i % 3].port, uri, timeout=h.HTTP_TIMEOUT * 12)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(9)]
        for t in threads:
            t.start()
        # Wait until one replica holds the lock and a quarter of the blob is in.
        tmpdir = os.path.join(root, "docker/registry/v2/_content-cache/tmp")

        def quarter_in():
            try:
                return any(os.path.getsize(os.path.join(tmpdir, n)) >= len(blob_b) // 4
                           for n in os.listdir(tmpdir))
            except OSError:
                return False

        h.wait_until(quarter_in, 30, "a quarter of the blob in the temporary file")
        owner = lock_owner(root, db)
        victim = next((r for r in replicas if r.proc and r.proc.pid == owner), None)
        expect(victim is not None, "no replica owns the fetch lock (owner pid %r)" % owner)
        h.log("  killing %s (pid %d), the replica fetching the blob" % (victim.name, owner))
        os.kill(owner, signal.SIGKILL)
        victim.stopped = True  # killed on purpose
        for t in threads:
            t.join(h.CLIENT_TIMEOUT)
        expect(all(not t.is_alive() for t in threads), "clients still running")
        survivors = [i for i in range(9) if replicas[i % 3] is not victim]
        for i in range(9):
            b = results[i]
            if i in survivors:
                expect(b.complete and b.status == 200,
                       "client %d of a surviving replica: %r" % (i, b.error or b.status))
                expect_eq(b.sha256, db, "client %d's digest" % i)
            else:
                expect(not (b.complete and b.sha256 != db),
                       "client %d of the killed replica got a complete wrong body" % i)
        took = [r for r in replicas if r is not victim and
                any("taking the fetch over" in l for l in h.read_lines(r.stderr_path))]
        expect(len(took) >= 1, "no surviving replica says it took the fetch over")
        final = os.path.join(root, "docker/registry/v2/blobs/sha256", db[7:9], db[7:], "data")
        h.wait_until(lambda: os.path.exists(final), 30, "the blob to be stored")
        expect_eq(h.sha256_file(final), db, "the stored blob's digest")
        gets = origin.count_blob_gets(db, status=None)
        h.log("  origin GETs of the blob: %d (the killed one's and the takeover's)" % gets)
        expect(gets <= 3, "the origin served the blob %d times" % gets)

    run.check("kill -9 of the fetching replica: another takes over, its clients get every "
              "byte", takeover_after_kill_9)


if __name__ == "__main__":
    h.main("test_replicas", body)
