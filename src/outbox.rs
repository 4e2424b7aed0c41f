//! The durable outbox: outbound calls are recorded in the log as `ledger.command` before they are
//! attempted and as `ledger.command_result` after, so a crash between the two re-sends the command on
//! the next start (at least once). Commands of one conversation run in order on one worker task that
//! exists only while the conversation has pending commands; a slow or dead backend therefore delays only
//! its own conversation, never others nor webhook acknowledgements.
//!
//! This module holds the command vocabulary, the retry policy, the scan that finds pending commands,
//! and the per-conversation serial executor. What a command does lives in `handoff`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backends::WidgetUpdate;
use crate::config::OutboxConfig;
use crate::model::{StoredEvent, LEDGER_NAMESPACE};
use crate::sources::ledger::{self, CommandRecord};

/// `ledger.command_result` outcome: the call succeeded.
pub const OUTCOME_OK: &str = "ok";
/// `ledger.command_result` outcome: the backend refused (4xx, unreadable answer); not retried.
pub const OUTCOME_FAILED: &str = "failed";
/// `ledger.command_result` outcome: transient failures until `outbox.max_attempts` ran out.
pub const OUTCOME_GAVE_UP: &str = "gave_up";

/// The live chat a command goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveTarget {
    /// `aivo_live` or `bright_pattern`.
    pub backend: String,
    /// Aivo `conversationId` / Bright Pattern `chat_id`.
    pub live_id: String,
}

/// An update for the visitor's Ultimate widget, in a form that can be stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WidgetCommand {
    /// `escalationQueueUpdate`, `escalationSuccess`, `message`, `escalationFailed`, `agentDisconnect`.
    pub event_type: String,
    /// Agent's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Place in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Expected wait, minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_minutes: Option<u32>,
}

impl WidgetCommand {
    /// The stored form of an update.
    pub fn from_update(update: &WidgetUpdate) -> WidgetCommand {
        let mut c = WidgetCommand {
            event_type: update.event_type().to_string(),
            agent: None,
            text: None,
            queue_position: None,
            waiting_minutes: None,
        };
        match update {
            WidgetUpdate::QueueUpdate {
                queue_position,
                waiting_minutes,
            } => {
                c.queue_position = *queue_position;
                c.waiting_minutes = *waiting_minutes;
            }
            WidgetUpdate::Success { agent } => c.agent = Some(agent.clone()),
            WidgetUpdate::Message { agent, text } => {
                c.agent = agent.clone();
                c.text = Some(text.clone());
            }
            WidgetUpdate::Failed { text } => c.text = text.clone(),
            WidgetUpdate::AgentDisconnect { agent } => c.agent = agent.clone(),
        }
        c
    }

    /// The update to send; None for an event type this version does not know.
    pub fn to_update(&self) -> Option<WidgetUpdate> {
        Some(match self.event_type.as_str() {
            "escalationQueueUpdate" => WidgetUpdate::QueueUpdate {
                queue_position: self.queue_position,
                waiting_minutes: self.waiting_minutes,
            },
            "escalationSuccess" => WidgetUpdate::Success {
                agent: self.agent.clone().unwrap_or_default(),
            },
            "message" => WidgetUpdate::Message {
                agent: self.agent.clone(),
                text: self.text.clone()?,
            },
            "escalationFailed" => WidgetUpdate::Failed {
                text: self.text.clone(),
            },
            "agentDisconnect" => WidgetUpdate::AgentDisconnect {
                agent: self.agent.clone(),
            },
            _ => return None,
        })
    }
}

