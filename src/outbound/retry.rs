//! An operator's retry of a command that ended `failed` or `gave_up`: a new command in the same chain,
//! run by the outbox like any other.

use chrono::Utc;
use uuid::Uuid;

use super::commands::{command_id, Command, Outcome};
use super::runner::Job;
use super::Outbound;
use crate::sources::ledger::{self, CommandRecord};
use crate::store::StoreError;
use crate::writer::WriteError;

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
pub(crate) fn command_id_for_retry(root: &str, n: usize) -> String {
    command_id(root, &format!("retry-{n}"))
}

/// Why a command cannot be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such command in the conversation.
    #[error("{0}")]
    NoCommand(String),
    /// The command succeeded, or cannot be read by this version.
    #[error("{0}")]
    Conflict(String),
    /// The event log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The retry could not be recorded.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl Outbound {
    /// Re-sends a command of `conversation_id` that ended `failed` or `gave_up` (an operator's retry): a new
    /// `ledger.command` with `retry_of` naming the first command of the chain, then the outbox as usual.
    /// Idempotent: while the latest attempt of the chain has no result, asking again answers that attempt
    /// (`duplicate: true`), and concurrent retries of one attempt record one command. A chain whose latest
    /// attempt succeeded is a conflict.
    pub async fn retry(&self, conversation_id: Uuid, command_id: &str) -> Result<CommandRetry, RetryError> {
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
        let named = commands.iter().find(|c| c.command_id == command_id).ok_or_else(|| {
            RetryError::NoCommand(format!("no command {command_id} in conversation {conversation_id}"))
        })?;
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
            Some(o) if o == Outcome::Ok.as_str() => {
                return Err(RetryError::Conflict(format!(
                    "command {} succeeded; there is nothing to retry",
                    latest.command_id
                )))
            }
            Some(_) => {}
        }
        let Some(mut command) = Command::from_record(latest) else {
            return Err(RetryError::Conflict(format!(
                "command {} cannot be read by this version",
                latest.command_id
            )));
        };
        // Nobody waits for a retried escalation: it gets the outbox's retries like any other call.
        if let Command::Queue { synchronous, .. } = &mut command {
            *synchronous = false;
        }
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
}
