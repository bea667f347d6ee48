//! [`CreditStore`] on SQLite: every spend is one conditional UPSERT … RETURNING.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{CreditDecision, CreditRequest, CreditStore, Credits, KeyId, Result};
use sqlx::AssertSqlSafe;

use crate::{
    SqliteStore,
    codec::{id_text, int, micros, uint},
    error::backend,
};

/// Whether the caller's refill (spec `?8`) is the balance's own. Instances learn of a changed
/// configuration up to a second late; one still holding the previous refill must neither
/// apply it to the new balance nor move the interval noted for it. A balance whose spec is
/// not known (opened before migration 0011, key unreadable) matches every caller.
macro_rules! own_refill {
    () => {
        "(kv_credits.refill_spec IS NULL OR kv_credits.refill_spec = ?8)"
    };
}

/// The balance after any refill due at interval start `?5` (amount `?6`): a refill *sets*
/// the balance, once per interval, only once a previous interval has been noted, and only
/// for a caller holding the balance's own refill.
const EFFECTIVE: &str = concat!(
    "(CASE WHEN ?5 IS NOT NULL AND kv_credits.refilled_for IS NOT NULL \
     AND kv_credits.refilled_for < ?5 AND ",
    own_refill!(),
    " THEN ?6 ELSE kv_credits.remaining END)"
);

/// The refill interval noted after the statement.
const REFILLED_FOR: &str = concat!(
    "(CASE WHEN ?5 IS NULL OR NOT ",
    own_refill!(),
    " THEN kv_credits.refilled_for \
     WHEN kv_credits.refilled_for IS NULL OR kv_credits.refilled_for < ?5 THEN ?5 \
     ELSE kv_credits.refilled_for END)"
);

/// The refill's interval start at `now`, its amount and its spec, as bound parameters.
fn refill_params(credits: &Credits, now: DateTime<Utc>) -> (Option<i64>, i64, String) {
    let spec = credits.refill_spec();
    match credits.refill {
        Some(r) => (Some(micros(r.interval.start_of(now))), int(r.amount), spec),
        None => (None, 0, spec),
    }
}

impl SqliteStore {
    /// A cost-0 spend changes nothing when the balance exists and no refill is pending: then
    /// it is answered by a read, without taking the write lock.
    async fn read_balance(&self, req: &CreditRequest<'_>) -> Result<Option<u64>, crate::Error> {
        let row: Option<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT remaining, refilled_for, refill_spec FROM kv_credits WHERE quota_id = ?1",
        )
        .bind(id_text(req.quota_id))
        .fetch_optional(&self.pool)
        .await?;
        let (start, _, spec) = refill_params(req.credits, req.now);
        let Some((remaining, refilled_for, stored)) = row else {
            return Ok(None);
        };
        // As `own_refill!`: a caller holding another refill never refills this balance.
        let own = stored.is_none_or(|s| s == spec);
        match (start, refilled_for) {
            (Some(start), Some(at)) if own && at < start => Ok(None),
            (Some(_), None) if own => Ok(None),
            _ => Ok(Some(uint(remaining, "kv_credits.remaining")?)),
        }
    }
}

#[async_trait]
impl CreditStore for SqliteStore {
    async fn spend(&self, req: &CreditRequest<'_>) -> Result<CreditDecision> {
        if req.cost == 0
            && let Some(remaining) = self.read_balance(req).await?
        {
            return Ok(CreditDecision::Spent { remaining });
        }
        let (start, amount, spec) = refill_params(req.credits, req.now);
        let cost = int(req.cost);
        // A quota seen for the first time opens with the configured balance and its refill;
        // the refill interval is noted, not applied.
        let opening = int(req.credits.remaining);
        let opening_ok = opening >= cost;
        let sql = format!(
            "INSERT INTO kv_credits (quota_id, remaining, refilled_for, last_admitted, \
             refill_spec) VALUES (?1, ?2, ?3, ?4, ?8) \
             ON CONFLICT (quota_id) DO UPDATE SET \
               remaining = CASE WHEN {EFFECTIVE} >= ?7 THEN {EFFECTIVE} - ?7 ELSE {EFFECTIVE} END, \
               refilled_for = {REFILLED_FOR}, \
               last_admitted = {EFFECTIVE} >= ?7 \
             RETURNING remaining, last_admitted"
        );
        let _turn = self.write_turn().await;
        let (remaining, ok): (i64, bool) = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id_text(req.quota_id))
            .bind(if opening_ok { opening - cost } else { opening })
            .bind(start)
            .bind(opening_ok)
            .bind(start)
            .bind(amount)
            .bind(cost)
            .bind(spec)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let remaining = uint(remaining, "kv_credits.remaining")?;
        Ok(if ok {
            CreditDecision::Spent { remaining }
        } else {
            CreditDecision::Insufficient { remaining }
        })
    }

    async fn refund(&self, req: &CreditRequest<'_>) -> Result<()> {
        if req.cost == 0 {
            return Ok(());
        }
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE kv_credits SET remaining = CASE WHEN remaining > 9223372036854775807 - ?2 \
             THEN 9223372036854775807 ELSE remaining + ?2 END WHERE quota_id = ?1",
        )
        .bind(id_text(req.quota_id))
        .bind(int(req.cost))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn debit(
        &self,
        quota_id: KeyId,
        credits: &Credits,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let (start, refill_amount, spec) = refill_params(credits, now);
        let sql = format!(
            "UPDATE kv_credits SET remaining = max({EFFECTIVE} - ?7, 0), \
             refilled_for = {REFILLED_FOR} WHERE quota_id = ?1 RETURNING remaining"
        );
        let _turn = self.write_turn().await;
        let left: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(id_text(quota_id))
            .bind(0i64) // ?2–?4 are the spend's opening values, unused here
            .bind(None::<i64>)
            .bind(false)
            .bind(start)
            .bind(refill_amount)
            .bind(int(amount))
            .bind(spec)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(left.map_or(Ok(0), |v| uint(v, "kv_credits.remaining"))?)
    }
}
