//! The asyncio glue every other module of the batcher (and `crate::task`) uses: calling a
//! Future's or a loop's methods cheaply, the running loop, the calling thread, and logging
//! under the `ferrobatch` logger. A leaf: it imports nothing from the rest of the crate.

use std::thread::ThreadId;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

thread_local! {
    static THREAD: ThreadId = std::thread::current().id();
}

/// The calling thread's id, cheaply.
pub(crate) fn current_thread() -> ThreadId {
    THREAD.with(|t| *t)
}

/// Python objects the futures need, looked up once.
pub(crate) struct Asyncio {
    pub(crate) get_running_loop: Py<PyAny>,
    pub(crate) copy_context: Py<PyAny>,
    pub(crate) cancelled_error: Py<PyAny>,
    pub(crate) invalid_state: Py<PyAny>,
}

static ASYNCIO: PyOnceLock<Asyncio> = PyOnceLock::new();

/// asyncio's objects, imported once.
pub(crate) fn asyncio(py: Python<'_>) -> &Asyncio {
    ASYNCIO
        .get_or_try_init(py, || {
            let aio = py.import("asyncio")?;
            Ok::<_, PyErr>(Asyncio {
                // Returns None instead of raising when no loop runs: cheap on the hot path.
                get_running_loop: aio.getattr("_get_running_loop")?.unbind(),
                copy_context: py.import("contextvars")?.getattr("copy_context")?.unbind(),
                cancelled_error: aio.getattr("CancelledError")?.unbind(),
                invalid_state: aio.getattr("InvalidStateError")?.unbind(),
            })
        })
        .expect("asyncio is importable")
}

/// The loop running on this thread, if any.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    let l = asyncio(py).get_running_loop.bind(py).call0()?;
    Ok(if l.is_none() { None } else { Some(l) })
}

/// `obj.name()` or `obj.name(arg)` through `PyObject_CallMethodObjArgs`, which — unlike
/// pyo3's getattr-then-call under the limited API — allocates neither a bound method nor an
/// argument tuple. It runs for every item of every batch, so those two allocations (both
/// tracked by the cyclic GC) matter.
pub(crate) fn call_method<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    arg: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let end = std::ptr::null_mut::<ffi::PyObject>();
    // SAFETY: every pointer is a live object borrowed for the call (the GIL is held through
    // `'py`), the argument list is NULL-terminated, and the result is a new reference or NULL
    // with an exception set, which `from_owned_ptr_or_err` turns into a `PyErr`.
    unsafe {
        let result = match arg {
            Some(a) => {
                ffi::PyObject_CallMethodObjArgs(obj.as_ptr(), name.as_ptr(), a.as_ptr(), end)
            }
            None => ffi::PyObject_CallMethodObjArgs(obj.as_ptr(), name.as_ptr(), end),
        };
        Bound::from_owned_ptr_or_err(obj.py(), result)
    }
}

/// `fut.done()` of an asyncio or `concurrent.futures` Future; a failing `done()` counts as
/// done, so nothing is dispatched for a caller who can no longer receive it.
pub(crate) fn future_done(py: Python<'_>, fut: &Py<PyAny>) -> bool {
    call_method(fut.bind(py), intern!(py, "done"), None)
        .and_then(|v| v.is_truthy())
        .unwrap_or(true)
}

/// `fut.set_result(value)` (asyncio or `concurrent.futures`); a cancelled one refuses.
pub(crate) fn set_result(py: Python<'_>, fut: &Py<PyAny>, value: &Bound<'_, PyAny>) {
    let _ = call_method(fut.bind(py), intern!(py, "set_result"), Some(value));
}

/// `fut.set_exception(exc)` (asyncio or `concurrent.futures`); a cancelled one refuses.
pub(crate) fn set_exception(py: Python<'_>, fut: &Py<PyAny>, exc: &Bound<'_, PyAny>) {
    let _ = call_method(fut.bind(py), intern!(py, "set_exception"), Some(exc));
}

/// `fut.set_running_or_notify_cancel()` of a `concurrent.futures.Future`: whether it runs now
/// (False: its caller cancelled it).
pub(crate) fn set_running(py: Python<'_>, fut: &Py<PyAny>) -> bool {
    call_method(
        fut.bind(py),
        intern!(py, "set_running_or_notify_cancel"),
        None,
    )
    .and_then(|v| v.is_truthy())
    .unwrap_or(false)
}

/// Whether `event_loop` is closed: nothing scheduled on it would ever run, and nobody can
/// await its futures any more.
pub(crate) fn loop_closed(py: Python<'_>, event_loop: &Py<PyAny>) -> bool {
    call_method(event_loop.bind(py), intern!(py, "is_closed"), None)
        .and_then(|v| v.is_truthy())
        .unwrap_or(true)
}

/// Log through Python's `logging` under the `ferrobatch` logger.
pub(crate) fn log_error(py: Python<'_>, message: &str, err: Option<PyErr>) {
    let Ok(logging) = py.import("logging") else {
        return;
    };
    let Ok(logger) = logging.call_method1("getLogger", ("ferrobatch",)) else {
        return;
    };
    let kwargs = pyo3::types::PyDict::new(py);
    if let Some(e) = err {
        let _ = kwargs.set_item("exc_info", e.into_value(py));
    }
    let _ = logger.call_method("error", ("%s", message), Some(&kwargs));
}
