//! The handoff aggregates behind the store-computed reports (`?source=store`): SQL over the `handoffs` rows,
//! the same text on both backends, so a report reads a few grouped rows instead of every conversation.
//!
//! Each metric is credited to the bucket in which its timer stops (METRICS.md), exactly as the ClickHouse
//! rollups do (`analytics::rollups::refresh_sql`): one statement per instant (queued, first attended,
//! closed, first response; and the disposition's instant for the disposition report), each reading only the
//! rows whose instant lies in the range, from an index led by the instant's hour that holds every column the
//! statement reads (migration `20261210000100_handoff_report_indexes`): SQLite groups the rows by hour and
//! index dimensions as it reads them, without sorting, and an outer statement adds those few rows up into
//! the report's buckets and groups, with exact sums only (see [`HandoffReportQuery::totals_sql`]). The
//! per-handoff values (answered, abandoned, missed, the waits, first response and handle times, the first
//! response's and the disposition's instants) are decided in Rust by `projection::metrics` when the row is
//! written (`codec::handoff_rows`); the two that depend on the SLA configuration in force when the report is
//! read are decided here, from those values, as `metrics` defines them:
//! - answered within target ([`metrics::is_answered_within_sla`]): `sla_status` `met`, or not `breached` and the
//!   wait at most the queue's target;
//! - short abandon ([`metrics::is_short_abandon`]): abandoned, and waited less than `sla.short_abandon_seconds`.
//!
//! Sums of times are exact: each row also keeps its first response and handle times as integer parts
//! ([`ExactTime`]) whose sums, rounded once, are the sum of the `f64`s, whatever the grouping on the way.
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
    /// Bucket length (3600 or 86400: whole hours, the grain of the report indexes).
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

/// Shape every totals statement returns: `(bucket, platform, queue, agent, n1, n2, n3, n4, whole, frac_hi,
/// frac_lo, rest, keys)`: four counts, a sum of times as the three integer sums of their [`ExactTime`] parts
/// (plus `rest`, the plain sum of the times that have none), and `keys` (the answered statement's only), the
/// [`wait_key`]s of the group's answered waits.
pub(crate) type TotalsRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
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

    /// The column holding the instant (micros); each has an index led by its hour (`HOUR_MICROS`).
    fn column(self) -> &'static str {
        match self {
            Instant::Offered => "h.queued_at",
            Instant::Answered => "h.attended_at",
            Instant::Closed => "h.closed_at",
            Instant::FirstResponse => "h.first_response_at",
            Instant::Disposition => "h.disposition_at",
        }
    }
}

const MICROS: i64 = 1_000_000;

/// The grain of the report indexes: each instant's index is led by `instant / HOUR_MICROS` (the hour since
/// the epoch; migration `20261210000100_handoff_report_indexes`), so a statement reads the hours of its range
/// from the index in order and groups them as it reads, without sorting. Buckets are whole hours.
const HOUR_MICROS: i64 = 3_600_000_000;

/// The grouping columns of the report indexes, after the hour, in index order: a statement groups by the
/// hour and the shortest prefix of these that holds every dimension asked for (its value, or a constant of
/// the column's type for the columns after the prefix).
const INDEX_DIMENSIONS: [(&str, &str); 4] = [
    ("backend", "CAST('' AS TEXT)"),
    ("queue", "CAST(NULL AS TEXT)"),
    ("answered", "CAST(0 AS BIGINT)"),
    ("agent", "CAST(NULL AS TEXT)"),
];

/// The instant a disposition is credited at (as `analytics::facts::HandoffRow::from_handoff` decides it):
/// closed, else the latest instant the handoff has (both: `disposition_at`, written with the row), else the
/// conversation's latest event (read at report time: it moves without the handoff row being rewritten).
const DISPOSITION_UNPLACED_AT: &str = "u.updated_at";

