//! handoff-ledger: the system of record for bot-to-human chat handoffs.
//!
//! One path for data: `sources` (pure parsing) -> `writer` (single task, group commit) -> `store`
//! (event log + projections) -> `api` (query API). See `../shared/design/ARCHITECTURE.md`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod analytics;
pub mod api;
pub mod auth;
pub mod backends;
pub mod chain;
pub mod config;
pub mod config_check;
pub mod erasure;
pub mod handoff;
pub mod model;
pub mod outbox;
pub mod poller;
pub mod projection;
pub mod quarantine;
pub mod redact;
pub mod retention;
pub mod sources;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transcript;
pub mod verify;
pub mod writer;
