//! Outbound platform clients: the live backends a handoff is queued on (Aivo Live, Bright Pattern) behind
//! [`LiveBackend`], the Ultimate widget API that carries agent-side updates back to the visitor, and the
//! opening-hours check. Request building and answer classification are pure; the clients only do the I/O.

pub mod aivo_live;
pub mod bright_pattern;
pub mod schedule;
pub mod ultimate_widget;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::config::{Config, Route, RoutingConfig};
use crate::model::Backend;

pub use aivo_live::AivoLiveClient;
pub use bright_pattern::{BrightPatternClient, PollOutcome};
pub use ultimate_widget::{UltimateWidgetClient, WidgetUpdate};

/// Hard deadline of the availability check behind `isTeamOnline`: the bot waits on it synchronously.
pub(crate) const TEAM_ONLINE_DEADLINE: Duration = Duration::from_secs(2);

/// Why an outbound call failed. The outbox retries the transient ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No answer within the configured timeout.
    #[error("request timed out")]
    Timeout,
    /// Connection refused, reset, DNS, TLS.
    #[error("network error: {0}")]
    Network(String),
    /// 5xx, 408 or 429: worth retrying.
    #[error("transient HTTP {status}: {body}")]
    Transient {
        /// HTTP status.
        status: u16,
        /// Answer body as received.
        body: String,
    },
    /// Any other 4xx (or an unexpected non-2xx): retrying will not help.
    #[error("permanent HTTP {status}: {body}")]
    Permanent {
        /// HTTP status.
        status: u16,
        /// Answer body as received.
        body: String,
    },
    /// A 2xx whose body is not what the platform documents.
    #[error("unparsable answer: {0}")]
    Invalid(String),
}

impl BackendError {
    /// True when the same call may succeed later (timeouts, network errors, 5xx/408/429).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BackendError::Timeout | BackendError::Network(_) | BackendError::Transient { .. }
        )
    }
}

/// Maps a reqwest failure; its `Display` hides the cause, so the source chain is appended. The URL is
/// left out: it may carry credentials in its query.
pub(crate) fn from_reqwest(e: reqwest::Error) -> BackendError {
    let e = e.without_url();
    if e.is_timeout() {
        return BackendError::Timeout;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    BackendError::Network(text)
}

/// The HTTP client every platform client sends with (each request sets its own timeout).
pub(crate) fn http_client() -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .build()
        .map_err(|e| BackendError::Network(format!("cannot build HTTP client: {e}")))
}

/// Classifies an HTTP answer: 2xx gives the body back, anything else the matching error.
pub(crate) fn classify_status(status: u16, body: String) -> Result<String, BackendError> {
    match status {
        200..=299 => Ok(body),
        408 | 429 | 500..=599 => Err(BackendError::Transient { status, body }),
        _ => Err(BackendError::Permanent { status, body }),
    }
}

