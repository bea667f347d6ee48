#!/usr/bin/env bash
# Tests the server against its own OpenAPI document with Schemathesis: every phase
# (examples, coverage, fuzzing, stateful) and every check. A request the document calls
# valid must be accepted, one it calls invalid refused, and every answer must match its
# documented status, content type and schema. What JSON Schema cannot say is excused in
# schemathesis.toml, one operation at a time, each with its reason.
#
#   scripts/schemathesis.sh [st run options…]      e.g. --max-examples 50, --seed 1
#
# Builds `keyvault` (nothing else), serves it on a scratch SQLite file and a free port, and
# authenticates with admin tokens minted by scripts/schemathesis_hooks.py.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v st >/dev/null; then
    echo "schemathesis.sh: needs Schemathesis 4 (pip install 'schemathesis>=4.32,<5')" >&2
    exit 2
fi
cargo build -q -p keyvault-admin-server
target="${CARGO_TARGET_DIR:-$PWD/target}"
export KEYVAULT_BIN="$target/debug/keyvault"

work="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
export DATABASE_URL="sqlite://$work/kv.db"
unset REDIS_URL KEYVAULT_PEPPER
# Minting the first token also creates the database's tables.
"$KEYVAULT_BIN" token create --name schemathesis-setup --role admin >/dev/null

"$KEYVAULT_BIN" serve --bind 127.0.0.1:0 2>"$work/server.log" &
pid=$!
addr=""
for _ in $(seq 1 100); do
    addr="$(grep -o 'http://[0-9.:]*' "$work/server.log" | head -n1 || true)"
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "schemathesis.sh: the server did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

status=0
st --config-file schemathesis.toml run "$addr/openapi.json" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    "$@" || status=$?
# The answers per operation, from the server's access log: an operation that never got a 2xx
# was only ever refused (a run whose token was revoked sees nothing but 401s).
python3 - "$work/server.log" <<'PY'
import collections, re, sys
seen = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    m = re.search(r'method="(\w+)" route="(/[^"]*)" status=(\d+)', line)
    if m:
        seen[f"{m[1]} {m[2]}"][m[3][0] + "xx"] += 1
print("answers per operation (server's access log):")
for op, counts in sorted(seen.items()):
    flag = "" if counts["2xx"] else "   <- no success"
    print(f"  {op:32} " + " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) + flag)
PY
# A 5xx is a bug even when Schemathesis did not catch its response: show the server's errors.
if grep -q ' ERROR ' "$work/server.log"; then
    echo "schemathesis.sh: the server logged errors:" >&2
    grep ' ERROR ' "$work/server.log" | head -n 20 >&2
    status=1
fi
exit "$status"
