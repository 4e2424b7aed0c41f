//! Bright Pattern chat session events, delivered as `{"events": [...]}` (the shape of Get New Chat Events /
//! Get Chat History) or as one event object, for the chat named in the path.
//!
//! Quirks: timestamps are seconds for some events and milliseconds for others (told apart by magnitude),
//! and one document spells `chat_session_inactvity_timeout`. One decoder ([`decode_event`]) serves both the
//! delivery path and the projection; each event of a batch is stored with its own exact JSON text.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{
    delivered_event, epoch_to_utc, join_path, opt_str, opt_text, truncate_to_micros, ClosedBy, Delivery, Fact,
    MessageFact, Parsed, PayloadError, TimedFact,
};
use crate::model::{Agent, MessageKind, Party, Platform};

/// Kind of an event whose name this version does not know.
pub(crate) const UNKNOWN: &str = "bright_pattern.unknown";
/// Kind of `chat_session_status`.
pub(crate) const STATUS: &str = "bright_pattern.chat_session_status";
/// Kind of `chat_session_ended`.
pub(crate) const ENDED: &str = "bright_pattern.chat_session_ended";
/// Kind of `chat_session_party_joined`.
pub(crate) const PARTY_JOINED: &str = "bright_pattern.chat_session_party_joined";
/// Kind of `chat_session_party_left`.
pub(crate) const PARTY_LEFT: &str = "bright_pattern.chat_session_party_left";
/// Kind of `chat_session_message`.
pub(crate) const MESSAGE: &str = "bright_pattern.chat_session_message";
/// Kind of `chat_session_typing`.
pub(crate) const TYPING: &str = "bright_pattern.chat_session_typing";
/// Kind of `chat_session_not_typing`.
pub(crate) const NOT_TYPING: &str = "bright_pattern.chat_session_not_typing";
/// Kind of `chat_session_form_show`.
pub(crate) const FORM_SHOW: &str = "bright_pattern.chat_session_form_show";
/// Kind of `chat_session_timeout_warning`.
pub(crate) const TIMEOUT_WARNING: &str = "bright_pattern.chat_session_timeout_warning";
/// Kind of `chat_session_inactivity_timeout`.
pub(crate) const INACTIVITY_TIMEOUT: &str = "bright_pattern.chat_session_inactivity_timeout";
/// Kind of `chat_session_signaling`.
pub(crate) const SIGNALING: &str = "bright_pattern.chat_session_signaling";
/// Kind of `chat_session_file`.
pub(crate) const FILE: &str = "bright_pattern.chat_session_file";
/// Kind of `chat_session_end`.
pub(crate) const END: &str = "bright_pattern.chat_session_end";
/// Kind of `chat_session_form_data`.
pub(crate) const FORM_DATA: &str = "bright_pattern.chat_session_form_data";
/// Every kind the parser produces.
pub const KINDS: &[&str] = &[
    STATUS,
    ENDED,
    PARTY_JOINED,
    PARTY_LEFT,
    MESSAGE,
    TYPING,
    NOT_TYPING,
    FORM_SHOW,
    TIMEOUT_WARNING,
    INACTIVITY_TIMEOUT,
    SIGNALING,
    FILE,
    END,
    FORM_DATA,
    UNKNOWN,
];

/// The event names this version knows (server and client events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BpEventName {
    /// `chat_session_status` (server).
    Status,
    /// `chat_session_ended` (server): normal termination, e.g. closed by the agent.
    Ended,
    /// `chat_session_party_joined` (server).
    PartyJoined,
    /// `chat_session_party_left` (server).
    PartyLeft,
    /// `chat_session_message` (server with `party_id`, client without).
    Message,
    /// `chat_session_typing`.
    Typing,
    /// `chat_session_not_typing`.
    NotTyping,
    /// `chat_session_form_show` (server).
    FormShow,
    /// `chat_session_timeout_warning` (server).
    TimeoutWarning,
    /// `chat_session_inactivity_timeout` (server; also accepted as `chat_session_inactvity_timeout`).
    InactivityTimeout,
    /// `chat_session_signaling` (server).
    Signaling,
    /// `chat_session_file`.
    File,
    /// `chat_session_end` (client): the visitor ended the chat.
    End,
    /// `chat_session_form_data` (client).
    FormData,
    /// Anything else.
    Unknown,
}

