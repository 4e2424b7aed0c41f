//! SLA and disposition reports, and the per-conversation CSV. Two implementations give the same numbers:
//! pure functions over [`HandoffRow`]s built from the store's conversations, and queries over the ClickHouse
//! rollups. Every value is credited to the bucket in which its timer stops (METRICS.md).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, ToSchema};

use super::facts::{epoch, from_epoch, ConversationRow, Credit, HandoffRow};
use super::{Analytics, AnalyticsResult};
use crate::config::SlaConfig;
use crate::model::Conversation;
use crate::projection::metrics::{mean, percentile, service_level};
use crate::store::{ConversationFilter, HandoffReportQuery, Store, StoreResult};

/// How far before `since` the store is searched for conversations (by `started_at`) whose timers may stop
/// inside the range: a conversation started earlier than this is not seen by the store-computed reports.
pub(crate) const STORE_LOOKBACK: Duration = Duration::days(1);

/// Default report range when `since` is not given.
pub(crate) const DEFAULT_RANGE: Duration = Duration::days(7);

/// Bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// One hour (UTC).
    Hour,
    /// One day (UTC).
    Day,
}

impl Interval {
    /// Both grains, as stored in `handoff_rollup.grain`.
    pub const ALL: [Interval; 2] = [Interval::Hour, Interval::Day];

    /// Length in seconds.
    pub fn seconds(self) -> u32 {
        match self {
            Interval::Hour => 3600,
            Interval::Day => 86_400,
        }
    }

    /// Start of the bucket holding `secs` (UTC; days and hours have no DST in UTC).
    pub fn truncate(self, secs: u32) -> u32 {
        secs - secs % self.seconds()
    }

    /// Name in the API and in `handoff_rollup.grain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
        }
    }
}

impl FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hour" => Ok(Interval::Hour),
            "day" => Ok(Interval::Day),
            other => Err(format!("interval must be `hour` or `day`, not `{other}`")),
        }
    }
}

/// A dimension a report can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The live backend of the handoff.
    Platform,
    /// Its queue.
    Queue,
    /// The agent who answered it.
    Agent,
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "platform" => Ok(GroupBy::Platform),
            "queue" => Ok(GroupBy::Queue),
            "agent" => Ok(GroupBy::Agent),
            other => Err(format!("group_by takes platform, queue and agent, not `{other}`")),
        }
    }
}

/// Where a report is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReportSource {
    /// The ClickHouse rollups.
    Clickhouse,
    /// The store's conversations.
    Store,
}

impl fmt::Display for ReportSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReportSource::Clickhouse => "clickhouse",
            ReportSource::Store => "store",
        })
    }
}

/// Query parameters of the report endpoints, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportParams {
    /// Start (RFC 3339, from 1970); buckets from the one holding it; before `until`. Default (also when empty):
    /// `until` minus 7 days.
    #[param(schema_with = time_or_empty)]
    pub since: Option<String>,
    /// End (RFC 3339, exclusive, before 2106): buckets starting before it. Default (also when empty): now.
    #[param(schema_with = time_or_empty)]
    pub until: Option<String>,
    /// Bucket size (default, also when empty: `hour`).
    #[param(schema_with = interval_or_empty)]
    pub interval: Option<String>,
    /// Comma-separated subset of `platform,queue,agent`.
    #[param(pattern = r"^\s*(platform|queue|agent)?\s*(,\s*(platform|queue|agent)?\s*)*$")]
    pub group_by: Option<String>,
    /// Force `clickhouse` or `store` (default, also when empty: ClickHouse when configured; `clickhouse` is
    /// refused when it is not).
    #[param(schema_with = source_or_empty)]
    pub source: Option<String>,
}

/// A report parameter's schema: `schema`, or the empty string (which reads as "not given").
fn or_empty(schema: impl Into<RefOr<Schema>>, description: &str) -> Schema {
    AnyOfBuilder::new()
        .description(Some(description))
        .item(schema)
        .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(0)))
        .into()
}

fn time_or_empty() -> Schema {
    or_empty(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        "An RFC 3339 time; empty reads as not given",
    )
}

fn interval_or_empty() -> Schema {
    or_empty(
        Ref::from_schema_name("Interval"),
        "`hour` or `day`; empty reads as not given",
    )
}

fn source_or_empty() -> Schema {
    or_empty(
        Ref::from_schema_name("ReportSource"),
        "`clickhouse` or `store`; empty reads as not given",
    )
}

/// A parameter that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub(crate) struct ParamError {
    /// Parameter name.
    pub param: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn param_error(param: &'static str, message: impl Into<String>) -> ParamError {
    ParamError {
        param,
        message: message.into(),
    }
}

fn parse_time(param: &'static str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ParamError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| param_error(param, format!("`{v}` is not an RFC 3339 time ({e})")))
        })
        .transpose()
}

