//! Causal time: when the fold takes each event to have happened.
//!
//! The log keeps `occurred_at` = the earlier of the platform's own time (`platform_at`) and `received_at`
//! (API.md, StoredEvent): an event cannot have happened after we received it, so a live platform whose
//! clock runs ahead no longer stamps its events after what we do next. That rule cannot help a clock that
//! runs *behind*: its events are stamped earlier than they happened and would sort before our own
//! events that came first (an agent's answer before the visitor's question, an attend before the queue
//! call it answers). The fold therefore orders by a causal time, from the log alone:
//!
//! - **Clock lag, per stream.** Every event with a time of its own is a sample of `received_at -
//!   platform_at` = network delay + how far the platform's clock runs behind ours. The least sample
//!   seen so far on a stream (in `seq` order) bounds the lag from above; when it is at least
//!   [`MIN_LAG`] the platform's clock is taken to run behind by that much and its times are moved
//!   forward by it (never past `received_at`). Samples above [`MAX_LAG`] are deliveries that came late
//!   (retries, history answers of old chats), not clock lag, and are not counted. A clock that runs
//!   ahead gives negative samples: no correction (the `occurred_at` rule already holds it back).
//! - **Events without a time of their own in a batch** (Bright Pattern poll and history answers: status
//!   events and the visitor's own messages carry none) keep their place in the batch: they take the
//!   causal time of the nearest timed event after them in the same delivery (else before them), and
//!   sort with it by `seq`. A delivery is told by its stream and `received_at` (every event of one
//!   delivery carries the same). Alone, or with no timed event beside it, an event keeps `occurred_at`.
//!
//! Each fact of an event is moved by the same amount as its event (a VCC body's lines keep their
//! spacing), and never past the event's `received_at`. The lags are part of the kept fold state, so an
//! increment is timed exactly as a refold of the whole conversation times it.
//!
//! What this does not fix: the lag estimate needs one sample; the first event of a stream whose clock
//! runs behind sorts at its arrival, later ones at their own time plus the least lag seen (so arrival
//! jitter of the first event shows up as an error of that size). A clock more than [`MAX_LAG`] behind
//! is taken for late delivery and not corrected.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{inputs_of, Input};
use crate::model::StoredEvent;

/// Lags below this (network delay, clocks in step) are not corrected.
pub const MIN_LAG: Duration = Duration::seconds(1);

/// A sample above this is a late delivery, not a clock running behind.
pub const MAX_LAG: Duration = Duration::seconds(60);

/// The least `received_at - platform_at` seen on each stream (microseconds), among samples up to
/// [`MAX_LAG`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clocks {
    lags: BTreeMap<String, i64>,
}

impl Clocks {
    /// No stream seen yet.
    pub fn is_empty(&self) -> bool {
        self.lags.is_empty()
    }

    /// The facts of `events` (appended after every event these clocks have seen) at their causal times;
    /// the clocks learn from them.
    pub fn inputs(&mut self, events: &[StoredEvent]) -> Vec<Input> {
        let shifts = self.shifts(events);
        let received: HashMap<i64, DateTime<Utc>> = events.iter().map(|e| (e.seq, e.received_at)).collect();
        let mut inputs = inputs_of(events);
        for input in &mut inputs {
            let shift = shifts.get(&input.seq).copied().unwrap_or_default();
            let at = input.at + shift;
            input.at = match received.get(&input.seq) {
                Some(r) => at.min(*r),
                None => at,
            };
        }
        inputs
    }

    /// How far each event's facts move: its causal time minus its `occurred_at`.
    fn shifts(&mut self, events: &[StoredEvent]) -> HashMap<i64, Duration> {
        let mut ordered: Vec<&StoredEvent> = events.iter().collect();
        ordered.sort_by_key(|e| e.seq);
        // Deliveries, in the order of their first event.
        let mut deliveries: Vec<Vec<&StoredEvent>> = Vec::new();
        let mut index: HashMap<(String, DateTime<Utc>), usize> = HashMap::new();
        for e in ordered {
            let key = (stream_key(e), e.received_at);
            match index.get(&key) {
                Some(&i) => deliveries[i].push(e),
                None => {
                    index.insert(key, deliveries.len());
                    deliveries.push(vec![e]);
                }
            }
        }
        let mut shifts = HashMap::new();
        for delivery in deliveries {
            let stream = stream_key(delivery[0]);
            for e in &delivery {
                if let Some(p) = e.platform_at {
                    let sample = e.received_at - p;
                    if sample <= MAX_LAG {
                        let micros = sample.num_microseconds().unwrap_or(i64::MAX);
                        let lag = self.lags.entry(stream.clone()).or_insert(micros);
                        *lag = (*lag).min(micros);
                    }
                }
            }
            let correction = self
                .lags
                .get(&stream)
                .map(|micros| Duration::microseconds(*micros))
                .filter(|lag| *lag >= MIN_LAG)
                .unwrap_or_else(Duration::zero);
            let timed: Vec<Option<DateTime<Utc>>> = delivery
                .iter()
                .map(|e| e.platform_at.map(|p| (p + correction).min(e.received_at)))
                .collect();
            for (i, e) in delivery.iter().enumerate() {
                let at = timed[i]
                    .or_else(|| timed[i + 1..].iter().flatten().next().copied())
                    .or_else(|| timed[..i].iter().rev().flatten().next().copied())
                    .unwrap_or(e.occurred_at);
                shifts.insert(e.seq, at - e.occurred_at);
            }
        }
        shifts
    }
}

