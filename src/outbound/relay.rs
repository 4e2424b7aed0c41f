//! Relaying: reads what the relay rules of [`super::plan`] need (the conversation, the transcript line,
//! the live chat) for each newly appended event, and submits the commands they call for.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::clients::WidgetUpdate;
use super::commands::{command_id, Command, WidgetCommand};
use super::escalation::{escalation_command, NoRoute};
use super::plan::{live_target, plan_relay, ultimate_id, RelayContext, RELAYED_KINDS};
use super::Outbound;
use crate::model::{AppendOutcome, Conversation, HandoffState, NewEvent, Party};
use crate::sources::{self, aivo_live, bright_pattern, ledger, ultimate};

impl Outbound {
    /// Turns newly appended events into commands (duplicates are skipped: they were relayed when first
    /// appended). Only records and dispatches: never waits for a backend.
    pub async fn relay(&self, events: &[NewEvent], outcomes: &[AppendOutcome]) {
        for (event, outcome) in events.iter().zip(outcomes) {
            if outcome.duplicate || !RELAYED_KINDS.contains(&event.kind.as_str()) {
                continue;
            }
            let Some(conversation_id) = outcome.conversation_id else {
                continue;
            };
            let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
            if let Err(e) = self
                .relay_one(conversation_id, outcome.event_id, outcome.seq, &event.kind, &payload)
                .await
            {
                tracing::error!(error = %e, event_id = %outcome.event_id, kind = %event.kind, "relay failed");
            }
        }
    }

    async fn relay_one(
        &self,
        conversation_id: Uuid,
        event_id: Uuid,
        seq: i64,
        kind: &str,
        payload: &Value,
    ) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let Some(conversation) = store.get_conversation(conversation_id).await? else {
            return Ok(());
        };
        let trigger = event_id.to_string();
        if kind == ultimate::WIDGET_ESCALATE {
            if conversation.state != HandoffState::EscalationRequested {
                return Ok(());
            }
            let team = sources::ultimate::team_of(payload);
            let commands = match escalation_command(
                &self.inner.config.routing,
                &self.inner.backends,
                team.as_deref(),
                &conversation,
                true,
                false,
            ) {
                Ok(command) => vec![(command_id(&trigger, &command.action()), command)],
                Err(NoRoute(reason)) => {
                    self.append_durably(vec![ledger::queue_failed(conversation.id, "", &reason, Utc::now())])
                        .await;
                    let failed = ultimate_id(&conversation).map(|pcid| Command::Widget {
                        platform_conversation_id: pcid,
                        update: WidgetCommand::from_update(&WidgetUpdate::Failed { text: None }),
                    });
                    failed
                        .into_iter()
                        .map(|c| (command_id(&trigger, &c.action()), c))
                        .collect()
                }
            };
            self.submit(conversation.id, commands).await?;
            return Ok(());
        }
        let needs_line = matches!(
            kind,
            aivo_live::MESSAGE_TO_CLIENT | bright_pattern::MESSAGE | bright_pattern::FILE
        );
        let needs_target = matches!(
            kind,
            ultimate::WIDGET_MESSAGE | ultimate::WIDGET_END_SESSION | ledger::API_MESSAGE
        );
        let line = if needs_line && conversation.state == HandoffState::Attended {
            // Only the event's own lines: reading the whole transcript would make a relay cost the
            // length of its conversation.
            store
                .event_lines(conversation.id, seq)
                .await?
                .into_iter()
                .find(|m| m.event_id == event_id)
        } else {
            None
        };
        let target = if needs_target {
            let events = store.conversation_events(conversation.id).await?.unwrap_or_default();
            live_target(&events, &conversation.streams)
        } else {
            None
        };
        let ctx = RelayContext {
            conversation: &conversation,
            line: line.as_ref(),
            target: target.as_ref(),
            aivo_close: !self.inner.config.aivo_live.close_path.trim().is_empty(),
        };
        let commands: Vec<(String, Command)> = plan_relay(kind, payload, ctx)
            .into_iter()
            .map(|c| (command_id(&trigger, &c.action()), c))
            .collect();
        if !commands.is_empty() {
            self.submit(conversation.id, commands).await?;
        }
        Ok(())
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

    /// Relays a message posted through the API to the live agent, when handed off.
    pub(crate) async fn relay_api_message(
        &self,
        conversation: &Conversation,
        party: Party,
        text: &str,
        outcomes: &[AppendOutcome],
    ) {
        let Some(outcome) = outcomes.first() else { return };
        if outcome.duplicate {
            return;
        }
        let conversation_id = outcome.conversation_id.unwrap_or(conversation.id);
        let payload = json!({"party": party, "text": text});
        if let Err(e) = self
            .relay_one(
                conversation_id,
                outcome.event_id,
                outcome.seq,
                ledger::API_MESSAGE,
                &payload,
            )
            .await
        {
            tracing::error!(error = %e, "relaying an API message failed");
        }
    }
}
