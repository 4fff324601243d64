//! Anthropic: the Messages API and Message Batches.
//!
//! - [`wire`]: request and response shapes and the online client;
//! - [`batch`]: the provider's batch API.

pub mod batch;
pub mod stream;
pub mod usage;
pub mod wire;

use crate::error::Provider;
use crate::http::Auth;
use crate::providers::facts::ProviderFacts;

/// What ferrobatch knows about this provider.
pub static FACTS: ProviderFacts = ProviderFacts {
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
    batch_limits: batch::LIMITS,
    poll_interval: batch::POLL_INTERVAL,
    batch_price_factor: 0.5,
    embeddings: None,
    chat: Some(wire::chat),
    batches: batch::make,
};
