//! Analytics against a real ClickHouse (scripts/clickhouse.sh starts one; URL from LEDGER_TEST_CLICKHOUSE_URL,
//! default http://127.0.0.1:8123). Each test uses a fresh database and drops it. Unreachable ClickHouse: the
//! tests skip with a note locally and fail in CI (CI=true).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{test, web, App};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use clickhouse::Row;
use serde::Deserialize;
use uuid::Uuid;

use handoff_ledger::analytics::facts::{ConversationRow, MessageRow};
use handoff_ledger::analytics::reports::{
    self, csv_rows_from_clickhouse, DispositionRow, GroupBy, Interval, ReportQuery, SlaRow,
};
use handoff_ledger::analytics::{rollups, scenario, schema, sink, Analytics};
use handoff_ledger::api::AppState;
use handoff_ledger::config::{ClickHouseConfig, Config, SlaConfig};
use handoff_ledger::model::{
    AppendOutcome, Conversation, Message, MessageKind, NewEvent, NewQuarantine, Party, Platform, QuarantineEntry,
    StoredEvent, StreamKey,
};
use handoff_ledger::store::{ConversationFilter, ConversationPage, ReplayStats, Store, StoreError, StoreResult};
use handoff_ledger::writer::Writer;

// ---------- ClickHouse test database ----------

fn clickhouse_url() -> String {
    std::env::var("LEDGER_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

struct TestDb {
    config: ClickHouseConfig,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.config.url.clone();
        let db = self.config.database.clone();
        let _ = std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new()
                .post(&url)
                .body(format!("DROP DATABASE IF EXISTS {db}"))
                .send();
        })
        .join();
    }
}

/// A fresh, migrated database, or None (skip) when ClickHouse is unreachable outside CI.
async fn fresh_db() -> Option<(TestDb, Analytics)> {
    let url = clickhouse_url();
    let reachable = reqwest::Client::new()
        .get(format!("{url}/?query=SELECT%201"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ClickHouse is not reachable at {url} (CI runs scripts/clickhouse.sh first)");
        }
        eprintln!("note: ClickHouse not reachable at {url}; skipping (run scripts/clickhouse.sh)");
        return None;
    }
    let config = ClickHouseConfig {
        url,
        database: format!("handoff_test_{}", Uuid::new_v4().simple()),
        ..ClickHouseConfig::default()
    };
    let analytics = schema::migrate(&config).await.expect("migrate");
    Some((TestDb { config }, analytics))
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn scenario_start() -> DateTime<Utc> {
    t("2024-05-01T00:00:00Z")
}

fn sla() -> SlaConfig {
    let mut sla = SlaConfig::default();
    sla.queues.insert("2179".into(), 30);
    sla
}

fn query(interval: Interval, group_by: Vec<GroupBy>) -> ReportQuery {
    ReportQuery {
        since: t("2024-05-01T00:00:00Z"),
        until: t("2024-05-05T00:00:00Z"),
        interval,
        group_by,
    }
}

fn queries() -> Vec<ReportQuery> {
    vec![
        query(Interval::Hour, vec![]),
        query(Interval::Day, vec![]),
        query(Interval::Hour, vec![GroupBy::Queue]),
        query(Interval::Day, vec![GroupBy::Platform, GroupBy::Queue, GroupBy::Agent]),
        query(Interval::Day, vec![GroupBy::Agent]),
        ReportQuery {
            since: t("2024-05-02T05:30:00Z"),
            until: t("2024-05-02T20:00:00Z"),
            interval: Interval::Hour,
            group_by: vec![GroupBy::Platform],
        },
    ]
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        _ => false,
    }
}

