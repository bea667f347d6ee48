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

/// Defines an immutable text type over [`SmolStr`]: text of up to 23 bytes is kept inline, so
/// making, cloning and dropping one neither allocates nor touches a shared counter (longer
/// text shares one allocation between clones).
macro_rules! text_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(SmolStr);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(SmolStr::new(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(SmolStr::from(s))
            }
        }

        impl From<Arc<str>> for $name {
            fn from(s: Arc<str>) -> Self {
                Self(SmolStr::from(&*s))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

text_type! {
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
    Label
}

text_type! {
    /// A request's id, unique per request: sinks count an id once however often it is written.
    /// Ids of up to 23 bytes (those [`RequestId::generate`] makes) are kept inline, so an id
    /// per request costs no allocation.
    ///
    /// ```
    /// # use keyvault_core::RequestId;
    /// let given = RequestId::from("req-1");
    /// assert_eq!(given, "req-1");
    /// let (a, b) = (RequestId::generate(), RequestId::generate());
    /// assert_ne!(a, b);
    /// assert_eq!(a.len(), 23);
    /// ```
    RequestId
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
        Self(SmolStr::new(std::str::from_utf8(&id).unwrap_or_default()))
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
