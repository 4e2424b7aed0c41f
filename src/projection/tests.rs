//! Fold tests with hand-built facts: every expectation is written out field by field.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use super::metrics::is_short_abandon;
use super::*;
use crate::model::{Agent, Disposition, HandoffState, MessageKind, NewEvent, Party, SlaStatus};
use crate::sources::ledger;
use crate::sources::{ClosedBy, MessageFact};

const AIVO: Platform = Platform::AivoLive;
const BP: Platform = Platform::BrightPattern;
const BOT: Platform = Platform::Ultimate;
const LEDGER: Platform = Platform::Ledger;
const VCC: Platform = Platform::Vcc;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
}

fn t_ms(millis: i64) -> DateTime<Utc> {
    t(0) + Duration::milliseconds(millis)
}

fn conv_id() -> Uuid {
    Uuid::from_u128(42)
}

fn streams() -> Vec<StreamKey> {
    vec![
        StreamKey::new(AIVO, "room-1"),
        StreamKey::new(BOT, "bot-conv-1"),
        StreamKey::new(LEDGER, conv_id().to_string()),
    ]
}

/// A log of hand-built facts, one event per fact unless told otherwise.
#[derive(Default, Clone)]
struct Log {
    inputs: Vec<Input>,
}

impl Log {
    fn new() -> Self {
        Self::default()
    }

    fn at_ms(&mut self, millis: i64, platform: Platform, fact: Fact) -> &mut Self {
        let seq = self.inputs.len() as i64 + 1;
        self.inputs.push(Input {
            at: t_ms(millis),
            seq,
            index: 0,
            platform,
            event_id: Uuid::from_u128(seq as u128),
            fact,
        });
        self
    }

    fn at(&mut self, secs: i64, platform: Platform, fact: Fact) -> &mut Self {
        self.at_ms(secs * 1000, platform, fact)
    }

    fn fold_with(&self, sla: &SlaConfig) -> Projection {
        fold(conv_id(), &streams(), None, self.inputs.clone(), sla).unwrap()
    }

    fn fold(&self) -> Projection {
        self.fold_with(&SlaConfig::default())
    }
}

fn agent(name: &str, group: Option<&str>) -> Agent {
    Agent {
        name: name.into(),
        nickname: Some(format!("{name} NICK")),
        group: group.map(str::to_string),
    }
}

fn attended(name: &str, group: Option<&str>) -> Fact {
    Fact::Attended {
        agent: agent(name, group),
        party_id: None,
    }
}

fn say(party: Party, author: Option<&str>, text: &str) -> Fact {
    Fact::Message(MessageFact::text(party, author.map(str::to_string), text))
}

fn trigger(text: &str) -> Fact {
    let mut m = MessageFact::text(Party::Agent, None, text);
    m.automatic = true;
    Fact::Message(m)
}

fn party_line(party: Party, party_id: &str, text: &str) -> Fact {
    let mut m = MessageFact::text(party, None, text);
    m.party_id = Some(party_id.into());
    Fact::Message(m)
}

fn escalate() -> Fact {
    Fact::EscalationRequested {
        team: Some("sales".into()),
    }
}

fn queued(backend: &str, queue: Option<&str>) -> Fact {
    Fact::Queued {
        backend: backend.into(),
        queue: queue.map(str::to_string),
    }
}

fn closed(by: ClosedBy, reason: &str) -> Fact {
    Fact::Closed {
        by,
        reason: Some(reason.into()),
    }
}

fn outcome(disposition: Option<&str>, sla: Option<&str>) -> Fact {
    Fact::PlatformOutcome {
        disposition: disposition.map(str::to_string),
        sla_status: sla.map(str::to_string),
    }
}

fn sla_with(queues: &[(&str, u64)]) -> SlaConfig {
    SlaConfig {
        queues: queues.iter().map(|(q, s)| (q.to_string(), *s)).collect(),
        ..SlaConfig::default()
    }
}

/// Bot talk, escalation, queue, attend, trigger, visitor and agent lines, transfer, second agent, agent close.
fn full_handoff() -> Log {
    let mut log = Log::new();
    log.at(0, BOT, say(Party::Bot, Some("bot-1"), "Hi, how can I help?"))
        .at(5, BOT, say(Party::Visitor, Some("Visitor"), "I need a human"))
        .at(10, BOT, escalate())
        .at(12, LEDGER, queued("aivo_live", Some("2179")))
        .at_ms(42_500, AIVO, attended("Tomas", Some("2179")))
        .at(43, AIVO, trigger("An agent will be with you shortly"))
        .at(45, BOT, say(Party::Visitor, Some("Visitor"), "Hello?"))
        .at(50, AIVO, say(Party::Agent, Some("Tomas"), "Hi, Tomas here"))
        .at(
            60,
            AIVO,
            Fact::Transferred {
                from_queue: Some("2179".into()),
                to_queue: Some("3000".into()),
            },
        )
        .at(70, AIVO, attended("Ana", Some("3000")))
        .at(75, AIVO, say(Party::Agent, Some("Ana"), "Ana here, from billing"))
        .at(100, AIVO, closed(ClosedBy::Agent, "agent_closed"));
    log
}

