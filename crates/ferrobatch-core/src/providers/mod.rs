//! The providers ferrobatch speaks to, and the one place a provider is chosen.
//!
//! [`REGISTRY`] holds each provider's facts: its default base URL, the environment variables
//! its official SDK reads (with the SDK's meaning), the hosts that identify it, how it
//! authenticates, and its batch API's limits, poll interval and price factor. The Python
//! modules, the bindings and the CLI ask [`by_name`], [`detect`] and [`base_url`]; none of
//! them decides a provider again.

use std::time::Duration;

use crate::error::{Error, Provider};
use crate::http::Auth;
use crate::jobs::batch_api::{
    self, anthropic::AnthropicBatches, gemini::GeminiBatches, openai::OpenAiBatches, BatchApi,
};
use crate::jobs::{ChunkLimits, Endpoint};

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
    pub batch_limits: ChunkLimits,
    /// Its batch API: how often a batch is polled by default.
    pub poll_interval: Duration,
    /// Its batch API: the price of a batched request relative to the online price.
    pub batch_price_factor: f64,
}

/// Every provider, the default (OpenAI-compatible) first.
pub static REGISTRY: [ProviderFacts; 3] = [
    ProviderFacts {
        name: "openai",
        provider: Provider::OpenAi,
        default_base_url: "https://api.openai.com/v1",
        key_env: &["OPENAI_API_KEY"],
        base_url_env: Some("OPENAI_BASE_URL"),
        implied_version: None,
        hosts: &["api.openai.com"],
        auth: Auth::Bearer,
        headers: &[],
        endpoints: &["/v1/chat/completions", "/v1/embeddings"],
        batch_limits: batch_api::openai::LIMITS,
        poll_interval: batch_api::openai::POLL_INTERVAL,
        batch_price_factor: 0.5,
    },
    ProviderFacts {
        name: "anthropic",
        provider: Provider::Anthropic,
        default_base_url: "https://api.anthropic.com/v1",
        key_env: &["ANTHROPIC_API_KEY"],
        base_url_env: Some("ANTHROPIC_BASE_URL"),
        implied_version: Some("/v1"),
        hosts: &["api.anthropic.com"],
        auth: Auth::XApiKey,
        headers: &[("anthropic-version", "2023-06-01")],
        endpoints: &["/v1/messages"],
        batch_limits: batch_api::anthropic::LIMITS,
        poll_interval: batch_api::anthropic::POLL_INTERVAL,
        batch_price_factor: 0.5,
    },
    ProviderFacts {
        name: "gemini",
        provider: Provider::Gemini,
        default_base_url: "https://generativelanguage.googleapis.com/v1beta",
        // The google-genai SDK reads GOOGLE_API_KEY first when both are set.
        key_env: &["GOOGLE_API_KEY", "GEMINI_API_KEY"],
        base_url_env: None,
        implied_version: None,
        hosts: &["generativelanguage.googleapis.com"],
        auth: Auth::GoogApiKey,
        headers: &[],
        endpoints: &["/v1/chat/completions", "/v1/embeddings"],
        batch_limits: batch_api::gemini::LIMITS,
        poll_interval: batch_api::gemini::POLL_INTERVAL,
        batch_price_factor: 0.5,
    },
];

/// The names of every provider, for messages.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|p| p.name).collect()
}

/// A provider by name; a `ConfigError` naming `field` and the known names otherwise.
pub fn by_name(field: &'static str, name: &str) -> Result<&'static ProviderFacts, Error> {
    REGISTRY.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::config(
            field,
            format!("unknown provider {name:?} (one of {})", names().join(", ")),
        )
    })
}

/// The host of a URL (`https://user@host:443/path` is `host`), lowercased.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    host.to_ascii_lowercase()
}

/// The provider behind a job endpoint and base URL: the one whose host the URL names, else
/// the one that alone serves the endpoint (`/v1/messages` is Anthropic's), else OpenAI
/// (any OpenAI-compatible server).
pub fn detect(endpoint: &str, base_url: Option<&str>) -> &'static ProviderFacts {
    if let Some(url) = base_url {
        let host = host_of(url);
        if let Some(p) = REGISTRY.iter().find(|p| {
            p.hosts
                .iter()
                .any(|h| host == *h || host.ends_with(&format!(".{h}")))
        }) {
            return p;
        }
    }
    let serving: Vec<&ProviderFacts> = REGISTRY
        .iter()
        .filter(|p| p.endpoints.contains(&endpoint))
        .collect();
    match serving.as_slice() {
        [only] => only,
        _ => &REGISTRY[0],
    }
}

