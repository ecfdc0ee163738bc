"""HTTP for the e2e tests (re-exported by harness.py): single requests with http.client,
and RawConnection for pipelining, oversized headers and connection handling."""

import base64
import http.client
import json
import socket

from e2e_base import HTTP_TIMEOUT

__all__ = [
    "Response", "request", "basic_auth", "RawConnection",
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
