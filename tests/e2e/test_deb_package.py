"""End-to-end: the Debian package, built as README.md ("Deploying", "As a Debian package")
says and installed into a fresh Debian 12 root.

- `scripts/package-deb.sh` (a Release build for /usr with -DCC_DEB=ON, then `cpack -G
  DEB`) gives content-cache_<version>_amd64.deb holding the binary, the built-in
  policies, the systemd unit and /etc/content-cache/config.yml, listed as a conffile,
  with a postinst. The build tree is kept beside the binary under test (deb/), so a
  second run builds only what changed.
- The README's `apt-get install ./content-cache_*.deb` (with -y) in a chroot unpacked
  from the debootstrap root (e2e_debian.py; its `apt-get update` reaches Debian's
  mirror, and apt fetches the runtime libraries from there) installs it with its
  Depends:, which name the package of every library the installed binary links against
  (ldd, then dpkg -S, in the chroot); postinst made the system user content-cache and
  /var/lib/registry (0750); its Installed-Size is the README's (within 10%).
- The README's `content-cache --check /etc/content-cache/config.yml` in the chroot
  accepts the packaged file and reads the policies from /usr/share/content-cache/policies.
- The unit's command line (its ExecStart, as its User=) runs in the chroot with the
  packaged config edited as its comments say (originhost: the test's docker-registry
  on 127.0.0.1; addr: a free port): skopeo pulls an image through it byte for byte
  (cache=miss, the blobs stored as the user content-cache), then again (cache=hit); it
  stops with exit 0 on SIGTERM.
- Reinstalling keeps the edited conffile; `apt-get remove` keeps it, `apt-get purge`
  removes it and keeps the user and /var/lib/registry (postrm says why).

Skipped, with the reason, when not root (chroot, mounts) and when the binary under test
is a sanitizer build (the package holds its own Release build: .ci/run's second pass
would repeat this packaging test, not test memory safety; CC_E2E_DEB=1 runs it anyway).

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_deb_package.py
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_debian as deb  # noqa: E402
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402

REPO = "deb/app"
PACKAGE_TIMEOUT = 900 * h.SCALE
APT_TIMEOUT = 600 * h.SCALE
CONFIG = "/etc/content-cache/config.yml"
UNIT = "/usr/lib/systemd/system/content-cache.service"
# What a root's processes see: no variable of the test's (CONTENT_CACHE_BUILTIN_POLICIES
# above all: the installed binary must find its policies by itself).
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}


def skip_reason():
    if os.geteuid() != 0:
        return "installing into a chroot needs root"
    if os.environ.get("CC_E2E_DEB") != "1":
        cp = subprocess.run(["ldd", h.binary_path()], capture_output=True, text=True)
        if any(lib in cp.stdout for lib in ("libasan", "libubsan", "libtsan")):
            return ("the binary under test is a sanitizer build: the package holds its own "
                    "Release build of the source, so this pass would repeat the plain pass's "
                    "test of the packaging, not test memory safety (CC_E2E_DEB=1 runs it "
                    "anyway)")
    for tool in ("cpack", "dpkg-deb", "dpkg-shlibdeps", "file", "chroot"):
        if shutil.which(tool) is None:
            return "%s is not installed (scripts/install-deps.sh installs it)" % tool
    return None


class Root:
    """A Debian root unpacked from the debootstrap tarball, with /proc mounted and the
    host's resolv.conf (for apt). unmount() undoes the mounts."""

    def __init__(self, path):
        self.path = path

    def make(self):
        deb.extract(deb.minbase_tar(), self.path)
        shutil.copy("/etc/resolv.conf", os.path.join(self.path, "etc", "resolv.conf"))
        subprocess.run(["mount", "-t", "proc", "proc", os.path.join(self.path, "proc")],
                       check=True, capture_output=True)
        return self

    def unmount(self):
        return deb.unmount_under(self.path)

    def file(self, path):
        return os.path.join(self.path, path.lstrip("/"))

    def run(self, argv, timeout=h.CLIENT_TIMEOUT, check=True, userspec=None):
        """Runs argv (a list, or a shell command string) in the root; returns the
        CompletedProcess (text)."""
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        pre = ["chroot"] + (["--userspec=" + userspec] if userspec else []) + [self.path]
        try:
            cp = subprocess.run(pre + list(argv), capture_output=True, text=True,
                                timeout=timeout, env=CHROOT_ENV, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise h.ClientError("timed out after %.0f s in the chroot: %s\n%s%s" % (
                timeout, argv, e.stdout or "", e.stderr or ""))
        if check and cp.returncode != 0:
            raise h.ClientError("exited %d in the chroot: %s\nstdout:\n%s\nstderr:\n%s" % (
                cp.returncode, " ".join(argv), cp.stdout[-3000:], cp.stderr[-3000:]))
        return cp

    def user(self, name):
        """(uid, gid, home, shell) of `name` in the root's /etc/passwd, or None."""
        with open(self.file("/etc/passwd")) as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if parts[0] == name:
                    return int(parts[2]), int(parts[3]), parts[5], parts[6]
        return None


def readme_deb_commands():
    """The commands of README.md's "As a Debian package" paragraph: {"install": the
    apt-get line, "check": the --check line}."""
    with open(os.path.join(h.SOURCE_DIR, "README.md")) as f:
        text = f.read()
    expect("**As a Debian package.**" in text, "README.md has no \"As a Debian package\"")
    section = text.split("**As a Debian package.**", 1)[1].split("\n**", 1)[0]
    expect("scripts/package-deb.sh" in section, "the paragraph names scripts/package-deb.sh")
    lines = [line.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)
             for line in b.splitlines()]
    found = {"install": [x for x in lines if x.startswith("apt-get install ./content-cache_")],
             "check": [x for x in lines if x.startswith("content-cache --check ")]}
    for what, xs in found.items():
        expect_eq(len(xs), 1, "README.md's `%s` command lines" % what)
    return {k: v[0] for k, v in found.items()}