impl HandoffReportQuery {
    /// Micros: the range's instants lie in `[from, to)`, buckets whose start is before `end_exclusive`, and
    /// after the epoch's first second (like the facts' `epoch` > 0).
    fn bounds(&self) -> (i64, i64) {
        let from = self.first_bucket.max(1) * MICROS;
        let last = self.end_exclusive - 1;
        let to = (last - last.rem_euclid(self.bucket_seconds) + self.bucket_seconds) * MICROS;
        (from, to)
    }

    /// `column` (micros) lies in a bucket of the range and credits something.
    fn range(&self, column: &str) -> String {
        let (from, to) = self.bounds();
        format!("{column} >= {from} AND {column} < {to}")
    }

    /// [`Self::range`] through the hour of `column` (what its index is led by); the instant itself is
    /// compared only where a bound is not a whole hour (the epoch's first second).
    fn hour_range(&self, column: &str) -> String {
        let (from, to) = self.bounds();
        let hour = format!("{column} / {HOUR_MICROS}");
        let mut sql = format!(
            "{column} IS NOT NULL AND {hour} >= {} AND {hour} < {}",
            from.div_euclid(HOUR_MICROS),
            to.div_euclid(HOUR_MICROS) + i64::from(to.rem_euclid(HOUR_MICROS) != 0)
        );
        if from.rem_euclid(HOUR_MICROS) != 0 {
            sql.push_str(&format!(" AND {column} >= {from}"));
        }
        if to.rem_euclid(HOUR_MICROS) != 0 {
            sql.push_str(&format!(" AND {column} < {to}"));
        }
        sql
    }

    /// How many of [`INDEX_DIMENSIONS`] the inner statement groups by.
    fn prefix(&self) -> usize {
        if self.by_agent {
            4
        } else if self.by_queue {
            2
        } else {
            usize::from(self.by_platform)
        }
    }

    /// The inner statement's grouping columns as select items (`k` the hour, then [`INDEX_DIMENSIONS`])
    /// and its `GROUP BY` list, for the instant in `at`.
    fn inner_keys(&self, at: &str) -> (String, String) {
        let hour = format!("{at} / {HOUR_MICROS}");
        let mut select = vec![format!("{hour} AS k")];
        let mut group = vec![hour];
        for (i, (column, constant)) in INDEX_DIMENSIONS.into_iter().enumerate() {
            if i < self.prefix() {
                select.push(format!("h.{column} AS {column}"));
                group.push(format!("h.{column}"));
            } else {
                select.push(format!("{constant} AS {column}"));
            }
        }
        (select.join(", "), group.join(", "))
    }

    /// The outer statement's dimensions ('' when not grouped) and its grouping columns.
    fn dimensions(&self) -> (String, Vec<&'static str>) {
        let mut select = Vec::new();
        let mut group = vec!["b"];
        for (grouped, expr, alias) in [
            (self.by_platform, "t.backend", "g_platform"),
            (self.by_queue, "COALESCE(t.queue, '')", "g_queue"),
            (
                self.by_agent,
                "CASE WHEN t.answered = 1 THEN COALESCE(t.agent, '') ELSE '' END",
                "g_agent",
            ),
        ] {
            if grouped {
                select.push(format!("{expr} AS {alias}"));
                group.push(alias);
            } else {
                select.push(format!("CAST('' AS TEXT) AS {alias}"));
            }
        }
        (select.join(", "), group)
    }

