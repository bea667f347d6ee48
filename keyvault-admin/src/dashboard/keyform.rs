//! The key form: `/admin/keys/new` (every field of `POST /v1/keys`) and
//! `/admin/keys/{id}/edit` (`PATCH /v1/keys/{id}`, each field replacing the stored one).
//! The form's text becomes the REST API's JSON body and goes through the same conversion
//! and checks, so an error names its field as the API does (`credits.remaining`,
//! `ratelimits[0].limit`) and is shown beside it, in the visitor's language.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use keyvault_core::{HumanDuration, KeyId, KeyRecord};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    flash,
    i18n::Lang,
    page::{Shell, failure, render},
    range::{local_time, tz_offset},
    session::{Change, Visitor},
};
use crate::{
    api::{
        AppState, Ctx,
        wire::{KeyPatchBody, NewKeyBody},
    },
    auth::Need,
    error::{Error, Result},
};

/// Rate-limit rows the form offers.
const LIMIT_ROWS: usize = 4;
/// The longest text any field takes (the metadata's 16 KiB and a margin).
const MAX_FIELD: usize = 20_000;

/// The form's fields, as text (a form sends nothing else); repeated for rate limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct KeyForm {
    name: String,
    owner_id: String,
    prefix: String,
    enabled: String,
    expires_at: String,
    tz: String,
    credits: String,
    refill_interval: String,
    refill_amount: String,
    rl_name: Vec<String>,
    rl_limit: Vec<String>,
    rl_period: Vec<String>,
    /// Each row's fail mode (`local`, `open`, `closed`); a select, so always sent.
    rl_mode: Vec<String>,
    scopes: String,
    ip_allowlist: String,
    metadata: String,
    rotation_every: String,
    rotation_grace: String,
}

/// One rate-limit row as shown.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitRow {
    pub(crate) name: String,
    pub(crate) limit: String,
    pub(crate) period: String,
    pub(crate) mode: String,
}

#[derive(Template)]
#[template(path = "key_form.html")]
struct FormPage {
    shell: Shell,
    /// `None`: a new key; else the key being edited.
    editing: Option<(String, String)>,
    action: String,
    form: KeyForm,
    limits: Vec<LimitRow>,
    /// The UTC instant of `expires_at`, for the script to show in local time.
    expires_utc: String,
    errors: BTreeMap<String, String>,
}

impl FormPage {
    /// The error shown beside `field`, if any.
    fn error(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }

    /// Errors naming no field of the form (shown above it).
    fn other_errors(&self) -> Vec<(&str, &str)> {
        self.errors
            .iter()
            .filter(|(f, _)| !self.known(f))
            .map(|(f, m)| (f.as_str(), m.as_str()))
            .collect()
    }

    fn known(&self, field: &str) -> bool {
        const FIELDS: [&str; 13] = [
            "name",
            "owner_id",
            "prefix",
            "expires_at",
            "credits.remaining",
            "credits.refill.interval",
            "credits.refill.amount",
            "scopes",
            "ip_allowlist",
            "metadata",
            "rotation.every",
            "rotation.grace",
            "ratelimits",
        ];
        FIELDS.contains(&field)
            || (0..LIMIT_ROWS).any(|i| {
                ["name", "limit", "period_ms", "fail_mode"]
                    .iter()
                    .any(|f| field == format!("ratelimits[{i}].{f}"))
            })
    }

    fn rl_error(&self, i: &usize, part: &str) -> Option<&str> {
        self.error(&format!("ratelimits[{i}].{part}"))
    }
}

fn limit_rows(form: &KeyForm) -> Vec<LimitRow> {
    (0..LIMIT_ROWS)
        .map(|i| LimitRow {
            name: form.rl_name.get(i).cloned().unwrap_or_default(),
            limit: form.rl_limit.get(i).cloned().unwrap_or_default(),
            period: form.rl_period.get(i).cloned().unwrap_or_default(),
            mode: form
                .rl_mode
                .get(i)
                .cloned()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "local".into()),
        })
        .collect()
}

