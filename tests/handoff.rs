//! The service drives the handoff: the real service on port 0, every outbound call answered by wiremock and
//! checked for method, path, headers and exact body; outcomes checked in the log and the conversation.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::requests::{aivo, ultimate};
use common::{free_port, start_service, wait_ready, FreshStore, StoreKind as Store, TestService};
use handoff_ledger::config::{Config, Route};
use handoff_ledger::model::Backend;
use handoff_ledger::outbound::clients::aivo_live::user_hash;
use handoff_ledger::outbound::{Command, LiveTarget};
use handoff_ledger::sources::ledger;
use handoff_ledger::startup::Application;
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const AIVO_TOKEN: &str = "aivo-bot-token";
const ULTIMATE_KEY: &str = "ultimate-api-key";
const ULTIMATE_BOT: &str = "bot-7";
const BP_AUTH: &str = r#"MOBILE-API-140-327-PLAIN appId="app-1", clientId="client-1""#;

type TestApp = TestService;

/// Every backend pointed at `mock` (`/aivo`, `/ultimate`, `/bp`); routing: default Aivo group 2179,
/// team `support` to Bright Pattern; quick retries.
fn config_for(mock: &MockServer) -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".into();
    c.aivo_live.base_url = format!("{}/aivo", mock.uri());
    c.aivo_live.bot_id = 1000;
    c.aivo_live.bot_token = AIVO_TOKEN.into();
    c.aivo_live.timeout_seconds = 5;
    c.ultimate.api_url = format!("{}/ultimate", mock.uri());
    c.ultimate.api_key = ULTIMATE_KEY.into();
    c.ultimate.bot_id = ULTIMATE_BOT.into();
    c.ultimate.escalate_deadline_seconds = 5;
    c.bright_pattern.base_url = format!("{}/bp", mock.uri());
    c.bright_pattern.tenant_url = "tenant.example".into();
    c.bright_pattern.app_id = "app-1".into();
    c.bright_pattern.client_id = "client-1".into();
    c.bright_pattern.poll_timeout_seconds = 5;
    c.outbox.initial_backoff_ms = 20;
    c.outbox.max_backoff_ms = 200;
    c.outbox.max_attempts = 4;
    c.routing.default = Some(Route {
        backend: Backend::AivoLive,
        groups: vec![2179],
        hours: None,
    });
    c.routing.teams.insert(
        "support".into(),
        Route {
            backend: Backend::BrightPattern,
            groups: Vec::new(),
            hours: None,
        },
    );
    c
}

async fn spawn(store: Store, mock: &MockServer, customize: impl FnOnce(&mut Config)) -> TestApp {
    common::start(store, config_for(mock), customize).await
}

/// A service on the store of one that was stopped.
async fn spawn_on(store: FreshStore, mock: &MockServer, customize: impl FnOnce(&mut Config)) -> TestApp {
    common::start_on(store, config_for(mock), customize).await
}

/// Gives `first` (a service whose outbox does not reach `mock`) time to send, checks it sent nothing,
/// stops it and starts the service again on `store`.
async fn restart_having_sent_nothing(first: Application, store: FreshStore, mock: &MockServer) -> TestApp {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mock.received_requests().await.unwrap().is_empty(),
        "nothing sent before the restart"
    );
    drop(first);
    spawn_on(store, mock, |_| {}).await
}

