//! Builds the application: store, migrations, writer, HTTP server bound to a listener whose port
//! is known (tests start the real service on port 0).

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::handoff::Handoff;
use crate::writer::Writer;
use crate::{redact, store, telemetry};

/// A built, not yet running, service.
pub struct Application {
    port: u16,
    metrics_port: Option<u16>,
    server: Server,
    metrics_server: Option<Server>,
    state: AppState,
    sink: Option<JoinHandle<()>>,
    stopping: CancellationToken,
    signalled: Arc<Mutex<Option<Instant>>>,
    grace: Duration,
}

impl Application {
    /// Opens and migrates the store, starts the writer and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let store = store::open(&config.store.url, config.store.max_connections)
            .await
            .with_context(|| format!("opening the store at {}", redact::mask_url_passwords(&config.store.url)))?;
        store.migrate().await.context("applying store migrations")?;
        let (writer, _writer_task) = Writer::spawn(store.clone(), config.sla.clone(), config.server.max_batch)
            .await
            .context("starting the writer")?;
        warn_open_webhooks(&config);
        telemetry::install();
        let listener =
            TcpListener::bind(&config.server.bind).with_context(|| format!("binding {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
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
        let handoff =
            Handoff::new(store.clone(), writer.clone(), config.clone()).context("building the outbound clients")?;
        // Before the server accepts anything: the outbox re-sends what was pending at this point only.
        handoff.start().await.context("starting the outbox")?;
        // The ClickHouse sink tails the log in the background (it applies its own migrations and
        // backs off while ClickHouse is down; ingestion never waits for it).
        let stopping = CancellationToken::new();
        let (analytics, sink) =
            match crate::analytics::start(&config, store.clone(), writer.committed(), stopping.clone()) {
                Some((analytics, task)) => (Some(analytics), Some(task)),
                None => (None, None),
            };
        let state = AppState {
            store,
            writer,
            config,
            handoff,
        };
        let data = web::Data::new(state.clone());
        let analytics = analytics.map(web::Data::from);
        let metrics_here = metrics_listener.is_none();
        let server = HttpServer::new({
            let data = data.clone();
            move || {
                let mut app = App::new().app_data(data.clone());
                if let Some(analytics) = &analytics {
                    app = app.app_data(analytics.clone());
                }
                if metrics_here {
                    app = app.configure(api::configure_metrics);
                }
                app.configure(api::configure)
                    .default_service(web::to(api::not_found))
                    .wrap(from_fn(api::observe::observe))
            }
        })
        .disable_signals()
        .shutdown_timeout(grace.as_secs())
        .listen(listener)?
        .run();
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

    /// Serves until SIGTERM or SIGINT, then stops gracefully: no new connection is accepted, requests in
    /// flight are answered (webhooks after their commit), the outbox finishes the calls in flight and
    /// records their results, polls stop, the ClickHouse sink finishes its batch; all within
    /// `server.shutdown_grace_seconds` of the signal. What the deadline cuts short is recorded in the log
    /// and taken up again at the next start.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics_server = self.metrics_server.map(tokio::spawn);
        let served = self.server.await;
        let deadline = self.signalled.lock().ok().and_then(|s| *s).unwrap_or_else(Instant::now) + self.grace;
        self.stopping.cancel();
        let handoff = self.state.handoff.clone();
        let background = async move {
            let sink = async {
                if let Some(sink) = self.sink {
                    let _ = sink.await;
                }
            };
            tokio::join!(handoff.stop(), sink);
        };
        match tokio::time::timeout_at(deadline.into(), background).await {
            Ok(()) => tracing::info!("stopped: requests answered, outbox calls and sink batch finished"),
            Err(_) => tracing::warn!(
                grace_seconds = self.grace.as_secs(),
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

/// Says at start which webhook endpoints accept deliveries without a token.
fn warn_open_webhooks(config: &Config) {
    let open: Vec<&str> = [
        ("ultimate", config.ultimate.webhook_token.is_empty()),
        ("aivo_live", config.aivo_live.webhook_token.is_empty()),
        ("bright_pattern", config.bright_pattern.webhook_token.is_empty()),
        ("vcc", config.vcc.secret_key.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, open)| open.then_some(name))
    .collect();
    if !open.is_empty() {
        tracing::warn!(
            platforms = %open.join(", "),
            "webhook endpoints are open: no token configured (set <platform>.webhook_token / vcc.secret_key)"
        );
    }
}
