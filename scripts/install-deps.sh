#!/usr/bin/env bash
# Installs every Debian package that content-cache needs to build, test and demo.
#
#   scripts/install-deps.sh           everything: build, tests, demo, benchmark
#   scripts/install-deps.sh --build   only what building needs (cmake -DCC_TESTS=OFF)
#
# Idempotent and quiet: when all packages are present it prints nothing and touches
# nothing. Otherwise it runs `apt-get update` once and installs only what is missing.
# Must run as root (or with sudo available) on Debian 12.
#
# To add a package for a new test or tool, add it to PACKAGES below, in the group it
# belongs to, with a word on what uses it.
set -euo pipefail

BUILD_PACKAGES=(
    # Build: compiler, CMake, and the libraries the core links against.
    build-essential
    cmake
    pkg-config
    libuv1-dev
    libmbedtls-dev
    libyaml-dev
    liblua5.4-dev
    libsqlite3-dev      # the front's state (core/front/state.c)
    node-llhttp         # llhttp's generated C sources, built in our tree
)

PACKAGES=(
    "${BUILD_PACKAGES[@]}"
    # Policy specs.
    lua5.4
    lua-busted
    lua-dkjson
    lua-filesystem
    # Fuzz targets (tests/fuzz/run.sh): clang, and its runtimes for libFuzzer,
    # AddressSanitizer with LeakSanitizer, and UBSan.
    clang
    libclang-rt-14-dev
    # End-to-end tests and the demo: a real origin registry and real clients.
    docker-registry     # the origin (Docker Distribution 2.8)
    skopeo              # pushes test images to the origin, pulls through the cache
    apache2-utils       # htpasswd, for an origin with Basic auth
    curl
    python3             # tests/e2e harness (standard library only)
    ca-certificates
    # The side-by-side benchmark (bench/run.sh): the peers and the load tools.
    nginx-light         # static-file peer (sendfile, TLS)
    wrk                 # request rates
    openssl             # self-signed certificate for the TLS rows
    procps              # pgrep/ps in bench scripts
    # Later issues: uncomment when a test starts using it.
    python3-cryptography  # token-auth tests: signing JWTs (tests/e2e/token_server.py)
    containerd          # tests/e2e/test_containerd.py: ctr pulls through the cache as a mirror
    sqlite3             # tests/e2e/test_front_api.py: the front's state passes integrity_check
    chromium            # tests/e2e/test_front_page.py: the front's profile page in a real
    chromium-driver     # browser, headless, driven by selenium
    python3-selenium
    # Deployment tests: the image built and run by a real Docker engine, the Debian
    # package installed into a fresh Debian 12 root.
    docker.io           # tests/e2e/test_docker_image.py: dockerd 20.10 and its client
    debootstrap         # test_docker_image.py's base images, test_deb_package.py's root
    file                # scripts/package-deb.sh: cpack's dpkg-shlibdeps step finds ELF files
    prometheus          # tests/e2e/test_dashboards.py: promtool, and a server that scrapes a cache
)

case "${1:-}" in
    --build) PACKAGES=("${BUILD_PACKAGES[@]}") ;; # building only (cmake -DCC_TESTS=OFF)
    "") ;;
    *)
        echo "usage: install-deps.sh [--build]" >&2
        exit 2
        ;;
esac

export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

echo "install-deps: installing ${missing[*]}" >&2

# Packages such as docker-registry ship a system service that their postinst starts.
# Tests run their own registries on their own ports: keep dpkg from starting any
# service (and from failing when there is no init system to start it with). Debian's
# invoke-rc.d asks /usr/sbin/policy-rc.d; exit code 101 means "action forbidden".
POLICY_RC=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY_RC"
    fi
}
trap cleanup EXIT
if [ ! -e "$POLICY_RC" ]; then
    printf '#!/bin/sh\n# Written by content-cache scripts/install-deps.sh while it installs packages.\nexit 101\n' |
        "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY_RC"
    created_policy=1
fi

"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Check again: apt-get may have succeeded without installing everything named.
still_missing=()
for pkg in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        still_missing+=("$pkg")
    fi
done
if [ "${#still_missing[@]}" -ne 0 ]; then
    echo "install-deps: failed to install: ${still_missing[*]}" >&2
    exit 1
fi
echo "install-deps: done" >&2
