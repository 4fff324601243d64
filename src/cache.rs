//! `Cache`: the result cache as Python holds it (`ferrobatch.Cache`), handed to the HTTP
//! clients, which consult it from Rust. Its warnings (an unreachable store, a corrupt entry)
//! go to the `ferrobatch` logger.

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::cache::{CacheConfig, Location};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{config_error, to_pyerr};
use crate::runtime::runtime;

/// A result cache: see docs/guides/cache.md.
#[pyclass(module = "ferrobatch._native", name = "Cache", frozen, weakref)]
pub(crate) struct Cache {
    pub(crate) inner: Arc<ferrobatch_core::cache::Cache>,
}

fn warn(message: &str) {
    let _ = crate::exit::attach(|py| {
        let logger = py
            .import("logging")
            .and_then(|l| l.call_method1("getLogger", ("ferrobatch",)));
        if let Ok(logger) = logger {
            let _ = logger.call_method1("warning", ("%s", message));
        }
    });
}

#[pymethods]
impl Cache {
    #[new]
    #[pyo3(signature = (location, *, ttl=None, namespace=None, max_entries=None))]
    fn new(
        location: &str,
        ttl: Option<f64>,
        namespace: Option<String>,
        max_entries: Option<i64>,
    ) -> PyResult<Self> {
        let ttl = match ttl {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(t) => return Err(config_error("ttl", format!("must be seconds > 0, got {t}"))),
        };
        let max_entries = match max_entries {
            None => None,
            Some(n) if n >= 1 => Some(n as u64),
            Some(n) => {
                return Err(config_error(
                    "max_entries",
                    format!("must be at least 1, got {n}"),
                ))
            }
        };
        let config = CacheConfig {
            location: Location::parse(location).map_err(to_pyerr)?,
            ttl,
            namespace,
            max_entries,
        };
        let inner =
            ferrobatch_core::cache::Cache::open(config, Arc::new(warn)).map_err(to_pyerr)?;
        Ok(Cache {
            inner: Arc::new(inner),
        })
    }

    /// Counters since the cache was opened: hits, misses, writes, corrupt entries met, store
    /// errors.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("writes", s.writes)?;
        d.set_item("corrupt", s.corrupt)?;
        d.set_item("errors", s.errors)?;
        Ok(d)
    }

    /// Entries stored now (asks the store: blocks, with the GIL released).
    fn entries(&self, py: Python<'_>) -> PyResult<u64> {
        let inner = Arc::clone(&self.inner);
        py.detach(|| runtime().block_on(async move { inner.entries().await }))
            .map_err(to_pyerr)
    }

    /// Remove every entry of this cache (its namespace); how many there were. Blocks, with
    /// the GIL released.
    fn clear(&self, py: Python<'_>) -> PyResult<u64> {
        let inner = Arc::clone(&self.inner);
        py.detach(|| runtime().block_on(async move { inner.clear().await }))
            .map_err(to_pyerr)
    }

    /// Where the entries live (a password replaced).
    #[getter]
    fn location(&self) -> String {
        self.inner.config().location.describe()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Cache({:?}, ttl={}, namespace={}, max_entries={})",
            c.location.describe(),
            c.ttl
                .map_or("None".into(), |t| format!("{}", t.as_secs_f64())),
            c.namespace
                .as_ref()
                .map_or("None".into(), |n| format!("{n:?}")),
            c.max_entries.map_or("None".into(), |n| n.to_string()),
        )
    }
}
