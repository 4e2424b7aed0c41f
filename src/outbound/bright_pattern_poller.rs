//! Bright Pattern has no webhooks for chat events: a long-poll loop per open chat fetches them (Get New
//! Chat Events). One poll at a time per chat; errors back off; the loop stops when the chat ends, fails or
//! is not found. What a poll brings is handed to a [`PollSink`] (append through the writer, then the same
//! relays as webhooks), which is where the store's deduplication keeps repeated events out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

use super::clients::{BackendError, BrightPatternClient, PollOutcome};
use super::runner::RetryPolicy;
use crate::sources::bright_pattern::BpEventName;
use crate::telemetry;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where polled events go.
#[async_trait]
pub(crate) trait PollSink: Send + Sync + 'static {
    /// Appends and relays one poll answer (the raw body); Ok(true) when it says the chat is over.
    async fn deliver(&self, chat_id: &str, body: &str) -> Result<bool, String>;
}

/// One long poll on a chat's events.
#[async_trait]
pub(crate) trait EventSource: Send + Sync + 'static {
    /// Waits for the chat's next events.
    async fn poll(&self, chat_id: &str) -> Result<PollOutcome, BackendError>;
}

#[async_trait]
impl EventSource for BrightPatternClient {
    async fn poll(&self, chat_id: &str) -> Result<PollOutcome, BackendError> {
        self.poll_events(chat_id).await
    }
}

/// Whether one Bright Pattern server event means the chat no longer exists.
pub(crate) fn ends_chat(event: &Value) -> bool {
    let name = event.get("event").and_then(Value::as_str).unwrap_or_default();
    match BpEventName::from_name(name) {
        BpEventName::Ended | BpEventName::InactivityTimeout => true,
        BpEventName::Status => matches!(event.get("state").and_then(Value::as_str), Some("failed" | "completed")),
        _ => false,
    }
}

/// Whether a poll answer (`{"events": [...]}` or one event) carries an event that ends the chat.
pub(crate) fn body_ends_chat(body: &Value) -> bool {
    match body.get("events") {
        Some(Value::Array(events)) => events.iter().any(ends_chat),
        _ => ends_chat(body),
    }
}

/// Why a poll loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PollStop {
    /// An event ended the chat.
    Ended,
    /// Bright Pattern no longer knows the chat (5005 / 404).
    Gone,
    /// Refused polls (4xx) `max_attempts` times in a row.
    Refused(String),
    /// The service is stopping (polling resumes at the next start).
    Stopped,
}

/// The chats being polled: at most one loop per chat. Loops run on the runtime current when this was
/// built (the service's main one), whoever starts them (see `runner::SerialExecutor`).
pub(crate) struct Pollers {
    running: Mutex<HashSet<String>>,
    tasks: TaskTracker,
    stopping: CancellationToken,
    runtime: Option<Handle>,
}

impl Default for Pollers {
    fn default() -> Self {
        Pollers {
            running: Mutex::default(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            runtime: Handle::try_current().ok(),
        }
    }
}

/// Takes a chat out of the running set when its loop ends, however it ends.
struct Running {
    pollers: Arc<Pollers>,
    chat_id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.pollers.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(&self.chat_id);
        telemetry::poller_stopped();
    }
}

impl Pollers {
    /// Starts polling `chat_id` unless a loop already polls it; returns whether one was started.
    pub fn start(
        self: &Arc<Self>,
        source: Arc<dyn EventSource>,
        sink: Arc<dyn PollSink>,
        chat_id: &str,
        policy: RetryPolicy,
    ) -> bool {
        if self.stopping.is_cancelled() {
            return false;
        }
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if !running.insert(chat_id.to_string()) {
                return false;
            }
        }
        telemetry::poller_started();
        let guard = Running {
            pollers: Arc::clone(self),
            chat_id: chat_id.to_string(),
        };
        let stopping = self.stopping.clone();
        let work = async move {
            let stop = poll_until_done(source.as_ref(), sink.as_ref(), &guard.chat_id, policy, &stopping).await;
            tracing::info!(chat_id = %guard.chat_id, stop = ?stop, "stopped polling Bright Pattern chat");
            drop(guard);
        };
        match &self.runtime {
            Some(runtime) => self.tasks.spawn_on(work, runtime),
            None => self.tasks.spawn(work),
        };
        true
    }

    /// Whether a loop polls `chat_id` now.
    pub fn is_polling(&self, chat_id: &str) -> bool {
        self.running.lock().map(|r| r.contains(chat_id)).unwrap_or(false)
    }

    /// Stops every loop (a poll in flight is abandoned; events a poll already brought are stored first)
    /// and returns when they have all left.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Sleeps `delay`; false when `stopping` was cancelled first.
