//! The Ultimate actions webhook's built-in actions, answered synchronously with bot session variables.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::Outbound;
use crate::model::Conversation;
use crate::sources;
use crate::sources::ultimate::ActionRequest;
use crate::store::StoreResult;

/// One bot session variable an action answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionVariable {
    /// Variable name.
    pub key: String,
    /// Value (string, number or boolean).
    pub value: Value,
}

impl Outbound {
    /// Runs an actions-webhook action (its event already appended) and returns the bot's session variables.
    pub(crate) async fn run_action(
        &self,
        action: &ActionRequest,
        conversation_id: Option<Uuid>,
    ) -> StoreResult<Vec<SessionVariable>> {
        match action.name.as_str() {
            // The event is already appended: the projection turns it into the conversation's attributes.
            // The answer echoes them in the order the bot sent them.
            "setAttributes" => Ok(action
                .data
                .iter()
                .map(|p| {
                    let single = ActionRequest {
                        data: vec![p.clone()],
                        ..action.clone()
                    };
                    sources::ultimate::action_attributes(&single)
                })
                .flat_map(|attributes| attributes.into_iter().map(|(key, value)| result(&key, value)))
                .collect()),
            "getHandoffStatus" => {
                let conversation = match conversation_id {
                    Some(id) => self.inner.store.get_conversation(id).await?,
                    None => None,
                };
                let Some(c) = conversation else {
                    return Ok(vec![result("handoffState", json!("bot"))]);
                };
                Ok(handoff_status(&c, Utc::now()))
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// `getHandoffStatus` results: state, queue, latest agent, seconds waited so far (or the wait it took).
pub(crate) fn handoff_status(c: &Conversation, now: chrono::DateTime<Utc>) -> Vec<SessionVariable> {
    let waited = match (c.queued_at, c.first_attended_at, c.closed_at) {
        (Some(q), None, None) => Some((now - q).num_seconds().max(0)),
        _ => c.wait_seconds.map(|w| w.round() as i64),
    };
    vec![
        result("handoffState", json!(c.state.as_str())),
        result("handoffQueue", json!(c.queue.clone().unwrap_or_default())),
        result(
            "agentName",
            json!(c.agents.last().map(|a| a.name.clone()).unwrap_or_default()),
        ),
        result("waitSeconds", json!(waited.unwrap_or(0))),
    ]
}

fn result(key: &str, value: Value) -> SessionVariable {
    SessionVariable {
        key: key.to_string(),
        value,
    }
}
