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

__all__ = ["Front", "front", "api"]


class Front(h.Cache):
    """content-cache as the front before `origin` (an Origin or a URL).

    admins: user names that may register caches; account: (username, password) of the
    front's pull-only account at the origin, or None; granttl: "5m" or None;
    extra_options: more lines under the contentcaches options (8 spaces); policydir.
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
