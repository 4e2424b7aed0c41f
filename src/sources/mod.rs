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
pub mod vcc_crypto;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

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
    /// The stable name of the refusal, kept with a quarantined body (the API answers it as its error code).
    pub fn code(&self) -> &'static str {
        match self {
            PayloadError::InvalidJson(_) => "invalid_json",
            PayloadError::InvalidPayload { .. } => "invalid_payload",
        }
    }

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
///
/// Serialisable because an erasure keeps the facts of the events it erases (personal fields removed)
/// in its `ledger.erased` event: change variants compatibly (new fields with defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A visitor message this service relayed to a live chat under this message id. A live platform that
    /// echoes it back (Bright Pattern chat history carries the client's own messages) is not a second line.
    VisitorMessageRelayed {
        /// The id the message was sent with (the command id).
        message_id: String,
    },
    /// An outbound call or command outcome recorded for support tooling (not a state change).
    Notice {
        /// Text of the notice.
        text: String,
    },
    /// An erasure replaced these events' payloads by stubs (`ledger.erased`): their kept facts stand in
    /// for the facts the payloads gave, and their transcript lines lose texts and authors.
    Erased {
        /// The erased events.
        events: Vec<KeptEvent>,
    },
}

/// What an erasure keeps of one event: its facts without personal data (see `erasure::kept_facts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptEvent {
    /// The erased event's seq.
    pub seq: i64,
    /// Its id.
    pub event_id: Uuid,
    /// Its platform.
    pub platform: Platform,
    /// Its facts, personal fields removed, with their times.
    pub facts: Vec<TimedFact>,
}

/// A fact with the time it happened. Most events give facts at their own `occurred_at`; a VCC body
/// carries a whole chat, so its facts carry the times of its lines.
pub(crate) type TimedFact = (DateTime<Utc>, Fact);

/// Decodes the facts of a stored event by its platform. Unknown kinds and kinds without meaning
/// for the projection give no facts. A payload that no longer parses gives no facts (it was
/// validated when appended; a parser change must not make replay fail).
pub(crate) fn facts_of(event: &StoredEvent) -> Vec<TimedFact> {
    let (kind, payload, at) = (event.kind.as_str(), &event.payload, event.occurred_at);
    match event.platform {
        Platform::Ultimate => ultimate::facts(kind, payload, at),
        Platform::AivoLive => aivo_live::facts(kind, payload, at),
        Platform::Vcc => vcc::facts(kind, payload, at),
        Platform::BrightPattern => bright_pattern::facts(kind, payload, at),
        Platform::Api | Platform::Ledger => ledger::facts(kind, payload, at),
    }
}