/// Sends a request and reads the whole answer (status and body) under the request's own timeout, up to
/// `max_bytes` of body (`outbox.max_response_bytes`): a longer answer is not read further and fails the call.
pub(crate) async fn send_and_read(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
) -> Result<(u16, String), BackendError> {
    let mut response = request.send().await.map_err(from_reqwest)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(BackendError::Invalid(format!(
                "the answer (HTTP {status}) is larger than {max_bytes} bytes (outbox.max_response_bytes); not \
                 read further"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Most bytes of a platform's answer that are read unless `outbox.max_response_bytes` says otherwise: a peer
/// cannot make the service buffer more.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How every platform client sends: the shared HTTP client, its platform's request timeout and the
/// answer cap (`outbox.max_response_bytes`).
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    timeout: std::time::Duration,
    max_response_bytes: usize,
}

impl Transport {
    /// Requests time out after `timeout_seconds`; answers are read up to [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub(crate) fn new(timeout_seconds: u64) -> Result<Self, BackendError> {
        Ok(Transport {
            http: http_client()?,
            timeout: std::time::Duration::from_secs(timeout_seconds),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    /// A request to `url` under the platform's timeout (a caller may set another).
    pub(crate) fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http.request(method, url).timeout(self.timeout)
    }

    /// Sends `request` and reads its answer up to the cap ([`send_and_read`]).
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), BackendError> {
        send_and_read(request, self.max_response_bytes).await
    }
}

/// A platform client whose answers are read up to a cap.
pub(crate) trait ResponseCap: Sized {
    /// The client's transport.
    fn transport_mut(&mut self) -> &mut Transport;

    /// Reads at most `bytes` of each answer (`outbox.max_response_bytes`); a longer one fails the call.
    fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.transport_mut().max_response_bytes = bytes.max(1);
        self
    }
}

/// Joins a base URL and a relative path with exactly one slash between them.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// Percent-encodes one path segment, so an id from a peer can never add path levels or a query. `.`,
/// `..` and empty segments are refused (URL parsers resolve them, even percent-encoded).
pub(crate) fn encode_segment(segment: &str) -> Result<String, BackendError> {
    if matches!(segment, "" | "." | "..") {
        return Err(BackendError::Permanent {
            status: 0,
            body: format!("refusing `{segment}` as a path segment of an outbound call"),
        });
    }
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(out)
}

/// An attribute value as text for platforms that only take strings; `null` means absent.
pub(crate) fn attribute_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The visitor's contact details picked out of the bot's attributes (keys matched case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VisitorContact {
    /// `firstname`, `first_name` or `name`, in that order of preference.
    pub firstname: Option<String>,
    /// `lastname` or `last_name`.
    pub lastname: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `phone`.
    pub phone: Option<String>,
    /// Every attribute not used above, as text (null attributes left out).
    pub extra: BTreeMap<String, String>,
}

impl VisitorContact {
    /// Splits attributes into contact fields and the rest.
    pub(crate) fn from_attributes(attributes: &BTreeMap<String, Value>) -> VisitorContact {
        let mut used: Vec<&str> = Vec::new();
        let mut pick = |aliases: &[&str]| -> Option<String> {
            for alias in aliases {
                let found = attributes
                    .iter()
                    .find(|(key, value)| key.eq_ignore_ascii_case(alias) && attribute_text(value).is_some());
                if let Some((key, value)) = found {
                    used.push(key.as_str());
                    return attribute_text(value);
                }
            }
            None
        };
        let firstname = pick(&["firstname", "first_name", "name"]);
        let lastname = pick(&["lastname", "last_name"]);
        let email = pick(&["email"]);
        let phone = pick(&["phone"]);
        let extra = attributes
            .iter()
            .filter(|(key, _)| !used.contains(&key.as_str()))
            .filter_map(|(key, value)| attribute_text(value).map(|text| (key.clone(), text)))
            .collect();
        VisitorContact {
            firstname,
            lastname,
            email,
            phone,
            extra,
        }
    }

    /// First and last name joined, when either is known.
    pub fn display_name(&self) -> Option<String> {
        let parts: Vec<&str> = [self.firstname.as_deref(), self.lastname.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(" "))
        }
    }
}

/// What the ledger asks a live backend when it queues a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRequest {
    /// The ledger's conversation.
    pub conversation_id: Uuid,
    /// Ultimate `platformConversationId`: the stable visitor identity.
    pub visitor_id: String,
    /// Aivo group ids from the route.
    pub groups: Vec<i64>,
    /// Attributes collected by the bot.
    pub attributes: BTreeMap<String, Value>,
    /// The team (`escalateTo` / `teamId`) the route was chosen for.
    pub team: Option<String>,
}

/// What a live backend answered to a queue call.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueResult {
    /// The backend's id for the chat (Aivo `conversationId`, Bright Pattern `chat_id`).
    pub live_id: String,
    /// The queue it went to, when known.
    pub queue: Option<String>,
    /// The answer as received, for the log.
    pub raw: Value,
}

/// A live chat platform the ledger hands conversations to.
#[async_trait]
pub trait LiveBackend: Send + Sync {
    /// `aivo_live` or `bright_pattern` (the `backend` of a route).
    fn name(&self) -> &'static str;
    /// Puts the conversation in a live queue.
    async fn queue(&self, req: &QueueRequest) -> Result<QueueResult, BackendError>;
    /// Passes a visitor's message to the agent side.
    async fn send_visitor_message(&self, live_id: &str, message_id: &str, text: &str) -> Result<(), BackendError>;
    /// Ends the live chat; Ok with nothing sent when the backend has no close call.
    async fn end(&self, live_id: &str, message_id: &str) -> Result<(), BackendError>;
    /// Whether the platform takes chats now (hours of operation / agents).
    async fn is_available(&self) -> Result<bool, BackendError>;
}

/// The outbound clients configured for this instance.
#[derive(Clone, Default)]
pub struct Backends {
    /// Aivo Live, when `[aivo_live] base_url` is set.
    pub aivo: Option<Arc<dyn LiveBackend>>,
    /// Bright Pattern, when `[bright_pattern] base_url` is set.
    pub bright_pattern: Option<Arc<dyn LiveBackend>>,
    /// The Ultimate widget API, when `[ultimate] api_url` is set.
    pub widget: Option<UltimateWidgetClient>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("aivo", &self.aivo.as_ref().map(|b| b.name()))
            .field("bright_pattern", &self.bright_pattern.as_ref().map(|b| b.name()))
            .field("widget", &self.widget.is_some())
            .finish()
    }
}

impl Backends {
    /// Builds every client whose base URL and credentials are configured.
    pub fn from_config(config: &Config) -> Result<Backends, BackendError> {
        // A backend is on only when it has its credentials: with the shipped defaults (public base URLs,
        // empty credentials) the service makes no outbound call at all.
        let aivo: Option<Arc<dyn LiveBackend>> =
            if config.aivo_live.base_url.trim().is_empty() || config.aivo_live.bot_token.is_empty() {
                None
            } else {
                Some(Arc::new(
                    AivoLiveClient::new(&config.aivo_live)?.with_max_response_bytes(config.outbox.max_response_bytes),
                ))
            };
        let bright_pattern: Option<Arc<dyn LiveBackend>> = if config.bright_pattern.base_url.trim().is_empty() {
            None
        } else {
            Some(Arc::new(
                BrightPatternClient::new(&config.bright_pattern)?
                    .with_max_response_bytes(config.outbox.max_response_bytes),
            ))
        };
        let widget = if config.ultimate.api_url.trim().is_empty() || config.ultimate.api_key.is_empty() {
            None
        } else {
            Some(UltimateWidgetClient::new(&config.ultimate)?.with_max_response_bytes(config.outbox.max_response_bytes))
        };
        Ok(Backends {
            aivo,
            bright_pattern,
            widget,
        })
    }

