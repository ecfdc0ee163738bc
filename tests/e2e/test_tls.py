"""End-to-end: TLS on both sides of the cache, with a private CA made at test time.

- The origin (docker-registry) serves HTTPS with a certificate of the test's CA. A cache
  with `cas: [ca.pem]` pulls through it; a cache without it fails fast with a 502 whose
  message and log name the CA problem (never a hang, never plain HTTP).
- The cache serves HTTPS (`http.tls.certificate`, `http.tls.key`): skopeo, trusting the
  test CA and verifying, pulls an image through it byte for byte; a plain-HTTP client
  gets a clear 400; `minimumtls: tls1.3` (not in this mbedTLS) is refused at start.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_tls.py
"""

import http.client
import os
import selectors
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from e2e_tls import TlsOrigin, https_get, make_pki  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "tls/app"


def body(run):
    work = run.work
    pki = make_pki(work.sub("pki"))
    origin = TlsOrigin(work, pki)
    run.origins.append(origin)
    origin.start()
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([5000, 400_000], seed=9),
                              tag="v1")
    h.push(work, image, origin, REPO, "v1")
    blob, blob_size, blob_bytes = image.layers[-1]

    cas_yaml = "        cas:\n          - %s\n" % pki["ca"]
    with_ca = run.cache([origin.url], name="with-ca", extra_downstream_yaml=cas_yaml)

    def pull_through_https_origin():
        r = h.request(with_ca.port, "GET", "/v2/%s/blobs/%s" % (REPO, blob))
        h.expect_status(r, 200)
        expect_eq(h.sha256_digest(r.body), blob, "digest of the blob fetched over TLS")
        out = work.sub("pull-with-ca")
        h.pull(work, with_ca, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "skopeo pull through the cache")

    run.check("cache with cas pulls from the HTTPS origin", pull_through_https_origin)

    without_ca = run.cache([origin.url], name="without-ca")

    def unknown_ca_fails_fast():
        t0 = time.monotonic()
        r = h.request(without_ca.port, "GET", "/v2/%s/blobs/%s" % (REPO, blob))
        took = time.monotonic() - t0
        expect(r.status in (502, 503), "expected 502/503 without the CA, got %r" % r)
        expect(took < 5, "the failure took %.1fs" % took)
        text = r.body.decode(errors="replace")
        expect("unknown authority" in text or "certificate" in text,
               "the error does not name the CA problem: " + text)
        h.wait_until(lambda: "unknown authority" in open(without_ca.stderr_path).read(), 10,
                     "a log line naming the CA problem")
        expect_eq(origin.count_blob_gets(blob, status=None), 1,
                  "origin blob GETs (only the one from the cache with cas)")

    run.check("cache without the CA: 502 at once, naming the CA problem", unknown_ca_fails_fast)

    tls_yaml = ("http:\n  tls:\n    certificate: %s\n    key: %s\n" % (pki["cert"], pki["key"]))

    class HttpsCache(h.Cache):
        @property
        def url(self):
            return "https://" + self.host

        def config_text(self, port):
            text = super().config_text(port)
            return text.replace("  addr: 127.0.0.1:%d\n" % port,
                                "  addr: 127.0.0.1:%d\n  tls:\n    certificate: %s\n"
                                "    key: %s\n" % (port, pki["cert"], pki["key"]), 1)

    https_cache = HttpsCache(work, [origin.url], name="https-cache",
                             extra_downstream_yaml=cas_yaml)
    run.caches.append(https_cache)
    https_cache.start()

    def serve_https():
        status, data, hdrs = https_get(https_cache.port, "/v2/%s/blobs/%s" % (REPO, blob),
                                       pki["ca"])
        expect_eq(status, 200, "status over https")
        expect_eq(h.sha256_digest(data), blob, "digest over https")
        expect_eq(hdrs.get("content-length"), str(blob_size), "Content-Length over https")
        # The same again: a hit, read through the TLS session in chunks. The commit goes on
        # behind the first response, so wait for the file (else the GET joins the fetch).
        h.wait_until(lambda: os.path.exists(https_cache.blob_file(blob)), 10,
                     "the blob on the https cache's disk")
        status, data, _ = https_get(https_cache.port, "/v2/%s/blobs/%s" % (REPO, blob),
                                    pki["ca"])
        expect_eq((status, h.sha256_digest(data)), (200, blob), "hit over https")
        h.wait_until(lambda: https_cache.count_access(method="GET", cache="hit") >= 1, 10,
                     "a hit in the https cache's access log")
        certdir = work.sub("skopeo-certs", mkdir=True)
        with open(pki["ca"]) as src, open(os.path.join(certdir, "ca.crt"), "w") as dst:
            dst.write(src.read())
        out = work.sub("pull-https-cache")
        os.makedirs(out, exist_ok=True)
        h.skopeo(work, ["copy", "--src-tls-verify=true", "--src-cert-dir", certdir,
                        "docker://%s/%s:v1" % (https_cache.host, REPO), "dir:%s" % out])
        expect_eq(h.verify_pulled(out, image), [], "skopeo pull from the HTTPS cache")

    run.check("the cache serves HTTPS: curl-style client and skopeo (verifying) pull",
              serve_https)

    def plain_http_to_https_port():
        with socket.create_connection(("127.0.0.1", https_cache.port), timeout=10) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        expect(data.startswith(b"HTTP/1.1 400"), "plain HTTP to the https port got %r" % data[:80])
        expect(b"https" in data, "the answer does not say to use https: %r" % data)

    run.check("plain HTTP to the HTTPS port: 400 saying so, then close", plain_http_to_https_port)

    def s_client(*args):
        """openssl s_client against the https cache: what it printed (stdout and stderr)."""
        cp = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % https_cache.port,
                             "-CAfile", pki["ca"]] + list(args), input=b"",
                            capture_output=True, timeout=20 * h.SCALE)
        return (cp.stdout + cp.stderr).decode("utf-8", "replace")

    def offers_aead_only():
        out = s_client("-tls1_2")
        expect("Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in out,
               "the default suite is not ChaCha20-Poly1305:\n" + out[-800:])
        for suite in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                      "ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-CAMELLIA128-SHA256"):
            out = s_client("-tls1_2", "-cipher", suite + ":@SECLEVEL=0")
            expect("Cipher is (NONE)" in out and "alert handshake failure" in out,
                   "%s was accepted, or refused without the alert:\n%s" % (suite, out[-800:]))

    run.check("https: ECDHE with AEAD only, ChaCha20-Poly1305 first; a CBC, CCM or CAMELLIA "
              "suite is refused with a handshake_failure alert", offers_aead_only)

    def alert_before_close():
        out = s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        expect("alert protocol version" in out,
               "a TLS 1.1 client did not get the protocol_version alert:\n" + out[-800:])
        expect("unexpected eof" not in out, "the connection ended without the alert")

    run.check("https: a refused handshake sends its alert (protocol_version) before closing",
              alert_before_close)

    def resumption():
        sess = work.sub("tls-session.pem")
        first = s_client("-tls1_2", "-sess_out", sess)
        expect("New, TLSv1.2" in first, "first handshake:\n" + first[-600:])
        again = s_client("-tls1_2", "-sess_in", sess)
        expect("Reused, TLSv1.2" in again, "the session was not resumed:\n" + again[-600:])

    run.check("https: a returning client resumes its session (session ticket)", resumption)

    def failures_throttled():
        before = len([ln for ln in h.read_lines(https_cache.stderr_path) if "TLS with" in ln])
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", https_cache.port), timeout=10) as s:
                s.sendall(b"\x16\x03\x01\x00\x05junk!")  # a handshake record of nonsense
                s.settimeout(10)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
        lines = [ln for ln in h.read_lines(https_cache.stderr_path) if "TLS with" in ln][before:]
        h.log("  30 failed handshakes: %d log line(s)" % len(lines))
        expect(len(lines) <= 1, "failed handshakes are not rate-limited: %d lines for 30:\n%s"
               % (len(lines), "\n".join(lines[:5])))

    run.check("https: failed handshakes are logged at a rate limit (30 in a burst: at most one "
              "line)", failures_throttled)

    def pending_handshakes_bounded():
        # 1024 connections may wait in their handshake (each holds ~35 KiB of session); a
        # connection past that is closed at once, and the log says why.
        socks, closed = [], set()
        try:
            for _ in range(1100):
                socks.append(socket.create_connection(("127.0.0.1", https_cache.port), timeout=10))
            # Closed at accept means at once: well before the 10 s header timeout would.
            deadline = time.monotonic() + 3.0 * h.SCALE
            with selectors.DefaultSelector() as sel:  # epoll: more than FD_SETSIZE sockets
                for s in socks:
                    sel.register(s, selectors.EVENT_READ)
                while time.monotonic() < deadline and len(closed) < len(socks) - 1024:
                    for key, _ in sel.select(0.2):
                        try:
                            gone = key.fileobj.recv(1) == b""
                        except OSError:
                            gone = True
                        if gone:
                            closed.add(key.fileobj)
                            sel.unregister(key.fileobj)
        finally:
            for s in socks:
                s.close()
        h.log("  1100 silent TLS connections: %d closed at accept" % len(closed))
        expect(len(closed) == 76, "%d of 1100 silent connections were closed at once; 76 "
               "(those past 1024 pending handshakes) should be" % len(closed))
        h.wait_until(lambda: [ln for ln in h.read_lines(https_cache.stderr_path)
                              if "TLS handshakes pending" in ln], h.LOG_TIMEOUT,
                     "the log line about pending handshakes")
        status, _, _ = https_get(https_cache.port, "/v2/", pki["ca"])
        expect(status in (200, 401, 502, 503), "a new client after them: %r" % status)

    run.check("https: at most 1024 pending TLS handshakes; more connections are closed at "
              "accept, logged", pending_handshakes_bounded)

    def tls13_refused():
        c = HttpsCache(work, [origin.url], name="tls13")
        path = c.write_config()
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("    key: %s\n" % pki["key"],
                                 "    key: %s\n    minimumtls: tls1.3\n" % pki["key"], 1))
        p = subprocess.run([h.binary_path(), path], capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        expect_eq(p.returncode, 1, "exit code with minimumtls tls1.3 (stderr: %s)" % p.stderr)
        expect("tls1.3" in p.stderr, "the error does not name tls1.3: " + p.stderr)

    run.check("minimumtls tls1.3 is refused at start with a clear error", tls13_refused)


if __name__ == "__main__":
    h.main("test_tls", body)
