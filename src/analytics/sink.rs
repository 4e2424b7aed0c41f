//! The ClickHouse sink: tails the event log from a checkpoint kept in the store, ships event, conversation,
//! handoff and message-metadata facts with the batching inserter, refreshes the touched rollup buckets (a sink
//! that is behind does so every [`REFRESH_EVERY_EVENTS`] events and once caught up), then advances the
//! checkpoint.
//!
//! Why re-shipping never double counts: every fact row is keyed (conversation, handoff index, message seq)
//! and versioned by the conversation's `last_seq`, so shipping the same state twice inserts identical rows that
//! `FINAL` collapses; rows that no longer exist (a conversation absorbed by a merge, a handoff or line that
//! disappeared, a row whose started_at moved) get a tombstone. Rollups are recomputed from the deduplicated
//! facts, never incremented. A crash between insert and checkpoint therefore only repeats idempotent work.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::facts::{possibly_absorbed, tombstone_version, ConversationRow, EventRow, HandoffRow, MessageRow};
use super::{rollups, schema, Analytics, AnalyticsError, AnalyticsResult};
use crate::config::SlaConfig;
use crate::model::Conversation;
use crate::sources::ledger::{self, ErasedPayload};
use crate::store::{LogEntry, Store};
use crate::telemetry;

/// Name of the sink's checkpoint in the store.
pub const CHECKPOINT: &str = "clickhouse_sink";

/// Most events read from the log per pass. A pass costs a constant number of round trips (to the store and to
/// ClickHouse) whatever its size, so a backfill goes in large passes; a sink that keeps up ships what came.
pub const BATCH_EVENTS: u32 = 20_000;

/// Most conversation ids named in one ClickHouse `IN` list (ids are 36 characters: well under the
/// 256 KiB `max_query_size`).
const IN_LIST_IDS: usize = 2_000;

/// Most `(started_at, conversation_id)` keys named in one ClickHouse `IN` list (~70 characters each).
const IN_LIST_KEYS: usize = 2_000;

/// Longest wait between two passes when nothing wakes the sink.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// While the sink is behind (a pass as large as allowed: more is waiting), it defers the rollup rebuild
/// (the hours stay recorded as dirty) to the first pass that is not full, or to the pass that crosses a
/// multiple of this many log positions: a backfill rebuilds each bucket a few times instead of once per
/// pass, and the rollups never lag further behind than this.
pub const REFRESH_EVERY_EVENTS: i64 = 200_000;

/// Rows per INSERT of the batching inserter.
const INSERT_MAX_ROWS: u64 = 50_000;

/// Writes rows to `table` with the crate's batching inserter.
pub(crate) async fn insert_rows<T>(analytics: &Analytics, table: &str, rows: &[T]) -> AnalyticsResult<()>
where
    T: Row + Serialize,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut inserter = analytics
        .client()
        .inserter::<T>(table)?
        .with_max_rows(INSERT_MAX_ROWS)
        .with_period(None);
    for row in rows {
        inserter.write(row)?;
        inserter.commit().await?;
    }
    inserter.end().await?;
    Ok(())
}

/// SQL `IN` list of string literals.
fn in_list<'a>(values: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<String> = values
        .into_iter()
        .map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'").replace('?', "??")))
        .collect();
    if items.is_empty() {
        "''".to_string()
    } else {
        items.join(", ")
    }
}

#[derive(Debug, Row, Deserialize)]
struct LiveConversation {
    conversation_id: String,
    started_at: u32,
}

#[derive(Debug, Row, Deserialize)]
struct LiveHandoff {
    conversation_id: String,
    idx: u32,
    started_at: u32,
    offered_at: u32,
    answered_at: u32,
    closed_at: u32,
    first_response_at: u32,
    disposition_at: u32,
}

#[derive(Debug, Row, Deserialize)]
struct LiveMessage {
    conversation_id: String,
    seq: u64,
    ordinal: u32,
    started_at: u32,
}

/// The live (not tombstoned) rows ClickHouse holds for some conversations.
#[derive(Debug, Default)]
struct LiveState {
    conversations: Vec<LiveConversation>,
    handoffs: Vec<LiveHandoff>,
    messages: Vec<LiveMessage>,
}

