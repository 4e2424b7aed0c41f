//! VCC Live "Chat (Async)" webhook: sent once, when an agent closes a chat, with the whole transcript.
//!
//! One body is one whole chat, so its facts carry the times of its lines rather than one event time.
//! One decoder ([`decode`]) serves both the delivery path and the projection.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    delivered_event, opt_str, truncate_to_micros, ClosedBy, Delivery, Fact, MessageFact, Parsed, PayloadError,
    TimedFact,
};
use crate::model::{Agent, Party, Platform};

/// The only kind this platform produces.
pub(crate) const CHAT_CLOSED: &str = "vcc.chat_closed";

/// One transcript line.
#[derive(Debug, Clone, PartialEq)]
pub struct VccLine {
    /// `Visitor` or the agent's name.
    pub from: String,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The text, when given.
    pub message: Option<String>,
}

impl VccLine {
    /// True for the visitor's lines; every other sender is an agent.
    pub(crate) fn is_visitor(&self) -> bool {
        self.from.eq_ignore_ascii_case("visitor")
    }
}

/// A decoded VCC chat webhook body.
#[derive(Debug, Clone, PartialEq)]
pub struct VccChat {
    /// `chatId`.
    pub chat_id: i64,
    /// `projectId`.
    pub project_id: i64,
    /// `firstAgentName`.
    pub first_agent_name: Option<String>,
    /// `lastAgentName`.
    pub last_agent_name: Option<String>,
    /// `firstQueueName`.
    pub first_queue_name: Option<String>,
    /// `lastQueueName`.
    pub last_queue_name: Option<String>,
    /// `disposition`: `completed`, `lost` or `missed`.
    pub disposition: Option<String>,
    /// `slaStatus`, raw.
    pub sla_status: Option<String>,
    /// Transcript lines in time order (stable for equal times).
    pub lines: Vec<VccLine>,
    /// `clientData` entries plus `ticketId` / `contactId`, raw values.
    pub attributes: BTreeMap<String, Value>,
}

impl VccChat {
    /// `"{projectId}:{chatId}"`: the stream's external id and the delivery key.
    pub fn key(&self) -> String {
        format!("{}:{}", self.project_id, self.chat_id)
    }

    /// When the chat ended as far as the body tells: its last line.
    pub(crate) fn last_line_at(&self) -> Option<DateTime<Utc>> {
        self.lines.last().map(|l| l.at)
    }
}

/// Decodes a VCC chat body, naming the offending field on error.
pub fn decode(value: &Value) -> Result<VccChat, PayloadError> {
    if !value.is_object() {
        return Err(PayloadError::field("", "the body must be a JSON object"));
    }
    let chat_id = required_integer(value, "chatId")?;
    let project_id = required_integer(value, "projectId")?;
    let items = match value.get("conversation") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => return Err(PayloadError::field("conversation", "`conversation` must be an array")),
    };
    let mut lines = items
        .iter()
        .enumerate()
        .map(|(i, item)| line(i, item))
        .collect::<Result<Vec<_>, _>>()?;
    // Stable: lines sent in the same second keep their body order.
    lines.sort_by_key(|l| l.at);

    let mut attributes: BTreeMap<String, Value> = match value.get("clientData") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => BTreeMap::new(),
    };
    for key in ["ticketId", "contactId"] {
        if let Some(v) = value.get(key).filter(|v| !v.is_null()) {
            attributes.insert(key.to_string(), v.clone());
        }
    }
    let text = |k: &str| opt_str(value, k).filter(|s| !s.is_empty());
    Ok(VccChat {
        chat_id,
        project_id,
        first_agent_name: text("firstAgentName"),
        last_agent_name: text("lastAgentName"),
        first_queue_name: text("firstQueueName"),
        last_queue_name: text("lastQueueName"),
        disposition: text("disposition"),
        sla_status: text("slaStatus"),
        lines,
        attributes,
    })
}

/// Parses one delivery into events to append.
pub fn parse(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let chat = decode(value)?;
    let key = chat.key();
    let event = delivered_event(
        Platform::Vcc,
        key.clone(),
        CHAT_CLOSED,
        Some(&key),
        chat.last_line_at(),
        raw,
        d,
    );
    Ok(Parsed {
        events: vec![event],
        unknown: false,
    })
}

