//! Analytics against a real ClickHouse (scripts/clickhouse.sh starts one; URL from LEDGER_TEST_CLICKHOUSE_URL,
//! default http://127.0.0.1:8123) and the real store: the scenario's platform webhooks go through the real
//! parsers, writer and store (SQLite in a tempdir, or a fresh PostgreSQL database), the real sink tails the
//! log into ClickHouse, and the report API answers from both sources. Each test uses a fresh ClickHouse
//! database and drops it. Unreachable ClickHouse: the tests skip with a note locally and fail in CI (CI=true).

mod common;
#[path = "common/scenario.rs"]
mod scenario;

use common::{clickhouse_url, fresh_clickhouse, TestDb};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use clickhouse::Row;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use uuid::Uuid;

use handoff_ledger::analytics::reports::{self, DispositionRow, GroupBy, Interval, ReportQuery, SlaRow};
use handoff_ledger::analytics::{rollups, schema, sink, Analytics};
use handoff_ledger::config::{ClickHouseConfig, Config, Route, SlaConfig};
use handoff_ledger::model::Conversation;
use handoff_ledger::store::{self, ConversationFilter, Store};
use scenario::{Expected, Scenario, ScenarioOptions, Step, StepKind};

// ---------- ClickHouse test database ----------

/// A fresh database name on the test server, or None (skip) when ClickHouse is unreachable outside CI.
async fn fresh_config() -> Option<TestDb> {
    fresh_clickhouse("handoff_test").await
}

/// A fresh, migrated database.
async fn fresh_db() -> Option<(TestDb, Analytics)> {
    let db = fresh_config().await?;
    let analytics = schema::migrate(&db.config).await.expect("migrate");
    Some((db, analytics))
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
}

async fn count(analytics: &Analytics, sql: &str) -> u64 {
    analytics.client().query(sql).fetch_one::<Count>().await.unwrap().n
}

// ---------- PostgreSQL test database ----------

// ---------- the real service ----------

use common::StoreKind as Backend;

/// The real service on port 0 with a fresh store and ClickHouse at `clickhouse`.
type Service = common::TestService;

async fn spawn_service(backend: Backend, clickhouse: &ClickHouseConfig) -> Service {
    let mut config = Config {
        sla: scenario::sla(),
        clickhouse: clickhouse.clone(),
        ..Config::default()
    };
    // The scenario's escalations route to configured backends, as in production: the write path plans
    // their queue calls with them. Nothing is sent: the scenario appends its Ultimate deliveries with the
    // writer (the outbox never sees them) and records the queue calls' outcomes itself.
    let nowhere = "http://127.0.0.1:9";
    config.aivo_live.base_url = format!("{nowhere}/aivo");
    config.aivo_live.bot_token = "unused".into();
    config.bright_pattern.base_url = format!("{nowhere}/bp");
    config.routing.default = Some(Route {
        backend: handoff_ledger::model::Backend::AivoLive,
        groups: vec![2179],
        hours: None,
    });
    config.routing.teams.insert(
        "support".into(),
        Route {
            backend: handoff_ledger::model::Backend::BrightPattern,
            groups: Vec::new(),
            hours: None,
        },
    );
    common::start(backend, config, |_| {}).await
}

impl Service {
    async fn get(&self, path_and_query: &str) -> (u16, Option<String>, String) {
        let res = self
            .client
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let source = res
            .headers()
            .get("X-Report-Source")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, source, res.text().await.unwrap())
    }

    async fn get_json(&self, path_and_query: &str) -> (u16, Value) {
        let (status, _, body) = self.get(path_and_query).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn deliver(&self, steps: &[Step]) {
        let counts = scenario::deliver(&self.client, &self.address, &self.state.writer, steps)
            .await
            .unwrap();
        let live_webhooks = steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Webhook { .. }) && !s.stamped_at_arrival())
            .count() as u64;
        assert_eq!(counts.posted, live_webhooks, "every timed webhook went over HTTP");
        assert_eq!(counts.posted + counts.appended, steps.len() as u64);
    }
}

