//! Rust async work awaited from Python: [`spawn`] runs a future on the shared runtime and
//! returns an asyncio Future of its outcome. The outcome crosses back with one
//! `loop.call_soon_threadsafe`, and is turned into Python objects on the loop's thread, once
//! per call (a whole batch), never once per item. A large outcome converts in steps, one loop
//! iteration each, so that other tasks run in between. Cancelling the asyncio Future aborts
//! the Rust work.

use std::future::Future;
use std::sync::{Arc, Mutex};

use pyo3::intern;
use pyo3::prelude::*;
use tokio::task::AbortHandle;

use crate::batcher::glue::{
    future_done, log_error, loop_closed, running_loop, set_exception, set_result,
};
use crate::batcher::{ItemFuture, ItemsOut, LoopJob, LoopRef, NativeWork, OnCancel, Resolution};
use crate::runtime::runtime;

/// Builds the Python outcome on the loop's thread, in one or more steps.
pub(crate) trait Convert: Send {
    /// Convert some more: the value when done, `None` when another step is needed, or an
    /// exception to raise.
    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>>;
}

/// The result of Rust work, ready to convert.
pub(crate) type Conversion = Box<dyn Convert>;

struct Once<F>(Option<F>);

impl<F> Convert for Once<F>
where
    F: FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send,
{
    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let f = self.0.take().expect("a one-step conversion runs once");
        f(py).map(Some)
    }
}

/// An outcome converted in one step by `f`.
pub(crate) fn once<F>(f: F) -> Conversion
where
    F: FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send + 'static,
{
    Box::new(Once(Some(f)))
}

/// Sets a future's outcome; scheduled on its loop with `call_soon_threadsafe`, and again with
/// `call_soon` while a conversion has steps left.
#[pyclass(module = "ferrobatch._native", name = "_Resolve")]
struct Resolve {
    future: Py<PyAny>,
    event_loop: Py<PyAny>,
    outcome: Mutex<Option<Conversion>>,
}

