//! The system log (CONTRACT §7): lines on standard error, as text or one JSON object per line
//! (`KEYVAULT_LOG_FORMAT=json`), and a ring of this process's recent records that
//! `GET /v1/logs` and the dashboard's log page read.
//!
//! [`init`] installs all of it as the process's tracing subscriber (what `keyvault serve`
//! does). A host that installs its own subscriber adds [`layer`] to it instead, and
//! `/v1/logs` then shows what that subscriber lets through:
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::EnvFilter::new("info"))
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(keyvault_admin::logs::layer())
//!     .init();
//! ```
//!
//! Every string a record carries goes through the same redaction as error bodies: a word
//! shaped like a key or token becomes `[redacted]`, so a secret logged by mistake reaches
//! neither the ring nor a JSON line.

use std::{
    collections::VecDeque,
    fmt,
    io::{IsTerminal, Write},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{EnvFilter, Layer, layer::Context, prelude::*, registry::LookupSpan};

use crate::api::redact;

/// Records kept per level (CONTRACT §7 asks for at least 1,000).
pub const KEPT_PER_LEVEL: usize = 2_000;

/// How lines on standard error look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `message`, the event's fields and,
    /// inside a request, `request_id`.
    Json,
}

impl Format {
    /// `KEYVAULT_LOG_FORMAT`: unset, `text` or `json`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("KEYVAULT_LOG_FORMAT") {
            Err(_) => Ok(Self::Text),
            Ok(v) => match v.trim() {
                "" | "text" => Ok(Self::Text),
                "json" => Ok(Self::Json),
                other => Err(format!(
                    "KEYVAULT_LOG_FORMAT: {other:?} is not a log format (text or json)"
                )),
            },
        }
    }
}

/// Installs the process's subscriber: `KEYVAULT_LOG` (an `EnvFilter` directive; `serving`
/// defaults to `info`, the other commands to `warn`), `KEYVAULT_LOG_FORMAT`, lines on
/// standard error and the ring of [`recent`]. Does nothing when a subscriber is already set.
pub fn init(serving: bool) -> Result<(), String> {
    let default = if serving {
        "info,sqlx=warn"
    } else {
        "warn,sqlx=error"
    };
    let filter = match std::env::var("KEYVAULT_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(v.trim()).map_err(|e| format!("KEYVAULT_LOG: {e}"))?
        }
        _ => EnvFilter::new(default),
    };
    let format = Format::from_env()?;
    let ansi = std::io::stderr().is_terminal();
    install(filter, format, || Box::new(std::io::stderr()), ansi);
    Ok(())
}

/// Installs a subscriber writing `format` lines to what `writer` opens (what [`init`] does
/// with standard error; tests hand their own writer).
pub fn install<W>(filter: EnvFilter, format: Format, writer: W, ansi: bool)
where
    W: Fn() -> Box<dyn Write> + Clone + Send + Sync + 'static,
{
    let text = (format == Format::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .with_ansi(ansi)
            .with_target(false)
    });
    let ring = match format {
        Format::Text => layer(),
        Format::Json => layer().json_lines_to(writer),
    };
    let _ = FORMAT.set(format);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(ring)
        .try_init();
}

/// The format [`install`] set up.
static FORMAT: OnceLock<Format> = OnceLock::new();

/// Writes `message` to standard error whatever the filter lets through: a plain line, or a
/// JSON line (level `info`, target `keyvault`) in the JSON format.
pub fn announce(message: &str) {
    let line = if FORMAT.get() == Some(&Format::Json) {
        serde_json::json!({
            "ts": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            "level": "info",
            "target": "keyvault",
            "message": message,
        })
        .to_string()
    } else {
        message.to_owned()
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The layer that keeps [`recent`] records (and, once asked, writes them as JSON lines).
pub fn layer() -> RingLayer {
    RingLayer { json: None }
}

/// A tracing layer feeding the ring of [`recent`] records.
pub struct RingLayer {
    json: Option<Box<dyn Fn() -> Box<dyn Write> + Send + Sync>>,
}

impl fmt::Debug for RingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingLayer")
            .field("json", &self.json.is_some())
            .finish()
    }
}

impl RingLayer {
    /// Also writes every record to standard error as one JSON line.
    pub fn json_lines(self) -> Self {
        self.json_lines_to(|| Box::new(std::io::stderr()))
    }

    /// Also writes every record as one JSON line to what `writer` opens.
    pub fn json_lines_to(
        mut self,
        writer: impl Fn() -> Box<dyn Write> + Send + Sync + 'static,
    ) -> Self {
        self.json = Some(Box::new(writer));
        self
    }
}

