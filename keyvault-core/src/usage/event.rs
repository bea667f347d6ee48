//! [`UsageEvent`] and the text types it repeats on every request.

use std::{
    borrow::Borrow,
    fmt,
    ops::Deref,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::{model::KeyId, outcome::Outcome};

/// One request (or one verification) as seen by usage statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique per request: a sink counts an id once, however often it is written.
    pub request_id: RequestId,
    /// The key used, when one was found.
    pub key_id: Option<KeyId>,
    /// The key's owner.
    pub owner_id: Option<String>,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// Provider label (`openai`, `demo`…).
    pub provider: Option<Label>,
    /// Route template (`/v1/chat`), never the raw path.
    pub route: Option<Label>,
    /// HTTP method.
    pub method: Option<Label>,
    /// Response status.
    pub status: u16,
    /// Response time in microseconds.
    pub latency_us: u64,
    /// Verification outcome.
    pub outcome: Option<Outcome>,
    /// Credits spent.
    pub cost: u64,
}

impl UsageEvent {
    /// Success for statistics: a status in 200–399.
    pub fn is_success(&self) -> bool {
        (200..400).contains(&self.status)
    }
}

/// The impls of an immutable text type over [`SmolStr`]: text of up to 23 bytes is kept
/// inline, so making, cloning and dropping one neither allocates nor touches a shared counter
/// (longer text shares one allocation between clones). `$s => $text` reads the text of `$s`;
/// `$t => $make` makes a value of the SmolStr `$t`.
macro_rules! text_impls {
    ($name:ident, $s:ident => $text:expr, $t:ident => $make:expr) => {
        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                let $s = self;
                $text
            }

            fn of_text($t: SmolStr) -> Self {
                $make
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::of_text(SmolStr::new(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::of_text(SmolStr::from(s))
            }
        }

        impl From<Arc<str>> for $name {
            fn from(s: Arc<str>) -> Self {
                Self::of_text(SmolStr::from(&*s))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

/// An immutable string for the few distinct values a usage event repeats on every request
/// (provider, route template, method): short ones (up to 23 bytes) are copied inline, longer
/// ones share one allocation, so a clone never allocates.
///
/// ```
/// # use keyvault_core::Label;
/// let demo = Label::from("demo");
/// let again = demo.clone(); // no allocation
/// assert_eq!(again, "demo");
/// assert_eq!(again.as_str(), "demo");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(SmolStr);

text_impls!(Label, s => &s.0, t => Label(t));

/// A request's id, unique per request: sinks count an id once however often it is written.
/// Ids of up to 23 bytes (those [`RequestId::generate`] makes) are kept inline, so an id
/// per request costs no allocation.
///
/// An id also knows whether keyvault generated it ([`RequestId::is_generated`]): such an id
/// is never given to two requests, so an event carrying it is only ever written again as
/// itself (a retried batch), with the same time. Ids made from text (a caller's, or read
/// back from a store) are not generated. Ids compare, hash and order by their text alone.
///
/// ```
/// # use keyvault_core::RequestId;
/// let given = RequestId::from("req-1");
/// assert_eq!(given, "req-1");
/// assert!(!given.is_generated());
/// let (a, b) = (RequestId::generate(), RequestId::generate());
/// assert_ne!(a, b);
/// assert_eq!(a.len(), 23);
/// assert!(a.is_generated());
/// assert_eq!(a, RequestId::from(a.as_str()));
/// ```
#[derive(Clone)]
pub struct RequestId {
    text: SmolStr,
    generated: bool,
}

text_impls!(RequestId, s => &s.text, t => RequestId { text: t, generated: false });

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for RequestId {}

impl std::hash::Hash for RequestId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for RequestId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RequestId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl RequestId {
    /// A new id, unique across processes: 50 random bits chosen once per process, then a
    /// 60-bit counter that starts at a random value, both in lowercase base32
    /// (`<10 characters>-<12 characters>`). Cheaper than a UUID per request; sinks only need
    /// uniqueness.
    pub fn generate() -> Self {
        // Digits first: ids sort by counter within a process.
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        const COUNTER_BITS: u32 = 60;
        static PROCESS: OnceLock<[u8; 10]> = OnceLock::new();
        static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
        let process = PROCESS.get_or_init(|| {
            let bits = rand::random::<u64>();
            std::array::from_fn(|i| ALPHABET[((bits >> (5 * i)) & 31) as usize])
        });
        let n = COUNTER
            .get_or_init(|| AtomicU64::new(rand::random::<u64>()))
            .fetch_add(1, Ordering::Relaxed)
            & ((1 << COUNTER_BITS) - 1);
        let mut id = [b'-'; 23];
        id[..10].copy_from_slice(process);
        for (i, c) in id[11..].iter_mut().enumerate() {
            *c = ALPHABET[((n >> (5 * (11 - i))) & 31) as usize];
        }
        // Only ASCII was written.
        Self {
            text: SmolStr::new(std::str::from_utf8(&id).unwrap_or_default()),
            generated: true,
        }
    }

    /// Whether [`RequestId::generate`] made this id (see the type's documentation).
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_distinct_short_and_share_the_process_part() {
        let ids: Vec<RequestId> = (0..10_000).map(|_| RequestId::generate()).collect();
        let distinct: std::collections::HashSet<&str> = ids.iter().map(|i| i.as_str()).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 23, "{id}");
            assert_eq!(id[..10], ids[0][..10], "one process part");
            assert_eq!(&id[10..11], "-");
            assert!(
                id.bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
            );
        }
    }
}
