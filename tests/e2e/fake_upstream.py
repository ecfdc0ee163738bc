"""A scriptable fake upstream for the blob e2e tests: its own process, stopped by PID.

Two roles, chosen at start:

  registry  a registry that serves only what the test scripts: GET /v2/ -> 200, and
            HEAD/GET /v2/<name>/blobs/<digest> for the blobs it was told about, each with
            a behaviour (see MODES) and a pace (bytes per second, 0: as fast as it can).
            Anything else -> 404 with a registry error body.
  proxy     a reverse proxy to a real origin (--target URL) that relays every request
            and paces response bodies at --rate bytes per second, so that a test can
            catch a fetch in the middle.

Both count the requests they were sent, per "METHOD path" (the path with its query),
and write one line per request to stdout. A test scripts and reads them over HTTP, on
paths that nothing else uses:

  GET  /__fake/stats   {"requests": {"GET /v2/..": n}, "completed": {...}}
  POST /__fake/blob    {"digest", "path" (a file holding the blob's real bytes),
                        "mode", "rate", "delay"}: adds or changes a blob (registry role);
                        delay: seconds its GET waits before the answer begins
  POST /__fake/config  {"rate": bytes per second}: the proxy's pace
  POST /__fake/manifest {"repo", "ref", "path" (a file holding the manifest's bytes),
                        "media_type", "mode", "head", "rate", "hold"}: adds or changes
                        a manifest (registry role), served by GET and HEAD
                        /v2/<repo>/manifests/<ref> with its Content-Type and
                        Docker-Content-Digest

Faults (FAULTS below) break the response itself: a reset or a stall in the middle of
the body, a head that is not HTTP, a Content-Length that lies, a body without end, a
redirect to itself. A blob's GET takes its `mode` from MODES or FAULTS; its HEAD is
answered as `head` says ("honest", "unsized" or a fault; by default honest, or unsized
for the unsized modes). A manifest takes the same `mode` and `head` (both honest by
default). A stalled or endless response is held until the peer closes the connection,
or at most `hold` seconds (then the connection is reset).

Tests use the FakeUpstream class below (start, stop, set_blob, set_manifest, set_rate,
count), which runs this file as a process with the harness's Proc. Standard library only.
"""

import argparse
import hashlib
import http.client
import http.server
import json
import os
import re
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse

# How a blob's GET is answered (its HEAD always tells the true size and digest):
MODES = {
    "honest": "200, the right Content-Length and the right bytes",
    "short": "200 with the right Content-Length, half of the bytes, then the connection closes",
    "wrong": "200, the right length, one byte in the middle flipped",
    "wrong_last": "200, the right length, the last byte flipped",
    "long": "200, chunked (no Content-Length), the right bytes and 64 KiB more",
    "bad_length": "200, Content-Length 1000 more than the HEAD said, the right bytes and "
                  "1000 more",
    "missing": "404 BLOB_UNKNOWN for HEAD and GET",
    "unsized": "HEAD without Content-Length; GET chunked with the right bytes",
    "unsized_wrong": "HEAD without Content-Length; GET chunked, the last byte flipped",
}

