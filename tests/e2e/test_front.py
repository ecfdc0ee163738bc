"""End-to-end: the document's walk-through, with content-cache as the registry side (the
front) and as the caches (issue 18, steps 4 and 5).

A real docker-registry origin with htpasswd users, a front before it (its pull-only
account `reader`), and two caches, region-us and region-eu, whose originhost is the
front, all on 127.0.0.1:

- an admin registers both caches; alice chooses region-us;
- `skopeo copy` of <front>/org/app:1 as alice: the front answers the manifest and 307s
  every blob to region-us with a grant; region-us stores the blobs (cache=miss), having
  fetched them from the front with the grant, the front from the origin with its own
  account; a second pull: cache=hit, no new blob GET at the origin, none from region-us
  at the front (the test prints the counts);
- bob (no cache) pulls through the front: no redirect, nothing stored in either cache,
  no request at either;
- a push through the front lands in the origin;
- forged, expired (5 s of leeway), altered, wrong-repository and wrong-blob grants get
  401/403 and no byte, at a cache and at the front; no grant appears in any log;
- containerd (`ctr content fetch --hosts-dir`) pulling from the front as alice follows
  the redirects to region-us;
- a two-level chain (edge -> regional -> front) serves a redirected miss, the grant
  verified at every level, the keys fetched through the chain;
- the front with examples/policies/80-caches-by-address.lua (its ranges set to
  127.0.0.0/8 -> region-eu) sends bob to region-eu without his asking.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_front.py
"""

import json
import os
import re
import secrets
import shutil
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_front import api, front  # noqa: E402

REPO = "org/app"
USERS = ("admin", "alice", "bob", "carol", "reader")
PASSWORDS = {u: "%s-pw-%s" % (u, secrets.token_hex(8)) for u in USERS}
CREDS = {u: (u, PASSWORDS[u]) for u in USERS}
CACHES = "/api/v0/content_caches"
KEYS = "/api/v0/content_caches/grant-key"


def settings(user):
    return "/api/v0/accounts/%s/settings" % user


def blob_path(repo, digest):
    return "/v2/%s/blobs/%s" % (repo, digest)


def cache_blob_lines(cache, repo, digest, method="GET"):
    """A cache's (or the front's) access lines for a blob, the query left out."""
    want = blob_path(repo, digest)
    return [e for e in cache.access_lines()
            if e.get("http.request.method") == method
            and str(e.get("http.request.uri", "")).split("?")[0] == want]


def front_redirects(f, repo, digest):
    return sum(1 for e in cache_blob_lines(f, repo, digest)
               if str(e.get("http.response.status")) == "307")


def front_granted(f, repo, digest):
    """Blob GETs at the front that carried a grant (a cache's fetch), answered 200."""
    return sum(1 for e in cache_blob_lines(f, repo, digest)
               if e.get("cache") == "grant" and str(e.get("http.response.status")) == "200")


