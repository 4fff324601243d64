//! Engine configuration and its validation from the user-facing (async-batcher compatible)
//! encoding, where `-1` means "no limit".

use std::num::NonZeroUsize;
use std::time::Duration;

use super::policy::Window;
use crate::error::Error;

/// What `submit` does when the queue already holds `max_queue_size` items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Refuse the item with [`Error::QueueFull`].
    #[default]
    Reject,
    /// Accept the item; it waits outside the batching window until room frees.
    Wait,
}

impl OnFull {
    /// Parse the user-facing spelling (`"reject"` or `"wait"`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "reject" => Ok(OnFull::Reject),
            "wait" => Ok(OnFull::Wait),
            other => Err(Error::config(
                "on_full",
                format!("must be \"reject\" or \"wait\", got {other:?}"),
            )),
        }
    }
}

/// How the engine forms and dispatches batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Largest batch; `None` means no limit (a batch takes everything queued).
    pub max_batch_size: Option<NonZeroUsize>,
    /// How long a partial batch waits for company: a fixed time after its first item, or
    /// adaptive ([`Window::Auto`]).
    pub max_queue_time: Window,
    /// With [`Window::Auto`]: a bound on queue wait plus estimated batch duration.
    pub max_latency: Option<Duration>,
    /// An item that waited this long goes ahead of fresher items whatever their priority.
    pub aging: Option<Duration>,
    /// Most batches running at once; `None` means no limit.
    pub concurrency: Option<NonZeroUsize>,
    /// Most items queued at once; `None` means no limit.
    pub max_queue_size: Option<NonZeroUsize>,
    /// What to do with an item that arrives while the queue is full.
    pub on_full: OnFull,
    /// An item not dispatched within this time fails with [`Error::ItemTimeout`].
    pub item_timeout: Option<Duration>,
}

impl Default for Config {
    /// The defaults of the async-batcher package: no batch limit, 10 ms window, one batch at a
    /// time, unbounded queue.
    fn default() -> Self {
        Config {
            max_batch_size: None,
            max_queue_time: Window::Fixed(Duration::from_millis(10)),
            max_latency: None,
            aging: Some(DEFAULT_AGING),
            concurrency: NonZeroUsize::new(1),
            max_queue_size: None,
            on_full: OnFull::Reject,
            item_timeout: None,
        }
    }
}

fn seconds(field: &'static str, value: f64) -> Result<Duration, Error> {
    if !value.is_finite() || value < 0.0 {
        return Err(Error::config(
            field,
            format!("must be a finite number of seconds >= 0, got {value}"),
        ));
    }
    Duration::try_from_secs_f64(value)
        .map_err(|_| Error::config(field, format!("{value} seconds is too large")))
}

/// The default `aging`: an item waiting a second is served before fresher items.
pub const DEFAULT_AGING: Duration = Duration::from_secs(1);

/// The user-facing (async-batcher compatible) encoding of a [`Config`], where `-1` means "no
/// limit" and times are seconds. [`UserConfig::default`] holds async-batcher's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct UserConfig<'a> {
    /// `-1` (no limit) or at least 2 (at least 1 with `single_item_batches`).
    pub max_batch_size: i64,
    /// Seconds `>= 0`, or `None` for "auto".
    pub max_queue_time: Option<f64>,
    /// `-1` (no limit) or at least 1.
    pub concurrency: i64,
    /// `-1` or `0` (no limit, as in `asyncio.Queue`) or at least 1.
    pub max_queue_size: i64,
    /// `"reject"` or `"wait"`.
    pub on_full: &'a str,
    /// Seconds `> 0`, or `None`.
    pub item_timeout: Option<f64>,
    /// Seconds `> 0`, or `None`; only with `max_queue_time=None` ("auto").
    pub max_latency: Option<f64>,
    /// Seconds `> 0`, or `None` for no aging.
    pub aging: Option<f64>,
    /// Accept `max_batch_size=1`. async-batcher rejects it, so `AsyncBatcher` does too; a
    /// batcher whose batch function sends one request per item (chat) uses it to resolve
    /// every item on its own.
    pub single_item_batches: bool,
}

impl Default for UserConfig<'_> {
    fn default() -> Self {
        UserConfig {
            max_batch_size: -1,
            max_queue_time: Some(0.01),
            concurrency: 1,
            max_queue_size: -1,
            on_full: "reject",
            item_timeout: None,
            max_latency: None,
            aging: Some(DEFAULT_AGING.as_secs_f64()),
            single_item_batches: false,
        }
    }
}

fn positive(field: &'static str, value: Option<f64>) -> Result<Option<Duration>, Error> {
    match value {
        None => Ok(None),
        Some(t) if t > 0.0 => seconds(field, t).map(Some),
        Some(t) => Err(Error::config(
            field,
            format!("must be None or a number of seconds > 0, got {t}"),
        )),
    }
}

