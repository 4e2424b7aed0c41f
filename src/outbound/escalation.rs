//! Synchronous escalations (`escalate`, `POST /v1/conversations/{id}/handoff`) and `isTeamOnline`: the
//! bot waits on these, so they answer within a deadline with an [`EscalationError`] the API maps to its
//! answer (502/503/504).

use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::clients::{BackendError, Backends};
use super::commands::Command;
use super::plan::ultimate_id;
use super::relay::command_of;
use super::runner::Job;
use super::Outbound;
use crate::config::RoutingConfig;
use crate::model::{AppendOutcome, Backend, Conversation, HandoffState};
use crate::sources::ledger;
use crate::store::StoreError;
use crate::writer::WriteError;

/// Why an escalation cannot even be attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoRoute(pub String);

/// The queue command an escalation for `team` becomes, or why there is none.
pub(crate) fn escalation_command(
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
        backend: route.backend,
        team: team.map(str::to_string),
        groups: route.groups.clone(),
        visitor_id: pcid.clone().unwrap_or_else(|| conversation.id.to_string()),
        attributes: conversation.attributes.clone(),
        notify_widget: if widget { pcid } else { None },
        synchronous,
    })
}

/// Why a synchronous escalation did not hand the conversation over. The API's error table gives each
/// its code and status; the sentence is the one here.
#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    /// The conversation does not exist.
    #[error("no conversation {0}")]
    NoConversation(Uuid),
    /// The escalating event was filed under no conversation.
    #[error("the escalation names no conversation")]
    NamesNoConversation,
    /// No route, or the route names a backend that is not configured.
    #[error("{0}")]
    NoRoute(String),
    /// The same trigger was already escalated.
    #[error("this escalation was already attempted; see the conversation's handoff for its outcome")]
    AlreadyAttempted,
    /// The runner stopped before the outcome was known.
    #[error("the hand-over was interrupted; see the conversation's handoff for its outcome")]
    Interrupted,
    /// No outcome within `ultimate.escalate_deadline_seconds`.
    #[error("{backend} did not answer within {seconds} s; the outcome will be recorded on the conversation")]
    Deadline {
        /// The routed backend.
        backend: Backend,
        /// The deadline.
        seconds: u64,
    },
    /// The backend's client timed out on the queue call.
    #[error("{backend} did not answer the queue call in time")]
    Timeout {
        /// The routed backend.
        backend: Backend,
    },
    /// The backend could not be reached.
    #[error("{backend} is unreachable: {error}")]
    Unreachable {
        /// The routed backend.
        backend: Backend,
        /// The network error.
        error: String,
    },
    /// The backend answered with an error status.
    #[error("{backend} refused the hand-over: HTTP {status}: {body}")]
    Refused {
        /// The routed backend.
        backend: Backend,
        /// Its HTTP status.
        status: u16,
        /// Its answer.
        body: String,
    },
    /// The backend accepted with an answer that does not read.
    #[error("{backend} answered the queue call unexpectedly: {error}")]
    Unexpected {
        /// The routed backend.
        backend: Backend,
        /// What was wrong with the answer.
        error: String,
    },
    /// The event log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command could not be recorded.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl EscalationError {
    /// How a failed queue call on `backend` is told.
    pub(crate) fn from_backend(backend: Backend, error: &BackendError) -> EscalationError {
        match error {
            BackendError::Timeout => EscalationError::Timeout { backend },
            BackendError::Network(e) => EscalationError::Unreachable {
                backend,
                error: e.clone(),
            },
            BackendError::Transient { status, body } | BackendError::Permanent { status, body } => {
                EscalationError::Refused {
                    backend,
                    status: *status,
                    body: body.clone(),
                }
            }
            BackendError::Invalid(e) => EscalationError::Unexpected {
                backend,
                error: e.clone(),
            },
        }
    }
}

impl Outbound {
    /// `isTeamOnline`: route, opening hours and the backend's availability, within 2 s.
    pub async fn team_online(&self, team: Option<&str>) -> bool {
        self.inner
            .backends
            .team_online(&self.inner.config.routing, team, Utc::now())
            .await
    }

    /// The bot's `escalate`, just appended (and its commands dispatched by the pipeline): answers with the
    /// outcome of the queue call its append committed (nothing to do for a delivery that carried no event).
    pub(crate) async fn escalate_appended(
        &self,
        outcomes: &[AppendOutcome],
        team: Option<&str>,
    ) -> Result<(), EscalationError> {
        let Some(outcome) = outcomes.first() else {
            return Ok(());
        };
        self.escalated(outcome, team).await
    }

