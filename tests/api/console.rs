//! The printable transcript and the support console, checked the way a person uses them: the console in
//! a real headless Chromium, the printable page as bytes a browser would receive.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use std::collections::BTreeMap;

use handoff_ledger::auth::key::new_key;
use handoff_ledger::auth::Scope;
use handoff_ledger::model::{NewQuarantine, Platform, StreamKey};
use handoff_ledger::sources::{ledger, Delivery};

use crate::browser::Browser;
use crate::helpers::{aivo, fixture, live_platforms, spawn_app_with, ultimate, Backend, TestApp};

/// Records an Ultimate webhook body as having arrived at `at`; its conversation.
async fn bot_said(app: &TestApp, at: DateTime<Utc>, body: Value) -> Uuid {
    let raw = body.to_string();
    let delivery = Delivery {
        received_at: at,
        ..Delivery::default()
    };
    let parsed = handoff_ledger::sources::ultimate::parse(&raw, &body, &delivery).expect("an Ultimate body");
    let outcomes = app.state.writer.append(parsed.events).await.expect("appended");
    outcomes[0].conversation_id.expect("a conversation")
}

async fn post_ok(app: &TestApp, path: &str, body: &Value) -> Value {
    let (status, answer) = app.post_json(path, body).await;
    assert!(status == 200 || status == 202, "{path} {body}: {status} {answer}");
    answer
}

/// What a support lead finds in the morning: a bot conversation handed to Aivo Live (buttons, a carousel, an
/// agent, a transfer), a VCC chat, and a refused delivery in the quarantine. Returns the handoff's id.
struct SupportDay {
    app: TestApp,
    handoff_id: String,
    vcc_id: String,
    /// A quarantined delivery that today's parsers accept (refused by an earlier version).
    redrivable: i64,
    _live: wiremock::MockServer,
}

