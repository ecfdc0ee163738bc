"""Helpers shared by the fault tests (test_faults_upstream.py, test_faults_client.py,
test_crash_restart.py) and the soak (tests/soak/soak.py): fresh blobs, "the cache still
serves a hit and a miss", the storage checks, raw clients that leave early, and a look at
the cache's process (/proc).

The generic blob helpers (write_blob, expect_whole, expect_stored, ...) are those of
test_blob_faults.py, re-exported here so that the fault tests use one namespace (they
belong in the harness; until they move there, this is their one other user).
"""

import itertools
import os
import resource
import socket
import struct
import threading

import harness as h
from harness import background, expect, expect_eq, parallel  # noqa: F401
from test_blob_faults import (access, expect_no_wrong_body, expect_not_stored,  # noqa: F401
                              expect_stored, expect_whole, stderr_lines, wait_tmp_empty,
                              write_blob)

MB = 1 << 20

_seeds = itertools.count(1000)
_seed_lock = threading.Lock()


def fresh_blob(work, size, prefix="fresh"):
    """Writes a blob that no earlier call wrote (a new seed each time); returns
    (path, digest)."""
    with _seed_lock:
        seed = next(_seeds)
    return write_blob(work, "%s-%d.bin" % (prefix, seed), size, seed)


def blob_uri(repo, digest):
    return "/v2/%s/blobs/%s" % (repo, digest)


def last_access(cache, method, uri, before, what):
    """The access-log line of the request made after `before` lines for (method, uri)
    had been written (bounded wait)."""
    h.wait_until(lambda: len(access(cache, method, uri)) > before, h.LOG_TIMEOUT,
                 "the access-log line of %s" % what)
    return access(cache, method, uri)[before]


def expect_hit(cache, uri, digest, size, what="the stored blob"):
    """A GET of a stored blob: the right bytes, logged as a hit."""
    before = len(access(cache, "GET", uri))
    b = h.get_body(cache.port, uri)
    expect_whole(b, digest, size, what)
    line = last_access(cache, "GET", uri, before, what)
    expect_eq(line.get("cache"), "hit", "cache field of %s (%s)" % (what, line["_line"]))


def expect_miss(cache, uri, digest, size, what="a fresh blob"):
    """A GET of a blob the cache never had: the right bytes, logged as a miss, stored."""
    before = len(access(cache, "GET", uri))
    b = h.get_body(cache.port, uri)
    expect_whole(b, digest, size, what)
    line = last_access(cache, "GET", uri, before, what)
    expect_eq(line.get("cache"), "miss", "cache field of %s (%s)" % (what, line["_line"]))
    expect_stored(cache, digest, what)


def expect_serves(cache, repo, hit, new_blob, what):
    """What must hold after every fault: a GET of the stored blob hit = (digest, size)
    is a hit with the right bytes; a GET of new_blob() = (digest, size), a blob the
    upstream has and the cache never saw, is a miss with the right bytes and is stored;
    the temporary directory empties; every stored file holds its digest's bytes."""
    expect_hit(cache, blob_uri(repo, hit[0]), hit[0], hit[1], "%s, then the stored blob" % what)
    d, size = new_blob()
    expect_miss(cache, blob_uri(repo, d), d, size, "%s, then a fresh blob" % what)
    wait_tmp_empty(cache, what)
    expect_store_consistent(cache, what)


def store_problems(cache):
    """Every file under the blob tree that is not a blob's data file holding exactly the
    bytes its name promises, as a list of sentences ([] when the store is consistent)."""
    root = os.path.join(cache.storage, "docker", "registry", "v2", "blobs")
    problems = []
    for dirpath, dirnames, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            parts = rel.split(os.sep)
            if len(parts) != 4 or parts[0] != "sha256" or parts[3] != "data" \
                    or parts[2][:2] != parts[1]:
                problems.append("stray file %s" % rel)
                continue
            got = h.sha256_file(path)
            if got != "sha256:" + parts[2]:
                problems.append("%s holds bytes hashing to %s" % (rel, got))
    return problems


def expect_store_consistent(cache, what):
    problems = store_problems(cache)
    expect(not problems, "%s: the store is not consistent:\n  %s" % (what, "\n  ".join(
        problems[:20])))


# --- Raw clients ----------------------------------------------------------------------

def close_socket(s, reset):
    """Closes a client socket: with a reset (RST, no TIME_WAIT), or plainly."""
    try:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


def request_bytes(method, uri, host="cache"):
    return ("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: e2e-faults\r\n\r\n"
            % (method, uri, host)).encode()


def partial_get(port, uri, body_bytes, reset, timeout=h.HTTP_TIMEOUT):
    """GETs uri, reads the head and at least `body_bytes` of the body (0: just the
    head), then drops the connection. Returns (status, body bytes read)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request_bytes("GET", uri))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("the cache closed before the head: %r" % buf[:200])
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        got = len(rest)
        while got < body_bytes:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        return status, got
    finally:
        close_socket(s, reset)


def proc_status(pid):
    """{field: value} of /proc/PID/status (values as text)."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_kib(pid):
    """The resident set size of a process, KiB (VmRSS)."""
    return int(proc_status(pid)["VmRSS"].split()[0])


def fd_count(pid):
    """How many file descriptors a process has open."""
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_kinds(pid):
    """{"socket": n, "file": n, "other": n}: the open descriptors of a process by kind
    (files are paths: stored blobs, temporary files, logs; other: pipes, eventfds,
    epoll)."""
    kinds = {"socket": 0, "file": 0, "other": 0}
    base = "/proc/%d/fd" % pid
    for name in os.listdir(base):
        try:
            target = os.readlink(os.path.join(base, name))
        except OSError:
            continue  # closed meanwhile
        kind = ("socket" if target.startswith("socket:") else
                "file" if target.startswith("/") else "other")
        kinds[kind] += 1
    return kinds


def raise_nofile(want):
    """Raises this process's soft RLIMIT_NOFILE towards `want` (up to the hard limit);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
