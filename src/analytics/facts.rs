//! Fact rows shipped to ClickHouse, built from projected conversations by pure functions. The handoff row
//! carries every metric already decided (answered within SLA, short abandon, ...) and the times at which each
//! metric's timer stops, so the ClickHouse rollups and the store-computed reports credit exactly the same
//! values to exactly the same buckets.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::SlaConfig;
use crate::model::{Conversation, Handoff};
use crate::projection::metrics;
use crate::store::{LogEntry, TranscriptLine};

/// Seconds since the epoch, 0 for "not happened" (ClickHouse `DateTime` columns use 0 as the null time).
pub fn epoch(t: Option<DateTime<Utc>>) -> u32 {
    t.map(|t| u32::try_from(t.timestamp().max(0)).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// The inverse of [`epoch`]: None for 0.
pub(crate) fn from_epoch(secs: u32) -> Option<DateTime<Utc>> {
    if secs == 0 {
        None
    } else {
        Utc.timestamp_opt(i64::from(secs), 0).single()
    }
}

/// Version of a live row of a conversation at `last_seq`: a tombstone of the same `last_seq` loses to it,
/// a live row of a later state wins over both.
pub(crate) fn live_version(last_seq: i64) -> u64 {
    (last_seq.max(0) as u64) * 2 + 1
}

/// Version of a tombstone written while shipping a conversation at `last_seq`.
pub(crate) fn tombstone_version(last_seq: i64) -> u64 {
    (last_seq.max(0) as u64) * 2
}

/// One event of the log (immutable: re-shipping inserts an identical row that merges away).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub(crate) struct EventRow {
    /// Log position.
    pub seq: u64,
    /// Event id.
    pub event_id: String,
    /// Source platform.
    pub platform: String,
    /// Stream id on that platform.
    pub external_id: String,
    /// `<platform>.<event>`.
    pub kind: String,
    /// When it happened (platform's clock).
    pub occurred_at: u32,
    /// When it was received.
    pub received_at: u32,
}

impl EventRow {
    /// The row of an event of the log (the payload is not shipped).
    pub(crate) fn from_entry(event: &LogEntry) -> EventRow {
        EventRow {
            seq: event.seq.max(0) as u64,
            event_id: event.event_id.to_string(),
            platform: event.platform.as_str().to_string(),
            external_id: event.external_id.clone(),
            kind: event.kind.clone(),
            occurred_at: epoch(Some(event.occurred_at)),
            received_at: epoch(Some(event.received_at)),
        }
    }
}

/// One conversation: every column of `conversations.csv`, plus version and tombstone flag.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ConversationRow {
    /// Conversation id.
    pub conversation_id: String,
    /// First event: leads the sort key, month = partition.
    pub started_at: u32,
    /// See [`live_version`].
    pub version: u64,
    /// 1 for a tombstone (absorbed by a merge, or its started_at moved).
    pub deleted: u8,
    /// Time of the latest event.
    pub updated_at: u32,
    /// Handoff state.
    pub state: String,
    /// Disposition of the latest handoff ("" when none).
    pub disposition: String,
    /// Platform's own outcome value.
    pub platform_disposition: String,
    /// SLA status of the latest handoff.
    pub sla_status: String,
    /// Distinct platforms of its streams.
    pub platforms: Vec<String>,
    /// `platform:external_id` of each stream.
    pub external_ids: Vec<String>,
    /// Queue of the latest handoff.
    pub queue: String,
    /// Agent names.
    pub agents: Vec<String>,
    /// Number of handoffs.
    pub handoff_count: u32,
    /// Escalation requested (latest handoff).
    pub escalated_at: u32,
    /// Queued (latest handoff).
    pub queued_at: u32,
    /// First attended (latest handoff).
    pub first_attended_at: u32,
    /// Closed (latest handoff).
    pub closed_at: u32,
    /// Latest handoff's wait.
    pub wait_seconds: Option<f64>,
    /// Latest handoff's first response time.
    pub first_response_seconds: Option<f64>,
    /// Latest handoff's handle time.
    pub handle_seconds: Option<f64>,
    /// First event -> escalation.
    pub bot_seconds: Option<f64>,
    /// Transfers in the latest handoff.
    pub transfers: u32,
    /// Visitor lines.
    pub visitor_messages: u32,
    /// Bot lines.
    pub bot_messages: u32,
    /// Agent lines.
    pub agent_messages: u32,
    /// System lines.
    pub system_messages: u32,
    /// Close reason of the latest handoff.
    pub close_reason: String,
    /// Highest log position folded in.
    pub last_seq: u64,
}

