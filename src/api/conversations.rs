//! Conversations: list, one, transcript (json, text, csv, jsonl), raw events, and the two commands
//! support tooling posts (`messages`, `handoff`).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::webhooks::Accepted;
use super::AppState;
use crate::model::{Conversation, Disposition, HandoffState, Message, Party, Platform, SlaStatus, StoredEvent};
use crate::sources::ledger;
use crate::store::{ConversationFilter, MessageCursor};
use crate::transcript::TranscriptFormat;

/// Filters and paging of `GET /v1/conversations`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Conversations with a stream of this platform.
    #[param(value_type = Option<Platform>)]
    pub platform: Option<String>,
    /// Conversations with a stream of this external id.
    pub external_id: Option<String>,
    /// Handoff state.
    #[param(value_type = Option<HandoffState>)]
    pub state: Option<String>,
    /// Disposition.
    #[param(value_type = Option<Disposition>)]
    pub disposition: Option<String>,
    /// SLA status (`pending` and `breached` are judged at the time of the request).
    #[param(value_type = Option<SlaStatus>)]
    pub sla_status: Option<String>,
    /// Queue of the latest handoff.
    pub queue: Option<String>,
    /// Name of an agent who handled it.
    pub agent: Option<String>,
    /// RFC 3339; `started_at >= since`.
    #[param(value_type = Option<DateTime<Utc>>)]
    pub since: Option<String>,
    /// RFC 3339; `started_at < until`.
    #[param(value_type = Option<DateTime<Utc>>)]
    pub until: Option<String>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^-?[0-9]{1,18}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// A page of conversations, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ConversationList {
    /// The conversations.
    pub items: Vec<Conversation>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transcript {
    /// The conversation (the survivor, when an absorbed id was asked for).
    pub conversation_id: Uuid,
    /// Lines ordered by `at`, then `seq`.
    pub messages: Vec<Message>,
    /// Pass as `cursor` for the lines that follow; null when there are none (always null without `limit`).
    pub next_cursor: Option<String>,
}

/// Format and paging of a transcript.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TranscriptParams {
    /// `json` (default), `text`, `csv`, `jsonl` or `html` (a printable page).
    #[param(value_type = Option<TranscriptFormat>)]
    pub format: Option<String>,
    /// At most this many lines (1 to 10000; default 10000), and fewer when they would pass
    /// `server.max_answer_bytes`: the rest follows with the cursor.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (for `text`, `csv` and `jsonl`: the `x-next-cursor` answer header).
    #[param(pattern = r"^-?[0-9]{1,18}_[0-9]{1,18}_[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// Paging of a conversation's raw events.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only events with `seq > after_seq` (the `next_after_seq` of a previous answer).
    pub after_seq: Option<i64>,
    /// At most this many events (1 to 10000); default: every event.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// Raw events of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct EventList {
    /// Events in `seq` order, raw payloads included.
    pub items: Vec<StoredEvent>,
    /// Pass as `cursor` for the events that follow; null when there are none (always null without `limit`,
    /// unless the answer stopped at `server.max_answer_bytes`).
    pub next_cursor: Option<String>,
    /// Set when the answer stopped at `server.max_answer_bytes`: pass it as `after_seq` for the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after_seq: Option<i64>,
}

/// The largest page of transcript lines or events one request may ask for.
const MAX_PAGE: u32 = 10_000;

fn page_limit(limit: Option<u32>) -> Result<Option<u32>, ApiError> {
    match limit {
        Some(l) if !(1..=MAX_PAGE).contains(&l) => Err(ApiError::parameter(
            "limit",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        )),
        other => Ok(other),
    }
}

fn bad_cursor() -> ApiError {
    ApiError::parameter(
        "cursor",
        "`cursor` must be a `next_cursor` value returned by this endpoint",
    )
}

fn encode_line_cursor((at, seq, idx): MessageCursor) -> String {
    format!("{at}_{seq}_{idx}")
}