impl BpEventName {
    /// Reads an event name, accepting the documented misspelling.
    pub(crate) fn from_name(name: &str) -> Self {
        match name {
            "chat_session_status" => Self::Status,
            "chat_session_ended" => Self::Ended,
            "chat_session_party_joined" => Self::PartyJoined,
            "chat_session_party_left" => Self::PartyLeft,
            "chat_session_message" => Self::Message,
            "chat_session_typing" => Self::Typing,
            "chat_session_not_typing" => Self::NotTyping,
            "chat_session_form_show" => Self::FormShow,
            "chat_session_timeout_warning" => Self::TimeoutWarning,
            "chat_session_inactivity_timeout" | "chat_session_inactvity_timeout" => Self::InactivityTimeout,
            "chat_session_signaling" => Self::Signaling,
            "chat_session_file" => Self::File,
            "chat_session_end" => Self::End,
            "chat_session_form_data" => Self::FormData,
            _ => Self::Unknown,
        }
    }

    /// The event kind stored in the log.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Status => STATUS,
            Self::Ended => ENDED,
            Self::PartyJoined => PARTY_JOINED,
            Self::PartyLeft => PARTY_LEFT,
            Self::Message => MESSAGE,
            Self::Typing => TYPING,
            Self::NotTyping => NOT_TYPING,
            Self::FormShow => FORM_SHOW,
            Self::TimeoutWarning => TIMEOUT_WARNING,
            Self::InactivityTimeout => INACTIVITY_TIMEOUT,
            Self::Signaling => SIGNALING,
            Self::File => FILE,
            Self::End => END,
            Self::FormData => FORM_DATA,
            Self::Unknown => UNKNOWN,
        }
    }
}

/// One decoded Bright Pattern event. Fields that an event does not carry are `None`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BpEvent {
    /// `event` exactly as sent.
    pub name: String,
    /// What it is.
    pub event: BpEventName,
    /// `chat_id`, when the event carries one.
    pub chat_id: Option<String>,
    /// `party_id`: the server-side party (agent or scenario) that sent it.
    pub party_id: Option<String>,
    /// `msg_id`.
    pub msg_id: Option<String>,
    /// `msg`.
    pub msg: Option<String>,
    /// `state` of `chat_session_status`.
    pub state: Option<String>,
    /// `timestamp` as sent, as text.
    pub timestamp: Option<String>,
    /// `timestamp` read as a time (seconds or milliseconds).
    pub at: Option<DateTime<Utc>>,
    /// `type` of `chat_session_party_joined`: `scenario`, `external` or `internal`.
    pub party_type: Option<String>,
    /// `display_name`.
    pub display_name: Option<String>,
    /// `first_name`.
    pub first_name: Option<String>,
    /// `last_name`.
    pub last_name: Option<String>,
    /// `file_id`.
    pub file_id: Option<String>,
    /// `file_type`: `image` or `attachment`.
    pub file_type: Option<String>,
    /// `form_name`.
    pub form_name: Option<String>,
}

impl BpEvent {
    /// `msg_id` when present, else `{chat_id}:{event}:{timestamp}:{party_id}:{state}`.
    pub(crate) fn delivery_key(&self, chat_id: &str) -> String {
        match &self.msg_id {
            Some(id) => id.clone(),
            None => format!(
                "{chat_id}:{}:{}:{}:{}",
                self.name,
                self.timestamp.as_deref().unwrap_or(""),
                self.party_id.as_deref().unwrap_or(""),
                self.state.as_deref().unwrap_or("")
            ),
        }
    }

