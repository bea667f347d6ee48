-- The key list filtered by state (the dashboard's "disabled only"), newest first, without
-- walking every key.
CREATE INDEX kv_keys_enabled ON kv_keys (enabled, id);
