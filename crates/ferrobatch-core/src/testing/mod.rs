//! A loopback test server that speaks the OpenAI-compatible embeddings and chat APIs and
//! Gemini's `batchEmbedContents`, with fake answers ([`fake`]), configurable latency and caps,
//! scripted faults ([`Fault`]) and a log of every request it received. Tests and benchmarks
//! point a client at it instead of spending money on a real API.

pub mod fake;
mod server;

pub use server::{
    ErrorStyle, Fault, FaultKind, LoggedRequest, ServerConfig, TestServer, REJECT_MARKER,
};
