//! What the service does beyond recording: it drives the handoff. It answers the bot's synchronous calls
//! (`isTeamOnline`, `escalate`, actions), turns newly appended events into outbound commands (queue the
//! conversation, pass the visitor's messages to the agent and the agent's back to the widget, end chats),
//! runs those commands through the durable outbox, and polls Bright Pattern chats for their events.
//!
//! Relay rules (each command is a `ledger.command` recorded before it is attempted):
//! - `widgetEscalate` -> queue with the routed backend, then `escalationQueueUpdate` (or `escalationFailed`).
//! - Aivo `attended`, Bright Pattern agent `party_joined` -> `escalationSuccess` (agent name). When the
//!   agent attended before the queue call returned (the race), it is sent when the link is made.
//! - Aivo `messageToClient` and Bright Pattern agent messages -> widget `message`, only once attended (the
//!   widget takes messages only after `escalationSuccess`). Aivo `source: trigger` messages are automatic
//!   texts for the visitor (greetings, inactivity warnings): they are relayed too, without an agent name,
//!   under the same rule; a trigger while still queued is recorded only.
//! - Aivo `transfer`, Bright Pattern `queued` status -> `escalationQueueUpdate`; Bright Pattern `failed`
//!   status -> `escalationFailed`.
//! - Aivo `close`, Bright Pattern `ended` / inactivity timeout -> `agentDisconnect`.
//! - `widgetMessage` and API visitor messages, while handed off -> the live agent.
//! - `widgetEndSession` -> end the Bright Pattern chat, or the Aivo one when `aivo_live.close_path` is set.
//!
//! Widget updates go to every conversation that has an Ultimate stream, as the widget API is keyed by it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::webhooks::{ActionResult, Ingested};
use crate::api::AppState;
use crate::backends::{
    BackendError, Backends, BrightPatternClient, LiveBackend, QueueRequest, QueueResult, WidgetUpdate,
};
use crate::config::{Config, RoutingConfig};
use crate::model::{
    AppendOutcome, Conversation, HandoffState, Message, NewEvent, NewQuarantine, Party, Platform, StoredEvent,
    StreamKey,
};
use crate::outbox::{
    command_id, Command, LiveTarget, PendingScan, RetryPolicy, SerialExecutor, WidgetCommand, OUTCOME_FAILED,
    OUTCOME_GAVE_UP, OUTCOME_OK,
};
use crate::poller::{body_ends_chat, EventSource, PollSink, Pollers};
use crate::sources::ledger::{self, CommandRecord, QueueAccepted};
use crate::sources::ultimate::ActionRequest;
use crate::sources::{self, Delivery};
use crate::store::{ConversationFilter, Store, StoreResult};
use crate::telemetry;
use crate::writer::{WriteError, Writer};

/// Checkpoint below which every command in the log has a result (the start-up scan begins there).
pub const SCAN_CHECKPOINT: &str = "outbox.scan_from";
/// Events read per page by the start-up scan.
const SCAN_PAGE: u32 = 1000;
/// Times a result is offered to a failing writer before it is left to the next start's scan.
const RECORD_ATTEMPTS: u32 = 10;

/// The answer to an operator's retry of a command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CommandRetry {
    /// The command now on its way (the new attempt, or the one still pending).
    pub command_id: String,
    /// The first command of the chain (the one that originally gave up).
    pub retry_of: String,
    /// What it does, e.g. `aivo_live_queue`, `widget_message`.
    pub action: String,
    /// True when nothing new was recorded: an attempt of this chain is still pending.
    pub duplicate: bool,
}

/// The id of the `n`th retry of command `root` (stable, so that concurrent retries record one command).
pub fn command_id_for_retry(root: &str, n: usize) -> String {
    command_id(root, &format!("retry-{n}"))
}

/// What a command's execution gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed {
    /// A queue call was accepted.
    Queued(QueueResult),
    /// Anything else succeeded; Bright Pattern may have answered with new server events.
    Done {
        /// Raw `{"events": [...]}` answer to append.
        server_events: Option<(String, String)>,
    },
}

type Reply = oneshot::Sender<Result<Executed, BackendError>>;

/// One command on its way through the outbox.
struct Job {
    conversation_id: Uuid,
    command_id: String,
    command: Command,
    reply: Option<Reply>,
}

/// The handoff driver. Cheap to clone.
#[derive(Clone)]
pub struct Handoff {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    writer: Writer,
    config: Arc<Config>,
    backends: Backends,
    bright_pattern: Option<Arc<BrightPatternClient>>,
    outbox: Arc<SerialExecutor<Job>>,
    pollers: Arc<Pollers>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("backends", &self.inner.backends)
            .field("active_conversations", &self.inner.outbox.active())
            .finish()
    }
}

/// Why an escalation cannot even be attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute(pub String);

/// The queue command an escalation for `team` becomes, or why there is none.
pub fn escalation_command(
    routing: &RoutingConfig,
    backends: &Backends,
    team: Option<&str>,
    conversation: &Conversation,
    widget: bool,
    synchronous: bool,
) -> Result<Command, NoRoute> {
    let route = routing.resolve(team).ok_or_else(|| {
        NoRoute(format!(
            "no route for team {}: configure [routing] default or [routing.teams.<name>]",
            team.unwrap_or("(none)")
        ))
    })?;
    if backends.for_route(route).is_none() {
        return Err(NoRoute(format!(
            "the route for team {} names backend `{}`, which is not configured",
            team.unwrap_or("(none)"),
            route.backend
        )));
    }
    let pcid = ultimate_id(conversation);
    Ok(Command::Queue {
        backend: route.backend.clone(),
        team: team.map(str::to_string),
        groups: route.groups.clone(),
        visitor_id: pcid.clone().unwrap_or_else(|| conversation.id.to_string()),
        attributes: conversation.attributes.clone(),
        notify_widget: if widget { pcid } else { None },
        synchronous,
    })
}

