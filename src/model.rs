//! Domain types shared by the sources, the store, the projection and the API.
//!
//! The JSON shapes here are the external contract of `docs/design/API.md`: field names must not change.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Namespace for every UUIDv5 this service derives (event ids, conversation ids).
pub(crate) const LEDGER_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b7e_54a0_4f3a_9d1e_0c55_7a3b_2e91);

/// The systems an event can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// The bot (Ultimate / Zendesk AI agents, custom CRM webhooks).
    Ultimate,
    /// Aivo Live, human agents.
    AivoLive,
    /// VCC Live chat.
    Vcc,
    /// Bright Pattern chat sessions.
    BrightPattern,
    /// Messages and commands posted through this service's own API.
    Api,
    /// Facts this service records itself (links, outbound call results).
    Ledger,
}

impl Platform {
    /// Every platform, in a stable order.
    pub const ALL: [Platform; 6] = [
        Platform::Ultimate,
        Platform::AivoLive,
        Platform::Vcc,
        Platform::BrightPattern,
        Platform::Api,
        Platform::Ledger,
    ];

    /// The snake_case name used in kinds, URLs and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ultimate => "ultimate",
            Platform::AivoLive => "aivo_live",
            Platform::Vcc => "vcc",
            Platform::BrightPattern => "bright_pattern",
            Platform::Api => "api",
            Platform::Ledger => "ledger",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown platform `{s}`"))
    }
}

/// A live chat platform the ledger hands conversations to: the `backend` of a route, of a queue command
/// and of the live chat a command goes to. Validated when the configuration loads; the names are the
/// platforms' own (`aivo_live`, `bright_pattern`), so the stored commands and the config keep their words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Aivo Live.
    AivoLive,
    /// Bright Pattern.
    BrightPattern,
}

impl Backend {
    /// Every backend, in a stable order.
    pub const ALL: [Backend; 2] = [Backend::AivoLive, Backend::BrightPattern];

    /// The snake_case name, as in the config and the log.
    pub fn as_str(self) -> &'static str {
        self.platform().as_str()
    }

    /// The platform whose live chats it holds.
    pub fn platform(self) -> Platform {
        match self {
            Backend::AivoLive => Platform::AivoLive,
            Backend::BrightPattern => Platform::BrightPattern,
        }
    }

    /// The backend of a live platform's chats; None for the bot, VCC and the ledger's own platforms.
    pub(crate) fn of_platform(platform: Platform) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.platform() == platform)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.as_str() == s.trim())
            .ok_or_else(|| format!("unknown backend `{s}` (expected aivo_live or bright_pattern)"))
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// `(platform, external_id)`: the fact from a payload that files an event under a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct StreamKey {
    /// The platform the stream belongs to.
    pub platform: Platform,
    /// The platform's own id for it (see API.md, "Platforms and stream keys").
    pub external_id: String,
}

impl StreamKey {
    /// Builds a stream key.
    pub fn new(platform: Platform, external_id: impl Into<String>) -> Self {
        Self {
            platform,
            external_id: external_id.into(),
        }
    }

    /// The conversation id a conversation started by this stream gets: UUIDv5 of the key.
    pub fn conversation_id(&self) -> Uuid {
        Uuid::new_v5(
            &LEDGER_NAMESPACE,
            format!("stream:{}:{}", self.platform, self.external_id).as_bytes(),
        )
    }
}

/// Derives the event id of a delivery: UUIDv5 of platform + delivery key, or a random id when the
/// platform gives no key (a distinct delivery is then never dropped because it looks alike).
pub fn event_id_for(platform: Platform, delivery_key: Option<&str>) -> Uuid {
    match delivery_key {
        Some(key) => Uuid::new_v5(&LEDGER_NAMESPACE, format!("event:{platform}:{key}").as_bytes()),
        None => Uuid::new_v4(),
    }
}

/// An event ready to be appended: parsed, validated, not yet stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// UUIDv5 of platform + delivery key (see [`event_id_for`]).
    pub event_id: Uuid,
    /// Where the event is filed.
    pub stream: StreamKey,
    /// `<platform>.<event name in snake_case>`.
    pub kind: String,
    /// When it happened: the earlier of the platform's own time and `received_at` (an event cannot have
    /// happened after we received it); `received_at` when the platform gives no time.
    pub occurred_at: DateTime<Utc>,
    /// The platform's own time for it, as sent (None when it sends none).
    pub platform_at: Option<DateTime<Utc>>,
    /// When this service received it.
    pub received_at: DateTime<Utc>,
    /// The body (or, for a body carrying several events, this event's own JSON text) exactly as received.
    pub payload: String,
    /// Delivery headers worth keeping (content type, user agent, idempotency key, ...).
    pub headers: BTreeMap<String, String>,
    /// Streams this event says belong to the same conversation as its own (a `ledger.linked` event).
    pub links: Vec<StreamKey>,
}

