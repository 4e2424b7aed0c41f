//! Outbound clients against wiremock: exact method, path, query, headers and body of every call, and how each
//! kind of answer (2xx, 4xx, 5xx, slow, malformed) comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use handoff_ledger::config::{
    AivoLiveConfig, BrightPatternConfig, Config, OpeningHours, Route, RoutingConfig, UltimateConfig,
};
use handoff_ledger::outbound::clients::{
    AivoLiveClient, BackendError, Backends, BrightPatternClient, LiveBackend, PollOutcome, QueueRequest,
    UltimateWidgetClient, WidgetUpdate,
};
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

/// Matches one header's whole raw value; wiremock's `header` splits values on commas, which would accept a
/// Bright Pattern `Authorization` sent as two headers.
struct ExactHeader(&'static str, String);

impl Match for ExactHeader {
    fn matches(&self, request: &Request) -> bool {
        let values: Vec<_> = request.headers.get_all(self.0).iter().collect();
        values.len() == 1 && values[0].to_str().ok() == Some(self.1.as_str())
    }
}

/// Matches the whole query string.
struct ExactQuery(Option<&'static str>);

impl Match for ExactQuery {
    fn matches(&self, request: &Request) -> bool {
        request.url.query() == self.0
    }
}

fn conversation_id() -> Uuid {
    Uuid::parse_str("7f0c1a52-8a3e-4c1e-9a57-2b1f0d3c4e5f").unwrap()
}

fn queue_request(attributes: Value) -> QueueRequest {
    QueueRequest {
        conversation_id: conversation_id(),
        visitor_id: "pcid-42".into(),
        groups: vec![2179, 7],
        attributes: serde_json::from_value::<BTreeMap<String, Value>>(attributes).unwrap(),
        team: Some("support".into()),
    }
}

fn full_attributes() -> Value {
    json!({"FirstName": "Brian", "last_name": "Rodriguez", "Phone": "5492236638596", "Ticket": 2024, "email": null})
}

async fn only_request(server: &MockServer) -> Request {
    let mut requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "exactly one request expected");
    requests.remove(0)
}

fn body_of(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// Aivo Live

const AIVO_BASE: &str = "/api/v1/live-handler";

fn aivo_config(server: &MockServer) -> AivoLiveConfig {
    AivoLiveConfig {
        base_url: format!("{}{AIVO_BASE}", server.uri()),
        bot_id: 1000,
        bot_token: "7114636682f3c091557758286be4a94c".into(),
        webhook_token: Default::default(),
        close_path: String::new(),
        timeout_seconds: 1,
    }
}

fn aivo_queue_body() -> Value {
    json!({
        "botId": 1000,
        "groupsId": [2179, 7],
        "botToken": "7114636682f3c091557758286be4a94c",
        "protocolId": 28,
        "user": {
            // first 24 hex chars of sha256("pcid-42")
            "hash": handoff_ledger::outbound::clients::aivo_live::user_hash("pcid-42"),
            "firstname": "Brian",
            "lastname": "Rodriguez",
            "email": null,
            "phone": "5492236638596",
            "extra": {"Ticket": "2024"}
        },
        "status": "queued",
        "lastSender": "user"
    })
}

#[tokio::test]
async fn aivo_queue_posts_the_documented_body_and_returns_the_conversation_id() {
    let server = MockServer::start().await;
    let answer = json!({"conversationId": "e169f21f-6f7e-44cd-9bf5-dd6b51d8b24b", "customToken": "token",
        "messageQueueId": 0, "notAttended": 0});
    Mock::given(method("POST"))
        .and(path(format!("{AIVO_BASE}/queue/external")))
        .and(ExactQuery(None))
        .and(header("content-type", "application/json"))
        .and(body_json(aivo_queue_body()))
        .respond_with(ResponseTemplate::new(200).set_body_json(&answer))
        .expect(1)
        .mount(&server)
        .await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    assert_eq!(client.name(), "aivo_live");

    let result = client.queue(&queue_request(full_attributes())).await.unwrap();

    assert_eq!(result.live_id, "e169f21f-6f7e-44cd-9bf5-dd6b51d8b24b");
    assert_eq!(result.queue.as_deref(), Some("2179"));
    assert_eq!(result.raw, answer);
    let request = only_request(&server).await;
    assert_eq!(body_of(&request), aivo_queue_body());
    let hash = body_of(&request)["user"]["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 24);
    assert!(hash.chars().all(|c| c.is_ascii_alphanumeric()));
}

#[tokio::test]
async fn aivo_queue_sends_nulls_for_absent_contact_fields() {
    let server = MockServer::start().await;
    let mut expected = aivo_queue_body();
    expected["user"] = json!({"hash": handoff_ledger::outbound::clients::aivo_live::user_hash("pcid-42"),
        "firstname": null, "lastname": null, "email": null, "phone": null, "extra": {}});
    Mock::given(method("POST"))
        .and(path(format!("{AIVO_BASE}/queue/external")))
        .and(body_json(&expected))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"conversationId": "c-1"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    let result = client.queue(&queue_request(json!({}))).await.unwrap();
    assert_eq!(result.live_id, "c-1");
    assert_eq!(body_of(&only_request(&server).await), expected);
}

async fn aivo_queue_against(
    template: ResponseTemplate,
) -> Result<handoff_ledger::outbound::clients::QueueResult, BackendError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{AIVO_BASE}/queue/external")))
        .respond_with(template)
        .mount(&server)
        .await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    client.queue(&queue_request(full_attributes())).await
}

#[tokio::test]
async fn aivo_queue_failures_are_classified() {
    let e = aivo_queue_against(ResponseTemplate::new(500).set_body_string("boom"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        BackendError::Transient {
            status: 500,
            body: "boom".into()
        }
    );
    assert!(e.is_transient());

    let e = aivo_queue_against(ResponseTemplate::new(400).set_body_string(r#"{"error":"bad group"}"#))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        BackendError::Permanent {
            status: 400,
            body: r#"{"error":"bad group"}"#.into()
        }
    );
    assert!(!e.is_transient());

    let e = aivo_queue_against(ResponseTemplate::new(404)).await.unwrap_err();
    assert_eq!(
        e,
        BackendError::Permanent {
            status: 404,
            body: String::new()
        }
    );

    let e = aivo_queue_against(ResponseTemplate::new(429)).await.unwrap_err();
    assert!(matches!(e, BackendError::Transient { status: 429, .. }));

    let e = aivo_queue_against(ResponseTemplate::new(200).set_body_string("<html>ok</html>"))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Invalid(_)), "{e:?}");

    let e = aivo_queue_against(ResponseTemplate::new(200).set_body_json(json!({"customToken": "t"})))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Invalid(_)), "{e:?}");
}