impl TestApp {
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, 200, "{path} {body}: {answer}");
        answer
    }

    async fn get(&self, path: &str) -> Value {
        let res = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status().as_u16(), 200, "{path}");
        res.json().await.expect("json")
    }

    async fn conversation(&self, id: &str) -> Value {
        self.get(&format!("/v1/conversations/{id}")).await
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/v1/conversations/{id}/events")).await["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `(action, outcome)` of every command result of a conversation, in log order.
    async fn results(&self, id: &str) -> Vec<(String, String)> {
        self.events(id)
            .await
            .into_iter()
            .filter(|e| e["kind"] == json!("ledger.command_result"))
            .map(|e| {
                (
                    e["payload"]["action"].as_str().unwrap_or_default().to_string(),
                    e["payload"]["outcome"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Every recorded command's action, in log order.
    async fn commands(&self, id: &str) -> Vec<String> {
        self.events(id)
            .await
            .into_iter()
            .filter(|e| e["kind"] == json!("ledger.command"))
            .map(|e| e["payload"]["action"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Requests received under a path prefix, in arrival order.
async fn received(mock: &MockServer, prefix: &str) -> Vec<Request> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path().starts_with(prefix))
        .collect()
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn header<'a>(r: &'a Request, name: &str) -> Vec<&'a str> {
    r.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The widget updates sent so far, checked for the widget API's headers.
async fn widget_calls(mock: &MockServer) -> Vec<Value> {
    received(mock, "/ultimate/")
        .await
        .iter()
        .map(|r| {
            assert_eq!(r.method.as_str(), "POST");
            assert_eq!(r.url.path(), "/ultimate/agent/converse/send-message-to-widget");
            assert_eq!(header(r, "authorization"), vec![ULTIMATE_KEY]);
            assert_eq!(header(r, "botid"), vec![ULTIMATE_BOT]);
            body(r)
        })
        .collect()
}

async fn wait_widget_calls(mock: &MockServer, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} widget calls"), || async {
        received(mock, "/ultimate/").await.len() >= n
    })
    .await;
    widget_calls(mock).await
}

fn conv(answer: &Value) -> String {
    answer["conversation_id"].as_str().expect("conversation id").to_string()
}

async fn mount_ok(mock: &MockServer, prefix: &str) {
    Mock::given(path_regex(format!("^{prefix}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .with_priority(10)
        .mount(mock)
        .await;
}

async fn mount_aivo_queue(mock: &MockServer, room: &str, delay: Duration) {
    Mock::given(method("POST"))
        .and(path("/aivo/queue/external"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"conversationId": room, "customToken": "t", "messageQueueId": 0, "notAttended": 0}),
                )
                .set_delay(delay),
        )
        .mount(mock)
        .await;
}

fn aivo_queue_body(pcid: &str, user: Value) -> Value {
    let mut u = json!({"hash": user_hash(pcid), "firstname": null, "lastname": null, "email": null, "phone": null, "extra": {}});
    if let (Some(u), Some(extra)) = (u.as_object_mut(), user.as_object()) {
        u.extend(extra.clone());
    }
    json!({"botId": 1000, "groupsId": [2179], "botToken": AIVO_TOKEN, "protocolId": 28, "user": u,
           "status": "queued", "lastSender": "user"})
}

/// The bot escalates, Aivo queues it and its webhooks flow back to the widget; the visitor's messages go to
/// the agent; the close disconnects the widget. Every call exact, every command recorded with its result.
async fn escalate_through_aivo_to_the_widget_and_back(store: Store) {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::ZERO).await;
    mount_ok(&mock, "/aivo/").await;
    mount_ok(&mock, "/ultimate/").await;
    let app = spawn(store, &mock, |_| {}).await;
    let pcid = format!("pc-{}", Uuid::new_v4());

    let first = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate(
                "sendMessage",
                &pcid,
                json!({"type": "text", "text": "Hi!", "buttons": []}),
            ),
        )
        .await;
    let id = conv(&first);
    let actions = json!({"botId": "BOT", "platformConversationId": pcid, "name": "setAttributes",
        "data": [{"key": "firstname", "value": ["Brian"]}, {"key": "ticket", "value": ["2024"], "saveAs": "Ticket"}]});
    let answer = app.post_ok("/webhooks/ultimate/actions", &actions).await;
    assert_eq!(
        answer,
        json!({"results": [{"key": "firstname", "value": "Brian"}, {"key": "Ticket", "value": "2024"}]})
    );

    let esc = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate("escalate", &pcid, json!({"escalateTo": "sales"})),
        )
        .await;
    assert_eq!(conv(&esc), id);
    let queue_calls = received(&mock, "/aivo/queue").await;
    assert_eq!(queue_calls.len(), 1);
    assert_eq!(queue_calls[0].method.as_str(), "POST");
    assert_eq!(header(&queue_calls[0], "content-type"), vec!["application/json"]);
    assert_eq!(
        body(&queue_calls[0]),
        aivo_queue_body(&pcid, json!({"firstname": "Brian", "extra": {"Ticket": "2024"}}))
    );
    let c = app.conversation(&id).await;
    assert_eq!(c["state"], json!("queued"));
    assert_eq!(c["queue"], json!("2179"));
    assert!(c["streams"]
        .as_array()
        .unwrap()
        .contains(&json!({"platform": "aivo_live", "external_id": room})));

    let status = json!({"botId": "BOT", "platformConversationId": pcid, "name": "getHandoffStatus", "data": []});
    let answer = app.post_ok("/webhooks/ultimate/actions", &status).await;
    assert_eq!(answer["results"][0], json!({"key": "handoffState", "value": "queued"}));
    assert_eq!(answer["results"][1], json!({"key": "handoffQueue", "value": "2179"}));

    let t = Utc::now();
    let tomas = json!({"name": "Tomas", "nickname": "Tomas NICKK", "groupId": 2179});
    let a = app
        .post_ok(
            "/webhooks/aivo-live",
            &aivo("attended", &room, t, json!({"agent": tomas})),
        )
        .await;
    assert_eq!(conv(&a), id, "the room's webhooks land in the bot conversation");
    let calls = wait_widget_calls(&mock, 1).await;
    assert_eq!(
        calls[0],
        json!({"platformConversationId": pcid, "eventType": "escalationSuccess", "agent": "Tomas"})
    );
    app.post_ok(
        "/webhooks/aivo-live",
        &aivo(
            "messageToClient",
            &room,
            t + chrono::Duration::seconds(1),
            json!({"action": "text", "value": "Hi, Tomas here", "source": "agent", "agent": tomas}),
        ),
    )
    .await;
    let calls = wait_widget_calls(&mock, 2).await;
    assert_eq!(
        calls[1],
        json!({"platformConversationId": pcid, "eventType": "message", "agent": "Tomas", "text": "Hi, Tomas here"})
    );

    // The visitor answers through the widget and through the API: both reach the agent.
    app.post_ok(
        "/webhooks/ultimate/converse",
        &ultimate(
            "widgetMessage",
            &pcid,
            json!({"type": "text", "text": "I need my balance"}),
        ),
    )
    .await;
    app.post_ok(
        &format!("/v1/conversations/{id}/messages"),
        &json!({"party": "visitor", "text": "Account 42"}),
    )
    .await;
    app.post_ok(
        &format!("/v1/conversations/{id}/messages"),
        &json!({"party": "system", "text": "a note, not for the agent"}),
    )
    .await;
    wait_until("two client messages", || async {
        received(&mock, &format!("/aivo/{room}/")).await.len() >= 2
    })
    .await;
    let relayed: Vec<(String, Value)> = received(&mock, &format!("/aivo/{room}/"))
        .await
        .iter()
        .map(|r| (format!("{} {}", r.method, r.url.path()), body(r)))
        .collect();
    let client_message = |text: &str| json!({"message": [{"action": "text", "value": text, "source": "user"}]});
    assert_eq!(
        relayed,
        vec![
            (
                format!("POST /aivo/{room}/client/message"),
                client_message("I need my balance")
            ),
            (
                format!("POST /aivo/{room}/client/message"),
                client_message("Account 42")
            ),
        ]
    );

    app.post_ok(
        "/webhooks/aivo-live",
        &aivo(
            "transfer",
            &room,
            t + chrono::Duration::seconds(2),
            json!({"value": "Transfer to group", "originGroup": 2179, "target": 5, "agent": {}}),
        ),
    )
    .await;
    wait_widget_calls(&mock, 3).await;
    app.post_ok(
        "/webhooks/aivo-live",
        &aivo(
            "close",
            &room,
            t + chrono::Duration::seconds(3),
            json!({"reason": "agent", "agent": {}}),
        ),
    )
    .await;
    let calls = wait_widget_calls(&mock, 4).await;
    assert_eq!(
        calls[2..],
        [
            json!({"platformConversationId": pcid, "eventType": "escalationQueueUpdate"}),
            json!({"platformConversationId": pcid, "eventType": "agentDisconnect", "agent": "Tomas"}),
        ]
    );

    wait_until("every result recorded", || async { app.results(&id).await.len() == 7 }).await;
    assert_eq!(
        app.commands(&id).await,
        vec![
            "aivo_live_queue",
            "widget_escalation_success",
            "widget_message",
            "visitor_message",
            "visitor_message",
            "widget_escalation_queue_update",
            "widget_agent_disconnect",
        ]
    );
    assert!(app.results(&id).await.iter().all(|(_, outcome)| outcome == "ok"));
    let c = app.conversation(&id).await;
    assert_eq!(c["state"], json!("closed"));
    assert_eq!(c["disposition"], json!("completed"));
    assert_eq!(c["handoffs"].as_array().unwrap().len(), 1);
    assert_eq!(c["handoffs"][0].get("failure"), None);
    // Nothing more was called than checked above.
    assert_eq!(mock.received_requests().await.unwrap().len(), 1 + 2 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalate_through_aivo_to_the_widget_and_back_on_sqlite() {
    escalate_through_aivo_to_the_widget_and_back(Store::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalate_through_aivo_to_the_widget_and_back_on_postgres() {
    escalate_through_aivo_to_the_widget_and_back(Store::Postgres).await
}

fn bp_request_checks(r: &Request) {
    assert_eq!(r.url.query(), Some("tenantUrl=tenant.example"), "{}", r.url);
    assert_eq!(header(r, "authorization"), vec![BP_AUTH]);
    assert_eq!(header(r, "content-type"), vec!["application/json; charset=UTF-8"]);
    assert_eq!(header(r, "cache-control"), vec!["no-cache"]);
}

/// A widget escalation to Bright Pattern: the chat is requested, its events long-polled (a repeated answer
/// adds nothing), relayed to the widget; the loop stops on 5005; the visitor's text and leaving reach the chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bright_pattern_handoff_is_polled_until_the_chat_is_gone() {
    let mock = MockServer::start().await;
    mount_ok(&mock, "/ultimate/").await;
    Mock::given(method("POST"))
        .and(path("/bp/chats"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"chat_id": "chat-1", "state": "queued", "ewt": "90", "is_new_chat": true})),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/bp/chats/chat-1/events"))
        .respond_with(ResponseTemplate::new(200).set_body_string(""))
        .mount(&mock)
        .await;
    let first = json!({"events": [
        {"event": "chat_session_status", "state": "queued", "ewt": "90"},
        {"event": "chat_session_party_joined", "party_id": "p-1", "first_name": "Ann", "last_name": "Lee", "display_name": "Ann L.", "type": "external", "timestamp": "1706293970842"},
        {"event": "chat_session_typing", "party_id": "p-1"},
        {"event": "chat_session_message", "party_id": "p-1", "msg_id": "m-1", "msg": "Hi, I am Ann", "timestamp": "1706293975000"}
    ]});
    let second = json!({"events": [
        {"event": "chat_session_message", "party_id": "p-1", "msg_id": "m-1", "msg": "Hi, I am Ann", "timestamp": "1706293975000"},
        {"event": "chat_session_message", "party_id": "p-1", "msg_id": "m-2", "msg": "Let me check", "timestamp": "1706293990"}
    ]});
    // Answers in turn: the first events, the same again (a known Bright Pattern habit), new ones, then gone.
    for (priority, answer) in [(1u8, first.clone()), (2, first), (3, second)] {
        Mock::given(method("GET"))
            .and(path("/bp/chats/chat-1/events"))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .up_to_n_times(1)
            .with_priority(priority)
            .mount(&mock)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/bp/chats/chat-1/events"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error_code": 5005, "error_message": "chat session not found"})),
        )
        .with_priority(4)
        .mount(&mock)
        .await;
    let app = spawn(Store::Sqlite, &mock, |_| {}).await;
    let pcid = format!("pc-{}", Uuid::new_v4());

    let started = Instant::now();
    let esc = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate("widgetEscalate", &pcid, json!({"escalateTo": "support"})),
        )
        .await;
    let id = conv(&esc);
    let polls = || async {
        received(&mock, "/bp/chats/chat-1/events")
            .await
            .iter()
            .filter(|r| r.method.as_str() == "GET")
            .count()
    };
    wait_until("the loop to stop after 5005", || async {
        polls().await == 4 && !app.state.outbound.is_polling("chat-1")
    })
    .await;
    let calls = wait_widget_calls(&mock, 5).await;
    assert_eq!(
        calls,
        vec![
            json!({"platformConversationId": pcid, "eventType": "escalationQueueUpdate", "waitingTime": "2"}),
            json!({"platformConversationId": pcid, "eventType": "escalationQueueUpdate", "waitingTime": "2"}),
            json!({"platformConversationId": pcid, "eventType": "escalationSuccess", "agent": "Ann L."}),
            json!({"platformConversationId": pcid, "eventType": "message", "agent": "Ann L.", "text": "Hi, I am Ann"}),
            json!({"platformConversationId": pcid, "eventType": "message", "agent": "Ann L.", "text": "Let me check"}),
        ]
    );
    let chat_request = received(&mock, "/bp/chats").await;
    assert_eq!(chat_request[0].url.path(), "/bp/chats");
    bp_request_checks(&chat_request[0]);
    assert_eq!(
        body(&chat_request[0]),
        json!({"from": pcid, "parameters": {"conversation_id": id}})
    );
    for r in received(&mock, "/bp/").await {
        bp_request_checks(&r);
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // The repeated poll added no transcript line.
    let t = app.get(&format!("/v1/conversations/{id}/transcript")).await;
    let lines: Vec<(String, String)> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["party"].as_str().unwrap().into(),
                m["text"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("agent".to_string(), "Hi, I am Ann".to_string()),
            ("agent".into(), "Let me check".into())
        ]
    );
    let c = app.conversation(&id).await;
    assert_eq!(c["state"], json!("attended"));
    assert_eq!(c["agents"][0]["name"], json!("Ann L."));

    // The visitor writes, then leaves: both go to the chat.
    app.post_ok(
        "/webhooks/ultimate/converse",
        &ultimate(
            "widgetMessage",
            &pcid,
            json!({"type": "text", "text": "Thanks, waiting"}),
        ),
    )
    .await;
    app.post_ok(
        "/webhooks/ultimate/converse",
        &ultimate("widgetEndSession", &pcid, json!({})),
    )
    .await;
    let sent = || async {
        received(&mock, "/bp/chats/chat-1/events")
            .await
            .into_iter()
            .filter(|r| r.method.as_str() == "POST")
            .collect::<Vec<_>>()
    };
    wait_until("message and end sent to the chat", || async { sent().await.len() == 2 }).await;
    let events = app.events(&id).await;
    let message_command = events
        .iter()
        .find(|e| e["kind"] == json!("ledger.command") && e["payload"]["action"] == json!("visitor_message"))
        .expect("visitor message command");
    let msg_id = message_command["payload"]["command_id"].as_str().unwrap();
    let bodies: Vec<Value> = sent().await.iter().map(body).collect();
    assert_eq!(
        bodies,
        vec![
            json!({"events": [{"event": "chat_session_message", "msg_id": msg_id, "msg": "Thanks, waiting"}]}),
            json!({"events": [{"event": "chat_session_end"}]}),
        ]
    );
    wait_until("results recorded", || async {
        app.results(&id)
            .await
            .iter()
            .filter(|(a, _)| a == "visitor_message" || a == "end_chat")
            .count()
            == 2
    })
    .await;
    let results = app.results(&id).await;
    assert!(results.iter().all(|(_, o)| o == "ok"), "{results:?}");
    let c = app.conversation(&id).await;
    assert_eq!(c["state"], json!("closed"));
    assert_eq!(c["close_reason"], json!("visitor_left"));
}

