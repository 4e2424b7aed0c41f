//! The handoff aggregates behind the store-computed reports (`?source=store`): SQL over the `handoffs` rows,
//! the same text on both backends, so a report reads a few grouped rows instead of every conversation.
//!
//! Each metric is credited to the bucket in which its timer stops (METRICS.md), exactly as the ClickHouse
//! rollups do (`analytics::rollups::refresh_sql`): one grouped statement per instant (queued, first attended,
//! closed, first response; and the disposition's instant for the disposition report), each reading only the
//! rows whose instant lies in the range. The per-handoff values (answered, abandoned, missed, the waits, first
//! response and handle times, the first response's instant) are decided in Rust by `projection::metrics` when
//! the row is written (`codec::handoff_rows`); the two that depend on the SLA configuration in force when the
//! report is read are decided here, from those values, as `metrics` defines them:
//! - answered within target ([`metrics::is_answered_within_sla`]): `sla_status` `met`, or not `breached` and the
//!   wait at most the queue's target;
//! - short abandon ([`metrics::is_short_abandon`]): abandoned, and waited less than `sla.short_abandon_seconds`.
//!
//! Wait percentiles are exact: the answered statement returns, with each bucket and group's counts, every
//! answered wait credited there as one text of integers (`answered_wait_key`, the wait's bits as
//! [`wait_key`] orders them, written beside the wait), and the report computes the percentiles with
//! [`metrics::percentile`] from the very `f64`s the rows computed in Rust use: a few rows cross from the
//! database instead of one per answered handoff.
//!
//! [`metrics::is_answered_within_sla`]: crate::projection::metrics::is_answered_within_sla
//! [`metrics::is_short_abandon`]: crate::projection::metrics::is_short_abandon
//! [`metrics::percentile`]: crate::projection::metrics::percentile

use super::codec::Bind;
use super::{StoreError, StoreResult};
use crate::config::SlaConfig;

/// What the store aggregates: buckets of `bucket_seconds` (aligned on the epoch) from `first_bucket` while
/// they start before `end_exclusive` (epoch seconds), grouped by the dimensions asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffReportQuery {
    /// First bucket start (a multiple of `bucket_seconds`).
    pub first_bucket: i64,
    /// Buckets start before this.
    pub end_exclusive: i64,
    /// Bucket length (3600 or 86400).
    pub bucket_seconds: i64,
    /// Grouped by the handoff's live backend.
    pub by_platform: bool,
    /// Grouped by its queue ("" when unknown).
    pub by_queue: bool,
    /// Grouped by the agent who answered it ("" when unanswered).
    pub by_agent: bool,
}

/// Sums of one bucket and group ("" for a dimension not grouped). The statements return one row per instant
/// kind, bucket and group; rows of the same bucket and group add up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandoffTotals {
    /// Bucket start, epoch seconds.
    pub bucket: i64,
    /// Live backend.
    pub platform: String,
    /// Queue.
    pub queue: String,
    /// Answering agent.
    pub agent: String,
    /// Queued in the bucket.
    pub offered: u64,
    /// First attended in the bucket.
    pub answered: u64,
    /// Of those, within their queue's target.
    pub answered_within_sla: u64,
    /// The waits of those (the ones that have one), unordered.
    pub waits: Vec<f64>,
    /// Abandoned, closed in the bucket.
    pub abandoned: u64,
    /// Of those, short abandons.
    pub short_abandoned: u64,
    /// Missed, closed in the bucket.
    pub missed: u64,
    /// Sum of the first response times credited in the bucket.
    pub first_response_sum: f64,
    /// How many.
    pub first_response_count: u64,
    /// Sum of the handle times credited (closed) in the bucket.
    pub handle_sum: f64,
    /// How many.
    pub handle_count: u64,
}

/// Dispositions of one bucket and group, credited when the outcome became known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispositionTotals {
    /// Bucket start, epoch seconds.
    pub bucket: i64,
    /// Live backend.
    pub platform: String,
    /// Queue.
    pub queue: String,
    /// Answering agent.
    pub agent: String,
    /// An agent attended.
    pub completed: u64,
    /// The visitor left while waiting.
    pub abandoned: u64,
    /// The platform closed it while waiting.
    pub missed: u64,
    /// The hand-over failed.
    pub failed: u64,
}

