//! The inbound pipeline, one for every way events arrive (webhooks and Bright Pattern polls):
//! decrypt (VCC) -> parse (pure, per platform) -> quarantine what is refused -> append through the
//! writer within the commit deadline -> relay what is new. It speaks no HTTP: a webhook handler
//! describes what arrived as an [`Inbound`] and maps an [`IngestError`] to its answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::Config;
use crate::model::{AppendOutcome, NewEvent, NewQuarantine, Platform};
use crate::sources::{self, Delivery, Parsed, PayloadError};
use crate::store::{Store, StoreError};
use crate::writer::{WriteError, Writer};

/// A platform's parser: raw text and its JSON in, events out.
pub type ParseFn = fn(&str, &Value, &Delivery) -> Result<Parsed, PayloadError>;

/// Stored header saying a delivery arrived encrypted (the stored payload is the decrypted JSON).
pub const ENCRYPTED_HEADER: &str = "x-ledger-encrypted";

/// Stored header with the IV of an encrypted delivery (not a secret), so that a quarantined encrypted
/// body can be decrypted again when it is redriven.
pub const IV_HEADER: &str = "x-ledger-iv";

/// Stored header of an event appended by a redrive of a quarantined delivery (its value: the redrive's
/// key). Such an event is recorded and relayed, but a redriven `escalate` does not queue: nobody waits for it.
pub const REDRIVE_HEADER: &str = "x-ledger-redrive";

/// One body as it arrived, with what the pipeline needs to know about it.
pub struct Inbound {
    /// The platform that sent it (its quarantine entries are filed under it).
    pub platform: Platform,
    /// Where it came from, kept with a refused body: the webhook path, or `poll:/chats/{id}/events`.
    pub origin: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// Headers worth keeping (never credentials), lower-cased names.
    pub headers: BTreeMap<String, String>,
    /// The body as received.
    pub body: Vec<u8>,
    /// Path parameter (Bright Pattern `chat_id`).
    pub path_id: Option<String>,
    /// VCC's `?iv=<hex>`: the body is base64 AES-256-CTR under `vcc.encryption_key`.
    pub encryption_iv: Option<String>,
    /// The platform's parser.
    pub parse: ParseFn,
    /// The status the sender is answered for a refusal, kept with the quarantined body; `None` when
    /// nobody is answered (a poll), kept as 0.
    pub answered: Option<fn(&PayloadError) -> u16>,
}

/// What a delivery became.
#[derive(Debug)]
pub struct Ingested {
    /// The parsed body.
    pub value: Value,
    /// The parsed events.
    pub parsed: Parsed,
    /// What the writer answered, one per event.
    pub outcomes: Vec<AppendOutcome>,
}

/// Why a delivery was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body was refused (not JSON, wrong shape, bad encryption); it is in the quarantine.
    #[error(transparent)]
    Refused(#[from] PayloadError),
    /// The writer did not commit within `server.commit_deadline_ms`.
    #[error("the event log did not commit in time; retry later")]
    CommitTimeout,
    /// The quarantine entry did not commit within `server.commit_deadline_ms`.
    #[error("the quarantine did not commit in time; retry later")]
    QuarantineTimeout,
    /// The writer failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The store failed (trimming the quarantine).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else (a VCC key that no longer reads).
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// What happens to newly appended events: the outbound relays.
#[async_trait]
pub trait Relay: Send + Sync {
    /// Sends the commands committed with newly appended events (planned in their transaction by the
    /// writer's relay rules; see `store::RelayPlanner`).
    async fn relay(&self, outcomes: &[AppendOutcome]);

    /// This relay as an owned handle: for the events that commit after their request stopped waiting
    /// ([`Pipeline::append`]).
    fn to_owned_relay(&self) -> Arc<dyn Relay>;
}

/// The pipeline's parts. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    store: Arc<dyn Store>,
    writer: Writer,
    config: Arc<Config>,
}

impl Pipeline {
    /// A pipeline appending through `writer`.
    pub fn new(store: Arc<dyn Store>, writer: Writer, config: Arc<Config>) -> Pipeline {
        Pipeline { store, writer, config }
    }

    /// Decrypts, parses, quarantines a refusal, appends, then relays what is new.
    pub async fn receive(&self, inbound: Inbound, relay: &dyn Relay) -> Result<Ingested, IngestError> {
        self.run(inbound, None, relay).await
    }

    /// Runs a delivery kept in the quarantine (`inbound.body` as kept, its `origin` the entry's path)
    /// through the same steps as [`Pipeline::receive`], as if its platform had sent it again now. An
    /// encrypted body is decrypted with the IV kept in its headers; a delivery without an idempotency
    /// key of its own gets `default_key`. A refusal is not quarantined again: the caller records it on
    /// the entry.
    pub async fn redrive(
        &self,
        mut inbound: Inbound,
        default_key: String,
        relay: &dyn Relay,
    ) -> Result<Ingested, IngestError> {
        if inbound.encryption_iv.is_none() {
            inbound.encryption_iv = inbound.headers.get(IV_HEADER).cloned();
        }
        self.run(inbound, Some(default_key), relay).await
    }

