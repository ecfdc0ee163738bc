#!/usr/bin/env bash
# A two-minute tour of content-cache, on this machine only:
#
#   1. installs the dependencies and builds the cache,
#   2. starts an origin registry (Docker Distribution) on a free port,
#   3. makes a small 3-layer image and pushes it to the origin with skopeo,
#   4. starts content-cache in front of the origin,
#   5. pulls the image through the cache twice with skopeo,
#   6. shows the cache's access log and what the origin served.
#
# Everything lives in ./demo-work (recreated on each run); both servers are stopped when
# the script ends, however it ends.
#
# CC_DEMO_CONFIG=FILE uses your own cache config template instead of the embedded one
# (@CACHE_PORT@, @ORIGIN_URL@ and @STORAGE@ are replaced). CC_BINARY=PATH runs that
# content-cache binary instead of building build/content-cache.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

WORK=$ROOT/demo-work
BINARY=${CC_BINARY:-$ROOT/build/content-cache}
REPO=demo/hello
TAG=1.0

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ORIGIN_PID=
CACHE_PID=
stop_servers() {
    local pid
    for pid in $CACHE_PID $ORIGIN_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    CACHE_PID=
    ORIGIN_PID=
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (at most 20 s) until URL answers HTTP at all; fails if PID has exited.
wait_http() {
    local url=$1 pid=$2 name=$3 log=$4
    for _ in $(seq 1 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start; its log ($log):" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" != "000" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$name did not answer at $url within 20 s; its log ($log):" >&2
    tail -n 20 "$log" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

say "Installing dependencies and building"
scripts/install-deps.sh
rm -rf "$WORK"
mkdir -p "$WORK/tmp"
if [ -z "${CC_BINARY:-}" ] && ! scripts/build.sh >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    echo "build failed; full log: $WORK/build.log" >&2
    exit 1
fi
echo "using $BINARY ($("$BINARY" --version 2>&1 | head -n 1))"

# skopeo: no stored logins, no machine-wide registry configuration. (Not exported:
# both servers read REGISTRY_* variables as configuration overrides.)
printf '{"auths": {}}\n' >"$WORK/auth.json"
printf 'unqualified-search-registries = []\n' >"$WORK/registries.conf"
skopeo_() {
    REGISTRY_AUTH_FILE=$WORK/auth.json CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf \
        TMPDIR=$WORK/tmp skopeo --insecure-policy "$@"
}
# A command prefix that drops every REGISTRY_* variable of the caller's environment
# (env execs the server, so $! is the server's own PID).
CLEAN_ENV=(env)
for var in $(compgen -e); do
    case "$var" in REGISTRY_*) CLEAN_ENV+=(-u "$var") ;; esac
done
# The binary of a build tree reads the built-in policies of this checkout (an installed
# one reads its installed copy).
export CONTENT_CACHE_BUILTIN_POLICIES=${CONTENT_CACHE_BUILTIN_POLICIES:-$ROOT/policies}

say "Starting the origin registry"
ORIGIN_PORT=$(free_port)
ORIGIN_URL=http://127.0.0.1:$ORIGIN_PORT
cat >"$WORK/origin.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/origin-storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$ORIGIN_PORT
  secret: content-cache-demo
EOF
"${CLEAN_ENV[@]}" docker-registry serve "$WORK/origin.yml" >"$WORK/origin.log" 2>&1 &
ORIGIN_PID=$!
wait_http "$ORIGIN_URL/v2/" "$ORIGIN_PID" origin "$WORK/origin.log"
echo "docker-registry (pid $ORIGIN_PID) at $ORIGIN_URL"

say "Making a 3-layer image and pushing it to the origin"
MANIFEST_DIGEST=$(python3 - "$WORK/image" "$TAG" <<'EOF'
import sys
sys.path.insert(0, "tests/e2e")
import harness
image = harness.make_oci_layout(sys.argv[1], harness.random_layers([64 << 10, 1 << 20, 4 << 20], seed=7),
                                tag=sys.argv[2])
print(image.manifest_digest)
EOF
)
skopeo_ copy --quiet --preserve-digests --dest-tls-verify=false --dest-no-creds \
    "oci:$WORK/image:$TAG" "docker://127.0.0.1:$ORIGIN_PORT/$REPO:$TAG"
echo "pushed $REPO:$TAG ($MANIFEST_DIGEST)"

say "Starting content-cache in front of it"
CACHE_PORT=$(free_port)
template=${CC_DEMO_CONFIG:-}
if [ -n "$template" ]; then
    cat "$template"
else
    # The embedded default: a Docker Registry config.yml with the downstream middleware.
    cat <<'EOF'
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: @STORAGE@
  delete:
    enabled: true            # needed by blobttl: expired blobs are deleted
http:
  addr: 127.0.0.1:@CACHE_PORT@
middleware:
  registry:
    - name: downstream
      options:
        blobttl: 24h         # a blob not pulled for a day is deleted
        upstreams:
          - originhost: @ORIGIN_URL@
EOF
fi | sed -e "s|@CACHE_PORT@|$CACHE_PORT|g" -e "s|@ORIGIN_URL@|$ORIGIN_URL|g" \
         -e "s|@STORAGE@|$WORK/cache-storage|g" >"$WORK/cache.yml"
cat "$WORK/cache.yml"
echo
echo "\$ content-cache --check demo-work/cache.yml"
"${CLEAN_ENV[@]}" "$BINARY" --check "$WORK/cache.yml"
"${CLEAN_ENV[@]}" "$BINARY" "$WORK/cache.yml" >"$WORK/cache.access.log" 2>"$WORK/cache.stderr.log" &
CACHE_PID=$!
wait_http "http://127.0.0.1:$CACHE_PORT/v2/" "$CACHE_PID" content-cache "$WORK/cache.stderr.log"
echo "content-cache (pid $CACHE_PID) at http://127.0.0.1:$CACHE_PORT"

origin_blob_gets() {
    grep -c "\"GET /v2/$REPO/blobs/sha256:[0-9a-f]* HTTP/1.1\" 200" "$WORK/origin.log" || true
}
cache_lines() {
    grep -c 'http.request.method=' "$WORK/cache.access.log" || true
}
# Access-log lines are written as responses end: wait (at most 5 s) until both logs
# have stopped growing for 0.3 s.
settle_logs() {
    local last="" now stable=0
    for _ in $(seq 1 50); do
        now="$(cache_lines) $(origin_blob_gets)"
        if [ "$now" = "$last" ]; then
            stable=$((stable + 1))
            [ "$stable" -ge 3 ] && return 0
        else
            stable=0
            last=$now
        fi
        sleep 0.1
    done
}

pull() {
    local n=$1 start end
    start=$(date +%s%N)
    skopeo_ copy --quiet --src-tls-verify=false --src-no-creds \
        "docker://127.0.0.1:$CACHE_PORT/$REPO:$TAG" "dir:$WORK/pull-$n"
    end=$(date +%s%N)
    # Every blob file in a dir: copy is named by its sha256: check them all.
    local f bad=0
    for f in "$WORK/pull-$n"/*; do
        case "$(basename "$f")" in manifest.json | version) continue ;; esac
        if [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$(basename "$f")" ]; then
            echo "blob $(basename "$f") does not match its digest" >&2
            bad=1
        fi
    done
    [ "$bad" = 0 ] || exit 1
    echo "pull $n: $(( (end - start) / 1000000 )) ms, every blob verified against its digest"
}

say "Pulling $REPO:$TAG through the cache, twice"
lines0=$(cache_lines)
pull 1
settle_logs
lines1=$(cache_lines)
gets1=$(origin_blob_gets)
pull 2
settle_logs
lines2=$(cache_lines)
gets2=$(origin_blob_gets)

say "The cache's access log (stdout; diagnostics go to stderr)"
echo "-- pull 1:"
sed -n "$((lines0 + 1)),${lines1}p" "$WORK/cache.access.log"
echo "-- pull 2:"
sed -n "$((lines1 + 1)),${lines2}p" "$WORK/cache.access.log"

say "What happened"
cat <<EOF
Each line above is one request that skopeo made to the cache: first the manifest
(always asked of the origin, so a tag is never stale), then the config and layer blobs.
The cache= field says how each blob was served: miss (fetched from the origin while it
was streamed to the client and written to disk), hit (served from the cache's disk),
coalesced (joined a fetch already in flight), bypass (relayed, not cached).

Blob downloads the origin served: $gets1 during pull 1, $((gets2 - gets1)) during pull 2
(the image has 4 blobs: a config and 3 layers).
EOF
if [ "$gets2" -eq "$gets1" ]; then
    echo "Pull 2 came from the cache's disk: the origin served no blob for it."
else
    echo "The origin served blobs again for pull 2: this build relays blobs without keeping them."
fi
echo
echo "Files: $WORK (cache.yml, cache.access.log, cache.stderr.log, origin.log, pull-1, pull-2)."
