#!/usr/bin/env bash
# Fuzzes the running API from its own OpenAPI document with Schemathesis (from PyPI):
# no response may be a server error, break the documented status codes, content types or
# schemas, or accept data the schema says is invalid.
#
#   examples/admin-server/scripts/fuzz.sh [SECONDS]
#
# Builds `keyvault`, starts it on a fresh SQLite file and port 0, and fuzzes with an admin
# token. Token revocation is left out: the fuzzer would revoke its own token.
set -euo pipefail
cd "$(dirname "$0")/../../.."
budget="${1:-180}"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

if ! command -v st >/dev/null; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q schemathesis
    PATH="$work/venv/bin:$PATH"
fi
cargo build -q -p keyvault-admin-server
bin="$PWD/target/debug/keyvault"
export DATABASE_URL="sqlite://$work/kv.db"
unset REDIS_URL
token="$("$bin" token create --name fuzz --role admin 2>/dev/null)"
"$bin" serve --bind 127.0.0.1:0 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$work/server.log" && break; sleep 0.1; done
addr="$(grep -o 'http://[0-9.:]*' "$work/server.log" | head -n1)"
st run "$addr/openapi.json" -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --exclude-path-regex '^/v1/tokens/' --max-time "$budget" -w 2
