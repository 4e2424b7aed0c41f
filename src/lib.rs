//! handoff-ledger: the system of record for bot-to-human chat handoffs.
//!
//! One path for data: `sources` (pure parsing) -> `writer` (single task, group commit) -> `store`
//! (event log + projections) -> `api` (query API). See `../shared/design/ARCHITECTURE.md`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod analytics;
pub mod api;
pub mod auth;
pub mod chain;
pub mod config;
pub mod erasure;
pub mod ingest;
pub mod model;
pub mod outbound;
pub mod projection;
pub mod quarantine;
pub mod retention;
pub mod sources;
pub mod startup;
pub mod store;
pub mod transcript;
pub mod verify;
pub mod writer;