#[pymethods]
impl Resolve {
    fn __call__(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.borrow();
        let taken = this
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut outcome) = taken else {
            return;
        };
        if future_done(py, &this.future) {
            return; // cancelled by its caller meanwhile
        }
        let fail = |e: PyErr| set_exception(py, &this.future, e.value(py).as_any());
        match outcome.step(py) {
            Ok(Some(value)) => set_result(py, &this.future, value.bind(py)),
            Ok(None) => {
                *this.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
                let again = this
                    .event_loop
                    .bind(py)
                    .call_method1(intern!(py, "call_soon"), (slf,));
                if let Err(e) = again {
                    fail(e);
                }
            }
            Err(e) => fail(e),
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
    F: Future<Output = Conversion> + Send + 'static,
{
    let event_loop = py
        .import(intern!(py, "asyncio"))?
        .call_method0(intern!(py, "get_running_loop"))?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let fut = future.clone().unbind();
    let lp = event_loop.unbind();
    let handle = runtime().spawn(async move {
        let outcome = work.await;
        // At interpreter exit Python can no longer be entered: the outcome is dropped unseen.
        let _ = crate::exit::attach(|py| {
            let resolve = Resolve {
                future: fut,
                event_loop: lp.clone_ref(py),
                outcome: Mutex::new(Some(outcome)),
            };
            let sent = Py::new(py, resolve).and_then(|r| {
                lp.bind(py)
                    .call_method1(intern!(py, "call_soon_threadsafe"), (r,))
            });
            if let Err(e) = sent {
                // A closed loop refuses: nobody can await the future any more.
                if !loop_closed(py, &lp) {
                    log_error(py, "could not hand a result to its event loop", Some(e));
                }
            }
        });
    });
    future.call_method1(
        intern!(py, "add_done_callback"),
        (Abort(handle.abort_handle()),),
    )?;
    Ok(future.unbind())
}

thread_local! {
    /// The loop last crossed to from this thread: one-shot crossings to the same loop share
    /// its inbox, so results that arrive together join one loop callback.
    static HOME: std::cell::RefCell<Option<Arc<LoopRef>>> = const { std::cell::RefCell::new(None) };
}

/// The running loop's `LoopRef` (the same one for every crossing to it from this thread).
fn home_loop(py: Python<'_>) -> PyResult<Arc<LoopRef>> {
    let running = running_loop(py)?
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no running event loop"))?;
    HOME.with(|h| {
        if let Some(home) = h.borrow().as_ref() {
            if home.event_loop.bind(py).is(&running) {
                return Ok(Arc::clone(home));
            }
        }
        let home = LoopRef::here(running.unbind());
        *h.borrow_mut() = Some(Arc::clone(&home));
        Ok(home)
    })
}

/// Settles an [`ItemFuture`] with a conversion's outcome, on its loop's thread.
struct Deliver {
    fut: Py<ItemFuture>,
    outcome: Conversion,
}

impl LoopJob for Deliver {
    fn run(mut self: Box<Self>, py: Python<'_>, home: &Arc<LoopRef>) -> PyResult<()> {
        let end = match self.outcome.step(py) {
            Ok(Some(value)) => Resolution::Value(value),
            Ok(None) => {
                home.post(self);
                return Ok(());
            }
            Err(e) => Resolution::Error(e.into_value(py).into_any()),
        };
        ItemFuture::settle_now(&self.fut, py, end);
        Ok(())
    }
}

/// Aborts the Rust work when its caller cancels the future.
struct AbortOnCancel(AbortHandle);

impl OnCancel for AbortOnCancel {
    fn cancelled(&self) {
        self.0.abort();
    }
}

/// [`spawn`] for a hot path: the outcome settles the project's own [`ItemFuture`] through
/// the loop's inbox (no GIL on the runtime thread unless a drain must be scheduled, and
/// outcomes arriving together share one loop callback). Cancelling the future aborts the
/// work.
pub(crate) fn spawn_item<F>(py: Python<'_>, work: F) -> PyResult<Py<ItemFuture>>
where
    F: Future<Output = Conversion> + Send + 'static,
{
    let home = home_loop(py)?;
    let fut = Py::new(py, ItemFuture::pending(Arc::clone(&home)))?;
    let settle = fut.clone_ref(py);
    let handle = runtime().spawn(async move {
        let outcome = work.await;
        home.post(Box::new(Deliver {
            fut: settle,
            outcome,
        }));
    });
    fut.get()
        .watch(Arc::new(AbortOnCancel(handle.abort_handle())));
    Ok(fut)
}

/// A batch function's per-item results as one list (an exception instance in a failed item's
/// slot), for a caller that awaits the whole batch.
struct ItemList {
    items: Box<dyn ItemsOut>,
    done: Vec<Resolution>,
}

impl Convert for ItemList {
    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if !self.items.step(py, &mut self.done) {
            return Ok(None);
        }
        let values = std::mem::take(&mut self.done).into_iter().map(|r| match r {
            Resolution::Value(v) | Resolution::Error(v) => v,
        });
        Ok(Some(
            pyo3::types::PyList::new(py, values)?.into_any().unbind(),
        ))
    }
}

/// Run a native batch function's work; an asyncio Future of the list of its items' results.
pub(crate) fn spawn_items(py: Python<'_>, work: NativeWork) -> PyResult<Py<PyAny>> {
    spawn(py, async move {
        Box::new(ItemList {
            items: work.await,
            done: Vec::new(),
        }) as Conversion
    })
}

/// Ints as a Python list, a slice per step.
struct IntList {
    values: Vec<i64>,
    at: usize,
    out: Vec<Py<PyAny>>,
}

impl Convert for IntList {
    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let end = (self.at + (1 << 16)).min(self.values.len());
        for v in &self.values[self.at..end] {
            self.out.push(v.into_pyobject(py)?.into_any().unbind());
        }
        self.at = end;
        if self.at < self.values.len() {
            return Ok(None);
        }
        Ok(Some(
            pyo3::types::PyList::new(py, std::mem::take(&mut self.out))?
                .into_any()
                .unbind(),
        ))
    }
}

/// A measuring probe for `bench/oneshot.py`: an awaitable of `list(range(size))` made on the
/// runtime, crossing back by this module's `spawn` (`via="ferrobatch"`, converted in steps) or
/// by pyo3-async-runtimes' `future_into_py` (`via="pyo3-async-runtimes"`, on its own tokio
/// runtime). The numbers decide which one-shot awaitables use (see docs/design.md).
#[pyfunction]
pub(crate) fn _oneshot_probe<'py>(
    py: Python<'py>,
    size: usize,
    via: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let work = async move { (0..size as i64).collect::<Vec<i64>>() };
    match via {
        "ferrobatch" => spawn(py, async move {
            let values = work.await;
            Box::new(IntList {
                values,
                at: 0,
                out: Vec::new(),
            }) as Conversion
        })
        .map(|f| f.into_bound(py)),
        "pyo3-async-runtimes" => {
            pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(work.await) })
        }
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "via must be 'ferrobatch' or 'pyo3-async-runtimes', got {other:?}"
        ))),
    }
}
