//! Deterministic synthetic conversations for the analytics tests, the dashboard test and the seeding/timing
//! tool: every outcome the reports distinguish (answered in and out of target, short and long abandons,
//! missed, failed, still waiting, transfers, bot-only conversations), across platforms, queues and agents.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::SlaConfig;
use crate::model::{
    Agent, Conversation, Disposition, Handoff, HandoffState, MessageCounts, Platform, SlaStatus, StreamKey,
};

/// Queues used by the scenario (`None`: a handoff whose queue is unknown).
pub const QUEUES: [Option<&str>; 4] = [Some("2179"), Some("sales"), Some("support"), None];

/// Agents used by the scenario.
pub const AGENTS: [&str; 5] = ["Tomas", "Ana", "Lucia", "Marek", "Pavla"];

/// The live backends.
pub const BACKENDS: [Platform; 3] = [Platform::AivoLive, Platform::BrightPattern, Platform::Vcc];

fn secs(rng: &mut StdRng, lo: i64, hi: i64) -> Duration {
    Duration::milliseconds(rng.gen_range(lo * 1000..=hi * 1000))
}

fn one_handoff(rng: &mut StdRng, backend: Platform, requested: DateTime<Utc>, sla: &SlaConfig) -> Handoff {
    let queue = QUEUES[rng.gen_range(0..QUEUES.len())].map(str::to_string);
    let target = sla.target_for(queue.as_deref()) as f64;
    let queued = requested + secs(rng, 0, 5);
    let mut h = Handoff {
        backend: backend.as_str().to_string(),
        queue,
        requested_at: Some(requested),
        queued_at: Some(queued),
        attended_at: None,
        closed_at: None,
        agents: Vec::new(),
        transfers: 0,
        wait_seconds: None,
        first_response_seconds: None,
        handle_seconds: None,
        sla_status: SlaStatus::Pending,
        sla_deadline: None,
        disposition: None,
        platform_disposition: None,
        close_reason: None,
        failure: None,
    };
    let roll = rng.gen_range(0..100);
    if roll < 62 {
        let wait = secs(rng, 0, 240);
        let attended = queued + wait;
        let w = wait.num_milliseconds() as f64 / 1000.0;
        h.attended_at = Some(attended);
        h.wait_seconds = Some(w);
        h.sla_status = if w <= target {
            SlaStatus::Met
        } else {
            SlaStatus::Breached
        };
        let agent = AGENTS[rng.gen_range(0..AGENTS.len())];
        h.agents.push(Agent {
            name: agent.to_string(),
            nickname: None,
            group: h.queue.clone(),
        });
        if rng.gen_bool(0.1) {
            h.transfers = 1;
            let other = AGENTS[rng.gen_range(0..AGENTS.len())];
            h.agents.push(Agent {
                name: other.to_string(),
                nickname: None,
                group: h.queue.clone(),
            });
        }
        if rng.gen_bool(0.9) {
            h.first_response_seconds = Some(secs(rng, 1, 90).num_milliseconds() as f64 / 1000.0);
        }
        if rng.gen_bool(0.85) {
            let handle = secs(rng, 30, 2400);
            h.closed_at = Some(attended + handle);
            h.handle_seconds = Some(handle.num_milliseconds() as f64 / 1000.0);
            h.disposition = Some(Disposition::Completed);
        }
    } else if roll < 80 {
        let after = secs(rng, 1, 400);
        h.closed_at = Some(queued + after);
        h.disposition = Some(Disposition::Abandoned);
        let waited = after.num_milliseconds() as f64 / 1000.0;
        h.sla_status = if waited < sla.short_abandon_seconds as f64 {
            SlaStatus::NotApplicable
        } else if waited > target {
            SlaStatus::Breached
        } else {
            SlaStatus::Pending
        };
        h.platform_disposition = (backend == Platform::Vcc).then(|| "lost".to_string());
    } else if roll < 90 {
        h.closed_at = Some(queued + secs(rng, 300, 3600));
        h.disposition = Some(Disposition::Missed);
        h.sla_status = SlaStatus::Breached;
        h.close_reason = Some("queue clean process".to_string());
    } else if roll < 95 {
        h.queued_at = None;
        h.disposition = Some(Disposition::Failed);
        h.sla_status = SlaStatus::NotApplicable;
        h.failure = Some("queue call refused".to_string());
    }
    h
}