    /// Display name of a joining party: `display_name`, else first + last name.
    pub(crate) fn party_name(&self) -> Option<String> {
        self.display_name.clone().or_else(|| {
            let full = [self.first_name.as_deref(), self.last_name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            Some(full.trim().to_string()).filter(|s| !s.is_empty())
        })
    }
}

/// Decodes one event object; `path` is its JSON path in the body (`""` for a lone event, `events[2]`).
pub(crate) fn decode_event(value: &Value, path: &str) -> Result<BpEvent, PayloadError> {
    let event_path = join_path(path, "event");
    let name = match value.get("event") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(PayloadError::field(
                event_path.clone(),
                format!("`{event_path}` is required: each event is an object with a string `event`"),
            ))
        }
    };
    let text = |k: &str| opt_str(value, k).filter(|s| !s.is_empty());
    let id = |k: &str| opt_text(value, k);
    let raw_timestamp = value.get("timestamp");
    Ok(BpEvent {
        event: BpEventName::from_name(&name),
        name,
        chat_id: id("chat_id"),
        party_id: id("party_id"),
        msg_id: id("msg_id"),
        msg: opt_str(value, "msg"),
        state: text("state"),
        timestamp: raw_timestamp.and_then(super::scalar_text).filter(|s| !s.is_empty()),
        at: raw_timestamp.and_then(epoch_time),
        party_type: text("type"),
        display_name: text("display_name"),
        first_name: text("first_name"),
        last_name: text("last_name"),
        file_id: id("file_id"),
        file_type: text("file_type"),
        form_name: text("form_name"),
    })
}

/// The raw text of each element of `events`, borrowed from the body so it is stored byte for byte.
#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Parses one delivery into events to append.
pub fn parse(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    if !value.is_object() {
        return Err(PayloadError::field("", "the body must be a JSON object"));
    }
    let chat_id = d
        .path_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| PayloadError::field("chat_id", "the chat id is required in the path"))?;
    let elements: Vec<(String, &Value, &str)> = match value.get("events") {
        Some(Value::Array(items)) => {
            let batch: RawBatch = serde_json::from_str(raw)
                .map_err(|e| PayloadError::field("events", format!("`events` could not be sliced: {e}")))?;
            if batch.events.len() != items.len() {
                return Err(PayloadError::field("events", "`events` is ambiguous (duplicate key?)"));
            }
            items
                .iter()
                .zip(batch.events)
                .enumerate()
                .map(|(i, (v, r))| (format!("events[{i}]"), v, r.get()))
                .collect()
        }
        Some(_) => return Err(PayloadError::field("events", "`events` must be an array")),
        None if value.get("event").is_some() => vec![(String::new(), value, raw)],
        None => {
            return Err(PayloadError::field(
                "event",
                "the body must be `{\"events\": [...]}` or one event object",
            ))
        }
    };
    let mut events = Vec::with_capacity(elements.len());
    let mut all_unknown = !elements.is_empty();
    for (path, element, text) in elements {
        let ev = decode_event(element, &path)?;
        if let Some(own) = ev.chat_id.as_deref().filter(|own| *own != chat_id) {
            let field = join_path(&path, "chat_id");
            return Err(PayloadError::field(
                field.clone(),
                format!("`{field}` is `{own}` but the delivery is for chat `{chat_id}`"),
            ));
        }
        all_unknown &= ev.event == BpEventName::Unknown;
        let key = ev.delivery_key(chat_id);
        events.push(delivered_event(
            Platform::BrightPattern,
            chat_id,
            ev.event.kind(),
            Some(&key),
            ev.at,
            text,
            d,
        ));
    }
    Ok(Parsed {
        events,
        unknown: all_unknown,
    })
}

/// Whether an event (its own JSON text) carries neither an id nor a time: its delivery key then says
/// what it is (`chat_session_status` `queued`), not which one, so the same key seen again after other
/// events of its chat is a new event (queued again after a transfer), not a redelivery.
pub fn identified_by_position(payload: &str) -> bool {
    serde_json::from_str::<Value>(payload)
        .ok()
        .and_then(|v| decode_event(&v, "").ok())
        .is_some_and(|ev| ev.msg_id.is_none() && ev.at.is_none())
}

/// The facts of one stored event of this platform.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    let Ok(ev) = decode_event(payload, "") else {
        return Vec::new();
    };
    // A payload that now decodes to another kind than the one stored is not re-interpreted.
    if ev.event.kind() != kind {
        return Vec::new();
    }
    event_facts(&ev).into_iter().map(|f| (at, f)).collect()
}