#[test]
fn full_handoff_is_projected_field_by_field() {
    let p = full_handoff().fold();
    let c = &p.conversation;
    assert_eq!(c.id, conv_id());
    assert_eq!(c.state, HandoffState::Closed);
    assert_eq!(c.disposition, Some(Disposition::Completed));
    assert_eq!(c.platform_disposition.as_deref(), Some("agent_closed"));
    assert_eq!(c.close_reason.as_deref(), Some("agent_closed"));
    assert_eq!(c.sla_status, SlaStatus::Met);
    assert_eq!(c.queue.as_deref(), Some("3000"));
    assert_eq!(c.agents, vec![agent("Tomas", Some("2179")), agent("Ana", Some("3000"))]);
    assert_eq!(c.started_at, t(0));
    assert_eq!(c.updated_at, t(100));
    assert_eq!(c.last_seq, 12);
    assert_eq!(c.escalated_at, Some(t(10)));
    assert_eq!(c.queued_at, Some(t(12)));
    assert_eq!(c.first_attended_at, Some(t_ms(42_500)));
    assert_eq!(c.closed_at, Some(t(100)));
    assert_eq!(c.wait_seconds, Some(30.5));
    // The trigger at 43 is automatic: the first response is Tomas's line at 50.
    assert_eq!(c.first_response_seconds, Some(7.5));
    assert_eq!(c.handle_seconds, Some(57.5));
    assert_eq!(c.bot_seconds, Some(10.0));
    assert_eq!(c.transfers, 1);
    assert_eq!(c.message_counts.visitor, 2);
    assert_eq!(c.message_counts.bot, 1);
    assert_eq!(c.message_counts.agent, 3);
    assert_eq!(c.message_counts.system, 0);
    assert!(c.attributes.is_empty());
    let mut sorted = streams();
    sorted.sort();
    assert_eq!(c.streams, sorted);
    assert_eq!(c.streams[0].platform, BOT);

    assert_eq!(c.handoffs.len(), 1);
    let h = &c.handoffs[0];
    assert_eq!(h.backend, "aivo_live");
    assert_eq!(h.queue.as_deref(), Some("3000"));
    assert_eq!(h.requested_at, Some(t(10)));
    assert_eq!(h.queued_at, Some(t(12)));
    assert_eq!(h.attended_at, Some(t_ms(42_500)));
    assert_eq!(h.closed_at, Some(t(100)));
    assert_eq!(h.agents, c.agents);
    assert_eq!(h.transfers, 1);
    assert_eq!(h.wait_seconds, Some(30.5));
    assert_eq!(h.first_response_seconds, Some(7.5));
    assert_eq!(h.handle_seconds, Some(57.5));
    assert_eq!(h.sla_status, SlaStatus::Met);
    assert_eq!(h.disposition, Some(Disposition::Completed));
    assert_eq!(h.failure, None);

    let lines: Vec<(i64, Party, Option<&str>, &str)> = p
        .messages
        .iter()
        .map(|m| (m.seq, m.party, m.author.as_deref(), m.text.as_deref().unwrap()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (1, Party::Bot, Some("bot-1"), "Hi, how can I help?"),
            (2, Party::Visitor, Some("Visitor"), "I need a human"),
            (6, Party::Agent, None, "An agent will be with you shortly"),
            (7, Party::Visitor, Some("Visitor"), "Hello?"),
            (8, Party::Agent, Some("Tomas"), "Hi, Tomas here"),
            (11, Party::Agent, Some("Ana"), "Ana here, from billing"),
        ]
    );
    let first = &p.messages[0];
    assert_eq!(first.at, t(0));
    assert_eq!(first.platform, BOT);
    assert_eq!(first.event_id, Uuid::from_u128(1));
    assert_eq!(first.kind, MessageKind::Text);
}

#[test]
fn transferred_handoff_waits_again_but_keeps_its_first_sla_result() {
    let mut log = full_handoff();
    log.inputs.truncate(9);
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Queued);
    assert_eq!(c.transfers, 1);
    assert_eq!(c.queue.as_deref(), Some("3000"));
    assert_eq!(c.sla_status, SlaStatus::Met);
    assert_eq!(c.closed_at, None);
    assert_eq!(c.handle_seconds, None);
    assert_eq!(c.disposition, None);
    assert_eq!(c.agents, vec![agent("Tomas", Some("2179"))]);
}

#[test]
fn sla_target_is_that_of_the_queue_where_the_wait_ended() {
    // First attended in 2179: its 20 s target breaks at 30.5 s, whatever queue 3000 promises.
    let c = full_handoff().fold_with(&sla_with(&[("2179", 20)])).conversation;
    assert_eq!(c.sla_status, SlaStatus::Breached);
    let c = full_handoff().fold_with(&sla_with(&[("3000", 20)])).conversation;
    assert_eq!(c.sla_status, SlaStatus::Met);

    // Transferred before anyone answered: the target of the queue it was answered from applies.
    let mut log = Log::new();
    log.at(0, LEDGER, queued("aivo_live", Some("slow")))
        .at(
            5,
            AIVO,
            Fact::Transferred {
                from_queue: Some("slow".into()),
                to_queue: Some("fast".into()),
            },
        )
        .at(15, AIVO, attended("Tomas", None));
    let sla = sla_with(&[("fast", 10)]);
    let c = log.fold_with(&sla).conversation;
    assert_eq!(c.wait_seconds, Some(15.0));
    assert_eq!(c.sla_status, SlaStatus::Breached);
    assert_eq!(c.transfers, 1);
    assert_eq!(c.state, HandoffState::Attended);
    // The same wait in a queue without an override meets the 60 s default.
    let c = log.fold().conversation;
    assert_eq!(c.sla_status, SlaStatus::Met);
}

#[test]
fn a_queue_learnt_after_the_attend_fills_in_and_sets_the_target() {
    let mut log = Log::new();
    log.at(0, BOT, escalate()).at(30, AIVO, attended("Tomas", None)).at(
        31,
        LEDGER,
        queued("bright_pattern", Some("2179")),
    );
    let c = log.fold_with(&sla_with(&[("2179", 20)])).conversation;
    let h = &c.handoffs[0];
    assert_eq!(h.queued_at, Some(t(0)));
    // The attend came from Aivo: the backend is known from it, and not overwritten later.
    assert_eq!(h.backend, "aivo_live");
    assert_eq!(h.queue.as_deref(), Some("2179"));
    assert_eq!(h.wait_seconds, Some(30.0));
    assert_eq!(h.sla_status, SlaStatus::Breached);
}

