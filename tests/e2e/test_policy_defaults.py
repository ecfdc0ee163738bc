"""End-to-end: the policies that run are the Lua files of policies/ (issue 16).

With a real origin (Docker Distribution) and a second content-cache as an upstream cache:

  * an edited copy of the built-in upstream.lua (the origin first) changes which upstream
    serves a chained miss: the shipped one asks the upstream cache, the edited one the
    origin, and the upstream cache never hears of the blob;
  * an edited copy of the built-in logformat.lua runs as Lua (its line shows the edit),
    where the shipped one is the C line (the same line, byte for byte, as the Lua);
  * blobs pulled under two repositories are recorded as Docker Registry records them
    (repositories/<name>/_layers/sha256/<hex>/link), and a drop-in blob_ttl sees them;
  * `expire --dry-run` prints what `expire` then removes, and removes nothing itself;
    `evict --dry-run --bytes N` prints what `evict --bytes N` then removes, in its order.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_policy_defaults.py
"""

import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

POLICIES = os.path.join(h.SOURCE_DIR, "policies")


def builtin_copy(run, name, edits):
    """A copy of policies/ in the work directory with edits {file: (old, new)} applied."""
    path = run.work.sub(name)
    shutil.copytree(POLICIES, path)
    for fname, (old, new) in edits.items():
        fpath = os.path.join(path, fname)
        with open(fpath) as f:
            text = f.read()
        expect(old in text, "%s holds %r" % (fname, old))
        with open(fpath, "w") as f:
            f.write(text.replace(old, new, 1))
    return path


def get_blob(cache, repo, digest, size):
    r = h.request(cache.port, "GET", "/v2/%s/blobs/%s" % (repo, digest))
    h.expect_status(r, 200)
    expect_eq(h.sha256_digest(r.body), digest, "digest of the body")
    expect_eq(len(r.body), size, "length of the body")


def access_upstream(cache, digest):
    """The upstream= of the blob's access line (once it is out)."""
    def line():
        for e in cache.access_lines():
            if digest in e.get("http.request.uri", ""):
                return e
        return None
    h.wait_until(lambda: line() is not None, h.LOG_TIMEOUT, "the access line of %s" % digest)
    return line().get("upstream")


def layer_link(cache, repo, digest):
    return os.path.join(cache.storage, "docker/registry/v2/repositories", repo, "_layers",
                        "sha256", digest.split(":", 1)[1], "link")


def command(cache, *args):
    r = cache.run_binary(list(args))
    expect_eq(r.returncode, 0, "exit code of %s (stderr: %s)" % (" ".join(args), r.stderr))
    return r.stdout


def digests_in(text, verb):
    return re.findall(r"^%s (sha256:[0-9a-f]{64}) " % verb, text, re.M)


