"""End-to-end test harness for content-cache: a real origin, the real binary, real clients.

Python 3 standard library only. Every test script under tests/e2e/ imports this module,
builds its scenario from the pieces below and ends with `harness.main(...)`, which prints
"N passed, N failed" and exits 1 when anything failed (77, which ctest reports as
"Skipped", when every check was skipped).

Pieces:
  Workdir          a temporary directory per test run; removed when every check passed,
                   kept (and its path printed) otherwise, or always with CC_E2E_KEEP=1.
  Origin           Docker Distribution (`docker-registry serve`) with its own config,
                   storage and port; optional htpasswd (Basic) auth; counts what it served.
  Cache            the content-cache binary ($CC_BINARY) with a config written here.
  make_layer, make_oci_layout
                   deterministic OCI image layouts, pushed with `push` (skopeo).
  pull, verify_pulled
                   skopeo pulls into dir: and checks every byte against what was pushed.
  request, RawConnection
                   single HTTP requests (http.client) and raw-socket conversations.
  Run, main        a tiny check runner: named checks, PASS/FAIL lines, a final summary.

Where they live: this file (processes, Origin, Cache, the runner); e2e_base.py
(timeouts, logging, digests, bounded waits); e2e_http.py (HTTP); e2e_images.py (OCI
layouts and skopeo). This module re-exports all of them: tests use harness.X only.

Conventions (see also the constants below):
  * Every port is taken from the kernel (free_port) and every server is retried on a
    fresh port if the one it got was taken meanwhile: tests run in parallel safely.
  * Every wait is bounded (START_TIMEOUT, STOP_TIMEOUT, HTTP_TIMEOUT, CLIENT_TIMEOUT,
    LOG_TIMEOUT), polling every POLL seconds; CC_E2E_TIMEOUT_SCALE multiplies them all
    (e.g. 3 for a sanitizer build).
  * Every process is started by Proc, stopped by its PID (SIGTERM, then SIGKILL after a
    bound) in Run's cleanup and at exit, and gets PR_SET_PDEATHSIG so that it dies with
    the test even if the test itself is killed.

Running one test alone, from the repository root:
  CC_BINARY=build/content-cache python3 tests/e2e/test_pull_relay.py
(CC_BINARY defaults to build/content-cache under the repository root.)
"""

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

# The pieces in their own modules, re-exported so that tests use harness.X throughout.
from e2e_base import *  # noqa: F401,F403
from e2e_base import (CLIENT_TIMEOUT, LOG_TIMEOUT, POLL, START_TIMEOUT, STOP_TIMEOUT,
                      binary_available, binary_path, log, sha256_digest, tail,
                      wait_for_count)
from e2e_http import *  # noqa: F401,F403
from e2e_http import request
from e2e_images import *  # noqa: F401,F403


