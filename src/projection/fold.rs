//! The fold itself: sorted facts in, conversation and transcript out (semantics in the module doc
//! of `projection`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::metrics::{is_short_abandon, seconds_between, unanswered_wait_seconds};
use super::{Clocks, Input, LogExtent, Projection};
use crate::config::SlaConfig;
use crate::model::{
    event_id_for, Agent, Conversation, Disposition, Handoff, HandoffState, Message, MessageCounts, Party, Platform,
    SlaStatus, StreamKey,
};
use crate::sources::{ClosedBy, Fact, MessageFact};

/// Folds `inputs` (any order: sorted here by [`Input::sort_key`]) into conversation `id` made of
/// `streams`. `extent` spans every event folded, including those that gave no facts; None takes it
/// from the inputs alone. Returns None when there is nothing to fold.
pub fn fold(
    id: Uuid,
    streams: &[StreamKey],
    extent: Option<LogExtent>,
    inputs: Vec<Input>,
    sla: &SlaConfig,
) -> Option<Projection> {
    let extent = extent.or_else(|| LogExtent::of_inputs(&inputs))?;
    let (state, messages) = FoldState::build(extent, inputs);
    let conversation = state.conversation(id, streams, sla)?;
    Some(Projection { conversation, messages })
}

/// Why an increment cannot be applied to a kept fold: the conversation must be refolded from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refold {
    /// A fact sorts at or before the watermark (a late or re-ordered delivery).
    Late,
    /// A party joined whose id earlier lines were attributed without.
    PartyJoinedLate,
    /// A relay names an echo already folded as a transcript line.
    EchoAlreadyFolded,
    /// An erasure: its kept facts replace those of events already folded, their lines lose their texts.
    Erased,
}

/// The relay a visitor message's echo is recognised by: the Bright Pattern event id of the `msg_id`
/// we sent it with.
pub fn echo_of(fact: &Fact) -> Option<Uuid> {
    match fact {
        Fact::VisitorMessageRelayed { message_id } => Some(event_id_for(Platform::BrightPattern, Some(message_id))),
        _ => None,
    }
}

/// A party id a fact makes known, and who it is.
fn joined_party(fact: &Fact) -> Option<(&String, Joined)> {
    match fact {
        Fact::Attended {
            agent,
            party_id: Some(p),
        } => Some((p, Joined::Agent(agent.name.clone()))),
        Fact::ScenarioJoined { party_id, name } => Some((party_id, Joined::Scenario(name.clone()))),
        _ => None,
    }
}

/// The fold of one conversation, kept between appends: everything its [`Conversation`] is computed
/// from, and how far it got (the watermark: the sort key of the last fact applied). Facts that sort
/// after the watermark are applied to it in O(1) ([`FoldState::extend`]); anything else refolds.
/// Transcript lines are not part of it: they are handed out as they are made and stored as rows.
///
/// Party ids and relayed echoes are collected over all facts before folding (a line timestamped just
/// before its party's join is still attributed, an echo seen before its relay is still dropped); the
/// state remembers what would make an increment disagree with that (`unresolved`, `relayed`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldState {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parties: BTreeMap<String, Joined>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    handoffs: Vec<Draft>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    agents: Vec<Agent>,
    #[serde(default)]
    counts: MessageCounts,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_escalation: Option<DateTime<Utc>>,
    /// Party ids of lines no join resolved (a join of one of them later needs a refold).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    unresolved: BTreeSet<String>,
    /// Echo ids of relayed visitor messages whose echo has not been seen yet.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    relayed: BTreeSet<Uuid>,
    /// The echo being dropped (its facts are contiguous: a Bright Pattern event has one time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skipping: Option<Uuid>,
    /// Time of the earliest fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_fact_at: Option<DateTime<Utc>>,
    /// Sort key of the last fact applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watermark: Option<(DateTime<Utc>, i64, usize)>,
    /// Span of every event folded, facts or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extent: Option<LogExtent>,
    /// Seqs of erased events: their transcript lines keep party, kind and time only.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    erased: BTreeSet<i64>,
    /// The live platforms' clock lags, per stream (see `projection::clock`).
    #[serde(default, skip_serializing_if = "Clocks::is_empty")]
    clocks: Clocks,
}