impl ConversationRow {
    /// The live row of a conversation.
    pub(crate) fn from_conversation(c: &Conversation) -> ConversationRow {
        let platforms: BTreeSet<&str> = c.streams.iter().map(|s| s.platform.as_str()).collect();
        ConversationRow {
            conversation_id: c.id.to_string(),
            started_at: epoch(Some(c.started_at)),
            version: live_version(c.last_seq),
            deleted: 0,
            updated_at: epoch(Some(c.updated_at)),
            state: c.state.as_str().to_string(),
            disposition: c.disposition.map(|d| d.as_str().to_string()).unwrap_or_default(),
            platform_disposition: c.platform_disposition.clone().unwrap_or_default(),
            sla_status: c.sla_status.as_str().to_string(),
            platforms: platforms.into_iter().map(str::to_string).collect(),
            external_ids: c
                .streams
                .iter()
                .map(|s| format!("{}:{}", s.platform, s.external_id))
                .collect(),
            queue: c.queue.clone().unwrap_or_default(),
            agents: c.agents.iter().map(|a| a.name.clone()).collect(),
            handoff_count: c.handoffs.len() as u32,
            escalated_at: epoch(c.escalated_at),
            queued_at: epoch(c.queued_at),
            first_attended_at: epoch(c.first_attended_at),
            closed_at: epoch(c.closed_at),
            wait_seconds: c.wait_seconds,
            first_response_seconds: c.first_response_seconds,
            handle_seconds: c.handle_seconds,
            bot_seconds: c.bot_seconds,
            transfers: c.transfers,
            visitor_messages: c.message_counts.visitor,
            bot_messages: c.message_counts.bot,
            agent_messages: c.message_counts.agent,
            system_messages: c.message_counts.system,
            close_reason: c.close_reason.clone().unwrap_or_default(),
            last_seq: c.last_seq.max(0) as u64,
        }
    }

    /// A tombstone for conversation `id` under the key of `started_at`.
    pub(crate) fn tombstone(id: &str, started_at: u32, version: u64) -> ConversationRow {
        ConversationRow {
            conversation_id: id.to_string(),
            started_at,
            version,
            deleted: 1,
            updated_at: 0,
            state: String::new(),
            disposition: String::new(),
            platform_disposition: String::new(),
            sla_status: String::new(),
            platforms: Vec::new(),
            external_ids: Vec::new(),
            queue: String::new(),
            agents: Vec::new(),
            handoff_count: 0,
            escalated_at: 0,
            queued_at: 0,
            first_attended_at: 0,
            closed_at: 0,
            wait_seconds: None,
            first_response_seconds: None,
            handle_seconds: None,
            bot_seconds: None,
            transfers: 0,
            visitor_messages: 0,
            bot_messages: 0,
            agent_messages: 0,
            system_messages: 0,
            close_reason: String::new(),
            last_seq: 0,
        }
    }
}

/// Where a metric's timer stops: each handoff credits up to five instants (METRICS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Credit {
    /// Queued: offered.
    Offered = 1,
    /// First attended: answered, answered within SLA, wait.
    Answered = 2,
    /// Closed: abandoned, short abandoned, missed, handle time.
    Closed = 3,
    /// First agent message: first response time.
    FirstResponse = 4,
    /// Outcome known: disposition.
    Disposition = 5,
}

