//! Rollups per hour and per day by platform, queue and agent, rebuilt with INSERT ... SELECT from the
//! deduplicated handoff facts (never by materialized views: see `migrations/clickhouse/0002_rollups.sql`).
//!
//! A refresh recomputes whole buckets: every group of the bucket plus a marker row, all with one `built_at`, so
//! `handoff_rollup_current` shows exactly the latest build of each bucket. Hours to refresh are recorded in
//! `rollup_dirty` before the facts that touch them are written, so a crash in between is repaired by the next
//! refresh.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::facts::epoch;
use super::reports::Interval;
use super::{Analytics, AnalyticsResult};

/// Most buckets refreshed by one statement (its lists of them stay well under `max_query_size`, 256 KiB).
pub(crate) const REFRESH_CHUNK: usize = 1000;

static LAST_BUILD: AtomicU64 = AtomicU64::new(0);

/// A strictly increasing build version for this process (microseconds since the epoch).
pub(crate) fn next_build_version() -> u64 {
    let now = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
    let mut last = LAST_BUILD.load(Ordering::SeqCst);
    loop {
        let next = now.max(last + 1);
        match LAST_BUILD.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

fn datetime_list(buckets: &BTreeSet<u32>) -> String {
    buckets
        .iter()
        .map(|b| format!("toDateTime({b}, 'UTC')"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn truncate_sql(interval: Interval, column: &str) -> String {
    match interval {
        Interval::Hour => format!("toStartOfHour({column})"),
        Interval::Day => format!("toStartOfDay({column})"),
    }
}

/// Platform of a bucket's marker row. The table's key has no `marker` column, so the marker needs a key no
/// real group has: with `''` it replaced the group of hand-overs whose platform, queue and agent are all
/// unknown (a hand-over that failed before it was queued).
pub(crate) const MARKER_PLATFORM: &str = "(marker)";

/// The handoff columns holding the instants a handoff credits.
const CREDIT_COLUMNS: [&str; 5] = [
    "offered_at",
    "answered_at",
    "closed_at",
    "first_response_at",
    "disposition_at",
];

/// The statement rebuilding `buckets` (bucket starts, epoch seconds) of one grain from `handoffs`.
pub(crate) fn refresh_sql(interval: Interval, buckets: &BTreeSet<u32>, built_at: u64) -> String {
    let grain = interval.as_str();
    let list = datetime_list(buckets);
    let bucket_of_p = truncate_sql(interval, "p.2");
    // The keys of the rows that credit one of the buckets: a plain filter on the five columns (no ARRAY
    // JOIN, so ClickHouse reads the time columns first and the key columns only of the granules that match).
    let seconds: Vec<String> = buckets.iter().map(u32::to_string).collect();
    let seconds = seconds.join(", ");
    let crediting = CREDIT_COLUMNS
        .iter()
        .map(|c| {
            format!(
                "(toUInt32({c}) > 0 AND toUInt32({}) IN ({seconds}))",
                truncate_sql(interval, c)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "INSERT INTO handoff_rollup (grain, bucket, platform, queue, agent, marker, offered, answered, \
         answered_within_sla, abandoned, short_abandoned, missed, wait_state, wait_sum, wait_count, \
         first_response_sum, first_response_count, handle_sum, handle_count, completed, disposition_abandoned, \
         disposition_missed, failed, built_at) \
         SELECT '{grain}', {bucket_of_p} AS b, platform, queue, agent, 0, \
         countIf(p.1 = 1), \
         countIf(p.1 = 2), \
         countIf(p.1 = 2 AND answered_within_sla = 1), \
         countIf(p.1 = 3 AND abandoned = 1), \
         countIf(p.1 = 3 AND short_abandoned = 1), \
         countIf(p.1 = 3 AND missed = 1), \
         quantilesStateIf(0.5, 0.9)(wait_seconds, p.1 = 2 AND has_wait = 1), \
         sumIf(wait_seconds, p.1 = 2 AND has_wait = 1), \
         countIf(p.1 = 2 AND has_wait = 1), \
         sumIf(first_response_seconds, p.1 = 4), \
         countIf(p.1 = 4), \
         sumIf(handle_seconds, p.1 = 3 AND has_handle = 1), \
         countIf(p.1 = 3 AND has_handle = 1), \
         countIf(p.1 = 5 AND disposition = 'completed'), \
         countIf(p.1 = 5 AND disposition = 'abandoned'), \
         countIf(p.1 = 5 AND disposition = 'missed'), \
         countIf(p.1 = 5 AND disposition = 'failed'), \
         {built_at} \
         FROM handoffs FINAL \
         ARRAY JOIN [(toUInt8(1), offered_at), (toUInt8(2), answered_at), (toUInt8(3), closed_at), \
         (toUInt8(4), first_response_at), (toUInt8(5), disposition_at)] AS p \
         WHERE deleted = 0 AND toUInt32(p.2) > 0 AND {bucket_of_p} IN ({list}) \
         AND (started_at, conversation_id, idx) IN (SELECT started_at, conversation_id, idx FROM handoffs \
         WHERE {crediting}) \
         GROUP BY b, platform, queue, agent \
         UNION ALL \
         SELECT '{grain}', m, '{MARKER_PLATFORM}', '', '', 1, 0, 0, 0, 0, 0, 0, \
         quantilesStateIf(0.5, 0.9)(toFloat64(0), 0), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {built_at} \
         FROM system.one ARRAY JOIN [{list}] AS m GROUP BY m"
    )
}

/// Rebuilds the rollups of `hours` (hour starts, epoch seconds) and of the days holding them.
pub(crate) async fn refresh_hours(analytics: &Analytics, hours: &BTreeSet<u32>) -> AnalyticsResult<()> {
    let hours: Vec<u32> = hours.iter().map(|h| Interval::Hour.truncate(*h)).collect();
    for chunk in hours.chunks(REFRESH_CHUNK) {
        let hour_set: BTreeSet<u32> = chunk.iter().copied().collect();
        let day_set: BTreeSet<u32> = chunk.iter().map(|h| Interval::Day.truncate(*h)).collect();
        for (interval, set) in [(Interval::Hour, &hour_set), (Interval::Day, &day_set)] {
            let sql = refresh_sql(interval, set, next_build_version());
            analytics.client().query(&sql).execute().await?;
        }
    }
    Ok(())
}

#[derive(Row, Serialize, Deserialize)]
struct DirtyRow {
    hour: u32,
    dirty: u8,
    version: u64,
}

#[derive(Row, Deserialize)]
struct HourRow {
    hour: u32,
}

async fn write_dirty(analytics: &Analytics, hours: &BTreeSet<u32>, dirty: u8) -> AnalyticsResult<()> {
    if hours.is_empty() {
        return Ok(());
    }
    let version = next_build_version();
    let mut insert = analytics.client().insert::<DirtyRow>("rollup_dirty")?;
    for hour in hours {
        insert
            .write(&DirtyRow {
                hour: Interval::Hour.truncate(*hour),
                dirty,
                version,
            })
            .await?;
    }
    insert.end().await?;
    Ok(())
}

/// Records hours whose rollups must be rebuilt (before writing the facts that change them).
pub(crate) async fn mark_dirty(analytics: &Analytics, hours: &BTreeSet<u32>) -> AnalyticsResult<()> {
    write_dirty(analytics, hours, 1).await
}

/// Hours recorded as needing a rebuild.
pub(crate) async fn dirty_hours(analytics: &Analytics) -> AnalyticsResult<BTreeSet<u32>> {
    let rows: Vec<HourRow> = analytics
        .client()
        .query("SELECT toUInt32(hour) AS h FROM rollup_dirty FINAL WHERE dirty = 1 ORDER BY h")
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|r| r.hour).collect())
}

/// Rebuilds every dirty hour (and its day), then records them as clean. Returns how many hours.
pub(crate) async fn refresh_dirty(analytics: &Analytics) -> AnalyticsResult<usize> {
    let hours = dirty_hours(analytics).await?;
    if hours.is_empty() {
        return Ok(0);
    }
    refresh_hours(analytics, &hours).await?;
    write_dirty(analytics, &hours, 0).await?;
    Ok(hours.len())
}

/// Rebuilds every bucket from `since` (all when None): the hours in which some handoff credits a metric and
/// the hours that have rollup rows (so buckets whose facts vanished are emptied). Returns how many hours.
pub async fn rebuild(analytics: &Analytics, since: Option<DateTime<Utc>>) -> AnalyticsResult<usize> {
    let from = epoch(since).max(1);
    let rows: Vec<HourRow> = analytics
        .client()
        .query(
            "SELECT DISTINCT h FROM ( \
             SELECT toUInt32(toStartOfHour(p)) AS h FROM handoffs FINAL \
             ARRAY JOIN [offered_at, answered_at, closed_at, first_response_at, disposition_at] AS p \
             WHERE deleted = 0 AND toUInt32(p) >= ? \
             UNION ALL \
             SELECT toUInt32(bucket) AS h FROM handoff_rollup WHERE grain = 'hour' AND toUInt32(bucket) >= ?) \
             ORDER BY h",
        )
        .bind(Interval::Hour.truncate(from))
        .bind(Interval::Hour.truncate(from))
        .fetch_all()
        .await?;
    let hours: BTreeSet<u32> = rows.into_iter().map(|r| r.hour).collect();
    refresh_hours(analytics, &hours).await?;
    Ok(hours.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_versions_strictly_increase() {
        let a = next_build_version();
        let b = next_build_version();
        assert!(b > a);
    }

    #[test]
    fn refresh_statement_names_every_bucket_and_a_marker() {
        let set: BTreeSet<u32> = [3600, 7200].into_iter().collect();
        let sql = refresh_sql(Interval::Hour, &set, 42);
        assert!(sql.contains("toStartOfHour(p.2) IN (toDateTime(3600, 'UTC'), toDateTime(7200, 'UTC'))"));
        assert!(sql.contains("ARRAY JOIN [toDateTime(3600, 'UTC'), toDateTime(7200, 'UTC')] AS m"));
        assert_eq!(sql.matches(", 42").count(), 2);
        assert!(!sql.contains('?'));
        let day = refresh_sql(Interval::Day, &set, 1);
        assert!(day.contains("'day'") && day.contains("toStartOfDay(p.2)"));
    }
}
