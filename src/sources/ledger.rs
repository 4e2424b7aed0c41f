//! Events this service records itself (`ledger.*`) and those posted through its own API (`api.*`).
//! Their payloads are built here, so building and reading them live side by side.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Fact, KeptEvent, MessageFact, TimedFact};
use crate::chain::ErasedEvent;
use crate::model::{event_id_for, NewEvent, Party, Platform, StreamKey};

/// `ledger.linked`: these streams belong to one conversation.
pub const LINKED: &str = "ledger.linked";
/// `ledger.queue_accepted`: a live backend accepted the hand-over.
pub const QUEUE_ACCEPTED: &str = "ledger.queue_accepted";
/// `ledger.queue_failed`: the hand-over failed.
pub const QUEUE_FAILED: &str = "ledger.queue_failed";
/// `ledger.command`: an outbound call recorded before it is attempted.
pub const COMMAND: &str = "ledger.command";
/// `ledger.command_result`: the outcome of an outbound call.
pub const COMMAND_RESULT: &str = "ledger.command_result";
/// `ledger.redriven`: a quarantined delivery was run through the parsers again.
pub const REDRIVEN: &str = "ledger.redriven";
/// `ledger.erased`: an erasure replaced personal data by stubs (payload: [`ErasedPayload`]).
pub const ERASED: &str = crate::chain::ERASED_KIND;
/// `api.message`: a message posted through `POST /v1/conversations/{id}/messages`.
pub const API_MESSAGE: &str = "api.message";
/// `api.handoff_requested`: `POST /v1/conversations/{id}/handoff`.
pub const API_HANDOFF: &str = "api.handoff_requested";

/// Payload of `ledger.queue_accepted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueAccepted {
    /// `aivo_live` or `bright_pattern`.
    pub backend: String,
    /// Queue / group.
    pub queue: Option<String>,
    /// The live platform's id for the chat (Aivo conversationId, Bright Pattern chat_id).
    pub live_id: String,
    /// Team the route was chosen for.
    pub team: Option<String>,
}

/// Payload of `ledger.command` and `ledger.command_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Command id (the outbox row).
    pub command_id: String,
    /// What it does: `aivo_queue`, `aivo_message`, `widget_escalation_success`, ...
    pub action: String,
    /// For results: `ok`, `failed` (permanent) or `gave_up` (transient, attempts exhausted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// For results: HTTP status or error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request (commands) or response (results) body, when worth keeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// For a command re-sent by an operator: the id of the command that gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

fn new_event(
    conversation_id: Uuid,
    platform: Platform,
    kind: &str,
    delivery_key: Option<String>,
    payload: Value,
    at: DateTime<Utc>,
    links: Vec<StreamKey>,
) -> NewEvent {
    let at = super::truncate_to_micros(at);
    NewEvent {
        event_id: event_id_for(platform, delivery_key.as_deref()),
        stream: StreamKey::new(platform, conversation_id.to_string()),
        kind: kind.to_string(),
        occurred_at: at,
        platform_at: None,
        received_at: at,
        payload: payload.to_string(),
        headers: BTreeMap::new(),
        links,
    }
}

/// `ledger.linked`: files `streams` under the conversation `conversation_id` (merging conversations
/// when they already have one). Idempotent: the same link twice is one event.
pub fn linked(conversation_id: Uuid, streams: Vec<StreamKey>, reason: &str, at: DateTime<Utc>) -> NewEvent {
    let key = streams
        .iter()
        .map(|s| format!("{}:{}", s.platform, s.external_id))
        .collect::<Vec<_>>()
        .join(",");
    let payload = json!({"conversation_id": conversation_id, "streams": streams, "reason": reason});
    new_event(
        conversation_id,
        Platform::Ledger,
        LINKED,
        Some(format!("linked:{conversation_id}:{key}")),
        payload,
        at,
        streams,
    )
}