def expect_no_bytes(r, blob, what):
    h.expect_status(r, (401, 403), what)
    for piece in (blob[:512], blob[len(blob) // 2:len(blob) // 2 + 512], blob[-512:]):
        expect(piece not in r.body, "%s: the body holds bytes of the blob" % what)
    expect(r.header("Docker-Content-Digest") is None, "%s: a Docker-Content-Digest" % what)


def redirect_of(f, repo, digest, creds):
    """GET of the blob at the front, not followed: the 307's Location, parsed."""
    r = h.request(f.port, "GET", blob_path(repo, digest),
                  headers={"Authorization": h.basic_auth(*creds)})
    expect_eq(r.status, 307, "a blob GET of %s at the front: %r" % (creds[0], r))
    loc = urllib.parse.urlsplit(r.header("Location"))
    grant = urllib.parse.parse_qs(loc.query)["grant"][0]
    return loc, grant


def body(run):
    work = run.work
    origin = run.origin(users=PASSWORDS)
    images = {}
    for name, sizes, seed in (("app", [300_000, 1_500_000], 181), ("bob", [200_000], 182),
                              ("ctr", [100_000, 250_000], 183), ("chain", [400_000], 184),
                              ("pushed", [50_000], 185)):
        images[name] = h.make_oci_layout(work.sub("layout-" + name),
                                         h.random_layers(sizes, seed=seed), tag="1")
    for name in ("app", "bob", "ctr", "chain"):
        h.push(work, images[name], origin, "org/" + name, "1", creds=CREDS["admin"])
    image = images["app"]
    blobs = [image.config_digest] + image.layer_digests
    blob_bytes = {}
    for d in image.layer_digests:
        with open(os.path.join(image.layout, "blobs", "sha256", d.split(":")[1]), "rb") as fh:
            blob_bytes[d] = fh.read()

    f = front(run, origin, account=CREDS["reader"])
    us = run.cache([f], name="region-us")
    eu = run.cache([f], name="region-eu")
    ids = {}

    def register():
        for c in (us, eu):
            r = api(f.port, "POST", CACHES, creds=CREDS["admin"],
                    doc={"name": c.name, "host": c.url})
            h.expect_status(r, 201, "registering %s" % c.name)
            ids[c.name] = r.json()["id"]
        r = api(f.port, "PUT", settings("alice"), creds=CREDS["alice"],
                doc={"contentCache": "region-us"})
        expect_eq(r.json(), {"contentCache": "region-us"}, "alice's choice")
        r = h.request(f.port, "GET", KEYS)
        expect_eq(r.status, 200, "the grant keys, for anyone")
        expect_eq(r.json()["keys"][0]["kty"], "EC", "an EC key")

    run.check("an admin registers region-us and region-eu; alice chooses region-us", register)

    counts = {}

    def origin_gets():
        return sum(origin.count_blob_gets(d, REPO) for d in blobs)

    def first_pull():
        out = work.sub("alice-1")
        h.pull(work, f, REPO, "1", out, creds=CREDS["alice"])
        expect_eq(h.verify_pulled(out, image), [], "alice's first pull")
        for d in blobs:
            expect(os.path.exists(us.blob_file(d)), "%s is in region-us's storage" % d)
            expect(not os.path.exists(eu.blob_file(d)), "%s is not in region-eu's storage" % d)
            lines = h.wait_until(lambda d=d: cache_blob_lines(us, REPO, d), h.LOG_TIMEOUT,
                                 "region-us's line for %s" % d)
            expect_eq([e.get("cache") for e in lines], ["miss"], "region-us's cache= for %s" % d)
            expect("grant=REDACTED" in lines[0]["http.request.uri"],
                   "the grant is redacted in region-us's log: %r" % lines[0]["http.request.uri"])
            expect_eq(h.settle(lambda d=d: front_redirects(f, REPO, d)), 1, "307s of %s" % d)
            expect_eq(front_granted(f, REPO, d), 1, "region-us's GETs of %s at the front" % d)
        counts["origin1"] = h.settle(origin_gets)
        counts["front307_1"] = sum(front_redirects(f, REPO, d) for d in blobs)
        counts["granted1"] = sum(front_granted(f, REPO, d) for d in blobs)
        expect_eq(counts["origin1"], len(blobs), "blob GETs at the origin (one each, by the "
                  "front's account)")
        expect_eq(eu.access_lines(), [], "region-eu's requests")

    run.check("skopeo copy of <front>/org/app:1 as alice: redirected to region-us, which "
              "stores the blobs (cache=miss)", first_pull)

    def second_pull():
        out = work.sub("alice-2")
        h.pull(work, f, REPO, "1", out, creds=CREDS["alice"])
        expect_eq(h.verify_pulled(out, image), [], "alice's second pull")
        for d in blobs:
            lines = h.wait_until(lambda d=d: len(cache_blob_lines(us, REPO, d)) >= 2 and
                                 cache_blob_lines(us, REPO, d), h.LOG_TIMEOUT,
                                 "region-us's second line for %s" % d)
            expect_eq([e.get("cache") for e in lines], ["miss", "hit"],
                      "region-us's cache= for %s" % d)
        counts["origin2"] = h.settle(origin_gets)
        counts["front307_2"] = sum(front_redirects(f, REPO, d) for d in blobs)
        counts["granted2"] = sum(front_granted(f, REPO, d) for d in blobs)
        h.log("  alice's two pulls (%d blobs): the origin served %d blob GETs, then %d more; "
              "the front answered %d blob GETs with 307 (no bytes), then %d more, and served "
              "region-us %d blobs with grants, then %d more"
              % (len(blobs), counts["origin1"], counts["origin2"] - counts["origin1"],
                 counts["front307_1"], counts["front307_2"] - counts["front307_1"],
                 counts["granted1"], counts["granted2"] - counts["granted1"]))
        expect_eq(counts["origin2"], counts["origin1"], "blob GETs at the origin after the hit")
        expect_eq(counts["granted2"], counts["granted1"],
                  "blob GETs from region-us at the front after the hit")

    run.check("a second pull: cache=hit, no new blob GET at the origin, none from region-us "
              "at the front", second_pull)

    def bob_no_cache():
        bob = images["bob"]
        before = (len(us.access_lines()), len(eu.access_lines()))
        out = work.sub("bob")
        h.pull(work, f, "org/bob", "1", out, creds=CREDS["bob"])
        expect_eq(h.verify_pulled(out, bob), [], "bob's pull")
        for d in [bob.config_digest] + bob.layer_digests:
            expect(not os.path.exists(us.blob_file(d)) and not os.path.exists(eu.blob_file(d)),
                   "bob's blob %s is in no cache" % d)
            lines = cache_blob_lines(f, "org/bob", d)
            expect_eq([str(e.get("http.response.status")) for e in lines], ["200"],
                      "the front relayed bob's GET of %s" % d)
        expect_eq(h.settle(lambda: (len(us.access_lines()), len(eu.access_lines()))), before,
                  "requests at the caches during bob's pull")

    run.check("bob (no cache) pulls through the front: no redirect, nothing stored in either "
              "cache", bob_no_cache)

    def push_lands():
        pushed = images["pushed"]
        h.push(work, pushed, f, "org/pushed", "1", creds=CREDS["admin"])
        out = work.sub("pushed-from-origin")
        h.pull(work, origin, "org/pushed", "1", out, creds=CREDS["admin"])
        expect_eq(h.verify_pulled(out, pushed), [], "the pushed image, read at the origin")

    run.check("a push through the front lands in the origin", push_lands)

    def bad_grants():
        import token_server as ts
        from cryptography.hazmat.primitives.asymmetric import ec
        d1, d2 = image.layer_digests
        loc, grant = redirect_of(f, REPO, d1, CREDS["alice"])
        expect_eq("%s://%s" % (loc.scheme, loc.netloc), us.url, "the redirect goes to region-us")
        r = h.request(us.port, "GET", loc.path + "?" + loc.query)
        expect_eq((r.status, h.sha256_digest(r.body)), (200, d1), "the real grant (sanity)")
        head, claims, sig = grant.split(".")
        doc = json.loads(ts.base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        front_key = ts.load_key(os.path.join(f.storage, "front", "grant-key.pem"))
        kid = json.loads(ts.base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]
        expect_eq(kid, ts.libtrust_kid(front_key.public_key()), "the kid is the key's libtrust ID")
        now = int(time.time())

        def minted(key, **changes):
            c = dict(doc, **changes)
            return ts.sign_jwt(key, c, kid=kid)

        altered_claims = ts.b64url(json.dumps(dict(doc, sub="mallory")).encode())
        rogue = ec.generate_private_key(ec.SECP256R1())
        cases = [
            ("altered (another user in the claims)", REPO, d1,
             "%s.%s.%s" % (head, altered_claims, sig), 401),
            ("altered (a byte of the signature)", REPO, d1,
             "%s.%s.%s" % (head, claims, ("A" if sig[5] != "A" else "B").join(
                 [sig[:5], sig[6:]])), 401),
            ("forged (another key, its own kid)", REPO, d1,
             ts.sign_jwt(rogue, doc, kid=True), 401),
            ("forged (another key, the front's kid)", REPO, d1, minted(rogue), 401),
            ("expired 30 s ago", REPO, d1, minted(front_key, exp=now - 30), 401),
            ("for another repository", "org/bob", d1, grant, 403),
            ("for another blob", REPO, d2, grant, 403),
            ("not a grant", REPO, d1, "not.a.grant", 401),
        ]
        for what, repo, digest, g, status in cases:
            for where in (us, f):
                r = h.request(where.port, "GET", blob_path(repo, digest) + "?grant=" + g)
                expect_no_bytes(r, blob_bytes[d1], "%s at %s" % (what, where.name))
                expect_eq(r.status, status, "%s at %s" % (what, where.name))
        # 5 s of leeway: a grant 2 s past its exp still opens the blob.
        r = h.request(us.port, "GET", blob_path(REPO, d1) + "?grant=" +
                      minted(front_key, exp=now - 2))
        expect_eq((r.status, h.sha256_digest(r.body)), (200, d1), "a grant 2 s past its exp")
        # No grant in any log.
        for c in (f, us, eu):
            for path in (c.stdout_path, c.stderr_path):
                with open(path, errors="replace") as fh:
                    text = fh.read()
                expect(grant not in text and sig not in text, "a grant in %s" % path)

    run.check("forged, expired, altered, wrong-repository and wrong-blob grants get 401/403 "
              "and no byte, at a cache and at the front; no grant in a log", bad_grants)

    def containerd_follows():
        try:
            from test_containerd import Containerd, ContainerdUnavailable
        except ImportError as e:
            raise AssertionError("cannot import test_containerd: %s" % e)
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            run.skip("containerd", "not installed")
            return
        try:
            c1 = Containerd(work, "containerd1").start()
        except ContainerdUnavailable as e:
            run.skip("containerd", "cannot run here: %s" % e)
            return
        try:
            ctr_image = images["ctr"]
            hosts = work.sub("hosts", f.host, mkdir=True)
            with open(os.path.join(hosts, "hosts.toml"), "w") as fh:
                fh.write('server = "%s"\n' % f.url)
            c1.ctr(["content", "fetch", "--plain-http", "--user",
                    "%s:%s" % CREDS["alice"], "--hosts-dir", work.sub("hosts"),
                    "%s/org/ctr:1" % f.host])
            for d in [ctr_image.config_digest] + ctr_image.layer_digests:
                expect(c1.has(d), "containerd has %s" % d)
                expect_eq(h.sha256_digest(c1.get(d)), d, "what containerd stored")
                expect_eq(front_redirects(f, "org/ctr", d), 1, "the front's 307 of %s" % d)
                lines = h.wait_until(lambda d=d: cache_blob_lines(us, "org/ctr", d),
                                     h.LOG_TIMEOUT, "region-us's line for %s" % d)
                expect_eq(lines[0].get("cache"), "miss", "region-us served %s" % d)
                expect(str(lines[0].get("http.request.useragent", "")).startswith("containerd"),
                       "the GET at region-us is containerd's")
        finally:
            c1.stop()

    run.check("containerd (ctr content fetch --hosts-dir) pulling from the front follows the "
              "redirects to region-us", containerd_follows)

    regional = run.cache([f], name="regional")
    edge = run.cache([{"originhost": f.url, "upstreamhosts": [regional.url]}], name="edge")

    def chain():
        chain_image = images["chain"]
        r = api(f.port, "POST", CACHES, creds=CREDS["admin"], doc={"name": "edge", "host": edge.url})
        h.expect_status(r, 201)
        r = api(f.port, "PUT", settings("carol"), creds=CREDS["carol"], doc={"contentCache": "edge"})
        h.expect_status(r, 200)
        out = work.sub("carol")
        h.pull(work, f, "org/chain", "1", out, creds=CREDS["carol"])
        expect_eq(h.verify_pulled(out, chain_image), [], "carol's pull")
        for d in [chain_image.config_digest] + chain_image.layer_digests:
            e_lines = h.wait_until(lambda d=d: cache_blob_lines(edge, "org/chain", d),
                                   h.LOG_TIMEOUT, "edge's line for %s" % d)
            expect_eq((e_lines[0].get("cache"), e_lines[0].get("upstream")),
                      ("miss", regional.url), "edge fetched %s from regional" % d)
            r_lines = h.wait_until(lambda d=d: cache_blob_lines(regional, "org/chain", d),
                                   h.LOG_TIMEOUT, "regional's line for %s" % d)
            expect_eq((r_lines[0].get("cache"), r_lines[0].get("upstream")), ("miss", f.url),
                      "regional fetched %s from the front" % d)
            expect_eq(front_granted(f, "org/chain", d), 1, "the front served %s with a grant" % d)
            expect(os.path.exists(edge.blob_file(d)) and os.path.exists(regional.blob_file(d)),
                   "%s is stored at both levels" % d)
        expect(regional.count_access(method="GET", uri=KEYS, status=200) >= 1,
               "edge fetched the grant keys through regional")

    run.check("a two-level chain (edge -> regional -> front) serves a redirected miss",
              chain)

    def policy_by_address():
        pdir = work.sub("policies", mkdir=True)
        with open(os.path.join(h.SOURCE_DIR, "examples", "policies",
                               "80-caches-by-address.lua")) as fh:
            text = fh.read()
        text = re.sub(r"local RANGES = \{.*?\n\}", 'local RANGES = {\n    { "127.0.0.0/8", '
                      '"region-eu" },\n}', text, flags=re.S)
        with open(os.path.join(pdir, "80-caches-by-address.lua"), "w") as fh:
            fh.write(text)
        f.stop()
        f.stopped = False
        f.policydir = pdir
        f.start()
        loc, _ = redirect_of(f, "org/bob", images["bob"].layer_digests[0], CREDS["bob"])
        expect_eq("%s://%s" % (loc.scheme, loc.netloc), eu.url, "bob is sent to region-eu")
        loc, _ = redirect_of(f, REPO, image.layer_digests[0], CREDS["alice"])
        expect_eq("%s://%s" % (loc.scheme, loc.netloc), eu.url,
                  "alice too: the address decides, not her choice")

    run.check("with 80-caches-by-address.lua (127.0.0.0/8 -> region-eu) the front sends bob "
              "and alice to region-eu", policy_by_address)


if __name__ == "__main__":
    h.main("front", body)