impl FoldState {
    /// Folds stored events (any order) from nothing, at their causal times; returns the state and every
    /// transcript line.
    pub fn build_events(extent: LogExtent, events: &[crate::model::StoredEvent]) -> (FoldState, Vec<Message>) {
        let mut clocks = Clocks::default();
        let inputs = clocks.inputs(events);
        let (mut state, messages) = FoldState::build(extent, inputs);
        state.clocks = clocks;
        (state, messages)
    }

    /// The clocks as they stand, to time the facts of the next events with ([`Clocks::inputs`]).
    pub fn clocks(&self) -> &Clocks {
        &self.clocks
    }

    /// [`FoldState::extend`] with facts timed by `clocks` (these clocks, having learnt from the new
    /// events): kept when the increment applies.
    pub fn extend_timed(
        &mut self,
        extent: LogExtent,
        inputs: Vec<Input>,
        clocks: Clocks,
        folded: &dyn Fn(Uuid) -> bool,
    ) -> Result<Vec<Message>, Refold> {
        let messages = self.extend(extent, inputs, folded)?;
        self.clocks = clocks;
        Ok(messages)
    }

    /// Folds `inputs` (any order) from nothing; returns the state and every transcript line.
    pub fn build(extent: LogExtent, mut inputs: Vec<Input>) -> (FoldState, Vec<Message>) {
        // A stable sort keeps equal keys in the order given, so the result depends on the keys only.
        inputs.sort_by_key(Input::sort_key);
        let mut state = FoldState {
            extent: Some(extent),
            ..FoldState::default()
        };
        for input in &inputs {
            if let Some((p, joined)) = joined_party(&input.fact) {
                state.parties.entry(p.clone()).or_insert(joined);
            }
            state.relayed.extend(echo_of(&input.fact));
            if let Fact::Erased { events } = &input.fact {
                state.erased.extend(events.iter().map(|e| e.seq));
            }
        }
        let mut messages = Vec::new();
        for input in inputs {
            state.step(input, &mut messages);
        }
        (state, messages)
    }

    /// Applies the facts of events appended after everything folded so far (`extent` spans those
    /// events, `inputs` are their facts in any order) and returns the new transcript lines, when
    /// they all sort after the watermark and nothing they say re-reads earlier facts. Otherwise
    /// the state is left as it was and the caller refolds. `folded(id)` tells whether the event
    /// `id` is already folded into this state (an echo seen before its relay).
    pub fn extend(
        &mut self,
        extent: LogExtent,
        mut inputs: Vec<Input>,
        folded: &dyn Fn(Uuid) -> bool,
    ) -> Result<Vec<Message>, Refold> {
        inputs.sort_by_key(Input::sort_key);
        if let (Some(first), Some(mark)) = (inputs.first(), self.watermark) {
            if first.sort_key() <= mark {
                return Err(Refold::Late);
            }
        }
        if inputs.iter().any(|i| matches!(i.fact, Fact::Erased { .. })) {
            return Err(Refold::Erased);
        }
        let mut parties = Vec::new();
        let mut relayed = Vec::new();
        for input in &inputs {
            if let Some((p, joined)) = joined_party(&input.fact) {
                if !self.parties.contains_key(p) && !parties.iter().any(|(q, _)| q == p) {
                    if self.unresolved.contains(p) {
                        return Err(Refold::PartyJoinedLate);
                    }
                    parties.push((p.clone(), joined));
                }
            }
            if let Some(echo) = echo_of(&input.fact) {
                let in_increment = inputs.iter().any(|i| i.event_id == echo);
                if !in_increment && folded(echo) {
                    return Err(Refold::EchoAlreadyFolded);
                }
                relayed.push(echo);
            }
        }
        self.parties.extend(parties);
        self.relayed.extend(relayed);
        self.extent = Some(match self.extent {
            Some(e) => e.merge(extent),
            None => extent,
        });
        let mut messages = Vec::new();
        for input in inputs {
            self.step(input, &mut messages);
        }
        Ok(messages)
    }

    /// How many handoffs there are.
    pub fn handoff_count(&self) -> usize {
        self.handoffs.len()
    }

