//! The tamper-evident log on both stores: every appended event is chained, the guard refuses every
//! change but an erasure's, `verify` names a row changed behind the guard's back, and a log stored
//! before the chain gets its hashes from `migrate`.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use handoff_ledger::chain::{self, BreakReason, ChainHead, ChainLink};
use handoff_ledger::config::SlaConfig;
use handoff_ledger::erasure::ErasureTarget;
use handoff_ledger::model::{event_id_for, NewEvent, Platform, StreamKey};
use handoff_ledger::store::{self, Store};
use handoff_ledger::verify::{verify_log, verify_log_in_pages, Verdict};

use common::PgDatabase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: its URL, kept alive while the test runs.
struct Db {
    url: String,
    backend: Backend,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

impl Db {
    async fn new(backend: Backend) -> Db {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Db {
                url: format!("sqlite://{}", dir.path().join("ledger.db").display()),
                backend,
                _dir: dir,
                _pg: None,
            },
            Backend::Postgres => {
                let pg = PgDatabase::create().await;
                Db {
                    url: pg.url.clone(),
                    backend,
                    _dir: dir,
                    _pg: Some(pg),
                }
            }
        }
    }

    /// The store, migrated.
    async fn store(&self) -> Arc<dyn Store> {
        let store = store::open(&self.url, 2).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// Runs a statement on a connection of its own: rows affected, or the database's refusal.
    async fn execute(&self, sql: &str) -> Result<u64, String> {
        let result = match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.map(|r| r.rows_affected())
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.map(|r| r.rows_affected())
            }
        };
        result.map_err(|e| e.to_string())
    }

    /// Drops the trigger that guards UPDATE on events, as a superuser could.
    async fn drop_update_guard(&self) {
        let sql = match self.backend {
            Backend::Sqlite => "DROP TRIGGER events_refuse_update",
            Backend::Postgres => "DROP TRIGGER events_guard_update ON events",
        };
        self.execute(sql).await.unwrap();
    }

    /// Drops the trigger that refuses DELETE on events.
    async fn drop_delete_guard(&self) {
        let sql = match self.backend {
            Backend::Sqlite => "DROP TRIGGER events_refuse_delete",
            Backend::Postgres => "DROP TRIGGER events_refuse_delete ON events",
        };
        self.execute(sql).await.unwrap();
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    appended_events_are_chained_and_the_head_is_the_newest_hash,
    plain_updates_and_deletes_are_still_refused,
    verify_names_a_row_changed_behind_the_guard,
    verify_names_a_row_deleted_behind_the_guard,
    verify_checks_a_pinned_head,
    a_log_stored_before_the_chain_is_backfilled_by_migrate,
    the_verify_command_prints_ok_or_names_the_broken_seq,
    verify_reads_any_text_exactly_in_pages_of_any_size,
    verify_names_the_first_break_wherever_pages_end,
    a_long_conversation_is_erased_whole_and_only_it,
);

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_706_000_000 + secs, 0).unwrap()
}

fn event(platform: Platform, external_id: &str, key: &str, secs: i64) -> NewEvent {
    NewEvent {
        event_id: event_id_for(platform, Some(key)),
        stream: StreamKey::new(platform, external_id),
        kind: format!("{platform}.test_event"),
        occurred_at: t(secs),
        platform_at: None,
        received_at: t(secs) + chrono::Duration::milliseconds(250),
        payload: json!({"key": key, "text": format!("hello {key}")}).to_string(),
        headers: BTreeMap::from([("user-agent".to_string(), "test".to_string())]),
        links: Vec::new(),
    }
}

/// Appends `n` events in batches of 3 (several transactions, several events per transaction).
async fn fill(store: &Arc<dyn Store>, n: usize) {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| {
            event(
                Platform::Ultimate,
                &format!("conv-{}", i % 4),
                &format!("k{i}"),
                i as i64,
            )
        })
        .collect();
    for batch in events.chunks(3) {
        let groups: Vec<Vec<NewEvent>> = batch.iter().map(|e| vec![e.clone()]).collect();
        store.append_batch(&groups, &SlaConfig::default()).await.unwrap();
    }
}

