"""End-to-end: the container image, built and run by a real Docker engine the way
README.md ("Deploying", "With Docker") says, with its commands taken from the README.

Debian's docker.io (dockerd 20.10) runs as a daemon of the test's own: its own data and
exec roots, pid file, socket and daemon.json, no iptables and no bridge network (so
builds and containers use --network host), overlay2. There is no internet: the base
images that the Dockerfile's FROM lines name are made from `debootstrap --variant=minbase
bookworm` (e2e_debian.py; kept in the build directory between runs) and imported as
debian:bookworm and debian:bookworm-slim; apt-get in the build reaches Debian's mirror.

- The README's `docker build` builds examples/Dockerfile with the classic builder, then
  with BuildKit (DOCKER_BUILDKIT=1; BuildKit is part of dockerd, and Debian 12 has no
  buildx): each sends a context under 2 MB (the root .dockerignore) although build trees
  lie in the checkout, and each image runs. Build times and sizes are logged, and the
  size the README states is checked against the measured one.
- The README's `--check` command validates the config, and its `docker run` command
  serves it: config.yml is examples/config.yml with the origin (a docker-registry
  serving HTTPS on 127.0.0.1 with a certificate of the test's CA) for dtr.example.com and
  a free port for `addr: :5000`; dtr-ca.pem is that CA, which the cache trusts through
  the config's `cas`, as the document has it. The cache runs as uid 10001 with the named
  volume on /var/lib/registry.
- `docker pull 127.0.0.1:PORT/e2e/app:v1` through the cache: every blob cache=miss;
  after `docker rmi`, the same pull: every blob cache=hit and no new GET at the origin.
- Docker Hub mirror: a daemon.json whose registry-mirrors names the cache (plain HTTP, as
  examples/docker/README.md says), dockerd reloaded with SIGHUP; `docker pull hubimage`
  (docker.io/library/hubimage) is served by the cache from the origin's library/hubimage.
- `docker kill --signal HUP` reloads the policies.
- `docker stop` exits 0 within the stop timeout and the cache exited 0; `docker rm` and
  the same `docker run` find the blobs in the volume (cache=hit, the origin not asked).
- dockerd stopped and started again: the cache (--restart unless-stopped) comes back by
  itself and serves hits from its volume.
- An invalid configuration: with --restart on-failure:3 the container ends Exited (1)
  after 3 restarts; with --restart unless-stopped it keeps restarting.

The README's commands run with these changes, and only these: `--network host` after
`docker build` and `docker run` (this dockerd has no bridge network), `--publish
5000:5000` dropped (no meaning with host networking: the config's addr is the port);
`docker` is Debian's /usr/bin/docker, first in PATH, because a machine may have another
client first (Docker CE's 28.x client refuses DOCKER_BUILDKIT=1 without buildx).

Skipped, with the reason, when not root, when docker.io is not installed, when dockerd
cannot start here, and when the binary under test is a sanitizer build (scripts/test.sh
--asan, .ci/run's second pass): the image builds its own Release binary from the source,
so that pass would repeat this test of the packaging, not test memory safety
(CC_E2E_DOCKER=1 runs it anyway). Every dockerd is stopped by its PID, and what it left
running or mounted under its roots is stopped and unmounted.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_docker_image.py
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_debian as deb  # noqa: E402
import harness as h  # noqa: E402
from e2e_tls import TlsOrigin, make_pki  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
README = os.path.join(h.SOURCE_DIR, "README.md")
DOCKERFILE = os.path.join(h.SOURCE_DIR, "examples", "Dockerfile")
EXAMPLE_CONFIG = os.path.join(h.SOURCE_DIR, "examples", "config.yml")
BUILD_TIMEOUT = 900 * h.SCALE
DOCKERD_STOP_TIMEOUT = 60 * h.SCALE
# The data root is a tmpfs of this size limit (only what is written takes memory, about
# 2 GB here): builds write faster, and the end of the test is an unmount rather than
# deleting tens of thousands of files of image layers (a minute on a loaded machine).
DATA_ROOT_TMPFS = "size=8g"
CONTEXT_LIMIT = 2_000_000    # bytes: the context is < 1 MB; the build tree alone is more
OWN_SIZE_LIMIT = 6_000_000   # bytes the runtime stage may add to debian:bookworm-slim
REPO = "e2e/app"
HUB_NAME = "hubimage"
NAME = "content-cache"       # the README's image, container and volume prefix
VOLUME = "content-cache-data"


class DockerUnavailable(Exception):
    """dockerd cannot run here: the test is skipped with this reason."""


# --- dockerd -----------------------------------------------------------------------------

def _pids_mentioning(paths):
    """PIDs of the processes whose command line names one of `paths` (what a dockerd of
    ours started: its containerd and the container shims)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmd = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if any(p in cmd for p in paths):
            out.append(int(entry))
    return out