/// Every key `(started_at, conversation_id)` under which ClickHouse holds a conversation row (any version,
/// tombstones included) of `ids`: one scan of one narrow column, however much has been shipped.
async fn shipped_keys(analytics: &Analytics, ids: &BTreeSet<String>) -> AnalyticsResult<Vec<LiveConversation>> {
    let ids: Vec<&String> = ids.iter().collect();
    let mut keys = Vec::new();
    for chunk in ids.chunks(IN_LIST_IDS) {
        let rows: Vec<LiveConversation> = analytics
            .client()
            .query(&format!(
                "SELECT DISTINCT conversation_id, toUInt32(started_at) FROM conversations \
                 WHERE conversation_id IN ({})",
                in_list(chunk.iter().copied())
            ))
            .fetch_all()
            .await?;
        keys.extend(rows);
    }
    Ok(keys)
}

/// The live rows of `ids`. A pass writes a conversation's handoff and message rows under the key of a
/// conversation row it wrote before them (tombstones under the key of a live row found here), so the keys of
/// the conversation rows ([`shipped_keys`]) name every row there is: the three `FINAL` reads then go
/// through the sort keys' prefix `(started_at, conversation_id)` and read only the granules holding them.
/// Conversations never shipped (most of a backfill) cost nothing more than the key lookup, and those known
/// never shipped (see [`ShippedUpTo`]) are left out of `ids` by the caller.
async fn live_state(analytics: &Analytics, ids: &BTreeSet<String>) -> AnalyticsResult<LiveState> {
    if ids.is_empty() {
        return Ok(LiveState::default());
    }
    let keys = shipped_keys(analytics, ids).await?;
    let mut state = LiveState::default();
    for chunk in keys.chunks(IN_LIST_KEYS) {
        let part = live_state_of(analytics, chunk).await?;
        state.conversations.extend(part.conversations);
        state.handoffs.extend(part.handoffs);
        state.messages.extend(part.messages);
    }
    Ok(state)
}