/// `ledger.queue_accepted`, linking the live chat's stream to the conversation.
pub fn queue_accepted(conversation_id: Uuid, accepted: &QueueAccepted, live: StreamKey, at: DateTime<Utc>) -> NewEvent {
    let key = format!(
        "queue_accepted:{conversation_id}:{}:{}",
        accepted.backend, accepted.live_id
    );
    let payload = serde_json::to_value(accepted).unwrap_or(Value::Null);
    new_event(
        conversation_id,
        Platform::Ledger,
        QUEUE_ACCEPTED,
        Some(key),
        payload,
        at,
        vec![live],
    )
}

/// `ledger.queue_failed`.
pub fn queue_failed(conversation_id: Uuid, backend: &str, reason: &str, at: DateTime<Utc>) -> NewEvent {
    let payload = json!({"backend": backend, "reason": reason});
    new_event(
        conversation_id,
        Platform::Ledger,
        QUEUE_FAILED,
        None,
        payload,
        at,
        Vec::new(),
    )
}

/// `ledger.command` or `ledger.command_result` (`kind` is one of [`COMMAND`], [`COMMAND_RESULT`]).
pub fn command(conversation_id: Uuid, kind: &str, record: &CommandRecord, at: DateTime<Utc>) -> NewEvent {
    let key = format!("{kind}:{}", record.command_id);
    let payload = serde_json::to_value(record).unwrap_or(Value::Null);
    new_event(
        conversation_id,
        Platform::Ledger,
        kind,
        Some(key),
        payload,
        at,
        Vec::new(),
    )
}

/// `ledger.redriven`: a quarantined delivery was run again and filed under this conversation. One event
/// per entry and outcome, so that repeated redrives of one entry are recorded once.
pub fn redriven(
    conversation_id: Uuid,
    quarantine_id: i64,
    redrive: &Value,
    outcome: &str,
    at: DateTime<Utc>,
) -> NewEvent {
    new_event(
        conversation_id,
        Platform::Ledger,
        REDRIVEN,
        Some(format!("redriven:{quarantine_id}:{outcome}")),
        redrive.clone(),
        at,
        Vec::new(),
    )
}

/// `api.message`; `idempotency_key` makes a retried post one event.
pub fn api_message(
    conversation_id: Uuid,
    party: Party,
    text: &str,
    idempotency_key: Option<&str>,
    at: DateTime<Utc>,
) -> NewEvent {
    let payload = json!({"party": party, "text": text});
    let key = idempotency_key.map(|k| format!("message:{conversation_id}:{k}"));
    new_event(
        conversation_id,
        Platform::Api,
        API_MESSAGE,
        key,
        payload,
        at,
        Vec::new(),
    )
}

/// `api.handoff_requested`.
pub fn api_handoff(
    conversation_id: Uuid,
    team: Option<&str>,
    idempotency_key: Option<&str>,
    at: DateTime<Utc>,
) -> NewEvent {
    let payload = json!({"team": team});
    let key = idempotency_key.map(|k| format!("handoff:{conversation_id}:{k}"));
    new_event(
        conversation_id,
        Platform::Api,
        API_HANDOFF,
        key,
        payload,
        at,
        Vec::new(),
    )
}

/// Payload of `ledger.erased`: the erasure's record (read by `verify` as [`crate::chain::ErasureRecord`])
/// plus the facts kept of each erased event, so that replay rebuilds the same metrics from the log alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasedPayload {
    /// The erasure's id.
    pub erasure_id: Uuid,
    /// When it ran.
    pub at: DateTime<Utc>,
    /// The conversations erased.
    pub conversation_ids: Vec<Uuid>,
    /// The events whose payloads became stubs, with their original payloads' digests.
    pub events: Vec<ErasedEvent>,
    /// What the projection keeps of each of them.
    pub kept: Vec<KeptEvent>,
}

