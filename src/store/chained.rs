//! The hash chain in the SQL backends: the head the writer chains new events to, the backfill that
//! gives a log stored before the chain its hashes, and the pages `verify` reads. Expanded for both
//! backends by `chained_store!` (same SQL text on both, like `sql.rs`).

use crate::chain::{self, ChainHead, ChainLink, ChainRow, Sha256Digest, StoredLink, GENESIS};

use super::{StoreError, StoreResult};

/// Rows hashed per backfill transaction.
pub(super) const BACKFILL_CHUNK: i64 = 500;

pub(super) const SQL_HEAD: &str = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1";
// Only the backfill uses it: hashed rows are always a prefix of the log (a new row needs its
// predecessor's hash), so this scans the unhashed suffix once.
pub(super) const SQL_LAST_HASHED: &str =
    "SELECT seq, hash FROM events WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1";
pub(super) const SQL_CHAIN_ROWS: &str = "SELECT seq, event_id, platform, external_id, kind, occurred_at, \
     received_at, payload, hash FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";

/// A page of the log as `verify` reads it: one text per page, built by the database, so a page costs
/// one row of the driver whatever its size (a row at a time, the driver's per-row work is most of a
/// walk's time). Only the columns the chain covers, each row as
/// `<seq> <occurred_at> <received_at> <n> <event_id><n> <platform><n> <external_id><n> <kind><n> <payload><n> <hash>`
/// where each `<n>` is the byte length of the text after it (-1 and nothing for a null hash), so any
/// stored text reads back exactly. `string_agg` with `ORDER BY`, `format` and `octet_length` are the
/// same on PostgreSQL and SQLite (3.44 and later; sqlx bundles 3.46).
pub(super) const SQL_CHAIN_PAGE: &str = "SELECT string_agg(format('%s %s %s %s %s%s %s%s %s%s %s%s %s%s %s', \
     seq, occurred_at, received_at, octet_length(event_id), event_id, octet_length(platform), platform, \
     octet_length(external_id), external_id, octet_length(kind), kind, octet_length(payload), payload, \
     COALESCE(octet_length(hash), -1), hash), '' ORDER BY seq) FROM events WHERE seq >= $1 AND seq <= $2";

/// The rows `seq` from `first` to `last` of the log, as [`SQL_CHAIN_PAGE`] encodes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainPage {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) text: String,
}

impl ChainPage {
    /// The first seq of the page's range.
    pub fn first_seq(&self) -> i64 {
        self.first
    }

    /// The last seq of the page's range.
    pub fn last_seq(&self) -> i64 {
        self.last
    }

    /// The page's rows in seq order; an error names what could not be read (the text the database
    /// built is not in the page's form: a bug, never a tampered row, whose texts are length-prefixed).
    pub fn rows(&self) -> StoreResult<Vec<StoredLink<'_>>> {
        let mut reader = PageReader {
            text: &self.text,
            at: 0,
        };
        let mut rows = Vec::new();
        while reader.at < self.text.len() {
            rows.push(reader.row().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the chain page of seq {}..={} is unreadable at byte {}",
                    self.first, self.last, reader.at
                ))
            })?);
        }
        Ok(rows)
    }
}

/// Reads [`SQL_CHAIN_PAGE`]'s encoding.
struct PageReader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> PageReader<'a> {
    /// An integer ended by a space.
    fn int(&mut self) -> Option<i64> {
        let rest = self.text.get(self.at..)?;
        let end = rest.find(' ')?;
        self.at += end + 1;
        rest[..end].parse().ok()
    }

    /// A length, a space, then that many bytes (None for the length -1).
    fn text(&mut self) -> Option<Option<&'a str>> {
        let len = self.int()?;
        if len == -1 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        let text = self.text.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(Some(text))
    }

    fn row(&mut self) -> Option<StoredLink<'a>> {
        Some(StoredLink {
            seq: self.int()?,
            occurred_at: self.int()?,
            received_at: self.int()?,
            event_id: self.text()??,
            platform: self.text()??,
            external_id: self.text()??,
            kind: self.text()??,
            payload: self.text()??,
            hash: self.text()?,
        })
    }
}

/// A row as [`SQL_CHAIN_ROWS`] reads it.
pub(super) type ChainRowTuple = (i64, String, String, String, String, i64, i64, String, Option<String>);

pub(super) fn chain_row(row: ChainRowTuple) -> ChainRow {
    let (seq, event_id, platform, external_id, kind, occurred_at, received_at, payload, hash) = row;
    ChainRow {
        seq,
        event_id,
        platform,
        external_id,
        kind,
        occurred_at,
        received_at,
        payload,
        hash,
    }
}

