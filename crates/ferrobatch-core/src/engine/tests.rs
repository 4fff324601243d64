//! Engine tests through the public API, with the real timer thread.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn cfg(max_batch: usize, window_ms: u64, conc: usize) -> Config {
    Config {
        max_batch_size: NonZeroUsize::new(max_batch),
        max_queue_time: Window::Fixed(Duration::from_millis(window_ms)),
        concurrency: NonZeroUsize::new(conc),
        ..Config::default()
    }
}

/// An engine whose timer-thread work arrives on a channel, acknowledged on receipt.
fn engine(config: Config) -> (Engine<u32>, Receiver<Work<u32>>) {
    let (tx, rx) = channel();
    let e = Engine::new(config, move |w: Work<u32>, r: Receipt<u32>| {
        let _ = tx.send(w);
        let more = r.delivered();
        if !more.is_empty() {
            let _ = tx.send(more);
        }
    })
    .unwrap();
    (e, rx)
}

const PATIENCE: Duration = Duration::from_secs(5);

#[test]
fn a_full_batch_is_returned_by_the_submit_that_fills_it() {
    let (e, rx) = engine(cfg(3, 1000, 1));
    assert!(e.submit(1).unwrap().is_empty());
    assert!(e.submit(2).unwrap().is_empty());
    let w = e.submit(3).unwrap();
    assert_eq!(w.batches.len(), 1);
    assert_eq!(w.batches[0].items, vec![1, 2, 3]);
    assert!(rx.try_recv().is_err(), "nothing went through the timer");
}

#[test]
fn the_timer_dispatches_a_partial_batch_after_its_window() {
    let (e, rx) = engine(cfg(100, 30, 1));
    let t0 = Instant::now();
    assert!(e.submit(7).unwrap().is_empty());
    let w = rx.recv_timeout(PATIENCE).unwrap();
    let waited = t0.elapsed();
    assert_eq!(w.batches[0].items, vec![7]);
    assert!(waited >= Duration::from_millis(30), "{waited:?}");
    assert!(waited < Duration::from_millis(30) + PATIENCE);
}

#[test]
fn finishing_a_batch_returns_the_next_one() {
    let (e, _rx) = engine(cfg(2, 1000, 1));
    let mut first = e.submit(1).unwrap();
    assert!(first.is_empty());
    first = e.submit(2).unwrap();
    for i in 3..=4 {
        assert!(e.submit(i).unwrap().is_empty(), "slot is busy");
    }
    let b = first.batches.pop().unwrap();
    let next = b.ticket.finish(BatchCounts {
        completed: 2,
        ..BatchCounts::default()
    });
    assert_eq!(next.batches[0].items, vec![3, 4]);
}

#[test]
fn a_dropped_ticket_frees_its_slot_and_the_timer_runs_the_next_batch() {
    let (e, rx) = engine(cfg(2, 1000, 1));
    let _ = e.submit(1).unwrap();
    let w = e.submit(2).unwrap();
    let _ = e.submit(3).unwrap();
    let _ = e.submit(4).unwrap();
    drop(w);
    let next = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(next.batches[0].items, vec![3, 4]);
    assert_eq!(e.stats().failed, 2);
}

#[test]
fn item_timeouts_fire_from_the_timer_while_the_slot_is_busy() {
    let mut c = cfg(2, 0, 1);
    c.item_timeout = Some(Duration::from_millis(20));
    let (e, rx) = engine(c);
    let _ = e.submit(1).unwrap();
    let running = e.submit(2).unwrap();
    assert_eq!(running.batches.len(), 1);
    let _ = e.submit(3).unwrap();
    let w = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(w.failures.len(), 1);
    let (items, err) = &w.failures[0];
    assert_eq!(items, &vec![3]);
    assert_eq!(
        err,
        &Error::ItemTimeout {
            timeout: Duration::from_millis(20)
        }
    );
    assert_eq!(e.stats().timed_out, 1);
}