/// One handoff with every metric decided and the instant each timer stops.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub(crate) struct HandoffRow {
    /// Conversation id.
    pub conversation_id: String,
    /// Position of the handoff in the conversation (0 = oldest).
    pub idx: u32,
    /// Conversation's first event: leads the sort key, month = partition.
    pub started_at: u32,
    /// See [`live_version`].
    pub version: u64,
    /// 1 for a tombstone.
    pub deleted: u8,
    /// Live backend (`aivo_live`, `bright_pattern`, `vcc`).
    pub platform: String,
    /// Queue ("" when unknown).
    pub queue: String,
    /// The agent who answered it (the first one; "" when unanswered). One agent per handoff, so that rollups by
    /// agent add up to the rollups by queue.
    pub agent: String,
    /// Escalation requested.
    pub requested_at: u32,
    /// Queued: offered.
    pub offered_at: u32,
    /// First attended: answered.
    pub answered_at: u32,
    /// Closed.
    pub closed_at: u32,
    /// First agent message.
    pub first_response_at: u32,
    /// When its disposition is credited: closed, else the latest instant known.
    pub disposition_at: u32,
    /// An agent attended.
    pub answered: u8,
    /// Answered within the queue's target.
    pub answered_within_sla: u8,
    /// The visitor left while waiting.
    pub abandoned: u8,
    /// Abandoned quicker than `sla.short_abandon_seconds`.
    pub short_abandoned: u8,
    /// The platform closed it while waiting.
    pub missed: u8,
    /// `wait_seconds` is known.
    pub has_wait: u8,
    /// Queued -> first attended.
    pub wait_seconds: f64,
    /// `first_response_seconds` is known.
    pub has_first_response: u8,
    /// First attended -> first agent message.
    pub first_response_seconds: f64,
    /// `handle_seconds` is known (closed after being attended).
    pub has_handle: u8,
    /// First attended -> closed.
    pub handle_seconds: f64,
    /// Answer target in force for its queue when shipped.
    pub sla_target_seconds: u32,
    /// SLA status.
    pub sla_status: String,
    /// Disposition ("" while open).
    pub disposition: String,
    /// Platform's own outcome value.
    pub platform_disposition: String,
    /// Close reason.
    pub close_reason: String,
    /// Transfers.
    pub transfers: u32,
    /// Agents who handled it.
    pub agent_count: u32,
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

