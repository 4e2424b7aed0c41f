//! Synchronous escalations (`escalate`, `POST /v1/conversations/{id}/handoff`) and `isTeamOnline`: the
//! bot waits on these, so they answer within a deadline with an [`EscalationError`] the API maps to its
//! answer (502/503/504).

use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::clients::{BackendError, Backends};
use super::commands::{command_id, Command};
use super::plan::ultimate_id;
use super::Outbound;
use crate::config::RoutingConfig;
use crate::model::{AppendOutcome, Backend, Conversation, HandoffState};
use crate::sources::ledger;
use crate::store::StoreError;
use crate::writer::WriteError;

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
    pub fn from_backend(backend: Backend, error: &BackendError) -> EscalationError {
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

    /// The bot's `escalate`, just appended: hands its conversation over (nothing to do for a delivery
    /// that carried no event).
    pub async fn escalate_appended(
        &self,
        outcomes: &[AppendOutcome],
        team: Option<&str>,
    ) -> Result<(), EscalationError> {
        let Some(outcome) = outcomes.first() else {
            return Ok(());
        };
        let conversation_id = outcome.conversation_id.ok_or(EscalationError::NamesNoConversation)?;
        self.escalate(conversation_id, team, outcome.event_id).await
    }

    /// `POST /v1/conversations/{id}/handoff`, just appended: hands the conversation over as the bot's
    /// `escalate` does.
    pub async fn escalate_requested(
        &self,
        conversation: &Conversation,
        team: Option<&str>,
        outcomes: &[AppendOutcome],
    ) -> Result<(), EscalationError> {
        let trigger = outcomes.first().map(|o| o.event_id).unwrap_or_else(Uuid::new_v4);
        let conversation_id = outcomes
            .first()
            .and_then(|o| o.conversation_id)
            .unwrap_or(conversation.id);
        self.escalate(conversation_id, team, trigger).await
    }

    /// A synchronous escalation: queues the conversation with the routed backend within
    /// `ultimate.escalate_deadline_seconds`. `trigger` is the event that asked for it (its id makes the
    /// command id, so a repeated trigger is one command).
    pub async fn escalate(
        &self,
        conversation_id: Uuid,
        team: Option<&str>,
        trigger: Uuid,
    ) -> Result<(), EscalationError> {
        let conversation = self
            .inner
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or(EscalationError::NoConversation(conversation_id))?;
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
                    .map(|r| r.backend.as_str())
                    .unwrap_or_default();
                self.append_durably(vec![ledger::queue_failed(
                    conversation.id,
                    backend,
                    &reason,
                    Utc::now(),
                )])
                .await;
                return Err(EscalationError::NoRoute(reason));
            }
        };
        let Command::Queue { backend, .. } = &command else {
            return Err(EscalationError::NoRoute("an escalation is a queue command".to_string()));
        };
        let backend = *backend;
        let id = command_id(&trigger.to_string(), &command.action());
        let (tx, rx) = oneshot::channel();
        let submitted = self
            .submit_with_reply(conversation.id, vec![(id, command)], Some(tx))
            .await?;
        if submitted == 0 {
            return Err(EscalationError::AlreadyAttempted);
        }
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