#[test]
fn shuffled_inputs_give_the_identical_projection() {
    let log = full_handoff();
    let expected = log.fold();
    let mut reversed = log.clone();
    reversed.inputs.reverse();
    assert_eq!(reversed.fold(), expected);
    for shift in 1..log.inputs.len() {
        let mut rotated = log.clone();
        rotated.inputs.rotate_left(shift);
        assert_eq!(rotated.fold(), expected, "rotated by {shift}");
    }
    let mut interleaved = log.clone();
    let (even, odd): (Vec<_>, Vec<_>) = log.inputs.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    interleaved.inputs = odd.into_iter().chain(even).map(|(_, x)| x).collect();
    assert_eq!(interleaved.fold(), expected);
}

#[test]
fn facts_of_one_event_keep_their_order_within_the_event() {
    // A VCC body: one event whose facts share a time are ordered by their index.
    let facts = [
        queued("vcc", Some("support")),
        attended("Tomas", None),
        say(Party::Agent, Some("Tomas"), "hello"),
        closed(ClosedBy::Agent, "completed"),
    ];
    let inputs: Vec<Input> = facts
        .into_iter()
        .enumerate()
        .map(|(index, fact)| Input {
            at: t(50),
            seq: 7,
            index,
            platform: VCC,
            event_id: Uuid::from_u128(7),
            fact,
        })
        .rev()
        .collect();
    let p = fold(conv_id(), &streams(), None, inputs, &SlaConfig::default()).unwrap();
    let c = p.conversation;
    assert_eq!(c.state, HandoffState::Closed);
    assert_eq!(c.disposition, Some(Disposition::Completed));
    assert_eq!(c.wait_seconds, Some(0.0));
    assert_eq!(c.first_response_seconds, Some(0.0));
    assert_eq!(c.handle_seconds, Some(0.0));
    assert_eq!(c.handoffs.len(), 1);
    assert_eq!(c.handoffs[0].backend, "vcc");
    assert_eq!(p.messages.len(), 1);
}

fn stored(seq: i64, e: NewEvent) -> StoredEvent {
    StoredEvent {
        conversation_id: Some(conv_id()),
        ..e.stored(seq).unwrap()
    }
}

#[test]
fn project_decodes_stored_events_in_any_order() {
    let id = conv_id();
    let accepted = ledger::QueueAccepted {
        backend: "aivo_live".into(),
        queue: Some("2179".into()),
        live_id: "room-1".into(),
        team: Some("sales".into()),
    };
    let events = vec![
        stored(1, ledger::api_handoff(id, Some("sales"), None, t(10))),
        stored(
            2,
            ledger::queue_accepted(id, &accepted, StreamKey::new(AIVO, "room-1"), t(12)),
        ),
        stored(3, ledger::api_message(id, Party::Visitor, "still there?", None, t(15))),
        stored(
            4,
            ledger::linked(id, vec![StreamKey::new(AIVO, "room-1")], "queue call", t(20)),
        ),
    ];
    let sla = SlaConfig::default();
    let p = project(id, &streams(), &events, &sla).unwrap();
    let c = &p.conversation;
    assert_eq!(c.state, HandoffState::Queued);
    assert_eq!(c.sla_status, SlaStatus::Pending);
    assert_eq!(c.escalated_at, Some(t(10)));
    assert_eq!(c.queued_at, Some(t(12)));
    assert_eq!(c.queue.as_deref(), Some("2179"));
    assert_eq!(c.handoffs[0].backend, "aivo_live");
    assert_eq!(c.started_at, t(10));
    // The link gives no fact but still counts as the latest event.
    assert_eq!(c.updated_at, t(20));
    assert_eq!(c.last_seq, 4);
    assert_eq!(c.bot_seconds, Some(0.0));
    assert_eq!(c.message_counts.visitor, 1);
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.messages[0].platform, Platform::Api);
    assert_eq!(p.messages[0].event_id, events[2].event_id);
    assert_eq!(p.messages[0].seq, 3);

    let mut shuffled = events.clone();
    shuffled.reverse();
    shuffled.swap(0, 2);
    assert_eq!(project(id, &streams(), &shuffled, &sla), Some(p));
    assert_eq!(project(id, &streams(), &[], &sla), None);
}

fn waiting_then(left_after: i64, fact: Fact) -> Log {
    let mut log = Log::new();
    log.at(0, BOT, escalate())
        .at(1, LEDGER, queued("aivo_live", Some("2179")))
        .at(1 + left_after, BOT, fact);
    log
}

#[test]
fn short_abandon_is_not_applicable_and_counted_as_short() {
    let sla = SlaConfig::default();
    let c = waiting_then(10, Fact::VisitorLeft).fold().conversation;
    assert_eq!(c.state, HandoffState::Closed);
    assert_eq!(c.disposition, Some(Disposition::Abandoned));
    assert_eq!(c.close_reason.as_deref(), Some("visitor_left"));
    assert_eq!(c.platform_disposition, None);
    assert_eq!(c.closed_at, Some(t(11)));
    assert_eq!(c.wait_seconds, None);
    assert_eq!(c.handle_seconds, None);
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
    assert!(is_short_abandon(&c.handoffs[0], &sla));
}

#[test]
fn long_abandon_breaches_and_one_under_target_does_not() {
    let sla = SlaConfig::default();
    let c = waiting_then(100, Fact::VisitorLeft).fold().conversation;
    assert_eq!(c.disposition, Some(Disposition::Abandoned));
    assert_eq!(c.sla_status, SlaStatus::Breached);
    assert!(!is_short_abandon(&c.handoffs[0], &sla));

    let c = waiting_then(40, Fact::VisitorLeft).fold().conversation;
    assert_eq!(c.disposition, Some(Disposition::Abandoned));
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
    assert!(!is_short_abandon(&c.handoffs[0], &sla));

    // The visitor closing the live chat while waiting is an abandon too.
    let c = waiting_then(100, closed(ClosedBy::Visitor, "client ended"))
        .fold()
        .conversation;
    assert_eq!(c.disposition, Some(Disposition::Abandoned));
    assert_eq!(c.sla_status, SlaStatus::Breached);
    assert_eq!(c.close_reason.as_deref(), Some("client ended"));
}

