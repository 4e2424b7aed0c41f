//! The SQL backends. One implementation of the store's logic, expanded by `sql_store!` for SQLite
//! and for PostgreSQL. Every statement is a constant below, the same text on both backends (`$n`
//! placeholders, `ON CONFLICT`, `RETURNING`, portable column types); only the migrations, the way a
//! write transaction is opened, and connecting differ.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::chained::{self, chained_store};
use super::codec::{self, Bind, EventRow, QuarantineRow, EVENT_COLUMNS};
use super::erasing::{self, erasing_store};
use super::{ConversationFilter, ConversationPage, ReplayStats, Store, StoreError, StoreResult};
use crate::chain::{self, ChainHead, ChainLink, ChainRow};
use crate::config::SlaConfig;
use crate::model::{
    AppendOutcome, Conversation, Message, NewEvent, NewQuarantine, QuarantineEntry, Redrive, StoredEvent, StreamKey,
};
use crate::projection;

/// Events read per round trip while replaying the log.
const REPLAY_CHUNK: i64 = 1_000;

const SQL_LAST_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM events";
const SQL_INSERT_EVENT: &str = "INSERT INTO events \
     (seq, event_id, platform, external_id, kind, occurred_at, received_at, payload, headers, links, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const SQL_STREAM_CONVERSATION: &str = "SELECT conversation_id FROM streams WHERE platform = $1 AND external_id = $2";
const SQL_INSERT_STREAM: &str =
    "INSERT INTO streams (platform, external_id, conversation_id, first_seq) VALUES ($1, $2, $3, $4)";
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
const SQL_DELETE_CONVERSATION: &str = "DELETE FROM conversations WHERE id = $1";
const SQL_UPSERT_CONVERSATION: &str = "INSERT INTO conversations \
     (id, state, disposition, sla_status, queue, agents, started_at, updated_at, last_seq, doc, transcript, \
     sla_deadline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (id) DO UPDATE SET state = excluded.state, disposition = excluded.disposition, \
     sla_status = excluded.sla_status, sla_deadline = excluded.sla_deadline, queue = excluded.queue, agents = excluded.agents, \
     started_at = excluded.started_at, updated_at = excluded.updated_at, last_seq = excluded.last_seq, \
     doc = excluded.doc, transcript = excluded.transcript";
// `$1` resolved through the aliases in the same statement.
const SQL_GET_CONVERSATION: &str = "SELECT doc FROM conversations WHERE id = \
     COALESCE((SELECT a.survivor_id FROM aliases a WHERE a.absorbed_id = $1), $1)";
const SQL_GET_TRANSCRIPT: &str = "SELECT id, transcript FROM conversations WHERE id = \
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
const SQL_CLEAR_PROJECTIONS: [&str; 3] = [
    "DELETE FROM conversations",
    "DELETE FROM aliases",
    "DELETE FROM streams",
];

fn conversation_events_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE s.conversation_id = $1 ORDER BY e.seq"
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

fn events_by_id_sql(n: usize) -> String {
    format!(
        "SELECT event_id, seq, platform, external_id FROM events WHERE event_id IN ({})",
        placeholders(1, n)
    )
}

fn aliases_sql(n: usize) -> String {
    format!(
        "SELECT absorbed_id, survivor_id FROM aliases WHERE absorbed_id IN ({})",
        placeholders(1, n)
    )
}

fn streams_of_sql(n: usize) -> String {
    format!(
        "SELECT conversation_id, platform, external_id FROM streams WHERE conversation_id IN ({}) \
         ORDER BY conversation_id, first_seq, platform, external_id",
        placeholders(1, n)
    )
}

fn events_of_sql(n: usize) -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE s.conversation_id IN ({}) ORDER BY e.seq",
        placeholders(1, n)
    )
}

fn stream_conversations_sql(n: usize) -> String {
    let pairs = (0..n)
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT platform, external_id, conversation_id FROM streams WHERE (platform, external_id) IN ({pairs})")
}

/// An appended (or recognised) event waiting for its conversation to be known after the whole batch.
struct Pending {
    event_id: Uuid,
    seq: i64,
    duplicate: bool,
    stream: Option<StreamKey>,
}