/// `widgetEscalate` is acknowledged at once and queued in the background; without a route the widget hears
/// `escalationFailed` and the conversation records the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_escalate_is_acknowledged_at_once_and_queued_in_the_background() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::from_millis(1500)).await;
    mount_ok(&mock, "/ultimate/").await;
    let app = spawn(Store::Sqlite, &mock, |c| {
        c.routing.teams.insert(
            "sales".into(),
            Route {
                backend: Backend::AivoLive,
                groups: vec![2179],
                hours: None,
            },
        );
        c.routing.default = None;
    })
    .await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let started = Instant::now();
    let answer = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate("widgetEscalate", &pcid, json!({"escalateTo": "sales"})),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "not waiting for the queue call"
    );
    let id = conv(&answer);
    assert_eq!(app.conversation(&id).await["state"], json!("escalation_requested"));
    let calls = wait_widget_calls(&mock, 1).await;
    assert_eq!(
        calls,
        vec![json!({"platformConversationId": pcid, "eventType": "escalationQueueUpdate"})]
    );
    let queue_calls = received(&mock, "/aivo/queue").await;
    assert_eq!(queue_calls.len(), 1);
    assert_eq!(body(&queue_calls[0]), aivo_queue_body(&pcid, json!({})));
    let c = app.conversation(&id).await;
    assert_eq!(c["state"], json!("queued"));
    assert_eq!(c["handoffs"][0]["backend"], json!("aivo_live"));

    // No route for this team (and no default).
    let other = format!("pc-{}", Uuid::new_v4());
    let answer = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate("widgetEscalate", &other, json!({"escalateTo": "nowhere"})),
        )
        .await;
    let calls = wait_widget_calls(&mock, 2).await;
    assert_eq!(
        calls[1],
        json!({"platformConversationId": other, "eventType": "escalationFailed"})
    );
    let c = app.conversation(&conv(&answer)).await;
    assert_eq!(c["state"], json!("failed"));
    assert_eq!(c["disposition"], json!("failed"));
    assert!(c["handoffs"][0]["failure"]
        .as_str()
        .unwrap()
        .contains("no route for team nowhere"));
}

