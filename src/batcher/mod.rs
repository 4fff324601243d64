//! The native half of `ferrobatch.AsyncBatcher`: the engine's handle, the future callers
//! await, where results go, and how batches start.
//!
//! - `core`: `Core`, the pyclass `AsyncBatcher` holds: turns a call into a queued item and
//!   its sink;
//! - `future`: `ItemFuture`, what `process()` returns, and the done-callback batching;
//! - `sink`: where one item's result goes (a future, a group, a waiting thread, a
//!   `concurrent.futures.Future`, every caller of a deduplicated key); `waiter`: where blocked
//!   threads wait; `dedupe`: the table of keys in flight (`dedupe=`);
//! - `dispatch`: how a due batch starts (on the loop, on Rust threads, natively on tokio) and
//!   how work made due on any thread reaches where it can run;
//! - `batch`: `Batch`, a batch as the Python runner sees it, and the host it reports to;
//! - `worker`: sync batch functions on Rust-owned threads; `native`: Rust batch functions
//!   (the HTTP clients) on the runtime;
//! - `glue`: the asyncio calls everything above shares (a leaf).
//!
//! Imports run one way: core → (dedupe, dispatch) → (worker, native) → batch → sink →
//! (future, waiter) → glue.

mod batch;
mod core;
mod dedupe;
mod dispatch;
mod future;
pub(crate) mod glue;
mod native;
mod sink;
mod waiter;
mod worker;

pub(crate) use batch::Batch;
pub(crate) use core::Core;
pub(crate) use future::ItemFuture;
pub(crate) use future::Resolution;
pub(crate) use future::{LoopJob, LoopRef, OnCancel};
pub(crate) use native::{ItemsOut, NativeBatchFn, NativeFn, NativeWork};
