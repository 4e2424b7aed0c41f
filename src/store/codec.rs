//! Pure conversions between the domain types and the portable row shapes both SQL backends share
//! (ids as text, times as microseconds, JSON as text), and the SQL text that depends on a request.
//! No I/O here, so it is unit-tested on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::report::ExactTime;
use super::{ConversationFilter, LogEntry, MessageCursor, StoreError, StoreResult, TranscriptLine};
use crate::model::{
    Conversation, Disposition, HandoffState, Message, NewEvent, Platform, QuarantineEntry, Redrive, SlaStatus,
    StoredEvent, StreamKey,
};
use crate::projection::metrics;

/// Columns of an event as read back, in the order of [`EVENT_COLUMNS`]:
/// `(seq, event_id, platform, external_id, kind, occurred_at, platform_at, received_at, payload, headers,
/// conversation_id, hash, revision_of)`.
pub(crate) type EventRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The select list matching [`EventRow`], for `events e` joined with `streams s`.
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.event_id, e.platform, e.external_id, e.kind, e.occurred_at, \
     e.platform_at, e.received_at, e.payload, e.headers, s.conversation_id, e.hash, e.revision_of";

/// Columns of a quarantine row:
/// `(id, received_at, path, platform, error_code, error_message, status, headers, body)`.
pub(crate) type QuarantineRow = (i64, i64, String, Option<String>, String, String, i64, String, Vec<u8>);

/// A value bound to a query built at run time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
    /// A text value or NULL.
    OptText(Option<String>),
    /// An integer value or NULL.
    OptInt(Option<i64>),
    /// A floating point value or NULL.
    OptFloat(Option<f64>),
}

/// One row of a multi-row insert, its values in the order of the table's column list.
pub(crate) type Row = Vec<Bind>;

/// Most values bound in one statement (SQLite allows 32,766, PostgreSQL 65,535).
pub(crate) const MAX_BINDS: usize = 30_000;

