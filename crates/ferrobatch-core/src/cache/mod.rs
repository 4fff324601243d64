//! The result cache: answers already paid for, kept so that nothing is paid for twice.
//!
//! A [`Cache`] maps a key (a SHA-256 of a canonical form of the request, see [`KeyBuilder`])
//! to an entry (an envelope with a format version and a checksum around the payload). It
//! lives in one of the stores users already run: process memory (a bounded LRU), a SQLite
//! file, Redis or PostgreSQL (both shared by every process and host). The cache never decides an answer:
//! a corrupt, truncated or unreadable entry is a miss (counted, and reported once through
//! the cache's listener), and a store that cannot be reached makes every lookup a miss and
//! every write a no-op until it answers again, so a request is sent rather than failed.
//!
//! Keys are hashes: no text and no credential enters a store's keys; values hold only the
//! answer.

mod envelope;
mod key;
mod memory;
mod postgres;
mod redis;
mod sqlite;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use envelope::{decode, decode_owned, encode, FORMAT_VERSION};
pub use key::{chat_key, embedding_key, strip_credentials, Key, KeyBuilder};

use crate::error::Error;

/// Where a cache keeps its entries, parsed from the string users give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// This process's memory.
    Memory,
    /// A SQLite file.
    Sqlite(String),
    /// A Redis server (`redis://` or `rediss://` URL).
    Redis(String),
    /// A PostgreSQL database (`postgresql://` or `postgres://` DSN).
    Postgres(String),
}

impl Location {
    /// `"memory"`, `"sqlite:///path"` or a plain file path, `"redis://..."`,
    /// `"postgresql://..."`.
    pub fn parse(s: &str) -> Result<Location, Error> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::config("location", "must name a cache location"));
        }
        if s == "memory" {
            return Ok(Location::Memory);
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            return Ok(Location::Redis(s.to_string()));
        }
        if crate::postgres::is_postgres(s) {
            return Ok(Location::Postgres(s.to_string()));
        }
        if let Some(path) = s.strip_prefix("sqlite://") {
            // As SQLAlchemy writes it: sqlite:///relative.db, sqlite:////absolute.db.
            let path = path.strip_prefix('/').unwrap_or(path);
            if path.is_empty() {
                return Err(Error::config("location", "sqlite:// needs a file path"));
            }
            return Ok(Location::Sqlite(path.to_string()));
        }
        if s.contains("://") {
            return Err(Error::config(
                "location",
                format!(
                    "unknown scheme in {:?}: use \"memory\", a file path, \"sqlite:///path\", \
                     \"redis://...\" or \"postgresql://...\"",
                    redact(s)
                ),
            ));
        }
        Ok(Location::Sqlite(s.to_string()))
    }

    /// The location with any password replaced, for messages and reprs.
    pub fn describe(&self) -> String {
        match self {
            Location::Memory => "memory".to_string(),
            Location::Sqlite(p) => format!("sqlite:///{p}"),
            Location::Redis(u) => redact(u),
            Location::Postgres(dsn) => crate::postgres::redact(dsn),
        }
    }
}

fn redact(url: &str) -> String {
    crate::limits::redact_url(url)
}

/// The settings of a cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Where entries live.
    pub location: Location,
    /// How long an entry is good for (None: until evicted).
    pub ttl: Option<Duration>,
    /// Prefixed to every key, so caches sharing a store stay apart.
    pub namespace: Option<String>,
    /// Most entries kept (None: no bound; memory defaults to 100,000).
    pub max_entries: Option<u64>,
}

/// Counters of a cache since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Entries written.
    pub writes: u64,
    /// Entries found corrupt, truncated or of another format (counted as misses too).
    pub corrupt: u64,
    /// Store calls that failed (the store could not be reached or answered an error).
    pub errors: u64,
}

/// Told of problems a caller should hear about but that never fail a request.
pub type Listener = Arc<dyn Fn(&str) + Send + Sync>;

/// A result cache: see the module docs.
pub struct Cache {
    config: CacheConfig,
    store: Box<dyn backend::Backend>,
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    /// Whether the store is failing now (one warning per outage).
    failing: AtomicBool,
    /// Whether a corrupt entry was reported already (one warning per cache).
    told_corrupt: AtomicBool,
    listener: Listener,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("location", &self.config.location.describe())
            .field("ttl", &self.config.ttl)
            .field("namespace", &self.config.namespace)
            .field("max_entries", &self.config.max_entries)
            .finish()
    }
}

