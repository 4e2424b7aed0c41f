//! Every panel query of `dashboards/*.json`, with the Grafana ClickHouse data source's macros and the template
//! variables expanded as Grafana would, runs against a real ClickHouse holding a scenario that went through the
//! real service (platform webhooks -> parsers -> writer -> SQLite store -> the service's own sink), returns
//! rows, and agrees with the report API's numbers (served from the store) and with the store's conversations.
//! Skips locally (fails in CI) when ClickHouse is unreachable.

mod common;

use common::{fresh_clickhouse, TestDb};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use handoff_ledger::analytics::reports::{DispositionRow, SlaRow};
use handoff_ledger::analytics::scenario::{self, ScenarioOptions};
use handoff_ledger::analytics::sink;
use handoff_ledger::api::AppState;
use handoff_ledger::config::{ClickHouseConfig, Config};
use handoff_ledger::model::{Conversation, Platform};
use handoff_ledger::startup::Application;
use handoff_ledger::store::{ConversationFilter, Store};

async fn fresh_config() -> Option<TestDb> {
    fresh_clickhouse("handoff_dash").await
}

/// The real service on port 0 with a fresh SQLite store, analytics on.
struct Service {
    address: String,
    client: reqwest::Client,
    state: AppState,
    _dir: tempfile::TempDir,
}

async fn spawn_service(clickhouse: &ClickHouseConfig) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.sla = scenario::sla();
    config.clickhouse = clickhouse.clone();
    config.store.url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let app = Application::build(config).await.expect("build the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    Service {
        address,
        client: reqwest::Client::new(),
        state,
        _dir: dir,
    }
}

