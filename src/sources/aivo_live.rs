//! Aivo Live webhooks (`attended`, `transfer`, `messageToClient`, `close`).
//!
//! Quirk: `timestamp` is nanoseconds since the epoch (19 digits), `eventTime` seconds. One decoder
//! ([`decode`]) serves both the delivery path and the projection.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    delivered_event, epoch_to_utc, opt_str, opt_text, required_str, ClosedBy, Delivery, Fact, MessageFact, Parsed,
    PayloadError, TimedFact,
};
use crate::model::{Agent, MessageKind, Party, Platform};

/// Kind of `attended`: an agent took the conversation.
pub(crate) const ATTENDED: &str = "aivo_live.attended";
/// Kind of `transfer`: the conversation moved to another group.
pub(crate) const TRANSFER: &str = "aivo_live.transfer";
/// Kind of `messageToClient`: an agent's (or a trigger's) message for the visitor.
pub(crate) const MESSAGE_TO_CLIENT: &str = "aivo_live.message_to_client";
/// Kind of `close`: the live chat ended.
pub(crate) const CLOSE: &str = "aivo_live.close";
/// Kind of an event whose `name` this version does not know.
pub(crate) const UNKNOWN: &str = "aivo_live.unknown";
/// Every kind the parser produces.
pub const KINDS: &[&str] = &[ATTENDED, TRANSFER, MESSAGE_TO_CLIENT, CLOSE, UNKNOWN];

/// The agent object Aivo attaches to events (often `{}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AivoAgent {
    /// `name`.
    pub name: Option<String>,
    /// `nickname`.
    pub nickname: Option<String>,
    /// `groupId` as text.
    pub group_id: Option<String>,
}

/// What an Aivo Live webhook says.
#[derive(Debug, Clone, PartialEq)]
pub enum AivoEvent {
    /// `attended`: an agent took the conversation.
    Attended {
        /// The agent.
        agent: AivoAgent,
    },
    /// `transfer`: moved to another group.
    Transfer {
        /// `originGroup` as text.
        origin_group: Option<String>,
        /// `target` as text.
        target: Option<String>,
    },
    /// `messageToClient`: a message from the live side to the visitor.
    MessageToClient {
        /// `text`, `image` or `file`.
        action: Option<String>,
        /// The text, or the image/file location.
        value: Option<String>,
        /// `agent` or `trigger`.
        source: Option<String>,
        /// The agent, when named.
        agent: AivoAgent,
    },
    /// `close`: the conversation was closed.
    Close {
        /// `reason` as given.
        reason: Option<String>,
    },
    /// A `name` this version does not know.
    Unknown {
        /// The name as sent.
        name: String,
    },
}

impl AivoEvent {
    /// The event kind stored in the log.
    pub fn kind(&self) -> &'static str {
        match self {
            AivoEvent::Attended { .. } => ATTENDED,
            AivoEvent::Transfer { .. } => TRANSFER,
            AivoEvent::MessageToClient { .. } => MESSAGE_TO_CLIENT,
            AivoEvent::Close { .. } => CLOSE,
            AivoEvent::Unknown { .. } => UNKNOWN,
        }
    }
}

/// A decoded Aivo Live webhook body.
#[derive(Debug, Clone, PartialEq)]
pub struct AivoWebhook {
    /// `name` as sent.
    pub name: String,
    /// `roomId`: the stream's external id.
    pub room_id: String,
    /// `timestamp` in nanoseconds.
    pub timestamp: i64,
    /// `eventTime` in seconds, when given.
    pub event_time: Option<i64>,
    /// The event.
    pub event: AivoEvent,
}

impl AivoWebhook {
    /// `{name}:{roomId}:{timestamp}`: a redelivery carries the same three.
    pub(crate) fn delivery_key(&self) -> String {
        format!("{}:{}:{}", self.name, self.room_id, self.timestamp)
    }

