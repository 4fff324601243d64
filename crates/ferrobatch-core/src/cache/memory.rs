//! The in-process store: a bounded LRU map with an optional time to live.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};

use super::backend::Backend;
use super::Key;
use crate::error::Error;

/// Entries kept when no `max_entries` is given.
pub(crate) const DEFAULT_MAX_ENTRIES: u64 = 100_000;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
    used: u64,
}

#[derive(Default)]
struct Lru {
    map: HashMap<Key, Entry>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
}

pub(crate) struct MemoryStore {
    lru: Mutex<Lru>,
    max: u64,
    ttl: Option<Duration>,
}

impl MemoryStore {
    pub(crate) fn new(max: u64, ttl: Option<Duration>) -> MemoryStore {
        MemoryStore {
            lru: Mutex::new(Lru::default()),
            max,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Lru {
    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.map.get_mut(key) {
            self.order.remove(&e.used);
            e.used = tick;
            self.order.insert(tick, *key);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.used);
        }
    }
}

impl Backend for MemoryStore {
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, Error>> {
        let now = Instant::now();
        let mut lru = self.lock();
        let out = keys
            .iter()
            .map(|k| {
                let expired = lru.map.get(k)?.expires.is_some_and(|t| t <= now);
                if expired {
                    lru.remove(k);
                    return None;
                }
                lru.touch(k);
                lru.map.get(k).map(|e| e.value.clone())
            })
            .collect();
        async move { Ok(out) }.boxed()
    }

    fn put_many(&self, entries: Vec<(Key, Vec<u8>)>) -> BoxFuture<'_, Result<(), Error>> {
        let expires = self.ttl.map(|t| Instant::now() + t);
        let mut lru = self.lock();
        for (key, value) in entries {
            lru.remove(&key);
            lru.tick += 1;
            let used = lru.tick;
            lru.map.insert(
                key,
                Entry {
                    value,
                    expires,
                    used,
                },
            );
            lru.order.insert(used, key);
            while lru.map.len() as u64 > self.max {
                let Some((_, oldest)) = lru.order.pop_first() else {
                    break;
                };
                lru.map.remove(&oldest);
            }
        }
        async { Ok(()) }.boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<u64, Error>> {
        let mut lru = self.lock();
        let n = lru.map.len() as u64;
        *lru = Lru::default();
        async move { Ok(n) }.boxed()
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, Error>> {
        let n = self.lock().map.len() as u64;
        async move { Ok(n) }.boxed()
    }
}
