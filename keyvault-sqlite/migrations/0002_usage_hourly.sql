-- Hourly rollups beside the minute ones, maintained by the same transaction that inserts the
-- events they count. Statistics read the whole UTC hours of a range here (a day is 24 rows
-- per key, provider and status class instead of 1,440), minutes only for the partial hours
-- at either end. `hour` is microseconds since the epoch, a multiple of 3,600,000,000. The
-- columns are the minute table's, so that one code path writes and reads both.
CREATE TABLE kv_usage_rollup_hour (
    key_id       TEXT    NOT NULL,
    hour         INTEGER NOT NULL,
    provider_set INTEGER NOT NULL,
    provider     TEXT    NOT NULL,
    status_class INTEGER NOT NULL,
    calls        INTEGER NOT NULL,
    hist         TEXT    NOT NULL,
    PRIMARY KEY (key_id, hour, provider_set, provider, status_class)
) STRICT, WITHOUT ROWID;

-- Rollups written before this migration, folded into hours: calls summed per hour, the
-- histograms merged bucket by bucket.
INSERT INTO kv_usage_rollup_hour
    (key_id, hour, provider_set, provider, status_class, calls, hist)
SELECT c.key_id, c.hour, c.provider_set, c.provider, c.status_class, c.calls,
       coalesce(h.hist, '{}')
FROM (
    SELECT key_id, minute - (((minute % 3600000000) + 3600000000) % 3600000000) AS hour,
           provider_set, provider, status_class, sum(calls) AS calls
    FROM kv_usage_rollup
    GROUP BY 1, 2, 3, 4, 5
) AS c
LEFT JOIN (
    SELECT key_id, hour, provider_set, provider, status_class,
           json_group_object(bucket, n) AS hist
    FROM (
        SELECT r.key_id, r.minute - (((r.minute % 3600000000) + 3600000000) % 3600000000)
                   AS hour,
               r.provider_set, r.provider, r.status_class, j.key AS bucket, sum(j.value) AS n
        FROM kv_usage_rollup AS r, json_each(r.hist) AS j
        GROUP BY 1, 2, 3, 4, 5, 6
    )
    GROUP BY 1, 2, 3, 4, 5
) AS h USING (key_id, hour, provider_set, provider, status_class);