async fn verdict(store: &Arc<dyn Store>, pinned: Option<ChainHead>) -> Verdict {
    verify_log(store.clone(), pinned, &|_, _| {}).await.unwrap()
}

fn broken(verdict: Verdict) -> chain::ChainBreak {
    match verdict {
        Verdict::Broken(b) => b,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

async fn appended_events_are_chained_and_the_head_is_the_newest_hash(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    assert_eq!(store.chain_head().await.unwrap(), None);
    assert_eq!(verdict(&store, None).await, Verdict::Intact { events: 0, head: None });
    fill(&store, 10).await;
    let events = store.events_after(0, 100).await.unwrap();
    // Each stored hash is the documented hash of the event chained to its predecessor.
    let mut prev = chain::GENESIS;
    for e in &events {
        let expected = chain::event_hash(
            &prev,
            &ChainLink {
                seq: e.seq,
                event_id: e.event_id,
                platform: e.platform.as_str(),
                external_id: &e.external_id,
                kind: &e.kind,
                occurred_at: e.occurred_at.timestamp_micros(),
                received_at: e.received_at.timestamp_micros(),
                payload_sha256: chain::payload_sha256(&e.payload.to_string()),
            },
        );
        assert_eq!(
            e.hash.as_deref(),
            Some(chain::to_hex(&expected).as_str()),
            "seq {}",
            e.seq
        );
        prev = expected;
    }
    let head = store.chain_head().await.unwrap().unwrap();
    assert_eq!(head.seq, 10);
    assert_eq!(head.hash, chain::to_hex(&prev));
    assert_eq!(
        verdict(&store, None).await,
        Verdict::Intact {
            events: 10,
            head: Some(head)
        }
    );
}

async fn plain_updates_and_deletes_are_still_refused(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 3).await;
    let before = store.events_after(0, 10).await.unwrap();
    let stub = chain::ErasureStub::new(Uuid::new_v4(), &chain::payload_sha256("{}")).to_payload();
    for sql in [
        "UPDATE events SET payload = '{\"text\":\"changed\"}' WHERE seq = 2".to_string(),
        "UPDATE events SET payload = '{}', headers = '{}'".to_string(),
        "UPDATE events SET hash = NULL WHERE seq = 3".to_string(),
        format!("UPDATE events SET hash = '{}' WHERE seq = 3", "0".repeat(64)),
        "UPDATE events SET occurred_at = occurred_at + 1".to_string(),
        "UPDATE events SET headers = '{}' WHERE seq = 1".to_string(),
        // A stub no erasure registered is refused too.
        format!("UPDATE events SET payload = '{stub}', headers = '{{}}' WHERE seq = 1"),
        "DELETE FROM events WHERE seq = 3".to_string(),
    ] {
        let result = db.execute(&sql).await;
        assert!(
            result.as_ref().is_err_and(|e| e.contains("append-only")),
            "{sql}: {result:?}"
        );
    }
    // Inserting a row without its hash (behind the writer's back) is refused as well.
    let insert = db
        .execute(
            "INSERT INTO events (seq, event_id, platform, external_id, kind, occurred_at, received_at, payload) \
             VALUES (4, 'x', 'ultimate', 'c', 'ultimate.test_event', 0, 0, '{}')",
        )
        .await;
    assert!(insert.is_err(), "{insert:?}");
    assert_eq!(store.events_after(0, 10).await.unwrap(), before);
    assert!(matches!(verdict(&store, None).await, Verdict::Intact { events: 3, .. }));
}

async fn verify_names_a_row_changed_behind_the_guard(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 6).await;
    db.drop_update_guard().await;
    assert_eq!(
        db.execute("UPDATE events SET payload = '{\"key\":\"k3\",\"text\":\"forged\"}' WHERE seq = 4")
            .await,
        Ok(1)
    );
    let b = broken(verdict(&store, None).await);
    assert_eq!(b.seq, 4);
    assert!(matches!(b.reason, BreakReason::Mismatch { .. }), "{b}");
    // Forging the row's hash too moves the break to the next row, which chained the original.
    let forged = store.chain_rows(3, 1).await.unwrap().remove(0);
    let prev = chain::from_hex(store.chain_rows(2, 1).await.unwrap()[0].hash.as_deref().unwrap()).unwrap();
    let rehash = chain::event_hash(
        &prev,
        &ChainLink {
            seq: 4,
            event_id: forged.event_id.parse().unwrap(),
            platform: &forged.platform,
            external_id: &forged.external_id,
            kind: &forged.kind,
            occurred_at: forged.occurred_at,
            received_at: forged.received_at,
            payload_sha256: chain::payload_sha256(&forged.payload),
        },
    );
    let sql = format!("UPDATE events SET hash = '{}' WHERE seq = 4", chain::to_hex(&rehash));
    assert_eq!(db.execute(&sql).await, Ok(1));
    assert_eq!(broken(verdict(&store, None).await).seq, 5);
}

