//! The projection: a pure fold of a conversation's events into its handoff state, timers, SLA
//! status and merged transcript. No I/O, no clock: a handoff still waiting stays `pending`.
//!
//! [`project`] decodes every stored event with [`sources::facts_of`] (one event may give several
//! facts at different times: a VCC body carries the whole chat), flattens them into [`Input`]s and
//! hands them to [`fold`], which sorts them by `(at, seq, index within the event)`. Because the
//! fold only sees the sorted facts, the order in which webhooks arrived does not matter.
//!
//! The store keeps each conversation's [`FoldState`] (everything but the transcript lines, which
//! are rows of their own) with its watermark, the sort key of the last fact applied. New events
//! whose facts all sort after it are applied to the kept state ([`FoldState::extend`], O(1) in
//! the length of the conversation); a fact sorting at or before it, a party joining whose id
//! earlier lines were attributed without, a relay whose echo is already a line, or a merge make
//! the store refold the conversation from its events instead ([`Refold`]). Both give the same
//! result, field by field: a property test on random logs checks it on both stores.
//!
//! # Semantics
//!
//! Conversation:
//! - `started_at` = the earliest fact time or event `occurred_at`; `updated_at` = the latest event
//!   `occurred_at`; `last_seq` = the highest `seq`; `streams` as given, sorted. No events: no projection.
//! - A conversation holds a list of handoffs (hand-overs to a live queue). Its top-level `state`,
//!   `disposition`, `platform_disposition`, `sla_status`, `queue`, `escalated_at` (= `requested_at`),
//!   `queued_at`, `first_attended_at` (= `attended_at`), `closed_at`, `wait_seconds`,
//!   `first_response_seconds`, `handle_seconds`, `transfers` and `close_reason` are those of the
//!   LATEST handoff. With none: state `bot`, SLA `not_applicable`, nulls and 0.
//! - `bot_seconds` = first escalation request - `started_at`.
//! - An "open" handoff is the latest one when it is neither closed nor failed.
//!
//! Facts:
//! - `EscalationRequested`: no open handoff -> open one (backend `""` until known, `requested_at`),
//!   state `escalation_requested`; an open one -> ignored.
//! - `Queued`: open handoff never queued -> `queued_at`, backend, queue, state `queued`. No open
//!   handoff -> a new one queued then (no `requested_at`). Already queued/attended -> only fills an
//!   empty backend or queue.
//! - `Attended`: no open handoff -> an implicit one (backend = the live platform of the input,
//!   queued then). Open but never queued -> `queued_at = requested_at` (the visitor waited since the
//!   escalation; the queue event never reached us), and an empty backend becomes the input's live
//!   platform (also for `Transferred`). The first attend sets `attended_at` and fixes the
//!   queue whose SLA target applies; every attend adds the agent (by name, first seen kept) to the
//!   handoff and the conversation; state `attended`.
//! - `Transferred`: open handoff (or an implicit one, as for `Attended`) -> `transfers += 1`, queue =
//!   the target queue when given, state `queued` until re-attended.
//! - `Message`: a transcript line. Bright Pattern `party_id`s (on agent or bot lines) are resolved:
//!   one that joined by `Attended` is that agent; by `ScenarioJoined` a bot line authored by the
//!   scenario; unknown -> the line's own party (agent, unless the parser knew it for a bot) authored
//!   by the payload's name, else the party id. The first agent line that is not
//!   `automatic` (an Aivo trigger), at or after the latest handoff's `attended_at` and not after its
//!   close, sets `first_response_seconds`.
//! - `VisitorLeft`: open handoff -> closed with close reason `visitor_left` (ours, so not a
//!   `platform_disposition`): `completed` if an agent attended, else `abandoned`. No open handoff ->
//!   ignored.
//! - `Closed`: open handoff -> closed: `completed` if an agent ever attended, else `abandoned` when
//!   the visitor closed it, else `missed`; `close_reason` = reason, and `platform_disposition` =
//!   reason unless a `PlatformOutcome` gave one. No open handoff -> ignored, except when there is no
//!   handoff at all (a live room only seen closing): an implicit handoff queued and closed then.
//! - `PlatformOutcome`: on the open (else latest) handoff: `platform_disposition` = the value; a known
//!   one wins over the computed disposition once closed (`completed`, `lost` -> abandoned, `missed`).
//!   Platform SLA `answeredBeforeSLA` -> met; values containing `after`, `breach` or `late` ->
//!   breached; anything else keeps the computed value.
//! - `HandoffFailed`: open handoff (or a new one, requested then) -> state `failed`, disposition
//!   `failed`, closed, `failure` = reason, SLA `not_applicable`.
//! - `AgentLeft`: nothing. `ScenarioJoined`: its party id is remembered. `Attributes`: merged, later
//!   wins. `Notice`: sets `failure` on the latest handoff; never a transcript line.
//!
//! Timers (seconds, millisecond precision): wait = `attended_at - queued_at`; handle = `closed_at -
//! attended_at`; first response as above. Each stays null until its end happens.
//!
//! SLA per handoff (target = `sla.target_for(queue when the wait ended)`): never queued or failed ->
//! `not_applicable`; answered -> `met` if wait <= target, else `breached`; still waiting -> `pending`;
//! abandoned after less than `short_abandon_seconds` -> `not_applicable`; abandoned or missed after
//! more than the target -> `breached`; abandoned or missed before it -> `not_applicable` (no
//! answer-time promise was broken; service level still counts them); then the platform's SLA value,
//! when known, overrides.

pub mod clock;
mod fold;
pub mod metrics;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::SlaConfig;
use crate::model::{Conversation, Message, Platform, StoredEvent, StreamKey};
use crate::sources::{self, Fact, KeptEvent};