async fn support_day() -> SupportDay {
    let room = format!("room-{}", Uuid::new_v4());
    let live = live_platforms(&room).await;
    let uri = live.uri();
    let app = spawn_app_with(Backend::Sqlite, move |c| {
        c.aivo_live.base_url = uri.clone();
        c.aivo_live.bot_token = "token".into();
        c.ultimate.api_url = uri;
        c.ultimate.api_key = "key".into();
        c.sla.queues.insert("2179".into(), 30);
        c.routing.default = Some(handoff_ledger::config::Route {
            backend: handoff_ledger::model::Backend::AivoLive,
            groups: vec![2179],
            hours: None,
        });
    })
    .await;
    let pcid = format!("pc-{}", Uuid::new_v4());
    // The day is in the past: an event cannot have happened after it reached us, so the bot's part (its
    // events carry no time of their own: they are stamped when they arrive) is recorded as having
    // arrived five minutes ago, and the queue call's answer with it; Aivo's webhooks below carry their
    // own times, minutes old.
    let day = Utc::now() - Duration::seconds(300);
    let first = bot_said(
        &app,
        day,
        ultimate(
            "sendMessage",
            &pcid,
            json!({"messageId": "m1", "type": "text", "text": "Hi! I'm the billing assistant. How can I help?"}),
        ),
    )
    .await;
    let handoff_id = first.to_string();
    bot_said(
        &app,
        day + Duration::seconds(1),
        ultimate("widgetMessage", &pcid, json!({"text": "My invoice is wrong <again>"})),
    )
    .await;
    bot_said(
        &app,
        day + Duration::seconds(2),
        ultimate(
            "sendMessage",
            &pcid,
            json!({"messageId": "m2", "type": "text", "text": "Which plan are you on?",
                   "carouselCards": [
                       {"title": "Basic", "description": "Up to 3 seats", "imageUrl": "https://img.example/basic.png",
                        "buttons": [{"type": "button", "text": "I have Basic"}]},
                       {"title": "Business", "description": "Unlimited seats", "imageUrl": "https://img.example/business.png",
                        "buttons": [{"type": "button", "text": "I have Business"}]}]}),
        ),
    )
    .await;
    bot_said(
        &app,
        day + Duration::seconds(3),
        ultimate(
            "sendMessage",
            &pcid,
            json!({"messageId": "m3", "type": "text", "text": "Shall I get you a person?",
                   "buttons": [{"type": "button", "text": "Talk to a human"}, {"type": "link", "text": "Billing FAQ", "url": "https://help.example/billing"}]}),
        ),
    )
    .await;
    bot_said(&app, day + Duration::seconds(4), ultimate("escalate", &pcid, json!({}))).await;
    let accepted = ledger::QueueAccepted {
        backend: "aivo_live".into(),
        queue: Some("2179".into()),
        live_id: room.clone(),
        team: None,
    };
    app.state
        .writer
        .append(vec![ledger::queue_accepted(
            first,
            &accepted,
            StreamKey::new(Platform::AivoLive, room.clone()),
            day + Duration::seconds(5),
        )])
        .await
        .expect("queue call recorded");
    let (_, queued) = app.get_json(&format!("/v1/conversations/{handoff_id}")).await;
    let t0 = DateTime::parse_from_rfc3339(queued["queued_at"].as_str().expect("queued"))
        .expect("time")
        .with_timezone(&Utc);
    let tomas = json!({"name": "Tomas", "nickname": "Tomas NICKK", "groupId": 2179});
    for body in [
        aivo("attended", &room, t0 + Duration::seconds(12), json!({"agent": tomas})),
        aivo(
            "messageToClient",
            &room,
            t0 + Duration::seconds(16),
            json!({"action": "text", "value": "Hi, Tomas here. Let me look at <b>your</b> invoice.", "source": "agent", "agent": tomas}),
        ),
        aivo(
            "messageToClient",
            &room,
            t0 + Duration::seconds(70),
            json!({"action": "text", "value": "Fixed: the credit note is on its way.", "source": "agent", "agent": tomas}),
        ),
        aivo(
            "close",
            &room,
            t0 + Duration::seconds(95),
            json!({"reason": "agent", "agent": {}}),
        ),
    ] {
        post_ok(&app, "/webhooks/aivo-live", &body).await;
    }
    let vcc = post_ok(
        &app,
        "/webhooks/vcc/chat",
        &serde_json::from_str(&fixture("vcc_chat.json")).expect("fixture"),
    )
    .await;
    let vcc_id = vcc["conversation_id"].as_str().expect("id").to_string();
    let (status, _) = app.post_raw("/webhooks/aivo-live", "{\"name\": \"attended\"").await;
    assert_eq!(status, 400);
    let redrivable = app
        .state
        .writer
        .quarantine(NewQuarantine {
            received_at: Utc::now(),
            path: "/webhooks/aivo-live".into(),
            platform: Some(Platform::AivoLive),
            error_code: "invalid_payload".into(),
            error_message: "refused by an earlier version".into(),
            status: 422,
            headers: BTreeMap::from([("content-type".to_string(), "application/json".to_string())]),
            body: fixture("aivo_attended.json").into_bytes(),
        })
        .await
        .expect("quarantine");
    SupportDay {
        app,
        handoff_id,
        vcc_id,
        redrivable,
        _live: live,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printable_transcript_is_one_self_contained_escaped_page() {
    let day = support_day().await;
    let app = &day.app;
    let res = app
        .client
        .get(app.url(&format!("/v1/conversations/{}/transcript?format=html", day.handoff_id)))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap_or_default().to_string();
    assert_eq!(ct, "text/html; charset=utf-8");
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = res.text().await.expect("body");
    // Self-contained: no script, no stylesheet link, nothing loaded from anywhere.
    for forbidden in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!page.contains(forbidden), "the page contains `{forbidden}`");
    }
    assert!(page.contains("@media print"), "a print stylesheet");
    // The header: platforms, queue, agents, timers, SLA status, disposition.
    for expected in [
        "ultimate",
        "aivo_live",
        "2179",
        "Tomas",
        "“Tomas NICKK”",
        "12 s",
        "4 s",
        "1 min 23 s",
        "badge sla-met",
        "badge disp-completed",
    ] {
        assert!(page.contains(expected), "the header lacks `{expected}`");
    }
    // Lines with time, party and author; what people typed is escaped.
    assert!(page.contains("My invoice is wrong &lt;again&gt;"));
    assert!(page.contains("Let me look at &lt;b&gt;your&lt;/b&gt; invoice."));
    assert!(!page.contains("<b>your</b>"));
    assert!(page.contains("<span class=\"party-tag\">agent</span>"));
    assert!(page.contains("<td class=\"author\">Tomas</td>"));
    // Bot buttons and carousel cards are shown as such.
    assert!(page.contains("<li class=\"button\" data-type=\"button\">Talk to a human"));
    assert!(page.contains("href=\"https://help.example/billing\""));
    assert!(page.contains("<div class=\"card-title\">Business</div>"));

    // An unknown format is still a JSON error naming the parameter and the choices.
    let (status, body) = app
        .get_json(&format!("/v1/conversations/{}/transcript?format=pdf", day.handoff_id))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["parameter"], json!("format"));
    assert!(
        body["error"]["message"].as_str().unwrap_or_default().contains("html"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_path_does_not_serve_is_405_with_the_json_error() {
    let day = support_day().await;
    let app = &day.app;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/webhooks/aivo-live".to_string(), "POST"),
        (
            reqwest::Method::DELETE,
            format!("/v1/conversations/{}", day.handoff_id),
            "GET",
        ),
        (reqwest::Method::PUT, "/v1/conversations".to_string(), "GET"),
        (reqwest::Method::POST, "/v1/reports/sla".to_string(), "GET"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(res.headers()["allow"].to_str().unwrap_or_default(), allow);
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], json!("method_not_allowed"), "{method} {path}");
    }
    // An unknown path is still 404.
    let (status, body) = app.get_json("/v1/nothing-here").await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let day = support_day().await;
    let app = &day.app;
    let browser = Browser::start().await;

    // Search: every conversation, newest first, with its SLA status and disposition.
    browser.goto(&app.url("/ui/")).await;
    assert_eq!(browser.title().await, "Conversations · handoff-ledger console");
    let rows = browser.find_all("tr.conversation-row").await;
    assert_eq!(rows.len(), 2, "the handoff and the VCC chat");
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == json!("ledger_session"))
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], json!(true));
    assert_eq!(session["sameSite"], json!("Strict"));
    assert_eq!(
        browser.script("return document.cookie").await,
        json!(""),
        "scripts cannot read it"
    );
    browser.save_screenshot("console-search.png").await;

    // Filters: platform = vcc leaves the VCC chat.
    browser.select("select[name=platform]", "vcc").await;
    let search = browser.find("form.filters button[type=submit]").await;
    browser.click(&search).await;
    browser.wait_for_url("platform=vcc").await;
    browser.find("tr.conversation-row").await;
    let rows = browser.find_all("tr.conversation-row").await;
    assert_eq!(rows.len(), 1);
    let link = browser.find("tr.conversation-row a").await;
    browser.click(&link).await;
    browser.wait_for_url(&format!("/ui/conversations/{}", day.vcc_id)).await;

    // Paging: one per page, the next page holds the other conversation.
    browser.goto(&app.url("/ui/?limit=1")).await;
    assert_eq!(browser.find_all("tr.conversation-row").await.len(), 1);
    let first = browser.text_of("tr.conversation-row").await;
    let next = browser.find("a.next-page").await;
    browser.click(&next).await;
    browser.wait_for_url("cursor=").await;
    browser.find("tr.conversation-row").await;
    assert_eq!(browser.find_all("tr.conversation-row").await.len(), 1);
    assert_ne!(browser.text_of("tr.conversation-row").await, first);
    assert!(
        browser.find_all("a.next-page").await.is_empty(),
        "two conversations, two pages"
    );

    // The conversation: merged transcript with party colours, bot buttons and cards, timeline, exports.
    browser
        .goto(&app.url(&format!("/ui/conversations/{}", day.handoff_id)))
        .await;
    let facts = browser.text_of("dl.facts").await;
    for expected in ["aivo_live", "2179", "Tomas", "met", "completed", "12 s"] {
        assert!(facts.contains(expected), "facts lack `{expected}`: {facts}");
    }
    let visitor = browser.find("tr.line.party-visitor").await;
    let agent = browser.find("tr.line.party-agent").await;
    let bot = browser.find("tr.line.party-bot").await;
    let (cv, ca, cb) = (
        browser.css(&visitor, "border-left-color").await,
        browser.css(&agent, "border-left-color").await,
        browser.css(&bot, "border-left-color").await,
    );
    assert!(
        cv != ca && ca != cb && cv != cb,
        "parties share a colour: {cv} {ca} {cb}"
    );
    assert!(browser.text(&visitor).await.contains("My invoice is wrong <again>"));
    assert!(
        browser
            .text(&agent)
            .await
            .contains("Let me look at <b>your</b> invoice."),
        "shown as typed, not as markup"
    );
    let buttons: Vec<String> = {
        let mut v = Vec::new();
        for b in browser.find_all("ul.buttons li.button").await {
            v.push(browser.text(&b).await);
        }
        v
    };
    assert!(buttons.iter().any(|b| b == "Talk to a human"), "{buttons:?}");
    assert!(buttons.iter().any(|b| b.starts_with("Billing FAQ")), "{buttons:?}");
    let cards = browser.find_all("div.carousel div.card").await;
    assert_eq!(cards.len(), 2);
    assert!(browser.text(&cards[1]).await.contains("Business"));
    let timeline = browser.text_of("ol.timeline").await;
    for expected in [
        "Conversation started",
        "Queued on aivo_live",
        "Attended by Tomas after 12 s",
        "Closed: completed",
    ] {
        assert!(timeline.contains(expected), "timeline lacks `{expected}`: {timeline}");
    }
    let exports = browser.text_of("div.exports").await;
    for expected in [
        "Transcript (JSON)",
        "Transcript (text)",
        "Transcript (CSV)",
        "Transcript (JSON lines)",
        "Printable transcript",
        "Conversation (JSON)",
        "Raw events",
    ] {
        assert!(exports.contains(expected), "exports lack `{expected}`: {exports}");
    }
    browser.save_screenshot("console-conversation.png").await;

    // Every export link answers within the session (and only within it).
    let hrefs = browser
        .script("return Array.from(document.querySelectorAll('div.exports a')).map(a => a.getAttribute('href'))")
        .await;
    let hrefs: Vec<String> = serde_json::from_value(hrefs).expect("hrefs");
    assert_eq!(hrefs.len(), 8);
    let cookie = format!("ledger_session={}", session["value"].as_str().unwrap_or_default());
    for href in &hrefs {
        assert!(
            href.starts_with(&format!("/ui/conversations/{}/", day.handoff_id)),
            "{href}"
        );
        let res = app
            .client
            .get(app.url(href))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 200, "{href}");
    }
    let printable = browser.find("div.exports a[href$='transcript.html']").await;
    browser.click(&printable).await;
    browser.wait_for_url("transcript.html").await;
    assert!(browser.title().await.starts_with("Transcript "));
    assert!(browser.text_of("h1").await.contains("Conversation transcript"));
    browser.save_screenshot("transcript-printable.png").await;

    browser
        .goto(&app.url(&format!("/ui/conversations/{}/events", day.handoff_id)))
        .await;
    let events = browser.find_all("tr.event-row").await;
    assert!(events.len() >= 9, "raw events shown: {}", events.len());
    assert!(browser.text(&events[0]).await.contains("ultimate.send_message"));

    // The quarantine holds the refused deliveries with their errors, and redrives them.
    browser.goto(&app.url("/ui/quarantine")).await;
    let entries = browser.find_all("tr.quarantine-row").await;
    assert_eq!(entries.len(), 2);
    let refused = browser.text(&entries[1]).await;
    assert!(
        refused.contains("/webhooks/aivo-live") && refused.contains("400 invalid_json"),
        "{refused}"
    );
    assert!(refused.contains("never"), "not redriven yet: {refused}");
    browser.save_screenshot("console-quarantine.png").await;
    let button = browser
        .find(&format!("tr.quarantine-row[data-id='{}'] button", day.redrivable))
        .await;
    browser.click(&button).await;
    browser
        .wait_for_url(&format!("/ui/quarantine/{}", day.redrivable))
        .await;
    let flash = browser.wait_for_text("div.flash", |t| t.contains("redriven")).await;
    assert!(flash.contains("appended at log position"), "{flash}");
    let redrives = browser.text_of("table.redrives").await;
    assert!(
        redrives.contains("200 appended") && redrives.contains("anonymous"),
        "{redrives}"
    );
    browser.save_screenshot("console-redrive.png").await;
    // A second redrive of the same delivery is a duplicate; the still-broken one is still refused.
    let again = browser.find("form[action$='/redrive'] button").await;
    browser.click(&again).await;
    let flash = browser
        .wait_for_text("div.flash", |t| t.contains("already stored"))
        .await;
    assert!(flash.contains("nothing appended"), "{flash}");
    browser.goto(&app.url("/ui/quarantine")).await;
    let rows = browser.find_all("tr.quarantine-row").await;
    let broken_id = browser
        .script("return document.querySelectorAll('tr.quarantine-row')[1].getAttribute('data-id')")
        .await;
    let broken_id = broken_id.as_str().unwrap_or_default().to_string();
    assert_eq!(rows.len(), 2);
    let button = browser
        .find(&format!("tr.quarantine-row[data-id='{broken_id}'] button"))
        .await;
    browser.click(&button).await;
    let flash = browser
        .wait_for_text("div.flash", |t| t.contains("still refused"))
        .await;
    assert!(flash.contains("400 invalid_json"), "{flash}");
}

