#!/usr/bin/env bash
# A soak: mixed load for DURATION against the standalone server and host-app on PostgreSQL +
# Redis, sampling each process's resident memory and open files, and the database's
# connections, every SAMPLE. Writes a CSV and prints, per series, the first sample after the
# warm-up against the last (flat means within 10 %).
#
#   scripts/soak.sh                              # 30 minutes, a sample a minute
#   DURATION=300 SAMPLE=15 WARMUP=60 scripts/soak.sh
#   SKIP_BUILD=1 BIN_DIR=target/debug scripts/soak.sh
#
# The load, all at once: verifications through host-app's layer (wrk, 8 connections),
# usage reported over REST (a batch of 20 events a second), dashboard reads (the overview
# page and its JSON, signed in, twice a second) and key changes (a key disabled and enabled,
# another updated, every second). Needs PostgreSQL (DATABASE_ADMIN_URL, default
# postgres://postgres@127.0.0.1:5432/postgres; a database kv_soak is dropped and made),
# Redis (REDIS_URL, default redis://127.0.0.1:6379; its own namespace), wrk, curl and psql.
# Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-1800}"
SAMPLE="${SAMPLE:-60}"
WARMUP="${WARMUP:-120}"
BIN="${BIN_DIR:-target/release}"
ADMIN_URL="${DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB_URL="${ADMIN_URL%/*}/kv_soak"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}"
SERVER_PORT="${SERVER_PORT:-18121}"
HOST_PORT="${HOST_PORT:-18122}"
OUT="${OUT:-target/soak.csv}"

for tool in wrk curl psql; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is missing" >&2; exit 1; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p keyvault-admin-server -p host-app >&2
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # The processes' logs (warnings and errors) and wrk's report, to explain what went wrong.
    mkdir -p "$(dirname "$OUT")/soak-logs"
    cp "$work"/*.log "$work"/wrk.txt "$(dirname "$OUT")/soak-logs/" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS kv_soak WITH (FORCE)" -c "CREATE DATABASE kv_soak" >/dev/null
export DATABASE_URL="$DB_URL" REDIS_URL="$REDIS" KEYVAULT_REDIS_NAMESPACE="kv-soak-$$" KEYVAULT_LOG=warn
server="http://127.0.0.1:$SERVER_PORT"
host="http://127.0.0.1:$HOST_PORT"

KEYVAULT_BIND="127.0.0.1:$SERVER_PORT" "$BIN/keyvault" serve >"$work/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 1 200); do curl -sf "$server/readyz" >/dev/null && break; sleep 0.1; done
printf '%s\n' 'soak-password-1' | "$BIN/keyvault" create-admin --username soak --password-stdin >/dev/null
"$BIN/keyvault" token create --name soak --role admin >"$work/token"
field() { sed -n "s/^  \"$1\": \"\([^\"]*\)\",*$/\1/p" "$2" | head -1; }
"$BIN/keyvault" keys create --name soak-load --rate-limit "1000000/1s" --credits 1000000000 --json >"$work/load.json"
"$BIN/keyvault" keys create --name soak-toggled --json >"$work/toggled.json"
field key "$work/load.json" >"$work/key"
key_id="$(field id "$work/load.json")"
toggled="$(field id "$work/toggled.json")"
token="$(cat "$work/token")"
[[ -n "$key_id" && -n "$toggled" && -s "$work/key" ]] || { echo "soak: keys not created" >&2; exit 1; }

KEYVAULT_BIND="127.0.0.1:$HOST_PORT" "$BIN/host-app" >"$work/host.log" 2>&1 &
host_pid=$!
pids+=("$host_pid")
for _ in $(seq 1 200); do curl -s -o /dev/null "$host/v1/hello" && break; sleep 0.1; done

# The dashboard's session: its sign-in form, the CSRF token, the cookie.
jar="$work/jar"
csrf="$(curl -s -c "$jar" "$server/admin/login" | grep -o 'name="csrf" value="[^"]*"' | head -1 | sed 's/.*value="//;s/"$//')"
curl -s -b "$jar" -c "$jar" -o /dev/null -H "Origin: $server" \
    --data-urlencode "username=soak" --data-urlencode "password=soak-password-1" \
    --data-urlencode "csrf=$csrf" "$server/admin/login"

end=$(( $(date +%s) + DURATION ))
# The load outlasts the last sample by one interval, so every sample is taken under load.
load_end=$(( end + SAMPLE ))
wrk -t1 -c8 -d"$(( DURATION + SAMPLE ))s" -H "Authorization: Bearer $(cat "$work/key")" "$host/v1/hello" \
    >"$work/wrk.txt" 2>&1 &
pids+=("$!")
(
    n=0
    while (( $(date +%s) < load_end )); do
        events=""
        for i in $(seq 1 20); do
            events+="{\"key_id\":\"$key_id\",\"provider\":\"soak\",\"status\":200,\"latency_ms\":3,\"request_id\":\"soak-$n-$i\"},"
        done
        curl -s -o /dev/null -w 'usage %{http_code}\n' -X POST -H "Authorization: Bearer $token" \
            -H "Content-Type: application/json" -d "{\"events\":[${events%,}]}" "$server/v1/usage" \
            >>"$work/status"
        n=$((n + 1))
        sleep 1
    done
) &
pids+=("$!")
(
    while (( $(date +%s) < load_end )); do
        curl -s -o /dev/null -w 'overview %{http_code}\n' -b "$jar" "$server/admin" >>"$work/status"
        curl -s -o /dev/null -w 'overview-json %{http_code}\n' -b "$jar" \
            "$server/admin/api/overview?range=24h" >>"$work/status"
        sleep 0.5
    done
) &
pids+=("$!")
(
    while (( $(date +%s) < load_end )); do
        for enabled in false true; do
            curl -s -o /dev/null -w 'key-change %{http_code}\n' -X PATCH -H "Authorization: Bearer $token" \
                -H "Content-Type: application/json" \
                -d "{\"enabled\":$enabled,\"metadata\":{\"at\":\"$(date +%s)\"}}" \
                "$server/v1/keys/$toggled" >>"$work/status"
            sleep 0.5
        done
    done
) &
pids+=("$!")

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
conns() { psql -Atq "$ADMIN_URL" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = 'kv_soak'"; }

mkdir -p "$(dirname "$OUT")"
echo "elapsed_s,server_rss_kib,server_fds,host_rss_kib,host_fds,db_connections" >"$OUT"
start=$(date +%s)
while (( $(date +%s) < end )); do
    sleep "$SAMPLE"
    kill -0 "$server_pid" 2>/dev/null || { echo "soak: the server stopped" >&2; cat "$work/server.log" >&2; exit 1; }
    kill -0 "$host_pid" 2>/dev/null || { echo "soak: host-app stopped" >&2; cat "$work/host.log" >&2; exit 1; }
    echo "$(( $(date +%s) - start )),$(rss "$server_pid"),$(fds "$server_pid"),$(rss "$host_pid"),$(fds "$host_pid"),$(conns)" >>"$OUT"
done
wait "${pids[2]}" 2>/dev/null || true

echo "soak: $(grep -E 'requests in|Non-2xx' "$work/wrk.txt" | tr -s ' ' | tr '\n' ';')"
echo "soak: other requests by status: $(sort "$work/status" | uniq -c | tr -s ' ' | tr '\n' ';')"
echo "soak: samples in $OUT"
awk -F, -v warm="$WARMUP" '
    NR == 1 { for (i = 2; i <= NF; i++) name[i] = $i; next }
    $1 >= warm && !seen { for (i = 2; i <= NF; i++) first[i] = $i; seen = 1 }
    { for (i = 2; i <= NF; i++) last[i] = $i }
    END {
        if (!seen) { print "soak: no sample after the warm-up"; exit 1 }
        for (i = 2; i in name; i++) {
            d = first[i] == 0 ? 0 : (last[i] - first[i]) * 100 / first[i]
            printf "| %s | %s | %s | %+.1f %% |\n", name[i], first[i], last[i], d
        }
    }' "$OUT"
