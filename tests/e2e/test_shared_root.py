"""End-to-end: what another process puts under the storage root is data, not instructions
(issue 14, item 3). Replicas share a root; whoever can write there (another replica's
host) must not be able to make a cache read, serve or remove a file outside it, nor hang
it. The test plays that other process: it writes fetch locks, temporary files and data
files by hand into the root of a real cache in front of a real origin.

  1. A fresh lock naming a file outside the temporary directory (a server key): nothing
     of that file is served, the blob is fetched and stored, the file is left alone.
  2. A lock whose heartbeat is an hour in the future: taken over, the blob served.
  3. A takeover never removes the path a stale lock names: outside tmp, or a temporary
     file of the right name inside it. A follower that was sent bytes of a file that are
     not the blob's fails its client (cut short, an error in the access log), never a
     clean 200; one sent the blob's own bytes completes.
  4. FIFOs as lock files and as data files (20 of them, more than the thread pool's 16
     workers) do not stop a cold blob being served promptly, and each of those 20 blobs
     is served too.
  5. A symbolic link as a data file, or as a blob's directory: the linked file is not
     served (the blob is fetched), and nothing is written through the link.
  6. A cache starts, and cleans up, with FIFOs where its locks and temporary files go.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_shared_root.py
"""

import os
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "shared/root"
KB = 1024
OWNER = "elsewhere/4242/0badf00d"  # another host: never judged dead by its pid
PROMPT = 10.0 * h.SCALE             # a cold blob must be served within this
STALE_SOON = 3                      # a lock touched this long ago goes stale in ~2 s
FIFOS = 20                          # more than libuv's 16 thread-pool workers


def hexof(digest):
    return digest.split(":", 1)[1]


def lock_path(root, digest):
    return os.path.join(root, "docker/registry/v2/_content-cache/fetching", hexof(digest))


def tmp_path(root, digest, suffix="0123456789ab"):
    return os.path.join(root, "docker/registry/v2/_content-cache/tmp",
                        "%s.%s" % (hexof(digest), suffix))


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_lock(root, digest, tmp, size, age=0.0):
    """A fetch lock as another replica writes it, touched `age` seconds ago (negative:
    in the future)."""
    path = lock_path(root, digest)
    write_file(path, ("owner=%s\ntmp=%s\nsize=%d\n" % (OWNER, tmp, size)).encode())
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def unblock_fifos(paths):
    """Opens every FIFO still there for writing and closes it: a reader blocked in open
    (the code before the fix) gets its EOF and goes on."""
    for p in paths:
        try:
            if not stat.S_ISFIFO(os.lstat(p).st_mode):
                continue
            fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass  # no reader (ENXIO), or gone


def access_lines(cache, uri):
    return [e for e in cache.access_lines() if e.get("http.request.uri") == uri
            and e.get("http.request.method") == "GET"]


def expect_blob(b, digest, size, what):
    expect(b.status == 200 and b.complete,
           "%s: expected a complete 200, got %r" % (what, b))
    expect_eq(b.sha256, digest, "%s: digest of the body" % what)
    expect_eq(b.received, size, "%s: bytes received" % what)


def expect_stored(cache, digest, what):
    path = cache.blob_file(digest)
    h.wait_until(lambda: os.path.isfile(path) and not os.path.islink(path), h.LOG_TIMEOUT,
                 "%s to be stored as a regular file" % what)
    expect_eq(h.sha256_file(path), digest, "%s: digest of the stored file" % what)


