//! Aivo Live client: queue a conversation (`/queue/external`), pass the visitor's messages
//! (`/{conversationId}/client/message`) and, when configured, the undocumented close call.

use async_trait::async_trait;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    classify_status, encode_segment, join_url, BackendError, LiveBackend, QueueRequest, QueueResult, ResponseCap,
    Transport, VisitorContact,
};
use crate::config::AivoLiveConfig;
use crate::model::Backend;

/// Aivo requires this exact value for external queueing.
const PROTOCOL_ID: i64 = 28;

/// Aivo's documented alphanumeric user hash: the first 24 hex characters of the SHA-256 of the visitor id, so
/// the same visitor always gets the same Aivo user.
pub fn user_hash(visitor_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(visitor_id.as_bytes()));
    digest.chars().take(24).collect()
}

/// The exact `/queue/external` body.
pub(crate) fn queue_body(config: &AivoLiveConfig, req: &QueueRequest) -> Value {
    let contact = VisitorContact::from_attributes(&req.attributes);
    json!({
        "botId": config.bot_id,
        "groupsId": req.groups,
        "botToken": config.bot_token.expose(),
        "protocolId": PROTOCOL_ID,
        "user": {
            "hash": user_hash(&req.visitor_id),
            "firstname": contact.firstname,
            "lastname": contact.lastname,
            "email": contact.email,
            "phone": contact.phone,
            "extra": contact.extra,
        },
        "status": "queued",
        "lastSender": "user",
    })
}

/// The `/client/message` body for one visitor text.
pub(crate) fn message_body(text: &str) -> Value {
    json!({"message": [{"action": "text", "value": text, "source": "user"}]})
}

/// Reads the queue answer: `conversationId` is the live id; the first group is the queue.
pub(crate) fn parse_queue_answer(body: &str, groups: &[i64]) -> Result<QueueResult, BackendError> {
    let raw: Value =
        serde_json::from_str(body).map_err(|e| BackendError::Invalid(format!("queue answer is not JSON: {e}")))?;
    let live_id = match raw.get("conversationId") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(BackendError::Invalid("queue answer has no conversationId".into())),
    };
    Ok(QueueResult {
        live_id,
        queue: groups.first().map(|g| g.to_string()),
        raw,
    })
}

/// Aivo Live over HTTP.
#[derive(Debug, Clone)]
pub struct AivoLiveClient {
    transport: Transport,
    config: AivoLiveConfig,
}

impl AivoLiveClient {
    /// A client for `config.base_url`.
    pub fn new(config: &AivoLiveConfig) -> Result<Self, BackendError> {
        Ok(AivoLiveClient {
            transport: Transport::new(config.timeout_seconds)?,
            config: config.clone(),
        })
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<String, BackendError> {
        let request = self
            .transport
            .request(reqwest::Method::POST, join_url(&self.config.base_url, path))
            .json(body);
        let (status, body) = self.transport.send(request).await?;
        classify_status(status, body)
    }
}

impl ResponseCap for AivoLiveClient {
    fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }
}

#[async_trait]
impl LiveBackend for AivoLiveClient {
    fn name(&self) -> &'static str {
        Backend::AivoLive.as_str()
    }

    async fn queue(&self, req: &QueueRequest) -> Result<QueueResult, BackendError> {
        let body = self.post_json("queue/external", &queue_body(&self.config, req)).await?;
        parse_queue_answer(&body, &req.groups)
    }

    async fn send_visitor_message(&self, live_id: &str, _message_id: &str, text: &str) -> Result<(), BackendError> {
        // Aivo takes no client message id; the outbox's own id keeps the call idempotent on our side.
        let path = format!("{}/client/message", encode_segment(live_id)?);
        self.post_json(&path, &message_body(text)).await.map(|_| ())
    }

    async fn end(&self, live_id: &str, _message_id: &str) -> Result<(), BackendError> {
        if self.config.close_path.trim().is_empty() {
            return Ok(());
        }
        let path = self
            .config
            .close_path
            .replace("{conversationId}", &encode_segment(live_id)?);
        self.post_json(&path, &json!({})).await.map(|_| ())
    }

    async fn is_available(&self) -> Result<bool, BackendError> {
        // Aivo has no availability call: opening hours decide.
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_hash_is_stable_24_hex_chars() {
        let h = user_hash("visitor-1");
        assert_eq!(h.len(), 24);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, user_hash("visitor-1"));
        assert_ne!(h, user_hash("visitor-2"));
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(user_hash("abc"), "ba7816bf8f01cfea414140de");
    }

    #[test]
    fn queue_answer_needs_a_conversation_id() {
        let r = parse_queue_answer(r#"{"conversationId":"c-1","messageQueueId":0}"#, &[2179, 5]).unwrap();
        assert_eq!(r.live_id, "c-1");
        assert_eq!(r.queue.as_deref(), Some("2179"));
        assert_eq!(r.raw["messageQueueId"], 0);
        assert!(matches!(parse_queue_answer("{}", &[]), Err(BackendError::Invalid(_))));
        assert!(matches!(
            parse_queue_answer("<html>", &[]),
            Err(BackendError::Invalid(_))
        ));
        assert_eq!(
            parse_queue_answer(r#"{"conversationId":"x"}"#, &[]).unwrap().queue,
            None
        );
    }
}
