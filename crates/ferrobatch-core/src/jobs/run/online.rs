//! The online route of a [`Runner`]: claim → send → record. A job's requests are claimed in
//! groups (at most `window` unanswered), sent through the endpoint (at most `concurrency` at
//! once over all jobs), and each outcome handed to the runner's recorder.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{sleep, sleep_until, Instant};

use super::runner::{
    Pending, Route, Runner, RunnerConfig, Sending, Tracker, STATUS_EVERY, STOP_GRACE,
};
use crate::error::Error;
use crate::jobs::endpoint::Endpoint;
use crate::jobs::model::{Finished, JobStatus};
use crate::jobs::store::Store;

/// Jobs sent online, request by request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Online;

impl Runner {
    /// A runner that sends jobs online through `endpoint`.
    pub fn new(
        store: Arc<dyn Store>,
        endpoint: Endpoint,
        config: RunnerConfig,
        host: String,
    ) -> Result<Arc<Runner>, Error> {
        Runner::with_route(store, endpoint, Arc::new(Online), config, host)
    }
}

impl Route for Online {
    fn run<'a>(
        &'a self,
        runner: &'a Arc<Runner>,
        job_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<JobStatus, Error>> + Send + 'a>>
    {
        Box::pin(Online::run_job(runner, job_id))
    }
}

impl Online {
    async fn run_job(runner: &Arc<Runner>, job_id: &str) -> Result<JobStatus, Error> {
        let started = runner.start().await?;
        let Some(recorder) = started
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return runner.store.job(job_id.to_string()).await.map(|j| j.status);
        };
        let mut stop = runner.stop.subscribe();
        let job = job_id.to_string();
        let me = runner.info.id.clone();
        let mut status = runner.retrying(|| runner.store.start(job.clone())).await?;
        *runner.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let tracker = Arc::new(Tracker::default());
        let mut in_flight: FuturesUnordered<Sending> = FuturesUnordered::new();
        let window = runner.config.window;
        let refill = (window / 4).max(1);
        let mut next_check = Instant::now() + STATUS_EVERY;
        // The job ended (cancelled, failed): claim nothing more, finish what is in flight.
        let mut ending = status.is_terminal();
        // The last claim found fewer requests than asked for.
        let mut exhausted = false;
        loop {
            if *stop.borrow() {
                break;
            }
            if !ending && !exhausted {
                // Outcomes waiting to be written do not count: they are bounded by the
                // recorder's queue (`flush_max`), and counting them would hold sends back
                // for a flush interval.
                let held = in_flight.len();
                let free = window.saturating_sub(held);
                if free > 0 && (free >= refill || held == 0) {
                    let claimed = runner.claim(&job, free).await?;
                    exhausted = claimed.len() < free;
                    for c in claimed {
                        in_flight.push(runner.send(c));
                    }
                }
            }
            if in_flight.is_empty() {
                tracker.drained(None).await;
                if ending {
                    break;
                }
                if exhausted {
                    // Nothing of this job is ours any more; a claim whose answer was lost
                    // (an outage) would still be marked ours: hand it back.
                    runner
                        .retrying(|| runner.store.release(job.clone(), me.clone()))
                        .await?;
                    status = runner
                        .retrying(|| runner.store.finish_if_done(job.clone()))
                        .await?;
                    if status.is_terminal() {
                        break;
                    }
                    // Other runners hold the rest; look again soon.
                    let wait =
                        (runner.config.lease / 4).clamp(Duration::from_millis(20), STATUS_EVERY);
                    tokio::select! {
                        _ = sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                    exhausted = false;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                Some((claimed, result)) = in_flight.next() => {
                    let outcome = runner.outcome(&job, result, &mut ending).await;
                    tracker.unrecorded.fetch_add(1, Ordering::AcqRel);
                    let pending = Pending {
                        done: Finished {
                            job_id: claimed.job_id,
                            seq: claimed.seq,
                            attempt: claimed.attempt,
                            outcome,
                        },
                        tracker: Arc::clone(&tracker),
                    };
                    if recorder.send(pending).await.is_err() {
                        tracker.unrecorded.fetch_sub(1, Ordering::AcqRel);
                        break;
                    }
                }
                _ = sleep_until(next_check) => {
                    next_check = Instant::now() + STATUS_EVERY;
                    exhausted = false;
                    match runner.store.job(job.clone()).await {
                        Ok(j) => {
                            status = j.status;
                            ending |= status.is_terminal();
                        }
                        Err(e @ Error::JobNotFound { .. }) => return Err(e),
                        Err(_) => {} // an outage: the next look will tell
                    }
                }
            }
        }
        // Stopping (or done): what is still in flight is abandoned and handed back.
        drop(in_flight);
        tracker.drained(Some(Instant::now() + STOP_GRACE)).await;
        if *stop.borrow() {
            let _ = runner.store.release(job.clone(), me).await;
            if status == JobStatus::Cancelled {
                // Handed back into a cancelled job: they will never be sent.
                let _ = runner.store.cancel(job.clone()).await;
            }
        }
        match runner.store.job(job).await {
            Ok(j) => Ok(j.status),
            Err(_) => Ok(status),
        }
    }
}
