//! The SQL backends. One implementation of the store's logic, expanded by `sql_store!` for SQLite
//! and for PostgreSQL. Every statement is a constant below or built by `codec`, the same text on both
//! backends (`$n` placeholders, `ON CONFLICT`, `RETURNING`, portable column types); only the
//! migrations, the way a write transaction is opened, connecting, and how lists of values and a
//! batch's writes are bound ([`Dialect`]: SQLite a placeholder per value, PostgreSQL one array per
//! list or column, so that its statements keep their text and stay prepared) differ.
//!
//! # The write path
//!
//! A batch costs a constant number of round trips, whatever its size and however long its
//! conversations are:
//! 1. the log's head (last seq and hash) with the ids already stored (one statement), and the
//!    stream -> conversation map of every stream the batch names are read once ([`Filing`]);
//! 2. each event is filed in memory (new streams, links); only a merge (rare) goes to the database
//!    at once, after flushing what is pending so it sees the log as it stands;
//! 3. every touched conversation's kept fold state and stored streams are read in one statement and
//!    the new events' facts are applied to it ([`projection::FoldState::extend`]); a conversation
//!    that merged, or whose new facts sort before its watermark, is refolded from its events instead
//!    (after the batch's rows are written, so the refold reads them);
//! 4. events, new streams, conversation rows, new transcript lines, changed handoff rows and agent
//!    rows are written with multi-row statements, gathered in [`Writes`] and run together: on SQLite
//!    one call, on PostgreSQL one statement of `UNNEST` arrays per run of inserts; a conversation
//!    whose indexed columns did not change updates none of its indexes;
//! 5. the relay planner's reads (the latest queue call of the conversations that need it) are one
//!    statement, and the commands it plans are appended in the same transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::chained::{self, chained_store};
use super::codec::{self, Bind, EventRow, MessageRow, QuarantineRow, Row, EVENT_COLUMNS};
use super::erasing::{self, erasing_store};
use super::replay;
use super::report;
use super::{
    ConversationFilter, ConversationPage, LogEntry, MessageCursor, RelayPlanner, ReplayStats, Store, StoreError,
    StoreResult, TranscriptLine, TranscriptPage,
};
use crate::chain::{self, ChainHead, ChainLink, ChainRow};
use crate::config::SlaConfig;
use crate::model::{
    AppendOutcome, Conversation, Message, NewEvent, NewQuarantine, QuarantineEntry, Redrive, StoredEvent, StreamKey,
};
use crate::projection::{self, FoldState, LogExtent};

/// Events read per round trip while replaying the log.
const REPLAY_CHUNK: i64 = 1_000;

const SQL_LAST_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM events";
const SQL_STREAM_CONVERSATION: &str = "SELECT conversation_id FROM streams WHERE platform = $1 AND external_id = $2";
const SQL_CONVERSATION_HAS_STREAM: &str = "SELECT conversation_id FROM streams WHERE conversation_id = $1 LIMIT 1";
const SQL_RESOLVE_ALIAS: &str = "SELECT survivor_id FROM aliases WHERE absorbed_id = $1";
// Only events before the one being filed count, so that replay (which walks a log whose later
// events are already there) decides every merge exactly as the incremental append did.
const SQL_STARTED_BEFORE: &str = "SELECT MIN(e.occurred_at) FROM events e \
     JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
     WHERE s.conversation_id = $1 AND e.seq < $2";
const SQL_REPOINT_STREAMS: &str = "UPDATE streams SET conversation_id = $1 WHERE conversation_id = $2";
const SQL_REPOINT_ALIASES: &str = "UPDATE aliases SET survivor_id = $1 WHERE survivor_id = $2";
const SQL_INSERT_ALIAS: &str = "INSERT INTO aliases (absorbed_id, survivor_id) VALUES ($1, $2) \
     ON CONFLICT (absorbed_id) DO UPDATE SET survivor_id = excluded.survivor_id";
/// Everything projected for one conversation (an absorbed one, or one about to be refolded).
const SQL_DELETE_PROJECTION: [&str; 4] = [
    "DELETE FROM conversations WHERE id = $1",
    "DELETE FROM messages WHERE conversation_id = $1",
    "DELETE FROM handoffs WHERE conversation_id = $1",
    "DELETE FROM conversation_agents WHERE conversation_id = $1",
];
// `$1` resolved through the aliases in the same statement.
const SQL_GET_CONVERSATION: &str = "SELECT doc FROM conversations WHERE id = \
     COALESCE((SELECT a.survivor_id FROM aliases a WHERE a.absorbed_id = $1), $1)";
const SQL_RESOLVE_CONVERSATION: &str = "SELECT id FROM conversations WHERE id = \
     COALESCE((SELECT a.survivor_id FROM aliases a WHERE a.absorbed_id = $1), $1)";
const SQL_INSERT_QUARANTINE: &str = "INSERT INTO quarantine \
     (received_at, path, platform, error_code, error_message, status, headers, body, body_size, body_sha256) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";
const SQL_LIST_QUARANTINE: &str = "SELECT id, received_at, path, platform, error_code, error_message, status, \
     headers, body FROM quarantine ORDER BY id DESC LIMIT $1";
const SQL_LIST_QUARANTINE_BEFORE: &str = "SELECT id, received_at, path, platform, error_code, error_message, \
     status, headers, body FROM quarantine WHERE id < $2 ORDER BY id DESC LIMIT $1";
const SQL_GET_QUARANTINE_BODY: &str = "SELECT body FROM quarantine WHERE id = $1";
const SQL_INSERT_REDRIVE: &str = "INSERT INTO quarantine_redrives \
     (quarantine_id, at, status, outcome, error_code, event_id, seq, conversation_id, key_name) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

fn redrives_of_sql(n: usize) -> String {
    format!(
        "SELECT quarantine_id, at, status, outcome, error_code, event_id, seq, conversation_id, key_name \
         FROM quarantine_redrives WHERE quarantine_id IN ({}) ORDER BY id",
        placeholders(1, n)
    )
}
const SQL_GET_CHECKPOINT: &str = "SELECT value FROM checkpoints WHERE name = $1";
const SQL_SET_CHECKPOINT: &str = "INSERT INTO checkpoints (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET value = excluded.value";
const SQL_REPLAY_CHUNK: &str = "SELECT seq, platform, external_id, links FROM events WHERE seq > $1 \
     ORDER BY seq LIMIT $2";
const SQL_ALL_CONVERSATIONS: &str = "SELECT DISTINCT conversation_id FROM streams ORDER BY conversation_id";
const SQL_STALE_CONVERSATIONS: &str = "SELECT id FROM conversations WHERE fold = '' ORDER BY id";
const SQL_CLEAR_PROJECTIONS: [&str; 6] = [
    "DELETE FROM conversations",
    "DELETE FROM messages",
    "DELETE FROM handoffs",
    "DELETE FROM conversation_agents",
    "DELETE FROM aliases",
    "DELETE FROM streams",
];

fn conversation_events_sql(limit: bool) -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE s.conversation_id = $1 AND e.seq > $2 ORDER BY e.seq{}",
        if limit { " LIMIT $3" } else { "" }
    )
}

fn transcript_sql(limit: bool) -> String {
    format!(
        "SELECT {} FROM messages WHERE conversation_id = $1 AND (at, seq, idx) > ($2, $3, $4) \
         ORDER BY at, seq, idx{}",
        codec::MESSAGE_SELECT,
        if limit { " LIMIT $5" } else { "" }
    )
}

fn event_lines_sql() -> String {
    format!(
        "SELECT {} FROM messages WHERE conversation_id = $1 AND seq = $2 ORDER BY at, seq, idx",
        codec::MESSAGE_SELECT
    )
}

fn events_after_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         LEFT JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE e.seq > $1 ORDER BY e.seq LIMIT $2"
    )
}

/// Most values bound in one `IN (...)` list (SQLite allows 32,766 parameters; PostgreSQL 65,535).
const IN_CHUNK: usize = 500;

/// `$first, $first+1, ...` for `n` values.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a statement names a list of values: `IN ($first, ..., $(first + n - 1))`, a placeholder per value
/// (SQLite), or `= ANY($first)`, one array (PostgreSQL: the statement's text is the same whatever the
/// list's length, so the connection parses and plans it once and keeps it prepared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InList {
    Values { first: usize, n: usize },
    Array { first: usize },
}

impl InList {
    /// The first placeholder after the list.
    pub(super) fn next(self) -> usize {
        match self {
            InList::Values { first, n } => first + n,
            InList::Array { first } => first + 1,
        }
    }

    /// A list of as many values right after this one.
    fn following(self) -> InList {
        match self {
            InList::Values { n, .. } => InList::Values { first: self.next(), n },
            InList::Array { .. } => InList::Array { first: self.next() },
        }
    }
}

impl std::fmt::Display for InList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InList::Values { first, n } => write!(f, "IN ({})", placeholders(*first, *n)),
            InList::Array { first } => write!(f, "= ANY(${first})"),
        }
    }
}

fn event_ids_sql(ids: InList) -> String {
    format!("SELECT event_id FROM events WHERE event_id {ids}")
}

fn known_events_sql(ids: InList) -> String {
    format!("SELECT {}", known_events_from(ids))
}

/// The columns ([`KnownRow`]) and rows of [`known_events_sql`], after its `SELECT`.
fn known_events_from(ids: InList) -> String {
    format!(
        "e.event_id, e.seq, e.platform, e.external_id, e.received_at, e.payload, x.payload_sha256, \
         e.revision_of FROM events e LEFT JOIN erased_events x ON x.seq = e.seq WHERE e.event_id {ids}"
    )
}

/// A row of [`known_events_sql`].
type KnownRow = (String, i64, String, String, i64, String, Option<String>, Option<String>);

/// An event of the log as deduplication reads it, from its row.
fn known_of(row: KnownRow) -> StoreResult<(Uuid, Known)> {
    let (id, seq, platform, external_id, received_at, payload, erased_sha, revision_of) = row;
    let stream = if external_id.is_empty() {
        None
    } else {
        Some(codec::stream_key(&platform, external_id)?)
    };
    let payload_sha256 = match erased_sha {
        Some(hex) => chain::from_hex(&hex)
            .ok_or_else(|| StoreError::Corrupt(format!("bad payload digest of erased event {seq}")))?,
        None => chain::payload_sha256(&payload),
    };
    let known = Known {
        seq,
        stream,
        received_at,
        payload_sha256,
        revision_of: revision_of.as_deref().map(codec::parse_uuid).transpose()?,
    };
    Ok((codec::parse_uuid(&id)?, known))
}

/// Whether a stream has an event after `$3` from another delivery than the one received at `$4`.
const SQL_STREAM_MOVED_ON: &str = "SELECT seq FROM events WHERE platform = $1 AND external_id = $2 \
     AND seq > $3 AND received_at <> $4 LIMIT 1";

/// The latest accepted queue call of each stream of the conversations `ids`: for each stream the
/// highest seq of its queue calls (one lookup in the partial index `events_queue_calls`, whose condition
/// names the kind as a literal so that both databases use it), then those events; the caller keeps the
/// highest per conversation. Written per stream so that neither database can plan it as a backward walk
/// of the whole log, or a scan of every queue call.
fn latest_queue_calls_sql(ids: InList) -> String {
    let kind = crate::sources::ledger::QUEUE_ACCEPTED;
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE e.seq IN (SELECT (SELECT MAX(q.seq) FROM events q WHERE q.platform = qs.platform \
           AND q.external_id = qs.external_id AND q.kind = '{kind}') \
           FROM streams qs WHERE qs.conversation_id {ids})"
    )
}

/// The attend events of a conversation (Aivo Live `attended`, Bright Pattern `party_joined`), newest first,
/// through the partial index `events_attends`: what the relay planner reads when it asks for them.
fn attends_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE s.conversation_id = $1 AND e.kind IN ('{}', '{}') ORDER BY e.seq DESC",
        crate::sources::aivo_live::ATTENDED,
        crate::sources::bright_pattern::PARTY_JOINED
    )
}

fn aliases_sql(ids: InList) -> String {
    format!("SELECT absorbed_id, survivor_id FROM aliases WHERE absorbed_id {ids}")
}

fn streams_of_sql(ids: InList) -> String {
    format!(
        "SELECT conversation_id, platform, external_id FROM streams WHERE conversation_id {ids} \
         ORDER BY conversation_id, first_seq, platform, external_id"
    )
}

fn events_of_sql(ids: InList) -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE s.conversation_id {ids} ORDER BY e.seq"
    )
}

/// The streams (`conversation_id, platform, external_id, NULL`) and the kept fold state
/// (`id, NULL, NULL, fold`) of the conversations `ids`, given twice (the second list after the first).
fn folds_and_streams_sql(ids: InList) -> String {
    format!(
        "SELECT conversation_id, platform, external_id, NULL FROM streams WHERE conversation_id {ids} \
         UNION ALL SELECT id, NULL, NULL, fold FROM conversations WHERE id {}",
        ids.following()
    )
}

fn delete_in_sql(table: &str, column: &str, ids: InList) -> String {
    format!("DELETE FROM {table} WHERE {column} {ids}")
}

/// The conversation of each stream of `streams` (a [`Dialect::streams_named`]).
fn stream_conversations_sql(streams: &str) -> String {
    format!("SELECT s.platform, s.external_id, s.conversation_id FROM {streams}")
}

/// What a batch reads first, in one statement, tagged: the log's head (`head`: its seq, and its hash
/// where the payload goes), [`known_events_sql`]'s rows of `ids` (`event`), and the conversation of each
/// stream of `streams` (a [`Dialect::streams_named`]; `stream`: the conversation where the event id goes).
fn batch_reads_sql(ids: InList, streams: &str) -> String {
    format!(
        "SELECT 'head', NULL, h.seq, NULL, NULL, NULL, h.hash, NULL, NULL FROM ({}) h \
         UNION ALL SELECT 'event', {} \
         UNION ALL SELECT 'stream', s.conversation_id, NULL, s.platform, s.external_id, NULL, NULL, NULL, NULL \
         FROM {streams}",
        chained::SQL_HEAD,
        known_events_from(ids)
    )
}

/// [`batch_reads_sql`] with, after its rows, the kept fold state (`fold`: the id, and the fold where the
/// payload goes) and the stored streams (`held`: the conversation id, platform, external id) of every
/// conversation the batch may extend: those of the streams of `streams`, and the ids in array `$own` (each
/// stream's own conversation, what a stream nobody has filed yet starts). What [`folds_and_streams_sql`]
/// reads for them later, read in the batch's first round trip (PostgreSQL; the batch's writes wait until
/// it is projected, so nothing changes these rows in between unless the batch merges).
fn batch_reads_with_folds_sql(ids: InList, streams: &str, own: usize) -> String {
    format!(
        "WITH k AS MATERIALIZED (SELECT s.platform, s.external_id, s.conversation_id FROM {streams}), \
         c AS MATERIALIZED (SELECT conversation_id AS id FROM k UNION SELECT unnest(${own}::text[]) COLLATE \"C\") \
         SELECT 'head', NULL, h.seq, NULL, NULL, NULL, h.hash, NULL, NULL FROM ({}) h \
         UNION ALL SELECT 'event', {} \
         UNION ALL SELECT 'stream', k.conversation_id, NULL, k.platform, k.external_id, NULL, NULL, NULL, NULL FROM k \
         UNION ALL SELECT 'fold', v.id, NULL, NULL, NULL, NULL, v.fold, NULL, NULL \
         FROM c CROSS JOIN LATERAL (SELECT id, fold FROM conversations WHERE id = c.id OFFSET 0) v \
         UNION ALL SELECT 'held', t.conversation_id, NULL, t.platform, t.external_id, NULL, NULL, NULL, NULL \
         FROM c CROSS JOIN LATERAL (SELECT conversation_id, platform, external_id FROM streams \
         WHERE conversation_id = c.id OFFSET 0) t",
        chained::SQL_HEAD,
        known_events_from(ids)
    )
}

/// A row of [`batch_reads_sql`].
type BatchRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A stream's conversation as read: `(platform, external_id, conversation_id)`.
type StreamRow = (String, String, String);

/// The streams a batch files its events under, each once, in order (none for events filed under none).
fn filing_keys<'k>(keys: &[&'k StreamKey]) -> Vec<&'k StreamKey> {
    let keys: BTreeSet<&StreamKey> = keys.iter().copied().filter(|k| !k.external_id.is_empty()).collect();
    keys.into_iter().collect()
}

/// An appended (or recognised) event waiting for its conversation to be known after the whole batch.
struct Pending {
    event_id: Uuid,
    seq: i64,
    duplicate: bool,
    conflict: bool,
    stream: Option<StreamKey>,
}

/// An event in the log (or appended earlier in this batch) as deduplication reads it.
#[derive(Debug, Clone)]
struct Known {
    seq: i64,
    stream: Option<StreamKey>,
    /// Micros.
    received_at: i64,
    /// Of its payload as received (an erased event's: the digest its erasure kept).
    payload_sha256: chain::Sha256Digest,
    revision_of: Option<Uuid>,
}

/// What a delivered event is to the log.
enum Verdict {
    /// Already stored: the event with this id.
    Duplicate(Uuid, Known),
    /// New, appended under this id; `revision_of`: the event it is a newer version of.
    Append { id: Uuid, revision_of: Option<Uuid> },
}

/// The id of the version of event `root` whose payload has digest `sha`: a redelivery of that very
/// version finds it, any other body makes another.
fn revision_id(root: Uuid, sha: &chain::Sha256Digest) -> Uuid {
    Uuid::new_v5(
        &crate::model::LEDGER_NAMESPACE,
        format!("revision:{root}:{}", chain::to_hex(sha)).as_bytes(),
    )
}

/// The id of the next occurrence of an event identified by its position (see
/// [`crate::sources::identified_by_position`]) after the one with id `previous`.
fn repeat_id(previous: Uuid) -> Uuid {
    Uuid::new_v5(&crate::model::LEDGER_NAMESPACE, format!("repeat:{previous}").as_bytes())
}

/// What one batch (or one replay chunk) knows of the streams it files: the stream -> conversation
/// map of every stream it names, read once and kept current as it files, links and merges, and
/// the rows waiting to be inserted. The database is only asked about what the map lacks.
#[derive(Default)]
pub(super) struct Filing {
    /// `None`: known not to be filed yet.
    streams: HashMap<StreamKey, Option<Uuid>>,
    /// Absorbed id -> survivor for the service's own stream ids (`None`: not absorbed).
    aliases: HashMap<Uuid, Option<Uuid>>,
    /// Event rows to append.
    events: Vec<Row>,
    /// Streams filed and not inserted yet: `(stream, conversation, first seq)`.
    new_streams: Vec<(StreamKey, Uuid, i64)>,
    /// Survivors of merges made by this batch: refolded from their events.
    merged: BTreeSet<Uuid>,
}

impl Filing {
    fn resolve_cached(&self, id: Uuid) -> Uuid {
        match self.aliases.get(&id) {
            Some(Some(survivor)) => *survivor,
            _ => id,
        }
    }

    fn file(&mut self, stream: &StreamKey, conversation: Uuid, seq: i64) {
        self.streams.insert(stream.clone(), Some(conversation));
        self.new_streams.push((stream.clone(), conversation, seq));
    }

    /// Moves the rows waiting to be inserted into `writes`.
    fn defer(&mut self, writes: &mut Writes) {
        writes.insert(
            "events",
            codec::EVENT_INSERT_COLUMNS,
            std::mem::take(&mut self.events),
            "",
        );
        let streams = std::mem::take(&mut self.new_streams)
            .iter()
            .map(|(stream, conversation, seq)| codec::stream_row(stream, *conversation, *seq))
            .collect();
        writes.insert("streams", codec::STREAM_COLUMNS, streams, "");
    }

