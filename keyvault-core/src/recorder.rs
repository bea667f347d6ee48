//! The usage recorder: events leave the request path through a bounded channel and reach a
//! sink in batches, from a background task.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};

use crate::usage::{UsageEvent, UsageSink};

/// Recorder settings.
#[derive(Debug, Clone, Copy)]
pub struct RecorderConfig {
    /// Events buffered before new ones are dropped (and counted).
    pub capacity: usize,
    /// Most events per write to the sink; the writer is also woken when this many are queued
    /// (otherwise it writes on the flush interval).
    pub batch_size: usize,
    /// Longest an event waits before it is written: statistics are this fresh.
    pub flush_interval: Duration,
    /// Attempts per batch before it is given up (and counted as failed).
    pub max_attempts: u32,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            // Large batches keep a database sink's per-batch work (rollup upserts) small
            // against the rows it writes; under light load the interval flushes first anyway.
            batch_size: 10_000,
            flush_interval: Duration::from_millis(500),
            max_attempts: 5,
        }
    }
}

/// Counters of a recorder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Events accepted into the buffer.
    pub recorded: u64,
    /// Events dropped because the buffer was full (or the recorder shut down).
    pub dropped: u64,
    /// Events written to the sink.
    pub written: u64,
    /// Events lost because the sink kept failing.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    recorded: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

/// How [`UsageRecorder::record`] wakes the writer: once per queued batch, not per event.
#[derive(Debug, Default)]
struct Wake {
    notify: Notify,
    /// Set when the writer has been told; cleared by the writer when it takes events.
    pending: AtomicBool,
}

#[derive(Debug)]
struct Shared {
    tx: mpsc::Sender<UsageEvent>,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
    /// Events queued before the writer is woken ahead of its interval: a batch.
    wake_at: usize,
    /// The writer, and what tells it to stop.
    task: Mutex<Option<(JoinHandle<()>, oneshot::Sender<()>)>>,
}

/// Records usage without blocking: [`record`](Self::record) never waits; a full buffer drops
/// the event and counts it. Clones share one buffer and one background writer.
///
/// ```
/// # use std::sync::Arc;
/// # use keyvault_core::{UsageRecorder, RecorderConfig, UsageEvent, UsageQuery, StatsQuery, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = Arc::new(MemoryStore::new());
/// let recorder = UsageRecorder::spawn(store.clone(), RecorderConfig::default());
/// recorder.record(UsageEvent { request_id: "r1".into(), key_id: None, owner_id: None,
///     ts: chrono::Utc::now(), provider: Some("demo".into()), route: Some("/v1/hello".into()),
///     method: Some("GET".into()), status: 200, latency_us: 800, outcome: None, cost: 1 });
/// recorder.shutdown().await; // flushes everything
/// assert_eq!(store.overview(&StatsQuery::last_24h()).await?.calls, 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    shared: Arc<Shared>,
}

impl UsageRecorder {
    /// Starts the background writer on the current Tokio runtime.
    pub fn spawn(sink: Arc<dyn UsageSink>, config: RecorderConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let wake = Arc::new(Wake::default());
        let task = tokio::spawn(run(
            rx,
            sink,
            config,
            counters.clone(),
            wake.clone(),
            stopped,
        ));
        Self {
            shared: Arc::new(Shared {
                wake_at: config.batch_size.clamp(1, config.capacity.max(1)),
                tx,
                counters,
                wake,
                task: Mutex::new(Some((task, stop))),
            }),
        }
    }

    /// Queues an event; returns false (and counts it) when it had to be dropped.
    pub fn record(&self, event: UsageEvent) -> bool {
        let shared = &*self.shared;
        let c = &shared.counters;
        match shared.tx.try_send(event) {
            Ok(()) => {
                c.recorded.fetch_add(1, Ordering::Relaxed);
                let queued = shared.tx.max_capacity() - shared.tx.capacity();
                if queued >= shared.wake_at
                    && !shared.wake.pending.load(Ordering::Relaxed)
                    && !shared.wake.pending.swap(true, Ordering::AcqRel)
                {
                    shared.wake.notify.notify_one();
                }
                true
            }
            Err(_) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> RecorderStats {
        let c = &self.shared.counters;
        RecorderStats {
            recorded: c.recorded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting events, writes every buffered one, and waits for the writer to finish.
    /// Later calls return at once.
    pub async fn shutdown(&self) {
        let task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((task, stop)) = task {
            // The writer only ends after this, or after every sender is gone.
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "usage writer task failed");
            }
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<UsageEvent>,
    sink: Arc<dyn UsageSink>,
    config: RecorderConfig,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
    mut stop: oneshot::Receiver<()>,
) {
    let batch_size = config.batch_size.max(1);
    let mut buf: Vec<UsageEvent> = Vec::with_capacity(batch_size);
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The writer does not wait on the channel itself: that would wake it for every event,
        // a task switch per request. It sleeps until a batch is queued or the interval ends.
        let ticked = tokio::select! {
            biased;
            // A dropped sender (the recorder gone without `shutdown`) also ends the loop, and
            // what was accepted is still written below.
            _ = &mut stop => break,
            () = wake.notify.notified() => false,
            _ = tick.tick() => true,
        };
        // Cleared before taking events, so that a batch queued meanwhile wakes the writer again.
        wake.pending.store(false, Ordering::Release);
        // Only what is queued now: waiting on an empty channel would register for wake-ups.
        let mut queued = rx.len();
        while queued > 0 {
            let room = batch_size.saturating_sub(buf.len()).max(1);
            let n = rx.recv_many(&mut buf, room.min(queued)).await;
            if n == 0 {
                break;
            }
            queued -= n;
            if buf.len() >= batch_size {
                flush(&*sink, &mut buf, &config, &counters).await;
            }
        }
        if ticked {
            flush(&*sink, &mut buf, &config, &counters).await;
        }
    }
    // Refuse new events, then drain what was accepted: nothing acknowledged is lost.
    rx.close();
    while let Some(ev) = rx.recv().await {
        buf.push(ev);
        if buf.len() >= batch_size {
            flush(&*sink, &mut buf, &config, &counters).await;
        }
    }
    flush(&*sink, &mut buf, &config, &counters).await;
}

async fn flush(
    sink: &dyn UsageSink,
    buf: &mut Vec<UsageEvent>,
    config: &RecorderConfig,
    counters: &Counters,
) {
    if buf.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=config.max_attempts.max(1) {
        // Sinks are idempotent on request ids, so a retry after an ambiguous failure
        // (a timeout after commit) does not double-count.
        match sink.write(buf).await {
            Ok(()) => {
                counters
                    .written
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                buf.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, events = buf.len(), "usage write failed");
                if attempt < config.max_attempts {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    tracing::error!(
        events = buf.len(),
        "usage events lost: the sink kept failing"
    );
    counters
        .failed
        .fetch_add(buf.len() as u64, Ordering::Relaxed);
    buf.clear();
}