async fn verify_names_a_row_deleted_behind_the_guard(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 5).await;
    db.drop_delete_guard().await;
    assert_eq!(db.execute("DELETE FROM events WHERE seq = 3").await, Ok(1));
    let b = broken(verdict(&store, None).await);
    assert_eq!((b.seq, b.reason), (3, BreakReason::Missing { found: 4 }));
}

async fn verify_checks_a_pinned_head(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 4).await;
    let pinned = store.chain_head().await.unwrap().unwrap();
    fill(&store, 8).await; // 4 duplicates, 4 new
    assert!(matches!(
        verdict(&store, Some(pinned.clone())).await,
        Verdict::Intact { events: 8, .. }
    ));
    // A pin beyond the end: rows were cut off the end of the log.
    let beyond = ChainHead {
        seq: 20,
        hash: pinned.hash.clone(),
    };
    let b = broken(verdict(&store, Some(beyond)).await);
    assert_eq!((b.seq, b.reason), (20, BreakReason::Truncated { last: 8 }));
    // A pin whose hash the row no longer carries: the whole log was rewritten consistently.
    let rewritten = ChainHead {
        seq: 4,
        hash: "ab".repeat(32),
    };
    let b = broken(verdict(&store, Some(rewritten)).await);
    assert_eq!(b.seq, 4);
    assert!(matches!(b.reason, BreakReason::PinMismatch { .. }), "{b}");
}

