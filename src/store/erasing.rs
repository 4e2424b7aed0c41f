//! Erasure in the SQL backends (see `crate::erasure`): one write transaction replaces the payloads of a
//! conversation's events by stubs, registers them, deletes the quarantined deliveries of its streams,
//! appends the `ledger.erased` event (which re-projects the conversation from the kept facts) and stores
//! the certificate. Expanded for both backends by `erasing_store!`; the same SQL text on both.

use super::codec::{self, EventRow};
use super::{StoreError, StoreResult};
use crate::chain::{ChainHead, ErasedEvent};
use crate::erasure::ErasureCertificate;

pub(super) const SQL_STREAMS_OF: &str =
    "SELECT platform, external_id FROM streams WHERE conversation_id = $1 ORDER BY first_seq";
// What an erasure reads: the conversation's events no erasure replaced yet.
pub(super) fn events_to_erase_sql() -> String {
    format!(
        "SELECT {} FROM events e \
         JOIN streams s ON s.platform = e.platform AND s.external_id = e.external_id \
         WHERE s.conversation_id = $1 AND e.kind <> $2 \
         AND NOT EXISTS (SELECT 1 FROM erased_events x WHERE x.seq = e.seq) ORDER BY e.seq",
        codec::EVENT_COLUMNS
    )
}
pub(super) const ERASED_EVENT_COLUMNS: [&str; 3] = ["seq", "erasure_id", "payload_sha256"];
// The one UPDATE the append-only guard lets through: every payload the erasure registered in
// erased_events becomes exactly the stub the guard expects there (`ErasureStub::to_payload`'s text),
// in one statement whatever the number of events.
pub(super) const SQL_STUB_PAYLOADS: &str = "UPDATE events SET headers = '{}', payload = (\
     SELECT '{\"erased\":true,\"erasure_id\":\"' || x.erasure_id || '\",\"payload_sha256\":\"' \
     || x.payload_sha256 || '\"}' FROM erased_events x WHERE x.seq = events.seq) \
     WHERE seq IN (SELECT seq FROM erased_events WHERE erasure_id = $1)";
pub(super) const SQL_QUARANTINE_PAGE: &str = "SELECT id, path, body FROM quarantine WHERE id > $1 ORDER BY id LIMIT $2";
pub(super) const SQL_EVENT_HASH: &str = "SELECT hash FROM events WHERE seq = $1";
pub(super) const SQL_INSERT_ERASURE: &str =
    "INSERT INTO erasures (id, at, conversation_ids, seq, chain_head) VALUES ($1, $2, $3, $4, $5)";
pub(super) const SQL_INSERT_ERASED_CONVERSATION: &str =
    "INSERT INTO erased_conversations (conversation_id, erasure_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";
pub(super) const SQL_GET_ERASURE: &str = "SELECT id, at, conversation_ids, seq, chain_head FROM erasures WHERE id = $1";
pub(super) const SQL_ERASED_EVENTS_OF: &str =
    "SELECT seq, payload_sha256 FROM erased_events WHERE erasure_id = $1 ORDER BY seq";
pub(super) const SQL_LATEST_ERASURE_OF: &str = "SELECT e.id FROM erasures e \
     JOIN erased_conversations x ON x.erasure_id = e.id WHERE x.conversation_id = $1 \
     ORDER BY e.seq DESC LIMIT 1";
// Closed (or failed) and untouched since the cutoff, never erased: oldest first.
pub(super) const SQL_TO_ERASE: &str = "SELECT c.id FROM conversations c \
     WHERE c.state IN ('closed', 'failed') AND c.updated_at < $1 \
     AND NOT EXISTS (SELECT 1 FROM erased_conversations x WHERE x.conversation_id = c.id) \
     ORDER BY c.updated_at, c.id LIMIT $2";

/// Quarantine rows read per round trip while looking for a conversation's deliveries.
pub(super) const QUARANTINE_PAGE: i64 = 500;

pub(super) fn delete_quarantine_sql(n: usize) -> String {
    format!(
        "DELETE FROM quarantine WHERE id IN ({})",
        super::sql::placeholders(1, n)
    )
}

