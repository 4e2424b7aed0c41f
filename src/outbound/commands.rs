//! The command vocabulary of the outbox: what the ledger asks a platform to do, in the self-contained
//! form it is recorded in the log (`ledger.command` before the attempt, `ledger.command_result` after),
//! so a restart can re-send it. What running a command does lives in [`super::runner`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::clients::WidgetUpdate;
use crate::model::{Backend, LEDGER_NAMESPACE};
use crate::sources::ledger::CommandRecord;

/// How a command ended, as recorded in its `ledger.command_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded.
    Ok,
    /// The backend refused (4xx, unreadable answer), or the command cannot be sent; not retried.
    Failed,
    /// Transient failures until `outbox.max_attempts` ran out.
    GaveUp,
}

impl Outcome {
    /// The recorded word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live chat a command goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveTarget {
    /// Which live platform holds the chat.
    pub backend: Backend,
    /// Aivo `conversationId` / Bright Pattern `chat_id`.
    pub live_id: String,
}

/// An update for the visitor's Ultimate widget, in a form that can be stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WidgetCommand {
    /// `escalationQueueUpdate`, `escalationSuccess`, `message`, `escalationFailed`, `agentDisconnect`.
    pub event_type: String,
    /// Agent's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Place in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Expected wait, minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_minutes: Option<u32>,
}

impl WidgetCommand {
    /// The stored form of an update.
    pub fn from_update(update: &WidgetUpdate) -> WidgetCommand {
        let mut c = WidgetCommand {
            event_type: update.event_type().to_string(),
            agent: None,
            text: None,
            queue_position: None,
            waiting_minutes: None,
        };
        match update {
            WidgetUpdate::QueueUpdate {
                queue_position,
                waiting_minutes,
            } => {
                c.queue_position = *queue_position;
                c.waiting_minutes = *waiting_minutes;
            }
            WidgetUpdate::Success { agent } => c.agent = Some(agent.clone()),
            WidgetUpdate::Message { agent, text } => {
                c.agent = agent.clone();
                c.text = Some(text.clone());
            }
            WidgetUpdate::Failed { text } => c.text = text.clone(),
            WidgetUpdate::AgentDisconnect { agent } => c.agent = agent.clone(),
        }
        c
    }

    /// The update to send; None for an event type this version does not know.
    pub fn to_update(&self) -> Option<WidgetUpdate> {
        Some(match self.event_type.as_str() {
            "escalationQueueUpdate" => WidgetUpdate::QueueUpdate {
                queue_position: self.queue_position,
                waiting_minutes: self.waiting_minutes,
            },
            "escalationSuccess" => WidgetUpdate::Success {
                agent: self.agent.clone().unwrap_or_default(),
            },
            "message" => WidgetUpdate::Message {
                agent: self.agent.clone(),
                text: self.text.clone()?,
            },
            "escalationFailed" => WidgetUpdate::Failed {
                text: self.text.clone(),
            },
            "agentDisconnect" => WidgetUpdate::AgentDisconnect {
                agent: self.agent.clone(),
            },
            _ => return None,
        })
    }
}

/// One outbound command, self-contained so that it can be re-sent from the log after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Queue the conversation with a live backend.
    Queue {
        /// The routed live backend.
        backend: Backend,
        /// Team the route was chosen for.
        #[serde(default)]
        team: Option<String>,
        /// Aivo group ids.
        #[serde(default)]
        groups: Vec<i64>,
        /// The visitor's stable id (Ultimate `platformConversationId`).
        visitor_id: String,
        /// Attributes collected by the bot when the command was recorded.
        #[serde(default)]
        attributes: BTreeMap<String, Value>,
        /// Ultimate `platformConversationId` to tell the outcome to (widget escalations).
        #[serde(default)]
        notify_widget: Option<String>,
        /// A synchronous `escalate`: one attempt, the bot waits for the answer.
        #[serde(default)]
        synchronous: bool,
    },
    /// Show an update in the visitor's widget.
    Widget {
        /// Ultimate `platformConversationId`.
        platform_conversation_id: String,
        /// The update.
        update: WidgetCommand,
    },
    /// Pass a visitor's text to the live agent.
    VisitorMessage {
        /// The text.
        text: String,
        /// Where to; resolved when sent when the live chat was not known yet.
        #[serde(default)]
        target: Option<LiveTarget>,
    },
    /// End the live chat (the visitor left).
    EndChat {
        /// Which chat; resolved when sent when not known yet.
        #[serde(default)]
        target: Option<LiveTarget>,
    },
}

