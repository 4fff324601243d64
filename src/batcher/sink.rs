//! Where an item's outcome goes. A queued Python item carries its value and its *sink*: the
//! `ItemFuture` an asyncio caller awaits, a slot in a group that `process_many` resolves with
//! one list, a [`Waiter`] a blocked thread sleeps on, or a `concurrent.futures.Future` from
//! `submit`. Sinks are settled with the GIL from whichever thread ends the item; asyncio
//! callers' done callbacks are collected into a [`Resolver`] and run from one loop callback
//! per batch.

use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::{PyTraverseError, PyVisit};

use super::future::{ItemFuture, LoopRef, OnCancel, Resolution, Resolver};
use super::glue::{set_exception, set_result, set_running};
use super::waiter::Waiter;

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

    fn settle(self, py: Python<'_>, outcome: Resolution, r: &mut Resolver) {
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

/// Where a [`Fanout`] reports that its key is no longer in flight (the batcher's in-flight
/// table, `super::dedupe`).
pub(crate) trait KeyTable: Send + Sync {
    fn remove(&self, fan: &Arc<Fanout>);
}

/// The callers of one key in flight (in-flight deduplication): the one queued item's sink.
pub(crate) struct Fanout {
    owner: Weak<dyn KeyTable>,
    hash: isize,
    /// Makes each later caller's own copy of the result (None: all share the one object).
    copy: Option<Py<PyAny>>,
    /// The callers' sinks; `None` once the item has ended (or was dropped unclaimed).
    sinks: Mutex<Option<Vec<Sink>>>,
}

impl Fanout {
    pub(crate) fn new(
        owner: Weak<dyn KeyTable>,
        hash: isize,
        copy: Option<Py<PyAny>>,
        first: Sink,
    ) -> Arc<Fanout> {
        Arc::new(Fanout {
            owner,
            hash,
            copy,
            sinks: Mutex::new(Some(vec![first])),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Sink>>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's Python hash.
    pub(crate) fn hash(&self) -> isize {
        self.hash
    }

    /// Add a caller; its sink back if the item has already ended.
    pub(crate) fn join(&self, sink: Sink) -> Result<(), Sink> {
        match self.lock().as_mut() {
            Some(list) => {
                list.push(sink);
                Ok(())
            }
            None => Err(sink),
        }
    }

    /// Close the key: no caller joins any more; the callers so far.
    pub(crate) fn close(self: &Arc<Self>) -> Vec<Sink> {
        let taken = self.lock().take().unwrap_or_default();
        if let Some(owner) = self.owner.upgrade() {
            owner.remove(self);
        }
        taken
    }

    /// The item's batch is starting: whether any caller still waits. With none, the key is
    /// closed (the item is dropped unrun). The callers are asked without the lock held
    /// (a `concurrent.futures.Future` answers in Python code, which may switch threads).
    fn claim(self: &Arc<Self>, py: Python<'_>) -> bool {
        let taken = match self.lock().as_mut() {
            Some(list) => std::mem::take(list),
            None => return false,
        };
        let mut live: Vec<Sink> = taken.into_iter().filter(|s| s.claim(py)).collect();
        let any = {
            let mut sinks = self.lock();
            // Callers who joined meanwhile keep their place after these.
            live.append(sinks.get_or_insert_with(Vec::new));
            let any = !live.is_empty();
            *sinks = Some(live);
            any
        };
        if !any {
            self.close();
        }
        any
    }

    /// The loop every caller awaits on, if they share one.
    fn event_loop(&self) -> Option<Arc<LoopRef>> {
        let sinks = self.lock();
        let mut found: Option<Arc<LoopRef>> = None;
        for s in sinks.as_ref()? {
            let l = s.event_loop()?;
            match &found {
                Some(f) if !Arc::ptr_eq(f, &l) => return None,
                Some(_) => {}
                None => found = Some(l),
            }
        }
        found
    }
}

/// Where an item's outcome goes.
pub(crate) enum Sink {
    Future(Py<ItemFuture>),
    Group(Arc<Group>, usize),
    Waiter(Arc<Waiter>),
    /// A `concurrent.futures.Future` from `submit`.
    Concurrent(Py<PyAny>),
    /// Every caller of a deduplicated key.
    Fanout(Arc<Fanout>),
}

/// One queued Python item.
pub(crate) struct PyItem {
    pub value: Py<PyAny>,
    pub sink: Sink,
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
            Sink::Concurrent(f) => set_running(py, f),
            Sink::Fanout(f) => f.claim(py),
        }
    }

    /// Tell `watch` if the caller cancels while the item's batch runs (asyncio callers).
    pub(crate) fn watch(&self, watch: Arc<dyn OnCancel>) {
        if let Sink::Future(f) = self {
            f.get().watch(watch);
        }
    }

    /// The event loop whose callers wait for this item, if it is awaited on one.
    pub(crate) fn event_loop(&self) -> Option<Arc<LoopRef>> {
        match self {
            Sink::Future(f) => f.get().home(),
            Sink::Group(g, _) => match g.lock().target.as_ref()? {
                Target::Future(f) => f.get().home(),
                Target::Waiter(_) => None,
            },
            Sink::Waiter(_) | Sink::Concurrent(_) => None,
            Sink::Fanout(f) => f.event_loop(),
        }
    }

    /// Hand the item its result. A caller who cancelled in the meantime ignores it.
    pub(crate) fn succeed(&self, py: Python<'_>, value: Py<PyAny>, r: &mut Resolver) {
        match self {
            Sink::Future(f) => ItemFuture::settle(f, py, Resolution::Value(value), r),
            Sink::Waiter(w) => w.set(Resolution::Value(value)),
            Sink::Concurrent(f) => set_result(py, f, value.bind(py)),
            Sink::Fanout(f) => {
                let mut sinks = f.close().into_iter();
                let Some(first) = sinks.next() else { return };
                for s in sinks {
                    match &f.copy {
                        None => s.succeed(py, value.clone_ref(py), r),
                        Some(copy) => match copy.bind(py).call1((value.bind(py),)) {
                            Ok(c) => s.succeed(py, c.unbind(), r),
                            Err(e) => s.fail(py, e.value(py).as_any(), r),
                        },
                    }
                }
                first.succeed(py, value, r);
            }
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
                    target.settle(py, Resolution::Value(list.into_any().unbind()), r);
                }
            }
        }
    }

    /// Hand the item an exception. A group fails as a whole on its first error.
    pub(crate) fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>, r: &mut Resolver) {
        match self {
            Sink::Future(f) => {
                ItemFuture::settle(f, py, Resolution::Error(exc.clone().unbind()), r)
            }
            Sink::Waiter(w) => w.set(Resolution::Error(exc.clone().unbind())),
            Sink::Concurrent(f) => set_exception(py, f, exc),
            Sink::Fanout(f) => {
                for s in f.close() {
                    s.fail(py, exc, r);
                }
            }
            Sink::Group(g, _) => {
                let target = g.lock().target.take();
                if let Some(t) = target {
                    t.settle(py, Resolution::Error(exc.clone().unbind()), r);
                }
            }
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Sink::Future(f) => visit.call(f),
            Sink::Concurrent(f) => visit.call(f),
            Sink::Fanout(f) => {
                if let Ok(sinks) = f.sinks.try_lock() {
                    for s in sinks.iter().flatten() {
                        s.traverse(visit)?;
                    }
                }
                Ok(())
            }
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
