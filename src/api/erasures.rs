//! Erasure of a person's conversation, answered with a certificate (see `crate::erasure`).
//!
//! Scope: both endpoints need the `admin` scope (API.md, "Access control"). The key check lands with
//! the API keys (issue of engineer `auth`): until then these routes are guarded like every other
//! `/v1/*` route.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::erasure::{ErasureCertificate, ErasureTarget};
use crate::model::StreamKey;

/// What to erase: exactly one of a conversation id or a stream key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// A conversation id (an id absorbed by a merge resolves to the surviving conversation).
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
    /// A stream key: the conversation it belongs to is erased.
    #[serde(default)]
    pub stream: Option<StreamKey>,
}

impl TryFrom<ErasureRequest> for ErasureTarget {
    type Error = ApiError;

    fn try_from(request: ErasureRequest) -> Result<Self, Self::Error> {
        match (request.conversation_id, request.stream) {
            (Some(id), None) => Ok(ErasureTarget::Conversation(id)),
            (None, Some(stream)) if !stream.external_id.is_empty() => Ok(ErasureTarget::Stream(stream)),
            (None, Some(_)) => Err(ApiError::InvalidPayload {
                message: "`stream.external_id` must not be empty".into(),
                field: "stream.external_id".into(),
            }),
            _ => Err(ApiError::InvalidPayload {
                message: "give exactly one of `conversation_id` or `stream`".into(),
                field: "conversation_id".into(),
            }),
        }
    }
}

/// Erases a person's conversation: every payload of its events becomes a stub naming the original's
/// SHA-256, transcript texts, authors, urls, attributes and kept headers become null, its quarantined
/// deliveries are deleted and ClickHouse rows lose its stream ids. States, timers, SLA statuses,
/// dispositions and report counts are kept. Erasing again with nothing new answers the earlier certificate.
#[utoipa::path(
    post, path = "/v1/erasures", tag = "erasures",
    request_body = ErasureRequest,
    responses(
        (status = 201, description = "Erased: the certificate", body = ErasureCertificate),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 404, description = "No such conversation or stream", body = ErrorBody),
        (status = 422, description = "Wrong shape", body = ErrorBody),
        (status = 503, description = "Store unavailable: retry", body = ErrorBody),
    )
)]
pub async fn create(state: web::Data<AppState>, body: web::Json<ErasureRequest>) -> Result<HttpResponse, ApiError> {
    let target = ErasureTarget::try_from(body.into_inner())?;
    let certificate = state
        .writer
        .erase(target.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(not_found_message(&target)))?;
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/v1/erasures/{}", certificate.id),
        ))
        .json(certificate))
}

/// The certificate of an erasure: the events whose payloads were replaced, each with the SHA-256 of the
/// original, and the chain head that records the erasure (`ledger.erased`).
#[utoipa::path(
    get, path = "/v1/erasures/{id}", tag = "erasures",
    params(("id" = Uuid, Path, description = "Erasure id")),
    responses(
        (status = 200, description = "The certificate", body = ErasureCertificate),
        (status = 400, description = "Not a UUID (`invalid_parameter`)", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn get(state: web::Data<AppState>, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let certificate = state
        .store
        .erasure(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no erasure {id}")))?;
    Ok(HttpResponse::Ok().json(certificate))
}

fn not_found_message(target: &ErasureTarget) -> String {
    match target {
        ErasureTarget::Conversation(id) => format!("no conversation {id}"),
        ErasureTarget::Stream(s) => format!("no conversation has the stream {}:{}", s.platform, s.external_id),
    }
}