/// Who closed the chat, from VCC's `disposition`.
pub(crate) fn closed_by(disposition: Option<&str>) -> ClosedBy {
    match disposition.map(|d| d.trim().to_ascii_lowercase()).as_deref() {
        Some("completed") => ClosedBy::Agent,
        Some("lost") => ClosedBy::Visitor,
        Some("missed") => ClosedBy::Platform,
        _ => ClosedBy::Unknown,
    }
}

/// The facts of one stored event of this platform, in time order.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    if kind != CHAT_CLOSED {
        return Vec::new();
    }
    let Ok(chat) = decode(payload) else {
        return Vec::new();
    };
    chat_facts(&chat, at)
}

/// The facts of a whole chat; `end` is when it closed (the stored event's `occurred_at`).
pub(crate) fn chat_facts(chat: &VccChat, end: DateTime<Utc>) -> Vec<TimedFact> {
    let start = chat.lines.first().map(|l| l.at).unwrap_or(end);
    let mut out: Vec<TimedFact> = vec![(
        start,
        Fact::Queued {
            backend: "vcc".into(),
            queue: chat.first_queue_name.clone(),
        },
    )];
    if !chat.attributes.is_empty() {
        out.push((start, Fact::Attributes(chat.attributes.clone())));
    }
    let first_agent = chat.lines.iter().position(|l| !l.is_visitor());
    let transferred = chat.last_queue_name.is_some() && chat.last_queue_name != chat.first_queue_name;
    // The last agent is a second attendance only when named differently and actually seen writing.
    let second_agent = chat
        .last_agent_name
        .as_deref()
        .filter(|last| chat.first_agent_name.as_deref() != Some(*last))
        .and_then(|last| chat.lines.iter().position(|l| !l.is_visitor() && l.from == last))
        .filter(|i| Some(*i) != first_agent);
    for (i, line) in chat.lines.iter().enumerate() {
        if Some(i) == first_agent {
            out.push((line.at, attended(&line.from, chat.first_queue_name.clone())));
        }
        if Some(i) == second_agent {
            let group = chat.last_queue_name.clone().or_else(|| chat.first_queue_name.clone());
            out.push((line.at, attended(&line.from, group)));
        }
        let (party, author) = if line.is_visitor() {
            (Party::Visitor, "Visitor".to_string())
        } else {
            (Party::Agent, line.from.clone())
        };
        out.push((
            line.at,
            Fact::Message(MessageFact {
                text: line.message.clone(),
                ..MessageFact::text(party, Some(author), "")
            }),
        ));
        if Some(i) == first_agent && transferred {
            out.push((
                line.at,
                Fact::Transferred {
                    from_queue: chat.first_queue_name.clone(),
                    to_queue: chat.last_queue_name.clone(),
                },
            ));
        }
    }
    out.push((
        end,
        Fact::PlatformOutcome {
            disposition: chat.disposition.clone(),
            sla_status: chat.sla_status.clone(),
        },
    ));
    out.push((
        end,
        Fact::Closed {
            by: closed_by(chat.disposition.as_deref()),
            reason: chat.disposition.clone(),
        },
    ));
    out.sort_by_key(|(t, _)| *t);
    out
}

fn attended(name: &str, group: Option<String>) -> Fact {
    Fact::Attended {
        agent: Agent {
            name: name.to_string(),
            nickname: None,
            group,
        },
        party_id: None,
    }
}

fn required_integer(value: &Value, key: &str) -> Result<i64, PayloadError> {
    match value.get(key) {
        None | Some(Value::Null) => Err(PayloadError::field(key, format!("`{key}` is required"))),
        Some(v) => {
            super::json_integer(v).ok_or_else(|| PayloadError::field(key, format!("`{key}` must be an integer")))
        }
    }
}

