//! Integration tests: the real service on port 0, over HTTP, on SQLite and PostgreSQL.

mod browser;
#[path = "../common/mod.rs"]
mod common;
mod console;
mod crash;
mod flow;
mod helpers;
mod openapi;
mod webhooks;
