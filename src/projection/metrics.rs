//! One definition per metric (METRICS.md): the per-handoff predicates and timers, and the arithmetic of
//! the reports. The fold uses the timers; the ClickHouse fact rows (`analytics::facts`) decide every
//! handoff's metrics with the predicates, and the reports computed from the store and from ClickHouse
//! both use the arithmetic here, so both report sources agree by construction.

use chrono::{DateTime, Utc};

use crate::config::SlaConfig;
use crate::model::{Disposition, Handoff, SlaStatus};

/// `end - start` in seconds, millisecond precision.
pub(crate) fn seconds_between(start: DateTime<Utc>, end: DateTime<Utc>) -> f64 {
    (end - start).num_milliseconds() as f64 / 1000.0
}

/// [`seconds_between`] when both instants happened.
pub(crate) fn elapsed(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<f64> {
    Some(seconds_between(start?, end?))
}

/// Answered: an agent attended.
pub(crate) fn is_answered(h: &Handoff) -> bool {
    h.attended_at.is_some()
}

/// Wait: queued to first attend (the fold's value, else from the two instants).
pub(crate) fn wait_seconds(h: &Handoff) -> Option<f64> {
    h.wait_seconds.or_else(|| elapsed(h.queued_at, h.attended_at))
}

/// Answered within the SLA target of its queue: the SLA status when it is decided (the platform's own
/// value included), else the wait against the target.
pub(crate) fn is_answered_within_sla(h: &Handoff, sla: &SlaConfig) -> bool {
    let target = sla.target_for(h.queue.as_deref());
    is_answered(h)
        && match h.sla_status {
            SlaStatus::Met => true,
            SlaStatus::Breached => false,
            SlaStatus::Pending | SlaStatus::NotApplicable => wait_seconds(h).is_some_and(|w| w <= target as f64),
        }
}

/// Abandoned: closed, never answered, and the visitor left.
pub(crate) fn is_abandoned(h: &Handoff) -> bool {
    h.closed_at.is_some() && !is_answered(h) && h.disposition == Some(Disposition::Abandoned)
}

/// Missed: closed, never answered, and the platform closed it.
pub(crate) fn is_missed(h: &Handoff) -> bool {
    h.closed_at.is_some() && !is_answered(h) && h.disposition == Some(Disposition::Missed)
}

/// How long an unanswered handoff waited before it was closed (abandoned or missed); None when it
/// was answered, never queued or is still waiting.
pub(crate) fn unanswered_wait_seconds(h: &Handoff) -> Option<f64> {
    match (h.queued_at, h.attended_at, h.closed_at) {
        (Some(q), None, Some(c)) => Some(seconds_between(q, c)),
        _ => None,
    }
}

/// Short abandon: abandoned after waiting less than `sla.short_abandon_seconds` (excluded from
/// the service level's denominator).
pub(crate) fn is_short_abandon(h: &Handoff, sla: &SlaConfig) -> bool {
    is_abandoned(h) && unanswered_wait_seconds(h).is_some_and(|w| w < sla.short_abandon_seconds as f64)
}

/// First response: the fold's value, for an answered handoff.
pub(crate) fn first_response_seconds(h: &Handoff) -> Option<f64> {
    if is_answered(h) {
        h.first_response_seconds
    } else {
        None
    }
}

/// When the first response was sent (first attend + first response time, to the millisecond): the instant
/// the first response time is credited to. None when there is no first response time.
pub(crate) fn first_response_at(h: &Handoff) -> Option<DateTime<Utc>> {
    let secs = first_response_seconds(h)?;
    Some(h.attended_at? + chrono::Duration::milliseconds((secs * 1000.0).round() as i64))
}

/// Handle time: first attend to close (the fold's value, else from the two instants), for an answered
/// and closed handoff.
pub(crate) fn handle_seconds(h: &Handoff) -> Option<f64> {
    if is_answered(h) && h.closed_at.is_some() {
        h.handle_seconds.or_else(|| elapsed(h.attended_at, h.closed_at))
    } else {
        None
    }
}

/// answered within target / (answered + abandoned + missed - short abandoned); None without a denominator.
pub fn service_level(answered_within_sla: u64, answered: u64, abandoned: u64, missed: u64, short: u64) -> Option<f64> {
    let denominator = (answered + abandoned + missed).saturating_sub(short);
    (denominator > 0).then(|| answered_within_sla as f64 / denominator as f64)
}

/// Percentile of sorted values with linear interpolation between closest ranks (index `p * (n - 1)`),
/// the definition ClickHouse's `quantiles` uses; None for no values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = p * (sorted.len() - 1) as f64;
    let lower = index.floor() as usize;
    let upper = index.ceil() as usize;
    let fraction = index - lower as f64;
    Some(sorted[lower] + (sorted[upper] - sorted[lower]) * fraction)
}

/// The mean of `count` values summing to `sum`; None for no values.
pub(crate) fn mean(sum: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum / count as f64)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

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
    fn service_level_excludes_short_abandons_and_needs_a_denominator() {
        assert_eq!(service_level(3, 4, 2, 1, 1), Some(0.5));
        assert_eq!(service_level(0, 0, 1, 0, 1), None);
        assert_eq!(service_level(0, 0, 0, 0, 0), None);
    }

    #[test]
    fn percentiles_interpolate_like_clickhouse_quantiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[0.0, 1.0, 2.0, 3.0], 0.5), Some(1.5));
        let p90 = percentile(&[0.0, 1.0, 2.0, 3.0], 0.9).unwrap();
        assert!((p90 - 2.7).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 0.9), Some(7.0));
        assert_eq!(mean(6.0, 3), Some(2.0));
        assert_eq!(mean(0.0, 0), None);
    }

    #[test]
    fn answered_within_sla_is_the_decided_status_else_the_wait_against_the_queue_target() {
        let mut sla = SlaConfig::default();
        sla.queues.insert("fast".into(), 10);
        let mut h = handoff(Some(0), Some(30), Some(100), Some(Disposition::Completed));
        assert!(is_answered_within_sla(&h, &sla), "30 s within the default 60 s");
        h.queue = Some("fast".into());
        assert!(!is_answered_within_sla(&h, &sla), "30 s past the queue's 10 s");
        h.sla_status = SlaStatus::Met;
        assert!(is_answered_within_sla(&h, &sla), "the decided status wins");
        let unanswered = handoff(Some(0), None, Some(5), Some(Disposition::Abandoned));
        assert!(!is_answered_within_sla(&unanswered, &sla));
        assert_eq!(handle_seconds(&h), Some(70.0));
        assert_eq!(handle_seconds(&unanswered), None);
        assert_eq!(first_response_seconds(&unanswered), None);
        assert!(is_abandoned(&unanswered) && !is_missed(&unanswered));
    }
}
