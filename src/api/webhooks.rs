//! Inbound webhooks. Each handler is a short script: check the token, read the body within the
//! limit, parse (pure), hand the events to the writer, answer after commit. Refused deliveries
//! (400/422) are kept in the quarantine before the answer goes out.

use std::collections::{BTreeMap, HashMap};

use actix_web::http::StatusCode;
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::config::Tokens;
use crate::model::{AppendOutcome, NewQuarantine, Platform};
use crate::sources::{self, Delivery, Parsed, PayloadError};
use crate::telemetry::{self, WebhookOutcome};

/// Headers kept with an event or a quarantined delivery (never credentials).
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "idempotency-key",
    "x-request-id",
    "x-correlation-id",
    "x-forwarded-for",
    "x-real-ip",
];

/// The answer to an accepted delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Id of the (last) event of the delivery; null for a delivery carrying no event.
    pub event_id: Option<Uuid>,
    /// Log position of the (last) event.
    pub seq: Option<i64>,
    /// True when every event of the delivery was already stored (nothing appended).
    pub duplicate: bool,
    /// Conversation the (last) event belongs to; null for events filed under no conversation.
    pub conversation_id: Option<Uuid>,
    /// Number of events in a body that carries several (Bright Pattern, VCC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<usize>,
}

impl Accepted {
    /// Builds the answer from the writer's outcomes (`multi`: the body may carry several events).
    pub fn from_outcomes(outcomes: &[AppendOutcome], multi: bool) -> Self {
        let last = outcomes.last();
        Accepted {
            event_id: last.map(|o| o.event_id),
            seq: last.map(|o| o.seq),
            duplicate: !outcomes.is_empty() && outcomes.iter().all(|o| o.duplicate),
            conversation_id: last.and_then(|o| o.conversation_id),
            events: multi.then_some(outcomes.len()),
        }
    }
}

/// `isTeamOnline` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamOnline {
    /// Whether the team can take the conversation now.
    #[serde(rename = "isOnline")]
    pub is_online: bool,
}

/// One result of the actions webhook: becomes a bot session variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionResult {
    /// Variable name.
    pub key: String,
    /// Value (string, number or boolean).
    #[schema(value_type = Object)]
    pub value: Value,
    /// Whether the bot should sanitise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize: Option<bool>,
}

/// The actions webhook answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionResults {
    /// Session variables for the bot.
    pub results: Vec<ActionResult>,
}

/// What a delivery became.
pub struct Ingested {
    /// The parsed body.
    pub value: Value,
    /// The parsed events.
    pub parsed: Parsed,
    /// What the writer answered.
    pub outcomes: Vec<AppendOutcome>,
}

/// A platform parser: raw text, its JSON, the delivery's facts.
pub type ParseFn = fn(&str, &Value, &Delivery) -> Result<Parsed, PayloadError>;

/// Checks a platform's webhook token: `Authorization: Bearer <token>` (scheme case-insensitive) or
/// `?<query_name>=<token>`; any of the configured tokens is accepted (rotation). Compared in constant
/// time (over digests, so lengths do not leak either). With no token configured the endpoint is open
/// only when `open` says so (loopback bind, or `auth.open_webhooks`).
pub fn check_token(req: &HttpRequest, expected: &Tokens, query_names: &[&str], open: bool) -> Result<(), ApiError> {
    if expected.is_empty() {
        return if open { Ok(()) } else { Err(ApiError::Unauthorized) };
    }
    let from_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token)
        .map(str::to_string);
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let given = from_header.or_else(|| query_names.iter().find_map(|n| query.get(*n).cloned()));
    let Some(given) = given else {
        return Err(ApiError::Unauthorized);
    };
    let given = Sha256::digest(given.as_bytes());
    // Every token is compared, so the time does not tell which one matched.
    let matched = expected.iter().fold(subtle::Choice::from(0), |acc, token| {
        acc | given.ct_eq(&Sha256::digest(token.expose().as_bytes()))
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn kept_headers(req: &HttpRequest) -> BTreeMap<String, String> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            req.headers()
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect()
}

/// Reads the body, refusing more than `limit` bytes without buffering them; a body still arriving at
/// `server.body_timeout_ms` ([`super::limits::body_deadline`]) is a 408.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout_ms: u64,
) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            e if super::limits::is_body_timeout(&e) => ApiError::RequestTimeout(timeout_ms),
            e => ApiError::InvalidJson(format!("the body could not be read: {e}")),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.to_vec())
}

