"""Test images for the e2e tests (re-exported by harness.py): deterministic OCI image
layouts, pushed to and pulled from registries with skopeo, and checked byte for byte."""

import gzip
import io
import json
import os
import random
import shutil
import subprocess
import tarfile

from e2e_base import (CLIENT_TIMEOUT, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST,
                      sha256_digest, sha256_file)

__all__ = [
    "make_layer", "random_layers", "Image", "make_oci_layout", "make_index_layout",
    "ClientError", "skopeo",
    "push", "pull", "verify_pulled",
]


# --- Images: OCI layouts ----------------------------------------------------------------

def make_layer(size, seed):
    """A deterministic gzip'd tar layer holding one file of `size` pseudo-random bytes.
    Same (size, seed), same bytes: gzip's mtime is 0 and tar headers are fixed."""
    payload = random.Random(seed).randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("layer-%d.bin" % seed)
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def random_layers(sizes, seed=1):
    """Layers of the given payload sizes, seeded seed, seed+1, ..."""
    return [make_layer(size, seed + i) for i, size in enumerate(sizes)]


class Image:
    """What make_oci_layout wrote: the layout dir and tag, the manifest (bytes and
    digest), the config, and the layers (digest, size, bytes) in manifest order."""

    def __init__(self, layout, tag, manifest_bytes, config_bytes, layers):
        self.layout = layout
        self.tag = tag
        self.manifest_bytes = manifest_bytes
        self.manifest_digest = sha256_digest(manifest_bytes)
        self.config_bytes = config_bytes
        self.config_digest = sha256_digest(config_bytes)
        self.layers = [(sha256_digest(b), len(b), b) for b in layers]

    @property
    def layer_digests(self):
        return [d for d, _, _ in self.layers]

    def blobs(self):
        """{digest: bytes} of the config and every layer."""
        out = {self.config_digest: self.config_bytes}
        for d, _, b in self.layers:
            out[d] = b
        return out

    def blob_path(self, digest):
        return os.path.join(self.layout, "blobs", "sha256", digest.split(":", 1)[1])


def _write_blob(layout, data):
    digest = sha256_digest(data)
    path = os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return digest


