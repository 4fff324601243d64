//! Where outcomes cross from Rust into Python: one callback per batch, never one per item.
//!
//! A queued Python item carries its value and its *sink*: the `ItemFuture` an asyncio caller
//! awaits, a slot in a group that `process_many` resolves with one list, a [`Waiter`] a
//! blocked thread sleeps on, or a `concurrent.futures.Future` from `submit`. Sinks are settled
//! with the GIL from whichever thread ends the item; asyncio callers' done callbacks then run
//! from one loop callback per batch ([`Resolver`]).
//!
//! Batches run one of two ways. An async batch function (or a sync one with an `executor`)
//! runs on the batcher's event loop: work made due elsewhere (the timer thread, a caller on a
//! plain thread) is carried there with one `call_soon_threadsafe`. A sync batch function runs
//! on a Rust-owned thread ([`crate::worker`]) that takes the GIL once per batch; its batchers
//! need no event loop at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ferrobatch_core::{Dispatcher, Error, Receipt, StopReason, Work};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::batch::Batch;
use crate::errors;
use crate::future::{current_thread, ItemFuture, LoopRef, Outcome, Resolver};
use crate::waiter::Waiter;

/// Who receives a group's list (or its first error).
pub(crate) enum Target {
    Future(Py<ItemFuture>),
    Waiter(Arc<Waiter>),
}

impl Target {
    fn is_live(&self) -> bool {
        match self {
            Target::Future(f) => !f.get().is_done(),
            Target::Waiter(w) => w.is_live(),
        }
    }

    fn settle(self, py: Python<'_>, outcome: Outcome, r: &mut Resolver) {
        match self {
            Target::Future(f) => ItemFuture::settle(&f, py, outcome, r),
            Target::Waiter(w) => w.set(outcome),
        }
    }
}

/// Results of a `process_many` call, gathered into one list for one receiver.
pub(crate) struct Group {
    inner: Mutex<GroupInner>,
}

struct GroupInner {
    target: Option<Target>,
    results: Vec<Option<Py<PyAny>>>,
    remaining: usize,
}

