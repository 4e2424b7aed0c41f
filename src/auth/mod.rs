//! Access control: who is calling (a [`Principal`]) and what it may do ([`Scope`]). Keys are kept
//! hashed in the store ([`crate::store::KeyStore`]); the [`KeyRing`] answers from a snapshot of them
//! that is never older than [`KEY_REFRESH`], so a key created or revoked by the CLI while the service
//! runs counts within a second.

pub mod key;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;

pub use key::{generate_key, grants, hash_key, Scope, StoredKey, UnknownScope};

use crate::store::{Store, StoreError};

/// The longest a key snapshot is trusted before the store is read again.
pub(crate) const KEY_REFRESH: Duration = Duration::from_millis(500);

/// How often a key's last use is written (at most once per key in this interval).
pub(crate) const LAST_USE_INTERVAL: Duration = Duration::from_secs(60);

/// The name requests carry when the API is open (loopback without keys, or `auth.allow_anonymous`).
pub(crate) const ANONYMOUS: &str = "anonymous";

/// Who made a request. The API puts it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name, or [`ANONYMOUS`].
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// True when no key was presented and the API is open.
    pub anonymous: bool,
}

impl Principal {
    /// Whether it may do what `scope` grants.
    pub(crate) fn allows(&self, scope: Scope) -> bool {
        grants(&self.scopes, scope)
    }

    /// `Ok` when it may do what `scope` grants, else [`AuthError::Forbidden`].
    pub(crate) fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.allows(scope) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                name: self.name.clone(),
                needed: scope,
            })
        }
    }

    fn anonymous() -> Principal {
        Principal {
            name: ANONYMOUS.into(),
            scopes: vec![Scope::Admin],
            anonymous: true,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key presented, and the API needs one.
    #[error("an API key is required: send `Authorization: Bearer <key>`")]
    Missing,
    /// The key is not (or no longer) known.
    #[error("the API key is not valid (unknown or revoked)")]
    Unknown,
    /// The key lacks the scope.
    #[error("the key `{name}` does not grant `{needed}`")]
    Forbidden {
        /// The key's name.
        name: String,
        /// The scope the request needs.
        needed: Scope,
    },
    /// The keys could not be read.
    #[error("the API keys cannot be read: {0}")]
    Store(#[from] StoreError),
}

/// When requests without a key are let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAccess {
    /// The service listens on loopback only: open while no key exists (the local trial).
    pub loopback: bool,
    /// `auth.allow_anonymous`: open even when keys exist.
    pub allow_anonymous: bool,
    /// `auth.open_webhooks`: a platform endpoint without a token takes deliveries on a non-loopback bind.
    pub open_webhooks: bool,
}

impl OpenAccess {
    /// Whether a webhook endpoint with no token configured takes deliveries.
    pub(crate) fn webhooks_open_without_token(self) -> bool {
        self.loopback || self.open_webhooks
    }
}

struct Snapshot {
    loaded: Instant,
    by_hash: HashMap<String, Arc<StoredKey>>,
}

/// The keys the service accepts, read from the store.
pub struct KeyRing {
    store: Arc<dyn Store>,
    access: OpenAccess,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    refresh: tokio::sync::Mutex<()>,
    last_use: Mutex<HashMap<String, Instant>>,
}

impl KeyRing {
    /// A key ring over the store's keys.
    pub fn new(store: Arc<dyn Store>, access: OpenAccess) -> KeyRing {
        KeyRing {
            store,
            access,
            snapshot: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            last_use: Mutex::new(HashMap::new()),
        }
    }

    /// The rules for requests without a key.
    pub(crate) fn access(&self) -> OpenAccess {
        self.access
    }

    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let guard = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|s| s.loaded.elapsed() < KEY_REFRESH).cloned()
    }

    async fn snapshot(&self) -> Result<Arc<Snapshot>, AuthError> {
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        // One reload at a time; whoever waited finds it fresh.
        let _reloading = self.refresh.lock().await;
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let keys = self.store.list_keys().await?;
        let snapshot = Arc::new(Snapshot {
            loaded: Instant::now(),
            by_hash: keys.into_iter().map(|k| (k.key_hash.clone(), Arc::new(k))).collect(),
        });
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Forgets the snapshot (after this service created or revoked a key).
    pub fn invalidate(&self) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether any key exists.
    pub(crate) async fn any_keys(&self) -> Result<bool, AuthError> {
        Ok(!self.snapshot().await?.by_hash.is_empty())
    }

    /// The principal of a key (e.g. one a console session cookie carries).
    pub async fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
        let snapshot = self.snapshot().await?;
        let found = snapshot.by_hash.get(&hash_key(key.trim())).cloned();
        let key = found.ok_or(AuthError::Unknown)?;
        self.record_use(&key.name);
        Ok(Principal {
            name: key.name.clone(),
            scopes: key.scopes.clone(),
            anonymous: false,
        })
    }

    /// The principal of a request that presented `key` (or none): a presented key must be valid;
    /// without one the request is anonymous when the API is open, else [`AuthError::Missing`].
    pub(crate) async fn identify(&self, key: Option<&str>) -> Result<Principal, AuthError> {
        if let Some(key) = key {
            return self.authenticate(key).await;
        }
        if self.access.allow_anonymous || (self.access.loopback && !self.any_keys().await?) {
            return Ok(Principal::anonymous());
        }
        Err(AuthError::Missing)
    }

    /// Writes a key's last use in the background, at most once per [`LAST_USE_INTERVAL`].
    fn record_use(&self, name: &str) {
        {
            let mut last = self.last_use.lock().unwrap_or_else(|e| e.into_inner());
            if last.get(name).is_some_and(|t| t.elapsed() < LAST_USE_INTERVAL) {
                return;
            }
            last.insert(name.to_string(), Instant::now());
        }
        let (store, name) = (self.store.clone(), name.to_string());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.touch_key(&name, Utc::now()).await {
                    tracing::warn!(error = %e, key = %name, "could not record the key's last use");
                }
            });
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme matched case-insensitively).
pub(crate) fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