/// One outbound command, self-contained so that it can be re-sent from the log after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Queue the conversation with a live backend.
    Queue {
        /// `aivo_live` or `bright_pattern`.
        backend: String,
        /// Team the route was chosen for.
        #[serde(default)]
        team: Option<String>,
        /// Aivo group ids.
        #[serde(default)]
        groups: Vec<i64>,
        /// The visitor's stable id (Ultimate `platformConversationId`).
        visitor_id: String,
        /// Attributes collected by the bot when the command was recorded.
        #[serde(default)]
        attributes: BTreeMap<String, Value>,
        /// Ultimate `platformConversationId` to tell the outcome to (widget escalations).
        #[serde(default)]
        notify_widget: Option<String>,
        /// A synchronous `escalate`: one attempt, the bot waits for the answer.
        #[serde(default)]
        synchronous: bool,
    },
    /// Show an update in the visitor's widget.
    Widget {
        /// Ultimate `platformConversationId`.
        platform_conversation_id: String,
        /// The update.
        update: WidgetCommand,
    },
    /// Pass a visitor's text to the live agent.
    VisitorMessage {
        /// The text.
        text: String,
        /// Where to; resolved when sent when the live chat was not known yet.
        #[serde(default)]
        target: Option<LiveTarget>,
    },
    /// End the live chat (the visitor left).
    EndChat {
        /// Which chat; resolved when sent when not known yet.
        #[serde(default)]
        target: Option<LiveTarget>,
    },
}

impl Command {
    /// The `action` recorded with the command: what it does, readable by support tooling.
    pub fn action(&self) -> String {
        match self {
            Command::Queue { backend, .. } => format!("{backend}_queue"),
            Command::Widget { update, .. } => format!("widget_{}", snake_case(&update.event_type)),
            Command::VisitorMessage { .. } => "visitor_message".to_string(),
            Command::EndChat { .. } => "end_chat".to_string(),
        }
    }

    /// The outbound backend it calls (the `backend` label of the outbox metrics).
    pub fn backend(&self) -> &str {
        match self {
            Command::Queue { backend, .. } => backend,
            Command::Widget { .. } => "ultimate",
            Command::VisitorMessage { target, .. } | Command::EndChat { target } => {
                target.as_ref().map(|t| t.backend.as_str()).unwrap_or("unresolved")
            }
        }
    }

    /// The `ledger.command` payload for this command.
    pub fn record(&self, command_id: &str) -> CommandRecord {
        CommandRecord {
            command_id: command_id.to_string(),
            action: self.action(),
            outcome: None,
            detail: None,
            body: serde_json::to_value(self).ok(),
            retry_of: None,
        }
    }

    /// Reads a command back from its `ledger.command` payload.
    pub fn from_record(record: &CommandRecord) -> Option<Command> {
        record.body.clone().and_then(|body| serde_json::from_value(body).ok())
    }
}

/// `escalationQueueUpdate` -> `escalation_queue_update`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A command's id: derived from what triggered it, so that the same trigger handled twice (a race, a
/// redelivery, a restart) records one command.
pub fn command_id(trigger: &str, action: &str) -> String {
    Uuid::new_v5(&LEDGER_NAMESPACE, format!("command:{trigger}:{action}").as_bytes()).to_string()
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The policy of `[outbox]`.
    pub fn from_config(config: &OutboxConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            initial: Duration::from_millis(config.initial_backoff_ms),
            max: Duration::from_millis(config.max_backoff_ms.max(config.initial_backoff_ms)),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based): `initial * 2^(attempt-1)` capped at `max`,
    /// then scaled into `[1/2, 1]` by `jitter` (in `[0, 1]`) so that retries of many conversations spread out.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

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

/// Runs jobs one at a time per key, in submission order, on a task that lives only while its key has
/// jobs. Keys run concurrently with each other. [`SerialExecutor::stop`] lets each worker finish the job
/// it is running and start no other (what is left is recorded in the log and re-sent at the next start).
pub struct SerialExecutor<J> {
    workers: Mutex<HashMap<Uuid, mpsc::UnboundedSender<J>>>,
    tasks: TaskTracker,
    stopping: CancellationToken,
    runtime: Option<Handle>,
}

impl<J: Send + 'static> Default for SerialExecutor<J> {
    /// Workers run on the runtime current at construction (the service's main runtime), not on the
    /// runtime of whoever dispatches: an HTTP worker's runtime ends with the server, and a worker
    /// spawned there would die with it mid-call.
    fn default() -> Self {
        SerialExecutor {
            workers: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            runtime: Handle::try_current().ok(),
        }
    }
}