/// The SLA report's aggregates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlaAggregates {
    /// Sums per instant kind, bucket and group (the answered waits with the answered counts).
    pub totals: Vec<HandoffTotals>,
}

/// A statement with its binds.
pub(crate) type Statement = (String, Vec<Bind>);

/// Shape every totals statement returns: `(bucket, platform, queue, agent, n1, n2, n3, sum, n4, keys)`;
/// `keys` (the answered statement's only) lists the [`wait_key`]s of the group's answered waits.
pub(crate) type TotalsRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<f64>,
    i64,
    Option<String>,
);

/// Which instant a totals statement credits (and so what its numbered columns mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instant {
    /// `queued_at`: n1 = offered.
    Offered,
    /// `attended_at`: n1 = answered, n2 = within target, keys = the waits.
    Answered,
    /// `closed_at`: n1 = abandoned, n2 = short, n3 = missed, sum/n4 = handle.
    Closed,
    /// `first_response_at`: sum/n4 = first response.
    FirstResponse,
    /// The disposition's instant: n1 = completed, n2 = abandoned, n3 = missed, n4 = failed.
    Disposition,
}

impl Instant {
    /// The instants of the SLA report.
    pub(crate) const SLA: [Instant; 4] = [
        Instant::Offered,
        Instant::Answered,
        Instant::Closed,
        Instant::FirstResponse,
    ];
}

const MICROS: i64 = 1_000_000;

/// The instant a disposition is credited at (as `analytics::facts::HandoffRow::from_handoff` decides it):
/// closed, else the latest instant the handoff has, else the conversation's latest event.
const DISPOSITION_AT: &str = "COALESCE(h.closed_at, h.attended_at, h.queued_at, h.requested_at, \
     (SELECT c.updated_at FROM conversations c WHERE c.id = h.conversation_id))";

impl HandoffReportQuery {
    /// `column` (micros) lies in a bucket of the range and credits something (after the epoch's first
    /// second, like the facts' `epoch` > 0).
    fn range(&self, column: &str) -> String {
        let from = self.first_bucket.max(1) * MICROS;
        let last = self.end_exclusive - 1;
        let to = (last - last.rem_euclid(self.bucket_seconds) + self.bucket_seconds) * MICROS;
        format!("{column} >= {from} AND {column} < {to}")
    }

    /// Start of the bucket (epoch seconds) holding `column` (micros).
    fn bucket(&self, column: &str) -> String {
        format!(
            "({column} / {MICROS} - ({column} / {MICROS}) % {})",
            self.bucket_seconds
        )
    }

    /// `g_platform, g_queue, g_agent` select items ('' when not grouped) and the grouping columns.
    fn dimensions(&self) -> (String, Vec<&'static str>) {
        let mut select = Vec::new();
        let mut group = vec!["b"];
        for (grouped, expr, alias) in [
            (self.by_platform, "h.backend", "g_platform"),
            (self.by_queue, "COALESCE(h.queue, '')", "g_queue"),
            (
                self.by_agent,
                "CASE WHEN h.answered = 1 THEN COALESCE(h.agent, '') ELSE '' END",
                "g_agent",
            ),
        ] {
            if grouped {
                select.push(format!("{expr} AS {alias}"));
                group.push(alias);
            } else {
                select.push(format!("'' AS {alias}"));
            }
        }
        (select.join(", "), group)
    }

