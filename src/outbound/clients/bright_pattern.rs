//! Bright Pattern chat (mobile/web API) client: availability, chat request, client events and the events
//! long poll. Every call carries `tenantUrl` and the mobile-API headers; answers that carry server events are
//! handed back raw so they can be appended exactly as received.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{
    attribute_text, classify_status, encode_segment, join_url, BackendError, LiveBackend, QueueRequest, QueueResult,
    ResponseCap, Transport, VisitorContact,
};
use crate::config::BrightPatternConfig;
use crate::model::Backend;

/// Error code: chat session not found.
pub(crate) const ERROR_CHAT_NOT_FOUND: i64 = 5005;
/// Error code: another poll is already waiting on this chat.
pub(crate) const ERROR_CONCURRENT_POLL: i64 = 5509;
/// Error code: the poll ended with no new events.
pub(crate) const ERROR_NO_EVENTS: i64 = 5511;

/// What one long poll on a chat's events brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// New server events: the raw answer body, to append as received.
    Events(String),
    /// The poll ended without events (error 5511 or an empty list): poll again.
    NoEvents,
    /// The chat no longer exists (404 or error 5005): stop polling.
    ChatGone,
    /// Another poll is already running for this chat (error 5509 or 429): back off.
    Busy,
}

/// `error_code` of a Bright Pattern error answer; some tenants send it as a string.
pub fn error_code(body: &Value) -> Option<i64> {
    match body.get("error_code")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `/availability` answer as a yes/no.
pub(crate) fn parse_availability(body: &str) -> Result<bool, BackendError> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| BackendError::Invalid(format!("availability answer is not JSON: {e}")))?;
    match value.get("chat").and_then(Value::as_str) {
        Some("available") => Ok(true),
        Some("notAvailable") => Ok(false),
        _ => Err(BackendError::Invalid(format!(
            "availability answer without a known chat state: {body}"
        ))),
    }
}

/// The exact `POST /chats` body.
pub(crate) fn chat_request_body(req: &QueueRequest) -> Value {
    let contact = VisitorContact::from_attributes(&req.attributes);
    let mut parameters: Map<String, Value> = req
        .attributes
        .iter()
        .filter_map(|(key, value)| attribute_text(value).map(|text| (key.clone(), Value::String(text))))
        .collect();
    parameters.insert("conversation_id".into(), Value::String(req.conversation_id.to_string()));
    let mut body = Map::new();
    body.insert(
        "from".into(),
        Value::String(contact.display_name().unwrap_or_else(|| req.visitor_id.clone())),
    );
    if let Some(phone) = contact.phone {
        body.insert("phone_number".into(), Value::String(phone));
    }
    body.insert("parameters".into(), Value::Object(parameters));
    Value::Object(body)
}

/// Reads the `POST /chats` answer: `chat_id` is the live id.
pub(crate) fn parse_chat_answer(body: &str, team: Option<&str>) -> Result<QueueResult, BackendError> {
    let raw: Value =
        serde_json::from_str(body).map_err(|e| BackendError::Invalid(format!("chat answer is not JSON: {e}")))?;
    let live_id = match raw.get("chat_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(BackendError::Invalid("chat answer has no chat_id".into())),
    };
    Ok(QueueResult {
        live_id,
        // The chat API names no queue; the team the route was chosen for is the only queue identity we have.
        queue: team.map(str::to_owned),
        raw,
    })
}

/// Reads a long-poll answer into its outcome; anything else is an error.
pub(crate) fn classify_poll(status: u16, body: String) -> Result<PollOutcome, BackendError> {
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    match parsed.as_ref().and_then(error_code) {
        Some(ERROR_NO_EVENTS) => return Ok(PollOutcome::NoEvents),
        Some(ERROR_CHAT_NOT_FOUND) => return Ok(PollOutcome::ChatGone),
        Some(ERROR_CONCURRENT_POLL) => return Ok(PollOutcome::Busy),
        Some(_) if (200..300).contains(&status) => return Err(BackendError::Permanent { status, body }),
        _ => {}
    }
    match status {
        404 => return Ok(PollOutcome::ChatGone),
        429 => return Ok(PollOutcome::Busy),
        _ => {}
    }
    let body = classify_status(status, body)?;
    if body.trim().is_empty() {
        return Ok(PollOutcome::NoEvents);
    }
    let Some(value) = parsed else {
        return Err(BackendError::Invalid(format!("poll answer is not JSON: {body}")));
    };
    match value.get("events") {
        None | Some(Value::Null) => Ok(PollOutcome::NoEvents),
        Some(Value::Array(events)) if events.is_empty() => Ok(PollOutcome::NoEvents),
        Some(Value::Array(_)) => Ok(PollOutcome::Events(body)),
        Some(_) => Err(BackendError::Invalid(format!(
            "poll answer events is not a list: {body}"
        ))),
    }
}

