//! `JobStore` and `JobRunner`: the core's job store (SQLite file or PostgreSQL DSN) and job
//! runner for `ferrobatch.jobs`. Store calls block with the GIL released; a runner's work is
//! awaited as asyncio Futures while claim → send → record runs on the tokio runtime, with no
//! Python per request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::jobs::{
    self, output, provider_batch_runner, Endpoint, JobRoutes, JobRow, JobStatus, NewJob, OneRunner,
    ProviderBatchOptions, Runner, RunnerConfig, RunnerEvent, RunnerListener, Store, Worker,
    WorkerOptions,
};
use ferrobatch_core::Error;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::{self, config_error, to_pyerr};
use crate::http::{ChatClient, EmbeddingsClient};
use crate::job_input::{checked_requests, JobInput};
use crate::limits::RateLimiter;
use crate::runtime::runtime;
use crate::task;

fn status(s: &str) -> PyResult<JobStatus> {
    JobStatus::parse(s).ok_or_else(|| config_error("status", format!("unknown job status {s:?}")))
}

fn seconds(field: &'static str, s: f64, zero_ok: bool) -> PyResult<Duration> {
    if s.is_finite() && (s > 0.0 || (zero_ok && s == 0.0)) {
        Ok(Duration::from_secs_f64(s))
    } else {
        let want = if zero_ok { ">= 0" } else { "> 0" };
        Err(config_error(
            field,
            format!("must be seconds {want}, got {s}"),
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

/// A job store: a SQLite file (or ":memory:") or a `postgresql://` DSN.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct JobStore {
    store: Arc<dyn Store>,
    location: String,
}

impl JobStore {
    /// Run a store call on the runtime, the GIL released.
    fn call<T: Send + 'static>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(Arc<dyn Store>) -> jobs::StoreFuture<'static, T> + Send,
    ) -> PyResult<T> {
        let store = Arc::clone(&self.store);
        py.detach(move || runtime().block_on(f(store)))
            .map_err(to_pyerr)
    }
}

/// A store call as a `'static` future (the store is moved in).
macro_rules! owned {
    ($store:ident => $call:expr) => {
        Box::pin(async move {
            let $store = $store;
            $call.await
        })
    };
}

#[pymethods]
impl JobStore {
    #[new]
    fn new(py: Python<'_>, location: String) -> PyResult<Self> {
        let loc = location.clone();
        let store = py
            .detach(move || runtime().block_on(jobs::open(&loc)))
            .map_err(to_pyerr)?;
        Ok(JobStore {
            store,
            location: jobs::redact(&location),
        })
    }

    /// Where the store is, with any password hidden.
    #[getter]
    fn location(&self) -> &str {
        &self.location
    }

    /// `"sqlite"` or `"postgresql"`.
    #[getter]
    fn engine(&self) -> &'static str {
        self.store.engine()
    }

    fn schema_version(&self, py: Python<'_>) -> PyResult<i64> {
        self.call(py, |s| owned!(s => s.schema_version()))
    }

    /// Write a job and its requests (`(id, body)` pairs, bodies as dicts) in one transaction,
    /// after the core's check of every body for `endpoint`: `gemini_batch` (a Gemini batch
    /// translates only some chat fields), `embeddings` (the client's `(model, dimensions)`).
    #[pyo3(signature = (job_id, name, endpoint, settings, input_hash, requests, *, gemini_batch=false, embeddings=None))]
    #[allow(clippy::too_many_arguments)]
    fn create_job(
        &self,
        py: Python<'_>,
        job_id: String,
        name: Option<String>,
        endpoint: String,
        settings: Option<String>,
        input_hash: Option<String>,
        requests: Vec<(String, Bound<'_, PyAny>)>,
        gemini_batch: bool,
        embeddings: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let reqs = checked_requests(&endpoint, requests, gemini_batch, embeddings)?;
        let job = NewJob {
            id: job_id,
            name,
            endpoint,
            settings,
            input_hash,
        };
        self.call(py, move |s| owned!(s => s.create_job(job, reqs)))
    }

    /// Write a job from a checked JSONL input (its requests are taken: once per input).
    fn create_job_from(
        &self,
        py: Python<'_>,
        input: &JobInput,
        job_id: String,
        name: Option<String>,
        settings: Option<String>,
    ) -> PyResult<()> {
        let reqs = input.take()?;
        let job = NewJob {
            id: job_id,
            name,
            endpoint: input.endpoint_path().to_string(),
            settings,
            input_hash: Some(input.hash().to_string()),
        };
        self.call(py, move |s| owned!(s => s.create_job(job, reqs)))
    }

    fn job<'py>(&self, py: Python<'py>, job_id: String) -> PyResult<Bound<'py, PyDict>> {
        let j = self.call(py, move |s| owned!(s => s.job(job_id)))?;
        job_dict(py, &j)
    }

    fn jobs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let jobs = self.call(py, |s| owned!(s => s.jobs()))?;
        jobs.iter().map(|j| job_dict(py, j)).collect()
    }

    fn find_by_input<'py>(
        &self,
        py: Python<'py>,
        input_hash: String,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let j = self.call(py, move |s| owned!(s => s.find_by_input(input_hash)))?;
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
        self.call(py, move |s| owned!(s => s.set_status(job_id, st, error)))
    }

    fn cancel(&self, py: Python<'_>, job_id: String) -> PyResult<u64> {
        self.call(py, move |s| owned!(s => s.cancel(job_id)))
    }

    #[pyo3(signature = (job_id, cancelled=false))]
    fn reset_failed(&self, py: Python<'_>, job_id: String, cancelled: bool) -> PyResult<u64> {
        self.call(py, move |s| owned!(s => s.reset_failed(job_id, cancelled)))
    }

    fn progress<'py>(&self, py: Python<'py>, job_id: String) -> PyResult<Bound<'py, PyDict>> {
        let p = self.call(py, move |s| owned!(s => s.progress(job_id)))?;
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
        let rows = self.call(py, move |s| owned!(s => s.results(job_id)))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.seq, r.id, r.status, r.response, r.error))
            .collect())
    }

    /// How many of the job's requests each runner holds now, by runner id.
    fn held_by(&self, py: Python<'_>, job_id: String) -> PyResult<Vec<(String, u64)>> {
        self.call(py, move |s| owned!(s => s.held_by(job_id)))
    }

    /// Write the job's results as an OpenAI Batch API output file (atomically); how many
    /// lines.
    fn write_results(&self, py: Python<'_>, job_id: String, path: PathBuf) -> PyResult<usize> {
        let store = Arc::clone(&self.store);
        py.detach(move || {
            let rows = runtime().block_on(store.results(job_id))?;
            output::write_file(&rows, &path)?;
            Ok::<_, Error>(rows.len())
        })
        .map_err(to_pyerr)
    }

    /// The job's results as OpenAI Batch API output lines.
    fn results_jsonl<'py>(&self, py: Python<'py>, job_id: String) -> PyResult<Bound<'py, PyBytes>> {
        let store = Arc::clone(&self.store);
        let bytes = py
            .detach(move || {
                let rows = runtime().block_on(store.results(job_id))?;
                let mut out = Vec::new();
                output::write_jsonl(&rows, &mut out)?;
                Ok::<_, Error>(out)
            })
            .map_err(to_pyerr)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The job's provider batches, in order.
    fn provider_batches<'py>(
        &self,
        py: Python<'py>,
        job_id: String,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let rows = self.call(py, move |s| owned!(s => s.provider_batches(job_id)))?;
        rows.iter()
            .map(|c| {
                let d = PyDict::new(py);
                d.set_item("number", c.number)?;
                d.set_item("provider", &c.provider)?;
                d.set_item("state", c.state.as_str())?;
                d.set_item("batch_id", &c.batch_id)?;
                d.set_item("file_id", &c.file_id)?;
                d.set_item("remote_status", &c.remote_status)?;
                d.set_item("requests", c.requests)?;
                d.set_item("owner", &c.owner)?;
                Ok(d)
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        format!("JobStore({:?})", self.location)
    }
}

