//! Pure conversions between the domain types and the portable row shapes both SQL backends share
//! (ids as text, times as microseconds, JSON as text), and the SQL text that depends on a request.
//! No I/O here, so it is unit-tested on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ConversationFilter, StoreError, StoreResult};
use crate::model::{Conversation, Message, Platform, QuarantineEntry, Redrive, StoredEvent, StreamKey};
use crate::projection::Projection;

/// Columns of an event as read back, in the order of [`EVENT_COLUMNS`]:
/// `(seq, event_id, platform, external_id, kind, occurred_at, received_at, payload, headers, conversation_id, hash)`.
pub(crate) type EventRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// The select list matching [`EventRow`], for `events e` joined with `streams s`.
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.event_id, e.platform, e.external_id, e.kind, e.occurred_at, \
     e.received_at, e.payload, e.headers, s.conversation_id, e.hash";

/// Columns of a quarantine row:
/// `(id, received_at, path, platform, error_code, error_message, status, headers, body)`.
pub(crate) type QuarantineRow = (i64, i64, String, Option<String>, String, String, i64, String, Vec<u8>);

/// A value bound to a query built at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
}

/// The projection columns of a conversation row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConversationRow {
    /// `state`.
    pub state: &'static str,
    /// `disposition`.
    pub disposition: Option<&'static str>,
    /// `sla_status`.
    pub sla_status: &'static str,
    /// `sla_deadline`, micros: while pending, when the answer target runs out.
    pub sla_deadline: Option<i64>,
    /// `queue`.
    pub queue: Option<String>,
    /// `agents`, see [`agents_column`].
    pub agents: String,
    /// `started_at`, micros.
    pub started_at: i64,
    /// `updated_at`, micros.
    pub updated_at: i64,
    /// `last_seq`.
    pub last_seq: i64,
    /// serde_json of the conversation.
    pub doc: String,
    /// serde_json of the transcript.
    pub transcript: String,
}

/// Microseconds since the epoch: the portable time column (PostgreSQL keeps microseconds too).
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Reads a time column back.
pub(crate) fn from_micros(micros: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("time out of range: {micros}")))
}

/// Reads an id column back.
pub(crate) fn parse_uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("bad id `{text}`: {e}")))
}

/// Reads a platform column back.
pub(crate) fn parse_platform(text: &str) -> StoreResult<Platform> {
    text.parse::<Platform>().map_err(StoreError::Corrupt)
}

/// Reads a stream key back.
pub(crate) fn stream_key(platform: &str, external_id: String) -> StoreResult<StreamKey> {
    Ok(StreamKey::new(parse_platform(platform)?, external_id))
}

/// Reads a JSON text column back.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("bad {what} JSON: {e}")))
}

/// Writes a JSON text column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

/// The conversation an event of a stream no one has filed yet starts: the id itself for the
/// service's own streams (`api`, `ledger`), whose external id *is* a conversation id, else the
/// UUIDv5 of the key. The caller resolves the former through aliases.
pub(crate) fn own_conversation_id(stream: &StreamKey) -> (Uuid, bool) {
    match stream.platform {
        Platform::Api | Platform::Ledger => match Uuid::parse_str(&stream.external_id) {
            Ok(id) => (id, true),
            Err(_) => (stream.conversation_id(), false),
        },
        _ => (stream.conversation_id(), false),
    }
}

/// Which of two conversations survives a merge: the one whose events started earlier (a
/// conversation without events yet counts as latest), ties broken by the smaller id.
/// Returns `(survivor, absorbed)`.
pub(crate) fn pick_survivor(a: (Uuid, Option<i64>), b: (Uuid, Option<i64>)) -> (Uuid, Uuid) {
    let rank = |(id, started): (Uuid, Option<i64>)| (started.is_none(), started.unwrap_or(0), id);
    if rank(a) <= rank(b) {
        (a.0, b.0)
    } else {
        (b.0, a.0)
    }
}

/// An event row as the domain type; the payload text is parsed back into JSON.
pub(crate) fn decode_event(row: EventRow) -> StoreResult<StoredEvent> {
    let (seq, event_id, platform, external_id, kind, occurred_at, received_at, payload, headers, conversation, hash) =
        row;
    Ok(StoredEvent {
        seq,
        event_id: parse_uuid(&event_id)?,
        platform: parse_platform(&platform)?,
        external_id,
        kind,
        occurred_at: from_micros(occurred_at)?,
        received_at: from_micros(received_at)?,
        conversation_id: conversation.as_deref().map(parse_uuid).transpose()?,
        headers: from_json("headers", &headers)?,
        payload: from_json("payload", &payload)?,
        hash,
    })
}

