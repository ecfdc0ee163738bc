"""End-to-end: the debug server (http.debug.addr): /metrics moves as it should after a
miss, a hit and an error, shows the disk budget and its watermarks in bytes, and
/debug/health flips to 503 when the storage root becomes read-only (a tmpfs remounted
read-only; needs root) and back to 200 when it is writable; the health gauges of
/metrics (content_cache_health_ok{check}) follow, from scrapes alone. A cache whose
upstream takes connections and never answers stops at once on SIGTERM although a
scrape's health probe and a /debug/health request wait on that upstream.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_metrics_health.py
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "metrics/app"


def scrape(port):
    r = h.request(port, "GET", "/metrics")
    h.expect_status(r, 200)
    expect("text/plain" in (r.header("Content-Type") or ""), "metrics content type")
    values = {}
    for line in r.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+) (\S+)$", line)
        expect(m is not None, "a metrics line that is not 'name value': %r" % line)
        values[m.group(1)] = float(m.group(2))
    return values


def delta(after, before, key):
    return after.get(key, 0.0) - before.get(key, 0.0)


def body(run):
    work = run.work
    origin = run.origin()
    data = os.urandom(300_000)
    digest = origin.upload_blob(REPO, data)

    dport = h.free_port()
    debug_yaml = "  debug:\n    addr: 127.0.0.1:%d\n" % dport

    class DebugCache(h.Cache):
        def config_text(self, port):
            text = super().config_text(port)
            return text.replace("  addr: 127.0.0.1:%d\n" % port,
                                "  addr: 127.0.0.1:%d\n%s" % (port, debug_yaml), 1)

    storage = work.sub("tmpfs-root", mkdir=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", storage],
                             capture_output=True).returncode == 0
    # A disk budget far above what the test stores: only its gauges are looked at here.
    budget_yaml = ("        diskbudget:\n          maxsize: 10MiB\n          highwatermark: 90\n"
                   "          lowwatermark: 80\n")
    cache = DebugCache(work, [origin], storage=storage if mounted else None,
                       extra_downstream_yaml=budget_yaml)
    run.caches.append(cache)
    try:
        cache.start()
        h.wait_until(lambda: h.port_open(dport), 10, "the debug server")
        up = 'upstream="%s"' % origin.url

        def metrics_move():
            # A scrape starts the health checks, whose upstream check asks the origin for
            # /v2/ when no upstream answered in the last minute: let that one finish
            # first, so that the counts below are the requests' alone.
            h.wait_until(lambda: 'content_cache_health_ok{check="upstream"}' in scrape(dport),
                         10, "the first health evaluation")
            m0 = scrape(dport)
            r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest))  # miss
            h.expect_status(r, 200)
            r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest))  # hit
            h.expect_status(r, 200)
            unknown = h.sha256_digest(b"not there")
            r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, unknown))  # error
            h.expect_status(r, 404)
            h.wait_until(lambda: delta(scrape(dport), m0,
                                       'content_cache_http_requests_total{method="GET",'
                                       'status="404"}') >= 1, 10, "the 404 to be counted")
            h.wait_until(lambda: delta(scrape(dport), m0, "content_cache_stored_blobs") >= 1, 10,
                         "the commit to be counted")
            m1 = scrape(dport)
            for key, want in [
                ('content_cache_blob_requests_total{result="miss"}', 1),
                ('content_cache_blob_requests_total{result="hit"}', 1),
                ('content_cache_http_requests_total{method="GET",status="200"}', 2),
                ('content_cache_http_requests_total{method="GET",status="404"}', 1),
                ('content_cache_fetches_total{outcome="started"}', 1),
                ('content_cache_fetches_total{outcome="committed"}', 1),
                ('content_cache_stored_blobs', 1),
                ('content_cache_stored_bytes', len(data)),
                ('content_cache_blob_served_bytes_total{result="hit"}', len(data)),
                ('content_cache_blob_served_bytes_total{result="miss"}', len(data)),
            ]:
                expect_eq(delta(m1, m0, key), want, key)
            # The miss: a HEAD then a GET upstream; the hit: answered from memory; the 404:
            # a HEAD. Bytes from the origin: the blob's.
            expect_eq(delta(m1, m0, "content_cache_upstream_requests_total{%s}" % up), 3,
                      "requests to the origin")
            expect_eq(delta(m1, m0, "content_cache_upstream_fetched_bytes_total{%s}" % up),
                      len(data), "bytes fetched from the origin")
            expect_eq(delta(m1, m0, 'content_cache_authorizations_total{source="memory"}'), 1,
                      "authorizations from memory (the hit)")
            expect_eq(delta(m1, m0, 'content_cache_authorizations_total{source="upstream"}'),
                      2, "authorizations asked of the upstream (the miss, the 404)")
            expect(delta(m1, m0, "content_cache_upstream_response_seconds_count{%s}" % up) == 3,
                   "latency observations")
            expect_eq(m1.get('content_cache_policy_errors_total{hook="format_log"}'), 0.0,
                      "policy errors")

        run.check("/metrics: a miss, a hit and a 404 move the counters they should",
                  metrics_move)

        def budget_gauges():
            m = scrape(dport)
            expect_eq(m.get("content_cache_disk_budget_bytes"), 10 * 1024 * 1024.0,
                      "content_cache_disk_budget_bytes (maxsize: 10MiB)")
            expect_eq(m.get("content_cache_disk_budget_high_bytes"), 9437184.0,
                      "content_cache_disk_budget_high_bytes (90%)")
            expect_eq(m.get("content_cache_disk_budget_low_bytes"), 8388608.0,
                      "content_cache_disk_budget_low_bytes (80%)")

        run.check("/metrics: the disk budget and its watermarks, in bytes", budget_gauges)

        def health_gauges(storage_ok):
            # Each scrape starts an evaluation; its answers show from the next scrape.
            want = {'content_cache_health_ok{check="storage"}': 1.0 if storage_ok else 0.0,
                    'content_cache_health_ok{check="upstream"}': 1.0}

            def seen():
                m = scrape(dport)
                return {k: m.get(k) for k in want} == want
            h.wait_until(seen, 10, "health gauges %r" % want)

        def health_flips():
            r = h.request(dport, "GET", "/debug/health")
            expect_eq(r.status, 200, "health while all is well: %r" % r)
            expect_eq(json.loads(r.body)["status"], "healthy", "status")
            health_gauges(True)
            subprocess.run(["mount", "-o", "remount,ro", storage], check=True)
            try:
                r = h.request(dport, "GET", "/debug/health")
                expect_eq(r.status, 503, "health with a read-only root: %r" % r)
                doc = json.loads(r.body)
                expect("not writable" in doc["storage"], "the reason: %r" % doc)
                health_gauges(False)
            finally:
                subprocess.run(["mount", "-o", "remount,rw", storage], check=True)
            r = h.request(dport, "GET", "/debug/health")
            expect_eq(r.status, 200, "health after the root is writable again: %r" % r)
            health_gauges(True)
            # Hits still work throughout.
            r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (REPO, digest))
            h.expect_status(r, 200)

        if mounted:
            run.check("/debug/health: 503 naming the reason while the root is read-only, 200 "
                      "before and after; content_cache_health_ok{check=\"storage\"} 0 then 1 "
                      "from scrapes", health_flips)
        else:
            run.skip("/debug/health with a read-only root", "cannot mount a tmpfs here")
    finally:
        cache.stop()
        if mounted:
            subprocess.run(["umount", "-l", storage], capture_output=True)

    # A storage root of ~1,000 characters (one of them a double quote) that stops being
    # writable: the health body names it whole, escaped, in JSON that parses (the body was
    # once built in a 1 KiB stack buffer that such a root overran).
    long_root = os.path.join(work.path, *(['d"' + "x" * 200] * 5))
    os.makedirs(long_root)
    dport = h.free_port()
    debug_yaml = "  debug:\n    addr: 127.0.0.1:%d\n" % dport
    long_cache = DebugCache(work, [origin], storage=long_root, name="long-root")
    run.caches.append(long_cache)
    try:
        long_cache.start()
        h.wait_until(lambda: h.port_open(dport), 10, "the debug server")

        def long_root_health():
            tmp = long_cache.tmp_dir
            shutil.rmtree(tmp)
            with open(tmp, "w") as f:
                f.write("not a directory")
            r = h.request(dport, "GET", "/debug/health")
            expect_eq(r.status, 503, "health with an unwritable %d-character root: %r"
                      % (len(long_root), r))
            doc = json.loads(r.body)
            expect(long_root in doc["storage"], "the reason names the whole root: %r" % doc)
            expect_eq(doc["status"], "unhealthy", "status")

        run.check("/debug/health: a ~1,000-character root with a quote, unwritable: 503 with "
                  "valid JSON naming it", long_root_health)
    finally:
        long_cache.stop()

    # An upstream that never answers: a socket that listens and never accepts (the kernel
    # completes the handshakes). The health probes wait on it for their timeouts (30 s).
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    dport = h.free_port()
    debug_yaml = "  debug:\n    addr: 127.0.0.1:%d\n" % dport
    stuck = DebugCache(work, ["http://127.0.0.1:%d" % silent.getsockname()[1]],
                       name="silent-upstream")
    run.caches.append(stuck)
    try:
        stuck.start()
        h.wait_until(lambda: h.port_open(dport), 10, "the debug server")

        def stops_at_once():
            scrape(dport)  # starts an evaluation: its upstream probe hangs
            join = h.background(lambda: h.request(dport, "GET", "/debug/health", timeout=60))
            time.sleep(0.5)  # both probes are waiting on the silent upstream now
            t0 = time.monotonic()
            code = stuck.stop()
            elapsed = time.monotonic() - t0
            expect_eq(code, 0, "exit code on SIGTERM")
            expect(elapsed < 3, "the stop took %.1f s (waiting for the probes' timeouts?)"
                   % elapsed)
            r = join(10)
            expect_eq(r.status, 503, "the /debug/health in flight: %r" % r)
            expect("stopping" in json.loads(r.body)["upstream"], "its reason: %r" % r.body)

        run.check("SIGTERM while a scrape's health probe and a /debug/health wait on an "
                  "upstream that never answers: exit 0 at once, the request answered 503",
                  stops_at_once)
    finally:
        stuck.stop()
        silent.close()


if __name__ == "__main__":
    h.main("test_metrics_health", body)