/// The Ultimate `platformConversationId` of a conversation, when it has one.
pub fn ultimate_id(conversation: &Conversation) -> Option<String> {
    conversation
        .streams
        .iter()
        .find(|s| s.platform == Platform::Ultimate && !s.external_id.is_empty())
        .map(|s| s.external_id.clone())
}

/// The live chat a conversation was last handed to: the latest accepted queue call, else a live stream.
pub fn live_target(events: &[StoredEvent], streams: &[StreamKey]) -> Option<LiveTarget> {
    let accepted = events
        .iter()
        .filter(|e| e.kind == ledger::QUEUE_ACCEPTED)
        .max_by_key(|e| e.seq)
        .and_then(|e| serde_json::from_value::<QueueAccepted>(e.payload.clone()).ok());
    if let Some(q) = accepted {
        return Some(LiveTarget {
            backend: q.backend,
            live_id: q.live_id,
        });
    }
    streams
        .iter()
        .rev()
        .find(|s| matches!(s.platform, Platform::AivoLive | Platform::BrightPattern))
        .map(|s| LiveTarget {
            backend: s.platform.as_str().to_string(),
            live_id: s.external_id.clone(),
        })
}

fn is_open(state: HandoffState) -> bool {
    matches!(
        state,
        HandoffState::EscalationRequested | HandoffState::Queued | HandoffState::Attended
    )
}

