//! Starts the real service on port 0 against a fresh SQLite file or a fresh PostgreSQL database.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use handoff_ledger::api::AppState;
use handoff_ledger::auth::key::new_key;
use handoff_ledger::auth::Scope;
use handoff_ledger::config::Config;
use handoff_ledger::startup::Application;
use serde_json::{json, Value};
use tempfile::TempDir;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub use crate::common::{pg_admin_url, PgDatabase};

/// A running service.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The running service's state (writer, store) for tests that record ledger facts directly.
    pub state: AppState,
    pub _dir: TempDir,
    pub _pg: Option<PgDatabase>,
}

/// The text of a fixture under tests/fixtures.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Starts the service with a fresh store; `customize` adjusts the configuration first.
pub async fn spawn_app_with(backend: Backend, customize: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_keys(backend, &[], customize).await.0
}

/// Starts the service with a fresh store in which `keys` (name, scopes) exist before it starts (as
/// `handoff-ledger keys create` would make them: a non-loopback bind refuses to start without one);
/// the app and the keys, in the same order.
pub async fn spawn_app_with_keys(
    backend: Backend,
    keys: &[(&str, &[Scope])],
    customize: impl FnOnce(&mut Config),
) -> (TestApp, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    let pg = match backend {
        Backend::Sqlite => {
            config.store.url = format!("sqlite://{}", dir.path().join("ledger.db").display());
            None
        }
        Backend::Postgres => {
            let db = PgDatabase::create().await;
            config.store.url = db.url.clone();
            Some(db)
        }
    };
    customize(&mut config);
    let mut created = Vec::new();
    if !keys.is_empty() {
        let store = handoff_ledger::store::open(&config.store.url, 1)
            .await
            .expect("open the store");
        store.migrate().await.expect("migrate the store");
        for (name, scopes) in keys {
            let (stored, key) = new_key(name, scopes).expect("new key");
            assert!(store.create_key(&stored).await.expect("create key"));
            created.push(key);
        }
    }
    let app = Application::build(config).await.expect("build the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        _dir: dir,
        _pg: pg,
    };
    (app, created)
}

/// Starts the service with a fresh store and default configuration.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// POSTs a raw body; returns status and the JSON answer (Null when not JSON).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let res = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POSTs JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    /// GETs JSON.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self.client.get(self.url(path)).send().await.expect("send");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GETs text with its content type.
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        let res = self.client.get(self.url(path)).send().await.expect("send");
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, res.text().await.unwrap_or_default())
    }
}

/// Generates a `sqlite` and a `postgres` test for each named async fn taking a `Backend`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A time as Aivo Live stamps it: nanoseconds since the epoch.
pub fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().expect("in range")
}

/// An Aivo Live webhook body.
pub fn aivo(name: &str, room: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"name": name, "roomId": room, "timestamp": nanos(at), "botId": 1000, "eventTime": at.timestamp(), "data": data})
}

/// An Ultimate converse webhook body: `extra` is merged into `data`.
pub fn ultimate(event_type: &str, pcid: &str, extra: Value) -> Value {
    let mut data = json!({"eventType": event_type, "platformConversationId": pcid});
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    json!({"botId": "BOT", "channel": "chat", "data": data})
}

/// POSTs JSON and insists on `200`; the answer.
pub async fn post_ok(app: &TestApp, path: &str, body: &Value) -> Value {
    let (status, answer) = app.post_json(path, body).await;
    assert_eq!(status, 200, "{path} {body}: {answer}");
    answer
}
