//! [`RedisChangeBus`]: cache invalidation between instances over Redis pub/sub.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use keyvault_core::{Change, ChangeBus, KeyDigest, KeyId, uuid::Uuid};
use tokio::{sync::broadcast, task::JoinHandle};

use crate::{backend::RedisBackend, error::Error};

/// How often the subscription is pinged: a connection that died silently (no reset reached
/// us) is noticed within this plus the time budget.
const PING_EVERY: Duration = Duration::from_secs(1);

/// [`ChangeBus`] over Redis pub/sub: one channel per namespace (`<namespace>:changes`).
///
/// Publishing delivers to this instance's subscribers at once and to every other instance
/// through Redis. The subscription runs on its own connection and reconnects by itself; after
/// any gap in it, subscribers receive [`Change::All`], so a message lost meanwhile cannot keep
/// a stale cache entry.
///
/// Needs a Tokio runtime (the subscription task).
///
/// ```no_run
/// use std::sync::Arc;
/// use keyvault_core::{Change, ChangeBus, Keyvault};
/// use keyvault_redis::{RedisBackend, RedisChangeBus, RedisConfig};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let bus = Arc::new(RedisChangeBus::new(&redis));
/// let kv = Keyvault::builder().change_bus(bus.clone()).build()?;
/// bus.publish(&[Change::All]).await?; // every instance drops its cached keys
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisChangeBus {
    redis: RedisBackend,
    channel: String,
    instance: String,
    tx: broadcast::Sender<Change>,
    stats: Arc<BusStats>,
    listener: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct BusStats {
    subscriptions: AtomicU64,
    received: AtomicU64,
}

impl RedisChangeBus {
    /// A bus on `redis`'s namespace. Starts the subscription task (needs a Tokio runtime).
    pub fn new(redis: &RedisBackend) -> Self {
        let channel = redis.key("changes");
        let instance = Uuid::now_v7().simple().to_string();
        let tx = broadcast::channel(4_096).0;
        let stats = Arc::new(BusStats::default());
        let listener = tokio::spawn(listen(
            redis.clone(),
            channel.clone(),
            instance.clone(),
            tx.clone(),
            stats.clone(),
        ));
        Self {
            redis: redis.clone(),
            channel,
            instance,
            tx,
            stats,
            listener,
        }
    }

    /// How many times the subscription was (re)established.
    pub fn subscriptions(&self) -> u64 {
        self.stats.subscriptions.load(Ordering::Relaxed)
    }

    /// How many changes arrived from other instances.
    pub fn received(&self) -> u64 {
        self.stats.received.load(Ordering::Relaxed)
    }
}

impl Drop for RedisChangeBus {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn encode(instance: &str, change: &Change) -> String {
    match change {
        Change::Key { id, digest } => format!("{instance} K {id} {}", digest.to_hex()),
        Change::All => format!("{instance} A"),
    }
}

/// The change in a message, unless it came from `instance` itself.
fn decode(instance: &str, payload: &str) -> Option<Change> {
    let mut parts = payload.split(' ');
    if parts.next()? == instance {
        return None;
    }
    match parts.next()? {
        "K" => {
            let key = (|| {
                let id = KeyId::from_uuid(parts.next()?.parse().ok()?);
                let digest = KeyDigest::from_hex(parts.next()?).ok()?;
                Some(Change::Key { id, digest })
            })();
            // A message this version can't read may hide a change: drop every cache.
            Some(key.unwrap_or(Change::All))
        }
        _ => Some(Change::All),
    }
}

async fn listen(
    redis: RedisBackend,
    channel: String,
    instance: String,
    tx: broadcast::Sender<Change>,
    stats: Arc<BusStats>,
) {
    let budget = redis.config().call_timeout();
    let mut backoff = Duration::from_millis(50);
    let mut gap = false;
    let mut attempt = 0;
    loop {
        let client = redis.pubsub_client(attempt).clone();
        attempt += 1;
        let subscribed = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = match tokio::time::timeout(budget.max(Duration::from_secs(1)), subscribed).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                tracing::warn!(error = %Error::from(e), "change subscription failed; retrying");
                gap = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                tracing::warn!("change subscription timed out; retrying");
                gap = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        if gap {
            // Whatever was published while we were not listening is lost.
            let _ = tx.send(Change::All);
        }
        gap = true;
        let (mut sink, mut stream) = ps.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    if let Some(change) = decode(&instance, &payload) {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(change);
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(budget.max(Duration::from_secs(1)), sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("change subscription lost; reconnecting");
    }
}

#[async_trait]
impl ChangeBus for RedisChangeBus {
    async fn publish(&self, changes: &[Change]) -> keyvault_core::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        for c in changes {
            // No local subscriber is not an error: nothing caches here.
            let _ = self.tx.send(*c);
        }
        let mut pipe = redis::pipe();
        for c in changes {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(encode(&self.instance, c))
                .ignore();
        }
        let mut conn = self.redis.conn();
        self.redis
            .run(async { pipe.query_async::<()>(&mut conn).await })
            .await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_own_ones_are_skipped() {
        let change = Change::Key {
            id: KeyId::new(),
            digest: keyvault_core::KeyHasher::sha256().digest("kv_x"),
        };
        let msg = encode("a", &change);
        assert_eq!(decode("b", &msg), Some(change));
        assert_eq!(decode("a", &msg), None);
        assert_eq!(decode("b", &encode("a", &Change::All)), Some(Change::All));
        assert_eq!(decode("b", "a Z whatever"), Some(Change::All));
        assert_eq!(decode("b", "a K not-a-uuid"), Some(Change::All));
    }
}
