-- Raw usage events partitioned by UTC day (PARTITION BY RANGE (ts)), so that retention drops
-- whole days instead of deleting rows one by one (PgStore::purge_usage_before).
--
-- - One partition per UTC day, `kv_usage_events_pYYYYMMDD`, covering [day, day + 1). They are
--   created ahead by PgStore::ensure_usage_partitions (at migrate(), once a UTC day on the
--   ingest path, and by the retention job), through kv_usage_events_ensure_day below.
-- - `kv_usage_events_default` (the DEFAULT partition) takes an event for a day that has no
--   partition yet, so that no event is ever refused; creating that day's partition later
--   moves them out of it.
-- - The primary key is (request_id, ts): PostgreSQL requires the partition key in every
--   unique constraint. A retried event carries the same ts, so ingest stays idempotent
--   (`ON CONFLICT (request_id, ts)`), and both events of a pair land in the same partition.
-- - A request id counts once, whatever time each report gave it (CONTRACT §4: a request_id
--   already seen by any instance is not counted again; two instances given one id without a
--   ts each stamp their own), which (request_id, ts) cannot say. `kv_usage_ids`, one narrow
--   unpartitioned row per id with the time it was stored under, is claimed first in the
--   ingest transaction for every id that keyvault did not generate itself (a generated id
--   is never reused, so its event only comes back as itself, with its ts), and only events
--   whose ids were new are inserted. Retention deletes ids by that time after dropping
--   their events' partitions.
--
-- Existing rows are copied once into the partitions of their days (one pass over the old
-- table, the indexes built afterwards, which is faster than maintaining them row by row),
-- and every id into kv_usage_ids (which ids keyvault generated was not recorded, so all are
-- claimed; retention removes them with their events); the old table is then dropped. All
-- in the migration's one transaction.

ALTER TABLE kv_usage_events RENAME TO kv_usage_events_unpartitioned;

CREATE TABLE kv_usage_events (
    request_id     text        NOT NULL,
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
) PARTITION BY RANGE (ts);

CREATE TABLE kv_usage_events_default PARTITION OF kv_usage_events DEFAULT;

-- Creates the partition of the UTC day `day` unless it exists; returns whether it did. Rows
-- the DEFAULT partition holds for that day are moved into it in the same transaction
-- (PostgreSQL refuses a partition whose range the DEFAULT partition holds rows of).
--
-- The partition is made as a plain table, filled, given a CHECK constraint matching its bound
-- (so that ATTACH need not scan it) and then attached: ATTACH takes only a SHARE UPDATE
-- EXCLUSIVE lock on kv_usage_events, so ingest goes on meanwhile, where `CREATE TABLE …
-- PARTITION OF` would take an ACCESS EXCLUSIVE one. The DEFAULT partition is locked first:
-- ATTACH needs that lock anyway, and taking it before the move means no event for the day
-- enters it between the move and the attach.
CREATE FUNCTION kv_usage_events_ensure_day(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'kv_usage_events_p' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    -- Several instances may ensure the same days at once: one at a time, then look again.
    PERFORM pg_advisory_xact_lock(hashtext('kv_usage_events partitions'));
    IF to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    LOCK TABLE kv_usage_events_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I (LIKE kv_usage_events INCLUDING DEFAULTS)', part);
    EXECUTE format(
        'WITH moved AS (DELETE FROM kv_usage_events_default WHERE ts >= $1 AND ts < $2 '
        'RETURNING *) INSERT INTO %I SELECT * FROM moved', part)
    USING lo, hi;
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (ts >= %L AND ts < %L)',
        part, part || '_bound', lo, hi);
    EXECUTE format('ALTER TABLE kv_usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        part, lo, hi);
    -- The partition constraint now holds it; a second check would only cost inserts.
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_bound');
    RETURN true;
END $$;

-- A partition for every UTC day that holds events, found through the ts index (one probe per
-- day, not a scan of the table), then the rows copied in.
SELECT kv_usage_events_ensure_day(d.day)
FROM (
    WITH RECURSIVE days(day) AS (
        SELECT (min(ts) AT TIME ZONE 'UTC')::date FROM kv_usage_events_unpartitioned
        UNION ALL
        SELECT (SELECT (min(e.ts) AT TIME ZONE 'UTC')::date
                FROM kv_usage_events_unpartitioned AS e
                WHERE e.ts >= (days.day + 1)::timestamp AT TIME ZONE 'UTC')
        FROM days
        WHERE days.day IS NOT NULL
    )
    SELECT day FROM days WHERE day IS NOT NULL
) AS d;

INSERT INTO kv_usage_events (request_id, key_id, owner_id, ts, provider, route, method,
    status, latency_us, latency_bucket, outcome, cost)
SELECT request_id, key_id, owner_id, ts, provider, route, method, status, latency_us,
       latency_bucket, outcome, cost
FROM kv_usage_events_unpartitioned;

CREATE TABLE kv_usage_ids (
    request_id text        NOT NULL,
    ts         timestamptz NOT NULL
);

INSERT INTO kv_usage_ids (request_id, ts)
SELECT request_id, ts FROM kv_usage_events_unpartitioned;

DROP TABLE kv_usage_events_unpartitioned;

-- Built over the copied rows (and, for the events, created with every partition from now on).
ALTER TABLE kv_usage_events ADD CONSTRAINT kv_usage_events_pkey PRIMARY KEY (request_id, ts);
CREATE INDEX kv_usage_events_ts ON kv_usage_events (ts);
ALTER TABLE kv_usage_ids ADD CONSTRAINT kv_usage_ids_pkey PRIMARY KEY (request_id);
CREATE INDEX kv_usage_ids_ts ON kv_usage_ids (ts);

ANALYZE kv_usage_events;
ANALYZE kv_usage_ids;
