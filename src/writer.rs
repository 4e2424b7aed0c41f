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
use crate::store::Store;

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
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let (committed_tx, committed) = watch::channel(store.last_seq().await?);
        let handle = tokio::spawn(run(store, sla, max_batch.max(1), rx, committed_tx));
        Ok((Writer { tx, committed }, handle))
    }

    /// Appends one delivery's events; returns after they are committed.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<AppendOutcome>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Append { events, reply })
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
    max_batch: usize,
    mut rx: mpsc::Receiver<Job>,
    committed: watch::Sender<i64>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let mut appends = Vec::new();
        let mut highest = 0;
        for job in jobs.drain(..) {
            match job {
                Job::Append { events, reply } => appends.push((events, reply)),
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
        match store.append_batch(&groups, &sla).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in appends.into_iter().zip(outcomes) {
                    highest = outcome.iter().map(|o| o.seq).fold(highest, i64::max);
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if groups.len() > 1 => {
                // One bad delivery must not fail its batch-mates: retry each on its own.
                tracing::warn!(error = %e, size = groups.len(), "batch failed; retrying deliveries one by one");
                for (group, (_, reply)) in groups.into_iter().zip(appends) {
                    let result = store
                        .append_batch(std::slice::from_ref(&group), &sla)
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

/// Tells watchers (outbox, analytics sink) the highest committed seq when it moved.
fn publish(committed: &watch::Sender<i64>, highest: i64) {
    committed.send_if_modified(|v| {
        let changed = highest > *v;
        *v = (*v).max(highest);
        changed
    });
}
