"""End-to-end: the front's caches API (issue 18, step 3).

A real docker-registry origin with htpasswd users (admin, alice, bob) and a front whose
admins are [admin]. The API answers with exactly the statuses the issue gives: 401
without or with refused credentials (the origin judges them, and is asked once per
credential), 403 for who may not, 201/409/400 for POST (each 400 naming its field), 404
for an unknown id, 204 for DELETE (its users fall back to no cache), 200 for an account's
settings read and written by the user or an admin, 400 for an unknown cache. The state
survives a restart and a kill -9 right after a change, and a kill -9 in the middle of a
burst of changes leaves a database that opens and passes SQLite's integrity check. With
an origin that uses token auth, Basic credentials are checked against its realm and a
bearer token is accepted; a front with auth.token verifies tokens itself. The front runs
with two loops (workers: 2): a change answered on one is read at once on the other.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_front_api.py
"""

import json
import os
import secrets
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_front import TokenAuth, api, front  # noqa: E402

PASSWORDS = {u: "%s-pw-%s" % (u, secrets.token_hex(8)) for u in ("admin", "alice", "bob")}
ADMIN, ALICE, BOB = (("admin", PASSWORDS["admin"]), ("alice", PASSWORDS["alice"]),
                     ("bob", PASSWORDS["bob"]))
CACHES = "/api/v0/content_caches"


def settings(user):
    return "/api/v0/accounts/%s/settings" % user


def expect_api_error(r, status, code, field=None):
    h.expect_status(r, status)
    doc = r.json()
    err = doc["errors"][0]
    expect_eq(err["code"], code, "error code")
    if field is not None:
        expect_eq((err.get("detail") or {}).get("field"), field, "the field named by the error")
        expect(err["message"].startswith(field + ":"), "the message names %s: %r"
               % (field, err["message"]))