    fn absorbed(&mut self, absorbed: Uuid, survivor: Uuid) {
        for v in self.streams.values_mut() {
            if *v == Some(absorbed) {
                *v = Some(survivor);
            }
        }
        for v in self.aliases.values_mut() {
            if *v == Some(absorbed) {
                *v = Some(survivor);
            }
        }
        self.aliases.insert(absorbed, Some(survivor));
        self.merged.remove(&absorbed);
        self.merged.insert(survivor);
    }
}

/// A conversation's projection as it is about to be written.
struct Written {
    conversation: Conversation,
    fold: FoldState,
    /// New transcript lines (all of them when refolded).
    lines: Vec<Message>,
    /// Handoffs before this one are stored as they are (None: every handoff row is as stored).
    handoffs_from: Option<usize>,
    /// Its agent rows must be rewritten.
    agents_changed: bool,
    /// A column some index covers (state, disposition, SLA status, queue, start) may have changed, or
    /// the row is new; otherwise only the columns no index covers are set, and no index is touched.
    indexed_changed: bool,
}

/// What a batch has filed but not written yet, as projecting it needs to know: the statements
/// that insert its events and streams (run with the projection's, or before a refold reads), the
/// streams it filed `(stream, conversation)`, and the ids of the events it appended.
pub(super) struct Unwritten<'a> {
    writes: &'a mut Writes,
    streams: &'a [(StreamKey, Uuid)],
    events: &'a HashSet<Uuid>,
    /// The fold states and stored streams the batch's first read took ([`batch_reads_with_folds_sql`]),
    /// when they still hold (the batch merged nothing).
    folds: Option<FoldsRead>,
}

/// What [`batch_reads_with_folds_sql`] read: the kept fold state and the stored streams of each
/// conversation of `covered` (one without a row has none).
pub(super) struct FoldsRead {
    covered: HashSet<Uuid>,
    folds: HashMap<Uuid, String>,
    streams: HashMap<Uuid, Vec<StreamKey>>,
}

/// The columns of a conversation row no index covers: what a delivery that changed none of the
/// indexed ones sets.
const CONVERSATION_UNINDEXED: [&str; 4] = ["updated_at", "last_seq", "doc", "fold"];

/// Writes waiting to run, in order. A batch gathers its inserts, upserts and deletes here and runs them
/// at once ([`Dialect::write_statements`]): on SQLite as one multi-statement call (one trip to the
/// connection's thread); on PostgreSQL each run of inserts as one statement of arrays, whose text
/// depends only on which tables it writes.
#[derive(Default)]
pub(super) struct Writes {
    writes: Vec<Write>,
}

/// One write of [`Writes`].
pub(super) enum Write {
    /// `rows` into `table`'s `columns`; `suffix`: an `ON CONFLICT` clause or empty.
    Insert {
        table: String,
        columns: &'static [&'static str],
        rows: Vec<Row>,
        suffix: String,
    },
    /// The rows of `table` whose `column` is one of `ids`.
    DeleteIn {
        table: &'static str,
        column: &'static str,
        ids: Vec<Uuid>,
    },
}

impl Writes {
    /// `rows` into `table` (nothing when there are none).
    fn insert(&mut self, table: &str, columns: &'static [&'static str], rows: Vec<Row>, suffix: &str) {
        if !rows.is_empty() {
            self.writes.push(Write::Insert {
                table: table.to_string(),
                columns,
                rows,
                suffix: suffix.to_string(),
            });
        }
    }

    /// Deletes the rows of `table` whose `column` is one of `ids` (nothing when there are none).
    fn delete_in(&mut self, table: &'static str, column: &'static str, ids: &[Uuid]) {
        if !ids.is_empty() {
            self.writes.push(Write::DeleteIn {
                table,
                column,
                ids: ids.to_vec(),
            });
        }
    }
}

fn encode_error(e: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(e))
}

/// What the two databases do differently with lists of values and with a batch's writes.
pub(super) trait Dialect: sqlx::Database {
    /// Most values of one list bound in a statement.
    const LIST_CHUNK: usize;
    /// Whether a statement over a list keeps its text whatever the list's length (then the connection
    /// keeps it prepared).
    const CONSTANT_LISTS: bool;
    /// Whether a batch's first read also reads the fold states and streams of the conversations it may
    /// extend ([`batch_reads_with_folds_sql`]): one round trip fewer where a round trip is one over the
    /// network (PostgreSQL); SQLite's calls stay on its own thread.
    const FOLDS_FIRST: bool;
    /// How a statement names `n` values from placeholder `first`.
    fn list(first: usize, n: usize) -> InList;
    /// Binds the values of a list named by [`Dialect::list`].
    fn bind_list<'q>(args: &mut Self::Arguments<'q>, values: Vec<String>) -> StoreResult<()>;
    /// `streams s` restricted to the rows of `streams` (from placeholder `first` on), for a `FROM`
    /// clause; binds their values.
    fn streams_named<'q>(first: usize, streams: &[&StreamKey], args: &mut Self::Arguments<'q>) -> StoreResult<String>;
    /// The statements that run `writes`, in order, with their values.
    fn write_statements<'q>(writes: Vec<Write>) -> StoreResult<Vec<(String, Self::Arguments<'q>)>>;
}

impl Dialect for sqlx::Sqlite {
    const LIST_CHUNK: usize = IN_CHUNK;
    const CONSTANT_LISTS: bool = false;
    const FOLDS_FIRST: bool = false;

    fn list(first: usize, n: usize) -> InList {
        InList::Values { first, n }
    }

    fn bind_list<'q>(args: &mut Self::Arguments<'q>, values: Vec<String>) -> StoreResult<()> {
        use sqlx::Arguments as _;
        for value in values {
            args.add(value).map_err(encode_error)?;
        }
        Ok(())
    }

    /// `(platform, external_id) IN (($first, $first+1), ...)`, the pairs' values in turn.
    fn streams_named<'q>(first: usize, streams: &[&StreamKey], args: &mut Self::Arguments<'q>) -> StoreResult<String> {
        use sqlx::Arguments as _;
        if streams.is_empty() {
            return Ok("streams s WHERE 1 = 0".to_string());
        }
        let pairs = (0..streams.len())
            .map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        for stream in streams {
            args.add(stream.platform.as_str().to_string()).map_err(encode_error)?;
            args.add(stream.external_id.clone()).map_err(encode_error)?;
        }
        Ok(format!("streams s WHERE (s.platform, s.external_id) IN ({pairs})"))
    }

    /// One multi-statement call: each placeholder is written `?` and takes the next value, across
    /// statements; inserts of at most [`codec::MAX_BINDS`] values each, deletes of [`IN_CHUNK`] ids.
    fn write_statements<'q>(writes: Vec<Write>) -> StoreResult<Vec<(String, Self::Arguments<'q>)>> {
        use sqlx::Arguments as _;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut statements = Vec::new();
        let mut args = Self::Arguments::default();
        for write in writes {
            match write {
                Write::Insert {
                    table,
                    columns,
                    rows,
                    suffix,
                } => {
                    let per_statement = (codec::MAX_BINDS / columns.len()).max(1);
                    for chunk in rows.chunks(per_statement) {
                        statements.push(anonymous_insert_sql(&table, columns, chunk.len(), &suffix));
                    }
                    for value in rows.into_iter().flatten() {
                        add_bind::<Self>(&mut args, value)?;
                    }
                }
                Write::DeleteIn { table, column, ids } => {
                    for chunk in ids.chunks(IN_CHUNK) {
                        let list = Self::list(1, chunk.len());
                        statements.push(anonymous_placeholders(&delete_in_sql(table, column, list)));
                        for id in chunk {
                            args.add(id.to_string()).map_err(encode_error)?;
                        }
                    }
                }
            }
        }
        Ok(vec![(statements.join(";\n"), args)])
    }
}

impl Dialect for sqlx::Postgres {
    const LIST_CHUNK: usize = usize::MAX;
    const CONSTANT_LISTS: bool = true;
    const FOLDS_FIRST: bool = true;

    fn list(first: usize, _n: usize) -> InList {
        InList::Array { first }
    }

    fn bind_list<'q>(args: &mut Self::Arguments<'q>, values: Vec<String>) -> StoreResult<()> {
        use sqlx::Arguments as _;
        args.add(values).map_err(encode_error)
    }

    /// The platforms in array `$first`, the external ids in array `$first+1`.
    fn streams_named<'q>(first: usize, streams: &[&StreamKey], args: &mut Self::Arguments<'q>) -> StoreResult<String> {
        use sqlx::Arguments as _;
        let platforms: Vec<String> = streams.iter().map(|s| s.platform.as_str().to_string()).collect();
        let external_ids: Vec<String> = streams.iter().map(|s| s.external_id.clone()).collect();
        args.add(platforms).map_err(encode_error)?;
        args.add(external_ids).map_err(encode_error)?;
        Ok(format!(
            "streams s JOIN UNNEST(${first}::text[], ${}::text[]) AS k (platform, external_id) \
             ON s.platform = k.platform AND s.external_id = k.external_id",
            first + 1
        ))
    }

    /// Each run of inserts as one statement (data-modifying `WITH` clauses: one round trip; the inserts
    /// touch distinct rows, so running them in one statement changes nothing), each insert taking its
    /// rows as one array per column ([`unnest_insert_sql`]); each delete on its own, its ids one array.
    fn write_statements<'q>(writes: Vec<Write>) -> StoreResult<Vec<(String, Self::Arguments<'q>)>> {
        use sqlx::Arguments as _;
        let mut out = Vec::new();
        let mut run: Vec<String> = Vec::new();
        let mut args = Self::Arguments::default();
        let mut next = 1;
        fn close(
            run: &mut Vec<String>,
            args: &mut sqlx::postgres::PgArguments,
            next: &mut usize,
            out: &mut Vec<(String, sqlx::postgres::PgArguments)>,
        ) {
            let Some(last) = run.pop() else {
                return;
            };
            let sql = if run.is_empty() {
                last
            } else {
                let clauses: Vec<String> = run
                    .drain(..)
                    .enumerate()
                    .map(|(i, sql)| format!("w{i} AS ({sql})"))
                    .collect();
                format!("WITH {} {last}", clauses.join(", "))
            };
            out.push((sql, std::mem::take(args)));
            *next = 1;
        }
        for write in writes {
            match write {
                Write::Insert {
                    table,
                    columns,
                    rows,
                    suffix,
                } => {
                    let arrays = ColumnArrays::of(columns.len(), rows)?;
                    run.push(unnest_insert_sql(&table, columns, &arrays.types(), &suffix, next));
                    next += columns.len();
                    arrays.bind(&mut args)?;
                }
                Write::DeleteIn { table, column, ids } => {
                    close(&mut run, &mut args, &mut next, &mut out);
                    let mut delete = Self::Arguments::default();
                    delete
                        .add(ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                        .map_err(encode_error)?;
                    out.push((delete_in_sql(table, column, Self::list(1, ids.len())), delete));
                }
            }
        }
        close(&mut run, &mut args, &mut next, &mut out);
        Ok(out)
    }
}

/// Adds one value to a statement's arguments.
fn add_bind<'q, DB: sqlx::Database>(args: &mut DB::Arguments<'q>, value: Bind) -> StoreResult<()>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    use sqlx::Arguments as _;
    match value {
        Bind::Text(v) => args.add(v),
        Bind::Int(v) => args.add(v),
        Bind::OptText(v) => args.add(v),
        Bind::OptInt(v) => args.add(v),
        Bind::OptFloat(v) => args.add(v),
    }
    .map_err(encode_error)
}

/// Rows as one array per column, each of the type its values bind as.
enum ColumnArray {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
}

struct ColumnArrays(Vec<ColumnArray>);

impl ColumnArrays {
    /// `rows` (of `n` values each) by column.
    fn of(n: usize, rows: Vec<Row>) -> StoreResult<Self> {
        let count = rows.len();
        let mut columns: Vec<Option<ColumnArray>> = (0..n).map(|_| None).collect();
        for row in rows {
            if row.len() != n {
                return Err(StoreError::Corrupt(format!(
                    "a row of {} values for {n} columns",
                    row.len()
                )));
            }
            for (column, value) in columns.iter_mut().zip(row) {
                let array = column.get_or_insert_with(|| match value {
                    Bind::Text(_) | Bind::OptText(_) => ColumnArray::Text(Vec::with_capacity(count)),
                    Bind::Int(_) | Bind::OptInt(_) => ColumnArray::Int(Vec::with_capacity(count)),
                    Bind::OptFloat(_) => ColumnArray::Float(Vec::with_capacity(count)),
                });
                match (array, value) {
                    (ColumnArray::Text(a), Bind::Text(v)) => a.push(Some(v)),
                    (ColumnArray::Text(a), Bind::OptText(v)) => a.push(v),
                    (ColumnArray::Int(a), Bind::Int(v)) => a.push(Some(v)),
                    (ColumnArray::Int(a), Bind::OptInt(v)) => a.push(v),
                    (ColumnArray::Float(a), Bind::OptFloat(v)) => a.push(v),
                    _ => return Err(StoreError::Corrupt("a column of values of two types".into())),
                }
            }
        }
        // No rows: every column an empty array of text (inserts nothing).
        Ok(Self(
            columns
                .into_iter()
                .map(|c| c.unwrap_or(ColumnArray::Text(Vec::new())))
                .collect(),
        ))
    }

    /// PostgreSQL's array type of each column.
    fn types(&self) -> Vec<&'static str> {
        self.0
            .iter()
            .map(|c| match c {
                ColumnArray::Text(_) => "text[]",
                ColumnArray::Int(_) => "int8[]",
                ColumnArray::Float(_) => "float8[]",
            })
            .collect()
    }

    fn bind(self, args: &mut sqlx::postgres::PgArguments) -> StoreResult<()> {
        use sqlx::Arguments as _;
        for column in self.0 {
            match column {
                ColumnArray::Text(v) => args.add(v),
                ColumnArray::Int(v) => args.add(v),
                ColumnArray::Float(v) => args.add(v),
            }
            .map_err(encode_error)?;
        }
        Ok(())
    }
}

/// `INSERT INTO table (columns) SELECT * FROM UNNEST($first::type, ...) suffix`: rows given as one array
/// per column, from placeholder `first` on (PostgreSQL). Its text does not change with the number of rows.
fn unnest_insert_sql(table: &str, columns: &[&str], types: &[&str], suffix: &str, first: usize) -> String {
    let arrays = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", first + i))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "INSERT INTO {table} ({}) SELECT * FROM UNNEST({arrays})",
        columns.join(", ")
    );
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

/// Conversations rebuilt per chunk of an online replay (fewer when they hold many events).
const REPLAY_CONVERSATIONS: usize = 1_000;
/// Events folded per chunk of an online replay (a longer conversation makes a chunk of its own): small
/// enough that reading the next chunk and folding this one overlap over most of a replay of ~50,000.
const REPLAY_EVENTS: u64 = 8_000;
/// Events read per round trip while re-filing the log in memory.
const REFILE_PAGE: i64 = 50_000;

const SQL_ALL_STREAMS: &str = "SELECT platform, external_id, conversation_id, first_seq FROM streams";
const SQL_ALL_ALIASES: &str = "SELECT absorbed_id, survivor_id FROM aliases";
/// Projection rows whose conversation no stream is filed under (what an offline replay would not rebuild).
const SQL_ORPHANS: [(&str, &str); 4] = [
    ("conversations", "id"),
    ("messages", "conversation_id"),
    ("handoffs", "conversation_id"),
    ("conversation_agents", "conversation_id"),
];

fn orphans_sql(table: &str, column: &str) -> String {
    format!(
        "SELECT DISTINCT {column} FROM {table} t WHERE NOT EXISTS \
         (SELECT 1 FROM streams s WHERE s.conversation_id = t.{column})"
    )
}

fn delete_orphans_sql(table: &str, column: &str, ids: InList) -> String {
    format!(
        "DELETE FROM {table} WHERE {column} {ids} AND NOT EXISTS \
         (SELECT 1 FROM streams s WHERE s.conversation_id = {table}.{column})"
    )
}

/// The stored rows of `table` (`columns`, after the conversation id) of the conversations `ids`.
fn stored_rows_sql(table: &str, key: &str, columns: &[&str], order: &str, ids: InList) -> String {
    format!(
        "SELECT {key}, {} FROM {table} WHERE {key} {ids} ORDER BY {key}{order}",
        columns.join(", ")
    )
}

/// Which of the conversations `ids` have an event after the seq bound after them (appended since a
/// snapshot).
fn touched_since_sql(ids: InList) -> String {
    format!(
        "SELECT DISTINCT s.conversation_id FROM streams s \
         JOIN events e ON e.platform = s.platform AND e.external_id = s.external_id \
         WHERE s.conversation_id {ids} AND e.seq > ${}",
        ids.next()
    )
}

/// Folds one conversation from all its events (`events` in seq order). None: nothing to project.
fn fold_conversation(id: Uuid, streams: &[StreamKey], events: &[StoredEvent], sla: &SlaConfig) -> Option<Written> {
    let extent = LogExtent::of_events(events)?;
    let (fold, lines) = FoldState::build_events(extent, events);
    let conversation = fold.conversation(id, streams, sla)?;
    Some(Written {
        conversation,
        fold,
        lines,
        handoffs_from: Some(0),
        agents_changed: true,
        indexed_changed: true,
    })
}

/// Every projection row of one conversation, as a full rebuild writes them.
#[derive(Debug, Clone, PartialEq)]
struct ProjectionRows {
    conversation: Row,
    messages: Vec<Row>,
    handoffs: Vec<Row>,
    agents: Vec<Row>,
}

impl ProjectionRows {
    fn of(w: &Written) -> StoreResult<Self> {
        let mut messages = codec::message_rows(w.conversation.id, &w.lines)?;
        // In key order `(at, seq, idx)`, as the stored rows are read back.
        let int = |b: &Bind| match b {
            Bind::Int(v) => *v,
            _ => 0,
        };
        messages.sort_by_key(|row| (int(&row[1]), int(&row[2]), int(&row[3])));
        Ok(Self {
            conversation: codec::conversation_row(&w.conversation, &w.fold)?,
            messages,
            handoffs: codec::handoff_rows(&w.conversation)?,
            agents: codec::agent_rows(&w.conversation),
        })
    }
}

/// The filing of the whole log (streams -> conversation, aliases), made in memory by walking the events
/// in seq order with the rules of `file_event` (a stream is filed under its own conversation, its links
/// join it, two live conversations merge into the one that started first). An online replay compares
/// it with the stored filing: the rows the writer keeps must be what the log gives.
#[derive(Default)]
struct Refiling {
    /// Stream -> (conversation, first_seq).
    streams: HashMap<StreamKey, (Uuid, i64)>,
    /// Absorbed id -> survivor.
    aliases: HashMap<Uuid, Uuid>,
    /// Survivor -> the ids aliased to it (to re-point them on the next merge).
    absorbed_by: HashMap<Uuid, Vec<Uuid>>,
    /// Conversation -> its streams.
    members: HashMap<Uuid, Vec<StreamKey>>,
    /// Conversation -> the earliest `occurred_at` of its events filed so far.
    started: HashMap<Uuid, i64>,
    /// Events filed per stream.
    events: HashMap<StreamKey, u64>,
}

impl Refiling {
    fn own_conversation(&self, stream: &StreamKey) -> Uuid {
        match codec::own_conversation_id(stream) {
            (id, true) => self.aliases.get(&id).copied().unwrap_or(id),
            (id, false) => id,
        }
    }

    fn file(&mut self, stream: &StreamKey, conversation: Uuid, seq: i64) {
        self.streams.insert(stream.clone(), (conversation, seq));
        self.members.entry(conversation).or_default().push(stream.clone());
    }