/// `INSERT INTO table (columns) VALUES (...), (...) suffix` for `rows` rows, placeholders numbered
/// row after row. `suffix` is an `ON CONFLICT` clause or empty. The reference SQLite's inserts
/// (`store::sql::anonymous_insert_sql`, which writes `?` directly) are tested against.
#[cfg(test)]
pub(crate) fn insert_sql(table: &str, columns: &[&str], rows: usize, suffix: &str) -> String {
    let n = columns.len();
    let values = (0..rows)
        .map(|r| {
            let row = (1..=n)
                .map(|c| format!("${}", r * n + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!("INSERT INTO {table} ({}) VALUES {values}", columns.join(", "));
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

/// `ON CONFLICT (key) DO UPDATE SET c = excluded.c, ...` for every column not in `key`.
pub(crate) fn upsert_clause(key: &[&str], columns: &[&str]) -> String {
    let set = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ON CONFLICT ({}) DO UPDATE SET {set}", key.join(", "))
}

/// Columns of an event row as appended, in the order [`event_row`] gives their values.
pub(crate) const EVENT_INSERT_COLUMNS: &[&str] = &[
    "seq",
    "event_id",
    "platform",
    "external_id",
    "kind",
    "occurred_at",
    "platform_at",
    "received_at",
    "payload",
    "headers",
    "links",
    "hash",
    "revision_of",
];

/// The row an event is appended as, at `seq`, with its chain `hash` (and the event it revises, for a
/// conflicting redelivery). Every column the log keeps is built here.
pub(crate) fn event_row(seq: i64, event: &NewEvent, hash: &str, revision_of: Option<Uuid>) -> StoreResult<Row> {
    Ok(vec![
        Bind::Int(seq),
        Bind::Text(event.event_id.to_string()),
        Bind::Text(event.stream.platform.as_str().to_string()),
        Bind::Text(event.stream.external_id.clone()),
        Bind::Text(event.kind.clone()),
        Bind::Int(to_micros(event.occurred_at)),
        Bind::OptInt(event.platform_at.map(to_micros)),
        Bind::Int(to_micros(event.received_at)),
        Bind::Text(event.payload.clone()),
        Bind::Text(to_json("headers", &event.headers)?),
        Bind::Text(to_json("links", &event.links)?),
        Bind::Text(hash.to_string()),
        Bind::OptText(revision_of.map(|id| id.to_string())),
    ])
}

/// An event appended in this transaction as a reader will see it.
pub(crate) fn stored_event(
    seq: i64,
    event: &NewEvent,
    conversation_id: Option<Uuid>,
    hash: Option<String>,
    revision_of: Option<Uuid>,
) -> StoreResult<StoredEvent> {
    let stored = event
        .stored(seq)
        .map_err(|e| StoreError::Corrupt(format!("bad payload JSON: {e}")))?;
    Ok(StoredEvent {
        conversation_id,
        hash,
        revision_of,
        ..stored
    })
}

/// Columns of a stream row.
pub(crate) const STREAM_COLUMNS: &[&str] = &["platform", "external_id", "conversation_id", "first_seq"];

/// A stream filed under `conversation` by the event at `seq`.
pub(crate) fn stream_row(stream: &StreamKey, conversation: Uuid, seq: i64) -> Row {
    vec![
        Bind::Text(stream.platform.as_str().to_string()),
        Bind::Text(stream.external_id.clone()),
        Bind::Text(conversation.to_string()),
        Bind::Int(seq),
    ]
}

/// Columns of a conversation row, in the order [`conversation_row`] gives their values.
pub(crate) const CONVERSATION_COLUMNS: &[&str] = &[
    "id",
    "state",
    "disposition",
    "sla_status",
    "sla_deadline",
    "queue",
    "started_at",
    "updated_at",
    "last_seq",
    "doc",
    "fold",
];

/// The row of a projected conversation: its filter columns, its document and its kept fold state.
pub(crate) fn conversation_row(c: &Conversation, fold: &crate::projection::FoldState) -> StoreResult<Row> {
    Ok(vec![
        Bind::Text(c.id.to_string()),
        Bind::Text(c.state.as_str().to_string()),
        Bind::OptText(c.disposition.map(|d| d.as_str().to_string())),
        Bind::Text(c.sla_status.as_str().to_string()),
        Bind::OptInt(c.sla_deadline.map(to_micros)),
        Bind::OptText(c.queue.clone()),
        Bind::Int(to_micros(c.started_at)),
        Bind::Int(to_micros(c.updated_at)),
        Bind::Int(c.last_seq),
        Bind::Text(to_json("conversation", c)?),
        Bind::Text(to_json("fold state", fold)?),
    ])
}

/// Columns of a transcript line row, in the order [`message_rows`] gives their values.
pub(crate) const MESSAGE_COLUMNS: &[&str] = &[
    "conversation_id",
    "at",
    "seq",
    "idx",
    "party",
    "author",
    "kind",
    "text",
    "buttons",
    "cards",
    "url",
    "platform",
    "event_id",
];

/// The select list matching [`MessageRow`].
pub(crate) const MESSAGE_SELECT: &str =
    "at, seq, idx, party, author, kind, text, buttons, cards, url, platform, event_id";

/// A transcript line as read back:
/// `(at, seq, idx, party, author, kind, text, buttons, cards, url, platform, event_id)`.
pub(crate) type MessageRow = (
    i64,
    i64,
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    String,
);

/// The rows of transcript lines (in transcript order) of `conversation`. `idx` numbers the lines
/// of one `(at, seq)` (several lines of one event at one time), so the key keeps the fold's order.
pub(crate) fn message_rows(conversation: Uuid, messages: &[Message]) -> StoreResult<Vec<Row>> {
    let mut rows = Vec::with_capacity(messages.len());
    let mut previous: Option<(i64, i64)> = None;
    let mut idx = 0i64;
    for m in messages {
        let key = (to_micros(m.at), m.seq);
        idx = if previous == Some(key) { idx + 1 } else { 0 };
        previous = Some(key);
        rows.push(vec![
            Bind::Text(conversation.to_string()),
            Bind::Int(key.0),
            Bind::Int(key.1),
            Bind::Int(idx),
            Bind::Text(enum_text(&m.party)?),
            Bind::OptText(m.author.clone()),
            Bind::Text(enum_text(&m.kind)?),
            Bind::OptText(m.text.clone()),
            Bind::Text(to_json("buttons", &m.buttons)?),
            Bind::Text(to_json("cards", &m.cards)?),
            Bind::OptText(m.url.clone()),
            Bind::Text(m.platform.as_str().to_string()),
            Bind::Text(m.event_id.to_string()),
        ]);
    }
    Ok(rows)
}

/// A transcript line row as the domain type, with its cursor.
pub(crate) fn decode_message(row: MessageRow) -> StoreResult<(MessageCursor, Message)> {
    let (at, seq, idx, party, author, kind, text, buttons, cards, url, platform, event_id) = row;
    Ok((
        (at, seq, idx),
        Message {
            seq,
            at: from_micros(at)?,
            party: enum_from_text("party", &party)?,
            author,
            kind: enum_from_text("message kind", &kind)?,
            text,
            buttons: from_json("buttons", &buttons)?,
            cards: from_json("cards", &cards)?,
            url,
            platform: parse_platform(&platform)?,
            event_id: parse_uuid(&event_id)?,
        },
    ))
}

/// The snake_case name serde gives a unit enum variant.
fn enum_text<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(StoreError::Corrupt("an enum did not encode as a name".into())),
    }
}

fn enum_from_text<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> StoreResult<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|e| StoreError::Corrupt(format!("bad {what} `{text}`: {e}")))
}

/// Columns of a handoff row, in the order [`handoff_rows`] gives their values.
pub(crate) const HANDOFF_COLUMNS: &[&str] = &[
    "conversation_id",
    "ordinal",
    "backend",
    "queue",
    "requested_at",
    "queued_at",
    "attended_at",
    "closed_at",
    "agent",
    "agents",
    "transfers",
    "wait_seconds",
    "first_response_seconds",
    "handle_seconds",
    "sla_status",
    "sla_deadline",
    "disposition",
    "platform_disposition",
    "close_reason",
    "failure",
    "answered",
    "abandoned",
    "missed",
    "answered_wait_seconds",
    "unanswered_wait_seconds",
    "report_first_response_seconds",
    "report_handle_seconds",
    "first_response_at",
    "answered_wait_key",
    "disposition_at",
    "report_first_response_whole",
    "report_first_response_frac_hi",
    "report_first_response_frac_lo",
    "report_handle_whole",
    "report_handle_frac_hi",
    "report_handle_frac_lo",
];

/// One row per handoff of `c`, numbered from 0 in order.
pub(crate) fn handoff_rows(c: &Conversation) -> StoreResult<Vec<Row>> {
    c.handoffs
        .iter()
        .enumerate()
        .map(|(ordinal, h)| {
            let answered_wait = metrics::wait_seconds(h).filter(|_| metrics::is_answered(h));
            let first_response = metrics::first_response_seconds(h);
            let handle = metrics::handle_seconds(h);
            // The instant a disposition is credited at, when the handoff has one (`store::report`).
            let disposition_at = h
                .disposition
                .and(h.closed_at.or(h.attended_at).or(h.queued_at).or(h.requested_at));
            let parts = |seconds: Option<f64>| {
                let parts = seconds.and_then(ExactTime::of);
                [
                    Bind::OptInt(parts.map(|p| p.whole)),
                    Bind::OptInt(parts.map(|p| p.frac_hi)),
                    Bind::OptInt(parts.map(|p| p.frac_lo)),
                ]
            };
            Ok(vec![
                Bind::Text(c.id.to_string()),
                Bind::Int(ordinal as i64),
                Bind::Text(h.backend.clone()),
                Bind::OptText(h.queue.clone()),
                Bind::OptInt(h.requested_at.map(to_micros)),
                Bind::OptInt(h.queued_at.map(to_micros)),
                Bind::OptInt(h.attended_at.map(to_micros)),
                Bind::OptInt(h.closed_at.map(to_micros)),
                Bind::OptText(h.agents.first().map(|a| a.name.clone())),
                Bind::Text(to_json("agents", &h.agents)?),
                Bind::Int(i64::from(h.transfers)),
                Bind::OptFloat(h.wait_seconds),
                Bind::OptFloat(h.first_response_seconds),
                Bind::OptFloat(h.handle_seconds),
                Bind::Text(h.sla_status.as_str().to_string()),
                Bind::OptInt(h.sla_deadline.map(to_micros)),
                Bind::OptText(h.disposition.map(|d| d.as_str().to_string())),
                Bind::OptText(h.platform_disposition.clone()),
                Bind::OptText(h.close_reason.clone()),
                Bind::OptText(h.failure.clone()),
                // What the reports aggregate, each decided by its one definition (`store::report`).
                Bind::Int(i64::from(metrics::is_answered(h))),
                Bind::Int(i64::from(metrics::is_abandoned(h))),
                Bind::Int(i64::from(metrics::is_missed(h))),
                Bind::OptFloat(answered_wait),
                Bind::OptFloat(metrics::unanswered_wait_seconds(h)),
                Bind::OptFloat(first_response),
                Bind::OptFloat(handle),
                Bind::OptInt(metrics::first_response_at(h).map(to_micros)),
                Bind::OptInt(answered_wait.map(super::report::wait_key)),
                Bind::OptInt(disposition_at.map(to_micros)),
            ]
            .into_iter()
            .chain(parts(first_response))
            .chain(parts(handle))
            .collect())
        })
        .collect()
}

/// Columns of the agent filter's rows.
pub(crate) const AGENT_COLUMNS: &[&str] = &["agent", "started_at", "conversation_id"];

/// One row per distinct agent name of `c` (as the filter compares it), carrying `started_at` so
/// that a page of one agent's conversations is read from the index in order.
pub(crate) fn agent_rows(c: &Conversation) -> Vec<Row> {
    let names: std::collections::BTreeSet<String> = c.agents.iter().map(|a| agent_token(&a.name)).collect();
    names
        .into_iter()
        .map(|name| {
            vec![
                Bind::Text(name),
                Bind::Int(to_micros(c.started_at)),
                Bind::Text(c.id.to_string()),
            ]
        })
        .collect()
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

/// `text` with the separators of [`log_entries_sql`]'s lines escaped (`\` as `\\`, `,` as `\c`, a newline
/// as `\n`), as SQL both databases run.
fn escaped(text: &str) -> String {
    format!("replace(replace(replace({text}, '\\', '\\\\'), ',', '\\c'), '\n', '\\n')")
}

/// The log after `$1`, at most `$2` events, as one text (NULL when none): a line per event, in no
/// particular order, `seq,event_id,platform,occurred_at,received_at,conversation_id,kind,external_id` (the
/// last two escaped, see [`escaped`]; the conversation id empty when none). One row instead of one per event:
/// the per-row cost of the driver is most of what reading thousands of short rows costs.
pub(crate) fn log_entries_sql() -> String {
    format!(
        "SELECT string_agg(x.line, '\n') FROM (SELECT e.seq || ',' || e.event_id || ',' || e.platform || ',' || \
         e.occurred_at || ',' || e.received_at || ',' || COALESCE(s.conversation_id, '') || ',' || {} || ',' || \
         {} AS line FROM events e \
         LEFT JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE e.seq > $1 ORDER BY e.seq LIMIT $2) x",
        escaped("e.kind"),
        escaped("e.external_id")
    )
}

/// The payloads of the `ledger.erased` events with `$1 < seq <= $2`: `(seq, payload)`.
pub(crate) fn erasure_payloads_sql() -> String {
    format!(
        "SELECT seq, payload FROM events WHERE seq > $1 AND seq <= $2 AND kind = '{}'",
        crate::sources::ledger::ERASED
    )
}

/// The inverse of [`escaped`].
fn unescaped(text: &str) -> StoreResult<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('c') => out.push(','),
            Some('n') => out.push('\n'),
            other => return Err(StoreError::Corrupt(format!("bad escape `\\{other:?}` in a log line"))),
        }
    }
    Ok(out)
}

