"""The deployment examples under examples/ are valid, and the ones that can run, run.

- Every examples/**/*.yml passes `content-cache --check`, with no warning. The files an
  example names (CA certificates, the cache's certificate and key, the token issuer's
  bundle, policydir) must exist for --check, and the storage root should not be the
  machine's: each example is checked as a copy in the work directory in which every
  absolute path it names is replaced by a file made here (PATHS below: a test CA, a
  certificate for 127.0.0.1 signed by it, its key, a copy of examples/policies/, a
  storage directory). A path the test does not know fails the check: add it to PATHS.
- The two-level chain (examples/chain/: edge.yml, regional-a.yml, regional-b.yml) and
  tls.yml run as written, on this machine: the same copies with their addresses, the
  origin and the upstream caches' hostnames replaced by 127.0.0.1 ports, in front of
  an HTTPS docker-registry of the test's CA. skopeo pulls an image through the edge
  (plain HTTP) and through tls.yml's cache (HTTPS, verifying) byte for byte.
- examples/Dockerfile: the stages, the entry point and the rest of its contract, no
  `# syntax=` line, every Debian package it installs exists (apt-cache policy), its build
  packages are those of scripts/install-deps.sh (narrowed as BUILD_STAGE_NARROWING says),
  and its runtime packages hold every shared library the binary links against.
  test_docker_image.py builds and runs it.
- examples/content-cache.service: sections and keys, the sandboxing settings, and
  `systemd-analyze verify` (offline; skipped where systemd-analyze is missing).
- examples/containerd/hosts.toml parses (tomllib) and names a cache with pull and
  resolve; examples/docker/daemon.json parses and names a mirror.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_examples.py
"""

import glob
import http.client
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from e2e_tls import TlsOrigin, https_get, make_pki  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

EXAMPLES = os.path.join(h.SOURCE_DIR, "examples")
REPO = "examples/app"

# Absolute paths the examples name, and what stands for each in the checked copies:
# "ca" a CA certificate, "cert"/"key" a server certificate for 127.0.0.1 signed by it
# and its key, "issuer" a token issuer's certificate, "policies" a copy of
# examples/policies/, "storage" a fresh directory.
PATHS = {
    "/certs/dtr-ca.pem": "ca",
    "/certs/regional-ca.pem": "ca",
    "/certs/cache.pem": "cert",
    "/certs/cache.key": "key",
    "/certs/token-issuer.pem": "issuer",
    "/etc/content-cache/policies": "policies",
    "/var/lib/registry": "storage",
    "/var/lib/content-cache-front": "storage",
}

# An absolute path in a value (not part of a URL: no ':' or '/' or word before it).
_ABS_PATH = re.compile(r"(?<![\w.:/-])(/[A-Za-z0-9._/-]+)")


def example_ymls():
    """The cache configurations among examples/**/*.yml (prometheus/ holds alerting rules,
    checked by test_dashboards.py)."""
    return sorted(p for p in glob.glob(os.path.join(EXAMPLES, "**", "*.yml"), recursive=True)
                  if not rel(p).startswith("prometheus/"))


def rel(path):
    return os.path.relpath(path, EXAMPLES)


def strip_comment(line):
    # YAML comments in these files start a line or follow a space.
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def referenced_paths(text):
    out = []
    for line in text.splitlines():
        out.extend(_ABS_PATH.findall(strip_comment(line)))
    return out


