"""End-to-end: hostile bearer tokens cannot stall the cache (issue 13, item 1).

The origin is Docker Distribution with `auth.token` (a token server of the test's own,
tests/e2e/token_server.py, keys made at test time); the cache has the same `auth.token`
section and verifies tokens itself. alice pulls a blob (now on disk). Then attackers
with no credentials send, on 4 connections at once, tokens whose x5c holds an
"intermediate" with an RSA-8192 key whose public exponent is as long as its modulus,
and a leaf naming it as issuer with a 1024-byte junk RSA signature: before the fix,
mbedTLS's chain verification ran that exponentiation on the event loop (~0.4 s a token,
each token a new one, so that nothing remembered could help). While they do, alice's
cached hits are timed.

Checks: the hostile tokens get 401 with the reason in the log, each within a few
milliseconds; alice's hits during the attack stay fast (median under 100 ms, 90% under
250 ms: less than what one hostile token cost the loop before); the same hostile token
again is refused from memory.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_token_stall.py
"""

import base64
import datetime
import json
import os
import secrets
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

try:
    import token_server as ts  # noqa: E402  (needs python3-cryptography)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
except ImportError as e:  # pragma: no cover - scripts/install-deps.sh installs it
    ts = None
    TS_IMPORT_ERROR = e

REPO = "alice/app"
SERVICE = "content-cache-e2e"
ISSUER = "content-cache-e2e-issuer"
ATTACKERS = 4
HITS = 20
HIT_MEDIAN_MAX = 0.100  # seconds
HIT_P90_MAX = 0.250     # one hostile token held the loop ~0.4 s before the fix
HOSTILE_MAX = 0.100     # a hostile token's 401, as the attacker sees it

PASSWORDS = {user: "%s-pw-%s" % (user, secrets.token_hex(12)) for user in ("alice", "admin")}
GRANTS = {"alice": {REPO: ["pull"]}, "admin": {REPO: ["pull", "push"]}}


# --- The hostile token ------------------------------------------------------------------

def _der_len(n):
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag, content):
    return bytes([tag]) + _der_len(len(content)) + content


SHA256_WITH_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")


def with_junk_rsa_signature(cert, sig_len):
    """cert's DER with its signature replaced by sig_len junk bytes under
    sha256WithRSAEncryption (the first byte 0, so that it is below any modulus of that
    length): checking it with an RSA key of sig_len bytes runs the whole exponentiation."""
    junk = b"\x00" + b"\x5a" * (sig_len - 1)
    return _der(0x30, cert.tbs_certificate_bytes + SHA256_WITH_RSA + _der(0x03, b"\x00" + junk))


def hostile_chain(ca_name):
    """[leaf DER, intermediate DER]: the intermediate holds an RSA-8192 public key whose
    exponent is the modulus minus 2; the leaf names it as issuer, with a junk signature."""
    n = secrets.randbits(8192) | (1 << 8191) | 1
    big = rsa.RSAPublicNumbers(n - 2, n).public_key()
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile intermediate")])

    def builder(subject, issuer, key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)))

    inter = (builder(inter_name, ca_name, big)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(signer, hashes.SHA256()))
    leaf = builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile leaf")]),
                   inter_name, signer.public_key()).sign(signer, hashes.SHA256())
    return [with_junk_rsa_signature(leaf, 1024), inter.public_bytes(serialization.Encoding.DER)]


def hostile_token(chain):
    """A new token each call (another jti, another junk JWS signature): memory of a
    refused token never helps against this attacker."""
    header = {"typ": "JWT", "alg": "RS256",
              "x5c": [base64.b64encode(der).decode() for der in chain]}
    claims = ts.claims_for(ISSUER, SERVICE, "mallory",
                           [{"type": "repository", "name": REPO, "actions": ["pull"]}])
    signing_input = ts._json_b64(header) + "." + ts._json_b64(claims)
    return signing_input + "." + ts.b64url(secrets.token_bytes(256))


# --- The test ---------------------------------------------------------------------------

