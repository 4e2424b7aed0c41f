//! Erasure of a person's conversation (GDPR art. 17, CCPA), the only change ever made to a stored
//! event: every payload of the conversation's events becomes an [`ErasureStub`] naming the original's
//! SHA-256 (so the hash chain still verifies), the kept headers are dropped, the projections lose
//! texts, authors, urls and attributes, quarantined deliveries of its streams are deleted, and a
//! `ledger.erased` event records what was done together with the facts kept of each erased event
//! (times, parties, kinds, queues, agents, outcomes: what the metrics are made of, no personal data),
//! so that states, timers, SLA statuses, dispositions and report counts are the same before and after,
//! and a replay of the log alone rebuilds the erased projection.
//!
//! This module holds the pure parts: the request, the certificate, which facts are kept, and which
//! quarantine entries belong to a stream. The store runs an erasure in one transaction (`Store::erase`),
//! through the writer so it is ordered with appends.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::chain::{ChainHead, ErasedEvent};
use crate::model::{Platform, StreamKey};
use crate::sources::{Fact, MessageFact, TimedFact};

/// What to erase: a conversation, by its id or by one of its stream keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErasureTarget {
    /// A conversation id (an id absorbed by a merge resolves to the survivor).
    Conversation(Uuid),
    /// The conversation a stream belongs to.
    Stream(StreamKey),
}

/// The proof an erasure hands out (`POST /v1/erasures`, `GET /v1/erasures/{id}`): which events had
/// their payloads replaced, each with the SHA-256 of the original (what the chain covers, so an auditor
/// holding an original can show it was this one), and the chain head right after the erasure was
/// recorded (the `ledger.erased` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErasureCertificate {
    /// The erasure's id.
    pub id: Uuid,
    /// When it ran.
    pub at: DateTime<Utc>,
    /// The conversations erased.
    pub conversation_ids: Vec<Uuid>,
    /// The events whose payloads became stubs, in seq order.
    pub events: Vec<ErasedEvent>,
    /// The `ledger.erased` event recording the erasure and its hash.
    pub chain_head: ChainHead,
}

/// Placeholder for the text of a kept notice (outbound call outcomes can quote what was sent).
pub const ERASED_NOTICE: &str = "(erased)";

/// What an erasure keeps of one event's facts: everything the metrics are computed from (times,
/// parties, message kinds and counts, queues, agents, transfers, closes, outcomes, failures), without
/// the person's data: a line keeps its party, kind and Bright Pattern party id (to tell agent from
/// bot lines) but loses its text, author, buttons, cards and url; attributes keep their names with
/// null values; a notice loses its text.
pub fn kept_facts(facts: Vec<TimedFact>) -> Vec<TimedFact> {
    facts.into_iter().map(|(at, fact)| (at, kept_fact(fact))).collect()
}

fn kept_fact(fact: Fact) -> Fact {
    match fact {
        Fact::Message(m) => Fact::Message(MessageFact {
            party: m.party,
            author: None,
            party_id: m.party_id,
            kind: m.kind,
            text: None,
            buttons: Vec::new(),
            cards: Vec::new(),
            url: None,
            automatic: m.automatic,
        }),
        Fact::Attributes(attributes) => Fact::Attributes(attributes.into_keys().map(|k| (k, Value::Null)).collect()),
        Fact::Notice { .. } => Fact::Notice {
            text: ERASED_NOTICE.to_string(),
        },
        // Already reduced by an earlier erasure.
        Fact::Erased { events } => Fact::Erased { events },
        other => other,
    }
}