/// Counts equal; means and service level equal up to float summation order; percentiles within the
/// sketch's tolerance (exact here: `quantiles` keeps every value of a bucket below 8192 values).
fn assert_sla_equal(ch: &[SlaRow], store: &[SlaRow], what: &str) {
    assert_eq!(ch.len(), store.len(), "{what}: row count\nch={ch:#?}\nstore={store:#?}");
    for (a, b) in ch.iter().zip(store) {
        let ctx = format!("{what}: {} {:?} {:?} {:?}", b.bucket, b.platform, b.queue, b.agent);
        assert_eq!(
            (&a.bucket, &a.platform, &a.queue, &a.agent),
            (&b.bucket, &b.platform, &b.queue, &b.agent),
            "{ctx}"
        );
        assert_eq!(
            (
                a.offered,
                a.answered,
                a.answered_within_sla,
                a.abandoned,
                a.short_abandoned,
                a.missed
            ),
            (
                b.offered,
                b.answered,
                b.answered_within_sla,
                b.abandoned,
                b.short_abandoned,
                b.missed
            ),
            "{ctx}"
        );
        assert!(close(a.service_level, b.service_level), "{ctx}: service level");
        assert!(close(a.wait_p50_seconds, b.wait_p50_seconds), "{ctx}: p50 {a:?} {b:?}");
        assert!(close(a.wait_p90_seconds, b.wait_p90_seconds), "{ctx}: p90 {a:?} {b:?}");
        assert!(
            close(a.avg_first_response_seconds, b.avg_first_response_seconds),
            "{ctx}: fr"
        );
        assert!(close(a.avg_handle_seconds, b.avg_handle_seconds), "{ctx}: handle");
    }
}

async fn assert_reports_agree(analytics: &Analytics, conversations: &[Conversation], sla: &SlaConfig) {
    let mut nonempty = 0;
    for q in queries() {
        let ch = reports::sla_report_clickhouse(analytics, &q).await.unwrap();
        let store = reports::sla_report(conversations, sla, &q);
        assert_sla_equal(&ch, &store, &format!("sla {:?} {:?}", q.interval, q.group_by));
        let ch: Vec<DispositionRow> = reports::disposition_report_clickhouse(analytics, &q).await.unwrap();
        let store = reports::disposition_report(conversations, sla, &q);
        assert_eq!(ch, store, "dispositions {:?} {:?}", q.interval, q.group_by);
        nonempty += usize::from(!store.is_empty());
    }
    assert!(nonempty >= 5, "the scenario must produce rows");
}

fn no_messages(conversations: &[Conversation]) -> Vec<(Conversation, Vec<MessageRow>)> {
    conversations.iter().map(|c| (c.clone(), Vec::new())).collect()
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
}

async fn count(analytics: &Analytics, sql: &str) -> u64 {
    analytics.client().query(sql).fetch_one::<Count>().await.unwrap().n
}

// ---------- tests ----------

#[tokio::test]
async fn migrations_create_every_table_once() {
    let Some((db, analytics)) = fresh_db().await else {
        return;
    };
    let (_, again) = schema::migrate_reporting(&db.config).await.unwrap();
    assert!(again.is_empty(), "a second run applies nothing");
    #[derive(Row, Deserialize)]
    struct Name {
        name: String,
    }
    let names: Vec<String> = analytics
        .client()
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all::<Name>()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    for table in [
        "conversations",
        "conversations_current",
        "events",
        "handoff_rollup",
        "handoff_rollup_current",
        "handoffs",
        "handoffs_current",
        "messages",
        "messages_current",
        "rollup_dirty",
        "schema_migrations",
    ] {
        assert!(names.contains(&table.to_string()), "{table} missing from {names:?}");
    }
    assert_eq!(count(&analytics, "SELECT count() AS n FROM schema_migrations").await, 2);
}

#[tokio::test]
async fn clickhouse_and_store_reports_agree_on_one_scenario() {
    let Some((_db, analytics)) = fresh_db().await else {
        return;
    };
    let sla = sla();
    let conversations = scenario::synthetic_conversations(1, 700, scenario_start(), Duration::days(3), &sla);
    for chunk in conversations.chunks(250) {
        sink::ship_conversations(&analytics, &no_messages(chunk), &HashMap::new(), &sla)
            .await
            .unwrap();
    }
    assert_reports_agree(&analytics, &conversations, &sla).await;

    // conversations.csv reads the same from ClickHouse as from the conversations themselves.
    let (since, until) = (t("2024-05-01T00:00:00Z"), t("2024-05-03T00:00:00Z"));
    let mut from_ch = csv_rows_from_clickhouse(&analytics, since, until).await.unwrap();
    let mut expected: Vec<ConversationRow> = conversations
        .iter()
        .filter(|c| c.started_at >= since && c.started_at < until)
        .map(ConversationRow::from_conversation)
        .collect();
    assert!(expected.len() > 300);
    assert_eq!(
        reports::conversations_csv(&mut from_ch).unwrap(),
        reports::conversations_csv(&mut expected).unwrap()
    );
}