    /// The backend a route names, when it is configured.
    pub fn for_route(&self, route: &Route) -> Option<Arc<dyn LiveBackend>> {
        self.live(route.backend)
    }

    /// The client of a live backend, when it is configured.
    pub fn live(&self, backend: Backend) -> Option<Arc<dyn LiveBackend>> {
        match backend {
            Backend::AivoLive => self.aivo.clone(),
            Backend::BrightPattern => self.bright_pattern.clone(),
        }
    }

    /// Answers `isTeamOnline`: the route resolves, its schedule (when set) is open, and its backend says it is
    /// available within [`TEAM_ONLINE_DEADLINE`]. Any doubt (bad schedule, error, timeout) is "offline", because
    /// the bot then keeps the visitor instead of escalating into nothing.
    pub async fn team_online(&self, routing: &RoutingConfig, team: Option<&str>, now: DateTime<Utc>) -> bool {
        let Some(route) = routing.resolve(team) else {
            return false;
        };
        if let Some(hours) = &route.hours {
            match schedule::is_open(hours, now) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, team = ?team, "opening hours misconfigured: team reported offline");
                    return false;
                }
            }
        }
        let Some(backend) = self.for_route(route) else {
            tracing::warn!(backend = %route.backend, "route names a backend that is not configured");
            return false;
        };
        match tokio::time::timeout(TEAM_ONLINE_DEADLINE, backend.is_available()).await {
            Ok(Ok(available)) => available,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, backend = backend.name(), "availability check failed");
                false
            }
            Err(_) => {
                tracing::warn!(backend = backend.name(), "availability check exceeded its deadline");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn statuses_are_classified_by_retry_worth() {
        assert_eq!(classify_status(204, "x".into()), Ok("x".into()));
        for status in [408, 429, 500, 503] {
            let e = classify_status(status, "b".into()).unwrap_err();
            assert!(e.is_transient(), "{status}");
            assert_eq!(
                e,
                BackendError::Transient {
                    status,
                    body: "b".into()
                }
            );
        }
        for status in [400, 401, 404, 409, 422, 302] {
            let e = classify_status(status, String::new()).unwrap_err();
            assert!(!e.is_transient(), "{status}");
        }
        assert!(BackendError::Timeout.is_transient());
        assert!(BackendError::Network("x".into()).is_transient());
        assert!(!BackendError::Invalid("x".into()).is_transient());
    }

    #[test]
    fn contact_fields_are_matched_case_insensitively_and_the_rest_is_extra() {
        let c = VisitorContact::from_attributes(&attrs(json!({
            "FirstName": "Brian", "Last_Name": "Rodriguez", "EMAIL": null, "Phone": 5492236638596i64,
            "Ticket": 2024, "vip": true, "note": "hi", "empty": null
        })));
        assert_eq!(c.firstname.as_deref(), Some("Brian"));
        assert_eq!(c.lastname.as_deref(), Some("Rodriguez"));
        assert_eq!(c.email, None);
        assert_eq!(c.phone.as_deref(), Some("5492236638596"));
        let extra: Vec<(&str, &str)> = c.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(extra, vec![("Ticket", "2024"), ("note", "hi"), ("vip", "true")]);
        assert_eq!(c.display_name().as_deref(), Some("Brian Rodriguez"));
    }

    #[test]
    fn first_name_prefers_firstname_over_name_and_keeps_name_as_extra() {
        let c = VisitorContact::from_attributes(&attrs(json!({"name": "Bri", "first_name": "Brian"})));
        assert_eq!(c.firstname.as_deref(), Some("Brian"));
        assert_eq!(c.extra.get("name").map(String::as_str), Some("Bri"));
        let c = VisitorContact::from_attributes(&attrs(json!({"Name": "Ana"})));
        assert_eq!(c.firstname.as_deref(), Some("Ana"));
        assert!(c.extra.is_empty());
        assert_eq!(VisitorContact::default().display_name(), None);
    }

    #[test]
    fn path_segments_are_percent_encoded_and_urls_joined() {
        assert_eq!(encode_segment("e169f21f-6f7e_x.y~z").unwrap(), "e169f21f-6f7e_x.y~z");
        assert_eq!(encode_segment("a/b?c d").unwrap(), "a%2Fb%3Fc%20d");
        assert_eq!(encode_segment("...").unwrap(), "...");
        for bad in ["", ".", ".."] {
            assert!(encode_segment(bad).is_err(), "{bad:?}");
        }
        assert_eq!(join_url("http://h/api/", "/x/y"), "http://h/api/x/y");
        assert_eq!(join_url("http://h/api", "x"), "http://h/api/x");
    }
}
