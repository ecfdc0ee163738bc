#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in a build directory of their own and runs them.
#
#   tests/fuzz/run.sh TARGET [SECONDS]    one target, e.g. request or fuzz_request (default 60 s)
#   tests/fuzz/run.sh all [SECONDS]       every target in turn, SECONDS each
#   tests/fuzz/run.sh --list              the targets
#   tests/fuzz/run.sh --build             build only
#
# Each run starts from the seeds in tests/fuzz/corpus/<name>/ and from what earlier runs
# found (kept in $BUILD/fuzz-corpus/<name>/), with the target's dictionary, a 10 s hang
# limit, a 2 GiB memory limit, and the sanitizers' leak check. A crash, hang, leak or
# out-of-memory input is written to $BUILD/fuzz-artifacts/<name>/ and the run of that
# target stops there (set FUZZ_KEEP_GOING=1 to keep fuzzing past crashes in fork mode and
# collect them all). The full libFuzzer output is in $BUILD/fuzz-logs/<name>.log.
#
# The output ends with one line per target:
#   <target>: N executions, M crashes
# and the exit status is non-zero when any target crashed or could not be built.
#
# Environment: CC_FUZZ_BUILD_DIR (default build-fuzz), CC_FUZZ_CC (default clang),
# FUZZ_KEEP_GOING=1, FUZZ_JOBS (fork mode workers, default 1), FUZZ_ARGS (extra libFuzzer
# arguments). To reproduce a crash: $BUILD/tests/fuzz/fuzz_<name> <artifact file>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${CC_FUZZ_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
build=${CC_FUZZ_BUILD_DIR:-$src/build-fuzz}
export CC=${CC_FUZZ_CC:-clang}

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
}

targets() {
    for f in "$here"/fuzz_*.c; do
        basename "$f" .c | sed 's/^fuzz_//'
    done
}

build_targets() {
    if ! grep -q CC_FUZZ "$src/CMakeLists.txt"; then
        echo "run.sh: $src/CMakeLists.txt has no CC_FUZZ option (add_subdirectory(tests/fuzz))" >&2
        return 1
    fi
    local home
    home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
    if [ -n "$home" ] && [ "$home" != "$src" ]; then
        echo "run.sh: $build was configured for $home, not $src: remove it or set CC_FUZZ_BUILD_DIR" >&2
        return 1
    fi
    if [ ! -f "$build/CMakeCache.txt" ]; then
        cmake -S "$src" -B "$build" -DCC_FUZZ=ON -DCC_TESTS=OFF \
            -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build.configure.log" 2>&1 ||
            { cat "$build.configure.log" >&2; return 1; }
        rm -f "$build.configure.log"
    fi
    cmake --build "$build" --target fuzz_all -j "$(nproc)" >"$build/fuzz-build.log" 2>&1 ||
        { tail -40 "$build/fuzz-build.log" >&2; return 1; }
}

# Runs one target; appends its summary line to $summary and returns 1 on a crash.
run_target() {
    local name=$1 seconds=$2
    local bin=$build/tests/fuzz/fuzz_$name
    local corpus=$build/fuzz-corpus/$name artifacts=$build/fuzz-artifacts/$name
    local log=$build/fuzz-logs/$name.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    local marker
    marker=$(mktemp)
    local args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -close_fd_mask=3
        -print_final_stats=1 -artifact_prefix="$artifacts/")
    [ -f "$here/$name.dict" ] && args+=(-dict="$here/$name.dict")
    [ "$name" = config ] && args+=(-max_len=16384) # whole config files
    if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
        args+=(-fork="${FUZZ_JOBS:-1}" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    echo "run.sh: fuzz_$name for ${seconds}s (log: $log)" >&2
    set +e
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
    "$bin" "${args[@]}" ${FUZZ_ARGS:-} "$corpus" "$here/corpus/$name" >"$log" 2>&1
    local rc=$?
    set -e
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ -z "$execs" ]; then # fork mode: the last "#N:" status line
        execs=$(sed -n 's/^#\([0-9][0-9]*\):.*/\1/p' "$log" | tail -1)
    fi
    local found
    found=$(find "$artifacts" -type f -newer "$marker")
    rm -f "$marker"
    local crashes=0
    [ -n "$found" ] && crashes=$(printf '%s\n' "$found" | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # died without writing an input (e.g. at start): still a failure
    fi
    if [ "$crashes" -gt 0 ]; then
        # What each input does, replayed (at most 50 of them), and a few of the inputs.
        printf '%s\n' "$found" | head -50 | while read -r input; do
            # A hang replays as a hang: bounded, like everything in CI.
            timeout 30 "$bin" -timeout=10 "$input" 2>&1 |
                grep -m1 -E '^SUMMARY: [A-Za-z]+Sanitizer|broken promise|^SUMMARY|timeout' || true
        done | sort | uniq -c | sed 's/^/  /' >&2
        printf '%s\n' "$found" | head -5 | sed 's/^/  input: /' >&2
    fi
    summary+="$name: ${execs:-0} executions, $crashes crashes"$'\n'
    [ "$crashes" -eq 0 ]
}

case "${1:-}" in
"" | -h | --help)
    usage
    exit 0
    ;;
--list)
    targets
    exit 0
    ;;
--build)
    build_targets
    exit $?
    ;;
esac

target=${1#fuzz_}
seconds=${2:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "run.sh: SECONDS must be a positive integer, not '$seconds'" >&2
    exit 2
fi
if [ "$target" = all ]; then
    mapfile -t names < <(targets)
elif [ -f "$here/fuzz_$target.c" ]; then
    names=("$target")
else
    echo "run.sh: no target '$1' (try --list)" >&2
    exit 2
fi

build_targets
summary=""
failed=0
for name in "${names[@]}"; do
    run_target "$name" "$seconds" || failed=1
done
printf '%s' "$summary"
exit "$failed"