    /// The grouped statement crediting `instant`; `sla` gives the targets and the short-abandon threshold.
    pub(crate) fn totals_sql(&self, instant: Instant, sla: &SlaConfig) -> Statement {
        let mut binds = Vec::new();
        let zero = "CAST(0 AS BIGINT)";
        let no_sum = "CAST(NULL AS DOUBLE PRECISION)";
        let no_keys = "CAST(NULL AS TEXT)";
        let (at, columns, filter) = match instant {
            Instant::Offered => (
                "h.queued_at",
                format!("COUNT(*), {zero}, {zero}, {no_sum}, {zero}, {no_keys}"),
                "",
            ),
            Instant::Answered => {
                let target = target_sql(sla, &mut binds);
                (
                    "h.attended_at",
                    format!(
                        "COUNT(*), COUNT(CASE WHEN h.sla_status = 'met' OR (h.sla_status <> 'breached' \
                         AND h.answered_wait_seconds <= {target}) THEN 1 END), {zero}, {no_sum}, {zero}, \
                         string_agg(CAST(h.answered_wait_key AS TEXT), ',')"
                    ),
                    " AND h.answered = 1",
                )
            }
            Instant::Closed => (
                "h.closed_at",
                format!(
                    "COUNT(CASE WHEN h.abandoned = 1 THEN 1 END), \
                     COUNT(CASE WHEN h.abandoned = 1 AND h.unanswered_wait_seconds < {} THEN 1 END), \
                     COUNT(CASE WHEN h.missed = 1 THEN 1 END), \
                     SUM(h.report_handle_seconds), COUNT(h.report_handle_seconds), {no_keys}",
                    sla.short_abandon_seconds
                ),
                "",
            ),
            Instant::FirstResponse => (
                "h.first_response_at",
                format!("{zero}, {zero}, {zero}, SUM(h.report_first_response_seconds), COUNT(*), {no_keys}"),
                "",
            ),
            Instant::Disposition => (
                DISPOSITION_AT,
                format!(
                    "COUNT(CASE WHEN h.disposition = 'completed' THEN 1 END), \
                     COUNT(CASE WHEN h.disposition = 'abandoned' THEN 1 END), \
                     COUNT(CASE WHEN h.disposition = 'missed' THEN 1 END), \
                     {no_sum}, \
                     COUNT(CASE WHEN h.disposition = 'failed' THEN 1 END), {no_keys}"
                ),
                " AND h.disposition IN ('completed', 'abandoned', 'missed', 'failed')",
            ),
        };
        let (dims, group) = self.dimensions();
        let sql = format!(
            "SELECT {} AS b, {dims}, {columns} FROM handoffs h WHERE {}{filter} GROUP BY {}",
            self.bucket(at),
            self.range(at),
            group.join(", ")
        );
        (sql, binds)
    }
}

