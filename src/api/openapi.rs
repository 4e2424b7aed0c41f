//! The OpenAPI document, generated from the handlers' annotations. Committed as `openapi/openapi.json`;
//! a test fails when the two differ.

use utoipa::OpenApi;

use super::auth::SecurityAddon;
use super::{conversations, erasures, error, keys, log, observe, operations, reports, webhooks};
use crate::model;

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "handoff-ledger",
        description = "System of record for bot-to-human chat handoffs: webhooks in, conversations, transcripts and reports out.",
        license(name = "Apache-2.0")
    ),
    paths(
        webhooks::ultimate_converse,
        webhooks::ultimate_actions,
        webhooks::aivo_live,
        webhooks::vcc_chat,
        webhooks::bright_pattern,
        conversations::list,
        conversations::get,
        conversations::transcript,
        conversations::events,
        conversations::post_message,
        conversations::post_handoff,
        reports::sla_report,
        reports::dispositions_report,
        reports::conversations_csv_report,
        keys::create,
        keys::list,
        keys::revoke,
        log::feed,
        log::quarantine,
        log::quarantine_entry,
        log::healthz,
        log::readyz,
        observe::metrics,
        operations::redrive,
        operations::retry_command,
        erasures::create,
        erasures::get,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail,
        webhooks::Accepted, webhooks::TeamOnline, webhooks::ActionResult, webhooks::ActionResults,
        conversations::ConversationList, conversations::Transcript, conversations::EventList,
        conversations::PostMessage, conversations::PostHandoff,
        log::EventFeed, log::QuarantineList, log::Health, crate::chain::ChainHead,
        keys::NewKey, keys::KeyInfo, keys::CreatedKey, keys::KeyList, crate::auth::Scope,
        erasures::ErasureRequest, crate::erasure::ErasureCertificate, crate::chain::ErasedEvent,
        crate::analytics::reports::SlaReport, crate::analytics::reports::SlaRow,
        crate::analytics::reports::DispositionReport, crate::analytics::reports::DispositionRow,
        crate::analytics::reports::ReportSource, crate::analytics::reports::Interval,
        crate::analytics::reports::GroupBy,
        model::Conversation, model::Handoff, model::Message, model::StoredEvent,
        crate::quarantine::QuarantineSummary, crate::quarantine::QuarantineDetail, model::Redrive,
        crate::outbound::CommandRetry,
        model::Agent, model::Button, model::Card, model::MessageCounts, model::StreamKey, model::Platform,
        model::HandoffState, model::Disposition, model::SlaStatus, model::Party, model::MessageKind,
    )),
    tags(
        (name = "webhooks", description = "Inbound platform webhooks: answered only after the event is durably appended"),
        (name = "conversations", description = "Projected conversations and transcripts"),
        (name = "commands", description = "Commands from support tooling"),
        (name = "reports", description = "SLA and disposition reports, from ClickHouse when configured, else from the store"),
        (name = "log", description = "The immutable event log and the quarantine"),
        (name = "keys", description = "API keys (`admin`): only a hash of each key is kept"),
        (name = "health", description = "Liveness, readiness and Prometheus metrics"),
        (name = "erasures", description = "Erasure of a person's conversation, with a certificate the hash chain backs"),
    ),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline (the form committed in `openapi/openapi.json`).
pub fn openapi_json() -> anyhow::Result<String> {
    let mut s = ApiDoc::openapi().to_pretty_json()?;
    s.push('\n');
    Ok(s)
}