#[tokio::test]
async fn an_answer_larger_than_the_cap_is_not_read() {
    let huge = "x".repeat(handoff_ledger::outbound::clients::DEFAULT_MAX_RESPONSE_BYTES + 1);
    let e = aivo_queue_against(ResponseTemplate::new(200).set_body_string(huge))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Invalid(m) if m.contains("larger than")),
        "{e:?}"
    );
}

/// A 200 answer of exactly `len` bytes that every client accepts: Aivo's queue answer, Bright Pattern's
/// availability, anything for Ultimate.
fn answer_of_len(len: usize) -> String {
    let (head, tail) = (r#"{"conversationId":"c-1","chat":"available","pad":""#, r#""}"#);
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

/// `outbox.max_response_bytes` reaches every client built from the configuration: an answer of the cap is
/// read, one byte more fails the call (unparsable) and is not read further.
#[tokio::test]
async fn the_configured_response_cap_applies_to_every_client() {
    const CAP: usize = 300;
    for (len, fits) in [(CAP, true), (CAP + 1, false), (64 * 1024, false)] {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(200).set_body_string(answer_of_len(len)))
            .mount(&server)
            .await;
        let mut config = config_with(&server);
        config.outbox.max_response_bytes = CAP;
        let backends = Backends::from_config(&config).unwrap();
        let outcomes: Vec<(&str, Result<(), BackendError>)> = vec![
            (
                "aivo_live",
                backends
                    .aivo
                    .as_ref()
                    .unwrap()
                    .queue(&queue_request(full_attributes()))
                    .await
                    .map(|_| ()),
            ),
            (
                "bright_pattern",
                backends
                    .bright_pattern
                    .as_ref()
                    .unwrap()
                    .is_available()
                    .await
                    .map(|_| ()),
            ),
            (
                "ultimate",
                backends
                    .widget
                    .as_ref()
                    .unwrap()
                    .send("pcid-42", &WidgetUpdate::AgentDisconnect { agent: None })
                    .await,
            ),
        ];
        for (client, outcome) in outcomes {
            if fits {
                assert!(outcome.is_ok(), "{client}, {len} bytes: {outcome:?}");
            } else {
                assert!(
                    matches!(&outcome, Err(BackendError::Invalid(m)) if m.contains("larger than 300 bytes")),
                    "{client}, {len} bytes: {outcome:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn dot_segments_from_a_peer_never_reach_the_platform() {
    let server = MockServer::start().await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    for bad in ["..", ".", ""] {
        let e = client.send_visitor_message(bad, "m-1", "hi").await.unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn aivo_slow_answer_is_a_timeout() {
    let started = Instant::now();
    let e = aivo_queue_against(
        ResponseTemplate::new(200)
            .set_body_json(json!({"conversationId": "late"}))
            .set_delay(Duration::from_secs(4)),
    )
    .await
    .unwrap_err();
    assert_eq!(e, BackendError::Timeout);
    assert!(e.is_transient());
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test]
async fn unreachable_host_is_a_transient_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = AivoLiveConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        ..AivoLiveConfig::default()
    };
    let e = AivoLiveClient::new(&config)
        .unwrap()
        .send_visitor_message("c-1", "m-1", "hi")
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Network(_)), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn aivo_visitor_message_goes_to_the_conversation() {
    let server = MockServer::start().await;
    let expected = json!({"message": [{"action": "text", "value": "Hola, ¿mi saldo?", "source": "user"}]});
    Mock::given(method("POST"))
        .and(path(format!(
            "{AIVO_BASE}/16d1e0f9-6243-4284-8a57-16460a265908/client/message"
        )))
        .and(header("content-type", "application/json"))
        .and(body_json(&expected))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    client
        .send_visitor_message("16d1e0f9-6243-4284-8a57-16460a265908", "m-1", "Hola, ¿mi saldo?")
        .await
        .unwrap();
    assert_eq!(body_of(&only_request(&server).await), expected);
}

#[tokio::test]
async fn aivo_visitor_message_failure_is_returned() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("down"))
        .mount(&server)
        .await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    let e = client.send_visitor_message("c-1", "m-1", "hi").await.unwrap_err();
    assert_eq!(
        e,
        BackendError::Transient {
            status: 503,
            body: "down".into()
        }
    );
}

#[tokio::test]
async fn aivo_end_without_close_path_sends_nothing() {
    let server = MockServer::start().await;
    let client = AivoLiveClient::new(&aivo_config(&server)).unwrap();
    client.end("c-1", "m-1").await.unwrap();
    assert_eq!(client.is_available().await, Ok(true));
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn aivo_end_posts_the_configured_close_path() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{AIVO_BASE}/conversations/c-1/close")))
        .and(ExactQuery(None))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let config = AivoLiveConfig {
        close_path: "/conversations/{conversationId}/close".into(),
        ..aivo_config(&server)
    };
    AivoLiveClient::new(&config).unwrap().end("c-1", "m-1").await.unwrap();
    assert_eq!(
        only_request(&server).await.url.path(),
        "/api/v1/live-handler/conversations/c-1/close"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Bright Pattern

const BP_BASE: &str = "/clientweb/api/v1";
const BP_AUTH: &str = r#"MOBILE-API-140-327-PLAIN appId="app-1", clientId="client-1""#;

fn bp_config(server: &MockServer) -> BrightPatternConfig {
    BrightPatternConfig {
        base_url: format!("{}{BP_BASE}", server.uri()),
        tenant_url: "tenant.example.com".into(),
        app_id: "app-1".into(),
        client_id: "client-1".into(),
        webhook_token: Default::default(),
        timeout_seconds: 1,
        poll_timeout_seconds: 2,
    }
}

/// A mock for one Bright Pattern call with every header and the query the API requires.
fn bp_mock(verb: &str, route: &str) -> wiremock::MockBuilder {
    Mock::given(method(verb))
        .and(path(format!("{BP_BASE}{route}")))
        .and(query_param("tenantUrl", "tenant.example.com"))
        .and(ExactQuery(Some("tenantUrl=tenant.example.com")))
        .and(ExactHeader("authorization", BP_AUTH.into()))
        .and(ExactHeader("content-type", "application/json; charset=UTF-8".into()))
        .and(ExactHeader("cache-control", "no-cache".into()))
}

fn bp_client(server: &MockServer) -> BrightPatternClient {
    BrightPatternClient::new(&bp_config(server)).unwrap()
}

#[tokio::test]
async fn bp_availability_reads_the_chat_state() {
    let server = MockServer::start().await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"chat": "available", "ewt": "12"})))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"chat": "notAvailable", "ewt": "0"})))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"chat\":"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(500).set_body_string("err"))
        .expect(1)
        .mount(&server)
        .await;
    let client = bp_client(&server);
    assert_eq!(client.name(), "bright_pattern");
    assert_eq!(client.is_available().await, Ok(true));
    assert_eq!(client.is_available().await, Ok(false));
    assert!(matches!(client.is_available().await, Err(BackendError::Invalid(_))));
    assert_eq!(
        client.is_available().await,
        Err(BackendError::Transient {
            status: 500,
            body: "err".into()
        })
    );
    for request in server.received_requests().await.unwrap() {
        assert!(request.body.is_empty());
        assert_eq!(request.url.query(), Some("tenantUrl=tenant.example.com"));
    }
}