# Faults of the response itself, for a blob's GET (mode) or HEAD (head), and for manifests.
FAULTS = {
    "reset_mid": "200 with the right Content-Length, half of the body, then a TCP reset "
                 "(HEAD: a reset instead of an answer)",
    "stall_mid": "200 with the right Content-Length, half of the body, then silence "
                 "(HEAD: silence)",
    "stall_head": "silence: the request is read and never answered",
    "stall_body": "200 with the right Content-Length, then silence before the first body "
                  "byte (HEAD: answered)",
    "hangup": "the connection is closed (FIN) without a byte of answer",
    "garbage_status": "a status line that is not HTTP, then the connection closes",
    "no_colon": "200 with a header line that has no colon, then the body",
    "huge_header": "200 with a 70 KiB header (the cache's limit is 64 KiB), then the body",
    "short_length": "Content-Length 1000 less than the body; the whole body is sent",
    "long_length": "Content-Length 1000 more than the body; the body, then the connection "
                   "closes",
    "endless": "200, chunked, bytes without end (HEAD: as `head` says; the body ends with "
               "a reset once `hold` seconds or ENDLESS_CAP bytes have passed)",
    "redirect_loop": "302 Found with Location: the same URL",
    "continue_forever": "100 Continue every 2 s and never a final answer (until `hold`)",
    "continue_flood": "20 interim responses (100 Continue, 102 Processing) in a row, then "
                      "the honest answer",
}
HEAD_MODES = ("honest", "unsized") + tuple(FAULTS)
HOLD = 120.0                   # seconds a stalled or endless response is held at most
ENDLESS_CAP = 2 << 30          # bytes an endless body sends at most
LENGTH_LIE = 1000              # bytes by which short_length/long_length lie
HUGE_HEADER = 70 * 1024

EXTRA = 64 * 1024
CHUNK = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
BLOB_PATH = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
MANIFEST_PATH = re.compile(r"^/v2/(.+)/manifests/([^/]+)$")


class _Dropped(Exception):
    """The response was cut off on purpose (reset, hang-up): nothing more to do."""


# --- The server (runs in its own process) --------------------------------------------

class State:
    def __init__(self, role, target, rate):
        self.role = role
        self.target = target
        self.rate = rate
        self.lock = threading.Lock()
        self.blobs = {}
        self.manifests = {}
        self.requests = {}
        self.completed = {}

    def note(self, table, key):
        with self.lock:
            table[key] = table.get(key, 0) + 1