/// Whether an event carries neither an id nor a time of its own (see
/// [`bright_pattern::identified_by_position`]): a repeat of its delivery key after other events of its
/// stream is a new event.
pub fn identified_by_position(event: &NewEvent) -> bool {
    event.stream.platform == Platform::BrightPattern && bright_pattern::identified_by_position(&event.payload)
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
pub(crate) fn epoch_to_utc(value: i64) -> Option<DateTime<Utc>> {
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
pub(crate) fn number_or_string(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// An integer as JSON Schema counts one: a number without fraction within `i64` (`72` and `72.0` alike), or a
/// string of decimal digits (platforms are inconsistent about ids and times). `None` for anything else.
pub(crate) fn json_integer(v: &Value) -> Option<i64> {
    // 2^63 as f64: every integral f64 strictly between -2^63 and 2^63 converts to i64 exactly. (-2^63 itself
    // is refused as a float: it is also what -2^63 - 1 rounds to; written as an integer it is read exactly.)
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f > -LIMIT && *f < LIMIT)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// A scalar rendered as text (ids come as numbers on some platforms and strings on others).
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
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

/// When an event happened, causally: the platform's own time, but never after we received it (vendor
/// clocks drift; one running ahead must not stamp events after what we do next); the received time
/// when the platform gives none.
pub fn causal_time(platform_at: Option<DateTime<Utc>>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    platform_at.map_or(received_at, |at| at.min(received_at))
}

/// Builds the event a delivery gives: event id from the delivery key, `platform_at` the platform's
/// own time (None when it gives none), `occurred_at` its [`causal_time`], times truncated to
/// microseconds, the delivery's headers kept, no links.
pub(crate) fn delivered_event(
    platform: Platform,
    external_id: impl Into<String>,
    kind: impl Into<String>,
    delivery_key: Option<&str>,
    platform_at: Option<DateTime<Utc>>,
    payload: &str,
    d: &Delivery,
) -> NewEvent {
    let platform_at = platform_at.map(truncate_to_micros);
    let received_at = truncate_to_micros(d.received_at);
    NewEvent {
        event_id: crate::model::event_id_for(platform, delivery_key),
        stream: StreamKey::new(platform, external_id),
        kind: kind.into(),
        occurred_at: causal_time(platform_at, received_at),
        platform_at,
        received_at,
        payload: payload.to_string(),
        headers: d.headers.clone(),
        links: Vec::new(),
    }
}

/// An optional string field: absent, null and non-strings read as `None`.
pub(crate) fn opt_str(parent: &Value, key: &str) -> Option<String> {
    parent.get(key).and_then(Value::as_str).map(str::to_string)
}

/// An optional id-like field (string or number) as text: absent, null and empty strings read as `None`.
pub(crate) fn opt_text(parent: &Value, key: &str) -> Option<String> {
    parent.get(key).and_then(scalar_text).filter(|s| !s.is_empty())
}

/// A required string field; `path` is the JSON path named in the error.
pub(crate) fn required_str(parent: &Value, key: &str, path: &str) -> Result<String, PayloadError> {
    match parent.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(PayloadError::field(path, format!("`{path}` is required"))),
        Some(_) => Err(PayloadError::field(path, format!("`{path}` must be a string"))),
    }
}

/// Joins a JSON path prefix and a key (`""` + `event` = `event`, `events[2]` + `event` = `events[2].event`).
pub(crate) fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn is_invalid_json(r: Result<Value, PayloadError>) -> bool {
        matches!(r, Err(PayloadError::InvalidJson(_)))
    }

    #[test]
    fn json_integers_are_whole_numbers_in_range_or_digit_strings() {
        assert_eq!(json_integer(&json!(72)), Some(72));
        assert_eq!(json_integer(&json!(72.0)), Some(72));
        assert_eq!(json_integer(&json!(-4)), Some(-4));
        assert_eq!(json_integer(&json!(" 42 ")), Some(42));
        assert_eq!(json_integer(&json!(1.5)), None);
        assert_eq!(json_integer(&json!(u64::MAX)), None);
        assert_eq!(json_integer(&json!(1e19)), None);
        assert_eq!(json_integer(&json!(i64::MIN)), Some(i64::MIN));
        assert_eq!(
            json_integer(&serde_json::from_str::<Value>("-9223372036854775809").unwrap_or_default()),
            None
        );
        assert_eq!(json_integer(&json!("12a")), None);
        assert_eq!(json_integer(&json!(true)), None);
    }

    #[test]
    fn parse_json_refuses_an_empty_body() {
        assert_eq!(
            parse_json(b""),
            Err(PayloadError::InvalidJson("the body is empty".into()))
        );
        assert!(is_invalid_json(parse_json(b"   ")));
    }

    #[test]
    fn parse_json_refuses_invalid_utf8() {
        let r = parse_json(b"{\"event\": \"\xff\xfe\"}");
        let Err(PayloadError::InvalidJson(msg)) = r else {
            panic!("{r:?}")
        };
        assert!(msg.contains("UTF-8"), "{msg}");
    }

    #[test]
    fn parse_json_refuses_the_bright_pattern_documents_curly_quotes() {
        let r = parse_json("{“event”: “chat_session_ended”}".as_bytes());
        let Err(PayloadError::InvalidJson(msg)) = r else {
            panic!("{r:?}")
        };
        assert!(msg.contains("not valid JSON"), "{msg}");
    }

    #[test]
    fn parse_json_refuses_deep_nesting_without_overflowing_the_stack() {
        for depth in [200, 100_000] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert!(is_invalid_json(parse_json(body.as_bytes())), "depth {depth}");
            let body = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            assert!(is_invalid_json(parse_json(body.as_bytes())), "depth {depth}");
        }
        // Moderate nesting is fine.
        let body = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_json(body.as_bytes()).is_ok());
    }

    #[test]
    fn parse_json_accepts_non_objects_for_the_parsers_to_refuse() {
        assert_eq!(parse_json(b"[1,2]"), Ok(json!([1, 2])));
        assert_eq!(parse_json(b"null"), Ok(Value::Null));
    }

    #[test]
    fn epoch_magnitudes() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(epoch_to_utc(1_706_293_970), Some(t("2024-01-26T18:32:50Z")));
        assert_eq!(epoch_to_utc(1_706_293_970_842), Some(t("2024-01-26T18:32:50.842Z")));
        assert_eq!(
            epoch_to_utc(1_706_293_970_842_633_079),
            Some(t("2024-01-26T18:32:50.842633Z"))
        );
    }

    #[test]
    fn field_helpers() {
        let v = json!({"s": "x", "n": 12, "e": "", "z": null, "o": {}});
        assert_eq!(opt_str(&v, "s").as_deref(), Some("x"));
        assert_eq!(opt_str(&v, "n"), None);
        assert_eq!(opt_text(&v, "n").as_deref(), Some("12"));
        assert_eq!(opt_text(&v, "e"), None);
        assert_eq!(opt_text(&v, "o"), None);
        assert_eq!(required_str(&v, "s", "a.s"), Ok("x".into()));
        assert!(
            matches!(required_str(&v, "z", "a.z"), Err(PayloadError::InvalidPayload { field, .. }) if field == "a.z")
        );
        assert!(
            matches!(required_str(&v, "n", "a.n"), Err(PayloadError::InvalidPayload { field, .. }) if field == "a.n")
        );
        assert_eq!(join_path("", "event"), "event");
        assert_eq!(join_path("events[2]", "event"), "events[2].event");
    }
}

