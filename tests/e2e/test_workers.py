"""End-to-end: several loops in one process (the downstream middleware's `workers`).

- 64 concurrent cold GETs for 8 blobs over 2 loops (new connections, which SO_REUSEPORT
  spreads over the loops): the origin serves each blob once (its log and the pacing
  proxy's count agree), every body has the right digest, the access log says 8 miss and
  56 coalesced (or hit, for a client that came after the commit), and loops followed
  each other's fetches ("on another loop").
- One process: /metrics counts the requests of every loop, and shows each loop's own
  (content_cache_loop_requests_total{loop}, content_cache_loop_connections{loop}): both
  loops served some of the 64 connections, and the loops' figures sum to the totals;
  SIGHUP reloads the policies of every loop; SIGTERM lets downloads in flight on every
  loop finish (draintimeout), then the process exits 0.
- http.maxconnections is the process's bound, not each loop's: with 4 and two loops,
  4 of 8 idle connections are served and 4 closed at accept, wherever the kernel put
  them; once they close, new connections are served again.
- workers: 1 is one loop: the same burst, one fetch per blob, no loop follows another.

The origin sits behind a pacing proxy so that fetches are really in flight.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_workers.py
"""

import os
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "workers/app"
MB = 1 << 20
RATE = 8 * MB  # bytes per second through the proxy, per response
BLOBS = 8
CLIENTS = 64


def followed_lines(cache):
    return sum(1 for line in h.read_lines(cache.stderr_path)
               if "is being fetched on another loop" in line)


def closed_at_once(sock):
    """True when the server has closed the socket (EOF or reset) within half a second;
    nothing is consumed from a socket that is still open."""
    readable, _, _ = select.select([sock], [], [], 0.5 * h.SCALE)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def burst(origin, proxy, cache, digests):
    """64 concurrent GETs, 8 per blob, each on its own connection; checks every body and
    that the origin served each blob once."""
    jobs = []
    for i in range(CLIENTS):
        d = digests[i % BLOBS]
        uri = "/v2/%s/blobs/%s" % (REPO, d)
        jobs.append(lambda uri=uri: h.get_body(cache.port, uri, timeout=h.HTTP_TIMEOUT * 4))
    bodies = h.parallel(jobs, timeout=h.CLIENT_TIMEOUT)
    for i, b in enumerate(bodies):
        expect(b.complete and b.status == 200, "client %d: %r" % (i, b.error or b.status))
        expect_eq(b.sha256, digests[i % BLOBS], "client %d's digest" % i)
    for d in digests:
        uri = "/v2/%s/blobs/%s" % (REPO, d)
        gets = origin.wait_for_count(lambda d=d: origin.count_blob_gets(d, status=None), 1)
        expect_eq(gets, 1, "GETs of blob %s the origin served" % d[:19])
        expect_eq(proxy.count("GET", uri), 1, "GETs of blob %s through the proxy" % d[:19])
    h.wait_for_count(lambda: cache.count_access(method="GET"), CLIENTS)
    # A client that comes after its blob's commit is a hit: the rest joined a fetch.
    misses = cache.count_access(method="GET", cache="miss")
    joined = (cache.count_access(method="GET", cache="coalesced")
              + cache.count_access(method="GET", cache="hit"))
    expect_eq((misses, joined), (BLOBS, CLIENTS - BLOBS), "access lines (miss, coalesced + hit)")


