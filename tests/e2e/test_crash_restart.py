"""End-to-end: the cache's process under abuse (issue "Robustness").

  1. kill -9 under load, 20 times in a row, each time restarted on the same storage
     root. The origin is Docker Distribution behind fake_upstream.py's paced proxy, so
     that fetches are caught mid-way; the load is concurrent GETs (some ranged) and
     HEADs of a dozen blobs, many of them cold (between rounds, while no cache runs, two
     thirds of the stored blobs are deleted, as an eviction would). Checked: no partial
     blob is ever served (every 200 or 206 that completes has the right bytes); right
     after each start the temporary directory and the fetch locks are gone (and the cache
     says how many files it removed) and every file under blobs/ holds its digest's bytes. When the
     binary has `fsck` (see `content-cache --help`), it runs after the loop and must
     find nothing bad.
  2. Broken drop-in policies (the downstream middleware's `policydir`) under load: three
     caches, each with the three hooks select_upstream, format_log and blob_ttl broken in
     the three ways (raising an error, looping forever, allocating without end), so that
     every hook fails every way in one of them. Serving goes on (every response right,
     in bounded time, every request logged), and stderr shows the policy failures, at
     most one line per hook per 10 s.

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_crash_restart.py
"""

import os
import random
import re
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_faults import (MB, blob_uri, expect_store_consistent, stderr_lines,  # noqa: E402
                        wait_tmp_empty)
from fake_upstream import FakeUpstream  # noqa: E402

REPO = "e2e/crash"
BLOB_SIZES = [512 * 1024 + 1, 1 * MB + 3, 2 * MB + 5, 3 * MB + 7, 4 * MB + 11, 6 * MB + 13,
              1 * MB + 17, 2 * MB + 19, 5 * MB + 23, 8 * MB + 29, 3 * MB + 31, 700 * 1024]
PROXY_RATE = 6e6             # bytes/s per response: a miss of a few MB takes about a second
ROUNDS = 20
CLIENTS = 6                  # concurrent clients during a round
LOAD_MIN, LOAD_MAX = 0.6, 2.0   # seconds of load before the kill -9
EVICT_SHARE = 2 / 3          # between rounds, this share of the stored blobs is deleted
CLIENT_TIMEOUT = 10.0 * h.SCALE

POLICY_LOAD = 12.0           # seconds of load on each cache with broken policies
POLICY_CLIENTS = 3
POLICY_BOUND = 10.0 * h.SCALE   # seconds for one request to a cache with broken policies
POLICY_LOG_INTERVAL = 10.0   # lua/policy.h: one failure line per hook per this long
POLICY_BLOBTTL = "8s"        # the expiry sweep (which calls blob_ttl) runs every 2 s
HOOKS = ("select_upstream", "format_log", "blob_ttl")
# The body of each broken hook (a function of any arguments).
BROKEN = {
    "error": 'error("this policy is broken on purpose")',
    "loop": "local n = 0\n    while true do n = n + 1 end",
    "alloc": ("local i = 0\n    while true do\n        i = i + 1\n"
              "        hoard[#hoard + 1] = string.rep(\"x\", 65536) .. i\n    end"),
}
# Cache k breaks hook j the ways[(j + k) % 3] way: every hook fails every way once.
WAYS = ("error", "loop", "alloc")


def blob_bytes(size, seed):
    return random.Random(seed).randbytes(size)