/// Whether a quarantined delivery belongs to one of `streams`: its body names the stream's id as a
/// JSON string or number (`"roomId":"abc"`, `"chatId":123`), or its path ends with it (Bright Pattern's
/// `/webhooks/bright-pattern/{chat_id}`). A VCC stream `projectId:chatId` is matched by its chat id.
/// Ids shorter than 4 characters are matched by path only (too likely to occur by chance).
pub fn quarantine_matches(path: &str, body: &[u8], streams: &[StreamKey]) -> bool {
    streams.iter().any(|s| {
        let id = match s.platform {
            Platform::Vcc => s.external_id.rsplit(':').next().unwrap_or(&s.external_id),
            _ => s.external_id.as_str(),
        };
        if id.is_empty() {
            return false;
        }
        if path.rsplit('/').next() == Some(id) {
            return true;
        }
        if id.len() < 4 {
            return false;
        }
        let quoted = format!("\"{id}\"");
        contains(body, quoted.as_bytes()) || contains_number(body, id)
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `id` as a bare JSON number value (`: 123,` / `:123}`), for numeric ids.
fn contains_number(body: &[u8], id: &str) -> bool {
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let needle = id.as_bytes();
    body.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle
            && body[..i].iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b':')
            && body
                .get(i + needle.len())
                .is_none_or(|b| !b.is_ascii_digit() && *b != b'.')
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Agent, MessageKind, Party};
    use crate::sources::ClosedBy;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_706_000_000, 0).unwrap()
    }

    #[test]
    fn lines_keep_party_and_kind_but_lose_text_author_and_url() {
        let line = MessageFact {
            party: Party::Visitor,
            author: Some("Jane Roe".into()),
            party_id: Some("p-1".into()),
            kind: MessageKind::Image,
            text: Some("my email is jane@example.com".into()),
            buttons: vec![crate::model::Button {
                kind: "postback".into(),
                text: "Call me at 555-0100".into(),
                url: None,
            }],
            cards: Vec::new(),
            url: Some("https://files.example.com/jane.png".into()),
            automatic: true,
        };
        let kept = kept_facts(vec![(at(), Fact::Message(line))]);
        assert_eq!(
            kept,
            vec![(
                at(),
                Fact::Message(MessageFact {
                    party: Party::Visitor,
                    author: None,
                    party_id: Some("p-1".into()),
                    kind: MessageKind::Image,
                    text: None,
                    buttons: Vec::new(),
                    cards: Vec::new(),
                    url: None,
                    automatic: true,
                })
            )]
        );
    }

    #[test]
    fn metric_facts_are_kept_whole_and_attributes_by_name_only() {
        let agent = Agent {
            name: "Tomas".into(),
            nickname: None,
            group: Some("2179".into()),
        };
        let facts = vec![
            (
                at(),
                Fact::Queued {
                    backend: "aivo_live".into(),
                    queue: Some("2179".into()),
                },
            ),
            (
                at(),
                Fact::Attended {
                    agent: agent.clone(),
                    party_id: None,
                },
            ),
            (
                at(),
                Fact::Closed {
                    by: ClosedBy::Agent,
                    reason: Some("resolved".into()),
                },
            ),
            (
                at(),
                Fact::Attributes(BTreeMap::from([("email".into(), Value::from("jane@example.com"))])),
            ),
            (
                at(),
                Fact::Notice {
                    text: "relay failed: 'hi, I am Jane'".into(),
                },
            ),
        ];
        let kept = kept_facts(facts.clone());
        assert_eq!(kept[..3], facts[..3]);
        assert_eq!(
            kept[3].1,
            Fact::Attributes(BTreeMap::from([("email".into(), Value::Null)]))
        );
        assert_eq!(
            kept[4].1,
            Fact::Notice {
                text: ERASED_NOTICE.into()
            }
        );
    }

    #[test]
    fn kept_facts_survive_a_round_trip_through_json() {
        let facts = kept_facts(vec![
            (at(), Fact::VisitorLeft),
            (
                at(),
                Fact::PlatformOutcome {
                    disposition: Some("lost".into()),
                    sla_status: None,
                },
            ),
        ]);
        let text = serde_json::to_string(&facts).unwrap();
        assert_eq!(serde_json::from_str::<Vec<TimedFact>>(&text).unwrap(), facts);
    }

    /// A stored event from a webhook body, parsed by its platform's parser.
    fn aivo_event(seq: i64, body: Value) -> crate::model::StoredEvent {
        let raw = body.to_string();
        let delivery = crate::sources::Delivery {
            // Well after the platform's times (a time after its arrival would be held back to it).
            received_at: at() + chrono::Duration::seconds(100 + seq),
            ..Default::default()
        };
        let parsed = crate::sources::aivo_live::parse(&raw, &body, &delivery).unwrap();
        let e = parsed.events.into_iter().next().unwrap();
        stored(seq, e)
    }

    fn stored(seq: i64, e: crate::model::NewEvent) -> crate::model::StoredEvent {
        e.stored(seq).unwrap()
    }

    /// What the pure fold does with an erasure: the same metrics from the kept facts, lines without content,
    /// and a kept fold state that cannot take the erasure as an increment.
    #[test]
    fn a_fold_of_erased_events_keeps_the_metrics_and_drops_the_content() {
        let id = Uuid::from_u128(42);
        let room = StreamKey::new(Platform::AivoLive, "room-1");
        let ns = |s: i64| (at() + chrono::Duration::seconds(s)).timestamp_nanos_opt().unwrap();
        let events = vec![
            aivo_event(
                1,
                serde_json::json!({"name": "attended", "roomId": "room-1", "timestamp": ns(1), "botId": 1,
                    "eventTime": 0, "data": {"agent": {"name": "Tomas", "groupId": 2179}}}),
            ),
            aivo_event(
                2,
                serde_json::json!({"name": "messageToClient", "roomId": "room-1", "timestamp": ns(5), "botId": 1,
                    "eventTime": 0, "data": {"action": "text", "value": "Hello Jane Roe", "source": "agent",
                    "agent": {"name": "Tomas"}}}),
            ),
            stored(
                3,
                crate::sources::ledger::api_message(
                    id,
                    Party::Visitor,
                    "call +1 555 0100",
                    None,
                    at() + chrono::Duration::seconds(7),
                ),
            ),
            aivo_event(
                4,
                serde_json::json!({"name": "close", "roomId": "room-1", "timestamp": ns(30), "botId": 1,
                    "eventTime": 0, "data": {"reason": "agent", "agent": {}}}),
            ),
        ];
        let streams = [room, StreamKey::new(Platform::Api, id.to_string())];
        let sla = crate::config::SlaConfig::default();
        let original = crate::projection::project(id, &streams, &events, &sla).unwrap();

        let erasure_id = Uuid::from_u128(7);
        let mut erased: Vec<crate::model::StoredEvent> = events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let stub = crate::chain::ErasureStub::new(erasure_id, &[0; 32]);
                e.payload = serde_json::from_str(&stub.to_payload()).unwrap();
                e
            })
            .collect();
        let record = crate::sources::ledger::ErasedPayload {
            erasure_id,
            at: at() + chrono::Duration::seconds(100),
            conversation_ids: vec![id],
            events: Vec::new(),
            kept: events
                .iter()
                .map(|e| crate::sources::KeptEvent {
                    seq: e.seq,
                    event_id: e.event_id,
                    platform: e.platform,
                    facts: kept_facts(crate::sources::facts_of(e)),
                })
                .collect(),
        };
        let recorded = stored(5, crate::sources::ledger::erased(id, &record));
        erased.push(recorded.clone());
        let after = crate::projection::project(id, &streams, &erased, &sla).unwrap();

        let metrics = |c: &crate::model::Conversation| {
            (
                c.state,
                c.disposition,
                c.sla_status,
                c.handoffs.clone(),
                c.message_counts.clone(),
                c.agents.clone(),
            )
        };
        assert_eq!(metrics(&after.conversation), metrics(&original.conversation));
        assert_eq!(after.conversation.first_response_seconds, Some(4.0));
        assert_eq!(after.messages.len(), original.messages.len());
        for (a, o) in after.messages.iter().zip(&original.messages) {
            assert_eq!((a.seq, a.at, a.party, a.kind), (o.seq, o.at, o.party, o.kind));
            assert_eq!(
                (a.text.as_deref(), a.author.as_deref(), a.url.as_deref()),
                (None, None, None)
            );
        }
        assert!(original.messages.iter().any(|m| m.author.as_deref() == Some("Tomas")));

        // The kept fold state of the original cannot take the erasure as an increment: it refolds.
        let extent = crate::projection::LogExtent::of_events(&events).unwrap();
        let (mut state, _) = crate::projection::FoldState::build(extent, crate::projection::inputs_of(&events));
        let increment = [recorded];
        let result = state.extend(
            crate::projection::LogExtent::of_events(&increment).unwrap(),
            crate::projection::inputs_of(&increment),
            &|_| false,
        );
        assert_eq!(result.unwrap_err(), crate::projection::Refold::Erased);
    }

    #[test]
    fn quarantined_bodies_are_matched_by_their_stream_ids() {
        let room = StreamKey::new(Platform::AivoLive, "room-4711");
        let vcc = StreamKey::new(Platform::Vcc, "12:98765");
        let bp = StreamKey::new(Platform::BrightPattern, "c1");
        let streams = [room, vcc, bp];
        assert!(quarantine_matches(
            "/webhooks/aivo-live",
            br#"{"roomId":"room-4711","x":}"#,
            &streams
        ));
        assert!(quarantine_matches(
            "/webhooks/vcc/chat",
            br#"{"projectId":12,"chatId": 98765}"#,
            &streams
        ));
        assert!(quarantine_matches("/webhooks/bright-pattern/c1", b"not json", &streams));
        assert!(!quarantine_matches(
            "/webhooks/aivo-live",
            br#"{"roomId":"room-47111"}"#,
            &streams
        ));
        assert!(!quarantine_matches(
            "/webhooks/vcc/chat",
            br#"{"chatId": 987650}"#,
            &streams
        ));
        assert!(!quarantine_matches(
            "/webhooks/vcc/chat",
            br#"{"chatId": 98765.5}"#,
            &streams
        ));
        // A short id is only matched by path.
        assert!(!quarantine_matches(
            "/webhooks/ultimate/converse",
            br#"{"id":"c1"}"#,
            &streams
        ));
    }
}
