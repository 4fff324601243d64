//! `Core`: the native half of `ferrobatch.AsyncBatcher`. It owns the engine and turns a call
//! into one queued item and its sink: an `ItemFuture` for asyncio callers, a blocking wait or
//! a `concurrent.futures.Future` for callers on threads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrobatch_core::{Config, Engine, UserConfig};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;
use pyo3::{PyTraverseError, PyVisit};

use super::batch::Host;
use super::dedupe::{Dedupe, Entry};
use super::dispatch::{Dispatch, LoopDispatcher, Mode};
use super::future::{Deferred, ItemFuture, LoopRef, Queue, Resolution};
use super::glue::{current_thread, loop_closed, running_loop};
use super::native::NativeFn;
use super::sink::{Group, PyItem, Sink, Target};
use super::waiter::Waiter;
use super::worker::{Pool, Threaded};
use crate::errors::{self, to_pyerr};
use crate::stats::BatcherStats;

static CONCURRENT_FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The native half of `AsyncBatcher`, as Python holds it.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct Core {
    handle: Arc<Handle>,
}

/// The engine and how its batches start; what deferred futures queue into.
struct Handle {
    engine: Engine<PyItem>,
    /// Keys in flight, when identical items share one slot (`dedupe`).
    dedupe: Option<Arc<Dedupe>>,
    dispatch: Arc<Dispatch>,
    /// The last event loop other than the home one that used a batcher serving any loop.
    recent: Mutex<Option<Arc<LoopRef>>>,
}

fn wrong_loop(py: Python<'_>, message: &str) -> PyErr {
    errors::raise(py, errors::Class::WrongEventLoop, message.to_string())
}

impl Queue for Handle {
    /// Binding the home loop on first use. An async batch function runs on the home loop, so
    /// other loops are refused; a batcher whose batches run off the loop serves any loop.
    fn loop_for(&self, py: Python<'_>, running: &Bound<'_, PyAny>) -> PyResult<Arc<LoopRef>> {
        let home = self
            .dispatch
            .home
            .get_or_init(|| LoopRef::here(running.clone().unbind()));
        if home.event_loop.bind(py).is(running) {
            return Ok(Arc::clone(home));
        }
        if !self.dispatch.serves_any_loop() {
            return Err(wrong_loop(
                py,
                "this batcher belongs to another event loop (the one it was first used on); \
                 create one batcher per event loop, or use a synchronous batch function, \
                 which serves any loop and any thread",
            ));
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = recent.as_ref() {
            if r.event_loop.bind(py).is(running) {
                return Ok(Arc::clone(r));
            }
        }
        let r = LoopRef::here(running.clone().unbind());
        *recent = Some(Arc::clone(&r));
        Ok(r)
    }

    /// Queue a deferred future's items now that a loop awaits it.
    fn enqueue(
        &self,
        py: Python<'_>,
        fut: &Bound<'_, ItemFuture>,
        what: Deferred,
        priority: i64,
    ) -> PyResult<()> {
        match what {
            Deferred::One(value) => {
                self.enqueue_one(py, value, Sink::Future(fut.clone().unbind()), priority)
            }
            Deferred::Many(values) => {
                if values.is_empty() {
                    ItemFuture::settle_now(
                        &fut.clone().unbind(),
                        py,
                        Resolution::Value(PyList::empty(py).into_any().unbind()),
                    );
                    return Ok(());
                }
                self.submit_group(py, values, Target::Future(fut.clone().unbind()), priority)
            }
        }
    }
}

impl Handle {
    /// Callers on plain threads: fine for a threaded batcher; an async batch function needs
    /// its loop running elsewhere.
    fn check_thread_caller(&self, py: Python<'_>, blocking: bool) -> PyResult<()> {
        if self.dispatch.serves_any_loop() {
            if blocking && running_loop(py)?.is_some() {
                return Err(wrong_loop(
                    py,
                    "a blocking call from a coroutine would stall its event loop; \
                     use `await batcher.process(item)` there",
                ));
            }
            return Ok(());
        }
        match self.dispatch.home.get() {
            None => Err(wrong_loop(
                py,
                "an async batch function runs on the batcher's event loop, and this batcher \
                 has none yet: use it from a coroutine first, or give it a synchronous batch \
                 function, which needs no event loop",
            )),
            Some(h) if blocking && h.thread == current_thread() => Err(wrong_loop(
                py,
                "a blocking call on the batcher's own event loop would never return; \
                 use `await batcher.process(item)` there",
            )),
            Some(h) if loop_closed(py, &h.event_loop) => Err(wrong_loop(
                py,
                "the event loop this batcher's async batch function runs on is closed",
            )),
            Some(_) => Ok(()),
        }
    }

