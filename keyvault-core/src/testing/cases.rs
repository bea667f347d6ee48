//! The conformance cases. Each takes fresh [`Backends`] and panics on a violation.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::Backends;
use crate::{
    Actor, AuditQuery, BatchAction, Clock, CreditDecision, CreditRequest, Credits, Error, IpCount,
    KeyId, KeyPatch, KeyQuery, KeyWrite, Keyvault, NewKey, Outcome, RateLimit, Refill,
    RefillInterval, RotationPolicy, Sighting, StatsQuery, UsageEvent, Verification, VerifyRequest,
    parse_allowlist,
};

const HOUR: u64 = 3_600_000;

fn actor() -> Actor {
    Actor::named("conformance")
}

async fn create(kv: &Keyvault, new: NewKey) -> (String, KeyId) {
    let c = kv.create_key(new, &actor()).await.unwrap();
    (c.key.expose().to_owned(), c.record.id)
}

async fn verify(kv: &Keyvault, key: &str) -> Verification {
    kv.verify(&VerifyRequest::new(key)).await.unwrap()
}

async fn code(kv: &Keyvault, key: &str) -> Outcome {
    verify(kv, key).await.outcome
}

/// Writes a changed record straight to the store, bypassing validation (to make states the
/// API refuses to create, like a key that expired an hour ago).
async fn force(b: &Backends, kv: &Keyvault, id: KeyId, change: impl FnOnce(&mut crate::KeyRecord)) {
    let mut r = b.store.get(id).await.unwrap().unwrap();
    change(&mut r);
    r.revision += 1;
    b.store
        .apply(
            &[KeyWrite::Update {
                record: r.clone(),
                reset_credits: false,
            }],
            &[],
        )
        .await
        .unwrap();
    kv.key_cache().invalidate(&r.digest);
}

pub async fn verifies_created_keys_and_rejects_unknown_ones(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(&kv, NewKey::new("basic").owner("team-a").scope("read")).await;
    let v = verify(&kv, &key).await;
    assert_eq!(v.outcome, Outcome::Valid);
    let rec = v.key.unwrap();
    assert_eq!(rec.id, id);
    assert_eq!(rec.owner_id.as_deref(), Some("team-a"));
    assert_eq!(rec.start, key[..7]);
    assert_eq!(v.credits_remaining, None);
    let got = kv.get_key(id).await.unwrap();
    assert_eq!(got.name, "basic");
    assert_eq!(got.digest, kv.hasher().digest(&key));
    // A well-formed key that was never issued, a garbage string, an API token.
    let other = crate::ApiKey::generate(&crate::Prefix::default());
    assert_eq!(code(&kv, other.expose()).await, Outcome::NotFound);
    assert_eq!(code(&kv, "kv_garbage").await, Outcome::NotFound);
    assert_eq!(code(&kv, "").await, Outcome::NotFound);
    let token = crate::ApiKey::generate(&crate::Prefix::any("kvt").unwrap());
    assert_eq!(code(&kv, token.expose()).await, Outcome::NotFound);
    assert!(matches!(
        kv.get_key(KeyId::new()).await,
        Err(Error::NotFound { .. })
    ));
}

pub async fn disabled_keys_answer_disabled_until_enabled(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(&kv, NewKey::new("d")).await;
    assert_eq!(code(&kv, &key).await, Outcome::Valid);
    kv.set_enabled(id, false, &actor()).await.unwrap();
    assert_eq!(code(&kv, &key).await, Outcome::Disabled);
    kv.set_enabled(id, true, &actor()).await.unwrap();
    assert_eq!(code(&kv, &key).await, Outcome::Valid);
    let (key2, _) = create(&kv, NewKey::new("born disabled").disabled()).await;
    assert_eq!(code(&kv, &key2).await, Outcome::Disabled);
}

pub async fn expired_keys_answer_expired(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(
        &kv,
        NewKey::new("e").expires_at(Utc::now() + TimeDelta::hours(2)),
    )
    .await;
    assert_eq!(code(&kv, &key).await, Outcome::Valid);
    force(&b, &kv, id, |r| {
        r.expires_at = Some(Utc::now() - TimeDelta::hours(1))
    })
    .await;
    assert_eq!(code(&kv, &key).await, Outcome::Expired);
    // Past expiries are refused at creation, naming the field.
    let err = kv
        .create_key(
            NewKey::new("x").expires_at(Utc::now() - TimeDelta::hours(1)),
            &actor(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid(ref e) if e.field == "expires_at"),
        "{err}"
    );
}

pub async fn ip_allowlists_are_enforced(b: Backends) {
    let kv = b.keyvault();
    let nets = parse_allowlist(&["10.1.0.0/16", "2001:db8::/32"]).unwrap();
    let mut new = NewKey::new("ip");
    new.ip_allowlist = nets;
    let (key, _) = create(&kv, new).await;
    let at = |ip: Option<&str>| {
        let kv = kv.clone();
        let key = key.clone();
        let ip: Option<IpAddr> = ip.map(|s| s.parse().unwrap());
        async move {
            kv.verify(&VerifyRequest::new(&key).ip(ip))
                .await
                .unwrap()
                .outcome
        }
    };
    assert_eq!(at(Some("10.1.2.3")).await, Outcome::Valid);
    assert_eq!(at(Some("::ffff:10.1.2.3")).await, Outcome::Valid);
    assert_eq!(at(Some("2001:db8::7")).await, Outcome::Valid);
    assert_eq!(at(Some("10.2.0.1")).await, Outcome::Forbidden);
    assert_eq!(at(None).await, Outcome::Forbidden);
}

pub async fn scopes_are_enforced(b: Backends) {
    let kv = b.keyvault();
    let (key, _) = create(&kv, NewKey::new("s").scope("read").scope("write")).await;
    let check = |scopes: Vec<String>| {
        let kv = kv.clone();
        let key = key.clone();
        async move {
            kv.verify(&VerifyRequest::new(&key).scopes(&scopes))
                .await
                .unwrap()
                .outcome
        }
    };
    assert_eq!(check(vec![]).await, Outcome::Valid);
    assert_eq!(
        check(vec!["read".into(), "write".into()]).await,
        Outcome::Valid
    );
    assert_eq!(
        check(vec!["admin".into()]).await,
        Outcome::InsufficientPermissions
    );
    assert_eq!(
        check(vec!["read".into(), "admin".into()]).await,
        Outcome::InsufficientPermissions
    );
}

