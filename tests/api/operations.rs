//! Operators' repairs over HTTP: redriving quarantined deliveries (on SQLite and PostgreSQL).

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{json, Value};

use handoff_ledger::model::{NewQuarantine, Platform};

use crate::helpers::{fixture, spawn_app, spawn_app_with, Backend, TestApp};
use crate::on_both_stores;

/// Keeps `body` as an earlier version refused it at `path` (what a parser fix makes redrivable).
async fn keep(app: &TestApp, path: &str, platform: Platform, body: &str) -> i64 {
    app.state
        .writer
        .quarantine(NewQuarantine {
            received_at: Utc::now(),
            path: path.to_string(),
            platform: Some(platform),
            error_code: "invalid_payload".into(),
            error_message: "refused by an earlier version".into(),
            status: 422,
            headers: BTreeMap::from([("content-type".to_string(), "application/json".to_string())]),
            body: body.as_bytes().to_vec(),
        })
        .await
        .expect("quarantine")
}

async fn entries(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get_json("/v1/quarantine").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

async fn entry(app: &TestApp, id: i64) -> Value {
    entries(app)
        .await
        .into_iter()
        .find(|e| e["id"] == json!(id))
        .unwrap_or_else(|| panic!("no entry {id}"))
}

async fn kinds(app: &TestApp, conversation: &str) -> Vec<String> {
    let (status, body) = app.get_json(&format!("/v1/conversations/{conversation}/events")).await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn a_redriven_delivery_is_appended_once_and_the_entry_records_each_outcome(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = keep(
        &app,
        "/webhooks/aivo-live",
        Platform::AivoLive,
        &fixture("aivo_attended.json"),
    )
    .await;
    let path = format!("/v1/quarantine/{id}/redrive");

    let (status, first) = app.post_raw(&path, "").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], json!(false));
    let conversation = first["conversation_id"]
        .as_str()
        .expect("filed under a conversation")
        .to_string();
    let (status, second) = app.post_raw(&path, "").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["duplicate"],
        json!(true),
        "a second redrive of an appended delivery is a duplicate"
    );
    assert_eq!(second["event_id"], first["event_id"]);

    // The platform sending it again now is recognised as the same delivery too.
    let (status, webhook) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!(status, 200);
    assert_eq!(webhook["duplicate"], json!(true));

    let e = entry(&app, id).await;
    let redrives = e["redrives"].as_array().cloned().unwrap_or_default();
    assert_eq!(redrives.len(), 2, "{e}");
    assert_eq!(redrives[0]["outcome"], json!("appended"));
    assert_eq!(redrives[0]["status"], json!(200));
    assert_eq!(redrives[0]["event_id"], first["event_id"]);
    assert_eq!(redrives[0]["conversation_id"], json!(conversation));
    assert_eq!(redrives[1]["outcome"], json!("duplicate"));
    assert_eq!(
        e["error_code"],
        json!("invalid_payload"),
        "the entry itself is kept as it was"
    );

    let (_, c) = app.get_json(&format!("/v1/conversations/{conversation}")).await;
    assert_eq!(c["state"], json!("attended"), "the redriven event was projected");
    let kinds = kinds(&app, &conversation).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "aivo_live.attended").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "ledger.redriven").count(), 2, "{kinds:?}");
}

async fn a_bot_message_without_a_key_of_its_own_is_redriven_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("ultimate_text.json");
    let id = keep(&app, "/webhooks/ultimate/converse", Platform::Ultimate, &body).await;
    let path = format!("/v1/quarantine/{id}/redrive");
    let (status, first) = app.post_raw(&path, "").await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = app.post_raw(&path, "").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["duplicate"], json!(true), "{second}");
    let conversation = first["conversation_id"].as_str().unwrap();
    let (_, t) = app
        .get_json(&format!("/v1/conversations/{conversation}/transcript"))
        .await;
    assert_eq!(t["messages"].as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(t["messages"][0]["text"], json!("Hello, this is a bot text message"));
}

async fn a_delivery_still_refused_is_answered_so_and_kept_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, _) = app.post_raw("/webhooks/aivo-live", "not json").await;
    assert_eq!(status, 400);
    let kept = entries(&app).await;
    assert_eq!(kept.len(), 1);
    let id = kept[0]["id"].as_i64().unwrap();

    let (status, answer) = app.post_raw(&format!("/v1/quarantine/{id}/redrive"), "").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], json!("invalid_json"));
    let kept = entries(&app).await;
    assert_eq!(kept.len(), 1, "a redrive is never quarantined again");
    assert_eq!(kept[0]["redrives"][0]["outcome"], json!("rejected"));
    assert_eq!(kept[0]["redrives"][0]["status"], json!(400));
    assert_eq!(kept[0]["redrives"][0]["error_code"], json!("invalid_json"));
    assert_eq!(kept[0]["redrives"][0]["event_id"], Value::Null);

    let (status, answer) = app.post_raw("/v1/quarantine/987654321/redrive", "").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], json!("not_found"));
    let other = keep(&app, "/webhooks/retired-platform", Platform::Ultimate, "{}").await;
    let (status, answer) = app.post_raw(&format!("/v1/quarantine/{other}/redrive"), "").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], json!("conflict"));
}

/// An encrypted VCC delivery refused while `vcc.encryption_key` was not set yet is decrypted (with the IV
/// kept in its headers) when redriven after the key is configured.
async fn an_encrypted_delivery_is_decrypted_when_redriven(backend: Backend) {
    const KEY: &str = "539988ac9f19e0200da23ccac9fbb7dc66d11e9bfb9916f5427c2b1b0b2b300d";
    const IV: &str = "98107edbe6c2d1c344a45661757f6360";
    let app = spawn_app_with(backend, |c| c.vcc.encryption_key = KEY.into()).await;
    let id = app
        .state
        .writer
        .quarantine(NewQuarantine {
            received_at: Utc::now(),
            path: "/webhooks/vcc/chat".into(),
            platform: Some(Platform::Vcc),
            error_code: "invalid_json".into(),
            error_message: "the body is encrypted (`iv` given) but vcc.encryption_key is not set".into(),
            status: 400,
            headers: BTreeMap::from([("x-ledger-iv".to_string(), IV.to_string())]),
            body: fixture("vcc_chat.aes-256-ctr.b64").into_bytes(),
        })
        .await
        .expect("quarantine");
    let (status, answer) = app.post_raw(&format!("/v1/quarantine/{id}/redrive"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], json!(false));
    // The same chat sent in the clear now is the same delivery.
    let (status, again) = app.post_raw("/webhooks/vcc/chat", fixture("vcc_chat.json")).await;
    assert_eq!((status, again["duplicate"].clone()), (200, json!(true)), "{again}");
}

on_both_stores!(
    an_encrypted_delivery_is_decrypted_when_redriven,
    a_redriven_delivery_is_appended_once_and_the_entry_records_each_outcome,
    a_bot_message_without_a_key_of_its_own_is_redriven_once,
    a_delivery_still_refused_is_answered_so_and_kept_once,
);