/// A validated report query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReportQuery {
    /// Start: buckets from the one holding it.
    pub since: DateTime<Utc>,
    /// End (exclusive): buckets starting before it.
    pub until: DateTime<Utc>,
    /// Bucket size.
    pub interval: Interval,
    /// Dimensions, in the order given, without repeats.
    pub group_by: Vec<GroupBy>,
}

impl ReportQuery {
    /// Validates raw parameters; `now` is the default `until`.
    pub(crate) fn from_params(params: &ReportParams, now: DateTime<Utc>) -> Result<ReportQuery, ParamError> {
        let until = parse_time("until", params.until.as_deref())?.unwrap_or(now);
        let since = parse_time("since", params.since.as_deref())?.unwrap_or(until - DEFAULT_RANGE);
        if since >= until {
            return Err(param_error("since", "must be before until"));
        }
        if since.timestamp() < 0 || until.timestamp() > i64::from(u32::MAX) {
            return Err(param_error("since", "must lie between 1970 and 2106"));
        }
        let interval = match params.interval.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => s.parse().map_err(|e: String| param_error("interval", e))?,
            None => Interval::Hour,
        };
        let mut group_by = Vec::new();
        for part in params.group_by.as_deref().unwrap_or("").split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let g: GroupBy = part.parse().map_err(|e: String| param_error("group_by", e))?;
            if !group_by.contains(&g) {
                group_by.push(g);
            }
        }
        Ok(ReportQuery {
            since,
            until,
            interval,
            group_by,
        })
    }

    /// First bucket start included (epoch seconds).
    pub(crate) fn first_bucket(&self) -> u32 {
        self.interval.truncate(epoch(Some(self.since)))
    }

    /// Bucket starts must be below this (epoch seconds, rounded up).
    pub(crate) fn end_exclusive(&self) -> u32 {
        let secs = self.until.timestamp() + i64::from(self.until.timestamp_subsec_nanos() > 0);
        u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
    }

    fn grouped(&self, g: GroupBy) -> bool {
        self.group_by.contains(&g)
    }

    /// Parses the `source` parameter.
    pub(crate) fn source_param(params: &ReportParams) -> Result<Option<ReportSource>, ParamError> {
        match params.source.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some("clickhouse") => Ok(Some(ReportSource::Clickhouse)),
            Some("store") => Ok(Some(ReportSource::Store)),
            Some(other) => Err(param_error(
                "source",
                format!("must be `clickhouse` or `store`, not `{other}`"),
            )),
        }
    }
}

/// One row of the SLA report (API.md, METRICS.md). `platform`, `queue` and `agent` are present only when
/// the report is grouped by them (null: not known, e.g. the agent of an unanswered handoff).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlaRow {
    /// Bucket start, RFC 3339 UTC.
    pub bucket: String,
    /// Live backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub platform: Option<Option<String>>,
    /// Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub queue: Option<Option<String>>,
    /// Answering agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub agent: Option<Option<String>>,
    /// Handoffs queued in the bucket.
    pub offered: u64,
    /// Handoffs first attended in the bucket.
    pub answered: u64,
    /// Of those, answered within their queue's target.
    pub answered_within_sla: u64,
    /// Visitor left while waiting, closed in the bucket.
    pub abandoned: u64,
    /// Of those, quicker than `sla.short_abandon_seconds`.
    pub short_abandoned: u64,
    /// Platform closed while waiting, closed in the bucket.
    pub missed: u64,
    /// answered_within_sla / (answered + abandoned + missed - short_abandoned); null when that is 0.
    pub service_level: Option<f64>,
    /// Median wait of the handoffs answered in the bucket.
    pub wait_p50_seconds: Option<f64>,
    /// 90th percentile wait of the handoffs answered in the bucket.
    pub wait_p90_seconds: Option<f64>,
    /// Mean first response time, credited when the first agent message was sent.
    pub avg_first_response_seconds: Option<f64>,
    /// Mean handle time, credited at close.
    pub avg_handle_seconds: Option<f64>,
}

/// One row of the disposition report, credited when the outcome became known (close).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DispositionRow {
    /// Bucket start, RFC 3339 UTC.
    pub bucket: String,
    /// Live backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub platform: Option<Option<String>>,
    /// Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub queue: Option<Option<String>>,
    /// Answering agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub agent: Option<Option<String>>,
    /// An agent attended.
    pub completed: u64,
    /// The visitor left while waiting.
    pub abandoned: u64,
    /// The platform closed it while waiting.
    pub missed: u64,
    /// The hand-over failed.
    pub failed: u64,
    /// All of the above.
    pub total: u64,
}

/// The answer of `GET /v1/reports/sla`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct SlaReport {
    /// Where it was computed.
    pub source: ReportSource,
    /// Rows ordered by bucket, then the grouped dimensions.
    pub rows: Vec<SlaRow>,
}

/// The answer of `GET /v1/reports/dispositions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct DispositionReport {
    /// Where it was computed.
    pub source: ReportSource,
    /// Rows ordered by bucket, then the grouped dimensions.
    pub rows: Vec<DispositionRow>,
}

/// Bucket + grouped dimensions (None when not grouped).
type Key = (u32, Option<String>, Option<String>, Option<String>);

