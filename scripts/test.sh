#!/usr/bin/env bash
# Runs every test of the workspace, doctests included, against real PostgreSQL and Redis (and
# the Redis tests that matter across nodes against a local Redis Cluster as well). Starts
# either service if it is down and creates what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/keyvault_test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_up; then
    echo "test.sh: PostgreSQL is down; starting it" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
    pg_up || { echo "test.sh: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
    echo "test.sh: Redis is down; starting it" >&2
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis_up && break; sleep 1; done
    redis_up || { echo "test.sh: Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }
fi

# The dashboard's browser tests drive Debian's Chromium through chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver for the browser tests" >&2
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver fonts-wqy-zenhei >&2 \
        || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver fonts-wqy-zenhei >&2; } \
        || { echo "test.sh: could not install chromium and chromium-driver (apt-get)" >&2; exit 1; }
fi

# The database sqlx's test harness creates per-test databases from.
db="${DATABASE_URL##*/}"
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE \"$db\"" postgres >/dev/null
fi

# A local Redis Cluster of three masters: the Redis conformance suite and the cross-instance
# tests run against it too.
cluster_dir="$(mktemp -d)"
trap 'scripts/redis-cluster.sh stop "$cluster_dir"' EXIT
cluster_url="$(scripts/redis-cluster.sh start "$cluster_dir")"

cargo nextest run --workspace --all-targets --all-features --no-fail-fast
REDIS_URL="$cluster_url" cargo nextest run -p keyvault-redis --all-features --no-fail-fast \
    --test conformance --test multi_instance --test leases --test credit_leases --test live
cargo test --workspace --all-features --doc
