//! The store's behaviour, one suite run against both backends: SQLite (a file in a temp dir) and
//! PostgreSQL (a fresh database per test on `LEDGER_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, dropped afterwards even when the test fails).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use sqlx::Connection;
use uuid::Uuid;

use handoff_ledger::analytics::reports::SlaRow;
use handoff_ledger::config::SlaConfig;
use handoff_ledger::model::{
    event_id_for, AppendOutcome, Conversation, Disposition, HandoffState, Message, NewEvent, NewQuarantine, Party,
    Platform, SlaStatus, StreamKey,
};
use handoff_ledger::sources::ledger::{self, QueueAccepted};
use handoff_ledger::store::{self, ConversationFilter, SqliteStore, Store};

#[path = "common/scenario.rs"]
mod scenario;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A migrated store on a throw-away database, plus a way to reach that database behind its back.
struct TestDb {
    store: Arc<dyn Store>,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
    _drop: Option<DropDatabase>,
}

enum Raw {
    Sqlite(String),
    Postgres(String),
}

impl Raw {
    /// Runs a statement on a separate connection; the database's error message when it refuses.
    async fn execute(&self, sql: &str) -> Result<u64, String> {
        match self {
            Raw::Sqlite(url) => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                let result = sqlx::query(sql).execute(&mut conn).await;
                result.map(|r| r.rows_affected()).map_err(|e| e.to_string())
            }
            Raw::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let result = sqlx::query(sql).execute(&mut conn).await;
                result.map(|r| r.rows_affected()).map_err(|e| e.to_string())
            }
        }
    }
}

