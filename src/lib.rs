//! Python bindings of ferrobatch: the `ferrobatch._native` extension module.
//!
//! Only conversion lives here; batching rules live in the `ferrobatch-core` crate.
//! - `batcher`: `Core`, the native half of `AsyncBatcher`;
//! - `batch`: `Batch`, one dispatched batch as the Python runner sees it;
//! - `crossing`: how results cross into asyncio (one loop callback per batch);
//! - `errors`: the exception tree and the one mapping from core errors;
//! - `stats`: typed stats snapshots.

mod batch;
mod batcher;
mod crossing;
mod errors;
mod stats;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<batcher::Core>()?;
    m.add_class::<batch::Batch>()?;
    m.add_class::<stats::BatcherStats>()?;
    m.add_class::<stats::LatencySummary>()?;
    errors::register(m)?;
    Ok(())
}
