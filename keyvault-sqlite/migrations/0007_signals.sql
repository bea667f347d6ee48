-- Client signals (CONTRACT §7), rolled up as verifying processes flush them every second:
-- `NOT_FOUND` verifications per client IP and minute (the minute's start, in microseconds),
-- and each key's client IPs with when they were first and last seen. Both are pruned by age.
CREATE TABLE kv_ip_not_found (
    ip     TEXT    NOT NULL,   -- canonical: 203.0.113.9, 2001:db8::1
    minute INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (ip, minute)
) STRICT, WITHOUT ROWID;
CREATE INDEX kv_ip_not_found_minute ON kv_ip_not_found (minute);

CREATE TABLE kv_key_sightings (
    key_id     TEXT    NOT NULL,
    ip         TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (key_id, ip)
) STRICT, WITHOUT ROWID;
CREATE INDEX kv_key_sightings_first_seen ON kv_key_sightings (first_seen);
CREATE INDEX kv_key_sightings_last_seen ON kv_key_sightings (last_seen);
