//! `UsageBook`: per-model counts of what a client spent — requests, retries, failed requests,
//! input and output tokens — and their cost from user-supplied prices (USD per 1M tokens).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Prices of one model in USD per 1M tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    /// USD per 1M input (prompt) tokens.
    pub input: f64,
    /// USD per 1M output (completion) tokens.
    pub output: f64,
    /// USD per 1M input tokens written to a prompt cache (Anthropic); 1.25 × `input` when
    /// None, Anthropic's 5-minute cache price.
    pub cache_write: Option<f64>,
    /// USD per 1M input tokens read from a prompt cache (Anthropic); 0.1 × `input` when None.
    pub cache_read: Option<f64>,
}

impl Price {
    /// The price of writing the cache.
    pub fn cache_write(&self) -> f64 {
        self.cache_write.unwrap_or(self.input * 1.25)
    }

    /// The price of reading the cache.
    pub fn cache_read(&self) -> f64 {
        self.cache_read.unwrap_or(self.input * 0.1)
    }
}

/// What one model has used so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelUsage {
    /// HTTP requests whose answer was used.
    pub requests: u64,
    /// Attempts that were retried (each retry counts once).
    pub retries: u64,
    /// Requests that ended in an error after their retries.
    pub failed_requests: u64,
    /// Input tokens, as the server reported them (estimated where it reports none).
    pub input_tokens: u64,
    /// Output tokens, as the server reported them.
    pub output_tokens: u64,
    /// Cost in USD, when a price for the model is known.
    pub cost: Option<f64>,
    /// Error answers by HTTP status, every attempt counted (a 429 retried twice counts 2).
    pub error_statuses: BTreeMap<u16, u64>,
    /// Items answered from the result cache, never sent (for embeddings: texts).
    pub cached_requests: u64,
    /// The input tokens those cached answers used when they were paid for.
    pub cached_input_tokens: u64,
    /// What the cached answers would have cost at `prices` (None without a price).
    pub saved_cost: Option<f64>,
}

impl ModelUsage {
    /// Tokens used and what they cost (None: no price), counted once they are spent.
    fn spent(&mut self, input_tokens: u64, output_tokens: u64, cost: Option<f64>) {
        self.input_tokens += input_tokens;
        self.output_tokens += output_tokens;
        if let Some(cost) = cost {
            self.cost = Some(self.cost.unwrap_or(0.0) + cost);
        }
    }
}

/// Usage per model, shared by every request of one client.
#[derive(Debug, Default)]
pub struct UsageBook {
    prices: BTreeMap<String, Price>,
    models: Mutex<BTreeMap<String, ModelUsage>>,
}

impl UsageBook {
    /// A book with the given prices (models without a price report `cost: None`).
    pub fn new(prices: BTreeMap<String, Price>) -> Self {
        UsageBook {
            prices,
            models: Mutex::new(BTreeMap::new()),
        }
    }

    /// A fresh book whose prices are these times `factor` (0.5 for the providers' batch
    /// APIs, which charge half).
    pub fn scaled(&self, factor: f64) -> UsageBook {
        let prices = self
            .prices
            .iter()
            .map(|(m, p)| {
                let price = Price {
                    input: p.input * factor,
                    output: p.output * factor,
                    cache_write: Some(p.cache_write() * factor),
                    cache_read: Some(p.cache_read() * factor),
                };
                (m.clone(), price)
            })
            .collect();
        UsageBook::new(prices)
    }

    fn with<R>(&self, model: &str, f: impl FnOnce(&mut ModelUsage) -> R) -> R {
        let mut g = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let entry = g.entry(model.to_string()).or_default();
        f(entry)
    }

