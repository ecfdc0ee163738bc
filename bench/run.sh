#!/usr/bin/env bash
# The side-by-side benchmark: content-cache against nginx and Docker Distribution's proxy,
# all on 127.0.0.1. See bench/README.md.
#
#   bench/run.sh                  full run (5-8 minutes on 2 cores): builds release binaries
#                                 in build-bench/, writes bench/results/<date>.md (+ .json)
#   bench/run.sh --quick          small sizes, ~1 s a scenario: shows the benchmark works
#
# Options:
#   --quick            small sizes, one round
#   --binary PATH      use this content-cache instead of building build-bench/content-cache
#   --out FILE         where the table goes (default bench/results/<UTC date-time>[-quick].md)
#   --rounds N         rounds per scenario (default 3, --quick 1)
#   --only LIST        comma-separated scenarios: hit1k,big16,rss,idle,cold1,cold32,sha256,tls,policy,
#                      redirect,workers
#   --work DIR         work directory (default: a new one under $TMPDIR, removed at the end)
#   --keep             keep the work directory (servers' configs and logs)
#   --wait-quiet S     at the start, wait up to S seconds for other processes to leave the CPUs
#   --max-others P     run a round again when other processes used more than P% of the CPUs
#                      meanwhile (default 25)
#   --noise-retries N  how many rounds a run may run again that way (default 8, quick 0)
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
        --rounds | --only | --work | --wait-quiet | --max-others | --noise-retries)
            pass+=("$1" "$2"); shift ;;
        --keep | --profile) pass+=("$1") ;;
        -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/run.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$out" ]; then
    suffix=""
    if [ "$quick" = 1 ]; then suffix=-quick; fi
    out=bench/results/$(date -u +%Y-%m-%d-%H%M)$suffix.md
fi

scripts/install-deps.sh

build_dir=$repo/build-bench
mkdir -p "$build_dir"
# The sources are copied first (others may be editing core/ while this runs), and
# content-cache and sha256_speed are built from that one copy:
#   build-bench/snapshot/          core/ lua/ policies/ examples/ cmake/ CMakeLists.txt README.md
#   build-bench/release/           content-cache, Release (-O3)
#   build-bench/snapshot-nohooks/  policies/ with a default.lua of `return {}`: the built-in
#                                  policies of row 11's baseline (no hooks)
# Every cache is told its built-in policies (CONTENT_CACHE_BUILTIN_POLICIES): the snapshot's.
# At -O3 GCC 12 inlines more, and its flow-sensitive warnings (-Wstringop-overflow,
# -Wmaybe-uninitialized) report false positives that the project's -O2 builds do not see
# (core/upstream.c's string builder): those two stay warnings, not errors, here.
cflags="-Wno-error=stringop-overflow -Wno-error=maybe-uninitialized"
snapshot() { # DEST: a fresh copy of the sources (cp -a keeps times: builds stay incremental)
    rm -rf "$1"
    mkdir -p "$1"
    cp -a core lua policies examples cmake CMakeLists.txt README.md "$1"/
}
build() { # SOURCE BUILD_DIR
    cmake -S "$1" -B "$2" -DCC_TESTS=OFF -DCMAKE_BUILD_TYPE=Release "-DCMAKE_C_FLAGS=$cflags" \
        >/dev/null
    cmake --build "$2" --target content-cache -j "$(nproc)" >/dev/null
}
echo "bench: building release binaries in build-bench/ from a copy of the sources" >&2
snapshot "$build_dir/snapshot"
rm -rf "$build_dir/snapshot-nohooks"
mkdir -p "$build_dir/snapshot-nohooks"
cp -a policies "$build_dir/snapshot-nohooks/"
printf -- '-- bench/run.sh: built-in policies that define no hooks\nreturn {}\n' \
    >"$build_dir/snapshot-nohooks/policies/default.lua"
if [ -z "$binary" ]; then
    build "$build_dir/snapshot" "$build_dir/release"
    binary=$build_dir/release/content-cache
    build_desc="Release (-O3), built by bench/run.sh in build-bench/release"
else
    build_desc="given with --binary $binary"
fi
# The sha256 program: core/base/digest.c compiled directly, as the issue asks.
gcc -O2 -Wall -Wextra -I "$build_dir/snapshot/core" bench/sha256_speed.c \
    "$build_dir/snapshot/core/base/digest.c" -lmbedcrypto -o "$build_dir/sha256_speed"

# 10,000 connections need as many descriptors, in the client and in each server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# bench.py stops every server it started by PID (and its children die with it); if this
# script is interrupted, stop bench.py by its PID so that it cleans up.
bench_pid=""
# shellcheck disable=SC2317  # called from the traps
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
    --policies "$build_dir/snapshot/policies" \
    --nohooks-policies "$build_dir/snapshot-nohooks/policies" \
    --build-desc "$build_desc" --out "$out" ${pass[@]+"${pass[@]}"} &
bench_pid=$!
set +e
wait "$bench_pid"
rc=$?
set -e
bench_pid=""
exit "$rc"
