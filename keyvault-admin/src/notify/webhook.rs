//! Webhooks signed as the Standard Webhooks specification says: `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `<id>.<timestamp>.<body>`, keyed with the base64-decoded bytes after `whsec_`.

use async_trait::async_trait;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use keyvault_core::{Delivery, NotifierRecord};
use rand::{TryRng, rngs::SysRng};
use sha2::Sha256;

use super::{Attempt, Notifier, Outbound};

/// A new signing secret: `whsec_` and the base64 of 32 bytes from the operating system.
pub fn new_secret() -> crate::error::Result<String> {
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| crate::error::Error::Internal(format!("no randomness: {e}")))?;
    Ok(format!("whsec_{}", STANDARD.encode(bytes)))
}

/// The `webhook-signature` header's value for one attempt; None when `secret` is not a
/// `whsec_` secret of 24–64 bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    if !(24..=64).contains(&key.len()) {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Posts the event's body as JSON, signed.
#[derive(Debug, Default)]
pub struct WebhookNotifier;

#[async_trait]
impl Notifier for WebhookNotifier {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn signs(&self) -> bool {
        true
    }

    async fn deliver(
        &self,
        channel: &NotifierRecord,
        delivery: &Delivery,
        out: &Outbound,
    ) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let Some(signature) = channel
            .secret
            .as_deref()
            .and_then(|s| sign(s, &delivery.id, timestamp, delivery.body.as_bytes()))
        else {
            return Attempt::Failed {
                status: None,
                error: "the channel has no valid signing secret".into(),
            };
        };
        let request = out
            .client
            .post(&channel.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone());
        out.send(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_signs_to_its_published_signature() {
        // The Standard Webhooks specification's own example.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn new_secrets_sign_and_bad_ones_do_not() {
        let s = new_secret().unwrap();
        assert!(s.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&s[6..]).unwrap().len(), 32);
        assert!(sign(&s, "msg_1", 1, b"{}").is_some());
        assert_ne!(new_secret().unwrap(), s);
        assert!(sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "m", 1, b"").is_none());
        assert!(sign("whsec_c2hvcnQ=", "m", 1, b"").is_none(), "5 bytes");
        assert!(sign("whsec_!!", "m", 1, b"").is_none());
    }
}
