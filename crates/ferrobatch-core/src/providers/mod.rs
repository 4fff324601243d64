//! The providers ferrobatch speaks to, one folder each (its facts, wire shapes and online
//! client, batch API), and the registry that lists them: the one place a provider is chosen.
//!
//! - [`facts`]: what is known about a provider;
//! - [`batch`]: the batch-API vocabulary every provider's batch API speaks;
//! - [`openai`], [`anthropic`], [`gemini`]: the providers;
//! - the registry: [`REGISTRY`], [`by_name`], [`detect`], [`wire`], [`batch_provider`].

pub mod anthropic;
pub mod batch;
pub mod facts;
pub mod gemini;
pub mod openai;
mod registry;

pub use facts::ProviderFacts;
pub use registry::{batch_provider, by_name, detect, names, wire, REGISTRY};