    /// The one script: decrypt, parse, keep a refusal (unless it is a redrive's), append, relay.
    async fn run(
        &self,
        inbound: Inbound,
        redrive_key: Option<String>,
        relay: &dyn Relay,
    ) -> Result<Ingested, IngestError> {
        let mut headers = inbound.headers.clone();
        // The quarantine keeps what was sent (an encrypted body stays encrypted there).
        let decrypted = self.decrypt(&inbound, &mut headers);
        let idempotency_key = headers.get("idempotency-key").cloned().or_else(|| redrive_key.clone());
        if let Some(key) = &redrive_key {
            headers.insert(REDRIVE_HEADER.to_string(), key.clone());
        }
        let parsed = decrypted.and_then(|decrypted| {
            let body: &[u8] = decrypted.as_deref().unwrap_or(&inbound.body);
            let delivery = Delivery {
                received_at: sources::truncate_to_micros(inbound.received_at),
                headers: headers.clone(),
                idempotency_key: idempotency_key.as_deref(),
                path_id: inbound.path_id.as_deref(),
            };
            let value = sources::parse_json(body)?;
            // parse_json succeeded, so the body is UTF-8.
            let text = String::from_utf8_lossy(body);
            (inbound.parse)(&text, &value, &delivery).map(|parsed| (value, parsed))
        });
        let (value, parsed) = match parsed {
            Ok(ok) => ok,
            Err(error) => {
                if redrive_key.is_none() {
                    self.quarantine_refusal(&inbound, headers, &error).await?;
                }
                return Err(IngestError::Refused(error));
            }
        };
        let outcomes = self.append(parsed.events.clone(), Some(relay)).await?;
        relay.relay(&outcomes).await;
        Ok(Ingested {
            value,
            parsed,
            outcomes,
        })
    }

    /// Hands events to the writer and waits for their commit at most `server.commit_deadline_ms`; past
    /// it the caller is told to retry, never kept waiting. The events may still commit afterwards (the
    /// sender's retry is then recognised as a redelivery, which calls for no command): `late` then sends
    /// the commands they committed with them as soon as they have, so a relay is not left to the next
    /// start's recovery.
    pub async fn append(
        &self,
        events: Vec<NewEvent>,
        late: Option<&dyn Relay>,
    ) -> Result<Vec<AppendOutcome>, IngestError> {
        let writer = self.writer.clone();
        let mut appending = Box::pin(async move { writer.append(events).await });
        match tokio::time::timeout(self.commit_deadline(), &mut appending).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                tracing::warn!(
                    deadline_ms = self.config.server.commit_deadline_ms,
                    "the writer did not commit in time"
                );
                if let Some(relay) = late.map(|r| r.to_owned_relay()) {
                    tokio::spawn(async move {
                        if let Ok(outcomes) = appending.await {
                            tracing::info!("events committed after their deadline; sending their commands");
                            relay.relay(&outcomes).await;
                        }
                    });
                }
                Err(IngestError::CommitTimeout)
            }
        }
    }

    /// Keeps a refused delivery, waiting at most `server.commit_deadline_ms` like [`Pipeline::append`],
    /// then trims the quarantine to `retention.quarantine_max_entries`.
    pub async fn quarantine(&self, entry: NewQuarantine) -> Result<i64, IngestError> {
        let id = match tokio::time::timeout(self.commit_deadline(), self.writer.quarantine(entry)).await {
            Ok(result) => result?,
            Err(_) => return Err(IngestError::QuarantineTimeout),
        };
        // Never more than `retention.quarantine_max_entries`: a flood of junk pushes out the oldest.
        let max = self.config.retention.quarantine_max_entries;
        if max > 0 {
            self.store.trim_quarantine(max).await?;
        }
        Ok(id)
    }

    fn commit_deadline(&self) -> Duration {
        Duration::from_millis(self.config.server.commit_deadline_ms)
    }

    async fn quarantine_refusal(
        &self,
        inbound: &Inbound,
        headers: BTreeMap<String, String>,
        error: &PayloadError,
    ) -> Result<i64, IngestError> {
        let entry = NewQuarantine {
            received_at: inbound.received_at,
            path: inbound.origin.clone(),
            platform: Some(inbound.platform),
            error_code: error.code().to_string(),
            error_message: error.to_string(),
            status: inbound.answered.map_or(0, |status| status(error)),
            headers,
            body: inbound.body.clone(),
        };
        self.quarantine(entry).await
    }

    /// VCC Live's encrypted bodies: the decrypted body, with the fact kept in the stored headers; None
    /// for a plain body. Refused when no key is configured or the body or IV is bad.
    fn decrypt(
        &self,
        inbound: &Inbound,
        headers: &mut BTreeMap<String, String>,
    ) -> Result<Option<Vec<u8>>, PayloadError> {
        let (Platform::Vcc, Some(iv)) = (inbound.platform, inbound.encryption_iv.as_deref()) else {
            return Ok(None);
        };
        headers.insert(IV_HEADER.into(), iv.to_string());
        let plain = self.decrypt_with_key(iv, &inbound.body)?;
        headers.insert(ENCRYPTED_HEADER.into(), "aes-256-ctr".into());
        Ok(Some(plain))
    }

    fn decrypt_with_key(&self, iv: &str, body: &[u8]) -> Result<Vec<u8>, PayloadError> {
        let key = &self.config.vcc.encryption_key;
        if key.is_empty() {
            return Err(PayloadError::InvalidJson(
                "the body is encrypted (`iv` given) but vcc.encryption_key is not set".into(),
            ));
        }
        // Checked at start (startup refuses a malformed key), so this only fails on a config changed under us.
        let key = sources::vcc_crypto::VccKey::from_hex(key.expose()).map_err(PayloadError::InvalidJson)?;
        sources::vcc_crypto::decrypt(&key, iv, body)
    }
}
