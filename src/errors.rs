//! The Python exception tree and the one mapping from core errors to it.
//!
//! Every class derives from `ferrobatch.FerrobatchError` and, where a builtin fits, from that
//! builtin too (`QueueFullError` is a plain `FerrobatchError`; `BatcherStoppedError` is also a
//! `RuntimeError`, ...). Multiple bases are not expressible with `create_exception!`, so the
//! classes are built once with `type(name, bases, namespace)` and cached.

use ferrobatch_core::{Error, ErrorKind, Provider, StopReason};
use pyo3::exceptions::{
    PyConnectionError, PyException, PyLookupError, PyRuntimeError, PyTimeoutError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// Every exception class of the package: one per core [`ErrorKind`] and the bindings' own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `FerrobatchError`, the base of all.
    Ferrobatch,
    /// `APIError`, the base of the HTTP errors.
    Api,
    /// The class of a core error kind.
    Kind(ErrorKind),
    /// `InvalidBatchResultError`: the batch function returned something unusable.
    InvalidBatchResult,
    /// `WrongEventLoopError`.
    WrongEventLoop,
    /// `StopTimeoutError`.
    StopTimeout,
}

/// A builtin exception a class also derives from.
#[derive(Debug, Clone, Copy)]
enum Builtin {
    Exception,
    Value,
    Type,
    Runtime,
    Timeout,
    Connection,
    Lookup,
}

/// One base of a class: another of ours or a builtin.
#[derive(Debug, Clone, Copy)]
enum Base {
    Ours(Class),
    Builtin(Builtin),
}

use Base::{Builtin as B, Ours as O};
use ErrorKind as K;

const FERROBATCH: Base = O(Class::Ferrobatch);
const API: Base = O(Class::Api);
const API_STATUS: Base = O(Class::Kind(K::ApiStatus));

/// How a class is made: its bases (ours first) and its docstring.
struct Spec {
    bases: &'static [Base],
    doc: &'static str,
}

const fn spec(bases: &'static [Base], doc: &'static str) -> Spec {
    Spec { bases, doc }
}

const OWN_CLASSES: [Class; 5] = [
    Class::Ferrobatch,
    Class::Api,
    Class::InvalidBatchResult,
    Class::WrongEventLoop,
    Class::StopTimeout,
];
const CLASS_COUNT: usize = OWN_CLASSES.len() + ErrorKind::ALL.len();

impl Class {
    fn all() -> impl Iterator<Item = Class> {
        OWN_CLASSES
            .into_iter()
            .chain(ErrorKind::ALL.into_iter().map(Class::Kind))
    }

    fn index(self) -> usize {
        match self {
            Class::Ferrobatch => 0,
            Class::Api => 1,
            Class::InvalidBatchResult => 2,
            Class::WrongEventLoop => 3,
            Class::StopTimeout => 4,
            Class::Kind(k) => OWN_CLASSES.len() + k as usize,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Ferrobatch => "FerrobatchError",
            Class::Api => "APIError",
            Class::Kind(k) => k.name(),
            Class::InvalidBatchResult => "InvalidBatchResultError",
            Class::WrongEventLoop => "WrongEventLoopError",
            Class::StopTimeout => "StopTimeoutError",
        }
    }

