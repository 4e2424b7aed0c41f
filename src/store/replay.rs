//! The online replay's bulk reads (see `sql::replay_online`). Passing a row through sqlx costs a copy
//! and an allocation per value and, on SQLite, a hop between the connection's thread and the runtime
//! per row: for a replay that reads every event and every projection row once, that was most of its
//! time. So the replay asks the database for one JSON text per conversation and table (the rows as an
//! array of arrays, made by `json_group_array` / `json_agg`) and takes them apart here, on the fold's
//! threads, where every value is still compared with what a rebuild writes.
//!
//! Exactness: integers and text come back exactly as stored (SQLite and PostgreSQL write integers in
//! decimal and escape text losslessly); a value of another type than the one expected (a text in an
//! integer column, say) compares as different. Floating point columns (only `handoffs` has them) are
//! not read this way, as SQLite writes a REAL into JSON with 15 significant digits only: the replay
//! compares those rows value by value as before.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use uuid::Uuid;

use super::codec::{self, Bind, EventRow, Row};
use super::{StoreError, StoreResult};
use crate::model::StoredEvent;

/// The columns of an event the fold reads, in the order of [`EventRow`] without the conversation id
/// (the group's key).
pub(super) const EVENT_JSON_COLUMNS: &[&str] = &[
    "e.seq",
    "e.event_id",
    "e.platform",
    "e.external_id",
    "e.kind",
    "e.occurred_at",
    "e.platform_at",
    "e.received_at",
    "e.payload",
    "e.headers",
    "e.hash",
    "e.revision_of",
];

/// The joined streams and events a conversation's events are read from.
pub(super) const EVENTS_FROM: &str =
    "streams s JOIN events e ON e.platform = s.platform AND e.external_id = s.external_id";

/// The columns of an event the in-memory filing reads, in the order [`refile_page`] takes them.
pub(super) const REFILE_JSON_COLUMNS: &[&str] = &["seq", "platform", "external_id", "occurred_at", "links"];

/// `columns` as one JSON array per row, aggregated into one JSON array (as text) in `order` (empty:
/// in any order).
fn json_rows(sqlite: bool, columns: &[&str], order: &str) -> String {
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {order}")
    };
    if sqlite {
        format!("json_group_array(json_array({}){order})", columns.join(", "))
    } else {
        format!("json_agg(json_build_array({}){order})::text", columns.join(", "))
    }
}

/// `SELECT key, <rows as one JSON array> FROM from WHERE key IN ($1..$n) GROUP BY key`: one row per
/// conversation of `$1..$n` that has rows, with its rows' `columns` in `order`.
pub(super) fn grouped_json_sql(sqlite: bool, from: &str, key: &str, columns: &[&str], order: &str, n: usize) -> String {
    format!(
        "SELECT {key}, {} FROM {from} WHERE {key} IN ({}) GROUP BY {key}",
        json_rows(sqlite, columns, order),
        super::sql::placeholders(1, n)
    )
}

/// The events after seq `$1`, at most `$2` of them, as one JSON array of [`REFILE_JSON_COLUMNS`] in any
/// order (NULL or empty when there are none).
pub(super) fn refile_page_sql(sqlite: bool) -> String {
    format!(
        "SELECT {} FROM (SELECT {} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2) page",
        json_rows(sqlite, REFILE_JSON_COLUMNS, ""),
        REFILE_JSON_COLUMNS.join(", ")
    )
}

/// One page of the log as the filing reads it: `(seq, platform, external_id, occurred_at, links)`.
pub(super) type RefileRow = (i64, String, String, i64, String);

/// Takes apart a page read by [`refile_page_sql`], in seq order.
pub(super) fn refile_page(json: &str) -> StoreResult<Vec<RefileRow>> {
    let mut rows: Vec<RefileRow> = codec::from_json("replay page", json)?;
    rows.sort_by_key(|row| row.0);
    Ok(rows)
}

/// A text value that borrows from the JSON text when it holds no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// An event as [`EVENT_JSON_COLUMNS`] give it.
type JsonEvent<'a> = (
    i64,
    Text<'a>,
    Text<'a>,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    Text<'a>,
    Text<'a>,
    Option<String>,
    Option<Text<'a>>,
);

/// The events of conversation `id` read as one JSON array of [`EVENT_JSON_COLUMNS`] (in any order), in
/// seq order.
pub(super) fn decode_events(id: Uuid, json: &str) -> StoreResult<Vec<StoredEvent>> {
    let rows: Vec<JsonEvent<'_>> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("bad replay events JSON: {e}")))?;
    let conversation = id.to_string();
    let mut events = rows
        .into_iter()
        .map(|e| {
            let row: EventRow = (
                e.0,
                e.1 .0.into_owned(),
                e.2 .0.into_owned(),
                e.3,
                e.4,
                e.5,
                e.6,
                e.7,
                e.8 .0.into_owned(),
                e.9 .0.into_owned(),
                Some(conversation.clone()),
                e.10,
                e.11.map(|t| t.0.into_owned()),
            );
            codec::decode_event(row)
        })
        .collect::<StoreResult<Vec<_>>>()?;
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// One stored value as the database wrote it into JSON.
#[derive(Debug, PartialEq)]
enum Stored<'a> {
    Null,
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    /// Anything no column holds (a boolean, an array, an object, an integer beyond i64).
    Other,
}