    /// When it happened: `timestamp`, else `eventTime`.
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        let positive = |v: i64| Some(v).filter(|v| *v > 0).and_then(epoch_to_utc);
        positive(self.timestamp).or_else(|| self.event_time.and_then(positive))
    }
}

/// Decodes an Aivo Live webhook body, naming the offending field on error.
pub fn decode(value: &Value) -> Result<AivoWebhook, PayloadError> {
    if !value.is_object() {
        return Err(PayloadError::field("", "the body must be a JSON object"));
    }
    let name = required_str(value, "name", "name")?;
    let room_id = required_str(value, "roomId", "roomId")?;
    if room_id.is_empty() {
        return Err(PayloadError::field("roomId", "`roomId` must not be empty"));
    }
    let timestamp = match value.get("timestamp") {
        None | Some(Value::Null) => return Err(PayloadError::field("timestamp", "`timestamp` is required")),
        Some(v) => integer(v).ok_or_else(|| {
            PayloadError::field(
                "timestamp",
                "`timestamp` must be an integer (nanoseconds since the epoch)",
            )
        })?,
    };
    let empty = Map::new();
    let data = match value.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(PayloadError::field("data", "`data` must be an object")),
    };
    let data_text = |k: &str| data.get(k).and_then(super::scalar_text).filter(|s| !s.is_empty());
    let event = match name.as_str() {
        "attended" => AivoEvent::Attended {
            agent: agent(data.get("agent")),
        },
        "transfer" => AivoEvent::Transfer {
            origin_group: data_text("originGroup"),
            target: data_text("target"),
        },
        "messageToClient" => AivoEvent::MessageToClient {
            action: data_text("action"),
            value: data.get("value").and_then(Value::as_str).map(str::to_string),
            source: data_text("source"),
            agent: agent(data.get("agent")),
        },
        "close" => AivoEvent::Close {
            reason: data_text("reason"),
        },
        _ => AivoEvent::Unknown { name: name.clone() },
    };
    Ok(AivoWebhook {
        name,
        room_id,
        timestamp,
        event_time: value.get("eventTime").and_then(integer),
        event,
    })
}

/// Parses one delivery into events to append.
pub fn parse(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let w = decode(value)?;
    let key = w.delivery_key();
    let unknown = matches!(w.event, AivoEvent::Unknown { .. });
    let platform_at = w.occurred_at();
    let event = delivered_event(
        Platform::AivoLive,
        w.room_id,
        w.event.kind(),
        Some(&key),
        platform_at,
        raw,
        d,
    );
    Ok(Parsed {
        events: vec![event],
        unknown,
    })
}

/// Who closed a conversation, read from Aivo's free-text `reason`.
pub(crate) fn closed_by(reason: Option<&str>) -> ClosedBy {
    let Some(reason) = reason.map(|r| r.trim().to_lowercase()) else {
        return ClosedBy::Unknown;
    };
    let mentions = |words: &[&str]| words.iter().any(|w| reason.contains(w));
    if reason == "agent" {
        ClosedBy::Agent
    } else if mentions(&["user", "client", "visitor"]) {
        ClosedBy::Visitor
    } else if mentions(&["queue", "clean", "inactiv", "timeout", "expired"]) {
        ClosedBy::Platform
    } else {
        ClosedBy::Unknown
    }
}

