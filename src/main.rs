//! The `handoff-ledger` binary: `serve`, `migrate`, `replay`, `verify`, `openapi`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use handoff_ledger::config::Config;
use handoff_ledger::startup::Application;

#[derive(Parser)]
#[command(name = "handoff-ledger", version, about = "System of record for chat handoffs")]
struct Cli {
    /// TOML configuration file (defaults, then this file, then LEDGER__SECTION__KEY variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Rebuild every projection from the event log.
    Replay,
    /// Check the tamper-evident chain of the whole event log: prints `ok <n> events`, or names the
    /// first broken seq and exits 1.
    Verify {
        /// A head recorded earlier, `SEQ:HASH` (from `GET /v1/events`' `chain_head` or a certificate):
        /// the event at SEQ must still carry HASH.
        #[arg(long, value_parser = parse_pinned)]
        pinned: Option<handoff_ledger::chain::ChainHead>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// ClickHouse rollups.
    Rollups {
        #[command(subcommand)]
        action: RollupsCommand,
    },
}

#[derive(Subcommand)]
enum RollupsCommand {
    /// Rebuild the hourly and daily rollups from the ClickHouse facts (all buckets, or from --since).
    Rebuild {
        /// RFC 3339 time: rebuild the buckets from the hour holding it on.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(config).await?;
            tracing::info!(port = app.port(), "handoff-ledger listening");
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            let store = handoff_ledger::store::open(&config.store.url, 1).await?;
            store.migrate().await?;
            store.rebuild_stale(&config.sla).await?;
            println!("migrations applied to {}", config.store.url);
            if !config.clickhouse.url.is_empty() {
                handoff_ledger::analytics::schema::migrate(&config.clickhouse).await?;
                println!(
                    "ClickHouse migrations applied to {} (database {})",
                    config.clickhouse.url, config.clickhouse.database
                );
            }
        }
        Command::Replay => {
            let store = handoff_ledger::store::open(&config.store.url, 2).await?;
            store.migrate().await?;
            let bar = indicatif::ProgressBar::new(0);
            let stats = store
                .replay(&config.sla, &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
            bar.finish();
            println!(
                "replayed {} events into {} conversations",
                stats.events, stats.conversations
            );
        }
        Command::Verify { pinned } => {
            let store = handoff_ledger::store::open(&config.store.url, 2).await?;
            store.migrate().await?;
            let bar = indicatif::ProgressBar::new(0).with_style(indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
            )?);
            let verdict = handoff_ledger::verify::verify_log(store, pinned, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            match verdict {
                handoff_ledger::verify::Verdict::Intact { events, head } => {
                    println!("ok {events} events");
                    if let Some(head) = head {
                        eprintln!("chain head: seq {} hash {}", head.seq, head.hash);
                    }
                }
                handoff_ledger::verify::Verdict::Broken(broken) => {
                    println!("broken at seq {}: {broken}", broken.seq);
                    std::process::exit(1);
                }
            }
        }
        Command::Openapi => print!("{}", handoff_ledger::api::openapi::openapi_json()?),
        Command::Rollups {
            action: RollupsCommand::Rebuild { since },
        } => {
            if config.clickhouse.url.is_empty() {
                anyhow::bail!("[clickhouse] url is not set (LEDGER__CLICKHOUSE__URL)");
            }
            let analytics = handoff_ledger::analytics::schema::migrate(&config.clickhouse).await?;
            let started = std::time::Instant::now();
            let hours = handoff_ledger::analytics::rollups::rebuild(&analytics, since).await?;
            println!(
                "rebuilt rollups of {hours} hours (and their days) in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `SEQ:HASH` as given to `verify --pinned`.
fn parse_pinned(text: &str) -> Result<handoff_ledger::chain::ChainHead, String> {
    let (seq, hash) = text.split_once(':').ok_or("expected SEQ:HASH")?;
    let seq: i64 = seq.parse().map_err(|e| format!("bad seq `{seq}`: {e}"))?;
    if handoff_ledger::chain::from_hex(hash).is_none() {
        return Err(format!("bad hash `{hash}`: expected 64 hex digits"));
    }
    Ok(handoff_ledger::chain::ChainHead {
        seq,
        hash: hash.to_ascii_lowercase(),
    })
}
