//! Report endpoints (BI): SLA and disposition rollups, and one CSV row per conversation. Served from
//! ClickHouse when analytics is configured (an `Analytics` in the app data), else computed from the store.

use std::future::Future;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;

use super::error::{ApiError, ErrorBody};
use crate::analytics::reports::{
    self, DispositionReport, ParamError, ReportParams, ReportQuery, ReportSource, SlaReport,
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

/// Parses the query string, the source and the report query; a range longer than
/// `server.max_report_days` is refused.
fn parse(req: &HttpRequest, analytics: &Option<web::Data<Analytics>>) -> Result<Request, ApiError> {
    let params = web::Query::<ReportParams>::from_query(req.query_string())
        .map_err(|e| ApiError::parameter("query", e.to_string()))?
        .into_inner();
    let query = ReportQuery::from_params(&params, Utc::now())?;
    let max_days = req
        .app_data::<web::Data<AppState>>()
        .map_or(93, |s| s.config.server.max_report_days);
    if query.until - query.since > chrono::Duration::days(i64::from(max_days)) {
        return Err(ApiError::parameter(
            "since",
            format!("a report covers at most {max_days} days per call (server.max_report_days); split the range"),
        ));
    }
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
/// or does not answer within `clickhouse.query_timeout_ms`, unless the caller forced it), else from the store.
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
        // A query that takes too long counts as a failure: the report is read from the store instead.
        let limit = std::time::Duration::from_millis(a.config().query_timeout_ms.max(1));
        let failure = match tokio::time::timeout(limit, from_clickhouse(a)).await {
            Ok(Ok(rows)) => return Ok((ReportSource::Clickhouse, rows)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within {} ms (clickhouse.query_timeout_ms)",
                limit.as_millis()
            ),
        };
        if request.forced {
            return Err(unavailable("ClickHouse", failure));
        }
        tracing::warn!(error = %failure, "ClickHouse report failed; reading the store");
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
        || async { reports::sla_report_store(state.store.as_ref(), &state.config.sla, q).await },
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
pub(crate) async fn dispositions_report(
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
        || async { reports::disposition_report_store(state.store.as_ref(), q).await },
    )
    .await?;
    Ok(HttpResponse::Ok().json(DispositionReport { source, rows }))
}

/// One CSV row per conversation started in `[since, until)` with every metric column; the `X-Report-Source`
/// header says where it was read. The body is streamed: from ClickHouse row by row, from the store a window of at
/// most 5,000 conversations at a time, so no answer is ever held in memory whole.
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
pub(crate) async fn conversations_csv_report(
    req: HttpRequest,
    state: web::Data<AppState>,
    analytics: Option<web::Data<Analytics>>,
) -> Result<HttpResponse, ApiError> {
    let request = parse(&req, &analytics)?;
    let (since, until) = (request.query.since, request.query.until);
    let header = reports::csv_header_bytes().map_err(|e| ApiError::Unexpected(e.into()))?;
    let (tx, rx) = futures::channel::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    if let (ReportSource::Clickhouse, Some(a)) = (request.source, analytics.clone()) {
        let limit = std::time::Duration::from_millis(a.config().query_timeout_ms.max(1));
        // The first row (or the end) must come within the query timeout, else the store answers.
        let opened = async {
            let mut cursor = reports::csv_cursor_from_clickhouse(&a, since, until)?;
            let first = cursor.next().await?;
            Ok::<_, crate::analytics::AnalyticsError>((cursor, first))
        };
        let failure = match tokio::time::timeout(limit, opened).await {
            Ok(Ok((cursor, first))) => {
                tokio::spawn(stream_clickhouse_csv(header, cursor, first, tx));
                return Ok(csv_response(ReportSource::Clickhouse, rx));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within {} ms (clickhouse.query_timeout_ms)",
                limit.as_millis()
            ),
        };
        if request.forced {
            return Err(unavailable("ClickHouse", failure));
        }
        tracing::warn!(error = %failure, "ClickHouse CSV failed; reading the store");
    }
    // The first window is read before answering, so a store outage is a 503, not a cut-off 200.
    let mut rows = reports::StoreCsvRows::new(state.store.clone(), since, until);
    let first = rows.next_rows().await.map_err(|e| unavailable("the store", e))?;
    tokio::spawn(stream_store_csv(header, rows, first, tx));
    Ok(csv_response(ReportSource::Store, rx))
}

type CsvSender = futures::channel::mpsc::Sender<Result<web::Bytes, std::io::Error>>;

fn csv_response(
    source: ReportSource,
    rx: futures::channel::mpsc::Receiver<Result<web::Bytes, std::io::Error>>,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("X-Report-Source", source.to_string()))
        .streaming(rx)
}

/// Sends a chunk; false when the client went away (or the chunk could not be rendered).
async fn send_chunk(tx: &mut CsvSender, chunk: Result<Vec<u8>, csv::Error>) -> bool {
    use futures::SinkExt;
    let item = chunk.map(web::Bytes::from).map_err(std::io::Error::other);
    let failed = item.is_err();
    tx.send(item).await.is_ok() && !failed
}

/// Rows sent per chunk when streaming from ClickHouse.
const CSV_CHUNK_ROWS: usize = 500;

async fn stream_clickhouse_csv(
    header: Vec<u8>,
    mut cursor: clickhouse::query::RowCursor<crate::analytics::facts::ConversationRow>,
    first: Option<crate::analytics::facts::ConversationRow>,
    mut tx: CsvSender,
) {
    if !send_chunk(&mut tx, Ok(header)).await {
        return;
    }
    let mut rows: Vec<_> = first.into_iter().collect();
    loop {
        let next = cursor.next().await;
        let done = !matches!(next, Ok(Some(_)));
        match next {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(e) => {
                // Mid-stream there is no status to change: the body ends with an error (a cut-off answer).
                tracing::error!(error = %e, "ClickHouse CSV failed mid-stream");
                let _ = send_chunk(&mut tx, reports::csv_rows_bytes(&rows)).await;
                use futures::SinkExt;
                let _ = tx
                    .send(Err(std::io::Error::other("ClickHouse failed mid-stream")))
                    .await;
                return;
            }
        }
        if (done || rows.len() >= CSV_CHUNK_ROWS) && !rows.is_empty() {
            if !send_chunk(&mut tx, reports::csv_rows_bytes(&rows)).await {
                return;
            }
            rows.clear();
        }
        if done {
            return;
        }
    }
}

async fn stream_store_csv(
    header: Vec<u8>,
    mut rows: reports::StoreCsvRows,
    first: Option<Vec<crate::analytics::facts::ConversationRow>>,
    mut tx: CsvSender,
) {
    if !send_chunk(&mut tx, Ok(header)).await {
        return;
    }
    let mut next = Ok(first);
    loop {
        match next {
            Ok(None) => return,
            Ok(Some(window)) => {
                if !send_chunk(&mut tx, reports::csv_rows_bytes(&window)).await {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the store failed mid-stream of a CSV report");
                use futures::SinkExt;
                let _ = tx.send(Err(std::io::Error::other("the store failed mid-stream"))).await;
                return;
            }
        }
        next = rows.next_rows().await;
    }
}
