//! The sign-in guard (CONTRACT §6): 10 failed sign-ins for one username within 15 minutes
//! lock it for 15 minutes, whether or not the user exists; more than 30 attempts a minute
//! from one address are refused. Kept in this instance's memory, bounded.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failures that lock a username.
pub(crate) const MAX_FAILURES: usize = 10;
/// The window failures are counted in, and how long a lock lasts.
pub(crate) const LOCK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Attempts one address may make per minute.
pub(crate) const MAX_ATTEMPTS_PER_IP: usize = 30;
const IP_WINDOW: Duration = Duration::from_secs(60);
/// Usernames and addresses tracked at most; past it the oldest quiet ones are dropped, so a
/// flood of made-up names costs bounded memory.
const MAX_TRACKED: usize = 50_000;

/// What the guard says of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on and check the password.
    Proceed,
    /// The address made too many attempts; retry after this long.
    Throttled(Duration),
    /// The username is locked for this long still.
    Locked(Duration),
}

#[derive(Debug, Default)]
struct Track {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    names: HashMap<String, Track>,
    ips: HashMap<IpAddr, VecDeque<Instant>>,
}

/// The counters of one instance.
#[derive(Debug, Default)]
pub(crate) struct SignInGuard {
    state: Mutex<State>,
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
}

impl SignInGuard {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an attempt from `ip` for `username` and says whether it may go on.
    pub(crate) fn attempt(&self, ip: Option<IpAddr>, username: &str, now: Instant) -> Verdict {
        let mut s = self.state();
        if let Some(ip) = ip {
            if s.ips.len() >= MAX_TRACKED && !s.ips.contains_key(&ip) {
                s.ips.retain(|_, q| {
                    prune(q, now, IP_WINDOW);
                    !q.is_empty()
                });
            }
            let q = s.ips.entry(ip).or_default();
            prune(q, now, IP_WINDOW);
            if q.len() >= MAX_ATTEMPTS_PER_IP {
                let retry = q.front().map_or(IP_WINDOW, |t| {
                    IP_WINDOW.saturating_sub(now.duration_since(*t))
                });
                return Verdict::Throttled(retry.max(Duration::from_secs(1)));
            }
            q.push_back(now);
        }
        match s.names.get(username).and_then(|t| t.locked_until) {
            Some(until) if until > now => Verdict::Locked(until - now),
            _ => Verdict::Proceed,
        }
    }

    /// Counts a failed sign-in; `true` when it locks the username.
    pub(crate) fn failed(&self, username: &str, now: Instant) -> bool {
        let mut s = self.state();
        if s.names.len() >= MAX_TRACKED && !s.names.contains_key(username) {
            s.names.retain(|_, t| {
                prune(&mut t.failures, now, LOCK_WINDOW);
                !t.failures.is_empty() || t.locked_until.is_some_and(|u| u > now)
            });
        }
        let t = s.names.entry(username.to_owned()).or_default();
        prune(&mut t.failures, now, LOCK_WINDOW);
        t.failures.push_back(now);
        if t.failures.len() >= MAX_FAILURES {
            t.failures.clear();
            t.locked_until = Some(now + LOCK_WINDOW);
            return true;
        }
        false
    }

    /// A successful sign-in clears the username's failures.
    pub(crate) fn succeeded(&self, username: &str) {
        self.state().names.remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_lock_a_name_for_fifteen_minutes() {
        let g = SignInGuard::default();
        let t0 = Instant::now();
        for i in 0..9 {
            assert_eq!(g.attempt(None, "alice", t0), Verdict::Proceed);
            assert!(!g.failed("alice", t0 + Duration::from_secs(i)));
        }
        assert!(g.failed("alice", t0 + Duration::from_secs(10)));
        assert!(matches!(
            g.attempt(None, "alice", t0 + Duration::from_secs(60)),
            Verdict::Locked(_)
        ));
        // Another name is not locked; the lock ends after 15 minutes.
        assert_eq!(g.attempt(None, "bob", t0), Verdict::Proceed);
        assert_eq!(
            g.attempt(None, "alice", t0 + Duration::from_secs(10) + LOCK_WINDOW),
            Verdict::Proceed
        );
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let g = SignInGuard::default();
        let t0 = Instant::now();
        for _ in 0..9 {
            g.failed("alice", t0);
        }
        assert!(!g.failed("alice", t0 + LOCK_WINDOW));
        g.succeeded("alice");
        for _ in 0..9 {
            assert!(!g.failed("alice", t0 + LOCK_WINDOW));
        }
    }

    #[test]
    fn an_address_gets_thirty_attempts_a_minute() {
        let g = SignInGuard::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..30 {
            assert_eq!(g.attempt(Some(ip), &format!("u{i}"), t0), Verdict::Proceed);
        }
        assert!(matches!(
            g.attempt(Some(ip), "x", t0),
            Verdict::Throttled(_)
        ));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(g.attempt(Some(other), "x", t0), Verdict::Proceed);
        assert_eq!(g.attempt(Some(ip), "x", t0 + IP_WINDOW), Verdict::Proceed);
    }
}