pub async fn checks_run_in_contract_order(b: Backends) {
    let kv = b.keyvault();
    let mut new = NewKey::new("order")
        .scope("read")
        .credits(Credits::new(0))
        .ratelimit(RateLimit::new("h", 1, HOUR).unwrap());
    new.ip_allowlist = parse_allowlist(&["10.0.0.0/8"]).unwrap();
    let (key, id) = create(&kv, new).await;
    let admin = vec!["admin".to_owned()];
    let run = |ip: &str| {
        let kv = kv.clone();
        let key = key.clone();
        let admin = admin.clone();
        let ip: IpAddr = ip.parse().unwrap();
        async move {
            kv.verify(&VerifyRequest::new(&key).ip(Some(ip)).scopes(&admin))
                .await
                .unwrap()
                .outcome
        }
    };
    force(&b, &kv, id, |r| {
        r.enabled = false;
        r.expires_at = Some(Utc::now() - TimeDelta::hours(1));
    })
    .await;
    assert_eq!(run("192.0.2.1").await, Outcome::Disabled);
    force(&b, &kv, id, |r| r.enabled = true).await;
    assert_eq!(run("192.0.2.1").await, Outcome::Expired);
    force(&b, &kv, id, |r| r.expires_at = None).await;
    assert_eq!(run("192.0.2.1").await, Outcome::Forbidden);
    assert_eq!(run("10.0.0.1").await, Outcome::InsufficientPermissions);
    // Scopes satisfied: the limit admits once, credits (0) refuse, and the token goes back.
    let read = vec!["read".to_owned()];
    let ip = Some("10.0.0.1".parse().unwrap());
    let v = kv
        .verify(&VerifyRequest::new(&key).ip(ip).scopes(&read))
        .await
        .unwrap();
    assert_eq!(v.outcome, Outcome::UsageExceeded);
    assert_eq!(
        v.ratelimits[0].remaining, 1,
        "the refused request's token was released"
    );
    // Exhaust the limit with pure checks impossible (cost 0 takes nothing): spend credits.
    kv.update_key(
        id,
        KeyPatch {
            credits: Some(Some(Credits::new(1))),
            ..Default::default()
        },
        &actor(),
    )
    .await
    .unwrap();
    let v = kv
        .verify(&VerifyRequest::new(&key).ip(ip).scopes(&read))
        .await
        .unwrap();
    assert_eq!(v.outcome, Outcome::Valid);
    let v = kv
        .verify(&VerifyRequest::new(&key).ip(ip).scopes(&read))
        .await
        .unwrap();
    assert_eq!(
        v.outcome,
        Outcome::RateLimited,
        "rate limits are checked before credits"
    );
    assert_eq!(v.credits_remaining, Some(0));
}

pub async fn credits_are_exact_under_concurrency(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(&kv, NewKey::new("c").credits(Credits::new(100))).await;
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let kv = kv.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let mut valid = 0u32;
                let n = 1_000 / 64 + u32::from(t < 1_000 % 64);
                for _ in 0..n {
                    let v = kv.verify(&VerifyRequest::new(&key)).await.unwrap();
                    match v.outcome {
                        Outcome::Valid => valid += 1,
                        Outcome::UsageExceeded => {}
                        other => panic!("unexpected {other}"),
                    }
                }
                (valid, n)
            })
        })
        .collect();
    let (mut valid, mut total) = (0, 0);
    for t in tasks {
        let (v, n) = t.await.unwrap();
        valid += v;
        total += n;
    }
    assert_eq!(total, 1_000);
    assert_eq!(valid, 100, "exactly the balance is admitted");
    let rec = kv.get_key(id).await.unwrap();
    assert_eq!(kv.credits_remaining(&rec).await.unwrap(), Some(0));
}

pub async fn costs_are_spent_and_cost_zero_is_a_pure_check(b: Backends) {
    let kv = b.keyvault();
    let (key, _) = create(&kv, NewKey::new("cost").credits(Credits::new(25))).await;
    let at = |cost: u64| {
        let kv = kv.clone();
        let key = key.clone();
        async move {
            kv.verify(&VerifyRequest::new(&key).cost(cost))
                .await
                .unwrap()
        }
    };
    let v = at(10).await;
    assert_eq!((v.outcome, v.credits_remaining), (Outcome::Valid, Some(15)));
    let v = at(10).await;
    assert_eq!((v.outcome, v.credits_remaining), (Outcome::Valid, Some(5)));
    let v = at(10).await;
    assert_eq!(
        (v.outcome, v.credits_remaining),
        (Outcome::UsageExceeded, Some(5))
    );
    let v = at(5).await;
    assert_eq!((v.outcome, v.credits_remaining), (Outcome::Valid, Some(0)));
    let v = at(0).await;
    assert_eq!(
        (v.outcome, v.credits_remaining),
        (Outcome::Valid, Some(0)),
        "cost 0 is never USAGE_EXCEEDED"
    );
    // Costs above 2^53-1 are refused, not wrapped.
    let err = kv
        .verify(&VerifyRequest::new(&key).cost(1 << 53))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(ref e) if e.field == "cost"));
    // A big balance is kept exactly.
    let (big, _) = create(
        &kv,
        NewKey::new("big").credits(Credits::new(crate::MAX_CREDITS)),
    )
    .await;
    let v = kv.verify(&VerifyRequest::new(&big).cost(1)).await.unwrap();
    assert_eq!(v.credits_remaining, Some(crate::MAX_CREDITS - 1));
}

pub async fn rejected_requests_consume_nothing(b: Backends) {
    let kv = b.keyvault();
    let (key, _) = create(
        &kv,
        NewKey::new("two limits")
            .ratelimit(RateLimit::new("small", 3, HOUR).unwrap())
            .ratelimit(RateLimit::new("large", 100, HOUR).unwrap()),
    )
    .await;
    let mut last = None;
    for i in 0..5 {
        let v = verify(&kv, &key).await;
        assert_eq!(
            v.outcome,
            if i < 3 {
                Outcome::Valid
            } else {
                Outcome::RateLimited
            }
        );
        last = Some(v);
    }
    let large = last
        .unwrap()
        .ratelimits
        .into_iter()
        .find(|s| s.name == "large")
        .unwrap();
    assert_eq!(
        large.remaining, 97,
        "the two rejected requests took nothing from the larger limit"
    );

    // Credits refusing after the limits admitted: the tokens go back.
    let (key, _) = create(
        &kv,
        NewKey::new("credits after limits")
            .credits(Credits::new(2))
            .ratelimit(RateLimit::new("h", 10, HOUR).unwrap()),
    )
    .await;
    for _ in 0..5 {
        verify(&kv, &key).await;
    }
    let v = kv.verify(&VerifyRequest::new(&key).cost(0)).await.unwrap();
    assert_eq!(v.ratelimits[0].remaining, 8);
    assert_eq!(v.credits_remaining, Some(0));
    // The refused answer reports the buckets as the refund left them.
    let refused = verify(&kv, &key).await;
    assert_eq!(refused.outcome, Outcome::UsageExceeded);
    assert_eq!(refused.ratelimits[0].remaining, 8);
    let pure = kv.verify(&VerifyRequest::new(&key).cost(0)).await.unwrap();
    let drift = (refused.ratelimits[0].reset_at - pure.ratelimits[0].reset_at)
        .num_milliseconds()
        .abs();
    assert!(
        drift < 1_000,
        "reset_at after a refund is off by {drift} ms"
    );
    // Early rejections take nothing either.
    let (key, id) = create(
        &kv,
        NewKey::new("disabled")
            .credits(Credits::new(3))
            .ratelimit(RateLimit::new("h", 3, HOUR).unwrap()),
    )
    .await;
    kv.set_enabled(id, false, &actor()).await.unwrap();
    for _ in 0..5 {
        let v = verify(&kv, &key).await;
        assert_eq!(v.outcome, Outcome::Disabled);
        assert_eq!(v.credits_remaining, Some(3));
        assert_eq!(v.ratelimits[0].remaining, 3);
    }
}