/// Drops the test database when the test ends, passed or failed (runs during unwinding too).
struct DropDatabase {
    admin_url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop cannot await, and the test's runtime may be unwinding: use a runtime of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: connect must create it.
    let url = format!("sqlite://{}/nested/dir/ledger.db", dir.path().display());
    let store = SqliteStore::connect_writer(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    TestDb {
        store: Arc::new(store),
        raw: Raw::Sqlite(url),
        _dir: Some(dir),
        _drop: None,
    }
}

async fn postgres_db() -> TestDb {
    let admin_url =
        std::env::var("LEDGER_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("ledger_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let guard = DropDatabase {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let mut url = reqwest::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    let store = store::open_writer(&url, 4, handoff_ledger::quarantine::DEFAULT_BODY_CAP)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    TestDb {
        store,
        raw: Raw::Postgres(url),
        _dir: None,
        _drop: Some(guard),
    }
}

/// Generates a `#[tokio::test]` per backend for each test function. `store:` tests take the store;
/// `db:` tests also reach the database directly.
macro_rules! on_both_backends {
    (store: [$($store_test:ident),* $(,)?], db: [$($db_test:ident),* $(,)?]) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $store_test() {
                    let db = super::sqlite_db().await;
                    super::$store_test(db.store.clone()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $db_test() {
                    let db = super::sqlite_db().await;
                    super::$db_test(db.store.clone(), &db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $store_test() {
                    let db = super::postgres_db().await;
                    super::$store_test(db.store.clone()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $db_test() {
                    let db = super::postgres_db().await;
                    super::$db_test(db.store.clone(), &db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    store: [
        seq_is_gap_free_and_strictly_increasing_across_batches,
        duplicates_are_recognised_within_and_across_batches,
        events_without_a_stream_have_no_conversation,
        events_are_filed_under_their_stream_conversation,
        link_before_the_live_stream_files_it_under_the_bot_conversation,
        link_after_the_live_stream_merges_into_the_earlier_conversation,
        the_earlier_live_conversation_survives_a_merge,
        merge_inside_one_batch_answers_the_resolved_conversation,
        chained_merges_keep_every_absorbed_id_resolving,
        quarantine_roundtrip_keeps_bytes_exact,
        checkpoints_default_to_zero_and_overwrite,
        list_filters_and_cursor_pagination,
        events_after_pages_through_the_log,
        the_sinks_reads_are_the_full_reads_narrowed,
        replay_rebuilds_exactly_what_appends_built,
        incremental_projection_equals_replay_on_random_logs,
        event_lines_are_the_lines_one_event_made,
        same_key_same_body_is_a_duplicate_another_body_a_newer_version,
        a_redelivery_of_an_erased_event_is_checked_against_its_digest,
        a_status_without_id_or_time_seen_again_after_other_events_is_new,
        commands_an_event_calls_for_commit_with_it,
        the_planner_is_handed_the_attends_it_asks_for,
        reports_aggregated_in_sql_equal_the_reports_over_conversations,
    ],
    db: [
        the_event_log_refuses_update_and_delete,
        migrating_twice_is_a_no_op,
        replay_repairs_projections_from_the_log_alone,
        projections_of_an_earlier_version_are_rebuilt,
        replay_beside_appends_leaves_what_an_offline_replay_leaves,
        replay_finds_any_single_wrecked_value,
    ]
);

// ---------------------------------------------------------------------------------------------
// Event builders
// ---------------------------------------------------------------------------------------------

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_706_000_000 + secs, 0).unwrap()
}

fn sla() -> SlaConfig {
    SlaConfig::default()
}

/// An event of a kind no parser knows: filed and stored, no facts.
fn event(platform: Platform, external_id: &str, key: &str, secs: i64) -> NewEvent {
    NewEvent {
        event_id: event_id_for(platform, Some(key)),
        stream: StreamKey::new(platform, external_id),
        kind: format!("{platform}.test_event"),
        occurred_at: t(secs),
        platform_at: None,
        received_at: t(secs) + chrono::Duration::milliseconds(250),
        payload: json!({"key": key, "zeta": 1, "alpha": [true, null]}).to_string(),
        headers: BTreeMap::from([("content-type".to_string(), "application/json".to_string())]),
        links: Vec::new(),
    }
}

fn bot(pcid: &str, key: &str, secs: i64) -> NewEvent {
    event(Platform::Ultimate, pcid, key, secs)
}

/// An Aivo Live `attended` webhook for `room` by `agent` from group 2179.
fn attended(room: &str, agent: &str, secs: i64) -> NewEvent {
    attended_from(room, agent, 2179, secs)
}

/// An Aivo Live `attended` webhook for `room` by `agent` from `group`.
fn attended_from(room: &str, agent: &str, group: i64, secs: i64) -> NewEvent {
    let payload = json!({
        "name": "attended",
        "roomId": room,
        "timestamp": (1_706_000_000 + secs) * 1_000_000_000,
        "botId": 1000,
        "eventTime": 1_706_000_000 + secs,
        "data": {"agent": {"name": agent, "nickname": format!("{agent} N"), "groupId": group}}
    });
    NewEvent {
        kind: "aivo_live.attended".into(),
        payload: payload.to_string(),
        ..event(Platform::AivoLive, room, &format!("attended:{room}:{secs}"), secs)
    }
}

fn ultimate(pcid: &str) -> StreamKey {
    StreamKey::new(Platform::Ultimate, pcid)
}

fn room(id: &str) -> StreamKey {
    StreamKey::new(Platform::AivoLive, id)
}

fn visitor_says(conversation: Uuid, text: &str, secs: i64) -> NewEvent {
    ledger::api_message(conversation, Party::Visitor, text, Some(text), t(secs))
}

async fn append(store: &Arc<dyn Store>, groups: Vec<Vec<NewEvent>>) -> Vec<Vec<AppendOutcome>> {
    store.append_batch(&groups, &sla()).await.unwrap()
}

async fn append_one(store: &Arc<dyn Store>, e: NewEvent) -> AppendOutcome {
    append(store, vec![vec![e]]).await.remove(0).remove(0)
}

fn seqs(events: &[handoff_ledger::model::StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

/// Every conversation, walking the pages.
async fn all_conversations(store: &Arc<dyn Store>) -> Vec<Conversation> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_conversations(&ConversationFilter {
                limit: 3,
                after,
                ..ConversationFilter::default()
            })
            .await
            .unwrap();
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------------

async fn seq_is_gap_free_and_strictly_increasing_across_batches(store: Arc<dyn Store>) {
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let first = append(
        &store,
        vec![
            vec![bot("c1", "a", 0), bot("c1", "b", 1)],
            vec![event(Platform::Vcc, "7:9", "c", 2)],
        ],
    )
    .await;
    let first: Vec<Vec<i64>> = first.iter().map(|g| g.iter().map(|o| o.seq).collect()).collect();
    assert_eq!(first, vec![vec![1, 2], vec![3]]);
    let second = append(
        &store,
        vec![vec![bot("c2", "d", 3)], vec![bot("c1", "e", 4), bot("c3", "f", 5)]],
    )
    .await;
    let second: Vec<i64> = second.iter().flatten().map(|o| o.seq).collect();
    assert_eq!(second, vec![4, 5, 6]);
    assert_eq!(store.last_seq().await.unwrap(), 6);
    assert_eq!(seqs(&store.events_after(0, 100).await.unwrap()), vec![1, 2, 3, 4, 5, 6]);
    // An empty batch appends nothing and burns no seq.
    assert!(append(&store, vec![]).await.is_empty());
    assert_eq!(append_one(&store, bot("c1", "g", 6)).await.seq, 7);
}

async fn duplicates_are_recognised_within_and_across_batches(store: Arc<dyn Store>) {
    let a = bot("c1", "same-key", 0);
    // A redelivery: the same key and body, arriving again later with other headers. (The same key with
    // another body is a newer version: see `same_key_same_body_is_a_duplicate_another_body_a_newer_version`.)
    let mut a_again = bot("c1", "same-key", 0);
    a_again.received_at += chrono::Duration::seconds(5);
    a_again.headers.insert("x-retry".into(), "1".into());
    let b = bot("c1", "other", 1);
    let out = append(&store, vec![vec![a.clone(), a_again], vec![b.clone()]]).await;
    let conversation = Some(ultimate("c1").conversation_id());
    assert_eq!(
        out,
        vec![
            vec![
                AppendOutcome {
                    event_id: a.event_id,
                    seq: 1,
                    duplicate: false,
                    conflict: false,
                    conversation_id: conversation,
                    relays: vec![],
                },
                AppendOutcome {
                    event_id: a.event_id,
                    seq: 1,
                    duplicate: true,
                    conflict: false,
                    conversation_id: conversation,
                    relays: vec![],
                },
            ],
            vec![AppendOutcome {
                event_id: b.event_id,
                seq: 2,
                duplicate: false,
                conflict: false,
                conversation_id: conversation,
                relays: vec![],
            }],
        ]
    );
    let out = append(&store, vec![vec![b.clone(), bot("c1", "new", 2)]]).await;
    assert_eq!(
        out[0].iter().map(|o| (o.seq, o.duplicate)).collect::<Vec<_>>(),
        vec![(2, true), (3, false)]
    );
    assert_eq!(out[0][0].conversation_id, conversation);
    let log = store.events_after(0, 100).await.unwrap();
    assert_eq!(seqs(&log), vec![1, 2, 3]);
    // The first delivery is the one kept.
    assert_eq!(log[0].payload, serde_json::from_str::<Value>(&a.payload).unwrap());
}

async fn events_without_a_stream_have_no_conversation(store: Arc<dyn Store>) {
    let mut orphan = event(Platform::BrightPattern, "", "orphan", 0);
    // Links of an event with no stream of its own join nothing.
    orphan.links = vec![room("r1")];
    let out = append_one(&store, orphan.clone()).await;
    assert_eq!((out.seq, out.duplicate, out.conversation_id), (1, false, None));
    let again = append_one(&store, orphan).await;
    assert_eq!((again.seq, again.duplicate, again.conversation_id), (1, true, None));
    let log = store.events_after(0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].external_id, "");
    assert_eq!(log[0].conversation_id, None);
    let r1 = append_one(&store, event(Platform::AivoLive, "r1", "r1", 1)).await;
    assert_eq!(r1.conversation_id, Some(room("r1").conversation_id()));
}

async fn events_are_filed_under_their_stream_conversation(store: Arc<dyn Store>) {
    let e1 = bot("c1", "1", 0);
    let e2 = event(Platform::Vcc, "7:9", "2", 1);
    let e3 = bot("c1", "3", 2);
    let out = append(&store, vec![vec![e1.clone()], vec![e2.clone(), e3.clone()]]).await;
    let c1 = ultimate("c1").conversation_id();
    let vcc = StreamKey::new(Platform::Vcc, "7:9").conversation_id();
    assert_eq!(out[0][0].conversation_id, Some(c1));
    assert_eq!(out[1][0].conversation_id, Some(vcc));
    assert_eq!(out[1][1].conversation_id, Some(c1));
    assert_ne!(c1, vcc);

    let events = store.conversation_events(c1).await.unwrap().unwrap();
    assert_eq!(seqs(&events), vec![1, 3]);
    let first = &events[0];
    assert_eq!(first.event_id, e1.event_id);
    assert_eq!((first.platform, first.external_id.as_str()), (Platform::Ultimate, "c1"));
    assert_eq!(first.kind, "ultimate.test_event");
    assert_eq!((first.occurred_at, first.received_at), (e1.occurred_at, e1.received_at));
    assert_eq!(first.conversation_id, Some(c1));
    assert_eq!(first.headers, e1.headers);
    assert_eq!(first.payload, serde_json::from_str::<Value>(&e1.payload).unwrap());
    // The payload keeps the order of its keys as received.
    assert_eq!(first.payload.to_string(), e1.payload);
    assert_eq!(seqs(&store.conversation_events(vcc).await.unwrap().unwrap()), vec![2]);

    // An api message names its conversation by id and is filed there.
    let said = append_one(&store, visitor_says(c1, "hello", 3)).await;
    assert_eq!(said.conversation_id, Some(c1));
    let conversation = store.get_conversation(c1).await.unwrap().unwrap();
    assert_eq!(conversation.id, c1);
    assert_eq!(conversation.started_at, t(0));
    assert_eq!(conversation.last_seq, 4);
    let (id, messages) = store.transcript(c1).await.unwrap().unwrap();
    assert_eq!(id, c1);
    assert_eq!(
        messages
            .iter()
            .map(|m| (m.seq, m.party, m.text.as_deref()))
            .collect::<Vec<_>>(),
        vec![(4, Party::Visitor, Some("hello"))]
    );

    let unknown = Uuid::new_v4();
    assert_eq!(store.get_conversation(unknown).await.unwrap(), None);
    assert_eq!(store.transcript(unknown).await.unwrap(), None);
    assert_eq!(store.conversation_events(unknown).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Links and merges
// ---------------------------------------------------------------------------------------------

fn queue_accepted(conversation: Uuid, live_room: &str, queue: &str, secs: i64) -> NewEvent {
    let accepted = QueueAccepted {
        backend: "aivo_live".into(),
        queue: Some(queue.into()),
        live_id: live_room.into(),
        team: None,
    };
    ledger::queue_accepted(conversation, &accepted, room(live_room), t(secs))
}

async fn link_before_the_live_stream_files_it_under_the_bot_conversation(store: Arc<dyn Store>) {
    let cu = ultimate("u1").conversation_id();
    append_one(&store, bot("u1", "hi", 0)).await;
    let link = append_one(&store, queue_accepted(cu, "room-1", "2179", 10)).await;
    assert_eq!(link.conversation_id, Some(cu));
    let live = append_one(&store, attended("room-1", "Tomas", 20)).await;
    assert_eq!(live.conversation_id, Some(cu));

    let events = store.conversation_events(cu).await.unwrap().unwrap();
    assert_eq!(seqs(&events), vec![1, 2, 3]);
    assert!(events.iter().all(|e| e.conversation_id == Some(cu)));
    // No conversation of the room's own was ever made.
    assert_eq!(
        store
            .conversation_events(room("room-1").conversation_id())
            .await
            .unwrap(),
        None
    );
    let conversation = store.get_conversation(cu).await.unwrap().unwrap();
    assert_eq!(
        conversation.streams.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            ultimate("u1"),
            room("room-1"),
            StreamKey::new(Platform::Ledger, cu.to_string())
        ])
    );
    assert_eq!(conversation.queue.as_deref(), Some("2179"));
    assert_eq!(all_conversations(&store).await.len(), 1);
}

async fn link_after_the_live_stream_merges_into_the_earlier_conversation(store: Arc<dyn Store>) {
    let cu = ultimate("u1").conversation_id();
    let cr = room("room-1").conversation_id();
    append_one(&store, bot("u1", "hi", 0)).await;
    append_one(&store, visitor_says(cu, "I need a human", 5)).await;
    // Aivo's `attended` races ahead of the queue call's answer: the room starts its own conversation.
    let live = append_one(&store, attended("room-1", "Tomas", 20)).await;
    assert_eq!(live.conversation_id, Some(cr));
    append_one(&store, visitor_says(cr, "hello Tomas", 21)).await;
    assert!(store.get_conversation(cr).await.unwrap().is_some());

    let link = append_one(&store, queue_accepted(cu, "room-1", "2179", 19)).await;
    assert_eq!(
        link.conversation_id,
        Some(cu),
        "the bot conversation started first and survives"
    );

    // The absorbed id keeps resolving to the survivor everywhere.
    let merged = store.get_conversation(cr).await.unwrap().unwrap();
    assert_eq!(merged.id, cu);
    assert_eq!(merged, store.get_conversation(cu).await.unwrap().unwrap());
    assert_eq!(merged.started_at, t(0));
    assert_eq!(merged.last_seq, 5);
    assert_eq!(merged.state, HandoffState::Attended);
    assert_eq!(
        merged.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        vec!["Tomas"]
    );
    assert!(merged.streams.contains(&room("room-1")) && merged.streams.contains(&ultimate("u1")));
    let (id, messages) = store.transcript(cr).await.unwrap().unwrap();
    assert_eq!(id, cu);
    assert_eq!(
        messages
            .iter()
            .map(|m| m.text.as_deref().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["I need a human", "hello Tomas"]
    );
    let events = store.conversation_events(cr).await.unwrap().unwrap();
    assert_eq!(seqs(&events), vec![1, 2, 3, 4, 5]);
    assert!(events.iter().all(|e| e.conversation_id == Some(cu)));
    // Streams were re-pointed: the global log shows the room's events under the survivor.
    let log = store.events_after(0, 10).await.unwrap();
    assert!(log.iter().all(|e| e.conversation_id == Some(cu)));
    // Later events of the room land in the survivor directly.
    let later = append_one(&store, event(Platform::AivoLive, "room-1", "late", 30)).await;
    assert_eq!(later.conversation_id, Some(cu));
    assert_eq!(
        all_conversations(&store).await.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![cu]
    );
}

async fn the_earlier_live_conversation_survives_a_merge(store: Arc<dyn Store>) {
    // The live side's first event happened before anything of the bot's (clock order, not arrival order).
    let cu = ultimate("u1").conversation_id();
    let cr = room("room-1").conversation_id();
    append_one(&store, attended("room-1", "Ana", 0)).await;
    append_one(&store, bot("u1", "hi", 10)).await;
    let link = append_one(&store, ledger::linked(cu, vec![room("room-1")], "test", t(11))).await;
    assert_eq!(link.conversation_id, Some(cr));
    assert_eq!(store.get_conversation(cu).await.unwrap().unwrap().id, cr);
    assert_eq!(store.transcript(cu).await.unwrap().unwrap().0, cr);
    assert_eq!(
        seqs(&store.conversation_events(cu).await.unwrap().unwrap()),
        vec![1, 2, 3]
    );
    // An api message addressed to the absorbed id joins the survivor.
    let said = append_one(&store, visitor_says(cu, "still there?", 12)).await;
    assert_eq!(said.conversation_id, Some(cr));
    assert_eq!(all_conversations(&store).await.len(), 1);
}

async fn merge_inside_one_batch_answers_the_resolved_conversation(store: Arc<dyn Store>) {
    let cu = ultimate("u1").conversation_id();
    let out = append(
        &store,
        vec![
            vec![bot("u1", "hi", 0)],
            vec![attended("room-1", "Tomas", 20)],
            vec![ledger::linked(cu, vec![room("room-1")], "queue call", t(19))],
        ],
    )
    .await;
    // Every outcome names the conversation as it is after the whole batch.
    assert!(out.iter().flatten().all(|o| o.conversation_id == Some(cu)));
    assert_eq!(
        seqs(&store.conversation_events(cu).await.unwrap().unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        all_conversations(&store).await.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![cu]
    );
    let room_id = room("room-1").conversation_id();
    assert_eq!(store.get_conversation(room_id).await.unwrap().unwrap().id, cu);
}

async fn chained_merges_keep_every_absorbed_id_resolving(store: Arc<dyn Store>) {
    let (x, y, z) = (ultimate("x"), ultimate("y"), ultimate("z"));
    append(
        &store,
        vec![
            vec![bot("z", "z", 10)],
            vec![bot("y", "y", 20)],
            vec![bot("x", "x", 30)],
        ],
    )
    .await;
    let cx = x.conversation_id();
    let mut join_xy = bot("x", "link-xy", 31);
    join_xy.links = vec![y.clone()];
    assert_eq!(
        append_one(&store, join_xy).await.conversation_id,
        Some(y.conversation_id())
    );
    let mut join_yz = bot("y", "link-yz", 32);
    join_yz.links = vec![z.clone()];
    assert_eq!(
        append_one(&store, join_yz).await.conversation_id,
        Some(z.conversation_id())
    );
    for absorbed in [cx, y.conversation_id()] {
        assert_eq!(
            store.get_conversation(absorbed).await.unwrap().unwrap().id,
            z.conversation_id()
        );
        assert_eq!(
            seqs(&store.conversation_events(absorbed).await.unwrap().unwrap()),
            vec![1, 2, 3, 4, 5]
        );
    }
    assert_eq!(all_conversations(&store).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Immutability, quarantine, checkpoints, migrations
// ---------------------------------------------------------------------------------------------

async fn the_event_log_refuses_update_and_delete(store: Arc<dyn Store>, db: &TestDb) {
    append_one(&store, bot("c1", "a", 0)).await;
    let before = store.events_after(0, 10).await.unwrap();
    let update = db.raw.execute("UPDATE events SET kind = 'tampered'").await;
    assert!(update.as_ref().is_err_and(|e| e.contains("append-only")), "{update:?}");
    let delete = db.raw.execute("DELETE FROM events").await;
    assert!(delete.as_ref().is_err_and(|e| e.contains("append-only")), "{delete:?}");
    if let Raw::Postgres(_) = db.raw {
        let truncate = db.raw.execute("TRUNCATE events").await;
        assert!(
            truncate.as_ref().is_err_and(|e| e.contains("append-only")),
            "{truncate:?}"
        );
    }
    assert_eq!(store.events_after(0, 10).await.unwrap(), before);
    // The projection tables stay writable (merges and replay rewrite them).
    assert_eq!(db.raw.execute("UPDATE streams SET first_seq = first_seq").await, Ok(1));
}

async fn quarantine_roundtrip_keeps_bytes_exact(store: Arc<dyn Store>) {
    assert!(store.list_quarantine(10, None).await.unwrap().is_empty());
    let text = NewQuarantine {
        received_at: t(0),
        path: "/webhooks/aivo-live".into(),
        platform: Some(Platform::AivoLive),
        error_code: "invalid_payload".into(),
        error_message: "roomId is missing".into(),
        status: 422,
        headers: BTreeMap::from([("user-agent".to_string(), "aivo".to_string())]),
        body: "{\"name\":\"attended\", \"ñ\": 1}".as_bytes().to_vec(),
    };
    let binary = NewQuarantine {
        received_at: t(1),
        path: "/webhooks/vcc/chat".into(),
        platform: None,
        error_code: "invalid_json".into(),
        error_message: "the body is not valid UTF-8".into(),
        status: 400,
        headers: BTreeMap::new(),
        body: vec![0xff, 0xfe, 0x00, b'{', 0x80],
    };
    let first = store.quarantine(&text).await.unwrap();
    let second = store.quarantine(&binary).await.unwrap();
    let third = store.quarantine(&text).await.unwrap();
    assert!(first < second && second < third);

    let all = store.list_quarantine(10, None).await.unwrap();
    assert_eq!(all.iter().map(|q| q.id).collect::<Vec<_>>(), vec![third, second, first]);
    let b = &all[1];
    assert_eq!(b.body, "//4Ae4A=");
    assert_eq!(b.body_encoding, "base64");
    assert_eq!((b.status, b.platform.as_deref()), (400, None));
    assert_eq!(b.received_at, t(1));
    let a = &all[2];
    assert_eq!(a.body.as_bytes(), text.body.as_slice());
    assert_eq!(a.body_encoding, "utf8");
    assert_eq!(a.path, "/webhooks/aivo-live");
    assert_eq!(a.platform.as_deref(), Some("aivo_live"));
    assert_eq!(
        (a.error_code.as_str(), a.error_message.as_str()),
        ("invalid_payload", "roomId is missing")
    );
    assert_eq!(a.status, 422);
    assert_eq!(a.headers, text.headers);

    let page = store.list_quarantine(1, None).await.unwrap();
    assert_eq!(page.iter().map(|q| q.id).collect::<Vec<_>>(), vec![third]);
    let rest = store.list_quarantine(10, Some(third)).await.unwrap();
    assert_eq!(rest.iter().map(|q| q.id).collect::<Vec<_>>(), vec![second, first]);
    assert!(store.list_quarantine(10, Some(first)).await.unwrap().is_empty());
}

async fn checkpoints_default_to_zero_and_overwrite(store: Arc<dyn Store>) {
    assert_eq!(store.checkpoint("clickhouse").await.unwrap(), 0);
    store.set_checkpoint("clickhouse", 5).await.unwrap();
    store.set_checkpoint("outbox", 2).await.unwrap();
    store.set_checkpoint("clickhouse", 7).await.unwrap();
    assert_eq!(store.checkpoint("clickhouse").await.unwrap(), 7);
    assert_eq!(store.checkpoint("outbox").await.unwrap(), 2);
    assert_eq!(store.checkpoint("other").await.unwrap(), 0);
}

async fn migrating_twice_is_a_no_op(store: Arc<dyn Store>, db: &TestDb) {
    append_one(&store, bot("c1", "a", 0)).await;
    store
        .quarantine(&NewQuarantine {
            received_at: t(0),
            path: "/p".into(),
            platform: None,
            error_code: "invalid_json".into(),
            error_message: "m".into(),
            status: 400,
            headers: BTreeMap::new(),
            body: b"x".to_vec(),
        })
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 1);
    assert_eq!(store.list_quarantine(10, None).await.unwrap().len(), 1);
    assert_eq!(append_one(&store, bot("c1", "b", 1)).await.seq, 2);
    // The migrations table holds each migration once.
    let applied = match &db.raw {
        Raw::Sqlite(url) => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations")
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
        Raw::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations")
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    };
    let files = std::fs::read_dir(match db.raw {
        Raw::Sqlite(_) => "migrations/sqlite",
        Raw::Postgres(_) => "migrations/postgres",
    })
    .unwrap()
    .count() as i64;
    assert_eq!(applied, files);
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

async fn events_after_pages_through_the_log(store: Arc<dyn Store>) {
    let events: Vec<NewEvent> = (0..5)
        .map(|i| bot(&format!("c{}", i % 2), &format!("k{i}"), i))
        .collect();
    append(&store, vec![events]).await;
    assert_eq!(seqs(&store.events_after(0, 2).await.unwrap()), vec![1, 2]);
    assert_eq!(seqs(&store.events_after(2, 2).await.unwrap()), vec![3, 4]);
    assert_eq!(seqs(&store.events_after(4, 2).await.unwrap()), vec![5]);
    assert!(store.events_after(5, 2).await.unwrap().is_empty());
    let page = store.events_after(1, 1).await.unwrap();
    assert_eq!(page[0].conversation_id, Some(ultimate("c1").conversation_id()));
    assert_eq!(page[0].external_id, "c1");
}

/// What the ClickHouse sink reads (`log_entries_after`, `transcript_lines_of`, `first_seqs_of`) is what the
/// full reads give, narrowed: across a merge, lines with non-ASCII text, and an erasure (whose `ledger.erased`
/// event carries the one payload the sink reads).
async fn the_sinks_reads_are_the_full_reads_narrowed(store: Arc<dyn Store>) {
    let cu = ultimate("u1").conversation_id();
    let cr = room("room-1").conversation_id();
    append_one(&store, bot("u1", "hi", 0)).await;
    append_one(&store, visitor_says(cu, "Necesito ayuda, señor 👋", 5)).await;
    append_one(&store, visitor_says(cu, "a,b\\c\\n\n,\\", 6)).await;
    append_one(&store, attended("room-1", "Tomas", 20)).await;
    append_one(&store, visitor_says(cr, "hello Tomas", 21)).await;
    append_one(&store, queue_accepted(cu, "room-1", "2179", 19)).await;
    let said = append_one(&store, agent_says("Call me on 555 0100", 30)).await;
    let erased_id = said.conversation_id.unwrap();
    erase_at_50(&store, erased_id).await;
    append_one(&store, bot("u2", "later", 60)).await;
    // Separators and escapes in the text fields the sink's log read packs into lines.
    append_one(&store, bot("we,ird\\c\\n\nid, ", "odd", 61)).await;
    append_one(&store, event(Platform::Vcc, "", "no stream", 62)).await;

    let log = store.events_after(0, 100).await.unwrap();
    let entries = store.log_entries_after(0, 100).await.unwrap();
    assert_eq!(entries.len(), log.len());
    assert_eq!(
        log.iter()
            .filter(|e| e.kind == handoff_ledger::chain::ERASED_KIND)
            .count(),
        1
    );
    for (e, entry) in log.iter().zip(&entries) {
        let erasure = (e.kind == handoff_ledger::chain::ERASED_KIND).then(|| e.payload.clone());
        assert_eq!(
            (
                entry.seq,
                entry.event_id,
                entry.platform,
                &entry.external_id,
                &entry.kind,
                entry.occurred_at,
                entry.received_at,
                entry.conversation_id,
                &entry.erasure
            ),
            (
                e.seq,
                e.event_id,
                e.platform,
                &e.external_id,
                &e.kind,
                e.occurred_at,
                e.received_at,
                e.conversation_id,
                &erasure
            )
        );
    }
    let page: Vec<i64> = store
        .log_entries_after(2, 3)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, vec![3, 4, 5]);
    assert!(store.log_entries_after(log.len() as i64, 3).await.unwrap().is_empty());

    let conversations = all_conversations(&store).await;
    let ids: Vec<Uuid> = conversations.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 4);
    let lines = store.transcript_lines_of(&ids).await.unwrap();
    for id in &ids {
        let (_, messages) = store.transcript(*id).await.unwrap().unwrap();
        let expected: Vec<store::TranscriptLine> = messages
            .iter()
            .map(|m| store::TranscriptLine {
                seq: m.seq,
                at: m.at,
                party: m.party,
                kind: m.kind,
                platform: m.platform,
                text_chars: m.text.as_deref().map_or(0, |t| t.chars().count() as u32),
            })
            .collect();
        assert_eq!(lines.get(id).cloned().unwrap_or_default(), expected, "{id}");
    }
    assert_eq!(lines[&cu][0].text_chars, 23, "characters, not bytes");

    let mut asked = ids.clone();
    asked.push(cr);
    let first = store.first_seqs_of(&asked).await.unwrap();
    assert_eq!(first.len(), 4, "the absorbed room has no stream of its own: {first:?}");
    assert_eq!(first[&cu], 1);
    for c in &conversations {
        let events = store.conversation_events(c.id).await.unwrap().unwrap();
        assert!(first[&c.id] <= events[0].seq, "{}", c.id);
        assert!(log.iter().any(|e| e.seq == first[&c.id]));
    }
}

async fn list_filters_and_cursor_pagination(store: Arc<dyn Store>) {
    // a: bot only, started 0. b: escalated, started 10. c: queued 2179 + attended by Tomas, started 20.
    // d: attended by Ana on a room of its own, started 20 (same instant as c). e: vcc, started 40.
    let (ca, cb, cc) = (
        ultimate("a").conversation_id(),
        ultimate("b").conversation_id(),
        ultimate("c").conversation_id(),
    );
    let cd = room("room-d").conversation_id();
    let ce = StreamKey::new(Platform::Vcc, "1:2").conversation_id();
    append(
        &store,
        vec![
            vec![bot("a", "a", 0)],
            vec![
                bot("b", "b", 10),
                ledger::api_handoff(cb, Some("sales"), Some("h"), t(11)),
            ],
            vec![
                bot("c", "c", 20),
                queue_accepted(cc, "room-c", "2179", 21),
                attended("room-c", "Tomas", 22),
            ],
            vec![attended_from("room-d", "Ana", 88, 20)],
            vec![event(Platform::Vcc, "1:2", "e", 40)],
        ],
    )
    .await;
    let ids = |items: &[Conversation]| items.iter().map(|c| c.id).collect::<Vec<_>>();
    let list = |filter: ConversationFilter| {
        let store = store.clone();
        async move {
            let page = store
                .list_conversations(&ConversationFilter { limit: 50, ..filter })
                .await
                .unwrap();
            assert_eq!(page.next, None);
            ids(&page.items)
        }
    };
    // c and d started at the same instant: the larger id comes first.
    let (first_tie, second_tie) = if cc > cd { (cc, cd) } else { (cd, cc) };
    assert_eq!(
        list(ConversationFilter::default()).await,
        vec![ce, first_tie, second_tie, cb, ca]
    );
    let by = |f: fn(&mut ConversationFilter)| {
        let mut filter = ConversationFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(list(by(|f| f.platform = Some(Platform::Vcc))).await, vec![ce]);
    assert_eq!(
        list(by(|f| f.platform = Some(Platform::AivoLive))).await,
        vec![first_tie, second_tie]
    );
    assert_eq!(list(by(|f| f.external_id = Some("room-c".into()))).await, vec![cc]);
    // platform and external_id name one stream together.
    assert_eq!(
        list(by(|f| {
            f.platform = Some(Platform::Ultimate);
            f.external_id = Some("room-c".into());
        }))
        .await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        list(by(|f| f.state = Some(HandoffState::EscalationRequested))).await,
        vec![cb]
    );
    assert_eq!(
        list(by(|f| f.state = Some(HandoffState::Attended))).await,
        vec![first_tie, second_tie]
    );
    assert_eq!(list(by(|f| f.queue = Some("2179".into()))).await, vec![cc]);
    assert_eq!(list(by(|f| f.agent = Some("Tomas".into()))).await, vec![cc]);
    assert_eq!(list(by(|f| f.agent = Some("ana".into()))).await, vec![cd]);
    assert_eq!(list(by(|f| f.agent = Some("An%".into()))).await, Vec::<Uuid>::new());
    assert_eq!(
        list(by(|f| f.disposition = Some(Disposition::Completed))).await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        list(by(|f| f.sla_status = Some(SlaStatus::NotApplicable))).await.len(),
        3
    );
    assert_eq!(
        list(by(|f| {
            f.since = Some(t(10));
            f.until = Some(t(40));
        }))
        .await,
        vec![first_tie, second_tie, cb]
    );

    // Pages of two, continuing after the cursor, across the tie.
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_conversations(&ConversationFilter {
                limit: 2,
                after,
                ..ConversationFilter::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        seen.extend(ids(&page.items));
        match page.next {
            Some(next) => {
                let last = page.items.last().unwrap();
                assert_eq!(next, (last.started_at.timestamp_micros(), last.id));
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec![ce, first_tie, second_tie, cb, ca]);
    // A page that ends exactly at the last item says no more follow.
    let exact = store
        .list_conversations(&ConversationFilter {
            limit: 5,
            ..ConversationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!((exact.items.len(), exact.next), (5, None));
}

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

/// Everything a reader can see of the projections: every conversation with its transcript, and
/// what each conversation id ever handed out resolves to.
async fn snapshot(
    store: &Arc<dyn Store>,
    ids: &BTreeSet<Uuid>,
) -> (
    Vec<(Conversation, Vec<Message>)>,
    Vec<(Uuid, Option<Uuid>, Option<Vec<i64>>)>,
) {
    let mut conversations = Vec::new();
    for c in all_conversations(store).await {
        let (id, messages) = store.transcript(c.id).await.unwrap().unwrap();
        assert_eq!(id, c.id);
        conversations.push((c, messages));
    }
    let mut resolved = Vec::new();
    for id in ids {
        let to = store.get_conversation(*id).await.unwrap().map(|c| c.id);
        let events = store.conversation_events(*id).await.unwrap().map(|e| seqs(&e));
        resolved.push((*id, to, events));
    }
    (conversations, resolved)
}

async fn replay_rebuilds_exactly_what_appends_built(store: Arc<dyn Store>) {
    let cu1 = ultimate("u1").conversation_id();
    let cu2 = ultimate("u2").conversation_id();
    let cu3 = ultimate("u3").conversation_id();
    let batches = vec![
        vec![
            vec![bot("u1", "1", 0), visitor_says(cu1, "help", 1)],
            vec![bot("u2", "2", 2)],
        ],
        // The room of u1 is attended before its link arrives (merge later).
        vec![
            vec![attended("r1", "Tomas", 30)],
            vec![event(Platform::BrightPattern, "", "orphan", 31)],
        ],
        vec![
            vec![ledger::api_handoff(cu1, Some("sales"), Some("h1"), t(3))],
            vec![queue_accepted(cu1, "r1", "2179", 29)],
            // A duplicate in the same batch and one of an earlier batch.
            vec![bot("u2", "2", 2), queue_accepted(cu1, "r1", "2179", 29)],
        ],
        // u2 is linked before its room shows up.
        vec![
            vec![queue_accepted(cu2, "r2", "77", 40)],
            vec![attended("r2", "Ana", 45)],
        ],
        vec![
            vec![ledger::api_message(cu2, Party::Agent, "hi from Ana", None, t(46))],
            vec![bot("u3", "3", 50)],
            vec![attended("r3", "Bea", 49)],
        ],
        // r3 started before u3: the live conversation survives this merge.
        vec![vec![ledger::linked(cu3, vec![room("r3")], "correlation", t(51))]],
        vec![vec![visitor_says(cu3, "bye", 52)]],
    ];
    let mut handed_out = BTreeSet::from([cu1, cu2, cu3, Uuid::new_v4()]);
    for batch in batches {
        for outcome in append(&store, batch).await.into_iter().flatten() {
            handed_out.extend(outcome.conversation_id);
        }
    }
    handed_out.extend(["r1", "r2", "r3"].map(|r| room(r).conversation_id()));
    let before = snapshot(&store, &handed_out).await;
    assert_eq!(before.0.len(), 3, "u1+r1, u2+r2, r3+u3");
    assert_eq!(
        before.1.iter().find(|(id, _, _)| *id == cu3).and_then(|r| r.1),
        Some(room("r3").conversation_id())
    );
    let log = store.events_after(0, 1000).await.unwrap();

    let calls = Mutex::new(Vec::new());
    let stats = store
        .replay(&sla(), &|done, total| calls.lock().unwrap().push((done, total)))
        .await
        .unwrap();
    assert_eq!(stats.events, log.len() as u64);
    assert_eq!(stats.conversations, 3);
    let calls = calls.into_inner().unwrap();
    assert_eq!(calls.last(), Some(&(3, 3)));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));

    let after = snapshot(&store, &handed_out).await;
    assert_eq!(after, before);
    assert_eq!(store.events_after(0, 1000).await.unwrap(), log);
    // Replaying twice changes nothing either, and appends carry on from the same state.
    store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert_eq!(snapshot(&store, &handed_out).await, before);
    let next = append_one(&store, event(Platform::AivoLive, "r1", "after-replay", 60)).await;
    assert_eq!((next.seq, next.conversation_id), (log.len() as i64 + 1, Some(cu1)));
}

async fn replay_repairs_projections_from_the_log_alone(store: Arc<dyn Store>, db: &TestDb) {
    let cu = ultimate("u1").conversation_id();
    let cr = room("room-1").conversation_id();
    append(
        &store,
        vec![
            vec![bot("u1", "hi", 0), visitor_says(cu, "help", 1)],
            vec![attended("room-1", "Tomas", 20)],
        ],
    )
    .await;
    append(&store, vec![vec![queue_accepted(cu, "room-1", "2179", 19)]]).await;
    let ids = BTreeSet::from([cu, cr]);
    let before = snapshot(&store, &ids).await;
    assert_eq!(before.0.len(), 1);

    // Wreck every projection table behind the store's back; only the log is left intact.
    for sql in [
        "DELETE FROM aliases",
        "UPDATE streams SET conversation_id = 'bogus'",
        "UPDATE conversations SET doc = '{}', fold = 'not json'",
        "UPDATE messages SET party = 'nobody'",
    ] {
        db.raw.execute(sql).await.unwrap();
    }
    assert_eq!(store.get_conversation(cr).await.unwrap(), None, "the alias is gone");
    assert!(
        store.get_conversation(cu).await.is_err(),
        "the stored document is garbage"
    );
    assert_eq!(
        store.conversation_events(cu).await.unwrap(),
        None,
        "no stream points at it"
    );

    let stats = store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert_eq!(stats.events, 4);
    assert_eq!(stats.conversations, 1);
    assert_eq!(snapshot(&store, &ids).await, before);
}

async fn event_lines_are_the_lines_one_event_made(store: Arc<dyn Store>) {
    let cu = ultimate("u1").conversation_id();
    let outcomes = append(
        &store,
        vec![vec![
            bot("u1", "hi", 0),
            visitor_says(cu, "first", 1),
            visitor_says(cu, "second", 2),
        ]],
    )
    .await;
    let second = &outcomes[0][2];
    let lines = store.event_lines(cu, second.seq).await.unwrap();
    let texts: Vec<_> = lines.iter().map(|m| m.text.as_deref()).collect();
    assert_eq!(texts, vec![Some("second")]);
    assert_eq!(lines[0].event_id, second.event_id);
    // An event that made no line (the bot's unknown kind) has none.
    assert!(store.event_lines(cu, outcomes[0][0].seq).await.unwrap().is_empty());
}

/// A database projected by an earlier version keeps no fold state (`fold = ''`) and no line rows:
/// `rebuild_stale` rebuilds exactly those conversations, and appends carry on from them.
async fn projections_of_an_earlier_version_are_rebuilt(store: Arc<dyn Store>, db: &TestDb) {
    let cu = ultimate("u1").conversation_id();
    append(
        &store,
        vec![
            vec![bot("u1", "hi", 0), visitor_says(cu, "help", 1)],
            vec![queue_accepted(cu, "room-1", "2179", 19)],
            vec![attended("room-1", "Tomas", 20)],
        ],
    )
    .await;
    let ids = BTreeSet::from([cu]);
    let before = snapshot(&store, &ids).await;
    assert_eq!(before.0[0].1.len(), 1, "one transcript line");
    assert_eq!(store.rebuild_stale(&sla()).await.unwrap(), 0, "nothing stale");
    // The store-computed report (its wait percentiles read the rows' wait keys) is rebuilt too.
    let report_query = handoff_ledger::analytics::reports::ReportQuery {
        since: t(-3600),
        until: t(3600),
        interval: handoff_ledger::analytics::reports::Interval::Hour,
        group_by: vec![],
    };
    let report_sla = sla();
    let report = || handoff_ledger::analytics::reports::sla_report_store(store.as_ref(), &report_sla, &report_query);
    let report_before = report().await.unwrap();
    assert!(
        report_before.iter().any(|r| r.wait_p50_seconds.is_some()),
        "{report_before:?}"
    );
    for sql in [
        "UPDATE conversations SET fold = ''",
        "DELETE FROM messages",
        "DELETE FROM handoffs",
        "DELETE FROM conversation_agents",
    ] {
        db.raw.execute(sql).await.unwrap();
    }
    assert_eq!(store.transcript(cu).await.unwrap().unwrap().1, vec![]);
    assert_eq!(report().await.unwrap(), vec![]);
    assert_eq!(store.rebuild_stale(&sla()).await.unwrap(), 1);
    assert_eq!(snapshot(&store, &ids).await, before);
    assert_eq!(report().await.unwrap(), report_before);
    let by_agent = store
        .list_conversations(&ConversationFilter {
            agent: Some("tomas".into()),
            limit: 10,
            ..ConversationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_agent.items.len(), 1);
    append(&store, vec![vec![visitor_says(cu, "thanks", 30)]]).await;
    assert_eq!(store.transcript(cu).await.unwrap().unwrap().1.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// SQLite specifics
// ---------------------------------------------------------------------------------------------

/// The writer does not checkpoint in its commits; a task beside it copies the write-ahead log back into
/// the database file while the store is open (far fewer pages than SQLite's own threshold of 1,000).
#[tokio::test]
async fn sqlite_checkpoints_the_log_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.db");
    let store = SqliteStore::connect_writer(&format!("sqlite://{}", file.display()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let before = size();
    for batch in 0..20 {
        let events: Vec<Vec<NewEvent>> = (0..10)
            .map(|i| vec![bot(&format!("c{batch}-{i}"), &format!("k{batch}-{i}"), batch * 10 + i)])
            .collect();
        store.append_batch(&events, &sla()).await.unwrap();
    }
    let (mut grown, mut ticks) = (false, 0);
    for tick in 0..100 {
        // One more write wakes the checkpointer for what the previous ones committed.
        if size() > before {
            grown = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        store
            .append_batch(&[vec![bot("tick", &format!("tick{tick}"), 0)]], &sla())
            .await
            .unwrap();
        ticks += 1;
    }
    assert!(
        grown,
        "the database file still has {before} bytes: nothing was checkpointed"
    );
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(events, 200 + ticks, "every append is readable");
}

#[tokio::test]
async fn sqlite_relative_url_creates_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = format!(
        "{up}{}",
        dir.path()
            .join("data/ledger.db")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    let store = SqliteStore::connect(&format!("sqlite://{relative}"), 2).await.unwrap();
    store.migrate().await.unwrap();
    assert!(dir.path().join("data/ledger.db").exists());
    let out = store.append_batch(&[vec![bot("c1", "a", 0)]], &sla()).await.unwrap();
    assert_eq!(out[0][0].seq, 1);
    // WAL with synchronous FULL: acknowledged appends survive a crash.
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
    // Reopening finds the data.
    drop(store);
    let reopened = store::open(&format!("sqlite://{}", dir.path().join("data/ledger.db").display()), 1)
        .await
        .unwrap();
    reopened.migrate().await.unwrap();
    assert_eq!(reopened.last_seq().await.unwrap(), 1);
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = store::open("mysql://localhost/x", 1).await.err().unwrap();
    assert!(err.to_string().contains("unsupported store url"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Incremental projection == replay, on random logs
// ---------------------------------------------------------------------------------------------

mod random_logs {
    use super::*;
    use handoff_ledger::projection;
    use handoff_ledger::sources::ledger::CommandRecord;
    use handoff_ledger::sources::{self, Delivery};
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// Parses a webhook body with the platform's real parser, as if it arrived at `received`.
    fn parsed(platform: Platform, body: Value, path_id: Option<&str>, received: DateTime<Utc>) -> Vec<NewEvent> {
        let raw = body.to_string();
        let d = Delivery {
            received_at: received,
            headers: BTreeMap::new(),
            idempotency_key: None,
            path_id,
        };
        let result = match platform {
            Platform::Ultimate => sources::ultimate::parse(&raw, &body, &d),
            Platform::AivoLive => sources::aivo_live::parse(&raw, &body, &d),
            Platform::Vcc => sources::vcc::parse(&raw, &body, &d),
            Platform::BrightPattern => sources::bright_pattern::parse(&raw, &body, &d),
            Platform::Api | Platform::Ledger => unreachable!("built with sources::ledger"),
        };
        result.unwrap().events
    }

    fn ns(secs: i64) -> i64 {
        (1_706_000_000 + secs) * 1_000_000_000
    }

    fn aivo(name: &str, room: &str, secs: i64, data: Value) -> Vec<NewEvent> {
        let body = json!({"name": name, "roomId": room, "timestamp": ns(secs), "botId": 1000,
            "eventTime": 1_706_000_000 + secs, "data": data});
        parsed(Platform::AivoLive, body, None, t(secs + 1))
    }

    fn bot_says(pcid: &str, data: Value, secs: i64) -> Vec<NewEvent> {
        let mut data = data;
        data["platformConversationId"] = json!(pcid);
        parsed(Platform::Ultimate, json!({"botId": "B", "data": data}), None, t(secs))
    }

    /// One random conversation: the deliveries that make it, each stamped with when it is "sent".
    fn conversation(rng: &mut StdRng, n: usize, deliveries: &mut Vec<(i64, Vec<NewEvent>)>) {
        let base = (n as i64) * 1_000 + rng.gen_range(0..50);
        let agents = ["Tomas", "Ana", "bea"];
        let pcid = format!("u{n}");
        let cid = ultimate(&pcid).conversation_id();
        let mut at = base;
        let mut step = |rng: &mut StdRng| {
            at += rng.gen_range(1..20);
            at
        };
        let flavour = rng.gen_range(0..4);
        // The bot part, for every flavour but a live room on its own.
        if flavour != 3 {
            for k in 0..rng.gen_range(1..4) {
                let s = step(rng);
                let data = json!({"eventType": "sendMessage", "type": "text", "text": format!("bot {k}"),
                    "messageId": format!("{pcid}-m{k}")});
                deliveries.push((s, bot_says(&pcid, data, s)));
                let s = step(rng);
                deliveries.push((s, vec![visitor_says(cid, &format!("visitor {k}"), s)]));
            }
            let s = step(rng);
            deliveries.push((
                s,
                bot_says(&pcid, json!({"eventType": "escalate", "escalateTo": "sales"}), s),
            ));
        }
        match flavour {
            // Aivo Live: queued, attended (maybe transferred and attended again), messages, closed.
            0 | 3 => {
                let room_id = format!("r{n}");
                if flavour == 0 {
                    let s = step(rng);
                    deliveries.push((s, vec![queue_accepted(cid, &room_id, "2179", s)]));
                }
                let s = step(rng);
                let agent = agents[rng.gen_range(0..3)];
                deliveries.push((
                    s,
                    aivo(
                        "attended",
                        &room_id,
                        s,
                        json!({"agent": {"name": agent, "groupId": 2179}}),
                    ),
                ));
                for k in 0..rng.gen_range(0..4) {
                    let s = step(rng);
                    deliveries.push((
                        s,
                        aivo(
                            "messageToClient",
                            &room_id,
                            s,
                            json!({"action": "text", "value": format!("agent {k}"),
                            "agent": {"name": agent}}),
                        ),
                    ));
                    if flavour == 0 {
                        let s = step(rng);
                        let record = CommandRecord {
                            command_id: format!("{room_id}-c{k}"),
                            action: "visitor_message".into(),
                            outcome: None,
                            detail: None,
                            body: None,
                            retry_of: None,
                        };
                        deliveries.push((s, vec![ledger::command(cid, ledger::COMMAND, &record, t(s))]));
                    }
                }
                if rng.gen_bool(0.5) {
                    let s = step(rng);
                    deliveries.push((s, aivo("transfer", &room_id, s, json!({"target": 5, "agent": {}}))));
                    let s = step(rng);
                    let agent = agents[rng.gen_range(0..3)];
                    deliveries.push((
                        s,
                        aivo("attended", &room_id, s, json!({"agent": {"name": agent, "groupId": 5}})),
                    ));
                }
                if rng.gen_bool(0.8) {
                    let s = step(rng);
                    deliveries.push((
                        s,
                        aivo("close", &room_id, s, json!({"reason": "agent closed", "agent": {}})),
                    ));
                }
            }
            // Bright Pattern: linked, queued (no time), joined, lines by party id, echoes of relayed
            // visitor lines, ended.
            1 => {
                let chat = format!("chat{n}");
                let s = step(rng);
                let link = ledger::linked(
                    cid,
                    vec![StreamKey::new(Platform::BrightPattern, &chat)],
                    "requested",
                    t(s),
                );
                deliveries.push((s, vec![link]));
                let mut events = vec![json!({"event": "chat_session_status", "state": "queued"})];
                let party = format!("p{n}");
                let s = step(rng);
                // The join is sometimes stamped after the agent's first line (skew between BP's own events).
                let joined_at = if rng.gen_bool(0.4) {
                    s + rng.gen_range(5..300)
                } else {
                    s
                };
                events.push(
                    json!({"event": "chat_session_party_joined", "party_id": party, "type": "external",
                    "display_name": agents[rng.gen_range(0..3)],
                    "timestamp": ((1_706_000_000 + joined_at) * 1000).to_string()}),
                );
                for k in 0..rng.gen_range(1..4) {
                    let s = step(rng);
                    events.push(
                        json!({"event": "chat_session_message", "party_id": party, "msg_id": format!("{chat}-a{k}"),
                        "msg": format!("agent {k}"), "timestamp": ((1_706_000_000 + s) * 1000).to_string()}),
                    );
                    let relayed_at = step(rng);
                    let echoed_at = step(rng);
                    // The relay is sometimes recorded after its echo came back.
                    let relayed_at = if rng.gen_bool(0.3) { echoed_at + 5 } else { relayed_at };
                    let command_id = format!("{chat}-v{k}");
                    let record = CommandRecord {
                        command_id: command_id.clone(),
                        action: "visitor_message".into(),
                        outcome: None,
                        detail: None,
                        body: None,
                        retry_of: None,
                    };
                    let relay = ledger::command(cid, ledger::COMMAND, &record, t(relayed_at));
                    deliveries.push((relayed_at, vec![relay]));
                    events.push(json!({"event": "chat_session_message", "msg_id": command_id,
                        "msg": format!("visitor {k}"), "timestamp": ((1_706_000_000 + echoed_at) * 1000).to_string()}));
                }
                let s = step(rng);
                events.push(
                    json!({"event": "chat_session_ended", "timestamp": ((1_706_000_000 + s) * 1000).to_string()}),
                );
                if rng.gen_bool(0.3) {
                    events.shuffle(rng);
                }
                if rng.gen_bool(0.5) {
                    // Delivered one by one as they happen.
                    let mut sent = s;
                    for e in &events {
                        let stamp = e
                            .get("timestamp")
                            .and_then(Value::as_str)
                            .and_then(|t| t.parse::<i64>().ok());
                        sent = stamp.map_or(sent, |ms| ms / 1000 - 1_706_000_000);
                        let body = json!({"events": [e]});
                        deliveries.push((sent, parsed(Platform::BrightPattern, body, Some(&chat), t(sent))));
                    }
                    return;
                }
                // Delivered as one poll answer or a few, minutes apart.
                let cut = rng.gen_range(1..=events.len());
                let (first, second) = events.split_at(cut);
                for (i, part) in [first, second].into_iter().enumerate() {
                    if !part.is_empty() {
                        let body = json!({"events": part});
                        let sent = s + 100 * i as i64;
                        deliveries.push((sent, parsed(Platform::BrightPattern, body, Some(&chat), t(sent))));
                    }
                }
            }
            // VCC: the whole chat in one body at its end.
            _ => {
                let mut lines = Vec::new();
                for k in 0..rng.gen_range(1..5) {
                    let s = step(rng);
                    let date = t(s).to_rfc3339();
                    lines.push(json!({"from": "Visitor", "date": date, "message": format!("v{k}")}));
                    let s = step(rng);
                    lines.push(json!({"from": agents[k % 3], "date": t(s).to_rfc3339(), "message": format!("a{k}")}));
                }
                let s = step(rng);
                let body = json!({"chatId": n, "projectId": 130, "firstAgentName": agents[0], "lastAgentName": agents[0],
                    "firstQueueName": "Chat", "lastQueueName": "Chat", "disposition": "completed",
                    "conversation": lines, "slaStatus": "answeredBeforeSLA"});
                deliveries.push((s, parsed(Platform::Vcc, body, None, t(s))));
            }
        }
    }

    /// A random log: several conversations whose deliveries arrive interleaved, some late, some
    /// twice, in batches of random size.
    fn random_batches(seed: u64) -> Vec<Vec<Vec<NewEvent>>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut deliveries = Vec::new();
        for n in 0..rng.gen_range(3..7) {
            conversation(&mut rng, seed as usize * 100 + n, &mut deliveries);
        }
        // Arrival order: by time, with jitter; a few arrive much later than they were sent.
        let mut arrivals: Vec<(i64, Vec<NewEvent>)> = deliveries
            .into_iter()
            .map(|(at, events)| {
                let delay = if rng.gen_bool(0.15) {
                    rng.gen_range(0..400)
                } else {
                    rng.gen_range(0..15)
                };
                (at + delay, events)
            })
            .collect();
        arrivals.sort_by_key(|(at, _)| *at);
        if rng.gen_bool(0.3) {
            arrivals.shuffle(&mut rng);
        }
        let mut groups: Vec<Vec<NewEvent>> = arrivals.into_iter().map(|(_, e)| e).collect();
        // Redeliveries of what was sent before.
        for _ in 0..rng.gen_range(0..4) {
            let at = rng.gen_range(0..groups.len());
            let again = groups[rng.gen_range(0..=at)].clone();
            groups.insert(at, again);
        }
        let mut batches = Vec::new();
        let mut rest = groups.into_iter().peekable();
        while rest.peek().is_some() {
            let size = rng.gen_range(1..6);
            batches.push(rest.by_ref().take(size).collect());
        }
        batches
    }

    /// Every conversation with its transcript, read back whole and through pages of 2 lines.
    async fn projections(store: &Arc<dyn Store>) -> Vec<(Conversation, Vec<Message>)> {
        let mut out = Vec::new();
        for c in all_conversations(store).await {
            let (id, messages) = store.transcript(c.id).await.unwrap().unwrap();
            assert_eq!(id, c.id);
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let page = store.transcript_page(c.id, after, Some(2)).await.unwrap().unwrap();
                paged.extend(page.messages);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(paged, messages, "paging gives the same lines");
            out.push((c, messages));
        }
        out
    }

    pub(super) async fn incremental_projection_equals_replay_on_random_logs(store: Arc<dyn Store>) {
        let mut after_seq = 0;
        for seed in 0..12u64 {
            let batches = random_batches(seed);
            for batch in batches {
                store.append_batch(&batch, &sla()).await.unwrap();
                // Every conversation as kept equals the fold of its events, after every batch.
                for (c, messages) in projections(&store).await {
                    let events = store.conversation_events(c.id).await.unwrap().unwrap();
                    let folded = projection::project(c.id, &c.streams, &events, &sla()).unwrap();
                    assert_eq!(c, folded.conversation, "seed {seed}: {} differs from its fold", c.id);
                    assert_eq!(messages, folded.messages, "seed {seed}: transcript of {} differs", c.id);
                }
            }
            let incremental = projections(&store).await;
            let log = store.events_after(after_seq, 100_000).await.unwrap();
            assert!(!log.is_empty());
            after_seq = store.last_seq().await.unwrap();
            let stats = store.replay(&sla(), &|_, _| {}).await.unwrap();
            // The online replay re-files the log in memory: the stored filing must be exactly that, and
            // every stored row exactly what a full rebuild writes (else it rewrites them).
            assert!(
                stats.online,
                "seed {seed}: the stored streams and aliases are the log's filing"
            );
            assert_eq!(
                stats.rewritten, 0,
                "seed {seed}: incremental rows equal a full rebuild's"
            );
            let replayed = projections(&store).await;
            assert_eq!(incremental, replayed, "seed {seed}: the online replay changed nothing");
            store.replay_offline(&sla(), &|_, _| {}).await.unwrap();
            let replayed = projections(&store).await;
            assert_eq!(incremental.len(), replayed.len(), "seed {seed}");
            for ((a, ma), (b, mb)) in incremental.iter().zip(&replayed) {
                assert_eq!(a, b, "seed {seed}: conversation {} differs from its replay", a.id);
                assert_eq!(ma, mb, "seed {seed}: transcript of {} differs from its replay", a.id);
            }
        }
    }
}

use random_logs::incremental_projection_equals_replay_on_random_logs;

// ---------------------------------------------------------------------------------------------
// Content-checked idempotency
// ---------------------------------------------------------------------------------------------

/// A delivery parsed by its platform's parser, as if it arrived at `t(secs)`.
fn delivered(platform: Platform, body: Value, path_id: Option<&str>, secs: i64) -> Vec<NewEvent> {
    use handoff_ledger::sources::{self, Delivery};
    let raw = body.to_string();
    let d = Delivery {
        received_at: t(secs),
        path_id,
        ..Delivery::default()
    };
    let parsed = match platform {
        Platform::AivoLive => sources::aivo_live::parse(&raw, &body, &d),
        Platform::BrightPattern => sources::bright_pattern::parse(&raw, &body, &d),
        other => panic!("no parser here for {other}"),
    };
    parsed.unwrap_or_else(|e| panic!("{e}")).events
}

/// An Aivo agent message said at `t(1)` (its key: name, room and timestamp).
fn agent_says(text: &str, secs: i64) -> NewEvent {
    let body = json!({"name": "messageToClient", "roomId": "room-c", "timestamp": t(1).timestamp_nanos_opt(),
        "data": {"action": "text", "value": text, "source": "agent", "agent": {"name": "Tomas"}}});
    delivered(Platform::AivoLive, body, None, secs).remove(0)
}

async fn lines_of(store: &Arc<dyn Store>, id: Uuid) -> Vec<String> {
    let (_, lines) = store.transcript(id).await.unwrap().unwrap();
    lines.into_iter().map(|m| m.text.unwrap_or_default()).collect()
}

async fn same_key_same_body_is_a_duplicate_another_body_a_newer_version(store: Arc<dyn Store>) {
    let first = append_one(&store, agent_says("Your balance is 10", 2)).await;
    assert!(!first.duplicate && !first.conflict);
    let id = first.conversation_id.unwrap();
    // The same body again: a redelivery, nothing appended.
    let again = append_one(&store, agent_says("Your balance is 10", 3)).await;
    assert_eq!((again.duplicate, again.conflict, again.seq), (true, false, first.seq));
    assert_eq!(store.last_seq().await.unwrap(), first.seq);
    // The same key with another body: the platform corrected its record. Appended, marked, never dropped.
    let corrected = append_one(&store, agent_says("Your balance is 100", 4)).await;
    assert!(!corrected.duplicate && corrected.conflict, "{corrected:?}");
    assert_eq!(corrected.seq, first.seq + 1);
    assert_ne!(corrected.event_id, first.event_id);
    assert_eq!(corrected.conversation_id, Some(id));
    let events = store.conversation_events(id).await.unwrap().unwrap();
    assert_eq!(events.len(), 2, "both versions stay in the log");
    assert_eq!(events[0].revision_of, None);
    assert_eq!(events[1].revision_of, Some(first.event_id));
    assert_eq!(events[1].payload["data"]["value"], json!("Your balance is 100"));
    // The projection takes the newer version: one line, the latest content.
    assert_eq!(lines_of(&store, id).await, ["Your balance is 100"]);
    let c = store.get_conversation(id).await.unwrap().unwrap();
    assert_eq!(c.message_counts.agent, 1);
    // Either version sent again is a redelivery of that version; a third body is a third version.
    for (text, seq) in [
        ("Your balance is 100", corrected.seq),
        ("Your balance is 10", first.seq),
    ] {
        let o = append_one(&store, agent_says(text, 5)).await;
        assert_eq!((o.duplicate, o.conflict, o.seq), (true, false, seq), "{text}");
    }
    let third = append_one(&store, agent_says("Your balance is 1000", 6)).await;
    assert!(third.conflict);
    assert_eq!(lines_of(&store, id).await, ["Your balance is 1000"]);
    let events = store.conversation_events(id).await.unwrap().unwrap();
    assert_eq!(
        events[2].revision_of,
        Some(first.event_id),
        "every version names the first"
    );
    // Replay gives what the appends gave.
    let before = store.get_conversation(id).await.unwrap();
    store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert_eq!(store.get_conversation(id).await.unwrap(), before);
    assert_eq!(lines_of(&store, id).await, ["Your balance is 1000"]);
}

/// Erases the conversation `id` at t(50), which must exist.
async fn erase_at_50(store: &Arc<dyn Store>, id: Uuid) -> handoff_ledger::erasure::ErasureCertificate {
    store
        .erase(
            &handoff_ledger::erasure::ErasureTarget::Conversation(id),
            Uuid::new_v4(),
            t(50),
            &sla(),
        )
        .await
        .unwrap()
        .expect("erased")
}

async fn a_redelivery_of_an_erased_event_is_checked_against_its_digest(store: Arc<dyn Store>) {
    let first = append_one(&store, agent_says("Call me on 555 0100", 2)).await;
    let id = first.conversation_id.unwrap();
    let certificate = erase_at_50(&store, id).await;
    assert!(certificate.events.iter().any(|e| e.seq == first.seq));
    // The stored payload is a stub now; the redelivery is compared with the original's digest.
    let again = append_one(&store, agent_says("Call me on 555 0100", 60)).await;
    assert_eq!((again.duplicate, again.conflict, again.seq), (true, false, first.seq));
    let other = append_one(&store, agent_says("Call me tomorrow", 61)).await;
    assert!(!other.duplicate && other.conflict, "{other:?}");
}

async fn a_status_without_id_or_time_seen_again_after_other_events_is_new(store: Arc<dyn Store>) {
    let chat = Some("chat-q");
    let queued = || json!({"events": [{"event": "chat_session_status", "state": "queued"}]});
    let said = |msg_id: &str| {
        json!({"events": [{"event": "chat_session_message", "msg_id": msg_id, "party_id": "p1", "msg": "one moment",
            "timestamp": t(20).timestamp_millis()}]})
    };
    let deliver = |body: Value, secs: i64| delivered(Platform::BrightPattern, body, chat, secs);
    let first = append(&store, vec![deliver(queued(), 10)]).await.remove(0).remove(0);
    assert!(!first.duplicate);
    // The same poll answer offered again (its append was not acknowledged): a redelivery.
    let retry = append(&store, vec![deliver(queued(), 11)]).await.remove(0).remove(0);
    assert_eq!((retry.duplicate, retry.seq), (true, first.seq));
    // Other events of the chat, then `queued` again (after a transfer): a new event.
    append(&store, vec![deliver(said("m1"), 30)]).await;
    let requeued = append(&store, vec![deliver(queued(), 40)]).await.remove(0).remove(0);
    assert!(!requeued.duplicate && !requeued.conflict, "{requeued:?}");
    assert_ne!(requeued.event_id, first.event_id);
    let retry = append(&store, vec![deliver(queued(), 41)]).await.remove(0).remove(0);
    assert_eq!((retry.duplicate, retry.seq), (true, requeued.seq));
    // Within one answer: the status, a message, the status again.
    let answer = json!({"events": [
        {"event": "chat_session_status", "state": "queued"},
        {"event": "chat_session_message", "msg_id": "m2", "party_id": "p1", "msg": "transferring you",
            "timestamp": t(45).timestamp_millis()},
        {"event": "chat_session_status", "state": "queued"}
    ]});
    let outcomes = append(&store, vec![deliver(answer.clone(), 50)]).await.remove(0);
    let dupes: Vec<bool> = outcomes.iter().map(|o| o.duplicate).collect();
    assert_eq!(dupes, [true, false, false], "{outcomes:?}");
    // That whole answer again: nothing new.
    let outcomes = append(&store, vec![deliver(answer, 51)]).await.remove(0);
    assert!(outcomes.iter().all(|o| o.duplicate), "{outcomes:?}");
    assert_eq!(store.last_seq().await.unwrap(), 5);
}

// ---------------------------------------------------------------------------------------------
// Transactional relays
// ---------------------------------------------------------------------------------------------

/// Relay rules for the test: an agent's attend calls for one command naming the agent and the state the
/// batch left the conversation in.
struct AttendRelays;

impl store::RelayPlanner for AttendRelays {
    fn relays(&self, kind: &str) -> bool {
        kind == "aivo_live.attended"
    }

    fn plan(
        &self,
        event: &handoff_ledger::model::StoredEvent,
        conversation: &Conversation,
        lines: &[Message],
        queued: Option<&handoff_ledger::model::StoredEvent>,
        _attends: &[handoff_ledger::model::StoredEvent],
    ) -> Vec<NewEvent> {
        let detail = format!(
            "{} {:?} lines={} queued={}",
            event.payload["data"]["agent"]["name"].as_str().unwrap_or(""),
            conversation.state,
            lines.len(),
            queued.is_some()
        );
        vec![test_command(
            conversation,
            event,
            format!("success:{}", event.event_id),
            "widget_escalation_success",
            detail,
        )]
    }
}

/// The `ledger.command` event a test planner records for `event`: what it saw, in `detail`.
fn test_command(
    conversation: &Conversation,
    event: &handoff_ledger::model::StoredEvent,
    command_id: String,
    action: &str,
    detail: String,
) -> NewEvent {
    let record = ledger::CommandRecord {
        command_id,
        action: action.into(),
        outcome: None,
        detail: Some(detail),
        body: None,
        retry_of: None,
    };
    ledger::command(conversation.id, ledger::COMMAND, &record, event.received_at)
}

async fn commands_an_event_calls_for_commit_with_it(store: Arc<dyn Store>) {
    let cu = ultimate("u-relay").conversation_id();
    append_one(&store, bot("u-relay", "hi", 0)).await;
    append_one(&store, queue_accepted(cu, "room-relay", "2179", 5)).await;
    let planned = |events: Vec<NewEvent>| {
        let store = store.clone();
        async move {
            store
                .append_batch_planned(&[events], &sla(), &AttendRelays)
                .await
                .unwrap()
                .remove(0)
        }
    };
    // A batch of an event the rules ignore and an attend: the attend's command is appended in the same
    // transaction, after the batch, and the outcome names it.
    let out = planned(vec![
        bot("u-relay", "still there?", 8),
        attended("room-relay", "Tomas", 10),
    ])
    .await;
    assert!(out[0].relays.is_empty());
    assert_eq!(out[1].relays, vec![out[1].seq + 1], "{out:?}");
    let events = store.conversation_events(cu).await.unwrap().unwrap();
    let command = events.iter().find(|e| e.seq == out[1].seq + 1).expect("the command");
    assert_eq!(command.kind, ledger::COMMAND);
    assert_eq!(
        command.payload["detail"],
        json!("Tomas Attended lines=0 queued=true"),
        "planned on the state the batch left"
    );
    assert_eq!(store.last_seq().await.unwrap(), out[1].seq + 1, "seq stays gap-free");
    // The platform delivers the attend again: a duplicate calls for nothing, nothing is appended.
    let again = planned(vec![attended("room-relay", "Tomas", 10)]).await;
    assert!(again[0].duplicate && again[0].relays.is_empty(), "{again:?}");
    assert_eq!(store.last_seq().await.unwrap(), out[1].seq + 1);
    // Replay rebuilds what the appends built (the commands are events of the log like any other).
    let before = store.get_conversation(cu).await.unwrap();
    store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert_eq!(store.get_conversation(cu).await.unwrap(), before);
}

/// Relay rules for the test: an accepted queue call asks for its conversation's attends and records the
/// agents they name, newest first, with the state the batch left the conversation in.
struct LinkRelays;

impl store::RelayPlanner for LinkRelays {
    fn relays(&self, kind: &str) -> bool {
        kind == "ledger.queue_accepted" || kind == "aivo_live.attended"
    }

    fn reads_attends(&self, event: &handoff_ledger::model::StoredEvent, _conversation: &Conversation) -> bool {
        event.kind == "ledger.queue_accepted"
    }

    fn plan(
        &self,
        event: &handoff_ledger::model::StoredEvent,
        conversation: &Conversation,
        _lines: &[Message],
        _queued: Option<&handoff_ledger::model::StoredEvent>,
        attends: &[handoff_ledger::model::StoredEvent],
    ) -> Vec<NewEvent> {
        let agents: Vec<&str> = attends
            .iter()
            .map(|a| a.payload["data"]["agent"]["name"].as_str().unwrap_or("?"))
            .collect();
        let detail = format!("{} {:?} attends={}", event.kind, conversation.state, agents.join(","));
        vec![test_command(
            conversation,
            event,
            format!("planned:{}", event.event_id),
            "test",
            detail,
        )]
    }
}

/// The attends the planner asks for are the conversation's own (those of the live chat a link merged in
/// included), newest first, read in the append's transaction; a planner that does not ask gets none.
async fn the_planner_is_handed_the_attends_it_asks_for(store: Arc<dyn Store>) {
    let cu = ultimate("u-attends").conversation_id();
    append_one(&store, bot("u-attends", "hi", 0)).await;
    // Agents attend the room before the queue call returned: the room is a conversation of its own.
    append_one(&store, attended("room-attends", "Tomas", 5)).await;
    append_one(&store, attended("room-attends", "Ana", 6)).await;
    // Another chat's attend is not this conversation's.
    append_one(&store, attended("room-elsewhere", "Zoe", 7)).await;
    let planned = |events: Vec<NewEvent>| {
        let store = store.clone();
        async move {
            store
                .append_batch_planned(&[events], &sla(), &LinkRelays)
                .await
                .unwrap()
                .remove(0)
        }
    };
    let link = planned(vec![queue_accepted(cu, "room-attends", "2179", 8)]).await;
    let merged = link[0].conversation_id.expect("filed");
    assert_eq!(link[0].relays, vec![link[0].seq + 1], "{link:?}");
    let events = store.conversation_events(merged).await.unwrap().unwrap();
    let command = events.iter().find(|e| e.seq == link[0].seq + 1).expect("the command");
    assert_eq!(command.kind, ledger::COMMAND);
    assert_eq!(
        command.payload["detail"],
        json!("ledger.queue_accepted Attended attends=Ana,Tomas"),
        "the merged conversation's attends, newest first"
    );
    // An event of a kind that does not ask is handed none.
    let attend = planned(vec![attended("room-attends", "Lu", 9)]).await;
    let events = store.conversation_events(merged).await.unwrap().unwrap();
    let command = events.iter().find(|e| e.seq == attend[0].seq + 1).expect("the command");
    assert_eq!(command.payload["detail"], json!("aivo_live.attended Attended attends="));
    // The link delivered again: nothing planned, nothing appended.
    let last = store.last_seq().await.unwrap();
    let again = planned(vec![queue_accepted(cu, "room-attends", "2179", 8)]).await;
    assert!(again[0].duplicate && again[0].relays.is_empty(), "{again:?}");
    assert_eq!(store.last_seq().await.unwrap(), last);
}

// ---------------------------------------------------------------------------------------------
// Online replay
// ---------------------------------------------------------------------------------------------

impl Raw {
    /// Every row of `table`, each as one text (its columns cast to text, NULL as `~`), sorted: two
    /// states of a table compare equal when they hold the same rows.
    async fn dump(&self, table: &str) -> Vec<String> {
        let columns_sql = match self {
            Raw::Sqlite(_) => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            Raw::Postgres(_) => format!(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
            ),
        };
        let columns: Vec<String> = self.texts(&columns_sql).await;
        assert!(!columns.is_empty(), "{table} has columns");
        let row = columns
            .iter()
            .map(|c| format!("COALESCE(CAST({c} AS TEXT), '~')"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let mut rows = self.texts(&format!("SELECT {row} FROM {table}")).await;
        rows.sort();
        rows
    }

    async fn texts(&self, sql: &str) -> Vec<String> {
        match self {
            Raw::Sqlite(url) => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
                rows.into_iter().map(|(t,)| t).collect()
            }
            Raw::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
                rows.into_iter().map(|(t,)| t).collect()
            }
        }
    }
}

/// Every projection table, as [`Raw::dump`] reads it.
async fn projection_dump(db: &TestDb) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for table in [
        "conversations",
        "messages",
        "handoffs",
        "conversation_agents",
        "streams",
        "aliases",
    ] {
        out.push((table, db.raw.dump(table).await));
    }
    out
}

/// Conversation `i` of the online replay test: a bot conversation handed to live room `r{i}`; every
/// fifth room is attended before its link arrives (a merge); `round` adds later events to it.
fn replay_conversation(i: usize, round: i64) -> Vec<NewEvent> {
    let pcid = format!("u{i}");
    let cu = ultimate(&pcid).conversation_id();
    let live = format!("r{i}");
    let base = i64::try_from(i).unwrap() * 10 + round * 100_000;
    if round > 0 {
        return vec![
            visitor_says(cu, &format!("still there? {i}/{round}"), base),
            attended(&live, "Bea", base + 1),
        ];
    }
    let mut events = vec![
        bot(&pcid, &format!("{pcid}:hello"), base),
        visitor_says(cu, &format!("help {i}"), base + 1),
    ];
    if i.is_multiple_of(5) {
        events.insert(0, attended(&live, "Tomas", base - 1));
    }
    events.push(queue_accepted(cu, &live, "2179", base + 2));
    if !i.is_multiple_of(5) {
        events.push(attended(&live, "Ana", base + 3));
    }
    events
}

/// `replay` runs beside the writer: batches appended while it rebuilds (new conversations, later
/// events of conversations it is rebuilding, merges) leave exactly what an offline replay leaves, and
/// it rewrites only what differed from a full rebuild (here: rows wrecked behind the store's back).
async fn replay_beside_appends_leaves_what_an_offline_replay_leaves(store: Arc<dyn Store>, db: &TestDb) {
    const CONVERSATIONS: usize = 1_200;
    for chunk in (0..CONVERSATIONS).collect::<Vec<_>>().chunks(100) {
        let groups: Vec<Vec<NewEvent>> = chunk.iter().map(|i| replay_conversation(*i, 0)).collect();
        append(&store, groups).await;
    }
    // A replay of an intact store rewrites nothing.
    let quiet = store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert!(quiet.online);
    assert_eq!(quiet.rewritten, 0);
    assert_eq!(quiet.conversations, CONVERSATIONS as u64);

    // Wreck projection rows (not the filing) of some conversations, and leave an orphan row.
    for sql in [
        "UPDATE messages SET text = 'wrecked' WHERE text LIKE 'help 1%'",
        "DELETE FROM handoffs WHERE conversation_id IN (SELECT conversation_id FROM messages WHERE text = 'wrecked')",
        "UPDATE conversations SET fold = '' WHERE id IN (SELECT conversation_id FROM messages WHERE text LIKE 'help 3%')",
        "INSERT INTO conversation_agents (agent, started_at, conversation_id) VALUES ('ghost', 0, 'nobody')",
    ] {
        db.raw.execute(sql).await.unwrap();
    }

    let appends = async {
        for round in 1..=3 {
            for chunk in (0..CONVERSATIONS).step_by(7).collect::<Vec<_>>().chunks(20) {
                let mut groups: Vec<Vec<NewEvent>> = chunk.iter().map(|i| replay_conversation(*i, round)).collect();
                // New conversations too, some of whose rooms were attended earlier (merges).
                groups.extend(
                    chunk
                        .iter()
                        .map(|i| replay_conversation(CONVERSATIONS + i + 10_000 * round as usize, 0)),
                );
                append(&store, groups).await;
                tokio::task::yield_now().await;
            }
        }
    };
    let config = sla();
    let (stats, ()) = tokio::join!(store.replay(&config, &|_, _| {}), appends);
    let stats = stats.unwrap();
    assert!(stats.online, "the filing was intact: no reason to stop the writer");
    assert!(stats.rewritten > 0, "the wrecked rows were rewritten");

    let online = projection_dump(db).await;
    assert!(online
        .iter()
        .all(|(_, rows)| rows.iter().all(|r| !r.contains("wrecked") && !r.contains("ghost"))));
    let offline = store.replay_offline(&sla(), &|_, _| {}).await.unwrap();
    assert!(!offline.online);
    assert_eq!(projection_dump(db).await, online);
    // Appends carry on from the replayed state, and another replay finds nothing to rewrite.
    append(&store, vec![replay_conversation(3, 9)]).await;
    let again = store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert_eq!((again.online, again.rewritten), (true, 0));
}

/// The columns of each projection table the replay compares, with their kind: `t` text, `i` integer,
/// `r` floating point.
const PROJECTION_COLUMNS: [(&str, &[(&str, char)]); 4] = [
    (
        "conversations",
        &[
            ("id", 't'),
            ("state", 't'),
            ("disposition", 't'),
            ("sla_status", 't'),
            ("sla_deadline", 'i'),
            ("queue", 't'),
            ("started_at", 'i'),
            ("updated_at", 'i'),
            ("last_seq", 'i'),
            ("doc", 't'),
            ("fold", 't'),
        ],
    ),
    (
        "messages",
        &[
            ("conversation_id", 't'),
            ("at", 'i'),
            ("seq", 'i'),
            ("idx", 'i'),
            ("party", 't'),
            ("author", 't'),
            ("kind", 't'),
            ("text", 't'),
            ("buttons", 't'),
            ("cards", 't'),
            ("url", 't'),
            ("platform", 't'),
            ("event_id", 't'),
        ],
    ),
    (
        "handoffs",
        &[
            ("conversation_id", 't'),
            ("ordinal", 'i'),
            ("backend", 't'),
            ("queue", 't'),
            ("requested_at", 'i'),
            ("queued_at", 'i'),
            ("attended_at", 'i'),
            ("closed_at", 'i'),
            ("agent", 't'),
            ("agents", 't'),
            ("transfers", 'i'),
            ("wait_seconds", 'r'),
            ("first_response_seconds", 'r'),
            ("handle_seconds", 'r'),
            ("sla_status", 't'),
            ("sla_deadline", 'i'),
            ("disposition", 't'),
            ("platform_disposition", 't'),
            ("close_reason", 't'),
            ("failure", 't'),
            ("answered", 'i'),
            ("abandoned", 'i'),
            ("missed", 'i'),
            ("answered_wait_seconds", 'r'),
            ("unanswered_wait_seconds", 'r'),
            ("report_first_response_seconds", 'r'),
            ("report_handle_seconds", 'r'),
            ("first_response_at", 'i'),
            ("answered_wait_key", 'i'),
            ("disposition_at", 'i'),
            ("report_first_response_whole", 'i'),
            ("report_first_response_frac_hi", 'i'),
            ("report_first_response_frac_lo", 'i'),
            ("report_handle_whole", 'i'),
            ("report_handle_frac_hi", 'i'),
            ("report_handle_frac_lo", 'i'),
        ],
    ),
    (
        "conversation_agents",
        &[("agent", 't'), ("started_at", 'i'), ("conversation_id", 't')],
    ),
];

/// The online replay compares every value it reads in bulk: one value of one row changed behind the
/// store's back (in any column of any projection table, by as little as the last bit of a float)
/// is found and rewritten, and the next replay finds nothing to rewrite.
async fn replay_finds_any_single_wrecked_value(store: Arc<dyn Store>, db: &TestDb) {
    let groups: Vec<Vec<NewEvent>> = (0..12).map(|i| replay_conversation(i, 0)).collect();
    append(&store, groups).await;
    append(&store, (0..12).step_by(3).map(|i| replay_conversation(i, 1)).collect()).await;
    let quiet = store.replay(&sla(), &|_, _| {}).await.unwrap();
    assert_eq!((quiet.online, quiet.rewritten), (true, 0));
    let before = projection_dump(db).await;
    let row_id = match db.raw {
        Raw::Sqlite(_) => "rowid",
        Raw::Postgres(_) => "ctid",
    };
    for (table, columns) in PROJECTION_COLUMNS {
        for (column, kind) in columns {
            let (null_to, changed) = match kind {
                't' => ("'x'".to_string(), format!("{column} || 'x'")),
                'i' => ("1".to_string(), format!("{column} + 1000003")),
                // The smallest change: the next float up (a different value SQLite prints the same
                // with 15 digits).
                _ => (
                    "0.5".to_string(),
                    format!("CASE WHEN {column} = 0 THEN 1e-300 ELSE {column} * (1 + 4e-16) END"),
                ),
            };
            let sql = format!(
                "UPDATE {table} SET {column} = CASE WHEN {column} IS NULL THEN {null_to} ELSE {changed} END \
                 WHERE {row_id} = (SELECT {row_id} FROM {table} ORDER BY ({column} IS NULL) LIMIT 1)"
            );
            assert_eq!(db.raw.execute(&sql).await, Ok(1), "{sql}");
            if *kind != 'r' {
                assert_ne!(projection_dump(db).await, before, "{table}.{column} was changed");
            }
            let stats = store.replay(&sla(), &|_, _| {}).await.unwrap();
            assert!(stats.online, "{table}.{column}");
            assert!(stats.rewritten >= 1, "{table}.{column}: the changed value was found");
            assert_eq!(projection_dump(db).await, before, "{table}.{column} was restored");
            let again = store.replay(&sla(), &|_, _| {}).await.unwrap();
            assert_eq!(again.rewritten, 0, "{table}.{column}: nothing left to rewrite");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store-computed reports
// ---------------------------------------------------------------------------------------------

fn close_enough(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        (a, b) => a == b,
    }
}

/// Same rows: every count, the percentiles exactly; sums of floats added in another order within 1e-9.
fn assert_same_sla_rows(sql: &[SlaRow], rust: &[SlaRow], what: &str) {
    assert_eq!(sql.len(), rust.len(), "{what}: rows\nsql={sql:#?}\nrust={rust:#?}");
    for (a, b) in sql.iter().zip(rust) {
        let exact = |r: &SlaRow| {
            (
                r.bucket.clone(),
                r.platform.clone(),
                r.queue.clone(),
                r.agent.clone(),
                (r.offered, r.answered, r.answered_within_sla),
                (r.abandoned, r.short_abandoned, r.missed),
                (r.service_level, r.wait_p50_seconds, r.wait_p90_seconds),
            )
        };
        assert_eq!(exact(a), exact(b), "{what}");
        assert!(
            close_enough(a.avg_first_response_seconds, b.avg_first_response_seconds)
                && close_enough(a.avg_handle_seconds, b.avg_handle_seconds),
            "{what}: means {a:?} {b:?}"
        );
    }
}

/// The reports the store aggregates in SQL over its handoff rows are the reports computed in Rust over the
/// handoff rows of every stored conversation (`reports::sla_report`, the definition the ClickHouse rollups are
/// tested against): every bucket size, every grouping, ranges cut inside buckets, and the SLA settings in force
/// when the report is read (not when the rows were written).
async fn reports_aggregated_in_sql_equal_the_reports_over_conversations(store: Arc<dyn Store>) {
    use handoff_ledger::analytics::reports::{self, GroupBy, Interval, ReportQuery};

    let start = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    let written_with = scenario::sla();
    let opts = scenario::ScenarioOptions::new(7, 400, start, chrono::Duration::days(2));
    let plan = scenario::generate(&opts, &written_with);
    let groups: Vec<Vec<NewEvent>> = plan.steps.iter().map(|s| s.events().unwrap()).collect();
    for batch in groups.chunks(50) {
        store.append_batch(batch, &written_with).await.unwrap();
    }
    let conversations = all_conversations(&store).await;
    let handoffs: Vec<_> = conversations.iter().flat_map(|c| c.handoffs.iter()).collect();
    // The edge cases are there: no queue, unanswered (abandoned short and long, missed, waiting), answered
    // after its target, no first response, failed.
    let sla = written_with.clone();
    let covered = [
        handoffs.iter().any(|h| h.queue.is_none()),
        handoffs
            .iter()
            .any(|h| h.attended_at.is_none() && h.closed_at.is_none()),
        handoffs.iter().any(|h| metrics_short_abandon(h, &sla)),
        handoffs
            .iter()
            .any(|h| h.disposition == Some(Disposition::Abandoned) && !metrics_short_abandon(h, &sla)),
        handoffs.iter().any(|h| h.disposition == Some(Disposition::Missed)),
        handoffs.iter().any(|h| h.disposition == Some(Disposition::Failed)),
        handoffs
            .iter()
            .any(|h| h.sla_status == SlaStatus::Breached && h.attended_at.is_some()),
        handoffs
            .iter()
            .any(|h| h.attended_at.is_some() && h.first_response_seconds.is_none()),
    ];
    assert_eq!(covered, [true; 8], "{} handoffs", handoffs.len());

    // Read with other settings than written: another target for one queue, a longer short abandon.
    let mut read_with = written_with.clone();
    read_with.short_abandon_seconds = 45;
    read_with.answer_seconds = 40;
    read_with.queues.insert("Billing".into(), 90);
    let groupings = [
        vec![],
        vec![GroupBy::Platform],
        vec![GroupBy::Queue],
        vec![GroupBy::Agent],
        vec![GroupBy::Agent, GroupBy::Platform, GroupBy::Queue],
    ];
    let ranges = [
        (start - chrono::Duration::days(1), start + chrono::Duration::days(4)),
        // Cut inside an hour at both ends.
        (
            start + chrono::Duration::minutes(14 * 60 + 25),
            start + chrono::Duration::minutes(30 * 60 + 10),
        ),
        // Empty.
        (start + chrono::Duration::days(10), start + chrono::Duration::days(11)),
    ];
    let mut nonempty = 0;
    for sla in [&written_with, &read_with] {
        for interval in [Interval::Hour, Interval::Day] {
            for group_by in &groupings {
                for (since, until) in ranges {
                    let q = ReportQuery {
                        since,
                        until,
                        interval,
                        group_by: group_by.clone(),
                    };
                    let what = format!("{interval:?} {group_by:?} {since} {until} {sla:?}");
                    let sql = reports::sla_report_store(store.as_ref(), sla, &q).await.unwrap();
                    let rust = reports::sla_report(&conversations, sla, &q);
                    assert_same_sla_rows(&sql, &rust, &what);
                    let sql = reports::disposition_report_store(store.as_ref(), &q).await.unwrap();
                    assert_eq!(sql, reports::disposition_report(&conversations, sla, &q), "{what}");
                    nonempty += usize::from(!rust.is_empty());
                }
            }
        }
    }
    assert_eq!(
        nonempty,
        2 * 2 * groupings.len() * 2,
        "every range but the empty one has rows"
    );
}

/// `metrics::is_short_abandon` as METRICS.md words it (the crate's own is not public).
fn metrics_short_abandon(h: &handoff_ledger::model::Handoff, sla: &SlaConfig) -> bool {
    h.disposition == Some(Disposition::Abandoned)
        && h.attended_at.is_none()
        && match (h.queued_at, h.closed_at) {
            (Some(q), Some(c)) => ((c - q).num_milliseconds() as f64 / 1000.0) < sla.short_abandon_seconds as f64,
            _ => false,
        }
}
