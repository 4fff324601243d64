//! A loopback test server that speaks the OpenAI-compatible embeddings and chat APIs,
//! Anthropic's Messages API and Gemini's `batchEmbedContents`, and the three providers' batch
//! APIs ([`BatchFault`] scripts how a batch ends), with fake answers ([`fake`]), configurable latency and caps,
//! scripted faults ([`Fault`]) and a log of every request it received. Tests and benchmarks
//! point a client at it instead of spending money on a real API.
//!
//! [`store_suite`] is the job store test suite every store engine must pass.

mod batches;
pub mod fake;
mod server;
pub mod store_suite;
mod streams;

pub use batches::BatchFault;
pub use server::{
    ErrorStyle, Fault, FaultKind, LoggedRequest, ServerConfig, TestServer, REJECT_MARKER,
};
pub use streams::StreamFault;
