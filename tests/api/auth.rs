//! Access control over HTTP: keys with scopes on every `/v1/*` route, the docs and the OpenAPI
//! document; `401` without, with a wrong or with a revoked key; `403` without the scope; the open
//! local trial; `/v1/keys`; webhook tokens that fail closed.

use std::time::{Duration, Instant};

use handoff_ledger::auth::key::new_key;
use handoff_ledger::auth::Scope;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{fixture, spawn_app, spawn_app_with, spawn_app_with_keys, Backend, TestApp};
use crate::on_both_stores;

/// Sends a request with an optional key; status and JSON body (Null when not JSON).
async fn call(app: &TestApp, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("send");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a key directly in the store (as `handoff-ledger keys create` does); returns the key.
async fn add_key(app: &TestApp, name: &str, scopes: &[Scope]) -> String {
    let (stored, key) = new_key(name, scopes).unwrap();
    assert!(app.state.store.create_key(&stored).await.unwrap());
    key
}

/// A conversation to read: one Aivo room (webhooks need no key).
async fn seed_conversation(app: &TestApp) -> String {
    let (status, body) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!(status, 200, "{body}");
    body["conversation_id"].as_str().unwrap().to_string()
}

/// Every protected operation with the one scope that opens it (besides `admin`).
fn operations(id: &str) -> Vec<(Method, String, Option<Value>, Scope)> {
    use Scope::*;
    vec![
        (Method::GET, "/v1/conversations".into(), None, ConversationsRead),
        (Method::GET, format!("/v1/conversations/{id}"), None, ConversationsRead),
        (
            Method::GET,
            format!("/v1/conversations/{id}/transcript"),
            None,
            ConversationsRead,
        ),
        (
            Method::GET,
            format!("/v1/conversations/{id}/transcript?format=csv"),
            None,
            ConversationsRead,
        ),
        (
            Method::GET,
            format!("/v1/conversations/{id}/transcript?format=text"),
            None,
            ConversationsRead,
        ),
        (Method::GET, format!("/v1/conversations/{id}/events"), None, EventsRead),
        (Method::GET, "/v1/events".into(), None, EventsRead),
        (Method::GET, "/v1/quarantine".into(), None, EventsRead),
        (Method::GET, "/v1/reports/sla".into(), None, ReportsRead),
        (Method::GET, "/v1/reports/dispositions".into(), None, ReportsRead),
        (Method::GET, "/v1/reports/conversations.csv".into(), None, ReportsRead),
        (
            Method::POST,
            format!("/v1/conversations/{id}/messages"),
            Some(json!({"party": "agent", "text": "a note"})),
            CommandsWrite,
        ),
        (Method::GET, "/v1/keys".into(), None, Admin),
    ]
}

async fn each_scope_opens_its_operations_and_no_others(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = seed_conversation(&app).await;
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        keys.push((
            scope,
            add_key(&app, &format!("key-{}", scope.as_str().replace(':', "-")), &[scope]).await,
        ));
    }
    for (method, path, body, needed) in operations(&id) {
        for (scope, key) in &keys {
            let (status, answer) = call(&app, method.clone(), &path, Some(key), body.clone()).await;
            if *scope == needed || *scope == Scope::Admin {
                assert!(
                    (200..300).contains(&status),
                    "{method} {path} with {scope}: {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} with {scope}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden");
            }
        }
        // No key at all, once keys exist: 401.
        let (status, answer) = call(&app, method.clone(), &path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a key: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized");
    }
    // The documentation opens to any valid key.
    for path in ["/openapi.json", "/docs/"] {
        assert_eq!(call(&app, Method::GET, path, None, None).await.0, 401, "{path}");
        let (_, reports_key) = &keys[2];
        assert_eq!(
            call(&app, Method::GET, path, Some(reports_key), None).await.0,
            200,
            "{path}"
        );
    }
    // Probes and webhooks need no key.
    assert_eq!(call(&app, Method::GET, "/healthz", None, None).await.0, 200);
    assert_eq!(call(&app, Method::GET, "/readyz", None, None).await.0, 200);
    let (status, _) = app.post_raw("/webhooks/aivo-live", fixture("aivo_close.json")).await;
    assert_eq!(status, 200);
}

/// The operations [`operations`] leaves out (they change state, or need an entry to act on): each is
/// refused `403` to every key without its scope, before anything happens, and passes the check with it.
/// Then erasures (`admin` only) and the console's sign-in (`conversations:read`).
async fn admin_only_operations_and_the_console_follow_their_scopes(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = seed_conversation(&app).await;
    let (status, _) = app.post_raw("/webhooks/aivo-live", "not json").await;
    assert_eq!(status, 400);
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        keys.push((
            scope,
            add_key(&app, &format!("key-{}", scope.as_str().replace(':', "-")), &[scope]).await,
        ));
    }
    let admin = keys[4].1.clone();
    assert_eq!(keys[4].0, Scope::Admin);
    let (_, quarantine) = call(&app, Method::GET, "/v1/quarantine", Some(&admin), None).await;
    let entry = quarantine["items"][0]["id"].as_i64().expect("a quarantine entry");
    let unknown = uuid::Uuid::new_v4();
    let checks: Vec<(Method, String, Option<Value>, Scope)> = vec![
        (Method::GET, format!("/v1/quarantine/{entry}"), None, Scope::EventsRead),
        (
            Method::POST,
            format!("/v1/conversations/{id}/handoff"),
            Some(json!({})),
            Scope::CommandsWrite,
        ),
        (
            Method::POST,
            format!("/v1/quarantine/{entry}/redrive"),
            None,
            Scope::Admin,
        ),
        (
            Method::POST,
            format!("/v1/conversations/{id}/commands/{unknown}/retry"),
            None,
            Scope::Admin,
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            Some(json!({"name": "made", "scopes": ["reports:read"]})),
            Scope::Admin,
        ),
        (Method::DELETE, "/v1/keys/made".into(), None, Scope::Admin),
        (Method::GET, format!("/v1/erasures/{unknown}"), None, Scope::Admin),
    ];
    for (method, path, body, needed) in checks {
        for (scope, key) in &keys {
            let (status, answer) = call(&app, method.clone(), &path, Some(key), body.clone()).await;
            if *scope == needed || *scope == Scope::Admin {
                assert!(
                    ![401, 403].contains(&status),
                    "{method} {path} with {scope}: {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} with {scope}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden");
            }
        }
        let (status, _) = call(&app, method.clone(), &path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a key");
    }
    // Refused redrives were not run: only the admin's is recorded.
    let (_, kept) = call(
        &app,
        Method::GET,
        &format!("/v1/quarantine/{entry}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(kept["redrives"].as_array().map(Vec::len), Some(1), "{kept}");

    // Erasure: every key without `admin` is 403 and nothing is erased; admin erases (201).
    let erase = json!({"conversation_id": id});
    let events = format!("/v1/conversations/{id}/events");
    let (_, before) = call(&app, Method::GET, &events, Some(&admin), None).await;
    for (scope, key) in keys.iter().filter(|(s, _)| *s != Scope::Admin) {
        let (status, answer) = call(&app, Method::POST, "/v1/erasures", Some(key), Some(erase.clone())).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (403, json!("forbidden")),
            "POST /v1/erasures with {scope}: {answer}"
        );
    }
    let (status, _) = call(&app, Method::POST, "/v1/erasures", None, Some(erase.clone())).await;
    assert_eq!(status, 401);
    let (_, after) = call(&app, Method::GET, &events, Some(&admin), None).await;
    assert_eq!(after, before, "a refused erasure changed the events");
    assert!(before["items"][0]["payload"]["erased"].is_null(), "{before}");
    let (status, certificate) = call(&app, Method::POST, "/v1/erasures", Some(&admin), Some(erase)).await;
    assert_eq!(status, 201, "{certificate}");
    let cert = format!("/v1/erasures/{}", certificate["id"].as_str().unwrap());
    for (scope, key) in &keys {
        let (status, _) = call(&app, Method::GET, &cert, Some(key), None).await;
        let want = if *scope == Scope::Admin { 200 } else { 403 };
        assert_eq!(status, want, "GET {cert} with {scope}");
    }

    // The console signs in a key with conversations:read (or admin) only.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |key: String| {
        let req = no_redirects.post(app.url("/ui/login")).form(&[("key", key)]);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    for (scope, key) in &keys {
        let want = match scope {
            Scope::ConversationsRead | Scope::Admin => 303,
            _ => 403,
        };
        assert_eq!(sign_in(key.clone()).await, want, "console sign-in with {scope}");
    }
    assert_eq!(sign_in("hlk_nope".into()).await, 401);
}

async fn wrong_revoked_and_malformed_keys_are_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = add_key(&app, "admin", &[Scope::Admin]).await;
    let reader = add_key(&app, "reader", &[Scope::ConversationsRead]).await;
    // The real key with its last digit changed (to 1 when it already ends in 0).
    let last = if reader.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &reader[..reader.len() - 1]);
    for key in [wrong.as_str(), "", "hlk_"] {
        let (status, body) = call(&app, Method::GET, "/v1/conversations", Some(key), None).await;
        assert_eq!(status, 401, "key {key:?}: {body}");
    }
    // Not a bearer credential at all.
    let res = app
        .client
        .get(app.url("/v1/conversations"))
        .header("authorization", format!("Basic {reader}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    // The scheme is matched case-insensitively.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let res = app
            .client
            .get(app.url("/v1/conversations"))
            .header("authorization", format!("{scheme} {reader}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{scheme}");
    }
    // Revoked through the API: refused at once.
    let (status, _) = call(&app, Method::DELETE, "/v1/keys/reader", Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&app, Method::GET, "/v1/conversations", Some(&reader), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")));
    // Revoked behind the service's back (as the CLI does): refused within a second.
    assert!(app.state.store.revoke_key("admin").await.unwrap());
    let since = Instant::now();
    loop {
        let (status, _) = call(&app, Method::GET, "/v1/keys", Some(&admin), None).await;
        if status == 401 {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(10), "the revoked key still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn loopback_without_keys_is_open_until_a_key_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = seed_conversation(&app).await;
    for (method, path, body, _) in operations(&id) {
        let (status, answer) = call(&app, method.clone(), &path, None, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
    }
    // The first key closes the API (also to this service's own snapshot, within a second).
    let (status, created) = call(
        &app,
        Method::POST,
        "/v1/keys",
        None,
        Some(json!({"name": "first", "scopes": ["conversations:read"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = call(&app, Method::GET, "/v1/conversations", None, None).await;
    assert_eq!(status, 401);
    let key = created["key"].as_str().unwrap();
    let (status, _) = call(&app, Method::GET, "/v1/conversations", Some(key), None).await;
    assert_eq!(status, 200);
}

async fn allow_anonymous_opens_the_api_even_with_keys(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.auth.allow_anonymous = true).await;
    let key = add_key(&app, "reader", &[Scope::ConversationsRead]).await;
    assert_eq!(call(&app, Method::GET, "/v1/events", None, None).await.0, 200);
    // A key that is presented is still checked.
    assert_eq!(call(&app, Method::GET, "/v1/events", Some(&key), None).await.0, 403);
    assert_eq!(
        call(&app, Method::GET, "/v1/events", Some("hlk_nope"), None).await.0,
        401
    );
}

async fn keys_api_creates_lists_and_revokes(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = add_key(&app, "root", &[Scope::Admin]).await;
    let new = json!({"name": "bi-dashboard", "scopes": ["reports:read", "conversations:read"]});
    let (status, created) = call(&app, Method::POST, "/v1/keys", Some(&admin), Some(new.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "bi-dashboard");
    assert_eq!(created["scopes"], json!(["conversations:read", "reports:read"]));
    let key = created["key"].as_str().unwrap().to_string();
    // Only a hash is kept: the key is nowhere in what the store holds.
    let stored = app.state.store.list_keys().await.unwrap();
    assert!(stored
        .iter()
        .all(|k| !k.key_hash.contains(&key[4..]) && k.key_hash != key));
    // The same name again: 409; bad input: 422.
    let (status, body) = call(&app, Method::POST, "/v1/keys", Some(&admin), Some(new)).await;
    assert_eq!((status, body["error"]["code"].clone()), (409, json!("conflict")));
    for bad in [
        json!({"name": "x", "scopes": ["conversations:write"]}),
        json!({"name": "x", "scopes": []}),
        json!({"name": "has space", "scopes": ["admin"]}),
    ] {
        let (status, body) = call(&app, Method::POST, "/v1/keys", Some(&admin), Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    // A non-admin key cannot manage keys.
    let (status, _) = call(&app, Method::GET, "/v1/keys", Some(&key), None).await;
    assert_eq!(status, 403);
    // Use is recorded.
    assert_eq!(
        call(&app, Method::GET, "/v1/reports/sla", Some(&key), None).await.0,
        200
    );
    let since = Instant::now();
    let listed = loop {
        let (status, list) = call(&app, Method::GET, "/v1/keys", Some(&admin), None).await;
        assert_eq!(status, 200);
        let items = list["items"].as_array().unwrap().clone();
        let bi = items.iter().find(|k| k["name"] == "bi-dashboard").unwrap().clone();
        if !bi["last_used_at"].is_null() {
            break items;
        }
        assert!(since.elapsed() < Duration::from_secs(10), "last use never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = listed.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bi-dashboard", "root"]);
    assert!(listed
        .iter()
        .all(|k| k.get("key").is_none() && k.get("key_hash").is_none()));
    assert!(listed[0]["created_at"].is_string());
    // Revoke.
    assert_eq!(
        call(&app, Method::DELETE, "/v1/keys/bi-dashboard", Some(&admin), None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(&app, Method::DELETE, "/v1/keys/bi-dashboard", Some(&admin), None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&app, Method::GET, "/v1/reports/sla", Some(&key), None).await.0,
        401
    );
}

async fn openapi_declares_the_bearer_scheme_and_each_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, doc) = call(&app, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(
        security("/v1/reports/sla", "get"),
        json!([{"api_key": ["reports:read"]}])
    );
    assert_eq!(
        security("/v1/conversations", "get"),
        json!([{"api_key": ["conversations:read"]}])
    );
    assert_eq!(security("/v1/events", "get"), json!([{"api_key": ["events:read"]}]));
    assert_eq!(
        security("/v1/conversations/{id}/handoff", "post"),
        json!([{"api_key": ["commands:write"]}])
    );
    assert_eq!(security("/v1/keys", "post"), json!([{"api_key": ["admin"]}]));
    assert!(doc["paths"]["/v1/keys"]["post"]["responses"]["403"].is_object());
    assert!(security("/webhooks/aivo-live", "post").is_null());
    assert!(security("/healthz", "get").is_null());
}

/// A service on every interface (`0.0.0.0`): not loopback, so it starts only with a key (here one
/// `admin` key, created before it starts); the app and that key.
async fn spawn_public(
    backend: Backend,
    customize: impl FnOnce(&mut handoff_ledger::config::Config),
) -> (TestApp, String) {
    let (app, keys) = spawn_app_with_keys(backend, &[("operator", &[Scope::Admin])], |c| {
        c.server.bind = "0.0.0.0:0".into();
        customize(c);
    })
    .await;
    let key = keys.into_iter().next().expect("the admin key");
    (app, key)
}

async fn webhooks_without_a_token_are_refused_on_a_public_bind(backend: Backend) {
    let (app, key) = spawn_public(backend, |_| {}).await;
    let (status, body) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, _) = app.post_raw("/webhooks/vcc/chat", fixture("vcc_chat.json")).await;
    assert_eq!(status, 401);
    let (status, events) = call(&app, Method::GET, "/v1/events", Some(&key), None).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["items"], json!([]));

    let (open, _) = spawn_public(backend, |c| c.auth.open_webhooks = true).await;
    let (status, _) = open
        .post_raw("/webhooks/aivo-live", fixture("aivo_attended.json"))
        .await;
    assert_eq!(status, 200);
}

async fn webhook_tokens_rotate_as_a_list(backend: Backend) {
    let (app, _) = spawn_public(backend, |c| {
        c.aivo_live.webhook_token = vec!["old-token", "new-token"].into();
    })
    .await;
    let (status, _) = app
        .post_raw("/webhooks/aivo-live?token=old-token", fixture("aivo_attended.json"))
        .await;
    assert_eq!(status, 200);
    let res = app
        .client
        .post(app.url("/webhooks/aivo-live"))
        .header("authorization", "bEaReR new-token")
        .body(fixture("aivo_close.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let (status, _) = app
        .post_raw("/webhooks/aivo-live?token=older-token", fixture("aivo_transfer.json"))
        .await;
    assert_eq!(status, 401);
}

/// Runs `handoff-ledger ARGS` on a store; the output.
fn cli(store_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
        .args(args)
        .env("LEDGER__STORE__URL", store_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run handoff-ledger")
}

/// Polls `path` with `key` until it answers `want` (a running service honours key changes within a second).
async fn eventually(client: &reqwest::Client, url: &str, key: &str, want: u16) {
    let since = Instant::now();
    loop {
        let res = client.get(url).bearer_auth(key).send().await.expect("send");
        if res.status().as_u16() == want {
            return;
        }
        assert!(since.elapsed() < Duration::from_secs(10), "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cli_keys_work_on_a_fresh_store_and_while_the_service_runs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store_url, _pg) = match backend {
        Backend::Sqlite => (format!("sqlite://{}", dir.path().join("keys.db").display()), None),
        Backend::Postgres => {
            let db = crate::common::PgDatabase::create().await;
            (db.url.clone(), Some(db))
        }
    };
    // A fresh store: migrated by the command itself.
    let out = cli(
        &store_url,
        &[
            "keys",
            "create",
            "--name",
            "ops",
            "--scope",
            "conversations:read",
            "events:read",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap().to_string();
    assert!(key.starts_with("hlk_") && !key.contains(' '), "last line: {key:?}");
    let out = cli(&store_url, &["keys", "list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("ops") && listed.contains("conversations:read,events:read") && listed.contains("never"),
        "{listed}"
    );
    assert!(!listed.contains(&key[4..]));
    let out = cli(&store_url, &["keys", "create", "--name", "ops", "--scope", "admin"]);
    assert!(!out.status.success(), "a second key of the same name");
    let out = cli(&store_url, &["keys", "create", "--name", "x", "--scope", "everything"]);
    assert!(!out.status.success(), "an unknown scope");

    let port = crate::common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let bind = format!("127.0.0.1:{port}");
    let mut service = crate::common::start_service(
        &[],
        &[("LEDGER__SERVER__BIND", &bind), ("LEDGER__STORE__URL", &store_url)],
    );
    let client = reqwest::Client::new();
    crate::common::wait_ready(&client, &base).await;
    let events = format!("{base}/v1/events");
    assert_eq!(client.get(&events).send().await.unwrap().status().as_u16(), 401);
    eventually(&client, &events, &key, 200).await;
    // A key created while the service runs is honoured.
    let out = cli(&store_url, &["keys", "create", "--name", "late", "--scope", "admin"]);
    let late = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    eventually(&client, &format!("{base}/v1/keys"), &late, 200).await;
    // A revoked one is refused.
    let out = cli(&store_url, &["keys", "revoke", "ops"]);
    assert!(out.status.success());
    eventually(&client, &events, &key, 401).await;
    let out = cli(&store_url, &["keys", "revoke", "ops"]);
    assert!(!out.status.success(), "revoking an unknown key fails");
    let _ = service.kill();
    let _ = service.wait();
}

async fn a_public_bind_without_keys_refuses_to_start(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store_url, _pg) = match backend {
        Backend::Sqlite => (format!("sqlite://{}", dir.path().join("closed.db").display()), None),
        Backend::Postgres => {
            let db = crate::common::PgDatabase::create().await;
            (db.url.clone(), Some(db))
        }
    };
    let port = crate::common::free_port();
    let bind = format!("0.0.0.0:{port}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
        .arg("serve")
        .env("LEDGER__SERVER__BIND", &bind)
        .env("LEDGER__STORE__URL", &store_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run handoff-ledger");
    assert!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to start"), "{stderr}");
    // With a key it starts, and requires it.
    let out = cli(&store_url, &["keys", "create", "--name", "admin", "--scope", "admin"]);
    assert!(out.status.success());
    let mut service = crate::common::start_service(
        &[],
        &[("LEDGER__SERVER__BIND", &bind), ("LEDGER__STORE__URL", &store_url)],
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    crate::common::wait_ready(&client, &base).await;
    let res = client.get(format!("{base}/v1/conversations")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let _ = service.kill();
    let _ = service.wait();
}

/// `auth.allow_anonymous` is for a loopback bind only: on any other address the service refuses to
/// start, whether keys exist or not, and says which key to change.
async fn allow_anonymous_on_a_public_bind_refuses_to_start(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store_url, _pg) = match backend {
        Backend::Sqlite => (format!("sqlite://{}", dir.path().join("anon.db").display()), None),
        Backend::Postgres => {
            let db = crate::common::PgDatabase::create().await;
            (db.url.clone(), Some(db))
        }
    };
    let port = crate::common::free_port();
    let bind = format!("0.0.0.0:{port}");
    let serve = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
            .arg("serve")
            .env("LEDGER__SERVER__BIND", &bind)
            .env("LEDGER__STORE__URL", &store_url)
            .env("LEDGER__AUTH__ALLOW_ANONYMOUS", "true")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run handoff-ledger")
    };
    // Without a key, and with one: refused before it binds, naming the key.
    for with_key in [false, true] {
        if with_key {
            let out = cli(&store_url, &["keys", "create", "--name", "admin", "--scope", "admin"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let out = serve();
        assert!(!out.status.success(), "it started (key: {with_key})");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("auth.allow_anonymous"), "{stderr}");
        assert!(stderr.contains("not a loopback address"), "{stderr}");
    }
    // The service itself refuses too (a host name is only resolved when it binds).
    let mut config = handoff_ledger::config::Config::default();
    config.server.bind = "0.0.0.0:0".into();
    config.store.url = store_url.clone();
    config.auth.allow_anonymous = true;
    let error = match handoff_ledger::startup::Application::build(config).await {
        Ok(_) => panic!("the service started with allow_anonymous on 0.0.0.0"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("refusing to start") && error.contains("auth.allow_anonymous"),
        "{error}"
    );
    // On loopback the same setting starts: allow_anonymous_opens_the_api_even_with_keys.
}

on_both_stores!(
    allow_anonymous_on_a_public_bind_refuses_to_start,
    cli_keys_work_on_a_fresh_store_and_while_the_service_runs,
    a_public_bind_without_keys_refuses_to_start,
    each_scope_opens_its_operations_and_no_others,
    admin_only_operations_and_the_console_follow_their_scopes,
    wrong_revoked_and_malformed_keys_are_401,
    loopback_without_keys_is_open_until_a_key_exists,
    allow_anonymous_opens_the_api_even_with_keys,
    keys_api_creates_lists_and_revokes,
    openapi_declares_the_bearer_scheme_and_each_scope,
    webhooks_without_a_token_are_refused_on_a_public_bind,
    webhook_tokens_rotate_as_a_list,
);
