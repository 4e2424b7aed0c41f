//! The HTTP API: thin actix-web handlers (extract, call, map errors), documented with utoipa.

pub mod auth;
pub mod console;
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
pub mod startup;
pub mod webhooks;

use std::sync::Arc;

use actix_web::web;
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
    /// The support console's signed-in browsers.
    pub sessions: console::Sessions,
    /// The API keys the service accepts (the access check of [`auth::require_key`]).
    pub keys: Arc<crate::auth::KeyRing>,
}

/// A path and the methods it serves; any other method is answered `405 method_not_allowed` (JSON, with `Allow`).
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<actix_web::HttpResponse, _>(error::ApiError::MethodNotAllowed { allow })
    }))
}

/// Registers every route.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(error::query_error_handler))
        .app_data(web::PathConfig::default().error_handler(error::path_error_handler))
        .app_data(
            web::JsonConfig::default()
                .limit(65_536)
                .error_handler(error::json_error_handler),
        )
        .service(resource("/webhooks/ultimate/converse", "POST").route(web::post().to(webhooks::ultimate_converse)))
        .service(resource("/webhooks/ultimate/actions", "POST").route(web::post().to(webhooks::ultimate_actions)))
        .service(resource("/webhooks/aivo-live", "POST").route(web::post().to(webhooks::aivo_live)))
        .service(resource("/webhooks/vcc/chat", "POST").route(web::post().to(webhooks::vcc_chat)))
        .service(resource("/webhooks/bright-pattern/{chat_id}", "POST").route(web::post().to(webhooks::bright_pattern)))
        .service(resource("/v1/conversations", "GET").route(web::get().to(conversations::list)))
        .service(resource("/v1/conversations/{id}", "GET").route(web::get().to(conversations::get)))
        .service(resource("/v1/conversations/{id}/transcript", "GET").route(web::get().to(conversations::transcript)))
        .service(resource("/v1/conversations/{id}/events", "GET").route(web::get().to(conversations::events)))
        .service(resource("/v1/conversations/{id}/messages", "POST").route(web::post().to(conversations::post_message)))
        .service(resource("/v1/conversations/{id}/handoff", "POST").route(web::post().to(conversations::post_handoff)))
        .service(resource("/v1/reports/sla", "GET").route(web::get().to(reports::sla_report)))
        .service(resource("/v1/reports/dispositions", "GET").route(web::get().to(reports::dispositions_report)))
        .service(
            resource("/v1/reports/conversations.csv", "GET").route(web::get().to(reports::conversations_csv_report)),
        )
        .service(
            resource("/v1/keys", "GET, POST")
                .route(web::post().to(keys::create))
                .route(web::get().to(keys::list)),
        )
        .service(resource("/v1/keys/{name}", "DELETE").route(web::delete().to(keys::revoke)))
        .service(resource("/v1/events", "GET").route(web::get().to(log::feed)))
        .service(resource("/v1/quarantine", "GET").route(web::get().to(log::quarantine)))
        .service(resource("/v1/quarantine/{id}", "GET").route(web::get().to(log::quarantine_entry)))
        .service(resource("/v1/quarantine/{id}/redrive", "POST").route(web::post().to(operations::redrive)))
        .service(
            resource("/v1/conversations/{id}/commands/{command_id}/retry", "POST")
                .route(web::post().to(operations::retry_command)),
        )
        .service(resource("/v1/erasures", "POST").route(web::post().to(erasures::create)))
        .service(resource("/v1/erasures/{id}", "GET").route(web::get().to(erasures::get)))
        .service(resource("/healthz", "GET").route(web::get().to(log::healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(log::readyz)))
        .configure(console::configure)
        .service(SwaggerUi::new("/docs/{_:.*}").external_url_unchecked("/openapi.json", openapi::served_document()));
}

/// Registers `GET /metrics` (on the main listener, or alone on `server.metrics_bind`).
pub(crate) fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(observe::metrics)));
}

/// Hands a request's events to the writer and waits for their commit at most
/// `server.commit_deadline_ms` (see [`crate::ingest::Pipeline::append`]; events that commit after it
/// still have their commands sent).
pub async fn append(
    state: &AppState,
    events: Vec<crate::model::NewEvent>,
) -> Result<Vec<crate::model::AppendOutcome>, error::ApiError> {
    Ok(state.ingest.append(events, Some(&state.outbound)).await?)
}

/// Keeps the leading items whose JSON fits in `max_bytes` (always at least the first, so a page
/// moves on); true when some were cut. List answers stay bounded in bytes as well as rows.
pub(crate) fn fit_bytes<T: serde::Serialize>(items: &mut Vec<T>, max_bytes: usize) -> bool {
    let keep = fitting_len(items, max_bytes);
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

/// How many leading items [`fit_bytes`] would keep.
pub(crate) fn fitting_len<T: serde::Serialize>(items: &[T], max_bytes: usize) -> usize {
    let mut total = 0usize;
    items
        .iter()
        .position(|item| {
            total += serde_json::to_vec(item).map_or(0, |v| v.len() + 1);
            total > max_bytes
        })
        .map_or(items.len(), |cut| cut.max(1))
}

/// Answers unknown routes with the JSON error shape.
pub async fn not_found() -> Result<actix_web::HttpResponse, error::ApiError> {
    Err(error::ApiError::NotFound("no such endpoint".into()))
}
