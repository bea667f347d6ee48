-- Alert rules (CONTRACT §7): the whole rule as JSON; the server reads its kind and params.
CREATE TABLE kv_alert_rules (
    id         uuid        PRIMARY KEY,
    created_at timestamptz NOT NULL,   -- rules list oldest first
    body       jsonb       NOT NULL    -- the whole AlertRule, as serde_json writes it
);

-- The alerts the rules raised, with their history. `id` is a UUIDv7, so that ordering by it
-- orders by start; `open` is true until the alert resolves, and a rule has at most one open
-- alert per subject (a key, or a client IP) even if two evaluations ever raced.
CREATE TABLE kv_alerts (
    id      uuid    PRIMARY KEY,       -- UUIDv7: sorts as started_at
    rule_id uuid    NOT NULL,
    key_id  uuid,
    subject text    NOT NULL,          -- Alert::subject(): key:<id>, ip:<address> or all
    state   text    NOT NULL,          -- firing, acknowledged or resolved
    open    boolean NOT NULL,          -- state <> 'resolved'
    body    jsonb   NOT NULL           -- the whole Alert, as serde_json writes it
);
CREATE UNIQUE INDEX kv_alerts_open ON kv_alerts (rule_id, subject) WHERE open;
CREATE INDEX kv_alerts_state ON kv_alerts (state, id);
CREATE INDEX kv_alerts_rule ON kv_alerts (rule_id, id);
CREATE INDEX kv_alerts_key ON kv_alerts (key_id, id);

-- The traffic baselines of `traffic_spike` rules, per rule and key, so that a restart
-- keeps them: the weighted mean of the key's calls per window, how many windows went into
-- it, and the end of the last of them. Deleted with their rule.
CREATE TABLE kv_alert_baselines (
    rule_id uuid             NOT NULL,
    key_id  uuid             NOT NULL,
    mean    double precision NOT NULL,
    windows integer          NOT NULL,
    through timestamptz      NOT NULL,
    PRIMARY KEY (rule_id, key_id)
);
