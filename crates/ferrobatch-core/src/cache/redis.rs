//! Redis as the cache's store, shared by every process and host that names it. Keys are
//! `ferrobatch:cache:<namespace hash>:<key hash>`: hashes only, no text and no credential.
//! A lookup is one `MGET`; a write is one pipeline (or, with `max_entries`, one script that
//! also keeps an index by write time and evicts the oldest).

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::backend::Backend;
use super::Key;
use crate::error::Error;
use crate::limits::redact_url;

/// Store, index and evict in one round trip: KEYS[1] is the index; ARGV: now (ms), ttl (ms,
/// 0 for none), max entries, then key/value pairs.
const PUT_BOUNDED: &str = r"
local index = KEYS[1]
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  if ttl > 0 then
    redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ttl)
  else
    redis.call('SET', ARGV[i], ARGV[i + 1])
  end
  redis.call('ZADD', index, now, ARGV[i])
end
local over = redis.call('ZCARD', index) - max
if over > 0 then
  local old = redis.call('ZPOPMIN', index, over)
  for i = 1, #old, 2 do
    redis.call('DEL', old[i])
  end
end
return 0
";

pub(crate) struct RedisStore {
    url: String,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    ttl: Option<Duration>,
    max_entries: Option<u64>,
    put_bounded: Script,
}

fn failed(url: &str, operation: &'static str, e: &redis::RedisError) -> Error {
    Error::Cache {
        operation,
        message: format!(
            "Redis at {} did not answer: {}",
            redact_url(url),
            e.to_string().replace(url, &redact_url(url))
        ),
    }
}

impl RedisStore {
    pub(crate) fn new(
        url: &str,
        namespace: &str,
        ttl: Option<Duration>,
        max_entries: Option<u64>,
    ) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url).map_err(|e| {
            Error::config(
                "location",
                format!(
                    "{} ({})",
                    e.detail().unwrap_or("not a Redis URL"),
                    redact_url(url)
                ),
            )
        })?;
        let ns: String = Sha256::digest(namespace.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(RedisStore {
            url: url.to_string(),
            client,
            conn: OnceCell::new(),
            prefix: format!("ferrobatch:cache:{ns}"),
            ttl,
            max_entries,
            put_bounded: Script::new(PUT_BOUNDED),
        })
    }

    async fn conn(&self, operation: &'static str) -> Result<ConnectionManager, Error> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| failed(&self.url, operation, &e))
            })
            .await?;
        Ok(c.clone())
    }

    fn name(&self, key: &Key) -> String {
        format!("{}:{}", self.prefix, key.hex())
    }

    fn index(&self) -> String {
        format!("{}:index", self.prefix)
    }

    async fn scan(&self, conn: &mut ConnectionManager) -> Result<Vec<String>, redis::RedisError> {
        let mut names = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            names.extend(batch);
            if next == 0 {
                return Ok(names);
            }
            cursor = next;
        }
    }
}

impl Backend for RedisStore {
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, Error>> {
        async move {
            let mut conn = self.conn("reading").await?;
            let names: Vec<String> = keys.iter().map(|k| self.name(k)).collect();
            redis::cmd("MGET")
                .arg(&names)
                .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                .await
                .map_err(|e| failed(&self.url, "reading", &e))
        }
        .boxed()
    }

    fn put_many(&self, entries: Vec<(Key, Vec<u8>)>) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            let mut conn = self.conn("writing").await?;
            let ttl_ms = self.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
            let result = match self.max_entries {
                Some(max) => {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let mut inv = self.put_bounded.prepare_invoke();
                    inv.key(self.index()).arg(now_ms).arg(ttl_ms).arg(max);
                    for (k, v) in &entries {
                        inv.arg(self.name(k)).arg(v.as_slice());
                    }
                    inv.invoke_async::<i64>(&mut conn).await.map(drop)
                }
                None => {
                    let mut pipe = redis::pipe();
                    for (k, v) in &entries {
                        let cmd = pipe.cmd("SET").arg(self.name(k)).arg(v.as_slice());
                        if ttl_ms > 0 {
                            cmd.arg("PX").arg(ttl_ms);
                        }
                        cmd.ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await
                }
            };
            result.map_err(|e| failed(&self.url, "writing", &e))
        }
        .boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            let mut conn = self.conn("clearing").await?;
            let names = self
                .scan(&mut conn)
                .await
                .map_err(|e| failed(&self.url, "clearing", &e))?;
            let mut removed = 0u64;
            for chunk in names.chunks(1000) {
                removed += redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| failed(&self.url, "clearing", &e))?;
            }
            // The index is one of the names; it is not an entry.
            Ok(removed.saturating_sub(u64::from(names.contains(&self.index()))))
        }
        .boxed()
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            let mut conn = self.conn("counting").await?;
            let names = self
                .scan(&mut conn)
                .await
                .map_err(|e| failed(&self.url, "counting", &e))?;
            let index = self.index();
            Ok(names.iter().filter(|n| **n != index).count() as u64)
        }
        .boxed()
    }
}
