//! VCC Live's encrypted bodies, with a body encrypted independently by OpenSSL
//! (tests/fixtures/vcc_chat.aes-256-ctr.md says how).

use serde_json::{json, Value};

use crate::helpers::{fixture, spawn_app_with, Backend};
use crate::on_both_stores;

const KEY: &str = "539988ac9f19e0200da23ccac9fbb7dc66d11e9bfb9916f5427c2b1b0b2b300d";
const IV: &str = "98107edbe6c2d1c344a45661757f6360";

async fn encrypted_vcc_bodies_are_decrypted_and_stored_as_json(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.vcc.encryption_key = KEY.into()).await;
    let encrypted = fixture("vcc_chat.aes-256-ctr.b64");
    let (status, answer) = app
        .post_raw(&format!("/webhooks/vcc/chat?iv={IV}"), encrypted.clone())
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, events) = app.get_json("/v1/events").await;
    let items = events["items"].as_array().unwrap();
    assert!(!items.is_empty());
    let plain: Value = serde_json::from_str(&fixture("vcc_chat.json")).unwrap();
    for event in items {
        assert_eq!(event["payload"], plain, "the decrypted JSON is the stored payload");
        assert_eq!(event["headers"]["x-ledger-encrypted"], json!("aes-256-ctr"));
    }
    // The same chat sent in the clear is the same delivery.
    let (status, answer) = app.post_raw("/webhooks/vcc/chat", fixture("vcc_chat.json")).await;
    assert_eq!((status, answer["duplicate"].clone()), (200, json!(true)), "{answer}");

    // A wrong IV (or key) is a 400 and the delivery, as sent, is kept in the quarantine.
    let wrong_iv = format!("{}1", &IV[..31]);
    assert_ne!(wrong_iv, IV);
    let (status, answer) = app
        .post_raw(&format!("/webhooks/vcc/chat?iv={wrong_iv}"), encrypted.clone())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("invalid_json")),
        "{answer}"
    );
    let (status, answer) = app.post_raw("/webhooks/vcc/chat?iv=nothex", encrypted.clone()).await;
    assert_eq!(status, 400, "{answer}");
    let (_, list) = app.get_json("/v1/quarantine").await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let (_, entry) = app.get_json(&format!("/v1/quarantine/{}", items[1]["id"])).await;
    assert_eq!(
        entry["body"],
        json!(encrypted),
        "the quarantine keeps the encrypted body as sent"
    );
}

async fn an_encrypted_body_without_a_key_is_refused_and_kept(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (status, answer) = app
        .post_raw(
            &format!("/webhooks/vcc/chat?iv={IV}"),
            fixture("vcc_chat.aes-256-ctr.b64"),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("invalid_json")),
        "{answer}"
    );
    let (_, list) = app.get_json("/v1/quarantine").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, events) = app.get_json("/v1/events").await;
    assert_eq!(events["items"], json!([]));
}

on_both_stores!(
    encrypted_vcc_bodies_are_decrypted_and_stored_as_json,
    an_encrypted_body_without_a_key_is_refused_and_kept,
);