fn stream_key(e: &StoredEvent) -> String {
    format!("{}:{}", e.platform, e.external_id)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::{json, Value};
    use uuid::Uuid;

    use super::*;
    use crate::config::SlaConfig;
    use crate::model::{HandoffState, NewEvent, Party, Platform, StreamKey};
    use crate::projection::{project, FoldState, LogExtent};
    use crate::sources::{self, ledger, Delivery};

    fn t(millis: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000, 0).single().unwrap_or_default() + Duration::milliseconds(millis)
    }

    fn stored(seq: i64, e: NewEvent) -> StoredEvent {
        e.stored(seq)
            .unwrap_or_else(|err| panic!("a fixture's payload is JSON: {err}"))
    }

    /// An Aivo Live webhook stamped `said` by its own clock, received at `received` by ours.
    fn aivo(name: &str, said: DateTime<Utc>, received: DateTime<Utc>, data: Value) -> NewEvent {
        let body = json!({"name": name, "roomId": "room-1", "timestamp": said.timestamp_nanos_opt(), "data": data});
        let d = Delivery {
            received_at: received,
            ..Delivery::default()
        };
        let parsed = sources::aivo_live::parse(&body.to_string(), &body, &d);
        parsed.map(|p| p.events).unwrap_or_default().remove(0)
    }

    /// A handoff told by the bot side (our clock) and Aivo Live (its clock `skew_ms` off ours); Aivo's
    /// webhooks reach us 20-50 ms after the fact.
    fn skewed_handoff(id: Uuid, skew_ms: i64) -> Vec<StoredEvent> {
        let accepted = ledger::QueueAccepted {
            backend: "aivo_live".into(),
            queue: Some("2179".into()),
            live_id: "room-1".into(),
            team: None,
        };
        let live = |at: i64, delay: i64, name: &str, data: Value| aivo(name, t(at + skew_ms), t(at + delay), data);
        let tomas = json!({"agent": {"name": "Tomas", "groupId": 2179}});
        let says = json!({"action": "text", "value": "Hi, Tomas here", "source": "agent", "agent": {"name": "Tomas"}});
        let events = vec![
            ledger::api_handoff(id, Some("sales"), None, t(0)),
            ledger::queue_accepted(id, &accepted, StreamKey::new(Platform::AivoLive, "room-1"), t(100)),
            ledger::api_message(id, Party::Visitor, "I need my balance", None, t(1_000)),
            live(2_000, 20, "attended", tomas),
            live(4_000, 50, "messageToClient", says),
            ledger::api_message(id, Party::Visitor, "Thanks", None, t(5_000)),
            live(8_000, 30, "close", json!({"reason": "agent"})),
        ];
        events.into_iter().zip(1..).map(|(e, seq)| stored(seq, e)).collect()
    }

    #[test]
    fn a_live_clock_ten_seconds_ahead_or_behind_keeps_one_handoff_in_the_order_things_were_said() {
        let id = Uuid::from_u128(7);
        let streams = [StreamKey::new(Platform::AivoLive, "room-1")];
        let sla = SlaConfig::default();
        for skew in [-10_000, 10_000] {
            let events = skewed_handoff(id, skew);
            // The log keeps both times: `occurred_at` is never after the arrival.
            assert!(events.iter().all(|e| e.occurred_at <= e.received_at));
            assert_eq!(events[3].platform_at, Some(t(2_000 + skew)));
            let p = project(id, &streams, &events, &sla).unwrap_or_else(|| panic!("skew {skew}"));
            let c = &p.conversation;
            assert_eq!(c.handoffs.len(), 1, "skew {skew}: {c:?}");
            assert_eq!(
                (c.state, c.disposition),
                (HandoffState::Closed, Some(crate::model::Disposition::Completed))
            );
            assert_eq!(c.queued_at, Some(t(100)), "skew {skew}");
            let lines: Vec<&str> = p.messages.iter().filter_map(|m| m.text.as_deref()).collect();
            assert_eq!(lines, ["I need my balance", "Hi, Tomas here", "Thanks"], "skew {skew}");
            // Behind: Aivo's times plus the lag its first webhook showed (10.02 s), to the millisecond.
            // Ahead: held back to the arrival.
            let (attended, answered, closed) = if skew < 0 {
                (t(2_020), t(4_020), t(8_020))
            } else {
                (t(2_020), t(4_050), t(8_030))
            };
            assert_eq!(c.first_attended_at, Some(attended), "skew {skew}");
            assert_eq!(p.messages[1].at, answered, "skew {skew}");
            assert_eq!(c.closed_at, Some(closed), "skew {skew}");
            assert_eq!(
                c.wait_seconds,
                Some(crate::projection::metrics::seconds_between(t(100), attended))
            );
            assert_eq!(
                c.first_response_seconds,
                Some(crate::projection::metrics::seconds_between(attended, answered))
            );

            // Kept state and increments agree with the whole fold, wherever the log is cut.
            let extent = LogExtent::of_events(&events).unwrap_or_else(|| panic!("no extent"));
            let (whole, whole_lines) = FoldState::build_events(extent, &events);
            for cut in 1..events.len() {
                let (head, tail) = events.split_at(cut);
                let head_extent = LogExtent::of_events(head).unwrap_or(extent);
                let tail_extent = LogExtent::of_events(tail).unwrap_or(extent);
                let (mut state, mut lines) = FoldState::build_events(head_extent, head);
                let mut clocks = state.clocks().clone();
                let inputs = clocks.inputs(tail);
                // A late fact refolds instead (Err): nothing to compare then.
                if let Ok(more) = state.extend_timed(tail_extent, inputs, clocks, &|_| false) {
                    lines.extend(more);
                    assert_eq!(state, whole, "skew {skew}, cut {cut}");
                    assert_eq!(lines, whole_lines, "skew {skew}, cut {cut}");
                }
            }
        }
    }

    #[test]
    fn events_without_a_time_keep_their_place_in_their_batch() {
        // A Bright Pattern history answer, polled long after the chat: the status and the visitor's own
        // messages carry no time.
        let body = json!({"events": [
            {"event": "chat_session_status", "state": "queued"},
            {"event": "chat_session_message", "msg_id": "v1", "msg": "hello?"},
            {"event": "chat_session_party_joined", "party_id": "p1", "first_name": "Ana", "type": "internal",
                "timestamp": 1_709_294_400_000_i64},
            {"event": "chat_session_message", "msg_id": "a1", "party_id": "p1", "msg": "Hi, Ana here",
                "timestamp": 1_709_294_405_000_i64},
            {"event": "chat_session_message", "msg_id": "v2", "msg": "my order"},
            {"event": "chat_session_message", "msg_id": "a2", "party_id": "p1", "msg": "on its way",
                "timestamp": 1_709_294_420_000_i64},
            {"event": "chat_session_message", "msg_id": "v3", "msg": "thanks"}
        ]});
        let d = Delivery {
            received_at: t(0),
            path_id: Some("chat-1"),
            ..Delivery::default()
        };
        let parsed = sources::bright_pattern::parse(&body.to_string(), &body, &d).unwrap_or_else(|e| panic!("{e}"));
        let events: Vec<StoredEvent> = parsed
            .events
            .into_iter()
            .zip(1..)
            .map(|(e, seq)| stored(seq, e))
            .collect();
        // The log says what was sent: no time of their own, so received.
        assert_eq!((events[0].platform_at, events[0].occurred_at), (None, t(0)));
        let id = Uuid::from_u128(8);
        let p = project(
            id,
            &[StreamKey::new(Platform::BrightPattern, "chat-1")],
            &events,
            &SlaConfig::default(),
        )
        .unwrap_or_else(|| panic!("no projection"));
        let lines: Vec<(&str, DateTime<Utc>)> = p
            .messages
            .iter()
            .map(|m| (m.text.as_deref().unwrap_or(""), m.at))
            .collect();
        let at = |secs: i64| Utc.timestamp_opt(secs, 0).single().unwrap_or_default();
        assert_eq!(
            lines,
            [
                ("hello?", at(1_709_294_400)),
                ("Hi, Ana here", at(1_709_294_405)),
                ("my order", at(1_709_294_420)),
                ("on its way", at(1_709_294_420)),
                ("thanks", at(1_709_294_420)),
            ]
        );
        let c = &p.conversation;
        assert_eq!(c.handoffs.len(), 1);
        assert_eq!(c.queued_at, Some(at(1_709_294_400)));
        assert_eq!(c.wait_seconds, Some(0.0));
        assert_eq!(c.first_response_seconds, Some(5.0));
    }
}
