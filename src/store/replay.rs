//! The online replay's bulk reads (see `sql::replay_online`). Passing a row through sqlx costs a copy
//! and an allocation per value and, on SQLite, a hop between the connection's thread and the runtime
//! per row: for a replay that reads every event and every projection row once, that was most of its
//! time. So the replay asks the database for one JSON text per part of a chunk and table (the rows of
//! all its conversations as an array of arrays, made by `json_group_array` / `json_agg`) and takes
//! them apart here, on the fold's threads (one part each), where every value is still compared with
//! what a rebuild writes.
//!
//! Exactness: integers and text come back exactly as stored (SQLite and PostgreSQL write integers in
//! decimal and escape text losslessly); a value of another type than the one expected (a text in an
//! integer column, say) compares as different. Floating point columns (only `handoffs` has them) are
//! not read this way, as SQLite writes a REAL into JSON with 15 significant digits only: the replay
//! compares those rows value by value as before.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use uuid::Uuid;

use super::codec::{self, Bind, Row};
use super::sql::InList;
use super::{StoreError, StoreResult};
use crate::model::{StoredEvent, StreamKey};

/// The columns of an event the fold reads, after the id of the conversation its stream is filed under
/// (the rows of a part are grouped by it), in the order of [`JsonEvent`]. The delivery headers and the
/// chain hash are not read: the fold does not look at them (the events it is given have none).
pub(super) const EVENT_JSON_COLUMNS: &[&str] = &[
    "s.conversation_id",
    "e.seq",
    "e.event_id",
    "e.platform",
    "e.external_id",
    "e.kind",
    "e.occurred_at",
    "e.platform_at",
    "e.received_at",
    "e.payload",
    "e.revision_of",
];

/// The joined streams and events a conversation's events are read from.
pub(super) const EVENTS_FROM: &str =
    "streams s JOIN events e ON e.platform = s.platform AND e.external_id = s.external_id";

/// The columns of a stream row the replay reads, and their order (that of `Store::streams_of`).
pub(super) const STREAM_JSON_COLUMNS: &[&str] = &["conversation_id", "platform", "external_id"];
pub(super) const STREAM_JSON_ORDER: &str = "conversation_id, first_seq, platform, external_id";

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

/// `SELECT <rows as one JSON array> FROM from WHERE key <ids>`: one value holding the rows of all the
/// conversations `ids` (each row's `columns`, the first or another naming its conversation), in
/// `order`; `[]` or NULL when there are none. One value per part of a chunk instead of one row per
/// conversation: each row sqlx hands over costs a wake-up of the other thread.
pub(super) fn rows_json_sql(sqlite: bool, from: &str, key: &str, columns: &[&str], order: &str, ids: InList) -> String {
    format!(
        "SELECT {} FROM {from} WHERE {key} {ids}",
        json_rows(sqlite, columns, order)
    )
}

/// The events with a seq in `($1, $2]`, as one JSON array of [`REFILE_JSON_COLUMNS`] in any order
/// (NULL or empty when there are none).
pub(super) fn refile_page_sql(sqlite: bool) -> String {
    format!(
        "SELECT {} FROM events WHERE seq > $1 AND seq <= $2",
        json_rows(sqlite, REFILE_JSON_COLUMNS, "")
    )
}

/// One event as the filing reads it: `(seq, platform, external_id, occurred_at, links)`, its texts
/// borrowed from the page where they hold no escapes.
pub(super) type RefileRow<'a> = (i64, Cow<'a, str>, Cow<'a, str>, i64, Cow<'a, str>);

/// Takes apart a page read by [`refile_page_sql`], in seq order.
pub(super) fn refile_page(json: &str) -> StoreResult<Vec<RefileRow<'_>>> {
    let rows: Vec<(i64, Text<'_>, Text<'_>, i64, Text<'_>)> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("bad replay page JSON: {e}")))?;
    let mut rows: Vec<RefileRow<'_>> = rows
        .into_iter()
        .map(|(seq, p, x, at, l)| (seq, p.0, x.0, at, l.0))
        .collect();
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
    Text<'a>,
    i64,
    Text<'a>,
    Text<'a>,
    Text<'a>,
    Text<'a>,
    i64,
    Option<i64>,
    i64,
    Text<'a>,
    Option<Text<'a>>,
);

