//! [`SignalStore`] on SQLite: `kv_ip_not_found` (a count per client IP and minute) and
//! `kv_key_sightings` (a row per key and client IP), both upserted in batches.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{IpCount, KeyId, Result, Sighting, SignalStore};
use sqlx::{QueryBuilder, Sqlite};

use crate::{
    SqliteStore,
    codec::{from_micros, id_text, int, micros, parse_id, uint},
    error::backend,
};

/// Rows per `INSERT`: SQLite allows 32,766 bound values per statement, and a flush may hold
/// 100,000 entries. A count binds 3 values, a sighting 4.
const COUNT_ROWS: usize = 10_000;
const SIGHTING_ROWS: usize = 8_000;
/// Keys per `IN (…)` list (with the one `since` bound beside them).
const KEYS_PER_QUERY: usize = 30_000;

const SIGHTING_COLUMNS: &str = "key_id, ip, first_seen, last_seen";

fn decode_sighting(
    (key_id, ip, first, last): (String, String, i64, i64),
) -> Result<Sighting, crate::Error> {
    Ok(Sighting {
        key_id: parse_id(&key_id, "kv_key_sightings.key_id")?,
        ip,
        first_seen: from_micros(first, "kv_key_sightings.first_seen")?,
        last_seen: from_micros(last, "kv_key_sightings.last_seen")?,
    })
}

#[async_trait]
impl SignalStore for SqliteStore {
    async fn record_signals(&self, not_found: &[IpCount], seen: &[Sighting]) -> Result<()> {
        if not_found.is_empty() && seen.is_empty() {
            return Ok(());
        }
        // One transaction for every chunk: a flush is written whole or not at all, so the
        // flusher's retry of a failed one counts nothing twice.
        let mut w = self.write().await?;
        for chunk in not_found.chunks(COUNT_ROWS) {
            let mut sql =
                QueryBuilder::<Sqlite>::new("INSERT INTO kv_ip_not_found (ip, minute, count) ");
            sql.push_values(chunk, |mut row, c| {
                row.push_bind(&c.ip)
                    .push_bind(micros(c.minute))
                    .push_bind(int(c.count));
            });
            sql.push(
                " ON CONFLICT (ip, minute) DO UPDATE \
                 SET count = kv_ip_not_found.count + excluded.count",
            );
            // Not cached: the last chunk's length (so its text) differs from flush to flush,
            // and a statement this long is costly to keep per connection.
            sql.build()
                .persistent(false)
                .execute(&mut *w.tx)
                .await
                .map_err(backend)?;
        }
        for chunk in seen.chunks(SIGHTING_ROWS) {
            let mut sql = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO kv_key_sightings ({SIGHTING_COLUMNS}) "
            ));
            sql.push_values(chunk, |mut row, s| {
                row.push_bind(id_text(s.key_id))
                    .push_bind(&s.ip)
                    .push_bind(micros(s.first_seen))
                    .push_bind(micros(s.last_seen));
            });
            sql.push(
                " ON CONFLICT (key_id, ip) DO UPDATE \
                 SET first_seen = min(kv_key_sightings.first_seen, excluded.first_seen), \
                   last_seen = max(kv_key_sightings.last_seen, excluded.last_seen)",
            );
            sql.build()
                .persistent(false)
                .execute(&mut *w.tx)
                .await
                .map_err(backend)?;
        }
        Ok(w.commit().await?)
    }

    async fn not_found_by_ip(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        above: u64,
    ) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT ip, SUM(count) AS n FROM kv_ip_not_found \
             WHERE minute >= ?1 AND minute < ?2 \
             GROUP BY ip HAVING SUM(count) > ?3 \
             ORDER BY n DESC, ip",
        )
        .bind(micros(from))
        .bind(micros(to))
        .bind(int(above))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(ip, n)| Ok((ip, uint(n, "kv_ip_not_found.count")?)))
            .collect::<Result<_, crate::Error>>()?)
    }

    async fn new_sightings(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Sighting>> {
        let sql = format!(
            "SELECT {SIGHTING_COLUMNS} FROM kv_key_sightings \
             WHERE first_seen >= ?1 AND first_seen < ?2 ORDER BY first_seen, key_id, ip"
        );
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(micros(from))
            .bind(micros(to))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(decode_sighting)
            .collect::<Result<_, _>>()?)
    }

    async fn sightings(&self, keys: &[KeyId], since: DateTime<Utc>) -> Result<Vec<Sighting>> {
        // Each key once, in order: the chunks are then ascending ranges of keys, and their
        // rows (ordered by key and IP, the text of a UUID sorting as its bytes) come out in
        // one order without a sort here.
        let keys: Vec<KeyId> = keys
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let mut sql = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {SIGHTING_COLUMNS} FROM kv_key_sightings WHERE last_seen >= "
            ));
            sql.push_bind(micros(since)).push(" AND key_id IN (");
            let mut list = sql.separated(", ");
            for k in chunk {
                list.push_bind(id_text(*k));
            }
            sql.push(") ORDER BY key_id, ip");
            let rows: Vec<(String, String, i64, i64)> = sql
                .build_query_as()
                .persistent(false)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            for row in rows {
                out.push(decode_sighting(row)?);
            }
        }
        Ok(out)
    }

    async fn prune_signals(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut w = self.write().await?;
        let counts = sqlx::query("DELETE FROM kv_ip_not_found WHERE minute < ?1")
            .bind(micros(before))
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        let sightings = sqlx::query("DELETE FROM kv_key_sightings WHERE last_seen < ?1")
            .bind(micros(before))
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        w.commit().await?;
        Ok(counts.rows_affected() + sightings.rows_affected())
    }
}