    /// What the stored handoff rows of this state, and the conversation's indexed columns, follow
    /// from: how many handoffs there are and the latest one (the earlier ones no longer change).
    pub fn handoff_mark(&self) -> HandoffMark {
        HandoffMark(self.handoffs.len(), self.handoffs.last().cloned())
    }

    /// The agents who attended, first seen first.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// When the conversation started (None before any event).
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        let extent = self.extent?;
        Some(self.first_fact_at.map_or(extent.first_at, |at| at.min(extent.first_at)))
    }

    /// The conversation as of this state; None before any event.
    pub fn conversation(&self, id: Uuid, streams: &[StreamKey], sla: &SlaConfig) -> Option<Conversation> {
        let extent = self.extent?;
        let started_at = self.started_at()?;
        let state = self.handoffs.last().map_or(HandoffState::Bot, |d| d.state);
        let handoffs: Vec<Handoff> = self.handoffs.iter().cloned().map(|d| d.finish(sla)).collect();
        let latest = handoffs.last();
        let mut streams = streams.to_vec();
        streams.sort();
        streams.dedup();
        Some(Conversation {
            id,
            state,
            disposition: latest.and_then(|h| h.disposition),
            platform_disposition: latest.and_then(|h| h.platform_disposition.clone()),
            sla_status: latest.map_or(SlaStatus::NotApplicable, |h| h.sla_status),
            sla_deadline: latest.and_then(|h| h.sla_deadline),
            streams,
            queue: latest.and_then(|h| h.queue.clone()),
            agents: self.agents.clone(),
            started_at,
            escalated_at: latest.and_then(|h| h.requested_at),
            queued_at: latest.and_then(|h| h.queued_at),
            first_attended_at: latest.and_then(|h| h.attended_at),
            closed_at: latest.and_then(|h| h.closed_at),
            wait_seconds: latest.and_then(|h| h.wait_seconds),
            first_response_seconds: latest.and_then(|h| h.first_response_seconds),
            handle_seconds: latest.and_then(|h| h.handle_seconds),
            bot_seconds: self.first_escalation.map(|e| seconds_between(started_at, e)),
            transfers: latest.map_or(0, |h| h.transfers),
            message_counts: self.counts.clone(),
            close_reason: latest.and_then(|h| h.close_reason.clone()),
            attributes: self.attributes.clone(),
            last_seq: extent.last_seq,
            updated_at: extent.last_at,
            handoffs,
        })
    }

    /// One fact, in order.
    fn step(&mut self, input: Input, messages: &mut Vec<Message>) {
        self.first_fact_at.get_or_insert(input.at);
        self.watermark = Some(input.sort_key());
        if let Fact::Message(m) = &input.fact {
            if m.party == Party::Visitor {
                if self.skipping == Some(input.event_id) {
                    return;
                }
                if self.relayed.remove(&input.event_id) {
                    self.skipping = Some(input.event_id);
                    return;
                }
            }
        }
        self.apply(input, messages);
    }
}

/// Who a Bright Pattern party id turned out to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Joined {
    Agent(String),
    Scenario(Option<String>),
}

/// The backend a live platform's own events imply, for handoffs we only learn of from the live side.
fn live_backend(platform: Platform) -> String {
    match platform {
        Platform::AivoLive | Platform::BrightPattern | Platform::Vcc => platform.as_str().to_string(),
        Platform::Ultimate | Platform::Api | Platform::Ledger => String::new(),
    }
}

/// A platform's own disposition value, when it is one we know.
pub(crate) fn platform_disposition(value: &str) -> Option<Disposition> {
    match value.trim().to_ascii_lowercase().as_str() {
        "completed" => Some(Disposition::Completed),
        "lost" => Some(Disposition::Abandoned),
        "missed" => Some(Disposition::Missed),
        _ => None,
    }
}

/// A platform's own SLA value, when it says something we understand.
pub(crate) fn platform_sla(value: &str) -> Option<SlaStatus> {
    let v = value.trim().to_ascii_lowercase();
    if v == "answeredbeforesla" {
        Some(SlaStatus::Met)
    } else if ["after", "breach", "late"].iter().any(|w| v.contains(w)) {
        Some(SlaStatus::Breached)
    } else {
        None
    }
}