#[test]
fn visitor_leaving_an_attended_chat_completes_it() {
    let mut log = Log::new();
    log.at(0, LEDGER, queued("aivo_live", None))
        .at(20, AIVO, attended("Tomas", None))
        .at(80, BOT, Fact::VisitorLeft)
        .at(90, BOT, Fact::VisitorLeft);
    let c = log.fold().conversation;
    assert_eq!(c.disposition, Some(Disposition::Completed));
    assert_eq!(c.close_reason.as_deref(), Some("visitor_left"));
    assert_eq!(c.closed_at, Some(t(80)));
    assert_eq!(c.handle_seconds, Some(60.0));
    assert_eq!(c.sla_status, SlaStatus::Met);
}

#[test]
fn platform_close_while_waiting_is_missed() {
    let c = waiting_then(90, closed(ClosedBy::Platform, "queue clean process"))
        .fold()
        .conversation;
    assert_eq!(c.state, HandoffState::Closed);
    assert_eq!(c.disposition, Some(Disposition::Missed));
    assert_eq!(c.platform_disposition.as_deref(), Some("queue clean process"));
    assert_eq!(c.close_reason.as_deref(), Some("queue clean process"));
    assert_eq!(c.closed_at, Some(t(91)));
    assert_eq!(c.sla_status, SlaStatus::Breached);
    assert!(!is_short_abandon(&c.handoffs[0], &SlaConfig::default()));

    let c = waiting_then(30, closed(ClosedBy::Unknown, "timeout"))
        .fold()
        .conversation;
    assert_eq!(c.disposition, Some(Disposition::Missed));
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
}

#[test]
fn close_of_an_already_closed_handoff_is_ignored() {
    let mut log = waiting_then(90, closed(ClosedBy::Platform, "queue clean process"));
    log.at(200, AIVO, closed(ClosedBy::Agent, "again"));
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 1);
    assert_eq!(c.closed_at, Some(t(91)));
    assert_eq!(c.close_reason.as_deref(), Some("queue clean process"));
    assert_eq!(c.updated_at, t(200));
}

#[test]
fn escalation_closed_before_it_was_queued_is_missed_without_sla() {
    let mut log = Log::new();
    log.at(0, BOT, escalate())
        .at(5, AIVO, closed(ClosedBy::Unknown, "gone"));
    let c = log.fold().conversation;
    assert_eq!(c.disposition, Some(Disposition::Missed));
    assert_eq!(c.queued_at, None);
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
}

#[test]
fn a_live_only_room_gets_an_implicit_handoff() {
    let mut log = Log::new();
    log.at(5, AIVO, attended("Tomas", Some("2179")))
        .at(10, AIVO, say(Party::Agent, Some("Tomas"), "hello"))
        .at(65, AIVO, closed(ClosedBy::Agent, "resolved"));
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 1);
    let h = &c.handoffs[0];
    assert_eq!(h.backend, "aivo_live");
    assert_eq!(h.requested_at, None);
    assert_eq!(h.queued_at, Some(t(5)));
    assert_eq!(h.attended_at, Some(t(5)));
    assert_eq!(h.wait_seconds, Some(0.0));
    assert_eq!(h.first_response_seconds, Some(5.0));
    assert_eq!(h.handle_seconds, Some(60.0));
    assert_eq!(h.sla_status, SlaStatus::Met);
    assert_eq!(h.disposition, Some(Disposition::Completed));
    assert_eq!(c.escalated_at, None);
    assert_eq!(c.bot_seconds, None);
    assert_eq!(c.state, HandoffState::Closed);
}

#[test]
fn a_room_only_seen_closing_is_an_implicit_missed_handoff() {
    let mut log = Log::new();
    log.at(30, BP, closed(ClosedBy::Platform, "inactivity_timeout"));
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Closed);
    assert_eq!(c.handoffs.len(), 1);
    let h = &c.handoffs[0];
    assert_eq!(h.backend, "bright_pattern");
    assert_eq!(h.queued_at, Some(t(30)));
    assert_eq!(h.closed_at, Some(t(30)));
    assert_eq!(h.disposition, Some(Disposition::Missed));
    assert_eq!(h.sla_status, SlaStatus::NotApplicable);
    assert_eq!(h.platform_disposition.as_deref(), Some("inactivity_timeout"));
}

#[test]
fn a_transfer_seen_first_opens_an_implicit_handoff() {
    let mut log = Log::new();
    log.at(
        3,
        VCC,
        Fact::Transferred {
            from_queue: Some("A".into()),
            to_queue: Some("B".into()),
        },
    );
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Queued);
    assert_eq!(c.transfers, 1);
    assert_eq!(c.queue.as_deref(), Some("B"));
    assert_eq!(c.handoffs[0].backend, "vcc");
    assert_eq!(c.queued_at, Some(t(3)));
    assert_eq!(c.sla_status, SlaStatus::Pending);
}

#[test]
fn escalation_never_queued_then_attended_waits_from_the_escalation() {
    let mut log = Log::new();
    log.at(0, BOT, say(Party::Bot, None, "hi"))
        .at(10, BOT, escalate())
        .at(11, BOT, escalate())
        .at(40, BP, attended("Ana", None));
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 1);
    let h = &c.handoffs[0];
    assert_eq!(h.requested_at, Some(t(10)));
    assert_eq!(h.queued_at, Some(t(10)));
    assert_eq!(h.attended_at, Some(t(40)));
    assert_eq!(h.wait_seconds, Some(30.0));
    assert_eq!(h.backend, "bright_pattern");
    assert_eq!(h.sla_status, SlaStatus::Met);
    assert_eq!(c.state, HandoffState::Attended);
    assert_eq!(c.bot_seconds, Some(10.0));
    assert_eq!(c.first_response_seconds, None);
}