fn key_of(q: &ReportQuery, bucket: u32, platform: &str, queue: &str, agent: &str) -> Key {
    let pick = |g: GroupBy, v: &str| q.grouped(g).then(|| v.to_string());
    (
        bucket,
        pick(GroupBy::Platform, platform),
        pick(GroupBy::Queue, queue),
        pick(GroupBy::Agent, agent),
    )
}

fn dimension(v: Option<String>) -> Option<Option<String>> {
    v.map(|s| if s.is_empty() { None } else { Some(s) })
}

/// RFC 3339 text of a bucket start.
pub fn bucket_text(secs: u32) -> String {
    from_epoch(secs)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Default)]
struct SlaAcc {
    offered: u64,
    answered: u64,
    within: u64,
    abandoned: u64,
    short: u64,
    missed: u64,
    waits: Vec<f64>,
    first_response_sum: f64,
    first_response_count: u64,
    handle_sum: f64,
    handle_count: u64,
}

impl SlaAcc {
    fn is_empty(&self) -> bool {
        self.offered + self.answered + self.abandoned + self.missed + self.first_response_count + self.handle_count == 0
    }
}

fn in_range(q: &ReportQuery, bucket: u32) -> bool {
    bucket >= q.first_bucket() && bucket < q.end_exclusive()
}

/// The SLA report over handoff rows (tombstones ignored).
pub(crate) fn sla_report_from_rows(rows: &[HandoffRow], q: &ReportQuery) -> Vec<SlaRow> {
    let mut acc: BTreeMap<Key, SlaAcc> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.deleted == 0) {
        for (credit, at) in r.credits() {
            let bucket = q.interval.truncate(at);
            if !in_range(q, bucket) {
                continue;
            }
            let a = acc
                .entry(key_of(q, bucket, &r.platform, &r.queue, &r.agent))
                .or_default();
            match credit {
                Credit::Offered => a.offered += 1,
                Credit::Answered => {
                    a.answered += 1;
                    a.within += u64::from(r.answered_within_sla);
                    if r.has_wait == 1 {
                        a.waits.push(r.wait_seconds);
                    }
                }
                Credit::Closed => {
                    a.abandoned += u64::from(r.abandoned);
                    a.short += u64::from(r.short_abandoned);
                    a.missed += u64::from(r.missed);
                    if r.has_handle == 1 {
                        a.handle_sum += r.handle_seconds;
                        a.handle_count += 1;
                    }
                }
                Credit::FirstResponse => {
                    a.first_response_sum += r.first_response_seconds;
                    a.first_response_count += 1;
                }
                Credit::Disposition => {}
            }
        }
    }
    acc.into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(key, mut a)| {
            a.waits.sort_by(f64::total_cmp);
            let [p50, p90] = WAIT_PERCENTILES.map(|p| percentile(&a.waits, p));
            sla_row(key, &a, p50, p90)
        })
        .collect()
}

/// The wait percentiles of the SLA report (p50, p90).
pub(crate) const WAIT_PERCENTILES: [f64; 2] = [0.5, 0.9];

/// The SLA row of one bucket and group.
fn sla_row((bucket, platform, queue, agent): Key, a: &SlaAcc, p50: Option<f64>, p90: Option<f64>) -> SlaRow {
    SlaRow {
        bucket: bucket_text(bucket),
        platform: dimension(platform),
        queue: dimension(queue),
        agent: dimension(agent),
        offered: a.offered,
        answered: a.answered,
        answered_within_sla: a.within,
        abandoned: a.abandoned,
        short_abandoned: a.short,
        missed: a.missed,
        service_level: service_level(a.within, a.answered, a.abandoned, a.missed, a.short),
        wait_p50_seconds: p50,
        wait_p90_seconds: p90,
        avg_first_response_seconds: mean(a.first_response_sum, a.first_response_count),
        avg_handle_seconds: mean(a.handle_sum, a.handle_count),
    }
}

/// What the store aggregates for `q`.
pub(crate) fn store_query(q: &ReportQuery) -> HandoffReportQuery {
    HandoffReportQuery {
        first_bucket: i64::from(q.first_bucket()),
        end_exclusive: i64::from(q.end_exclusive()),
        bucket_seconds: i64::from(q.interval.seconds()),
        by_platform: q.grouped(GroupBy::Platform),
        by_queue: q.grouped(GroupBy::Queue),
        by_agent: q.grouped(GroupBy::Agent),
    }
}

