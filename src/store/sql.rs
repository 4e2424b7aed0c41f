//! The SQL backends. Placeholder until the store lands.

use async_trait::async_trait;
use uuid::Uuid;

use super::{ConversationFilter, ConversationPage, ReplayStats, Store, StoreResult};
use crate::config::SlaConfig;
use crate::model::{AppendOutcome, Conversation, Message, NewEvent, NewQuarantine, QuarantineEntry, StoredEvent};

macro_rules! sql_store {
    ($name:ident, $pool:ty, $opts:ty) => {
        /// A store backend.
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            /// Connects.
            pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
                let pool = <$opts>::new()
                    .max_connections(max_connections)
                    .connect(url)
                    .await?;
                Ok(Self { pool })
            }
        }

        #[async_trait]
        impl Store for $name {
            async fn migrate(&self) -> StoreResult<()> {
                Ok(())
            }
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }
            async fn append_batch(
                &self,
                _groups: &[Vec<NewEvent>],
                _sla: &SlaConfig,
            ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
                Ok(Vec::new())
            }
            async fn quarantine(&self, _entry: &NewQuarantine) -> StoreResult<i64> {
                Ok(0)
            }
            async fn list_quarantine(&self, _limit: u32, _before: Option<i64>) -> StoreResult<Vec<QuarantineEntry>> {
                Ok(Vec::new())
            }
            async fn get_conversation(&self, _id: Uuid) -> StoreResult<Option<Conversation>> {
                Ok(None)
            }
            async fn list_conversations(&self, _filter: &ConversationFilter) -> StoreResult<ConversationPage> {
                Ok(ConversationPage {
                    items: Vec::new(),
                    next: None,
                })
            }
            async fn transcript(&self, _id: Uuid) -> StoreResult<Option<(Uuid, Vec<Message>)>> {
                Ok(None)
            }
            async fn conversation_events(&self, _id: Uuid) -> StoreResult<Option<Vec<StoredEvent>>> {
                Ok(None)
            }
            async fn events_after(&self, _after_seq: i64, _limit: u32) -> StoreResult<Vec<StoredEvent>> {
                Ok(Vec::new())
            }
            async fn last_seq(&self) -> StoreResult<i64> {
                Ok(0)
            }
            async fn replay(
                &self,
                _sla: &SlaConfig,
                _progress: &(dyn Fn(u64, u64) + Send + Sync),
            ) -> StoreResult<ReplayStats> {
                Ok(ReplayStats::default())
            }
            async fn checkpoint(&self, _name: &str) -> StoreResult<i64> {
                Ok(0)
            }
            async fn set_checkpoint(&self, _name: &str, _value: i64) -> StoreResult<()> {
                Ok(())
            }
        }
    };
}

sql_store!(SqliteStore, sqlx::SqlitePool, sqlx::sqlite::SqlitePoolOptions);
sql_store!(PostgresStore, sqlx::PgPool, sqlx::postgres::PgPoolOptions);