class Rewriter:
    """Makes the checked copies: the example's text with its absolute paths (and, for the
    running examples, its URLs and addresses) replaced."""

    def __init__(self, work, pki):
        self.work = work
        self.files = dict(pki)
        pol = work.sub("policies")
        shutil.copytree(os.path.join(EXAMPLES, "policies"), pol,
                        ignore=shutil.ignore_patterns("README*", "*.md"))
        self.files["policies"] = pol

    def text(self, path, storage_name, urls=None, addr=None):
        with open(path) as f:
            text = f.read()
        unknown = sorted(set(p for p in referenced_paths(text) if p not in PATHS))
        expect(not unknown, "%s names paths the test does not know (add them to PATHS in "
               "test_examples.py): %s" % (rel(path), ", ".join(unknown)))
        storage = self.work.sub("storage-" + storage_name, mkdir=True)
        out = []
        for line in text.splitlines(keepends=True):
            body = strip_comment(line)
            rest = line[len(body):]
            for p in sorted(PATHS, key=len, reverse=True):
                kind = PATHS[p]
                new = storage if kind == "storage" else self.files[kind]
                body = re.sub(r"(?<![\w.:/-])%s(?![\w./-])" % re.escape(p), new, body)
            for old, new in (urls or {}).items():
                body = body.replace(old, new)
            if addr is not None:
                body = re.sub(r"^(\s*addr:\s*)\S+", lambda m: m.group(1) + addr, body)
            out.append(body + rest)
        return "".join(out)


class ExampleCache(h.Cache):
    """A cache running an example's copy: addr, origin and upstream URLs replaced."""

    def __init__(self, work, rewriter, example, name, urls, https=False):
        super().__init__(work, [], name=name)
        self.rewriter = rewriter
        self.example = example
        self.urls = urls
        self.https = https

    @property
    def url(self):
        return ("https://" if self.https else "http://") + self.host

    def config_text(self, port):
        return self.rewriter.text(self.example, self.name, urls=self.urls,
                                  addr="127.0.0.1:%d" % port)


# --- the configs ----------------------------------------------------------------------

def check_all_configs(run, work, rw):
    ymls = example_ymls()
    expect(len(ymls) >= 8, "expected at least 8 example configs, found %d" % len(ymls))
    for path in ymls:
        name = rel(path)

        def one(path=path, name=name):
            copy = work.sub("checked", name)
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            with open(copy, "w") as f:
                f.write(rw.text(path, name.replace("/", "-")))
            cp = h.run_binary(["--check", copy], env=h.server_env())
            expect_eq(cp.returncode, 0, "exit code of --check %s (stderr: %s)"
                      % (name, cp.stderr.strip()))
            expect("is valid" in cp.stdout, "--check output: %r" % cp.stdout)
            expect_eq(cp.stderr.strip(), "", "--check %s stderr (warnings)" % name)
            return cp.stdout

        out = run.check("%s passes content-cache --check (no warnings)" % name, one)
        if out and name == "policydir.yml":
            def drop_ins(out=out):
                hooks = out.split("hooks in force:", 1)[1]
                for hook in ("blob_ttl", "format_log", "evict"):
                    expect("%s (drop-in)" % hook in hooks,
                           "%s is not a drop-in in --check's output: %r" % (hook, hooks))
            run.check("policydir.yml: --check loads examples/policies as drop-ins", drop_ins)
        if out and name == "chain/edge.yml":
            def edge_upstreams(out=out):
                expect(re.search(r"upstreams\[0\]:\s+https://cache-a\.example\.com:5000, "
                                 r"https://cache-b\.example\.com:5000, then origin "
                                 r"https://dtr\.example\.com", out),
                       "edge.yml's upstreams in --check's output: %r" % out)
            run.check("chain/edge.yml: regional caches A and B, then the origin", edge_upstreams)
        if out and name == "config.yml":
            def origin_only(out=out):
                # No upstream caches: the line names the origin alone, with no "then".
                lines = [l for l in out.splitlines() if l.startswith("upstreams[")]
                expect_eq(lines, ["upstreams[0]:  origin https://dtr.example.com"],
                          "config.yml's upstreams in --check's output")
            run.check("config.yml: --check names the origin alone (no upstream caches, no "
                      "\"then\")", origin_only)

    def doc_config_untouched():
        # examples/config.yml is the document's file: the same keys and values.
        with open(os.path.join(EXAMPLES, "config.yml")) as f:
            text = "\n".join(line for line in f.read().splitlines()
                             if line.strip() and not line.lstrip().startswith("#"))
        for needle in ("version: 0.1", "rootdirectory: /var/lib/registry", "addr: :5000",
                       "name: downstream", "blobttl: 24h", "- originhost: https://",
                       "- /certs/dtr-ca.pem", "enabled: true"):
            expect(needle in text, "examples/config.yml lacks %r" % needle)

    run.check("config.yml is the document's deployment file", doc_config_untouched)


