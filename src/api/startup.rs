//! Builds the application: store, migrations, writer, HTTP server bound to a listener whose port
//! is known (tests start the real service on port 0).

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::{KeyRing, OpenAccess};
use crate::config::Config;
use crate::outbound::Outbound;
use crate::store;
use crate::telemetry;
use crate::writer::Writer;

/// Connections of the writer's own pool (appends, and quarantine entries between batches).
const WRITER_CONNECTIONS: u32 = 2;

/// A built, not yet running, service.
pub struct Application {
    port: u16,
    metrics_port: Option<u16>,
    server: Server,
    metrics_server: Option<Server>,
    state: AppState,
    writer_task: JoinHandle<()>,
    sink: Option<JoinHandle<()>>,
    stopping: CancellationToken,
    signalled: Arc<Mutex<Option<Instant>>>,
    grace: Duration,
}

impl Application {
    /// Opens and migrates the store, starts the writer and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let shown = crate::config::redact_url(&config.store.url);
        // The writer has a pool of its own, so readers can never take every connection from it; on
        // PostgreSQL the readers' statements are cut off after `store.read_timeout_ms`.
        // It also keeps the quarantine: at most `retention.quarantine_body_bytes` of each body.
        let writer_store = store::open_writer(
            &config.store.url,
            WRITER_CONNECTIONS,
            config.retention.quarantine_body_bytes,
        )
        .await
        .with_context(|| format!("opening the store at {shown}"))?;
        writer_store.migrate().await.context("applying store migrations")?;
        writer_store
            .rebuild_stale(&config.sla)
            .await
            .context("rebuilding projections kept by an earlier version")?;
        let store = store::open(&config.store.reader_url(), config.store.max_connections)
            .await
            .with_context(|| format!("opening the store at {shown}"))?;
        // The relay rules run inside the writer's transactions: an event's commands commit with it.
        let rules = crate::outbound::relay::RelayRules::new(Arc::new(config.clone()))
            .context("building the outbound clients")?;
        let (writer, writer_task) = Writer::spawn_planned(
            writer_store,
            config.sla.clone(),
            config.server.max_batch,
            Some(Arc::new(rules)),
        )
        .await
        .context("starting the writer")?;
        let listener =
            TcpListener::bind(&config.server.bind).with_context(|| format!("binding {}", config.server.bind))?;
        let local = listener.local_addr()?;
        let port = local.port();
        let access = OpenAccess {
            loopback: local.ip().is_loopback(),
            allow_anonymous: config.auth.allow_anonymous,
            open_webhooks: config.auth.open_webhooks,
        };
        let key_count = store.list_keys().await.context("reading the API keys")?.len();
        check_access(&config, access, key_count)?;
        if !config.vcc.encryption_key.is_empty() {
            crate::sources::vcc_crypto::VccKey::from_hex(config.vcc.encryption_key.expose())
                .map_err(anyhow::Error::msg)?;
        }
        warn_open_webhooks(&config, access);
        telemetry::install();
        let metrics_listener = match config.server.metrics_bind.trim() {
            "" => None,
            bind => Some(TcpListener::bind(bind).with_context(|| format!("binding {bind} (server.metrics_bind)"))?),
        };
        let metrics_port = match &metrics_listener {
            Some(l) => Some(l.local_addr()?.port()),
            None => None,
        };
        let grace = Duration::from_secs(config.server.shutdown_grace_seconds.max(1));
        let config = Arc::new(config);
        let outbound =
            Outbound::new(store.clone(), writer.clone(), config.clone()).context("building the outbound clients")?;
        // Before the server accepts anything: the outbox re-sends what was pending at this point only.
        outbound.start().await.context("starting the outbox")?;
        crate::retention::spawn(store.clone(), writer.clone(), config.retention.clone());
        // The ClickHouse sink tails the log in the background (it applies its own migrations and
        // backs off while ClickHouse is down; ingestion never waits for it).
        let stopping = CancellationToken::new();
        let (analytics, sink) =
            match crate::analytics::start(&config, store.clone(), writer.committed(), stopping.clone()) {
                Some((analytics, task)) => (Some(analytics), Some(task)),
                None => (None, None),
            };
        let keys = Arc::new(KeyRing::new(store.clone(), access));
        crate::quarantine::spawn_retention(store.clone(), config.retention.clone());
        let ingest = crate::ingest::Pipeline::new(store.clone(), writer.clone(), config.clone());
        let state = AppState {
            store,
            writer,
            config,
            ingest,
            outbound,
            sessions: api::console::Sessions::default(),
            keys,
        };
        let data = web::Data::new(state.clone());
        let analytics = analytics.map(web::Data::from);
        let limits = state.config.server.clone();
        let metrics_here = metrics_listener.is_none();
        let server = HttpServer::new({
            let data = data.clone();
            move || {
                let mut app = App::new()
                    .wrap(from_fn(api::auth::require_key))
                    .wrap(from_fn(api::limits::body_deadline))
                    .app_data(data.clone());
                if let Some(analytics) = &analytics {
                    app = app.app_data(analytics.clone());
                }
                if metrics_here {
                    app = app.configure(api::configure_metrics);
                }
                // Outermost (wrapped last): it sees every answer, the access check's refusals included,
                // and the key name the check left in the request.
                app.configure(api::configure)
                    .default_service(web::to(api::not_found))
                    .wrap(from_fn(api::observe::observe))
            }
        })
        .client_request_timeout(Duration::from_millis(limits.head_timeout_ms))
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(match limits.keep_alive_seconds {
            0 => KeepAlive::Disabled,
            secs => KeepAlive::Timeout(Duration::from_secs(secs)),
        })
        .max_connections(limits.max_connections.max(1))
        .disable_signals()
        .shutdown_timeout(grace.as_secs());
        let server = match limits.workers {
            0 => server,
            n => server.workers(n),
        };
        let server = server.listen(listener)?.run();
        let metrics_server = match metrics_listener {
            Some(listener) => Some(
                HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .configure(api::configure_metrics)
                        .default_service(web::to(api::not_found))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(grace.as_secs())
                .listen(listener)?
                .run(),
            ),
            None => None,
        };
        let signalled = Arc::new(Mutex::new(None));
        spawn_signal_handler(
            [Some(server.handle()), metrics_server.as_ref().map(Server::handle)],
            signalled.clone(),
        );
        Ok(Application {
            port,
            metrics_port,
            server,
            metrics_server,
            state,
            writer_task,
            sink,
            stopping,
            signalled,
            grace,
        })
    }

    /// The port the service listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `server.metrics_bind`, when metrics are served apart.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// Shared state (store, writer, config).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A handle that ends the writer task (supervision tests; an operator's kill switch).
    pub fn writer_abort_handle(&self) -> tokio::task::AbortHandle {
        self.writer_task.abort_handle()
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully: no new connection is accepted, requests in
    /// flight are answered (webhooks after their commit), the outbox finishes the calls in flight and
    /// records their results, polls stop, the ClickHouse sink finishes its batch; all within
    /// `server.shutdown_grace_seconds` of the signal. What the deadline cuts short was recorded in the log
    /// before it started and is taken up again at the next start.
    ///
    /// If the writer task ends first (a bug, a panic outside the guarded append), `/readyz` fails at once,
    /// the server stops, and this returns an error, so the process exits non-zero and its supervisor
    /// restarts it, instead of answering 503 forever.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            server,
            metrics_server,
            state,
            writer_task,
            sink,
            stopping,
            signalled,
            grace,
            ..
        } = self;
        let metrics_server = metrics_server.map(tokio::spawn);
        let handle = server.handle();
        let mut server = server;
        let served = tokio::select! {
            served = &mut server => served,
            ended = writer_task => {
                let why = match ended {
                    Ok(()) => "it returned".to_string(),
                    Err(e) if e.is_panic() => "it panicked".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(reason = %why, "the writer task ended; stopping the service");
                // Not graceful: nothing in flight can be committed any more. The stop is carried out
                // by the server future itself, so it is polled to the end before the stop is awaited.
                let stopped = handle.stop(false);
                let _ = server.await;
                stopped.await;
                stopping.cancel();
                return Err(std::io::Error::other(format!("the writer task ended ({why})")));
            }
        };
        let deadline = signalled.lock().ok().and_then(|s| *s).unwrap_or_else(Instant::now) + grace;
        stopping.cancel();
        let outbound = state.outbound.clone();
        let background = async move {
            let sink = async {
                if let Some(sink) = sink {
                    let _ = sink.await;
                }
            };
            tokio::join!(outbound.stop(), sink);
        };
        match tokio::time::timeout_at(deadline.into(), background).await {
            Ok(()) => tracing::info!("stopped: requests answered, outbox calls and sink batch finished"),
            Err(_) => tracing::warn!(
                grace_seconds = grace.as_secs(),
                "stopped at the shutdown deadline with work in flight; unfinished outbound calls are re-sent \
                 and the sink resumes from its checkpoint at the next start"
            ),
        }
        if let Some(task) = metrics_server {
            let _ = task.await;
        }
        served
    }
}

