"""A token server for the e2e tests: Docker Distribution's `auth.token` protocol.

Two uses:

* As a program (a process of the test, stopped by its PID):

      python3 token_server.py --port P --key KEY.pem [--cert CERT.pem --x5c]
          --issuer ISS --service SVC --users USERS.json --issued ISSUED.txt [--lifetime S]

  It answers `GET /token?service=SVC&scope=repository:NAME:ACTIONS[&scope=...]`, with
  optional HTTP Basic credentials, with {"token": "<JWT>", "expires_in": 300}. USERS.json
  is {"user": {"password": "...", "grants": {"repo/name": ["pull", "push"]}}}; a user gets
  for each requested scope only the actions that its grants allow, an anonymous client
  (no Authorization) gets a token that grants nothing, wrong credentials get 401. Every
  token issued is appended, one per line, to ISSUED.txt (so a test can look for them
  where they must not be). Tokens are RS256 (or ES256 for an EC key) JWTs whose header
  names the key by its libtrust `kid`, or carries `x5c` (the certificate) with --x5c.

* As a module, for the test itself: make_key_and_cert() writes a key and a self-signed
  certificate made at test time, libtrust_kid() computes a key's ID as Docker
  Distribution does, and sign_jwt() mints a token with any claims (expired ones, or
  ones signed with the wrong key).

Python standard library plus python3-cryptography (Debian's package).
"""

import argparse
import base64
import datetime
import hashlib
import http.server
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

TOKEN_LIFETIME = 300


# --- Keys, certificates, key IDs --------------------------------------------------------

def make_key_and_cert(directory, name, kind="rsa", common_name=None):
    """Writes <name>.key (PKCS#8 PEM) and <name>.pem (a self-signed certificate, CA:TRUE,
    valid from an hour ago for two days) into `directory`. kind: "rsa" (2048 bits) or
    "ec" (P-256). Returns (key_path, cert_path)."""
    os.makedirs(directory, exist_ok=True)
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError("kind must be rsa or ec")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            common_name or "content-cache e2e %s" % name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    key_path = os.path.join(directory, name + ".key")
    cert_path = os.path.join(directory, name + ".pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def load_cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def libtrust_kid(public_key):
    """The libtrust key ID of a public key: base32 (no padding) of the first 240 bits of
    the SHA-256 of its DER SubjectPublicKeyInfo, in 4-character groups joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


# --- JWTs -------------------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(doc):
    return b64url(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())


def sign_jwt(key, claims, kid=None, x5c_certs=None, alg=None, header_extra=None):
    """A compact JWS over `claims`, signed with `key` (RSA: RS256, EC P-256: ES256, unless
    `alg` says otherwise; "none" gives an unsigned token). kid: the header's kid (a
    string; True for the key's own libtrust ID). x5c_certs: certificates (leaf first) to
    put in the header's x5c."""
    if alg is None:
        alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    header = {"typ": "JWT", "alg": alg}
    if kid is True:
        kid = libtrust_kid(key.public_key())
    if kid:
        header["kid"] = kid
    if x5c_certs:
        header["x5c"] = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                         for c in x5c_certs]
    header.update(header_extra or {})
    signing_input = (_json_b64(header) + "." + _json_b64(claims)).encode()
    if alg == "none":
        return signing_input.decode() + "."
    if alg == "RS256":
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        raise ValueError("unsupported alg %s" % alg)
    return signing_input.decode() + "." + b64url(sig)


def claims_for(issuer, service, subject, access, now=None, lifetime=TOKEN_LIFETIME):
    """The standard claims of a token issued `now` (Unix seconds) for `lifetime` seconds."""
    now = int(time.time()) if now is None else int(now)
    return {"iss": issuer, "sub": subject, "aud": service, "exp": now + lifetime,
            "nbf": now - 1, "iat": now, "jti": secrets.token_hex(16), "access": access}


def parse_scope(scope):
    """"repository:alice/app:pull,push" -> ("repository", "alice/app", ["pull", "push"]),
    or None when it is not of that form."""
    typ, sep, rest = scope.partition(":")
    if not sep:
        return None
    name, sep, actions = rest.rpartition(":")
    if not sep or not name:
        return None
    return typ, name, [a for a in actions.split(",") if a]


