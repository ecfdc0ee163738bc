"""End-to-end: pulls when the origin is down, as the outage policy says (issue 17).

A real origin (Docker Distribution with htpasswd users) and two caches: one with the
built-in policies, one with examples/policies/90-serve-stale-on-outage.lua. While the
origin is up, alice pulls an image through both (by tag and by digest), and mallory (a
wrong password) and an anonymous client are refused by the origin. Then the origin is
stopped and both caches restarted (nothing remembered in memory):

  * the default: a manifest by tag, by digest and a blob each get a clean 503 UNAVAILABLE
    naming the upstream, within a second;
  * the drop-in: skopeo pulls the image by tag and by digest with alice's credentials, byte
    for byte; containerd (`ctr content fetch` through the cache as its mirror, with alice's
    credentials) fetches it by tag and by digest; the access lines say stale=true with an
    age, and content_cache_stale_responses_total counts them;
  * mallory, whom the origin refused, gets nothing: a 401 for the manifest and the blob,
    no byte of either; nor does a client the origin never answered;
  * the answers the cache kept name no credential: the password and the Authorization
    values appear in no file under the storage root.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_outage.py
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "team/app"
ALICE = ("alice", "alice-secret-pw")
MALLORY = ("mallory", "not-the-password")


def manifest_uri(ref):
    return "/v2/%s/manifests/%s" % (REPO, ref)


def blob_uri(digest):
    return "/v2/%s/blobs/%s" % (REPO, digest)


ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                    "application/vnd.docker.distribution.manifest.v2+json"}


def auth(creds):
    return {"Authorization": h.basic_auth(*creds)} if creds else {}


def body(run):
    work = run.work
    origin = run.origin(users={ALICE[0]: ALICE[1]})
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([25_000, 120_000], seed=5),
                              tag="v1")
    h.push(work, image, origin, REPO, "v1", creds=ALICE)
    policydir = work.sub("policies", mkdir=True)
    shutil.copy(os.path.join(h.SOURCE_DIR, "examples/policies/90-serve-stale-on-outage.lua"),
                policydir)
    default = run.cache([origin], name="default")
    stale = run.cache([origin], name="stale", debug=True,
                      extra_downstream_yaml="        policydir: %s\n" % policydir)

    def warm_while_up():
        for c in (default, stale):
            h.pull(work, c, REPO, "v1", work.sub("warm-%s" % c.name), creds=ALICE)
            h.pull(work, c, REPO, image.manifest_digest, work.sub("warm-d-%s" % c.name),
                   creds=ALICE)
            for d in [image.manifest_digest, image.config_digest] + image.layer_digests:
                h.wait_until(lambda d=d, c=c: os.path.exists(c.blob_file(d)), h.LOG_TIMEOUT,
                             "%s stored by %s" % (d, c.name))
            # The origin refuses mallory, and an anonymous client.
            for creds in (MALLORY, None):
                for uri in (manifest_uri("v1"), blob_uri(image.layer_digests[0])):
                    r = h.request(c.port, "GET", uri, headers=dict(ACCEPT, **auth(creds)))
                    h.expect_status(r, 401, "%s's GET %s while the origin is up"
                                    % (creds and creds[0], uri))

    run.check("while the origin is up: alice pulls through both caches, mallory and an "
              "anonymous client are refused", warm_while_up)
    origin.stop()
    # Restarted, the caches remember nothing in memory: every request goes upstream, fails,
    # and what the disk holds (the answers kept as hashes included) is all there is.
    for c in (default, stale):
        c.stop()
        c.stopped = False
        c.start()

    def default_is_503_at_once():
        for uri in (manifest_uri("v1"), manifest_uri(image.manifest_digest),
                    blob_uri(image.layer_digests[0])):
            t0 = time.monotonic()
            r = h.request(default.port, "GET", uri, headers=dict(ACCEPT, **auth(ALICE)))
            took = time.monotonic() - t0
            h.expect_error(r, 503, "UNAVAILABLE")
            expect(origin.url.split("//")[1] in r.body.decode(), "the 503 names the upstream: %r"
                   % r.body)
            expect(took < 1.0 * h.SCALE, "answered in %.2f s" % took)

    run.check("the default policy: a clean 503 UNAVAILABLE naming the upstream within a "
              "second, for a tag, a digest and a blob", default_is_503_at_once)

    def skopeo_pulls_from_what_is_held():
        for ref in ("v1", image.manifest_digest):
            out = work.sub("outage-%s" % ref.replace(":", "-"))
            h.pull(work, stale, REPO, ref, out, creds=ALICE)
            expect_eq(h.verify_pulled(out, image), [], "skopeo's pull of %s" % ref)
        h.wait_until(lambda: any(e.get("stale") == "true" for e in stale.access_lines()),
                     h.LOG_TIMEOUT, "a stale=true access line")
        tagged = [e for e in stale.access_lines() if e.get("stale") == "true"
                  and e.get("http.request.uri", "").startswith(manifest_uri("v1"))]
        expect(tagged and int(tagged[-1]["stale_age"]) >= 0, "the tag's line has its age")
        m = stale.metrics()
        expect(m.get('content_cache_stale_responses_total{kind="manifest"}', 0) >= 2,
               "stale manifests counted: %r" % m)
        expect(m.get('content_cache_stale_responses_total{kind="blob"}', 0) >= 3,
               "stale blobs counted")

    run.check("the drop-in: skopeo pulls the cached image by tag and by digest from disk "
              "(stale=true, its age, a metric)", skopeo_pulls_from_what_is_held)

    def refused_gets_nothing():
        for creds in (MALLORY, None):
            for uri in (manifest_uri("v1"), manifest_uri(image.manifest_digest),
                        blob_uri(image.layer_digests[0]), blob_uri(image.config_digest)):
                r = h.request(stale.port, "GET", uri, headers=dict(ACCEPT, **auth(creds)))
                who = creds[0] if creds else "anonymous"
                h.expect_status(r, (401, 403), "%s's GET %s during the outage" % (who, uri))
                expect(image.manifest_bytes not in r.body and image.config_bytes not in r.body,
                       "no byte of the image in the refusal")
        # A credential the origin never answered is not served either.
        never = ("alice", "another-password")
        r = h.request(stale.port, "GET", manifest_uri("v1"), headers=dict(ACCEPT, **auth(never)))
        expect(r.status in (401, 503), "a never-answered credential: %r" % r)
        expect(image.manifest_bytes not in r.body, "no manifest for it")
        out = work.sub("mallory-pull")
        cp = h.pull(work, stale, REPO, "v1", out, creds=MALLORY, check=False)
        expect(cp.returncode != 0, "skopeo with mallory's password fails")

    run.check("a user the origin had refused (and one it never answered) gets nothing",
              refused_gets_nothing)

    def no_credential_on_disk():
        words = [ALICE[1].encode(), MALLORY[1].encode(),
                 h.basic_auth(*ALICE).split(" ", 1)[1].encode(),
                 h.basic_auth(*MALLORY).split(" ", 1)[1].encode()]
        for dirpath, _, files in os.walk(stale.storage):
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    data = fh.read()
                for w in words:
                    expect(w not in data, "%s holds a credential" % os.path.join(dirpath, f))
        expect(os.path.exists(os.path.join(stale.storage,
                                           "docker/registry/v2/_content-cache/auth/answers")),
               "the answers file")

    run.check("the answers kept name no credential (hashes only)", no_credential_on_disk)

    # containerd, through the drop-in cache as its mirror, with the origin down.
    from test_containerd import Containerd, ContainerdUnavailable, write_hosts
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        run.skip("containerd during the outage", "containerd is not installed")
        return
    try:
        c = Containerd(work, "containerd-outage").start()
    except ContainerdUnavailable as e:
        run.skip("containerd during the outage", "containerd cannot run here: %s" % e)
        return
    try:
        hosts = write_hosts(work, "hosts", origin, stale.url, ["pull", "resolve"])

        def containerd_pulls_by_tag_and_digest():
            for ref in ("%s/%s:v1" % (origin.host, REPO),
                        "%s/%s@%s" % (origin.host, REPO, image.manifest_digest)):
                c.ctr(["content", "fetch", "--plain-http", "--hosts-dir", hosts,
                       "--user", "%s:%s" % ALICE, ref])
                for d in [image.config_digest] + image.layer_digests:
                    expect(c.has(d), "containerd has %s after fetching %s" % (d, ref))
                    expect_eq(h.sha256_digest(c.get(d)), d, "containerd's copy of %s" % d)
                c.rm([image.config_digest] + image.layer_digests)

        run.check("the drop-in: containerd fetches the cached image by tag and by digest "
                  "through the cache", containerd_pulls_by_tag_and_digest)
    finally:
        c.stop()


if __name__ == "__main__":
    h.main("test_outage", body)