fn show(
    v: &Visitor,
    status: StatusCode,
    editing: Option<&KeyRecord>,
    form: KeyForm,
    errors: BTreeMap<String, String>,
) -> Response {
    let (active, title, action, here) = match editing {
        None => (
            "keys",
            "keyform.title_new",
            v.mount.path("/admin/keys/new"),
            v.mount.path("/admin/keys/new"),
        ),
        Some(r) => (
            "keys",
            "keyform.title_edit",
            v.mount.path(&format!("/admin/keys/{}/edit", r.id)),
            v.mount.path(&format!("/admin/keys/{}/edit", r.id)),
        ),
    };
    let expires_utc = local_time(&form.expires_at, tz_offset(Some(&form.tz)))
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    let page = FormPage {
        shell: Shell::new(v, active, title, here),
        editing: editing.map(|r| (r.id.to_string(), r.name.clone())),
        action,
        limits: limit_rows(&form),
        form,
        expires_utc,
        errors,
    };
    render(status, &page)
}

/// `GET /admin/keys/new`.
pub(crate) async fn new_form(v: Visitor) -> Response {
    if let Err(r) = v.require(Need::Operator) {
        return r;
    }
    let form = KeyForm {
        enabled: "on".into(),
        ..KeyForm::default()
    };
    show(&v, StatusCode::OK, None, form, BTreeMap::new())
}

/// `GET /admin/keys/{id}/edit`: the form with the key's fields.
pub(crate) async fn edit_form(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = v.require(Need::Operator) {
        return r;
    }
    let record = match load(&st, &id).await {
        Ok(r) => r,
        Err(e) => return failure(&v, false, e),
    };
    let remaining = st.app.kv.credits_remaining(&record).await.ok().flatten();
    let form = KeyForm::of(&record, remaining);
    show(&v, StatusCode::OK, Some(&record), form, BTreeMap::new())
}

pub(crate) async fn load(st: &AppState, id: &str) -> Result<KeyRecord> {
    let id: KeyId = id
        .parse()
        .map_err(|_| Error::NotFound(format!("key {:?}", crate::api::redact(id))))?;
    Ok(st.app.kv.get_key(id).await?)
}

/// `POST /admin/keys/new`: creates the key and lands on its page, where it is shown once.
pub(crate) async fn create(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<KeyForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "key.create", script)
        .await
    {
        return r;
    }
    let body = match form.to_json(false) {
        Ok(b) => b,
        Err(errors) => {
            return show(
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                form,
                localise(&errors, v.lang),
            );
        }
    };
    let actor = v.actor(&ctx);
    let new = serde_json::from_value::<NewKeyBody>(body)
        .map_err(|e| Error::input("form", e.to_string()))
        .and_then(|b| b.into_core().map_err(Error::from));
    let created = match new {
        Ok(new) => st.app.kv.create_key(new, &actor).await.map_err(Error::from),
        Err(e) => Err(st.app.refused(&actor, "key.create", None, e).await),
    };
    match created {
        Ok(created) => {
            let id = created.record.id.to_string();
            let mut res = Redirect::to(&v.mount.path(&format!("/admin/keys/{id}"))).into_response();
            if let Err(e) =
                flash::seal(&mut res, st.app.secret_key(), &v, &id, created.key.expose())
            {
                return failure(&v, false, e);
            }
            res
        }
        Err(e) => refused_form(&v, None, form, e),
    }
}

/// `POST /admin/keys/{id}/edit`: replaces every field the form holds.
pub(crate) async fn update(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<KeyForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Operator, "key.update", script)
        .await
    {
        return r;
    }
    let record = match load(&st, &id).await {
        Ok(r) => r,
        Err(e) => return failure(&v, false, e),
    };
    let body = match form.to_json(true) {
        Ok(b) => b,
        Err(errors) => {
            return show(
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&record),
                form,
                localise(&errors, v.lang),
            );
        }
    };
    let actor = v.actor(&ctx);
    let patch = serde_json::from_value::<KeyPatchBody>(body)
        .map_err(|e| Error::input("form", e.to_string()))
        .and_then(|b| b.into_core().map_err(Error::from));
    let updated = match patch {
        Ok(p) => st
            .app
            .kv
            .update_key(record.id, p, &actor)
            .await
            .map_err(Error::from),
        Err(e) => Err(st
            .app
            .refused(&actor, "key.update", Some(id.clone()), e)
            .await),
    };
    match updated {
        Ok(r) => Redirect::to(&v.mount.path(&format!("/admin/keys/{}", r.id))).into_response(),
        Err(e) => refused_form(&v, Some(&record), form, e),
    }
}

