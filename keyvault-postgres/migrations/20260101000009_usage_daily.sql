-- Daily rollups beside the hourly ones, maintained by the same transaction that inserts the
-- events they count. Statistics read the whole UTC days of a range here (a 30-day overview
-- reads about 30 rows per key and provider instead of 720 hours), hours and minutes only for
-- the partial days at either end. `day` is a multiple of 86 400 s since the epoch, whatever
-- the session's time zone. The columns are the hourly table's.
CREATE TABLE kv_usage_rollup_day (
    key_id       uuid        NOT NULL,
    day          timestamptz NOT NULL,
    provider     text        NOT NULL,
    calls        bigint      NOT NULL,
    errors       bigint      NOT NULL,
    hist_buckets smallint[]  NOT NULL,
    hist_counts  bigint[]    NOT NULL,
    PRIMARY KEY (key_id, day, provider)
);

-- Hours written before this migration, folded into days: calls summed per day, the
-- histograms merged bucket by bucket, in one pass over the hours each.
INSERT INTO kv_usage_rollup_day (key_id, day, provider, calls, errors, hist_buckets, hist_counts)
SELECT c.key_id, c.day, c.provider, c.calls, c.errors,
       coalesce(h.hb, '{}'), coalesce(h.hc, '{}')
FROM (
    SELECT key_id, to_timestamp(floor(extract(epoch FROM hour) / 86400) * 86400) AS day,
           provider, sum(calls)::bigint AS calls, sum(errors)::bigint AS errors
    FROM kv_usage_rollup_hour
    GROUP BY 1, 2, 3
) AS c
LEFT JOIN (
    SELECT key_id, day, provider, array_agg(b ORDER BY b) AS hb, array_agg(n ORDER BY b) AS hc
    FROM (
        SELECT r.key_id, to_timestamp(floor(extract(epoch FROM r.hour) / 86400) * 86400) AS day,
               r.provider, u.b, sum(u.c)::bigint AS n
        FROM kv_usage_rollup_hour AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
        GROUP BY 1, 2, 3, 4
    ) AS s
    GROUP BY 1, 2, 3
) AS h USING (key_id, day, provider);
