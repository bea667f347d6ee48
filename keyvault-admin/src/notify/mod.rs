//! Notifications (CONTRACT §7): channels that receive alert transitions, key rotations and
//! tests, through an outbox in the database.
//!
//! An event becomes one [`Delivery`] per channel that wants it, written to the outbox when
//! the event happens; one instance at a time (under a lease) attempts the deliveries that
//! are due, and a failed one waits `KEYVAULT_NOTIFY_RETRY_DELAYS` (with jitter) before its
//! next attempt, keeping its `webhook-id`, until it succeeds or its last attempt fails.
//!
//! A channel's `kind` picks the [`Notifier`] that sends it: `webhook` ([`WebhookNotifier`],
//! signed) and `slack` ([`SlackNotifier`]) are built in. A Rust user adds their own (e-mail,
//! a pager) by implementing [`Notifier`] and registering it with
//! [`App::with_notifier`](crate::App::with_notifier):
//!
//! ```
//! use async_trait::async_trait;
//! use keyvault_admin::notify::{Attempt, Notifier, Outbound};
//! use keyvault_core::{Delivery, NotifierRecord};
//!
//! /// Posts the event's `type` as plain text.
//! #[derive(Debug)]
//! struct PlainText;
//!
//! #[async_trait]
//! impl Notifier for PlainText {
//!     fn kind(&self) -> &'static str {
//!         "plain"
//!     }
//!
//!     async fn deliver(&self, channel: &NotifierRecord, d: &Delivery, out: &Outbound) -> Attempt {
//!         out.send(out.client().post(&channel.url).body(d.event.clone())).await
//!     }
//! }
//! ```
//!
//! Every request goes through [`Outbound`]'s client: a 10 s timeout, no redirect followed, no
//! proxy from the environment, and host names resolved through the address rule of
//! [`guard`].

pub mod guard;
pub(crate) mod manage;
mod outbox;
mod slack;
mod webhook;

use std::{fmt::Debug, sync::Arc, time::Duration};

use async_trait::async_trait;
use keyvault_core::{Delivery, NotifierRecord};

pub(crate) use outbox::{LEASE, deliver_due, deliver_every};
pub use slack::SlackNotifier;
pub use webhook::{WebhookNotifier, new_secret, sign};

use crate::dashboard::Lang;

/// The event types a channel may receive.
pub const EVENTS: [&str; 4] = ["alert.firing", "alert.resolved", "key.rotated", "test"];

/// How long one attempt may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Another answer, no answer in time, or no connection; retried.
    Failed { status: Option<u16>, error: String },
    /// Not sent: the host resolves to an address the rule forbids; retried (a name may
    /// resolve elsewhere later) and counted apart.
    Refused { error: String },
}

impl Attempt {
    /// Its outcome as `keyvault_notifications_total` labels it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Failed { .. } => "failed",
            Self::Refused { .. } => "refused",
        }
    }
}

/// Sends one kind of channel's deliveries.
#[async_trait]
pub trait Notifier: Send + Sync + Debug {
    /// The channel `kind` it sends (`webhook`, `slack`, …).
    fn kind(&self) -> &'static str;

    /// Whether its channels get a signing secret when made (shown once).
    fn signs(&self) -> bool {
        false
    }

    /// Makes one attempt. `delivery.body` is the event as JSON (`{"type", "timestamp",
    /// "data"}`) and `delivery.id` stays the same on every attempt.
    async fn deliver(
        &self,
        channel: &NotifierRecord,
        delivery: &Delivery,
        out: &Outbound,
    ) -> Attempt;
}

/// What notifiers send with: the guarded HTTP client and the language of messages for people.
#[derive(Debug, Clone)]
pub struct Outbound {
    client: reqwest::Client,
    allow_private: bool,
    lang: Lang,
}

impl Outbound {
    /// A client for deliveries: the address rule over `resolver`, a 10 s timeout, no
    /// redirects, no proxy from the environment.
    pub(crate) fn new(
        resolver: Arc<dyn guard::Resolver>,
        allow_private: bool,
        lang: Lang,
    ) -> crate::error::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("keyvault/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(guard::Guarded {
                resolver,
                allow_private,
            }))
            .build()
            .map_err(|e| crate::error::Error::Internal(format!("no HTTP client: {e}")))?;
        Ok(Self {
            client,
            allow_private,
            lang,
        })
    }

    /// The HTTP client every delivery goes through.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The language messages for people are written in: `en` or `zh-CN`.
    pub fn lang(&self) -> &'static str {
        self.lang.code()
    }

    pub(crate) fn lang_of(&self) -> Lang {
        self.lang
    }

    /// Sends a request and says what it came to; the error never holds the URL (a path may
    /// be a credential).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Attempt {
        let request = match request.build() {
            Ok(r) => r,
            Err(_) => {
                return Attempt::Failed {
                    status: None,
                    error: "not a valid request".into(),
                };
            }
        };
        // An address in the URL is not resolved, so the rule is applied to it here.
        let literal = match request.url().host() {
            Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
            _ => None,
        };
        if !self.allow_private
            && let Some(why) = literal.and_then(guard::forbidden)
        {
            return Attempt::Refused {
                error: format!("the URL names {why}"),
            };
        }
        match self.client.execute(request).await {
            Ok(r) if r.status().is_success() => Attempt::Delivered {
                status: r.status().as_u16(),
            },
            Ok(r) => Attempt::Failed {
                status: Some(r.status().as_u16()),
                error: format!("answered {}", r.status()),
            },
            Err(e) => {
                if let Some(refused) = refusal(&e) {
                    return Attempt::Refused { error: refused };
                }
                let what = if e.is_timeout() {
                    "no answer within 10 s".to_owned()
                } else if e.is_connect() {
                    "could not connect".to_owned()
                } else if e.is_builder() {
                    "not a valid request".to_owned()
                } else {
                    "the request failed".to_owned()
                };
                Attempt::Failed {
                    status: None,
                    error: what,
                }
            }
        }
    }
}

/// The address rule's reason, when that is why a request failed.
fn refusal(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<guard::Refused>() {
            return Some(r.to_string());
        }
        source = s.source();
    }
    None
}

/// The notifiers channels can name, by kind.
#[derive(Debug, Clone)]
pub(crate) struct Registry(Vec<Arc<dyn Notifier>>);

impl Default for Registry {
    fn default() -> Self {
        Self(vec![Arc::new(WebhookNotifier), Arc::new(SlackNotifier)])
    }
}

impl Registry {
    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn Notifier>> {
        self.0.iter().find(|n| n.kind() == kind)
    }

    /// Adds a notifier, replacing one of the same kind.
    pub(crate) fn add(&mut self, n: Arc<dyn Notifier>) {
        self.0.retain(|o| o.kind() != n.kind());
        self.0.push(n);
    }

    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        self.0.iter().map(|n| n.kind()).collect()
    }
}
