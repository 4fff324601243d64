//! `ItemFuture`: what `process()` and `process_many()` return. One object that asyncio takes
//! both as a Future (`await`, `gather`, `wait_for`, `shield`, `as_completed`, done callbacks)
//! and as a coroutine (`create_task`, `TaskGroup.create_task`, `asyncio.run`), the way the
//! coroutine `async-batcher`'s `process()` returns is taken.
//!
//! Made inside a running loop, it belongs to that loop and its item is queued at once. Made
//! with no loop running (before `asyncio.run`, on a plain thread), it is *deferred*: its item
//! is queued on the loop that first awaits it (or asks for its loop).
//!
//! Resolving is cheap and batched: results are stored without entering Python, and the done
//! callbacks of every future a batch resolved run from one loop callback ([`Resolver`]), not
//! one per future as `asyncio.Future` schedules them. From another thread that callback is
//! handed over with one `call_soon_threadsafe`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};
use smallvec::SmallVec;

use super::glue::{asyncio, current_thread, log_error, loop_closed, running_loop};

/// An event loop and the thread it runs on.
pub(crate) struct LoopRef {
    pub(crate) event_loop: Py<PyAny>,
    pub(crate) thread: ThreadId,
    /// Callbacks scheduled on the loop that have not started running: more are appended to
    /// them rather than scheduled apart, so a burst costs the loop one handle.
    open: Mutex<Option<Py<Callbacks>>>,
    /// Work handed to the loop from other threads, and whether a [`Drain`] is scheduled for it.
    inbox: Mutex<(Vec<Box<dyn LoopJob>>, bool)>,
}

/// Work for an event loop's thread, handed over from any thread with [`LoopRef::post`].
pub(crate) trait LoopJob: Send {
    /// Run on the loop's thread, inside a loop callback. An error is a `BaseException` (a
    /// KeyboardInterrupt from a done callback) for the loop to see.
    fn run(self: Box<Self>, py: Python<'_>, home: &Arc<LoopRef>) -> PyResult<()>;
}

impl LoopRef {
    /// The loop running on this thread.
    pub(crate) fn here(event_loop: Py<PyAny>) -> Arc<LoopRef> {
        Arc::new(LoopRef {
            event_loop,
            thread: current_thread(),
            open: Mutex::new(None),
            inbox: Mutex::new((Vec::new(), false)),
        })
    }

    /// Run done callbacks on the loop soon, joining callbacks already scheduled there.
    fn run_soon(self: &Arc<Self>, py: Python<'_>, mut list: Vec<Pending>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = open.as_ref() {
            c.get().lock().append(&mut list);
            return;
        }
        let callbacks = Callbacks {
            home: Arc::downgrade(self),
            event_loop: self.event_loop.clone_ref(py),
            list: Mutex::new(list),
        };
        match Py::new(py, callbacks) {
            Ok(c) => {
                *open = Some(c.clone_ref(py));
                drop(open);
                self.schedule(py, c.into_bound(py).into_any());
            }
            Err(e) => log_error(py, "could not schedule done callbacks", Some(e)),
        }
    }

    /// Hand `job` to the loop from any thread, GIL held or not. Jobs posted while a drain is
    /// already scheduled join it: a burst of results costs the loop one callback, and the
    /// posting threads one GIL entry. If the loop is closed the job is dropped (its `Drop`
    /// frees what it holds).
    pub(crate) fn post(self: &Arc<Self>, job: Box<dyn LoopJob>) {
        let first = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
            inbox.0.push(job);
            !std::mem::replace(&mut inbox.1, true)
        };
        if !first {
            return;
        }
        let scheduled = crate::exit::attach(|py| {
            let drain = Drain(Arc::clone(self), AtomicBool::new(false));
            let ok = Py::new(py, drain)
                .map(|d| self.try_schedule(py, d.into_bound(py).into_any()))
                .unwrap_or(false);
            if !ok {
                let jobs = self.take_jobs();
                drop(jobs); // with the GIL: their Drop may touch Python objects
            }
        });
        if scheduled.is_none() {
            // Interpreter exit: nothing will run on the loop again.
            drop(self.take_jobs());
        }
    }

    fn take_jobs(&self) -> Vec<Box<dyn LoopJob>> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        inbox.1 = false;
        std::mem::take(&mut inbox.0)
    }

    /// Run `callable` on the loop soon; false if the loop refused (it is closed).
    fn try_schedule(&self, py: Python<'_>, callable: Bound<'_, PyAny>) -> bool {
        let name = if self.thread == current_thread() {
            intern!(py, "call_soon")
        } else {
            intern!(py, "call_soon_threadsafe")
        };
        match self.event_loop.bind(py).call_method1(name, (callable,)) {
            Ok(_) => true,
            Err(e) => {
                if !loop_closed(py, &self.event_loop) {
                    log_error(py, "could not schedule callbacks on an event loop", Some(e));
                }
                false
            }
        }
    }

    /// Run `callable` on the loop soon: `call_soon` from its own thread, `call_soon_threadsafe`
    /// from any other. A closed loop is skipped quietly (nobody can await its futures).
    pub(crate) fn schedule(&self, py: Python<'_>, callable: Bound<'_, PyAny>) {
        let name = if self.thread == current_thread() {
            intern!(py, "call_soon")
        } else {
            intern!(py, "call_soon_threadsafe")
        };
        if let Err(e) = self.event_loop.bind(py).call_method1(name, (callable,)) {
            if !loop_closed(py, &self.event_loop) {
                log_error(py, "could not schedule callbacks on an event loop", Some(e));
            }
        }
    }
}