/// Applies only the migrations older than the chain (a database of an earlier release).
async fn migrate_before_chain(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let source = match db.backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.as_str() < "20261203000000" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    match db.backend {
        Backend::Sqlite => {
            let options = db
                .url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
            migrator.run(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            migrator.run(&mut conn).await.unwrap();
        }
    }
}

async fn a_log_stored_before_the_chain_is_backfilled_by_migrate(backend: Backend) {
    // The same events appended by the chaining writer, for the hashes the backfill must reproduce.
    let reference = Db::new(backend).await;
    let reference_store = reference.store().await;
    fill(&reference_store, 1_203).await;
    let expected = reference_store.chain_rows(0, 2_000).await.unwrap();

    let db = Db::new(backend).await;
    migrate_before_chain(&db).await;
    for chunk in expected.chunks(200) {
        let values: Vec<String> = chunk
            .iter()
            .map(|r| {
                format!(
                    "({}, '{}', '{}', '{}', '{}', {}, {}, '{}')",
                    r.seq, r.event_id, r.platform, r.external_id, r.kind, r.occurred_at, r.received_at, r.payload
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO events (seq, event_id, platform, external_id, kind, occurred_at, received_at, payload) VALUES {}",
            values.join(", ")
        );
        assert_eq!(db.execute(&sql).await, Ok(chunk.len() as u64));
    }
    // Opening the store migrates it: the guard lets the backfill set the missing hashes, in order.
    let store = db.store().await;
    let backfilled = store.chain_rows(0, 2_000).await.unwrap();
    assert_eq!(backfilled, expected);
    assert!(matches!(
        verdict(&store, None).await,
        Verdict::Intact { events: 1_203, .. }
    ));
    // Migrating again finds nothing to do, and new events chain on.
    store.migrate().await.unwrap();
    store
        .append_batch(
            &[vec![event(Platform::AivoLive, "room", "new", 5_000)]],
            &SlaConfig::default(),
        )
        .await
        .unwrap();
    assert!(matches!(
        verdict(&store, None).await,
        Verdict::Intact { events: 1_204, .. }
    ));
}

fn run_verify(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
        .arg("verify")
        .env("LEDGER__STORE__URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run verify");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn the_verify_command_prints_ok_or_names_the_broken_seq(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 7).await;
    assert_eq!(run_verify(&db.url), (true, "ok 7 events\n".to_string()));
    db.drop_update_guard().await;
    db.execute("UPDATE events SET kind = 'ultimate.escalate' WHERE seq = 5")
        .await
        .unwrap();
    let (ok, stdout) = run_verify(&db.url);
    assert!(!ok, "{stdout}");
    assert!(stdout.starts_with("broken at seq 5:"), "{stdout}");
}

async fn verdict_in_pages(store: &Arc<dyn Store>, page: u32) -> Verdict {
    verify_log_in_pages(store.clone(), None, page, &|_, _| {})
        .await
        .unwrap()
}

/// `verify` reads the log as pages of text the database builds: texts with spaces, digits, quotes,
/// multi-byte characters and what looks like the page's own length prefixes read back exactly, and
/// the verdict and the progress are the same whatever the page size.
async fn verify_reads_any_text_exactly_in_pages_of_any_size(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    let texts = [
        "plain",
        "12 34 -1 36 ",
        "-1 ",
        "quotes \" ' and \\ backslashes",
        "é 漢字 😀 ünïcödé",
        "",
        "line\nbreak\ttab",
        "100 x100 y",
    ];
    for (i, text) in texts.iter().enumerate() {
        let mut e = event(Platform::Ultimate, &format!("conv {i} é"), &format!("odd{i}"), i as i64);
        e.payload = json!({"text": text, "n": i}).to_string();
        store.append_batch(&[vec![e]], &SlaConfig::default()).await.unwrap();
    }
    fill(&store, 15).await;
    let total = 8 + 15;
    let head = store.chain_head().await.unwrap();
    for page in [1, 2, 3, 7, 22, 23, 24, 1_000] {
        let seen = std::sync::Mutex::new(Vec::new());
        let verdict = verify_log_in_pages(store.clone(), None, page, &|done, all| {
            seen.lock().unwrap().push((done, all));
        })
        .await
        .unwrap();
        assert_eq!(
            verdict,
            Verdict::Intact {
                events: total,
                head: head.clone()
            },
            "pages of {page}"
        );
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.first(), Some(&(0, total)), "pages of {page}");
        assert_eq!(seen.last(), Some(&(total, total)), "pages of {page}");
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "progress only grows: {seen:?}"
        );
    }
    // The page holds the texts exactly as stored: the rows read one by one agree.
    let rows = store.chain_rows(0, 100).await.unwrap();
    let page = store.chain_page(1, total as i64).await.unwrap();
    let links: Vec<chain::StoredLink<'_>> = page.rows().unwrap();
    assert_eq!(links.len(), rows.len());
    for (link, row) in links.iter().zip(&rows) {
        assert_eq!(*link, row.link());
    }
    assert!(store
        .chain_page(total as i64 + 1, total as i64 + 10)
        .await
        .unwrap()
        .rows()
        .unwrap()
        .is_empty());
}

/// Rows deleted or changed behind the guard are named at the same seq whether the damage lies inside a
/// page, at its first or last row, or covers whole pages.
async fn verify_names_the_first_break_wherever_pages_end(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 30).await;
    db.drop_delete_guard().await;
    db.drop_update_guard().await;
    let pages = [1, 2, 3, 4, 5, 6, 9, 10, 11, 29, 30, 100];
    // Seq 10 deleted: the last row of a page of 5 or 10, the first of a page of 9 (after 9).
    assert_eq!(db.execute("DELETE FROM events WHERE seq = 10").await, Ok(1));
    for page in pages {
        let b = broken(verdict_in_pages(&store, page).await);
        assert_eq!(
            (b.seq, b.reason),
            (10, BreakReason::Missing { found: 11 }),
            "pages of {page}"
        );
    }
    // Seqs 10 to 21 gone: whole pages of every size up to 11 are empty.
    assert_eq!(
        db.execute("DELETE FROM events WHERE seq > 10 AND seq < 22").await,
        Ok(11)
    );
    for page in pages {
        let b = broken(verdict_in_pages(&store, page).await);
        assert_eq!(
            (b.seq, b.reason),
            (10, BreakReason::Missing { found: 22 }),
            "pages of {page}"
        );
    }
    // A change before the gap is named first.
    assert_eq!(
        db.execute("UPDATE events SET received_at = received_at + 1 WHERE seq = 6")
            .await,
        Ok(1)
    );
    for page in pages {
        let b = broken(verdict_in_pages(&store, page).await);
        assert_eq!(b.seq, 6, "pages of {page}");
        assert!(matches!(b.reason, BreakReason::Mismatch { .. }), "pages of {page}: {b}");
    }
    // The end of the log cut off: the rest still verifies (only a pinned head shows the cut).
    let db = Db::new(backend).await;
    let store = db.store().await;
    fill(&store, 12).await;
    db.drop_delete_guard().await;
    assert_eq!(db.execute("DELETE FROM events WHERE seq > 9").await, Ok(3));
    for page in pages {
        assert!(
            matches!(verdict_in_pages(&store, page).await, Verdict::Intact { events: 9, .. }),
            "pages of {page}"
        );
    }
}