/// SQL list of `(started_at, conversation_id)` tuples.
fn key_list(keys: &[LiveConversation]) -> String {
    keys.iter()
        .map(|k| {
            format!(
                "(toDateTime({}, 'UTC'), {})",
                k.started_at,
                in_list(std::iter::once(&k.conversation_id))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn live_state_of(analytics: &Analytics, keys: &[LiveConversation]) -> AnalyticsResult<LiveState> {
    let list = key_list(keys);
    let client = analytics.client();
    let conversations = client
        .query(&format!(
            "SELECT conversation_id, toUInt32(started_at) FROM conversations FINAL \
             WHERE (started_at, conversation_id) IN ({list}) AND deleted = 0"
        ))
        .fetch_all()
        .await?;
    let handoffs = client
        .query(&format!(
            "SELECT conversation_id, idx, toUInt32(started_at), toUInt32(offered_at), toUInt32(answered_at), \
             toUInt32(closed_at), toUInt32(first_response_at), toUInt32(disposition_at) FROM handoffs FINAL \
             WHERE (started_at, conversation_id) IN ({list}) AND deleted = 0"
        ))
        .fetch_all()
        .await?;
    let messages = client
        .query(&format!(
            "SELECT conversation_id, seq, ordinal, toUInt32(started_at) FROM messages FINAL \
             WHERE (started_at, conversation_id) IN ({list}) AND deleted = 0"
        ))
        .fetch_all()
        .await?;
    Ok(LiveState {
        conversations,
        handoffs,
        messages,
    })
}

/// The highest log position of any event ClickHouse holds, at least the checkpoint: what a pass reads before
/// it ships anything. A pass inserts its events before any fact row (and a crashed pass too: its facts were
/// inserted after its events), and ships only conversations an event of its batch touched (read as they are
/// in the store then, possibly with later events). So no pass has ever shipped a row of a conversation whose
/// streams' first position ([`Store::first_seqs_of`]) is after this one, nor of an id a merge has since
/// absorbed into it (the absorbed conversation's streams, with their first positions, are its own now):
/// such conversations skip the lookup of what ClickHouse holds for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShippedUpTo(pub i64);

impl ShippedUpTo {
    /// Read from ClickHouse's events after `checkpoint` (only the last granules of the sort key `seq`).
    async fn read(analytics: &Analytics, checkpoint: i64) -> AnalyticsResult<ShippedUpTo> {
        let highest: u64 = analytics
            .client()
            .query(&format!(
                "SELECT max(seq) FROM events WHERE seq > {}",
                checkpoint.max(0)
            ))
            .fetch_one()
            .await?;
        Ok(ShippedUpTo(checkpoint.max(i64::try_from(highest).unwrap_or(i64::MAX))))
    }

    /// Whether ClickHouse may hold rows of a conversation whose streams first appear at `first_seq` (None:
    /// unknown, e.g. no stream filed to it any more).
    pub(crate) fn may_hold(self, first_seq: Option<i64>) -> bool {
        first_seq.is_none_or(|first| first <= self.0)
    }
}

/// What one pass writes: new rows, tombstones, and the hours whose rollups change.
#[derive(Debug, Default)]
pub(crate) struct Shipment {
    /// Conversation rows (live and tombstones).
    pub conversations: Vec<ConversationRow>,
    /// Handoff rows (live and tombstones).
    pub handoffs: Vec<HandoffRow>,
    /// Message rows (live and tombstones).
    pub messages: Vec<MessageRow>,
    /// Hours (epoch seconds) in which some credited metric appears or disappears.
    pub dirty_hours: BTreeSet<u32>,
}

/// Decides the rows to write for `conversations` (with their transcripts) given what ClickHouse holds live:
/// pure, so the tombstone rules are unit-tested. `absorbed` maps an id that a merge may have absorbed to the
/// `last_seq` of the conversation that absorbed it.
pub(crate) fn plan_shipment(
    conversations: &[(Conversation, Vec<MessageRow>)],
    absorbed: &HashMap<String, i64>,
    live: &LiveStateView,
    sla: &SlaConfig,
) -> Shipment {
    let mut out = Shipment::default();
    let mut new_conversations: HashMap<String, (u32, i64)> = HashMap::new();
    let mut new_handoffs: HashSet<(String, u32, u32)> = HashSet::new();
    let mut new_messages: HashSet<(String, u64, u32, u32)> = HashSet::new();
    for (c, messages) in conversations {
        let row = ConversationRow::from_conversation(c);
        new_conversations.insert(row.conversation_id.clone(), (row.started_at, c.last_seq));
        out.conversations.push(row);
        for h in HandoffRow::from_conversation(c, sla) {
            out.dirty_hours.extend(h.credited_hours());
            new_handoffs.insert((h.conversation_id.clone(), h.idx, h.started_at));
            out.handoffs.push(h);
        }
        for m in messages {
            new_messages.insert((m.conversation_id.clone(), m.seq, m.ordinal, m.started_at));
            out.messages.push(m.clone());
        }
    }
    // The last_seq whose tombstones supersede a live row of `id`.
    let superseding = |id: &str| -> Option<i64> {
        new_conversations
            .get(id)
            .map(|(_, seq)| *seq)
            .or_else(|| absorbed.get(id).copied())
    };
    for c in &live.conversations {
        let keep = new_conversations.get(&c.0).is_some_and(|(started, _)| *started == c.1);
        if let (false, Some(seq)) = (keep, superseding(&c.0)) {
            out.conversations
                .push(ConversationRow::tombstone(&c.0, c.1, tombstone_version(seq)));
        }
    }
    for h in &live.handoffs {
        out.dirty_hours
            .extend(h.credit_times.iter().filter(|t| **t > 0).map(|t| t - t % 3600));
        let keep = new_handoffs.contains(&(h.conversation_id.clone(), h.idx, h.started_at));
        if let (false, Some(seq)) = (keep, superseding(&h.conversation_id)) {
            out.handoffs.push(HandoffRow::tombstone(
                &h.conversation_id,
                h.idx,
                h.started_at,
                tombstone_version(seq),
            ));
        }
    }
    for m in &live.messages {
        let keep = new_messages.contains(&(m.0.clone(), m.1, m.2, m.3));
        if let (false, Some(seq)) = (keep, superseding(&m.0)) {
            out.messages
                .push(MessageRow::tombstone(&m.0, m.1, m.2, m.3, tombstone_version(seq)));
        }
    }
    out
}

/// The live rows ClickHouse holds, in plain tuples (for [`plan_shipment`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct LiveStateView {
    /// `(conversation_id, started_at)`.
    pub conversations: Vec<(String, u32)>,
    /// Live handoff keys with the instants they credit.
    pub handoffs: Vec<LiveHandoffView>,
    /// `(conversation_id, seq, ordinal, started_at)`.
    pub messages: Vec<(String, u64, u32, u32)>,
}

/// A live handoff row: its key and credited instants.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct LiveHandoffView {
    /// Conversation id.
    pub conversation_id: String,
    /// Handoff index.
    pub idx: u32,
    /// Partition date (conversation's started_at).
    pub started_at: u32,
    /// offered, answered, closed, first response, disposition (0 = none).
    pub credit_times: [u32; 5],
}

impl LiveState {
    fn into_view(self) -> LiveStateView {
        let s = self;
        LiveStateView {
            conversations: s
                .conversations
                .into_iter()
                .map(|c| (c.conversation_id, c.started_at))
                .collect(),
            handoffs: s
                .handoffs
                .into_iter()
                .map(|h| LiveHandoffView {
                    conversation_id: h.conversation_id,
                    idx: h.idx,
                    started_at: h.started_at,
                    credit_times: [
                        h.offered_at,
                        h.answered_at,
                        h.closed_at,
                        h.first_response_at,
                        h.disposition_at,
                    ],
                })
                .collect(),
            messages: s
                .messages
                .into_iter()
                .map(|m| (m.conversation_id, m.seq, m.ordinal, m.started_at))
                .collect(),
        }
    }
}

/// Where a pass's time goes: the wall time of each phase, in order (logged at debug level after each pass).
#[derive(Debug)]
pub(crate) struct PassTimings {
    phases: Vec<(&'static str, Duration)>,
    last: Instant,
}

impl PassTimings {
    fn start() -> PassTimings {
        PassTimings {
            phases: Vec::new(),
            last: Instant::now(),
        }
    }

    /// The next phase begins now (the time since the last phase ended is not counted: waiting for the
    /// previous pass).
    fn resume(&mut self) {
        self.last = Instant::now();
    }

    /// Ends the phase `name` (it began where the previous one ended).
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    /// `phase=ms phase=ms ...`
    fn summary(&self) -> String {
        self.phases
            .iter()
            .map(|(name, d)| format!("{name}={:.1}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Ships the current state of `conversations` (with their transcript rows): writes the dirty hours, the
/// rows and tombstones, then (when `refresh`) refreshes every dirty hour's rollups; the rows of the `erased`
/// conversations are shipped without stream ids. ClickHouse is asked what it holds of the ids in `lookup`
/// only (the conversations and absorbed ids it may hold rows of; see [`ShippedUpTo`]). Idempotent.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ship_conversations_erasing(
    analytics: &Analytics,
    conversations: &[(Conversation, Vec<MessageRow>)],
    absorbed: &HashMap<String, i64>,
    lookup: &BTreeSet<String>,
    erased: &BTreeSet<Uuid>,
    sla: &SlaConfig,
    refresh: bool,
    timings: &mut PassTimings,
) -> AnalyticsResult<()> {
    let live = live_state(analytics, lookup).await?.into_view();
    timings.lap("live_state");
    let mut shipment = plan_shipment(conversations, absorbed, &live, sla);
    let erased: BTreeSet<String> = erased.iter().map(Uuid::to_string).collect();
    for row in &mut shipment.conversations {
        if erased.contains(&row.conversation_id) {
            row.external_ids.clear();
        }
    }
    timings.lap("plan");
    rollups::mark_dirty(analytics, &shipment.dirty_hours).await?;
    timings.lap("mark_dirty");
    // Conversation rows first: their keys are how a later pass finds the handoff and message rows
    // (see `live_state`), also after a crash between these inserts.
    insert_rows(analytics, "conversations", &shipment.conversations).await?;
    insert_rows(analytics, "handoffs", &shipment.handoffs).await?;
    insert_rows(analytics, "messages", &shipment.messages).await?;
    timings.lap("insert_facts");
    if refresh {
        rollups::refresh_dirty(analytics).await?;
    }
    timings.lap("refresh_rollups");
    Ok(())
}

/// One pass: ships the events after the checkpoint (at most [`BATCH_EVENTS`]) and the conversations they
/// touch, then stores the new checkpoint. Returns how many events were shipped (0: caught up).
pub async fn ship_once(store: &dyn Store, analytics: &Analytics, sla: &SlaConfig) -> AnalyticsResult<u64> {
    ship_batch(store, analytics, sla, BATCH_EVENTS).await
}

/// [`ship_once`] with passes of at most `max_events` events.
pub async fn ship_batch(
    store: &dyn Store,
    analytics: &Analytics,
    sla: &SlaConfig,
    max_events: u32,
) -> AnalyticsResult<u64> {
    let timings = PassTimings::start();
    let checkpoint = store.checkpoint(CHECKPOINT).await?;
    let read = read_pass(store, checkpoint, max_events, timings).await?;
    ship_read(store, analytics, sla, read).await
}

/// Ships pass after pass (at most `max_events` events each) until a pass is not full (caught up) or
/// `stopping` is cancelled, and returns how many events were shipped (0: caught up already). While the
/// sink is behind, each pass's store reads ([`read_pass`]) run on a task of their own while the previous
/// pass is shipped to ClickHouse, so the store and ClickHouse work at once. What a pass writes and when
/// is as in [`ship_once`]: a pass's ClickHouse work (its lookup of what ClickHouse holds included) begins
/// after the previous pass stored its checkpoint, and its checkpoint is stored after its inserts; reading
/// ahead writes nothing, and reads the conversations after the previous pass read them (never an older
/// state). A crash anywhere therefore leaves what it leaves between two [`ship_once`] calls.
/// `on_checkpoint` is called with each checkpoint stored.
pub async fn ship_until_caught_up(
    store: &Arc<dyn Store>,
    analytics: &Analytics,
    sla: &SlaConfig,
    max_events: u32,
    stopping: &CancellationToken,
    on_checkpoint: &(dyn Fn(i64) + Sync),
) -> AnalyticsResult<u64> {
    let checkpoint = store.checkpoint(CHECKPOINT).await?;
    let mut read = read_pass(store.as_ref(), checkpoint, max_events, PassTimings::start()).await?;
    let mut shipped = 0;
    loop {
        let last = match read.events.last() {
            Some(e) if read.full && !stopping.is_cancelled() => e.seq,
            Some(e) => {
                let last = e.seq;
                shipped += ship_read(store.as_ref(), analytics, sla, read).await?;
                on_checkpoint(last);
                return Ok(shipped);
            }
            None => return Ok(shipped + ship_read(store.as_ref(), analytics, sla, read).await?),
        };
        let ahead = tokio::spawn({
            let store = Arc::clone(store);
            async move { read_pass(store.as_ref(), last, max_events, PassTimings::start()).await }
        });
        let pass = ship_read(store.as_ref(), analytics, sla, read).await;
        let next = match pass {
            Ok(n) => {
                shipped += n;
                on_checkpoint(last);
                ahead.await
            }
            Err(e) => {
                ahead.abort();
                return Err(e);
            }
        };
        read = next.map_err(|e| AnalyticsError::Data(format!("the sink's store reads failed: {e}")))??;
        read.timings.resume();
    }
}

/// What a pass reads from the store: the events after the checkpoint and the current state of the
/// conversations they touch, with their transcript rows. Nothing in it depends on ClickHouse.
struct PassRead {
    /// The checkpoint the events follow.
    checkpoint: i64,
    /// At most `max_events` events after it.
    events: Vec<LogEntry>,
    /// As many events as allowed: more may be waiting.
    full: bool,
    /// The touched conversations (resolved through merges) with their transcript rows.
    with_messages: Vec<(Conversation, Vec<MessageRow>)>,
    /// Ids a merge may have absorbed -> (last_seq of the conversation that absorbed it, its id).
    absorbed: HashMap<String, (i64, Uuid)>,
    /// First log position of each touched conversation ([`Store::first_seqs_of`]).
    first_seqs: HashMap<Uuid, i64>,
    /// The touched conversations an erasure covered.
    erased: BTreeSet<Uuid>,
    timings: PassTimings,
}

/// Reads what the pass after `checkpoint` ships (at most `max_events` events).
async fn read_pass(
    store: &dyn Store,
    checkpoint: i64,
    max_events: u32,
    mut timings: PassTimings,
) -> AnalyticsResult<PassRead> {
    let events = store.log_entries_after(checkpoint, max_events).await?;
    timings.lap("read_events");
    let full = events.len() >= max_events as usize;
    let touched: BTreeSet<Uuid> = events.iter().filter_map(|e| e.conversation_id).collect();
    let touched: Vec<Uuid> = touched.into_iter().collect();
    let mut conversations: BTreeMap<Uuid, Conversation> = BTreeMap::new();
    let mut absorbed: HashMap<String, (i64, Uuid)> = HashMap::new();
    // Every touched conversation and every transcript in a few statements, not a round trip each.
    for (id, conversation) in store.conversations_of(&touched).await? {
        if conversation.id != id {
            absorbed.insert(id.to_string(), (conversation.last_seq, conversation.id));
        }
        for other in possibly_absorbed(&conversation) {
            absorbed.insert(other.to_string(), (conversation.last_seq, conversation.id));
        }
        conversations.insert(conversation.id, conversation);
    }
    for id in conversations.keys() {
        absorbed.remove(&id.to_string());
    }
    timings.lap("read_conversations");
    let ids: Vec<Uuid> = conversations.keys().copied().collect();
    let mut transcripts = store.transcript_lines_of(&ids).await?;
    timings.lap("read_transcripts");
    let first_seqs = store.first_seqs_of(&ids).await?;
    timings.lap("read_first_seqs");
    let mut with_messages = Vec::with_capacity(conversations.len());
    for (id, conversation) in conversations {
        let lines = transcripts.remove(&id).unwrap_or_default();
        let messages = MessageRow::from_lines(&conversation, &lines);
        with_messages.push((conversation, messages));
    }
    timings.lap("build_messages");
    let erased = store.erased_among(&ids).await?;
    timings.lap("read_erased");
    Ok(PassRead {
        checkpoint,
        events,
        full,
        with_messages,
        absorbed,
        first_seqs,
        erased,
        timings,
    })
}

/// Ships what [`read_pass`] read, then stores the new checkpoint (the last event's seq). Returns how many
/// events were shipped (0: caught up, and the rollups a crash may have left dirty are repaired).
async fn ship_read(store: &dyn Store, analytics: &Analytics, sla: &SlaConfig, read: PassRead) -> AnalyticsResult<u64> {
    let PassRead {
        checkpoint,
        events,
        full,
        with_messages,
        absorbed,
        first_seqs,
        erased,
        mut timings,
    } = read;
    let Some(last) = events.last().map(|e| e.seq) else {
        // Caught up; still repair rollups a crash may have left dirty.
        rollups::refresh_dirty(analytics).await?;
        return Ok(0);
    };
    // Behind (a full pass): rebuild the rollups later, see [`REFRESH_EVERY_EVENTS`].
    let refresh = !full || checkpoint / REFRESH_EVERY_EVENTS != last / REFRESH_EVERY_EVENTS;
    // Before this pass inserts anything.
    let shipped = ShippedUpTo::read(analytics, checkpoint).await?;
    timings.lap("shipped_up_to");
    let event_rows: Vec<EventRow> = events.iter().map(EventRow::from_entry).collect();
    insert_rows(analytics, "events", &event_rows).await?;
    timings.lap("insert_events");
    let may_hold = |id: &Uuid| shipped.may_hold(first_seqs.get(id).copied());
    let mut lookup: BTreeSet<String> = with_messages
        .iter()
        .map(|(c, _)| &c.id)
        .filter(|id| may_hold(id))
        .map(Uuid::to_string)
        .collect();
    lookup.extend(
        absorbed
            .iter()
            .filter(|(_, (_, into))| may_hold(into))
            .map(|(id, _)| id.clone()),
    );
    let absorbed: HashMap<String, i64> = absorbed.into_iter().map(|(id, (seq, _))| (id, seq)).collect();
    ship_conversations_erasing(
        analytics,
        &with_messages,
        &absorbed,
        &lookup,
        &erased,
        sla,
        refresh,
        &mut timings,
    )
    .await?;
    // After every earlier event of an erased conversation was shipped (the log is shipped in order).
    let erasures: Vec<ErasedPayload> = events
        .iter()
        .filter(|e| e.kind == ledger::ERASED)
        .filter_map(|e| e.erasure.clone())
        .filter_map(|payload| serde_json::from_value(payload).ok())
        .collect();
    if !erasures.is_empty() {
        super::erasure::erase(analytics, &erasures).await?;
    }
    timings.lap("erase");
    store.set_checkpoint(CHECKPOINT, last).await?;
    timings.lap("checkpoint");
    tracing::debug!(
        events = events.len(),
        conversations = with_messages.len(),
        looked_up = lookup.len(),
        phases_ms = %timings.summary(),
        "sink pass"
    );
    Ok(events.len() as u64)
}

/// Exponential backoff between failed passes.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    current: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            current: initial,
            initial,
            max,
        }
    }

    /// The delay to wait now; the next one doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// The sink task: applies the migrations (retrying while ClickHouse is down), then ships pass after pass,
/// sleeping until `wake` changes (the writer's committed seq) or [`POLL_INTERVAL`] passes once caught up, and
/// backing off while ClickHouse or the store fails. Runs until the runtime stops it.
pub(crate) async fn run_sink(
    store: Arc<dyn Store>,
    analytics: Arc<Analytics>,
    mut wake: watch::Receiver<i64>,
    sla: SlaConfig,
    stopping: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match schema::migrate(analytics.config()).await {
            Ok(_) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "clickhouse migrations failed");
                if !pause(delay, &stopping).await {
                    return;
                }
            }
        }
    }
    backoff.reset();
    // A pass in progress is never cut short: a shutdown waits for its batch and checkpoint.
    while !stopping.is_cancelled() {
        let lag = |checkpoint: i64| telemetry::sink_lag(*wake.borrow() - checkpoint);
        let result = ship_until_caught_up(&store, &analytics, &sla, BATCH_EVENTS, &stopping, &lag).await;
        if let Ok(checkpoint) = store.checkpoint(CHECKPOINT).await {
            lag(checkpoint);
        }
        match result {
            Ok(0) => {
                backoff.reset();
                // A closed channel (no writer) leaves plain polling.
                tokio::select! {
                    _ = tokio::time::timeout(POLL_INTERVAL, wake.changed()) => {}
                    _ = stopping.cancelled() => return,
                }
                if wake.has_changed().is_err() && !pause(POLL_INTERVAL, &stopping).await {
                    return;
                }
            }
            Ok(shipped) => {
                backoff.reset();
                tracing::debug!(events = shipped, "shipped to clickhouse");
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "clickhouse sink pass failed");
                if !pause(delay, &stopping).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `delay`; false when `stopping` was cancelled first.
async fn pause(delay: Duration, stopping: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stopping.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::facts::tests::{answered, conversation, handoff};
    use crate::analytics::facts::{live_version, HandoffRow};

    fn view_of(rows: &[HandoffRow]) -> Vec<LiveHandoffView> {
        rows.iter()
            .map(|h| LiveHandoffView {
                conversation_id: h.conversation_id.clone(),
                idx: h.idx,
                started_at: h.started_at,
                credit_times: [
                    h.offered_at,
                    h.answered_at,
                    h.closed_at,
                    h.first_response_at,
                    h.disposition_at,
                ],
            })
            .collect()
    }

    #[test]
    fn reshipping_the_same_state_writes_no_tombstones() {
        let c = conversation(
            "a",
            vec![answered(handoff("q", "2024-05-01T10:00:00Z"), 10, None, None)],
            5,
        );
        let sla = SlaConfig::default();
        let first = plan_shipment(&[(c.clone(), vec![])], &HashMap::new(), &LiveStateView::default(), &sla);
        let live = LiveStateView {
            conversations: vec![(c.id.to_string(), first.conversations[0].started_at)],
            handoffs: view_of(&first.handoffs),
            messages: vec![],
        };
        let again = plan_shipment(&[(c, vec![])], &HashMap::new(), &live, &sla);
        assert_eq!(again.conversations.len(), 1);
        assert!(again.conversations.iter().all(|r| r.deleted == 0));
        assert!(again.handoffs.iter().all(|r| r.deleted == 0));
        assert_eq!(again.conversations[0], first.conversations[0]);
        assert_eq!(again.dirty_hours, first.dirty_hours);
    }

    #[test]
    fn absorbed_conversations_and_vanished_handoffs_get_tombstones_that_win() {
        let sla = SlaConfig::default();
        let old = conversation(
            "a",
            vec![
                handoff("q", "2024-05-01T10:00:00Z"),
                handoff("q", "2024-05-01T12:00:00Z"),
            ],
            5,
        );
        let old_rows = HandoffRow::from_conversation(&old, &sla);
        let absorbed_id = "0000-absorbed".to_string();
        let absorbed_handoff = HandoffRow::tombstone(&absorbed_id, 0, 77, 0);
        let live = LiveStateView {
            conversations: vec![(old.id.to_string(), old_rows[0].started_at), (absorbed_id.clone(), 77)],
            handoffs: {
                let mut v = view_of(&old_rows);
                v.extend(view_of(&[absorbed_handoff]));
                v
            },
            messages: vec![(absorbed_id.clone(), 3, 0, 77)],
        };
        let mut new = conversation("a", vec![handoff("q", "2024-05-01T10:00:00Z")], 9);
        new.started_at = old.started_at;
        let absorbed: HashMap<String, i64> = [(absorbed_id.clone(), 9)].into_iter().collect();
        let plan = plan_shipment(&[(new, vec![])], &absorbed, &live, &sla);
        let tomb: Vec<(&str, u32, u64)> = plan
            .handoffs
            .iter()
            .filter(|h| h.deleted == 1)
            .map(|h| (h.conversation_id.as_str(), h.idx, h.version))
            .collect();
        assert_eq!(tomb.len(), 2);
        assert!(tomb.contains(&(old_rows[1].conversation_id.as_str(), 1, tombstone_version(9))));
        assert!(tomb.contains(&(absorbed_id.as_str(), 0, tombstone_version(9))));
        assert!(tombstone_version(9) > live_version(5));
        let conv_tombs: Vec<_> = plan.conversations.iter().filter(|c| c.deleted == 1).collect();
        assert_eq!(conv_tombs.len(), 1);
        assert_eq!(
            (conv_tombs[0].conversation_id.as_str(), conv_tombs[0].started_at),
            (absorbed_id.as_str(), 77)
        );
        assert_eq!(plan.messages.len(), 1);
        assert_eq!(plan.messages[0].deleted, 1);
        // the vanished 12:00 handoff's hour must be rebuilt
        assert!(plan.dirty_hours.contains(&old_rows[1].offered_at));
    }

    #[test]
    fn a_moved_started_at_leaves_a_tombstone_under_the_old_key() {
        let sla = SlaConfig::default();
        let c = conversation("a", vec![], 4);
        let live = LiveStateView {
            conversations: vec![(c.id.to_string(), 1)],
            ..Default::default()
        };
        let plan = plan_shipment(&[(c.clone(), vec![])], &HashMap::new(), &live, &sla);
        assert_eq!(plan.conversations.len(), 2);
        let tomb = plan.conversations.iter().find(|r| r.deleted == 1).unwrap();
        assert_eq!((tomb.started_at, tomb.version), (1, tombstone_version(4)));
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn in_lists_escape_quotes() {
        let v = vec!["a'b".to_string(), "c".to_string()];
        assert_eq!(in_list(&v), "'a\\'b', 'c'");
    }
}