/// Conversation number `n` of a scenario: deterministic for `(seed, n)`, started within `span` after `start`.
pub fn synthetic_conversation(
    seed: u64,
    n: u64,
    start: DateTime<Utc>,
    span: Duration,
    sla: &SlaConfig,
) -> Conversation {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n);
    let started = start + Duration::milliseconds(rng.gen_range(0..span.num_milliseconds().max(1)));
    let bot = StreamKey::new(Platform::Ultimate, format!("s{seed}-c{n}"));
    let mut streams = vec![bot.clone()];
    let mut handoffs = Vec::new();
    let bot_only = rng.gen_bool(0.2);
    let mut at = started + secs(&mut rng, 5, 300);
    let escalated_at = (!bot_only).then_some(at);
    if !bot_only {
        let count = if rng.gen_bool(0.1) { 2 } else { 1 };
        for i in 0..count {
            let backend = BACKENDS[rng.gen_range(0..BACKENDS.len())];
            streams.push(StreamKey::new(backend, format!("s{seed}-c{n}-h{i}")));
            let h = one_handoff(&mut rng, backend, at, sla);
            at = h.closed_at.or(h.attended_at).or(h.queued_at).unwrap_or(at) + secs(&mut rng, 1, 60);
            handoffs.push(h);
        }
    }
    let last = handoffs.last().cloned();
    let state = match &last {
        None => HandoffState::Bot,
        Some(h) if h.disposition == Some(Disposition::Failed) => HandoffState::Failed,
        Some(h) if h.closed_at.is_some() => HandoffState::Closed,
        Some(h) if h.attended_at.is_some() => HandoffState::Attended,
        Some(_) => HandoffState::Queued,
    };
    let agents: Vec<Agent> = handoffs.iter().flat_map(|h| h.agents.clone()).collect();
    Conversation {
        id: bot.conversation_id(),
        state,
        disposition: last.as_ref().and_then(|h| h.disposition),
        platform_disposition: last.as_ref().and_then(|h| h.platform_disposition.clone()),
        sla_status: last.as_ref().map_or(SlaStatus::NotApplicable, |h| h.sla_status),
        sla_deadline: None,
        streams,
        queue: last.as_ref().and_then(|h| h.queue.clone()),
        agents,
        started_at: started,
        escalated_at,
        queued_at: last.as_ref().and_then(|h| h.queued_at),
        first_attended_at: last.as_ref().and_then(|h| h.attended_at),
        closed_at: last.as_ref().and_then(|h| h.closed_at),
        wait_seconds: last.as_ref().and_then(|h| h.wait_seconds),
        first_response_seconds: last.as_ref().and_then(|h| h.first_response_seconds),
        handle_seconds: last.as_ref().and_then(|h| h.handle_seconds),
        bot_seconds: escalated_at.map(|e| (e - started).num_milliseconds() as f64 / 1000.0),
        transfers: last.as_ref().map_or(0, |h| h.transfers),
        message_counts: MessageCounts {
            visitor: rng.gen_range(1..12),
            bot: rng.gen_range(1..12),
            agent: if handoffs.iter().any(|h| h.attended_at.is_some()) {
                rng.gen_range(1..20)
            } else {
                0
            },
            system: rng.gen_range(0..3),
        },
        close_reason: last.as_ref().and_then(|h| h.close_reason.clone()),
        attributes: BTreeMap::new(),
        last_seq: (n as i64 + 1) * 10,
        updated_at: at,
        handoffs,
    }
}

/// `count` conversations of a scenario.
pub fn synthetic_conversations(
    seed: u64,
    count: u64,
    start: DateTime<Utc>,
    span: Duration,
    sla: &SlaConfig,
) -> Vec<Conversation> {
    (0..count)
        .map(|n| synthetic_conversation(seed, n, start, span, sla))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_deterministic_and_cover_every_outcome() {
        let start = DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sla = SlaConfig::default();
        let a = synthetic_conversations(7, 400, start, Duration::days(2), &sla);
        let b = synthetic_conversations(7, 400, start, Duration::days(2), &sla);
        assert_eq!(a, b);
        let handoffs: Vec<&Handoff> = a.iter().flat_map(|c| c.handoffs.iter()).collect();
        for d in [
            Disposition::Completed,
            Disposition::Abandoned,
            Disposition::Missed,
            Disposition::Failed,
        ] {
            assert!(handoffs.iter().any(|h| h.disposition == Some(d)), "{d:?}");
        }
        assert!(handoffs.iter().any(|h| h.sla_status == SlaStatus::Met));
        assert!(handoffs.iter().any(|h| h.sla_status == SlaStatus::Breached));
        assert!(handoffs.iter().any(|h| h.disposition.is_none()));
        assert!(a.iter().any(|c| c.handoffs.is_empty()));
        assert!(a.iter().any(|c| c.handoffs.len() == 2));
    }
}
