//! The Python exception tree and the one mapping from core errors to it.
//!
//! Every class derives from `ferrobatch.FerrobatchError` and, where a builtin fits, from that
//! builtin too (`QueueFullError` is a plain `FerrobatchError`; `BatcherStoppedError` is also a
//! `RuntimeError`, ...). Multiple bases are not expressible with `create_exception!`, so the
//! classes are built once with `type(name, bases, namespace)` and cached.

use ferrobatch_core::{Error, Provider, StopReason};
use pyo3::exceptions::{PyException, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The exception classes, built once per interpreter.
pub(crate) struct Exceptions {
    pub base: Py<PyType>,
    pub config: Py<PyType>,
    pub queue_full: Py<PyType>,
    pub stopped: Py<PyType>,
    pub item_timeout: Py<PyType>,
    pub size_mismatch: Py<PyType>,
    pub invalid_result: Py<PyType>,
    pub wrong_loop: Py<PyType>,
    pub stop_timeout: Py<PyType>,
    pub invalid_input: Py<PyType>,
    pub api: Py<PyType>,
    pub api_status: Py<PyType>,
    pub bad_request: Py<PyType>,
    pub authentication: Py<PyType>,
    pub permission_denied: Py<PyType>,
    pub not_found: Py<PyType>,
    pub conflict: Py<PyType>,
    pub unprocessable: Py<PyType>,
    pub rate_limit: Py<PyType>,
    pub internal_server: Py<PyType>,
    pub api_connection: Py<PyType>,
    pub api_timeout: Py<PyType>,
    pub response_format: Py<PyType>,
    pub response_too_large: Py<PyType>,
    pub limiter_unavailable: Py<PyType>,
    pub store: Py<PyType>,
    pub duplicate_id: Py<PyType>,
    pub job_not_found: Py<PyType>,
    pub provider_batch: Py<PyType>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

fn make(
    py: Python<'_>,
    name: &str,
    bases: &[&Bound<'_, PyType>],
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "ferrobatch")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let ty = py
        .get_type::<PyType>()
        .call1((name, bases, ns))?
        .cast_into::<PyType>()?;
    Ok(ty.unbind())
}

impl Exceptions {
    /// The class of a core error's [`Error::type_name`].
    fn class(&self, name: &str) -> &Py<PyType> {
        match name {
            "ConfigError" => &self.config,
            "QueueFullError" => &self.queue_full,
            "BatcherStoppedError" => &self.stopped,
            "ItemTimeoutError" => &self.item_timeout,
            "BatchSizeMismatchError" => &self.size_mismatch,
            "InvalidInputError" => &self.invalid_input,
            "BadRequestError" => &self.bad_request,
            "AuthenticationError" => &self.authentication,
            "PermissionDeniedError" => &self.permission_denied,
            "NotFoundError" => &self.not_found,
            "ConflictError" => &self.conflict,
            "UnprocessableEntityError" => &self.unprocessable,
            "RateLimitError" => &self.rate_limit,
            "InternalServerError" => &self.internal_server,
            "APIStatusError" => &self.api_status,
            "APITimeoutError" => &self.api_timeout,
            "APIConnectionError" => &self.api_connection,
            "ResponseFormatError" => &self.response_format,
            "ResponseTooLargeError" => &self.response_too_large,
            "RateLimiterUnavailableError" => &self.limiter_unavailable,
            "StoreError" => &self.store,
            "DuplicateRequestIdError" => &self.duplicate_id,
            "JobNotFoundError" => &self.job_not_found,
            "ProviderBatchError" => &self.provider_batch,
            _ => &self.base,
        }
    }

    pub(crate) fn get(py: Python<'_>) -> &Exceptions {
        EXCEPTIONS
            .get_or_try_init(py, || Self::build(py))
            .expect("building the ferrobatch exception classes cannot fail")
    }

    fn build(py: Python<'_>) -> PyResult<Exceptions> {
        let exc = py.get_type::<PyException>();
        let runtime = py.get_type::<PyRuntimeError>();
        let value = py.get_type::<PyValueError>();
        let type_ = py.get_type::<PyTypeError>();
        let timeout = py.get_type::<PyTimeoutError>();
        let base = make(
            py,
            "FerrobatchError",
            &[&exc],
            "Base class of every ferrobatch error.",
        )?;
        let b = base.bind(py).clone();
        let connection = py.get_type::<pyo3::exceptions::PyConnectionError>();
        let api = make(py, "APIError", &[&b],
            "An HTTP API call failed; `message`, `status` (None without a response), `body`, `code` and `param` say how.")?;
        let a = api.bind(py).clone();
        let api_status = make(
            py,
            "APIStatusError",
            &[&a],
            "The server answered with an error status (after any retries); `status` holds it.",
        )?;
        let st = api_status.bind(py).clone();
        let api_connection = make(
            py,
            "APIConnectionError",
            &[&a, &connection],
            "The connection failed or broke before a response (after any retries).",
        )?;
        let conn = api_connection.bind(py).clone();
        let lookup = py.get_type::<pyo3::exceptions::PyLookupError>();
        let response_format = make(py, "ResponseFormatError", &[&a],
            "The server's answer does not have the documented shape (malformed JSON, wrong number of embeddings, ...).")?;
        let rf = response_format.bind(py).clone();
        Ok(Exceptions {
            response_too_large: make(py, "ResponseTooLargeError", &[&rf],
                "The server's answer was larger than max_response_bytes; the rest was not read. `limit` is the cap.")?,
            response_format,
            limiter_unavailable: make(py, "RateLimiterUnavailableError", &[&b, &connection],
                "The shared rate limit cannot be consulted (Redis unreachable) and on_redis_error='fail'.")?,
            store: make(py, "StoreError", &[&b],
                "The job store failed (the SQLite file cannot be opened, stays locked, ...).")?,
            duplicate_id: make(py, "DuplicateRequestIdError", &[&b, &value],
                "Two requests of one job share an id; `id`, `index` and `first` say where.")?,
            provider_batch: make(py, "ProviderBatchError", &[&a],
                "A provider's batch API did not run a request (`code`: batch_expired, batch_cancelled, request_timeout, missing_output) or failed a whole batch (invalid_json_line, ...).")?,
            job_not_found: make(py, "JobNotFoundError", &[&b, &lookup],
                "No job with this id in the store; `job` holds the id.")?,
            invalid_input: make(py, "InvalidInputError", &[&b, &value],
                "An item cannot be sent as it is (an empty text, a body that is not JSON, ...).")?,
            bad_request: make(py, "BadRequestError", &[&st], "HTTP 400: the server rejected the request.")?,
            authentication: make(py, "AuthenticationError", &[&st], "HTTP 401: the API key is missing or wrong.")?,
            permission_denied: make(py, "PermissionDeniedError", &[&st], "HTTP 403: the key may not do this.")?,
            not_found: make(py, "NotFoundError", &[&st], "HTTP 404: no such model or endpoint.")?,
            conflict: make(py, "ConflictError", &[&st], "HTTP 409, after retries.")?,
            unprocessable: make(py, "UnprocessableEntityError", &[&st], "HTTP 422: the server could not process the request.")?,
            rate_limit: make(py, "RateLimitError", &[&st], "HTTP 429, after retries.")?,
            internal_server: make(py, "InternalServerError", &[&st], "HTTP 5xx, after retries.")?,
            api_timeout: make(py, "APITimeoutError", &[&conn, &timeout],
                "No response within the request timeout (after any retries); `timeout` is the limit.")?,
            api_connection,
            api_status,
            api,
            config: make(py, "ConfigError", &[&b, &value],
                "A setting is out of range; `field` names it.")?,
            queue_full: make(py, "QueueFullError", &[&b],
                "The queue holds max_queue_size items and on_full='reject'; `capacity` is the limit.")?,
            stopped: make(py, "BatcherStoppedError", &[&b, &runtime],
                "The batcher is stopped (or was force-stopped or dropped while the item waited); `reason` says which.")?,
            item_timeout: make(py, "ItemTimeoutError", &[&b, &timeout],
                "The item was not dispatched within item_timeout; it was never dispatched later.")?,
            size_mismatch: make(py, "BatchSizeMismatchError", &[&b, &value],
                "The batch function returned a different number of results than items; `expected` and `got` say how many.")?,
            invalid_result: make(py, "InvalidBatchResultError", &[&b, &type_],
                "The batch function returned something that is not a list, a tuple, another sized iterable, or None.")?,
            wrong_loop: make(py, "WrongEventLoopError", &[&b, &runtime],
                "The batcher was used from an event loop other than the one it belongs to.")?,
            stop_timeout: make(py, "StopTimeoutError", &[&b, &timeout],
                "stop(timeout=...) ran out of time; what was left was force-stopped.")?,
            base,
        })
    }
}

fn reason_name(r: StopReason) -> &'static str {
    match r {
        StopReason::NotAccepting => "not_accepting",
        StopReason::ForceStopped => "force_stopped",
        StopReason::Dropped => "dropped",
        _ => "stopped",
    }
}

fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "openai",
        Provider::Gemini => "gemini",
        Provider::Anthropic => "anthropic",
        _ => "unknown",
    }
}

