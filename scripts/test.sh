#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test (unit, policy specs, end-to-end).
#
#   scripts/test.sh                  build/ and its ctest
#   scripts/test.sh --asan           build-asan/ (sanitizers) and its ctest
#   scripts/test.sh --tsan -R ...    build-tsan/ (ThreadSanitizer) and its ctest
#   scripts/test.sh -R e2e/          extra arguments go to ctest (here: e2e tests only)
#
# Tests run two at a time: each end-to-end test takes its own free ports and its own
# temporary directory, so they do not interfere. Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${CC_SANITIZE:-0}" = 1 ]; then
    set -- --asan "$@"
fi
build_args=()
build_dir=build
ctest_args=()
for arg in "$@"; do
    case "$arg" in
        --asan | --sanitize)
            build_args+=(--asan)
            build_dir=build-asan
            # Sanitized binaries start and serve more slowly: stretch the e2e waits.
            export CC_E2E_TIMEOUT_SCALE=${CC_E2E_TIMEOUT_SCALE:-3}
            ;;
        --tsan)
            build_args+=(--tsan)
            build_dir=build-tsan
            export CC_E2E_TIMEOUT_SCALE=${CC_E2E_TIMEOUT_SCALE:-3}
            ;;
        -h | --help)
            sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) ctest_args+=("$arg") ;;
    esac
done
build_dir=${CC_BUILD_DIR:-$build_dir}

scripts/install-deps.sh
scripts/build.sh "${build_args[@]}"
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j 2 "${ctest_args[@]}"
