//! ultimate payloads.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Delivery, Parsed, PayloadError, TimedFact};

/// Parses one delivery into events to append.
pub fn parse(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let _ = (raw, value, d);
    Err(PayloadError::InvalidJson("not implemented".into()))
}

/// Parses an actions webhook delivery (`POST /webhooks/ultimate/actions`) into one `ultimate.action` event.
pub fn parse_action(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let _ = (raw, value, d);
    Err(PayloadError::field("name", "not implemented"))
}

/// The facts of one stored event of this platform.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    let _ = (kind, payload, at);
    Vec::new()
}

/// One parameter of an action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionParam {
    /// Key.
    pub key: String,
    /// Value (Ultimate sends one-element arrays).
    pub value: Value,
    /// Name to save it under.
    pub save_as: Option<String>,
}

/// An actions-webhook request.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    /// Bot id.
    pub bot_id: String,
    /// Ultimate conversation id.
    pub platform_conversation_id: String,
    /// Action name.
    pub name: String,
    /// Parameters.
    pub data: Vec<ActionParam>,
}

/// Reads an actions-webhook body.
pub fn action_request(value: &Value) -> Result<ActionRequest, PayloadError> {
    let _ = value;
    Err(PayloadError::field("name", "not implemented"))
}

/// The team an escalate / isTeamOnline names.
pub fn team_of(value: &Value) -> Option<String> {
    let _ = value;
    None
}