    /// What these tokens of `model` cost in USD; None without a price for it.
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64) -> Option<f64> {
        let p = self.prices.get(model)?;
        Some((input_tokens as f64 * p.input + output_tokens as f64 * p.output) / 1e6)
    }

    /// What a request with prompt caching costs: `uncached` input tokens at the input price,
    /// `cache_write` and `cache_read` tokens at the cache prices, `output` tokens.
    pub fn cost_cached(
        &self,
        model: &str,
        uncached: u64,
        cache_write: u64,
        cache_read: u64,
        output: u64,
    ) -> Option<f64> {
        let p = self.prices.get(model)?;
        let usd = uncached as f64 * p.input
            + cache_write as f64 * p.cache_write()
            + cache_read as f64 * p.cache_read()
            + output as f64 * p.output;
        Some(usd / 1e6)
    }

    /// A successful request and the tokens it used.
    pub fn record_success(&self, model: &str, input_tokens: u64, output_tokens: u64) {
        let cost = self.cost(model, input_tokens, output_tokens);
        self.record_success_costing(model, input_tokens, output_tokens, cost);
    }

    /// A request that failed after the server had begun answering (a stream cut, failed or
    /// dropped midway): a failure, and the tokens it used and what they cost, since they
    /// were spent.
    pub fn record_partial(
        &self,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        add: Option<f64>,
    ) {
        self.with(model, |u| {
            u.failed_requests += 1;
            u.spent(input_tokens, output_tokens, add);
        });
    }

    /// A successful request, the tokens it used and what they cost (None: no price).
    pub fn record_success_costing(
        &self,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        add: Option<f64>,
    ) {
        self.with(model, |u| {
            u.requests += 1;
            u.spent(input_tokens, output_tokens, add);
        });
    }

    /// `items` answered from the result cache, which used `input_tokens` and `output_tokens`
    /// when they were paid for: counted apart, with what they would have cost; `cost`,
    /// `input_tokens` and `output_tokens` count only what was sent.
    pub fn record_cached(&self, model: &str, items: u64, input_tokens: u64, output_tokens: u64) {
        let saved = self.cost(model, input_tokens, output_tokens);
        self.with(model, |u| {
            u.cached_requests += items;
            u.cached_input_tokens += input_tokens;
            if let Some(saved) = saved {
                u.saved_cost = Some(u.saved_cost.unwrap_or(0.0) + saved);
            }
        });
    }

    /// An attempt answered with an error status.
    pub fn record_status(&self, model: &str, status: u16) {
        self.with(model, |u| *u.error_statuses.entry(status).or_default() += 1);
    }

    /// One attempt that will be retried.
    pub fn record_retry(&self, model: &str) {
        self.with(model, |u| u.retries += 1);
    }

    /// A request that failed for good.
    pub fn record_failure(&self, model: &str) {
        self.with(model, |u| u.failed_requests += 1);
    }

    /// A request recorded as failed is sent again in a form the server accepts (floats after
    /// a refused base64): it counts as a retry, not as a failure.
    pub fn failure_was_retried(&self, model: &str) {
        self.with(model, |u| {
            u.failed_requests = u.failed_requests.saturating_sub(1);
            u.retries += 1;
        });
    }

    /// A snapshot of every model's usage; a priced model that has not been used yet shows
    /// zero counts and a zero cost.
    pub fn snapshot(&self) -> BTreeMap<String, ModelUsage> {
        let mut out = self
            .models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (model, u) in out.iter_mut() {
            if u.cost.is_none() && self.prices.contains_key(model) {
                u.cost = Some(0.0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_prices_per_million_tokens() {
        let mut prices = BTreeMap::new();
        prices.insert(
            "m".to_string(),
            Price {
                input: 0.02,
                output: 1.0,
                ..Price::default()
            },
        );
        let book = UsageBook::new(prices);
        book.record_success("m", 500_000, 1_000);
        book.record_success("m", 500_000, 1_000);
        book.record_retry("m");
        book.record_failure("other");
        let s = book.snapshot();
        let m = &s["m"];
        assert_eq!(
            (m.requests, m.retries, m.input_tokens, m.output_tokens),
            (2, 1, 1_000_000, 2_000)
        );
        assert!((m.cost.unwrap() - (0.02 + 0.002)).abs() < 1e-12);
        assert_eq!(s["other"].failed_requests, 1);
        assert_eq!(s["other"].cost, None);
    }

    #[test]
    fn cached_input_has_its_own_prices_and_batches_halve_them_all() {
        let p = Price {
            input: 1.0,
            output: 5.0,
            ..Price::default()
        };
        let book = UsageBook::new([("m".to_string(), p)].into_iter().collect());
        // 1M uncached, 1M written (1.25), 1M read (0.1), 1M out.
        let full = book.cost_cached("m", 1_000_000, 1_000_000, 1_000_000, 1_000_000);
        assert!((full.unwrap() - (1.0 + 1.25 + 0.1 + 5.0)).abs() < 1e-12);
        let half = book
            .scaled(0.5)
            .cost_cached("m", 1_000_000, 1_000_000, 1_000_000, 1_000_000);
        assert!((half.unwrap() - (1.0 + 1.25 + 0.1 + 5.0) / 2.0).abs() < 1e-12);
        let explicit = Price {
            cache_read: Some(0.3),
            ..p
        };
        assert!((explicit.cache_read() - 0.3).abs() < 1e-12);
    }
}
