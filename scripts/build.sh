#!/usr/bin/env bash
# Configures and builds content-cache with CMake.
#
#   scripts/build.sh           RelWithDebInfo build in build/
#   scripts/build.sh --asan    AddressSanitizer + UBSan build in build-asan/ (-DCC_SANITIZE=ON)
#                              (same as CC_SANITIZE=1 scripts/build.sh)
#   scripts/build.sh --tsan    ThreadSanitizer build in build-tsan/ (-DCC_TSAN=ON): the
#                              loops of workers; run e2e tests on it with
#                              ctest --test-dir build-tsan -R ...
#
# CC_BUILD_DIR overrides the build directory. Parallel jobs: nproc.
# Dependencies are not installed here: run scripts/install-deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=${CC_SANITIZE:-0}
tsan=0
for arg in "$@"; do
    case "$arg" in
        --asan | --sanitize) sanitize=1 ;;
        --tsan) tsan=1 ;;
        -h | --help)
            sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [ "$tsan" = 1 ]; then
    build_dir=${CC_BUILD_DIR:-build-tsan}
    cmake_args+=(-DCC_SANITIZE=OFF -DCC_TSAN=ON)
elif [ "$sanitize" = 1 ]; then
    build_dir=${CC_BUILD_DIR:-build-asan}
    cmake_args+=(-DCC_SANITIZE=ON)
else
    build_dir=${CC_BUILD_DIR:-build}
    cmake_args+=(-DCC_SANITIZE=OFF -DCC_TSAN=OFF)
fi

cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$(nproc)"
