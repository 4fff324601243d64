//! Job input for Python: a JSONL file read and checked by the core (`read_job_input`), and the
//! bodies of `BatchManager.submit` converted and checked by the same core rules. Bodies reach
//! the store as JSON text made in Rust; they never pass through `json.dumps`.

use std::path::PathBuf;
use std::sync::Mutex;

use ferrobatch_core::jobs::input::{self, BodyRules, EmbeddingShape, Route};
use ferrobatch_core::jobs::NewRequest;
use ferrobatch_core::Error;
use pyo3::prelude::*;
use serde_json::Value;

use crate::errors::to_pyerr;
use crate::json::to_json;

/// A checked OpenAI Batch API input file, ready to store (its requests stay in Rust).
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct JobInput {
    endpoint: &'static str,
    input_hash: String,
    model: Option<String>,
    dimensions: Option<u64>,
    count: usize,
    requests: Mutex<Option<Vec<NewRequest>>>,
}

impl JobInput {
    pub(crate) fn endpoint_path(&self) -> &'static str {
        self.endpoint
    }

    pub(crate) fn hash(&self) -> &str {
        &self.input_hash
    }

    /// The requests, once: a second job from the same input is refused.
    pub(crate) fn take(&self) -> PyResult<Vec<NewRequest>> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                to_pyerr(Error::InvalidInput {
                    reason: "this input was already stored as a job".into(),
                })
            })
    }
}

#[pymethods]
impl JobInput {
    /// The endpoint every line names.
    #[getter]
    fn endpoint(&self) -> &'static str {
        self.endpoint
    }

    /// SHA-256 of the file (hex).
    #[getter]
    fn input_hash(&self) -> &str {
        &self.input_hash
    }

    /// The first body's model, if it names one.
    #[getter]
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The first body's `dimensions`, if any.
    #[getter]
    fn dimensions(&self) -> Option<u64> {
        self.dimensions
    }

    fn __len__(&self) -> usize {
        self.count
    }

    /// `(model, requests, input_tokens, max_output_tokens)` per model, estimated from the
    /// bodies (`default_model` for bodies that name none).
    fn estimate(&self, py: Python<'_>, default_model: String) -> Vec<(String, u64, u64, u64)> {
        let guard = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let Some(requests) = guard.as_ref() else {
            return Vec::new();
        };
        py.detach(|| {
            ferrobatch_core::jobs::estimate::estimate(
                self.endpoint,
                requests.iter().map(|r| r.body.as_str()),
                &default_model,
            )
            .into_iter()
            .map(|(m, e)| (m, e.requests, e.input_tokens, e.max_output_tokens))
            .collect()
        })
    }

    fn __repr__(&self) -> String {
        format!("JobInput({} requests to {})", self.count, self.endpoint)
    }
}

/// Read and check an OpenAI Batch API JSONL file (`label` names it in errors:
/// `label:LINE: what`), the GIL released; `InvalidInputError` for the first bad line.
#[pyfunction]
#[pyo3(signature = (path, label, *, batch_api=false, batch_provider=None, base_url=None))]
pub(crate) fn read_job_input(
    py: Python<'_>,
    path: PathBuf,
    label: String,
    batch_api: bool,
    batch_provider: Option<String>,
    base_url: Option<String>,
) -> PyResult<JobInput> {
    let route = Route {
        batch_api,
        provider: batch_provider,
        base_url,
    };
    let read = py
        .detach(|| input::read_jsonl(&path, &label, &route))
        .map_err(to_pyerr)?;
    Ok(JobInput {
        endpoint: read.endpoint,
        input_hash: read.input_hash,
        model: read.model,
        dimensions: read.dimensions,
        count: read.requests.len(),
        requests: Mutex::new(Some(read.requests)),
    })
}

/// `(id, body)` pairs from Python, checked for `endpoint` by the core's rules (the Gemini
/// batch fields; an embeddings client's `(model, dimensions)`) and made JSON text.
pub(crate) fn checked_requests(
    endpoint: &str,
    requests: Vec<(String, Bound<'_, PyAny>)>,
    gemini_batch: bool,
    embeddings: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
) -> PyResult<Vec<NewRequest>> {
    let invalid = |id: &str, reason: String| {
        to_pyerr(Error::InvalidInput {
            reason: format!("request {id:?}: {reason}"),
        })
    };
    let shape = match embeddings {
        None => None,
        Some((model, dimensions)) => {
            let json =
                |v: &Bound<'_, PyAny>, at: &str| to_json(v, at).map_err(|e| invalid("(client)", e));
            let (model, dimensions) = (json(&model, "model")?, json(&dimensions, "dimensions")?);
            Some(EmbeddingShape {
                model: (!model.is_null()).then_some(model),
                dimensions: (!dimensions.is_null()).then_some(dimensions),
                source: "the client's".into(),
            })
        }
    };
    let rules = BodyRules {
        gemini_batch,
        embeddings: shape,
    };
    let mut out = Vec::with_capacity(requests.len());
    for (id, body) in requests {
        let body = match to_json(&body, "body") {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(invalid(&id, "the body must be a dict".into())),
            Err(e) => return Err(invalid(&id, format!("the body is not JSON: {e}"))),
        };
        input::check_body(endpoint, &body, &rules).map_err(|e| invalid(&id, e))?;
        out.push(NewRequest {
            id,
            body: Value::Object(body).to_string(),
        });
    }
    Ok(out)
}
