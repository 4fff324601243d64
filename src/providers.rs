//! The provider registry as Python sees it: the core decides, Python asks.

use ferrobatch_core::providers::{self, ProviderFacts};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_pyerr;

fn facts<'py>(py: Python<'py>, p: &ProviderFacts) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", p.name)?;
    d.set_item("default_base_url", p.default_base_url)?;
    d.set_item("key_env", p.key_env.to_vec())?;
    d.set_item("base_url_env", p.base_url_env)?;
    d.set_item("endpoints", p.endpoints.to_vec())?;
    d.set_item("poll_interval", p.poll_interval.as_secs_f64())?;
    d.set_item("batch_price_factor", p.batch_price_factor)?;
    d.set_item("batch_requests", p.batch_limits.requests)?;
    d.set_item("batch_bytes", p.batch_limits.bytes)?;
    Ok(d)
}

/// A provider's facts by name (`ConfigError` for an unknown one).
#[pyfunction]
pub(crate) fn provider_facts<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let p = providers::by_name("provider", name).map_err(to_pyerr)?;
    facts(py, p)
}

/// The provider of a job endpoint and base URL.
#[pyfunction]
#[pyo3(signature = (endpoint, base_url=None))]
pub(crate) fn detect_provider(endpoint: &str, base_url: Option<&str>) -> &'static str {
    providers::detect(endpoint, base_url).name
}

/// The base URL a provider's requests go to: `base_url` if given, else the official SDK's
/// environment variable (with the SDK's meaning), else the official URL.
#[pyfunction]
#[pyo3(signature = (name, base_url=None))]
pub(crate) fn provider_base_url(name: &str, base_url: Option<&str>) -> PyResult<String> {
    let p = providers::by_name("provider", name).map_err(to_pyerr)?;
    Ok(p.base_url(base_url))
}

/// The key for `base_url` of provider `name`: `api_key` if given, else the first of the
/// provider's variables that is set; `ConfigError` when the official API would get none.
#[pyfunction]
#[pyo3(signature = (name, base_url, api_key=None))]
pub(crate) fn provider_key(
    name: &str,
    base_url: &str,
    api_key: Option<String>,
) -> PyResult<Option<String>> {
    let p = providers::by_name("provider", name).map_err(to_pyerr)?;
    p.key(api_key, base_url, "api_key", "pass api_key=...")
        .map_err(to_pyerr)
}