pub async fn rate_limits_are_exact_under_concurrency(b: Backends) {
    let kv = b.keyvault();
    let (key, _) = create(
        &kv,
        NewKey::new("r").ratelimit(RateLimit::new("h", 50, HOUR).unwrap()),
    )
    .await;
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let kv = kv.clone();
            let key = key.clone();
            tokio::spawn(async move { verify(&kv, &key).await.outcome })
        })
        .collect();
    let mut valid = 0;
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Valid => valid += 1,
            Outcome::RateLimited => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(valid, 50);
}

pub async fn rate_limited_answers_carry_retry_after(b: Backends) {
    let kv = b.keyvault();
    let (key, _) = create(
        &kv,
        NewKey::new("retry")
            .ratelimit(RateLimit::new("hourly", 2, HOUR).unwrap())
            .ratelimit(RateLimit::new("daily", 100, 24 * HOUR).unwrap()),
    )
    .await;
    verify(&kv, &key).await;
    verify(&kv, &key).await;
    let before = Utc::now() - TimeDelta::seconds(5);
    let v = verify(&kv, &key).await;
    assert_eq!(v.outcome, Outcome::RateLimited);
    let hourly = v.ratelimits.iter().find(|s| s.name == "hourly").unwrap();
    assert_eq!((hourly.limit, hourly.remaining), (2, 0));
    let retry = hourly.retry_after_ms.unwrap();
    // The next token: half an hour after the first was taken.
    assert!(
        (1_790_000..=1_800_000).contains(&retry),
        "retry_after_ms = {retry}"
    );
    assert!(hourly.reset_at > before + TimeDelta::minutes(55));
    let daily = v.ratelimits.iter().find(|s| s.name == "daily").unwrap();
    assert_eq!(daily.remaining, 98);
    assert_eq!(daily.retry_after_ms, None);
    assert_eq!(v.retry_after_ms(), Some(retry));
    assert_eq!(v.tightest_limit().unwrap().name, "hourly");
}

pub async fn rotation_shares_credits_and_buckets(b: Backends) {
    let kv = b.keyvault();
    let (old, id) = create(
        &kv,
        NewKey::new("rot")
            .credits(Credits::new(10))
            .ratelimit(RateLimit::new("h", 8, HOUR).unwrap())
            .scope("read"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(code(&kv, &old).await, Outcome::Valid);
    }
    let r = kv
        .rotate_key(id, Some(Duration::from_secs(3_600)), &actor())
        .await
        .unwrap();
    assert_ne!(r.record.id, id);
    assert_eq!(r.old_id, id);
    assert_eq!(r.record.scopes, ["read"]);
    assert_eq!(r.record.rotated_from, Some(id));
    let new = r.key.expose().to_owned();
    assert_ne!(new, old);
    let v = verify(&kv, &new).await;
    assert_eq!(v.outcome, Outcome::Valid);
    assert_eq!(v.credits_remaining, Some(6), "one balance for both keys");
    assert_eq!(
        v.ratelimits[0].remaining, 4,
        "one set of buckets for both keys"
    );
    assert_eq!(code(&kv, &old).await, Outcome::Valid);
    for _ in 0..4 {
        verify(&kv, &new).await;
    }
    // 8 spent in all: both keys are now rate limited by the shared bucket.
    assert_eq!(code(&kv, &old).await, Outcome::RateLimited);
    assert_eq!(code(&kv, &new).await, Outcome::RateLimited);
    let old_rec = kv.get_key(id).await.unwrap();
    assert_eq!(old_rec.superseded_by, Some(r.record.id));
    let grace_end = old_rec.grace_until.unwrap();
    assert!(
        grace_end > Utc::now() + TimeDelta::minutes(55)
            && grace_end <= Utc::now() + TimeDelta::hours(1)
    );
    // Configuration changes go to the new key.
    let e = kv
        .update_key(
            id,
            KeyPatch {
                name: Some("x".into()),
                ..Default::default()
            },
            &actor(),
        )
        .await;
    assert!(matches!(e, Err(Error::Conflict(_))));
}

pub async fn rotation_refuses_bad_targets(b: Backends) {
    let kv = b.keyvault();
    let (_, id) = create(&kv, NewKey::new("a")).await;
    kv.rotate_key(id, None, &actor()).await.unwrap();
    let again = kv.rotate_key(id, None, &actor()).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    let (_, disabled) = create(&kv, NewKey::new("b").disabled()).await;
    assert!(matches!(
        kv.rotate_key(disabled, None, &actor()).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        kv.rotate_key(KeyId::new(), None, &actor()).await,
        Err(Error::NotFound { .. })
    ));
    // The old key never outlives its own expiry.
    let exp = Utc::now() + TimeDelta::minutes(30);
    let (_, short) = create(&kv, NewKey::new("c").expires_at(exp)).await;
    let r = kv
        .rotate_key(short, Some(Duration::from_secs(86_400)), &actor())
        .await
        .unwrap();
    assert!(r.old_key_expires_at <= exp);
}

pub async fn rotation_grace_ends_in_expired(b: Backends) {
    let kv = b.keyvault();
    let (old, id) = create(&kv, NewKey::new("g")).await;
    let r = kv
        .rotate_key(id, Some(Duration::ZERO), &actor())
        .await
        .unwrap();
    assert_eq!(code(&kv, &old).await, Outcome::Expired);
    assert_eq!(code(&kv, r.key.expose()).await, Outcome::Valid);
    if let Some(clock) = &b.clock {
        let (old, id) = create(&kv, NewKey::new("g2")).await;
        kv.rotate_key(id, Some(Duration::from_secs(60)), &actor())
            .await
            .unwrap();
        clock.advance(TimeDelta::seconds(59));
        assert_eq!(code(&kv, &old).await, Outcome::Valid);
        clock.advance(TimeDelta::seconds(1));
        assert_eq!(code(&kv, &old).await, Outcome::Expired);
    }
}

pub async fn updates_replace_fields_and_reset_credits(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(
        &kv,
        NewKey::new("u")
            .credits(Credits::new(5))
            .scope("a")
            .expires_at(Utc::now() + TimeDelta::days(1)),
    )
    .await;
    verify(&kv, &key).await;
    let patch: KeyPatch = serde_json::from_value(json!({
        "name": "renamed",
        "expires_at": null,
        "credits": {"remaining": 50},
        "scopes": ["b"],
        "metadata": {"tier": "gold"}
    }))
    .unwrap();
    let rec = kv.update_key(id, patch, &actor()).await.unwrap();
    assert_eq!(rec.name, "renamed");
    assert_eq!(rec.expires_at, None);
    assert_eq!(rec.scopes, ["b"]);
    assert_eq!(rec.metadata["tier"], "gold");
    let stored = kv.get_key(id).await.unwrap();
    assert_eq!(stored, rec);
    let v = verify(&kv, &key).await;
    assert_eq!(
        v.credits_remaining,
        Some(49),
        "the balance was set to the new remaining"
    );
    let rec = kv
        .update_key(
            id,
            serde_json::from_value(json!({"credits": null})).unwrap(),
            &actor(),
        )
        .await
        .unwrap();
    assert_eq!(rec.credits, None);
    assert_eq!(verify(&kv, &key).await.credits_remaining, None);
    // Bad values are refused, naming the field; nothing changes.
    let bad = KeyPatch {
        name: Some("   ".into()),
        ..Default::default()
    };
    let e = kv.update_key(id, bad, &actor()).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(ref i) if i.field == "name"));
    assert_eq!(kv.get_key(id).await.unwrap().name, "renamed");
    let missing = kv
        .update_key(KeyId::new(), KeyPatch::default(), &actor())
        .await;
    assert!(matches!(missing, Err(Error::NotFound { .. })));
}

