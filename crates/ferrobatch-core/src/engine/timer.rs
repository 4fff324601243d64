//! The engine's timer thread: sleeps until the next deadline and dispatches what it makes due.
//!
//! A dedicated thread waiting on a condition variable wakes within tens of microseconds of a
//! deadline; an async runtime's timer wheel rounds sleeps up to the next millisecond, which
//! would add up to a millisecond to every partial batch at low load.

use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::state::{Due, State};
use super::{Dispatcher, Receipt, Shared, StopReason};

pub(super) fn spawn<T: Send + 'static>(
    shared: Arc<Shared<T>>,
    dispatcher: Box<dyn Dispatcher<T>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ferrobatch-timer".into())
        .spawn(move || run(shared, dispatcher))
        .map(|_| ())
}

/// Hand `due` to the dispatcher with a receipt; the engine counts it in transit until then.
fn hand_over<T: Send + 'static>(
    shared: &Arc<Shared<T>>,
    mut st: MutexGuard<'_, State<T>>,
    due: Due<T>,
    dispatcher: &dyn Dispatcher<T>,
) {
    let timeout = st.config.item_timeout;
    st.timer_armed = None;
    st.in_transit += 1;
    drop(st);
    let receipt = Receipt {
        shared: Arc::clone(shared),
        acknowledged: false,
    };
    dispatcher.dispatch(shared.into_work(due, timeout), receipt);
}

fn run<T: Send + 'static>(shared: Arc<Shared<T>>, dispatcher: Box<dyn Dispatcher<T>>) {
    loop {
        let mut due = Due::default();
        let mut st = shared.lock();
        if st.shutdown {
            // The owner is gone: fail whatever is still queued and stop.
            st.close(true, StopReason::Dropped, &mut due);
            st.collect(Instant::now(), &mut due);
            if !due.is_empty() {
                hand_over(&shared, st, due, dispatcher.as_ref());
            }
            return;
        }
        st.collect(Instant::now(), &mut due);
        if !due.is_empty() {
            hand_over(&shared, st, due, dispatcher.as_ref());
            continue;
        }
        // Nothing due: sleep until the next deadline or until a change makes one earlier.
        let next = st.next_deadline();
        st.timer_armed = next;
        match next {
            None => {
                let _guard = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                let _guard = shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}