class Dockerd:
    """Debian's dockerd with everything of its own under the work directory: data root,
    exec root, pid file, socket, daemon.json; a client config directory and a PATH whose
    `docker` is Debian's client. Stopped by its PID."""

    def __init__(self, work):
        self.work = work
        self.base = work.sub("docker", mkdir=True)
        # Unix socket paths must fit in sun_path (108 bytes): a deep CC_E2E_TMPDIR gets
        # the socket and exec root (which holds containerd's sockets) in a short directory.
        short = self.base
        if len(os.path.join(short, "exec", "containerd", "containerd.sock.ttrpc")) > 100:
            short = tempfile.mkdtemp(prefix="cc-dockerd-")
            self._own_short = short
        else:
            self._own_short = None
        self.sock = os.path.join(short, "docker.sock")
        self.exec_root = os.path.join(short, "exec")
        self.data_root = os.path.join(self.base, "data")
        self.pidfile = os.path.join(self.base, "docker.pid")
        self.config_path = os.path.join(self.base, "daemon.json")
        self.client_config = work.sub("docker-client", mkdir=True)
        self.bin_dir = work.sub("bin", mkdir=True)
        os.symlink(DOCKER, os.path.join(self.bin_dir, "docker"))
        self.log_path = work.sub("dockerd.log")
        self.proc = None
        self.data_tmpfs = False
        self.write_config({})

    def write_config(self, doc):
        with open(self.config_path, "w") as f:
            json.dump(doc, f, indent=2)

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update({"DOCKER_HOST": "unix://" + self.sock, "DOCKER_CONFIG": self.client_config,
                    "PATH": self.bin_dir + ":" + os.environ.get("PATH", "/usr/bin:/bin")})
        env.update(extra or {})
        return env

    def start(self):
        if not self.data_tmpfs:
            os.makedirs(self.data_root, exist_ok=True)
            self.data_tmpfs = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", DATA_ROOT_TMPFS + ",mode=0710", "tmpfs",
                 self.data_root], capture_output=True).returncode == 0
            if not self.data_tmpfs:
                h.log("  no tmpfs for the data root: it stays on disk")
        argv = [DOCKERD, "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--storage-driver", "overlay2", "--data-root", self.data_root,
                "--exec-root", self.exec_root, "--pidfile", self.pidfile,
                "--config-file", self.config_path, "-H", "unix://" + self.sock]
        self.proc = h.Proc("dockerd", argv, self.log_path).start()

        def ready():
            if not self.proc.alive():
                raise DockerUnavailable("dockerd exited during start (code %s); its log:\n%s"
                                        % (self.proc.popen.returncode,
                                           h.tail(self.log_path, 25)))
            return self.docker(["version", "--format", "{{.Server.Version}}"],
                               check=False, timeout=10).returncode == 0

        try:
            h.wait_until(ready, h.START_TIMEOUT * 2, "dockerd to answer `docker version`")
        except h.WaitTimeout as e:
            self.stop()
            raise DockerUnavailable("%s; its log:\n%s" % (e, h.tail(self.log_path, 25)))
        h.log("dockerd pid %d on %s (data root %s)" % (self.proc.pid, self.sock, self.data_root))
        return self

    def docker(self, args, check=True, timeout=h.CLIENT_TIMEOUT, env=None):
        """Runs Debian's docker client against this daemon; returns the CompletedProcess
        (text). With check, a non-zero exit raises ClientError with the output."""
        argv = [DOCKER] + list(args)
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                env=self.env(env), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise h.ClientError("timed out after %.0f s: %s\n%s%s" % (
                timeout, " ".join(argv), e.stdout or "", e.stderr or ""))
        if check and cp.returncode != 0:
            raise h.ClientError("exited %d: %s\nstdout:\n%s\nstderr:\n%s" % (
                cp.returncode, " ".join(argv), cp.stdout[-3000:], cp.stderr[-3000:]))
        return cp

    def shell(self, command, cwd, env=None, timeout=h.CLIENT_TIMEOUT):
        """Runs a README command with bash in `cwd` (so that $(pwd) is cwd)."""
        h.log("  $ " + command.strip().replace("\n", "\n    "))
        try:
            return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  cwd=cwd, env=self.env(env), timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise h.ClientError("timed out after %.0f s: %s\n%s%s" % (
                timeout, command, e.stdout or "", e.stderr or ""))

    def inspect(self, name, fmt="{{json .}}"):
        cp = self.docker(["inspect", "--format", fmt, name], check=False)
        if cp.returncode != 0:
            return None
        return json.loads(cp.stdout) if fmt == "{{json .}}" else cp.stdout.strip()

    def reload(self):
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self):
        """SIGTERM to dockerd (which stops its containers and its containerd), SIGKILL
        after DOCKERD_STOP_TIMEOUT; then whatever still runs from its roots is stopped by
        PID and what dockerd left mounted under them unmounted (the data root's tmpfs
        stays, for a restart: release() unmounts it). Returns dockerd's exit code."""
        code = None
        if self.proc is not None:
            code = self.proc.stop(timeout=DOCKERD_STOP_TIMEOUT)
            self.proc = None
        roots = [self.exec_root, self.data_root]
        for pid in _pids_mentioning(roots):
            h.log("  stopping pid %d, left behind by dockerd" % pid)
            try:
                os.kill(pid, signal.SIGTERM)
                h.wait_until(lambda: not os.path.exists("/proc/%d" % pid), h.STOP_TIMEOUT,
                             "pid %d to exit" % pid)
            except (ProcessLookupError, h.WaitTimeout):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for point in self._mounts():
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
        left = self._mounts()
        if left:
            h.log("  still mounted: %s" % left)
        return code

    def _mounts(self):
        """What is mounted under the roots, less the data root's own tmpfs."""
        points = deb.mounts_under(self.base)
        if self._own_short:
            points += deb.mounts_under(self._own_short)
        if self.data_tmpfs and self.data_root in points:
            points.remove(self.data_root)  # only the first, ours: a bind on it is dockerd's
        return points

    def release(self):
        """After the last stop: unmounts the data root's tmpfs (its contents go with it)."""
        if self.data_tmpfs:
            deb.unmount_under(self.data_root)
            self.data_tmpfs = False

    def left_behind(self):
        """What of this dockerd still runs or is mounted (should be nothing)."""
        roots = [self.exec_root, self.data_root]
        return {"processes": _pids_mentioning(roots),
                "mounts": deb.mounts_under(self.base)
                + (deb.mounts_under(self._own_short) if self._own_short else [])}

    def cleanup_short_dir(self):
        if self._own_short and not deb.mounts_under(self._own_short):
            subprocess.run(["rm", "-rf", self._own_short], capture_output=True)