/// Reads a `POST .../events` answer: the raw body when it carries new server events.
pub(crate) fn classify_send_answer(status: u16, body: String) -> Result<Option<String>, BackendError> {
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    if parsed.as_ref().and_then(error_code).is_some() {
        return Err(match classify_status(status, body) {
            Ok(body) => BackendError::Permanent { status, body },
            Err(e) => e,
        });
    }
    let body = classify_status(status, body)?;
    // The events were accepted: an answer we cannot read must not turn that into a failure.
    match parsed.as_ref().and_then(|v| v.get("events")).and_then(Value::as_array) {
        Some(events) if !events.is_empty() => Ok(Some(body)),
        _ => Ok(None),
    }
}

/// Bright Pattern over HTTP.
#[derive(Debug, Clone)]
pub struct BrightPatternClient {
    transport: Transport,
    config: BrightPatternConfig,
    poll_timeout: Duration,
}

impl ResponseCap for BrightPatternClient {
    fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }
}

impl BrightPatternClient {
    /// A client for `config.base_url`.
    pub fn new(config: &BrightPatternConfig) -> Result<Self, BackendError> {
        Ok(BrightPatternClient {
            transport: Transport::new(config.timeout_seconds)?,
            config: config.clone(),
            poll_timeout: Duration::from_secs(config.poll_timeout_seconds),
        })
    }

    /// `Authorization` value of the mobile API.
    fn authorization(&self) -> String {
        format!(
            "MOBILE-API-140-327-PLAIN appId=\"{}\", clientId=\"{}\"",
            self.config.app_id, self.config.client_id
        )
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.transport
            .request(method, join_url(&self.config.base_url, path))
            .query(&[("tenantUrl", self.config.tenant_url.as_str())])
            .header(reqwest::header::AUTHORIZATION, self.authorization())
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=UTF-8")
            // Proxies have been seen caching polls.
            .header(reqwest::header::CACHE_CONTROL, "no-cache")
    }

    fn with_body(request: reqwest::RequestBuilder, body: &Value) -> Result<reqwest::RequestBuilder, BackendError> {
        let bytes = serde_json::to_vec(body).map_err(|e| BackendError::Invalid(e.to_string()))?;
        Ok(request.body(bytes))
    }

    /// `POST /chats/{chat_id}/events`; returns the raw answer when it carries new server events.
    pub(crate) async fn send_events(&self, chat_id: &str, events: &[Value]) -> Result<Option<String>, BackendError> {
        let path = format!("chats/{}/events", encode_segment(chat_id)?);
        let request = Self::with_body(self.request(Method::POST, &path), &json!({ "events": events }))?;
        let (status, body) = self.transport.send(request).await?;
        classify_send_answer(status, body)
    }

    /// Sends a visitor's message; returns the raw answer when it carries new server events.
    pub async fn send_message(&self, chat_id: &str, msg_id: &str, text: &str) -> Result<Option<String>, BackendError> {
        let event = json!({"event": "chat_session_message", "msg_id": msg_id, "msg": text});
        self.send_events(chat_id, &[event]).await
    }

    /// Ends the chat from the visitor's side; returns the raw answer when it carries new server events.
    pub async fn end_chat(&self, chat_id: &str) -> Result<Option<String>, BackendError> {
        self.send_events(chat_id, &[json!({"event": "chat_session_end"})]).await
    }

