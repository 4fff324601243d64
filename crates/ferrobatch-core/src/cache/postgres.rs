//! PostgreSQL as the cache's store (the job store's engine), shared by every process and host
//! that names the database. One table, made on first use under an advisory lock; a lookup is
//! one `SELECT ... key = ANY($2)`, a write one `INSERT ... SELECT FROM unnest(...) ON
//! CONFLICT` (then, with `max_entries` or a TTL, one `DELETE` of what is over the bound or
//! expired, in the same transaction; with `max_entries`, writers of one namespace take turns
//! under an advisory lock, so no two bounds miss each other's rows). Every time comes from the database's `now()`.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::OnceCell;

use super::backend::Backend;
use super::Key;
use crate::error::Error;
use crate::postgres::{describe, redact};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ferrobatch_cache (
    namespace text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS ferrobatch_cache_written ON ferrobatch_cache (namespace, written_at);
";

/// Serializes the first opens of concurrent processes (`pg_advisory_xact_lock`): two
/// `CREATE TABLE IF NOT EXISTS` at once may otherwise both try to create the table.
const SCHEMA_LOCK: i64 = 0x6665_7272_6f63;

/// With `max_entries`, the first key of the advisory lock writers of one namespace take
/// turns under (the second is the namespace's hash).
const BOUND_LOCK: i32 = 0x6662_6f75;

pub(crate) struct PgCacheStore {
    pool: Pool,
    location: String,
    namespace: String,
    ttl: Option<Duration>,
    max_entries: Option<u64>,
    ready: OnceCell<()>,
}

impl PgCacheStore {
    /// A store over `dsn` (nothing connects until first use).
    pub(crate) fn new(
        dsn: &str,
        namespace: String,
        ttl: Option<Duration>,
        max_entries: Option<u64>,
    ) -> Result<PgCacheStore, Error> {
        let pool =
            crate::postgres::pool(dsn, 4).map_err(|message| Error::config("location", message))?;
        Ok(PgCacheStore {
            pool,
            location: redact(dsn),
            namespace,
            ttl,
            max_entries,
            ready: OnceCell::new(),
        })
    }

    fn failed(&self, operation: &'static str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        move |e| Error::Cache {
            operation,
            message: format!("PostgreSQL at {}: {}", self.location, describe(&e)),
        }
    }

    /// A connection, the table made first if this store has not seen it yet.
    async fn client(&self, operation: &'static str) -> Result<deadpool_postgres::Object, Error> {
        let mut client = self.pool.get().await.map_err(|e| Error::Cache {
            operation,
            message: format!("PostgreSQL at {} did not answer: {e}", self.location),
        })?;
        self.ready
            .get_or_try_init(|| async {
                let tx = client
                    .transaction()
                    .await
                    .map_err(self.failed("making the table"))?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .await
                    .map_err(self.failed("making the table"))?;
                tx.batch_execute(SCHEMA)
                    .await
                    .map_err(self.failed("making the table"))?;
                tx.commit().await.map_err(self.failed("making the table"))
            })
            .await?;
        Ok(client)
    }
}

impl Backend for PgCacheStore {
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, Error>> {
        async move {
            let client = self.client("reading").await?;
            let wanted: Vec<&[u8]> = keys.iter().map(|k| &k.0[..]).collect();
            let rows = client
                .query(
                    "SELECT key, value FROM ferrobatch_cache WHERE namespace = $1 \
                     AND key = ANY($2) AND (expires_at IS NULL OR expires_at > now())",
                    &[&self.namespace, &wanted],
                )
                .await
                .map_err(self.failed("reading"))?;
            let mut found: HashMap<Vec<u8>, Vec<u8>> = rows
                .into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            Ok(keys.iter().map(|k| found.remove(&k.0[..])).collect())
        }
        .boxed()
    }

    fn put_many(&self, entries: Vec<(Key, Vec<u8>)>) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            // One row per key (the last value wins): `ON CONFLICT` may not touch a row twice.
            let mut last: HashMap<[u8; 32], Vec<u8>> = HashMap::with_capacity(entries.len());
            for (k, v) in entries {
                last.insert(k.0, v);
            }
            let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
                last.into_iter().map(|(k, v)| (k.to_vec(), v)).unzip();
            let ttl = self.ttl.map(|t| t.as_secs_f64());
            let mut client = self.client("writing").await?;
            let tx = client.transaction().await.map_err(self.failed("writing"))?;
            if self.max_entries.is_some() {
                // Writers of one namespace take turns, so that each one's bound counts the
                // rows the others wrote (concurrent transactions would not see them).
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&BOUND_LOCK, &self.namespace],
                )
                .await
                .map_err(self.failed("writing"))?;
            }
            tx.execute(
                "INSERT INTO ferrobatch_cache (namespace, key, value, written_at, expires_at) \
                 SELECT $1, k, v, clock_timestamp(), \
                        clock_timestamp() + make_interval(secs => $4::float8) \
                 FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
                     written_at = excluded.written_at, expires_at = excluded.expires_at",
                &[&self.namespace, &keys, &values, &ttl],
            )
            .await
            .map_err(self.failed("writing"))?;
            if let Some(max) = self.max_entries {
                // Keep the newest `max` entries of the namespace.
                tx.execute(
                    "DELETE FROM ferrobatch_cache WHERE namespace = $1 AND key IN (\
                     SELECT key FROM ferrobatch_cache WHERE namespace = $1 \
                     ORDER BY written_at DESC, key DESC OFFSET $2)",
                    &[&self.namespace, &(max as i64)],
                )
                .await
                .map_err(self.failed("writing"))?;
            }
            if self.ttl.is_some() {
                tx.execute(
                    "DELETE FROM ferrobatch_cache WHERE namespace = $1 AND expires_at <= now()",
                    &[&self.namespace],
                )
                .await
                .map_err(self.failed("writing"))?;
            }
            tx.commit().await.map_err(self.failed("writing"))
        }
        .boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            let client = self.client("clearing").await?;
            client
                .execute(
                    "DELETE FROM ferrobatch_cache WHERE namespace = $1",
                    &[&self.namespace],
                )
                .await
                .map_err(self.failed("clearing"))
        }
        .boxed()
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            let client = self.client("counting").await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM ferrobatch_cache WHERE namespace = $1 \
                     AND (expires_at IS NULL OR expires_at > now())",
                    &[&self.namespace],
                )
                .await
                .map_err(self.failed("counting"))?;
            Ok(row.get::<_, i64>(0) as u64)
        }
        .boxed()
    }
}
