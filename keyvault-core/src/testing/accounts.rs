//! The account conformance cases, run by [`accounts_suite!`](crate::accounts_suite). Each
//! takes fresh [`Accounts`] and panics on a violation.
#![allow(clippy::unwrap_used, missing_docs)]

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use super::Accounts;
use crate::{
    Actor, AuditEvent, AuditOutcome, AuditQuery, Entity, Error, KeyDigest, KeyHasher, Role,
    SessionRecord, TokenRecord, UserRecord,
};

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn user(name: &str, role: Role) -> UserRecord {
    let at = now();
    UserRecord {
        username: name.into(),
        role,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${name}"),
        enabled: true,
        created_at: at,
        updated_at: at,
    }
}

/// A digest no other call returns.
fn fresh_digest() -> KeyDigest {
    KeyHasher::sha256().digest(&Uuid::now_v7().to_string())
}

fn token(name: &str) -> TokenRecord {
    TokenRecord {
        id: Uuid::now_v7(),
        name: name.into(),
        role: Role::Operator,
        start: "kvt_AbCd".into(),
        digest: fresh_digest(),
        created_at: now(),
        expires_at: Some(now() + TimeDelta::days(30)),
        revoked_at: None,
        created_by: "user:alice".into(),
    }
}

fn session(username: &str, expires_in: TimeDelta) -> SessionRecord {
    SessionRecord {
        digest: fresh_digest(),
        username: username.into(),
        created_at: now(),
        expires_at: now() + expires_in,
    }
}

fn event(action: &str, target: &str) -> AuditEvent {
    AuditEvent::new(
        now(),
        &Actor::named("conformance"),
        action,
        Some(target.into()),
        AuditOutcome::Success,
        json!({ "case": action }),
    )
}