    /// The statement crediting `instant`; `sla` gives the targets and the short-abandon threshold.
    ///
    /// Two levels: the inner statement reads the instant's index over the hours of the range and groups
    /// rows by hour and index dimensions as it reads them (no sort: the index is in that order); the outer
    /// one adds those few rows up into the report's buckets and groups. Every sum the outer level takes is
    /// exact (counts, the integer parts of [`ExactTime`]), so the totals do not depend on how the rows were
    /// grouped on the way.
    pub(crate) fn totals_sql(&self, instant: Instant, sla: &SlaConfig) -> Statement {
        let mut binds = Vec::new();
        let zero = "CAST(0 AS BIGINT)";
        let no_keys = "CAST(NULL AS TEXT)";
        let no_sum = || {
            vec![
                "CAST(NULL AS BIGINT)".to_string(),
                "CAST(NULL AS BIGINT)".to_string(),
                "CAST(NULL AS BIGINT)".to_string(),
                "CAST(NULL AS DOUBLE PRECISION)".to_string(),
            ]
        };
        let exact_sum = |time: &str| {
            let [whole, hi, lo] = ExactTime::columns(time);
            vec![
                format!("SUM(h.{whole})"),
                format!("SUM(h.{hi})"),
                format!("SUM(h.{lo})"),
                format!("SUM(CASE WHEN h.{whole} IS NULL THEN h.{time} END)"),
            ]
        };
        // n1, n2, n3, n4, then the sum (three exact parts and the rest), then the keys.
        let (counts, sum, keys, filter): ([String; 4], Vec<String>, &str, &str) = match instant {
            Instant::Offered => (
                ["COUNT(*)".into(), zero.into(), zero.into(), zero.into()],
                no_sum(),
                no_keys,
                "",
            ),
            Instant::Answered => {
                let target = target_sql(sla, &mut binds);
                (
                    [
                        "COUNT(*)".into(),
                        format!(
                            "COUNT(CASE WHEN h.sla_status = 'met' OR (h.sla_status <> 'breached' \
                             AND h.answered_wait_seconds <= {target}) THEN 1 END)"
                        ),
                        zero.into(),
                        zero.into(),
                    ],
                    no_sum(),
                    "string_agg(CAST(h.answered_wait_key AS TEXT), ',')",
                    // Answered is attended (`metrics::is_answered`): every row with an `attended_at` has
                    // `answered` = 1. No filter on `answered` itself: SQLite would then take the column as
                    // constant and sort the rows grouped by agent instead of reading them in index order.
                    "",
                )
            }
            Instant::Closed => (
                [
                    "COUNT(CASE WHEN h.abandoned = 1 THEN 1 END)".into(),
                    format!(
                        "COUNT(CASE WHEN h.abandoned = 1 AND h.unanswered_wait_seconds < {} THEN 1 END)",
                        sla.short_abandon_seconds
                    ),
                    "COUNT(CASE WHEN h.missed = 1 THEN 1 END)".into(),
                    "COUNT(h.report_handle_seconds)".into(),
                ],
                exact_sum("report_handle_seconds"),
                no_keys,
                "",
            ),
            Instant::FirstResponse => (
                [zero.into(), zero.into(), zero.into(), "COUNT(*)".into()],
                exact_sum("report_first_response_seconds"),
                no_keys,
                "",
            ),
            Instant::Disposition => (
                [
                    "COUNT(CASE WHEN h.disposition = 'completed' THEN 1 END)".into(),
                    "COUNT(CASE WHEN h.disposition = 'abandoned' THEN 1 END)".into(),
                    "COUNT(CASE WHEN h.disposition = 'missed' THEN 1 END)".into(),
                    "COUNT(CASE WHEN h.disposition = 'failed' THEN 1 END)".into(),
                ],
                no_sum(),
                no_keys,
                " AND h.disposition IN ('completed', 'abandoned', 'missed', 'failed')",
            ),
        };
        let aggregates = counts
            .iter()
            .chain(&sum)
            .map(String::as_str)
            .chain([keys])
            .enumerate()
            .map(|(i, expr)| format!("{expr} AS c{}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let at = instant.column();
        let (select, group) = self.inner_keys(at);
        let mut inner = format!(
            "SELECT {select}, {aggregates} FROM handoffs h WHERE {}{filter} GROUP BY {group}",
            self.hour_range(at)
        );
        if instant == Instant::Disposition {
            // A disposition without any instant of its own (none today: closing sets `closed_at`) is
            // credited at its conversation's latest event.
            let (select, group) = self.inner_keys(DISPOSITION_UNPLACED_AT);
            inner.push_str(&format!(
                " UNION ALL SELECT {select}, {aggregates} FROM handoffs h \
                 JOIN conversations u ON u.id = h.conversation_id \
                 WHERE h.disposition IS NOT NULL AND h.disposition_at IS NULL AND {}{filter} GROUP BY {group}",
                self.range(DISPOSITION_UNPLACED_AT)
            ));
        }
        let (dims, group) = self.dimensions();
        let totals = (1..=7)
            .map(|n| format!("CAST(SUM(t.c{n}) AS BIGINT)"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT (t.k * 3600 - (t.k * 3600) % {}) AS b, {dims}, {totals}, SUM(t.c8), string_agg(t.c9, ',') \
             FROM ({inner}) t GROUP BY {}",
            self.bucket_seconds,
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

/// A time the reports sum (seconds, as `projection::metrics` computes it: whole milliseconds over 1000) as
/// integers whose sums give the exact sum of the `f64`s: the value times 2^62 (exact: a nonzero time of
/// milliseconds is at least 2^-10 seconds, so its lowest bit is worth at least 2^-62) in three parts, the
/// whole seconds (floor) and the fraction's upper and lower 31 bits. The integer sums add up in any order and
/// grouping to the same total, and [`ExactTime::sum`] rounds that total once: the sum of the very `f64`s,
/// correctly rounded (SQLite's compensated `SUM` of the `f64`s, which the statements used before, gave the
/// same bits in every answer compared; PostgreSQL's plain `SUM` of them depends on the order it reads them).
/// A time that has no such parts (not a multiple of 2^-62, or 2^40 seconds and more) keeps `NULL` parts and
/// is summed as a float beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExactTime {
    /// Whole seconds (floor), |whole| < 2^40.
    pub whole: i64,
    /// Fraction of a second times 2^62, upper 31 bits.
    pub frac_hi: i64,
    /// Lower 31 bits.
    pub frac_lo: i64,
}

const FRACTION_BITS: u32 = 62;
const HALF_BITS: u32 = 31;
const WHOLE_LIMIT: i128 = 1 << 40;

impl ExactTime {
    /// The columns holding the parts of the time in column `time`.
    pub(crate) fn columns(time: &str) -> [String; 3] {
        let stem = time.strip_suffix("_seconds").unwrap_or(time);
        [
            format!("{stem}_whole"),
            format!("{stem}_frac_hi"),
            format!("{stem}_frac_lo"),
        ]
    }

    /// The parts of `seconds`, when it has them.
    pub(crate) fn of(seconds: f64) -> Option<ExactTime> {
        if !seconds.is_finite() {
            return None;
        }
        if seconds == 0.0 {
            return Some(ExactTime {
                whole: 0,
                frac_hi: 0,
                frac_lo: 0,
            });
        }
        let bits = seconds.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1 << 52) - 1);
        let mantissa = if exponent == 0 {
            fraction << 1
        } else {
            fraction | (1 << 52)
        };
        // |seconds| = mantissa * 2^(exponent - 1075); times 2^62:
        let shift = exponent - 1075 + FRACTION_BITS as i32;
        let scaled: i128 = if shift >= 0 {
            if shift > 60 {
                return None;
            }
            i128::from(mantissa) << shift
        } else {
            let down = shift.unsigned_abs();
            if down >= 64 || mantissa & ((1u64 << down) - 1) != 0 {
                return None;
            }
            i128::from(mantissa >> down)
        };
        let scaled = if seconds < 0.0 { -scaled } else { scaled };
        let whole = scaled >> FRACTION_BITS;
        if !(-WHOLE_LIMIT..WHOLE_LIMIT).contains(&whole) {
            return None;
        }
        let fraction = scaled - (whole << FRACTION_BITS);
        Some(ExactTime {
            whole: whole as i64,
            frac_hi: (fraction >> HALF_BITS) as i64,
            frac_lo: (fraction & ((1 << HALF_BITS) - 1)) as i64,
        })
    }

    /// The sum of the times whose parts sum to `whole`, `frac_hi`, `frac_lo`, correctly rounded.
    pub(crate) fn sum(whole: i64, frac_hi: i64, frac_lo: i64) -> f64 {
        let scaled = (i128::from(whole) << FRACTION_BITS) + (i128::from(frac_hi) << HALF_BITS) + i128::from(frac_lo);
        // One rounding (i128 to f64, to nearest), then an exact scaling by a power of two.
        scaled as f64 * f64::from_bits(((1023 - FRACTION_BITS) as u64) << 52)
    }
}

/// A sum of times as a totals row carries it: the exact parts' sums, plus the plain sum of the times that
/// have none.
fn time_sum(whole: Option<i64>, frac_hi: Option<i64>, frac_lo: Option<i64>, rest: Option<f64>) -> f64 {
    let exact = ExactTime::sum(whole.unwrap_or(0), frac_hi.unwrap_or(0), frac_lo.unwrap_or(0));
    match rest {
        Some(rest) => exact + rest,
        None => exact,
    }
}

/// The totals a row of `instant`'s statement carries.
pub(crate) fn decode_totals(instant: Instant, row: TotalsRow) -> StoreResult<HandoffTotals> {
    let (bucket, platform, queue, agent, n1, n2, n3, n4, whole, frac_hi, frac_lo, rest, keys) = row;
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
            t.handle_sum = time_sum(whole, frac_hi, frac_lo, rest);
            t.handle_count = count(n4);
        }
        Instant::FirstResponse => {
            t.first_response_sum = time_sum(whole, frac_hi, frac_lo, rest);
            t.first_response_count = count(n4);
        }
        Instant::Disposition => {}
    }
    Ok(t)
}

/// The dispositions a row of the disposition statement carries.
pub(crate) fn decode_dispositions(row: TotalsRow) -> DispositionTotals {
    let (bucket, platform, queue, agent, completed, abandoned, missed, failed, ..) = row;
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
        // Buckets 7200 and 10800 (it starts before 10801): instants up to 14400 exclusive, hours 2 and 3.
        assert_eq!(query(3600).range("x"), "x >= 7200000000 AND x < 14400000000");
        assert_eq!(
            query(3600).hour_range("x"),
            "x IS NOT NULL AND x / 3600000000 >= 2 AND x / 3600000000 < 4"
        );
        let mut q = query(3600);
        q.first_bucket = 0;
        q.end_exclusive = 3600;
        assert_eq!(q.range("x"), "x >= 1000000 AND x < 3600000000");
        // The epoch's first second is no whole hour: the instant itself is compared.
        assert_eq!(
            q.hour_range("x"),
            "x IS NOT NULL AND x / 3600000000 >= 0 AND x / 3600000000 < 1 AND x >= 1000000"
        );
    }

