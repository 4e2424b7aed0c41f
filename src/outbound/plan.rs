//! The relay rules, pure: which outbound commands a newly appended event calls for, given the
//! conversation it landed in. No I/O; [`super::relay`] reads what a rule needs and submits the result.
//!
//! Relay rules (each command is a `ledger.command` recorded before it is attempted):
//! - `widgetEscalate` -> queue with the routed backend, then `escalationQueueUpdate` (or `escalationFailed`).
//! - Aivo `attended`, Bright Pattern agent `party_joined` -> `escalationSuccess` (agent name). When the
//!   agent attended before the queue call returned (the race), it is sent when the link is made.
//! - Aivo `messageToClient` and Bright Pattern agent messages -> widget `message`, only once attended (the
//!   widget takes messages only after `escalationSuccess`). Aivo `source: trigger` messages are automatic
//!   texts for the visitor (greetings, inactivity warnings): they are relayed too, without an agent name,
//!   under the same rule; a trigger while still queued is recorded only.
//! - Aivo `transfer`, Bright Pattern `queued` status -> `escalationQueueUpdate`; Bright Pattern `failed`
//!   status -> `escalationFailed`.
//! - Aivo `close`, Bright Pattern `ended` / inactivity timeout -> `agentDisconnect`.
//! - `widgetMessage` and API visitor messages, while handed off -> the live agent.
//! - `widgetEndSession` -> end the Bright Pattern chat, or the Aivo one when `aivo_live.close_path` is set.
//!

use serde_json::Value;

use super::clients::WidgetUpdate;
use super::commands::{Command, LiveTarget, WidgetCommand};
use crate::model::{Backend, Conversation, HandoffState, Message, Party, Platform, StoredEvent, StreamKey};
use crate::sources::ledger::{self, QueueAccepted};
use crate::sources::{self, aivo_live, bright_pattern, ultimate};

/// The Ultimate `platformConversationId` of a conversation, when it has one.
pub fn ultimate_id(conversation: &Conversation) -> Option<String> {
    conversation
        .streams
        .iter()
        .find(|s| s.platform == Platform::Ultimate && !s.external_id.is_empty())
        .map(|s| s.external_id.clone())
}

/// The live chat a conversation was last handed to: the latest accepted queue call, else a live stream.
pub fn live_target(events: &[StoredEvent], streams: &[StreamKey]) -> Option<LiveTarget> {
    let accepted = events
        .iter()
        .filter(|e| e.kind == ledger::QUEUE_ACCEPTED)
        .max_by_key(|e| e.seq)
        .and_then(|e| serde_json::from_value::<QueueAccepted>(e.payload.clone()).ok());
    if let Some((backend, q)) = accepted.and_then(|q| Some((q.backend.parse::<Backend>().ok()?, q))) {
        return Some(LiveTarget {
            backend,
            live_id: q.live_id,
        });
    }
    streams.iter().rev().find_map(|s| {
        Backend::of_platform(s.platform).map(|backend| LiveTarget {
            backend,
            live_id: s.external_id.clone(),
        })
    })
}

fn is_open(state: HandoffState) -> bool {
    matches!(
        state,
        HandoffState::EscalationRequested | HandoffState::Queued | HandoffState::Attended
    )
}

