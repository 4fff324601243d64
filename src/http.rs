//! The native halves of the HTTP batchers: `EmbeddingsClient` (OpenAI-compatible or Gemini)
//! and `ChatClient`. Each call takes a whole batch, runs it on the
//! shared runtime (HTTP, retries, JSON) and resolves one asyncio Future with one result per
//! item — a value, or an exception instance for that item alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::http::embed::Vector;
use ferrobatch_core::http::embedder::EmbeddingCache;
use ferrobatch_core::http::{
    ApiKey, Auth, ChatCache, ChatRequest, ChatSetup, Chatter, Embedder, EmbeddingSpec, Price,
    Transport, TransportConfig, UsageBook,
};
use ferrobatch_core::providers::openai::wire as openai;
use ferrobatch_core::{Error, Provider};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};
use serde_json::Value;

use crate::batcher::{ItemsOut, NativeBatchFn, NativeFn, NativeWork, Resolution};
use crate::errors::{self, config_error, to_pyerr};
use crate::json;
use crate::limits::RateLimiter;
use crate::task;

/// The settings every client shares: the `transport` dict Python passes (every key present).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Common<'py> {
    base_url: String,
    api_key: Option<String>,
    headers: Option<Bound<'py, PyDict>>,
    timeout: f64,
    max_retries: i64,
    initial_backoff: f64,
    max_backoff: f64,
    max_response_bytes: i64,
    rate_limiter: Option<Bound<'py, RateLimiter>>,
    prices: Option<Bound<'py, PyDict>>,
}

pub(crate) fn prices(dict: Option<&Bound<'_, PyDict>>) -> PyResult<BTreeMap<String, Price>> {
    let mut out = BTreeMap::new();
    let Some(dict) = dict else { return Ok(out) };
    for (model, p) in dict.iter() {
        let model: String = model
            .extract()
            .map_err(|_| config_error("prices", "keys must be model names (str)"))?;
        let p = p.cast::<PyDict>().map_err(|_| {
            config_error(
                "prices",
                format!("prices[{model:?}] must be a dict like {{'input': 0.02, 'output': 0.0}}"),
            )
        })?;
        let mut price = Price::default();
        for (k, v) in p.iter() {
            let k: String = k.extract().unwrap_or_default();
            let v: f64 = v
                .extract()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    config_error(
                        "prices",
                        format!("prices[{model:?}][{k:?}] must be USD per 1M tokens >= 0"),
                    )
                })?;
            match k.as_str() {
                "input" => price.input = v,
                "output" => price.output = v,
                "cache_write" => price.cache_write = Some(v),
                "cache_read" => price.cache_read = Some(v),
                _ => {
                    return Err(config_error(
                        "prices",
                        format!(
                            "prices[{model:?}] has unknown key {k:?} (use 'input', 'output', \
                             'cache_write', 'cache_read')"
                        ),
                    ))
                }
            }
        }
        out.insert(model, price);
    }
    Ok(out)
}

fn build_transport(provider: Provider, auth: Auth, c: &Common<'_>) -> PyResult<Transport> {
    let mut headers = Vec::new();
    if let Some(h) = &c.headers {
        for (k, v) in h.iter() {
            match (k.extract::<String>(), v.extract::<String>()) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => return Err(config_error("headers", "must map str to str")),
            }
        }
    }
    let retry =
        ferrobatch_core::http::RetryPolicy::new(c.max_retries, c.initial_backoff, c.max_backoff)
            .map_err(to_pyerr)?;
    if !(c.timeout.is_finite() && c.timeout > 0.0) {
        return Err(config_error(
            "timeout",
            format!("must be seconds > 0, got {}", c.timeout),
        ));
    }
    let max_response_bytes = usize::try_from(c.max_response_bytes)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            config_error(
                "max_response_bytes",
                format!("must be at least 1, got {}", c.max_response_bytes),
            )
        })?;
    let limiter = match &c.rate_limiter {
        Some(l) => Arc::clone(&l.get().inner),
        None => Arc::new(ferrobatch_core::limits::LocalLimiter::new(None, None).map_err(to_pyerr)?),
    };
    let config = TransportConfig {
        provider,
        base_url: c.base_url.clone(),
        api_key: c.api_key.clone().and_then(ApiKey::new),
        auth,
        headers,
        timeout: Duration::from_secs_f64(c.timeout),
        max_response_bytes,
        retry,
        limiter,
    };
    let usage = UsageBook::new(prices(c.prices.as_ref())?);
    Transport::new(config, usage).map_err(to_pyerr)
}

