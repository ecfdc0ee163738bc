"""End-to-end: drop-in policies that try to stop the cache (issue 14), loaded by SIGHUP
while it serves a real origin (Docker Distribution).

Two caches, so that each attack shows on its own:

  1. Finalizers. Lua runs __gc finalizers with hooks off, so a looping one was beyond
     the instruction budget: it hung the cache in collectgarbage() or, kept in a global,
     in lua_close at the next SIGHUP, and SIGTERM was never handled. Now setmetatable
     refuses a metatable with __gc:
       - a drop-in that keeps a looping finalizer in a global does not load at SIGHUP
         (the error names the file and line); the running policies stay, the cache
         serves, and the next SIGHUP reloads;
       - a select_upstream that makes one on every call fails that call: every fresh
         blob is still fetched and served right, and SIGHUP still reloads.
  2. A pattern that backtracks, on a client-controlled field. A format_log that matches
     the User-Agent with "^(.-)/(.-)/(.-)/(.-)%(" takes time n^3 and more in the length
     of a User-Agent made of slashes: minutes per request for 2,000 of them, during
     which the loop served no one. Now pattern matching is charged to the budget: while
     an attacker sends such requests, another client's misses and hits are each answered
     within a bound, the attacker's own requests are answered too (with the built-in
     access-log line), the failures are logged and counted in
     content_cache_policy_errors_total, and SIGHUP still reloads.
Both caches must then stop on SIGTERM with exit 0 (Run.finish).

Run alone from the repository root:
    CC_BINARY=build/content-cache python3 tests/e2e/test_policy_sandbox.py
"""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_faults import (blob_uri, expect_hit, expect_miss, expect_whole,  # noqa: E402
                        stderr_lines)

REPO = "e2e/sandbox"
BLOB_SIZE = 256 * 1024 + 7
SERVE_BOUND = 3.0 * h.SCALE       # seconds for one request of a client while attacked
RELOAD_BOUND = h.LOG_TIMEOUT      # seconds for SIGHUP to be logged as done
ATTACKS = 20                      # requests with the pathological User-Agent
ATTACK_AGENT = "/" * 2000

KEEP_FINALIZER = """-- Keeps a finalizer that never returns in a global: it would run in lua_close.
KEEP = setmetatable({}, { __gc = function() while true do end end })
return {}
"""

FINALIZER_PER_CALL = """-- Makes a finalizer that never returns on every call, and collects it.
local default = require("default")
return {
    select_upstream = function(req, upstream)
        setmetatable({}, { __gc = function() while true do end end })
        collectgarbage()
        return default.select_upstream(req, upstream)
    end,
}
"""

AGENT_PATTERN = """-- Tags requests by the product in their User-Agent; the pattern backtracks.
local default = require("default")
return {
    format_log = function(entry)
        local product = (entry.user_agent or ""):match("^(.-)/(.-)/(.-)/(.-)%(")
        return default.format_log(entry) .. " product=" .. tostring(product)
    end,
}
"""


def policy_errors(cache, hook):
    r = h.request(cache.debug_port, "GET", "/metrics")
    m = re.search(r'^content_cache_policy_errors_total\{hook="%s"\} (\d+)' % hook,
                  r.body.decode(), re.M)
    return int(m.group(1)) if m else None


def sighup(cache, expect_reloaded=True):
    """Sends SIGHUP and waits (bounded) for the cache to log the outcome; returns the
    new stderr lines."""
    done = "SIGHUP: policies reloaded" if expect_reloaded else "SIGHUP: policies not reloaded"
    before = len(stderr_lines(cache, done))
    os.kill(cache.proc.pid, signal.SIGHUP)
    h.wait_until(lambda: len(stderr_lines(cache, done)) > before, RELOAD_BOUND,
                 "%r in the log after SIGHUP" % done)
    return stderr_lines(cache, done)[before:]


def timed_get(cache, uri, digest, size, what):
    """A GET answered whole and right within SERVE_BOUND; returns its duration."""
    b = h.get_body(cache.port, uri, timeout=SERVE_BOUND + 5)
    took = time.monotonic() - b.started
    expect_whole(b, digest, size, what)
    expect(took <= SERVE_BOUND, "%s: took %.2f s (bound %.1f s)" % (what, took, SERVE_BOUND))
    return took