fn store_bucket(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

/// The SLA report computed by the store: its handoff rows aggregated in SQL (`store::report`), the same
/// numbers as [`sla_report_from_rows`] over the [`HandoffRow`]s of every stored conversation.
pub async fn sla_report_store(store: &dyn Store, sla: &SlaConfig, q: &ReportQuery) -> StoreResult<Vec<SlaRow>> {
    let aggregates = store.sla_aggregates(&store_query(q), sla).await?;
    let mut acc: BTreeMap<Key, SlaAcc> = BTreeMap::new();
    for t in aggregates.totals {
        let a = acc
            .entry(key_of(q, store_bucket(t.bucket), &t.platform, &t.queue, &t.agent))
            .or_default();
        a.offered += t.offered;
        a.answered += t.answered;
        a.within += t.answered_within_sla;
        a.abandoned += t.abandoned;
        a.short += t.short_abandoned;
        a.missed += t.missed;
        a.first_response_sum += t.first_response_sum;
        a.first_response_count += t.first_response_count;
        a.handle_sum += t.handle_sum;
        a.handle_count += t.handle_count;
        a.waits.extend(t.waits);
    }
    Ok(acc
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(key, mut a)| {
            a.waits.sort_by(f64::total_cmp);
            let [p50, p90] = WAIT_PERCENTILES.map(|p| percentile(&a.waits, p));
            sla_row(key, &a, p50, p90)
        })
        .collect())
}

/// The disposition report computed by the store (SQL over its handoff rows), the same numbers as
/// [`disposition_report_from_rows`].
pub async fn disposition_report_store(store: &dyn Store, q: &ReportQuery) -> StoreResult<Vec<DispositionRow>> {
    let mut acc: BTreeMap<Key, [u64; 4]> = BTreeMap::new();
    for t in store.disposition_aggregates(&store_query(q)).await? {
        let slot = acc
            .entry(key_of(q, store_bucket(t.bucket), &t.platform, &t.queue, &t.agent))
            .or_default();
        for (i, n) in [t.completed, t.abandoned, t.missed, t.failed].into_iter().enumerate() {
            slot[i] += n;
        }
    }
    Ok(disposition_rows(acc))
}

/// The disposition report over handoff rows (tombstones ignored).
pub(crate) fn disposition_report_from_rows(rows: &[HandoffRow], q: &ReportQuery) -> Vec<DispositionRow> {
    let mut acc: BTreeMap<Key, [u64; 4]> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.deleted == 0) {
        for (credit, at) in r.credits().filter(|(c, _)| *c == Credit::Disposition) {
            let _ = credit;
            let bucket = q.interval.truncate(at);
            if !in_range(q, bucket) {
                continue;
            }
            let slot = match r.disposition.as_str() {
                "completed" => 0,
                "abandoned" => 1,
                "missed" => 2,
                "failed" => 3,
                _ => continue,
            };
            acc.entry(key_of(q, bucket, &r.platform, &r.queue, &r.agent))
                .or_default()[slot] += 1;
        }
    }
    disposition_rows(acc)
}

/// Disposition rows of the counts per bucket and group (those with none left out).
fn disposition_rows(acc: BTreeMap<Key, [u64; 4]>) -> Vec<DispositionRow> {
    acc.into_iter()
        .filter(|(_, counts)| counts.iter().sum::<u64>() > 0)
        .map(
            |((bucket, platform, queue, agent), [completed, abandoned, missed, failed])| DispositionRow {
                bucket: bucket_text(bucket),
                platform: dimension(platform),
                queue: dimension(queue),
                agent: dimension(agent),
                completed,
                abandoned,
                missed,
                failed,
                total: completed + abandoned + missed + failed,
            },
        )
        .collect()
}

/// Handoff rows of conversations (each conversation once, by id).
pub(crate) fn handoff_rows(conversations: &[Conversation], sla: &SlaConfig) -> Vec<HandoffRow> {
    let mut seen = HashSet::new();
    conversations
        .iter()
        .filter(|c| seen.insert(c.id))
        .flat_map(|c| HandoffRow::from_conversation(c, sla))
        .collect()
}

/// The SLA report over conversations.
pub fn sla_report(conversations: &[Conversation], sla: &SlaConfig, q: &ReportQuery) -> Vec<SlaRow> {
    sla_report_from_rows(&handoff_rows(conversations, sla), q)
}

/// The disposition report over conversations.
pub fn disposition_report(conversations: &[Conversation], sla: &SlaConfig, q: &ReportQuery) -> Vec<DispositionRow> {
    disposition_report_from_rows(&handoff_rows(conversations, sla), q)
}

