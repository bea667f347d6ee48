//! [`SignalStore`] on PostgreSQL: `kv_ip_not_found` (a count per client IP and minute) and
//! `kv_key_sightings` (a row per key and client IP), each batch upserted in one statement
//! per table from arrays.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{IpCount, KeyId, Result, Sighting, SignalStore};
use sqlx::{Row, postgres::PgRow};
use uuid::Uuid;

use crate::{PgStore, db, to_i64, to_u64};

/// Every column of `kv_key_sightings`, as [`decode_sighting`] reads them.
macro_rules! sighting_columns {
    () => {
        "key_id, ip, first_seen, last_seen"
    };
}

fn decode_sighting(row: &PgRow) -> Result<Sighting, crate::Error> {
    Ok(Sighting {
        key_id: KeyId::from_uuid(row.try_get::<Uuid, _>("key_id")?),
        ip: row.try_get("ip")?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
    })
}

#[async_trait]
impl SignalStore for PgStore {
    async fn record_signals(&self, not_found: &[IpCount], seen: &[Sighting]) -> Result<()> {
        if not_found.is_empty() && seen.is_empty() {
            return Ok(());
        }
        let mut ips = Vec::with_capacity(not_found.len());
        let mut minutes = Vec::with_capacity(not_found.len());
        let mut counts = Vec::with_capacity(not_found.len());
        for c in not_found {
            ips.push(c.ip.as_str());
            minutes.push(c.minute);
            counts.push(to_i64(c.count, "count")?);
        }
        let mut keys = Vec::with_capacity(seen.len());
        let mut seen_ips = Vec::with_capacity(seen.len());
        let mut firsts = Vec::with_capacity(seen.len());
        let mut lasts = Vec::with_capacity(seen.len());
        for s in seen {
            keys.push(*s.key_id.as_uuid());
            seen_ips.push(s.ip.as_str());
            firsts.push(s.first_seen);
            lasts.push(s.last_seen);
        }
        // Arrays: one statement per table whatever the batch's size (bound values are
        // limited to 65,535 a statement, a flush holds up to 100,000 entries). GROUP BY folds
        // repeats within the batch, which one upsert may not touch twice; ORDER BY takes the
        // row locks in one order, so that two instances flushing at once wait rather than
        // deadlock.
        let mut tx = self.pool.begin().await.map_err(db)?;
        if !not_found.is_empty() {
            sqlx::query(
                "INSERT INTO kv_ip_not_found (ip, minute, count) \
                 SELECT ip, minute, SUM(count)::bigint \
                 FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[]) AS b (ip, minute, count) \
                 GROUP BY ip, minute ORDER BY ip, minute \
                 ON CONFLICT (ip, minute) DO UPDATE \
                 SET count = kv_ip_not_found.count + EXCLUDED.count",
            )
            .bind(&ips)
            .bind(&minutes)
            .bind(&counts)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        if !seen.is_empty() {
            sqlx::query(concat!(
                "INSERT INTO kv_key_sightings (",
                sighting_columns!(),
                ") SELECT key_id, ip, MIN(first_seen), MAX(last_seen) \
                 FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) \
                   AS b (key_id, ip, first_seen, last_seen) \
                 GROUP BY key_id, ip ORDER BY key_id, ip \
                 ON CONFLICT (key_id, ip) DO UPDATE \
                 SET first_seen = LEAST(kv_key_sightings.first_seen, EXCLUDED.first_seen), \
                   last_seen = GREATEST(kv_key_sightings.last_seen, EXCLUDED.last_seen)"
            ))
            .bind(&keys)
            .bind(&seen_ips)
            .bind(&firsts)
            .bind(&lasts)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn not_found_by_ip(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        above: u64,
    ) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT ip, SUM(count)::bigint AS n FROM kv_ip_not_found \
             WHERE minute >= $1 AND minute < $2 \
             GROUP BY ip HAVING SUM(count) > $3 \
             ORDER BY n DESC, ip",
        )
        .bind(from)
        .bind(to)
        // No stored sum exceeds i64::MAX, so a larger `above` means the same as it.
        .bind(i64::try_from(above).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let by_ip = rows
            .iter()
            .map(|r| {
                Ok::<_, crate::Error>((
                    r.try_get("ip")?,
                    to_u64(r.try_get("n")?, "kv_ip_not_found.count")?,
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(by_ip)
    }

    async fn new_sightings(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Sighting>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            sighting_columns!(),
            " FROM kv_key_sightings WHERE first_seen >= $1 AND first_seen < $2 \
             ORDER BY first_seen, key_id, ip"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(decode_sighting).collect::<Result<_, _>>()?)
    }

    async fn sightings(&self, keys: &[KeyId], since: DateTime<Utc>) -> Result<Vec<Sighting>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One array, so any number of keys is one bound value.
        let ids: Vec<Uuid> = keys.iter().map(|k| *k.as_uuid()).collect();
        let rows = sqlx::query(concat!(
            "SELECT ",
            sighting_columns!(),
            " FROM kv_key_sightings WHERE key_id = ANY($1::uuid[]) AND last_seen >= $2 \
             ORDER BY key_id, ip"
        ))
        .bind(&ids)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(decode_sighting).collect::<Result<_, _>>()?)
    }

    async fn prune_signals(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let counts = sqlx::query("DELETE FROM kv_ip_not_found WHERE minute < $1")
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let sightings = sqlx::query("DELETE FROM kv_key_sightings WHERE last_seen < $1")
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(counts.rows_affected() + sightings.rows_affected())
    }
}