#[tokio::test]
async fn reshipping_and_later_states_never_double_count() {
    let Some((_db, analytics)) = fresh_db().await else {
        return;
    };
    let sla = sla();
    let mut conversations = scenario::synthetic_conversations(2, 300, scenario_start(), Duration::days(2), &sla);
    let all = no_messages(&conversations);
    sink::ship_conversations(&analytics, &all, &HashMap::new(), &sla)
        .await
        .unwrap();
    // Shipped again (a crash before the checkpoint): identical numbers.
    sink::ship_conversations(&analytics, &all, &HashMap::new(), &sla)
        .await
        .unwrap();
    assert_reports_agree(&analytics, &conversations, &sla).await;
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM handoffs_current").await,
        conversations.iter().map(|c| c.handoffs.len() as u64).sum::<u64>()
    );

    // Later states: waiting handoffs get answered (their credit moves to a new hour), one conversation loses
    // its second handoff, and the rest are re-shipped unchanged.
    let mut changed = Vec::new();
    for c in conversations.iter_mut() {
        let mut touched = false;
        if let Some(h) = c
            .handoffs
            .iter_mut()
            .find(|h| h.queued_at.is_some() && h.disposition.is_none())
        {
            if h.attended_at.is_none() {
                let at = h.queued_at.unwrap() + Duration::minutes(75);
                h.attended_at = Some(at);
                h.wait_seconds = Some(75.0 * 60.0);
                h.sla_status = handoff_ledger::model::SlaStatus::Breached;
                h.agents = vec![handoff_ledger::model::Agent {
                    name: "Late".into(),
                    nickname: None,
                    group: None,
                }];
                touched = true;
            }
        }
        if c.handoffs.len() == 2 && changed.len() % 2 == 0 {
            c.handoffs.pop();
            touched = true;
        }
        if changed.len() % 3 == 1 {
            // an earlier event arrived late: the conversation started earlier (possibly in another month)
            c.started_at -= Duration::hours(30);
            touched = true;
        }
        if touched {
            c.last_seq += 5;
            changed.push(c.clone());
        }
    }
    assert!(changed.len() >= 5, "the scenario must change some conversations");
    assert!(changed.iter().any(|c| c.started_at < t("2024-05-01T00:00:00Z")));
    sink::ship_conversations(&analytics, &no_messages(&changed), &HashMap::new(), &sla)
        .await
        .unwrap();
    assert_reports_agree(&analytics, &conversations, &sla).await;
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM handoffs_current").await,
        conversations.iter().map(|c| c.handoffs.len() as u64).sum::<u64>()
    );
}

#[tokio::test]
async fn rollups_rebuild_restores_every_bucket() {
    let Some((_db, analytics)) = fresh_db().await else {
        return;
    };
    let sla = sla();
    let conversations = scenario::synthetic_conversations(3, 200, scenario_start(), Duration::days(2), &sla);
    sink::ship_conversations(&analytics, &no_messages(&conversations), &HashMap::new(), &sla)
        .await
        .unwrap();
    analytics
        .client()
        .query("TRUNCATE TABLE handoff_rollup")
        .execute()
        .await
        .unwrap();
    let q = query(Interval::Hour, vec![]);
    assert!(reports::sla_report_clickhouse(&analytics, &q).await.unwrap().is_empty());
    let hours = rollups::rebuild(&analytics, None).await.unwrap();
    assert!(hours > 20, "rebuilt {hours} hours");
    assert_reports_agree(&analytics, &conversations, &sla).await;
    // a partial rebuild from a later time leaves earlier buckets as they are
    let again = rollups::rebuild(&analytics, Some(t("2024-05-02T00:00:00Z")))
        .await
        .unwrap();
    assert!(again < hours);
    assert_reports_agree(&analytics, &conversations, &sla).await;
}

// ---------- an in-memory store for the sink ----------

#[derive(Default)]
struct MemState {
    events: Vec<StoredEvent>,
    conversations: BTreeMap<Uuid, Conversation>,
    aliases: HashMap<Uuid, Uuid>,
    transcripts: HashMap<Uuid, Vec<Message>>,
    checkpoints: HashMap<String, i64>,
}

#[derive(Default)]
struct MemStore {
    state: Mutex<MemState>,
    fail_next_checkpoint: AtomicBool,
}

