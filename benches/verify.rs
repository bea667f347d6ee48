//! The verifier's hot path: `cargo bench --bench verify`.
//!
//! Baselines measured in the same run (SHA-256 of a key, a `HashMap` lookup) put the figures in
//! proportion on a noisy machine.

use std::{collections::HashMap, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use keyvault::{
    Actor, ApiKey, Credits, KeyHasher, KeyId, Keyvault, NewKey, Outcome, Prefix, RateLimit,
    SealKey, Successor, VerifyRequest, parse_key,
};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kv = Keyvault::in_memory();
    let plain = rt
        .block_on(kv.create_key(NewKey::new("plain"), &Actor::library()))
        .unwrap();
    let limited = rt
        .block_on(
            kv.create_key(
                NewKey::new("limited")
                    .credits(Credits::new(u64::MAX >> 12))
                    .ratelimit(RateLimit::new("huge", 1_000_000_000, 3_600_000).unwrap()),
                &Actor::library(),
            ),
        )
        .unwrap();
    // 100k other keys, so lookups are not in a toy map (a thousand when a test runner only
    // checks that each benchmark runs).
    let others = if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        1_000
    };
    for i in 0..others {
        rt.block_on(kv.create_key(NewKey::new(format!("k{i}")), &Actor::library()))
            .unwrap();
    }
    let plain_key = plain.key.expose().to_owned();
    let limited_key = limited.key.expose().to_owned();
    let garbage = format!("{}x", &plain_key[..plain_key.len() - 1]);
    let hasher = KeyHasher::sha256();
    let peppered = KeyHasher::with_pepper(b"a pepper of 32 bytes, more or less").unwrap();

    let mut g = c.benchmark_group("baseline");
    g.bench_function("sha256_of_key", |b| {
        b.iter(|| hasher.digest(black_box(&plain_key)))
    });
    let map: HashMap<[u8; 32], u64> = (0..100_000u64)
        .map(|i| (*hasher.digest(&i.to_string()).as_bytes(), i))
        .collect();
    let probe = *hasher.digest("4242").as_bytes();
    g.bench_function("hashmap_lookup_100k", |b| {
        b.iter(|| map.get(black_box(&probe)))
    });
    g.finish();

    let mut g = c.benchmark_group("key");
    g.bench_function("parse_and_checksum", |b| {
        b.iter(|| parse_key(black_box(&plain_key)).is_some())
    });
    g.bench_function("digest_hmac_sha256", |b| {
        b.iter(|| peppered.digest(black_box(&plain_key)))
    });
    g.bench_function("generate", |b| {
        b.iter(|| ApiKey::generate(&Prefix::default()))
    });
    g.finish();

    // Successor delivery: what creating a key adds (its seal key), what an automatic rotation
    // adds (sealing the new key), and what a claim costs (opening it).
    let mut g = c.benchmark_group("successor");
    g.bench_function("seal_key_derive", |b| {
        b.iter(|| SealKey::derive(&hasher, black_box(&plain_key)))
    });
    let to = SealKey::derive(&hasher, &plain_key);
    let old_id = KeyId::new();
    let new_key = ApiKey::generate(&Prefix::default());
    g.bench_function("seal", |b| {
        b.iter(|| Successor::seal(black_box(&to), old_id, &new_key))
    });
    let sealed = Successor::seal(&to, old_id, &new_key);
    g.bench_function("open", |b| {
        b.iter(|| sealed.open(&hasher, old_id, black_box(&plain_key)))
    });
    g.finish();

    // Warm the cache.
    for k in [&plain_key, &limited_key] {
        let v = rt.block_on(kv.verify(&VerifyRequest::new(k))).unwrap();
        assert_eq!(v.outcome, Outcome::Valid);
    }
    let mut g = c.benchmark_group("verify");
    g.bench_function("cache_hit_no_limits", |b| {
        b.to_async(&rt).iter(|| async {
            let v = kv.verify(&VerifyRequest::new(&plain_key)).await.unwrap();
            debug_assert!(v.is_valid());
            v
        })
    });
    // What middleware calls first: the same answer without a future or a clock read.
    g.bench_function("cached_no_limits_without_a_future", |b| {
        let now = std::time::Instant::now();
        b.iter(|| {
            kv.verify_cached(&VerifyRequest::new(black_box(&plain_key)), now)
                .expect("cached")
                .unwrap()
        })
    });
    g.bench_function("cache_hit_credits_and_rate_limit", |b| {
        b.to_async(&rt).iter(|| async {
            kv.verify(&VerifyRequest::new(&limited_key).report_state(false))
                .await
                .unwrap()
        })
    });
    g.bench_function("garbage_key", |b| {
        b.to_async(&rt).iter(|| async {
            kv.verify(&VerifyRequest::new(black_box(&garbage)))
                .await
                .unwrap()
        })
    });
    g.finish();

    // What the middleware adds per request for the client signals of CONTRACT §7: one note
    // of an accepted key from one of 1,000 addresses (the common case), and of an unknown
    // key; the same run's SHA-256 above is the baseline.
    let signals = keyvault::ClientSignals::new();
    let ips: Vec<std::net::IpAddr> = (0..1_000u32)
        .map(|i| std::net::IpAddr::from((0xcb00_7100u32 + i).to_be_bytes()))
        .collect();
    let id = plain.record.id;
    let now = chrono::Utc::now();
    let mut g = c.benchmark_group("client_signals");
    let mut i = 0usize;
    g.bench_function("note_accepted", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            signals.note(Some(id), black_box(ips[i]), Outcome::Valid, now);
        })
    });
    g.bench_function("note_not_found", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            signals.note(None, black_box(ips[i]), Outcome::NotFound, now);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
