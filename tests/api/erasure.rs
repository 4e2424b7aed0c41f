//! Erasure of a person's conversation through the API: a full cross-platform handoff (bot, widget, API message
//! relayed to the live chat, attributes, an image, a quarantined delivery) is erased by conversation id or by
//! stream key; afterwards nothing the service answers or stores holds the person's texts, name, email or phone,
//! the metrics and reports are unchanged, the chain verifies, the certificate's digests are the originals', and
//! a replay keeps the erasure.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};
use uuid::Uuid;

use handoff_ledger::transcript::TranscriptFormat;
use handoff_ledger::verify::{verify_log, Verdict};

use crate::helpers::{aivo, live_platforms, post_ok, route_sales_to_aivo, spawn_app_with, ultimate, Backend, TestApp};
use crate::on_both_stores;

const NAME: &str = "Jane Roe";
const EMAIL: &str = "jane.roe@example.com";
const PHONE: &str = "+1 555 0100";
const IP: &str = "203.0.113.77";
const PERSONAL: [&str; 4] = [NAME, EMAIL, PHONE, IP];

/// Every place a personal value could hide, and which were found.
fn leaks(what: &str, text: &str) -> Vec<String> {
    PERSONAL
        .iter()
        .filter(|p| text.contains(*p))
        .map(|p| format!("{what} contains {p:?}"))
        .collect()
}

struct Handoff {
    app: TestApp,
    _live: wiremock::MockServer,
    id: String,
    pcid: String,
    room: String,
}

/// A full handoff: bot, the visitor's details (widget text, attributes, an API message relayed to the agent),
/// an agent greeting the visitor by name, an image, a transfer-free close, and a refused delivery of the room.
async fn handed_off(backend: Backend) -> Handoff {
    handed_off_with(backend, |_| {}).await
}

