#!/usr/bin/env python3
"""Soak test for content-cache (not run by ctest): a long mixed load against a cache in
front of a real origin, watching the cache's memory and file descriptors.

A Docker Distribution origin holds a pool of hot blobs; content-cache runs in front of
it with a short blobttl (so that the blobs fetched once expire and the disk stays
bounded). CLIENTS threads run this mix until the time is up:

  hit         GET of a hot blob, whole                             (45 %)
  range       GET of a random range of a hot blob                  (15 %)
  head        HEAD of a hot blob                                   (10 %)
  miss        a fresh blob is uploaded to the origin, then GET     (15 %)
  disconnect  GET of a hot blob (or, 1 in 4, of a fresh one) dropped mid-body with a
              close or a reset                                     (15 %)

Every response that completes must be right (status, length, bytes). Every --interval
seconds the cache's RSS (/proc/PID/status VmRSS), open fds (/proc/PID/fd; sockets and
files among them) and threads are sampled and printed as a table row. At the end: the
verdict. After the warm-up, the samples are split into thirds; memory is flat when the
last third's highest RSS is at most 10 % + 4 MiB above the first third's, and fds are
flat when the last third's most is at most FD_SLACK above the first third's (the pool of
idle upstream connections and the cache of open blob descriptors come and go). Exit 0
when both are flat and no response was wrong.

    python3 tests/soak/soak.py --minutes 10
    CC_BINARY=build-asan/content-cache python3 tests/soak/soak.py --minutes 3

The results of a run go in tests/README.md (section "Soak").
"""

import argparse
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import harness as h  # noqa: E402
from e2e_faults import blob_uri, fd_kinds, partial_get, proc_status, rss_kib  # noqa: E402

REPO = "soak/app"
MB = 1 << 20
HOT_BLOBS = 16
HOT_SIZES = (256 * 1024, 8 * MB)       # hot blob sizes: a range, log-uniform
FRESH_SIZES = (64 * 1024, 1 * MB)      # fresh (miss) blob sizes
MIX = (("hit", 45), ("range", 15), ("head", 10), ("miss", 15), ("disconnect", 15))
BLOBTTL = "2m"
RSS_SLACK = (1.10, 4096)               # factor and KiB
FD_SLACK = 20
REQUEST_TIMEOUT = 30.0


def size_between(rnd, lo, hi):
    """A log-uniform size in [lo, hi]."""
    return int(lo * (hi / lo) ** rnd.random())


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = {}
        self.wrong = []
        self.errors = {}
        self.slowest = 0.0

    def note(self, op, ok, detail=None, took=0.0):
        with self.lock:
            self.ops[op] = self.ops.get(op, 0) + 1
            self.slowest = max(self.slowest, took)
            if not ok:
                self.errors[op] = self.errors.get(op, 0) + 1
                if detail and len(self.wrong) < 50:
                    self.wrong.append("%s: %s" % (op, detail))

    def total(self):
        with self.lock:
            return sum(self.ops.values()), sum(self.errors.values())


class Mix:
    """One client's loop of the mixed load."""

    def __init__(self, origin, cache, hot, stats, seed, stop):
        self.origin, self.cache, self.hot, self.stats = origin, cache, hot, stats
        self.rnd = random.Random(seed)
        self.stop = stop
        self.ops = [op for op, weight in MIX for _ in range(weight)]

    def fresh(self):
        data = self.rnd.randbytes(size_between(self.rnd, *FRESH_SIZES))
        return self.origin.upload_blob(REPO, data), data

    def one(self):
        op = self.rnd.choice(self.ops)
        d, data = self.rnd.choice(self.hot)
        uri = blob_uri(REPO, d)
        t0 = time.monotonic()
        if op == "hit":
            b = h.get_body(self.cache.port, uri, timeout=REQUEST_TIMEOUT)
            ok = b.status == 200 and b.complete and b.sha256 == d
        elif op == "range":
            a = self.rnd.randrange(len(data))
            z = min(len(data), a + self.rnd.randrange(1, 4 * MB))
            b = h.get_body(self.cache.port, uri, headers={"Range": "bytes=%d-%d" % (a, z - 1)},
                           timeout=REQUEST_TIMEOUT)
            ok = b.status == 206 and b.complete and b.sha256 == h.sha256_digest(data[a:z])
        elif op == "head":
            b = h.get_body(self.cache.port, uri, method="HEAD", timeout=REQUEST_TIMEOUT)
            ok = b.status == 200 and b.content_length == len(data)
        elif op == "miss":
            d, data = self.fresh()
            t0 = time.monotonic()
            b = h.get_body(self.cache.port, blob_uri(REPO, d), timeout=REQUEST_TIMEOUT)
            ok = b.status == 200 and b.complete and b.sha256 == d
        else:
            if self.rnd.random() < 0.25:
                d, data = self.fresh()
                uri = blob_uri(REPO, d)
            status, got = partial_get(self.cache.port, uri, self.rnd.randrange(len(data)),
                                      reset=self.rnd.random() < 0.5, timeout=REQUEST_TIMEOUT)
            self.stats.note(op, status == 200, None if status == 200 else "status %d" % status,
                            time.monotonic() - t0)
            return
        self.stats.note(op, ok, None if ok else repr(b), time.monotonic() - t0)

    def run(self):
        while not self.stop.is_set():
            try:
                self.one()
            except Exception as e:  # counted as a failure, and the load goes on
                self.stats.note("exception", False, repr(e))
                self.stop.wait(0.1)


