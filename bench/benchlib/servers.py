"""The servers of the benchmark, each a child process of ours on 127.0.0.1.

  Origin        Docker Distribution (`docker-registry serve`), the registry everything pulls
                from; its access log tells how often it served a blob.
  DistProxy     Docker Distribution in proxy mode (`proxy.remoteurl` = the origin).
  Nginx         nginx serving the origin's blob files at /v2/<name>/blobs/sha256:<hex>.
  Cache         content-cache with the origin as its originhost.

Every process is started by Proc and stopped by its PID (SIGTERM, then SIGKILL after a
bound): by whoever started it, and in any case by stop_all() at exit or on a signal. Each
child also gets PR_SET_PDEATHSIG, so nothing outlives a benchmark that was killed -9.
Python standard library only.
"""

import atexit
import ctypes
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import time

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - Linux has it
    _libc = None


def _child_setup():
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_live = []


class Proc:
    """A child process with its output in files, stopped by its PID."""

    def __init__(self, name, argv, out_path, err_path=None, env=None):
        self.name = name
        self.argv = list(argv)
        self.out_path = out_path
        self.err_path = err_path or out_path
        self.env = env
        self.popen = None
        self._files = []

    def start(self):
        out = open(self.out_path, "ab")
        self._files = [out]
        err = subprocess.STDOUT
        if self.err_path != self.out_path:
            err = open(self.err_path, "ab")
            self._files.append(err)
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=err, env=self.env, preexec_fn=_child_setup)
        _live.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM):
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT)
        for f in self._files:
            f.close()
        self._files = []
        if self in _live:
            _live.remove(self)
        return self.popen.returncode


def stop_all():
    """Stops every process still running, newest first (caches before the origin)."""
    for proc in list(reversed(_live)):
        try:
            proc.stop()
        except Exception as e:  # keep stopping the others
            print("bench: could not stop %s (pid %s): %s" % (proc.name, proc.pid, e), flush=True)


atexit.register(stop_all)


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through finally blocks, then atexit


for _sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(_sig, _on_signal)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def server_env(extra=None):
    """Our environment less REGISTRY_* (config overrides for both registries)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(extra or {})
    return env


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def rss_kib(pid):
    """VmRSS of a process in KiB (from /proc/PID/status), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def http_get_status(port, path="/v2/", timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


class Server:
    """What the servers share: a name, a work directory, a port, a process, readiness."""

    name = "server"

    def __init__(self, work, name):
        self.work = work
        self.name = name
        self.port = None
        self.proc = None

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def make_proc(self, port):
        raise NotImplementedError

    def ready(self, port):
        return port_open(port)

    def start(self, port=None):
        """Starts on `port` (default: the one it had, else a fresh one); retries on a fresh
        port when the chosen one was taken meanwhile."""
        for attempt in range(3):
            chosen = port or self.port or free_port()
            if attempt > 0:
                chosen = free_port()
            proc = self.make_proc(chosen).start()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.alive():
                if self.ready(chosen):
                    self.port, self.proc = chosen, proc
                    return self
                time.sleep(POLL)
            alive = proc.alive()
            proc.stop()
            out = tail(proc.err_path)
            if not alive and "address already in use" in out.lower():
                continue
            raise RuntimeError("%s did not start on port %d (%s); output:\n%s"
                               % (self.name, chosen, "still not ready" if alive else
                                  "exit code %s" % proc.popen.returncode, out))
        raise RuntimeError("%s: no free port after 3 attempts" % self.name)

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def rss_kib(self):
        return rss_kib(self.proc.pid) if self.alive() else None


def blob_path(root, digest):
    """Where Docker Distribution and content-cache keep a blob under their root."""
    hexd = digest.split(":", 1)[1]
    return os.path.join(root, "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd,
                        "data")


# --- Docker Distribution: the origin and the proxy --------------------------------------

def _registry_config(storage, port, secret, extra=""):
    return ("version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
            "http:\n  addr: 127.0.0.1:%d\n  secret: %s\n%s" % (storage, port, secret, extra))


# The access-log line that Docker Distribution writes when a response has ended:
# 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 1024 "" "curl/7.88.1"
_COMBINED = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) HTTP/[\d.]+" (\d{3}) ')