#[tokio::test]
async fn bp_queue_requests_a_chat_with_name_phone_and_parameters() {
    let server = MockServer::start().await;
    let expected = json!({
        "from": "Brian Rodriguez",
        "phone_number": "5492236638596",
        "parameters": {
            "FirstName": "Brian", "last_name": "Rodriguez", "Phone": "5492236638596", "Ticket": "2024",
            "conversation_id": "7f0c1a52-8a3e-4c1e-9a57-2b1f0d3c4e5f"
        }
    });
    let answer = json!({"chat_id": "chat-9", "state": "queued", "ewt": "30", "is_new_chat": true});
    bp_mock("POST", "/chats")
        .and(body_json(&expected))
        .respond_with(ResponseTemplate::new(200).set_body_json(&answer))
        .expect(1)
        .mount(&server)
        .await;
    let result = bp_client(&server)
        .queue(&queue_request(full_attributes()))
        .await
        .unwrap();
    assert_eq!(result.live_id, "chat-9");
    assert_eq!(result.queue.as_deref(), Some("support"));
    assert_eq!(result.raw, answer);
    assert_eq!(body_of(&only_request(&server).await), expected);
}

#[tokio::test]
async fn bp_queue_without_contact_uses_the_visitor_id_and_omits_the_phone() {
    let server = MockServer::start().await;
    let expected = json!({
        "from": "pcid-42",
        "parameters": {"plan": "gold", "conversation_id": "7f0c1a52-8a3e-4c1e-9a57-2b1f0d3c4e5f"}
    });
    bp_mock("POST", "/chats")
        .and(body_json(&expected))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"chat_id": "chat-1", "state": "queued"})))
        .expect(1)
        .mount(&server)
        .await;
    let result = bp_client(&server)
        .queue(&queue_request(json!({"plan": "gold"})))
        .await
        .unwrap();
    assert_eq!(result.live_id, "chat-1");
    let body = body_of(&only_request(&server).await);
    assert!(body.get("phone_number").is_none());
    assert_eq!(body, expected);
}

