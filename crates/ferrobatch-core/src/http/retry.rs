//! Which failures are retried, and how long to wait before the next attempt.
//!
//! The defaults follow the openai SDK: 2 retries, exponential backoff from 0.5 s capped at
//! 8 s, with full jitter (a uniform draw between zero and the exponential step). A server's
//! own hint — `retry-after-ms`, `retry-after` (seconds or an HTTP date), or Gemini's
//! `RetryInfo.retryDelay` — replaces the backoff when it is positive and at most
//! [`MAX_SERVER_HINT`].

use std::time::{Duration, SystemTime};

use crate::error::Error;

/// A server hint longer than this is ignored in favour of the backoff (as the openai SDK does).
pub const MAX_SERVER_HINT: Duration = Duration::from_secs(60);

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The server answered with this HTTP status.
    Status(u16),
    /// The connection could not be made or broke before a response.
    Connection,
    /// No response within the request timeout.
    Timeout,
    /// The answer was larger than the client reads; another attempt would meet the same.
    TooLarge,
    /// This status, which the server said to retry (`x-should-retry: true`).
    Retryable(u16),
    /// This status, which will not clear by waiting: the server said not to retry
    /// (`x-should-retry: false`), or a 429 for a spent quota (a monthly spend cap, no
    /// credit left) rather than a rate.
    Final(u16),
}

/// Error codes of a 429 that no wait clears: spend caps and exhausted credit (OpenAI's
/// `error.code`, Anthropic's `error.details.error_code`).
pub const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "enforced_spend_limit_reached",
];

/// How a failed status is classified: the server's `x-should-retry` first, then a 429's
/// quota code, then the status.
pub fn classify(status: u16, should_retry: Option<&str>, code: Option<&str>) -> Failure {
    match should_retry.map(str::trim) {
        Some("true") => Failure::Retryable(status),
        Some("false") => Failure::Final(status),
        _ if status == 429 && code.is_some_and(|c| QUOTA_CODES.contains(&c)) => {
            Failure::Final(status)
        }
        _ => Failure::Status(status),
    }
}

impl Failure {
    /// Whether another attempt may succeed: 408, 409, 429 and 5xx, connection errors and
    /// timeouts. Every other status (400, 401, 403, 404, 422, ...) is final.
    pub fn is_retryable(self) -> bool {
        match self {
            Failure::Status(s) => matches!(s, 408 | 409 | 429) || (500..=599).contains(&s),
            Failure::Connection | Failure::Timeout | Failure::Retryable(_) => true,
            Failure::TooLarge | Failure::Final(_) => false,
        }
    }
}

/// Retry limits and backoff shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff step.
    pub initial: Duration,
    /// The largest backoff step.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// A policy from user values; `max_retries` must be >= 0 and the steps finite and > 0.
    pub fn new(max_retries: i64, initial: f64, max: f64) -> Result<Self, Error> {
        let max_retries = u32::try_from(max_retries).map_err(|_| {
            Error::config(
                "max_retries",
                format!("must be 0 or more, got {max_retries}"),
            )
        })?;
        let step = |field: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(Error::config(
                    field,
                    format!("must be seconds > 0, got {v}"),
                ))
            }
        };
        let (initial, max) = (step("initial_backoff", initial)?, step("max_backoff", max)?);
        if max < initial {
            return Err(Error::config(
                "max_backoff",
                "must be at least initial_backoff",
            ));
        }
        Ok(RetryPolicy {
            max_retries,
            initial,
            max,
        })
    }

    /// Whether attempt number `attempt` (0 = the first) may be followed by another.
    pub fn should_retry(&self, attempt: u32, failure: Failure) -> bool {
        attempt < self.max_retries && failure.is_retryable()
    }

    /// The exponential step before retry number `retry` (0 = the first retry), before jitter.
    pub fn step(&self, retry: u32) -> Duration {
        let factor = 2f64.powi(retry.min(62) as i32);
        self.initial.mul_f64(factor).min(self.max)
    }

    /// How long to wait before retry number `retry`: the server's hint when usable, else the
    /// step scaled by `jitter`, a uniform draw in `[0, 1)` (full jitter).
    pub fn delay(&self, retry: u32, hint: Option<Duration>, jitter: f64) -> Duration {
        match hint {
            Some(h) if !h.is_zero() && h <= MAX_SERVER_HINT => h,
            _ => self.step(retry).mul_f64(jitter.clamp(0.0, 1.0)),
        }
    }
}