    /// The one table of the exception tree. Exhaustive: a new core kind does not build
    /// until it is given its place here.
    fn spec(self) -> Spec {
        match self {
            Class::Ferrobatch => spec(&[B(Builtin::Exception)], "Base class of every ferrobatch error."),
            Class::Api => spec(&[FERROBATCH],
                "An HTTP API call failed; `message`, `status` (None without a response), `body`, `code` and `param` say how."),
            Class::InvalidBatchResult => spec(&[FERROBATCH, B(Builtin::Type)],
                "The batch function returned something that is not a list, a tuple, another sized iterable, or None."),
            Class::WrongEventLoop => spec(&[FERROBATCH, B(Builtin::Runtime)],
                "The batcher was used from an event loop other than the one it belongs to."),
            Class::StopTimeout => spec(&[FERROBATCH, B(Builtin::Timeout)],
                "stop(timeout=...) ran out of time; what was left was force-stopped."),
            Class::Kind(kind) => match kind {
                K::Config => spec(&[FERROBATCH, B(Builtin::Value)],
                    "A setting is out of range; `field` names it."),
                K::QueueFull => spec(&[FERROBATCH],
                    "The queue holds max_queue_size items and on_full='reject'; `capacity` is the limit."),
                K::Stopped => spec(&[FERROBATCH, B(Builtin::Runtime)],
                    "The batcher is stopped (or was force-stopped or dropped while the item waited); `reason` says which."),
                K::ItemTimeout => spec(&[FERROBATCH, B(Builtin::Timeout)],
                    "The item was not dispatched within item_timeout; it was never dispatched later."),
                K::BatchSizeMismatch => spec(&[FERROBATCH, B(Builtin::Value)],
                    "The batch function returned a different number of results than items; `expected` and `got` say how many."),
                K::InvalidInput => spec(&[FERROBATCH, B(Builtin::Value)],
                    "An item cannot be sent as it is (an empty text, a body that is not JSON, ...)."),
                K::ApiStatus => spec(&[API],
                    "The server answered with an error status (after any retries); `status` holds it."),
                K::BadRequest => spec(&[API_STATUS], "HTTP 400: the server rejected the request."),
                K::Authentication => spec(&[API_STATUS], "HTTP 401: the API key is missing or wrong."),
                K::PermissionDenied => spec(&[API_STATUS], "HTTP 403: the key may not do this."),
                K::NotFound => spec(&[API_STATUS], "HTTP 404: no such model or endpoint."),
                K::Conflict => spec(&[API_STATUS], "HTTP 409, after retries."),
                K::UnprocessableEntity => spec(&[API_STATUS], "HTTP 422: the server could not process the request."),
                K::RateLimit => spec(&[API_STATUS], "HTTP 429, after retries."),
                K::InternalServer => spec(&[API_STATUS], "HTTP 5xx, after retries."),
                K::ApiConnection => spec(&[API, B(Builtin::Connection)],
                    "The connection failed or broke before a response (after any retries)."),
                K::ApiTimeout => spec(&[O(Class::Kind(K::ApiConnection)), B(Builtin::Timeout)],
                    "No response within the request timeout (after any retries); `timeout` is the limit."),
                K::ResponseFormat => spec(&[API],
                    "The server's answer does not have the documented shape (malformed JSON, wrong number of embeddings, ...)."),
                K::ResponseTooLarge => spec(&[O(Class::Kind(K::ResponseFormat))],
                    "The server's answer was larger than max_response_bytes; the rest was not read. `limit` is the cap."),
                K::RateLimiterUnavailable => spec(&[FERROBATCH, B(Builtin::Connection)],
                    "The shared rate limit cannot be consulted (Redis unreachable) and on_redis_error='fail'."),
                K::Store => spec(&[FERROBATCH],
                    "The job store failed (the SQLite file cannot be opened, stays locked, ...)."),
                K::DuplicateRequestId => spec(&[FERROBATCH, B(Builtin::Value)],
                    "Two requests of one job share an id; `id`, `index` and `first` say where."),
                K::JobNotFound => spec(&[FERROBATCH, B(Builtin::Lookup)],
                    "No job with this id in the store; `job` holds the id."),
                K::Cache => spec(&[FERROBATCH],
                    "The result cache's store failed while clearing or counting (`operation` says which); lookups and writes never raise it, they fall back to sending."),
                K::Stream => spec(&[API],
                    "The server reported an error inside a stream it had begun (Anthropic's `error` event, an OpenAI error chunk); every chunk before it was yielded. `code` is its type (`overloaded_error`, ...)."),
                K::ProviderBatch => spec(&[API],
                    "A provider's batch API did not run a request (`code`: batch_expired, batch_cancelled, request_timeout, missing_output) or failed a whole batch (invalid_json_line, ...)."),
            },
        }
    }
}

