"""End-to-end: containerd (Debian's containerd 1.6, driven by `ctr`) pulls through the
cache as a registry mirror, configured the way an operator does it: a hosts.toml in a
certs.d-style directory that names the cache as a host with capabilities pull and resolve
for the origin (examples/containerd/hosts.toml).

- A cold fetch of an image (`ctr content fetch --plain-http --hosts-dir DIR
  ORIGIN/repo:tag`) succeeds; the manifest and every blob went through the cache (its
  access log has them with containerd's `?ns=ORIGIN` query, blobs with cache=miss), the
  origin saw no request from containerd itself (no fallback to the origin), and the bytes
  containerd stored are the pushed ones.
- The same fetch by a second containerd (its own root: another machine) is served from
  the cache's disk: every blob cache=hit and no new blob GET at the origin. A fetch after
  `ctr content rm` of the blobs in the first containerd is served from the disk too.
- With capabilities = ["pull"] only, containerd resolves the tag at the origin itself and
  takes the blobs from the cache.
- One cache with two upstreams entries serves two registries: containerd's `?ns=` picks
  the origin of each image; a cache without an entry for the registry answers 404 and
  containerd falls back to the origin.
- With the cache stopped, containerd falls back to the origin (`server`): a mirror that is
  down costs speed, not availability.

Each containerd runs as a daemon of the test's own (its own root, state, sockets and
opt directory, the CRI plugin disabled) and is stopped by its PID. The test is skipped,
with the reason, when containerd or ctr is not installed (scripts/install-deps.sh
installs them) or when the daemon cannot start here.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_containerd.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "ctr/app"

# Origin access-log lines (combined format) end with "REFERER" "USER-AGENT".
_ORIGIN_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) \S+ "[^"]*" "([^"]*)"')


class ContainerdUnavailable(Exception):
    """containerd cannot run here: the test is skipped with this reason."""


class Containerd:
    """A containerd daemon of the test's own: root, state, gRPC and ttrpc sockets and the
    opt plugin's directory under `base`; CRI disabled. Stopped by its PID."""

    def __init__(self, work, name):
        self.work = work
        self.name = name
        self.base = work.sub(name, mkdir=True)
        # A unix socket path must fit in sun_path (108 bytes): a deep CC_E2E_TMPDIR
        # gets its sockets in a short directory of their own.
        sock_dir = self.base
        if len(os.path.join(sock_dir, "containerd.sock")) > 100:
            sock_dir = tempfile.mkdtemp(prefix="cc-ctrd-")
            self._own_sock_dir = sock_dir
        else:
            self._own_sock_dir = None
        self.sock = os.path.join(sock_dir, "containerd.sock")
        self.config_path = os.path.join(self.base, "config.toml")
        self.log_path = work.sub(name + ".log")
        self.proc = None

    def config_text(self):
        q = json.dumps  # a JSON string of a path is a valid TOML basic string
        return "\n".join([
            "version = 2",
            "root = %s" % q(os.path.join(self.base, "root")),
            "state = %s" % q(os.path.join(self.base, "state")),
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "",
            "[grpc]",
            "  address = %s" % q(self.sock),
            "",
            "[ttrpc]",
            "  address = %s" % q(self.sock + ".ttrpc"),
            "",
            "[debug]",
            '  address = ""',
            "",
            "[metrics]",
            '  address = ""',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            "  path = %s" % q(os.path.join(self.base, "opt")),
            "",
        ])

    def start(self):
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.proc = h.Proc(self.name, ["containerd", "--config", self.config_path],
                           self.log_path).start()

        def ready():
            if not self.proc.alive():
                raise ContainerdUnavailable(
                    "containerd exited during start (code %s); its log:\n%s"
                    % (self.proc.popen.returncode, h.tail(self.log_path, 25)))
            if not os.path.exists(self.sock):
                return False
            cp = subprocess.run(["ctr", "-a", self.sock, "version"], capture_output=True,
                                text=True, timeout=h.CLIENT_TIMEOUT, stdin=subprocess.DEVNULL)
            return cp.returncode == 0

        try:
            h.wait_until(ready, h.START_TIMEOUT, "%s to answer `ctr version`" % self.name)
        except h.WaitTimeout as e:
            self.stop()
            raise ContainerdUnavailable("%s; its log:\n%s" % (e, h.tail(self.log_path, 25)))
        h.log("%s: containerd pid %d on %s" % (self.name, self.proc.pid, self.sock))
        return self

    def stop(self):
        code = self.proc.stop() if self.proc else None
        if self._own_sock_dir:
            shutil.rmtree(self._own_sock_dir, ignore_errors=True)
        return code

    def ctr(self, args, check=True, text=True):
        argv = ["ctr", "-a", self.sock] + list(args)
        try:
            cp = subprocess.run(argv, capture_output=True, text=text,
                                timeout=h.CLIENT_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise h.ClientError("ctr timed out after %.0f s: %s\n%s%s" % (
                h.CLIENT_TIMEOUT, " ".join(argv), e.stdout or "", e.stderr or ""))
        if check and cp.returncode != 0:
            raise h.ClientError("ctr exited %d: %s\nstdout:\n%s\nstderr:\n%s" % (
                cp.returncode, " ".join(argv), cp.stdout, cp.stderr))
        return cp

    def fetch(self, hosts_dir, ref, check=True):
        return self.ctr(["content", "fetch", "--plain-http", "--hosts-dir", hosts_dir, ref],
                        check=check)

    def has(self, digest):
        return self.ctr(["content", "ls", "-q"]).stdout.split().count(digest) == 1

    def get(self, digest):
        return self.ctr(["content", "get", digest], text=False).stdout

    def rm(self, digests):
        return self.ctr(["content", "rm"] + list(digests))

    def blob_file(self, digest):
        """Where the content store keeps `digest` on disk. `ctr content rm` drops it from
        the namespace at once, but the file goes only when containerd's garbage
        collector runs; until then a fetch of it finds the file (the "shared" content
        policy) and downloads nothing."""
        return os.path.join(self.base, "root", "io.containerd.content.v1.content", "blobs",
                            "sha256", digest.split(":", 1)[1])


def write_hosts(work, name, origin, mirror_url, capabilities):
    """DIR/<origin host:port>/hosts.toml naming mirror_url as a host with `capabilities`
    and the origin as the server (the fallback); returns DIR."""
    d = work.sub(name, origin.host, mkdir=True)
    with open(os.path.join(d, "hosts.toml"), "w") as f:
        f.write('server = "%s"\n\n[host."%s"]\n  capabilities = [%s]\n'
                % (origin.url, mirror_url, ", ".join('"%s"' % c for c in capabilities)))
    return work.sub(name)


def origin_requests(origin):
    """[(method, uri, status, user_agent)] of every request the origin has completed."""
    out = []
    for line in h.read_lines(origin.log_path):
        m = _ORIGIN_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2), int(m.group(3)), m.group(4)))
    return out


