//! Where results cross from Rust into Python: one event-loop callback per batch, never one per
//! item.
//!
//! A queued Python item carries its value and its *sink*: the asyncio Future its caller awaits,
//! or a slot in a group that `process_many` resolves with one list. Work made due on the event
//! loop's own thread (a submit that fills a batch, a batch that finishes) is delivered in place;
//! work made due on the timer thread is sent over with one `loop.call_soon_threadsafe` per
//! wake-up, whatever it holds.

use std::sync::{Arc, Mutex, OnceLock};

use ferrobatch_core::{Dispatcher, Error, Receipt, StopReason, Work};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::batch::Batch;
use crate::errors;

/// Results of a `process_many` call, gathered into one list for one future.
pub(crate) struct Group {
    inner: Mutex<GroupInner>,
}

struct GroupInner {
    future: Option<Py<PyAny>>,
    results: Vec<Option<Py<PyAny>>>,
    remaining: usize,
}

impl Group {
    pub(crate) fn new(future: Py<PyAny>, size: usize) -> Arc<Group> {
        let mut results = Vec::with_capacity(size);
        results.resize_with(size, || None);
        Arc::new(Group {
            inner: Mutex::new(GroupInner {
                future: Some(future),
                results,
                remaining: size,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Give up on the group (its call failed before returning): its items become dead.
    pub(crate) fn abandon(&self) {
        self.lock().future = None;
    }
}

/// Where an item's outcome goes.
pub(crate) enum Sink {
    Future(Py<PyAny>),
    Group(Arc<Group>, usize),
}

/// One queued Python item.
pub(crate) struct PyItem {
    pub value: Py<PyAny>,
    pub sink: Sink,
}

/// `obj.name()` or `obj.name(arg)` through `PyObject_CallMethodObjArgs`, which — unlike
/// pyo3's getattr-then-call under the limited API — allocates neither a bound method nor an
/// argument tuple. It runs for every item of every batch, so those two allocations (both
/// tracked by the cyclic GC) matter.
fn call_method<'py>(
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

pub(crate) fn future_done(py: Python<'_>, fut: &Py<PyAny>) -> bool {
    // A failing `done()` means something is badly off with the future; treat it as finished
    // so that nothing is dispatched for a caller who can no longer receive it.
    call_method(fut.bind(py), intern!(py, "done"), None)
        .and_then(|v| v.is_truthy())
        .unwrap_or(true)
}

/// `fut.set_result(value)`; a future its caller cancelled meanwhile refuses, which is fine.
pub(crate) fn set_result(py: Python<'_>, fut: &Py<PyAny>, value: &Bound<'_, PyAny>) {
    let _ = call_method(fut.bind(py), intern!(py, "set_result"), Some(value));
}

/// `fut.set_exception(exc)`; a future its caller cancelled meanwhile refuses, which is fine.
pub(crate) fn set_exception(py: Python<'_>, fut: &Py<PyAny>, exc: &Bound<'_, PyAny>) {
    let _ = call_method(fut.bind(py), intern!(py, "set_exception"), Some(exc));
}

impl Sink {
    /// Whether someone still waits for this item (its caller did not cancel).
    pub(crate) fn is_live(&self, py: Python<'_>) -> bool {
        match self {
            Sink::Future(f) => !future_done(py, f),
            Sink::Group(g, _) => g
                .lock()
                .future
                .as_ref()
                .is_some_and(|f| !future_done(py, f)),
        }
    }

    /// Hand the item its result. A future its caller cancelled in the meantime ignores it.
    pub(crate) fn succeed(&self, py: Python<'_>, value: Py<PyAny>) {
        match self {
            Sink::Future(f) => set_result(py, f, value.bind(py)),
            Sink::Group(g, idx) => {
                let mut inner = g.lock();
                if inner.future.is_none() || inner.results[*idx].is_some() {
                    return;
                }
                inner.results[*idx] = Some(value);
                inner.remaining -= 1;
                if inner.remaining == 0 {
                    let fut = inner.future.take().expect("checked above");
                    let results = std::mem::take(&mut inner.results);
                    drop(inner);
                    let list = PyList::new(py, results.into_iter().map(|r| r.expect("all filled")))
                        .expect("list of objects");
                    set_result(py, &fut, list.as_any());
                }
            }
        }
    }

    /// Hand the item an exception. A group fails as a whole on its first error.
    pub(crate) fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) {
        match self {
            Sink::Future(f) => set_exception(py, f, exc),
            Sink::Group(g, _) => {
                let fut = g.lock().future.take();
                if let Some(fut) = fut {
                    set_exception(py, &fut, exc);
                }
            }
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Sink::Future(f) = self {
            visit.call(f)?;
        }
        Ok(())
    }
}

impl PyItem {
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)?;
        self.sink.traverse(visit)
    }
}

/// Fail every item of a group with one exception instance.
pub(crate) fn fail_all(py: Python<'_>, items: &[PyItem], exc: &Bound<'_, PyAny>) {
    for item in items {
        item.sink.fail(py, exc);
    }
}

/// What a batcher shares with its timer thread: the loop it belongs to and how to start a
/// batch. Holds the Python batcher only weakly, so an idle batcher can be garbage-collected.
pub(crate) struct Crossing {
    /// The event loop and its bound `create_future`, set on first use.
    pub(crate) event_loop: OnceLock<(Py<PyAny>, Py<PyAny>)>,
    /// `weakref.WeakMethod` of the Python batcher's `_start(batch)`.
    pub(crate) start: Py<PyAny>,
    /// Futures waiting for the drain, and whether it happened.
    drain: Mutex<(bool, Vec<Py<PyAny>>)>,
}

impl Crossing {
    pub(crate) fn new(start: Py<PyAny>) -> Arc<Crossing> {
        Arc::new(Crossing {
            event_loop: OnceLock::new(),
            start,
            drain: Mutex::new((false, Vec::new())),
        })
    }

    fn drain_lock(&self) -> std::sync::MutexGuard<'_, (bool, Vec<Py<PyAny>>)> {
        self.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A future that resolves once the engine has drained (already resolved if it has).
    pub(crate) fn drain_waiter(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let fut = event_loop.call_method0(intern!(py, "create_future"))?;
        let mut d = self.drain_lock();
        if d.0 {
            drop(d);
            fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
        } else {
            d.1.push(fut.clone().unbind());
        }
        Ok(fut.unbind())
    }

    /// Deliver work on the event loop's thread: start batches, fail items, wake drain waiters.
    pub(crate) fn deliver(self: &Arc<Self>, py: Python<'_>, work: Work<PyItem>) {
        for (items, err) in &work.failures {
            let exc = errors::exception(py, err);
            fail_all(py, items, &exc);
        }
        for batch in work.batches {
            self.start(py, batch);
        }
        if work.drained {
            let waiters = {
                let mut d = self.drain_lock();
                d.0 = true;
                std::mem::take(&mut d.1)
            };
            for w in waiters {
                if !future_done(py, &w) {
                    set_result(py, &w, py.None().bind(py));
                }
            }
        }
    }

    fn start(self: &Arc<Self>, py: Python<'_>, batch: ferrobatch_core::Batch<PyItem>) {
        let start = match self.start.bind(py).call0() {
            Ok(s) if !s.is_none() => s,
            _ => {
                // The Python batcher is gone: nobody can run this batch.
                let err = Error::Stopped {
                    reason: StopReason::Dropped,
                };
                let exc = errors::exception(py, &err);
                fail_all(py, &batch.items, &exc);
                let n = batch.items.len();
                let work = batch.ticket.finish(ferrobatch_core::Outcome {
                    failed: n,
                    ..Default::default()
                });
                self.deliver(py, work);
                return;
            }
        };
        let obj = match Py::new(py, Batch::new(Arc::clone(self), batch)) {
            Ok(obj) => obj,
            Err(e) => {
                log_error(py, "could not create a batch object", Some(e));
                return;
            }
        };
        if let Err(e) = start.call1((obj.clone_ref(py),)) {
            // Starting failed (a bug, or the loop is closing): the batch's items get the error.
            let exc = e.value(py).clone().into_any();
            obj.get().fail_with(py, &exc);
        }
    }
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

/// Work made due on the timer thread, carried to the loop by one `call_soon_threadsafe`.
#[pyclass(module = "ferrobatch._native", name = "_Delivery")]
pub(crate) struct Delivery {
    crossing: Arc<Crossing>,
    work: Mutex<Option<(Work<PyItem>, Receipt<PyItem>)>>,
}

#[pymethods]
impl Delivery {
    fn __call__(&self, py: Python<'_>) {
        let taken = self.work.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((work, receipt)) = taken {
            self.crossing.deliver(py, work);
            // Only now may the engine report a drain that this work was part of.
            let more = receipt.delivered();
            if !more.is_empty() {
                self.crossing.deliver(py, more);
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(guard) = self.work.try_lock() {
            if let Some((work, _)) = guard.as_ref() {
                for b in &work.batches {
                    for i in &b.items {
                        i.traverse(&visit)?;
                    }
                }
                for (items, _) in &work.failures {
                    for i in items {
                        i.traverse(&visit)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `event_loop` is closed: nothing scheduled on it would ever run, and nobody can
/// await its futures any more.
pub(crate) fn loop_closed(py: Python<'_>, event_loop: &Py<PyAny>) -> bool {
    call_method(event_loop.bind(py), intern!(py, "is_closed"), None)
        .and_then(|v| v.is_truthy())
        .unwrap_or(true)
}

/// The engine's dispatcher for Python batchers: runs on the timer thread.
pub(crate) struct LoopDispatcher(pub(crate) Arc<Crossing>);

impl Dispatcher<PyItem> for LoopDispatcher {
    fn dispatch(&self, work: Work<PyItem>, receipt: Receipt<PyItem>) {
        // At interpreter exit Python can no longer be entered: the work is dropped unseen (its
        // futures belong to a loop that no longer runs; pyo3 defers their reference counts),
        // without a panic or a message.
        let _ = crate::exit::attach(|py| {
            let Some((event_loop, _)) = self.0.event_loop.get() else {
                // No loop was ever bound, so no item was ever queued: nothing to deliver.
                return;
            };
            let delivery = Delivery {
                crossing: Arc::clone(&self.0),
                work: Mutex::new(Some((work, receipt))),
            };
            let result = Py::new(py, delivery).and_then(|d| {
                event_loop
                    .bind(py)
                    .call_method1(intern!(py, "call_soon_threadsafe"), (d,))
            });
            if let Err(e) = result {
                // A closed loop refuses (`asyncio.run` returned with items queued): their
                // futures can never be awaited again, so there is nobody to tell.
                if !loop_closed(py, event_loop) {
                    log_error(
                        py,
                        "could not hand work to the batcher's event loop; its items cannot be resolved",
                        Some(e),
                    );
                }
            }
        });
    }
}
