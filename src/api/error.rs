//! The one table of public errors: each code with its HTTP status, rendered as one JSON shape
//! `{"error": {"code", "message", "details"?}}`. Internal failures are logged with their cause and
//! answered opaquely.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::ingest::IngestError;
use crate::outbound::{EscalationError, RetryError};
use crate::sources::PayloadError;
use crate::store::StoreError;
use crate::writer::WriteError;

/// The error body every endpoint answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code, sentence and optional details of an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code: `invalid_json`, `invalid_payload`, `unauthorized`, `forbidden`, `conflict`,
    /// `payload_too_large`, `request_timeout`, `unavailable`, `not_found`, `method_not_allowed`,
    /// `invalid_parameter`, `bad_gateway`, `gateway_timeout`, `internal`.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// Extra facts, e.g. `{"field": "data.platformConversationId"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// Every error the API answers deliberately.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not UTF-8 or not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// JSON of the wrong shape.
    #[error("{message}")]
    InvalidPayload {
        /// Sentence.
        message: String,
        /// JSON path of the field.
        field: String,
    },
    /// Missing or wrong webhook token.
    #[error("missing or wrong webhook token")]
    Unauthorized,
    /// Missing, unknown or revoked API key.
    #[error("{0}")]
    Unauthenticated(String),
    /// The API key lacks the scope.
    #[error("{0}")]
    Forbidden(String),
    /// The resource exists already (e.g. a key name).
    #[error("{0}")]
    Conflict(String),
    /// The body did not arrive within `server.body_timeout_ms`.
    #[error("the body did not arrive within {0} ms")]
    RequestTimeout(u64),
    /// Body larger than `server.max_body_bytes`.
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The store cannot be reached: retry.
    #[error("{0}")]
    Unavailable(String),
    /// Unknown id.
    #[error("{0}")]
    NotFound(String),
    /// Bad query parameter.
    #[error("{message}")]
    InvalidParameter {
        /// Sentence.
        message: String,
        /// Parameter name.
        parameter: String,
    },
    /// The path exists but does not serve this method.
    #[error("this path does not serve this method; it serves {allow}")]
    MethodNotAllowed {
        /// The methods it serves (the `Allow` header).
        allow: &'static str,
    },
    /// A live backend answered with an error.
    #[error("{0}")]
    BadGateway(String),
    /// A live backend did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// Anything else: logged, answered opaquely.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// The table: each error's public code and HTTP status, in one place.
    fn table(&self) -> (&'static str, StatusCode) {
        match self {
            ApiError::InvalidJson(_) => ("invalid_json", StatusCode::BAD_REQUEST),
            ApiError::InvalidPayload { .. } => ("invalid_payload", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => ("unauthorized", StatusCode::UNAUTHORIZED),
            ApiError::Forbidden(_) => ("forbidden", StatusCode::FORBIDDEN),
            ApiError::Conflict(_) => ("conflict", StatusCode::CONFLICT),
            ApiError::PayloadTooLarge(_) => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::RequestTimeout(_) => ("request_timeout", StatusCode::REQUEST_TIMEOUT),
            ApiError::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ApiError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            ApiError::InvalidParameter { .. } => ("invalid_parameter", StatusCode::BAD_REQUEST),
            ApiError::MethodNotAllowed { .. } => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            ApiError::BadGateway(_) => ("bad_gateway", StatusCode::BAD_GATEWAY),
            ApiError::GatewayTimeout(_) => ("gateway_timeout", StatusCode::GATEWAY_TIMEOUT),
            ApiError::Unexpected(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The public code.
    pub fn code(&self) -> &'static str {
        self.table().0
    }

    /// A bad query parameter.
    pub fn parameter(parameter: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            message: message.into(),
            parameter: parameter.to_string(),
        }
    }

    /// The body answered.
    pub fn body(&self) -> ErrorBody {
        let (message, details) = match self {
            ApiError::InvalidPayload { message, field } => {
                (message.clone(), Some(serde_json::json!({ "field": field })))
            }
            ApiError::InvalidParameter { message, parameter } => {
                (message.clone(), Some(serde_json::json!({ "parameter": parameter })))
            }
            ApiError::Unexpected(_) => ("internal error; it has been logged".to_string(), None),
            other => (other.to_string(), None),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
                details,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.table().1
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Unexpected(e) = self {
            tracing::error!(error = ?e, "unexpected error");
        }
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable(_) => {
                res.insert_header(("Retry-After", "1"));
            }
            ApiError::MethodNotAllowed { allow } => {
                res.insert_header(("Allow", *allow));
            }
            _ => {}
        }
        if matches!(self, ApiError::Unauthenticated(_)) {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.json(self.body())
    }
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::InvalidJson(m) => ApiError::InvalidJson(m),
            PayloadError::InvalidPayload { message, field } => ApiError::InvalidPayload { message, field },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::Unavailable("the event log is unavailable; retry later".into())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Unknown => ApiError::Unauthenticated(e.to_string()),
            AuthError::Forbidden { .. } => ApiError::Forbidden(e.to_string()),
            AuthError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        tracing::error!(error = %e, "write failed");
        ApiError::Unavailable("the event log is unavailable; retry later".into())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Refused(e) => ApiError::from(e),
            IngestError::CommitTimeout | IngestError::QuarantineTimeout => ApiError::Unavailable(e.to_string()),
            IngestError::Write(e) => ApiError::from(e),
            IngestError::Store(e) => ApiError::from(e),
            IngestError::Unexpected(e) => ApiError::Unexpected(e),
        }
    }
}

impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::NoCommand(m) => ApiError::NotFound(m),
            RetryError::Conflict(m) => ApiError::Conflict(m),
            RetryError::Store(e) => ApiError::from(e),
            RetryError::Write(e) => ApiError::from(e),
        }
    }
}

impl From<EscalationError> for ApiError {
    fn from(e: EscalationError) -> Self {
        use EscalationError as E;
        match e {
            E::NoConversation(_) => ApiError::NotFound(e.to_string()),
            E::NamesNoConversation | E::NoRoute(_) | E::AlreadyAttempted | E::Interrupted | E::Unreachable { .. } => {
                ApiError::Unavailable(e.to_string())
            }
            E::Deadline { .. } | E::Timeout { .. } => ApiError::GatewayTimeout(e.to_string()),
            E::Refused { .. } | E::Unexpected { .. } => ApiError::BadGateway(e.to_string()),
            E::Store(e) => ApiError::from(e),
            E::Write(e) => ApiError::from(e),
        }
    }
}

/// The JSON error for actix's own extractor failures (bad path or query), so that every answer has one shape.
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::parameter("query", err.to_string()).into()
}

/// The JSON error for bad path parameters.
pub fn path_error_handler(err: actix_web::error::PathError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::parameter("path", err.to_string()).into()
}

/// The JSON error for bad JSON bodies of the API's own commands.
pub fn json_error_handler(err: actix_web::error::JsonPayloadError, req: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    match err {
        J::Overflow { limit } | J::OverflowKnownLength { limit, .. } => ApiError::PayloadTooLarge(limit).into(),
        J::Payload(e) if super::limits::is_body_timeout(&e) => {
            let millis = req
                .app_data::<actix_web::web::Data<super::AppState>>()
                .map_or(0, |s| s.config.server.body_timeout_ms);
            ApiError::RequestTimeout(millis).into()
        }
        J::Deserialize(e) if e.is_data() => ApiError::InvalidPayload {
            message: e.to_string(),
            field: String::new(),
        }
        .into(),
        other => ApiError::InvalidJson(other.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_failures_map_to_gateway_statuses() {
        use crate::outbound::clients::BackendError;
        use crate::outbound::EscalationError;
        let status = |e: BackendError| {
            ApiError::from(EscalationError::from_backend(crate::model::Backend::AivoLive, &e))
                .status_code()
                .as_u16()
        };
        assert_eq!(status(BackendError::Timeout), 504);
        assert_eq!(status(BackendError::Network("refused".into())), 503);
        assert_eq!(
            status(BackendError::Permanent {
                status: 400,
                body: "bad group".into()
            }),
            502
        );
        assert_eq!(
            status(BackendError::Transient {
                status: 500,
                body: String::new()
            }),
            502
        );
        assert_eq!(status(BackendError::Invalid("no id".into())), 502);
        let message = ApiError::from(EscalationError::from_backend(
            crate::model::Backend::AivoLive,
            &BackendError::Permanent {
                status: 400,
                body: "bad group".into(),
            },
        ))
        .to_string();
        assert_eq!(message, "aivo_live refused the hand-over: HTTP 400: bad group");
    }

    #[test]
    fn refusals_keep_their_code_in_the_quarantine_and_the_answer() {
        for e in [
            PayloadError::InvalidJson("x".into()),
            PayloadError::field("a.b", "missing"),
        ] {
            assert_eq!(ApiError::from(e.clone()).code(), e.code());
        }
    }
}