pub use clock::Clocks;
pub use fold::{echo_of, fold, FoldState, HandoffMark, Refold};

/// The projected conversation and its transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// The conversation.
    pub conversation: Conversation,
    /// Its transcript, ordered by `at`, then `seq`, then position within the event.
    pub messages: Vec<Message>,
}

/// One fact of one stored event: what the fold consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// When the fact happened.
    pub at: DateTime<Utc>,
    /// Log position of the event it came from.
    pub seq: i64,
    /// Position of the fact within its event.
    pub index: usize,
    /// Platform of the event.
    pub platform: Platform,
    /// The event it came from.
    pub event_id: Uuid,
    /// What it means.
    pub fact: Fact,
}

impl Input {
    /// The fold's order: time, then log position, then position within the event.
    pub fn sort_key(&self) -> (DateTime<Utc>, i64, usize) {
        (self.at, self.seq, self.index)
    }
}

/// The span of the events folded, including those that gave no facts (links, commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogExtent {
    /// Earliest event `occurred_at`.
    pub first_at: DateTime<Utc>,
    /// Latest event `occurred_at`.
    pub last_at: DateTime<Utc>,
    /// Highest `seq`.
    pub last_seq: i64,
}

impl LogExtent {
    /// The extent of `events`; None when there are none.
    pub fn of_events(events: &[StoredEvent]) -> Option<LogExtent> {
        Self::of(events.iter().map(|e| (e.occurred_at, e.seq)))
    }

    /// The extent of `inputs` alone, for when every event gave at least one fact.
    pub fn of_inputs(inputs: &[Input]) -> Option<LogExtent> {
        Self::of(inputs.iter().map(|i| (i.at, i.seq)))
    }

    /// The span of both.
    pub fn merge(self, other: LogExtent) -> LogExtent {
        LogExtent {
            first_at: self.first_at.min(other.first_at),
            last_at: self.last_at.max(other.last_at),
            last_seq: self.last_seq.max(other.last_seq),
        }
    }

    fn of(points: impl Iterator<Item = (DateTime<Utc>, i64)>) -> Option<LogExtent> {
        points.fold(None, |acc: Option<LogExtent>, (at, seq)| {
            Some(match acc {
                None => LogExtent {
                    first_at: at,
                    last_at: at,
                    last_seq: seq,
                },
                Some(e) => LogExtent {
                    first_at: e.first_at.min(at),
                    last_at: e.last_at.max(at),
                    last_seq: e.last_seq.max(seq),
                },
            })
        })
    }
}

/// Flattens stored events into fold inputs (unsorted): every fact of every event, with its position.
/// An erased event's payload (a stub) gives no facts; the facts its `ledger.erased` event kept stand in
/// for them, at their original times and positions. Of an event and its newer versions (conflicting
/// redeliveries, [`StoredEvent::revision_of`]) only the latest counts.
pub fn inputs_of(events: &[StoredEvent]) -> Vec<Input> {
    let superseded = superseded(events);
    let mut inputs = facts_of_events(events);
    inputs.retain(|i| !superseded.contains(&i.seq));
    let kept: Vec<KeptEvent> = inputs
        .iter()
        .filter_map(|i| match &i.fact {
            Fact::Erased { events } => Some(events.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    if kept.is_empty() {
        return inputs;
    }
    let present: BTreeSet<i64> = events.iter().map(|e| e.seq).collect();
    let erased: BTreeSet<i64> = kept.iter().map(|k| k.seq).collect();
    inputs.retain(|i| !erased.contains(&i.seq));
    for k in kept
        .into_iter()
        .filter(|k| present.contains(&k.seq) && !superseded.contains(&k.seq))
    {
        inputs.extend(k.facts.into_iter().enumerate().map(|(index, (at, fact))| Input {
            at,
            seq: k.seq,
            index,
            platform: k.platform,
            event_id: k.event_id,
            fact,
        }));
    }
    inputs
}

/// Seqs of events a newer version (a later event revising the same one) replaces.
fn superseded(events: &[StoredEvent]) -> BTreeSet<i64> {
    let mut latest: std::collections::BTreeMap<Uuid, i64> = std::collections::BTreeMap::new();
    if events.iter().all(|e| e.revision_of.is_none()) {
        return BTreeSet::new();
    }
    for e in events {
        let root = e.revision_of.unwrap_or(e.event_id);
        let seq = latest.entry(root).or_insert(e.seq);
        *seq = (*seq).max(e.seq);
    }
    events
        .iter()
        .filter(|e| {
            latest
                .get(&e.revision_of.unwrap_or(e.event_id))
                .is_some_and(|s| *s != e.seq)
        })
        .map(|e| e.seq)
        .collect()
}

fn facts_of_events(events: &[StoredEvent]) -> Vec<Input> {
    events
        .iter()
        .flat_map(|e| {
            sources::facts_of(e)
                .into_iter()
                .enumerate()
                .map(|(index, (at, fact))| Input {
                    at,
                    seq: e.seq,
                    index,
                    platform: e.platform,
                    event_id: e.event_id,
                    fact,
                })
        })
        .collect()
}

/// Folds `events` (any order: their facts are sorted by causal time, then `seq`; see [`clock`]) into a
/// conversation with id `id` made of `streams`. Returns None when there are no events.
pub fn project(id: Uuid, streams: &[StreamKey], events: &[StoredEvent], sla: &SlaConfig) -> Option<Projection> {
    let extent = LogExtent::of_events(events)?;
    let (state, messages) = FoldState::build_events(extent, events);
    let conversation = state.conversation(id, streams, sla)?;
    Some(Projection { conversation, messages })
}