# --- running the chain and the TLS example ------------------------------------------

def run_examples(run, work, rw, pki):
    origin = TlsOrigin(work, pki)
    run.origins.append(origin)
    origin.start()
    image = h.make_oci_layout(work.sub("layout"),
                              h.random_layers([20_000, 150_000, 600_000], seed=81), tag="v1")
    h.push(work, image, origin, REPO, "v1")
    blobs = [image.config_digest] + image.layer_digests

    def start(example, name, urls, https=False):
        c = ExampleCache(work, rw, os.path.join(EXAMPLES, example), name, urls, https)
        run.caches.append(c)
        return c.start()

    origin_url = {"https://dtr.example.com": origin.url}
    state = {}

    def chain_runs():
        a = start("chain/regional-a.yml", "regional-a", origin_url, https=True)
        b = start("chain/regional-b.yml", "regional-b", origin_url, https=True)
        urls = dict(origin_url)
        urls["https://cache-a.example.com:5000"] = a.url
        urls["https://cache-b.example.com:5000"] = b.url
        edge = start("chain/edge.yml", "edge", urls)
        state["edge"] = edge
        out = work.sub("pull-edge")
        h.pull(work, edge, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "skopeo pull through the edge")
        # Every blob went edge -> a regional cache (over TLS, trusted through cas) -> origin.
        for d in blobs:
            ups = [e.get("upstream") for e in edge.access_lines()
                   if str(e.get("http.request.uri", "")).split("?")[0]
                   == "/v2/%s/blobs/%s" % (REPO, d) and e.get("cache") == "miss"]
            expect_eq(len(ups), 1, "misses of %s at the edge" % d)
            expect(ups[0] in (a.url, b.url), "the edge fetched %s from %r, not a regional "
                   "cache" % (d, ups[0]))
            expect_eq(h.settle(lambda d=d: origin.count_blob_gets(d)), 1,
                      "GETs of %s at the origin" % d)
        served = {c.name: sum(c.count_access(method="GET", status=200, uri="/v2/%s/blobs/%s"
                                             % (REPO, d)) for d in blobs) for c in (a, b)}
        h.log("  blob GETs served by the regional caches: %r" % served)
        expect(all(n >= 1 for n in served.values()), "round robin: %r" % served)
        relayed = sum(c.count_access(method="GET", status=200,
                                     uri="/v2/%s/manifests/v1" % REPO) for c in (a, b))
        expect(relayed >= 1, "the manifest was not relayed through a regional cache")

    run.check("chain/: edge -> regional A/B (HTTPS, cas) -> HTTPS origin: an image pulls "
              "through the edge byte for byte, blobs split between A and B", chain_runs)

    def edge_hits():
        edge = state["edge"]
        before = {d: origin.count_blob_gets(d) for d in blobs}
        out = work.sub("pull-edge-2")
        h.pull(work, edge, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "second pull through the edge")
        h.wait_until(lambda: all(edge.count_access(method="GET", cache="hit",
                                                   uri="/v2/%s/blobs/%s" % (REPO, d)) >= 1
                                 for d in blobs), h.LOG_TIMEOUT, "hits at the edge")
        expect_eq({d: origin.count_blob_gets(d) for d in blobs}, before,
                  "origin blob GETs after the second pull")

    if "edge" in state:
        run.check("chain/: a second pull is served from the edge's disk", edge_hits)

    def tls_runs():
        c = start("tls.yml", "tls", origin_url, https=True)
        status, _, _ = https_get(c.port, "/v2/", pki["ca"])
        expect_eq(status, 200, "GET /v2/ over verified HTTPS")
        certdir = work.sub("skopeo-certs", mkdir=True)
        shutil.copy(pki["ca"], os.path.join(certdir, "ca.crt"))
        out = work.sub("pull-tls")
        os.makedirs(out, exist_ok=True)
        h.skopeo(work, ["copy", "--src-tls-verify=true", "--src-cert-dir", certdir,
                        "--src-no-creds", "docker://%s/%s:v1" % (c.host, REPO), "dir:%s" % out])
        expect_eq(h.verify_pulled(out, image), [], "skopeo pull from tls.yml's cache")
        ctx = ssl.create_default_context(cafile=pki["ca"])
        conn = http.client.HTTPSConnection("127.0.0.1", c.port, context=ctx, timeout=10)
        try:
            conn.request("GET", "/v2/")
            resp = conn.getresponse()
            resp.read()
            expect_eq(resp.getheader("Strict-Transport-Security"), "max-age=31536000",
                      "the http.headers header")
        finally:
            conn.close()

    run.check("tls.yml: serves HTTPS (skopeo verifying the certificate) from an HTTPS origin "
              "trusted through cas", tls_runs)


