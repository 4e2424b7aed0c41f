//! Seeds the real store with at least N handoffs of the deterministic webhook scenario, ships the log to
//! ClickHouse with the real sink, then times `GET /v1/reports/sla` on the real service from the store
//! (`?source=store`: the store aggregates its handoff rows in SQL) and from ClickHouse
//! (`?source=clickhouse`: the rollups).
//!
//! ```text
//! scripts/clickhouse.sh
//! cargo build --release --example seed_reports
//! target/release/examples/seed_reports --handoffs 1000000 --days 30 --store-url sqlite:///tmp/bench/ledger.db
//! ```
//!
//! Seeding is the fastest honest path: every delivery of the scenario is parsed by its platform's real parser
//! (Ultimate events stamped with their scenario arrival) and appended with `store.append_batch`, many
//! deliveries per transaction, exactly as the writer does under load but without HTTP in between. Shipping is
//! `sink::ship_until_caught_up` (what the service's sink runs), from the checkpoint kept in the store.

#[path = "../tests/common/scenario.rs"]
mod scenario;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use clap::Parser;
use serde_json::Value;

use handoff_ledger::analytics::{schema, sink, Analytics};
use handoff_ledger::config::{ClickHouseConfig, Config};
use handoff_ledger::model::NewEvent;
use handoff_ledger::startup::Application;
use handoff_ledger::store::{self, Store};
use scenario::ScenarioOptions;

#[derive(Parser)]
struct Args {
    /// Handoffs to load (at least).
    #[arg(long, default_value_t = 1_000_000)]
    handoffs: u64,
    /// Days the conversations are spread over.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// The store (an SQLite file is deleted first; a PostgreSQL database must be empty).
    #[arg(long, default_value = "sqlite:///tmp/handoff-bench/ledger.db")]
    store_url: String,
    /// Reuse what the store already holds (no seeding).
    #[arg(long)]
    no_seed: bool,
    /// Stop seeding after this many minutes (the figures then say how far it got).
    #[arg(long, default_value_t = 25)]
    max_seed_minutes: u64,
    /// Deliveries per `append_batch` transaction.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Conversations generated at a time.
    #[arg(long, default_value_t = 10_000)]
    chunk: u64,
    /// ClickHouse HTTP URL.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse: String,
    /// ClickHouse database (dropped and recreated unless --no-ship).
    #[arg(long, default_value = "handoff_bench")]
    database: String,
    /// Keep what ClickHouse holds (no shipping).
    #[arg(long)]
    no_ship: bool,
    /// Scenario seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Repetitions of each timed report (the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Report sources timed (`clickhouse,store`; with one only, nothing is compared).
    #[arg(long, default_value = "clickhouse,store")]
    sources: String,
    /// Time no report (seed and/or ship only).
    #[arg(long)]
    no_reports: bool,
    /// Reports timed: `sla`, `dispositions` (each over the same queries).
    #[arg(long, default_value = "sla")]
    reports: String,
    /// Every shape of query (hourly and daily, each not grouped and by platform, queue, agent), not only
    /// the three of the first figures.
    #[arg(long)]
    all_shapes: bool,
    /// Write each answer's rows (of the last source, last run) to this directory, one JSON file per report
    /// and query, to compare two builds byte for byte.
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
}