/// See [`FoldState::handoff_mark`]: equal marks, equal handoff rows.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffMark(usize, Option<Draft>);

impl HandoffMark {
    /// How many handoffs the state has.
    pub fn count(&self) -> usize {
        self.0
    }
}

/// A handoff being folded, with what the public [`Handoff`] does not carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Draft {
    handoff: Handoff,
    state: HandoffState,
    /// Queue at the first attend: its target is the one the wait is measured against.
    answered_in: Option<String>,
    /// Known platform disposition, applied once the handoff is closed.
    platform_outcome: Option<Disposition>,
    /// Known platform SLA value, overriding the computed one.
    platform_sla: Option<SlaStatus>,
    /// True once a `PlatformOutcome` set `platform_disposition` (a close reason must not replace it).
    outcome_given: bool,
}

impl Draft {
    fn new(backend: String, state: HandoffState) -> Self {
        Draft {
            handoff: Handoff {
                backend,
                queue: None,
                requested_at: None,
                queued_at: None,
                attended_at: None,
                closed_at: None,
                agents: Vec::new(),
                transfers: 0,
                wait_seconds: None,
                first_response_seconds: None,
                handle_seconds: None,
                sla_status: SlaStatus::NotApplicable,
                sla_deadline: None,
                disposition: None,
                platform_disposition: None,
                close_reason: None,
                failure: None,
            },
            state,
            answered_in: None,
            platform_outcome: None,
            platform_sla: None,
            outcome_given: false,
        }
    }

    fn is_open(&self) -> bool {
        !matches!(self.state, HandoffState::Closed | HandoffState::Failed)
    }

    /// A live-side event proves the handoff reached a queue: queued since the escalation when the
    /// queue event never reached us, and on the platform the event came from when none was named.
    fn ensure_queued(&mut self, platform: Platform, at: DateTime<Utc>) {
        if self.handoff.queued_at.is_none() {
            self.handoff.queued_at = Some(self.handoff.requested_at.unwrap_or(at));
        }
        if self.handoff.backend.is_empty() {
            self.handoff.backend = live_backend(platform);
        }
    }

    /// Closes the handoff; a reason the platform gave also stands as its disposition value unless
    /// the platform stated one outright.
    fn close(&mut self, at: DateTime<Utc>, disposition: Disposition, reason: Option<String>, platform_said: bool) {
        self.state = HandoffState::Closed;
        self.handoff.closed_at = Some(at);
        self.handoff.disposition = Some(disposition);
        if platform_said && !self.outcome_given {
            self.handoff.platform_disposition = reason.clone();
        }
        self.handoff.close_reason = reason;
    }

    /// Timers, final disposition and SLA status, once every fact is in.
    fn finish(mut self, sla: &SlaConfig) -> Handoff {
        let h = &mut self.handoff;
        if self.state == HandoffState::Closed {
            if let Some(d) = self.platform_outcome {
                h.disposition = Some(d);
            }
        }
        h.wait_seconds = h.queued_at.zip(h.attended_at).map(|(q, a)| seconds_between(q, a));
        h.handle_seconds = h.attended_at.zip(h.closed_at).map(|(a, c)| seconds_between(a, c));
        h.sla_status = if self.state == HandoffState::Failed {
            SlaStatus::NotApplicable
        } else {
            let queue = self.answered_in.as_deref().or(h.queue.as_deref());
            let target = sla.target_for(queue);
            let computed = computed_sla(h, target as f64, sla);
            h.sla_deadline = (computed == SlaStatus::Pending)
                .then(|| h.queued_at.map(|q| q + chrono::Duration::seconds(target as i64)))
                .flatten();
            self.platform_sla.unwrap_or(computed)
        };
        if h.sla_status != SlaStatus::Pending {
            h.sla_deadline = None;
        }
        self.handoff
    }
}