/// The facts of one stored event of this platform.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    let Ok(w) = decode(payload) else {
        return Vec::new();
    };
    // A payload that now decodes to another kind than the one stored is not re-interpreted.
    if w.event.kind() != kind {
        return Vec::new();
    }
    let fact = match w.event {
        AivoEvent::Attended { agent } => Some(Fact::Attended {
            agent: Agent {
                name: agent
                    .name
                    .clone()
                    .or_else(|| agent.nickname.clone())
                    .unwrap_or_else(|| "agent".into()),
                nickname: agent.nickname,
                group: agent.group_id,
            },
            party_id: None,
        }),
        AivoEvent::Transfer { origin_group, target } => Some(Fact::Transferred {
            from_queue: origin_group,
            to_queue: target,
        }),
        AivoEvent::MessageToClient {
            action,
            value,
            source,
            agent,
        } => {
            let automatic = source.as_deref() == Some("trigger");
            let (kind, text, url) = match action.as_deref() {
                Some("image") => (MessageKind::Image, None, value),
                Some("file") => (MessageKind::File, None, value),
                // Text, and actions this version does not know: keep the value readable.
                _ => (MessageKind::Text, value, None),
            };
            Some(Fact::Message(MessageFact {
                party: if automatic { Party::System } else { Party::Agent },
                author: agent.name,
                party_id: None,
                kind,
                text,
                buttons: Vec::new(),
                cards: Vec::new(),
                url,
                automatic,
            }))
        }
        AivoEvent::Close { reason } => Some(Fact::Closed {
            by: closed_by(reason.as_deref()),
            reason,
        }),
        AivoEvent::Unknown { .. } => None,
    };
    fact.into_iter().map(|f| (at, f)).collect()
}

/// An integer that may come as a JSON number or a numeric string. Integer literals are read exactly (large
/// nanosecond values never pass through `f64`); a number written with a zero fraction (`1.7e18`, `72.0`) is
/// an integer too, as JSON Schema counts them.
fn integer(v: &Value) -> Option<i64> {
    super::json_integer(v)
}

