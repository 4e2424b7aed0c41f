//! Keeping secrets out of what the service writes: passwords inside URLs, and the configured secrets
//! themselves (webhook tokens, API keys, passwords). Pure.

use std::borrow::Cow;

/// What a secret is replaced with.
pub(crate) const MASK: &str = "***";

/// Secrets shorter than this are not scrubbed from log text (every occurrence of a two-letter
/// "secret" would be masked; such a value protects nothing anyway).
pub(crate) const MIN_SCRUBBED_LEN: usize = 4;

/// Replaces the password of every `scheme://user:password@host` URL in `text` with [`MASK`].
pub fn mask_url_passwords(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first of these; the userinfo is what comes before its last '@'.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '\\') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) if colon + 1 < userinfo.len() => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                        out.push_str(&authority[at..]);
                        changed = true;
                    }
                    _ => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Masks every configured secret and every URL password in log text.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// A scrubber for these secret values (empty and very short ones are ignored; longest first, so that
    /// a secret containing another is masked whole).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Scrubber {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.trim().len() >= MIN_SCRUBBED_LEN)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    /// `text` with secrets masked.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = mask_url_passwords(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked_and_the_rest_is_kept() {
        assert_eq!(
            mask_url_passwords("opening postgres://ledger:s3cr3t@db:5432/ledger failed"),
            "opening postgres://ledger:***@db:5432/ledger failed"
        );
        assert_eq!(
            mask_url_passwords("a http://u:p%40ss@h/x and https://v:w@k?q=1"),
            "a http://u:***@h/x and https://v:***@k?q=1"
        );
        assert_eq!(mask_url_passwords("http://user@host/path"), "http://user@host/path");
        assert_eq!(mask_url_passwords("sqlite://data/ledger.db"), "sqlite://data/ledger.db");
        assert_eq!(mask_url_passwords("no url here"), "no url here");
        assert!(matches!(mask_url_passwords("http://host/a@b"), Cow::Borrowed(_)));
    }

    #[test]
    fn configured_secrets_are_masked_longest_first() {
        let scrubber = Scrubber::new(["tok-123".to_string(), "tok-123-long".to_string(), "ab".to_string()]);
        assert_eq!(
            scrubber.scrub("got tok-123-long then tok-123, ab stays"),
            "got *** then ***, ab stays"
        );
        assert_eq!(scrubber.scrub("postgres://u:pw-long@h/db"), "postgres://u:***@h/db");
    }
}
