//! The page shell every dashboard page renders in (navigation, language switch, colour
//! mode, sign-out), and how pages become responses: security headers, no caching.

use askama::Template;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::{i18n::Lang, session::Visitor};
use crate::{api::mount::Mount, auth::Need};

/// No inline script, nothing from another origin (CONTRACT §6). Bootstrap draws its form
/// controls with `data:` SVG images.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The navigation entries, in order: (id, message, path, role needed).
const NAV: [(&str, &str, &str, Need); 7] = [
    ("overview", "nav.overview", "/admin", Need::Viewer),
    ("keys", "nav.keys", "/admin/keys", Need::Viewer),
    ("audit", "nav.audit", "/admin/audit", Need::Operator),
    ("alerts", "nav.alerts", "/admin/alerts", Need::Viewer),
    ("logs", "nav.logs", "/admin/logs", Need::Operator),
    ("tokens", "nav.tokens", "/admin/tokens", Need::Admin),
    ("users", "nav.users", "/admin/users", Need::Admin),
];

/// One navigation entry as rendered.
#[derive(Debug, Clone)]
pub(crate) struct NavItem {
    pub(crate) id: &'static str,
    pub(crate) label: &'static str,
    pub(crate) href: String,
    pub(crate) active: bool,
}

/// What the shell needs: the language, the prefix, the visitor (none on the sign-in page).
#[derive(Debug, Clone)]
pub(crate) struct Shell {
    pub(crate) lang: Lang,
    pub(crate) mount: Mount,
    pub(crate) title: String,
    pub(crate) username: String,
    pub(crate) role: String,
    pub(crate) csrf: String,
    pub(crate) nav: Vec<NavItem>,
    pub(crate) signed_in: bool,
    operator: bool,
    admin: bool,
    /// The path and query of this page (where the language switch returns to).
    pub(crate) here: String,
}

impl Shell {
    /// The shell of a signed-in page; `active` names its navigation entry.
    pub(crate) fn new(v: &Visitor, active: &str, title_key: &str, here: String) -> Self {
        let nav = NAV
            .iter()
            .filter(|(.., need)| v.may(*need))
            .map(|(id, label, path, _)| NavItem {
                id,
                label: v.lang.t(label),
                href: v.mount.path(path),
                active: *id == active,
            })
            .collect();
        Self {
            lang: v.lang,
            mount: v.mount.clone(),
            title: v.lang.t(title_key).to_owned(),
            username: v.user.username.clone(),
            role: v.user.role.to_string(),
            csrf: v.csrf.clone(),
            nav,
            signed_in: true,
            operator: v.may(Need::Operator),
            admin: v.may(Need::Admin),
            here,
        }
    }

    /// The shell of the sign-in page.
    pub(crate) fn anonymous(lang: Lang, mount: Mount, csrf: String) -> Self {
        Self {
            title: lang.t("login.title").to_owned(),
            lang,
            here: mount.path("/admin/login"),
            mount,
            username: String::new(),
            role: String::new(),
            csrf,
            nav: Vec::new(),
            signed_in: false,
            operator: false,
            admin: false,
        }
    }

    pub(crate) fn t(&self, key: &str) -> &'static str {
        self.lang.t(key)
    }

    pub(crate) fn num(&self, n: &u64) -> String {
        self.lang.num(*n)
    }

    /// A path of the dashboard under the mount prefix.
    pub(crate) fn url(&self, path: &str) -> String {
        self.mount.path(path)
    }

    /// The hashed URL of a file under `static/`.
    pub(crate) fn asset(&self, logical: &str) -> String {
        self.mount
            .path(&format!("/admin/{}", crate::assets::path(logical)))
    }

    /// The visitor's role, in words.
    pub(crate) fn role_label(&self) -> &'static str {
        self.lang.t(&format!("role.{}", self.role))
    }

    pub(crate) fn operator(&self) -> bool {
        self.operator
    }

    pub(crate) fn admin(&self) -> bool {
        self.admin
    }

    pub(crate) fn lang_code(&self) -> &'static str {
        self.lang.code()
    }

    /// The messages the scripts show, as JSON (read from a `<script type="application/json">`
    /// block, which is data, not script).
    pub(crate) fn script_messages(&self) -> String {
        self.lang.script_messages()
    }

    pub(crate) fn langs(&self) -> Vec<(&'static str, &'static str, bool)> {
        Lang::ALL
            .iter()
            .map(|l| {
                (
                    l.code(),
                    self.lang.t(&format!("lang.{}", l.code())),
                    *l == self.lang,
                )
            })
            .collect()
    }
}

/// A rendered page with the dashboard's headers.
pub(crate) fn render<T: Template>(status: StatusCode, template: &T) -> Response {
    match template.render() {
        Ok(html) => with_headers((status, Html(html)).into_response()),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard page did not render");
            crate::error::Error::Internal("page rendering failed".into()).into_response()
        }
    }
}

/// The headers of every dashboard response: the CSP, no caching (pages hold CSRF tokens
/// and, once, secrets), no sniffing, no framing, no referrer beyond this origin.
pub(crate) fn with_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// A page that only says something: a refusal, a missing page.
#[derive(Template)]
#[template(path = "message.html")]
struct Message {
    shell: Shell,
    body: &'static str,
}

/// A page with the message `key` (its title) and `key` + `_body`, when the catalogue has one.
pub(crate) fn message(v: &Visitor, status: StatusCode, key: &str) -> Response {
    let shell = Shell::new(v, "", key, v.mount.path("/admin"));
    let body = v.lang.t(&format!("{key}_body"));
    render(status, &Message { shell, body })
}

/// 403, as a page.
pub(crate) fn forbidden(v: &Visitor) -> Response {
    message(v, StatusCode::FORBIDDEN, "error.forbidden")
}

/// A failed change or page: a script gets the problem document, a person a page in their
/// language with the status of the error (a refused value, a missing key, a conflict).
pub(crate) fn failure(v: &Visitor, script: bool, e: crate::error::Error) -> Response {
    if script {
        return e.into_response();
    }
    let problem = crate::error::Problem::from(&e);
    let status = problem.status();
    if status.is_server_error() {
        tracing::error!(error = %e, "a dashboard change failed");
        return message(v, status, "error.failed");
    }
    let key = format!("problem.{}", problem.code());
    let shell = Shell::new(v, "", "error.refused", v.mount.path("/admin"));
    let detail = match (problem.field_path(), v.lang) {
        (Some(f), _) => format!("{} ({f})", v.lang.t(&key)),
        _ => v.lang.t(&key).to_owned(),
    };
    render(status, &Failure { shell, detail })
}

#[derive(Template)]
#[template(path = "failure.html")]
struct Failure {
    shell: Shell,
    detail: String,
}