fn agent(value: Option<&Value>) -> AivoAgent {
    match value {
        Some(a @ Value::Object(_)) => AivoAgent {
            name: opt_str(a, "name").filter(|s| !s.is_empty()),
            nickname: opt_str(a, "nickname").filter(|s| !s.is_empty()),
            group_id: opt_text(a, "groupId"),
        },
        _ => AivoAgent::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{event_id_for, StreamKey};
    use crate::sources::parse_json;
    use crate::sources::testing::{self, field_of, utc};
    use chrono::TimeZone;
    use serde_json::json;

    // The documents' examples lack their opening brace (a copy-paste artefact): restored here.
    const ATTENDED: &str = r#"{
  "name": "attended", 
  "roomId": "d5211892-e170-4d4a-b2dd-de705b595674", 
  "timestamp": 1706293970842633079, 
  "botId": 1000, 
  "eventTime": 1706293970, 
  "data": { 
    "agent": { 
      "name": "Tomas", 
      "nickname": "Tomas NICKK", 
      "groupId": 2179 
    } 
  } 
}"#;

    const TRANSFER: &str = r#"{
  "name": "transfer", 
  "roomId": "4f4bef4b-5cc3-4d9a-980b-c7426b4084a1", 
  "timestamp": 1706215088420049502, 
  "botId": 1000, 
  "eventTime": 1706215088, 
  "data": { 
    "value": "Transfer to group", 
    "hash": "23423456emvnghtisk456f08", 
    "originGroup": 2333, 
    "target": 5, 
    "agent": {} 
  } 
}"#;

    const MESSAGE_TO_CLIENT: &str = r#"{
  "name": "messageToClient", 
  "roomId": "7f185acb-214f-4d59-8612-357796a146b7", 
  "timestamp": 1706293179331454146, 
  "botId": 1000, 
  "eventTime": 1706293179, 
  "data": { 
    "action": "text", 
    "value": "¿Puedo ayudarlo en algo más?1", 
    "source": "trigger", 
    "hash": "b9e8f46b56efbace7a64cdab3_71146a36682af3c0915577", 
    "agent": {} 
  } 
}"#;

    const CLOSE_QUEUE: &str = r#"{
  "name": "close", 
  "roomId": "21f4e58c-c1c3-452c-b7d3-b0c93aca0986", 
  "timestamp": 1706293127429583428, 
  "botId": 1000, 
  "eventTime": 1706293127, 
  "data": { 
    "hash": "b9e8f46b56efbace7a64cdab3_7114636682af3c0915577", 
    "reason": "queue clean process", 
    "agent": {} 
  }
}"#;

    const CLOSE_AGENT: &str = r#"{
  "name": "close", 
  "roomId": "27101a99-d4f2-4c0c-98ad-8fe65366362d", 
  "timestamp": 1706289577835959833, 
  "botId": 1000, 
  "eventTime": 1706289577, 
  "data": { 
    "hash": "b9e8f46b56efbace764cdab3_7114636682f3c0915577", 
    "reason": "agent",
    "agent": {} 
  } 
}"#;

    fn received() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 2, 1, 0, 0, 0).unwrap()
    }

    fn delivery() -> Delivery<'static> {
        testing::delivery(received(), ("user-agent", "aivo"), None)
    }

    fn run(raw: &str) -> Result<Parsed, PayloadError> {
        testing::run(parse, raw, &delivery())
    }

    fn stored_facts(raw: &str) -> Vec<TimedFact> {
        testing::first_facts(&run(raw).unwrap(), facts)
    }

    #[test]
    fn a_platform_time_after_the_arrival_is_kept_but_the_event_happened_by_its_arrival() {
        let ahead = received() + chrono::Duration::seconds(10);
        let body = serde_json::json!({"name": "attended", "roomId": "r", "timestamp": ahead.timestamp_nanos_opt(),
            "data": {"agent": {"name": "T"}}})
        .to_string();
        let e = &run(&body).unwrap().events[0];
        assert_eq!((e.occurred_at, e.platform_at), (received(), Some(ahead)));
        let behind = received() - chrono::Duration::seconds(10);
        let body = body.replace(
            &ahead.timestamp_nanos_opt().unwrap_or_default().to_string(),
            &behind.timestamp_nanos_opt().unwrap_or_default().to_string(),
        );
        let e = &run(&body).unwrap().events[0];
        assert_eq!((e.occurred_at, e.platform_at), (behind, Some(behind)));
        // No time at all: the arrival, and no platform time.
        let e = &run(r#"{"name": "close", "roomId": "r", "timestamp": 0}"#)
            .unwrap()
            .events[0];
        assert_eq!((e.occurred_at, e.platform_at), (received(), None));
    }

    #[test]
    fn attended_example() {
        let parsed = run(ATTENDED).unwrap();
        assert!(!parsed.unknown);
        let e = &parsed.events[0];
        assert_eq!(e.kind, "aivo_live.attended");
        assert_eq!(
            e.stream,
            StreamKey::new(Platform::AivoLive, "d5211892-e170-4d4a-b2dd-de705b595674")
        );
        // Nanoseconds, truncated to microseconds.
        assert_eq!(e.occurred_at, utc("2024-01-26T18:32:50.842633Z"));
        assert_eq!(e.received_at, received());
        assert_eq!(e.payload, ATTENDED);
        assert_eq!(e.headers.get("user-agent").map(String::as_str), Some("aivo"));
        assert_eq!(
            e.event_id,
            event_id_for(
                Platform::AivoLive,
                Some("attended:d5211892-e170-4d4a-b2dd-de705b595674:1706293970842633079")
            )
        );
        assert_eq!(
            stored_facts(ATTENDED),
            vec![(
                utc("2024-01-26T18:32:50.842633Z"),
                Fact::Attended {
                    agent: Agent {
                        name: "Tomas".into(),
                        nickname: Some("Tomas NICKK".into()),
                        group: Some("2179".into())
                    },
                    party_id: None
                }
            )]
        );
    }

    #[test]
    fn redelivery_gets_the_same_event_id() {
        assert_eq!(
            run(ATTENDED).unwrap().events[0].event_id,
            run(ATTENDED).unwrap().events[0].event_id
        );
        // A different timestamp is a different delivery.
        let other = ATTENDED.replace("1706293970842633079", "1706293970842633080");
        assert_ne!(
            run(ATTENDED).unwrap().events[0].event_id,
            run(&other).unwrap().events[0].event_id
        );
    }

    #[test]
    fn transfer_example() {
        let parsed = run(TRANSFER).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.kind, "aivo_live.transfer");
        assert_eq!(e.stream.external_id, "4f4bef4b-5cc3-4d9a-980b-c7426b4084a1");
        assert_eq!(e.occurred_at, utc("2024-01-25T20:38:08.420049Z"));
        assert_eq!(
            stored_facts(TRANSFER),
            vec![(
                utc("2024-01-25T20:38:08.420049Z"),
                Fact::Transferred {
                    from_queue: Some("2333".into()),
                    to_queue: Some("5".into())
                }
            )]
        );
    }

    #[test]
    fn message_to_client_example_from_a_trigger_is_an_automatic_system_line() {
        let parsed = run(MESSAGE_TO_CLIENT).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.kind, "aivo_live.message_to_client");
        assert_eq!(e.stream.external_id, "7f185acb-214f-4d59-8612-357796a146b7");
        assert_eq!(e.occurred_at, utc("2024-01-26T18:19:39.331454Z"));
        let expected = MessageFact {
            automatic: true,
            ..MessageFact::text(Party::System, None, "¿Puedo ayudarlo en algo más?1")
        };
        assert_eq!(
            stored_facts(MESSAGE_TO_CLIENT),
            vec![(utc("2024-01-26T18:19:39.331454Z"), Fact::Message(expected))]
        );
    }

    #[test]
    fn agent_messages_images_and_files() {
        let body = |action: &str, value: &str| {
            json!({"name": "messageToClient", "roomId": "r", "timestamp": 1706293179331454146_i64,
                "data": {"action": action, "value": value, "source": "agent", "agent": {"name": "Tomas"}}})
            .to_string()
        };
        let facts = stored_facts(&body("text", "hola"));
        assert_eq!(
            facts[0].1,
            Fact::Message(MessageFact::text(Party::Agent, Some("Tomas".into()), "hola"))
        );
        for (action, kind) in [("image", MessageKind::Image), ("file", MessageKind::File)] {
            let facts = stored_facts(&body(action, "https://files/x.png"));
            let Fact::Message(m) = &facts[0].1 else {
                panic!("{facts:?}")
            };
            assert_eq!(m.kind, kind);
            assert_eq!(m.party, Party::Agent);
            assert_eq!(m.url.as_deref(), Some("https://files/x.png"));
            assert_eq!(m.text, None);
            assert!(!m.automatic);
        }
    }

    #[test]
    fn close_examples_and_reasons() {
        let e = run(CLOSE_QUEUE).unwrap().events.remove(0);
        assert_eq!(e.kind, "aivo_live.close");
        assert_eq!(e.stream.external_id, "21f4e58c-c1c3-452c-b7d3-b0c93aca0986");
        assert_eq!(e.occurred_at, utc("2024-01-26T18:18:47.429583Z"));
        assert_eq!(
            stored_facts(CLOSE_QUEUE)[0].1,
            Fact::Closed {
                by: ClosedBy::Platform,
                reason: Some("queue clean process".into())
            }
        );
        assert_eq!(
            stored_facts(CLOSE_AGENT),
            vec![(
                utc("2024-01-26T17:19:37.835959Z"),
                Fact::Closed {
                    by: ClosedBy::Agent,
                    reason: Some("agent".into())
                }
            )]
        );
        assert_eq!(closed_by(Some("closed by user")), ClosedBy::Visitor);
        assert_eq!(closed_by(Some("Client left")), ClosedBy::Visitor);
        assert_eq!(closed_by(Some("inactivity trigger")), ClosedBy::Platform);
        assert_eq!(closed_by(Some("session expired")), ClosedBy::Platform);
        assert_eq!(closed_by(Some("timeout")), ClosedBy::Platform);
        assert_eq!(closed_by(Some("something else")), ClosedBy::Unknown);
        assert_eq!(closed_by(None), ClosedBy::Unknown);
    }

    #[test]
    fn nanosecond_timestamp_as_string_is_accepted() {
        let raw = ATTENDED.replace("1706293970842633079", "\"1706293970842633079\"");
        let e = run(&raw).unwrap().events.remove(0);
        assert_eq!(e.occurred_at, utc("2024-01-26T18:32:50.842633Z"));
        // Same delivery key as the numeric form.
        assert_eq!(e.event_id, run(ATTENDED).unwrap().events[0].event_id);
    }

    #[test]
    fn zero_timestamp_falls_back_to_event_time_then_received() {
        let raw = json!({"name": "close", "roomId": "r", "timestamp": 0, "eventTime": 1706289577}).to_string();
        assert_eq!(run(&raw).unwrap().events[0].occurred_at, utc("2024-01-26T17:19:37Z"));
        let raw = json!({"name": "close", "roomId": "r", "timestamp": 0}).to_string();
        assert_eq!(run(&raw).unwrap().events[0].occurred_at, received());
    }

    #[test]
    fn unknown_name_is_kept_as_unknown() {
        let raw = json!({"name": "typing", "roomId": "r1", "timestamp": 1706293970842633079_i64}).to_string();
        let parsed = run(&raw).unwrap();
        assert!(parsed.unknown);
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].kind, "aivo_live.unknown");
        assert_eq!(parsed.events[0].stream.external_id, "r1");
        assert!(stored_facts(&raw).is_empty());
        let raw = json!({"name": "typing", "timestamp": 1}).to_string();
        assert_eq!(field_of(run(&raw).unwrap_err()), "roomId");
    }

    #[test]
    fn required_fields_are_named_in_errors() {
        let cases = [
            (json!([]), ""),
            (json!(null), ""),
            (json!({"roomId": "r", "timestamp": 1}), "name"),
            (json!({"name": 5, "roomId": "r", "timestamp": 1}), "name"),
            (json!({"name": "close", "timestamp": 1}), "roomId"),
            (json!({"name": "close", "roomId": 7, "timestamp": 1}), "roomId"),
            (json!({"name": "close", "roomId": "", "timestamp": 1}), "roomId"),
            (json!({"name": "close", "roomId": "r"}), "timestamp"),
            (
                json!({"name": "close", "roomId": "r", "timestamp": "soon"}),
                "timestamp",
            ),
            (json!({"name": "close", "roomId": "r", "timestamp": 1.5}), "timestamp"),
            (
                json!({"name": "close", "roomId": "r", "timestamp": 1, "data": [1]}),
                "data",
            ),
        ];
        for (value, field) in cases {
            let err = parse(&value.to_string(), &value, &delivery()).unwrap_err();
            assert_eq!(field_of(err), field, "{value}");
        }
    }

    #[test]
    fn missing_data_and_empty_agent_are_lenient() {
        let raw = json!({"name": "attended", "roomId": "r", "timestamp": 1706293970842633079_i64}).to_string();
        let facts = stored_facts(&raw);
        assert_eq!(
            facts[0].1,
            Fact::Attended {
                agent: Agent {
                    name: "agent".into(),
                    nickname: None,
                    group: None
                },
                party_id: None
            }
        );
        let raw = json!({"name": "attended", "roomId": "r", "timestamp": 1706293970842633079_i64,
            "data": {"agent": {"nickname": "Nick", "groupId": "12"}}})
        .to_string();
        let Fact::Attended { agent, .. } = &stored_facts(&raw)[0].1 else {
            panic!()
        };
        assert_eq!(agent.name, "Nick");
        assert_eq!(agent.group.as_deref(), Some("12"));
    }

    #[test]
    fn facts_of_unparsable_or_mismatched_payloads_are_empty() {
        let at = received();
        assert!(facts("aivo_live.close", &json!({"name": "close"}), at).is_empty());
        assert!(facts("aivo_live.close", &json!("x"), at).is_empty());
        let v = parse_json(ATTENDED.as_bytes()).unwrap();
        assert!(facts("aivo_live.close", &v, at).is_empty());
    }
}