fn usage_dict<'py>(py: Python<'py>, t: &Transport) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (model, u) in t.usage().snapshot() {
        let d = PyDict::new(py);
        d.set_item("requests", u.requests)?;
        d.set_item("retries", u.retries)?;
        d.set_item("failed_requests", u.failed_requests)?;
        d.set_item("input_tokens", u.input_tokens)?;
        d.set_item("output_tokens", u.output_tokens)?;
        d.set_item("cost", u.cost)?;
        d.set_item("error_statuses", u.error_statuses)?;
        d.set_item("cached_requests", u.cached_requests)?;
        d.set_item("cached_input_tokens", u.cached_input_tokens)?;
        d.set_item("saved_cost", u.saved_cost)?;
        out.set_item(model, d)?;
    }
    Ok(out)
}

/// A text as UTF-8, or the reason it cannot be sent (not a str; a lone surrogate, which a
/// Python str may hold but UTF-8 cannot encode). Only that text fails.
fn text(obj: &Bound<'_, PyAny>) -> Result<String, Error> {
    let s = obj.cast::<PyString>().map_err(|_| Error::InvalidInput {
        reason: format!(
            "a text must be str, got {}",
            obj.get_type()
                .name()
                .map_or("object".into(), |n| n.to_string())
        ),
    })?;
    s.to_cow()
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| Error::InvalidInput {
            reason: format!(
                "the text cannot be sent as UTF-8 ({}); decode its source with \
                 errors='replace' or clean the data",
                e.value(obj.py())
            ),
        })
}

/// The Python type vectors are handed out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VectorFormat {
    /// `list[float]`.
    List,
    /// A writable float32 `numpy.ndarray`.
    Numpy,
    /// A stdlib `array.array("f")`: one buffer, no numpy needed.
    Array,
}

static NUMPY: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
static ARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `array.array`, imported once.
fn array_type(py: Python<'_>) -> PyResult<&'static Py<PyAny>> {
    ARRAY.get_or_try_init(py, || Ok(py.import("array")?.getattr("array")?.unbind()))
}

/// `numpy.frombuffer` and `numpy.float32`, imported once.
fn numpy(py: Python<'_>) -> PyResult<&'static (Py<PyAny>, Py<PyAny>)> {
    NUMPY.get_or_try_init(py, || {
        let np = py.import("numpy").map_err(|_| {
            pyo3::exceptions::PyImportError::new_err(
                "format='numpy' needs numpy: pip install numpy",
            )
        })?;
        Ok((
            np.getattr("frombuffer")?.unbind(),
            np.getattr("float32")?.unbind(),
        ))
    })
}

/// The native half of the embedding batchers.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct EmbeddingsClient {
    pub(crate) inner: Arc<Embedder>,
    format: VectorFormat,
    model: String,
}

#[pymethods]
impl EmbeddingsClient {
    #[new]
    #[pyo3(signature = (provider, model, *, transport, dimensions, encoding_format,
                        max_inputs_per_request, max_tokens_per_request, task_type, title, user,
                        format, cache=None))]
    #[allow(clippy::too_many_arguments)]
    fn new<'py>(
        py: Python<'py>,
        provider: &str,
        model: String,
        transport: Common<'py>,
        dimensions: Option<u32>,
        encoding_format: &str,
        max_inputs_per_request: Option<usize>,
        max_tokens_per_request: Option<u64>,
        task_type: Option<String>,
        title: Option<String>,
        user: Option<String>,
        format: &str,
        cache: Option<PyRef<'py, crate::cache::Cache>>,
    ) -> PyResult<Self> {
        let common = transport;
        if model.trim().is_empty() {
            return Err(config_error("model", "must name a model"));
        }
        let format = match format {
            "list" => VectorFormat::List,
            "array" => VectorFormat::Array,
            "numpy" => {
                numpy(py)?;
                VectorFormat::Numpy
            }
            other => {
                return Err(config_error(
                    "format",
                    format!("must be 'list', 'numpy' or 'array', got {other:?}"),
                ))
            }
        };
        if dimensions == Some(0) {
            return Err(config_error("dimensions", "must be at least 1"));
        }
        let facts = ferrobatch_core::providers::by_name("provider", provider).map_err(to_pyerr)?;
        let make = facts.embeddings.ok_or_else(|| {
            config_error("provider", format!("{provider} has no embeddings API here"))
        })?;
        let spec = EmbeddingSpec {
            model: model.clone(),
            dimensions,
            encoding_format: encoding_format.to_string(),
            task_type,
            title,
            user,
        };
        let (api, cap) = make(&spec).map_err(to_pyerr)?;
        let transport = build_transport(facts.provider, facts.auth, &common)?;
        let cache = cache.map(|c| {
            let namespace = c.inner.config().namespace.clone().unwrap_or_default();
            EmbeddingCache {
                cache: Arc::clone(&c.inner),
                keys: ferrobatch_core::cache::embedding_key(
                    &namespace,
                    facts.name,
                    &common.base_url,
                    &model,
                    dimensions,
                    encoding_format,
                ),
            }
        });
        let max_inputs = max_inputs_per_request.unwrap_or(cap);
        if max_inputs == 0 {
            return Err(config_error("max_inputs_per_request", "must be at least 1"));
        }
        let max_tokens = max_tokens_per_request.unwrap_or(openai::MAX_TOKENS);
        if max_tokens == 0 {
            return Err(config_error("max_tokens_per_request", "must be at least 1"));
        }
        Ok(EmbeddingsClient {
            inner: Arc::new(Embedder {
                model: api,
                transport,
                max_inputs,
                max_tokens,
                cache,
            }),
            format,
            model,
        })
    }

    /// Embed a batch of texts: a Future of one vector (or exception instance) per text.
    fn embed(&self, py: Python<'_>, texts: Vec<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        task::spawn_items(py, self.embed_fn().start(py, texts))
    }

    /// The batch function a batcher runs natively: embeds a batch on the runtime.
    fn batch_fn(&self) -> NativeFn {
        NativeFn(Arc::new(self.embed_fn()))
    }

    /// Requests, retries, failed requests, tokens and cost per model.
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        usage_dict(py, &self.inner.transport)
    }

    #[getter]
    fn base_url(&self) -> &str {
        self.inner.transport.base_url()
    }

    fn __repr__(&self) -> String {
        format!(
            "EmbeddingsClient(model={:?}, base_url={:?})",
            self.model,
            self.inner.transport.base_url()
        )
    }
}

