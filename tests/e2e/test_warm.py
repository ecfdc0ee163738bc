"""End-to-end: warming a cache before a rollout (issue 20).

With a real origin (Docker Distribution, htpasswd logins) holding a multi-platform index
(two platform images pushed by `skopeo copy --all`) and a single-platform image:

  * `content-cache warm` stores every blob of every platform once (the origin's blob GETs
    are counted: one each), and the manifests as the manifest cache keeps them;
  * a second warm fetches nothing, and leaves a stored blob's last-pulled time alone;
  * a pull through the cache afterwards is all `cache=hit` and costs the origin no blob;
  * on a terminal, a line per reference is redrawn (state, blobs, bytes, rate);
  * `--platform` warms only the platforms asked for;
  * through a chain, the upstream cache is asked first, as a pull would ask it;
  * a reference the origin does not have, or credentials it refuses, fail with a clear
    message (exit 1) while the other references still warm; a Docker config.json's
    login is used for its own registry only;
  * an origin with token auth gives the warm a pull token at its realm, renewed when the
    warm outlasts it;
  * a wrong command line exits 2 with the usage;
  * a blob a serving cache would not store (past the disk budget) is not fetched;
  * `POST /debug/warm` does the same on a running cache while it serves clients, and
    `GET /debug/warm/{id}` reports it;
  * SIGINT in the middle of a fetch leaves nothing partial: no temporary file, no blob,
    `fsck` clean.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_warm.py
"""

import base64
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from fake_upstream import FakeUpstream  # noqa: E402

APP = "team/app"
WEB = "team/web"
BIG = "team/big"
USER, PASSWORD = "alice", "s3cret"
CREDS = "%s:%s" % (USER, PASSWORD)


class Images:
    """What the origin holds: the index (APP:multi) and its platform images, and WEB:1."""

    def __init__(self, work, origin):
        layout = work.sub("multi")
        self.index_bytes, self.platforms = h.make_index_layout(layout, "multi", [
            ("amd64", h.random_layers([40_000, 50_000], seed=300)),
            ("arm64", h.random_layers([41_000, 51_000], seed=310)),
        ])
        self.index_digest = h.sha256_digest(self.index_bytes)
        h.skopeo(work, ["copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                        "--dest-creds", CREDS, "oci:%s:multi" % layout,
                        "docker://%s/%s:multi" % (origin.host, APP)])
        self.web = h.make_oci_layout(work.sub("web"), h.random_layers([30_000], seed=320),
                                     tag="1")
        h.push(work, self.web, origin, WEB, creds=(USER, PASSWORD))

    def blobs(self, arch):
        return list(self.platforms[arch].blobs())

    def app_blobs(self):
        return self.blobs("amd64") + self.blobs("arm64")

    def manifests(self):
        return [self.index_digest] + [img.manifest_digest for img in self.platforms.values()]


def warm(cache, args, env=None, docker_config=None):
    """Runs `content-cache warm CONFIG ARGS` with the cache's config, a DOCKER_CONFIG of
    the test's own (empty unless given) and no terminal. Returns the CompletedProcess."""
    environ = cache.env()
    environ["DOCKER_CONFIG"] = docker_config or cache.work.sub("no-docker-config", mkdir=True)
    environ.update(env or {})
    return h.run_binary(["warm", cache.config_path] + list(args), env=environ)


def expect_exit(cp, code, what):
    expect(cp.returncode == code, "%s: expected exit %d, got %d\nstdout:\n%s\nstderr:\n%s"
           % (what, code, cp.returncode, cp.stdout, cp.stderr))
    expect("Sanitizer" not in cp.stderr and "runtime error:" not in cp.stderr,
           "%s: a sanitizer report:\n%s" % (what, cp.stderr))


def blob_gets(origin, digests):
    return {d: origin.count_blob_gets(d) for d in digests}


def settled_gets(origin, digests):
    return h.settle(lambda: blob_gets(origin, digests))


