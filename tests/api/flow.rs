//! A full handoff across platforms, checked field by field, and order independence.

use chrono::{DateTime, Duration, Utc};
use handoff_ledger::model::{Platform, StreamKey};
use handoff_ledger::sources::ledger;
use rand::seq::SliceRandom;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    aivo, live_platforms, post_ok, route_sales_to_aivo, spawn_app, spawn_app_with, ultimate, Backend, TestApp,
};
use crate::on_both_stores;

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// The time an Aivo Live body carries.
fn aivo_time(body: &Value) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(body["timestamp"].as_i64().expect("an Aivo timestamp"))
}

/// Sleeps until `at` has passed on our clock.
async fn sleep_until(at: DateTime<Utc>) {
    let left = at - Utc::now() + Duration::milliseconds(5);
    if let Ok(left) = left.to_std() {
        tokio::time::sleep(left).await;
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

async fn full_handoff_across_platforms(backend: Backend) {
    let room = format!("room-{}", Uuid::new_v4());
    // Aivo Live and the Ultimate widget API: the escalate's queue call returns the room.
    let live = live_platforms(&room).await;
    let app = spawn_app_with(backend, |c| {
        route_sales_to_aivo(c, &live.uri());
        c.sla.answer_seconds = 60;
        c.sla.queues.insert("2179".into(), 30);
    })
    .await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let conv = |a: &Value| a["conversation_id"].as_str().expect("conversation id").to_string();

    // Bot phase (Ultimate stamps events with their arrival time).
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
    let id = conv(&first);
    post_ok(&app, "/webhooks/ultimate/converse", &ultimate("sendMessage", &pcid, json!({"messageId": "m2", "type": "text", "text": "Talk to a human?", "buttons": [{"type": "button", "text": "YES"}, {"type": "button", "text": "NO"}]}))).await;
    let esc = post_ok(
        &app,
        "/webhooks/ultimate/converse",
        &ultimate("escalate", &pcid, json!({"escalateTo": "sales"})),
    )
    .await;
    assert_eq!(conv(&esc), id);

    // The live platform's id was linked to the bot conversation when the queue call returned.
    let (_, queued) = app.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(queued["state"], json!("queued"), "{queued}");
    let t0 = time(&queued["queued_at"]);

    // The visitor writes through the widget while waiting for the agent.
    post_ok(
        &app,
        "/webhooks/ultimate/converse",
        &ultimate(
            "widgetMessage",
            &pcid,
            json!({"type": "text", "text": "I need my balance", "buttons": []}),
        ),
    )
    .await;
    let (status, _) = app
        .post_json(
            &format!("/v1/conversations/{id}/messages"),
            &json!({"party": "visitor", "text": "Account 42"}),
        )
        .await;
    assert_eq!(status, 200);

    // Aivo's webhooks carry Aivo's times, and an event cannot have happened after it reached us (a time
    // after its arrival would be held back to the arrival): each is sent once its time has come. The
    // 12 s wait and the 4 s first response are waited for; the rest of the chat follows quickly.
    let t_att = t0 + Duration::seconds(12);
    let t_trigger = t_att + Duration::milliseconds(500);
    let t_agent = t_att + Duration::seconds(4);
    let t_transfer = t_agent + Duration::milliseconds(100);
    let t_att2 = t_transfer + Duration::milliseconds(100);
    let t_agent2 = t_att2 + Duration::milliseconds(100);
    let t_close = t_agent2 + Duration::milliseconds(100);
    let tomas = json!({"name": "Tomas", "nickname": "Tomas NICKK", "groupId": 2179});
    let lucia = json!({"name": "Lucia", "nickname": "Lu", "groupId": 5});
    for body in [
        aivo("attended", &room, t_att, json!({"agent": tomas})),
        aivo(
            "messageToClient",
            &room,
            t_trigger,
            json!({"action": "text", "value": "Welcome to sales", "source": "trigger", "agent": {}}),
        ),
        aivo(
            "messageToClient",
            &room,
            t_agent,
            json!({"action": "text", "value": "Hi, Tomas here", "source": "agent", "agent": tomas}),
        ),
        aivo(
            "transfer",
            &room,
            t_transfer,
            json!({"value": "Transfer to group", "originGroup": 2179, "target": 5, "agent": {}}),
        ),
        aivo("attended", &room, t_att2, json!({"agent": lucia})),
        aivo(
            "messageToClient",
            &room,
            t_agent2,
            json!({"action": "image", "value": "https://files.example/receipt.png", "source": "agent", "agent": lucia}),
        ),
        aivo("close", &room, t_close, json!({"reason": "agent", "agent": {}})),
    ] {
        sleep_until(aivo_time(&body)).await;
        let answer = post_ok(&app, "/webhooks/aivo-live", &body).await;
        assert_eq!(conv(&answer), id, "the room is part of the bot conversation");
    }

    let (status, c) = app.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(c["id"], json!(id));
    assert_eq!(c["state"], json!("closed"));
    assert_eq!(c["disposition"], json!("completed"));
    assert_eq!(c["platform_disposition"], json!("agent"));
    assert_eq!(c["close_reason"], json!("agent"));
    assert_eq!(c["queue"], json!("5"));
    assert_eq!(c["transfers"], json!(1));
    assert_eq!(time(&c["queued_at"]), t0.with_nanosecond_trunc());
    assert_eq!(time(&c["first_attended_at"]), t_att.with_nanosecond_trunc());
    assert_eq!(time(&c["closed_at"]), t_close.with_nanosecond_trunc());
    assert_eq!(c["wait_seconds"], json!(12.0));
    assert_eq!(
        c["first_response_seconds"],
        json!(4.0),
        "the trigger message is not a response"
    );
    assert_eq!(c["handle_seconds"], json!(secs(t_att, t_close)));
    assert_eq!(
        c["sla_status"],
        json!("met"),
        "12 s against the 30 s target of queue 2179"
    );
    assert_eq!(
        c["agents"],
        json!([{"name": "Tomas", "nickname": "Tomas NICKK", "group": "2179"}, {"name": "Lucia", "nickname": "Lu", "group": "5"}])
    );
    let mut streams = c["streams"].as_array().unwrap().clone();
    streams.retain(|s| s["platform"] != json!("ledger") && s["platform"] != json!("api"));
    assert_eq!(
        streams,
        vec![
            json!({"platform": "ultimate", "external_id": pcid}),
            json!({"platform": "aivo_live", "external_id": room})
        ]
    );
    assert_eq!(
        c["message_counts"],
        json!({"visitor": 2, "bot": 2, "agent": 2, "system": 1})
    );
    assert_eq!(c["handoffs"].as_array().unwrap().len(), 1);
    let h = &c["handoffs"][0];
    assert_eq!(h["backend"], json!("aivo_live"));
    assert_eq!(h["transfers"], json!(1));
    assert_eq!(h["disposition"], json!("completed"));
    assert!(c["escalated_at"].is_string());
    assert!(c["bot_seconds"].as_f64().is_some_and(|s| s >= 0.0));

    let (_, t) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    assert_eq!(t["conversation_id"], json!(id));
    let lines: Vec<(String, String, String)> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["party"].as_str().unwrap().to_string(),
                m["kind"].as_str().unwrap().to_string(),
                m["text"].as_str().or(m["url"].as_str()).unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("bot", "text", "Hi! How can I help?"),
        ("bot", "buttons", "Talk to a human?"),
        ("visitor", "text", "I need my balance"),
        ("visitor", "text", "Account 42"),
        ("system", "text", "Welcome to sales"),
        ("agent", "text", "Hi, Tomas here"),
        ("agent", "image", "https://files.example/receipt.png"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(lines, expected);
    assert_eq!(
        t["messages"][1]["buttons"],
        json!([{"type": "button", "text": "YES"}, {"type": "button", "text": "NO"}])
    );
    assert_eq!(t["messages"][5]["author"], json!("Tomas"));

    // The other transcript formats carry the same lines.
    let (status, ct, text) = app
        .get_text(&format!("/v1/conversations/{id}/transcript?format=text"))
        .await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain"));
    assert_eq!(text.lines().count(), 7);
    assert!(text.contains("agent (Tomas): Hi, Tomas here"), "{text}");
    assert!(text.contains("bot (BOT): Talk to a human? [YES] [NO]"), "{text}");
    let (_, ct, csv) = app
        .get_text(&format!("/v1/conversations/{id}/transcript?format=csv"))
        .await;
    assert!(ct.starts_with("text/csv"));
    assert_eq!(csv.lines().count(), 8);
    assert!(csv.starts_with("seq,at,party,author,kind,text,buttons,url,platform,event_id"));
    let (_, ct, jsonl) = app
        .get_text(&format!("/v1/conversations/{id}/transcript?format=jsonl"))
        .await;
    assert!(ct.starts_with("application/x-ndjson"));
    let parsed: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed, t["messages"].as_array().unwrap().clone());
    let (status, _) = app
        .get_json(&format!("/v1/conversations/{id}/transcript?format=pdf"))
        .await;
    assert_eq!(status, 400);

    // Paged two lines at a time, following `next_cursor`: the same lines; without `limit`, no cursor.
    assert_eq!(t["next_cursor"], Value::Null);
    let paged = follow_pages(
        &app,
        &format!("/v1/conversations/{id}/transcript?limit=2"),
        "messages",
        2,
    )
    .await;
    assert_eq!(paged, t["messages"].as_array().unwrap().clone());
    for bad in ["limit=0", "limit=10001", "cursor=nope", "cursor=1_2"] {
        let (status, body) = app.get_json(&format!("/v1/conversations/{id}/transcript?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], json!("invalid_parameter"), "{bad}");
    }

    // Raw events, in seq order, payloads as received. (Once the outbox has recorded every result: the log
    // must not grow between the reads compared below.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
        let count = |kind: &str| {
            events["items"]
                .as_array()
                .map_or(0, |items| items.iter().filter(|e| e["kind"] == json!(kind)).count())
        };
        if count("ledger.command") == count("ledger.command_result") || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
    assert_eq!(events["next_cursor"], Value::Null);
    let paged = follow_pages(&app, &format!("/v1/conversations/{id}/events?limit=5"), "items", 5).await;
    assert_eq!(&paged, events["items"].as_array().unwrap());
    let (status, _) = app.get_json(&format!("/v1/conversations/{id}/events?cursor=x")).await;
    assert_eq!(status, 400);
    let items = events["items"].as_array().unwrap();
    // Beside the 12 deliveries: the outbox's commands and results (queue call, relays).
    let delivered = items.iter().filter(|e| e["platform"] != json!("ledger")).count();
    assert_eq!(delivered, 12);
    assert!(items
        .iter()
        .any(|e| e["kind"] == json!("ledger.queue_accepted") && e["payload"]["live_id"] == json!(room)));
    assert!(items.windows(2).all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    assert!(items.iter().all(|e| e["conversation_id"] == json!(id)));

    // Filters find it.
    for q in [
        "state=closed",
        "disposition=completed",
        "sla_status=met",
        "queue=5",
        "agent=Lucia",
        "platform=aivo_live",
    ] {
        let (_, list) = app.get_json(&format!("/v1/conversations?{q}")).await;
        assert!(
            list["items"].as_array().unwrap().iter().any(|i| i["id"] == json!(id)),
            "{q}"
        );
    }
    let (_, list) = app.get_json(&format!("/v1/conversations?external_id={room}")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = app.get_json("/v1/conversations?agent=Nobody").await;
    assert!(list["items"].as_array().unwrap().is_empty());
}

/// Truncation to the microsecond precision both stores keep.
trait TruncNanos {
    fn with_nanosecond_trunc(self) -> Self;
}

impl TruncNanos for DateTime<Utc> {
    fn with_nanosecond_trunc(self) -> Self {
        handoff_ledger::sources::truncate_to_micros(self)
    }
}

/// The race: Aivo's webhooks arrive before the link; the two conversations merge and the room's id keeps resolving.
async fn live_webhook_before_the_link_merges(backend: Backend) {
    let app = spawn_app(backend).await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let room = format!("room-{}", Uuid::new_v4());
    let bot = post_ok(
        &app,
        "/webhooks/ultimate/converse",
        &ultimate(
            "sendMessage",
            &pcid,
            json!({"messageId": "x1", "type": "text", "text": "hello", "buttons": []}),
        ),
    )
    .await;
    let bot_id: Uuid = bot["conversation_id"].as_str().unwrap().parse().unwrap();
    // Aivo's times are never after their arrival (an event cannot have happened after it reached us),
    // within the half second of delivery delay that is not taken for a lagging clock, and after the bot's
    // first message (the bot conversation started first); the queue call is our own record, 5 s before.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let attended = Utc::now() - Duration::milliseconds(500);
    let t0 = attended - Duration::seconds(5);
    let early = post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo(
            "attended",
            &room,
            t0 + Duration::seconds(5),
            json!({"agent": {"name": "Tomas", "groupId": 2179}}),
        ),
    )
    .await;
    let room_id = early["conversation_id"].as_str().unwrap().to_string();
    assert_ne!(room_id, bot_id.to_string());
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo(
            "messageToClient",
            &room,
            t0 + Duration::seconds(6),
            json!({"action": "text", "value": "hi there", "source": "agent", "agent": {"name": "Tomas"}}),
        ),
    )
    .await;

    let accepted = ledger::QueueAccepted {
        backend: "aivo_live".into(),
        queue: Some("2179".into()),
        live_id: room.clone(),
        team: None,
    };
    let outcome = app
        .state
        .writer
        .append(vec![ledger::queue_accepted(
            bot_id,
            &accepted,
            StreamKey::new(Platform::AivoLive, room.clone()),
            t0,
        )])
        .await
        .unwrap();
    assert_eq!(
        outcome[0].conversation_id,
        Some(bot_id),
        "the earlier-started conversation survives"
    );

    let (status, merged) = app.get_json(&format!("/v1/conversations/{room_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        merged["id"],
        json!(bot_id.to_string()),
        "the absorbed id resolves to the survivor"
    );
    assert_eq!(merged["state"], json!("attended"));
    assert_eq!(merged["wait_seconds"], json!(5.0));
    let (_, t) = app.get_json(&format!("/v1/conversations/{room_id}/transcript")).await;
    assert_eq!(t["conversation_id"], json!(bot_id.to_string()));
    assert_eq!(t["messages"].as_array().unwrap().len(), 2);
    let (_, list) = app.get_json("/v1/conversations").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "one conversation after the merge"
    );
    // Later webhooks for the room land in the survivor directly.
    let later = post_ok(
        &app,
        "/webhooks/aivo-live",
        &aivo("close", &room, Utc::now(), json!({"reason": "agent"})),
    )
    .await;
    assert_eq!(later["conversation_id"], json!(bot_id.to_string()));
}

/// Everything except the per-delivery log positions and the arrival time of the one Ultimate message (Ultimate
/// sends no time of its own, so its events are stamped when they arrive, which differs between the two runs).
fn without_positions(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("last_seq");
        o.remove("updated_at");
        if o.contains_key("streams") && o["streams"][0]["platform"] == json!("ultimate") {
            o.remove("started_at");
        }
        if let Some(ms) = o.get_mut("messages").and_then(Value::as_array_mut) {
            for m in ms {
                if let Some(m) = m.as_object_mut() {
                    m.remove("seq");
                    if m.get("platform") == Some(&json!("ultimate")) {
                        m.remove("at");
                    }
                }
            }
        }
    }
    v
}

async fn shuffled_and_duplicated_delivery_gives_the_same_result(backend: Backend) {
    let pcid = "pc-shuffle";
    let room = "room-shuffle";
    // In the past: an event cannot have happened after it reached us.
    let t0 = DateTime::parse_from_rfc3339("2025-01-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let live: Vec<(&str, Value)> = vec![
        (
            "/webhooks/aivo-live",
            aivo(
                "attended",
                room,
                t0 + Duration::seconds(20),
                json!({"agent": {"name": "Tomas", "groupId": 2179}}),
            ),
        ),
        (
            "/webhooks/aivo-live",
            aivo(
                "messageToClient",
                room,
                t0 + Duration::seconds(21),
                json!({"action": "text", "value": "auto", "source": "trigger"}),
            ),
        ),
        (
            "/webhooks/aivo-live",
            aivo(
                "messageToClient",
                room,
                t0 + Duration::seconds(25),
                json!({"action": "text", "value": "hello", "source": "agent", "agent": {"name": "Tomas"}}),
            ),
        ),
        (
            "/webhooks/aivo-live",
            aivo(
                "transfer",
                room,
                t0 + Duration::seconds(40),
                json!({"originGroup": 2179, "target": 7}),
            ),
        ),
        (
            "/webhooks/aivo-live",
            aivo(
                "attended",
                room,
                t0 + Duration::seconds(90),
                json!({"agent": {"name": "Ana", "groupId": 7}}),
            ),
        ),
        (
            "/webhooks/aivo-live",
            aivo(
                "messageToClient",
                room,
                t0 + Duration::seconds(95),
                json!({"action": "text", "value": "Ana here", "source": "agent", "agent": {"name": "Ana"}}),
            ),
        ),
        (
            "/webhooks/aivo-live",
            aivo("close", room, t0 + Duration::seconds(300), json!({"reason": "agent"})),
        ),
        (
            "/webhooks/bright-pattern/bp-shuffle",
            json!({"event": "chat_session_message", "msg_id": "bp1", "msg": "side chat", "timestamp": (t0 + Duration::seconds(5)).timestamp_millis()}),
        ),
    ];
    let mut results = Vec::new();
    for shuffle in [false, true] {
        // The widget takes the relays: no failed relay notes a failure on the handoff (notes made now, after
        // the live side's times, would mark it in whichever order the relays ran).
        let widget = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({})))
            .mount(&widget)
            .await;
        let app = spawn_app_with(backend, |c| {
            c.ultimate.api_url = widget.uri();
            c.ultimate.api_key = "key".into();
        })
        .await;
        let bot = post_ok(
            &app,
            "/webhooks/ultimate/converse",
            &ultimate(
                "sendMessage",
                pcid,
                json!({"messageId": "s1", "type": "text", "text": "bot says hi", "buttons": []}),
            ),
        )
        .await;
        let bot_id: Uuid = bot["conversation_id"].as_str().unwrap().parse().unwrap();
        // The bot conversation began before the live chat (our own record of it, in the past like the
        // live side's times), so it is the one that survives the link in either order.
        app.state
            .writer
            .append(vec![ledger::linked(
                bot_id,
                vec![StreamKey::new(Platform::Ultimate, pcid)],
                "the bot conversation began",
                t0 - Duration::seconds(60),
            )])
            .await
            .unwrap();
        let link = ledger::queue_accepted(
            bot_id,
            &ledger::QueueAccepted {
                backend: "aivo_live".into(),
                queue: Some("2179".into()),
                live_id: room.into(),
                team: None,
            },
            StreamKey::new(Platform::AivoLive, room),
            t0,
        );
        let mut deliveries = live.clone();
        if shuffle {
            let dupes: Vec<_> = deliveries.iter().step_by(2).cloned().collect();
            deliveries.extend(dupes);
            deliveries.shuffle(&mut rand::thread_rng());
        } else {
            app.state.writer.append(vec![link.clone()]).await.unwrap();
        }
        for (i, (path, body)) in deliveries.iter().enumerate() {
            if shuffle && i == deliveries.len() / 2 {
                app.state.writer.append(vec![link.clone()]).await.unwrap();
            }
            post_ok(&app, path, body).await;
        }
        let (_, c) = app.get_json(&format!("/v1/conversations/{bot_id}")).await;
        let (_, t) = app.get_json(&format!("/v1/conversations/{bot_id}/transcript")).await;
        let (_, bp) = app.get_json("/v1/conversations?platform=bright_pattern").await;
        results.push((
            without_positions(c),
            without_positions(t),
            without_positions(bp["items"][0].clone()),
        ));
    }
    assert_eq!(results[0].0["disposition"], json!("completed"));
    assert_eq!(results[0].0["wait_seconds"], json!(20.0));
    assert_eq!(results[0].1["messages"].as_array().unwrap().len(), 4);
    assert_eq!(results[0], results[1]);
}

/// A handoff waiting past its answer target reads `breached` (and filters as such) while one under it stays `pending`.
async fn waiting_past_the_target_reads_breached(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.sla.answer_seconds = 60).await;
    let mut ids = Vec::new();
    for (pcid, waited) in [("pc-late", 300), ("pc-fresh", 5)] {
        let bot = post_ok(
            &app,
            "/webhooks/ultimate/converse",
            &ultimate(
                "sendMessage",
                pcid,
                json!({"messageId": pcid, "type": "text", "text": "one moment", "buttons": []}),
            ),
        )
        .await;
        let id: Uuid = bot["conversation_id"].as_str().unwrap().parse().unwrap();
        let accepted = ledger::QueueAccepted {
            backend: "aivo_live".into(),
            queue: Some("2179".into()),
            live_id: format!("room-{pcid}"),
            team: None,
        };
        let queued_at = Utc::now() - Duration::seconds(waited);
        app.state
            .writer
            .append(vec![ledger::queue_accepted(
                id,
                &accepted,
                StreamKey::new(Platform::AivoLive, format!("room-{pcid}")),
                queued_at,
            )])
            .await
            .unwrap();
        ids.push(id.to_string());
    }
    let (_, late) = app.get_json(&format!("/v1/conversations/{}", ids[0])).await;
    assert_eq!(late["state"], json!("queued"));
    assert_eq!(late["sla_status"], json!("breached"));
    assert_eq!(late["handoffs"][0]["sla_status"], json!("breached"));
    let (_, fresh) = app.get_json(&format!("/v1/conversations/{}", ids[1])).await;
    assert_eq!(fresh["sla_status"], json!("pending"));
    assert_eq!(
        time(&fresh["sla_deadline"]),
        time(&fresh["queued_at"]) + Duration::seconds(60)
    );
    let listed = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (_, breached) = app.get_json("/v1/conversations?sla_status=breached").await;
    assert_eq!(listed(&breached), vec![ids[0].clone()]);
    let (_, pending) = app.get_json("/v1/conversations?sla_status=pending").await;
    assert_eq!(listed(&pending), vec![ids[1].clone()]);
}