# --- Dockerfile -------------------------------------------------------------------------

def dockerfile_instructions(path):
    """[(INSTRUCTION, args)] with continuation lines joined and comments dropped."""
    out = []
    cur = ""
    with open(path) as f:
        for line in f:
            s = line.rstrip("\n")
            if not cur and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if cur and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                cur += s[:-1] + " "
                continue
            cur += s
            word, _, args = cur.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            cur = ""
    return out


def stages(instrs):
    """[(from_args, [(INSTRUCTION, args)])] per FROM."""
    out = []
    for ins, args in instrs:
        if ins == "FROM":
            out.append((args, []))
        elif out:
            out[-1][1].append((ins, args))
    return out


def apt_packages(run_args):
    """The packages of the `apt-get install` commands in a RUN line."""
    pkgs = []
    for cmd in re.split(r"&&|;", run_args):
        words = shlex.split(cmd)
        words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=x
        if "apt-get" in words and "install" in words:
            after = words[words.index("install") + 1:]
            pkgs.extend(w for w in after if not w.startswith("-"))
    return pkgs


def install_deps_build_packages():
    path = os.path.join(h.SOURCE_DIR, "scripts", "install-deps.sh")
    with open(path) as f:
        text = f.read()
    block = text.split("# Build:", 1)[1].split("\n)", 1)[0]
    pkgs = []
    for line in block.splitlines()[1:]:
        word = line.split("#", 1)[0].strip()
        if word:
            pkgs.append(word)
    return pkgs


# How the Dockerfile's build stage narrows install-deps.sh's build packages (fewer
# packages to unpack in every image build): build-essential becomes the C compiler alone,
# node-llhttp is fetched with `apt-get download` and unpacked with `dpkg-deb -x` (its C
# sources, without the Node.js it depends on), and ca-certificates is added for the
# bundle that the runtime stage copies.
BUILD_STAGE_NARROWING = {"build-essential": ["gcc", "libc6-dev", "make"], "node-llhttp": []}
BUILD_STAGE_EXTRA = ["ca-certificates"]


