//! `JobStore`: the core's SQLite job store for `ferrobatch.jobs`. Every call releases the GIL
//! while SQLite works. Bodies, responses and errors cross as JSON text.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrobatch_core::jobs::{Completion, JobRow, JobStatus, NewRequest, Store};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{config_error, to_pyerr};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status(s: &str) -> PyResult<JobStatus> {
    JobStatus::parse(s).ok_or_else(|| config_error("status", format!("unknown job status {s:?}")))
}

fn lease(seconds: f64) -> PyResult<Duration> {
    if seconds.is_finite() && seconds > 0.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(config_error(
            "lease_seconds",
            format!("must be seconds > 0, got {seconds}"),
        ))
    }
}

fn job_dict<'py>(py: Python<'py>, j: &JobRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", &j.id)?;
    d.set_item("name", &j.name)?;
    d.set_item("status", j.status.as_str())?;
    d.set_item("endpoint", &j.endpoint)?;
    d.set_item("settings", &j.settings)?;
    d.set_item("input_hash", &j.input_hash)?;
    d.set_item("error", &j.error)?;
    d.set_item("total", j.total)?;
    d.set_item("created_at", j.created_at)?;
    d.set_item("updated_at", j.updated_at)?;
    Ok(d)
}

/// A job store in one SQLite file (or ":memory:").
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct JobStore {
    store: Arc<Store>,
    path: String,
}

