-- Alert rules (CONTRACT §7): the whole rule as JSON; the server reads its kind and params.
CREATE TABLE kv_alert_rules (
    id         TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL,
    body       TEXT    NOT NULL
) STRICT;

-- The alerts the rules raised, with their history. `id` is a UUIDv7, so that ordering by it
-- orders by start; `open` is 1 until the alert resolves, and a rule has at most one open
-- alert per subject (a key, or a client IP) even if two evaluations ever raced.
CREATE TABLE kv_alerts (
    id      TEXT    NOT NULL PRIMARY KEY,
    rule_id TEXT    NOT NULL,
    key_id  TEXT,
    subject TEXT    NOT NULL,
    state   TEXT    NOT NULL,
    open    INTEGER NOT NULL,
    body    TEXT    NOT NULL
) STRICT;
CREATE UNIQUE INDEX kv_alerts_open ON kv_alerts (rule_id, subject) WHERE open = 1;
CREATE INDEX kv_alerts_state ON kv_alerts (state, id);
CREATE INDEX kv_alerts_rule ON kv_alerts (rule_id, id);
CREATE INDEX kv_alerts_key ON kv_alerts (key_id, id);

-- The traffic baselines of `traffic_spike` rules, per rule and key, so that a restart
-- keeps them.
CREATE TABLE kv_alert_baselines (
    rule_id TEXT    NOT NULL,
    key_id  TEXT    NOT NULL,
    mean    REAL    NOT NULL,
    windows INTEGER NOT NULL,
    through INTEGER NOT NULL,
    PRIMARY KEY (rule_id, key_id)
) STRICT, WITHOUT ROWID;
