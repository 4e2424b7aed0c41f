//! Pure parsing of platform payloads: raw bytes in, typed events and facts out. No I/O, no clock
//! (the received time is passed in). Platform quirks live here.
//!
//! Every platform module exposes two functions built on one decoder, so the webhook path and the
//! projection read a payload the same way:
//! - `parse_*` turns a delivery (raw body) into [`NewEvent`]s ready to append, or a [`PayloadError`];
//! - `facts_*` turns one stored event's payload back into the [`Fact`]s the projection folds.

pub mod aivo_live;
pub mod bright_pattern;
pub mod ledger;
pub mod ultimate;
pub mod vcc;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::model::{Agent, Button, Card, MessageKind, NewEvent, Party, Platform, StoredEvent, StreamKey};

/// Why a delivery was refused. Maps to `400 invalid_json` / `422 invalid_payload`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not UTF-8, or not JSON at all.
    #[error("{0}")]
    InvalidJson(String),
    /// JSON, but a required field is missing or of the wrong type.
    #[error("{message}")]
    InvalidPayload {
        /// Human sentence.
        message: String,
        /// JSON path of the offending field, e.g. `data.platformConversationId`.
        field: String,
    },
}

impl PayloadError {
    /// A missing or ill-typed field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        PayloadError::InvalidPayload {
            message: message.into(),
            field: field.into(),
        }
    }
}

/// The result of parsing one delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// Events to append, in body order (one for most platforms; several for a Bright Pattern batch).
    pub events: Vec<NewEvent>,
    /// True when the envelope was recognised but the event type is unknown (answered 202, kind `<platform>.unknown`).
    pub unknown: bool,
}

/// Context of a delivery that the body does not carry.
#[derive(Debug, Clone, Default)]
pub struct Delivery<'a> {
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// Headers worth keeping, lower-cased names.
    pub headers: BTreeMap<String, String>,
    /// `Idempotency-Key` header, when present.
    pub idempotency_key: Option<&'a str>,
    /// Path parameter (Bright Pattern `chat_id`).
    pub path_id: Option<&'a str>,
}

/// How a handoff was closed, as the platform tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// An agent closed it.
    Agent,
    /// The visitor left / ended it.
    Visitor,
    /// The platform closed it (queue clean-up, timeout, inactivity).
    Platform,
    /// Not said.
    Unknown,
}

/// A transcript line as a platform states it, before the projection numbers and attributes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageFact {
    /// Who sent it.
    pub party: Party,
    /// Sender's name when the payload gives it.
    pub author: Option<String>,
    /// Bright Pattern `party_id`: resolved to the agent (or scenario bot) who joined with it.
    pub party_id: Option<String>,
    /// What it is.
    pub kind: MessageKind,
    /// Text.
    pub text: Option<String>,
    /// Buttons.
    pub buttons: Vec<Button>,
    /// Cards.
    pub cards: Vec<Card>,
    /// URL / file id.
    pub url: Option<String>,
    /// True for an automatic message from the live side (Aivo `source: trigger`): never a response.
    pub automatic: bool,
}

impl MessageFact {
    /// A plain text line.
    pub fn text(party: Party, author: Option<String>, text: impl Into<String>) -> Self {
        MessageFact {
            party,
            author,
            party_id: None,
            kind: MessageKind::Text,
            text: Some(text.into()),
            buttons: Vec::new(),
            cards: Vec::new(),
            url: None,
            automatic: false,
        }
    }
}

/// What one event means for a conversation. The projection is a fold over these.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// A transcript line.
    Message(MessageFact),
    /// The bot (or support tooling) asked for a human.
    EscalationRequested {
        /// Team named by the bot (`escalateTo`) or the API.
        team: Option<String>,
    },
    /// The conversation entered a live queue (Aivo queue call accepted, Bright Pattern `queued`, VCC chat received).
    Queued {
        /// `aivo_live`, `bright_pattern`, `vcc`.
        backend: String,
        /// Queue / group.
        queue: Option<String>,
    },
    /// An agent attended. `party_id` is Bright Pattern's id for the agent.
    Attended {
        /// The agent.
        agent: Agent,
        /// Bright Pattern party id.
        party_id: Option<String>,
    },
    /// A Bright Pattern scenario (bot) party joined: its messages are bot lines, it is not an agent.
    ScenarioJoined {
        /// Party id.
        party_id: String,
        /// Display name.
        name: Option<String>,
    },
    /// An agent left without closing (Bright Pattern `party_left`).
    AgentLeft {
        /// Party id.
        party_id: Option<String>,
    },
    /// Transferred to another queue: back to queued.
    Transferred {
        /// From group.
        from_queue: Option<String>,
        /// To group.
        to_queue: Option<String>,
    },
    /// The visitor left (widgetEndSession, Bright Pattern client `chat_session_end`).
    VisitorLeft,
    /// The live platform closed the chat.
    Closed {
        /// Who closed it.
        by: ClosedBy,
        /// Reason text as given.
        reason: Option<String>,
    },
    /// The platform's own outcome values (VCC `disposition`, `slaStatus`).
    PlatformOutcome {
        /// Raw disposition.
        disposition: Option<String>,
        /// Raw SLA status.
        sla_status: Option<String>,
    },
    /// The hand-over itself failed (queue call refused, Bright Pattern `failed`).
    HandoffFailed {
        /// Why.
        reason: String,
    },
    /// Attributes collected for the conversation.
    Attributes(BTreeMap<String, Value>),
    /// An outbound call or command outcome recorded for support tooling (not a state change).
    Notice {
        /// Text of the notice.
        text: String,
    },
}