/// Whose wire format a job endpoint speaks online: OpenAI's for chat completions and
/// embeddings (Gemini's OpenAI-compatible routes included), Anthropic's for messages.
pub fn wire(endpoint: &str) -> Result<&'static ProviderFacts, Error> {
    REGISTRY
        .iter()
        .find(|p| p.endpoints.contains(&endpoint))
        .ok_or_else(|| {
            let all: Vec<&str> = REGISTRY
                .iter()
                .flat_map(|p| p.endpoints.iter().copied())
                .collect();
            Error::config(
                "endpoint",
                format!(
                    "unsupported url {endpoint:?} (use one of {})",
                    dedup(all).join(", ")
                ),
            )
        })
}

fn dedup(mut v: Vec<&'static str>) -> Vec<&'static str> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(*x));
    v
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

    /// Whether `url` is this provider's official API (which needs a key).
    pub fn is_official(&self, url: &str) -> bool {
        url.trim_end_matches('/') == self.default_base_url
    }
}

/// The batch API a job's requests go through when sent by `endpoint`'s client: `provider`'s
/// if given, else the one [`detect`] finds for the client's base URL. The same key on the
/// provider's batch routes; costs at the provider's batch price factor.
pub fn batch_api(endpoint: &Endpoint, provider: Option<&str>) -> Result<BatchApi, Error> {
    let transport = endpoint.transport();
    let facts = match provider {
        Some(name) => by_name("batch_provider", name)?,
        None => detect(endpoint.path(), Some(transport.base_url())),
    };
    let sibling = |base: &str| {
        transport.sibling(
            facts.provider,
            base,
            facts.auth,
            transport.usage().scaled(facts.batch_price_factor),
        )
    };
    Ok(match (facts.name, endpoint) {
        ("openai", Endpoint::Chat(c)) => BatchApi::OpenAi(OpenAiBatches {
            transport: sibling(transport.base_url())?,
            endpoint: endpoint.path().to_string(),
            model: c.chat.model.clone(),
        }),
        ("openai", Endpoint::Embeddings(e)) if transport.provider() == Provider::OpenAi => {
            BatchApi::OpenAi(OpenAiBatches {
                transport: sibling(transport.base_url())?,
                endpoint: endpoint.path().to_string(),
                model: e.model_name().to_string(),
            })
        }
        ("anthropic", Endpoint::Messages(m)) => BatchApi::Anthropic(AnthropicBatches {
            transport: sibling(transport.base_url())?,
            model: m.model.clone(),
        }),
        ("gemini", Endpoint::Chat(c)) => {
            // Online through Gemini's OpenAI-compatible routes (`.../v1beta/openai`); the
            // batch routes are the native ones beside them.
            let base = transport.base_url();
            BatchApi::Gemini(GeminiBatches {
                transport: sibling(base.strip_suffix("/openai").unwrap_or(base))?,
                model: c.chat.model.clone(),
            })
        }
        (p, _) => {
            return Err(Error::config(
                "batch_provider",
                format!(
                    "no {p:?} batch API for {} requests (openai: chat completions and OpenAI \
                     embeddings; anthropic: messages; gemini: chat completions)",
                    endpoint.path()
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_by_host_then_endpoint() {
        let gem = "https://generativelanguage.googleapis.com/v1beta/openai";
        assert_eq!(detect("/v1/chat/completions", Some(gem)).name, "gemini");
        assert_eq!(detect("/v1/messages", None).name, "anthropic");
        assert_eq!(
            detect("/v1/messages", Some("http://127.0.0.1:9/v1")).name,
            "anthropic"
        );
        assert_eq!(
            detect("/v1/chat/completions", Some("http://127.0.0.1:9/v1")).name,
            "openai"
        );
        assert_eq!(
            detect(
                "/v1/chat/completions",
                Some("https://API.anthropic.com:443/v1")
            )
            .name,
            "anthropic"
        );
        assert_eq!(host_of("https://u:p@h.example:8080/x?y"), "h.example");
    }

    #[test]
    fn anthropic_base_urls_mean_what_the_sdk_means() {
        let a = by_name("provider", "anthropic").unwrap();
        assert_eq!(
            a.base_url(Some("https://api.anthropic.com")),
            "https://api.anthropic.com/v1"
        );
        assert_eq!(
            a.base_url(Some("https://api.anthropic.com/v1/")),
            "https://api.anthropic.com/v1"
        );
        assert_eq!(
            a.base_url(Some("http://127.0.0.1:8080/proxy")),
            "http://127.0.0.1:8080/proxy/v1"
        );
        let o = by_name("provider", "openai").unwrap();
        assert_eq!(o.base_url(Some("http://h/v1/")), "http://h/v1");
        assert!(by_name("provider", "nope")
            .unwrap_err()
            .to_string()
            .contains("openai, anthropic, gemini"));
    }
}
