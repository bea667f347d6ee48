-- Client signals (CONTRACT §7), rolled up as verifying processes flush them every second:
-- `NOT_FOUND` verifications per client IP and minute, and each key's client IPs with when
-- they were first and last seen. Both are pruned by age. Addresses are kept as text in
-- their canonical form ("C": ordered byte by byte, as every other store orders them).
CREATE TABLE kv_ip_not_found (
    ip     text COLLATE "C" NOT NULL,
    minute timestamptz      NOT NULL,   -- the minute's start
    count  bigint           NOT NULL,
    PRIMARY KEY (ip, minute)
);
CREATE INDEX kv_ip_not_found_minute ON kv_ip_not_found (minute);

CREATE TABLE kv_key_sightings (
    key_id     uuid             NOT NULL,
    ip         text COLLATE "C" NOT NULL,
    first_seen timestamptz      NOT NULL,
    last_seen  timestamptz      NOT NULL,
    PRIMARY KEY (key_id, ip)
);
CREATE INDEX kv_key_sightings_first_seen ON kv_key_sightings (first_seen);
CREATE INDEX kv_key_sightings_last_seen ON kv_key_sightings (last_seen);
