//! The notification channels on `/admin/alerts` (admins only, CONTRACT §6 and §7): listed
//! with their URLs as scheme and host, made (a webhook's signing secret shown once, by the
//! same one view as a new key), sent a test, deleted.

use std::collections::{BTreeMap, HashMap};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use keyvault_core::NotifierRecord;
use serde::Deserialize;

use super::{
    alerts::{blank_form, show},
    flash,
    page::failure,
    session::{Change, Empty, Visitor},
};
use crate::{
    NewNotifier,
    api::{AppState, Ctx},
    auth::Need,
    error::{Error, Problem},
    notify::{EVENTS, guard},
};

/// The one view's id for a new channel's secret (one channel is made per POST).
pub(super) const NEW_NOTIFIER: &str = "notifier";

/// A channel as listed: never its secret, its URL as scheme and host only.
#[derive(Debug, Clone)]
pub(crate) struct ChannelLine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) url: String,
    /// Empty: every event.
    pub(crate) events: Vec<String>,
    pub(crate) created_at: String,
}

impl From<&NotifierRecord> for ChannelLine {
    fn from(n: &NotifierRecord) -> Self {
        Self {
            id: n.id.to_string(),
            name: n.name.clone(),
            kind: n.kind.clone(),
            url: guard::shown(&n.url),
            events: n.events.clone(),
            created_at: n.created_at.to_rfc3339(),
        }
    }
}

/// The new-channel form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ChannelForm {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) url: String,
    /// The boxes ticked; none: every event.
    pub(crate) events: Vec<String>,
}

/// What a test message came to, as the page says it.
#[derive(Debug, Clone)]
pub(crate) struct TestNotice {
    pub(crate) delivered: bool,
    pub(crate) message: String,
}

/// The channel part of the alerts page: its form, the errors beside its inputs, a new
/// channel's secret (this one view) and the outcome of a test.
#[derive(Debug, Clone, Default)]
pub(crate) struct Panel {
    pub(crate) form: ChannelForm,
    /// By input: the field as the REST API names it, and the message.
    pub(crate) errors: BTreeMap<String, (String, String)>,
    pub(crate) secret: Option<String>,
    pub(crate) notice: Option<TestNotice>,
}

impl Panel {
    /// A blank form: a webhook, every event.
    pub(crate) fn blank() -> Self {
        Self {
            form: ChannelForm {
                kind: "webhook".into(),
                ..ChannelForm::default()
            },
            ..Self::default()
        }
    }

    pub(crate) fn error(&self, input: &str) -> Option<&String> {
        self.errors.get(input).map(|(_, m)| m)
    }

    /// The field the error beside `input` names (`events[0]` beside `events`).
    pub(crate) fn error_field<'a>(&'a self, input: &'a str) -> &'a str {
        self.errors.get(input).map_or(input, |(f, _)| f.as_str())
    }

    pub(crate) fn checked(&self, event: &str) -> bool {
        self.form.events.iter().any(|e| e == event)
    }
}

/// The event types a channel may receive, for the form's boxes.
pub(crate) fn events() -> [&'static str; 4] {
    EVENTS
}

/// The input an error of the channel form belongs beside, the field it names and the
/// message, in the visitor's language.
fn form_error(v: &Visitor, e: &Error) -> (String, (String, String)) {
    let field = e.field().unwrap_or("name").to_owned();
    // `events[2]` belongs beside the boxes.
    let input = field.split('[').next().unwrap_or("name").to_owned();
    let message = v
        .lang
        .lookup(&format!("notifiers.error_{input}"))
        .unwrap_or_else(|| v.lang.t(&format!("problem.{}", Problem::from(e).code())));
    (input, (field, message.to_owned()))
}

/// `POST /admin/alerts/notifiers`: a new channel; a webhook's secret is shown once on the
/// page the browser lands on.
pub(crate) async fn create(
    State(st): State<AppState>,
    ctx: Ctx,
    change: Change<ChannelForm>,
) -> Response {
    let Change {
        v,
        body: form,
        script,
    } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "notifier.create", script)
        .await
    {
        return r;
    }
    let events: Vec<String> = form.events.iter().map(|e| e.trim().to_owned()).collect();
    let new = NewNotifier {
        name: form.name.clone(),
        kind: form.kind.trim().to_owned(),
        url: form.url.trim().to_owned(),
        events: Some(events).filter(|e| !e.is_empty()),
    };
    match st.app.create_notifier(new, &v.actor(&ctx)).await {
        Ok(made) => {
            let mut res = Redirect::to(&v.mount.path("/admin/alerts")).into_response();
            let Some(secret) = made.secret else {
                return res;
            };
            match flash::seal(&mut res, st.app.secret_key(), &v, NEW_NOTIFIER, &secret) {
                Ok(()) => res,
                Err(e) => failure(&v, false, e),
            }
        }
        Err(e) if Problem::from(&e).status().is_client_error() => {
            let panel = Panel {
                errors: BTreeMap::from([form_error(&v, &e)]),
                form,
                ..Panel::default()
            };
            again(&st, &v, StatusCode::UNPROCESSABLE_ENTITY, panel).await
        }
        Err(e) => failure(&v, false, e),
    }
}

/// The alerts page again (open alerts), with the channel part as given.
async fn again(st: &AppState, v: &Visitor, status: StatusCode, panel: Panel) -> Response {
    let q = HashMap::new();
    show(
        st,
        v,
        status,
        &q,
        blank_form(),
        String::new(),
        BTreeMap::new(),
        panel,
    )
    .await
    .unwrap_or_else(|e| failure(v, false, e))
}

/// `POST /admin/alerts/notifiers/{id}/test`: sends a test message now and shows what it came
/// to.
pub(crate) async fn test(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "notifier.test", script)
        .await
    {
        return r;
    }
    let name = match st.app.notifier_channel(&id).await {
        Ok(c) => c.name,
        Err(_) => String::new(),
    };
    let out = match st.app.test_notifier(&id, &v.actor(&ctx)).await {
        Ok(out) => out,
        Err(e) => return failure(&v, script, e),
    };
    let message = if out.delivered {
        let status = out.status.map_or_else(|| "—".to_owned(), |s| s.to_string());
        v.lang.tf(
            "notifiers.test_delivered",
            &[("name", &name), ("status", &status)],
        )
    } else {
        // The reason is the server's (it never holds the URL), shown as it is.
        let why = out
            .error
            .or_else(|| out.status.map(|s| format!("HTTP {s}")))
            .unwrap_or_default();
        v.lang
            .tf("notifiers.test_failed", &[("name", &name), ("error", &why)])
    };
    let panel = Panel {
        notice: Some(TestNotice {
            delivered: out.delivered,
            message,
        }),
        ..Panel::blank()
    };
    again(&st, &v, StatusCode::OK, panel).await
}

/// `POST /admin/alerts/notifiers/{id}/delete`: the channel and its pending deliveries.
pub(crate) async fn delete(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    change: Change<Empty>,
) -> Response {
    let Change { v, script, .. } = change;
    if let Err(r) = v
        .permit(&st, &ctx, Need::Admin, "notifier.delete", script)
        .await
    {
        return r;
    }
    match st.app.delete_notifier(&id, &v.actor(&ctx)).await {
        Ok(()) => Redirect::to(&v.mount.path("/admin/alerts")).into_response(),
        Err(e) => failure(&v, script, e),
    }
}
