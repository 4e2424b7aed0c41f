//! Integration tests: the real service on port 0, over HTTP, on SQLite and PostgreSQL.

mod auth;
#[path = "../common/mod.rs"]
mod common;
mod crash;
mod erasure;
mod exports;
mod flow;
mod helpers;
mod limits;
mod openapi;
mod operations;
mod secrets;
mod vcc_encrypted;
mod webhooks;
