//! API tokens and admin passwords (roles are keyvault-core's).

use std::sync::LazyLock;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use keyvault_core::{ApiKey, KeyDigest, KeyHasher, Prefix, TOKEN_PREFIX};
use rand::{TryRng, rngs::SysRng};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{Error, Result};

// Roles are keyvault-core's: the stores keep them, the server checks them.
pub(crate) use keyvault_core::{Need, Role};

/// A freshly generated API token: the plaintext (shown once), its digest and display start.
#[derive(Debug)]
pub(crate) struct NewToken {
    pub(crate) token: ApiKey,
    pub(crate) digest: KeyDigest,
    pub(crate) start: String,
}

impl NewToken {
    pub(crate) fn generate(hasher: &KeyHasher) -> Result<Self> {
        let prefix = Prefix::any(TOKEN_PREFIX).map_err(keyvault_core::Error::from)?;
        let token = ApiKey::generate(&prefix);
        let start = token.parse().map(|p| p.start()).unwrap_or_default();
        let digest = hasher.digest(token.expose());
        Ok(Self {
            token,
            digest,
            start,
        })
    }
}

/// The digest of a presented token, or None when the text is not a well-formed `kvt` token
/// (refused without touching the database).
pub(crate) fn token_digest(hasher: &KeyHasher, presented: &str) -> Option<KeyDigest> {
    let parsed = keyvault_core::parse_key(presented)?;
    (parsed.prefix == TOKEN_PREFIX).then(|| hasher.digest(parsed.full))
}

/// Shortest password accepted.
pub(crate) const MIN_PASSWORD_CHARS: usize = 12;
const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a password's length (the only rule: long passphrases beat composition rules).
pub(crate) fn check_password(pw: &str) -> Result<()> {
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::input(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(Error::input(
            "password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

// argon2id at OWASP's minimum: 19 MiB, 2 passes, 1 lane. Each hash holds 19 MiB and ~15 ms of
// a core, so at most two run at once: a burst of logins queues instead of exhausting memory.
static HASH_PERMITS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(2));

fn argon2() -> Result<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password off the async runtime; returns the PHC string.
pub(crate) async fn hash_password(password: String) -> Result<String> {
    let _permit = HASH_PERMITS
        .acquire()
        .await
        .map_err(|_| Error::Internal("hash semaphore closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        SysRng
            .try_fill_bytes(&mut salt)
            .map_err(|e| Error::Internal(format!("no randomness for a salt: {e}")))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| Error::Internal(format!("salt: {e}")))?;
        argon2()?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hash task: {e}")))?
}

/// The PHC string of a password no one knows, made once per process: a sign-in for a name
/// that is no user is verified against it, so that it does the work a wrong password does
/// (the same parse, hash and comparison) and its time does not tell which names exist.
pub(crate) async fn dummy_hash() -> Result<&'static str> {
    static DUMMY: OnceCell<String> = OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| async {
            let mut secret = [0u8; 32];
            SysRng
                .try_fill_bytes(&mut secret)
                .map_err(|e| Error::Internal(format!("no randomness for a password: {e}")))?;
            let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            hash_password(secret).await
        })
        .await
        .map(String::as_str)
}

/// Checks a password against a stored PHC string, off the async runtime.
pub(crate) async fn verify_password(password: String, phc: String) -> Result<bool> {
    let _permit = HASH_PERMITS
        .acquire()
        .await
        .map_err(|_| Error::Internal("hash semaphore closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return Ok(false);
        };
        Ok(argon2()?
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| Error::Internal(format!("hash task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_reserved_prefix_and_keys_are_not_tokens() {
        let hasher = KeyHasher::sha256();
        let t = NewToken::generate(&hasher).unwrap();
        assert!(t.token.expose().starts_with("kvt_"));
        assert_eq!(token_digest(&hasher, t.token.expose()), Some(t.digest));
        let key = ApiKey::generate(&Prefix::default());
        assert_eq!(token_digest(&hasher, key.expose()), None);
        assert_eq!(token_digest(&hasher, "kvt_short"), None);
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id_at_owasp_parameters() {
        let phc = hash_password("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            verify_password("correct horse battery".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse battery".into(), phc)
                .await
                .unwrap()
        );
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
    }

    #[tokio::test]
    async fn the_dummy_hash_is_made_once_with_the_same_parameters_and_matches_nothing_typed() {
        let dummy = dummy_hash().await.unwrap();
        assert!(std::ptr::eq(dummy, dummy_hash().await.unwrap()));
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{dummy}"
        );
        for typed in ["", "correct horse battery", dummy] {
            assert!(
                !verify_password(typed.into(), dummy.to_owned())
                    .await
                    .unwrap()
            );
        }
    }
}