/// Log a runner's event on the `ferrobatch` logger (from whatever thread saw it).
fn log_event(event: &RunnerEvent) {
    let (level, message) = match event {
        RunnerEvent::TookOver {
            runner,
            pid,
            requests,
        } => (
            "warning",
            format!(
                "took over {runner} at once: its process {pid} on this machine is gone; \
                 {requests} requests it held go back to pending"
            ),
        ),
        RunnerEvent::StoreDown { error } => (
            "warning",
            format!("the job store does not answer ({error}); waiting it out"),
        ),
        RunnerEvent::StoreBack { after } => (
            "info",
            format!(
                "the job store answers again after {:.1}s",
                after.as_secs_f64()
            ),
        ),
        RunnerEvent::JobError { job, error } => ("error", format!("job {job}: {error}")),
        RunnerEvent::Working { job, runner } => ("info", format!("working job {job} as {runner}")),
        _ => return,
    };
    let _ = crate::exit::attach(|py| {
        let logger = py
            .import("logging")
            .and_then(|l| l.call_method1("getLogger", ("ferrobatch",)))?;
        logger.call_method1(level, ("%s", message))?;
        Ok::<_, PyErr>(())
    });
}

fn listener() -> RunnerListener {
    Arc::new(log_event)
}

/// Works jobs of a store through a ferrobatch HTTP client, on the tokio runtime.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct JobRunner {
    runner: Arc<Runner>,
    worker: Arc<Worker>,
}

