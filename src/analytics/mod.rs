//! ClickHouse analytics: the schema (versioned SQL under `migrations/clickhouse/`), the sink that tails the
//! event log and ships deduplicated facts, the hourly/daily rollups, and the SLA and disposition reports
//! (from ClickHouse when it is configured, from the store otherwise: both give the same numbers).
//!
//! Pure parts (fact rows, metric maths, report aggregation over conversations) live in `facts` and
//! `reports`; everything that talks to ClickHouse goes through [`Analytics`].

pub mod erasure;
pub mod facts;
pub mod reports;
pub mod rollups;
pub mod schema;
pub mod sink;

use std::sync::Arc;

use clickhouse::Client;

use crate::config::{ClickHouseConfig, Config};
use crate::store::{Store, StoreError};

/// Analytics failures.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// ClickHouse refused a statement or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The event log failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A migration file could not be applied.
    #[error("migration {version} ({name}): {source}")]
    Migration {
        /// Version of the file.
        version: u32,
        /// File name.
        name: &'static str,
        /// What ClickHouse said.
        source: clickhouse::error::Error,
    },
    /// A value read back could not be interpreted.
    #[error("unexpected data: {0}")]
    Data(String),
}

/// Result alias for analytics.
pub(crate) type AnalyticsResult<T> = Result<T, AnalyticsError>;

/// A handle to the analytics database: cheap to clone, shared by the sink and the report handlers.
#[derive(Clone)]
pub struct Analytics {
    client: Client,
    config: ClickHouseConfig,
}

impl Analytics {
    /// A handle for `config` (no I/O; see [`schema::migrate`] to create the database and tables).
    pub fn new(config: &ClickHouseConfig) -> Analytics {
        Analytics {
            client: client_for(config).with_database(config.database.clone()),
            config: config.clone(),
        }
    }

    /// The client, bound to the configured database.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ClickHouseConfig {
        &self.config
    }
}

/// A client for the server of `config` with no database selected (used to create it).
pub(crate) fn client_for(config: &ClickHouseConfig) -> Client {
    // LZ4 framing over HTTP (`compress=1`) is understood by 18.16 and current servers alike, but plain bodies
    // keep error messages readable and the volumes here are small.
    // The crate's default HTTP client (TCP keep-alive, a pool idle time under ClickHouse's own 3 s),
    // plus a connect timeout (`clickhouse.connect_timeout_ms`).
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    connector.set_connect_timeout(Some(std::time::Duration::from_millis(config.connect_timeout_ms.max(1))));
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build(connector);
    let mut client = Client::with_http_client(http)
        .with_url(config.url.clone())
        .with_compression(clickhouse::Compression::None);
    if !config.user.is_empty() {
        client = client.with_user(config.user.clone());
    }
    if !config.password.is_empty() {
        client = client.with_password(config.password.expose());
    }
    client
}

/// Starts analytics when `[clickhouse] url` is set: spawns the sink, which applies the migrations (retrying
/// while ClickHouse is down, so the service starts and keeps ingesting regardless) and then tails `store`,
/// woken by `wake` (the writer's committed seq). Returns None when analytics is off.
/// Cancelling `stopping` ends the sink after the pass in progress (its batch shipped and checkpointed).
pub fn start(
    config: &Config,
    store: Arc<dyn Store>,
    wake: tokio::sync::watch::Receiver<i64>,
    stopping: tokio_util::sync::CancellationToken,
) -> Option<(Arc<Analytics>, tokio::task::JoinHandle<()>)> {
    if config.clickhouse.url.is_empty() {
        return None;
    }
    let analytics = Arc::new(Analytics::new(&config.clickhouse));
    let task = tokio::spawn(sink::run_sink(
        store,
        analytics.clone(),
        wake,
        config.sla.clone(),
        stopping,
    ));
    Some((analytics, task))
}
