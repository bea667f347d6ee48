//! The one view of a new secret (CONTRACT §6): the POST that makes a key or a token
//! answers with a redirect and a short-lived cookie holding the secret sealed
//! (XChaCha20-Poly1305 under a key derived from the server's secret, bound to the session
//! and to the id of what was made). The page it lands on opens it, shows it and deletes the
//! cookie in the same response, so a reload or going back never shows it again — on
//! whichever instance the browser reaches, since every instance holds the same secret.

use axum::{http::HeaderMap, response::Response};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::{TryRng, rngs::SysRng};

use super::session::{Visitor, cookie, set_cookie};
use crate::error::{Error, Result};

/// The cookie's name.
const FLASH_COOKIE: &str = "kv_flash";
/// Long enough for the redirect, short enough that a stale one is gone.
const FLASH_SECONDS: i64 = 120;

fn cipher(secret: &str) -> Result<XChaCha20Poly1305> {
    let key = super::session::mac(secret, &["flash"])?;
    let digest = keyvault_core::KeyDigest::from_hex(&key)
        .map_err(|e| Error::Internal(format!("flash key: {e}")))?;
    Ok(XChaCha20Poly1305::new(digest.as_bytes().into()))
}

/// What the sealed secret is bound to: this session and the id it was made for.
fn bound(v: &Visitor, id: &str) -> String {
    format!("{}\u{0}{id}", v.digest.to_hex())
}

/// Adds the cookie carrying `secret` (made as `id`) to the redirect `res`.
pub(crate) fn seal(
    res: &mut Response,
    secret_key: &str,
    v: &Visitor,
    id: &str,
    secret: &str,
) -> Result<()> {
    let mut nonce = [0u8; 24];
    SysRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let aad = bound(v, id);
    let sealed = cipher(secret_key)?
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: secret.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| Error::Internal("sealing failed".into()))?;
    let mut value = hex(&nonce);
    value.push_str(&hex(&sealed));
    set_cookie(res, &v.mount, v.https, FLASH_COOKIE, &value, FLASH_SECONDS);
    Ok(())
}

/// The secret made as `id`, when the request carries its cookie (sealed for this session).
pub(crate) fn open(headers: &HeaderMap, secret_key: &str, v: &Visitor, id: &str) -> Option<String> {
    let value = cookie(headers, FLASH_COOKIE)?;
    let bytes = unhex(value)?;
    if bytes.len() < 24 + 16 {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(24);
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    let aad = bound(v, id);
    let plain = cipher(secret_key)
        .ok()?
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

/// Whether the request carries a flash cookie (to delete it, shown or not).
pub(crate) fn present(headers: &HeaderMap) -> bool {
    cookie(headers, FLASH_COOKIE).is_some()
}

/// Deletes the cookie in `res`.
pub(crate) fn clear(res: &mut Response, v: &Visitor) {
    set_cookie(res, &v.mount, v.https, FLASH_COOKIE, "", 0);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}
