//! Seeds ClickHouse with at least N synthetic handoffs (deterministic scenario) and times the SLA report
//! from the ClickHouse rollups and from the store-side computation over the same conversations.
//!
//! ```text
//! scripts/clickhouse.sh
//! cargo run --release --example seed_reports -- --handoffs 1000000 --days 30
//! ```
//!
//! The store figure is the store path's report computation (`reports::sla_report` over the conversations, as
//! the API runs it after paging them out of the store) with the conversations already in memory: the paging
//! cost depends on the store backend and is timed separately against an existing store with `--store-url`.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use clap::Parser;

use handoff_ledger::analytics::facts::{ConversationRow, HandoffRow, MessageRow};
use handoff_ledger::analytics::reports::{self, GroupBy, Interval, ReportQuery};
use handoff_ledger::analytics::{rollups, scenario, schema, sink};
use handoff_ledger::config::{ClickHouseConfig, SlaConfig};
use handoff_ledger::model::Conversation;

#[derive(Parser)]
struct Args {
    /// Handoffs to load (at least).
    #[arg(long, default_value_t = 1_000_000)]
    handoffs: u64,
    /// Days the conversations are spread over.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// ClickHouse HTTP URL.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse: String,
    /// Database (dropped and recreated).
    #[arg(long, default_value = "handoff_bench")]
    database: String,
    /// Scenario seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Repetitions of each timed report (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the store-side computation (saves the memory of holding every conversation).
    #[arg(long)]
    no_store: bool,
    /// Also time paging the conversations of the first query's range out of this store (it must already hold
    /// them: loading a store needs the webhook path, not this tool).
    #[arg(long)]
    store_url: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn timed<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(f64, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed().as_secs_f64());
    }
    let value = last.ok_or_else(|| anyhow::anyhow!("no run"))?;
    Ok((median(times), value))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ClickHouseConfig {
        url: args.clickhouse.clone(),
        database: args.database.clone(),
        ..ClickHouseConfig::default()
    };
    let server = clickhouse::Client::default().with_url(config.url.clone());
    server
        .query(&format!("DROP DATABASE IF EXISTS {}", args.database))
        .execute()
        .await?;
    let analytics = schema::migrate(&config).await?;
    let sla = SlaConfig::default();
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2024-04-01T00:00:00Z")?.with_timezone(&Utc);
    let span = Duration::days(args.days);

    // Load
    let load_started = Instant::now();
    let mut handoffs = 0u64;
    let mut conversations_n = 0u64;
    let mut kept: Vec<Conversation> = Vec::new();
    while handoffs < args.handoffs {
        let chunk: Vec<Conversation> = (conversations_n..conversations_n + 50_000)
            .map(|n| scenario::synthetic_conversation(args.seed, n, start, span, &sla))
            .collect();
        conversations_n += chunk.len() as u64;
        let conversation_rows: Vec<ConversationRow> = chunk.iter().map(ConversationRow::from_conversation).collect();
        let handoff_rows: Vec<HandoffRow> = chunk
            .iter()
            .flat_map(|c| HandoffRow::from_conversation(c, &sla))
            .collect();
        handoffs += handoff_rows.len() as u64;
        sink::insert_rows(&analytics, "conversations", &conversation_rows).await?;
        sink::insert_rows(&analytics, "handoffs", &handoff_rows).await?;
        if !args.no_store || args.store_url.is_some() {
            kept.extend(chunk);
        }
        eprint!("\rloaded {handoffs} handoffs in {conversations_n} conversations");
    }
    eprintln!();
    let load_secs = load_started.elapsed().as_secs_f64();
    let rebuild_started = Instant::now();
    let hours = rollups::rebuild(&analytics, None).await?;
    let rebuild_secs = rebuild_started.elapsed().as_secs_f64();
    println!("## Seed");
    println!(
        "- handoffs: {handoffs} in {conversations_n} conversations over {} days",
        args.days
    );
    println!("- facts insert (batching inserter): {load_secs:.1} s");
    println!("- `rollups rebuild` (all {hours} hours + their days): {rebuild_secs:.1} s");

    let queries = [
        (
            "30 days, hourly, no grouping",
            ReportQuery {
                since: start,
                until: start + span,
                interval: Interval::Hour,
                group_by: vec![],
            },
        ),
        (
            "30 days, daily, by platform, queue, agent",
            ReportQuery {
                since: start,
                until: start + span,
                interval: Interval::Day,
                group_by: vec![GroupBy::Platform, GroupBy::Queue, GroupBy::Agent],
            },
        ),
        (
            "1 day, hourly, by queue",
            ReportQuery {
                since: start + Duration::days(10),
                until: start + Duration::days(11),
                interval: Interval::Hour,
                group_by: vec![GroupBy::Queue],
            },
        ),
    ];
    println!();
    println!("## SLA report (median of {} runs)", args.runs);
    println!("| query | ClickHouse rollups | rows | store computation | rows |");
    println!("|---|---|---|---|---|");
    for (label, q) in &queries {
        let (ch_secs, ch_rows) = timed(args.runs, || async {
            Ok(reports::sla_report_clickhouse(&analytics, q).await?)
        })
        .await?;
        let store = if args.no_store {
            "-".to_string()
        } else {
            let (secs, rows) = timed(args.runs, || async {
                // the store path: conversations started from since - lookback to until, then credited
                let from = q.since - reports::STORE_LOOKBACK;
                let in_range: Vec<Conversation> = kept
                    .iter()
                    .filter(|c| c.started_at >= from && c.started_at < q.until)
                    .cloned()
                    .collect();
                Ok(reports::sla_report(&in_range, &sla, q))
            })
            .await?;
            anyhow::ensure!(rows.len() == ch_rows.len(), "store and ClickHouse disagree on {label}");
            format!("{:.3} s | {}", secs, rows.len())
        };
        println!("| {label} | {ch_secs:.3} s | {} | {store} |", ch_rows.len());
    }

    // Sink passes at this scale: 1,000 conversations change state and are re-shipped with a higher last_seq.
    println!();
    println!("## Sink pass at this scale (diff against ClickHouse, insert, rollup refresh of the dirty hours)");
    let end = start + span;
    for (label, pick_recent) in [
        ("1,000 conversations of the last day", true),
        ("1,000 conversations spread over the whole range", false),
    ] {
        let changed: Vec<(Conversation, Vec<MessageRow>)> = (0..conversations_n)
            .map(|n| scenario::synthetic_conversation(args.seed, n, start, span, &sla))
            .filter(|c| !pick_recent || c.started_at >= end - Duration::days(1))
            .step_by(if pick_recent { 1 } else { 997 })
            .take(1000)
            .map(|mut c| {
                c.last_seq += 1_000_000;
                (c, Vec::new())
            })
            .collect();
        let pass_started = Instant::now();
        sink::ship_conversations(&analytics, &changed, &HashMap::new(), &sla).await?;
        println!("- {label}: {:.2} s", pass_started.elapsed().as_secs_f64());
    }

    if let Some(url) = args.store_url {
        let store = handoff_ledger::store::open(&url, 4).await?;
        store.migrate().await?;
        let q = &queries[0].1;
        let (secs, convs) = timed(1, || async {
            Ok(reports::conversations_for_report(store.as_ref(), q).await?)
        })
        .await?;
        println!("- paging {} conversations out of {url}: {secs:.2} s", convs.len());
    }
    Ok(())
}
