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
                 idle=10000, openssl_seconds=3),
    "quick": dict(rounds=1, wrk_seconds=1, big_mib=8, cold_mib=8, sha_mib=64, idle=500,
                  openssl_seconds=1),
}

SCENARIOS = ["hit1k", "big16", "rss", "idle", "cold1", "cold32", "sha256", "tls", "policy"]


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
            try:
                getattr(self, "scenario_" + name)()
            except BenchError as e:
                log("scenario %s failed: %s" % (name, e))
                self.results[name] = {"status": "error", "error": str(e)}
            log("scenario %s took %.1f s" % (name, time.monotonic() - t0))
            self.cache.truncate_access_log()
        self.env["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    def alternate(self, name, servers_list, measure):
        """Calls measure(server) for each server, rounds times, rotating the order; returns
        {server name: [values]}."""
        values = {s.name: [] for s in servers_list}
        for r in range(self.rounds):
            for srv in rotated(servers_list, r):
                value = measure(srv)
                values[srv.name].append(value)
                log("  %s round %d %s: %s" % (name, r + 1, srv.name, report.short(value)))
        return values

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

    # 3. One cold big blob: total time and time to first byte, against the origin itself.
    def cold_servers(self):
        if not hasattr(self, "cache_cold"):
            self.cache_cold = servers.Cache(self.work, self.args.binary, self.origin.url,
                                            name="cache-cold")
            self.dist_cold = servers.DistProxy(self.work, self.origin.url, name="distproxy-cold")
        return self.cache_cold, self.dist_cold

    def scenario_cold1(self):
        digest, size = self.blobs["cold"]
        cache_cold, dist_cold = self.cold_servers()
        fetches = []

        def measure(srv):
            if srv is not self.origin:
                srv.restart_fresh()
            os.sync()  # the previous run's writes are not this run's disk traffic
            before = self.origin.count_blob_gets(digest)
            r = clients.curl_get(blob_url(srv.url, digest), size)
            if srv is cache_cold:
                fetches.append(self.origin.settled_blob_gets(digest) - before)
            return {"total": r["total"], "ttfb_ms": r["ttfb"] * 1000.0}

        values = self.alternate("cold1", [self.origin, cache_cold, dist_cold], measure)
        self.results["cold1"] = {"status": "ok", "values": values, "cache_fetches": fetches}

    # 4. 32 concurrent requests for one cold blob: upstream fetches and time to all done.
    def scenario_cold32(self):
        digest, size = self.blobs["cold"]
        cache_cold, dist_cold = self.cold_servers()

        def measure(srv):
            srv.restart_fresh()
            os.sync()
            before = self.origin.count_blob_gets(digest)
            r = clients.curl_parallel(blob_url(srv.url, digest), 32, size)
            fetched = self.origin.settled_blob_gets(digest) - before
            return {"wall": r["wall"], "fetches": fetched,
                    "slowest_ttfb_ms": max(x["ttfb"] for x in r["results"]) * 1000.0}

        values = self.alternate("cold32", [cache_cold, dist_cold], measure)
        cache_cold.stop()
        dist_cold.stop()
        self.results["cold32"] = {"status": "ok", "values": values}

    # 5. sha256 of a buffer in memory, both paths of core/digest.c, and openssl for scale.
    def scenario_sha256(self):
        r = subprocess.run([self.args.sha_binary, str(self.mode["sha_mib"])],
                           capture_output=True, text=True, timeout=300)
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

    # 9. The 1 KiB hit with the default policies and with no hooks defined.
    def scenario_policy(self):
        wired, why = self.policy_engine_wired()
        if not wired:
            self.results["policy"] = {"status": "na", "why": why}
            return
        log("  building a content-cache whose built-in policies define no hooks")
        nohooks_binary = build_nohooks_binary(self.args.build_dir)
        default = servers.Cache(self.work, self.args.binary, self.origin.url,
                                name="cache-policies")
        nohooks = servers.Cache(self.work, nohooks_binary, self.origin.url, name="cache-nohooks")
        digest, _ = self.blobs["small"]
        secs = self.mode["wrk_seconds"]
        try:
            for c in (default, nohooks):
                c.start()
            self.warm([default, nohooks], ["small"])

            def measure(srv):
                rps = clients.wrk(blob_url(srv.url, digest), 2, 64, secs)["rps"]
                srv.truncate_access_log()
                return rps

            values = self.alternate("policy", [default, nohooks], measure)
        finally:
            default.stop()
            nohooks.stop()
        self.results["policy"] = {"status": "ok", "values": values}

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
        }

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
             ["--sort", "comm", "--no-children"]),
            ("content-cache: by shared object", ["--comm", "content-cache", "--sort", "dso",
                                                 "--no-children"]),
            ("content-cache: by function (self)", ["--comm", "content-cache", "--sort",
                                                   "dso,symbol", "--no-children"]),
            ("content-cache: by function (with callees)", ["--comm", "content-cache", "--sort",
                                                           "symbol", "--children", "-g", "none"]),
        ]
        out = []
        for title, extra in sections:
            r = subprocess.run(["perf", "report", "-i", self.data, "--stdio", "--percent-limit",
                                "0.7"] + extra, capture_output=True, text=True, timeout=300)
            body = [l for l in r.stdout.splitlines() if l and not l.startswith("#")]
            out.append("## %s\n\n%s\n" % (title, "\n".join(body[:45])))
        return "\n".join(out)