impl EmbeddingsClient {
    fn embed_fn(&self) -> EmbedFn {
        EmbedFn {
            inner: Arc::clone(&self.inner),
            format: self.format,
        }
    }
}

/// Embedding a batch of texts, as a batch function written in Rust.
struct EmbedFn {
    inner: Arc<Embedder>,
    format: VectorFormat,
}

impl NativeBatchFn for EmbedFn {
    fn start(&self, _py: Python<'_>, values: Vec<Bound<'_, PyAny>>) -> NativeWork {
        let texts: Vec<Result<String, Error>> = values.iter().map(text).collect();
        let inner = Arc::clone(&self.inner);
        let format = self.format;
        Box::pin(async move {
            let results = inner.embed(texts).await;
            Box::new(Vectors {
                results: results.into_iter(),
                format,
            }) as Box<dyn ItemsOut>
        })
    }
}

/// A list of Python floats, built with the C API directly: it runs for every number of every
/// vector (hundreds of thousands per batch), so the per-element conversion layer matters. The
/// list is not tracked by the cyclic GC (see below).
fn float_list<'py>(py: Python<'py>, v: &[f32]) -> PyResult<Bound<'py, PyAny>> {
    let n = ffi::Py_ssize_t::try_from(v.len()).expect("a vector fits in Py_ssize_t");
    // SAFETY: the GIL is held; `PyList_New(n)` returns a new list with n empty slots (or NULL
    // with an exception set, turned into an error); each slot is filled exactly once with a
    // new float reference, which `PyList_SetItem` steals. A NULL float is checked first. The
    // list is ours alone until returned, so untracking it cannot race the collector.
    unsafe {
        let list = Bound::from_owned_ptr_or_err(py, ffi::PyList_New(n))?;
        for (i, x) in v.iter().enumerate() {
            let f = ffi::PyFloat_FromDouble(f64::from(*x));
            if f.is_null() {
                return Err(PyErr::fetch(py));
            }
            ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, f);
        }
        // Floats cannot form a reference cycle, so the cyclic GC need not walk the list: with
        // 20,000 vectors of 1,536 floats alive, each full collection would otherwise visit 30
        // million objects while the event loop waits. (A list a caller later makes part of a
        // cycle is then freed only when the cycle is broken.)
        ffi::PyObject_GC_UnTrack(list.as_ptr().cast());
        Ok(list)
    }
}

