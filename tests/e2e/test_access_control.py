"""End-to-end: the cache is no way around the origin's access control (token auth).

The origin is Docker Distribution with `auth.token`; its realm is a token server of the
test's own (tests/e2e/token_server.py) whose keys and certificates are made at test time.
Users: alice may pull alice/app, bob may pull bob/x, admin may push and pull both;
anonymous clients get tokens that grant nothing. admin pushes alice/app:v1 (a layer
SHARED with bob/x, and ALICE_ONLY), bob/x:v1 (SHARED and BOB_ONLY) and alice/app:extra
(FRESH, a layer of alice's that no one ever pulls through a cache).

Two caches in front of that origin:
  relay   authorizes by asking the origin (HEAD with the client's Authorization) and
          remembering the answer;
  token   has the same `auth.token` section as the origin and verifies bearer tokens
          itself (only "is this digest in this repository" comes from the origin).
For each: alice pulls alice/app with skopeo, byte for byte; then anonymous clients,
anonymous tokens and bob get 401/403/404 and not one byte of ALICE_ONLY (on disk) or
FRESH (not on disk), asked under alice/app or under bob/x; bob gets SHARED under bob/x
from disk (cache=hit); alice gets no BOB_ONLY under alice/app. The token cache serves
repeated hits with no request to the origin, and refuses expired, wrongly signed and
unsigned tokens itself with a Bearer challenge naming realm, service and scope.
Finally no password and no token issued during the test appears in any cache log or
any file under a cache's storage root.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_access_control.py
"""

import json
import os
import re
import secrets
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

try:
    import token_server as ts  # noqa: E402  (needs python3-cryptography)
except ImportError as e:  # pragma: no cover - scripts/install-deps.sh installs it
    ts = None
    TS_IMPORT_ERROR = e

ALICE_REPO = "alice/app"
BOB_REPO = "bob/x"
SERVICE = "content-cache-e2e"
ISSUER = "content-cache-e2e-issuer"
LEEWAY = 60          # seconds of clock skew that token verifiers allow on exp and nbf
REPEATS = 5          # repeated hits that must not reach the origin
DENIED = (401, 403, 404)

# Passwords made per run: distinct, so that finding one in a log means a leak.
PASSWORDS = {user: "%s-pw-%s" % (user, secrets.token_hex(12)) for user in ("alice", "bob", "admin")}
GRANTS = {
    "alice": {ALICE_REPO: ["pull"]},
    "bob": {BOB_REPO: ["pull"]},
    "admin": {ALICE_REPO: ["pull", "push"], BOB_REPO: ["pull", "push"]},
}


# --- Tokens and challenges -------------------------------------------------------------

_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_challenge(value):
    """'Bearer realm="..",service="..",scope=".."' -> ("bearer", {param: value})."""
    scheme, _, rest = (value or "").partition(" ")
    return scheme.lower(), {k: re.sub(r"\\(.)", r"\1", v) for k, v in _PARAM.findall(rest)}


class Tokens:
    """Gets tokens from the realm (the token dance, with http.client) and remembers every
    token string seen in the test, issued or minted, for the leak check."""

    def __init__(self):
        self.minted = []

    def from_realm(self, challenge, creds=None):
        """A token for the challenge's realm, service and scope; creds (user, password)
        or None for an anonymous token."""
        scheme, params = parse_challenge(challenge)
        expect_eq(scheme, "bearer", "challenge scheme in %r" % challenge)
        realm = urllib.parse.urlsplit(params["realm"])
        query = {"service": params.get("service", "")}
        if params.get("scope"):
            query["scope"] = params["scope"]
        path = realm.path + "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": h.basic_auth(*creds)} if creds else {}
        r = h.request(realm.port, "GET", path, headers=headers, host=realm.hostname)
        h.expect_status(r, 200, "token endpoint %s for %s" % (path, creds[0] if creds else
                                                              "anonymous"))
        doc = r.json()
        expect_eq(doc.get("expires_in"), ts.TOKEN_LIFETIME, "expires_in")
        return doc["token"]

    def mint(self, key, claims, **kwargs):
        token = ts.sign_jwt(key, claims, **kwargs)
        self.minted.append(token)
        return token


def bearer(token):
    return {"Authorization": "Bearer " + token}