impl Command {
    /// The `action` recorded with the command: what it does, readable by support tooling.
    pub fn action(&self) -> String {
        match self {
            Command::Queue { backend, .. } => format!("{backend}_queue"),
            Command::Widget { update, .. } => format!("widget_{}", snake_case(&update.event_type)),
            Command::VisitorMessage { .. } => "visitor_message".to_string(),
            Command::EndChat { .. } => "end_chat".to_string(),
        }
    }

    /// The outbound backend it calls (the `backend` label of the outbox metrics).
    pub fn backend(&self) -> &'static str {
        match self {
            Command::Queue { backend, .. } => backend.as_str(),
            Command::Widget { .. } => "ultimate",
            Command::VisitorMessage { target, .. } | Command::EndChat { target } => {
                target.as_ref().map_or("unresolved", |t| t.backend.as_str())
            }
        }
    }

    /// The `ledger.command` payload for this command.
    pub fn record(&self, command_id: &str) -> CommandRecord {
        CommandRecord {
            command_id: command_id.to_string(),
            action: self.action(),
            outcome: None,
            detail: None,
            body: serde_json::to_value(self).ok(),
            retry_of: None,
        }
    }

    /// Reads a command back from its `ledger.command` payload.
    pub fn from_record(record: &CommandRecord) -> Option<Command> {
        record.body.clone().and_then(|body| serde_json::from_value(body).ok())
    }
}

/// `escalationQueueUpdate` -> `escalation_queue_update`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A command's id: derived from what triggered it, so that the same trigger handled twice (a race, a
/// redelivery, a restart) records one command.
pub fn command_id(trigger: &str, action: &str) -> String {
    Uuid::new_v5(&LEDGER_NAMESPACE, format!("command:{trigger}:{action}").as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_round_trip_through_their_record() {
        let commands = [
            Command::Queue {
                backend: Backend::AivoLive,
                team: Some("sales".into()),
                groups: vec![2179],
                visitor_id: "pc-1".into(),
                attributes: BTreeMap::from([("Ticket".to_string(), json!(2024))]),
                notify_widget: Some("pc-1".into()),
                synchronous: false,
            },
            Command::Widget {
                platform_conversation_id: "pc-1".into(),
                update: WidgetCommand::from_update(&WidgetUpdate::Success { agent: "Ana".into() }),
            },
            Command::VisitorMessage {
                text: "hi".into(),
                target: Some(LiveTarget {
                    backend: Backend::BrightPattern,
                    live_id: "chat-1".into(),
                }),
            },
            Command::EndChat { target: None },
        ];
        let actions: Vec<String> = commands.iter().map(Command::action).collect();
        assert_eq!(
            actions,
            vec![
                "aivo_live_queue",
                "widget_escalation_success",
                "visitor_message",
                "end_chat"
            ]
        );
        for c in commands {
            let record = c.record("id-1");
            assert_eq!(record.command_id, "id-1");
            assert_eq!(Command::from_record(&record), Some(c));
        }
    }

    #[test]
    fn widget_commands_convert_both_ways() {
        let updates = [
            WidgetUpdate::QueueUpdate {
                queue_position: Some(2),
                waiting_minutes: Some(3),
            },
            WidgetUpdate::Success { agent: "Ana".into() },
            WidgetUpdate::Message {
                agent: None,
                text: "hello".into(),
            },
            WidgetUpdate::Failed { text: None },
            WidgetUpdate::AgentDisconnect {
                agent: Some("Ana".into()),
            },
        ];
        for u in updates {
            assert_eq!(WidgetCommand::from_update(&u).to_update(), Some(u));
        }
        let unknown = WidgetCommand {
            event_type: "wave".into(),
            agent: None,
            text: None,
            queue_position: None,
            waiting_minutes: None,
        };
        assert_eq!(unknown.to_update(), None);
    }

    #[test]
    fn command_ids_are_stable_per_trigger_and_action() {
        assert_eq!(command_id("e1", "a"), command_id("e1", "a"));
        assert_ne!(command_id("e1", "a"), command_id("e1", "b"));
        assert_ne!(command_id("e1", "a"), command_id("e2", "a"));
    }
}
