//! The HTTP layer: providers' wire formats on one retrying, rate-limited transport.
//!
//! - [`retry`]: which failures are retried and how long to wait (pure, synthetic clock);
//! - [`secret`]: the API key that never shows itself;
//! - [`usage`]: requests, retries, tokens and cost per model;
//! - [`transport`]: the reqwest client that sends, retries and classifies failures;
//! - [`embed`]: splitting a batch into requests and mapping answers back to texts;
//! - [`openai`], [`gemini`], [`anthropic`]: the providers' request and response formats;
//! - [`embedder`]: one embedding model on its transport.

pub mod anthropic;
pub mod embed;
pub mod embedder;
pub mod gemini;
pub mod openai;
pub mod retry;
pub mod secret;
pub mod transport;
pub mod usage;

pub use embedder::{Embedder, EmbeddingModel};
pub use retry::{Failure, RetryPolicy};
pub use secret::ApiKey;
pub use transport::{Auth, Payload, Retry, Transport, TransportConfig};
pub use usage::{ModelUsage, Price, UsageBook};
