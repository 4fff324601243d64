//! `LocalLimiter`: the in-process rate budget, shared by every request that holds the same
//! limiter: requests per
//! minute and tokens per minute as token buckets, and a shared pause after a 429.
//!
//! A request asks for one request slot and its *estimated* tokens before it is sent
//! ([`LocalLimiter::try_acquire`]); when the response reports real usage the difference is
//! settled ([`LocalLimiter::settle`]). A 429 pauses every sharer until the server's time
//! ([`LocalLimiter::pause_until`]) instead of letting each request retry on its own.
//!
//! Token estimates come from [`super::estimate`]; usage from the response corrects them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{jittered, BoxFuture, RateLimit};
use crate::error::Error;

/// A token bucket refilled continuously at `capacity` per minute.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    /// `per_minute` with at most `burst` of that rate's worth at once (full at the start).
    fn new(per_minute: f64, burst: Duration, now: Instant) -> Self {
        let per_sec = per_minute / 60.0;
        let capacity = per_sec * burst.as_secs_f64();
        Bucket {
            capacity,
            per_sec,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.capacity);
        self.updated = now;
    }

    /// How long until `amount` fits. An amount above the capacity fits once the bucket is full
    /// (it then goes negative), so an oversized request is slowed, never stuck.
    fn wait_for(&self, amount: f64) -> Duration {
        let need = amount.min(self.capacity) - self.level;
        if need <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.per_sec)
        }
    }
}

#[derive(Debug)]
struct Inner {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: Option<Instant>,
}

/// Requests-per-minute and tokens-per-minute budgets and a shared 429 pause. Share one
/// instance (behind an `Arc`) between every client that draws on the same account.
#[derive(Debug)]
pub struct LocalLimiter {
    inner: Mutex<Inner>,
    /// Wakes waiting requests when a settle gives tokens back, so a refund is used at once
    /// instead of after the wait computed before it.
    refunded: tokio::sync::Notify,
}

fn per_minute(field: &'static str, v: Option<f64>) -> Result<Option<f64>, Error> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
        Some(x) => Err(Error::config(
            field,
            format!("must be None or > 0, got {x}"),
        )),
    }
}

/// The in-process default burst: a whole minute's budget at once.
pub const DEFAULT_LOCAL_BURST: Duration = Duration::from_secs(60);

impl LocalLimiter {
    /// A limiter with optional requests-per-minute and tokens-per-minute budgets, and up to
    /// a minute's budget at once.
    pub fn new(
        requests_per_minute: Option<f64>,
        tokens_per_minute: Option<f64>,
    ) -> Result<Self, Error> {
        Self::with_burst(requests_per_minute, tokens_per_minute, DEFAULT_LOCAL_BURST)
    }