#[pymethods]
impl JobStore {
    #[new]
    fn new(py: Python<'_>, path: String) -> PyResult<Self> {
        let p = path.clone();
        let store = py.detach(move || Store::open(&p)).map_err(to_pyerr)?;
        Ok(JobStore {
            store: Arc::new(store),
            path,
        })
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    fn schema_version(&self, py: Python<'_>) -> PyResult<i64> {
        let s = Arc::clone(&self.store);
        py.detach(move || s.schema_version()).map_err(to_pyerr)
    }

    /// Write a job and its requests (`(id, body_json)` pairs) in one transaction.
    #[pyo3(signature = (job_id, name, endpoint, settings, input_hash, requests))]
    #[allow(clippy::too_many_arguments)]
    fn create_job(
        &self,
        py: Python<'_>,
        job_id: String,
        name: Option<String>,
        endpoint: String,
        settings: Option<String>,
        input_hash: Option<String>,
        requests: Vec<(String, String)>,
    ) -> PyResult<()> {
        let reqs: Vec<NewRequest> = requests
            .into_iter()
            .map(|(id, body)| NewRequest { id, body })
            .collect();
        let s = Arc::clone(&self.store);
        py.detach(move || {
            s.create_job(
                &job_id,
                name.as_deref(),
                &endpoint,
                settings.as_deref(),
                input_hash.as_deref(),
                &reqs,
                now(),
            )
        })
        .map_err(to_pyerr)
    }

    fn job<'py>(&self, py: Python<'py>, job_id: String) -> PyResult<Bound<'py, PyDict>> {
        let s = Arc::clone(&self.store);
        let j = py.detach(move || s.job(&job_id)).map_err(to_pyerr)?;
        job_dict(py, &j)
    }

    fn jobs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let s = Arc::clone(&self.store);
        let jobs = py.detach(move || s.jobs()).map_err(to_pyerr)?;
        jobs.iter().map(|j| job_dict(py, j)).collect()
    }

    fn find_by_input<'py>(
        &self,
        py: Python<'py>,
        input_hash: String,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let s = Arc::clone(&self.store);
        let j = py
            .detach(move || s.find_by_input(&input_hash))
            .map_err(to_pyerr)?;
        j.as_ref().map(|j| job_dict(py, j)).transpose()
    }

    #[pyo3(signature = (job_id, status, error=None))]
    fn set_status(
        &self,
        py: Python<'_>,
        job_id: String,
        status: &str,
        error: Option<String>,
    ) -> PyResult<()> {
        let st = self::status(status)?;
        let s = Arc::clone(&self.store);
        py.detach(move || s.set_status(&job_id, st, error.as_deref(), now()))
            .map_err(to_pyerr)
    }

    /// Lease up to `limit` requests: `(seq, id, body_json, attempts)` tuples.
    fn claim(
        &self,
        py: Python<'_>,
        job_id: String,
        owner: String,
        limit: usize,
        lease_seconds: f64,
    ) -> PyResult<Vec<(i64, String, String, u32)>> {
        let l = lease(lease_seconds)?;
        let s = Arc::clone(&self.store);
        let claimed = py
            .detach(move || s.claim(&job_id, &owner, limit, l, now()))
            .map_err(to_pyerr)?;
        Ok(claimed
            .into_iter()
            .map(|c| (c.seq, c.id, c.body, c.attempts))
            .collect())
    }

    fn renew(
        &self,
        py: Python<'_>,
        job_id: String,
        owner: String,
        lease_seconds: f64,
    ) -> PyResult<usize> {
        let l = lease(lease_seconds)?;
        let s = Arc::clone(&self.store);
        py.detach(move || s.renew(&job_id, &owner, l, now()))
            .map_err(to_pyerr)
    }

    /// Commit an outcome if `owner` still holds the lease; False when it was lost.
    #[pyo3(signature = (job_id, seq, owner, ok, response, error, input_tokens=0, output_tokens=0, cost=None))]
    #[allow(clippy::too_many_arguments)]
    fn complete(
        &self,
        py: Python<'_>,
        job_id: String,
        seq: i64,
        owner: String,
        ok: bool,
        response: Option<String>,
        error: Option<String>,
        input_tokens: u64,
        output_tokens: u64,
        cost: Option<f64>,
    ) -> PyResult<bool> {
        let done = Completion {
            ok,
            response,
            error,
            input_tokens,
            output_tokens,
            cost,
        };
        let s = Arc::clone(&self.store);
        py.detach(move || s.complete(&job_id, seq, &owner, &done, now()))
            .map_err(to_pyerr)
    }

    fn release(&self, py: Python<'_>, job_id: String, owner: String) -> PyResult<usize> {
        let s = Arc::clone(&self.store);
        py.detach(move || s.release(&job_id, &owner))
            .map_err(to_pyerr)
    }

    fn cancel(&self, py: Python<'_>, job_id: String) -> PyResult<usize> {
        let s = Arc::clone(&self.store);
        py.detach(move || s.cancel(&job_id, now()))
            .map_err(to_pyerr)
    }

    #[pyo3(signature = (job_id, cancelled=false))]
    fn reset_failed(&self, py: Python<'_>, job_id: String, cancelled: bool) -> PyResult<usize> {
        let s = Arc::clone(&self.store);
        py.detach(move || s.reset_failed(&job_id, cancelled))
            .map_err(to_pyerr)
    }

    fn leased_by_others(&self, py: Python<'_>, job_id: String, owner: String) -> PyResult<u64> {
        let s = Arc::clone(&self.store);
        py.detach(move || s.leased_by_others(&job_id, &owner, now()))
            .map_err(to_pyerr)
    }

    fn progress<'py>(&self, py: Python<'py>, job_id: String) -> PyResult<Bound<'py, PyDict>> {
        let s = Arc::clone(&self.store);
        let p = py.detach(move || s.progress(&job_id)).map_err(to_pyerr)?;
        let d = PyDict::new(py);
        d.set_item("total", p.total)?;
        d.set_item("pending", p.pending)?;
        d.set_item("running", p.running)?;
        d.set_item("succeeded", p.succeeded)?;
        d.set_item("failed", p.failed)?;
        d.set_item("cancelled", p.cancelled)?;
        d.set_item("input_tokens", p.input_tokens)?;
        d.set_item("output_tokens", p.output_tokens)?;
        d.set_item("cost", p.cost)?;
        Ok(d)
    }

    /// Every request's `(seq, id, status, response_json, error_json)`, in submit order.
    #[allow(clippy::type_complexity)]
    fn results(
        &self,
        py: Python<'_>,
        job_id: String,
    ) -> PyResult<Vec<(i64, String, String, Option<String>, Option<String>)>> {
        let s = Arc::clone(&self.store);
        let rows = py.detach(move || s.results(&job_id)).map_err(to_pyerr)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.seq, r.id, r.status, r.response, r.error))
            .collect())
    }

    fn __repr__(&self) -> String {
        format!("JobStore({:?})", self.path)
    }
}
