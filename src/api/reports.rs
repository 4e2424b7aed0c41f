//! Report endpoints (BI): SLA and disposition rollups, and one CSV row per conversation. Served from
//! ClickHouse when analytics is configured (an `Analytics` in the app data), else computed from the store.

use std::future::Future;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;

use super::error::{ApiError, ErrorBody};
use crate::analytics::reports::{
    self, conversations_csv, DispositionReport, ParamError, ReportParams, ReportQuery, ReportSource, SlaReport,
};
use crate::analytics::{Analytics, AnalyticsResult};
use crate::api::AppState;

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        ApiError::parameter(e.param, format!("invalid parameter `{}`: {}", e.param, e.message))
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what} failed");
    ApiError::Unavailable(format!("{what} is unavailable, retry later"))
}

/// A parsed report request: the query, the source to read, and whether the caller forced it.
struct Request {
    query: ReportQuery,
    source: ReportSource,
    forced: bool,
}

/// Parses the query string, the source and the report query.
fn parse(req: &HttpRequest, analytics: &Option<web::Data<Analytics>>) -> Result<Request, ApiError> {
    let params = web::Query::<ReportParams>::from_query(req.query_string())
        .map_err(|e| ApiError::parameter("query", e.to_string()))?
        .into_inner();
    let query = ReportQuery::from_params(&params, Utc::now())?;
    let requested = ReportQuery::source_param(&params)?;
    let (source, forced) = match (requested, analytics.is_some()) {
        (Some(ReportSource::Clickhouse), false) => {
            return Err(ApiError::parameter("source", "ClickHouse is not configured"))
        }
        (Some(source), _) => (source, true),
        (None, true) => (ReportSource::Clickhouse, false),
        (None, false) => (ReportSource::Store, false),
    };
    Ok(Request { query, source, forced })
}

/// Reads a report from ClickHouse when that is the source (falling back to the store when ClickHouse fails
/// and the caller did not force it), else from the store.
async fn read<T, C, CF, S, SF>(
    request: &Request,
    analytics: &Option<web::Data<Analytics>>,
    from_clickhouse: C,
    from_store: S,
) -> Result<(ReportSource, T), ApiError>
where
    C: FnOnce(web::Data<Analytics>) -> CF,
    CF: Future<Output = AnalyticsResult<T>>,
    S: FnOnce() -> SF,
    SF: Future<Output = Result<T, crate::store::StoreError>>,
{
    if let (ReportSource::Clickhouse, Some(a)) = (request.source, analytics.clone()) {
        match from_clickhouse(a).await {
            Ok(rows) => return Ok((ReportSource::Clickhouse, rows)),
            Err(e) if request.forced => return Err(unavailable("ClickHouse", e)),
            Err(e) => tracing::warn!(error = %e, "ClickHouse report failed; reading the store"),
        }
    }
    let rows = from_store().await.map_err(|e| unavailable("the store", e))?;
    Ok((ReportSource::Store, rows))
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
        (status = 400, description = "Bad parameter (`invalid_parameter`)", body = ErrorBody),
        (status = 503, description = "The source is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn sla_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> Result<HttpResponse, ApiError> {
    let request = parse(&req, &analytics)?;
    let q = &request.query;
    let (source, rows) = read(
        &request,
        &analytics,
        |a| async move { reports::sla_report_clickhouse(&a, q).await },
        || async {
            let conversations = reports::conversations_for_report(state.store.as_ref(), q).await?;
            Ok(reports::sla_report(&conversations, &state.config.sla, q))
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(SlaReport { source, rows }))
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
        (status = 400, description = "Bad parameter (`invalid_parameter`)", body = ErrorBody),
        (status = 503, description = "The source is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn dispositions_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> Result<HttpResponse, ApiError> {
    let request = parse(&req, &analytics)?;
    let q = &request.query;
    let (source, rows) = read(
        &request,
        &analytics,
        |a| async move { reports::disposition_report_clickhouse(&a, q).await },
        || async {
            let conversations = reports::conversations_for_report(state.store.as_ref(), q).await?;
            Ok(reports::disposition_report(&conversations, &state.config.sla, q))
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(DispositionReport { source, rows }))
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
        (status = 400, description = "Bad parameter (`invalid_parameter`)", body = ErrorBody),
        (status = 503, description = "The source is unavailable (`unavailable`)", body = ErrorBody)
    )
)]
pub async fn conversations_csv_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> Result<HttpResponse, ApiError> {
    let request = parse(&req, &analytics)?;
    let (since, until) = (request.query.since, request.query.until);
    let (source, mut rows) = read(
        &request,
        &analytics,
        |a| async move { reports::csv_rows_from_clickhouse(&a, since, until).await },
        || reports::csv_rows_from_store(state.store.as_ref(), since, until),
    )
    .await?;
    let body = conversations_csv(&mut rows).map_err(|e| ApiError::Unexpected(e.into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("X-Report-Source", source.to_string()))
        .body(body))
}