impl Config {
    /// Build a configuration from the user-facing encoding, with async-batcher's rules for the
    /// keywords it shares (see [`UserConfig`]).
    pub fn from_user(user: &UserConfig<'_>) -> Result<Self, Error> {
        let max_batch_size = match user.max_batch_size {
            -1 => None,
            n if n >= 2 || (n == 1 && user.single_item_batches) => Some(nonzero(n)),
            n => {
                return Err(Error::config(
                    "max_batch_size",
                    format!("must be -1 (no limit) or at least 2, got {n}"),
                ))
            }
        };
        let concurrency = match user.concurrency {
            -1 => None,
            n if n >= 1 => Some(nonzero(n)),
            n => {
                return Err(Error::config(
                    "concurrency",
                    format!("must be -1 (no limit) or at least 1, got {n}"),
                ))
            }
        };
        let max_queue_size = match user.max_queue_size {
            -1 | 0 => None,
            n if n >= 1 => Some(nonzero(n)),
            n => {
                return Err(Error::config(
                    "max_queue_size",
                    format!("must be -1 (no limit) or at least 1, got {n}"),
                ))
            }
        };
        let max_queue_time = match user.max_queue_time {
            None => Window::Auto,
            Some(t) => Window::Fixed(seconds("max_queue_time", t)?),
        };
        let max_latency = positive("max_latency", user.max_latency)?;
        if max_latency.is_some() && max_queue_time != Window::Auto {
            return Err(Error::config(
                "max_latency",
                "applies only with max_queue_time=\"auto\"",
            ));
        }
        Ok(Config {
            max_batch_size,
            max_queue_time,
            max_latency,
            aging: positive("aging", user.aging)?,
            concurrency,
            max_queue_size,
            on_full: OnFull::parse(user.on_full)?,
            item_timeout: positive("item_timeout", user.item_timeout)?,
        })
    }
}

fn nonzero(n: i64) -> NonZeroUsize {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(mbs: i64, mqt: f64, conc: i64, mqs: i64) -> Result<Config, Error> {
        Config::from_user(&UserConfig {
            max_batch_size: mbs,
            max_queue_time: Some(mqt),
            concurrency: conc,
            max_queue_size: mqs,
            ..UserConfig::default()
        })
    }

    #[test]
    fn async_batcher_defaults_are_accepted() {
        let c = Config::from_user(&UserConfig::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn batch_size_zero_and_one_are_rejected() {
        for n in [0, 1, -2] {
            let e = user(n, 0.01, 1, -1).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidConfig {
                        field: "max_batch_size",
                        ..
                    }
                ),
                "{n}"
            );
        }
        assert_eq!(
            user(2, 0.01, 1, -1).unwrap().max_batch_size,
            NonZeroUsize::new(2)
        );
    }

    #[test]
    fn concurrency_zero_is_rejected_minus_one_is_unlimited() {
        assert!(matches!(
            user(-1, 0.01, 0, -1).unwrap_err(),
            Error::InvalidConfig {
                field: "concurrency",
                ..
            }
        ));
        assert!(user(-1, 0.01, -5, -1).is_err());
        assert_eq!(user(-1, 0.01, -1, -1).unwrap().concurrency, None);
    }

    #[test]
    fn queue_size_follows_asyncio_queue() {
        assert_eq!(user(-1, 0.01, 1, 0).unwrap().max_queue_size, None);
        assert_eq!(user(-1, 0.01, 1, -1).unwrap().max_queue_size, None);
        assert_eq!(
            user(-1, 0.01, 1, 5).unwrap().max_queue_size,
            NonZeroUsize::new(5)
        );
        assert!(user(-1, 0.01, 1, -3).is_err());
    }

    #[test]
    fn times_must_be_finite_and_non_negative() {
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                user(-1, bad, 1, -1).unwrap_err(),
                Error::InvalidConfig {
                    field: "max_queue_time",
                    ..
                }
            ));
        }
        assert_eq!(
            user(-1, 0.0, 1, -1).unwrap().max_queue_time,
            Window::Fixed(Duration::ZERO)
        );
        for bad in [0.0, -1.0, f64::NAN] {
            let u = UserConfig {
                item_timeout: Some(bad),
                ..UserConfig::default()
            };
            let e = Config::from_user(&u).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidConfig {
                        field: "item_timeout",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn auto_window_and_latency_bound() {
        let u = UserConfig {
            max_queue_time: None,
            max_latency: Some(0.05),
            ..UserConfig::default()
        };
        let c = Config::from_user(&u).unwrap();
        assert_eq!(c.max_queue_time, Window::Auto);
        assert_eq!(c.max_latency, Some(Duration::from_millis(50)));
        let fixed = UserConfig {
            max_latency: Some(0.05),
            ..UserConfig::default()
        };
        let e = Config::from_user(&fixed).unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidConfig {
                field: "max_latency",
                ..
            }
        ));
        assert!(e.to_string().contains("auto"));
        let bad = UserConfig {
            max_queue_time: None,
            max_latency: Some(0.0),
            ..UserConfig::default()
        };
        assert!(Config::from_user(&bad).is_err());
    }

    #[test]
    fn aging_defaults_to_a_second_and_can_be_disabled() {
        assert_eq!(Config::default().aging, Some(Duration::from_secs(1)));
        let u = UserConfig {
            aging: None,
            ..UserConfig::default()
        };
        assert_eq!(Config::from_user(&u).unwrap().aging, None);
        let u = UserConfig {
            aging: Some(-1.0),
            ..UserConfig::default()
        };
        assert!(Config::from_user(&u).is_err());
    }

    #[test]
    fn on_full_parses_both_spellings_only() {
        assert_eq!(OnFull::parse("reject").unwrap(), OnFull::Reject);
        assert_eq!(OnFull::parse("wait").unwrap(), OnFull::Wait);
        let e = OnFull::parse("block").unwrap_err();
        assert!(e.to_string().contains("\"block\""));
    }
}
