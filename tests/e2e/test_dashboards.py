"""End-to-end: the Grafana dashboard (examples/grafana/content-cache.json) and the
Prometheus alerting rules (examples/prometheus/alerts.yml) against a real cache.

- A cache with http.debug.addr, a blobttl, a diskbudget and a drop-in policy whose
  format_log hook fails serves pulls (skopeo) from a docker-registry origin.
- Every metric either file names (each content_cache_* word, a histogram's _bucket, _sum
  and _count included) exists in that cache's /metrics; the only other metric selector
  is Prometheus's own `up` (in ContentCacheDown).
- The dashboard is JSON Grafana imports: unique panel ids, panels inside the 24-column
  grid, every query on the ${datasource} variable, and a panel for each topic the README
  lists (hit ratio, bytes served by result, upstream latency and errors, fetches in
  flight, store size against the budget, evictions and expiries, policy errors,
  connections, health).
- `promtool check rules` accepts alerts.yml.
- A real Prometheus (Debian's prometheus; its own config, data directory and port;
  stopped by its PID) scrapes the cache every second with alerts.yml loaded: every rule
  evaluates without error, every dashboard query (Grafana's $__rate_interval and
  $instance replaced) returns data, and of the alerts exactly ContentCachePolicyErrors
  fires, for the failing hook.

The Prometheus part is skipped, with the reason, when prometheus or promtool is not
installed (scripts/install-deps.sh installs them); the metric names are checked anyway.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_dashboards.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

EXAMPLES = os.path.join(h.SOURCE_DIR, "examples")
DASHBOARD = os.path.join(EXAMPLES, "grafana", "content-cache.json")
ALERTS = os.path.join(EXAMPLES, "prometheus", "alerts.yml")
REPO = "dash/app"
# Metric selectors that are Prometheus's, not the cache's.
PROMETHEUS_OWN = {"up"}
FAILING_POLICY = """\
-- test_dashboards.py: a format_log hook that always fails, so that the policy errors
-- panel and ContentCachePolicyErrors have something to show.
return {
    format_log = function(entry)
        error("test_dashboards: this hook fails on purpose")
    end,
}
"""


def dashboard_exprs(dash):
    """[(panel title, expr)] of every query of the dashboard."""
    out = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            out.append((p.get("title"), t.get("expr", "")))
    return out


def alert_text():
    with open(ALERTS) as f:
        return f.read()


def names_in(text):
    """(content_cache_* names, other metric selectors) named in a text of PromQL: a name
    directly followed by `{` is a selector; `{{` (a template) is not."""
    ours = set(re.findall(r"\bcontent_cache_[a-z0-9_]+", text))
    selectors = set(re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\{(?!\{)", text))
    return ours, {s for s in selectors if not s.startswith("content_cache_")}


def exposed(metrics_text):
    """The metric names in /metrics, with each histogram's _bucket, _sum and _count."""
    names = set()
    for line in metrics_text.splitlines():
        m = re.match(r"# TYPE (\S+) histogram$", line)
        if m:
            names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    return names


