//! `handoff-ledger verify`: walks the whole log in `seq` order through [`Verifier`]. Reading the next
//! page overlaps with hashing the current one (a reader task feeds a short queue), so the walk runs
//! at the speed of the slower of the two.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::chain::{BreakReason, ChainBreak, ChainHead, Verifier};
use crate::store::{Store, StoreResult};

/// Rows read per round trip.
const PAGE: u32 = 10_000;

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row links to its predecessor; every erasure stub is recorded.
    Intact {
        /// Rows checked.
        events: u64,
        /// The newest event and its hash (None for an empty log).
        head: Option<ChainHead>,
    },
    /// The first row at which the chain does not hold.
    Broken(ChainBreak),
}

/// Checks the whole log. `pinned` is a head an auditor recorded earlier: the row at its seq must
/// still carry its hash. `progress(done, total)` is called after every page.
pub async fn verify_log(
    store: Arc<dyn Store>,
    pinned: Option<ChainHead>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> StoreResult<Verdict> {
    let total = u64::try_from(store.last_seq().await?).unwrap_or(0);
    let (tx, mut rx) = mpsc::channel(2);
    let reader = tokio::spawn({
        let store = store.clone();
        async move {
            let mut after = 0;
            loop {
                let page = store.chain_rows(after, PAGE).await;
                let last = match &page {
                    Ok(rows) => rows.last().map(|r| r.seq),
                    Err(_) => None,
                };
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
                match last {
                    Some(seq) => after = seq,
                    None => return,
                }
            }
        }
    });
    let mut verifier = Verifier::new();
    progress(0, total);
    let mut pinned_seen = false;
    let verdict = 'walk: loop {
        let Some(page) = rx.recv().await else {
            break 'walk None;
        };
        let rows = page?;
        if rows.is_empty() {
            break 'walk None;
        }
        for row in &rows {
            if let Err(broken) = verifier.check(row) {
                break 'walk Some(broken);
            }
            if let Some(pin) = pinned.as_ref().filter(|p| p.seq == row.seq) {
                pinned_seen = true;
                if row.hash.as_deref() != Some(pin.hash.as_str()) {
                    break 'walk Some(ChainBreak {
                        seq: row.seq,
                        reason: BreakReason::PinMismatch {
                            pinned: pin.hash.clone(),
                            stored: row.hash.clone().unwrap_or_default(),
                        },
                    });
                }
            }
        }
        progress(verifier.checked(), total.max(verifier.checked()));
    };
    drop(rx);
    let _ = reader.await;
    if let Some(broken) = verdict {
        return Ok(Verdict::Broken(broken));
    }
    if let Some(pin) = pinned.filter(|_| !pinned_seen) {
        return Ok(Verdict::Broken(ChainBreak {
            seq: pin.seq,
            reason: BreakReason::Truncated {
                last: verifier.checked() as i64,
            },
        }));
    }
    Ok(match verifier.finish() {
        Ok(events) => Verdict::Intact {
            events,
            head: (events > 0).then(|| ChainHead {
                seq: events as i64,
                hash: crate::chain::to_hex(&verifier.head()),
            }),
        },
        Err(broken) => Verdict::Broken(broken),
    })
}
