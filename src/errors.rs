//! The Python exception tree and the one mapping from core errors to it.
//!
//! Every class derives from `ferrobatch.FerrobatchError` and, where a builtin fits, from that
//! builtin too (`QueueFullError` is a plain `FerrobatchError`; `BatcherStoppedError` is also a
//! `RuntimeError`, ...). Multiple bases are not expressible with `create_exception!`, so the
//! classes are built once with `type(name, bases, namespace)` and cached.

use ferrobatch_core::{Error, StopReason};
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
        Ok(Exceptions {
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

/// Build the exception instance for a core error (one instance may be shared by many items),
/// with the error's structured fields as attributes.
pub(crate) fn exception<'py>(py: Python<'py>, err: &Error) -> Bound<'py, PyAny> {
    let ex = Exceptions::get(py);
    let ty = match err {
        Error::InvalidConfig { .. } => &ex.config,
        Error::QueueFull { .. } => &ex.queue_full,
        Error::Stopped { .. } => &ex.stopped,
        Error::ItemTimeout { .. } => &ex.item_timeout,
        Error::BatchSizeMismatch { .. } => &ex.size_mismatch,
        _ => &ex.base,
    };
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
        _ => Ok(()),
    };
    set.expect("exception instances take attributes");
    value
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
    ] {
        let ty = ty.bind(py);
        m.add(ty.name()?, ty)?;
    }
    Ok(())
}
