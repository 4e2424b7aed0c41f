//! Report endpoints (BI): SLA and disposition rollups, and one CSV row per conversation. Served from
//! ClickHouse when analytics is configured (an `Analytics` in the app data), else computed from the store.

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::json;

use crate::analytics::reports::{
    self, conversations_csv, DispositionReport, ParamError, ReportParams, ReportQuery, ReportSource, SlaReport,
};
use crate::analytics::Analytics;
use crate::api::AppState;

fn error(status: StatusCode, code: &str, message: String) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
}

fn invalid(e: ParamError) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        format!("invalid parameter `{}`: {}", e.param, e.message),
    )
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "{what} failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{what} is unavailable, retry later"),
    )
}

/// Parses the query string, the source and the report query.
#[allow(clippy::result_large_err)]
fn parse(
    req: &HttpRequest,
    analytics: &Option<web::Data<Analytics>>,
) -> Result<(ReportQuery, ReportSource, bool), HttpResponse> {
    let params = web::Query::<ReportParams>::from_query(req.query_string())
        .map_err(|e| {
            invalid(ParamError {
                param: "query",
                message: e.to_string(),
            })
        })?
        .into_inner();
    let query = ReportQuery::from_params(&params, Utc::now()).map_err(invalid)?;
    let requested = ReportQuery::source_param(&params).map_err(invalid)?;
    match (requested, analytics.is_some()) {
        (Some(ReportSource::Clickhouse), false) => Err(invalid(ParamError {
            param: "source",
            message: "ClickHouse is not configured".into(),
        })),
        (Some(source), _) => Ok((query, source, true)),
        (None, true) => Ok((query, ReportSource::Clickhouse, false)),
        (None, false) => Ok((query, ReportSource::Store, false)),
    }
}

/// SLA report: offered, answered, abandoned, missed, service level, wait percentiles, first response and
/// handle means per bucket, optionally grouped by platform, queue and agent.
#[utoipa::path(
    get,
    path = "/v1/reports/sla",
    tag = "reports",
    params(ReportParams),
    responses(
        (status = 200, description = "SLA rows", body = SlaReport),
        (status = 400, description = "invalid_parameter"),
        (status = 503, description = "unavailable")
    )
)]
#[get("/v1/reports/sla")]
pub async fn sla_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> HttpResponse {
    let (query, source, forced) = match parse(&req, &analytics) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    if let (ReportSource::Clickhouse, Some(a)) = (source, analytics.as_ref()) {
        match reports::sla_report_clickhouse(a, &query).await {
            Ok(rows) => {
                return HttpResponse::Ok().json(SlaReport {
                    source: ReportSource::Clickhouse,
                    rows,
                })
            }
            Err(e) if forced => return unavailable("ClickHouse", e),
            Err(e) => tracing::warn!(error = %e, "ClickHouse report failed; computing it from the store"),
        }
    }
    match reports::conversations_for_report(state.store.as_ref(), &query).await {
        Ok(conversations) => HttpResponse::Ok().json(SlaReport {
            source: ReportSource::Store,
            rows: reports::sla_report(&conversations, &state.config.sla, &query),
        }),
        Err(e) => unavailable("the store", e),
    }
}

/// Disposition report: completed, abandoned, missed and failed handoffs per bucket (credited at close),
/// optionally grouped by platform, queue and agent.
#[utoipa::path(
    get,
    path = "/v1/reports/dispositions",
    tag = "reports",
    params(ReportParams),
    responses(
        (status = 200, description = "Disposition rows", body = DispositionReport),
        (status = 400, description = "invalid_parameter"),
        (status = 503, description = "unavailable")
    )
)]
#[get("/v1/reports/dispositions")]
pub async fn dispositions_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> HttpResponse {
    let (query, source, forced) = match parse(&req, &analytics) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    if let (ReportSource::Clickhouse, Some(a)) = (source, analytics.as_ref()) {
        match reports::disposition_report_clickhouse(a, &query).await {
            Ok(rows) => {
                return HttpResponse::Ok().json(DispositionReport {
                    source: ReportSource::Clickhouse,
                    rows,
                })
            }
            Err(e) if forced => return unavailable("ClickHouse", e),
            Err(e) => tracing::warn!(error = %e, "ClickHouse report failed; computing it from the store"),
        }
    }
    match reports::conversations_for_report(state.store.as_ref(), &query).await {
        Ok(conversations) => HttpResponse::Ok().json(DispositionReport {
            source: ReportSource::Store,
            rows: reports::disposition_report(&conversations, &state.config.sla, &query),
        }),
        Err(e) => unavailable("the store", e),
    }
}