def body(run):
    work = run.work
    origin = run.origin(users=PASSWORDS)
    f = front(run, origin, debug=True)
    ids = {}

    def signin():
        r = api(f.port, "GET", CACHES)
        expect_api_error(r, 401, "UNAUTHORIZED")
        expect_eq(r.header("WWW-Authenticate"), 'Basic realm="content-cache front"', "challenge")
        expect_api_error(api(f.port, "GET", CACHES, creds=("alice", "wrong")), 401, "UNAUTHORIZED")
        expect_api_error(api(f.port, "GET", CACHES, creds=("mallory", "x")), 401, "UNAUTHORIZED")
        r = api(f.port, "GET", CACHES, creds=BOB)
        expect_eq((r.status, r.json()), (200, []), "bob lists no cache yet")
        before = origin.count(method="GET", uri="/v2/")
        for _ in range(5):
            h.expect_status(api(f.port, "GET", CACHES, creds=BOB), 200)
        expect_eq(h.settle(lambda: origin.count(method="GET", uri="/v2/")), before,
                  "GET /v2/ at the origin for bob's next requests (his credentials are "
                  "remembered)")

    run.check("without credentials, or with refused ones, 401 with a Basic challenge; a user "
              "the origin accepts is signed in, asked once", signin)

    def register():
        doc = {"name": "region-us", "host": "http://127.0.0.1:5101"}
        expect_api_error(api(f.port, "POST", CACHES, creds=ALICE, doc=doc), 403, "DENIED")
        r = api(f.port, "POST", CACHES, creds=ADMIN, doc=doc)
        h.expect_status(r, 201)
        got = r.json()
        expect_eq((got["name"], got["host"]), ("region-us", "http://127.0.0.1:5101"), "the body")
        expect(isinstance(got["id"], str) and got["id"], "an id: %r" % got)
        expect_eq(r.header("Location"), "%s/%s" % (CACHES, got["id"]), "Location")
        ids["region-us"] = got["id"]
        r = api(f.port, "POST", CACHES, creds=ADMIN,
                doc={"name": "region-eu", "host": "http://127.0.0.1:5102/"})
        h.expect_status(r, 201)
        expect_eq(r.json()["host"], "http://127.0.0.1:5102", "the host, without its last '/'")
        ids["region-eu"] = r.json()["id"]
        expect_api_error(api(f.port, "POST", CACHES, creds=ADMIN, doc=doc), 409,
                         "ALREADY_EXISTS", "name")
        for bad, field in (({"name": "bad name!", "host": "http://x:1"}, "name"),
                           ({"name": "", "host": "http://x:1"}, "name"),
                           ({"name": "a" * 65, "host": "http://x:1"}, "name"),
                           ({"host": "http://x:1"}, "name"),
                           ({"name": "ok", "host": "ftp://x:1"}, "host"),
                           ({"name": "ok", "host": "http://u:p@x:1"}, "host"),
                           ({"name": "ok", "host": 5}, "host"),
                           ({"name": "ok"}, "host")):
            expect_api_error(api(f.port, "POST", CACHES, creds=ADMIN, doc=bad), 400,
                             "INVALID_PARAMETER", field)
        r = h.request(f.port, "POST", CACHES, body=b"name=x",
                      headers={"Authorization": h.basic_auth(*ADMIN)})
        expect_api_error(r, 400, "INVALID_JSON")
        r = h.request(f.port, "POST", CACHES, body=b"[" + b"1," * 40_000 + b"1]",
                      headers={"Authorization": h.basic_auth(*ADMIN)})
        expect_api_error(r, 413, "TOO_LARGE")

    run.check("POST: admins only (403), 201 with id, name and host, 409 for a duplicate, 400 "
              "naming the field, 413 past 64 KiB", register)

    def list_and_get():
        r = api(f.port, "GET", CACHES, creds=BOB)
        h.expect_status(r, 200)
        expect_eq([(c["id"], c["name"]) for c in r.json()],
                  [(ids["region-us"], "region-us"), (ids["region-eu"], "region-eu")], "the list")
        r = api(f.port, "GET", "%s/%s" % (CACHES, ids["region-eu"]), creds=ALICE)
        expect_eq((r.status, r.json()["name"]), (200, "region-eu"), "one cache")
        expect_api_error(api(f.port, "GET", CACHES + "/999", creds=ALICE), 404, "NOT_FOUND")
        expect_api_error(api(f.port, "GET", CACHES + "/x1", creds=ALICE), 404, "NOT_FOUND")
        r = api(f.port, "PATCH", CACHES, creds=ADMIN)
        expect_api_error(r, 405, "UNSUPPORTED")
        expect_eq(r.header("Allow"), "GET, POST", "Allow")
        expect_api_error(api(f.port, "GET", "/api/v0/nothing", creds=ADMIN), 404, "NOT_FOUND")

    run.check("GET of the list and of one cache for any signed-in user; 404, 405 with Allow",
              list_and_get)

    def user_settings():
        r = api(f.port, "GET", settings("alice"), creds=ALICE)
        expect_eq((r.status, r.json()), (200, {"contentCache": None}), "alice has none yet")
        r = api(f.port, "PUT", settings("alice"), creds=ALICE, doc={"contentCache": "region-us"})
        expect_eq((r.status, r.json()), (200, {"contentCache": "region-us"}), "alice chooses")
        expect_api_error(api(f.port, "GET", settings("alice"), creds=BOB), 403, "DENIED")
        expect_api_error(api(f.port, "PUT", settings("alice"), creds=BOB,
                             doc={"contentCache": None}), 403, "DENIED")
        r = api(f.port, "PUT", settings("bob"), creds=ADMIN, doc={"contentCache": "region-eu"})
        expect_eq((r.status, r.json()), (200, {"contentCache": "region-eu"}), "an admin sets bob's")
        expect_api_error(api(f.port, "PUT", settings("bob"), creds=BOB,
                             doc={"contentCache": "region-mars"}), 400, "INVALID_PARAMETER",
                         "contentCache")
        expect_api_error(api(f.port, "PUT", settings("bob"), creds=BOB, doc={"other": 1}), 400,
                         "INVALID_PARAMETER", "contentCache")
        r = api(f.port, "GET", settings("bob"), creds=BOB)
        expect_eq(r.json(), {"contentCache": "region-eu"}, "bob's, unchanged by the refusals")
        r = api(f.port, "GET", "/api/v0/accounts/alice", creds=ALICE)
        expect_eq((r.status, r.json()), (200, {"name": "alice", "isAdmin": False}), "alice")
        r = api(f.port, "GET", "/api/v0/accounts/admin", creds=ADMIN)
        expect_eq(r.json(), {"name": "admin", "isAdmin": True}, "the admin")
        expect_api_error(api(f.port, "GET", "/api/v0/accounts/alice", creds=BOB), 403, "DENIED")
        # The profile page asks for credentials itself: no challenge for it.
        r = h.request(f.port, "GET", CACHES, headers={"X-Content-Cache-UI": "1"})
        expect_eq((r.status, r.header("WWW-Authenticate")), (401, None), "the page's 401")

    run.check("settings: the user or an admin reads and writes them (403 otherwise), 400 for an "
              "unknown cache; an account says whether it is an admin", user_settings)

    def every_loop_sees_a_change():
        # Each request is a connection of its own, spread over the front's loops by the
        # kernel (SO_REUSEPORT): a choice answered on one loop is read on any other.
        expect_eq(f.workers, h.DEFAULT_WORKERS, "the front's loops")
        for i in range(24):
            name = "region-us" if i % 2 else "region-eu"
            r = api(f.port, "PUT", settings("carol"), creds=ADMIN, doc={"contentCache": name})
            expect_eq((r.status, r.json()), (200, {"contentCache": name}), "PUT %d" % i)
            r = api(f.port, "GET", settings("carol"), creds=ADMIN)
            expect_eq(r.json(), {"contentCache": name}, "GET right after PUT %d" % i)
        r = api(f.port, "PUT", settings("carol"), creds=ADMIN, doc={"contentCache": None})
        h.expect_status(r, 200)

    run.check("with several loops, a change answered on one is read at once on every loop",
              every_loop_sees_a_change)

    def one_process():
        metrics = f.metrics()
        expect_eq(metrics.get("content_cache_loops"), float(h.DEFAULT_WORKERS),
                  "content_cache_loops")
        # (PUT, POST and DELETE are counted as method="other")
        puts = sum(v for k, v in metrics.items()
                   if k.startswith('content_cache_http_requests_total{method="other"'))
        expect(puts >= 25, "/metrics counts %d PUTs over the loops, at least 25 were answered"
               % puts)
        per_loop = {k: v for k, v in metrics.items()
                     if k.startswith("content_cache_loop_requests_total{")}
        expect_eq(len(per_loop), h.DEFAULT_WORKERS, "loops in content_cache_loop_requests_total")
        if h.DEFAULT_WORKERS > 1:
            expect(all(v > 0 for v in per_loop.values()),
                   "every loop answered some of the requests: %r" % per_loop)
        os.kill(f.proc.pid, signal.SIGHUP)
        for loop in range(h.DEFAULT_WORKERS):
            h.wait_until(lambda loop=loop: any(
                "policies reloaded on loop %d" % loop in line
                for line in h.read_lines(f.stderr_path)), h.LOG_TIMEOUT,
                "the front's loop %d to reload its policies" % loop)

    run.check("the front's loops are one process: one /metrics, SIGHUP reaches every loop",
              one_process)

    def delete():
        path = "%s/%s" % (CACHES, ids["region-eu"])
        expect_api_error(api(f.port, "DELETE", path, creds=BOB), 403, "DENIED")
        r = api(f.port, "DELETE", path, creds=ADMIN)
        expect_eq((r.status, r.body), (204, b""), "DELETE")
        r = api(f.port, "GET", settings("bob"), creds=BOB)
        expect_eq(r.json(), {"contentCache": None}, "bob falls back to no cache")
        expect_api_error(api(f.port, "DELETE", path, creds=ADMIN), 404, "NOT_FOUND")
        r = api(f.port, "POST", CACHES, creds=ADMIN,
                doc={"name": "region-eu", "host": "http://127.0.0.1:5103"})
        h.expect_status(r, 201)
        expect(int(r.json()["id"]) > int(ids["region-eu"]), "an id is never reused")
        ids["region-eu"] = r.json()["id"]

    run.check("DELETE: admins only, 204, its users fall back to no cache, 404 after", delete)

    def survives_restart_and_kill():
        f.stop()
        f.stopped = False
        f.start()
        r = api(f.port, "GET", settings("alice"), creds=ALICE)
        expect_eq(r.json(), {"contentCache": "region-us"}, "alice's choice after a restart")
        r = api(f.port, "PUT", settings("bob"), creds=BOB, doc={"contentCache": "region-eu"})
        h.expect_status(r, 200)
        f.kill()  # kill -9 right after the answer
        f.stopped = False
        f.start()
        r = api(f.port, "GET", settings("bob"), creds=BOB)
        expect_eq(r.json(), {"contentCache": "region-eu"}, "bob's choice after kill -9")
        # A burst of changes from several clients, killed in the middle.
        users = ["user%d" % i for i in range(20)]

        def change(i):
            return lambda: api(f.port, "PUT", settings(users[i]), creds=ADMIN,
                               doc={"contentCache": "region-us" if i % 2 else "region-eu"})

        done = h.background(lambda: h.parallel([change(i) for i in range(20)],
                                               h.CLIENT_TIMEOUT))
        import time
        time.sleep(0.05)
        f.kill()
        try:
            done(h.CLIENT_TIMEOUT)
        except Exception:
            pass  # requests cut by the kill
        db = os.path.join(f.storage, "front", "state.db")
        out = subprocess.run(["sqlite3", db, "PRAGMA integrity_check;"], capture_output=True,
                             text=True, timeout=h.CLIENT_TIMEOUT)
        expect_eq(out.stdout.strip(), "ok", "SQLite's integrity check after kill -9")
        f.stopped = False
        f.start()
        r = api(f.port, "GET", CACHES, creds=ALICE)
        expect_eq(sorted(c["name"] for c in r.json()), ["region-eu", "region-us"],
                  "the caches after the kill")

    run.check("the state survives a restart and kill -9 (after a change, and in the middle of "
              "a burst of them)", survives_restart_and_kill)

    # ---- Token auth ------------------------------------------------------------------
    tokens = TokenAuth(work, {u: {"password": PASSWORDS[u], "grants": {}} for u in PASSWORDS})
    token_origin = run.origin(name="token-origin", extra_yaml=tokens.yaml())
    tf = front(run, token_origin, name="token-front")
    local = front(run, token_origin, name="local-front", extra_yaml=tokens.yaml())

    def with_token_auth():
        r = api(tf.port, "GET", CACHES, creds=ALICE)
        expect_eq(r.status, 200, "alice's Basic credentials, checked at the origin's realm")
        expect_api_error(api(tf.port, "GET", CACHES, creds=("alice", "wrong")), 401,
                         "UNAUTHORIZED")
        token = tokens.token(ALICE)
        r = api(tf.port, "GET", settings("alice"), bearer=token)
        expect_eq(r.status, 200, "alice's bearer token, accepted by the origin")
        expect_api_error(api(tf.port, "GET", settings("bob"), bearer=token), 403, "DENIED")
        expect_api_error(api(tf.port, "GET", CACHES, bearer="not.a.token"), 401, "UNAUTHORIZED")
        # With auth.token the front verifies tokens itself: no request to the origin.
        before = token_origin.count(method="GET", uri="/v2/")
        r = api(local.port, "GET", settings("alice"), bearer=tokens.token(ALICE))
        expect_eq(r.status, 200, "a token verified by the front itself")
        forged = tokens.ts.sign_jwt(tokens.ts.load_key(tokens.ts.make_key_and_cert(
            work.sub("rogue"), "rogue", "rsa")[0]), tokens.ts.claims_for(
                tokens.ISSUER, tokens.SERVICE, "alice", []), kid=True)
        expect_api_error(api(local.port, "GET", settings("alice"), bearer=forged), 401,
                         "UNAUTHORIZED")
        expect_eq(h.settle(lambda: token_origin.count(method="GET", uri="/v2/")), before,
                  "GET /v2/ at the origin for the tokens the front verified")

    run.check("with token auth: Basic credentials checked at the realm, bearer tokens accepted; "
              "with auth.token the front verifies them itself", with_token_auth)


if __name__ == "__main__":
    h.main("front_api", body)