impl NewEvent {
    /// The event as the log keeps it at `seq`, filed under no conversation yet, with no hash and no
    /// earlier version; fails when its payload is not JSON.
    pub fn stored(&self, seq: i64) -> serde_json::Result<StoredEvent> {
        Ok(StoredEvent {
            seq,
            event_id: self.event_id,
            platform: self.stream.platform,
            external_id: self.stream.external_id.clone(),
            kind: self.kind.clone(),
            occurred_at: self.occurred_at,
            platform_at: self.platform_at,
            received_at: self.received_at,
            conversation_id: None,
            headers: self.headers.clone(),
            payload: serde_json::from_str(&self.payload)?,
            hash: None,
            revision_of: None,
        })
    }
}

/// An event as stored in the immutable log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredEvent {
    /// Global, gap-free, strictly increasing position in the log.
    pub seq: i64,
    /// UUIDv5 of platform + delivery key.
    pub event_id: Uuid,
    /// Source platform.
    pub platform: Platform,
    /// The platform's id of the stream.
    pub external_id: String,
    /// `<platform>.<event name in snake_case>`, e.g. `aivo_live.message_to_client`.
    pub kind: String,
    /// When it happened: the earlier of `platform_at` and `received_at` (vendor clocks drift; an event
    /// cannot have happened after we received it).
    pub occurred_at: DateTime<Utc>,
    /// The platform's own time for it, as sent; null when the platform sends none.
    #[serde(default)]
    pub platform_at: Option<DateTime<Utc>>,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The conversation the stream belongs to now (null for events filed under no conversation).
    pub conversation_id: Option<Uuid>,
    /// Delivery headers kept with the event.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body exactly as received, as JSON (an erased event's: the erasure stub).
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The event's link in the tamper-evident chain: hex SHA-256 over the previous event's hash and
    /// this event (see the README, "Verifying the log"). Null only for an event not read from the log.
    #[serde(default)]
    pub hash: Option<String>,
    /// Present on a conflicting redelivery: a body that reused the delivery key of the event with this id
    /// but differs from it. It is the newer version of that event (the projection takes the latest); both
    /// stay in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_of: Option<Uuid>,
}

/// What the writer answers for one appended (or recognised duplicate) event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// The event's id.
    pub event_id: Uuid,
    /// Its position in the log (the stored one for a duplicate).
    pub seq: i64,
    /// True when the event was already stored and nothing was appended.
    pub duplicate: bool,
    /// True when the body reused the delivery key of a stored event with different content: appended as a
    /// new version of that event (see [`StoredEvent::revision_of`]).
    #[serde(default)]
    pub conflict: bool,
    /// The conversation it belongs to after this batch (None for events filed under no conversation).
    pub conversation_id: Option<Uuid>,
    /// Seqs of the command records appended with it, in the same transaction (see
    /// `store::RelayPlanner`): what the outbox sends for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<i64>,
}

/// Handoff state of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandoffState {
    /// Only the bot has talked to the visitor.
    Bot,
    /// The bot asked for a human; not queued yet.
    EscalationRequested,
    /// Waiting in a live queue (also after a transfer).
    Queued,
    /// An agent is handling it.
    Attended,
    /// Over.
    Closed,
    /// The hand-over itself failed.
    Failed,
}

impl HandoffState {
    /// snake_case name, as in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffState::Bot => "bot",
            HandoffState::EscalationRequested => "escalation_requested",
            HandoffState::Queued => "queued",
            HandoffState::Attended => "attended",
            HandoffState::Closed => "closed",
            HandoffState::Failed => "failed",
        }
    }
}

/// How a handoff ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// An agent attended.
    Completed,
    /// The visitor left while waiting.
    Abandoned,
    /// The platform closed it while waiting.
    Missed,
    /// The hand-over itself failed.
    Failed,
}

impl Disposition {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Completed => "completed",
            Disposition::Abandoned => "abandoned",
            Disposition::Missed => "missed",
            Disposition::Failed => "failed",
        }
    }
}

