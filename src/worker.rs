//! Running a synchronous batch function on Rust-owned threads: each batch takes a thread from
//! the tokio runtime's blocking pool, enters Python once, calls the function with the items
//! whose callers still wait, and settles every item from there. No event loop is involved, so
//! callers on plain threads and on any event loop share the same batches.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::batch::Batch;
use crate::crossing::{log_error, Crossing, PyItem};
use crate::errors;

/// Run `batch` on a blocking-pool thread.
pub(crate) fn spawn(crossing: Arc<Crossing>, batch: ferrobatch_core::Batch<PyItem>) {
    crate::runtime::runtime().spawn_blocking(move || {
        // At interpreter exit the batch is dropped unrun: its callers no longer run either.
        let _ = crate::exit::attach(|py| run(py, &crossing, batch));
    });
}

fn run(py: Python<'_>, crossing: &Arc<Crossing>, batch: ferrobatch_core::Batch<PyItem>) {
    let threaded = crossing.threaded.as_ref().expect("a threaded batcher");
    let func = if threaded.weak {
        match threaded.func.bind(py).call0() {
            Ok(f) if !f.is_none() => f,
            _ => {
                crossing.drop_batch(py, batch);
                return;
            }
        }
    } else {
        threaded.func.bind(py).clone()
    };
    let obj = match Py::new(py, Batch::new(Arc::clone(crossing), batch)) {
        Ok(obj) => obj,
        Err(e) => {
            log_error(py, "could not create a batch object", Some(e));
            return;
        }
    };
    let key = crossing.register(obj.clone_ref(py));
    call(py, crossing, &func, &obj);
    crossing.unregister(key);
}

fn call(py: Python<'_>, crossing: &Crossing, func: &Bound<'_, PyAny>, obj: &Py<Batch>) {
    let batch = obj.get();
    let items = match batch.live_items(py) {
        Ok(items) => items,
        Err(e) => {
            batch.fail_with(py, e.value(py).as_any());
            return;
        }
    };
    if items.is_empty() {
        // Every caller cancelled: the batch function is not called.
        let _ = batch.resolve_with(py, PyList::empty(py).as_any());
        return;
    }
    let n = items.len();
    match func.call1((items,)) {
        Ok(result) => {
            if is_awaitable(&result) {
                hand_to_loop(py, crossing, obj, result);
            } else {
                let _ = batch.resolve_with(py, &result);
            }
        }
        Err(e) => {
            log_failure(py, n, &e);
            batch.fail_with(py, e.value(py).as_any());
        }
    }
}

fn is_awaitable(result: &Bound<'_, PyAny>) -> bool {
    !(result.is_none() || result.is_instance_of::<PyList>() || result.is_instance_of::<PyTuple>())
        && result
            .hasattr(pyo3::intern!(result.py(), "__await__"))
            .unwrap_or(false)
}

/// A plain function returned an awaitable (say, a lambda around an async function): it is
/// awaited on the loop the batcher was first used from, or fails the batch if there is none.
fn hand_to_loop(py: Python<'_>, crossing: &Crossing, obj: &Py<Batch>, awaitable: Bound<'_, PyAny>) {
    let threaded = crossing.threaded.as_ref().expect("a threaded batcher");
    let finish = threaded
        .finish
        .bind(py)
        .call0()
        .ok()
        .filter(|f| !f.is_none());
    if let (Some(home), Some(finish)) = (crossing.home.get(), finish) {
        let sent = home.event_loop.bind(py).call_method1(
            pyo3::intern!(py, "call_soon_threadsafe"),
            (finish, obj.clone_ref(py), &awaitable),
        );
        if sent.is_ok() {
            return;
        }
    }
    let _ = awaitable.call_method0("close");
    let err = errors::raise(
        py,
        |e| &e.invalid_result,
        "the batch function returned an awaitable, and no event loop uses this batcher to \
         await it on; declare the batch function `async def`"
            .to_string(),
    );
    obj.get().fail_with(py, err.value(py).as_any());
}

/// The same record `AsyncBatcher` logs for a failed async batch.
fn log_failure(py: Python<'_>, n: usize, err: &PyErr) {
    let Ok(logger) = py
        .import("logging")
        .and_then(|l| l.call_method1("getLogger", ("ferrobatch",)))
    else {
        return;
    };
    let kwargs = pyo3::types::PyDict::new(py);
    let _ = kwargs.set_item("exc_info", err.value(py));
    let _ = logger.call_method(
        "error",
        ("batch of %d items failed: %r", n, err.value(py)),
        Some(&kwargs),
    );
}