/// Every conversation whose `started_at` lies in `[since, until)`, read page by page, each once.
pub(crate) async fn conversations_started(
    store: &dyn Store,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> StoreResult<Vec<Conversation>> {
    Ok(conversations_started_at_most(store, since, until, usize::MAX)
        .await?
        .unwrap_or_default())
}

/// Conversations that may credit something inside the query's range (see [`STORE_LOOKBACK`]).
pub async fn conversations_for_report(store: &dyn Store, q: &ReportQuery) -> StoreResult<Vec<Conversation>> {
    let from = from_epoch(q.first_bucket()).unwrap_or(q.since) - STORE_LOOKBACK;
    conversations_started(store, from, q.until).await
}

// ---- ClickHouse ----

#[derive(Debug, Row, Deserialize)]
struct ChSlaRow {
    bucket: u32,
    g_platform: String,
    g_queue: String,
    g_agent: String,
    n_offered: u64,
    n_answered: u64,
    n_within: u64,
    n_abandoned: u64,
    n_short: u64,
    n_missed: u64,
    wait_q: Vec<f64>,
    fr_sum: f64,
    fr_count: u64,
    h_sum: f64,
    h_count: u64,
}

#[derive(Debug, Row, Deserialize)]
struct ChDispositionRow {
    bucket: u32,
    g_platform: String,
    g_queue: String,
    g_agent: String,
    n_completed: u64,
    n_abandoned: u64,
    n_missed: u64,
    n_failed: u64,
}

/// SELECT list, GROUP BY and ORDER BY fragments for the grouped dimensions.
fn grouping_sql(q: &ReportQuery) -> (String, String) {
    let mut select = Vec::new();
    let mut group = vec!["bucket".to_string()];
    for (g, col) in [
        (GroupBy::Platform, "platform"),
        (GroupBy::Queue, "queue"),
        (GroupBy::Agent, "agent"),
    ] {
        if q.grouped(g) {
            select.push(format!("{col} AS g_{col}"));
            group.push(format!("g_{col}"));
        } else {
            select.push(format!("'' AS g_{col}"));
        }
    }
    (select.join(", "), group.join(", "))
}

/// The SQL of the SLA report over the current rollups (`?` binds: grain, first bucket, end).
pub(crate) fn sla_report_sql(q: &ReportQuery) -> String {
    let (dims, group) = grouping_sql(q);
    format!(
        "SELECT toUInt32(bucket) AS bucket_start, {dims}, \
         sum(offered) AS n_offered, sum(answered) AS n_answered, sum(answered_within_sla) AS n_within, \
         sum(abandoned) AS n_abandoned, sum(short_abandoned) AS n_short, sum(missed) AS n_missed, \
         quantilesMerge(0.5, 0.9)(wait_state) AS wait_q, \
         sum(first_response_sum) AS fr_sum, sum(first_response_count) AS fr_count, \
         sum(handle_sum) AS h_sum, sum(handle_count) AS h_count \
         FROM handoff_rollup_current \
         WHERE grain = ? AND bucket >= toDateTime(?, 'UTC') AND bucket < toDateTime(?, 'UTC') \
         GROUP BY {group} \
         HAVING n_offered + n_answered + n_abandoned + n_missed + fr_count + h_count > 0 \
         ORDER BY {group}"
    )
}

/// The SQL of the disposition report over the current rollups (`?` binds: grain, first bucket, end).
pub(crate) fn disposition_report_sql(q: &ReportQuery) -> String {
    let (dims, group) = grouping_sql(q);
    format!(
        "SELECT toUInt32(bucket) AS bucket_start, {dims}, \
         sum(completed) AS n_completed, sum(disposition_abandoned) AS n_abandoned, \
         sum(disposition_missed) AS n_missed, sum(failed) AS n_failed \
         FROM handoff_rollup_current \
         WHERE grain = ? AND bucket >= toDateTime(?, 'UTC') AND bucket < toDateTime(?, 'UTC') \
         GROUP BY {group} \
         HAVING n_completed + n_abandoned + n_missed + n_failed > 0 \
         ORDER BY {group}"
    )
}

fn finite(v: Option<&f64>) -> Option<f64> {
    v.copied().filter(|v| v.is_finite())
}

/// The SLA report from the ClickHouse rollups.
pub async fn sla_report_clickhouse(analytics: &Analytics, q: &ReportQuery) -> AnalyticsResult<Vec<SlaRow>> {
    let rows: Vec<ChSlaRow> = analytics
        .client()
        .query(&sla_report_sql(q))
        .bind(q.interval.as_str())
        .bind(q.first_bucket())
        .bind(q.end_exclusive())
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = key_of(q, r.bucket, &r.g_platform, &r.g_queue, &r.g_agent);
            SlaRow {
                bucket: bucket_text(r.bucket),
                platform: dimension(key.1),
                queue: dimension(key.2),
                agent: dimension(key.3),
                offered: r.n_offered,
                answered: r.n_answered,
                answered_within_sla: r.n_within,
                abandoned: r.n_abandoned,
                short_abandoned: r.n_short,
                missed: r.n_missed,
                service_level: service_level(r.n_within, r.n_answered, r.n_abandoned, r.n_missed, r.n_short),
                wait_p50_seconds: finite(r.wait_q.first()),
                wait_p90_seconds: finite(r.wait_q.get(1)),
                avg_first_response_seconds: mean(r.fr_sum, r.fr_count),
                avg_handle_seconds: mean(r.h_sum, r.h_count),
            }
        })
        .collect())
}