class Load:
    """CLIENTS threads that GET (a quarter of them ranged) and HEAD random blobs of
    `blobs` ({digest: bytes}) from port() until stopped, and record what they got.
    A response that completes must be right; anything else (a reset, a refused
    connection, a 5xx) is counted, not judged."""

    def __init__(self, port, blobs, clients, seed, strict=False, bound=CLIENT_TIMEOUT):
        self.port = port
        self.blobs = blobs
        self.digests = sorted(blobs)
        self.clients = clients
        self.rnd = random.Random(seed)
        self.strict = strict   # every response must be a right, complete 2xx
        self.bound = bound
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.counts = {}
        self.wrong = []
        self.slowest = 0.0
        self.threads = []

    def _note(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def _one(self, rnd):
        d = rnd.choice(self.digests)
        data = self.blobs[d]
        uri = blob_uri(REPO, d)
        kind = rnd.random()
        t0 = time.monotonic()
        if kind < 0.15:
            b = h.get_body(self.port, uri, method="HEAD", timeout=self.bound)
            ok = b.status == 200 and b.content_length == len(data)
            label = "HEAD"
        elif kind < 0.4:
            start = rnd.randrange(len(data))
            end = min(len(data), start + rnd.randrange(1, 2 * MB))
            b = h.get_body(self.port, uri, headers={"Range": "bytes=%d-%d" % (start, end - 1)},
                           timeout=self.bound)
            want = h.sha256_digest(data[start:end])
            ok = b.status == 206 and b.complete and b.sha256 == want
            if b.complete and ((b.status == 206 and b.sha256 != want) or
                               (b.status == 200 and b.sha256 != d)):
                self.wrong.append("range %d-%d of %s: %r" % (start, end - 1, d, b))
            label = "range"
        else:
            b = h.get_body(self.port, uri, timeout=self.bound)
            ok = b.status == 200 and b.complete and b.sha256 == d
            if b.complete_wrong_200(d):
                self.wrong.append("GET %s: %r" % (d, b))
            label = "GET"
        took = time.monotonic() - t0
        with self.lock:
            self.slowest = max(self.slowest, took)
        if ok:
            self._note("%s ok" % label)
        elif b.status is None:
            self._note("%s no answer" % label)
        elif b.status in (200, 206) and not b.complete:
            self._note("%s cut" % label)
        else:
            self._note("%s %s" % (label, b.status))
        if self.strict and not ok:
            self.wrong.append("%s of %s: %r after %.1f s" % (label, d, b, took))
        return ok

    def _run(self, i):
        rnd = random.Random(self.rnd.random() + i)
        while not self.stop_flag.is_set():
            try:
                if not self._one(rnd):
                    self.stop_flag.wait(0.02)  # the cache may be dead: do not spin
            except Exception as e:  # a client bug: reported, not swallowed
                self.wrong.append("client raised %r" % e)
                self.stop_flag.wait(0.05)

    def start(self):
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(self.bound + 10)
        expect(not any(t.is_alive() for t in self.threads), "a load client is stuck")

    def summary(self):
        return ", ".join("%s %d" % kv for kv in sorted(self.counts.items()))


def body(run):
    work = run.work
    origin = run.origin()
    blobs = {}
    for i, size in enumerate(BLOB_SIZES):
        data = blob_bytes(size, 100 + i)
        blobs[origin.upload_blob(REPO, data)] = data
    proxy = FakeUpstream(work, name="paced-proxy", role="proxy", target=origin,
                         rate=PROXY_RATE).start()
    root = work.sub("crash-storage")

    # ---- 1. kill -9 under load, 20 times ----------------------------------------------
    rnd = random.Random(20240611)
    totals = {}
    tmp_left = []
    state = {"cache": None}

    def check_fresh_start(cache, left_before, i):
        # store_open runs before the listener: the directory is clean once the port is.
        names = os.listdir(cache.tmp_dir) if os.path.isdir(cache.tmp_dir) else []
        expect_eq(names, [], "round %d: temporary files right after the start" % i)
        # The fetch locks of the killed process (a dead owner on this host) are stale.
        locks = os.path.join(os.path.dirname(cache.tmp_dir), "fetching")
        names = os.listdir(locks) if os.path.isdir(locks) else []
        expect_eq(names, [], "round %d: fetch locks right after the start" % i)
        if left_before:
            said = h.wait_until(lambda: stderr_lines(cache, "unfinished temporary blob files"),
                                h.LOG_TIMEOUT, "the line about the removed temporary files")
            expect("removed %d unfinished" % left_before in said[0],
                   "round %d: %d temporary files were left, the cache says: %s"
                   % (i, left_before, said[0]))
        expect_store_consistent(cache, "round %d, right after the start" % i)

    def crash_loop():
        wrong = []
        left = 0
        for i in range(1, ROUNDS + 1):
            cache = run.cache([proxy.url], name="cache-%02d" % i, storage=root)
            state["cache"] = cache
            check_fresh_start(cache, left, i)
            load = Load(cache.port, blobs, CLIENTS, seed=i).start()
            time.sleep(rnd.uniform(LOAD_MIN, LOAD_MAX))
            fetching = len(cache.tmp_files())
            expect_eq(cache.kill(), -9, "round %d: exit of the killed cache" % i)
            load.stop()
            wrong += ["round %d: %s" % (i, w) for w in load.wrong]
            for k, v in load.counts.items():
                totals[k] = totals.get(k, 0) + v
            left = len(cache.tmp_files())
            tmp_left.append(left)
            stored = [d for d in blobs if os.path.exists(cache.blob_file(d))]
            h.log("  round %2d: %s; killed with %d fetches writing, %d temporary files "
                  "left, %d of %d blobs stored" % (i, load.summary(), fetching, left,
                                                   len(stored), len(blobs)))
            expect_store_consistent(cache, "round %d, after kill -9" % i)
            # An eviction while no cache runs keeps some blobs cold for the next round.
            for d in rnd.sample(stored, int(len(stored) * EVICT_SHARE)):
                shutil.rmtree(os.path.dirname(cache.blob_file(d)))
        h.log("  all rounds: %s; temporary files left by the kills: %s" % (
            ", ".join("%s %d" % kv for kv in sorted(totals.items())), tmp_left))
        expect(not wrong, "complete responses with wrong bytes:\n  " + "\n  ".join(wrong[:10]))
        expect(totals.get("GET ok", 0) > ROUNDS, "too few complete GETs to mean anything: %r"
               % totals)
        expect(any(tmp_left), "no kill caught a fetch mid-way (temporary files left: %r): "
               "the rounds tested only hits" % tmp_left)

    run.check("kill -9 under load, %d rounds on one storage root: never a wrong complete "
              "body; after every start the tmp dir is empty and every stored blob is right"
              % ROUNDS, crash_loop)

    def after_the_loop():
        cache = run.cache([proxy.url], name="cache-after", storage=root)
        wait_tmp_empty(cache, "after the loop")
        load = Load(cache.port, blobs, CLIENTS, seed=99, strict=True).start()
        time.sleep(2.0)
        load.stop()
        h.log("  after the loop: %s" % load.summary())
        expect(not load.wrong, "wrong or failed responses from a healthy cache:\n  "
               + "\n  ".join(load.wrong[:10]))
        for d, data in blobs.items():
            b = h.get_body(cache.port, blob_uri(REPO, d), timeout=CLIENT_TIMEOUT)
            expect(b.status == 200 and b.complete and b.sha256 == d, "GET %s: %r" % (d, b))
        wait_tmp_empty(cache, "after every blob was fetched")
        expect_store_consistent(cache, "after the loop")
        expect_eq(cache.stop(), 0, "exit code on SIGTERM")
        state["cache"] = cache

    run.check("after the loop: a cache on the same root serves every blob right, and the "
              "store is consistent", after_the_loop)

    def fsck():
        cp = h.run_binary(["fsck", state["cache"].config_path], timeout=h.CLIENT_TIMEOUT)
        out = cp.stdout + cp.stderr
        h.log("  content-cache fsck exited %d:\n%s" % (cp.returncode, out[-2000:]))
        expect_eq(cp.returncode, 0, "fsck exit code; output:\n" + out)
        expect(re.search(r"\b%d blobs checked" % len(blobs), out), "fsck did not check the %d "
               "blobs:\n%s" % (len(blobs), out))
        expect(re.search(r"\b0 bad\b", out) and "mismatch" not in out.lower(),
               "fsck reports bad blobs:\n" + out)

    if re.search(r"\bfsck\b", h.run_binary(["--help"]).stdout):
        run.check("content-cache fsck after the loop: nothing bad", fsck)
    else:
        run.skip("content-cache fsck after the loop", "this binary has no fsck command "
                 "(content-cache --help does not list it)")

    # ---- 2. Broken policies under load -----------------------------------------------
    def policy_dir(k):
        path = work.sub("policies-%d" % k, mkdir=True)
        text = ["-- Broken on purpose: content-cache must serve on with the built-in "
                "defaults.", "hoard = {}", "return {"]
        for j, hook in enumerate(HOOKS):
            way = WAYS[(j + k) % len(WAYS)]
            text.append("  %s = function(...) -- %s\n    %s\n  end," % (hook, way, BROKEN[way]))
        text.append("}")
        with open(os.path.join(path, "50-broken.lua"), "w") as f:
            f.write("\n".join(text) + "\n")
        return path

    caches = []
    for k in range(len(WAYS)):
        caches.append(run.cache([origin], name="cache-policies-%d" % k, blobttl=POLICY_BLOBTTL,
                                extra_downstream_yaml="        policydir: %s\n"
                                % h._yaml_str(policy_dir(k))))

    def broken_policies():
        loads = [Load(c.port, blobs, POLICY_CLIENTS, seed=k, strict=True, bound=POLICY_BOUND)
                 for k, c in enumerate(caches)]
        t0 = time.monotonic()
        for ld in loads:
            ld.start()
        time.sleep(POLICY_LOAD)
        for ld in loads:
            ld.stop()
        took = time.monotonic() - t0
        problems = []
        for k, (c, ld) in enumerate(zip(caches, loads)):
            ways = dict((hook, WAYS[(j + k) % len(WAYS)]) for j, hook in enumerate(HOOKS))
            h.log("  %s (%s): %s; slowest %.2f s" % (
                c.name, ", ".join("%s %s" % kv for kv in ways.items()), ld.summary(),
                ld.slowest))
            problems += ["%s: %s" % (c.name, w) for w in ld.wrong]
            requests = sum(ld.counts.values())
            logged = h.wait_for_count(lambda c=c: len(c.access_lines()), requests,
                                      what="%s's access-log lines" % c.name) \
                if requests else 0
            if logged < requests:
                problems.append("%s: %d requests, %d access-log lines" % (c.name, requests,
                                                                          logged))
            for hook in HOOKS:
                lines = stderr_lines(c, "policy: %s failed" % hook)
                most = int(took // POLICY_LOG_INTERVAL) + 2
                h.log("    %s (%s): %d lines%s" % (hook, ways[hook], len(lines),
                                                   ": " + lines[-1][:160] if lines else ""))
                if not lines:
                    problems.append("%s: no 'policy: %s failed' line in stderr" % (c.name, hook))
                elif len(lines) > most:
                    problems.append("%s: %d lines about %s in %.0f s: not rate-limited"
                                    % (c.name, len(lines), hook, took))
            expect_store_consistent(c, c.name)
        expect(not problems, "\n  ".join(problems))

    run.check("three caches with select_upstream, format_log and blob_ttl broken every way "
              "(error, endless loop, endless allocation): every response right within "
              "%.0f s, every request logged, policy failures logged at most once per hook per "
              "%.0f s" % (POLICY_BOUND, POLICY_LOG_INTERVAL), broken_policies)
    proxy.stop()


if __name__ == "__main__":
    h.main("crash_restart", body)