fn decode_line_cursor(cursor: &str) -> Result<MessageCursor, ApiError> {
    let mut parts = cursor.split('_').map(|p| p.parse::<i64>().map_err(|_| bad_cursor()));
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(at), Some(seq), Some(idx), None) => Ok((at?, seq?, idx?)),
        _ => Err(bad_cursor()),
    }
}

/// `POST /v1/conversations/{id}/messages` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct PostMessage {
    /// Who speaks: `visitor` (relayed to the live agent), or `agent`/`system` for notes.
    pub party: Party,
    /// The text (not blank).
    #[schema(min_length = 1, pattern = r"\S")]
    pub text: String,
}

/// `POST /v1/conversations/{id}/handoff` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct PostHandoff {
    /// Team to hand over to (`[routing.teams.<name>]`); the default route when absent.
    pub team: Option<String>,
}

fn parse_time(name: &str, value: Option<&String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::parameter(name, format!("`{name}` must be an RFC 3339 time: {e}")))
        })
        .transpose()
}

/// Reads an enumerated query parameter into its type, naming the parameter and the allowed values on error.
pub(crate) fn enum_param<T: DeserializeOwned>(name: &str, value: Option<&str>) -> Result<Option<T>, ApiError> {
    value
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.to_string()))
                .map_err(|e| ApiError::parameter(name, format!("`{name}`: {e}")))
        })
        .transpose()
}

/// A page position as the `cursor` parameter reads it.
pub(crate) fn encode_cursor((micros, id): (i64, Uuid)) -> String {
    format!("{micros}_{id}")
}

fn decode_cursor(cursor: &str) -> Result<(i64, Uuid), ApiError> {
    let bad = || {
        ApiError::parameter(
            "cursor",
            "`cursor` must be a `next_cursor` value returned by this endpoint",
        )
    };
    let (micros, id) = cursor.split_once('_').ok_or_else(bad)?;
    Ok((micros.parse().map_err(|_| bad())?, id.parse().map_err(|_| bad())?))
}

impl ListParams {
    /// Validates the parameters into the store's filter (`400 invalid_parameter` naming the bad one).
    pub(crate) fn into_filter(self) -> Result<ConversationFilter, ApiError> {
        let platform = enum_param::<Platform>("platform", self.platform.as_deref())?;
        let state = enum_param::<HandoffState>("state", self.state.as_deref())?;
        let disposition = enum_param::<Disposition>("disposition", self.disposition.as_deref())?;
        let sla_status = enum_param::<SlaStatus>("sla_status", self.sla_status.as_deref())?;
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::parameter("limit", "`limit` must be between 1 and 500"));
        }
        Ok(ConversationFilter {
            since: parse_time("since", self.since.as_ref())?,
            until: parse_time("until", self.until.as_ref())?,
            after: self.cursor.as_deref().map(decode_cursor).transpose()?,
            platform,
            external_id: self.external_id,
            state,
            disposition,
            sla_status,
            now: Some(Utc::now()),
            queue: self.queue,
            agent: self.agent,
            limit,
        })
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no conversation {id}"))
}

/// Lists conversations, newest first, with filters and cursor pagination.
#[utoipa::path(
    get, path = "/v1/conversations", tag = "conversations",
    params(ListParams),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationList),
        (status = 400, description = "Bad query parameter (`invalid_parameter`)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn list(state: web::Data<AppState>, params: web::Query<ListParams>) -> Result<HttpResponse, ApiError> {
    let filter = params.into_inner().into_filter()?;
    let now = filter.now.unwrap_or_else(Utc::now);
    let page = state.store.list_conversations(&filter).await?;
    let mut items: Vec<Conversation> = page.items.into_iter().map(|c| c.as_of(now)).collect();
    let next = if super::fit_bytes(&mut items, state.config.server.max_answer_bytes) {
        // Cut short by size: continue after the last conversation given.
        items.last().map(|c| (c.started_at.timestamp_micros(), c.id))
    } else {
        page.next
    };
    Ok(HttpResponse::Ok().json(ConversationList {
        items,
        next_cursor: next.map(encode_cursor),
    }))
}