    /// Queue one item with its sink (or join an identical one in flight, with `dedupe`).
    fn enqueue_one(
        &self,
        py: Python<'_>,
        value: Py<PyAny>,
        sink: Sink,
        priority: i64,
    ) -> PyResult<()> {
        let sink = match &self.dedupe {
            None => sink,
            Some(d) => match d.enter(py, value.bind(py), sink)? {
                Entry::Joined => return Ok(()),
                Entry::Queue(s) => s,
            },
        };
        let fanout = match &sink {
            Sink::Fanout(f) => Some(Arc::clone(f)),
            _ => None,
        };
        let submitted = self
            .engine
            .submit_with_priority(PyItem { value, sink }, priority);
        let work = match submitted {
            Ok(work) => work,
            Err(e) => {
                // Refused (queue full, stopped): the key is no longer in flight. The caller
                // gets the error raised; nobody else joined in between (the GIL is held).
                if let Some(f) = fanout {
                    f.close();
                }
                return Err(to_pyerr(e));
            }
        };
        if !work.is_empty() {
            self.dispatch.handle(py, work);
        }
        Ok(())
    }

    /// Queue every value into one group; on a refusal the group is abandoned (items already
    /// queued become dead) and the error returned.
    fn submit_group(
        &self,
        py: Python<'_>,
        values: Vec<Py<PyAny>>,
        target: Target,
        priority: i64,
    ) -> PyResult<()> {
        let group = Group::new(target, values.len());
        for (idx, value) in values.into_iter().enumerate() {
            let sink = Sink::Group(Arc::clone(&group), idx);
            if let Err(e) = self.enqueue_one(py, value, sink, priority) {
                group.abandon();
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Core {
    /// The `ItemFuture` of `what`: queued now on the running loop, or deferred if none runs.
    fn future_of(&self, py: Python<'_>, what: Deferred, priority: i64) -> PyResult<Py<ItemFuture>> {
        let Some(running) = running_loop(py)? else {
            let queue: Arc<dyn Queue> = Arc::clone(&self.handle) as Arc<dyn Queue>;
            return Py::new(py, ItemFuture::deferred(queue, what, priority));
        };
        let home = self.handle.loop_for(py, &running)?;
        let fut = Bound::new(py, ItemFuture::pending(home))?;
        self.handle.enqueue(py, &fut, what, priority)?;
        Ok(fut.unbind())
    }

    /// Raise an outcome to a blocking caller.
    fn unwrap(py: Python<'_>, outcome: Resolution) -> PyResult<Py<PyAny>> {
        match outcome {
            Resolution::Value(v) => Ok(v),
            Resolution::Error(e) => Err(PyErr::from_value(e.into_bound(py))),
        }
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (*, start, max_batch_size=-1, max_queue_time=None, concurrency=1,
                        max_queue_size=-1, on_full="reject", item_timeout=None,
                        max_latency=None, aging=Some(ferrobatch_core::DEFAULT_AGING.as_secs_f64()),
                        single_item_batches=false, sync_fn=None, sync_fn_weak=false,
                        finish=None, native=None, dedupe=None, dedupe_copy=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        start: Py<PyAny>,
        max_batch_size: i64,
        max_queue_time: Option<&Bound<'_, PyAny>>,
        concurrency: i64,
        max_queue_size: i64,
        on_full: &str,
        item_timeout: Option<f64>,
        max_latency: Option<f64>,
        aging: Option<f64>,
        single_item_batches: bool,
        sync_fn: Option<Py<PyAny>>,
        sync_fn_weak: bool,
        finish: Option<Py<PyAny>>,
        native: Option<PyRef<'_, NativeFn>>,
        dedupe: Option<Bound<'_, PyAny>>,
        dedupe_copy: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        // `dedupe`: None or False (off), True (the item is its key), or a key function.
        let dedupe = match dedupe {
            None => None,
            Some(d) if d.is_instance_of::<pyo3::types::PyBool>() => {
                d.is_truthy()?.then(|| Dedupe::new(None, dedupe_copy))
            }
            Some(d) if d.is_callable() => Some(Dedupe::new(Some(d.unbind()), dedupe_copy)),
            Some(d) => {
                return Err(errors::raise(
                    py,
                    errors::Class::Kind(ferrobatch_core::ErrorKind::Config),
                    format!(
                        "invalid dedupe: must be True, False or a key function, got {}",
                        d.get_type().name()?
                    ),
                ))
            }
        };
        let max_queue_time = match max_queue_time {
            None => Some(0.01),
            Some(v) if v.extract::<String>().is_ok_and(|s| s == "auto") => None,
            Some(v) => Some(v.extract::<f64>().map_err(|_| {
                errors::raise(
                    py,
                    errors::Class::Kind(ferrobatch_core::ErrorKind::Config),
                    format!("invalid max_queue_time: must be seconds >= 0 or \"auto\", got {v}"),
                )
            })?),
        };
        let config = Config::from_user(&UserConfig {
            max_batch_size,
            max_queue_time,
            concurrency,
            max_queue_size,
            on_full,
            item_timeout,
            max_latency,
            aging,
            single_item_batches,
        })
        .map_err(to_pyerr)?;
        let mode = match (native, sync_fn) {
            (Some(f), _) => Mode::Native(Arc::clone(&f.0)),
            (None, Some(func)) => Mode::Threads(Arc::new(Threaded {
                func,
                weak: sync_fn_weak,
                finish: finish.unwrap_or_else(|| py.None()),
                pool: Pool::new(concurrency),
            })),
            (None, None) => Mode::Loop,
        };
        let dispatch = Dispatch::new(start, mode);
        let engine = Engine::new(config, LoopDispatcher(Arc::clone(&dispatch))).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("could not start the timer thread: {e}"))
        })?;
        Ok(Core {
            handle: Arc::new(Handle {
                engine,
                dedupe,
                dispatch,
                recent: Mutex::new(None),
            }),
        })
    }

    /// Queue one item; return the `ItemFuture` of its result. With no loop running the future
    /// is deferred: the item is queued when a loop first awaits it.
    #[pyo3(signature = (item, priority=0))]
    fn process(&self, py: Python<'_>, item: Py<PyAny>, priority: i64) -> PyResult<Py<ItemFuture>> {
        self.future_of(py, Deferred::One(item), priority)
    }

    /// Queue many items; return one `ItemFuture` of the list of their results, in order.
    /// It fails with the first item error (like `asyncio.gather`).
    #[pyo3(signature = (items, priority=0))]
    fn process_many(&self, items: &Bound<'_, PyAny>, priority: i64) -> PyResult<Py<ItemFuture>> {
        let values: Vec<Py<PyAny>> = items
            .try_iter()?
            .map(|v| v.map(Bound::unbind))
            .collect::<PyResult<_>>()?;
        self.future_of(items.py(), Deferred::Many(values), priority)
    }

    /// Queue one item from a plain thread and block (GIL released) until its result.
    #[pyo3(signature = (item, priority=0, timeout=None))]
    fn process_sync(
        &self,
        py: Python<'_>,
        item: Py<PyAny>,
        priority: i64,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        self.handle.check_thread_caller(py, true)?;
        let timeout = seconds(py, timeout)?;
        let waiter = Arc::new(Waiter::default());
        self.handle
            .enqueue_one(py, item, Sink::Waiter(Arc::clone(&waiter)), priority)?;
        match waiter.wait(py, timeout)? {
            Some(outcome) => Self::unwrap(py, outcome),
            None => Err(item_wait_timeout(py, timeout)),
        }
    }

    /// Queue many items from a plain thread and block until the list of their results.
    #[pyo3(signature = (items, priority=0, timeout=None))]
    fn process_many_sync(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        priority: i64,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        self.handle.check_thread_caller(py, true)?;
        let timeout = seconds(py, timeout)?;
        let values: Vec<Py<PyAny>> = items
            .try_iter()?
            .map(|v| v.map(Bound::unbind))
            .collect::<PyResult<_>>()?;
        if values.is_empty() {
            return Ok(PyList::empty(py).into_any().unbind());
        }
        let waiter = Arc::new(Waiter::default());
        self.handle
            .submit_group(py, values, Target::Waiter(Arc::clone(&waiter)), priority)?;
        match waiter.wait(py, timeout)? {
            Some(outcome) => Self::unwrap(py, outcome),
            None => Err(item_wait_timeout(py, timeout)),
        }
    }

    /// Queue one item from any thread; return a `concurrent.futures.Future` of its result.
    #[pyo3(signature = (item, priority=0))]
    fn submit(&self, py: Python<'_>, item: Py<PyAny>, priority: i64) -> PyResult<Py<PyAny>> {
        self.handle.check_thread_caller(py, false)?;
        let cls = CONCURRENT_FUTURE.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("concurrent.futures")?.getattr("Future")?.unbind())
        })?;
        let fut = cls.bind(py).call0()?.unbind();
        self.handle
            .enqueue_one(py, item, Sink::Concurrent(fut.clone_ref(py)), priority)?;
        Ok(fut)
    }