/// The form again, the error beside its field; an error of no field (a conflict, the
/// backend) as a page.
fn refused_form(v: &Visitor, editing: Option<&KeyRecord>, form: KeyForm, e: Error) -> Response {
    let Some(field) = e.field().map(str::to_owned) else {
        return failure(v, false, e);
    };
    let detail = crate::error::Problem::from(&e)
        .detail_text()
        .unwrap_or_default()
        .to_owned();
    let mut errors = BTreeMap::new();
    errors.insert(field.clone(), field_message(&field, &detail, v.lang));
    show(v, StatusCode::UNPROCESSABLE_ENTITY, editing, form, errors)
}

/// The message of an error on `field`: the catalogue's for that field in the visitor's
/// language; in English, the server's own, more precise, words.
fn field_message(field: &str, detail: &str, lang: Lang) -> String {
    if lang == Lang::En && !detail.is_empty() {
        return detail.to_owned();
    }
    let generic: String = field
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect::<Vec<_>>()
        .join("_");
    lang.lookup(&format!("field.{generic}"))
        .unwrap_or_else(|| lang.t("field.other"))
        .to_owned()
}

/// Form-level errors (before the REST conversion): (field, message key).
type FormErrors = Vec<(String, &'static str)>;

fn localise(errors: &FormErrors, lang: Lang) -> BTreeMap<String, String> {
    errors
        .iter()
        .map(|(f, k)| (f.clone(), lang.t(k).to_owned()))
        .collect()
}

fn whole(text: &str, field: &str, errors: &mut FormErrors) -> Option<u64> {
    let t = text.trim().replace([',', '_', ' '], "");
    match t.parse::<u64>() {
        Ok(n) if n <= 9_007_199_254_740_991 => Some(n),
        _ => {
            errors.push((field.to_owned(), "form.whole_number"));
            None
        }
    }
}

impl KeyForm {
    /// The form of a stored key (what the edit page starts from).
    fn of(r: &KeyRecord, remaining: Option<u64>) -> Self {
        let mut f = KeyForm {
            name: r.name.clone(),
            owner_id: r.owner_id.clone().unwrap_or_default(),
            prefix: r.prefix.as_str().to_owned(),
            enabled: if r.enabled {
                "on".into()
            } else {
                String::new()
            },
            expires_at: r.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            scopes: r.scopes.join(" "),
            ip_allowlist: r
                .ip_allowlist
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            metadata: if r.metadata.is_empty() {
                String::new()
            } else {
                serde_json::to_string_pretty(&r.metadata).unwrap_or_default()
            },
            ..KeyForm::default()
        };
        if let Some(c) = r.credits {
            f.credits = remaining.unwrap_or(c.remaining).to_string();
            if let Some(refill) = c.refill {
                f.refill_interval = refill.interval.as_str().to_owned();
                f.refill_amount = refill.amount.to_string();
            }
        }
        for l in &r.ratelimits {
            f.rl_name.push(l.name().to_owned());
            f.rl_limit.push(l.limit().to_string());
            f.rl_period.push(
                HumanDuration::new(std::time::Duration::from_millis(l.period_ms())).to_string(),
            );
            f.rl_mode.push(l.fail_mode().as_str().to_owned());
        }
        if let Some(p) = r.rotation {
            f.rotation_every = p.every.to_string();
            f.rotation_grace = p.grace.to_string();
        }
        f
    }

    /// The REST API's JSON body of this form (`patch`: every field given, empty ones as
    /// `null`, which clears them). Errors the JSON could not express are named here.
    fn to_json(&self, patch: bool) -> std::result::Result<Value, FormErrors> {
        let mut errors = FormErrors::new();
        let all = [
            &self.name,
            &self.owner_id,
            &self.prefix,
            &self.expires_at,
            &self.credits,
            &self.metadata,
            &self.scopes,
            &self.ip_allowlist,
        ];
        if all.iter().any(|f| f.len() > MAX_FIELD)
            || [
                &self.rl_name,
                &self.rl_limit,
                &self.rl_period,
                &self.rl_mode,
            ]
            .iter()
            .any(|v| v.len() > 16 || v.iter().any(|f| f.len() > 200))
        {
            errors.push(("form".into(), "form.too_long"));
            return Err(errors);
        }
        let text = |s: &str| {
            let s = s.trim();
            if s.is_empty() {
                Value::Null
            } else {
                Value::String(s.to_owned())
            }
        };
        let mut body = Map::new();
        body.insert("name".into(), Value::String(self.name.trim().to_owned()));
        body.insert("owner_id".into(), text(&self.owner_id));
        if !patch {
            body.insert("prefix".into(), text(&self.prefix));
            body.insert("enabled".into(), Value::Bool(!self.enabled.is_empty()));
        }
        let expires = if self.expires_at.trim().is_empty() {
            Value::Null
        } else {
            match local_time(&self.expires_at, tz_offset(Some(&self.tz))) {
                Some(t) => Value::String(t.to_rfc3339()),
                None => {
                    errors.push(("expires_at".into(), "form.datetime"));
                    Value::Null
                }
            }
        };
        body.insert("expires_at".into(), expires);
        let credits = if self.credits.trim().is_empty() {
            if !self.refill_amount.trim().is_empty() || !self.refill_interval.is_empty() {
                errors.push(("credits.remaining".into(), "form.credits_for_refill"));
            }
            Value::Null
        } else {
            let remaining = whole(&self.credits, "credits.remaining", &mut errors);
            let refill = match (self.refill_interval.as_str(), self.refill_amount.trim()) {
                ("", "") => Value::Null,
                ("daily" | "monthly", amount) => {
                    let amount = if amount.is_empty() {
                        errors.push(("credits.refill.amount".into(), "form.required"));
                        None
                    } else {
                        whole(amount, "credits.refill.amount", &mut errors)
                    };
                    json!({ "interval": self.refill_interval, "amount": amount })
                }
                ("", _) => {
                    errors.push(("credits.refill.interval".into(), "form.required"));
                    Value::Null
                }
                _ => {
                    errors.push(("credits.refill.interval".into(), "form.choose"));
                    Value::Null
                }
            };
            json!({ "remaining": remaining, "refill": refill })
        };
        body.insert("credits".into(), credits);
        let mut limits = Vec::new();
        for (i, row) in limit_rows(self).iter().enumerate() {
            let parts = [row.name.trim(), row.limit.trim(), row.period.trim()];
            if parts.iter().all(|p| p.is_empty()) {
                continue;
            }
            // The index the API will name is the row's place among the rows given.
            let n = limits.len();
            if n != i {
                // An empty row above: the API's index would not be the row's; keep them
                // aligned by refusing the gap.
                errors.push((format!("ratelimits[{i}].name"), "form.limit_gap"));
                continue;
            }
            let at = |f: &str| format!("ratelimits[{i}].{f}");
            let limit = if parts[1].is_empty() {
                errors.push((at("limit"), "form.required"));
                None
            } else {
                whole(parts[1], &at("limit"), &mut errors)
            };
            let period_ms = if parts[2].is_empty() {
                errors.push((at("period_ms"), "form.required"));
                None
            } else {
                match HumanDuration::parse(parts[2], &at("period_ms")) {
                    Ok(d) => Some(u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX)),
                    Err(_) => {
                        errors.push((at("period_ms"), "form.duration"));
                        None
                    }
                }
            };
            limits.push(
                json!({ "name": parts[0], "limit": limit, "period_ms": period_ms,
                                "fail_mode": row.mode }),
            );
        }
        body.insert("ratelimits".into(), Value::Array(limits));
        let scopes: Vec<Value> = self
            .scopes
            .split([' ', ',', '\n', '\r', '\t'])
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_owned()))
            .collect();
        body.insert("scopes".into(), Value::Array(scopes));
        let allow: Vec<Value> = self
            .ip_allowlist
            .split([' ', ',', '\n', '\r', '\t'])
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_owned()))
            .collect();
        body.insert("ip_allowlist".into(), Value::Array(allow));
        let metadata = if self.metadata.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            match serde_json::from_str::<Value>(&self.metadata) {
                Ok(Value::Object(m)) => Value::Object(m),
                _ => {
                    errors.push(("metadata".into(), "form.json_object"));
                    Value::Object(Map::new())
                }
            }
        };
        body.insert("metadata".into(), metadata);
        let rotation = match (self.rotation_every.trim(), self.rotation_grace.trim()) {
            ("", "") => Value::Null,
            ("", _) => {
                errors.push(("rotation.every".into(), "form.required"));
                Value::Null
            }
            (every, "") => json!({ "every": every }),
            (every, grace) => json!({ "every": every, "grace": grace }),
        };
        body.insert("rotation".into(), rotation);
        if errors.is_empty() {
            Ok(Value::Object(body))
        } else {
            Err(errors)
        }
    }
}