pub async fn changed_rate_limits_start_full(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(
        &kv,
        NewKey::new("l").ratelimit(RateLimit::new("h", 2, HOUR).unwrap()),
    )
    .await;
    verify(&kv, &key).await;
    verify(&kv, &key).await;
    assert_eq!(code(&kv, &key).await, Outcome::RateLimited);
    let patch = KeyPatch {
        ratelimits: Some(vec![RateLimit::new("h", 5, HOUR).unwrap()]),
        ..Default::default()
    };
    kv.update_key(id, patch, &actor()).await.unwrap();
    let v = verify(&kv, &key).await;
    assert_eq!(v.outcome, Outcome::Valid);
    assert_eq!(v.ratelimits[0].remaining, 4);
    // Changed back to the first limit, the one drained above: a bucket of its own again,
    // full; a limit added beside it too.
    let two = RateLimit::new("h", 2, HOUR).unwrap();
    let patch = KeyPatch {
        ratelimits: Some(vec![two.clone(), RateLimit::new("m", 3, HOUR).unwrap()]),
        ..Default::default()
    };
    kv.update_key(id, patch, &actor()).await.unwrap();
    let v = verify(&kv, &key).await;
    assert_eq!(
        v.outcome,
        Outcome::Valid,
        "a limit changed back starts full"
    );
    assert_eq!(
        (v.ratelimits[0].remaining, v.ratelimits[1].remaining),
        (1, 2)
    );
    // The store keeps when each limit was set: read back, the record still tells this
    // bucket from the first one.
    let stored = kv.get_key(id).await.unwrap();
    assert_eq!(stored.ratelimits_since.len(), 2);
    assert!(stored.ratelimits_since.iter().all(|&t| t > 0));
    // A change that keeps a limit keeps its bucket: one token left of "h", not two.
    let patch = KeyPatch {
        ratelimits: Some(vec![two]),
        ..Default::default()
    };
    kv.update_key(id, patch, &actor()).await.unwrap();
    let v = verify(&kv, &key).await;
    assert_eq!(v.outcome, Outcome::Valid);
    assert_eq!(v.ratelimits[0].remaining, 0);
    assert_eq!(code(&kv, &key).await, Outcome::RateLimited);
}

pub async fn deleted_keys_are_not_found(b: Backends) {
    let kv = b.keyvault();
    let (key, id) = create(&kv, NewKey::new("del").credits(Credits::new(3))).await;
    assert_eq!(code(&kv, &key).await, Outcome::Valid);
    kv.delete_key(id, &actor()).await.unwrap();
    assert_eq!(code(&kv, &key).await, Outcome::NotFound);
    assert!(matches!(kv.get_key(id).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        kv.delete_key(id, &actor()).await,
        Err(Error::NotFound { .. })
    ));
}

pub async fn batch_reports_each_id(b: Backends) {
    let kv = b.keyvault();
    let (k1, id1) = create(&kv, NewKey::new("b1")).await;
    let (k2, id2) = create(&kv, NewKey::new("b2")).await;
    let unknown = KeyId::new();
    let res = kv
        .batch(BatchAction::Disable, &[id1, unknown, id2], &actor())
        .await;
    assert_eq!(res.len(), 3);
    assert!(res[0].1.is_ok() && res[2].1.is_ok());
    assert!(matches!(res[1].1, Err(Error::NotFound { .. })));
    assert_eq!(code(&kv, &k1).await, Outcome::Disabled);
    assert_eq!(code(&kv, &k2).await, Outcome::Disabled);
    let res = kv.batch(BatchAction::Enable, &[id1], &actor()).await;
    assert!(res[0].1.is_ok());
    assert_eq!(code(&kv, &k1).await, Outcome::Valid);
    let res = kv
        .batch(BatchAction::Delete, &[id1, id2, id2], &actor())
        .await;
    assert!(res[0].1.is_ok() && res[1].1.is_ok() && res[2].1.is_err());
    assert_eq!(code(&kv, &k1).await, Outcome::NotFound);
}