def from_containerd(origin):
    """The origin's requests made by containerd itself, not by the cache."""
    return [r for r in origin_requests(origin) if r[3].startswith("containerd")]


def blob_lines(cache, digest):
    """The cache's access-log lines of GETs of blob `digest` of REPO."""
    prefix = "/v2/%s/blobs/%s" % (REPO, digest)
    return [e for e in cache.access_lines()
            if e.get("http.request.method") == "GET"
            and str(e.get("http.request.uri", "")).split("?")[0] == prefix]


def body(run):
    work = run.work
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            run.skip("containerd pulls through the cache",
                     "%s is not installed (apt-get install containerd; "
                     "scripts/install-deps.sh installs it)" % tool)
            return
    try:
        c1 = Containerd(work, "containerd1").start()
    except ContainerdUnavailable as e:
        run.skip("containerd pulls through the cache", "containerd cannot run here: %s" % e)
        return
    daemons = [c1]
    try:
        scenario(run, work, daemons)
    finally:
        for d in daemons:
            code = d.stop()
            h.log("%s stopped (exit %s)" % (d.name, code))


def scenario(run, work, daemons):
    c1 = daemons[0]
    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"),
                              h.random_layers([40_000, 300_000, 1_200_000], seed=61), tag="v1")
    h.push(work, image, origin, REPO, "v1")
    image2 = h.make_oci_layout(work.sub("layout2"),
                               h.random_layers([50_000, 70_000], seed=71), tag="v2")
    h.push(work, image2, origin, REPO, "v2")
    cache = run.cache([origin])
    ns = "?ns=" + origin.host.replace(":", "%3A")
    hosts = write_hosts(work, "hosts", origin, cache.url, ["pull", "resolve"])
    ref = "%s/%s:v1" % (origin.host, REPO)
    blobs = [image.config_digest] + image.layer_digests

    def cold_fetch():
        before = len(from_containerd(origin))
        c1.fetch(hosts, ref)
        # The manifest: resolved (HEAD of the tag) and fetched through the cache.
        manifests = [e for e in cache.access_lines()
                     if "/manifests/" in str(e.get("http.request.uri"))]
        expect(any(e.get("http.request.method") == "HEAD"
                   and e.get("http.request.uri") == "/v2/%s/manifests/v1%s" % (REPO, ns)
                   and str(e.get("http.response.status")) == "200" for e in manifests),
               "no HEAD /v2/%s/manifests/v1%s answered 200 in the cache's log; manifest "
               "lines: %r" % (REPO, ns, [e["_line"] for e in manifests]))
        for d in blobs:
            lines = h.wait_until(lambda d=d: blob_lines(cache, d), h.LOG_TIMEOUT,
                                 "the cache's access line of blob %s" % d)
            expect_eq(len(lines), 1, "GETs of %s at the cache" % d)
            e = lines[0]
            expect_eq(e.get("http.request.uri"), "/v2/%s/blobs/%s%s" % (REPO, d, ns),
                      "URI of the blob GET (containerd's ?ns= query)")
            expect_eq(str(e.get("http.response.status")), "200", "status of %s" % d)
            expect_eq(e.get("cache"), "miss", "cache= of the cold GET of %s" % d)
            expect(str(e.get("http.request.useragent", "")).startswith("containerd/"),
                   "user agent %r" % e.get("http.request.useragent"))
            expect_eq(h.settle(lambda d=d: origin.count_blob_gets(d)), 1,
                      "GETs of %s at the origin" % d)
            expect(c1.has(d), "containerd1 does not have %s after the fetch" % d)
            expect_eq(h.sha256_digest(c1.get(d)), d, "digest of what containerd stored")
        expect(c1.has(image.manifest_digest), "containerd1 lacks the manifest")
        expect_eq(from_containerd(origin)[before:], [],
                  "requests containerd made to the origin directly (a fallback)")

    if run.check("cold: ctr content fetch through the cache (hosts.toml, pull+resolve); "
                 "blobs cache=miss with ?ns=, once each at the origin", cold_fetch) is None:
        return

    def second_machine():
        c2 = Containerd(work, "containerd2").start()
        daemons.append(c2)
        gets_before = {d: origin.count_blob_gets(d) for d in blobs}
        c2.fetch(hosts, ref)
        for d in blobs:
            lines = h.wait_until(lambda d=d: len(blob_lines(cache, d)) >= 2 and blob_lines(cache, d),
                                 h.LOG_TIMEOUT, "a second access line of blob %s" % d)
            expect_eq(lines[1].get("cache"), "hit", "cache= of the second GET of %s" % d)
            expect_eq(h.sha256_digest(c2.get(d)), d, "digest of what containerd2 stored")
        expect_eq({d: h.settle(lambda d=d: origin.count_blob_gets(d)) for d in blobs},
                  gets_before, "blob GETs at the origin after the second fetch")
        expect_eq(from_containerd(origin), [], "requests containerd made to the origin")

    run.check("a second containerd (own root) fetches the same image: every blob cache=hit, "
              "no new blob GET at the origin", second_machine)

    def after_content_rm():
        c1.rm(blobs)
        for d in blobs:
            expect(not c1.has(d), "containerd1 still has %s after ctr content rm" % d)
        # Wait for the garbage collector (runs after a deletion; slower on a busy machine).
        h.wait_until(lambda: not any(os.path.exists(c1.blob_file(d)) for d in blobs),
                     h.START_TIMEOUT, "containerd1's garbage collector to remove the blob files")
        n_before = {d: len(blob_lines(cache, d)) for d in blobs}
        gets_before = {d: origin.count_blob_gets(d) for d in blobs}
        c1.fetch(hosts, ref)
        for d in blobs:
            lines = h.wait_until(
                lambda d=d: len(blob_lines(cache, d)) > n_before[d] and blob_lines(cache, d),
                h.LOG_TIMEOUT, "a new access line of blob %s" % d)
            expect_eq([e.get("cache") for e in lines[n_before[d]:]], ["hit"],
                      "cache= of the GETs of %s after ctr content rm" % d)
            expect(c1.has(d), "containerd1 lacks %s after the re-fetch" % d)
        expect_eq({d: h.settle(lambda d=d: origin.count_blob_gets(d)) for d in blobs},
                  gets_before, "blob GETs at the origin after the re-fetch")

    run.check("after `ctr content rm` of the blobs, a re-fetch is served from the cache's "
              "disk (cache=hit)", after_content_rm)

    def pull_only():
        hosts_pull = write_hosts(work, "hosts-pull", origin, cache.url, ["pull"])
        c3 = Containerd(work, "containerd3").start()
        daemons.append(c3)
        before = len(from_containerd(origin))
        c3.fetch(hosts_pull, "%s/%s:v2" % (origin.host, REPO))
        direct = from_containerd(origin)[before:]
        expect(any(m in ("HEAD", "GET") and u.startswith("/v2/%s/manifests/v2" % REPO)
                   for m, u, _, _ in direct),
               "containerd did not resolve the tag at the origin itself: %r" % direct)
        expect(not any("/blobs/" in u for _, u, _, _ in direct),
               "containerd fetched blobs from the origin directly: %r" % direct)
        for d in [image2.config_digest] + image2.layer_digests:
            lines = h.wait_until(lambda d=d: blob_lines(cache, d), h.LOG_TIMEOUT,
                                 "the cache's access line of blob %s" % d)
            expect_eq(lines[0].get("cache"), "miss", "cache= of %s" % d)
            expect_eq(h.sha256_digest(c3.get(d)), d, "digest of what containerd3 stored")

    run.check("capabilities = [\"pull\"] only: the tag is resolved at the origin, the blobs "
              "come from the cache", pull_only)

    def two_origins():
        # One cache for two registries: containerd's ?ns= picks the upstreams entry.
        origin2 = run.origin(name="origin2")
        image3 = h.make_oci_layout(work.sub("layout3"),
                                   h.random_layers([30_000, 90_000], seed=91), tag="v1")
        h.push(work, image3, origin2, REPO, "v1")
        multi = run.cache([origin, origin2], name="multi")
        hosts_multi = write_hosts(work, "hosts-multi", origin, multi.url, ["pull", "resolve"])
        write_hosts(work, "hosts-multi", origin2, multi.url, ["pull", "resolve"])
        c5 = Containerd(work, "containerd5").start()
        daemons.append(c5)
        c5.fetch(hosts_multi, ref)
        c5.fetch(hosts_multi, "%s/%s:v1" % (origin2.host, REPO))
        for img, org, other in ((image, origin, origin2), (image3, origin2, origin)):
            for d in [img.config_digest] + img.layer_digests:
                expect_eq(h.sha256_digest(c5.get(d)), d, "digest of what containerd5 stored")
                lines = h.wait_until(lambda d=d: blob_lines(multi, d), h.LOG_TIMEOUT,
                                     "the multi cache's access line of blob %s" % d)
                expect_eq(lines[0].get("upstream"), org.url, "upstream of %s" % d)
                expect_eq(other.count_blob_gets(d, status=None), 0,
                          "GETs of %s at the other origin" % d)
        expect_eq(from_containerd(origin2), [], "requests containerd made to origin2 directly")

    run.check("one cache, two origins: containerd's ?ns= picks each image's origin",
              two_origins)

    def unknown_ns():
        # A hosts.toml that names a cache without an entry for this registry: the cache
        # refuses (404 NAME_UNKNOWN) and containerd falls back to the origin.
        origin2 = next(o for o in run.origins if o.name == "origin2")
        hosts_wrong = write_hosts(work, "hosts-wrong", origin2, cache.url, ["pull", "resolve"])
        c6 = Containerd(work, "containerd6").start()
        daemons.append(c6)
        before = len(from_containerd(origin2))
        ns2 = "?ns=" + origin2.host.replace(":", "%3A")
        c6.fetch(hosts_wrong, "%s/%s:v1" % (origin2.host, REPO))
        refused = [e for e in cache.access_lines()
                   if str(e.get("http.request.uri", "")).endswith(ns2)]
        expect(refused and all(str(e.get("http.response.status")) == "404" for e in refused),
               "the cache's answers to ns=%s: %r" % (origin2.host, [e["_line"] for e in refused]))
        direct = from_containerd(origin2)[before:]
        expect(any(m == "GET" and "/blobs/" in u for m, u, _, _ in direct),
               "containerd did not fall back to origin2: %r" % direct)

    run.check("an ns the cache has no entry for: 404, and containerd falls back to the origin",
              unknown_ns)

    def cache_down():
        expect_eq(cache.stop(), 0, "the cache's exit code on SIGTERM")
        c4 = Containerd(work, "containerd4").start()
        daemons.append(c4)
        before = len(from_containerd(origin))
        c4.fetch(hosts, ref)
        direct = from_containerd(origin)[before:]
        for d in blobs:
            expect_eq(h.sha256_digest(c4.get(d)), d, "digest of what containerd4 stored")
            expect(any(m == "GET" and u.split("?")[0] == "/v2/%s/blobs/%s" % (REPO, d)
                       for m, u, _, _ in direct),
                   "containerd did not fetch %s from the origin itself: %r" % (d, direct))

    run.check("with the cache stopped, containerd falls back to the origin (server)",
              cache_down)


if __name__ == "__main__":
    h.main("test_containerd", body)
