//! The one tokio runtime every HTTP batcher and test server of the process runs on, made on
//! first use. A child made by `fork` has none of the parent's threads, so it gets its own.

use std::sync::{Arc, Mutex};

use tokio::runtime::{Builder, Runtime};

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The process's runtime.
pub(crate) fn runtime() -> Arc<Runtime> {
    let mut g = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((owner, rt)) = g.as_ref() {
        if *owner == pid {
            return Arc::clone(rt);
        }
        // Inherited through fork: its threads do not exist here. Leak it rather than drop
        // it, since dropping would wait for threads that will never answer.
        if let Some((_, old)) = g.take() {
            std::mem::forget(old);
        }
    }
    let rt = Arc::new(
        Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
            .thread_name("ferrobatch-io")
            .enable_all()
            .build()
            .expect("the ferrobatch tokio runtime could not start"),
    );
    *g = Some((pid, Arc::clone(&rt)));
    rt
}