/// The key `answered_wait_key` holds for a wait: its IEEE 754 bits as an integer that orders as
/// [`f64::total_cmp`] orders the waits. Integers cross from the database as exact text; no decimal
/// rendering of the `f64` is involved.
pub(crate) fn wait_key(seconds: f64) -> i64 {
    let bits = seconds.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// The wait [`wait_key`] made `key` of (the mapping is its own inverse).
pub(crate) fn wait_of_key(key: i64) -> f64 {
    f64::from_bits((key ^ (((key >> 63) as u64) >> 1) as i64) as u64)
}

/// The waits a list of [`wait_key`]s (comma-separated) stands for.
fn waits_of_keys(keys: &str) -> StoreResult<Vec<f64>> {
    keys.split(',')
        .map(|k| {
            k.trim()
                .parse::<i64>()
                .map(wait_of_key)
                .map_err(|e| StoreError::Corrupt(format!("bad answered_wait_key `{k}`: {e}")))
        })
        .collect()
}

/// The answer target of the handoff's queue (`SlaConfig::target_for`): queue names are bound.
fn target_sql(sla: &SlaConfig, binds: &mut Vec<Bind>) -> String {
    if sla.queues.is_empty() {
        return sla.answer_seconds.to_string();
    }
    let mut sql = String::from("CASE h.queue");
    for (queue, target) in &sla.queues {
        binds.push(Bind::Text(queue.clone()));
        sql.push_str(&format!(" WHEN ${} THEN {target}", binds.len()));
    }
    sql.push_str(&format!(" ELSE {} END", sla.answer_seconds));
    sql
}

fn count(n: i64) -> u64 {
    n.max(0) as u64
}

/// The totals a row of `instant`'s statement carries.
pub(crate) fn decode_totals(instant: Instant, row: TotalsRow) -> StoreResult<HandoffTotals> {
    let (bucket, platform, queue, agent, n1, n2, n3, sum, n4, keys) = row;
    let mut t = HandoffTotals {
        bucket,
        platform,
        queue,
        agent,
        ..HandoffTotals::default()
    };
    match instant {
        Instant::Offered => t.offered = count(n1),
        Instant::Answered => {
            t.answered = count(n1);
            t.answered_within_sla = count(n2);
            if let Some(keys) = keys.filter(|k| !k.is_empty()) {
                t.waits = waits_of_keys(&keys)?;
            }
        }
        Instant::Closed => {
            t.abandoned = count(n1);
            t.short_abandoned = count(n2);
            t.missed = count(n3);
            t.handle_sum = sum.unwrap_or(0.0);
            t.handle_count = count(n4);
        }
        Instant::FirstResponse => {
            t.first_response_sum = sum.unwrap_or(0.0);
            t.first_response_count = count(n4);
        }
        Instant::Disposition => {}
    }
    Ok(t)
}

/// The dispositions a row of the disposition statement carries.
pub(crate) fn decode_dispositions(row: TotalsRow) -> DispositionTotals {
    let (bucket, platform, queue, agent, completed, abandoned, missed, _, failed, _) = row;
    DispositionTotals {
        bucket,
        platform,
        queue,
        agent,
        completed: count(completed),
        abandoned: count(abandoned),
        missed: count(missed),
        failed: count(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(bucket_seconds: i64) -> HandoffReportQuery {
        HandoffReportQuery {
            first_bucket: 7200,
            end_exclusive: 10_801,
            bucket_seconds,
            by_platform: false,
            by_queue: true,
            by_agent: false,
        }
    }

    #[test]
    fn the_range_holds_every_instant_of_the_buckets_that_start_before_the_end() {
        // Buckets 7200 and 10800 (it starts before 10801): instants up to 14400 exclusive.
        assert_eq!(query(3600).range("x"), "x >= 7200000000 AND x < 14400000000");
        let mut q = query(3600);
        q.first_bucket = 0;
        q.end_exclusive = 3600;
        assert_eq!(q.range("x"), "x >= 1000000 AND x < 3600000000");
    }

    #[test]
    fn queue_targets_are_bound_and_dimensions_not_grouped_read_empty() {
        let mut sla = SlaConfig::default();
        sla.queues.insert("fa'st".into(), 30);
        let (sql, binds) = query(3600).totals_sql(Instant::Answered, &sla);
        assert!(sql.contains("CASE h.queue WHEN $1 THEN 30 ELSE 60 END"), "{sql}");
        assert_eq!(binds, vec![Bind::Text("fa'st".into())]);
        assert!(
            sql.contains("'' AS g_platform") && sql.contains("GROUP BY b, g_queue"),
            "{sql}"
        );
        // The waits come with the answered counts, in the same buckets and groups.
        let (waits, _) = query(86_400).totals_sql(Instant::Answered, &sla);
        assert!(
            waits.contains("% 86400")
                && waits.contains("COALESCE(h.queue, '') AS g_queue")
                && waits.contains("string_agg(CAST(h.answered_wait_key AS TEXT), ',')"),
            "{waits}"
        );
    }

    #[test]
    fn wait_keys_give_back_the_very_waits_and_order_like_them() {
        let waits = [
            f64::NEG_INFINITY,
            -1.5,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            0.1,
            0.1 + 0.2,
            1.25,
            59.999,
            60.0,
            86_400.001,
            f64::MAX,
            f64::INFINITY,
        ];
        for pair in waits.windows(2) {
            assert!(wait_key(pair[0]) < wait_key(pair[1]), "{pair:?}");
        }
        for w in waits {
            assert_eq!(wait_of_key(wait_key(w)).to_bits(), w.to_bits(), "{w}");
        }
        let keys: Vec<String> = waits.iter().map(|w| wait_key(*w).to_string()).collect();
        let back = waits_of_keys(&keys.join(",")).unwrap();
        assert_eq!(
            back.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
            waits.iter().map(|w| w.to_bits()).collect::<Vec<_>>()
        );
        assert!(waits_of_keys("12,x").is_err());
    }
}