def body(run):
    origin = run.origin()
    blobs = {}
    for i, repo in enumerate(["library/debian", "app/web", "app/web", "tools/x", "tools/x"]):
        data = os.urandom(20_000 + 1000 * i)
        blobs["b%d" % i] = (repo, origin.upload_blob(repo, data), len(data))

    upper = run.cache([origin], name="upper")
    shipped = run.cache([{"originhost": origin, "upstreamhosts": [upper]}], name="shipped")
    origin_first = builtin_copy(run, "policies-origin-first", {
        "upstream.lua": ("    order[#order + 1] = upstream.originhost\n    return order",
                         "    table.insert(order, 1, upstream.originhost)\n    return order")})
    edited = run.cache([{"originhost": origin, "upstreamhosts": [upper]}], name="edited",
                       env={"CONTENT_CACHE_BUILTIN_POLICIES": origin_first})

    def chained_miss_by_the_shipped_policy():
        repo, digest, size = blobs["b1"]
        get_blob(shipped, repo, digest, size)
        expect_eq(access_upstream(shipped, digest), upper.url, "upstream of the shipped miss")
        h.wait_for_count(lambda: origin.count_blob_gets(digest), 1)

    def chained_miss_by_the_edited_policy():
        repo, digest, size = blobs["b2"]
        get_blob(edited, repo, digest, size)
        expect_eq(access_upstream(edited, digest), origin.url, "upstream of the edited miss")
        expect_eq(upper.count_access(uri="/v2/%s/blobs/%s" % (repo, digest)), 0,
                  "requests of the blob at the upstream cache")
        expect("select_upstream" not in edited.stderr_text(), "no policy failure logged")

    run.check("an unedited policies/upstream.lua sends a chained miss to the upstream cache",
              chained_miss_by_the_shipped_policy)
    run.check("an edited copy of the built-in upstream.lua (origin first) sends it to the origin",
              chained_miss_by_the_edited_policy)

    # format_log: the shipped file is the C line; an edited one runs as Lua.
    marked = builtin_copy(run, "policies-marked-log", {
        "logformat.lua": ('    add("error", entry.error)\n',
                          '    add("error", entry.error)\n    add("policy", "edited")\n')})
    logged = run.cache([origin], name="logged", env={"CONTENT_CACHE_BUILTIN_POLICIES": marked})

    def edited_logformat_runs_as_lua():
        repo, digest, size = blobs["b0"]
        get_blob(logged, repo, digest, size)
        h.wait_until(lambda: any(e.get("policy") == "edited" for e in logged.access_lines()),
                     h.LOG_TIMEOUT, "an access line with policy=edited")
        expect(not any("policy" in e for e in shipped.access_lines()),
               "the shipped line has no policy= field")

    def shipped_line_is_the_lua_line():
        # The shipped cache wrote its lines in C; the same entry through the Lua file gives
        # the same bytes (tests/unit/test_policy.c holds the twins to each other too).
        line = shipped.access_lines()[0]["_line"]
        expect(line.startswith("time=") and 'msg="response completed"' in line, line)

    run.check("an edited built-in logformat.lua runs as Lua: its lines show the edit",
              edited_logformat_runs_as_lua)
    run.check("the shipped logformat.lua keeps the C line", shipped_line_is_the_lua_line)

    # Repositories, and the dry runs, on a cache with a short blobttl and the base-image
    # TTL example: a layer of library/debian is kept a week, the others expire.
    policydir = run.work.sub("policydir", mkdir=True)
    shutil.copy(os.path.join(h.SOURCE_DIR, "examples/policies/50-base-image-ttl.lua"), policydir)
    store = run.cache([origin], name="store", blobttl="1h",
                      extra_downstream_yaml="        policydir: %s\n" % policydir)

    def pulls_record_the_repositories():
        for name in ("b0", "b1", "b3", "b4"):
            repo, digest, size = blobs[name]
            get_blob(store, repo, digest, size)
        for name in ("b0", "b1", "b3", "b4"):
            repo, digest, _ = blobs[name]
            path = layer_link(store, repo, digest)
            h.wait_until(lambda: os.path.exists(path), h.LOG_TIMEOUT, path)
            with open(path) as f:
                expect_eq(f.read(), digest, "the link's content")
            # (The commit follows the response: the commands below need it done.)
            h.wait_until(lambda: os.path.exists(store.blob_file(digest)), h.LOG_TIMEOUT,
                         "blob %s committed" % digest)

    run.check("each blob is linked in the repository the origin confirmed it in "
              "(repositories/<name>/_layers/sha256/<hex>/link)", pulls_record_the_repositories)
    store.stop()
    # The store as the commands see it, with a blobttl that every blob has outlived.
    store.blobttl = "1ms"
    config = store.write_config()

    def expire_dry_run_then_expire():
        before = store.stored_digests()
        dry = command(store, "expire", config, "--dry-run")
        would = digests_in(dry, "would remove")
        expect_eq(store.stored_digests(), before, "the store after --dry-run")
        debian = blobs["b0"][1]
        expect(debian not in would, "the library/debian layer is kept:\n" + dry)
        expect_eq(sorted(would), sorted(blobs[n][1] for n in ("b1", "b3", "b4")),
                  "what --dry-run would remove:\n" + dry)
        expect(re.search(r"ttl 0s .*repositories app/web\)", dry), "the TTL and why:\n" + dry)
        real = command(store, "expire", config)
        expect_eq(sorted(digests_in(real, "removed")), sorted(would), "what expire removed")
        expect_eq(store.stored_digests(), {debian}, "the store after expire")

    run.check("expire --dry-run prints what expire then removes, and the TTL each got",
              expire_dry_run_then_expire)

    def evict_dry_run_then_evict():
        # Three more blobs, then: what would 45,000 bytes take?
        store.blobttl = None
        config2 = store.write_config()
        store.start()
        for name in ("b1", "b2", "b3"):
            repo, digest, size = blobs[name]
            get_blob(store, repo, digest, size)
            h.wait_until(lambda: os.path.exists(store.blob_file(digest)), h.LOG_TIMEOUT,
                         "blob %s committed" % digest)
        store.stop()
        before = store.stored_digests()
        dry = command(store, "evict", config2, "--dry-run", "--bytes", "45000")
        would = digests_in(dry, "would evict")
        expect_eq(store.stored_digests(), before, "the store after --dry-run")
        expect(len(would) >= 2, "at least two victims for 45,000 bytes:\n" + dry)
        real = command(store, "evict", config2, "--bytes", "45000")
        expect_eq(digests_in(real, "evicted"), would, "what evict removed, in order")
        expect_eq(store.stored_digests(), before - set(would), "the store after evict")

    run.check("evict --dry-run --bytes N prints what evict --bytes N then removes, in order",
              evict_dry_run_then_evict)


if __name__ == "__main__":
    h.main("test_policy_defaults", body)
