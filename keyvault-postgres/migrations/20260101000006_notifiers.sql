-- Notification channels (CONTRACT §7). The secret and the URL are kept as given: every
-- attempt needs them.
CREATE TABLE kv_notifiers (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    kind       text        NOT NULL,   -- webhook, slack, or one a Rust user adds
    url        text        NOT NULL,
    secret     text,                   -- a webhook's signing secret (whsec_…)
    events     text[]      NOT NULL,   -- the event types it receives; empty means all
    created_at timestamptz NOT NULL    -- channels list oldest first
);

-- The outbox: one row per event and channel, written when the event happens and attempted
-- until it is delivered or gives up. Deleted with their channel.
CREATE TABLE kv_deliveries (
    -- The webhook-id (msg_ and a UUIDv7). "C": ordered byte by byte, as every other store
    -- orders it, whatever the database's collation.
    id          text COLLATE "C" PRIMARY KEY,
    notifier_id uuid        NOT NULL,
    event       text        NOT NULL,
    body        text        NOT NULL,   -- text, not jsonb: signatures cover its exact bytes
    attempts    integer     NOT NULL,
    next_at     timestamptz NOT NULL,
    state       text        NOT NULL,   -- pending, delivered or gave_up
    last_status integer,                -- the last attempt's HTTP status, if it got one
    last_error  text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX kv_deliveries_due ON kv_deliveries (state, next_at);
CREATE INDEX kv_deliveries_notifier ON kv_deliveries (notifier_id, created_at, id);