impl MemStore {
    /// Records a new state of a conversation with one new event (and one transcript line) in the log.
    fn put(&self, mut conversation: Conversation, absorbs: Option<Uuid>) -> Conversation {
        let mut s = self.state.lock().unwrap();
        let seq = s.events.len() as i64 + 1;
        conversation.last_seq = seq;
        let stream = conversation.streams[0].clone();
        s.events.push(StoredEvent {
            seq,
            event_id: Uuid::new_v4(),
            platform: stream.platform,
            external_id: stream.external_id.clone(),
            kind: "ultimate.send_message".into(),
            occurred_at: conversation.updated_at,
            received_at: conversation.updated_at,
            conversation_id: Some(conversation.id),
            headers: BTreeMap::new(),
            payload: serde_json::json!({"text": "secret words"}),
        });
        let line = Message {
            seq,
            at: conversation.updated_at,
            party: Party::Visitor,
            author: None,
            kind: MessageKind::Text,
            text: Some("secret words".into()),
            buttons: vec![],
            cards: vec![],
            url: None,
            platform: stream.platform,
            event_id: Uuid::nil(),
        };
        s.transcripts.entry(conversation.id).or_default().push(line);
        if let Some(old) = absorbs {
            s.conversations.remove(&old);
            s.aliases.insert(old, conversation.id);
            let moved = s.transcripts.remove(&old).unwrap_or_default();
            s.transcripts.entry(conversation.id).or_default().extend(moved);
        }
        s.conversations.insert(conversation.id, conversation.clone());
        conversation
    }

    fn all(&self) -> Vec<Conversation> {
        self.state.lock().unwrap().conversations.values().cloned().collect()
    }
}

#[async_trait]
impl Store for MemStore {
    async fn migrate(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn append_batch(&self, _: &[Vec<NewEvent>], _: &SlaConfig) -> StoreResult<Vec<Vec<AppendOutcome>>> {
        Ok(Vec::new())
    }
    async fn quarantine(&self, _: &NewQuarantine) -> StoreResult<i64> {
        Ok(0)
    }
    async fn list_quarantine(&self, _: u32, _: Option<i64>) -> StoreResult<Vec<QuarantineEntry>> {
        Ok(Vec::new())
    }
    async fn get_conversation(&self, id: Uuid) -> StoreResult<Option<Conversation>> {
        let s = self.state.lock().unwrap();
        let id = s.aliases.get(&id).copied().unwrap_or(id);
        Ok(s.conversations.get(&id).cloned())
    }
    async fn list_conversations(&self, f: &ConversationFilter) -> StoreResult<ConversationPage> {
        let s = self.state.lock().unwrap();
        let mut items: Vec<Conversation> = s
            .conversations
            .values()
            .filter(|c| f.since.is_none_or(|t| c.started_at >= t) && f.until.is_none_or(|t| c.started_at < t))
            .cloned()
            .collect();
        items.sort_by_key(|c| std::cmp::Reverse((c.started_at.timestamp_micros(), c.id)));
        if let Some(after) = f.after {
            items.retain(|c| (c.started_at.timestamp_micros(), c.id) < after);
        }
        let limit = f.limit.max(1) as usize;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = more
            .then(|| items.last().map(|c| (c.started_at.timestamp_micros(), c.id)))
            .flatten();
        Ok(ConversationPage { items, next })
    }
    async fn transcript(&self, id: Uuid) -> StoreResult<Option<(Uuid, Vec<Message>)>> {
        let s = self.state.lock().unwrap();
        let id = s.aliases.get(&id).copied().unwrap_or(id);
        Ok(s.transcripts.get(&id).map(|m| (id, m.clone())))
    }
    async fn conversation_events(&self, _: Uuid) -> StoreResult<Option<Vec<StoredEvent>>> {
        Ok(None)
    }
    async fn events_after(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
        let s = self.state.lock().unwrap();
        Ok(s.events
            .iter()
            .filter(|e| e.seq > after_seq)
            .take(limit as usize)
            .map(|e| {
                let mut e = e.clone();
                // the log answers with the conversation the stream belongs to now
                e.conversation_id = e.conversation_id.map(|id| s.aliases.get(&id).copied().unwrap_or(id));
                e
            })
            .collect())
    }
    async fn last_seq(&self) -> StoreResult<i64> {
        Ok(self.state.lock().unwrap().events.len() as i64)
    }
    async fn replay(&self, _: &SlaConfig, _: &(dyn Fn(u64, u64) + Send + Sync)) -> StoreResult<ReplayStats> {
        Ok(ReplayStats::default())
    }
    async fn checkpoint(&self, name: &str) -> StoreResult<i64> {
        Ok(self.state.lock().unwrap().checkpoints.get(name).copied().unwrap_or(0))
    }
    async fn set_checkpoint(&self, name: &str, value: i64) -> StoreResult<()> {
        if self.fail_next_checkpoint.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Corrupt("simulated crash before the checkpoint".into()));
        }
        self.state.lock().unwrap().checkpoints.insert(name.to_string(), value);
        Ok(())
    }
}

