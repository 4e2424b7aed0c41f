//! Test support shared by the integration test crates: fresh PostgreSQL databases and the service
//! binary run as a separate process.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::Connection;

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

/// Starts `handoff-ledger serve` as a separate process with extra arguments and environment.
pub fn start_service(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handoff-ledger"));
    command
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
