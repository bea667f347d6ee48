//! Key digests: what a store keeps instead of the key.

use std::fmt;

use hmac::{KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::error::InvalidInput;

/// SHA-256 (or HMAC-SHA-256 with a pepper) of a full key. Comparison is constant-time.
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Wraps 32 bytes read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a digest from a byte slice of length 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidInput> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| InvalidInput::new("digest", "must be 32 bytes"))
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, for stores that keep text.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses lower- or upper-case hex.
    pub fn from_hex(hex: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::new("digest", "must be 64 hex characters");
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Self(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for KeyDigest {
    // Digests are not secrets, but a short form keeps logs readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({}…)", &self.to_hex()[..12])
    }
}

/// Turns keys into digests: plain SHA-256, or HMAC-SHA-256 keyed by a pepper
/// (`KEYVAULT_PEPPER`). Every process sharing a database must use the same hasher.
#[derive(Clone, Default)]
pub struct KeyHasher {
    // The HMAC state after absorbing the pepper; cloning it skips re-keying per key.
    pepper: Option<hmac::Hmac<Sha256>>,
}

impl KeyHasher {
    /// Plain SHA-256.
    pub fn sha256() -> Self {
        Self { pepper: None }
    }

    /// HMAC-SHA-256 keyed by `pepper`. An empty pepper is refused.
    pub fn with_pepper(pepper: &[u8]) -> Result<Self, InvalidInput> {
        if pepper.is_empty() {
            return Err(InvalidInput::new("pepper", "must not be empty"));
        }
        let mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(pepper)
            .map_err(|_| InvalidInput::new("pepper", "unusable as an HMAC key"))?;
        Ok(Self { pepper: Some(mac) })
    }

    /// Whether a pepper is in use.
    pub fn is_peppered(&self) -> bool {
        self.pepper.is_some()
    }

    /// The digest of a full key's text.
    pub fn digest(&self, key: &str) -> KeyDigest {
        match &self.pepper {
            None => KeyDigest(Sha256::digest(key.as_bytes()).into()),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.as_bytes());
                KeyDigest(mac.finalize().into_bytes().into())
            }
        }
    }

    /// Key material derived from a full key's text for successor delivery
    /// ([`crate::SealKey`]): HKDF-SHA-256 of the key, whose input is first keyed by the pepper
    /// when there is one, so that without the pepper the derived public key confirms no guess
    /// of the key (as the peppered digest does not).
    pub(crate) fn successor_material(&self, key: &str) -> [u8; 32] {
        const INFO: &[u8] = b"keyvault successor x25519 v1";
        let mut out = [0u8; 32];
        let expand = |ikm: &[u8], out: &mut [u8; 32]| {
            hkdf::Hkdf::<Sha256>::new(None, ikm)
                .expand(INFO, out)
                .expect("32 bytes is a valid HKDF-SHA-256 output length");
        };
        match &self.pepper {
            None => expand(key.as_bytes(), &mut out),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(INFO);
                mac.update(key.as_bytes());
                expand(&mac.finalize().into_bytes(), &mut out);
            }
        }
        out
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher")
            .field("peppered", &self.is_peppered())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        let d = KeyHasher::sha256().digest("abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyDigest::from_hex(&d.to_hex()).unwrap(), d);
    }

    #[test]
    fn pepper_changes_the_digest_and_is_repeatable() {
        let a = KeyHasher::with_pepper(b"pepper-1").unwrap();
        let b = KeyHasher::with_pepper(b"pepper-2").unwrap();
        assert_ne!(a.digest("kv_x"), KeyHasher::sha256().digest("kv_x"));
        assert_ne!(a.digest("kv_x"), b.digest("kv_x"));
        assert_eq!(a.digest("kv_x"), a.clone().digest("kv_x"));
        // RFC 4231 test case 2.
        let rfc = KeyHasher::with_pepper(b"Jefe").unwrap();
        assert_eq!(
            rfc.digest("what do ya want for nothing?").to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(KeyHasher::with_pepper(b"").is_err());
        assert!(!format!("{a:?}").contains("pepper-1"));
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!(KeyDigest::from_hex("zz").is_err());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_err());
        assert!(KeyDigest::from_slice(&[0; 31]).is_err());
    }
}