/// Creates a key in the store (as `handoff-ledger keys create` does) and makes the service see it now.
async fn add_key(app: &TestApp, name: &str, scopes: &[Scope]) -> String {
    let (stored, key) = new_key(name, scopes).expect("new key");
    assert!(app.state.store.create_key(&stored).await.expect("create key"));
    app.state.keys.invalidate();
    key
}

async fn sign_in(browser: &Browser, key: &str) {
    let input = browser.find("input[name=key]").await;
    browser.type_into(&input, key).await;
    let submit = browser.find("form button[type=submit]").await;
    browser.click(&submit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_with_an_api_key_in_a_real_browser() {
    let day = support_day().await;
    let app = &day.app;
    let reader = add_key(app, "lead-reader", &[Scope::ConversationsRead]).await;
    let reports = add_key(app, "bi", &[Scope::ReportsRead]).await;
    let browser = Browser::start().await;

    // Once a key exists the console asks for one, and comes back to the page asked for.
    let wanted = format!("/ui/conversations/{}", day.handoff_id);
    browser.goto(&app.url(&wanted)).await;
    browser.wait_for_url("/ui/login?next=").await;
    assert_eq!(browser.title().await, "Sign in · handoff-ledger console");
    browser.save_screenshot("console-sign-in.png").await;

    sign_in(&browser, "not-a-key").await;
    browser
        .wait_for_text("div.error-box", |t| {
            t == "That key is not valid, or it has been revoked."
        })
        .await;
    sign_in(&browser, &reports).await;
    browser
        .wait_for_text("div.error-box", |t| {
            t == "The key `bi` does not grant conversations:read."
        })
        .await;
    assert!(
        browser
            .cookies()
            .await
            .iter()
            .all(|c| c["name"] != json!("ledger_session")),
        "no session yet"
    );

    sign_in(&browser, &reader).await;
    assert!(browser.wait_for_url(&wanted).await.ends_with(&wanted));
    assert_eq!(browser.text_of(".viewer-name").await, "lead-reader");
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == json!("ledger_session"))
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(
        (session["httpOnly"].clone(), session["sameSite"].clone()),
        (json!(true), json!("Strict"))
    );
    assert_ne!(
        session["value"],
        json!(reader),
        "the cookie is a session id, not the key"
    );
    // Without events:read: no raw events link, no quarantine.
    assert!(!browser.text_of("div.exports").await.contains("Raw events"));
    assert!(!browser.text_of("header.topbar").await.contains("Quarantine"));
    browser.goto(&app.url("/ui/quarantine")).await;
    assert!(browser.text_of("main").await.contains("events:read"));
    // The API itself still wants the key: the cookie opens the console only.
    let cookie = format!("ledger_session={}", session["value"].as_str().unwrap_or_default());
    let res = app
        .client
        .get(app.url("/v1/conversations"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);

    // A revoked key ends its sessions.
    assert!(app.state.store.revoke_key("lead-reader").await.expect("revoke"));
    app.state.keys.invalidate();
    browser.goto(&app.url("/ui/")).await;
    browser.wait_for_url("/ui/login").await;
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).map(|i| i + marker.len()).expect("a csrf field");
    page[start..].split('"').next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_forms_need_the_sessions_own_token() {
    let day = support_day().await;
    let app = &day.app;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Two open-mode sessions, each with its own token.
    let open = |client: reqwest::Client| {
        let url = app.url("/ui/");
        async move {
            let res = client.get(url).send().await.expect("send");
            let cookie = res
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .expect("a session cookie")
                .to_string();
            let page = res.text().await.expect("page");
            (cookie, csrf_of(&page))
        }
    };
    let (cookie_a, token_a) = open(no_redirects.clone()).await;
    let (cookie_b, token_b) = open(no_redirects.clone()).await;
    assert_ne!(token_a, token_b);
    let logout = |cookie: String, token: Option<String>| {
        let req = no_redirects.post(app.url("/ui/logout")).header("cookie", cookie);
        let req = match token {
            Some(t) => req.form(&[("csrf", t)]),
            None => req.form(&[("other", "x")]),
        };
        async move { req.send().await.expect("send").status().as_u16() }
    };
    // Missing, or another session's token: refused, and the session lives on.
    assert_eq!(logout(cookie_a.clone(), None).await, 400);
    assert_eq!(logout(cookie_a.clone(), Some(token_b.clone())).await, 403);
    assert_eq!(logout(cookie_a.clone(), Some(String::new())).await, 403);
    // A redrive posted with another session's token (what a forged form would carry) does nothing.
    let redrive = |cookie: String, token: String| {
        let req = no_redirects
            .post(app.url(&format!("/ui/quarantine/{}/redrive", day.redrivable)))
            .header("cookie", cookie)
            .form(&[("csrf", token)]);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    assert_eq!(redrive(cookie_a.clone(), token_b.clone()).await, 403);
    assert_eq!(redrive(cookie_a.clone(), String::new()).await, 403);
    let (_, entry) = app.get_json(&format!("/v1/quarantine/{}", day.redrivable)).await;
    assert_eq!(entry["redrives"], json!([]), "nothing was redriven: {entry}");
    assert_eq!(redrive(cookie_a.clone(), token_a.clone()).await, 303);
    let (_, entry) = app.get_json(&format!("/v1/quarantine/{}", day.redrivable)).await;
    assert_eq!(entry["redrives"].as_array().map(Vec::len), Some(1), "{entry}");

    // Its own token: signed out (303 to the sign-in page).
    assert_eq!(logout(cookie_a.clone(), Some(token_a.clone())).await, 303);
    // The ended session's token is worth nothing now.
    assert_eq!(logout(cookie_a, Some(token_a)).await, 403);
    assert_eq!(logout(cookie_b, Some(token_b)).await, 303);
}