    /// A limiter that allows at most `burst` of its rate's worth at once.
    pub fn with_burst(
        requests_per_minute: Option<f64>,
        tokens_per_minute: Option<f64>,
        burst: Duration,
    ) -> Result<Self, Error> {
        let now = Instant::now();
        let rpm = per_minute("requests_per_minute", requests_per_minute)?;
        let tpm = per_minute("tokens_per_minute", tokens_per_minute)?;
        if burst.is_zero() {
            return Err(Error::config("burst", "must be seconds > 0"));
        }
        Ok(LocalLimiter {
            inner: Mutex::new(Inner {
                requests: rpm.map(|r| Bucket::new(r, burst, now)),
                tokens: tpm.map(|t| Bucket::new(t, burst, now)),
                paused_until: None,
            }),
            refunded: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one request and `tokens` from the budget now, or say how long to wait first
    /// (nothing is taken then; ask again after the wait).
    pub fn try_acquire(&self, tokens: u64, now: Instant) -> Result<(), Duration> {
        let mut g = self.lock();
        let paused = g
            .paused_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let inner = &mut *g;
        for b in [&mut inner.requests, &mut inner.tokens]
            .into_iter()
            .flatten()
        {
            b.refill(now);
        }
        let wait_req = inner
            .requests
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(1.0));
        let wait_tok = inner
            .tokens
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(tokens as f64));
        let wait = paused.max(wait_req).max(wait_tok);
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = inner.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = inner.tokens.as_mut() {
            b.level -= tokens as f64;
        }
        Ok(())
    }

    /// Correct a request's estimate with the usage the response reported: refund what was
    /// over-estimated, charge what was under.
    pub fn settle(&self, estimated: u64, actual: u64, now: Instant) {
        let mut g = self.lock();
        if let Some(b) = g.tokens.as_mut() {
            b.refill(now);
            b.level = (b.level + estimated as f64 - actual as f64).min(b.capacity);
        }
    }

    /// A 429 said to wait until `until`: every request sharing this limiter waits too.
    pub fn pause_until(&self, until: Instant) {
        let mut g = self.lock();
        if g.paused_until.is_none_or(|t| t < until) {
            g.paused_until = Some(until);
        }
    }
}

impl RateLimit for LocalLimiter {
    fn acquire(&self, tokens: u64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            loop {
                let refunded = self.refunded.notified();
                tokio::pin!(refunded);
                refunded.as_mut().enable();
                match self.try_acquire(tokens, Instant::now()) {
                    Ok(()) => return Ok(()),
                    Err(wait) => tokio::select! {
                        _ = tokio::time::sleep(jittered(wait)) => {}
                        _ = refunded => {}
                    },
                }
            }
        })
    }

    fn settle(&self, estimated: u64, actual: u64) {
        LocalLimiter::settle(self, estimated, actual, Instant::now());
        if actual < estimated {
            self.refunded.notify_waiters();
        }
    }

    fn pause(&self, pause: Duration) -> BoxFuture<'_, ()> {
        self.pause_until(Instant::now() + pause);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn requests_per_minute_spaces_requests_once_the_burst_is_spent() {
        let l = LocalLimiter::new(Some(60.0), None).unwrap();
        let t0 = Instant::now();
        for _ in 0..60 {
            l.try_acquire(0, t0).unwrap();
        }
        let wait = l.try_acquire(0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert!(l.try_acquire(0, t0 + secs(0.5)).is_err());
        l.try_acquire(0, t0 + secs(1.0)).unwrap();
    }

    #[test]
    fn tokens_per_minute_limits_by_estimated_tokens() {
        let l = LocalLimiter::new(None, Some(6000.0)).unwrap();
        let t0 = Instant::now();
        l.try_acquire(5000, t0).unwrap();
        let wait = l.try_acquire(2000, t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 10.0).abs() < 1e-6,
            "1000 missing at 100/s: {wait:?}"
        );
        l.try_acquire(2000, t0 + secs(10.0)).unwrap();
    }

    #[test]
    fn an_oversized_request_waits_for_a_full_bucket_but_is_never_stuck() {
        let l = LocalLimiter::new(None, Some(600.0)).unwrap();
        let t0 = Instant::now();
        l.try_acquire(10_000, t0).unwrap(); // full bucket: goes, and drives the level negative
        let wait = l.try_acquire(10, t0).unwrap_err();
        assert!(wait > secs(60.0), "the debt is paid back first: {wait:?}");
    }

    #[test]
    fn settle_refunds_and_charges_the_difference() {
        let l = LocalLimiter::new(None, Some(6000.0)).unwrap();
        let t0 = Instant::now();
        l.try_acquire(6000, t0).unwrap();
        assert!(l.try_acquire(1000, t0).is_err());
        l.settle(6000, 5000, t0); // 1000 over-estimated
        l.try_acquire(1000, t0).unwrap();
        l.settle(1000, 1600, t0); // 600 under-estimated
        let wait = l.try_acquire(100, t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 7.0).abs() < 1e-6,
            "700 missing at 100/s: {wait:?}"
        );
    }

    #[test]
    fn a_429_pauses_every_sharer_until_the_stated_time() {
        let l = LocalLimiter::new(None, None).unwrap();
        let t0 = Instant::now();
        l.try_acquire(1, t0).unwrap();
        l.pause_until(t0 + secs(2.0));
        l.pause_until(t0 + secs(1.0)); // an earlier hint does not shorten the pause
        assert_eq!(l.try_acquire(1, t0 + secs(0.5)).unwrap_err(), secs(1.5));
        l.try_acquire(1, t0 + secs(2.0)).unwrap();
    }

    #[test]
    fn bad_budgets_name_the_field() {
        assert!(matches!(
            LocalLimiter::new(Some(0.0), None),
            Err(Error::InvalidConfig {
                field: "requests_per_minute",
                ..
            })
        ));
        assert!(matches!(
            LocalLimiter::new(None, Some(f64::NAN)),
            Err(Error::InvalidConfig {
                field: "tokens_per_minute",
                ..
            })
        ));
    }
}
