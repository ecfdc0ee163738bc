"""The front (content-cache's registry side, a contentcaches middleware) for the e2e
tests: a Front is a Cache (harness.py) whose config names the contentcaches middleware,
so it starts, stops, is killed and reads its logs the same way, and a Run stops it and
checks its exit like any cache (register it with `run.caches.append`, or use
`front(run, ...)`)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

__all__ = ["Front", "front", "api", "TokenAuth", "count_requests"]


class Front(h.Cache):
    """content-cache as the front before `origin` (an Origin or a URL).

    admins: user names that may register caches; account: (username, password) of the
    front's pull-only account at the origin, or None; granttl: "5m" or None;
    extra_options: more lines under the contentcaches options (8 spaces); policydir.
    A front serves with `workers` loops as a cache does (harness.DEFAULT_WORKERS: 2).
    """

    def __init__(self, work, origin, name="front", admins=("admin",), account=None,
                 granttl=None, extra_options="", policydir=None, **kwargs):
        super().__init__(work, [origin], name=name, **kwargs)
        self.origin = origin
        self.admins = list(admins)
        self.account = account
        self.granttl = granttl
        self.extra_options = extra_options
        self.policydir = policydir

    def config_text(self, port):
        origin = self.origin.url if hasattr(self.origin, "url") else self.origin
        lines = [
            "version: 0.1",
            "log:",
            "  level: %s" % self.log_level,
            "storage:",
            "  filesystem:",
            "    rootdirectory: %s" % json.dumps(self.storage),
            "http:",
            "  addr: 127.0.0.1:%d" % port,
        ]
        if self.debug_port is not None:
            lines += ["  debug:", "    addr: 127.0.0.1:%d" % self.debug_port]
        lines += [
            "middleware:",
            "  registry:",
            "    - name: contentcaches",
            "      options:",
            "        originhost: %s" % json.dumps(origin),
            "        admins: %s" % json.dumps(self.admins),
        ]
        if self.account:
            lines += ["        username: %s" % json.dumps(self.account[0]),
                      "        password: %s" % json.dumps(self.account[1])]
        if self.granttl:
            lines.append("        granttl: %s" % self.granttl)
        if self.policydir:
            lines.append("        policydir: %s" % json.dumps(self.policydir))
        if self.workers:
            lines.append("        workers: %d" % self.workers)
        return "\n".join(lines) + "\n" + self.extra_options + self.extra_yaml


def front(run, origin, start=True, **kwargs):
    """A Front made for `run` (stopped and checked at its end like its caches)."""
    f = Front(run.work, origin, **kwargs)
    run.caches.append(f)
    return f.start() if start else f


def api(port, method, path, creds=None, doc=None, bearer=None, timeout=h.HTTP_TIMEOUT):
    """One request to the caches API: HTTP Basic creds (user, password) or a bearer
    token, a JSON body doc. Returns the harness Response."""
    headers = {}
    if creds:
        headers["Authorization"] = h.basic_auth(*creds)
    if bearer:
        headers["Authorization"] = "Bearer " + bearer
    body = None
    if doc is not None:
        body = json.dumps(doc).encode()
        headers["Content-Type"] = "application/json"
    return h.request(port, method, path, headers=headers, body=body, timeout=timeout)


# --- An origin with token auth (tests/e2e/token_server.py) ------------------------------

class TokenAuth:
    """A token server of the test's own (keys made now) and the `auth.token` section an
    origin (and the front) use with it. users: {name: {"password", "grants": {repo:
    [actions]}}}."""

    SERVICE = "content-cache-e2e"
    ISSUER = "content-cache-e2e-issuer"

    def __init__(self, work, users):
        import token_server as ts  # needs python3-cryptography (install-deps.sh)
        self.ts = ts
        self.work = work
        pki = work.sub("pki", mkdir=True)
        self.key_path, self.cert_path = ts.make_key_and_cert(pki, "issuer", "rsa")
        self.key = ts.load_key(self.key_path)
        users_path = work.write("token-users.json", json.dumps(users), mode=0o600)
        self.issued_path = work.sub("issued-tokens.txt")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "token_server.py")

        def make(port):
            return h.Proc("token-server", [sys.executable, script, "--port", str(port),
                                           "--key", self.key_path, "--issuer", self.ISSUER,
                                           "--service", self.SERVICE, "--users", users_path,
                                           "--issued", self.issued_path],
                          work.sub("token-server.log"), env=h.server_env())

        self.port, self.proc = h._start_server(make, lambda port, proc: h.port_open(port),
                                               "token-server")
        self.realm = "http://127.0.0.1:%d/token" % self.port

    def yaml(self):
        return ("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n"
                "    rootcertbundle: %s\n" % (self.realm, self.SERVICE, self.ISSUER,
                                              self.cert_path))

    def token(self, creds, scopes=()):
        """A token from the realm for creds (user, password) and the given scopes."""
        import urllib.parse
        query = [("service", self.SERVICE)] + [("scope", s) for s in scopes]
        r = h.request(self.port, "GET", "/token?" + urllib.parse.urlencode(query),
                      headers={"Authorization": h.basic_auth(*creds)} if creds else {})
        h.expect_status(r, 200, "token for %s" % (creds[0] if creds else "anonymous"))
        return r.json()["token"]


def count_requests(lines, method, uri_re):
    """How many access-log entries (the origin's access_log() or a Cache's access_lines())
    have this method and a URI matching the regular expression."""
    import re
    rx = re.compile(uri_re)
    n = 0
    for e in lines:
        m = e.get("method") or e.get("http.request.method")
        uri = e.get("uri") or e.get("http.request.uri") or ""
        if m == method and rx.search(uri):
            n += 1
    return n