fn status_outcome(r: Result<JobStatus, Error>) -> task::Conversion {
    task::once(move |py| match r {
        Ok(s) => Ok(s.as_str().into_pyobject(py)?.into_any().unbind()),
        Err(e) => Err(PyErr::from_value(errors::exception(py, &e))),
    })
}

fn unit_outcome(r: Result<(), Error>) -> task::Conversion {
    task::once(move |py| match r {
        Ok(()) => Ok(py.None()),
        Err(e) => Err(PyErr::from_value(errors::exception(py, &e))),
    })
}

/// A runner's settings from the keywords both `JobRunner` and `JobWorker` take.
fn runner_config(
    lease_seconds: f64,
    window: usize,
    concurrency: usize,
    flush_interval: f64,
    flush_max: usize,
    patience: f64,
) -> PyResult<RunnerConfig> {
    Ok(RunnerConfig {
        lease: seconds("lease_seconds", lease_seconds, false)?,
        window,
        concurrency,
        flush_interval: seconds("flush_interval", flush_interval, true)?,
        flush_max,
        patience: seconds("patience", patience, true)?,
    })
}

/// How a job goes through a provider's batch API, as Python passes it (a dict with every
/// key; `ferrobatch.jobs.batch_api_options` builds it).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct BatchApiArgs {
    provider: Option<String>,
    poll_interval: Option<f64>,
    max_attempts: i64,
    max_open_batches: usize,
    requests: Option<usize>,
    bytes: Option<usize>,
    fallback_online: bool,
}

impl BatchApiArgs {
    fn options(self) -> PyResult<ProviderBatchOptions> {
        if let Some(p) = &self.provider {
            ferrobatch_core::providers::by_name("batch_provider", p).map_err(to_pyerr)?;
        }
        Ok(ProviderBatchOptions {
            provider: self.provider,
            poll_interval: self
                .poll_interval
                .map(|s| seconds("poll_interval", s, false))
                .transpose()?,
            max_attempts: self.max_attempts,
            max_open: self.max_open_batches,
            requests: self.requests,
            bytes: self.bytes,
            fallback_online: self.fallback_online,
        })
    }
}

#[pymethods]
impl JobRunner {
    #[new]
    #[pyo3(signature = (store, client, *, lease_seconds, window, concurrency, flush_interval,
                        flush_max, patience, host, batch_api=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &Bound<'_, JobStore>,
        client: &Bound<'_, PyAny>,
        lease_seconds: f64,
        window: usize,
        concurrency: usize,
        flush_interval: f64,
        flush_max: usize,
        patience: f64,
        host: String,
        batch_api: Option<BatchApiArgs>,
    ) -> PyResult<Self> {
        let endpoint = if let Ok(c) = client.cast::<ChatClient>() {
            Endpoint::Chat(Arc::clone(&c.get().inner))
        } else if let Ok(c) = client.cast::<EmbeddingsClient>() {
            Endpoint::Embeddings(Arc::clone(&c.get().inner))
        } else {
            return Err(config_error(
                "client",
                "must be the native client of a ferrobatch HTTP batcher",
            ));
        };
        let config = runner_config(
            lease_seconds,
            window,
            concurrency,
            flush_interval,
            flush_max,
            patience,
        )?;
        let store = Arc::clone(&store.get().store);
        let runner = match batch_api {
            Some(b) => provider_batch_runner(
                Arc::clone(&store),
                endpoint,
                None,
                &b.options()?,
                config,
                host,
            ),
            None => Runner::new(Arc::clone(&store), endpoint, config, host),
        }
        .map_err(to_pyerr)?;
        runner.listen(listener());
        let worker = Arc::new(Worker::new(
            store,
            Arc::new(OneRunner(Arc::clone(&runner))),
            Some(listener()),
        ));
        Ok(JobRunner { runner, worker })
    }

    /// This runner's id in the store.
    #[getter]
    fn id(&self) -> &str {
        self.runner.id()
    }

    /// Run one job until it ends or the runner stops: a Future of its status then.
    fn run(&self, py: Python<'_>, job_id: String) -> PyResult<Py<PyAny>> {
        let runner = Arc::clone(&self.runner);
        task::spawn(
            py,
            async move { status_outcome(runner.run_job(&job_id).await) },
        )
    }

    /// Run unfinished jobs (all, or `job_ids`) as they appear; with `until_idle`, until none
    /// is left, otherwise until `stop()`.
    #[pyo3(signature = (job_ids=None, until_idle=true))]
    fn work(
        &self,
        py: Python<'_>,
        job_ids: Option<Vec<String>>,
        until_idle: bool,
    ) -> PyResult<Py<PyAny>> {
        let worker = Arc::clone(&self.worker);
        task::spawn(py, async move {
            unit_outcome(worker.work(job_ids, until_idle).await)
        })
    }

    /// Stop claiming, write what is done, hand every held request back: a Future.
    fn stop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let worker = Arc::clone(&self.worker);
        task::spawn(py, async move { unit_outcome(worker.stop().await) })
    }

    fn __repr__(&self) -> String {
        format!("JobRunner(id={:?})", self.runner.id())
    }
}