impl HandoffRow {
    /// The metrics of handoff number `idx` of `conversation` (pure; `sla` gives targets and short abandon).
    pub(crate) fn from_handoff(conversation: &Conversation, idx: usize, h: &Handoff, sla: &SlaConfig) -> HandoffRow {
        // Every metric is decided by its one definition in `projection::metrics`.
        let target = sla.target_for(h.queue.as_deref());
        let answered = metrics::is_answered(h);
        let wait = metrics::wait_seconds(h);
        let within = metrics::is_answered_within_sla(h, sla);
        let abandoned = metrics::is_abandoned(h);
        let missed = metrics::is_missed(h);
        let short_abandoned = metrics::is_short_abandon(h, sla);
        let first_response = metrics::first_response_seconds(h);
        let first_response_at = metrics::first_response_at(h);
        let handle = metrics::handle_seconds(h);
        let disposition_at = h.disposition.map(|_| {
            h.closed_at
                .or(h.attended_at)
                .or(h.queued_at)
                .or(h.requested_at)
                .unwrap_or(conversation.updated_at)
        });
        HandoffRow {
            conversation_id: conversation.id.to_string(),
            idx: idx as u32,
            started_at: epoch(Some(conversation.started_at)),
            version: live_version(conversation.last_seq),
            deleted: 0,
            platform: h.backend.clone(),
            queue: h.queue.clone().unwrap_or_default(),
            agent: if answered {
                h.agents.first().map(|a| a.name.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            requested_at: epoch(h.requested_at),
            offered_at: epoch(h.queued_at),
            answered_at: epoch(h.attended_at),
            closed_at: epoch(h.closed_at),
            first_response_at: epoch(first_response_at),
            disposition_at: epoch(disposition_at),
            answered: flag(answered),
            answered_within_sla: flag(within),
            abandoned: flag(abandoned),
            short_abandoned: flag(short_abandoned),
            missed: flag(missed),
            has_wait: flag(answered && wait.is_some()),
            wait_seconds: if answered { wait.unwrap_or(0.0) } else { 0.0 },
            has_first_response: flag(first_response.is_some()),
            first_response_seconds: first_response.unwrap_or(0.0),
            has_handle: flag(handle.is_some()),
            handle_seconds: handle.unwrap_or(0.0),
            sla_target_seconds: u32::try_from(target).unwrap_or(u32::MAX),
            sla_status: h.sla_status.as_str().to_string(),
            disposition: h.disposition.map(|d| d.as_str().to_string()).unwrap_or_default(),
            platform_disposition: h.platform_disposition.clone().unwrap_or_default(),
            close_reason: h.close_reason.clone().unwrap_or_default(),
            transfers: h.transfers,
            agent_count: h.agents.len() as u32,
        }
    }

    /// Every handoff of a conversation.
    pub(crate) fn from_conversation(conversation: &Conversation, sla: &SlaConfig) -> Vec<HandoffRow> {
        conversation
            .handoffs
            .iter()
            .enumerate()
            .map(|(i, h)| HandoffRow::from_handoff(conversation, i, h, sla))
            .collect()
    }

    /// A tombstone for handoff `idx` of conversation `id` under the key of `started_at`.
    pub(crate) fn tombstone(id: &str, idx: u32, started_at: u32, version: u64) -> HandoffRow {
        HandoffRow {
            conversation_id: id.to_string(),
            idx,
            started_at,
            version,
            deleted: 1,
            platform: String::new(),
            queue: String::new(),
            agent: String::new(),
            requested_at: 0,
            offered_at: 0,
            answered_at: 0,
            closed_at: 0,
            first_response_at: 0,
            disposition_at: 0,
            answered: 0,
            answered_within_sla: 0,
            abandoned: 0,
            short_abandoned: 0,
            missed: 0,
            has_wait: 0,
            wait_seconds: 0.0,
            has_first_response: 0,
            first_response_seconds: 0.0,
            has_handle: 0,
            handle_seconds: 0.0,
            sla_target_seconds: 0,
            sla_status: String::new(),
            disposition: String::new(),
            platform_disposition: String::new(),
            close_reason: String::new(),
            transfers: 0,
            agent_count: 0,
        }
    }

    /// The instants this handoff credits, with what each one credits (only those that happened).
    pub fn credits(&self) -> impl Iterator<Item = (Credit, u32)> {
        [
            (Credit::Offered, self.offered_at),
            (Credit::Answered, self.answered_at),
            (Credit::Closed, self.closed_at),
            (Credit::FirstResponse, self.first_response_at),
            (Credit::Disposition, self.disposition_at),
        ]
        .into_iter()
        .filter(|(_, at)| *at > 0)
    }

    /// Every hour (epoch seconds of its start) in which this handoff credits something.
    pub(crate) fn credited_hours(&self) -> impl Iterator<Item = u32> {
        self.credits().map(|(_, at)| at - at % 3600)
    }
}

/// Metadata of one transcript line (never its text).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub(crate) struct MessageRow {
    /// Conversation id.
    pub conversation_id: String,
    /// Log position of the event it came from.
    pub seq: u64,
    /// Position among the lines of the same event (a VCC body carries many).
    pub ordinal: u32,
    /// Conversation's first event: leads the sort key, month = partition.
    pub started_at: u32,
    /// See [`live_version`].
    pub version: u64,
    /// 1 for a tombstone.
    pub deleted: u8,
    /// When it was sent.
    pub at: u32,
    /// visitor, bot, agent, system.
    pub party: String,
    /// text, buttons, ...
    pub kind: String,
    /// Platform it came from.
    pub platform: String,
    /// Characters of text.
    pub length: u32,
}

impl MessageRow {
    /// Rows of a conversation's transcript lines (ordinals numbered per `seq` in transcript order).
    pub(crate) fn from_lines(conversation: &Conversation, messages: &[TranscriptLine]) -> Vec<MessageRow> {
        let mut rows: Vec<MessageRow> = Vec::with_capacity(messages.len());
        let mut ordinals: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
        for m in messages {
            let ordinal = ordinals.entry(m.seq).or_insert(0);
            rows.push(MessageRow {
                conversation_id: conversation.id.to_string(),
                seq: m.seq.max(0) as u64,
                ordinal: *ordinal,
                started_at: epoch(Some(conversation.started_at)),
                version: live_version(conversation.last_seq),
                deleted: 0,
                at: epoch(Some(m.at)),
                party: m.party.as_str().to_string(),
                kind: serde_json::to_value(m.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                platform: m.platform.as_str().to_string(),
                length: m.text_chars,
            });
            *ordinal += 1;
        }
        rows
    }

    /// A tombstone for a line of conversation `id`.
    pub(crate) fn tombstone(id: &str, seq: u64, ordinal: u32, started_at: u32, version: u64) -> MessageRow {
        MessageRow {
            conversation_id: id.to_string(),
            seq,
            ordinal,
            started_at,
            version,
            deleted: 1,
            at: 0,
            party: String::new(),
            kind: String::new(),
            platform: String::new(),
            length: 0,
        }
    }
}

/// Ids of conversations that may have been absorbed into `conversation` by a merge: every conversation id a
/// stream of it would have started (UUIDv5 of the stream key), other than its own.
pub(crate) fn possibly_absorbed(conversation: &Conversation) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = conversation
        .streams
        .iter()
        .map(|s| s.conversation_id())
        .filter(|id| *id != conversation.id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use chrono::Duration;

    use super::*;
    use crate::model::{
        Agent, Disposition, HandoffState, MessageCounts, MessageKind, Party, Platform, SlaStatus, StreamKey,
    };

    pub(crate) fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    pub(crate) fn handoff(queue: &str, queued: &str) -> Handoff {
        Handoff {
            backend: "aivo_live".into(),
            queue: Some(queue.into()),
            requested_at: Some(t(queued) - Duration::seconds(2)),
            queued_at: Some(t(queued)),
            attended_at: None,
            closed_at: None,
            agents: Vec::new(),
            transfers: 0,
            wait_seconds: None,
            first_response_seconds: None,
            handle_seconds: None,
            sla_status: SlaStatus::Pending,
            sla_deadline: None,
            disposition: None,
            platform_disposition: None,
            close_reason: None,
            failure: None,
        }
    }

    pub(crate) fn conversation(external: &str, handoffs: Vec<Handoff>, last_seq: i64) -> Conversation {
        let stream = StreamKey::new(Platform::Ultimate, external);
        let started = handoffs
            .first()
            .and_then(|h| h.requested_at)
            .map(|t| t - Duration::seconds(30))
            .unwrap_or_else(|| t("2024-05-01T00:00:00Z"));
        Conversation {
            id: stream.conversation_id(),
            state: HandoffState::Queued,
            disposition: handoffs.last().and_then(|h| h.disposition),
            platform_disposition: None,
            sla_status: handoffs
                .last()
                .map(|h| h.sla_status)
                .unwrap_or(SlaStatus::NotApplicable),
            sla_deadline: None,
            streams: vec![stream],
            queue: handoffs.last().and_then(|h| h.queue.clone()),
            agents: handoffs.iter().flat_map(|h| h.agents.clone()).collect(),
            started_at: started,
            escalated_at: None,
            queued_at: None,
            first_attended_at: None,
            closed_at: None,
            wait_seconds: None,
            first_response_seconds: None,
            handle_seconds: None,
            bot_seconds: Some(30.0),
            transfers: 0,
            message_counts: MessageCounts::default(),
            close_reason: None,
            attributes: BTreeMap::new(),
            last_seq,
            updated_at: started + Duration::hours(1),
            handoffs,
        }
    }

    pub(crate) fn answered(mut h: Handoff, wait: i64, first_response: Option<f64>, handle: Option<i64>) -> Handoff {
        let queued = h.queued_at.unwrap();
        h.attended_at = Some(queued + Duration::seconds(wait));
        h.wait_seconds = Some(wait as f64);
        h.agents = vec![Agent {
            name: "Tomas".into(),
            nickname: None,
            group: h.queue.clone(),
        }];
        h.first_response_seconds = first_response;
        if let Some(handle) = handle {
            h.closed_at = Some(queued + Duration::seconds(wait + handle));
            h.handle_seconds = Some(handle as f64);
            h.disposition = Some(Disposition::Completed);
        }
        h.sla_status = if wait <= 60 {
            SlaStatus::Met
        } else {
            SlaStatus::Breached
        };
        h
    }

    pub(crate) fn ended(mut h: Handoff, after: i64, disposition: Disposition) -> Handoff {
        h.closed_at = Some(h.queued_at.unwrap() + Duration::seconds(after));
        h.disposition = Some(disposition);
        h
    }

    #[test]
    fn answered_handoff_credits_each_timer_where_it_stops() {
        let h = answered(handoff("2179", "2024-05-01T10:59:30Z"), 45, Some(20.0), Some(600));
        let c = conversation("a", vec![h], 7);
        let rows = HandoffRow::from_conversation(&c, &SlaConfig::default());
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.version, 15);
        assert_eq!((r.answered, r.answered_within_sla, r.abandoned, r.missed), (1, 1, 0, 0));
        assert_eq!(r.wait_seconds, 45.0);
        assert_eq!(r.agent, "Tomas");
        assert_eq!(from_epoch(r.offered_at), Some(t("2024-05-01T10:59:30Z")));
        assert_eq!(from_epoch(r.answered_at), Some(t("2024-05-01T11:00:15Z")));
        assert_eq!(from_epoch(r.first_response_at), Some(t("2024-05-01T11:00:35Z")));
        assert_eq!(from_epoch(r.closed_at), Some(t("2024-05-01T11:10:15Z")));
        assert_eq!(r.disposition_at, r.closed_at);
        let hours: Vec<u32> = r.credited_hours().collect();
        assert_eq!(
            hours,
            vec![
                epoch(Some(t("2024-05-01T10:00:00Z"))),
                epoch(Some(t("2024-05-01T11:00:00Z"))),
                epoch(Some(t("2024-05-01T11:00:00Z"))),
                epoch(Some(t("2024-05-01T11:00:00Z"))),
                epoch(Some(t("2024-05-01T11:00:00Z")))
            ]
        );
    }

