//! Measures `verify` (the hash-chain walk) and an erasure on a real store, with the ceilings of the same run.
//!
//! ```text
//! cargo build --release --example bench_chain --bin handoff-ledger
//! target/release/examples/bench_chain --events 1000000 --store-url sqlite:///tmp/chain-bench/ledger.db
//! target/release/handoff-ledger verify     # with LEDGER__STORE__URL set to the same store
//! ```
//!
//! Seeding appends Aivo-shaped events (about 400 bytes each, 50 per room) with `store.append_batch`, 1,000 per
//! transaction, as the writer does (so each carries the hash the writer computes). Then, on the same rows:
//! - read ceiling: every page read through `Store::chain_page` and split into rows, one page at a time, nothing hashed;
//! - hash ceiling: SHA-256 of every payload in memory, the chain's own work without I/O;
//! - `verify_log`, the code behind `handoff-ledger verify`: its rate, and its ratio to the read ceiling;
//! - an erasure of a conversation of `--conversation-events` events (`Store::erase`, one transaction).

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use clap::Parser;
use serde_json::json;

use handoff_ledger::config::SlaConfig;
use handoff_ledger::erasure::ErasureTarget;
use handoff_ledger::model::{event_id_for, NewEvent, Platform, StreamKey};
use handoff_ledger::store::{self, Store};
use handoff_ledger::verify::{verify_log, Verdict};

#[derive(Parser)]
struct Args {
    /// Events in the log (seeded when the store holds fewer).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events of the conversation erased.
    #[arg(long, default_value_t = 1_000)]
    conversation_events: u64,
    /// `sqlite://...` or `postgres://...`.
    #[arg(long)]
    store_url: String,
}

fn event(room: &str, i: u64) -> NewEvent {
    let at = Utc.timestamp_opt(1_706_000_000, 0).single().unwrap_or_default() + Duration::milliseconds(i as i64);
    let payload = json!({
        "name": "messageToClient", "roomId": room, "timestamp": at.timestamp_nanos_opt().unwrap_or(0),
        "botId": 1000, "eventTime": at.timestamp(),
        "data": {"action": "text", "source": "agent",
                 "value": format!("Message {i}: thanks for waiting, I am looking at your order right now and will get back to you in a minute."),
                 "agent": {"name": "Tomas", "nickname": "Tomas N", "groupId": 2179}}
    });
    NewEvent {
        event_id: event_id_for(Platform::AivoLive, Some(&format!("bench:{room}:{i}"))),
        stream: StreamKey::new(Platform::AivoLive, room),
        kind: "aivo_live.message_to_client".into(),
        occurred_at: at,
        received_at: at,
        payload: payload.to_string(),
        headers: Default::default(),
        links: Vec::new(),
    }
}

async fn seed(store: &Arc<dyn Store>, from: u64, to: u64, per_room: u64, prefix: &str) -> anyhow::Result<()> {
    let sla = SlaConfig::default();
    let mut i = from;
    let started = Instant::now();
    while i < to {
        let end = (i + 1_000).min(to);
        let groups: Vec<Vec<NewEvent>> = (i..end)
            .map(|n| vec![event(&format!("{prefix}-{}", n / per_room), n)])
            .collect();
        store.append_batch(&groups, &sla).await?;
        i = end;
        if i.is_multiple_of(100_000) {
            eprintln!(
                "seeded {i} events ({:.0}/s)",
                (i - from) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = store::open(&args.store_url, 4).await?;
    store.migrate().await?;
    let have = store.last_seq().await? as u64;
    if have < args.events {
        seed(&store, have, args.events, 50, "bench-room").await?;
    }
    let total = store.last_seq().await? as u64;

    // Read ceiling: the pages verify reads, one after the other, nothing computed.
    let page = i64::from(handoff_ledger::verify::PAGE);
    let started = Instant::now();
    let (mut first, mut rows, mut bytes) = (1i64, 0u64, 0u64);
    while first <= total as i64 {
        let read = store.chain_page(first, first + page - 1).await?;
        let links = read.rows()?;
        rows += links.len() as u64;
        bytes += links.iter().map(|r| r.payload.len() as u64).sum::<u64>();
        first += page;
    }
    let read_rate = rows as f64 / started.elapsed().as_secs_f64();

    // Hash ceiling: SHA-256 of every payload, in memory.
    let sample = store.chain_rows(0, 10_000).await?;
    let started = Instant::now();
    let mut n = 0u64;
    while n < rows {
        for r in &sample {
            std::hint::black_box(handoff_ledger::chain::payload_sha256(&r.payload));
            n += 1;
        }
    }
    let hash_rate = n as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let verdict = verify_log(store.clone(), None, &|_, _| {}).await?;
    let verify_secs = started.elapsed().as_secs_f64();
    let Verdict::Intact { events, .. } = verdict else {
        anyhow::bail!("the chain is broken: {verdict:?}");
    };
    let verify_rate = events as f64 / verify_secs;
    println!(
        "log: {total} events, {:.0} payload bytes on average",
        bytes as f64 / rows.max(1) as f64
    );
    println!("read ceiling (chain_page pages in sequence, no hashing): {read_rate:.0} events/s");
    println!("hash ceiling (SHA-256 of payloads in memory): {hash_rate:.0} events/s");
    println!(
        "verify: {events} events in {verify_secs:.2} s = {verify_rate:.0} events/s ({:.2} of the read ceiling)",
        verify_rate / read_rate
    );

    // An erasure of one conversation of `conversation_events` events.
    let room = format!("erase-room-{}", uuid::Uuid::new_v4().simple());
    let base = store.last_seq().await? as u64;
    seed(&store, base, base + args.conversation_events, u64::MAX, &room).await?;
    let stream = StreamKey::new(Platform::AivoLive, format!("{room}-0"));
    let started = Instant::now();
    let certificate = store
        .erase(
            &ErasureTarget::Stream(stream),
            uuid::Uuid::new_v4(),
            handoff_ledger::sources::truncate_to_micros(Utc::now()),
            &SlaConfig::default(),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the conversation to erase was not found"))?;
    println!(
        "erasure: {} events of one conversation in {:.0} ms",
        certificate.events.len(),
        started.elapsed().as_secs_f64() * 1_000.0
    );
    Ok(())
}
