//! handoff-ledger: the system of record for bot-to-human chat handoffs.
//!
//! One path for data: `sources` (pure parsing) -> `writer` (single task, group commit) -> `store`
//! (event log + projections) -> `api` (query API). See `../shared/design/ARCHITECTURE.md`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod analytics;
pub mod api;
pub mod config;
pub mod model;
pub mod projection;
pub mod sources;
pub mod startup;
pub mod store;
pub mod writer;
