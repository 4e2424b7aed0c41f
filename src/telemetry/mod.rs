//! Operational telemetry: Prometheus metrics and the log subscriber.
//!
//! Metrics go through the `metrics` facade and are rendered in the Prometheus text format by
//! `metrics-exporter-prometheus`. Each function below records one thing that happened and is called
//! where it happens (the webhook path, the writer's commit, the outbox, the pollers, the sink, the HTTP
//! layer), so that a series' name and labels are written once. The series are those of API.md,
//! "Operations"; `dashboards/service.json` reads them.

pub mod logs;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::Platform;

/// `ledger_webhooks_total{platform,outcome}`: webhook deliveries by what became of them.
pub(crate) const WEBHOOKS_TOTAL: &str = "ledger_webhooks_total";
/// `ledger_append_batch_size`: deliveries committed per writer transaction.
pub(crate) const APPEND_BATCH_SIZE: &str = "ledger_append_batch_size";
/// `ledger_commit_seconds`: time of one writer transaction (append, project, commit).
pub(crate) const COMMIT_SECONDS: &str = "ledger_commit_seconds";
/// `ledger_writer_queue_depth`: deliveries waiting for the writer.
pub(crate) const WRITER_QUEUE_DEPTH: &str = "ledger_writer_queue_depth";
/// `ledger_outbox_pending`: outbound commands recorded and not yet finished.
pub(crate) const OUTBOX_PENDING: &str = "ledger_outbox_pending";
/// `ledger_outbox_failed_total{backend}`: outbound commands that ended `failed` or `gave_up`.
pub(crate) const OUTBOX_FAILED_TOTAL: &str = "ledger_outbox_failed_total";
/// `ledger_pollers_active`: Bright Pattern chats being long-polled.
pub(crate) const POLLERS_ACTIVE: &str = "ledger_pollers_active";
/// `ledger_sink_lag_events`: events committed to the log and not yet shipped to ClickHouse.
pub(crate) const SINK_LAG_EVENTS: &str = "ledger_sink_lag_events";
/// `ledger_http_request_seconds{route,status}`: HTTP answers by route pattern and status.
pub(crate) const HTTP_REQUEST_SECONDS: &str = "ledger_http_request_seconds";
/// `ledger_redrives_total{outcome}`: quarantined deliveries run again through the parsers.
pub(crate) const REDRIVES_TOTAL: &str = "ledger_redrives_total";
/// `ledger_command_retries_total`: outbound commands re-sent by an operator.
pub(crate) const COMMAND_RETRIES_TOTAL: &str = "ledger_command_retries_total";

/// Every series the service exports (the dashboard test checks its queries against these).
pub const SERIES: &[&str] = &[
    WEBHOOKS_TOTAL,
    APPEND_BATCH_SIZE,
    COMMIT_SECONDS,
    WRITER_QUEUE_DEPTH,
    OUTBOX_PENDING,
    OUTBOX_FAILED_TOTAL,
    POLLERS_ACTIVE,
    SINK_LAG_EVENTS,
    HTTP_REQUEST_SECONDS,
    REDRIVES_TOTAL,
    COMMAND_RETRIES_TOTAL,
];

/// What became of one webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// At least one of its events was appended.
    Appended,
    /// Every event was already stored (a redelivery).
    Duplicate,
    /// Stored as `<platform>.unknown` (answered 202).
    Unknown,
    /// Refused: not JSON, wrong shape, too large (answered 400/413/422; kept in the quarantine).
    Rejected,
    /// Missing or wrong webhook token (answered 401).
    Unauthorized,
    /// The log could not take it (answered 503: the sender retries).
    Unavailable,
}

impl WebhookOutcome {
    /// Every outcome, in a stable order.
    pub const ALL: [WebhookOutcome; 6] = [
        WebhookOutcome::Appended,
        WebhookOutcome::Duplicate,
        WebhookOutcome::Unknown,
        WebhookOutcome::Rejected,
        WebhookOutcome::Unauthorized,
        WebhookOutcome::Unavailable,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Appended => "appended",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Unknown => "unknown",
            WebhookOutcome::Rejected => "rejected",
            WebhookOutcome::Unauthorized => "unauthorized",
            WebhookOutcome::Unavailable => "unavailable",
        }
    }
}

/// Platforms that deliver webhooks (the `platform` label of [`WEBHOOKS_TOTAL`]).
pub(crate) const WEBHOOK_PLATFORMS: [Platform; 4] = [
    Platform::Ultimate,
    Platform::AivoLive,
    Platform::Vcc,
    Platform::BrightPattern,
];

/// Outbound backends (the `backend` label of [`OUTBOX_FAILED_TOTAL`]).
pub(crate) const OUTBOUND_BACKENDS: [&str; 3] = ["aivo_live", "bright_pattern", "ultimate"];

