//! `RedisLimiter`: one requests-per-minute and tokens-per-minute budget in Redis, shared by
//! every process and host that names the same bucket.
//!
//! GCRA (one "theoretical arrival time" per bucket) in one Lua script: requests and tokens are
//! checked and charged together, all or nothing, on Redis's own clock (`TIME`); keys expire by
//! themselves. A refused caller sleeps the wait the script returns (plus jitter) and asks
//! again; a process's waiters queue behind one head of line, so an admission costs one round
//! trip (two when it had to wait), however many requests wait. Token estimates are settled by a
//! signed delta carried on the next call; a 429 pushes both buckets past its retry time, so
//! that nothing is admitted before it and admissions after it are paced.
//!
//! Each call also marks the process live in a sorted set. When Redis cannot be reached the
//! default policy falls back to an in-process limit of `limit / live processes` (never the
//! full limit per process), and goes back to Redis once it answers again (probed at most once
//! a second); the other policy fails the request with [`Error::RateLimiterUnavailable`].

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::LocalLimiter;
use super::{jittered, BoxFuture, RateLimit};
use crate::error::Error;

/// The GCRA script. KEYS: the requests TAT, the tokens TAT, the live-process set. ARGV: mode
/// (`acquire` or `pause`), µs per request (0: no request limit), µs per token (0: none), burst
/// in µs, the request's tokens, a token delta to settle first, the pause in µs, this process's
/// member name, the live window in µs. Returns `{wait_us, live_processes}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local req_T, tok_T, tau = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n, delta, pause = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local window = tonumber(ARGV[9])
local function get(k)
  local v = redis.call('GET', k)
  if v then return tonumber(v) end
  return now
end
local function put(k, tat)
  if tat > now then
    redis.call('SET', k, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', k)
  end
end
local req, tok = get(KEYS[1]), get(KEYS[2])
redis.call('ZADD', KEYS[3], now, ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
redis.call('PEXPIRE', KEYS[3], math.ceil(window / 1000) * 2)
local live = redis.call('ZCARD', KEYS[3])
if delta ~= 0 and tok_T > 0 then
  tok = math.max(math.max(tok, now) + delta * tok_T, now)
end
if ARGV[1] == 'pause' then
  req = math.max(req, now + pause + tau - req_T)
  if tok_T > 0 then tok = math.max(tok, now + pause + tau - tok_T) end
  put(KEYS[1], req)
  put(KEYS[2], tok)
  return {0, live}
end
-- The wait before `cost` fits; a cost over the burst fits once the bucket is full.
local function need(tat, cost)
  return math.max(tat, now) + math.min(cost, tau) - tau - now
end
local wait = need(req, req_T)
if tok_T > 0 then wait = math.max(wait, need(tok, n * tok_T)) end
if wait > 0 then
  put(KEYS[2], tok)
  return {math.ceil(wait), live}
end
put(KEYS[1], math.max(req, now) + req_T)
if tok_T > 0 then put(KEYS[2], math.max(tok, now) + n * tok_T) end
return {0, live}
";

/// How long a process counts as live after its last call.
const LIVE_WINDOW: Duration = Duration::from_secs(60);
/// While Redis is unreachable, how often it is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What to do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnRedisError {
    /// Limit in process to `limit / live processes` (counted through Redis while it was up).
    Local,
    /// Fail the request with [`Error::RateLimiterUnavailable`].
    Fail,
}

/// A change of the limiter's state worth a log line.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LimiterEvent {
    /// Redis stopped answering; requests are limited in process to this share of the limits.
    FellBack {
        /// Why (the Redis error, without credentials).
        reason: String,
        /// The live processes the limits are divided by.
        live: u64,
    },
    /// Redis answers again; the shared limit is back.
    Recovered,
}

/// Everything a [`RedisLimiter`] needs.
#[derive(Clone)]
pub struct RedisLimiterConfig {
    /// `redis://[:password@]host:port/db` or `rediss://...` (TLS through rustls).
    pub url: String,
    /// The shared bucket's name: every process naming it shares one budget.
    pub name: String,
    /// Requests per minute, if limited.
    pub requests_per_minute: Option<f64>,
    /// Tokens per minute, if limited.
    pub tokens_per_minute: Option<f64>,
    /// How much of the rate may go at once.
    pub burst: Duration,
    /// What to do while Redis cannot be reached.
    pub on_error: OnRedisError,
    /// The limit on one Redis round trip (and on connecting).
    pub timeout: Duration,
}