def check_dockerfile(run):
    path = os.path.join(EXAMPLES, "Dockerfile")
    instrs = dockerfile_instructions(path)
    st = stages(instrs)
    info = {}

    def structure():
        expect_eq(len(st), 2, "number of stages (FROM lines)")
        expect(re.fullmatch(r"debian:bookworm\s+AS\s+build", st[0][0], re.I),
               "build stage: FROM %r" % st[0][0])
        expect(re.fullmatch(r"debian:bookworm(-slim)?", st[1][0]),
               "runtime stage: FROM %r" % st[1][0])
        final = dict()
        for ins, args in st[1][1]:
            final.setdefault(ins, []).append(args)
        expect_eq(final.get("ENTRYPOINT"), ['["content-cache"]'], "ENTRYPOINT (exec form)")
        expect_eq(json.loads(final["ENTRYPOINT"][0]), ["content-cache"], "ENTRYPOINT")
        expect_eq(final.get("EXPOSE"), ["5000"], "EXPOSE")
        expect_eq(final.get("VOLUME"), ["/var/lib/registry"], "VOLUME")
        user = (final.get("USER") or ["root"])[-1].split(":")[0]
        expect(user not in ("root", "0"), "the image runs as root")
        copies = final.get("COPY", [])
        for what in ("/staging/usr/local/bin/content-cache",
                     "/staging/usr/local/share/content-cache/",
                     "/etc/ssl/certs/ca-certificates.crt"):
            expect(any(c.startswith("--from=build %s " % what) for c in copies),
                   "the runtime stage copies %s from the build stage: %r" % (what, copies))
        with open(path) as f:
            expect(not re.match(r"\s*#\s*syntax\s*=", f.read(), re.I),
                   "a # syntax= line: BuildKit would fetch its frontend from Docker Hub")
        build_runs = " ".join(a for i, a in st[0][1] if i == "RUN")
        expect("cmake --install" in build_runs, "the build stage runs cmake --install")
        expect("apt-get download node-llhttp" in build_runs and "dpkg-deb -x node-llhttp_" in
               build_runs, "the build stage unpacks node-llhttp's sources")
        final_runs = " ".join(a for i, a in st[1][1] if i == "RUN")
        expect("apt-get clean" in final_runs and "rm -rf /var/lib/apt/lists/*" in final_runs,
               "the runtime stage leaves no package cache or lists")
        expect("-DCMAKE_BUILD_TYPE=Release" in build_runs, "a Release build")
        expect("-DCC_TESTS=OFF" in build_runs, "the image builds without the test suite")
        # The install rules the image relies on.
        with open(os.path.join(h.SOURCE_DIR, "CMakeLists.txt")) as f:
            cm = f.read()
        expect("install(TARGETS content-cache DESTINATION ${CMAKE_INSTALL_BINDIR})" in cm,
               "binary install rule")
        expect("DESTINATION ${CMAKE_INSTALL_DATADIR}/content-cache/policies" in cm,
               "policies install rule")
        expect("set(CC_POLICY_INSTALL_DIR ${CMAKE_INSTALL_FULL_DATADIR}/content-cache/policies)"
               in cm, "the binary looks for its policies under the install prefix")
        info["build"] = [p for i, a in st[0][1] if i == "RUN" for p in apt_packages(a)]
        info["runtime"] = [p for i, a in st[1][1] if i == "RUN" for p in apt_packages(a)]
        expect(info["build"] and info["runtime"], "apt-get install in both stages")

    if run.check("Dockerfile: two Debian 12 stages, ENTRYPOINT [\"content-cache\"], EXPOSE "
                 "5000, VOLUME /var/lib/registry, non-root, installs with cmake", structure) is None:
        return

    def packages_exist():
        pkgs = sorted(set(info["build"] + info["runtime"] + ["node-llhttp"]))
        cp = subprocess.run(["apt-cache", "policy"] + pkgs, capture_output=True, text=True,
                            timeout=120)
        candidates = {}
        name = None
        for line in cp.stdout.splitlines():
            m = re.fullmatch(r"(\S+):", line)
            if m:
                name = m.group(1)
                continue
            m = re.match(r"\s+Candidate:\s*(\S+)", line)
            if m and name:
                candidates[name] = m.group(1)
        missing = [p for p in pkgs if candidates.get(p, "(none)") == "(none)"]
        expect_eq(missing, [], "Dockerfile packages without an installation candidate in "
                  "apt-cache policy (run apt-get update first if the lists are empty)")

    if shutil.which("apt-cache"):
        run.check("Dockerfile: every apt package it installs exists (apt-cache policy)",
                  packages_exist)
    else:
        run.skip("Dockerfile packages exist", "no apt-cache here")

    def build_packages():
        want = list(BUILD_STAGE_EXTRA)
        for pkg in install_deps_build_packages():
            want.extend(BUILD_STAGE_NARROWING.get(pkg, [pkg]))
        expect_eq(sorted(info["build"]), sorted(want),
                  "build-stage packages vs scripts/install-deps.sh's Build group, narrowed")

    run.check("Dockerfile: the build stage installs install-deps.sh's build packages "
              "(build-essential narrowed to gcc, libc6-dev, make; node-llhttp unpacked)",
              build_packages)

    def runtime_libraries():
        cp = subprocess.run(["ldd", h.binary_path()], capture_output=True, text=True, timeout=60)
        expect_eq(cp.returncode, 0, "ldd exit code")
        libs = re.findall(r"=>\s+(/\S+)", cp.stdout)
        base = ("libc.so", "libm.so", "ld-linux", "libpthread.so", "libdl.so")
        if "libasan" in cp.stdout or "libtsan" in cp.stdout:
            # A sanitizer build (scripts/test.sh --asan or --tsan) links its runtimes: the
            # image's Release build does not.
            base += ("libasan.so", "libubsan.so", "liblsan.so", "libtsan.so", "libgcc_s.so",
                     "libstdc++.so")
        needed = {}
        for lib in libs:
            if os.path.basename(lib).startswith(base):
                continue
            q = subprocess.run(["dpkg", "-S", os.path.realpath(lib)], capture_output=True,
                               text=True, timeout=60)
            if q.returncode != 0:  # /lib -> /usr/lib merged paths: try the other spelling
                alt = os.path.realpath(lib).replace("/usr/lib/", "/lib/", 1)
                q = subprocess.run(["dpkg", "-S", alt], capture_output=True, text=True,
                                   timeout=60)
            expect_eq(q.returncode, 0, "dpkg -S %s" % lib)
            needed[os.path.basename(lib)] = q.stdout.split(":", 1)[0].strip()
        h.log("  shared libraries -> packages: %r" % needed)
        absent = {lib: pkg for lib, pkg in needed.items() if pkg not in info["runtime"]}
        expect_eq(absent, {}, "libraries whose package the runtime stage does not install")
        expect_eq(sorted(info["runtime"]), sorted(set(needed.values())),
                  "the runtime stage installs those packages and nothing else")

    if shutil.which("ldd") and shutil.which("dpkg"):
        run.check("Dockerfile: the runtime stage installs the package of every shared "
                  "library the binary links against", runtime_libraries)


