-- The server's accounts: dashboard users, API tokens, sessions, settings and the leases of
-- background jobs, written by keyvault-core's account traits in the same transactions as
-- their audit records.
--
-- They take over the tables the standalone server used to create for itself (kv_srv_*).
-- Those are created here first when missing, so that one script upgrades a database the old
-- server ran on and sets up a new one alike; their rows are copied over and the old tables
-- dropped. The old server wrote ids as lower-case UUID text, digests as lower-case hex of 32
-- bytes and times as microseconds: a row that does not convert exactly (a digest that is not
-- 64 hex characters) fails the migration, which then changes nothing, rather than being lost.

CREATE TABLE IF NOT EXISTS kv_srv_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv_srv_users (username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS kv_srv_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, start TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT, created_by TEXT NOT NULL);

CREATE TABLE kv_users (
    username      TEXT    NOT NULL PRIMARY KEY,
    -- admin, operator, viewer or verifier (Role::as_str).
    role          TEXT    NOT NULL,
    -- The argon2 PHC string.
    password_hash TEXT    NOT NULL,
    enabled       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE kv_api_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    start      TEXT    NOT NULL,
    digest     BLOB    NOT NULL UNIQUE CHECK (length(digest) = 32),
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    created_by TEXT    NOT NULL
) STRICT;

-- The listing: unrevoked tokens, newest (highest UUIDv7) first.
CREATE INDEX kv_api_tokens_unrevoked ON kv_api_tokens (id) WHERE revoked_at IS NULL;

-- Sessions by the digest of their cookie value (never the value).
CREATE TABLE kv_sessions (
    digest     BLOB    NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
    username   TEXT    NOT NULL REFERENCES kv_users (username) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX kv_sessions_username ON kv_sessions (username);
CREATE INDEX kv_sessions_expires_at ON kv_sessions (expires_at);

CREATE TABLE kv_settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- One row per lease; a lease whose expires_at has passed is free.
CREATE TABLE kv_leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

INSERT INTO kv_settings (name, value) SELECT name, value FROM kv_srv_settings;

-- Users could not be disabled before: every one taken over is enabled.
INSERT INTO kv_users (username, role, password_hash, enabled, created_at, updated_at)
SELECT username, role, password_hash, 1, created_at, updated_at FROM kv_srv_users;

-- unhex() gives NULL for text that is not hex, which NOT NULL refuses; the CHECK refuses
-- any other length than 32 bytes.
INSERT INTO kv_api_tokens
    (id, name, role, start, digest, created_at, expires_at, revoked_at, created_by)
SELECT lower(id), name, role, start, unhex(digest), created_at, expires_at, revoked_at,
       created_by
FROM kv_srv_tokens;

DROP TABLE kv_srv_settings;
DROP TABLE kv_srv_users;
DROP TABLE kv_srv_tokens;