class Pacer:
    """Keeps a body at `rate` bytes per second (0: no pacing)."""

    def __init__(self, rate):
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def sent_bytes(self, n):
        self.sent += n
        if self.rate > 0:
            ahead = self.start + self.sent / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1"
    state = None  # set by serve()

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))
        sys.stdout.flush()

    # --- helpers ---
    def _send_json(self, status, doc, extra=None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _error(self, status, code, message):
        self._send_json(status, {"errors": [{"code": code, "message": message}]})

    def _key(self):
        return "%s %s" % (self.command, self.path)

    # --- dispatch ---
    def _handle(self):
        st = self.state
        if self.path.startswith("/__fake/"):
            return self._control()
        key = self._key()
        st.note(st.requests, key)
        try:
            if st.role == "proxy":
                self._proxy()
            else:
                self._registry()
        except (BrokenPipeError, ConnectionResetError, socket.timeout, _Dropped):
            self.close_connection = True
            return
        st.note(st.completed, key)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _control(self):
        st = self.state
        if self.path == "/__fake/stats" and self.command == "GET":
            with st.lock:
                doc = {"requests": dict(st.requests), "completed": dict(st.completed)}
            return self._send_json(200, doc)
        if self.command == "POST" and self.path in ("/__fake/blob", "/__fake/config",
                                                    "/__fake/manifest"):
            try:
                doc = json.loads(self._read_body() or b"{}")
            except ValueError as e:
                return self._send_json(400, {"error": str(e)})
            problem = self._check_modes(doc)
            if problem:
                return self._send_json(400, {"error": problem})
            with st.lock:
                if self.path == "/__fake/manifest":
                    with open(doc["path"], "rb") as f:
                        data = f.read()
                    st.manifests[(doc["repo"], doc["ref"])] = {
                        "data": data, "media_type": doc.get("media_type") or
                        "application/vnd.oci.image.manifest.v1+json",
                        "mode": doc.get("mode", "honest"), "head": doc.get("head") or "honest",
                        "rate": float(doc.get("rate", 0)), "hold": float(doc.get("hold", HOLD))}
                elif self.path == "/__fake/config":
                    if "rate" in doc:
                        st.rate = float(doc["rate"])
                else:
                    mode = doc.get("mode", "honest")
                    size = os.path.getsize(doc["path"])
                    st.blobs[doc["digest"]] = {"path": doc["path"], "mode": mode,
                                               "rate": float(doc.get("rate", 0)), "size": size,
                                               "head": doc.get("head"),
                                               "hold": float(doc.get("hold", HOLD)),
                                               "delay": float(doc.get("delay", 0))}
            return self._send_json(200, {"ok": True})
        return self._send_json(404, {"error": "no such control path"})

    @staticmethod
    def _check_modes(doc):
        """Why the modes of a control document are not known, or None."""
        mode, head = doc.get("mode", "honest"), doc.get("head")
        if mode not in MODES and mode not in FAULTS:
            return "unknown mode %r" % mode
        if head is not None and head not in HEAD_MODES:
            return "unknown head mode %r" % head
        return None

    # --- registry role ---
    def _registry(self):
        st = self.state
        if self.command not in ("GET", "HEAD"):
            self._read_body()
            return self._error(405, "UNSUPPORTED", "the fake registry only serves pulls")
        path = urllib.parse.urlsplit(self.path).path
        if path == "/v2/" or path == "/v2":
            return self._send_json(200, {})
        mm = MANIFEST_PATH.match(path)
        if mm:
            with st.lock:
                manifest = st.manifests.get((mm.group(1), mm.group(2)))
            if manifest is not None:
                return self._manifest(manifest)
        m = BLOB_PATH.match(path)
        if not m:
            return self._error(404, "NAME_UNKNOWN", "the fake registry has only blobs")
        digest = m.group(2)
        with st.lock:
            blob = dict(st.blobs[digest]) if digest in st.blobs else None
        if blob is None or blob["mode"] == "missing":
            return self._error(404, "BLOB_UNKNOWN", "blob unknown to the fake registry")
        if self.command == "GET" and blob["delay"] > 0:
            time.sleep(blob["delay"])  # a slow origin: the response head comes late
        if blob["mode"] in FAULTS or blob["head"] is not None:
            return self._blob_with_faults(digest, blob)
        size, mode = blob["size"], blob["mode"]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        unsized = mode.startswith("unsized")
        if self.command == "HEAD":
            if not unsized:
                self.send_header("Content-Length", str(size))
            self.end_headers()
            return
        if mode == "long" or unsized:
            self.send_header("Transfer-Encoding", "chunked")
        elif mode == "bad_length":
            self.send_header("Content-Length", str(size + 1000))
        else:
            self.send_header("Content-Length", str(size))
        if mode == "short":
            self.send_header("Connection", "close")
        self.end_headers()
        self._blob_body(blob["path"], size, mode, blob["rate"])

    def _blob_body(self, path, size, mode, rate):
        limit = size // 2 if mode == "short" else size
        flip = {"wrong": size // 2, "wrong_last": size - 1, "unsized_wrong": size - 1}.get(mode)
        pacer = Pacer(rate)
        chunked = mode == "long" or mode.startswith("unsized")
        sent = 0
        with open(path, "rb") as f:
            while sent < limit:
                data = f.read(min(CHUNK if rate > 0 else 1 << 20, limit - sent))
                if not data:
                    break
                if flip is not None and sent <= flip < sent + len(data):
                    b = bytearray(data)
                    b[flip - sent] ^= 0xFF
                    data = bytes(b)
                self._write(data, chunked)
                sent += len(data)
                pacer.sent_bytes(len(data))
        if mode in ("long", "bad_length"):
            self._write(b"\x5a" * (EXTRA if mode == "long" else 1000), chunked)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        if mode == "short":
            # Content-Length promised `size`: closing here makes the body short.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _write(self, data, chunked):
        if chunked:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.wfile.write(data)

    # --- faults (registry role) ---
    def _blob_with_faults(self, digest, blob):
        """A blob whose GET is a fault, or whose HEAD is scripted (`head`)."""
        with open(blob["path"], "rb") as f:
            data = f.read()
        headers = [("Content-Type", "application/octet-stream"),
                   ("Docker-Content-Digest", digest)]
        if self.command == "HEAD":
            head = blob["head"] or ("unsized" if blob["mode"].startswith("unsized")
                                    else "honest")
            return self._answer(head, data, headers, 0, blob["hold"], head_only=True)
        mode = blob["mode"]
        if mode not in FAULTS:
            # A legacy mode with a scripted HEAD: the GET as before.
            self.send_response(200)
            for k, v in headers + [("Docker-Distribution-Api-Version", "registry/2.0")]:
                self.send_header(k, v)
            unsized = mode.startswith("unsized")
            if mode == "long" or unsized:
                self.send_header("Transfer-Encoding", "chunked")
            elif mode == "bad_length":
                self.send_header("Content-Length", str(blob["size"] + 1000))
            else:
                self.send_header("Content-Length", str(blob["size"]))
            if mode == "short":
                self.send_header("Connection", "close")
            self.end_headers()
            return self._blob_body(blob["path"], blob["size"], mode, blob["rate"])
        return self._answer(mode, data, headers, blob["rate"], blob["hold"])

    def _manifest(self, manifest):
        data = manifest["data"]
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        headers = [("Content-Type", manifest["media_type"]), ("Docker-Content-Digest", digest)]
        if self.command == "HEAD":
            return self._answer(manifest["head"], data, headers, 0, manifest["hold"],
                                head_only=True)
        return self._answer(manifest["mode"], data, headers, manifest["rate"], manifest["hold"])

    def _answer(self, mode, data, headers, rate, hold, head_only=False):
        """Answers with `data` as the body (none for HEAD), as `mode` (honest, unsized or
        a FAULTS entry) says, paced at `rate` bytes per second."""
        size = len(data)
        self.log_message('"%s" answered as %s', self.requestline, mode)
        if mode == "stall_head" or (head_only and mode == "stall_mid"):
            return self._hold(hold)
        if mode == "hangup" or (head_only and mode == "reset_mid"):
            return self._drop(reset=(mode == "reset_mid"))
        if mode == "garbage_status":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2p1 not-http\r\n\r\n")
            return self._drop(reset=False)
        if mode == "continue_forever":
            return self._continue_forever(hold)
        if mode == "continue_flood":
            for i in range(20):
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" if i % 2 == 0
                                 else b"HTTP/1.1 102 Processing\r\n\r\n")
            mode = "honest"
        if mode == "redirect_loop":
            head = ("HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
                    "Docker-Distribution-Api-Version: registry/2.0\r\n\r\n" % self.path)
            self.wfile.write(head.encode("latin-1"))
            return
        lines = ["HTTP/1.1 200 OK", "Docker-Distribution-Api-Version: registry/2.0"]
        lines += ["%s: %s" % kv for kv in headers]
        length = {"short_length": size - LENGTH_LIE, "long_length": size + LENGTH_LIE,
                  "unsized": None, "endless": None}.get(mode, size)
        if mode == "endless" and not head_only:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None:
            lines.append("Content-Length: %d" % length)
        if mode == "no_colon":
            lines.append("This-Header-Line-Has-No-Colon")
        if mode == "huge_header":
            lines.append("X-Huge: " + "h" * HUGE_HEADER)
        if mode == "long_length":
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if head_only:
            return
        pacer = Pacer(rate)
        if mode == "endless":
            return self._endless(data, pacer, hold)
        cut = {"reset_mid": size // 2, "stall_mid": size // 2, "stall_body": 0}.get(mode, size)
        sent = 0
        while sent < cut:
            piece = data[sent:min(cut, sent + (CHUNK if rate > 0 else 1 << 20))]
            self.wfile.write(piece)
            sent += len(piece)
            pacer.sent_bytes(len(piece))
        if mode == "reset_mid":
            time.sleep(0.3)  # let the half arrive before the reset
            return self._drop(reset=True)
        if mode in ("stall_mid", "stall_body"):
            return self._hold(hold)
        if mode == "long_length":
            return self._drop(reset=False)
        if mode == "short_length":
            self.close_connection = True  # the extra bytes poison the connection

    def _endless(self, data, pacer, hold):
        """Chunks of the blob's bytes, over and over, until the peer goes, `hold` seconds
        pass or ENDLESS_CAP bytes were sent: then a reset (the body never ends)."""
        start = time.monotonic()
        sent = 0
        piece = (data * (CHUNK // max(1, len(data)) + 1))[:CHUNK] if data else b"e" * CHUNK
        while sent < ENDLESS_CAP and time.monotonic() - start < hold:
            self._write(piece, chunked=True)
            sent += len(piece)
            pacer.sent_bytes(len(piece))
        self._drop(reset=True)

    def _continue_forever(self, hold):
        """An interim response every 2 s (within any no-progress timeout a test sets), never
        a final one, until the peer goes or `hold` seconds pass; then a reset."""
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            try:
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.wfile.flush()
            except OSError:
                break
            time.sleep(2.0)
        self._drop(reset=True)

    def _hold(self, hold):
        """Sends nothing more until the peer closes the connection or `hold` seconds
        pass; then resets it."""
        deadline = time.monotonic() + hold
        sock = self.connection
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                try:
                    if not sock.recv(65536):
                        break  # the peer closed
                except OSError:
                    break
        self._drop(reset=True)

    def _drop(self, reset):
        """Ends the connection now: a reset (RST) or a plain close (FIN)."""
        self.close_connection = True
        sock = self.connection
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if reset:
            # Close the descriptor itself (the handler's files still refer to the socket
            # object, which would keep it open).
            try:
                os.close(sock.detach())
            except OSError:
                pass
        raise _Dropped()

    # --- proxy role ---
    def _proxy(self):
        st = self.state
        body = self._read_body()
        target = urllib.parse.urlsplit(st.target)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            self.send_response(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            if self.command == "HEAD":
                cl = r.getheader("Content-Length")
                if cl is not None:
                    self.send_header("Content-Length", cl)
                self.end_headers()
                return
            cl = r.getheader("Content-Length")
            if cl is None:
                data = r.read()  # small (error bodies): relay it with a length
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Length", cl)
            self.end_headers()
            pacer = Pacer(st.rate)
            while True:
                with st.lock:
                    pacer.rate = st.rate
                data = r.read(CHUNK if pacer.rate > 0 else 1 << 20)
                if not data:
                    break
                self.wfile.write(data)
                pacer.sent_bytes(len(data))
            self.wfile.flush()
        finally:
            conn.close()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def serve(argv):
    ap = argparse.ArgumentParser(description="fake upstream for the content-cache e2e tests")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--role", choices=("registry", "proxy"), default="registry")
    ap.add_argument("--target", help="the origin's base URL (proxy role)")
    ap.add_argument("--rate", type=float, default=0.0, help="bytes per second (proxy role)")
    args = ap.parse_args(argv)
    if args.role == "proxy" and not args.target:
        ap.error("--target is required for the proxy role")
    Handler.state = State(args.role, args.target, args.rate)
    server = Server(("127.0.0.1", args.port), Handler)
    print("fake upstream (%s) listening on 127.0.0.1:%d" % (args.role, args.port), flush=True)
    server.serve_forever()


# --- The test side ------------------------------------------------------------------

class FakeUpstream:
    """A fake upstream process of the test's own (see the module's doc).

        fake = FakeUpstream(run.work, role="registry").start()
        fake.set_blob(digest, path, mode="short", rate=4e6)
        ... fake.count("GET", "/v2/x/blobs/" + digest) ...
        fake.stop()

    Started with the harness's Proc (PR_SET_PDEATHSIG, stopped by PID at exit), on a
    free port, or on a given port (to come back where a cache expects it)."""

    def __init__(self, work, name="fake", role="registry", target=None, rate=0):
        self.work = work
        self.name = name
        self.role = role
        self.target = target.url if hasattr(target, "url") else target
        self.rate = rate
        self.log_path = work.sub(name + ".log")
        self.port = None
        self.proc = None

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://" + self.host

    def _make(self, port):
        import harness as h
        argv = [sys.executable, os.path.abspath(__file__), "--port", str(port),
                "--role", self.role, "--rate", str(self.rate)]
        if self.target:
            argv += ["--target", self.target]
        return h.Proc(self.name, argv, self.log_path, env=h.server_env())

    def _ready(self, port, proc):
        import harness as h
        try:
            return h.request(port, "GET", "/__fake/stats", timeout=2).status == 200
        except OSError:
            return False

    def start(self, port=None):
        """Starts on a free port, or on `port` (which must be free)."""
        import harness as h
        if port is None:
            self.port, self.proc = h._start_server(self._make, self._ready, self.name)
        else:
            proc = self._make(port).start()
            try:
                h.wait_until(lambda: self._ready(port, proc) or not proc.alive(),
                             h.START_TIMEOUT, "%s to answer on port %d" % (self.name, port))
            except h.WaitTimeout:
                proc.stop()
                raise
            if not proc.alive():
                proc.stop()
                raise h.ServerStartError("%s exited during start on port %d:\n%s"
                                         % (self.name, port, h.tail(self.log_path)))
            self.port, self.proc = port, proc
        h.log("%s: fake upstream (%s) pid %d on %s" % (self.name, self.role, self.proc.pid,
                                                      self.url))
        return self

    def stop(self):
        return self.proc.stop() if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def _post(self, path, doc):
        import harness as h
        r = h.request(self.port, "POST", path, body=json.dumps(doc).encode(),
                      headers={"Content-Type": "application/json"})
        if r.status != 200:
            raise AssertionError("%s: POST %s %r -> %r" % (self.name, path, doc, r))

    def set_blob(self, digest, path, mode="honest", rate=0, head=None, hold=None, delay=None):
        """Serves the bytes in file `path` as blob `digest` (any repository), answering
        its GET as MODES[mode] or FAULTS[mode] says, paced at `rate` bytes per second
        (0: unpaced). head: how its HEAD is answered ("honest", "unsized" or a FAULTS
        entry; None: honest, or unsized for the unsized modes). hold: seconds a stalled
        or endless response lasts at most (default HOLD). delay: seconds each GET waits
        before its answer begins (None: none)."""
        doc = {"digest": digest, "path": path, "mode": mode, "rate": rate}
        if delay is not None:
            doc["delay"] = delay
        if head is not None:
            doc["head"] = head
        if hold is not None:
            doc["hold"] = hold
        self._post("/__fake/blob", doc)

    def set_manifest(self, repo, ref, path, media_type=None, mode="honest", head="honest",
                     rate=0, hold=None):
        """Serves the bytes in file `path` as the manifest repo:ref (GET and HEAD, with
        its Content-Type and Docker-Content-Digest), the GET as `mode` ("honest" or a
        FAULTS entry) and the HEAD as `head` say."""
        doc = {"repo": repo, "ref": ref, "path": path, "media_type": media_type,
               "mode": mode, "head": head, "rate": rate}
        if hold is not None:
            doc["hold"] = hold
        self._post("/__fake/manifest", doc)

    def set_rate(self, rate):
        """The proxy's pace for response bodies from now on, also for bodies in flight."""
        self._post("/__fake/config", {"rate": rate})

    def stats(self):
        import harness as h
        return h.request(self.port, "GET", "/__fake/stats").json()

    def count(self, method, path, completed=False):
        """How many `method` requests for `path` (exactly, query included) arrived
        (or, with completed, were answered to the end)."""
        table = self.stats()["completed" if completed else "requests"]
        return table.get("%s %s" % (method, path), 0)


if __name__ == "__main__":
    serve(sys.argv[1:])
