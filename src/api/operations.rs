//! Operators' repairs: run a quarantined delivery through today's parsers again (after a fix), and re-send
//! an outbound command that gave up. Both are recorded: the redrive on its quarantine entry (and, when it
//! reaches a conversation, as a `ledger.redriven` event), the retry as a new `ledger.command`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::webhooks::{self, Accepted, ActionResult, ActionResults, Endpoint, TeamOnline};
use super::AppState;
use crate::ingest::{Inbound, Ingested};
use crate::model::Redrive;
use crate::outbound::CommandRetry;
use crate::sources::{self, ledger};
use crate::telemetry::{self, WebhookOutcome};

fn key_name(req: &HttpRequest) -> Option<String> {
    super::auth::principal_name(req)
}

/// Runs a kept delivery through today's parsers, as if its platform had sent it again now.
///
/// The answer is what the webhook answers now: `200`/`202` with the stored events (a second redrive of a
/// delivery that was appended answers `duplicate: true`), or the `400`/`422` it is refused with again.
/// Either way the entry records the outcome (`redrives` of `GET /v1/quarantine`); nothing is quarantined
/// twice. An entry whose body was kept truncated (over 64 KiB) cannot be reproduced and is refused (409). A redriven `escalate` is recorded and relayed but does not queue synchronously (the bot stopped
/// waiting long ago): hand the conversation over with `POST /v1/conversations/{id}/handoff`.
#[utoipa::path(
    post, path = "/v1/quarantine/{id}/redrive", tag = "log",
    params(("id" = i64, Path, description = "Quarantine entry id")),
    responses(
        (status = 200, description = "Stored now, or `duplicate: true` when already stored (the webhook's own answer: `Accepted`, or `isOnline` / action `results`)", body = Accepted),
        (status = 202, description = "Stored as `<platform>.unknown`", body = Accepted),
        (status = 400, description = "Still not JSON (recorded on the entry)", body = ErrorBody),
        (status = 404, description = "No such entry", body = ErrorBody),
        (status = 409, description = "The entry was posted to an endpoint this version does not serve, or only part of its body was kept", body = ErrorBody),
        (status = 422, description = "Still refused by the parser (recorded on the entry)", body = ErrorBody),
        (status = 503, description = "Store unavailable: retry", body = ErrorBody),
    )
)]
pub async fn redrive(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let not_found = || ApiError::NotFound(format!("no quarantine entry {id}"));
    let entry = state.store.quarantine_entry(id).await?.ok_or_else(not_found)?.summary;
    if entry.body_truncated {
        return Err(ApiError::Conflict(format!(
            "entry {id} kept only the first part of its {}-byte body (retention.quarantine_body_bytes): the \
             delivery cannot be reproduced",
            entry.body_size
        )));
    }
    let raw = state.store.quarantined_body(id).await?.ok_or_else(not_found)?;
    let (endpoint, path_id) = webhooks::endpoint_of(&entry.path).ok_or_else(|| {
        ApiError::Conflict(format!(
            "entry {id} was posted to {}, which this version does not serve",
            entry.path
        ))
    })?;
    let inbound = Inbound {
        platform: endpoint.platform,
        origin: entry.path.clone(),
        received_at: entry.received_at,
        headers: entry.headers.clone(),
        body: raw,
        path_id: path_id.map(str::to_string),
        encryption_iv: None,
        parse: endpoint.parse,
        answered: None,
    };
    // A delivery without a key of its own gets the entry's: redriving it twice appends it once.
    let result = state
        .ingest
        .redrive(inbound, format!("quarantine-{id}"), &state.outbound)
        .await
        .map_err(ApiError::from);
    let outcome = webhooks::webhook_outcome(&result);
    telemetry::redrive(outcome);
    let key = key_name(&req);
    let (response, redrive) = match result {
        // Nothing happened: the store is down; the operator retries.
        Err(e) if outcome == WebhookOutcome::Unavailable => return Err(e),
        Err(e) => {
            let response = e.error_response();
            let redrive = Redrive {
                at: Utc::now(),
                status: response.status().as_u16(),
                outcome: outcome.as_str().to_string(),
                error_code: Some(e.code().to_string()),
                event_id: None,
                seq: None,
                conversation_id: None,
                key: key.clone(),
            };
            (response, redrive)
        }
        Ok(ingested) => {
            let response = redriven_answer(&state, &ingested, endpoint).await?;
            let last = ingested.outcomes.last();
            let redrive = Redrive {
                at: Utc::now(),
                status: response.status().as_u16(),
                outcome: outcome.as_str().to_string(),
                error_code: None,
                event_id: last.map(|o| o.event_id),
                seq: last.map(|o| o.seq),
                conversation_id: last.and_then(|o| o.conversation_id),
                key: key.clone(),
            };
            (response, redrive)
        }
    };
    state.store.record_redrive(id, &redrive).await?;
    if let Some(conversation_id) = redrive.conversation_id {
        let payload = json!({
            "quarantine_id": id,
            "path": entry.path,
            "outcome": redrive.outcome,
            "status": redrive.status,
            "event_id": redrive.event_id,
            "key": redrive.key,
        });
        let event = ledger::redriven(conversation_id, id, &payload, &redrive.outcome, redrive.at);
        state.writer.append(vec![event]).await?;
    }
    tracing::info!(
        quarantine_id = id,
        outcome = outcome.as_str(),
        status = redrive.status,
        key = key.as_deref().unwrap_or("-"),
        "quarantined delivery redriven"
    );
    Ok(response)
}

