//! What handlers read: the verified key, and the provider label they may set per response.

use std::{borrow::Cow, convert::Infallible, sync::Arc};

use axum_core::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, IntoResponseParts, Response, ResponseParts},
};
use http::{StatusCode, request::Parts};
use keyvault_core::{KeyId, KeyRecord, LimitState, Outcome};

use crate::problem::problem;

/// The key a request was accepted with, put in the request's extensions by the layer.
///
/// ```
/// use axum::{Router, routing::get};
/// use keyvault_axum::VerifiedKey;
///
/// async fn hello(key: VerifiedKey) -> String {
///     format!("hello, {}", key.record().name)
/// }
///
/// // With optional authentication, `Option<VerifiedKey>` is `None` for anonymous callers.
/// async fn maybe(key: Option<VerifiedKey>) -> &'static str {
///     if key.is_some() { "member" } else { "guest" }
/// }
/// # let _: Router = Router::new().route("/hello", get(hello)).route("/maybe", get(maybe));
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedKey {
    pub(crate) record: Arc<KeyRecord>,
    pub(crate) credits_remaining: Option<u64>,
    /// None for a key without rate limits (saves an allocation per request).
    pub(crate) ratelimits: Option<Arc<[LimitState]>>,
    pub(crate) cost: u64,
}

impl VerifiedKey {
    /// The key's record (never its plaintext).
    pub fn record(&self) -> &Arc<KeyRecord> {
        &self.record
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.record.id
    }

    /// The key's owner.
    pub fn owner_id(&self) -> Option<&str> {
        self.record.owner_id.as_deref()
    }

    /// The credit balance after this request (None: unlimited).
    pub fn credits_remaining(&self) -> Option<u64> {
        self.credits_remaining
    }

    /// Every rate limit of the key after this request.
    pub fn ratelimits(&self) -> &[LimitState] {
        self.ratelimits.as_deref().unwrap_or(&[])
    }

    /// The credits this request spent.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Always [`Outcome::Valid`]: a handler only sees accepted keys.
    pub fn outcome(&self) -> Outcome {
        Outcome::Valid
    }
}

/// The rejection of [`VerifiedKey`]: the request did not pass through the keyvault layer.
/// It is a mistake in the application's wiring, never the caller's, so it answers 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingKeyvaultLayer;

impl std::fmt::Display for MissingKeyvaultLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no verified key in the request: is the keyvault layer installed?")
    }
}

impl std::error::Error for MissingKeyvaultLayer {}

impl IntoResponse for MissingKeyvaultLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "KEYVAULT_LAYER_MISSING",
            "Is the keyvault layer installed?",
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VerifiedKey {
    type Rejection = MissingKeyvaultLayer;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<VerifiedKey>()
            .cloned()
            .ok_or(MissingKeyvaultLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for VerifiedKey {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<VerifiedKey>().cloned())
    }
}

/// A provider label set by a handler for one response; it replaces the route's in the usage
/// event (a proxy that picks its upstream per request knows the provider only then).
///
/// ```
/// use axum::{Json, response::IntoResponse};
/// use keyvault_axum::Provider;
///
/// async fn complete(Json(body): Json<serde_json::Value>) -> impl IntoResponse {
///     let upstream = if body["model"] == "claude" { "anthropic" } else { "openai" };
///     (Provider::new(upstream), Json(body))
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider(pub(crate) Cow<'static, str>);

impl Provider {
    /// A label.
    pub fn new(label: impl Into<Cow<'static, str>>) -> Self {
        Self(label.into())
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl IntoResponseParts for Provider {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

impl IntoResponse for Provider {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}