class Prometheus:
    """Debian's prometheus with a config, data directory and port of the test's own,
    scraping the cache's debug address every second with alerts.yml loaded."""

    def __init__(self, work, target):
        self.work = work
        self.target = target
        self.config_path = work.sub("prometheus.yml")
        self.data = work.sub("prometheus-data", mkdir=True)
        self.log_path = work.sub("prometheus.log")
        self.port = None
        self.proc = None

    def start(self):
        with open(self.config_path, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "rule_files:\n  - %s\n"
                    "scrape_configs:\n  - job_name: content-cache\n    static_configs:\n"
                    "      - targets: [\"%s\"]\n" % (json.dumps(ALERTS), self.target))
        self.port = h.free_port()
        self.proc = h.Proc("prometheus", [
            "prometheus", "--config.file=" + self.config_path,
            "--storage.tsdb.path=" + self.data,
            "--web.listen-address=127.0.0.1:%d" % self.port], self.log_path).start()

        def ready():
            if not self.proc.alive():
                raise AssertionError("prometheus exited (code %s):\n%s" % (
                    self.proc.popen.returncode, h.tail(self.log_path)))
            try:
                return h.request(self.port, "GET", "/-/ready", timeout=2).status == 200
            except OSError:
                return False
        h.wait_until(ready, h.START_TIMEOUT, "prometheus to be ready")
        h.log("prometheus pid %d on 127.0.0.1:%d scraping %s" % (self.proc.pid, self.port,
                                                                 self.target))
        return self

    def api(self, path, **params):
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        r = h.request(self.port, "GET", "/api/v1/" + path + query)
        h.expect_status(r, 200, "prometheus /api/v1/%s: %r" % (path, r.body[:300]))
        doc = json.loads(r.body)
        expect_eq(doc.get("status"), "success", "prometheus /api/v1/%s status" % path)
        return doc["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def stop(self):
        return self.proc.stop() if self.proc else None


def body(run):
    work = run.work
    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"),
                              h.random_layers([400_000, 60_000], seed=401), tag="v1")
    h.push(work, image, origin, REPO, "v1")

    dport = h.free_port()
    policies = work.sub("policies", mkdir=True)
    with open(os.path.join(policies, "90-failing.lua"), "w") as f:
        f.write(FAILING_POLICY)

    class DebugCache(h.Cache):
        def config_text(self, port):
            text = super().config_text(port)
            return text.replace("  addr: 127.0.0.1:%d\n" % port,
                                "  addr: 127.0.0.1:%d\n  debug:\n    addr: 127.0.0.1:%d\n"
                                % (port, dport), 1)

    extra = ("        diskbudget:\n          maxsize: 64MiB\n"
             "        policydir: %s\n" % json.dumps(policies))
    cache = DebugCache(work, [origin], blobttl="24h", extra_downstream_yaml=extra)
    run.caches.append(cache)
    cache.start()
    h.wait_until(lambda: h.port_open(dport), 10, "the debug server")

    def pull(n):
        out = work.sub("pull-%d" % n)
        h.pull(work, cache, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "pull %d through the cache" % n)

    def scrape():
        r = h.request(dport, "GET", "/metrics")
        h.expect_status(r, 200)
        return r.body.decode()

    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = dashboard_exprs(dash)

    prom = None
    have_prometheus = all(shutil.which(t) for t in ("prometheus", "promtool"))
    if have_prometheus:
        prom = Prometheus(work, "127.0.0.1:%d" % dport)
        try:
            prom.start()
        except AssertionError as e:
            run.skip("Prometheus scrapes the cache", "prometheus cannot start here: %s" % e)
            prom.stop()
            prom = None
    else:
        run.skip("Prometheus scrapes the cache", "prometheus or promtool is not installed "
                 "(apt-get install prometheus; scripts/install-deps.sh installs it)")
    try:
        if prom is not None:
            # Two scrapes before the traffic, so that rate() and increase() see it move.
            h.wait_until(lambda: len(prom.query("count_over_time(up[1m]) >= 2")) == 1,
                         h.START_TIMEOUT, "two scrapes of the cache")
        pull(1)
        pull(2)
        metrics = scrape()
        if "content_cache_health_ok" not in metrics:  # the first scrape starts the checks
            h.wait_until(lambda: "content_cache_health_ok" in scrape(), 10, "health gauges")
            metrics = scrape()
        names = exposed(metrics)

        def dashboard_names():
            ours, others = names_in("\n".join(e for _, e in exprs))
            expect(len(ours) >= 15, "the dashboard names only %d metrics" % len(ours))
            expect_eq(sorted(ours - names), [], "dashboard metrics missing from /metrics")
            expect_eq(sorted(others), [], "metric selectors that are not the cache's")

        run.check("every metric the dashboard names exists in the cache's /metrics",
                  dashboard_names)

        def alert_names():
            ours, others = names_in(alert_text())
            expect(len(ours) >= 8, "the alerts name only %d metrics" % len(ours))
            expect_eq(sorted(ours - names), [], "alert metrics missing from /metrics")
            expect_eq(sorted(others - PROMETHEUS_OWN), [],
                      "metric selectors that are neither the cache's nor Prometheus's")

        run.check("every metric alerts.yml names exists in the cache's /metrics (and `up`)",
                  alert_names)

        def dashboard_shape():
            panels = dash["panels"]
            ids = [p["id"] for p in panels]
            expect_eq(len(ids), len(set(ids)), "unique panel ids")
            variables = {v["name"]: v for v in dash["templating"]["list"]}
            expect_eq(variables.get("datasource", {}).get("type"), "datasource",
                      "the datasource variable")
            expect_eq(variables["datasource"].get("query"), "prometheus", "its plugin")
            for p in panels:
                g = p["gridPos"]
                expect(g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24,
                       "panel %r outside the grid: %r" % (p["title"], g))
                if p["type"] == "row":
                    continue
                expect(p.get("targets"), "panel %r has no query" % p["title"])
                for t in [p] + p["targets"]:
                    expect_eq(t.get("datasource"), {"type": "prometheus", "uid": "${datasource}"},
                              "datasource of panel %r" % p["title"])
            joined = {p["title"]: " ".join(t["expr"] for t in p.get("targets", []))
                      for p in panels}

            def has(*needles):
                return [t for t, e in joined.items() if all(n in e for n in needles)]
            topics = {
                "hit ratio": has('result="hit"', "content_cache_blob_requests_total", "/"),
                "bytes served by result": has("by (result)",
                                              "content_cache_blob_served_bytes_total"),
                "upstream latency": has("histogram_quantile",
                                        "content_cache_upstream_response_seconds_bucket"),
                "upstream errors": has("content_cache_upstream_errors_total"),
                "fetches in flight": has("content_cache_fetches_running"),
                "store size against the budget": has("content_cache_stored_bytes",
                                                     "content_cache_disk_budget_bytes"),
                "evictions and expiries": has("content_cache_evicted_bytes_total",
                                              "content_cache_expired_bytes_total"),
                "policy errors": has("content_cache_policy_errors_total"),
                "connections": has("content_cache_connections"),
                "health": has("content_cache_health_ok"),
            }
            expect_eq(sorted(t for t, ps in topics.items() if not ps), [],
                      "topics without a panel")

        run.check("the dashboard: unique ids, inside the grid, every query on ${datasource}, "
                  "a panel per topic", dashboard_shape)

        if prom is None:
            return

        def promtool():
            cp = subprocess.run(["promtool", "check", "rules", ALERTS], capture_output=True,
                                text=True, timeout=60)
            expect_eq(cp.returncode, 0, "promtool check rules: %s" % (cp.stdout + cp.stderr))

        run.check("promtool check rules accepts alerts.yml", promtool)

        def rules_evaluate():
            def evaluated():
                groups = prom.api("rules")["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules and all(r.get("lastEvaluation", "").startswith("20")
                                     and not r["lastEvaluation"].startswith("0001")
                                     for r in rules) and rules
            rules = h.wait_until(evaluated, 20, "every rule to be evaluated")
            expect_eq(sorted(r["name"] for r in rules), sorted(re.findall(
                r"^\s+- alert: (\S+)$", alert_text(), re.M)), "the rules Prometheus loaded")
            bad = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
            expect_eq(bad, {}, "rules that failed to evaluate")

        run.check("Prometheus loads alerts.yml and evaluates every rule without error",
                  rules_evaluate)

        def queries_return_data():
            def empty():
                out = []
                for title, expr in exprs:
                    q = expr.replace("$__rate_interval", "15s").replace("$instance", ".*")
                    if not prom.query(q):
                        out.append((title, q))
                return out
            # A series born with the pulls needs two scrapes before rate() has a value.
            try:
                h.wait_until(lambda: not empty(), 20, "every dashboard query to return data")
            except h.WaitTimeout:
                pass
            expect_eq(empty(), [], "dashboard queries that returned nothing")

        run.check("every dashboard query returns data from the scraped cache", queries_return_data)

        def policy_alert_fires():
            def firing():
                alerts = prom.api("alerts")["alerts"]
                return [a for a in alerts if a["state"] == "firing"] or None
            alerts = h.wait_until(firing, 30, "an alert to fire")
            h.settle(lambda: len(prom.api("alerts")["alerts"]), quiet=3, timeout=10)
            alerts = prom.api("alerts")["alerts"]
            expect_eq(sorted({(a["labels"]["alertname"], a["labels"].get("hook"))
                              for a in alerts}),
                      [("ContentCachePolicyErrors", "format_log")], "alerts pending or firing")

        run.check("on this healthy cache with a failing format_log, exactly "
                  "ContentCachePolicyErrors{hook=\"format_log\"} fires", policy_alert_fires)
    finally:
        if prom is not None:
            code = prom.stop()

            def prom_stopped():
                expect_eq(code, 0, "prometheus's exit code on SIGTERM")

            run.check("prometheus stopped by its PID on SIGTERM (exit 0)", prom_stopped)


if __name__ == "__main__":
    h.main("test_dashboards", body)
