//! Limits on every resource, each proven: slow clients are cut off while others are served, a stuck
//! commit is a 503 with Retry-After, the quarantine keeps 64 KiB per body and a bounded number of
//! entries, and old entries go.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{fixture, spawn_app, spawn_app_with, Backend, TestApp};
use crate::on_both_stores;

/// Opens a connection, sends `head` then `trickle` one byte a second; returns what the server
/// answered, how many trickled bytes it had taken, and how long until it closed.
async fn slow_client(app: &TestApp, head: &str, trickle: &[u8]) -> (String, usize, Duration) {
    let address = app.address.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    write.write_all(head.as_bytes()).await.unwrap();
    let trickle = trickle.to_vec();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for byte in trickle {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    assert!(read.is_ok(), "the slow connection was never closed");
    writer.abort();
    let sent = writer.await.unwrap_or(0);
    (String::from_utf8_lossy(&answer).into_owned(), sent, elapsed)
}

async fn slow_clients_are_cut_off_while_others_are_served(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.server.head_timeout_ms = 1_000;
        c.server.body_timeout_ms = 1_000;
    })
    .await;
    let trickle = vec![b'a'; 40];
    // A head that never ends, and a body that never ends, side by side with ordinary requests.
    let slow_head = slow_client(&app, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", &trickle);
    let body_head =
        "POST /webhooks/aivo-live HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n";
    let slow_body = slow_client(&app, body_head, &trickle);
    let json_head = "POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n";
    let slow_json = slow_client(&app, json_head, &trickle);
    let others = async {
        let mut served = 0;
        for _ in 0..5 {
            let (status, _) = app.get_json("/healthz").await;
            assert_eq!(status, 200);
            let (status, _) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
            assert_eq!(status, 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        served
    };
    let ((head_answer, head_sent, _), (body_answer, body_sent, _), (json_answer, json_sent, _), served) =
        tokio::join!(slow_head, slow_body, slow_json, others);
    assert_eq!(served, 5);
    // Cut off long before they were done (40 bytes at one a second).
    assert!(head_sent < 20, "the slow head was read for {head_sent} s");
    assert!(body_sent < 20, "the slow body was read for {body_sent} s");
    assert!(
        head_answer.is_empty() || head_answer.starts_with("HTTP/1.1 408"),
        "{head_answer}"
    );
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(body_answer.contains("\"request_timeout\""), "{body_answer}");
    // The API's own JSON bodies have the same deadline.
    assert!(json_sent < 20, "the slow JSON body was read for {json_sent} s");
    assert!(json_answer.starts_with("HTTP/1.1 408"), "{json_answer}");
    assert!(app.state.store.list_keys().await.unwrap().is_empty());
    // Nothing of the slow delivery was stored or quarantined.
    let (_, quarantine) = app.get_json("/v1/quarantine").await;
    assert_eq!(quarantine["items"], json!([]));
}

async fn idle_keep_alive_connections_are_closed(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.keep_alive_seconds = 1).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // The server answers, then closes the idle connection after the keep-alive (the client never does).
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the idle connection was kept open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the keep-alive ran out"
    );
}

/// The readers' pool connects with a statement timeout on PostgreSQL; the writer's does not.
#[tokio::test]
async fn postgres_readers_have_a_statement_timeout() {
    let db = crate::common::PgDatabase::create().await;
    let store = handoff_ledger::config::StoreConfig {
        url: db.url.clone(),
        read_timeout_ms: 200,
        ..Default::default()
    };
    let mut reader = sqlx::PgConnection::connect(&store.reader_url()).await.unwrap();
    let err = sqlx::query("SELECT pg_sleep(3)")
        .execute(&mut reader)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let mut writer = sqlx::PgConnection::connect(&store.url).await.unwrap();
    sqlx::query("SELECT pg_sleep(0.5)").execute(&mut writer).await.unwrap();
}

