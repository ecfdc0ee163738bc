"""The benchmark's table: one Markdown file with the figures (medians over the rounds),
the ratios content-cache/nginx and content-cache/Distribution, the target of each row,
where each figure comes from, and the per-round values underneath."""

import statistics

NA = "not available yet"
DASH = "—"


def short(value):
    """A per-round value for the progress log."""
    if isinstance(value, dict):
        return " ".join("%s=%s" % (k, short(v)) for k, v in sorted(value.items()))
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


def role(name):
    """Which column a server's figures go in."""
    if name.startswith("cache"):
        return "cc"
    if name.startswith("distproxy"):
        return "dist"
    if name.startswith("nginx"):
        return "nginx"  # static files, or proxy_cache in the cold rows
    return name  # origin


def medians(values, key=None):
    """{role: median} of {server name: [value or dict]}."""
    out = {}
    for name, vals in values.items():
        vals = [v[key] for v in vals] if key else vals
        if vals:
            out[role(name)] = statistics.median(vals)
    return out


def num(v, digits=0):
    if v is None:
        return DASH
    if digits == 0:
        return "{:,.0f}".format(v)
    return "{:,.{d}f}".format(v, d=digits)


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(r):
    return DASH if r is None else "%.2fx" % r


def verdict(ok):
    return "met" if ok else "**missed**"


