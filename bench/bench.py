#!/usr/bin/env python3
"""The side-by-side benchmark: content-cache against nginx and Docker Distribution's proxy.

Run it through bench/run.sh, which builds the release binary and the sha256 program,
raises `ulimit -n` and then runs this file. See bench/README.md for what each scenario
measures and how.

Every scenario runs its servers in turn, round after round (the order rotates each
round), and reports the median. Figures that come from failed requests are never
reported: a wrong status or size is an ERROR in the table, and the exit code is 1.
Python standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import clients, report, servers  # noqa: E402
from benchlib.clients import BenchError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOB_REPO = "bench/blobs"
NOT_AVAILABLE = "not available yet"

MODES = {
    # rounds, wrk seconds, big blob MiB, cold blob MiB, sha256 MiB, idle connections
    "full": dict(rounds=3, wrk_seconds=5, big_mib=200, cold_mib=200, sha_mib=1024,
                 idle=10000, openssl_seconds=3, redirect_requests=400, policy_misses=300),
    "quick": dict(rounds=1, wrk_seconds=1, big_mib=8, cold_mib=8, sha_mib=64, idle=500,
                  openssl_seconds=1, redirect_requests=50, policy_misses=40),
}

# A scenario may run at most this many rounds again because they were disturbed.
MAX_RETRIES_PER_SCENARIO = 2

SCENARIOS = ["hit1k", "big16", "rss", "idle", "cold1", "cold32", "sha256", "tls", "policy",
             "redirect", "workers"]


def log(msg):
    print("bench: %s" % msg, flush=True)


def median(values):
    return statistics.median(values) if values else None


def rotated(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def blob_url(server_url, digest):
    return "%s/v2/%s/blobs/%s" % (server_url, BLOB_REPO, digest)


def wait_for_file(path, size, timeout=60.0):
    """Waits until `path` exists with `size` bytes (a blob committed to a storage)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_size == size:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise BenchError("%s did not appear with %d bytes within %.0f s" % (path, size, timeout))


