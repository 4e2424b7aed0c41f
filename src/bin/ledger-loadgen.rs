//! Load generator for handoff-ledger's webhook path: posts distinct Aivo Live `messageToClient`
//! webhooks from N concurrent clients and reports the sustained rate and latency percentiles.
//!
//! `cargo run --release --bin ledger-loadgen -- --url http://127.0.0.1:8080 --requests 20000 --concurrency 64 --rooms 2000`
//!
//! With `--rate N` the webhooks are sent on a fixed schedule (N per second, open loop) and each
//! latency is measured from the moment its webhook was due, so a stall shows up in the percentiles
//! instead of slowing the sender down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Posts webhooks at handoff-ledger and measures the sustained rate")]
struct Args {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Webhooks to send in all.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Distinct conversations (rooms) the webhooks are spread over.
    #[arg(long, default_value_t = 2_000)]
    rooms: u64,
    /// Stop after this many seconds even if not all were sent.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Webhooks per second on a fixed schedule; 0 = as fast as the service answers.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Writes every answered webhook's due time (ms since the Unix epoch) and latency (ms) to this
    /// file, one `due latency` line each in schedule order: to line slow answers up with the service's logs.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let run = format!("{:x}", rand::random::<u32>());
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, errors, args_url, run) = (
            client.clone(),
            next.clone(),
            errors.clone(),
            args.url.clone(),
            run.clone(),
        );
        let (requests, rooms, rate) = (args.requests, args.rooms.max(1), args.rate);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() > deadline {
                    break;
                }
                // Open loop: the webhook is due at its place in the schedule, latency counts from then.
                let due = if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    due
                } else {
                    Instant::now()
                };
                let body = json!({
                    "name": "messageToClient",
                    "roomId": format!("load-{run}-{}", i % rooms),
                    "timestamp": 1_800_000_000_000_000_000i64 + i as i64 * 1_000,
                    "botId": 1000,
                    "eventTime": 1_800_000_000i64,
                    "data": {"action": "text", "value": format!("message {i}"), "source": "agent", "agent": {"name": "Load"}}
                });
                match client.post(format!("{args_url}/webhooks/aivo-live")).json(&body).send().await {
                    Ok(res) if res.status().is_success() => latencies.push((due - started, due.elapsed())),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    let elapsed = started.elapsed();
    if let Some(path) = &args.trace {
        let mut by_due = latencies.clone();
        by_due.sort();
        let mut out = String::new();
        for (due, latency) in by_due {
            let at = (started_unix + due).as_secs_f64() * 1000.0;
            out.push_str(&format!("{at:.3} {:.3}\n", latency.as_secs_f64() * 1000.0));
        }
        std::fs::write(path, out)?;
    }
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(_, latency)| latency).collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "sent {} ok, {} errors in {:.2} s: {:.0} webhooks/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
        latencies.len(),
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