/// The agent an attend event names: Aivo `data.agent`, Bright Pattern `display_name` or first and last name.
pub fn agent_name(payload: &Value) -> Option<String> {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let aivo = payload.get("data").and_then(|d| d.get("agent"));
    text(aivo.and_then(|a| a.get("name")))
        .or_else(|| text(aivo.and_then(|a| a.get("nickname"))))
        .or_else(|| text(payload.get("display_name")))
        .or_else(|| {
            let parts: Vec<String> = [payload.get("first_name"), payload.get("last_name")]
                .into_iter()
                .filter_map(text)
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
}

/// Bright Pattern's `ewt` (seconds, number or string) as whole minutes, rounded up.
pub fn ewt_minutes(value: Option<&Value>) -> Option<u32> {
    let seconds = value.and_then(sources::number_or_string)?;
    u32::try_from((seconds.max(0) + 59) / 60).ok()
}

/// What a relay needs to know about the conversation after the event was appended.
#[derive(Debug, Clone, Copy)]
pub struct RelayContext<'a> {
    /// The conversation.
    pub conversation: &'a Conversation,
    /// The transcript line the event became, when it became one.
    pub line: Option<&'a Message>,
    /// The live chat, when known.
    pub target: Option<&'a LiveTarget>,
    /// Whether `aivo_live.close_path` is configured.
    pub aivo_close: bool,
}

/// Kinds of events that can call for an outbound command: every other event skips the relay's reads
/// (keeps the webhook path free of work for the events that never relay).
pub const RELAYED_KINDS: &[&str] = &[
    "ultimate.widget_escalate",
    "ultimate.widget_message",
    "ultimate.widget_end_session",
    ledger::API_MESSAGE,
    "aivo_live.attended",
    "aivo_live.message_to_client",
    "aivo_live.transfer",
    "aivo_live.close",
    "bright_pattern.chat_session_party_joined",
    "bright_pattern.chat_session_message",
    "bright_pattern.chat_session_file",
    "bright_pattern.chat_session_status",
    "bright_pattern.chat_session_ended",
    "bright_pattern.chat_session_inactivity_timeout",
    "bright_pattern.chat_session_inactvity_timeout",
];

/// The commands a newly appended event calls for (escalations excepted: they need routing and I/O).
pub fn plan_relay(kind: &str, payload: &Value, ctx: RelayContext<'_>) -> Vec<Command> {
    let c = ctx.conversation;
    let pcid = ultimate_id(c);
    let widget = |update: WidgetUpdate| {
        pcid.clone().map(|pcid| Command::Widget {
            platform_conversation_id: pcid,
            update: WidgetCommand::from_update(&update),
        })
    };
    let last_agent = || c.agents.last().map(|a| a.name.clone());
    let command = match kind {
        "ultimate.widget_message" | ledger::API_MESSAGE if is_open(c.state) => {
            let visitor =
                kind != ledger::API_MESSAGE || payload.get("party").and_then(Value::as_str) == Some("visitor");
            let text = if kind == ledger::API_MESSAGE {
                payload.get("text").and_then(Value::as_str)
            } else {
                payload.get("data").and_then(|d| d.get("text")).and_then(Value::as_str)
            };
            match text.filter(|t| !t.trim().is_empty()) {
                Some(text) if visitor => Some(Command::VisitorMessage {
                    text: text.to_string(),
                    target: ctx.target.cloned(),
                }),
                _ => None,
            }
        }
        "ultimate.widget_end_session" => {
            // The visitor's leaving closed the latest handoff just now: the live chat is still open.
            let closed_by_visitor = c
                .handoffs
                .last()
                .is_some_and(|h| h.close_reason.as_deref() == Some("visitor_left"));
            let aivo_without_close = ctx.target.is_some_and(|t| t.backend == "aivo_live") && !ctx.aivo_close;
            (closed_by_visitor && !aivo_without_close).then(|| Command::EndChat {
                target: ctx.target.cloned(),
            })
        }
        "aivo_live.attended" if c.state == HandoffState::Attended => widget(WidgetUpdate::Success {
            agent: agent_name(payload).or_else(last_agent).unwrap_or_default(),
        }),
        "bright_pattern.chat_session_party_joined"
            if c.state == HandoffState::Attended && payload.get("type").and_then(Value::as_str) != Some("scenario") =>
        {
            widget(WidgetUpdate::Success {
                agent: agent_name(payload).or_else(last_agent).unwrap_or_default(),
            })
        }
        "aivo_live.message_to_client" | "bright_pattern.chat_session_message" | "bright_pattern.chat_session_file"
            if c.state == HandoffState::Attended =>
        {
            match ctx.line {
                Some(line)
                    if line.party == Party::Agent || (line.party == Party::System && kind.starts_with("aivo")) =>
                {
                    let text = line.text.clone().filter(|t| !t.is_empty()).or_else(|| line.url.clone());
                    text.and_then(|text| {
                        widget(WidgetUpdate::Message {
                            agent: if line.party == Party::Agent {
                                line.author.clone()
                            } else {
                                None
                            },
                            text,
                        })
                    })
                }
                _ => None,
            }
        }
        "aivo_live.transfer" => widget(WidgetUpdate::QueueUpdate {
            queue_position: None,
            waiting_minutes: None,
        }),
        "bright_pattern.chat_session_status" => match payload.get("state").and_then(Value::as_str) {
            Some("queued") => widget(WidgetUpdate::QueueUpdate {
                queue_position: None,
                waiting_minutes: ewt_minutes(payload.get("ewt")),
            }),
            Some("failed") => widget(WidgetUpdate::Failed { text: None }),
            _ => None,
        },
        "aivo_live.close"
        | "bright_pattern.chat_session_ended"
        | "bright_pattern.chat_session_inactivity_timeout"
        | "bright_pattern.chat_session_inactvity_timeout" => {
            widget(WidgetUpdate::AgentDisconnect { agent: last_agent() })
        }
        _ => None,
    };
    command.into_iter().collect()
}

/// How an escalation's failure is answered to the bot (or support tooling).
pub fn escalation_error(backend: &str, error: &BackendError) -> ApiError {
    match error {
        BackendError::Timeout => ApiError::GatewayTimeout(format!("{backend} did not answer the queue call in time")),
        BackendError::Network(e) => ApiError::Unavailable(format!("{backend} is unreachable: {e}")),
        BackendError::Transient { status, body } | BackendError::Permanent { status, body } => {
            ApiError::BadGateway(format!("{backend} refused the hand-over: HTTP {status}: {body}"))
        }
        BackendError::Invalid(e) => {
            ApiError::BadGateway(format!("{backend} answered the queue call unexpectedly: {e}"))
        }
    }
}

fn live_platform(backend: &str) -> Option<Platform> {
    match backend {
        "aivo_live" => Some(Platform::AivoLive),
        "bright_pattern" => Some(Platform::BrightPattern),
        _ => None,
    }
}

impl Handoff {
    /// Builds the driver with the outbound clients `config` configures. Nothing runs until [`Handoff::start`].
    pub fn new(store: Arc<dyn Store>, writer: Writer, config: Arc<Config>) -> Result<Handoff, BackendError> {
        let backends = Backends::from_config(&config)?;
        let bright_pattern = if config.bright_pattern.base_url.trim().is_empty() {
            None
        } else {
            Some(Arc::new(BrightPatternClient::new(&config.bright_pattern)?))
        };
        let policy = RetryPolicy::from_config(&config.outbox);
        Ok(Handoff {
            inner: Arc::new(Inner {
                store,
                writer,
                config,
                backends,
                bright_pattern,
                outbox: Arc::new(SerialExecutor::default()),
                pollers: Arc::new(Pollers::default()),
                policy,
            }),
        })
    }

    /// The outbound clients.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// Whether a Bright Pattern chat is being polled now.
    pub fn is_polling(&self, chat_id: &str) -> bool {
        self.inner.pollers.is_polling(chat_id)
    }

    /// Re-sends every command recorded before now without a result, and resumes polling the Bright
    /// Pattern chats still open. Call before the server accepts requests: commands recorded after the
    /// log position read here are dispatched by whoever records them, so none is sent twice by this.
    pub async fn start(&self) -> StoreResult<()> {
        let upto = self.inner.store.last_seq().await?;
        let this = self.clone();
        tokio::spawn(async move {
            match this.recover(upto).await {
                Ok(n) if n > 0 => tracing::info!(commands = n, "re-sent commands recorded before the restart"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "scanning the log for pending commands failed"),
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            match this.resume_polls().await {
                Ok(n) if n > 0 => tracing::info!(chats = n, "resumed polling Bright Pattern chats"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "listing open Bright Pattern chats failed"),
            }
        });
        Ok(())
    }

    /// Scans the log up to `upto` for commands without a result and dispatches them in log order;
    /// returns how many were found.
    pub async fn recover(&self, upto: i64) -> StoreResult<usize> {
        let store = &self.inner.store;
        let from = store.checkpoint(SCAN_CHECKPOINT).await?;
        let mut scan = PendingScan::default();
        let mut after = from;
        while after < upto {
            let page = store.events_after(after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in page.iter().filter(|e| e.seq <= upto) {
                scan.feed(event);
            }
        }
        let pending = scan.into_pending();
        let settled_below = pending.first().map(|p| p.seq - 1).unwrap_or(upto.max(from));
        store.set_checkpoint(SCAN_CHECKPOINT, settled_below).await?;
        let count = pending.len();
        for p in pending {
            match Command::from_record(&p.record) {
                Some(Command::Queue { synchronous: true, .. }) => {
                    // The bot was answered with an error (or nothing) when this was interrupted; queueing
                    // now would open a live chat nobody waits in.
                    let detail = "interrupted by a restart before its outcome was known; not re-sent: the \
                                  synchronous escalate was already answered with an error";
                    self.record_outcome(p.conversation_id, &p.record, OUTCOME_FAILED, detail, None, Vec::new())
                        .await;
                }
                Some(command) => self.dispatch(Job {
                    conversation_id: p.conversation_id,
                    command_id: p.record.command_id.clone(),
                    command,
                    reply: None,
                }),
                None => {
                    let detail = "the recorded command cannot be read by this version";
                    self.record_outcome(p.conversation_id, &p.record, OUTCOME_FAILED, detail, None, Vec::new())
                        .await;
                }
            }
        }
        Ok(count)
    }

    /// Starts a poll loop for every Bright Pattern chat of a queued or attended conversation.
    pub async fn resume_polls(&self) -> StoreResult<usize> {
        if self.inner.bright_pattern.is_none() {
            return Ok(0);
        }
        let mut started = 0;
        for state in ["queued", "attended"] {
            let mut filter = ConversationFilter {
                platform: Some("bright_pattern".into()),
                state: Some(state.into()),
                limit: 500,
                ..Default::default()
            };
            loop {
                let page = self.inner.store.list_conversations(&filter).await?;
                for c in &page.items {
                    for s in c.streams.iter().filter(|s| s.platform == Platform::BrightPattern) {
                        if self.poll(&s.external_id) {
                            started += 1;
                        }
                    }
                }
                match page.next {
                    Some(next) => filter.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(started)
    }

    fn poll(&self, chat_id: &str) -> bool {
        let Some(client) = self.inner.bright_pattern.clone() else {
            return false;
        };
        let source: Arc<dyn EventSource> = client;
        let sink: Arc<dyn PollSink> = Arc::new(self.clone());
        self.inner.pollers.start(source, sink, chat_id, self.inner.policy)
    }

    /// `isTeamOnline`: route, opening hours and the backend's availability, within 2 s.
    pub async fn team_online(&self, team: Option<&str>) -> bool {
        self.inner
            .backends
            .team_online(&self.inner.config.routing, team, Utc::now())
            .await
    }

    /// A synchronous escalation (`escalate`, `POST /v1/conversations/{id}/handoff`): queues the conversation
    /// with the routed backend within `ultimate.escalate_deadline_seconds`. `trigger` is the event that
    /// asked for it (its id makes the command id, so a repeated trigger is one command).
    pub async fn escalate(&self, conversation_id: Uuid, team: Option<&str>, trigger: Uuid) -> Result<(), ApiError> {
        let conversation = self
            .inner
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no conversation {conversation_id}")))?;
        if matches!(conversation.state, HandoffState::Queued | HandoffState::Attended) {
            // Already with a live team: a repeated request is answered as the first was.
            return Ok(());
        }
        let command = match escalation_command(
            &self.inner.config.routing,
            &self.inner.backends,
            team,
            &conversation,
            false,
            true,
        ) {
            Ok(command) => command,
            Err(NoRoute(reason)) => {
                let backend = self
                    .inner
                    .config
                    .routing
                    .resolve(team)
                    .map(|r| r.backend.clone())
                    .unwrap_or_default();
                self.append_durably(vec![ledger::queue_failed(
                    conversation.id,
                    &backend,
                    &reason,
                    Utc::now(),
                )])
                .await;
                return Err(ApiError::Unavailable(reason));
            }
        };
        let backend = match &command {
            Command::Queue { backend, .. } => backend.clone(),
            _ => String::new(),
        };
        let id = command_id(&trigger.to_string(), &command.action());
        let (tx, rx) = oneshot::channel();
        let submitted = self
            .submit_with_reply(conversation.id, vec![(id, command)], Some(tx))
            .await
            .map_err(ApiError::from)?;
        if submitted == 0 {
            return Err(ApiError::Unavailable(
                "this escalation was already attempted; see the conversation's handoff for its outcome".into(),
            ));
        }
        let deadline = Duration::from_secs(self.inner.config.ultimate.escalate_deadline_seconds.max(1));
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(escalation_error(&backend, &e)),
            Ok(Err(_)) => Err(ApiError::Unavailable(
                "the hand-over was interrupted; see the conversation's handoff for its outcome".into(),
            )),
            Err(_) => Err(ApiError::GatewayTimeout(format!(
                "{backend} did not answer within {} s; the outcome will be recorded on the conversation",
                deadline.as_secs()
            ))),
        }
    }

    /// Turns newly appended events into commands (duplicates are skipped: they were relayed when first
    /// appended). Only records and dispatches: never waits for a backend.
    pub async fn relay(&self, events: &[NewEvent], outcomes: &[AppendOutcome]) {
        for (event, outcome) in events.iter().zip(outcomes) {
            if outcome.duplicate || !RELAYED_KINDS.contains(&event.kind.as_str()) {
                continue;
            }
            let Some(conversation_id) = outcome.conversation_id else {
                continue;
            };
            let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
            if let Err(e) = self
                .relay_one(conversation_id, outcome.event_id, outcome.seq, &event.kind, &payload)
                .await
            {
                tracing::error!(error = %e, event_id = %outcome.event_id, kind = %event.kind, "relay failed");
            }
        }
    }

    async fn relay_one(
        &self,
        conversation_id: Uuid,
        event_id: Uuid,
        seq: i64,
        kind: &str,
        payload: &Value,
    ) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let Some(conversation) = store.get_conversation(conversation_id).await? else {
            return Ok(());
        };
        let trigger = event_id.to_string();
        if kind == "ultimate.widget_escalate" {
            if conversation.state != HandoffState::EscalationRequested {
                return Ok(());
            }
            let team = sources::ultimate::team_of(payload);
            let commands = match escalation_command(
                &self.inner.config.routing,
                &self.inner.backends,
                team.as_deref(),
                &conversation,
                true,
                false,
            ) {
                Ok(command) => vec![(command_id(&trigger, &command.action()), command)],
                Err(NoRoute(reason)) => {
                    self.append_durably(vec![ledger::queue_failed(conversation.id, "", &reason, Utc::now())])
                        .await;
                    let failed = ultimate_id(&conversation).map(|pcid| Command::Widget {
                        platform_conversation_id: pcid,
                        update: WidgetCommand::from_update(&WidgetUpdate::Failed { text: None }),
                    });
                    failed
                        .into_iter()
                        .map(|c| (command_id(&trigger, &c.action()), c))
                        .collect()
                }
            };
            self.submit(conversation.id, commands).await?;
            return Ok(());
        }
        let needs_line = matches!(
            kind,
            "aivo_live.message_to_client" | "bright_pattern.chat_session_message" | "bright_pattern.chat_session_file"
        );
        let needs_target = matches!(
            kind,
            "ultimate.widget_message" | "ultimate.widget_end_session" | ledger::API_MESSAGE
        );
        let line = if needs_line && conversation.state == HandoffState::Attended {
            // Only the event's own lines: reading the whole transcript would make a relay cost the
            // length of its conversation.
            store
                .event_lines(conversation.id, seq)
                .await?
                .into_iter()
                .find(|m| m.event_id == event_id)
        } else {
            None
        };
        let target = if needs_target {
            let events = store.conversation_events(conversation.id).await?.unwrap_or_default();
            live_target(&events, &conversation.streams)
        } else {
            None
        };
        let ctx = RelayContext {
            conversation: &conversation,
            line: line.as_ref(),
            target: target.as_ref(),
            aivo_close: !self.inner.config.aivo_live.close_path.trim().is_empty(),
        };
        let commands: Vec<(String, Command)> = plan_relay(kind, payload, ctx)
            .into_iter()
            .map(|c| (command_id(&trigger, &c.action()), c))
            .collect();
        if !commands.is_empty() {
            self.submit(conversation.id, commands).await?;
        }
        Ok(())
    }

    /// Re-sends a command of `conversation_id` that ended `failed` or `gave_up` (an operator's retry): a new
    /// `ledger.command` with `retry_of` naming the first command of the chain, then the outbox as usual.
    /// Idempotent: while the latest attempt of the chain has no result, asking again answers that attempt
    /// (`duplicate: true`), and concurrent retries of one attempt record one command. A chain whose latest
    /// attempt succeeded is a conflict.
    pub async fn retry(&self, conversation_id: Uuid, command_id: &str) -> Result<CommandRetry, ApiError> {
        let events = self
            .inner
            .store
            .conversation_events(conversation_id)
            .await?
            .unwrap_or_default();
        let records = |kind: &'static str| {
            events
                .iter()
                .filter(move |e| e.kind == kind)
                .filter_map(|e| serde_json::from_value::<CommandRecord>(e.payload.clone()).ok())
        };
        let commands: Vec<CommandRecord> = records(ledger::COMMAND).collect();
        let named = commands
            .iter()
            .find(|c| c.command_id == command_id)
            .ok_or_else(|| ApiError::NotFound(format!("no command {command_id} in conversation {conversation_id}")))?;
        let root = named.retry_of.clone().unwrap_or_else(|| named.command_id.clone());
        let chain: Vec<&CommandRecord> = commands
            .iter()
            .filter(|c| c.command_id == root || c.retry_of.as_deref() == Some(root.as_str()))
            .collect();
        let latest = chain.last().copied().unwrap_or(named);
        let outcome = records(ledger::COMMAND_RESULT)
            .rfind(|r| r.command_id == latest.command_id)
            .and_then(|r| r.outcome);
        let pending = |duplicate| CommandRetry {
            command_id: latest.command_id.clone(),
            retry_of: root.clone(),
            action: latest.action.clone(),
            duplicate,
        };
        match outcome.as_deref() {
            None => return Ok(pending(true)),
            Some(OUTCOME_OK) => {
                return Err(ApiError::Conflict(format!(
                    "command {} succeeded; there is nothing to retry",
                    latest.command_id
                )))
            }
            Some(_) => {}
        }
        let command = match Command::from_record(latest) {
            // Nobody waits for a retried escalation: it gets the outbox's retries like any other call.
            Some(Command::Queue {
                backend,
                team,
                groups,
                visitor_id,
                attributes,
                notify_widget,
                ..
            }) => Command::Queue {
                backend,
                team,
                groups,
                visitor_id,
                attributes,
                notify_widget,
                synchronous: false,
            },
            Some(other) => other,
            None => {
                return Err(ApiError::Conflict(format!(
                    "command {} cannot be read by this version",
                    latest.command_id
                )))
            }
        };
        let retry_id = command_id_for_retry(&root, chain.len());
        let mut record = command.record(&retry_id);
        record.retry_of = Some(root.clone());
        let event = ledger::command(conversation_id, ledger::COMMAND, &record, Utc::now());
        let outcomes = self.inner.writer.append(vec![event]).await?;
        let duplicate = outcomes.first().is_none_or(|o| o.duplicate);
        if !duplicate {
            let conversation_id = outcomes
                .first()
                .and_then(|o| o.conversation_id)
                .unwrap_or(conversation_id);
            self.dispatch(Job {
                conversation_id,
                command_id: retry_id.clone(),
                command,
                reply: None,
            });
        }
        Ok(CommandRetry {
            command_id: retry_id,
            retry_of: root,
            action: record.action,
            duplicate,
        })
    }

    /// Records commands (one `ledger.command` each, in one append) and dispatches those newly recorded;
    /// returns how many were.
    pub async fn submit(&self, conversation_id: Uuid, commands: Vec<(String, Command)>) -> Result<usize, WriteError> {
        self.submit_with_reply(conversation_id, commands, None).await
    }

    async fn submit_with_reply(
        &self,
        conversation_id: Uuid,
        commands: Vec<(String, Command)>,
        mut reply: Option<Reply>,
    ) -> Result<usize, WriteError> {
        if commands.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let events: Vec<NewEvent> = commands
            .iter()
            .map(|(id, c)| ledger::command(conversation_id, ledger::COMMAND, &c.record(id), now))
            .collect();
        let outcomes = self.inner.writer.append(events).await?;
        let mut dispatched = 0;
        for ((id, command), outcome) in commands.into_iter().zip(outcomes) {
            if outcome.duplicate {
                continue;
            }
            dispatched += 1;
            self.dispatch(Job {
                conversation_id: outcome.conversation_id.unwrap_or(conversation_id),
                command_id: id,
                command,
                reply: reply.take(),
            });
        }
        Ok(dispatched)
    }

    fn dispatch(&self, job: Job) {
        let this = self.clone();
        telemetry::outbox_command_started();
        self.inner.outbox.dispatch(job.conversation_id, job, move |job| {
            let this = this.clone();
            async move {
                this.run(job).await;
                telemetry::outbox_command_finished();
            }
        });
    }

    /// Stops the background work for a shutdown: every command in flight finishes its call and records
    /// its result, none starts (commands left are recorded and re-sent at the next start); Bright Pattern
    /// polls stop waiting, storing what a poll already brought. Returns when all of it is done.
    pub async fn stop(&self) {
        tracing::info!(
            outbox_workers = self.inner.outbox.running(),
            "stopping the outbox and the Bright Pattern polls"
        );
        tokio::join!(self.inner.outbox.stop(), self.inner.pollers.stop());
    }

    /// Runs one command: attempts with backoff, records the result with its consequences, answers the waiter.
    async fn run(&self, job: Job) {
        let single = matches!(job.command, Command::Queue { synchronous: true, .. });
        let policy = self.inner.policy;
        let stopping = self.inner.outbox.stopping().clone();
        let mut attempt: u32 = 1;
        let result = loop {
            match self.execute(&job).await {
                Err(e) if e.is_transient() && !single && attempt < policy.max_attempts => {
                    tracing::warn!(command_id = %job.command_id, attempt, error = %e, "command failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(policy.delay(attempt, rand::random())) => {}
                        _ = stopping.cancelled() => {
                            tracing::info!(command_id = %job.command_id, "stopping: the command is re-sent at the next start");
                            return;
                        }
                    }
                    attempt += 1;
                }
                other => break other,
            }
        };
        if result.is_err() {
            telemetry::outbox_command_failed(job.command.backend());
        }
        let record = job.command.record(&job.command_id);
        let now = Utc::now();
        let mut follow_ups: Vec<(String, Command)> = Vec::new();
        let mut effects: Vec<NewEvent> = Vec::new();
        let (outcome, detail, body) = match &result {
            Ok(Executed::Queued(q)) => (OUTCOME_OK, format!("live id {}", q.live_id), Some(q.raw.clone())),
            Ok(Executed::Done { .. }) => (OUTCOME_OK, String::new(), None),
            Err(e) if e.is_transient() => (OUTCOME_GAVE_UP, format!("after {attempt} attempts: {e}"), None),
            Err(e) => (OUTCOME_FAILED, e.to_string(), None),
        };
        if let Command::Queue {
            backend,
            team,
            notify_widget,
            ..
        } = &job.command
        {
            match &result {
                Ok(Executed::Queued(q)) => {
                    let accepted = QueueAccepted {
                        backend: backend.clone(),
                        queue: q.queue.clone(),
                        live_id: q.live_id.clone(),
                        team: team.clone(),
                    };
                    if let Some(platform) = live_platform(backend) {
                        let live = StreamKey::new(platform, q.live_id.clone());
                        effects.push(ledger::queue_accepted(job.conversation_id, &accepted, live, now));
                    }
                    if let Some(pcid) = notify_widget {
                        let update = WidgetUpdate::QueueUpdate {
                            queue_position: None,
                            waiting_minutes: ewt_minutes(q.raw.get("ewt")),
                        };
                        follow_ups.push(widget_command(&job.command_id, pcid, &update));
                    }
                }
                Err(e) => {
                    effects.push(ledger::queue_failed(
                        job.conversation_id,
                        backend,
                        &format!("{backend} queue call {outcome}: {e}"),
                        now,
                    ));
                    if let Some(pcid) = notify_widget {
                        let update = WidgetUpdate::Failed { text: None };
                        follow_ups.push(widget_command(&job.command_id, pcid, &update));
                    }
                }
                Ok(Executed::Done { .. }) => {}
            }
        }
        let outcomes = self
            .record_outcome(job.conversation_id, &record, outcome, &detail, body, {
                let mut events = effects;
                events.extend(
                    follow_ups
                        .iter()
                        .map(|(id, c)| ledger::command(job.conversation_id, ledger::COMMAND, &c.record(id), now)),
                );
                events
            })
            .await;
        // The follow-ups come after the result and the effects in the same append.
        let survivor = outcomes
            .as_ref()
            .and_then(|o| o.iter().rev().find_map(|o| o.conversation_id))
            .unwrap_or(job.conversation_id);
        if let Some(outcomes) = &outcomes {
            let offset = outcomes.len().saturating_sub(follow_ups.len());
            for ((id, command), outcome) in follow_ups.into_iter().zip(outcomes.iter().skip(offset)) {
                if !outcome.duplicate {
                    self.dispatch(Job {
                        conversation_id: survivor,
                        command_id: id,
                        command,
                        reply: None,
                    });
                }
            }
        }
        if let Some(reply) = job.reply {
            let _ = reply.send(result.clone());
        }
        match result {
            Ok(Executed::Queued(q)) => {
                if let Command::Queue { backend, .. } = &job.command {
                    if backend == "bright_pattern" {
                        self.poll(&q.live_id);
                    }
                }
                if let Err(e) = self.after_link(survivor).await {
                    tracing::error!(error = %e, conversation_id = %survivor, "checking for an early attend failed");
                }
            }
            Ok(Executed::Done {
                server_events: Some((chat_id, body)),
            }) => {
                if let Err(e) = self.deliver(&chat_id, &body).await {
                    tracing::error!(error = %e, chat_id, "storing Bright Pattern events from a send answer failed");
                }
            }
            _ => {}
        }
    }

    /// The race: an agent attended before the queue call returned, so the attend was filed under a
    /// conversation of its own and relayed nowhere. Now that the link merged them, tell the widget.
    async fn after_link(&self, conversation_id: Uuid) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let Some(conversation) = store.get_conversation(conversation_id).await? else {
            return Ok(());
        };
        if conversation.state != HandoffState::Attended || ultimate_id(&conversation).is_none() {
            return Ok(());
        }
        let events = store.conversation_events(conversation.id).await?.unwrap_or_default();
        let attend = events
            .iter()
            .filter(|e| {
                e.kind == "aivo_live.attended"
                    || (e.kind == "bright_pattern.chat_session_party_joined"
                        && e.payload.get("type").and_then(Value::as_str) != Some("scenario"))
            })
            .max_by_key(|e| e.seq);
        let Some(attend) = attend else { return Ok(()) };
        let ctx = RelayContext {
            conversation: &conversation,
            line: None,
            target: None,
            aivo_close: false,
        };
        // Same trigger, same command id as the attend's own relay: whichever runs second records nothing.
        let trigger = attend.event_id.to_string();
        let commands: Vec<(String, Command)> = plan_relay(&attend.kind, &attend.payload, ctx)
            .into_iter()
            .map(|c| (command_id(&trigger, &c.action()), c))
            .collect();
        self.submit(conversation.id, commands).await?;
        Ok(())
    }

    /// One attempt at a command.
    async fn execute(&self, job: &Job) -> Result<Executed, BackendError> {
        let not_configured = |what: &str| BackendError::Invalid(format!("{what} is not configured"));
        match &job.command {
            Command::Queue {
                backend,
                team,
                groups,
                visitor_id,
                attributes,
                ..
            } => {
                let client = self.live(backend).ok_or_else(|| not_configured(backend))?;
                let request = QueueRequest {
                    conversation_id: job.conversation_id,
                    visitor_id: visitor_id.clone(),
                    groups: groups.clone(),
                    attributes: attributes.clone(),
                    team: team.clone(),
                };
                client.queue(&request).await.map(Executed::Queued)
            }
            Command::Widget {
                platform_conversation_id,
                update,
            } => {
                let widget = self
                    .inner
                    .backends
                    .widget
                    .as_ref()
                    .ok_or_else(|| not_configured("the Ultimate widget API"))?;
                let update = update
                    .to_update()
                    .ok_or_else(|| BackendError::Invalid(format!("unknown widget event {}", update.event_type)))?;
                widget.send(platform_conversation_id, &update).await?;
                Ok(Executed::Done { server_events: None })
            }
            Command::VisitorMessage { text, target } => {
                let target = self.resolve(job.conversation_id, target).await?;
                if target.backend == "bright_pattern" {
                    if let Some(bp) = &self.inner.bright_pattern {
                        let events = bp.send_message(&target.live_id, &job.command_id, text).await?;
                        return Ok(Executed::Done {
                            server_events: events.map(|e| (target.live_id.clone(), e)),
                        });
                    }
                }
                let client = self
                    .live(&target.backend)
                    .ok_or_else(|| not_configured(&target.backend))?;
                client
                    .send_visitor_message(&target.live_id, &job.command_id, text)
                    .await?;
                Ok(Executed::Done { server_events: None })
            }
            Command::EndChat { target } => {
                let target = self.resolve(job.conversation_id, target).await?;
                if target.backend == "bright_pattern" {
                    if let Some(bp) = &self.inner.bright_pattern {
                        let events = bp.end_chat(&target.live_id).await?;
                        return Ok(Executed::Done {
                            server_events: events.map(|e| (target.live_id.clone(), e)),
                        });
                    }
                }
                let client = self
                    .live(&target.backend)
                    .ok_or_else(|| not_configured(&target.backend))?;
                client.end(&target.live_id, &job.command_id).await?;
                Ok(Executed::Done { server_events: None })
            }
        }
    }

    fn live(&self, backend: &str) -> Option<Arc<dyn LiveBackend>> {
        match backend {
            "aivo_live" => self.inner.backends.aivo.clone(),
            "bright_pattern" => self.inner.backends.bright_pattern.clone(),
            _ => None,
        }
    }

    /// The recorded target, else the conversation's live chat now (the queue call ran before, in order).
    async fn resolve(&self, conversation_id: Uuid, target: &Option<LiveTarget>) -> Result<LiveTarget, BackendError> {
        if let Some(t) = target {
            return Ok(t.clone());
        }
        let store = &self.inner.store;
        let unavailable = |e: crate::store::StoreError| BackendError::Network(format!("the event log: {e}"));
        let conversation = store
            .get_conversation(conversation_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| BackendError::Invalid(format!("no conversation {conversation_id}")))?;
        let events = store
            .conversation_events(conversation.id)
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        live_target(&events, &conversation.streams)
            .ok_or_else(|| BackendError::Invalid("the conversation has no live chat to relay to".into()))
    }

    /// Appends a command's result (plus `extra` events) in one append; None when the log stayed unavailable.
    async fn record_outcome(
        &self,
        conversation_id: Uuid,
        command: &CommandRecord,
        outcome: &str,
        detail: &str,
        body: Option<Value>,
        extra: Vec<NewEvent>,
    ) -> Option<Vec<AppendOutcome>> {
        let result = CommandRecord {
            command_id: command.command_id.clone(),
            action: command.action.clone(),
            outcome: Some(outcome.to_string()),
            detail: (!detail.is_empty()).then(|| detail.to_string()),
            body,
            retry_of: command.retry_of.clone(),
        };
        let mut events = vec![ledger::command(
            conversation_id,
            ledger::COMMAND_RESULT,
            &result,
            Utc::now(),
        )];
        events.extend(extra);
        self.append_durably(events).await
    }

    /// Appends, retrying while the log is unavailable (a result not stored means a re-send at the next start).
    async fn append_durably(&self, events: Vec<NewEvent>) -> Option<Vec<AppendOutcome>> {
        let mut attempt: u32 = 0;
        loop {
            match self.inner.writer.append(events.clone()).await {
                Ok(outcomes) => return Some(outcomes),
                Err(WriteError::Stopped) => return None,
                Err(e) => {
                    attempt += 1;
                    if attempt >= RECORD_ATTEMPTS {
                        tracing::error!(error = %e, "giving up recording an outbox outcome; the next start re-sends");
                        return None;
                    }
                    tokio::time::sleep(self.inner.policy.delay(attempt, rand::random())).await;
                }
            }
        }
    }

    /// Appends a Bright Pattern events body (a poll answer or a send answer) for `chat_id`, relays what is
    /// new, and says whether the chat ended. A body that does not parse is kept in the quarantine.
    pub async fn deliver(&self, chat_id: &str, body: &str) -> Result<bool, String> {
        let received_at = sources::truncate_to_micros(Utc::now());
        let headers = BTreeMap::from([("x-ledger-source".to_string(), "bright_pattern_poll".to_string())]);
        let parsed = sources::parse_json(body.as_bytes()).and_then(|value| {
            let delivery = Delivery {
                received_at,
                headers: headers.clone(),
                idempotency_key: None,
                path_id: Some(chat_id),
            };
            sources::bright_pattern::parse(body, &value, &delivery).map(|parsed| (value, parsed))
        });
        let (value, parsed) = match parsed {
            Ok(ok) => ok,
            Err(e) => {
                let error = ApiError::from(e);
                let detail = error.body().error;
                let entry = NewQuarantine {
                    received_at,
                    path: format!("poll:/chats/{chat_id}/events"),
                    platform: Some(Platform::BrightPattern),
                    error_code: detail.code,
                    error_message: detail.message,
                    status: 0,
                    headers,
                    body: body.as_bytes().to_vec(),
                };
                self.inner.writer.quarantine(entry).await.map_err(|e| e.to_string())?;
                return Ok(false);
            }
        };
        let outcomes = self
            .inner
            .writer
            .append(parsed.events.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.relay(&parsed.events, &outcomes).await;
        Ok(body_ends_chat(&value))
    }
}

fn widget_command(parent: &str, pcid: &str, update: &WidgetUpdate) -> (String, Command) {
    let command = Command::Widget {
        platform_conversation_id: pcid.to_string(),
        update: WidgetCommand::from_update(update),
    };
    (command_id(parent, &command.action()), command)
}

#[async_trait::async_trait]
impl PollSink for Handoff {
    async fn deliver(&self, chat_id: &str, body: &str) -> Result<bool, String> {
        Handoff::deliver(self, chat_id, body).await
    }
}

/// Whether a team can take a conversation now (`isTeamOnline`).
pub async fn team_online(state: &AppState, team: Option<&str>) -> bool {
    state.handoff.team_online(team).await
}

/// Answers a synchronous `escalate`: 200 when the routed backend accepted the hand-over.
pub async fn escalate_sync(state: &AppState, ingested: &Ingested, team: Option<&str>) -> Result<(), ApiError> {
    let Some(outcome) = ingested.outcomes.first() else {
        return Ok(());
    };
    let Some(conversation_id) = outcome.conversation_id else {
        return Err(ApiError::Unavailable("the escalation names no conversation".into()));
    };
    state.handoff.escalate(conversation_id, team, outcome.event_id).await
}

/// Reacts to events just appended (relays to live platforms and the widget).
pub async fn after_append(state: &AppState, ingested: &Ingested) {
    state.handoff.relay(&ingested.parsed.events, &ingested.outcomes).await;
}

/// Runs an actions-webhook action and returns the bot's session variables.
pub async fn run_action(
    state: &AppState,
    action: &ActionRequest,
    conversation_id: Option<Uuid>,
) -> Result<Vec<ActionResult>, ApiError> {
    match action.name.as_str() {
        // The event is already appended: the projection turns it into the conversation's attributes.
        // The event is already appended: the projection turns it into the conversation's attributes.
        // The answer echoes them in the order the bot sent them.
        "setAttributes" => Ok(action
            .data
            .iter()
            .map(|p| {
                let single = ActionRequest {
                    data: vec![p.clone()],
                    ..action.clone()
                };
                sources::ultimate::action_attributes(&single)
            })
            .flat_map(|attributes| attributes.into_iter().map(|(key, value)| result(&key, value)))
            .collect()),
        "getHandoffStatus" => {
            let conversation = match conversation_id {
                Some(id) => state.store.get_conversation(id).await?,
                None => None,
            };
            let Some(c) = conversation else {
                return Ok(vec![result("handoffState", json!("bot"))]);
            };
            Ok(handoff_status(&c, Utc::now()))
        }
        _ => Ok(Vec::new()),
    }
}

/// `getHandoffStatus` results: state, queue, latest agent, seconds waited so far (or the wait it took).
pub fn handoff_status(c: &Conversation, now: chrono::DateTime<Utc>) -> Vec<ActionResult> {
    let waited = match (c.queued_at, c.first_attended_at, c.closed_at) {
        (Some(q), None, None) => Some((now - q).num_seconds().max(0)),
        _ => c.wait_seconds.map(|w| w.round() as i64),
    };
    vec![
        result("handoffState", json!(c.state.as_str())),
        result("handoffQueue", json!(c.queue.clone().unwrap_or_default())),
        result(
            "agentName",
            json!(c.agents.last().map(|a| a.name.clone()).unwrap_or_default()),
        ),
        result("waitSeconds", json!(waited.unwrap_or(0))),
    ]
}

fn result(key: &str, value: Value) -> ActionResult {
    ActionResult {
        key: key.to_string(),
        value,
        sanitize: None,
    }
}

/// Relays a message posted through the API to the live agent, when handed off.
pub async fn after_api_message(
    state: &AppState,
    conversation: &Conversation,
    party: Party,
    text: &str,
    outcomes: &[AppendOutcome],
) {
    let Some(outcome) = outcomes.first() else { return };
    if outcome.duplicate {
        return;
    }
    let conversation_id = outcome.conversation_id.unwrap_or(conversation.id);
    let payload = json!({"party": party, "text": text});
    if let Err(e) = state
        .handoff
        .relay_one(
            conversation_id,
            outcome.event_id,
            outcome.seq,
            ledger::API_MESSAGE,
            &payload,
        )
        .await
    {
        tracing::error!(error = %e, "relaying an API message failed");
    }
}

/// Carries out `POST /v1/conversations/{id}/handoff`, as the bot's `escalate`.
pub async fn handoff_command(
    state: &AppState,
    conversation: &Conversation,
    team: Option<&str>,
    outcomes: &[AppendOutcome],
) -> Result<(), ApiError> {
    let trigger = outcomes.first().map(|o| o.event_id).unwrap_or_else(Uuid::new_v4);
    let conversation_id = outcomes
        .first()
        .and_then(|o| o.conversation_id)
        .unwrap_or(conversation.id);
    state.handoff.escalate(conversation_id, team, trigger).await
}

#[cfg(test)]
mod tests;