#[tokio::test]
async fn bp_queue_failures_are_classified() {
    let server = MockServer::start().await;
    let error = r#"{"error_code":1001,"error_message":"invalid tenant"}"#;
    bp_mock("POST", "/chats")
        .respond_with(ResponseTemplate::new(400).set_body_string(error))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    bp_mock("POST", "/chats")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"state": "failed"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    bp_mock("POST", "/chats")
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(4)))
        .mount(&server)
        .await;
    let client = bp_client(&server);
    let req = queue_request(json!({}));
    assert_eq!(
        client.queue(&req).await,
        Err(BackendError::Permanent {
            status: 400,
            body: error.into()
        })
    );
    assert!(matches!(client.queue(&req).await, Err(BackendError::Invalid(_))));
    assert_eq!(client.queue(&req).await, Err(BackendError::Timeout));
}

#[tokio::test]
async fn bp_visitor_message_and_end_send_client_events() {
    let server = MockServer::start().await;
    let message = json!({"events": [{"event": "chat_session_message", "msg_id": "m-7", "msg": "hello"}]});
    let end = json!({"events": [{"event": "chat_session_end"}]});
    bp_mock("POST", "/chats/chat-9/events")
        .and(body_json(&message))
        .respond_with(ResponseTemplate::new(200).set_body_string(""))
        .expect(1)
        .mount(&server)
        .await;
    bp_mock("POST", "/chats/chat-9/events")
        .and(body_json(&end))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"events": []})))
        .expect(1)
        .mount(&server)
        .await;
    let client = bp_client(&server);
    client.send_visitor_message("chat-9", "m-7", "hello").await.unwrap();
    client.end("chat-9", "m-8").await.unwrap();
    let bodies: Vec<Value> = server.received_requests().await.unwrap().iter().map(body_of).collect();
    assert_eq!(bodies, vec![message, end]);
}