#[test]
fn drain_reports_drained_after_the_last_batch_finishes() {
    let (e, _rx) = engine(cfg(10, 1000, 1));
    let _ = e.submit(1).unwrap();
    let mut w = e.close(false);
    assert!(!e.is_accepting());
    assert_eq!(
        w.batches.len(),
        1,
        "draining dispatches without waiting for the window"
    );
    assert!(!w.drained);
    let b = w.batches.pop().unwrap();
    let w = b.ticket.finish(BatchCounts {
        completed: 1,
        ..BatchCounts::default()
    });
    assert!(w.drained);
    assert!(e.is_idle());
    assert_eq!(
        e.submit(2).unwrap_err(),
        Error::Stopped {
            reason: StopReason::NotAccepting
        }
    );
}

#[test]
fn closing_an_idle_engine_is_drained_at_once() {
    let (e, _rx) = engine(cfg(10, 1000, 1));
    assert!(e.close(false).drained);
}

#[test]
fn force_close_fails_queued_items_with_force_stopped() {
    let (e, _rx) = engine(cfg(10, 1000, 1));
    for i in 0..3 {
        let _ = e.submit(i).unwrap();
    }
    let w = e.close(true);
    assert_eq!(w.failures.len(), 1);
    assert_eq!(w.failures[0].0, vec![0, 1, 2]);
    assert_eq!(
        w.failures[0].1,
        Error::Stopped {
            reason: StopReason::ForceStopped
        }
    );
    assert!(w.drained);
}

#[test]
fn dropping_the_engine_fails_queued_items_through_the_dispatcher() {
    let (e, rx) = engine(cfg(10, 60_000, 1));
    let _ = e.submit(1).unwrap();
    let _ = e.submit(2).unwrap();
    drop(e);
    let w = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(w.failures[0].0, vec![1, 2]);
    assert_eq!(
        w.failures[0].1,
        Error::Stopped {
            reason: StopReason::Dropped
        }
    );
}

#[test]
fn stats_count_what_happened() {
    let (e, _rx) = engine(cfg(2, 1000, 1));
    let _ = e.submit(1).unwrap();
    let mut w = e.submit(2).unwrap();
    let b = w.batches.pop().unwrap();
    let _ = b.ticket.finish(BatchCounts {
        completed: 1,
        failed: 1,
        cancelled: 0,
    });
    let s = e.stats();
    assert_eq!(
        (s.submitted, s.completed, s.failed, s.batches),
        (2, 1, 1, 1)
    );
    assert_eq!(s.batch_sizes.get(&2), Some(&1));
    assert_eq!(s.queue_wait.count, 2);
    assert_eq!(s.running_batches, 0);
}

type Handed = Receiver<(Work<u32>, Receipt<u32>)>;

/// Items 1 and 2 run in the only slot; item 3 waits and will time out on the timer thread,
/// whose work (with its receipt, unacknowledged) arrives on the channel.
fn expiry_while_running() -> (Engine<u32>, Handed, Work<u32>) {
    let (tx, rx) = channel::<(Work<u32>, Receipt<u32>)>();
    let mut c = cfg(2, 0, 1);
    c.item_timeout = Some(Duration::from_millis(10));
    let e = Engine::new(c, move |w: Work<u32>, r: Receipt<u32>| {
        let _ = tx.send((w, r));
    })
    .unwrap();
    let _ = e.submit(1).unwrap();
    let running = e.submit(2).unwrap();
    let _ = e.submit(3).unwrap();
    (e, rx, running)
}

#[test]
fn drained_waits_for_timer_work_to_be_delivered() {
    // The timer thread expires an item while a batch runs; the batch then finishes. The drain
    // must not be reported until the expiry has been delivered (its receipt acknowledged).
    let (e, rx, mut running) = expiry_while_running();
    let (expired, receipt) = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(expired.failures[0].0, vec![3]);
    assert!(e.close(false).is_empty());
    let b = running.batches.pop().unwrap();
    let w = b.ticket.finish(BatchCounts {
        completed: 2,
        ..BatchCounts::default()
    });
    assert!(!w.drained, "the expiry is still in transit");
    assert!(receipt.delivered().drained);
}