/// The events of a part's conversations, read as one JSON array of [`EVENT_JSON_COLUMNS`] (in any
/// order), by conversation, each in seq order. Values are taken from the text without a copy where
/// they hold no escapes; only the payload is parsed again (it is a JSON text in a JSON string).
pub(super) fn decode_events(json: Option<&str>) -> StoreResult<HashMap<Uuid, Vec<StoredEvent>>> {
    let mut out: HashMap<Uuid, Vec<StoredEvent>> = HashMap::new();
    let Some(json) = json else {
        return Ok(out);
    };
    let rows: Vec<JsonEvent<'_>> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("bad replay events JSON: {e}")))?;
    // The rows of one conversation come one after the other: its id is parsed once.
    let mut current: Option<(String, Uuid)> = None;
    for e in rows {
        let conversation = match &current {
            Some((text, id)) if *text == *e.0 .0 => *id,
            _ => {
                let id = codec::parse_uuid(&e.0 .0)?;
                current = Some((e.0 .0.into_owned(), id));
                id
            }
        };
        let event = StoredEvent {
            seq: e.1,
            event_id: codec::parse_uuid(&e.2 .0)?,
            platform: codec::parse_platform(&e.3 .0)?,
            external_id: e.4 .0.into_owned(),
            kind: e.5 .0.into_owned(),
            occurred_at: codec::from_micros(e.6)?,
            platform_at: e.7.map(codec::from_micros).transpose()?,
            received_at: codec::from_micros(e.8)?,
            conversation_id: Some(conversation),
            headers: BTreeMap::new(),
            payload: codec::from_json("payload", &e.9 .0)?,
            hash: None,
            revision_of: e.10.map(|t| codec::parse_uuid(&t.0)).transpose()?,
        };
        out.entry(conversation).or_default().push(event);
    }
    for events in out.values_mut() {
        events.sort_by_key(|e| e.seq);
    }
    Ok(out)
}

/// The streams of a part's conversations, read as one JSON array of [`STREAM_JSON_COLUMNS`] in
/// [`STREAM_JSON_ORDER`], by conversation.
pub(super) fn decode_streams(json: Option<&str>) -> StoreResult<HashMap<Uuid, Vec<StreamKey>>> {
    let mut out: HashMap<Uuid, Vec<StreamKey>> = HashMap::new();
    let Some(json) = json else {
        return Ok(out);
    };
    let rows: Vec<(Text<'_>, Text<'_>, Text<'_>)> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("bad replay streams JSON: {e}")))?;
    for (id, platform, external_id) in rows {
        out.entry(codec::parse_uuid(&id.0)?)
            .or_default()
            .push(codec::stream_key(&platform.0, external_id.0.into_owned())?);
    }
    Ok(out)
}

/// One stored value as the database wrote it into JSON.
#[derive(Debug, PartialEq)]
pub(super) enum Stored<'a> {
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

/// One stored row as read from JSON.
pub(super) type StoredRow<'a> = Vec<Stored<'a>>;

/// The stored rows of a part's conversations in one table, read as one JSON array of rows (in the
/// order read: see [`sort_by_columns`]), by conversation: the value of column `key` names it. None
/// when the text is not such an array (then no conversation of the part matches).
pub(super) fn stored_by_conversation(json: Option<&str>, key: usize) -> Option<HashMap<Uuid, Vec<StoredRow<'_>>>> {
    let mut out: HashMap<Uuid, Vec<StoredRow<'_>>> = HashMap::new();
    let Some(json) = json else {
        return Some(out);
    };
    let rows: Vec<StoredRow<'_>> = serde_json::from_str(json).ok()?;
    for row in rows {
        let id = match row.get(key) {
            Some(Stored::Text(id)) => Uuid::parse_str(id).ok()?,
            _ => return None,
        };
        out.entry(id).or_default().push(row);
    }
    Some(out)
}

/// The key of a stored row that [`sort_by_columns`] orders by: the integers of `columns` (anything else
/// sorts first: such a row is no rebuilt row anyway).
fn int_key(row: &StoredRow<'_>, columns: &[usize]) -> [Option<i64>; 3] {
    let mut key = [None; 3];
    for (k, c) in key.iter_mut().zip(columns) {
        *k = match row.get(*c) {
            Some(Stored::Int(v)) => Some(*v),
            _ => None,
        };
    }
    key
}

/// Puts each conversation's stored rows in the order of their integer `columns` (at most 3), as an
/// `ORDER BY` of them would: the database gives them in the order of its index, which is that order
/// already unless the plan changes, so this costs one pass when they are sorted.
pub(super) fn sort_by_columns(rows: &mut HashMap<Uuid, Vec<StoredRow<'_>>>, columns: &[usize]) {
    for rows in rows.values_mut() {
        if !rows.is_sorted_by_key(|r| int_key(r, columns)) {
            rows.sort_by_key(|r| int_key(r, columns));
        }
    }
}

