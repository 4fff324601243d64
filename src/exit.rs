//! Entering Python from Rust threads (the engine's timer thread, the tokio runtime) safely up
//! to interpreter exit.
//!
//! A thread that takes the GIL while the interpreter finalizes is ended by CPython with
//! `pthread_exit`; unwinding a Rust thread that way releases a thread state that is no longer
//! current, and CPython aborts the process. So every entry goes through [`attach`], and an
//! `atexit` hook (run before finalization starts) closes the gate and waits, with the GIL
//! released, for the entries already under way. After that no Rust thread enters Python: what
//! they would have delivered belongs to event loops that will never run again.

use std::cell::RefCell;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;

/// Whether the interpreter is exiting, and how many Rust threads are inside Python.
static GATE: Mutex<(bool, usize)> = Mutex::new((false, 0));
static LEFT: Condvar = Condvar::new();

/// The longest the exit hook waits for threads inside Python (they only hand results to a
/// loop, which takes microseconds; the bound only guards against a bug hanging the exit).
const EXIT_WAIT: Duration = Duration::from_secs(5);

fn gate() -> std::sync::MutexGuard<'static, (bool, usize)> {
    GATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Count a thread in, unless the interpreter is exiting.
fn enter() -> bool {
    let mut g = gate();
    if g.0 {
        return false;
    }
    g.1 += 1;
    true
}

fn leave() {
    let mut g = gate();
    g.1 -= 1;
    if g.1 == 0 {
        LEFT.notify_all();
    }
}

/// A Rust thread's own Python thread state, made on its first entry into Python and kept
/// until the thread ends. Without it every entry would make and free one (an allocation and
/// an `mmap` of its frame stack each time), which on a busy runtime thread cost more than the
/// work it entered Python for.
struct Kept(*mut ffi::PyThreadState);

impl Drop for Kept {
    /// The thread ends: its thread state is deleted (left alone once the interpreter exits,
    /// which deletes every thread state itself).
    fn drop(&mut self) {
        if !enter() {
            return;
        }
        // SAFETY: `self.0` is this thread's state, made by `PyGILState_Ensure` and released by
        // `PyEval_SaveThread` in `keep_thread_state`; restoring it takes the GIL, and the
        // matching `PyGILState_Release` then deletes it and releases the GIL.
        unsafe {
            ffi::PyEval_RestoreThread(self.0);
            ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_UNLOCKED);
        }
        leave();
    }
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Give this thread a thread state of its own if it has none (a thread Python did not start).
fn keep_thread_state() {
    let _ = KEPT.try_with(|k| {
        if k.borrow().is_some() {
            return;
        }
        // SAFETY: only for a thread with no thread state (so it holds no GIL): `Ensure` makes
        // one and takes the GIL, `SaveThread` releases the GIL and keeps the state for later
        // `Ensure`/`Release` pairs, which then only take and release the GIL.
        unsafe {
            if ffi::Py_IsInitialized() == 0 || !ffi::PyGILState_GetThisThreadState().is_null() {
                return;
            }
            let _ = ffi::PyGILState_Ensure();
            let state = ffi::PyEval_SaveThread();
            *k.borrow_mut() = Some(Kept(state));
        }
    });
}

/// Run `f` with the GIL from a thread Python did not start; `None` (without running it) once
/// the interpreter is exiting or cannot be entered.
pub(crate) fn attach<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    if !enter() {
        return None;
    }
    keep_thread_state();
    let out = Python::try_attach(f);
    leave();
    out
}

/// The `atexit` hook: close the gate, then wait (GIL released) for the threads inside.
#[pyfunction]
pub(crate) fn _close_gate(py: Python<'_>) {
    py.detach(|| {
        let mut g = gate();
        g.0 = true;
        let deadline = std::time::Instant::now() + EXIT_WAIT;
        while g.1 > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            g = LEFT
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    });
}

/// Register the hook with `atexit`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(_close_gate, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