/// The attributes every `APIError` carries (openai-python's names, plus `status`).
fn set_api_fields(
    value: &Bound<'_, PyAny>,
    status: Option<u16>,
    message: &str,
    body: Option<&str>,
    code: Option<&str>,
    param: Option<&str>,
) -> PyResult<()> {
    value.setattr("status", status)?;
    value.setattr("status_code", status)?;
    value.setattr("message", message)?;
    value.setattr("body", body)?;
    value.setattr("code", code)?;
    value.setattr("param", param)
}

/// Build the exception instance for a core error (one instance may be shared by many items),
/// with the error's structured fields as attributes.
pub(crate) fn exception<'py>(py: Python<'py>, err: &Error) -> Bound<'py, PyAny> {
    let ex = Exceptions::get(py);
    let ty = ex.class(err.type_name());
    let value = ty
        .bind(py)
        .call1((err.to_string(),))
        .expect("exception classes accept one message argument");
    let set = match err {
        Error::InvalidConfig { field, .. } => value.setattr("field", *field),
        Error::QueueFull { capacity } => value.setattr("capacity", *capacity),
        Error::Stopped { reason } => value.setattr("reason", reason_name(*reason)),
        Error::ItemTimeout { timeout } => value.setattr("timeout", timeout.as_secs_f64()),
        Error::BatchSizeMismatch { expected, got } => value
            .setattr("expected", *expected)
            .and_then(|()| value.setattr("got", *got)),
        Error::InvalidInput { reason } => value.setattr("reason", reason),
        Error::Status {
            provider,
            status,
            message,
            body,
            code,
            param,
        } => set_api_fields(
            &value,
            Some(*status),
            message,
            body.as_deref(),
            code.as_deref(),
            param.as_deref(),
        )
        .and_then(|()| value.setattr("provider", provider_name(*provider))),
        Error::Timeout { after } => {
            set_api_fields(&value, None, &err.to_string(), None, None, None)
                .and_then(|()| value.setattr("timeout", after.as_secs_f64()))
        }
        Error::Connection { message } => set_api_fields(&value, None, message, None, None, None),
        Error::ResponseFormat { reason } => set_api_fields(&value, None, reason, None, None, None),
        Error::ResponseTooLarge { limit } => {
            set_api_fields(&value, None, &err.to_string(), None, None, None)
                .and_then(|()| value.setattr("limit", *limit))
        }
        Error::Store { operation, .. } => value.setattr("operation", *operation),
        Error::DuplicateRequestId { id, index, first } => value
            .setattr("id", id)
            .and_then(|()| value.setattr("index", *index))
            .and_then(|()| value.setattr("first", *first)),
        Error::JobNotFound { job } => value.setattr("job", job),
        Error::ProviderBatch {
            provider,
            code,
            message,
        } => set_api_fields(&value, None, message, None, Some(code), None)
            .and_then(|()| value.setattr("provider", provider_name(*provider))),
        _ => Ok(()),
    };
    set.expect("exception instances take attributes");
    value
}

