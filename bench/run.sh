#!/usr/bin/env bash
# The side-by-side benchmark: content-cache against nginx and Docker Distribution's proxy,
# all on 127.0.0.1. See bench/README.md.
#
#   bench/run.sh                  full run (~8 minutes on 2 cores): builds a release binary
#                                 in build-bench/, writes bench/results/<date>.md (+ .json)
#   bench/run.sh --quick          small sizes, ~1 s a scenario: shows the benchmark works
#
# Options:
#   --quick            small sizes, one round
#   --binary PATH      use this content-cache instead of building build-bench/content-cache
#   --out FILE         where the table goes (default bench/results/<UTC date-time>[-quick].md)
#   --rounds N         rounds per scenario (default 3, --quick 1)
#   --only LIST        comma-separated scenarios: hit1k,big16,rss,idle,cold1,cold32,sha256,tls,policy
#   --work DIR         work directory (default: a new one under $TMPDIR, removed at the end)
#   --keep             keep the work directory (servers' configs and logs)
#   --profile          perf record the machine during content-cache's first 1 KiB wrk run;
#                      the report goes beside the table as <name>-profile.txt
#
# Exit status: 0 when the table was written and no scenario failed (a missed target is not
# a failure: the table says so), 1 otherwise, 2 for a wrong command line.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

quick=0
binary=""
out=""
pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; pass+=(--quick) ;;
        --binary) binary=$(realpath "$2"); shift ;;
        --out) out=$2; shift ;;
        --rounds | --only | --work) pass+=("$1" "$2"); shift ;;
        --keep | --profile) pass+=("$1") ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/run.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$out" ]; then
    out=bench/results/$(date -u +%Y-%m-%d-%H%M)$([ "$quick" = 1 ] && echo -quick).md
fi

scripts/install-deps.sh

build_dir=$repo/build-bench
mkdir -p "$build_dir"
# Release (-O3). At -O3 GCC 12 inlines more and its flow-sensitive warnings
# (-Wstringop-overflow, -Wmaybe-uninitialized) report false positives that the project's
# -O2 builds do not see (core/upstream.c's string builder): keep those two warnings, not
# errors, in this build so that the benchmark measures whatever the core is.
# bench.py builds a second binary (no policy hooks) with the same flags.
export BENCH_C_FLAGS="-Wno-error=stringop-overflow -Wno-error=maybe-uninitialized"
if [ -z "$binary" ]; then
    echo "bench: building the release binary in build-bench/" >&2
    cmake -S "$repo" -B "$build_dir" -DCC_TESTS=OFF -DCMAKE_BUILD_TYPE=Release \
        "-DCMAKE_C_FLAGS=$BENCH_C_FLAGS" >/dev/null
    cmake --build "$build_dir" --target content-cache -j "$(nproc)" >/dev/null
    binary=$build_dir/content-cache
    build_desc="cmake -DCMAKE_BUILD_TYPE=Release, build-bench/"
else
    build_desc="given with --binary $binary"
fi
# The sha256 program: core/digest.c compiled directly, as the issue asks.
gcc -O2 -Wall -Wextra -I core bench/sha256_speed.c core/digest.c -lmbedcrypto \
    -o "$build_dir/sha256_speed"

# 10,000 connections need as many descriptors, in the client and in each server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# bench.py stops every server it started by PID (and its children die with it); if this
# script is interrupted, stop bench.py by its PID so that it cleans up.
bench_pid=""
stop_bench() {
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
}
trap stop_bench EXIT
trap 'stop_bench; exit 130' INT
trap 'stop_bench; exit 143' TERM

python3 bench/bench.py --binary "$binary" --sha-binary "$build_dir/sha256_speed" \
    --build-dir "$build_dir" --build-desc "$build_desc" --out "$out" ${pass[@]+"${pass[@]}"} &
bench_pid=$!
set +e
wait "$bench_pid"
rc=$?
set -e
bench_pid=""
exit "$rc"
