//! The HTTP API: thin actix-web handlers (extract, call, map errors), documented with utoipa.

pub mod auth;
pub mod conversations;
pub mod erasures;
pub mod error;
pub mod keys;
pub mod limits;
pub mod log;
pub mod observe;
pub mod openapi;
pub mod operations;
pub mod reports;
pub mod webhooks;

use std::sync::Arc;

use actix_web::web;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::store::Store;
use crate::writer::Writer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The event log and projections (reads).
    pub store: Arc<dyn Store>,
    /// The single writer (appends).
    pub writer: Writer,
    /// Configuration.
    pub config: Arc<Config>,
    /// The inbound pipeline: parse, quarantine, append, relay.
    pub ingest: crate::ingest::Pipeline,
    /// The outbound driver: synchronous escalations, relays, the outbox and Bright Pattern polls.
    pub outbound: crate::outbound::Outbound,
    /// The API keys the service accepts (the access check of [`auth::require_key`]).
    pub keys: Arc<crate::auth::KeyRing>,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(error::query_error_handler))
        .app_data(web::PathConfig::default().error_handler(error::path_error_handler))
        .app_data(
            web::JsonConfig::default()
                .limit(65_536)
                .error_handler(error::json_error_handler),
        )
        .route(
            "/webhooks/ultimate/converse",
            web::post().to(webhooks::ultimate_converse),
        )
        .route("/webhooks/ultimate/actions", web::post().to(webhooks::ultimate_actions))
        .route("/webhooks/aivo-live", web::post().to(webhooks::aivo_live))
        .route("/webhooks/vcc/chat", web::post().to(webhooks::vcc_chat))
        .route(
            "/webhooks/bright-pattern/{chat_id}",
            web::post().to(webhooks::bright_pattern),
        )
        .route("/v1/conversations", web::get().to(conversations::list))
        .route("/v1/conversations/{id}", web::get().to(conversations::get))
        .route(
            "/v1/conversations/{id}/transcript",
            web::get().to(conversations::transcript),
        )
        .route("/v1/conversations/{id}/events", web::get().to(conversations::events))
        .route(
            "/v1/conversations/{id}/messages",
            web::post().to(conversations::post_message),
        )
        .route(
            "/v1/conversations/{id}/handoff",
            web::post().to(conversations::post_handoff),
        )
        .service(reports::sla_report)
        .service(reports::dispositions_report)
        .service(reports::conversations_csv_report)
        .route("/v1/keys", web::post().to(keys::create))
        .route("/v1/keys", web::get().to(keys::list))
        .route("/v1/keys/{name}", web::delete().to(keys::revoke))
        .route("/v1/events", web::get().to(log::feed))
        .route("/v1/quarantine", web::get().to(log::quarantine))
        .route("/v1/quarantine/{id}", web::get().to(log::quarantine_entry))
        .route("/v1/quarantine/{id}/redrive", web::post().to(operations::redrive))
        .route(
            "/v1/conversations/{id}/commands/{command_id}/retry",
            web::post().to(operations::retry_command),
        )
        .route("/v1/erasures", web::post().to(erasures::create))
        .route("/v1/erasures/{id}", web::get().to(erasures::get))
        .route("/healthz", web::get().to(log::healthz))
        .route("/readyz", web::get().to(log::readyz))
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi::ApiDoc::openapi()));
}

/// Registers `GET /metrics` (on the main listener, or alone on `server.metrics_bind`).
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(observe::metrics));
}

/// Hands a request's events to the writer and waits for their commit at most
/// `server.commit_deadline_ms` (see [`crate::ingest::Pipeline::append`]).
pub async fn append(
    state: &AppState,
    events: Vec<crate::model::NewEvent>,
) -> Result<Vec<crate::model::AppendOutcome>, error::ApiError> {
    Ok(state.ingest.append(events).await?)
}

/// Keeps the leading items whose JSON fits in `max_bytes` (always at least the first, so a page
/// moves on); true when some were cut. List answers stay bounded in bytes as well as rows.
pub fn fit_bytes<T: serde::Serialize>(items: &mut Vec<T>, max_bytes: usize) -> bool {
    let mut total = 0usize;
    let keep = items
        .iter()
        .position(|item| {
            total += serde_json::to_vec(item).map_or(0, |v| v.len() + 1);
            total > max_bytes
        })
        .map_or(items.len(), |cut| cut.max(1));
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

/// Answers unknown routes with the JSON error shape.
pub async fn not_found() -> Result<actix_web::HttpResponse, error::ApiError> {
    Err(error::ApiError::NotFound("no such endpoint".into()))
}