def body(run):
    work = run.work
    origin = run.origin()
    proxy = FakeUpstream(work, name="pacer", role="proxy", target=origin, rate=RATE).start()
    blobs = [os.urandom(2 * MB + i * 4096) for i in range(2 * BLOBS)]
    digests = [origin.upload_blob(REPO, b) for b in blobs]
    env = {"REGISTRY_HTTP_DRAINTIMEOUT": "60s"}
    cache = run.cache([proxy.url], name="two-loops", workers=2, debug=True, env=env)

    def sixty_four_cold():
        burst(origin, proxy, cache, digests[:BLOBS])
        followed = followed_lines(cache)
        h.log("  8 upstream fetches for 64 clients; %d fetches followed from another loop"
              % followed)
        expect(followed >= 1, "no loop followed another loop's fetch: did both loops serve?")

    run.check("64 concurrent cold GETs of 8 blobs over 2 loops: one upstream fetch per blob, "
              "every digest right", sixty_four_cold)

    def one_process():
        metrics = cache.metrics()
        gets = sum(v for k, v in metrics.items()
                   if k.startswith('content_cache_http_requests_total{method="GET"'))
        expect(gets >= CLIENTS, "/metrics counts %d GETs, the loops answered %d" % (gets, CLIENTS))
        expect_eq(metrics.get('content_cache_blob_requests_total{result="miss"}'),
                  float(BLOBS), "blob GETs that started a fetch, in /metrics")
        joined = (metrics.get('content_cache_blob_requests_total{result="coalesced"}', 0)
                  + metrics.get('content_cache_blob_requests_total{result="hit"}', 0))
        expect_eq(joined, float(CLIENTS - BLOBS), "coalesced and hit blob GETs in /metrics")
        expect_eq(metrics.get("content_cache_loops"), 2.0, "content_cache_loops")
        # Each loop's own figures: the kernel spread the 64 connections over both, and
        # the loops' requests add up to the process's.
        per_loop = {loop: metrics.get('content_cache_loop_requests_total{loop="%d"}' % loop)
                    for loop in (0, 1)}
        h.log("  requests answered per loop: %r" % per_loop)
        expect(all(v is not None and v > 0 for v in per_loop.values()),
               "both loops answered requests: %r" % per_loop)
        total = sum(v for k, v in metrics.items()
                    if k.startswith("content_cache_http_requests_total{"))
        expect_eq(sum(per_loop.values()), total,
                  "the loops' requests summed, against content_cache_http_requests_total")
        conns = [metrics.get('content_cache_loop_connections{loop="%d"}' % loop)
                 for loop in (0, 1)]
        expect(None not in conns, "content_cache_loop_connections of each loop: %r" % conns)
        expect_eq(sum(conns), metrics.get("content_cache_connections"),
                  "the loops' connections summed, against content_cache_connections")
        tasks = os.listdir("/proc/%d/task" % cache.proc.pid)
        expect(len(tasks) >= 2, "one process with %d threads" % len(tasks))

    run.check("one /metrics for the loops of one PID", one_process)

    def hup_reloads_every_loop():
        os.kill(cache.proc.pid, signal.SIGHUP)
        for loop in (0, 1):
            h.wait_until(lambda loop=loop: any(
                "policies reloaded on loop %d" % loop in line
                for line in h.read_lines(cache.stderr_path)), h.LOG_TIMEOUT,
                "loop %d to reload its policies" % loop)

    run.check("SIGHUP reloads the policies of every loop", hup_reloads_every_loop)

    def term_drains_every_loop():
        # Eight slow downloads of blobs not fetched yet (on both loops, most likely),
        # each paced by the proxy; SIGTERM once every one has its first bytes.
        late = digests[BLOBS:]
        started = []
        jobs = [lambda d=d: h.get_body(cache.port, "/v2/%s/blobs/%s" % (REPO, d),
                                       timeout=h.HTTP_TIMEOUT * 4,
                                       on_first_byte=lambda b: started.append(b))
                for d in late]
        waiter = h.background(lambda: h.parallel(jobs, timeout=h.CLIENT_TIMEOUT))
        h.wait_until(lambda: len(started) == len(late), h.CLIENT_TIMEOUT,
                     "every download to have its first bytes")
        os.kill(cache.proc.pid, signal.SIGTERM)
        bodies = waiter(h.CLIENT_TIMEOUT)
        for i, b in enumerate(bodies):
            expect(b.complete and b.status == 200, "download %d: %r" % (i, b.error or b.status))
            expect_eq(b.sha256, late[i], "download %d's digest" % i)
        # The process ends by itself once every loop has drained (no second signal).
        cache.proc.popen.wait(timeout=h.STOP_TIMEOUT)
        expect_eq(cache.stop(), 0, "exit code after the drain")

    run.check("SIGTERM drains every loop: downloads in flight finish whole, exit 0",
              term_drains_every_loop)

    def one_loop():
        origin2 = run.origin(name="origin-one")
        proxy2 = FakeUpstream(work, name="pacer-one", role="proxy", target=origin2,
                              rate=RATE).start()
        ds = [origin2.upload_blob(REPO, b) for b in blobs[:BLOBS]]
        single = run.cache([proxy2.url], name="one-loop", workers=1)
        burst(origin2, proxy2, single, ds)
        expect_eq(followed_lines(single), 0, "fetches followed from another loop")
        tasks = os.listdir("/proc/%d/task" % single.proc.pid)
        h.log("  workers: 1 runs %d threads (the loop and libuv's pool)" % len(tasks))

    run.check("workers: 1 is one loop: the same burst, one fetch per blob", one_loop)

    def max_connections_per_process():
        limited = run.cache([origin], name="four-connections", workers=2, debug=True,
                            env={"REGISTRY_HTTP_MAXCONNECTIONS": "4"})
        # (The harness's own probes of the port must be gone before the count starts.)
        h.wait_until(lambda: limited.metrics().get("content_cache_connections") == 0,
                     h.LOG_TIMEOUT, "no connection open")
        conns = [h.RawConnection(limited.port) for _ in range(8)]
        try:
            # Closed at accept means at once: well before the 10 s header timeout.
            closed = [c for c in conns if closed_at_once(c.sock)]
            open_ = [c for c in conns if c not in closed]
            per_loop = [limited.metrics().get('content_cache_loop_connections{loop="%d"}' % i)
                        for i in (0, 1)]
            h.log("  8 idle connections with maxconnections 4: %d closed at accept; open per "
                  "loop %r" % (len(closed), per_loop))
            expect_eq(len(closed), 4, "connections closed at accept (8 made, 4 allowed)")
            expect_eq(sum(per_loop), 4.0, "connections open over both loops")
            for c in open_:
                c.send_request("GET", "/v2/")
                r = c.read_response()
                expect(r.status in (200, 401), "a request on an open connection: %r" % r.status)
        finally:
            for c in conns:
                c.close()
        # Their places are given back: a new connection is served.
        h.wait_until(lambda: limited.metrics().get("content_cache_connections") == 0,
                     h.LOG_TIMEOUT, "the connections to close")
        r = h.request(limited.port, "GET", "/v2/")
        expect(r.status in (200, 401), "a new connection after they closed: %r" % r.status)
        expect(any("connection refused: 4 connections open (limit 4" in line
                   for line in h.read_lines(limited.stderr_path)),
               "the log says why connections were refused")

    run.check("http.maxconnections bounds the process, not each loop: 4 of 8 connections "
              "over 2 loops", max_connections_per_process)


if __name__ == "__main__":
    h.main("test_workers", body)