/// What became of a delivery, for `ledger_webhooks_total`.
pub fn webhook_outcome(result: &Result<Ingested, ApiError>) -> WebhookOutcome {
    match result {
        Ok(ingested) if ingested.parsed.unknown => WebhookOutcome::Unknown,
        Ok(ingested) if !ingested.outcomes.is_empty() && ingested.outcomes.iter().all(|o| o.duplicate) => {
            WebhookOutcome::Duplicate
        }
        Ok(_) => WebhookOutcome::Appended,
        Err(ApiError::Unauthorized) => WebhookOutcome::Unauthorized,
        Err(ApiError::InvalidJson(_) | ApiError::InvalidPayload { .. } | ApiError::PayloadTooLarge(_)) => {
            WebhookOutcome::Rejected
        }
        Err(_) => WebhookOutcome::Unavailable,
    }
}

/// The common path of every webhook: token, body, parse, quarantine on refusal, append; counted in
/// `ledger_webhooks_total`.
pub async fn ingest(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    platform: Platform,
    token: (&Tokens, &[&str]),
    parse: ParseFn,
) -> Result<Ingested, ApiError> {
    let result = ingest_delivery(state, req, payload, platform, token, parse).await;
    telemetry::webhook(platform, webhook_outcome(&result));
    result
}

async fn ingest_delivery(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    platform: Platform,
    token: (&Tokens, &[&str]),
    parse: ParseFn,
) -> Result<Ingested, ApiError> {
    check_token(req, token.0, token.1, state.keys.access().webhooks_open_without_token())?;
    let received_at = Utc::now();
    let raw = read_body(
        req,
        payload,
        state.config.server.max_body_bytes,
        state.config.server.body_timeout_ms,
    )
    .await?;
    let mut headers = kept_headers(req);
    // The quarantine keeps what was sent (an encrypted body stays encrypted there).
    let decrypted = match decrypt_body(state, req, platform, &raw, &mut headers) {
        Ok(decrypted) => decrypted,
        Err(error) => {
            quarantine(state, req, platform, &error, headers, raw).await?;
            return Err(error);
        }
    };
    let body: &[u8] = decrypted.as_deref().unwrap_or(&raw);
    let idempotency_key = headers.get("idempotency-key").cloned();
    let path_id = req.match_info().get("chat_id").map(str::to_string);
    let delivery = Delivery {
        received_at: sources::truncate_to_micros(received_at),
        headers: headers.clone(),
        idempotency_key: idempotency_key.as_deref(),
        path_id: path_id.as_deref(),
    };
    let (value, parsed) = match parse_delivery(body, &delivery, parse) {
        Ok(ok) => ok,
        Err(error) => {
            quarantine(state, req, platform, &error, headers, raw).await?;
            return Err(error);
        }
    };
    let outcomes = super::append(state, parsed.events.clone()).await?;
    Ok(Ingested {
        value,
        parsed,
        outcomes,
    })
}

/// Parses a delivery's bytes with its endpoint's parser (pure).
pub fn parse_delivery(body: &[u8], delivery: &Delivery, parse: ParseFn) -> Result<(Value, Parsed), ApiError> {
    let value = sources::parse_json(body)?;
    // parse_json succeeded, so the body is UTF-8.
    let raw = String::from_utf8_lossy(body);
    let parsed = parse(&raw, &value, delivery)?;
    Ok((value, parsed))
}

/// An endpoint a delivery can be kept from, with its parser.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    /// The platform it serves.
    pub platform: Platform,
    /// Its parser.
    pub parse: ParseFn,
    /// Whether a body may carry several events (the answer then counts them).
    pub multi: bool,
    /// The path parameter (Bright Pattern `chat_id`).
    pub path_id: Option<&'a str>,
    /// The Ultimate actions webhook (answered with the action's results).
    pub actions: bool,
}