/// A quarantine row as the domain type.
pub(crate) fn decode_quarantine(row: QuarantineRow) -> StoreResult<QuarantineEntry> {
    let (id, received_at, path, platform, error_code, error_message, status, headers, body) = row;
    let (body, body_encoding) = match String::from_utf8(body) {
        Ok(text) => (text, "utf8"),
        Err(e) => (base64_encode(e.as_bytes()), "base64"),
    };
    Ok(QuarantineEntry {
        id,
        received_at: from_micros(received_at)?,
        path,
        platform,
        error_code,
        error_message,
        status: u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("bad HTTP status {status}")))?,
        headers: from_json::<BTreeMap<String, String>>("headers", &headers)?,
        body: body.to_string(),
        body_encoding: body_encoding.to_string(),
    })
}

/// Columns of a redrive row:
/// `(quarantine_id, at, status, outcome, error_code, event_id, seq, conversation_id, key_name)`.
pub(crate) type RedriveRow = (
    i64,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// A redrive row as the domain type, with the entry it belongs to.
pub(crate) fn decode_redrive(row: RedriveRow) -> StoreResult<(i64, Redrive)> {
    let (quarantine_id, at, status, outcome, error_code, event_id, seq, conversation_id, key) = row;
    let uuid = |v: Option<String>| -> StoreResult<Option<Uuid>> {
        v.map(|v| Uuid::parse_str(&v).map_err(|e| StoreError::Corrupt(format!("bad uuid {v}: {e}"))))
            .transpose()
    };
    Ok((
        quarantine_id,
        Redrive {
            at: from_micros(at)?,
            status: u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("bad HTTP status {status}")))?,
            outcome,
            error_code,
            event_id: uuid(event_id)?,
            seq,
            conversation_id: uuid(conversation_id)?,
            key,
        },
    ))
}

/// Standard base64 with padding (RFC 4648), for quarantined bodies that are not UTF-8.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One agent name as kept in the `agents` column: lower-cased (the filter is case-insensitive on
/// both backends alike) with newlines, the column's separator, flattened.
fn agent_token(name: &str) -> String {
    name.to_lowercase().replace(['\n', '\r'], " ")
}

/// The `agents` column: every agent name wrapped in newlines (`"\nana\ntomas\n"`), so that a
/// `LIKE '%\nname\n%'` matches one whole name on both backends.
pub(crate) fn agents_column(conversation: &Conversation) -> String {
    if conversation.agents.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n");
    for agent in &conversation.agents {
        out.push_str(&agent_token(&agent.name));
        out.push('\n');
    }
    out
}

/// The `LIKE` pattern (escape character `\`) finding one agent name in the `agents` column.
pub(crate) fn agent_pattern(name: &str) -> String {
    let mut escaped = String::new();
    for c in agent_token(name).chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("%\n{escaped}\n%")
}

/// The row columns of a projected conversation.
pub(crate) fn conversation_row(projection: &Projection) -> StoreResult<ConversationRow> {
    let c = &projection.conversation;
    Ok(ConversationRow {
        state: c.state.as_str(),
        disposition: c.disposition.map(|d| d.as_str()),
        sla_status: c.sla_status.as_str(),
        sla_deadline: c.sla_deadline.map(to_micros),
        queue: c.queue.clone(),
        agents: agents_column(c),
        started_at: to_micros(c.started_at),
        updated_at: to_micros(c.updated_at),
        last_seq: c.last_seq,
        doc: to_json("conversation", c)?,
        transcript: to_json::<[Message]>("transcript", &projection.messages)?,
    })
}

