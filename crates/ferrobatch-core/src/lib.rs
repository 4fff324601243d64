//! The ferrobatch batching engine, in pure Rust.
//!
//! This crate holds no Python types: the Python bindings (the `ferrobatch` crate at the
//! workspace root) wrap it, and Rust users can drive it directly. See [`engine`] for the
//! batching state machine, [`http`] for the pure parts of the HTTP layer (retry and backoff
//! rules, the shared rate limiter), [`limits`] for rate limits shared in process or across
//! hosts in Redis, and [`error`] for the one error type of this layer.

pub mod cache;
pub mod engine;
pub mod error;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod postgres;
pub mod providers;
pub mod testing;

pub use engine::{
    Batch, BatchCounts, Config, Dispatcher, Engine, LatencySummary, OnFull, Receipt, Stats, Ticket,
    UserConfig, Window, Work, DEFAULT_AGING, LATENCY_BOUNDS,
};
pub use error::{Error, ErrorKind, Provider, StopReason};