/// The endpoint a quarantined delivery was posted to (its stored `path`), or None for a path this
/// version does not serve. Bright Pattern poll answers are kept as `poll:/chats/{chat_id}/events`.
pub fn endpoint_of(path: &str) -> Option<Endpoint<'_>> {
    let endpoint = |platform, parse: ParseFn, multi| Endpoint {
        platform,
        parse,
        multi,
        path_id: None,
        actions: false,
    };
    match path {
        "/webhooks/ultimate/converse" => Some(endpoint(Platform::Ultimate, sources::ultimate::parse, false)),
        "/webhooks/ultimate/actions" => Some(Endpoint {
            actions: true,
            ..endpoint(Platform::Ultimate, sources::ultimate::parse_action, false)
        }),
        "/webhooks/aivo-live" => Some(endpoint(Platform::AivoLive, sources::aivo_live::parse, false)),
        "/webhooks/vcc/chat" => Some(endpoint(Platform::Vcc, sources::vcc::parse, true)),
        _ => {
            let chat_id = path
                .strip_prefix("/webhooks/bright-pattern/")
                .or_else(|| {
                    path.strip_prefix("poll:/chats/")
                        .and_then(|p| p.strip_suffix("/events"))
                })
                .filter(|id| !id.is_empty() && !id.contains('/'))?;
            Some(Endpoint {
                path_id: Some(chat_id),
                ..endpoint(Platform::BrightPattern, sources::bright_pattern::parse, true)
            })
        }
    }
}

/// Stored header saying a delivery arrived encrypted (the stored payload is the decrypted JSON).
pub const ENCRYPTED_HEADER: &str = "x-ledger-encrypted";

/// Stored header with the IV of an encrypted delivery (not a secret), so that a quarantined encrypted
/// body can be decrypted again when it is redriven.
pub const IV_HEADER: &str = "x-ledger-iv";

/// VCC Live's encrypted bodies: with `?iv=<hex>` the body is base64 AES-256-CTR under
/// `vcc.encryption_key`; the decrypted body is returned and the fact (and the IV) kept in the stored
/// headers. None for a plain body. Refused (400) when no key is configured or the body or IV is bad.
fn decrypt_body(
    state: &AppState,
    req: &HttpRequest,
    platform: Platform,
    body: &[u8],
    headers: &mut BTreeMap<String, String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    if platform != Platform::Vcc {
        return Ok(None);
    }
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let Some(iv) = query.get("iv") else {
        return Ok(None);
    };
    headers.insert(IV_HEADER.into(), iv.clone());
    let plain = decrypt_with_config(state, iv, body)?;
    headers.insert(ENCRYPTED_HEADER.into(), "aes-256-ctr".into());
    Ok(Some(plain))
}

/// A kept delivery's body as its parser reads it: decrypted when it arrived encrypted (its IV kept in
/// the stored headers), else as kept.
pub fn kept_body(state: &AppState, headers: &BTreeMap<String, String>, raw: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    match headers.get(IV_HEADER) {
        Some(iv) => decrypt_with_config(state, iv, &raw),
        None => Ok(raw),
    }
}

fn decrypt_with_config(state: &AppState, iv: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let key = &state.config.vcc.encryption_key;
    if key.is_empty() {
        return Err(ApiError::InvalidJson(
            "the body is encrypted (`iv` given) but vcc.encryption_key is not set".into(),
        ));
    }
    // Checked at start (startup refuses a malformed key), so this only fails on a config changed under us.
    let key =
        sources::vcc_crypto::VccKey::from_hex(key.expose()).map_err(|m| ApiError::Unexpected(anyhow::anyhow!(m)))?;
    Ok(sources::vcc_crypto::decrypt(&key, iv, body)?)
}

async fn quarantine(
    state: &AppState,
    req: &HttpRequest,
    platform: Platform,
    error: &ApiError,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
) -> Result<(), ApiError> {
    use actix_web::ResponseError;
    let detail = error.body().error;
    let entry = NewQuarantine {
        received_at: Utc::now(),
        path: req.path().to_string(),
        platform: Some(platform),
        error_code: detail.code,
        error_message: detail.message,
        status: error.status_code().as_u16(),
        headers,
        body,
    };
    super::quarantine(state, entry).await?;
    Ok(())
}