def control_fields(deb_path):
    cp = subprocess.run(["dpkg-deb", "-f", deb_path], capture_output=True, text=True,
                        check=True)
    fields, key = {}, None
    for line in cp.stdout.splitlines():
        if line.startswith(" ") and key:
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def depends_names(depends):
    """The package names of a Depends: field ("a (>= 1), b | c" -> {a, b, c})."""
    names = set()
    for alt in re.split(r"[,|]", depends):
        word = alt.strip().split(" ", 1)[0]
        if word:
            names.add(word)
    return names


class UnitCache(h.Cache):
    """The cache as the installed unit runs it: ExecStart's command line, in the root,
    as the unit's User= and Group= (their ids in the root), serving the packaged config
    edited as an operator does. Its logs and stop are the harness's."""

    def __init__(self, work, root, argv, userspec, origin):
        super().__init__(work, [origin], name="unit-cache",
                         storage=root.file("/var/lib/registry"))
        self.root = root
        self.argv = argv
        self.userspec = userspec
        self.origin = origin

    def edit_config(self, port):
        path = self.root.file(CONFIG)
        with open(path) as f:
            text = f.read()
        for old, new in (("addr: :5000", "addr: 127.0.0.1:%d" % port),
                         ("originhost: https://dtr.example.com",
                          "originhost: " + self.origin.url)):
            expect_eq(text.count(old), 1, "occurrences of %r in the packaged config" % old)
            text = text.replace(old, new)
        with open(path, "w") as f:
            f.write(text)

    def start(self):
        self.port = h.free_port()
        self.edit_config(self.port)
        argv = ["chroot", "--userspec=" + self.userspec, self.root.path] + self.argv
        self.proc = h.Proc(self.name, argv, self.stdout_path, self.stderr_path,
                           env=CHROOT_ENV).start()
        try:
            h.wait_until(lambda: h.port_open(self.port) or not self.proc.alive(),
                         h.START_TIMEOUT, "the unit's command to listen on %d" % self.port)
        except h.WaitTimeout as e:
            raise AssertionError("%s; stderr:\n%s" % (e, h.tail(self.stderr_path)))
        self.check_alive()
        h.log("%s: %s, pid %d on %s" % (self.name, " ".join(argv[3:]), self.proc.pid, self.url))
        return self


