//! SQLite's process-wide settings, in a process of their own: they are made before SQLite's first
//! connection, so no other test may open SQLite here first.

use handoff_ledger::store::{SqliteStore, Store};

/// The store turns SQLite's memory statistics off before its first connection: with them on, every
/// allocation SQLite makes takes a process-wide mutex (store::sql::sqlite_without_memory_statistics).
#[tokio::test]
async fn sqlite_counts_no_memory_once_a_store_has_opened() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = SqliteStore::connect_writer(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 0);
    // SAFETY: a plain read of SQLite's counter.
    let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
    assert_eq!(used, 0, "SQLite still counts its memory (a mutex per allocation)");
}
