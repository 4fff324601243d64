//! `_ChatStream`: a streamed chat answer (the core's `ChatStream`) handed to Python. What is
//! already there is taken on the caller's thread (`next_ready()`: no Future, no thread hop);
//! only when nothing is, `next_many()` waits for at least one chunk on the runtime, takes
//! whatever else is ready, and converts them on the loop's thread in one step. The request is sent on the first `next_many()`;
//! `close()` (leaving `async with`, `break`, a cancelled task) closes the connection at once.

use std::sync::Arc;

use ferrobatch_core::http::{ChatStream, Chatter, StreamClocks};
use ferrobatch_core::Error;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::{Map, Value};

use crate::errors::{self, to_pyerr};
use crate::json;
use crate::runtime::runtime;
use crate::task;

/// Most chunks one crossing hands over.
const MAX_PER_CROSSING: usize = 256;

enum Slot {
    /// Not sent yet.
    Unopened(Map<String, Value>),
    /// Sent (finished or not).
    Open(Box<ChatStream>),
    /// Closed before it was ever sent, or failed to open.
    Closed,
}

type Shared = Arc<tokio::sync::Mutex<Slot>>;

/// A streamed chat answer. See the module docs.
#[pyclass(module = "ferrobatch._native", name = "_ChatStream", frozen)]
pub(crate) struct PyChatStream {
    chatter: Arc<Chatter>,
    clocks: StreamClocks,
    slot: Shared,
}

impl PyChatStream {
    pub(crate) fn new(
        chatter: Arc<Chatter>,
        body: Map<String, Value>,
        clocks: StreamClocks,
    ) -> Self {
        PyChatStream {
            chatter,
            clocks,
            slot: Arc::new(tokio::sync::Mutex::new(Slot::Unopened(body))),
        }
    }
}

/// Up to [`MAX_PER_CROSSING`] chunks, at least one unless the stream is over (then none).
async fn next_many(
    chatter: Arc<Chatter>,
    clocks: StreamClocks,
    slot: Shared,
) -> Result<Vec<Value>, Error> {
    let mut guard = slot.lock().await;
    if let Slot::Unopened(body) = &mut *guard {
        let body = std::mem::take(body);
        *guard = Slot::Closed;
        *guard = Slot::Open(Box::new(ChatStream::open(chatter, body, clocks).await?));
    }
    let Slot::Open(stream) = &mut *guard else {
        return Ok(Vec::new());
    };
    let Some(first) = stream.next().await? else {
        return Ok(Vec::new());
    };
    let mut out = vec![first];
    out.extend(stream.take_ready(MAX_PER_CROSSING - 1));
    Ok(out)
}

fn chunks_to_py(py: Python<'_>, chunks: &[Value]) -> PyResult<Py<PyAny>> {
    let items = chunks
        .iter()
        .map(|c| json::to_py(py, c))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, items)?.into_any().unbind())
}

fn raise(py: Python<'_>, e: &Error) -> PyErr {
    PyErr::from_value(errors::exception(py, e))
}

#[pymethods]
impl PyChatStream {
    /// An asyncio Future of a list of chunks: every chunk received so far (at least one),
    /// or an empty list once the stream is over. Raises the stream's error after the chunks
    /// before it were handed out.
    fn next_many(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (chatter, clocks, slot) = (
            Arc::clone(&self.chatter),
            self.clocks,
            Arc::clone(&self.slot),
        );
        let fut = task::spawn_item(py, async move {
            let r = next_many(chatter, clocks, slot).await;
            task::once(move |py| match r {
                Ok(chunks) => chunks_to_py(py, &chunks),
                Err(e) => Err(raise(py, &e)),
            })
        })?;
        Ok(fut.into_any())
    }

    /// The chunks that can be had now without waiting (those received, and what the socket
    /// already holds), as a list, on the caller's thread: no Future, no thread hop. Empty
    /// when none is there yet (or the stream is not sent, busy or over): then `next_many`.
    fn next_ready(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let chunks = match self.slot.try_lock().as_deref_mut() {
            Ok(Slot::Open(stream)) => stream.take_ready(MAX_PER_CROSSING),
            _ => Vec::new(),
        };
        chunks_to_py(py, &chunks)
    }

    /// `next_many` for a caller on a plain thread: blocks (the GIL released) until chunks
    /// arrive. Never call it on an event loop's thread.
    fn next_many_blocking(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (chatter, clocks, slot) = (
            Arc::clone(&self.chatter),
            self.clocks,
            Arc::clone(&self.slot),
        );
        let r = py.detach(|| runtime().block_on(next_many(chatter, clocks, slot)));
        match r {
            Ok(chunks) => chunks_to_py(py, &chunks),
            Err(e) => Err(raise(py, &e)),
        }
    }

    /// End the stream now: the connection closes and it settles from what was received.
    /// Never waits: while a `next_many` holds the stream (its Future should be cancelled
    /// first, which aborts it), the close happens on the runtime as soon as it lets go.
    fn close(&self) {
        let close = |slot: &mut Slot| match slot {
            Slot::Open(stream) => stream.close(),
            other => *other = Slot::Closed,
        };
        match self.slot.try_lock() {
            Ok(mut guard) => close(&mut guard),
            Err(_) => {
                let slot = Arc::clone(&self.slot);
                runtime().spawn(async move { close(&mut *slot.lock().await) });
            }
        }
    }

    /// The answer so far in the provider's non-streaming shape (None before it was sent, or
    /// while a `next_many` is under way).
    fn response<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.slot.try_lock().as_deref() {
            Ok(Slot::Open(s)) => json::to_py(py, &s.response()).map(Some),
            _ => Ok(None),
        }
    }

    /// `{"input_tokens", "output_tokens", "estimated"}` (None before it was sent, or while a
    /// `next_many` is under way).
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let guard = self.slot.try_lock();
        let Ok(Slot::Open(s)) = guard.as_deref() else {
            return Ok(None);
        };
        let u = s.usage();
        let d = PyDict::new(py);
        d.set_item("input_tokens", u.input_tokens)?;
        d.set_item("output_tokens", u.output_tokens)?;
        d.set_item("estimated", u.estimated)?;
        Ok(Some(d))
    }

    /// Seconds from the request to the first chunk (None before it).
    fn time_to_first_chunk(&self) -> Option<f64> {
        match self.slot.try_lock().as_deref() {
            Ok(Slot::Open(s)) => s.time_to_first_chunk().map(|d| d.as_secs_f64()),
            _ => None,
        }
    }
}

/// `StreamClocks` from seconds, checked.
pub(crate) fn clocks(first_token_timeout: f64, idle_timeout: f64) -> PyResult<StreamClocks> {
    let check = |field: &'static str, s: f64| {
        if s.is_finite() && s > 0.0 {
            Ok(std::time::Duration::from_secs_f64(s))
        } else {
            Err(to_pyerr(Error::config(
                field,
                format!("must be seconds > 0, got {s}"),
            )))
        }
    };
    Ok(StreamClocks {
        first_token: check("first_token_timeout", first_token_timeout)?,
        idle: check("idle_timeout", idle_timeout)?,
    })
}
