//! Measures `verify` (the hash-chain walk) and an erasure on a real store, with the ceilings of the same run.
//!
//! ```text
//! cargo build --release --example bench_chain --bin handoff-ledger
//! target/release/examples/bench_chain --events 1000000 --store-url sqlite:///tmp/chain-bench/ledger.db
//! target/release/handoff-ledger verify     # with LEDGER__STORE__URL set to the same store
//! ```
//!
//! Seeding inserts Aivo-shaped events (about 400 bytes each, 50 per room) straight into `events`, 10,000 per
//! transaction, each with the hash the writer computes (`verify` reads nothing else; projecting them first would
//! only slow the bench). The conversation erased is appended with `store.append_batch`, as the writer does, so it
//! is projected. Then, on the same rows:
//! - read ceiling: every page read through `Store::chain_page` and split into rows, one page at a time, nothing hashed;
//! - hash ceiling: SHA-256 of every payload in memory, the chain's own work without I/O;
//! - `verify_log`, the code behind `handoff-ledger verify`: its rate, and its ratio to the read ceiling;
//! - an erasure of a conversation of `--conversation-events` events (`Store::erase`, one transaction).

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use clap::Parser;
use serde_json::json;

use handoff_ledger::chain::{self, ChainLink, Sha256Digest};
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
        platform_at: None,
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

/// The rows of events `from..to` (seq `n + 1`) chained to `prev`, as the writer would store them:
/// `(seq, event_id, external_id, occurred_at, payload, hash)`; the last hash.
type RawRow = (i64, String, String, i64, String, String);

fn raw_rows(from: u64, to: u64, per_room: u64, prev: &mut Sha256Digest) -> Vec<RawRow> {
    (from..to)
        .map(|n| {
            let e = event(&format!("bench-room-{}", n / per_room), n);
            let seq = n as i64 + 1;
            let micros = e.occurred_at.timestamp_micros();
            *prev = chain::event_hash(
                prev,
                &ChainLink {
                    seq,
                    event_id: e.event_id,
                    platform: e.stream.platform.as_str(),
                    external_id: &e.stream.external_id,
                    kind: &e.kind,
                    occurred_at: micros,
                    received_at: micros,
                    payload_sha256: chain::payload_sha256(&e.payload),
                },
            );
            (
                seq,
                e.event_id.to_string(),
                e.stream.external_id,
                micros,
                e.payload,
                chain::to_hex(prev),
            )
        })
        .collect()
}

/// Seeds the log for `verify` alone: rows inserted straight into `events` with the hashes the writer
/// computes (the chain is all `verify` reads; projecting a million events first would only slow the bench).
macro_rules! seed_raw {
    ($pool:expr, $from:expr, $to:expr, $prev:expr) => {{
        let (mut i, started) = ($from, Instant::now());
        let mut prev = $prev;
        while i < $to {
            let end = (i + 10_000).min($to);
            let rows = raw_rows(i, end, 50, &mut prev);
            let mut tx = $pool.begin().await?;
            for chunk in rows.chunks(2_000) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|r| {
                        let b = r * 7;
                        format!(
                            "(${}, ${}, 'aivo_live', ${}, 'aivo_live.message_to_client', ${}, ${}, ${}, ${})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 6,
                            b + 7
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO events (seq, event_id, platform, external_id, kind, occurred_at, received_at, \
                     payload, hash) VALUES {}",
                    values.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for (seq, id, external_id, at, payload, hash) in chunk {
                    query = query
                        .bind(*seq)
                        .bind(id)
                        .bind(external_id)
                        .bind(*at)
                        .bind(*at)
                        .bind(payload)
                        .bind(hash);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            i = end;
            if i.is_multiple_of(100_000) {
                eprintln!(
                    "seeded {i} events ({:.0}/s)",
                    (i - $from) as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }};
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `RUST_LOG=sqlx=debug` shows every statement with its time (where an erasure spends it).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let store = store::open(&args.store_url, 4).await?;
    store.migrate().await?;
    let have = store.last_seq().await? as u64;
    if have < args.events {
        let prev = match store.chain_head().await? {
            Some(head) => chain::from_hex(&head.hash).ok_or_else(|| anyhow::anyhow!("a malformed head hash"))?,
            None => chain::GENESIS,
        };
        if args.store_url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&args.store_url).await?;
            seed_raw!(pool, have, args.events, prev);
        } else {
            let pool = sqlx::PgPool::connect(&args.store_url).await?;
            seed_raw!(pool, have, args.events, prev);
        }
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
