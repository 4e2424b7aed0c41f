//! The HTTP ceiling of the ingest benchmark: an actix-web endpoint at `/webhooks/aivo-live` that
//! reads the body within the same limit and parses the same JSON as handoff-ledger, then answers
//! 200 with a body of the same shape, storing nothing. What the service sustains is reported as a
//! ratio to what this sustains on the same machine in the same run (`scripts/bench-ingest.sh`).
//!
//! `cargo run --release --bin ledger-ceiling -- --bind 127.0.0.1:18090`

use actix_web::{web, App, HttpResponse, HttpServer};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "A no-op webhook endpoint: parses the JSON and answers, storing nothing")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18090")]
    bind: String,
}

async fn webhook(body: web::Bytes) -> HttpResponse {
    match handoff_ledger::sources::parse_json(&body) {
        Ok(value) => HttpResponse::Ok().json(json!({
            "event_id": null,
            "seq": null,
            "duplicate": false,
            "conversation_id": value.get("roomId").cloned().unwrap_or(Value::Null),
        })),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": {"code": "invalid_json", "message": e.to_string()}})),
    }
}

async fn ready() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ready"}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/webhooks/aivo-live", web::post().to(webhook))
            .route("/readyz", web::get().to(ready))
    })
    .bind(&args.bind)?
    .run()
    .await
}
