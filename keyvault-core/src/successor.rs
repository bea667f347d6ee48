//! Successor delivery: a key rotated automatically is handed to the holder of the old key, and
//! to nobody else, although the server keeps only digests.
//!
//! At creation (and at each rotation, for the new key) an X25519 key pair is derived from the
//! key's plaintext ([`KeyHasher`]'s HKDF-SHA-256, keyed by the pepper when there is one); only
//! the public half, the [`SealKey`], is stored. An automatic rotation seals the new key to the
//! old key's `SealKey` (an ephemeral X25519 exchange, HKDF-SHA-256, XChaCha20-Poly1305 bound to
//! the old key's id), so the store holds a [`Successor`] it cannot open. The claim presents the
//! old key, derives the private half again and opens the box, once.

use std::fmt;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use chrono::{DateTime, Utc};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::{
    audit::{Actor, AuditEvent, AuditOutcome},
    digest::KeyHasher,
    error::{Error, Result},
    key::{self, ApiKey},
    model::{KeyId, KeyRecord},
    store::{KeyStore, KeyWrite},
    vault::Keyvault,
};

const SEAL_INFO: &[u8] = b"keyvault successor seal v1";
/// Ephemeral public key, nonce, then the ciphertext with its tag.
const HEADER: usize = 32 + 24;

/// The public half of the X25519 key pair derived from a key's plaintext: what a successor is
/// sealed to. Not a secret, but without the pepper (when one is set) it confirms no guess.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl SealKey {
    /// The seal key of `key`'s plaintext under `hasher`.
    pub fn derive(hasher: &KeyHasher, key: &str) -> Self {
        Self(PublicKey::from(&secret_of(hasher, key)).to_bytes())
    }

    /// Wraps 32 bytes read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a seal key from a byte slice of length 32.
    pub fn from_slice(bytes: &[u8]) -> std::result::Result<Self, crate::InvalidInput> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| crate::InvalidInput::new("seal_key", "must be 32 bytes"))
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({}…)", &hex(&self.0)[..12])
    }
}

impl Serialize for SealKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for SealKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = unhex(&text).ok_or_else(|| serde::de::Error::custom("seal_key: not hex"))?;
        Self::from_slice(&bytes).map_err(serde::de::Error::custom)
    }
}

fn secret_of(hasher: &KeyHasher, key: &str) -> StaticSecret {
    StaticSecret::from(hasher.successor_material(key))
}

/// An automatic rotation's new key, sealed to the old key's [`SealKey`], until its holder
/// claims it; then only when it was claimed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Successor {
    /// Waiting for the holder of the old key.
    Sealed {
        /// Ephemeral public key ‖ nonce ‖ ciphertext, hex.
        #[serde(with = "hex_bytes")]
        sealed: Vec<u8>,
    },
    /// Handed out; the box is gone.
    Claimed {
        /// When.
        at: DateTime<Utc>,
    },
}

impl fmt::Debug for Successor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Successor::Sealed { sealed } => write!(f, "Sealed({} bytes)", sealed.len()),
            Successor::Claimed { at } => write!(f, "Claimed({at})"),
        }
    }
}

