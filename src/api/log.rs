//! The global event feed, the quarantine, and health.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::chain::ChainHead;
use crate::model::StoredEvent;
use crate::quarantine::{QuarantineDetail, QuarantineSummary};

/// Paging of the global log.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Events with `seq > after_seq` (default 0).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// At most this many (default 100); fewer when the page would pass `server.max_answer_bytes`.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct EventFeed {
    /// Events in `seq` order.
    pub items: Vec<StoredEvent>,
    /// Pass as `after_seq` for the next page (equals the request's `after_seq` when nothing new).
    pub next_after_seq: i64,
    /// The newest event of the whole log and its hash, read after the page: pin it to check later
    /// (`handoff-ledger verify --pinned SEQ:HASH`) that nothing up to it was changed. Null while the log is empty.
    pub chain_head: Option<ChainHead>,
}

/// Paging of the quarantine.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuarantineParams {
    /// Entries with `id < before` (for the next page).
    pub before: Option<i64>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Refused deliveries, newest first (metadata only: each body at `GET /v1/quarantine/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct QuarantineList {
    /// Entries.
    pub items: Vec<QuarantineSummary>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
}

/// Liveness / readiness answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `unavailable`.
    pub status: String,
}

fn check_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::parameter(
            "limit",
            format!("`limit` must be between 1 and {max}"),
        ))
    }
}

/// The global event log in `seq` order (for consumers that tail it).
#[utoipa::path(
    get, path = "/v1/events", tag = "log",
    params(FeedParams),
    responses(
        (status = 200, description = "Events after `after_seq`", body = EventFeed),
        (status = 400, description = "Bad parameter (`invalid_parameter`)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn feed(state: web::Data<AppState>, params: web::Query<FeedParams>) -> Result<HttpResponse, ApiError> {
    let after = params.after_seq.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::parameter("after_seq", "`after_seq` must not be negative"));
    }
    let limit = check_limit(params.limit, 100, 1000)?;
    let mut items = state.store.events_after(after, limit).await?;
    super::fit_bytes(&mut items, state.config.server.max_answer_bytes);
    let next_after_seq = items.last().map(|e| e.seq).unwrap_or(after);
    let chain_head = state.store.chain_head().await?;
    Ok(HttpResponse::Ok().json(EventFeed {
        items,
        next_after_seq,
        chain_head,
    }))
}

/// Deliveries answered 400/422 (and deliveries the writer could not project), newest first: when, where,
/// the error, headers, and the body's size and SHA-256. The body itself is at `GET /v1/quarantine/{id}`.
#[utoipa::path(
    get, path = "/v1/quarantine", tag = "log",
    params(QuarantineParams),
    responses(
        (status = 200, description = "Refused deliveries", body = QuarantineList),
        (status = 400, description = "Bad parameter (`invalid_parameter`)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn quarantine(
    state: web::Data<AppState>,
    params: web::Query<QuarantineParams>,
) -> Result<HttpResponse, ApiError> {
    let limit = check_limit(params.limit, 50, 500)?;
    let mut items = state.store.quarantine_summaries(limit, params.before).await?;
    attach_redrives(&state, items.iter_mut()).await?;
    let next_before = if items.len() as u32 == limit {
        items.last().map(|q| q.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(QuarantineList { items, next_before }))
}

/// One refused delivery with the kept part of its body (the first 64 KiB at most; `body_truncated` says
/// when the body was longer, `body_size` and `body_sha256` describe the whole of it).
#[utoipa::path(
    get, path = "/v1/quarantine/{id}", tag = "log",
    params(("id" = i64, Path, description = "Quarantine entry id")),
    responses(
        (status = 200, description = "The entry with its body", body = QuarantineDetail),
        (status = 400, description = "The id is not an integer (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "No such entry (or deleted by retention)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn quarantine_entry(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let mut entry = state
        .store
        .quarantine_entry(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no quarantine entry {id}")))?;
    attach_redrives(&state, std::iter::once(&mut entry.summary)).await?;
    Ok(HttpResponse::Ok().json(entry))
}

/// Fills each entry's `redrives` (one query for a page).
pub(crate) async fn attach_redrives<'a>(
    state: &AppState,
    entries: impl Iterator<Item = &'a mut QuarantineSummary>,
) -> Result<(), ApiError> {
    let mut entries: Vec<&mut QuarantineSummary> = entries.collect();
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    for (id, redrive) in state.store.redrives_of(&ids).await? {
        if let Some(entry) = entries.iter_mut().find(|e| e.id == id) {
            entry.redrives.push(redrive);
        }
    }
    Ok(())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".into() })
}

/// Readiness: the writer runs and the store answers.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Store unreachable, or the writer has stopped", body = ErrorBody),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.writer.is_running() {
        return Err(ApiError::Unavailable(
            "the writer has stopped; the service is shutting down".into(),
        ));
    }
    state.store.ping().await?;
    Ok(HttpResponse::Ok().json(Health { status: "ok".into() }))
}