macro_rules! sql_store {
    ($name:ident, $db:ty, begin = $begin:expr, lock = $lock:expr, migrator = $migrator:expr) => {
        /// The store on this backend: the event log and its projections.
        #[derive(Clone)]
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            /// Wraps an open pool (migrations are applied by [`Store::migrate`]).
            pub fn from_pool(pool: sqlx::Pool<$db>) -> Self {
                Self { pool }
            }

            /// The underlying pool, for tools and tests.
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            /// Opens the one write transaction a batch or a replay runs in.
            async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, $db>> {
                let mut tx = self.pool.begin_with($begin).await?;
                let lock: Option<&str> = $lock;
                if let Some(lock) = lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                Ok(tx)
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

            async fn stream_conversation(
                conn: &mut <$db as sqlx::Database>::Connection,
                stream: &StreamKey,
            ) -> StoreResult<Option<Uuid>> {
                let row: Option<(String,)> = sqlx::query_as(SQL_STREAM_CONVERSATION)
                    .bind(stream.platform.as_str())
                    .bind(&stream.external_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                row.map(|(id,)| codec::parse_uuid(&id)).transpose()
            }

            async fn insert_stream(
                conn: &mut <$db as sqlx::Database>::Connection,
                stream: &StreamKey,
                conversation: Uuid,
                seq: i64,
            ) -> StoreResult<()> {
                sqlx::query(SQL_INSERT_STREAM)
                    .bind(stream.platform.as_str())
                    .bind(&stream.external_id)
                    .bind(conversation.to_string())
                    .bind(seq)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn conversation_exists(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: Uuid,
            ) -> StoreResult<bool> {
                let row: Option<(String,)> = sqlx::query_as(SQL_CONVERSATION_HAS_STREAM)
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row.is_some())
            }

            /// The conversation a stream nobody has filed yet belongs to.
            async fn own_conversation(
                conn: &mut <$db as sqlx::Database>::Connection,
                stream: &StreamKey,
            ) -> StoreResult<Uuid> {
                match codec::own_conversation_id(stream) {
                    (id, true) => Self::resolve(conn, id).await,
                    (id, false) => Ok(id),
                }
            }

            /// Merges two conversations; returns the survivor.
            async fn merge(
                conn: &mut <$db as sqlx::Database>::Connection,
                a: Uuid,
                b: Uuid,
                seq: i64,
            ) -> StoreResult<Uuid> {
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
                sqlx::query(SQL_DELETE_CONVERSATION)
                    .bind(&absorbed_text)
                    .execute(&mut *conn)
                    .await?;
                tracing::debug!(%survivor, %absorbed, seq, "conversations merged");
                Ok(survivor)
            }

            /// Files the event at `seq` under its stream's conversation, creating it when the stream
            /// is new, and joins every stream it links, merging conversations that differ. The one
            /// routine behind both `append_batch` and `replay`, so they cannot disagree. Returns the
            /// conversation (None for an event with no stream).
            async fn file_event(
                conn: &mut <$db as sqlx::Database>::Connection,
                seq: i64,
                stream: &StreamKey,
                links: &[StreamKey],
            ) -> StoreResult<Option<Uuid>> {
                if stream.external_id.is_empty() {
                    return Ok(None);
                }
                let mut conversation = match Self::stream_conversation(conn, stream).await? {
                    Some(id) => id,
                    None => {
                        let id = Self::own_conversation(conn, stream).await?;
                        Self::insert_stream(conn, stream, id, seq).await?;
                        id
                    }
                };
                for link in links {
                    if link.external_id.is_empty() || link == stream {
                        continue;
                    }
                    match Self::stream_conversation(conn, link).await? {
                        Some(other) if other == conversation => {}
                        Some(other) => conversation = Self::merge(conn, conversation, other, seq).await?,
                        None => {
                            let own = Self::own_conversation(conn, link).await?;
                            if own != conversation && Self::conversation_exists(conn, own).await? {
                                // A service stream naming another live conversation: join the two.
                                Self::insert_stream(conn, link, own, seq).await?;
                                conversation = Self::merge(conn, conversation, own, seq).await?;
                            } else {
                                Self::insert_stream(conn, link, conversation, seq).await?;
                            }
                        }
                    }
                }
                Ok(Some(conversation))
            }

            async fn load_conversation_events(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: Uuid,
            ) -> StoreResult<Vec<StoredEvent>> {
                let rows: Vec<EventRow> = sqlx::query_as(&conversation_events_sql())
                    .bind(id.to_string())
                    .fetch_all(&mut *conn)
                    .await?;
                rows.into_iter().map(codec::decode_event).collect()
            }

            /// Projects one conversation and stores its row. Returns whether a row was written (the
            /// projection gives nothing for a conversation without events).
            async fn store_projection(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: Uuid,
                streams: &[StreamKey],
                events: &[StoredEvent],
                sla: &SlaConfig,
            ) -> StoreResult<bool> {
                let Some(projected) = projection::project(id, streams, events, sla) else {
                    return Ok(false);
                };
                let row = codec::conversation_row(&projected)?;
                sqlx::query(SQL_UPSERT_CONVERSATION)
                    .bind(id.to_string())
                    .bind(row.state)
                    .bind(row.disposition)
                    .bind(row.sla_status)
                    .bind(row.queue)
                    .bind(row.agents)
                    .bind(row.started_at)
                    .bind(row.updated_at)
                    .bind(row.last_seq)
                    .bind(row.doc)
                    .bind(row.transcript)
                    .bind(row.sla_deadline)
                    .execute(&mut *conn)
                    .await?;
                Ok(true)
            }

            async fn insert_event(
                conn: &mut <$db as sqlx::Database>::Connection,
                seq: i64,
                event: &NewEvent,
                hash: &str,
            ) -> StoreResult<()> {
                sqlx::query(SQL_INSERT_EVENT)
                    .bind(seq)
                    .bind(event.event_id.to_string())
                    .bind(event.stream.platform.as_str())
                    .bind(&event.stream.external_id)
                    .bind(&event.kind)
                    .bind(codec::to_micros(event.occurred_at))
                    .bind(codec::to_micros(event.received_at))
                    .bind(&event.payload)
                    .bind(codec::to_json("headers", &event.headers)?)
                    .bind(codec::to_json("links", &event.links)?)
                    .bind(hash)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            /// The stored `(seq, stream)` of every id of `ids` already in the log, in few round trips.
            async fn stored_events(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
            ) -> StoreResult<HashMap<Uuid, (i64, Option<StreamKey>)>> {
                let mut found = HashMap::new();
                for chunk in ids.chunks(IN_CHUNK) {
                    let sql = events_by_id_sql(chunk.len());
                    let mut query = sqlx::query_as::<_, (String, i64, String, String)>(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for (id, seq, platform, external_id) in query.fetch_all(&mut *conn).await? {
                        let stream = if external_id.is_empty() {
                            None
                        } else {
                            Some(codec::stream_key(&platform, external_id)?)
                        };
                        found.insert(codec::parse_uuid(&id)?, (seq, stream));
                    }
                }
                Ok(found)
            }

            /// Ids as they resolve after merges, in few round trips.
            async fn resolve_many(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &BTreeSet<Uuid>,
            ) -> StoreResult<BTreeSet<Uuid>> {
                let ids: Vec<Uuid> = ids.iter().copied().collect();
                let mut survivors: HashMap<Uuid, Uuid> = HashMap::new();
                for chunk in ids.chunks(IN_CHUNK) {
                    let sql = aliases_sql(chunk.len());
                    let mut query = sqlx::query_as::<_, (String, String)>(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for (absorbed, survivor) in query.fetch_all(&mut *conn).await? {
                        survivors.insert(codec::parse_uuid(&absorbed)?, codec::parse_uuid(&survivor)?);
                    }
                }
                Ok(ids.into_iter().map(|id| survivors.get(&id).copied().unwrap_or(id)).collect())
            }

            /// The conversation of each stream, in few round trips.
            async fn stream_conversations(
                conn: &mut <$db as sqlx::Database>::Connection,
                streams: &BTreeSet<StreamKey>,
            ) -> StoreResult<HashMap<StreamKey, Uuid>> {
                let streams: Vec<&StreamKey> = streams.iter().collect();
                let mut found = HashMap::new();
                for chunk in streams.chunks(IN_CHUNK / 2) {
                    let sql = stream_conversations_sql(chunk.len());
                    let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
                    for stream in chunk {
                        query = query.bind(stream.platform.as_str()).bind(stream.external_id.clone());
                    }
                    for (platform, external_id, id) in query.fetch_all(&mut *conn).await? {
                        found.insert(codec::stream_key(&platform, external_id)?, codec::parse_uuid(&id)?);
                    }
                }
                Ok(found)
            }

            /// Recomputes many conversations from their events: their streams and events are read in
            /// a few round trips, then each row is stored. Returns how many rows were written.
            async fn reproject_many(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[Uuid],
                sla: &SlaConfig,
            ) -> StoreResult<u64> {
                let mut written = 0;
                for chunk in ids.chunks(IN_CHUNK) {
                    let mut streams: HashMap<Uuid, Vec<StreamKey>> = HashMap::new();
                    let mut events: HashMap<Uuid, Vec<StoredEvent>> = HashMap::new();
                    let sql = streams_of_sql(chunk.len());
                    let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for (id, platform, external_id) in query.fetch_all(&mut *conn).await? {
                        streams
                            .entry(codec::parse_uuid(&id)?)
                            .or_default()
                            .push(codec::stream_key(&platform, external_id)?);
                    }
                    let sql = events_of_sql(chunk.len());
                    let mut query = sqlx::query_as::<_, EventRow>(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for row in query.fetch_all(&mut *conn).await? {
                        let event = codec::decode_event(row)?;
                        if let Some(id) = event.conversation_id {
                            events.entry(id).or_default().push(event);
                        }
                    }
                    for id in chunk {
                        let streams = streams.remove(id).unwrap_or_default();
                        let events = events.remove(id).unwrap_or_default();
                        if Self::store_projection(conn, *id, &streams, &events, sla).await? {
                            written += 1;
                        }
                    }
                }
                Ok(written)
            }

            async fn append_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                groups: &[Vec<NewEvent>],
                sla: &SlaConfig,
            ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                // Read once: this is the only writer, so the batch's seqs follow without gaps.
                let mut next = Self::last_seq_in(conn).await? + 1;
                // Chained here, by the only writer, so each hash follows its predecessor's.
                let mut prev = Self::prev_hash_in(conn).await?;
                let ids: Vec<Uuid> = groups.iter().flatten().map(|e| e.event_id).collect();
                // Ids already stored; events appended below join it, so duplicates inside the batch are seen too.
                let mut known = Self::stored_events(conn, &ids).await?;
                let mut touched = BTreeSet::new();
                let mut pending: Vec<Vec<Pending>> = Vec::with_capacity(groups.len());
                for group in groups {
                    let mut filed = Vec::with_capacity(group.len());
                    for event in group {
                        if let Some((seq, stream)) = known.get(&event.event_id) {
                            filed.push(Pending {
                                event_id: event.event_id,
                                seq: *seq,
                                duplicate: true,
                                stream: stream.clone(),
                            });
                            continue;
                        }
                        let seq = next;
                        next += 1;
                        if let Some(conversation) = Self::file_event(conn, seq, &event.stream, &event.links).await? {
                            touched.insert(conversation);
                        }
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
                                payload_sha256: chain::payload_sha256(&event.payload),
                            },
                        );
                        Self::insert_event(conn, seq, event, &chain::to_hex(&prev)).await?;
                        let stream = (!event.stream.external_id.is_empty()).then(|| event.stream.clone());
                        known.insert(event.event_id, (seq, stream.clone()));
                        filed.push(Pending {
                            event_id: event.event_id,
                            seq,
                            duplicate: false,
                            stream,
                        });
                    }
                    pending.push(filed);
                }
                let survivors: Vec<Uuid> = Self::resolve_many(conn, &touched).await?.into_iter().collect();
                Self::reproject_many(conn, &survivors, sla).await?;
                let streams: BTreeSet<StreamKey> = pending.iter().flatten().filter_map(|p| p.stream.clone()).collect();
                let conversations = Self::stream_conversations(conn, &streams).await?;
                let outcomes = pending
                    .into_iter()
                    .map(|filed| {
                        filed
                            .into_iter()
                            .map(|p| AppendOutcome {
                                event_id: p.event_id,
                                seq: p.seq,
                                duplicate: p.duplicate,
                                conversation_id: p.stream.and_then(|s| conversations.get(&s).copied()),
                            })
                            .collect()
                    })
                    .collect();
                Ok(outcomes)
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
                    for (seq, platform, external_id, links) in chunk {
                        let stream = codec::stream_key(&platform, external_id)?;
                        let links: Vec<StreamKey> = codec::from_json("links", &links)?;
                        Self::file_event(conn, seq, &stream, &links).await?;
                        events += 1;
                    }
                    after = last;
                }
                let ids: Vec<(String,)> = sqlx::query_as(SQL_ALL_CONVERSATIONS).fetch_all(&mut *conn).await?;
                let ids = ids.iter().map(|(id,)| codec::parse_uuid(id)).collect::<StoreResult<Vec<_>>>()?;
                let total = ids.len() as u64;
                let mut conversations = 0u64;
                progress(0, total);
                let mut done = 0u64;
                for chunk in ids.chunks(IN_CHUNK) {
                    conversations += Self::reproject_many(conn, chunk, sla).await?;
                    done += chunk.len() as u64;
                    progress(done, total);
                }
                Ok(ReplayStats { events, conversations })
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

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn append_batch(&self, groups: &[Vec<NewEvent>], sla: &SlaConfig) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                let mut tx = self.begin_write().await?;
                let outcomes = Self::append_in(&mut *tx, groups, sla).await?;
                tx.commit().await?;
                Ok(outcomes)
            }

            async fn quarantine(&self, entry: &NewQuarantine) -> StoreResult<i64> {
                // At most the first 64 KiB are kept, with the whole body's size and SHA-256.
                let (kept, size, sha) = crate::quarantine::cap_body(&entry.body);
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
                        Bind::Text(text) => query.bind(text),
                        Bind::Int(int) => query.bind(int),
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

            async fn transcript(&self, id: Uuid) -> StoreResult<Option<(Uuid, Vec<Message>)>> {
                let row: Option<(String, String)> = sqlx::query_as(SQL_GET_TRANSCRIPT)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    None => Ok(None),
                    Some((id, messages)) => Ok(Some((
                        codec::parse_uuid(&id)?,
                        codec::from_json("transcript", &messages)?,
                    ))),
                }
            }

            async fn conversation_events(&self, id: Uuid) -> StoreResult<Option<Vec<StoredEvent>>> {
                let mut conn = self.pool.acquire().await?;
                let id = Self::resolve(&mut *conn, id).await?;
                if !Self::conversation_exists(&mut *conn, id).await? {
                    return Ok(None);
                }
                Ok(Some(Self::load_conversation_events(&mut *conn, id).await?))
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
                let mut found = BTreeSet::new();
                for chunk in ids.chunks(IN_CHUNK) {
                    let sql = erasing::erased_among_sql(chunk.len());
                    let mut query = sqlx::query_as::<_, (String,)>(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for (id,) in query.fetch_all(&self.pool).await? {
                        found.insert(codec::parse_uuid(&id)?);
                    }
                }
                Ok(found)
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
        }
    };
}

// SQLite: take the write lock up front (IMMEDIATE), so a batch never fails half-way on a lock
// upgrade when another connection (a checkpoint, a quarantine) wrote since its first read.
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    begin = "BEGIN IMMEDIATE",
    lock = None,
    migrator = sqlx::migrate!("./migrations/sqlite")
);

// PostgreSQL: appends from other instances on the same database wait instead of racing for `seq`;
// readers are not blocked (EXCLUSIVE still allows ACCESS SHARE).
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    begin = "BEGIN",
    lock = Some("LOCK TABLE events IN EXCLUSIVE MODE"),
    migrator = sqlx::migrate!("./migrations/postgres")
);

chained_store!(SqliteStore, sqlx::Sqlite);
chained_store!(PostgresStore, sqlx::Postgres);
erasing_store!(SqliteStore, sqlx::Sqlite);
erasing_store!(PostgresStore, sqlx::Postgres);

impl SqliteStore {
    /// Opens (creating when missing, with its directory) the SQLite file a `sqlite://relative/path`
    /// or `sqlite:///absolute/path` URL names. WAL with `synchronous = FULL`: an acknowledged
    /// webhook survives a power cut.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
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
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
}

impl PostgresStore {
    /// Connects a pool to the database a `postgres://` URL names.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }
}
