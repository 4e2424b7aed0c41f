//! Per-handoff metric predicates and the arithmetic of the reports (METRICS.md), as pure functions so
//! that the store-computed reports and the ClickHouse ones are checked against the same definitions.

use chrono::{DateTime, Utc};

use crate::config::SlaConfig;
use crate::model::{Conversation, Disposition, Handoff, Platform, SlaStatus};

/// `end - start` in seconds, millisecond precision.
pub fn seconds_between(start: DateTime<Utc>, end: DateTime<Utc>) -> f64 {
    (end - start).num_milliseconds() as f64 / 1000.0
}

/// Offered: the handoff reached a live queue.
pub fn is_offered(h: &Handoff) -> bool {
    h.queued_at.is_some()
}

/// Answered: an agent attended.
pub fn is_answered(h: &Handoff) -> bool {
    h.attended_at.is_some()
}

/// Answered within the SLA target (the platform's own SLA value included).
pub fn is_answered_within_sla(h: &Handoff) -> bool {
    is_answered(h) && h.sla_status == SlaStatus::Met
}

/// Completed: closed after an agent attended (or the platform said so).
pub fn is_completed(h: &Handoff) -> bool {
    h.disposition == Some(Disposition::Completed)
}

/// Abandoned: the visitor left before any agent.
pub fn is_abandoned(h: &Handoff) -> bool {
    h.disposition == Some(Disposition::Abandoned)
}

/// Missed: the platform closed it before any agent.
pub fn is_missed(h: &Handoff) -> bool {
    h.disposition == Some(Disposition::Missed)
}

/// Failed: the hand-over itself failed.
pub fn is_failed(h: &Handoff) -> bool {
    h.disposition == Some(Disposition::Failed)
}

/// How long an unanswered handoff waited before it was closed (abandoned or missed); None when it
/// was answered, never queued or is still waiting.
pub fn unanswered_wait_seconds(h: &Handoff) -> Option<f64> {
    match (h.queued_at, h.attended_at, h.closed_at) {
        (Some(q), None, Some(c)) => Some(seconds_between(q, c)),
        _ => None,
    }
}

/// Short abandon: abandoned after waiting less than `sla.short_abandon_seconds` (excluded from
/// the service level's denominator).
pub fn is_short_abandon(h: &Handoff, sla: &SlaConfig) -> bool {
    is_abandoned(h) && unanswered_wait_seconds(h).is_some_and(|w| w < sla.short_abandon_seconds as f64)
}

/// When the handoff's wait ended (first attend, else close of a queued handoff): the instant its SLA
/// outcome is credited to (the Genesys convention). None while it is still waiting or never queued.
pub fn wait_ended_at(h: &Handoff) -> Option<DateTime<Utc>> {
    h.queued_at?;
    h.attended_at.or(h.closed_at)
}

/// The name of the first agent who attended, for per-agent reports.
pub fn first_agent(h: &Handoff) -> Option<&str> {
    h.agents.first().map(|a| a.name.as_str())
}

/// A bot conversation: one with an Ultimate stream (the containment rate's denominator).
pub fn is_bot_conversation(c: &Conversation) -> bool {
    c.streams.iter().any(|s| s.platform == Platform::Ultimate)
}

/// Contained: the bot never handed the conversation over.
pub fn is_contained(c: &Conversation) -> bool {
    c.handoffs.is_empty()
}

/// answered within target / (answered + abandoned + missed - short abandoned); None without a denominator.
pub fn service_level(
    answered_within_sla: u64,
    answered: u64,
    abandoned: u64,
    missed: u64,
    short_abandoned: u64,
) -> Option<f64> {
    let denominator = (answered + abandoned + missed).saturating_sub(short_abandoned);
    (denominator > 0).then(|| answered_within_sla as f64 / denominator as f64)
}

/// The `level` quantile (0..=1) of `values` the way ClickHouse's `quantileExact` computes it (the
/// element at index `floor(level * n)` of the sorted values, the last one for level >= 1), so the
/// store and ClickHouse report the same percentiles. None for no values.
pub fn quantile_exact(values: &[f64], level: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    let index = if level < 1.0 {
        ((level.max(0.0) * sorted.len() as f64) as usize).min(last)
    } else {
        last
    };
    sorted.get(index).copied()
}