async fn pause(delay: std::time::Duration, stopping: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stopping.cancelled() => false,
    }
}

/// Polls one chat until it is over.
pub(crate) async fn poll_until_done(
    source: &dyn EventSource,
    sink: &dyn PollSink,
    chat_id: &str,
    policy: RetryPolicy,
    stopping: &CancellationToken,
) -> PollStop {
    let mut failures: u32 = 0;
    let mut refusals: u32 = 0;
    loop {
        let polled = tokio::select! {
            polled = source.poll(chat_id) => polled,
            _ = stopping.cancelled() => return PollStop::Stopped,
        };
        match polled {
            Ok(PollOutcome::Events(body)) => {
                failures = 0;
                refusals = 0;
                if deliver_until_stored(sink, chat_id, &body, policy).await {
                    return PollStop::Ended;
                }
            }
            Ok(PollOutcome::NoEvents) => {
                failures = 0;
                refusals = 0;
            }
            Ok(PollOutcome::ChatGone) => return PollStop::Gone,
            Ok(PollOutcome::Busy) => {
                // Another poll holds the chat (a previous instance's, still open): wait for it to end.
                failures = failures.saturating_add(1);
                if !pause(policy.delay(failures, rand::random()), stopping).await {
                    return PollStop::Stopped;
                }
            }
            Err(e) if e.is_transient() => {
                failures = failures.saturating_add(1);
                tracing::warn!(chat_id, error = %e, "Bright Pattern poll failed; backing off");
                if !pause(policy.delay(failures, rand::random()), stopping).await {
                    return PollStop::Stopped;
                }
            }
            Err(e) => {
                refusals = refusals.saturating_add(1);
                tracing::warn!(chat_id, error = %e, refusals, "Bright Pattern refused the poll");
                if refusals >= policy.max_attempts {
                    return PollStop::Refused(e.to_string());
                }
                if !pause(policy.delay(refusals, rand::random()), stopping).await {
                    return PollStop::Stopped;
                }
            }
        }
    }
}