/// How many records of `action` on `target` the log holds.
async fn audited(a: &Accounts, action: &str, target: &str) -> usize {
    let page = a
        .audit
        .list(&AuditQuery {
            action: Some(action.into()),
            target_id: Some(target.into()),
            limit: 1_000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    page.items.len()
}

async fn create_user(a: &Accounts, u: &UserRecord) {
    a.users
        .create_user(u, &[event("user.create", &u.username)])
        .await
        .unwrap();
}

async fn update_user(a: &Accounts, u: &UserRecord) -> crate::Result<()> {
    a.users
        .update_user(u, &[event("user.update", &u.username)])
        .await
}

async fn create_session(a: &Accounts, s: &SessionRecord) {
    a.sessions
        .create_session(s, &[event("session.create", &s.username)])
        .await
        .unwrap();
}

async fn live(a: &Accounts, s: &SessionRecord) -> bool {
    a.sessions.session(&s.digest).await.unwrap().is_some()
}

async fn create_token(a: &Accounts, t: &TokenRecord) {
    a.tokens
        .create_token(t, &[event("token.create", &t.id.to_string())])
        .await
        .unwrap();
}

pub async fn users_are_created_once_and_listed_by_name(a: Accounts) {
    let alice = user("alice", Role::Admin);
    for u in [
        user("bob", Role::Viewer),
        alice.clone(),
        user("carol", Role::Operator),
    ] {
        create_user(&a, &u).await;
    }
    let again = user("alice", Role::Viewer);
    let err = a
        .users
        .create_user(&again, &[event("user.create", "alice")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(a.users.user("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(
        audited(&a, "user.create", "alice").await,
        1,
        "no record of the refusal"
    );
    assert_eq!(a.users.user("nobody").await.unwrap(), None);
    let names: Vec<_> = a
        .users
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);

    let err = update_user(&a, &user("nobody", Role::Viewer))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { entity: Entity::User, id } if id == "nobody"),
        "{err}"
    );
    assert_eq!(audited(&a, "user.update", "nobody").await, 0);
    assert_eq!(a.users.user("nobody").await.unwrap(), None);
    assert!(!format!("{alice:?}").contains(&alice.password_hash));
}

pub async fn updates_replace_the_mutable_fields_only(a: Accounts) {
    create_user(&a, &user("alice", Role::Admin)).await;
    let bob = user("bob", Role::Viewer);
    create_user(&a, &bob).await;
    let changed = UserRecord {
        role: Role::Operator,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$salt$new".into(),
        enabled: false,
        // Not an updatable field: the stored creation time stays.
        created_at: bob.created_at - TimeDelta::days(3),
        updated_at: bob.updated_at + TimeDelta::seconds(5),
        ..bob.clone()
    };
    update_user(&a, &changed).await.unwrap();
    assert_eq!(
        a.users.user("bob").await.unwrap(),
        Some(UserRecord {
            created_at: bob.created_at,
            ..changed.clone()
        })
    );
    assert_eq!(audited(&a, "user.update", "bob").await, 1);
    // Back to enabled: a disabled user is updated like any other.
    let back = UserRecord {
        enabled: true,
        ..changed
    };
    update_user(&a, &back).await.unwrap();
    assert!(a.users.user("bob").await.unwrap().unwrap().enabled);
}

pub async fn the_last_enabled_admin_is_neither_disabled_nor_demoted(a: Accounts) {
    let alice = user("alice", Role::Admin);
    // A disabled admin does not count as one that could take over.
    let dave = UserRecord {
        enabled: false,
        ..user("dave", Role::Admin)
    };
    for u in [&alice, &dave, &user("bob", Role::Operator)] {
        create_user(&a, u).await;
    }
    let alice_session = session("alice", TimeDelta::hours(8));
    create_session(&a, &alice_session).await;
    let disabled = UserRecord {
        enabled: false,
        ..alice.clone()
    };
    let demoted = UserRecord {
        role: Role::Operator,
        ..alice.clone()
    };
    for refused in [&disabled, &demoted] {
        let err = update_user(&a, refused).await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
    }
    assert_eq!(a.users.user("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(audited(&a, "user.update", "alice").await, 0);
    assert!(
        live(&a, &alice_session).await,
        "a refused update ends nothing"
    );
    // Still an enabled admin: a new password is fine.
    let new_password = UserRecord {
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$salt$other".into(),
        ..alice.clone()
    };
    update_user(&a, &new_password).await.unwrap();
    // Users that are not enabled admins change freely.
    update_user(&a, &user("bob", Role::Viewer)).await.unwrap();

    // With a second enabled admin, either may go, but not both.
    create_user(&a, &user("carol", Role::Admin)).await;
    update_user(&a, &demoted).await.unwrap();
    assert_eq!(
        a.users.user("alice").await.unwrap().unwrap().role,
        Role::Operator
    );
    let carol_disabled = UserRecord {
        enabled: false,
        ..user("carol", Role::Admin)
    };
    let err = update_user(&a, &carol_disabled).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    // Enabling dave makes carol's disable possible.
    update_user(
        &a,
        &UserRecord {
            enabled: true,
            ..dave
        },
    )
    .await
    .unwrap();
    update_user(&a, &carol_disabled).await.unwrap();
    let admins: Vec<_> = a
        .users
        .users()
        .await
        .unwrap()
        .into_iter()
        .filter(UserRecord::is_enabled_admin)
        .map(|u| u.username)
        .collect();
    assert_eq!(admins, ["dave"]);
}

pub async fn credential_changes_end_that_users_sessions_only(a: Accounts) {
    let bob = user("bob", Role::Viewer);
    for u in [
        &user("alice", Role::Admin),
        &bob,
        &user("carol", Role::Viewer),
    ] {
        create_user(&a, u).await;
    }
    let others = [
        session("alice", TimeDelta::hours(8)),
        session("carol", TimeDelta::hours(8)),
    ];
    for s in &others {
        create_session(&a, s).await;
    }
    let bobs = [
        session("bob", TimeDelta::hours(8)),
        session("bob", TimeDelta::hours(1)),
    ];
    for s in &bobs {
        create_session(&a, s).await;
    }
    // Only updated_at changes: the sessions stand.
    let touched = UserRecord {
        updated_at: bob.updated_at + TimeDelta::seconds(1),
        ..bob.clone()
    };
    update_user(&a, &touched).await.unwrap();
    for s in &bobs {
        assert!(live(&a, s).await);
    }

    let mut current = touched;
    let changes: [fn(&mut UserRecord); 3] = [
        |u| u.password_hash.push_str("-changed"),
        |u| u.role = Role::Operator,
        |u| u.enabled = false,
    ];
    for (i, change) in changes.into_iter().enumerate() {
        let s = session("bob", TimeDelta::hours(8));
        if current.enabled {
            create_session(&a, &s).await;
        }
        change(&mut current);
        update_user(&a, &current).await.unwrap();
        assert!(!live(&a, &s).await, "change {i} ends bob's session");
        for s in &bobs {
            assert!(!live(&a, s).await, "change {i} ends every session of bob's");
        }
        for s in &others {
            assert!(live(&a, s).await, "change {i} ends no one else's session");
        }
    }
}

pub async fn tokens_are_unique_and_found_by_id_and_digest(a: Accounts) {
    let t = token("ci");
    create_token(&a, &t).await;
    let same_id = TokenRecord {
        digest: fresh_digest(),
        ..t.clone()
    };
    let same_digest = TokenRecord {
        id: Uuid::now_v7(),
        ..t.clone()
    };
    for dup in [&same_id, &same_digest] {
        let err = a
            .tokens
            .create_token(dup, &[event("token.create", &dup.id.to_string())])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
    }
    assert_eq!(audited(&a, "token.create", &t.id.to_string()).await, 1);
    assert_eq!(
        audited(&a, "token.create", &same_digest.id.to_string()).await,
        0
    );
    assert_eq!(a.tokens.token(same_digest.id).await.unwrap(), None);
    assert_eq!(a.tokens.token(t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(
        a.tokens.token_by_digest(&t.digest).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(a.tokens.token(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(
        a.tokens.token_by_digest(&fresh_digest()).await.unwrap(),
        None
    );

    // An expired token is stored and found, and is not active.
    let expired = TokenRecord {
        expires_at: Some(now() - TimeDelta::minutes(1)),
        ..token("expired")
    };
    create_token(&a, &expired).await;
    let found = a
        .tokens
        .token_by_digest(&expired.digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, expired);
    assert!(!found.is_active(now()));
    assert!(t.is_active(now()));
    let forever = TokenRecord {
        expires_at: None,
        ..token("forever")
    };
    create_token(&a, &forever).await;
    assert_eq!(a.tokens.token(forever.id).await.unwrap(), Some(forever));
}

pub async fn revoking_twice_writes_one_record(a: Accounts) {
    let t = token("ci");
    create_token(&a, &t).await;
    let target = t.id.to_string();
    let at = now();
    let revoke = |id: Uuid| {
        let tokens = a.tokens.clone();
        async move {
            tokens
                .revoke_token(id, at, &[event("token.revoke", &id.to_string())])
                .await
                .unwrap()
        }
    };
    assert!(revoke(t.id).await);
    let stored = a.tokens.token(t.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(at));
    assert!(!stored.is_active(at));
    assert!(!revoke(t.id).await, "revoked already");
    assert_eq!(audited(&a, "token.revoke", &target).await, 1);
    // The first revocation's time stays.
    assert_eq!(
        a.tokens.token(t.id).await.unwrap().unwrap().revoked_at,
        Some(at)
    );
    let unknown = Uuid::now_v7();
    assert!(!revoke(unknown).await);
    assert_eq!(audited(&a, "token.revoke", &unknown.to_string()).await, 0);
    // Authentication still finds it, and sees it revoked.
    let by_digest = a.tokens.token_by_digest(&t.digest).await.unwrap().unwrap();
    assert!(!by_digest.is_active(at));
}

pub async fn token_listing_pages_newest_first_without_revoked(a: Accounts) {
    let mut made: Vec<TokenRecord> = (0..5).map(|i| token(&format!("t{i}"))).collect();
    made.sort_by_key(|t| t.id);
    for t in &made {
        create_token(&a, t).await;
    }
    assert!(a.tokens.revoke_token(made[3].id, now(), &[]).await.unwrap());
    let ids = |p: &crate::Page<TokenRecord>| p.items.iter().map(|t| t.id).collect::<Vec<_>>();

    let first = a.tokens.list_tokens(None, 2).await.unwrap();
    assert_eq!(ids(&first), [made[4].id, made[2].id]);
    assert!(first.has_more);
    let second = a.tokens.list_tokens(Some(made[2].id), 2).await.unwrap();
    assert_eq!(ids(&second), [made[1].id, made[0].id]);
    assert!(!second.has_more, "exactly a page left");
    let all = a.tokens.list_tokens(None, 4).await.unwrap();
    assert_eq!(all.items.len(), 4);
    assert!(!all.has_more);
    assert!(a.tokens.list_tokens(None, 3).await.unwrap().has_more);
    let none = a.tokens.list_tokens(Some(made[0].id), 10).await.unwrap();
    assert!(none.items.is_empty() && !none.has_more);
    assert_eq!(first.items[0], made[4], "listed records are whole");

    let every = a.tokens.all_tokens().await.unwrap();
    assert_eq!(
        every.iter().map(|t| t.id).collect::<Vec<_>>(),
        made.iter().map(|t| t.id).collect::<Vec<_>>(),
        "oldest first, the revoked one included"
    );
    assert!(every[3].revoked_at.is_some());
    assert_eq!(every[3].digest, made[3].digest);
}

pub async fn sessions_are_found_ended_and_purged(a: Accounts) {
    create_user(&a, &user("alice", Role::Admin)).await;
    let long = session("alice", TimeDelta::hours(8));
    let gone = session("alice", TimeDelta::hours(-1));
    let short = session("alice", TimeDelta::hours(1));
    for s in [&long, &gone, &short] {
        create_session(&a, s).await;
    }
    assert_eq!(
        a.sessions.session(&long.digest).await.unwrap(),
        Some(long.clone())
    );
    assert!(long.is_active(now()) && !gone.is_active(now()));
    assert_eq!(a.sessions.session(&fresh_digest()).await.unwrap(), None);
    let err = a
        .sessions
        .create_session(&long, &[event("session.create", "dup")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(audited(&a, "session.create", "dup").await, 0);

    let end = |s: &SessionRecord| {
        let (sessions, digest) = (a.sessions.clone(), s.digest);
        async move {
            sessions
                .end_session(&digest, &[event("session.end", "alice")])
                .await
                .unwrap()
        }
    };
    assert!(end(&long).await);
    assert!(!end(&long).await, "ended already");
    assert_eq!(audited(&a, "session.end", "alice").await, 1);
    assert!(!live(&a, &long).await);

    assert_eq!(a.sessions.purge_sessions(now()).await.unwrap(), 1);
    assert!(!live(&a, &gone).await);
    assert!(live(&a, &short).await);
    assert_eq!(a.sessions.purge_sessions(now()).await.unwrap(), 0);

    let end_all = || {
        let sessions = a.sessions.clone();
        async move {
            sessions
                .end_user_sessions("alice", &[event("session.end_all", "alice")])
                .await
                .unwrap()
        }
    };
    assert_eq!(end_all().await, 1);
    assert!(!live(&a, &short).await);
    assert_eq!(end_all().await, 0);
    assert_eq!(audited(&a, "session.end_all", "alice").await, 1);
}

pub async fn sessions_need_an_enabled_user(a: Accounts) {
    // Bob is created disabled; there is no enabled admin at all, which the stores allow.
    create_user(
        &a,
        &UserRecord {
            enabled: false,
            ..user("bob", Role::Viewer)
        },
    )
    .await;
    let unknown = session("nobody", TimeDelta::hours(8));
    let err = a
        .sessions
        .create_session(&unknown, &[event("session.create", "nobody")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { entity: Entity::User, id } if id == "nobody"),
        "{err}"
    );
    let disabled = session("bob", TimeDelta::hours(8));
    let err = a
        .sessions
        .create_session(&disabled, &[event("session.create", "bob")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    for s in [&unknown, &disabled] {
        assert!(!live(&a, s).await);
        assert_eq!(audited(&a, "session.create", &s.username).await, 0);
    }
}

pub async fn the_first_setting_written_wins(a: Accounts) {
    assert_eq!(
        a.settings.setting(crate::SECRET_KEY_SETTING).await.unwrap(),
        None
    );
    let first = a
        .settings
        .setting_or_insert(crate::SECRET_KEY_SETTING, "first")
        .await
        .unwrap();
    let second = a
        .settings
        .setting_or_insert(crate::SECRET_KEY_SETTING, "second")
        .await
        .unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("first", "first"));
    assert_eq!(
        a.audit
            .list(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .items
            .len(),
        0,
        "setting_or_insert is not audited"
    );

    // Instances starting at once: all get the one value that was stored.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let settings = a.settings.clone();
            tokio::spawn(async move {
                settings
                    .setting_or_insert("race", &format!("value-{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let stored = a.settings.setting("race").await.unwrap().unwrap();
    assert!(got.iter().all(|v| *v == stored), "{got:?} vs {stored}");

    a.settings
        .put_setting("race", "replaced", &[event("setting.put", "race")])
        .await
        .unwrap();
    a.settings
        .put_setting("a_first", "1", &[event("setting.put", "a_first")])
        .await
        .unwrap();
    assert_eq!(
        a.settings.setting("race").await.unwrap().as_deref(),
        Some("replaced")
    );
    assert_eq!(audited(&a, "setting.put", "race").await, 1);
    assert_eq!(
        a.settings.settings().await.unwrap(),
        [
            ("a_first".to_owned(), "1".to_owned()),
            ("race".to_owned(), "replaced".to_owned()),
            (crate::SECRET_KEY_SETTING.to_owned(), "first".to_owned()),
        ]
    );
}

pub async fn leases_are_exclusive_renewable_and_lapse(a: Accounts) {
    let l = &a.leases;
    let t0 = now();
    let s = |n: i64| t0 + TimeDelta::seconds(n);
    assert!(l.try_lease("job", "a", t0, s(30)).await.unwrap());
    assert!(
        !l.try_lease("job", "b", t0, s(30)).await.unwrap(),
        "held by a"
    );
    assert!(!l.try_lease("job", "b", s(29), s(60)).await.unwrap());
    assert!(
        l.try_lease("other", "b", t0, s(30)).await.unwrap(),
        "leases are per name"
    );
    // a renews before its lease ends; b cannot take it at the old end.
    assert!(l.try_lease("job", "a", s(20), s(50)).await.unwrap());
    assert!(!l.try_lease("job", "b", s(30), s(60)).await.unwrap());
    // b's release of a's lease does nothing.
    assert!(!l.release_lease("job", "b").await.unwrap());
    assert!(!l.try_lease("job", "b", s(49), s(80)).await.unwrap());
    // a stops renewing: at its end the lease has lapsed and b takes it over.
    assert!(l.try_lease("job", "b", s(50), s(80)).await.unwrap());
    assert!(!l.try_lease("job", "a", s(51), s(80)).await.unwrap());
    assert!(
        !l.release_lease("job", "a").await.unwrap(),
        "a holds it no more"
    );
    assert!(l.release_lease("job", "b").await.unwrap());
    assert!(!l.release_lease("job", "b").await.unwrap());
    // Released: free for anyone, before any lapse.
    assert!(l.try_lease("job", "a", s(52), s(80)).await.unwrap());
    let err = l.try_lease("new", "a", s(52), s(52)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(e) if e.field == "until"),
        "{err}"
    );
    assert!(!l.try_lease("job", "b", s(52), s(53)).await.unwrap());
}

pub async fn account_mutations_are_audited_in_a_valid_chain(a: Accounts) {
    let who = Actor {
        name: "user:root".into(),
        source_ip: Some("192.0.2.7".parse().unwrap()),
        request_id: Some("req-7".into()),
    };
    let ev = |action: &str, target: &str| {
        AuditEvent::new(
            now(),
            &who,
            action,
            Some(target.into()),
            AuditOutcome::Success,
            json!({ "fields": ["role"], "n": 1 }),
        )
    };
    let alice = user("alice", Role::Admin);
    a.users
        .create_user(&alice, &[ev("user.create", "alice")])
        .await
        .unwrap();
    let bob = user("bob", Role::Viewer);
    a.users
        .create_user(&bob, &[ev("user.create", "bob")])
        .await
        .unwrap();
    a.users
        .update_user(
            &UserRecord {
                role: Role::Operator,
                ..bob
            },
            &[ev("user.update", "bob")],
        )
        .await
        .unwrap();
    let t = token("ci");
    a.tokens
        .create_token(&t, &[ev("token.create", "ci")])
        .await
        .unwrap();
    a.tokens
        .revoke_token(t.id, now(), &[ev("token.revoke", "ci")])
        .await
        .unwrap();
    let s = session("alice", TimeDelta::hours(8));
    // Several events in one mutation are all written, in order.
    a.sessions
        .create_session(&s, &[ev("login", "alice"), ev("session.create", "alice")])
        .await
        .unwrap();
    a.sessions
        .end_session(&s.digest, &[ev("session.end", "alice")])
        .await
        .unwrap();
    let s2 = session("alice", TimeDelta::hours(8));
    a.sessions.create_session(&s2, &[]).await.unwrap();
    a.sessions
        .end_user_sessions("alice", &[ev("session.end_all", "alice")])
        .await
        .unwrap();
    a.settings
        .put_setting(
            "retention_days",
            "30",
            &[ev("setting.put", "retention_days")],
        )
        .await
        .unwrap();

    let page = a
        .audit
        .list(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = page
        .items
        .iter()
        .map(|r| {
            (
                r.event.action.as_str(),
                r.event.target_id.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("setting.put", "retention_days"),
            ("session.end_all", "alice"),
            ("session.end", "alice"),
            ("session.create", "alice"),
            ("login", "alice"),
            ("token.revoke", "ci"),
            ("token.create", "ci"),
            ("user.update", "bob"),
            ("user.create", "bob"),
            ("user.create", "alice"),
        ],
        "newest first"
    );
    let first = &page.items.last().unwrap().event;
    assert_eq!(
        (
            first.actor.as_str(),
            first.source_ip,
            first.request_id.as_deref(),
            first.outcome,
            &first.details,
        ),
        (
            "user:root",
            who.source_ip,
            Some("req-7"),
            AuditOutcome::Success,
            &json!({ "fields": ["role"], "n": 1 }),
        )
    );
    let report = a.audit.verify_chain().await.unwrap();
    assert_eq!((report.checked, report.first_broken), (10, None));
    // No password hash, token digest or session digest in the log.
    let text = serde_json::to_string(&page.items).unwrap();
    for secret in [alice.password_hash, t.digest.to_hex(), s.digest.to_hex()] {
        assert!(!text.contains(&secret));
    }
}

/// Audit atomicity on a database that can be made to refuse audit records: after `refuse`
/// (a trigger that fails every insert into the audit table, say), every kind of mutation —
/// a key create and update through [`crate::KeyStore::apply`], a user create and update, a
/// token create and revoke, a setting put, a session create and end — returns an error and
/// changes nothing. After `allow` (the trigger dropped), the same mutations succeed, so it was
/// the refused audit record that stopped them.
///
/// Not part of [`accounts_suite!`](crate::accounts_suite): the in-memory store cannot be made
/// to refuse. `b` and `a` must be the same database.
pub async fn a_refused_audit_changes_nothing(
    b: super::Backends,
    a: Accounts,
    refuse: impl Future<Output = ()>,
    allow: impl Future<Output = ()>,
) {
    let kv = b.keyvault();
    let who = Actor::named("conformance");
    let key = kv
        .create_key(crate::NewKey::new("kept"), &who)
        .await
        .unwrap()
        .record;
    let alice = user("alice", Role::Admin);
    let bob = user("bob", Role::Viewer);
    for u in [&alice, &bob] {
        create_user(&a, u).await;
    }
    let bobs = session("bob", TimeDelta::hours(8));
    create_session(&a, &bobs).await;
    let t = token("ci");
    create_token(&a, &t).await;
    a.settings
        .put_setting(
            "retention_days",
            "30",
            &[event("setting.put", "retention_days")],
        )
        .await
        .unwrap();
    let audit_len = || {
        let audit = a.audit.clone();
        async move { audit.verify_chain().await.unwrap().checked }
    };
    let records = audit_len().await;

    refuse.await;
    let refused = |what: &str, r: crate::Result<()>| match r {
        Err(Error::Backend(_)) => {}
        other => panic!("{what} with its audit record refused: {other:?}"),
    };
    refused(
        "a key create",
        kv.create_key(crate::NewKey::new("refused"), &who)
            .await
            .map(drop),
    );
    refused(
        "a key update",
        kv.set_enabled(key.id, false, &who).await.map(drop),
    );
    let carol = user("carol", Role::Operator);
    refused(
        "a user create",
        a.users
            .create_user(&carol, &[event("user.create", "carol")])
            .await,
    );
    let bob_changed = UserRecord {
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$salt$new".into(),
        ..bob.clone()
    };
    refused("a user update", update_user(&a, &bob_changed).await);
    let t2 = token("refused");
    refused(
        "a token create",
        a.tokens
            .create_token(&t2, &[event("token.create", "refused")])
            .await,
    );
    refused(
        "a token revoke",
        a.tokens
            .revoke_token(t.id, now(), &[event("token.revoke", "ci")])
            .await
            .map(drop),
    );
    refused(
        "a setting put",
        a.settings
            .put_setting(
                "retention_days",
                "7",
                &[event("setting.put", "retention_days")],
            )
            .await,
    );
    let new_session = session("bob", TimeDelta::hours(8));
    refused(
        "a session create",
        a.sessions
            .create_session(&new_session, &[event("session.create", "bob")])
            .await,
    );
    refused(
        "a session end",
        a.sessions
            .end_session(&bobs.digest, &[event("session.end", "bob")])
            .await
            .map(drop),
    );
    refused(
        "ending a user's sessions",
        a.sessions
            .end_user_sessions("bob", &[event("session.end_all", "bob")])
            .await
            .map(drop),
    );

    // Nothing changed.
    let listed = kv
        .list_keys(&crate::KeyQuery {
            limit: 10,
            ..crate::KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.items,
        std::slice::from_ref(&key),
        "no key created, none changed"
    );
    assert_eq!(b.store.get(key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(a.users.users().await.unwrap(), [alice, bob.clone()]);
    assert!(live(&a, &bobs).await, "the refused update ended no session");
    assert_eq!(
        a.tokens.all_tokens().await.unwrap(),
        std::slice::from_ref(&t)
    );
    assert_eq!(
        a.settings
            .setting("retention_days")
            .await
            .unwrap()
            .as_deref(),
        Some("30")
    );
    assert!(!live(&a, &new_session).await);
    assert_eq!(audit_len().await, records);

    // Allowed again, the same mutations go through.
    allow.await;
    kv.set_enabled(key.id, false, &who).await.unwrap();
    a.users
        .create_user(&carol, &[event("user.create", "carol")])
        .await
        .unwrap();
    update_user(&a, &bob_changed).await.unwrap();
    assert!(!live(&a, &bobs).await);
    assert!(
        a.tokens
            .revoke_token(t.id, now(), &[event("token.revoke", "ci")])
            .await
            .unwrap()
    );
    a.settings
        .put_setting(
            "retention_days",
            "7",
            &[event("setting.put", "retention_days")],
        )
        .await
        .unwrap();
    a.sessions
        .create_session(&new_session, &[event("session.create", "bob")])
        .await
        .unwrap();
    assert_eq!(audit_len().await, records + 6);
    assert_eq!(a.audit.verify_chain().await.unwrap().first_broken, None);
}

fn rule(name: &str) -> crate::AlertRule {
    crate::AlertRule {
        id: Uuid::now_v7(),
        name: name.into(),
        kind: "error_rate".into(),
        params: json!({"above": 0.5, "window": "5m", "min_calls": 10}),
        key_id: None,
        owner_id: None,
        enabled: true,
        created_at: now(),
        updated_at: now(),
    }
}

fn alert(rule: &crate::AlertRule, key: crate::KeyId) -> crate::Alert {
    crate::Alert {
        id: Uuid::now_v7(),
        rule_id: rule.id,
        kind: rule.kind.clone(),
        key_id: Some(key),
        ip: None,
        state: crate::AlertState::Firing,
        value: 0.75,
        threshold: 0.5,
        summary: "errors".into(),
        started_at: now(),
        acknowledged_at: None,
        resolved_at: None,
        last_seen_at: now(),
        quiet_since: None,
    }
}

pub async fn alerts_keep_one_open_alert_per_rule_and_subject(a: Accounts) {
    use crate::{AlertQuery, AlertState};
    let s = &a.alerts;
    let r = rule("errors");
    s.create_rule(&r, &[event("alert_rule.create", &r.id.to_string())])
        .await
        .unwrap();
    let dup = s.create_rule(&r, &[]).await.unwrap_err();
    assert!(matches!(dup, Error::Conflict(_)), "{dup}");
    let (k1, k2) = (crate::KeyId::new(), crate::KeyId::new());
    let first = alert(&r, k1);
    let other = alert(&r, k2);
    s.save_alerts(&[first.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(s.firing_count().await.unwrap(), 2);
    // A second open alert for the same rule and key is refused, and nothing is written.
    let again = alert(&r, k1);
    let third = alert(&r, crate::KeyId::new());
    let channel = notifier("alerts", now());
    a.notifiers.create_notifier(&channel, &[]).await.unwrap();
    let notice = delivery(&channel, now(), now());
    let err = s
        .save_transitions(&[third.clone(), again], std::slice::from_ref(&notice))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(s.alert(third.id).await.unwrap().is_none(), "all or nothing");
    let queued = a.notifiers.deliveries(channel.id, 10).await.unwrap();
    assert!(queued.is_empty(), "no notice for an alert not stored");
    // Acknowledging: once, audited once; again changes nothing.
    let ack = s
        .acknowledge(
            first.id,
            now(),
            &[event("alert.ack", &first.id.to_string())],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.state, AlertState::Acknowledged);
    assert!(ack.acknowledged_at.is_some());
    let twice = s
        .acknowledge(
            first.id,
            now(),
            &[event("alert.ack", &first.id.to_string())],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(twice, ack);
    assert_eq!(audited(&a, "alert.ack", &first.id.to_string()).await, 1);
    assert!(
        s.acknowledge(Uuid::now_v7(), now(), &[])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.firing_count().await.unwrap(), 1);
    // Resolved, the subject may fire again: history keeps both.
    let mut resolved = ack.clone();
    resolved.state = AlertState::Resolved;
    resolved.resolved_at = Some(now());
    let reopened = alert(&r, k1);
    s.save_alerts(&[resolved.clone(), reopened.clone()])
        .await
        .unwrap();
    let open: Vec<Uuid> = s
        .open_alerts()
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(open.len(), 2);
    assert!(open.contains(&reopened.id) && open.contains(&other.id));
    // Listings: newest first, filtered, paged by `before`.
    let all = s
        .alerts(&AlertQuery {
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<Uuid> = all.iter().map(|a| a.id).collect();
    assert_eq!(ids, [reopened.id, other.id, first.id]);
    assert_eq!(all[2], resolved, "stored whole");
    let of_k1 = s
        .alerts(&AlertQuery {
            key_id: Some(k1),
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(of_k1.len(), 2);
    let resolved_only = s
        .alerts(&AlertQuery {
            state: Some(AlertState::Resolved),
            rule_id: Some(r.id),
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(resolved_only.len(), 1);
    let page = s
        .alerts(&AlertQuery {
            before: Some(reopened.id),
            limit: 1,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|a| a.id).collect::<Vec<_>>(), [other.id]);
}

pub async fn alert_rules_are_replaced_and_deleted_with_their_alerts_resolved(a: Accounts) {
    use crate::{AlertState, Baseline};
    let s = &a.alerts;
    let mut r = rule("first");
    let later = rule("second");
    s.create_rule(&r, &[]).await.unwrap();
    s.create_rule(&later, &[]).await.unwrap();
    r.name = "renamed".into();
    r.enabled = false;
    r.params = json!({"above": 0.9, "window": "1h", "min_calls": 1});
    assert!(
        s.update_rule(&r, &[event("alert_rule.update", &r.id.to_string())])
            .await
            .unwrap()
    );
    assert_eq!(s.rule(r.id).await.unwrap().unwrap(), r);
    let names: Vec<String> = s
        .rules()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["renamed", "second"], "oldest first");
    let missing = rule("missing");
    assert!(!s.update_rule(&missing, &[]).await.unwrap());
    assert!(s.rule(missing.id).await.unwrap().is_none());

    let key = crate::KeyId::new();
    let through = now();
    let b = Baseline {
        key_id: key,
        mean: 12.5,
        windows: 3,
        through,
    };
    s.save_baselines(r.id, &[b]).await.unwrap();
    let moved = Baseline {
        mean: 10.0,
        windows: 4,
        ..b
    };
    s.save_baselines(r.id, &[moved]).await.unwrap();
    assert_eq!(s.baselines(r.id).await.unwrap(), [moved]);
    assert!(s.baselines(later.id).await.unwrap().is_empty());

    let open = alert(&r, key);
    s.save_alerts(std::slice::from_ref(&open)).await.unwrap();
    let at = now();
    assert!(
        s.delete_rule(r.id, at, &[event("alert_rule.delete", &r.id.to_string())])
            .await
            .unwrap()
    );
    assert!(!s.delete_rule(r.id, at, &[]).await.unwrap());
    assert!(s.rule(r.id).await.unwrap().is_none());
    assert!(s.baselines(r.id).await.unwrap().is_empty());
    let kept = s.alert(open.id).await.unwrap().unwrap();
    assert_eq!(kept.state, AlertState::Resolved, "history stays, resolved");
    assert_eq!(kept.resolved_at, Some(at));
    assert_eq!(audited(&a, "alert_rule.delete", &r.id.to_string()).await, 1);
}

fn notifier(name: &str, created_at: DateTime<Utc>) -> crate::NotifierRecord {
    crate::NotifierRecord {
        id: Uuid::now_v7(),
        name: name.into(),
        kind: "webhook".into(),
        url: format!("https://hooks.example.com/{name}"),
        secret: Some(format!("whsec_{name}")),
        events: vec!["alert.firing".into(), "alert.resolved".into()],
        created_at,
    }
}

fn delivery(
    n: &crate::NotifierRecord,
    next_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
) -> crate::Delivery {
    let id = format!("msg_{}", Uuid::now_v7());
    crate::Delivery {
        body: json!({"type": "alert.firing", "id": id}).to_string(),
        id,
        notifier_id: n.id,
        event: "alert.firing".into(),
        attempts: 0,
        next_at,
        state: crate::DeliveryState::Pending,
        last_status: None,
        last_error: None,
        created_at,
        updated_at: created_at,
    }
}

fn ids(ds: &[crate::Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.id.as_str()).collect()
}

pub async fn notifiers_are_created_listed_and_deleted_with_their_deliveries(a: Accounts) {
    use crate::DeliveryState;
    let s = &a.notifiers;
    let at = now();
    let late = notifier("late", at);
    // Made second, with the larger id, but the older channel: listings go by creation time.
    let early = crate::NotifierRecord {
        kind: "slack".into(),
        secret: None,
        events: vec![],
        ..notifier("early", at - TimeDelta::hours(1))
    };
    for n in [&late, &early] {
        s.create_notifier(n, &[event("notifier.create", &n.id.to_string())])
            .await
            .unwrap();
    }
    let dup = crate::NotifierRecord {
        name: "again".into(),
        ..late.clone()
    };
    let err = s
        .create_notifier(&dup, &[event("notifier.create", &late.id.to_string())])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(
        audited(&a, "notifier.create", &late.id.to_string()).await,
        1,
        "the refused create wrote no audit record"
    );
    assert_eq!(s.notifier(late.id).await.unwrap(), Some(late.clone()));
    assert_eq!(s.notifier(early.id).await.unwrap(), Some(early.clone()));
    assert!(s.notifier(Uuid::now_v7()).await.unwrap().is_none());
    assert_eq!(s.notifiers().await.unwrap(), [early.clone(), late.clone()]);

    let past = at - TimeDelta::minutes(1);
    let pending = delivery(&late, past, past);
    let delivered = crate::Delivery {
        state: DeliveryState::Delivered,
        attempts: 1,
        last_status: Some(200),
        ..delivery(&late, past, past)
    };
    let kept = delivery(&early, past, past);
    s.enqueue(&[pending.clone(), delivered.clone(), kept.clone()])
        .await
        .unwrap();
    assert_eq!(s.deliveries(late.id, 10).await.unwrap().len(), 2);

    assert!(
        s.delete_notifier(late.id, &[event("notifier.delete", &late.id.to_string())])
            .await
            .unwrap()
    );
    assert!(s.notifier(late.id).await.unwrap().is_none());
    assert!(s.deliveries(late.id, 10).await.unwrap().is_empty());
    assert_eq!(
        s.due_deliveries(at, 10).await.unwrap(),
        std::slice::from_ref(&kept),
        "the deleted channel's pending delivery is gone, the other channel's stays"
    );
    assert_eq!(s.deliveries(early.id, 10).await.unwrap(), [kept]);
    assert_eq!(s.notifiers().await.unwrap(), [early]);
    assert_eq!(
        audited(&a, "notifier.delete", &late.id.to_string()).await,
        1
    );
    // Absent: false, and nothing audited.
    assert!(
        !s.delete_notifier(late.id, &[event("notifier.delete", &late.id.to_string())])
            .await
            .unwrap()
    );
    assert_eq!(
        audited(&a, "notifier.delete", &late.id.to_string()).await,
        1
    );
    assert_eq!(a.audit.verify_chain().await.unwrap().first_broken, None);
}

pub async fn the_outbox_hands_out_due_deliveries_in_order_and_keeps_their_attempts(a: Accounts) {
    use crate::DeliveryState;
    let s = &a.notifiers;
    let at = now();
    let n = notifier("ops", at - TimeDelta::hours(1));
    let other = notifier("other", at - TimeDelta::hours(1));
    for c in [&n, &other] {
        s.create_notifier(c, &[]).await.unwrap();
    }
    let base = at - TimeDelta::minutes(1);
    let secs = TimeDelta::seconds;
    // Made in this order (ids ascending); due in the order of `next_at`.
    let d1 = delivery(&n, base - secs(10), base);
    let d2 = delivery(&n, base - secs(5), base + secs(1));
    let d3 = delivery(&n, base, base + secs(2));
    let d4 = delivery(&n, base + secs(1), base + secs(3));
    let later = delivery(&n, at + TimeDelta::hours(1), base + secs(4));
    // Due long ago, but done: never handed out again.
    let delivered = crate::Delivery {
        state: DeliveryState::Delivered,
        attempts: 1,
        last_status: Some(204),
        ..delivery(&n, base - secs(20), base)
    };
    let gave_up = crate::Delivery {
        state: DeliveryState::GaveUp,
        attempts: 8,
        last_status: None,
        last_error: Some("connection refused".into()),
        ..delivery(&n, base - secs(30), base)
    };
    let elsewhere = delivery(&other, base + secs(2), base + secs(5));
    s.enqueue(&[
        d3.clone(),
        later.clone(),
        d1.clone(),
        delivered.clone(),
        gave_up.clone(),
        elsewhere.clone(),
    ])
    .await
    .unwrap();
    // A second enqueue of d1 (an event written twice) keeps the first; d2 and d4 are new.
    let d1_again = crate::Delivery {
        body: "{}".into(),
        attempts: 3,
        ..d1.clone()
    };
    s.enqueue(&[d2.clone(), d1_again, d4.clone()])
        .await
        .unwrap();
    s.enqueue(&[]).await.unwrap();

    let due = s.due_deliveries(at, 100).await.unwrap();
    assert_eq!(
        ids(&due),
        ids(&[
            d1.clone(),
            d2.clone(),
            d3.clone(),
            d4.clone(),
            elsewhere.clone()
        ])
    );
    assert_eq!(due[0], d1, "stored whole, the first enqueue kept");
    assert_eq!(due[3], d4);
    assert_eq!(
        ids(&s.due_deliveries(at, 2).await.unwrap()),
        ids(&[d1.clone(), d2.clone()])
    );
    // `next_at <= now`: d2 is due at its own `next_at`, d3 not yet.
    assert_eq!(
        ids(&s.due_deliveries(d2.next_at, 100).await.unwrap()),
        ids(&[d1.clone(), d2.clone()])
    );
    assert!(s.due_deliveries(at, 0).await.unwrap().is_empty());

    // An attempt failed: retried later, with its status and error kept.
    let failed = crate::Delivery {
        attempts: 1,
        next_at: at + TimeDelta::minutes(5),
        last_status: Some(503),
        last_error: Some("HTTP 503".into()),
        updated_at: at,
        ..d1.clone()
    };
    assert!(s.update_delivery(&failed).await.unwrap());
    // Then delivered: the status changes, the error goes.
    let done = crate::Delivery {
        attempts: 2,
        state: DeliveryState::Delivered,
        last_status: Some(200),
        last_error: None,
        updated_at: at + secs(1),
        ..gave_up.clone()
    };
    assert!(s.update_delivery(&done).await.unwrap());
    // Only the attempt's fields change: the body is fixed when the event happens.
    let d2_given_up = crate::Delivery {
        attempts: 8,
        state: DeliveryState::GaveUp,
        next_at: at + secs(30),
        last_status: Some(500),
        last_error: Some("HTTP 500".into()),
        updated_at: at + secs(2),
        ..d2.clone()
    };
    let rewritten = crate::Delivery {
        event: "key.rotated".into(),
        body: "{}".into(),
        created_at: at,
        ..d2_given_up.clone()
    };
    assert!(s.update_delivery(&rewritten).await.unwrap());
    assert_eq!(
        ids(&s.due_deliveries(at, 100).await.unwrap()),
        ids(&[d3.clone(), d4.clone(), elsewhere.clone()])
    );
    assert_eq!(
        ids(&s
            .due_deliveries(at + TimeDelta::minutes(5), 100)
            .await
            .unwrap()),
        ids(&[d3.clone(), d4.clone(), elsewhere.clone(), failed.clone()])
    );

    // Newest first by creation; of the three made at `base`, the larger id first.
    let listed = s.deliveries(n.id, 100).await.unwrap();
    assert_eq!(
        listed,
        [
            later.clone(),
            d4.clone(),
            d3.clone(),
            d2_given_up,
            done,
            delivered,
            failed,
        ]
    );
    assert_eq!(
        ids(&s.deliveries(n.id, 3).await.unwrap()),
        ids(&[later, d4, d3.clone()])
    );
    assert_eq!(s.deliveries(other.id, 100).await.unwrap(), [elsewhere]);
    assert!(s.deliveries(Uuid::now_v7(), 100).await.unwrap().is_empty());

    // Gone with its channel (or never there): nothing to update.
    assert!(s.delete_notifier(n.id, &[]).await.unwrap());
    assert!(!s.update_delivery(&d3).await.unwrap());
    let unknown = delivery(&other, at, at);
    assert!(!s.update_delivery(&unknown).await.unwrap());
    assert_eq!(s.deliveries(other.id, 100).await.unwrap().len(), 1);
}