# --- The README's commands -------------------------------------------------------------

def readme_docker_commands():
    """The ```sh blocks of README.md's "With Docker" paragraph: build, check and run."""
    with open(README) as f:
        text = f.read()
    expect("**With Docker, as the document does.**" in text and "**With systemd.**" in text,
           "README.md's Deploying section has no \"With Docker\" paragraph")
    section = text.split("**With Docker, as the document does.**", 1)[1]
    section = section.split("**With systemd.**", 1)[0]
    blocks = [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]
    found = {
        "build": [b for b in blocks if b.startswith("docker build ")],
        "check": [b for b in blocks if b.startswith("docker run ") and "--check" in b],
        "run": [b for b in blocks if b.startswith("docker run --detach")],
    }
    for what, bs in found.items():
        expect_eq(len(bs), 1, "README.md's `%s` command blocks" % what)
    return {k: v[0] for k, v in found.items()}


def for_this_machine(command):
    """The README's command with this machine's changes: --network host, no --publish."""
    out = re.sub(r"^docker (build|run) ", r"docker \1 --network host ", command)
    out = re.sub(r"^\s*--publish 5000:5000 \\\n", "", out, flags=re.M)
    expect("--publish" not in out, "a --publish the test does not know: %r" % command)
    return out


def deploy_files(work, origin, port, pki):
    """The operator's directory: config.yml (examples/config.yml with the test's origin
    and port) and dtr-ca.pem (a CA of the test's own). Returns the directory."""
    d = work.sub("deploy", mkdir=True)
    with open(EXAMPLE_CONFIG) as f:
        text = f.read()
    for old, new in (("addr: :5000", "addr: 127.0.0.1:%d" % port),
                     ("originhost: https://dtr.example.com", "originhost: " + origin.url)):
        expect_eq(text.count(old), 1, "occurrences of %r in examples/config.yml" % old)
        text = text.replace(old, new)
    work.write("deploy/config.yml", text)
    with open(pki["ca"]) as f:
        work.write("deploy/dtr-ca.pem", f.read())
    bad = text.replace("blobttl: 24h", "blobttl: soon")
    work.write("deploy/bad.yml", bad)
    return d