/// The whole script of a webhook answered with its append outcome: ingest, relay, answer.
async fn receive(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    platform: Platform,
    token: (&Tokens, &[&str]),
    parse: ParseFn,
    multi: bool,
) -> Result<HttpResponse, ApiError> {
    let ingested = ingest(state, req, payload, platform, token, parse).await?;
    crate::handoff::after_append(state, &ingested).await;
    Ok(answer(&ingested, multi))
}

/// The answer to a stored delivery: 200, or 202 for an event type this version does not know.
pub fn answer(ingested: &Ingested, multi: bool) -> HttpResponse {
    let status = if ingested.parsed.unknown {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    HttpResponse::build(status).json(Accepted::from_outcomes(&ingested.outcomes, multi))
}

/// Ultimate converse webhook: `sendMessage`, `escalate`, `isTeamOnline`, `widgetMessage`, `widgetEscalate`, `widgetEndSession`.
///
/// `isTeamOnline` is answered `{"isOnline": ...}`; `escalate` is answered 200 when the hand-over
/// succeeded and 502/503/504 when it failed; the others are acknowledged once stored.
#[utoipa::path(
    post, path = "/webhooks/ultimate/converse", tag = "webhooks",
    request_body(content = Object, description = "Ultimate custom CRM converse event `{botId, channel?, data: {eventType, platformConversationId, ...}}`"),
    params(("token" = Option<String>, Query, description = "Webhook token, when not sent as `Authorization: Bearer`")),
    responses(
        (status = 200, description = "Stored (or a redelivery: `duplicate: true`); `isTeamOnline` answers `{\"isOnline\": bool}`", body = Accepted),
        (status = 202, description = "Unknown event type, stored as `ultimate.unknown`", body = Accepted),
        (status = 400, description = "Not JSON or not UTF-8 (kept in quarantine)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Body over `server.max_body_bytes`", body = ErrorBody),
        (status = 422, description = "Wrong shape; `details.field` names the field (kept in quarantine)", body = ErrorBody),
        (status = 502, description = "escalate: the live backend refused the hand-over", body = ErrorBody),
        (status = 503, description = "Store unavailable, or escalate: no route / backend unavailable", body = ErrorBody),
        (status = 504, description = "escalate: the live backend did not answer within the deadline", body = ErrorBody),
    )
)]
pub async fn ultimate_converse(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = state.config.ultimate.webhook_token.clone();
    let ingested = ingest(
        &state,
        &req,
        payload,
        Platform::Ultimate,
        (&token, &["token"]),
        sources::ultimate::parse,
    )
    .await?;
    let kind = ingested
        .parsed
        .events
        .first()
        .map(|e| e.kind.as_str())
        .unwrap_or_default();
    match kind {
        "ultimate.is_team_online" => {
            let team = sources::ultimate::team_of(&ingested.value);
            let is_online = crate::handoff::team_online(&state, team.as_deref()).await;
            Ok(HttpResponse::Ok().json(TeamOnline { is_online }))
        }
        "ultimate.escalate" => {
            let team = sources::ultimate::team_of(&ingested.value);
            crate::handoff::escalate_sync(&state, &ingested, team.as_deref()).await?;
            Ok(answer(&ingested, false))
        }
        _ => {
            crate::handoff::after_append(&state, &ingested).await;
            Ok(answer(&ingested, false))
        }
    }
}