/// A delivery whose commit outlasts `server.commit_deadline_ms` is answered 503 and commits afterwards: the
/// commands it committed are sent then (not at the next start), and the platform's retry, a redelivery,
/// sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_committed_after_its_503_has_its_commands_sent_then() {
    use sqlx::Connection as _;
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::ZERO).await;
    mount_ok(&mock, "/ultimate/").await;
    let app = spawn(Store::Sqlite, &mock, |c| c.server.commit_deadline_ms = 500).await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let escalate = ultimate("widgetEscalate", &pcid, json!({}));
    // Another connection holds SQLite's write lock: the writer's transaction waits behind it.
    let mut lock = sqlx::SqliteConnection::connect(&app.state.config.store.url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.unwrap();
    let (status, answer) = app.post("/webhooks/ultimate/converse", &escalate).await;
    assert_eq!(status, 503, "{answer}");
    assert!(received(&mock, "/aivo/").await.is_empty());
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    wait_until("the queue call of the late commit", || async {
        received(&mock, "/aivo/queue").await.len() == 1
    })
    .await;
    let queue_calls = received(&mock, "/aivo/queue").await;
    assert_eq!(body(&queue_calls[0]), aivo_queue_body(&pcid, json!({})));
    // The platform retries: recognised, nothing sent again.
    let (status, _) = app.post("/webhooks/ultimate/converse", &escalate).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&mock, "/aivo/queue").await.len(), 1, "queued once");
    let id = app.get("/v1/conversations").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("the queue call's result", || async {
        app.results(&id)
            .await
            .contains(&("aivo_live_queue".to_string(), "ok".to_string()))
    })
    .await;
    assert_eq!(app.conversation(&id).await["state"], json!("queued"));
    assert_eq!(
        app.commands(&id)
            .await
            .iter()
            .filter(|c| *c == "aivo_live_queue")
            .count(),
        1,
        "one queue command recorded"
    );
}