const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
const COMMIT_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle) and
/// registers every series at zero, so that rates and dashboards work before the first event.
/// None when another recorder was installed first (metrics are then not exported here).
pub fn install() -> Option<PrometheusHandle> {
    let handle = PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(APPEND_BATCH_SIZE.into()), SIZE_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), COMMIT_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_SECONDS.into()), HTTP_BUCKETS));
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            Err(e) => {
                tracing::error!(error = %e, "building the Prometheus recorder failed; /metrics is off");
                return None;
            }
        };
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::error!(error = %e, "another metrics recorder is installed; /metrics is off");
            return None;
        }
        // Histograms keep raw samples until folded; without a scraper they would pile up.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        describe();
        Some(handle)
    });
    handle.clone()
}

fn describe() {
    describe_counter!(WEBHOOKS_TOTAL, "Webhook deliveries by platform and what became of them");
    describe_histogram!(
        APPEND_BATCH_SIZE,
        Unit::Count,
        "Deliveries committed per writer transaction"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time of one writer transaction: append, project, commit"
    );
    describe_gauge!(WRITER_QUEUE_DEPTH, Unit::Count, "Deliveries waiting for the writer");
    describe_gauge!(
        OUTBOX_PENDING,
        Unit::Count,
        "Outbound commands recorded and not finished yet"
    );
    describe_counter!(
        OUTBOX_FAILED_TOTAL,
        "Outbound commands that ended failed or gave_up, by backend"
    );
    describe_gauge!(POLLERS_ACTIVE, Unit::Count, "Bright Pattern chats being long-polled");
    describe_gauge!(
        SINK_LAG_EVENTS,
        Unit::Count,
        "Events in the log not yet shipped to ClickHouse"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP answers by route pattern and status"
    );
    describe_counter!(
        REDRIVES_TOTAL,
        "Quarantined deliveries run again, by the answer they got"
    );
    describe_counter!(COMMAND_RETRIES_TOTAL, "Outbound commands re-sent by an operator");
    for platform in WEBHOOK_PLATFORMS {
        for outcome in WebhookOutcome::ALL {
            counter!(WEBHOOKS_TOTAL, "platform" => platform.as_str(), "outcome" => outcome.as_str()).absolute(0);
        }
    }
    for backend in OUTBOUND_BACKENDS {
        counter!(OUTBOX_FAILED_TOTAL, "backend" => backend).absolute(0);
    }
    gauge!(WRITER_QUEUE_DEPTH).set(0.0);
    gauge!(OUTBOX_PENDING).set(0.0);
    gauge!(POLLERS_ACTIVE).set(0.0);
    counter!(COMMAND_RETRIES_TOTAL).absolute(0);
    for outcome in WebhookOutcome::ALL {
        counter!(REDRIVES_TOTAL, "outcome" => outcome.as_str()).absolute(0);
    }
}

/// The Prometheus text of every series; empty when no recorder is installed.
pub(crate) fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// One webhook delivery answered.
pub fn webhook(platform: Platform, outcome: WebhookOutcome) {
    counter!(WEBHOOKS_TOTAL, "platform" => platform.as_str(), "outcome" => outcome.as_str()).increment(1);
}

/// One writer transaction committed `deliveries` deliveries in `elapsed`.
pub(crate) fn batch_committed(deliveries: usize, elapsed: Duration) {
    histogram!(APPEND_BATCH_SIZE).record(deliveries as f64);
    histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
}

/// Deliveries waiting for the writer now.
pub(crate) fn writer_queue_depth(depth: usize) {
    gauge!(WRITER_QUEUE_DEPTH).set(depth as f64);
}

/// An outbound command was handed to the outbox.
pub(crate) fn outbox_command_started() {
    gauge!(OUTBOX_PENDING).increment(1.0);
}

/// An outbound command left the outbox (finished, or stopped by a shutdown to be re-sent at the next start).
pub(crate) fn outbox_command_finished() {
    gauge!(OUTBOX_PENDING).decrement(1.0);
}

/// An outbound command to `backend` ended `failed` or `gave_up`.
pub(crate) fn outbox_command_failed(backend: &str) {
    counter!(OUTBOX_FAILED_TOTAL, "backend" => backend.to_string()).increment(1);
}

/// A Bright Pattern poll loop started.
pub(crate) fn poller_started() {
    gauge!(POLLERS_ACTIVE).increment(1.0);
}

/// A Bright Pattern poll loop ended.
pub(crate) fn poller_stopped() {
    gauge!(POLLERS_ACTIVE).decrement(1.0);
}

/// Events committed and not yet shipped to ClickHouse.
pub(crate) fn sink_lag(events: i64) {
    gauge!(SINK_LAG_EVENTS).set(events.max(0) as f64);
}

/// One HTTP request answered.
pub(crate) fn http_request(route: &str, status: u16, elapsed: Duration) {
    histogram!(HTTP_REQUEST_SECONDS, "route" => route.to_string(), "status" => status.to_string())
        .record(elapsed.as_secs_f64());
}

/// A quarantined delivery was run again; `outcome` is the webhook outcome it got now.
pub fn redrive(outcome: WebhookOutcome) {
    counter!(REDRIVES_TOTAL, "outcome" => outcome.as_str()).increment(1);
}

/// An operator re-sent an outbound command.
pub(crate) fn command_retried() {
    counter!(COMMAND_RETRIES_TOTAL).increment(1);
}
