"""The load the benchmark puts on the servers: wrk for request rates, curl for downloads
(one, or many at once), and a socket client that holds many idle keep-alive connections.

Every function checks what it got (status, sizes) and raises BenchError when a response
was wrong, so that a figure in the table is never made of failed requests.
"""

import re
import selectors
import socket
import subprocess
import time


class BenchError(RuntimeError):
    pass


# --- wrk -------------------------------------------------------------------------------

def _wrk_number(text, pattern, default=None):
    m = re.search(pattern, text)
    return m.group(1) if m else default


def _wrk_latency_ms(value):
    m = re.match(r"([\d.]+)(us|ms|s)$", value or "")
    if not m:
        return None
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(url, threads=2, connections=64, seconds=5):
    """Runs wrk; returns {rps, requests, p50_ms, p99_ms, errors}. Raises BenchError when
    any response was not 2xx/3xx or a socket error other than a timeout happened."""
    argv = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--latency", url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = r.stdout
    if r.returncode != 0 or "Requests/sec:" not in out:
        raise BenchError("wrk failed (%d): %s %s" % (r.returncode, out[-500:], r.stderr[-500:]))
    non2xx = int(_wrk_number(out, r"Non-2xx or 3xx responses:\s+(\d+)", "0"))
    socket_errors = _wrk_number(out, r"Socket errors:\s+(.*)")
    requests = int(_wrk_number(out, r"(\d+) requests in"))
    if non2xx:
        raise BenchError("wrk: %d of %d responses were not 2xx/3xx" % (non2xx, requests))
    errors = 0
    if socket_errors:
        counts = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", socket_errors))
        errors = counts.get("connect", 0) + counts.get("read", 0) + counts.get("write", 0)
        if errors:
            raise BenchError("wrk: socket errors: %s" % socket_errors.strip())
    return {
        "rps": float(_wrk_number(out, r"Requests/sec:\s+([\d.]+)")),
        "requests": requests,
        "p50_ms": _wrk_latency_ms(_wrk_number(out, r"\n\s+50%\s+(\S+)")),
        "p99_ms": _wrk_latency_ms(_wrk_number(out, r"\n\s+99%\s+(\S+)")),
    }


# --- curl ------------------------------------------------------------------------------

CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


def _curl_argv(url, insecure=False, extra=()):
    argv = ["curl", "-s", "-S", "-o", "/dev/null", "-w", CURL_FORMAT]
    if insecure:
        argv.append("-k")
    return argv + list(extra) + [url]


def _parse_curl(text, url, expect_size):
    try:
        code, size, ttfb, total = text.split()
        code, size = int(code), int(size)
        ttfb, total = float(ttfb), float(total)
    except ValueError:
        raise BenchError("curl %s: unexpected output %r" % (url, text))
    if code != 200 or (expect_size is not None and size != expect_size):
        raise BenchError("curl %s: status %d, %d bytes (expected 200, %s bytes)"
                         % (url, code, size, expect_size))
    return {"ttfb": ttfb, "total": total, "bytes": size}