/// Aivo sends `attended` while the queue call is still out: the room starts a conversation of its own,
/// the link merges it into the bot's, and the widget still hears `escalationSuccess`, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attend_before_the_queue_call_returns_ends_in_one_conversation() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::from_millis(1500)).await;
    mount_ok(&mock, "/ultimate/").await;
    let app = spawn(Store::Sqlite, &mock, |_| {}).await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let first = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate(
                "sendMessage",
                &pcid,
                json!({"type": "text", "text": "One moment", "buttons": []}),
            ),
        )
        .await;
    let id = conv(&first);
    let escalation = {
        let client = app.client.clone();
        let url = format!("{}/webhooks/ultimate/converse", app.address);
        let body = ultimate("escalate", &pcid, json!({}));
        tokio::spawn(async move { client.post(url).json(&body).send().await.map(|r| r.status().as_u16()) })
    };
    wait_until("the queue call to be out", || async {
        received(&mock, "/aivo/queue").await.len() == 1
    })
    .await;
    let early = app
        .post_ok(
            "/webhooks/aivo-live",
            &aivo(
                "attended",
                &room,
                Utc::now(),
                json!({"agent": {"name": "Tomas", "groupId": 2179}}),
            ),
        )
        .await;
    let room_conversation = conv(&early);
    assert_ne!(
        room_conversation, id,
        "before the link the room is a conversation of its own"
    );
    assert_eq!(escalation.await.unwrap().unwrap(), 200);

    let merged = app.conversation(&room_conversation).await;
    assert_eq!(merged["id"], json!(id), "the room's conversation was absorbed");
    assert_eq!(merged["state"], json!("attended"));
    let list = app.get(&format!("/v1/conversations?external_id={room}")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let calls = wait_widget_calls(&mock, 1).await;
    assert_eq!(
        calls,
        vec![json!({"platformConversationId": pcid, "eventType": "escalationSuccess", "agent": "Tomas"})]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(widget_calls(&mock).await.len(), 1, "told once");
    assert_eq!(
        app.commands(&id).await,
        vec!["aivo_live_queue", "widget_escalation_success"]
    );
}

/// Synchronous escalations answer 504 past the deadline (the late outcome is still recorded), 502 when
/// the backend refuses (recorded as the handoff's failure) and 503 when the route names no configured backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalate_answers_504_502_and_503_and_records_the_outcome() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::from_millis(2500)).await;
    let app = spawn(Store::Sqlite, &mock, |c| {
        c.ultimate.escalate_deadline_seconds = 1;
        c.bright_pattern.base_url = String::new();
    })
    .await;

    let slow = format!("pc-{}", Uuid::new_v4());
    let started = Instant::now();
    let (status, answer) = app
        .post("/webhooks/ultimate/converse", &ultimate("escalate", &slow, json!({})))
        .await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["code"], json!("gateway_timeout"));
    assert!(started.elapsed() < Duration::from_millis(2400));
    let (_, list) = (0, app.get(&format!("/v1/conversations?external_id={slow}")).await);
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    wait_until("the late answer recorded", || async {
        app.results(&id).await.len() == 1
    })
    .await;
    assert_eq!(
        app.results(&id).await,
        vec![("aivo_live_queue".to_string(), "ok".to_string())]
    );
    assert_eq!(app.conversation(&id).await["state"], json!("queued"));

    // Refused.
    mock.reset().await;
    Mock::given(method("POST"))
        .and(path("/aivo/queue/external"))
        .respond_with(ResponseTemplate::new(400).set_body_string("unknown group"))
        .mount(&mock)
        .await;
    let refused = format!("pc-{}", Uuid::new_v4());
    let (status, answer) = app
        .post(
            "/webhooks/ultimate/converse",
            &ultimate("escalate", &refused, json!({})),
        )
        .await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], json!("bad_gateway"));
    assert_eq!(
        answer["error"]["message"],
        json!("aivo_live refused the hand-over: HTTP 400: unknown group")
    );
    let list = app.get(&format!("/v1/conversations?external_id={refused}")).await;
    let c = &list["items"][0];
    assert_eq!(c["state"], json!("failed"));
    assert!(c["handoffs"][0]["failure"].as_str().unwrap().contains("400"), "{c}");

    // A route to a backend that is not configured, through the API's own command.
    let first = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate(
                "sendMessage",
                &format!("pc-{}", Uuid::new_v4()),
                json!({"type": "text", "text": "hi"}),
            ),
        )
        .await;
    let (status, answer) = app
        .post(
            &format!("/v1/conversations/{}/handoff", conv(&first)),
            &json!({"team": "support"}),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("not configured"));
    let c = app.conversation(&conv(&first)).await;
    assert_eq!(c["state"], json!("failed"));
}

/// A 500 is retried with backoff and delivered once; a 400 is not retried and shows on the handoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_permanent_ones_recorded() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::ZERO).await;
    Mock::given(method("POST"))
        .and(path("/ultimate/agent/converse/send-message-to-widget"))
        .respond_with(ResponseTemplate::new(500).set_body_string("busy"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/ultimate/agent/converse/send-message-to-widget"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/aivo/{room}/client/message")))
        .respond_with(ResponseTemplate::new(400).set_body_string("conversation closed"))
        .mount(&mock)
        .await;
    let app = spawn(Store::Sqlite, &mock, |_| {}).await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let esc = app
        .post_ok("/webhooks/ultimate/converse", &ultimate("escalate", &pcid, json!({})))
        .await;
    let id = conv(&esc);
    app.post_ok(
        "/webhooks/aivo-live",
        &aivo("attended", &room, Utc::now(), json!({"agent": {"name": "Tomas"}})),
    )
    .await;
    wait_until("the success result", || async { app.results(&id).await.len() == 2 }).await;
    let calls = widget_calls(&mock).await;
    let success = json!({"platformConversationId": pcid, "eventType": "escalationSuccess", "agent": "Tomas"});
    assert_eq!(
        calls,
        vec![success.clone(), success],
        "one failed attempt, one delivery"
    );
    assert_eq!(
        app.results(&id).await,
        vec![
            ("aivo_live_queue".to_string(), "ok".to_string()),
            ("widget_escalation_success".to_string(), "ok".to_string())
        ]
    );

    app.post_ok(
        "/webhooks/ultimate/converse",
        &ultimate("widgetMessage", &pcid, json!({"type": "text", "text": "hello?"})),
    )
    .await;
    wait_until("the refusal recorded", || async { app.results(&id).await.len() == 3 }).await;
    assert_eq!(
        received(&mock, &format!("/aivo/{room}/")).await.len(),
        1,
        "a 400 is not retried"
    );
    let events = app.events(&id).await;
    let result = events
        .iter()
        .rev()
        .find(|e| e["kind"] == json!("ledger.command_result"))
        .unwrap();
    assert_eq!(result["payload"]["outcome"], json!("failed"));
    assert_eq!(
        result["payload"]["detail"],
        json!("permanent HTTP 400: conversation closed")
    );
    let c = app.conversation(&id).await;
    assert_eq!(c["state"], json!("attended"), "a failed relay is not a failed handoff");
    assert_eq!(
        c["handoffs"][0]["failure"],
        json!("visitor_message failed: permanent HTTP 400: conversation closed")
    );
}

/// Transient failures until `max_attempts` run out are recorded as `gave_up`, and a dead backend for one
/// conversation does not delay another's commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_gives_up_without_delaying_other_conversations() {
    let mock = MockServer::start().await;
    let (dead_room, live_room) = (format!("dead-{}", Uuid::new_v4()), format!("live-{}", Uuid::new_v4()));
    mount_ok(&mock, "/ultimate/").await;
    Mock::given(method("POST"))
        .and(path(format!("/aivo/{dead_room}/client/message")))
        .respond_with(ResponseTemplate::new(503).set_delay(Duration::from_millis(300)))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/aivo/{live_room}/client/message")))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let app = spawn(Store::Sqlite, &mock, |c| {
        c.outbox.max_attempts = 3;
        c.outbox.initial_backoff_ms = 200;
    })
    .await;
    let mut ids = Vec::new();
    for room in [&dead_room, &live_room] {
        let pcid = format!("pc-{}", Uuid::new_v4());
        let first = app
            .post_ok(
                "/webhooks/ultimate/converse",
                &ultimate("sendMessage", &pcid, json!({"type": "text", "text": "hi"})),
            )
            .await;
        let id: Uuid = conv(&first).parse().unwrap();
        app.state
            .writer
            .append(vec![
                ledger::api_handoff(id, None, None, Utc::now()),
                ledger::queue_accepted(
                    id,
                    &ledger::QueueAccepted {
                        backend: "aivo_live".into(),
                        queue: Some("2179".into()),
                        live_id: room.clone(),
                        team: None,
                    },
                    handoff_ledger::model::StreamKey::new(handoff_ledger::model::Platform::AivoLive, room.clone()),
                    Utc::now(),
                ),
            ])
            .await
            .unwrap();
        ids.push((pcid, id.to_string()));
    }
    let started = Instant::now();
    for (pcid, _) in &ids {
        app.post_ok(
            "/webhooks/ultimate/converse",
            &ultimate("widgetMessage", pcid, json!({"text": "hello"})),
        )
        .await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "webhooks are not held by the dead backend"
    );
    wait_until("the live conversation's delivery", || async {
        app.results(&ids[1].1).await.len() == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.results(&ids[0].1).await, vec![], "still retrying the dead one");
    wait_until("giving up", || async { app.results(&ids[0].1).await.len() == 1 }).await;
    assert_eq!(received(&mock, &format!("/aivo/{dead_room}/")).await.len(), 3);
    let events = app.events(&ids[0].1).await;
    let result = events
        .iter()
        .find(|e| e["kind"] == json!("ledger.command_result"))
        .unwrap();
    assert_eq!(result["payload"]["outcome"], json!("gave_up"));
    assert_eq!(
        result["payload"]["detail"],
        json!("after 3 attempts: transient HTTP 503: ")
    );
}

