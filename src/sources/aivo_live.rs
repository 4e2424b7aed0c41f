//! aivo_live payloads.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Delivery, Parsed, PayloadError, TimedFact};

/// Parses one delivery into events to append.
pub fn parse(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let _ = (raw, value, d);
    Err(PayloadError::InvalidJson("not implemented".into()))
}

/// The facts of one stored event of this platform.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    let _ = (kind, payload, at);
    Vec::new()
}