#[tokio::test]
async fn bp_send_returns_server_events_carried_by_the_answer() {
    let server = MockServer::start().await;
    let answer = r#"{"events":[{"event":"chat_session_status","state":"connected"}]}"#;
    bp_mock("POST", "/chats/chat-9/events")
        .and(body_json(
            json!({"events": [{"event": "chat_session_message", "msg_id": "m-1", "msg": "hi"}]}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(answer, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let got = bp_client(&server).send_message("chat-9", "m-1", "hi").await.unwrap();
    assert_eq!(got.as_deref(), Some(answer));
}

#[tokio::test]
async fn bp_send_to_a_gone_chat_is_permanent() {
    let server = MockServer::start().await;
    let gone = r#"{"error_code":5005,"error_message":"chat session not found"}"#;
    bp_mock("POST", "/chats/old/events")
        .respond_with(ResponseTemplate::new(404).set_body_string(gone))
        .expect(1)
        .mount(&server)
        .await;
    let e = bp_client(&server).end_chat("old").await.unwrap_err();
    assert_eq!(
        e,
        BackendError::Permanent {
            status: 404,
            body: gone.into()
        }
    );
}

async fn bp_poll_against(template: ResponseTemplate) -> Result<PollOutcome, BackendError> {
    let server = MockServer::start().await;
    bp_mock("GET", "/chats/chat-9/events")
        .respond_with(template)
        .expect(1)
        .mount(&server)
        .await;
    let outcome = bp_client(&server).poll_events("chat-9").await;
    assert!(only_request(&server).await.body.is_empty());
    outcome
}

#[tokio::test]
async fn bp_poll_returns_the_events_body_byte_exact() {
    // Odd spacing, key order and escapes must survive: the body is appended to the log as received.
    let body = "{ \"events\" : [ {\"msg\":\"caf\\u00e9 \u{1F600}\", \"event\":\"chat_session_message\",\
                \"party_id\":\"p1\",\"msg_id\":\"x1\",\"timestamp\":1717400000123} ] }\n";
    let outcome = bp_poll_against(ResponseTemplate::new(200).set_body_raw(body, "application/json")).await;
    assert_eq!(outcome, Ok(PollOutcome::Events(body.to_owned())));
}

#[tokio::test]
async fn bp_poll_error_codes_map_to_outcomes() {
    let err = |code: i64, message: &str| json!({"error_code": code, "error_message": message});
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(200).set_body_json(err(5511, "no events"))).await,
        Ok(PollOutcome::NoEvents)
    );
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(200).set_body_json(json!({"events": []}))).await,
        Ok(PollOutcome::NoEvents)
    );
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(400).set_body_json(err(5005, "chat session not found"))).await,
        Ok(PollOutcome::ChatGone)
    );
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(404)).await,
        Ok(PollOutcome::ChatGone)
    );
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(400).set_body_json(err(5509, "concurrent poll"))).await,
        Ok(PollOutcome::Busy)
    );
    assert_eq!(bp_poll_against(ResponseTemplate::new(429)).await, Ok(PollOutcome::Busy));
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(502).set_body_string("bad gateway")).await,
        Err(BackendError::Transient {
            status: 502,
            body: "bad gateway".into()
        })
    );
    assert_eq!(
        bp_poll_against(ResponseTemplate::new(401).set_body_string("no")).await,
        Err(BackendError::Permanent {
            status: 401,
            body: "no".into()
        })
    );
    assert!(matches!(
        bp_poll_against(ResponseTemplate::new(200).set_body_string("not json")).await,
        Err(BackendError::Invalid(_))
    ));
}