/// `ConfigError` for the setting `field`.
pub(crate) fn config_error(field: &'static str, reason: impl Into<String>) -> PyErr {
    to_pyerr(Error::config(field, reason))
}

/// The one conversion from a core error to a Python exception.
pub(crate) fn to_pyerr(err: Error) -> PyErr {
    Python::attach(|py| PyErr::from_value(exception(py, &err)))
}

/// Raise `cls(message)` for one of the binding-level classes.
pub(crate) fn raise(
    py: Python<'_>,
    pick: fn(&Exceptions) -> &Py<PyType>,
    message: String,
) -> PyErr {
    let ty = pick(Exceptions::get(py)).bind(py);
    match ty.call1((message,)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// Add every class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let ex = Exceptions::get(py);
    for ty in [
        &ex.base,
        &ex.config,
        &ex.queue_full,
        &ex.stopped,
        &ex.item_timeout,
        &ex.size_mismatch,
        &ex.invalid_result,
        &ex.wrong_loop,
        &ex.stop_timeout,
        &ex.invalid_input,
        &ex.api,
        &ex.api_status,
        &ex.bad_request,
        &ex.authentication,
        &ex.permission_denied,
        &ex.not_found,
        &ex.conflict,
        &ex.unprocessable,
        &ex.rate_limit,
        &ex.internal_server,
        &ex.api_connection,
        &ex.api_timeout,
        &ex.response_format,
        &ex.response_too_large,
        &ex.limiter_unavailable,
        &ex.store,
        &ex.duplicate_id,
        &ex.job_not_found,
        &ex.provider_batch,
    ] {
        let ty = ty.bind(py);
        m.add(ty.name()?, ty)?;
    }
    Ok(())
}