#[cfg(test)]
mod robustness {
    //! Every parser and every facts decoder over many ill-shaped variants of valid bodies: no panic, and
    //! whatever `parse` accepts reads back through `facts` as the kind it was stored under.

    use super::*;
    use serde_json::json;

    fn replacements() -> Vec<Value> {
        vec![
            Value::Null,
            json!(true),
            json!(0),
            json!(-1),
            json!(i64::MAX),
            json!(1.0e300),
            json!(""),
            json!("1706293970842633079"),
            json!([]),
            json!([1, "x"]),
            json!({}),
            json!({"name": 1}),
        ]
    }

    /// Every variant of `v` with one value (at any depth) replaced, or one key removed.
    fn variants(v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let mut removed = map.clone();
                    removed.remove(k);
                    out.push(Value::Object(removed));
                    for r in replacements().into_iter().chain(variants(child)) {
                        let mut m = map.clone();
                        m.insert(k.clone(), r);
                        out.push(Value::Object(m));
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    for r in replacements().into_iter().chain(variants(child)) {
                        let mut a = items.clone();
                        a[i] = r;
                        out.push(Value::Array(a));
                    }
                }
            }
            _ => {}
        }
        out
    }

    type ParseFn = fn(&str, &Value, &Delivery) -> Result<Parsed, PayloadError>;
    type FactsFn = fn(&str, &Value, DateTime<Utc>) -> Vec<TimedFact>;

    fn check(name: &str, parse: ParseFn, facts: FactsFn, body: Value) {
        let d = Delivery {
            received_at: Utc.timestamp_opt(1_700_000_000, 0).single().unwrap_or_default(),
            path_id: Some("chat-1"),
            ..Delivery::default()
        };
        let mut accepted = 0;
        let all = variants(&body);
        let original = body.to_string();
        assert!(all.len() > 20, "{name}: too few variants");
        for v in all.into_iter().chain([body]) {
            let raw = v.to_string();
            let _ = facts("x.unknown", &v, d.received_at);
            match parse(&raw, &v, &d) {
                Ok(parsed) => {
                    accepted += 1;
                    for e in parsed.events {
                        assert!(e.kind.starts_with(name), "{name}: {}", e.kind);
                        let stored: Value = serde_json::from_str(&e.payload).unwrap();
                        let f = facts(&e.kind, &stored, e.occurred_at);
                        let f2 = facts(&e.kind, &stored, e.occurred_at);
                        assert_eq!(f, f2, "{name}: facts are deterministic");
                    }
                }
                Err(PayloadError::InvalidPayload { field, .. }) => {
                    // The path names a field of the body (or the path's chat id).
                    let head = field.split(['.', '[']).next().unwrap_or("");
                    assert!(
                        head.is_empty()
                            || head == "chat_id"
                            || head == "event"
                            || original.contains(&format!("\"{head}\"")),
                        "{name}: field `{field}` for {raw}"
                    );
                }
                Err(e) => panic!("{name}: parsed JSON gave {e:?}"),
            }
        }
        assert!(accepted > 0, "{name}: nothing accepted");
    }

    #[test]
    fn ultimate_converse_never_panics() {
        check(
            "ultimate.",
            ultimate::parse,
            ultimate::facts,
            json!({"botId": "b", "data": {"eventType": "sendMessage", "platformConversationId": "c",
                "messageId": "m", "type": "carousel", "text": "t",
                "buttons": [{"type": "link", "text": "x", "url": "u"}],
                "carouselCards": [{"title": "t", "description": "d", "imageUrl": "i",
                    "buttons": [{"type": "button", "text": "b"}]}]}}),
        );
        for event_type in [
            "escalate",
            "widgetEscalate",
            "widgetMessage",
            "widgetEndSession",
            "isTeamOnline",
        ] {
            check(
                "ultimate.",
                ultimate::parse,
                ultimate::facts,
                json!({"botId": 1, "data": {"eventType": event_type, "platformConversationId": "c",
                    "escalateTo": "t", "teamId": 2, "text": "hi"}}),
            );
        }
    }

    #[test]
    fn ultimate_actions_never_panic() {
        check(
            "ultimate.",
            ultimate::parse_action,
            ultimate::facts,
            json!({"botId": "b", "platformConversationId": "c", "name": "setAttributes",
                "data": [{"key": "k", "value": ["v"], "saveAs": "s"}, {"key": "k2", "value": [1, 2]}]}),
        );
    }

    #[test]
    fn aivo_live_never_panics() {
        for (name, data) in [
            (
                "attended",
                json!({"agent": {"name": "T", "nickname": "N", "groupId": 2179}}),
            ),
            ("transfer", json!({"originGroup": 1, "target": "2", "agent": {}})),
            (
                "messageToClient",
                json!({"action": "image", "value": "v", "source": "agent", "agent": {"name": "a"}}),
            ),
            ("close", json!({"reason": "agent", "agent": {}})),
        ] {
            check(
                "aivo_live.",
                aivo_live::parse,
                aivo_live::facts,
                json!({"name": name, "roomId": "r", "timestamp": 1706293970842633079_i64, "botId": 1000,
                    "eventTime": 1706293970, "data": data}),
            );
        }
    }

    #[test]
    fn vcc_never_panics() {
        check(
            "vcc.",
            vcc::parse,
            vcc::facts,
            json!({"chatId": 1, "projectId": 2, "firstAgentName": "A", "lastAgentName": "B",
                "firstQueueName": "Q1", "lastQueueName": "Q2", "ticketId": 3, "contactId": 4,
                "disposition": "completed", "slaStatus": "answeredBeforeSLA",
                "conversation": [{"from": "Visitor", "date": "2025-03-06T14:37:52+01:00", "message": "hi"},
                    {"from": "A", "date": "2025-03-06T14:37:57+01:00", "message": "hello"},
                    {"from": "B", "date": "2025-03-06T14:38:57+01:00", "message": "bye"}],
                "clientData": {"name": "J", "list": [23]}}),
        );
    }

    #[test]
    fn bright_pattern_never_panics() {
        check(
            "bright_pattern.",
            bright_pattern::parse,
            bright_pattern::facts,
            json!({"events": [
                {"event": "chat_session_party_joined", "party_id": "p", "first_name": "F", "last_name": "L",
                    "type": "scenario", "timestamp": "1709294400123", "chat_id": "chat-1"},
                {"event": "chat_session_status", "state": "queued", "timestamp": 1709294400},
                {"event": "chat_session_file", "party_id": "p", "msg_id": "m", "file_id": "f", "file_type": "image"},
                {"event": "chat_session_inactvity_timeout", "msg": "bye", "timestamp": 1709294400.5},
                {"event": "chat_session_form_show", "form_name": "survey"}
            ]}),
        );
    }
}
