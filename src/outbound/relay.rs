//! Relaying: the relay rules of [`super::plan`] as the write path runs them ([`RelayRules`], planned inside
//! the transaction that appends an event, committed with it), and the sending of what was committed.
//!
//! Besides [`plan_relay`]'s rules the write path plans, in the same transaction:
//! - the bot's `escalate` and `POST /v1/conversations/{id}/handoff`: the synchronous queue command (or, with
//!   no route, the `ledger.queue_failed` note); the handler only waits for that command's outcome
//!   ([`Outbound::escalate_appended`]);
//! - an accepted queue call (`ledger.queue_accepted`, whose link may merge in a live chat an agent already
//!   attended before the call returned): the widget's `escalationSuccess` for that attend.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::clients::{BackendError, Backends, WidgetUpdate};
use super::commands::{command_id, Command, WidgetCommand};
use super::escalation::{escalation_command, escalation_team, NoRoute};
use super::plan::{live_target, plan_relay, ultimate_id, RelayContext, RELAYED_KINDS};
use super::runner::Job;
use super::Outbound;
use crate::config::Config;
use crate::ingest::REDRIVE_HEADER;
use crate::model::{AppendOutcome, Conversation, HandoffState, Message, NewEvent, StoredEvent};
use crate::sources::ledger::CommandRecord;
use crate::sources::{self, aivo_live, bright_pattern, ledger, ultimate};
use crate::store::{RelayPlanner, StoreResult};

/// Kinds the write path plans beyond [`RELAYED_KINDS`] (those of [`plan_relay`]): synchronous escalations
/// and accepted queue calls.
const PLANNED_KINDS: &[&str] = &[ultimate::ESCALATE, ledger::API_HANDOFF, ledger::QUEUE_ACCEPTED];

/// The relay rules as the write path runs them (see [`RelayPlanner`]): inside the transaction that appends
/// an event, on the conversation as that batch leaves it. Pure: routing and the configured backends are
/// read, nothing is called (whether a backend is available is the queue call's own answer).
pub struct RelayRules {
    config: Arc<Config>,
    backends: Backends,
}

impl RelayRules {
    /// The rules for `config` (its routing, its configured backends, `aivo_live.close_path`).
    pub fn new(config: Arc<Config>) -> Result<RelayRules, BackendError> {
        let backends = Backends::from_config(&config)?;
        Ok(RelayRules { config, backends })
    }

    /// The `ledger.command` event recording `command`, triggered by the event `trigger` (its id makes the
    /// command's: the same trigger planned twice records one command), recorded at `at`.
    fn record(
        conversation: &Conversation,
        trigger: Uuid,
        at: chrono::DateTime<chrono::Utc>,
        command: &Command,
    ) -> NewEvent {
        let id = command_id(&trigger.to_string(), &command.action());
        ledger::command(conversation.id, ledger::COMMAND, &command.record(&id), at)
    }

    /// `widgetEscalate`: the queue command (the outcome goes to the widget), or `escalationFailed`.
    fn widget_escalation(&self, event: &StoredEvent, conversation: &Conversation) -> Vec<NewEvent> {
        if conversation.state != HandoffState::EscalationRequested {
            return Vec::new();
        }
        let team = sources::ultimate::team_of(&event.payload);
        match escalation_command(
            &self.config.routing,
            &self.backends,
            team.as_deref(),
            conversation,
            true,
            false,
        ) {
            Ok(command) => vec![Self::record(conversation, event.event_id, event.received_at, &command)],
            Err(NoRoute(reason)) => {
                let failed = ultimate_id(conversation).map(|pcid| Command::Widget {
                    platform_conversation_id: pcid,
                    update: WidgetCommand::from_update(&WidgetUpdate::Failed { text: None }),
                });
                std::iter::once(ledger::queue_failed(conversation.id, "", &reason, event.received_at))
                    .chain(failed.map(|c| Self::record(conversation, event.event_id, event.received_at, &c)))
                    .collect()
            }
        }
    }

    /// The bot's `escalate`, `POST .../handoff`: the synchronous queue command the handler waits for, or the
    /// `ledger.queue_failed` note the handler answers with (no route). Nothing while the conversation is
    /// already with a live team, nor for a redriven delivery (nobody waits for it any more).
    fn synchronous_escalation(&self, event: &StoredEvent, conversation: &Conversation) -> Vec<NewEvent> {
        if matches!(conversation.state, HandoffState::Queued | HandoffState::Attended)
            || event.headers.contains_key(REDRIVE_HEADER)
        {
            return Vec::new();
        }
        let team = escalation_team(&event.kind, &event.payload);
        match escalation_command(
            &self.config.routing,
            &self.backends,
            team.as_deref(),
            conversation,
            false,
            true,
        ) {
            Ok(command) => vec![Self::record(conversation, event.event_id, event.received_at, &command)],
            Err(NoRoute(reason)) => {
                let backend = self
                    .config
                    .routing
                    .resolve(team.as_deref())
                    .map(|r| r.backend.as_str())
                    .unwrap_or_default();
                vec![ledger::queue_failed(
                    conversation.id,
                    backend,
                    &reason,
                    event.received_at,
                )]
            }
        }
    }