/// Numbers converted per loop iteration: about 2 ms of work, so that other tasks run between
/// the steps of a large batch.
const FLOATS_PER_STEP: usize = 1 << 16;

/// A batch of vectors (or errors) becoming Python objects, a step at a time.
struct Vectors {
    results: std::vec::IntoIter<Result<Vector, Error>>,
    format: VectorFormat,
}

/// A vector's float32s in native byte order (what numpy's `float32` and array's `"f"` read).
fn native_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

impl Vectors {
    /// One vector as the Python type asked for.
    fn to_py<'py>(&self, py: Python<'py>, v: &[f32]) -> PyResult<Bound<'py, PyAny>> {
        match self.format {
            VectorFormat::List => float_list(py, v),
            VectorFormat::Numpy => {
                let (frombuffer, dtype) = numpy(py)?;
                // A bytearray, so that the array is writable.
                let buf = PyByteArray::new(py, &native_bytes(v));
                frombuffer.bind(py).call1((buf, dtype.bind(py)))
            }
            VectorFormat::Array => {
                let bytes = PyBytes::new(py, &native_bytes(v));
                array_type(py)?.bind(py).call1(("f", bytes))
            }
        }
    }
}

impl ItemsOut for Vectors {
    fn step(&mut self, py: Python<'_>, out: &mut Vec<Resolution>) -> bool {
        let mut budget = FLOATS_PER_STEP;
        while let Some(r) = self.results.next() {
            let item = match r {
                Ok(v) => {
                    budget = budget.saturating_sub(v.len().max(1));
                    match self.to_py(py, &v) {
                        Ok(obj) => Resolution::Value(obj.unbind()),
                        Err(e) => Resolution::Error(e.into_value(py).into_any()),
                    }
                }
                Err(e) => Resolution::Error(errors::exception(py, &e).unbind()),
            };
            out.push(item);
            if budget == 0 {
                break;
            }
        }
        self.results.len() == 0
    }
}

/// Marks a chat request body the result cache must not answer (`create(..., cache=False)`):
/// it is sent, and its answer is not stored.
#[pyclass(module = "ferrobatch._native", frozen, name = "_Uncached")]
pub(crate) struct Uncached {
    body: Py<PyAny>,
}

#[pymethods]
impl Uncached {
    #[new]
    fn new(body: Py<PyAny>) -> Self {
        Uncached { body }
    }

    #[getter]
    fn body(&self, py: Python<'_>) -> Py<PyAny> {
        self.body.clone_ref(py)
    }
}

/// Sending a batch of chat request bodies, one request each, as a batch function in Rust.
struct ChatFn {
    inner: Arc<Chatter>,
}

fn chat_body(b: &Bound<'_, PyAny>) -> Result<serde_json::Map<String, Value>, Error> {
    match json::to_json(b, "body") {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::InvalidInput {
            reason: "a chat request body must be a dict".to_string(),
        }),
        Err(reason) => Err(Error::InvalidInput { reason }),
    }
}

impl NativeBatchFn for ChatFn {
    fn start(&self, py: Python<'_>, values: Vec<Bound<'_, PyAny>>) -> NativeWork {
        let requests: Vec<ChatRequest> = values
            .iter()
            .map(|b| match b.cast::<Uncached>() {
                Ok(u) => ChatRequest {
                    body: chat_body(u.get().body.bind(py)),
                    use_cache: false,
                },
                Err(_) => ChatRequest {
                    body: chat_body(b),
                    use_cache: true,
                },
            })
            .collect();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let results = inner.create_many(requests).await;
            Box::new(Responses(results.into_iter())) as Box<dyn ItemsOut>
        })
    }
}

/// Chat responses (or errors) becoming dicts, all in one step (a batch holds a few).
struct Responses(std::vec::IntoIter<Result<Value, Error>>);

impl ItemsOut for Responses {
    fn step(&mut self, py: Python<'_>, out: &mut Vec<Resolution>) -> bool {
        for r in self.0.by_ref() {
            out.push(match r.map(|v| json::to_py(py, &v)) {
                Ok(Ok(obj)) => Resolution::Value(obj.unbind()),
                Ok(Err(e)) => Resolution::Error(e.into_value(py).into_any()),
                Err(e) => Resolution::Error(errors::exception(py, &e).unbind()),
            });
        }
        true
    }
}