def blob_path(repo, digest):
    return "/v2/%s/blobs/%s" % (repo, digest)


def expect_no_bytes(r, blob, what):
    """A refusal: 401/403/404 and none of the blob's bytes."""
    h.expect_status(r, DENIED, what)
    expect(h.sha256_digest(r.body) != h.sha256_digest(blob), "%s: the whole blob was served" % what)
    mid = len(blob) // 2
    for piece in (blob[16:1040], blob[mid:mid + 1024], blob[-1024:]):
        expect(piece not in r.body, "%s: the body holds bytes of the blob: %r" % (what, r))
    expect(r.header("Docker-Content-Digest") is None,
           "%s: a refusal carries Docker-Content-Digest %s"
           % (what, r.header("Docker-Content-Digest")))


def body(run):
    if ts is None:
        raise RuntimeError("tests/e2e/token_server.py needs python3-cryptography "
                           "(scripts/install-deps.sh installs it): %s" % TS_IMPORT_ERROR)
    work = run.work
    tokens = Tokens()

    # ---- Keys (made now, nothing committed), the token server, the origin ------------
    pki = work.sub("pki", mkdir=True)
    rsa_key_path, rsa_cert_path = ts.make_key_and_cert(pki, "issuer-rsa", "rsa")
    ec_key_path, ec_cert_path = ts.make_key_and_cert(pki, "issuer-ec", "ec")
    # Another key, in a certificate with the issuer's name: trusted by no one.
    rogue_key_path, rogue_cert_path = ts.make_key_and_cert(
        pki, "rogue", "rsa", common_name="content-cache e2e issuer-rsa")
    bundle = os.path.join(pki, "bundle.pem")
    with open(bundle, "w") as out:
        for path in (rsa_cert_path, ec_cert_path):
            with open(path) as f:
                out.write(f.read())
    issuer_key, ec_key = ts.load_key(rsa_key_path), ts.load_key(ec_key_path)
    rogue_key, rogue_cert = ts.load_key(rogue_key_path), ts.load_cert(rogue_cert_path)
    issuer_cert = ts.load_cert(rsa_cert_path)
    issuer_kid = ts.libtrust_kid(issuer_key.public_key())

    users_path = work.write("users.json", json.dumps(
        {u: {"password": PASSWORDS[u], "grants": GRANTS[u]} for u in PASSWORDS}), mode=0o600)
    issued_path = work.sub("issued-tokens.txt")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "token_server.py")

    def make_token_server(port):
        return h.Proc("token-server", [sys.executable, script, "--port", str(port),
                                       "--key", rsa_key_path, "--issuer", ISSUER,
                                       "--service", SERVICE, "--users", users_path,
                                       "--issued", issued_path],
                      work.sub("token-server.log"), env=h.server_env())

    token_port, _ = h._start_server(make_token_server, lambda port, proc: h.port_open(port),
                                    "token-server")
    realm = "http://127.0.0.1:%d/token" % token_port
    h.log("token server on %s (kid %s)" % (realm, issuer_kid))
    auth_yaml = ("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n"
                 "    rootcertbundle: %s\n" % (realm, SERVICE, ISSUER, bundle))
    origin = run.origin(name="origin", extra_yaml=auth_yaml)

    # ---- Images, pushed by admin -----------------------------------------------------
    shared, alice_only, bob_only, fresh = (h.make_layer(size, seed) for size, seed in
                                           ((150_000, 101), (200_000, 102), (120_000, 103),
                                            (90_000, 104)))
    alice_img = h.make_oci_layout(work.sub("alice-layout"), [shared, alice_only], tag="v1",
                                  labels={"owner": "alice"})
    bob_img = h.make_oci_layout(work.sub("bob-layout"), [shared, bob_only], tag="v1",
                                labels={"owner": "bob"})
    extra_img = h.make_oci_layout(work.sub("extra-layout"), [fresh], tag="extra",
                                  labels={"owner": "alice", "never": "pulled"})
    D_SHARED, D_ALICE, D_BOB, D_FRESH = (h.sha256_digest(b) for b in
                                         (shared, alice_only, bob_only, fresh))
    admin = ("admin", PASSWORDS["admin"])
    h.push(work, alice_img, origin, ALICE_REPO, "v1", creds=admin)
    h.push(work, bob_img, origin, BOB_REPO, "v1", creds=admin)
    h.push(work, extra_img, origin, ALICE_REPO, "extra", creds=admin)
    blobs = {D_SHARED: shared, D_ALICE: alice_only, D_BOB: bob_only, D_FRESH: fresh}
    alice = ("alice", PASSWORDS["alice"])
    bob = ("bob", PASSWORDS["bob"])

    def origin_token(repo, creds):
        """A token from the realm for pulling `repo` (the origin's own challenge)."""
        r = h.request(origin.port, "GET", blob_path(repo, D_SHARED))
        return tokens.from_realm(r.header("WWW-Authenticate"), creds)

    def origin_enforces():
        # The scenario's premises, straight from the origin: who may read what.
        a = origin_token(ALICE_REPO, alice)
        b = origin_token(BOB_REPO, bob)
        b_on_alice = origin_token(ALICE_REPO, bob)
        anon = origin_token(ALICE_REPO, None)
        cases = [
            (ALICE_REPO, D_ALICE, {}, 401), (ALICE_REPO, D_ALICE, bearer(anon), 401),
            (ALICE_REPO, D_ALICE, bearer(b_on_alice), 401), (ALICE_REPO, D_ALICE, bearer(b), 401),
            (ALICE_REPO, D_ALICE, bearer(a), 200), (ALICE_REPO, D_FRESH, bearer(a), 200),
            (BOB_REPO, D_ALICE, bearer(b), 404), (BOB_REPO, D_SHARED, bearer(b), 200),
            (BOB_REPO, D_SHARED, bearer(a), 401),
        ]
        for repo, digest, headers, want in cases:
            r = h.request(origin.port, "HEAD", blob_path(repo, digest), headers=headers)
            expect_eq(r.status, want, "origin HEAD %s as %s" % (blob_path(repo, digest),
                                                              headers and "token" or "anonymous"))
        # Tokens the test mints itself (kid of the EC key, or x5c) are good at the origin.
        access = [{"type": "repository", "name": ALICE_REPO, "actions": ["pull"]}]
        for what, token in (
                ("ES256 with kid", tokens.mint(ec_key, ts.claims_for(ISSUER, SERVICE, "alice",
                                                                     access), kid=True)),
                ("RS256 with x5c", tokens.mint(issuer_key, ts.claims_for(ISSUER, SERVICE, "alice",
                                                                         access),
                                               x5c_certs=[issuer_cert]))):
            r = h.request(origin.port, "HEAD", blob_path(ALICE_REPO, D_ALICE),
                          headers=bearer(token))
            expect_eq(r.status, 200, "origin HEAD with a minted %s token" % what)
        r = h.request(origin.port, "GET", blob_path(ALICE_REPO, D_ALICE))
        expect_eq(parse_challenge(r.header("WWW-Authenticate")),
                  ("bearer", {"realm": realm, "service": SERVICE,
                              "scope": "repository:%s:pull" % ALICE_REPO}), "origin challenge")

    run.check("origin with auth.token and the test's token server enforces per-user, "
              "per-repository access (harness sanity)", origin_enforces)

    # ---- Helpers over a cache -------------------------------------------------------
    def origin_lines_for(digest):
        """The origin's access-log lines (any method, any repository) for this blob."""
        rx = re.compile(r"^/v2/[^?]+/blobs/%s(\?.*)?$" % re.escape(digest))
        return sum(1 for e in origin.access_log() if rx.search(e["uri"]))

    def origin_blob_gets_ok(digest):
        rx = re.compile(r"^/v2/[^?]+/blobs/%s(\?.*)?$" % re.escape(digest))
        return sum(1 for e in origin.access_log()
                   if e["method"] == "GET" and e["status"] == 200 and rx.search(e["uri"]))

    def settled_origin_lines(digest):
        return h.settle(lambda: origin_lines_for(digest))

    def dance(cache, method, repo, digest, creds):
        """The token dance against the cache: ask, read the challenge, get a token from
        the realm (creds, or anonymous), ask again with it. Returns (response, token)."""
        path = blob_path(repo, digest)
        first = h.request(cache.port, method, path)
        h.expect_status(first, 401, "%s %s without credentials" % (method, path))
        token = tokens.from_realm(first.header("WWW-Authenticate"), creds)
        return h.request(cache.port, method, path, headers=bearer(token)), token

    def skopeo_pull(cache):
        out = work.sub("pull-%s" % cache.name)
        h.pull(work, cache, ALICE_REPO, "v1", out, creds=alice)
        expect_eq(h.verify_pulled(out, alice_img), [], "alice's pull through %s" % cache.name)
        expect(os.path.exists(cache.blob_file(D_ALICE)), "ALICE_ONLY is not on %s's disk"
               % cache.name)

    def refusals(cache, local):
        """Anonymous, anonymous-token and bob's clients get none of ALICE_ONLY (on disk)
        or FRESH (never pulled), under alice/app or bob/x, GET or HEAD. With `local`, the
        cache answers credential refusals itself with its own challenge; otherwise it
        answers as the origin does (same status, same challenge)."""
        expect(os.path.exists(cache.blob_file(D_ALICE)), "premise: ALICE_ONLY is on disk")
        expect(not os.path.exists(cache.blob_file(D_FRESH)), "premise: FRESH is not on disk")
        fresh_gets = origin_blob_gets_ok(D_FRESH)
        bob_token_bobx = tokens.from_realm(
            h.request(cache.port, "GET", blob_path(BOB_REPO, D_SHARED)).header("WWW-Authenticate"),
            bob)
        for digest in (D_ALICE, D_FRESH):
            for repo in (ALICE_REPO, BOB_REPO):
                path = blob_path(repo, digest)
                want_challenge = 'Bearer realm="%s",service="%s",scope="repository:%s:pull"' % (
                    realm, SERVICE, repo)
                challenge = h.request(cache.port, "GET", path).header("WWW-Authenticate")
                # bob last: his 404 under bob/x is remembered, and the clients before
                # him must get the origin's answer to them (see relay_no_404_oracle).
                clients = [("anonymous", {}),
                           ("an anonymous token", bearer(tokens.from_realm(challenge, None))),
                           ("alice's password as Basic", {"Authorization": h.basic_auth(*alice)}),
                           ("bob's token for this scope",
                            bearer(tokens.from_realm(challenge, bob))),
                           ("bob's token for bob/x", bearer(bob_token_bobx))]
                for who, headers in clients:
                    for method in ("GET", "HEAD"):
                        what = "%s %s as %s via %s" % (method, path, who, cache.name)
                        r = h.request(cache.port, method, path, headers=headers)
                        expect_no_bytes(r, blobs[digest], what)
                        direct = h.request(origin.port, method, path, headers=headers)
                        if who.startswith("bob's token") and repo == BOB_REPO:
                            # bob may pull bob/x, but the digest is not in it: the
                            # origin says so (404), with or without auth.token here.
                            expect_eq(r.status, 404, what)
                            continue
                        if local:
                            expect_eq(r.status, 401, what)
                            expect_eq(r.header("WWW-Authenticate"), want_challenge,
                                      "%s: challenge" % what)
                        else:
                            expect_eq(r.status, direct.status, "%s: status (the origin's is "
                                      "%d)" % (what, direct.status))
                            expect_eq(r.header("WWW-Authenticate"),
                                      direct.header("WWW-Authenticate"),
                                      "%s: the origin's challenge, unchanged" % what)
        expect(not os.path.exists(cache.blob_file(D_FRESH)), "FRESH was stored by %s after "
               "refused requests" % cache.name)
        expect_eq(h.settle(lambda: origin_blob_gets_ok(D_FRESH)), fresh_gets,
                  "origin GETs of FRESH (the cache fetched a blob no client may have)")
        served = [e["_line"] for e in cache.access_lines()
                  if str(e.get("http.response.status")) in ("200", "206")
                  and any(d in e.get("http.request.uri", "") for d in (D_FRESH,))]
        expect_eq(served, [], "access-log lines of FRESH served with 200/206")

    def bob_gets_shared(cache):
        lines = settled_origin_lines(D_SHARED)
        gets = origin_blob_gets_ok(D_SHARED)
        hits = cache.count_access(method="GET", uri=blob_path(BOB_REPO, D_SHARED), cache="hit")
        r, _ = dance(cache, "GET", BOB_REPO, D_SHARED, bob)
        h.expect_status(r, 200, "bob GET SHARED under bob/x via %s" % cache.name)
        expect_eq(h.sha256_digest(r.body), D_SHARED, "SHARED bytes")
        h.wait_for_count(lambda: cache.count_access(method="GET", uri=blob_path(BOB_REPO, D_SHARED),
                                                    cache="hit"), hits + 1)
        expect_eq(h.settle(lambda: origin_blob_gets_ok(D_SHARED)), gets,
                  "origin GETs of SHARED (it was on disk)")
        h.log("  origin lines for SHARED: %d before, %d after (a HEAD says it is in bob/x)"
              % (lines, settled_origin_lines(D_SHARED)))

    def alice_no_bob_only(cache):
        r, _ = dance(cache, "GET", BOB_REPO, D_BOB, bob)
        h.expect_status(r, 200, "bob GET BOB_ONLY under bob/x via %s" % cache.name)
        expect_eq(h.sha256_digest(r.body), D_BOB, "BOB_ONLY bytes")
        h.wait_until(lambda: os.path.exists(cache.blob_file(D_BOB)), h.LOG_TIMEOUT,
                     "BOB_ONLY on %s's disk" % cache.name)
        for method in ("GET", "HEAD"):
            r, _ = dance(cache, method, ALICE_REPO, D_BOB, alice)
            expect_no_bytes(r, bob_only, "%s BOB_ONLY under alice/app as alice" % method)
            expect_eq(r.status, 404, "%s BOB_ONLY under alice/app as alice" % method)

    def repeated_hits(cache, token):
        """REPEATS GETs and HEADs of ALICE_ONLY with `token`: all served from disk, and the
        origin's lines for that blob do not change."""
        path = blob_path(ALICE_REPO, D_ALICE)
        before = settled_origin_lines(D_ALICE)
        hits = cache.count_access(method="GET", uri=path, cache="hit")
        for i in range(REPEATS):
            r = h.request(cache.port, "GET", path, headers=bearer(token))
            h.expect_status(r, 200, "repeat %d" % i)
            expect_eq(h.sha256_digest(r.body), D_ALICE, "bytes of repeat %d" % i)
            r = h.request(cache.port, "HEAD", path, headers=bearer(token))
            h.expect_status(r, 200, "HEAD repeat %d" % i)
            expect_eq(r.header("Content-Length"), str(len(alice_only)), "HEAD Content-Length")
        h.wait_for_count(lambda: cache.count_access(method="GET", uri=path, cache="hit"),
                         hits + REPEATS)
        expect_eq(settled_origin_lines(D_ALICE), before,
                  "origin HEAD/GET lines for ALICE_ONLY around %d repeated hits" % REPEATS)

    # ---- 1. The relaying cache: the origin decides, the cache remembers ---------------
    relay = run.cache([origin], name="relay")

    run.check("relay: alice pulls alice/app with skopeo --src-creds, byte for byte",
              skopeo_pull, relay)

    def relay_remembers():
        r, token = dance(relay, "GET", ALICE_REPO, D_ALICE, alice)
        h.expect_status(r, 200, "alice's first GET with a new token")
        expect_eq(h.sha256_digest(r.body), D_ALICE, "ALICE_ONLY bytes")
        repeated_hits(relay, token)

    run.check("relay: with alice's credential and the digest remembered, %d hits ask the "
              "origin nothing" % REPEATS, relay_remembers)

    run.check("relay: anonymous, anonymous-token and bob get 401/403/404 and zero bytes of "
              "ALICE_ONLY (hit) and FRESH (miss) under alice/app and bob/x; the origin's "
              "challenge unchanged", refusals, relay, False)
    run.check("relay: bob gets SHARED under bob/x from disk (cache=hit)", bob_gets_shared, relay)
    run.check("relay: alice gets no BOB_ONLY under alice/app though it is on disk (404)",
              alice_no_bob_only, relay)

    def relay_remembered_refusal():
        # A refusal is remembered a few seconds and answered with the stored challenge.
        path = blob_path(ALICE_REPO, D_ALICE)
        anon = tokens.from_realm(h.request(relay.port, "GET", path).header("WWW-Authenticate"))
        first = h.request(relay.port, "GET", path, headers=bearer(anon))
        second = h.request(relay.port, "GET", path, headers=bearer(anon))
        direct = h.request(origin.port, "GET", path, headers=bearer(anon))
        for r in (first, second):
            expect_no_bytes(r, alice_only, "anonymous token, twice")
            expect_eq((r.status, r.header("WWW-Authenticate")),
                      (direct.status, direct.header("WWW-Authenticate")),
                      "status and challenge vs the origin's")

    run.check("relay: a remembered refusal answers with the origin's status and challenge",
              relay_remembered_refusal)

    def relay_no_404_oracle():
        # bob may pull bob/x and learns that ALICE_ONLY is not in it (404, remembered).
        # A client whose credential the cache has not seen yet must still get what the
        # origin tells it (401 and the challenge), not the 404 remembered for bob: the
        # origin never says to an unauthorized client what a repository holds or lacks.
        path = blob_path(BOB_REPO, D_ALICE)
        challenge = h.request(relay.port, "GET", path).header("WWW-Authenticate")
        bob_token = tokens.from_realm(challenge, bob)
        r = h.request(relay.port, "GET", path, headers=bearer(bob_token))
        expect_no_bytes(r, alice_only, "bob")
        expect_eq(r.status, 404, "bob: GET %s" % path)
        unseen = [("a new anonymous token", bearer(tokens.from_realm(challenge, None))),
                  ("a wrong password", {"Authorization": h.basic_auth("mallory",
                                                                      secrets.token_hex(8))})]
        wrong = []
        for who, headers in unseen:
            for method in ("GET", "HEAD"):
                r = h.request(relay.port, method, path, headers=headers)
                expect_no_bytes(r, alice_only, "%s as %s" % (method, who))
                direct = h.request(origin.port, method, path, headers=headers)
                if (r.status, r.header("WWW-Authenticate")) != (
                        direct.status, direct.header("WWW-Authenticate")):
                    wrong.append("%s %s as %s: cache %d %r, origin %d %r" % (
                        method, path, who, r.status, r.header("WWW-Authenticate"),
                        direct.status, direct.header("WWW-Authenticate")))
        expect_eq(wrong, [], "answers that differ from the origin's")

    run.check("relay: a remembered 'not in this repository' (404) is not told to a client "
              "whose credential is unknown: it gets the origin's 401 and challenge",
              relay_no_404_oracle)

    def two_authorization_headers(cache):
        # Two Authorization headers, an anonymous token first: the origin decides by the
        # first (401); the cache must not serve, whichever one it looks at.
        path = blob_path(ALICE_REPO, D_ALICE)
        challenge = h.request(cache.port, "GET", path).header("WWW-Authenticate")
        anon = tokens.from_realm(challenge, None)
        good = tokens.from_realm(challenge, alice)
        h.expect_status(h.request(cache.port, "GET", path, headers=bearer(good)), 200,
                        "alice's token alone")
        for method in ("GET", "HEAD"):
            with h.RawConnection(cache.port) as c:
                c.send("%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "Authorization: Bearer %s\r\nConnection: close\r\n\r\n"
                       % (method, path, anon, good))
                r = c.read_response(method=method)
            expect_no_bytes(r, alice_only, "%s with an anonymous token, then alice's" % method)

    run.check("relay: two Authorization headers (anonymous token first) get no bytes",
              two_authorization_headers, relay)

    # ---- 2. The cache with auth.token: tokens verified here ----------------------------
    tok = run.cache([origin], name="token", extra_yaml=auth_yaml)

    run.check("token: alice pulls alice/app with skopeo --src-creds, byte for byte",
              skopeo_pull, tok)

    def token_challenge():
        for method in ("GET", "HEAD"):
            for repo in (ALICE_REPO, BOB_REPO):
                r = h.request(tok.port, method, blob_path(repo, D_ALICE))
                expect_no_bytes(r, alice_only, "%s anonymous" % method)
                expect_eq(r.status, 401, "%s %s anonymous" % (method, repo))
                expect_eq(r.header("WWW-Authenticate"),
                          'Bearer realm="%s",service="%s",scope="repository:%s:pull"'
                          % (realm, SERVICE, repo), "challenge")
        r = h.request(tok.port, "GET", "/v2/")
        direct = h.request(origin.port, "GET", "/v2/")
        expect_eq((r.status, r.header("WWW-Authenticate")),
                  (direct.status, direct.header("WWW-Authenticate")),
                  "GET /v2/: the origin's 401 challenge relayed unchanged")

    run.check("token: anonymous blob requests get 401 with Bearer realm, service and "
              "scope; /v2/ relays the origin's challenge", token_challenge)

    def token_hits_local():
        # A token of alice's own from the realm: verified here; that ALICE_ONLY is in
        # alice/app is remembered from the skopeo pull, so nothing goes to the origin.
        r = h.request(tok.port, "GET", blob_path(ALICE_REPO, D_ALICE))
        token = tokens.from_realm(r.header("WWW-Authenticate"), alice)
        repeated_hits(tok, token)

    run.check("token: after the first pull, %d hits with a valid token need no origin "
              "request (origin's lines for the blob unchanged)" % REPEATS, token_hits_local)

    now = int(time.time())
    alice_access = [{"type": "repository", "name": ALICE_REPO, "actions": ["pull"]}]

    def minted_accepted():
        good = {
            "ES256 with the EC key's kid": tokens.mint(
                ec_key, ts.claims_for(ISSUER, SERVICE, "alice", alice_access), kid=True),
            "RS256 with x5c": tokens.mint(
                issuer_key, ts.claims_for(ISSUER, SERVICE, "alice", alice_access),
                x5c_certs=[issuer_cert]),
            "exp 20 s ago (within the leeway)": tokens.mint(
                issuer_key, ts.claims_for(ISSUER, SERVICE, "alice", alice_access,
                                          now=int(time.time()) - 320), kid=True),
        }
        before = settled_origin_lines(D_ALICE)
        for what, token in good.items():
            r = h.request(tok.port, "GET", blob_path(ALICE_REPO, D_ALICE), headers=bearer(token))
            h.expect_status(r, 200, what)
            expect_eq(h.sha256_digest(r.body), D_ALICE, "%s: bytes" % what)
        expect_eq(settled_origin_lines(D_ALICE), before, "origin lines for ALICE_ONLY")

    run.check("token: ES256 (kid), RS256 with x5c, and exp within the 60 s leeway are "
              "accepted, still without origin requests", minted_accepted)

    def bad_tokens():
        def claims(**over):
            c = ts.claims_for(ISSUER, SERVICE, "alice", alice_access)
            c.update(over)
            return c

        valid = tokens.mint(issuer_key, claims(), kid=True)
        head, payload, sig = valid.split(".")
        tampered_claims = claims(access=alice_access + [
            {"type": "repository", "name": BOB_REPO, "actions": ["pull"]}])
        tampered = ".".join([head, ts._json_b64(tampered_claims), sig])
        tokens.minted.append(tampered)
        bad = {
            "expired (exp %d s ago)" % (10 * LEEWAY): tokens.mint(
                issuer_key, claims(exp=now - 10 * LEEWAY, nbf=now - 900, iat=now - 900),
                kid=True),
            "not valid yet (nbf in 10 min)": tokens.mint(
                issuer_key, claims(nbf=now + 600), kid=True),
            "signed by another key (its own kid)": tokens.mint(rogue_key, claims(), kid=True),
            "signed by another key (the issuer's kid)": tokens.mint(
                rogue_key, claims(), kid=issuer_kid),
            "signed by another key (its certificate in x5c)": tokens.mint(
                rogue_key, claims(), x5c_certs=[rogue_cert]),
            "unsigned (alg none)": tokens.mint(issuer_key, claims(), kid=issuer_kid, alg="none"),
            "claims changed after signing": tampered,
            "another issuer": tokens.mint(issuer_key, claims(iss="someone-else"), kid=True),
            "another audience": tokens.mint(issuer_key, claims(aud="other-service"), kid=True),
            "no access to this repository": tokens.mint(
                issuer_key, claims(access=[{"type": "repository", "name": BOB_REPO,
                                            "actions": ["pull"]}]), kid=True),
        }
        before = settled_origin_lines(D_ALICE)
        for what, token in bad.items():
            for method in ("GET", "HEAD"):
                r = h.request(tok.port, method, blob_path(ALICE_REPO, D_ALICE),
                              headers=bearer(token))
                expect_no_bytes(r, alice_only, "%s token, %s" % (what, method))
                expect_eq(r.status, 401, "%s token, %s" % (what, method))
                expect_eq(r.header("WWW-Authenticate"),
                          'Bearer realm="%s",service="%s",scope="repository:%s:pull"'
                          % (realm, SERVICE, ALICE_REPO), "%s token: challenge" % what)
        expect_eq(settled_origin_lines(D_ALICE), before,
                  "origin lines for ALICE_ONLY (refusals are decided here)")

    run.check("token: expired, not-yet-valid, wrongly signed, unsigned, tampered, wrong "
              "issuer/audience/scope tokens -> 401 with the Bearer challenge, zero bytes, "
              "no origin request", bad_tokens)

    run.check("token: anonymous, anonymous-token and bob get 401/403/404 and zero bytes of "
              "ALICE_ONLY (hit) and FRESH (miss) under alice/app and bob/x",
              refusals, tok, True)
    run.check("token: bob gets SHARED under bob/x from disk (cache=hit)", bob_gets_shared, tok)
    run.check("token: alice gets no BOB_ONLY under alice/app though it is on disk (404)",
              alice_no_bob_only, tok)

    def manifests_relayed():
        path = "/v2/%s/manifests/v1" % ALICE_REPO
        accept = {"Accept": h.OCI_MANIFEST}
        r = h.request(tok.port, "GET", path, headers=accept)
        token_bob = tokens.from_realm(r.header("WWW-Authenticate"), bob)
        token_alice = tokens.from_realm(r.header("WWW-Authenticate"), alice)
        for who, headers in (("anonymous", {}), ("bob", bearer(token_bob))):
            r = h.request(tok.port, "GET", path, headers=dict(accept, **headers))
            direct = h.request(origin.port, "GET", path, headers=dict(accept, **headers))
            expect_eq(r.status, 401, "manifest as %s" % who)
            expect_eq(r.header("WWW-Authenticate"), direct.header("WWW-Authenticate"),
                      "manifest as %s: the origin's challenge" % who)
            expect(alice_img.manifest_bytes not in r.body, "manifest bytes served to %s" % who)
        r = h.request(tok.port, "GET", path, headers=dict(accept, **bearer(token_alice)))
        h.expect_status(r, 200, "manifest as alice")
        expect_eq(r.body, alice_img.manifest_bytes, "manifest bytes")

    run.check("token: two Authorization headers (anonymous token first) get no bytes",
              two_authorization_headers, tok)
    run.check("token: manifests are the origin's decision (anonymous and bob 401, alice 200)",
              manifests_relayed)

    # ---- 3. Nothing secret written anywhere ------------------------------------------
    def no_credentials_anywhere():
        issued = [t for t in h.read_lines(issued_path) if t.strip()]
        expect(len(issued) >= 10, "the token server issued only %d tokens" % len(issued))
        all_tokens = set(issued) | set(tokens.minted)
        secrets_ = {}
        for user, pw in PASSWORDS.items():
            secrets_["%s's password" % user] = pw
            secrets_["%s's Basic credential" % user] = h.basic_auth(user, pw).split()[1]
        for i, t in enumerate(sorted(all_tokens)):
            parts = t.split(".")
            secrets_["token %d" % i] = t
            secrets_["token %d's claims" % i] = parts[1]
            if len(parts) > 2 and parts[2]:
                secrets_["token %d's signature" % i] = parts[2]
        files = []
        # Stopped here, so that every line they would write is written.
        codes = {c.name: c.stop() for c in (relay, tok)}
        expect_eq(codes, {relay.name: 0, tok.name: 0}, "exit codes on SIGTERM")
        for c in (relay, tok):
            files += [c.stdout_path, c.stderr_path]
            for root, _, names in os.walk(c.storage):
                files += [os.path.join(root, n) for n in names]
        found = []
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            for what, s in secrets_.items():
                if s.encode() in data:
                    found.append("%s in %s" % (what, os.path.relpath(path, work.path)))
        h.log("  looked for %d secrets (%d tokens) in %d files" % (len(secrets_),
                                                                 len(all_tokens), len(files)))
        expect_eq(found, [], "credentials found")

    run.check("no password and no token issued or minted during the test appears in a "
              "cache log or under a cache's storage root", no_credentials_anywhere)


if __name__ == "__main__":
    h.main("access_control", body)