/// Readers cannot starve the writer: with every reader connection stuck (the readers' pool of one, held
/// by a request waiting on a lock), a delivery is still committed through the writer's own pool.
#[tokio::test]
async fn stuck_readers_do_not_starve_the_writer() {
    let app = spawn_app_with(Backend::Postgres, |c| c.store.max_connections = 1).await;
    let url = app.state.config.store.url.clone();
    // Every API request reads the keys first: with their table locked, a request holds the only
    // reader connection until the lock goes.
    let mut lock = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let stuck = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/v1/conversations"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stuck.is_finished(), "the reader was not held");
    let started = Instant::now();
    let delivery = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/webhooks/aivo-live"));
        async move {
            let res = client
                .post(url)
                .header("content-type", "application/json")
                .body(fixture("aivo_attended.json"))
                .send()
                .await
                .expect("an answer");
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    // Committed while the readers are stuck (seen from a connection of neither pool).
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
            .fetch_one(&mut watcher)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nothing committed after {:?} while the readers were stuck",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let (status, answer) = delivery.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer["seq"].is_i64(), "{answer}");
    assert_eq!(stuck.await.unwrap().unwrap(), 200);
}

async fn connections_past_the_cap_wait_for_a_free_slot(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.server.workers = 1;
        c.server.max_connections = 1;
        c.server.keep_alive_seconds = 60;
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_string();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // A takes the only slot: answered, then kept alive.
    let mut a = tokio::net::TcpStream::connect(&address).await.unwrap();
    a.write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    let n = a.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // B waits while A holds the slot...
    let mut b = tokio::net::TcpStream::connect(&address).await.unwrap();
    b.write_all(request).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), b.read(&mut buf)).await;
    assert!(early.is_err(), "a second connection was served past the cap");
    // ...and is served once A goes.
    drop(a);
    let n = tokio::time::timeout(Duration::from_secs(30), b.read(&mut buf))
        .await
        .expect("served once the slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Holds the store's write lock from another connection until dropped (rolled back).
enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

async fn lock_writes(url: &str) -> WriteLock {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
        WriteLock::Sqlite(conn)
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        WriteLock::Postgres(conn)
    }
}

