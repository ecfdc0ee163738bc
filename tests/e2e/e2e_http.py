"""HTTP for the e2e tests (re-exported by harness.py): single requests with http.client,
and RawConnection for pipelining, oversized headers and connection handling."""

import base64
import hashlib
import http.client
import json
import socket
import time

from e2e_base import HTTP_TIMEOUT

__all__ = [
    "Response", "request", "basic_auth", "RawConnection", "Body", "get_body",
]


# --- HTTP -------------------------------------------------------------------------------

class Response:
    """An HTTP response: status, reason, headers (list of (name, value)), body bytes."""

    def __init__(self, status, reason, headers, body, version=11):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.version = version

    def header(self, name, default=None):
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def header_all(self, name):
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def error_codes(self):
        """The `code` of each registry error in the body; [] if it is not one."""
        try:
            doc = self.json()
            return [e.get("code") for e in doc.get("errors", [])]
        except (ValueError, AttributeError, UnicodeDecodeError):
            return []

    def __repr__(self):
        body = self.body[:200]
        return "<Response %d %s headers=%r body=%r%s>" % (
            self.status, self.reason, self.headers, body,
            "..." if len(self.body) > 200 else "")


def _from_httpresponse(r, body):
    return Response(r.status, r.reason, list(r.getheaders()), body, r.version)


def request(port, method, path, headers=None, body=None, host="127.0.0.1",
            timeout=HTTP_TIMEOUT):
    """One request on a new connection (http.client); the path is sent as given, not
    normalized. Returns a Response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return _from_httpresponse(r, data)
    finally:
        conn.close()


def basic_auth(user, password):
    """The value of an Authorization header for HTTP Basic auth."""
    token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    return "Basic " + token


class _NoCloseReader:
    """Lends a shared buffered reader to http.client.HTTPResponse without letting it
    close the reader, so that several responses can be read from one connection."""

    def __init__(self, fp):
        self._fp = fp

    def close(self):
        pass

    def __getattr__(self, name):
        return getattr(self._fp, name)


class _FakeSock:
    def __init__(self, fp):
        self._fp = fp

    def makefile(self, mode, *args, **kwargs):
        return _NoCloseReader(self._fp)


class RawConnection:
    """A raw TCP connection for what http.client does not do: pipelining, oversized or
    malformed requests, checking that the server keeps or closes the connection.

        c = RawConnection(port)
        c.send(b"GET /v2/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" * 2)
        r1 = c.read_response(); r2 = c.read_response()
    """

    def __init__(self, port, host="127.0.0.1", timeout=HTTP_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.fp = self.sock.makefile("rb")

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def send_request(self, method, path, headers=None, body=b"", host="127.0.0.1"):
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        if body:
            lines.append("Content-Length: %d" % len(body))
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def read_response(self, method="GET"):
        """Reads exactly one response (http.client's parser on the shared buffer)."""
        r = http.client.HTTPResponse(_FakeSock(self.fp), method=method)
        r.begin()
        data = r.read()
        return _from_httpresponse(r, data)

    def closed_by_peer(self, timeout=HTTP_TIMEOUT):
        """True if the server closes the connection (EOF) within timeout with no more
        bytes; False if it stays open that long. Extra bytes raise AssertionError."""
        self.sock.settimeout(timeout)
        try:
            data = self.fp.read1(1)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        if data:
            raise AssertionError("unexpected bytes after the response: %r" % data)
        return True

    def close(self):
        try:
            self.fp.close()
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --- Big bodies, streamed and hashed ---------------------------------------------------

class Body:
    """What get_body read: status, reason, headers (list of (name, value)),
    content_length (None when the response had none), received (bytes of body that
    arrived), sha256 ("sha256:<hex>" of those bytes), data (the bytes, when kept),
    complete (the whole announced body arrived and the response ended normally),
    error (why reading stopped early, else None), and times from the start of the
    request: t_first_byte (first body byte, None if none) and t_end."""

    def __init__(self):
        self.status = None
        self.reason = None
        self.headers = []
        self.content_length = None
        self.received = 0
        self.sha256 = None
        self.data = None
        self.complete = False
        self.error = None
        self.t_first_byte = None
        self.t_end = None
        self.started = None  # time.monotonic() when the request was sent

    def header(self, name, default=None):
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def error_codes(self):
        try:
            doc = json.loads((self.data or b"").decode("utf-8"))
            return [e.get("code") for e in doc.get("errors", [])]
        except (ValueError, AttributeError, UnicodeDecodeError):
            return []

    def complete_wrong_200(self, digest):
        """True for the one outcome a cache must never produce: a complete 200 whose
        bytes do not hash to `digest`."""
        return self.status == 200 and self.complete and self.sha256 != digest

    def __repr__(self):
        return ("<Body status=%s length=%s received=%d complete=%s sha256=%s error=%r "
                "first_byte=%s end=%s>" % (
                    self.status, self.content_length, self.received, self.complete,
                    (self.sha256 or "")[:19], self.error,
                    None if self.t_first_byte is None else "%.3f" % self.t_first_byte,
                    None if self.t_end is None else "%.3f" % self.t_end))


def get_body(port, path, method="GET", headers=None, host="127.0.0.1", timeout=HTTP_TIMEOUT,
             keep=False, keep_small=65536, chunk=1 << 20, on_first_byte=None, http10=False):
    """One request on a new connection; the body is read as it arrives (whatever one
    recv gives, up to `chunk`) and hashed, so a 200 MB blob costs no memory. Never
    raises for what the server does (an early close, a reset, a stall past `timeout`):
    it is recorded in Body.error and Body.complete says whether the announced body
    arrived whole. The body is kept in Body.data when `keep`, or when it is at most
    `keep_small` bytes (error bodies). on_first_byte(body), if given, is called as soon
    as the first bytes of the body have arrived (e.g. to look at the server's state at
    that moment). http10 sends the request as HTTP/1.0 (a body of unknown length then ends
    with the connection, and counts as complete)."""
    b = Body()
    h = hashlib.sha256()
    kept = []
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    if http10:
        conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    b.started = time.monotonic()
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        b.status, b.reason = r.status, r.reason
        b.headers = list(r.getheaders())
        cl = r.getheader("Content-Length")
        b.content_length = int(cl) if cl is not None and cl.isdigit() else None
        while True:
            data = r.read1(chunk) if method != "HEAD" else b""
            if not data:
                break
            if b.t_first_byte is None:
                b.t_first_byte = time.monotonic() - b.started
                if on_first_byte is not None:
                    on_first_byte(b)
            b.received += len(data)
            h.update(data)
            if keep or b.received <= keep_small:
                kept.append(data)
        if method == "HEAD":
            b.complete = True
        elif b.content_length is not None:
            b.complete = b.received == b.content_length
            if not b.complete:
                b.error = "connection closed after %d of %d bytes" % (b.received,
                                                                       b.content_length)
        else:
            b.complete = True  # chunked: its last chunk arrived (else IncompleteRead)
    except (http.client.HTTPException, OSError) as e:
        b.error = "%s: %s" % (type(e).__name__, e)
        if isinstance(e, http.client.IncompleteRead) and e.partial:
            b.received += len(e.partial)
            h.update(e.partial)
        b.complete = False
    finally:
        conn.close()
    b.t_end = time.monotonic() - b.started
    b.sha256 = "sha256:" + h.hexdigest()
    if keep or b.received <= keep_small:
        b.data = b"".join(kept)
    return b
