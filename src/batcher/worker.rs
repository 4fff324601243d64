//! Running a synchronous batch function on Rust-owned threads. Each batcher has a small pool
//! of them on the tokio runtime's blocking threads (as many as its `concurrency`, or as
//! `ThreadPoolExecutor` would start when unlimited): a worker enters Python once per batch,
//! calls the function with the items whose callers still wait, and settles every item from
//! there. No event loop is involved, so callers on plain threads and on any event loop share
//! the same batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::batch::{drop_batch, Batch, Host};
use super::glue::log_error;
use super::sink::PyItem;
use super::waiter::Waiter;
use crate::errors;

type Queued = ferrobatch_core::Batch<PyItem>;

/// A sync batch function run on Rust-owned threads.
pub(crate) struct Threaded {
    /// The function, or a `weakref.WeakMethod` of it when `weak`.
    pub(crate) func: Py<PyAny>,
    pub(crate) weak: bool,
    /// `weakref.WeakMethod` of the batcher's `_finish(batch, awaitable)`, for a plain function
    /// that returned an awaitable: it is awaited on the event loop.
    pub(crate) finish: Py<PyAny>,
    /// The threads that run the batches.
    pub(crate) pool: Pool,
}

/// Batches waiting for a worker, and how many workers run.
pub(crate) struct Pool {
    state: Mutex<(VecDeque<Queued>, usize)>,
    max_workers: usize,
}

impl Pool {
    /// A pool of at most `concurrency` workers; when unlimited (-1), `min(32, cpus + 4)`.
    pub(crate) fn new(concurrency: i64) -> Pool {
        let max_workers = match usize::try_from(concurrency) {
            Ok(n) if n > 0 => n,
            _ => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_add(4)
                .min(32),
        };
        Pool {
            state: Mutex::new((VecDeque::new(), 0)),
            max_workers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Queued>, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Run `batch` on one of the batcher's workers, starting one if fewer than allowed run.
pub(crate) fn spawn(host: Arc<dyn Host>, threaded: &Arc<Threaded>, batch: Queued) {
    let pool = &threaded.pool;
    let start = {
        let mut g = pool.lock();
        g.0.push_back(batch);
        let start = g.1 < pool.max_workers;
        if start {
            g.1 += 1;
        }
        start
    };
    if start {
        let threaded = Arc::clone(threaded);
        crate::runtime::runtime().spawn_blocking(move || work(&host, &threaded));
    }
}

/// Most batches a worker runs in a row without letting go of the GIL.
const BATCHES_PER_ENTRY: usize = 16;

/// A worker: run queued batches until none is left. Batches already queued run back to back
/// in one entry into Python (a batch that finishes often makes the next one due at once),
/// so a busy batcher pays one GIL hand-over per few batches, not one per batch.
fn work(host: &Arc<dyn Host>, threaded: &Threaded) {
    let pool = &threaded.pool;
    let next = || {
        let mut g = pool.lock();
        let b = g.0.pop_front();
        if b.is_none() {
            g.1 -= 1;
        }
        b
    };
    let mut batch = next();
    while let Some(first) = batch.take() {
        // At interpreter exit the batch is dropped unrun: its callers no longer run either.
        Waiter::defer_wakeups(|| {
            crate::exit::attach(|py| {
                run(py, host, threaded, first);
                for _ in 1..BATCHES_PER_ENTRY {
                    let Some(b) = pool.lock().0.pop_front() else {
                        break;
                    };
                    run(py, host, threaded, b);
                }
            })
        });
        batch = next();
    }
}

fn run(py: Python<'_>, host: &Arc<dyn Host>, threaded: &Threaded, batch: Queued) {
    let func = if threaded.weak {
        match threaded.func.bind(py).call0() {
            Ok(f) if !f.is_none() => f,
            _ => {
                drop_batch(host.as_ref(), py, batch);
                return;
            }
        }
    } else {
        threaded.func.bind(py).clone()
    };
    let obj = match Py::new(py, Batch::new(Arc::clone(host), batch)) {
        Ok(obj) => obj,
        Err(e) => {
            log_error(py, "could not create a batch object", Some(e));
            return;
        }
    };
    if host.is_forced() {
        // Formed before a forced stop and started after it: its items end stopped too.
        obj.get().abort_now(py);
        return;
    }
    let key = host.register(Arc::new(obj.clone_ref(py)));
    call(py, host.as_ref(), threaded, &func, &obj);
    host.unregister(key);
}

fn call(
    py: Python<'_>,
    host: &dyn Host,
    threaded: &Threaded,
    func: &Bound<'_, PyAny>,
    obj: &Py<Batch>,
) {
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
                hand_to_loop(py, host, threaded, obj, result);
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
fn hand_to_loop(
    py: Python<'_>,
    host: &dyn Host,
    threaded: &Threaded,
    obj: &Py<Batch>,
    awaitable: Bound<'_, PyAny>,
) {
    let finish = threaded
        .finish
        .bind(py)
        .call0()
        .ok()
        .filter(|f| !f.is_none());
    if let (Some(home), Some(finish)) = (host.home(), finish) {
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
        errors::Class::InvalidBatchResult,
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
    let extra = pyo3::types::PyDict::new(py);
    let _ = extra.set_item("batch_size", n);
    let _ = extra.set_item(
        "error_type",
        err.get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    let _ = kwargs.set_item("extra", extra);
    let _ = logger.call_method(
        "error",
        ("batch of %d items failed: %r", n, err.value(py)),
        Some(&kwargs),
    );
}
