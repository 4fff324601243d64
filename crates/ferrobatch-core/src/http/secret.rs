//! `ApiKey`: an API key that never shows itself. Its `Debug` prints `ApiKey(***)`, it has no
//! `Display`, and [`ApiKey::redact`] scrubs it from any text that leaves the HTTP layer (a
//! server may echo the key back in an error message).

use std::fmt;

/// What a redacted key is replaced with.
pub const REDACTED: &str = "***";

/// A secret API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key; leading and trailing whitespace (a stray newline from a file) is dropped.
    /// `None` when nothing is left.
    pub fn new(key: impl Into<String>) -> Option<ApiKey> {
        let key = key.into();
        let trimmed = key.trim();
        (!trimmed.is_empty()).then(|| ApiKey(trimmed.to_string()))
    }

    /// The key itself, for the one place that puts it in a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        text.replace(self.0.as_str(), REDACTED)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Scrub `key` (when there is one) from `text`.
pub fn redact(key: Option<&ApiKey>, text: &str) -> String {
    match key {
        Some(k) => k.redact(text),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let k = ApiKey::new("sk-secret-123").unwrap();
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert!(!format!("{:?}", Some(k)).contains("secret"));
    }

    #[test]
    fn redact_scrubs_every_occurrence() {
        let k = ApiKey::new(" sk-abc\n").unwrap();
        assert_eq!(k.expose(), "sk-abc");
        assert_eq!(k.redact("bad key sk-abc (sk-abc)"), "bad key *** (***)");
        assert_eq!(redact(None, "sk-abc"), "sk-abc");
    }

    #[test]
    fn blank_keys_are_none() {
        assert!(ApiKey::new("  ").is_none());
        assert!(ApiKey::new("").is_none());
    }
}