def body(run):
    work = run.work
    origin = run.origin()
    blobs = [origin.upload_blob(REPO, os.urandom(BLOB_SIZE)) for _ in range(16)]
    hit = blobs.pop()
    fresh = iter(blobs)

    def warm(cache):
        uri = blob_uri(REPO, hit)
        expect_miss(cache, uri, hit, BLOB_SIZE, "the blob that later checks hit")
        expect_hit(cache, uri, hit, BLOB_SIZE)

    # ---- 1. finalizers ------------------------------------------------------------------
    gc_dir = work.sub("gc-policies", mkdir=True)
    gc_cache = run.cache([origin], name="cache-gc",
                         extra_downstream_yaml="        policydir: %s\n" % gc_dir)
    run.check("finalizers: setup: a blob is fetched and stored, then hit", warm, gc_cache)

    def global_finalizer_not_loaded():
        path = os.path.join(gc_dir, "30-keep.lua")
        with open(path, "w") as f:
            f.write(KEEP_FINALIZER)
        lines = sighup(gc_cache, expect_reloaded=False)
        expect("30-keep.lua:2:" in lines[-1] and "__gc is not allowed" in lines[-1],
               "the refusal names the file, the line and __gc: %s" % lines[-1])
        timed_get(gc_cache, blob_uri(REPO, hit), hit, BLOB_SIZE, "a hit after the refusal")
        os.unlink(path)
        sighup(gc_cache)
        timed_get(gc_cache, blob_uri(REPO, hit), hit, BLOB_SIZE, "a hit after the reload")

    run.check("finalizers: a drop-in that keeps a looping __gc finalizer in a global does not "
              "load at SIGHUP; the cache serves, and the next SIGHUP reloads",
              global_finalizer_not_loaded)

    def finalizer_per_call():
        with open(os.path.join(gc_dir, "20-gc.lua"), "w") as f:
            f.write(FINALIZER_PER_CALL)
        sighup(gc_cache)
        for i in range(3):
            d = next(fresh)
            timed_get(gc_cache, blob_uri(REPO, d), d, BLOB_SIZE, "fresh blob %d" % i)
        failed = stderr_lines(gc_cache, "policy: select_upstream failed")
        expect(failed and "__gc is not allowed" in failed[0],
               "the failure is logged and says why: %r" % failed[:1])
        sighup(gc_cache)
        timed_get(gc_cache, blob_uri(REPO, hit), hit, BLOB_SIZE, "a hit after the reload")

    run.check("finalizers: a select_upstream that makes a looping __gc finalizer on every call "
              "fails that call only: fresh blobs are served right, and SIGHUP still reloads",
              finalizer_per_call)

    # ---- 2. a pattern that backtracks on the User-Agent ------------------------------------
    ua_dir = work.sub("ua-policies", mkdir=True)
    ua_cache = h.Cache(work, [origin], name="cache-ua", debug=True,
                       extra_downstream_yaml="        policydir: %s\n" % ua_dir)
    run.caches.append(ua_cache)
    ua_cache.start()
    h.wait_until(lambda: h.port_open(ua_cache.debug_port), h.START_TIMEOUT, "the debug server")
    run.check("pattern: setup: a blob is fetched and stored, then hit", warm, ua_cache)

    def attacked_while_serving():
        with open(os.path.join(ua_dir, "40-agent.lua"), "w") as f:
            f.write(AGENT_PATTERN)
        sighup(ua_cache)
        errors_before = policy_errors(ua_cache, "format_log")
        hit_uri = blob_uri(REPO, hit)

        def attacker():
            took = []
            for _ in range(ATTACKS):
                t0 = time.monotonic()
                r = h.request(ua_cache.port, "GET", hit_uri, headers={"User-Agent": ATTACK_AGENT},
                              timeout=SERVE_BOUND + 5)
                took.append(time.monotonic() - t0)
                expect_eq(r.status, 200, "an attacking request's status")
            return took

        def client():
            took = []
            for i in range(4):
                d = next(fresh)
                took.append(timed_get(ua_cache, blob_uri(REPO, d), d, BLOB_SIZE,
                                      "a client's miss %d during the attack" % i))
                took.append(timed_get(ua_cache, hit_uri, hit, BLOB_SIZE,
                                      "a client's hit %d during the attack" % i))
            return took

        attacks, served = h.parallel([attacker, client], timeout=4 * SERVE_BOUND * ATTACKS)
        h.log("  attacking requests: slowest %.3f s; the client's: slowest %.3f s"
              % (max(attacks), max(served)))
        expect(max(attacks) <= SERVE_BOUND, "an attacking request took %.2f s" % max(attacks))
        # Every attacking request is in the access log, with the built-in line (which
        # keeps the first KiB of a User-Agent).
        h.wait_until(lambda: sum(1 for e in ua_cache.access_lines()
                                 if e.get("http.request.useragent", "").startswith("/" * 512)
                                 and "product=" not in e["_line"]) >= ATTACKS,
                     h.LOG_TIMEOUT, "the access-log lines of the attacking requests")
        failed = stderr_lines(ua_cache, "policy: format_log failed")
        expect(failed and "instruction budget exceeded" in failed[0],
               "the failure is logged and says why: %r" % failed[:1])
        errors = policy_errors(ua_cache, "format_log")
        expect(errors is not None and errors - errors_before >= ATTACKS,
               "content_cache_policy_errors_total{hook=\"format_log\"} went from %s to %s"
               % (errors_before, errors))
        # A client with an ordinary User-Agent still gets the drop-in's line.
        timed_get(ua_cache, hit_uri, hit, BLOB_SIZE, "a hit after the attack")
        h.wait_until(lambda: any("product=" in e["_line"] for e in ua_cache.access_lines()),
                     h.LOG_TIMEOUT, "an access-log line written by the drop-in")

    run.check("pattern: while requests whose User-Agent makes format_log's pattern backtrack "
              "come in, another client's misses and hits are each served within %.0f s, the "
              "attacker's too, and the failures are logged and counted" % SERVE_BOUND,
              attacked_while_serving)

    def reload_after_attack():
        sighup(ua_cache)
        timed_get(ua_cache, blob_uri(REPO, hit), hit, BLOB_SIZE, "a hit after the reload")

    run.check("pattern: SIGHUP reloads after the attack, and the cache serves", reload_after_attack)


if __name__ == "__main__":
    h.main("test_policy_sandbox", body)