def body(run):
    reason = skip_reason()
    if reason:
        run.skip("the Debian package installed and run", reason)
        return
    work = run.work
    t_start = time.monotonic()
    facts = {}

    def build_package():
        build_dir = os.path.join(os.path.dirname(os.path.abspath(h.binary_path())), "deb")
        for old in glob.glob(os.path.join(build_dir, "content-cache_*.deb")):
            os.unlink(old)
        t0 = time.monotonic()
        env = dict(os.environ, CC_BUILD_DIR=build_dir)
        cp = subprocess.run([os.path.join(h.SOURCE_DIR, "scripts", "package-deb.sh")],
                            capture_output=True, text=True, timeout=PACKAGE_TIMEOUT, env=env,
                            cwd=h.SOURCE_DIR, stdin=subprocess.DEVNULL)
        expect_eq(cp.returncode, 0, "scripts/package-deb.sh's exit code; its output ends:\n%s"
                  % "\n".join((cp.stdout + cp.stderr).splitlines()[-30:]))
        debs = glob.glob(os.path.join(build_dir, "content-cache_*_amd64.deb"))
        expect_eq(len(debs), 1, "packages made in %s" % build_dir)
        facts["deb"] = debs[0]
        h.log("  %s: %d bytes, made in %.0f s" % (os.path.basename(debs[0]),
                                                  os.path.getsize(debs[0]),
                                                  time.monotonic() - t0))
        listing = subprocess.run(["dpkg-deb", "-c", debs[0]], capture_output=True, text=True,
                                 check=True).stdout
        paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
        for path in ("/usr/bin/content-cache", "/usr/share/content-cache/policies/default.lua",
                     UNIT, CONFIG, "/usr/share/doc/content-cache/README.md",
                     "/usr/share/doc/content-cache/changelog.gz",
                     "/usr/share/doc/content-cache/examples/grafana/content-cache.json",
                     "/usr/share/doc/content-cache/examples/prometheus/alerts.yml"):
            expect(path in paths, "%s is not in the package" % path)
        control = subprocess.run(["dpkg-deb", "-I", debs[0]], capture_output=True, text=True,
                                 check=True).stdout
        for member in ("conffiles", "postinst", "prerm", "postrm"):
            expect(re.search(r"\s%s\s" % member, control), "no %s in the control archive"
                   % member)
        conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", debs[0]], capture_output=True,
                                   check=True).stdout
        expect(CONFIG.encode() in conffiles, "conffiles does not list %s" % CONFIG)
        facts["control"] = control_fields(debs[0])
        h.log("  Depends: %s" % facts["control"].get("Depends"))

    if run.check("scripts/package-deb.sh: a .deb with the binary, the policies, the unit, the "
                 "examples and %s as a conffile, with maintainer scripts" % CONFIG,
                 build_package) is None:
        return

    root = Root(work.sub("root"))
    try:
        scenario(run, work, root, facts)
    finally:
        left = root.unmount()

        def unmounted():
            expect_eq(left, [], "mounts left under the root")

        run.check("the chroot's mounts are undone", unmounted)
        h.log("test_deb_package: %.0f s in all" % (time.monotonic() - t_start))


