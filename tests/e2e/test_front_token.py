"""End-to-end: the front's redirects before an origin with token auth (issue 18).

The origin is docker-registry with `auth.token` and the test's token server
(tests/e2e/token_server.py): alice may pull org/app, bob only org/bob, the front's
account `reader` may pull both. A front before it, and region-us, which alice and bob
both chose.

- skopeo pulls <front>/org/app:1 as alice: the client gets its tokens from the origin's
  realm, the front learns who it is from the token (the origin accepts it) and whether
  it may pull each blob (a HEAD at the origin with the token), and redirects; region-us
  fetches each blob from the front with the grant, and the front from the origin with a
  token its account got from the realm (one per repository: the realm is asked once).
- bob, signed in and with a cache, may not pull org/app: his blob GETs are not
  redirected; he gets the origin's 401, and no byte.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_front_token.py
"""

import os
import secrets
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_front import TokenAuth, api, front  # noqa: E402

PASSWORDS = {u: "%s-pw-%s" % (u, secrets.token_hex(8)) for u in ("admin", "alice", "bob",
                                                                  "reader")}
CREDS = {u: (u, p) for u, p in PASSWORDS.items()}
GRANTS = {
    "admin": {"org/app": ["pull", "push"], "org/bob": ["pull", "push"]},
    "alice": {"org/app": ["pull"]},
    "bob": {"org/bob": ["pull"]},
    "reader": {"org/app": ["pull"], "org/bob": ["pull"]},
}


def body(run):
    work = run.work
    tokens = TokenAuth(work, {u: {"password": PASSWORDS[u], "grants": GRANTS[u]}
                              for u in PASSWORDS})
    origin = run.origin(extra_yaml=tokens.yaml())
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([200_000, 900_000], seed=191),
                              tag="1")
    h.push(work, image, origin, "org/app", "1", creds=CREDS["admin"])
    blobs = [image.config_digest] + image.layer_digests
    f = front(run, origin, account=CREDS["reader"])
    us = run.cache([f], name="region-us")

    def setup():
        r = api(f.port, "POST", "/api/v0/content_caches", creds=CREDS["admin"],
                doc={"name": "region-us", "host": us.url})
        h.expect_status(r, 201)
        for user in ("alice", "bob"):
            r = api(f.port, "PUT", "/api/v0/accounts/%s/settings" % user, creds=CREDS[user],
                    doc={"contentCache": "region-us"})
            h.expect_status(r, 200, "%s chooses region-us" % user)

    run.check("with token auth: the admin registers region-us, alice and bob choose it "
              "(signed in through the origin's realm)", setup)

    def alice_pulls():
        realm_before = len(h.read_lines(tokens.issued_path))
        out = work.sub("alice")
        h.pull(work, f, "org/app", "1", out, creds=CREDS["alice"])
        expect_eq(h.verify_pulled(out, image), [], "alice's pull")
        for d in blobs:
            lines = h.wait_until(lambda d=d: [e for e in us.access_lines()
                                              if d in str(e.get("http.request.uri"))],
                                 h.LOG_TIMEOUT, "region-us's line for %s" % d)
            expect_eq(lines[0].get("cache"), "miss", "region-us fetched %s" % d)
            expect(os.path.exists(us.blob_file(d)), "%s is stored in region-us" % d)
            expect_eq(h.settle(lambda d=d: origin.count_blob_gets(d, "org/app")), 1,
                      "the origin served %s once (to the front's account)" % d)
        issued = h.read_lines(tokens.issued_path)[realm_before:]
        reader_tokens = [t for t in issued if '"sub":"reader"' in tokens_claims(t)]
        expect_eq(len(reader_tokens), 1, "tokens the realm issued to the front's account "
                  "(one for org/app, kept)")

    run.check("alice pulls org/app through the front: redirected, fetched with the front's "
              "own token", alice_pulls)

    def bob_refused():
        token = tokens.token(CREDS["bob"], ["repository:org/app:pull"])
        before = len(us.access_lines())
        for d in image.layer_digests:
            r = h.request(f.port, "GET", "/v2/org/app/blobs/%s" % d,
                          headers={"Authorization": "Bearer " + token})
            expect_eq(r.status, 401, "bob's blob GET: the origin's answer, not a redirect")
            expect(r.header("Location") is None, "no redirect for bob")
            expect(h.sha256_digest(r.body) != d and len(r.body) < 1000, "no byte for bob")
        expect_eq(h.settle(lambda: len(us.access_lines())), before, "requests at region-us")

    run.check("bob may not pull org/app: no redirect, the origin's 401, no byte", bob_refused)


def tokens_claims(token):
    """The claims of a JWT, as compact JSON text (for a test's eyes only)."""
    import base64
    import json
    part = token.split(".")[1]
    doc = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return json.dumps(doc, separators=(",", ":"))


if __name__ == "__main__":
    h.main("front_token", body)
