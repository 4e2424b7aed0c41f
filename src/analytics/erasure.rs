//! Erasure in ClickHouse: the rows that name an erased conversation lose its stream ids. ClickHouse has
//! no in-place UPDATE; an `ALTER TABLE ... UPDATE` mutation (ClickHouse 18.16 and current) rewrites the
//! parts that hold them, every version of a row included. The sink runs it when it ships the
//! `ledger.erased` event, i.e. after every earlier event of the conversation was shipped, and re-ships
//! an erased conversation without stream ids. The counts, times and outcomes stay: reports do not move.

use super::{Analytics, AnalyticsResult};
use crate::sources::ledger::ErasedPayload;

/// Seqs per mutation (a mutation is one rewrite of the affected parts: few and large is cheaper).
const SEQS_PER_MUTATION: usize = 5_000;

/// The mutations erasing what `erasures` name. Idempotent: re-running them changes nothing.
pub(crate) fn erasure_statements(erasures: &[ErasedPayload]) -> Vec<String> {
    let seqs: Vec<String> = erasures
        .iter()
        .flat_map(|e| e.events.iter().map(|ev| ev.seq.max(0).to_string()))
        .collect();
    let ids: Vec<String> = erasures
        .iter()
        .flat_map(|e| e.conversation_ids.iter().map(|id| format!("'{id}'")))
        .collect();
    let mut statements: Vec<String> = seqs
        .chunks(SEQS_PER_MUTATION)
        .map(|chunk| {
            format!(
                "ALTER TABLE events UPDATE external_id = '' WHERE seq IN ({})",
                chunk.join(", ")
            )
        })
        .collect();
    if !ids.is_empty() {
        statements.push(format!(
            "ALTER TABLE conversations UPDATE external_ids = emptyArrayString() WHERE conversation_id IN ({})",
            ids.join(", ")
        ));
    }
    statements
}

/// Runs the mutations for `erasures`.
pub async fn erase(analytics: &Analytics, erasures: &[ErasedPayload]) -> AnalyticsResult<()> {
    for sql in erasure_statements(erasures) {
        analytics.client().query(&sql).execute().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use uuid::Uuid;

    use super::*;
    use crate::chain::ErasedEvent;

    #[test]
    fn mutations_name_the_erased_events_and_conversations() {
        let id = Uuid::from_u128(1);
        let erasure = ErasedPayload {
            erasure_id: Uuid::from_u128(2),
            at: DateTime::from_timestamp(0, 0).unwrap(),
            conversation_ids: vec![id],
            events: vec![
                ErasedEvent {
                    seq: 3,
                    payload_sha256: "aa".into(),
                },
                ErasedEvent {
                    seq: 9,
                    payload_sha256: "bb".into(),
                },
            ],
            kept: Vec::new(),
        };
        assert_eq!(
            erasure_statements(&[erasure]),
            vec![
                "ALTER TABLE events UPDATE external_id = '' WHERE seq IN (3, 9)".to_string(),
                format!(
                    "ALTER TABLE conversations UPDATE external_ids = emptyArrayString() WHERE conversation_id IN ('{id}')"
                ),
            ]
        );
    }
}