def sample(cache, t0, stats):
    status = proc_status(cache.proc.pid)
    kinds = fd_kinds(cache.proc.pid)
    ops, errors = stats.total()
    return {"t": time.monotonic() - t0, "rss": rss_kib(cache.proc.pid),
            "fds": sum(kinds.values()), "sockets": kinds["socket"], "files": kinds["file"],
            "threads": int(status["Threads"]), "ops": ops, "errors": errors}


def thirds_verdict(samples, key, flat):
    """(first third's max, last third's max, flat?) of samples[key]."""
    n = len(samples)
    first = max(s[key] for s in samples[:max(1, n // 3)])
    last = max(s[key] for s in samples[n - max(1, n // 3):])
    return first, last, flat(first, last)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds left out of the verdict (default: 1/10 of the run, at "
                         "least 30 s)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(30.0, duration / 10)

    def body(run):
        rnd = random.Random(args.seed)
        origin = run.origin()
        hot = []
        for _ in range(HOT_BLOBS):
            data = rnd.randbytes(size_between(rnd, *HOT_SIZES))
            hot.append((origin.upload_blob(REPO, data), data))
        cache = run.cache([origin], blobttl=BLOBTTL)
        h.log("soak: %.0f min, %d clients, warm-up %.0f s, a sample every %.0f s; cache pid "
              "%d, binary %s" % (args.minutes, args.clients, warmup, args.interval,
                                 cache.proc.pid, h.binary_path()))
        stats = Stats()
        stop = threading.Event()
        workers = [threading.Thread(target=Mix(origin, cache, hot, stats, args.seed * 100 + i,
                                               stop).run, daemon=True)
                   for i in range(args.clients)]
        samples = []
        t0 = time.monotonic()
        print("%8s %10s %5s %8s %6s %8s %9s %7s" % ("t (s)", "RSS (KiB)", "fds", "sockets",
                                                   "files", "threads", "requests", "errors"),
              flush=True)
        for w in workers:
            w.start()
        try:
            while time.monotonic() - t0 < duration:
                time.sleep(min(args.interval, max(0.0, duration - (time.monotonic() - t0))))
                cache.check_alive()
                s = sample(cache, t0, stats)
                samples.append(s)
                print("%8.0f %10d %5d %8d %6d %8d %9d %7d" % (
                    s["t"], s["rss"], s["fds"], s["sockets"], s["files"], s["threads"], s["ops"],
                    s["errors"]), flush=True)
        finally:
            stop.set()
            for w in workers:
                w.join(REQUEST_TIMEOUT + 10)
        after = [s for s in samples if s["t"] >= warmup]
        h.log("operations: %s" % ", ".join("%s %d" % kv for kv in sorted(stats.ops.items())))
        h.log("failed: %s; slowest %.2f s" % (stats.errors or "none", stats.slowest))
        rss = thirds_verdict(after, "rss", lambda a, b: b <= a * RSS_SLACK[0] + RSS_SLACK[1])
        fds = thirds_verdict(after, "fds", lambda a, b: b <= a + FD_SLACK)
        h.log("verdict: RSS %s (first third after warm-up: max %d KiB, last third: max %d KiB); "
              "fds %s (max %d, then max %d); %d samples after a %.0f s warm-up" % (
                  "FLAT" if rss[2] else "GROWING", rss[0], rss[1],
                  "FLAT" if fds[2] else "GROWING", fds[0], fds[1], len(after), warmup))

        def no_wrong_response():
            if stats.wrong:
                raise AssertionError("failed responses (first %d):\n  %s" % (
                    len(stats.wrong), "\n  ".join(stats.wrong)))

        run.check("every completed response was right", no_wrong_response)
        run.check("RSS flat after the warm-up", lambda: h.expect(rss[2], "RSS grew from %d "
                                                                 "to %d KiB" % rss[:2]))
        run.check("open fds flat after the warm-up", lambda: h.expect(fds[2], "fds grew from "
                                                                      "%d to %d" % fds[:2]))

    h.main("soak", body)


if __name__ == "__main__":
    main()