def curl_get(url, expect_size=None, insecure=False, timeout=300):
    """One GET to /dev/null: {ttfb, total, bytes} in seconds (curl's time_starttransfer
    and time_total)."""
    r = subprocess.run(_curl_argv(url, insecure), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise BenchError("curl %s: exit %d: %s" % (url, r.returncode, r.stderr.strip()))
    return _parse_curl(r.stdout, url, expect_size)


def curl_parallel(url, n, expect_size=None, insecure=False, timeout=600, tolerate=False):
    """n curl processes at once, each one GET to /dev/null. Returns {wall, results, errors}:
    wall is the time from starting the first to the end of the last (seconds). A failed
    GET raises BenchError, unless tolerate (a peer's failures are figures, not the
    benchmark's): then it is left out of results and said in errors."""
    procs = []
    start = time.monotonic()
    for _ in range(n):
        procs.append(subprocess.Popen(_curl_argv(url, insecure), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outputs.append((p.returncode, out, err))
    wall = time.monotonic() - start
    results, errors = [], []
    for code, out, err in outputs:
        try:
            if code != 0:
                raise BenchError("curl %s: exit %d: %s" % (url, code, err.strip()))
            results.append(_parse_curl(out, url, expect_size))
        except BenchError as e:
            if not tolerate:
                raise
            errors.append(str(e))
    if not results:
        raise BenchError("curl %s: every one of %d GETs failed: %s" % (url, n, errors[0]))
    return {"wall": wall, "results": results, "errors": errors}


def tls_session(url):
    """'TLSv1.3 / TLS_AES_256_GCM_SHA384' as curl -v reports it, or None."""
    r = subprocess.run(["curl", "-s", "-k", "-v", "-o", "/dev/null", "-r", "0-0", url],
                       capture_output=True, text=True, timeout=30)
    m = re.search(r"SSL connection using (.+)", r.stderr)
    return m.group(1).strip() if m else None


# --- Many idle keep-alive connections --------------------------------------------------

def _response_complete(buf):
    """True when buf holds one whole response with a Content-Length body."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", buf[:head_end])
    if not m:
        raise BenchError("idle client: response without Content-Length: %r" % buf[:200])
    return len(buf) >= head_end + 4 + int(m.group(1))


class IdleConnections:
    """Opens `count` connections to 127.0.0.1:port in batches, sends one complete request
    on each, reads each whole response, and keeps every connection open (keep-alive)
    until close(). Needs `ulimit -n` above count."""

    def __init__(self, port, count, request_path="/v2/", batch=250, timeout=120.0):
        self.port = port
        self.count = count
        self.request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                        % (request_path, port)).encode()
        self.batch = batch
        self.timeout = timeout
        self.socks = []
        self.statuses = {}

    def open(self):
        deadline = time.monotonic() + self.timeout
        while len(self.socks) < self.count:
            n = min(self.batch, self.count - len(self.socks))
            self._open_batch(n, deadline)
        return self

    def _open_batch(self, n, deadline):
        sel = selectors.DefaultSelector()
        pending = {}
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            pending[s] = [b"", False]  # received, request sent
            sel.register(s, selectors.EVENT_WRITE)
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise BenchError("idle client: %d of %d connections not answered in time"
                                     % (len(pending), n))
                for key, _ in sel.select(timeout=1.0):
                    s = key.fileobj
                    state = pending[s]
                    if not state[1]:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise BenchError("idle client: connect failed: %s"
                                             % socket.errno.errorcode.get(err, err))
                        s.send(self.request)
                        state[1] = True
                        sel.modify(s, selectors.EVENT_READ)
                        continue
                    data = s.recv(65536)
                    if not data:
                        raise BenchError("idle client: the server closed a connection "
                                         "before answering")
                    state[0] += data
                    if _response_complete(state[0]):
                        status = int(state[0].split(b" ", 2)[1])
                        self.statuses[status] = self.statuses.get(status, 0) + 1
                        sel.unregister(s)
                        del pending[s]
                        self.socks.append(s)
        finally:
            sel.close()
            for s in pending:
                s.close()

    def still_open(self):
        """How many connections the server has not closed (a peek that finds no EOF)."""
        n = 0
        for s in self.socks:
            try:
                if s.recv(1, socket.MSG_PEEK) != b"":
                    n += 1  # unexpected bytes, but open
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []


# --- The front's redirect ----------------------------------------------------------------

def _basic(user):
    import base64
    return "Basic " + base64.b64encode(("%s:%s" % (user, "bench")).encode()).decode()


def front_register(front_port, name, host, user):
    """Registers a cache with the front and makes it `user`'s choice (the caches API)."""
    import http.client
    import json
    for method, path, doc, want in (
            ("POST", "/api/v0/content_caches", {"name": name, "host": host}, 201),
            ("PUT", "/api/v0/accounts/%s/settings" % user, {"contentCache": name}, 200)):
        conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=10)
        conn.request(method, path, body=json.dumps(doc),
                     headers={"Authorization": _basic(user), "Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        if r.status != want:
            raise BenchError("%s %s: %d %r" % (method, path, r.status, body[:200]))


class RedirectClient:
    """A client pulling one blob through the front: GET at the front (signed in as
    `user`), its 307, the GET of the Location at the cache; two kept-alive connections."""

    def __init__(self, front_port, user, repo, digest, size):
        import http.client
        self.front = http.client.HTTPConnection("127.0.0.1", front_port, timeout=10)
        self.cache = None
        self.path = "/v2/%s/blobs/%s" % (repo, digest)
        self.auth = _basic(user)
        self.size = size

    def get(self):
        import http.client
        import urllib.parse
        self.front.request("GET", self.path, headers={"Authorization": self.auth})
        r = self.front.getresponse()
        r.read()
        if r.status != 307:
            raise BenchError("the front answered %d, not a redirect" % r.status)
        loc = urllib.parse.urlsplit(r.getheader("Location"))
        if self.cache is None:
            self.cache = http.client.HTTPConnection(loc.hostname, loc.port, timeout=10)
        self.cache.request("GET", loc.path + "?" + loc.query)
        c = self.cache.getresponse()
        body = c.read()
        if c.status != 200 or len(body) != self.size:
            raise BenchError("the cache answered %d with %d bytes" % (c.status, len(body)))

    def times(self, n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.get()
            out.append((time.perf_counter() - t0) * 1000.0)
        return out

    def close(self):
        self.front.close()
        if self.cache is not None:
            self.cache.close()


def direct_times(port, repo, digest, size, n):
    """The same blob asked of the cache itself, n times on one connection: ms each."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = "/v2/%s/blobs/%s" % (repo, digest)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != size:
            raise BenchError("the cache answered %d with %d bytes" % (r.status, len(body)))
        out.append((time.perf_counter() - t0) * 1000.0)
    conn.close()
    return out
# --- Many different blobs, once each ---------------------------------------------------

def get_each(port, paths, expect_size, connections=8, timeout=60.0):
    """GETs every path once from 127.0.0.1:port over `connections` keep-alive connections
    (threads, each taking the next path from a shared list) and returns the wall clock in
    seconds from the first request to the last response. Raises BenchError for any status
    but 200 or a body of another size."""
    import http.client
    import threading

    todo = list(paths)
    lock = threading.Lock()
    errors = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while not errors:
                with lock:
                    if not todo:
                        return
                    path = todo.pop()
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or len(body) != expect_size:
                    errors.append("GET %s: status %d, %d bytes (expected 200, %d)"
                                  % (path, r.status, len(body), expect_size))
        except (OSError, http.client.HTTPException) as e:
            errors.append("GET: %s" % e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    if errors:
        raise BenchError(errors[0])
    return wall
