"""End-to-end: what the loops of one process (workers: 2) decide about the store together.

- Eviction: a 16 MiB blob sent slowly to a client of loop 1 (a client that stops reading,
  so the response stays in flight) is not evicted when the disk budget must free room,
  though the evict policy (largest first) names it: loop 0's budget skips what any loop
  reads; the client then gets the blob whole.
- Expiry: the same with blobttl 2s: a blob read slowly on loop 1 for twice its TTL stays
  stored while it is read, and expires once its reader is gone.
- Admit: a blob whose fetch loop A started and loop B followed (its length unknown until
  the upstream's late GET answer), refused at that answer by an admit policy (by size),
  is stored by neither loop: loop B fetches it again for its clients without storing;
  every client gets it whole.

Which loop serves a connection is the kernel's choice (SO_REUSEPORT): a test that needs
loop 1 opens connections until /metrics (content_cache_loop_connections{loop}) shows one
there.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_workers_store.py
"""

import hashlib
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "loops/store"
MB = 1 << 20
BIG = 16 * MB      # more than the socket buffers hold: its sending stalls on a silent client
SMALL = 2 * MB


class SlowClient:
    """A GET on its own connection with a tiny receive buffer, that reads the response
    head and then nothing until finish(): the response stays in flight on its loop. With
    sock (a connection already open) and read_head=False, the GET is only sent: then
    read_head() and finish() read the answer."""

    def __init__(self, port, uri, sock=None, read_head=True):
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(h.HTTP_TIMEOUT)
            sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: cache\r\n\r\n" % uri).encode())
        if read_head:
            self.read_head()

    def read_head(self):
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(4096)
            if not more:
                raise AssertionError("the connection closed before a response head: %r" % data)
            data += more
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value.strip())

    def finish(self):
        """Reads the rest of the body; returns its digest ("sha256:...")."""
        sha = hashlib.sha256(self.body)
        got = len(self.body)
        while self.length is not None and got < self.length:
            more = self.sock.recv(1 << 20)
            if not more:
                break
            sha.update(more)
            got += len(more)
        self.close()
        expect_eq(got, self.length, "bytes of the slow client's body")
        return "sha256:" + sha.hexdigest()

    def close(self):
        self.sock.close()


def loop_connections(cache):
    m = cache.metrics()
    return [m.get('content_cache_loop_connections{loop="%d"}' % i, 0) for i in (0, 1)]


def placed_connections(cache, per_loop):
    """Idle connections, per_loop of them on each loop, as {0: [...], 1: [...]}: opened
    one at a time, each placed by the loop whose content_cache_loop_connections grew."""
    placed = {0: [], 1: []}
    for _ in range(20 * per_loop):
        if all(len(socks) >= per_loop for socks in placed.values()):
            return placed
        before = loop_connections(cache)
        sock = socket.create_connection(("127.0.0.1", cache.port), timeout=h.HTTP_TIMEOUT)
        after = h.wait_until(lambda: (lambda now: now if sum(now) == sum(before) + 1 else None)(
            loop_connections(cache)), h.LOG_TIMEOUT, "the new connection in /metrics")
        loop = 0 if after[0] > before[0] else 1
        if len(placed[loop]) < per_loop:
            placed[loop].append(sock)
        else:
            sock.close()
            h.wait_until(lambda: sum(loop_connections(cache)) == sum(before), h.LOG_TIMEOUT,
                         "the extra connection to close")
    raise AssertionError("%d connections and not %d on each loop" % (20 * per_loop, per_loop))


def slow_client_on_loop_1(cache, uri):
    """A SlowClient whose connection loop 1 serves (and the only one open)."""
    for _ in range(40):
        h.wait_until(lambda: loop_connections(cache) == [0, 0], h.LOG_TIMEOUT,
                     "no connection open")
        c = SlowClient(cache.port, uri)
        expect_eq(c.status, 200, "status of the slow GET")
        if loop_connections(cache) == [0, 1]:
            return c
        c.close()  # loop 0 took it: again, from another source port
    raise AssertionError("40 connections and none on loop 1")