#[test]
fn failed_hand_over_is_failed_without_sla() {
    let mut log = Log::new();
    log.at(10, BOT, escalate())
        .at(12, LEDGER, queued("aivo_live", Some("2179")))
        .at(
            13,
            LEDGER,
            Fact::HandoffFailed {
                reason: "aivo queue call refused: 503".into(),
            },
        );
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Failed);
    assert_eq!(c.disposition, Some(Disposition::Failed));
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
    assert_eq!(c.closed_at, Some(t(13)));
    assert_eq!(c.escalated_at, Some(t(10)));
    assert_eq!(c.handoffs[0].failure.as_deref(), Some("aivo queue call refused: 503"));
    assert_eq!(c.handoffs[0].backend, "aivo_live");

    // A failed handoff is not open: the next escalation opens a second one.
    log.at(20, BOT, escalate());
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 2);
    assert_eq!(c.state, HandoffState::EscalationRequested);
    assert_eq!(c.disposition, None);
    assert_eq!(c.escalated_at, Some(t(20)));
    assert_eq!(c.bot_seconds, Some(0.0));
    assert_eq!(c.handoffs[0].disposition, Some(Disposition::Failed));

    // A failure with no handoff at all is a failed handoff of its own.
    let mut log = Log::new();
    log.at(
        5,
        BP,
        Fact::HandoffFailed {
            reason: "failed".into(),
        },
    );
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 1);
    assert_eq!(c.state, HandoffState::Failed);
    assert_eq!(c.handoffs[0].backend, "bright_pattern");
    assert_eq!(c.handoffs[0].requested_at, Some(t(5)));
    assert_eq!(c.handoffs[0].closed_at, Some(t(5)));
}

#[test]
fn platform_outcome_overrides_disposition_and_sla() {
    // Computed: missed, not applicable. VCC says lost and answered after the SLA.
    for outcome_first in [false, true] {
        let mut log = Log::new();
        log.at(0, VCC, queued("vcc", Some("support")));
        let close = closed(ClosedBy::Agent, "closed by agent");
        let said = outcome(Some("lost"), Some("answeredAfterSLA"));
        if outcome_first {
            log.at(30, VCC, said).at(30, VCC, close);
        } else {
            log.at(30, VCC, close).at(30, VCC, said);
        }
        let c = log.fold().conversation;
        assert_eq!(
            c.disposition,
            Some(Disposition::Abandoned),
            "outcome first: {outcome_first}"
        );
        assert_eq!(c.platform_disposition.as_deref(), Some("lost"));
        assert_eq!(c.close_reason.as_deref(), Some("closed by agent"));
        assert_eq!(c.sla_status, SlaStatus::Breached);
    }

    // answeredBeforeSLA wins over a computed breach.
    let mut log = Log::new();
    log.at(0, VCC, queued("vcc", None))
        .at(90, VCC, attended("Tomas", None))
        .at(100, VCC, closed(ClosedBy::Agent, "done"))
        .at(100, VCC, outcome(Some("completed"), Some("answeredBeforeSLA")));
    let c = log.fold().conversation;
    assert_eq!(c.wait_seconds, Some(90.0));
    assert_eq!(c.sla_status, SlaStatus::Met);
    assert_eq!(c.disposition, Some(Disposition::Completed));
    assert_eq!(c.platform_disposition.as_deref(), Some("completed"));

    // Unknown values are kept raw but change nothing computed; the outcome does not close the handoff.
    let mut log = Log::new();
    log.at(0, VCC, queued("vcc", None))
        .at(90, VCC, attended("Tomas", None))
        .at(95, VCC, outcome(Some("transferredAway"), Some("somethingNew")));
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Attended);
    assert_eq!(c.disposition, None);
    assert_eq!(c.platform_disposition.as_deref(), Some("transferredAway"));
    assert_eq!(c.sla_status, SlaStatus::Breached);
    log.at(120, VCC, closed(ClosedBy::Agent, "done"));
    let c = log.fold().conversation;
    assert_eq!(c.disposition, Some(Disposition::Completed));
    assert_eq!(c.platform_disposition.as_deref(), Some("transferredAway"));
}

#[test]
fn platform_values_are_mapped_case_insensitively() {
    use super::fold::{platform_disposition, platform_sla};
    assert_eq!(platform_disposition("Completed"), Some(Disposition::Completed));
    assert_eq!(platform_disposition("LOST"), Some(Disposition::Abandoned));
    assert_eq!(platform_disposition(" missed "), Some(Disposition::Missed));
    assert_eq!(platform_disposition("queue clean process"), None);
    assert_eq!(platform_sla("answeredBeforeSLA"), Some(SlaStatus::Met));
    assert_eq!(platform_sla("answeredAfterSLA"), Some(SlaStatus::Breached));
    assert_eq!(platform_sla("SLA_BREACHED"), Some(SlaStatus::Breached));
    assert_eq!(platform_sla("late"), Some(SlaStatus::Breached));
    assert_eq!(platform_sla("notAnswered"), None);
    assert_eq!(platform_sla(""), None);
}

