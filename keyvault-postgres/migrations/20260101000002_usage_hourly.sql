-- Hourly rollups beside the minute ones, maintained by the same transaction that inserts the
-- events they count. Statistics read whole hours of a range here (24 rows per key and
-- provider a day instead of 1 440 × status classes), minutes only for the partial hours at
-- either end. The hour is UTC (`hour` is a multiple of 3 600 s since the epoch), whatever
-- the session's time zone.
--
-- No status class: the histogram does not need it and the overview only needs the calls
-- that failed (status outside 200–399), so one row per (key, hour, provider) suffices.
CREATE TABLE kv_usage_rollup_hour (
    key_id       uuid        NOT NULL,
    hour         timestamptz NOT NULL,
    provider     text        NOT NULL,
    calls        bigint      NOT NULL,
    errors       bigint      NOT NULL,
    hist_buckets smallint[]  NOT NULL,
    hist_counts  bigint[]    NOT NULL,
    PRIMARY KEY (key_id, hour, provider)
);

-- Rollups written before this migration, folded into hours.
INSERT INTO kv_usage_rollup_hour (key_id, hour, provider, calls, errors, hist_buckets, hist_counts)
SELECT c.key_id, c.hour, c.provider, c.calls, c.errors, h.hb, h.hc
FROM (
    SELECT key_id, to_timestamp(floor(extract(epoch FROM minute) / 3600) * 3600) AS hour, provider,
           sum(calls)::bigint AS calls,
           coalesce(sum(calls) FILTER (WHERE status_class NOT IN (2, 3)), 0)::bigint AS errors
    FROM kv_usage_rollup
    GROUP BY 1, 2, 3
) AS c
CROSS JOIN LATERAL (
    SELECT array_agg(s.b ORDER BY s.b) AS hb, array_agg(s.c ORDER BY s.b) AS hc
    FROM (
        SELECT u.b, sum(u.c)::bigint AS c
        FROM kv_usage_rollup AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
        WHERE r.key_id = c.key_id AND r.provider = c.provider
          AND r.minute >= c.hour AND r.minute < c.hour + interval '1 hour'
        GROUP BY u.b
    ) AS s
) AS h;
