-- Daily rollups beside the hourly ones, maintained by the same transaction that inserts the
-- events they count. Statistics read the whole UTC days of a range here (a 30-day overview
-- reads about 30 rows per key, provider and status class instead of 720 hours), hours and
-- minutes only for the partial days at either end. `day` is microseconds since the epoch, a
-- multiple of 86,400,000,000. The columns are the hourly table's.
CREATE TABLE kv_usage_rollup_day (
    key_id       TEXT    NOT NULL,
    day          INTEGER NOT NULL,
    provider_set INTEGER NOT NULL,
    provider     TEXT    NOT NULL,
    status_class INTEGER NOT NULL,
    calls        INTEGER NOT NULL,
    hist         TEXT    NOT NULL,
    PRIMARY KEY (key_id, day, provider_set, provider, status_class)
) STRICT, WITHOUT ROWID;

-- Hours written before this migration, folded into days: calls summed per day, the
-- histograms merged bucket by bucket.
INSERT INTO kv_usage_rollup_day
    (key_id, day, provider_set, provider, status_class, calls, hist)
SELECT c.key_id, c.day, c.provider_set, c.provider, c.status_class, c.calls,
       coalesce(h.hist, '{}')
FROM (
    SELECT key_id, hour - (((hour % 86400000000) + 86400000000) % 86400000000) AS day,
           provider_set, provider, status_class, sum(calls) AS calls
    FROM kv_usage_rollup_hour
    GROUP BY 1, 2, 3, 4, 5
) AS c
LEFT JOIN (
    SELECT key_id, day, provider_set, provider, status_class,
           json_group_object(bucket, n) AS hist
    FROM (
        SELECT r.key_id, r.hour - (((r.hour % 86400000000) + 86400000000) % 86400000000)
                   AS day,
               r.provider_set, r.provider, r.status_class, j.key AS bucket, sum(j.value) AS n
        FROM kv_usage_rollup_hour AS r, json_each(r.hist) AS j
        GROUP BY 1, 2, 3, 4, 5, 6
    )
    GROUP BY 1, 2, 3, 4, 5
) AS h USING (key_id, day, provider_set, provider, status_class);
