"""End-to-end: clients that misbehave (issue "Robustness").

The upstream is fake_upstream.py (registry role), which serves blobs at a pace the test
sets. After every fault the cache must still serve a hit and a fresh miss correctly,
store nothing bad, and hold no more file descriptors than before (give or take its
pool of idle upstream connections and its cache of open blob descriptors).

  1. Disconnects at every stage: during the request headers; after the headers, before
     the response; in the middle of a hit's body; in the middle of a miss's body; and
     during a coalesced miss, while two other clients of the same fetch go on and must
     get every byte. Each with a plain close and with a reset. Every exchange that began
     is logged once (none is left hanging).
  2. 1,000 slowloris connections, each sending a header byte about every second: the
     cache serves hits and misses meanwhile, and closes every one of them once the 10 s
     header timeout has passed.
  3. 10,000 idle connections, first connected and silent (closed by the header timeout),
     then each after one complete keep-alive request (kept: the idle timeout is 60 s):
     the cache serves meanwhile; its RSS before, with them and after is reported.
  4. The file-descriptor limit: a cache started with RLIMIT_NOFILE 256 (soft and hard,
     so that it cannot raise it) gets more connections than it can hold: the excess is
     closed (not left hanging), the cache does not spin, and once they are gone it
     serves again.

Needs a file-descriptor limit of its own of about 10,300 (raised up to the hard limit at
start; the 10,000- and 1,000-connection parts are skipped, and say so, when the hard
limit is too low for them).

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_faults_client.py
"""

import http.client
import os
import re
import selectors
import shlex
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_faults import (MB, access, blob_uri, close_socket, expect_hit,  # noqa: E402
                        expect_serves, expect_stored, expect_whole, fd_count, fd_kinds,
                        fresh_blob,
                        parallel, partial_get, raise_nofile, request_bytes, rss_kib,
                        stderr_lines, wait_tmp_empty)
from fake_upstream import FakeUpstream  # noqa: E402

REPO = "e2e/clientfaults"
HIT_SIZE = 16 * MB + 3
MISS_SIZE = 256 * 1024 + 9
SLOW_SIZE = 8 * MB + 11
SLOW_RATE = 4e6                   # bytes/s: a miss that lasts about 2 s
DISCONNECTS = 10                  # connections per disconnect variant
HEADER_TIMEOUT = 10.0             # the cache's request-header timeout (core/server.c)
IDLE_TIMEOUT = 60.0               # its keep-alive idle timeout
SLOWLORIS = 1000
SLOWLORIS_SLACK = 5.0 * h.SCALE   # seconds past the header timeout to close them all
IDLE_CONNS = 10000
PROBE_BOUND = 3.0 * h.SCALE       # seconds for a hit or a small miss under load
FD_LIMIT = 256
FD_EXTRA = 100                    # connections tried beyond the limit
POOL_SLACK = 20                   # sockets the cache may hold: idle upstream connections
BLOB_FD_CACHE = 128               # blob files it may keep open (core/blob.c BLOB_FD_CACHE)
RSS_PER_CONN_KIB = 16 * h.SCALE   # the most an idle connection may cost (ASan: more)
SPIN_CPU = 0.5                    # the share of a core a cache at its fd limit may burn


# --- Raw clients ------------------------------------------------------------------------