#[test]
fn bright_pattern_parties_resolve_to_scenario_bot_or_agent() {
    let mut log = Log::new();
    log.at(0, LEDGER, queued("bright_pattern", Some("support")))
        .at(
            1,
            BP,
            Fact::ScenarioJoined {
                party_id: "s1".into(),
                name: Some("Welcome scenario".into()),
            },
        )
        .at(2, BP, party_line(Party::Agent, "s1", "Welcome!"))
        .at(
            9,
            BP,
            party_line(Party::Agent, "p2", "sent just before the join was stamped"),
        )
        .at(
            10,
            BP,
            Fact::Attended {
                agent: agent("Ana", None),
                party_id: Some("p2".into()),
            },
        )
        .at(11, BP, party_line(Party::Agent, "s1", "The scenario still talks"))
        .at(14, BP, party_line(Party::Agent, "p2", "Hi, I'm Ana"))
        .at(15, BP, party_line(Party::Visitor, "c1", "Hi Ana"))
        .at(20, BP, party_line(Party::Agent, "p9", "who am I?"))
        .at(21, BP, party_line(Party::Bot, "s7", "a scenario we never saw join"))
        .at(
            25,
            BP,
            Fact::AgentLeft {
                party_id: Some("p2".into()),
            },
        );
    let p = log.fold();
    let lines: Vec<(Party, Option<&str>)> = p.messages.iter().map(|m| (m.party, m.author.as_deref())).collect();
    assert_eq!(
        lines,
        vec![
            (Party::Bot, Some("Welcome scenario")),
            (Party::Agent, Some("Ana")),
            (Party::Bot, Some("Welcome scenario")),
            (Party::Agent, Some("Ana")),
            (Party::Visitor, None),
            (Party::Agent, Some("p9")),
            (Party::Bot, Some("s7")),
        ]
    );
    let c = p.conversation;
    assert_eq!(c.message_counts.bot, 3);
    assert_eq!(c.message_counts.agent, 3);
    assert_eq!(c.message_counts.visitor, 1);
    // Neither the scenario's line nor Ana's line before she attended is a response.
    assert_eq!(c.first_response_seconds, Some(4.0));
    assert_eq!(c.agents, vec![agent("Ana", None)]);
    assert_eq!(c.state, HandoffState::Attended);
    assert_eq!(c.wait_seconds, Some(10.0));
}

#[test]
fn a_second_escalation_opens_a_second_handoff_and_leads_the_top_level() {
    let mut log = Log::new();
    log.at(0, BOT, escalate())
        .at(1, LEDGER, queued("aivo_live", Some("2179")))
        .at(11, AIVO, attended("Tomas", None))
        .at(20, AIVO, say(Party::Agent, Some("Tomas"), "hi"))
        .at(50, AIVO, closed(ClosedBy::Agent, "resolved"))
        .at(200, BOT, escalate())
        .at(205, LEDGER, queued("aivo_live", Some("3000")));
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 2);
    assert_eq!(c.state, HandoffState::Queued);
    assert_eq!(c.sla_status, SlaStatus::Pending);
    assert_eq!(c.disposition, None);
    assert_eq!(c.platform_disposition, None);
    assert_eq!(c.close_reason, None);
    assert_eq!(c.escalated_at, Some(t(200)));
    assert_eq!(c.queued_at, Some(t(205)));
    assert_eq!(c.first_attended_at, None);
    assert_eq!(c.closed_at, None);
    assert_eq!(c.wait_seconds, None);
    assert_eq!(c.first_response_seconds, None);
    assert_eq!(c.handle_seconds, None);
    assert_eq!(c.queue.as_deref(), Some("3000"));
    assert_eq!(c.bot_seconds, Some(0.0));
    let first = &c.handoffs[0];
    assert_eq!(first.disposition, Some(Disposition::Completed));
    assert_eq!(first.sla_status, SlaStatus::Met);
    assert_eq!(first.wait_seconds, Some(10.0));
    assert_eq!(first.first_response_seconds, Some(9.0));
    assert_eq!(first.handle_seconds, Some(39.0));
    assert_eq!(c.agents, vec![agent("Tomas", None)]);

    log.at(300, AIVO, attended("Ana", None))
        .at(301, AIVO, attended("Tomas", None));
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Attended);
    assert_eq!(c.wait_seconds, Some(95.0));
    assert_eq!(c.sla_status, SlaStatus::Breached);
    assert_eq!(c.handoffs[1].agents, vec![agent("Ana", None), agent("Tomas", None)]);
    // Conversation agents are deduplicated by name, first seen first.
    assert_eq!(c.agents, vec![agent("Tomas", None), agent("Ana", None)]);
    assert_eq!(c.handoffs[0].sla_status, SlaStatus::Met);
}

#[test]
fn waiting_handoff_is_pending_without_a_clock() {
    let mut log = Log::new();
    log.at(0, BOT, escalate());
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::EscalationRequested);
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
    log.at(1, LEDGER, queued("aivo_live", None))
        .at(5000, BOT, say(Party::Visitor, None, "hello??"));
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Queued);
    assert_eq!(c.sla_status, SlaStatus::Pending);
    assert_eq!(c.wait_seconds, None);
    assert_eq!(c.handoffs[0].backend, "aivo_live");
    assert_eq!(c.handoffs[0].queue, None);
    // The deadline is queued_at + the target (default 60 s); read as of a time past it, it is breached.
    assert_eq!(c.sla_deadline, Some(t(61)));
    assert_eq!(c.handoffs[0].sla_deadline, Some(t(61)));
    assert_eq!(c.clone().as_of(t(60)).sla_status, SlaStatus::Pending);
    let late = c.as_of(t(61));
    assert_eq!(late.sla_status, SlaStatus::Breached);
    assert_eq!(late.handoffs[0].sla_status, SlaStatus::Breached);
    // Answered: no deadline any more, and the clock changes nothing.
    log.at(7000, AIVO, attended("Tomas", None));
    let c = log.fold().conversation;
    assert_eq!(c.sla_deadline, None);
    assert_eq!(c.sla_status, SlaStatus::Breached);
    assert_eq!(c.clone().as_of(t(1)), c);
}

#[test]
fn the_deadline_follows_the_queue_target() {
    let mut sla = SlaConfig::default();
    sla.queues.insert("2179".into(), 30);
    let mut log = Log::new();
    log.at(10, LEDGER, queued("aivo_live", Some("2179")));
    let c = log.fold_with(&sla).conversation;
    assert_eq!(c.sla_deadline, Some(t(40)));
}

#[test]
fn queued_on_an_attended_handoff_only_fills_gaps() {
    let mut log = Log::new();
    log.at(0, LEDGER, queued("aivo_live", Some("2179")))
        .at(5, AIVO, attended("Tomas", None))
        .at(6, LEDGER, queued("bright_pattern", Some("9999")));
    let c = log.fold().conversation;
    assert_eq!(c.handoffs.len(), 1);
    assert_eq!(c.queued_at, Some(t(0)));
    assert_eq!(c.queue.as_deref(), Some("2179"));
    assert_eq!(c.handoffs[0].backend, "aivo_live");
    assert_eq!(c.state, HandoffState::Attended);
}

