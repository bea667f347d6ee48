//! CONTRACT §3's PATCH: each given field replaces the stored one whole, `null` clears it, a
//! refused change changes nothing; sequences of them against a model of the record.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{
    Actor, Clock, Credits, Error, FakeClock, HumanDuration, KeyPatch, KeyRecord, Keyvault,
    MAX_CREDITS, NewKey, Outcome, RateLimit, RotationPolicy, VerifyRequest, ipnet::IpNet,
    memory::MemoryStore,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::model::at;

/// The fields PATCH may change, as the model keeps them.
#[derive(Debug, Clone, PartialEq)]
struct Fields {
    name: String,
    owner_id: Option<String>,
    enabled: bool,
    expires_at: Option<DateTime<Utc>>,
    credits: Option<Credits>,
    ratelimits: Vec<RateLimit>,
    scopes: Vec<String>,
    ip_allowlist: Vec<IpNet>,
    metadata: Map<String, Value>,
    rotation: Option<RotationPolicy>,
}

impl Fields {
    fn of(r: &KeyRecord) -> Self {
        Self {
            name: r.name.clone(),
            owner_id: r.owner_id.clone(),
            enabled: r.enabled,
            expires_at: r.expires_at,
            credits: r.credits,
            ratelimits: r.ratelimits.clone(),
            scopes: r.scopes.clone(),
            ip_allowlist: r.ip_allowlist.clone(),
            metadata: r.metadata.clone(),
            rotation: r.rotation,
        }
    }

    /// The patch applied whole, field by field.
    fn apply(&mut self, p: &KeyPatch) {
        let p = p.clone();
        if let Some(v) = p.name {
            self.name = v;
        }
        if let Some(v) = p.owner_id {
            self.owner_id = v;
        }
        if let Some(v) = p.enabled {
            self.enabled = v;
        }
        if let Some(v) = p.expires_at {
            self.expires_at = v;
        }
        if let Some(v) = p.credits {
            self.credits = v;
        }
        if let Some(v) = p.ratelimits {
            self.ratelimits = v;
        }
        if let Some(v) = p.scopes {
            self.scopes = v;
        }
        if let Some(v) = p.ip_allowlist {
            self.ip_allowlist = v;
        }
        if let Some(v) = p.metadata {
            self.metadata = v;
        }
        if let Some(v) = p.rotation {
            self.rotation = v;
        }
    }
}

/// Whether the contract refuses the patch: a blank name or an empty owner, credits beyond
/// 2⁵³−1, two rate limits of one name, an empty scope or one with a space, a rotation more
/// often than every second.
fn refused(p: &KeyPatch) -> bool {
    let name = p.name.as_ref().is_some_and(|n| n.trim().is_empty());
    let owner = matches!(&p.owner_id, Some(Some(o)) if o.is_empty());
    let credits = matches!(p.credits, Some(Some(c))
        if c.remaining > MAX_CREDITS || c.refill.is_some_and(|r| r.amount > MAX_CREDITS));
    let limits = p.ratelimits.as_ref().is_some_and(|ls| {
        ls.iter()
            .enumerate()
            .any(|(i, l)| ls[..i].iter().any(|o| o.name() == l.name()))
    });
    let scopes = p
        .scopes
        .as_ref()
        .is_some_and(|ss| ss.iter().any(|s| s.is_empty() || s.contains(' ')));
    let rotation =
        matches!(p.rotation, Some(Some(r)) if r.every.get() < std::time::Duration::from_secs(1));
    name || owner || credits || limits || scopes || rotation
}

fn field<T: std::fmt::Debug + Clone>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    // Each field is given in about a third of the patches.
    prop_oneof![2 => Just(None), 1 => value.prop_map(Some)]
}

fn nullable<T: std::fmt::Debug + Clone>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Option<T>>> {
    field(prop_oneof![1 => Just(None), 3 => value.prop_map(Some)])
}

fn ratelimit() -> impl Strategy<Value = RateLimit> {
    (
        proptest::sample::select(vec!["burst", "minute", "day"]),
        1..=100u64,
        1_000..=86_400_000u64,
    )
        .prop_map(|(n, l, p)| RateLimit::new(n, l, p).unwrap())
}

