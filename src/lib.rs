//! handoff-ledger: the system of record for bot-to-human chat handoffs. Two halves around one log.
//!
//! Inbound (platforms -> log -> answers):
//! - [`sources`]: pure parsing, one module per platform: raw bytes in, events and facts out.
//! - [`ingest`]: the one inbound pipeline: parse, quarantine a refusal, append, relay (webhooks and polls).
//! - [`writer`]: the single task that appends and projects in one transaction per batch (group commit).
//! - [`store`]: the event log and its projections, SQLite and PostgreSQL behind one trait.
//! - [`projection`]: the pure fold of a conversation's events into its state, timers and transcript, and
//!   [`projection::metrics`], the one definition of every metric both report sources use.
//! - [`model`]: the records and the vocabulary as types (platforms, backends, states, dispositions, SLA status).
//! - [`chain`], [`verify`], [`erasure`], [`retention`], [`quarantine`]: the log's hash chain, its walk, erasure
//!   with proof, the retention jobs, and the quarantine of refused deliveries.
//! - [`transcript`]: transcript rendering for the API.
//! - [`api`]: thin HTTP handlers, the one error table, webhook endpoints as a table, OpenAPI.
//! - [`auth`]: API keys and scopes.
//!
//! Outbound (log -> platforms -> log):
//! - [`outbound`]: relay rules, synchronous escalations, the durable outbox, platform clients and the
//!   Bright Pattern poller.
//! - [`analytics`]: the ClickHouse sink tailing the log, and the reports read from it.
//!
//! [`config`] and [`api::startup`] (the composition root, inside `api`) build the service. Dependencies point one way: `api` -> `ingest`, `outbound` ->
//! `writer`, `store`, `sources`, `projection`; nothing outside `api` imports it. The design documents (API contract,
//! architecture, metrics) are in `docs/design/`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod analytics;
pub mod api;
pub mod auth;
pub mod chain;
pub mod config;
pub mod config_check;
pub mod erasure;
pub mod ingest;
pub mod model;
pub mod outbound;
pub mod projection;
pub mod quarantine;
pub mod redact;
pub mod retention;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod transcript;
pub mod verify;
pub mod writer;

/// The composition root lives with the HTTP layer that it builds (nothing outside `api` imports `api`).
pub use api::startup;
