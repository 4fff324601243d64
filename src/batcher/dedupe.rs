//! In-flight deduplication: items with equal keys that are waiting or running share one slot.
//! The first such item is queued with a [`Fanout`] as its sink; each later one only adds its
//! own sink to it, so the batch function sees the key once and every caller gets the result
//! (or the exception). The key leaves the table when its item ends, or when every caller of a
//! waiting item has cancelled (then nothing runs for it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;

use super::sink::{Fanout, KeyTable, Sink};

/// The keys in flight that share one Python hash, each with its callers.
type Bucket = Vec<(Py<PyAny>, Arc<Fanout>)>;

/// Keys in flight, by their Python hash (equal hashes are told apart with `==`), and a count
/// of changes.
#[derive(Default)]
struct Table {
    keys: HashMap<isize, Bucket>,
    version: u64,
}

/// A batcher's table of keys in flight.
pub(crate) struct Dedupe {
    /// Makes an item's key; `None`: the item is its own key.
    key_fn: Option<Py<PyAny>>,
    /// Makes each later caller's own copy of a shared result; `None`: they share the object.
    copy: Option<Py<PyAny>>,
    table: Mutex<Table>,
    me: Weak<Dedupe>,
    /// Items that joined one already in flight.
    joined: AtomicU64,
}

/// What `Dedupe::enter` decided.
pub(crate) enum Entry {
    /// The first item of its key: queue it with this sink.
    Queue(Sink),
    /// It joined an item already in flight: nothing to queue.
    Joined,
}

impl Dedupe {
    pub(crate) fn new(key_fn: Option<Py<PyAny>>, copy: Option<Py<PyAny>>) -> Arc<Dedupe> {
        Arc::new_cyclic(|me| Dedupe {
            key_fn,
            copy,
            table: Mutex::new(Table::default()),
            me: me.clone(),
            joined: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many items joined one already in flight.
    pub(crate) fn joined(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    /// The functions it holds, for the GC's traversal.
    pub(crate) fn functions(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.key_fn.iter().chain(self.copy.iter())
    }

    /// Join `sink` to the item in flight with `value`'s key, or make it the first of its key.
    /// A key that cannot be made or hashed is the caller's error (a `TypeError` for an
    /// unhashable item).
    pub(crate) fn enter(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        mut sink: Sink,
    ) -> PyResult<Entry> {
        let key = match &self.key_fn {
            Some(f) => f.bind(py).call1((value,))?,
            None => value.clone(),
        };
        let hash = key.hash()?;
        // `==` may run Python code, which may let another thread take the GIL: it is never
        // called with the table locked. The bucket is compared from a snapshot, and the
        // decision taken only if the table has not changed meanwhile (else compared again).
        loop {
            let (seen, snapshot) = {
                let table = self.lock();
                let bucket = table.keys.get(&hash).map_or(&[][..], Vec::as_slice);
                let snapshot: Bucket = bucket
                    .iter()
                    .map(|(k, f)| (k.clone_ref(py), Arc::clone(f)))
                    .collect();
                (table.version, snapshot)
            };
            // A key whose `==` raises is treated as different (it gets its own slot).
            let equal = snapshot
                .into_iter()
                .find(|(k, _)| k.bind(py).eq(&key).unwrap_or(false))
                .map(|(_, f)| f);
            let mut table = self.lock();
            if table.version != seen {
                continue;
            }
            if let Some(fan) = equal {
                match fan.join(sink) {
                    Ok(()) => {
                        self.joined.fetch_add(1, Ordering::Relaxed);
                        return Ok(Entry::Joined);
                    }
                    Err(back) => {
                        // It ended meanwhile (and is leaving the table): look again.
                        sink = back;
                        drop(table);
                        continue;
                    }
                }
            }
            let owner: Weak<dyn KeyTable> = self.me.clone();
            let copy = self.copy.as_ref().map(|c| c.clone_ref(py));
            let fan = Fanout::new(owner, hash, copy, sink);
            table.version += 1;
            table
                .keys
                .entry(hash)
                .or_default()
                .push((key.unbind(), Arc::clone(&fan)));
            return Ok(Entry::Queue(Sink::Fanout(fan)));
        }
    }
}
impl KeyTable for Dedupe {
    fn remove(&self, fan: &Arc<Fanout>) {
        let removed = {
            let mut table = self.lock();
            let Some(bucket) = table.keys.get_mut(&fan.hash()) else {
                return;
            };
            let at = bucket.iter().position(|(_, f)| Arc::ptr_eq(f, fan));
            let removed = at.map(|i| bucket.swap_remove(i));
            if bucket.is_empty() {
                table.keys.remove(&fan.hash());
            }
            table.version += 1;
            removed
        };
        drop(removed); // the key, dropped outside the lock
    }
}