pub(super) fn erased_among_sql(ids: super::sql::InList) -> String {
    format!("SELECT DISTINCT conversation_id FROM erased_conversations WHERE conversation_id {ids}")
}

/// A stored erasure row: `(id, at, conversation_ids, seq, chain_head)`.
pub(super) type ErasureRow = (String, i64, String, i64, String);

pub(super) fn certificate(row: ErasureRow, events: Vec<(i64, String)>) -> StoreResult<ErasureCertificate> {
    let (id, at, conversation_ids, seq, hash) = row;
    Ok(ErasureCertificate {
        id: codec::parse_uuid(&id)?,
        at: codec::from_micros(at)?,
        conversation_ids: codec::from_json("conversation_ids", &conversation_ids)?,
        events: events
            .into_iter()
            .map(|(seq, payload_sha256)| ErasedEvent { seq, payload_sha256 })
            .collect(),
        chain_head: ChainHead { seq, hash },
    })
}

/// The payload text of an event row (the digest is taken of the text exactly as stored).
pub(super) fn payload_text(row: &EventRow) -> &str {
    &row.8
}

pub(super) fn missing_hash(seq: i64) -> StoreError {
    StoreError::Corrupt(format!("the ledger.erased event {seq} has no hash"))
}

macro_rules! erasing_store {
    ($name:ident, $db:ty) => {
        impl $name {
            async fn erasure_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: uuid::Uuid,
            ) -> StoreResult<Option<crate::erasure::ErasureCertificate>> {
                let row: Option<erasing::ErasureRow> = sqlx::query_as(erasing::SQL_GET_ERASURE)
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let events: Vec<(i64, String)> = sqlx::query_as(erasing::SQL_ERASED_EVENTS_OF)
                    .bind(id.to_string())
                    .fetch_all(&mut *conn)
                    .await?;
                erasing::certificate(row, events).map(Some)
            }

            /// Deletes the quarantined deliveries of `streams`; returns how many.
            async fn delete_quarantined(
                conn: &mut <$db as sqlx::Database>::Connection,
                streams: &[StreamKey],
            ) -> StoreResult<u64> {
                let mut after = 0i64;
                let mut doomed = Vec::new();
                loop {
                    let page: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(erasing::SQL_QUARANTINE_PAGE)
                        .bind(after)
                        .bind(erasing::QUARANTINE_PAGE)
                        .fetch_all(&mut *conn)
                        .await?;
                    let Some(last) = page.last().map(|r| r.0) else {
                        break;
                    };
                    doomed.extend(
                        page.iter()
                            .filter(|(_, path, body)| crate::erasure::quarantine_matches(path, body, streams))
                            .map(|(id, _, _)| *id),
                    );
                    after = last;
                }
                for chunk in doomed.chunks(IN_CHUNK) {
                    let sql = erasing::delete_quarantine_sql(chunk.len());
                    let mut query = sqlx::query(&sql).persistent(false);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.execute(&mut *conn).await?;
                }
                Ok(doomed.len() as u64)
            }

            async fn erase_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                target: &crate::erasure::ErasureTarget,
                erasure_id: uuid::Uuid,
                at: chrono::DateTime<chrono::Utc>,
                sla: &SlaConfig,
            ) -> StoreResult<Option<crate::erasure::ErasureCertificate>> {
                use crate::erasure::ErasureTarget;
                let conversation = match target {
                    ErasureTarget::Conversation(id) => {
                        let id = Self::resolve(conn, *id).await?;
                        if !Self::conversation_exists(conn, &super::sql::Filing::default(), id).await? {
                            return Ok(None);
                        }
                        id
                    }
                    ErasureTarget::Stream(stream) => match Self::stream_conversation(
                        conn,
                        &mut super::sql::Filing::default(),
                        stream,
                    )
                    .await?
                    {
                        Some(id) => id,
                        None => return Ok(None),
                    },
                };
                let streams: Vec<(String, String)> = sqlx::query_as(erasing::SQL_STREAMS_OF)
                    .bind(conversation.to_string())
                    .fetch_all(&mut *conn)
                    .await?;
                let streams = streams
                    .into_iter()
                    .map(|(platform, external_id)| codec::stream_key(&platform, external_id))
                    .collect::<StoreResult<Vec<StreamKey>>>()?;
                let rows: Vec<EventRow> = sqlx::query_as(&erasing::events_to_erase_sql())
                    .bind(conversation.to_string())
                    .bind(crate::chain::ERASED_KIND)
                    .fetch_all(&mut *conn)
                    .await?;
                if rows.is_empty() {
                    // Erased before and nothing new since: the earlier certificate stands.
                    let latest: Option<(String,)> = sqlx::query_as(erasing::SQL_LATEST_ERASURE_OF)
                        .bind(conversation.to_string())
                        .fetch_optional(&mut *conn)
                        .await?;
                    if let Some((id,)) = latest {
                        return Self::erasure_in(conn, codec::parse_uuid(&id)?).await;
                    }
                }
                let mut erased = Vec::with_capacity(rows.len());
                let mut kept = Vec::with_capacity(rows.len());
                let mut registered = Vec::with_capacity(rows.len());
                for row in rows {
                    let digest = crate::chain::to_hex(&crate::chain::payload_sha256(erasing::payload_text(&row)));
                    let event = codec::decode_event(row)?;
                    kept.push(crate::sources::KeptEvent {
                        seq: event.seq,
                        event_id: event.event_id,
                        platform: event.platform,
                        facts: crate::erasure::kept_facts(crate::sources::facts_of(&event)),
                    });
                    registered.push(vec![
                        Bind::Int(event.seq),
                        Bind::Text(erasure_id.to_string()),
                        Bind::Text(digest.clone()),
                    ]);
                    erased.push(crate::chain::ErasedEvent {
                        seq: event.seq,
                        payload_sha256: digest,
                    });
                }
                // Registered first: the guard lets a payload become only the stub registered for it.
                Self::insert_rows(conn, "erased_events", &erasing::ERASED_EVENT_COLUMNS, registered, "").await?;
                sqlx::query(erasing::SQL_STUB_PAYLOADS)
                    .bind(erasure_id.to_string())
                    .execute(&mut *conn)
                    .await?;
                let quarantined = Self::delete_quarantined(conn, &streams).await?;
                let record = crate::sources::ledger::ErasedPayload {
                    erasure_id,
                    at,
                    conversation_ids: vec![conversation],
                    events: erased,
                    kept,
                };
                let event = crate::sources::ledger::erased(conversation, &record);
                let outcome = Self::append_in(conn, &[vec![event]], sla, None).await?;
                let seq = outcome.first().and_then(|o| o.first()).map_or(0, |o| o.seq);
                let (hash,): (Option<String>,) = sqlx::query_as(erasing::SQL_EVENT_HASH)
                    .bind(seq)
                    .fetch_one(&mut *conn)
                    .await?;
                let hash = hash.ok_or_else(|| erasing::missing_hash(seq))?;
                let conversation_ids = codec::to_json("conversation_ids", &record.conversation_ids)?;
                sqlx::query(erasing::SQL_INSERT_ERASURE)
                    .bind(erasure_id.to_string())
                    .bind(codec::to_micros(at))
                    .bind(conversation_ids)
                    .bind(seq)
                    .bind(&hash)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(erasing::SQL_INSERT_ERASED_CONVERSATION)
                    .bind(conversation.to_string())
                    .bind(erasure_id.to_string())
                    .execute(&mut *conn)
                    .await?;
                tracing::info!(
                    %erasure_id,
                    %conversation,
                    events = record.events.len(),
                    quarantined,
                    seq,
                    "conversation erased"
                );
                Ok(Some(crate::erasure::ErasureCertificate {
                    id: erasure_id,
                    at,
                    conversation_ids: record.conversation_ids,
                    events: record.events,
                    chain_head: crate::chain::ChainHead { seq, hash },
                }))
            }
        }
    };
}

pub(super) use erasing_store;
