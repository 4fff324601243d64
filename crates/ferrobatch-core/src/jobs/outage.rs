//! What runners and workers tell the people running them ([`RunnerEvent`], through one
//! [`RunnerListener`]), and how they wait out a job store that does not answer: [`Outage`]
//! retries a store call with jittered backoff for as long as the outage lasts, and tells
//! its beginning and its end once each.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use crate::error::Error;

/// What a runner or worker tells (the bindings log these).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunnerEvent {
    /// A runner of this machine whose process is gone was removed at once (instead of
    /// after its lease) and its requests handed back.
    TookOver {
        /// The dead runner's id.
        runner: String,
        /// Its process id.
        pid: u32,
        /// How many requests it held.
        requests: u64,
    },
    /// The store stopped answering; it is waited out (said once per outage).
    StoreDown {
        /// The store's error.
        error: String,
    },
    /// The store answers again after an outage of `after`.
    StoreBack {
        /// How long it did not answer.
        after: Duration,
    },
    /// A worker started working a job with one of its runners.
    Working {
        /// The job.
        job: String,
        /// The runner's id in the store.
        runner: String,
    },
    /// A job's run ended with an error; a worker carries on with its other jobs and
    /// looks at this one again on its next scan.
    JobError {
        /// The job.
        job: String,
        /// What went wrong.
        error: String,
    },
}

/// Receives events, from any task.
pub type RunnerListener = Arc<dyn Fn(&RunnerEvent) + Send + Sync>;

/// First and longest pause between two tries of a store call.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// The store's outages as one runner or worker sees them, and whom it tells.
#[derive(Default)]
pub struct Outage {
    since: Mutex<Option<Instant>>,
    listener: OnceLock<RunnerListener>,
}

impl Outage {
    /// Tell `listener` from now on (the first one set stays).
    pub fn listen(&self, listener: RunnerListener) {
        let _ = self.listener.set(listener);
    }

    /// Tell the listener, if any.
    pub fn tell(&self, event: RunnerEvent) {
        if let Some(l) = self.listener.get() {
            l(&event);
        }
    }

    /// The store failed: an outage begins, unless one is going on.
    pub fn down(&self, e: &Error) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            drop(since);
            self.tell(RunnerEvent::StoreDown {
                error: e.to_string(),
            });
        }
    }

    /// The store answered: an outage going on ends.
    pub fn up(&self) {
        let began = self.since.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(began) = began {
            self.tell(RunnerEvent::StoreBack {
                after: began.elapsed(),
            });
        }
    }

    /// Run a store call until it answers (a store error is retried with jittered
    /// exponential backoff for as long as it lasts; any other result is returned), or until
    /// `grace` after `stop` turns true, when the last error is returned.
    pub async fn wait_out<T, F, Fut>(
        &self,
        call: F,
        stop: &mut watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut pause = FIRST_PAUSE;
        let mut stopped_at: Option<Instant> = None;
        loop {
            match call().await {
                Err(e @ Error::Store { .. }) => {
                    self.down(&e);
                    if *stop.borrow()
                        && stopped_at.get_or_insert_with(Instant::now).elapsed() >= grace
                    {
                        return Err(e);
                    }
                    let nap = sleep(pause.mul_f64(0.75 + 0.5 * fastrand::f64()));
                    if stopped_at.is_some() {
                        nap.await;
                    } else {
                        tokio::select! {
                            _ = nap => {}
                            _ = stop.changed() => {}
                        }
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
                other => {
                    if other.is_ok() {
                        self.up();
                    }
                    return other;
                }
            }
        }
    }
}
