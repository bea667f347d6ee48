//! The usage recorder: events leave the request path through a bounded queue and reach a
//! sink in batches, from a background task.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, oneshot},
    task::JoinHandle,
};

use crate::{
    error::Error,
    usage::{UsageEvent, UsageSink},
};

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
    /// Attempts per batch, with growing waits, before the writer stops trying for this round:
    /// it keeps the batch and tries again at the next flush, holding up to `capacity` events
    /// itself (new ones queue behind them, up to `capacity` more, then are dropped and
    /// counted). Only at shutdown is a batch the sink still refuses given up (counted as
    /// failed); a batch it refuses as invalid input (`Error::Invalid`, which no retry
    /// changes) is given up at once, so that it holds up nothing behind it.
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
    /// Events lost because the sink was still failing at shutdown, or refused them as
    /// invalid.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    recorded: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

/// Where [`UsageRecorder::record`] leaves events for the writer: one vector behind a lock,
/// which the writer swaps for an empty one (keeping both allocations), and a wake-up once per
/// queued batch rather than per event.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
    /// Set when the writer has been told; cleared by the writer when it takes events.
    pending: AtomicBool,
}

#[derive(Debug, Default)]
struct QueueState {
    events: Vec<UsageEvent>,
    /// After shutdown nothing more is accepted.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Nothing panics while the lock is held; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything queued, in exchange for `empty` (whose capacity the queue keeps).
    fn take(&self, empty: &mut Vec<UsageEvent>) {
        std::mem::swap(&mut self.lock().events, empty);
    }
}

#[derive(Debug)]
struct Shared {
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    /// Events buffered before new ones are dropped.
    capacity: usize,
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
        let capacity = config.capacity.max(1);
        let queue = Arc::new(Queue::default());
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(queue.clone(), sink, config, counters.clone(), stopped));
        Self {
            shared: Arc::new(Shared {
                queue,
                counters,
                capacity,
                wake_at: config.batch_size.clamp(1, capacity),
                task: Mutex::new(Some((task, stop))),
            }),
        }
    }

    /// Queues an event; returns false (and counts it) when it had to be dropped.
    pub fn record(&self, event: UsageEvent) -> bool {
        let shared = &*self.shared;
        let c = &shared.counters;
        let mut q = shared.queue.lock();
        if q.closed || q.events.len() >= shared.capacity {
            drop(q);
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.events.push(event);
        let queued = q.events.len();
        drop(q);
        c.recorded.fetch_add(1, Ordering::Relaxed);
        let queue = &shared.queue;
        if queued >= shared.wake_at
            && !queue.pending.load(Ordering::Relaxed)
            && !queue.pending.swap(true, Ordering::AcqRel)
        {
            queue.notify.notify_one();
        }
        true
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
    queue: Arc<Queue>,
    sink: Arc<dyn UsageSink>,
    config: RecorderConfig,
    counters: Arc<Counters>,
    mut stop: oneshot::Receiver<()>,
) {
    let batch_size = config.batch_size.max(1);
    let capacity = config.capacity.max(1);
    // Events taken from the queue and not yet written, and the vector swapped into the queue.
    let mut buf: Vec<UsageEvent> = Vec::with_capacity(batch_size);
    let mut spare: Vec<UsageEvent> = Vec::new();
    // The first tick one interval from now: an immediate one (`interval`'s) would write a
    // part of the first batch whenever the task starts after some events came in.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.flush_interval,
        config.flush_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The writer sleeps until a batch is queued or the interval ends: woken for every
        // event, it would cost a task switch per request.
        let ticked = tokio::select! {
            biased;
            // A dropped sender (the recorder gone without `shutdown`) also ends the loop, and
            // what was accepted is still written below.
            _ = &mut stop => break,
            () = queue.notify.notified() => false,
            _ = tick.tick() => true,
        };
        // Cleared before taking events, so that a batch queued meanwhile wakes the writer again.
        queue.pending.store(false, Ordering::Release);
        // While the sink is down the writer holds what it could not write; beyond `capacity`
        // of those, the rest waits in the queue (which drops and counts when full).
        if buf.len() < capacity {
            queue.take(&mut spare);
            buf.append(&mut spare);
        }
        write_batches(&*sink, &mut buf, batch_size, ticked, &config, &counters).await;
    }
    // Refuse new events, then write what was accepted: nothing acknowledged is lost while
    // the sink answers.
    queue.lock().closed = true;
    queue.take(&mut spare);
    buf.append(&mut spare);
    if !write_batches(&*sink, &mut buf, batch_size, true, &config, &counters).await {
        tracing::error!(
            events = buf.len(),
            "usage events lost: the sink was still failing at shutdown"
        );
        counters
            .failed
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
}

/// Writes `buf` in batches of `batch_size`; a last, smaller batch only when `all`. Stops at
/// the first batch the sink keeps refusing, leaving it and the rest in `buf`; false then.
async fn write_batches(
    sink: &dyn UsageSink,
    buf: &mut Vec<UsageEvent>,
    batch_size: usize,
    all: bool,
    config: &RecorderConfig,
    counters: &Counters,
) -> bool {
    let mut done = 0;
    let mut written = true;
    while buf.len() - done >= batch_size || (all && done < buf.len()) {
        let end = (done + batch_size).min(buf.len());
        if !flush(sink, &buf[done..end], config, counters).await {
            written = false;
            break;
        }
        done = end;
    }
    buf.drain(..done);
    written
}

/// Writes one batch, retrying with growing waits; false when every attempt failed.
async fn flush(
    sink: &dyn UsageSink,
    batch: &[UsageEvent],
    config: &RecorderConfig,
    counters: &Counters,
) -> bool {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=config.max_attempts.max(1) {
        // Sinks are idempotent on request ids, so a retry after an ambiguous failure
        // (a timeout after commit) does not double-count.
        match sink.write(batch).await {
            Ok(()) => {
                counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return true;
            }
            // Input the sink can never store: held, it would block every batch behind it.
            Err(Error::Invalid(e)) => {
                tracing::error!(error = %e, events = batch.len(), "usage batch refused by the sink as invalid; dropped");
                counters
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, events = batch.len(), "usage write failed");
                if attempt < config.max_attempts {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    tracing::warn!(
        events = batch.len(),
        "usage events held: the sink keeps failing; trying again at the next flush"
    );
    false
}