/// The arithmetic mean; None for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The SLA report's counters for a group of handoffs (one `SlaRow` before formatting).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlaTally {
    /// Handoffs that reached a queue.
    pub offered: u64,
    /// Handoffs an agent attended.
    pub answered: u64,
    /// Answered within the target.
    pub answered_within_sla: u64,
    /// Queued, then the visitor left before any agent.
    pub abandoned: u64,
    /// Of those, abandoned before `short_abandon_seconds`.
    pub short_abandoned: u64,
    /// Queued, then the platform closed it before any agent.
    pub missed: u64,
    /// Wait of every answered handoff.
    pub waits: Vec<f64>,
    /// First response time of every handoff that has one.
    pub first_responses: Vec<f64>,
    /// Handle time of every handoff that has one.
    pub handles: Vec<f64>,
}

impl SlaTally {
    /// Counts one handoff. Abandons and misses count only when the handoff was offered: a visitor
    /// who leaves before the queue call returned was never waiting for an agent.
    pub fn add(&mut self, h: &Handoff, sla: &SlaConfig) {
        let offered = is_offered(h);
        self.offered += u64::from(offered);
        self.answered += u64::from(is_answered(h));
        self.answered_within_sla += u64::from(is_answered_within_sla(h));
        self.abandoned += u64::from(offered && is_abandoned(h));
        self.short_abandoned += u64::from(is_short_abandon(h, sla));
        self.missed += u64::from(offered && is_missed(h));
        self.waits.extend(h.wait_seconds);
        self.first_responses.extend(h.first_response_seconds);
        self.handles.extend(h.handle_seconds);
    }

    /// METRICS.md's service level for the group.
    pub fn service_level(&self) -> Option<f64> {
        service_level(
            self.answered_within_sla,
            self.answered,
            self.abandoned,
            self.missed,
            self.short_abandoned,
        )
    }

    /// Median wait of answered handoffs.
    pub fn wait_p50(&self) -> Option<f64> {
        quantile_exact(&self.waits, 0.5)
    }

    /// 90th percentile wait of answered handoffs.
    pub fn wait_p90(&self) -> Option<f64> {
        quantile_exact(&self.waits, 0.9)
    }

    /// Mean first response time.
    pub fn avg_first_response(&self) -> Option<f64> {
        mean(&self.first_responses)
    }

    /// Mean handle time.
    pub fn avg_handle(&self) -> Option<f64> {
        mean(&self.handles)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::model::{Agent, StreamKey};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
    }

    fn handoff(queued: Option<i64>, attended: Option<i64>, closed: Option<i64>, d: Option<Disposition>) -> Handoff {
        Handoff {
            backend: "aivo_live".into(),
            queue: None,
            requested_at: None,
            queued_at: queued.map(t),
            attended_at: attended.map(t),
            closed_at: closed.map(t),
            agents: Vec::new(),
            transfers: 0,
            wait_seconds: queued.zip(attended).map(|(q, a)| (a - q) as f64),
            first_response_seconds: None,
            handle_seconds: attended.zip(closed).map(|(a, c)| (c - a) as f64),
            sla_status: SlaStatus::NotApplicable,
            sla_deadline: None,
            disposition: d,
            platform_disposition: None,
            close_reason: None,
            failure: None,
        }
    }

    #[test]
    fn seconds_keep_milliseconds() {
        let a = t(0);
        let b = a + chrono::Duration::milliseconds(1_250);
        assert_eq!(seconds_between(a, b), 1.25);
        assert_eq!(seconds_between(b, a), -1.25);
    }

    #[test]
    fn short_abandon_needs_an_abandon_shorter_than_the_threshold() {
        let sla = SlaConfig::default();
        assert!(is_short_abandon(
            &handoff(Some(0), None, Some(19), Some(Disposition::Abandoned)),
            &sla
        ));
        assert!(!is_short_abandon(
            &handoff(Some(0), None, Some(20), Some(Disposition::Abandoned)),
            &sla
        ));
        assert!(!is_short_abandon(
            &handoff(Some(0), None, Some(5), Some(Disposition::Missed)),
            &sla
        ));
        // Never queued: no wait to measure.
        assert!(!is_short_abandon(
            &handoff(None, None, Some(5), Some(Disposition::Abandoned)),
            &sla
        ));
        assert_eq!(
            unanswered_wait_seconds(&handoff(Some(3), None, Some(10), Some(Disposition::Missed))),
            Some(7.0)
        );
        assert_eq!(
            unanswered_wait_seconds(&handoff(Some(3), Some(5), Some(10), Some(Disposition::Completed))),
            None
        );
    }