/// A command recorded before a crash, never sent, is sent after the restart; an interrupted synchronous
/// escalation is recorded as failed rather than queueing a visitor the bot already gave an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_recorded_before_a_crash_are_sent_after_the_restart() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    Mock::given(method("POST"))
        .and(path(format!("/aivo/{room}/client/message")))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let store = FreshStore::create(Store::Sqlite).await;
    // The first instance: the commands are recorded through its writer, bypassing its outbox, as if
    // it had crashed right after recording them.
    let mut config = config_for(&mock);
    config.store.url = store.url.clone();
    let first = Application::build(config).await.expect("build");
    let conversation = Uuid::new_v4();
    let message = Command::VisitorMessage {
        text: "are you there?".into(),
        target: Some(LiveTarget {
            backend: Backend::AivoLive,
            live_id: room.clone(),
        }),
    };
    let escalation = Command::Queue {
        backend: Backend::AivoLive,
        team: None,
        groups: vec![2179],
        visitor_id: "pc-x".into(),
        attributes: Default::default(),
        notify_widget: None,
        synchronous: true,
    };
    let recorded = first
        .state()
        .writer
        .append(vec![
            ledger::command(
                conversation,
                ledger::COMMAND,
                &message.record("cmd-message"),
                Utc::now(),
            ),
            ledger::command(
                conversation,
                ledger::COMMAND,
                &escalation.record("cmd-escalate"),
                Utc::now(),
            ),
        ])
        .await
        .unwrap();
    let id = recorded[0].conversation_id.unwrap().to_string();
    let app = restart_having_sent_nothing(first, store, &mock).await;
    wait_until("the re-sent message", || async {
        received(&mock, "/aivo/").await.len() == 1
    })
    .await;
    let calls = received(&mock, "/aivo/").await;
    assert_eq!(calls[0].url.path(), format!("/aivo/{room}/client/message"));
    assert_eq!(
        body(&calls[0]),
        json!({"message": [{"action": "text", "value": "are you there?", "source": "user"}]})
    );
    wait_until("both results", || async { app.results(&id).await.len() == 2 }).await;
    let mut results = app.results(&id).await;
    results.sort();
    assert_eq!(
        results,
        vec![
            ("aivo_live_queue".to_string(), "failed".to_string()),
            ("visitor_message".to_string(), "ok".to_string()),
        ]
    );
    assert!(
        received(&mock, "/aivo/queue").await.is_empty(),
        "the interrupted escalation is not re-sent"
    );

    // A third start finds nothing pending.
    let store_url = app.store_url.clone();
    let again = Application::build({
        let mut c = config_for(&mock);
        c.store.url = store_url;
        c
    })
    .await
    .expect("build");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.received_requests().await.unwrap().len(), 1);
    drop(again);
}

/// The queue call of a synchronous escalation is the command committed with the escalation: the bot's
/// `escalate` sent again, and the API's handoff retried with its `Idempotency-Key`, are answered as the first
/// one was and queue nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_escalation_is_answered_as_the_first_and_queues_once() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::ZERO).await;
    let app = spawn(Store::Sqlite, &mock, |_| {}).await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let escalate = ultimate("escalate", &pcid, json!({"escalateTo": "sales", "messageId": "esc-1"}));
    let first = app.post_ok("/webhooks/ultimate/converse", &escalate).await;
    let id = conv(&first);
    assert_eq!(app.conversation(&id).await["state"], json!("queued"));
    let again = app.post_ok("/webhooks/ultimate/converse", &escalate).await;
    assert_eq!(again["duplicate"], json!(true));
    let handoff = |key: &'static str| {
        let client = app.client.clone();
        let url = format!("{}/v1/conversations/{id}/handoff", app.address);
        async move {
            let res = client
                .post(url)
                .header("idempotency-key", key)
                .json(&json!({"team": "sales"}))
                .send()
                .await
                .expect("send");
            (res.status().as_u16(), res.json::<Value>().await.expect("json"))
        }
    };
    let (status, answer) = handoff("h-1").await;
    assert_eq!(status, 200, "already with a live team: {answer}");
    let (status, answer) = handoff("h-1").await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(true)), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received(&mock, "/aivo/queue").await.len(), 1, "queued once");
    assert_eq!(app.commands(&id).await, vec!["aivo_live_queue"]);
}

