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
