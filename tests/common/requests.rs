//! Request bodies the tests send, built once: fixtures, and the Aivo Live and Ultimate webhook bodies.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// The text of a fixture under tests/fixtures.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A time as Aivo Live stamps it: nanoseconds since the epoch.
pub fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().expect("in range")
}

/// An Aivo Live webhook body.
pub fn aivo(name: &str, room: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"name": name, "roomId": room, "timestamp": nanos(at), "botId": 1000, "eventTime": at.timestamp(), "data": data})
}

/// An Ultimate converse webhook body: `extra` is merged into `data`.
pub fn ultimate(event_type: &str, pcid: &str, extra: Value) -> Value {
    let mut data = json!({"eventType": event_type, "platformConversationId": pcid});
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    json!({"botId": "BOT", "channel": "chat", "data": data})
}
