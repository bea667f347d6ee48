//! The server's error type, and how each error becomes a one-line CLI message or an
//! `application/problem+json` answer.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
pub use keyvault_axum::Problem;
use keyvault_core::Error as CoreError;

/// Everything that can go wrong in the server or a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// keyvault-core refused or failed.
    #[error(transparent)]
    Core(#[from] CoreError),
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
    #[error("{}", .0.detail_text().unwrap_or("bad request"))]
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

    /// A file or socket failed; `context` says which.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The one line a command prints on failure: what is wrong, never a secret (inputs that
    /// carry secrets are never echoed by the errors built from them).
    pub fn cli_line(&self) -> String {
        match self {
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

    /// The stable code of an error without a ready problem document.
    fn code(&self) -> Code {
        match self {
            Error::Core(CoreError::Invalid(_)) => Code::InvalidValue,
            Error::Core(CoreError::NotFound { .. }) | Error::NotFound(_) => Code::NotFound,
            Error::Core(CoreError::Conflict(_)) | Error::Conflict(_) => Code::Conflict,
            Error::Core(CoreError::Backend(_)) => Code::BackendUnavailable,
            Error::Core(_) | Error::Internal(_) | Error::Io { .. } => Code::Internal,
            Error::Input { .. } => Code::InvalidRequest,
            // Never asked: a ready problem document is answered as it is.
            Error::Problem(_) => Code::InvalidRequest,
            Error::Unauthorized(_) => Code::Unauthorized,
            Error::Forbidden(_) => Code::Forbidden,
        }
    }

    /// The field a client got wrong, if any.
    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            Error::Core(CoreError::Invalid(i)) => Some(&i.field),
            Error::Input { field, .. } => Some(field),
            Error::Problem(p) => p.field_path(),
            _ => None,
        }
    }
}

/// The result of the server's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The server's stable error codes (CONTRACT §4), each spelled here and nowhere else.
/// Verification outcomes (§2, upper case) are another set: `keyvault_core::Outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// The body is not a JSON document, or not an object.
    InvalidJson,
    /// A field has the wrong type or shape.
    InvalidField,
    /// A required field is absent.
    MissingField,
    /// A well-formed value is out of bounds (422).
    InvalidValue,
    /// The query string is malformed or names an unknown parameter.
    InvalidQuery,
    /// Any other bad input (a flag, a file).
    InvalidRequest,
    /// The body could not be read.
    InvalidBody,
    /// No valid credentials.
    Unauthorized,
    /// A role too low.
    Forbidden,
    /// An unknown id or endpoint.
    NotFound,
    /// A conflict with the current state.
    Conflict,
    /// A successor already handed out (410).
    SuccessorClaimed,
    /// A body over the limit.
    PayloadTooLarge,
    /// A method the endpoint does not answer.
    MethodNotAllowed,
    /// A backend is down.
    BackendUnavailable,
    /// Too many requests in flight (`KEYVAULT_MAX_CONCURRENCY`); retry (503).
    Overloaded,
    /// The request's body was still arriving when `KEYVAULT_REQUEST_TIMEOUT` ran out (408).
    RequestTimeout,
    /// The whole request had arrived but no response had started within
    /// `KEYVAULT_REQUEST_TIMEOUT`; retry (503).
    ResponseTimeout,
    /// The server failed; never for anything a client sent.
    Internal,
}

impl Code {
    /// The code as it appears in problem documents (lower snake case).
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::InvalidJson => "invalid_json",
            Code::InvalidField => "invalid_field",
            Code::MissingField => "missing_field",
            Code::InvalidValue => "invalid_value",
            Code::InvalidQuery => "invalid_query",
            Code::InvalidRequest => "invalid_request",
            Code::InvalidBody => "invalid_body",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::SuccessorClaimed => "successor_claimed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::BackendUnavailable => "backend_unavailable",
            Code::Overloaded => "overloaded",
            Code::RequestTimeout => "request_timeout",
            Code::ResponseTimeout => "response_timeout",
            Code::Internal => "internal",
        }
    }

    /// The status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidJson
            | Code::InvalidField
            | Code::MissingField
            | Code::InvalidQuery
            | Code::InvalidRequest
            | Code::InvalidBody => StatusCode::BAD_REQUEST,
            Code::InvalidValue => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Conflict => StatusCode::CONFLICT,
            Code::SuccessorClaimed => StatusCode::GONE,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::BackendUnavailable | Code::Overloaded | Code::ResponseTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A problem document with this code, its status and `detail`.
    pub(crate) fn problem(self, detail: impl Into<String>) -> Problem {
        Problem::new(self.status(), self.as_str()).detail(detail)
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
        let code = e.code();
        // Server-side failures get a generic text: their causes go to the log only.
        let detail = match code {
            Code::BackendUnavailable => "a backend is unavailable; retry later".into(),
            Code::Internal => "internal error".into(),
            _ => match e {
                Error::Core(CoreError::Invalid(i)) => i.message.clone(),
                Error::Input { message, .. } => message.clone(),
                other => other.to_string(),
            },
        };
        code.problem(detail).field(e.field().unwrap_or_default())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = Problem::from(&self);
        if problem.status().is_server_error() {
            tracing::error!(error = %self.cli_line(), code = problem.code(), "request failed");
        }
        problem.into_response()
    }
}
