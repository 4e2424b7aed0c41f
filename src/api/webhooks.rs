//! Inbound webhooks. Each endpoint is a row of [`Webhook`] (platform, token, query-parameter names,
//! parser); its token is checked by the [`Verified`] extractor before the handler runs, and the handler
//! hands the body to the inbound pipeline ([`crate::ingest`]: parse, quarantine a refusal, append,
//! relay) and answers after commit. Refused deliveries (400/422) are kept in the quarantine before the
//! answer goes out.

use std::collections::{BTreeMap, HashMap};
use std::future::{ready, Ready};
use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::web::{self, BytesMut};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};
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
use crate::config::{Config, Tokens};
use crate::ingest::{Inbound, Ingested, ParseFn};
use crate::model::{AppendOutcome, Platform};
use crate::outbound::actions::SessionVariable;
use crate::sources::{self, PayloadError};
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
    /// Present (true) when an event reused the delivery key of a stored one with a different body: it was
    /// appended as the newer version of that event (the event feed names it in `revision_of`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
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
            conflict: outcomes.iter().any(|o| o.conflict),
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

/// What the converse webhook answers with 200: the append outcome, or for `isTeamOnline` the team's availability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ConverseAnswer {
    /// Every event type but `isTeamOnline`.
    Accepted(Accepted),
    /// `isTeamOnline`.
    TeamOnline(TeamOnline),
}

/// One result of the actions webhook: becomes a bot session variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionResult {
    /// Variable name.
    pub key: String,
    /// Value: any JSON value (the bot stores strings, numbers and booleans; an unset value is null).
    pub value: Value,
    /// Whether the bot should sanitise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize: Option<bool>,
}

impl From<SessionVariable> for ActionResult {
    fn from(v: SessionVariable) -> Self {
        ActionResult {
            key: v.key,
            value: v.value,
            sanitize: None,
        }
    }
}

/// The actions webhook answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionResults {
    /// Session variables for the bot.
    pub results: Vec<ActionResult>,
}

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

/// One webhook endpoint: who sends it, how its token is configured and passed, how its body is parsed.
pub struct Endpoint {
    /// Where it is served; `{chat_id}` is the path parameter.
    pub path: &'static str,
    /// The sending platform.
    pub platform: Platform,
    /// The accepted tokens.
    pub tokens: fn(&Config) -> &Tokens,
    /// Query parameters that may carry the token when no `Authorization: Bearer` is sent.
    pub query_names: &'static [&'static str],
    /// The platform's parser.
    pub parse: ParseFn,
    /// Whether a body may carry several events (the answer then counts them).
    pub multi: bool,
    /// The Ultimate actions webhook: answered with the action's results.
    pub actions: bool,
}

/// A webhook endpoint, named by a type so that its token check is an extractor ([`Verified`]).
pub trait Webhook: 'static {
    /// Its row of the table.
    const ENDPOINT: Endpoint;
}

/// `POST /webhooks/ultimate/converse`.
pub struct UltimateConverse;
/// `POST /webhooks/ultimate/actions`.
pub struct UltimateActions;
/// `POST /webhooks/aivo-live`.
pub struct AivoLive;
/// `POST /webhooks/vcc/chat`.
pub struct VccChat;
/// `POST /webhooks/bright-pattern/{chat_id}`.
pub struct BrightPattern;

fn ultimate_tokens(c: &Config) -> &Tokens {
    &c.ultimate.webhook_token
}
fn aivo_live_tokens(c: &Config) -> &Tokens {
    &c.aivo_live.webhook_token
}
fn vcc_tokens(c: &Config) -> &Tokens {
    &c.vcc.secret_key
}
fn bright_pattern_tokens(c: &Config) -> &Tokens {
    &c.bright_pattern.webhook_token
}

// The table: platform, token, query-parameter names, parser, several events per body.
impl Webhook for UltimateConverse {
    const ENDPOINT: Endpoint = Endpoint {
        path: "/webhooks/ultimate/converse",
        platform: Platform::Ultimate,
        tokens: ultimate_tokens,
        query_names: &["token"],
        parse: sources::ultimate::parse,
        multi: false,
        actions: false,
    };
}
impl Webhook for UltimateActions {
    const ENDPOINT: Endpoint = Endpoint {
        path: "/webhooks/ultimate/actions",
        platform: Platform::Ultimate,
        tokens: ultimate_tokens,
        query_names: &["token"],
        parse: sources::ultimate::parse_action,
        multi: false,
        actions: true,
    };
}
impl Webhook for AivoLive {
    const ENDPOINT: Endpoint = Endpoint {
        path: "/webhooks/aivo-live",
        platform: Platform::AivoLive,
        tokens: aivo_live_tokens,
        query_names: &["token"],
        parse: sources::aivo_live::parse,
        multi: false,
        actions: false,
    };
}
impl Webhook for VccChat {
    const ENDPOINT: Endpoint = Endpoint {
        path: "/webhooks/vcc/chat",
        platform: Platform::Vcc,
        tokens: vcc_tokens,
        query_names: &["secret-key", "token"],
        parse: sources::vcc::parse,
        multi: true,
        actions: false,
    };
}
impl Webhook for BrightPattern {
    const ENDPOINT: Endpoint = Endpoint {
        path: "/webhooks/bright-pattern/{chat_id}",
        platform: Platform::BrightPattern,
        tokens: bright_pattern_tokens,
        query_names: &["token"],
        parse: sources::bright_pattern::parse,
        multi: true,
        actions: false,
    };
}

