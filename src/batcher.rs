//! `Core`: the native half of `ferrobatch.AsyncBatcher`. It owns the engine, binds to the
//! event loop it is first used on, and turns `process(item)` into one queued item and one
//! asyncio Future (created on that loop, so `asyncio.gather` takes it as is).

use std::sync::Arc;

use ferrobatch_core::{Config, Engine, UserConfig};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;

use crate::crossing::{Crossing, Group, LoopDispatcher, PyItem, Sink};
use crate::errors::{self, to_pyerr};
use crate::stats::BatcherStats;

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let f = GET_RUNNING_LOOP.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr("get_running_loop")?.unbind())
    })?;
    f.bind(py).call0()
}

/// The engine and its crossing into Python.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct Core {
    engine: Engine<PyItem>,
    crossing: Arc<Crossing>,
}

impl Core {
    /// The loop this batcher belongs to and its `create_future`, binding on first use.
    fn bind_loop<'py>(&self, py: Python<'py>) -> PyResult<&(Py<PyAny>, Py<PyAny>)> {
        let running = running_loop(py)?;
        let bound = match self.crossing.event_loop.get() {
            Some(b) => b,
            None => {
                let create = running.getattr(intern!(py, "create_future"))?.unbind();
                let _ = self
                    .crossing
                    .event_loop
                    .set((running.clone().unbind(), create));
                self.crossing.event_loop.get().expect("just set")
            }
        };
        if !bound.0.bind(py).is(&running) {
            return Err(errors::raise(
                py,
                |e| &e.wrong_loop,
                "this batcher belongs to another event loop (the one it was first used on); \
                 create one batcher per event loop"
                    .to_string(),
            ));
        }
        Ok(bound)
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (*, start, max_batch_size=-1, max_queue_time=None, concurrency=1,
                        max_queue_size=-1, on_full="reject", item_timeout=None,
                        max_latency=None, aging=Some(ferrobatch_core::DEFAULT_AGING.as_secs_f64()),
                        single_item_batches=false))]
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
    ) -> PyResult<Self> {
        let max_queue_time = match max_queue_time {
            None => Some(0.01),
            Some(v) if v.extract::<String>().is_ok_and(|s| s == "auto") => None,
            Some(v) => Some(v.extract::<f64>().map_err(|_| {
                errors::raise(
                    py,
                    |e| &e.config,
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
        let crossing = Crossing::new(start);
        let engine = Engine::new(config, LoopDispatcher(Arc::clone(&crossing))).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("could not start the timer thread: {e}"))
        })?;
        Ok(Core { engine, crossing })
    }

    /// Queue one item; return the asyncio Future of its result.
    #[pyo3(signature = (item, priority=0))]
    fn process(&self, py: Python<'_>, item: Py<PyAny>, priority: i64) -> PyResult<Py<PyAny>> {
        let (_, create_future) = self.bind_loop(py)?;
        let fut = create_future.bind(py).call0()?.unbind();
        let sink = Sink::Future(fut.clone_ref(py));
        let work = self
            .engine
            .submit_with_priority(PyItem { value: item, sink }, priority)
            .map_err(to_pyerr)?;
        if !work.is_empty() {
            self.crossing.deliver(py, work);
        }
        Ok(fut)
    }

    /// Queue many items; return one asyncio Future of the list of their results, in order.
    /// It fails with the first item error (like `asyncio.gather`).
    #[pyo3(signature = (items, priority=0))]
    fn process_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        priority: i64,
    ) -> PyResult<Py<PyAny>> {
        let (_, create_future) = self.bind_loop(py)?;
        let values: Vec<Bound<'_, PyAny>> = items.try_iter()?.collect::<PyResult<_>>()?;
        let fut = create_future.bind(py).call0()?;
        if values.is_empty() {
            fut.call_method1(intern!(py, "set_result"), (PyList::empty(py),))?;
            return Ok(fut.unbind());
        }
        let group = Group::new(fut.clone().unbind(), values.len());
        for (idx, value) in values.into_iter().enumerate() {
            let sink = Sink::Group(Arc::clone(&group), idx);
            match self.engine.submit_with_priority(
                PyItem {
                    value: value.unbind(),
                    sink,
                },
                priority,
            ) {
                Ok(work) => {
                    if !work.is_empty() {
                        self.crossing.deliver(py, work);
                    }
                }
                Err(e) => {
                    // Items already queued become dead and are dropped when their batch forms.
                    group.abandon();
                    let _ = fut.call_method0(intern!(py, "cancel"));
                    return Err(to_pyerr(e));
                }
            }
        }
        Ok(fut.unbind())
    }

    /// Stop accepting items; drain (or, with `force`, fail every queued item).
    fn close(&self, py: Python<'_>, force: bool) {
        let work = self.engine.close(force);
        if !work.is_empty() {
            self.crossing.deliver(py, work);
        }
    }

    /// A Future resolved once every accepted item has ended after `close`; None if the
    /// batcher never bound an event loop (it never held an item).
    fn drain_waiter(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if self.crossing.event_loop.get().is_none() {
            return Ok(None);
        }
        let (event_loop, _) = self.bind_loop(py)?;
        self.crossing
            .drain_waiter(py, event_loop.bind(py))
            .map(Some)
    }

    /// Whether the batcher accepts items.
    #[getter]
    fn accepting(&self) -> bool {
        self.engine.is_accepting()
    }

    /// The event loop the batcher belongs to, or None before first use.
    #[getter]
    fn event_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.crossing.event_loop.get().map(|(l, _)| l.clone_ref(py))
    }

    fn stats(&self) -> BatcherStats {
        self.engine.stats().into()
    }
}
