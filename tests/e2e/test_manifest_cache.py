"""End-to-end: manifests by digest from the cache's disk, tags from the origin (issue 17).

With a real origin (Docker Distribution) and real clients:

  * a manifest pulled by tag through the cache is kept as Docker Registry keeps one (a
    blob, repositories/<name>/_manifests/revisions/sha256/<hex>/link, the tag's
    current/link); a GET or HEAD by digest afterwards is served from disk (cache=hit, no
    request at the origin) with Content-Type, Docker-Content-Digest and Content-Length
    exactly as the origin sends them;
  * a tag is always asked of the origin;
  * a multi-platform index and each of its platform manifests, once pulled, come from disk;
  * a second containerd pulling a cached image by tag (`ctr content fetch` through the
    cache as its mirror) makes exactly one request at the origin: the tag (the figure is
    printed: "origin requests for a warm containerd pull: N");
  * a stock `docker-registry serve` on a copy of the cache's root serves a pull of the
    image by tag and by digest, byte for byte.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_manifest_cache.py
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "team/app"


def make_multiplatform(work, name, tag):
    """An OCI layout whose `tag` is an image index of two platform images (amd64, arm64).
    Returns (layout, index bytes, [platform manifest bytes])."""
    layout = work.sub(name)
    index_bytes, images = h.make_index_layout(layout, tag, [
        (arch, h.random_layers([20_000 + i, 30_000 + i], seed=90 + 2 * i))
        for i, arch in enumerate(("amd64", "arm64"))])
    return layout, index_bytes, [img.manifest_bytes for img in images.values()]


def manifest_uri(ref):
    return "/v2/%s/manifests/%s" % (REPO, ref)


def origin_manifest_requests(origin):
    return [e for e in origin.access_log() if "/manifests/" in e["uri"]]


def link(cache, *parts):
    return os.path.join(cache.storage, "docker/registry/v2/repositories", REPO, *parts)


def the_headers(resp):
    return {k: resp.header(k) for k in ("Content-Type", "Docker-Content-Digest",
                                        "Content-Length")}


def body(run):
    work = run.work
    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([30_000, 200_000], seed=17),
                              tag="v1")
    h.push(work, image, origin, REPO, "v1")
    cache = run.cache([origin], debug=True)
    accept = {"Accept": ", ".join([h.OCI_MANIFEST, h.OCI_INDEX,
                                   "application/vnd.docker.distribution.manifest.v2+json",
                                   "application/vnd.docker.distribution.manifest.list.v2+json"])}
    hexd = image.manifest_digest.split(":", 1)[1]

    def pulled_by_tag_is_kept():
        out = work.sub("pull-v1")
        h.pull(work, cache, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "what skopeo pulled through the cache")
        for path in (cache.blob_file(image.manifest_digest),
                     link(cache, "_manifests/revisions/sha256", hexd, "link"),
                     link(cache, "_manifests/tags/v1/current/link")):
            h.wait_until(lambda p=path: os.path.exists(p), h.LOG_TIMEOUT, path)
        with open(cache.blob_file(image.manifest_digest), "rb") as f:
            expect_eq(f.read(), image.manifest_bytes, "the manifest kept as a blob")
        with open(link(cache, "_manifests/tags/v1/current/link")) as f:
            expect_eq(f.read(), image.manifest_digest, "the tag's current link")

    def by_digest_from_disk():
        before = len(origin_manifest_requests(origin))
        direct_get = h.request(origin.port, "GET", manifest_uri(image.manifest_digest),
                               headers=accept)
        direct_head = h.request(origin.port, "HEAD", manifest_uri(image.manifest_digest),
                                headers=accept)
        h.wait_for_count(lambda: len(origin_manifest_requests(origin)), before + 2)
        before = len(origin_manifest_requests(origin))
        for method, direct in (("GET", direct_get), ("HEAD", direct_head)):
            r = h.request(cache.port, method, manifest_uri(image.manifest_digest), headers=accept)
            h.expect_status(r, 200)
            expect_eq(the_headers(r), the_headers(direct), "%s headers, cache vs origin" % method)
            if method == "GET":
                expect_eq(r.body, image.manifest_bytes, "the manifest's bytes")
        h.wait_until(lambda: cache.count_access(uri=manifest_uri(image.manifest_digest),
                                                cache="hit") >= 2,
                     h.LOG_TIMEOUT, "two hits in the access log")
        expect_eq(h.settle(lambda: len(origin_manifest_requests(origin))), before,
                  "manifest requests at the origin for the two by-digest requests")

    def tag_always_asked():
        before = len(origin_manifest_requests(origin))
        r = h.request(cache.port, "GET", manifest_uri("v1"), headers=accept)
        h.expect_status(r, 200)
        expect_eq(r.body, image.manifest_bytes, "the manifest by tag")
        h.wait_for_count(lambda: len(origin_manifest_requests(origin)), before + 1)

    run.check("a manifest pulled by tag is kept as a registry keeps it (blob, revision link, "
              "the tag's current link)", pulled_by_tag_is_kept)
    run.check("by digest it is then served from disk, headers exactly as the origin's, no "
              "origin request", by_digest_from_disk)
    run.check("a tag is always asked of the origin", tag_always_asked)

    # A multi-platform index.
    layout, index_bytes, platform = make_multiplatform(work, "multi", "multi")
    h.skopeo(work, ["copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                    "--dest-no-creds", "oci:%s:multi" % layout,
                    "docker://%s/%s:multi" % (origin.host, REPO)])
    index_digest = h.sha256_digest(index_bytes)

    def index_and_platforms_from_disk():
        digests = [index_digest] + [h.sha256_digest(m) for m in platform]
        bodies = [index_bytes] + platform
        # The first time through the cache, from the origin ...
        for d, b in zip(digests, bodies):
            r = h.request(cache.port, "GET", manifest_uri(d), headers=accept)
            h.expect_status(r, 200)
            expect_eq(r.body, b, "manifest %s" % d)
            h.wait_until(lambda d=d: os.path.exists(cache.blob_file(d)), h.LOG_TIMEOUT,
                         "%s kept" % d)
        before = len(origin_manifest_requests(origin))
        # ... then from disk, each with the origin's headers.
        for d, b in zip(digests, bodies):
            direct = h.request(origin.port, "HEAD", manifest_uri(d), headers=accept)
            r = h.request(cache.port, "GET", manifest_uri(d), headers=accept)
            h.expect_status(r, 200)
            expect_eq(r.body, b, "manifest %s from disk" % d)
            expect_eq(r.header("Content-Type"), direct.header("Content-Type"),
                      "Content-Type of %s" % d)
            expect_eq(r.header("Docker-Content-Digest"), d, "Docker-Content-Digest")
        h.wait_until(lambda: all(cache.count_access(uri=manifest_uri(d), cache="hit") >= 1
                                 for d in digests), h.LOG_TIMEOUT, "hits for every manifest")
        expect_eq(h.settle(lambda: len(origin_manifest_requests(origin))), before + len(digests),
                  "origin requests: only the test's own HEADs")

    run.check("a multi-platform index and its platform manifests are served from disk",
              index_and_platforms_from_disk)

    def registry_serves_a_copy():
        # Every blob of the image went through the cache: config and layers by skopeo's pull.
        for d in [image.config_digest] + image.layer_digests:
            h.wait_until(lambda d=d: os.path.exists(cache.blob_file(d)), h.LOG_TIMEOUT,
                         "%s stored" % d)
            h.wait_until(lambda d=d: os.path.exists(link(cache, "_layers/sha256",
                                                         d.split(":", 1)[1], "link")),
                         h.LOG_TIMEOUT, "%s linked" % d)
        copy = work.sub("root-copy")
        shutil.copytree(cache.storage, copy, symlinks=True)
        registry = h.Origin(work, name="from-copy")
        registry.storage = copy
        run.origins.append(registry)
        registry.start()
        out = work.sub("pull-from-copy")
        h.pull(work, registry, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "what docker-registry served from the copy")
        out2 = work.sub("pull-from-copy-digest")
        h.pull(work, registry, REPO, image.manifest_digest, out2)
        expect_eq(h.verify_pulled(out2, image), [], "the same by digest")
        registry.stop()

    run.check("a stock docker-registry serve on a copy of the cache's root serves the image",
              registry_serves_a_copy)

    # A warm containerd pull, by a second containerd.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_containerd import Containerd, ContainerdUnavailable, write_hosts
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        run.skip("warm containerd pull", "containerd is not installed")
        return
    daemons = []
    try:
        try:
            c1 = Containerd(work, "containerd1").start()
            daemons.append(c1)
            c2 = Containerd(work, "containerd2").start()
            daemons.append(c2)
        except ContainerdUnavailable as e:
            run.skip("warm containerd pull", "containerd cannot run here: %s" % e)
            return
        hosts = write_hosts(work, "hosts", origin, cache.url, ["pull", "resolve"])
        image2 = h.make_oci_layout(work.sub("layout2"),
                                   h.random_layers([40_000, 90_000], seed=23), tag="v2")
        h.push(work, image2, origin, REPO, "v2")
        ref = "%s/%s:v2" % (origin.host, REPO)

        def warm_pull_one_origin_request():
            c1.fetch(hosts, ref)  # cold: through the cache to the origin
            for d in [image2.config_digest] + image2.layer_digests:
                h.wait_until(lambda d=d: os.path.exists(cache.blob_file(d)), h.LOG_TIMEOUT,
                             "%s stored" % d)
            settled = h.settle(lambda: len(origin.access_log()))
            c2.fetch(hosts, ref)  # warm: another machine
            after = origin.access_log()[settled:]
            h.settle(lambda: len(origin.access_log()))
            after = origin.access_log()[settled:]
            print("origin requests for a warm containerd pull: %d (%s)" % (
                len(after), ", ".join("%s %s %d" % (e["method"], e["uri"], e["status"])
                                      for e in after)), flush=True)
            for d in [image2.config_digest] + image2.layer_digests:
                expect(c2.has(d), "containerd2 has %s" % d)
            expect_eq([(e["method"], e["uri"].split("?")[0]) for e in after],
                      [("HEAD", manifest_uri("v2"))], "the origin's requests of the warm pull")

        run.check("a warm containerd pull by tag makes one origin request: the tag",
                  warm_pull_one_origin_request)
    finally:
        for d in daemons:
            d.stop()


if __name__ == "__main__":
    h.main("test_manifest_cache", body)