    /// One long poll on `GET /chats/{chat_id}/events`, under `poll_timeout_seconds`.
    pub async fn poll_events(&self, chat_id: &str) -> Result<PollOutcome, BackendError> {
        let path = format!("chats/{}/events", encode_segment(chat_id)?);
        let (status, body) = self
            .transport
            .send(self.request(Method::GET, &path).timeout(self.poll_timeout))
            .await?;
        classify_poll(status, body)
    }
}

#[async_trait]
impl LiveBackend for BrightPatternClient {
    fn name(&self) -> &'static str {
        Backend::BrightPattern.as_str()
    }

    async fn queue(&self, req: &QueueRequest) -> Result<QueueResult, BackendError> {
        let request = Self::with_body(self.request(Method::POST, "chats"), &chat_request_body(req))?;
        let (status, body) = self.transport.send(request).await?;
        let body = classify_status(status, body)?;
        parse_chat_answer(&body, req.team.as_deref())
    }

    async fn send_visitor_message(&self, live_id: &str, message_id: &str, text: &str) -> Result<(), BackendError> {
        self.send_message(live_id, message_id, text).await.map(|_| ())
    }

    async fn end(&self, live_id: &str, _message_id: &str) -> Result<(), BackendError> {
        self.end_chat(live_id).await.map(|_| ())
    }

    async fn is_available(&self) -> Result<bool, BackendError> {
        let (status, body) = self.transport.send(self.request(Method::GET, "availability")).await?;
        parse_availability(&classify_status(status, body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_answers_map_to_outcomes() {
        let events = r#"{"events":[{"event":"chat_session_ended"}]}"#.to_string();
        assert_eq!(classify_poll(200, events.clone()), Ok(PollOutcome::Events(events)));
        assert_eq!(classify_poll(200, r#"{"events":[]}"#.into()), Ok(PollOutcome::NoEvents));
        assert_eq!(classify_poll(204, String::new()), Ok(PollOutcome::NoEvents));
        for status in [200, 400] {
            let b = |code: &str| format!(r#"{{"error_code":{code},"error_message":"x"}}"#);
            assert_eq!(classify_poll(status, b("5511")), Ok(PollOutcome::NoEvents));
            assert_eq!(classify_poll(status, b("5005")), Ok(PollOutcome::ChatGone));
            assert_eq!(classify_poll(status, b("\"5509\"")), Ok(PollOutcome::Busy));
        }
        assert_eq!(classify_poll(404, String::new()), Ok(PollOutcome::ChatGone));
        assert_eq!(classify_poll(429, String::new()), Ok(PollOutcome::Busy));
        assert!(matches!(
            classify_poll(200, "nope".into()),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            classify_poll(200, r#"{"events":"x"}"#.into()),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            classify_poll(200, r#"{"error_code":1,"error_message":"x"}"#.into()),
            Err(BackendError::Permanent { status: 200, .. })
        ));
        assert!(matches!(
            classify_poll(503, String::new()),
            Err(BackendError::Transient { status: 503, .. })
        ));
    }

    #[test]
    fn send_answers_return_server_events_only_when_present() {
        let events = r#"{"events":[{"event":"chat_session_status","state":"queued"}]}"#.to_string();
        assert_eq!(classify_send_answer(200, events.clone()), Ok(Some(events)));
        assert_eq!(classify_send_answer(200, String::new()), Ok(None));
        assert_eq!(classify_send_answer(200, r#"{"events":[]}"#.into()), Ok(None));
        assert_eq!(classify_send_answer(200, "ok".into()), Ok(None));
        assert!(matches!(
            classify_send_answer(200, r#"{"error_code":5005,"error_message":"gone"}"#.into()),
            Err(BackendError::Permanent { status: 200, .. })
        ));
        assert!(matches!(
            classify_send_answer(500, r#"{"error_code":1}"#.into()),
            Err(BackendError::Transient { status: 500, .. })
        ));
    }

    #[test]
    fn availability_is_a_known_chat_state() {
        assert_eq!(parse_availability(r#"{"chat":"available","ewt":"5"}"#), Ok(true));
        assert_eq!(parse_availability(r#"{"chat":"notAvailable"}"#), Ok(false));
        assert!(matches!(
            parse_availability(r#"{"chat":"maybe"}"#),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(parse_availability("x"), Err(BackendError::Invalid(_))));
    }
}
