//! `create-keys`: keys in bulk from a CSV file.

use std::path::Path;

use csv::StringRecord;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyvault_core::{Actor, Credits, InvalidInput, Keyvault, NewKey, RateLimit};
use serde_json::json;

use crate::{error::Error, secret_file::SecretFile};

/// Runs shorter than this draw no progress bar.
const PROGRESS_FROM_ROWS: u64 = 100;

/// Which column holds what.
#[derive(Debug, Default)]
struct Columns {
    name: usize,
    owner: Option<usize>,
    credits: Option<usize>,
    limits: Option<usize>,
}

fn columns(headers: &StringRecord) -> Result<Columns, Error> {
    let mut name = None;
    let mut cols = Columns::default();
    for (i, h) in headers.iter().enumerate() {
        let slot = match h.trim().to_ascii_lowercase().as_str() {
            "name" => &mut name,
            "owner" | "owner_id" => &mut cols.owner,
            "credits" => &mut cols.credits,
            "limits" | "ratelimits" => &mut cols.limits,
            other => {
                // A misspelt column would silently drop a limit: refuse the file instead.
                return Err(Error::config(
                    "csv",
                    format!(
                        "line 1: unknown column {other:?} (expected name, owner, credits, limits)"
                    ),
                ));
            }
        };
        if slot.replace(i).is_some() {
            return Err(Error::config(
                "csv",
                format!("line 1: column {h:?} appears twice"),
            ));
        }
    }
    cols.name =
        name.ok_or_else(|| Error::config("csv", "line 1: a \"name\" column is required"))?;
    Ok(cols)
}

/// One row as a key to create.
fn parse_row(rec: &StringRecord, cols: &Columns) -> Result<NewKey, InvalidInput> {
    let cell = |i: Option<usize>| {
        i.and_then(|i| rec.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let name = cell(Some(cols.name)).ok_or_else(|| InvalidInput::new("name", "is required"))?;
    let mut new = NewKey::new(name);
    if let Some(owner) = cell(cols.owner) {
        new = new.owner(owner);
    }
    if let Some(credits) = cell(cols.credits) {
        let n: u64 = credits
            .parse()
            .map_err(|_| InvalidInput::new("credits", "must be a whole number ≥ 0"))?;
        let credits = Credits::new(n);
        credits.validate()?;
        new = new.credits(credits);
    }
    if let Some(limits) = cell(cols.limits) {
        for spec in limits.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            new = new.ratelimit(RateLimit::parse_spec(spec).map_err(|e| e.within("limits"))?);
        }
    }
    Ok(new)
}

/// Creates a key per good row, appending each new key to `out` once; reports bad rows with
/// their line number on stderr.
pub(crate) async fn run(vault: &Keyvault, csv_path: &Path, out: &Path) -> Result<(), Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(csv_path)
        .map_err(|e| Error::Csv {
            context: format!("reading {}", csv_path.display()),
            source: e,
        })?;
    let headers = reader.headers().map_err(|e| Error::Csv {
        context: format!("reading {}", csv_path.display()),
        source: e,
    })?;
    let cols = columns(headers)?;
    let width = headers.len();
    // Opened before anything is created, so a bad path wastes no key.
    let mut out = SecretFile::open(out)?;
    let records: Vec<_> = reader.records().collect();
    let total = records.len();
    let bar = progress(total as u64);
    let actor = Actor::named("batch-job");
    let (mut created, mut bad) = (0usize, 0usize);
    let mut report = |line: u64, message: String| {
        bad += 1;
        bar.suspend(|| crate::warn(&format!("line {line}: {message}")));
    };
    for rec in records {
        bar.inc(1);
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                report(line, format!("unreadable row: {e}"));
                continue;
            }
        };
        let line = rec.position().map_or(0, csv::Position::line);
        if rec.len() != width {
            report(line, format!("{} fields, expected {width}", rec.len()));
            continue;
        }
        let new = match parse_row(&rec, &cols) {
            Ok(n) => n,
            Err(e) => {
                report(line, e.to_string());
                continue;
            }
        };
        match vault.create_key(new, &actor).await {
            Ok(c) => {
                let entry = json!({
                    "line": line,
                    "id": c.record.id,
                    "name": c.record.name,
                    "owner_id": c.record.owner_id,
                    "key": c.key.expose(),
                });
                if let Err(e) = out.append(&entry) {
                    // The key exists but nobody can know it: say which, so it can be deleted.
                    bar.abandon();
                    return Err(Error::io(
                        format!(
                            "writing the key of line {line} (id {}) to {}",
                            c.record.id,
                            out.path().display()
                        ),
                        e,
                    ));
                }
                created += 1;
            }
            Err(keyvault_core::Error::Invalid(e)) => report(line, e.to_string()),
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
    }
    bar.finish_and_clear();
    crate::info(&format!(
        "created {created} keys; written to {}",
        out.path().display()
    ));
    if bad > 0 {
        return Err(Error::BadRows { bad, total });
    }
    Ok(())
}

fn progress(len: u64) -> ProgressBar {
    if len < PROGRESS_FROM_ROWS {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    // indicatif draws nothing when stderr is not a terminal.
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} keys {eta}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &[&str]) -> StringRecord {
        StringRecord::from(fields.to_vec())
    }

    #[test]
    fn rows_become_keys() {
        let cols = columns(&rec(&["name", "owner", "credits", "limits"])).unwrap();
        let k = parse_row(&rec(&["svc", "team", "500", "100/60s;1000/1d"]), &cols).unwrap();
        assert_eq!(k.name, "svc");
        assert_eq!(k.owner_id.as_deref(), Some("team"));
        assert_eq!(k.credits, Some(Credits::new(500)));
        assert_eq!(k.ratelimits.len(), 2);
        assert_eq!(k.ratelimits[1].limit(), 1000);
        assert_eq!(k.ratelimits[1].period_ms(), 86_400_000);
        let k = parse_row(&rec(&["svc", "", "", ""]), &cols).unwrap();
        assert_eq!((k.owner_id, k.credits, k.ratelimits.len()), (None, None, 0));
    }

    #[test]
    fn bad_cells_name_their_field() {
        let cols = columns(&rec(&["name", "owner", "credits", "limits"])).unwrap();
        let field = |r: &[&str]| parse_row(&rec(r), &cols).unwrap_err().field;
        assert_eq!(field(&["", "o", "1", ""]), "name");
        assert_eq!(field(&["n", "o", "-1", ""]), "credits");
        assert_eq!(
            field(&["n", "o", "9007199254740992", ""]),
            "credits.remaining"
        );
        assert!(field(&["n", "o", "", "100"]).starts_with("limits"));
        assert!(field(&["n", "o", "", "0/60s"]).starts_with("limits"));
    }

    #[test]
    fn headers_are_checked() {
        assert!(columns(&rec(&["owner"])).is_err());
        assert!(columns(&rec(&["name", "credit"])).is_err());
        assert!(columns(&rec(&["name", "name"])).is_err());
        let c = columns(&rec(&["Limits", " name "])).unwrap();
        assert_eq!((c.name, c.limits), (1, Some(0)));
    }
}