/// METRICS.md's SLA rule for a handoff that did not fail, before any platform value.
/// Short abandons and the timers are [`super::metrics`]' definitions.
fn computed_sla(h: &Handoff, target: f64, sla: &SlaConfig) -> SlaStatus {
    let Some(queued) = h.queued_at else {
        return SlaStatus::NotApplicable;
    };
    if let Some(attended) = h.attended_at {
        return if seconds_between(queued, attended) <= target {
            SlaStatus::Met
        } else {
            SlaStatus::Breached
        };
    }
    let Some(waited) = unanswered_wait_seconds(h) else {
        return SlaStatus::Pending;
    };
    if is_short_abandon(h, sla) {
        return SlaStatus::NotApplicable;
    }
    match h.disposition {
        Some(Disposition::Abandoned | Disposition::Missed) if waited > target => SlaStatus::Breached,
        _ => SlaStatus::NotApplicable,
    }
}

/// Adds `agent` unless one of the same name is there already (the first seen keeps its details).
fn add_agent(agents: &mut Vec<Agent>, agent: &Agent) {
    if !agents.iter().any(|a| a.name == agent.name) {
        agents.push(agent.clone());
    }
}

fn count(counts: &mut MessageCounts, party: Party) {
    let slot = match party {
        Party::Visitor => &mut counts.visitor,
        Party::Bot => &mut counts.bot,
        Party::Agent => &mut counts.agent,
        Party::System => &mut counts.system,
    };
    *slot = slot.saturating_add(1);
}

impl FoldState {
    /// Only the latest handoff can be open: a new one is opened only when none is.
    fn open(&mut self) -> Option<&mut Draft> {
        self.handoffs.last_mut().filter(|d| d.is_open())
    }

    fn push(&mut self, draft: Draft) -> &mut Draft {
        self.handoffs.push(draft);
        let last = self.handoffs.len() - 1;
        &mut self.handoffs[last]
    }

    /// The open handoff, or an implicit one queued at `at` for a live room we never saw being queued.
    fn open_or_implicit(&mut self, platform: Platform, at: DateTime<Utc>) -> &mut Draft {
        if self.open().is_none() {
            let mut draft = Draft::new(live_backend(platform), HandoffState::Queued);
            draft.handoff.queued_at = Some(at);
            self.push(draft);
        }
        let last = self.handoffs.len() - 1;
        &mut self.handoffs[last]
    }