# --- systemd unit ---------------------------------------------------------------------

def parse_unit(path):
    """{section: [(key, value)]}; raises on a line that is not a section, key=value,
    comment or blank."""
    sections = {}
    cur = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            m = re.fullmatch(r"\[([A-Za-z]+)\]", s)
            if m:
                cur = m.group(1)
                expect(cur not in sections, "%s:%d: section [%s] twice" % (path, n, cur))
                sections[cur] = []
                continue
            m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)=(.*)", s)
            expect(m is not None, "%s:%d: not key=value: %r" % (path, n, s))
            expect(cur is not None, "%s:%d: key outside a section" % (path, n))
            sections[cur].append((m.group(1), m.group(2)))
    return sections


def check_unit(run, work):
    path = os.path.join(EXAMPLES, "content-cache.service")

    def keys():
        sec = parse_unit(path)
        expect_eq(sorted(sec), ["Install", "Service", "Unit"], "sections")
        svc = {}
        for k, v in sec["Service"]:
            svc.setdefault(k, []).append(v)
        one = lambda k: (svc.get(k) or [None])[-1]  # noqa: E731
        argv = shlex.split(one("ExecStart") or "")
        expect(len(argv) == 2 and argv[0].endswith("/content-cache") and argv[0].startswith("/")
               and argv[1].endswith(".yml"), "ExecStart: %r" % argv)
        expect_eq(one("ExecReload"), "/bin/kill -HUP $MAINPID", "ExecReload")
        expect_eq(one("Restart"), "always", "Restart")
        expect_eq(one("LimitNOFILE"), "65536", "LimitNOFILE")
        expect_eq(one("ProtectSystem"), "strict", "ProtectSystem")
        expect("/var/lib/registry" in (one("ReadWritePaths") or "").split(), "ReadWritePaths")
        for k in ("PrivateTmp", "NoNewPrivileges", "ProtectHome"):
            expect_eq(one(k), "yes", k)
        expect_eq(set((one("RestrictAddressFamilies") or "").split()),
                  {"AF_INET", "AF_INET6", "AF_UNIX"}, "RestrictAddressFamilies")
        expect("@system-service" in svc.get("SystemCallFilter", []), "SystemCallFilter")
        expect_eq(one("CapabilityBoundingSet"), "", "CapabilityBoundingSet (empty)")
        expect(one("DynamicUser") == "yes" or (one("User") and one("User") != "root"),
               "a dedicated user or DynamicUser")
        inst = dict(sec["Install"])
        expect_eq(inst.get("WantedBy"), "multi-user.target", "WantedBy")

    run.check("content-cache.service: sections, keys and sandboxing settings", keys)

    def verify():
        d = work.sub("unit", mkdir=True)
        with open(path) as f:
            text = f.read()
        # verify wants the binary of ExecStart to exist: point it at the one under test.
        text = re.sub(r"^ExecStart=\S+", "ExecStart=" + os.path.abspath(h.binary_path()),
                      text, flags=re.M)
        unit = os.path.join(d, "content-cache.service")
        with open(unit, "w") as f:
            f.write(text)
        cp = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                            text=True, timeout=60)
        expect_eq((cp.returncode, cp.stderr.strip(), cp.stdout.strip()), (0, "", ""),
                  "systemd-analyze verify (exit code, stderr, stdout)")
        cp = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit],
                            capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", cp.stdout)
        if m:
            h.log("  systemd-analyze security: exposure %s" % m.group(1))
            expect(float(m.group(1)) <= 2.0, "exposure level %s (> 2.0)" % m.group(1))

    if shutil.which("systemd-analyze"):
        run.check("content-cache.service: systemd-analyze verify is silent; security "
                  "exposure <= 2.0", verify)
    else:
        run.skip("content-cache.service: systemd-analyze verify", "systemd-analyze not installed")


