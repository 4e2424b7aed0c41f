//! Every documented webhook of every platform through HTTP, idempotency, auth, and bad input.

use serde_json::{json, Value};

use crate::helpers::{fixture, spawn_app, spawn_app_with, Backend, TestApp};
use crate::on_both_stores;

/// The quarantine, newest first, each entry with its body (lists carry metadata only).
async fn quarantine(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get_json("/v1/quarantine").await;
    assert_eq!(status, 200);
    let mut entries = Vec::new();
    for item in body["items"].as_array().cloned().unwrap_or_default() {
        assert!(item.get("body").is_none(), "a list carries no body: {item}");
        let (status, entry) = app.get_json(&format!("/v1/quarantine/{}", item["id"])).await;
        assert_eq!(status, 200);
        entries.push(entry);
    }
    entries
}

async fn event_count(app: &TestApp) -> usize {
    let (_, body) = app.get_json("/v1/events?limit=1000").await;
    body["items"].as_array().map(Vec::len).unwrap_or(0)
}

async fn every_documented_event_is_stored_with_its_kind(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        // Aivo Live has no availability call: a configured route within its hours is online.
        c.aivo_live.bot_token = "token".into();
        c.routing.default = Some(handoff_ledger::config::Route {
            backend: handoff_ledger::model::Backend::AivoLive,
            groups: vec![2179],
            hours: None,
        })
    })
    .await;
    let cases = [
        (
            "/webhooks/ultimate/converse",
            "ultimate_text.json",
            "ultimate.send_message",
        ),
        (
            "/webhooks/ultimate/converse",
            "ultimate_buttons.json",
            "ultimate.send_message",
        ),
        (
            "/webhooks/ultimate/converse",
            "ultimate_carousel.json",
            "ultimate.send_message",
        ),
        (
            "/webhooks/ultimate/converse",
            "ultimate_widget_message.json",
            "ultimate.widget_message",
        ),
        (
            "/webhooks/ultimate/converse",
            "ultimate_widget_end_session.json",
            "ultimate.widget_end_session",
        ),
        ("/webhooks/ultimate/actions", "ultimate_action.json", "ultimate.action"),
        ("/webhooks/aivo-live", "aivo_attended.json", "aivo_live.attended"),
        ("/webhooks/aivo-live", "aivo_transfer.json", "aivo_live.transfer"),
        (
            "/webhooks/aivo-live",
            "aivo_message_to_client.json",
            "aivo_live.message_to_client",
        ),
        ("/webhooks/aivo-live", "aivo_close.json", "aivo_live.close"),
        ("/webhooks/vcc/chat", "vcc_chat.json", "vcc.chat_closed"),
    ];
    for (path, file, kind) in cases {
        let (status, body) = app.post_raw(path, fixture(file)).await;
        assert_eq!(status, 200, "{file}: {body}");
        if path.ends_with("actions") {
            assert!(body["results"].is_array(), "{file}: {body}");
            continue;
        }
        assert_eq!(body["duplicate"], json!(false), "{file}: {body}");
        let seq = body["seq"].as_i64().expect("seq");
        let (_, feed) = app.get_json(&format!("/v1/events?after_seq={}&limit=1", seq - 1)).await;
        assert_eq!(feed["items"][0]["kind"], json!(kind), "{file}");
        assert_eq!(
            feed["items"][0]["payload"],
            serde_json::from_str::<Value>(&fixture(file)).expect("json")
        );
    }
    // escalate and isTeamOnline answer synchronously from the routing configuration.
    let (status, body) = app
        .post_raw("/webhooks/ultimate/converse", fixture("ultimate_is_team_online.json"))
        .await;
    assert_eq!((status, body), (200, json!({"isOnline": true})));

    // Bright Pattern: several events in one body.
    let (status, body) = app
        .post_raw(
            "/webhooks/bright-pattern/chat-42",
            fixture("bright_pattern_events.json"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!(7));
    let (_, conv) = app
        .get_json(&format!(
            "/v1/conversations/{}",
            body["conversation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        conv["streams"],
        json!([{"platform": "bright_pattern", "external_id": "chat-42"}])
    );
    assert_eq!(conv["agents"][0]["name"], json!("Ann L."));
    assert_eq!(conv["state"], json!("closed"));
    assert_eq!(conv["disposition"], json!("completed"));

    // The VCC chat is a whole conversation: transcript in order with agent names.
    let (_, list) = app.get_json("/v1/conversations?platform=vcc").await;
    let vcc_id = list["items"][0]["id"].as_str().expect("vcc conversation").to_string();
    let (_, t) = app.get_json(&format!("/v1/conversations/{vcc_id}/transcript")).await;
    let lines: Vec<(String, String)> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["party"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("visitor".into(), "hi".into()),
            ("agent".into(), "hello".into()),
            ("visitor".into(), "Could you help me?".into()),
            ("agent".into(), "Yes".into()),
        ]
    );
    let (_, conv) = app.get_json(&format!("/v1/conversations/{vcc_id}")).await;
    assert_eq!(conv["disposition"], json!("completed"));
    assert_eq!(conv["sla_status"], json!("met"));
    assert_eq!(conv["wait_seconds"], json!(5.0));
    assert_eq!(conv["platform_disposition"], json!("completed"));
}

async fn redelivery_is_a_duplicate_and_appends_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (s1, first) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    let (s2, second) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["duplicate"], json!(false));
    assert_eq!(second["duplicate"], json!(true));
    assert_eq!(first["event_id"], second["event_id"]);
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(first["conversation_id"], second["conversation_id"]);
    assert_eq!(event_count(&app).await, 1);

    // Ultimate without messageId: two identical bot lines are two events; with Idempotency-Key one.
    for _ in 0..2 {
        let (s, b) = app
            .post_raw("/webhooks/ultimate/converse", fixture("ultimate_text.json"))
            .await;
        assert_eq!((s, &b["duplicate"]), (200, &json!(false)));
    }
    for expected in [false, true] {
        let res = app
            .client
            .post(app.url("/webhooks/ultimate/converse"))
            .header("content-type", "application/json")
            .header("idempotency-key", "k-1")
            .body(fixture("ultimate_buttons.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let b: Value = res.json().await.unwrap();
        assert_eq!(b["duplicate"], json!(expected));
    }
    assert_eq!(event_count(&app).await, 4);
    // Re-sending a Bright Pattern poll result repeats no transcript line.
    let (_, a) = app
        .post_raw("/webhooks/bright-pattern/c1", fixture("bright_pattern_events.json"))
        .await;
    let (_, b) = app
        .post_raw("/webhooks/bright-pattern/c1", fixture("bright_pattern_events.json"))
        .await;
    assert_eq!(b["duplicate"], json!(true));
    let (_, t) = app
        .get_json(&format!(
            "/v1/conversations/{}/transcript",
            a["conversation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(t["messages"].as_array().unwrap().len(), 2);
}

async fn unknown_event_types_are_kept_and_answered_202(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({"name": "rated", "roomId": "r-9", "timestamp": 1706293970842633079i64, "botId": 1000, "data": {"stars": 5}});
    let (status, answer) = app.post_json("/webhooks/aivo-live", &body).await;
    assert_eq!(status, 202, "{answer}");
    let (_, feed) = app.get_json("/v1/events").await;
    assert_eq!(feed["items"][0]["kind"], json!("aivo_live.unknown"));
    assert_eq!(feed["items"][0]["payload"], body);
    let ult = json!({"botId": "b", "data": {"eventType": "somethingNew", "platformConversationId": "p-1"}});
    let (status, _) = app.post_json("/webhooks/ultimate/converse", &ult).await;
    assert_eq!(status, 202);
    let bp = json!({"events": [{"event": "chat_session_future_thing", "timestamp": 1706293970}]});
    let (status, answer) = app.post_json("/webhooks/bright-pattern/x1", &bp).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(event_count(&app).await, 3);
}

async fn bad_input_gets_its_status_and_is_quarantined(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.max_body_bytes = 64 * 1024).await;
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/webhooks/aivo-live", b"not json".to_vec(), 400, "invalid_json"),
        ("/webhooks/aivo-live", vec![0xff, 0xfe, b'{', b'}'], 400, "invalid_json"),
        ("/webhooks/aivo-live", Vec::new(), 400, "invalid_json"),
        ("/webhooks/aivo-live", nested.into_bytes(), 400, "invalid_json"),
        (
            "/webhooks/bright-pattern/c1",
            "{\u{201c}event\u{201d}: \u{201c}chat_session_ended\u{201d}}"
                .as_bytes()
                .to_vec(),
            400,
            "invalid_json",
        ),
        (
            "/webhooks/ultimate/actions",
            fixture("ultimate_action_broken.json").into_bytes(),
            400,
            "invalid_json",
        ),
        (
            "/webhooks/aivo-live",
            br#"{"name": "attended", "timestamp": 1706293970842633079, "data": {}}"#.to_vec(),
            422,
            "invalid_payload",
        ),
        (
            "/webhooks/aivo-live",
            br#"{"name": 5, "roomId": "r", "timestamp": 1706293970842633079}"#.to_vec(),
            422,
            "invalid_payload",
        ),
        (
            "/webhooks/vcc/chat",
            br#"{"chatId": "x"}"#.to_vec(),
            422,
            "invalid_payload",
        ),
        (
            "/webhooks/ultimate/converse",
            br#"{"botId": "b", "data": {"eventType": "sendMessage"}}"#.to_vec(),
            422,
            "invalid_payload",
        ),
        (
            "/webhooks/ultimate/converse",
            b"[1, 2]".to_vec(),
            422,
            "invalid_payload",
        ),
    ];
    for (i, (path, body, status, code)) in cases.iter().enumerate() {
        let (got, answer) = app.post_raw(path, body.clone()).await;
        assert_eq!(got, *status, "case {i}: {answer}");
        assert_eq!(answer["error"]["code"], json!(code), "case {i}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, missing) = app
        .post_raw(
            "/webhooks/ultimate/converse",
            br#"{"botId": "b", "data": {"eventType": "sendMessage"}}"#.to_vec(),
        )
        .await;
    assert_eq!(
        missing["error"]["details"]["field"],
        json!("data.platformConversationId")
    );

    // Too large: 413, JSON, nothing stored, nothing quarantined.
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024));
    let (status, answer) = app.post_raw("/webhooks/aivo-live", huge).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );

    let kept = quarantine(&app).await;
    assert_eq!(kept.len(), cases.len() + 1);
    // Newest first; bytes kept losslessly (the invalid UTF-8 one as base64).
    assert_eq!(kept[0]["error_code"], json!("invalid_payload"));
    let non_utf8 = kept
        .iter()
        .find(|q| q["body_encoding"] == json!("base64"))
        .expect("base64 entry");
    assert_eq!(non_utf8["body"], json!("//57fQ=="));
    assert_eq!(non_utf8["path"], json!("/webhooks/aivo-live"));
    assert_eq!(non_utf8["status"], json!(400));
    // Nothing valid was lost and nothing invalid appended.
    assert_eq!(event_count(&app).await, 0);
    let (status, _) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!(status, 200);
    assert_eq!(event_count(&app).await, 1);
}

async fn webhook_tokens_are_enforced(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.aivo_live.webhook_token = "s3cret".into();
        c.vcc.secret_key = "vcc-key".into();
    })
    .await;
    let (status, body) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, _) = app
        .post_raw("/webhooks/aivo-live?token=wrong", fixture("aivo_attended.json"))
        .await;
    assert_eq!(status, 401);
    let res = app
        .client
        .post(app.url("/webhooks/aivo-live"))
        .header("authorization", "Bearer wrong")
        .body(fixture("aivo_attended.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(event_count(&app).await, 0);
    assert!(quarantine(&app).await.is_empty());
    let res = app
        .client
        .post(app.url("/webhooks/aivo-live"))
        .header("authorization", "Bearer s3cret")
        .body(fixture("aivo_attended.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let (status, _) = app
        .post_raw("/webhooks/aivo-live?token=s3cret", fixture("aivo_close.json"))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post_raw("/webhooks/vcc/chat?secret-key=nope", fixture("vcc_chat.json"))
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post_raw("/webhooks/vcc/chat?secret-key=vcc-key", fixture("vcc_chat.json"))
        .await;
    assert_eq!(status, 200);
    // Platforms without a token stay open.
    let (status, _) = app
        .post_raw("/webhooks/ultimate/converse", fixture("ultimate_text.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(event_count(&app).await, 4);
}

async fn query_api_answers_errors_as_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app
        .get_json(&format!("/v1/conversations/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")));
    let (status, body) = app.get_json("/v1/conversations/not-a-uuid").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_parameter"))
    );
    let (status, body) = app.get_json("/v1/conversations?since=yesterday").await;
    assert_eq!(
        (status, body["error"]["details"]["parameter"].clone()),
        (400, json!("since"))
    );
    let (status, _) = app.get_json("/v1/conversations?limit=501").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json("/v1/conversations?state=sleeping").await;
    assert_eq!(status, 400);
    let (status, body) = app.get_json("/no/such/path").await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    let (status, _, html) = app.get_text("/docs/").await;
    assert_eq!(status, 200);
    assert!(html.contains("swagger"), "{html}");
}

/// A body that reuses a delivery key with other content is a newer version of that event: appended (the
/// answer says `conflict`), shown in the event feed, and the transcript shows its content once.
async fn a_redelivery_with_another_body_is_a_newer_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let said = |text: &str| {
        json!({"name": "messageToClient", "roomId": "room-v", "timestamp": 1_706_293_970_842_633_079_i64,
            "data": {"action": "text", "value": text, "source": "agent", "agent": {"name": "Tomas"}}})
    };
    let (s1, first) = app.post_json("/webhooks/aivo-live", &said("See you at 5")).await;
    let (s2, second) = app.post_json("/webhooks/aivo-live", &said("See you at 6")).await;
    let (s3, third) = app.post_json("/webhooks/aivo-live", &said("See you at 6")).await;
    assert_eq!((s1, s2, s3), (200, 200, 200));
    assert_eq!(first.get("conflict"), None, "{first}");
    assert_eq!(
        (&second["duplicate"], &second["conflict"]),
        (&json!(false), &json!(true)),
        "{second}"
    );
    assert_ne!(second["event_id"], first["event_id"]);
    assert_eq!(second["conversation_id"], first["conversation_id"]);
    assert_eq!(
        third["duplicate"],
        json!(true),
        "the corrected body again is a redelivery: {third}"
    );
    assert_eq!(third["event_id"], second["event_id"]);
    assert_eq!(event_count(&app).await, 2);
    let id = first["conversation_id"].as_str().unwrap();
    let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
    let items = events["items"].as_array().unwrap();
    assert_eq!(items[0].get("revision_of"), None);
    assert_eq!(items[1]["revision_of"], first["event_id"]);
    let (_, t) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    let texts: Vec<&Value> = t["messages"].as_array().unwrap().iter().map(|m| &m["text"]).collect();
    assert_eq!(texts, [&json!("See you at 6")]);
}

on_both_stores!(
    every_documented_event_is_stored_with_its_kind,
    redelivery_is_a_duplicate_and_appends_nothing,
    a_redelivery_with_another_body_is_a_newer_version,
    unknown_event_types_are_kept_and_answered_202,
    bad_input_gets_its_status_and_is_quarantined,
    webhook_tokens_are_enforced,
    query_api_answers_errors_as_json,
);

/// When the store cannot be reached, webhooks answer 503 (retry) and nothing is acknowledged; once it is back,
/// deliveries are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_answers_503_and_recovers() {
    use sqlx::Connection;
    let app = spawn_app(Backend::Postgres).await;
    let (status, _) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!(status, 200);
    let db = app._pg.as_ref().expect("postgres").name.clone();
    let parked = format!("{db}_parked");
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::pg_admin_url())
        .await
        .unwrap();
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    );
    sqlx::query(&terminate).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{db}\" RENAME TO \"{parked}\""))
        .execute(&mut admin)
        .await
        .unwrap();

    let (status, body) = app.post_raw("/webhooks/aivo-live", fixture("aivo_close.json")).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("unavailable")),
        "{body}"
    );
    let (status, _) = app.get_json("/readyz").await;
    assert_eq!(status, 503);

    sqlx::query(&format!("ALTER DATABASE \"{parked}\" RENAME TO \"{db}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        let (status, _) = app.post_raw("/webhooks/aivo-live", fixture("aivo_close.json")).await;
        if status == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(accepted, "deliveries are accepted again once the store is back");
    assert_eq!(event_count(&app).await, 2);
}