/// SLA status of a handoff (METRICS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlaStatus {
    /// Answered within the target.
    Met,
    /// Answered after the target, or abandoned/missed after it.
    Breached,
    /// Still waiting, under target.
    Pending,
    /// Never queued, or abandoned before the short-abandon threshold.
    NotApplicable,
}

impl SlaStatus {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlaStatus::Met => "met",
            SlaStatus::Breached => "breached",
            SlaStatus::Pending => "pending",
            SlaStatus::NotApplicable => "not_applicable",
        }
    }
}

/// Who sent a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// The customer.
    Visitor,
    /// The bot (Ultimate, or a Bright Pattern scenario).
    Bot,
    /// A human agent.
    Agent,
    /// The platform itself (triggers, warnings, notices).
    System,
}

impl Party {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Visitor => "visitor",
            Party::Bot => "bot",
            Party::Agent => "agent",
            Party::System => "system",
        }
    }
}

/// What a transcript line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Plain text.
    Text,
    /// Text with buttons.
    Buttons,
    /// A carousel of cards.
    Carousel,
    /// An image (url).
    Image,
    /// A file (url).
    File,
    /// A visible event (form shown, timeout warning, ...).
    Event,
}

/// A button of a bot message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Button {
    /// `button` or `link`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Label.
    pub text: String,
    /// Target of a link button, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A carousel card of a bot message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Card {
    /// Title.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Image URL.
    pub image_url: Option<String>,
    /// The card's buttons.
    #[serde(default)]
    pub buttons: Vec<Button>,
}

/// One transcript line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Log position of the event it came from.
    pub seq: i64,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// Who sent it.
    pub party: Party,
    /// Name of the sender when known (agent name, `Visitor`, bot id).
    pub author: Option<String>,
    /// What it is.
    pub kind: MessageKind,
    /// Its text (for image/file: the caption, if any).
    pub text: Option<String>,
    /// Buttons of a bot message.
    #[serde(default)]
    pub buttons: Vec<Button>,
    /// Cards of a carousel.
    #[serde(default)]
    pub cards: Vec<Card>,
    /// URL or file id of an image or file.
    pub url: Option<String>,
    /// Platform it came from.
    pub platform: Platform,
    /// The event it came from.
    pub event_id: Uuid,
}

/// A human agent who handled a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    /// Display name.
    pub name: String,
    /// Nickname (Aivo Live).
    pub nickname: Option<String>,
    /// Group or queue the agent answered from.
    pub group: Option<String>,
}

/// One hand-over to a live backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Handoff {
    /// `aivo_live`, `bright_pattern` or `vcc`.
    pub backend: String,
    /// Queue / group of the latest routing within this handoff.
    pub queue: Option<String>,
    /// When the bot asked for it.
    pub requested_at: Option<DateTime<Utc>>,
    /// When it was queued.
    pub queued_at: Option<DateTime<Utc>>,
    /// When an agent first attended.
    pub attended_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub closed_at: Option<DateTime<Utc>>,
    /// Agents who handled it.
    pub agents: Vec<Agent>,
    /// Transfers within it.
    pub transfers: u32,
    /// queued -> first attended.
    pub wait_seconds: Option<f64>,
    /// first attended -> first agent message.
    pub first_response_seconds: Option<f64>,
    /// first attended -> closed.
    pub handle_seconds: Option<f64>,
    /// SLA status.
    pub sla_status: SlaStatus,
    /// While `pending`: when the answer target runs out (queued_at + the queue's target); from then on the
    /// API reports the handoff as `breached`.
    #[serde(default)]
    pub sla_deadline: Option<DateTime<Utc>>,
    /// How it ended.
    pub disposition: Option<Disposition>,
    /// Platform's own outcome value.
    pub platform_disposition: Option<String>,
    /// Close reason given by the platform.
    pub close_reason: Option<String>,
    /// Last failure recorded for it (queue call refused, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Counts of transcript lines by party.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageCounts {
    /// Visitor lines.
    pub visitor: u32,
    /// Bot lines.
    pub bot: u32,
    /// Agent lines.
    pub agent: u32,
    /// System lines.
    pub system: u32,
}