    fn exists(&self, id: Uuid) -> bool {
        self.members.get(&id).is_some_and(|m| !m.is_empty())
    }

    fn merge(&mut self, a: Uuid, b: Uuid) -> Uuid {
        let (survivor, absorbed) =
            codec::pick_survivor((a, self.started.get(&a).copied()), (b, self.started.get(&b).copied()));
        let moved = self.members.remove(&absorbed).unwrap_or_default();
        for stream in &moved {
            if let Some(entry) = self.streams.get_mut(stream) {
                entry.0 = survivor;
            }
        }
        self.members.entry(survivor).or_default().extend(moved);
        let mut repointed = self.absorbed_by.remove(&absorbed).unwrap_or_default();
        for id in &repointed {
            self.aliases.insert(*id, survivor);
        }
        if let Some(previous) = self.aliases.insert(absorbed, survivor) {
            if let Some(list) = self.absorbed_by.get_mut(&previous) {
                list.retain(|id| *id != absorbed);
            }
        }
        repointed.push(absorbed);
        self.absorbed_by.entry(survivor).or_default().extend(repointed);
        if let Some(at) = self.started.remove(&absorbed) {
            let entry = self.started.entry(survivor).or_insert(at);
            *entry = (*entry).min(at);
        }
        survivor
    }

    /// `file_event` in memory, for the event at `seq` that occurred at `occurred_at` (micros).
    fn file_event(&mut self, seq: i64, occurred_at: i64, stream: &StreamKey, links: &[StreamKey]) {
        if stream.external_id.is_empty() {
            return;
        }
        let mut conversation = match self.streams.get(stream) {
            Some((id, _)) => *id,
            None => {
                let id = self.own_conversation(stream);
                self.file(stream, id, seq);
                id
            }
        };
        for link in links {
            if link.external_id.is_empty() || link == stream {
                continue;
            }
            match self.streams.get(link).map(|(id, _)| *id) {
                Some(other) if other == conversation => {}
                Some(other) => conversation = self.merge(conversation, other),
                None => {
                    let own = self.own_conversation(link);
                    if own != conversation && self.exists(own) {
                        self.file(link, own, seq);
                        conversation = self.merge(conversation, own);
                    } else {
                        self.file(link, conversation, seq);
                    }
                }
            }
        }
        let started = self.started.entry(conversation).or_insert(occurred_at);
        *started = (*started).min(occurred_at);
        match self.events.get_mut(stream) {
            Some(n) => *n += 1,
            None => {
                self.events.insert(stream.clone(), 1);
            }
        }
    }

    /// Files the events of one page of the log (see [`replay::refile_page_sql`]) in seq order;
    /// returns how many it held.
    fn file_page(&mut self, json: &str) -> StoreResult<u64> {
        let page = replay::refile_page(json)?;
        let events = page.len() as u64;
        for (seq, platform, external_id, occurred_at, links) in page {
            if external_id.is_empty() {
                continue;
            }
            let stream = codec::stream_key(&platform, external_id.into_owned())?;
            let links: Vec<StreamKey> = if links == "[]" {
                Vec::new()
            } else {
                codec::from_json("links", &links)?
            };
            self.file_event(seq, occurred_at, &stream, &links);
        }
        Ok(events)
    }

    /// Every conversation with a stream and how many events it holds, in the order of their first
    /// event (the seq that filed their first stream), then by id: the conversations of one chunk then
    /// started about together, so their events, and their messages' rows, lie in a narrow part of the
    /// log's pages instead of all over it.
    fn conversations(&self) -> Vec<(Uuid, u64)> {
        let mut out: Vec<(Uuid, u64)> = self
            .members
            .iter()
            .filter(|(_, streams)| !streams.is_empty())
            .map(|(id, streams)| {
                (
                    *id,
                    streams.iter().map(|s| self.events.get(s).copied().unwrap_or(0)).sum(),
                )
            })
            .collect();
        let first = |id: &Uuid| {
            self.members.get(id).map_or(i64::MAX, |m| {
                m.iter()
                    .filter_map(|s| self.streams.get(s).map(|e| e.1))
                    .min()
                    .unwrap_or(i64::MAX)
            })
        };
        out.sort_by_cached_key(|(id, _)| (first(id), *id));
        out
    }
}

/// One part of a chunk of an online replay as read: its conversations, and each table's rows of all
/// of them as one JSON array (see [`replay`]). The parts of a chunk are folded on threads of their own.
struct PartRead {
    ids: Vec<Uuid>,
    /// Their events: [`replay::EVENT_JSON_COLUMNS`].
    events: Option<String>,
    /// Their streams: [`replay::STREAM_JSON_COLUMNS`].
    streams: Option<String>,
    /// Their stored rows: conversations, messages, agents (all columns, in key order).
    stored: [Option<String>; 3],
}

/// The column of each table of [`PartRead::stored`] that names a row's conversation.
const STORED_KEYS: [usize; 3] = [0, 0, 2];

/// One chunk of an online replay as read, each part in one snapshot of its own (`R`: the backend's row).
struct ChunkRead<R> {
    parts: Vec<PartRead>,
    /// The log's last seq in the earliest of those snapshots.
    head: i64,
    /// Stored handoff rows by conversation (compared value by value: they hold floats).
    handoffs: HashMap<Uuid, Vec<R>>,
}

/// What differs in one chunk: rebuilt rows of the conversations to rewrite, with the head and the
/// streams they were rebuilt from.
struct ChunkDiff {
    head: i64,
    projected: u64,
    changed: Vec<(Uuid, Option<ProjectionRows>)>,
    streams: HashMap<Uuid, Vec<StreamKey>>,
}

/// A conversation of a chunk folded: the rows a full rebuild writes for it (None: nothing), and
/// whether its stored conversation, message and agent rows are exactly those.
type Folded = (Uuid, Option<ProjectionRows>, bool);

/// A part of a chunk folded: its conversations folded, and their streams (to rewrite what differs).
type FoldedPart = (Vec<Folded>, HashMap<Uuid, Vec<StreamKey>>);

/// A part of a chunk as read: the log's head in its snapshot, its JSON values, and its stored handoff
/// rows by conversation (`R`: the backend's row).
type PartSnapshot<R> = (i64, PartRead, HashMap<Uuid, Vec<R>>);

/// Chunks of conversations for an online replay: at most [`REPLAY_CONVERSATIONS`] and about
/// [`REPLAY_EVENTS`] events each, each cut in up to `parts` parts of about as many events (one per
/// fold thread).
fn replay_chunks(conversations: &[(Uuid, u64)], parts: usize) -> Vec<Vec<Vec<Uuid>>> {
    let mut chunks = Vec::new();
    let (mut chunk, mut events) = (Vec::new(), 0u64);
    for (id, n) in conversations {
        if !chunk.is_empty() && (chunk.len() >= REPLAY_CONVERSATIONS || events + n > REPLAY_EVENTS) {
            chunks.push(split_chunk(&std::mem::take(&mut chunk), events, parts));
            events = 0;
        }
        chunk.push((*id, *n));
        events += n;
    }
    if !chunk.is_empty() {
        chunks.push(split_chunk(&chunk, events, parts));
    }
    chunks
}

/// `chunk` (holding `events` events) cut in order into at most `parts` parts of about as many events.
fn split_chunk(chunk: &[(Uuid, u64)], events: u64, parts: usize) -> Vec<Vec<Uuid>> {
    let per = events.div_ceil(parts.max(1) as u64).max(1);
    let mut out: Vec<Vec<Uuid>> = Vec::new();
    let (mut part, mut held) = (Vec::new(), 0u64);
    for (id, n) in chunk {
        part.push(*id);
        held += n;
        if held >= per && out.len() + 1 < parts {
            out.push(std::mem::take(&mut part));
            held = 0;
        }
    }
    if !part.is_empty() {
        out.push(part);
    }
    out
}

/// Folds the conversations of one part and compares their stored rows (but the handoffs) with the
/// result; also gives the part's streams by conversation.
fn fold_part(part: PartRead, sla: &SlaConfig) -> StoreResult<FoldedPart> {
    let streams = replay::decode_streams(part.streams.as_deref())?;
    let mut events = replay::decode_events(part.events.as_deref())?;
    let mut stored = [0, 1, 2].map(|i| replay::stored_by_conversation(part.stored[i].as_deref(), STORED_KEYS[i]));
    if let Some(messages) = &mut stored[1] {
        // Read without ORDER BY: in key order (at, seq, idx), as the rebuilt rows.
        replay::sort_by_columns(messages, &[1, 2, 3]);
    }
    let mut folded = Vec::with_capacity(part.ids.len());
    for id in part.ids {
        let events = events.remove(&id).unwrap_or_default();
        let own = streams.get(&id).map_or(&[][..], Vec::as_slice);
        let rows = fold_conversation(id, own, &events, sla)
            .map(|w| ProjectionRows::of(&w))
            .transpose()?;
        // Per table: Some(rows of this conversation, if any), or None when the part's JSON did not parse.
        let of = |i: usize| stored[i].as_ref().map(|by_id| by_id.get(&id).map(Vec::as_slice));
        let same = match (&rows, of(0), of(1), of(2)) {
            (_, None, _, _) | (_, _, None, _) | (_, _, _, None) => false,
            (None, Some(c), Some(m), Some(a)) => c.is_none() && m.is_none() && a.is_none(),
            (Some(r), Some(c), Some(m), Some(a)) => {
                replay::stored_rows_match(c, std::slice::from_ref(&r.conversation))
                    && replay::stored_rows_match(m, &r.messages)
                    && replay::stored_rows_match(a, &r.agents)
            }
        };
        folded.push((id, rows, same));
    }
    Ok((folded, streams))
}

/// Folds the parts of one chunk, each as a task of tokio's blocking pool: its threads live on from
/// chunk to chunk, where a thread spawned per part left the memory its allocator had taken (the
/// parts' texts and values) behind with it and the next one faulted in fresh pages.
async fn fold_parts(parts: Vec<PartRead>, sla: &SlaConfig) -> StoreResult<Vec<FoldedPart>> {
    let handles: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let sla = sla.clone();
            tokio::task::spawn_blocking(move || fold_part(part, &sla))
        })
        .collect();
    let mut folded = Vec::with_capacity(handles.len());
    for handle in handles {
        folded.push(
            handle
                .await
                .map_err(|e| StoreError::Corrupt(format!("a replay fold failed: {e}")))??,
        );
    }
    Ok(folded)
}

