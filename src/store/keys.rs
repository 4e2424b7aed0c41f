//! API keys in the store (both backends, the same SQL): only each key's SHA-256 is kept.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::codec;
use super::{PostgresStore, SqliteStore, StoreError, StoreResult};
use crate::auth::key::{scopes_from_text, scopes_to_text, StoredKey};

const SQL_INSERT_KEY: &str = "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (name) DO NOTHING";
const SQL_LIST_KEYS: &str = "SELECT name, key_hash, scopes, created_at, last_used_at FROM api_keys ORDER BY name";
const SQL_DELETE_KEY: &str = "DELETE FROM api_keys WHERE name = $1";
const SQL_TOUCH_KEY: &str = "UPDATE api_keys SET last_used_at = $2 \
     WHERE name = $1 AND (last_used_at IS NULL OR last_used_at < $2)";

type KeyRow = (String, String, String, i64, Option<i64>);

fn decode_key((name, key_hash, scopes, created_at, last_used_at): KeyRow) -> StoreResult<StoredKey> {
    Ok(StoredKey {
        scopes: scopes_from_text(&scopes).map_err(|e| StoreError::Corrupt(format!("key `{name}`: {e}")))?,
        name,
        key_hash,
        created_at: codec::from_micros(created_at)?,
        last_used_at: last_used_at.map(codec::from_micros).transpose()?,
    })
}

/// The API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Adds a key; false (nothing written) when a key of that name exists.
    async fn create_key(&self, key: &StoredKey) -> StoreResult<bool>;

    /// Every key, by name.
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>>;

    /// Deletes a key; false when there is none of that name.
    async fn revoke_key(&self, name: &str) -> StoreResult<bool>;

    /// Records that a key was used at `at` (never moves the time back).
    async fn touch_key(&self, name: &str, at: DateTime<Utc>) -> StoreResult<()>;
}

macro_rules! key_store {
    ($name:ident) => {
        #[async_trait]
        impl KeyStore for $name {
            async fn create_key(&self, key: &StoredKey) -> StoreResult<bool> {
                let done = sqlx::query(SQL_INSERT_KEY)
                    .bind(&key.name)
                    .bind(&key.key_hash)
                    .bind(scopes_to_text(&key.scopes))
                    .bind(codec::to_micros(key.created_at))
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
                let rows: Vec<KeyRow> = sqlx::query_as(SQL_LIST_KEYS).fetch_all(self.pool()).await?;
                rows.into_iter().map(decode_key).collect()
            }

            async fn revoke_key(&self, name: &str) -> StoreResult<bool> {
                let done = sqlx::query(SQL_DELETE_KEY)
                    .bind(name)
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn touch_key(&self, name: &str, at: DateTime<Utc>) -> StoreResult<()> {
                sqlx::query(SQL_TOUCH_KEY)
                    .bind(name)
                    .bind(codec::to_micros(at))
                    .execute(self.pool())
                    .await?;
                Ok(())
            }
        }
    };
}

key_store!(SqliteStore);
key_store!(PostgresStore);