def scenario(run, work, root, facts):
    deb_name = os.path.basename(facts["deb"])
    cmds = run.check("README.md has the apt-get install and --check commands",
                     readme_deb_commands)
    if cmds is None:
        return

    def install():
        expect_eq(cmds["install"], "apt-get install ./" + deb_name,
                  "the README's install command for the package made here")
        root.make()
        shutil.copy(facts["deb"], root.file("/tmp/" + deb_name))
        t0 = time.monotonic()
        cp = root.run(["apt-get", "update"], timeout=APT_TIMEOUT, check=False)
        expect_eq(cp.returncode, 0, "apt-get update in the chroot (Debian's mirror, %s) failed:"
                  "\n%s" % (deb.DEBIAN_MIRROR, (cp.stdout + cp.stderr)[-2000:]))
        # The README's command, with -y: no one answers apt's question here.
        command = cmds["install"].replace("apt-get install ", "apt-get install -y ", 1)
        h.log("  # cd /tmp && " + command)
        cp = root.run("cd /tmp && " + command, timeout=APT_TIMEOUT)
        h.log("  apt-get update and install in the chroot: %.0f s; %s" % (
            time.monotonic() - t0, [line for line in cp.stdout.splitlines()
                                    if "newly installed" in line]))
        status = root.run(["dpkg-query", "-W", "-f=${Status} ${Installed-Size}",
                           "content-cache"]).stdout.split()
        expect_eq(status[:3], ["install", "ok", "installed"], "dpkg's status of content-cache")
        facts["installed_kb"] = int(status[3])
        h.log("  Installed-Size: %s KiB" % status[3])
        with open(os.path.join(h.SOURCE_DIR, "README.md")) as f:
            m = re.search(r"Installed, it takes (\d+) KiB", f.read())
        expect(m is not None, "README.md states no installed size (\"Installed, it takes N KiB\")")
        expect(abs(int(m.group(1)) - facts["installed_kb"]) <= facts["installed_kb"] // 10,
               "README.md says %s KiB installed, dpkg says %d KiB" % (m.group(1),
                                                                      facts["installed_kb"]))
        conffiles = root.run(["dpkg-query", "-W", "-f=${Conffiles}", "content-cache"]).stdout
        expect(CONFIG in conffiles, "dpkg's conffiles of content-cache: %r" % conffiles)
        user = root.user("content-cache")
        expect(user is not None, "postinst made no user content-cache")
        uid, gid, home, shell = user
        expect(uid < 1000, "content-cache is not a system user (uid %d)" % uid)
        expect_eq((home, shell), ("/var/lib/registry", "/usr/sbin/nologin"), "home and shell")
        st = os.stat(root.file("/var/lib/registry"))
        expect_eq((st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)), (uid, gid, "0o750"),
                  "/var/lib/registry's owner and mode")
        facts["user"] = (uid, gid)

    if run.check("apt-get install ./%s into a fresh debootstrap root: installed with its "
                 "Depends, conffile registered, system user content-cache and "
                 "/var/lib/registry (0750) made by postinst" % deb_name, install) is None:
        return

    def depends_cover_ldd():
        out = root.run(["ldd", "/usr/bin/content-cache"]).stdout
        libs = re.findall(r"=>\s+(/\S+)", out)
        expect(libs, "ldd found no libraries: %r" % out)
        owners = {}
        for lib in libs:
            real = root.run(["readlink", "-f", lib]).stdout.strip()
            q = root.run(["dpkg", "-S", real], check=False)
            if q.returncode != 0:  # merged /usr: dpkg knows /lib/... for some files
                q = root.run(["dpkg", "-S", real.replace("/usr/lib/", "/lib/", 1)])
            owners[os.path.basename(lib)] = q.stdout.split(":", 1)[0].strip()
        h.log("  libraries -> packages: %r" % owners)
        named = depends_names(facts["control"].get("Depends", ""))
        expect_eq(sorted(set(owners.values()) - named), [],
                  "packages of linked libraries missing from Depends: %s"
                  % facts["control"].get("Depends"))
        for pkg in ("libuv1", "libmbedtls14", "libmbedx509-1", "libmbedcrypto7", "libyaml-0-2",
                    "liblua5.4-0", "passwd"):
            expect(pkg in named, "%s is not in Depends: %s"
                   % (pkg, facts["control"].get("Depends")))

    run.check("Depends names the package of every library the installed binary links "
              "against (ldd and dpkg -S in the root)", depends_cover_ldd)

    def check_config():
        expect_eq(cmds["check"], "content-cache --check " + CONFIG, "the README's --check")
        cp = root.run(shlex.split(cmds["check"]), check=False)
        expect_eq(cp.returncode, 0, "--check %s (stderr: %s)" % (CONFIG, cp.stderr.strip()))
        expect("is valid" in cp.stdout, "--check's output: %r" % cp.stdout)
        expect("upstreams[0]:  origin https://dtr.example.com" in cp.stdout,
               "--check's output: %r" % cp.stdout)
        cp = root.run(["content-cache", "--check", CONFIG], userspec="%d:%d" % facts["user"])
        expect("hooks in force:" in cp.stdout, "--check as content-cache: %r" % cp.stdout)

    run.check("content-cache --check %s accepts the packaged file (as root and as "
              "content-cache), with the installed policies" % CONFIG, check_config)

    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"),
                              h.random_layers([250_000, 900_000], seed=307), tag="v1")
    h.push(work, image, origin, REPO, "v1")
    blobs = [image.config_digest] + image.layer_digests

    def unit_command():
        sec = {}
        cur = None
        with open(root.file(UNIT)) as f:
            for line in f:
                s = line.strip()
                if s.startswith("[") and s.endswith("]"):
                    cur = s[1:-1]
                elif cur == "Service" and "=" in s and not s.startswith("#"):
                    k, _, v = s.partition("=")
                    sec[k] = v
        argv = shlex.split(sec.get("ExecStart", ""))
        expect_eq(argv, ["/usr/bin/content-cache", CONFIG], "the installed unit's ExecStart")
        expect_eq((sec.get("User"), sec.get("Group")), ("content-cache", "content-cache"),
                  "the unit's User= and Group=")
        return argv

    argv = run.check("the installed unit runs /usr/bin/content-cache %s as content-cache"
                     % CONFIG, unit_command)
    if argv is None:
        return
    cache = UnitCache(work, root, argv, "%d:%d" % facts["user"], origin)
    run.caches.append(cache)

    def serves():
        cache.start()
        out = work.sub("pull-1")
        h.pull(work, cache, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "skopeo pull through the unit's command")
        h.wait_until(lambda: all(cache.count_access(method="GET", cache="miss",
                                                    uri="/v2/%s/blobs/%s" % (REPO, d)) == 1
                                 for d in blobs), h.LOG_TIMEOUT, "a cache=miss line per blob")
        for d in blobs:
            st = os.stat(cache.blob_file(d))
            expect_eq((st.st_uid, st.st_gid), facts["user"], "owner of stored blob %s" % d)
        out = work.sub("pull-2")
        h.pull(work, cache, REPO, "v1", out)
        expect_eq(h.verify_pulled(out, image), [], "second pull")
        h.wait_until(lambda: all(cache.count_access(method="GET", cache="hit",
                                                    uri="/v2/%s/blobs/%s" % (REPO, d)) >= 1
                                 for d in blobs), h.LOG_TIMEOUT, "a cache=hit line per blob")
        expect_eq({d: origin.count_blob_gets(d) for d in blobs}, {d: 1 for d in blobs},
                  "GETs of each blob at the origin")
        code = cache.stop()
        expect_eq(code, 0, "exit code on SIGTERM")

    run.check("the unit's command line, as content-cache in the root, with the packaged config "
              "edited: a pull (cache=miss, blobs stored as content-cache), another (cache=hit), "
              "exit 0 on SIGTERM", serves)

    def conffile_kept():
        with open(root.file(CONFIG)) as f:
            edited = f.read()
        expect(origin.url in edited, "the config was not edited before this check")
        root.run("cd /tmp && apt-get install -y --reinstall ./%s" % deb_name,
                 timeout=APT_TIMEOUT)
        with open(root.file(CONFIG)) as f:
            expect_eq(f.read(), edited, "%s after a reinstall" % CONFIG)
        root.run(["apt-get", "remove", "-y", "content-cache"], timeout=APT_TIMEOUT)
        expect(not os.path.exists(root.file("/usr/bin/content-cache")), "the binary after remove")
        with open(root.file(CONFIG)) as f:
            expect_eq(f.read(), edited, "%s after apt-get remove" % CONFIG)
        root.run(["apt-get", "purge", "-y", "content-cache"], timeout=APT_TIMEOUT)
        expect(not os.path.exists(root.file(CONFIG)), "%s after apt-get purge" % CONFIG)
        expect(root.user("content-cache") is not None, "the user after purge")
        expect(os.path.isdir(root.file("/var/lib/registry/docker")), "the blobs after purge")

    run.check("reinstall and remove keep the edited conffile; purge removes it and keeps the "
              "user and /var/lib/registry", conffile_kept)
    h.log("summary: %s, Installed-Size %s KiB" % (deb_name, facts.get("installed_kb")))


if __name__ == "__main__":
    h.main("test_deb_package", body)