def build_nohooks_binary(build_dir):
    """content-cache built from a copy of this tree whose built-in policies/default.lua
    defines no hooks (`return {}`): every hook then falls back to the C default."""
    src = os.path.join(build_dir, "nohooks-src")
    out = os.path.join(build_dir, "nohooks-build")
    os.makedirs(src, exist_ok=True)
    for item in ("core", "lua", "policies"):
        shutil.copytree(os.path.join(REPO, item), os.path.join(src, item), dirs_exist_ok=True)
    shutil.copy2(os.path.join(REPO, "CMakeLists.txt"), os.path.join(src, "CMakeLists.txt"))
    default_lua = os.path.join(src, "policies", "default.lua")
    text = "-- bench: the built-in policies define no hooks\nreturn {}\n"
    if not os.path.exists(default_lua) or open(default_lua).read() != text:
        with open(default_lua, "w") as f:
            f.write(text)
    cflags = os.environ.get("BENCH_C_FLAGS", "")
    subprocess.run(["cmake", "-S", src, "-B", out, "-DCC_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release",
                    "-DCMAKE_C_FLAGS=" + cflags], check=True, stdout=subprocess.DEVNULL,
                   timeout=300)
    r = subprocess.run(["cmake", "--build", out, "--target", "content-cache", "-j2"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise BenchError("building the no-hooks binary failed:\n%s" % r.stdout[-2000:])
    return os.path.join(out, "content-cache")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, about 1 s a scenario")
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    p.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--binary", required=True, help="the content-cache binary")
    p.add_argument("--sha-binary", required=True, help="the sha256_speed program")
    p.add_argument("--build-dir", required=True, help="where the no-hooks build goes")
    p.add_argument("--build-desc", default="release build", help="how --binary was built")
    p.add_argument("--out", required=True, help="the table (Markdown); a .json goes beside it")
    p.add_argument("--work", help="work directory (default: a new one under $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--profile", action="store_true",
                   help="perf record the machine during content-cache's first 1 KiB wrk run")
    return p.parse_args()


def main():
    args = parse_args()
    bench = Bench(args)
    log("work directory %s" % bench.work)
    failed = False
    try:
        bench.run()
    except (BenchError, RuntimeError, subprocess.CalledProcessError) as e:
        log("FAILED: %s" % e)
        bench.results["setup"] = {"status": "error", "error": str(e)}
        failed = True
    except (SystemExit, KeyboardInterrupt):
        bench.results["interrupted"] = {"status": "error", "error": "stopped by a signal"}
        failed = True
        raise
    finally:
        servers.stop_all()
        bench.write()
        if args.keep or failed:
            log("work directory kept: %s" % bench.work)
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    errors = [k for k, v in bench.results.items() if v.get("status") == "error"]
    if errors:
        log("scenarios with errors: %s" % ", ".join(errors))
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
