"""End-to-end: several loops in one process (the downstream middleware's `workers`).

- 64 concurrent cold GETs for 8 blobs over 2 loops (new connections, which SO_REUSEPORT
  spreads over the loops): the origin serves each blob once (its log and the pacing
  proxy's count agree), every body has the right digest, the access log says 8 miss and
  56 coalesced (or hit, for a client that came after the commit), and loops followed
  each other's fetches ("on another loop").
- One process: /metrics counts the requests of every loop; SIGHUP reloads the policies
  of every loop; SIGTERM lets downloads in flight on every loop finish (draintimeout),
  then the process exits 0.
- workers: 1 is one loop: the same burst, one fetch per blob, no loop follows another.

The origin sits behind a pacing proxy so that fetches are really in flight.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_workers.py
"""

import os
import signal
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


if __name__ == "__main__":
    h.main("test_workers", body)