# --- client configs -------------------------------------------------------------------

def check_client_configs(run):
    def hosts_toml():
        with open(os.path.join(EXAMPLES, "containerd", "hosts.toml"), "rb") as f:
            doc = tomllib.load(f)
        expect(str(doc.get("server", "")).startswith("https://"), "server: %r" % doc.get("server"))
        hosts = doc.get("host") or {}
        expect(len(hosts) >= 1, "no [host.\"...\"] table")
        for url, conf in hosts.items():
            expect(re.match(r"^https?://[^/]+$", url), "host URL %r" % url)
            expect_eq(sorted(conf.get("capabilities", [])), ["pull", "resolve"],
                      "capabilities of %s" % url)

    run.check("containerd/hosts.toml parses and names the cache with pull and resolve",
              hosts_toml)

    def daemon_json():
        with open(os.path.join(EXAMPLES, "docker", "daemon.json")) as f:
            doc = json.load(f)
        mirrors = doc.get("registry-mirrors")
        expect(isinstance(mirrors, list) and mirrors, "registry-mirrors: %r" % mirrors)
        for m in mirrors:
            expect(re.match(r"^https?://[^/]+/?$", m), "mirror URL %r" % m)

    run.check("docker/daemon.json parses and names the cache in registry-mirrors", daemon_json)