/// An erasure replaces every payload of a long conversation (more events than any statement chunk) by
/// its stub, touches no other conversation, keeps the chain, and a second erasure changes nothing.
async fn a_long_conversation_is_erased_whole_and_only_it(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    let n = 1_234usize;
    let events: Vec<NewEvent> = (0..n)
        .map(|i| event(Platform::Ultimate, "long", &format!("long{i}"), i as i64))
        .chain((0..5).map(|i| event(Platform::Ultimate, "other", &format!("other{i}"), i as i64)))
        .collect();
    for batch in events.chunks(200) {
        let groups: Vec<Vec<NewEvent>> = batch.iter().map(|e| vec![e.clone()]).collect();
        store.append_batch(&groups, &SlaConfig::default()).await.unwrap();
    }
    let before: BTreeMap<i64, chain::ChainRow> = store
        .chain_rows(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r))
        .collect();
    let target = ErasureTarget::Stream(StreamKey::new(Platform::Ultimate, "long"));
    let erasure_id = Uuid::new_v4();
    let at = handoff_ledger::sources::truncate_to_micros(Utc::now());
    let certificate = store
        .erase(&target, erasure_id, at, &SlaConfig::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(certificate.events.len(), n);
    let after: BTreeMap<i64, chain::ChainRow> = store
        .chain_rows(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r))
        .collect();
    let erased: BTreeMap<i64, String> = certificate
        .events
        .iter()
        .map(|e| (e.seq, e.payload_sha256.clone()))
        .collect();
    for (seq, row) in &before {
        let now = &after[seq];
        match erased.get(seq) {
            Some(digest) => {
                assert_eq!(row.external_id, "long");
                assert_eq!(
                    digest,
                    &chain::to_hex(&chain::payload_sha256(&row.payload)),
                    "seq {seq}"
                );
                let stub = chain::ErasureStub::new(erasure_id, &chain::payload_sha256(&row.payload));
                assert_eq!(now.payload, stub.to_payload(), "seq {seq}");
                assert_eq!(
                    (&now.hash, now.occurred_at, &now.kind),
                    (&row.hash, row.occurred_at, &row.kind)
                );
            }
            None => assert_eq!(now, row, "seq {seq} is not the erased conversation's"),
        }
    }
    let head = store.chain_head().await.unwrap();
    assert_eq!(head.as_ref(), Some(&certificate.chain_head));
    assert!(matches!(
        verdict(&store, None).await,
        Verdict::Intact { events, .. } if events == n as u64 + 6
    ));
    // Again: the same certificate, nothing changed or appended.
    let again = store
        .erase(&target, Uuid::new_v4(), Utc::now(), &SlaConfig::default())
        .await
        .unwrap()
        .unwrap();
    assert!(again == certificate, "a second erasure answers the first certificate");
    assert_eq!(store.chain_head().await.unwrap(), head);
}