/// Waits until the sink's checkpoint (kept in the store) has reached the end of the log.
async fn wait_for_sink(store: &dyn Store, within: StdDuration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let last = store.last_seq().await.unwrap();
        let checkpoint = store.checkpoint(sink::CHECKPOINT).await.unwrap();
        if last > 0 && checkpoint == last {
            return checkpoint;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not catch up: checkpoint {checkpoint}, log {last}"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

// ---------- the scenario and report checks ----------

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn scenario_start() -> DateTime<Utc> {
    t("2024-05-01T00:00:00Z")
}

fn generate(seed: u64, conversations: u64, days: i64, late_links: f64) -> Scenario {
    let mut opts = ScenarioOptions::new(seed, conversations, scenario_start(), Duration::days(days));
    opts.late_links = late_links;
    scenario::generate(&opts, &scenario::sla())
}

/// Everything the scenario credits lies in this range.
const FULL: &str = "since=2024-04-30T00:00:00Z&until=2024-05-06T00:00:00Z";

fn full_query(interval: Interval, group_by: Vec<GroupBy>) -> ReportQuery {
    ReportQuery {
        since: t("2024-04-30T00:00:00Z"),
        until: t("2024-05-06T00:00:00Z"),
        interval,
        group_by,
    }
}

/// Report queries of the function-level checks: both grains, every grouping, and a range starting mid-day.
fn queries() -> Vec<ReportQuery> {
    vec![
        full_query(Interval::Day, vec![]),
        full_query(Interval::Hour, vec![]),
        full_query(Interval::Hour, vec![GroupBy::Queue]),
        full_query(Interval::Day, vec![GroupBy::Platform, GroupBy::Queue, GroupBy::Agent]),
        full_query(Interval::Day, vec![GroupBy::Agent]),
        ReportQuery {
            since: t("2024-05-01T05:30:00Z"),
            until: t("2024-05-01T20:00:00Z"),
            interval: Interval::Hour,
            group_by: vec![GroupBy::Platform],
        },
    ]
}

/// The same queries as API query strings.
fn api_queries() -> Vec<String> {
    vec![
        format!("{FULL}&interval=day"),
        format!("{FULL}&interval=hour"),
        format!("{FULL}&interval=hour&group_by=queue"),
        format!("{FULL}&interval=day&group_by=platform,queue,agent"),
        format!("{FULL}&interval=day&group_by=agent"),
        "since=2024-05-01T05:30:00Z&until=2024-05-01T20:00:00Z&interval=hour&group_by=platform".to_string(),
    ]
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        _ => false,
    }
}

/// ClickHouse's `quantiles` keeps a reservoir of 8192 values per state: below that it is exact, above it a
/// sample whose rank error stays within about 2 %.
fn percentile_close(a: Option<f64>, b: Option<f64>, values: u64) -> bool {
    if values < 8192 {
        return close(a, b);
    }
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 0.05 * a.abs().max(b.abs()).max(1.0),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// Counts equal; means and service level equal up to float summation order; percentiles within the
/// sketch's tolerance.
fn assert_sla_equal(ch: &[SlaRow], store: &[SlaRow], what: &str) {
    assert_eq!(ch.len(), store.len(), "{what}: row count\nch={ch:#?}\nstore={store:#?}");
    for (a, b) in ch.iter().zip(store) {
        let ctx = format!("{what}: {} {:?} {:?} {:?}", b.bucket, b.platform, b.queue, b.agent);
        assert_eq!(
            (&a.bucket, &a.platform, &a.queue, &a.agent),
            (&b.bucket, &b.platform, &b.queue, &b.agent),
            "{ctx}"
        );
        let counts = |r: &SlaRow| {
            (
                r.offered,
                r.answered,
                r.answered_within_sla,
                r.abandoned,
                r.short_abandoned,
                r.missed,
            )
        };
        assert_eq!(counts(a), counts(b), "{ctx}");
        assert!(close(a.service_level, b.service_level), "{ctx}: service level");
        assert!(
            percentile_close(a.wait_p50_seconds, b.wait_p50_seconds, b.answered),
            "{ctx}: p50 {a:?} {b:?}"
        );
        assert!(
            percentile_close(a.wait_p90_seconds, b.wait_p90_seconds, b.answered),
            "{ctx}: p90 {a:?} {b:?}"
        );
        assert!(
            close(a.avg_first_response_seconds, b.avg_first_response_seconds),
            "{ctx}: first response"
        );
        assert!(close(a.avg_handle_seconds, b.avg_handle_seconds), "{ctx}: handle");
    }
}

/// The SLA and disposition totals over the whole scenario are the ones it was written to produce.
fn assert_totals(sla_rows: &[SlaRow], dispositions: &[DispositionRow], e: &Expected) {
    let sum = |f: fn(&SlaRow) -> u64| sla_rows.iter().map(f).sum::<u64>();
    assert_eq!(
        (
            sum(|r| r.offered),
            sum(|r| r.answered),
            sum(|r| r.answered_within_sla),
            sum(|r| r.abandoned),
            sum(|r| r.short_abandoned),
            sum(|r| r.missed),
        ),
        (
            e.offered,
            e.answered,
            e.answered_within_sla,
            e.abandoned,
            e.short_abandoned,
            e.missed
        ),
        "offered, answered, within SLA, abandoned, short, missed"
    );
    let dsum = |f: fn(&DispositionRow) -> u64| dispositions.iter().map(f).sum::<u64>();
    assert_eq!(
        (
            dsum(|r| r.completed),
            dsum(|r| r.abandoned),
            dsum(|r| r.missed),
            dsum(|r| r.failed),
            dsum(|r| r.total)
        ),
        (
            e.completed,
            e.abandoned,
            e.missed,
            e.failed,
            e.completed + e.abandoned + e.missed + e.failed
        ),
        "completed, abandoned, missed, failed, total"
    );
}

/// Every conversation of the store.
async fn all_conversations(store: &dyn Store) -> Vec<Conversation> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_conversations(&ConversationFilter {
                limit: 500,
                after,
                ..ConversationFilter::default()
            })
            .await
            .unwrap();
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// The report functions the API runs, from the store and from ClickHouse, agree on every query; the live
/// fact rows in ClickHouse are exactly the store's conversations, handoffs and transcript lines.
async fn assert_store_and_clickhouse_agree(store: &dyn Store, analytics: &Analytics, sla: &SlaConfig) {
    let mut nonempty = 0;
    for q in queries() {
        let conversations = reports::conversations_for_report(store, &q).await.unwrap();
        let what = format!("{:?} {:?} {}", q.interval, q.group_by, q.since);
        let ch = reports::sla_report_clickhouse(analytics, &q).await.unwrap();
        let from_store = reports::sla_report(&conversations, sla, &q);
        assert_sla_equal(&ch, &from_store, &what);
        let ch = reports::disposition_report_clickhouse(analytics, &q).await.unwrap();
        let from_store = reports::disposition_report(&conversations, sla, &q);
        assert_eq!(ch, from_store, "dispositions {what}");
        nonempty += usize::from(!from_store.is_empty());
    }
    assert_eq!(nonempty, queries().len(), "every query has rows");
    let conversations = all_conversations(store).await;
    assert_eq!(
        count(analytics, "SELECT count() AS n FROM conversations_current").await,
        conversations.len() as u64
    );
    assert_eq!(
        count(analytics, "SELECT count() AS n FROM handoffs_current").await,
        conversations.iter().map(|c| c.handoffs.len() as u64).sum::<u64>()
    );
    let mut lines = 0;
    for c in &conversations {
        lines += store.transcript(c.id).await.unwrap().map_or(0, |(_, m)| m.len() as u64);
    }
    assert_eq!(
        count(analytics, "SELECT count() AS n FROM messages_current").await,
        lines
    );
    assert_eq!(
        count(analytics, "SELECT count() AS n FROM (SELECT * FROM events FINAL)").await,
        store.last_seq().await.unwrap() as u64
    );
}

/// The report API answers every query the same with `?source=store` and `?source=clickhouse`, and
/// conversations.csv has the same bytes; returns the full-range day rows.
async fn assert_api_sources_agree(app: &Service) -> (Vec<SlaRow>, Vec<DispositionRow>) {
    let rows = |v: &Value| -> Vec<SlaRow> { serde_json::from_value(v["rows"].clone()).unwrap() };
    let mut totals = None;
    for q in api_queries() {
        let (sa, a) = app.get_json(&format!("/v1/reports/sla?{q}&source=clickhouse")).await;
        let (sb, b) = app.get_json(&format!("/v1/reports/sla?{q}&source=store")).await;
        assert_eq!((sa, sb), (200, 200), "{q}: {a} {b}");
        assert_eq!(
            (a["source"].as_str(), b["source"].as_str()),
            (Some("clickhouse"), Some("store"))
        );
        assert!(!rows(&b).is_empty(), "{q}");
        assert_sla_equal(&rows(&a), &rows(&b), &q);
        let (_, da) = app
            .get_json(&format!("/v1/reports/dispositions?{q}&source=clickhouse"))
            .await;
        let (_, db) = app
            .get_json(&format!("/v1/reports/dispositions?{q}&source=store"))
            .await;
        assert_eq!(da["source"], "clickhouse");
        assert_eq!(db["source"], "store");
        assert_eq!(da["rows"], db["rows"], "dispositions {q}");
        if totals.is_none() {
            totals = Some((rows(&b), serde_json::from_value(db["rows"].clone()).unwrap()));
        }
    }
    for range in [FULL, "since=2024-05-01T00:00:00Z&until=2024-05-02T00:00:00Z"] {
        let (sa, ha, a) = app
            .get(&format!("/v1/reports/conversations.csv?{range}&source=clickhouse"))
            .await;
        let (sb, hb, b) = app
            .get(&format!("/v1/reports/conversations.csv?{range}&source=store"))
            .await;
        assert_eq!((sa, sb), (200, 200));
        assert_eq!((ha.as_deref(), hb.as_deref()), (Some("clickhouse"), Some("store")));
        assert!(b.lines().count() > 50, "{range}");
        assert_eq!(a, b, "conversations.csv {range}");
    }
    totals.unwrap()
}

// ---------- a ClickHouse that can be switched off ----------

/// A TCP forwarder to the test ClickHouse on a fixed local port: down = nothing listens on the port (and
/// open connections are cut), up = connections reach ClickHouse.
struct Switch {
    port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Switch {
    async fn new() -> Switch {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let upstream = clickhouse_url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Switch {
            port,
            upstream,
            tasks: Arc::default(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn down(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.down();
    }
}

// ---------- tests ----------

#[tokio::test]
async fn migrations_create_every_table_once() {
    let Some((db, analytics)) = fresh_db().await else {
        return;
    };
    let (_, again) = schema::migrate_reporting(&db.config).await.unwrap();
    assert!(again.is_empty(), "a second run applies nothing");
    #[derive(Row, Deserialize)]
    struct Name {
        name: String,
    }
    let names: Vec<String> = analytics
        .client()
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all::<Name>()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    for table in [
        "conversations",
        "conversations_current",
        "events",
        "handoff_rollup",
        "handoff_rollup_current",
        "handoffs",
        "handoffs_current",
        "messages",
        "messages_current",
        "rollup_dirty",
        "schema_migrations",
    ] {
        assert!(names.contains(&table.to_string()), "{table} missing from {names:?}");
    }
    assert_eq!(count(&analytics, "SELECT count() AS n FROM schema_migrations").await, 2);
}

/// One scenario posted to the real service; its own sink ships it; the report API gives the same numbers
/// from both sources, and they are the numbers the scenario was written to produce.
async fn report_api_answers_the_same_from_both_sources(backend: Backend) {
    let Some(db) = fresh_config().await else {
        return;
    };
    let app = spawn_service(backend, &db.config).await;
    let scenario = generate(5, 260, 2, 0.15);
    app.deliver(&scenario.steps).await;
    wait_for_sink(app.state.store.as_ref(), StdDuration::from_secs(120)).await;

    let (sla_rows, dispositions) = assert_api_sources_agree(&app).await;
    assert_totals(&sla_rows, &dispositions, &scenario.expected);
    // Conversations: bot and VCC ones, every live room merged into its bot conversation.
    let (_, _, csv) = app.get(&format!("/v1/reports/conversations.csv?{FULL}")).await;
    assert_eq!(csv.lines().count() as u64, scenario.expected.conversations + 1);
    // Each live backend's offered count.
    let (_, by_platform) = app
        .get_json(&format!("/v1/reports/sla?{FULL}&interval=day&group_by=platform"))
        .await;
    assert_eq!(by_platform["source"], "clickhouse", "ClickHouse is the default source");
    for (platform, offered) in &scenario.expected.offered_by_platform {
        let got: u64 = by_platform["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["platform"] == platform.as_str())
            .map(|r| r["offered"].as_u64().unwrap())
            .sum();
        assert_eq!(got, *offered, "{platform}");
    }
    // The per-queue target (30 s for 2179) and the default one give different within-SLA shares.
    let (_, by_queue) = app
        .get_json(&format!("/v1/reports/sla?{FULL}&interval=day&group_by=queue"))
        .await;
    let queues: std::collections::BTreeSet<&str> = by_queue["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["queue"].as_str())
        .collect();
    for q in ["2179", "2185", "support", "Chat", "Billing"] {
        assert!(queues.contains(q), "{q} in {queues:?}");
    }

    // Bad parameters.
    for (path, param) in [
        ("/v1/reports/sla?interval=week", "interval"),
        ("/v1/reports/dispositions?since=yesterday", "since"),
        ("/v1/reports/sla?group_by=team", "group_by"),
        (
            "/v1/reports/conversations.csv?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z",
            "since",
        ),
        ("/v1/reports/sla?source=elsewhere", "source"),
    ] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{path}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(param),
            "{path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_api_answers_the_same_from_both_sources_on_sqlite() {
    report_api_answers_the_same_from_both_sources(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_api_answers_the_same_from_both_sources_on_postgres() {
    report_api_answers_the_same_from_both_sources(Backend::Postgres).await;
}

/// ClickHouse is down when the service starts and again later: webhooks are still answered 200, reports
/// fall back to the store, the checkpoint in the store does not move, and the sink catches up each time
/// ClickHouse is back, with nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_ingests_while_clickhouse_is_down_and_the_sink_catches_up() {
    let Some(db) = fresh_config().await else {
        return;
    };
    let switch = Switch::new().await;
    let config = ClickHouseConfig {
        url: switch.url(),
        ..db.config.clone()
    };
    let app = spawn_service(Backend::Sqlite, &config).await;
    let store = app.state.store.clone();
    let scenario = generate(6, 160, 1, 0.2);
    let (first, second) = scenario.steps.split_at(scenario.steps.len() / 2);

    // Down from the start: deliveries are stored, reports come from the store.
    app.deliver(first).await;
    let (status, body) = app.get_json(&format!("/v1/reports/sla?{FULL}&interval=day")).await;
    assert_eq!(status, 200);
    assert_eq!(body["source"], "store", "fallback while ClickHouse is down");
    let offered_so_far: u64 = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offered"].as_u64().unwrap())
        .sum();
    assert!(offered_so_far > 0);
    let (status, body) = app.get_json(&format!("/v1/reports/sla?{FULL}&source=clickhouse")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), 0);

    // Up: the sink applies its migrations and ships the log.
    switch.up().await;
    let shipped = wait_for_sink(store.as_ref(), StdDuration::from_secs(90)).await;
    assert_api_sources_agree(&app).await;

    // Down again while the second half arrives: the checkpoint stays where it was.
    switch.down();
    app.deliver(second).await;
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), shipped);
    assert!(store.last_seq().await.unwrap() > shipped);
    let (_, body) = app.get_json(&format!("/v1/reports/sla?{FULL}&interval=day")).await;
    assert_eq!(body["source"], "store");

    // Back: the sink resumes from its checkpoint.
    switch.up().await;
    wait_for_sink(store.as_ref(), StdDuration::from_secs(90)).await;
    let (sla_rows, dispositions) = assert_api_sources_agree(&app).await;
    assert_totals(&sla_rows, &dispositions, &scenario.expected);
    let analytics = Analytics::new(&db.config);
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &scenario::sla()).await;
}

/// The full-range day reports from ClickHouse.
async fn clickhouse_totals(analytics: &Analytics) -> (Vec<SlaRow>, Vec<DispositionRow>) {
    let q = full_query(Interval::Day, vec![]);
    (
        reports::sla_report_clickhouse(analytics, &q).await.unwrap(),
        reports::disposition_report_clickhouse(analytics, &q).await.unwrap(),
    )
}

async fn ship_all(store: &dyn Store, analytics: &Analytics, sla: &SlaConfig) -> u64 {
    let mut total = 0;
    loop {
        let n = sink::ship_once(store, analytics, sla).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

/// A link delivered after the live chat's events: the recorded event's time is the queue time, its
/// arrival later.
fn is_late_link(step: &Step) -> bool {
    matches!(&step.kind, StepKind::Recorded(e) if e.kind == "ledger.queue_accepted" && step.arrival > e.occurred_at)
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let store = store::open(&format!("sqlite://{}", dir.path().join("ledger.db").display()), 4)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// The sink against the real store: a ClickHouse outage fails the pass without moving the checkpoint;
/// live rooms shipped as conversations of their own are merged into their bot conversation when the link
/// arrives; a crash between insert and checkpoint (checkpoint set back) and a lost checkpoint re-ship
/// batches; none of it counts anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_crashes_and_lost_checkpoints_never_double_count() {
    let Some((db, analytics)) = fresh_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let sla = scenario::sla();
    let scenario = generate(4, 220, 1, 0.3);
    let (late, early): (Vec<Step>, Vec<Step>) = scenario.steps.iter().cloned().partition(is_late_link);
    assert!(late.len() >= 5, "{} late links", late.len());
    scenario::append_steps(store.as_ref(), &early, &sla, 200).await.unwrap();

    // ClickHouse down: the pass fails, nothing is checkpointed.
    let down = Analytics::new(&ClickHouseConfig {
        url: "http://127.0.0.1:1".into(),
        ..db.config.clone()
    });
    assert!(sink::ship_once(store.as_ref(), &down, &sla).await.is_err());
    assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), 0);

    // Before the links: each live room is a conversation of its own.
    let before = ship_all(store.as_ref(), &analytics, &sla).await;
    assert_eq!(before as i64, store.last_seq().await.unwrap());
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
    let rooms_before = all_conversations(store.as_ref()).await.len() as u64;
    assert!(rooms_before > scenario.expected.conversations);

    // The links arrive: the rooms are absorbed, their rows are tombstoned.
    let absorbed: Vec<Uuid> = late
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Recorded(e) => e.links.first().map(|l| l.conversation_id()),
            _ => None,
        })
        .collect();
    scenario::append_steps(store.as_ref(), &late, &sla, 200).await.unwrap();
    assert_eq!(ship_all(store.as_ref(), &analytics, &sla).await, late.len() as u64);
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
    assert_eq!(
        all_conversations(store.as_ref()).await.len() as u64,
        scenario.expected.conversations
    );
    let ids = absorbed
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        count(
            &analytics,
            &format!("SELECT count() AS n FROM handoffs_current WHERE conversation_id IN ({ids})")
        )
        .await,
        0,
        "absorbed rooms keep no live handoff"
    );
    let (sla_rows, dispositions) = clickhouse_totals(&analytics).await;
    assert_totals(&sla_rows, &dispositions, &scenario.expected);

    // A crash between insert and checkpoint: the checkpoint is set back and the batches ship again.
    let last = store.last_seq().await.unwrap();
    store.set_checkpoint(sink::CHECKPOINT, last / 3).await.unwrap();
    assert_eq!(
        ship_all(store.as_ref(), &analytics, &sla).await,
        (last - last / 3) as u64
    );
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
    // The checkpoint lost altogether: the whole log again.
    store.set_checkpoint(sink::CHECKPOINT, 0).await.unwrap();
    assert_eq!(ship_all(store.as_ref(), &analytics, &sla).await, last as u64);
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
    let (sla_rows, dispositions) = clickhouse_totals(&analytics).await;
    assert_totals(&sla_rows, &dispositions, &scenario.expected);
}

/// Everything a backfill leaves in ClickHouse that reports and exports read: the live fact rows, the
/// events and the current rollups, as text.
async fn shipped_tables(analytics: &Analytics) -> Vec<(&'static str, String)> {
    let statements = [
        (
            "conversations",
            "SELECT * FROM conversations_current ORDER BY conversation_id, started_at",
        ),
        (
            "handoffs",
            "SELECT * FROM handoffs_current ORDER BY conversation_id, idx, started_at",
        ),
        (
            "messages",
            "SELECT * FROM messages_current ORDER BY conversation_id, seq, ordinal, started_at",
        ),
        ("events", "SELECT * FROM events FINAL ORDER BY seq"),
        (
            "rollups",
            "SELECT grain, bucket, platform, queue, agent, offered, answered, answered_within_sla, abandoned, \
             short_abandoned, missed, round(wait_sum, 6), wait_count, round(first_response_sum, 6), \
             first_response_count, round(handle_sum, 6), handle_count, completed, disposition_abandoned, \
             disposition_missed, failed, finalizeAggregation(wait_state) FROM handoff_rollup_current \
             ORDER BY grain, bucket, platform, queue, agent",
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in statements {
        let bytes = analytics
            .client()
            .query(sql)
            .fetch_bytes("TabSeparated")
            .unwrap()
            .collect()
            .await
            .unwrap();
        out.push((name, String::from_utf8(bytes.to_vec()).unwrap()));
    }
    out
}

/// The highest event seq a database holds (0 when none): where a sink shipping into it stands.
async fn pipelined_checkpoint(analytics: &Analytics) -> i64 {
    count(analytics, "SELECT max(seq) AS n FROM events").await as i64
}

/// A pass that crashed after its inserts, before its checkpoint, shipped conversations that started after
/// the checkpoint: when their rooms are later absorbed by a merge, the rows it left are still found (what
/// ClickHouse holds is read from its events, not from the checkpoint) and tombstoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_crashed_pass_left_are_tombstoned_when_merged_later() {
    let Some((_db, analytics)) = fresh_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let sla = scenario::sla();
    let scenario = generate(5, 120, 1, 0.4);
    let (late, early): (Vec<Step>, Vec<Step>) = scenario.steps.iter().cloned().partition(is_late_link);
    assert!(late.len() >= 5, "{} late links", late.len());
    scenario::append_steps(store.as_ref(), &early, &sla, 200).await.unwrap();
    let first = store.last_seq().await.unwrap() / 2;
    sink::ship_batch(store.as_ref(), &analytics, &sla, u32::try_from(first).unwrap())
        .await
        .unwrap();
    // The second pass ships the rest (live rooms as conversations of their own), then "crashes": its
    // checkpoint is never stored.
    sink::ship_once(store.as_ref(), &analytics, &sla).await.unwrap();
    store.set_checkpoint(sink::CHECKPOINT, first).await.unwrap();
    scenario::append_steps(store.as_ref(), &late, &sla, 200).await.unwrap();
    ship_all(store.as_ref(), &analytics, &sla).await;
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
    let absorbed = late
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Recorded(e) => e.links.first().map(|l| format!("'{}'", l.conversation_id())),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",");
    for table in ["conversations_current", "handoffs_current"] {
        assert_eq!(
            count(
                &analytics,
                &format!("SELECT count() AS n FROM {table} WHERE conversation_id IN ({absorbed})")
            )
            .await,
            0,
            "absorbed rooms keep no live row in {table}"
        );
    }
    let (sla_rows, dispositions) = clickhouse_totals(&analytics).await;
    assert_totals(&sla_rows, &dispositions, &scenario.expected);
}

/// A sink that ships in many small passes while the log grows (conversations shipped half-way and again,
/// live rooms shipped on their own and absorbed when their link arrives) leaves exactly the rows and rollups
/// that one pass over the whole log leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_in_small_passes_ships_what_one_pass_ships() {
    let Some((_one_db, one)) = fresh_db().await else {
        return;
    };
    let Some((_many_db, many)) = fresh_db().await else {
        return;
    };
    let Some((_pipelined_db, pipelined)) = fresh_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let sla = scenario::sla();
    let scenario = generate(6, 180, 2, 0.3);
    let mut passes = 0;
    let running = tokio_util::sync::CancellationToken::new();
    for steps in scenario.steps.chunks(150) {
        scenario::append_steps(store.as_ref(), steps, &sla, 50).await.unwrap();
        while sink::ship_batch(store.as_ref(), &many, &sla, 37).await.unwrap() > 0 {
            passes += 1;
        }
        // The same log into another database, with the store reads of each pass running beside the
        // previous pass's ClickHouse work (as the service's sink ships).
        let checkpoint = store.checkpoint(sink::CHECKPOINT).await.unwrap();
        let from = pipelined_checkpoint(&pipelined).await;
        store.set_checkpoint(sink::CHECKPOINT, from).await.unwrap();
        let stored = Mutex::new(Vec::new());
        let mut shipped = 0;
        loop {
            let record = |c: i64| stored.lock().unwrap().push(c);
            match sink::ship_until_caught_up(&store, &pipelined, &sla, 37, &running, &record)
                .await
                .unwrap()
            {
                0 => break,
                n => shipped += n,
            }
        }
        assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), checkpoint);
        assert_eq!(shipped as i64, checkpoint - from);
        let stored = stored.into_inner().unwrap();
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
        assert_eq!(stored.last().copied().unwrap_or(from), checkpoint);
    }
    let last = store.last_seq().await.unwrap();
    assert!(passes as i64 >= last / 37, "{passes} passes");
    // A backlog of exactly one full pass: the read after it finds nothing, and the count still says 37.
    store.set_checkpoint(sink::CHECKPOINT, last - 37).await.unwrap();
    assert_eq!(
        sink::ship_until_caught_up(&store, &pipelined, &sla, 37, &running, &|_| {})
            .await
            .unwrap(),
        37
    );

    store.set_checkpoint(sink::CHECKPOINT, 0).await.unwrap();
    let whole = u32::try_from(last).unwrap() + 1;
    assert_eq!(
        sink::ship_batch(store.as_ref(), &one, &sla, whole).await.unwrap(),
        last as u64
    );
    assert_eq!(sink::ship_batch(store.as_ref(), &one, &sla, whole).await.unwrap(), 0);
    let (expected, got) = (shipped_tables(&one).await, shipped_tables(&many).await);
    for ((name, a), (_, b)) in expected.iter().zip(&got) {
        assert!(a.lines().count() > 10, "{name}: {} rows", a.lines().count());
        assert!(a == b, "{name} differs after a backfill in passes of 37 events");
    }
    for ((name, a), (_, b)) in expected.iter().zip(&shipped_tables(&pipelined).await) {
        assert!(
            a == b,
            "{name} differs after a pipelined backfill in passes of 37 events"
        );
    }
    assert_store_and_clickhouse_agree(store.as_ref(), &many, &sla).await;
    let (sla_rows, dispositions) = clickhouse_totals(&many).await;
    assert_totals(&sla_rows, &dispositions, &scenario.expected);
}

/// `rollups rebuild` restores every bucket from the fact tables (all of them, or from a time on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_rebuild_restores_every_bucket() {
    let Some((_db, analytics)) = fresh_db().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let sla = scenario::sla();
    let scenario = generate(3, 160, 2, 0.1);
    scenario::append_steps(store.as_ref(), &scenario.steps, &sla, 500)
        .await
        .unwrap();
    ship_all(store.as_ref(), &analytics, &sla).await;
    analytics
        .client()
        .query("TRUNCATE TABLE handoff_rollup")
        .execute()
        .await
        .unwrap();
    let q = full_query(Interval::Hour, vec![]);
    assert!(reports::sla_report_clickhouse(&analytics, &q).await.unwrap().is_empty());
    let hours = rollups::rebuild(&analytics, None).await.unwrap();
    assert!(hours > 20, "rebuilt {hours} hours");
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
    // a partial rebuild from a later time leaves earlier buckets as they are
    let again = rollups::rebuild(&analytics, Some(t("2024-05-02T00:00:00Z")))
        .await
        .unwrap();
    assert!(again < hours);
    assert_store_and_clickhouse_agree(store.as_ref(), &analytics, &sla).await;
}