/// The server's retry hint from response headers: `retry-after-ms` (milliseconds), else
/// `retry-after` as seconds or as an HTTP date (relative to `now`). `header` looks a header up
/// by lower-case name.
pub fn retry_after<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = header("retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A protobuf JSON duration such as Gemini's `RetryInfo.retryDelay` (`"30s"`, `"1.5s"`).
pub fn proto_duration(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn retryable_statuses_follow_the_openai_sdk() {
        for s in [408, 409, 429, 500, 502, 503, 504, 599] {
            assert!(Failure::Status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422, 200, 301] {
            assert!(!Failure::Status(s).is_retryable(), "{s}");
        }
        assert!(Failure::Connection.is_retryable());
        assert!(Failure::Timeout.is_retryable());
        assert!(!Failure::TooLarge.is_retryable());
    }

    #[test]
    fn defaults_are_two_retries_from_half_a_second_to_eight() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(0, Failure::Status(503)));
        assert!(p.should_retry(1, Failure::Timeout));
        assert!(
            !p.should_retry(2, Failure::Status(503)),
            "two retries at most"
        );
        assert!(!p.should_retry(0, Failure::Status(401)));
        assert_eq!(p.step(0), Duration::from_millis(500));
        assert_eq!(p.step(1), Duration::from_secs(1));
        assert_eq!(p.step(4), Duration::from_secs(8));
        assert_eq!(p.step(40), Duration::from_secs(8), "capped, no overflow");
    }

    #[test]
    fn full_jitter_spans_zero_to_the_step() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(1, None, 0.5), Duration::from_millis(500));
        assert!(p.delay(1, None, 0.999_999) < Duration::from_secs(1));
        assert_eq!(
            p.delay(1, None, 7.0),
            Duration::from_secs(1),
            "clamped draw"
        );
    }

    #[test]
    fn a_usable_server_hint_replaces_the_backoff() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3)), 0.1),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(0, Some(Duration::ZERO), 0.5),
            Duration::from_millis(250)
        );
        let too_long = Some(Duration::from_secs(3600));
        assert_eq!(p.delay(0, too_long, 0.5), Duration::from_millis(250));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(
            retry_after(|k| h.get(k).copied(), now),
            Some(Duration::from_millis(1500))
        );
        let h = headers(&[("retry-after", "2.5")]);
        assert_eq!(
            retry_after(|k| h.get(k).copied(), now),
            Some(Duration::from_millis(2500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h: HashMap<&str, &str> = [("retry-after", date.as_str())].into_iter().collect();
        assert_eq!(
            retry_after(|k| h.get(k).copied(), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h: HashMap<&str, &str> = [("retry-after", past.as_str())].into_iter().collect();
        assert_eq!(
            retry_after(|k| h.get(k).copied(), now),
            Some(Duration::ZERO)
        );
        let h = headers(&[("retry-after", "soon"), ("retry-after-ms", "-4")]);
        assert_eq!(retry_after(|k| h.get(k).copied(), now), None);
        assert_eq!(retry_after(|_| None, now), None);
    }

    #[test]
    fn proto_durations_parse() {
        assert_eq!(proto_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(proto_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(proto_duration("30"), None);
        assert_eq!(proto_duration("-1s"), None);
    }

    #[test]
    fn bad_policies_name_the_field() {
        assert!(matches!(
            RetryPolicy::new(-1, 0.5, 8.0),
            Err(Error::InvalidConfig {
                field: "max_retries",
                ..
            })
        ));
        assert!(matches!(
            RetryPolicy::new(2, 0.0, 8.0),
            Err(Error::InvalidConfig {
                field: "initial_backoff",
                ..
            })
        ));
        assert!(matches!(
            RetryPolicy::new(2, 1.0, 0.5),
            Err(Error::InvalidConfig {
                field: "max_backoff",
                ..
            })
        ));
        assert_eq!(
            RetryPolicy::new(2, 0.5, 8.0).unwrap(),
            RetryPolicy::default()
        );
    }

    #[test]
    fn the_server_and_quota_codes_decide_before_the_status() {
        assert_eq!(classify(503, None, None), Failure::Status(503));
        assert!(!classify(503, Some("false"), None).is_retryable());
        assert!(classify(400, Some("true"), None).is_retryable());
        let cap = classify(429, None, Some("enforced_spend_limit_reached"));
        assert!(!cap.is_retryable());
        assert!(!classify(429, None, Some("insufficient_quota")).is_retryable());
        assert!(classify(429, None, Some("rate_limit_exceeded")).is_retryable());
    }
}
