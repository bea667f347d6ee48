"""Schemathesis hooks for scripts/schemathesis.sh.

The run's admin token is minted with `keyvault token create` on the server's own database
(KEYVAULT_BIN and DATABASE_URL come from the script). The fuzzer revokes tokens —
`DELETE /v1/tokens/{id}` is one of the operations under test, and the id it draws may be
its own token's — so a token is never kept for long: a new one every few seconds, and at
once after a 401 (Schemathesis retries the request with it).
"""

import os
import subprocess

import schemathesis


def mint_token() -> str:
    out = subprocess.run(
        [os.environ["KEYVAULT_BIN"], "token", "create", "--name", "schemathesis", "--role", "admin"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


@schemathesis.auth(refresh_interval=5, retry_on=[401])
class MintedAdminToken:
    def get(self, case, ctx):
        return mint_token()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
