"""Shared constants and small helpers of the e2e harness (see harness.py, which
re-exports everything here): timeouts, logging, digests, bounded waits."""

import hashlib
import os
import threading
import time

__all__ = [
    "log", "binary_path", "binary_available", "sha256_digest", "sha256_file", "tail",
    "WaitTimeout", "wait_until", "settle", "wait_for_count", "SCALE", "START_TIMEOUT",
    "STOP_TIMEOUT", "HTTP_TIMEOUT", "CLIENT_TIMEOUT", "LOG_TIMEOUT", "SETTLE_QUIET",
    "POLL", "REPO_ROOT", "SOURCE_DIR", "OCI_MANIFEST", "OCI_INDEX", "OCI_CONFIG",
    "OCI_LAYER_GZIP", "API_VERSION_HEADER", "API_VERSION", "parallel", "background",
]


# --- Timeouts and conventions ----------------------------------------------------------

SCALE = float(os.environ.get("CC_E2E_TIMEOUT_SCALE", "1") or "1")
START_TIMEOUT = 20.0 * SCALE   # a server must answer this long after it was started
STOP_TIMEOUT = 10.0 * SCALE    # SIGTERM to exit; then SIGKILL
HTTP_TIMEOUT = 10.0 * SCALE    # one HTTP request made by a test
CLIENT_TIMEOUT = 120.0 * SCALE # one skopeo / htpasswd / binary invocation
LOG_TIMEOUT = 10.0 * SCALE     # an access-log line to appear after its response
SETTLE_QUIET = 0.5             # a count is settled when unchanged this long
POLL = 0.05                    # poll interval of every wait

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE_DIR = os.environ.get("CC_SOURCE_DIR") or REPO_ROOT
# The binary reads its built-in policies where they are installed; every content-cache a
# test starts (it inherits this environment) reads the source tree's instead.
os.environ.setdefault("CONTENT_CACHE_BUILTIN_POLICIES", os.path.join(SOURCE_DIR, "policies"))

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"


def log(msg):
    """Prints a timestamped progress line (stdout, flushed, so ctest shows it in order)."""
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def binary_path():
    """The content-cache binary under test: $CC_BINARY, else build/content-cache."""
    return os.environ.get("CC_BINARY") or os.path.join(REPO_ROOT, "build", "content-cache")


def binary_available():
    path = binary_path()
    return os.path.isfile(path) and os.access(path, os.X_OK)


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def tail(path, lines=40):
    """The last `lines` lines of a text file, or a note that it does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "(%s: %s)" % (path, e.strerror)
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


# --- Waiting ---------------------------------------------------------------------------

class WaitTimeout(AssertionError):
    pass


def wait_until(predicate, timeout, what):
    """Polls predicate() until it returns a truthy value, which is returned. Raises
    WaitTimeout naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(POLL)


def settle(fn, quiet=SETTLE_QUIET, timeout=LOG_TIMEOUT):
    """Polls fn() until its value has not changed for `quiet` seconds and returns that
    value; after `timeout` returns the latest value. Use it after wait_for_count when a
    count must not grow any further (e.g. "the origin served this blob exactly once")."""
    deadline = time.monotonic() + timeout
    value = fn()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(POLL)
        now_value = fn()
        if now_value != value:
            value = now_value
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
    return value


def wait_for_count(fn, at_least, timeout=LOG_TIMEOUT, what="a count"):
    """Waits until fn() >= at_least, then until it settles; returns the settled value.
    Raises WaitTimeout if fn() never reaches at_least."""
    wait_until(lambda: fn() >= at_least, timeout, "%s to reach %d" % (what, at_least))
    return settle(fn)


# --- Concurrency -------------------------------------------------------------------------

def parallel(fns, timeout):
    """Runs the callables in threads released together; returns their results in order.
    A callable that raises fails the caller with its exception."""
    results = [None] * len(fns)
    errors = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def one(i):
        try:
            barrier.wait(timeout=timeout)
            results[i] = fns[i]()
        except BaseException as e:  # reported below
            errors[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        raise AssertionError("%d of %d clients still running after %.0f s"
                             % (stuck, len(fns), timeout))
    for e in errors:
        if e is not None:
            raise e
    return results


def background(fn):
    """Starts fn() in a thread; returns a function that joins it (bounded) and returns
    its result."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised by the joiner
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout):
        t.join(timeout)
        if t.is_alive():
            raise AssertionError("a client was still running after %.0f s" % timeout)
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join
