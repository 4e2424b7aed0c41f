//! Ultimate (Zendesk AI agents) widget escalation API: agent-side updates to the visitor's widget, and visitor
//! text back to the bot. The key goes raw in `Authorization`; every body value is a string.

use serde_json::{Map, Value};

use super::{classify_status, join_url, BackendError, ResponseCap, Transport};
use crate::config::UltimateConfig;

/// An agent-side update for the visitor's widget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WidgetUpdate {
    /// Still waiting (`escalationQueueUpdate`).
    QueueUpdate {
        /// Place in the queue.
        queue_position: Option<u32>,
        /// Expected wait, minutes.
        waiting_minutes: Option<u32>,
    },
    /// An agent took the chat (`escalationSuccess`).
    Success {
        /// Agent's name.
        agent: String,
    },
    /// An agent's message (`message`; only after `escalationSuccess`).
    Message {
        /// Agent's name.
        agent: Option<String>,
        /// Text.
        text: String,
    },
    /// The hand-over failed (`escalationFailed`).
    Failed {
        /// Text shown to the visitor.
        text: Option<String>,
    },
    /// The agent left (`agentDisconnect`).
    AgentDisconnect {
        /// Agent's name.
        agent: Option<String>,
    },
}

impl WidgetUpdate {
    /// The widget API's `eventType`.
    pub fn event_type(&self) -> &'static str {
        match self {
            WidgetUpdate::QueueUpdate { .. } => "escalationQueueUpdate",
            WidgetUpdate::Success { .. } => "escalationSuccess",
            WidgetUpdate::Message { .. } => "message",
            WidgetUpdate::Failed { .. } => "escalationFailed",
            WidgetUpdate::AgentDisconnect { .. } => "agentDisconnect",
        }
    }
}

/// The exact `send-message-to-widget` body: string values, absent keys omitted.
pub(crate) fn widget_body(platform_conversation_id: &str, update: &WidgetUpdate) -> Value {
    let mut body = Map::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            body.insert(key.into(), Value::String(value));
        }
    };
    put("platformConversationId", Some(platform_conversation_id.to_owned()));
    put("eventType", Some(update.event_type().to_owned()));
    match update {
        WidgetUpdate::QueueUpdate {
            queue_position,
            waiting_minutes,
        } => {
            put("queuePosition", queue_position.map(|p| p.to_string()));
            put("waitingTime", waiting_minutes.map(|m| m.to_string()));
        }
        WidgetUpdate::Success { agent } => put("agent", Some(agent.clone())),
        WidgetUpdate::Message { agent, text } => {
            put("agent", agent.clone());
            put("text", Some(text.clone()));
        }
        WidgetUpdate::Failed { text } => put("text", text.clone()),
        WidgetUpdate::AgentDisconnect { agent } => put("agent", agent.clone()),
    }
    Value::Object(body)
}

/// The exact `converse/chat` body.
pub(crate) fn bot_body(platform_conversation_id: &str, event_type: &str, text: Option<&str>) -> Value {
    let mut body = Map::new();
    body.insert(
        "platformConversationId".into(),
        Value::String(platform_conversation_id.into()),
    );
    body.insert("eventType".into(), Value::String(event_type.into()));
    if let Some(text) = text {
        body.insert("text".into(), Value::String(text.into()));
    }
    Value::Object(body)
}

/// The Ultimate API over HTTP.
#[derive(Debug, Clone)]
pub struct UltimateWidgetClient {
    transport: Transport,
    config: UltimateConfig,
}

impl ResponseCap for UltimateWidgetClient {
    fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }
}

impl UltimateWidgetClient {
    /// A client for `config.api_url`.
    pub fn new(config: &UltimateConfig) -> Result<Self, BackendError> {
        Ok(UltimateWidgetClient {
            transport: Transport::new(config.timeout_seconds)?,
            config: config.clone(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(), BackendError> {
        let request = self
            .transport
            .request(reqwest::Method::POST, join_url(&self.config.api_url, path))
            .header(reqwest::header::AUTHORIZATION, self.config.api_key.expose())
            .header("botid", &self.config.bot_id)
            .json(body);
        let (status, body) = self.transport.send(request).await?;
        classify_status(status, body).map(|_| ())
    }

    /// Shows an agent-side update in the visitor's widget.
    pub async fn send(&self, platform_conversation_id: &str, update: &WidgetUpdate) -> Result<(), BackendError> {
        self.post(
            "agent/converse/send-message-to-widget",
            &widget_body(platform_conversation_id, update),
        )
        .await
    }

    /// Passes an event (`message`, `startSession`, `endSession`, `metadata`) to the bot.
    pub async fn send_to_bot(
        &self,
        platform_conversation_id: &str,
        event_type: &str,
        text: Option<&str>,
    ) -> Result<(), BackendError> {
        self.post("converse/chat", &bot_body(platform_conversation_id, event_type, text))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_update_maps_to_its_event_type_with_string_values() {
        let cases = [
            (
                WidgetUpdate::QueueUpdate {
                    queue_position: Some(3),
                    waiting_minutes: Some(5),
                },
                json!({"platformConversationId":"p","eventType":"escalationQueueUpdate","queuePosition":"3","waitingTime":"5"}),
            ),
            (
                WidgetUpdate::QueueUpdate {
                    queue_position: None,
                    waiting_minutes: None,
                },
                json!({"platformConversationId":"p","eventType":"escalationQueueUpdate"}),
            ),
            (
                WidgetUpdate::Success { agent: "Ana".into() },
                json!({"platformConversationId":"p","eventType":"escalationSuccess","agent":"Ana"}),
            ),
            (
                WidgetUpdate::Message {
                    agent: Some("Ana".into()),
                    text: "hi".into(),
                },
                json!({"platformConversationId":"p","eventType":"message","agent":"Ana","text":"hi"}),
            ),
            (
                WidgetUpdate::Message {
                    agent: None,
                    text: "hi".into(),
                },
                json!({"platformConversationId":"p","eventType":"message","text":"hi"}),
            ),
            (
                WidgetUpdate::Failed { text: None },
                json!({"platformConversationId":"p","eventType":"escalationFailed"}),
            ),
            (
                WidgetUpdate::AgentDisconnect {
                    agent: Some("Ana".into()),
                },
                json!({"platformConversationId":"p","eventType":"agentDisconnect","agent":"Ana"}),
            ),
        ];
        for (update, expected) in cases {
            assert_eq!(widget_body("p", &update), expected, "{update:?}");
        }
        assert_eq!(
            bot_body("p", "endSession", None),
            json!({"platformConversationId":"p","eventType":"endSession"})
        );
    }
}