/// The native half of the chat batchers (OpenAI-compatible chat, Anthropic Messages): one
/// HTTP request per item.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct ChatClient {
    pub(crate) inner: Arc<Chatter>,
}

impl ChatClient {
    fn chat_fn(&self) -> ChatFn {
        ChatFn {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[pymethods]
impl ChatClient {
    #[new]
    #[pyo3(signature = (model, *, transport, provider="openai", output_rate_limiter=None, cache=None))]
    fn new(
        model: String,
        transport: Common<'_>,
        provider: &str,
        output_rate_limiter: Option<Bound<'_, RateLimiter>>,
        cache: Option<PyRef<'_, crate::cache::Cache>>,
    ) -> PyResult<Self> {
        let common = transport;
        if model.trim().is_empty() {
            return Err(config_error("model", "must name a model"));
        }
        let facts = ferrobatch_core::providers::by_name("provider", provider).map_err(to_pyerr)?;
        let make = facts.chat.ok_or_else(|| {
            config_error(
                "provider",
                format!(
                    "{provider} has no chat client here; reach its models through an \
                     OpenAI-compatible base URL with provider='openai'"
                ),
            )
        })?;
        let api = make(ChatSetup {
            model,
            transport: build_transport(facts.provider, facts.auth, &common)?,
            output_limiter: output_rate_limiter.map(|l| Arc::clone(&l.get().inner)),
        })
        .map_err(to_pyerr)?;
        let cache = cache.map(|c| {
            let namespace = c.inner.config().namespace.clone().unwrap_or_default();
            ChatCache {
                cache: Arc::clone(&c.inner),
                keys: ferrobatch_core::cache::chat_key(&namespace, facts.name, &common.base_url),
            }
        });
        Ok(ChatClient {
            inner: Arc::new(Chatter::with_cache(api, cache)),
        })
    }

    /// Send a batch of chat request bodies (dicts), one HTTP request each, concurrently: a
    /// Future of one response dict (or exception instance) per body.
    fn create_many(&self, py: Python<'_>, bodies: Vec<Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        task::spawn_items(py, self.chat_fn().start(py, bodies))
    }

    /// The batch function a batcher runs natively: one request per item, concurrently.
    fn batch_fn(&self) -> NativeFn {
        NativeFn(Arc::new(self.chat_fn()))
    }

    /// A streamed answer to `body` (sent on its first `next_many()`), through this client's
    /// limiter, retries and usage; `first_token_timeout` and `idle_timeout` in seconds.
    #[pyo3(signature = (body, *, first_token_timeout=600.0, idle_timeout=120.0))]
    fn stream(
        &self,
        body: &Bound<'_, PyAny>,
        first_token_timeout: f64,
        idle_timeout: f64,
    ) -> PyResult<crate::stream::PyChatStream> {
        let clocks = crate::stream::clocks(first_token_timeout, idle_timeout)?;
        let body = chat_body(body).map_err(to_pyerr)?;
        Ok(crate::stream::PyChatStream::new(
            Arc::clone(&self.inner),
            body,
            clocks,
        ))
    }

    /// This client's streams: how they ended, time to first chunk and gaps between chunks
    /// (latency summaries with buckets), output tokens streamed.
    fn stream_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.streams.stats();
        let d = PyDict::new(py);
        let outcomes = PyDict::new(py);
        for name in ["completed", "failed", "cancelled"] {
            outcomes.set_item(name, s.outcomes.get(name).copied().unwrap_or(0))?;
        }
        d.set_item("streams", outcomes)?;
        d.set_item(
            "time_to_first_chunk",
            crate::stats::LatencySummary::from(s.time_to_first_chunk),
        )?;
        d.set_item("chunk_gap", crate::stats::LatencySummary::from(s.chunk_gap))?;
        d.set_item("output_tokens", s.output_tokens)?;
        Ok(d)
    }

    /// Requests, retries, failed requests, tokens and cost per model.
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        usage_dict(py, self.inner.api.transport())
    }

    #[getter]
    fn base_url(&self) -> &str {
        self.inner.api.transport().base_url()
    }

    fn __repr__(&self) -> String {
        format!(
            "ChatClient(model={:?}, base_url={:?})",
            self.inner.api.model(),
            self.inner.api.transport().base_url()
        )
    }
}