    /// `POST /v1/conversations/{id}/handoff`, just appended: sends what its append committed and answers as
    /// the bot's `escalate` is answered.
    pub(crate) async fn escalate_requested(
        &self,
        conversation: &Conversation,
        team: Option<&str>,
        outcomes: &[AppendOutcome],
    ) -> Result<(), EscalationError> {
        self.relay(outcomes).await;
        let Some(outcome) = outcomes.first() else {
            return Ok(());
        };
        let outcome = AppendOutcome {
            conversation_id: outcome.conversation_id.or(Some(conversation.id)),
            ..outcome.clone()
        };
        self.escalated(&outcome, team).await
    }

    /// A synchronous escalation whose trigger was appended as `outcome`: the write path planned its queue
    /// command (or its `ledger.queue_failed` note) in the same transaction; this waits for that command's
    /// outcome, at most `ultimate.escalate_deadline_seconds`. A redelivered trigger plans nothing: it is
    /// answered as the first one was when the conversation is with a live team, else as already attempted.
    async fn escalated(&self, outcome: &AppendOutcome, team: Option<&str>) -> Result<(), EscalationError> {
        let conversation_id = outcome.conversation_id.ok_or(EscalationError::NamesNoConversation)?;
        if outcome.duplicate || outcome.conflict {
            return self.escalated_before(conversation_id, team).await;
        }
        for event in self.committed(std::slice::from_ref(outcome)).await? {
            if event.kind == ledger::QUEUE_FAILED {
                let reason = event.payload.get("reason").and_then(|r| r.as_str()).unwrap_or_default();
                return Err(EscalationError::NoRoute(reason.to_string()));
            }
            if let Some((conversation_id, record, command)) = command_of(&event) {
                if let Command::Queue {
                    backend,
                    synchronous: true,
                    ..
                } = &command
                {
                    let backend = *backend;
                    return self
                        .await_queue_call(conversation_id, record.command_id, command, backend)
                        .await;
                }
            }
        }
        // Nothing planned: the conversation is already with a live team (answered as the first request was).
        match self.with_live_team(conversation_id).await? {
            (true, _) => Ok(()),
            (false, _) => Err(EscalationError::Interrupted),
        }
    }

    /// Whether the conversation is with a live team already (queued or attended), and the conversation.
    async fn with_live_team(&self, conversation_id: Uuid) -> Result<(bool, Conversation), EscalationError> {
        let conversation = self
            .inner
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or(EscalationError::NoConversation(conversation_id))?;
        let live = matches!(conversation.state, HandoffState::Queued | HandoffState::Attended);
        Ok((live, conversation))
    }

    /// A redelivered escalation: its own append planned (and the outbox ran) what it called for.
    async fn escalated_before(&self, conversation_id: Uuid, team: Option<&str>) -> Result<(), EscalationError> {
        let (live, conversation) = self.with_live_team(conversation_id).await?;
        if live {
            // Already with a live team: a repeated request is answered as the first was.
            return Ok(());
        }
        escalation_command(
            &self.inner.config.routing,
            &self.inner.backends,
            team,
            &conversation,
            false,
            true,
        )
        .map_err(|NoRoute(reason)| EscalationError::NoRoute(reason))?;
        Err(EscalationError::AlreadyAttempted)
    }

    /// Waits for the outcome of the committed synchronous queue call `command_id`, which the outbox runs:
    /// its dispatch kept a reply for this waiter. When it was not dispatched (the pipeline could not read
    /// the committed commands back), it is dispatched here.
    async fn await_queue_call(
        &self,
        conversation_id: Uuid,
        command_id: String,
        command: Command,
        backend: Backend,
    ) -> Result<(), EscalationError> {
        let rx = match self.take_reply(&command_id) {
            Some(rx) => rx,
            None => {
                let (tx, rx) = oneshot::channel();
                self.dispatch(Job {
                    conversation_id,
                    command_id,
                    command,
                    reply: Some(tx),
                });
                rx
            }
        };
        let deadline = Duration::from_secs(self.inner.config.ultimate.escalate_deadline_seconds.max(1));
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(EscalationError::from_backend(backend, &e)),
            Ok(Err(_)) => Err(EscalationError::Interrupted),
            Err(_) => Err(EscalationError::Deadline {
                backend,
                seconds: deadline.as_secs(),
            }),
        }
    }
}

/// The team an escalating event names: the bot's `escalate` (`escalateTo` / `teamId`), the API's `team`.
pub(crate) fn escalation_team(kind: &str, payload: &serde_json::Value) -> Option<String> {
    if kind == ledger::API_HANDOFF {
        payload.get("team").and_then(|t| t.as_str()).map(str::to_string)
    } else {
        crate::sources::ultimate::team_of(payload)
    }
}
