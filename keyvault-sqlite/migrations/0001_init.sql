-- keyvault's SQLite schema. Times are INTEGER microseconds since the Unix epoch (UTC): exact,
-- and compared as numbers. Ids are lower-case hyphenated UUID text, which sorts like the
-- UUID's bytes, so UUIDv7 key ids sort by creation time. u64 values (credits, revisions)
-- are at most 2^53-1 and fit INTEGER exactly.

CREATE TABLE kv_keys (
    id               TEXT    NOT NULL PRIMARY KEY,
    quota_id         TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    -- Lower-cased in Rust (Unicode-aware, as the in-memory store compares) for `search`.
    name_lower       TEXT    NOT NULL,
    owner_id         TEXT,
    prefix           TEXT    NOT NULL,
    start            TEXT    NOT NULL,
    start_lower      TEXT    NOT NULL,
    digest           BLOB    NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    enabled          INTEGER NOT NULL,
    expires_at       INTEGER,
    -- min(expires_at, grace_until): what expiry and clean-up queries filter on.
    effective_expiry INTEGER,
    scopes           TEXT    NOT NULL,
    ip_allowlist     TEXT    NOT NULL,
    credits          TEXT,
    ratelimits       TEXT    NOT NULL,
    metadata         TEXT    NOT NULL,
    rotation         TEXT,
    next_rotation_at INTEGER,
    rotated_from     TEXT,
    superseded_by    TEXT,
    grace_until      INTEGER,
    last_used_at     INTEGER,
    revision         INTEGER NOT NULL
) STRICT;

CREATE INDEX kv_keys_owner ON kv_keys (owner_id, id);
CREATE INDEX kv_keys_quota ON kv_keys (quota_id);
CREATE INDEX kv_keys_rotation ON kv_keys (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
CREATE INDEX kv_keys_expiry ON kv_keys (effective_expiry) WHERE effective_expiry IS NOT NULL;

-- One balance per quota (a key and its rotation successor share one).
CREATE TABLE kv_credits (
    quota_id     TEXT    NOT NULL PRIMARY KEY,
    remaining    INTEGER NOT NULL,
    -- The start of the refill interval last applied (NULL: none noted yet).
    refilled_for INTEGER,
    -- Whether the last spend was admitted: RETURNING sees only the new row, so the spend
    -- statement records its own verdict here.
    last_admitted INTEGER NOT NULL DEFAULT 1
) STRICT;

CREATE TABLE kv_audit (
    seq        INTEGER NOT NULL PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target_id  TEXT,
    source_ip  TEXT,
    request_id TEXT,
    outcome    TEXT    NOT NULL,
    details    TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
) STRICT;

CREATE INDEX kv_audit_target ON kv_audit (target_id, seq);
CREATE INDEX kv_audit_action ON kv_audit (action, seq);
CREATE INDEX kv_audit_actor ON kv_audit (actor, seq);
CREATE INDEX kv_audit_at ON kv_audit (at);

-- Raw usage events, unique per request id (a retried batch counts once).
CREATE TABLE kv_usage_events (
    request_id TEXT    NOT NULL PRIMARY KEY,
    key_id     TEXT,
    owner_id   TEXT,
    ts         INTEGER NOT NULL,
    provider   TEXT,
    route      TEXT,
    method     TEXT,
    status     INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    outcome    TEXT,
    cost       INTEGER NOT NULL
) STRICT;

CREATE INDEX kv_usage_events_ts ON kv_usage_events (ts);

-- Per-minute rollups of the events above, maintained when events are first inserted. Each
-- event counts twice: under its key (events without a key: not at all) and under the nil
-- UUID, the rollup over all keys, so that an unfiltered overview reads one row per minute,
-- provider and status class however many keys there are. `provider_set` tells a missing
-- provider from an empty one. `hist` is the core LatencyHistogram as a JSON object
-- {"bucket": count}, merged inside SQLite with json_each.
CREATE TABLE kv_usage_rollup (
    key_id       TEXT    NOT NULL,
    minute       INTEGER NOT NULL,
    provider_set INTEGER NOT NULL,
    provider     TEXT    NOT NULL,
    status_class INTEGER NOT NULL,
    calls        INTEGER NOT NULL,
    hist         TEXT    NOT NULL,
    PRIMARY KEY (key_id, minute, provider_set, provider, status_class)
) STRICT, WITHOUT ROWID;

-- The change log other processes on this file poll (SqliteChangeBus). A NULL key_id means
-- "anything may have changed".
CREATE TABLE kv_changes (
    rev     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    key_id  TEXT,
    digest  BLOB,
    origin  INTEGER
);
