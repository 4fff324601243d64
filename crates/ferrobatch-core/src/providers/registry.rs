//! The registry: every provider's facts, and the one place a provider is chosen.
//!
//! [`REGISTRY`] lists each provider's `FACTS` (in its folder): its default base URL, the
//! environment variables its official SDK reads (with the SDK's meaning), the hosts that
//! identify it, how it authenticates, and its batch API's limits, poll interval, price factor
//! and maker. The Python modules, the bindings and the CLI ask [`by_name`], [`detect`] and
//! [`ProviderFacts::base_url`]; none of them decides a provider again.

use crate::error::Error;
use crate::http::Transport;
use crate::providers::batch::{BatchProvider, BatchSetup};
use crate::providers::facts::ProviderFacts;
use crate::providers::{anthropic, gemini, openai};

/// Every provider, the default (OpenAI-compatible) first.
pub static REGISTRY: [&ProviderFacts; 3] = [&openai::FACTS, &anthropic::FACTS, &gemini::FACTS];

/// The names of every provider, for messages.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().copied().map(|p| p.name).collect()
}

/// A provider by name; a `ConfigError` naming `field` and the known names otherwise.
pub fn by_name(field: &'static str, name: &str) -> Result<&'static ProviderFacts, Error> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.name == name)
        .ok_or_else(|| {
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
        if let Some(p) = REGISTRY.iter().copied().find(|p| {
            p.hosts
                .iter()
                .any(|h| host == *h || host.ends_with(&format!(".{h}")))
        }) {
            return p;
        }
    }
    let serving: Vec<&ProviderFacts> = REGISTRY
        .iter()
        .copied()
        .filter(|p| p.endpoints.contains(&endpoint))
        .collect();
    match serving.as_slice() {
        [only] => only,
        _ => REGISTRY[0],
    }
}

/// Whose wire format a job endpoint speaks online: OpenAI's for chat completions and
/// embeddings (Gemini's OpenAI-compatible routes included), Anthropic's for messages.
pub fn wire(endpoint: &str) -> Result<&'static ProviderFacts, Error> {
    REGISTRY
        .iter()
        .copied()
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

/// The batch API a job's requests go through when sent by an online client (`endpoint`, its
/// `transport` and default `model`): `provider`'s if given, else the one [`detect`] finds for
/// the client's base URL. The same key on the provider's batch routes; costs at the
/// provider's batch price factor.
pub fn batch_provider(
    endpoint: &str,
    transport: &Transport,
    model: String,
    provider: Option<&str>,
) -> Result<Box<dyn BatchProvider>, Error> {
    let facts = match provider {
        Some(name) => by_name("batch_provider", name)?,
        None => detect(endpoint, Some(transport.base_url())),
    };
    (facts.batches)(&BatchSetup {
        endpoint,
        transport,
        model,
        price_factor: facts.batch_price_factor,
        auth: facts.auth,
        basics: facts.batch_basics(),
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