/// The relays an event calls for commit with it, so none waits on a handler: here the instance stops right
/// after committing the deliveries of the race (an agent attended before the queue call returned, then the
/// link merged the room in) without sending anything. The next start tells the widget, once; redeliveries of
/// the attend and of the link relay nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_committed_with_its_trigger_is_sent_after_a_crash_and_only_once() {
    let mock = MockServer::start().await;
    mount_ok(&mock, "/ultimate/").await;
    let store = FreshStore::create(Store::Sqlite).await;
    let mut config = config_for(&mock);
    config.store.url = store.url.clone();
    let first = Application::build(config).await.expect("build");
    let pcid = format!("pc-{}", Uuid::new_v4());
    let room = format!("room-{}", Uuid::new_v4());
    // The deliveries as the webhooks append them (parsed, through the writer and its relay rules); the
    // instance never gets to send what they committed.
    let parsed = |parse: handoff_ledger::ingest::ParseFn, body: &Value| {
        let delivery = handoff_ledger::sources::Delivery {
            received_at: Utc::now(),
            ..Default::default()
        };
        parse(&body.to_string(), body, &delivery).expect("parses").events
    };
    let writer = first.state().writer.clone();
    let escalated = writer
        .append(parsed(
            handoff_ledger::sources::ultimate::parse,
            &ultimate("escalate", &pcid, json!({})),
        ))
        .await
        .unwrap();
    let id = escalated[0].conversation_id.unwrap();
    let queue = first
        .state()
        .store
        .events_after(escalated[0].relays[0] - 1, 1)
        .await
        .unwrap()
        .remove(0);
    let mut queue_result: ledger::CommandRecord = serde_json::from_value(queue.payload.clone()).unwrap();
    assert_eq!(queue_result.action, "aivo_live_queue");
    queue_result.outcome = Some("ok".into());
    let attended = aivo(
        "attended",
        &room,
        Utc::now(),
        json!({"agent": {"name": "Tomas", "groupId": 2179}}),
    );
    let early = writer
        .append(parsed(handoff_ledger::sources::aivo_live::parse, &attended))
        .await
        .unwrap();
    assert_ne!(
        early[0].conversation_id,
        Some(id),
        "the room is a conversation of its own"
    );
    assert!(early[0].relays.is_empty(), "no widget to tell yet");
    let link = || {
        let accepted = ledger::QueueAccepted {
            backend: "aivo_live".into(),
            queue: Some("2179".into()),
            live_id: room.clone(),
            team: None,
        };
        let live = handoff_ledger::model::StreamKey::new(handoff_ledger::model::Platform::AivoLive, room.clone());
        ledger::queue_accepted(id, &accepted, live, Utc::now())
    };
    // The queue call's result and its link, in one append (as the outbox records them).
    let linked = writer
        .append(vec![
            ledger::command(id, "ledger.command_result", &queue_result, Utc::now()),
            link(),
        ])
        .await
        .unwrap();
    assert_eq!(linked[1].relays.len(), 1, "the widget's update committed with the link");
    let app = restart_having_sent_nothing(first, store, &mock).await;
    let calls = wait_widget_calls(&mock, 1).await;
    assert_eq!(
        calls,
        vec![json!({"platformConversationId": pcid, "eventType": "escalationSuccess", "agent": "Tomas"})]
    );
    // The platform delivers the attend again, and the link is recorded again: duplicates, nothing relayed.
    let again = app.post_ok("/webhooks/aivo-live", &attended).await;
    assert_eq!(again["duplicate"], json!(true));
    let relinked = app.state.writer.append(vec![link()]).await.unwrap();
    assert!(relinked[0].duplicate && relinked[0].relays.is_empty(), "{relinked:?}");
    wait_until("both results", || async {
        app.results(&id.to_string()).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(widget_calls(&mock).await.len(), 1, "told once");
    assert_eq!(
        app.commands(&id.to_string()).await,
        vec!["aivo_live_queue", "widget_escalation_success"]
    );
    assert!(app.results(&id.to_string()).await.iter().all(|(_, o)| o == "ok"));
    assert!(
        received(&mock, "/aivo/").await.is_empty(),
        "the settled queue call is not sent again"
    );
}

/// `isTeamOnline` asks Bright Pattern for availability and answers false when it does not answer in 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_team_online_asks_the_routed_backend() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/bp/availability"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"chat": "available", "ewt": "5"})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/bp/availability"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"chat": "available"}))
                .set_delay(Duration::from_secs(5)),
        )
        .with_priority(2)
        .mount(&mock)
        .await;
    let app = spawn(Store::Sqlite, &mock, |_| {}).await;
    let ask = |team: &str| json!({"botId": "BOT", "data": {"eventType": "isTeamOnline", "teamId": team}});
    assert_eq!(
        app.post_ok("/webhooks/ultimate/converse", &ask("support")).await,
        json!({"isOnline": true})
    );
    let started = Instant::now();
    assert_eq!(
        app.post_ok("/webhooks/ultimate/converse", &ask("support")).await,
        json!({"isOnline": false})
    );
    assert!(started.elapsed() < Duration::from_millis(3000));
    let availability = received(&mock, "/bp/availability").await;
    assert_eq!(availability.len(), 2);
    bp_request_checks(&availability[0]);
    // Aivo has no availability call: the default route is online.
    assert_eq!(
        app.post_ok("/webhooks/ultimate/converse", &ask("sales")).await,
        json!({"isOnline": true})
    );
}

fn start_binary(config: &std::path::Path) -> std::process::Child {
    let config = config.to_string_lossy();
    start_service(&["--config", &config], &[])
}

