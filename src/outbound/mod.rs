//! The outbound half: what the service does beyond recording. It answers the bot's synchronous calls
//! (`isTeamOnline`, `escalate`, actions), turns newly appended events into outbound commands (queue the
//! conversation, pass the visitor's messages to the agent and the agent's back to the widget, end chats),
//! runs those commands through the durable outbox, and polls Bright Pattern chats for their events.
//!
//! - [`plan`]: the relay rules, pure (event + conversation -> commands).
//! - [`relay`]: the relay rules as the write path runs them (planned in the append's transaction) and the
//!   sending of what was committed.
//! - [`escalation`]: synchronous escalations and `isTeamOnline`, with their [`EscalationError`].
//! - [`commands`]: the command vocabulary as recorded in the log.
//! - [`runner`]: the outbox: per-conversation serial execution, retries, recorded results.
//! - [`recovery`]: start-up re-send of pending commands and resumed polls.
//! - [`retry`]: an operator's retry of a command that failed or gave up.
//! - [`actions`]: the actions webhook's built-in actions.
//! - [`clients`]: one client per platform (Aivo Live, Bright Pattern, Ultimate widget) and opening hours.
//! - [`bright_pattern_poller`]: the long-poll loop per open Bright Pattern chat.

pub mod actions;
pub mod bright_pattern_poller;
pub mod clients;
pub mod commands;
pub mod escalation;
pub mod plan;
pub mod recovery;
pub mod relay;
pub mod retry;
pub mod runner;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::ingest::{Inbound, IngestError, Pipeline};
use crate::model::{AppendOutcome, Platform};
use crate::sources;
use crate::store::Store;
use crate::writer::Writer;
use bright_pattern_poller::{body_ends_chat, PollSink, Pollers};
use clients::ResponseCap;
use clients::{BackendError, Backends, BrightPatternClient};
use runner::{Job, RetryPolicy, SerialExecutor};

pub use commands::{Command, LiveTarget};
pub use escalation::EscalationError;
pub use retry::{CommandRetry, RetryError};

/// The outbound driver: relays, the outbox, synchronous escalations and Bright Pattern polls. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    writer: Writer,
    ingest: Pipeline,
    config: Arc<Config>,
    backends: Backends,
    bright_pattern: Option<Arc<BrightPatternClient>>,
    outbox: Arc<SerialExecutor<Job>>,
    pollers: Arc<Pollers>,
    replies: runner::Replies,
    policy: RetryPolicy,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("backends", &self.inner.backends)
            .field("active_conversations", &self.inner.outbox.active())
            .finish()
    }
}

impl Outbound {
    /// Builds the driver with the outbound clients `config` configures. Nothing runs until [`Outbound::start`].
    pub fn new(store: Arc<dyn Store>, writer: Writer, config: Arc<Config>) -> Result<Outbound, BackendError> {
        let backends = Backends::from_config(&config)?;
        let bright_pattern = if config.bright_pattern.base_url.trim().is_empty() {
            None
        } else {
            Some(Arc::new(
                BrightPatternClient::new(&config.bright_pattern)?
                    .with_max_response_bytes(config.outbox.max_response_bytes),
            ))
        };
        let policy = RetryPolicy::from_config(&config.outbox);
        Ok(Outbound {
            inner: Arc::new(Inner {
                ingest: Pipeline::new(store.clone(), writer.clone(), config.clone()),
                store,
                writer,
                config,
                backends,
                bright_pattern,
                outbox: Arc::new(SerialExecutor::default()),
                pollers: Arc::new(Pollers::default()),
                replies: runner::Replies::default(),
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

    /// Stores a Bright Pattern events body (a poll answer or a send answer) for `chat_id` through the
    /// inbound pipeline (a body that does not parse is kept in the quarantine; what is new is relayed)
    /// and says whether the chat ended.
    pub async fn deliver(&self, chat_id: &str, body: &str) -> Result<bool, String> {
        let inbound = Inbound {
            platform: Platform::BrightPattern,
            origin: format!("poll:/chats/{chat_id}/events"),
            received_at: Utc::now(),
            headers: BTreeMap::from([("x-ledger-source".to_string(), "bright_pattern_poll".to_string())]),
            body: body.as_bytes().to_vec(),
            path_id: Some(chat_id.to_string()),
            encryption_iv: None,
            parse: sources::bright_pattern::parse,
            answered: None,
        };
        match self.inner.ingest.receive(inbound, self).await {
            Ok(ingested) => Ok(body_ends_chat(&ingested.value)),
            Err(IngestError::Refused(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl PollSink for Outbound {
    async fn deliver(&self, chat_id: &str, body: &str) -> Result<bool, String> {
        Outbound::deliver(self, chat_id, body).await
    }
}

#[async_trait::async_trait]
impl crate::ingest::Relay for Outbound {
    async fn relay(&self, outcomes: &[AppendOutcome]) {
        Outbound::relay(self, outcomes).await
    }

    fn to_owned_relay(&self) -> Arc<dyn crate::ingest::Relay> {
        Arc::new(self.clone())
    }
}

#[cfg(test)]
mod tests;