/// CPU seconds (user + system) this process has used so far, service included (it runs in-process).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which ends with the last ')'): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn seed(store: &dyn Store, args: &Args, start: DateTime<Utc>) -> anyhow::Result<()> {
    let sla = scenario::sla();
    let mut opts = ScenarioOptions::new(args.seed, 0, start, Duration::days(args.days));
    // One bot line before the escalation: fewer events per handoff, the same report content.
    opts.max_bot_messages = 1;
    let started = Instant::now();
    let deadline = started + std::time::Duration::from_secs(args.max_seed_minutes * 60);
    let (mut handoffs, mut conversations, mut deliveries, mut events) = (0u64, 0u64, 0u64, 0u64);
    let mut parse_secs = 0.0;
    while handoffs < args.handoffs && Instant::now() < deadline {
        let mut steps = Vec::new();
        for n in conversations..conversations + args.chunk {
            let plan = scenario::conversation(&opts, &sla, n);
            handoffs += plan.expected.handoffs;
            steps.extend(plan.steps);
        }
        conversations += args.chunk;
        steps.sort_by_key(|s| s.arrival);
        let parsing = Instant::now();
        let groups: Vec<Vec<NewEvent>> = steps.iter().map(|s| s.events()).collect::<Result<_, _>>()?;
        parse_secs += parsing.elapsed().as_secs_f64();
        deliveries += groups.len() as u64;
        events += groups.iter().map(|g| g.len() as u64).sum::<u64>();
        for batch in groups.chunks(args.batch.max(1)) {
            store.append_batch(batch, &sla).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        eprint!(
            "\rseeded {handoffs} handoffs, {conversations} conversations, {events} events in {secs:.0} s ({:.0} events/s)",
            events as f64 / secs
        );
    }
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    println!("## Seed ({})", args.store_url);
    println!(
        "- {handoffs} handoffs in {conversations} conversations over {} days: {deliveries} deliveries, {events} events",
        args.days
    );
    println!(
        "- parse + append_batch ({} deliveries per transaction): {secs:.0} s = {:.0} events/s, {:.0} handoffs/s (parsing alone {parse_secs:.0} s)",
        args.batch,
        events as f64 / secs,
        handoffs as f64 / secs
    );
    if handoffs < args.handoffs {
        println!(
            "- stopped after {} minutes, short of {} handoffs",
            args.max_seed_minutes, args.handoffs
        );
    }
    Ok(())
}

async fn ship(store: &Arc<dyn Store>, args: &Args) -> anyhow::Result<()> {
    let config = ClickHouseConfig {
        url: args.clickhouse.clone(),
        database: args.database.clone(),
        ..ClickHouseConfig::default()
    };
    clickhouse::Client::default()
        .with_url(config.url.clone())
        .query(&format!("DROP DATABASE IF EXISTS {}", args.database))
        .execute()
        .await?;
    let analytics: Analytics = schema::migrate(&config).await?;
    store.set_checkpoint(sink::CHECKPOINT, 0).await?;
    let sla = scenario::sla();
    let last = store.last_seq().await?;
    let started = Instant::now();
    let mut shipped = 0u64;
    let running = tokio_util::sync::CancellationToken::new();
    loop {
        let n = sink::ship_until_caught_up(store, &analytics, &sla, sink::BATCH_EVENTS, &running, &|_| {}).await?;
        if n == 0 {
            break;
        }
        shipped += n;
        let secs = started.elapsed().as_secs_f64();
        eprint!(
            "\rshipped {shipped} of {last} events in {secs:.0} s ({:.0} events/s)",
            shipped as f64 / secs
        );
    }
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    println!();
    println!(
        "## Sink (`sink::ship_until_caught_up`, as the service's sink runs it, {} events per pass)",
        sink::BATCH_EVENTS
    );
    println!(
        "- {shipped} events in {secs:.0} s = {:.0} events/s",
        shipped as f64 / secs
    );
    Ok(())
}