    #[test]
    fn queue_targets_are_bound_and_dimensions_not_grouped_read_empty() {
        let mut sla = SlaConfig::default();
        sla.queues.insert("fa'st".into(), 30);
        let (sql, binds) = query(3600).totals_sql(Instant::Answered, &sla);
        assert!(sql.contains("CASE h.queue WHEN $1 THEN 30 ELSE 60 END"), "{sql}");
        assert_eq!(binds, vec![Bind::Text("fa'st".into())]);
        assert!(
            sql.contains("CAST('' AS TEXT) AS g_platform") && sql.ends_with("GROUP BY b, g_queue"),
            "{sql}"
        );
        // The inner statement groups by the hour and the index's dimensions up to the queue, in index order.
        assert!(
            sql.contains("GROUP BY h.attended_at / 3600000000, h.backend, h.queue)")
                && sql.contains("CAST(0 AS BIGINT) AS answered"),
            "{sql}"
        );
        // The waits come with the answered counts, in the same buckets and groups.
        let (waits, _) = query(86_400).totals_sql(Instant::Answered, &sla);
        assert!(
            waits.contains("% 86400")
                && waits.contains("COALESCE(t.queue, '') AS g_queue")
                && waits.contains("string_agg(CAST(h.answered_wait_key AS TEXT), ',') AS c9")
                && waits.contains("string_agg(t.c9, ',')"),
            "{waits}"
        );
        // Not grouped: by the hour alone; by agent: every dimension of the index.
        let mut q = query(3600);
        q.by_queue = false;
        assert!(q
            .totals_sql(Instant::Offered, &sla)
            .0
            .contains("GROUP BY h.queued_at / 3600000000)"));
        q.by_agent = true;
        assert!(q
            .totals_sql(Instant::Closed, &sla)
            .0
            .contains("GROUP BY h.closed_at / 3600000000, h.backend, h.queue, h.answered, h.agent)"));
    }