/// The disposition report from the ClickHouse rollups.
pub async fn disposition_report_clickhouse(
    analytics: &Analytics,
    q: &ReportQuery,
) -> AnalyticsResult<Vec<DispositionRow>> {
    let rows: Vec<ChDispositionRow> = analytics
        .client()
        .query(&disposition_report_sql(q))
        .bind(q.interval.as_str())
        .bind(q.first_bucket())
        .bind(q.end_exclusive())
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = key_of(q, r.bucket, &r.g_platform, &r.g_queue, &r.g_agent);
            DispositionRow {
                bucket: bucket_text(r.bucket),
                platform: dimension(key.1),
                queue: dimension(key.2),
                agent: dimension(key.3),
                completed: r.n_completed,
                abandoned: r.n_abandoned,
                missed: r.n_missed,
                failed: r.n_failed,
                total: r.n_completed + r.n_abandoned + r.n_missed + r.n_failed,
            }
        })
        .collect())
}

// ---- conversations.csv ----

/// Header of `conversations.csv`.
pub(crate) const CSV_HEADER: [&str; 26] = [
    "id",
    "started_at",
    "updated_at",
    "state",
    "disposition",
    "platform_disposition",
    "sla_status",
    "platforms",
    "queue",
    "agents",
    "handoffs",
    "escalated_at",
    "queued_at",
    "first_attended_at",
    "closed_at",
    "wait_seconds",
    "first_response_seconds",
    "handle_seconds",
    "bot_seconds",
    "transfers",
    "visitor_messages",
    "bot_messages",
    "agent_messages",
    "system_messages",
    "close_reason",
    "last_seq",
];

