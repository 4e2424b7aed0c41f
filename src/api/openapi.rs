//! The OpenAPI document, generated from the handlers' annotations. Committed as `openapi/openapi.json`;
//! a test fails when the two differ.

use serde_json::{json, Value};
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
        webhooks::Accepted, webhooks::TeamOnline, webhooks::ConverseAnswer, webhooks::ActionResult, webhooks::ActionResults,
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
        crate::transcript::TranscriptFormat,
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
pub(crate) struct ApiDoc;

/// The finished document: what utoipa derives from the handlers, completed with what its annotations cannot
/// say: the webhook bodies as the parsers in `sources/` read them (required fields, types, and the choices
/// between shapes), and a `405 method_not_allowed` answer, with its `Allow` header, on every path.
pub fn document() -> anyhow::Result<Value> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow::anyhow!("the derived document has no components.schemas"))?;
    for (name, schema) in webhook_body_schemas() {
        schemas.insert(name.to_string(), schema);
    }
    for (path, name) in WEBHOOK_BODIES {
        let body = doc
            .pointer_mut(&format!(
                "/paths/{}/post/requestBody/content/application~1json",
                escape(path)
            ))
            .ok_or_else(|| anyhow::anyhow!("{path} has no JSON request body to describe"))?;
        body["schema"] = json!({ "$ref": format!("#/components/schemas/{name}") });
    }
    let paths = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow::anyhow!("the derived document has no paths"))?;
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        let allow: Vec<String> = item
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
            .map(|k| k.to_ascii_uppercase())
            .collect();
        for method in HTTP_METHODS {
            if let Some(responses) = item.get_mut(*method).and_then(|op| op.get_mut("responses")) {
                responses["405"] = json!({
                    "description": format!("The path serves only {} (`method_not_allowed`)", allow.join(", ")),
                    "headers": { "Allow": { "description": "The methods the path serves", "schema": { "type": "string" } } },
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
                });
            }
        }
    }
    Ok(doc)
}

/// The finished document, computed once, as `/openapi.json` serves it.
pub(crate) fn served_document() -> Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            document().unwrap_or_else(|e| {
                // Cannot happen while `committed_openapi_matches_the_code` passes; serve what utoipa derived.
                tracing::error!(error = %e, "completing the OpenAPI document failed");
                serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
            })
        })
        .clone()
}

/// The document as pretty JSON with a trailing newline (the form committed in `openapi/openapi.json`).
pub fn openapi_json() -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(&document()?)?;
    s.push('\n');
    Ok(s)
}

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Each webhook path and the component describing its body.
const WEBHOOK_BODIES: &[(&str, &str)] = &[
    ("/webhooks/ultimate/converse", "UltimateConverseBody"),
    ("/webhooks/ultimate/actions", "UltimateActionsBody"),
    ("/webhooks/aivo-live", "AivoLiveBody"),
    ("/webhooks/vcc/chat", "VccChatBody"),
    ("/webhooks/bright-pattern/{chat_id}", "BrightPatternBody"),
];

