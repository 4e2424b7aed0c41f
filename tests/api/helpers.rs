//! Starts the real service on port 0 against a fresh SQLite file or a fresh PostgreSQL database (the
//! shared starter in tests/common), and the request helpers of the API tests.

use handoff_ledger::auth::key::new_key;
use handoff_ledger::auth::Scope;
use handoff_ledger::config::Config;
use serde_json::Value;

pub use crate::common::pg_admin_url;
pub use crate::common::requests::{aivo, fixture, ultimate};
/// Which store a test runs against.
pub use crate::common::StoreKind as Backend;

/// A running service.
pub type TestApp = crate::common::TestService;

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
    let fresh = crate::common::FreshStore::create(backend).await;
    let mut created = Vec::new();
    if !keys.is_empty() {
        let store = handoff_ledger::store::open(&fresh.url, 1)
            .await
            .expect("open the store");
        store.migrate().await.expect("migrate the store");
        for (name, scopes) in keys {
            let (stored, key) = new_key(name, scopes).expect("new key");
            assert!(store.create_key(&stored).await.expect("create key"));
            created.push(key);
        }
    }
    (
        crate::common::start_on(fresh, Config::default(), customize).await,
        created,
    )
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

/// POSTs JSON and insists on `200`; the answer.
pub async fn post_ok(app: &TestApp, path: &str, body: &Value) -> Value {
    let (status, answer) = app.post_json(path, body).await;
    assert_eq!(status, 200, "{path} {body}: {answer}");
    answer
}

/// A fake Aivo Live and Ultimate API: every POST answers 200, a queue call with the live chat `room`.
pub async fn live_platforms(room: &str) -> wiremock::MockServer {
    let live = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"conversationId": room})))
        .mount(&live)
        .await;
    live
}

/// Points Aivo Live and the Ultimate widget API at `uri`, with credentials, and routes the team `sales`
/// to Aivo Live's group 2179.
pub fn route_sales_to_aivo(c: &mut Config, uri: &str) {
    c.aivo_live.base_url = uri.to_string();
    c.aivo_live.bot_token = "token".into();
    c.ultimate.api_url = uri.to_string();
    c.ultimate.api_key = "key".into();
    c.routing.teams.insert(
        "sales".into(),
        handoff_ledger::config::Route {
            backend: handoff_ledger::model::Backend::AivoLive,
            groups: vec![2179],
            hours: None,
        },
    );
}