/// On SIGTERM or SIGINT: notes the time (the shutdown deadline counts from it) and stops the servers
/// gracefully.
fn spawn_signal_handler(servers: [Option<ServerHandle>; 2], signalled: Arc<Mutex<Option<Instant>>>) {
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::info!(
            signal = name,
            "stopping: no new connections; finishing what is in flight"
        );
        if let Ok(mut at) = signalled.lock() {
            *at = Some(Instant::now());
        }
        let stops = servers.into_iter().flatten().map(|s| async move { s.stop(true).await });
        futures::future::join_all(stops).await;
    });
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// Fails closed: on a non-loopback bind the API needs keys, and `auth.allow_anonymous` is refused
/// (it would serve every transcript to anyone who reaches the port). Says in the log when the API is
/// open.
fn check_access(config: &Config, access: OpenAccess, key_count: usize) -> anyhow::Result<()> {
    if access.allow_anonymous && !access.loopback {
        anyhow::bail!(
            "refusing to start: auth.allow_anonymous = true opens the API to anyone, and server.bind {} is not a \
             loopback address; remove auth.allow_anonymous (or set it to false) and use API keys \
             (`handoff-ledger keys create --name NAME --scope admin`), or bind to 127.0.0.1",
            config.server.bind
        );
    }
    if access.allow_anonymous {
        tracing::warn!(
            bind = %config.server.bind,
            "the API is open to anyone on this host without a key (auth.allow_anonymous = true, loopback bind)"
        );
    } else if key_count == 0 && access.loopback {
        tracing::warn!(
            bind = %config.server.bind,
            "the API is open: no API key exists and the service listens on loopback only; \
             create one with `handoff-ledger keys create --name NAME --scope admin` to require keys"
        );
    } else if key_count == 0 {
        anyhow::bail!(
            "refusing to start: server.bind {} is not a loopback address and no API key exists; create one with \
             `handoff-ledger keys create --name NAME --scope admin`",
            config.server.bind
        );
    }
    Ok(())
}

/// Says at start which webhook endpoints accept deliveries without a token, or refuse them all
/// (non-loopback bind without `auth.open_webhooks`).
fn warn_open_webhooks(config: &Config, access: OpenAccess) {
    let open: Vec<&str> = [
        ("ultimate", config.ultimate.webhook_token.is_empty()),
        ("aivo_live", config.aivo_live.webhook_token.is_empty()),
        ("bright_pattern", config.bright_pattern.webhook_token.is_empty()),
        ("vcc", config.vcc.secret_key.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, open)| open.then_some(name))
    .collect();
    if open.is_empty() {
        return;
    }
    if access.webhooks_open_without_token() {
        tracing::warn!(
            platforms = %open.join(", "),
            "webhook endpoints are open: no token configured (set <platform>.webhook_token / vcc.secret_key)"
        );
    } else {
        tracing::warn!(
            platforms = %open.join(", "),
            "webhook endpoints without a token refuse every delivery (401) on a non-loopback bind: set \
             <platform>.webhook_token / vcc.secret_key, or auth.open_webhooks = true"
        );
    }
}