class Registry(Server):
    def __init__(self, work, name, extra_yaml=""):
        super().__init__(work, name)
        self.storage = self.path(name + "-storage")
        self.config_path = self.path(name + ".yml")
        self.log_path = self.path(name + ".log")
        self.extra_yaml = extra_yaml

    def make_proc(self, port):
        with open(self.config_path, "w") as f:
            f.write(_registry_config(self.storage, port, "bench-%s" % self.name,
                                     self.extra_yaml))
        return Proc(self.name, ["docker-registry", "serve", self.config_path], self.log_path,
                    env=server_env())

    def ready(self, port):
        try:
            return http_get_status(port) == 200
        except OSError:
            return False

    def restart_fresh(self):
        """Stops, removes the storage, starts again on the same port."""
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)
        return self.start()

    def count_blob_gets(self, digest, status=200):
        """GETs of the blob that this registry has answered with `status`, any repository."""
        pattern = re.compile(r"^/v2/.+/blobs/%s(\?.*)?$" % re.escape(digest))
        n = 0
        try:
            with open(self.log_path, "rb") as f:
                for raw in f:
                    m = _COMBINED.match(raw.decode("utf-8", "replace"))
                    if m and m.group(1) == "GET" and int(m.group(3)) == status \
                            and pattern.match(m.group(2)):
                        n += 1
        except FileNotFoundError:
            pass
        return n

    def settled_blob_gets(self, digest, quiet=1.0, timeout=15.0):
        """count_blob_gets once it has not changed for `quiet` seconds (lines are written
        when a response ends), or after `timeout`."""
        deadline = time.monotonic() + timeout
        last, since = self.count_blob_gets(digest), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            n = self.count_blob_gets(digest)
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