def verify_body(url, digest, insecure=False):
    """GETs url and checks the body's sha256 against digest (curl into sha256sum)."""
    argv = ["curl", "-s", "-S", "-f"] + (["-k"] if insecure else []) + [url]
    curl = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out = subprocess.run(["sha256sum"], stdin=curl.stdout, capture_output=True, text=True)
    curl.stdout.close()
    if curl.wait() != 0 or "sha256:" + out.stdout.split()[0] != digest:
        raise BenchError("%s: body does not match %s" % (url, digest))


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = MODES["quick" if args.quick else "full"]
        if args.rounds:
            self.mode["rounds"] = args.rounds
        self.rounds = self.mode["rounds"]
        self.work = args.work or tempfile.mkdtemp(prefix="cc-bench-")
        os.makedirs(self.work, exist_ok=True)
        self.results = {}   # scenario -> {"status": ok|error|na, ...}
        self.rows = []
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.env = {}
        self.noise = {}  # scenario -> others' CPU percent during each try of each round
        self.retries_left = args.noise_retries if args.noise_retries is not None else (
            0 if args.quick else 8)
        self.profile_done = False
        self.profile_text = None
        self.interrupted = False

    # --- setup ----------------------------------------------------------------------

    def setup(self):
        m = self.mode
        self.cert, self.key = self.make_certificate()
        log("origin: docker-registry")
        self.origin = servers.Origin(self.work).start()
        log("generating and pushing blobs: 1 KiB, %d MiB (hits), %d MiB (cold)"
            % (m["big_mib"], m["cold_mib"]))
        self.blobs = {}
        for name, size in (("small", 1024), ("big", m["big_mib"] << 20),
                           ("cold", m["cold_mib"] << 20)):
            data = os.urandom(size)
            self.blobs[name] = (self.origin.upload_blob(BLOB_REPO, data), size)
            del data
        self.nginx = servers.Nginx(self.work, self.origin.storage, self.cert, self.key).start()
        self.dist = servers.DistProxy(self.work, self.origin.url).start()
        self.cache = servers.Cache(self.work, self.args.binary, self.origin.url).start()
        log("servers: origin pid %d :%d, nginx pid %d :%d (tls :%d), distribution proxy "
            "pid %d :%d, content-cache pid %d :%d" % (
                self.origin.proc.pid, self.origin.port, self.nginx.proc.pid, self.nginx.port,
                self.nginx.tls_port, self.dist.proc.pid, self.dist.port, self.cache.proc.pid,
                self.cache.port))
        self.warm([self.dist, self.cache], ["small", "big"])
        for srv in (self.nginx, self.dist, self.cache):
            verify_body(blob_url(srv.url, self.blobs["big"][0]), self.blobs["big"][0])

    def make_certificate(self):
        cert, key = os.path.join(self.work, "tls.crt"), os.path.join(self.work, "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                        key, "-out", cert], check=True, capture_output=True, timeout=30)
        return cert, key

    def warm(self, caches, names, insecure=False):
        """Pulls each blob once through each cache and waits until it is on its disk."""
        for srv in caches:
            for name in names:
                digest, size = self.blobs[name]
                clients.curl_get(blob_url(srv.url, digest), size, insecure=insecure)
                wait_for_file(servers.blob_path(srv.storage, digest), size)

    # --- running ----------------------------------------------------------------------

    def run(self):
        self.collect_environment()
        self.setup()
        only = set(self.args.only.split(",")) if self.args.only else None
        for name in SCENARIOS:
            if only and name not in only:
                continue
            log("scenario %s" % name)
            t0 = time.monotonic()
            cpu0 = CpuAccount()
            try:
                getattr(self, "scenario_" + name)()
            except BenchError as e:
                log("scenario %s failed: %s" % (name, e))
                self.results[name] = {"status": "error", "error": str(e)}
            other = cpu0.others_percent()
            if name in self.results:
                self.results[name]["others_cpu_percent"] = other
                if name in self.noise:
                    self.results[name]["others_per_try"] = self.noise[name]
            log("scenario %s took %.1f s; processes not ours used %.0f%% of the CPUs"
                % (name, time.monotonic() - t0, other))
            self.cache.truncate_access_log()
        self.env["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    def alternate(self, name, servers_list, measure):
        """Calls measure(server) for each server, rounds times, rotating the order; returns
        {server name: [values]}."""
        values = {s.name: [] for s in servers_list}
        for r in range(self.rounds):
            def one_round():
                got = {}
                for srv in rotated(servers_list, r):
                    got[srv.name] = measure(srv)
                    log("  %s round %d %s: %s" % (name, r + 1, srv.name,
                                                  report.short(got[srv.name])))
                return got
            for server_name, value in self.quietly(name, one_round).items():
                values[server_name].append(value)
        return values

    def quietly(self, name, fn):
        """Runs fn() and returns what it returns. When processes outside the benchmark used
        more than --max-others percent of the CPUs meanwhile, waits for the machine to
        quiet down and runs fn() again, while the run's --noise-retries last; the figures
        of the last try are kept either way, and each try's share is recorded."""
        while True:
            account = CpuAccount()
            result = fn()
            others = account.others_percent()
            self.noise.setdefault(name, []).append(round(others))
            retried = len(self.noise[name]) - 1
            if others <= self.args.max_others or self.retries_left <= 0 or \
                    retried >= MAX_RETRIES_PER_SCENARIO:
                return result
            self.retries_left -= 1
            log("  %s: other processes used %.0f%% of the CPUs meanwhile: trying again "
                "(%d retries left for the run)" % (name, others, self.retries_left))
            wait_quiet(self.args.max_others, 90)

    # 1. Cached 1 KiB blob: requests per second.
    def scenario_hit1k(self):
        digest, _ = self.blobs["small"]
        secs = self.mode["wrk_seconds"]

        def measure(srv):
            profiler = None
            if srv is self.cache and self.args.profile and not self.profile_done:
                profiler = Profiler(self.work, secs)
            result = clients.wrk(blob_url(srv.url, digest), 2, 64, secs)
            if profiler is not None:
                self.profile_text = profiler.finish(self.cache.proc.pid)
                self.profile_done = True
            if srv is self.cache:
                self.cache.truncate_access_log()
            return result["rps"]

        self.results["hit1k"] = {"status": "ok", "seconds": secs, "values": self.alternate(
            "hit1k", [self.nginx, self.dist, self.cache], measure)}

    # 2. 16 concurrent downloads of the cached big blob: aggregate MB/s.
    def scenario_big16(self):
        digest, size = self.blobs["big"]

        def measure(srv):
            r = clients.curl_parallel(blob_url(srv.url, digest), 16, size)
            return 16 * size / r["wall"] / 1e6

        self.results["big16"] = {"status": "ok", "values": self.alternate(
            "big16", [self.nginx, self.dist, self.cache], measure)}

    # RSS of each server after scenarios 1 and 2.
    def scenario_rss(self):
        self.results["rss"] = {"status": "ok", "values": {
            s.name: [s.rss_kib() / 1024.0] for s in (self.nginx, self.dist, self.cache)}}

    # 10,000 idle keep-alive connections: RSS growth.
    def scenario_idle(self):
        count = self.mode["idle"]
        values, detail = {}, {}
        for srv in (self.nginx, self.dist, self.cache):
            before = srv.rss_kib()
            conns = clients.IdleConnections(srv.port, count).open()
            try:
                time.sleep(1.0)
                after = srv.rss_kib()
                still = conns.still_open()
            finally:
                conns.close()
            if still != count:
                raise BenchError("%s closed %d of %d idle connections" % (srv.name,
                                                                        count - still, count))
            values[srv.name] = [(after - before) / 1024.0]
            detail[srv.name] = {"before_mib": before / 1024.0, "after_mib": after / 1024.0,
                                "statuses": conns.statuses}
            log("  idle %s: %d connections, RSS %.1f -> %.1f MiB, statuses %s"
                % (srv.name, count, before / 1024.0, after / 1024.0, conns.statuses))
            time.sleep(0.5)
        self.results["idle"] = {"status": "ok", "count": count, "values": values,
                                "detail": detail}

    # 3. One cold big blob: total time and time to first byte, against the origin itself,
    # Distribution's proxy and nginx's proxy_cache.
    def cold_servers(self):
        if not hasattr(self, "cache_cold"):
            self.cache_cold = servers.Cache(self.work, self.args.binary, self.origin.url,
                                            name="cache-cold")
            self.dist_cold = servers.DistProxy(self.work, self.origin.url, name="distproxy-cold")
            self.nginx_cold = servers.NginxProxyCache(self.work, self.origin.url,
                                                      name="nginx-proxycache")
        return self.cache_cold, self.dist_cold

    def scenario_cold1(self):
        digest, size = self.blobs["cold"]
        cache_cold, dist_cold = self.cold_servers()

        def measure(srv):
            if srv is not self.origin:
                srv.restart_fresh()
            os.sync()  # the previous run's writes are not this run's disk traffic
            before = self.origin.settled_blob_gets(digest, quiet=0.5)
            r = clients.curl_get(blob_url(srv.url, digest), size)
            value = {"total": r["total"], "ttfb_ms": r["ttfb"] * 1000.0}
            if srv is cache_cold:
                value["fetches"] = self.origin.settled_blob_gets(digest) - before
            return value

        values = self.alternate("cold1", [self.origin, cache_cold, dist_cold, self.nginx_cold],
                                measure)
        self.nginx_cold.stop()
        self.results["cold1"] = {"status": "ok", "size": size, "values": values}

    def cold32_once(self, srv):
        """32 concurrent GETs of the cold blob from srv restarted on an empty storage: the
        wall clock, the upstream fetches (the origin's log) and the slowest first byte."""
        digest, size = self.blobs["cold"]
        srv.restart_fresh()
        os.sync()
        before = self.origin.settled_blob_gets(digest, quiet=0.5)
        # A peer's failed GETs (Distribution's proxy answers some of 32 cold requests with
        # a 500 now and then) are counted; content-cache's fail the scenario.
        peer = not isinstance(srv, servers.Cache)
        r = clients.curl_parallel(blob_url(srv.url, digest), 32, size, tolerate=peer)
        fetched = self.origin.settled_blob_gets(digest) - before
        out = {"wall": r["wall"], "fetches": fetched,
               "slowest_ttfb_ms": max(x["ttfb"] for x in r["results"]) * 1000.0}
        if r["errors"]:
            out["failed_gets"] = len(r["errors"])
            notes = self.results.setdefault("peer_failures", {"notes": []})["notes"]
            notes.append("%s: %d of 32 cold GETs failed (%s)"
                         % (srv.name, len(r["errors"]), r["errors"][0]))
        return out

    # 4. 32 concurrent requests for one cold blob: upstream fetches and time to all done.
    def scenario_cold32(self):
        cache_cold, dist_cold = self.cold_servers()

        values = self.alternate("cold32", [cache_cold, dist_cold],
                                lambda srv: self.cold32_once(srv))
        cache_cold.stop()
        dist_cold.stop()
        self.results["cold32"] = {"status": "ok", "values": values}

    # 5. sha256 of a buffer in memory, both paths of core/base/digest.c, and openssl for scale.
    def scenario_sha256(self):
        r = self.quietly("sha256", lambda: subprocess.run(
            [self.args.sha_binary, str(self.mode["sha_mib"])], capture_output=True, text=True,
            timeout=300))
        if r.returncode != 0:
            raise BenchError("sha256_speed failed: %s" % r.stderr.strip())
        paths, info = {}, {}
        for line in r.stdout.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            if "gbps" in fields:
                paths[fields["requested"]] = {"path": fields["path"],
                                              "gbps": float(fields["gbps"])}
            else:
                info = fields
        secs = self.mode["openssl_seconds"]
        o = subprocess.run(["openssl", "speed", "-evp", "sha256", "-bytes", "16384", "-seconds",
                            str(secs)], capture_output=True, text=True, timeout=60)
        openssl_gbps = None
        for line in o.stdout.splitlines():
            if line.startswith("sha256") and line.rstrip().endswith("k"):
                openssl_gbps = float(line.split()[-1].rstrip("k")) * 1000 / 1e9
        self.results["sha256"] = {"status": "ok", "mib": self.mode["sha_mib"], "paths": paths,
                                  "info": info, "openssl_gbps": openssl_gbps}

    # 8. The cached big blob over TLS, one client, against nginx with the same certificate.
    def scenario_tls(self):
        digest, size = self.blobs["big"]
        tls_cache = servers.Cache(self.work, self.args.binary, self.origin.url, name="cache-tls",
                                  tls=(self.cert, self.key))
        nginx_tls = types.SimpleNamespace(name="nginx", url=self.nginx.tls_url)

        def measure(srv):
            return size / clients.curl_get(blob_url(srv.url, digest), size,
                                           insecure=True)["total"] / 1e6

        why = None
        code, out = tls_cache.check()
        if code != 0:
            why = "--check refuses http.tls: " + out.strip()[-300:]
        else:
            try:
                tls_cache.start()
                clients.curl_get(blob_url(tls_cache.url, digest), size, insecure=True)
            except (RuntimeError, BenchError) as e:
                tls_cache.stop()
                why = "HTTPS does not answer: %s" % str(e).strip().splitlines()[0][:300]
        if why:
            # nginx alone, for the record.
            values = self.alternate("tls", [nginx_tls], measure)
            self.results["tls"] = {"status": "na", "why": why, "values": values}
            return
        try:
            wait_for_file(servers.blob_path(tls_cache.storage, digest), size)
            verify_body(blob_url(tls_cache.url, digest), digest, insecure=True)
            sessions = {"nginx": clients.tls_session(self.nginx.tls_url),
                        "cache-tls": clients.tls_session(tls_cache.url)}

            values = self.alternate("tls", [nginx_tls, tls_cache], measure)
        finally:
            tls_cache.stop()
        self.results["tls"] = {"status": "ok", "values": values, "sessions": sessions}

    # 11. The 1 KiB hit (and miss) with the default policies and with no hooks defined.
    def scenario_policy(self):
        wired, why = self.policy_engine_wired()
        if not wired:
            self.results["policy"] = {"status": "na", "why": why}
            return
        default = servers.Cache(self.work, self.args.binary, self.origin.url,
                                name="cache-policies")
        nohooks = servers.Cache(self.work, self.args.binary, self.origin.url, name="cache-nohooks",
                                builtin_policies=self.args.nohooks_policies)
        digest, _ = self.blobs["small"]
        # A 5% difference is finer than the noise between two wrk runs some seconds apart:
        # twice the rounds, half as long, and the figure is the median of the ratios of
        # the two runs of each round (which ran back to back, under the same conditions).
        secs = max(1, self.mode["wrk_seconds"] // 2)
        saved_rounds = self.rounds
        self.rounds = 2 * saved_rounds
        try:
            for c in (default, nohooks):
                c.start()
            self.warm([default, nohooks], ["small"])

            def measure(srv):
                before = process_cpu_seconds(srv.proc.pid)
                result = clients.wrk(blob_url(srv.url, digest), 2, 64, secs)
                used = process_cpu_seconds(srv.proc.pid) - before
                srv.truncate_access_log()
                return {"rps": result["rps"], "cpu_us": used / max(1, result["requests"]) * 1e6}

            both = self.alternate("policy", [default, nohooks], measure)
        finally:
            self.rounds = saved_rounds
            default.stop()
            nohooks.stop()
        values = {k: [r["rps"] for r in v] for k, v in both.items()}
        # The cache's CPU time per request: what the policies cost, far less disturbed by
        # other work on the machine than the request rate is.
        cpu = {k: [r["cpu_us"] for r in v] for k, v in both.items()}
        ratios = [d / n for d, n in zip(values["cache-policies"], values["cache-nohooks"])]
        self.results["policy"] = {"status": "ok", "values": values, "seconds": secs,
                                  "ratios": ratios, "cpu_us": cpu,
                                  "cpu_ratios": [d / n for d, n in zip(
                                      cpu["cache-policies"], cpu["cache-nohooks"])]}
        self.policy_misses(secs)

    def policy_misses(self, secs):
        """Row 11's miss path: 1 KiB blobs that neither cache holds, each requested once
        (authorization HEAD, select_upstream, the fetch, the commit), as misses per second
        with the default policies and with no hooks. Each round of each cache gets blobs
        of its own, uploaded before the first round."""
        per_round = self.mode["policy_misses"]
        rounds = 2 * self.rounds
        # Enough for every round of both caches, and for the rounds run again because the
        # machine was busy (quietly).
        count = 2 * (rounds + MAX_RETRIES_PER_SCENARIO) * per_round
        log("uploading %d blobs of 1 KiB for the miss rounds" % count)
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            fresh = list(pool.map(lambda _: self.origin.upload_blob(BLOB_REPO, os.urandom(1024)),
                                  range(count)))
        default = servers.Cache(self.work, self.args.binary, self.origin.url,
                                name="cache-policies-miss")
        nohooks = servers.Cache(self.work, self.args.binary, self.origin.url,
                                name="cache-nohooks-miss",
                                builtin_policies=self.args.nohooks_policies)
        saved_rounds = self.rounds
        self.rounds = rounds
        try:
            for c in (default, nohooks):
                c.start()
            self.warm([default, nohooks], ["small"])

            def measure(srv):
                batch = [fresh.pop() for _ in range(per_round)]
                paths = ["/v2/%s/blobs/%s" % (BLOB_REPO, d) for d in batch]
                before = process_cpu_seconds(srv.proc.pid)
                wall = clients.get_each(srv.port, paths, 1024)
                used = process_cpu_seconds(srv.proc.pid) - before
                srv.truncate_access_log()
                return {"rate": per_round / wall, "cpu_us": used / per_round * 1e6}

            both = self.alternate("policy-miss", [default, nohooks], measure)
            values = {k: [r["rate"] for r in v] for k, v in both.items()}
            cpu = {k: [r["cpu_us"] for r in v] for k, v in both.items()}
        finally:
            self.rounds = saved_rounds
            default.stop()
            nohooks.stop()
        res = self.results["policy"]
        res["miss_values"] = {"cache-policies": values["cache-policies-miss"],
                              "cache-nohooks": values["cache-nohooks-miss"]}
        res["miss_ratios"] = [d / n for d, n in zip(values["cache-policies-miss"],
                                                    values["cache-nohooks-miss"])]
        res["misses_per_round"] = per_round
        res["miss_cpu_us"] = {"cache-policies": cpu["cache-policies-miss"],
                              "cache-nohooks": cpu["cache-nohooks-miss"]}
        res["miss_cpu_ratios"] = [d / n for d, n in zip(cpu["cache-policies-miss"],
                                                        cpu["cache-nohooks-miss"])]

    # 12. A hit redirected by the front (307, then the cache with the grant) against the
    # same hit asked of the cache directly: the time of one whole request, sequential,
    # on kept-alive connections.
    def scenario_redirect(self):
        front = servers.Front(self.work, self.args.binary, self.origin.url,
                              builtin_policies=self.args.policies)
        code, out = front.check()
        if code != 0:
            self.results["redirect"] = {"status": "na",
                                        "why": "--check refuses a contentcaches config: " +
                                        out.strip()[-200:]}
            return
        edge = servers.Cache(self.work, self.args.binary, None, name="cache-edge",
                             builtin_policies=self.args.policies)
        digest, size = self.blobs["small"]
        n = self.mode["redirect_requests"]
        try:
            front.start()
            edge.origin_url = front.url
            edge.start()
            clients.front_register(front.port, "edge", edge.url, "admin")
            hop = clients.RedirectClient(front.port, "admin", BLOB_REPO, digest, size)
            hop.get()  # the miss: the edge stores the blob
            wait_for_file(servers.blob_path(edge.storage, digest), size)
            hop.get()  # the grant keys fetched, the decisions remembered

            def measure(srv):
                if srv is front:
                    times = hop.times(n)
                else:
                    times = clients.direct_times(edge.port, BLOB_REPO, digest, size, n)
                edge.truncate_access_log()
                front.truncate_access_log()
                return {"median_ms": median(times), "p90_ms": sorted(times)[int(0.9 * n)]}

            values = self.alternate("redirect", [front, edge], measure)
            hop.close()
        finally:
            edge.stop()
            front.stop()
        self.results["redirect"] = {"status": "ok", "requests": n,
                                    "values": {"redirected": values["front"],
                                               "direct": values["cache-edge"]}}

    # 13. workers: 1 against workers: N (one loop per CPU) on the same run: cached 1 KiB
    # hits (wrk, nginx and Distribution beside them), 16 concurrent TLS downloads of the
    # cached big blob (nginx's TLS beside them), 32 cold clients (Distribution beside
    # them), and the RSS of each after its hit rows.
    def scenario_workers(self):
        n = min(os.cpu_count() or 1, 64)
        digest_small, _ = self.blobs["small"]
        digest_big, size_big = self.blobs["big"]
        secs = self.mode["wrk_seconds"]
        plain = [servers.Cache(self.work, self.args.binary, self.origin.url,
                               name="cache-w%d" % k, workers=k) for k in (1, n)]
        tls = [servers.Cache(self.work, self.args.binary, self.origin.url,
                             name="cache-tls-w%d" % k, tls=(self.cert, self.key), workers=k)
               for k in (1, n)]
        cold = [servers.Cache(self.work, self.args.binary, self.origin.url,
                              name="cache-cold-w%d" % k, workers=k) for k in (1, n)]
        _, dist_cold = self.cold_servers()
        nginx_tls = types.SimpleNamespace(name="nginx", url=self.nginx.tls_url)
        res = {"status": "ok", "workers": n, "seconds": secs}
        try:
            for c in plain:
                c.start()
            self.warm(plain, ["small", "big"])

            def hits(srv):
                result = clients.wrk(blob_url(srv.url, digest_small), 2, 64, secs)
                if hasattr(srv, "truncate_access_log"):
                    srv.truncate_access_log()
                return result["rps"]

            res["hit1k"] = self.alternate("workers-hit1k",
                                          [self.nginx, self.dist] + plain, hits)
            res["rss_mib"] = {c.name: [c.rss_kib() / 1024.0] for c in plain}
            for c in plain:
                c.stop()

            for c in tls:
                c.start()
            self.warm(tls, ["big"], insecure=True)
            for c in tls:
                verify_body(blob_url(c.url, digest_big), digest_big, insecure=True)

            def tls16(srv):
                r = clients.curl_parallel(blob_url(srv.url, digest_big), 16, size_big,
                                          insecure=True)
                return 16 * size_big / r["wall"] / 1e6

            res["tls16"] = self.alternate("workers-tls16", [nginx_tls] + tls, tls16)
            for c in tls:
                c.stop()

            res["cold32"] = self.alternate("workers-cold32", cold + [dist_cold],
                                           lambda srv: self.cold32_once(srv))
        finally:
            for c in plain + tls + cold + [dist_cold]:
                c.stop()
        self.results["workers"] = res

    def policy_engine_wired(self):
        """Whether this content-cache calls policy hooks: a drop-in format_log that returns
        a marker must show up in the access log."""
        policydir = os.path.join(self.work, "probe-policies")
        os.makedirs(policydir, exist_ok=True)
        with open(os.path.join(policydir, "50-bench-probe.lua"), "w") as f:
            f.write('return { format_log = function(entry) return "bench-policy-probe" end }\n')
        probe = servers.Cache(self.work, self.args.binary, self.origin.url, name="cache-probe",
                              policydir=policydir)
        code, out = probe.check()
        if code != 0:
            return False, "--check refuses policydir: " + out.strip()[-300:]
        try:
            probe.start()
            servers.http_get_status(probe.port, "/v2/")
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                if "bench-policy-probe" in probe.access_log_text():
                    return True, ""
                time.sleep(0.1)
            return False, "a drop-in format_log hook is not called (the engine is not wired in)"
        except RuntimeError as e:
            return False, "content-cache with policydir does not start: %s" % str(e)[:300]
        finally:
            probe.stop()

    # --- environment and output -------------------------------------------------------

    def collect_environment(self):
        def first_line(argv):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return ((r.stdout or r.stderr).strip().splitlines() or [""])[0]
            except (OSError, subprocess.TimeoutExpired):
                return "?"

        cpu = "?"
        flags = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "?":
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line
        commit = first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
        dirty = first_line(["git", "-C", REPO, "status", "--porcelain", "--", "core", "lua",
                            "policies", "CMakeLists.txt"])
        self.env = {
            "date": self.started.strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if self.args.quick else "full",
            "rounds": self.rounds,
            "cpu": "%s, %d cores, sha_ni %s, avx2 %s" % (
                cpu, os.cpu_count(), "yes" if " sha_ni" in flags else "no",
                "yes" if " avx2" in flags else "no"),
            "kernel": platform.release(),
            "content-cache": "%s (commit %s%s, %s)" % (
                first_line([self.args.binary, "--version"]), commit,
                " + uncommitted changes" if dirty else "", self.args.build_desc),
            "nginx": first_line(["nginx", "-v"]),
            "docker-registry": first_line(["docker-registry", "--version"]),
            "wrk": first_line(["wrk", "-v"]).split(" [")[0],
            "curl": first_line(["curl", "--version"]).split(" (")[0],
            "loadavg_start": open("/proc/loadavg").read().split()[:3],
            "command": command_line(self.args),
        }
        busy, top = wait_quiet(self.args.max_others, self.args.wait_quiet)
        self.env["busy_before"] = "%.0f%% of all CPUs busy before the start%s" % (
            busy, (": " + ", ".join("%s %.0f%%" % x for x in top)) if top else "")
        log("machine: %s" % self.env["busy_before"])

    def write(self):
        text = report.render(self.env, self.mode, self.results, self.args)
        os.makedirs(os.path.dirname(os.path.abspath(self.args.out)), exist_ok=True)
        with open(self.args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(self.args.out)[0] + ".json", "w") as f:
            json.dump({"environment": self.env, "mode": self.mode, "results": self.results},
                      f, indent=1, sort_keys=True)
        print(text, flush=True)
        log("table written to %s" % self.args.out)
        if self.profile_text:
            path = os.path.splitext(self.args.out)[0] + "-profile.txt"
            with open(path, "w") as f:
                f.write(self.profile_text)
            log("profile written to %s" % path)


class Profiler:
    """perf record of the whole machine (software cpu-clock samples: this machine has no
    hardware counters) while one wrk run goes on; finish() returns the report: CPU time by
    process, then content-cache's own functions, then its call chains."""

    def __init__(self, work, seconds):
        self.data = os.path.join(work, "perf-hit1k.data")
        self.proc = subprocess.Popen(
            ["perf", "record", "-a", "-g", "-F", "999", "-e", "cpu-clock", "-o", self.data,
             "--", "sleep", str(max(1, seconds - 1))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, pid):
        self.proc.wait(timeout=60)
        sections = [
            ("CPU samples by process (whole machine, during one content-cache wrk run)",
             ["--sort", "comm", "--no-children", "-g", "none"]),
            ("content-cache: by shared object (percent of content-cache's samples)",
             ["--comm", "content-cache", "--percentage", "relative", "--sort", "dso",
              "--no-children", "-g", "none"]),
            ("content-cache: by function, self (percent of content-cache's samples)",
             ["--comm", "content-cache", "--percentage", "relative", "--sort", "dso,symbol",
              "--no-children", "-g", "none"]),
            ("content-cache: by function, with callees (percent of content-cache's samples)",
             ["--comm", "content-cache", "--percentage", "relative", "--sort", "symbol",
              "--children", "-g", "none"]),
        ]
        out = []
        for title, extra in sections:
            r = subprocess.run(["perf", "report", "-i", self.data, "--stdio", "--percent-limit",
                                "0.7"] + extra, capture_output=True, text=True, timeout=300)
            body = [l for l in r.stdout.splitlines() if l and not l.startswith("#")]
            out.append("## %s\n\n%s\n" % (title, "\n".join(body[:45])))
        return "\n".join(out)


class CpuAccount:
    """How much CPU processes other than this benchmark and its children used between
    creation and others_percent(): user+nice+system time of the machine (/proc/stat) less
    the time of our process tree (utime+stime of each process, plus cutime+cstime for the
    children it already reaped), as a percent of all CPUs. An estimate: it shows whether
    something else ran beside a scenario, to a few percent."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.machine0 = self.machine_ticks()
        self.ours0 = self.our_ticks()

    @staticmethod
    def machine_ticks():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2]

    @staticmethod
    def our_ticks():
        parent, ticks = {}, {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % pid) as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            parent[int(pid)] = int(fields[1])
            ticks[int(pid)] = sum(int(x) for x in fields[11:15])
        ours, frontier = 0, [os.getpid()]
        children = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            pid = frontier.pop()
            ours += ticks.get(pid, 0)
            frontier.extend(children.get(pid, []))
        return ours

    def others_percent(self):
        elapsed = time.monotonic() - self.t0
        machine = self.machine_ticks() - self.machine0
        ours = self.our_ticks() - self.ours0
        hz = os.sysconf("SC_CLK_TCK")
        if elapsed < 0.5:
            return 0.0  # too short for clock ticks to say anything
        return max(0.0, 100.0 * (machine - ours) / hz / elapsed / os.cpu_count())


def process_cpu_seconds(pid):
    """User + system CPU time of a process and all its threads, in seconds (/proc)."""
    with open("/proc/%d/stat" % pid) as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_line(args):
    """The bench/run.sh command that asks for what this run does (paths left out)."""
    words = ["bench/run.sh"]
    if args.quick:
        words.append("--quick")
    for flag, value in (("--rounds", args.rounds), ("--only", args.only),
                        ("--wait-quiet", args.wait_quiet or None),
                        ("--noise-retries", args.noise_retries)):
        if value is not None:
            words += [flag, str(value).rstrip("0").rstrip(".") if isinstance(value, float)
                      else str(value)]
    if args.max_others != 25.0:
        words += ["--max-others", "%g" % args.max_others]
    if args.profile:
        words.append("--profile")
    if args.build_desc.startswith("given"):
        words += ["--binary", args.binary]
    return " ".join(words)


def wait_quiet(max_percent, timeout):
    """Waits up to `timeout` seconds until less than max_percent of the CPUs are busy;
    returns the last machine_busy()."""
    busy, top = machine_busy()
    deadline = time.monotonic() + timeout
    while busy > max_percent and time.monotonic() < deadline:
        log("machine busy (%.0f%%: %s); waiting for it to quiet down" % (
            busy, ", ".join("%s %.0f%%" % x for x in top[:3])))
        time.sleep(5)
        busy, top = machine_busy()
    return busy, top


def machine_busy(seconds=1.0):
    """What else runs here: (percent of all CPUs busy, [(command, percent of one CPU)]) over
    `seconds`, from /proc/stat and /proc/PID/stat, before any server of ours starts."""
    def cpu_total():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # all, idle + iowait

    def per_process():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % pid) as f:
                    text = f.read()
            except OSError:
                continue
            comm = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            out[pid] = (comm, int(fields[11]) + int(fields[12]))
        return out

    t0, i0 = cpu_total()
    p0 = per_process()
    time.sleep(seconds)
    t1, i1 = cpu_total()
    p1 = per_process()
    busy = 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))
    hz = os.sysconf("SC_CLK_TCK")
    top = []
    for pid, (comm, ticks) in p1.items():
        if pid in p0 and pid != str(os.getpid()):
            pct = 100.0 * (ticks - p0[pid][1]) / hz / seconds
            if pct >= 5:
                top.append((comm, pct))
    return busy, sorted(top, key=lambda x: -x[1])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, about 1 s a scenario")
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    p.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--binary", required=True, help="the content-cache binary")
    p.add_argument("--sha-binary", required=True, help="the sha256_speed program")
    p.add_argument("--policies", required=True,
                   help="the built-in policies for --binary (the source tree's policies/)")
    p.add_argument("--nohooks-policies", required=True,
                   help="built-in policies that define no hooks (row 11's baseline)")
    p.add_argument("--build-desc", default="release build", help="how --binary was built")
    p.add_argument("--out", required=True, help="the table (Markdown); a .json goes beside it")
    p.add_argument("--work", help="work directory (default: a new one under $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="at the start, wait up to SECONDS for other work to use less than "
                   "--max-others of the CPUs")
    p.add_argument("--max-others", type=float, default=25.0, metavar="PERCENT",
                   help="a round during which other processes used more of the CPUs is "
                   "run again (default 25)")
    p.add_argument("--noise-retries", type=int, metavar="N",
                   help="how many rounds the whole run may run again (default 8; quick 0)")
    p.add_argument("--profile", action="store_true",
                   help="perf record the machine during content-cache's first 1 KiB wrk run")
    return p.parse_args()


def main():
    args = parse_args()
    # Every cache started here reads these built-in policies (unless told others).
    os.environ["CONTENT_CACHE_BUILTIN_POLICIES"] = args.policies
    bench = Bench(args)
    log("work directory %s" % bench.work)
    failed = interrupted = False
    try:
        bench.run()
    except (BenchError, RuntimeError, subprocess.CalledProcessError) as e:
        log("FAILED: %s" % e)
        bench.results["setup"] = {"status": "error", "error": str(e)}
        failed = True
    except (SystemExit, KeyboardInterrupt):
        bench.results["interrupted"] = {"status": "error", "error": "stopped by a signal"}
        failed = interrupted = True
        raise
    finally:
        servers.stop_all()
        bench.write()
        errors = [k for k, v in bench.results.items() if v.get("status") == "error"]
        if args.keep or ((failed or errors) and not interrupted):
            log("work directory kept (configs and logs of every server): %s" % bench.work)
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    if errors:
        log("scenarios with errors: %s" % ", ".join(errors))
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