/// One record of the system log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogRecord {
    #[serde(skip)]
    seq: u64,
    pub ts: DateTime<Utc>,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    pub target: String,
    pub message: String,
    /// The event's other fields, `request_id` included inside a request.
    pub fields: Map<String, Value>,
}

/// The request id of a span that carries one, kept in the span's extensions.
struct SpanRequestId(String);

impl<S> Layer<S> for RingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut v = Fields::default();
        attrs.record(&mut v);
        if let (Some(Value::String(rid)), Some(span)) =
            (v.fields.remove("request_id"), ctx.span(id))
        {
            span.extensions_mut().insert(SpanRequestId(rid));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut v = Fields::default();
        event.record(&mut v);
        if !v.fields.contains_key("request_id")
            && let Some(scope) = ctx.event_scope(event)
        {
            for span in scope.from_root() {
                if let Some(rid) = span.extensions().get::<SpanRequestId>() {
                    v.fields
                        .insert("request_id".into(), Value::String(rid.0.clone()));
                }
            }
        }
        let record = LogRecord {
            seq: 0,
            ts: Utc::now(),
            level: level_name(*meta.level()),
            target: meta.target().to_owned(),
            message: v.message,
            fields: v.fields,
        };
        if let Some(open) = &self.json {
            let mut line = Map::with_capacity(record.fields.len() + 4);
            line.insert(
                "ts".into(),
                record
                    .ts
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
                    .into(),
            );
            line.insert("level".into(), record.level.into());
            line.insert("target".into(), record.target.clone().into());
            line.insert("message".into(), record.message.clone().into());
            for (k, val) in &record.fields {
                line.entry(k.clone()).or_insert_with(|| val.clone());
            }
            if let Ok(mut text) = serde_json::to_vec(&line) {
                text.push(b'\n');
                let _ = open().write_all(&text);
            }
        }
        ring().push(record);
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// An event's message and fields, every string redacted.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(redact(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(redact(&format!("{value:?}"))));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(redact(&value.to_string())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
}

/// The recent records of each level that is asked for (`error`, `warn`, `info`).
struct Ring {
    seq: AtomicU64,
    levels: [Mutex<VecDeque<LogRecord>>; 3],
}

fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(|| Ring {
        seq: AtomicU64::new(0),
        levels: std::array::from_fn(|_| Mutex::new(VecDeque::with_capacity(KEPT_PER_LEVEL))),
    })
}

/// The rank of a level that the ring keeps: 0 error, 1 warn, 2 info.
fn rank(level: &str) -> Option<usize> {
    ["error", "warn", "info"].iter().position(|l| *l == level)
}

impl Ring {
    fn push(&self, mut record: LogRecord) {
        let Some(r) = rank(record.level) else {
            return;
        };
        record.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut q = self.levels[r].lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == KEPT_PER_LEVEL {
            q.pop_front();
        }
        q.push_back(record);
    }
}

/// The least severe level a query of the log shows (that level and those above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinLevel {
    Error,
    Warn,
    Info,
}

impl MinLevel {
    /// `error`, `warn` or `info`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "error" => Some(Self::Error),
            "warn" => Some(Self::Warn),
            "info" => Some(Self::Info),
            _ => None,
        }
    }

    fn ranks(self) -> usize {
        match self {
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
        }
    }
}

/// This process's most recent records at `min` and above, newest first, at most `limit`.
pub fn recent(min: MinLevel, limit: usize) -> Vec<LogRecord> {
    let ring = ring();
    let mut out: Vec<LogRecord> = Vec::with_capacity(limit.min(KEPT_PER_LEVEL) * min.ranks());
    for level in &ring.levels[..min.ranks()] {
        let q = level.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(q.iter().rev().take(limit).cloned());
    }
    out.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_keeps_the_newest_first() {
        let sub = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", request_id = "req-1");
            let _g = span.enter();
            tracing::warn!(
                target: "keyvault::test",
                attempt = 3,
                key = "kv_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH",
                "first"
            );
            tracing::error!(target: "keyvault::test", "second");
            tracing::debug!(target: "keyvault::test", "not kept");
        });
        let got: Vec<_> = recent(MinLevel::Warn, 10)
            .into_iter()
            .filter(|r| r.target == "keyvault::test")
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].message, "second");
        assert_eq!(got[1].message, "first");
        assert_eq!(got[1].fields["attempt"], 3);
        assert_eq!(got[1].fields["key"], "[redacted]");
        assert_eq!(got[1].fields["request_id"], "req-1");
        let errors = recent(MinLevel::Error, 10);
        assert!(errors.iter().all(|r| r.level == "error"));
    }
}
