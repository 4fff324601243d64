//! Native dispatch: a batch whose batch function is written in Rust (every HTTP batcher's
//! client) goes straight from the engine to the tokio runtime, and its results settle the
//! items' sinks from Rust. No Python task, no `Batch` object, no Python future per batch.
//!
//! A due batch is started where it was made due (the timer thread, a caller's thread, or the
//! loop that finished the previous batch): the items whose callers still wait are claimed and
//! their values read into Rust with the GIL held, then the work runs on the runtime. Its
//! results become Python objects where their callers are:
//! - every item awaited on one event loop: the results are posted to that loop
//!   ([`LoopRef::post`], no GIL needed), where one callback builds the objects (in steps for
//!   large batches, one loop iteration each) and runs the items' done callbacks; batches that
//!   end while that callback is pending join it, so a busy loop pays one
//!   `call_soon_threadsafe` per burst of batches, not one per batch;
//! - otherwise (callers on threads, or on several loops): on a runtime blocking thread, a step
//!   per GIL entry, waking threads and scheduling each loop's callbacks once.
//!
//! Cancellation: when every item's caller has cancelled, the work is dropped (its requests
//! abort). A forced stop drops it too and fails its items with `BatcherStoppedError`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ferrobatch_core::{BatchCounts, Error, StopReason, Ticket};
use pyo3::prelude::*;
use tokio::sync::Notify;

use super::batch::{drop_batch, Abort, Host};
use super::future::{LoopJob, LoopRef, OnCancel, Resolution, Resolver};
use super::sink::{fail_all, PyItem};
use crate::errors;
use crate::runtime::runtime;

/// A batch's results becoming Python objects, one per item in order, a step at a time.
pub(crate) trait ItemsOut: Send {
    /// Build some more into `out` (a value or an exception instance per item); true once
    /// every item has one.
    fn step(&mut self, py: Python<'_>, out: &mut Vec<Resolution>) -> bool;
}

/// The work of one native batch: runs on the runtime, ends in its items' results.
pub(crate) type NativeWork = Pin<Box<dyn Future<Output = Box<dyn ItemsOut>> + Send>>;

/// A batch function written in Rust.
pub(crate) trait NativeBatchFn: Send + Sync {
    /// Read the items' values into Rust (GIL held) and return the work to run. A value that
    /// cannot be read fails its own item, in the results, never its neighbours.
    fn start(&self, py: Python<'_>, values: Vec<Bound<'_, PyAny>>) -> NativeWork;
}

/// A Rust batch function as Python holds it: what an HTTP client's `batch_fn()` returns and
/// `Core(native=...)` takes.
#[pyclass(module = "ferrobatch._native", name = "_NativeFn", frozen)]
pub(crate) struct NativeFn(pub(crate) Arc<dyn NativeBatchFn>);

/// Why a running batch's work was dropped, and by whom.
#[derive(Default)]
struct Watch {
    wake: Notify,
    /// Items whose callers have not cancelled (only asyncio callers can, once dispatched).
    waiting: AtomicUsize,
    forced: AtomicBool,
}

impl OnCancel for Watch {
    fn cancelled(&self) {
        if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake.notify_one();
        }
    }
}