async fn ship_all(store: &MemStore, analytics: &Analytics, sla: &SlaConfig) -> u64 {
    let mut total = 0;
    loop {
        let n = sink::ship_once(store, analytics, sla).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

#[tokio::test]
async fn sink_tails_the_log_through_clickhouse_outages_and_crashes() {
    let Some((db, analytics)) = fresh_db().await else {
        return;
    };
    let sla = sla();
    let store = MemStore::default();
    let conversations = scenario::synthetic_conversations(4, 150, scenario_start(), Duration::days(1), &sla);
    for c in &conversations {
        store.put(c.clone(), None);
    }

    // ClickHouse down: the pass fails, nothing is checkpointed, the log is untouched.
    let down = Analytics::new(&ClickHouseConfig {
        url: "http://127.0.0.1:1".into(),
        ..db.config.clone()
    });
    assert!(sink::ship_once(&store, &down, &sla).await.is_err());
    assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), 0);

    // A crash between insert and checkpoint: the batch is shipped again.
    store.fail_next_checkpoint.store(true, Ordering::SeqCst);
    assert!(sink::ship_once(&store, &analytics, &sla).await.is_err());
    assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), 0);
    assert_eq!(ship_all(&store, &analytics, &sla).await, 150);
    assert_eq!(store.checkpoint(sink::CHECKPOINT).await.unwrap(), 150);
    assert_reports_agree(&analytics, &store.all(), &sla).await;
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM (SELECT * FROM events FINAL)").await,
        150
    );
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM conversations_current").await,
        150
    );
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM messages_current").await,
        150
    );
    assert_eq!(
        count(&analytics, "SELECT sum(length) AS n FROM messages_current").await,
        150 * "secret words".len() as u64
    );

    // A merge: a live chat that started its own conversation is absorbed by a bot conversation.
    let mut room = conversations[10].clone();
    room.streams = vec![StreamKey::new(Platform::AivoLive, "room-77")];
    room.id = room.streams[0].conversation_id();
    room.started_at += Duration::seconds(1);
    let room = store.put(room, None);
    assert_eq!(ship_all(&store, &analytics, &sla).await, 1);
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM conversations_current").await,
        151
    );
    let mut survivor = store.all().into_iter().find(|c| c.id == conversations[11].id).unwrap();
    survivor.streams.push(room.streams[0].clone());
    survivor.updated_at += Duration::seconds(5);
    store.put(survivor, Some(room.id));
    assert_eq!(ship_all(&store, &analytics, &sla).await, 1);
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM conversations_current").await,
        150
    );
    assert_eq!(
        count(
            &analytics,
            &format!(
                "SELECT count() AS n FROM handoffs_current WHERE conversation_id = '{}'",
                room.id
            )
        )
        .await,
        0
    );
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM messages_current").await,
        152
    );
    assert_reports_agree(&analytics, &store.all(), &sla).await;

    // The whole log shipped again from scratch (a lost checkpoint): still no double counting.
    store.set_checkpoint(sink::CHECKPOINT, 0).await.unwrap();
    ship_all(&store, &analytics, &sla).await;
    assert_reports_agree(&analytics, &store.all(), &sla).await;
    assert_eq!(
        count(&analytics, "SELECT count() AS n FROM conversations_current").await,
        150
    );
}

// ---------- the report API ----------

async fn app_state(store: Arc<MemStore>) -> AppState {
    let config = Config {
        sla: sla(),
        ..Config::default()
    };
    let store: Arc<dyn Store> = store;
    let (writer, _task) = Writer::spawn(store.clone(), config.sla.clone(), 8).await.unwrap();
    let config = Arc::new(config);
    let handoff = handoff_ledger::handoff::Handoff::new(store.clone(), writer.clone(), config.clone()).unwrap();
    AppState {
        store,
        writer,
        config,
        handoff,
    }
}