#[test]
fn a_dropped_receipt_still_lets_the_drain_through() {
    let (e, rx, mut running) = expiry_while_running();
    let (_expired, receipt) = rx.recv_timeout(PATIENCE).unwrap();
    let _ = e.close(false);
    let b = running.batches.pop().unwrap();
    assert!(
        !b.ticket
            .finish(BatchCounts {
                completed: 2,
                ..BatchCounts::default()
            })
            .drained
    );
    drop(receipt);
    let (w, _r) = rx.recv_timeout(PATIENCE).unwrap();
    assert!(w.drained, "the timer thread reports the drain");
}

// ---------------------------------------------------------------------------------------------
// Property: whatever the order of submits, finishes, drops and stops, every accepted item ends
// exactly once (in a batch, or failed), and no batch exceeds max_batch_size.

#[derive(Debug, Clone)]
enum Op {
    Submit(i8),
    FinishOldest,
    DropNewest,
    Sleep(u8),
    Close { force: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (-2i8..3).prop_map(Op::Submit),
        3 => Just(Op::FinishOldest),
        1 => Just(Op::DropNewest),
        1 => (0u8..4).prop_map(Op::Sleep),
        1 => any::<bool>().prop_map(|force| Op::Close { force }),
    ]
}

#[derive(Default)]
struct Ledger {
    ended: HashMap<u32, u32>,
    running: Vec<Batch<u32>>,
    max_seen: usize,
    drained: u32,
}

impl Ledger {
    fn take(&mut self, w: Work<u32>) {
        for b in w.batches {
            self.max_seen = self.max_seen.max(b.items.len());
            for &i in &b.items {
                *self.ended.entry(i).or_default() += 1;
            }
            self.running.push(b);
        }
        for (items, _) in w.failures {
            for i in items {
                *self.ended.entry(i).or_default() += 1;
            }
        }
        self.drained += u32::from(w.drained);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn every_accepted_item_ends_exactly_once(
        ops in proptest::collection::vec(op(), 1..80),
        max_batch in 2usize..6,
        conc in 0usize..3,
        window_ms in 0u64..4,
        cap in 0usize..6,
        aging_ms in prop_oneof![Just(None), (1u64..5).prop_map(Some)],
    ) {
        let mut c = cfg(max_batch, window_ms, conc);
        if window_ms == 3 {
            c.max_queue_time = Window::Auto;
        }
        c.aging = aging_ms.map(Duration::from_millis);
        c.max_queue_size = NonZeroUsize::new(cap);
        let (e, rx) = engine(c);
        let mut ledger = Ledger::default();
        let mut accepted = Vec::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Submit(priority) => {
                    next += 1;
                    if let Ok(w) = e.submit_with_priority(next, i64::from(priority)) {
                        accepted.push(next);
                        ledger.take(w);
                    }
                }
                Op::FinishOldest => {
                    if !ledger.running.is_empty() {
                        let b = ledger.running.remove(0);
                        let n = b.items.len();
                        let w = b.ticket.finish(BatchCounts { completed: n, ..BatchCounts::default() });
                        ledger.take(w);
                    }
                }
                Op::DropNewest => { ledger.running.pop(); }
                Op::Sleep(ms) => std::thread::sleep(Duration::from_millis(u64::from(ms))),
                Op::Close { force } => { let w = e.close(force); ledger.take(w); }
            }
            while let Ok(w) = rx.try_recv() { ledger.take(w); }
        }
        // Drain to the end: stop, then finish everything until the engine reports drained.
        let w = e.close(false);
        ledger.take(w);
        let deadline = Instant::now() + PATIENCE;
        while ledger.drained == 0 && Instant::now() < deadline {
            while let Some(b) = ledger.running.pop() {
                let n = b.items.len();
                let w = b.ticket.finish(BatchCounts { completed: n, ..BatchCounts::default() });
                ledger.take(w);
            }
            if let Ok(w) = rx.recv_timeout(Duration::from_millis(5)) { ledger.take(w); }
        }
        prop_assert_eq!(ledger.drained, 1, "drained is reported exactly once");
        prop_assert!(ledger.max_seen <= max_batch);
        for i in &accepted {
            prop_assert_eq!(ledger.ended.get(i).copied(), Some(1), "item {} ended once", i);
        }
        prop_assert_eq!(ledger.ended.len(), accepted.len(), "nothing unknown ended");
        prop_assert!(e.is_idle());
    }
}