def grant(users, user, scopes):
    """The access claim for `user` (None: anonymous) asking for `scopes` (strings): for
    each repository scope, the requested actions that the user's grants allow; entries
    that would grant nothing are left out."""
    allowed = (users.get(user) or {}).get("grants", {}) if user else {}
    access = []
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None or parsed[0] != "repository":
            continue
        _, name, actions = parsed
        may = allowed.get(name, [])
        got = [a for a in actions if a in may or "*" in may]
        if got:
            access.append({"type": "repository", "name": name, "actions": got})
    return access


# --- The server -------------------------------------------------------------------------

class TokenServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, key, kid, x5c_certs, issuer, service, users, issued_path,
                 lifetime=TOKEN_LIFETIME):
        super().__init__(addr, Handler)
        self.lifetime = lifetime
        self.key = key
        self.kid = kid
        self.x5c_certs = x5c_certs
        self.issuer = issuer
        self.service = service
        self.users = users
        self.issued_path = issued_path
        self.lock = threading.Lock()

    def issue(self, user, scopes):
        claims = claims_for(self.issuer, self.service, user or "", grant(self.users, user, scopes),
                            lifetime=self.lifetime)
        token = sign_jwt(self.key, claims, kid=self.kid, x5c_certs=self.x5c_certs)
        with self.lock, open(self.issued_path, "a") as f:
            f.write(token + "\n")
        return token


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-token-server"

    def log_message(self, fmt, *args):
        # The request line only (it holds no secret: the credentials are in a header).
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def _send(self, status, doc, headers=()):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _user(self):
        """(ok, user): user None for an anonymous client; ok False for bad credentials."""
        value = self.headers.get("Authorization")
        if value is None:
            return True, None
        scheme, _, param = value.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            decoded = base64.b64decode(param.strip(), validate=True).decode()
            user, sep, password = decoded.partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        entry = self.server.users.get(user)
        if not sep or entry is None or not secrets.compare_digest(entry["password"], password):
            return False, None
        return True, user

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]})
            return
        query = urllib.parse.parse_qs(url.query)
        service = query.get("service", [None])[0]
        if service is not None and service != self.server.service:
            self._send(400, {"errors": [{"code": "UNSUPPORTED",
                                         "message": "unknown service %s" % service}]})
            return
        ok, user = self._user()
        if not ok:
            self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                       [("WWW-Authenticate", 'Basic realm="e2e-token-server"')])
            return
        scopes = []
        for s in query.get("scope", []):
            scopes.extend(s.split(" "))  # some clients join several scopes with spaces
        token = self.server.issue(user, scopes)
        issued_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._send(200, {"token": token, "expires_in": self.server.lifetime,
                         "issued_at": issued_at})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True, help="PEM private key that signs the tokens")
    p.add_argument("--cert", help="its certificate (needed for --x5c)")
    p.add_argument("--x5c", action="store_true", help="put the certificate in x5c, not a kid")
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--users", required=True, help="JSON: {user: {password, grants}}")
    p.add_argument("--issued", required=True, help="file to append every issued token to")
    p.add_argument("--lifetime", type=int, default=TOKEN_LIFETIME,
                   help="seconds a token is valid (expires_in, exp)")
    args = p.parse_args(argv)
    key = load_key(args.key)
    with open(args.users) as f:
        users = json.load(f)
    if args.x5c:
        if not args.cert:
            p.error("--x5c needs --cert")
        kid, x5c_certs = None, [load_cert(args.cert)]
    else:
        kid, x5c_certs = libtrust_kid(key.public_key()), None
    server = TokenServer(("127.0.0.1", args.port), key, kid, x5c_certs, args.issuer,
                         args.service, users, args.issued, args.lifetime)
    sys.stderr.write("token server on 127.0.0.1:%d (%s)\n"
                     % (args.port, "x5c" if args.x5c else "kid " + kid))
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    main()
