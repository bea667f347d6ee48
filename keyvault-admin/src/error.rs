//! The server's error type, and how each error becomes a one-line CLI message or an
//! `application/problem+json` answer.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use keyvault_core::Error as CoreError;
use serde_json::json;

/// Everything that can go wrong in the server or a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// keyvault-core refused or failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The server's own tables failed.
    #[error("database failed")]
    Db(#[from] sqlx::Error),
    /// Bad input that does not come from a JSON body: a flag, a query parameter, a file.
    #[error("{field}: {message}")]
    Input {
        /// What is wrong.
        field: String,
        /// Why.
        message: String,
    },
    /// No usable credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Credentials too weak for this action.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Unknown id.
    #[error("{0} not found")]
    NotFound(String),
    /// The action conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// Which file or stream.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A request refused with a ready problem document (a body that did not parse).
    #[error("{}", .0.detail)]
    Problem(Problem),
    /// An unexpected internal failure (a task that died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The one line a command prints on failure: what is wrong, never a secret (inputs that
    /// carry secrets are never echoed by the errors built from them).
    pub fn cli_line(&self) -> String {
        match self {
            Error::Db(e) => format!("database failed: {}", db_reason(e)),
            Error::Core(CoreError::Backend(b)) => {
                let mut line = format!("{} backend failed", b.backend());
                let mut src = std::error::Error::source(b);
                while let Some(s) = src {
                    // Some errors show their source's text in their own: said once.
                    let segment = format!(": {s}");
                    if !line.ends_with(&segment) {
                        line.push_str(&segment);
                    }
                    src = s.source();
                }
                line
            }
            other => other.to_string(),
        }
        .replace('\n', " ")
    }

    /// The HTTP status and stable code.
    pub(crate) fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::Core(CoreError::Invalid(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
            }
            Error::Core(CoreError::NotFound { .. }) | Error::NotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::Core(CoreError::Conflict(_)) | Error::Conflict(_) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Error::Core(CoreError::Backend(_)) | Error::Db(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable")
            }
            Error::Core(_) | Error::Internal(_) | Error::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            Error::Input { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            Error::Problem(p) => (p.status, p.code),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        }
    }

    /// The field a client got wrong, if any.
    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            Error::Core(CoreError::Invalid(i)) => Some(&i.field),
            Error::Input { field, .. } => Some(field),
            Error::Problem(p) => p.field.as_deref(),
            _ => None,
        }
    }
}

fn db_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        other => other.to_string(),
    }
}

/// The result of the server's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An RFC 9457 problem document: what the server answers for a refused or failed request.
#[derive(Debug, Clone)]
pub struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) detail: String,
    pub(crate) field: Option<String>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    pub(crate) fn field(mut self, field: impl Into<String>) -> Self {
        let f = field.into();
        self.field = (!f.is_empty()).then_some(f);
        self
    }
}

impl From<Problem> for Error {
    fn from(p: Problem) -> Self {
        Error::Problem(p)
    }
}

impl From<&Error> for Problem {
    fn from(e: &Error) -> Self {
        if let Error::Problem(p) = e {
            return p.clone();
        }
        let (status, code) = e.status_code();
        // Server-side failures get a generic text: their causes go to the log only.
        let detail = if status.is_server_error() {
            match status {
                StatusCode::SERVICE_UNAVAILABLE => "a backend is unavailable; retry later".into(),
                _ => "internal error".into(),
            }
        } else {
            match e {
                Error::Core(CoreError::Invalid(i)) => i.message.clone(),
                Error::Input { message, .. } => message.clone(),
                other => other.to_string(),
            }
        };
        let mut p = Problem::new(status, code, detail);
        if let Some(f) = e.field() {
            p = p.field(f);
        }
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let mut body = json!({
            "type": format!("urn:keyvault:problem:{}", self.code),
            "title": title,
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = Problem::from(&self);
        if problem.status.is_server_error() {
            tracing::error!(error = %self.cli_line(), code = problem.code, "request failed");
        }
        problem.into_response()
    }
}
