//! Operating the real binary: `/metrics`, request logs (formats, request ids, no secrets, no colours when
//! piped), graceful stop on SIGTERM, `config check`, and the service dashboard's queries.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, fresh_clickhouse, wait_ready, PgDatabase};
use serde_json::{json, Value};
use tempfile::TempDir;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The service binary running as a child process, its output captured.
struct Service {
    child: Child,
    base: String,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    client: reqwest::Client,
}

fn capture(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
}

/// Starts `handoff-ledger serve` with `env` (plus a free port) and waits until it is ready.
async fn serve(env: &[(&str, String)]) -> Service {
    let port = free_port();
    let mut command = binary();
    command
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("LEDGER__SERVER__BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start handoff-ledger");
    let output = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        capture(child.stdout.take().unwrap(), output.clone()),
        capture(child.stderr.take().unwrap(), output.clone()),
    ];
    let service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
        output,
        readers,
        client: reqwest::Client::new(),
    };
    wait_ready(&service.client, &service.base).await;
    service
}

impl Service {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value, BTreeMap<String, String>) {
        let mut req = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("send");
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), headers)
    }

    async fn metrics(&self) -> String {
        let res = self.client.get(self.url("/metrics")).send().await.expect("scrape");
        assert_eq!(res.status(), 200);
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        res.text().await.unwrap()
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `limit`), returning its status and everything it wrote.
    fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let output = self.output.lock().unwrap().clone();
                return (status, output);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let output = self.output.lock().unwrap().clone();
                panic!("the service did not exit within {limit:?}; output:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops it with SIGTERM and returns everything it wrote (asserting exit 0).
    fn stop(self) -> String {
        self.terminate();
        let (status, output) = self.wait(Duration::from_secs(60));
        assert!(status.success(), "exit {status:?}; output:\n{output}");
        output
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sqlite_env(dir: &TempDir) -> (&'static str, String) {
    (
        "LEDGER__STORE__URL",
        format!("sqlite://{}", dir.path().join("ledger.db").display()),
    )
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// One sample of the Prometheus text: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_webhooks_by_outcome_where_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let service = serve(&[
        sqlite_env(&dir),
        ("LEDGER__AIVO_LIVE__WEBHOOK_TOKEN", "hook-token-1".into()),
    ])
    .await;
    let auth = [("authorization", "Bearer hook-token-1")];
    let attended = fixture("aivo_attended.json");
    assert_eq!(service.post("/webhooks/aivo-live", &attended, &auth).await.0, 200);
    assert_eq!(service.post("/webhooks/aivo-live", &attended, &auth).await.0, 200);
    let unknown = attended.replace("\"attended\"", "\"wave\"");
    assert_eq!(service.post("/webhooks/aivo-live", &unknown, &auth).await.0, 202);
    assert_eq!(service.post("/webhooks/aivo-live", "not json", &auth).await.0, 400);
    assert_eq!(service.post("/webhooks/aivo-live", &attended, &[]).await.0, 401);
    assert_eq!(
        service
            .post("/webhooks/vcc/chat", &fixture("vcc_chat.json"), &[])
            .await
            .0,
        200
    );
    let res = service
        .client
        .get(service.url("/v1/conversations?limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let text = service.metrics().await;
    let samples = parse_metrics(&text);
    let webhooks = |platform: &str, outcome: &str| {
        value(
            &samples,
            "ledger_webhooks_total",
            &[("platform", platform), ("outcome", outcome)],
        )
    };
    assert_eq!(webhooks("aivo_live", "appended"), Some(1.0), "{text}");
    assert_eq!(webhooks("aivo_live", "duplicate"), Some(1.0));
    assert_eq!(webhooks("aivo_live", "unknown"), Some(1.0));
    assert_eq!(webhooks("aivo_live", "rejected"), Some(1.0));
    assert_eq!(webhooks("aivo_live", "unauthorized"), Some(1.0));
    assert_eq!(webhooks("vcc", "appended"), Some(1.0));
    assert_eq!(
        webhooks("ultimate", "appended"),
        Some(0.0),
        "every platform and outcome starts at zero"
    );
    let http = |route: &str, status: &str| {
        value(
            &samples,
            "ledger_http_request_seconds_count",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(http("/webhooks/aivo-live", "200"), Some(2.0), "{text}");
    assert_eq!(http("/webhooks/aivo-live", "202"), Some(1.0));
    assert_eq!(http("/webhooks/aivo-live", "400"), Some(1.0));
    assert_eq!(http("/webhooks/aivo-live", "401"), Some(1.0));
    assert_eq!(http("/v1/conversations", "200"), Some(1.0));
    assert!(
        value(
            &samples,
            "ledger_http_request_seconds_bucket",
            &[("route", "/v1/conversations"), ("le", "+Inf")]
        ) == Some(1.0)
    );
    // Appended, duplicate, unknown, VCC and the quarantine of the refused one: every delivery that reached
    // the writer was committed in some batch.
    let batches = value(&samples, "ledger_append_batch_size_count", &[]).unwrap_or(0.0);
    let deliveries = value(&samples, "ledger_append_batch_size_sum", &[]).unwrap_or(0.0);
    assert!(batches >= 1.0 && deliveries == 4.0, "{text}");
    assert_eq!(value(&samples, "ledger_commit_seconds_count", &[]), Some(batches));
    for gauge in [
        "ledger_writer_queue_depth",
        "ledger_outbox_pending",
        "ledger_pollers_active",
    ] {
        assert_eq!(value(&samples, gauge, &[]), Some(0.0), "{gauge}: {text}");
    }
    assert_eq!(
        value(&samples, "ledger_outbox_failed_total", &[("backend", "aivo_live")]),
        Some(0.0)
    );
    service.stop();
}

const SECRETS: &[&str] = &[
    "aivo-hook-SECRET-1",
    "aivo-bot-SECRET-2",
    "ultimate-key-SECRET-3",
    "vcc-SECRET-4",
    "pg-SECRET-5",
    "ch-SECRET-6",
    "url-SECRET-8",
];

/// Runs traffic that touches every secret (webhook tokens in headers and query strings, wrong tokens,
/// outbound calls failing with the backend's URL in the error, a PostgreSQL URL with a password, an
/// unreachable ClickHouse with one) at debug level, and checks what the process wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_logs_carry_ids_routes_and_statuses_and_never_a_secret() {
    let pg = PgDatabase::create().await;
    // Trust authentication: the password is accepted and ignored, but it is in the URL the service holds.
    let store_url = pg.url.replacen("postgres@", "postgres:pg-SECRET-5@", 1);
    assert!(store_url.contains("pg-SECRET-5"), "{store_url}");
    let backend = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("try later"))
        .mount(&backend)
        .await;
    let backend_url = backend.uri().replacen("http://", "http://ops:url-SECRET-8@", 1);
    let service = serve(&[
        ("LEDGER__STORE__URL", store_url),
        ("LEDGER__LOG__FORMAT", "json".into()),
        ("LEDGER__LOG__LEVEL", "debug".into()),
        ("LEDGER__AIVO_LIVE__WEBHOOK_TOKEN", "aivo-hook-SECRET-1".into()),
        ("LEDGER__AIVO_LIVE__BOT_TOKEN", "aivo-bot-SECRET-2".into()),
        ("LEDGER__AIVO_LIVE__BASE_URL", format!("{backend_url}/aivo")),
        ("LEDGER__ULTIMATE__API_KEY", "ultimate-key-SECRET-3".into()),
        ("LEDGER__ULTIMATE__API_URL", format!("{backend_url}/ultimate")),
        ("LEDGER__VCC__SECRET_KEY", "vcc-SECRET-4".into()),
        ("LEDGER__CLICKHOUSE__URL", format!("http://127.0.0.1:{}", free_port())),
        ("LEDGER__CLICKHOUSE__PASSWORD", "ch-SECRET-6".into()),
        ("LEDGER__OUTBOX__MAX_ATTEMPTS", "2".into()),
        ("LEDGER__OUTBOX__INITIAL_BACKOFF_MS", "10".into()),
        ("LEDGER__OUTBOX__MAX_BACKOFF_MS", "20".into()),
        (
            "LEDGER__ROUTING__DEFAULT",
            "{backend=\"aivo_live\",groups=[2179]}".into(),
        ),
    ])
    .await;
    let attended = fixture("aivo_attended.json");
    let (status, _, headers) = service
        .post(
            "/webhooks/aivo-live?token=aivo-hook-SECRET-1",
            &attended,
            &[("x-request-id", "req-abc-123")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-request-id").map(String::as_str), Some("req-abc-123"));
    let (status, _, headers) = service
        .post(
            "/webhooks/aivo-live",
            &attended,
            &[("authorization", "Bearer wrong-SECRET-7")],
        )
        .await;
    assert_eq!(status, 401);
    let generated = headers.get("x-request-id").cloned().expect("a generated request id");
    assert!(generated.len() >= 16, "{generated}");
    let (status, _, _) = service
        .post(
            "/webhooks/vcc/chat?secret-key=vcc-SECRET-4",
            &fixture("vcc_chat.json"),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    // A widget escalation: the queue call fails (503) until the outbox gives up, and the widget hears
    // escalationFailed, which fails too; both errors name the backend's URL.
    let pcid = format!("pc-{}", Uuid::new_v4());
    let escalate = json!({"botId": "BOT", "data": {"eventType": "widgetEscalate", "platformConversationId": pcid}});
    let (status, answer, _) = service
        .post(
            "/webhooks/ultimate/converse",
            &escalate.to_string(),
            &[("authorization", "Bearer ultimate-key-SECRET-3")],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let conversation = answer["conversation_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: Value = service
            .client
            .get(service.url(&format!("/v1/conversations/{conversation}/events")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let results = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == json!("ledger.command_result"))
            .count();
        if results >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox did not give up: {events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = service.stop();
    drop(pg);

    for secret in SECRETS.iter().chain(["wrong-SECRET-7"].iter()) {
        assert!(!output.contains(secret), "{secret} appears in the log:\n{output}");
    }
    assert!(!output.contains('\u{1b}'), "terminal escapes in a piped log:\n{output}");
    let lines: Vec<Value> = output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == json!("request")).collect();
    let first = requests
        .iter()
        .find(|l| l["request_id"] == json!("req-abc-123"))
        .unwrap_or_else(|| panic!("no line for req-abc-123:\n{output}"));
    assert_eq!(first["method"], json!("POST"));
    assert_eq!(first["route"], json!("/webhooks/aivo-live"));
    assert_eq!(first["path"], json!("/webhooks/aivo-live"));
    assert_eq!(first["status"], json!(200));
    assert_eq!(first["key"], json!("-"));
    assert!(first["duration_ms"].as_f64().is_some());
    assert!(first["timestamp"].is_string() && first["level"] == json!("INFO"));
    let refused = requests
        .iter()
        .find(|l| l["request_id"] == json!(generated))
        .unwrap_or_else(|| panic!("no line for {generated}:\n{output}"));
    assert_eq!(refused["status"], json!(401));
    assert!(
        lines.iter().any(|l| l["message"] == json!("command failed; retrying")),
        "the outbound failures were logged:\n{output}"
    );
    // Lines logged while a request is handled carry its id.
    assert!(lines
        .iter()
        .filter(|l| l["message"] != json!("request"))
        .any(|l| l["span"]["request_id"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_colours_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let service = serve(&[sqlite_env(&dir)]).await;
    let (status, _, _) = service
        .post("/webhooks/aivo-live", "not json", &[("x-request-id", "r-1")])
        .await;
    assert_eq!(status, 400);
    let res = service
        .client
        .get(service.url("/v1/conversations"))
        .header("x-request-id", "r-2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let output = service.stop();
    // The local trial (loopback, no key yet) is served as the anonymous principal, and says so.
    let read = output
        .lines()
        .find(|l| l.contains("request_id=r-2"))
        .unwrap_or_else(|| panic!("no request line for r-2:\n{output}"));
    assert!(
        read.contains("key=anonymous") && read.contains("route=/v1/conversations"),
        "{read}"
    );
    assert!(!output.contains('\u{1b}'), "{output}");
    let line = output
        .lines()
        .find(|l| l.contains("request_id=r-1") && l.contains(" request "))
        .unwrap_or_else(|| panic!("no request line:\n{output}"));
    for part in ["method=POST", "route=/webhooks/aivo-live", "status=400", "key=-"] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
}

/// SIGTERM while a synchronous escalate waits for the backend and a widget escalation's queue call is in
/// flight: no new connection is accepted, both calls finish and are recorded, the escalate is answered
/// 200, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_is_in_flight_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let backend = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/aivo/queue/external"))
        .respond_with(|_: &wiremock::Request| {
            ResponseTemplate::new(200)
                .set_body_json(json!({"conversationId": format!("room-{}", Uuid::new_v4())}))
                .set_delay(Duration::from_secs(4))
        })
        .mount(&backend)
        .await;
    let service = serve(&[
        sqlite_env(&dir),
        ("LEDGER__AIVO_LIVE__BOT_TOKEN", "bot-token".into()),
        ("LEDGER__AIVO_LIVE__BASE_URL", format!("{}/aivo", backend.uri())),
        (
            "LEDGER__ROUTING__DEFAULT",
            "{backend=\"aivo_live\",groups=[2179]}".into(),
        ),
        ("LEDGER__ULTIMATE__ESCALATE_DEADLINE_SECONDS", "30".into()),
        ("LEDGER__SERVER__SHUTDOWN_GRACE_SECONDS", "60".into()),
    ])
    .await;
    let widget = json!({"botId": "B", "data": {"eventType": "widgetEscalate", "platformConversationId": format!("pc-{}", Uuid::new_v4())}});
    let (status, answer, _) = service
        .post("/webhooks/ultimate/converse", &widget.to_string(), &[])
        .await;
    assert_eq!(status, 200, "{answer}");
    let background = answer["conversation_id"].as_str().unwrap().to_string();
    let escalate = json!({"botId": "B", "data": {"eventType": "escalate", "platformConversationId": format!("pc-{}", Uuid::new_v4())}});
    let client = service.client.clone();
    let url = service.url("/webhooks/ultimate/converse");
    let in_flight = tokio::spawn(async move {
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .body(escalate.to_string())
            .send()
            .await
            .expect("the in-flight escalate is answered");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    });
    // Both queue calls have reached the backend, which holds them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.received_requests().await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the queue calls never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.terminate();
    // The listener closes while the calls are still held.
    let mut refused = false;
    while !in_flight.is_finished() {
        if std::net::TcpStream::connect(service.base.trim_start_matches("http://")).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections were still accepted while stopping");
    let (status, answer) = in_flight.await.unwrap();
    assert_eq!(
        status, 200,
        "the in-flight escalate was answered after its call: {answer}"
    );
    let escalated = answer["conversation_id"].as_str().unwrap().to_string();
    let (exit, output) = service.wait(Duration::from_secs(60));
    assert!(exit.success(), "exit {exit:?}:\n{output}");
    assert!(output.contains("stopped: requests answered"), "{output}");

    // Both results were recorded before the exit.
    let store = handoff_ledger::store::open(&format!("sqlite://{}", dir.path().join("ledger.db").display()), 1)
        .await
        .unwrap();
    for conversation in [&background, &escalated] {
        let events = store
            .conversation_events(conversation.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let results: Vec<&Value> = events
            .iter()
            .filter(|e| e.kind == "ledger.command_result" && e.payload["action"] == json!("aivo_live_queue"))
            .map(|e| &e.payload)
            .collect();
        assert_eq!(results.len(), 1, "{conversation}: {results:?}");
        assert_eq!(results[0]["outcome"], json!("ok"));
    }
}

/// A call that outlives `server.shutdown_grace_seconds` does not hold the process: it exits 0 at the
/// deadline, and the next start sends the command again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_deadline_bounds_the_stop_and_the_next_start_resends() {
    let dir = tempfile::tempdir().unwrap();
    let backend = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    Mock::given(method("POST"))
        .and(path("/aivo/queue/external"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"conversationId": room}))
                .set_delay(Duration::from_secs(600)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&backend)
        .await;
    Mock::given(method("POST"))
        .and(path("/aivo/queue/external"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"conversationId": room})))
        .mount(&backend)
        .await;
    let env = [
        sqlite_env(&dir),
        ("LEDGER__AIVO_LIVE__BOT_TOKEN", "bot-token".into()),
        ("LEDGER__AIVO_LIVE__BASE_URL", format!("{}/aivo", backend.uri())),
        ("LEDGER__AIVO_LIVE__TIMEOUT_SECONDS", "600".into()),
        (
            "LEDGER__ROUTING__DEFAULT",
            "{backend=\"aivo_live\",groups=[2179]}".into(),
        ),
        ("LEDGER__SERVER__SHUTDOWN_GRACE_SECONDS", "1".into()),
    ];
    let service = serve(&env).await;
    let widget = json!({"botId": "B", "data": {"eventType": "widgetEscalate", "platformConversationId": format!("pc-{}", Uuid::new_v4())}});
    let (status, answer, _) = service
        .post("/webhooks/ultimate/converse", &widget.to_string(), &[])
        .await;
    assert_eq!(status, 200);
    let conversation = answer["conversation_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.received_requests().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the queue call never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.terminate();
    let (exit, output) = service.wait(Duration::from_secs(60));
    assert!(exit.success(), "exit {exit:?}:\n{output}");
    assert!(output.contains("stopped at the shutdown deadline"), "{output}");

    let service = serve(&env).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c: Value = service
            .client
            .get(service.url(&format!("/v1/conversations/{conversation}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if c["state"] == json!("queued") {
            break;
        }
        assert!(Instant::now() < deadline, "the command was not re-sent: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend.received_requests().await.unwrap().len(), 2);
    service.stop();
}

fn config_check(file: Option<&Path>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = binary();
    command.arg("config").arg("check");
    if let Some(file) = file {
        command.arg("--config").arg(file);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run config check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_names_unknown_keys_and_impossible_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.toml");
    std::fs::write(
        &file,
        r#"
[server]
bnd = "127.0.0.1:9000"

[sla]
answer_seconds = 0

[aivo_live]
bot_token = "aivo-bot-SECRET-2"

[routing.teams.sales]
backend = "aivo"

[routing.teams.support]
backend = "bright_pattern"
[routing.teams.support.hours]
timezone = "Europe/Madrid"
days = { mon = ["18:00-09:00"] }
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = config_check(Some(&file), &[("LEDGER__OUTBOX__MAX_ATEMPTS", "3")]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for expected in [
        "server.bnd: unknown key",
        "outbox.max_atempts: unknown key",
        "sla.answer_seconds: 0 is out of range (1 to 86400)",
        "routing.teams.sales.backend: unknown backend `aivo`",
        "routing.teams.support.backend: routes to bright_pattern, which has no credentials",
        "routing.teams.support.hours: range '18:00-09:00' ends before it starts",
    ] {
        assert!(stderr.contains(expected), "`{expected}` missing from:\n{stderr}");
    }
    assert!(!stderr.contains("aivo-bot-SECRET-2") && !stdout.contains("aivo-bot-SECRET-2"));

    // A value of the wrong type is named by its key too.
    let (code, _, stderr) = config_check(None, &[("LEDGER__SERVER__MAX_BATCH", "many")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("server.max_batch"), "{stderr}");

    // Limits: a zero that would switch one off, or a size that bounds nothing, is named by its key.
    let (code, _, stderr) = config_check(
        None,
        &[
            ("LEDGER__RETENTION__QUARANTINE_BODY_BYTES", "0"),
            ("LEDGER__OUTBOX__MAX_RESPONSE_BYTES", "4294967296"),
            ("LEDGER__SERVER__COMMIT_DEADLINE_MS", "0"),
        ],
    );
    assert_eq!(code, 1);
    for expected in [
        "retention.quarantine_body_bytes: 0 is out of range (1 to 16777216)",
        "outbox.max_response_bytes: 4294967296 is out of range (1024 to 67108864)",
        "server.commit_deadline_ms: 0 is out of range (1 to 3600000)",
    ] {
        assert!(stderr.contains(expected), "`{expected}` missing from:\n{stderr}");
    }

    // `serve` runs the same checks and refuses before it binds.
    let port = free_port();
    let out = binary()
        .args(["serve", "--config"])
        .arg(&file)
        .env("LEDGER__SERVER__BIND", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.bnd: unknown key"));
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "nothing was bound"
    );
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.toml");
    std::fs::write(
        &file,
        r#"
[server]
bind = "127.0.0.1:9001"

[aivo_live]
bot_token = "aivo-bot-SECRET-2"
webhook_token = "aivo-hook-SECRET-1"

[routing]
default = { backend = "aivo_live", groups = [2179] }

[log]
format = "json"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = config_check(
        Some(&file),
        &[
            ("LEDGER__STORE__URL", "postgres://ledger:pg-SECRET-5@db.internal/ledger"),
            ("LEDGER__CLICKHOUSE__PASSWORD", "ch-SECRET-6"),
            ("LEDGER__SLA__ANSWER_SECONDS", "45"),
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for secret in SECRETS {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    let effective: toml::Value = toml::from_str(&stdout).expect("the output is TOML");
    assert_eq!(effective["server"]["bind"].as_str(), Some("127.0.0.1:9001"));
    assert_eq!(
        effective["sla"]["answer_seconds"].as_integer(),
        Some(45),
        "environment over file"
    );
    assert_eq!(effective["aivo_live"]["bot_token"].as_str(), Some("***"));
    assert_eq!(effective["aivo_live"]["webhook_token"][0].as_str(), Some("***"));
    assert_eq!(
        effective["ultimate"]["api_key"].as_str(),
        Some(""),
        "an unset secret shows empty"
    );
    assert_eq!(effective["clickhouse"]["password"].as_str(), Some("***"));
    assert_eq!(
        effective["store"]["url"].as_str(),
        Some("postgres://ledger:***@db.internal/ledger")
    );
    assert_eq!(effective["log"]["format"].as_str(), Some("json"));
    assert_eq!(effective["server"]["shutdown_grace_seconds"].as_integer(), Some(30));
}

/// Every query of `dashboards/service.json` names series the running service exports (scraped from the
/// real binary with analytics on, so that the sink's lag is there too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_dashboard_queries_series_the_service_exports() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/service.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["type"] == json!("datasource") && v["query"] == json!("prometheus")));
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == json!("row") {
            continue;
        }
        assert_eq!(panel["datasource"]["type"], json!("prometheus"), "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            exprs.push((
                panel["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for v in variables.iter().filter(|v| v["type"] == json!("query")) {
        exprs.push((
            v["name"].as_str().unwrap().to_string(),
            v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap()
                .to_string(),
        ));
    }
    let Some(clickhouse) = fresh_clickhouse("handoff_ops").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let service = serve(&[
        sqlite_env(&dir),
        ("LEDGER__CLICKHOUSE__URL", clickhouse.config.url.clone()),
        ("LEDGER__CLICKHOUSE__DATABASE", clickhouse.config.database.clone()),
    ])
    .await;
    assert_eq!(
        service
            .post("/webhooks/aivo-live", &fixture("aivo_attended.json"), &[])
            .await
            .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let exported = loop {
        let text = service.metrics().await;
        let names: std::collections::BTreeSet<String> = parse_metrics(&text).into_iter().map(|s| s.name).collect();
        if names.contains("ledger_sink_lag_events") {
            break names;
        }
        assert!(Instant::now() < deadline, "the sink never reported its lag:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut used = std::collections::BTreeSet::new();
    for (title, expr) in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ledger_"))
            .collect();
        assert!(!names.is_empty(), "{title}: `{expr}` names no ledger series");
        for name in names {
            assert!(
                exported.contains(name),
                "{title}: `{name}` is not exported; exported: {exported:?}"
            );
            used.insert(name.to_string());
        }
    }
    for series in handoff_ledger::telemetry::SERIES {
        assert!(
            used.iter().any(|u| u.starts_with(series)),
            "the dashboard shows nothing of {series}"
        );
    }
    service.stop();
}
