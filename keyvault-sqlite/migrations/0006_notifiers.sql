-- Notification channels (CONTRACT §7). `events` is a JSON array of event types (empty: all).
-- The secret and the URL are kept as given: every attempt needs them.
CREATE TABLE kv_notifiers (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    url        TEXT    NOT NULL,
    secret     TEXT,
    events     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- The outbox: one row per event and channel, written when the event happens and attempted
-- until it is delivered or gives up. `body` is kept byte for byte (signatures cover it);
-- `state` is pending, delivered or gave_up. Deleted with their channel.
CREATE TABLE kv_deliveries (
    id          TEXT    NOT NULL PRIMARY KEY,
    notifier_id TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    next_at     INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    last_status INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX kv_deliveries_due ON kv_deliveries (state, next_at);
CREATE INDEX kv_deliveries_notifier ON kv_deliveries (notifier_id, created_at, id);
