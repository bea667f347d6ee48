//! [`KeyvaultLayer`]: the settings, with secure defaults.

use std::{collections::HashMap, sync::Arc};

use fnv::FnvBuildHasher;
use http::{HeaderName, Method};
use ipnet::IpNet;
use keyvault_core::{Keyvault, Label, UsageRecorder};
use tower::Layer;

use crate::{
    route::{Cost, RouteConfig},
    service::KeyvaultService,
    source::TrustedProxies,
};

/// The header `X-API-Key`, read when no `Authorization: Bearer` is present.
pub const DEFAULT_API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The header `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Route template → settings per method (`None`: any method). FNV: route templates are few,
/// short and chosen by the application, not by callers, so SipHash's flooding resistance buys
/// nothing on a lookup made for every request.
pub(crate) type RouteTable = HashMap<Box<str>, Vec<(Option<Method>, RouteConfig)>, FnvBuildHasher>;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) bearer: bool,
    pub(crate) api_key_header: Option<HeaderName>,
    pub(crate) proxies: Option<TrustedProxies>,
    pub(crate) optional: bool,
    pub(crate) default_route: RouteConfig,
    pub(crate) routes: RouteTable,
}

impl Default for Config {
    /// The secure choice: every request needs a key, from `Authorization: Bearer` or
    /// `X-API-Key`; no forwarding header is believed; each request costs one credit.
    fn default() -> Self {
        Self {
            bearer: true,
            api_key_header: Some(DEFAULT_API_KEY_HEADER),
            proxies: None,
            optional: false,
            default_route: RouteConfig::default(),
            routes: HashMap::default(),
        }
    }
}

impl Config {
    /// The settings of the route a request matched (its template, as axum's `MatchedPath`).
    pub(crate) fn route(&self, template: Option<&str>, method: &Method) -> &RouteConfig {
        template
            .and_then(|t| self.routes.get(t))
            .and_then(|list| {
                list.iter()
                    .find(|(m, _)| m.as_ref() == Some(method))
                    .or_else(|| list.iter().find(|(m, _)| m.is_none()))
            })
            .map_or(&self.default_route, |(_, c)| c)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) vault: Keyvault,
    pub(crate) recorder: Option<UsageRecorder>,
    pub(crate) config: Config,
}

/// Verifies the API key of every request, enforces its limits, answers rejections as
/// CONTRACT §2 says, and records a usage event per request.
///
/// Install it with [`axum::Router::layer`] (or `route_layer`, or on a single route) so that it
/// runs after routing and sees the route template ([`axum::extract::MatchedPath`]); wrapped
/// around a whole router from outside it sees no template, applies its default settings and
/// records usage without a route.
///
/// ```
/// use axum::{Router, routing::{get, post}};
/// use keyvault_axum::{KeyvaultLayer, RouteConfig, VerifiedKey};
/// use keyvault_core::Keyvault;
///
/// async fn hello(key: VerifiedKey) -> String { key.id().to_string() }
///
/// let vault = Keyvault::in_memory();
/// let app: Router = Router::new()
///     .route("/v1/hello", get(hello))
///     .route("/v1/chat", post(|| async { "…" }))
///     .layer(
///         KeyvaultLayer::new(vault)
///             .with_provider("demo")
///             .with_route("/v1/chat", RouteConfig::new().with_provider("openai")),
///     )
///     // Added after the layer: not protected.
///     .route("/healthz", get(|| async { "ok" }));
/// ```
#[derive(Debug, Clone)]
pub struct KeyvaultLayer {
    shared: Arc<Shared>,
}

