//! Limiter checks per second against a plain `INCR` round trip, measured in the same run.
//!
//! `cargo bench -p keyvault-redis --bench limiter` (REDIS_URL, default redis://127.0.0.1:6379;
//! BENCH_SECS per measurement, default 2; BENCH_ROUNDS, default 3). Workloads are interleaved
//! in rounds so drift hits all of them alike; the median of the rounds is reported. The
//! limiter workloads check one quota (concurrent checks coalesce into shared script calls),
//! or spread over 64 quotas (nothing to coalesce); the leased workload checks without a
//! request id, so a lease serves most checks in process.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyvault_core::{
    CreditRequest, CreditStore, Credits, KeyId, LimitRequest, RateLimit, RateLimiter,
    memory::MemoryStore,
};
use keyvault_redis::{
    RedisBackend, RedisConfig, RedisCreditConfig, RedisCreditStore, RedisLimiterConfig,
    RedisRateLimiter, redis,
};

#[derive(Clone)]
struct Ctx {
    conn: redis::aio::ConnectionManager,
    limiter: Arc<RedisRateLimiter>,
    credits: Arc<RedisCreditStore>,
    one: Arc<Vec<RateLimit>>,
    three: Arc<Vec<RateLimit>>,
    quota: KeyId,
    /// Quotas for the workload that spreads checks over many keys (nothing to coalesce).
    spread: Arc<Vec<KeyId>>,
    counter: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Incr,
    Check1,
    Check3,
    Check1Spread,
    /// A check without a request id of the caller's: admitted from leases.
    Check1Leased,
    Spend,
    /// A spend without a request id of the caller's: spent from leases.
    SpendLeased,
}

async fn run_op(ctx: &Ctx, op: Op) {
    let n = ctx.counter.fetch_add(1, Ordering::Relaxed);
    let id = format!("bench-{n}");
    match op {
        Op::Incr => {
            let mut c = ctx.conn.clone();
            let _: i64 = redis::cmd("INCR")
                .arg("kvbench:incr")
                .query_async(&mut c)
                .await
                .unwrap();
        }
        Op::Check1 | Op::Check3 | Op::Check1Spread | Op::Check1Leased => {
            let limits = if op == Op::Check3 {
                &ctx.three
            } else {
                &ctx.one
            };
            let quota = if op == Op::Check1Spread {
                ctx.spread[n as usize % ctx.spread.len()]
            } else {
                ctx.quota
            };
            let d = ctx
                .limiter
                .check(&LimitRequest {
                    quota_id: quota,
                    limits,
                    since: &[],
                    take: true,
                    request_id: if op == Op::Check1Leased { "" } else { &id },
                })
                .await
                .unwrap();
            assert!(d.admitted);
        }
        Op::Spend | Op::SpendLeased => {
            let credits = Credits::new(keyvault_core::MAX_CREDITS);
            ctx.credits
                .spend(&CreditRequest {
                    quota_id: ctx.quota,
                    credits: &credits,
                    cost: 1,
                    request_id: if op == Op::SpendLeased { "" } else { &id },
                    now: chrono::Utc::now(),
                })
                .await
                .unwrap();
        }
    }
}

/// Operations per second with `depth` calls in flight for `secs`.
async fn measure(ctx: &Ctx, op: Op, depth: usize, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..depth)
        .map(|_| {
            let (ctx, done) = (ctx.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    run_op(&ctx, op).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // Test runners list a target's tests first (nextest: `--list`): this one has none.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        // `cargo test --all-targets` runs this binary without `--bench`: a quick smoke run then.
        let bench = std::env::args().any(|a| a == "--bench");
        let secs: f64 = if !bench {
            0.02
        } else {
            std::env::var("BENCH_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2.0)
        };
        let rounds: usize = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let rounds = if bench { rounds } else { 1 };
        let ns = format!("kvbench-{}", KeyId::new());
        let backend = RedisBackend::connect(
            &url,
            RedisConfig::new(ns)
                .unwrap()
                .timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        let plain = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap())
            .await
            .unwrap();
        let ctx = Ctx {
            conn: plain,
            limiter: Arc::new(RedisRateLimiter::new(
                &backend,
                RedisLimiterConfig::default(),
            )),
            credits: Arc::new(RedisCreditStore::new(
                &backend,
                Arc::new(MemoryStore::new()),
                // Spends with a request id never lease; the leased workload has none.
                RedisCreditConfig::default().lease_lifetime(keyvault_redis::DEFAULT_LEASE_LIFETIME),
            )),
            // Big enough that every check is admitted and commits (the costly path).
            one: Arc::new(vec![RateLimit::new("s", 1_000_000, 1_000).unwrap()]),
            three: Arc::new(vec![
                RateLimit::new("s", 1_000_000, 1_000).unwrap(),
                RateLimit::new("h", 1_000_000_000, 3_600_000).unwrap(),
                RateLimit::new("d", 1_000_000_000, 86_400_000).unwrap(),
            ]),
            quota: KeyId::new(),
            spread: Arc::new((0..64).map(|_| KeyId::new()).collect()),
            counter: Arc::new(AtomicU64::new(0)),
        };
        let configs = [
            (Op::Incr, 1),
            (Op::Check1, 1),
            (Op::Check3, 1),
            (Op::Spend, 1),
            (Op::Incr, 64),
            (Op::Check1, 64),
            (Op::Check3, 64),
            (Op::Check1Spread, 64),
            (Op::Check1Leased, 64),
            (Op::Spend, 64),
            (Op::SpendLeased, 64),
        ];
        // Warm-up: load the scripts, open the connections.
        for (op, _) in configs {
            measure(&ctx, op, 4, secs.min(0.2)).await;
        }
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for _ in 0..rounds {
            for (i, (op, depth)) in configs.iter().enumerate() {
                results[i].push(measure(&ctx, *op, *depth, secs).await);
            }
        }
        println!("| workload | in flight | ops/s (median of {rounds}) | ratio to INCR |");
        println!("|---|---|---|---|");
        let medians: Vec<f64> = results.into_iter().map(median).collect();
        for (i, (op, depth)) in configs.iter().enumerate() {
            let base = configs
                .iter()
                .position(|(o, d)| *o == Op::Incr && d == depth)
                .map(|j| medians[j])
                .unwrap();
            let name = match op {
                Op::Incr => "plain `INCR` round trip",
                Op::Check1 => "`RedisRateLimiter::check`, 1 limit, one quota",
                Op::Check3 => "`RedisRateLimiter::check`, 3 limits, one quota",
                Op::Check1Spread => "`RedisRateLimiter::check`, 1 limit, 64 quotas",
                Op::Check1Leased => {
                    "`RedisRateLimiter::check`, 1 limit, one quota, no request id (leases)"
                }
                Op::Spend => "`RedisCreditStore::spend` (cached balance)",
                Op::SpendLeased => "`RedisCreditStore::spend`, no request id (leases)",
            };
            println!(
                "| {name} | {depth} | {:.0} | {:.2} |",
                medians[i],
                medians[i] / base
            );
        }
        drop(ctx);
    });
}