/// The page query of `list_conversations`: selects `(doc, started_at, id)`, one row more than the
/// page so the caller knows whether another page follows.
pub(crate) fn list_conversations_query(filter: &ConversationFilter) -> (String, Vec<Bind>) {
    let mut sql = String::from("SELECT c.doc, c.started_at, c.id FROM conversations c WHERE 1 = 1");
    let mut binds = Vec::new();
    fn bind(binds: &mut Vec<Bind>, value: Bind) -> String {
        binds.push(value);
        format!("${}", binds.len())
    }
    if filter.platform.is_some() || filter.external_id.is_some() {
        // Both on the same stream: `platform` + `external_id` together name one stream key.
        sql.push_str(" AND EXISTS (SELECT 1 FROM streams s WHERE s.conversation_id = c.id");
        if let Some(platform) = &filter.platform {
            let p = bind(&mut binds, Bind::Text(platform.clone()));
            sql.push_str(&format!(" AND s.platform = {p}"));
        }
        if let Some(external_id) = &filter.external_id {
            let p = bind(&mut binds, Bind::Text(external_id.clone()));
            sql.push_str(&format!(" AND s.external_id = {p}"));
        }
        sql.push(')');
    }
    // `pending` and `breached` are read as of now: a handoff waiting past its target reads `breached`.
    match (filter.sla_status.as_deref(), filter.now) {
        (Some("pending"), Some(now)) => {
            let p = bind(&mut binds, Bind::Int(to_micros(now)));
            sql.push_str(&format!(
                " AND c.sla_status = 'pending' AND (c.sla_deadline IS NULL OR c.sla_deadline > {p})"
            ));
        }
        (Some("breached"), Some(now)) => {
            let p = bind(&mut binds, Bind::Int(to_micros(now)));
            sql.push_str(&format!(
                " AND (c.sla_status = 'breached' OR (c.sla_status = 'pending' AND c.sla_deadline <= {p}))"
            ));
        }
        (Some(status), _) => {
            let p = bind(&mut binds, Bind::Text(status.to_string()));
            sql.push_str(&format!(" AND c.sla_status = {p}"));
        }
        (None, _) => {}
    }
    for (column, value) in [
        ("state", &filter.state),
        ("disposition", &filter.disposition),
        ("queue", &filter.queue),
    ] {
        if let Some(value) = value {
            let p = bind(&mut binds, Bind::Text(value.clone()));
            sql.push_str(&format!(" AND c.{column} = {p}"));
        }
    }
    if let Some(agent) = &filter.agent {
        let p = bind(&mut binds, Bind::Text(agent_pattern(agent)));
        sql.push_str(&format!(" AND c.agents LIKE {p} ESCAPE '\\'"));
    }
    if let Some(since) = filter.since {
        let p = bind(&mut binds, Bind::Int(to_micros(since)));
        sql.push_str(&format!(" AND c.started_at >= {p}"));
    }
    if let Some(until) = filter.until {
        let p = bind(&mut binds, Bind::Int(to_micros(until)));
        sql.push_str(&format!(" AND c.started_at < {p}"));
    }
    if let Some((started, id)) = filter.after {
        let s = bind(&mut binds, Bind::Int(started));
        let i = bind(&mut binds, Bind::Text(id.to_string()));
        sql.push_str(&format!(
            " AND (c.started_at < {s} OR (c.started_at = {s} AND c.id < {i}))"
        ));
    }
    let l = bind(&mut binds, Bind::Int(i64::from(filter.limit.max(1)) + 1));
    sql.push_str(&format!(" ORDER BY c.started_at DESC, c.id DESC LIMIT {l}"));
    (sql, binds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Agent, HandoffState, MessageCounts, SlaStatus};

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input), expected);
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00, 0x80]), "//4AgA==");
    }

    #[test]
    fn quarantine_body_is_text_when_utf8_else_base64() {
        let row = |body: Vec<u8>| -> QuarantineRow {
            (
                1,
                0,
                "/p".into(),
                None,
                "invalid_json".into(),
                "m".into(),
                400,
                "{}".into(),
                body,
            )
        };
        let text = decode_quarantine(row("héllo".as_bytes().to_vec())).unwrap();
        assert_eq!((text.body.as_str(), text.body_encoding.as_str()), ("héllo", "utf8"));
        let binary = decode_quarantine(row(vec![0xff, 0x00, 0x41])).unwrap();
        assert_eq!(
            (binary.body.as_str(), binary.body_encoding.as_str()),
            ("/wBB", "base64")
        );
        assert_eq!(binary.status, 400);
    }

    #[test]
    fn earlier_conversation_survives_and_ties_go_to_the_smaller_id() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(pick_survivor((b, Some(10)), (a, Some(20))), (b, a));
        assert_eq!(pick_survivor((a, Some(20)), (b, Some(10))), (b, a));
        assert_eq!(pick_survivor((b, Some(10)), (a, Some(10))), (a, b));
        assert_eq!(pick_survivor((a, None), (b, Some(99))), (b, a));
        assert_eq!(pick_survivor((b, None), (a, None)), (a, b));
    }

    #[test]
    fn own_streams_start_the_conversation_they_name() {
        let id = Uuid::from_u128(42);
        assert_eq!(
            own_conversation_id(&StreamKey::new(Platform::Ledger, id.to_string())),
            (id, true)
        );
        let room = StreamKey::new(Platform::AivoLive, id.to_string());
        assert_eq!(own_conversation_id(&room), (room.conversation_id(), false));
        let odd = StreamKey::new(Platform::Api, "not-a-uuid");
        assert_eq!(own_conversation_id(&odd), (odd.conversation_id(), false));
    }

    fn conversation(agents: &[&str]) -> Conversation {
        Conversation {
            id: Uuid::from_u128(7),
            state: HandoffState::Attended,
            disposition: None,
            platform_disposition: None,
            sla_status: SlaStatus::Pending,
            sla_deadline: None,
            streams: Vec::new(),
            queue: Some("2179".into()),
            agents: agents
                .iter()
                .map(|n| Agent {
                    name: n.to_string(),
                    nickname: None,
                    group: None,
                })
                .collect(),
            handoffs: Vec::new(),
            started_at: from_micros(1_700_000_000_000_000).unwrap(),
            escalated_at: None,
            queued_at: None,
            first_attended_at: None,
            closed_at: None,
            wait_seconds: None,
            first_response_seconds: None,
            handle_seconds: None,
            bot_seconds: None,
            transfers: 0,
            message_counts: MessageCounts::default(),
            close_reason: None,
            attributes: BTreeMap::new(),
            last_seq: 3,
            updated_at: from_micros(1_700_000_000_500_000).unwrap(),
        }
    }

    #[test]
    fn agent_filter_matches_whole_names_case_insensitively() {
        let column = agents_column(&conversation(&["Tomas", "Ana_1"]));
        assert_eq!(column, "\ntomas\nana_1\n");
        assert_eq!(agent_pattern("TOMAS"), "%\ntomas\n%");
        // `_` and `%` are literal in a name, not wildcards.
        assert_eq!(agent_pattern("ana_1"), "%\nana\\_1\n%");
        assert_eq!(agent_pattern("50%\\"), "%\n50\\%\\\\\n%");
        assert_eq!(agents_column(&conversation(&[])), "");
    }

    #[test]
    fn conversation_row_carries_the_filter_columns() {
        let projection = Projection {
            conversation: conversation(&["Tomas"]),
            messages: Vec::new(),
        };
        let row = conversation_row(&projection).unwrap();
        assert_eq!(row.state, "attended");
        assert_eq!(row.sla_status, "pending");
        assert_eq!(row.queue.as_deref(), Some("2179"));
        assert_eq!(row.started_at, 1_700_000_000_000_000);
        assert_eq!(row.updated_at, 1_700_000_000_500_000);
        assert_eq!(row.transcript, "[]");
        let back: Conversation = from_json("doc", &row.doc).unwrap();
        assert_eq!(back, projection.conversation);
    }

    #[test]
    fn list_query_numbers_its_placeholders_in_bind_order() {
        let filter = ConversationFilter {
            platform: Some("aivo_live".into()),
            external_id: Some("room".into()),
            state: Some("closed".into()),
            agent: Some("Tomas".into()),
            since: Some(from_micros(10).unwrap()),
            limit: 2,
            after: Some((50, Uuid::from_u128(9))),
            ..ConversationFilter::default()
        };
        let (sql, binds) = list_conversations_query(&filter);
        assert_eq!(
            sql,
            "SELECT c.doc, c.started_at, c.id FROM conversations c WHERE 1 = 1 \
             AND EXISTS (SELECT 1 FROM streams s WHERE s.conversation_id = c.id AND s.platform = $1 \
             AND s.external_id = $2) AND c.state = $3 AND c.agents LIKE $4 ESCAPE '\\' \
             AND c.started_at >= $5 AND (c.started_at < $6 OR (c.started_at = $6 AND c.id < $7)) \
             ORDER BY c.started_at DESC, c.id DESC LIMIT $8"
        );
        assert_eq!(
            binds,
            vec![
                Bind::Text("aivo_live".into()),
                Bind::Text("room".into()),
                Bind::Text("closed".into()),
                Bind::Text("%\ntomas\n%".into()),
                Bind::Int(10),
                Bind::Int(50),
                Bind::Text(Uuid::from_u128(9).to_string()),
                Bind::Int(3),
            ]
        );
    }

    #[test]
    fn event_rows_decode_with_their_payload_as_json() {
        let id = Uuid::from_u128(5);
        let row: EventRow = (
            4,
            id.to_string(),
            "aivo_live".into(),
            "room".into(),
            "aivo_live.attended".into(),
            1_000_000,
            2_000_000,
            r#"{"b":1,"a":[true]}"#.into(),
            r#"{"content-type":"application/json"}"#.into(),
            Some(Uuid::from_u128(8).to_string()),
            Some("ab".repeat(32)),
        );
        let e = decode_event(row).unwrap();
        assert_eq!(e.hash, Some("ab".repeat(32)));
        assert_eq!(e.seq, 4);
        assert_eq!(e.event_id, id);
        assert_eq!(e.platform, Platform::AivoLive);
        assert_eq!(e.occurred_at.timestamp(), 1);
        assert_eq!(e.received_at.timestamp(), 2);
        assert_eq!(e.conversation_id, Some(Uuid::from_u128(8)));
        assert_eq!(e.payload.to_string(), r#"{"b":1,"a":[true]}"#);
        assert_eq!(
            e.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
}