impl fmt::Debug for RedisLimiterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiterConfig")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("burst", &self.burst)
            .field("on_error", &self.on_error)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// While Redis is unreachable: the in-process stand-in and when to try Redis again.
struct Fallback {
    local: LocalLimiter,
    next_probe: Instant,
}

type Listener = Box<dyn Fn(&LimiterEvent) + Send + Sync>;

/// One budget in Redis shared by every process naming the same bucket.
pub struct RedisLimiter {
    config: RedisLimiterConfig,
    conn: ConnectionManager,
    script: Script,
    /// Set once the script is loaded, so that a first wave of callers does not each meet
    /// NOSCRIPT and load it (after a Redis restart, `invoke_async` reloads it).
    loaded: tokio::sync::OnceCell<()>,
    keys: [String; 3],
    member: String,
    req_us: f64,
    tok_us: f64,
    /// This process's waiters queue here (first come, first served), so that only the head of
    /// the line asks Redis: one round trip to be admitted, or two when it must wait first,
    /// instead of every waiter asking again at each wake-up.
    line: tokio::sync::Mutex<()>,
    /// Token corrections not yet sent (carried on the next call).
    pending: AtomicI64,
    /// Live processes, as last counted by Redis.
    live: AtomicU64,
    fallback: Mutex<Option<Fallback>>,
    listener: Listener,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("config", &self.config)
            .finish()
    }
}

fn unavailable(e: &redis::RedisError, url: &str) -> String {
    // The URL (and any password in it) never goes into a message.
    let text = e.to_string().replace(url, &redact_url(url));
    format!("Redis at {} did not answer: {text}", redact_url(url))
}

impl RedisLimiter {
    /// A limiter on the bucket `config.name`; connects lazily (call it within a tokio
    /// runtime). `listener` hears of fall-backs and recoveries.
    pub fn new(config: RedisLimiterConfig, listener: Listener) -> Result<Self, Error> {
        let rpm = positive("requests_per_minute", config.requests_per_minute)?;
        let tpm = positive("tokens_per_minute", config.tokens_per_minute)?;
        if config.name.is_empty() {
            return Err(Error::config("name", "a shared bucket needs a name"));
        }
        if config.burst.is_zero() {
            return Err(Error::config("burst", "must be seconds > 0"));
        }
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::config(
                "redis_url",
                format!(
                    "{} ({})",
                    e.detail().unwrap_or("not a Redis URL"),
                    redact_url(&config.url)
                ),
            )
        })?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| Error::config("redis_url", unavailable(&e, &config.url)))?;
        let prefix = format!("ferrobatch:rl:{{{}}}", config.name);
        Ok(RedisLimiter {
            keys: [
                format!("{prefix}:req"),
                format!("{prefix}:tok"),
                format!("{prefix}:live"),
            ],
            member: process_member(),
            req_us: rpm.map_or(0.0, |r| 60e6 / r),
            tok_us: tpm.map_or(0.0, |t| 60e6 / t),
            line: tokio::sync::Mutex::new(()),
            pending: AtomicI64::new(0),
            live: AtomicU64::new(1),
            fallback: Mutex::new(None),
            script: Script::new(GCRA),
            loaded: tokio::sync::OnceCell::new(),
            conn,
            listener,
            config,
        })
    }

    /// Live processes sharing the bucket, as last counted by Redis.
    pub fn live_processes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether requests are limited in process because Redis cannot be reached.
    pub fn degraded(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fallback>> {
        self.fallback.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One script call: `Ok(wait)` (zero when admitted or paused), or the Redis error.
    async fn call(&self, mode: &str, tokens: u64, pause: Duration) -> Result<Duration, String> {
        let mut conn = self.conn.clone();
        let loaded = self
            .loaded
            .get_or_try_init(|| async {
                let mut c = self.conn.clone();
                self.script.load_async(&mut c).await.map(|_| ())
            })
            .await;
        if let Err(e) = loaded {
            return Err(unavailable(&e, &self.config.url));
        }
        let delta = self.pending.swap(0, Ordering::Relaxed);
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv.arg(mode)
            .arg(self.req_us)
            .arg(self.tok_us)
            .arg(self.config.burst.as_micros() as u64)
            .arg(tokens)
            .arg(delta)
            .arg(pause.as_micros() as u64)
            .arg(&self.member)
            .arg(LIVE_WINDOW.as_micros() as u64);
        match inv.invoke_async::<(i64, u64)>(&mut conn).await {
            Ok((wait_us, live)) => {
                self.live.store(live.max(1), Ordering::Relaxed);
                if self.lock().take().is_some() {
                    (self.listener)(&LimiterEvent::Recovered);
                }
                Ok(Duration::from_micros(wait_us.max(0) as u64))
            }
            Err(e) => {
                // Not sent: keep the correction for the next call.
                self.pending.fetch_add(delta, Ordering::Relaxed);
                Err(unavailable(&e, &self.config.url))
            }
        }
    }

    /// The in-process stand-in, entering fall-back (and telling the listener) if needed;
    /// `None` while Redis should be tried again.
    fn local(
        &self,
        failure: Option<String>,
    ) -> Option<std::sync::MutexGuard<'_, Option<Fallback>>> {
        let mut g = self.lock();
        let now = Instant::now();
        match (g.as_mut(), failure) {
            (Some(f), Some(_)) => {
                f.next_probe = now + PROBE_EVERY;
                Some(g)
            }
            (Some(f), None) if now < f.next_probe => Some(g),
            (Some(_), None) | (None, None) => None,
            (None, Some(reason)) => {
                let live = self.live_processes();
                let share = |v: Option<f64>| v.map(|x| x / live as f64);
                let local = LocalLimiter::with_burst(
                    share(self.config.requests_per_minute),
                    share(self.config.tokens_per_minute),
                    self.config.burst,
                )
                .expect("a share of valid limits is valid");
                *g = Some(Fallback {
                    local,
                    next_probe: now + PROBE_EVERY,
                });
                (self.listener)(&LimiterEvent::FellBack { reason, live });
                Some(g)
            }
        }
    }
}

