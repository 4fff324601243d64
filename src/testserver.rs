//! `TestServer`: the core's loopback test server on the shared runtime, for
//! `ferrobatch.testing`.

use std::time::Duration;

use ferrobatch_core::testing::{
    BatchFault, ErrorStyle, Fault, FaultKind, ServerConfig, StreamFault, TestServer as Server,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::config_error;
use crate::json;
use crate::runtime::runtime;

fn seconds(field: &'static str, v: f64) -> PyResult<Duration> {
    if v.is_finite() && v >= 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(config_error(
            field,
            format!("must be seconds >= 0, got {v}"),
        ))
    }
}

/// The test server's fake embedding of `text` (a unit vector derived from a hash of the text;
/// NOT a real embedding), for tests that check which vector came back for which text.
#[pyfunction]
pub(crate) fn fake_embedding(text: &str, dimensions: usize) -> Vec<f64> {
    ferrobatch_core::testing::fake::fake_embedding(text, dimensions)
        .into_iter()
        .map(f64::from)
        .collect()
}

/// A fake OpenAI-compatible and Gemini server on a loopback port.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct TestServer {
    server: Server,
}

#[pymethods]
impl TestServer {
    #[new]
    #[pyo3(signature = (*, host="127.0.0.1", port=0, latency=0.0, dimensions=1536, max_inputs=2048,
                        gemini_max_inputs=100, api_key=None, requests_per_minute=None, base64=true,
                        error_style="openai", batch_duration=0.2, cancel_delay=0.1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        latency: f64,
        dimensions: usize,
        max_inputs: usize,
        gemini_max_inputs: usize,
        api_key: Option<String>,
        requests_per_minute: Option<u32>,
        base64: bool,
        error_style: &str,
        batch_duration: f64,
        cancel_delay: f64,
    ) -> PyResult<Self> {
        let error_style = match error_style {
            "openai" => ErrorStyle::OpenAi,
            "pydantic" => ErrorStyle::Pydantic,
            other => {
                return Err(config_error(
                    "error_style",
                    format!("must be 'openai' or 'pydantic', got {other:?}"),
                ))
            }
        };
        let config = ServerConfig {
            latency: seconds("latency", latency)?,
            dimensions,
            max_inputs,
            gemini_max_inputs,
            api_key,
            requests_per_minute: requests_per_minute.filter(|r| *r > 0),
            base64,
            error_style,
            batch_duration: seconds("batch_duration", batch_duration)?,
            cancel_delay: seconds("cancel_delay", cancel_delay)?,
        };
        let rt = runtime();
        let server = Server::start(rt.handle(), host, port, config).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!(
                "could not start the test server on {host}:{port}: {e}"
            ))
        })?;
        Ok(TestServer { server })
    }

    /// `http://HOST:PORT`.
    #[getter]
    fn url(&self) -> String {
        self.server.url()
    }

    /// The bound port.
    #[getter]
    fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// Seconds added before every answer.
    #[getter]
    fn latency(&self) -> f64 {
        self.server.config().latency.as_secs_f64()
    }

    #[setter]
    fn set_latency(&self, value: f64) -> PyResult<()> {
        let mut c = self.server.config();
        c.latency = seconds("latency", value)?;
        self.server.set_config(c);
        Ok(())
    }

    /// Script a fault for the next `times` requests (whose path contains `path`).
    #[pyo3(signature = (kind, *, times=1, path=None, status=None, retry_after=None,
                        retry_after_ms=None, retry_delay=None, duration=3600.0, done=0))]
    #[allow(clippy::too_many_arguments)]
    fn add_fault(
        &self,
        kind: &str,
        times: u32,
        path: Option<String>,
        status: Option<u16>,
        retry_after: Option<f64>,
        retry_after_ms: Option<u64>,
        retry_delay: Option<f64>,
        duration: f64,
        done: usize,
    ) -> PyResult<()> {
        let kind = match kind {
            "status" => {
                let status = status.ok_or_else(|| config_error("status", "kind='status' needs status=..."))?;
                if !(100..=599).contains(&status) {
                    return Err(config_error("status", format!("must be an HTTP status, got {status}")));
                }
                FaultKind::Status {
                    status,
                    retry_after,
                    retry_after_ms,
                    retry_delay,
                }
            }
            "reset" => FaultKind::Reset,
            "hang" => FaultKind::Hang(seconds("duration", duration)?),
            "malformed" => FaultKind::Malformed,
            "wrong_count" => FaultKind::WrongCount,
            "batch_fail_validation" => FaultKind::Batch(BatchFault::FailValidation),
            "batch_expire" => FaultKind::Batch(BatchFault::Expire { done }),
            "batch_status_zero" => FaultKind::Batch(BatchFault::StatusZero),
            "batch_token_limit" => FaultKind::Batch(BatchFault::TokenLimit),
            "stream_cut" => FaultKind::Stream(StreamFault::CutAfter(done)),
            "stream_error" => FaultKind::Stream(StreamFault::ErrorAfter(done)),
            "stream_no_usage" => FaultKind::Stream(StreamFault::NoUsage),
            "stream_slow_first" => {
                FaultKind::Stream(StreamFault::SlowFirst(seconds("duration", duration)?))
            }
            "stream_stall" => {
                FaultKind::Stream(StreamFault::Stall(done, seconds("duration", duration)?))
            }
            "stream_long" => FaultKind::Stream(StreamFault::Long(done)),
            "endless" => {
                let status = status.unwrap_or(200);
                if !(200..=599).contains(&status) {
                    return Err(config_error("status", format!("must be an HTTP status, got {status}")));
                }
                FaultKind::Endless(status)
            }
            other => {
                return Err(config_error(
                    "kind",
                    format!("must be 'status', 'reset', 'hang', 'malformed', 'wrong_count', 'endless', 'batch_fail_validation', 'batch_expire', 'batch_status_zero', 'batch_token_limit', 'stream_cut', 'stream_error', 'stream_no_usage', 'stream_slow_first', 'stream_stall' or 'stream_long', got {other:?}"),
                ))
            }
        };
        self.server.add_fault(Fault { kind, times, path });
        Ok(())
    }

    /// Drop the scripted faults not yet used.
    fn clear_faults(&self) {
        self.server.clear_faults();
    }

    /// How many scripted fault hits are left.
    fn pending_faults(&self) -> usize {
        self.server.pending_faults()
    }

    /// Every request received, oldest first: dicts with method, path, headers, body, inputs,
    /// status (0: connection closed), fault and at (seconds since start).
    fn requests<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for r in self.server.requests() {
            let d = PyDict::new(py);
            d.set_item("method", r.method)?;
            d.set_item("path", r.path)?;
            let h = PyDict::new(py);
            for (k, v) in r.headers {
                h.set_item(k, v)?;
            }
            d.set_item("headers", h)?;
            d.set_item("body", json::to_py(py, &r.body)?)?;
            d.set_item("inputs", r.inputs)?;
            d.set_item("status", r.status)?;
            d.set_item("fault", r.fault)?;
            d.set_item("at", r.at)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// How many requests were received.
    fn request_count(&self) -> usize {
        self.server.request_count()
    }

    /// Forget the request log.
    fn clear_requests(&self) {
        self.server.clear_requests();
    }

    /// Stop serving (also done when the object is collected).
    fn stop(&self) {
        self.server.stop();
    }

    fn __repr__(&self) -> String {
        format!("TestServer(url={:?})", self.server.url())
    }
}
