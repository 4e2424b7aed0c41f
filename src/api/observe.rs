//! What operators see of the HTTP layer: one log line and one latency sample per request, the request id
//! (`x-request-id` kept when sent, else generated; echoed in the answer and carried by every log line the
//! request causes), and `GET /metrics`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use tracing::Instrument;
use uuid::Uuid;

use super::AppState;
use crate::telemetry;

/// The request id header, read and answered.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `x-request-id` kept as sent; longer or unprintable ones are replaced by a generated id.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id, in the request's extensions for handlers that want to quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(pub String);

/// The route label of requests no route matched (bounded, whatever paths clients invent).
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// A sent `x-request-id` when it is safe to keep: visible ASCII, at most 128 characters.
pub(crate) fn accepted_request_id(sent: Option<&HeaderValue>) -> Option<String> {
    let text = sent?.to_str().ok()?.trim();
    let printable = text.bytes().all(|b| b.is_ascii_graphic());
    (!text.is_empty() && text.len() <= MAX_REQUEST_ID_LEN && printable).then(|| text.to_string())
}

/// Middleware: request id, latency histogram, one log line per request.
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id =
        accepted_request_id(req.headers().get(&REQUEST_ID)).unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().to_string();
    let path = req.path().to_string();
    let span = tracing::info_span!("request", request_id = %request_id);
    let result = next.call(req).instrument(span).await;
    let elapsed = started.elapsed();
    let (status, route, key) = match &result {
        Ok(res) => (
            res.status(),
            res.request().match_pattern(),
            super::auth::principal_name(res.request()),
        ),
        Err(e) => (e.as_response_error().status_code(), None, None),
    };
    let route = route.unwrap_or_else(|| UNMATCHED_ROUTE.to_string());
    telemetry::http_request(&route, status.as_u16(), elapsed);
    let duration_ms = (elapsed.as_secs_f64() * 1e4).round() / 10.0;
    let key = key.as_deref().unwrap_or("-");
    if status.is_server_error() {
        tracing::warn!(target: "http", %method, %route, %path, status = status.as_u16(), duration_ms, %request_id, %key, "request");
    } else {
        tracing::info!(target: "http", %method, %route, %path, status = status.as_u16(), duration_ms, %request_id, %key, "request");
    }
    let mut res = result?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res)
}

/// Prometheus metrics of this process (text format 0.0.4).
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    telemetry::writer_queue_depth(state.writer.queue_depth());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(telemetry::render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_request_ids_are_kept_only_when_printable_and_short() {
        let ok = HeaderValue::from_static("req-42.abc:1");
        assert_eq!(accepted_request_id(Some(&ok)), Some("req-42.abc:1".into()));
        let spaced = HeaderValue::from_static("a b");
        assert_eq!(accepted_request_id(Some(&spaced)), None);
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        assert_eq!(accepted_request_id(Some(&long)), None);
        assert_eq!(accepted_request_id(None), None);
    }
}