#[actix_web::test]
async fn report_api_answers_the_same_from_clickhouse_and_from_the_store() {
    let Some((_db, analytics)) = fresh_db().await else {
        return;
    };
    let sla = sla();
    let store = Arc::new(MemStore::default());
    for c in scenario::synthetic_conversations(5, 300, scenario_start(), Duration::days(2), &sla) {
        store.put(c, None);
    }
    ship_all(&store, &analytics, &sla).await;
    let state = app_state(store.clone()).await;
    let with_ch = test::init_service(
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(analytics.clone()))
            .service(handoff_ledger::api::reports::sla_report)
            .service(handoff_ledger::api::reports::dispositions_report)
            .service(handoff_ledger::api::reports::conversations_csv_report),
    )
    .await;
    let store_only = test::init_service(
        App::new()
            .app_data(web::Data::new(state))
            .service(handoff_ledger::api::reports::sla_report)
            .service(handoff_ledger::api::reports::dispositions_report)
            .service(handoff_ledger::api::reports::conversations_csv_report),
    )
    .await;

    let range = "since=2024-05-01T00:00:00Z&until=2024-05-04T00:00:00Z";
    for path in [
        format!("/v1/reports/sla?{range}&interval=day&group_by=queue,platform"),
        format!("/v1/reports/sla?{range}&interval=hour"),
        format!("/v1/reports/dispositions?{range}&interval=day&group_by=agent"),
    ] {
        let a: serde_json::Value =
            test::call_and_read_body_json(&with_ch, test::TestRequest::get().uri(&path).to_request()).await;
        let b: serde_json::Value =
            test::call_and_read_body_json(&store_only, test::TestRequest::get().uri(&path).to_request()).await;
        assert_eq!(a["source"], "clickhouse", "{path}");
        assert_eq!(b["source"], "store", "{path}");
        assert!(!b["rows"].as_array().unwrap().is_empty(), "{path}");
        if path.contains("/sla") {
            let rows = |v: &serde_json::Value| -> Vec<SlaRow> { serde_json::from_value(v["rows"].clone()).unwrap() };
            assert_sla_equal(&rows(&a), &rows(&b), &path);
            if path.contains("group_by") {
                assert!(a["rows"][0].get("queue").is_some() && a["rows"][0].get("agent").is_none());
            }
        } else {
            assert_eq!(a["rows"], b["rows"], "{path}");
        }
    }
    // forcing the store on a ClickHouse-configured service
    let forced: serde_json::Value = test::call_and_read_body_json(
        &with_ch,
        test::TestRequest::get()
            .uri(&format!("/v1/reports/sla?{range}&source=store"))
            .to_request(),
    )
    .await;
    assert_eq!(forced["source"], "store");

    // conversations.csv: same bytes from both sources
    let csv_path = format!("/v1/reports/conversations.csv?{range}");
    let a = test::call_service(&with_ch, test::TestRequest::get().uri(&csv_path).to_request()).await;
    assert_eq!(a.status(), 200);
    assert_eq!(a.headers().get("X-Report-Source").unwrap(), "clickhouse");
    assert!(a
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let a = test::read_body(a).await;
    let b = test::call_service(&store_only, test::TestRequest::get().uri(&csv_path).to_request()).await;
    assert_eq!(b.headers().get("X-Report-Source").unwrap(), "store");
    let b = test::read_body(b).await;
    assert_eq!(a, b);
    assert_eq!(String::from_utf8_lossy(&a).lines().count(), 301);

    // bad parameters
    for (path, param) in [
        ("/v1/reports/sla?interval=week", "interval"),
        ("/v1/reports/dispositions?since=yesterday", "since"),
        ("/v1/reports/sla?group_by=team", "group_by"),
        (
            "/v1/reports/conversations.csv?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z",
            "since",
        ),
    ] {
        let resp = test::call_service(&with_ch, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(resp.status(), 400, "{path}");
        let body: serde_json::Value = test::read_body_json(resp).await;
        assert_eq!(body["error"]["code"], "invalid_parameter", "{path}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(param),
            "{path}: {body}"
        );
    }
    let resp = test::call_service(
        &store_only,
        test::TestRequest::get()
            .uri("/v1/reports/sla?source=clickhouse")
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 400);
}