/// A live platform whose clock runs 10 s ahead of ours, then one whose clock runs 10 s behind: one
/// handoff, the transcript in the order things were said, timers as they happened, and the visitor's
/// leaving of the attended chat ends the live chat.
async fn a_live_clock_ahead_or_behind_keeps_one_handoff_in_order(backend: Backend) {
    for skew in [Duration::seconds(10), Duration::seconds(-10)] {
        let room = format!("room-{}", Uuid::new_v4());
        let live = live_platforms(&room).await;
        let app = spawn_app_with(backend, |c| {
            route_sales_to_aivo(c, &live.uri());
            c.aivo_live.close_path = "/conversations/{conversationId}/close".into();
        })
        .await;
        let pcid = format!("pc-{}", Uuid::new_v4());
        let say = |text: &str| ultimate("widgetMessage", &pcid, json!({"type": "text", "text": text}));
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(400));
        let first = post_ok(
            &app,
            "/webhooks/ultimate/converse",
            &ultimate(
                "sendMessage",
                &pcid,
                json!({"messageId": "m1", "type": "text", "text": "Hi!", "buttons": []}),
            ),
        )
        .await;
        let id = first["conversation_id"].as_str().expect("conversation id").to_string();
        post_ok(
            &app,
            "/webhooks/ultimate/converse",
            &ultimate("escalate", &pcid, json!({"escalateTo": "sales"})),
        )
        .await;
        post_ok(&app, "/webhooks/ultimate/converse", &say("I need my balance")).await;
        pause().await;
        // Aivo stamps by its own clock.
        let attended_sent = Utc::now();
        post_ok(
            &app,
            "/webhooks/aivo-live",
            &aivo(
                "attended",
                &room,
                attended_sent + skew,
                json!({"agent": {"name": "Tomas", "groupId": 2179}}),
            ),
        )
        .await;
        pause().await;
        let answered_sent = Utc::now();
        post_ok(
            &app,
            "/webhooks/aivo-live",
            &aivo(
                "messageToClient",
                &room,
                answered_sent + skew,
                json!({"action": "text", "value": "Hi, Tomas here", "source": "agent", "agent": {"name": "Tomas"}}),
            ),
        )
        .await;
        pause().await;
        post_ok(&app, "/webhooks/ultimate/converse", &say("Thanks")).await;
        pause().await;
        let left = Utc::now();
        post_ok(
            &app,
            "/webhooks/ultimate/converse",
            &ultimate("widgetEndSession", &pcid, json!({})),
        )
        .await;

        // The live chat is ended: the close call reaches Aivo.
        let close_path = format!("/conversations/{room}/close");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let requests = live.received_requests().await.unwrap_or_default();
            if requests.iter().any(|r| r.url.path() == close_path) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "skew {skew}: no close call in {requests:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Aivo's own close comes after: the handoff is over already.
        post_ok(
            &app,
            "/webhooks/aivo-live",
            &aivo("close", &room, Utc::now() + skew, json!({"reason": "user left"})),
        )
        .await;

        let (_, c) = app.get_json(&format!("/v1/conversations/{id}")).await;
        assert_eq!(c["handoffs"].as_array().map(Vec::len), Some(1), "skew {skew}: {c}");
        assert_eq!(c["state"], json!("closed"), "skew {skew}: {c}");
        assert_eq!(c["disposition"], json!("completed"), "skew {skew}: {c}");
        assert_eq!(c["close_reason"], json!("visitor_left"), "skew {skew}: {c}");
        let queued = time(&c["queued_at"]);
        let attended = time(&c["first_attended_at"]);
        let closed = time(&c["closed_at"]);
        // As they happened on our clock, within the delivery's own delay.
        let near = |at: DateTime<Utc>, sent: DateTime<Utc>| (at - sent).num_milliseconds().abs() < 300;
        assert!(
            near(attended, attended_sent),
            "skew {skew}: attended {attended}, sent {attended_sent}"
        );
        assert!(near(closed, left), "skew {skew}: closed {closed}, left {left}");
        let wait = c["wait_seconds"].as_f64().expect("a wait");
        assert!(
            (wait - secs(queued, attended_sent)).abs() < 0.3,
            "skew {skew}: wait {wait}"
        );
        let response = c["first_response_seconds"].as_f64().expect("a first response");
        assert!(
            (response - secs(attended_sent, answered_sent)).abs() < 0.3,
            "skew {skew}: first response {response}"
        );
        assert!(
            c["handle_seconds"].as_f64().is_some_and(|h| h > 0.0),
            "skew {skew}: {c}"
        );

        let (_, t) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
        let lines: Vec<(&str, &str)> = t["messages"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|m| (m["party"].as_str().unwrap_or(""), m["text"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            lines,
            [
                ("bot", "Hi!"),
                ("visitor", "I need my balance"),
                ("agent", "Hi, Tomas here"),
                ("visitor", "Thanks")
            ],
            "skew {skew}"
        );

        // The log keeps Aivo's own times beside when it happened.
        let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
        let items = events["items"].as_array().expect("events");
        let attend = items
            .iter()
            .find(|e| e["kind"] == json!("aivo_live.attended"))
            .expect("the attend");
        assert_eq!(
            time(&attend["platform_at"]),
            handoff_ledger::sources::truncate_to_micros(attended_sent + skew)
        );
        assert!(time(&attend["occurred_at"]) <= time(&attend["received_at"]));
        assert_eq!(
            time(&attend["occurred_at"]),
            time(&attend["platform_at"]).min(time(&attend["received_at"]))
        );
        let bot = items
            .iter()
            .find(|e| e["platform"] == json!("ultimate"))
            .expect("a bot event");
        assert_eq!(bot["platform_at"], Value::Null);
    }
}

/// A Bright Pattern history answer of an old chat: the status events and the visitor's own messages carry
/// no time; they keep their place in the answer (with the nearest timed event after them, else before
/// them), not the arrival time, years later.
async fn untimed_events_of_a_history_answer_keep_their_place(backend: Backend) {
    let app = spawn_app(backend).await;
    let ms = |secs: i64| (1_709_294_400 + secs) * 1000;
    let history = json!({"events": [
        {"event": "chat_session_status", "state": "queued"},
        {"event": "chat_session_message", "msg_id": "v1", "msg": "hello?"},
        {"event": "chat_session_party_joined", "party_id": "p1", "first_name": "Ana", "type": "internal",
            "timestamp": ms(30)},
        {"event": "chat_session_message", "msg_id": "a1", "party_id": "p1", "msg": "Hi, Ana here", "timestamp": ms(35)},
        {"event": "chat_session_message", "msg_id": "v2", "msg": "my order"},
        {"event": "chat_session_message", "msg_id": "a2", "party_id": "p1", "msg": "on its way", "timestamp": ms(50)},
        {"event": "chat_session_message", "msg_id": "v3", "msg": "thanks"}
    ]});
    let answer = post_ok(&app, "/webhooks/bright-pattern/chat-old", &history).await;
    let id = answer["conversation_id"].as_str().expect("conversation id").to_string();
    let (_, t) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    let lines: Vec<(String, DateTime<Utc>)> = t["messages"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|m| (m["text"].as_str().unwrap_or("").to_string(), time(&m["at"])))
        .collect();
    let at = |secs: i64| DateTime::from_timestamp(1_709_294_400 + secs, 0).expect("a time");
    let expected: Vec<(String, DateTime<Utc>)> = [
        ("hello?", at(30)),
        ("Hi, Ana here", at(35)),
        ("my order", at(50)),
        ("on its way", at(50)),
        ("thanks", at(50)),
    ]
    .iter()
    .map(|(text, at)| (text.to_string(), *at))
    .collect();
    assert_eq!(lines, expected);
    let (_, c) = app.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(time(&c["queued_at"]), at(30));
    assert_eq!(c["first_response_seconds"], json!(5.0));
    // The log says what was sent: no time of their own, so `occurred_at` is the arrival.
    let (_, events) = app.get_json(&format!("/v1/conversations/{id}/events")).await;
    let first = &events["items"][0];
    assert_eq!(first["platform_at"], Value::Null);
    assert_eq!(first["occurred_at"], first["received_at"]);
}

on_both_stores!(
    untimed_events_of_a_history_answer_keep_their_place,
    full_handoff_across_platforms,
    live_webhook_before_the_link_merges,
    shuffled_and_duplicated_delivery_gives_the_same_result,
    waiting_past_the_target_reads_breached,
    a_live_clock_ahead_or_behind_keeps_one_handoff_in_order,
);

/// Every item under `key` of the pages from `first` (a path ending in `?...limit=N`) on, following
/// `next_cursor`; each page answers 200 with at most `limit` items.
async fn follow_pages(app: &TestApp, first: &str, key: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut url = first.to_string();
    loop {
        let (status, page) = app.get_json(&url).await;
        assert_eq!(status, 200, "{url}");
        let got = page[key].as_array().unwrap();
        assert!(got.len() <= limit, "{url}");
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("{first}&cursor={c}"),
            None => return items,
        }
    }
}