/// Polled events are gone from the platform once read: keep offering them until they are stored.
async fn deliver_until_stored(sink: &dyn PollSink, chat_id: &str, body: &str, policy: RetryPolicy) -> bool {
    let mut attempt: u32 = 0;
    loop {
        match sink.deliver(chat_id, body).await {
            Ok(ended) => return ended,
            Err(e) => {
                attempt = attempt.saturating_add(1);
                tracing::error!(chat_id, error = %e, attempt, "polled events not stored yet; retrying");
                tokio::time::sleep(policy.delay(attempt, rand::random())).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::time::Duration;

    #[test]
    fn chat_ending_events_are_recognised() {
        assert!(ends_chat(&json!({"event": "chat_session_ended"})));
        assert!(ends_chat(&json!({"event": "chat_session_inactvity_timeout"})));
        assert!(ends_chat(&json!({"event": "chat_session_inactivity_timeout"})));
        assert!(ends_chat(&json!({"event": "chat_session_status", "state": "failed"})));
        assert!(ends_chat(
            &json!({"event": "chat_session_status", "state": "completed"})
        ));
        assert!(!ends_chat(&json!({"event": "chat_session_status", "state": "queued"})));
        assert!(!ends_chat(&json!({"event": "chat_session_message", "msg": "bye"})));
        assert!(body_ends_chat(
            &json!({"events": [{"event": "chat_session_message"}, {"event": "chat_session_ended"}]})
        ));
        assert!(!body_ends_chat(&json!({"events": []})));
    }

    struct Script(Mutex<VecDeque<Result<PollOutcome, BackendError>>>);

    #[async_trait]
    impl EventSource for Script {
        async fn poll(&self, _chat_id: &str) -> Result<PollOutcome, BackendError> {
            self.0.lock().unwrap().pop_front().unwrap_or(Ok(PollOutcome::ChatGone))
        }
    }

    #[derive(Default)]
    struct Collect {
        bodies: Mutex<Vec<String>>,
        fail_first: Mutex<u32>,
    }

    #[async_trait]
    impl PollSink for Collect {
        async fn deliver(&self, _chat_id: &str, body: &str) -> Result<bool, String> {
            let mut fail = self.fail_first.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err("store down".into());
            }
            self.bodies.lock().unwrap().push(body.to_string());
            let value: Value = serde_json::from_str(body).unwrap();
            Ok(body_ends_chat(&value))
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn polls_through_errors_until_the_chat_ends() {
        let first = r#"{"events":[{"event":"chat_session_message","msg":"hi"}]}"#.to_string();
        let last = r#"{"events":[{"event":"chat_session_ended"}]}"#.to_string();
        let source = Script(Mutex::new(VecDeque::from([
            Ok(PollOutcome::NoEvents),
            Err(BackendError::Timeout),
            Ok(PollOutcome::Events(first.clone())),
            Ok(PollOutcome::Busy),
            Ok(PollOutcome::Events(last.clone())),
            Ok(PollOutcome::Events("never read".into())),
        ])));
        let sink = Collect {
            fail_first: Mutex::new(2),
            ..Default::default()
        };
        assert_eq!(
            poll_until_done(&source, &sink, "c", fast(), &CancellationToken::new()).await,
            PollStop::Ended
        );
        assert_eq!(*sink.bodies.lock().unwrap(), vec![first, last]);
        assert_eq!(source.0.lock().unwrap().len(), 1, "no poll after the end");
    }

    #[tokio::test]
    async fn stops_when_the_chat_is_gone_or_polls_keep_being_refused() {
        let source = Script(Mutex::new(VecDeque::from([Ok(PollOutcome::ChatGone)])));
        assert_eq!(
            poll_until_done(&source, &Collect::default(), "c", fast(), &CancellationToken::new()).await,
            PollStop::Gone
        );
        let refused = || {
            Err(BackendError::Permanent {
                status: 401,
                body: "no".into(),
            })
        };
        let source = Script(Mutex::new(VecDeque::from([refused(), refused(), refused()])));
        assert!(matches!(
            poll_until_done(&source, &Collect::default(), "c", fast(), &CancellationToken::new()).await,
            PollStop::Refused(_)
        ));
    }

    #[tokio::test]
    async fn one_loop_per_chat() {
        let pollers = Arc::new(Pollers::default());
        let slow: Arc<dyn EventSource> = Arc::new(Slow);
        let sink: Arc<dyn PollSink> = Arc::new(Collect::default());
        assert!(pollers.start(slow.clone(), sink.clone(), "c", fast()));
        assert!(!pollers.start(slow.clone(), sink.clone(), "c", fast()));
        assert!(pollers.is_polling("c"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!pollers.is_polling("c"), "the loop left when the chat was gone");
        assert!(pollers.start(slow, sink, "c", fast()));
    }

    struct Slow;

    #[async_trait]
    impl EventSource for Slow {
        async fn poll(&self, _chat_id: &str) -> Result<PollOutcome, BackendError> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(PollOutcome::ChatGone)
        }
    }

    #[tokio::test]
    async fn stop_abandons_a_poll_in_flight() {
        let pollers = Arc::new(Pollers::default());
        let hanging: Arc<dyn EventSource> = Arc::new(Hanging);
        let sink: Arc<dyn PollSink> = Arc::new(Collect::default());
        assert!(pollers.start(hanging.clone(), sink.clone(), "c", fast()));
        assert!(pollers.is_polling("c"));
        pollers.stop().await;
        assert!(!pollers.is_polling("c"), "the loop left");
        assert!(!pollers.start(hanging, sink, "d", fast()), "no loop starts after stop");
    }

    struct Hanging;

    #[async_trait]
    impl EventSource for Hanging {
        async fn poll(&self, _chat_id: &str) -> Result<PollOutcome, BackendError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(PollOutcome::NoEvents)
        }
    }
}