/// The exception classes, built once per interpreter, indexed by [`Class::index`].
pub(crate) struct Exceptions {
    classes: Vec<Py<PyType>>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

fn builtin<'py>(py: Python<'py>, b: Builtin) -> Bound<'py, PyType> {
    match b {
        Builtin::Exception => py.get_type::<PyException>(),
        Builtin::Value => py.get_type::<PyValueError>(),
        Builtin::Type => py.get_type::<PyTypeError>(),
        Builtin::Runtime => py.get_type::<PyRuntimeError>(),
        Builtin::Timeout => py.get_type::<PyTimeoutError>(),
        Builtin::Connection => py.get_type::<PyConnectionError>(),
        Builtin::Lookup => py.get_type::<PyLookupError>(),
    }
}

/// Make `class` (its bases first) with `type(name, bases, namespace)`: multiple bases are not
/// expressible with `create_exception!`.
fn make(py: Python<'_>, class: Class, made: &mut [Option<Py<PyType>>]) -> PyResult<Py<PyType>> {
    if let Some(ty) = &made[class.index()] {
        return Ok(ty.clone_ref(py));
    }
    let spec = class.spec();
    let mut bases = Vec::with_capacity(spec.bases.len());
    for base in spec.bases {
        bases.push(match *base {
            Base::Ours(parent) => make(py, parent, made)?.into_bound(py),
            Base::Builtin(b) => builtin(py, b),
        });
    }
    let ns = PyDict::new(py);
    ns.set_item("__module__", "ferrobatch")?;
    ns.set_item("__doc__", spec.doc)?;
    let ty = py
        .get_type::<PyType>()
        .call1((class.name(), PyTuple::new(py, bases)?, ns))?
        .cast_into::<PyType>()?
        .unbind();
    made[class.index()] = Some(ty.clone_ref(py));
    Ok(ty)
}

impl Exceptions {
    /// The class object of `class`.
    pub(crate) fn class<'py>(py: Python<'py>, class: Class) -> &'py Bound<'py, PyType> {
        Self::get(py).classes[class.index()].bind(py)
    }

    fn get(py: Python<'_>) -> &Exceptions {
        EXCEPTIONS
            .get_or_try_init(py, || Self::build(py))
            .expect("building the ferrobatch exception classes cannot fail")
    }

    fn build(py: Python<'_>) -> PyResult<Exceptions> {
        let mut made: Vec<Option<Py<PyType>>> = (0..CLASS_COUNT).map(|_| None).collect();
        for class in Class::all() {
            make(py, class, &mut made)?;
        }
        let classes = made
            .into_iter()
            .map(|c| c.expect("every class is made"))
            .collect();
        Ok(Exceptions { classes })
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

/// The registry's name of the provider an error came from.
fn provider_name(p: Provider) -> &'static str {
    ferrobatch_core::providers::REGISTRY
        .iter()
        .find(|f| f.provider == p)
        .map_or("unknown", |f| f.name)
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
    let value = Exceptions::class(py, Class::Kind(err.kind()))
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
        Error::Store { operation, .. } | Error::Cache { operation, .. } => {
            value.setattr("operation", *operation)
        }
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
        Error::Stream {
            provider,
            message,
            code,
        } => set_api_fields(&value, None, message, None, code.as_deref(), None)
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

/// Raise `class(message)`.
pub(crate) fn raise(py: Python<'_>, class: Class, message: String) -> PyErr {
    match Exceptions::class(py, class).call1((message,)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// Add every class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for class in Class::all() {
        m.add(class.name(), Exceptions::class(py, class))?;
    }
    Ok(())
}
