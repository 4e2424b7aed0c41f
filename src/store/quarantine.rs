//! The quarantine's limits in the store (both backends, the same SQL): metadata-only pages, one
//! entry with its kept body, deletion by age and by count. Bodies are capped on insert
//! ([`crate::quarantine::cap_body`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::codec;
use super::{PostgresStore, SqliteStore, StoreError, StoreResult};
use crate::quarantine::{QuarantineDetail, QuarantineSummary};

// Entries kept whole before sizes were recorded have NULL size and digest: their stored body is whole.
const SUMMARY_COLUMNS: &str = "id, received_at, path, platform, error_code, error_message, status, headers, \
     COALESCE(body_size, CAST(LENGTH(body) AS BIGINT)), body_sha256, CAST(LENGTH(body) AS BIGINT)";
const SQL_DELETE_BEFORE: &str = "DELETE FROM quarantine WHERE received_at < $1";
const SQL_NEWEST_ID: &str = "SELECT COALESCE(MAX(id), 0) FROM quarantine";
// Keeps ids in (newest - max, newest]: at most `max` entries, whatever the gaps.
const SQL_TRIM: &str = "DELETE FROM quarantine WHERE id <= $1";

type SummaryRow = (
    i64,
    i64,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
    i64,
    Option<String>,
    i64,
);

fn decode_summary(row: SummaryRow, body: Option<&[u8]>) -> StoreResult<QuarantineSummary> {
    let (id, received_at, path, platform, error_code, error_message, status, headers, size, sha, kept) = row;
    let body_sha256 = match (sha, body) {
        (Some(sha), _) => sha,
        (None, Some(body)) => crate::quarantine::body_sha256(body),
        (None, None) => String::new(),
    };
    Ok(QuarantineSummary {
        id,
        received_at: codec::from_micros(received_at)?,
        path,
        platform,
        error_code,
        error_message,
        status: u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("bad HTTP status {status}")))?,
        headers: codec::from_json::<BTreeMap<String, String>>("headers", &headers)?,
        body_size: size,
        body_sha256,
        body_truncated: kept < size,
        redrives: Vec::new(),
    })
}

/// The quarantine, within its limits.
#[async_trait]
pub trait QuarantineStore: Send + Sync {
    /// Entries newest first (ids below `before` when given), metadata only.
    async fn quarantine_summaries(&self, limit: u32, before: Option<i64>) -> StoreResult<Vec<QuarantineSummary>>;

    /// One entry with its kept body.
    async fn quarantine_entry(&self, id: i64) -> StoreResult<Option<QuarantineDetail>>;

    /// Deletes entries received before `cutoff`; how many.
    async fn delete_quarantine_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64>;

    /// Deletes all but the newest `max` entries; how many.
    async fn trim_quarantine(&self, max: u64) -> StoreResult<u64>;
}

macro_rules! quarantine_store {
    ($name:ident) => {
        #[async_trait]
        impl QuarantineStore for $name {
            async fn quarantine_summaries(
                &self,
                limit: u32,
                before: Option<i64>,
            ) -> StoreResult<Vec<QuarantineSummary>> {
                // `sha` is NULL only for old whole entries, so their digest needs the body; others do not.
                let sql = format!(
                    "SELECT {SUMMARY_COLUMNS}, CASE WHEN body_sha256 IS NULL THEN body ELSE NULL END \
                     FROM quarantine WHERE id < $2 ORDER BY id DESC LIMIT $1"
                );
                let rows: Vec<(
                    i64,
                    i64,
                    String,
                    Option<String>,
                    String,
                    String,
                    i64,
                    String,
                    i64,
                    Option<String>,
                    i64,
                    Option<Vec<u8>>,
                )> = sqlx::query_as(&sql)
                    .bind(i64::from(limit))
                    .bind(before.unwrap_or(i64::MAX))
                    .fetch_all(self.pool())
                    .await?;
                rows.into_iter()
                    .map(|r| {
                        let body = r.11;
                        let row = (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10);
                        decode_summary(row, body.as_deref())
                    })
                    .collect()
            }

            async fn quarantine_entry(&self, id: i64) -> StoreResult<Option<QuarantineDetail>> {
                let sql = format!("SELECT {SUMMARY_COLUMNS}, body FROM quarantine WHERE id = $1");
                let row: Option<(
                    i64,
                    i64,
                    String,
                    Option<String>,
                    String,
                    String,
                    i64,
                    String,
                    i64,
                    Option<String>,
                    i64,
                    Vec<u8>,
                )> = sqlx::query_as(&sql).bind(id).fetch_optional(self.pool()).await?;
                let Some(r) = row else { return Ok(None) };
                let body = r.11;
                let summary = decode_summary(
                    (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10),
                    Some(&body),
                )?;
                let (body, body_encoding) = match String::from_utf8(body) {
                    Ok(text) => (text, "utf8"),
                    Err(e) => (codec::base64_encode(e.as_bytes()), "base64"),
                };
                Ok(Some(QuarantineDetail {
                    summary,
                    body,
                    body_encoding: body_encoding.into(),
                }))
            }

            async fn delete_quarantine_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
                let done = sqlx::query(SQL_DELETE_BEFORE)
                    .bind(codec::to_micros(cutoff))
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected())
            }

            async fn trim_quarantine(&self, max: u64) -> StoreResult<u64> {
                let (newest,): (i64,) = sqlx::query_as(SQL_NEWEST_ID).fetch_one(self.pool()).await?;
                let keep_from = newest.saturating_sub(i64::try_from(max).unwrap_or(i64::MAX));
                if keep_from <= 0 {
                    return Ok(0);
                }
                let done = sqlx::query(SQL_TRIM).bind(keep_from).execute(self.pool()).await?;
                Ok(done.rows_affected())
            }
        }
    };
}

quarantine_store!(SqliteStore);
quarantine_store!(PostgresStore);
