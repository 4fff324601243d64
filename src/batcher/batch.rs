//! `Batch`: one dispatched batch as the Python runner sees it. It hands out the items whose
//! callers still wait, takes the batch function's result (or exception) back, maps it onto the
//! items by position, frees the concurrency slot and starts whatever that made due — all in one
//! call, so a batch costs one crossing however many items it holds.

use std::sync::{Arc, Mutex};

use ferrobatch_core::{BatchCounts, Error, StopReason, Ticket, Work};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::future::{LoopRef, Resolver};
use super::sink::{fail_all, PyItem};
use crate::errors;

/// The batcher's dispatch as a batch (and a worker running one) sees it.
pub(crate) trait Host: Send + Sync {
    /// Deliver work made due on any thread: start batches, fail items, settle drain waiters.
    fn handle(&self, py: Python<'_>, work: Work<PyItem>);

    /// The loop async batches run on, once bound.
    fn home(&self) -> Option<&Arc<LoopRef>>;

    /// Whether a forced stop happened: batches formed before it and started after it end
    /// stopped too.
    fn is_forced(&self) -> bool;

    /// Remember a batch running outside the event loop, for a forced stop; returns its key.
    fn register(&self, batch: Running) -> u64;

    /// The batch of `key` has ended.
    fn unregister(&self, key: u64);
}

/// A batch running outside the event loop, as a forced stop reaches it.
pub(crate) trait Abort: Send + Sync {
    /// Fail every unsettled item with `BatcherStoppedError` and stop the work.
    fn abort(&self, py: Python<'_>);
}

/// A registered running batch.
pub(crate) type Running = Arc<dyn Abort>;

/// Nobody can run `batch` (the Python batcher is gone): its items fail, its slot is freed.
pub(crate) fn drop_batch(host: &dyn Host, py: Python<'_>, batch: ferrobatch_core::Batch<PyItem>) {
    let err = Error::Stopped {
        reason: StopReason::Dropped,
    };
    let exc = errors::exception(py, &err);
    let mut r = Resolver::default();
    fail_all(py, &batch.items, &exc, &mut r);
    r.flush(py);
    let n = batch.items.len();
    let work = batch.ticket.finish(BatchCounts {
        failed: n,
        ..Default::default()
    });
    host.handle(py, work);
}

struct Inner {
    items: Vec<PyItem>,
    ticket: Ticket<PyItem>,
    cancelled: usize,
    filtered: bool,
}

/// A batch handed to the Python runner. Settles exactly once: by `resolve`, `fail` or `abort`.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct Batch {
    host: Arc<dyn Host>,
    inner: Mutex<Option<Inner>>,
}

impl Batch {
    pub(crate) fn new(host: Arc<dyn Host>, batch: ferrobatch_core::Batch<PyItem>) -> Self {
        Batch {
            host,
            inner: Mutex::new(Some(Inner {
                items: batch.items,
                ticket: batch.ticket,
                cancelled: 0,
                filtered: false,
            })),
        }
    }

    fn take(&self) -> Option<Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn finish(&self, py: Python<'_>, inner: Inner, completed: usize, failed: usize) {
        let outcome = BatchCounts {
            completed,
            failed,
            cancelled: inner.cancelled,
        };
        let work = inner.ticket.finish(outcome);
        self.host.handle(py, work);
    }

    /// Fail every item with `exc` and settle.
    pub(crate) fn fail_with(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) {
        if let Some(inner) = self.take() {
            let mut r = Resolver::default();
            fail_all(py, &inner.items, exc, &mut r);
            r.flush(py);
            let n = inner.items.len();
            self.finish(py, inner, 0, n);
        }
    }

    /// Forced stop: every unsettled item gets `BatcherStoppedError`.
    pub(crate) fn abort_now(&self, py: Python<'_>) {
        self.fail_error(
            py,
            &Error::Stopped {
                reason: StopReason::ForceStopped,
            },
        );
    }