/// The webhook's answer to a redriven delivery (relayed by the pipeline like any other).
async fn redriven_answer(state: &AppState, ingested: &Ingested, endpoint: &Endpoint) -> Result<HttpResponse, ApiError> {
    if endpoint.actions {
        let action = sources::ultimate::action_request(&ingested.value)?;
        let conversation_id = ingested.outcomes.last().and_then(|o| o.conversation_id);
        let results = state.outbound.run_action(&action, conversation_id).await?;
        let results = results.into_iter().map(ActionResult::from).collect();
        return Ok(HttpResponse::Ok().json(ActionResults { results }));
    }
    let kind = ingested.parsed.events.first().map(|e| e.kind.as_str());
    if kind == Some(sources::ultimate::IS_TEAM_ONLINE) {
        let team = sources::ultimate::team_of(&ingested.value);
        let is_online = state.outbound.team_online(team.as_deref()).await;
        return Ok(HttpResponse::Ok().json(TeamOnline { is_online }));
    }
    Ok(webhooks::answer(ingested, endpoint.multi))
}

/// Re-sends an outbound command that ended `failed` or `gave_up` (a queue call, a widget update, a relayed
/// message, an end of chat), as a new command recorded with `retry_of`, through the outbox (in order with
/// the conversation's other commands, with its retries and backoff). Its result shows in the
/// conversation's events as for any command.
///
/// Idempotent: while an attempt is pending, asking again answers it with `duplicate: true`. Retrying a
/// command that succeeded (or whose latest retry did) is `409`.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/commands/{command_id}/retry", tag = "conversations",
    params(
        ("id" = Uuid, Path, description = "Conversation id"),
        ("command_id" = String, Path, description = "`command_id` of a `ledger.command` event of the conversation"),
    ),
    responses(
        (status = 202, description = "Re-sent (or already pending: `duplicate: true`)", body = CommandRetry),
        (status = 400, description = "Bad path parameter", body = ErrorBody),
        (status = 404, description = "No such conversation or command", body = ErrorBody),
        (status = 409, description = "The command succeeded, or cannot be read by this version", body = ErrorBody),
        (status = 503, description = "Store unavailable: retry", body = ErrorBody),
    )
)]
pub async fn retry_command(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(Uuid, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, command_id) = path.into_inner();
    let conversation = state
        .store
        .get_conversation(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no conversation {id}")))?;
    let retry = state.outbound.retry(conversation.id, &command_id).await?;
    if !retry.duplicate {
        telemetry::command_retried();
    }
    tracing::info!(
        conversation_id = %conversation.id,
        command_id = %retry.command_id,
        retry_of = %retry.retry_of,
        duplicate = retry.duplicate,
        key = key_name(&req).as_deref().unwrap_or("-"),
        "command retry requested"
    );
    Ok(HttpResponse::Accepted().json(retry))
}
