//! `usage-report`: usage statistics of a time range as CSV.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use keyvault_core::{KeyId, StatsOverview, StatsQuery, UsageQuery};

use crate::error::Error;

/// The columns: one row per provider for the whole range (with latency percentiles), then its
/// rows per step; provider `*` is every provider together.
const HEADER: [&str; 9] = [
    "period_start",
    "period_end",
    "provider",
    "calls",
    "errors",
    "success_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
];

pub(crate) async fn run(
    stats: &dyn UsageQuery,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    key_id: Option<KeyId>,
    out: &Path,
) -> Result<(), Error> {
    let base = StatsQuery {
        from,
        to,
        key_id,
        provider: None,
        granularity: None,
    };
    base.validate()
        .map_err(|e| Error::config(if e.field == "from" { "--from" } else { "--to" }, e.message))?;
    let all = stats.overview(&base).await?;
    let mut sections = vec![("*".to_owned(), all.clone())];
    for p in &all.by_provider {
        let q = StatsQuery {
            provider: Some(p.provider.clone()),
            ..base.clone()
        };
        sections.push((p.provider.clone(), stats.overview(&q).await?));
    }
    let csv_err = |e: csv::Error| Error::Csv {
        context: format!("writing {}", out.display()),
        source: e,
    };
    let mut w = csv::Writer::from_path(out).map_err(csv_err)?;
    w.write_record(HEADER).map_err(csv_err)?;
    for (provider, o) in &sections {
        for row in rows(&base, provider, o) {
            w.write_record(&row).map_err(csv_err)?;
        }
    }
    w.flush()
        .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    crate::info(&format!(
        "{} calls from {} to {} written to {}",
        all.calls,
        ts(from),
        ts(to),
        out.display()
    ));
    Ok(())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_default()
}

fn rows(q: &StatsQuery, provider: &str, o: &StatsOverview) -> Vec<[String; 9]> {
    let errors: u64 = o.timeseries.iter().map(|p| p.errors).sum();
    let mut out = vec![[
        ts(q.from),
        ts(q.to),
        provider.to_owned(),
        o.calls.to_string(),
        errors.to_string(),
        num(o.success_rate),
        num(o.latency_ms.p50),
        num(o.latency_ms.p95),
        num(o.latency_ms.p99),
    ]];
    let step = q.step();
    for p in o.timeseries.iter().filter(|p| p.calls > 0) {
        let ok = p.calls.saturating_sub(p.errors);
        out.push([
            ts(p.ts),
            ts((p.ts + step).min(q.to)),
            provider.to_owned(),
            p.calls.to_string(),
            p.errors.to_string(),
            num(keyvault_core::success_rate(ok, p.calls)),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    out
}