    /// The values of the items whose callers still wait, oldest first (see `items`).
    pub(crate) fn live_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = guard.as_mut() else {
            return Ok(PyList::empty(py));
        };
        if !inner.filtered {
            inner.filtered = true;
            let before = inner.items.len();
            inner.items.retain(|i| i.sink.claim(py));
            inner.cancelled = before - inner.items.len();
        }
        PyList::new(py, inner.items.iter().map(|i| i.value.bind(py)))
    }

    /// Map the batch function's return value onto the items (see `resolve`).
    pub(crate) fn resolve_with(&self, py: Python<'_>, results: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(inner) = self.take() else {
            return Ok(());
        };
        let mut r = Resolver::default();
        let (completed, failed) = settle_items(py, &inner.items, results, &mut r);
        r.flush(py);
        self.finish(py, inner, completed, failed);
        Ok(())
    }

    fn fail_error(&self, py: Python<'_>, err: &Error) {
        let exc = errors::exception(py, err);
        self.fail_with(py, &exc);
    }
}

fn collect_results<'py>(results: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = results.cast::<PyList>() {
        return Some(list.iter().collect());
    }
    if let Ok(tuple) = results.cast::<PyTuple>() {
        return Some(tuple.iter().collect());
    }
    // Any other sized iterable (a numpy array, a generator is not sized but is accepted too).
    if results.is_instance_of::<pyo3::types::PyString>()
        || results.is_instance_of::<pyo3::types::PyDict>()
    {
        return None;
    }
    results.try_iter().ok()?.collect::<PyResult<Vec<_>>>().ok()
}

/// Settle each item from the batch function's return value; returns (completed, failed).
fn settle_items(
    py: Python<'_>,
    items: &[PyItem],
    results: &Bound<'_, PyAny>,
    r: &mut Resolver,
) -> (usize, usize) {
    let n = items.len();
    if results.is_none() {
        for item in items {
            item.sink.succeed(py, py.None(), r);
        }
        return (n, 0);
    }
    let Some(values) = collect_results(results) else {
        let type_name = results
            .get_type()
            .name()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let err = errors::raise(
            py,
            errors::Class::InvalidBatchResult,
            format!("the batch function must return a list, a tuple or None, got {type_name}"),
        );
        fail_all(py, items, err.value(py).as_any(), r);
        return (0, n);
    };
    if values.len() != n {
        let exc = errors::exception(
            py,
            &Error::BatchSizeMismatch {
                expected: n,
                got: values.len(),
            },
        );
        fail_all(py, items, &exc, r);
        return (0, n);
    }
    let (mut completed, mut failed) = (0, 0);
    for (item, value) in items.iter().zip(values) {
        if value.is_instance_of::<PyException>() {
            item.sink.fail(py, &value, r);
            failed += 1;
        } else {
            item.sink.succeed(py, value.unbind(), r);
            completed += 1;
        }
    }
    (completed, failed)
}

#[pymethods]
impl Batch {
    /// The values of the items whose callers still wait, oldest first. Items whose callers
    /// cancelled are dropped here and never reach the batch function.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.live_items(py)
    }

    /// Map the batch function's return value onto the items: a list (or tuple, or sized
    /// iterable) with one entry per item, or None for "every item gets None". An `Exception`
    /// instance in a slot fails that item alone.
    fn resolve(&self, py: Python<'_>, results: &Bound<'_, PyAny>) -> PyResult<()> {
        self.resolve_with(py, results)
    }

    /// The batch function raised `exc`: every item of the batch gets it.
    fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) {
        self.fail_with(py, exc);
    }

    /// The batcher was force-stopped: every unsettled item gets `BatcherStoppedError`.
    fn abort(&self, py: Python<'_>) {
        self.abort_now(py);
    }

    /// Whether the batch has settled.
    #[getter]
    fn done(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    fn __len__(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |i| i.items.len())
    }

    fn __repr__(&self) -> String {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(i) => format!("<Batch of {} items>", i.items.len()),
            None => "<Batch (settled)>".to_string(),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(guard) = self.inner.try_lock() {
            if let Some(inner) = guard.as_ref() {
                for i in &inner.items {
                    i.traverse(&visit)?;
                }
            }
        }
        Ok(())
    }
}

impl Abort for Py<Batch> {
    fn abort(&self, py: Python<'_>) {
        self.get().abort_now(py);
    }
}
