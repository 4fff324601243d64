//! OpenAI and every OpenAI-compatible server: chat completions, embeddings, the Batch API.
//!
//! - [`wire`]: request and response shapes and the online client;
//! - [`batch`]: the provider's batch API.

pub mod batch;
pub mod stream;
pub mod wire;

use crate::error::Provider;
use crate::http::Auth;
use crate::providers::facts::ProviderFacts;

/// What ferrobatch knows about this provider.
pub static FACTS: ProviderFacts = ProviderFacts {
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
    batch_limits: batch::LIMITS,
    poll_interval: batch::POLL_INTERVAL,
    batch_price_factor: 0.5,
    embeddings: Some(wire::embeddings),
    chat: Some(wire::chat),
    batches: batch::make,
};