/// How many parts a chunk of an online replay is cut in: one per core (at most 8).
fn replay_parts() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// `sql` with every `$N` placeholder written `?`: the same statement on SQLite when each placeholder
/// appears once, in order (as `codec::insert_sql` writes them). SQLite finds a `$N` (or `?N`) parameter
/// by a linear search of the statement's names, when preparing and again when binding, so a multi-row
/// insert of n values cost n² (a 1,000-line transcript, 12,000 values: 0.7 s); plain `?` cost n.
fn anonymous_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.next_if(char::is_ascii_digit).is_some() {}
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// [`codec::insert_sql`] with plain `?` placeholders, written directly (SQLite): the same statement as
/// `anonymous_placeholders(&codec::insert_sql(..))` without formatting a `$N` per value and rewriting it
/// (~5 % of the writer task's CPU in `perf` at ~1,200 values a batch).
fn anonymous_insert_sql(table: &str, columns: &[&str], rows: usize, suffix: &str) -> String {
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let columns = columns.join(", ");
    let mut sql = String::with_capacity(32 + table.len() + columns.len() + rows * (row.len() + 2) + suffix.len());
    sql.push_str("INSERT INTO ");
    sql.push_str(table);
    sql.push_str(" (");
    sql.push_str(&columns);
    sql.push_str(") VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
    }
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

macro_rules! sql_store {
    ($name:ident, $db:ty, begin = $begin:expr, snapshot = $snapshot:expr, migrator = $migrator:expr) => {
        /// The store on this backend: the event log and its projections.
        #[derive(Clone)]
        pub struct $name {
            pool: sqlx::Pool<$db>,
            /// Where write transactions run: a pool of one long-lived connection when the store opened it
            /// ([`Self::with_writer`]), so the single writer's page cache and prepared statements stay warm
            /// from batch to batch; else the readers' pool.
            writer: sqlx::Pool<$db>,
            /// SQLite's checkpoints beside the writer, when the store was opened for the writer
            /// ([`SqliteStore::connect_writer`]); told before each write transaction.
            checkpoints: Option<WalCheckpoints>,
            /// Most bytes of a quarantined body that are kept (`retention.quarantine_body_bytes`).
            quarantine_body_bytes: usize,
        }

        impl $name {
            /// Wraps an open pool (migrations are applied by [`Store::migrate`]).
            pub fn from_pool(pool: sqlx::Pool<$db>) -> Self {
                Self {
                    writer: pool.clone(),
                    checkpoints: None,
                    pool,
                    quarantine_body_bytes: crate::quarantine::DEFAULT_BODY_CAP,
                }
            }

            /// Runs write transactions on `writer` (one connection kept open) instead of the readers' pool.
            pub fn with_writer(mut self, writer: sqlx::Pool<$db>) -> Self {
                self.writer = writer;
                self
            }

            /// Keeps at most `bytes` of each quarantined body from now on (with the whole body's size
            /// and SHA-256).
            pub fn with_quarantine_body_bytes(mut self, bytes: usize) -> Self {
                self.quarantine_body_bytes = bytes.max(1);
                self
            }

            /// The underlying pool, for tools and tests.
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            /// Opens the one write transaction a batch or a replay runs in.
            async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, $db>> {
                if let Some(checkpoints) = &self.checkpoints {
                    checkpoints.before_write().await;
                }
                Ok(self.writer.begin_with($begin).await?)
            }

            /// Inserts `rows` into `table` with as few multi-row statements as the bind limit allows.
            async fn insert_rows(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &str,
                columns: &'static [&'static str],
                rows: Vec<Row>,
                suffix: &str,
            ) -> StoreResult<()> {
                let mut writes = Writes::default();
                writes.insert(table, columns, rows, suffix);
                Self::run_writes(conn, &mut writes).await
            }

            /// Runs the writes `writes` gathered, in order, and empties it ([`Dialect::write_statements`]).
            /// Statements of SQLite's text changes with the batch's size, so it is not kept prepared (it would
            /// crowd the cache); PostgreSQL's is kept.
            async fn run_writes(conn: &mut <$db as sqlx::Database>::Connection, writes: &mut Writes) -> StoreResult<()> {
                let statements = <$db as Dialect>::write_statements(std::mem::take(&mut writes.writes))?;
                for (sql, args) in statements {
                    sqlx::query_with(&sql, args)
                        .persistent(<$db as Dialect>::CONSTANT_LISTS)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// The rows `sql(list)` (a statement over one list of ids) gives for `ids`, a chunk at a time.
            async fn rows_in<R>(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                sql: impl Fn(InList) -> String,
            ) -> StoreResult<Vec<R>>
            where
                R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                let mut rows = Vec::new();
                for chunk in ids.chunks(<$db as Dialect>::LIST_CHUNK) {
                    let sql = sql(<$db as Dialect>::list(1, chunk.len()));
                    let mut args = <$db as sqlx::Database>::Arguments::default();
                    <$db as Dialect>::bind_list(&mut args, chunk.iter().map(Uuid::to_string).collect())?;
                    let query = sqlx::query_as_with::<_, R, _>(&sql, args).persistent(<$db as Dialect>::CONSTANT_LISTS);
                    rows.extend(query.fetch_all(&mut *conn).await?);
                }
                Ok(rows)
            }

            async fn last_seq_in(conn: &mut <$db as sqlx::Database>::Connection) -> StoreResult<i64> {
                let (seq,): (i64,) = sqlx::query_as(SQL_LAST_SEQ).fetch_one(&mut *conn).await?;
                Ok(seq)
            }

            /// An id as it resolves after merges.
            async fn resolve(conn: &mut <$db as sqlx::Database>::Connection, id: Uuid) -> StoreResult<Uuid> {
                let survivor: Option<(String,)> = sqlx::query_as(SQL_RESOLVE_ALIAS)
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
                match survivor {
                    Some((s,)) => codec::parse_uuid(&s),
                    None => Ok(id),
                }
            }

            /// The projected conversation an id resolves to, when there is one.
            async fn resolve_projected(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: Uuid,
            ) -> StoreResult<Option<Uuid>> {
                let row: Option<(String,)> = sqlx::query_as(SQL_RESOLVE_CONVERSATION)
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
                row.map(|(id,)| codec::parse_uuid(&id)).transpose()
            }

            /// Reads what a batch needs to file its events: the conversation of every stream it
            /// names and the aliases of the service's own stream ids. `read`: the rows of the first
            /// [`Self::PAIRS_CHUNK`] of [`filing_keys`], when the caller has read them already.
            async fn load_filing(
                conn: &mut <$db as sqlx::Database>::Connection,
                keys: &[&StreamKey],
                mut read: Option<Vec<StreamRow>>,
            ) -> StoreResult<Filing> {
                let mut filing = Filing::default();
                let keys = filing_keys(keys);
                for chunk in keys.chunks(Self::PAIRS_CHUNK) {
                    let rows = match read.take() {
                        Some(rows) => rows,
                        None => {
                            let mut args = <$db as sqlx::Database>::Arguments::default();
                            let sql = stream_conversations_sql(&<$db as Dialect>::streams_named(1, chunk, &mut args)?);
                            sqlx::query_as_with::<_, StreamRow, _>(&sql, args)
                                .persistent(<$db as Dialect>::CONSTANT_LISTS)
                                .fetch_all(&mut *conn)
                                .await?
                        }
                    };
                    for (platform, external_id, id) in rows {
                        filing
                            .streams
                            .insert(codec::stream_key(&platform, external_id)?, Some(codec::parse_uuid(&id)?));
                    }
                    for stream in chunk {
                        filing.streams.entry((*stream).clone()).or_insert(None);
                    }
                }
                let own: Vec<Uuid> = keys
                    .iter()
                    .filter_map(|k| match codec::own_conversation_id(k) {
                        (id, true) => Some(id),
                        (_, false) => None,
                    })
                    .collect();
                for (absorbed, survivor) in Self::rows_in::<(String, String)>(conn, &own, aliases_sql).await? {
                    filing
                        .aliases
                        .insert(codec::parse_uuid(&absorbed)?, Some(codec::parse_uuid(&survivor)?));
                }
                for id in &own {
                    filing.aliases.entry(*id).or_insert(None);
                }
                Ok(filing)
            }

            /// The conversation of a stream (the batch's map first, the database for what it lacks).
            async fn stream_conversation(
                conn: &mut <$db as sqlx::Database>::Connection,
                filing: &mut Filing,
                stream: &StreamKey,
            ) -> StoreResult<Option<Uuid>> {
                if let Some(known) = filing.streams.get(stream) {
                    return Ok(*known);
                }
                let row: Option<(String,)> = sqlx::query_as(SQL_STREAM_CONVERSATION)
                    .bind(stream.platform.as_str())
                    .bind(&stream.external_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                let id = row.map(|(id,)| codec::parse_uuid(&id)).transpose()?;
                filing.streams.insert(stream.clone(), id);
                Ok(id)
            }

            /// Whether any stream is filed under `id` (merges reach the database at once, so the
            /// database and the batch's new streams tell it all).
            async fn conversation_exists(
                conn: &mut <$db as sqlx::Database>::Connection,
                filing: &Filing,
                id: Uuid,
            ) -> StoreResult<bool> {
                if filing.streams.values().any(|v| *v == Some(id)) {
                    return Ok(true);
                }
                let row: Option<(String,)> = sqlx::query_as(SQL_CONVERSATION_HAS_STREAM)
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row.is_some())
            }

            /// The conversation a stream nobody has filed yet belongs to.
            async fn own_conversation(
                conn: &mut <$db as sqlx::Database>::Connection,
                filing: &mut Filing,
                stream: &StreamKey,
            ) -> StoreResult<Uuid> {
                match codec::own_conversation_id(stream) {
                    (id, true) => {
                        if filing.aliases.contains_key(&id) {
                            return Ok(filing.resolve_cached(id));
                        }
                        let survivor = Self::resolve(conn, id).await?;
                        filing.aliases.insert(id, (survivor != id).then_some(survivor));
                        Ok(survivor)
                    }
                    (id, false) => Ok(id),
                }
            }

            /// Inserts the rows the batch has filed so far.
            async fn flush(conn: &mut <$db as sqlx::Database>::Connection, filing: &mut Filing) -> StoreResult<()> {
                let mut writes = Writes::default();
                filing.defer(&mut writes);
                Self::run_writes(conn, &mut writes).await
            }

            /// Merges two conversations; returns the survivor. The absorbed one's projection is
            /// deleted; the survivor is refolded once the batch is filed.
            async fn merge(
                conn: &mut <$db as sqlx::Database>::Connection,
                filing: &mut Filing,
                a: Uuid,
                b: Uuid,
                seq: i64,
            ) -> StoreResult<Uuid> {
                Self::flush(conn, filing).await?;
                let mut started = Vec::with_capacity(2);
                for id in [a, b] {
                    let (at,): (Option<i64>,) = sqlx::query_as(SQL_STARTED_BEFORE)
                        .bind(id.to_string())
                        .bind(seq)
                        .fetch_one(&mut *conn)
                        .await?;
                    started.push((id, at));
                }
                let (survivor, absorbed) = codec::pick_survivor(started[0], started[1]);
                let (survivor_text, absorbed_text) = (survivor.to_string(), absorbed.to_string());
                for sql in [SQL_REPOINT_STREAMS, SQL_REPOINT_ALIASES, SQL_INSERT_ALIAS] {
                    let (first, second) = if sql == SQL_INSERT_ALIAS {
                        (&absorbed_text, &survivor_text)
                    } else {
                        (&survivor_text, &absorbed_text)
                    };
                    sqlx::query(sql).bind(first).bind(second).execute(&mut *conn).await?;
                }
                for sql in SQL_DELETE_PROJECTION {
                    sqlx::query(sql).bind(&absorbed_text).execute(&mut *conn).await?;
                }
                filing.absorbed(absorbed, survivor);
                tracing::debug!(%survivor, %absorbed, seq, "conversations merged");
                Ok(survivor)
            }

            /// Files the event at `seq` under its stream's conversation, creating it when the stream
            /// is new, and joins every stream it links, merging conversations that differ. The one
            /// routine behind both `append_batch` and `replay`, so they cannot disagree. Returns the
            /// conversation (None for an event with no stream).
            async fn file_event(
                conn: &mut <$db as sqlx::Database>::Connection,
                filing: &mut Filing,
                seq: i64,
                stream: &StreamKey,
                links: &[StreamKey],
            ) -> StoreResult<Option<Uuid>> {
                if stream.external_id.is_empty() {
                    return Ok(None);
                }
                let mut conversation = match Self::stream_conversation(conn, filing, stream).await? {
                    Some(id) => id,
                    None => {
                        let id = Self::own_conversation(conn, filing, stream).await?;
                        filing.file(stream, id, seq);
                        id
                    }
                };
                for link in links {
                    if link.external_id.is_empty() || link == stream {
                        continue;
                    }
                    match Self::stream_conversation(conn, filing, link).await? {
                        Some(other) if other == conversation => {}
                        Some(other) => conversation = Self::merge(conn, filing, conversation, other, seq).await?,
                        None => {
                            let own = Self::own_conversation(conn, filing, link).await?;
                            if own != conversation && Self::conversation_exists(conn, filing, own).await? {
                                // A service stream naming another live conversation: join the two.
                                filing.file(link, own, seq);
                                conversation = Self::merge(conn, filing, conversation, own, seq).await?;
                            } else {
                                filing.file(link, conversation, seq);
                            }
                        }
                    }
                }
                Ok(Some(conversation))
            }

            /// What deduplication needs of every id of `ids` already in the log, in few round trips.
            async fn known_events(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
            ) -> StoreResult<HashMap<Uuid, Known>> {
                Self::rows_in::<KnownRow>(conn, ids, known_events_sql)
                    .await?
                    .into_iter()
                    .map(known_of)
                    .collect()
            }

            /// Items per statement when each takes two values (a stream's two columns; an id in two lists).
            const PAIRS_CHUNK: usize = if <$db as Dialect>::LIST_CHUNK / 2 > 0 { <$db as Dialect>::LIST_CHUNK / 2 } else { 1 };

            /// What a batch reads first: the log's head (last seq and its hash), [`Self::known_events`] of
            /// `ids`, and the conversations of the first [`Self::PAIRS_CHUNK`] of the [`filing_keys`] of
            /// `keys` (for [`Self::load_filing`]): one round trip when the ids fit in one list.
            async fn batch_reads(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                keys: &[&StreamKey],
            ) -> StoreResult<(i64, chain::Sha256Digest, HashMap<Uuid, Known>, Vec<StreamRow>, Option<FoldsRead>)> {
                let (first, rest) = ids.split_at(ids.len().min(<$db as Dialect>::LIST_CHUNK));
                let keys = filing_keys(keys);
                let keys = &keys[..keys.len().min(Self::PAIRS_CHUNK)];
                let list = <$db as Dialect>::list(1, first.len());
                let mut args = <$db as sqlx::Database>::Arguments::default();
                <$db as Dialect>::bind_list(&mut args, first.iter().map(Uuid::to_string).collect())?;
                let streams = <$db as Dialect>::streams_named(list.next(), keys, &mut args)?;
                let mut folds = None;
                let sql = if <$db as Dialect>::FOLDS_FIRST {
                    let own = list.next() + 2;
                    let mut covered = HashSet::with_capacity(keys.len());
                    covered.extend(keys.iter().map(|k| codec::own_conversation_id(k).0));
                    <$db as Dialect>::bind_list(&mut args, covered.iter().map(Uuid::to_string).collect())?;
                    folds = Some(FoldsRead {
                        covered,
                        folds: HashMap::new(),
                        streams: HashMap::new(),
                    });
                    batch_reads_with_folds_sql(list, &streams, own)
                } else {
                    batch_reads_sql(list, &streams)
                };
                let rows: Vec<BatchRow> = sqlx::query_as_with(&sql, args)
                    .persistent(<$db as Dialect>::CONSTANT_LISTS)
                    .fetch_all(&mut *conn)
                    .await?;
                let mut head = None;
                let mut known = HashMap::with_capacity(rows.len());
                let mut filed = Vec::new();
                for row in rows {
                    match (row, folds.as_mut()) {
                        ((tag, Some(id), _, _, _, _, Some(fold), _, _), Some(read)) if tag == "fold" => {
                            read.folds.insert(codec::parse_uuid(&id)?, fold);
                        }
                        ((tag, Some(id), _, Some(platform), Some(external_id), ..), Some(read)) if tag == "held" => {
                            read.streams
                                .entry(codec::parse_uuid(&id)?)
                                .or_default()
                                .push(codec::stream_key(&platform, external_id)?);
                        }
                        ((tag, _, Some(seq), _, _, _, hash, _, _), _) if tag == "head" => head = Some((seq, hash)),
                        ((tag, Some(id), Some(seq), Some(platform), Some(external_id), Some(received_at), Some(payload), sha, revision_of), _)
                            if tag == "event" =>
                        {
                            let (id, k) = known_of((id, seq, platform, external_id, received_at, payload, sha, revision_of))?;
                            known.insert(id, k);
                        }
                        ((tag, Some(id), _, Some(platform), Some(external_id), ..), _) if tag == "stream" => {
                            filed.push((platform, external_id, id))
                        }
                        ((tag, ..), _) => return Err(StoreError::Corrupt(format!("a `{tag}` row read back with NULL columns"))),
                    }
                }
                if let Some(read) = folds.as_mut() {
                    // The conversations of the streams found are covered too.
                    read.covered.extend(filed.iter().map(|(_, _, id)| codec::parse_uuid(id)).collect::<StoreResult<Vec<_>>>()?);
                }
                known.extend(Self::known_events(conn, rest).await?);
                let seq = head.as_ref().map_or(0, |(seq, _)| *seq);
                Ok((seq, chained::head_digest(head)?, known, filed, folds))
            }

            /// One id, from what the batch knows or else the log.
            async fn known_event(
                conn: &mut <$db as sqlx::Database>::Connection,
                known: &mut HashMap<Uuid, Known>,
                id: Uuid,
            ) -> StoreResult<Option<Known>> {
                if let Some(k) = known.get(&id) {
                    return Ok(Some(k.clone()));
                }
                let found = Self::known_events(conn, &[id]).await?.remove(&id);
                if let Some(k) = &found {
                    known.insert(id, k.clone());
                }
                Ok(found)
            }

            /// Whether the stream of `occurrence` has moved on since it: an event of another delivery
            /// after it, or (when it came in this batch) any event after it. `batch`: the `(seq, stream,
            /// received_at)` of what this batch appended so far; `batch_from`: its first seq.
            async fn moved_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                batch: &[(i64, StreamKey, i64)],
                batch_from: i64,
                occurrence: &Known,
            ) -> StoreResult<bool> {
                let Some(stream) = &occurrence.stream else {
                    return Ok(false);
                };
                let in_batch = occurrence.seq >= batch_from;
                if batch.iter().any(|(seq, s, received)| {
                    *seq > occurrence.seq && s == stream && (in_batch || *received != occurrence.received_at)
                }) {
                    return Ok(true);
                }
                if in_batch {
                    return Ok(false);
                }
                let later: Option<(i64,)> = sqlx::query_as(SQL_STREAM_MOVED_ON)
                    .bind(stream.platform.as_str())
                    .bind(&stream.external_id)
                    .bind(occurrence.seq)
                    .bind(occurrence.received_at)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(later.is_some())
            }

            /// Content-checked idempotency: the same delivery key and the same body is a redelivery;
            /// the same key and another body is a newer version of that event (appended, marked); an
            /// event identified by its position (no id, no time) seen again after its stream moved on
            /// is a new occurrence.
            async fn verdict(
                conn: &mut <$db as sqlx::Database>::Connection,
                known: &mut HashMap<Uuid, Known>,
                batch: &[(i64, StreamKey, i64)],
                batch_from: i64,
                event: &NewEvent,
                sha: &chain::Sha256Digest,
            ) -> StoreResult<Verdict> {
                let Some(first) = known.get(&event.event_id).cloned() else {
                    return Ok(Verdict::Append {
                        id: event.event_id,
                        revision_of: None,
                    });
                };
                let (mut id, mut stored) = (event.event_id, first);
                if crate::sources::identified_by_position(event) {
                    while let Some(next) = Self::known_event(conn, known, repeat_id(id)).await? {
                        (id, stored) = (repeat_id(id), next);
                    }
                    if Self::moved_on(conn, batch, batch_from, &stored).await? {
                        return Ok(Verdict::Append {
                            id: repeat_id(id),
                            revision_of: None,
                        });
                    }
                }
                if stored.payload_sha256 == *sha {
                    return Ok(Verdict::Duplicate(id, stored));
                }
                let root = stored.revision_of.unwrap_or(id);
                let revision = revision_id(root, sha);
                Ok(match Self::known_event(conn, known, revision).await? {
                    Some(version) => Verdict::Duplicate(revision, version),
                    None => Verdict::Append {
                        id: revision,
                        revision_of: Some(root),
                    },
                })
            }

            /// The ids of `ids` already in the log, in few round trips.
            async fn stored_ids(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
            ) -> StoreResult<HashSet<Uuid>> {
                Self::rows_in::<(String,)>(conn, ids, event_ids_sql)
                    .await?
                    .iter()
                    .map(|(id,)| codec::parse_uuid(id))
                    .collect()
            }

            /// The streams of each conversation of `ids`, in few round trips.
            async fn streams_of(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
            ) -> StoreResult<HashMap<Uuid, Vec<StreamKey>>> {
                let mut streams: HashMap<Uuid, Vec<StreamKey>> = HashMap::new();
                for (id, platform, external_id) in
                    Self::rows_in::<(String, String, String)>(conn, ids, streams_of_sql).await?
                {
                    streams
                        .entry(codec::parse_uuid(&id)?)
                        .or_default()
                        .push(codec::stream_key(&platform, external_id)?);
                }
                Ok(streams)
            }

            /// Refolds conversations from all their events (streams and events read in a few
            /// round trips). A conversation without events gives nothing.
            async fn refold(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                sla: &SlaConfig,
            ) -> StoreResult<Vec<Written>> {
                let mut written = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(IN_CHUNK) {
                    let mut streams = Self::streams_of(conn, chunk).await?;
                    let mut events: HashMap<Uuid, Vec<StoredEvent>> = HashMap::new();
                    for row in Self::rows_in::<EventRow>(conn, chunk, events_of_sql).await? {
                        let event = codec::decode_event(row)?;
                        if let Some(id) = event.conversation_id {
                            events.entry(id).or_default().push(event);
                        }
                    }
                    for id in chunk {
                        let streams = streams.remove(id).unwrap_or_default();
                        let events = events.remove(id).unwrap_or_default();
                        written.extend(fold_conversation(*id, &streams, &events, sla));
                    }
                }
                Ok(written)
            }

            /// Projects what a batch appended: `increments` are the new events of each touched
            /// conversation; those in `refold` (merged) are refolded from their events, the others
            /// extend their kept fold (or are refolded when the new facts cannot extend it).
            async fn project(
                conn: &mut <$db as sqlx::Database>::Connection,
                increments: BTreeMap<Uuid, Vec<StoredEvent>>,
                refold: BTreeSet<Uuid>,
                sla: &SlaConfig,
                keep: bool,
                batch: Unwritten<'_>,
            ) -> StoreResult<HashMap<Uuid, (Conversation, Vec<Message>)>> {
                let Unwritten { writes, streams: filed, events: appended, folds: read } = batch;
                let mut ids: Vec<Uuid> = increments.keys().copied().filter(|id| !refold.contains(id)).collect();
                // Kept fold states and stored streams, in one read (or taken from the batch's first read); the
                // batch's own streams are not written yet.
                let mut folds: HashMap<Uuid, String> = HashMap::new();
                let mut streams: HashMap<Uuid, Vec<StreamKey>> = HashMap::new();
                if let Some(mut read) = read {
                    ids.retain(|id| {
                        if !read.covered.contains(id) {
                            return true;
                        }
                        if let Some(fold) = read.folds.remove(id) {
                            folds.insert(*id, fold);
                        }
                        if let Some(held) = read.streams.remove(id) {
                            streams.insert(*id, held);
                        }
                        false
                    });
                }
                for chunk in ids.chunks(Self::PAIRS_CHUNK) {
                    let sql = folds_and_streams_sql(<$db as Dialect>::list(1, chunk.len()));
                    type FoldOrStream = (String, Option<String>, Option<String>, Option<String>);
                    let mut args = <$db as sqlx::Database>::Arguments::default();
                    for _ in 0..2 {
                        <$db as Dialect>::bind_list(&mut args, chunk.iter().map(Uuid::to_string).collect())?;
                    }
                    let query = sqlx::query_as_with::<_, FoldOrStream, _>(&sql, args)
                        .persistent(<$db as Dialect>::CONSTANT_LISTS);
                    for (id, platform, external_id, fold) in query.fetch_all(&mut *conn).await? {
                        let id = codec::parse_uuid(&id)?;
                        match (platform, external_id, fold) {
                            (Some(platform), Some(external_id), _) => {
                                streams.entry(id).or_default().push(codec::stream_key(&platform, external_id)?);
                            }
                            (_, _, Some(fold)) => {
                                folds.insert(id, fold);
                            }
                            _ => {}
                        }
                    }
                }
                for (stream, id) in filed {
                    streams.entry(*id).or_default().push(stream.clone());
                }
                let mut kept: HashMap<Uuid, FoldState> = HashMap::new();
                let mut stale: Vec<Uuid> = Vec::new();
                for (id, text) in folds {
                    match text.as_str() {
                        // Not built by this version (or wrecked): rebuilt from its events.
                        "" => stale.push(id),
                        text => {
                            kept.insert(id, codec::from_json::<FoldState>("fold state", text)?);
                        }
                    }
                }
                let revised: HashSet<Uuid> = increments
                    .iter()
                    .filter(|(_, events)| events.iter().any(|e| e.revision_of.is_some()))
                    .map(|(id, _)| *id)
                    .collect();
                // Each increment's facts at their causal times, by the clocks its conversation kept.
                type Increment = (Uuid, Option<LogExtent>, Vec<projection::Input>, projection::Clocks);
                let increments: Vec<Increment> = increments
                    .into_iter()
                    .map(|(id, events)| {
                        let mut clocks = kept.get(&id).map(|f| f.clocks().clone()).unwrap_or_default();
                        let inputs = clocks.inputs(&events);
                        (id, LogExtent::of_events(&events), inputs, clocks)
                    })
                    .collect();
                // Relays whose echo may already be folded (stored, or appended by this batch): the
                // stored ones asked about in one round trip.
                let echoes: Vec<Uuid> = increments
                    .iter()
                    .flat_map(|(_, _, inputs, _)| inputs.iter().filter_map(|i| projection::echo_of(&i.fact)))
                    .filter(|echo| !appended.contains(echo))
                    .collect();
                let stored_echoes: HashSet<Uuid> = if echoes.is_empty() {
                    HashSet::new()
                } else {
                    Self::stored_ids(conn, &echoes).await?
                };
                let mut to_refold: Vec<Uuid> = refold.into_iter().collect();
                let mut written = Vec::with_capacity(increments.len());
                for (id, extent, inputs, clocks) in increments {
                    if to_refold.contains(&id) {
                        continue;
                    }
                    // Stale, or a newer version of an event already folded: refolded from its events.
                    if stale.contains(&id) || revised.contains(&id) {
                        to_refold.push(id);
                        continue;
                    }
                    // None: a conversation this batch starts.
                    let kept_fold = kept.remove(&id);
                    let new = kept_fold.is_none();
                    let mut fold = kept_fold.unwrap_or_default();
                    let Some(extent) = extent else {
                        continue;
                    };
                    let (handoffs, agents, started_at) =
                        (fold.handoff_mark(), fold.agents().to_vec(), fold.started_at());
                    let folded = |echo: Uuid| appended.contains(&echo) || stored_echoes.contains(&echo);
                    match fold.extend_timed(extent, inputs, clocks, &folded) {
                        Ok(lines) => {
                            let streams = streams.remove(&id).unwrap_or_default();
                            let Some(conversation) = fold.conversation(id, &streams, sla) else {
                                continue;
                            };
                            let agents_changed = agents != fold.agents() || started_at != fold.started_at();
                            // The indexed columns follow from the latest handoff and the start alone.
                            let handoffs_changed = handoffs != fold.handoff_mark();
                            written.push(Written {
                                conversation,
                                lines,
                                // Only the latest handoff and new ones can change.
                                handoffs_from: handoffs_changed.then(|| handoffs.count().saturating_sub(1)),
                                agents_changed,
                                indexed_changed: new || handoffs_changed || started_at != fold.started_at(),
                                fold,
                            });
                        }
                        Err(why) => {
                            tracing::debug!(conversation = %id, ?why, "refolding");
                            to_refold.push(id);
                        }
                    }
                }
                if !to_refold.is_empty() {
                    // A refold reads the conversation's events and streams: the batch's go in first.
                    Self::run_writes(conn, writes).await?;
                    written.extend(Self::refold(conn, &to_refold, sla).await?);
                }
                // What the relay planner reads: each conversation as the batch leaves it, with its new lines.
                let kept: HashMap<Uuid, (Conversation, Vec<Message>)> = if keep {
                    written
                        .iter()
                        .map(|w| (w.conversation.id, (w.conversation.clone(), w.lines.clone())))
                        .collect()
                } else {
                    HashMap::new()
                };
                Self::write_into(writes, written, &to_refold)?;
                Self::run_writes(conn, writes).await?;
                Ok(kept)
            }

            /// The latest accepted queue call of each conversation of `ids` that has one (the live chat
            /// its relays go to), in few round trips.
            async fn latest_queue_calls(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
            ) -> StoreResult<HashMap<Uuid, StoredEvent>> {
                let mut latest: HashMap<Uuid, StoredEvent> = HashMap::new();
                for row in Self::rows_in::<EventRow>(conn, ids, latest_queue_calls_sql).await? {
                    let event = codec::decode_event(row)?;
                    let Some(id) = event.conversation_id else { continue };
                    if latest.get(&id).is_none_or(|known| known.seq < event.seq) {
                        latest.insert(id, event);
                    }
                }
                Ok(latest)
            }

            /// The attend events of a conversation, newest first (see [`attends_sql`]).
            async fn attends(
                conn: &mut <$db as sqlx::Database>::Connection,
                conversation: Uuid,
            ) -> StoreResult<Vec<StoredEvent>> {
                let rows: Vec<EventRow> = sqlx::query_as(&attends_sql())
                    .bind(conversation.to_string())
                    .fetch_all(&mut *conn)
                    .await?;
                rows.into_iter().map(codec::decode_event).collect()
            }

            /// Writes projected conversations: everything of a refolded one is deleted first, then
            /// rows are written with multi-row statements.
            async fn write(
                conn: &mut <$db as sqlx::Database>::Connection,
                written: Vec<Written>,
                refolded: &[Uuid],
            ) -> StoreResult<()> {
                let mut writes = Writes::default();
                Self::write_into(&mut writes, written, refolded)?;
                Self::run_writes(conn, &mut writes).await
            }

            /// The statements that write projected conversations: everything of a refolded one is
            /// deleted first, then rows are written with multi-row statements. A conversation whose
            /// indexed columns did not change sets only the others, so no index entry is rewritten.
            fn write_into(writes: &mut Writes, written: Vec<Written>, refolded: &[Uuid]) -> StoreResult<()> {
                for table in ["messages", "handoffs"] {
                    writes.delete_in(table, "conversation_id", refolded);
                }
                let agents_changed: Vec<Uuid> =
                    written.iter().filter(|w| w.agents_changed).map(|w| w.conversation.id).collect();
                writes.delete_in("conversation_agents", "conversation_id", &agents_changed);
                let (mut indexed, mut unindexed) = (Vec::new(), Vec::new());
                let (mut messages, mut handoffs, mut agents) = (Vec::new(), Vec::new(), Vec::new());
                for w in &written {
                    let row = codec::conversation_row(&w.conversation, &w.fold)?;
                    if w.indexed_changed {
                        indexed.push(row);
                    } else {
                        unindexed.push(row);
                    }
                    messages.extend(codec::message_rows(w.conversation.id, &w.lines)?);
                    if let Some(from) = w.handoffs_from {
                        handoffs.extend(codec::handoff_rows(&w.conversation)?.into_iter().skip(from));
                    }
                    if w.agents_changed {
                        agents.extend(codec::agent_rows(&w.conversation));
                    }
                }
                writes.insert(
                    "conversations",
                    codec::CONVERSATION_COLUMNS,
                    indexed,
                    &codec::upsert_clause(&["id"], codec::CONVERSATION_COLUMNS),
                );
                let unindexed_set: Vec<&str> = codec::CONVERSATION_COLUMNS
                    .iter()
                    .copied()
                    .filter(|c| *c == "id" || CONVERSATION_UNINDEXED.contains(c))
                    .collect();
                writes.insert(
                    "conversations",
                    codec::CONVERSATION_COLUMNS,
                    unindexed,
                    &codec::upsert_clause(&["id"], &unindexed_set),
                );
                writes.insert("messages", codec::MESSAGE_COLUMNS, messages, "");
                writes.insert(
                    "handoffs",
                    codec::HANDOFF_COLUMNS,
                    handoffs,
                    &codec::upsert_clause(&["conversation_id", "ordinal"], codec::HANDOFF_COLUMNS),
                );
                writes.insert("conversation_agents", codec::AGENT_COLUMNS, agents, "");
                Ok(())
            }

            /// One batch in one write transaction ([`Store::append_batch`], [`Store::append_batch_planned`]),
            /// where its time went logged at `debug` ([`BatchTiming`]).
            async fn write_batch(
                &self,
                groups: &[Vec<NewEvent>],
                sla: &SlaConfig,
                planner: Option<&dyn RelayPlanner>,
            ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                let timing = BatchTiming::start();
                let mut tx = self.begin_write().await?;
                let timing = timing.begun();
                let outcomes = Self::append_in(&mut *tx, groups, sla, planner).await?;
                let timing = timing.appended();
                tx.commit().await?;
                timing.committed(groups.len());
                Ok(outcomes)
            }

            async fn append_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                groups: &[Vec<NewEvent>],
                sla: &SlaConfig,
                planner: Option<&dyn RelayPlanner>,
            ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                // Read once: this is the only writer, so the batch's seqs follow without gaps.
                // Chained here, by the only writer, so each hash follows its predecessor's.
                let ids: Vec<Uuid> = groups.iter().flatten().map(|e| e.event_id).collect();
                // Ids already stored; events appended below join it, so duplicates inside the batch are seen too.
                let keys: Vec<&StreamKey> = groups
                    .iter()
                    .flatten()
                    .flat_map(|e| std::iter::once(&e.stream).chain(&e.links))
                    .collect();
                let (last, mut prev, mut known, streams_read, folds_read) = Self::batch_reads(conn, &ids, &keys).await?;
                let mut next = last + 1;
                let batch_from = next;
                // `(seq, stream, received_at)` of what the batch appended, for events identified by position.
                let mut batch: Vec<(i64, StreamKey, i64)> = Vec::new();
                let mut filing = Self::load_filing(conn, &keys, Some(streams_read)).await?;
                let mut appended: Vec<(i64, std::borrow::Cow<'_, NewEvent>, String, Option<Uuid>)> = Vec::new();
                let mut pending: Vec<Vec<Pending>> = Vec::with_capacity(groups.len());
                for group in groups {
                    let mut filed = Vec::with_capacity(group.len());
                    for event in group {
                        let sha = chain::payload_sha256(&event.payload);
                        let (id, revision_of) =
                            match Self::verdict(conn, &mut known, &batch, batch_from, event, &sha).await? {
                                Verdict::Duplicate(stored_id, stored) => {
                                    filed.push(Pending {
                                        event_id: stored_id,
                                        seq: stored.seq,
                                        duplicate: true,
                                        conflict: false,
                                        stream: stored.stream,
                                    });
                                    continue;
                                }
                                Verdict::Append { id, revision_of } => (id, revision_of),
                            };
                        // A new version or occurrence is appended under its own id.
                        let event: std::borrow::Cow<'_, NewEvent> = if id == event.event_id {
                            std::borrow::Cow::Borrowed(event)
                        } else {
                            std::borrow::Cow::Owned(NewEvent {
                                event_id: id,
                                ..event.clone()
                            })
                        };
                        let seq = next;
                        next += 1;
                        Self::file_event(conn, &mut filing, seq, &event.stream, &event.links).await?;
                        prev = chain::event_hash(
                            &prev,
                            &ChainLink {
                                seq,
                                event_id: event.event_id,
                                platform: event.stream.platform.as_str(),
                                external_id: &event.stream.external_id,
                                kind: &event.kind,
                                occurred_at: codec::to_micros(event.occurred_at),
                                received_at: codec::to_micros(event.received_at),
                                payload_sha256: sha,
                            },
                        );
                        let hash = chain::to_hex(&prev);
                        filing.events.push(codec::event_row(seq, &event, &hash, revision_of)?);
                        let stream = (!event.stream.external_id.is_empty()).then(|| event.stream.clone());
                        known.insert(
                            id,
                            Known {
                                seq,
                                stream: stream.clone(),
                                received_at: codec::to_micros(event.received_at),
                                payload_sha256: sha,
                                revision_of,
                            },
                        );
                        if let Some(stream) = &stream {
                            batch.push((seq, stream.clone(), codec::to_micros(event.received_at)));
                        }
                        filed.push(Pending {
                            event_id: id,
                            seq,
                            duplicate: false,
                            conflict: revision_of.is_some(),
                            stream,
                        });
                        appended.push((seq, event, hash, revision_of));
                    }
                    pending.push(filed);
                }
                // Inserted with the projection's rows (one call on SQLite), or before a refold reads the log.
                let filed: Vec<(StreamKey, Uuid)> =
                    filing.new_streams.iter().map(|(stream, id, _)| (stream.clone(), *id)).collect();
                let mut writes = Writes::default();
                filing.defer(&mut writes);
                // Each new event joins the increment of the conversation its stream ends up in.
                let mut increments: BTreeMap<Uuid, Vec<StoredEvent>> = BTreeMap::new();
                // New events that may call for commands, as stored: planned once projected.
                let mut to_plan: Vec<StoredEvent> = Vec::new();
                for (seq, event, hash, revision_of) in appended {
                    let Some(Some(conversation)) = filing.streams.get(&event.stream).copied() else {
                        continue;
                    };
                    let stored = codec::stored_event(seq, &event, Some(conversation), Some(hash), revision_of)?;
                    if planner.is_some_and(|p| revision_of.is_none() && p.relays(&event.kind)) {
                        to_plan.push(stored.clone());
                    }
                    increments.entry(conversation).or_default().push(stored);
                }
                for survivor in &filing.merged {
                    increments.entry(*survivor).or_default();
                }
                let refold = filing.merged.clone();
                let appended_ids: HashSet<Uuid> = pending.iter().flatten().filter(|p| !p.duplicate).map(|p| p.event_id).collect();
                let batch = Unwritten {
                    writes: &mut writes,
                    streams: &filed,
                    events: &appended_ids,
                    // A merge wrote streams and deleted a projection since: what was read no longer holds.
                    folds: folds_read.filter(|_| filing.merged.is_empty()),
                };
                let projected = Self::project(conn, increments, refold, sla, !to_plan.is_empty(), batch).await?;
                // The commands each new event calls for, planned on the state it left: appended in this
                // same transaction, after the batch.
                let mut planned: Vec<NewEvent> = Vec::new();
                let mut planned_for: HashMap<i64, std::ops::Range<usize>> = HashMap::new();
                if let Some(planner) = planner {
                    // The latest queue call of every conversation whose events plan with it, in one read.
                    let mut asking: Vec<Uuid> = to_plan
                        .iter()
                        .filter(|e| planner.reads_queue_call(&e.kind))
                        .filter_map(|e| e.conversation_id)
                        .collect();
                    asking.sort_unstable();
                    asking.dedup();
                    let queue_calls = Self::latest_queue_calls(conn, &asking).await?;
                    for event in &to_plan {
                        let Some(id) = event.conversation_id else { continue };
                        let Some((conversation, lines)) = projected.get(&id) else {
                            continue;
                        };
                        let queued = queue_calls.get(&id);
                        let lines: Vec<Message> = lines.iter().filter(|m| m.seq == event.seq).cloned().collect();
                        let attends = if planner.reads_attends(event, conversation) {
                            Self::attends(conn, id).await?
                        } else {
                            Vec::new()
                        };
                        let commands = planner.plan(event, conversation, &lines, queued, &attends);
                        planned_for.insert(event.seq, planned.len()..planned.len() + commands.len());
                        planned.extend(commands);
                    }
                }
                // A redelivery's stream as stored: looked up when the batch did not file it.
                for p in pending.iter().flatten() {
                    if let Some(stream) = &p.stream {
                        Self::stream_conversation(conn, &mut filing, stream).await?;
                    }
                }
                let outcomes = pending
                    .into_iter()
                    .map(|filed| {
                        filed
                            .into_iter()
                            .map(|p| AppendOutcome {
                                event_id: p.event_id,
                                seq: p.seq,
                                duplicate: p.duplicate,
                                conflict: p.conflict,
                                conversation_id: p.stream.and_then(|s| filing.streams.get(&s).copied().flatten()),
                                relays: Vec::new(),
                            })
                            .collect()
                    })
                    .collect();
                let mut outcomes: Vec<Vec<AppendOutcome>> = outcomes;
                if !planned.is_empty() {
                    // Command ids are derived from their trigger: one already recorded is not appended again.
                    let recorded = Box::pin(Self::append_in(conn, &[planned], sla, None)).await?;
                    let recorded: Vec<AppendOutcome> = recorded.into_iter().flatten().collect();
                    for outcome in outcomes.iter_mut().flatten() {
                        if outcome.duplicate {
                            continue;
                        }
                        if let Some(range) = planned_for.get(&outcome.seq) {
                            outcome.relays = recorded[range.clone()]
                                .iter()
                                .filter(|r| !r.duplicate)
                                .map(|r| r.seq)
                                .collect();
                        }
                    }
                }
                Ok(outcomes)
            }

            /// Rebuilds every conversation listed (all of them in a replay) from its events and
            /// writes it, a chunk at a time; `progress(done, total)` after each chunk.
            async fn rebuild(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                sla: &SlaConfig,
                progress: &(dyn Fn(u64, u64) + Send + Sync),
            ) -> StoreResult<u64> {
                let total = ids.len() as u64;
                progress(0, total);
                let (mut done, mut conversations) = (0u64, 0u64);
                for chunk in ids.chunks(IN_CHUNK) {
                    let written = Self::refold(conn, chunk, sla).await?;
                    conversations += written.len() as u64;
                    Self::write(conn, written, chunk).await?;
                    done += chunk.len() as u64;
                    progress(done, total);
                }
                Ok(conversations)
            }

            async fn replay_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                sla: &SlaConfig,
                progress: &(dyn Fn(u64, u64) + Send + Sync),
            ) -> StoreResult<ReplayStats> {
                for sql in SQL_CLEAR_PROJECTIONS {
                    sqlx::query(sql).execute(&mut *conn).await?;
                }
                let mut events = 0u64;
                let mut after = 0i64;
                loop {
                    let chunk: Vec<(i64, String, String, String)> = sqlx::query_as(SQL_REPLAY_CHUNK)
                        .bind(after)
                        .bind(REPLAY_CHUNK)
                        .fetch_all(&mut *conn)
                        .await?;
                    let Some(last) = chunk.last().map(|row| row.0) else {
                        break;
                    };
                    let mut decoded = Vec::with_capacity(chunk.len());
                    for (seq, platform, external_id, links) in chunk {
                        let stream = codec::stream_key(&platform, external_id)?;
                        let links: Vec<StreamKey> = codec::from_json("links", &links)?;
                        decoded.push((seq, stream, links));
                    }
                    let keys: Vec<&StreamKey> =
                        decoded.iter().flat_map(|(_, s, l)| std::iter::once(s).chain(l)).collect();
                    let mut filing = Self::load_filing(conn, &keys, None).await?;
                    for (seq, stream, links) in &decoded {
                        Self::file_event(conn, &mut filing, *seq, stream, links).await?;
                        events += 1;
                    }
                    Self::flush(conn, &mut filing).await?;
                    after = last;
                }
                let ids: Vec<(String,)> = sqlx::query_as(SQL_ALL_CONVERSATIONS).fetch_all(&mut *conn).await?;
                let ids = ids.iter().map(|(id,)| codec::parse_uuid(id)).collect::<StoreResult<Vec<_>>>()?;
                let conversations = Self::rebuild(conn, &ids, sla, progress).await?;
                Ok(ReplayStats {
                    events,
                    conversations,
                    rewritten: conversations,
                    online: false,
                })
            }

            /// The log's filing re-made in memory from one snapshot (see [`Refiling`]), the events it
            /// walked, and whether the stored streams and aliases are exactly that filing.
            async fn refile_snapshot(&self) -> StoreResult<(Refiling, u64, bool)> {
                let mut tx = self.pool.begin_with($snapshot).await?;
                Self::replay_reads(&mut *tx).await?;
                let head = Self::last_seq_in(&mut *tx).await?;
                // The pages are filed on a thread of their own while the database reads the next.
                let (pages, mut received) = tokio::sync::mpsc::channel::<String>(2);
                let filer = tokio::task::spawn_blocking(move || -> StoreResult<(Refiling, u64)> {
                    let mut refiling = Refiling::default();
                    let mut events = 0u64;
                    while let Some(page) = received.blocking_recv() {
                        events += refiling.file_page(&page)?;
                    }
                    Ok((refiling, events))
                });
                let sql = replay::refile_page_sql(<$db as sqlx::Database>::NAME == "SQLite");
                let mut after = 0i64;
                while after < head {
                    let until = after.saturating_add(REFILE_PAGE).min(head);
                    // One page is one value: its rows as a JSON array.
                    let (page,): (Option<String>,) =
                        sqlx::query_as(&sql).bind(after).bind(until).fetch_one(&mut *tx).await?;
                    // A send fails only when the filer stopped on an error, which it returns below.
                    if let Some(page) = page {
                        if pages.send(page).await.is_err() {
                            break;
                        }
                    }
                    after = until;
                }
                drop(pages);
                let streams: Vec<(String, String, String, i64)> =
                    sqlx::query_as(SQL_ALL_STREAMS).fetch_all(&mut *tx).await?;
                let aliases: Vec<(String, String)> = sqlx::query_as(SQL_ALL_ALIASES).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                let (refiling, events) = filer
                    .await
                    .map_err(|e| StoreError::Corrupt(format!("the replay's filing failed: {e}")))??;
                let same = streams.len() == refiling.streams.len()
                    && aliases.len() == refiling.aliases.len()
                    && streams.into_iter().all(|(platform, external_id, id, first_seq)| {
                        let Ok(key) = codec::stream_key(&platform, external_id) else {
                            return false;
                        };
                        codec::parse_uuid(&id).ok().map(|id| (id, first_seq)) == refiling.streams.get(&key).copied()
                    })
                    && aliases.into_iter().all(|(absorbed, survivor)| {
                        match (codec::parse_uuid(&absorbed), codec::parse_uuid(&survivor)) {
                            (Ok(absorbed), Ok(survivor)) => refiling.aliases.get(&absorbed) == Some(&survivor),
                            _ => false,
                        }
                    });
                Ok((refiling, events, same))
            }

            /// Whether a stored row holds exactly the values of `row` (after the leading key column).
            fn stored_row_matches(stored: &<$db as sqlx::Database>::Row, row: &Row) -> bool {
                use sqlx::Row as _;
                stored.len() == row.len() + 1
                    && row.iter().enumerate().all(|(i, value)| {
                        let i = i + 1;
                        match value {
                            Bind::Text(v) => stored.try_get::<&str, _>(i).is_ok_and(|s| s == v),
                            Bind::Int(v) => stored.try_get::<i64, _>(i).is_ok_and(|s| s == *v),
                            Bind::OptText(v) => stored.try_get::<Option<&str>, _>(i).is_ok_and(|s| s == v.as_deref()),
                            Bind::OptInt(v) => stored.try_get::<Option<i64>, _>(i).is_ok_and(|s| s == *v),
                            Bind::OptFloat(v) => stored.try_get::<Option<f64>, _>(i).is_ok_and(|s| s == *v),
                        }
                    })
            }

            /// Whether the stored rows of one conversation in one table are exactly `rows` (in key order,
            /// or for a few rows in any order: the agent names' order is the database's collation).
            fn stored_rows_match(stored: Option<&Vec<<$db as sqlx::Database>::Row>>, rows: &[Row]) -> bool {
                let stored = stored.map_or(&[][..], Vec::as_slice);
                stored.len() == rows.len()
                    && (stored.iter().zip(rows).all(|(s, r)| Self::stored_row_matches(s, r))
                        || (rows.len() <= 16
                            && rows.iter().all(|r| stored.iter().any(|s| Self::stored_row_matches(s, r)))))
            }

            /// The stored rows of `table` of the conversations `ids`, by conversation.
            async fn stored_rows(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                table: &str,
                key: &str,
                columns: &[&str],
                order: &str,
            ) -> StoreResult<HashMap<Uuid, Vec<<$db as sqlx::Database>::Row>>> {
                use sqlx::Row as _;
                let mut found: HashMap<Uuid, Vec<<$db as sqlx::Database>::Row>> = HashMap::new();
                for chunk in ids.chunks(REPLAY_CONVERSATIONS) {
                    let (list, args) = Self::list_of(chunk.iter().map(Uuid::to_string).collect())?;
                    let sql = Self::replay_sql(stored_rows_sql(table, key, columns, order, list));
                    for row in sqlx::query_with(&sql, args).persistent(false).fetch_all(&mut *conn).await? {
                        // A key that is no id is no conversation's: the orphan sweep deletes it.
                        if let Ok(id) = codec::parse_uuid(row.try_get::<&str, _>(0)?) {
                            found.entry(id).or_default().push(row);
                        }
                    }
                }
                Ok(found)
            }

            /// The rows `from` gives for the conversations `ids` (`key`, at most [`REPLAY_CONVERSATIONS`]),
            /// all as one JSON array of their `columns` in `order` (see [`replay`]); None or `[]`: none.
            async fn rows_json(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                from: &str,
                key: &str,
                columns: &[&str],
                order: &str,
            ) -> StoreResult<Option<String>> {
                let sqlite = <$db as sqlx::Database>::NAME == "SQLite";
                let (list, args) = Self::list_of(ids.iter().map(Uuid::to_string).collect())?;
                let sql = Self::replay_sql(replay::rows_json_sql(sqlite, from, key, columns, order, list));
                let query = sqlx::query_as_with::<_, (Option<String>,), _>(&sql, args).persistent(false);
                Ok(query.fetch_one(&mut *conn).await?.0)
            }

            /// A list of `values` as this backend names it from placeholder 1 ([`Dialect::list`]), with
            /// its values bound; more values may be added after them.
            fn list_of(values: Vec<String>) -> StoreResult<(InList, <$db as sqlx::Database>::Arguments<'static>)> {
                let list = <$db as Dialect>::list(1, values.len());
                let mut args = <$db as sqlx::Database>::Arguments::default();
                <$db as Dialect>::bind_list(&mut args, values)?;
                Ok((list, args))
            }

            /// `sql` as this backend runs it fastest: on SQLite, with anonymous placeholders (each
            /// `$N` of the replay's statements appears once, in order).
            fn replay_sql(sql: String) -> String {
                if <$db as sqlx::Database>::NAME == "SQLite" {
                    anonymous_placeholders(&sql)
                } else {
                    sql
                }
            }

            /// Sets up a connection for the replay's reads. On SQLite: a page cache that holds a chunk's
            /// pages, and the database file mapped into memory (a chunk's events are spread over the
            /// whole log: its pages are read without a copy through the kernel each time).
            async fn replay_reads(conn: &mut <$db as sqlx::Database>::Connection) -> StoreResult<()> {
                if <$db as sqlx::Database>::NAME == "SQLite" {
                    sqlx::query("PRAGMA cache_size = -131072; PRAGMA mmap_size = 1073741824")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// Reads one chunk of conversations for an online replay without the write lock, its parts at
            /// once on connections of their own (SQLite answers each on its connection's thread): see
            /// [`Self::read_part`]. The chunk's head is the earliest of the parts' heads (a conversation
            /// with an event after it is refolded under the lock before it is written).
            async fn read_chunk(&self, parts: Vec<Vec<Uuid>>) -> StoreResult<ChunkRead<<$db as sqlx::Database>::Row>> {
                let reads = futures::future::try_join_all(parts.into_iter().map(|ids| self.read_part(ids))).await?;
                let mut chunk = ChunkRead {
                    parts: Vec::with_capacity(reads.len()),
                    head: i64::MAX,
                    handoffs: HashMap::new(),
                };
                for (head, part, handoffs) in reads {
                    chunk.head = chunk.head.min(head);
                    chunk.parts.push(part);
                    chunk.handoffs.extend(handoffs);
                }
                Ok(chunk)
            }

            /// Reads one part of a chunk in one snapshot: the log's head, the streams, events and stored
            /// projection rows of its conversations, each table's rows as one value (see [`replay`]), and
            /// their handoff rows.
            async fn read_part(&self, ids: Vec<Uuid>) -> StoreResult<PartSnapshot<<$db as sqlx::Database>::Row>> {
                let mut tx = self.pool.begin_with($snapshot).await?;
                Self::replay_reads(&mut *tx).await?;
                let head = Self::last_seq_in(&mut *tx).await?;
                let events = Self::rows_json(
                    &mut *tx,
                    &ids,
                    replay::EVENTS_FROM,
                    "s.conversation_id",
                    replay::EVENT_JSON_COLUMNS,
                    "",
                )
                .await?;
                let streams = Self::rows_json(
                    &mut *tx,
                    &ids,
                    "streams",
                    "conversation_id",
                    replay::STREAM_JSON_COLUMNS,
                    replay::STREAM_JSON_ORDER,
                )
                .await?;
                let mut stored: [Option<String>; 3] = Default::default();
                for (i, (table, key, columns, order)) in [
                    ("conversations", "id", codec::CONVERSATION_COLUMNS, ""),
                    // In any order: sorted by the fold's thread (`fold_part`), not by a sort in the database.
                    ("messages", "conversation_id", codec::MESSAGE_COLUMNS, ""),
                    ("conversation_agents", "conversation_id", codec::AGENT_COLUMNS, "conversation_id, agent"),
                ]
                .into_iter()
                .enumerate()
                {
                    stored[i] = Self::rows_json(&mut *tx, &ids, table, key, columns, order).await?;
                }
                let handoffs =
                    Self::stored_rows(&mut *tx, &ids, "handoffs", "conversation_id", codec::HANDOFF_COLUMNS, ", ordinal")
                        .await?;
                tx.commit().await?;
                let part = PartRead {
                    ids,
                    events,
                    streams,
                    stored,
                };
                Ok((head, part, handoffs))
            }

            /// Folds a chunk read by [`Self::read_chunk`] and compares, on tasks of their own while the
            /// next chunk is read: the conversations whose stored rows are not what a full rebuild
            /// writes, with their rebuilt rows.
            fn diff_chunk(
                read: ChunkRead<<$db as sqlx::Database>::Row>,
                sla: &SlaConfig,
            ) -> tokio::task::JoinHandle<StoreResult<ChunkDiff>> {
                let ChunkRead { parts, head, handoffs } = read;
                let sla = sla.clone();
                tokio::spawn(async move {
                    let folded = fold_parts(parts, &sla).await?;
                    Ok(Self::diff_folded(folded, head, &handoffs))
                })
            }

            /// The conversations of the folded parts of a chunk whose stored rows (the handoff rows
            /// compared here) are not what a full rebuild writes, with their rebuilt rows.
            fn diff_folded(
                parts: Vec<FoldedPart>,
                head: i64,
                handoffs: &HashMap<Uuid, Vec<<$db as sqlx::Database>::Row>>,
            ) -> ChunkDiff {
                let mut projected = 0u64;
                let mut changed: Vec<(Uuid, Option<ProjectionRows>)> = Vec::new();
                let mut streams: HashMap<Uuid, Vec<StreamKey>> = HashMap::new();
                for (folded, mut part_streams) in parts {
                    for (id, rows, same) in folded {
                        projected += u64::from(rows.is_some());
                        let same = same
                            && match &rows {
                                None => !handoffs.contains_key(&id),
                                Some(r) => Self::stored_rows_match(handoffs.get(&id), &r.handoffs),
                            };
                        if !same {
                            streams.insert(id, part_streams.remove(&id).unwrap_or_default());
                            changed.push((id, rows));
                        }
                    }
                }
                ChunkDiff {
                    head,
                    projected,
                    changed,
                    streams,
                }
            }

            /// Writes what [`Self::diff_chunk`] found different, under the write lock, in one short
            /// transaction; returns how many conversations were rewritten.
            async fn write_chunk(&self, diff: ChunkDiff, sla: &SlaConfig) -> StoreResult<u64> {
                if diff.changed.is_empty() {
                    return Ok(0);
                }
                let rewritten = diff.changed.len() as u64;
                let mut tx = self.begin_write().await?;
                Self::write_rebuilt(&mut *tx, diff.changed, diff.head, &diff.streams, sla).await?;
                tx.commit().await?;
                Ok(rewritten)
            }

            /// Replaces every projection row of the conversations `changed` by their rebuilt rows (made
            /// from the log as of seq `head`, with the streams `streams`); a conversation with an event
            /// after `head` or other streams now is refolded here instead (the caller holds the write lock).
            async fn write_rebuilt(
                conn: &mut <$db as sqlx::Database>::Connection,
                changed: Vec<(Uuid, Option<ProjectionRows>)>,
                head: i64,
                streams: &HashMap<Uuid, Vec<StreamKey>>,
                sla: &SlaConfig,
            ) -> StoreResult<()> {
                let ids: Vec<Uuid> = changed.iter().map(|(id, _)| *id).collect();
                let mut touched: HashSet<Uuid> = HashSet::new();
                for chunk in ids.chunks(IN_CHUNK) {
                    let (list, mut args) = Self::list_of(chunk.iter().map(Uuid::to_string).collect())?;
                    sqlx::Arguments::add(&mut args, head).map_err(encode_error)?;
                    let sql = Self::replay_sql(touched_since_sql(list));
                    let query = sqlx::query_as_with::<_, (String,), _>(&sql, args).persistent(false);
                    for (id,) in query.fetch_all(&mut *conn).await? {
                        touched.insert(codec::parse_uuid(&id)?);
                    }
                }
                let now = Self::streams_of(conn, &ids).await?;
                touched.extend(ids.iter().filter(|id| now.get(*id).unwrap_or(&Vec::new()) != &streams[*id]));
                let touched: Vec<Uuid> = ids.iter().filter(|id| touched.contains(*id)).copied().collect();
                let mut refolded: HashMap<Uuid, ProjectionRows> = HashMap::new();
                if !touched.is_empty() {
                    tracing::debug!(conversations = touched.len(), "refolding what the writer touched meanwhile");
                    for w in Self::refold(conn, &touched, sla).await? {
                        refolded.insert(w.conversation.id, ProjectionRows::of(&w)?);
                    }
                }
                let mut writes = Writes::default();
                writes.delete_in("conversations", "id", &ids);
                for table in ["messages", "handoffs", "conversation_agents"] {
                    writes.delete_in(table, "conversation_id", &ids);
                }
                let (mut conversations, mut messages, mut handoffs, mut agents) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (id, rows) in changed {
                    let rows = if touched.contains(&id) { refolded.remove(&id) } else { rows };
                    if let Some(rows) = rows {
                        conversations.push(rows.conversation);
                        messages.extend(rows.messages);
                        handoffs.extend(rows.handoffs);
                        agents.extend(rows.agents);
                    }
                }
                writes.insert("conversations", codec::CONVERSATION_COLUMNS, conversations, "");
                writes.insert("messages", codec::MESSAGE_COLUMNS, messages, "");
                writes.insert("handoffs", codec::HANDOFF_COLUMNS, handoffs, "");
                writes.insert("conversation_agents", codec::AGENT_COLUMNS, agents, "");
                Self::run_writes(conn, &mut writes).await
            }

            /// Deletes projection rows of conversations no stream is filed under (found without the
            /// lock, deleted under it after checking again). Returns how many ids were swept.
            async fn sweep_orphans(&self) -> StoreResult<u64> {
                let mut found: Vec<Vec<String>> = Vec::new();
                {
                    let mut conn = self.pool.acquire().await?;
                    for (table, column) in SQL_ORPHANS {
                        let ids: Vec<(String,)> =
                            sqlx::query_as(&orphans_sql(table, column)).fetch_all(&mut *conn).await?;
                        found.push(ids.into_iter().map(|(id,)| id).collect());
                    }
                }
                if found.iter().all(Vec::is_empty) {
                    return Ok(0);
                }
                let mut tx = self.begin_write().await?;
                for ((table, column), ids) in SQL_ORPHANS.iter().zip(&found) {
                    for chunk in ids.chunks(IN_CHUNK) {
                        let (list, args) = Self::list_of(chunk.to_vec())?;
                        let sql = Self::replay_sql(delete_orphans_sql(table, column, list));
                        sqlx::query_with(&sql, args).persistent(false).execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
                Ok(found.iter().map(|ids| ids.len() as u64).sum())
            }

            /// The online replay: None when the stored filing is not the log's (then only the offline
            /// replay, which re-files every stream, can repair it).
            async fn replay_online(
                &self,
                sla: &SlaConfig,
                progress: &(dyn Fn(u64, u64) + Send + Sync),
            ) -> StoreResult<Option<ReplayStats>> {
                let started = std::time::Instant::now();
                let (refiling, events, same) = self.refile_snapshot().await?;
                tracing::info!(events, same, elapsed_ms = started.elapsed().as_millis() as u64, "replay: log re-filed");
                if !same {
                    return Ok(None);
                }
                let conversations = refiling.conversations();
                drop(refiling);
                let total = conversations.len() as u64;
                progress(0, total);
                let (mut done, mut projected, mut rewritten) = (0u64, 0u64, 0u64);
                // Chunk k is folded on a blocking thread while chunk k+1 is read.
                let mut folding: Option<(u64, tokio::task::JoinHandle<StoreResult<ChunkDiff>>)> = None;
                let mut chunks = replay_chunks(&conversations, replay_parts()).into_iter();
                loop {
                    let next = chunks.next();
                    let read = match next {
                        Some(parts) => Some((parts.iter().map(Vec::len).sum::<usize>() as u64, self.read_chunk(parts).await?)),
                        None => None,
                    };
                    if let Some((n, handle)) = folding.take() {
                        let diff = handle
                            .await
                            .map_err(|e| StoreError::Corrupt(format!("a replay fold failed: {e}")))??;
                        projected += diff.projected;
                        rewritten += self.write_chunk(diff, sla).await?;
                        done += n;
                        progress(done, total);
                    }
                    let Some((n, read)) = read else {
                        break;
                    };
                    folding = Some((n, Self::diff_chunk(read, sla)));
                }
                tracing::info!(projected, rewritten, elapsed_ms = started.elapsed().as_millis() as u64, "replay: conversations rebuilt");
                rewritten += self.sweep_orphans().await?;
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "replay: orphans swept");
                Ok(Some(ReplayStats {
                    events,
                    conversations: projected,
                    rewritten,
                    online: true,
                }))
            }
        }

        #[async_trait]
        impl Store for $name {
            async fn migrate(&self) -> StoreResult<()> {
                $migrator.run(&self.pool).await?;
                let hashed = self.backfill_chain().await?;
                if hashed > 0 {
                    tracing::info!(hashed, "event chain backfilled");
                }
                Ok(())
            }

            async fn rebuild_stale(&self, sla: &SlaConfig) -> StoreResult<u64> {
                let stale: Vec<(String,)> = sqlx::query_as(SQL_STALE_CONVERSATIONS).fetch_all(&self.pool).await?;
                if stale.is_empty() {
                    return Ok(0);
                }
                let ids = stale.iter().map(|(id,)| codec::parse_uuid(id)).collect::<StoreResult<Vec<_>>>()?;
                tracing::info!(conversations = ids.len(), "rebuilding projections kept by an earlier version");
                let mut tx = self.begin_write().await?;
                let rebuilt = Self::rebuild(&mut *tx, &ids, sla, &|_, _| {}).await?;
                tx.commit().await?;
                Ok(rebuilt)
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn append_batch(&self, groups: &[Vec<NewEvent>], sla: &SlaConfig) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                self.write_batch(groups, sla, None).await
            }

            async fn append_batch_planned(
                &self,
                groups: &[Vec<NewEvent>],
                sla: &SlaConfig,
                planner: &dyn RelayPlanner,
            ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                self.write_batch(groups, sla, Some(planner)).await
            }

            async fn quarantine(&self, entry: &NewQuarantine) -> StoreResult<i64> {
                // At most the first `quarantine_body_bytes` are kept, with the whole body's size and SHA-256.
                let (kept, size, sha) = crate::quarantine::cap_body(&entry.body, self.quarantine_body_bytes);
                let (id,): (i64,) = sqlx::query_as(SQL_INSERT_QUARANTINE)
                    .bind(codec::to_micros(entry.received_at))
                    .bind(&entry.path)
                    .bind(entry.platform.map(|p| p.as_str()))
                    .bind(&entry.error_code)
                    .bind(&entry.error_message)
                    .bind(i64::from(entry.status))
                    .bind(codec::to_json("headers", &entry.headers)?)
                    .bind(kept)
                    .bind(size)
                    .bind(sha)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(id)
            }

            async fn list_quarantine(&self, limit: u32, before: Option<i64>) -> StoreResult<Vec<QuarantineEntry>> {
                let limit = i64::from(limit);
                let rows: Vec<QuarantineRow> = match before {
                    Some(before) => {
                        sqlx::query_as(SQL_LIST_QUARANTINE_BEFORE)
                            .bind(limit)
                            .bind(before)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => sqlx::query_as(SQL_LIST_QUARANTINE).bind(limit).fetch_all(&self.pool).await?,
                };
                rows.into_iter().map(codec::decode_quarantine).collect()
            }

            async fn quarantined_body(&self, id: i64) -> StoreResult<Option<Vec<u8>>> {
                let row: Option<(Vec<u8>,)> =
                    sqlx::query_as(SQL_GET_QUARANTINE_BODY).bind(id).fetch_optional(&self.pool).await?;
                Ok(row.map(|(body,)| body))
            }

            async fn redrives_of(&self, ids: &[i64]) -> StoreResult<Vec<(i64, Redrive)>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = redrives_of_sql(ids.len());
                let mut query = sqlx::query_as::<_, codec::RedriveRow>(&sql);
                for id in ids {
                    query = query.bind(*id);
                }
                query.fetch_all(&self.pool).await?.into_iter().map(codec::decode_redrive).collect()
            }

            async fn record_redrive(&self, quarantine_id: i64, redrive: &Redrive) -> StoreResult<()> {
                sqlx::query(SQL_INSERT_REDRIVE)
                    .bind(quarantine_id)
                    .bind(codec::to_micros(redrive.at))
                    .bind(i64::from(redrive.status))
                    .bind(&redrive.outcome)
                    .bind(&redrive.error_code)
                    .bind(redrive.event_id.map(|id| id.to_string()))
                    .bind(redrive.seq)
                    .bind(redrive.conversation_id.map(|id| id.to_string()))
                    .bind(&redrive.key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_conversation(&self, id: Uuid) -> StoreResult<Option<Conversation>> {
                let row: Option<(String,)> = sqlx::query_as(SQL_GET_CONVERSATION)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|(doc,)| codec::from_json("conversation", &doc)).transpose()
            }

            async fn list_conversations(&self, filter: &ConversationFilter) -> StoreResult<ConversationPage> {
                let (sql, binds) = codec::list_conversations_query(filter);
                let mut query = sqlx::query_as::<_, (String, i64, String)>(&sql);
                for bind in binds {
                    query = match bind {
                        Bind::Text(v) => query.bind(v),
                        Bind::Int(v) => query.bind(v),
                        Bind::OptText(v) => query.bind(v),
                        Bind::OptInt(v) => query.bind(v),
                        Bind::OptFloat(v) => query.bind(v),
                    };
                }
                let mut rows = query.fetch_all(&self.pool).await?;
                let limit = filter.limit.max(1) as usize;
                let more = rows.len() > limit;
                rows.truncate(limit);
                let next = match (more, rows.last()) {
                    (true, Some((_, started, id))) => Some((*started, codec::parse_uuid(id)?)),
                    _ => None,
                };
                let items = rows
                    .iter()
                    .map(|(doc, _, _)| codec::from_json("conversation", doc))
                    .collect::<StoreResult<Vec<Conversation>>>()?;
                Ok(ConversationPage { items, next })
            }

            async fn transcript_page(
                &self,
                id: Uuid,
                after: Option<MessageCursor>,
                limit: Option<u32>,
            ) -> StoreResult<Option<TranscriptPage>> {
                let mut conn = self.pool.acquire().await?;
                let Some(id) = Self::resolve_projected(&mut *conn, id).await? else {
                    return Ok(None);
                };
                let (at, seq, idx) = after.unwrap_or((i64::MIN, i64::MIN, i64::MIN));
                let sql = transcript_sql(limit.is_some());
                let mut query = sqlx::query_as::<_, MessageRow>(&sql)
                    .bind(id.to_string())
                    .bind(at)
                    .bind(seq)
                    .bind(idx);
                if let Some(limit) = limit {
                    // One more than asked: tells whether another page follows.
                    query = query.bind(i64::from(limit) + 1);
                }
                let mut rows = query
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(codec::decode_message)
                    .collect::<StoreResult<Vec<_>>>()?;
                let more = limit.is_some_and(|l| rows.len() > l as usize);
                if let Some(limit) = limit {
                    rows.truncate(limit as usize);
                }
                let next = if more { rows.last().map(|(cursor, _)| *cursor) } else { None };
                Ok(Some(TranscriptPage {
                    conversation_id: id,
                    messages: rows.into_iter().map(|(_, m)| m).collect(),
                    next,
                }))
            }

            async fn event_lines(&self, id: Uuid, seq: i64) -> StoreResult<Vec<Message>> {
                let rows: Vec<MessageRow> = sqlx::query_as(&event_lines_sql())
                    .bind(id.to_string())
                    .bind(seq)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(|row| codec::decode_message(row).map(|(_, m)| m)).collect()
            }

            async fn conversation_events_page(
                &self,
                id: Uuid,
                after_seq: i64,
                limit: Option<u32>,
            ) -> StoreResult<Option<Vec<StoredEvent>>> {
                let mut conn = self.pool.acquire().await?;
                let id = Self::resolve(&mut *conn, id).await?;
                if !Self::conversation_exists(&mut *conn, &Filing::default(), id).await? {
                    return Ok(None);
                }
                let sql = conversation_events_sql(limit.is_some());
                let mut query = sqlx::query_as::<_, EventRow>(&sql).bind(id.to_string()).bind(after_seq);
                if let Some(limit) = limit {
                    query = query.bind(i64::from(limit));
                }
                let rows = query.fetch_all(&mut *conn).await?;
                rows.into_iter().map(codec::decode_event).collect::<StoreResult<Vec<_>>>().map(Some)
            }

            async fn events_after(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
                let rows: Vec<EventRow> = sqlx::query_as(&events_after_sql())
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(codec::decode_event).collect()
            }

            async fn last_seq(&self) -> StoreResult<i64> {
                let mut conn = self.pool.acquire().await?;
                Self::last_seq_in(&mut *conn).await
            }

            async fn chain_head(&self) -> StoreResult<Option<ChainHead>> {
                self.chain_head_of().await
            }

            async fn chain_rows(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<ChainRow>> {
                self.chain_rows_of(after_seq, limit).await
            }

            async fn chain_page(&self, first_seq: i64, last_seq: i64) -> StoreResult<super::ChainPage> {
                self.chain_page_of(first_seq, last_seq).await
            }

            async fn erase(
                &self,
                target: &crate::erasure::ErasureTarget,
                erasure_id: Uuid,
                at: chrono::DateTime<chrono::Utc>,
                sla: &SlaConfig,
            ) -> StoreResult<Option<crate::erasure::ErasureCertificate>> {
                let mut tx = self.begin_write().await?;
                let certificate = Self::erase_in(&mut *tx, target, erasure_id, at, sla).await?;
                tx.commit().await?;
                Ok(certificate)
            }

            async fn erasure(&self, id: Uuid) -> StoreResult<Option<crate::erasure::ErasureCertificate>> {
                let mut conn = self.pool.acquire().await?;
                Self::erasure_in(&mut *conn, id).await
            }

            async fn erased_among(&self, ids: &[Uuid]) -> StoreResult<BTreeSet<Uuid>> {
                let mut conn = self.pool.acquire().await?;
                Self::rows_in::<(String,)>(&mut *conn, ids, erasing::erased_among_sql)
                    .await?
                    .iter()
                    .map(|(id,)| codec::parse_uuid(id))
                    .collect()
            }

            async fn conversations_to_erase(
                &self,
                closed_before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> StoreResult<Vec<Uuid>> {
                let ids: Vec<(String,)> = sqlx::query_as(erasing::SQL_TO_ERASE)
                    .bind(codec::to_micros(closed_before))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                ids.iter().map(|(id,)| codec::parse_uuid(id)).collect()
            }

            async fn replay(&self, sla: &SlaConfig, progress: &(dyn Fn(u64, u64) + Send + Sync)) -> StoreResult<ReplayStats> {
                if let Some(stats) = self.replay_online(sla, progress).await? {
                    return Ok(stats);
                }
                tracing::warn!("the stored streams and aliases are not the log's filing: replaying offline");
                self.replay_offline(sla, progress).await
            }

            async fn replay_offline(
                &self,
                sla: &SlaConfig,
                progress: &(dyn Fn(u64, u64) + Send + Sync),
            ) -> StoreResult<ReplayStats> {
                // One transaction: readers keep the old projections until the rebuilt ones commit,
                // and a failed replay leaves them untouched.
                let mut tx = self.begin_write().await?;
                let stats = Self::replay_in(&mut *tx, sla, progress).await?;
                tx.commit().await?;
                Ok(stats)
            }

            async fn checkpoint(&self, name: &str) -> StoreResult<i64> {
                let row: Option<(i64,)> = sqlx::query_as(SQL_GET_CHECKPOINT)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map_or(0, |(value,)| value))
            }

            async fn set_checkpoint(&self, name: &str, value: i64) -> StoreResult<()> {
                sqlx::query(SQL_SET_CHECKPOINT)
                    .bind(name)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn sla_aggregates(
                &self,
                q: &report::HandoffReportQuery,
                sla: &SlaConfig,
            ) -> StoreResult<report::SlaAggregates> {
                // One statement per instant, each on its own connection.
                let totals = report::Instant::SLA.into_iter().map(|instant| async move {
                    let rows = self.report_totals(q.totals_sql(instant, sla)).await?;
                    rows.into_iter()
                        .map(|r| report::decode_totals(instant, r))
                        .collect::<StoreResult<Vec<_>>>()
                });
                let totals = futures::future::try_join_all(totals).await?;
                Ok(report::SlaAggregates {
                    totals: totals.into_iter().flatten().collect(),
                })
            }

            async fn disposition_aggregates(
                &self,
                q: &report::HandoffReportQuery,
            ) -> StoreResult<Vec<report::DispositionTotals>> {
                let rows = self
                    .report_totals(q.totals_sql(report::Instant::Disposition, &SlaConfig::default()))
                    .await?;
                Ok(rows.into_iter().map(report::decode_dispositions).collect())
            }

            async fn conversations_of(&self, ids: &[Uuid]) -> StoreResult<Vec<(Uuid, Conversation)>> {
                let mut survivor: HashMap<Uuid, Uuid> = HashMap::new();
                for (absorbed, into) in self.fetch_in::<(String, String)>(ids, aliases_sql).await? {
                    survivor.insert(codec::parse_uuid(&absorbed)?, codec::parse_uuid(&into)?);
                }
                let resolve = |id: &Uuid| *survivor.get(id).unwrap_or(id);
                let resolved: Vec<Uuid> = ids.iter().map(resolve).collect::<BTreeSet<_>>().into_iter().collect();
                let docs: Vec<(String, String)> = self
                    .fetch_in(&resolved, |ids| format!("SELECT id, doc FROM conversations WHERE id {ids}"))
                    .await?;
                let mut by_id = HashMap::with_capacity(docs.len());
                for (id, doc) in docs {
                    by_id.insert(codec::parse_uuid(&id)?, codec::from_json::<Conversation>("conversation", &doc)?);
                }
                // Each conversation moves to the last id asking for it; ids asking for the same one before
                // it (merged ids) get a copy.
                let mut askers: HashMap<Uuid, usize> = HashMap::with_capacity(ids.len());
                for id in ids {
                    *askers.entry(resolve(id)).or_default() += 1;
                }
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let key = resolve(id);
                    let Some(left) = askers.get_mut(&key) else { continue };
                    *left -= 1;
                    let conversation = if *left == 0 {
                        by_id.remove(&key)
                    } else {
                        by_id.get(&key).cloned()
                    };
                    if let Some(c) = conversation {
                        out.push((*id, c));
                    }
                }
                Ok(out)
            }

            async fn transcript_lines_of(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Vec<TranscriptLine>>> {
                let texts: Vec<(Option<String>,)> = self.fetch_in(ids, codec::transcript_lines_sql).await?;
                let mut out: HashMap<Uuid, Vec<TranscriptLine>> = HashMap::new();
                for (text,) in texts {
                    for (id, line) in codec::decode_transcript_lines(text.as_deref())? {
                        out.entry(id).or_default().push(line);
                    }
                }
                Ok(out)
            }

            async fn log_entries_after(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<LogEntry>> {
                let (text,): (Option<String>,) = sqlx::query_as(&codec::log_entries_sql())
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_one(&self.pool)
                    .await?;
                let mut entries = codec::decode_log_entries(text.as_deref())?;
                if let Some(last) = entries.last().map(|e| e.seq) {
                    let payloads: Vec<(i64, String)> = sqlx::query_as(&codec::erasure_payloads_sql())
                        .bind(after_seq)
                        .bind(last)
                        .fetch_all(&self.pool)
                        .await?;
                    for (seq, payload) in payloads {
                        if let Ok(i) = entries.binary_search_by_key(&seq, |e| e.seq) {
                            entries[i].erasure = Some(codec::from_json("payload", &payload)?);
                        }
                    }
                }
                Ok(entries)
            }

            async fn first_seqs_of(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, i64>> {
                let rows: Vec<(String, i64)> = self
                    .fetch_in(ids, |ids| {
                        format!(
                            "SELECT conversation_id, MIN(first_seq) FROM streams WHERE conversation_id {ids} \
                             GROUP BY conversation_id"
                        )
                    })
                    .await?;
                rows.iter()
                    .map(|(id, first)| Ok((codec::parse_uuid(id)?, *first)))
                    .collect()
            }
        }

        impl $name {
            /// [`Self::rows_in`] on a connection of the pool.
            async fn fetch_in<R>(&self, ids: &[Uuid], sql: impl Fn(InList) -> String) -> StoreResult<Vec<R>>
            where
                R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                let mut conn = self.pool.acquire().await?;
                Self::rows_in(&mut *conn, ids, sql).await
            }

            /// Runs one of `store::report`'s totals statements.
            async fn report_totals(&self, (sql, binds): report::Statement) -> StoreResult<Vec<report::TotalsRow>> {
                let mut query = sqlx::query_as::<_, report::TotalsRow>(&sql);
                for bind in binds {
                    query = match bind {
                        Bind::Text(v) => query.bind(v),
                        Bind::Int(v) => query.bind(v),
                        Bind::OptText(v) => query.bind(v),
                        Bind::OptInt(v) => query.bind(v),
                        Bind::OptFloat(v) => query.bind(v),
                    };
                }
                Ok(query.fetch_all(&self.pool).await?)
            }
        }
    };
}

// SQLite: take the write lock up front (IMMEDIATE), so a batch never fails half-way on a lock
// upgrade when another connection (a checkpoint, a quarantine) wrote since its first read.
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    begin = "BEGIN IMMEDIATE",
    // A deferred transaction's first read fixes its snapshot (WAL): an online replay's reads agree.
    snapshot = "BEGIN",
    migrator = sqlx::migrate!("./migrations/sqlite")
);

// PostgreSQL: appends from other instances on the same database wait instead of racing for `seq`;
// readers are not blocked (EXCLUSIVE still allows ACCESS SHARE).
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    // One round trip: the lock is taken by the statement that opens the transaction.
    begin = "BEGIN; LOCK TABLE events IN EXCLUSIVE MODE",
    snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    migrator = sqlx::migrate!("./migrations/postgres")
);

chained_store!(SqliteStore, sqlx::Sqlite);
chained_store!(PostgresStore, sqlx::Postgres);
erasing_store!(SqliteStore, sqlx::Sqlite);
erasing_store!(PostgresStore, sqlx::Postgres);

/// Turns SQLite's memory statistics off for the process (`SQLITE_CONFIG_MEMSTATUS`), once, before its
/// first connection opens. With them on (SQLite's default), every allocation and free SQLite makes takes
/// one process-wide mutex to count bytes nobody reads here: `perf` put that mutex at ~9 % of the writer's
/// SQLite thread (parsing a multi-row insert allocates per value). Only the counters are lost
/// (`sqlite3_memory_used` reads 0); a call after SQLite has started changes nothing (it answers
/// `SQLITE_MISUSE`), so a process that opened SQLite otherwise first keeps the default.
pub(crate) fn sqlite_without_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` with `SQLITE_CONFIG_MEMSTATUS` takes one `int`; SQLite refuses it
        // (SQLITE_MISUSE, no effect) once initialised, and `Once` keeps two threads from racing here.
        let rc =
            unsafe { libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int) };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(rc, "SQLite had started already: its memory statistics stay on");
        }
    });
}

/// The writer's pool: one connection, opened at once and never retired for idleness or age (the single
/// writer uses it for every batch; a fresh connection would start with a cold page cache and no prepared
/// statements). A connection that fails is replaced on the next batch.
fn writer_pool<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
}

impl SqliteStore {
    /// Opens (creating when missing, with its directory) the SQLite file a `sqlite://relative/path`
    /// or `sqlite:///absolute/path` URL names. WAL with `synchronous = FULL`: an acknowledged
    /// webhook survives a power cut. Its writes run on its pool (and checkpoint as SQLite does by
    /// default); the service's writer opens its store with [`SqliteStore::connect_writer`].
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = Self::options(url)?;
        Ok(Self::from_pool(Self::pool_of(options, max_connections).await?))
    }

    /// [`SqliteStore::connect`] for the single writer: its transactions run on one connection kept open
    /// that keeps up to 64 MiB of pages (SQLite's default is 2 MiB), so its B-tree leaves stay in memory
    /// instead of being read back from the OS on every batch; keeps its statement journals in memory (a
    /// multi-row insert inside the batch's transaction otherwise spills one to a temporary file: as many
    /// bytes written as the write-ahead log itself); and does not checkpoint in its commits (a checkpoint
    /// there delays every webhook of the batch that crossed the threshold): a task on a connection of its
    /// own does, beside it ([`checkpoint_wal`]). Readers keep SQLite's defaults (their report statements
    /// sort faster with them).
    pub async fn connect_writer(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = Self::options(url)?;
        let pool = Self::pool_of(options.clone(), max_connections).await?;
        let writer = writer_pool::<sqlx::Sqlite>()
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", "-65536")
                    .pragma("temp_store", "memory")
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await?;
        let checkpointer = writer_pool::<sqlx::Sqlite>()
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let (wake, written) = tokio::sync::watch::channel(());
        let checkpoints = WalCheckpoints {
            wake,
            restart_due: Default::default(),
            writer: writer.clone(),
        };
        tokio::spawn(checkpoint_wal(checkpointer, written, checkpoints.restart_due.clone()));
        let mut store = Self::from_pool(pool).with_writer(writer);
        store.checkpoints = Some(checkpoints);
        Ok(store)
    }

    /// The connection options of the file `url` names (its directory created).
    fn options(url: &str) -> StoreResult<sqlx::sqlite::SqliteConnectOptions> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        sqlite_without_memory_statistics();
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
            }
        }
        Ok(options)
    }

    async fn pool_of(
        options: sqlx::sqlite::SqliteConnectOptions,
        max_connections: u32,
    ) -> StoreResult<sqlx::Pool<sqlx::Sqlite>> {
        // A local file does not go away between statements: no test query before every acquire.
        Ok(sqlx::sqlite::SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?)
    }
}

