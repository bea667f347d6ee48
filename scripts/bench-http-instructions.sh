#!/usr/bin/env bash
# Instructions per request of bare axum and of host-app (in-memory), counted by callgrind:
# the same figure for the same binaries whatever else the machine is doing, so a change to the
# layer can be judged in one run on a busy machine, where requests per second cannot.
#
#   scripts/bench-http-instructions.sh                  # builds release binaries first
#   SKIP_BUILD=1 BIN_DIR=/tmp/old scripts/bench-http-instructions.sh
#
# Each server runs under valgrind; after a warm-up its counters are zeroed, `wrk -c4` sends
# requests for DURATION, and the total is divided by the requests served. Under valgrind
# SHA-256 runs in software (about 3,400 instructions per key, against a few hundred with the
# CPU's SHA extensions), so host-app's figure includes that much more than it costs natively.
# Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
PORT="${PORT:-18095}"
BIN="${BIN_DIR:-target/release}"

for tool in valgrind callgrind_control callgrind_annotate wrk; do
    command -v "$tool" >/dev/null || { echo "bench-http-instructions: $tool is missing" >&2; exit 1; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p bare-axum -p host-app >&2
fi

work="$(mktemp -d)"
pid=""
cleanup() {
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Runs one server under callgrind and prints its instructions per request.
count() {
    local name="$1" key="$2"
    local out="$work/$name.callgrind"
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then echo "bench-http-instructions: $name did not start" >&2; exit 1; fi
        sleep 0.1
    done
    local auth=()
    [[ -n "$key" ]] && auth=(-H "Authorization: Bearer $key")
    wrk -t1 -c4 -d2s "${auth[@]}" "http://127.0.0.1:$PORT/v1/hello" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    local reqs
    reqs="$(wrk -t1 -c4 -d"$DURATION" "${auth[@]}" "http://127.0.0.1:$PORT/v1/hello" \
        | awk '/requests in/ {print $1}')"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    local total
    total="$(callgrind_annotate "$out".* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')"
    printf '| %s | %s | %s |\n' "$name" "$reqs" "$((total / reqs))"
}

echo "| server | requests counted | instructions per request |"
echo "|---|---|---|"

KEYVAULT_BIND="127.0.0.1:$PORT" valgrind --tool=callgrind --callgrind-out-file="$work/bare.callgrind" \
    "$BIN/bare-axum" 2>"$work/bare.log" &
pid=$!
count bare ""

env -u DATABASE_URL -u REDIS_URL RUST_LOG=warn KEYVAULT_BIND="127.0.0.1:$PORT" \
    KEYVAULT_DEMO_KEY_FILE="$work/key" \
    valgrind --tool=callgrind --callgrind-out-file="$work/memory.callgrind" \
    "$BIN/host-app" 2>"$work/memory.log" &
pid=$!
for _ in $(seq 1 200); do [[ -s "$work/key" ]] && break; sleep 0.1; done
count memory "$(cat "$work/key")"
