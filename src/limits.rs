//! `RateLimiter`: a requests-per-minute and tokens-per-minute budget shared by every client
//! that holds it — in process, or across processes and hosts in Redis (`redis_url=` and
//! `name=`). A 429 seen by any sharer pauses them all until the server's retry time.

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::limits::{
    LimiterEvent, OnRedisError, RateLimit, RedisLimiter, RedisLimiterConfig,
};
use pyo3::prelude::*;

use crate::errors::{config_error, to_pyerr};
use crate::runtime::runtime;

/// The default burst of a Redis-shared bucket, in seconds of rate.
const REDIS_BURST: f64 = 5.0;
/// The limit on one Redis round trip.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Log a limiter event on the `ferrobatch` logger (from whatever thread saw it).
fn log_event(event: &LimiterEvent, name: &str) {
    let (level, message) = match event {
        LimiterEvent::FellBack { reason, live } => (
            "warning",
            format!(
                "rate limit {name:?}: {reason}; limiting in this process to 1/{live} of the \
                 limits until Redis answers again"
            ),
        ),
        LimiterEvent::Recovered => (
            "info",
            format!("rate limit {name:?}: Redis answers again; the shared limit is back"),
        ),
        _ => return,
    };
    let _ = crate::exit::attach(|py| {
        let logger = py
            .import("logging")
            .and_then(|l| l.call_method1("getLogger", ("ferrobatch",)))?;
        let extra = pyo3::types::PyDict::new(py);
        extra.set_item("limiter", name)?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("extra", extra)?;
        logger.call_method(level, ("%s", message), Some(&kwargs))?;
        Ok::<_, PyErr>(())
    });
}

/// A requests-per-minute and tokens-per-minute budget, shareable between clients.
#[pyclass(module = "ferrobatch._native", frozen)]
pub(crate) struct RateLimiter {
    pub(crate) inner: Arc<dyn RateLimit>,
    rpm: Option<f64>,
    tpm: Option<f64>,
    redis: Option<Arc<RedisLimiter>>,
    name: Option<String>,
    shown_url: Option<String>,
    burst: f64,
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (requests_per_minute=None, tokens_per_minute=None, *, redis_url=None,
                        name=None, burst=None, on_redis_error="local"))]
    fn new(
        requests_per_minute: Option<f64>,
        tokens_per_minute: Option<f64>,
        redis_url: Option<String>,
        name: Option<String>,
        burst: Option<f64>,
        on_redis_error: &str,
    ) -> PyResult<Self> {
        let default_burst = if redis_url.is_some() {
            REDIS_BURST
        } else {
            ferrobatch_core::limits::local::DEFAULT_LOCAL_BURST.as_secs_f64()
        };
        let burst_s = burst.unwrap_or(default_burst);
        if !(burst_s.is_finite() && burst_s > 0.0) {
            return Err(config_error(
                "burst",
                format!("must be seconds > 0, got {burst_s}"),
            ));
        }
        let burst_d = Duration::from_secs_f64(burst_s);
        let on_error = match on_redis_error {
            "local" => OnRedisError::Local,
            "fail" => OnRedisError::Fail,
            other => {
                return Err(config_error(
                    "on_redis_error",
                    format!("must be 'local' or 'fail', got {other:?}"),
                ))
            }
        };
        let Some(url) = redis_url else {
            let inner = ferrobatch_core::limits::LocalLimiter::with_burst(
                requests_per_minute,
                tokens_per_minute,
                burst_d,
            )
            .map_err(to_pyerr)?;
            return Ok(RateLimiter {
                inner: Arc::new(inner),
                rpm: requests_per_minute,
                tpm: tokens_per_minute,
                redis: None,
                name,
                shown_url: None,
                burst: burst_s,
            });
        };
        let Some(bucket) = name.clone().filter(|n| !n.is_empty()) else {
            return Err(config_error(
                "name",
                "a Redis-shared limit needs name=... (the bucket every sharer names, such as \
                 'openai:text-embedding-3-small'; never the API key)",
            ));
        };
        let config = RedisLimiterConfig {
            url: url.clone(),
            name: bucket.clone(),
            requests_per_minute,
            tokens_per_minute,
            burst: burst_d,
            on_error,
            timeout: REDIS_TIMEOUT,
        };
        let rt = runtime();
        let _guard = rt.enter();
        let limiter = RedisLimiter::new(
            config,
            Box::new(move |e: &LimiterEvent| log_event(e, &bucket)),
        )
        .map_err(to_pyerr)?;
        let limiter = Arc::new(limiter);
        Ok(RateLimiter {
            inner: Arc::clone(&limiter) as Arc<dyn RateLimit>,
            rpm: requests_per_minute,
            tpm: tokens_per_minute,
            redis: Some(limiter),
            name,
            shown_url: Some(ferrobatch_core::limits::redact_url(&url)),
            burst: burst_s,
        })
    }

    #[getter]
    fn requests_per_minute(&self) -> Option<f64> {
        self.rpm
    }

    #[getter]
    fn tokens_per_minute(&self) -> Option<f64> {
        self.tpm
    }

    /// The bucket's name (None for an unnamed in-process limiter).
    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Seconds of rate allowed at once.
    #[getter]
    fn burst(&self) -> f64 {
        self.burst
    }

    /// Whether the budget is shared through Redis.
    #[getter]
    fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether Redis cannot be reached and requests are limited in this process to its share.
    #[getter]
    fn degraded(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.degraded())
    }

    /// Processes sharing the bucket, as last counted through Redis (1 in process).
    #[getter]
    fn live_processes(&self) -> u64 {
        self.redis.as_ref().map_or(1, |r| r.live_processes())
    }

    fn __repr__(&self) -> String {
        let show = |v: Option<f64>| v.map_or("None".to_string(), |x| x.to_string());
        let shared = match (&self.shown_url, &self.name) {
            (Some(url), Some(name)) => format!(", redis_url={url:?}, name={name:?}"),
            _ => String::new(),
        };
        format!(
            "RateLimiter(requests_per_minute={}, tokens_per_minute={}, burst={}{shared})",
            show(self.rpm),
            show(self.tpm),
            self.burst
        )
    }
}
