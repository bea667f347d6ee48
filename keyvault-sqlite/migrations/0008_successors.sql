-- Successor delivery: the public key a key's automatic successor is sealed to (32 bytes,
-- derived from the key at its creation; NULL for keys made before), and on an old key the
-- sealed successor or when it was claimed (JSON).
ALTER TABLE kv_keys ADD COLUMN seal_key BLOB;
ALTER TABLE kv_keys ADD COLUMN successor TEXT;

-- Usage retention removes minute rollups by time.
CREATE INDEX kv_usage_rollup_minute ON kv_usage_rollup (minute);
