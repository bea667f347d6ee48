#!/usr/bin/env bash
# HTTP overhead of the keyvault layer: bare axum vs host-app, same route (GET /v1/hello),
# same machine, same run. Each server is pinned to one core (so tokio runs one worker), wrk to
# another; configurations are interleaved in rounds so drift hits all alike; the table shows
# medians over the rounds and the median per-round ratio to bare axum.
#
#   scripts/bench-http.sh                 # 3 rounds of 10 s, 64 connections
#   ROUNDS=5 DURATION=20s scripts/bench-http.sh
#
# Configurations: `bare` (examples/bare-axum), `memory` (host-app on in-memory backends) and,
# when DATABASE_URL is set, `database` (host-app on DATABASE_URL and REDIS_URL, key without
# limits: a cache hit per request, usage batched into the database) and `database-limited`
# (the same with a rate limit on the key: one limiter call, a Redis script with REDIS_URL, per
# request). The database runs create their keys with batch-job and store every request's
# usage there: point DATABASE_URL at a database kept for benchmarks. Only loopback addresses
# are used.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
PORT="${PORT:-18090}"
BIN="${BIN_DIR:-target/release}"

command -v wrk >/dev/null || { echo "bench-http: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench-http: taskset is missing (util-linux)" >&2; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p bare-axum -p host-app -p batch-job >&2
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

configs=(bare memory)
if [[ -n "${DATABASE_URL:-}" ]]; then
    configs+=(database database-limited)
    # Keys for the database runs, made through the library's own batch tool.
    printf 'name,limits\nbench-open,\nbench-limited,1000000000/1h\n' >"$work/keys.csv"
    "$BIN/batch-job" create-keys --csv "$work/keys.csv" --out "$work/keys.jsonl" >&2
    db_key_open="$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][0]["key"])' "$work/keys.jsonl")"
    db_key_limited="$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][1]["key"])' "$work/keys.jsonl")"
fi

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# Starts one configuration's server on $PORT; sets server_pid and key.
start() {
    local cfg="$1"
    local keyfile="$work/key"
    rm -f "$keyfile"
    case "$cfg" in
        bare)
            KEYVAULT_BIND="127.0.0.1:$PORT" taskset -c "$SERVER_CPU" "$BIN/bare-axum" \
                2>"$work/$cfg.log" &
            server_pid=$!
            key="kv_unused"
            ;;
        memory)
            env -u DATABASE_URL -u REDIS_URL RUST_LOG=warn KEYVAULT_BIND="127.0.0.1:$PORT" \
                KEYVAULT_DEMO_KEY_FILE="$keyfile" \
                taskset -c "$SERVER_CPU" "$BIN/host-app" 2>"$work/$cfg.log" &
            server_pid=$!
            ;;
        database*)
            RUST_LOG=warn KEYVAULT_BIND="127.0.0.1:$PORT" \
                taskset -c "$SERVER_CPU" "$BIN/host-app" 2>"$work/$cfg.log" &
            server_pid=$!
            ;;
    esac
    if ! wait_port; then
        echo "bench-http: $cfg did not start:" >&2
        cat "$work/$cfg.log" >&2
        server_pid=""
        return 1
    fi
    if [[ "$cfg" == memory ]]; then
        key="$(cat "$keyfile")"
    elif [[ "$cfg" == database ]]; then
        key="$db_key_open"
    elif [[ "$cfg" == database-limited ]]; then
        key="$db_key_limited"
    fi
}

stop() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

# Latency text from wrk (123.45us, 1.23ms, 1.01s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# CPU time (user + system, in clock ticks) the server has used so far.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$server_pid/stat"
}

run_wrk() {
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$1" --latency \
        -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/v1/hello"
}

results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${configs[@]}"; do
        start "$cfg" || exit 1
        run_wrk "$WARMUP" >/dev/null
        cpu_before="$(cpu_ticks)"
        out="$(run_wrk "$DURATION")"
        cpu_after="$(cpu_ticks)"
        stop
        rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
        p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
        p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
        non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
        if [[ -n "$non2xx" ]]; then
            echo "bench-http: $cfg answered $non2xx non-2xx responses; is the key valid?" >&2
            exit 1
        fi
        reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
        # Server CPU per request in µs: robust to other load on the machine, unlike req/s.
        cpu_us="$(awk -v t="$((cpu_after - cpu_before))" -v hz="$(getconf CLK_TCK)" -v n="$reqs" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
        echo "round $round $cfg: $rps req/s, p50 $p50 ms, p99 $p99 ms, $cpu_us µs CPU/request" >&2
        echo "$round $cfg $rps $p50 $p99 $cpu_us" >>"$results"
    done
done

echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION, server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU, $ROUNDS interleaved rounds, medians"
echo
echo "| server | req/s | p50 ms | p99 ms | ratio to bare (rounds' range) | p99 added ms | server CPU µs/request | CPU ratio (bare CPU / this) |"
echo "|---|---|---|---|---|---|---|---|"
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for rnd, cfg, rps, p50, p99, cpu in rows:
    by.setdefault(cfg, {})[rnd] = (float(rps), float(p50), float(p99), float(cpu))
bare = by.get("bare", {})
names = {
    "bare": "bare axum",
    "memory": "host-app, in-memory",
    "database": "host-app, database (+ Redis if set), key without limits",
    "database-limited": "host-app, database (+ Redis if set), key with a rate limit",
}
for cfg in names:
    if cfg not in by:
        continue
    runs = by[cfg]
    med = lambda i: statistics.median(r[i] for r in runs.values())
    ratios = [runs[r][0] / bare[r][0] for r in runs if r in bare]
    added = [runs[r][2] - bare[r][2] for r in runs if r in bare]
    cpu_ratios = [bare[r][3] / runs[r][3] for r in runs if r in bare]
    # The range shows how far single rounds scatter: on a shared machine, further than the
    # differences worth measuring.
    ratio = (
        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        if len(ratios) > 1 else f"{ratios[0]:.2f}" if ratios else "-"
    )
    add = f"{statistics.median(added):+.3f}" if added and cfg != "bare" else "-"
    cpu_ratio = f"{statistics.median(cpu_ratios):.2f}" if cpu_ratios else "-"
    print(f"| {names[cfg]} | {med(0):,.0f} | {med(1):.3f} | {med(2):.3f} | {ratio} | {add} | {med(3):.2f} | {cpu_ratio} |")
PY