/// The lines of [`log_entries_sql`] as entries in seq order (without erasure payloads).
pub(crate) fn decode_log_entries(text: Option<&str>) -> StoreResult<Vec<LogEntry>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let bad = |line: &str| StoreError::Corrupt(format!("bad log line `{line}`"));
    let mut entries = Vec::new();
    for line in text.split('\n') {
        let fields: Vec<&str> = line.split(',').collect();
        let [seq, event_id, platform, occurred_at, received_at, conversation, kind, external_id] = fields[..] else {
            return Err(bad(line));
        };
        let int = |v: &str| v.parse::<i64>().map_err(|_| bad(line));
        entries.push(LogEntry {
            seq: int(seq)?,
            event_id: parse_uuid(event_id)?,
            platform: parse_platform(platform)?,
            external_id: unescaped(external_id)?,
            kind: unescaped(kind)?,
            occurred_at: from_micros(int(occurred_at)?)?,
            received_at: from_micros(int(received_at)?)?,
            conversation_id: (!conversation.is_empty())
                .then(|| parse_uuid(conversation))
                .transpose()?,
            erasure: None,
        });
    }
    entries.sort_unstable_by_key(|e| e.seq);
    Ok(entries)
}

/// The transcript lines of the conversations `$1..$n` as one text (NULL when none): a line per transcript
/// line, in no particular order, `conversation_id,at,seq,idx,party,kind,platform,text` (the text escaped, see
/// [`escaped`]; empty when none). One row per statement instead of one per line (see [`log_entries_sql`]).
pub(crate) fn transcript_lines_sql(ids: super::sql::InList) -> String {
    format!(
        "SELECT string_agg(conversation_id || ',' || at || ',' || seq || ',' || idx || ',' || party || ',' || \
         kind || ',' || platform || ',' || {}, '\n') FROM messages WHERE conversation_id {ids}",
        escaped("COALESCE(text, '')"),
    )
}