impl Service {
    /// A report from the API, computed from the store.
    async fn report<T: serde::de::DeserializeOwned>(&self, path: &str, query: &str) -> Vec<T> {
        let res = self
            .client
            .get(format!("{}{path}?{query}&source=store", self.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}?{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["source"], "store");
        serde_json::from_value(body["rows"].clone()).unwrap()
    }

    /// Waits until the sink's checkpoint (kept in the store) has reached the end of the log.
    async fn wait_for_sink(&self) {
        let store = self.state.store.as_ref();
        let deadline = Instant::now() + StdDuration::from_secs(120);
        loop {
            let last = store.last_seq().await.unwrap();
            let checkpoint = store.checkpoint(sink::CHECKPOINT).await.unwrap();
            if last > 0 && checkpoint == last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sink did not catch up: {checkpoint} of {last}"
            );
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
    }
}

/// The store's conversations started in `[since, until)` that have an Ultimate (bot) stream.
async fn bot_conversations(store: &dyn Store, since: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Conversation> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_conversations(&ConversationFilter {
                platform: Some(Platform::Ultimate),
                since: Some(since),
                until: Some(until),
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

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Runs a query, answering the rows of `FORMAT JSON`.
async fn run(db: &TestDb, sql: &str) -> Vec<serde_json::Map<String, Value>> {
    let resp = reqwest::Client::new()
        .post(format!("{}/?database={}", db.config.url, db.config.database))
        .body(format!("{sql} FORMAT JSON"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "query failed ({status}): {text}\nSQL: {sql}");
    let body: Value = serde_json::from_str(&text).unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

/// A number from ClickHouse JSON (64-bit integers come quoted; NaN comes as null).
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        _ => false,
    }
}

/// Expands the grafana-clickhouse-datasource macros (`$__timeFilter(col)`, `$__fromTime`, `$__toTime`) and
/// template variables (`${name:singlequote}` for multi-value, `${name}` / `$name` for single) as Grafana does.
fn expand(sql: &str, from: i64, to: i64, vars: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = sql.to_string();
    while let Some(start) = out.find("$__timeFilter(") {
        let open = start + "$__timeFilter(".len();
        let close = open + out[open..].find(')').expect("closing parenthesis");
        let column = out[open..close].trim().to_string();
        out.replace_range(
            start..=close,
            &format!("{column} >= toDateTime({from}) AND {column} <= toDateTime({to})"),
        );
    }
    out = out
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"));
    for (name, values) in vars {
        let quoted = values
            .iter()
            .map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(",");
        let first = values.first().cloned().unwrap_or_default();
        out = out
            .replace(&format!("${{{name}:singlequote}}"), &quoted)
            .replace(&format!("${{{name}}}"), &first)
            .replace(&format!("${name}"), &first);
    }
    assert!(!out.contains('$'), "unexpanded macro or variable in: {out}");
    out
}

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out: Vec<Dashboard> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| Dashboard {
            file: p.file_name().unwrap().to_string_lossy().into_owned(),
            json: serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
        })
        // The service's own dashboard reads Prometheus (tests/ops.rs checks it).
        .filter(|d| {
            d.json["templating"]["list"]
                .as_array()
                .is_some_and(|vars| vars.iter().any(|v| v["query"] == "grafana-clickhouse-datasource"))
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// Template variables with every value selected ("All"), the grain fixed.
async fn variables(db: &TestDb, dashboard: &Value, grain: &str) -> BTreeMap<String, Vec<String>> {
    let mut vars = BTreeMap::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_string();
        match v["type"].as_str().unwrap() {
            "query" => {
                let rows = run(db, v["query"].as_str().unwrap()).await;
                let values: Vec<String> = rows
                    .iter()
                    .map(|r| r.values().next().unwrap().as_str().unwrap().to_string())
                    .collect();
                assert!(!values.is_empty(), "variable {name} has no values");
                vars.insert(name, values);
            }
            "custom" => {
                vars.insert(name, vec![grain.to_string()]);
            }
            _ => {}
        }
    }
    vars
}

fn panel_sql(dashboard: &Value, title: &str) -> String {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title}"))["targets"][0]["rawSql"]
        .as_str()
        .unwrap()
        .to_string()
}

fn bucket_text(v: &Value) -> String {
    // ClickHouse prints DateTime('UTC') as "YYYY-MM-DD hh:mm:ss"
    format!("{}Z", v.as_str().unwrap().replace(' ', "T"))
}

/// Loads the scenario through the real service and waits for its sink; returns the service.
async fn seed(db: &TestDb) -> Service {
    let app = spawn_service(&db.config).await;
    let opts = ScenarioOptions::new(11, 450, t("2024-05-01T00:00:00Z"), Duration::days(3));
    let scenario = scenario::generate(&opts, &scenario::sla());
    scenario::deliver(&app.client, &app.address, &app.state.writer, &scenario.steps)
        .await
        .unwrap();
    app.wait_for_sink().await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_runs_and_agrees_with_the_report_api() {
    let Some(db) = fresh_config().await else {
        return;
    };
    let app = seed(&db).await;
    let all = dashboards();
    assert_eq!(all.len(), 3, "sla overview, dispositions, bot handoff");

    // One UTC day as Grafana sends it: `to` inclusive.
    let (from, to) = (t("2024-05-02T00:00:00Z"), t("2024-05-02T23:59:59Z"));
    let (from_s, to_s) = (from.timestamp(), to.timestamp());
    let mut panels_run = 0;
    for d in &all {
        for grain in ["hour", "day"] {
            let vars = variables(&db, &d.json, grain).await;
            for p in d.json["panels"].as_array().unwrap() {
                for target in p["targets"].as_array().unwrap() {
                    assert_eq!(target["datasource"]["type"], "grafana-clickhouse-datasource");
                    let sql = expand(target["rawSql"].as_str().unwrap(), from_s, to_s, &vars);
                    let rows = run(&db, &sql).await;
                    assert!(
                        !rows.is_empty(),
                        "{} / {} ({grain}) returned no rows",
                        d.file,
                        p["title"]
                    );
                    panels_run += 1;
                }
            }
        }
    }
    assert!(panels_run >= 24);

    let by_file = |f: &str| &all.iter().find(|d| d.file == f).unwrap().json;
    let sla_dash = by_file("sla_overview.json");
    let hour_vars = variables(&db, sla_dash, "hour").await;
    let day_vars = variables(&db, sla_dash, "day").await;
    let day = "since=2024-05-02T00:00:00Z&until=2024-05-03T00:00:00Z";

    // SLA over time (hourly) = the SLA report by hour.
    let report: Vec<SlaRow> = app.report("/v1/reports/sla", &format!("{day}&interval=hour")).await;
    assert!(report.len() >= 20, "{} hours", report.len());
    let volumes = run(
        &db,
        &expand(
            &panel_sql(sla_dash, "Offered, answered, abandoned, missed"),
            from_s,
            to_s,
            &hour_vars,
        ),
    )
    .await;
    let service = run(
        &db,
        &expand(&panel_sql(sla_dash, "Service level"), from_s, to_s, &hour_vars),
    )
    .await;
    let waits = run(
        &db,
        &expand(&panel_sql(sla_dash, "Wait p50 / p90"), from_s, to_s, &hour_vars),
    )
    .await;
    let by_bucket: HashMap<String, &SlaRow> = report.iter().map(|r| (r.bucket.clone(), r)).collect();
    let mut compared = 0;
    for row in &volumes {
        let bucket = bucket_text(&row["time"]);
        let Some(r) = by_bucket.get(&bucket) else {
            // a bucket holding only dispositions has no SLA row
            assert_eq!(num(&row["Offered"]), Some(0.0));
            continue;
        };
        assert_eq!(num(&row["Offered"]), Some(r.offered as f64), "{bucket}");
        assert_eq!(num(&row["Answered"]), Some(r.answered as f64), "{bucket}");
        assert_eq!(num(&row["Abandoned"]), Some(r.abandoned as f64), "{bucket}");
        assert_eq!(num(&row["Short_abandoned"]), Some(r.short_abandoned as f64), "{bucket}");
        assert_eq!(num(&row["Missed"]), Some(r.missed as f64), "{bucket}");
        compared += 1;
    }
    assert_eq!(compared, report.len(), "every hour of the report has its panel row");
    for row in &service {
        let bucket = bucket_text(&row["time"]);
        if let Some(r) = by_bucket.get(&bucket) {
            assert!(close(num(&row["Service_level"]), r.service_level), "{bucket}");
        }
    }
    for row in &waits {
        let r = by_bucket[&bucket_text(&row["time"])];
        assert!(close(num(&row["Wait_p50"]), r.wait_p50_seconds));
        assert!(close(num(&row["Wait_p90"]), r.wait_p90_seconds));
    }

    // Per queue (one day) = the SLA report by day and queue.
    let report: Vec<SlaRow> = app
        .report("/v1/reports/sla", &format!("{day}&interval=day&group_by=queue"))
        .await;
    let per_queue = run(&db, &expand(&panel_sql(sla_dash, "Per queue"), from_s, to_s, &day_vars)).await;
    assert!(report.len() >= 5, "every queue of the scenario: {report:?}");
    let report_queues: HashMap<String, &SlaRow> = report
        .iter()
        .map(|r| (r.queue.clone().flatten().unwrap_or_default(), r))
        .collect();
    let mut compared = 0;
    for row in &per_queue {
        let queue = row["queue"].as_str().unwrap();
        let Some(r) = report_queues.get(queue) else {
            // a group holding only dispositions (hand-overs that failed before a queue) has no SLA row
            for column in ["Offered", "Answered", "Abandoned", "Missed"] {
                assert_eq!(num(&row[column]), Some(0.0), "{queue} {column}");
            }
            continue;
        };
        compared += 1;
        assert_eq!(num(&row["Offered"]), Some(r.offered as f64), "{queue}");
        assert_eq!(
            num(&row["Answered_within_SLA"]),
            Some(r.answered_within_sla as f64),
            "{queue}"
        );
        assert!(close(num(&row["Service_level"]), r.service_level), "{queue}");
        assert!(close(num(&row["Wait_p50"]), r.wait_p50_seconds), "{queue}");
        assert!(close(num(&row["Wait_p90"]), r.wait_p90_seconds), "{queue}");
        assert!(close(num(&row["Avg_handle"]), r.avg_handle_seconds), "{queue}");
        assert!(
            close(num(&row["Avg_first_response"]), r.avg_first_response_seconds),
            "{queue}"
        );
    }
    assert_eq!(compared, report.len(), "every queue of the report has its panel row");

    // Dispositions by platform and by agent (one day) = the disposition report.
    let disp_dash = by_file("dispositions.json");
    let disp_vars = variables(&db, disp_dash, "day").await;
    for (title, group, column) in [("By platform", "platform", "platform"), ("By agent", "agent", "agent")] {
        let report: Vec<DispositionRow> = app
            .report(
                "/v1/reports/dispositions",
                &format!("{day}&interval=day&group_by={group}"),
            )
            .await;
        let rows = run(&db, &expand(&panel_sql(disp_dash, title), from_s, to_s, &disp_vars)).await;
        assert_eq!(rows.len(), report.len(), "{title}");
        for (row, r) in rows.iter().zip(&report) {
            let dim = if group == "platform" {
                r.platform.clone()
            } else {
                r.agent.clone()
            };
            assert_eq!(dim.flatten().unwrap_or_default(), row[column].as_str().unwrap());
            assert_eq!(num(&row["Completed"]), Some(r.completed as f64));
            assert_eq!(num(&row["Abandoned"]), Some(r.abandoned as f64));
            assert_eq!(num(&row["Missed"]), Some(r.missed as f64));
            assert_eq!(num(&row["Failed"]), Some(r.failed as f64));
            assert_eq!(num(&row["Total"]), Some(r.total as f64));
        }
    }

    // Containment = the store's bot conversations of that day that never escalated / all of them.
    let bot_dash = by_file("bot_handoff.json");
    let bot_vars = variables(&db, bot_dash, "day").await;
    let summary = run(
        &db,
        &expand(&panel_sql(bot_dash, "Bot conversations"), from_s, to_s, &bot_vars),
    )
    .await;
    let that_day = bot_conversations(app.state.store.as_ref(), from, from + Duration::days(1)).await;
    let contained = that_day.iter().filter(|c| c.handoffs.is_empty()).count();
    assert!(contained > 0 && contained < that_day.len());
    assert_eq!(num(&summary[0]["Bot_conversations"]), Some(that_day.len() as f64));
    assert_eq!(num(&summary[0]["Contained"]), Some(contained as f64));
    assert!(close(
        num(&summary[0]["Containment"]),
        Some(contained as f64 / that_day.len() as f64)
    ));
}

#[test]
fn dashboards_use_one_data_source_and_declare_the_filters() {
    for d in dashboards() {
        let names: Vec<&str> = d.json["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for required in ["datasource", "platform", "queue", "agent"] {
            assert!(names.contains(&required), "{} lacks variable {required}", d.file);
        }
        for p in d.json["panels"].as_array().unwrap() {
            assert_eq!(p["datasource"]["type"], "grafana-clickhouse-datasource", "{}", d.file);
            let sql = p["targets"][0]["rawSql"].as_str().unwrap();
            assert!(
                sql.contains("$__timeFilter("),
                "{} / {} ignores the time range",
                d.file,
                p["title"]
            );
            assert!(!sql.contains("toStartOfInterval"), "not on 18.16");
        }
    }
}