/// `UPDATE events SET hash = CASE seq WHEN .. THEN .. END` for `n` rows with seqs from `$2n+1` to `$2n+2`.
pub(super) fn backfill_sql(n: usize) -> String {
    let whens: String = (0..n)
        .map(|i| format!(" WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2))
        .collect();
    format!(
        "UPDATE events SET hash = CASE seq{whens} END WHERE seq >= ${} AND seq <= ${}",
        2 * n + 1,
        2 * n + 2
    )
}

/// The digest a head row's hash column holds; a row without one means the backfill has not run.
pub(super) fn head_digest(head: Option<(i64, Option<String>)>) -> StoreResult<Sha256Digest> {
    match head {
        None => Ok(GENESIS),
        Some((seq, Some(hash))) => chain::from_hex(&hash)
            .ok_or_else(|| StoreError::Corrupt(format!("event {seq} has a malformed hash `{hash}`"))),
        Some((seq, None)) => Err(StoreError::Corrupt(format!(
            "event {seq} has no hash: the chain backfill has not run (run `handoff-ledger migrate`)"
        ))),
    }
}

/// The head as the API shows it.
pub(super) fn chain_head(head: Option<(i64, Option<String>)>) -> Option<ChainHead> {
    match head {
        Some((seq, Some(hash))) => Some(ChainHead { seq, hash }),
        _ => None,
    }
}

/// Hashes `rows` (consecutive, in seq order) chained to `prev`: `(seq, hex hash)` each, and the last hash.
pub(super) fn hash_rows(prev: Sha256Digest, rows: &[ChainRow]) -> StoreResult<(Vec<(i64, String)>, Sha256Digest)> {
    let mut prev = prev;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let event_id = super::codec::parse_uuid(&row.event_id)?;
        prev = chain::event_hash(
            &prev,
            &ChainLink {
                seq: row.seq,
                event_id,
                platform: &row.platform,
                external_id: &row.external_id,
                kind: &row.kind,
                occurred_at: row.occurred_at,
                received_at: row.received_at,
                payload_sha256: chain::payload_sha256(&row.payload),
            },
        );
        out.push((row.seq, chain::to_hex(&prev)));
    }
    Ok((out, prev))
}

macro_rules! chained_store {
    ($name:ident, $db:ty) => {
        impl $name {
            /// Gives every event stored before the chain existed its hash, in seq order, one
            /// transaction per [`chained::BACKFILL_CHUNK`] rows (an interrupted backfill resumes).
            /// Returns the number of rows hashed.
            async fn backfill_chain(&self) -> StoreResult<u64> {
                let head: Option<(i64, Option<String>)> = sqlx::query_as(chained::SQL_HEAD)
                    .fetch_optional(&self.pool)
                    .await?;
                if !matches!(head, Some((_, None))) {
                    return Ok(0);
                }
                let mut hashed = 0u64;
                loop {
                    let mut tx = self.begin_write().await?;
                    let last: Option<(i64, Option<String>)> = sqlx::query_as(chained::SQL_LAST_HASHED)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let after = last.as_ref().map_or(0, |(seq, _)| *seq);
                    let prev = chained::head_digest(last)?;
                    let rows: Vec<chained::ChainRowTuple> = sqlx::query_as(chained::SQL_CHAIN_ROWS)
                        .bind(after)
                        .bind(chained::BACKFILL_CHUNK)
                        .fetch_all(&mut *tx)
                        .await?;
                    let rows: Vec<crate::chain::ChainRow> = rows.into_iter().map(chained::chain_row).collect();
                    let (Some(first), Some(last)) = (rows.first().map(|r| r.seq), rows.last().map(|r| r.seq)) else {
                        break;
                    };
                    let (hashes, _) = chained::hash_rows(prev, &rows)?;
                    let sql = chained::backfill_sql(hashes.len());
                    let mut query = sqlx::query(&sql);
                    for (seq, hash) in hashes {
                        query = query.bind(seq).bind(hash);
                    }
                    query.bind(first).bind(last).execute(&mut *tx).await?;
                    tx.commit().await?;
                    hashed += rows.len() as u64;
                    tracing::info!(hashed, up_to_seq = last, "event chain backfill");
                }
                Ok(hashed)
            }

            async fn chain_head_of(&self) -> StoreResult<Option<crate::chain::ChainHead>> {
                let head: Option<(i64, Option<String>)> = sqlx::query_as(chained::SQL_HEAD)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(chained::chain_head(head))
            }

            async fn chain_page_of(&self, first_seq: i64, last_seq: i64) -> StoreResult<chained::ChainPage> {
                let (text,): (Option<String>,) = sqlx::query_as(chained::SQL_CHAIN_PAGE)
                    .bind(first_seq)
                    .bind(last_seq)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(chained::ChainPage {
                    first: first_seq,
                    last: last_seq,
                    text: text.unwrap_or_default(),
                })
            }

            async fn chain_rows_of(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<crate::chain::ChainRow>> {
                let rows: Vec<chained::ChainRowTuple> = sqlx::query_as(chained::SQL_CHAIN_ROWS)
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(chained::chain_row).collect())
            }
        }
    };
}

pub(super) use chained_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_sql_numbers_its_placeholders() {
        assert_eq!(
            backfill_sql(2),
            "UPDATE events SET hash = CASE seq WHEN $1 THEN $2 WHEN $3 THEN $4 END WHERE seq >= $5 AND seq <= $6"
        );
    }

    #[test]
    fn an_unhashed_head_is_refused_not_chained_from_zero() {
        assert_eq!(head_digest(None).unwrap(), GENESIS);
        assert!(head_digest(Some((3, None))).is_err());
        assert!(head_digest(Some((3, Some("zz".into())))).is_err());
    }
}