def human_bytes(text, unit):
    """Docker's sizes (decimal units: 926.7kB, 1.2MB) in bytes."""
    scale = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    return float(text) * scale


def context_bytes(output, buildkit):
    if buildkit:
        # "#10 [internal] load build context" ... "#10 transferring context: 854.75kB 0.1s"
        sizes = [human_bytes(n, u) for n, u in
                 re.findall(r"transferring context: ([\d.]+)([kMG]?B)", output)]
        expect(sizes, "no `transferring context` line in BuildKit's output")
        return max(sizes)
    m = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", output)
    expect(m is not None, "no `Sending build context` line in the classic builder's output")
    return human_bytes(m.group(1), m.group(2))


# --- The cache's log, read with docker logs ----------------------------------------------

def access_lines(dockerd, container=NAME):
    cp = dockerd.docker(["logs", container])
    out = []
    for line in cp.stdout.splitlines():
        fields = h.parse_logfmt(line)
        if "http.request.method" in fields:
            out.append(fields)
    return out


def diagnostics(dockerd, container=NAME):
    return dockerd.docker(["logs", container]).stderr


def blob_results(dockerd, repo, digests):
    """{digest: [cache= of each GET of it]} from the container's access log."""
    lines = access_lines(dockerd)
    out = {}
    for d in digests:
        path = "/v2/%s/blobs/%s" % (repo, d)
        out[d] = [e.get("cache") for e in lines if e.get("http.request.method") == "GET"
                  and str(e.get("http.request.uri", "")).split("?")[0] == path]
    return out


# --- The scenario --------------------------------------------------------------------------

def skip_reason():
    if os.geteuid() != 0:
        return "dockerd needs root"
    for path in (DOCKERD, DOCKER):
        if not os.access(path, os.X_OK):
            return "%s is not installed (apt-get install docker.io; scripts/install-deps.sh " \
                   "installs it)" % path
    if os.environ.get("CC_E2E_DOCKER") != "1":
        cp = subprocess.run(["ldd", h.binary_path()], capture_output=True, text=True)
        if any(lib in cp.stdout for lib in ("libasan", "libubsan", "libtsan")):
            return ("the binary under test is a sanitizer build: the image builds its own "
                    "Release binary from the source, so this pass would repeat the plain "
                    "pass's test of the packaging, not test memory safety (CC_E2E_DOCKER=1 "
                    "runs it anyway)")
    return None