def _canonical_json(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def make_oci_layout(layout, layers, tag="latest", labels=None):
    """Writes an OCI image layout at `layout` (created if needed) holding one image,
    tagged `tag`, whose layers are the given gzip'd tar blobs (see make_layer) in order.
    Returns an Image. Pushed with `push` (skopeo --preserve-digests), the image keeps
    exactly these bytes: its manifest digest at the origin is image.manifest_digest."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    diff_ids = []
    for blob in layers:
        raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        diff_ids.append(sha256_digest(raw))
        _write_blob(layout, blob)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": labels or {"org.example.e2e": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "content-cache e2e harness"} for _ in layers],
    }
    config_bytes = _canonical_json(config)
    config_digest = _write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(b), "size": len(b)}
                   for b in layers],
    }
    manifest_bytes = _canonical_json(manifest)
    manifest_digest = _write_blob(layout, manifest_bytes)
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        index["manifests"] = [m for m in index["manifests"]
                              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    })
    with open(index_path, "wb") as f:
        f.write(_canonical_json(index))
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return Image(layout, tag, manifest_bytes, config_bytes, layers)


def make_index_layout(layout, tag, platforms):
    """Writes an OCI layout at `layout` whose `tag` is an image index of one image per
    platform: platforms is [(arch, [layer bytes])], each image tagged "plat-<arch>" too,
    all "linux". Pushed with `skopeo copy --all --preserve-digests`, the index keeps its
    bytes. Returns (index bytes, {arch: Image})."""
    images = {arch: make_oci_layout(layout, layers, tag="plat-" + arch)
              for arch, layers in platforms}
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": img.manifest_digest,
                       "size": len(img.manifest_bytes),
                       "platform": {"architecture": arch, "os": "linux"}}
                      for arch, img in images.items()],
    }
    index_bytes = _canonical_json(index)
    digest = _write_blob(layout, index_bytes)
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(_canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
            "mediaType": OCI_INDEX, "digest": digest, "size": len(index_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return index_bytes, images


# --- skopeo ---------------------------------------------------------------------------

class ClientError(AssertionError):
    pass


def _skopeo_env(work):
    """skopeo's environment: no stored login, no machine-wide registries.conf, temporary
    files inside the work directory."""
    env = os.environ.copy()
    auth = work.sub("skopeo-auth.json")
    if not os.path.exists(auth):
        with open(auth, "w") as f:
            f.write('{"auths": {}}\n')
    conf = work.sub("registries.conf")
    if not os.path.exists(conf):
        with open(conf, "w") as f:
            f.write("unqualified-search-registries = []\n")
    env["REGISTRY_AUTH_FILE"] = auth
    env["CONTAINERS_REGISTRIES_CONF"] = conf
    env["TMPDIR"] = work.sub("tmp", mkdir=True)
    return env


def skopeo(work, args, timeout=CLIENT_TIMEOUT, check=True):
    """Runs `skopeo --insecure-policy ARGS`; returns the CompletedProcess (text). With
    check, a non-zero exit raises ClientError with its output."""
    argv = ["skopeo", "--insecure-policy"] + list(args)
    try:
        cp = subprocess.run(argv, env=_skopeo_env(work), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ClientError("skopeo timed out after %.0f s: %s\n%s%s" % (
            timeout, " ".join(argv), e.stdout or "", e.stderr or ""))
    if check and cp.returncode != 0:
        raise ClientError("skopeo exited %d: %s\nstdout:\n%s\nstderr:\n%s" % (
            cp.returncode, " ".join(argv), cp.stdout, cp.stderr))
    return cp


def _creds_args(prefix, creds):
    if creds is None:
        return ["--%s-no-creds" % prefix]
    return ["--%s-creds" % prefix, "%s:%s" % creds]


def _docker_ref(host, repo, ref):
    sep = "@" if ref.startswith("sha256:") else ":"
    return "docker://%s/%s%s%s" % (host, repo, sep, ref)


def push(work, image, registry, repo, tag=None, creds=None):
    """Pushes `image` (an Image) to `registry` (an Origin, or "host:port") as repo:tag
    with skopeo, keeping its bytes (--preserve-digests). creds: (user, password)."""
    host = registry.host if hasattr(registry, "host") else registry
    tag = tag or image.tag
    args = ["copy", "--preserve-digests", "--dest-tls-verify=false"] + _creds_args("dest", creds)
    args += ["oci:%s:%s" % (image.layout, image.tag), _docker_ref(host, repo, tag)]
    return skopeo(work, args)


def pull(work, registry, repo, ref, outdir, creds=None, check=True):
    """Pulls repo:ref (a tag, or a digest) from `registry` (an Origin, a Cache or
    "host:port") into dir:outdir with skopeo. Returns the CompletedProcess."""
    host = registry.host if hasattr(registry, "host") else registry
    if os.path.exists(outdir):
        shutil.rmtree(outdir)
    os.makedirs(outdir)
    args = ["copy", "--src-tls-verify=false"] + _creds_args("src", creds)
    args += [_docker_ref(host, repo, ref), "dir:%s" % outdir]
    return skopeo(work, args, check=check)


def verify_pulled(outdir, image):
    """Compares a dir: pull with the pushed image: the manifest bytes, and every blob's
    presence and sha256. Returns a list of problems ([] when it is identical)."""
    problems = []
    manifest_path = os.path.join(outdir, "manifest.json")
    try:
        with open(manifest_path, "rb") as f:
            got = f.read()
        if got != image.manifest_bytes:
            problems.append("manifest differs: got %s, pushed %s"
                            % (sha256_digest(got), image.manifest_digest))
    except OSError as e:
        problems.append("no manifest.json: %s" % e)
    for digest in [image.config_digest] + image.layer_digests:
        path = os.path.join(outdir, digest.split(":", 1)[1])
        if not os.path.exists(path):
            problems.append("blob %s missing from the pull" % digest)
            continue
        got_digest = sha256_file(path)
        if got_digest != digest:
            problems.append("blob %s has content %s" % (digest, got_digest))
    return problems