/// Proof that a request carries a valid token for webhook `W`: a handler taking it cannot run otherwise.
pub struct Verified<W: Webhook>(PhantomData<W>);

impl<W: Webhook> FromRequest for Verified<W> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let checked = match req.app_data::<web::Data<AppState>>() {
            Some(state) => check_token(
                req,
                (W::ENDPOINT.tokens)(&state.config),
                W::ENDPOINT.query_names,
                state.keys.access().webhooks_open_without_token(),
            ),
            None => Err(ApiError::Unexpected(anyhow::anyhow!(
                "the application state is missing"
            ))),
        };
        if let Err(ApiError::Unauthorized) = &checked {
            telemetry::webhook(W::ENDPOINT.platform, WebhookOutcome::Unauthorized);
        }
        ready(checked.map(|()| Verified(PhantomData)))
    }
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

/// Every webhook endpoint, in the order of the table above.
const ENDPOINTS: [&Endpoint; 5] = [
    &UltimateConverse::ENDPOINT,
    &UltimateActions::ENDPOINT,
    &AivoLive::ENDPOINT,
    &VccChat::ENDPOINT,
    &BrightPattern::ENDPOINT,
];

/// The endpoint a quarantined delivery was posted to (its stored `path`) with its path parameter, or
/// None for a path this version does not serve. Bright Pattern poll answers are kept as
/// `poll:/chats/{chat_id}/events` and are read as its webhook's.
pub fn endpoint_of(path: &str) -> Option<(&'static Endpoint, Option<&str>)> {
    let chat_id = |id: &'_ str| !id.is_empty() && !id.contains('/');
    if let Some(polled) = path
        .strip_prefix("poll:/chats/")
        .and_then(|p| p.strip_suffix("/events"))
    {
        return chat_id(polled).then_some((&BrightPattern::ENDPOINT, Some(polled)));
    }
    ENDPOINTS
        .into_iter()
        .find_map(|endpoint| match endpoint.path.strip_suffix("{chat_id}") {
            None => (endpoint.path == path).then_some((endpoint, None)),
            Some(prefix) => {
                let id = path.strip_prefix(prefix).filter(|id| chat_id(id))?;
                Some((endpoint, Some(id)))
            }
        })
}

/// The status a webhook answers a refused body with (kept with it in the quarantine).
fn refusal_status(error: &PayloadError) -> u16 {
    ApiError::from(error.clone()).status_code().as_u16()
}

/// Reads a verified webhook's body and runs it through the inbound pipeline; counted in
/// `ledger_webhooks_total` (a refused token is counted by [`Verified`]).
async fn ingest<W: Webhook>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    verified: Verified<W>,
) -> Result<Ingested, ApiError> {
    let result = ingest_delivery(state, req, payload, verified).await;
    telemetry::webhook(W::ENDPOINT.platform, webhook_outcome(&result));
    result
}

async fn ingest_delivery<W: Webhook>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    _: Verified<W>,
) -> Result<Ingested, ApiError> {
    let received_at = Utc::now();
    let server = &state.config.server;
    let body = read_body(req, payload, server.max_body_bytes, server.body_timeout_ms).await?;
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let inbound = Inbound {
        platform: W::ENDPOINT.platform,
        origin: req.path().to_string(),
        received_at,
        headers: kept_headers(req),
        body,
        path_id: req.match_info().get("chat_id").map(str::to_string),
        encryption_iv: query.get("iv").cloned(),
        parse: W::ENDPOINT.parse,
        answered: Some(refusal_status),
    };
    Ok(state.ingest.receive(inbound, &state.outbound).await?)
}

/// The whole script of a webhook answered with its append outcome: ingest (and relay), answer.
async fn receive<W: Webhook>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    verified: Verified<W>,
) -> Result<HttpResponse, ApiError> {
    let ingested = ingest(state, req, payload, verified).await?;
    Ok(answer(&ingested, W::ENDPOINT.multi))
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
        (status = 200, description = "Stored (or a redelivery: `duplicate: true`); `isTeamOnline` answers `{\"isOnline\": bool}`", body = ConverseAnswer),
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
    verified: Verified<UltimateConverse>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let ingested = ingest(&state, &req, payload, verified).await?;
    let kind = ingested
        .parsed
        .events
        .first()
        .map(|e| e.kind.as_str())
        .unwrap_or_default();
    match kind {
        sources::ultimate::IS_TEAM_ONLINE => {
            let team = sources::ultimate::team_of(&ingested.value);
            let is_online = state.outbound.team_online(team.as_deref()).await;
            Ok(HttpResponse::Ok().json(TeamOnline { is_online }))
        }
        sources::ultimate::ESCALATE => {
            let team = sources::ultimate::team_of(&ingested.value);
            state
                .outbound
                .escalate_appended(&ingested.outcomes, team.as_deref())
                .await?;
            Ok(answer(&ingested, false))
        }
        _ => Ok(answer(&ingested, false)),
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
    verified: Verified<UltimateActions>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let ingested = ingest(&state, &req, payload, verified).await?;
    let action = sources::ultimate::action_request(&ingested.value)?;
    let conversation_id = ingested.outcomes.last().and_then(|o| o.conversation_id);
    let results = state.outbound.run_action(&action, conversation_id).await?;
    let results = results.into_iter().map(ActionResult::from).collect();
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
    verified: Verified<AivoLive>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, verified).await
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
    verified: Verified<VccChat>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, verified).await
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
    verified: Verified<BrightPattern>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive(&state, &req, payload, verified).await
}