/// One conversation; an id absorbed by a merge resolves to the surviving conversation.
#[utoipa::path(
    get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation", body = Conversation),
        (status = 400, description = "Not a UUID (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn get(state: web::Data<AppState>, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let conversation = state.store.get_conversation(id).await?.ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok().json(conversation.as_of(Utc::now())))
}

/// The merged transcript: every content message from every platform in `at` order.
#[utoipa::path(
    get, path = "/v1/conversations/{id}/transcript", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id"), TranscriptParams),
    responses(
        (status = 200, description = "The transcript: JSON by default; `format=text` (text/plain), `csv` (text/csv), `jsonl` (application/x-ndjson, one Message per line), `html` (a self-contained printable page: the conversation's platforms, queue, agents, timers, SLA status and disposition, then every line with time, party and author)",
            content(
                (Transcript = "application/json"),
                (String = "text/plain"),
                (String = "text/csv"),
                (Message = "application/x-ndjson"),
                (String = "text/html"),
            )),
        (status = 400, description = "Bad `format`, `limit`, `cursor` or id (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn transcript(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    params: web::Query<TranscriptParams>,
) -> Result<HttpResponse, ApiError> {
    let format = enum_param::<TranscriptFormat>("format", params.format.as_deref())?.unwrap_or_default();
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(decode_line_cursor).transpose()?;
    render_transcript(&state, id.into_inner(), format, after, limit).await
}

/// A conversation's transcript in one of its renderings (the API and the console's exports): the lines
/// after `after`, at most `limit` (None: [`MAX_PAGE`]) and no more than fit in `server.max_answer_bytes`
/// (an export is bounded like a list). The next page's cursor is `next_cursor` in JSON and the
/// `x-next-cursor` answer header in every format.
pub(crate) async fn render_transcript(
    state: &AppState,
    id: Uuid,
    format: TranscriptFormat,
    after: Option<MessageCursor>,
    limit: Option<u32>,
) -> Result<HttpResponse, ApiError> {
    let rows = limit.unwrap_or(MAX_PAGE);
    let mut page = state
        .store
        .transcript_page(id, after, Some(rows))
        .await?
        .ok_or_else(|| not_found(id))?;
    let fitting = super::fitting_len(&page.messages, state.config.server.max_answer_bytes);
    if fitting < page.messages.len() {
        // Read again up to the last line that fits, so that the store gives that line's cursor.
        let fitting = u32::try_from(fitting).unwrap_or(rows);
        page = state
            .store
            .transcript_page(id, after, Some(fitting))
            .await?
            .ok_or_else(|| not_found(id))?;
    }
    let (conversation_id, messages) = (page.conversation_id, page.messages);
    let next_cursor = page.next.map(encode_line_cursor);
    let mut answer = HttpResponse::Ok();
    if let Some(next) = &next_cursor {
        answer.insert_header(("x-next-cursor", next.as_str()));
    }
    Ok(match format {
        TranscriptFormat::Text => answer
            .content_type("text/plain; charset=utf-8")
            .body(crate::transcript::to_text(&messages)),
        TranscriptFormat::Csv => answer
            .content_type("text/csv; charset=utf-8")
            .body(crate::transcript::to_csv(&messages).map_err(ApiError::Unexpected)?),
        TranscriptFormat::Jsonl => answer
            .content_type("application/x-ndjson")
            .body(crate::transcript::to_jsonl(&messages).map_err(ApiError::Unexpected)?),
        TranscriptFormat::Html => {
            let conversation = state
                .store
                .get_conversation(conversation_id)
                .await?
                .ok_or_else(|| not_found(id))?;
            let now = Utc::now();
            answer
                .content_type("text/html; charset=utf-8")
                .insert_header(("content-security-policy", SELF_CONTAINED_PAGE_CSP))
                .body(crate::transcript::html::page(&conversation.as_of(now), &messages, now))
        }
        TranscriptFormat::Json => answer.json(Transcript {
            conversation_id,
            messages,
            next_cursor,
        }),
    })
}

/// The printable page may use its own inline styles and nothing else: no script, no request anywhere.
pub(crate) const SELF_CONTAINED_PAGE_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// The raw events of a conversation in `seq` order, payloads as received.
#[utoipa::path(
    get, path = "/v1/conversations/{id}/events", tag = "conversations",
    params(("id" = Uuid, Path, description = "Conversation id"), EventsParams),
    responses(
        (status = 200, description = "Its events", body = EventList),
        (status = 400, description = "Bad `limit`, `cursor` or id (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn events(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    params: web::Query<EventsParams>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let params = params.into_inner();
    let limit = page_limit(params.limit)?;
    let after = match params.cursor.as_deref() {
        Some(c) => c.parse::<i64>().map_err(|_| bad_cursor())?,
        None => params.after_seq.unwrap_or(0),
    };
    // One more than asked: tells whether another page follows.
    let mut items = state
        .store
        .conversation_events_page(id, after, limit.map(|l| l + 1))
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut next_cursor = match limit {
        Some(l) if items.len() > l as usize => {
            items.truncate(l as usize);
            items.last().map(|e| e.seq.to_string())
        }
        _ => None,
    };
    let cut = super::fit_bytes(&mut items, state.config.server.max_answer_bytes);
    let next_after_seq = if cut { items.last().map(|e| e.seq) } else { None };
    if cut {
        next_cursor = next_after_seq.map(|seq| seq.to_string());
    }
    Ok(HttpResponse::Ok().json(EventList {
        items,
        next_cursor,
        next_after_seq,
    }))
}

fn idempotency_key(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Records a message; a visitor message is relayed to the live agent when the conversation is handed off.
/// An `Idempotency-Key` header makes a retried post one message.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/messages", tag = "commands",
    params(("id" = Uuid, Path, description = "Conversation id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried post one message")),
    request_body = PostMessage,
    responses(
        (status = 200, description = "Recorded", body = Accepted),
        (status = 400, description = "Not JSON, not `application/json`, or the id is not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Wrong shape, or an empty `text`", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn post_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let conversation = state.store.get_conversation(id).await?.ok_or_else(|| not_found(id))?;
    if body.text.trim().is_empty() {
        return Err(ApiError::InvalidPayload {
            message: "`text` must not be empty".into(),
            field: "text".into(),
        });
    }
    let key = idempotency_key(&req);
    let event = ledger::api_message(conversation.id, body.party, &body.text, key.as_deref(), Utc::now());
    let outcomes = super::append(&state, vec![event]).await?;
    // A message to the live agent, when handed off: the commands its append committed are sent.
    state.outbound.relay(&outcomes).await;
    Ok(HttpResponse::Ok().json(Accepted::from_outcomes(&outcomes, false)))
}

/// Hands the conversation over to a live team, as the bot's `escalate` does; same answers.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/handoff", tag = "commands",
    params(("id" = Uuid, Path, description = "Conversation id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried post one request")),
    request_body = PostHandoff,
    responses(
        (status = 200, description = "Handed over", body = Accepted),
        (status = 400, description = "Not JSON, not `application/json`, or the id is not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Wrong shape", body = ErrorBody),
        (status = 502, description = "The live backend refused", body = ErrorBody),
        (status = 503, description = "No route, or backend unavailable", body = ErrorBody),
        (status = 504, description = "The live backend did not answer within the deadline", body = ErrorBody),
    )
)]
pub(crate) async fn post_handoff(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
    body: web::Json<PostHandoff>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let conversation = state.store.get_conversation(id).await?.ok_or_else(|| not_found(id))?;
    let key = idempotency_key(&req);
    let event = ledger::api_handoff(conversation.id, body.team.as_deref(), key.as_deref(), Utc::now());
    let outcomes = super::append(&state, vec![event]).await?;
    state
        .outbound
        .escalate_requested(&conversation, body.team.as_deref(), &outcomes)
        .await?;
    Ok(HttpResponse::Ok().json(Accepted::from_outcomes(&outcomes, false)))
}