impl Successor {
    /// Seals `new_key` to `to`, bound to the old key's id `old`.
    pub fn seal(to: &SealKey, old: KeyId, new_key: &ApiKey) -> Self {
        let ephemeral = StaticSecret::from(rand::random::<[u8; 32]>());
        let ephemeral_pub = PublicKey::from(&ephemeral);
        let shared = ephemeral.diffie_hellman(&PublicKey::from(to.0));
        let cipher = cipher(shared.as_bytes(), ephemeral_pub.as_bytes(), &to.0);
        let nonce: [u8; 24] = rand::random();
        let aad = old.to_string();
        let body = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: new_key.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            // XChaCha20-Poly1305 fails only for messages of more than 256 GiB.
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(HEADER + body.len());
        sealed.extend_from_slice(ephemeral_pub.as_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        Successor::Sealed { sealed }
    }

    /// Opens a sealed successor with the old key's plaintext; `None` when it does not open
    /// (another key, another pepper, a damaged box) or was claimed.
    pub fn open(&self, hasher: &KeyHasher, old: KeyId, old_key: &str) -> Option<ApiKey> {
        let Successor::Sealed { sealed } = self else {
            return None;
        };
        if sealed.len() < HEADER {
            return None;
        }
        let (ephemeral_pub, rest) = sealed.split_at(32);
        let (nonce, body) = rest.split_at(24);
        let ephemeral_pub: [u8; 32] = ephemeral_pub.try_into().ok()?;
        let secret = secret_of(hasher, old_key);
        let recipient = PublicKey::from(&secret);
        let shared = secret.diffie_hellman(&PublicKey::from(ephemeral_pub));
        let cipher = cipher(shared.as_bytes(), &ephemeral_pub, recipient.as_bytes());
        let aad = old.to_string();
        let plain = cipher
            .decrypt(
                &XNonce::from(<[u8; 24]>::try_from(nonce).ok()?),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok().map(ApiKey::from_presented)
    }
}

fn cipher(shared: &[u8; 32], ephemeral_pub: &[u8; 32], recipient: &[u8; 32]) -> XChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral_pub);
    salt[32..].copy_from_slice(recipient);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(SEAL_INFO, &mut key)
        .unwrap_or_default();
    XChaCha20Poly1305::new((&key).into())
}

/// A successor handed out by [`Keyvault::claim_successor`].
#[derive(Debug, Clone)]
pub struct ClaimedSuccessor {
    /// The new key's id.
    pub id: KeyId,
    /// The new key (shown once).
    pub key: ApiKey,
    /// When the presented old key stops verifying.
    pub old_key_expires_at: DateTime<Utc>,
}

/// Why a claim handed nothing out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// Not an enabled key in its grace with an unclaimed successor (CONTRACT §8's 404).
    NoSuccessor,
    /// Its successor was already claimed (410).
    Claimed,
    /// The caller's IP is outside the old key's allow-list (403).
    Forbidden,
}