/// Where a batch's time went, logged per batch at `debug` on target `ledger::batch` (off by default):
/// opening its transaction (on SQLite: a restart of the log when due), its statements, its commit.
struct BatchTiming {
    started: std::time::Instant,
    begun: Duration,
    appended: Duration,
}

impl BatchTiming {
    fn start() -> Self {
        Self {
            started: std::time::Instant::now(),
            begun: Duration::ZERO,
            appended: Duration::ZERO,
        }
    }

    fn begun(mut self) -> Self {
        self.begun = self.started.elapsed();
        self
    }

    fn appended(mut self) -> Self {
        self.appended = self.started.elapsed();
        self
    }

    fn committed(self, deliveries: usize) {
        let done = self.started.elapsed();
        tracing::debug!(
            target: "ledger::batch",
            deliveries,
            begin_us = self.begun.as_micros() as u64,
            statements_us = (self.appended - self.begun).as_micros() as u64,
            commit_us = (done - self.appended).as_micros() as u64,
            "batch committed"
        );
    }
}

/// The writer's side of SQLite's checkpoints: wakes the checkpointer ([`checkpoint_wal`]) and restarts
/// the log when it asked for that.
#[derive(Clone)]
struct WalCheckpoints {
    wake: tokio::sync::watch::Sender<()>,
    /// Set by the checkpointer when the log has grown past [`WAL_RESTART_FRAMES`].
    restart_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: sqlx::Pool<sqlx::Sqlite>,
}

