//! Slack incoming webhooks: `{"text": …}` in `KEYVAULT_LANG`. The URL is the credential, so
//! nothing is signed.

use async_trait::async_trait;
use keyvault_core::{Delivery, NotifierRecord};
use serde_json::{Value, json};

use super::{Attempt, Notifier, Outbound};
use crate::dashboard::Lang;

/// Posts one line per event to a Slack channel.
#[derive(Debug, Default)]
pub struct SlackNotifier;

/// The message for an event body (`{"type", "timestamp", "data"}`).
pub(crate) fn text(lang: Lang, body: &Value) -> String {
    let data = &body["data"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match body["type"].as_str().unwrap_or_default() {
        "alert.firing" => lang.tf("notify.firing", &[("summary", &s(&data["summary"]))]),
        "alert.resolved" => lang.tf("notify.resolved", &[("summary", &s(&data["summary"]))]),
        "key.rotated" => lang.tf(
            "notify.rotated",
            &[("id", &s(&data["id"])), ("old_id", &s(&data["old_id"]))],
        ),
        "test" => lang.t("notify.test").to_owned(),
        other => lang.tf("notify.other", &[("type", other)]),
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn kind(&self) -> &'static str {
        "slack"
    }

    async fn deliver(
        &self,
        channel: &NotifierRecord,
        delivery: &Delivery,
        out: &Outbound,
    ) -> Attempt {
        let body: Value = serde_json::from_str(&delivery.body).unwrap_or(Value::Null);
        let message = json!({ "text": text(out.lang_of(), &body) });
        let request = out
            .client()
            .post(&channel.url)
            .header("content-type", "application/json")
            .body(message.to_string());
        out.send(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_in_either_language() {
        let firing =
            json!({"type": "alert.firing", "data": {"summary": "errors: key a 40% failed"}});
        assert_eq!(
            text(Lang::En, &firing),
            "Alert firing: errors: key a 40% failed"
        );
        assert_eq!(
            text(Lang::ZhCn, &firing),
            "告警触发：errors: key a 40% failed"
        );
        let rotated = json!({"type": "key.rotated", "data": {"id": "n", "old_id": "o"}});
        assert_eq!(
            text(Lang::En, &rotated),
            "Key o was rotated; its successor is n."
        );
        assert!(text(Lang::En, &json!({"type": "test", "data": {}})).contains("test"));
    }
}