#[tokio::test]
async fn bp_poll_uses_the_long_poll_timeout() {
    // The poll may be held longer than an ordinary call (1 s) but not past poll_timeout_seconds (2 s).
    let held = bp_poll_against(
        ResponseTemplate::new(200)
            .set_body_json(json!({"events": [{"event": "chat_session_ended"}]}))
            .set_delay(Duration::from_millis(1300)),
    )
    .await;
    assert!(matches!(held, Ok(PollOutcome::Events(_))), "{held:?}");
    let stuck = bp_poll_against(ResponseTemplate::new(200).set_delay(Duration::from_secs(5))).await;
    assert_eq!(stuck, Err(BackendError::Timeout));
}

// ---------------------------------------------------------------------------------------------------------------
// Ultimate widget API

fn ultimate_config(server: &MockServer) -> UltimateConfig {
    UltimateConfig {
        api_url: server.uri(),
        api_key: "key-123".into(),
        bot_id: "bot-7".into(),
        timeout_seconds: 1,
        ..UltimateConfig::default()
    }
}

fn ultimate_mock(route: &str, body: &Value) -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path(route.to_owned()))
        .and(ExactQuery(None))
        .and(ExactHeader("authorization", "key-123".into()))
        .and(ExactHeader("botid", "bot-7".into()))
        .and(ExactHeader("content-type", "application/json".into()))
        .and(body_json(body))
}

#[tokio::test]
async fn widget_updates_are_sent_with_their_event_types_and_string_values() {
    let cases = vec![
        (
            WidgetUpdate::QueueUpdate {
                queue_position: Some(3),
                waiting_minutes: Some(12),
            },
            json!({"platformConversationId": "pcid-42", "eventType": "escalationQueueUpdate",
                   "queuePosition": "3", "waitingTime": "12"}),
        ),
        (
            WidgetUpdate::Success { agent: "Ana".into() },
            json!({"platformConversationId": "pcid-42", "eventType": "escalationSuccess", "agent": "Ana"}),
        ),
        (
            WidgetUpdate::Message {
                agent: Some("Ana".into()),
                text: "¿En qué puedo ayudarte?".into(),
            },
            json!({"platformConversationId": "pcid-42", "eventType": "message", "agent": "Ana",
                   "text": "¿En qué puedo ayudarte?"}),
        ),
        (
            WidgetUpdate::Failed {
                text: Some("No agents".into()),
            },
            json!({"platformConversationId": "pcid-42", "eventType": "escalationFailed", "text": "No agents"}),
        ),
        (
            WidgetUpdate::AgentDisconnect { agent: None },
            json!({"platformConversationId": "pcid-42", "eventType": "agentDisconnect"}),
        ),
    ];
    let server = MockServer::start().await;
    for (_, body) in &cases {
        ultimate_mock("/agent/converse/send-message-to-widget", body)
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
    }
    let client = UltimateWidgetClient::new(&ultimate_config(&server)).unwrap();
    for (update, _) in &cases {
        client.send("pcid-42", update).await.unwrap();
    }
    let bodies: Vec<Value> = server.received_requests().await.unwrap().iter().map(body_of).collect();
    let expected: Vec<Value> = cases.into_iter().map(|(_, body)| body).collect();
    assert_eq!(bodies, expected);
}

