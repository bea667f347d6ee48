//! Credit balances: `kv_credits`, one conditional row update per spend.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{CreditDecision, CreditRequest, CreditStore, Credits, KeyId};
use sqlx::{PgConnection, Row};

use crate::{PgStore, Result, db, to_i64, to_u64};

/// Whether the caller's refill (`$6`, its spec, '' without refill) is the balance's own.
/// Instances learn of a changed configuration up to a second late; one still holding the
/// previous refill must neither apply it to the new balance nor move the interval noted for
/// it. A balance whose spec is not known (opened before migration 20260101000010, key
/// unreadable) matches every caller.
macro_rules! own_refill {
    () => {
        "(c.refill_spec IS NULL OR c.refill_spec = $6::text)"
    };
}

/// The balance after any due refill, in terms of the row (`c`) and the refill parameters
/// (`$4` the start of the current interval, NULL without refill; `$5` the refill amount).
/// A balance whose interval was never noted (`refilled_for` NULL) keeps what it was given:
/// the comparison is NULL, so the ELSE branch applies.
macro_rules! refilled {
    () => {
        concat!(
            "(CASE WHEN c.refilled_for < $4::timestamptz AND ",
            own_refill!(),
            " THEN $5::bigint ELSE c.remaining END)"
        )
    };
}

/// The interval noted after this step: the current one once a refill is configured, for a
/// caller holding the balance's own refill.
macro_rules! noted {
    () => {
        concat!(
            "(CASE WHEN $4::timestamptz IS NULL OR NOT ",
            own_refill!(),
            " THEN c.refilled_for ELSE GREATEST(c.refilled_for, $4::timestamptz) END)"
        )
    };
}

/// Spend: the refill, the check and the subtraction in one row update. A quota without a row
/// opens one with the key's configured balance and refill (as the reference store does);
/// `$2` is that balance, `$3` the cost.
const SPEND: &str = concat!(
    "INSERT INTO kv_credits AS c (quota_id, remaining, refilled_for, last_admitted, \
     refill_spec) \
     VALUES ($1, CASE WHEN $2 >= $3 THEN $2 - $3 ELSE $2 END, $4::timestamptz, $2 >= $3, \
     $6::text) \
     ON CONFLICT (quota_id) DO UPDATE SET \
       remaining = CASE WHEN ",
    refilled!(),
    " >= $3 THEN ",
    refilled!(),
    " - $3 ELSE ",
    refilled!(),
    " END, refilled_for = ",
    noted!(),
    ", last_admitted = ",
    refilled!(),
    " >= $3 RETURNING remaining, last_admitted"
);

/// Debit: subtract, stopping at zero, after any due refill. `$3` is the amount.
const DEBIT: &str = concat!(
    "UPDATE kv_credits AS c SET remaining = GREATEST(",
    refilled!(),
    " - $3, 0), refilled_for = ",
    noted!(),
    " WHERE quota_id = $1 RETURNING remaining"
);

/// The refill parameters of a request: the start of `now`'s interval, the amount and the
/// spec.
fn refill_params(
    credits: &Credits,
    now: DateTime<Utc>,
) -> Result<(Option<DateTime<Utc>>, Option<i64>, String)> {
    let spec = credits.refill_spec();
    match credits.refill {
        Some(r) => Ok((
            Some(r.interval.start_of(now)),
            Some(to_i64(r.amount, "credits.refill.amount")?),
            spec,
        )),
        None => Ok((None, None, spec)),
    }
}

/// Opens (or with `replace`, resets) the balance of `quota` to `credits.remaining`, the refill
/// interval holding `at` (the record's `updated_at`) counting as applied. The refill is kept
/// beside the balance: only callers holding it apply it.
pub(crate) async fn open(
    conn: &mut PgConnection,
    quota: KeyId,
    credits: &Credits,
    at: DateTime<Utc>,
    replace: bool,
) -> Result<()> {
    let sql = if replace {
        "INSERT INTO kv_credits (quota_id, remaining, refilled_for, refill_spec) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (quota_id) DO UPDATE SET remaining = EXCLUDED.remaining, \
         refilled_for = EXCLUDED.refilled_for, refill_spec = EXCLUDED.refill_spec, \
         last_admitted = true"
    } else {
        "INSERT INTO kv_credits (quota_id, remaining, refilled_for, refill_spec) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (quota_id) DO NOTHING"
    };
    sqlx::query(sql)
        .bind(quota.as_uuid())
        .bind(to_i64(credits.remaining, "credits.remaining")?)
        .bind(credits.refill.map(|r| r.interval.start_of(at)))
        .bind(credits.refill_spec())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Removes the balance of `quota` (its key no longer has credits).
pub(crate) async fn close(conn: &mut PgConnection, quota: KeyId) -> Result<()> {
    sqlx::query("DELETE FROM kv_credits WHERE quota_id = $1")
        .bind(quota.as_uuid())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait]
impl CreditStore for PgStore {
    async fn spend(&self, req: &CreditRequest<'_>) -> Result<CreditDecision> {
        let (start, amount, spec) = refill_params(req.credits, req.now)?;
        let row = sqlx::query(SPEND)
            .bind(req.quota_id.as_uuid())
            .bind(to_i64(req.credits.remaining, "credits.remaining")?)
            .bind(to_i64(req.cost, "cost")?)
            .bind(start)
            .bind(amount)
            .bind(spec)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let remaining = to_u64(
            row.try_get("remaining").map_err(db)?,
            "kv_credits.remaining",
        )?;
        let admitted: bool = row.try_get("last_admitted").map_err(db)?;
        Ok(if admitted {
            CreditDecision::Spent { remaining }
        } else {
            CreditDecision::Insufficient { remaining }
        })
    }

    async fn refund(&self, req: &CreditRequest<'_>) -> Result<()> {
        // Saturating, as the reference store's u64 addition.
        sqlx::query(
            "UPDATE kv_credits SET remaining = CASE \
               WHEN remaining > 9223372036854775807 - $2 THEN 9223372036854775807 \
               ELSE remaining + $2 END \
             WHERE quota_id = $1",
        )
        .bind(req.quota_id.as_uuid())
        .bind(to_i64(req.cost, "cost")?)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn debit(
        &self,
        quota_id: KeyId,
        credits: &Credits,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let (start, refill, spec) = refill_params(credits, now)?;
        let left: Option<i64> = sqlx::query_scalar(DEBIT)
            .bind(quota_id.as_uuid())
            // $2 is unused by DEBIT; keeping the numbering shared with SPEND keeps one
            // definition of the refill.
            .bind(0i64)
            .bind(to_i64(amount, "amount")?)
            .bind(start)
            .bind(refill)
            .bind(spec)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(left.map_or(Ok(0), |l| to_u64(l, "kv_credits.remaining"))?)
    }
}