/// Works every unfinished job of a store, each through a client made from the job's own
/// settings (`ferrobatch work`): the core's one worker loop, in one native call.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct JobWorker {
    worker: Arc<Worker>,
}

#[pymethods]
impl JobWorker {
    #[new]
    #[pyo3(signature = (store, *, base_url=None, api_key_env=None, concurrency=16,
                        rate_limiter=None, prices=None, lease_seconds=60.0, flush_interval=0.1,
                        flush_max=1000, patience=300.0, host, batch_api=None, cache=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &Bound<'_, JobStore>,
        base_url: Option<String>,
        api_key_env: Option<String>,
        concurrency: usize,
        rate_limiter: Option<Bound<'_, RateLimiter>>,
        prices: Option<Bound<'_, PyDict>>,
        lease_seconds: f64,
        flush_interval: f64,
        flush_max: usize,
        patience: f64,
        host: String,
        batch_api: Option<BatchApiArgs>,
        cache: Option<PyRef<'_, crate::cache::Cache>>,
    ) -> PyResult<Self> {
        if concurrency == 0 {
            return Err(config_error("concurrency", "must be at least 1"));
        }
        let runner = runner_config(
            lease_seconds,
            (2 * concurrency).min(4096),
            concurrency,
            flush_interval,
            flush_max,
            patience,
        )?;
        runner.check().map_err(to_pyerr)?;
        let limiter = match &rate_limiter {
            Some(l) => Arc::clone(&l.get().inner),
            None => {
                Arc::new(ferrobatch_core::limits::LocalLimiter::new(None, None).map_err(to_pyerr)?)
            }
        };
        let batch = batch_api.map(BatchApiArgs::options).transpose()?;
        let options = WorkerOptions {
            base_url,
            api_key_env,
            limiter,
            prices: crate::http::prices(prices.as_ref())?,
            runner,
            host,
            batch,
            listener: Some(listener()),
            cache: cache.map(|c| Arc::clone(&c.inner)),
        };
        let store = Arc::clone(&store.get().store);
        let routes = Arc::new(JobRoutes::new(Arc::clone(&store), options));
        Ok(JobWorker {
            worker: Arc::new(Worker::new(store, routes, Some(listener()))),
        })
    }

    /// Run unfinished jobs (all, or `job_ids`) as they appear; with `until_idle`, until none
    /// is left, otherwise until `stop()`. A Future of how many job errors were logged.
    #[pyo3(signature = (job_ids=None, until_idle=false))]
    fn work(
        &self,
        py: Python<'_>,
        job_ids: Option<Vec<String>>,
        until_idle: bool,
    ) -> PyResult<Py<PyAny>> {
        let worker = Arc::clone(&self.worker);
        task::spawn(py, async move {
            let r = worker.work(job_ids, until_idle).await;
            let errors = worker.job_errors();
            task::once(move |py| match r {
                Ok(()) => Ok(errors.into_pyobject(py)?.into_any().unbind()),
                Err(e) => Err(PyErr::from_value(errors::exception(py, &e))),
            })
        })
    }

    /// Stop every runner: nothing more is claimed, what is done is written, held requests
    /// go back to pending. A Future.
    fn stop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let worker = Arc::clone(&self.worker);
        task::spawn(py, async move { unit_outcome(worker.stop().await) })
    }

    fn __repr__(&self) -> String {
        "JobWorker()".to_string()
    }
}

/// Estimated requests, input tokens and most output tokens per model of request bodies
/// (JSON texts) bound for `endpoint`.
#[pyfunction]
pub(crate) fn estimate_requests(
    py: Python<'_>,
    endpoint: String,
    bodies: Vec<String>,
    default_model: String,
) -> Vec<(String, u64, u64, u64)> {
    py.detach(move || {
        jobs::estimate::estimate(&endpoint, bodies.iter().map(String::as_str), &default_model)
            .into_iter()
            .map(|(m, e)| (m, e.requests, e.input_tokens, e.max_output_tokens))
            .collect()
    })
}

/// Run the job store test suite against the store at `location` (for the tests: the same
/// cases against SQLite and PostgreSQL); AssertionError naming the first failing case.
#[pyfunction]
pub(crate) fn _store_suite(py: Python<'_>, location: String) -> PyResult<()> {
    py.detach(move || {
        runtime().block_on(async move {
            let store = jobs::open(&location).await.map_err(|e| e.to_string())?;
            ferrobatch_core::testing::store_suite::run(store).await
        })
    })
    .map_err(pyo3::exceptions::PyAssertionError::new_err)
}