/// This process's name in the live set: its pid and a random tag drawn once per process (so
/// that several limiters on one bucket count one process, and a reused pid is another one).
fn process_member() -> String {
    static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let tag = TAG.get_or_init(|| fastrand::u64(..));
    format!("{}:{tag:016x}", std::process::id())
}

fn positive(field: &'static str, v: Option<f64>) -> Result<Option<f64>, Error> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => Err(Error::config(
            field,
            format!("must be None or > 0, got {x}"),
        )),
        other => Ok(other),
    }
}

impl RateLimit for RedisLimiter {
    fn acquire(&self, tokens: u64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let _head_of_line = self.line.lock().await;
            let mut failure = None;
            loop {
                // In fall-back: the in-process share, waking for Redis's probe if that comes
                // first. (The guard is gone before any await.)
                let local = self.local(failure.take()).map(|g| {
                    let f = g.as_ref().expect("in fall-back");
                    f.local
                        .try_acquire(tokens, Instant::now())
                        .map_err(|w| w.min(f.next_probe.saturating_duration_since(Instant::now())))
                });
                let wait = match local {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(w)) => w,
                    None => match self.call("acquire", tokens, Duration::ZERO).await {
                        Ok(w) if w.is_zero() => return Ok(()),
                        Ok(w) => w,
                        Err(reason) => {
                            if self.config.on_error == OnRedisError::Fail {
                                return Err(Error::RateLimiterUnavailable { message: reason });
                            }
                            failure = Some(reason);
                            continue;
                        }
                    },
                };
                tokio::time::sleep(jittered(wait.max(Duration::from_millis(1)))).await;
            }
        })
    }

    fn settle(&self, estimated: u64, actual: u64) {
        if let Some(f) = self.lock().as_ref() {
            f.local.settle(estimated, actual, Instant::now());
            return;
        }
        let delta = i64::try_from(actual).unwrap_or(i64::MAX)
            - i64::try_from(estimated).unwrap_or(i64::MAX);
        self.pending.fetch_add(delta, Ordering::Relaxed);
    }

    fn pause(&self, pause: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let paused_locally = self.lock().as_ref().map(|f| {
                f.local.pause_until(Instant::now() + pause);
            });
            if paused_locally.is_some() {
                return;
            }
            if self.call("pause", 0, pause).await.is_err() {
                // Redis is gone as well: at least this process pauses.
                let until = Instant::now() + pause;
                if let Some(g) = self.local(Some("Redis did not answer a pause".into())) {
                    if let Some(f) = g.as_ref() {
                        f.local.pause_until(until);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:pw@host/1"),
            "rediss://user:***@host/1"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