def body(run):
    work = run.work
    origin = run.origin()
    big = os.urandom(BIG)
    d_big = origin.upload_blob(REPO, big)
    smalls = [os.urandom(SMALL + i) for i in range(3)]
    d_smalls = [origin.upload_blob(REPO, b) for b in smalls]

    def get(cache, digest, data):
        b = h.get_body(cache.port, "/v2/%s/blobs/%s" % (REPO, digest))
        expect(b.complete and b.status == 200, "GET %s: %r" % (digest[:19], b))
        expect_eq(b.sha256, digest, "digest of the body")

    def stored(cache, digest):
        return os.path.exists(cache.blob_file(digest))

    # --- Eviction: loop 0's budget, a reader on loop 1 ----------------------------------
    pol = work.sub("largest-first", mkdir=True)
    with open(os.path.join(pol, "50-largest-first.lua"), "w") as f:
        f.write(h.LARGEST_FIRST_EVICT)
    # 24 MiB, evicting above 90% (21.6 MiB) down to 60%: the big blob and three small
    # ones (22 MiB) pass the mark; largest first, the big one alone would do.
    budget = ("        diskbudget:\n          maxsize: %d\n          highwatermark: 90\n"
              "          lowwatermark: 60\n        policydir: %s\n" % (24 * MB, pol))
    evicting = run.cache([origin], name="evicting", workers=2, debug=True,
                         extra_downstream_yaml=budget)

    def reader_on_loop_1_not_evicted():
        get(evicting, d_big, big)
        h.wait_until(lambda: stored(evicting, d_big), h.LOG_TIMEOUT, "the big blob stored")
        slow = slow_client_on_loop_1(evicting, "/v2/%s/blobs/%s" % (REPO, d_big))
        try:
            for d, data in zip(d_smalls, smalls):
                get(evicting, d, data)
            h.wait_until(lambda: evicting.metrics().get("content_cache_evicted_blobs_total", 0)
                         >= 1, h.LOG_TIMEOUT, "an eviction")
            time.sleep(0.5)  # (an eviction that took the big blob would be done by now)
            h.log("  loop connections while the budget evicted: %r" % loop_connections(evicting))
            expect(stored(evicting, d_big), "the blob being sent on loop 1 was evicted")
            expect_eq(slow.finish(), d_big, "the slow client's digest")
        finally:
            slow.close()

    run.check("a blob sent on loop 1 is not evicted by loop 0's budget, though the policy "
              "names it", reader_on_loop_1_not_evicted)

    # --- Expiry: loop 0's sweeps, a reader on loop 1 ------------------------------------
    expiring = run.cache([origin], name="expiring", workers=2, debug=True, blobttl="2s")

    def reader_on_loop_1_not_expired():
        get(expiring, d_big, big)
        h.wait_until(lambda: stored(expiring, d_big), h.LOG_TIMEOUT, "the big blob stored")
        slow = slow_client_on_loop_1(expiring, "/v2/%s/blobs/%s" % (REPO, d_big))
        try:
            time.sleep(4.0)  # twice the TTL: sweeps every 0.5 s
            expect(stored(expiring, d_big), "the blob being sent on loop 1 expired under it")
            expect_eq(slow.finish(), d_big, "the slow client's digest")
        finally:
            slow.close()
        # Its reader gone, it expires as any blob.
        h.wait_until(lambda: not stored(expiring, d_big), 10 * h.SCALE,
                     "the blob to expire once it is not read")

    run.check("a blob read on loop 1 for twice its blobttl stays while it is read, then "
              "expires", reader_on_loop_1_not_expired)

    # --- Admit: refused on the loop that fetches, not stored by the loop that follows ----
    fake = FakeUpstream(work, name="late-origin").start()
    refused = os.urandom(SMALL)
    d_refused = h.sha256_digest(refused)
    path = work.sub("refused.bin")
    with open(path, "wb") as f:
        f.write(refused)
    # Its HEAD tells no length, so the admit policy decides at the GET's answer, which
    # comes 2 s late (6 s on a sanitizer build, whose 12 clients take longer to arrive):
    # the loops that asked meanwhile follow the first one's fetch.
    fake.set_blob(d_refused, path, head="unsized", delay=2.0 * h.SCALE)
    admit_dir = work.sub("admit", mkdir=True)
    with open(os.path.join(admit_dir, "80-admit-small.lua"), "w") as f:
        f.write("return { admit = function(blob, req)\n"
                "  return blob.size == nil or blob.size <= 100000\n"
                "end }\n")
    admitting = run.cache([fake.url], name="admitting", workers=2, debug=True,
                          extra_downstream_yaml="        policydir: %s\n" % admit_dir)

    def refused_blob_stored_by_no_loop():
        uri = "/v2/%s/blobs/%s" % (REPO, d_refused)
        # Six connections on each loop (the kernel's choice, seen in /metrics), so that
        # both loops have clients whatever the spread: one GET on loop 0 starts the fetch,
        # the others come while its answer is late.
        placed = placed_connections(admitting, 6)
        for sock in placed[0] + placed[1]:
            sock.settimeout(h.HTTP_TIMEOUT * 2 * h.SCALE)
        first = SlowClient(admitting.port, uri, sock=placed[0][0], read_head=False)
        h.wait_until(lambda: fake.count("GET", uri) >= 1, h.LOG_TIMEOUT,
                     "the first loop's fetch to ask the origin")
        clients = [first] + [SlowClient(admitting.port, uri, sock=sock, read_head=False)
                             for sock in placed[0][1:] + placed[1]]
        for i, c in enumerate(clients):
            c.read_head()
            expect_eq(c.status, 200, "client %d's status" % i)
            expect_eq(c.finish(), d_refused, "client %d's digest" % i)
        lines = h.read_lines(admitting.stderr_path)
        followed = sum(1 for ln in lines if "is being fetched on another loop" in ln)
        again = sum(1 for ln in lines if "is not to be stored (decided on the loop" in ln)
        gets = fake.count("GET", uri)
        h.log("  6 clients on each of 2 loops: %d followed another loop's fetch, %d fetched it "
              "again without storing; the origin answered %d GETs" % (followed, again, gets))
        expect_eq(followed, 1, "fetches that followed the other loop's")
        h.wait_until(lambda: admitting.metrics().get("content_cache_fetches_running") == 0,
                     h.LOG_TIMEOUT, "the fetches to end")
        expect(not stored(admitting, d_refused), "a loop stored the blob the admit policy "
               "refused")
        expect_eq(admitting.tmp_files(d_refused), {}, "temporary files of the refused blob")

    run.check("a blob the admit policy refuses while another loop follows its fetch is stored "
              "by neither loop", refused_blob_stored_by_no_loop)


if __name__ == "__main__":
    h.main("test_workers_store", body)