/// One CSV row per conversation started in `[since, until)` with every metric column; the `X-Report-Source`
/// header says where it was read.
#[utoipa::path(
    get,
    path = "/v1/reports/conversations.csv",
    tag = "reports",
    params(ReportParams),
    responses(
        (status = 200, description = "text/csv, one row per conversation", content_type = "text/csv", body = String),
        (status = 400, description = "invalid_parameter"),
        (status = 503, description = "unavailable")
    )
)]
#[get("/v1/reports/conversations.csv")]
pub async fn conversations_csv_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> HttpResponse {
    let (query, source, forced) = match parse(&req, &analytics) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let mut rows = None;
    let mut used = ReportSource::Store;
    if let (ReportSource::Clickhouse, Some(a)) = (source, analytics.as_ref()) {
        match reports::csv_rows_from_clickhouse(a, query.since, query.until).await {
            Ok(r) => {
                rows = Some(r);
                used = ReportSource::Clickhouse;
            }
            Err(e) if forced => return unavailable("ClickHouse", e),
            Err(e) => tracing::warn!(error = %e, "ClickHouse export failed; reading the store"),
        }
    }
    let mut rows = match rows {
        Some(rows) => rows,
        None => match reports::csv_rows_from_store(state.store.as_ref(), query.since, query.until).await {
            Ok(rows) => rows,
            Err(e) => return unavailable("the store", e),
        },
    };
    match conversations_csv(&mut rows) {
        Ok(body) => HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header(("X-Report-Source", used.to_string()))
            .body(body),
        Err(e) => unavailable("the CSV writer", e),
    }
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::*;
    use crate::analytics::reports::{DispositionRow, GroupBy, Interval, SlaRow};

    #[derive(OpenApi)]
    #[openapi(
        paths(sla_report, dispositions_report, conversations_csv_report),
        components(schemas(
            SlaReport,
            SlaRow,
            DispositionReport,
            DispositionRow,
            ReportSource,
            Interval,
            GroupBy
        ))
    )]
    struct ReportsDoc;

    #[test]
    fn openapi_documents_the_report_paths_parameters_and_rows() {
        let doc = serde_json::to_value(ReportsDoc::openapi()).unwrap();
        for path in [
            "/v1/reports/sla",
            "/v1/reports/dispositions",
            "/v1/reports/conversations.csv",
        ] {
            let params: Vec<&str> = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap_or_else(|| panic!("{path} undocumented"))
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                params,
                vec!["since", "until", "interval", "group_by", "source"],
                "{path}"
            );
        }
        let sla_row = &doc["components"]["schemas"]["SlaRow"]["properties"];
        for field in [
            "bucket",
            "platform",
            "queue",
            "agent",
            "offered",
            "answered",
            "answered_within_sla",
            "abandoned",
            "short_abandoned",
            "missed",
            "service_level",
            "wait_p50_seconds",
            "wait_p90_seconds",
            "avg_first_response_seconds",
            "avg_handle_seconds",
        ] {
            assert!(sla_row.get(field).is_some(), "SlaRow.{field}");
        }
        let required = doc["components"]["schemas"]["SlaRow"]["required"].as_array().unwrap();
        assert!(!required.iter().any(|f| f == "platform"), "platform is optional");
    }
}
