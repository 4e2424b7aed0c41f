//! Integration tests: the real service on port 0, over HTTP, on SQLite and PostgreSQL.

#[path = "../common/mod.rs"]
mod common;
mod crash;
mod erasure;
mod flow;
mod helpers;
mod openapi;
mod webhooks;