def open_connections(port, n, batch=250):
    """Opens n TCP connections to port (non-blocking connects, in batches so that the
    listen backlog is not overrun). Returns the connected sockets (non-blocking)."""
    socks, pending = [], []
    sel = selectors.DefaultSelector()
    try:
        for start in range(0, n, batch):
            pending = []
            for _ in range(min(batch, n - start)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                pending.append(s)
                sel.register(s, selectors.EVENT_WRITE)
            deadline = time.monotonic() + h.HTTP_TIMEOUT
            done = set()
            while len(done) < len(pending) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    sel.unregister(key.fileobj)
                    done.add(key.fileobj)
            for s in pending:
                socks.append(s)
                if s not in done:
                    raise AssertionError("connect %d of %d: not connected after %.0f s"
                                         % (len(socks), n, h.HTTP_TIMEOUT))
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err != 0:
                    raise AssertionError("connect %d of %d failed: %s"
                                         % (len(socks), n, os.strerror(err)))
    except BaseException:
        for s in socks + pending:
            close_socket(s, True)
        raise
    finally:
        sel.close()
    return socks


def closed_by_peer(socks, timeout):
    """Waits up to `timeout` for the peer to close each socket; returns {index: (time of
    the close, bytes received before it)} for those that it closed (EOF or reset)."""
    sel = selectors.DefaultSelector()
    received = {}
    closed = {}
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    try:
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                i = key.data
                try:
                    data = key.fileobj.recv(65536)
                except (ConnectionResetError, BlockingIOError) as e:
                    data = b"" if isinstance(e, ConnectionResetError) else None
                if data is None:
                    continue
                if data:
                    received[i] = received.get(i, 0) + len(data)
                    continue
                closed[i] = (time.monotonic(), received.get(i, 0))
                sel.unregister(key.fileobj)
    finally:
        sel.close()
    return closed


def response_complete(buf):
    """True when buf holds a whole response with a Content-Length."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(rest) >= int(m.group(1))


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_fds(cache, base, what):
    """Waits for the cache's descriptors to come down to what it held at `base` (from
    fd_kinds), give or take its pool of idle upstream connections and its cache of open
    blob descriptors; returns what it holds then."""
    limit = {"socket": base["socket"] + POOL_SLACK, "file": base["file"] + BLOB_FD_CACHE,
             "other": base["other"] + 2}

    def ok():
        now = fd_kinds(cache.proc.pid)
        return now if all(now[k] <= limit[k] for k in limit) else None

    try:
        return h.wait_until(ok, h.LOG_TIMEOUT * 2, what)
    except h.WaitTimeout:
        raise AssertionError("%s: the cache holds %r descriptors (expected at most %r)"
                             % (what, fd_kinds(cache.proc.pid), limit))


class Prober:
    """Checks in a thread, every `every` seconds, that the cache serves: a hit and a
    fresh miss with the right bytes, each within PROBE_BOUND."""

    def __init__(self, cache, hit, new_blob, every=1.0):
        self.cache, self.hit, self.new_blob, self.every = cache, hit, new_blob, every
        self.times = []
        self.errors = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, digest, size, what):
        t0 = time.monotonic()
        b = h.get_body(self.cache.port, blob_uri(REPO, digest), timeout=PROBE_BOUND + 5)
        took = time.monotonic() - t0
        self.times.append(took)
        if not (b.status == 200 and b.complete and b.sha256 == digest and took <= PROBE_BOUND):
            self.errors.append("%s: %r after %.2f s" % (what, b, took))

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                self._one(self.hit[0], self.hit[1], "hit")
                d, size = self.new_blob()
                self._one(d, size, "miss")
            except Exception as e:  # reported by verdict()
                self.errors.append("probe: %r" % e)
            self.stop_flag.wait(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(PROBE_BOUND * 3 + 10)
        return False

    def verdict(self, what):
        expect(not self.thread.is_alive(), "%s: a probe is stuck" % what)
        expect(self.times, "%s: no probe ran" % what)
        h.log("  %s: %d probes, slowest %.3f s, median %.3f s" % (
            what, len(self.times), max(self.times), statistics.median(self.times)))
        expect(not self.errors, "%s: the cache did not serve right:\n  %s" % (
            what, "\n  ".join(self.errors[:10])))


def body(run):
    work = run.work
    nofile = raise_nofile(IDLE_CONNS + 500)
    h.log("this test's RLIMIT_NOFILE: %d" % nofile)
    fake = FakeUpstream(work, name="fake-registry", role="registry").start()
    cache = run.cache([fake.url])

    hit_path, hit_d = fresh_blob(work, HIT_SIZE, "hit")
    fake.set_blob(hit_d, hit_path)
    hit = (hit_d, HIT_SIZE)
    hit_uri = blob_uri(REPO, hit_d)

    def new_blob(size=MISS_SIZE, rate=0):
        path, d = fresh_blob(work, size)
        fake.set_blob(d, path, rate=rate)
        return d, size

    baseline = {}

    def warm_up():
        b = h.get_body(cache.port, hit_uri)
        expect_whole(b, hit_d, HIT_SIZE, "the first GET")
        expect_stored(cache, hit_d, "the blob that later checks hit")
        expect_hit(cache, hit_uri, hit_d, HIT_SIZE)
        expect_serves(cache, REPO, hit, new_blob, "warm-up")
        baseline["fds"] = fd_kinds(cache.proc.pid)
        baseline["rss"] = rss_kib(cache.proc.pid)
        h.log("  cache after warm-up: fds %r, RSS %d KiB" % (baseline["fds"], baseline["rss"]))

    run.check("setup: a 16 MB blob stored and hit; a miss", warm_up)

    def serves_and_holds_nothing(what):
        expect_serves(cache, REPO, hit, new_blob, what)
        n = settled_fds(cache, baseline["fds"], what)
        h.log("  %s: the cache holds fds %r (after warm-up: %r)" % (what, n, baseline["fds"]))

    # ---- 1. Disconnects at every stage ----------------------------------------------
    def during_headers():
        for i in range(DISCONNECTS):
            for reset in (False, True):
                s = socket.create_connection(("127.0.0.1", cache.port), timeout=h.HTTP_TIMEOUT)
                s.sendall(request_bytes("GET", hit_uri)[:20 + i])
                close_socket(s, reset)
        serves_and_holds_nothing("disconnects during the headers")

    run.check("disconnects during the request headers (%d closes, %d resets): serves on, no "
              "fd left" % (DISCONNECTS, DISCONNECTS), during_headers)

    def logged_once(uri, before, n, what):
        """Every exchange that began ends and is logged: n more lines for uri."""
        try:
            h.wait_until(lambda: len(access(cache, "GET", uri)) >= before + n, h.LOG_TIMEOUT,
                         "%d access-log lines" % n)
        except h.WaitTimeout:
            raise AssertionError("%s: %d of %d exchanges logged (the others never ended)"
                                 % (what, len(access(cache, "GET", uri)) - before, n))
        return access(cache, "GET", uri)[before:]

    def before_response():
        # A hit and a slow miss, the connection dropped right after the request.
        slow_d, _ = new_blob(SLOW_SIZE, SLOW_RATE)
        slow_uri = blob_uri(REPO, slow_d)
        hits_before = len(access(cache, "GET", hit_uri))
        slow_before = len(access(cache, "GET", slow_uri))
        for i in range(DISCONNECTS):
            for uri in (hit_uri, slow_uri):
                s = socket.create_connection(("127.0.0.1", cache.port), timeout=h.HTTP_TIMEOUT)
                s.sendall(request_bytes("GET", uri))
                close_socket(s, i % 2 == 1)
        logged_once(hit_uri, hits_before, DISCONNECTS, "hits")
        # The fetch goes on without its clients; what it stores is right.
        bound = SLOW_SIZE / SLOW_RATE * 3 + h.LOG_TIMEOUT
        h.wait_until(lambda: os.path.exists(cache.blob_file(slow_d)), bound,
                     "the abandoned miss to be stored")
        lines = logged_once(slow_uri, slow_before, DISCONNECTS, "misses")
        h.log("  the abandoned miss: %s" % ", ".join(sorted(set(
            "%s/%s" % (e.get("http.response.status"), e.get("cache")) for e in lines))))
        expect_hit(cache, slow_uri, slow_d, SLOW_SIZE, "the blob whose clients all left")
        serves_and_holds_nothing("disconnects before the response")

    run.check("disconnects after the request, before the response (a hit and a slow miss): "
              "each exchange ends and is logged, the miss is stored right, serves on",
              before_response)

    def mid_hit():
        before = len(access(cache, "GET", hit_uri))
        for i in range(DISCONNECTS):
            for reset in (False, True):
                status, got = partial_get(cache.port, hit_uri, (i + 1) * 256 * 1024, reset)
                expect_eq(status, 200, "status of the hit")
        lines = logged_once(hit_uri, before, 2 * DISCONNECTS, "the hits cut short")
        whole = [e["_line"] for e in lines if str(e.get("http.response.written")) ==
                 str(HIT_SIZE) and not e.get("error")]
        expect(len(whole) < len(lines), "every cut hit was logged as complete: %s" % whole[:2])
        serves_and_holds_nothing("disconnects in the middle of a hit")

    run.check("disconnects in the middle of a 16 MB hit (%d closes, %d resets): logged, no "
              "fd left, serves on" % (DISCONNECTS, DISCONNECTS), mid_hit)

    def mid_miss():
        for reset in (False, True):
            d, _ = new_blob(SLOW_SIZE, SLOW_RATE)
            uri = blob_uri(REPO, d)
            status, got = partial_get(cache.port, uri, MB, reset)
            expect_eq(status, 200, "status of the miss")
            bound = SLOW_SIZE / SLOW_RATE * 3 + h.LOG_TIMEOUT
            h.wait_until(lambda: os.path.exists(cache.blob_file(d)), bound,
                         "the miss its client left to be stored")
            expect_hit(cache, uri, d, SLOW_SIZE, "the blob whose client left mid-body")
        serves_and_holds_nothing("disconnects in the middle of a miss")

    run.check("disconnects in the middle of a slow miss (a close, a reset): the fetch ends, "
              "stores the right bytes; serves on", mid_miss)

    def mid_coalesced():
        d, _ = new_blob(SLOW_SIZE, SLOW_RATE)
        uri = blob_uri(REPO, d)
        bound = SLOW_SIZE / SLOW_RATE * 3 + h.HTTP_TIMEOUT
        out = parallel([
            lambda: h.get_body(cache.port, uri, timeout=bound),
            lambda: h.get_body(cache.port, uri, timeout=bound),
            lambda: partial_get(cache.port, uri, MB, False),
            lambda: partial_get(cache.port, uri, 3 * MB, True),
        ], timeout=bound * 2)
        for i in range(2):
            expect_whole(out[i], d, SLOW_SIZE, "client %d that stayed" % (i + 1))
        h.log("  the two that left had %d and %d bytes" % (out[2][1], out[3][1]))
        lines = logged_once(uri, 0, 4, "the coalesced clients")
        kinds = sorted(str(e.get("cache")) for e in lines)
        h.log("  cache fields: %s" % kinds)
        expect_eq(kinds.count("miss"), 1, "cache=miss lines (%r)" % kinds)
        expect_stored(cache, d, "the coalesced miss")
        serves_and_holds_nothing("disconnects during a coalesced miss")

    run.check("a coalesced miss: two of four clients leave mid-body (a close, a reset), the "
              "two others get every byte; stored; serves on", mid_coalesced)

    # ---- 2. Slowloris -------------------------------------------------------------------
    def slowloris():
        rss0 = rss_kib(cache.proc.pid)
        socks = open_connections(cache.port, SLOWLORIS)
        payload = request_bytes("GET", hit_uri) + b"X-Never-Ends: "  # (no final CRLF)
        n = len(socks)
        t_start = time.monotonic()
        first_byte = [None] * n
        sent = [0] * n
        closed = {}
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        deadline = t_start + 1.0 + HEADER_TIMEOUT + SLOWLORIS_SLACK
        peak_rss = rss0
        try:
            with Prober(cache, hit, new_blob) as prober:
                while len(closed) < n and time.monotonic() < deadline:
                    now = time.monotonic()
                    for i in range(n):
                        if i in closed:
                            continue
                        # Connection i sends its k-th byte at t_start + i/n + k seconds.
                        if now >= t_start + i / n + sent[i] and sent[i] < len(payload):
                            try:
                                socks[i].send(payload[sent[i]:sent[i] + 1])
                            except OSError:
                                closed[i] = (now, "send failed")
                                continue
                            if first_byte[i] is None:
                                first_byte[i] = now
                            sent[i] += 1
                    for key, _ in sel.select(timeout=0.05):
                        i = key.data
                        try:
                            data = key.fileobj.recv(4096)
                        except OSError:
                            data = b""
                        closed[i] = (time.monotonic(), data[:12].decode("latin-1") or "EOF")
                        sel.unregister(key.fileobj)
                    if now - t_start < HEADER_TIMEOUT - 1:
                        peak_rss = max(peak_rss, rss_kib(cache.proc.pid))
            prober.verdict("probes during slowloris")
        finally:
            sel.close()
            for s in socks:
                close_socket(s, True)
        open_left = n - len(closed)
        after = [closed[i][0] - first_byte[i] for i in closed if first_byte[i] is not None]
        kinds = {}
        for _, what in closed.values():
            kinds[what] = kinds.get(what, 0) + 1
        h.log("  %d slowloris connections: %d closed by the cache, %.1f..%.1f s after their "
              "first byte (median %.1f); bytes sent each: %d..%d; answers: %s; RSS %d -> %d "
              "KiB" % (n, len(closed), min(after or [0]), max(after or [0]),
                       statistics.median(after or [0]), min(sent), max(sent), kinds, rss0,
                       peak_rss))
        expect_eq(open_left, 0, "slowloris connections still open %.0f s after the header "
                  "timeout" % SLOWLORIS_SLACK)
        expect(min(after) >= HEADER_TIMEOUT - 1.0, "a slow client was dropped after %.1f s, "
               "before the %.0f s header timeout" % (min(after), HEADER_TIMEOUT))
        serves_and_holds_nothing("slowloris")

    name = ("1,000 slowloris connections: hits and misses served meanwhile; all closed "
            "after the %.0f s header timeout" % HEADER_TIMEOUT)
    if nofile < SLOWLORIS + 200:
        run.skip(name, "RLIMIT_NOFILE hard limit %d is too low for %d connections"
                 % (nofile, SLOWLORIS))
    else:
        run.check(name, slowloris)

    # ---- 3. 10,000 idle connections -----------------------------------------------------
    if nofile < IDLE_CONNS + 300:
        for name in ("10,000 silent connections", "10,000 idle keep-alive connections"):
            run.skip(name, "RLIMIT_NOFILE hard limit %d is too low for %d connections"
                     % (nofile, IDLE_CONNS))
    else:
        def idle_silent():
            rss0 = rss_kib(cache.proc.pid)
            kinds0 = fd_kinds(cache.proc.pid)
            fds0 = sum(kinds0.values())
            t0 = time.monotonic()
            socks = open_connections(cache.port, IDLE_CONNS)
            try:
                took = time.monotonic() - t0
                accepted = h.wait_until(lambda: (lambda n: n if n >= fds0 + IDLE_CONNS else 0)(
                    fd_count(cache.proc.pid)), HEADER_TIMEOUT / 2,
                    "the cache to accept the connections")
                rss1 = rss_kib(cache.proc.pid)
                with Prober(cache, hit, new_blob, every=0.5) as prober:
                    time.sleep(2.0)
                prober.verdict("probes with 10,000 silent connections")
                closed = closed_by_peer(socks, HEADER_TIMEOUT + SLOWLORIS_SLACK)
                waited = time.monotonic() - t0
            finally:
                for s in socks:
                    close_socket(s, True)
            fds2 = settled_fds(cache, kinds0, "after the silent connections")
            rss2 = rss_kib(cache.proc.pid)
            h.log("  10,000 silent connections opened in %.1f s; the cache held %d fds; "
                  "%d closed by the cache within %.1f s; RSS %d -> %d -> %d KiB (%.1f KiB "
                  "per connection); fds after: %r" % (
                      took, accepted, len(closed), waited, rss0, rss1, rss2,
                      (rss1 - rss0) / IDLE_CONNS, fds2))
            expect_eq(len(closed), IDLE_CONNS, "silent connections closed by the header "
                      "timeout")
            expect((rss1 - rss0) / IDLE_CONNS <= RSS_PER_CONN_KIB, "%.1f KiB of RSS per "
                   "idle connection" % ((rss1 - rss0) / IDLE_CONNS))
            serves_and_holds_nothing("10,000 silent connections")

        run.check("10,000 silent connections: served meanwhile, all closed by the header "
                  "timeout, RSS reported", idle_silent)

        def idle_keepalive():
            rss0 = rss_kib(cache.proc.pid)
            kinds0 = fd_kinds(cache.proc.pid)
            socks = open_connections(cache.port, IDLE_CONNS)
            try:
                # One complete request on each (answered by the cache itself: 404).
                sel = selectors.DefaultSelector()
                for i, s in enumerate(socks):
                    s.send(request_bytes("GET", "/not-the-registry-api"))
                    sel.register(s, selectors.EVENT_READ, i)
                got = {}
                deadline = time.monotonic() + h.HTTP_TIMEOUT * 2
                while len(got) < len(socks) and time.monotonic() < deadline:
                    for key, _ in sel.select(timeout=0.2):
                        data = key.fileobj.recv(65536)
                        got[key.data] = got.get(key.data, b"") + data
                        if not data or response_complete(got[key.data]):
                            sel.unregister(key.fileobj)
                sel.close()
                answered = sum(1 for v in got.values() if v.startswith(b"HTTP/1.1 404"))
                t_answered = time.monotonic()
                rss1 = rss_kib(cache.proc.pid)
                with Prober(cache, hit, new_blob, every=0.5) as prober:
                    time.sleep(2.0)
                prober.verdict("probes with 10,000 idle keep-alive connections")
                # Past the header timeout, the idle ones are still there (60 s idle timeout).
                time.sleep(max(0.0, t_answered + HEADER_TIMEOUT + 1.0 - time.monotonic()))
                closed = closed_by_peer(socks, 0.5)
                fds1 = fd_count(cache.proc.pid)
            finally:
                for s in socks:
                    close_socket(s, True)
            fds2 = settled_fds(cache, kinds0, "after the keep-alive connections")
            rss2 = rss_kib(cache.proc.pid)
            h.log("  10,000 keep-alive connections: %d answered 404; %d closed by the cache "
                  "%.0f s after their answer (%d fds held); RSS %d -> %d -> %d KiB (%.1f KiB "
                  "per connection); fds after: %r" % (
                      answered, len(closed), HEADER_TIMEOUT + 1, fds1, rss0, rss1, rss2,
                      (rss1 - rss0) / IDLE_CONNS, fds2))
            expect_eq(answered, IDLE_CONNS, "connections whose request was answered")
            expect_eq(len(closed), 0, "keep-alive connections closed before the %.0f s idle "
                      "timeout" % IDLE_TIMEOUT)
            expect((rss1 - rss0) / IDLE_CONNS <= RSS_PER_CONN_KIB, "%.1f KiB of RSS per "
                   "idle connection" % ((rss1 - rss0) / IDLE_CONNS))
            serves_and_holds_nothing("10,000 keep-alive connections")

        run.check("10,000 idle keep-alive connections: served meanwhile, kept past the "
                  "header timeout, RSS reported, all fds given back", idle_keepalive)

    # ---- 4. The file-descriptor limit ----------------------------------------------------
    wrapper = work.write("content-cache-nofile-%d.sh" % FD_LIMIT,
                         "#!/bin/sh\n# The cache with RLIMIT_NOFILE %d, soft and hard (it "
                         "raises the soft limit to the hard one).\n"
                         "ulimit -S -n %d && ulimit -H -n %d || exit 111\nexec %s \"$@\"\n"
                         % (FD_LIMIT, FD_LIMIT, FD_LIMIT, shlex.quote(h.binary_path())),
                         mode=0o755)
    small = run.cache([fake.url], name="cache-nofile", binary=wrapper)

    def fd_limit():
        with open("/proc/%d/limits" % small.proc.pid) as f:
            limits = [ln for ln in f if ln.startswith("Max open files")]
        h.log("  %s" % " ".join(limits[0].split()))
        expect(" %d " % FD_LIMIT in limits[0], "the cache's limit is not %d: %s" % (FD_LIMIT,
                                                                                   limits[0]))
        expect_whole(h.get_body(small.port, hit_uri), hit_d, HIT_SIZE, "the first GET")
        expect_stored(small, hit_d, "the blob")
        kinds0 = fd_kinds(small.proc.pid)
        keeper = h.RawConnection(small.port)
        keeper.send_request("GET", hit_uri)
        expect_whole_raw(keeper.read_response(), hit_d, "the kept connection's first GET")
        socks = []
        try:
            socks = open_connections(small.port, FD_LIMIT + FD_EXTRA, batch=50)
            closed = closed_by_peer(socks, 2.0 * h.SCALE)
            fds1 = fd_count(small.proc.pid)
            accept_lines = len(stderr_lines(small, "accept failed"))
            cpu0 = cpu_seconds(small.proc.pid)
            time.sleep(2.0)
            spin = (cpu_seconds(small.proc.pid) - cpu0) / 2.0
            h.log("  %d connections opened: the cache closed %d and kept %d (it holds %d fds, "
                  "limit %d); %d 'accept failed' lines; %.0f%% of a core while saturated" % (
                      len(socks), len(closed), len(socks) - len(closed), fds1, FD_LIMIT,
                      accept_lines, spin * 100))
            expect(closed, "the cache closed none of %d connections past its limit of %d fds: "
                   "they hang" % (len(socks), FD_LIMIT))
            expect(spin < SPIN_CPU, "the cache burns %.0f%% of a core while at its fd limit"
                   % (spin * 100))
            # A request on a connection it kept: an answer (right bytes or an error) or a
            # close, in bounded time.
            try:
                keeper.send_request("GET", hit_uri)
                r = keeper.read_response()
                h.log("  at the limit, the kept connection got %d (%d bytes)" % (
                    r.status, len(r.body)))
                expect(r.status != 200 or h.sha256_digest(r.body) == hit_d,
                       "a 200 with wrong bytes at the fd limit")
            except (OSError, http.client.HTTPException) as e:
                h.log("  at the limit, the kept connection: %s" % e)
        finally:
            keeper.close()
            for s in socks:
                close_socket(s, True)
        settled_fds(small, kinds0, "after the connections past the limit")
        expect_serves(small, REPO, hit, new_blob, "after the fd limit")
        lines = len(stderr_lines(small, "accept failed"))
        expect(lines <= FD_EXTRA * 2, "%d 'accept failed' lines: a log flood" % lines)
        near = stderr_lines(small, "open files near the limit")
        h.log("  %d 'open files near the limit' lines%s" % (len(near), (": " + near[0].strip())
                                                            if near else ""))
        expect(near, "no log line says the cache reached its fd limit")
        expect(len(near) <= 3, "%d 'open files near the limit' lines: a log flood" % len(near))

    run.check("RLIMIT_NOFILE %d: connections past the limit are closed, the cache does not "
              "spin, and serves again once they are gone" % FD_LIMIT, fd_limit)

    def tmp_empty_at_end():
        for c in (cache, small):
            wait_tmp_empty(c, c.name)

    run.check("no files left in the temporary directories", tmp_empty_at_end)
    fake.stop()


def expect_whole_raw(r, digest, what):
    expect_eq(r.status, 200, "%s: status (%r)" % (what, r))
    expect_eq(h.sha256_digest(r.body), digest, "%s: sha256" % what)


if __name__ == "__main__":
    h.main("faults_client", body)
