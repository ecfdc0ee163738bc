#!/usr/bin/env bash
# The benchmark's smoke test (for ctest): runs `bench/run.sh --quick` (~40 s) and checks
# that it wrote its table with every row, and that no scenario failed. Missed targets do
# not fail it: quick mode's sizes are too small for the targets to mean anything.
#
#   bench/smoke.sh [CONTENT_CACHE_BINARY]
#
# With a binary (ctest passes $<TARGET_FILE:content-cache>) nothing is built but the small
# sha256 program; without one, run.sh builds build-bench/content-cache first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

out_dir=$(mktemp -d "${TMPDIR:-/tmp}/cc-bench-smoke-XXXXXX")
cleanup() { rm -rf "$out_dir"; }
trap cleanup EXIT

args=(--quick --out "$out_dir/table.md" --work "$out_dir/work")
if [ $# -ge 1 ]; then
    args+=(--binary "$1")
fi

status=0
"$here/run.sh" "${args[@]}" >"$out_dir/run.log" 2>&1 || status=$?

fail() {
    echo "bench smoke: $*" >&2
    echo "--- bench/run.sh output (last 60 lines) ---" >&2
    tail -n 60 "$out_dir/run.log" >&2
    for log in "$out_dir"/work/cache*.stderr.log "$out_dir"/work/front.stderr.log; do
        [ -s "$log" ] || continue
        echo "--- $(basename "$log") (last 20 lines) ---" >&2
        tail -n 20 "$log" >&2
    done
    echo "0 passed, 1 failed"
    exit 1
}

[ -s "$out_dir/table.md" ] || fail "no table was written (run.sh exit $status)"
[ -s "$out_dir/table.json" ] || fail "no .json beside the table"
for row in 1 2 3 4 5 6 7a 7b 8 9 10 11 12; do
    grep -qE "^\| ${row}[ab]? \|" "$out_dir/table.md" || fail "row $row is missing from the table"
done
if grep -q "ERROR" "$out_dir/table.md"; then
    grep -E "ERROR" "$out_dir/table.md" >&2
    fail "a scenario failed"
fi
[ "$status" -eq 0 ] || fail "run.sh exited $status"
grep -E "^\| (1|7a) \|" "$out_dir/table.md"
echo "1 passed, 0 failed"
