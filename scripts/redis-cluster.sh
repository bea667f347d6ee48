#!/usr/bin/env bash
# A local Redis Cluster of three masters on free loopback ports, for tests and benchmarks.
#
#   url="$(scripts/redis-cluster.sh start DIR)"   # prints the comma-separated node URLs
#   scripts/redis-cluster.sh stop DIR
#
# DIR holds the nodes' configuration, logs and pid files; `stop` ends the nodes and removes it.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

case "$cmd" in
    start)
        command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
            || { echo "redis-cluster: redis-server and redis-cli are needed" >&2; exit 1; }
        mkdir -p "$dir"
        # Three free ports, each with its cluster bus port (+10000) free too.
        read -r -a ports < <(python3 - <<'PY'
import socket
ports = []
while len(ports) < 3:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p + 10000 > 65535 or p in ports:
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    finally:
        b.close()
    ports.append(p)
print(*ports)
PY
)
        for p in "${ports[@]}"; do
            redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
                --cluster-config-file "$dir/nodes-$p.conf" --cluster-node-timeout 2000 \
                --dir "$dir" --save "" --appendonly no --daemonize yes \
                --logfile "$dir/$p.log" --pidfile "$dir/$p.pid"
        done
        for p in "${ports[@]}"; do
            for _ in $(seq 1 50); do
                redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break
                sleep 0.1
            done
            redis-cli -p "$p" ping 2>/dev/null | grep -q PONG \
                || { echo "redis-cluster: node $p did not start" >&2; cat "$dir/$p.log" >&2; exit 1; }
        done
        redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
            >"$dir/create.log" 2>&1 \
            || { echo "redis-cluster: cluster create failed" >&2; cat "$dir/create.log" >&2; exit 1; }
        for p in "${ports[@]}"; do
            for _ in $(seq 1 100); do
                redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
                sleep 0.1
            done
            redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' \
                || { echo "redis-cluster: node $p never saw the cluster ok" >&2; exit 1; }
        done
        urls=()
        for p in "${ports[@]}"; do urls+=("redis://127.0.0.1:$p"); done
        (IFS=,; echo "${urls[*]}")
        ;;
    stop)
        for pid in "$dir"/*.pid; do
            [[ -e "$pid" ]] || continue
            kill "$(cat "$pid")" 2>/dev/null || true
        done
        sleep 0.2
        rm -rf "$dir"
        ;;
    *)
        echo "usage: $0 start|stop DIR" >&2
        exit 2
        ;;
esac