fn time_cell(secs: u32) -> String {
    from_epoch(secs)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn number_cell(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The CSV record of a conversation row (times to the second, lists joined with `|`).
pub(crate) fn csv_record(r: &ConversationRow) -> Vec<String> {
    vec![
        r.conversation_id.clone(),
        time_cell(r.started_at),
        time_cell(r.updated_at),
        r.state.clone(),
        r.disposition.clone(),
        r.platform_disposition.clone(),
        r.sla_status.clone(),
        r.platforms.join("|"),
        r.queue.clone(),
        r.agents.join("|"),
        r.handoff_count.to_string(),
        time_cell(r.escalated_at),
        time_cell(r.queued_at),
        time_cell(r.first_attended_at),
        time_cell(r.closed_at),
        number_cell(r.wait_seconds),
        number_cell(r.first_response_seconds),
        number_cell(r.handle_seconds),
        number_cell(r.bot_seconds),
        r.transfers.to_string(),
        r.visitor_messages.to_string(),
        r.bot_messages.to_string(),
        r.agent_messages.to_string(),
        r.system_messages.to_string(),
        r.close_reason.clone(),
        r.last_seq.to_string(),
    ]
}

/// Renders `conversations.csv`: rows ordered by `started_at`, then id; cells neutralised like transcripts'.
/// (The service streams the same lines with [`csv_header_bytes`] and [`csv_rows_bytes`].)
#[cfg(test)]
fn conversations_csv(rows: &mut [ConversationRow]) -> Result<String, csv::Error> {
    rows.sort_by(|a, b| (a.started_at, &a.conversation_id).cmp(&(b.started_at, &b.conversation_id)));
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for r in rows.iter() {
        // Queue, agent names, close reasons come from the platforms: never a formula in a spreadsheet.
        writer.write_record(csv_record(r).into_iter().map(crate::transcript::neutralise_csv_cell))?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The CSV's header line.
pub(crate) fn csv_header_bytes() -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    writer.into_inner().map_err(|e| e.into_error().into())
}

/// CSV lines of some rows (in the order given), cells neutralised like [`conversations_csv`]'s.
pub(crate) fn csv_rows_bytes(rows: &[ConversationRow]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for r in rows {
        writer.write_record(csv_record(r).into_iter().map(crate::transcript::neutralise_csv_cell))?;
    }
    writer.into_inner().map_err(|e| e.into_error().into())
}

/// Most conversations the streamed CSV holds in memory at once when reading the store (a whole second
/// holding more is read anyway: rows are ordered by whole seconds).
pub(crate) const CSV_STORE_MAX_ROWS: usize = 5_000;

/// The store's CSV rows of `[since, until)` in the CSV's order (`started_at`, then id), a window at a time:
/// the range is read whole when it holds at most [`CSV_STORE_MAX_ROWS`] conversations, else split in
/// halves on whole seconds, so memory stays bounded however long or dense the range is, and an empty
/// stretch costs one query.
pub struct StoreCsvRows {
    store: std::sync::Arc<dyn Store>,
    pending: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    max_rows: usize,
}

impl StoreCsvRows {
    /// Rows of conversations started in `[since, until)`.
    pub fn new(store: std::sync::Arc<dyn Store>, since: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        StoreCsvRows {
            store,
            pending: vec![(since, until)],
            max_rows: CSV_STORE_MAX_ROWS,
        }
    }

    /// Windows of at most `max_rows` conversations instead of [`CSV_STORE_MAX_ROWS`].
    pub fn with_max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows.max(1);
        self
    }

    /// The next window's rows, in order; None at the end.
    pub async fn next_rows(&mut self) -> StoreResult<Option<Vec<ConversationRow>>> {
        while let Some((from, to)) = self.pending.pop() {
            let mid = DateTime::from_timestamp(from.timestamp() + (to.timestamp() - from.timestamp()) / 2, 0)
                .filter(|mid| *mid > from && *mid < to);
            let conversations = match mid {
                Some(mid) => match conversations_started_at_most(self.store.as_ref(), from, to, self.max_rows).await? {
                    Some(all) => all,
                    None => {
                        // Later half first on the stack: the earlier half is read next.
                        self.pending.push((mid, to));
                        self.pending.push((from, mid));
                        continue;
                    }
                },
                None => conversations_started(self.store.as_ref(), from, to).await?,
            };
            if conversations.is_empty() {
                continue;
            }
            let mut rows: Vec<ConversationRow> = conversations.iter().map(ConversationRow::from_conversation).collect();
            rows.sort_by(|a, b| (a.started_at, &a.conversation_id).cmp(&(b.started_at, &b.conversation_id)));
            return Ok(Some(rows));
        }
        Ok(None)
    }
}

/// Conversations started in `[since, until)`, read page by page, each once; None when there are more
/// than `max`.
async fn conversations_started_at_most(
    store: &dyn Store,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    max: usize,
) -> StoreResult<Option<Vec<Conversation>>> {
    let mut filter = ConversationFilter {
        since: Some(since),
        until: Some(until),
        limit: u32::try_from(max.saturating_add(1)).unwrap_or(500).min(500),
        ..ConversationFilter::default()
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let page = store.list_conversations(&filter).await?;
        let last_page = page.next.is_none() || page.items.is_empty();
        out.extend(page.items.into_iter().filter(|c| seen.insert(c.id)));
        if out.len() > max {
            return Ok(None);
        }
        if last_page {
            return Ok(Some(out));
        }
        filter.after = page.next;
    }
}

/// A cursor over ClickHouse's CSV rows (`started_at` in `[since, until)`), in the CSV's order.
pub(crate) fn csv_cursor_from_clickhouse(
    analytics: &Analytics,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> AnalyticsResult<clickhouse::query::RowCursor<ConversationRow>> {
    Ok(analytics
        .client()
        .query(
            "SELECT ?fields FROM conversations FINAL \
             WHERE deleted = 0 AND started_at >= toDateTime(?, 'UTC') AND started_at < toDateTime(?, 'UTC') \
             ORDER BY started_at, conversation_id",
        )
        .bind(epoch(Some(since)))
        .bind(u32::try_from(until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0)).unwrap_or(u32::MAX))
        .fetch::<ConversationRow>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::facts::tests::{answered, conversation, ended, handoff, t};
    use crate::model::Disposition;

    fn query(since: &str, until: &str, interval: Interval, group_by: Vec<GroupBy>) -> ReportQuery {
        ReportQuery {
            since: t(since),
            until: t(until),
            interval,
            group_by,
        }
    }

    #[test]
    fn params_are_validated_with_the_parameter_named() {
        let now = t("2024-05-02T00:00:00Z");
        let ok = ReportQuery::from_params(
            &ReportParams {
                since: Some("2024-05-01T00:00:00Z".into()),
                interval: Some("day".into()),
                group_by: Some("queue, platform,queue".into()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(ok.until, now);
        assert_eq!(ok.interval, Interval::Day);
        assert_eq!(ok.group_by, vec![GroupBy::Queue, GroupBy::Platform]);
        let defaults = ReportQuery::from_params(&ReportParams::default(), now).unwrap();
        assert_eq!(
            (defaults.since, defaults.interval),
            (now - DEFAULT_RANGE, Interval::Hour)
        );
        let bad = |p: ReportParams| ReportQuery::from_params(&p, now).unwrap_err().param;
        assert_eq!(
            bad(ReportParams {
                since: Some("yesterday".into()),
                ..Default::default()
            }),
            "since"
        );
        assert_eq!(
            bad(ReportParams {
                interval: Some("week".into()),
                ..Default::default()
            }),
            "interval"
        );
        assert_eq!(
            bad(ReportParams {
                group_by: Some("team".into()),
                ..Default::default()
            }),
            "group_by"
        );
        assert_eq!(
            bad(ReportParams {
                since: Some("2024-05-03T00:00:00Z".into()),
                ..Default::default()
            }),
            "since"
        );
        assert!(ReportQuery::source_param(&ReportParams {
            source: Some("redis".into()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn sla_report_credits_each_metric_to_the_bucket_where_its_timer_stops() {
        // Queued 10:59:30, answered 11:00:15 after 45 s, first response 20 s later, closed after 600 s.
        let a = answered(handoff("2179", "2024-05-01T10:59:30Z"), 45, Some(20.0), Some(600));
        // Queued 10:10, answered after 90 s (breached), still open.
        let b = answered(handoff("2179", "2024-05-01T10:10:00Z"), 90, None, None);
        // Queued 10:20, abandoned after 10 s (short), and one after 50 s; one missed at 11:30.
        let c = ended(handoff("2179", "2024-05-01T10:20:00Z"), 10, Disposition::Abandoned);
        let d = ended(handoff("sales", "2024-05-01T10:25:00Z"), 50, Disposition::Abandoned);
        let e = ended(handoff("sales", "2024-05-01T10:30:00Z"), 3600, Disposition::Missed);
        let convs = vec![
            conversation("a", vec![a], 10),
            conversation("b", vec![b, c], 11),
            conversation("d", vec![d, e], 12),
        ];
        let q = query("2024-05-01T10:00:00Z", "2024-05-01T12:00:00Z", Interval::Hour, vec![]);
        let rows = sla_report(&convs, &SlaConfig::default(), &q);
        assert_eq!(rows.len(), 2);
        let h10 = &rows[0];
        assert_eq!(h10.bucket, "2024-05-01T10:00:00Z");
        assert_eq!(
            (
                h10.offered,
                h10.answered,
                h10.answered_within_sla,
                h10.abandoned,
                h10.short_abandoned,
                h10.missed
            ),
            (5, 1, 0, 2, 1, 0)
        );
        // answered 1 (b, late) + abandoned 2 - short 1 = 2; none within.
        assert_eq!(h10.service_level, Some(0.0));
        assert_eq!(h10.wait_p50_seconds, Some(90.0));
        assert_eq!(h10.avg_handle_seconds, None);
        let h11 = &rows[1];
        assert_eq!(h11.bucket, "2024-05-01T11:00:00Z");
        assert_eq!(
            (h11.offered, h11.answered, h11.answered_within_sla, h11.missed),
            (0, 1, 1, 1)
        );
        assert_eq!(h11.service_level, Some(0.5));
        assert_eq!(h11.avg_first_response_seconds, Some(20.0));
        assert_eq!(h11.avg_handle_seconds, Some(600.0));

        let by_queue = query(
            "2024-05-01T00:00:00Z",
            "2024-05-02T00:00:00Z",
            Interval::Day,
            vec![GroupBy::Queue],
        );
        let rows = sla_report(&convs, &SlaConfig::default(), &by_queue);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].queue, Some(Some("2179".into())));
        assert_eq!((rows[0].offered, rows[0].answered), (3, 2));
        assert_eq!(rows[0].wait_p50_seconds, Some(67.5));
        assert_eq!(rows[1].queue, Some(Some("sales".into())));
        assert_eq!(rows[1].platform, None);
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert!(json.get("platform").is_none());
        assert_eq!(json["queue"], "sales");
    }

    #[test]
    fn range_bounds_are_buckets_from_since_to_until() {
        let a = answered(handoff("q", "2024-05-01T09:59:00Z"), 120, None, None);
        let convs = vec![conversation("x", vec![a], 3)];
        let q = query("2024-05-01T10:30:00Z", "2024-05-01T11:00:00Z", Interval::Hour, vec![]);
        let rows = sla_report(&convs, &SlaConfig::default(), &q);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].offered, rows[0].answered), (0, 1));
    }

    #[test]
    fn dispositions_are_credited_at_close_and_grouped_by_agent() {
        let a = answered(handoff("q", "2024-05-01T10:00:00Z"), 10, Some(5.0), Some(100));
        let b = ended(handoff("q", "2024-05-01T10:00:00Z"), 30, Disposition::Abandoned);
        let mut f = handoff("q", "2024-05-01T12:00:00Z");
        f.disposition = Some(Disposition::Failed);
        let convs = vec![conversation("a", vec![a, b], 4), conversation("f", vec![f], 5)];
        let q = query(
            "2024-05-01T00:00:00Z",
            "2024-05-02T00:00:00Z",
            Interval::Hour,
            vec![GroupBy::Agent],
        );
        let rows = disposition_report(&convs, &SlaConfig::default(), &q);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].agent, Some(None));
        assert_eq!((rows[0].abandoned, rows[0].total), (1, 1));
        assert_eq!(rows[1].agent, Some(Some("Tomas".into())));
        assert_eq!((rows[1].completed, rows[1].total), (1, 1));
        assert_eq!(rows[2].bucket, "2024-05-01T12:00:00Z");
        assert_eq!(rows[2].failed, 1);
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert!(json["agent"].is_null() && json.get("agent").is_some());
    }

    #[test]
    fn csv_has_one_row_per_conversation_with_every_metric() {
        let a = answered(handoff("2179", "2024-05-01T10:00:00Z"), 45, Some(20.0), Some(600));
        let convs = [conversation("a", vec![a], 10), conversation("b", vec![], 2)];
        let mut rows: Vec<ConversationRow> = convs.iter().map(ConversationRow::from_conversation).collect();
        let text = conversations_csv(&mut rows).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(reader.headers().unwrap().len(), CSV_HEADER.len());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 2);
        // ordered by started_at: "b" started 2024-05-01T00:00:00Z
        assert_eq!(&records[0][0], convs[1].id.to_string());
        assert_eq!(&records[1][10], "1");
        assert_eq!(&records[1][1], "2024-05-01T09:59:28Z");
        assert_eq!(&records[1][7], "ultimate");
    }
}
