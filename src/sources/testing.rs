//! What the parsers' unit tests share: a delivery, a raw body parsed as the webhook path parses it,
//! the facts the projection reads back from a stored event, times, and the field an error names.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{parse_json, Delivery, Parsed, PayloadError, TimedFact};

/// Every platform's `parse`.
pub(crate) type ParseFn = fn(&str, &Value, &Delivery) -> Result<Parsed, PayloadError>;

/// Every platform's `facts`.
pub(crate) type FactsFn = fn(&str, &Value, DateTime<Utc>) -> Vec<TimedFact>;

/// A delivery that arrived at `received_at` carrying one header worth keeping, with no idempotency key.
pub(crate) fn delivery<'a>(received_at: DateTime<Utc>, header: (&str, &str), path_id: Option<&'a str>) -> Delivery<'a> {
    Delivery {
        received_at,
        headers: BTreeMap::from([(header.0.to_string(), header.1.to_string())]),
        idempotency_key: None,
        path_id,
    }
}

/// `raw` read as JSON and given to `parse`, as the webhook path does.
pub(crate) fn run(parse: ParseFn, raw: &str, d: &Delivery) -> Result<Parsed, PayloadError> {
    let value = parse_json(raw.as_bytes())?;
    parse(raw, &value, d)
}

/// The facts of the first event of `parsed`, read back from its stored payload by `facts`.
pub(crate) fn first_facts(parsed: &Parsed, facts: FactsFn) -> Vec<TimedFact> {
    let e = &parsed.events[0];
    let value: Value = serde_json::from_str(&e.payload).expect("a stored payload is JSON");
    facts(&e.kind, &value, e.occurred_at)
}

/// An RFC 3339 instant.
pub(crate) fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// The field an `InvalidPayload` error names.
pub(crate) fn field_of(err: PayloadError) -> String {
    match err {
        PayloadError::InvalidPayload { field, .. } => field,
        other => panic!("expected InvalidPayload, got {other:?}"),
    }
}
