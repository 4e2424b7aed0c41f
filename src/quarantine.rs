//! Limits of the quarantine: a refused delivery keeps at most the first `retention.quarantine_body_bytes`
//! ([`DEFAULT_BODY_CAP`] unless configured) bytes of its body plus the whole body's size and SHA-256; entries older than `retention.quarantine_days` are
//! deleted, and never more than `retention.quarantine_max_entries` are kept (a flood of junk cannot
//! fill the disk).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::config::RetentionConfig;
use crate::store::Store;

/// Most bytes of a refused body that are kept unless `retention.quarantine_body_bytes` says otherwise.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

/// How often old quarantine entries are looked for.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// What is kept of a body: at most `cap` bytes (cut at a character boundary when the body is text),
/// and the whole body's size and hex SHA-256.
pub fn cap_body(body: &[u8], cap: usize) -> (&[u8], i64, String) {
    let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
    let sha = body_sha256(body);
    if body.len() <= cap {
        return (body, size, sha);
    }
    let mut end = cap;
    if let Err(e) = std::str::from_utf8(&body[..end]) {
        // Text cut inside a character: keep the whole characters before it.
        if e.error_len().is_none() && std::str::from_utf8(&body[..e.valid_up_to()]).is_ok() {
            end = e.valid_up_to();
        }
    }
    (&body[..end], size, sha)
}

/// Hex SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A refused delivery as listed: metadata only (the body at `GET /v1/quarantine/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuarantineSummary {
    /// Position in the quarantine.
    pub id: i64,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// Endpoint path it was posted to.
    pub path: String,
    /// Platform of the endpoint, when known.
    pub platform: Option<String>,
    /// Error code it was answered with.
    pub error_code: String,
    /// Error message it was answered with.
    pub error_message: String,
    /// HTTP status it was answered with.
    pub status: u16,
    /// Delivery headers (never credentials).
    pub headers: BTreeMap<String, String>,
    /// Size of the whole body as received, bytes.
    pub body_size: i64,
    /// Hex SHA-256 of the whole body as received.
    pub body_sha256: String,
    /// True when only the first `retention.quarantine_body_bytes` (64 KiB by default) of the body were kept.
    pub body_truncated: bool,
    /// Every time it was run through the parsers again (`POST /v1/quarantine/{id}/redrive`), oldest first.
    #[serde(default)]
    pub redrives: Vec<crate::model::Redrive>,
}

/// One refused delivery with its kept body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuarantineDetail {
    /// Its metadata.
    #[serde(flatten)]
    pub summary: QuarantineSummary,
    /// The kept body (the first `retention.quarantine_body_bytes` at most), lossless: UTF-8 text when it is text, else base64.
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: String,
}

/// Deletes quarantine entries past their retention, now and every [`RETENTION_INTERVAL`].
pub fn spawn_retention(store: Arc<dyn Store>, retention: RetentionConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = apply_retention(store.as_ref(), &retention, Utc::now()).await {
                tracing::warn!(error = %e, "quarantine retention failed; retrying at the next interval");
            }
        }
    })
}

/// Deletes entries received more than `quarantine_days` before `now` (0 = keep them) and all but
/// the newest `quarantine_max_entries`; the number deleted.
pub async fn apply_retention(
    store: &dyn Store,
    retention: &RetentionConfig,
    now: DateTime<Utc>,
) -> crate::store::StoreResult<u64> {
    let mut deleted = 0;
    if retention.quarantine_days > 0 {
        let days = i64::try_from(retention.quarantine_days).unwrap_or(i64::MAX / 86_400_000_000);
        let cutoff = now - chrono::Duration::days(days.min(36_500));
        deleted += store.delete_quarantine_before(cutoff).await?;
    }
    if retention.quarantine_max_entries > 0 {
        deleted += store.trim_quarantine(retention.quarantine_max_entries).await?;
    }
    if deleted > 0 {
        tracing::info!(deleted, "quarantine entries past retention deleted");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_are_kept_whole_and_large_ones_capped_with_the_whole_digest() {
        let (kept, size, sha) = cap_body(b"not json", DEFAULT_BODY_CAP);
        assert_eq!((kept, size), (&b"not json"[..], 8));
        assert_eq!(sha, hex::encode(Sha256::digest(b"not json")));

        let big = vec![b'x'; DEFAULT_BODY_CAP * 3];
        let (kept, size, sha) = cap_body(&big, DEFAULT_BODY_CAP);
        assert_eq!(kept.len(), DEFAULT_BODY_CAP);
        assert_eq!(size, (DEFAULT_BODY_CAP * 3) as i64);
        assert_eq!(sha, hex::encode(Sha256::digest(&big)));
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        // 'é' is two bytes: one starts at the cap - 1 and would be split.
        for cap in [DEFAULT_BODY_CAP, 10] {
            let mut body = vec![b'a'; cap - 1];
            body.extend("ééé".as_bytes());
            let (kept, _, _) = cap_body(&body, cap);
            assert_eq!(kept.len(), cap - 1);
            assert!(std::str::from_utf8(kept).is_ok());
        }
    }
}
