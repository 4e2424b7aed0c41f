//! Console sessions: a random id in an `HttpOnly; SameSite=Strict` cookie, the session kept in memory with
//! its own CSRF token. A session holds who signed in (the key's name and scopes); the key itself is checked
//! again on every request, so a revoked key ends its sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub(crate) const COOKIE: &str = "ledger_session";

/// A session ends after this long without a request.
pub(crate) const IDLE: Duration = Duration::from_secs(8 * 3600);

/// Most sessions kept at once; the least recently used go first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// What signed in: the API key as given (checked again on every request; kept only in memory).
    pub credential: String,
    /// Token the console's forms carry (`csrf` field), compared with the session's.
    pub csrf: String,
    /// A one-time message for the next page (e.g. the outcome of a redrive).
    pub flash: Option<String>,
    last_seen: Instant,
}

/// Every live session, shared by the workers.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Sessions are looked up by a digest of the cookie, so the map never holds the cookie itself.
fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for a credential that has just been checked; returns the cookie value.
    pub fn create(&self, credential: String) -> String {
        let id = random_token();
        let session = Session {
            credential,
            csrf: random_token(),
            flash: None,
            last_seen: Instant::now(),
        };
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(digest(&id), session);
        id
    }

    /// The session a cookie names, when it exists and has not been idle too long (marks it used).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(id);
        let now = Instant::now();
        match map.get_mut(&key) {
            Some(s) if now.duration_since(s.last_seen) < IDLE => {
                s.last_seen = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Takes the session's one-time message.
    pub(crate) fn take_flash(&self, id: &str) -> Option<String> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(&digest(id)).and_then(|s| s.flash.take())
    }

    /// Leaves a one-time message for the session's next page.
    pub(crate) fn set_flash(&self, id: &str, message: String) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&digest(id)) {
            s.flash = Some(message);
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&digest(id));
    }
}

/// Whether a form's token is the session's (constant time).
pub(crate) fn csrf_matches(session: &Session, given: &str) -> bool {
    let a = Sha256::digest(session.csrf.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    bool::from(a.ct_eq(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let sessions = Sessions::default();
        let id = sessions.create("key-1".into());
        assert_eq!(id.len(), 64);
        let s = sessions.get(&id).map(|s| s.credential);
        assert_eq!(s.as_deref(), Some("key-1"));
        assert!(sessions.get("not-a-session").is_none());
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn each_session_has_its_own_csrf_token() {
        let sessions = Sessions::default();
        let (a, b) = (sessions.create("k".into()), sessions.create("k".into()));
        let (Some(a), Some(b)) = (sessions.get(&a), sessions.get(&b)) else {
            panic!("sessions missing")
        };
        assert_ne!(a.csrf, b.csrf);
        assert!(csrf_matches(&a, &a.csrf));
        assert!(!csrf_matches(&a, &b.csrf));
        assert!(!csrf_matches(&a, ""));
    }

    #[test]
    fn a_flash_message_is_shown_once() {
        let sessions = Sessions::default();
        let id = sessions.create("k".into());
        sessions.set_flash(&id, "done".into());
        assert_eq!(sessions.take_flash(&id).as_deref(), Some("done"));
        assert_eq!(sessions.take_flash(&id), None);
    }
}