async fn time_reports(args: &Args, start: DateTime<Utc>) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.store.url = args.store_url.clone();
    config.sla = scenario::sla();
    config.clickhouse = ClickHouseConfig {
        url: args.clickhouse.clone(),
        database: args.database.clone(),
        ..ClickHouseConfig::default()
    };
    let app = Application::build(config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let at = |d: i64| (start + Duration::days(d)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut queries = vec![
        (
            format!("{} days, hourly, no grouping", args.days),
            format!("since={}&until={}&interval=hour", at(0), at(args.days)),
        ),
        (
            format!("{} days, daily, by platform, queue, agent", args.days),
            format!(
                "since={}&until={}&interval=day&group_by=platform,queue,agent",
                at(0),
                at(args.days)
            ),
        ),
        (
            "1 day, hourly, by queue".to_string(),
            format!(
                "since={}&until={}&interval=hour&group_by=queue",
                at(args.days / 3),
                at(args.days / 3 + 1)
            ),
        ),
    ];
    if args.all_shapes {
        queries.insert(
            1,
            (
                format!("{} days, hourly, by platform, queue, agent", args.days),
                format!(
                    "since={}&until={}&interval=hour&group_by=platform,queue,agent",
                    at(0),
                    at(args.days)
                ),
            ),
        );
        queries.insert(
            2,
            (
                format!("{} days, daily, no grouping", args.days),
                format!("since={}&until={}&interval=day", at(0), at(args.days)),
            ),
        );
    }
    let sources: Vec<&str> = args
        .sources
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    anyhow::ensure!(
        sources.iter().all(|s| ["clickhouse", "store"].contains(s)),
        "--sources takes clickhouse and store"
    );
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir)?;
    }
    for report in args.reports.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        anyhow::ensure!(
            ["sla", "dispositions"].contains(&report),
            "--reports takes sla and dispositions"
        );
        println!();
        println!(
            "## GET /v1/reports/{report} on the service (median of {} runs; CPU: the process's user + system)",
            args.runs
        );
        if sources.len() == 2 {
            println!("| query | ClickHouse | rows | store | CPU | rows | offered (both) |");
            println!("|---|---|---|---|---|---|---|");
        } else {
            println!("| query | {} | CPU | rows | offered |", sources.join(""));
            println!("|---|---|---|---|---|");
        }
        for (n, (label, q)) in queries.iter().enumerate() {
            let mut results = Vec::new();
            for &source in &sources {
                let mut times = Vec::new();
                let mut cpu = Vec::new();
                let mut body = Value::Null;
                for _ in 0..args.runs.max(1) {
                    let started = Instant::now();
                    let cpu_before = cpu_seconds();
                    let res = client
                        .get(format!("{base}/v1/reports/{report}?{q}&source={source}"))
                        .send()
                        .await?;
                    anyhow::ensure!(res.status().is_success(), "{source} {q}: {}", res.status());
                    body = res.json().await?;
                    times.push(started.elapsed().as_secs_f64());
                    cpu.push(cpu_seconds() - cpu_before);
                }
                let rows = body["rows"].as_array().cloned().unwrap_or_default();
                let offered: u64 = rows
                    .iter()
                    .filter_map(|r| r["offered"].as_u64().or(r["completed"].as_u64()))
                    .sum();
                if let Some(dir) = &args.dump {
                    std::fs::write(
                        dir.join(format!("{report}-{n}.json")),
                        serde_json::to_string_pretty(&body["rows"])?,
                    )?;
                }
                results.push((median(times), median(cpu), rows.len(), offered));
            }
            if let [(secs, cpu, rows, offered)] = results[..] {
                println!("| {label} | {secs:.3} s | {cpu:.2} s | {rows} | {offered} |");
                continue;
            }
            let (ch, st) = (results[0], results[1]);
            anyhow::ensure!(
                ch.2 == st.2 && ch.3 == st.3,
                "the sources disagree on {label}: {ch:?} {st:?}"
            );
            println!(
                "| {label} | {:.3} s | {} | {:.3} s | {:.2} s | {} | {} |",
                ch.0, ch.2, st.0, st.1, st.2, ch.3
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `RUST_LOG=handoff_ledger::analytics::sink=debug` prints where each sink pass's time goes.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2024-04-01T00:00:00Z")?.with_timezone(&Utc);
    if !args.no_seed {
        if let Some(path) = args.store_url.strip_prefix("sqlite://") {
            let path = std::path::Path::new(path);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
        }
    }
    let store: Arc<dyn Store> = store::open(&args.store_url, 4).await?;
    store.migrate().await?;
    if !args.no_seed {
        anyhow::ensure!(store.last_seq().await? == 0, "the store is not empty");
        seed(store.as_ref(), &args, start).await?;
    }
    if !args.no_ship {
        ship(&store, &args).await?;
    }
    drop(store);
    if args.no_reports {
        return Ok(());
    }
    time_reports(&args, start).await
}
