//! Engine configuration and its validation from the user-facing (async-batcher compatible)
//! encoding, where `-1` means "no limit".

use std::num::NonZeroUsize;
use std::time::Duration;

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
    /// How long after its first item a partial batch waits for company.
    pub max_queue_time: Duration,
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
            max_queue_time: Duration::from_millis(10),
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

impl Config {
    /// Build a configuration from the user-facing encoding, with async-batcher's rules:
    /// `max_batch_size` is `-1` (no limit) or at least 2; `concurrency` is `-1` (no limit) or at
    /// least 1; `max_queue_size` of `-1` or `0` means no limit (as in `asyncio.Queue`);
    /// `max_queue_time` is seconds `>= 0`; `item_timeout` is seconds `> 0` or `None`.
    pub fn from_user(
        max_batch_size: i64,
        max_queue_time: f64,
        concurrency: i64,
        max_queue_size: i64,
        on_full: OnFull,
        item_timeout: Option<f64>,
    ) -> Result<Self, Error> {
        let max_batch_size = match max_batch_size {
            -1 => None,
            n if n >= 2 => Some(nonzero(n)),
            n => {
                return Err(Error::config(
                    "max_batch_size",
                    format!("must be -1 (no limit) or at least 2, got {n}"),
                ))
            }
        };
        let concurrency = match concurrency {
            -1 => None,
            n if n >= 1 => Some(nonzero(n)),
            n => {
                return Err(Error::config(
                    "concurrency",
                    format!("must be -1 (no limit) or at least 1, got {n}"),
                ))
            }
        };
        let max_queue_size = match max_queue_size {
            -1 | 0 => None,
            n if n >= 1 => Some(nonzero(n)),
            n => {
                return Err(Error::config(
                    "max_queue_size",
                    format!("must be -1 (no limit) or at least 1, got {n}"),
                ))
            }
        };
        let item_timeout = match item_timeout {
            None => None,
            Some(t) if t > 0.0 => Some(seconds("item_timeout", t)?),
            Some(t) => {
                return Err(Error::config(
                    "item_timeout",
                    format!("must be None or a number of seconds > 0, got {t}"),
                ))
            }
        };
        Ok(Config {
            max_batch_size,
            max_queue_time: seconds("max_queue_time", max_queue_time)?,
            concurrency,
            max_queue_size,
            on_full,
            item_timeout,
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
        Config::from_user(mbs, mqt, conc, mqs, OnFull::Reject, None)
    }

    #[test]
    fn async_batcher_defaults_are_accepted() {
        let c = user(-1, 0.01, 1, -1).unwrap();
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
        assert_eq!(user(-1, 0.0, 1, -1).unwrap().max_queue_time, Duration::ZERO);
        for bad in [0.0, -1.0, f64::NAN] {
            let e = Config::from_user(-1, 0.01, 1, -1, OnFull::Reject, Some(bad)).unwrap_err();
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
    fn on_full_parses_both_spellings_only() {
        assert_eq!(OnFull::parse("reject").unwrap(), OnFull::Reject);
        assert_eq!(OnFull::parse("wait").unwrap(), OnFull::Wait);
        let e = OnFull::parse("block").unwrap_err();
        assert!(e.to_string().contains("\"block\""));
    }
}
