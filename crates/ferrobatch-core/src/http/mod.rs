//! The HTTP layer, provider-agnostic: one retrying, rate-limited transport and the embedding
//! machinery every provider's wire format plugs into (the formats live in `providers/`).
//!
//! - [`retry`]: which failures are retried and how long to wait (pure, synthetic clock);
//! - [`secret`]: the API key that never shows itself;
//! - [`usage`]: requests, retries, tokens and cost per model;
//! - [`transport`]: the reqwest client that sends, retries and classifies failures;
//! - [`embed`]: splitting a batch into requests and mapping answers back to texts;
//! - [`embedder`]: one embedding model on its transport;
//! - [`chat`]: a provider's chat endpoint, and the client that answers from a cache;
//! - [`sse`]: server-sent events, bounded;
//! - [`chunks`]: what a streamed answer is made of (events, a provider's format, a record);
//! - [`stream`]: a streamed chat answer through the limiter, its clocks and its settlement.

pub mod chat;
pub mod chunks;
pub mod embed;
pub mod embedder;
pub mod retry;
pub mod secret;
pub mod sse;
pub mod stream;
pub mod transport;
pub mod usage;

pub use chat::{ChatAnswer, ChatApi, ChatCache, ChatRequest, ChatSetup, Chatter, MakeChat};
pub use chunks::{
    Step, StreamBook, StreamFormat, StreamOutcome, StreamRequest, StreamStats, StreamUsage,
    DEFAULT_OUTPUT_RESERVATION,
};
pub use embed::{EmbeddingApi, EmbeddingSpec, MakeEmbeddings};
pub use embedder::Embedder;
pub use retry::{Failure, RetryPolicy};
pub use secret::ApiKey;
pub use stream::{ChatStream, StreamClocks};
pub use transport::{Auth, Payload, Retry, Transport, TransportConfig};
pub use usage::{ModelUsage, Price, UsageBook};