/// The lines of [`transcript_lines_sql`] with their conversation ids, in transcript order per conversation
/// (`at, seq, idx`), each decoded as [`decode_message`] decodes those fields.
pub(crate) fn decode_transcript_lines(text: Option<&str>) -> StoreResult<Vec<(Uuid, TranscriptLine)>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let bad = |line: &str| StoreError::Corrupt(format!("bad transcript line `{line}`"));
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let mut fields = line.splitn(8, ',');
        let mut next = || fields.next().ok_or_else(|| bad(line));
        let (conversation, at, seq, idx, party, kind, platform, escaped_text) =
            (next()?, next()?, next()?, next()?, next()?, next()?, next()?, next()?);
        let int = |v: &str| v.parse::<i64>().map_err(|_| bad(line));
        let at = int(at)?;
        let seq = int(seq)?;
        lines.push((
            (parse_uuid(conversation)?, at, seq, int(idx)?),
            TranscriptLine {
                seq,
                at: from_micros(at)?,
                party: enum_from_text("party", party)?,
                kind: enum_from_text("message kind", kind)?,
                platform: parse_platform(platform)?,
                text_chars: unescaped(escaped_text)?.chars().count() as u32,
            },
        ));
    }
    lines.sort_unstable_by_key(|(key, _)| *key);
    Ok(lines.into_iter().map(|((id, ..), line)| (id, line)).collect())
}

