//! The single writer: one task owns appends. Requests hand it their events over a channel and wait;
//! it takes everything that has queued up (a batch), appends and projects it in one transaction,
//! commits, then answers each waiter. One commit (one fsync) serves many webhooks, `seq` stays
//! gap-free, and the query API reads its own writes.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::SlaConfig;
use crate::erasure::{ErasureCertificate, ErasureTarget};
use crate::model::{AppendOutcome, NewEvent, NewQuarantine};
use crate::store::{RelayPlanner, Store};

/// Why a write was not done. The sender should retry: nothing was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The store failed; the transaction was rolled back.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// The writer task has stopped (shutting down).
    #[error("the writer has stopped")]
    Stopped,
}

enum Job {
    Append {
        events: Vec<NewEvent>,
        /// When it was handed to the writer (its wait is logged per batch at `debug`, `ledger::batch`).
        queued: std::time::Instant,
        reply: oneshot::Sender<Result<Vec<AppendOutcome>, WriteError>>,
    },
    Quarantine {
        entry: Box<NewQuarantine>,
        reply: oneshot::Sender<Result<i64, WriteError>>,
    },
    Erase {
        target: ErasureTarget,
        reply: oneshot::Sender<Result<Option<ErasureCertificate>, WriteError>>,
    },
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    committed: watch::Receiver<i64>,
}

impl Writer {
    /// Starts the writer task over `store`. `max_batch` bounds how many deliveries share one transaction.
    pub async fn spawn(
        store: Arc<dyn Store>,
        sla: SlaConfig,
        max_batch: usize,
    ) -> Result<(Writer, JoinHandle<()>), crate::store::StoreError> {
        Self::spawn_planned(store, sla, max_batch, None).await
    }

    /// [`Writer::spawn`], and every batch plans the commands its new events call for with `planner`,
    /// inside its transaction (see [`RelayPlanner`]).
    pub async fn spawn_planned(
        store: Arc<dyn Store>,
        sla: SlaConfig,
        max_batch: usize,
        planner: Option<Arc<dyn RelayPlanner>>,
    ) -> Result<(Writer, JoinHandle<()>), crate::store::StoreError> {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let (committed_tx, committed) = watch::channel(store.last_seq().await?);
        let handle = tokio::spawn(run(store, sla, planner, max_batch.max(1), rx, committed_tx));
        Ok((Writer { tx, committed }, handle))
    }

    /// Appends one delivery's events; returns after they are committed.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<AppendOutcome>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Append {
                events,
                queued: std::time::Instant::now(),
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Keeps a refused delivery; returns after it is committed.
    pub async fn quarantine(&self, entry: NewQuarantine) -> Result<i64, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Quarantine {
                entry: Box::new(entry),
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Jobs waiting for the writer now (the batch being committed excluded).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the writer task is still running (readiness: once it has ended nothing can be appended).
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Erases the conversation `target` names (see `crate::erasure`); returns after it is committed,
    /// with its certificate (None: no such conversation). Runs between append batches, so a long
    /// conversation's erasure delays ingestion by one transaction at most.
    pub async fn erase(&self, target: ErasureTarget) -> Result<Option<ErasureCertificate>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Erase { target, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Watches the highest committed `seq` (the outbox and the analytics sink wake on it).
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }
}

async fn run(
    store: Arc<dyn Store>,
    sla: SlaConfig,
    planner: Option<Arc<dyn RelayPlanner>>,
    max_batch: usize,
    mut rx: mpsc::Receiver<Job>,
    committed: watch::Sender<i64>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let mut appends = Vec::new();
        let mut highest = 0;
        let mut oldest: Option<std::time::Instant> = None;
        for job in jobs.drain(..) {
            match job {
                Job::Append { events, queued, reply } => {
                    oldest = Some(oldest.map_or(queued, |o| o.min(queued)));
                    appends.push((events, reply))
                }
                Job::Quarantine { entry, reply } => {
                    let result = store
                        .quarantine(&entry)
                        .await
                        .map_err(|e| WriteError::Unavailable(e.to_string()));
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "quarantine write failed");
                    }
                    let _ = reply.send(result);
                }
                Job::Erase { target, reply } => {
                    let erasure_id = uuid::Uuid::new_v4();
                    let at = crate::sources::truncate_to_micros(chrono::Utc::now());
                    let result = store
                        .erase(&target, erasure_id, at, &sla)
                        .await
                        .map_err(|e| WriteError::Unavailable(e.to_string()));
                    match &result {
                        Ok(Some(certificate)) => highest = highest.max(certificate.chain_head.seq),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, ?target, "erasure failed"),
                    }
                    let _ = reply.send(result);
                }
            }
        }
        if appends.is_empty() {
            publish(&committed, highest);
            continue;
        }
        let groups: Vec<Vec<NewEvent>> = appends.iter_mut().map(|(e, _)| std::mem::take(e)).collect();
        let started = std::time::Instant::now();
        tracing::debug!(
            target: "ledger::batch",
            deliveries = groups.len(),
            waited_us = oldest.map_or(0, |o| started.duration_since(o).as_micros() as u64),
            queued = rx.len(),
            "batch taken"
        );
        let planner = planner.as_deref();
        match append_guarded(store.as_ref(), &groups, &sla, planner).await {
            Ok(outcomes) => {
                crate::telemetry::batch_committed(groups.len(), started.elapsed());
                for ((_, reply), outcome) in appends.into_iter().zip(outcomes) {
                    highest = outcome.iter().map(|o| o.seq).fold(highest, i64::max);
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if groups.len() > 1 => {
                // One bad delivery must not fail its batch-mates: retry each on its own.
                tracing::warn!(error = %e, size = groups.len(), "batch failed; retrying deliveries one by one");
                for (group, (_, reply)) in groups.into_iter().zip(appends) {
                    let result = append_guarded(store.as_ref(), std::slice::from_ref(&group), &sla, planner)
                        .await
                        .map(|mut v| v.pop().unwrap_or_default())
                        .map_err(|e| WriteError::Unavailable(e.to_string()));
                    if let Ok(outcome) = &result {
                        highest = outcome.iter().map(|o| o.seq).fold(highest, i64::max);
                    }
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "append failed");
                for (_, reply) in appends {
                    let _ = reply.send(Err(WriteError::Unavailable(e.to_string())));
                }
            }
        }
        publish(&committed, highest);
    }
}