/// What one event means for the conversation.
pub(crate) fn event_facts(ev: &BpEvent) -> Vec<Fact> {
    let system_text = |text: Option<&String>| {
        text.filter(|t| !t.is_empty())
            .map(|t| Fact::Message(MessageFact::text(Party::System, None, t.clone())))
    };
    match ev.event {
        BpEventName::Status => match ev.state.as_deref() {
            Some("queued") => vec![Fact::Queued {
                backend: "bright_pattern".into(),
                queue: None,
            }],
            Some("failed") => vec![Fact::HandoffFailed {
                reason: "chat_session_status failed".into(),
            }],
            Some("completed") => vec![Fact::Closed {
                by: ClosedBy::Unknown,
                reason: Some("completed".into()),
            }],
            _ => Vec::new(),
        },
        BpEventName::PartyJoined if ev.party_type.as_deref() == Some("scenario") => match &ev.party_id {
            Some(party_id) => vec![Fact::ScenarioJoined {
                party_id: party_id.clone(),
                name: ev.party_name(),
            }],
            None => Vec::new(),
        },
        // external, internal, and an unstated type: a human agent.
        BpEventName::PartyJoined => vec![Fact::Attended {
            agent: Agent {
                name: ev
                    .party_name()
                    .or_else(|| ev.party_id.clone())
                    .unwrap_or_else(|| "agent".into()),
                nickname: None,
                group: None,
            },
            party_id: ev.party_id.clone(),
        }],
        BpEventName::PartyLeft => vec![Fact::AgentLeft {
            party_id: ev.party_id.clone(),
        }],
        BpEventName::Ended => vec![Fact::Closed {
            by: ClosedBy::Agent,
            reason: Some("ended".into()),
        }],
        BpEventName::End => vec![Fact::VisitorLeft],
        BpEventName::InactivityTimeout => system_text(ev.msg.as_ref())
            .into_iter()
            .chain([Fact::Closed {
                by: ClosedBy::Platform,
                reason: Some("inactivity_timeout".into()),
            }])
            .collect(),
        BpEventName::TimeoutWarning => system_text(ev.msg.as_ref()).into_iter().collect(),
        BpEventName::Message => vec![Fact::Message(MessageFact {
            party_id: ev.party_id.clone(),
            text: ev.msg.clone(),
            ..MessageFact::text(sender(ev), None, "")
        })],
        BpEventName::File => vec![Fact::Message(MessageFact {
            party_id: ev.party_id.clone(),
            kind: if ev.file_type.as_deref() == Some("image") {
                MessageKind::Image
            } else {
                MessageKind::File
            },
            text: None,
            url: ev.file_id.clone(),
            ..MessageFact::text(sender(ev), None, "")
        })],
        BpEventName::FormShow => vec![Fact::Message(MessageFact {
            kind: MessageKind::Event,
            ..MessageFact::text(
                Party::System,
                None,
                match &ev.form_name {
                    Some(name) => format!("form requested: {name}"),
                    None => "form requested".to_string(),
                },
            )
        })],
        BpEventName::FormData => vec![Fact::Message(MessageFact {
            kind: MessageKind::Event,
            ..MessageFact::text(Party::Visitor, None, "form submitted")
        })],
        BpEventName::Typing | BpEventName::NotTyping | BpEventName::Signaling | BpEventName::Unknown => Vec::new(),
    }
}

/// Server events name the sending party; client events (the visitor's) carry none. The projection
/// resolves a party id to the agent or scenario bot that joined with it.
fn sender(ev: &BpEvent) -> Party {
    if ev.party_id.is_some() {
        Party::Agent
    } else {
        Party::Visitor
    }
}

