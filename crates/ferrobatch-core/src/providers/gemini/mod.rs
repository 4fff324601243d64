//! Google's Gemini API: native embeddings, chat through its OpenAI-compatible routes, Batch Mode.
//!
//! - [`wire`]: request and response shapes and the online client;
//! - [`batch`]: the provider's batch API.

pub mod batch;
pub mod wire;

use crate::error::Provider;
use crate::http::Auth;
use crate::providers::facts::ProviderFacts;

/// What ferrobatch knows about this provider.
pub static FACTS: ProviderFacts = ProviderFacts {
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
    batch_limits: batch::LIMITS,
    poll_interval: batch::POLL_INTERVAL,
    batch_price_factor: 0.5,
    embeddings: Some(wire::embeddings),
    chat: None,
    batches: batch::make,
};