    fn apply(&mut self, input: Input, messages: &mut Vec<Message>) {
        let at = input.at;
        match input.fact {
            Fact::Message(ref m) => self.message(&input, m, messages),
            Fact::EscalationRequested { .. } => {
                self.first_escalation.get_or_insert(at);
                if self.open().is_none() {
                    let draft = self.push(Draft::new(String::new(), HandoffState::EscalationRequested));
                    draft.handoff.requested_at = Some(at);
                }
            }
            Fact::Queued { backend, queue } => match self.open() {
                Some(d) if d.handoff.queued_at.is_none() => {
                    d.handoff.queued_at = Some(at);
                    d.handoff.backend = backend;
                    d.handoff.queue = queue;
                    d.state = HandoffState::Queued;
                }
                Some(d) => {
                    if d.handoff.backend.is_empty() {
                        d.handoff.backend = backend;
                    }
                    if d.handoff.queue.is_none() {
                        d.handoff.queue = queue;
                    }
                }
                None => {
                    let d = self.push(Draft::new(backend, HandoffState::Queued));
                    d.handoff.queued_at = Some(at);
                    d.handoff.queue = queue;
                }
            },
            Fact::Attended { agent, .. } => {
                let d = self.open_or_implicit(input.platform, at);
                d.ensure_queued(input.platform, at);
                if d.handoff.attended_at.is_none() {
                    d.handoff.attended_at = Some(at);
                    d.answered_in = d.handoff.queue.clone();
                }
                add_agent(&mut d.handoff.agents, &agent);
                d.state = HandoffState::Attended;
                add_agent(&mut self.agents, &agent);
            }
            Fact::Transferred { to_queue, .. } => {
                let d = self.open_or_implicit(input.platform, at);
                d.ensure_queued(input.platform, at);
                d.handoff.transfers = d.handoff.transfers.saturating_add(1);
                if to_queue.is_some() {
                    d.handoff.queue = to_queue;
                }
                d.state = HandoffState::Queued;
            }
            Fact::VisitorLeft => {
                if let Some(d) = self.open() {
                    let disposition = if d.handoff.attended_at.is_some() {
                        Disposition::Completed
                    } else {
                        Disposition::Abandoned
                    };
                    d.close(at, disposition, Some("visitor_left".to_string()), false);
                }
            }
            Fact::Closed { by, reason } => {
                let d = if self.handoffs.is_empty() {
                    self.open_or_implicit(input.platform, at)
                } else {
                    match self.open() {
                        Some(d) => d,
                        None => return,
                    }
                };
                let disposition = if d.handoff.attended_at.is_some() {
                    Disposition::Completed
                } else if by == ClosedBy::Visitor {
                    Disposition::Abandoned
                } else {
                    Disposition::Missed
                };
                d.close(at, disposition, reason, true);
            }
            Fact::PlatformOutcome {
                disposition,
                sla_status,
            } => {
                if let Some(d) = self.handoffs.last_mut() {
                    if let Some(value) = disposition {
                        d.platform_outcome = platform_disposition(&value);
                        d.handoff.platform_disposition = Some(value);
                        d.outcome_given = true;
                    }
                    if let Some(s) = sla_status.as_deref().and_then(platform_sla) {
                        d.platform_sla = Some(s);
                    }
                }
            }
            Fact::HandoffFailed { reason } => {
                if self.open().is_none() {
                    let d = self.push(Draft::new(live_backend(input.platform), HandoffState::Failed));
                    d.handoff.requested_at = Some(at);
                }
                if let Some(d) = self.handoffs.last_mut() {
                    d.state = HandoffState::Failed;
                    d.handoff.disposition = Some(Disposition::Failed);
                    d.handoff.closed_at = Some(at);
                    d.handoff.failure = Some(reason);
                }
            }
            Fact::Attributes(map) => self.attributes.extend(map),
            Fact::Notice { text } => {
                if let Some(d) = self.handoffs.last_mut() {
                    d.handoff.failure = Some(text);
                }
            }
            Fact::AgentLeft { .. }
            | Fact::ScenarioJoined { .. }
            | Fact::VisitorMessageRelayed { .. }
            | Fact::Erased { .. } => {}
        }
    }

    /// Who a line is from, after resolving a Bright Pattern party id.
    fn speaker(&mut self, m: &MessageFact) -> (Party, Option<String>) {
        match (&m.party_id, m.party) {
            (Some(p), Party::Agent | Party::Bot) => match self.parties.get(p) {
                Some(Joined::Agent(name)) => (Party::Agent, Some(name.clone())),
                Some(Joined::Scenario(name)) => (Party::Bot, Some(name.clone().unwrap_or_else(|| p.clone()))),
                // Never joined in what we hold: the parser's own reading of the line stands.
                None => {
                    self.unresolved.insert(p.clone());
                    (m.party, Some(m.author.clone().unwrap_or_else(|| p.clone())))
                }
            },
            _ => (m.party, m.author.clone()),
        }
    }

    fn message(&mut self, input: &Input, m: &MessageFact, messages: &mut Vec<Message>) {
        let (party, author) = self.speaker(m);
        count(&mut self.counts, party);
        if party == Party::Agent && !m.automatic {
            if let Some(d) = self.handoffs.last_mut() {
                let h = &mut d.handoff;
                if let Some(attended) = h.attended_at {
                    let in_handoff = input.at >= attended && h.closed_at.is_none_or(|c| input.at <= c);
                    if h.first_response_seconds.is_none() && in_handoff {
                        h.first_response_seconds = Some(seconds_between(attended, input.at));
                    }
                }
            }
        }
        let mut line = Message {
            seq: input.seq,
            at: input.at,
            party,
            author,
            kind: m.kind,
            text: m.text.clone(),
            buttons: m.buttons.clone(),
            cards: m.cards.clone(),
            url: m.url.clone(),
            platform: input.platform,
            event_id: input.event_id,
        };
        if self.erased.contains(&input.seq) {
            // An author resolved from a party that joined elsewhere is still a name: erased too.
            line.author = None;
            line.text = None;
            line.url = None;
            line.buttons.clear();
            line.cards.clear();
        }
        messages.push(line);
    }
}