def check_install(run, work):
    """`cmake --install` of the build under test into a prefix of the test's own: the
    binary, the built-in policies, the systemd unit and the examples land in their places,
    and the binary reads the installed policies, never the source tree's."""
    build_dir = os.path.dirname(os.path.abspath(h.binary_path()))
    prefix = work.sub("prefix")
    files = {
        "bin/content-cache": "the binary",
        "share/content-cache/policies/default.lua": "the built-in policies",
        "lib/systemd/system/content-cache.service": "the systemd unit",
        "share/doc/content-cache/examples/config.yml": "the document's config",
        "share/doc/content-cache/examples/chain/edge.yml": "the chain example",
        "share/doc/content-cache/examples/grafana/content-cache.json": "the dashboard",
        "share/doc/content-cache/examples/prometheus/alerts.yml": "the alerting rules",
        "share/doc/content-cache/README.md": "the README (the unit's Documentation=)",
    }

    def installed():
        cp = subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix],
                            capture_output=True, text=True, timeout=120)
        expect(cp.returncode == 0, "cmake --install failed: %s" % (cp.stdout + cp.stderr))
        for rel, what in files.items():
            expect(os.path.isfile(os.path.join(prefix, rel)), "%s is not at %s" % (what, rel))
        with open(os.path.join(prefix, "lib/systemd/system/content-cache.service")) as f:
            unit = f.read()
        expect(re.search(r"^ExecStart=/\S+/bin/content-cache /etc/content-cache/config.yml$",
                         unit, re.M), "the installed unit's ExecStart")

    if run.check("cmake --install puts the binary, policies, unit and examples in place",
                 installed) is None:
        return

    def reads_installed_policies():
        binary = os.path.join(prefix, "bin", "content-cache")
        config = os.path.join(work.path, "install-check.yml")
        with open(config, "w") as f:
            f.write("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                    "middleware:\n  registry:\n    - name: downstream\n      options:\n"
                    "        upstreams:\n          - originhost: http://127.0.0.1:5000\n"
                    % work.sub("install-root"))
        env = {k: v for k, v in os.environ.items()
               if k != "CONTENT_CACHE_BUILTIN_POLICIES" and not k.startswith("REGISTRY_")}
        cp = subprocess.run([binary, "--check", config], capture_output=True, text=True,
                            timeout=30, env=env, stdin=subprocess.DEVNULL)
        out = cp.stdout + cp.stderr
        expect(h.SOURCE_DIR + "/policies" not in out,
               "the installed binary looked into the source tree:\n" + out)
        if cp.returncode != 0:
            # Not installed under the configured prefix on this machine: the error names
            # that directory (and only it).
            expect("no default.lua in /" in out and "/share/content-cache/policies" in out,
                   "the error names the installed policies' directory:\n" + out)
        env["CONTENT_CACHE_BUILTIN_POLICIES"] = os.path.join(
            prefix, "share", "content-cache", "policies")
        cp = subprocess.run([binary, "--check", config], capture_output=True, text=True,
                            timeout=30, env=env, stdin=subprocess.DEVNULL)
        expect(cp.returncode == 0, "--check with the installed policies named: %s"
               % (cp.stdout + cp.stderr))

    run.check("the installed binary reads the installed policies, not the source tree's",
              reads_installed_policies)


def body(run):
    work = run.work
    pki = make_pki(work.sub("pki"))
    rw = Rewriter(work, pki)
    check_all_configs(run, work, rw)
    check_dockerfile(run)
    check_unit(run, work)
    check_client_configs(run)
    check_install(run, work)
    run_examples(run, work, rw, pki)


if __name__ == "__main__":
    h.main("test_examples", body)
