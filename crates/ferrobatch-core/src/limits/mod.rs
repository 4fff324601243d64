//! Rate limits as the HTTP clients see them: one trait, [`RateLimit`], with two engines —
//! the in-process [`LocalLimiter`] (one process's budget) and [`RedisLimiter`]
//! (one budget shared by every process and host that names the same bucket).
//!
//! A request asks for one request slot and its estimated tokens before it is sent
//! ([`RateLimit::acquire`]), has the estimate corrected from the response's usage or refunded
//! when it fails ([`RateLimit::settle`]), and a 429 pauses every sharer ([`RateLimit::pause`]).

pub mod estimate;
pub mod local;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use self::estimate::{estimate_json_tokens, estimate_tokens};
pub use self::local::LocalLimiter;
pub use self::redis::{redact_url, LimiterEvent, OnRedisError, RedisLimiter, RedisLimiterConfig};
use crate::error::Error;

/// A boxed future, so that [`RateLimit`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A budget of requests and tokens per minute, shared by every request that holds it.
pub trait RateLimit: Send + Sync + std::fmt::Debug {
    /// Wait until one request with `tokens` estimated tokens is admitted and charged; an
    /// error only when the budget cannot be consulted and the policy says to fail.
    fn acquire(&self, tokens: u64) -> BoxFuture<'_, Result<(), Error>>;
    /// Correct an admitted request's estimate with the tokens it really used: refund what
    /// was over-estimated, charge what was under (`actual = 0` refunds the whole estimate).
    fn settle(&self, estimated: u64, actual: u64);
    /// A 429 said to wait `pause`: nothing is admitted for any sharer until then, and
    /// admissions after it are paced, not released at once.
    fn pause(&self, pause: Duration) -> BoxFuture<'_, ()>;
}

/// A wait stretched by 0–10% so that waiters do not wake in lockstep.
pub(crate) fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(1.0 + fastrand::f64() * 0.1)
}