impl Keyvault {
    /// Hands the successor of an automatically rotated key to the holder of the old key,
    /// once: `Ok(Err(…))` says why nothing was handed out. Audited as `key.successor_claim`.
    pub async fn claim_successor(
        &self,
        old_key: &str,
        ip: Option<std::net::IpAddr>,
        actor: &Actor,
    ) -> Result<std::result::Result<ClaimedSuccessor, ClaimRefusal>> {
        let Some(parsed) = key::parse(old_key) else {
            return Ok(Err(ClaimRefusal::NoSuccessor));
        };
        let digest = self.inner.hasher.digest(parsed.full);
        let Some(old) = self.inner.keys.find_by_digest(&digest).await? else {
            return Ok(Err(ClaimRefusal::NoSuccessor));
        };
        let now = self.now();
        let in_grace = old.enabled && old.superseded_by.is_some() && !old.is_expired(now);
        let successor = match (&old.successor, in_grace) {
            (Some(s), true) => s.clone(),
            _ => return Ok(Err(ClaimRefusal::NoSuccessor)),
        };
        if !old.admits_ip(ip) {
            return Ok(Err(ClaimRefusal::Forbidden));
        }
        if matches!(successor, Successor::Claimed { .. }) {
            return Ok(Err(ClaimRefusal::Claimed));
        }
        let (Some(new_id), Some(key)) = (
            old.superseded_by,
            successor.open(&self.inner.hasher, old.id, parsed.full),
        ) else {
            // The box does not open with this key: the pepper changed, or it is damaged.
            return Ok(Err(ClaimRefusal::NoSuccessor));
        };
        let old_key_expires_at = old.effective_expiry().unwrap_or(now);
        let mut claimed: KeyRecord = old.clone();
        claimed.successor = Some(Successor::Claimed { at: now });
        claimed.updated_at = now;
        claimed.revision = old.revision + 1;
        let audit = AuditEvent::new(
            now,
            actor,
            "key.successor_claim",
            Some(old.id.to_string()),
            AuditOutcome::Success,
            json!({ "new_id": new_id.to_string() }),
        );
        let write = KeyWrite::Update {
            record: claimed,
            reset_credits: false,
        };
        match self.write(vec![write], vec![audit]).await {
            Ok(()) => Ok(Ok(ClaimedSuccessor {
                id: new_id,
                key,
                old_key_expires_at,
            })),
            // A concurrent claim (or change) won the revision: whoever won handed it out.
            Err(Error::Conflict(_)) => Ok(Err(ClaimRefusal::Claimed)),
            Err(Error::NotFound { .. }) => Ok(Err(ClaimRefusal::NoSuccessor)),
            Err(e) => Err(e),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

mod hex_bytes {
    pub(super) fn serialize<S: serde::Serializer>(
        bytes: &[u8],
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<u8>, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        super::unhex(&text).ok_or_else(|| serde::de::Error::custom("sealed: not hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Prefix;

    #[test]
    fn only_the_old_key_opens_its_successor() {
        let hasher = KeyHasher::sha256();
        let old = ApiKey::generate(&Prefix::default());
        let new = ApiKey::generate(&Prefix::default());
        let id = KeyId::new();
        let to = SealKey::derive(&hasher, old.expose());
        assert_eq!(to, SealKey::derive(&hasher, old.expose()));
        let boxed = Successor::seal(&to, id, &new);
        let opened = boxed.open(&hasher, id, old.expose()).unwrap();
        assert_eq!(opened.expose(), new.expose());
        // Another key, another id (the box is bound to it), another pepper: nothing.
        let other = ApiKey::generate(&Prefix::default());
        assert!(boxed.open(&hasher, id, other.expose()).is_none());
        assert!(boxed.open(&hasher, KeyId::new(), old.expose()).is_none());
        let peppered = KeyHasher::with_pepper(b"p").unwrap();
        assert!(boxed.open(&peppered, id, old.expose()).is_none());
        // The box holds neither key's text, and each seal differs.
        let Successor::Sealed { sealed } = &boxed else {
            panic!("sealed")
        };
        assert!(!hex(sealed).contains(&hex(new.expose().as_bytes())));
        assert_ne!(boxed, Successor::seal(&to, id, &new));
        assert!(!format!("{boxed:?}").contains(new.expose()));
    }

    #[test]
    fn the_pepper_changes_the_seal_key() {
        let key = "kv_example";
        let plain = SealKey::derive(&KeyHasher::sha256(), key);
        let a = SealKey::derive(&KeyHasher::with_pepper(b"a").unwrap(), key);
        let b = SealKey::derive(&KeyHasher::with_pepper(b"b").unwrap(), key);
        assert_ne!(plain, a);
        assert_ne!(a, b);
    }

    #[test]
    fn a_successor_round_trips_through_json() {
        let to = SealKey::derive(&KeyHasher::sha256(), "kv_x");
        let s = Successor::seal(&to, KeyId::new(), &ApiKey::generate(&Prefix::default()));
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.starts_with(r#"{"state":"sealed","sealed":""#));
        assert_eq!(serde_json::from_str::<Successor>(&text).unwrap(), s);
        let claimed = Successor::Claimed { at: Utc::now() };
        let text = serde_json::to_string(&claimed).unwrap();
        assert_eq!(serde_json::from_str::<Successor>(&text).unwrap(), claimed);
        let k: SealKey = serde_json::from_str(&serde_json::to_string(&to).unwrap()).unwrap();
        assert_eq!(k, to);
        assert!(serde_json::from_str::<SealKey>(r#""abcd""#).is_err());
    }
}