/// The agent an attend event names: Aivo `data.agent`, Bright Pattern `display_name` or first and last name.
pub fn agent_name(payload: &Value) -> Option<String> {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let aivo = payload.get("data").and_then(|d| d.get("agent"));
    text(aivo.and_then(|a| a.get("name")))
        .or_else(|| text(aivo.and_then(|a| a.get("nickname"))))
        .or_else(|| text(payload.get("display_name")))
        .or_else(|| {
            let parts: Vec<String> = [payload.get("first_name"), payload.get("last_name")]
                .into_iter()
                .filter_map(text)
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
}

/// Bright Pattern's `ewt` (seconds, number or string) as whole minutes, rounded up.
pub fn ewt_minutes(value: Option<&Value>) -> Option<u32> {
    let seconds = value.and_then(sources::number_or_string)?;
    u32::try_from((seconds.max(0) + 59) / 60).ok()
}

/// What a relay needs to know about the conversation after the event was appended.
#[derive(Debug, Clone, Copy)]
pub struct RelayContext<'a> {
    /// The conversation.
    pub conversation: &'a Conversation,
    /// The transcript line the event became, when it became one.
    pub line: Option<&'a Message>,
    /// The live chat, when known.
    pub target: Option<&'a LiveTarget>,
    /// Whether `aivo_live.close_path` is configured.
    pub aivo_close: bool,
}

/// Kinds of events that can call for an outbound command: every other event skips the relay's reads
/// (keeps the webhook path free of work for the events that never relay).
pub const RELAYED_KINDS: &[&str] = &[
    ultimate::WIDGET_ESCALATE,
    ultimate::WIDGET_MESSAGE,
    ultimate::WIDGET_END_SESSION,
    ledger::API_MESSAGE,
    aivo_live::ATTENDED,
    aivo_live::MESSAGE_TO_CLIENT,
    aivo_live::TRANSFER,
    aivo_live::CLOSE,
    bright_pattern::PARTY_JOINED,
    bright_pattern::MESSAGE,
    bright_pattern::FILE,
    bright_pattern::STATUS,
    bright_pattern::ENDED,
    bright_pattern::INACTIVITY_TIMEOUT,
];

/// The commands a newly appended event calls for (escalations excepted: they need routing and I/O).
pub fn plan_relay(kind: &str, payload: &Value, ctx: RelayContext<'_>) -> Vec<Command> {
    let c = ctx.conversation;
    let pcid = ultimate_id(c);
    let widget = |update: WidgetUpdate| {
        pcid.clone().map(|pcid| Command::Widget {
            platform_conversation_id: pcid,
            update: WidgetCommand::from_update(&update),
        })
    };
    let last_agent = || c.agents.last().map(|a| a.name.clone());
    let command = match kind {
        ultimate::WIDGET_MESSAGE | ledger::API_MESSAGE if is_open(c.state) => {
            let visitor =
                kind != ledger::API_MESSAGE || payload.get("party").and_then(Value::as_str) == Some("visitor");
            let text = if kind == ledger::API_MESSAGE {
                payload.get("text").and_then(Value::as_str)
            } else {
                payload.get("data").and_then(|d| d.get("text")).and_then(Value::as_str)
            };
            match text.filter(|t| !t.trim().is_empty()) {
                Some(text) if visitor => Some(Command::VisitorMessage {
                    text: text.to_string(),
                    target: ctx.target.cloned(),
                }),
                _ => None,
            }
        }
        ultimate::WIDGET_END_SESSION => {
            // The visitor's leaving closed the latest handoff just now: the live chat is still open.
            let closed_by_visitor = c
                .handoffs
                .last()
                .is_some_and(|h| h.close_reason.as_deref() == Some("visitor_left"));
            let aivo_without_close = ctx.target.is_some_and(|t| t.backend == Backend::AivoLive) && !ctx.aivo_close;
            (closed_by_visitor && !aivo_without_close).then(|| Command::EndChat {
                target: ctx.target.cloned(),
            })
        }
        aivo_live::ATTENDED if c.state == HandoffState::Attended => widget(WidgetUpdate::Success {
            agent: agent_name(payload).or_else(last_agent).unwrap_or_default(),
        }),
        bright_pattern::PARTY_JOINED
            if c.state == HandoffState::Attended && payload.get("type").and_then(Value::as_str) != Some("scenario") =>
        {
            widget(WidgetUpdate::Success {
                agent: agent_name(payload).or_else(last_agent).unwrap_or_default(),
            })
        }
        aivo_live::MESSAGE_TO_CLIENT | bright_pattern::MESSAGE | bright_pattern::FILE
            if c.state == HandoffState::Attended =>
        {
            match ctx.line {
                Some(line)
                    if line.party == Party::Agent
                        || (line.party == Party::System && kind == aivo_live::MESSAGE_TO_CLIENT) =>
                {
                    let text = line.text.clone().filter(|t| !t.is_empty()).or_else(|| line.url.clone());
                    text.and_then(|text| {
                        widget(WidgetUpdate::Message {
                            agent: if line.party == Party::Agent {
                                line.author.clone()
                            } else {
                                None
                            },
                            text,
                        })
                    })
                }
                _ => None,
            }
        }
        aivo_live::TRANSFER => widget(WidgetUpdate::QueueUpdate {
            queue_position: None,
            waiting_minutes: None,
        }),
        bright_pattern::STATUS => match payload.get("state").and_then(Value::as_str) {
            Some("queued") => widget(WidgetUpdate::QueueUpdate {
                queue_position: None,
                waiting_minutes: ewt_minutes(payload.get("ewt")),
            }),
            Some("failed") => widget(WidgetUpdate::Failed { text: None }),
            _ => None,
        },
        aivo_live::CLOSE | bright_pattern::ENDED | bright_pattern::INACTIVITY_TIMEOUT => {
            widget(WidgetUpdate::AgentDisconnect { agent: last_agent() })
        }
        _ => None,
    };
    command.into_iter().collect()
}