class Table:
    COLUMNS = ["#", "scenario", "unit", "nginx", "Distribution proxy", "origin direct",
               "content-cache", "cc/nginx", "cc/dist", "target", "result", "measured with"]

    def __init__(self):
        self.rows = []
        self.notes = []

    def row(self, num_, scenario, unit, fig=None, digits=0, r_nginx=None, r_dist=None,
            target="", result="", how="", cc_text=None):
        fig = fig or {}
        cells = [num_, scenario, unit]
        for key in ("nginx", "dist", "origin"):
            cells.append(num(fig.get(key), digits) if key in fig else DASH)
        cells.append(cc_text if cc_text is not None else
                     (num(fig.get("cc"), digits) if "cc" in fig else DASH))
        cells += [fmt_ratio(r_nginx), fmt_ratio(r_dist), target, result, how]
        self.rows.append(cells)

    def unavailable(self, num_, scenario, unit, target, how, why, fig=None, digits=0):
        self.row(num_, scenario, unit, fig, digits, target=target, result=NA, how=how,
                 cc_text=NA)
        self.notes.append("Row %s: %s (%s)." % (num_, NA, why))

    def error(self, num_, scenario, unit, target, how, err):
        self.row(num_, scenario, unit, target=target, result="**ERROR**", how=how,
                 cc_text="ERROR")
        self.notes.append("Row %s: ERROR: %s" % (num_, err))

    def markdown(self):
        lines = ["| " + " | ".join(self.COLUMNS) + " |",
                 "|" + "|".join("---" for _ in self.COLUMNS) + "|"]
        for cells in self.rows:
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def render(env, mode, results, args):
    t = Table()
    big, cold = mode["big_mib"], mode["cold_mib"]
    secs = mode["wrk_seconds"]

    def scenario(name, num_, label, unit, target, how, fill):
        res = results.get(name)
        if res is None:
            t.row(num_, label, unit, target=target, result="not run", how=how,
                  cc_text="not run")
        elif res["status"] == "error":
            t.error(num_, label, unit, target, how, res["error"])
        elif res["status"] == "na":
            t.unavailable(num_, label, unit, target, how, res["why"],
                          medians(res["values"]) if "values" in res else None)
        else:
            fill(res)

    # 1
    def hit1k(res):
        m = medians(res["values"])
        rn, rd = ratio(m.get("cc"), m.get("nginx")), ratio(m.get("cc"), m.get("dist"))
        t.row(1, "cached 1 KiB blob", "req/s", m, 0, rn, rd, "cc/nginx >= 1.0",
              verdict(rn is not None and rn >= 1.0), "`wrk -t2 -c64 -d%ds URL`" % secs)
    scenario("hit1k", 1, "cached 1 KiB blob", "req/s", "cc/nginx >= 1.0",
             "`wrk -t2 -c64 -d%ds URL`" % secs, hit1k)

    # 2
    def big16(res):
        m = medians(res["values"])
        rn, rd = ratio(m.get("cc"), m.get("nginx")), ratio(m.get("cc"), m.get("dist"))
        t.row(2, "16 concurrent downloads of a cached %d MiB blob" % big, "MB/s (sum)", m, 0,
              rn, rd, "cc/nginx >= 1.0", verdict(rn is not None and rn >= 1.0),
              "16 x `curl -o /dev/null URL` at once; 16 x size / wall clock")
    scenario("big16", 2, "16 concurrent downloads of a cached %d MiB blob" % big, "MB/s (sum)",
             "cc/nginx >= 1.0", "16 x `curl`", big16)

    # 3, 4
    def cold1(res):
        total = medians(res["values"], "total")
        ttfb = medians(res["values"], "ttfb_ms")
        r_origin = ratio(total.get("cc"), total.get("origin"))
        r_nginx = ratio(total.get("cc"), total.get("nginx"))
        r_dist = ratio(total.get("cc"), total.get("dist"))
        # The floor: hashing the blob once, at the rate row 7a measured.
        floor = None
        sha = results.get("sha256")
        if sha and sha.get("status") == "ok" and res.get("size"):
            floor = res["size"] / (sha["paths"]["default"]["gbps"] * 1e9)
        r_floor = ratio(total.get("cc"), floor)
        met = (r_dist is not None and r_dist <= 0.7 and r_nginx is not None and r_nginx <= 1.0
               and r_floor is not None and r_floor <= 1.4)
        t.row(3, "one cold %d MiB blob: total" % cold, "s", total, 3, r_nginx, r_dist,
              "cc <= 0.7x dist, <= 1.0x nginx proxy_cache, <= 1.4x the sha256 floor",
              "%s: %s floor, %.2fx origin" % (verdict(met), fmt_ratio(r_floor), r_origin),
              "`curl -w %{time_total}`; fresh storage each run; nginx = proxy_cache")
        if floor is not None:
            t.row("3b", "sha256 floor for %d MiB (row 7a's rate)" % cold, "s", target=DASH,
                  result="reference", how="size / sha256 rate", cc_text="%.3f" % floor)
        extra = ttfb["cc"] - ttfb["origin"]
        t.row(4, "one cold %d MiB blob: time to first byte" % cold, "ms", ttfb, 1,
              ratio(ttfb.get("cc"), ttfb.get("nginx")), ratio(ttfb.get("cc"), ttfb.get("dist")),
              "cc <= origin + 3 ms",
              "%s: %+.1f ms" % (verdict(extra <= 3.0), extra), "`curl -w %{time_starttransfer}`")
        fetches = [v.get("fetches") for k, vals in res["values"].items() if role(k) == "cc"
                   for v in vals]
        t.notes.append("Rows 3-4: origin fetches per content-cache cold pull: %s."
                       % ", ".join(str(x) for x in fetches))
    res = results.get("cold1")
    if res is None or res["status"] != "ok":
        scenario("cold1", 3, "one cold %d MiB blob: total" % cold, "s",
                 "cc <= 0.7x dist, <= 1.0x nginx, <= 1.4x sha256 floor",
                 "`curl -w %{time_total}`", None)
        scenario("cold1", 4, "one cold %d MiB blob: time to first byte" % cold, "ms",
                 "cc <= origin + 3 ms", "`curl -w %{time_starttransfer}`", None)
    else:
        cold1(res)

    # 5, 6
    def cold32(res):
        fetches = {role(k): [v["fetches"] for v in vals] for k, vals in res["values"].items()}
        wall = medians(res["values"], "wall")
        single = None
        if results.get("cold1", {}).get("status") == "ok":
            single = medians(results["cold1"]["values"], "total").get("cc")
        cc_f = fetches.get("cc", [])
        t.row(5, "32 concurrent requests for one cold blob: upstream fetches", "GETs",
              target="exactly 1", result="%s: %s" % (verdict(cc_f and all(f == 1 for f in cc_f)),
                                                     ", ".join(map(str, cc_f))),
              how="origin's access log: `GET .../blobs/<digest>` 200, once settled",
              cc_text=", ".join(map(str, cc_f)))
        t.rows[-1][4] = ", ".join(map(str, fetches.get("dist", [])))
        # The reference: 16 downloads of a cached blob of the same size (row 2's rate).
        cached16 = None
        if results.get("big16", {}).get("status") == "ok" and big == cold:
            rate = medians(results["big16"]["values"]).get("cc")
            if rate:
                cached16 = 16 * (cold << 20) / 1e6 / rate
                t.notes.append(
                    "Row 6: 16 cached downloads of %d MiB take %.3f s at row 2's rate (%s MB/s); "
                    "one cold pull (row 3) %s s." % (cold, cached16, num(rate),
                                                    num(single, 3)))
        r16 = ratio(wall.get("cc"), cached16)
        t.row(6, "32 concurrent requests for one cold blob: all done", "s", wall, 3, None,
              ratio(wall.get("cc"), wall.get("dist")),
              "cc <= 1.2x 16 cached downloads of the same size (row 2)",
              DASH if r16 is None else "%s: %.2fx" % (verdict(r16 <= 1.2), r16),
              "32 x `curl` at once, wall clock; fresh storage each run")
    res = results.get("cold32")
    if res is None or res["status"] != "ok":
        scenario("cold32", 5, "32 concurrent requests for one cold blob: upstream fetches",
                 "GETs", "exactly 1", "origin's access log", None)
        scenario("cold32", 6, "32 concurrent requests for one cold blob: all done", "s",
                 "cc <= 1.2x 16 cached downloads", "32 x `curl`", None)
    else:
        cold32(res)

    # 7
    def sha(res):
        d, p = res["paths"]["default"], res["paths"]["portable"]
        how = "`bench/sha256_speed %d` (core/digest.c)" % res["mib"]
        t.row("7a", "sha256 of %d MiB in memory, default path" % res["mib"], "GB/s", target=">= 1.8",
              result="%s: path %s ran" % (verdict(d["gbps"] >= 1.8), d["path"]), how=how,
              cc_text="%.2f (%s)" % (d["gbps"], d["path"]))
        t.row("7b", "sha256, portable path forced", "GB/s", target=DASH,
              result="path %s ran" % p["path"], how="the same, `digest_sha256_use_hw(false)`",
              cc_text="%.2f (%s)" % (p["gbps"], p["path"]))
        if res.get("openssl_gbps"):
            t.row("7c", "sha256, OpenSSL for scale", "GB/s", target=DASH, result="reference",
                  how="`openssl speed -evp sha256 -bytes 16384`",
                  cc_text="%.2f (openssl)" % res["openssl_gbps"])
        t.notes.append("Row 7: CPU has SHA-NI: %s; a context initialized by default uses %s."
                       % (res["info"].get("hw_available", "?"),
                          res["info"].get("default_path", "?")))
    scenario("sha256", "7a", "sha256 of 1 GiB in memory", "GB/s", ">= 1.8",
             "`bench/sha256_speed`", sha)

    # 8
    def rss(res):
        m = medians(res["values"])
        t.row(8, "RSS after rows 1-2", "MiB", m, 1, None, None, "cc <= 16",
              verdict(m["cc"] <= 16.0), "VmRSS in /proc/PID/status (nginx: master + workers)")
    scenario("rss", 8, "RSS after rows 1-2", "MiB", "cc <= 16", "VmRSS", rss)

    # 9
    def idle(res):
        m = medians(res["values"])
        d = res["detail"].get("cache", {})
        t.row(9, "%s idle keep-alive connections: RSS growth" % num(res["count"]), "MiB", m, 1,
              None, None, "cc <= 30", verdict(m["cc"] <= 30.0),
              "bench/benchlib/clients.py IdleConnections: one `GET /v2/` each, kept open")
        t.notes.append("Row 9: content-cache RSS %.1f -> %.1f MiB; responses %s."
                       % (d.get("before_mib", 0), d.get("after_mib", 0), d.get("statuses")))
    scenario("idle", 9, "10,000 idle keep-alive connections: RSS growth", "MiB", "cc <= 30",
             "IdleConnections", idle)

    # 10
    def tls(res):
        m = medians(res["values"])
        rn = ratio(m.get("cc"), m.get("nginx"))
        t.row(10, "cached %d MiB blob over TLS, one client" % big, "MB/s", m, 0, rn, None,
              "cc/nginx >= 0.7", verdict(rn >= 0.7), "`curl -k -o /dev/null https://...`")
        t.notes.append("Row 10: TLS sessions: nginx %s; content-cache %s."
                       % (res["sessions"].get("nginx"), res["sessions"].get("cache-tls")))
    scenario("tls", 10, "cached %d MiB blob over TLS, one client" % big, "MB/s",
             "cc/nginx >= 0.7", "`curl -k`", tls)

    # 11
    def policy(res):
        m = {role_: statistics.median(v) for role_, v in
             (("default", res["values"]["cache-policies"]),
              ("nohooks", res["values"]["cache-nohooks"]))}
        slower = 1.0 - statistics.median(res["ratios"])
        how = ("`wrk -t2 -c64 -d%ds URL`, two content-caches back to back, %d rounds; "
               "median of the per-round ratios" % (res["seconds"], len(res["ratios"])))
        t.row("11a", "cached 1 KiB blob, default policies", "req/s", target=DASH, result=DASH,
              how=how, cc_text=num(m["default"]))
        t.row("11b", "cached 1 KiB blob, no hooks defined", "req/s",
              target="11a at most 3% slower than 11b",
              result="%s: %.1f%% %s" % (verdict(slower <= 0.03), abs(slower) * 100,
                                        "slower" if slower >= 0 else "faster"), how=how,
              cc_text=num(m["nohooks"]))
        if "cpu_ratios" in res:
            cm = {role_: statistics.median(v) for role_, v in
                  (("default", res["cpu_us"]["cache-policies"]),
                   ("nohooks", res["cpu_us"]["cache-nohooks"]))}
            more = statistics.median(res["cpu_ratios"]) - 1.0
            chow = ("the cache's user+system CPU time (/proc/PID/stat) during each wrk run of "
                    "11a/11b, per request; median of the per-round ratios")
            t.row("11a'", "cached 1 KiB blob, default policies: CPU per request", "µs",
                  target=DASH, result=DASH, how=chow, cc_text=num(cm["default"], 2))
            t.row("11b'", "cached 1 KiB blob, no hooks: CPU per request", "µs",
                  target="11a' at most 3% more than 11b'",
                  result="%s: %.1f%% %s" % (verdict(more <= 0.03), abs(more) * 100,
                                            "more" if more >= 0 else "less"),
                  how=chow, cc_text=num(cm["nohooks"], 2))
        if "miss_values" not in res:
            return
        mm = {role_: statistics.median(v) for role_, v in
              (("default", res["miss_values"]["cache-policies"]),
               ("nohooks", res["miss_values"]["cache-nohooks"]))}
        mslower = 1.0 - statistics.median(res["miss_ratios"])
        mhow = ("%d different uncached 1 KiB blobs per round, once each, over 8 keep-alive "
                "connections; %d rounds; median of the per-round ratios"
                % (res["misses_per_round"], len(res["miss_ratios"])))
        t.row("11c", "uncached 1 KiB blobs (misses), default policies", "misses/s",
              target=DASH, result=DASH, how=mhow, cc_text=num(mm["default"]))
        t.row("11d", "uncached 1 KiB blobs (misses), no hooks defined", "misses/s",
              target="shown, no target",
              result="11c %.1f%% %s" % (abs(mslower) * 100,
                                        "slower" if mslower >= 0 else "faster"),
              how=mhow, cc_text=num(mm["nohooks"]))
        if "miss_cpu_ratios" in res:
            cm = {role_: statistics.median(v) for role_, v in
                  (("default", res["miss_cpu_us"]["cache-policies"]),
                   ("nohooks", res["miss_cpu_us"]["cache-nohooks"]))}
            more = statistics.median(res["miss_cpu_ratios"]) - 1.0
            chow = ("the cache's CPU time during each round of 11c/11d, per miss; median of "
                    "the per-round ratios")
            t.row("11c'", "misses, default policies: CPU per miss", "µs", target=DASH,
                  result=DASH, how=chow, cc_text=num(cm["default"], 1))
            t.row("11d'", "misses, no hooks: CPU per miss", "µs", target="shown, no target",
                  result="11c' %.1f%% %s" % (abs(more) * 100, "more" if more >= 0 else "less"),
                  how=chow, cc_text=num(cm["nohooks"], 1))
    scenario("policy", 11, "cached 1 KiB blob, default policies vs no hooks", "req/s",
             "<= 3% slower", "`wrk`, two content-caches", policy)

    # 12
    def redirect(res):
        direct = statistics.median([v["median_ms"] for v in res["values"]["direct"]])
        redirected = statistics.median([v["median_ms"] for v in res["values"]["redirected"]])
        p90d = statistics.median([v["p90_ms"] for v in res["values"]["direct"]])
        p90r = statistics.median([v["p90_ms"] for v in res["values"]["redirected"]])
        extra = redirected - direct
        t.row(12, "cached 1 KiB blob: redirected by the front vs asked of the cache", "ms",
              target="redirected <= direct + 5 ms",
              result="%s: +%.2f ms" % (verdict(extra <= 5.0), extra),
              how="%d GETs in a row per round on kept-alive connections: at the front "
                  "(signed in) then the Location at the cache, vs at the cache" % res["requests"],
              cc_text="%.2f vs %.2f" % (redirected, direct))
        t.notes.append("Row 12: medians of the per-round medians; 90th percentiles %.2f ms "
                       "redirected, %.2f ms direct. A redirected hit costs the front a 307 "
                       "(who the user is and that they may pull the blob remembered; the grant "
                       "signed on its thread pool) and the cache a grant verification (on its "
                       "thread pool), no request to the front or the origin."
                       % (p90r, p90d))
    scenario("redirect", 12, "cached 1 KiB blob: redirected by the front vs asked of the cache",
             "ms", "redirected <= direct + 5 ms", "front 307 + cache, sequential", redirect)

    # 13
    def workers(res):
        n = res["workers"]
        one, many = "cache-w1", "cache-w%d" % n
        hit = {k: statistics.median(v) for k, v in res["hit1k"].items()}
        h1, hn = hit.get(one), hit.get(many)
        fig = {"nginx": hit.get("nginx"), "dist": hit.get("distproxy")}
        wrk = "`wrk -t2 -c64 -d%ds URL`" % res["seconds"]
        t.row("13a", "cached 1 KiB blob, workers: 1", "req/s", dict(fig, cc=h1), 0,
              ratio(h1, fig["nginx"]), ratio(h1, fig["dist"]), "shown", DASH, wrk)
        rn = ratio(hn, fig["nginx"])
        t.row("13b", "cached 1 KiB blob, workers: %d" % n, "req/s", dict(fig, cc=hn), 0, rn,
              ratio(hn, fig["dist"]), "cc/nginx >= 1.0 (nginx: 2 workers), >= 13a",
              "%s; %.2fx 13a" % (verdict(rn is not None and rn >= 1.0 and hn >= h1),
                                 ratio(hn, h1) or 0), wrk)
        tls = {k: statistics.median(v) for k, v in res["tls16"].items()}
        t1, tn, tng = tls.get("cache-tls-w1"), tls.get("cache-tls-w%d" % n), tls.get("nginx")
        how = "16 x `curl -k -o /dev/null URL` at once over HTTPS; 16 x size / wall clock"
        t.row("13c", "16 concurrent TLS downloads of a cached %d MiB blob, workers: 1" % big,
              "MB/s (sum)", {"nginx": tng, "cc": t1}, 0, ratio(t1, tng), None, "shown", DASH,
              how)
        rt = ratio(tn, t1)
        t.row("13d", "16 concurrent TLS downloads of a cached %d MiB blob, workers: %d"
              % (big, n), "MB/s (sum)", {"nginx": tng, "cc": tn}, 0, ratio(tn, tng), None,
              ">= 1.6x 13c", "%s: %.2fx 13c" % (verdict(rt is not None and rt >= 1.6), rt or 0),
              how)
        c1 = res["cold32"].get("cache-cold-w1", [])
        cn = res["cold32"].get("cache-cold-w%d" % n, [])
        cd = res["cold32"].get("distproxy-cold", [])
        fetches = sorted(set(v["fetches"] for v in cn))
        t.row("13e", "32 concurrent requests for one cold %d MiB blob: upstream fetches, "
              "workers: 1 / %d" % (cold, n), "fetches",
              {"dist": statistics.median([v["fetches"] for v in cd]) if cd else None}, 0,
              target="exactly 1 with workers: %d" % n,
              result="%s (every round: %s)" % (verdict(fetches == [1]), fetches),
              how="32 x `curl` at once; the origin's access log",
              cc_text="%s / %s" % (num(statistics.median([v["fetches"] for v in c1]) if c1
                                       else None),
                                   num(statistics.median([v["fetches"] for v in cn]) if cn
                                       else None)))
        rss = {k: v[0] for k, v in res["rss_mib"].items()}
        rn_ = rss.get(many)
        t.row("13f", "RSS after the hit rows, workers: %d (workers: 1: %.1f MiB)"
              % (n, rss.get(one) or 0), "MiB", {"cc": rn_}, 1, target="<= 24 MiB",
              result=verdict(rn_ is not None and rn_ <= 24), how="VmRSS of the process")
        wall = {k: statistics.median([v["wall"] for v in vals])
                for k, vals in res["cold32"].items() if vals}
        t.notes.append("Row 13: caches of their own started for these rows, same origin and "
                       "blobs; workers: %d is one loop per CPU. 32 cold clients took %s s "
                       "(workers: 1 / %d / Distribution, medians)." % (
                           n, " / ".join("%.2f" % wall[k] for k in
                                         ("cache-cold-w1", "cache-cold-w%d" % n,
                                          "distproxy-cold") if k in wall), n))
    scenario("workers", 13, "workers: 1 vs workers: N", "", "see rows 13a-13f", "", workers)

    others = []
    for name, res in results.items():
        if "others_per_try" in res:
            others.append("%s %s" % (name, "/".join("%d" % x for x in res["others_per_try"])))
        elif "others_cpu_percent" in res:
            others.append("%s %.0f" % (name, res["others_cpu_percent"]))
    if others:
        t.notes.append("CPU used by processes outside the benchmark, in percent of both "
                       "cores, per round (a try beyond the round count is a round run again "
                       "because it was disturbed; a few percent is noise): %s."
                       % ", ".join(others))
    for note in results.get("peer_failures", {}).get("notes", []):
        t.notes.append("A peer's failures (counted, not the benchmark's): %s." % note)
    if "setup" in results:
        t.notes.append("Setup failed: %s" % results["setup"]["error"])
    if "interrupted" in results:
        t.notes.insert(0, "**Interrupted**: the run was stopped before it finished; rows "
                       "not run have no figures.")

    return _document(env, mode, results, t, args)


