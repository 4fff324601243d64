//! Python bindings of ferrobatch: the `ferrobatch._native` extension module.
//!
//! Only conversion lives here; batching rules live in the `ferrobatch-core` crate.
//! - `batcher`: the native half of `AsyncBatcher` (its engine handle, `ItemFuture`, sinks,
//!   and the three ways a batch runs: on the loop, on Rust threads, natively on tokio);
//! - `errors`: the exception tree and the one mapping from core errors;
//! - `exit`: entering Python from Rust threads safely up to interpreter exit;
//! - `stats`: typed stats snapshots;
//! - `runtime`: the one tokio runtime; `task`: Rust async work awaited from Python;
//! - `http`: the native halves of the HTTP batchers; `json`: JSON to and from Python;
//! - `limits`: `RateLimiter`, in process or shared through Redis; `cache`: `Cache`, the
//!   result cache the HTTP clients consult;
//! - `providers`: the core's provider registry, asked by the Python modules and the CLI;
//! - `testserver`: the loopback test server for `ferrobatch.testing`;
//! - `jobs`: the job store (SQLite or PostgreSQL) and the job runner for `ferrobatch.jobs`.

mod batcher;
mod cache;
mod errors;
mod exit;
mod http;
mod job_input;
mod jobs;
mod json;
mod limits;
mod providers;
mod runtime;
mod stats;
mod stream;
mod task;
mod testserver;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<batcher::Core>()?;
    m.add_class::<batcher::Batch>()?;
    m.add_class::<batcher::ItemFuture>()?;
    m.add_class::<batcher::NativeFn>()?;
    m.add_class::<stats::BatcherStats>()?;
    m.add_class::<stats::LatencySummary>()?;
    m.add_class::<limits::RateLimiter>()?;
    m.add_class::<cache::Cache>()?;
    m.add_class::<http::EmbeddingsClient>()?;
    m.add_class::<http::ChatClient>()?;
    m.add_class::<http::Uncached>()?;
    m.add_class::<stream::PyChatStream>()?;
    m.add_class::<testserver::TestServer>()?;
    m.add_class::<jobs::JobStore>()?;
    m.add_class::<jobs::JobRunner>()?;
    m.add_class::<jobs::JobWorker>()?;
    m.add_class::<job_input::JobInput>()?;
    m.add_function(wrap_pyfunction!(job_input::read_job_input, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::_store_suite, m)?)?;
    m.add_function(wrap_pyfunction!(task::_oneshot_probe, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::estimate_requests, m)?)?;
    m.add_function(wrap_pyfunction!(testserver::fake_embedding, m)?)?;
    m.add_function(wrap_pyfunction!(providers::provider_facts, m)?)?;
    m.add_function(wrap_pyfunction!(providers::detect_provider, m)?)?;
    m.add_function(wrap_pyfunction!(providers::provider_base_url, m)?)?;
    m.add_function(wrap_pyfunction!(providers::provider_key, m)?)?;
    errors::register(m)?;
    exit::register(m)?;
    Ok(())
}
