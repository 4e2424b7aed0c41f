//! Builds the application: store, migrations, writer, HTTP server bound to a listener whose port
//! is known (tests start the real service on port 0).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::handoff::Handoff;
use crate::store;
use crate::writer::Writer;

/// A built, not yet running, service.
pub struct Application {
    port: u16,
    server: Server,
    state: AppState,
}

impl Application {
    /// Opens and migrates the store, starts the writer and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let store = store::open(&config.store.url, config.store.max_connections)
            .await
            .with_context(|| format!("opening the store at {}", config.store.url))?;
        store.migrate().await.context("applying store migrations")?;
        let (writer, _writer_task) = Writer::spawn(store.clone(), config.sla.clone(), config.server.max_batch)
            .await
            .context("starting the writer")?;
        warn_open_webhooks(&config);
        let listener =
            TcpListener::bind(&config.server.bind).with_context(|| format!("binding {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
        let config = Arc::new(config);
        let handoff =
            Handoff::new(store.clone(), writer.clone(), config.clone()).context("building the outbound clients")?;
        // Before the server accepts anything: the outbox re-sends what was pending at this point only.
        handoff.start().await.context("starting the outbox")?;
        // The ClickHouse sink tails the log in the background (it applies its own migrations and
        // backs off while ClickHouse is down; ingestion never waits for it).
        let analytics = crate::analytics::start(&config, store.clone(), writer.committed()).map(|(a, _task)| a);
        let state = AppState {
            store,
            writer,
            config,
            handoff,
            sessions: api::console::Sessions::default(),
        };
        let data = web::Data::new(state.clone());
        let analytics = analytics.map(web::Data::from);
        let server = HttpServer::new(move || {
            let mut app = App::new().app_data(data.clone());
            if let Some(analytics) = &analytics {
                app = app.app_data(analytics.clone());
            }
            app.configure(api::configure).default_service(web::to(api::not_found))
        })
        .listen(listener)?
        .run();
        Ok(Application { port, server, state })
    }

    /// The port the service listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shared state (store, writer, config).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the server stops.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
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