def _document(env, mode, results, t, args):
    out = ["# content-cache side-by-side benchmark, %s (%s)" % (env.get("date"), env.get("mode")),
           "",
           "Command: `%s`. Figures are medians of %d round(s); servers alternate within each "
           "scenario (the order rotates each round). MB/s and GB/s are 10^6 and 10^9 bytes a "
           "second. cc = content-cache, dist = Docker Distribution in proxy mode."
           % (env.get("command", "bench/run.sh"), mode["rounds"]),
           ""]
    if env.get("mode") == "quick":
        out += ["**Quick mode**: %d MiB blobs, %d s wrk runs, %d idle connections, one round. "
                "It shows that every scenario still runs; its sizes are too small for the "
                "targets to mean anything." % (mode["big_mib"], mode["wrk_seconds"],
                                                mode["idle"]), ""]
    out += [t.markdown(), ""]
    if t.notes:
        out += ["Notes:", ""] + ["- " + n for n in t.notes] + [""]
    out += ["Environment:", ""]
    for key in ("cpu", "kernel", "content-cache", "nginx", "docker-registry", "wrk", "curl"):
        out.append("- %s: %s" % (key, env.get(key)))
    out.append("- other work: %s" % env.get("busy_before", "?"))
    out.append("- load average at start / end: %s / %s (other work on the machine shows here)"
               % (" ".join(env.get("loadavg_start", [])), " ".join(env.get("loadavg_end", []))))
    out += ["", "Per-round values:", ""]
    for name, res in results.items():
        if res.get("status") != "ok" or "values" not in res:
            continue
        for key, label in (("values", name), ("cpu_us", name + " (CPU µs per request)"),
                           ("miss_values", name + " (misses/s)"),
                           ("miss_cpu_us", name + " (CPU µs per miss)")):
            parts = []
            for server, vals in res.get(key, {}).items():
                parts.append("%s [%s]" % (server, "; ".join(short(v) for v in vals)))
            if parts:
                out.append("- %s: %s" % (label, ", ".join(parts)))
    return "\n".join(out) + "\n"