def body(run):
    if ts is None:
        raise RuntimeError("tests/e2e/token_server.py needs python3-cryptography "
                           "(scripts/install-deps.sh installs it): %s" % TS_IMPORT_ERROR)
    work = run.work
    pki = work.sub("pki", mkdir=True)
    key_path, cert_path = ts.make_key_and_cert(pki, "issuer", "rsa")
    ca_name = ts.load_cert(cert_path).subject
    users_path = work.write("users.json", json.dumps(
        {u: {"password": PASSWORDS[u], "grants": GRANTS[u]} for u in PASSWORDS}), mode=0o600)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "token_server.py")

    def make_token_server(port):
        return h.Proc("token-server", [sys.executable, script, "--port", str(port),
                                       "--key", key_path, "--issuer", ISSUER,
                                       "--service", SERVICE, "--users", users_path,
                                       "--issued", work.sub("issued-tokens.txt")],
                      work.sub("token-server.log"), env=h.server_env())

    token_port, _ = h._start_server(make_token_server, lambda port, proc: h.port_open(port),
                                    "token-server")
    realm = "http://127.0.0.1:%d/token" % token_port
    auth_yaml = ("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n"
                 "    rootcertbundle: %s\n" % (realm, SERVICE, ISSUER, cert_path))
    origin = run.origin(name="origin", extra_yaml=auth_yaml)
    layer = h.make_layer(300_000, 131)
    image = h.make_oci_layout(work.sub("layout"), [layer], tag="v1")
    digest = h.sha256_digest(layer)
    h.push(work, image, origin, REPO, "v1", creds=("admin", PASSWORDS["admin"]))
    cache = run.cache([origin], name="token", extra_yaml=auth_yaml)
    path = "/v2/%s/blobs/%s" % (REPO, digest)

    def alice_token():
        r = h.request(token_port, "GET", "/token?service=%s&scope=repository:%s:pull"
                      % (SERVICE, REPO), headers={"Authorization": h.basic_auth(
                          "alice", PASSWORDS["alice"])})
        h.expect_status(r, 200, "alice's token from the realm")
        return r.json()["token"]

    token = alice_token()
    bearer = {"Authorization": "Bearer " + token}

    def timed_hit():
        t0 = time.monotonic()
        r = h.request(cache.port, "GET", path, headers=bearer)
        took = time.monotonic() - t0
        h.expect_status(r, 200, "alice's hit")
        expect(r.body == layer, "alice's hit: the blob's bytes")
        return took

    def warm():
        timed_hit()  # the miss: fetched from the origin, verified, stored
        h.wait_until(lambda: os.path.exists(cache.blob_file(digest)), 10, "the blob stored")
        for _ in range(3):
            timed_hit()
        h.wait_for_count(lambda: cache.count_access(method="GET", uri=path, cache="hit"), 3)

    run.check("alice's blob is on the cache's disk; her repeated GETs are hits", warm)
    chain = hostile_chain(ca_name)
    probe = hostile_token(chain)
    h.log("a hostile token is %d bytes" % len(probe))

    def baseline():
        times = sorted(timed_hit() for _ in range(HITS))
        h.log("hits without attack: median %.1f ms, max %.1f ms"
              % (statistics.median(times) * 1e3, times[-1] * 1e3))

    run.check("alice's hits without an attack (baseline, logged)", baseline)

    def under_attack():
        stop = threading.Event()
        results = []  # (status, seconds)
        lock = threading.Lock()

        def attacker():
            while not stop.is_set():
                t = hostile_token(chain)
                t0 = time.monotonic()
                try:
                    r = h.request(cache.port, "GET", path,
                                  headers={"Authorization": "Bearer " + t}, timeout=30)
                    status = r.status
                    expect(layer[:4096] not in r.body, "a hostile token got blob bytes")
                except OSError as e:
                    status = repr(e)
                with lock:
                    results.append((status, time.monotonic() - t0))

        threads = [threading.Thread(target=attacker, daemon=True) for _ in range(ATTACKERS)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the attack is under way
        times = []
        try:
            for _ in range(HITS):
                times.append(timed_hit())
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        times.sort()
        median, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
        hostile = sorted(s for _, s in results)
        statuses = sorted(set(str(st) for st, _ in results))
        h.log("under attack by %d connections (%d hostile tokens sent): alice's hits median "
              "%.1f ms, 90%% %.1f ms, max %.1f ms; a hostile token's 401 median %.2f ms, max "
              "%.1f ms" % (ATTACKERS, len(results), median * 1e3, p90 * 1e3, times[-1] * 1e3,
                           statistics.median(hostile) * 1e3 if hostile else 0,
                           hostile[-1] * 1e3 if hostile else 0))
        expect(len(results) >= ATTACKERS, "the attackers sent %d tokens" % len(results))
        expect_eq(statuses, ["401"], "statuses of the hostile tokens")
        expect(median < HIT_MEDIAN_MAX, "alice's hits under attack: median %.0f ms (at most "
               "%.0f ms)" % (median * 1e3, HIT_MEDIAN_MAX * 1e3))
        expect(p90 < HIT_P90_MAX, "alice's hits under attack: 90%% within %.0f ms (at most "
               "%.0f ms)" % (p90 * 1e3, HIT_P90_MAX * 1e3))
        expect(statistics.median(hostile) < HOSTILE_MAX,
               "a hostile token's 401 took %.0f ms (median; at most %.0f ms)"
               % (statistics.median(hostile) * 1e3, HOSTILE_MAX * 1e3))

    run.check("while %d connections send hostile x5c tokens, alice's hits stay fast "
              "(median < %.0f ms, 90%% < %.0f ms) and every hostile token gets a quick 401"
              % (ATTACKERS, HIT_MEDIAN_MAX * 1e3, HIT_P90_MAX * 1e3), under_attack)

    def reason_and_memory():
        for _ in range(2):
            r = h.request(cache.port, "GET", path, headers={"Authorization": "Bearer " + probe})
            h.expect_status(r, 401, "the same hostile token")
            expect_eq(r.header("WWW-Authenticate"),
                      'Bearer realm="%s",service="%s",scope="repository:%s:pull"'
                      % (realm, SERVICE, REPO), "the challenge")

        def logged():
            text = "\n".join(h.read_lines(cache.stderr_path) + h.read_lines(cache.stdout_path))
            return ("RSA key of 8192 bits" in text, "(remembered)" in text)

        expect_eq(h.settle(logged), (True, True),
                  "the log names the key size, and the repeated token's refusal came from memory")

    run.check("a hostile token's 401 is logged with its reason; the same token again is "
              "refused from memory", reason_and_memory)


if __name__ == "__main__":
    h.main("token_stall", body)
