-- keyvault's schema. Every object is prefixed `kv_` so that it can share a database (and its
-- `public` schema) with the host application's own tables; the applied versions are tracked in
-- `kv_schema_migrations`, apart from the host's `_sqlx_migrations`.

CREATE TABLE kv_keys (
    id               uuid        PRIMARY KEY,
    quota_id         uuid        NOT NULL,
    name             text        NOT NULL,
    owner_id         text,
    prefix           text        NOT NULL,
    start            text        NOT NULL,
    digest           bytea       NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    enabled          boolean     NOT NULL,
    expires_at       timestamptz,
    scopes           text[]      NOT NULL,
    ip_allowlist     text[]      NOT NULL,
    -- Credits configuration ({"remaining": n, "refill": {...}}); the live balance is kv_credits.
    credits          jsonb,
    ratelimits       jsonb       NOT NULL,
    metadata         jsonb       NOT NULL,
    rotation         jsonb,
    next_rotation_at timestamptz,
    rotated_from     uuid,
    superseded_by    uuid,
    grace_until      timestamptz,
    last_used_at     timestamptz,
    -- u64 in the domain; every value up to 2^63-1 fits.
    revision         bigint      NOT NULL CHECK (revision >= 0)
);

CREATE INDEX kv_keys_owner ON kv_keys (owner_id, id);
CREATE INDEX kv_keys_quota ON kv_keys (quota_id);
CREATE INDEX kv_keys_rotation_due ON kv_keys (next_rotation_at)
    WHERE next_rotation_at IS NOT NULL AND superseded_by IS NULL AND enabled;
-- LEAST ignores NULLs: the earlier of expires_at and grace_until, as KeyRecord::effective_expiry.
CREATE INDEX kv_keys_effective_expiry ON kv_keys ((LEAST(expires_at, grace_until)))
    WHERE expires_at IS NOT NULL OR grace_until IS NOT NULL;

-- Credit balances by quota id (a key and its rotation successors share one).
CREATE TABLE kv_credits (
    quota_id      uuid        PRIMARY KEY,
    remaining     bigint      NOT NULL CHECK (remaining >= 0),
    -- The start of the refill interval last applied (NULL: none noted yet).
    refilled_for  timestamptz,
    -- Whether the last spend was admitted: lets one conditional upsert report its decision.
    last_admitted boolean     NOT NULL DEFAULT true
);

-- The audit log, hash-chained. Rows are only ever inserted.
CREATE TABLE kv_audit (
    seq        bigint      PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target_id  text,
    source_ip  text,
    request_id text,
    outcome    text        NOT NULL,
    details    jsonb       NOT NULL,
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL
);

CREATE INDEX kv_audit_target ON kv_audit (target_id, seq) WHERE target_id IS NOT NULL;
CREATE INDEX kv_audit_at ON kv_audit (at);

-- The tail of the chain, one row: appenders lock it (SELECT … FOR UPDATE) so that concurrent
-- transactions link one after the other.
CREATE TABLE kv_audit_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint  NOT NULL,
    hash bytea   NOT NULL
);
INSERT INTO kv_audit_head (id, seq, hash) VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Raw usage events, kept for the retention period (PgStore::purge_usage_before).
CREATE TABLE kv_usage_events (
    request_id     text        PRIMARY KEY,
    key_id         uuid,
    owner_id       text,
    ts             timestamptz NOT NULL,
    provider       text,
    route          text,
    method         text,
    status         integer     NOT NULL,
    latency_us     bigint      NOT NULL,
    -- LatencyHistogram::bucket_of(latency_us), computed where the buckets are defined.
    latency_bucket smallint    NOT NULL,
    outcome        text,
    cost           bigint      NOT NULL
);

CREATE INDEX kv_usage_events_ts ON kv_usage_events (ts);

-- Minute rollups, maintained by the same statement that inserts the events they count.
-- key_id is the nil UUID for the rollup over all keys; provider is '' for events without one.
-- The latency histogram is sparse: hist_buckets[i] holds hist_counts[i] calls.
CREATE TABLE kv_usage_rollup (
    key_id       uuid        NOT NULL,
    minute       timestamptz NOT NULL,
    provider     text        NOT NULL,
    status_class smallint    NOT NULL,
    calls        bigint      NOT NULL,
    hist_buckets smallint[]  NOT NULL,
    hist_counts  bigint[]    NOT NULL,
    PRIMARY KEY (key_id, minute, provider, status_class)
);
