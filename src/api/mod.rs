//! The HTTP API: thin actix-web handlers (extract, call, map errors), documented with utoipa.

pub mod conversations;
pub mod erasures;
pub mod error;
pub mod log;
pub mod openapi;
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
    /// Drives the handoff: synchronous escalations, relays, the outbox and Bright Pattern polls.
    pub handoff: crate::handoff::Handoff,
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
        .route("/v1/events", web::get().to(log::feed))
        .route("/v1/quarantine", web::get().to(log::quarantine))
        .route("/v1/erasures", web::post().to(erasures::create))
        .route("/v1/erasures/{id}", web::get().to(erasures::get))
        .route("/healthz", web::get().to(log::healthz))
        .route("/readyz", web::get().to(log::readyz))
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi::ApiDoc::openapi()));
}

/// Answers unknown routes with the JSON error shape.
pub async fn not_found() -> Result<actix_web::HttpResponse, error::ApiError> {
    Err(error::ApiError::NotFound("no such endpoint".into()))
}