impl KeyvaultLayer {
    /// A layer over `vault` with the secure defaults: a key is required, read from
    /// `Authorization: Bearer` or `X-API-Key`; no forwarding header is believed; every request
    /// costs one credit; no usage is recorded until [`with_recorder`](Self::with_recorder).
    pub fn new(vault: Keyvault) -> Self {
        Self {
            shared: Arc::new(Shared {
                vault,
                recorder: None,
                config: Config::default(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        &mut Arc::make_mut(&mut self.shared).config
    }

    /// Records a usage event for every request (accepted or rejected) through `recorder`,
    /// which never blocks the response.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use keyvault_axum::KeyvaultLayer;
    /// use keyvault_core::{Keyvault, RecorderConfig, UsageRecorder, memory::MemoryStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let store = Arc::new(MemoryStore::new());
    /// let vault = Keyvault::builder().backend(store.clone()).build().unwrap();
    /// let recorder = UsageRecorder::spawn(store, RecorderConfig::default());
    /// let layer = KeyvaultLayer::new(vault).with_recorder(recorder.clone());
    /// # let _ = layer;
    /// // On shutdown: `recorder.shutdown().await` writes what is still buffered.
    /// recorder.shutdown().await;
    /// # });
    /// ```
    pub fn with_recorder(mut self, recorder: UsageRecorder) -> Self {
        Arc::make_mut(&mut self.shared).recorder = Some(recorder);
        self
    }

    /// Reads keys from another header than `X-API-Key` (`Authorization: Bearer` still wins).
    ///
    /// ```
    /// # use keyvault_axum::KeyvaultLayer;
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault)
    ///     .with_api_key_header(http::HeaderName::from_static("x-service-key"));
    /// # let _ = layer;
    /// ```
    pub fn with_api_key_header(mut self, name: HeaderName) -> Self {
        self.config().api_key_header = Some(name);
        self
    }

    /// Reads keys from `Authorization: Bearer` only.
    ///
    /// ```
    /// # use keyvault_axum::KeyvaultLayer;
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault).without_api_key_header();
    /// # let _ = layer;
    /// ```
    pub fn without_api_key_header(mut self) -> Self {
        self.config().api_key_header = None;
        self
    }

    /// Whether `Authorization: Bearer` is read (default: yes). Turning it off leaves the
    /// API-key header as the only source.
    ///
    /// ```
    /// # use keyvault_axum::KeyvaultLayer;
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// // Authorization is used for something else here (user sessions).
    /// let layer = KeyvaultLayer::new(vault).with_bearer(false);
    /// # let _ = layer;
    /// ```
    pub fn with_bearer(mut self, read: bool) -> Self {
        self.config().bearer = read;
        self
    }

    /// Believes `header` (such as [`X_FORWARDED_FOR`]) for the caller's address, but only when
    /// the peer is in one of `proxies`; the header is walked from the right past every
    /// trusted hop. Without this, the caller's address is the peer's
    /// ([`axum::extract::ConnectInfo`]; serve with `into_make_service_with_connect_info`).
    ///
    /// ```
    /// use keyvault_axum::{KeyvaultLayer, X_FORWARDED_FOR};
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault)
    ///     .with_trusted_proxies(["10.0.0.0/8".parse().unwrap()], X_FORWARDED_FOR);
    /// # let _ = layer;
    /// ```
    pub fn with_trusted_proxies(
        mut self,
        proxies: impl IntoIterator<Item = IpNet>,
        header: HeaderName,
    ) -> Self {
        let nets: Vec<IpNet> = proxies.into_iter().collect();
        self.config().proxies = (!nets.is_empty()).then_some(TrustedProxies { nets, header });
        self
    }

    /// Lets requests without any key through to the handler, which sees no [`crate::VerifiedKey`]
    /// (read it as `Option<VerifiedKey>`). A key that is presented is still verified, and
    /// refused when it is not valid.
    ///
    /// ```
    /// # use keyvault_axum::KeyvaultLayer;
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault).with_optional_auth(true);
    /// # let _ = layer;
    /// ```
    pub fn with_optional_auth(mut self, optional: bool) -> Self {
        self.config().optional = optional;
        self
    }

    /// The cost of requests to routes without their own settings (default 1).
    ///
    /// ```
    /// use keyvault_axum::{Cost, KeyvaultLayer};
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault).with_cost(Cost::Fixed(2));
    /// # let _ = layer;
    /// ```
    pub fn with_cost(mut self, cost: Cost) -> Self {
        self.config().default_route.cost = cost;
        self
    }

    /// A scope keys must hold on routes without their own settings.
    ///
    /// ```
    /// # use keyvault_axum::KeyvaultLayer;
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault).with_scope("read");
    /// # let _ = layer;
    /// ```
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        let route = std::mem::take(&mut self.config().default_route);
        self.config().default_route = route.with_scope(scope);
        self
    }

    /// The provider label of routes without their own settings.
    ///
    /// ```
    /// # use keyvault_axum::KeyvaultLayer;
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault).with_provider("demo");
    /// # let _ = layer;
    /// ```
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        let route = std::mem::take(&mut self.config().default_route);
        self.config().default_route = route.with_provider(provider);
        self
    }

    /// Settings for one route template (as written in `Router::route`), any method.
    ///
    /// ```
    /// use keyvault_axum::{Cost, KeyvaultLayer, RouteConfig};
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault)
    ///     .with_route("/v1/embed", RouteConfig::new().with_provider("anthropic"))
    ///     .with_route("/v1/users/{id}", RouteConfig::new().with_cost(Cost::Fixed(0)));
    /// # let _ = layer;
    /// ```
    pub fn with_route(mut self, template: impl Into<String>, config: RouteConfig) -> Self {
        self.add_route(None, template.into(), config);
        self
    }

    /// Settings for one method of one route template; they win over
    /// [`with_route`](Self::with_route)'s.
    ///
    /// ```
    /// use http::Method;
    /// use keyvault_axum::{KeyvaultLayer, RouteConfig};
    /// # let vault = keyvault_core::Keyvault::in_memory();
    /// let layer = KeyvaultLayer::new(vault)
    ///     .with_method_route(Method::DELETE, "/v1/items/{id}", RouteConfig::new().with_scope("admin"));
    /// # let _ = layer;
    /// ```
    pub fn with_method_route(
        mut self,
        method: Method,
        template: impl Into<String>,
        config: RouteConfig,
    ) -> Self {
        self.add_route(Some(method), template.into(), config);
        self
    }

    fn add_route(&mut self, method: Option<Method>, template: String, mut config: RouteConfig) {
        config.template = Some(Label::from(template.as_str()));
        let list = self
            .config()
            .routes
            .entry(template.into_boxed_str())
            .or_default();
        list.retain(|(m, _)| *m != method);
        list.push((method, config));
    }
}

impl<S> Layer<S> for KeyvaultLayer {
    type Service = KeyvaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyvaultService::new(inner, self.shared.clone())
    }
}