impl WriteLock {
    async fn release(self) {
        match self {
            WriteLock::Sqlite(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(|_| ()).unwrap(),
            WriteLock::Postgres(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(|_| ()).unwrap(),
        }
    }
}

async fn a_stuck_commit_is_503_with_retry_after(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.commit_deadline_ms = 500).await;
    let url = app.state.config.store.url.clone();
    let lock = lock_writes(&url).await;
    let res = app
        .client
        .post(app.url("/webhooks/aivo-live"))
        .header("content-type", "application/json")
        .body(fixture("aivo_attended.json"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    lock.release().await;
    // The sender's retry is stored (or recognised when the first attempt committed after all).
    let since = Instant::now();
    loop {
        let (status, answer) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
        if status == 200 {
            assert!(answer["seq"].is_i64());
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{status} {answer}");
    }
    let (_, events) = app.get_json("/v1/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
}

async fn a_junk_flood_cannot_grow_the_quarantine_past_its_limits(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.retention.quarantine_max_entries = 10).await;
    let junk = vec![b'#'; 200 * 1024];
    let digest = hex::encode(Sha256::digest(&junk));
    for _ in 0..30 {
        let (status, _) = app.post_raw("/webhooks/aivo-live", junk.clone()).await;
        assert_eq!(status, 400);
    }
    let (status, list) = app.get_json("/v1/quarantine?limit=500").await;
    assert_eq!(status, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 10, "only the newest 10 are kept");
    for item in items {
        assert!(item.get("body").is_none());
        assert_eq!(item["body_size"], json!(200 * 1024));
        assert_eq!(item["body_sha256"], json!(digest));
        assert_eq!(item["body_truncated"], json!(true));
    }
    let id = items[0]["id"].as_i64().unwrap();
    let (status, entry) = app.get_json(&format!("/v1/quarantine/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(entry["body"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(entry["body_sha256"], json!(digest));
    // A small one is kept whole.
    let (status, _) = app.post_raw("/webhooks/aivo-live", "not json").await;
    assert_eq!(status, 400);
    let (_, list) = app.get_json("/v1/quarantine").await;
    assert_eq!(list["items"][0]["body_truncated"], json!(false));
    assert_eq!(list["items"][0]["body_size"], json!(8));
    let (status, _) = app.get_json("/v1/quarantine/999999").await;
    assert_eq!(status, 404);
}

/// `retention.quarantine_body_bytes`: a body is kept up to the configured size (with the whole body's size
/// and SHA-256); one of exactly that size is kept whole.
async fn the_quarantine_keeps_the_configured_body_bytes(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.retention.quarantine_body_bytes = 1000).await;
    let junk = vec![b'#'; 5000];
    let (status, _) = app.post_raw("/webhooks/aivo-live", junk.clone()).await;
    assert_eq!(status, 400);
    let (_, list) = app.get_json("/v1/quarantine").await;
    let item = &list["items"][0];
    assert_eq!(
        (item["body_size"].clone(), item["body_truncated"].clone()),
        (json!(5000), json!(true))
    );
    assert_eq!(item["body_sha256"], json!(hex::encode(Sha256::digest(&junk))));
    let id = item["id"].as_i64().unwrap();
    let (_, entry) = app.get_json(&format!("/v1/quarantine/{id}")).await;
    assert_eq!(entry["body"].as_str().unwrap(), "#".repeat(1000));
    // A truncated entry cannot be redriven: the delivery is not all there.
    let (status, answer) = app.post_json(&format!("/v1/quarantine/{id}/redrive"), &json!({})).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (409, json!("conflict")),
        "{answer}"
    );
    // Exactly the cap: kept whole.
    let (status, _) = app.post_raw("/webhooks/aivo-live", vec![b'#'; 1000]).await;
    assert_eq!(status, 400);
    let (_, list) = app.get_json("/v1/quarantine").await;
    assert_eq!(list["items"][0]["body_truncated"], json!(false));
    assert_eq!(list["items"][0]["body_size"], json!(1000));
}

async fn quarantine_entries_older_than_retention_are_deleted(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.retention.quarantine_days = 30).await;
    let (status, _) = app.post_raw("/webhooks/aivo-live", "not json").await;
    assert_eq!(status, 400);
    let retention = app.state.config.retention.clone();
    let store = app.state.store.as_ref();
    let now = chrono::Utc::now();
    let kept = handoff_ledger::quarantine::apply_retention(store, &retention, now + chrono::Duration::days(29))
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let deleted = handoff_ledger::quarantine::apply_retention(store, &retention, now + chrono::Duration::days(31))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let (_, list) = app.get_json("/v1/quarantine").await;
    assert_eq!(list["items"], json!([]));
}

/// A "ClickHouse" that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

async fn a_clickhouse_that_never_answers_falls_back_to_the_store(backend: Backend) {
    let url = black_hole().await;
    let app = spawn_app_with(backend, |c| {
        c.clickhouse.url = url;
        c.clickhouse.query_timeout_ms = 300;
    })
    .await;
    let res = app
        .client
        .get(app.url("/v1/reports/sla"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["source"], "store");
    // Asked for ClickHouse explicitly: 503, not a hang.
    let res = app
        .client
        .get(app.url("/v1/reports/dispositions?source=clickhouse"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(res.status().as_u16(), 503);
}

/// An address nothing can connect to, without any network: a listener with a backlog of one that never
/// accepts, its queue filled first, so the kernel drops every further SYN and a connect hangs. Keep the
/// returned listener and connections alive for as long as the address is used.
async fn unconnectable() -> (String, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connecting to fill the backlog: {e}"),
            // The queue is full: connects hang from here on.
            Err(_) => return (format!("http://{address}"), listener, queued),
        }
    }
    panic!("the backlog never filled ({} connections queued)", queued.len());
}

async fn a_clickhouse_that_cannot_be_connected_to_falls_back_within_the_connect_timeout(backend: Backend) {
    let (url, _listener, _queued) = unconnectable().await;
    let app = spawn_app_with(backend, |c| {
        c.clickhouse.url = url;
        c.clickhouse.connect_timeout_ms = 300;
        // Far longer than the test waits: only the connect timeout can end the attempt in time.
        c.clickhouse.query_timeout_ms = 120_000;
    })
    .await;
    let started = Instant::now();
    let res = app
        .client
        .get(app.url("/v1/reports/sla"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("an answer, not a hang");
    let took = started.elapsed();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["source"], "store");
    // It waited for the connect timeout (the connect hung rather than being refused), and no longer.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "fell back after {took:?}"
    );
    // Asked for ClickHouse explicitly: 503 as soon as the connect gives up.
    let started = Instant::now();
    let res = app
        .client
        .get(app.url("/v1/reports/dispositions?source=clickhouse"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("an answer, not a hang");
    let took = started.elapsed();
    assert_eq!(res.status().as_u16(), 503);
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
}

async fn report_ranges_are_capped(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.max_report_days = 31).await;
    let (status, body) = app
        .get_json("/v1/reports/sla?since=2024-01-01T00:00:00Z&until=2024-02-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .get_json("/v1/reports/conversations.csv?since=2024-01-01T00:00:00Z&until=2024-02-02T00:00:00Z")
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_parameter")),
        "{body}"
    );
}

async fn list_answers_stop_at_their_byte_cap(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.max_answer_bytes = 4096).await;
    // Ten conversations whose raw events are ~1 KiB each.
    for i in 0..10 {
        let body = json!({
            "botId": "b",
            "data": {"eventType": "sendMessage", "platformConversationId": format!("pc-{i}"),
                     "messageId": format!("m-{i}"), "text": "x".repeat(1000)}
        });
        let (status, answer) = app.post_json("/webhooks/ultimate/converse", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // The global log: pages of a few events, each under the cap, that still reach the end.
    let (mut after, mut seen) = (0, 0);
    loop {
        let res = app
            .client
            .get(app.url(&format!("/v1/events?after_seq={after}&limit=1000")))
            .send()
            .await
            .unwrap();
        let text = res.text().await.unwrap();
        let page: Value = serde_json::from_str(&text).unwrap();
        let n = page["items"].as_array().unwrap().len();
        if n == 0 {
            break;
        }
        assert!(n < 10 && text.len() < 4096 + 2048, "{n} items, {} bytes", text.len());
        seen += n;
        after = page["next_after_seq"].as_i64().unwrap();
    }
    assert_eq!(seen, 10);
    // Conversations: the cursor continues where the byte cap stopped.
    let (mut cursor, mut ids) = (None::<String>, std::collections::BTreeSet::new());
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit=500&cursor={c}"),
            None => "/v1/conversations?limit=500".into(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200);
        for c in page["items"].as_array().unwrap() {
            assert!(
                ids.insert(c["id"].as_str().unwrap().to_string()),
                "repeated {}",
                c["id"]
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(ids.len(), 10);
}

/// A transcript export is bounded like a list: without a `limit`, a page stops before it passes
/// `server.max_answer_bytes`, in every format, and the cursor gives the rest.
async fn transcript_exports_stop_at_their_byte_cap(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.max_answer_bytes = 4096).await;
    let mut id = String::new();
    for i in 0..10 {
        let body = json!({
            "botId": "b",
            "data": {"eventType": "sendMessage", "platformConversationId": "pc-long",
                     "messageId": format!("m-{i}"), "text": format!("{i}:{}", "x".repeat(1000))}
        });
        let (status, answer) = app.post_json("/webhooks/ultimate/converse", &body).await;
        assert_eq!(status, 200, "{answer}");
        id = answer["conversation_id"].as_str().unwrap().to_string();
    }
    // JSON: pages under the cap that, followed by their cursor, give every line once, in order.
    let (mut cursor, mut texts) = (None::<String>, Vec::new());
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations/{id}/transcript?cursor={c}"),
            None => format!("/v1/conversations/{id}/transcript"),
        };
        let res = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let text = res.text().await.unwrap();
        assert!(text.len() < 4096 + 2048, "{} bytes", text.len());
        let page: Value = serde_json::from_str(&text).unwrap();
        let lines = page["messages"].as_array().unwrap();
        assert!(!lines.is_empty() && lines.len() < 10, "{} lines", lines.len());
        texts.extend(
            lines
                .iter()
                .map(|m| m["text"].as_str().unwrap().split(':').next().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(texts, expected);
    // Text and CSV: cut the same way, the cursor in `x-next-cursor`.
    for format in ["text", "csv", "jsonl"] {
        let res = app
            .client
            .get(app.url(&format!("/v1/conversations/{id}/transcript?format={format}")))
            .send()
            .await
            .unwrap();
        assert!(res.headers().get("x-next-cursor").is_some(), "{format}");
        let body = res.text().await.unwrap();
        assert!(body.len() < 4096 + 2048, "{format}: {} bytes", body.len());
        assert!(body.contains("0:xxx") && !body.contains("9:xxx"), "{format}");
    }
}

async fn the_conversations_csv_is_streamed_in_order_across_windows(backend: Backend) {
    let app = spawn_app(backend).await;
    // Rooms attended at 10:05, 12:30 and 15:59 on 2024-01-26 (UTC), posted out of order.
    let base = 1_706_263_200i64; // 2024-01-26T10:00:00Z
    for (room, offset) in [
        ("room-c", 5 * 3600 + 59 * 60),
        ("room-a", 5 * 60),
        ("room-b", 2 * 3600 + 30 * 60),
    ] {
        let secs = base + offset;
        let body = json!({
            "name": "attended", "roomId": room, "timestamp": secs as i128 * 1_000_000_000, "botId": 1000,
            "eventTime": secs, "data": {"agent": {"name": "=HYPERLINK(\"http://x\")", "groupId": 2179}}
        });
        let (status, answer) = app.post_json("/webhooks/aivo-live", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let res = app
        .client
        .get(app.url("/v1/reports/conversations.csv?since=2024-01-26T09:00:00Z&until=2024-01-26T17:00:00Z"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["x-report-source"], "store");
    // Streamed (chunked), not one buffered body.
    assert!(res.headers().get("content-length").is_none());
    let text = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let started = headers.iter().position(|h| h == "started_at").unwrap();
    let agents = headers.iter().position(|h| h == "agents").unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let times: Vec<&str> = rows.iter().map(|r| &r[started]).collect();
    assert_eq!(times.len(), 3, "{text}");
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "rows in started_at order");
    assert!(
        times[0].starts_with("2024-01-26T10:05") && times[2].starts_with("2024-01-26T15:59"),
        "{times:?}"
    );
    // An agent name from a platform is text in a spreadsheet, not a formula.
    assert!(rows.iter().all(|r| r[agents].starts_with("'=HYPERLINK")), "{text}");

    // Windows of one conversation each: the range is split until each fits, and the rows still come in order.
    let since = chrono::DateTime::parse_from_rfc3339("1990-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let until = chrono::DateTime::parse_from_rfc3339("2090-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let mut windows =
        handoff_ledger::analytics::reports::StoreCsvRows::new(app.state.store.clone(), since, until).with_max_rows(1);
    let mut streamed = Vec::new();
    while let Some(window) = windows.next_rows().await.unwrap() {
        assert_eq!(window.len(), 1);
        streamed.extend(window.into_iter().map(|r| r.started_at));
    }
    assert_eq!(streamed.len(), 3);
    assert!(streamed.windows(2).all(|w| w[0] <= w[1]), "{streamed:?}");
}

async fn killing_the_writer_makes_readyz_fail_and_the_service_exit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = handoff_ledger::config::Config::default();
    config.server.bind = "127.0.0.1:0".into();
    let _pg = match backend {
        Backend::Sqlite => {
            config.store.url = format!("sqlite://{}", dir.path().join("w.db").display());
            None
        }
        Backend::Postgres => {
            let db = crate::common::PgDatabase::create().await;
            config.store.url = db.url.clone();
            Some(db)
        }
    };
    let app = handoff_ledger::startup::Application::build(config).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let kill = app.writer_abort_handle();
    let running = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    crate::common::wait_ready(&client, &base).await;
    kill.abort();
    // The service stops with an error (the binary exits non-zero) instead of answering 503 forever.
    let ended = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the service stopped")
        .unwrap();
    let error = ended.expect_err("stopping because the writer ended is an error");
    assert!(error.to_string().contains("writer"), "{error}");
    // Not ready any more (nothing answers).
    let ready = client.get(format!("{base}/readyz")).send().await;
    assert!(ready.map(|r| !r.status().is_success()).unwrap_or(true));
}

on_both_stores!(
    connections_past_the_cap_wait_for_a_free_slot,
    idle_keep_alive_connections_are_closed,
    the_conversations_csv_is_streamed_in_order_across_windows,
    a_clickhouse_that_never_answers_falls_back_to_the_store,
    a_clickhouse_that_cannot_be_connected_to_falls_back_within_the_connect_timeout,
    report_ranges_are_capped,
    list_answers_stop_at_their_byte_cap,
    transcript_exports_stop_at_their_byte_cap,
    killing_the_writer_makes_readyz_fail_and_the_service_exit,
    slow_clients_are_cut_off_while_others_are_served,
    a_stuck_commit_is_503_with_retry_after,
    a_junk_flood_cannot_grow_the_quarantine_past_its_limits,
    the_quarantine_keeps_the_configured_body_bytes,
    quarantine_entries_older_than_retention_are_deleted,
);