pub async fn listing_pages_newest_first_with_filters(b: Backends) {
    let kv = b.keyvault();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut n = NewKey::new(format!("key-{i}")).owner(if i % 2 == 0 { "even" } else { "odd" });
        if i == 3 {
            n = n.disabled();
        }
        ids.push(create(&kv, n).await.1);
    }
    let (_, gone) = create(&kv, NewKey::new("deleted")).await;
    kv.delete_key(gone, &actor()).await.unwrap();
    let mut seen = Vec::new();
    let mut q = KeyQuery {
        limit: 3,
        ..Default::default()
    };
    loop {
        let page = kv.list_keys(&q).await.unwrap();
        seen.extend(page.items.iter().map(|k| k.id));
        if !page.has_more {
            break;
        }
        q.before = page.items.last().map(|k| k.id);
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(
        seen, expected,
        "newest first, every key once, deleted keys never"
    );
    let odd = kv
        .list_keys(&KeyQuery {
            owner_id: Some("odd".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(odd.items.len(), 3);
    let disabled = kv
        .list_keys(&KeyQuery {
            enabled: Some(false),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        disabled.items.iter().map(|k| k.id).collect::<Vec<_>>(),
        [ids[3]]
    );
    let search = kv
        .list_keys(&KeyQuery {
            search: Some("KEY-5".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(search.items.len(), 1);
    assert!(
        kv.list_keys(&KeyQuery {
            limit: 0,
            ..Default::default()
        })
        .await
        .is_err()
    );
    assert!(
        kv.list_keys(&KeyQuery {
            limit: 101,
            ..Default::default()
        })
        .await
        .is_err()
    );
}

pub async fn rotate_due_hands_out_each_key_once(b: Backends) {
    let kv = b.keyvault();
    let policy: RotationPolicy =
        serde_json::from_value(json!({"every": "30d", "grace": "1h"})).unwrap();
    let (old, id) = create(
        &kv,
        NewKey::new("auto")
            .rotation(policy)
            .credits(Credits::new(7)),
    )
    .await;
    let (_, not_due) = create(&kv, NewKey::new("later").rotation(policy)).await;
    assert!(kv.rotate_due(&actor()).await.unwrap().is_empty());
    force(&b, &kv, id, |r| {
        r.next_rotation_at = Some(Utc::now() - TimeDelta::minutes(1))
    })
    .await;
    // A changed grace alone keeps the rotation due; a changed period would restart it.
    let longer: RotationPolicy =
        serde_json::from_value(json!({"every": "30d", "grace": "2h"})).unwrap();
    let patch = KeyPatch {
        rotation: Some(Some(longer)),
        ..KeyPatch::default()
    };
    let changed = kv.update_key(id, patch, &actor()).await.unwrap();
    assert!(changed.next_rotation_at.unwrap() < Utc::now(), "still due");
    let (kv2, kv3) = (b.keyvault(), b.keyvault());
    // Two processes racing: each due key is rotated (and handed out) once.
    let who = actor();
    let (a, c) = tokio::join!(kv2.rotate_due(&who), kv3.rotate_due(&who));
    let mut all: Vec<_> = a.unwrap().into_iter().chain(c.unwrap()).collect();
    assert_eq!(all.len(), 1);
    let r = all.pop().unwrap();
    assert_eq!(r.old_id, id);
    assert!(kv.rotate_due(&actor()).await.unwrap().is_empty());
    let v = verify(&kv, r.key.expose()).await;
    assert_eq!((v.outcome, v.credits_remaining), (Outcome::Valid, Some(6)));
    assert_eq!(
        code(&kv, &old).await,
        Outcome::Valid,
        "the old key has its grace"
    );
    let next = r.record.next_rotation_at.unwrap();
    assert!(next > Utc::now() + TimeDelta::days(29));
    assert!(kv.get_key(not_due).await.unwrap().superseded_by.is_none());
}

pub async fn cleanup_removes_long_expired_keys(b: Backends) {
    let kv = b.keyvault();
    let (_, old) = create(
        &kv,
        NewKey::new("old").expires_at(Utc::now() + TimeDelta::days(1)),
    )
    .await;
    let (_, recent) = create(
        &kv,
        NewKey::new("recent").expires_at(Utc::now() + TimeDelta::days(1)),
    )
    .await;
    let (_, live) = create(&kv, NewKey::new("live")).await;
    force(&b, &kv, old, |r| {
        r.expires_at = Some(Utc::now() - TimeDelta::days(40))
    })
    .await;
    force(&b, &kv, recent, |r| {
        r.expires_at = Some(Utc::now() - TimeDelta::days(2))
    })
    .await;
    let deleted = kv
        .cleanup_expired(Duration::from_secs(30 * 86_400), &actor())
        .await
        .unwrap();
    assert_eq!(deleted, [old]);
    assert!(kv.get_key(recent).await.is_ok());
    assert!(kv.get_key(live).await.is_ok());
    let deleted = kv.cleanup_expired(Duration::ZERO, &actor()).await.unwrap();
    assert_eq!(deleted, [recent]);
}

pub async fn watched_keys_hold_credits_or_expire_by_the_horizon(b: Backends) {
    let kv = b.keyvault();
    let now = Utc::now();
    let (_, _plain) = create(&kv, NewKey::new("plain")).await;
    let (_, credited) = create(&kv, NewKey::new("credited").credits(Credits::new(5))).await;
    let (_, soon) = create(
        &kv,
        NewKey::new("soon").expires_at(now + TimeDelta::days(1)),
    )
    .await;
    let (_, _later) = create(
        &kv,
        NewKey::new("later").expires_at(now + TimeDelta::days(30)),
    )
    .await;
    let (_, off) = create(&kv, NewKey::new("off").credits(Credits::new(5))).await;
    kv.set_enabled(off, false, &actor()).await.unwrap();
    let mut got: Vec<KeyId> = b
        .store
        .watched_keys(now + TimeDelta::days(7))
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    got.sort_unstable();
    let mut want = vec![credited, soon];
    want.sort_unstable();
    assert_eq!(
        got, want,
        "enabled, with credits or expiring within the horizon"
    );
}

pub async fn mutations_are_audited_in_a_valid_chain(b: Backends) {
    let kv = b.keyvault();
    let who = Actor {
        name: "user:alice".into(),
        source_ip: Some("192.0.2.9".parse().unwrap()),
        request_id: Some("req-1".into()),
    };
    let c = kv.create_key(NewKey::new("audited"), &who).await.unwrap();
    let id = c.record.id;
    kv.set_enabled(id, false, &who).await.unwrap();
    kv.update_key(
        id,
        KeyPatch {
            name: Some("n".into()),
            ..Default::default()
        },
        &who,
    )
    .await
    .unwrap();
    kv.set_enabled(id, true, &who).await.unwrap();
    kv.rotate_key(id, None, &who).await.unwrap();
    let _ = kv.rotate_key(id, None, &who).await.unwrap_err();
    let page = b
        .audit
        .list(&AuditQuery {
            target_id: Some(id.to_string()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = page
        .items
        .iter()
        .map(|r| (r.event.action.as_str(), r.event.outcome))
        .collect();
    use crate::AuditOutcome::{Refused, Success};
    assert_eq!(
        actions,
        [
            ("key.rotate", Refused),
            ("key.rotate", Success),
            ("key.enable", Success),
            ("key.update", Success),
            ("key.disable", Success),
            ("key.create", Success),
        ],
        "newest first"
    );
    let first = page.items.last().unwrap();
    assert_eq!(first.event.actor, "user:alice");
    assert_eq!(first.event.source_ip, who.source_ip);
    assert_eq!(first.event.request_id.as_deref(), Some("req-1"));
    // No secret in the log.
    let text = serde_json::to_string(&page.items).unwrap();
    assert!(!text.contains(c.key.expose()));
    let report = b.audit.verify_chain().await.unwrap();
    assert_eq!(report.first_broken, None);
    assert!(report.checked >= 6);
    // Filters and paging.
    let by_action = b
        .audit
        .list(&AuditQuery {
            action: Some("key.disable".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_action.items.len(), 1);
    let refused = b
        .audit
        .list(&AuditQuery {
            target_id: Some(id.to_string()),
            outcome: Some(Refused),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let refused: Vec<_> = refused
        .items
        .iter()
        .map(|r| r.event.action.as_str())
        .collect();
    assert_eq!(refused, ["key.rotate"], "the outcome filter");
    let p1 = b
        .audit
        .list(&AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(p1.has_more);
    let p2 = b
        .audit
        .list(&AuditQuery {
            limit: 2,
            before_seq: Some(p1.items[1].seq),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(p2.items[0].seq < p1.items[1].seq);
}

pub async fn usage_is_idempotent_and_summarised(b: Backends) {
    let Some((sink, query)) = b.usage.clone() else {
        return;
    };
    let kv = b.keyvault();
    let (_, id) = create(&kv, NewKey::new("usage")).await;
    let now = Utc::now();
    let ev = |i: u32, provider: &str, status: u16, ms: u64| UsageEvent {
        request_id: format!("req-{i}").into(),
        key_id: Some(id),
        owner_id: None,
        ts: now - TimeDelta::minutes(i64::from(i % 5)),
        provider: Some(provider.into()),
        route: Some("/v1/chat".into()),
        method: Some("POST".into()),
        status,
        latency_us: ms * 1_000,
        outcome: Some(Outcome::Valid),
        cost: 1,
    };
    let mut events: Vec<_> = (0..80)
        .map(|i| {
            ev(
                i,
                "openai",
                if i % 10 == 0 { 500 } else { 200 },
                10 + u64::from(i),
            )
        })
        .collect();
    events.extend((80..100).map(|i| ev(i, "anthropic", 302, 5)));
    sink.write(&events).await.unwrap();
    // A retried batch (after a timeout, say) counts nothing twice.
    sink.write(&events[40..]).await.unwrap();
    let q = StatsQuery {
        from: now - TimeDelta::hours(1),
        to: now + TimeDelta::minutes(1),
        key_id: None,
        provider: None,
        granularity: None,
    };
    let s = query.overview(&q).await.unwrap();
    assert_eq!(s.calls, 100);
    assert!((s.success_rate.unwrap() - 0.92).abs() < 1e-9);
    assert_eq!(s.by_provider[0].provider, "openai");
    assert_eq!(s.by_provider[0].calls, 80);
    assert!((s.by_provider[0].success_rate.unwrap() - 0.9).abs() < 1e-9);
    assert_eq!(s.by_provider[1].calls, 20);
    assert_eq!(s.timeseries.iter().map(|p| p.calls).sum::<u64>(), 100);
    assert_eq!(s.timeseries.iter().map(|p| p.errors).sum::<u64>(), 8);
    // Latency: 20 × 5 ms and 80 × 10..89 ms; p50 is the 50th value, 39 ms (within 10 %).
    let p50 = s.latency_ms.p50.unwrap();
    assert!((p50 - 39.0).abs() / 39.0 <= 0.1, "p50 = {p50}");
    let p99 = s.latency_ms.p99.unwrap();
    assert!((p99 - 88.0).abs() / 88.0 <= 0.1, "p99 = {p99}");
    let only = query
        .overview(&StatsQuery {
            provider: Some("anthropic".into()),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!((only.calls, only.success_rate), (20, Some(1.0)));
    let other_key = query
        .overview(&StatsQuery {
            key_id: Some(KeyId::new()),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!((other_key.calls, other_key.success_rate), (0, None));
    // Per key, in one ask: over the hour (minutes and raw ends) and over a day (hours too).
    let nobody = KeyId::new();
    for range in [
        q.clone(),
        StatsQuery {
            from: now - TimeDelta::hours(30),
            ..q.clone()
        },
    ] {
        let per_key = query.calls_by_key(&range, &[id, nobody]).await.unwrap();
        assert_eq!(per_key.get(&id), Some(&100), "{range:?}");
        assert_eq!(per_key.get(&nobody).copied().unwrap_or(0), 0);
    }
    let anthropic = StatsQuery {
        provider: Some("anthropic".into()),
        ..q.clone()
    };
    assert_eq!(
        query
            .calls_by_key(&anthropic, &[id])
            .await
            .unwrap()
            .get(&id),
        Some(&20)
    );
    assert!(query.calls_by_key(&q, &[]).await.unwrap().is_empty());
    let past = StatsQuery {
        from: now - TimeDelta::days(3),
        to: now - TimeDelta::days(2),
        ..q
    };
    assert_eq!(query.overview(&past).await.unwrap().calls, 0);
}

pub async fn refills_set_the_balance_once_per_interval(b: Backends) {
    let Some(clock) = b.clock.clone() else { return };
    clock.set("2026-03-31T23:00:00Z".parse().unwrap());
    let kv = b.keyvault();
    let credits = Credits {
        remaining: 3,
        refill: Some(Refill {
            interval: RefillInterval::Daily,
            amount: 5,
        }),
    };
    let (key, _) = create(&kv, NewKey::new("daily").credits(credits)).await;
    let monthly = Credits {
        remaining: 1,
        refill: Some(Refill {
            interval: RefillInterval::Monthly,
            amount: 2,
        }),
    };
    let (mkey, _) = create(&kv, NewKey::new("monthly").credits(monthly)).await;
    for _ in 0..3 {
        assert_eq!(code(&kv, &key).await, Outcome::Valid);
    }
    assert_eq!(code(&kv, &key).await, Outcome::UsageExceeded);
    assert_eq!(code(&kv, &mkey).await, Outcome::Valid);
    assert_eq!(code(&kv, &mkey).await, Outcome::UsageExceeded);
    clock.advance(TimeDelta::hours(1)); // 1 April, 00:00 UTC
    let instances = [kv.clone(), b.keyvault(), b.keyvault()];
    let mut valid = 0;
    for i in 0..12 {
        if code(&instances[i % 3], &key).await == Outcome::Valid {
            valid += 1;
        }
    }
    assert_eq!(
        valid, 5,
        "the refill sets the balance to 5 once, however many instances spend"
    );
    assert_eq!(code(&kv, &mkey).await, Outcome::Valid);
    assert_eq!(code(&kv, &mkey).await, Outcome::Valid);
    assert_eq!(code(&kv, &mkey).await, Outcome::UsageExceeded);
    clock.advance(TimeDelta::hours(23)); // still 1 April
    assert_eq!(code(&kv, &key).await, Outcome::UsageExceeded);
}

/// One spend straight on the credit store, by a caller holding `credits` at `now`.
async fn spend_as(
    b: &Backends,
    quota_id: KeyId,
    credits: &Credits,
    cost: u64,
    now: DateTime<Utc>,
    request_id: &str,
) -> CreditDecision {
    b.credits
        .spend(&CreditRequest {
            quota_id,
            credits,
            cost,
            request_id,
            now,
        })
        .await
        .unwrap()
}

/// Instances learn of a changed key up to a second late. One still holding the key's previous
/// refill must not apply it to the new balance: after a change from `daily:100` to
/// `monthly:50` its interval start (today) is later than the one noted (the month's), and
/// trusting it would set the balance to 100. Each spend here names its caller's credits and
/// time, so the case runs without a fake clock too (Redis).
pub async fn a_stale_refill_never_raises_a_changed_balance(b: Backends) {
    let base = match &b.clock {
        Some(clock) => {
            clock.set("2026-03-10T12:00:00Z".parse().unwrap());
            clock.now()
        }
        None => Utc::now(),
    };
    let month = |t: DateTime<Utc>| RefillInterval::Monthly.start_of(t);
    // A later day of the same month; on a month's last day there is none, but today's start
    // is still after the month's, which is what a stale caller would compare.
    let later = Some(base + TimeDelta::days(1))
        .filter(|t| month(*t) == month(base))
        .unwrap_or(base);
    let next_month = month(month(base) + TimeDelta::days(32));
    let old = Credits {
        remaining: 100,
        refill: Some(Refill {
            interval: RefillInterval::Daily,
            amount: 100,
        }),
    };
    let new = Credits {
        remaining: 50,
        refill: Some(Refill {
            interval: RefillInterval::Monthly,
            amount: 50,
        }),
    };
    let kv = b.keyvault();
    let (key, id) = create(&kv, NewKey::new("stale").credits(old)).await;
    let quota = kv.get_key(id).await.unwrap().quota_id;
    assert_eq!(
        spend_as(&b, quota, &old, 90, base, "stale-1").await,
        CreditDecision::Spent { remaining: 10 }
    );
    let patch = KeyPatch {
        credits: Some(Some(new)),
        ..Default::default()
    };
    kv.update_key(id, patch, &actor()).await.unwrap();
    assert_eq!(
        spend_as(&b, quota, &old, 1, later, "stale-2").await,
        CreditDecision::Spent { remaining: 49 },
        "a caller still holding daily:100 spends from the new balance, without refilling it"
    );
    assert_eq!(
        b.credits
            .debit(quota, &old, 1, later + TimeDelta::hours(1))
            .await
            .unwrap(),
        48,
        "nor does a write-back under the old refill"
    );
    assert_eq!(
        spend_as(&b, quota, &new, 1, later, "stale-3").await,
        CreditDecision::Spent { remaining: 47 },
        "the stale spends moved no refill interval: monthly:50 is not due before next month"
    );
    assert_eq!(
        spend_as(&b, quota, &new, 1, next_month, "stale-4").await,
        CreditDecision::Spent { remaining: 49 },
        "monthly:50 sets the balance at the next month"
    );
    assert_eq!(
        spend_as(
            &b,
            quota,
            &old,
            1,
            next_month + TimeDelta::days(1),
            "stale-5"
        )
        .await,
        CreditDecision::Spent { remaining: 48 },
        "a later day still refills nothing for the old refill"
    );
    assert_eq!(
        spend_as(
            &b,
            quota,
            &old,
            60,
            next_month + TimeDelta::days(2),
            "stale-6"
        )
        .await,
        CreditDecision::Insufficient { remaining: 48 },
        "the old refill's amount is never available"
    );
    // The key as it stands now, verified: the month's refill was noted, so nothing refills.
    let v = verify(&kv, &key).await;
    assert_eq!((v.outcome, v.credits_remaining), (Outcome::Valid, Some(47)));
}

pub async fn rate_limit_math_on_a_fake_clock(b: Backends) {
    let Some(clock) = b.clock.clone() else { return };
    let kv = b.keyvault();
    let (key, _) = create(
        &kv,
        NewKey::new("gcra").ratelimit(RateLimit::new("s", 7, 10_000).unwrap()),
    )
    .await;
    for _ in 0..7 {
        assert_eq!(code(&kv, &key).await, Outcome::Valid);
    }
    for _ in 0..10 {
        let v = verify(&kv, &key).await;
        assert_eq!(v.outcome, Outcome::RateLimited);
        let retry = v.retry_after_ms().unwrap();
        assert!((1..=1_429).contains(&retry), "retry_after_ms = {retry}");
        clock.advance(TimeDelta::milliseconds(retry as i64 - 1));
        assert_eq!(
            code(&kv, &key).await,
            Outcome::RateLimited,
            "no VALID before retry-after"
        );
        clock.advance(TimeDelta::milliseconds(1));
        assert_eq!(
            code(&kv, &key).await,
            Outcome::Valid,
            "VALID exactly at retry-after"
        );
    }
    clock.advance(TimeDelta::seconds(10));
    let v = kv.verify(&VerifyRequest::new(&key).cost(0)).await.unwrap();
    assert_eq!(
        v.ratelimits[0].remaining, 7,
        "a bucket refills to its size and no further"
    );
}

pub async fn a_disable_reaches_another_instance_within_a_second(b: Backends) {
    if b.bus.is_none() {
        return;
    }
    let a = b.keyvault();
    let other = b.keyvault();
    let (key, id) = create(&a, NewKey::new("propagate")).await;
    // Warm the other instance's cache.
    assert_eq!(code(&other, &key).await, Outcome::Valid);
    assert_eq!(code(&other, &key).await, Outcome::Valid);
    a.set_enabled(id, false, &actor()).await.unwrap();
    let start = Instant::now();
    loop {
        if code(&other, &key).await == Outcome::Disabled {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the disable was not honoured within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn usage_windows_count_by_key_and_by_second(b: Backends) {
    let Some((sink, query)) = b.usage.clone() else {
        return;
    };
    let (k1, k2) = (KeyId::new(), KeyId::new());
    // Whole seconds, so that every event falls in the second it is meant for.
    let t0 = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 30, 0).unwrap();
    let ev =
        |i: u32, key: Option<KeyId>, secs: i64, status: u16, outcome: Option<Outcome>| UsageEvent {
            request_id: format!("win-{i}").into(),
            key_id: key,
            owner_id: None,
            ts: t0 + TimeDelta::seconds(secs) + TimeDelta::milliseconds(250),
            provider: None,
            route: None,
            method: None,
            status,
            latency_us: 1_000 * u64::from(i + 1),
            outcome,
            cost: 1,
        };
    let events = [
        ev(0, Some(k1), 0, 200, Some(Outcome::Valid)),
        ev(1, Some(k1), 0, 500, Some(Outcome::Valid)),
        ev(2, Some(k1), 1, 429, Some(Outcome::RateLimited)),
        ev(3, Some(k2), 1, 200, None),
        ev(4, None, 2, 401, Some(Outcome::NotFound)),
        // Outside the windows read below.
        ev(5, Some(k1), 10, 200, None),
    ];
    sink.write(&events).await.unwrap();
    let to = t0 + TimeDelta::seconds(3);
    let w = query.key_windows(t0, to, None).await.unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    let one = &w[&k1];
    assert_eq!((one.calls, one.errors), (3, 2));
    assert_eq!(one.latency.total(), 3);
    assert_eq!(
        one.rejected
            .iter()
            .map(|(o, n)| (*o, *n))
            .collect::<Vec<_>>(),
        [(Outcome::RateLimited, 1)]
    );
    assert_eq!((w[&k2].calls, w[&k2].errors), (1, 0));
    let only = query.key_windows(t0, to, Some(k2)).await.unwrap();
    assert_eq!(only.keys().collect::<Vec<_>>(), [&k2]);
    let s = query.per_second(t0, to).await.unwrap();
    let first = t0.timestamp();
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(
        (s[&first].calls, s[&first].errors, s[&first].rejected),
        (2, 1, 0)
    );
    assert_eq!((s[&(first + 1)].calls, s[&(first + 1)].rejected), (2, 1));
    assert_eq!(
        (
            s[&(first + 2)].calls,
            s[&(first + 2)].errors,
            s[&(first + 2)].rejected
        ),
        (1, 1, 1)
    );
}

pub async fn client_signals_roll_up_and_are_read_by_window(b: Backends) {
    let s = b.signals.clone();
    // A whole minute; sightings carry microseconds, which every store keeps.
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let m = |i: i64| t0 + TimeDelta::minutes(i);
    let t = t0 + TimeDelta::microseconds(123_456);
    let count = |ip: &str, minute, count| IpCount {
        ip: ip.into(),
        minute,
        count,
    };
    let (a, b4, c, v6) = ("203.0.113.9", "198.51.100.7", "192.0.2.1", "2001:db8::1");
    let mut keys = [KeyId::new(), KeyId::new(), KeyId::new()];
    keys.sort();
    let [k1, k2, k3] = keys;
    let seen = |key_id, ip: &str, first: TimeDelta, last: TimeDelta| Sighting {
        key_id,
        ip: ip.into(),
        first_seen: t + first,
        last_seen: t + last,
    };
    let secs = TimeDelta::seconds;
    let mins = TimeDelta::minutes;

    s.record_signals(
        &[count(a, m(0), 3), count(b4, m(0), 5), count(v6, m(1), 2)],
        &[
            seen(k1, a, secs(10), secs(20)),
            seen(k1, b4, mins(5), mins(6)),
            seen(k1, v6, secs(10), secs(10)),
            seen(k2, a, mins(1), mins(1)),
            seen(k2, c, secs(10), secs(10)),
        ],
    )
    .await
    .unwrap();
    s.record_signals(
        &[
            count(a, m(0), 4),
            count(a, m(2), 1),
            count(b4, m(3), 9),
            count(c, m(1), 2),
        ],
        &[
            // A later first and a later last: only the last moves.
            seen(k1, a, secs(30), secs(40)),
            // An earlier first and an earlier last: only the first moves.
            seen(k2, a, secs(30), secs(30)),
            seen(k3, c, TimeDelta::hours(2), TimeDelta::hours(3)),
        ],
    )
    .await
    .unwrap();

    let by_ip = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|&(ip, n)| (ip.to_owned(), n)).collect()
    };
    assert_eq!(
        s.not_found_by_ip(m(0), m(1), 0).await.unwrap(),
        by_ip(&[(a, 7), (b4, 5)]),
        "counts of one IP and minute add up across writes"
    );
    assert_eq!(
        s.not_found_by_ip(m(0), m(3), 0).await.unwrap(),
        by_ip(&[(a, 8), (b4, 5), (c, 2), (v6, 2)]),
        "the minute at `to` is outside; ties are ordered by address"
    );
    assert_eq!(
        s.not_found_by_ip(m(0), m(4), 0).await.unwrap(),
        by_ip(&[(b4, 14), (a, 8), (c, 2), (v6, 2)]),
        "the highest count first"
    );
    assert_eq!(
        s.not_found_by_ip(m(1), m(3), 0).await.unwrap(),
        by_ip(&[(c, 2), (v6, 2), (a, 1)]),
        "the minute at `from` is inside"
    );
    assert_eq!(
        s.not_found_by_ip(m(0), m(3), 5).await.unwrap(),
        by_ip(&[(a, 8)]),
        "a count equal to `above` does not exceed it"
    );
    assert_eq!(s.not_found_by_ip(m(4), m(9), 0).await.unwrap(), []);

    let (k1a, k1b, k1v6) = (
        seen(k1, a, secs(10), secs(40)),
        seen(k1, b4, mins(5), mins(6)),
        seen(k1, v6, secs(10), secs(10)),
    );
    let (k2a, k2c, k3c) = (
        seen(k2, a, secs(30), mins(1)),
        seen(k2, c, secs(10), secs(10)),
        seen(k3, c, TimeDelta::hours(2), TimeDelta::hours(3)),
    );
    assert_eq!(
        s.new_sightings(m(0), m(5)).await.unwrap(),
        [k1v6.clone(), k1a.clone(), k2c, k2a.clone()],
        "the earliest first and latest last are kept; ordered by first seen, key, then IP"
    );
    assert_eq!(
        s.new_sightings(t + secs(30), t + mins(5)).await.unwrap(),
        [k2a],
        "first seen at `from` is inside, at `to` outside"
    );
    assert_eq!(
        s.new_sightings(t + mins(5), m(6)).await.unwrap(),
        std::slice::from_ref(&k1b)
    );

    let sorted = |mut v: Vec<Sighting>| {
        v.sort_by(|x, y| (x.key_id, &x.ip).cmp(&(y.key_id, &y.ip)));
        v
    };
    assert_eq!(
        sorted(s.sightings(&[k1], m(-60)).await.unwrap()),
        sorted(vec![k1a.clone(), k1b.clone(), k1v6.clone()])
    );
    assert_eq!(
        sorted(s.sightings(&[k1, k3], t + secs(40)).await.unwrap()),
        sorted(vec![k1a.clone(), k1b.clone(), k3c.clone()]),
        "last seen at `since` is kept; other keys are not read"
    );
    assert_eq!(s.sightings(&[], m(-60)).await.unwrap(), []);
    assert_eq!(s.sightings(&[KeyId::new()], m(-60)).await.unwrap(), []);

    // Counts of m(0) and m(1) (four), and sightings last seen before m(2) (four) go.
    assert_eq!(s.prune_signals(m(2)).await.unwrap(), 8);
    assert_eq!(
        s.not_found_by_ip(m(-60), m(60), 0).await.unwrap(),
        by_ip(&[(b4, 9), (a, 1)]),
        "the minute at `before` is kept"
    );
    assert_eq!(
        sorted(s.sightings(&[k1, k2, k3], m(-60)).await.unwrap()),
        sorted(vec![k1b, k3c])
    );
    assert_eq!(s.prune_signals(m(2)).await.unwrap(), 0);

    // A full flush is one call: past any store's limit of values per statement.
    const N: u32 = 40_000;
    let ip = |i: u32| IpAddr::from((0x0a00_0000 + i).to_be_bytes()).to_string();
    let many_keys: Vec<KeyId> = (0..N).map(|_| KeyId::new()).collect();
    let counts: Vec<IpCount> = (0..N).map(|i| count(&ip(i), m(10), 1)).collect();
    let sightings: Vec<Sighting> = many_keys
        .iter()
        .zip(0..N)
        .map(|(&key_id, i)| Sighting {
            key_id,
            ip: ip(i),
            first_seen: m(10),
            last_seen: m(10) + TimeDelta::microseconds(i64::from(i)),
        })
        .collect();
    s.record_signals(&counts, &sightings).await.unwrap();
    let read = s.not_found_by_ip(m(10), m(11), 0).await.unwrap();
    assert_eq!(read.len(), N as usize);
    assert!(read.iter().all(|(_, n)| *n == 1));
    assert!(
        read.windows(2).all(|w| w[0].0 < w[1].0),
        "equal counts are ordered by address"
    );
    assert_eq!(
        s.new_sightings(m(10), m(11)).await.unwrap().len(),
        N as usize
    );
    assert_eq!(
        sorted(s.sightings(&many_keys, m(10)).await.unwrap()),
        sorted(sightings.clone()),
        "a long list of keys is read whole"
    );
    assert_eq!(
        s.sightings(
            &many_keys,
            m(10) + TimeDelta::microseconds(i64::from(N) - 1)
        )
        .await
        .unwrap(),
        [sightings[N as usize - 1].clone()]
    );
    // The batch, and the two counts and one sighting left from above.
    assert_eq!(s.prune_signals(m(11)).await.unwrap(), 2 * u64::from(N) + 3);
}