impl<'de> Deserialize<'de> for Stored<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stored<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a column value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Stored::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Stored::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Stored::Other)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Stored::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Stored::Other, Stored::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Stored::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Stored::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Stored::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Stored::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Stored::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Stored::Other)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Whether a stored value is exactly `value`, of the same type.
fn same_value(stored: &Stored<'_>, value: &Bind) -> bool {
    match (value, stored) {
        (Bind::Text(v) | Bind::OptText(Some(v)), Stored::Text(s)) => s == v,
        (Bind::Int(v) | Bind::OptInt(Some(v)), Stored::Int(s)) => s == v,
        (Bind::OptFloat(Some(v)), Stored::Float(s)) => s.to_bits() == v.to_bits(),
        (Bind::OptText(None) | Bind::OptInt(None) | Bind::OptFloat(None), Stored::Null) => true,
        _ => false,
    }
}

fn same_row(stored: &[Stored<'_>], row: &Row) -> bool {
    stored.len() == row.len() && stored.iter().zip(row).all(|(s, v)| same_value(s, v))
}

/// Whether the stored rows of one conversation in one table, read as one JSON array of rows in key
/// order (`None`: it has none), are exactly `rows` (in key order, or for a few rows in any order: the
/// agent names' order is the database's collation). JSON that does not parse is no match.
pub(super) fn stored_json_matches(stored: Option<&str>, rows: &[Row]) -> bool {
    let Some(json) = stored else {
        return rows.is_empty();
    };
    let Ok(stored) = serde_json::from_str::<Vec<Vec<Stored<'_>>>>(json) else {
        return false;
    };
    stored.len() == rows.len()
        && (stored.iter().zip(rows).all(|(s, r)| same_row(s, r))
            || (rows.len() <= 16 && rows.iter().all(|r| stored.iter().any(|s| same_row(s, r)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<Bind>) -> Row {
        values
    }

    #[test]
    fn stored_rows_match_only_when_every_value_and_type_is_the_same() {
        let rows = vec![
            row(vec![
                Bind::Text("it's \"x\"\n\u{0}é".into()),
                Bind::Int(-5),
                Bind::OptText(None),
                Bind::OptInt(Some(7)),
                Bind::OptFloat(Some(0.1)),
            ]),
            row(vec![
                Bind::Text("b".into()),
                Bind::Int(i64::MAX),
                Bind::OptText(Some("t".into())),
                Bind::OptInt(None),
                Bind::OptFloat(None),
            ]),
        ];
        let same = r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1],["b",9223372036854775807,"t",null,null]]"#;
        assert!(stored_json_matches(Some(same), &rows));
        for different in [
            r#"[["it's \"x\"\n\u0000e",-5,null,7,0.1],["b",9223372036854775807,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-4,null,7,0.1],["b",9223372036854775807,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é","-5",null,7,0.1],["b",9223372036854775807,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,"",7,0.1],["b",9223372036854775807,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7.0,0.1],["b",9223372036854775807,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.10000000000000002],["b",9223372036854775807,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1],["b",9223372036854775807,"t",null,0]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1],["b",9223372036854775808,"t",null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1],["b",9223372036854775807,"t",null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1],["b",9223372036854775807,["t"],null,null]]"#,
            r#"[["it's \"x\"\n\u0000é",-5,null,7,0.1],["b",9223372036854775807,"t",null,null],[]]"#,
            "not json",
        ] {
            assert!(!stored_json_matches(Some(different), &rows), "{different}");
        }
        assert!(!stored_json_matches(None, &rows));
        assert!(stored_json_matches(None, &[]));
        assert!(!stored_json_matches(Some("[[1]]"), &[]));
        // A few rows may come back in another order (the collation of the agent names).
        let swapped = r#"[["b",9223372036854775807,"t",null,null],["it's \"x\"\n\u0000é",-5,null,7,0.1]]"#;
        assert!(stored_json_matches(Some(swapped), &rows));
    }

    #[test]
    fn grouped_json_sql_reads_one_array_per_conversation_on_both_backends() {
        assert_eq!(
            grouped_json_sql(true, "t", "k", &["a", "b"], "a", 2),
            "SELECT k, json_group_array(json_array(a, b) ORDER BY a) FROM t WHERE k IN ($1, $2) GROUP BY k"
        );
        assert_eq!(
            grouped_json_sql(false, "t", "k", &["a", "b"], "a", 1),
            "SELECT k, json_agg(json_build_array(a, b) ORDER BY a)::text FROM t WHERE k IN ($1) GROUP BY k"
        );
    }
}