impl<J: Send + 'static> SerialExecutor<J> {
    /// Queues `job` behind the pending jobs of `key`, starting a worker for `key` when none runs.
    pub fn dispatch<F, Fut>(self: &Arc<Self>, key: Uuid, job: J, run: F)
    where
        F: Fn(J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.stopping.is_cancelled() {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        // Sends happen under the lock, and a worker only leaves under it after finding its queue empty,
        // so no job can land in a queue nobody reads.
        let job = match workers.get(&key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        workers.insert(key, tx);
        drop(workers);
        let work = Arc::clone(self).work(key, rx, run);
        match &self.runtime {
            Some(runtime) => self.tasks.spawn_on(work, runtime),
            None => self.tasks.spawn(work),
        };
    }

    async fn work<F, Fut>(self: Arc<Self>, key: Uuid, mut rx: mpsc::UnboundedReceiver<J>, run: F)
    where
        F: Fn(J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            if self.stopping.is_cancelled() {
                let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                workers.remove(&key);
                return;
            }
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            workers.remove(&key);
                            return;
                        }
                    }
                }
            };
            run(job).await;
        }
    }

    /// How many keys have a worker now.
    pub fn active(&self) -> usize {
        self.workers.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// The token cancelled by [`SerialExecutor::stop`] (jobs watch it to cut their waits short).
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Workers running now (each runs one job at a time).
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Starts no further job; returns when every running job has finished.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    use crate::model::Platform;

    #[test]
    fn commands_round_trip_through_their_record() {
        let commands = [
            Command::Queue {
                backend: "aivo_live".into(),
                team: Some("sales".into()),
                groups: vec![2179],
                visitor_id: "pc-1".into(),
                attributes: BTreeMap::from([("Ticket".to_string(), json!(2024))]),
                notify_widget: Some("pc-1".into()),
                synchronous: false,
            },
            Command::Widget {
                platform_conversation_id: "pc-1".into(),
                update: WidgetCommand::from_update(&WidgetUpdate::Success { agent: "Ana".into() }),
            },
            Command::VisitorMessage {
                text: "hi".into(),
                target: Some(LiveTarget {
                    backend: "bright_pattern".into(),
                    live_id: "chat-1".into(),
                }),
            },
            Command::EndChat { target: None },
        ];
        let actions: Vec<String> = commands.iter().map(Command::action).collect();
        assert_eq!(
            actions,
            vec![
                "aivo_live_queue",
                "widget_escalation_success",
                "visitor_message",
                "end_chat"
            ]
        );
        for c in commands {
            let record = c.record("id-1");
            assert_eq!(record.command_id, "id-1");
            assert_eq!(Command::from_record(&record), Some(c));
        }
    }

    #[test]
    fn widget_commands_convert_both_ways() {
        let updates = [
            WidgetUpdate::QueueUpdate {
                queue_position: Some(2),
                waiting_minutes: Some(3),
            },
            WidgetUpdate::Success { agent: "Ana".into() },
            WidgetUpdate::Message {
                agent: None,
                text: "hello".into(),
            },
            WidgetUpdate::Failed { text: None },
            WidgetUpdate::AgentDisconnect {
                agent: Some("Ana".into()),
            },
        ];
        for u in updates {
            assert_eq!(WidgetCommand::from_update(&u).to_update(), Some(u));
        }
        let unknown = WidgetCommand {
            event_type: "wave".into(),
            agent: None,
            text: None,
            queue_position: None,
            waiting_minutes: None,
        };
        assert_eq!(unknown.to_update(), None);
    }

    #[test]
    fn command_ids_are_stable_per_trigger_and_action() {
        assert_eq!(command_id("e1", "a"), command_id("e1", "a"));
        assert_ne!(command_id("e1", "a"), command_id("e1", "b"));
        assert_ne!(command_id("e1", "a"), command_id("e2", "a"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_in_the_upper_half() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.delay(5, 1.0), Duration::from_millis(1000));
        assert_eq!(p.delay(40, 1.0), Duration::from_millis(1000));
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 7.0), Duration::from_millis(200));
        let config = OutboxConfig {
            max_attempts: 0,
            initial_backoff_ms: 50,
            max_backoff_ms: 10,
        };
        let p = RetryPolicy::from_config(&config);
        assert_eq!(p.max_attempts, 1);
        assert_eq!(p.max, Duration::from_millis(50));
    }

    fn stored(seq: i64, conversation: Uuid, kind: &str, record: &CommandRecord) -> StoredEvent {
        StoredEvent {
            seq,
            event_id: Uuid::new_v4(),
            platform: Platform::Ledger,
            external_id: conversation.to_string(),
            kind: kind.to_string(),
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            conversation_id: Some(conversation),
            headers: BTreeMap::new(),
            payload: serde_json::to_value(record).unwrap(),
            hash: None,
        }
    }

    #[test]
    fn the_scan_keeps_commands_without_results_in_log_order() {
        let conv = Uuid::new_v4();
        let command = |id: &str| Command::EndChat { target: None }.record(id);
        let mut result = command("a");
        result.outcome = Some(OUTCOME_OK.into());
        let mut scan = PendingScan::default();
        scan.feed(&stored(1, conv, ledger::COMMAND, &command("b")));
        scan.feed(&stored(2, conv, ledger::COMMAND, &command("a")));
        scan.feed(&stored(3, conv, ledger::COMMAND, &command("c")));
        scan.feed(&stored(4, conv, ledger::COMMAND_RESULT, &result));
        let mut other = stored(5, conv, "aivo_live.attended", &command("z"));
        other.payload = json!({"name": "attended"});
        scan.feed(&other);
        assert_eq!(scan.last_seq(), 5);
        let pending = scan.into_pending();
        let ids: Vec<(&str, i64)> = pending.iter().map(|p| (p.record.command_id.as_str(), p.seq)).collect();
        assert_eq!(ids, vec![("b", 1), ("c", 3)]);
        assert!(pending.iter().all(|p| p.conversation_id == conv));
    }

    #[tokio::test]
    async fn jobs_of_one_key_run_in_order_and_keys_do_not_wait_for_each_other() {
        let executor: Arc<SerialExecutor<(u32, u64)>> = Arc::new(SerialExecutor::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let run = {
            let log = log.clone();
            move |(n, wait_ms): (u32, u64)| {
                let log = log.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    log.lock().unwrap().push(n);
                }
            }
        };
        executor.dispatch(a, (1, 300), run.clone());
        executor.dispatch(a, (2, 0), run.clone());
        executor.dispatch(b, (10, 0), run.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*log.lock().unwrap(), vec![10], "b ran while a was busy");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(*log.lock().unwrap(), vec![10, 1, 2]);
        assert_eq!(executor.active(), 0, "idle workers leave");
        executor.dispatch(a, (3, 0), run);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*log.lock().unwrap(), vec![10, 1, 2, 3]);
    }

    #[tokio::test]
    async fn stop_lets_the_running_job_finish_and_starts_no_other() {
        let executor: Arc<SerialExecutor<(u32, u64)>> = Arc::new(SerialExecutor::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let run = {
            let log = log.clone();
            move |(n, wait_ms): (u32, u64)| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(format!("start {n}"));
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    log.lock().unwrap().push(format!("end {n}"));
                }
            }
        };
        let key = Uuid::new_v4();
        executor.dispatch(key, (1, 200), run.clone());
        executor.dispatch(key, (2, 0), run.clone());
        while log.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        executor.stop().await;
        assert_eq!(
            *log.lock().unwrap(),
            vec!["start 1", "end 1"],
            "job 1 finished, job 2 never started"
        );
        executor.dispatch(key, (3, 0), run);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(log.lock().unwrap().len(), 2, "nothing starts after stop");
        assert_eq!(executor.running(), 0);
    }
}
