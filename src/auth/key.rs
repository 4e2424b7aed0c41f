//! API keys and scopes: pure types, key generation and hashing (no I/O; the store keeps the hashes).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// What a key may do. `admin` grants everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    /// Conversations, transcripts (every format), the console's pages.
    #[serde(rename = "conversations:read")]
    ConversationsRead,
    /// Raw events of a conversation, the global log, the quarantine.
    #[serde(rename = "events:read")]
    EventsRead,
    /// `/v1/reports/*`.
    #[serde(rename = "reports:read")]
    ReportsRead,
    /// Posting messages and handoffs to conversations.
    #[serde(rename = "commands:write")]
    CommandsWrite,
    /// Everything, plus keys, erasures, quarantine redrive, command retry.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 5] = [
        Scope::ConversationsRead,
        Scope::EventsRead,
        Scope::ReportsRead,
        Scope::CommandsWrite,
        Scope::Admin,
    ];

    /// The scope's name as written in keys, the CLI and the OpenAPI document.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ConversationsRead => "conversations:read",
            Scope::EventsRead => "events:read",
            Scope::ReportsRead => "reports:read",
            Scope::CommandsWrite => "commands:write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope `{0}`: use one of conversations:read, events:read, reports:read, commands:write, admin")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_string()))
    }
}

/// The scopes of a key, as stored: names separated by spaces.
pub fn scopes_to_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

/// Reads stored scope text back.
pub(crate) fn scopes_from_text(text: &str) -> Result<Vec<Scope>, UnknownScope> {
    text.split_whitespace().map(Scope::from_str).collect()
}

/// Whether a set of granted scopes covers `needed` (`admin` covers everything).
pub fn grants(granted: &[Scope], needed: Scope) -> bool {
    granted.iter().any(|&s| s == needed || s == Scope::Admin)
}

/// Prefix of every key this service issues (recognisable in secret scanners).
pub(crate) const KEY_PREFIX: &str = "hlk_";

/// A freshly generated key: 32 random bytes from the operating system, hex, after [`KEY_PREFIX`].
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// What the store keeps of a key: hex SHA-256. Keys are 256 random bits, so a fast hash is enough
/// (nothing to brute-force), and it lets a key be found by its hash.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Unique name (who uses it: shows in request logs).
    pub name: String,
    /// [`hash_key`] of the key.
    pub key_hash: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (recorded at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key name: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub(crate) fn check_key_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!(
            "key name `{name}` must be 1 to 64 letters, digits, `.`, `_`, `-` or `@`"
        ));
    }
    Ok(())
}

/// A new key named `name` with `scopes`: what the store keeps, and the key to hand out once.
pub fn new_key(name: &str, scopes: &[Scope]) -> Result<(StoredKey, String), String> {
    check_key_name(name)?;
    if scopes.is_empty() {
        return Err("a key needs at least one scope".into());
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let key = generate_key();
    let stored = StoredKey {
        name: name.to_string(),
        key_hash: hash_key(&key),
        scopes,
        created_at: crate::sources::truncate_to_micros(Utc::now()),
        last_used_at: None,
    };
    Ok((stored, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_round_trip_and_match_serde() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
        assert!("conversations:write".parse::<Scope>().is_err());
        assert_eq!(
            scopes_from_text(&scopes_to_text(&[Scope::EventsRead, Scope::Admin])),
            Ok(vec![Scope::EventsRead, Scope::Admin])
        );
    }

    #[test]
    fn admin_grants_everything_and_others_only_themselves() {
        for needed in Scope::ALL {
            assert!(grants(&[Scope::Admin], needed));
        }
        assert!(grants(&[Scope::ReportsRead], Scope::ReportsRead));
        assert!(!grants(&[Scope::ReportsRead], Scope::ConversationsRead));
        assert!(!grants(&[Scope::ConversationsRead, Scope::EventsRead], Scope::Admin));
        assert!(!grants(&[], Scope::ConversationsRead));
    }

    #[test]
    fn generated_keys_are_distinct_and_only_their_hash_is_kept() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(!hash_key(&a).contains(&a[KEY_PREFIX.len()..]));
    }

    #[test]
    fn key_names_are_checked() {
        assert!(check_key_name("ci-bot@prod.1").is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(65)] {
            assert!(check_key_name(bad).is_err(), "{bad}");
        }
    }
}