/// A Bright Pattern timestamp: seconds or milliseconds (by magnitude), as a number or a string, possibly
/// fractional; an RFC 3339 string is accepted too. Zero and negative values mean "not given".
fn epoch_time(v: &Value) -> Option<DateTime<Utc>> {
    let exact = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    if let Some(i) = exact {
        return Some(i).filter(|i| *i > 0).and_then(epoch_to_utc);
    }
    let float = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match float {
        Some(f) if f.is_finite() && f > 0.0 => {
            let micros = if f >= 1e11 { f * 1e3 } else { f * 1e6 };
            if micros >= i64::MAX as f64 {
                return None;
            }
            Utc.timestamp_micros(micros.round() as i64).single()
        }
        Some(_) => None,
        None => v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(|t| truncate_to_micros(t.with_timezone(&Utc))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{event_id_for, StreamKey};
    use crate::sources::parse_json;
    use crate::sources::testing::{self, field_of, utc};
    use serde_json::json;

    const CHAT: &str = "9F3A1C2B";

    /// After every time the bodies below carry (a platform time after it would be clamped to it).
    fn received() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 13, 0, 0).unwrap()
    }

    fn delivery(path_id: Option<&str>) -> Delivery<'_> {
        testing::delivery(received(), ("content-type", "application/json"), path_id)
    }

    fn run(raw: &str) -> Result<Parsed, PayloadError> {
        testing::run(parse, raw, &delivery(Some(CHAT)))
    }

    fn one(raw: &str) -> (String, Vec<Fact>) {
        let parsed = run(raw).unwrap();
        assert_eq!(parsed.events.len(), 1, "{raw}");
        let e = &parsed.events[0];
        let facts = testing::first_facts(&parsed, facts);
        assert!(facts.iter().all(|(t, _)| *t == e.occurred_at));
        (e.kind.clone(), facts.into_iter().map(|(_, f)| f).collect())
    }

    /// The documented formats, curly quotes straightened, placeholders kept as written.
    #[test]
    fn documented_server_event_formats() {
        let cases: Vec<(&str, &str, Vec<Fact>)> = vec![
            (
                r#"{"event": "chat_session_status", "state": "queued", "ewt": "estimated waiting time for queued status"}"#,
                "bright_pattern.chat_session_status",
                vec![Fact::Queued {
                    backend: "bright_pattern".into(),
                    queue: None,
                }],
            ),
            (
                r#"{"event": "chat_session_ended"}"#,
                "bright_pattern.chat_session_ended",
                vec![Fact::Closed {
                    by: ClosedBy::Agent,
                    reason: Some("ended".into()),
                }],
            ),
            (
                r#"{"event": "chat_session_party_joined", "party_id": "<party id>", "first_name": "<party first name>", "last_name": "<party last name>", "display_name": "<party display name>", "type": "external", "timestamp": "<UTC timestamp in milliseconds>"}"#,
                "bright_pattern.chat_session_party_joined",
                vec![Fact::Attended {
                    agent: Agent {
                        name: "<party display name>".into(),
                        nickname: None,
                        group: None,
                    },
                    party_id: Some("<party id>".into()),
                }],
            ),
            (
                r#"{"event": "chat_session_party_left", "party_id": "<party id>", "timestamp": "<UTC timestamp in milliseconds >"}"#,
                "bright_pattern.chat_session_party_left",
                vec![Fact::AgentLeft {
                    party_id: Some("<party id>".into()),
                }],
            ),
            (
                r#"{"event": "chat_session_message", "party_id": "<party id>", "msg_id": "<message id>", "msg": "<chat message>", "timestamp": "<UTC timestamp in milliseconds >"}"#,
                "bright_pattern.chat_session_message",
                vec![Fact::Message(MessageFact {
                    party_id: Some("<party id>".into()),
                    ..MessageFact::text(Party::Agent, None, "<chat message>")
                })],
            ),
            (
                r#"{"event": "chat_session_typing", "party_id": "<party id>"}"#,
                "bright_pattern.chat_session_typing",
                vec![],
            ),
            (
                r#"{"event": "chat_session_not_typing", "party_id": "<party id>"}"#,
                "bright_pattern.chat_session_not_typing",
                vec![],
            ),
            (
                r#"{"event": "chat_session_form_show", "form_request_id": "<request ID that will be used by the client application to associate the response >", "form_name": "<predefined form name known to the client application>", "form_timeout": "form timeout"}"#,
                "bright_pattern.chat_session_form_show",
                vec![Fact::Message(MessageFact {
                    kind: MessageKind::Event,
                    ..MessageFact::text(
                        Party::System,
                        None,
                        "form requested: <predefined form name known to the client application>",
                    )
                })],
            ),
            (
                r#"{"event": "chat_session_timeout_warning", "msg": "<warning text>", "timestamp": "<UTC timestamp in milliseconds>"}"#,
                "bright_pattern.chat_session_timeout_warning",
                vec![Fact::Message(MessageFact::text(Party::System, None, "<warning text>"))],
            ),
            (
                r#"{"event": "chat_session_inactvity_timeout", "msg": "<inactivity timeout text>", "timestamp": "<UTC timestamp in milliseconds>"}"#,
                "bright_pattern.chat_session_inactivity_timeout",
                vec![
                    Fact::Message(MessageFact::text(Party::System, None, "<inactivity timeout text>")),
                    Fact::Closed {
                        by: ClosedBy::Platform,
                        reason: Some("inactivity_timeout".into()),
                    },
                ],
            ),
            (
                r#"{"event": "chat_session_signaling", "msg_id": "<message id>", "party_id": "<party_id>", "data": "<signaling message>"}"#,
                "bright_pattern.chat_session_signaling",
                vec![],
            ),
            (
                r#"{"event": "chat_session_file", "party_id": "<party id>", "msg_id": "<message id>", "file_id": "<file id>", "file_type": "image", "timestamp": "<event time in Unix format>"}"#,
                "bright_pattern.chat_session_file",
                vec![Fact::Message(MessageFact {
                    party_id: Some("<party id>".into()),
                    kind: MessageKind::Image,
                    text: None,
                    url: Some("<file id>".into()),
                    ..MessageFact::text(Party::Agent, None, "")
                })],
            ),
        ];
        for (raw, kind, expected) in cases {
            let parsed = run(raw).unwrap();
            assert!(!parsed.unknown, "{raw}");
            let e = &parsed.events[0];
            assert_eq!(e.stream, StreamKey::new(Platform::BrightPattern, CHAT));
            assert_eq!(e.payload, raw);
            // Placeholder timestamps are no time: the received time stands in.
            assert_eq!(e.occurred_at, received());
            assert_eq!(e.received_at, received());
            assert_eq!(one(raw), (kind.to_string(), expected), "{raw}");
        }
    }

    #[test]
    fn other_statuses() {
        let status = |s: &str| one(&json!({"event": "chat_session_status", "state": s}).to_string()).1;
        assert_eq!(
            status("failed"),
            vec![Fact::HandoffFailed {
                reason: "chat_session_status failed".into()
            }]
        );
        assert_eq!(
            status("completed"),
            vec![Fact::Closed {
                by: ClosedBy::Unknown,
                reason: Some("completed".into())
            }]
        );
        assert!(status("connecting").is_empty());
        assert!(status("connected").is_empty());
    }

    #[test]
    fn party_joined_names_and_scenarios() {
        let joined = |v: Value| one(&v.to_string()).1;
        let attended = |name: &str, party: &str| Fact::Attended {
            agent: Agent {
                name: name.into(),
                nickname: None,
                group: None,
            },
            party_id: Some(party.into()),
        };
        assert_eq!(
            joined(
                json!({"event": "chat_session_party_joined", "party_id": "p1", "first_name": "Ann",
                "last_name": "Lee", "type": "internal"})
            ),
            vec![attended("Ann Lee", "p1")]
        );
        assert_eq!(
            joined(json!({"event": "chat_session_party_joined", "party_id": "p2", "type": "external"})),
            vec![attended("p2", "p2")]
        );
        assert_eq!(
            joined(
                json!({"event": "chat_session_party_joined", "party_id": "s1", "display_name": "Helper Bot",
                "type": "scenario"})
            ),
            vec![Fact::ScenarioJoined {
                party_id: "s1".into(),
                name: Some("Helper Bot".into())
            }]
        );
    }

    #[test]
    fn client_events_have_no_party() {
        assert_eq!(
            one(r#"{"event": "chat_session_message", "msg_id": "c-1", "msg": "hello"}"#).1,
            vec![Fact::Message(MessageFact::text(Party::Visitor, None, "hello"))]
        );
        assert_eq!(
            one(r#"{"event": "chat_session_end"}"#),
            ("bright_pattern.chat_session_end".into(), vec![Fact::VisitorLeft])
        );
        let (kind, facts) = one(r#"{"event": "chat_session_form_data", "form_request_id": "f1", "data": {}}"#);
        assert_eq!(kind, "bright_pattern.chat_session_form_data");
        assert_eq!(
            facts,
            vec![Fact::Message(MessageFact {
                kind: MessageKind::Event,
                ..MessageFact::text(Party::Visitor, None, "form submitted")
            })]
        );
        let (_, facts) =
            one(r#"{"event": "chat_session_file", "msg_id": "c-2", "file_id": "F9", "file_type": "attachment"}"#);
        let Fact::Message(m) = &facts[0] else {
            panic!("{facts:?}")
        };
        assert_eq!(
            (m.party, m.kind, m.url.as_deref(), m.party_id.as_deref()),
            (Party::Visitor, MessageKind::File, Some("F9"), None)
        );
    }

    #[test]
    fn batch_is_sliced_into_exact_raw_texts() {
        let raw = "{ \"events\" : [\n  {\"event\":\"chat_session_status\",  \"state\":\"queued\", \"timestamp\": 1709294400},\n\t{ \"event\" : \"chat_session_message\" , \"party_id\":\"p1\",\"msg_id\":\"m1\",\"msg\":\"Hi \\u00e9 \\\"there\\\"\",\"timestamp\":\"1709294405123\" }  ,{\"event\":\"chat_session_typing\",\"party_id\":\"p1\"}\n] }";
        let parsed = run(raw).unwrap();
        assert!(!parsed.unknown);
        let payloads: Vec<&str> = parsed.events.iter().map(|e| e.payload.as_str()).collect();
        assert_eq!(
            payloads,
            vec![
                "{\"event\":\"chat_session_status\",  \"state\":\"queued\", \"timestamp\": 1709294400}",
                "{ \"event\" : \"chat_session_message\" , \"party_id\":\"p1\",\"msg_id\":\"m1\",\"msg\":\"Hi \\u00e9 \\\"there\\\"\",\"timestamp\":\"1709294405123\" }",
                "{\"event\":\"chat_session_typing\",\"party_id\":\"p1\"}",
            ]
        );
        let kinds: Vec<&str> = parsed.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "bright_pattern.chat_session_status",
                "bright_pattern.chat_session_message",
                "bright_pattern.chat_session_typing"
            ]
        );
        // Seconds and milliseconds told apart by magnitude.
        assert_eq!(parsed.events[0].occurred_at, utc("2024-03-01T12:00:00Z"));
        assert_eq!(parsed.events[1].occurred_at, utc("2024-03-01T12:00:05.123Z"));
        assert_eq!(parsed.events[2].occurred_at, received());
        // Keys: msg_id, else chat:event:timestamp:party:state.
        assert_eq!(
            parsed.events[1].event_id,
            event_id_for(Platform::BrightPattern, Some("m1"))
        );
        assert_eq!(
            parsed.events[0].event_id,
            event_id_for(
                Platform::BrightPattern,
                Some("9F3A1C2B:chat_session_status:1709294400::queued")
            )
        );
        assert_eq!(
            parsed.events[2].event_id,
            event_id_for(Platform::BrightPattern, Some("9F3A1C2B:chat_session_typing::p1:"))
        );
        assert!(parsed
            .events
            .iter()
            .all(|e| e.stream == StreamKey::new(Platform::BrightPattern, CHAT)));
        // The stored slice reads back with the escapes decoded.
        let (_, facts) = one(payloads[1]);
        let Fact::Message(m) = &facts[0] else {
            panic!("{facts:?}")
        };
        assert_eq!(m.text.as_deref(), Some("Hi é \"there\""));
        // Redelivery of the batch: same ids.
        let again = run(raw).unwrap();
        let ids = |p: &Parsed| p.events.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(ids(&parsed), ids(&again));
    }

    #[test]
    fn timestamps_in_seconds_milliseconds_strings_and_fractions() {
        let at = |ts: Value| {
            let raw = json!({"event": "chat_session_ended", "timestamp": ts}).to_string();
            run(&raw).unwrap().events[0].occurred_at
        };
        assert_eq!(at(json!(1709294400)), utc("2024-03-01T12:00:00Z"));
        assert_eq!(at(json!("1709294400")), utc("2024-03-01T12:00:00Z"));
        assert_eq!(at(json!(1709294400123_i64)), utc("2024-03-01T12:00:00.123Z"));
        assert_eq!(at(json!("1709294400123")), utc("2024-03-01T12:00:00.123Z"));
        assert_eq!(at(json!(1709294400.5)), utc("2024-03-01T12:00:00.5Z"));
        assert_eq!(at(json!("2024-03-01T13:00:00+01:00")), utc("2024-03-01T12:00:00Z"));
        assert_eq!(at(json!(0)), received());
        assert_eq!(at(json!(null)), received());
        assert_eq!(at(json!("soon")), received());
    }

    #[test]
    fn misspelled_inactivity_timeout_is_normalised() {
        for name in ["chat_session_inactvity_timeout", "chat_session_inactivity_timeout"] {
            let raw = json!({"event": name, "msg": "bye", "timestamp": 1709294400000_i64}).to_string();
            let parsed = run(&raw).unwrap();
            assert!(!parsed.unknown);
            assert_eq!(parsed.events[0].kind, "bright_pattern.chat_session_inactivity_timeout");
            assert_eq!(parsed.events[0].occurred_at, utc("2024-03-01T12:00:00Z"));
            assert_eq!(
                one(&raw).1,
                vec![
                    Fact::Message(MessageFact::text(Party::System, None, "bye")),
                    Fact::Closed {
                        by: ClosedBy::Platform,
                        reason: Some("inactivity_timeout".into())
                    }
                ]
            );
        }
    }

    #[test]
    fn unknown_only_when_every_event_is_unknown() {
        let raw = r#"{"events": [{"event": "chat_session_new_thing"}, {"event": "chat_session_other"}]}"#;
        let parsed = run(raw).unwrap();
        assert!(parsed.unknown);
        assert_eq!(parsed.events.len(), 2);
        assert!(parsed.events.iter().all(|e| e.kind == "bright_pattern.unknown"));
        assert!(one(r#"{"event": "chat_session_new_thing"}"#).1.is_empty());
        let mixed = r#"{"events": [{"event": "chat_session_new_thing"}, {"event": "chat_session_ended"}]}"#;
        let parsed = run(mixed).unwrap();
        assert!(!parsed.unknown);
        assert_eq!(parsed.events[0].kind, "bright_pattern.unknown");
        assert_eq!(parsed.events[1].kind, "bright_pattern.chat_session_ended");
    }

    #[test]
    fn empty_batch_is_valid_and_gives_nothing() {
        let parsed = run(r#"{"events": []}"#).unwrap();
        assert!(parsed.events.is_empty());
        assert!(!parsed.unknown);
    }

    #[test]
    fn chat_id_must_be_given_and_match() {
        let raw = r#"{"event": "chat_session_ended"}"#;
        let value = parse_json(raw.as_bytes()).unwrap();
        assert_eq!(field_of(parse(raw, &value, &delivery(None)).unwrap_err()), "chat_id");
        assert_eq!(
            field_of(parse(raw, &value, &delivery(Some(""))).unwrap_err()),
            "chat_id"
        );
        // Its own matching chat_id is fine; a different one is refused.
        assert_eq!(
            run(&format!(r#"{{"event": "chat_session_ended", "chat_id": "{CHAT}"}}"#))
                .unwrap()
                .events
                .len(),
            1
        );
        assert_eq!(
            field_of(run(r#"{"event": "chat_session_ended", "chat_id": "OTHER"}"#).unwrap_err()),
            "chat_id"
        );
        let batch = r#"{"events": [{"event": "chat_session_ended"}, {"event": "chat_session_end", "chat_id": 42}]}"#;
        assert_eq!(field_of(run(batch).unwrap_err()), "events[1].chat_id");
        // A numeric chat id in the event matches the same path text.
        let value = parse_json(batch.as_bytes()).unwrap();
        assert_eq!(parse(batch, &value, &delivery(Some("42"))).unwrap().events.len(), 2);
    }

    #[test]
    fn malformed_events_are_named_in_errors() {
        let cases = [
            ("[]", ""),
            ("\"x\"", ""),
            ("{}", "event"),
            (r#"{"event": 5}"#, "event"),
            (r#"{"events": {}}"#, "events"),
            (r#"{"events": null}"#, "events"),
            (
                r#"{"events": [{"event": "chat_session_end"}, {"event": "chat_session_end"}, {"msg": "x"}]}"#,
                "events[2].event",
            ),
            (r#"{"events": [{"event": "chat_session_end"}, 7]}"#, "events[1].event"),
            (r#"{"events": [{"event": null}]}"#, "events[0].event"),
        ];
        for (raw, field) in cases {
            assert_eq!(field_of(run(raw).unwrap_err()), field, "{raw}");
        }
    }

    #[test]
    fn facts_of_unparsable_or_mismatched_payloads_are_empty() {
        let at = received();
        assert!(facts("bright_pattern.chat_session_ended", &json!({}), at).is_empty());
        assert!(facts("bright_pattern.chat_session_ended", &json!([1]), at).is_empty());
        assert!(facts(
            "bright_pattern.chat_session_end",
            &json!({"event": "chat_session_ended"}),
            at
        )
        .is_empty());
    }
}