#[tokio::test]
async fn visitor_text_goes_to_the_bot() {
    let server = MockServer::start().await;
    let body = json!({"platformConversationId": "pcid-42", "eventType": "message", "text": "back to the bot"});
    ultimate_mock("/converse/chat", &body)
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let end = json!({"platformConversationId": "pcid-42", "eventType": "endSession"});
    ultimate_mock("/converse/chat", &end)
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = UltimateWidgetClient::new(&ultimate_config(&server)).unwrap();
    client
        .send_to_bot("pcid-42", "message", Some("back to the bot"))
        .await
        .unwrap();
    client.send_to_bot("pcid-42", "endSession", None).await.unwrap();
    let bodies: Vec<Value> = server.received_requests().await.unwrap().iter().map(body_of).collect();
    assert_eq!(bodies, vec![body, end]);
}

#[tokio::test]
async fn widget_failures_are_classified() {
    let server = MockServer::start().await;
    let update = WidgetUpdate::Success { agent: "Ana".into() };
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_string("bad key"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(4)))
        .mount(&server)
        .await;
    let client = UltimateWidgetClient::new(&ultimate_config(&server)).unwrap();
    assert_eq!(
        client.send("p", &update).await,
        Err(BackendError::Permanent {
            status: 401,
            body: "bad key".into()
        })
    );
    assert_eq!(
        client.send("p", &update).await,
        Err(BackendError::Transient {
            status: 500,
            body: String::new()
        })
    );
    assert_eq!(client.send("p", &update).await, Err(BackendError::Timeout));
}

// ---------------------------------------------------------------------------------------------------------------
// Backends: construction, routing, team_online

fn route(backend: &str, hours: Option<OpeningHours>) -> Route {
    Route {
        backend: backend.parse().expect("a backend name"),
        groups: vec![2179],
        hours,
    }
}

fn weekdays_9_to_17() -> OpeningHours {
    let days = ["mon", "tue", "wed", "thu", "fri"]
        .iter()
        .map(|d| (d.to_string(), vec!["09:00-17:00".to_string()]))
        .collect();
    OpeningHours {
        timezone: "Europe/Madrid".into(),
        days,
    }
}

fn config_with(server: &MockServer) -> Config {
    Config {
        aivo_live: aivo_config(server),
        bright_pattern: bp_config(server),
        ultimate: ultimate_config(server),
        ..Config::default()
    }
}

#[tokio::test]
async fn backends_are_built_only_for_configured_base_urls_and_credentials() {
    // The shipped defaults (public base URLs, no credentials) turn every outbound client off.
    let defaults = Backends::from_config(&Config::default()).unwrap();
    assert!(defaults.aivo.is_none() && defaults.bright_pattern.is_none() && defaults.widget.is_none());

    let mut config = Config::default();
    config.aivo_live.bot_token = "token".into();
    config.bright_pattern.base_url = String::new();
    config.ultimate.api_url = String::new();
    config.ultimate.api_key = "key".into();
    let backends = Backends::from_config(&config).unwrap();
    assert_eq!(backends.aivo.as_ref().map(|b| b.name()), Some("aivo_live"));
    assert!(backends.bright_pattern.is_none());
    assert!(backends.widget.is_none());
    assert_eq!(
        backends.for_route(&route("aivo_live", None)).map(|b| b.name()),
        Some("aivo_live")
    );
    assert!(backends.for_route(&route("bright_pattern", None)).is_none());
    // A name that is no live backend cannot make a route: the configuration refuses it when it loads.
    assert!("vcc".parse::<handoff_ledger::model::Backend>().is_err());

    let server = MockServer::start().await;
    let all = Backends::from_config(&config_with(&server)).unwrap();
    assert_eq!(
        all.for_route(&route("bright_pattern", None)).map(|b| b.name()),
        Some("bright_pattern")
    );
    assert!(all.widget.is_some());
    config.aivo_live.base_url = " ".into();
    assert!(Backends::from_config(&config).unwrap().aivo.is_none());
}

