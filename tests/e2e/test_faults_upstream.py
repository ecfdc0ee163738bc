"""End-to-end: an upstream that breaks the HTTP exchange itself (issue "Robustness").

The upstream is fake_upstream.py in its registry role, serving blobs and manifests with
a scripted fault (FAULTS in fake_upstream.py). For every fault the client must get a
registry error or a closed connection within a bounded time, never a complete 200 with
wrong bytes; nothing bad is stored and the temporary directory empties; and afterwards
the cache still serves a hit, a fresh miss and a manifest correctly.

  1. Blob GET faults (the HEAD that authorizes is honest): a reset and a hang-up
     mid-way, a status line that is not HTTP, a header without a colon, a 70 KiB
     header, a Content-Length shorter or longer than the body, an endless chunked body
     (the HEAD gave the size), a redirect to itself. Two clients join each fetch.
  2. Blob HEAD faults (the HEAD that authorizes breaks; the GET would be honest), and
     the consistent lies (HEAD and GET both announce a wrong length).
  3. Manifests (the relay path): a reset mid-body, a hang-up, the three malformed
     heads, the two wrong lengths (a shorter one must not leak its extra bytes into
     the client's connection, nor into the next upstream exchange), a redirect loop.
  4. An endless chunked body of a blob whose size nobody announced: a client that reads
     on is cut off after at most 256 MiB, and nothing is stored; when the only client
     leaves early, the fetch stops writing at once (the disk does not fill).
  5. Stalls, in parallel, under a no-progress timeout of 3 s (`upstreamtimeouts:
     progress: 3s`): a blob body stalled mid-way, a HEAD never answered, a manifest body
     stalled mid-way, and two blob bodies that never start: one of 2 MiB (its 200 head
     goes out at once, then the connection is cut) and one of 512 KiB (a clean 5xx).
     Each ends after the timeout, not before, and the log names it.
  6. The upstream refuses connections: a quick 502/503; served again once it is back.

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_faults_upstream.py
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_faults import (MB, blob_uri, expect_hit, expect_miss, expect_no_wrong_body,  # noqa
                        expect_not_stored, expect_serves, fresh_blob, parallel, partial_get,
                        stderr_lines, wait_tmp_empty)
from fake_upstream import LENGTH_LIE, FakeUpstream  # noqa: E402

REPO = "e2e/upfaults"
HIT_SIZE = 768 * 1024 + 3
MISS_SIZE = 256 * 1024 + 5
FAULT_SIZE = 1 * MB + 17
FAULT_RATE = 4e6                  # bytes/s: a mid-body fault comes after the head went out
CLIENTS = 2                       # clients joining each faulty fetch
FAULT_BOUND = 10.0 * h.SCALE      # seconds: the answer to a fault that is not a stall
UPSTREAM_IO_TIMEOUT = 3.0         # upstreamtimeouts.progress in the cache's config
UPSTREAM_HEAD_TIMEOUT = 5.0       # upstreamtimeouts.head: the final head within this
HEAD_BOUND = (UPSTREAM_HEAD_TIMEOUT + 5.0) * h.SCALE
STALL_BOUND = (UPSTREAM_IO_TIMEOUT + 7.0) * h.SCALE
REFUSED_BOUND = 5.0 * h.SCALE
EARLY_HEAD_MIN = 1024 * 1024      # a miss this large sends its head early (core/blob.c)
MANIFEST_PAD = 64 * 1024          # bytes of padding: a manifest long enough to cut mid-way
MANIFEST_RATE = 256 * 1024        # bytes/s for the manifest faults mid-body
UNSIZED_MAX = 256 * MB            # the most of a blob of unknown length (core/fetch.c)
ENDLESS_RATE = 64e6               # bytes/s of the endless body read to the cache's limit
ENDLESS_BOUND = (UNSIZED_MAX / ENDLESS_RATE + 10.0) * h.SCALE
LEAVER_RATE = 4e6                 # bytes/s of the endless body whose client leaves
LEAVER_READS = 1 * MB             # what that client reads before it goes
ENDLESS_STOP = 3.0 * h.SCALE      # seconds for the fetch to stop once its client is gone
ENDLESS_HOLD = 60.0 * h.SCALE     # the fake resets an endless body after this long

NO_HEAD_FAULTS = ("hangup", "garbage_status", "no_colon", "huge_header")
GET_FAULTS = ["reset_mid", "hangup", "garbage_status", "no_colon", "huge_header",
              "short_length", "long_length", "endless", "redirect_loop"]
HEAD_FAULTS = ["reset_mid", "hangup", "garbage_status", "no_colon", "huge_header",
               "redirect_loop"]
LIES = ["short_length", "long_length"]   # HEAD and GET both lie about the length
MANIFEST_FAULTS = ["reset_mid", "hangup", "garbage_status", "no_colon", "huge_header",
                   "long_length", "redirect_loop"]


def manifest_bytes(tag, config_digest):
    """An OCI manifest (its content does not matter to a relay), padded so that a fault
    can cut it in the middle."""
    doc = {"schemaVersion": 2, "mediaType": h.OCI_MANIFEST,
           "config": {"mediaType": h.OCI_CONFIG, "digest": config_digest, "size": HIT_SIZE},
           "layers": [],
           "annotations": {"org.example.e2e.tag": tag, "org.example.e2e.pad": "p" * MANIFEST_PAD}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def expect_ended_by_cache(b, bound, what):
    """The cache answered or closed: the client did not give up waiting."""
    expect(b.error is None or "timed out" not in b.error,
           "%s: the cache neither answered nor closed within the client's timeout: %r"
           % (what, b))
    expect(b.t_end <= bound, "%s: took %.1f s (bound %.1f s): %r" % (what, b.t_end, bound, b))


def expect_error_status(b, what):
    """A registry error from a failed upstream (a HEAD carries no body)."""
    expect(b.status in (502, 503, 504), "%s: expected 502/503/504, got %r" % (what, b))
    if b.content_length != 0 and b.data is not None and b.data:
        expect(b.error_codes(), "%s: %d without a registry error body: %r" % (what, b.status,
                                                                             b.data))


def summary(bodies):
    return "; ".join("%s %d/%s%s" % (b.status, b.received, b.content_length,
                                     " (%s)" % b.error if b.error else "") for b in bodies)


def body(run):
    work = run.work
    fake = FakeUpstream(work, name="fake-registry", role="registry").start()
    cache = run.cache([fake.url], extra_downstream_yaml="        upstreamtimeouts:\n"
                      "          progress: %ds\n          head: %ds\n"
                      % (UPSTREAM_IO_TIMEOUT, UPSTREAM_HEAD_TIMEOUT))
    accept = {"Accept": h.OCI_MANIFEST}

    hit_path, hit_d = fresh_blob(work, HIT_SIZE, "hit")
    stable = manifest_bytes("stable", hit_d)
    stable_path = work.sub("stable.json")
    with open(stable_path, "wb") as f:
        f.write(stable)

    def register_base():
        fake.set_blob(hit_d, hit_path)
        fake.set_manifest(REPO, "stable", stable_path)

    register_base()
    hit_uri = blob_uri(REPO, hit_d)

    def warm_up():
        expect_miss(cache, hit_uri, hit_d, HIT_SIZE, "the blob that later checks hit")
        expect_hit(cache, hit_uri, hit_d, HIT_SIZE)

    run.check("setup: a blob is fetched and stored, then hit", warm_up)

    def new_blob():
        path, d = fresh_blob(work, MISS_SIZE)
        fake.set_blob(d, path)
        return d, MISS_SIZE

    def still_serves(what):
        """After a fault: a hit, a fresh miss and a manifest, right; the store sound."""
        expect_serves(cache, REPO, (hit_d, HIT_SIZE), new_blob, what)
        r = h.request(cache.port, "GET", "/v2/%s/manifests/stable" % REPO, headers=accept)
        expect_eq(r.status, 200, "%s, then a manifest: status (%r)" % (what, r))
        expect_eq(r.body, stable, "%s, then a manifest: body" % what)

    def fetch_failed_line(d):
        lines = stderr_lines(cache, "fetch of blob %s failed" % d)
        return lines[-1].split("failed: ", 1)[-1] if lines else None

    # ---- 1. Blob GET faults --------------------------------------------------------
    def blob_get_fault(mode):
        path, d = fresh_blob(work, FAULT_SIZE)
        fake.set_blob(d, path, mode=mode, rate=FAULT_RATE, hold=FAULT_BOUND * 2)
        uri = blob_uri(REPO, d)
        bodies = parallel([lambda: h.get_body(cache.port, uri, timeout=FAULT_BOUND + 5)
                           for _ in range(CLIENTS)], timeout=(FAULT_BOUND + 5) * 2)
        h.log("  GET %s: %s" % (mode, summary(bodies)))
        for i, b in enumerate(bodies):
            what = "%s, client %d" % (mode, i + 1)
            expect_ended_by_cache(b, FAULT_BOUND, what)
            expect_no_wrong_body(b, d, what)
            if mode in NO_HEAD_FAULTS:
                # The upstream never said 200: a clean registry error, not a 200 cut
                # short (the blob is past the size whose head may go out early).
                expect_error_status(b, what)
        expect_not_stored(cache, d, mode)
        wait_tmp_empty(cache, mode)
        why = h.wait_until(lambda: fetch_failed_line(d), h.LOG_TIMEOUT,
                           "the cache's 'fetch of blob ... failed' line")
        h.log("  cache: %s" % why.rstrip('"'))
        still_serves(mode)

    for mode in GET_FAULTS:
        run.check("blob GET, upstream %s: error or cut within %.0f s, nothing stored, serves "
                  "on" % (mode, FAULT_BOUND), blob_get_fault, mode)

    # ---- 2. Blob HEAD faults, and lies told twice ----------------------------------
    def blob_head_fault(mode, lie=False):
        path, d = fresh_blob(work, FAULT_SIZE)
        fake.set_blob(d, path, mode=mode if lie else "honest", head=mode,
                      rate=FAULT_RATE, hold=FAULT_BOUND * 2)
        uri = blob_uri(REPO, d)
        got = h.get_body(cache.port, uri, timeout=FAULT_BOUND + 5)
        head = h.get_body(cache.port, uri, method="HEAD", timeout=FAULT_BOUND + 5)
        h.log("  HEAD %s: GET %s; HEAD %s %s" % (mode, summary([got]), head.status,
                                                 head.content_length))
        expect_ended_by_cache(got, FAULT_BOUND, "GET")
        expect_ended_by_cache(head, FAULT_BOUND, "HEAD")
        expect_no_wrong_body(got, d, "GET")
        if lie:
            # The cache cannot know that a consistent length is a lie before the bytes
            # are hashed: the HEAD may relay it.
            expect(head.status in (200, 502, 503), "HEAD: %r" % head)
        else:
            expect_error_status(got, "GET")
            expect_error_status(head, "HEAD")
        expect_not_stored(cache, d, mode)
        still_serves("HEAD " + mode)

    for mode in HEAD_FAULTS:
        run.check("blob HEAD, upstream %s: GET and HEAD get a 5xx registry error within "
                  "%.0f s, serves on" % (mode, FAULT_BOUND), blob_head_fault, mode)
    for mode in LIES:
        run.check("blob HEAD and GET both %s (a consistent lie): no complete 200, nothing "
                  "stored, serves on" % mode, blob_head_fault, mode, True)

    # ---- 3. Manifests: the relay ---------------------------------------------------
    def manifest_fault(mode):
        data = manifest_bytes("fault-" + mode, hit_d)
        path = work.sub("manifest-%s.json" % mode)
        with open(path, "wb") as f:
            f.write(data)
        fake.set_manifest(REPO, "fault-" + mode, path, mode=mode, rate=MANIFEST_RATE,
                          hold=FAULT_BOUND * 2)
        uri = "/v2/%s/manifests/fault-%s" % (REPO, mode)
        b = h.get_body(cache.port, uri, headers=accept, timeout=FAULT_BOUND + 5)
        h.log("  manifest %s: %s" % (mode, summary([b])))
        expect_ended_by_cache(b, FAULT_BOUND, "GET")
        expect_no_wrong_body(b, h.sha256_digest(data), "GET")
        if mode not in ("reset_mid", "long_length"):
            expect_error_status(b, "GET")
        still_serves("manifest " + mode)

    for mode in MANIFEST_FAULTS:
        run.check("manifest GET, upstream %s: error or cut within %.0f s, serves on"
                  % (mode, FAULT_BOUND), manifest_fault, mode)

    def manifest_short_length():
        # The upstream announces 1000 bytes less than it sends. A relay passes on what
        # was announced; the extra bytes must reach neither this client's connection
        # (a second request on it gets its own, right answer) nor the next request to
        # the upstream (its pooled connection is not reused).
        data = manifest_bytes("fault-short", hit_d)
        path = work.sub("manifest-short.json")
        with open(path, "wb") as f:
            f.write(data)
        fake.set_manifest(REPO, "fault-short", path, mode="short_length")
        with h.RawConnection(cache.port) as c:
            c.send_request("GET", "/v2/%s/manifests/fault-short" % REPO, headers=accept)
            r1 = c.read_response()
            c.send_request("GET", "/v2/%s/manifests/stable" % REPO, headers=accept)
            r2 = c.read_response()
        h.log("  manifest short_length: %d, %d of %d bytes; then %d, %d bytes" % (
            r1.status, len(r1.body), len(data), r2.status, len(r2.body)))
        expect_eq(r1.status, 200, "status")
        expect_eq(r1.body, data[:len(data) - LENGTH_LIE], "the relayed body: what was "
                  "announced, not a byte more")
        expect_eq((r2.status, r2.body), (200, stable), "the next response on the same "
                  "client connection")
        for i in range(3):
            r = h.request(cache.port, "GET", "/v2/%s/manifests/stable" % REPO, headers=accept)
            expect_eq((r.status, r.body), (200, stable), "manifest request %d after the "
                      "short one (the upstream connection with extra bytes was not reused)"
                      % (i + 1))
        still_serves("manifest short_length")

    run.check("manifest GET, upstream short_length: the announced bytes only; no leak into "
              "the client's next response nor the next upstream exchange; serves on",
              manifest_short_length)

    # ---- 4. An endless body of unknown length ---------------------------------------
    def endless_read_on():
        path, d = fresh_blob(work, FAULT_SIZE, "endless")
        fake.set_blob(d, path, mode="endless", head="unsized", rate=ENDLESS_RATE,
                      hold=ENDLESS_HOLD)
        b = h.get_body(cache.port, blob_uri(REPO, d), timeout=ENDLESS_BOUND + 5)
        h.log("  endless body, a client that reads on: %s after %.1f s" % (summary([b]),
                                                                            b.t_end))
        expect_ended_by_cache(b, ENDLESS_BOUND, "a client of an endless body")
        expect_no_wrong_body(b, d, "a client of an endless body")
        expect(b.received <= UNSIZED_MAX + MB, "the client got %d bytes of a blob of unknown "
               "length (the limit is %d)" % (b.received, UNSIZED_MAX))
        expect_not_stored(cache, d, "endless body")
        why = h.wait_until(lambda: fetch_failed_line(d), h.LOG_TIMEOUT,
                           "the cache's 'fetch of blob ... failed' line")
        h.log("  cache: %s" % why.rstrip('"'))
        still_serves("endless body, read on")

    run.check("endless body of unknown length, a client that reads on: cut after at most "
              "%d MiB within %.0f s, nothing stored, serves on" % (UNSIZED_MAX // MB,
                                                                   ENDLESS_BOUND),
              endless_read_on)

    def endless_client_leaves():
        path, d = fresh_blob(work, FAULT_SIZE, "endless-left")
        fake.set_blob(d, path, mode="endless", head="unsized", rate=LEAVER_RATE,
                      hold=ENDLESS_HOLD)
        status, got = partial_get(cache.port, blob_uri(REPO, d), LEAVER_READS, reset=False)
        left_at = time.monotonic()
        sizes = []

        def stopped():
            sizes.append(sum(cache.tmp_files(d).values()))
            return len(sizes) > 3 and sizes[-1] == sizes[-4]  # no growth for 3 polls

        try:
            h.wait_until(stopped, ENDLESS_STOP, "the fetch to stop writing")
        except h.WaitTimeout:
            raise AssertionError("the temporary file of a blob whose upstream never ends its "
                                 "body grew from %d to %d bytes in the %.0f s after its only "
                                 "client left: such a fetch fills the disk"
                                 % (sizes[0], sizes[-1], ENDLESS_STOP))
        h.log("  endless body, the client left after %d bytes (status %d): the temporary file "
              "stopped at %d bytes %.1f s later" % (got, status, sizes[-1],
                                                   time.monotonic() - left_at))
        wait_tmp_empty(cache, "after the client of an endless body left")
        expect_not_stored(cache, d, "endless body, client left")
        still_serves("endless body, client left")

    run.check("endless body of unknown length, its only client leaves: the fetch stops "
              "writing within %.0f s, the temporary file goes, serves on" % ENDLESS_STOP,
              endless_client_leaves)

    # ---- 5. Stalls, in parallel ------------------------------------------------------
    stall_path, stall_d = fresh_blob(work, FAULT_SIZE, "stall")
    head_path, head_d = fresh_blob(work, FAULT_SIZE, "stallhead")
    # A body that never starts: a blob of 1 MiB or more gets its head as soon as the
    # upstream's arrived; a smaller one waits for its first bytes (a clean error then).
    early_path, early_d = fresh_blob(work, EARLY_HEAD_MIN * 2, "stallbody-big")
    late_path, late_d = fresh_blob(work, EARLY_HEAD_MIN // 2, "stallbody-small")
    stall_manifest = manifest_bytes("stall", hit_d)
    stall_manifest_path = work.sub("manifest-stall.json")
    with open(stall_manifest_path, "wb") as f:
        f.write(stall_manifest)
    results = {}

    def stalls():
        fake.set_blob(stall_d, stall_path, mode="stall_mid", rate=FAULT_RATE,
                      hold=STALL_BOUND * 2)
        fake.set_blob(head_d, head_path, mode="honest", head="stall_head",
                      hold=STALL_BOUND * 2)
        fake.set_manifest(REPO, "stall", stall_manifest_path, mode="stall_mid",
                          rate=MANIFEST_RATE, hold=STALL_BOUND * 2)
        fake.set_blob(early_d, early_path, mode="stall_body", hold=STALL_BOUND * 2)
        fake.set_blob(late_d, late_path, mode="stall_body", hold=STALL_BOUND * 2)
        t = STALL_BOUND + 10
        jobs = {
            "blob body stalled": lambda: h.get_body(cache.port, blob_uri(REPO, stall_d),
                                                    timeout=t),
            "blob HEAD never answered": lambda: h.get_body(cache.port, blob_uri(REPO, head_d),
                                                           timeout=t),
            "manifest body stalled": lambda: h.get_body(
                cache.port, "/v2/%s/manifests/stall" % REPO, headers=accept, timeout=t),
            "2 MiB blob body never started": lambda: h.get_body(
                cache.port, blob_uri(REPO, early_d), timeout=t),
            "512 KiB blob body never started": lambda: h.get_body(
                cache.port, blob_uri(REPO, late_d), timeout=t),
        }
        names = list(jobs)
        results.update(zip(names, parallel([jobs[n] for n in names], timeout=t + 20)))
        for n in names:
            h.log("  %s: %s after %.1f s" % (n, summary([results[n]]), results[n].t_end))

    run.check("five stalls run (in parallel, about %.0f s)" % UPSTREAM_IO_TIMEOUT, stalls)

    def stalled(name, digest):
        b = results[name]
        expect_ended_by_cache(b, STALL_BOUND, name)
        expect(b.t_end >= UPSTREAM_IO_TIMEOUT - 0.2, "%s: ended after %.1f s, before the "
               "no-progress timeout of %.0f s: %r" % (name, b.t_end, UPSTREAM_IO_TIMEOUT, b))
        expect_no_wrong_body(b, digest, name)
        if name in ("blob HEAD never answered", "512 KiB blob body never started"):
            expect_error_status(b, name)
        if name == "2 MiB blob body never started":
            # The head went out before any byte of the body: 200 and the length, then
            # the connection cut short at the timeout.
            expect_eq((b.status, b.content_length, b.received, b.complete),
                      (200, EARLY_HEAD_MIN * 2, 0, False), "%s: %r" % (name, b))

    for name, digest in (("blob body stalled", stall_d), ("blob HEAD never answered", head_d),
                         ("manifest body stalled", h.sha256_digest(stall_manifest)),
                         ("2 MiB blob body never started", early_d),
                         ("512 KiB blob body never started", late_d)):
        run.check("%s: error or cut within the no-progress timeout (bound %.0f s)"
                  % (name, STALL_BOUND), stalled, name, digest)

    def stalls_logged():
        lines = (stderr_lines(cache, "nothing received for %ds" % UPSTREAM_IO_TIMEOUT) +
                 stderr_lines(cache, "no response within %ds" % UPSTREAM_IO_TIMEOUT))
        h.log("  %d log lines name the %ds timeout%s" % (len(lines), UPSTREAM_IO_TIMEOUT,
                                                         ": " + lines[0].strip() if lines else ""))
        expect(len(lines) >= 5, "the stalls' log lines do not name the configured timeout:\n"
               + h.tail(cache.stderr_path))

    run.check("the stalls' log lines name the configured %ds timeout" % UPSTREAM_IO_TIMEOUT,
              stalls_logged)

    def stalls_left_nothing():
        expect_not_stored(cache, stall_d, "blob body stalled")
        expect_not_stored(cache, head_d, "blob HEAD never answered")
        expect_not_stored(cache, early_d, "2 MiB blob body never started")
        expect_not_stored(cache, late_d, "512 KiB blob body never started")
        still_serves("stalls")

    run.check("after the stalls: nothing stored, serves on", stalls_left_nothing)

    # ---- 5b. Interim responses: a trickle that never ends, a flood ---------------------
    trickle_path, trickle_d = fresh_blob(work, FAULT_SIZE, "trickle")
    flood_path, flood_d = fresh_blob(work, FAULT_SIZE, "flood")
    trickle_manifest = manifest_bytes("trickle", hit_d)
    trickle_manifest_path = work.sub("manifest-trickle.json")
    with open(trickle_manifest_path, "wb") as f:
        f.write(trickle_manifest)

    def interim_trickle():
        # Every 2 s a 100 Continue: each restarts the no-progress timer (3 s), and 3 of them
        # stay under the interim limit, so only the deadline to the final head ends it.
        fake.set_blob(trickle_d, trickle_path, mode="honest", head="continue_forever",
                      hold=HEAD_BOUND * 2)
        fake.set_manifest(REPO, "trickle", trickle_manifest_path, mode="continue_forever",
                          hold=HEAD_BOUND * 2)
        t = HEAD_BOUND + 10
        bodies = parallel([
            lambda: h.get_body(cache.port, blob_uri(REPO, trickle_d), timeout=t),
            lambda: h.get_body(cache.port, "/v2/%s/manifests/trickle" % REPO, headers=accept,
                               timeout=t)], timeout=t + 20)
        for name, b in zip(("blob (its HEAD trickles)", "manifest"), bodies):
            h.log("  %s: %s after %.1f s" % (name, summary([b]), b.t_end))
            expect_ended_by_cache(b, HEAD_BOUND, name)
            expect(b.t_end >= UPSTREAM_HEAD_TIMEOUT - 0.2,
                   "%s: ended after %.1f s, before the head deadline" % (name, b.t_end))
            expect_error_status(b, name)
        lines = stderr_lines(cache, "no final response head within %ds" % UPSTREAM_HEAD_TIMEOUT)
        expect(len(lines) >= 2, "no log line names the head deadline:\n" +
               h.tail(cache.stderr_path))
        expect_not_stored(cache, trickle_d, "interim trickle")

    run.check("an upstream that sends 100 Continue every 2 s forever: a clean 5xx at the "
              "head deadline (%ds), blob and manifest" % UPSTREAM_HEAD_TIMEOUT, interim_trickle)

    def interim_flood():
        fake.set_blob(flood_d, flood_path, mode="continue_flood")
        b = h.get_body(cache.port, blob_uri(REPO, flood_d), timeout=FAULT_BOUND + 10)
        h.log("  20 interim responses: %s after %.1f s" % (summary([b]), b.t_end))
        expect_ended_by_cache(b, FAULT_BOUND, "interim flood")
        expect_error_status(b, "interim flood")
        expect(stderr_lines(cache, "more than 8 interim (1xx) responses"),
               "no log line names the interim responses:\n" + h.tail(cache.stderr_path))
        expect_not_stored(cache, flood_d, "interim flood")
        still_serves("interim responses")

    run.check("an upstream that sends 20 interim responses before its answer: a clean 5xx, "
              "the log names them", interim_flood)

    # ---- 6. The upstream refuses connections ----------------------------------------
    refused_path, refused_d = fresh_blob(work, FAULT_SIZE, "refused")

    def refused():
        port = fake.port
        fake.stop()
        expect(not h.port_open(port), "the fake still answers on %d" % port)
        for method in ("GET", "HEAD"):
            b = h.get_body(cache.port, blob_uri(REPO, refused_d), method=method,
                           timeout=REFUSED_BOUND + 5)
            h.log("  %s with the upstream refusing: %s in %.2f s" % (method, b.status, b.t_end))
            expect_ended_by_cache(b, REFUSED_BOUND, method)
            expect_error_status(b, method)
        b = h.get_body(cache.port, "/v2/%s/manifests/stable" % REPO, headers=accept,
                       timeout=REFUSED_BOUND + 5)
        expect_ended_by_cache(b, REFUSED_BOUND, "manifest GET")
        expect_error_status(b, "manifest GET")
        expect_not_stored(cache, refused_d, "refused")
        try:
            fake.start(port=port)
        except h.ServerStartError:
            if "already in use" not in h.tail(fake.log_path):
                raise
            h.log("  NOTE: port %d was taken meanwhile by another process: the recovery "
                  "part of this check was not run" % port)
            return
        register_base()
        still_serves("refused connections")

    run.check("upstream refuses connections: 502/503 within %.0f s for GET, HEAD and a "
              "manifest; serves again once it is back" % REFUSED_BOUND, refused)
    fake.stop()


if __name__ == "__main__":
    h.main("faults_upstream", body)
