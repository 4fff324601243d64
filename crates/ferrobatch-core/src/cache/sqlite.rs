//! A SQLite file as the cache's store: one table, written in WAL mode so that several
//! processes can fill it at once; every call is one transaction on a blocking thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, FutureExt};
use rusqlite::{params_from_iter, Connection};

use super::backend::Backend;
use super::Key;
use crate::error::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ferrobatch_cache (
    namespace TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    written_at REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS ferrobatch_cache_written ON ferrobatch_cache (namespace, written_at);
";

/// Most keys per `IN (...)` list (SQLite's default limit on variables is 32,766).
const CHUNK: usize = 500;

pub(crate) struct SqliteStore {
    path: String,
    namespace: String,
    ttl: Option<Duration>,
    max_entries: Option<u64>,
    conn: Arc<Mutex<Option<Connection>>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn err(operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Cache {
        operation,
        message: e.to_string(),
    }
}

impl SqliteStore {
    pub(crate) fn new(
        path: String,
        namespace: String,
        ttl: Option<Duration>,
        max_entries: Option<u64>,
    ) -> SqliteStore {
        SqliteStore {
            path,
            namespace,
            ttl,
            max_entries,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Run `f` on the connection (opened on first use) on a blocking thread.
    fn run<R, F>(&self, operation: &'static str, f: F) -> BoxFuture<'static, Result<R, Error>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        async move {
            let joined = tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    let c = Connection::open(&path).map_err(err("opening the cache"))?;
                    c.busy_timeout(Duration::from_secs(10))
                        .map_err(err("opening the cache"))?;
                    let _: String = c
                        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                        .map_err(err("opening the cache"))?;
                    c.execute_batch(SCHEMA).map_err(err("opening the cache"))?;
                    *guard = Some(c);
                }
                let c = guard.as_mut().expect("opened above");
                let out = f(c).map_err(err(operation));
                if out.is_err() {
                    // A broken connection (a file removed, a disk error) is opened afresh next time.
                    *guard = None;
                }
                out
            })
            .await;
            joined.unwrap_or_else(|e| {
                Err(Error::Cache {
                    operation,
                    message: format!("the cache's thread failed: {e}"),
                })
            })
        }
        .boxed()
    }
}

impl Backend for SqliteStore {
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, Error>> {
        let keys: Vec<Key> = keys.to_vec();
        let ns = self.namespace.clone();
        self.run("reading", move |c| {
            let t = now();
            let mut found = std::collections::HashMap::with_capacity(keys.len());
            for chunk in keys.chunks(CHUNK) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!(
                    "SELECT key, value FROM ferrobatch_cache WHERE namespace = ? AND key IN \
                     ({marks}) AND (expires_at IS NULL OR expires_at > ?)"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() + 2);
                args.push(ns.clone().into());
                args.extend(chunk.iter().map(|k| k.0.to_vec().into()));
                args.push(t.into());
                let rows = stmt.query_map(params_from_iter(args), |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?;
                for row in rows {
                    let (k, v) = row?;
                    found.insert(k, v);
                }
            }
            Ok(keys.iter().map(|k| found.remove(&k.0[..])).collect())
        })
    }

    fn put_many(&self, entries: Vec<(Key, Vec<u8>)>) -> BoxFuture<'_, Result<(), Error>> {
        let ns = self.namespace.clone();
        let ttl = self.ttl;
        let max = self.max_entries;
        self.run("writing", move |c| {
            let t = now();
            let expires = ttl.map(|d| t + d.as_secs_f64());
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO ferrobatch_cache \
                     (namespace, key, value, written_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                )?;
                for (k, v) in &entries {
                    stmt.execute(rusqlite::params![ns, &k.0[..], v, t, expires])?;
                }
            }
            if let Some(max) = max {
                // Keep the newest `max` entries of the namespace.
                tx.execute(
                    "DELETE FROM ferrobatch_cache WHERE rowid IN (SELECT rowid FROM \
                     ferrobatch_cache WHERE namespace = ?1 \
                     ORDER BY written_at DESC, rowid DESC LIMIT -1 OFFSET ?2)",
                    rusqlite::params![ns, max as i64],
                )?;
            }
            if ttl.is_some() {
                tx.execute(
                    "DELETE FROM ferrobatch_cache WHERE namespace = ? AND expires_at <= ?",
                    rusqlite::params![ns, t],
                )?;
            }
            tx.commit()
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<u64, Error>> {
        let ns = self.namespace.clone();
        self.run("clearing", move |c| {
            let n = c.execute("DELETE FROM ferrobatch_cache WHERE namespace = ?", [ns])?;
            Ok(n as u64)
        })
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, Error>> {
        let ns = self.namespace.clone();
        self.run("counting", move |c| {
            c.query_row(
                "SELECT count(*) FROM ferrobatch_cache WHERE namespace = ? \
                 AND (expires_at IS NULL OR expires_at > ?)",
                rusqlite::params![ns, now()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
    }
}
