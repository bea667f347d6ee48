//! The Lua GCRA against keyvault-core's reference maths (`gcra.rs`), step by step at the time
//! Redis reports, including limits whose scaled values are far beyond 2^53.

mod common;

use keyvault_core::{KeyId, gcra::Bucket};
use keyvault_redis::redis;
use rand::{RngExt, SeedableRng, rngs::StdRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_matches_the_reference_maths() {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(common::RATELIMIT_LUA);
    let ns = common::namespace();
    let year = 31_536_000_000u64;
    let mut cases = vec![
        (1_000_000_000u32, year),
        (999_999_937, year - 1),
        (7, 10),
        (3, 3_600_000),
        (1, 1),
        (1000, 1),
        (12, 3_600_000),
        (200, 30 * 86_400_000),
        (1_000_000_000, 1_000_000),
        (3, 7),
        (999_983, 1_000),
    ];
    let seed = rand::rng().random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..30 {
        let period = rng.random_range(1..=year);
        let limit = rng.random_range(1..=(period.saturating_mul(1000)).min(1_000_000_000));
        cases.push((limit as u32, period));
    }
    for (limit, period) in cases {
        let bucket = Bucket::new(limit, period);
        let key = format!("{ns}:{{{}}}:rl:{limit}:{period}:x", KeyId::new());
        let mut x: u128 = 0;
        // Enough steps to empty small buckets and to keep big ones near-full (where the
        // products are largest).
        for step in 0..(limit.min(40) + 3) {
            let take = step % 7 != 6;
            let reply: Vec<i64> = script
                .key(format!("{ns}:idem:{step}"))
                .key(&key)
                .arg(if take { "1" } else { "0" })
                .arg("")
                .arg(1_000)
                .arg(limit)
                .arg(period)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            let now_ns = reply[1] as u128 * 1_000;
            let want = bucket.check(x, now_ns, take);
            let ctx = format!("{limit}/{period} step {step} (seed {seed})");
            common::assert_reply_is_reference(&reply, &want, &ctx);
            if want.admitted && take {
                x = want.x;
            }
            // The stored scaled TAT is exactly the reference's.
            common::assert_stored_tat(&mut conn, &key, limit, x, &ctx).await;
        }
    }
}

/// The long multiplication in ratelimit.lua at the boundaries where doubles go wrong: token
/// counts whose numerator d·L − r is a multiple of P, or one off it, with d·L up to ~3·10^22.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muldiv_is_exact_where_doubles_are_not() {
    let source = common::RATELIMIT_LUA;
    let start = source.find("local function muldiv").unwrap();
    let end = start + source[start..].find("\nend\n").unwrap() + 5;
    let harness = format!(
        "{}\nlocal out = {{}}\nfor i = 1, #ARGV, 4 do\n  out[#out + 1] = muldiv(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))\n  out[#out + 1] = math.floor((tonumber(ARGV[i]) * tonumber(ARGV[i + 1]) - tonumber(ARGV[i + 2])) / tonumber(ARGV[i + 3]))\nend\nreturn out",
        &source[start..end]
    );
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let seed = rand::rng().random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cases = Vec::new();
    for _ in 0..2_000 {
        let p: u128 = rng.random_range(1..=31_536_000_000_000u128);
        let l: u128 = rng.random_range(1..=p.min(1_000_000_000));
        let k: u128 = rng.random_range(0..l);
        for delta in [-1i128, 0, 1] {
            let n = (k * p) as i128 + delta;
            if n < 0 {
                continue;
            }
            let n = n as u128;
            let d = n.div_ceil(l);
            let r = d * l - n;
            if d <= p && r < l && r < p {
                cases.push((d, l, r, p, n / p));
            }
        }
    }
    let mut naive_wrong = 0;
    let script = redis::Script::new(&harness);
    for chunk in cases.chunks(500) {
        let mut inv = script.prepare_invoke();
        for (d, l, r, p, _) in chunk {
            inv.arg(d.to_string())
                .arg(l.to_string())
                .arg(r.to_string())
                .arg(p.to_string());
        }
        let got: Vec<i64> = inv.invoke_async(&mut conn).await.unwrap();
        for (i, (d, l, r, p, want)) in chunk.iter().enumerate() {
            assert_eq!(
                got[2 * i] as u128,
                *want,
                "muldiv({d}, {l}, {r}, {p}) (seed {seed})"
            );
            naive_wrong += usize::from(got[2 * i + 1] as u128 != *want);
        }
    }
    // The cases are hard enough that plain double arithmetic gets some of them wrong.
    assert!(
        naive_wrong > 0,
        "no case would catch an inexact implementation"
    );
}

/// On Redis's clock a bucket lives until it is full again (plus 2 s), so idle keys leave no
/// buckets behind; given a time of the caller's (`@<µs>`), it has no expiry, since Redis's
/// time does not pass with the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_expire_once_full_on_redis_time_only() {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(common::RATELIMIT_LUA);
    let ns = common::namespace();
    for fixed in [None, Some("@1900000000000000")] {
        let key = format!("{ns}:{{{}}}:rl:2:3000:x", KeyId::new());
        let mut inv = script.key(format!("{ns}:idem"));
        inv.key(&key).arg("1").arg("").arg(1_000).arg(2).arg(3_000);
        if let Some(at) = fixed {
            inv.arg(at);
        }
        let reply: Vec<i64> = inv.invoke_async(&mut conn).await.unwrap();
        assert_eq!(reply[0], 1, "admitted");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        match fixed {
            // Full again 1.5 s after one of two tokens was taken; expiry 1 + 2 s later.
            None => assert!((1..=3_500).contains(&ttl), "PTTL {ttl}"),
            Some(_) => {
                assert_eq!(ttl, -1, "no expiry on the caller's clock");
                assert_eq!(reply[1], 1_900_000_000_000_000, "the caller's time");
            }
        }
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
