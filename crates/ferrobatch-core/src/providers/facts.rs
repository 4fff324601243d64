//! `ProviderFacts`: what ferrobatch knows about one provider (each provider's folder holds its
//! own `FACTS`; the registry lists them).

use std::time::Duration;

use crate::error::{Error, Provider};
use crate::http::Auth;
use crate::providers::batch::{BatchBasics, BatchLimits, BatchProvider, BatchSetup};

/// One provider's facts.
#[derive(Debug)]
pub struct ProviderFacts {
    /// `openai`, `anthropic` or `gemini`: the name users and stores use.
    pub name: &'static str,
    /// The error provider (which exception label its errors carry).
    pub provider: Provider,
    /// The official API's base URL, as the clients append paths to it.
    pub default_base_url: &'static str,
    /// The variables a key comes from, in the official SDK's order.
    pub key_env: &'static [&'static str],
    /// The variable the official SDK reads a base URL from.
    pub base_url_env: Option<&'static str>,
    /// The version segment the SDK adds itself to what `base_url_env` (or `base_url=`) holds
    /// (Anthropic's SDK posts to `{ANTHROPIC_BASE_URL}/v1/messages`); given with or
    /// without it, the base URL is used with it.
    pub implied_version: Option<&'static str>,
    /// Hosts whose URLs are this provider's.
    pub hosts: &'static [&'static str],
    /// How requests carry the key.
    pub auth: Auth,
    /// Headers every request carries (Anthropic's `anthropic-version`).
    pub headers: &'static [(&'static str, &'static str)],
    /// The job endpoints (OpenAI Batch API `url`s) its online API serves.
    pub endpoints: &'static [&'static str],
    /// Its batch API: the limits of one batch.
    pub batch_limits: BatchLimits,
    /// Its batch API: how often a batch is polled by default.
    pub poll_interval: Duration,
    /// Its batch API: the price of a batched request relative to the online price.
    pub batch_price_factor: f64,
    /// Its embeddings wire format (None: it has no embeddings API).
    pub embeddings: Option<crate::http::MakeEmbeddings>,
    /// Its chat wire format (None: reach its chat models through an OpenAI-compatible
    /// endpoint).
    pub chat: Option<crate::http::MakeChat>,
    /// Its batch API beside an online client (an error for an endpoint it does not take).
    pub batches: fn(&BatchSetup<'_>) -> Result<Box<dyn BatchProvider>, Error>,
}

impl ProviderFacts {
    /// The base URL requests go to: `explicit` (a `base_url=` or `--base-url`), else the
    /// SDK's variable, else the official one. A provider whose SDK adds the version itself
    /// (Anthropic: `ANTHROPIC_BASE_URL=https://api.anthropic.com`) gets it added here too,
    /// unless the URL already ends with it.
    pub fn base_url(&self, explicit: Option<&str>) -> String {
        let from_env = || {
            self.base_url_env
                .and_then(|v| std::env::var(v).ok())
                .filter(|v| !v.trim().is_empty())
        };
        let Some(url) = explicit.map(str::to_string).or_else(from_env) else {
            return self.default_base_url.to_string();
        };
        let url = url.trim().trim_end_matches('/').to_string();
        match self.implied_version {
            Some(v) if !url.ends_with(v) => format!("{url}{v}"),
            _ => url,
        }
    }

    /// The key from the first of `key_env` that is set (and not empty).
    pub fn key_from_env(&self) -> Option<(&'static str, String)> {
        self.key_env.iter().find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (*name, v))
        })
    }

    /// The key requests to `base_url` carry: `explicit` if given, else the first of
    /// `key_env` that is set. `None` only for a self-hosted URL: the official API needs a
    /// key, and a `ConfigError` on `field` says where one comes from (`how`: "pass
    /// api_key=..." or "pass --api-key-env").
    pub fn key(
        &self,
        explicit: Option<String>,
        base_url: &str,
        field: &'static str,
        how: &str,
    ) -> Result<Option<String>, Error> {
        let key = explicit.or_else(|| self.key_from_env().map(|(_, v)| v));
        if key.is_none() && self.is_official(base_url) {
            return Err(Error::config(
                field,
                format!(
                    "no API key for {base_url}: {how} or set {}",
                    self.key_env.join(" or ")
                ),
            ));
        }
        Ok(key)
    }

    /// Its batch API's facts, for its maker.
    pub fn batch_basics(&self) -> BatchBasics {
        BatchBasics {
            name: self.name,
            provider: self.provider,
            limits: self.batch_limits,
            poll_interval: self.poll_interval,
        }
    }

    /// Whether `url` is this provider's official API (which needs a key).
    pub fn is_official(&self, url: &str) -> bool {
        url.trim_end_matches('/') == self.default_base_url
    }
}