impl WalCheckpoints {
    /// Before each write transaction (the previous one has committed).
    async fn before_write(&self) {
        if self.restart_due.swap(false, std::sync::atomic::Ordering::Relaxed) {
            restart_wal(&self.writer, &self.restart_due).await;
        }
        self.wake.send_replace(());
    }
}

/// Least time between two checkpoints: pages the writer changes again meanwhile are copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Frames the write-ahead log may hold (~64 MiB) before the writer restarts it. A passive checkpoint
/// never blocks the writer, but the log starts again from its beginning only when a write begins after
/// every frame was copied back, which under constant writes never happens: the log would only grow.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// Checkpoints the write-ahead log after writes, at most every [`CHECKPOINT_EVERY`], on a connection of
/// its own, passively (copies what is committed, blocks nobody); when the log has grown past
/// [`WAL_RESTART_FRAMES`] it asks the writer to restart it (`restart`). Ends when the store that writes
/// is dropped.
async fn checkpoint_wal(
    pool: sqlx::Pool<sqlx::Sqlite>,
    mut written: tokio::sync::watch::Receiver<()>,
    restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    while written.changed().await.is_ok() {
        // (busy, frames in the log, frames copied back)
        let started = std::time::Instant::now();
        let passive: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await;
        match passive {
            Ok((_, frames, copied)) => {
                let us = started.elapsed().as_micros() as u64;
                tracing::debug!(target: "ledger::checkpoint", frames, copied, us, "passive checkpoint");
                if frames > WAL_RESTART_FRAMES {
                    restart.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpointing the write-ahead log failed; the next write tries again")
            }
        }
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
}

/// Restarts the write-ahead log from the writer's connection between two transactions: copies back what
/// the passive checkpoints have not yet (little) and, when no reader still reads from the log, lets the
/// next transaction write it from its beginning. Waits at most 50 ms for readers (an export or a replay
/// may hold a snapshot for long); when they are still there, `due` is set again and a later batch retries.
async fn restart_wal(writer: &sqlx::Pool<sqlx::Sqlite>, due: &std::sync::atomic::AtomicBool) {
    let started = std::time::Instant::now();
    let restarted: Result<(i64, i64, i64), sqlx::Error> = async {
        let mut conn = writer.acquire().await?;
        sqlx::query("PRAGMA busy_timeout = 50").execute(&mut *conn).await?;
        let outcome = sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await;
        sqlx::query("PRAGMA busy_timeout = 30000").execute(&mut *conn).await?;
        outcome
    }
    .await;
    let us = started.elapsed().as_micros() as u64;
    tracing::debug!(target: "ledger::checkpoint", outcome = ?restarted, us, "log restarted");
    match restarted {
        Ok((0, _, _)) => {}
        Ok(_) => due.store(true, std::sync::atomic::Ordering::Relaxed),
        Err(e) => {
            due.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "restarting the write-ahead log failed; the next batch tries again");
        }
    }
}

/// The PostgreSQL writer's session settings ([`PostgresStore::connect_writer`]): planner settings only
/// (durability is the server's: every commit waits for its flush as configured there).
const WRITER_SESSION: [(&str, &str); 4] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

impl PostgresStore {
    /// Connects a pool to the database a `postgres://` URL names.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(url)
            .await?;
        Ok(Self::from_pool(pool))
    }

    /// [`PostgresStore::connect`] for the single writer: its transactions run on one connection kept open
    /// (its prepared statements stay with it). That connection plans each prepared statement once and keeps
    /// the plan ([`WRITER_SESSION`]: its statements keep their text whatever a batch's size, arrays, so
    /// planning every execution was ~15 % of the backend's CPU), and it plans without sequential scans, hash
    /// or merge joins: every statement the writer runs reads its rows through an index, by the ids a batch
    /// names, so such a plan stays right however large the tables grow, while a plan made while a table was
    /// small (a new database fills fast, and statistics follow a minute later) with a scan of a whole table
    /// would keep scanning it once it is large.
    pub async fn connect_writer(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?.options(WRITER_SESSION);
        let writer = writer_pool::<sqlx::Postgres>().connect_with(options).await?;
        Ok(Self::connect(url, max_connections).await?.with_writer(writer))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::model::{Disposition, HandoffState, Platform, SlaStatus};

    /// What a log line captured in a test wrote.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_logs_where_its_time_went_at_debug() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info,ledger::batch=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || BatchTiming::start().begun().appended().committed(3));
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        for field in [
            "batch committed",
            "deliveries=3",
            "begin_us=",
            "statements_us=",
            "commit_us=",
        ] {
            assert!(out.contains(field), "{field} missing from {out}");
        }
        // Off at the default level.
        let quiet = Captured::default();
        let writer = quiet.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || BatchTiming::start().begun().appended().committed(3));
        assert!(quiet.0.lock().unwrap().is_empty());
    }

    /// A batch's writes: a delete, three inserts, a delete, an insert (each of `rows` rows).
    fn sample_writes(rows: usize) -> Vec<Write> {
        let mut w = Writes::default();
        w.delete_in("t", "a", &[Uuid::nil()]);
        let pairs = (0..rows)
            .map(|i| vec![Bind::Int(i as i64), Bind::OptText(None)])
            .collect();
        w.insert("t", &["a", "b"], pairs, "");
        w.insert(
            "u",
            &["c"],
            vec![vec![Bind::OptFloat(Some(1.5))]; rows],
            "ON CONFLICT (c) DO NOTHING",
        );
        w.insert("v", &["d"], vec![vec![Bind::Text("x".into())]; rows], "");
        w.delete_in("t", "a", &[Uuid::nil(), Uuid::max()]);
        w.insert("w", &["e"], vec![vec![Bind::OptInt(Some(5))]; rows], "");
        w.writes
    }

    #[test]
    fn replay_chunks_cut_each_chunk_in_parts_of_about_as_many_events() {
        let conversations: Vec<(Uuid, u64)> = (0..2_500u128)
            .map(|i| (Uuid::from_u128(i), 1 + (i % 7) as u64))
            .collect();
        let chunks = replay_chunks(&conversations, 2);
        let ids: Vec<Uuid> = chunks.iter().flatten().flatten().copied().collect();
        assert_eq!(ids, conversations.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        let events: HashMap<Uuid, u64> = conversations.iter().copied().collect();
        for chunk in &chunks {
            assert!(chunk.len() <= 2 && !chunk.iter().any(Vec::is_empty));
            let sums: Vec<u64> = chunk.iter().map(|p| p.iter().map(|id| events[id]).sum()).collect();
            assert!(sums.iter().sum::<u64>() <= REPLAY_EVENTS);
            assert!(chunk.iter().map(Vec::len).sum::<usize>() <= REPLAY_CONVERSATIONS);
            if let [a, b] = sums[..] {
                assert!(a.abs_diff(b) <= 14, "{sums:?}");
            }
        }
        // One long conversation is a chunk of its own, in one part.
        let long = [(Uuid::from_u128(1), 50_000), (Uuid::from_u128(2), 3)];
        assert_eq!(
            replay_chunks(&long, 2),
            vec![vec![vec![Uuid::from_u128(1)]], vec![vec![Uuid::from_u128(2)]]]
        );
    }

    #[test]
    fn replay_takes_conversations_in_the_order_of_their_first_event() {
        let stream = |x: &str| codec::stream_key("aivo_live", x.to_string()).unwrap();
        let mut refiling = Refiling::default();
        // Streams first seen at seqs 1, 2, 3 (their conversation ids in another order), then more events.
        for (seq, x) in [(1, "c"), (2, "a"), (3, "b"), (4, "a"), (5, "c"), (6, "a")] {
            refiling.file_event(seq, seq * 10, &stream(x), &[]);
        }
        let own = |x: &str| codec::own_conversation_id(&stream(x)).0;
        assert_eq!(
            refiling.conversations(),
            vec![(own("c"), 2), (own("a"), 3), (own("b"), 1)]
        );
    }

    #[test]
    fn postgres_runs_of_inserts_become_one_statement_of_arrays_whatever_their_rows() {
        let statements = |rows: usize| -> Vec<String> {
            <sqlx::Postgres as Dialect>::write_statements(sample_writes(rows))
                .unwrap()
                .into_iter()
                .map(|(sql, _)| sql)
                .collect()
        };
        assert_eq!(
            statements(1),
            vec![
                "DELETE FROM t WHERE a = ANY($1)".to_string(),
                "WITH w0 AS (INSERT INTO t (a, b) SELECT * FROM UNNEST($1::int8[], $2::text[])), \
                 w1 AS (INSERT INTO u (c) SELECT * FROM UNNEST($3::float8[]) ON CONFLICT (c) DO NOTHING) \
                 INSERT INTO v (d) SELECT * FROM UNNEST($4::text[])"
                    .to_string(),
                "DELETE FROM t WHERE a = ANY($1)".to_string(),
                "INSERT INTO w (e) SELECT * FROM UNNEST($1::int8[])".to_string(),
            ]
        );
        // The same text for 1,000 rows (past the bind limit of the multi-row form): prepared once.
        assert_eq!(statements(1_000), statements(1));
        assert_eq!(statements(codec::MAX_BINDS), statements(1));
        // Nothing to insert: no statement.
        assert_eq!(
            statements(0),
            vec!["DELETE FROM t WHERE a = ANY($1)", "DELETE FROM t WHERE a = ANY($1)"]
        );
    }

    #[test]
    fn sqlite_writes_are_one_call_with_plain_placeholders() {
        let statements = <sqlx::Sqlite as Dialect>::write_statements(sample_writes(2)).unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(
            statements[0].0,
            "DELETE FROM t WHERE a IN (?);\n\
             INSERT INTO t (a, b) VALUES (?, ?), (?, ?);\n\
             INSERT INTO u (c) VALUES (?), (?) ON CONFLICT (c) DO NOTHING;\n\
             INSERT INTO v (d) VALUES (?), (?);\n\
             DELETE FROM t WHERE a IN (?, ?);\n\
             INSERT INTO w (e) VALUES (?), (?)"
        );
        // Past the bind limit an insert is split.
        let big = <sqlx::Sqlite as Dialect>::write_statements(sample_writes(codec::MAX_BINDS)).unwrap();
        assert_eq!(big[0].0.matches("INSERT INTO t ").count(), 2);
    }

    #[test]
    fn lists_are_placeholders_on_sqlite_and_one_array_on_postgres() {
        let sqlite = <sqlx::Sqlite as Dialect>::list(1, 3);
        assert_eq!(folds_and_streams_sql(sqlite).matches("IN ($1, $2, $3)").count(), 1);
        assert_eq!(folds_and_streams_sql(sqlite).matches("IN ($4, $5, $6)").count(), 1);
        let postgres = <sqlx::Postgres as Dialect>::list(1, 3);
        assert_eq!(postgres, <sqlx::Postgres as Dialect>::list(1, 500));
        assert_eq!(folds_and_streams_sql(postgres).matches("= ANY($1)").count(), 1);
        assert_eq!(folds_and_streams_sql(postgres).matches("= ANY($2)").count(), 1);
    }

    #[test]
    fn sqlite_inserts_bind_plain_placeholders_in_order() {
        let sql = codec::insert_sql("t", &["a", "b"], 6, "ON CONFLICT (a) DO UPDATE SET b = excluded.b");
        assert_eq!(
            anonymous_placeholders(&sql),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?), (?, ?), (?, ?), (?, ?) \
             ON CONFLICT (a) DO UPDATE SET b = excluded.b"
        );
        assert_eq!(anonymous_placeholders("SELECT '$' || $12"), "SELECT '$' || ?");
        for (rows, suffix) in [(1, ""), (6, "ON CONFLICT (a) DO UPDATE SET b = excluded.b"), (40, "")] {
            assert_eq!(
                anonymous_insert_sql("t", &["a", "b", "c"], rows, suffix),
                anonymous_placeholders(&codec::insert_sql("t", &["a", "b", "c"], rows, suffix))
            );
        }
    }

    /// SQLite's plan of a list query: every table is reached through an index (a full scan of the
    /// conversations would grow with the table); only the page-sized subqueries of `breached` are scanned.
    #[tokio::test]
    async fn every_list_filter_is_served_by_an_index() {
        let store = SqliteStore::connect("sqlite::memory:", 1).await.unwrap();
        store.migrate().await.unwrap();
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0);
        let base = ConversationFilter {
            limit: 50,
            now,
            ..ConversationFilter::default()
        };
        let text = |v: &str| Some(v.to_string());
        let filters = [
            ConversationFilter { ..base.clone() },
            ConversationFilter {
                platform: Some(Platform::AivoLive),
                ..base.clone()
            },
            ConversationFilter {
                external_id: text("room-1"),
                ..base.clone()
            },
            ConversationFilter {
                platform: Some(Platform::AivoLive),
                external_id: text("room-1"),
                ..base.clone()
            },
            ConversationFilter {
                state: Some(HandoffState::Closed),
                ..base.clone()
            },
            ConversationFilter {
                disposition: Some(Disposition::Abandoned),
                ..base.clone()
            },
            ConversationFilter {
                sla_status: Some(SlaStatus::Met),
                ..base.clone()
            },
            ConversationFilter {
                sla_status: Some(SlaStatus::Pending),
                ..base.clone()
            },
            ConversationFilter {
                sla_status: Some(SlaStatus::Breached),
                ..base.clone()
            },
            ConversationFilter {
                queue: text("2179"),
                ..base.clone()
            },
            ConversationFilter {
                agent: text("Tomas"),
                after: Some((5, Uuid::nil())),
                ..base.clone()
            },
            ConversationFilter {
                since: now,
                until: now,
                ..base.clone()
            },
        ];
        for filter in filters {
            let (sql, binds) = codec::list_conversations_query(&filter);
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
            for bind in binds {
                query = match bind {
                    Bind::Text(v) => query.bind(v),
                    Bind::Int(v) => query.bind(v),
                    Bind::OptText(v) => query.bind(v),
                    Bind::OptInt(v) => query.bind(v),
                    Bind::OptFloat(v) => query.bind(v),
                };
            }
            let plan: Vec<String> = query
                .fetch_all(store.pool())
                .await
                .unwrap()
                .into_iter()
                .map(|row| row.3)
                .collect();
            for step in &plan {
                let full_scan = step.starts_with("SCAN ")
                    && !step.contains("INDEX")
                    && !["SCAN b", "SCAN p"].contains(&step.as_str());
                assert!(!full_scan, "{filter:?}: {step} in {plan:?}");
            }
        }
    }

    /// SQLite's plan of `sql` on a migrated empty database, `ids` random ids bound: one line per step.
    async fn sqlite_plan(sql: &str, ids: usize) -> Vec<String> {
        let store = SqliteStore::connect("sqlite::memory:", 1).await.unwrap();
        store.migrate().await.unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for _ in 0..ids {
            query = query.bind(Uuid::new_v4().to_string());
        }
        query
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.3)
            .collect()
    }

    /// The relay planner's lookup of a conversation's latest queue call (once per relayed delivery, in
    /// the append transaction) reads the conversation's streams and, per stream, the partial index of
    /// queue calls: nothing that grows with the log.
    #[tokio::test]
    async fn the_latest_queue_call_is_found_through_indexes() {
        let plan = sqlite_plan(&latest_queue_calls_sql(<sqlx::Sqlite as Dialect>::list(1, 2)), 2).await;
        assert!(plan.iter().all(|step| !step.starts_with("SCAN ")), "{plan:?}");
        assert!(plan.iter().any(|step| step.contains("events_queue_calls")), "{plan:?}");
    }

    /// The planner's read of a conversation's attends (when a queue call's link leaves it attended) reads
    /// its streams and, per stream, the partial index of attends.
    #[tokio::test]
    async fn the_attends_are_found_through_indexes() {
        let plan = sqlite_plan(&attends_sql(), 1).await;
        assert!(plan.iter().all(|step| !step.starts_with("SCAN ")), "{plan:?}");
        assert!(plan.iter().any(|step| step.contains("events_attends")), "{plan:?}");
    }

    /// A fresh PostgreSQL database on `LEDGER_TEST_PG_URL` (default the local server, as the store tests),
    /// migrated; dropped with the value.
    struct PgDatabase {
        admin: String,
        name: String,
        url: String,
    }

    impl PgDatabase {
        async fn new() -> Self {
            use sqlx::Connection as _;
            let admin = std::env::var("LEDGER_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("ledger_test_{}", Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .unwrap();
            let url = match admin.rsplit_once('/') {
                Some((server, _)) => format!("{server}/{name}"),
                None => panic!("no database in {admin}"),
            };
            let db = Self { admin, name, url };
            PostgresStore::connect(&db.url, 1)
                .await
                .unwrap()
                .migrate()
                .await
                .unwrap();
            db
        }
    }

    impl Drop for PgDatabase {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use sqlx::Connection as _;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
                    }
                });
            })
            .join();
        }
    }

    /// The statements a PostgreSQL batch reads with keep the plan made at their first execution, on
    /// tables as small as a new database's: that plan must read every table through an index, or it
    /// would scan whole tables once they are large.
    #[tokio::test]
    async fn the_postgres_writers_kept_plans_read_through_indexes() {
        use sqlx::Connection as _;
        let db = PgDatabase::new().await;
        let options = sqlx::postgres::PgConnectOptions::from_str(&db.url)
            .unwrap()
            .options(WRITER_SESSION);
        let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
        let list = <sqlx::Postgres as Dialect>::list(1, 3);
        let mut args = sqlx::postgres::PgArguments::default();
        let named = <sqlx::Postgres as Dialect>::streams_named(list.next(), &[], &mut args).unwrap();
        let first = <sqlx::Postgres as Dialect>::streams_named(1, &[], &mut args).unwrap();
        // Each statement with its number of arrays of text.
        let statements = [
            (batch_reads_with_folds_sql(list, &named, list.next() + 2), 4),
            (batch_reads_sql(list, &named), 3),
            (folds_and_streams_sql(list), 2),
            (known_events_sql(list), 1),
            (stream_conversations_sql(&first), 2),
            (aliases_sql(list), 1),
            (event_ids_sql(list), 1),
            (streams_of_sql(list), 1),
            (events_of_sql(list), 1),
            (latest_queue_calls_sql(list), 1),
        ];
        for (i, (sql, arrays)) in statements.iter().enumerate() {
            let types = vec!["text[]"; *arrays].join(", ");
            sqlx::raw_sql(&format!("PREPARE w{i} ({types}) AS {sql}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let values = vec!["'{a,b,c}'"; *arrays].join(", ");
            let plan: Vec<(String,)> = sqlx::query_as(&format!("EXPLAIN EXECUTE w{i} ({values})"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
            assert!(
                plan.iter().all(|line| !line.contains("Seq Scan")),
                "{sql}\n{}",
                plan.join("\n")
            );
        }
    }

    /// A PostgreSQL batch takes the fold states and streams of the conversations it extends or starts from
    /// its first read: the later read of them is never made (never prepared on the writer's connection).
    #[tokio::test]
    async fn a_postgres_batch_reads_the_folds_it_extends_in_its_first_read() {
        let db = PgDatabase::new().await;
        let store = PostgresStore::connect_writer(&db.url, 1).await.unwrap();
        let at = |s: i64| DateTime::<Utc>::from_timestamp(1_706_000_000 + s, 0).unwrap_or_default();
        let event = |room: &str, key: &str, s: i64| NewEvent {
            event_id: crate::model::event_id_for(Platform::Ultimate, Some(key)),
            stream: StreamKey::new(Platform::Ultimate, room),
            kind: "ultimate.test_event".to_string(),
            occurred_at: at(s),
            platform_at: None,
            received_at: at(s),
            payload: format!("{{\"key\":\"{key}\"}}"),
            headers: BTreeMap::new(),
            links: Vec::new(),
        };
        let sla = SlaConfig::default();
        // A new conversation, then it and another new one extended.
        store.append_batch(&[vec![event("r1", "a", 1)]], &sla).await.unwrap();
        let second = store
            .append_batch(&[vec![event("r1", "b", 2), event("r2", "c", 3)]], &sla)
            .await
            .unwrap();
        let prepared: Vec<(String,)> = sqlx::query_as("SELECT statement FROM pg_prepared_statements")
            .fetch_all(&store.writer)
            .await
            .unwrap();
        let list = <sqlx::Postgres as Dialect>::list(1, 1);
        assert!(prepared.iter().any(|(sql,)| sql.contains("'held'")), "{prepared:?}");
        assert!(
            prepared.iter().all(|(sql,)| sql != &folds_and_streams_sql(list)),
            "{prepared:?}"
        );
        // And what they projected is what a replay builds from the log.
        let r1 = second[0][0].conversation_id.unwrap();
        let before = store.get_conversation(r1).await.unwrap().unwrap();
        // Started by the first batch: the second extended the fold it kept.
        assert_eq!(before.started_at, at(1));
        store.replay(&sla, &|_, _| {}).await.unwrap();
        assert_eq!(store.get_conversation(r1).await.unwrap().unwrap(), before);
    }
}