def body(run):
    work = run.work
    origin = run.origin()
    root = work.sub("shared-root", mkdir=True)
    cache = run.cache([origin], name="replica", storage=root)

    def new_blob(size):
        data = os.urandom(size)
        return data, origin.upload_blob(REPO, data)

    def uri_of(digest):
        return "/v2/%s/blobs/%s" % (REPO, digest)

    # --- 1 -------------------------------------------------------------------------
    def lock_naming_a_file_outside_tmp():
        data, d = new_blob(256 * KB)
        secret = os.urandom(len(data))
        key = work.sub("server.key")
        write_file(key, secret)
        lock = write_lock(root, d, key, len(data))
        # Keep the lock fresh for a while, as a live replica would.
        stop = threading.Event()

        def beat():
            deadline = time.monotonic() + 4
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    os.utime(lock)
                except OSError:
                    pass
                stop.wait(0.5)

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            b = h.get_body(cache.port, uri_of(d), keep=True, timeout=30 * h.SCALE)
        finally:
            stop.set()
            beater.join(5)
        expect(secret[:4096] not in (b.data or b""),
               "the client was sent bytes of the file the lock named (%r)" % b)
        expect_blob(b, d, len(data), "GET of the blob whose lock names server.key")
        expect(os.path.exists(key), "the file the lock named was removed")
        with open(key, "rb") as f:
            expect(f.read() == secret, "the file the lock named was changed")
        expect_stored(cache, d, "the blob")
        expect(any("is not a lock of this store" in line
                   for line in h.read_lines(cache.stderr_path)),
               "no log line says the lock was not taken as one")

    run.check("a lock naming a file outside tmp: nothing of it is served, the blob is "
              "fetched and stored, the file left alone", lock_naming_a_file_outside_tmp)

    # --- 2 -------------------------------------------------------------------------
    def lock_from_the_future():
        data, d = new_blob(128 * KB)
        write_lock(root, d, tmp_path(root, d), len(data), age=-3600)
        t0 = time.monotonic()
        b = h.get_body(cache.port, uri_of(d), timeout=PROMPT)
        took = time.monotonic() - t0
        expect_blob(b, d, len(data), "GET of the blob whose lock is dated an hour ahead")
        expect(took < PROMPT, "served after %.1f s" % took)
        expect_stored(cache, d, "the blob")

    run.check("a lock whose heartbeat is an hour in the future is taken over: the blob is "
              "served and stored", lock_from_the_future)

    # --- 3 -------------------------------------------------------------------------
    def takeover_of(d, size, tmp, what):
        """GETs blob d whose stale-soon lock names tmp; returns the body and the
        access-log lines of that request."""
        before = len(access_lines(cache, uri_of(d)))
        write_lock(root, d, tmp, size, age=STALE_SOON)
        b = h.get_body(cache.port, uri_of(d), timeout=30 * h.SCALE)
        h.wait_until(lambda: len(access_lines(cache, uri_of(d))) > before, h.LOG_TIMEOUT,
                     "the access-log line of %s" % what)
        return b, access_lines(cache, uri_of(d))[before]

    def takeover_unlinks_nothing_outside():
        data, d = new_blob(256 * KB)
        sentinel = work.sub("sentinel-outside")
        write_file(sentinel, os.urandom(len(data)))
        b, _ = takeover_of(d, len(data), sentinel, "the GET")
        expect(os.path.exists(sentinel), "the takeover removed the sentinel the lock named")
        expect_blob(b, d, len(data), "GET of the blob whose stale lock names a sentinel")
        expect_stored(cache, d, "the blob")

    run.check("a takeover never removes the path a lock names (a sentinel outside tmp)",
              takeover_unlinks_nothing_outside)

    def takeover_after_following_garbage():
        data, d = new_blob(512 * KB)
        sentinel = tmp_path(root, d)
        write_file(sentinel, os.urandom(len(data)))
        b, line = takeover_of(d, len(data), sentinel, "the GET")
        h.log("  client: %r; access log: status=%s error=%r" % (
            b, line.get("http.response.status"), line.get("error")))
        expect(not b.complete_wrong_200(d),
               "the client got a complete 200 with bytes that are not the blob's")
        expect(not (b.complete and b.status == 200),
               "a follower sent bytes of another file yet completed: %r" % b)
        expect(line.get("error") or line.get("incomplete") == "true",
               "the access-log line does not say the response was cut: %s" % line["_line"])
        expect(os.path.exists(sentinel), "the takeover removed the temporary file it followed")
        b2 = h.get_body(cache.port, uri_of(d), timeout=PROMPT)
        expect_blob(b2, d, len(data), "the next GET of the blob")

    run.check("a follower sent bytes that are not the blob's fails its client after the "
              "takeover (cut, logged), never a clean 200; the followed file stays",
              takeover_after_following_garbage)

    def takeover_after_following_the_blob():
        data, d = new_blob(512 * KB)
        sentinel = tmp_path(root, d)
        write_file(sentinel, data[:len(data) // 2])  # an honest replica's first half
        b, line = takeover_of(d, len(data), sentinel, "the GET")
        expect_blob(b, d, len(data), "GET that followed the blob's first half, then took over")
        expect(not line.get("error"), "the access-log line has an error: %s" % line["_line"])
        expect(os.path.exists(sentinel), "the takeover removed the temporary file it followed")
        expect(any("taking the fetch over" in line
                   for line in h.read_lines(cache.stderr_path)),
               "the cache does not say it took the fetch over")
        expect_stored(cache, d, "the blob")

    run.check("a follower sent the blob's own bytes completes after the takeover; the "
              "followed file stays", takeover_after_following_the_blob)

    # --- 4 -------------------------------------------------------------------------
    fifos = []

    def fifos_pin_no_worker():
        blobs = [new_blob(4 * KB + i) for i in range(FIFOS + 1)]
        for i, (data, d) in enumerate(blobs[:FIFOS]):
            path = lock_path(root, d) if i % 2 == 0 else cache.blob_file(d)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkfifo(path)
            fifos.append(path)
        results = [None] * FIFOS

        def client(i):
            results[i] = h.get_body(cache.port, uri_of(blobs[i][1]), timeout=30 * h.SCALE)

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(FIFOS)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # they are all in the cache by now
        cold_data, cold = blobs[FIFOS]
        t0 = time.monotonic()
        b = h.get_body(cache.port, uri_of(cold), timeout=PROMPT)
        took = time.monotonic() - t0
        h.log("  cold blob after %d FIFOs: %r in %.2f s" % (FIFOS, b, took))
        expect_blob(b, cold, len(cold_data), "the cold GET after the FIFOs")
        expect(took < PROMPT, "the cold GET took %.1f s" % took)
        for t in threads:
            t.join(PROMPT)
        expect(all(not t.is_alive() for t in threads), "GETs of the FIFOs' blobs still hang")
        for i, (data, d) in enumerate(blobs[:FIFOS]):
            expect_blob(results[i], d, len(data), "GET of blob %d (a FIFO as its %s)"
                        % (i, "lock" if i % 2 == 0 else "data file"))

    try:
        run.check("%d FIFOs as lock and data files pin no worker: a cold blob is served "
                  "promptly, and so are theirs" % FIFOS, fifos_pin_no_worker)
    finally:
        unblock_fifos(fifos)

    # --- 5 -------------------------------------------------------------------------
    def symlinked_data_not_served():
        data, d = new_blob(64 * KB)
        secret = os.urandom(100 * KB)
        key = work.sub("secret.key")
        write_file(key, secret)
        data_path = cache.blob_file(d)
        os.makedirs(os.path.dirname(data_path), exist_ok=True)
        os.symlink(key, data_path)
        b = h.get_body(cache.port, uri_of(d), keep=True, timeout=PROMPT)
        expect(secret[:4096] not in (b.data or b""), "the linked file was served")
        expect_blob(b, d, len(data), "GET of the blob whose data file is a link")
        with open(key, "rb") as f:
            expect(f.read() == secret, "the linked file was changed")
        expect_stored(cache, d, "the blob (the commit replaces the link)")

    run.check("a data file that is a symbolic link is not served; the blob is fetched and "
              "stored in its place", symlinked_data_not_served)

    def symlinked_blob_dir_not_served():
        data, d = new_blob(64 * KB)
        secret = os.urandom(100 * KB)
        elsewhere = work.sub("elsewhere", mkdir=True)
        write_file(os.path.join(elsewhere, "data"), secret)
        blob_dir = os.path.dirname(cache.blob_file(d))
        os.makedirs(os.path.dirname(blob_dir), exist_ok=True)
        os.symlink(elsewhere, blob_dir)
        b = h.get_body(cache.port, uri_of(d), keep=True, timeout=PROMPT)
        expect(secret[:4096] not in (b.data or b""), "the file behind the link was served")
        expect_blob(b, d, len(data), "GET of the blob whose directory is a link")
        time.sleep(0.5)  # the commit runs behind the response
        with open(os.path.join(elsewhere, "data"), "rb") as f:
            expect(f.read() == secret, "the commit wrote through the linked directory")

    run.check("a blob directory that is a symbolic link is not read, and nothing is "
              "written through it", symlinked_blob_dir_not_served)

    # --- 6 -------------------------------------------------------------------------
    start_fifos = []

    def starts_with_fifos():
        cache.stop()
        _, d1 = new_blob(8 * KB)
        data2, d2 = new_blob(8 * KB + 1)
        for path in (lock_path(root, d1), tmp_path(root, d1), cache.blob_file(d2)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkfifo(path)
            start_fifos.append(path)
        again = run.cache([origin], name="restarted", storage=root)
        expect(not os.path.exists(lock_path(root, d1)), "the FIFO lock was not cleaned up")
        expect(not os.path.exists(tmp_path(root, d1)), "the FIFO in tmp was not cleaned up")
        b = h.get_body(again.port, uri_of(d2), timeout=PROMPT)
        expect_blob(b, d2, len(data2), "GET of the blob whose data file was a FIFO")

    try:
        run.check("a cache starts with FIFOs as a lock, a temporary file and a data file, "
                  "and cleans them up", starts_with_fifos)
    finally:
        unblock_fifos(start_fifos)


if __name__ == "__main__":
    h.main("test_shared_root", body)