/// The `ledger.erased` event recording an erasure, filed under the conversation's `ledger` stream.
pub fn erased(conversation_id: Uuid, record: &ErasedPayload) -> NewEvent {
    NewEvent {
        event_id: event_id_for(
            Platform::Ledger,
            Some(&format!("erased:{}:{conversation_id}", record.erasure_id)),
        ),
        stream: StreamKey::new(Platform::Ledger, conversation_id.to_string()),
        kind: ERASED.to_string(),
        occurred_at: record.at,
        platform_at: None,
        received_at: record.at,
        payload: serde_json::to_string(record).unwrap_or_else(|_| "{}".into()),
        headers: BTreeMap::new(),
        links: Vec::new(),
    }
}

/// The facts of one stored `ledger.*` or `api.*` event.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    let text = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_string);
    let fact = match kind {
        QUEUE_ACCEPTED => match serde_json::from_value::<QueueAccepted>(payload.clone()) {
            Ok(q) => Some(Fact::Queued {
                backend: q.backend,
                queue: q.queue,
            }),
            Err(_) => None,
        },
        QUEUE_FAILED => Some(Fact::HandoffFailed {
            reason: text("reason").unwrap_or_else(|| "hand-over failed".into()),
        }),
        COMMAND_RESULT => match serde_json::from_value::<CommandRecord>(payload.clone()) {
            Ok(r) if r.outcome.as_deref() != Some("ok") => Some(Fact::Notice {
                text: format!(
                    "{} {}: {}",
                    r.action,
                    r.outcome.unwrap_or_default(),
                    r.detail.unwrap_or_default()
                ),
            }),
            _ => None,
        },
        COMMAND => match serde_json::from_value::<CommandRecord>(payload.clone()) {
            Ok(r) if r.action == "visitor_message" => Some(Fact::VisitorMessageRelayed {
                message_id: r.command_id,
            }),
            _ => None,
        },
        API_MESSAGE => {
            let party = payload
                .get("party")
                .cloned()
                .and_then(|p| serde_json::from_value::<Party>(p).ok())
                .unwrap_or(Party::Visitor);
            text("text").map(|t| Fact::Message(MessageFact::text(party, None, t)))
        }
        API_HANDOFF => Some(Fact::EscalationRequested { team: text("team") }),
        ERASED => serde_json::from_value::<ErasedPayload>(payload.clone())
            .ok()
            .map(|p| Fact::Erased { events: p.kept }),
        _ => None,
    };
    fact.into_iter().map(|f| (at, f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_idempotent_and_carry_their_streams() {
        let id = Uuid::new_v4();
        let at = Utc::now();
        let live = StreamKey::new(Platform::AivoLive, "room-1");
        let a = linked(id, vec![live.clone()], "queue call", at);
        let b = linked(id, vec![live.clone()], "queue call", at);
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.links, vec![live]);
        assert_eq!(a.stream, StreamKey::new(Platform::Ledger, id.to_string()));
        assert_eq!(a.kind, "ledger.linked");
    }

    #[test]
    fn api_message_reads_back_as_a_visitor_line() {
        let id = Uuid::new_v4();
        let e = api_message(id, Party::Visitor, "hello", None, Utc::now());
        let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
        let facts = facts(&e.kind, &payload, e.occurred_at);
        assert_eq!(
            facts.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
            vec![Fact::Message(MessageFact::text(Party::Visitor, None, "hello"))]
        );
    }

    #[test]
    fn queue_accepted_reads_back_as_queued() {
        let id = Uuid::new_v4();
        let q = QueueAccepted {
            backend: "aivo_live".into(),
            queue: Some("2179".into()),
            live_id: "room".into(),
            team: None,
        };
        let e = queue_accepted(id, &q, StreamKey::new(Platform::AivoLive, "room"), Utc::now());
        let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
        let facts: Vec<Fact> = facts(&e.kind, &payload, e.occurred_at)
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        assert_eq!(
            facts,
            vec![Fact::Queued {
                backend: "aivo_live".into(),
                queue: Some("2179".into())
            }]
        );
    }
}