    #[test]
    fn wait_ends_at_attend_or_at_close_of_a_queued_handoff() {
        assert_eq!(wait_ended_at(&handoff(Some(0), Some(5), Some(9), None)), Some(t(5)));
        assert_eq!(wait_ended_at(&handoff(Some(0), None, Some(9), None)), Some(t(9)));
        assert_eq!(wait_ended_at(&handoff(Some(0), None, None, None)), None);
        assert_eq!(wait_ended_at(&handoff(None, None, Some(9), None)), None);
    }

    #[test]
    fn service_level_excludes_short_abandons_and_needs_a_denominator() {
        assert_eq!(service_level(3, 4, 2, 1, 1), Some(0.5));
        assert_eq!(service_level(0, 0, 1, 0, 1), None);
        assert_eq!(service_level(0, 0, 0, 0, 0), None);
    }

    #[test]
    fn quantile_matches_clickhouse_quantile_exact() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile_exact(&v, 0.5), Some(3.0));
        assert_eq!(quantile_exact(&v, 0.9), Some(5.0));
        assert_eq!(quantile_exact(&v, 0.0), Some(1.0));
        assert_eq!(quantile_exact(&v, 1.0), Some(5.0));
        // Even count: index floor(0.5 * 2) = 1, the upper middle value.
        assert_eq!(quantile_exact(&[10.0, 20.0], 0.5), Some(20.0));
        assert_eq!(quantile_exact(&[], 0.5), None);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn tally_counts_a_group_of_handoffs() {
        let sla = SlaConfig::default();
        let mut met = handoff(Some(0), Some(10), Some(100), Some(Disposition::Completed));
        met.sla_status = SlaStatus::Met;
        met.first_response_seconds = Some(4.0);
        met.agents.push(Agent {
            name: "Tomas".into(),
            nickname: None,
            group: None,
        });
        let mut late = handoff(Some(0), Some(90), Some(120), Some(Disposition::Completed));
        late.sla_status = SlaStatus::Breached;
        let short = handoff(Some(0), None, Some(5), Some(Disposition::Abandoned));
        let long = handoff(Some(0), None, Some(100), Some(Disposition::Abandoned));
        let missed = handoff(Some(0), None, Some(30), Some(Disposition::Missed));
        let never_queued = handoff(None, None, Some(3), Some(Disposition::Abandoned));
        let failed = handoff(None, None, Some(3), Some(Disposition::Failed));

        let mut tally = SlaTally::default();
        for h in [&met, &late, &short, &long, &missed, &never_queued, &failed] {
            tally.add(h, &sla);
        }
        assert_eq!(tally.offered, 5);
        assert_eq!(tally.answered, 2);
        assert_eq!(tally.answered_within_sla, 1);
        assert_eq!(tally.abandoned, 2);
        assert_eq!(tally.short_abandoned, 1);
        assert_eq!(tally.missed, 1);
        // 1 / (2 + 2 + 1 - 1)
        assert_eq!(tally.service_level(), Some(0.25));
        assert_eq!(tally.wait_p50(), Some(90.0));
        assert_eq!(tally.wait_p90(), Some(90.0));
        assert_eq!(tally.avg_first_response(), Some(4.0));
        assert_eq!(tally.avg_handle(), Some(60.0));
        assert_eq!(first_agent(&met), Some("Tomas"));
        assert_eq!(first_agent(&late), None);
        assert!(is_completed(&met) && is_failed(&failed) && is_missed(&missed));
    }

    #[test]
    fn containment_is_about_bot_conversations_without_handoffs() {
        let json = serde_json::json!({
            "id": "6f1c2b7e-54a0-4f3a-9d1e-0c557a3b2e91", "state": "bot", "disposition": null,
            "platform_disposition": null, "sla_status": "not_applicable",
            "streams": [{"platform": "ultimate", "external_id": "c1"}], "queue": null, "agents": [],
            "handoffs": [], "started_at": "2024-01-01T00:00:00Z", "escalated_at": null, "queued_at": null,
            "first_attended_at": null, "closed_at": null, "wait_seconds": null, "first_response_seconds": null,
            "handle_seconds": null, "bot_seconds": null, "transfers": 0,
            "message_counts": {"visitor": 0, "bot": 0, "agent": 0, "system": 0}, "close_reason": null,
            "attributes": {}, "last_seq": 1, "updated_at": "2024-01-01T00:00:00Z"
        });
        let mut c: Conversation = serde_json::from_value(json).unwrap();
        assert!(is_bot_conversation(&c) && is_contained(&c));
        c.handoffs.push(handoff(Some(0), None, None, None));
        assert!(!is_contained(&c));
        c.streams = vec![StreamKey::new(Platform::Vcc, "1:2")];
        assert!(!is_bot_conversation(&c));
    }
}