/// The service process is killed (SIGKILL) while a recorded widget update is in flight; after the restart the
/// update is sent again (at least once) and its result recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_when_the_process_is_killed_is_sent_after_the_restart() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    mount_aivo_queue(&mock, &room, Duration::ZERO).await;
    Mock::given(method("POST"))
        .and(path("/ultimate/agent/converse/send-message-to-widget"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(1500)))
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("ledger.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
[store]
url = "sqlite://{db}"
[aivo_live]
base_url = "{uri}/aivo"
bot_token = "{AIVO_TOKEN}"
[ultimate]
api_url = "{uri}/ultimate"
api_key = "{ULTIMATE_KEY}"
bot_id = "{ULTIMATE_BOT}"
[bright_pattern]
base_url = ""
[routing]
default = {{ backend = "aivo_live", groups = [2179] }}
"#,
            db = dir.path().join("ledger.db").display(),
            uri = mock.uri(),
        ),
    )
    .expect("write config");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = start_binary(&config);
    wait_ready(&client, &base).await;

    let pcid = format!("pc-{}", Uuid::new_v4());
    let post = |path: &'static str, body: Value| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let res = client
                .post(format!("{base}{path}"))
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(res.status().as_u16(), 200);
            res.json::<Value>().await.expect("json")
        }
    };
    let esc = post("/webhooks/ultimate/converse", ultimate("escalate", &pcid, json!({}))).await;
    let id = conv(&esc);
    post(
        "/webhooks/aivo-live",
        aivo("attended", &room, Utc::now(), json!({"agent": {"name": "Tomas"}})),
    )
    .await;
    wait_until("the widget call to be in flight", || async {
        received(&mock, "/ultimate/").await.len() == 1
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let mut child = start_binary(&config);
    wait_ready(&client, &base).await;
    let results = || async {
        let events: Value = client
            .get(format!("{base}/v1/conversations/{id}/events"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        events["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["kind"] == json!("ledger.command_result"))
            .map(|e| (e["payload"]["action"].clone(), e["payload"]["outcome"].clone()))
            .collect::<Vec<_>>()
    };
    wait_until("the re-sent update's result", || async { results().await.len() == 2 }).await;
    assert_eq!(
        results().await,
        vec![
            (json!("aivo_live_queue"), json!("ok")),
            (json!("widget_escalation_success"), json!("ok"))
        ]
    );
    let calls = widget_calls(&mock).await;
    let success = json!({"platformConversationId": pcid, "eventType": "escalationSuccess", "agent": "Tomas"});
    assert_eq!(
        calls,
        vec![success.clone(), success],
        "sent before the kill and again after it"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Bright Pattern chats still open when the service stopped are polled again after a start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_resumes_after_a_restart_for_chats_still_open() {
    let mock = MockServer::start().await;
    let store = FreshStore::create(Store::Sqlite).await;
    let mut config = config_for(&mock);
    config.store.url = store.url.clone();
    config.bright_pattern.base_url = String::new();
    // An instance without Bright Pattern configured records a queued chat and polls nothing.
    let first = Application::build(config).await.expect("build");
    let conversation = Uuid::new_v4();
    let accepted = ledger::QueueAccepted {
        backend: "bright_pattern".into(),
        queue: Some("support".into()),
        live_id: "chat-9".into(),
        team: Some("support".into()),
    };
    let outcomes = first
        .state()
        .writer
        .append(vec![
            ledger::api_handoff(conversation, Some("support"), None, Utc::now()),
            ledger::queue_accepted(
                conversation,
                &accepted,
                handoff_ledger::model::StreamKey::new(handoff_ledger::model::Platform::BrightPattern, "chat-9"),
                Utc::now(),
            ),
        ])
        .await
        .unwrap();
    let id = outcomes[1].conversation_id.unwrap().to_string();
    drop(first);
    assert!(mock.received_requests().await.unwrap().is_empty());
    // What the agent wrote while we were down: after the queue call (its `chat_session_ended`, which carries
    // no time of its own, goes with it).
    let written = Utc::now().timestamp_millis().to_string();
    Mock::given(method("GET"))
        .and(path("/bp/chats/chat-9/events"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"events": [
            {"event": "chat_session_message", "party_id": "p-2", "msg_id": "m-9", "msg": "Still there?", "timestamp": written},
            {"event": "chat_session_ended"}
        ]})))
        .mount(&mock)
        .await;

    let app = spawn_on(store, &mock, |_| {}).await;
    wait_until("the chat polled and closed", || async {
        app.conversation(&id).await["state"] == json!("closed")
    })
    .await;
    let polls = received(&mock, "/bp/chats/chat-9/events").await;
    assert_eq!(polls.len(), 1, "the loop stopped on chat_session_ended");
    bp_request_checks(&polls[0]);
    let t = app.get(&format!("/v1/conversations/{id}/transcript")).await;
    assert_eq!(t["messages"][0]["text"], json!("Still there?"));
    wait_until("the loop to end", || async { !app.state.outbound.is_polling("chat-9") }).await;
}

/// An operator re-sends a queue call that was refused: the retry is a new command naming the first, it
/// is idempotent while pending, the hand-over happens, and a chain that succeeded cannot be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_is_retried_once_by_an_operator() {
    let mock = MockServer::start().await;
    let room = format!("room-{}", Uuid::new_v4());
    Mock::given(method("POST"))
        .and(path("/aivo/queue/external"))
        .respond_with(ResponseTemplate::new(400).set_body_string("unknown group"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    // The retry's call is slow, so that a second retry finds it pending.
    mount_aivo_queue(&mock, &room, Duration::from_millis(2000)).await;
    mount_ok(&mock, "/ultimate/").await;
    let app = spawn(Store::Sqlite, &mock, |_| {}).await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    let first = app
        .post_ok(
            "/webhooks/ultimate/converse",
            &ultimate("sendMessage", &pcid, json!({"type": "text", "text": "hi"})),
        )
        .await;
    let id = conv(&first);
    let (status, answer) = app.post(&format!("/v1/conversations/{id}/handoff"), &json!({})).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(
        app.results(&id).await,
        vec![("aivo_live_queue".to_string(), "failed".to_string())]
    );
    let original = app
        .events(&id)
        .await
        .into_iter()
        .find(|e| e["kind"] == json!("ledger.command"))
        .map(|e| e["payload"]["command_id"].as_str().unwrap().to_string())
        .expect("the queue command");

    let retry_path = format!("/v1/conversations/{id}/commands/{original}/retry");
    let (status, retry) = app.post(&retry_path, &json!({})).await;
    assert_eq!(status, 202, "{retry}");
    assert_eq!(retry["retry_of"], json!(original));
    assert_eq!(retry["action"], json!("aivo_live_queue"));
    assert_eq!(retry["duplicate"], json!(false));
    let retry_id = retry["command_id"].as_str().unwrap().to_string();
    assert_ne!(retry_id, original);
    // Asked again while the call is in flight: the same attempt, nothing new recorded.
    let (status, again) = app.post(&retry_path, &json!({})).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["command_id"], json!(retry_id));
    assert_eq!(again["duplicate"], json!(true));

    wait_until("the retried hand-over", || async {
        app.conversation(&id).await["state"] == json!("queued")
    })
    .await;
    assert_eq!(
        app.results(&id).await,
        vec![
            ("aivo_live_queue".to_string(), "failed".to_string()),
            ("aivo_live_queue".to_string(), "ok".to_string()),
        ]
    );
    let recorded: Vec<Value> = app
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["kind"] == json!("ledger.command"))
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(recorded.len(), 2, "one retry recorded: {recorded:?}");
    assert_eq!(recorded[1]["retry_of"], json!(original));
    assert_eq!(recorded[1]["command_id"], json!(retry_id));
    let queue_calls = received(&mock, "/aivo/queue/external").await;
    assert_eq!(queue_calls.len(), 2, "the refused call and its one retry");
    assert_eq!(body(&queue_calls[1]), body(&queue_calls[0]), "the same call re-sent");

    // Succeeded: nothing to retry, by either id of the chain.
    for command in [&original, &retry_id] {
        let (status, answer) = app
            .post(&format!("/v1/conversations/{id}/commands/{command}/retry"), &json!({}))
            .await;
        assert_eq!(status, 409, "{answer}");
        assert_eq!(answer["error"]["code"], json!("conflict"));
    }
    let (status, answer) = app
        .post(
            &format!("/v1/conversations/{id}/commands/no-such-command/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = app
        .post(
            &format!("/v1/conversations/{}/commands/{original}/retry", Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
}
