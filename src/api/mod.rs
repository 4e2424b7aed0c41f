//! The HTTP API: thin actix-web handlers (extract, call, map errors), documented with utoipa.

pub mod reports;

use std::sync::Arc;

use actix_web::web;

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
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(|| async { "ok" }));
}
