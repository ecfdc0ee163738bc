"""TLS helpers of the e2e tests: a private PKI made with openssl at test time, an
HTTPS origin (docker-registry with http.tls), and an HTTPS GET that verifies."""

import http.client
import os
import ssl
import subprocess

import harness as h


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_pki(d):
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it; and an
    unrelated CA. Returns the paths."""
    os.makedirs(d, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj",
            "/CN=content-cache e2e CA", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "other.key", "-out", "other-ca.pem", "-days", "2", "-subj",
            "/CN=someone else's CA", cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "issuer.key", "-out", "issuer.pem", "-days", "2", "-subj",
            "/CN=token issuer", cwd=d)
    return {k: os.path.join(d, v) for k, v in
            {"ca": "ca.pem", "cert": "server.pem", "key": "server.key",
             "other_ca": "other-ca.pem", "issuer": "issuer.pem"}.items()}


class TlsOrigin(h.Origin):
    """docker-registry serving HTTPS with the test's certificate."""

    def __init__(self, work, pki):
        self.pki = pki
        super().__init__(work, name="tls-origin")

    @property
    def url(self):
        return "https://" + self.host

    def config_text(self, port):
        text = super().config_text(port)
        return text.replace("  secret:", "  tls:\n    certificate: %s\n    key: %s\n  secret:"
                            % (self.pki["cert"], self.pki["key"]), 1)

    def start(self):
        def make(port):
            with open(self.config_path, "w") as f:
                f.write(self.config_text(port))
            return h.Proc(self.name, ["docker-registry", "serve", self.config_path],
                          self.log_path, env=h.server_env())

        def ready(port, proc):
            try:
                return https_get(port, "/v2/", self.pki["ca"], timeout=2)[0] in (200, 401)
            except (OSError, ssl.SSLError):
                return False

        self.port, self.proc = h._start_server(make, ready, self.name)
        h.log("%s: docker-registry (https) pid %d on %s" % (self.name, self.proc.pid, self.url))
        return self


def https_get(port, path, cafile, method="GET", timeout=10):
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read(), dict((k.lower(), v) for k, v in r.getheaders())
    finally:
        conn.close()
