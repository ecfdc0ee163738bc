"""End-to-end: the blob cache when things go wrong (README.md, Storage).

The upstream is fake_upstream.py in its registry role: it serves the blobs the test
gives it, honestly or not, at a pace the test sets. Checked:

  1. A lying upstream (a short body; wrong bytes of the right length, in the middle or
     the last byte; more bytes than announced, chunked or with a bigger Content-Length):
     4 concurrent clients never get a complete 200 with wrong bytes, nothing is stored,
     the temporary directory is empty; once the upstream is honest, the next GET gets
     the right bytes and stores them.
  2. kill -9 of the cache in the middle of a 200 MB fetch; restarted on the same root,
     it removes the temporary file (and says so); a GET then gets the right bytes.
  3. A full disk (an 8 MB tmpfs as the root; needs root, else skipped): a 20 MB blob
     is passed through whole to its clients, one log line says it cannot be stored,
     nothing half-written stays, the hit stored before is still a hit. A 416 for the
     same blob during such a fetch disturbs nobody.
  4. The upstream gone: a GET of an uncached blob gets a quick 502/503 naming the
     upstream; the cache serves on, and again once the upstream is back.

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_blob_faults.py
"""

import hashlib
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402

REPO = "e2e/faults"
MB = 1 << 20
LIE_SIZE = 3 * MB + 333
LIE_RATE = 6e6                 # bytes/s: the 4 clients join one fetch
LIE_CLIENTS = 4
LIES = ["short", "wrong", "wrong_last", "long", "bad_length", "unsized_wrong"]
UNSIZED_SIZE = 2 * MB + 5
KILL_SIZE = 200 * MB + 5
KILL_RATE = 50e6
KILL_AT = 40 * MB              # kill -9 once the temporary file holds this much
TMPFS_SIZE = "8m"
SMALL_SIZE = 512 * 1024 + 7
BIG_SIZE = 20 * MB + 11
SLOW_FULL_RATE = 4e6           # the 416-during-a-full-disk check
UNREACHABLE_LIMIT = 15.0       # seconds for the error when the upstream is gone


def write_blob(work, name, size, seed):
    """Writes `size` deterministic pseudo-random bytes to a file; returns (path, digest)."""
    path = work.sub(name)
    rnd = random.Random(seed)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 * MB)
            data = rnd.randbytes(n)
            sha.update(data)
            f.write(data)
            left -= n
    return path, "sha256:" + sha.hexdigest()


def blob_uri(digest):
    return "/v2/%s/blobs/%s" % (REPO, digest)


def expect_whole(body, digest, size, what):
    expect_eq(body.status, 200, "%s: status (%r)" % (what, body))
    expect_eq(body.content_length, size, "%s: Content-Length" % what)
    expect(body.complete, "%s: body incomplete: %r" % (what, body))
    expect_eq(body.sha256, digest, "%s: sha256 of the body" % what)


def expect_stored(cache, digest, what):
    """The blob is at its final path (bounded wait: the rename may trail the last byte)
    and its bytes are right."""
    path = cache.blob_file(digest)
    try:
        h.wait_until(lambda: os.path.isfile(path), h.LOG_TIMEOUT, "%s to be stored" % digest)
    except h.WaitTimeout:
        raise AssertionError("%s: nothing stored at %s" % (what, path))
    expect_eq(h.sha256_file(path), digest, "%s: sha256 of the stored file" % what)


def expect_not_stored(cache, digest, what):
    path = cache.blob_file(digest)
    expect(not os.path.exists(path), "%s: a file was stored at %s" % (what, path))


def wait_tmp_empty(cache, what):
    """The temporary directory empties (unlinks run on the thread pool): bounded wait."""
    try:
        h.wait_until(lambda: not os.listdir(cache.tmp_dir), h.LOG_TIMEOUT,
                     "%s's temporary directory to be empty" % cache.name)
    except h.WaitTimeout:
        raise AssertionError("%s: files left in %s: %r" % (what, cache.tmp_dir,
                                                           cache.tmp_files()))


def access(cache, method, uri):
    return [e for e in cache.access_lines()
            if e.get("http.request.method") == method and e.get("http.request.uri") == uri]