/// Ultimate actions webhook: runs the action synchronously and answers session variables.
///
/// Built in: `setAttributes` (stores the keys on the conversation; they feed the queue call) and
/// `getHandoffStatus` (state, queue, agent, wait so far). Other actions are recorded and answered `{"results": []}`.
#[utoipa::path(
    post, path = "/webhooks/ultimate/actions", tag = "webhooks",
    request_body(content = Object, description = "`{botId, conversationId?, platformConversationId, name, data: [{key, value, saveAs?}]}`"),
    params(("token" = Option<String>, Query, description = "Webhook token, when not sent as `Authorization: Bearer`")),
    responses(
        (status = 200, description = "Action done", body = ActionResults),
        (status = 400, description = "Not JSON (kept in quarantine)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "Wrong shape (kept in quarantine)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn ultimate_actions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = state.config.ultimate.webhook_token.clone();
    let ingested = ingest(
        &state,
        &req,
        payload,
        Platform::Ultimate,
        (&token, &["token"]),
        sources::ultimate::parse_action,
    )
    .await?;
    let action = sources::ultimate::action_request(&ingested.value)?;
    let conversation_id = ingested.outcomes.last().and_then(|o| o.conversation_id);
    let results = crate::handoff::run_action(&state, &action, conversation_id).await?;
    Ok(HttpResponse::Ok().json(ActionResults { results }))
}

/// Aivo Live webhook: `attended`, `transfer`, `messageToClient`, `close`.
#[utoipa::path(
    post, path = "/webhooks/aivo-live", tag = "webhooks",
    request_body(content = Object, description = "`{name, roomId, timestamp, botId, eventTime, data}`"),
    params(("token" = Option<String>, Query, description = "Webhook token, when not sent as `Authorization: Bearer`")),
    responses(
        (status = 200, description = "Stored (or `duplicate: true`)", body = Accepted),
        (status = 202, description = "Unknown event name, stored as `aivo_live.unknown`", body = Accepted),
        (status = 400, description = "Not JSON (kept in quarantine)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "Wrong shape (kept in quarantine)", body = ErrorBody),
        (status = 503, description = "Store unavailable: retry", body = ErrorBody),
    )
)]
pub async fn aivo_live(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = state.config.aivo_live.webhook_token.clone();
    receive(
        &state,
        &req,
        payload,
        Platform::AivoLive,
        (&token, &["token"]),
        sources::aivo_live::parse,
        false,
    )
    .await
}

/// VCC Live chat webhook: one closed chat with its whole transcript.
#[utoipa::path(
    post, path = "/webhooks/vcc/chat", tag = "webhooks",
    request_body(content = Object, description = "VCC Live \"Chat (Async)\" body"),
    params(("secret-key" = Option<String>, Query, description = "VCC's secret key (`[vcc] secret_key`)")),
    responses(
        (status = 200, description = "Stored (or `duplicate: true`)", body = Accepted),
        (status = 400, description = "Not JSON (kept in quarantine)", body = ErrorBody),
        (status = 401, description = "Missing or wrong secret key", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "Wrong shape (kept in quarantine)", body = ErrorBody),
        (status = 503, description = "Store unavailable: retry", body = ErrorBody),
    )
)]
pub async fn vcc_chat(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = state.config.vcc.secret_key.clone();
    let token = (&token, &["secret-key", "token"][..]);
    receive(&state, &req, payload, Platform::Vcc, token, sources::vcc::parse, true).await
}

/// Bright Pattern chat events for one chat: `{"events": [...]}` or one event object.
#[utoipa::path(
    post, path = "/webhooks/bright-pattern/{chat_id}", tag = "webhooks",
    request_body(content = Object, description = "`{\"events\": [...]}` (Get New Chat Events shape) or one event"),
    params(
        ("chat_id" = String, Path, description = "Bright Pattern chat id"),
        ("token" = Option<String>, Query, description = "Webhook token, when not sent as `Authorization: Bearer`"),
    ),
    responses(
        (status = 200, description = "Stored; `events` counts them, `event_id`/`seq` are the last one's", body = Accepted),
        (status = 202, description = "Only unknown events, stored as `bright_pattern.unknown`", body = Accepted),
        (status = 400, description = "Not JSON (kept in quarantine)", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "Wrong shape (kept in quarantine)", body = ErrorBody),
        (status = 503, description = "Store unavailable: retry", body = ErrorBody),
    )
)]
pub async fn bright_pattern(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = state.config.bright_pattern.webhook_token.clone();
    let token = (&token, &["token"][..]);
    receive(
        &state,
        &req,
        payload,
        Platform::BrightPattern,
        token,
        sources::bright_pattern::parse,
        true,
    )
    .await
}