/// Whether the stored rows of one conversation in one table (in key order; `None`: it has none) are
/// exactly `rows` (in key order, or for a few rows in any order: the agent names' order is the
/// database's collation).
pub(super) fn stored_rows_match(stored: Option<&[StoredRow<'_>]>, rows: &[Row]) -> bool {
    let stored = stored.unwrap_or(&[]);
    stored.len() == rows.len()
        && (stored.iter().zip(rows).all(|(s, r)| same_row(s, r))
            || (rows.len() <= 16 && rows.iter().all(|r| stored.iter().any(|s| same_row(s, r)))))
}

/// Whether the stored rows of one conversation in one table, read as one JSON array of rows in key
/// order (`None`: it has none), are exactly `rows`. JSON that does not parse is no match.
#[cfg(test)]
fn stored_json_matches(stored: Option<&str>, rows: &[Row]) -> bool {
    let Some(json) = stored else {
        return rows.is_empty();
    };
    let Ok(stored) = serde_json::from_str::<Vec<StoredRow<'_>>>(json) else {
        return false;
    };
    stored_rows_match(Some(&stored), rows)
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
    fn stored_rows_read_in_any_order_are_compared_in_key_order() {
        let id = Uuid::from_u128(7);
        // 20 rows (more than the few compared in any order), keys (at, seq, idx), read backwards.
        let rows: Vec<Row> = (0..20)
            .map(|i| {
                row(vec![
                    Bind::Text(id.to_string()),
                    Bind::Int(i / 4),
                    Bind::Int(i),
                    Bind::Int(i % 2),
                ])
            })
            .collect();
        let json = format!(
            "[{}]",
            (0..20)
                .rev()
                .map(|i| format!(r#"["{id}",{},{i},{}]"#, i / 4, i % 2))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut stored = stored_by_conversation(Some(&json), 0).unwrap();
        assert!(!stored_rows_match(stored.get(&id).map(Vec::as_slice), &rows));
        sort_by_columns(&mut stored, &[1, 2, 3]);
        assert!(stored_rows_match(stored.get(&id).map(Vec::as_slice), &rows));
        // Sorted, a row that differs still differs.
        let wrong = json.replacen(",19,1]", ",19,0]", 1);
        let mut stored = stored_by_conversation(Some(&wrong), 0).unwrap();
        sort_by_columns(&mut stored, &[1, 2, 3]);
        assert!(!stored_rows_match(stored.get(&id).map(Vec::as_slice), &rows));
    }

    #[test]
    fn rows_json_sql_reads_one_array_per_part_on_both_backends() {
        assert_eq!(
            rows_json_sql(
                true,
                "t",
                "k",
                &["k", "a", "b"],
                "k, a",
                InList::Values { first: 1, n: 2 }
            ),
            "SELECT json_group_array(json_array(k, a, b) ORDER BY k, a) FROM t WHERE k IN ($1, $2)"
        );
        assert_eq!(
            rows_json_sql(false, "t", "k", &["k", "a", "b"], "k, a", InList::Array { first: 1 }),
            "SELECT json_agg(json_build_array(k, a, b) ORDER BY k, a)::text FROM t WHERE k = ANY($1)"
        );
    }

    #[test]
    fn a_part_is_taken_apart_by_conversation() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let json = format!(r#"[["{a}",1,"x"],["{b}",1,"y"],["{a}",2,"z"]]"#);
        let rows = stored_by_conversation(Some(&json), 0).unwrap();
        let texts = |id: &Uuid| -> Vec<i64> {
            rows[id]
                .iter()
                .map(|r| match r[1] {
                    Stored::Int(v) => v,
                    _ => -1,
                })
                .collect()
        };
        assert_eq!((texts(&a), texts(&b)), (vec![1, 2], vec![1]));
        assert!(stored_by_conversation(Some(r#"[["not an id",1]]"#), 0).is_none());
        assert!(stored_by_conversation(Some("not json"), 0).is_none());
        assert!(stored_by_conversation(None, 0).unwrap().is_empty());
        let streams = decode_streams(Some(&format!(
            r#"[["{a}","aivo_live","r1"],["{a}","ultimate","u1"],["{b}","vcc","v"]]"#
        )))
        .unwrap();
        assert_eq!(streams[&a].len(), 2);
        assert_eq!(streams[&a][1].external_id, "u1");
        assert_eq!(streams[&b][0].external_id, "v");
    }
}