class Origin(Registry):
    def __init__(self, work):
        super().__init__(work, "origin")

    def upload_blob(self, repo, data, timeout=120.0):
        """Pushes `data` as a blob of `repo` (POST, then PUT with ?digest=); returns the digest."""
        import hashlib
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/v2/%s/blobs/uploads/" % repo)
            r = conn.getresponse()
            r.read()
            location = r.getheader("Location")
            if r.status != 202 or not location:
                raise RuntimeError("origin: starting an upload: %d" % r.status)
            if location.startswith("http"):
                location = "/" + location.split("/", 3)[3]
            location += ("&" if "?" in location else "?") + "digest=" + digest
            conn.request("PUT", location, body=data,
                         headers={"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 201:
                raise RuntimeError("origin: PUT of %s: %d %r" % (digest, r.status, body[:200]))
        finally:
            conn.close()
        return digest


class DistProxy(Registry):
    """Docker Distribution's own pull-through cache. It panics at start when the remote is
    down: start the origin first."""

    def __init__(self, work, origin_url, name="distproxy"):
        super().__init__(work, name, "proxy:\n  remoteurl: %s\n" % origin_url)


# --- nginx ------------------------------------------------------------------------------

class Nginx(Server):
    """nginx (one master, 2 workers) serving the blob files under `blob_root` (a registry
    storage root) at /v2/<name>/blobs/sha256:<hex>, over HTTP and, with a certificate,
    over TLS on a second port. The master is our child; it stops its workers."""

    def __init__(self, work, blob_root, cert=None, key=None):
        super().__init__(work, "nginx")
        self.blob_root = blob_root
        self.cert, self.key = cert, key
        self.tls_port = None
        self.prefix = self.path("nginx")

    @property
    def tls_url(self):
        return "https://127.0.0.1:%d" % self.tls_port

    def config_text(self, port):
        location = (
            "        location ~ \"^/v2/.+/blobs/sha256:(?<p2>[0-9a-f]{2})(?<rest>[0-9a-f]{62})$\" {\n"
            "            alias %s/docker/registry/v2/blobs/sha256/$p2/$p2$rest/data;\n"
            "        }\n"
            "        location / { return 404; }\n" % self.blob_root)
        tls = ""
        if self.cert:
            tls = ("    server {\n"
                   "        listen 127.0.0.1:%d ssl;\n"
                   "        ssl_certificate %s;\n        ssl_certificate_key %s;\n%s"
                   "    }\n" % (self.tls_port, self.cert, self.key, location))
        p = self.prefix
        return ("daemon off;\nmaster_process on;\nuser root;\nworker_processes 2;\n"
                "worker_rlimit_nofile 65536;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n"
                "events { worker_connections 20000; }\n"
                "http {\n"
                "    access_log off;\n    sendfile on;\n    tcp_nopush on;\n"
                "    keepalive_requests 1000000;\n"
                "    default_type application/octet-stream;\n"
                "    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n"
                "    fastcgi_temp_path %s/fastcgi;\n    uwsgi_temp_path %s/uwsgi;\n"
                "    scgi_temp_path %s/scgi;\n"
                "    server {\n        listen 127.0.0.1:%d;\n%s    }\n%s"
                "}\n" % (p, p, p, p, p, p, p, port, location, tls))

    def make_proc(self, port):
        os.makedirs(self.prefix, exist_ok=True)
        if self.cert and self.tls_port is None:
            self.tls_port = free_port()
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self.config_text(port))
        return Proc("nginx", ["nginx", "-p", self.prefix, "-e", self.prefix + "/error.log",
                              "-c", conf], self.path("nginx.out"))

    def ready(self, port):
        return port_open(port) and (self.tls_port is None or port_open(self.tls_port))

    def rss_kib(self):
        """Master and workers together."""
        if not self.alive():
            return None
        pids = [self.proc.pid] + children_of(self.proc.pid)
        return sum(rss_kib(p) or 0 for p in pids)


class NginxProxyCache(Server):
    """nginx with proxy_cache in front of the origin, as operators make a registry mirror
    of it: 2 workers, proxy_cache_lock on (one upstream fetch per blob for concurrent
    misses), responses streamed to the client as they arrive and written to the cache on
    the side. It verifies nothing. The master is our child; it stops its workers."""

    def __init__(self, work, origin_url, name="nginx-proxy"):
        super().__init__(work, name)
        self.origin_url = origin_url
        self.prefix = self.path(name)

    def config_text(self, port):
        p = self.prefix
        return ("daemon off;\nmaster_process on;\nuser root;\nworker_processes 2;\n"
                "worker_rlimit_nofile 65536;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n"
                "events { worker_connections 20000; }\n"
                "http {\n"
                "    access_log off;\n    sendfile on;\n    tcp_nopush on;\n"
                "    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n"
                "    fastcgi_temp_path %s/fastcgi;\n    uwsgi_temp_path %s/uwsgi;\n"
                "    scgi_temp_path %s/scgi;\n"
                "    proxy_cache_path %s/cache levels=1:2 keys_zone=blobs:16m max_size=20g "
                "inactive=1d use_temp_path=off;\n"
                "    server {\n        listen 127.0.0.1:%d;\n"
                "        location /v2/ {\n"
                "            proxy_pass %s;\n"
                "            proxy_http_version 1.1;\n"
                "            proxy_set_header Connection \"\";\n"
                "            proxy_cache blobs;\n"
                "            proxy_cache_lock on;\n"
                "            proxy_cache_lock_timeout 300s;\n"
                "            proxy_cache_lock_age 300s;\n"
                "            proxy_cache_valid 200 1d;\n"
                "            proxy_buffering on;\n"
                "            proxy_max_temp_file_size 0;\n"
                "        }\n"
                "    }\n"
                "}\n" % (p, p, p, p, p, p, p, p, port, self.origin_url))

    def make_proc(self, port):
        os.makedirs(self.prefix, exist_ok=True)
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self.config_text(port))
        return Proc(self.name, ["nginx", "-p", self.prefix, "-e", self.prefix + "/error.log",
                                "-c", conf], self.path(self.name + ".out"))

    def restart_fresh(self):
        self.stop()
        shutil.rmtree(os.path.join(self.prefix, "cache"), ignore_errors=True)
        return self.start()

    def rss_kib(self):
        if not self.alive():
            return None
        pids = [self.proc.pid] + children_of(self.proc.pid)
        return sum(rss_kib(p) or 0 for p in pids)