def stderr_lines(cache, needle):
    return [ln for ln in h.read_lines(cache.stderr_path) if needle in ln]


def expect_no_wrong_body(b, digest, what):
    """What a client may get from a lying upstream: a clean error, or a 200 cut short."""
    expect(not b.complete_wrong_200(digest),
           "%s: a complete 200 with wrong bytes: %r" % (what, b))
    if b.status == 200 and b.content_length is None:
        expect(not b.complete, "%s: a complete chunked 200 (its last chunk came) from a "
               "lying upstream: %r" % (what, b))
    elif b.status == 200:
        expect(b.received < b.content_length,
               "%s: a complete 200 from a lying upstream: %r" % (what, b))
    else:
        expect(b.status is not None, "%s: no response at all: %r" % (what, b))
        expect(500 <= b.status <= 599, "%s: status %s for a failed fetch (%r)" % (
            what, b.status, b))
        expect(b.error_codes(), "%s: %d without a registry error body: %r" % (
            what, b.status, b.data))


def body(run):
    work = run.work
    fake = FakeUpstream(work, name="fake-registry", role="registry").start()
    cache = run.cache([fake.url])

    # ---- 1. A lying upstream -----------------------------------------------------------
    lie_path, lie_d = write_blob(work, "lie.bin", LIE_SIZE, 7)
    lie_uri = blob_uri(lie_d)

    def lying(mode):
        fake.set_blob(lie_d, lie_path, mode=mode, rate=LIE_RATE)
        gets_before = fake.count("GET", lie_uri)
        fails_before = len(stderr_lines(cache, "fetch of blob %s failed" % lie_d))
        lines_before = len(access(cache, "GET", lie_uri))
        bound = (LIE_SIZE / LIE_RATE * 3 + h.HTTP_TIMEOUT) * h.SCALE
        bodies = h.parallel([lambda: h.get_body(cache.port, lie_uri, timeout=bound)
                           for _ in range(LIE_CLIENTS)], timeout=bound * 2)
        h.log("  %s: %s" % (mode, "; ".join(
            "%s %d/%s" % (b.status, b.received, b.content_length) for b in bodies)))
        for i, b in enumerate(bodies):
            expect_no_wrong_body(b, lie_d, "%s, client %d" % (mode, i + 1))
        expect(fake.count("GET", lie_uri) > gets_before, "the upstream was not asked")
        expect_not_stored(cache, lie_d, mode)
        wait_tmp_empty(cache, mode)
        fails = h.wait_for_count(
            lambda: len(stderr_lines(cache, "fetch of blob %s failed" % lie_d)),
            fails_before + 1, what="the cache's log line for the failed fetch")
        expect(fails > fails_before, "no 'fetch of blob ... failed' line")
        h.wait_until(lambda: len(access(cache, "GET", lie_uri)) >= lines_before + LIE_CLIENTS,
                     h.LOG_TIMEOUT, "the access-log lines of the %d clients" % LIE_CLIENTS)
        lines = access(cache, "GET", lie_uri)[lines_before:]
        for e in lines:
            # A response cut short says so: incomplete=true, or at least its error.
            complete = (str(e.get("http.response.status")) == "200"
                        and str(e.get("http.response.written")) == str(LIE_SIZE)
                        and e.get("incomplete") != "true" and not e.get("error"))
            expect(not complete, "%s: logged as a complete 200: %s" % (mode, e["_line"]))

    for mode in LIES:
        run.check("lying upstream (%s): 4 clients, no complete 200 with wrong bytes, nothing "
                  "stored, tmp empty" % mode, lying, mode)

    def honest_again():
        fake.set_blob(lie_d, lie_path, mode="honest", rate=0)
        before = len(access(cache, "GET", lie_uri))
        b = h.get_body(cache.port, lie_uri)
        expect_whole(b, lie_d, LIE_SIZE, "GET once the upstream is honest")
        expect_stored(cache, lie_d, "once the upstream is honest")
        wait_tmp_empty(cache, "once the upstream is honest")
        h.wait_until(lambda: len(access(cache, "GET", lie_uri)) > before, h.LOG_TIMEOUT,
                     "the access-log line")
        expect_eq(access(cache, "GET", lie_uri)[before].get("cache"), "miss",
                  "cache field of the first honest GET (the lies left nothing behind)")
        b = h.get_body(cache.port, lie_uri)
        expect_whole(b, lie_d, LIE_SIZE, "the next GET")
        h.wait_until(lambda: len(access(cache, "GET", lie_uri)) > before + 1, h.LOG_TIMEOUT,
                     "the access-log line")
        expect_eq(access(cache, "GET", lie_uri)[before + 1].get("cache"), "hit",
                  "cache field of the next GET")

    run.check("the same digest from an honest upstream: right bytes, stored, then a hit",
              honest_again)

    unsized_path, unsized_d = write_blob(work, "unsized.bin", UNSIZED_SIZE, 12)

    def unsized_honest():
        # No size from the upstream's HEAD, a chunked GET: the size is known at the end.
        fake.set_blob(unsized_d, unsized_path, mode="unsized", rate=LIE_RATE)
        uri = blob_uri(unsized_d)
        bound = (UNSIZED_SIZE / LIE_RATE * 3 + h.HTTP_TIMEOUT) * h.SCALE
        bodies = h.parallel([lambda: h.get_body(cache.port, uri, timeout=bound)
                           for _ in range(2)], timeout=bound * 2)
        for i, b in enumerate(bodies):
            expect_eq(b.status, 200, "client %d: status (%r)" % (i + 1, b))
            expect(b.complete, "client %d: incomplete body %r" % (i + 1, b))
            expect_eq(b.sha256, unsized_d, "client %d: sha256 of the body" % (i + 1))
        expect_stored(cache, unsized_d, "a blob of unannounced size")
        b = h.get_body(cache.port, uri)
        expect_whole(b, unsized_d, UNSIZED_SIZE, "the stored blob of unannounced size")

    run.check("an honest upstream that gives no size (HEAD without Content-Length, chunked "
              "GET): right bytes for 2 clients, stored", unsized_honest)

    # A response completes only after the digest matched, whatever its range and whatever
    # the client's HTTP version (the fetch holds back only the blob's last byte, so a
    # range ending before it, or an HTTP/1.0 body that ends with the connection, could
    # complete with bytes of a blob that turns out wrong).
    range_path, range_d = write_blob(work, "range.bin", LIE_SIZE, 13)
    range_uri = blob_uri(range_d)

    def range_on_a_lie():
        fake.set_blob(range_d, range_path, mode="wrong", rate=LIE_RATE)
        lines_before = len(access(cache, "GET", range_uri))
        bound = (LIE_SIZE / LIE_RATE * 3 + h.HTTP_TIMEOUT) * h.SCALE
        b = h.get_body(cache.port, range_uri, headers={"Range": "bytes=0-99"}, timeout=bound)
        h.log("  Range bytes=0-99 of a wrong blob: %r" % b)
        expect(not (b.status == 206 and b.complete),
               "a complete 206 before the digest was checked (it did not match): %r" % b)
        expect_not_stored(cache, range_d, "the wrong blob")
        h.wait_until(lambda: len(access(cache, "GET", range_uri)) > lines_before,
                     h.LOG_TIMEOUT, "the access-log line")
        e = access(cache, "GET", range_uri)[lines_before]
        expect(e.get("incomplete") == "true" or str(e.get("http.response.status")) != "206",
               "logged as a clean 206: %s" % e["_line"])

    run.check("Range bytes=0-99 on a miss from a lying upstream: never a complete 206, the "
              "log says incomplete", range_on_a_lie)

    def range_honest():
        fake.set_blob(range_d, range_path, mode="honest", rate=LIE_RATE)
        b = h.get_body(cache.port, range_uri, headers={"Range": "bytes=0-99"}, keep=True)
        expect_eq(b.status, 206, "status (%r)" % b)
        expect(b.complete, "incomplete: %r" % b)
        with open(range_path, "rb") as f:
            expect_eq(b.data, f.read(100), "the first 100 bytes")
        expect_stored(cache, range_d, "after the ranged miss")

    run.check("Range bytes=0-99 on a miss from an honest upstream: a complete 206 once the "
              "blob is verified", range_honest)

    old_path, old_d = write_blob(work, "http10.bin", UNSIZED_SIZE, 14)
    old_uri = blob_uri(old_d)

    def http10_unsized_lie():
        fake.set_blob(old_d, old_path, mode="unsized_wrong", rate=LIE_RATE)
        bound = (UNSIZED_SIZE / LIE_RATE * 3 + h.HTTP_TIMEOUT) * h.SCALE
        b = h.get_body(cache.port, old_uri, timeout=bound, http10=True)
        h.log("  HTTP/1.0, a wrong blob of unannounced size: %r" % b)
        expect_no_wrong_body(b, old_d, "HTTP/1.0 client")
        expect(b.status is not None and b.status >= 500,
               "an HTTP/1.0 client of a failed fetch of unknown size gets a clean error: %r" % b)
        expect_not_stored(cache, old_d, "the wrong blob")

    run.check("HTTP/1.0 client, lying upstream that gives no size: a clean 5xx, never a body "
              "that only looks whole", http10_unsized_lie)

    def http10_unsized_honest():
        fake.set_blob(old_d, old_path, mode="unsized", rate=LIE_RATE)
        b = h.get_body(cache.port, old_uri, http10=True)
        expect_whole(b, old_d, UNSIZED_SIZE, "HTTP/1.0 client of a blob of unannounced size")

    run.check("HTTP/1.0 client, honest upstream that gives no size: the verified blob with "
              "its Content-Length", http10_unsized_honest)

    # ---- 2. kill -9 in the middle of a fetch --------------------------------------------
    kill_path, kill_d = write_blob(work, "kill.bin", KILL_SIZE, 8)
    kill_uri = blob_uri(kill_d)

    def kill_mid_fetch():
        fake.set_blob(kill_d, kill_path, mode="honest", rate=KILL_RATE)
        victim = run.cache([fake.url], name="cache-killed")
        bound = (KILL_SIZE / KILL_RATE * 3 + h.HTTP_TIMEOUT) * h.SCALE
        client = h.background(lambda: h.get_body(victim.port, kill_uri, timeout=bound))
        h.wait_until(lambda: sum(victim.tmp_files(kill_d).values()) >= KILL_AT, bound,
                     "the temporary file to hold %d bytes" % KILL_AT)
        code = victim.kill()
        expect_eq(code, -9, "exit of the killed cache")
        b = client(bound)
        h.log("  killed at %d bytes in the temporary file; the client had %d of %s" % (
            sum(victim.tmp_files(kill_d).values()), b.received, b.content_length))
        expect(not b.complete, "the client got a complete body from a killed cache: %r" % b)
        left = victim.tmp_files()
        expect_eq(len(left), 1, "temporary files the crash left (%r)" % left)
        expect_not_stored(victim, kill_d, "after kill -9")

        fake.set_blob(kill_d, kill_path, mode="honest", rate=0)
        again = run.cache([fake.url], name="cache-restarted", storage=victim.storage)
        line = h.wait_until(lambda: stderr_lines(again, "removed 1 unfinished temporary blob "
                                                         "files"),
                            h.LOG_TIMEOUT, "the restarted cache's log line about the "
                            "temporary file")
        h.log("  restarted cache: %s" % line[0])
        expect_eq(again.tmp_files(), {}, "temporary files after the restart")
        expect_not_stored(again, kill_d, "after the restart, before any GET")
        b = h.get_body(again.port, kill_uri, timeout=bound)
        expect_whole(b, kill_d, KILL_SIZE, "GET after the restart")
        expect_stored(again, kill_d, "after the GET that followed the restart")
        wait_tmp_empty(again, "after the GET that followed the restart")

    run.check("kill -9 mid-fetch (200 MB): restart removes the temporary file and says so; "
              "the next GET gets the right bytes and stores them", kill_mid_fetch)

    # ---- 3. A full disk -----------------------------------------------------------------
    small_path, small_d = write_blob(work, "small.bin", SMALL_SIZE, 9)
    big_path, big_d = write_blob(work, "big.bin", BIG_SIZE, 10)
    mount_point = work.sub("tmpfs-root", mkdir=True)
    mounted = False
    why = None
    if os.geteuid() != 0:
        why = "not root: cannot mount a tmpfs"
    else:
        cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % TMPFS_SIZE, "tmpfs",
                             mount_point], capture_output=True, text=True, timeout=30)
        mounted = cp.returncode == 0
        if not mounted:
            why = "mount -t tmpfs failed: %s" % (cp.stderr.strip() or cp.returncode)
    full = None
    try:
        if not mounted:
            for name in ("full disk: a 20 MB blob passes through whole; one log line; nothing "
                         "half-written; hits still served",
                         "full disk: a 416 for the blob during its fetch disturbs nobody"):
                run.skip(name, why)
        else:
            full = run.cache([fake.url], name="cache-full", storage=mount_point)
            fake.set_blob(small_d, small_path, mode="honest", rate=0)
            fake.set_blob(big_d, big_path, mode="honest", rate=0)

            def full_disk():
                small_uri, big_uri = blob_uri(small_d), blob_uri(big_d)
                expect_whole(h.get_body(full.port, small_uri), small_d, SMALL_SIZE,
                             "the small blob")
                expect_stored(full, small_d, "the small blob")
                bound = h.HTTP_TIMEOUT * 3
                bodies = h.parallel([lambda: h.get_body(full.port, big_uri, timeout=bound)
                                   for _ in range(2)], timeout=bound * 2)
                for i, b in enumerate(bodies):
                    expect_whole(b, big_d, BIG_SIZE, "big blob on a full disk, client %d"
                                 % (i + 1))
                b = h.get_body(full.port, big_uri, timeout=bound)
                expect_whole(b, big_d, BIG_SIZE, "big blob on a full disk, again")
                fetches = fake.count("GET", big_uri)
                said = stderr_lines(full, "cannot store blob %s" % big_d)
                expect(said, "no 'cannot store blob %s' line in the cache's log:\n%s"
                       % (big_d, h.tail(full.stderr_path)))
                h.log("  %d fetches, log: %s" % (fetches, said[0]))
                expect(len(said) <= fetches, "%d 'cannot store' lines for %d fetches: one per "
                       "fetch, not one per write" % (len(said), fetches))
                expect(mount_point in said[0], "the line does not name the storage root")
                expect_not_stored(full, big_d, "big blob on a full disk")
                wait_tmp_empty(full, "full disk")
                leftovers = []
                for dirpath, _, files in os.walk(mount_point):
                    for f in files:
                        p = os.path.join(dirpath, f)
                        # (repositories/<name>/_layers/... is the registry's record that
                        # the origin has the blob in that repository, not its bytes.)
                        if big_d.split(":")[1] in p and "/repositories/" not in p:
                            leftovers.append(p)
                expect_eq(leftovers, [], "files of the big blob under the root")
                before = len(access(full, "GET", small_uri))
                expect_whole(h.get_body(full.port, small_uri), small_d, SMALL_SIZE,
                             "the small blob after the full disk")
                h.wait_until(lambda: len(access(full, "GET", small_uri)) > before,
                             h.LOG_TIMEOUT, "the access-log line")
                expect_eq(access(full, "GET", small_uri)[before].get("cache"), "hit",
                          "the small blob after the full disk")

            run.check("full disk: a 20 MB blob passes through whole; one log line; nothing "
                      "half-written; hits still served", full_disk)

            def range_416_during_full_fetch():
                big_uri = blob_uri(big_d)
                fake.set_blob(big_d, big_path, mode="honest", rate=SLOW_FULL_RATE)
                bound = (BIG_SIZE / SLOW_FULL_RATE * 3 + h.HTTP_TIMEOUT) * h.SCALE
                wait_tmp_empty(full, "before")
                client = h.background(lambda: h.get_body(full.port, big_uri, timeout=bound))
                h.wait_until(lambda: sum(full.tmp_files(big_d).values()) >= MB, bound,
                             "the fetch to begin writing")
                r = h.get_body(full.port, big_uri, headers={"Range": "bytes=%d-" % BIG_SIZE})
                expect_eq(r.status, 416, "a range past the end during the fetch (%r)" % r)
                expect(full.tmp_files(big_d), "the disk filled before the 416: the check "
                       "did not test what it means to")
                b = client(bound)
                expect_whole(b, big_d, BIG_SIZE, "the client whose fetch ran out of disk "
                             "after a 416 for the same blob")
                wait_tmp_empty(full, "after")

            run.check("full disk: a 416 for the blob during its fetch disturbs nobody "
                      "(the fetching client still gets every byte)",
                      range_416_during_full_fetch)

            def full_stops_cleanly():
                code = full.stop()
                expect(not full.proc.killed, "the cache did not exit on SIGTERM")
                expect_eq(code, 0, "exit code on SIGTERM")

            run.check("cache-full stops cleanly (before the tmpfs is unmounted)",
                      full_stops_cleanly)
    finally:
        if full is not None and full.alive():
            full.stop()
        if mounted:
            cp = subprocess.run(["umount", mount_point], capture_output=True, text=True,
                                timeout=30)
            if cp.returncode != 0:
                h.log("umount %s failed (%s): lazy unmount" % (mount_point, cp.stderr.strip()))
                subprocess.run(["umount", "-l", mount_point], timeout=30)

    # ---- 4. The upstream gone -------------------------------------------------------------
    gone_path, gone_d = write_blob(work, "gone.bin", 1 * MB + 3, 11)
    gone_uri = blob_uri(gone_d)

    def upstream_gone():
        port = fake.port
        fake.stop()
        expect(not h.port_open(port), "the fake still answers on %d" % port)
        for method in ("GET", "HEAD"):
            t0 = time.monotonic()
            b = h.get_body(cache.port, gone_uri, method=method, timeout=UNREACHABLE_LIMIT + 5)
            took = time.monotonic() - t0
            h.log("  %s with the upstream gone: %s in %.3f s: %r" % (
                method, b.status, took, (b.data or b"")[:200]))
            expect(b.status in (502, 503), "%s: status %s (expected 502/503): %r" % (
                method, b.status, b))
            expect(took < UNREACHABLE_LIMIT, "%s: the error took %.1f s" % (method, took))
            if method == "GET":
                expect(b.error_codes(), "no registry error body: %r" % b.data)
                expect(("127.0.0.1:%d" % port).encode() in (b.data or b""),
                       "the error does not name the upstream 127.0.0.1:%d: %r" % (port, b.data))
        expect_not_stored(cache, gone_d, "with the upstream gone")
        r = h.request(cache.port, "GET", "/v2/")
        expect(r.status in (200, 401, 502, 503), "GET /v2/ with the upstream gone: %r" % r)
        # The upstream comes back where the cache expects it (if nothing took its port).
        try:
            fake.start(port=port)
        except h.ServerStartError as e:
            if "already in use" not in str(e) and "already in use" not in h.tail(fake.log_path):
                raise
            h.log("  NOTE: port %d was taken meanwhile by another process: the recovery "
                  "part of this check was not run" % port)
            fake.start()
            return
        fake.set_blob(gone_d, gone_path, mode="honest", rate=0)
        b = h.get_body(cache.port, gone_uri)
        expect_whole(b, gone_d, 1 * MB + 3, "GET once the upstream is back")
        expect_stored(cache, gone_d, "once the upstream is back")
        fake.set_blob(lie_d, lie_path, mode="honest", rate=0)
        expect_whole(h.get_body(cache.port, lie_uri), lie_d, LIE_SIZE,
                     "the blob stored earlier, once the upstream is back")

    run.check("upstream gone: quick 502/503 naming it, the cache serves on and recovers when "
              "it is back", upstream_gone)

    def tmp_empty_at_end():
        for c in run.caches:
            if os.path.isdir(c.tmp_dir):
                expect_eq(h.settle(lambda c=c: sorted(os.listdir(c.tmp_dir))), [],
                          "files left in %s's temporary directory" % c.name)

    run.check("no files left in any temporary directory", tmp_empty_at_end)
    fake.stop()


if __name__ == "__main__":
    h.main("blob_faults", body)
