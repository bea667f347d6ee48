//! Per-route settings: cost, required scopes and provider label.

use std::{fmt, sync::Arc};

use http::request::Parts;
use keyvault_core::Label;

/// How many credits a request costs.
#[derive(Clone)]
pub enum Cost {
    /// The same for every request (0 is a pure check).
    Fixed(u64),
    /// Computed from the request's method, URI, headers and extensions (not its body, which
    /// the layer never reads).
    Computed(Arc<dyn Fn(&Parts) -> u64 + Send + Sync>),
}

impl Cost {
    /// A cost computed by `f` from each request.
    ///
    /// ```
    /// use keyvault_axum::Cost;
    ///
    /// // Batch endpoints charge one credit per item announced in a header.
    /// let cost = Cost::from_fn(|parts| {
    ///     parts.headers.get("x-batch-size")
    ///         .and_then(|v| v.to_str().ok()?.parse().ok())
    ///         .unwrap_or(1)
    /// });
    /// # let _ = cost;
    /// ```
    pub fn from_fn(f: impl Fn(&Parts) -> u64 + Send + Sync + 'static) -> Self {
        Cost::Computed(Arc::new(f))
    }

    pub(crate) fn of(&self, parts: &Parts) -> u64 {
        match self {
            Cost::Fixed(c) => *c,
            Cost::Computed(f) => f(parts),
        }
    }
}

impl Default for Cost {
    fn default() -> Self {
        Cost::Fixed(1)
    }
}

impl fmt::Debug for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Fixed(c) => f.debug_tuple("Fixed").field(c).finish(),
            Cost::Computed(_) => f.write_str("Computed(..)"),
        }
    }
}

/// What a route costs, which scopes it needs and which provider its calls are counted under.
///
/// ```
/// use keyvault_axum::{Cost, RouteConfig};
///
/// let chat = RouteConfig::new()
///     .with_provider("openai")
///     .with_cost(Cost::Fixed(5))
///     .with_scope("chat");
/// # let _ = chat;
/// ```
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    pub(crate) cost: Cost,
    pub(crate) scopes: Arc<[String]>,
    pub(crate) provider: Option<Label>,
    /// The route template these settings were registered for (`None` for the defaults):
    /// usage events share it rather than copying the template for every request.
    pub(crate) template: Option<Label>,
}

impl RouteConfig {
    /// Cost 1, no scopes, no provider label.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cost of a request.
    ///
    /// ```
    /// # use keyvault_axum::{Cost, RouteConfig};
    /// let free_check = RouteConfig::new().with_cost(Cost::Fixed(0));
    /// # let _ = free_check;
    /// ```
    pub fn with_cost(mut self, cost: Cost) -> Self {
        self.cost = cost;
        self
    }

    /// Adds a scope the key must hold.
    ///
    /// ```
    /// # use keyvault_axum::RouteConfig;
    /// let admin = RouteConfig::new().with_scope("admin").with_scope("write");
    /// # let _ = admin;
    /// ```
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        let mut scopes = self.scopes.to_vec();
        scopes.push(scope.into());
        self.scopes = scopes.into();
        self
    }

    /// The provider label usage events carry (a handler may override it per response with
    /// [`crate::Provider`]).
    ///
    /// ```
    /// # use keyvault_axum::RouteConfig;
    /// let embed = RouteConfig::new().with_provider("anthropic");
    /// # let _ = embed;
    /// ```
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(Label::from(provider.into()));
        self
    }
}