/// An event row as the domain type; the payload text is parsed back into JSON.
pub(crate) fn decode_event(row: EventRow) -> StoreResult<StoredEvent> {
    let (
        seq,
        event_id,
        platform,
        external_id,
        kind,
        occurred_at,
        platform_at,
        received_at,
        payload,
        headers,
        conversation,
        hash,
        revision_of,
    ) = row;
    Ok(StoredEvent {
        seq,
        event_id: parse_uuid(&event_id)?,
        platform: parse_platform(&platform)?,
        external_id,
        kind,
        occurred_at: from_micros(occurred_at)?,
        platform_at: platform_at.map(from_micros).transpose()?,
        received_at: from_micros(received_at)?,
        conversation_id: conversation.as_deref().map(parse_uuid).transpose()?,
        headers: from_json("headers", &headers)?,
        payload: from_json("payload", &payload)?,
        hash,
        revision_of: revision_of.as_deref().map(parse_uuid).transpose()?,
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

/// One agent name as the agent filter compares it: the whole name, lower-cased (case-insensitive on
/// both backends alike).
pub(crate) fn agent_token(name: &str) -> String {
    name.to_lowercase()
}

/// The page query of `list_conversations`: selects `(doc, started_at, id)`, one row more than the
/// page so the caller knows whether another page follows. Every filter has an index to start from:
/// the agent filter walks `conversation_agents` (agent, started_at, id) in page order; a stream
/// filter looks the few conversations of that key up through `streams` (platform, external_id) or
/// `streams_external_id`; the others have an index of `conversations` led by their column.
pub(crate) fn list_conversations_query(filter: &ConversationFilter) -> (String, Vec<Bind>) {
    // With the agent filter the page is ordered by the agent rows' own copy of the position.
    let (from, pos) = if filter.agent.is_some() {
        (
            "conversation_agents a JOIN conversations c ON c.id = a.conversation_id",
            ("a.started_at", "a.conversation_id"),
        )
    } else {
        ("conversations c", ("c.started_at", "c.id"))
    };
    let mut sql = String::new();
    // `breached` as of now is two ordered walks (breached; pending past its deadline), merged.
    let mut breached_by: Option<String> = None;
    let mut binds = Vec::new();
    fn bind(binds: &mut Vec<Bind>, value: Bind) -> String {
        binds.push(value);
        format!("${}", binds.len())
    }
    if let Some(agent) = &filter.agent {
        let p = bind(&mut binds, Bind::Text(agent_token(agent)));
        sql.push_str(&format!(" AND a.agent = {p}"));
    }
    // Both on the same stream: `platform` + `external_id` together name one stream key. An external
    // id names a handful of conversations: they are looked up. A platform alone matches many: the
    // page is read in order and each conversation checked.
    match (&filter.platform, &filter.external_id) {
        (platform, Some(external_id)) => {
            sql.push_str(" AND c.id IN (SELECT s.conversation_id FROM streams s WHERE");
            if let Some(platform) = platform {
                let p = bind(&mut binds, Bind::Text(platform.as_str().to_string()));
                sql.push_str(&format!(" s.platform = {p} AND"));
            }
            let p = bind(&mut binds, Bind::Text(external_id.clone()));
            sql.push_str(&format!(" s.external_id = {p})"));
        }
        (Some(platform), None) => {
            let p = bind(&mut binds, Bind::Text(platform.as_str().to_string()));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM streams s WHERE s.conversation_id = c.id AND s.platform = {p})"
            ));
        }
        (None, None) => {}
    }
    // `pending` and `breached` are read as of now: a handoff waiting past its target reads `breached`.
    match (filter.sla_status, filter.now) {
        (Some(SlaStatus::Pending), Some(now)) => {
            let p = bind(&mut binds, Bind::Int(to_micros(now)));
            sql.push_str(&format!(
                " AND c.sla_status = 'pending' AND (c.sla_deadline IS NULL OR c.sla_deadline > {p})"
            ));
        }
        (Some(SlaStatus::Breached), Some(now)) => breached_by = Some(bind(&mut binds, Bind::Int(to_micros(now)))),
        (Some(status), _) => {
            let p = bind(&mut binds, Bind::Text(status.as_str().to_string()));
            sql.push_str(&format!(" AND c.sla_status = {p}"));
        }
        (None, _) => {}
    }
    for (column, value) in [
        ("state", filter.state.map(HandoffState::as_str)),
        ("disposition", filter.disposition.map(Disposition::as_str)),
        ("queue", filter.queue.as_deref()),
    ] {
        if let Some(value) = value {
            let p = bind(&mut binds, Bind::Text(value.to_string()));
            sql.push_str(&format!(" AND c.{column} = {p}"));
        }
    }
    let (started, id) = pos;
    if let Some(since) = filter.since {
        let p = bind(&mut binds, Bind::Int(to_micros(since)));
        sql.push_str(&format!(" AND {started} >= {p}"));
    }
    if let Some(until) = filter.until {
        let p = bind(&mut binds, Bind::Int(to_micros(until)));
        sql.push_str(&format!(" AND {started} < {p}"));
    }
    if let Some((at, after)) = filter.after {
        let s = bind(&mut binds, Bind::Int(at));
        let i = bind(&mut binds, Bind::Text(after.to_string()));
        sql.push_str(&format!(" AND ({started} < {s} OR ({started} = {s} AND {id} < {i}))"));
    }
    let l = bind(&mut binds, Bind::Int(i64::from(filter.limit.max(1)) + 1));
    let select = |extra: &str| {
        format!(
            "SELECT c.doc, c.started_at, c.id FROM {from} WHERE 1 = 1{sql}{extra} \
             ORDER BY {started} DESC, {id} DESC LIMIT {l}"
        )
    };
    let sql = match breached_by {
        None => select(""),
        Some(p) => format!(
            "SELECT doc, started_at, id FROM (SELECT * FROM ({}) b UNION ALL SELECT * FROM ({}) p) u \
             ORDER BY started_at DESC, id DESC LIMIT {l}",
            select(" AND c.sla_status = 'breached'"),
            select(&format!(" AND c.sla_status = 'pending' AND c.sla_deadline <= {p}"))
        ),
    };
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
    fn agent_rows_hold_each_whole_name_once_lower_cased() {
        let c = conversation(&["Tomas", "Ana_1", "TOMAS"]);
        let rows = agent_rows(&c);
        let started = Bind::Int(1_700_000_000_000_000);
        let id = Bind::Text(Uuid::from_u128(7).to_string());
        assert_eq!(
            rows,
            vec![
                vec![Bind::Text("ana_1".into()), started.clone(), id.clone()],
                vec![Bind::Text("tomas".into()), started, id],
            ]
        );
        assert!(agent_rows(&conversation(&[])).is_empty());
    }

    #[test]
    fn conversation_row_carries_the_filter_columns() {
        let c = conversation(&["Tomas"]);
        let row = conversation_row(&c, &crate::projection::FoldState::default()).unwrap();
        assert_eq!(row.len(), CONVERSATION_COLUMNS.len());
        let column = |name: &str| row[CONVERSATION_COLUMNS.iter().position(|c| *c == name).unwrap()].clone();
        assert_eq!(column("state"), Bind::Text("attended".into()));
        assert_eq!(column("sla_status"), Bind::Text("pending".into()));
        assert_eq!(column("queue"), Bind::OptText(Some("2179".into())));
        assert_eq!(column("started_at"), Bind::Int(1_700_000_000_000_000));
        assert_eq!(column("updated_at"), Bind::Int(1_700_000_000_500_000));
        let Bind::Text(doc) = column("doc") else {
            panic!("doc is text")
        };
        let back: Conversation = from_json("doc", &doc).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn message_rows_number_the_lines_of_one_event_and_time_and_read_back() {
        let at = from_micros(1_700_000_000_000_000).unwrap();
        let line = |seq: i64, text: &str| Message {
            seq,
            at,
            party: crate::model::Party::Agent,
            author: Some("Ana".into()),
            kind: crate::model::MessageKind::Text,
            text: Some(text.into()),
            buttons: Vec::new(),
            cards: Vec::new(),
            url: None,
            platform: Platform::Vcc,
            event_id: Uuid::from_u128(seq as u128),
        };
        let lines = vec![line(3, "a"), line(3, "b"), line(4, "c")];
        let rows = message_rows(Uuid::from_u128(7), &lines).unwrap();
        let idx: Vec<Bind> = rows.iter().map(|r| r[3].clone()).collect();
        assert_eq!(idx, vec![Bind::Int(0), Bind::Int(1), Bind::Int(0)]);
        let read: MessageRow = (
            1_700_000_000_000_000,
            3,
            1,
            "agent".into(),
            Some("Ana".into()),
            "text".into(),
            Some("b".into()),
            "[]".into(),
            "[]".into(),
            None,
            "vcc".into(),
            Uuid::from_u128(3).to_string(),
        );
        assert_eq!(
            decode_message(read).unwrap(),
            ((1_700_000_000_000_000, 3, 1), lines[1].clone())
        );
    }

    #[test]
    fn multi_row_inserts_number_placeholders_row_after_row() {
        assert_eq!(
            insert_sql("t", &["a", "b"], 2, &upsert_clause(&["a"], &["a", "b"])),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
        );
        assert_eq!(insert_sql("t", &["a"], 1, ""), "INSERT INTO t (a) VALUES ($1)");
    }

    #[test]
    fn list_query_numbers_its_placeholders_in_bind_order() {
        let filter = ConversationFilter {
            platform: Some(Platform::AivoLive),
            external_id: Some("room".into()),
            state: Some(HandoffState::Closed),
            since: Some(from_micros(10).unwrap()),
            limit: 2,
            after: Some((50, Uuid::from_u128(9))),
            ..ConversationFilter::default()
        };
        let (sql, binds) = list_conversations_query(&filter);
        assert_eq!(
            sql,
            "SELECT c.doc, c.started_at, c.id FROM conversations c WHERE 1 = 1 \
             AND c.id IN (SELECT s.conversation_id FROM streams s WHERE s.platform = $1 \
             AND s.external_id = $2) AND c.state = $3 \
             AND c.started_at >= $4 AND (c.started_at < $5 OR (c.started_at = $5 AND c.id < $6)) \
             ORDER BY c.started_at DESC, c.id DESC LIMIT $7"
        );
        assert_eq!(
            binds,
            vec![
                Bind::Text("aivo_live".into()),
                Bind::Text("room".into()),
                Bind::Text("closed".into()),
                Bind::Int(10),
                Bind::Int(50),
                Bind::Text(Uuid::from_u128(9).to_string()),
                Bind::Int(3),
            ]
        );
    }

    #[test]
    fn the_agent_filter_pages_through_the_agent_rows() {
        let filter = ConversationFilter {
            agent: Some("Tomas".into()),
            queue: Some("2179".into()),
            limit: 5,
            ..ConversationFilter::default()
        };
        let (sql, binds) = list_conversations_query(&filter);
        assert_eq!(
            sql,
            "SELECT c.doc, c.started_at, c.id FROM conversation_agents a JOIN conversations c \
             ON c.id = a.conversation_id WHERE 1 = 1 AND a.agent = $1 AND c.queue = $2 \
             ORDER BY a.started_at DESC, a.conversation_id DESC LIMIT $3"
        );
        assert_eq!(
            binds,
            vec![Bind::Text("tomas".into()), Bind::Text("2179".into()), Bind::Int(6)]
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
            Some(3_000_000),
            2_000_000,
            r#"{"b":1,"a":[true]}"#.into(),
            r#"{"content-type":"application/json"}"#.into(),
            Some(Uuid::from_u128(8).to_string()),
            Some("ab".repeat(32)),
            None,
        );
        let e = decode_event(row).unwrap();
        assert_eq!(e.hash, Some("ab".repeat(32)));
        assert_eq!(e.platform_at.map(|t| t.timestamp_micros()), Some(3_000_000));
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