#[test]
fn notices_mark_the_latest_handoff_and_are_not_lines() {
    let mut log = Log::new();
    log.at(
        0,
        LEDGER,
        Fact::Notice {
            text: "widget_message failed: 500".into(),
        },
    );
    let c = log.fold().conversation;
    assert!(c.handoffs.is_empty());
    assert_eq!(c.state, HandoffState::Bot);

    log.at(1, BOT, escalate()).at(2, LEDGER, queued("aivo_live", None)).at(
        5,
        LEDGER,
        Fact::Notice {
            text: "aivo_message gave_up: 503".into(),
        },
    );
    let p = log.fold();
    assert!(p.messages.is_empty());
    assert_eq!(p.conversation.message_counts, Default::default());
    assert_eq!(p.conversation.state, HandoffState::Queued);
    assert_eq!(
        p.conversation.handoffs[0].failure.as_deref(),
        Some("aivo_message gave_up: 503")
    );

    log.at(10, AIVO, closed(ClosedBy::Platform, "timeout")).at(
        11,
        LEDGER,
        Fact::Notice {
            text: "widget_escalation_failed failed: 400".into(),
        },
    );
    let c = log.fold().conversation;
    assert_eq!(c.state, HandoffState::Closed);
    assert_eq!(
        c.handoffs[0].failure.as_deref(),
        Some("widget_escalation_failed failed: 400")
    );
}

#[test]
fn bot_only_conversation_stays_bot_and_merges_attributes() {
    let mut first = BTreeMap::new();
    first.insert("Ticket".to_string(), json!("1"));
    first.insert("Lang".to_string(), json!("en"));
    let mut second = BTreeMap::new();
    second.insert("Ticket".to_string(), json!("2024"));
    let mut log = Log::new();
    log.at(0, BOT, say(Party::Bot, Some("bot-1"), "Hi"))
        .at(3, BOT, Fact::Attributes(first))
        .at(4, BOT, say(Party::Visitor, None, "thanks, bye"))
        .at(6, BOT, Fact::Attributes(second))
        .at(7, BOT, Fact::VisitorLeft)
        .at(8, BOT, say(Party::System, None, "session ended"));
    let p = log.fold();
    let c = p.conversation;
    assert_eq!(c.state, HandoffState::Bot);
    assert_eq!(c.sla_status, SlaStatus::NotApplicable);
    assert!(c.handoffs.is_empty());
    assert_eq!(c.disposition, None);
    assert_eq!(c.queue, None);
    assert_eq!(c.escalated_at, None);
    assert_eq!(c.bot_seconds, None);
    assert_eq!(c.transfers, 0);
    assert_eq!(c.attributes.get("Ticket"), Some(&json!("2024")));
    assert_eq!(c.attributes.get("Lang"), Some(&json!("en")));
    assert_eq!(c.message_counts.bot, 1);
    assert_eq!(c.message_counts.visitor, 1);
    assert_eq!(c.message_counts.system, 1);
    assert_eq!(p.messages.len(), 3);
    assert_eq!(c.updated_at, t(8));
    assert_eq!(c.last_seq, 6);
}

#[test]
fn agent_line_after_the_close_is_no_first_response() {
    let mut log = Log::new();
    log.at(0, LEDGER, queued("aivo_live", None))
        .at(10, AIVO, attended("Tomas", None))
        .at(20, AIVO, closed(ClosedBy::Agent, "done"))
        .at(25, AIVO, say(Party::Agent, Some("Tomas"), "one more thing"));
    let c = log.fold().conversation;
    assert_eq!(c.first_response_seconds, None);
    assert_eq!(c.message_counts.agent, 1);
}

#[test]
fn extent_covers_events_without_facts() {
    let mut log = Log::new();
    log.at(10, BOT, say(Party::Bot, None, "hi"));
    let extent = LogExtent {
        first_at: t(2),
        last_at: t(30),
        last_seq: 9,
    };
    let c = fold(
        conv_id(),
        &streams(),
        Some(extent),
        log.inputs.clone(),
        &SlaConfig::default(),
    )
    .unwrap()
    .conversation;
    assert_eq!(c.started_at, t(2));
    assert_eq!(c.updated_at, t(30));
    assert_eq!(c.last_seq, 9);
    assert_eq!(
        fold(conv_id(), &streams(), None, Vec::new(), &SlaConfig::default()),
        None
    );
    // Only events without facts: a conversation with nothing in it yet.
    let c = fold(conv_id(), &streams(), Some(extent), Vec::new(), &SlaConfig::default())
        .unwrap()
        .conversation;
    assert_eq!(c.state, HandoffState::Bot);
    assert_eq!(c.started_at, t(2));
}

#[test]
fn a_relayed_visitor_message_echoed_by_bright_pattern_is_one_line() {
    use crate::sources::{bright_pattern, ledger::CommandRecord, Delivery};
    let id = conv_id();
    let visitor = ledger::api_message(id, Party::Visitor, "my order is late", None, t(10));
    let command = ledger::command(
        id,
        ledger::COMMAND,
        &CommandRecord {
            command_id: "cmd-7".into(),
            action: "visitor_message".into(),
            outcome: None,
            detail: None,
            body: None,
            retry_of: None,
        },
        t(10),
    );
    // Bright Pattern's chat history carries the client's own message, under the msg_id we sent it with, and a
    // message the visitor typed in Bright Pattern's own client.
    let history = r#"{"events": [
        {"event": "chat_session_message", "msg_id": "cmd-7", "msg": "my order is late", "timestamp": 1700000011},
        {"event": "chat_session_message", "msg_id": "own-1", "msg": "hello?", "timestamp": 1700000012}
    ]}"#;
    let value: serde_json::Value = serde_json::from_str(history).unwrap();
    let delivery = Delivery {
        received_at: t(20),
        path_id: Some("chat-1"),
        ..Delivery::default()
    };
    let parsed = bright_pattern::parse(history, &value, &delivery).unwrap();
    let mut events = vec![stored(1, visitor), stored(2, command)];
    for (i, e) in parsed.events.into_iter().enumerate() {
        events.push(stored(3 + i as i64, e));
    }
    let p = project(id, &streams(), &events, &SlaConfig::default()).unwrap();
    let lines: Vec<_> = p
        .messages
        .iter()
        .map(|m| (m.party, m.text.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (Party::Visitor, "my order is late".to_string()),
            (Party::Visitor, "hello?".to_string())
        ]
    );
    assert_eq!(p.conversation.message_counts.visitor, 2);
}