async fn handed_off_with(backend: Backend, customize: impl FnOnce(&mut handoff_ledger::config::Config)) -> Handoff {
    let room = format!("room-{}", Uuid::new_v4());
    let live = live_platforms(&room).await;
    let app = spawn_app_with(backend, |c| {
        route_sales_to_aivo(c, &live.uri());
        customize(c);
    })
    .await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let first = post_ok(
        &app,
        "/webhooks/ultimate/converse",
        &ultimate(
            "sendMessage",
            &pcid,
            json!({"messageId": "m1", "type": "text", "text": "Hi! How can I help?", "buttons": []}),
        ),
    )
    .await;
    let id = first["conversation_id"].as_str().expect("conversation id").to_string();
    let res = app
        .client
        .post(app.url("/webhooks/ultimate/converse"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", IP)
        .body(
            ultimate(
                "widgetMessage",
                &pcid,
                json!({"type": "text", "text": format!("I am {NAME}, write to {EMAIL}"), "buttons": []}),
            )
            .to_string(),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 200);
    post_ok(
        &app,
        "/webhooks/ultimate/actions",
        &json!({"botId": "BOT", "platformConversationId": pcid, "name": "setAttributes",
                "data": [{"key": "email", "value": [EMAIL]}, {"key": "fullName", "value": [NAME]}]}),
    )
    .await;
    post_ok(
        &app,
        "/webhooks/ultimate/converse",
        &ultimate("escalate", &pcid, json!({"escalateTo": "sales"})),
    )
    .await;
    let (_, queued) = app.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(queued["state"], json!("queued"), "{queued}");
    let t0 = DateTime::parse_from_rfc3339(queued["queued_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let tomas = json!({"name": "Tomas", "nickname": "Tomas N", "groupId": 2179});
    post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo("attended", &room, t0 + Duration::seconds(9), json!({"agent": tomas})),
    )
    .await;
    post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo(
            "messageToClient",
            &room,
            t0 + Duration::seconds(12),
            json!({"action": "text", "value": format!("Hello {NAME}"), "source": "agent", "agent": tomas}),
        ),
    )
    .await;
    let (status, _) = app
        .post_json(
            &format!("/v1/conversations/{id}/messages"),
            &json!({"party": "visitor", "text": format!("call me at {PHONE}")}),
        )
        .await;
    assert_eq!(status, 200);
    post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo(
            "messageToClient",
            &room,
            t0 + Duration::seconds(20),
            json!({"action": "image", "value": "https://files.example/jane-roe-id.png", "source": "agent", "agent": tomas}),
        ),
    )
    .await;
    // A delivery for the room refused for its shape is kept in the quarantine, with the phone in it.
    let (status, _) = app
        .post_json(
            "/webhooks/aivo-live",
            &json!({"name": "messageToClient", "roomId": room, "botId": 1000, "data": {"value": PHONE}}),
        )
        .await;
    assert_eq!(status, 422);
    post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo(
            "close",
            &room,
            t0 + Duration::seconds(80),
            json!({"reason": "agent", "agent": {}}),
        ),
    )
    .await;
    // The outbox's relays (the API message to the agent, the agent's lines to the widget) have run.
    for _ in 0..100 {
        let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
        let items = events["items"].as_array().cloned().unwrap_or_default();
        let commands = items.iter().filter(|e| e["kind"] == json!("ledger.command")).count();
        let results = items
            .iter()
            .filter(|e| e["kind"] == json!("ledger.command_result"))
            .count();
        if commands > 0 && commands == results {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Handoff {
        app,
        _live: live,
        id,
        pcid,
        room,
    }
}

/// A report range around now (the test's events happen now) within `server.max_report_days`.
fn report_range() -> String {
    let now = Utc::now();
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT00:00:00Z").to_string();
    format!(
        "since={}&until={}",
        fmt(now - chrono::Duration::days(30)),
        fmt(now + chrono::Duration::days(30))
    )
}

/// The API's answers, every transcript export, and the support console's pages (the test service is
/// open, so the console serves them without signing in).
async fn answers(app: &TestApp, id: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let exports = TranscriptFormat::ALL.into_iter().flat_map(|f| {
        [
            format!("/v1/conversations/{id}/transcript?format={}", f.as_str()),
            format!("/ui/conversations/{id}/transcript.{}", f.as_str()),
        ]
    });
    for path in [
        format!("/v1/conversations/{id}"),
        format!("/v1/conversations/{id}/events"),
        "/v1/conversations?limit=500".to_string(),
        "/v1/events?limit=1000".to_string(),
        "/v1/quarantine?limit=500".to_string(),
        format!("/v1/reports/conversations.csv?{}", report_range()),
        format!("/ui/conversations/{id}"),
        format!("/ui/conversations/{id}/conversation.json"),
        format!("/ui/conversations/{id}/events"),
        format!("/ui/conversations/{id}/events.json"),
        "/ui/".to_string(),
        "/ui/quarantine".to_string(),
    ]
    .into_iter()
    .chain(exports)
    {
        let (status, _, body) = app.get_text(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.insert(path, body);
    }
    out
}

/// Every row of every table of the store, each as one text (bytes as text), by table.
async fn every_table(url: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for table in tables {
            let columns: Vec<String> = sqlx::query(&format!("PRAGMA table_info(\"{table}\")"))
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("name"))
                .collect();
            let expr = columns
                .iter()
                .map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '')"))
                .collect::<Vec<_>>()
                .join(" || char(9) || ");
            // As bytes: a table may hold binary (sqlx's checksums); personal data would be UTF-8 in it.
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(&format!("SELECT CAST({expr} AS BLOB) FROM \"{table}\""))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            let rows: Vec<String> = rows.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
            out.insert(table, rows.join("\n"));
        }
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (table, column, kind) in columns {
            let expr = if kind == "bytea" {
                format!("COALESCE(encode(\"{column}\", 'escape'), '')")
            } else {
                format!("COALESCE(\"{column}\"::text, '')")
            };
            by_table.entry(table).or_default().push(expr);
        }
        for (table, exprs) in by_table {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT {} FROM \"{table}\"", exprs.join(" || chr(9) || ")))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            out.insert(table, rows.join("\n"));
        }
    }
    out
}