/// A JSON pointer segment (`/` and `~` escaped).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The webhook bodies exactly as the parsers read them (`sources::*::decode*`): what they require, the types
/// they refuse with `422`, and nothing they tolerate. Fields the parsers read leniently (a wrong type reads as
/// absent) are named without a type.
fn webhook_body_schemas() -> Vec<(&'static str, Value)> {
    // `i64` as the parsers read it: a JSON integer in range, or a string of decimal digits.
    let int64 = json!({ "type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX });
    let integer_or_digits = json!({
        "oneOf": [int64, { "type": "string", "pattern": "^-?[0-9]{1,18}$" }]
    });
    let id = json!({ "type": ["string", "number"], "description": "A string or a number (kept as text)" });
    let lenient = |d: &str| json!({ "description": format!("{d} (read when it has the expected type, else ignored)") });
    vec![
        (
            "UltimateConverseBody",
            json!({
                "type": "object",
                "description": "Ultimate custom CRM converse event. `data.platformConversationId` is required except for `isTeamOnline` (which may name no conversation); an unknown `data.eventType` is stored as `ultimate.unknown` and answered 202.",
                "required": ["botId", "data"],
                "properties": {
                    "botId": id,
                    "channel": lenient("Channel the visitor writes from"),
                    "data": {
                        "type": "object",
                        "required": ["eventType"],
                        "properties": {
                            "eventType": {
                                "type": "string",
                                "description": "`sendMessage`, `escalate`, `isTeamOnline`, `widgetMessage`, `widgetEscalate`, `widgetEndSession`; anything else is kept as an unknown event",
                                "examples": ["sendMessage"]
                            },
                            "platformConversationId": { "type": ["string", "null"], "minLength": 1 },
                            "messageId": lenient("Delivery key: a string or a number"),
                            "text": lenient("Message text"),
                            "type": lenient("Bot message type"),
                            "buttons": lenient("Bot buttons"),
                            "carouselCards": lenient("Bot carousel cards"),
                            "escalateTo": lenient("Team to escalate to"),
                            "teamId": lenient("Team asked about (`isTeamOnline`)")
                        },
                        "anyOf": [
                            { "required": ["platformConversationId"], "properties": { "platformConversationId": { "type": "string" } } },
                            { "properties": { "eventType": { "const": "isTeamOnline" } } }
                        ]
                    }
                }
            }),
        ),
        (
            "UltimateActionsBody",
            json!({
                "type": "object",
                "description": "Ultimate actions webhook. `setAttributes` and `getHandoffStatus` are built in; other names are recorded and answered `{\"results\": []}`.",
                "required": ["botId", "platformConversationId", "name"],
                "properties": {
                    "botId": id,
                    "conversationId": lenient("The bot's own conversation id"),
                    "platformConversationId": { "type": "string", "minLength": 1 },
                    "name": { "type": "string", "description": "The action's name", "examples": ["setAttributes"] },
                    "data": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "required": ["key"],
                            "properties": {
                                "key": { "type": "string" },
                                "value": { "description": "Any JSON value (the bot sends arrays of strings)" },
                                "saveAs": lenient("Name to store the value under")
                            }
                        }
                    }
                }
            }),
        ),
        (
            "AivoLiveBody",
            json!({
                "type": "object",
                "description": "Aivo Live webhook: `attended`, `transfer`, `messageToClient`, `close`; an unknown `name` is stored as `aivo_live.unknown` and answered 202.",
                "required": ["name", "roomId", "timestamp"],
                "properties": {
                    "name": { "type": "string", "examples": ["attended"] },
                    "roomId": { "type": "string", "minLength": 1, "description": "The room (= the `conversationId` of the queue call)" },
                    "timestamp": {
                        "description": "When it happened, since the epoch (seconds, milliseconds, microseconds or nanoseconds)",
                        "oneOf": integer_or_digits["oneOf"]
                    },
                    "botId": lenient("Bot id"),
                    "eventTime": lenient("Event time, an integer"),
                    "data": {
                        "type": ["object", "null"],
                        "properties": {
                            "agent": lenient("`{name, nickname, group}` of the agent"),
                            "originGroup": lenient("transfer: the group it came from"),
                            "target": lenient("transfer: the group it went to"),
                            "action": lenient("messageToClient: `text`, `file`, ..."),
                            "value": lenient("messageToClient: the text"),
                            "source": lenient("messageToClient: who wrote it"),
                            "reason": lenient("close: the reason")
                        }
                    }
                }
            }),
        ),
        (
            "VccChatBody",
            json!({
                "type": "object",
                "description": "VCC Live \"Chat (Async)\" webhook: one chat with its whole transcript.",
                "required": ["chatId", "projectId"],
                "properties": {
                    "chatId": integer_or_digits,
                    "projectId": integer_or_digits,
                    "conversation": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "required": ["from", "date"],
                            "properties": {
                                "from": { "type": "string", "description": "`client`, `agent`, `system`, ..." },
                                "date": { "type": "string", "format": "date-time", "description": "ISO 8601 with an offset" },
                                "message": lenient("The line's text")
                            }
                        }
                    },
                    "clientData": lenient("Client data, kept as the conversation's attributes"),
                    "disposition": lenient("VCC's outcome, e.g. `lost`"),
                    "slaStatus": lenient("VCC's SLA status"),
                    "firstAgentName": lenient("First agent"),
                    "lastAgentName": lenient("Last agent"),
                    "firstQueueName": lenient("First queue")
                }
            }),
        ),
        (
            "BrightPatternEvent",
            json!({
                "type": "object",
                "description": "One Bright Pattern chat event; an unknown `event` is stored as `bright_pattern.unknown`. A `chat_id`, when given, must be the path's.",
                "required": ["event"],
                "properties": {
                    "event": { "type": "string", "examples": ["chat_session_message"] },
                    "chat_id": lenient("The chat (must equal the path's `chat_id`)"),
                    "party_id": lenient("The party"),
                    "msg_id": lenient("Message id"),
                    "msg": lenient("Message text"),
                    "state": lenient("Session state"),
                    "timestamp": lenient("Epoch time"),
                    "type": lenient("Party type"),
                    "display_name": lenient("Party name"),
                    "first_name": lenient("Party first name"),
                    "last_name": lenient("Party last name"),
                    "file_id": lenient("File id"),
                    "file_type": lenient("File type"),
                    "form_name": lenient("Form name")
                }
            }),
        ),
        (
            "BrightPatternBody",
            json!({
                "description": "`{\"events\": [...]}` (the shape of Get New Chat Events / Get Chat History) or one event object.",
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": { "events": { "type": "array", "items": { "$ref": "#/components/schemas/BrightPatternEvent" } } }
                    },
                    {
                        "allOf": [{ "$ref": "#/components/schemas/BrightPatternEvent" }],
                        "not": { "required": ["events"] }
                    }
                ]
            }),
        ),
    ]
}
