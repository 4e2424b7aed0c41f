//! Relaying: the relay rules of [`super::plan`] as the write path runs them ([`RelayRules`], planned inside
//! the transaction that appends an event, committed with it), and the sending of what was committed.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::clients::{BackendError, Backends, WidgetUpdate};
use super::commands::{command_id, Command, WidgetCommand};
use super::escalation::{escalation_command, NoRoute};
use super::plan::{live_target, plan_relay, ultimate_id, RelayContext, RELAYED_KINDS};
use super::runner::Job;
use super::Outbound;
use crate::config::Config;
use crate::model::{AppendOutcome, Conversation, HandoffState, Message, NewEvent, Party, StoredEvent};
use crate::sources::ledger::CommandRecord;
use crate::sources::{self, aivo_live, bright_pattern, ledger, ultimate};
use crate::store::RelayPlanner;

/// The relay rules as the write path runs them (see [`RelayPlanner`]): inside the transaction that appends
/// an event, on the conversation as that batch leaves it. Pure: routing and the configured backends are
/// read, nothing is called.
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

    /// The `ledger.command` event recording `command`, triggered by the event `trigger`.
    fn record(conversation: &Conversation, trigger: &StoredEvent, command: &Command) -> NewEvent {
        let id = command_id(&trigger.event_id.to_string(), &command.action());
        ledger::command(
            conversation.id,
            ledger::COMMAND,
            &command.record(&id),
            trigger.received_at,
        )
    }
}

impl RelayPlanner for RelayRules {
    fn relays(&self, kind: &str) -> bool {
        RELAYED_KINDS.contains(&kind)
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
    ) -> Vec<NewEvent> {
        let kind = event.kind.as_str();
        if kind == ultimate::WIDGET_ESCALATE {
            if conversation.state != HandoffState::EscalationRequested {
                return Vec::new();
            }
            let team = sources::ultimate::team_of(&event.payload);
            return match escalation_command(
                &self.config.routing,
                &self.backends,
                team.as_deref(),
                conversation,
                true,
                false,
            ) {
                Ok(command) => vec![Self::record(conversation, event, &command)],
                Err(NoRoute(reason)) => {
                    let failed = ultimate_id(conversation).map(|pcid| Command::Widget {
                        platform_conversation_id: pcid,
                        update: WidgetCommand::from_update(&WidgetUpdate::Failed { text: None }),
                    });
                    std::iter::once(ledger::queue_failed(conversation.id, "", &reason, event.received_at))
                        .chain(failed.map(|c| Self::record(conversation, event, &c)))
                        .collect()
                }
            };
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
            .map(|c| Self::record(conversation, event, c))
            .collect()
    }
}

impl Outbound {
    /// Sends what the write path committed for newly appended events: the commands planned in the
    /// transaction that appended them ([`AppendOutcome::relays`]). A duplicate has none (it was relayed
    /// when first appended), nor has a newer version of an event. Only dispatches: never waits for a
    /// backend. Should this never run (a crash right after the commit), the start-up recovery sends them.
    pub async fn relay(&self, _events: &[NewEvent], outcomes: &[AppendOutcome]) {
        let seqs: Vec<i64> = outcomes.iter().flat_map(|o| o.relays.iter().copied()).collect();
        let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) else {
            return;
        };
        let span = u32::try_from(last - first + 1).unwrap_or(u32::MAX);
        let events = match self.inner.store.events_after(first - 1, span).await {
            Ok(events) => events,
            Err(e) => {
                // Recorded: the start-up recovery sends them.
                tracing::error!(error = %e, "reading committed commands failed");
                return;
            }
        };
        for event in events
            .iter()
            .filter(|e| seqs.contains(&e.seq) && e.kind == ledger::COMMAND)
        {
            let Ok(record) = serde_json::from_value::<CommandRecord>(event.payload.clone()) else {
                continue;
            };
            let Some(command) = Command::from_record(&record) else {
                continue;
            };
            let conversation_id = event
                .conversation_id
                .or_else(|| event.external_id.parse().ok())
                .unwrap_or_else(Uuid::nil);
            self.dispatch(Job {
                conversation_id,
                command_id: record.command_id,
                command,
                reply: None,
            });
        }
    }

    /// The race: an agent attended before the queue call returned, so the attend was filed under a
    /// conversation of its own and relayed nowhere. Now that the link merged them, tell the widget.
    pub(super) async fn after_link(&self, conversation_id: Uuid) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let Some(conversation) = store.get_conversation(conversation_id).await? else {
            return Ok(());
        };
        if conversation.state != HandoffState::Attended || ultimate_id(&conversation).is_none() {
            return Ok(());
        }
        let events = store.conversation_events(conversation.id).await?.unwrap_or_default();
        let attend = events
            .iter()
            .filter(|e| {
                e.kind == aivo_live::ATTENDED
                    || (e.kind == bright_pattern::PARTY_JOINED
                        && e.payload.get("type").and_then(Value::as_str) != Some("scenario"))
            })
            .max_by_key(|e| e.seq);
        let Some(attend) = attend else { return Ok(()) };
        let ctx = RelayContext {
            conversation: &conversation,
            line: None,
            target: None,
            aivo_close: false,
        };
        // Same trigger, same command id as the attend's own relay: whichever runs second records nothing.
        let trigger = attend.event_id.to_string();
        let commands: Vec<(String, Command)> = plan_relay(&attend.kind, &attend.payload, ctx)
            .into_iter()
            .map(|c| (command_id(&trigger, &c.action()), c))
            .collect();
        self.submit(conversation.id, commands).await?;
        Ok(())
    }

    /// Relays a message posted through the API to the live agent, when handed off: sends the commands
    /// its append committed.
    pub(crate) async fn relay_api_message(
        &self,
        _conversation: &Conversation,
        _party: Party,
        _text: &str,
        outcomes: &[AppendOutcome],
    ) {
        self.relay(&[], outcomes).await;
    }
}