impl Group {
    pub(crate) fn new(target: Target, size: usize) -> Arc<Group> {
        let mut results = Vec::with_capacity(size);
        results.resize_with(size, || None);
        Arc::new(Group {
            inner: Mutex::new(GroupInner {
                target: Some(target),
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
        self.lock().target = None;
    }
}

/// Where an item's outcome goes.
pub(crate) enum Sink {
    Future(Py<ItemFuture>),
    Group(Arc<Group>, usize),
    Waiter(Arc<Waiter>),
    /// A `concurrent.futures.Future` from `submit`.
    Concurrent(Py<PyAny>),
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

impl Sink {
    /// The item's batch is starting: whether someone still waits for it. A caller who
    /// cancelled is dropped here; a `concurrent.futures.Future` becomes running (and can no
    /// longer be cancelled).
    pub(crate) fn claim(&self, py: Python<'_>) -> bool {
        match self {
            Sink::Future(f) => !f.get().is_done(),
            Sink::Group(g, _) => g.lock().target.as_ref().is_some_and(Target::is_live),
            Sink::Waiter(w) => w.is_live(),
            Sink::Concurrent(f) => call_method(
                f.bind(py),
                intern!(py, "set_running_or_notify_cancel"),
                None,
            )
            .and_then(|v| v.is_truthy())
            .unwrap_or(false),
        }
    }

    /// Hand the item its result. A caller who cancelled in the meantime ignores it.
    pub(crate) fn succeed(&self, py: Python<'_>, value: Py<PyAny>, r: &mut Resolver) {
        match self {
            Sink::Future(f) => ItemFuture::settle(f, py, Outcome::Value(value), r),
            Sink::Waiter(w) => w.set(Outcome::Value(value)),
            Sink::Concurrent(f) => set_result(py, f, value.bind(py)),
            Sink::Group(g, idx) => {
                let mut inner = g.lock();
                if inner.target.is_none() || inner.results[*idx].is_some() {
                    return;
                }
                inner.results[*idx] = Some(value);
                inner.remaining -= 1;
                if inner.remaining == 0 {
                    let target = inner.target.take().expect("checked above");
                    let results = std::mem::take(&mut inner.results);
                    drop(inner);
                    let list = PyList::new(py, results.into_iter().map(|r| r.expect("all filled")))
                        .expect("list of objects");
                    target.settle(py, Outcome::Value(list.into_any().unbind()), r);
                }
            }
        }
    }

    /// Hand the item an exception. A group fails as a whole on its first error.
    pub(crate) fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>, r: &mut Resolver) {
        match self {
            Sink::Future(f) => ItemFuture::settle(f, py, Outcome::Error(exc.clone().unbind()), r),
            Sink::Waiter(w) => w.set(Outcome::Error(exc.clone().unbind())),
            Sink::Concurrent(f) => set_exception(py, f, exc),
            Sink::Group(g, _) => {
                let target = g.lock().target.take();
                if let Some(t) = target {
                    t.settle(py, Outcome::Error(exc.clone().unbind()), r);
                }
            }
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Sink::Future(f) => visit.call(f),
            Sink::Concurrent(f) => visit.call(f),
            _ => Ok(()),
        }
    }
}

impl PyItem {
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)?;
        self.sink.traverse(visit)
    }
}

/// Fail every item of a group with one exception instance.
pub(crate) fn fail_all(py: Python<'_>, items: &[PyItem], exc: &Bound<'_, PyAny>, r: &mut Resolver) {
    for item in items {
        item.sink.fail(py, exc, r);
    }
}

/// A sync batch function run on Rust-owned threads.
pub(crate) struct Threaded {
    /// The function, or a `weakref.WeakMethod` of it when `weak`.
    pub(crate) func: Py<PyAny>,
    pub(crate) weak: bool,
    /// `weakref.WeakMethod` of the batcher's `_finish(batch, awaitable)`, for a plain function
    /// that returned an awaitable: it is awaited on the event loop.
    pub(crate) finish: Py<PyAny>,
    /// The threads that run the batches.
    pub(crate) pool: crate::worker::Pool,
}

/// What a batcher shares with its timer and worker threads: the loop its async batches run
/// on, how to start a batch, and who waits for the drain. Holds the Python batcher only
/// weakly, so an idle batcher can be garbage-collected.
pub(crate) struct Crossing {
    /// The loop async batches run on: the first one the batcher was used from.
    pub(crate) home: OnceLock<Arc<LoopRef>>,
    /// `weakref.WeakMethod` of the Python batcher's `_start(batch)` (async batches).
    pub(crate) start: Py<PyAny>,
    /// Set when batches run on Rust threads.
    pub(crate) threaded: Option<Threaded>,
    /// Waiters for the drain, and whether it happened.
    drain: Mutex<(bool, Vec<Sink>)>,
    /// Batches running on Rust threads, for a forced stop.
    running: Mutex<(u64, HashMap<u64, Py<Batch>>)>,
    /// Set by a forced stop: batches still waiting for a thread end stopped too.
    forced: AtomicBool,
}

impl Crossing {
    pub(crate) fn new(start: Py<PyAny>, threaded: Option<Threaded>) -> Arc<Crossing> {
        Arc::new(Crossing {
            home: OnceLock::new(),
            start,
            threaded,
            drain: Mutex::new((false, Vec::new())),
            running: Mutex::new((0, HashMap::new())),
            forced: AtomicBool::new(false),
        })
    }

    fn drain_lock(&self) -> std::sync::MutexGuard<'_, (bool, Vec<Sink>)> {
        self.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Py<Batch>>)> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for the drain through `sink` (settled at once if it already happened).
    pub(crate) fn wait_drain(&self, py: Python<'_>, sink: Sink) {
        let mut d = self.drain_lock();
        if d.0 {
            drop(d);
            let mut r = Resolver::default();
            sink.succeed(py, py.None(), &mut r);
            r.flush(py);
        } else {
            d.1.push(sink);
        }
    }

    /// Remember a batch running on a Rust thread; returns its key.
    pub(crate) fn register(&self, batch: Py<Batch>) -> u64 {
        let mut g = self.running_lock();
        g.0 += 1;
        let key = g.0;
        g.1.insert(key, batch);
        key
    }

    pub(crate) fn unregister(&self, key: u64) {
        let b = self.running_lock().1.remove(&key);
        drop(b);
    }

    /// Forced stop: every batch running on a Rust thread fails now with
    /// `BatcherStoppedError` (its function's late result is ignored).
    pub(crate) fn abort_running(&self, py: Python<'_>) {
        self.forced.store(true, Ordering::SeqCst);
        let batches: Vec<Py<Batch>> = self
            .running_lock()
            .1
            .values()
            .map(|b| b.clone_ref(py))
            .collect();
        for b in batches {
            b.get().abort_now(py);
        }
    }

    /// Whether a forced stop happened (batches formed before it and started after it end
    /// stopped, as the Python runner does for async batches).
    pub(crate) fn is_forced(&self) -> bool {
        self.forced.load(Ordering::SeqCst)
    }

    /// Whether the calling thread runs the batcher's event loop.
    fn on_home_thread(&self) -> bool {
        self.home
            .get()
            .is_some_and(|h| h.thread == current_thread())
    }

    /// Deliver work made due on any thread: in place where that is allowed (batches on Rust
    /// threads, or the batcher's own loop thread), otherwise carried to the loop.
    pub(crate) fn handle(self: &Arc<Self>, py: Python<'_>, work: Work<PyItem>) {
        if work.is_empty() {
            return;
        }
        if self.threaded.is_some() || self.on_home_thread() || self.home.get().is_none() {
            self.deliver(py, work);
        } else {
            self.send_to_loop(py, work, None);
        }
    }

    /// Deliver work here: start batches, fail items, settle drain waiters.
    pub(crate) fn deliver(self: &Arc<Self>, py: Python<'_>, work: Work<PyItem>) {
        let mut r = Resolver::default();
        for (items, err) in &work.failures {
            let exc = errors::exception(py, err);
            fail_all(py, items, &exc, &mut r);
        }
        if work.drained {
            let waiters = {
                let mut d = self.drain_lock();
                d.0 = true;
                std::mem::take(&mut d.1)
            };
            for w in waiters {
                w.succeed(py, py.None(), &mut r);
            }
        }
        r.flush(py);
        for batch in work.batches {
            self.start(py, batch);
        }
    }

    fn start(self: &Arc<Self>, py: Python<'_>, batch: ferrobatch_core::Batch<PyItem>) {
        if self.threaded.is_some() {
            crate::worker::spawn(Arc::clone(self), batch);
            return;
        }
        let start = match self.start.bind(py).call0() {
            Ok(s) if !s.is_none() => s,
            _ => {
                self.drop_batch(py, batch);
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

    /// The Python batcher is gone: nobody can run this batch.
    pub(crate) fn drop_batch(
        self: &Arc<Self>,
        py: Python<'_>,
        batch: ferrobatch_core::Batch<PyItem>,
    ) {
        let err = Error::Stopped {
            reason: StopReason::Dropped,
        };
        let exc = errors::exception(py, &err);
        let mut r = Resolver::default();
        fail_all(py, &batch.items, &exc, &mut r);
        r.flush(py);
        let n = batch.items.len();
        let work = batch.ticket.finish(ferrobatch_core::Outcome {
            failed: n,
            ..Default::default()
        });
        self.handle(py, work);
    }

    /// Carry work to the batcher's loop with one `call_soon_threadsafe`.
    fn send_to_loop(
        self: &Arc<Self>,
        py: Python<'_>,
        work: Work<PyItem>,
        receipt: Option<Receipt<PyItem>>,
    ) {
        let Some(home) = self.home.get() else {
            // No loop was ever bound, so no item was ever queued: nothing to deliver.
            return;
        };
        let delivery = Delivery {
            crossing: Arc::clone(self),
            work: Mutex::new(Some((work, receipt))),
        };
        let result = Py::new(py, delivery).and_then(|d| {
            home.event_loop
                .bind(py)
                .call_method1(intern!(py, "call_soon_threadsafe"), (d,))
        });
        if let Err(e) = result {
            // A closed loop refuses (`asyncio.run` returned with items queued): their
            // futures can never be awaited again, so there is nobody to tell.
            if !loop_closed(py, &home.event_loop) {
                log_error(
                    py,
                    "could not hand work to the batcher's event loop; its items cannot be resolved",
                    Some(e),
                );
            }
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

/// Work carried to the loop, with the timer thread's receipt when it came from there.
type Carried = (Work<PyItem>, Option<Receipt<PyItem>>);

/// Work made due on the timer thread, carried to the loop by one `call_soon_threadsafe`.
#[pyclass(module = "ferrobatch._native", name = "_Delivery")]
pub(crate) struct Delivery {
    crossing: Arc<Crossing>,
    work: Mutex<Option<Carried>>,
}

#[pymethods]
impl Delivery {
    fn __call__(&self, py: Python<'_>) {
        let taken = self.work.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((work, receipt)) = taken {
            self.crossing.deliver(py, work);
            // Only now may the engine report a drain that this work was part of.
            if let Some(receipt) = receipt {
                let more = receipt.delivered();
                if !more.is_empty() {
                    self.crossing.deliver(py, more);
                }
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
        // callers belong to loops and threads that no longer run; pyo3 defers the reference
        // counts), without a panic or a message.
        let _ = crate::exit::attach(|py| {
            if self.0.threaded.is_some() || self.0.home.get().is_none() {
                self.0.deliver(py, work);
                let more = receipt.delivered();
                if !more.is_empty() {
                    self.0.deliver(py, more);
                }
            } else {
                self.0.send_to_loop(py, work, Some(receipt));
            }
        });
    }
}