def body(run):
    reason = skip_reason()
    if reason:
        run.skip("the image built and run by Docker", reason)
        return
    t_start = time.monotonic()
    dockerd = Dockerd(run.work)
    try:
        dockerd.start()
    except DockerUnavailable as e:
        run.skip("the image built and run by Docker", "dockerd cannot start here: %s" % e)
        dockerd.stop()
        dockerd.release()
        dockerd.cleanup_short_dir()
        return
    try:
        scenario(run, dockerd)
    finally:
        if dockerd.proc is not None:
            ids = dockerd.docker(["ps", "-aq"], check=False).stdout.split()
            if ids:
                dockerd.docker(["rm", "-f"] + ids, check=False, timeout=60 * h.SCALE)
        code = dockerd.stop()
        dockerd.release()

        def stopped():
            expect_eq(code, 0, "dockerd's exit code on SIGTERM")
            expect_eq(dockerd.left_behind(), {"processes": [], "mounts": []},
                      "what the test's dockerd left running or mounted")

        run.check("dockerd stopped by its PID on SIGTERM (exit 0), nothing of it left running "
                  "or mounted", stopped)
        dockerd.cleanup_short_dir()
        h.log("test_docker_image: %.0f s in all" % (time.monotonic() - t_start))


def scenario(run, dockerd):
    work = run.work
    facts = {}

    def base_images():
        with open(DOCKERFILE) as f:
            dockerfile = f.read()
        expect(not re.match(r"\s*#\s*syntax\s*=", dockerfile, re.I),
               "examples/Dockerfile starts with a # syntax= line (BuildKit would fetch a "
               "frontend from Docker Hub)")
        froms = sorted(set(re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)))
        expect_eq(froms, ["debian:bookworm", "debian:bookworm-slim"], "the FROM images")
        tar = deb.minbase_tar()
        for tag in froms:
            p = subprocess.Popen([DOCKER, "import", "-", tag], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=dockerd.env())
            try:
                deb.image_stream(tar, p.stdin, slim=tag.endswith("-slim"))
            finally:
                p.stdin.close()
            out = p.stdout.read().decode()
            expect_eq(p.wait(timeout=h.CLIENT_TIMEOUT), 0, "docker import %s: %s" % (tag, out))
        facts["base"] = int(dockerd.inspect("debian:bookworm-slim", "{{.Size}}"))
        h.log("  debian:bookworm-slim (from debootstrap): %.1f MB" % (facts["base"] / 1e6))

    if run.check("the Dockerfile's FROM images (debian:bookworm, debian:bookworm-slim) made "
                 "from debootstrap --variant=minbase and imported; no # syntax= line",
                 base_images) is None:
        return
    cmds = run.check("README.md has the build, --check and run commands", readme_docker_commands)
    if cmds is None:
        return

    def build(buildkit):
        command = for_this_machine(cmds["build"])
        t0 = time.monotonic()
        cp = dockerd.shell(command, cwd=h.SOURCE_DIR, timeout=BUILD_TIMEOUT,
                           env={"DOCKER_BUILDKIT": "1" if buildkit else "0"})
        elapsed = time.monotonic() - t0
        output = cp.stdout + cp.stderr
        with open(work.sub("build-%s.log" % ("buildkit" if buildkit else "classic")), "w") as f:
            f.write(output)
        expect_eq(cp.returncode, 0, "docker build's exit code; the end of its output:\n%s"
                  % "\n".join(output.splitlines()[-30:]))
        ctx = context_bytes(output, buildkit)
        h.log("  %s: built in %.0f s, context %.0f kB" % (
            "BuildKit" if buildkit else "classic builder", elapsed, ctx / 1e3))
        expect(ctx < CONTEXT_LIMIT, "a build context of %.0f kB (the root .dockerignore "
               "should keep it under %.0f kB)" % (ctx / 1e3, CONTEXT_LIMIT / 1e3))
        version = dockerd.docker(["run", "--rm", "--network", "host", NAME, "--version"])
        expect(version.stdout.startswith("content-cache "), "--version: %r" % version.stdout)
        facts["build " + ("BuildKit" if buildkit else "classic")] = elapsed

    built = run.check("README's docker build, classic builder: builds offline, context < 2 MB, "
                      "the image runs", build, False)
    if run.check("README's docker build with DOCKER_BUILDKIT=1: builds offline, context < 2 MB, "
                 "the image runs", build, True) is None and built is None:
        return

    def size():
        total = int(dockerd.inspect(NAME, "{{.Size}}"))
        own = total - facts["base"]
        hist = dockerd.docker(["history", "--format", "{{.Size}}\t{{.CreatedBy}}", NAME]).stdout
        h.log("  image %.1f MB = debian:bookworm-slim %.1f MB + %.1f MB; layers:\n    %s" % (
            total / 1e6, facts["base"] / 1e6, own / 1e6,
            "\n    ".join(line[:110] for line in hist.splitlines())))
        expect(own < OWN_SIZE_LIMIT, "the runtime stage adds %.1f MB (more than %.1f MB)"
               % (own / 1e6, OWN_SIZE_LIMIT / 1e6))
        with open(README) as f:
            m = re.search(r"The image is\s+([\d.]+) MB", f.read())
        expect(m is not None, "README.md states no image size (\"The image is N MB\")")
        expect(abs(float(m.group(1)) * 1e6 - total) < 1e6, "README.md says %s MB, the "
               "image is %.1f MB" % (m.group(1), total / 1e6))
        facts["size"] = total

    run.check("the image adds < 6 MB to debian:bookworm-slim, and its size is the README's "
              "(within 1 MB)", size)

    # The document's origin: HTTPS with a certificate of a private CA, which the cache
    # trusts through `cas` (/certs/dtr-ca.pem, mounted as the README's command says).
    pki = make_pki(work.sub("pki"))
    origin = TlsOrigin(work, pki)
    run.origins.append(origin)
    origin.start()
    port = h.free_port()
    deploy = deploy_files(work, origin, port, pki)
    app = h.make_oci_layout(work.sub("layout-app"),
                            h.random_layers([300_000, 1_200_000, 40_000], seed=211), tag="v1")
    h.push(work, app, origin, REPO, "v1")
    hub = h.make_oci_layout(work.sub("layout-hub"), h.random_layers([500_000, 70_000], seed=223),
                            tag="latest")
    h.push(work, hub, origin, "library/" + HUB_NAME, "latest")
    app_blobs = [app.config_digest] + app.layer_digests
    hub_blobs = [hub.config_digest] + hub.layer_digests
    cache_ref = "127.0.0.1:%d/%s:v1" % (port, REPO)

    def check_config():
        cp = dockerd.shell(for_this_machine(cmds["check"]), cwd=deploy)
        expect_eq(cp.returncode, 0, "exit code of the README's --check (stderr: %s)"
                  % cp.stderr.strip())
        expect("is valid" in cp.stdout, "--check's output: %r" % cp.stdout)

    run.check("README's docker run ... --check /config.yml: the config is valid", check_config)

    def wait_serving():
        def answers():
            try:
                return h.request(port, "GET", "/v2/", timeout=2).status == 200
            except OSError:
                return False
        try:
            h.wait_until(answers, h.START_TIMEOUT, "the cache to answer GET /v2/ on port %d" % port)
        except h.WaitTimeout as e:
            logs = dockerd.docker(["logs", NAME], check=False)
            raise AssertionError("%s; docker logs:\n%s" % (e, (logs.stdout + logs.stderr)[-3000:]))

    def start_cache():
        cp = dockerd.shell(for_this_machine(cmds["run"]), cwd=deploy)
        expect_eq(cp.returncode, 0, "exit code of the README's docker run (stderr: %s)"
                  % cp.stderr.strip())
        wait_serving()

    def runs():
        expect("--volume %s:/var/lib/registry" % VOLUME in cmds["run"],
               "the README's docker run names the volume %s" % VOLUME)
        start_cache()
        doc = dockerd.inspect(NAME)
        expect_eq(doc["Config"]["User"], "content-cache:content-cache", "the container's user")
        expect_eq(doc["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped", "restart policy")
        mounts = {m["Destination"]: (m["Type"], m.get("Name")) for m in doc["Mounts"]}
        expect_eq(mounts.get("/var/lib/registry"), ("volume", VOLUME), "/var/lib/registry's mount")
        uid = dockerd.docker(["exec", NAME, "id", "-u"]).stdout.strip()
        expect_eq(uid, "10001", "the uid the cache runs as")

    if run.check("README's docker run: the cache serves as uid 10001 with the named volume "
                 "%s on /var/lib/registry" % VOLUME, runs) is None:
        return

    def pull_by_name(expect_result):
        before = {d: origin.count_blob_gets(d) for d in app_blobs}
        dockerd.docker(["rmi", cache_ref], check=False)
        dockerd.docker(["pull", cache_ref], timeout=h.CLIENT_TIMEOUT)

        def seen():
            results = blob_results(dockerd, REPO, app_blobs)
            return all(expect_result in r for r in results.values()) and results
        results = h.wait_until(seen, h.LOG_TIMEOUT, "a cache=%s line for every blob"
                               % expect_result)
        after = {d: h.settle(lambda d=d: origin.count_blob_gets(d)) for d in app_blobs}
        return results, before, after

    def pull_miss():
        results, before, after = pull_by_name("miss")
        expect_eq({d: r.count("miss") for d, r in results.items()},
                  {d: 1 for d in app_blobs}, "cache=miss lines per blob")
        expect_eq({d: after[d] - before[d] for d in app_blobs}, {d: 1 for d in app_blobs},
                  "GETs of each blob at the origin")

    def pull_hit():
        results, before, after = pull_by_name("hit")
        expect_eq({d: r.count("hit") >= 1 for d, r in results.items()},
                  {d: True for d in app_blobs}, "a cache=hit line per blob")
        expect_eq(after, before, "GETs of each blob at the origin (none new)")

    run.check("docker pull %s through the cache: every blob cache=miss, fetched once from the "
              "origin" % cache_ref.replace(str(port), "PORT"), pull_miss)
    run.check("docker rmi, docker pull again: every blob cache=hit, the origin not asked",
              pull_hit)

    def hub_mirror():
        mirror = "http://127.0.0.1:%d" % port
        dockerd.write_config({"registry-mirrors": [mirror],
                              "insecure-registries": ["127.0.0.1:%d" % port]})
        dockerd.reload()
        h.wait_until(lambda: mirror in dockerd.docker(
            ["info", "--format", "{{json .RegistryConfig.Mirrors}}"]).stdout,
            h.START_TIMEOUT, "docker info to list the mirror after SIGHUP")
        dockerd.docker(["pull", HUB_NAME], timeout=h.CLIENT_TIMEOUT)
        lines = access_lines(dockerd)
        manifest = [e for e in lines if e.get("http.request.uri")
                    == "/v2/library/%s/manifests/latest" % HUB_NAME
                    and str(e.get("http.response.status")) == "200"]
        expect(manifest, "no 200 for /v2/library/%s/manifests/latest in the cache's log"
               % HUB_NAME)
        h.wait_until(lambda: all("miss" in r for r in blob_results(
            dockerd, "library/" + HUB_NAME, hub_blobs).values()), h.LOG_TIMEOUT,
            "a cache=miss line for every blob of %s" % HUB_NAME)
        expect_eq({d: h.settle(lambda d=d: origin.count_blob_gets(d)) for d in hub_blobs},
                  {d: 1 for d in hub_blobs}, "GETs of each blob of %s at the origin" % HUB_NAME)
        expect(dockerd.inspect(HUB_NAME, "{{.Id}}"), "docker image %s after the pull" % HUB_NAME)

    run.check("registry-mirrors (daemon.json, SIGHUP): docker pull %s is served by the cache "
              "from the origin's library/%s" % (HUB_NAME, HUB_NAME), hub_mirror)

    def hup():
        dockerd.docker(["kill", "--signal", "HUP", NAME])
        h.wait_until(lambda: "SIGHUP: policies reloaded" in diagnostics(dockerd), h.LOG_TIMEOUT,
                     "the cache to log the reload")

    run.check("docker kill --signal HUP content-cache reloads the policies", hup)

    def stop_replace():
        t0 = time.monotonic()
        dockerd.docker(["stop", NAME], timeout=60 * h.SCALE)
        elapsed = time.monotonic() - t0
        state = dockerd.inspect(NAME)["State"]
        expect_eq((state["Status"], state["ExitCode"], state["OOMKilled"]),
                  ("exited", 0, False), "the container's state after docker stop")
        expect(elapsed < 9, "docker stop took %.1f s (Docker kills after 10 s)" % elapsed)
        h.log("  docker stop: %.1f s, exit code 0" % elapsed)
        dockerd.docker(["rm", NAME])
        dockerd.docker(["volume", "inspect", VOLUME])
        start_cache()
        pull_hit()

    run.check("docker stop: exit 0 within the stop timeout; docker rm and the same docker run "
              "serve every blob from the volume (cache=hit)", stop_replace)

    def daemon_restart():
        code = dockerd.stop()
        expect_eq(code, 0, "dockerd's exit code on SIGTERM")
        dockerd.start()
        h.wait_until(lambda: dockerd.inspect(NAME, "{{.State.Running}}") == "true",
                     h.START_TIMEOUT, "the cache to be restarted by dockerd")
        wait_serving()
        pull_hit()

    run.check("dockerd stopped and started: the cache (--restart unless-stopped) comes back "
              "by itself and serves every blob from the volume", daemon_restart)

    def invalid_config(policy, name):
        command = for_this_machine(cmds["run"])
        command = command.replace("--restart unless-stopped", "--restart " + policy)
        command = command.replace("--name %s " % NAME, "--name %s " % name)
        command = command.replace("/config.yml:/config.yml", "/bad.yml:/config.yml")
        command = re.sub(r"^\s*--volume %s:/var/lib/registry \\\n" % VOLUME, "", command,
                         flags=re.M)
        cp = dockerd.shell(command, cwd=deploy)
        expect_eq(cp.returncode, 0, "docker run's exit code (stderr: %s)" % cp.stderr.strip())

    def on_failure():
        invalid_config("on-failure:3", "cc-on-failure")

        def given_up():
            doc = dockerd.inspect("cc-on-failure")
            st = doc["State"]
            return st["Status"] == "exited" and doc["RestartCount"] == 3 and doc
        doc = h.wait_until(given_up, 30 * h.SCALE, "Exited after 3 restarts")
        expect_eq(doc["State"]["ExitCode"], 1, "the exit code")
        err = diagnostics(dockerd, "cc-on-failure")
        expect(re.search(r"/config\.yml:\d+:\d+", err), "the file:line:column in docker logs: "
               "%r" % err[-500:])

    run.check("an invalid config with --restart on-failure:3: Exited (1) after 3 restarts, "
              "docker logs names file:line:column", on_failure)

    def unless_stopped():
        invalid_config("unless-stopped", "cc-unless-stopped")
        h.wait_until(lambda: dockerd.inspect("cc-unless-stopped")["RestartCount"] >= 4,
                     30 * h.SCALE, "4 restarts")
        st = dockerd.inspect("cc-unless-stopped")["State"]
        expect(st["Status"] in ("restarting", "running"), "still being restarted: %r" % st)
        dockerd.docker(["rm", "-f", "cc-unless-stopped"])

    run.check("an invalid config with --restart unless-stopped: restarted again and again",
              unless_stopped)
    if facts.get("size"):
        h.log("summary: classic builder %.0f s, BuildKit %.0f s, image %.1f MB" % (
            facts.get("build classic", 0), facts.get("build BuildKit", 0), facts["size"] / 1e6))


if __name__ == "__main__":
    h.main("test_docker_image", body)