/// Runs the jobs posted to a loop: one loop callback for all that arrived since the last.
#[pyclass(module = "ferrobatch._native", name = "_Drain", frozen)]
struct Drain(Arc<LoopRef>, AtomicBool);

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        self.1.store(true, Ordering::Relaxed);
        let mut jobs = self.0.take_jobs().into_iter();
        while let Some(job) = jobs.next() {
            if let Err(e) = job.run(py, &self.0) {
                // KeyboardInterrupt, SystemExit: the rest run later, then it goes out.
                for rest in jobs {
                    self.0.post(rest);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for Drain {
    /// Dropped unrun (the loop closed first): the jobs waiting for it are dropped, which frees
    /// what they hold.
    fn drop(&mut self) {
        if !self.1.load(Ordering::Relaxed) {
            drop(self.0.take_jobs());
        }
    }
}

/// What a deferred future queues once a loop awaits it.
pub(crate) enum Deferred {
    One(Py<PyAny>),
    Many(Vec<Py<PyAny>>),
}

/// The batcher as a deferred future sees it: where its items go once a loop awaits it.
pub(crate) trait Queue: Send + Sync {
    /// The loop an asyncio caller on `running` belongs to (binding the batcher's home loop on
    /// first use), or the reason this batcher cannot serve that loop.
    fn loop_for(&self, py: Python<'_>, running: &Bound<'_, PyAny>) -> PyResult<Arc<LoopRef>>;

    /// Queue the future's items, with the future as their sink.
    fn enqueue(
        &self,
        py: Python<'_>,
        fut: &Bound<'_, ItemFuture>,
        what: Deferred,
        priority: i64,
    ) -> PyResult<()>;
}

/// Told when a dispatched item's caller cancels (a native batch drops its work once every
/// caller has).
pub(crate) trait OnCancel: Send + Sync {
    fn cancelled(&self);
}

/// What a deferred future holds until a loop awaits it (boxed: most futures never are).
struct Later {
    queue: Arc<dyn Queue>,
    what: Deferred,
    priority: i64,
}

enum State {
    /// Made with no loop running: nothing queued yet.
    Deferred(Box<Later>),
    Pending,
    Done(Py<PyAny>),
    Failed(Py<PyAny>),
    Cancelled(Option<Py<PyAny>>),
}

/// A future's (callback, context) pairs; the usual one (from `await` or `gather`) is stored
/// inline, so a million pending futures cost no extra allocation each.
type Registered = SmallVec<[(Py<PyAny>, Py<PyAny>); 1]>;

struct Inner {
    state: State,
    home: Option<Arc<LoopRef>>,
    /// (callback, context) pairs, run in order once the future is done.
    callbacks: Registered,
    blocking: bool,
    /// Who to tell if the caller cancels after its batch started.
    watch: Option<Arc<dyn OnCancel>>,
}

/// The result of one queued item (or of one `process_many` call), awaitable from asyncio.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct ItemFuture {
    inner: Mutex<Inner>,
}

/// How a caller's wait ends: a value or an exception instance.
pub(crate) enum Resolution {
    Value(Py<PyAny>),
    Error(Py<PyAny>),
}

/// Done callbacks collected while resolving many futures; [`Resolver::flush`] schedules them
/// with one loop callback per event loop.
#[derive(Default)]
pub(crate) struct Resolver {
    groups: Vec<(Arc<LoopRef>, Vec<Pending>)>,
}

struct Pending {
    func: Py<PyAny>,
    context: Py<PyAny>,
    future: Py<ItemFuture>,
}

impl Resolver {
    fn push(
        &mut self,
        home: &Arc<LoopRef>,
        callbacks: Registered,
        future: &Py<ItemFuture>,
        py: Python<'_>,
    ) {
        let idx = match self.groups.iter().position(|(l, _)| Arc::ptr_eq(l, home)) {
            Some(i) => i,
            None => {
                self.groups.push((Arc::clone(home), Vec::new()));
                self.groups.len() - 1
            }
        };
        let list = &mut self.groups[idx].1;
        for (func, context) in callbacks {
            list.push(Pending {
                func,
                context,
                future: future.clone_ref(py),
            });
        }
    }

    /// Schedule every collected callback: at most one loop callback per event loop, none if
    /// one already scheduled there has not started yet (they join it).
    pub(crate) fn flush(self, py: Python<'_>) {
        for (home, list) in self.groups {
            if !list.is_empty() {
                home.run_soon(py, list);
            }
        }
    }
}

impl Resolver {
    /// Run the callbacks of futures of `here` (the loop this thread runs) now, inside the
    /// current loop callback; schedule the others' as `flush` does.
    /// An error is a `BaseException` (KeyboardInterrupt, SystemExit) from a callback, for the
    /// loop to see; the callbacks after it still run, later.
    pub(crate) fn run_here(mut self, py: Python<'_>, here: &Arc<LoopRef>) -> PyResult<()> {
        let mine = self
            .groups
            .iter()
            .position(|(l, _)| Arc::ptr_eq(l, here))
            .map(|i| self.groups.swap_remove(i).1);
        self.flush(py);
        let Some(list) = mine.filter(|l| !l.is_empty()) else {
            return Ok(());
        };
        let callbacks = Callbacks {
            home: Arc::downgrade(here),
            event_loop: here.event_loop.clone_ref(py),
            list: Mutex::new(list),
        };
        Bound::new(py, callbacks).and_then(|c| Callbacks::__call__(&c))
    }
}

/// Done callbacks of many futures, run by one event-loop callback, each in its own context.
#[pyclass(module = "ferrobatch._native", name = "_Callbacks", frozen)]
pub(crate) struct Callbacks {
    home: Weak<LoopRef>,
    event_loop: Py<PyAny>,
    list: Mutex<Vec<Pending>>,
}

impl Callbacks {
    fn lock(&self) -> MutexGuard<'_, Vec<Pending>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Callbacks {
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let home = this.home.upgrade();
        if let Some(home) = &home {
            // Started: callbacks settled from now on go into a new loop callback.
            let mut open = home.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.as_ref().is_some_and(|c| c.is(slf)) {
                *open = None;
            }
        }
        let list = std::mem::take(&mut *this.lock());
        let mut rest = list.into_iter();
        while let Some(p) = rest.next() {
            let run = p
                .context
                .bind(py)
                .call_method1(intern!(py, "run"), (p.func.bind(py), p.future.bind(py)));
            let Err(err) = run else { continue };
            if !err.is_instance_of::<pyo3::exceptions::PyException>(py) {
                // KeyboardInterrupt, SystemExit: let it through; the others still run later.
                let left: Vec<Pending> = rest.collect();
                if let (false, Some(home)) = (left.is_empty(), &home) {
                    home.run_soon(py, left);
                }
                return Err(err);
            }
            // Like asyncio's Handle: report through the loop's exception handler, go on.
            let context = PyDict::new(py);
            let message = format!("Exception in callback {}", p.func.bind(py).repr()?);
            context.set_item("message", message)?;
            context.set_item("exception", err.value(py))?;
            context.set_item("future", p.future.bind(py))?;
            this.event_loop
                .bind(py)
                .call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(list) = self.list.try_lock() {
            for p in list.iter() {
                visit.call(&p.func)?;
                visit.call(&p.context)?;
                visit.call(&p.future)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut list) = self.list.try_lock() {
            list.clear();
        }
    }
}

impl ItemFuture {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pending future of the loop `home`; its item is queued by the caller.
    pub(crate) fn pending(home: Arc<LoopRef>) -> ItemFuture {
        ItemFuture {
            inner: Mutex::new(Inner {
                state: State::Pending,
                home: Some(home),
                callbacks: Registered::new(),
                blocking: false,
                watch: None,
            }),
        }
    }

    /// A future whose items are queued on the loop that first awaits it.
    pub(crate) fn deferred(queue: Arc<dyn Queue>, what: Deferred, priority: i64) -> ItemFuture {
        ItemFuture {
            inner: Mutex::new(Inner {
                state: State::Deferred(Box::new(Later {
                    queue,
                    what,
                    priority,
                })),
                home: None,
                callbacks: Registered::new(),
                blocking: false,
                watch: None,
            }),
        }
    }

    /// The loop the future belongs to, once it has one.
    pub(crate) fn home(&self) -> Option<Arc<LoopRef>> {
        self.lock().home.clone()
    }

    /// Tell `watch` if the caller cancels from now on (a running batch's items).
    pub(crate) fn watch(&self, watch: Arc<dyn OnCancel>) {
        let mut inner = self.lock();
        if matches!(inner.state, State::Pending) {
            inner.watch = Some(watch);
        }
    }

    /// Whether the future has ended (result, exception or cancelled).
    pub(crate) fn is_done(&self) -> bool {
        matches!(
            self.lock().state,
            State::Done(_) | State::Failed(_) | State::Cancelled(_)
        )
    }

    /// End the future (if still pending) and collect its callbacks into `resolver`.
    pub(crate) fn settle(
        slf: &Py<ItemFuture>,
        py: Python<'_>,
        outcome: Resolution,
        resolver: &mut Resolver,
    ) {
        let fut = slf.get();
        let mut inner = fut.lock();
        if !matches!(inner.state, State::Pending | State::Deferred(_)) {
            return;
        }
        inner.state = match outcome {
            Resolution::Value(v) => State::Done(v),
            Resolution::Error(e) => State::Failed(e),
        };
        inner.watch = None;
        let callbacks = std::mem::take(&mut inner.callbacks);
        let home = inner.home.clone();
        drop(inner);
        if let (false, Some(home)) = (callbacks.is_empty(), home) {
            resolver.push(&home, callbacks, slf, py);
        }
    }

    /// Settle one future on its own and schedule its callbacks.
    pub(crate) fn settle_now(slf: &Py<ItemFuture>, py: Python<'_>, outcome: Resolution) {
        let mut r = Resolver::default();
        Self::settle(slf, py, outcome, &mut r);
        r.flush(py);
    }

    /// Queue a deferred future's items on the running loop. No-op for other states.
    fn activate(slf: &Bound<'_, ItemFuture>) -> PyResult<()> {
        match running_loop(slf.py())? {
            Some(running) => Self::activate_on(slf, running),
            None if matches!(slf.get().lock().state, State::Deferred(_)) => {
                Err(PyRuntimeError::new_err("no running event loop"))
            }
            None => Ok(()),
        }
    }

    /// Queue a deferred future's items on `running`, the loop that will await it.
    fn activate_on(slf: &Bound<'_, ItemFuture>, running: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let fut = slf.get();
        if !matches!(fut.lock().state, State::Deferred(_)) {
            return Ok(());
        }
        let (queue, what, priority) = {
            let mut inner = fut.lock();
            match std::mem::replace(&mut inner.state, State::Pending) {
                State::Deferred(later) => (later.queue, later.what, later.priority),
                other => {
                    inner.state = other;
                    return Ok(());
                }
            }
        };
        let home = match queue.loop_for(py, &running) {
            Ok(home) => home,
            Err(e) => {
                fut.lock().home = Some(LoopRef::here(running.unbind()));
                Self::settle_now(
                    &slf.clone().unbind(),
                    py,
                    Resolution::Error(e.into_value(py).into_any()),
                );
                return Ok(());
            }
        };
        fut.lock().home = Some(home);
        // A refused submit (queue full, stopped) becomes the future's exception.
        if let Err(e) = queue.enqueue(py, slf, what, priority) {
            Self::settle_now(
                &slf.clone().unbind(),
                py,
                Resolution::Error(e.into_value(py).into_any()),
            );
        }
        Ok(())
    }

    fn raise_cancelled(py: Python<'_>, msg: &Option<Py<PyAny>>) -> PyErr {
        let cls = asyncio(py).cancelled_error.bind(py);
        let exc = match msg {
            Some(m) => cls.call1((m.bind(py),)),
            None => cls.call0(),
        };
        match exc {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        }
    }

    fn invalid_state(py: Python<'_>, msg: &str) -> PyErr {
        match asyncio(py).invalid_state.bind(py).call1((msg,)) {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        }
    }

    /// One step of the coroutine protocol: yield self while pending, return the result.
    fn step(slf: &Bound<'_, ItemFuture>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        Self::activate(slf)?;
        let mut inner = slf.get().lock();
        match &inner.state {
            State::Pending | State::Deferred(_) => {
                inner.blocking = true;
                drop(inner);
                Ok(Some(slf.clone().into_any().unbind()))
            }
            State::Done(v) => Err(PyStopIteration::new_err((v.clone_ref(py),))),
            State::Failed(e) => Err(PyErr::from_value(e.bind(py).clone())),
            State::Cancelled(msg) => Err(Self::raise_cancelled(py, msg)),
        }
    }

    /// Cancel if still pending: the item leaves the queue (it is skipped when its batch forms).
    fn cancel_inner(slf: &Bound<'_, ItemFuture>, msg: Option<Py<PyAny>>) -> bool {
        let py = slf.py();
        let mut inner = slf.get().lock();
        match inner.state {
            State::Pending | State::Deferred(_) => {}
            _ => return false,
        }
        inner.state = State::Cancelled(msg);
        let callbacks = std::mem::take(&mut inner.callbacks);
        let home = inner.home.clone();
        let watch = inner.watch.take();
        drop(inner);
        if let Some(w) = watch {
            w.cancelled();
        }
        if let (false, Some(home)) = (callbacks.is_empty(), home) {
            let mut r = Resolver::default();
            r.push(&home, callbacks, &slf.clone().unbind(), py);
            r.flush(py);
        }
        true
    }
}

#[pymethods]
impl ItemFuture {
    /// asyncio's marker of Future-like objects (`asyncio.isfuture`); a Task sets it back.
    #[getter(_asyncio_future_blocking)]
    fn asyncio_future_blocking(&self) -> bool {
        self.lock().blocking
    }

    #[setter(_asyncio_future_blocking)]
    fn set_asyncio_future_blocking(&self, value: bool) {
        self.lock().blocking = value;
    }

    /// The event loop the future belongs to (a deferred future is queued on the running one).
    /// Asked before any loop runs (Python 3.10's `run_until_complete` does), a deferred future
    /// is queued on the thread's current event loop, the one about to run it.
    fn get_loop(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match running_loop(py)? {
            Some(running) => Self::activate_on(slf, running)?,
            None if matches!(slf.get().lock().state, State::Deferred(_)) => {
                let current = py
                    .import("asyncio")?
                    .call_method0("get_event_loop_policy")?
                    .call_method0("get_event_loop")?;
                Self::activate_on(slf, current)?;
            }
            None => {}
        }
        let py = slf.py();
        match &slf.get().lock().home {
            Some(h) => Ok(h.event_loop.clone_ref(py)),
            None => Err(PyRuntimeError::new_err("no running event loop")),
        }
    }

    fn done(&self) -> bool {
        self.is_done()
    }

    /// The message `cancel(msg)` was given (asyncio's `gather` reads it).
    #[getter(_cancel_message)]
    fn cancel_message(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.lock().state {
            State::Cancelled(Some(m)) => Some(m.clone_ref(py)),
            _ => None,
        }
    }

    /// The `CancelledError` to raise for a cancelled future (asyncio's `gather` calls it).
    fn _make_cancelled_error(&self, py: Python<'_>) -> Py<PyAny> {
        let msg = match &self.lock().state {
            State::Cancelled(m) => m.as_ref().map(|m| m.clone_ref(py)),
            _ => None,
        };
        Self::raise_cancelled(py, &msg).into_value(py).into_any()
    }

    fn cancelled(&self) -> bool {
        matches!(self.lock().state, State::Cancelled(_))
    }

    /// The item's result; raises its exception, `CancelledError`, or `InvalidStateError`
    /// while pending.
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.lock().state {
            State::Done(v) => Ok(v.clone_ref(py)),
            State::Failed(e) => Err(PyErr::from_value(e.bind(py).clone())),
            State::Cancelled(msg) => Err(Self::raise_cancelled(py, msg)),
            _ => Err(Self::invalid_state(py, "Result is not set.")),
        }
    }

    /// The item's exception (None if it succeeded); raises `CancelledError`, or
    /// `InvalidStateError` while pending.
    fn exception(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &self.lock().state {
            State::Done(_) => Ok(None),
            State::Failed(e) => Ok(Some(e.clone_ref(py))),
            State::Cancelled(msg) => Err(Self::raise_cancelled(py, msg)),
            _ => Err(Self::invalid_state(py, "Exception is not set.")),
        }
    }

    /// Run `fn(future)` on the loop once the future is done (soon, if it already is), in
    /// `context` (default: a copy of the current one).
    #[pyo3(signature = (func, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        func: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        Self::activate(slf)?;
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            _ => asyncio(py).copy_context.bind(py).call0()?.unbind(),
        };
        let mut inner = slf.get().lock();
        if matches!(inner.state, State::Pending | State::Deferred(_)) {
            inner.callbacks.push((func, context));
            return Ok(());
        }
        let home = inner.home.clone();
        drop(inner);
        let Some(home) = home else {
            return Err(PyRuntimeError::new_err("no running event loop"));
        };
        let mut r = Resolver::default();
        r.push(
            &home,
            smallvec::smallvec![(func, context)],
            &slf.clone().unbind(),
            py,
        );
        r.flush(py);
        Ok(())
    }

    /// Remove every registration of `fn`; returns how many there were.
    fn remove_done_callback(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> PyResult<usize> {
        let callbacks = std::mem::take(&mut self.lock().callbacks);
        let mut kept = Registered::with_capacity(callbacks.len());
        let mut removed = 0;
        for (f, c) in callbacks {
            if f.bind(py).eq(func)? {
                removed += 1;
            } else {
                kept.push((f, c));
            }
        }
        let mut inner = self.lock();
        kept.extend(inner.callbacks.drain(..));
        inner.callbacks = kept;
        Ok(removed)
    }

    /// Cancel the future: its item leaves the queue if its batch has not started. Returns
    /// False if the future was already done.
    #[pyo3(signature = (msg=None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> bool {
        Self::cancel_inner(slf, msg)
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Self::step(slf)
    }

    /// Coroutine protocol (what `create_task` drives): like `__next__`.
    #[pyo3(signature = (_value=None))]
    fn send(slf: &Bound<'_, Self>, _value: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        match Self::step(slf)? {
            Some(v) => Ok(v),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Coroutine protocol: the awaiting task was cancelled (or something was thrown in). The
    /// item is cancelled if still pending, and the exception goes back out.
    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let exc = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            typ.clone()
        } else if let Ok(cls) = typ.cast::<PyType>() {
            match val {
                Some(v) if v.is_instance_of::<pyo3::exceptions::PyBaseException>() => v.clone(),
                Some(v) if !v.is_none() => cls.call1((v,))?,
                _ => cls.call0()?,
            }
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "throw() needs an exception type or instance",
            ));
        };
        let _ = py;
        Self::cancel_inner(slf, None);
        Err(PyErr::from_value(exc))
    }

    /// Coroutine protocol: the item is cancelled if still pending.
    fn close(slf: &Bound<'_, Self>) {
        Self::cancel_inner(slf, None);
    }

    /// `ItemFuture[int]` in annotations.
    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, _item: &Bound<'_, PyAny>) -> Py<PyType> {
        cls.clone().unbind()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match &self.lock().state {
            State::Deferred(_) => "<ItemFuture deferred>".to_string(),
            State::Pending => "<ItemFuture pending>".to_string(),
            State::Done(v) => {
                let r = v.bind(py).repr().map(|r| r.to_string()).unwrap_or_default();
                let r: String = r.chars().take(80).collect();
                format!("<ItemFuture finished result={r}>")
            }
            State::Failed(e) => {
                let r = e.bind(py).repr().map(|r| r.to_string()).unwrap_or_default();
                format!("<ItemFuture finished exception={r}>")
            }
            State::Cancelled(_) => "<ItemFuture cancelled>".to_string(),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(inner) = self.inner.try_lock() else {
            return Ok(());
        };
        match &inner.state {
            State::Deferred(later) => match &later.what {
                Deferred::One(v) => visit.call(v)?,
                Deferred::Many(vs) => {
                    for v in vs {
                        visit.call(v)?;
                    }
                }
            },
            State::Done(v) | State::Failed(v) => visit.call(v)?,
            State::Cancelled(Some(m)) => visit.call(m)?,
            _ => {}
        }
        for (f, c) in &inner.callbacks {
            visit.call(f)?;
            visit.call(c)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut inner) = self.inner.try_lock() {
            inner.callbacks.clear();
            if matches!(inner.state, State::Deferred(_)) {
                inner.state = State::Cancelled(None);
            }
        }
    }
}