fn line(i: usize, item: &Value) -> Result<VccLine, PayloadError> {
    let path = format!("conversation[{i}]");
    if !item.is_object() {
        return Err(PayloadError::field(path.clone(), format!("`{path}` must be an object")));
    }
    let from = super::required_str(item, "from", &format!("{path}.from"))?;
    let date_path = format!("{path}.date");
    let date = super::required_str(item, "date", &date_path)?;
    let at = DateTime::parse_from_rfc3339(date.trim())
        .map(|t| truncate_to_micros(t.with_timezone(&Utc)))
        .map_err(|e| {
            PayloadError::field(
                date_path.clone(),
                format!("`{date_path}` is not an ISO 8601 date with an offset: {e}"),
            )
        })?;
    Ok(VccLine {
        from,
        at,
        message: opt_str(item, "message"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{event_id_for, MessageKind, StreamKey};
    use crate::sources::parse_json;
    use crate::sources::testing::{self, field_of, utc};
    use chrono::TimeZone;
    use serde_json::json;

    const EXAMPLE: &str = r#"{
"chatId": 101,
"projectId": 130,
"firstAgentName": "Jane Smith",
"lastAgentName": "Jane Smith",
"firstQueueName": "Chat",
"lastQueueName": "Chat",
"ticketId": 35,
"contactId": 1220,
"entityId": 1814,
"disposition": "completed",
"platform": "webchat",
"conversation": [
{
"from": "Visitor",
"date": "2025-03-06T14:37:52+01:00",
"message": "hi"
},
{
"from": "Jane Smith",
"date": "2025-03-06T14:37:57+01:00",
"message": "hello"
},
{
"from": "Visitor",
"date": "2025-03-06T14:38:03+01:00",
"message": "Could you help me?"
},
{
"from": "Jane Smith",
"date": "2025-03-06T14:38:05+01:00",
"message": "Yes"
}
],
"ipAddress": "10.80.2.13",
"isSpam": 0,
"slaStatus": "answeredBeforeSLA",
"clientData": {
"name": "John Russell",
"phone1": "123456789",
"newfield7": [
23
],
"contact1_email": "[email protected]",
"automatic_record_closing": "",
"customerid": "987654321",
"direction": "",
"phone2": "123123123",
"phone3": "321321321",
"random": "value"
}
}"#;

    fn received() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 6, 14, 0, 0).unwrap()
    }

    fn delivery() -> Delivery<'static> {
        testing::delivery(received(), ("content-type", "application/json"), None)
    }

    fn run(raw: &str) -> Result<Parsed, PayloadError> {
        testing::run(parse, raw, &delivery())
    }

    fn stored_facts(raw: &str) -> Vec<TimedFact> {
        testing::first_facts(&run(raw).unwrap(), facts)
    }

    fn msg(party: Party, author: &str, text: &str) -> Fact {
        Fact::Message(MessageFact::text(party, Some(author.into()), text))
    }

    fn agent(name: &str, group: &str) -> Fact {
        Fact::Attended {
            agent: Agent {
                name: name.into(),
                nickname: None,
                group: Some(group.into()),
            },
            party_id: None,
        }
    }

    #[test]
    fn example_is_one_chat_closed_event() {
        let parsed = run(EXAMPLE).unwrap();
        assert!(!parsed.unknown);
        assert_eq!(parsed.events.len(), 1);
        let e = &parsed.events[0];
        assert_eq!(e.kind, "vcc.chat_closed");
        assert_eq!(e.stream, StreamKey::new(Platform::Vcc, "130:101"));
        assert_eq!(e.event_id, event_id_for(Platform::Vcc, Some("130:101")));
        assert_eq!(e.occurred_at, utc("2025-03-06T13:38:05Z"));
        assert_eq!(e.received_at, received());
        assert_eq!(e.payload, EXAMPLE);
        assert_eq!(e.headers.len(), 1);
        assert_eq!(run(EXAMPLE).unwrap().events[0].event_id, e.event_id);
    }

    #[test]
    fn example_facts_in_time_order_with_visitor_agent_split() {
        let mut attributes: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in [
            ("name", json!("John Russell")),
            ("phone1", json!("123456789")),
            ("newfield7", json!([23])),
            ("contact1_email", json!("[email protected]")),
            ("automatic_record_closing", json!("")),
            ("customerid", json!("987654321")),
            ("direction", json!("")),
            ("phone2", json!("123123123")),
            ("phone3", json!("321321321")),
            ("random", json!("value")),
            ("ticketId", json!(35)),
            ("contactId", json!(1220)),
        ] {
            attributes.insert(k.into(), v);
        }
        let t1 = utc("2025-03-06T13:37:52Z");
        let t2 = utc("2025-03-06T13:37:57Z");
        let t3 = utc("2025-03-06T13:38:03Z");
        let t4 = utc("2025-03-06T13:38:05Z");
        assert_eq!(
            stored_facts(EXAMPLE),
            vec![
                (
                    t1,
                    Fact::Queued {
                        backend: "vcc".into(),
                        queue: Some("Chat".into())
                    }
                ),
                (t1, Fact::Attributes(attributes)),
                (t1, msg(Party::Visitor, "Visitor", "hi")),
                (t2, agent("Jane Smith", "Chat")),
                (t2, msg(Party::Agent, "Jane Smith", "hello")),
                (t3, msg(Party::Visitor, "Visitor", "Could you help me?")),
                (t4, msg(Party::Agent, "Jane Smith", "Yes")),
                (
                    t4,
                    Fact::PlatformOutcome {
                        disposition: Some("completed".into()),
                        sla_status: Some("answeredBeforeSLA".into())
                    }
                ),
                (
                    t4,
                    Fact::Closed {
                        by: ClosedBy::Agent,
                        reason: Some("completed".into())
                    }
                ),
            ]
        );
    }

    #[test]
    fn transfer_and_second_agent_follow_the_first_agent_line() {
        let raw = json!({
            "chatId": "7", "projectId": "3",
            "firstAgentName": "Ann", "lastAgentName": "Bob",
            "firstQueueName": "Sales", "lastQueueName": "Support",
            "disposition": "completed",
            "conversation": [
                {"from": "VISITOR", "date": "2025-03-06T10:00:00Z", "message": "hi"},
                {"from": "Ann", "date": "2025-03-06T10:00:10Z", "message": "moving you"},
                {"from": "Bob", "date": "2025-03-06T10:01:00Z", "message": "Bob here"},
                {"from": "visitor", "date": "2025-03-06T10:01:00Z", "message": "thanks"}
            ]
        })
        .to_string();
        let e = run(&raw).unwrap().events.remove(0);
        assert_eq!(e.stream.external_id, "3:7");
        let facts: Vec<(DateTime<Utc>, Fact)> = stored_facts(&raw);
        let t = |s: &str| utc(&format!("2025-03-06T{s}Z"));
        assert_eq!(
            facts,
            vec![
                (
                    t("10:00:00"),
                    Fact::Queued {
                        backend: "vcc".into(),
                        queue: Some("Sales".into())
                    }
                ),
                (t("10:00:00"), msg(Party::Visitor, "Visitor", "hi")),
                (t("10:00:10"), agent("Ann", "Sales")),
                (t("10:00:10"), msg(Party::Agent, "Ann", "moving you")),
                (
                    t("10:00:10"),
                    Fact::Transferred {
                        from_queue: Some("Sales".into()),
                        to_queue: Some("Support".into())
                    }
                ),
                (t("10:01:00"), agent("Bob", "Support")),
                (t("10:01:00"), msg(Party::Agent, "Bob", "Bob here")),
                (t("10:01:00"), msg(Party::Visitor, "Visitor", "thanks")),
                (
                    t("10:01:00"),
                    Fact::PlatformOutcome {
                        disposition: Some("completed".into()),
                        sla_status: None
                    }
                ),
                (
                    t("10:01:00"),
                    Fact::Closed {
                        by: ClosedBy::Agent,
                        reason: Some("completed".into())
                    }
                ),
            ]
        );
        // Numeric strings give the same key as numbers.
        assert_eq!(e.event_id, event_id_for(Platform::Vcc, Some("3:7")));
    }

    #[test]
    fn lines_out_of_order_are_sorted_stably() {
        let raw = json!({"chatId": 1, "projectId": 2, "disposition": "lost", "conversation": [
            {"from": "Visitor", "date": "2025-03-06T10:00:05+00:00", "message": "second"},
            {"from": "Visitor", "date": "2025-03-06T11:00:00+01:00", "message": "first"},
            {"from": "Visitor", "date": "2025-03-06T10:00:00Z", "message": "also first"}
        ]})
        .to_string();
        let e = run(&raw).unwrap().events.remove(0);
        assert_eq!(e.occurred_at, utc("2025-03-06T10:00:05Z"));
        let texts: Vec<String> = stored_facts(&raw)
            .into_iter()
            .filter_map(|(_, f)| match f {
                Fact::Message(m) => m.text,
                _ => None,
            })
            .collect();
        assert_eq!(texts, vec!["first", "also first", "second"]);
        // Only visitor lines: nobody attended, the visitor was lost.
        let facts = stored_facts(&raw);
        assert!(!facts.iter().any(|(_, f)| matches!(f, Fact::Attended { .. })));
        assert_eq!(
            facts.last().unwrap().1,
            Fact::Closed {
                by: ClosedBy::Visitor,
                reason: Some("lost".into())
            }
        );
        let times: Vec<_> = facts.iter().map(|(t, _)| *t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn chat_without_lines_happens_when_received() {
        let raw = json!({"chatId": 1, "projectId": 2, "disposition": "missed", "firstQueueName": "Chat"}).to_string();
        let e = run(&raw).unwrap().events.remove(0);
        assert_eq!(e.occurred_at, received());
        assert_eq!(
            stored_facts(&raw),
            vec![
                (
                    received(),
                    Fact::Queued {
                        backend: "vcc".into(),
                        queue: Some("Chat".into())
                    }
                ),
                (
                    received(),
                    Fact::PlatformOutcome {
                        disposition: Some("missed".into()),
                        sla_status: None
                    }
                ),
                (
                    received(),
                    Fact::Closed {
                        by: ClosedBy::Platform,
                        reason: Some("missed".into())
                    }
                ),
            ]
        );
        assert_eq!(closed_by(Some("other")), ClosedBy::Unknown);
        assert_eq!(closed_by(None), ClosedBy::Unknown);
    }

    #[test]
    fn line_without_message_is_a_line_without_text() {
        let raw = json!({"chatId": 1, "projectId": 2, "conversation": [
            {"from": "Jane", "date": "2025-03-06T10:00:00Z"}]})
        .to_string();
        let facts = stored_facts(&raw);
        let Some((_, Fact::Message(m))) = facts.iter().find(|(_, f)| matches!(f, Fact::Message(_))) else {
            panic!("{facts:?}")
        };
        assert_eq!(m.text, None);
        assert_eq!(m.kind, MessageKind::Text);
        assert_eq!(m.author.as_deref(), Some("Jane"));
    }

    #[test]
    fn required_fields_are_named_in_errors() {
        let line = |date: &str| json!({"from": "Visitor", "date": date, "message": "x"});
        let cases = [
            (json!([1]), "".to_string()),
            (json!({"projectId": 1}), "chatId".into()),
            (json!({"chatId": "abc", "projectId": 1}), "chatId".into()),
            (json!({"chatId": 1.5, "projectId": 1}), "chatId".into()),
            (json!({"chatId": 1}), "projectId".into()),
            (json!({"chatId": 1, "projectId": [1]}), "projectId".into()),
            (
                json!({"chatId": 1, "projectId": 1, "conversation": {}}),
                "conversation".into(),
            ),
            (
                json!({"chatId": 1, "projectId": 1, "conversation": [line("2025-03-06T10:00:00Z"), 5]}),
                "conversation[1]".into(),
            ),
            (
                json!({"chatId": 1, "projectId": 1, "conversation": [
                line("2025-03-06T10:00:00Z"), line("2025-03-06T10:00:01Z"), line("2025-03-06T10:00:02Z"),
                line("yesterday")]}),
                "conversation[3].date".into(),
            ),
            (
                json!({"chatId": 1, "projectId": 1, "conversation": [line("2025-03-06T10:00:00")]}),
                "conversation[0].date".into(),
            ),
            (
                json!({"chatId": 1, "projectId": 1, "conversation": [{"from": "Visitor"}]}),
                "conversation[0].date".into(),
            ),
            (
                json!({"chatId": 1, "projectId": 1, "conversation": [{"date": "2025-03-06T10:00:00Z"}]}),
                "conversation[0].from".into(),
            ),
        ];
        for (value, field) in cases {
            let err = parse(&value.to_string(), &value, &delivery()).unwrap_err();
            assert_eq!(field_of(err), field, "{value}");
        }
    }

    #[test]
    fn facts_of_other_kinds_or_broken_payloads_are_empty() {
        let v = parse_json(EXAMPLE.as_bytes()).unwrap();
        assert!(facts("vcc.unknown", &v, received()).is_empty());
        assert!(facts(CHAT_CLOSED, &json!({"chatId": 1}), received()).is_empty());
        assert!(facts(CHAT_CLOSED, &json!(null), received()).is_empty());
    }
}
