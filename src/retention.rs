//! The retention job: erases, as `POST /v1/erasures` would, every conversation closed (and untouched)
//! longer ago than `retention.erase_closed_after_days`. One conversation per writer job, so webhooks
//! keep being appended between erasures: ingestion waits for one erasure's transaction at most.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::RetentionConfig;
use crate::erasure::ErasureTarget;
use crate::store::Store;
use crate::writer::Writer;

/// How often the job looks for expired conversations.
pub(crate) const INTERVAL: Duration = Duration::from_secs(3600);

/// Conversations read per query.
const BATCH: u32 = 50;

/// Starts the job (None when `erase_closed_after_days` is 0: never).
pub fn spawn(store: Arc<dyn Store>, writer: Writer, config: RetentionConfig) -> Option<tokio::task::JoinHandle<()>> {
    let days = config.erase_closed_after_days;
    if days == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            match erase_expired(store.as_ref(), &writer, days, Utc::now()).await {
                Ok(0) => {}
                Ok(erased) => tracing::info!(erased, days, "retention erased closed conversations"),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying at the next interval"),
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }))
}

/// One pass: erases every conversation closed and untouched since `now - days`. Returns how many.
pub async fn erase_expired(store: &dyn Store, writer: &Writer, days: u64, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let cutoff = now - chrono::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400_000).min(365_000));
    let mut erased = 0;
    loop {
        let ids = store.conversations_to_erase(cutoff, BATCH).await?;
        if ids.is_empty() {
            return Ok(erased);
        }
        let mut progressed = false;
        for id in ids {
            if writer.erase(ErasureTarget::Conversation(id)).await?.is_some() {
                erased += 1;
                progressed = true;
            }
        }
        if !progressed {
            return Ok(erased);
        }
    }
}
