//! The tokens an Anthropic answer reports (whole or streamed, online or in a batch), with
//! prompt caching's two extra counts, and what they cost.

use serde_json::Value;

use crate::http::usage::UsageBook;

/// Tokens a response reports, with prompt caching's two extra counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageUsage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the cache.
    pub cache_read_input_tokens: u64,
}

impl MessageUsage {
    /// The `usage` object of a response.
    pub fn of(response: &Value) -> MessageUsage {
        let u = response.get("usage");
        let n = |k: &str| {
            u.and_then(|u| u.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        MessageUsage {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
        }
    }

    /// Every input token, cached or not.
    pub fn all_input(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
    }

    /// What it cost at `book`'s prices for `model` (cache writes and reads at their prices).
    pub fn cost(&self, book: &UsageBook, model: &str) -> Option<f64> {
        book.cost_cached(
            model,
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
            self.output_tokens,
        )
    }
}