def main(run):
    work = run.work
    origin = run.origin(users={USER: PASSWORD})
    images = Images(work, origin)
    app_ref = "%s/%s:multi" % (origin.host, APP)  # as containerd names it: by its registry
    web_ref = "%s:1" % WEB

    cache = run.cache([origin], start=False)
    cache.write_config()
    first = {}

    def warm_stores_every_blob_once():
        cp = warm(cache, [app_ref, web_ref, "--creds", CREDS])
        expect_exit(cp, 0, "warm of two references")
        expect(cp.stdout.count("warmed ") == 2, "a line per reference:\n" + cp.stdout)
        digests = images.app_blobs() + list(images.web.blobs())
        for d in digests:
            expect(os.path.exists(cache.blob_file(d)), "blob %s is stored" % d)
        for d in images.manifests() + [images.web.manifest_digest]:
            expect(os.path.exists(cache.blob_file(d)), "manifest %s is stored" % d)
        root = os.path.join(cache.storage, "docker", "registry", "v2", "repositories")
        tag_link = os.path.join(root, APP, "_manifests", "tags", "multi", "current", "link")
        expect(os.path.exists(tag_link), "the tag's link is written, as for a pull")
        for d in images.app_blobs():
            link = os.path.join(root, APP, "_layers", "sha256", d.split(":")[1], "link")
            expect(os.path.exists(link), "the _layers link of %s" % d)
        origin.wait_for_count(lambda: min(blob_gets(origin, digests).values()), 1)
        gets = settled_gets(origin, digests)
        expect(all(n == 1 for n in gets.values()),
               "the origin served each blob once: %r" % gets)
        h.log("origin blob GETs for a warm of %d blobs: %d" % (len(gets), sum(gets.values())))
        for d in digests:  # (README: a warmed blob's last pull is when it was stored)
            st = os.stat(cache.blob_file(d))
            expect(abs(st.st_atime - st.st_mtime) < 5,
                   "a stored blob's last-pulled time is its store time: %s" % d)
        first.update(gets)

    run.check("warm stores every blob of every platform once, and the manifests",
              warm_stores_every_blob_once)

    def second_warm_fetches_nothing():
        probe = cache.blob_file(images.blobs("arm64")[1])
        st = os.stat(probe)
        os.utime(probe, (st.st_mtime - 86400, st.st_mtime))  # pulled a day ago
        before = os.stat(probe).st_atime
        cp = warm(cache, [app_ref, web_ref, "--creds", CREDS, "--json"])
        expect_exit(cp, 0, "second warm")
        summary = json.loads(cp.stdout)
        expect_eq(summary["failed"], 0, "failed references")
        for img in summary["images"]:
            expect_eq(img["status"], "done", "%s's status" % img["reference"])
            expect_eq(img["fetched"], 0, "blobs fetched by the second warm of %s" % img["reference"])
            expect_eq(img["already_stored"], img["blobs"], "blobs found stored")
        expect_eq(summary["images"][0]["platforms"], 2, "platforms of the index")
        expect_eq(summary["images"][0]["digest"], images.index_digest, "digest of the tag")
        expect_eq(settled_gets(origin, first), first, "origin blob GETs after the second warm")
        expect_eq(os.stat(probe).st_atime, before, "a skipped blob's last-pulled time")

    run.check("a second warm fetches nothing and leaves the last-pulled time alone",
              second_warm_fetches_nothing)

    def terminal_progress():
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        environ = cache.env()
        environ["DOCKER_CONFIG"] = work.sub("no-docker-config", mkdir=True)
        p = subprocess.Popen([h.binary_path(), "warm", cache.config_path, web_ref, app_ref,
                              "--creds", CREDS], env=environ, stdout=slave,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        try:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side has closed
                    break
                if not chunk:
                    break
                out += chunk
            p.wait(timeout=h.CLIENT_TIMEOUT)
        finally:
            os.close(master)
            if p.poll() is None:
                p.kill()
                p.wait()
        expect_eq(p.returncode, 0, "exit of a warm on a terminal")
        text = out.decode(errors="replace")
        expect("\x1b[2K" in text, "lines are redrawn on a terminal:\n%r" % text)
        last = text.split("\x1b[2F")[-1]  # the final drawing: one line per reference
        web_line = [ln for ln in last.splitlines() if web_ref in ln]
        app_line = [ln for ln in last.splitlines() if app_ref in ln]
        expect(web_line and "done" in web_line[0] and "2/2 blobs" in web_line[0] and
               "/s" in web_line[0], "the web line says done, blobs, bytes, rate:\n%r" % last)
        expect(app_line and "6/6 blobs" in app_line[0], "the index's line:\n%r" % last)
        rows = [ln.replace("\x1b[2K", "").rstrip("\r") for ln in last.splitlines()]
        expect(all(len(r) < 160 for r in rows), "each line fits the terminal's 160 columns")

    run.check("on a terminal, a line per reference: state, blobs, bytes, rate",
              terminal_progress)

    def pull_afterwards_is_all_hits():
        cache.start()
        out = work.sub("pulled-app")
        h.skopeo(work, ["copy", "--all", "--src-tls-verify=false", "--src-creds", CREDS,
                        "docker://%s/%s:multi" % (cache.host, APP), "oci:%s:multi" % out])
        h.pull(work, cache, WEB, "1", work.sub("pulled-web"), creds=(USER, PASSWORD))
        blob_lines = lambda: [e for e in cache.access_lines()  # noqa: E731
                              if "/blobs/" in e.get("http.request.uri", "")
                              and e.get("http.request.method") == "GET"]
        n_blobs = len(images.app_blobs()) + len(images.web.blobs())
        h.wait_for_count(lambda: len(blob_lines()), n_blobs, what="blob GETs in the access log")
        lines = blob_lines()
        expect(all(e.get("cache") == "hit" for e in lines),
               "every blob GET of the pull is a hit:\n" + "\n".join(e["_line"] for e in lines))
        expect_eq(settled_gets(origin, first), first, "origin blob GETs after the pull")
        cache.stop()

    run.check("a pull after the warm is all cache=hit, no blob from the origin",
              pull_afterwards_is_all_hits)

    def platform_filters():
        c = run.cache([origin], start=False, name="arm-only")
        c.write_config()
        before = settled_gets(origin, images.app_blobs())
        cp = warm(c, [app_ref, "--platform", "linux/arm64", "--creds", CREDS, "--json"])
        expect_exit(cp, 0, "warm --platform linux/arm64")
        expect_eq(json.loads(cp.stdout)["images"][0]["platforms"], 1, "platforms warmed")
        for d in images.blobs("arm64"):
            expect(os.path.exists(c.blob_file(d)), "arm64 blob %s stored" % d)
        for d in images.blobs("amd64"):
            expect(not os.path.exists(c.blob_file(d)), "amd64 blob %s not stored" % d)
        after = settled_gets(origin, images.app_blobs())
        for d in images.blobs("amd64"):
            expect_eq(after[d], before[d], "origin GETs of amd64 blob %s" % d)
        cp = warm(c, [app_ref, "--platform", "linux/s390x", "--creds", CREDS])
        expect_exit(cp, 1, "warm of a platform the index does not have")
        expect("linux/amd64, linux/arm64" in cp.stderr and app_ref in cp.stderr,
               "the reason names the platforms the index has:\n" + cp.stderr)

    run.check("--platform warms only the platforms asked for", platform_filters)

    def through_a_chain():
        # A cache whose upstreams entry has another cache before the origin: the warm
        # asks that cache, as a pull through it would, and both end up holding the image.
        parent = run.cache([origin], name="parent")
        c = run.cache([{"originhost": origin, "upstreamhosts": [parent]}], start=False,
                      name="child")
        c.write_config()
        digests = images.blobs("amd64")
        before = settled_gets(origin, digests)
        cp = warm(c, [app_ref, "--platform", "linux/amd64", "--creds", CREDS])
        expect_exit(cp, 0, "warm through a chain")
        for d in digests:
            expect(os.path.exists(c.blob_file(d)), "the child stored %s" % d)
            expect(os.path.exists(parent.blob_file(d)), "the parent stored %s" % d)
            expect_eq(parent.count_access(method="GET", uri="/v2/%s/blobs/%s?ns=%s"
                                          % (APP, d, origin.host)), 1,
                      "GETs of %s at the parent" % d)
        after = settled_gets(origin, digests)
        expect_eq({d: after[d] - before[d] for d in digests}, {d: 1 for d in digests},
                  "origin GETs per blob (the parent's fetch)")
        parent.stop()

    run.check("through a chain: the upstream cache is asked, as a pull would",
              through_a_chain)

    def failures_are_named_and_the_rest_warms():
        c = run.cache([origin], start=False, name="failing")
        c.write_config()
        missing = "%s:nope" % APP
        elsewhere = "registry.example.com/%s:1" % WEB  # no upstreams entry for it
        cp = warm(c, [missing, web_ref, elsewhere, "--creds", CREDS])
        expect_exit(cp, 1, "warm with a missing tag")
        expect("%s: not found" % missing in cp.stderr, "the missing tag is named:\n" + cp.stderr)
        expect("%s: no upstreams entry has the origin registry.example.com" % elsewhere
               in cp.stderr, "a registry the cache does not serve is named:\n" + cp.stderr)
        expect("warmed %s" % web_ref in cp.stdout, "the other reference warmed:\n" + cp.stdout)
        for d in images.web.blobs():
            expect(os.path.exists(c.blob_file(d)), "%s stored" % d)
        cp = warm(c, [web_ref, "--creds", "%s:wrong" % USER])
        expect_exit(cp, 1, "warm with a wrong password")
        expect("unauthorized" in cp.stderr and "credentials were refused" in cp.stderr,
               "a refused credential is said so:\n" + cp.stderr)
        expect("wrong" not in cp.stderr + cp.stdout, "the password is never printed")
        cp = warm(c, [web_ref])
        expect_exit(cp, 1, "warm without credentials")
        expect("no credentials given" in cp.stderr, "no credential is said so:\n" + cp.stderr)

    run.check("a missing reference or a refused credential is named (exit 1); the others "
              "warm", failures_are_named_and_the_rest_warms)

    def docker_config_logins():
        c = run.cache([origin], start=False, name="authfile")
        c.write_config()
        docker_dir = work.sub("docker-config", mkdir=True)
        auth = base64.b64encode(CREDS.encode()).decode()
        with open(os.path.join(docker_dir, "config.json"), "w") as f:
            json.dump({"auths": {origin.host: {"auth": auth}}}, f)
        cp = warm(c, [web_ref], docker_config=docker_dir)
        expect_exit(cp, 0, "warm with $DOCKER_CONFIG/config.json's login")
        other = work.sub("other-auth.json")
        with open(other, "w") as f:
            json.dump({"auths": {"https://registry.example.com/v1/": {"auth": auth}}}, f)
        cp = warm(c, [web_ref, "--authfile", other])
        expect_exit(cp, 1, "warm with a login for another registry only")
        expect("no credentials given" in cp.stderr,
               "another registry's login is not sent:\n" + cp.stderr)

    run.check("a Docker config.json's login goes to its own registry only", docker_config_logins)

    def token_auth_origin():
        import token_server as ts  # (python3-cryptography, as test_access_control needs)
        pki = work.sub("pki", mkdir=True)
        key, cert = ts.make_key_and_cert(pki, "issuer", "rsa")
        users = work.write("users.json", json.dumps(
            {USER: {"password": PASSWORD, "grants": {"team/tok": ["pull", "push"],
                                                     "team/slow": ["pull", "push"]}}}),
            mode=0o600)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "token_server.py")
        issued = work.sub("issued.txt")
        port, _ = h._start_server(lambda port: h.Proc(
            "token-server", [sys.executable, script, "--port", str(port), "--key", key,
                             "--issuer", "warm-issuer", "--service", "warm-e2e", "--users",
                             users, "--issued", issued, "--lifetime", "2"],
            work.sub("token-server.log"), env=h.server_env()),
            lambda port, proc: h.port_open(port), "token-server")
        tok_origin = run.origin(name="token-origin", extra_yaml=(
            "auth:\n  token:\n    realm: http://127.0.0.1:%d/token\n    service: warm-e2e\n"
            "    issuer: warm-issuer\n    rootcertbundle: %s\n" % (port, cert)))
        h.push(work, images.web, tok_origin, "team/tok", "1", creds=(USER, PASSWORD))
        c = run.cache([tok_origin], start=False, name="token-cache")
        c.write_config()
        cp = warm(c, ["team/tok:1", "--creds", CREDS])
        expect_exit(cp, 0, "warm from an origin with token auth")
        for d in images.web.blobs():
            expect(os.path.exists(c.blob_file(d)), "%s stored" % d)
        cp = warm(c, ["team/tok:1", "--creds", "%s:wrong" % USER])
        expect_exit(cp, 1, "warm with a password the token service refuses")
        expect("token service refused the credentials" in cp.stderr,
               "the realm's refusal is said:\n" + cp.stderr)
        # Tokens live 2 s here: a warm that takes longer gets a new one before a fetch
        # starts past three quarters of that (the origin is behind a paced proxy; one
        # blob at a time, the 2 MB layer first).
        slow = h.make_oci_layout(work.sub("slow"), [h.make_layer(2_000_000, seed=340),
                                                    h.make_layer(10_000, seed=341)], tag="1")
        h.push(work, slow, tok_origin, "team/slow", "1", creds=(USER, PASSWORD))
        proxy = FakeUpstream(work, name="token-pacer", role="proxy", target=tok_origin,
                             rate=1_000_000).start()
        try:
            pc = run.cache([proxy], start=False, name="token-paced")
            pc.write_config()
            before = len(h.read_lines(issued))
            cp = warm(pc, ["team/slow:1", "--creds", CREDS, "--jobs", "1"])
            expect_exit(cp, 0, "a warm longer than its token's life")
            tokens = len(h.read_lines(issued)) - before
            expect(tokens >= 2, "a new token was asked for during the warm (tokens: %d)" % tokens)
            for d in slow.blobs():
                expect(os.path.exists(pc.blob_file(d)), "%s stored" % d)
        finally:
            proxy.stop()

    run.check("an origin with token auth: the credentials get a pull token at its realm, "
              "renewed before it expires",
              token_auth_origin)

    def bad_command_lines_exit_2():
        cfg = cache.config_path
        # Two origins: --creds would go to both, and they are one registry's.
        two = run.cache([origin, "http://127.0.0.1:1"], start=False, name="two-origins")
        two.write_config()
        for args, says in [
            ([], "needs a CONFIG"),
            ([cfg], "needs a CONFIG and at least one IMAGE"),
            ([cfg, "Team/App:1"], "not a valid repository name"),
            ([cfg, web_ref, "--jobs", "0"], "--jobs"),
            ([cfg, web_ref, "--platform", "linux"], "not a platform"),
            ([cfg, web_ref, "--bogus"], "unknown option --bogus"),
            ([cfg, web_ref, "--creds", "nocolon"], "USER:PASSWORD"),
            ([cfg, web_ref, "--creds-file", work.sub("no-such-file")], "--creds-file"),
            ([two.config_path, web_ref, "127.0.0.1:1/x/y:1", "--creds", CREDS],
             "give each registry its login in an --authfile"),
        ]:
            cp = h.run_binary(["warm"] + args, env=cache.env())
            expect_exit(cp, 2, "warm %s" % " ".join(args))
            expect(says in cp.stderr, "warm %s says %r:\n%s" % (" ".join(args), says, cp.stderr))

    run.check("a wrong command line exits 2 with a message", bad_command_lines_exit_2)

    big = h.make_oci_layout(work.sub("big"), [h.make_layer(3_000_000, seed=330)], tag="1")
    h.push(work, big, origin, BIG, creds=(USER, PASSWORD))

    def budget_refuses_what_would_not_be_stored():
        c = run.cache([origin], start=False, name="small-budget", extra_downstream_yaml=(
            "        diskbudget:\n          maxsize: 1MiB\n          highwatermark: 90\n"))
        c.write_config()
        layer = big.layer_digests[0]
        before = settled_gets(origin, [layer])
        cp = warm(c, ["%s:1" % BIG, "--creds", CREDS, "--json"])
        expect_exit(cp, 0, "warm of an image with a blob larger than the budget")
        img = json.loads(cp.stdout)["images"][0]
        expect_eq((img["not_admitted"], img["blobs_done"], img["blobs"]), (1, 1, 2),
                  "blobs not admitted, stored, in all")
        expect(not os.path.exists(c.blob_file(layer)), "the 3 MB layer is not stored")
        expect(os.path.exists(c.blob_file(big.config_digest)), "its config is")
        expect_eq(settled_gets(origin, [layer]), before, "origin GETs of the refused layer")

    run.check("a blob a serving cache would not store (past the disk budget) is not fetched",
              budget_refuses_what_would_not_be_stored)

    def debug_warm_on_a_running_cache():
        # The cache's origin is behind a paced proxy, so the warm of BIG takes seconds:
        # a client's pull meanwhile shows it serves while it warms.
        proxy = FakeUpstream(work, name="paced", role="proxy", target=origin,
                             rate=500_000).start()
        try:
            c = run.cache([proxy], debug=True, name="running")
            auth = {"Authorization": h.basic_auth(USER, PASSWORD)}
            digests = list(big.blobs()) + images.blobs("amd64")
            before = settled_gets(origin, digests)
            body = json.dumps({"images": ["%s:1" % BIG, "%s:multi" % APP],
                               "platforms": ["linux/amd64"]})
            r = h.request(c.debug_port, "POST", "/debug/warm", headers=dict(
                auth, **{"Content-Type": "application/json"}), body=body)
            expect_eq(r.status, 202, "POST /debug/warm: %r" % r)
            job = r.json()["status"]
            expect_eq(r.header("Location"), job, "Location of the job")
            # (The fake proxy keeps one Accept header of several, as skopeo sends them:
            # a client's blob GET, not a skopeo pull, goes through it.)
            for d, data in images.web.blobs().items():
                r = h.request(c.port, "GET", "/v2/%s/blobs/%s" % (WEB, d), headers=auth)
                expect(r.status == 200 and r.body == data, "a client's GET of %s: %r" % (d, r))
            during = h.request(c.debug_port, "GET", job).json()
            expect_eq(during["state"], "running", "the warm, after a client's GETs meanwhile")
            big_now = during["images"][0]
            expect(big_now["status"] == "fetching" and big_now["bytes_done"] < big_now["bytes"],
                   "the job's progress while the layer comes: %r" % big_now)
            h.wait_until(lambda: h.request(c.debug_port, "GET", job).json()["state"] ==
                         "finished", h.CLIENT_TIMEOUT, "the warm job to finish")
            status = h.request(c.debug_port, "GET", job).json()
            expect_eq([i["status"] for i in status["images"]], ["done", "done"],
                      "the job's references: %r" % status)
            expect_eq(status["images"][1]["platforms"], 1, "platforms of the index warmed")
            for d in digests:
                expect(os.path.exists(c.blob_file(d)), "%s stored by the job" % d)
            for d in images.blobs("arm64"):
                expect(not os.path.exists(c.blob_file(d)), "arm64 blob %s not stored" % d)
            after = settled_gets(origin, digests)
            expect_eq({d: after[d] - before[d] for d in digests}, {d: 1 for d in digests},
                      "origin GETs per blob for the job")

            def post(body, headers=None):
                return h.request(c.debug_port, "POST", "/debug/warm", headers=headers or {},
                                 body=body)
            r = post("{not json")
            expect(r.status == 400 and "JSON object" in r.json()["error"], "bad JSON: %r" % r)
            r = post(json.dumps({"images": ["Team/App:1"]}))
            expect(r.status == 400 and "Team/App:1" in r.json()["error"], "bad name: %r" % r)
            r = post(json.dumps({"images": ["%s:1" % WEB], "platforms": ["linux"]}))
            expect(r.status == 400 and "platform" in r.json()["error"], "bad platform: %r" % r)
            r = post(json.dumps({"images": ["x" * 70_000]}))
            expect_eq(r.status, 413, "a body past 64 KiB: %r" % r)
            expect_eq(h.request(c.debug_port, "GET", "/debug/warm/999").status, 404,
                      "an unknown job")
            expect_eq(h.request(c.debug_port, "PUT", "/debug/warm").status, 405, "PUT")
            r = post(json.dumps({"images": ["%s:1" % WEB]}))  # no Authorization
            expect_eq(r.status, 202, "POST without credentials")
            job = r.json()["status"]
            h.wait_until(lambda: h.request(c.debug_port, "GET", job).json()["state"] ==
                         "finished", h.CLIENT_TIMEOUT, "the job without credentials to finish")
            status = h.request(c.debug_port, "GET", job).json()
            expect(status["failed"] == 1 and "no credentials given" in
                   status["images"][0]["error"], "refused without credentials: %r" % status)
            expect(PASSWORD not in h.tail(c.stdout_path) + h.tail(c.stderr_path),
                   "the password is not logged")
            # Stopping the cache while a warm runs: the warm is cancelled, the cache
            # drains and exits 0, nothing partial stays.
            r = post(json.dumps({"images": ["%s:multi" % APP], "platforms": ["linux/arm64"]}),
                     headers=auth)
            expect_eq(r.status, 202, "POST just before the stop")
            expect_eq(c.stop(), 0, "the cache's exit code, stopped while warming")
            expect_eq(c.tmp_files(), {}, "temporary files after the stop")
        finally:
            proxy.stop()

    run.check("POST /debug/warm warms a running cache while it serves clients; "
              "GET /debug/warm/{id} reports it", debug_warm_on_a_running_cache)

    def debug_warm_login_stays_with_its_registry():
        # Two origins: the POST's Authorization is one registry's login.
        c = run.cache([origin, "http://127.0.0.1:1"], debug=True, name="two-debug")
        auth = {"Authorization": h.basic_auth(USER, PASSWORD)}
        body = json.dumps({"images": [web_ref, "127.0.0.1:1/x/y:1"]})
        r = h.request(c.debug_port, "POST", "/debug/warm", headers=auth, body=body)
        expect(r.status == 400 and "one registry's login" in r.json()["error"],
               "a login for images of two registries: %r" % r)
        lines = [line for line in h.read_lines(c.stderr_path) if "127.0.0.1:1" in line]
        expect(not any("fetch" in line or "resolv" in line for line in lines),
               "nothing was asked of the second registry: %r" % lines)
        r = h.request(c.debug_port, "POST", "/debug/warm", headers=auth,
                      body=json.dumps({"images": [web_ref]}))
        expect_eq(r.status, 202, "the same login for one registry's image")
        c.stop()

    run.check("POST /debug/warm: a login is refused (400) for images of two registries, "
              "never sent to the second", debug_warm_login_stays_with_its_registry)

    def sigint_leaves_nothing_partial():
        layer = big.layer_digests[0]
        proxy = FakeUpstream(work, name="pacer", role="proxy", target=origin,
                             rate=300_000).start()
        try:
            c = run.cache([proxy], start=False, name="interrupted")
            c.write_config()
            environ = c.env()
            environ["DOCKER_CONFIG"] = work.sub("no-docker-config", mkdir=True)
            p = subprocess.Popen([h.binary_path(), "warm", c.config_path, "%s:1" % BIG,
                                  "--creds", CREDS], env=environ, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            try:
                h.wait_until(lambda: c.tmp_files(layer) or p.poll() is not None,
                             h.CLIENT_TIMEOUT, "the layer's fetch to begin")
                expect(p.poll() is None, "warm still running when interrupted")
                p.send_signal(signal.SIGINT)
                out, err = p.communicate(timeout=h.STOP_TIMEOUT)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            expect(p.returncode == 1, "exit 1 after SIGINT, got %s:\n%s" % (p.returncode, err))
            expect("interrupted" in err, "it says it was interrupted:\n" + err)
            expect_eq(c.tmp_files(), {}, "temporary files left")
            expect(not os.path.exists(c.blob_file(layer)), "the unfinished layer is not stored")
            fsck = h.run_binary(["fsck", c.config_path], env=c.env())
            expect(fsck.returncode == 0, "fsck after the interrupt:\n" + fsck.stdout + fsck.stderr)
        finally:
            proxy.stop()

    run.check("SIGINT during a warm leaves nothing partial", sigint_leaves_nothing_partial)


if __name__ == "__main__":
    h.main("test_warm", main)