# --- Ports, directories, processes ---------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago. Servers started on it are
    retried on another port if it was taken meanwhile (see _start_server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra=None):
    """The environment for a server under test: ours, less every REGISTRY_* variable
    (Docker Distribution and content-cache both read them as config overrides), plus
    `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    # A ThreadSanitizer build (scripts/build.sh --tsan): libuv is not instrumented, so
    # what it does with descriptors (accept, read, epoll_ctl beside a close on the thread
    # pool) carries no happens-before TSan can see; only our own code is judged.
    env.setdefault("TSAN_OPTIONS", "ignore_noninstrumented_modules=1")
    env.update(extra or {})
    return env


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class Workdir:
    """A temporary directory for one test run. finish(ok) removes it when ok (unless
    CC_E2E_KEEP=1) and otherwise keeps it and prints its path. CC_E2E_TMPDIR sets where
    it is created (default: the system's temporary directory)."""

    def __init__(self, name):
        base = os.environ.get("CC_E2E_TMPDIR") or None
        if base:
            os.makedirs(base, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="cc-e2e-%s-" % name, dir=base)

    def sub(self, *parts, mkdir=False):
        path = os.path.join(self.path, *parts)
        if mkdir:
            os.makedirs(path, exist_ok=True)
        return path

    def write(self, relpath, text, mode=0o644):
        path = self.sub(relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def finish(self, ok):
        if ok and os.environ.get("CC_E2E_KEEP") != "1":
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            print("work directory kept: %s" % self.path, flush=True)

    # Usable as a context manager: kept when the block raised.
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.finish(exc_type is None)
        return False


_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - Linux always has it
    _libc = None


def _child_setup():
    # Runs in the child between fork and exec: die when the test process dies, so that
    # a test killed by ctest's timeout leaves no server behind.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_live_procs = []


class Proc:
    """A child process with its output in files. Stopped by PID: SIGTERM, then SIGKILL
    after STOP_TIMEOUT. `killed` tells whether SIGKILL was needed."""

    def __init__(self, name, argv, stdout_path, stderr_path=None, env=None, cwd=None):
        self.name = name
        self.argv = list(argv)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path or stdout_path
        self.env = env
        self.cwd = cwd
        self.popen = None
        self.killed = False
        self.returncode = None
        self._files = []

    def start(self):
        out = open(self.stdout_path, "ab")
        self._files = [out]
        if self.stderr_path != self.stdout_path:
            err = open(self.stderr_path, "ab")
            self._files.append(err)
        else:
            err = subprocess.STDOUT
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=err, env=self.env, cwd=self.cwd,
                                      preexec_fn=_child_setup)
        _live_procs.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout=STOP_TIMEOUT, sig=signal.SIGTERM):
        """Stops the process by its PID; returns its exit code (negative: signal)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self.returncode = self.popen.returncode
        for f in self._files:
            f.close()
        self._files = []
        if self in _live_procs:
            _live_procs.remove(self)
        return self.returncode


def stop_all_processes():
    """Stops every process still running, newest first (caches before origins)."""
    for proc in list(reversed(_live_procs)):
        try:
            proc.stop()
        except Exception as e:  # keep stopping the others
            print("could not stop %s (pid %s): %s" % (proc.name, proc.pid, e), flush=True)


atexit.register(stop_all_processes)


def _on_signal(signum, frame):
    # Turn SIGTERM/SIGHUP into an exception so that finally blocks stop the servers.
    raise SystemExit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


class ServerStartError(AssertionError):
    pass


def _looks_like_port_in_use(text):
    t = text.lower()
    return "address already in use" in t or "eaddrinuse" in t


def _start_server(make_proc, ready, name, attempts=3):
    """Starts a server on a fresh port until it is ready: make_proc(port) returns an
    unstarted Proc; ready(port, proc) is polled until true. A server that exits because
    its port was taken meanwhile is retried on another port. Returns (port, proc)."""
    last_error = None
    for _ in range(attempts):
        port = free_port()
        proc = make_proc(port).start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not proc.alive():
                break
            if ready(port, proc):
                return port, proc
            time.sleep(POLL)
        alive = proc.alive()
        proc.stop()
        output = tail(proc.stderr_path)
        if proc.stdout_path != proc.stderr_path:
            output = tail(proc.stdout_path) + "\n" + output
        if not alive and _looks_like_port_in_use(output):
            last_error = "port %d was taken" % port
            continue
        if alive:
            raise ServerStartError("%s did not become ready on port %d within %.0f s; "
                                   "output:\n%s" % (name, port, START_TIMEOUT, output))
        raise ServerStartError("%s exited during start (code %s); output:\n%s"
                               % (name, proc.returncode, output))
    raise ServerStartError("%s: no free port after %d attempts (%s)" % (name, attempts, last_error))


# --- Log parsing --------------------------------------------------------------------------

_LOGFMT_PAIR = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    """Parses a logrus text line (key=value, values quoted when needed) into a dict."""
    fields = {}
    for m in _LOGFMT_PAIR.finditer(line):
        key, value = m.group(1), m.group(2)
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        fields[key] = value
    return fields


# Docker Distribution writes, per request, a combined-log-format line when the response
# has ended: 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_COMBINED = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) (HTTP/[\d.]+)" (\d{3}) (\d+|-)')


def read_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []


def _blob_uri_re(digest, repo=None):
    name = re.escape(repo) if repo else r"[^?]+"
    return re.compile(r"^/v2/%s/blobs/%s(\?.*)?$" % (name, re.escape(digest)))


# --- The origin: Docker Distribution ---------------------------------------------------

class Origin:
    """A Docker Distribution registry of the test's own.

    users: {name: password} turns on htpasswd (Basic) auth with realm `realm`.
    extra_yaml: more top-level config text, appended as is.
    """

    def __init__(self, work, name="origin", users=None, realm="e2e-realm", extra_yaml=""):
        self.work = work
        self.name = name
        self.users = users
        self.realm = realm
        self.extra_yaml = extra_yaml
        self.storage = work.sub(name + "-storage")
        self.config_path = work.sub(name + ".yml")
        self.log_path = work.sub(name + ".log")
        self.port = None
        self.proc = None

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://" + self.host

    def _write_htpasswd(self):
        path = self.work.sub(self.name + ".htpasswd")
        lines = []
        for user, password in sorted(self.users.items()):
            out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                 capture_output=True, timeout=CLIENT_TIMEOUT)
            lines.append(out.stdout.decode().strip())
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def config_text(self, port):
        text = ("version: 0.1\n"
                "log:\n  level: info\n  accesslog:\n    disabled: false\n"
                "storage:\n"
                "  filesystem:\n    rootdirectory: %s\n"
                "  delete:\n    enabled: true\n"
                "http:\n  addr: 127.0.0.1:%d\n  secret: e2e-%s-%d\n"
                % (self.storage, port, self.name, port))
        if self.users:
            text += ("auth:\n  htpasswd:\n    realm: %s\n    path: %s\n"
                     % (self.realm, self._write_htpasswd()))
        return text + self.extra_yaml

    def start(self):
        def make(port):
            with open(self.config_path, "w") as f:
                f.write(self.config_text(port))
            return Proc(self.name, ["docker-registry", "serve", self.config_path], self.log_path,
                        env=server_env())

        def ready(port, proc):
            try:
                r = request(port, "GET", "/v2/", timeout=2)
                return r.status in (200, 401)
            except OSError:
                return False

        self.port, self.proc = _start_server(make, ready, self.name)
        log("%s: docker-registry pid %d on %s" % (self.name, self.proc.pid, self.url))
        return self

    def stop(self):
        if self.proc:
            return self.proc.stop()
        return None

    def alive(self):
        return self.proc is not None and self.proc.alive()

    # What it served, from its access log.
    def access_log(self):
        """[{method, uri, proto, status, bytes}] for each request that has completed."""
        entries = []
        for line in read_lines(self.log_path):
            m = _COMBINED.match(line)
            if m:
                entries.append({"method": m.group(1), "uri": m.group(2), "proto": m.group(3),
                                "status": int(m.group(4)),
                                "bytes": 0 if m.group(5) == "-" else int(m.group(5))})
        return entries

    def count(self, method=None, uri=None, uri_re=None, status=None):
        n = 0
        for e in self.access_log():
            if method and e["method"] != method:
                continue
            if uri is not None and e["uri"] != uri:
                continue
            if uri_re is not None and not uri_re.search(e["uri"]):
                continue
            if status is not None and e["status"] != status:
                continue
            n += 1
        return n

    def count_blob_gets(self, digest, repo=None, status=200):
        """How many GETs of blob `digest` (in `repo`, or any) the origin has answered
        with `status` (None: any)."""
        return self.count(method="GET", uri_re=_blob_uri_re(digest, repo), status=status)

    def wait_for_count(self, fn, at_least, timeout=LOG_TIMEOUT):
        return wait_for_count(fn, at_least, timeout, "%s's access log" % self.name)

    def upload_blob(self, repo, data, timeout=CLIENT_TIMEOUT):
        """Uploads `data` as a blob of `repo` with the blob upload API (monolithic:
        POST, then PUT of the whole body with ?digest=) and returns its digest. No
        image refers to it: enough for tests that request blobs by digest."""
        import http.client
        digest = sha256_digest(data)
        r = request(self.port, "POST", "/v2/%s/blobs/uploads/" % repo, timeout=timeout)
        if r.status != 202 or not r.header("Location"):
            raise AssertionError("%s: starting an upload to %s: %r" % (self.name, repo, r))
        location = r.header("Location")
        if location.startswith("http"):
            location = "/" + location.split("/", 3)[3]
        location += ("&" if "?" in location else "?") + "digest=" + digest
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("PUT", location, body=data,
                         headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 201:
                raise AssertionError("%s: PUT of blob %s: %d %r" % (self.name, digest,
                                                                   resp.status, body[:300]))
        finally:
            conn.close()
        return digest


# --- The cache under test ------------------------------------------------------------

class CacheDied(AssertionError):
    pass


def _yaml_str(s):
    return json.dumps(str(s))  # a JSON string is a valid YAML double-quoted scalar


def _upstream_entry(up):
    """An upstream given as an Origin/Cache, a URL, or {"originhost", "upstreamhosts"}."""
    if isinstance(up, dict):
        origin = up["originhost"]
        hosts = up.get("upstreamhosts") or []
    else:
        origin, hosts = up, []
    as_url = lambda x: x.url if hasattr(x, "url") else x  # noqa: E731
    return as_url(origin), [as_url(h) for h in hosts]


# The loops every test's cache serves with, unless the test says otherwise
# ($CC_TEST_WORKERS=1: the suite as before workers existed).
DEFAULT_WORKERS = int(os.environ.get("CC_TEST_WORKERS", "2"))

# A drop-in evict policy (a file of a policydir): the largest blobs first, whatever their
# pull times (unlike the default), until what is asked for is freed.
LARGEST_FIRST_EVICT = ("return { evict = function(cands, need)\n"
                       "  local order, out, freed = {}, {}, 0\n"
                       "  for i, c in ipairs(cands) do order[i] = c end\n"
                       "  table.sort(order, function(a, b) return a.size > b.size end)\n"
                       "  for _, c in ipairs(order) do\n"
                       "    if freed >= need then break end\n"
                       "    out[#out + 1] = c.digest; freed = freed + c.size\n"
                       "  end\n"
                       "  return out\n"
                       "end }\n")


class Cache:
    """The content-cache binary with a config of the test's own.

    upstreams: a list of Origin objects, URLs, or {"originhost": X, "upstreamhosts": [..]}.
    blobttl: a string such as "1h" (None: not set). delete_enabled: storage.delete.enabled.
    extra_downstream_yaml: more lines under the downstream middleware's options (indented
    by the caller to 8 spaces). extra_yaml: more top-level text. env: extra environment.
    debug: serve http.debug.addr on a free port (self.debug_port; metrics()).
    workers: the loops it serves with (the middleware's workers). The suite runs every
    cache with DEFAULT_WORKERS (2, or $CC_TEST_WORKERS) so that every path is crossed
    between loops; None leaves the option out (one loop per CPU).
    """

    def __init__(self, work, upstreams, name="cache", blobttl=None, delete_enabled=True,
                 log_level="info", extra_downstream_yaml="", extra_yaml="", env=None,
                 binary=None, storage=None, debug=False, workers=None):
        self.work = work
        self.workers = DEFAULT_WORKERS if workers is None else workers
        self.debug_port = free_port() if debug else None
        self.name = name
        self.upstreams = list(upstreams)
        self.blobttl = blobttl
        self.delete_enabled = delete_enabled
        self.log_level = log_level
        self.extra_downstream_yaml = extra_downstream_yaml
        self.extra_yaml = extra_yaml
        self.extra_env = dict(env or {})
        self.binary = binary or binary_path()
        self.storage = storage or work.sub(name + "-storage")
        self.config_path = work.sub(name + ".yml")
        self.stdout_path = work.sub(name + ".stdout.log")
        self.stderr_path = work.sub(name + ".stderr.log")
        self.port = None
        self.proc = None
        self.exit_code = None
        self.stopped = False   # stopped on purpose: check_alive no longer applies

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://" + self.host

    def config_text(self, port):
        lines = [
            "version: 0.1",
            "log:",
            "  level: %s" % self.log_level,
            "storage:",
            "  filesystem:",
            "    rootdirectory: %s" % _yaml_str(self.storage),
            "  delete:",
            "    enabled: %s" % ("true" if self.delete_enabled else "false"),
            "http:",
            "  addr: 127.0.0.1:%d" % port,
        ]
        if self.debug_port is not None:
            lines += ["  debug:", "    addr: 127.0.0.1:%d" % self.debug_port]
        lines += [
            "middleware:",
            "  registry:",
            "    - name: downstream",
            "      options:",
        ]
        if self.blobttl is not None:
            lines.append("        blobttl: %s" % self.blobttl)
        if self.workers:
            lines.append("        workers: %d" % self.workers)
        lines.append("        upstreams:")
        for up in self.upstreams:
            origin, hosts = _upstream_entry(up)
            lines.append("          - originhost: %s" % _yaml_str(origin))
            if hosts:
                lines.append("            upstreamhosts:")
                lines.extend("              - %s" % _yaml_str(h) for h in hosts)
        text = "\n".join(lines) + "\n" + self.extra_downstream_yaml
        return text + self.extra_yaml

    def metrics(self):
        """/metrics of the debug server (debug=True): {"name{labels}": value}."""
        r = request(self.debug_port, "GET", "/metrics")
        if r.status != 200:
            raise AssertionError("/metrics: %r" % r)
        values = {}
        for line in r.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def write_config(self, port=None, path=None):
        """Writes the config (for `port`, default a fresh one) and returns its path."""
        path = path or self.config_path
        with open(path, "w") as f:
            f.write(self.config_text(port or free_port()))
        return path

    def env(self):
        return server_env(self.extra_env)

    def start(self):
        if not binary_available():
            raise ServerStartError("no content-cache binary at %s (set CC_BINARY)" % self.binary)

        # With several loops, loop 0 listens before the others: connections made before
        # they do all go to loop 0. Ready is when the log says every loop serves.
        loops = self.workers or len(os.sched_getaffinity(0))
        marker = "loops serve on"
        seen = [0]

        def served_lines():
            return sum(marker in line for line in read_lines(self.stderr_path))

        def make(port):
            self.write_config(port)
            seen[0] = served_lines()
            return Proc(self.name, [self.binary, self.config_path], self.stdout_path,
                        self.stderr_path, env=self.env())

        def ready(port, proc):
            if not port_open(port):
                return False
            return loops <= 1 or self.log_level not in ("info", "debug") or \
                served_lines() > seen[0]

        self.port, self.proc = _start_server(make, ready, self.name)
        log("%s: content-cache pid %d on %s" % (self.name, self.proc.pid, self.url))
        return self

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def check_alive(self):
        """Raises CacheDied, with the end of its stderr, if the cache has exited."""
        if self.proc is not None and not self.stopped and not self.proc.alive():
            raise CacheDied("%s (pid %d) exited with code %s; stderr:\n%s" % (
                self.name, self.proc.pid, self.proc.popen.returncode, tail(self.stderr_path)))

    def stop(self):
        """SIGTERM (drain), SIGKILL after STOP_TIMEOUT. Returns the exit code."""
        if self.proc is None:
            return None
        self.stopped = True
        self.exit_code = self.proc.stop()
        return self.exit_code

    def kill(self, sig=signal.SIGKILL):
        """Kills the cache by its PID with `sig` (default SIGKILL: a crash) and waits for
        it. It counts as stopped on purpose: Run.finish does not hold it against the
        test. Returns the exit code (negative: the signal)."""
        if self.proc is None or self.proc.popen is None:
            return None
        self.stopped = True
        if self.proc.alive():
            os.kill(self.proc.pid, sig)
            self.proc.popen.wait(timeout=STOP_TIMEOUT)
        self.exit_code = self.proc.stop()
        return self.exit_code

    # The storage layout (README.md, Storage).
    @property
    def tmp_dir(self):
        """Where blobs being fetched are written: <root>/docker/registry/v2/_content-cache/tmp."""
        return os.path.join(self.storage, "docker", "registry", "v2", "_content-cache", "tmp")

    def blob_file(self, digest):
        """The final path of a stored blob: <root>/docker/registry/v2/blobs/sha256/<2>/<hex>/data."""
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256",
                            hexd[:2], hexd, "data")

    def stored_digests(self):
        """The set of digests ("sha256:<hex>") whose blob file is in the store."""
        root = os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256")
        out = set()
        for dirpath, _, files in os.walk(root):
            if "data" in files:
                out.add("sha256:" + os.path.basename(dirpath))
        return out

    def tmp_files(self, digest=None):
        """{name: size} of the files in tmp_dir (only those of `digest`, if given)."""
        out = {}
        prefix = digest.split(":", 1)[1] if digest else ""
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return out
        for name in names:
            if not name.startswith(prefix):
                continue
            try:
                out[name] = os.stat(os.path.join(self.tmp_dir, name)).st_size
            except FileNotFoundError:
                pass
        return out

    def stderr_text(self):
        return "\n".join(read_lines(self.stderr_path))

    def sanitizer_report(self):
        """The first lines of an ASan/UBSan/LSan report in stderr, or None."""
        lines = read_lines(self.stderr_path)
        for i, line in enumerate(lines):
            if ("ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line
                    or "WARNING: ThreadSanitizer" in line
                    or "runtime error:" in line or "ERROR: UndefinedBehaviorSanitizer" in line):
                return "\n".join(lines[i:i + 30])
        return None

    def access_lines(self):
        """The access-log lines (stdout) as dicts of their logfmt fields; lines without
        http.request.method are not access-log lines and are left out."""
        out = []
        for line in read_lines(self.stdout_path):
            fields = parse_logfmt(line)
            if "http.request.method" in fields:
                fields["_line"] = line
                out.append(fields)
        return out

    def count_access(self, method=None, uri=None, status=None, **fields):
        """How many access-log lines match method, uri, status and every other given
        field (a dot in a field name is written '__': upstream__x="..." for upstream.x)."""
        n = 0
        for e in self.access_lines():
            if method and e.get("http.request.method") != method:
                continue
            if uri is not None and e.get("http.request.uri") != uri:
                continue
            if status is not None and str(e.get("http.response.status")) != str(status):
                continue
            if any(str(e.get(k.replace("__", "."))) != str(v) for k, v in fields.items()):
                continue
            n += 1
        return n

    def run_binary(self, args, timeout=CLIENT_TIMEOUT):
        return run_binary(args, timeout=timeout, env=self.env())


def run_binary(args, timeout=CLIENT_TIMEOUT, env=None):
    """Runs the content-cache binary with args (e.g. ["--check", path]) and returns the
    CompletedProcess (text, stdout and stderr captured)."""
    return subprocess.run([binary_path()] + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env,
                          preexec_fn=_child_setup)


# --- Assertions -----------------------------------------------------------------------

def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what, expected, actual))


def expect_status(resp, status, what="status"):
    if isinstance(status, int):
        status = (status,)
    if resp.status not in status:
        raise AssertionError("%s: expected %s, got %r" % (what, "/".join(map(str, status)), resp))


def expect_error(resp, status, code):
    """The response is a registry error with this status and this error code."""
    expect_status(resp, status)
    codes = resp.error_codes()
    if code not in codes:
        raise AssertionError("expected error code %s in the body, got %r" % (code, resp))


# --- The check runner -----------------------------------------------------------------

# The exit code of a run whose every check was skipped (tests/CMakeLists.txt gives it to
# ctest as SKIP_RETURN_CODE): a test that cannot run here says so in the summary.
SKIPPED_EXIT_CODE = 77


class Run:
    """Runs named checks, each isolated: an exception fails that check only. Servers made
    through origin()/cache() are stopped at the end; a cache that died or printed a
    sanitizer report fails the run."""

    def __init__(self, name):
        self.name = name
        self.work = Workdir(name)
        self.passed = 0
        self.failed = []
        self.skipped = 0
        self.origins = []
        self.caches = []
        log("%s: work directory %s" % (name, self.work.path))

    def origin(self, **kwargs):
        o = Origin(self.work, **kwargs)
        self.origins.append(o)
        return o.start()

    def cache(self, upstreams, start=True, **kwargs):
        c = Cache(self.work, upstreams, **kwargs)
        self.caches.append(c)
        return c.start() if start else c

    def _check_caches_alive(self):
        for c in self.caches:
            c.check_alive()

    def check(self, name, fn, *args, **kwargs):
        """Runs fn(*args, **kwargs) as the check `name`; returns its result, or None when
        it failed. A cache that died during the check fails it too."""
        t0 = time.monotonic()
        try:
            result = fn(*args, **kwargs)
            self._check_caches_alive()
        except Exception as e:
            self.failed.append(name)
            detail = "".join(traceback.format_exception_only(type(e), e)).rstrip()
            where = traceback.extract_tb(e.__traceback__)
            frames = [f for f in where if os.path.basename(f.filename).startswith("test_")]
            loc = (" (%s:%d)" % (os.path.basename(frames[-1].filename), frames[-1].lineno)
                   if frames else "")
            print("FAIL  %s%s\n      %s" % (name, loc, detail.replace("\n", "\n      ")),
                  flush=True)
            return None
        self.passed += 1
        print("PASS  %s  (%.2f s)" % (name, time.monotonic() - t0), flush=True)
        return result if result is not None else True

    def skip(self, name, reason):
        self.skipped += 1
        print("SKIP  %s: %s" % (name, reason), flush=True)

    def setup_failed(self, exc):
        self.failed.append("setup")
        print("FAIL  setup\n      %s" % "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).replace(
                "\n", "\n      "), flush=True)

    def finish(self):
        """Stops every server (caches first), fails the run for a cache that needed
        SIGKILL, exited non-zero on SIGTERM or reported a sanitizer error, prints the
        summary and returns the exit code: 1 when a check failed, SKIPPED_EXIT_CODE when
        every check was skipped, else 0."""
        for c in self.caches:
            if c.proc is None:
                continue
            died = not c.stopped and not c.alive()
            was_alive = c.alive()
            code = c.stop()

            def stopped_cleanly(c=c, was_alive=was_alive, died=died, code=code):
                expect(not died, "%s died during the test with exit code %s; stderr:\n%s"
                       % (c.name, code, tail(c.stderr_path)))
                report = c.sanitizer_report()
                expect(report is None, "sanitizer report in %s's stderr:\n%s" % (c.name, report))
                if was_alive:
                    expect(not c.proc.killed, "%s did not exit within %.0f s of SIGTERM"
                           % (c.name, STOP_TIMEOUT))
                    expect(code == 0, "%s exited with %s on SIGTERM (expected 0); stderr:\n%s"
                           % (c.name, code, tail(c.stderr_path)))

            self.check("%s: ran without crashing and stopped cleanly on SIGTERM "
                       "(exit 0, no sanitizer report)" % c.name, stopped_cleanly)
        for o in self.origins:
            o.stop()
        stop_all_processes()
        ok = not self.failed
        self.work.finish(ok)
        if self.failed:
            print("failed checks:\n  " + "\n  ".join(self.failed), flush=True)
        summary = "%d passed, %d failed" % (self.passed, len(self.failed))
        if self.skipped:
            summary += ", %d skipped" % self.skipped
        print(summary, flush=True)
        if ok and self.passed == 0 and self.skipped:
            return SKIPPED_EXIT_CODE  # ctest shows "Skipped" (SKIP_RETURN_CODE)
        return 0 if ok else 1


def main(name, body):
    """Runs body(run) for a Run named `name`, then finishes it and exits with its code.
    An exception escaping body (a setup step, outside any check) fails the run."""
    run = Run(name)
    try:
        body(run)
    except BaseException as e:  # includes SystemExit from SIGTERM
        run.setup_failed(e)
    code = run.finish()
    sys.exit(code)
