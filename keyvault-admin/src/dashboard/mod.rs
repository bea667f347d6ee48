//! The dashboard (CONTRACT §6): server-rendered pages under `/admin` in English and
//! Chinese, signed in with a session kept in the backends, every change carrying the
//! session's CSRF token; scripts (static files, no inline script) add charts, live figures
//! and toggles.

mod accounts;
mod alerts;
mod audit;
mod channels;
mod flash;
mod format;
mod guard;
mod i18n;
mod keydetail;
mod keyform;
mod keys;
mod login;
mod logs;
mod model;
mod overview;
mod page;
mod range;
mod session;

use axum::{
    Router,
    routing::{get, post},
};

pub(crate) use guard::SignInGuard;
pub(crate) use i18n::Lang;
pub(crate) use page::CSP;

use crate::api::AppState;

/// The dashboard's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview::page))
        .route("/admin/", get(overview::page))
        .route("/admin/login", get(login::form).post(login::submit))
        .route("/admin/logout", post(login::sign_out))
        .route("/admin/lang", get(login::switch))
        .route("/admin/api/overview", get(overview::data))
        .route("/admin/keys", get(keys::list))
        .route(
            "/admin/keys/new",
            get(keyform::new_form).post(keyform::create),
        )
        .route("/admin/keys/batch", post(keys::batch))
        .route("/admin/keys/{id}", get(keydetail::page))
        .route(
            "/admin/keys/{id}/edit",
            get(keyform::edit_form).post(keyform::update),
        )
        .route("/admin/keys/{id}/toggle", post(keys::toggle))
        .route("/admin/keys/{id}/rotate", post(keydetail::rotate))
        .route("/admin/keys/{id}/end-grace", post(keydetail::end_grace))
        .route(
            "/admin/keys/{id}/delete",
            get(keydetail::confirm_delete).post(keydetail::delete),
        )
        .route("/admin/audit", get(audit::page))
        .route("/admin/audit.csv", get(audit::csv))
        .route("/admin/alerts", get(alerts::page))
        .route("/admin/alerts/{id}/ack", post(alerts::acknowledge))
        .route("/admin/alerts/rules", post(alerts::create_rule))
        .route("/admin/alerts/rules/{id}", post(alerts::update_rule))
        .route("/admin/alerts/rules/{id}/delete", post(alerts::delete_rule))
        .route("/admin/alerts/notifiers", post(channels::create))
        .route("/admin/alerts/notifiers/{id}/test", post(channels::test))
        .route(
            "/admin/alerts/notifiers/{id}/delete",
            post(channels::delete),
        )
        .route("/admin/logs", get(logs::page))
        .route("/admin/api/logs", get(logs::data))
        .route("/admin/audit/verify", post(audit::verify))
        .route(
            "/admin/tokens",
            get(accounts::tokens).post(accounts::create_token),
        )
        .route("/admin/tokens/{id}/revoke", post(accounts::revoke_token))
        .route(
            "/admin/users",
            get(accounts::users).post(accounts::create_user),
        )
        .route("/admin/users/{name}/access", post(accounts::set_access))
        .route("/admin/users/{name}/password", post(accounts::set_password))
}
