#!/usr/bin/env bash
# Builds the Debian package content-cache_<version>_<arch>.deb with CMake's CPack:
# a Release build configured for /usr with -DCC_DEB=ON, then `cpack -G DEB`.
#
#   scripts/package-deb.sh     the package in build-deb/ (CC_BUILD_DIR overrides it)
#
# Needs what scripts/install-deps.sh --build installs, plus dpkg-dev (dpkg-shlibdeps
# computes Depends: from the binary) and file; scripts/install-deps.sh installs both.
# Install the result with `apt-get install ./content-cache_<version>_<arch>.deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${CC_BUILD_DIR:-build-deb}
case "${1:-}" in
    -h | --help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *)
        echo "package-deb.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCC_TESTS=OFF \
    -DCMAKE_INSTALL_PREFIX=/usr -DCC_DEB=ON
cmake --build "$build_dir" -j "$(nproc)"
(cd "$build_dir" && cpack -G DEB)
ls "$build_dir"/content-cache_*.deb