/// Runs a future, turning a panic inside it into `Err` with the panic's message.
pub async fn catch_panic<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into())
        })
}

/// One `append_batch`, guarded: a panic while appending or projecting (a bug on one conversation)
/// rolls the transaction back and becomes an error instead of ending the writer. A single delivery
/// that panics is kept in the quarantine (`projection_failed`), so nothing sent is lost; a batch that
/// panics is retried delivery by delivery by the caller, which finds the one.
async fn append_guarded(
    store: &dyn Store,
    groups: &[Vec<NewEvent>],
    sla: &SlaConfig,
    planner: Option<&dyn RelayPlanner>,
) -> Result<Vec<Vec<AppendOutcome>>, crate::store::StoreError> {
    let appended = async {
        match planner {
            Some(planner) => store.append_batch_planned(groups, sla, planner).await,
            None => store.append_batch(groups, sla).await,
        }
    };
    let message = match catch_panic(appended).await {
        Ok(result) => return result,
        Err(message) => message,
    };
    tracing::error!(panic = %message, deliveries = groups.len(), "appending panicked; the batch was rolled back");
    if let [group] = groups {
        if let Some(entry) = panicked_delivery(group, &message) {
            if let Err(e) = store.quarantine(&entry).await {
                tracing::error!(error = %e, "could not quarantine the delivery that panicked");
            }
        }
    }
    Err(crate::store::StoreError::Corrupt(format!(
        "appending this delivery failed: {message}"
    )))
}

/// The quarantine entry of a delivery whose append panicked: its body (every event of a delivery
/// carries the body as received) and its headers.
fn panicked_delivery(group: &[NewEvent], message: &str) -> Option<NewQuarantine> {
    let first = group.first()?;
    Some(NewQuarantine {
        received_at: first.received_at,
        path: format!("(writer) {}", first.kind),
        platform: Some(first.stream.platform),
        error_code: "projection_failed".into(),
        error_message: format!("the delivery could not be projected: {message}"),
        status: 503,
        headers: first.headers.clone(),
        body: first.payload.clone().into_bytes(),
    })
}

/// Tells watchers (outbox, analytics sink) the highest committed seq when it moved.
fn publish(committed: &watch::Sender<i64>, highest: i64) {
    committed.send_if_modified(|v| {
        let changed = highest > *v;
        *v = (*v).max(highest);
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
        let boom = catch_panic(async {
            if true {
                panic!("projection bug on conversation {}", 42);
            }
        })
        .await;
        assert_eq!(boom, Err("projection bug on conversation 42".to_string()));
    }

    #[test]
    fn a_delivery_that_panicked_is_kept_as_sent() {
        use crate::model::{Platform, StreamKey};
        let event = NewEvent {
            event_id: uuid::Uuid::new_v4(),
            stream: StreamKey {
                platform: Platform::AivoLive,
                external_id: "room-1".into(),
            },
            kind: "aivo_live.attended".into(),
            occurred_at: chrono::Utc::now(),
            platform_at: None,
            received_at: chrono::Utc::now(),
            payload: r#"{"name":"attended","roomId":"room-1"}"#.into(),
            headers: [("user-agent".to_string(), "aivo".to_string())].into(),
            links: vec![],
        };
        let entry = panicked_delivery(std::slice::from_ref(&event), "index out of bounds").unwrap();
        assert_eq!(entry.body, event.payload.as_bytes());
        assert_eq!(entry.platform, Some(Platform::AivoLive));
        assert_eq!(entry.error_code, "projection_failed");
        assert!(entry.error_message.contains("index out of bounds"));
        assert_eq!(entry.headers, event.headers);
        assert!(panicked_delivery(&[], "x").is_none());
    }
}