    /// Stop accepting items; drain (or, with `force`, fail every queued item and every batch
    /// running on a Rust thread).
    fn close(&self, py: Python<'_>, force: bool) {
        let work = self.handle.engine.close(force);
        self.handle.dispatch.handle(py, work);
        if force {
            self.handle.dispatch.abort_running(py);
        }
    }

    /// An `ItemFuture` (of the running loop) resolved once every accepted item has ended
    /// after `close`.
    fn drain_waiter(&self, py: Python<'_>) -> PyResult<Py<ItemFuture>> {
        let Some(running) = running_loop(py)? else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "no running event loop",
            ));
        };
        let home = match self.handle.dispatch.home.get() {
            Some(h) if h.event_loop.bind(py).is(&running) => Arc::clone(h),
            _ => LoopRef::here(running.unbind()),
        };
        let fut = Py::new(py, ItemFuture::pending(home))?;
        self.handle
            .dispatch
            .wait_drain(py, Sink::Future(fut.clone_ref(py)));
        Ok(fut)
    }

    /// Block (GIL released) until every accepted item has ended after `close`; False if
    /// `timeout` passed first.
    #[pyo3(signature = (timeout=None))]
    fn wait_drained(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = seconds(py, timeout)?;
        let waiter = Arc::new(Waiter::default());
        self.handle
            .dispatch
            .wait_drain(py, Sink::Waiter(Arc::clone(&waiter)));
        if waiter.try_take().is_some() {
            return Ok(true);
        }
        self.handle.check_thread_caller(py, true)?;
        Ok(waiter.wait(py, timeout)?.is_some())
    }

    /// Whether the batcher accepts items.
    #[getter]
    fn accepting(&self) -> bool {
        self.handle.engine.is_accepting()
    }

    /// The event loop the batcher belongs to, or None before first use.
    #[getter]
    fn event_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.handle
            .dispatch
            .home
            .get()
            .map(|h| h.event_loop.clone_ref(py))
    }

    /// Whether batches run off the event loop (on Rust threads, or natively on the runtime), so
    /// that the batcher serves callers on any loop and on plain threads.
    #[getter]
    fn threaded(&self) -> bool {
        self.handle.dispatch.serves_any_loop()
    }

    fn stats(&self) -> BatcherStats {
        let joined = self.handle.dedupe.as_ref().map_or(0, |d| d.joined());
        BatcherStats::from(self.handle.engine.stats()).with_deduplicated(joined)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for f in self.handle.dedupe.iter().flat_map(|d| d.functions()) {
            visit.call(f)?;
        }
        if let Some(t) = self.handle.dispatch.threaded() {
            if !t.weak {
                visit.call(&t.func)?;
            }
        }
        Ok(())
    }
}

/// Seconds as a `Duration`; negative or NaN is a `ConfigError`.
fn seconds(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(errors::raise(
            py,
            errors::Class::Kind(ferrobatch_core::ErrorKind::Config),
            format!("invalid timeout: must be seconds >= 0, got {t}"),
        )),
    }
}

/// A blocking caller's `timeout` passed: the builtin `TimeoutError` (the item is dropped if
/// its batch has not started).
fn item_wait_timeout(_py: Python<'_>, timeout: Option<Duration>) -> PyErr {
    let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
    pyo3::exceptions::PyTimeoutError::new_err(format!(
        "no result within {secs}s; the item was withdrawn if its batch had not started"
    ))
}
