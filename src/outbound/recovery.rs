//! Start-up recovery: re-sends every command recorded without a result before the restart, and
//! resumes polling the Bright Pattern chats still open.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::bright_pattern_poller::{EventSource, PollSink};
use super::commands::{Command, Outcome};
use super::runner::Job;
use super::Outbound;
use crate::model::{HandoffState, Platform, StoredEvent};
use crate::sources::ledger::{self, CommandRecord};
use crate::store::{ConversationFilter, StoreResult};

/// Checkpoint below which every command in the log has a result (the start-up scan begins there).
pub const SCAN_CHECKPOINT: &str = "outbox.scan_from";
/// Events read per page by the start-up scan.
const SCAN_PAGE: u32 = 1000;

/// A command found in the log without a result.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCommand {
    /// Log position of its `ledger.command`.
    pub seq: i64,
    /// The conversation it belongs to now.
    pub conversation_id: Uuid,
    /// Its record.
    pub record: CommandRecord,
}

/// Folds the log (in `seq` order, in pages) into the commands that have no result yet.
#[derive(Debug, Default)]
pub struct PendingScan {
    pending: BTreeMap<String, PendingCommand>,
    last_seq: i64,
}

impl PendingScan {
    /// Takes one event into account.
    pub fn feed(&mut self, event: &StoredEvent) {
        self.last_seq = self.last_seq.max(event.seq);
        if event.kind != ledger::COMMAND && event.kind != ledger::COMMAND_RESULT {
            return;
        }
        let Ok(record) = serde_json::from_value::<CommandRecord>(event.payload.clone()) else {
            return;
        };
        if event.kind == ledger::COMMAND_RESULT {
            self.pending.remove(&record.command_id);
            return;
        }
        let conversation_id = event
            .conversation_id
            .or_else(|| event.external_id.parse().ok())
            .unwrap_or_else(Uuid::nil);
        self.pending.insert(
            record.command_id.clone(),
            PendingCommand {
                seq: event.seq,
                conversation_id,
                record,
            },
        );
    }

    /// The highest `seq` seen.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// The commands still without a result, in log order.
    pub fn into_pending(self) -> Vec<PendingCommand> {
        let mut out: Vec<PendingCommand> = self.pending.into_values().collect();
        out.sort_by_key(|p| p.seq);
        out
    }
}

impl Outbound {
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
                    self.record_outcome(p.conversation_id, &p.record, Outcome::Failed, detail, None, Vec::new())
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
                    self.record_outcome(p.conversation_id, &p.record, Outcome::Failed, detail, None, Vec::new())
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
        for state in [HandoffState::Queued, HandoffState::Attended] {
            let mut filter = ConversationFilter {
                platform: Some(Platform::BrightPattern),
                state: Some(state),
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

    pub(super) fn poll(&self, chat_id: &str) -> bool {
        let Some(client) = self.inner.bright_pattern.clone() else {
            return false;
        };
        let source: Arc<dyn EventSource> = client;
        let sink: Arc<dyn PollSink> = Arc::new(self.clone());
        self.inner.pollers.start(source, sink, chat_id, self.inner.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    use crate::outbound::commands::Outcome;

    fn stored(seq: i64, conversation: Uuid, kind: &str, record: &CommandRecord) -> StoredEvent {
        StoredEvent {
            seq,
            event_id: Uuid::new_v4(),
            platform: Platform::Ledger,
            external_id: conversation.to_string(),
            kind: kind.to_string(),
            occurred_at: Utc::now(),
            platform_at: None,
            received_at: Utc::now(),
            conversation_id: Some(conversation),
            headers: BTreeMap::new(),
            payload: serde_json::to_value(record).unwrap(),
            hash: None,
            revision_of: None,
        }
    }

    #[test]
    fn the_scan_keeps_commands_without_results_in_log_order() {
        let conv = Uuid::new_v4();
        let command = |id: &str| Command::EndChat { target: None }.record(id);
        let mut result = command("a");
        result.outcome = Some(Outcome::Ok.to_string());
        let mut scan = PendingScan::default();
        scan.feed(&stored(1, conv, ledger::COMMAND, &command("b")));
        scan.feed(&stored(2, conv, ledger::COMMAND, &command("a")));
        scan.feed(&stored(3, conv, ledger::COMMAND, &command("c")));
        scan.feed(&stored(4, conv, ledger::COMMAND_RESULT, &result));
        let mut other = stored(5, conv, crate::sources::aivo_live::ATTENDED, &command("z"));
        other.payload = json!({"name": "attended"});
        scan.feed(&other);
        assert_eq!(scan.last_seq(), 5);
        let pending = scan.into_pending();
        let ids: Vec<(&str, i64)> = pending.iter().map(|p| (p.record.command_id.as_str(), p.seq)).collect();
        assert_eq!(ids, vec![("b", 1), ("c", 3)]);
        assert!(pending.iter().all(|p| p.conversation_id == conv));
    }
}
