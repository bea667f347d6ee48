-- The server's accounts: dashboard users, API tokens, sessions, settings and the leases of
-- background jobs, written by keyvault-core's account traits in the same transactions as
-- their audit records.
--
-- They take over the tables the standalone server used to create for itself (kv_srv_*).
-- Those are created here first when missing, so that one script upgrades a database the old
-- server ran on and sets up a new one alike; their rows are copied over and the old tables
-- dropped. The old server wrote ids as UUID text, digests as hex of 32 bytes and times as
-- bigint microseconds since the epoch: a row that does not convert exactly (an id that is not
-- a UUID, a digest that is not 64 hex characters) fails the migration, which then changes
-- nothing, rather than being lost.

CREATE TABLE IF NOT EXISTS kv_srv_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv_srv_users (username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS kv_srv_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, start TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT, created_by TEXT NOT NULL);

CREATE TABLE kv_users (
    username      text        PRIMARY KEY,
    -- admin, operator, viewer or verifier (Role::as_str).
    role          text        NOT NULL,
    -- The argon2 PHC string.
    password_hash text        NOT NULL,
    enabled       boolean     NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE kv_api_tokens (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    role       text        NOT NULL,
    start      text        NOT NULL,
    digest     bytea       NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    created_by text        NOT NULL
);

-- The listing: unrevoked tokens, newest (highest UUIDv7) first.
CREATE INDEX kv_api_tokens_unrevoked ON kv_api_tokens (id) WHERE revoked_at IS NULL;

-- Sessions by the digest of their cookie value (never the value).
CREATE TABLE kv_sessions (
    digest     bytea       PRIMARY KEY CHECK (octet_length(digest) = 32),
    username   text        NOT NULL REFERENCES kv_users (username) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX kv_sessions_username ON kv_sessions (username);
CREATE INDEX kv_sessions_expires_at ON kv_sessions (expires_at);

CREATE TABLE kv_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- One row per lease; a lease whose expires_at has passed is free.
CREATE TABLE kv_leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

INSERT INTO kv_settings (name, value) SELECT name, value FROM kv_srv_settings;

-- Microseconds to timestamptz by interval arithmetic, which is exact to the microsecond
-- (to_timestamp goes through a double of seconds and is not). Users could not be disabled
-- before: every one taken over is enabled.
INSERT INTO kv_users (username, role, password_hash, enabled, created_at, updated_at)
SELECT username, role, password_hash, true,
       timestamptz 'epoch' + created_at * interval '1 microsecond',
       timestamptz 'epoch' + updated_at * interval '1 microsecond'
FROM kv_srv_users;

INSERT INTO kv_api_tokens
    (id, name, role, start, digest, created_at, expires_at, revoked_at, created_by)
SELECT id::uuid, name, role, start, decode(digest, 'hex'),
       timestamptz 'epoch' + created_at * interval '1 microsecond',
       timestamptz 'epoch' + expires_at * interval '1 microsecond',
       timestamptz 'epoch' + revoked_at * interval '1 microsecond',
       created_by
FROM kv_srv_tokens;

DROP TABLE kv_srv_settings, kv_srv_users, kv_srv_tokens;
