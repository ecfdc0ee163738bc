#!/usr/bin/env bash
# The content cache document's walk-through, run on this machine with content-cache as
# both the registry side (the front, front.yml) and the caches (region-us.yml,
# region-eu.yml), before a real Docker Distribution origin with users:
#
#   1. starts the origin (htpasswd users admin, alice, cache-reader) and pushes an image;
#   2. starts the front and the two caches from this directory's files (their addresses,
#      paths and the origin replaced by ports and directories of ./front-demo);
#   3. the admin registers both caches (POST /api/v0/content_caches), alice chooses
#      region-us (PUT /api/v0/accounts/alice/settings: what the profile page does);
#   4. alice pulls <front>/org/app:1 with skopeo, twice: the front answers the manifest
#      and redirects each layer to region-us, which stores it (cache=miss), then serves it
#      from disk (cache=hit);
#   5. shows region-us's log, and what the origin and the front served.
#
#   examples/front/walkthrough.sh           run it, stop everything at the end
#   examples/front/walkthrough.sh --serve   leave the servers running (Ctrl-C stops them):
#                                           the profile page is at the front's address
#
# Needs what scripts/install-deps.sh installs; CC_BINARY=PATH runs that binary instead of
# building build/content-cache. Everything lives in ./front-demo (recreated each run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
HERE=$ROOT/examples/front
WORK=$ROOT/front-demo
BINARY=${CC_BINARY:-$ROOT/build/content-cache}
SERVE=0
[ "${1:-}" = "--serve" ] && SERVE=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

PIDS=()
stop_servers() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 20 s) until URL answers HTTP; fails if PID has exited.
wait_http() {
    local url=$1 pid=$2 name=$3 log=$4
    for _ in $(seq 1 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start; its log ($log):" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" != "000" ] && return 0
        sleep 0.1
    done
    echo "$name did not answer at $url within 20 s" >&2
    exit 1
}

say "Building"
scripts/install-deps.sh
rm -rf "$WORK"
mkdir -p "$WORK/tmp"
if [ -z "${CC_BINARY:-}" ] && ! scripts/build.sh >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    exit 1
fi
export CONTENT_CACHE_BUILTIN_POLICIES=${CONTENT_CACHE_BUILTIN_POLICIES:-$ROOT/policies}
CLEAN_ENV=(env)
for var in $(compgen -e); do
    case "$var" in REGISTRY_*) CLEAN_ENV+=(-u "$var") ;; esac
done
printf '{"auths": {}}\n' >"$WORK/auth.json"
printf 'unqualified-search-registries = []\n' >"$WORK/registries.conf"
skopeo_() {
    REGISTRY_AUTH_FILE=$WORK/auth.json CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf \
        TMPDIR=$WORK/tmp skopeo --insecure-policy "$@"
}
pw() { python3 -c 'import secrets; print(secrets.token_hex(8))'; }
ADMIN_PW=$(pw)
ALICE_PW=$(pw)
READER_PW=$(pw)

say "1. The origin registry, with users, and an image"
ORIGIN_PORT=$(free_port)
htpasswd -Bbn admin "$ADMIN_PW" >"$WORK/htpasswd"
htpasswd -Bbn alice "$ALICE_PW" >>"$WORK/htpasswd"
htpasswd -Bbn cache-reader "$READER_PW" >>"$WORK/htpasswd"
cat >"$WORK/origin.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/origin-storage
http:
  addr: 127.0.0.1:$ORIGIN_PORT
  secret: front-walkthrough
auth:
  htpasswd:
    realm: origin
    path: $WORK/htpasswd
EOF
"${CLEAN_ENV[@]}" docker-registry serve "$WORK/origin.yml" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ORIGIN_PORT/v2/" "${PIDS[-1]}" origin "$WORK/origin.log"
python3 - "$WORK/image" <<'EOF'
import sys
sys.path.insert(0, "tests/e2e")
import harness
harness.make_oci_layout(sys.argv[1], harness.random_layers([64 << 10, 1 << 20, 4 << 20], seed=18),
                        tag="1")
EOF
skopeo_ copy --quiet --preserve-digests --dest-tls-verify=false --dest-creds "admin:$ADMIN_PW" \
    "oci:$WORK/image:1" "docker://127.0.0.1:$ORIGIN_PORT/org/app:1"
echo "docker-registry at http://127.0.0.1:$ORIGIN_PORT holds org/app:1"