impl Abort for Watch {
    fn abort(&self, _py: Python<'_>) {
        self.forced.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// How a native batch's work ended.
enum Ended {
    Done(Box<dyn ItemsOut>),
    /// Every caller cancelled: nobody is left to settle.
    Cancelled,
    /// A forced stop.
    Stopped,
}

/// A running native batch: its items, its slot, and where it reports.
struct Running {
    host: Arc<dyn Host>,
    items: Vec<PyItem>,
    ticket: Ticket<PyItem>,
    /// Items dropped before the work started (their callers had cancelled).
    cancelled: usize,
    key: u64,
}

/// Start `batch` from the next iteration of the loop `lp` whose thread calls: the call that
/// made it due returns first, so a caller who cancels right after it still keeps its item out
/// (as the Python runner's task does).
pub(crate) fn start_soon(
    lp: &Arc<LoopRef>,
    host: Arc<dyn Host>,
    f: &Arc<dyn NativeBatchFn>,
    batch: ferrobatch_core::Batch<PyItem>,
) {
    lp.post(Box::new(StartLater(Some((host, Arc::clone(f), batch)))));
}

type Due = (
    Arc<dyn Host>,
    Arc<dyn NativeBatchFn>,
    ferrobatch_core::Batch<PyItem>,
);

/// A due native batch waiting for its loop's next iteration.
struct StartLater(Option<Due>);

impl LoopJob for StartLater {
    fn run(mut self: Box<Self>, py: Python<'_>, _home: &Arc<LoopRef>) -> PyResult<()> {
        if let Some((host, f, batch)) = self.0.take() {
            start(py, host, &f, batch);
        }
        Ok(())
    }
}

impl Drop for StartLater {
    /// The loop closed first: the batch's items fail (a caller on a thread may wait for one).
    fn drop(&mut self) {
        if let Some((host, _, batch)) = self.0.take() {
            let _ = crate::exit::attach(|py| drop_batch(host.as_ref(), py, batch));
        }
    }
}

/// Start `batch` on the runtime.
pub(crate) fn start(
    py: Python<'_>,
    host: Arc<dyn Host>,
    f: &Arc<dyn NativeBatchFn>,
    batch: ferrobatch_core::Batch<PyItem>,
) {
    let ferrobatch_core::Batch { mut items, ticket } = batch;
    let before = items.len();
    if host.is_forced() {
        // Formed before a forced stop and started after it: its items end stopped too.
        let exc = errors::exception(
            py,
            &Error::Stopped {
                reason: StopReason::ForceStopped,
            },
        );
        let mut r = Resolver::default();
        fail_all(py, &items, &exc, &mut r);
        r.flush(py);
        let work = ticket.finish(BatchCounts {
            failed: before,
            ..Default::default()
        });
        host.handle(py, work);
        return;
    }
    items.retain(|i| i.sink.claim(py));
    let cancelled = before - items.len();
    if items.is_empty() {
        let work = ticket.finish(BatchCounts {
            cancelled,
            ..Default::default()
        });
        host.handle(py, work);
        return;
    }
    let values = items.iter().map(|i| i.value.bind(py).clone()).collect();
    let work = f.start(py, values);
    let watch = Arc::new(Watch {
        waiting: AtomicUsize::new(items.len()),
        ..Default::default()
    });
    for i in &items {
        i.sink.watch(Arc::clone(&watch) as Arc<dyn OnCancel>);
    }
    let key = host.register(Arc::clone(&watch) as Arc<dyn Abort>);
    let running = Running {
        host,
        items,
        ticket,
        cancelled,
        key,
    };
    runtime().spawn(async move {
        let ended = tokio::select! {
            biased;
            () = watch.wake.notified() => {
                if watch.forced.load(Ordering::SeqCst) { Ended::Stopped } else { Ended::Cancelled }
            }
            out = work => Ended::Done(out),
        };
        running.finish(ended);
    });
}

impl Running {
    /// The loop every item's caller awaits on, if they all share one that still runs.
    fn one_loop(&self) -> Option<Arc<LoopRef>> {
        let mut found: Option<Arc<LoopRef>> = None;
        for i in &self.items {
            let l = i.sink.event_loop()?;
            match &found {
                Some(f) if !Arc::ptr_eq(f, &l) => return None,
                Some(_) => {}
                None => found = Some(l),
            }
        }
        found
    }

    /// Settle the items from the runtime thread the work ended on.
    fn finish(self, ended: Ended) {
        match ended {
            Ended::Done(out) => match self.one_loop() {
                Some(lp) => lp.post(Box::new(Settle(Some((self, out, Vec::new()))))),
                None => self.settle_off_loop(out),
            },
            Ended::Cancelled => {
                let _ = crate::exit::attach(|py| {
                    let n = self.items.len();
                    self.end(py, Vec::new(), n);
                });
            }
            Ended::Stopped => {
                let _ = crate::exit::attach(|py| {
                    let exc = errors::exception(
                        py,
                        &Error::Stopped {
                            reason: StopReason::ForceStopped,
                        },
                    );
                    let results = self
                        .items
                        .iter()
                        .map(|_| Resolution::Error(exc.clone().unbind()))
                        .collect();
                    self.end(py, results, 0);
                });
            }
        }
    }

    /// Build the results on a blocking thread, one GIL entry per step, then settle.
    fn settle_off_loop(self, mut out: Box<dyn ItemsOut>) {
        runtime().spawn_blocking(move || {
            let mut results = Vec::with_capacity(self.items.len());
            loop {
                let done = crate::exit::attach(|py| out.step(py, &mut results));
                match done {
                    Some(true) => break,
                    Some(false) => continue,
                    None => return, // interpreter exit: nobody is left to tell
                }
            }
            let _ = crate::exit::attach(|py| self.end(py, results, 0));
        });
    }

    /// Settle every item from `results` (missing ones: cancelled, or a count mismatch), run
    /// their callbacks (inline for the loop `here` whose thread calls), free the slot.
    fn end_on(
        self,
        py: Python<'_>,
        results: Vec<Resolution>,
        cancelled: usize,
        here: Option<&Arc<LoopRef>>,
    ) -> PyResult<()> {
        let Running {
            host,
            items,
            ticket,
            cancelled: before,
            key,
        } = self;
        host.unregister(key);
        let mut r = Resolver::default();
        let (mut completed, mut failed) = (0, 0);
        if cancelled == 0 && results.len() != items.len() {
            let exc = errors::exception(
                py,
                &Error::BatchSizeMismatch {
                    expected: items.len(),
                    got: results.len(),
                },
            );
            fail_all(py, &items, &exc, &mut r);
            failed = items.len();
        } else {
            for (item, res) in items.iter().zip(results) {
                match res {
                    Resolution::Value(v) => {
                        item.sink.succeed(py, v, &mut r);
                        completed += 1;
                    }
                    Resolution::Error(e) => {
                        item.sink.fail(py, e.bind(py), &mut r);
                        failed += 1;
                    }
                }
            }
        }
        let ran = match here {
            Some(lp) => r.run_here(py, lp),
            None => {
                r.flush(py);
                Ok(())
            }
        };
        let work = ticket.finish(BatchCounts {
            completed,
            failed,
            cancelled: before + cancelled,
        });
        host.handle(py, work);
        ran
    }

    fn end(self, py: Python<'_>, results: Vec<Resolution>, cancelled: usize) {
        let _ = self.end_on(py, results, cancelled, None);
    }
}

type Pending = (Running, Box<dyn ItemsOut>, Vec<Resolution>);

/// A native batch's results, built and settled on its callers' event loop, a step per loop
/// callback.
struct Settle(Option<Pending>);

impl LoopJob for Settle {
    fn run(mut self: Box<Self>, py: Python<'_>, home: &Arc<LoopRef>) -> PyResult<()> {
        let Some((running, mut out, mut results)) = self.0.take() else {
            return Ok(());
        };
        if !out.step(py, &mut results) {
            self.0 = Some((running, out, results));
            home.post(self);
            return Ok(());
        }
        running.end_on(py, results, 0, Some(home))
    }
}

impl Drop for Settle {
    /// The loop closed with the results unsettled: its callers can never await again, but the
    /// batch's slot must be freed (a dropped ticket does that, counting its items failed).
    fn drop(&mut self) {
        if let Some((running, _, _)) = self.0.take() {
            running.host.unregister(running.key);
        }
    }
}
