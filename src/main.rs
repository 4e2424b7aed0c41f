//! The `handoff-ledger` binary: `serve`, `migrate`, `replay`, `verify`, `openapi`, `config check`, `rollups`,
//! `keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use handoff_ledger::auth::key::{new_key, scopes_to_text};
use handoff_ledger::auth::Scope;
use handoff_ledger::config::redact_url;
use handoff_ledger::store::Store;

use handoff_ledger::config::Config;
use handoff_ledger::config_check;
use handoff_ledger::redact::{mask_url_passwords, Scrubber};
use handoff_ledger::startup::Application;
use handoff_ledger::telemetry::{self, logs::LogStream};

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
    /// The configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// ClickHouse rollups.
    Rollups {
        #[command(subcommand)]
        action: RollupsCommand,
    },
    /// API keys: create, list, revoke (works on a fresh store and while the service runs).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; the key is printed alone on the last line of stdout (it cannot be shown again).
    Create {
        /// Unique name (shows in request logs).
        #[arg(long)]
        name: String,
        /// Scopes: conversations:read, events:read, reports:read, commands:write, admin.
        #[arg(long = "scope", required = true, num_args = 1..)]
        scopes: Vec<Scope>,
    },
    /// List keys: name, scopes, created, last used.
    List,
    /// Revoke (delete) a key by name.
    Revoke {
        /// The key's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load the configuration as `serve` would, refuse unknown keys and impossible values (naming each
    /// key), and print the effective configuration with secrets masked.
    Check,
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

/// glibc's allocator spent a tenth of the service's CPU under ingest load (fastbin consolidation between
/// the HTTP workers, the writer and SQLite's thread); mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mi_option_t` of mimalloc 3 (`c_src/mimalloc/v3/include/mimalloc.h`
/// of libmimalloc-sys 0.1.49, the version Cargo.lock pins): how long freed memory stays before it is
/// given back to the system; -1: never.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    /// mimalloc's `mi_option_set` (linked through the `mimalloc` crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    /// mimalloc's `mi_option_get`.
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// A replay reads and drops a few MB of text per part of a chunk; mimalloc gave that memory back to the
/// system a while after it was freed (`purge_delay`) and the next part faulted it in again (as huge pages,
/// each zeroed: ~10 % of a replay's CPU). A replay is one short process: it keeps what it frees.
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores the option's value (an atomic in mimalloc's option table);
    // the option exists in the mimalloc built here (see `MI_OPTION_PURGE_DELAY`).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // Every subcommand loads and checks the configuration as `serve` does, before anything else.
    let config = match config_check::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // `serve` logs to standard output; the other subcommands keep it for their result.
    let stream = match command {
        Command::Serve => LogStream::Stdout,
        _ => LogStream::Stderr,
    };
    let scrubber = Scrubber::new(config_check::secrets(&config));
    if let Err(e) = telemetry::logs::init(&config.log, stream, scrubber.clone()) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    match run(command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", scrubber.scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(config).await?;
            tracing::info!(
                port = app.port(),
                metrics_port = app.metrics_port(),
                "handoff-ledger listening"
            );
            app.run_until_stopped().await?;
        }
        Command::Config {
            action: ConfigCommand::Check,
        } => {
            println!("# handoff-ledger: the configuration is valid; effective values (secrets masked):");
            print!("{}", config_check::effective_toml(&config)?);
        }
        Command::Migrate => {
            let store = open_store(&config, 1).await?;
            store.rebuild_stale(&config.sla).await?;
            println!("migrations applied to {}", redact_url(&config.store.url));
            if !config.clickhouse.url.is_empty() {
                handoff_ledger::analytics::schema::migrate(&config.clickhouse).await?;
                println!(
                    "ClickHouse migrations applied to {} (database {})",
                    mask_url_passwords(&config.clickhouse.url),
                    config.clickhouse.database
                );
            }
        }
        Command::Replay => {
            keep_freed_memory();
            let store = open_store(&config, 2).await?;
            let bar = indicatif::ProgressBar::new(0).with_style(indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} conversations ({per_sec}, eta {eta})",
            )?);
            let stats = store
                .replay(&config.sla, &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
            bar.finish();
            eprintln!(
                "{}: {} conversations rewritten",
                if stats.online {
                    "online"
                } else {
                    "offline (the stored filing was not the log's)"
                },
                stats.rewritten
            );
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
        Command::Keys { action } => keys(&config, action).await?,
    }
    Ok(())
}

/// Opens the store and applies its migrations (the password of its URL never printed).
async fn open_store(config: &Config, connections: u32) -> anyhow::Result<Arc<dyn Store>> {
    let url = redact_url(&config.store.url);
    let store = handoff_ledger::store::open(&config.store.url, connections)
        .await
        .with_context(|| format!("opening the store at {url}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating the store at {url}"))?;
    Ok(store)
}

async fn keys(config: &Config, action: KeysCommand) -> anyhow::Result<()> {
    let store = open_store(config, 1).await?;
    match action {
        KeysCommand::Create { name, scopes } => {
            let (stored, key) = new_key(&name, &scopes).map_err(anyhow::Error::msg)?;
            if !store.create_key(&stored).await? {
                anyhow::bail!("a key named `{name}` exists (revoke it first, or choose another name)");
            }
            println!(
                "created key `{}` with scopes {}",
                stored.name,
                scopes_to_text(&stored.scopes)
            );
            println!("send it as `Authorization: Bearer <key>`; it is shown only this once:");
            println!("{key}");
        }
        KeysCommand::List => {
            let keys = store.list_keys().await?;
            let width = keys.iter().map(|k| k.name.len()).max().unwrap_or(0).max(4);
            println!("{:width$}  {:40}  {:20}  LAST USED", "NAME", "SCOPES", "CREATED");
            for k in keys {
                let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                println!(
                    "{:width$}  {:40}  {:20}  {}",
                    k.name,
                    scopes_to_text(&k.scopes).replace(' ', ","),
                    time(k.created_at),
                    k.last_used_at.map(time).unwrap_or_else(|| "never".into())
                );
            }
        }
        KeysCommand::Revoke { name } => {
            if !store.revoke_key(&name).await? {
                anyhow::bail!("no key named `{name}`");
            }
            println!("revoked key `{name}`");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `MI_OPTION_PURGE_DELAY` still names mimalloc's purge delay: it reads that option's default in mimalloc
    /// 3's `options.c`, 1,000 ms (a mimalloc whose options moved would answer another option's value), and
    /// setting it is read back.
    #[test]
    fn the_purge_delay_option_is_mimallocs_purge_delay() {
        // SAFETY: reads of mimalloc's option table.
        let default = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not the purge delay (or MIMALLOC_PURGE_DELAY is set)"
        );
        keep_freed_memory();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}