    #[test]
    fn dispositions_without_an_instant_of_their_own_are_read_at_the_conversations_latest_event() {
        let (sql, _) = query(3600).totals_sql(Instant::Disposition, &SlaConfig::default());
        assert!(
            sql.contains("WHERE h.disposition_at IS NOT NULL AND h.disposition_at / 3600000000 >= 2")
                && sql.contains(
                    "JOIN conversations u ON u.id = h.conversation_id WHERE h.disposition IS NOT NULL \
                     AND h.disposition_at IS NULL AND u.updated_at >= 7200000000 AND u.updated_at < 14400000000"
                ),
            "{sql}"
        );
    }

    #[test]
    fn exact_times_sum_to_the_correctly_rounded_sum_in_any_grouping() {
        let ms = [
            0i64,
            1,
            3,
            7,
            100,
            999,
            1001,
            12_345,
            59_999,
            86_400_001,
            3_600_000_007,
            -5,
            -1234,
        ];
        let times: Vec<f64> = ms.iter().map(|m| *m as f64 / 1000.0).collect();
        let parts: Vec<ExactTime> = times.iter().map(|t| ExactTime::of(*t).unwrap()).collect();
        let add = |ps: &[ExactTime]| {
            ps.iter().fold((0i64, 0i64, 0i64), |(w, h, l), p| {
                (w + p.whole, h + p.frac_hi, l + p.frac_lo)
            })
        };
        // One time: itself. Two: IEEE addition (correctly rounded).
        for (t, p) in times.iter().zip(&parts) {
            assert_eq!(
                ExactTime::sum(p.whole, p.frac_hi, p.frac_lo).to_bits(),
                t.to_bits(),
                "{t}"
            );
            assert!((0..1 << 31).contains(&p.frac_hi) && (0..1 << 31).contains(&p.frac_lo));
        }
        for (i, a) in times.iter().enumerate() {
            for (j, b) in times.iter().enumerate() {
                let (w, h, l) = add(&[parts[i], parts[j]]);
                assert_eq!(ExactTime::sum(w, h, l).to_bits(), (a + b).to_bits(), "{a} + {b}");
            }
        }
        // Many: the same total however they are grouped, and the exact one: 0.1 ten times is 1 (a plain
        // float sum gives 0.9999999999999999).
        let tenth = ExactTime::of(0.1).unwrap();
        let (w, h, l) = add(&[tenth; 10]);
        assert_eq!(ExactTime::sum(w, h, l), 1.0);
        let (w1, h1, l1) = add(&parts[..5]);
        let (w2, h2, l2) = add(&parts[5..]);
        let all = add(&parts);
        assert_eq!((w1 + w2, h1 + h2, l1 + l2), all);
        // No parts: not a multiple of 2^-62, too long, not finite.
        assert_eq!(ExactTime::of(1e-30), None);
        assert_eq!(ExactTime::of(2f64.powi(41)), None);
        assert_eq!(ExactTime::of(f64::NAN), None);
        assert!(ExactTime::of(2f64.powi(39) + 0.5).is_some());
        assert_eq!(
            ExactTime::columns("report_handle_seconds"),
            ["report_handle_whole", "report_handle_frac_hi", "report_handle_frac_lo"]
        );
    }

    #[test]
    fn a_sum_of_times_without_parts_is_added_to_the_exact_one() {
        let p = ExactTime::of(2.5).unwrap();
        assert_eq!(
            time_sum(Some(p.whole), Some(p.frac_hi), Some(p.frac_lo), Some(1e-30)),
            2.5 + 1e-30
        );
        assert_eq!(time_sum(None, None, None, None), 0.0);
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