mod backend {
    use super::Key;
    use crate::error::Error;
    use futures_util::future::BoxFuture;

    /// One kind of store. Every call is one round trip (or one transaction).
    pub(crate) trait Backend: Send + Sync {
        /// The payloads stored under `keys` (None: absent or expired), in order.
        fn get_many<'a>(
            &'a self,
            keys: &'a [Key],
        ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, Error>>;
        /// Store every entry, replacing what was there.
        fn put_many(&self, entries: Vec<(Key, Vec<u8>)>) -> BoxFuture<'_, Result<(), Error>>;
        /// Remove every entry of this cache (its namespace).
        fn clear(&self) -> BoxFuture<'_, Result<u64, Error>>;
        /// Entries stored now (of this namespace, where the store can tell).
        fn len(&self) -> BoxFuture<'_, Result<u64, Error>>;
    }
}

impl Cache {
    /// Open a cache (lazily: nothing is connected until first use). `listener` hears of
    /// outages and corrupt entries.
    pub fn open(config: CacheConfig, listener: Listener) -> Result<Cache, Error> {
        if config.max_entries == Some(0) {
            return Err(Error::config("max_entries", "must be at least 1"));
        }
        if config.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("ttl", "must be seconds > 0"));
        }
        let ns = config.namespace.clone().unwrap_or_default();
        let store: Box<dyn backend::Backend> = match &config.location {
            Location::Memory => Box::new(memory::MemoryStore::new(
                config.max_entries.unwrap_or(memory::DEFAULT_MAX_ENTRIES),
                config.ttl,
            )),
            Location::Sqlite(path) => Box::new(sqlite::SqliteStore::new(
                path.clone(),
                ns,
                config.ttl,
                config.max_entries,
            )),
            Location::Redis(url) => Box::new(redis::RedisStore::new(
                url,
                &ns,
                config.ttl,
                config.max_entries,
            )?),
            Location::Postgres(dsn) => Box::new(postgres::PgCacheStore::new(
                dsn,
                ns,
                config.ttl,
                config.max_entries,
            )?),
        };
        Ok(Cache {
            config,
            store,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            told_corrupt: AtomicBool::new(false),
            listener,
        })
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// A key builder for this cache (its namespace included).
    pub fn keys(&self, kind: &str) -> KeyBuilder {
        KeyBuilder::new(kind, self.config.namespace.as_deref().unwrap_or(""))
    }

    fn store_failed(&self, what: &str, e: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            (self.listener)(&format!(
                "the result cache at {} failed ({what}: {e}); requests are sent without it \
                 until it answers again",
                self.config.location.describe()
            ));
        }
    }

    fn store_answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            (self.listener)(&format!(
                "the result cache at {} answers again",
                self.config.location.describe()
            ));
        }
    }

    /// The payloads under `keys`, in order (None: a miss). One round trip. Never fails: a
    /// store error or a corrupt entry is a miss.
    pub async fn get_many(&self, keys: &[Key]) -> Vec<Option<Vec<u8>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let found = match self.store.get_many(keys).await {
            Ok(found) => {
                self.store_answered();
                found
            }
            Err(e) => {
                self.store_failed("a lookup", &e);
                vec![None; keys.len()]
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for entry in found {
            let payload = entry.and_then(|raw| match decode_owned(raw) {
                Some(p) => Some(p),
                None => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    if !self.told_corrupt.swap(true, Ordering::Relaxed) {
                        (self.listener)(&format!(
                            "the result cache at {} holds an unreadable entry (corrupt, \
                             truncated or of another format); it is treated as a miss and \
                             written again",
                            self.config.location.describe()
                        ));
                    }
                    None
                }
            });
            match payload {
                Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
                None => self.misses.fetch_add(1, Ordering::Relaxed),
            };
            out.push(payload);
        }
        out
    }

    /// Store the payloads. One round trip. Never fails: a store error is reported once.
    pub async fn put_many(&self, entries: Vec<(Key, Vec<u8>)>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        let sealed = entries.into_iter().map(|(k, p)| (k, encode(&p))).collect();
        match self.store.put_many(sealed).await {
            Ok(()) => {
                self.store_answered();
                self.writes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => self.store_failed("a write", &e),
        }
    }

    /// Remove every entry of this cache; how many there were (where the store can tell).
    pub async fn clear(&self) -> Result<u64, Error> {
        self.store.clear().await
    }

    /// Entries stored now.
    pub async fn entries(&self) -> Result<u64, Error> {
        self.store.len().await
    }

    /// The counters since the cache was opened.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
