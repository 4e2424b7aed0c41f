//! Crash safety: the service runs as a separate process, webhooks stream at it, it is killed with
//! SIGKILL mid-stream and restarted; every webhook that was answered 200 is in the log and projected.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{free_port, start_service, wait_ready, PgDatabase};
use crate::helpers::Backend;
use crate::on_both_stores;

fn start(port: u16, store_url: &str) -> Child {
    let bind = format!("127.0.0.1:{port}");
    start_service(
        &[],
        &[("LEDGER__SERVER__BIND", &bind), ("LEDGER__STORE__URL", store_url)],
    )
}

/// A fresh store URL: an SQLite file under `dir`, or a fresh PostgreSQL database (returned to keep it alive).
async fn fresh_store(backend: Backend, dir: &std::path::Path, file: &str) -> (String, Option<PgDatabase>) {
    match backend {
        Backend::Postgres => {
            let db = PgDatabase::create().await;
            (db.url.clone(), Some(db))
        }
        Backend::Sqlite => (format!("sqlite://{}", dir.join(file).display()), None),
    }
}

async fn acknowledged_webhooks_survive_sigkill(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store_url, pg) = fresh_store(backend, dir.path(), "crash.db").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut child = start(port, &store_url);
    wait_ready(&client, &base).await;

    // Acknowledged deliveries: event_id -> (room, text).
    let acked: Arc<Mutex<BTreeMap<String, (String, String)>>> = Arc::default();
    let mut senders = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let base = base.clone();
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            let t0: i64 = 1_900_000_000_000_000_000;
            for i in 0..100_000i64 {
                let room = format!("crash-room-{}", (i + worker) % 13);
                let text = format!("w{worker} m{i}");
                let body = json!({"name": "messageToClient", "roomId": room, "timestamp": t0 + worker * 1_000_000_000_000 + i * 1000,
                    "botId": 1000, "data": {"action": "text", "value": text, "source": "agent", "agent": {"name": "A"}}});
                match client.post(format!("{base}/webhooks/aivo-live")).json(&body).send().await {
                    Ok(res) if res.status().as_u16() == 200 => {
                        if let Ok(v) = res.json::<Value>().await {
                            if let Some(id) = v["event_id"].as_str() {
                                acked.lock().unwrap().insert(id.to_string(), (room, text));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a few hundred deliveries through, then kill the process without warning.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for s in senders {
        let _ = s.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "only {} deliveries were acknowledged before the kill",
        acked.len()
    );

    let mut child = start(port, &store_url);
    wait_ready(&client, &base).await;
    let mut stored = BTreeSet::new();
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = client
            .get(format!("{base}/v1/events?after_seq={after}&limit=1000"))
            .send()
            .await
            .expect("feed")
            .json()
            .await
            .expect("json");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for e in &items {
            stored.insert(e["event_id"].as_str().unwrap_or_default().to_string());
            seqs.push(e["seq"].as_i64().unwrap_or_default());
        }
        after = page["next_after_seq"].as_i64().unwrap_or_default();
    }
    let missing: Vec<_> = acked.keys().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged webhooks were lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "seq is gap-free after the crash"
    );

    // Every acknowledged message is in its room's projected transcript.
    let mut by_room: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (room, text) in acked.values() {
        by_room.entry(room.clone()).or_default().insert(text.clone());
    }
    for (room, texts) in by_room {
        let list: Value = client
            .get(format!("{base}/v1/conversations?external_id={room}"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let id = list["items"][0]["id"]
            .as_str()
            .expect("projected conversation")
            .to_string();
        let t: Value = client
            .get(format!("{base}/v1/conversations/{id}/transcript"))
            .send()
            .await
            .expect("transcript")
            .json()
            .await
            .expect("json");
        let lines: BTreeSet<String> = t["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .collect();
        assert!(
            texts.is_subset(&lines),
            "room {room}: acknowledged lines missing from the transcript"
        );
    }
    // The feed's chain head is the newest event's hash, and the whole chain verifies after the crash.
    let (head, newest) = {
        let page: Value = client
            .get(format!(
                "{base}/v1/events?after_seq={}&limit=1000",
                seqs.len().saturating_sub(1)
            ))
            .send()
            .await
            .expect("feed")
            .json()
            .await
            .expect("json");
        let last = page["items"]
            .as_array()
            .and_then(|i| i.last())
            .cloned()
            .unwrap_or_default();
        (page["chain_head"].clone(), last)
    };
    assert_eq!(head["hash"], newest["hash"], "{head} {newest}");
    let _ = child.kill();
    let _ = child.wait();
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
        .arg("verify")
        .env("LEDGER__STORE__URL", &store_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify after SIGKILL: {stdout}");
    assert!(
        stdout.starts_with("ok ") && stdout.trim_end().ends_with(" events"),
        "{stdout}"
    );
    let verified: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(verified >= seqs.len(), "{stdout}");
    drop(pg);
}

async fn snapshot(client: &reqwest::Client, base: &str) -> Vec<(Value, Value)> {
    let list: Value = client
        .get(format!("{base}/v1/conversations?limit=500"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let mut out = Vec::new();
    for c in list["items"].as_array().cloned().unwrap_or_default() {
        let id = c["id"].as_str().unwrap_or_default().to_string();
        let t: Value = client
            .get(format!("{base}/v1/conversations/{id}/transcript"))
            .send()
            .await
            .expect("transcript")
            .json()
            .await
            .expect("json");
        out.push((c, t));
    }
    out
}

/// `handoff-ledger replay` rebuilds, from the log alone, exactly the projections the service built incrementally.
async fn replay_command_rebuilds_identical_projections(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store_url, pg) = fresh_store(backend, dir.path(), "replay.db").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = start(port, &store_url);
    wait_ready(&client, &base).await;
    for (path, file) in [
        ("/webhooks/ultimate/converse", "ultimate_text.json"),
        ("/webhooks/ultimate/converse", "ultimate_carousel.json"),
        ("/webhooks/ultimate/converse", "ultimate_widget_message.json"),
        ("/webhooks/aivo-live", "aivo_attended.json"),
        ("/webhooks/aivo-live", "aivo_message_to_client.json"),
        ("/webhooks/aivo-live", "aivo_transfer.json"),
        ("/webhooks/aivo-live", "aivo_close.json"),
        ("/webhooks/vcc/chat", "vcc_chat.json"),
        ("/webhooks/bright-pattern/chat-7", "bright_pattern_events.json"),
    ] {
        let res = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(crate::helpers::fixture(file))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 200, "{file}");
    }
    let before = snapshot(&client, &base).await;
    assert_eq!(before.len(), 7);
    let _ = child.kill();
    let _ = child.wait();

    let out = Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
        .arg("replay")
        .env("LEDGER__STORE__URL", &store_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("replayed 15 events into 7 conversations"), "{stdout}");

    let mut child = start(port, &store_url);
    wait_ready(&client, &base).await;
    let after = snapshot(&client, &base).await;
    assert_eq!(before, after);
    let _ = child.kill();
    let _ = child.wait();
    drop(pg);
}

/// The commands an event calls for commit with it: killed right after acknowledging an agent's attend
/// (its widget update still on the wire, no result recorded), the service sends it after the restart, and
/// the platform's redelivery of the attend then is a duplicate that relays nothing again.
async fn an_acknowledged_event_keeps_its_relay_across_a_crash(backend: Backend) {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let dir = tempfile::tempdir().expect("tempdir");
    let (store_url, _pg) = fresh_store(backend, dir.path(), "relay.db").await;
    let room = format!("room-{}", uuid::Uuid::new_v4());
    let aivo = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"conversationId": room})))
        .mount(&aivo)
        .await;
    // The widget API: before the crash it never answers in time; after it, it answers at once.
    let stuck = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(120)))
        .mount(&stuck)
        .await;
    let widget = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&widget)
        .await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("ledger.toml");
    let write_config = |widget_url: &str| {
        let text = format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store_url}\"\n\
             [aivo_live]\nbase_url = \"{}\"\nbot_token = \"t\"\n\
             [ultimate]\napi_url = \"{widget_url}\"\napi_key = \"k\"\n\
             [routing]\ndefault = {{ backend = \"aivo_live\", groups = [2179] }}\n",
            aivo.uri()
        );
        std::fs::write(&config, text).expect("config written");
    };
    let config_arg = config.display().to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let post = |body: Value, path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let res = client.post(url).json(&body).send().await.expect("posted");
            assert_eq!(res.status().as_u16(), 200);
            res.json::<Value>().await.expect("an answer")
        }
    };
    let pcid = format!("pc-{}", uuid::Uuid::new_v4());
    let ultimate = |event_type: &str| {
        json!({"botId": "BOT", "channel": "chat", "data": {"eventType": event_type, "platformConversationId": pcid,
            "messageId": format!("{event_type}-1"), "type": "text", "text": "hello", "buttons": []}})
    };
    let attended = json!({"name": "attended", "roomId": room, "timestamp": 1_700_000_000_000_000_000_i64,
        "data": {"agent": {"name": "Tomas", "groupId": 2179}}});

    write_config(&stuck.uri());
    let mut child = start_service(&["--config", &config_arg], &[]);
    wait_ready(&client, &base).await;
    post(ultimate("sendMessage"), "/webhooks/ultimate/converse").await;
    post(ultimate("escalate"), "/webhooks/ultimate/converse").await;
    let answer = post(attended.clone(), "/webhooks/aivo-live").await;
    assert_eq!(answer["duplicate"], json!(false));
    // The widget update is out (and hangs): the service dies with it unanswered.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while stuck.received_requests().await.unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the widget update never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    write_config(&widget.uri());
    let mut child = start_service(&["--config", &config_arg], &[]);
    wait_ready(&client, &base).await;
    let sent = || async {
        widget
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("Tomas"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sent().await == 0 {
        assert!(std::time::Instant::now() < deadline, "the relay was lost in the crash");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Aivo delivers the attend again: recognised, relayed no second time.
    let again = post(attended, "/webhooks/aivo-live").await;
    assert_eq!(again["duplicate"], json!(true));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(sent().await, 1, "relayed once");
    let _ = child.kill();
    let _ = child.wait();
}

on_both_stores!(
    acknowledged_webhooks_survive_sigkill,
    replay_command_rebuilds_identical_projections,
    an_acknowledged_event_keeps_its_relay_across_a_crash,
);
