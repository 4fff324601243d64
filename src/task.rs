//! Rust async work awaited from Python: [`spawn`] runs a future on the shared runtime and
//! returns an asyncio Future of its outcome. The outcome crosses back with one
//! `loop.call_soon_threadsafe`, and is turned into Python objects on the loop's thread, once
//! per call (a whole batch), never once per item. Cancelling the asyncio Future aborts the
//! Rust work.

use std::future::Future;
use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use tokio::task::AbortHandle;

use crate::crossing::{log_error, set_result};
use crate::runtime::runtime;

/// Builds the Python outcome on the loop's thread: a value, or an exception to raise.
pub(crate) type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// Sets a future's outcome; scheduled on its loop with `call_soon_threadsafe`.
#[pyclass(module = "ferrobatch._native", name = "_Resolve")]
struct Resolve {
    future: Py<PyAny>,
    outcome: Mutex<Option<Outcome>>,
}

#[pymethods]
impl Resolve {
    fn __call__(&self, py: Python<'_>) {
        let Some(outcome) = self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let fut = self.future.bind(py);
        let done = fut
            .call_method0(intern!(py, "done"))
            .and_then(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            return; // cancelled by its caller meanwhile
        }
        match outcome(py) {
            Ok(value) => set_result(py, &self.future, value.bind(py)),
            Err(e) => {
                let _ = fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),));
            }
        }
    }
}

/// Aborts the Rust work when its asyncio Future is done (a cancel; after a normal end the
/// work has already finished and the abort does nothing).
#[pyclass(module = "ferrobatch._native", name = "_Abort")]
struct Abort(AbortHandle);

#[pymethods]
impl Abort {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        self.0.abort();
    }
}

/// Run `work` on the shared runtime; an asyncio Future (of the running loop) of its outcome.
pub(crate) fn spawn<F>(py: Python<'_>, work: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let event_loop = py
        .import(intern!(py, "asyncio"))?
        .call_method0(intern!(py, "get_running_loop"))?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let fut = future.clone().unbind();
    let lp = event_loop.unbind();
    let handle = runtime().spawn(async move {
        let outcome = work.await;
        Python::attach(|py| {
            let resolve = Resolve {
                future: fut,
                outcome: Mutex::new(Some(outcome)),
            };
            let sent = Py::new(py, resolve).and_then(|r| {
                lp.bind(py)
                    .call_method1(intern!(py, "call_soon_threadsafe"), (r,))
            });
            if let Err(e) = sent {
                log_error(
                    py,
                    "could not hand a result to its event loop (is it closed?)",
                    Some(e),
                );
            }
        });
    });
    future.call_method1(
        intern!(py, "add_done_callback"),
        (Abort(handle.abort_handle()),),
    )?;
    Ok(future.unbind())
}