fn patch(now: DateTime<Utc>) -> impl Strategy<Value = KeyPatch> {
    let name = prop_oneof![5 => "[a-z][a-z -]{0,11}", 1 => Just("  ".to_owned())];
    let owner = prop_oneof![5 => "[a-z0-9]{1,8}", 1 => Just(String::new())];
    let expiry = (-3_600i64..86_400 * 30).prop_map(move |s| now + TimeDelta::seconds(s));
    let credits =
        (prop_oneof![5 => 0..=1_000u64, 1 => Just(MAX_CREDITS), 1 => Just(MAX_CREDITS + 1)],)
            .prop_map(|(remaining,)| Credits::new(remaining));
    let scope =
        prop_oneof![8 => "[a-z:]{1,8}", 1 => Just(String::new()), 1 => Just("a b".to_owned())];
    let net = proptest::sample::select(vec![
        "10.0.0.0/8",
        "192.0.2.1/32",
        "2001:db8::/32",
        "::1/128",
    ])
    .prop_map(|n| n.parse::<IpNet>().unwrap());
    let metadata = proptest::collection::btree_map("[a-z]{1,4}", 0..100i64, 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect::<Map<_, _>>()
    });
    let every = proptest::sample::select(vec![500u64, 1_000, 3_600_000, 2_592_000_000]);
    let rotation = (
        every,
        proptest::sample::select(vec![0u64, 60_000, 86_400_000]),
    )
        .prop_map(|(e, g)| RotationPolicy {
            every: HumanDuration::new(std::time::Duration::from_millis(e)),
            grace: HumanDuration::new(std::time::Duration::from_millis(g)),
        });
    (
        (
            field(name),
            nullable(owner),
            field(any::<bool>()),
            nullable(expiry),
            nullable(credits),
        ),
        (
            field(proptest::collection::vec(ratelimit(), 0..3)),
            field(proptest::collection::vec(scope, 0..3)),
            field(proptest::collection::vec(net, 0..3)),
            field(metadata),
            nullable(rotation),
        ),
    )
        .prop_map(
            |(
                (name, owner_id, enabled, expires_at, credits),
                (ratelimits, scopes, ip_allowlist, metadata, rotation),
            )| {
                KeyPatch {
                    name,
                    owner_id,
                    enabled,
                    expires_at,
                    credits,
                    ratelimits,
                    scopes,
                    ip_allowlist,
                    metadata,
                    rotation,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Wait(i64),
    Patch(Box<KeyPatch>),
}

fn start() -> DateTime<Utc> {
    at(1_767_225_600, 0)
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![1 => (0..7_200i64).prop_map(Op::Wait), 4 => patch(start()).prop_map(|p| Op::Patch(Box::new(p)))],
        1..25,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `Keyvault::update_key` on the memory store: after each PATCH the stored record is the
    /// model's (given fields replaced whole, nulls cleared, `updated_at` now, the revision one
    /// more, the next rotation `every` from now when the period changes, kept when only the
    /// grace does); a refused PATCH is an invalid-input error
    /// and changes nothing; and a pure verification (cost 0) answers by the new record:
    /// DISABLED, EXPIRED or VALID, with the new credits' balance and every limit full.
    #[test]
    fn patch_sequences_match_the_record_model(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let clock = FakeClock::new(start());
        let store = Arc::new(MemoryStore::new());
        let kv = Keyvault::builder()
            .backend(store)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        let created = rt.block_on(kv.create_key(NewKey::new("first"), &Actor::library())).unwrap();
        let (id, key) = (created.record.id, created.key.expose().to_owned());
        let mut model = Fields::of(&created.record);
        let (mut revision, mut updated_at) = (created.record.revision, created.record.updated_at);
        let mut next_rotation_at = created.record.next_rotation_at;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Wait(s) => clock.advance(TimeDelta::seconds(s)),
                Op::Patch(p) => {
                    let got = rt.block_on(kv.update_key(id, (*p).clone(), &Actor::library()));
                    if refused(&p) {
                        prop_assert!(matches!(got, Err(Error::Invalid(_))), "step {}: {:?}", i, got);
                    } else {
                        let r = got.unwrap();
                        let before = model.rotation;
                        model.apply(&p);
                        revision += 1;
                        updated_at = clock.now();
                        if let Some(rot) = p.rotation {
                            // A new period starts now; a changed grace alone keeps the date.
                            let same = matches!((before, rot), (Some(o), Some(n)) if o.every == n.every);
                            if !same {
                                next_rotation_at = rot.map(|r| clock.now() + r.every.as_delta());
                            }
                        }
                        prop_assert_eq!(Fields::of(&r), model.clone(), "step {}", i);
                    }
                }
            }
            let r = rt.block_on(kv.get_key(id)).unwrap();
            prop_assert_eq!(Fields::of(&r), model.clone(), "stored, step {}", i);
            prop_assert_eq!((r.revision, r.updated_at, r.next_rotation_at), (revision, updated_at, next_rotation_at));
            let v = rt.block_on(kv.verify(&VerifyRequest::new(&key).cost(0))).unwrap();
            let want = if !model.enabled {
                Outcome::Disabled
            } else if model.expires_at.is_some_and(|t| t <= clock.now()) {
                Outcome::Expired
            } else if !model.ip_allowlist.is_empty() {
                Outcome::Forbidden
            } else {
                Outcome::Valid
            };
            prop_assert_eq!(v.outcome, want, "verify, step {}", i);
            prop_assert_eq!(v.credits_remaining, model.credits.map(|c| c.remaining));
            let full: Vec<(String, u64)> = model
                .ratelimits
                .iter()
                .map(|l| (l.name().to_owned(), u64::from(l.limit())))
                .collect();
            let states: Vec<(String, u64)> =
                v.ratelimits.iter().map(|s| (s.name.clone(), s.remaining)).collect();
            prop_assert_eq!(states, full);
        }
    }
}
