//! Test support shared by the integration test crates: fresh stores (a SQLite file, a PostgreSQL
//! database, a ClickHouse database), and the one way each test starts the service: in this process on
//! port 0 ([`start`]), or the binary as a separate process ([`service_command`], [`start_service`]).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use handoff_ledger::api::AppState;
use handoff_ledger::config::Config;
use handoff_ledger::startup::Application;
use sqlx::Connection;
use tempfile::TempDir;

pub mod requests;

/// The admin URL of the local PostgreSQL (overridable with `LEDGER_TEST_PG_URL`).
pub fn pg_admin_url() -> String {
    std::env::var("LEDGER_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database, dropped (even when the test fails) when this is dropped.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let name = format!("ledger_test_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin.clone());
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Which store a service started by a test keeps its log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// A fresh, empty store: a SQLite file in a temporary directory, or a PostgreSQL database.
pub struct FreshStore {
    pub url: String,
    pub dir: TempDir,
    pub pg: Option<PgDatabase>,
}

impl FreshStore {
    pub async fn create(kind: StoreKind) -> FreshStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = match kind {
            StoreKind::Sqlite => None,
            StoreKind::Postgres => Some(PgDatabase::create().await),
        };
        let url = match &pg {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", dir.path().join("ledger.db").display()),
        };
        FreshStore { url, dir, pg }
    }
}

/// The service running in this process.
pub struct TestService {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    /// The running service's state (writer, store) for tests that record ledger facts directly.
    pub state: AppState,
    /// Its store's URL (to start another service on the same log).
    pub store_url: String,
    pub _dir: TempDir,
    pub _pg: Option<PgDatabase>,
}

/// Starts the service in this process on a free port with `config` on a fresh store of `kind`;
/// `customize` adjusts the configuration last.
pub async fn start(kind: StoreKind, config: Config, customize: impl FnOnce(&mut Config)) -> TestService {
    start_on(FreshStore::create(kind).await, config, customize).await
}

/// Starts the service in this process on a free port with `config` on `store` (a fresh one, or the
/// store of a service that was stopped); `customize` adjusts the configuration last.
pub async fn start_on(store: FreshStore, mut config: Config, customize: impl FnOnce(&mut Config)) -> TestService {
    config.server.bind = "127.0.0.1:0".into();
    config.store.url = store.url.clone();
    customize(&mut config);
    let app = Application::build(config).await.expect("build the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    TestService {
        address,
        client: reqwest::Client::new(),
        state,
        store_url: store.url,
        _dir: store.dir,
        _pg: store.pg,
    }
}

/// `handoff-ledger serve` with extra arguments, to run as a separate process (output discarded unless
/// the caller pipes it).
pub fn service_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handoff-ledger"));
    command
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts `handoff-ledger serve` as a separate process with extra arguments and environment.
pub fn start_service(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = service_command(args);
    command.env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("start handoff-ledger")
}

/// Waits until the service at `base` answers `/readyz`.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(res) = client.get(format!("{base}/readyz")).send().await {
            if res.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service did not become ready at {base}");
}

/// The test ClickHouse server (scripts/clickhouse.sh starts one).
pub fn clickhouse_url() -> String {
    std::env::var("LEDGER_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A fresh ClickHouse database name, dropped when this is dropped.
pub struct TestDb {
    pub config: handoff_ledger::config::ClickHouseConfig,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.config.url.clone();
        let db = self.config.database.clone();
        let _ = std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new()
                .post(&url)
                .body(format!("DROP DATABASE IF EXISTS {db}"))
                .send();
        })
        .join();
    }
}

/// A fresh database name on the test server (not created: the service's sink or `migrate` creates it), or
/// None (skip) when ClickHouse is unreachable outside CI; in CI (`CI=true`) an unreachable server fails.
pub async fn fresh_clickhouse(prefix: &str) -> Option<TestDb> {
    let url = clickhouse_url();
    let reachable = reqwest::Client::new()
        .get(format!("{url}/?query=SELECT%201"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ClickHouse is not reachable at {url} (CI runs scripts/clickhouse.sh first)");
        }
        eprintln!("note: ClickHouse not reachable at {url}; skipping (run scripts/clickhouse.sh)");
        return None;
    }
    Some(TestDb {
        config: handoff_ledger::config::ClickHouseConfig {
            url,
            database: format!("{prefix}_{}", uuid::Uuid::new_v4().simple()),
            ..handoff_ledger::config::ClickHouseConfig::default()
        },
    })
}