// ---------------------------------------------------------------------------------------------
// Incremental folding: `FoldState::extend` gives what folding everything gives, or refuses.
// ---------------------------------------------------------------------------------------------

fn extent_of(inputs: &[Input]) -> LogExtent {
    LogExtent::of_inputs(inputs).unwrap()
}

/// Folds `inputs[..cut]` from nothing, then extends with the rest; the lines of both steps.
fn build_then_extend(inputs: &[Input], cut: usize) -> Result<(FoldState, Vec<Message>), Refold> {
    let (head, tail) = inputs.split_at(cut);
    let (mut state, mut lines) = match LogExtent::of_inputs(head) {
        Some(extent) => FoldState::build(extent, head.to_vec()),
        None => (FoldState::default(), Vec::new()),
    };
    if let Some(extent) = LogExtent::of_inputs(tail) {
        lines.extend(state.extend(extent, tail.to_vec(), &|_| false)?);
    }
    Ok((state, lines))
}

#[test]
fn extending_in_order_equals_folding_everything_at_every_cut() {
    let inputs = full_handoff().inputs;
    let (whole, whole_lines) = FoldState::build(extent_of(&inputs), inputs.clone());
    let sla = SlaConfig::default();
    for cut in 0..=inputs.len() {
        let (state, lines) = build_then_extend(&inputs, cut).unwrap();
        assert_eq!(state, whole, "cut at {cut}");
        assert_eq!(lines, whole_lines, "cut at {cut}");
        assert_eq!(
            state.conversation(conv_id(), &streams(), &sla),
            whole.conversation(conv_id(), &streams(), &sla)
        );
    }
    // The kept state survives its stored form.
    let text = serde_json::to_string(&whole).unwrap();
    assert_eq!(serde_json::from_str::<FoldState>(&text).unwrap(), whole);
}

#[test]
fn a_fact_sorting_before_the_watermark_refuses_and_leaves_the_state_alone() {
    let mut log = full_handoff();
    // A late delivery: logged last, said at 44 s.
    log.at(44, BOT, say(Party::Visitor, None, "still there?"));
    let inputs = log.inputs;
    let cut = inputs.len() - 1;
    let (head, tail) = inputs.split_at(cut);
    let (mut state, _) = FoldState::build(extent_of(head), head.to_vec());
    let before = state.clone();
    assert_eq!(
        state.extend(extent_of(tail), tail.to_vec(), &|_| false),
        Err(Refold::Late)
    );
    assert_eq!(state, before);
}

#[test]
fn a_party_joining_after_its_lines_refuses_and_the_refold_attributes_them() {
    let mut log = Log::new();
    log.at(10, BP, party_line(Party::Agent, "p-9", "Hello from an unknown party"));
    log.at(
        20,
        BP,
        Fact::Attended {
            agent: agent("Ann", None),
            party_id: Some("p-9".into()),
        },
    );
    let inputs = log.inputs;
    assert_eq!(build_then_extend(&inputs, 1).unwrap_err(), Refold::PartyJoinedLate);
    let (_, lines) = FoldState::build(extent_of(&inputs), inputs.clone());
    assert_eq!(lines[0].author.as_deref(), Some("Ann"));
    // A join of another party extends as usual.
    let mut other = Log::new();
    other.at(10, BP, party_line(Party::Agent, "p-9", "Hello"));
    other.at(
        20,
        BP,
        Fact::Attended {
            agent: agent("Ann", None),
            party_id: Some("p-1".into()),
        },
    );
    assert!(build_then_extend(&other.inputs, 1).is_ok());
}

#[test]
fn a_relay_whose_echo_is_already_a_line_refuses_and_one_whose_echo_follows_drops_it() {
    let echo = crate::model::event_id_for(BP, Some("cmd-7"));
    let relay = Fact::VisitorMessageRelayed {
        message_id: "cmd-7".into(),
    };
    let echo_input = |seq: i64, secs: i64| Input {
        at: t(secs),
        seq,
        index: 0,
        platform: BP,
        event_id: echo,
        fact: say(Party::Visitor, None, "my order is late"),
    };
    let relay_input = |seq: i64, secs: i64| Input {
        at: t(secs),
        seq,
        index: 0,
        platform: LEDGER,
        event_id: Uuid::from_u128(1_000 + seq as u128),
        fact: relay.clone(),
    };
    // Echo folded first, relay after it: the line must go, so the state refuses.
    let first = vec![echo_input(1, 10)];
    let (mut state, lines) = FoldState::build(extent_of(&first), first);
    assert_eq!(lines.len(), 1);
    let second = vec![relay_input(2, 11)];
    assert_eq!(
        state.extend(extent_of(&second), second.clone(), &|id| id == echo),
        Err(Refold::EchoAlreadyFolded)
    );
    // Relay first, echo after it: extending drops the echo, as folding everything does.
    let inputs = vec![relay_input(1, 10), echo_input(2, 11)];
    let (state, lines) = build_then_extend(&inputs, 1).unwrap();
    assert!(lines.is_empty());
    assert_eq!(state, FoldState::build(extent_of(&inputs), inputs.clone()).0);
}