/// The projected state of one conversation (API.md, "Conversation").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    /// Stable id: UUIDv5 of its first stream key.
    pub id: Uuid,
    /// Current handoff state.
    pub state: HandoffState,
    /// How the latest handoff ended.
    pub disposition: Option<Disposition>,
    /// The platform's own outcome value (VCC `lost`, Aivo close reason, ...).
    pub platform_disposition: Option<String>,
    /// SLA status of the latest handoff.
    pub sla_status: SlaStatus,
    /// While `pending`: when the latest handoff's answer target runs out; from then on it reads `breached`.
    #[serde(default)]
    pub sla_deadline: Option<DateTime<Utc>>,
    /// Streams linked into this conversation.
    pub streams: Vec<StreamKey>,
    /// Queue of the latest handoff.
    pub queue: Option<String>,
    /// Every agent who handled it.
    pub agents: Vec<Agent>,
    /// Every hand-over, oldest first.
    pub handoffs: Vec<Handoff>,
    /// First event.
    pub started_at: DateTime<Utc>,
    /// Escalation requested (latest handoff).
    pub escalated_at: Option<DateTime<Utc>>,
    /// Queued (latest handoff).
    pub queued_at: Option<DateTime<Utc>>,
    /// First attended (latest handoff).
    pub first_attended_at: Option<DateTime<Utc>>,
    /// Closed (latest handoff).
    pub closed_at: Option<DateTime<Utc>>,
    /// Latest handoff's wait.
    pub wait_seconds: Option<f64>,
    /// Latest handoff's first response time.
    pub first_response_seconds: Option<f64>,
    /// Latest handoff's handle time.
    pub handle_seconds: Option<f64>,
    /// first event -> escalation requested.
    pub bot_seconds: Option<f64>,
    /// Transfers in the latest handoff.
    pub transfers: u32,
    /// Transcript line counts.
    pub message_counts: MessageCounts,
    /// Close reason of the latest handoff.
    pub close_reason: Option<String>,
    /// Attributes collected (actions webhook `setAttributes`, VCC client data).
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, Value>,
    /// Highest log position folded in.
    pub last_seq: i64,
    /// Time of the latest event folded in.
    pub updated_at: DateTime<Utc>,
}

impl Conversation {
    /// The conversation as it reads at `now`: a handoff still waiting past its answer target is `breached`
    /// (the projection has no clock, so the stored value stays `pending` until an event decides it).
    pub fn as_of(mut self, now: DateTime<Utc>) -> Conversation {
        let overdue = |status: SlaStatus, deadline: Option<DateTime<Utc>>| {
            status == SlaStatus::Pending && deadline.is_some_and(|d| d <= now)
        };
        if overdue(self.sla_status, self.sla_deadline) {
            self.sla_status = SlaStatus::Breached;
        }
        for h in &mut self.handoffs {
            if overdue(h.sla_status, h.sla_deadline) {
                h.sla_status = SlaStatus::Breached;
            }
        }
        self
    }
}

/// A delivery that was refused (400/422) and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuarantineEntry {
    /// Position in the quarantine.
    pub id: i64,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// Endpoint path it was posted to.
    pub path: String,
    /// Platform of the endpoint, when known.
    pub platform: Option<String>,
    /// Error code it was answered with.
    pub error_code: String,
    /// Error message it was answered with.
    pub error_message: String,
    /// HTTP status it was answered with.
    pub status: u16,
    /// Delivery headers.
    pub headers: BTreeMap<String, String>,
    /// The body, lossless: UTF-8 text when it was text, else base64.
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: String,
}

/// One run of a quarantined delivery through today's parsers, and what it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Redrive {
    /// When.
    pub at: DateTime<Utc>,
    /// The HTTP status it was answered with.
    pub status: u16,
    /// `appended`, `duplicate`, `unknown`, `rejected` or `unavailable`.
    pub outcome: String,
    /// The error code when it was refused again.
    pub error_code: Option<String>,
    /// Id of the (last) event it became.
    pub event_id: Option<Uuid>,
    /// Log position of that event.
    pub seq: Option<i64>,
    /// The conversation it was filed under.
    pub conversation_id: Option<Uuid>,
    /// Name of the API key that asked for it.
    pub key: Option<String>,
}

/// A rejected delivery before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewQuarantine {
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// Endpoint path.
    pub path: String,
    /// Platform of the endpoint.
    pub platform: Option<Platform>,
    /// Error code answered.
    pub error_code: String,
    /// Error message answered.
    pub error_message: String,
    /// HTTP status answered.
    pub status: u16,
    /// Delivery headers.
    pub headers: BTreeMap<String, String>,
    /// Raw bytes.
    pub body: Vec<u8>,
}
