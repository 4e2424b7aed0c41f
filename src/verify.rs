//! `handoff-ledger verify`: checks the whole log's chain and names the first seq where it breaks.
//!
//! Every row can be checked on its own against its predecessor's stored hash (see
//! [`check_run`](crate::chain::check_run)), so the log is read as pages of seq ranges, each page
//! with the row just before its range, and the pages are checked on blocking threads while the next
//! ones are read. A [`Verifier`] takes the pages' reports in seq order, so the verdict (and the
//! first broken seq) is the one a walk from the first row to the last would give.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::chain::{check_run, BreakReason, ChainBreak, ChainHead, RunReport, Verifier};
use crate::store::{Store, StoreError, StoreResult};

/// Rows read per page: about 2 MB of text, which the allocator reuses from page to page (pages of 20,000
/// rows spent a third of the walk in page faults on SQLite).
pub const PAGE: u32 = 5_000;

/// Pages read or checked at once (reading one while checking the ones before it).
const IN_FLIGHT: usize = 3;

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
    verify_log_in_pages(store, pinned, PAGE, progress).await
}

/// [`verify_log`] reading `page` rows at a time.
pub async fn verify_log_in_pages(
    store: Arc<dyn Store>,
    pinned: Option<ChainHead>,
    page: u32,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> StoreResult<Verdict> {
    let page = i64::from(page.max(1));
    let pinned = pinned.map(Arc::new);
    let mut verifier = Verifier::new();
    let mut total = u64::try_from(store.last_seq().await?).unwrap_or(0);
    progress(0, total);
    let mut start = 1i64;
    // Events appended during the walk are checked too: read to the end, then look again.
    while let Some(end) = i64::try_from(total).ok().filter(|end| *end >= start) {
        let ranges = (start..=end)
            .step_by(usize::try_from(page).unwrap_or(usize::MAX))
            .map(|first| {
                let last = first.saturating_add(page - 1).min(end);
                (first, last)
            });
        let mut runs = futures::stream::iter(ranges)
            .map(|(first, last)| check_page(store.clone(), first, last, pinned.clone()))
            .buffered(IN_FLIGHT);
        while let Some(run) = runs.try_next().await? {
            if let Err(broken) = verifier.absorb(run) {
                return Ok(Verdict::Broken(broken));
            }
            progress(verifier.checked(), total.max(verifier.checked()));
        }
        start = end + 1;
        total = u64::try_from(store.last_seq().await?).unwrap_or(0);
    }
    if let Some(pin) = pinned.filter(|_| !verifier.pinned_seen()) {
        return Ok(Verdict::Broken(ChainBreak {
            seq: pin.seq,
            reason: BreakReason::Truncated {
                last: verifier.next_seq() - 1,
            },
        }));
    }
    Ok(match verifier.finish() {
        Ok(events) => Verdict::Intact {
            events,
            head: (events > 0).then(|| ChainHead {
                seq: verifier.next_seq() - 1,
                hash: crate::chain::to_hex(&verifier.head()),
            }),
        },
        Err(broken) => Verdict::Broken(broken),
    })
}

/// Reads the rows `first..=last` with the row before them, and checks them on a blocking thread.
async fn check_page(
    store: Arc<dyn Store>,
    first: i64,
    last: i64,
    pinned: Option<Arc<ChainHead>>,
) -> StoreResult<RunReport> {
    let page = store.chain_page((first - 1).max(1), last).await?;
    let checked = tokio::task::spawn_blocking(move || {
        let rows = page.rows()?;
        let (anchor, rows) = match rows.split_first() {
            Some((a, rest)) if a.seq < first => (Some(a), rest),
            _ => (None, rows.as_slice()),
        };
        Ok(check_run(first, anchor, rows.iter().copied(), pinned.as_deref()))
    })
    .await;
    checked.map_err(|e| StoreError::Corrupt(format!("checking the chain of seq {first}..={last} failed: {e}")))?
}