    #[test]
    fn queue_targets_and_short_abandons_follow_the_sla_config() {
        let mut sla = SlaConfig::default();
        sla.queues.insert("fast".into(), 30);
        let mut slow = answered(handoff("fast", "2024-05-01T10:00:00Z"), 45, None, None);
        slow.sla_status = SlaStatus::Pending; // not decided by the projection: the target decides
        let short = ended(handoff("fast", "2024-05-01T10:00:00Z"), 19, Disposition::Abandoned);
        let long = ended(handoff("fast", "2024-05-01T10:00:00Z"), 20, Disposition::Abandoned);
        let missed = ended(handoff("fast", "2024-05-01T10:00:00Z"), 300, Disposition::Missed);
        let c = conversation("b", vec![slow, short, long, missed], 3);
        let rows = HandoffRow::from_conversation(&c, &sla);
        assert_eq!(rows[0].answered_within_sla, 0);
        assert_eq!(rows[0].sla_target_seconds, 30);
        assert_eq!((rows[1].abandoned, rows[1].short_abandoned), (1, 1));
        assert_eq!((rows[2].abandoned, rows[2].short_abandoned), (1, 0));
        assert_eq!((rows[3].missed, rows[3].abandoned), (1, 0));
        assert_eq!(rows[3].has_wait, 0);
        assert_eq!(rows.iter().map(|r| r.idx).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn tombstones_lose_to_the_live_row_of_the_same_state_and_beat_older_ones() {
        assert!(live_version(10) > tombstone_version(10));
        assert!(tombstone_version(11) > live_version(10));
        let row = HandoffRow::tombstone("x", 2, 5, tombstone_version(4));
        assert_eq!((row.deleted, row.idx, row.credits().count()), (1, 2, 0));
    }

    #[test]
    fn message_rows_carry_no_text_and_number_lines_of_one_event() {
        let c = conversation("m", vec![], 9);
        let line = |seq: i64, text_chars: u32| TranscriptLine {
            seq,
            at: t("2024-05-01T10:00:00Z"),
            party: Party::Agent,
            kind: MessageKind::Text,
            platform: Platform::Vcc,
            text_chars,
        };
        let rows = MessageRow::from_lines(&c, &[line(4, 5), line(4, 3), line(5, 1)]);
        assert_eq!(
            rows.iter().map(|r| (r.seq, r.ordinal, r.length)).collect::<Vec<_>>(),
            vec![(4, 0, 5), (4, 1, 3), (5, 0, 1)]
        );
        assert_eq!(rows[0].kind, "text");
        assert_eq!(rows[0].party, "agent");
        assert_eq!(rows[0].platform, "vcc");
    }

    #[test]
    fn streams_name_the_conversations_a_merge_may_have_absorbed() {
        let mut c = conversation("bot", vec![], 1);
        let room = StreamKey::new(Platform::AivoLive, "room-1");
        c.streams.push(room.clone());
        assert_eq!(possibly_absorbed(&c), vec![room.conversation_id()]);
    }
}