/// The metrics of a conversation: everything but what an erasure nulls and what any new event moves.
fn metrics(c: &Value) -> Value {
    let mut c = c.clone();
    let o = c.as_object_mut().unwrap();
    for k in ["attributes", "last_seq", "updated_at"] {
        o.remove(k);
    }
    c
}

async fn reports(app: &TestApp) -> (Value, Value) {
    let q = format!("{}&interval=day&group_by=platform,queue,agent", report_range());
    let (s1, sla) = app.get_json(&format!("/v1/reports/sla?{q}")).await;
    let (s2, dispositions) = app.get_json(&format!("/v1/reports/dispositions?{q}")).await;
    assert_eq!((s1, s2), (200, 200), "{sla} {dispositions}");
    (sla, dispositions)
}

async fn erase_and_check(backend: Backend, by_stream: bool) {
    let h = handed_off(backend).await;
    let app = &h.app;
    let store = app.state.store.clone();
    let id = h.id.clone();

    // Before: the personal data is there (so the searches below can find it), and the originals' digests.
    let before_answers = answers(app, &id).await;
    let found: Vec<String> = before_answers.iter().flat_map(|(k, v)| leaks(k, v)).collect();
    for p in PERSONAL {
        assert!(
            found.iter().any(|f| f.contains(p)),
            "{p} is not in any answer before the erasure: {found:?}"
        );
    }
    let (_, before) = app.get_json(&format!("/v1/conversations/{id}")).await;
    let (_, transcript_before) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    let reports_before = reports(app).await;
    let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
    let seqs: Vec<i64> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let originals: BTreeMap<i64, String> = store
        .chain_rows(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| seqs.contains(&r.seq))
        .map(|r| (r.seq, hex::encode(Sha256::digest(r.payload.as_bytes()))))
        .collect();

    // Erase.
    let request = if by_stream {
        json!({"stream": {"platform": "aivo_live", "external_id": h.room}})
    } else {
        json!({"conversation_id": id})
    };
    let (status, certificate) = app.post_json("/v1/erasures", &request).await;
    assert_eq!(status, 201, "{certificate}");
    assert_eq!(certificate["conversation_ids"], json!([id]));
    let listed: BTreeMap<i64, String> = certificate["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["payload_sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(listed, originals, "every event erased, each with its original's digest");
    let cert_id = certificate["id"].as_str().unwrap().to_string();
    let (status, fetched) = app.get_json(&format!("/v1/erasures/{cert_id}")).await;
    assert_eq!((status, &fetched), (200, &certificate));
    let head = &certificate["chain_head"];
    let (_, feed) = app
        .get_json(&format!(
            "/v1/events?after_seq={}&limit=1",
            head["seq"].as_i64().unwrap() - 1
        ))
        .await;
    let recorded = &feed["items"][0];
    assert_eq!(recorded["kind"], json!("ledger.erased"));
    assert_eq!(recorded["hash"], head["hash"]);
    assert_eq!(recorded["conversation_id"], json!(id));

    // After: no answer holds the person's data.
    let after_answers = answers(app, &id).await;
    let found: Vec<String> = after_answers.iter().flat_map(|(k, v)| leaks(k, v)).collect();
    assert!(found.is_empty(), "{found:?}");
    // No table of the store either (payloads, headers, projections, transcript, quarantine, commands).
    let tables = every_table(&app.state.config.store.url).await;
    assert!(tables.contains_key("events") && tables.contains_key("quarantine"));
    let found: Vec<String> = tables
        .iter()
        .flat_map(|(k, v)| leaks(&format!("table {k}"), v))
        .collect();
    assert!(found.is_empty(), "{found:?}");

    // The payloads are the stubs naming the originals' digests.
    let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
    for e in events["items"].as_array().unwrap() {
        let seq = e["seq"].as_i64().unwrap();
        if let Some(digest) = originals.get(&seq) {
            assert_eq!(
                e["payload"],
                json!({"erased": true, "erasure_id": cert_id, "payload_sha256": digest}),
                "seq {seq}"
            );
            assert_eq!(e["headers"], json!({}));
        }
    }
    let (_, quarantine) = app.get_json("/v1/quarantine").await;
    assert_eq!(quarantine["items"], json!([]), "the room's refused delivery is deleted");

    // The metrics are unchanged; lines keep party, kind and time; attributes keep their names only.
    let (_, after) = app.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(metrics(&after), metrics(&before));
    assert_eq!(after["attributes"], json!({"email": null, "fullName": null}));
    let (_, transcript) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    let shape = |t: &Value| -> Vec<(Value, Value, Value, Value)> {
        t["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["seq"].clone(), m["at"].clone(), m["party"].clone(), m["kind"].clone()))
            .collect()
    };
    assert_eq!(shape(&transcript), shape(&transcript_before));
    for m in transcript["messages"].as_array().unwrap() {
        for field in ["text", "author", "url"] {
            assert_eq!(m[field], Value::Null, "{m}");
        }
        assert_eq!(m["buttons"], json!([]));
    }
    assert_eq!(reports(app).await, reports_before);

    // The chain holds.
    let verdict = verify_log(store.clone(), None, &|_, _| {}).await.unwrap();
    assert!(matches!(verdict, Verdict::Intact { .. }), "{verdict:?}");

    // Erasing again is harmless: the same certificate, nothing appended.
    let last = store.last_seq().await.unwrap();
    let (status, again) = app.post_json("/v1/erasures", &json!({"conversation_id": id})).await;
    assert_eq!((status, &again), (201, &certificate));
    assert_eq!(store.last_seq().await.unwrap(), last);

    // A replay rebuilds the erased projection from the log alone.
    let (_, conversation_after) = app.get_json(&format!("/v1/conversations/{id}")).await;
    store.replay(&app.state.config.sla, &|_, _| {}).await.expect("replay");
    let (_, replayed) = app.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(replayed, conversation_after);
    let (_, replayed_transcript) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    assert_eq!(replayed_transcript, transcript);
    assert!(h.pcid.starts_with("pc-"));
}

async fn a_handoff_is_erased_by_conversation_id(backend: Backend) {
    erase_and_check(backend, false).await;
}

async fn a_handoff_is_erased_by_stream_key(backend: Backend) {
    erase_and_check(backend, true).await;
}

async fn erasure_requests_are_checked(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let unknown = Uuid::new_v4();
    for (body, status) in [
        (json!({"conversation_id": unknown}), 404),
        (json!({"stream": {"platform": "vcc", "external_id": "1:2"}}), 404),
        (json!({}), 422),
        (
            json!({"conversation_id": unknown, "stream": {"platform": "vcc", "external_id": "1:2"}}),
            422,
        ),
        (json!({"stream": {"platform": "vcc", "external_id": ""}}), 422),
        (json!({"stream": {"platform": "nowhere", "external_id": "x"}}), 422),
        (json!({"conversation_id": "not-a-uuid"}), 422),
    ] {
        let (got, answer) = app.post_json("/v1/erasures", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let (status, answer) = app.get_json(&format!("/v1/erasures/{unknown}")).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("not_found")));
}

/// `retention.erase_closed_after_days`: one pass erases what closed before the cutoff, and only that.
async fn retention_erases_conversations_closed_long_ago(backend: Backend) {
    let h = handed_off(backend).await;
    let app = &h.app;
    // A conversation still with the bot is never erased by retention.
    let open = post_ok(
        app,
        "/webhooks/ultimate/converse",
        &ultimate(
            "widgetMessage",
            "pc-still-open",
            json!({"type": "text", "text": format!("{NAME} here"), "buttons": []}),
        ),
    )
    .await;
    let open_id = open["conversation_id"].as_str().unwrap().to_string();
    let (store, writer) = (app.state.store.as_ref(), &app.state.writer);
    let now = Utc::now();
    let erase =
        |days_later: i64| handoff_ledger::retention::erase_expired(store, writer, 30, now + Duration::days(days_later));
    assert_eq!(erase(29).await.unwrap(), 0, "closed less than 30 days ago");
    assert!(answers(app, &h.id).await.values().any(|a| a.contains(EMAIL)));
    assert_eq!(erase(31).await.unwrap(), 1);
    let (_, c) = app.get_json(&format!("/v1/conversations/{}", h.id)).await;
    assert_eq!(c["attributes"], json!({"email": null, "fullName": null}));
    assert_eq!(c["state"], json!("closed"));
    let (_, t) = app.get_json(&format!("/v1/conversations/{}/transcript", h.id)).await;
    assert!(t["messages"].as_array().unwrap().iter().all(|m| m["text"].is_null()));
    let (_, t) = app.get_json(&format!("/v1/conversations/{open_id}/transcript")).await;
    assert_eq!(t["messages"][0]["text"], json!(format!("{NAME} here")));
    // Nothing left to do: the next pass erases nothing (and appends nothing).
    let last = app.state.store.last_seq().await.unwrap();
    assert_eq!(erase(400).await.unwrap(), 0);
    assert_eq!(app.state.store.last_seq().await.unwrap(), last);
}

/// Rows of every table of a ClickHouse database, as text.
async fn clickhouse_tables(url: &str, database: &str) -> BTreeMap<String, String> {
    let client = reqwest::Client::new();
    let query = |sql: String| {
        let client = client.clone();
        async move {
            let res = client.post(url).body(sql).send().await.expect("clickhouse");
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            assert!(status.is_success(), "{text}");
            text
        }
    };
    let tables = query(format!("SHOW TABLES FROM {database}")).await;
    let mut out = BTreeMap::new();
    for table in tables.lines().filter(|t| !t.is_empty()) {
        let rows = query(format!("SELECT * FROM {database}.{table} FORMAT TabSeparated")).await;
        out.insert(table.to_string(), rows);
    }
    out
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The ClickHouse rows that name an erased conversation lose its stream ids (by mutation, on 18.16 and
/// current ClickHouse); its counts stay, so the reports served from ClickHouse do not move.
async fn erasure_reaches_clickhouse(backend: Backend) {
    let Some(ch) = crate::common::fresh_clickhouse("erasure_test").await else {
        return;
    };
    let (url, database) = (ch.config.url.clone(), ch.config.database.clone());
    let config = ch.config.clone();
    let h = handed_off_with(backend, move |c| c.clickhouse = config).await;
    let app = &h.app;
    let store = app.state.store.clone();
    let caught_up = || {
        let store = store.clone();
        async move {
            let last = store.last_seq().await.unwrap();
            let checkpoint = store
                .checkpoint(handoff_ledger::analytics::sink::CHECKPOINT)
                .await
                .unwrap();
            last > 0 && checkpoint == last
        }
    };
    wait_until("the sink to ship the handoff", async || caught_up().await).await;
    let before = clickhouse_tables(&url, &database).await;
    assert!(before["events"].contains(&h.room) && before["conversations"].contains(&h.pcid));
    let reports_before = reports(app).await;
    assert_eq!(reports_before.0["source"], json!("clickhouse"));

    let (status, certificate) = app.post_json("/v1/erasures", &json!({"conversation_id": h.id})).await;
    assert_eq!(status, 201, "{certificate}");
    wait_until("the sink to ship the erasure", async || caught_up().await).await;
    let client = reqwest::Client::new();
    wait_until("the mutations to finish", async || {
        let pending = client
            .post(&url)
            .body(format!(
                "SELECT count() FROM system.mutations WHERE database = '{database}' AND is_done = 0"
            ))
            .send()
            .await
            .expect("clickhouse")
            .text()
            .await
            .unwrap_or_default();
        pending.trim() == "0"
    })
    .await;
    let after = clickhouse_tables(&url, &database).await;
    for (table, rows) in &after {
        for needle in [h.room.as_str(), h.pcid.as_str(), NAME, EMAIL, PHONE] {
            assert!(
                !rows.contains(needle),
                "ClickHouse table {table} still holds {needle:?}"
            );
        }
    }
    assert_eq!(reports(app).await, reports_before);
}

on_both_stores!(
    a_handoff_is_erased_by_conversation_id,
    a_handoff_is_erased_by_stream_key,
    erasure_requests_are_checked,
    retention_erases_conversations_closed_long_ago,
    erasure_reaches_clickhouse,
);