# --- content-cache ----------------------------------------------------------------------

class Cache(Server):
    """content-cache with the origin as its originhost. tls=(cert, key) serves HTTPS;
    policydir names a drop-in policy directory; workers sets the loops (None: the option
    is left out, one loop per CPU). stdout (the access log) goes to a file, as it would
    in a deployment."""

    def __init__(self, work, binary, origin_url, name="cache", tls=None, policydir=None,
                 builtin_policies=None, workers=None):
        super().__init__(work, name)
        self.workers = workers
        self.binary = binary
        # The built-in policies: given, else what bench/run.sh exports for every cache.
        self.builtin_policies = builtin_policies
        self.origin_url = origin_url
        self.tls = tls
        self.policydir = policydir
        self.storage = self.path(name + "-storage")
        self.config_path = self.path(name + ".yml")
        self.out_path = self.path(name + ".access.log")
        self.err_path = self.path(name + ".stderr.log")

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def config_text(self, port):
        lines = ["version: 0.1", "log:", "  level: info",
                 "storage:", "  delete:", "    enabled: true",
                 "  filesystem:", "    rootdirectory: %s" % self.storage,
                 "http:", "  addr: 127.0.0.1:%d" % port]
        if self.tls:
            lines += ["  tls:", "    certificate: %s" % self.tls[0], "    key: %s" % self.tls[1]]
        lines += ["middleware:", "  registry:", "    - name: downstream", "      options:",
                  "        upstreams:", "          - originhost: %s" % self.origin_url]
        if self.policydir:
            lines.append("        policydir: %s" % self.policydir)
        if self.workers:
            lines.append("        workers: %d" % self.workers)
        return "\n".join(lines) + "\n"

    def write_config(self, port):
        with open(self.config_path, "w") as f:
            f.write(self.config_text(port))

    def check(self):
        """`content-cache --check` of the config: (exit code, output)."""
        self.write_config(self.port or free_port())
        r = subprocess.run([self.binary, "--check", self.config_path], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL, env=self.env())
        return r.returncode, r.stdout + r.stderr

    def env(self):
        extra = {}
        if self.builtin_policies:
            extra["CONTENT_CACHE_BUILTIN_POLICIES"] = self.builtin_policies
        return server_env(extra)

    def make_proc(self, port):
        self.write_config(port)
        return Proc(self.name, [self.binary, self.config_path], self.out_path, self.err_path,
                    env=self.env())

    def restart_fresh(self):
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)
        return self.start()

    def truncate_access_log(self):
        """The access log grows by ~300 bytes a request: empty it between scenarios (the
        file is open with O_APPEND, so the cache goes on writing at its new end)."""
        try:
            os.truncate(self.out_path, 0)
        except FileNotFoundError:
            pass

    def access_log_text(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


class Front(Cache):
    """content-cache as the front (the contentcaches middleware) before the origin, with
    `admin` among its admins. The benchmark's origin takes any credentials, so a client
    with Basic credentials is signed in as their user."""

    def __init__(self, work, binary, origin_url, name="front", builtin_policies=None):
        super().__init__(work, binary, origin_url, name=name, builtin_policies=builtin_policies)

    def config_text(self, port):
        lines = ["version: 0.1", "log:", "  level: info",
                 "storage:", "  filesystem:", "    rootdirectory: %s" % self.storage,
                 "http:", "  addr: 127.0.0.1:%d" % port,
                 "middleware:", "  registry:", "    - name: contentcaches", "      options:",
                 "        originhost: %s" % self.origin_url, "        admins: [admin]"]
        return "\n".join(lines) + "\n"
