//! The command runner: the durable outbox's engine. A command is recorded in the log as
//! `ledger.command` before it is attempted and as `ledger.command_result` after, so a crash between the
//! two re-sends it on the next start (at least once). Commands of one conversation run in order on one
//! worker task that exists only while the conversation has pending commands; a slow or dead backend
//! therefore delays only its own conversation, never others nor webhook acknowledgements. Transient
//! failures are retried with backoff ([`RetryPolicy`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::clients::{BackendError, LiveBackend, QueueRequest, QueueResult, WidgetUpdate};
use super::commands::{command_id, Command, LiveTarget, Outcome, WidgetCommand};
use super::plan::{ewt_minutes, live_target};
use super::Outbound;
use crate::config::OutboxConfig;
use crate::model::{AppendOutcome, Backend, NewEvent, StreamKey};
use crate::sources::ledger::{self, CommandRecord, QueueAccepted};
use crate::telemetry;
use crate::writer::WriteError;

/// Times a result is offered to a failing writer before it is left to the next start's scan.
const RECORD_ATTEMPTS: u32 = 10;

/// What a command's execution gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Executed {
    /// A queue call was accepted.
    Queued(QueueResult),
    /// Anything else succeeded; Bright Pattern may have answered with new server events.
    Done {
        /// Raw `{"events": [...]}` answer to append.
        server_events: Option<(String, String)>,
    },
}

pub(super) type Reply = oneshot::Sender<Result<Executed, BackendError>>;

/// Where a [`Reply`] arrives.
pub(super) type Replied = oneshot::Receiver<Result<Executed, BackendError>>;

/// One command on its way through the outbox.
pub(super) struct Job {
    pub(super) conversation_id: Uuid,
    pub(super) command_id: String,
    pub(super) command: Command,
    pub(super) reply: Option<Reply>,
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
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

/// Runs jobs one at a time per key, in submission order, on a task that lives only while its key has
/// jobs. Keys run concurrently with each other. [`SerialExecutor::stop`] lets each worker finish the job
/// it is running and start no other (what is left is recorded in the log and re-sent at the next start).
pub(crate) struct SerialExecutor<J> {
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
    pub(crate) fn dispatch<F, Fut>(self: &Arc<Self>, key: Uuid, job: J, run: F)
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
    pub(crate) fn active(&self) -> usize {
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

impl Outbound {
    /// Hands a committed command to the outbox. A synchronous queue call keeps a reply for its waiter (the
    /// escalation handler, which takes it with [`Outbound::take_reply`]).
    pub(super) fn dispatch(&self, mut job: Job) {
        if job.reply.is_none() && matches!(job.command, Command::Queue { synchronous: true, .. }) {
            let (tx, rx) = oneshot::channel();
            self.inner.replies.keep(&job.command_id, rx);
            job.reply = Some(tx);
        }
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
            Ok(Executed::Queued(q)) => (Outcome::Ok, format!("live id {}", q.live_id), Some(q.raw.clone())),
            Ok(Executed::Done { .. }) => (Outcome::Ok, String::new(), None),
            Err(e) if e.is_transient() => (Outcome::GaveUp, format!("after {attempt} attempts: {e}"), None),
            Err(e) => (Outcome::Failed, e.to_string(), None),
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
                        backend: backend.to_string(),
                        queue: q.queue.clone(),
                        live_id: q.live_id.clone(),
                        team: team.clone(),
                    };
                    let live = StreamKey::new(backend.platform(), q.live_id.clone());
                    effects.push(ledger::queue_accepted(job.conversation_id, &accepted, live, now));
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
                        backend.as_str(),
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
        if let Some(outcomes) = &outcomes {
            // What the write path planned for the effects (an attend the link merged in: the widget is told).
            self.relay(outcomes).await;
        }
        if let Some(reply) = job.reply {
            let _ = reply.send(result.clone());
        }
        match result {
            Ok(Executed::Queued(q)) => {
                if let Command::Queue { backend, .. } = &job.command {
                    if *backend == Backend::BrightPattern {
                        self.poll(&q.live_id);
                    }
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
                let client = self.live(*backend).ok_or_else(|| not_configured(backend.as_str()))?;
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
                if target.backend == Backend::BrightPattern {
                    if let Some(bp) = &self.inner.bright_pattern {
                        let events = bp.send_message(&target.live_id, &job.command_id, text).await?;
                        return Ok(Executed::Done {
                            server_events: events.map(|e| (target.live_id.clone(), e)),
                        });
                    }
                }
                let client = self
                    .live(target.backend)
                    .ok_or_else(|| not_configured(target.backend.as_str()))?;
                client
                    .send_visitor_message(&target.live_id, &job.command_id, text)
                    .await?;
                Ok(Executed::Done { server_events: None })
            }
            Command::EndChat { target } => {
                let target = self.resolve(job.conversation_id, target).await?;
                if target.backend == Backend::BrightPattern {
                    if let Some(bp) = &self.inner.bright_pattern {
                        let events = bp.end_chat(&target.live_id).await?;
                        return Ok(Executed::Done {
                            server_events: events.map(|e| (target.live_id.clone(), e)),
                        });
                    }
                }
                let client = self
                    .live(target.backend)
                    .ok_or_else(|| not_configured(target.backend.as_str()))?;
                client.end(&target.live_id, &job.command_id).await?;
                Ok(Executed::Done { server_events: None })
            }
        }
    }

    fn live(&self, backend: Backend) -> Option<Arc<dyn LiveBackend>> {
        self.inner.backends.live(backend)
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
    pub(super) async fn record_outcome(
        &self,
        conversation_id: Uuid,
        command: &CommandRecord,
        outcome: Outcome,
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
    pub(super) async fn append_durably(&self, events: Vec<NewEvent>) -> Option<Vec<AppendOutcome>> {
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
}

/// Replies of dispatched synchronous queue calls, kept until their waiter takes them (a waiter that never
/// comes, its request dropped, leaves one behind: those older than [`UNCLAIMED_REPLY`] are dropped).
#[derive(Default)]
pub(super) struct Replies {
    kept: Mutex<HashMap<String, (Instant, Replied)>>,
}

/// How long an untaken reply is kept.
const UNCLAIMED_REPLY: Duration = Duration::from_secs(600);

impl Replies {
    fn keep(&self, command_id: &str, rx: Replied) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        kept.retain(|_, (at, _)| now.duration_since(*at) < UNCLAIMED_REPLY);
        kept.insert(command_id.to_string(), (now, rx));
    }

    fn take(&self, command_id: &str) -> Option<Replied> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.remove(command_id).map(|(_, rx)| rx)
    }
}

impl Outbound {
    /// The reply kept for the synchronous queue call `command_id` when it was dispatched, if any.
    pub(super) fn take_reply(&self, command_id: &str) -> Option<Replied> {
        self.inner.replies.take(command_id)
    }
}

fn widget_command(parent: &str, pcid: &str, update: &WidgetUpdate) -> (String, Command) {
    let command = Command::Widget {
        platform_conversation_id: pcid.to_string(),
        update: WidgetCommand::from_update(update),
    };
    (command_id(parent, &command.action()), command)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ..OutboxConfig::default()
        };
        let p = RetryPolicy::from_config(&config);
        assert_eq!(p.max_attempts, 1);
        assert_eq!(p.max, Duration::from_millis(50));
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