    /// An accepted queue call whose link left the conversation attended: the agent attended before the
    /// call returned, so the attend was filed under a conversation of its own and relayed nowhere. Its
    /// relay (`escalationSuccess`) is planned now, under the attend's own command id: when the attend was
    /// relayed itself (it came after the link, in the same batch) this records nothing more.
    fn after_link(event: &StoredEvent, conversation: &Conversation, attends: &[StoredEvent]) -> Vec<NewEvent> {
        let Some(attend) = attends.iter().find(|e| is_agent_attend(e)) else {
            return Vec::new();
        };
        let ctx = RelayContext {
            conversation,
            line: None,
            target: None,
            aivo_close: false,
        };
        plan_relay(&attend.kind, &attend.payload, ctx)
            .iter()
            .map(|c| Self::record(conversation, attend.event_id, event.received_at, c))
            .collect()
    }
}

/// Whether an event is an agent's attend (a Bright Pattern scenario joining is not).
fn is_agent_attend(event: &StoredEvent) -> bool {
    event.kind == aivo_live::ATTENDED
        || (event.kind == bright_pattern::PARTY_JOINED
            && event.payload.get("type").and_then(Value::as_str) != Some("scenario"))
}

impl RelayPlanner for RelayRules {
    fn relays(&self, kind: &str) -> bool {
        RELAYED_KINDS.contains(&kind) || PLANNED_KINDS.contains(&kind)
    }

    fn reads_attends(&self, event: &StoredEvent, conversation: &Conversation) -> bool {
        event.kind == ledger::QUEUE_ACCEPTED
            && conversation.state == HandoffState::Attended
            && ultimate_id(conversation).is_some()
    }

    /// The visitor's side goes to the live chat of the latest queue call.
    fn reads_queue_call(&self, kind: &str) -> bool {
        matches!(
            kind,
            ultimate::WIDGET_MESSAGE | ultimate::WIDGET_END_SESSION | ledger::API_MESSAGE
        )
    }

    fn plan(
        &self,
        event: &StoredEvent,
        conversation: &Conversation,
        lines: &[Message],
        queued: Option<&StoredEvent>,
        attends: &[StoredEvent],
    ) -> Vec<NewEvent> {
        let kind = event.kind.as_str();
        match kind {
            ultimate::WIDGET_ESCALATE => return self.widget_escalation(event, conversation),
            ultimate::ESCALATE | ledger::API_HANDOFF => return self.synchronous_escalation(event, conversation),
            ledger::QUEUE_ACCEPTED => return Self::after_link(event, conversation, attends),
            _ => {}
        }
        let needs_line = matches!(
            kind,
            aivo_live::MESSAGE_TO_CLIENT | bright_pattern::MESSAGE | bright_pattern::FILE
        );
        let needs_target = self.reads_queue_call(kind);
        let line = if needs_line && conversation.state == HandoffState::Attended {
            lines.iter().find(|m| m.event_id == event.event_id)
        } else {
            None
        };
        let target = if needs_target {
            live_target(
                queued.map(std::slice::from_ref).unwrap_or_default(),
                &conversation.streams,
            )
        } else {
            None
        };
        let ctx = RelayContext {
            conversation,
            line,
            target: target.as_ref(),
            aivo_close: !self.config.aivo_live.close_path.trim().is_empty(),
        };
        plan_relay(kind, &event.payload, ctx)
            .iter()
            .map(|c| Self::record(conversation, event.event_id, event.received_at, c))
            .collect()
    }
}

impl Outbound {
    /// Sends what the write path committed for newly appended events: the commands planned in the
    /// transaction that appended them ([`AppendOutcome::relays`]). A duplicate has none (it was relayed
    /// when first appended), nor has a newer version of an event. Only dispatches: never waits for a
    /// backend. Should this never run (a crash right after the commit), the start-up recovery sends them.
    pub async fn relay(&self, outcomes: &[AppendOutcome]) {
        let committed = match self.committed(outcomes).await {
            Ok(events) => events,
            Err(e) => {
                // Recorded: the start-up recovery sends them.
                tracing::error!(error = %e, "reading committed commands failed");
                return;
            }
        };
        for event in &committed {
            if let Some((conversation_id, record, command)) = command_of(event) {
                self.dispatch(Job {
                    conversation_id,
                    command_id: record.command_id,
                    command,
                    reply: None,
                });
            }
        }
    }

    /// The events the write path committed for `outcomes` ([`AppendOutcome::relays`]), in log order.
    pub(super) async fn committed(&self, outcomes: &[AppendOutcome]) -> StoreResult<Vec<StoredEvent>> {
        let seqs: Vec<i64> = outcomes.iter().flat_map(|o| o.relays.iter().copied()).collect();
        let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Vec::new());
        };
        let span = u32::try_from(last - first + 1).unwrap_or(u32::MAX);
        let mut events = self.inner.store.events_after(first - 1, span).await?;
        events.retain(|e| seqs.contains(&e.seq));
        Ok(events)
    }
}

/// The command a `ledger.command` event records, with the conversation it belongs to; None for any other
/// event, or a record this version cannot read.
pub(super) fn command_of(event: &StoredEvent) -> Option<(Uuid, CommandRecord, Command)> {
    if event.kind != ledger::COMMAND {
        return None;
    }
    let record = serde_json::from_value::<CommandRecord>(event.payload.clone()).ok()?;
    let command = Command::from_record(&record)?;
    let conversation_id = event
        .conversation_id
        .or_else(|| event.external_id.parse().ok())
        .unwrap_or_else(Uuid::nil);
    Some((conversation_id, record, command))
}