#[tokio::test]
async fn team_online_asks_the_routed_backend() {
    let server = MockServer::start().await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"chat": "available"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"chat": "notAvailable"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    bp_mock("GET", "/availability")
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let backends = Backends::from_config(&config_with(&server)).unwrap();
    let mut routing = RoutingConfig::default();
    routing.teams.insert("support".into(), route("bright_pattern", None));
    let now = Utc::now();
    assert!(backends.team_online(&routing, Some("support"), now).await);
    assert!(!backends.team_online(&routing, Some("support"), now).await);
    assert!(!backends.team_online(&routing, Some("support"), now).await);
    // No default route: an unknown team is offline without any call.
    assert!(!backends.team_online(&routing, Some("sales"), now).await);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn team_online_follows_opening_hours_and_the_default_route() {
    let server = MockServer::start().await;
    let backends = Backends::from_config(&config_with(&server)).unwrap();
    let routing = RoutingConfig {
        default: Some(route("aivo_live", Some(weekdays_9_to_17()))),
        teams: BTreeMap::from([
            ("night".to_string(), route("aivo_live", None)),
            ("nowhere".to_string(), route("bright_pattern", None)),
            (
                "broken".to_string(),
                route(
                    "aivo_live",
                    Some(OpeningHours {
                        timezone: "Mars/Olympus".into(),
                        days: BTreeMap::new(),
                    }),
                ),
            ),
        ]),
    };
    // Monday 2024-06-03 10:00 UTC is 12:00 in Madrid; 18:00 UTC is 20:00; Saturday is closed.
    let monday_noon = Utc.with_ymd_and_hms(2024, 6, 3, 10, 0, 0).unwrap();
    let monday_evening = Utc.with_ymd_and_hms(2024, 6, 3, 18, 0, 0).unwrap();
    let saturday = Utc.with_ymd_and_hms(2024, 6, 8, 10, 0, 0).unwrap();
    assert!(backends.team_online(&routing, None, monday_noon).await);
    assert!(backends.team_online(&routing, Some("unknown-team"), monday_noon).await);
    assert!(!backends.team_online(&routing, None, monday_evening).await);
    assert!(!backends.team_online(&routing, None, saturday).await);
    assert!(backends.team_online(&routing, Some("night"), saturday).await);
    // A route to a backend this instance has no client for is offline.
    let without_bright_pattern = Backends {
        bright_pattern: None,
        ..backends.clone()
    };
    assert!(
        !without_bright_pattern
            .team_online(&routing, Some("nowhere"), monday_noon)
            .await
    );
    assert!(!backends.team_online(&routing, Some("broken"), monday_noon).await);
    // Aivo has no availability call: none of this touched the network.
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn team_online_is_false_within_the_deadline_when_the_backend_never_answers() {
    let server = MockServer::start().await;
    bp_mock("GET", "/availability")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"chat": "available"}))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&server)
        .await;
    let mut config = config_with(&server);
    // The client's own timeout is longer than the deadline: the 2 s deadline must cut the wait.
    config.bright_pattern.timeout_seconds = 20;
    let backends = Backends::from_config(&config).unwrap();
    let routing = RoutingConfig {
        default: Some(route("bright_pattern", None)),
        teams: BTreeMap::new(),
    };
    let started = Instant::now();
    assert!(!backends.team_online(&routing, Some("support"), Utc::now()).await);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
}

/// A backend stub for routing tests that records how often it was asked.
struct Fixed(bool, std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl LiveBackend for Fixed {
    fn name(&self) -> &'static str {
        "bright_pattern"
    }
    async fn queue(&self, _req: &QueueRequest) -> Result<handoff_ledger::outbound::clients::QueueResult, BackendError> {
        Err(BackendError::Invalid("not used".into()))
    }
    async fn send_visitor_message(&self, _: &str, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn end(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn is_available(&self) -> Result<bool, BackendError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.0)
    }
}

#[tokio::test]
async fn closed_hours_skip_the_availability_call() {
    let stub = Arc::new(Fixed(true, Default::default()));
    let backends = Backends {
        bright_pattern: Some(stub.clone()),
        ..Backends::default()
    };
    let routing = RoutingConfig {
        default: Some(route("bright_pattern", Some(weekdays_9_to_17()))),
        teams: BTreeMap::new(),
    };
    let sunday = Utc.with_ymd_and_hms(2024, 6, 9, 10, 0, 0).unwrap();
    let monday = Utc.with_ymd_and_hms(2024, 6, 3, 10, 0, 0).unwrap();
    assert!(!backends.team_online(&routing, None, sunday).await);
    assert_eq!(stub.1.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(backends.team_online(&routing, None, monday).await);
    assert_eq!(stub.1.load(std::sync::atomic::Ordering::SeqCst), 1);
}
