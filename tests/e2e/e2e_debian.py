"""Debian 12 roots for the deployment tests (test_docker_image.py, test_deb_package.py),
made without internet access beyond Debian's mirror.

  minbase_tar()       a tarball of `debootstrap --variant=minbase bookworm`, made once and
                      kept in the cache directory (below) for MAX_AGE; tests only read it
  image_stream()      that tarball as the base images the Dockerfile's FROM lines name:
                      debian:bookworm, and debian:bookworm-slim with what Docker Hub's
                      slim images leave out left out here too (docs, man pages, locales)
  extract()           the tarball unpacked into a fresh root (a chroot)
  mounts_under(), unmount_under()
                      what is mounted below a directory, and unmounting it (deepest
                      first), so that no cleanup ever deletes through a mount

The cache directory is $CC_E2E_CACHE_DIR, else e2e-cache/ beside the binary under test
(the build directory: a fresh clone makes it anew, and `rm -rf build` drops it). The
tarball is written under a temporary name and renamed into place, under a lock, so tests
that run in parallel make it once and never read a partial one. It is safe to keep: the
tests run `apt-get update` on top of it, so a root made days ago still installs today's
packages; its name carries the debootstrap version and the mirror, and it is remade after
MAX_AGE so that the base packages do not drift far from the mirror's.
"""

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import time

from e2e_base import SCALE, binary_path, log

__all__ = ["DEBIAN_MIRROR", "SUITE", "cache_dir", "minbase_tar", "image_stream", "extract",
           "mounts_under", "unmount_under", "DebianRootUnavailable"]

SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("CC_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
MAX_AGE = 7 * 24 * 3600
DEBOOTSTRAP_TIMEOUT = 900 * SCALE


class DebianRootUnavailable(Exception):
    """debootstrap is missing or failed: the sentence says why."""


def cache_dir():
    d = os.environ.get("CC_E2E_CACHE_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(binary_path())), "e2e-cache")
    os.makedirs(d, exist_ok=True)
    return d


# --- Mounts ------------------------------------------------------------------------------

def _unescape_mountinfo(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path):
    """Mount points at or below `path` (from /proc/self/mountinfo), deepest first."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = _unescape_mountinfo(line.split()[4])
                if point == path or point.startswith(path.rstrip("/") + "/"):
                    found.append(point)
    except OSError:
        return []
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(path):
    """Unmounts everything at or below `path`, deepest first (lazily if busy), in up to
    8 rounds (mounts stacked on one point go one per round). Returns the mount points
    that are still there (none, normally)."""
    left = mounts_under(path)
    for _ in range(8):
        if not left:
            break
        for point in left:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
        left = mounts_under(path)
    return left


# --- The minbase root ------------------------------------------------------------------

def _debootstrap_version():
    cp = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"],
                        capture_output=True, text=True)
    return cp.stdout.strip() if cp.returncode == 0 else "unknown"


def _lock(path, timeout):
    f = open(path, "w")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                raise DebianRootUnavailable("%s is still locked after %.0f s (another test "
                                            "making the root?)" % (path, timeout))
            time.sleep(1)


def minbase_tar():
    """The path of the cached minbase tarball, made now if it is missing or too old.
    Raises DebianRootUnavailable with the reason when it cannot be made."""
    if shutil.which("debootstrap") is None:
        raise DebianRootUnavailable("debootstrap is not installed (scripts/install-deps.sh "
                                    "installs it)")
    d = cache_dir()
    key = hashlib.sha256(("%s %s" % (_debootstrap_version(), DEBIAN_MIRROR)).encode()
                         ).hexdigest()[:12]
    path = os.path.join(d, "debian-%s-minbase-%s.tar" % (SUITE, key))
    lock = _lock(os.path.join(d, "debian-%s-minbase.lock" % SUITE), DEBOOTSTRAP_TIMEOUT)
    try:
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            age = None
        if age is not None and age < MAX_AGE:
            log("debian root: cached %s (%.1f h old)" % (path, age / 3600))
            return path
        # Older roots of other keys are stale too.
        for name in os.listdir(d):
            if name.startswith("debian-%s-minbase-" % SUITE) and name.endswith(".tar"):
                os.unlink(os.path.join(d, name))
        root = os.path.join(d, "debootstrap.tmp")
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        # On a tmpfs when one can be mounted: dpkg's fsyncs cost nothing there (about a
        # fifth of the time on a busy disk), and removing the root is an unmount.
        os.makedirs(root)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", root],
                       capture_output=True)
        t0 = time.monotonic()
        log("debian root: debootstrap --variant=minbase %s (%s), about a minute"
            % (SUITE, DEBIAN_MIRROR))
        try:
            cp = subprocess.run(["debootstrap", "--variant=minbase", SUITE, root, DEBIAN_MIRROR],
                                capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT,
                                stdin=subprocess.DEVNULL)
            if cp.returncode != 0:
                raise DebianRootUnavailable(
                    "debootstrap --variant=minbase %s %s exited %d:\n%s" % (
                        SUITE, DEBIAN_MIRROR, cp.returncode,
                        "\n".join((cp.stdout + cp.stderr).splitlines()[-15:])))
            tmp = path + ".tmp"
            subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", tmp, "."], check=True,
                           capture_output=True, timeout=DEBOOTSTRAP_TIMEOUT)
            os.rename(tmp, path)
        except subprocess.TimeoutExpired as e:
            raise DebianRootUnavailable("%s timed out after %.0f s" % (e.cmd[0], e.timeout))
        finally:
            left = unmount_under(root)  # debootstrap mounts /proc and /sys in the root
            if not left:
                shutil.rmtree(root, ignore_errors=True)
        log("debian root: made %s in %.0f s (%.0f MB)"
            % (path, time.monotonic() - t0, os.path.getsize(path) / 1e6))
        return path
    finally:
        lock.close()


def extract(tar_path, dest):
    """Unpacks the tarball into `dest` (created; numeric owners, device nodes kept)."""
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["tar", "-C", dest, "--numeric-owner", "-xpf", tar_path], check=True,
                   capture_output=True, timeout=600 * SCALE)


# --- Base images -------------------------------------------------------------------------

# The configuration Docker Hub's Debian images carry (debuerreotype's minimizing config),
# written here from what it does: dpkg without an fsync per file (an image layer is
# written whole or not at all), and apt without translations.
_IMAGE_FILES = {
    "etc/dpkg/dpkg.cfg.d/docker-apt-speedup": "force-unsafe-io\n",
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
}

# What Docker Hub's -slim images leave out, and the dpkg configuration that keeps it out
# of the packages installed later in the image (so a size measured here compares).
_SLIM_DROP = ("usr/share/doc/", "usr/share/man/", "usr/share/groff/", "usr/share/info/",
              "usr/share/lintian/", "usr/share/linda/", "usr/share/locale/")
_SLIM_KEEP = ("usr/share/locale/locale.alias",)
_SLIM_DPKG_CFG = """\
# The -slim image's exclusions (made by the content-cache e2e tests).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


def _keep(name, slim):
    """Whether a member (its name without the leading ./) goes into the image."""
    # Every image: no downloaded packages, no package lists (the Dockerfile runs
    # apt-get update), no device nodes (the runtime mounts /dev).
    for prefix in ("var/cache/apt/archives/", "var/lib/apt/lists/", "dev/"):
        if name.startswith(prefix) and name not in ("var/cache/apt/archives/partial",
                                                    "var/lib/apt/lists/partial"):
            return False
    if slim:
        if name.startswith(_SLIM_KEEP) or (name.startswith("usr/share/doc/")
                                           and name.endswith("/copyright")):
            return True
        if any(name.startswith(p) and name != p.rstrip("/") for p in _SLIM_DROP):
            # keep the directories themselves, drop what is in them
            return False
    return True


def image_stream(tar_path, out, slim):
    """Writes the minbase tarball to the file object `out` (e.g. `docker import -`'s
    stdin) as a base image: debian:bookworm (less package downloads, lists and device
    nodes, plus _IMAGE_FILES), or, with slim, debian:bookworm-slim (less docs, man pages
    and locales too, with the dpkg configuration that keeps them out of packages
    installed later)."""
    with tarfile.open(tar_path, mode="r|") as src, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if not _keep(name, slim):
                continue
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        files = dict(_IMAGE_FILES)
        if slim:
            files["etc/dpkg/dpkg.cfg.d/docker-slim"] = _SLIM_DPKG_CFG
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            dst.addfile(info, io.BytesIO(data))