/// A fact with the time it happened. Most events give facts at their own `occurred_at`; a VCC body
/// carries a whole chat, so its facts carry the times of its lines.
pub type TimedFact = (DateTime<Utc>, Fact);

/// Decodes the facts of a stored event by its platform. Unknown kinds and kinds without meaning
/// for the projection give no facts. A payload that no longer parses gives no facts (it was
/// validated when appended; a parser change must not make replay fail).
pub fn facts_of(event: &StoredEvent) -> Vec<TimedFact> {
    let (kind, payload, at) = (event.kind.as_str(), &event.payload, event.occurred_at);
    match event.platform {
        Platform::Ultimate => ultimate::facts(kind, payload, at),
        Platform::AivoLive => aivo_live::facts(kind, payload, at),
        Platform::Vcc => vcc::facts(kind, payload, at),
        Platform::BrightPattern => bright_pattern::facts(kind, payload, at),
        Platform::Api | Platform::Ledger => ledger::facts(kind, payload, at),
    }
}

/// Parses raw bytes as UTF-8 JSON, with the error this service answers for each failure.
pub fn parse_json(body: &[u8]) -> Result<Value, PayloadError> {
    if body.is_empty() {
        return Err(PayloadError::InvalidJson("the body is empty".into()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| PayloadError::InvalidJson(format!("the body is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| PayloadError::InvalidJson(format!("the body is not valid JSON: {e}")))
}

/// Seconds, milliseconds, microseconds or nanoseconds since the epoch, told apart by magnitude
/// (Aivo sends 19-digit nanoseconds; Bright Pattern mixes seconds and milliseconds). Sub-microsecond
/// digits are dropped so that both stores keep the same instant.
pub fn epoch_to_utc(value: i64) -> Option<DateTime<Utc>> {
    let abs = value.unsigned_abs();
    let micros: i64 = if abs >= 100_000_000_000_000_000 {
        value / 1_000
    } else if abs >= 100_000_000_000_000 {
        value
    } else if abs >= 100_000_000_000 {
        value.checked_mul(1_000)?
    } else {
        value.checked_mul(1_000_000)?
    };
    Utc.timestamp_micros(micros).single()
}

/// Drops sub-microsecond precision (PostgreSQL keeps microseconds; both stores must agree).
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_micros(t.timestamp_micros()).single().unwrap_or(t)
}

/// A field that may be a JSON number or a numeric string, as platforms are inconsistent about it.
pub fn number_or_string(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// A scalar rendered as text (ids come as numbers on some platforms and strings on others).
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Builds the stream key helper used by every module.
pub fn stream(platform: Platform, external_id: impl Into<String>) -> StreamKey {
    StreamKey::new(platform, external_id)
}

/// Builds the event a delivery gives: event id from the delivery key, times truncated to microseconds,
/// the delivery's headers kept, no links.
pub fn delivered_event(
    platform: Platform,
    external_id: impl Into<String>,
    kind: impl Into<String>,
    delivery_key: Option<&str>,
    occurred_at: DateTime<Utc>,
    payload: &str,
    d: &Delivery,
) -> NewEvent {
    NewEvent {
        event_id: crate::model::event_id_for(platform, delivery_key),
        stream: StreamKey::new(platform, external_id),
        kind: kind.into(),
        occurred_at: truncate_to_micros(occurred_at),
        received_at: truncate_to_micros(d.received_at),
        payload: payload.to_string(),
        headers: d.headers.clone(),
        links: Vec::new(),
    }
}

/// An optional string field: absent, null and non-strings read as `None`.
pub fn opt_str(parent: &Value, key: &str) -> Option<String> {
    parent.get(key).and_then(Value::as_str).map(str::to_string)
}

/// An optional id-like field (string or number) as text: absent, null and empty strings read as `None`.
pub fn opt_text(parent: &Value, key: &str) -> Option<String> {
    parent.get(key).and_then(scalar_text).filter(|s| !s.is_empty())
}

/// A required string field; `path` is the JSON path named in the error.
pub fn required_str(parent: &Value, key: &str, path: &str) -> Result<String, PayloadError> {
    match parent.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(PayloadError::field(path, format!("`{path}` is required"))),
        Some(_) => Err(PayloadError::field(path, format!("`{path}` must be a string"))),
    }
}

/// Joins a JSON path prefix and a key (`""` + `event` = `event`, `events[2]` + `event` = `events[2].event`).
pub fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