say "2. The front and two caches, from examples/front/*.yml"
FRONT_PORT=$(free_port)
US_PORT=$(free_port)
EU_PORT=$(free_port)
FRONT=http://127.0.0.1:$FRONT_PORT
# The example files, with this machine's addresses and directories (and no TLS: the
# origin and the front speak plain HTTP here, so no CA is needed).
adapt() { # FILE PORT STORAGE -> the file on stdout
    sed -e "s|rootdirectory: .*|rootdirectory: $3|" -e "s|addr: :5000|addr: 127.0.0.1:$2|" \
        -e "s|host: https://registry.example.com|host: $FRONT|" \
        -e "s|originhost: https://registry.internal:5000|originhost: http://127.0.0.1:$ORIGIN_PORT|" \
        -e "s|originhost: https://registry.example.com|originhost: $FRONT|" \
        -e "s|password: change-me|password: $READER_PW|" \
        -e '/cas:/d' -e '/dtr-ca.pem/d' "$1"
}
adapt "$HERE/front.yml" "$FRONT_PORT" "$WORK/front-state" >"$WORK/front.yml"
adapt "$HERE/region-us.yml" "$US_PORT" "$WORK/region-us-storage" >"$WORK/region-us.yml"
adapt "$HERE/region-eu.yml" "$EU_PORT" "$WORK/region-eu-storage" >"$WORK/region-eu.yml"
echo "\$ content-cache --check front-demo/front.yml"
"${CLEAN_ENV[@]}" "$BINARY" --check "$WORK/front.yml" | sed 's/^/  /'
for name in front region-us region-eu; do
    "${CLEAN_ENV[@]}" "$BINARY" "$WORK/$name.yml" >"$WORK/$name.access.log" 2>"$WORK/$name.stderr.log" &
    PIDS+=($!)
done
wait_http "$FRONT/v2/" "${PIDS[1]}" front "$WORK/front.stderr.log"
wait_http "http://127.0.0.1:$US_PORT/v2/" "${PIDS[2]}" region-us "$WORK/region-us.stderr.log"
wait_http "http://127.0.0.1:$EU_PORT/v2/" "${PIDS[3]}" region-eu "$WORK/region-eu.stderr.log"
echo "front at $FRONT, region-us at http://127.0.0.1:$US_PORT, region-eu at http://127.0.0.1:$EU_PORT"

say "3. The admin registers the caches; alice chooses region-us"
for name in region-us region-eu; do
    port=$US_PORT
    [ "$name" = region-eu ] && port=$EU_PORT
    echo "\$ curl -u admin:... -X POST $FRONT/api/v0/content_caches -d '{\"name\": \"$name\", \"host\": \"http://127.0.0.1:$port\"}'"
    curl -sf -u "admin:$ADMIN_PW" -X POST "$FRONT/api/v0/content_caches" \
        -H 'Content-Type: application/json' \
        -d "{\"name\": \"$name\", \"host\": \"http://127.0.0.1:$port\"}"
done
echo "\$ curl -u alice:... -X PUT $FRONT/api/v0/accounts/alice/settings -d '{\"contentCache\": \"region-us\"}'"
curl -sf -u "alice:$ALICE_PW" -X PUT "$FRONT/api/v0/accounts/alice/settings" \
    -H 'Content-Type: application/json' -d '{"contentCache": "region-us"}'

# What the origin served (its access log, one line per request), by kind.
origin_summary() {
    python3 - "$WORK/origin.log" "$1" <<'PYEOF'
import collections, re, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()[int(sys.argv[2]):]
kinds = collections.Counter()
for line in lines:
    m = re.search(r'"(\w+) (/v2/\S*) HTTP/1.1" (\d+)', line)
    if m:
        path = m.group(2)
        kind = ("blob" if "/blobs/" in path else "manifest" if "/manifests/" in path
                else path)
        kinds["%s %s %s" % (m.group(1), kind, m.group(3))] += 1
print("; ".join("%s x%d" % (k, n) for k, n in sorted(kinds.items())) or "nothing")
PYEOF
}

say "4. alice pulls 127.0.0.1:$FRONT_PORT/org/app:1, twice"
for n in 1 2; do
    before=$(wc -l <"$WORK/origin.log")
    rm -rf "$WORK/pull-$n"
    skopeo_ copy --quiet --src-tls-verify=false --src-creds "alice:$ALICE_PW" \
        "docker://127.0.0.1:$FRONT_PORT/org/app:1" "dir:$WORK/pull-$n"
    sleep 0.5 # access lines are written as responses end
    echo "pull $n: $(ls "$WORK/pull-$n" | wc -l) files; the origin served: $(origin_summary "$before")"
done

say "5. What each served"
echo "region-us's blob lines (cache=miss, then cache=hit; the grant is redacted):"
grep 'blobs/sha256' "$WORK/region-us.access.log" | sed -E 's/.*(http.request.uri=[^ ]*).*(http.response.status=[0-9]+).*(cache=[a-z]+).*/  \1 \2 \3/'
echo "the origin: $(grep -cE '"GET /v2/org/app/blobs/sha256:[0-9a-f]+ HTTP/1.1" 200' "$WORK/origin.log") blob GETs (the front's account, once per blob)"
echo "the front: $(grep -c 'http.response.status=307' "$WORK/front.access.log") redirects (307) and $(grep -c 'cache=grant' "$WORK/front.access.log") blobs served to region-us with a grant"
echo "region-eu: $(grep -c "blobs/sha256" "$WORK/region-eu.access.log" || true) blob requests"

if [ "$SERVE" = 1 ]; then
    say "Serving: the profile page is $FRONT/ (sign in as alice with password $ALICE_PW); Ctrl-C stops"
    wait
fi
