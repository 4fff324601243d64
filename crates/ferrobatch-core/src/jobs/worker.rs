//! `Worker`: the one loop that works a store's unfinished jobs as they appear, beside any
//! number of other workers on any hosts. `ferrobatch work`, `BatchManager.work()` and the
//! Python bindings all run this loop; what differs is only which runner a job goes to
//! ([`Routes`]): one manager's runner, or runners made as needed from the jobs' settings
//! ([`super::routes::JobRoutes`]).
//!
//! Store outages of any kind are waited out with backoff, told once per outage; a job's
//! own failure is told and the worker carries on; it returns only when stopped, or, with
//! `until_idle`, once no job it can run is left.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::sleep;

use super::model::{JobRow, JobStatus};
use super::outage::{Outage, RunnerEvent, RunnerListener};
use super::run::Runner;
use super::store::Store;
use crate::error::Error;

/// How often a worker looks for new jobs.
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// Which runner works a job.
pub trait Routes: Send + Sync {
    /// The runner for `job` (made the first time it is needed), or None when this worker
    /// does not run such jobs. An error (a missing key, settings no client takes) is told
    /// and the job is left to other workers.
    fn runner_for(&self, job: &JobRow) -> Result<Option<Arc<Runner>>, Error>;
    /// Every runner made so far.
    fn made(&self) -> Vec<Arc<Runner>>;
}

/// One runner for the jobs of its endpoint (a `BatchManager`'s).
#[derive(Debug)]
pub struct OneRunner(pub Arc<Runner>);

impl Routes for OneRunner {
    fn runner_for(&self, job: &JobRow) -> Result<Option<Arc<Runner>>, Error> {
        Ok((job.endpoint == self.0.endpoint_path()).then(|| Arc::clone(&self.0)))
    }

    fn made(&self) -> Vec<Arc<Runner>> {
        vec![Arc::clone(&self.0)]
    }
}

/// The loop.
pub struct Worker {
    store: Arc<dyn Store>,
    routes: Arc<dyn Routes>,
    stop: watch::Sender<bool>,
    outage: Outage,
    /// Job errors already told (job, message): each is said once.
    told: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("store", &self.store.engine())
            .finish()
    }
}

impl Worker {
    /// A worker over `store`, sending each job to the runner `routes` gives it.
    pub fn new(
        store: Arc<dyn Store>,
        routes: Arc<dyn Routes>,
        listener: Option<RunnerListener>,
    ) -> Worker {
        let outage = Outage::default();
        if let Some(l) = listener {
            outage.listen(l);
        }
        Worker {
            store,
            routes,
            stop: watch::channel(false).0,
            outage,
            told: Mutex::default(),
        }
    }

    fn tell_job_error(&self, job: &str, error: &Error) {
        let key = (job.to_string(), error.to_string());
        let new = self
            .told
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        if new {
            self.outage.tell(RunnerEvent::JobError {
                job: key.0,
                error: key.1,
            });
        }
    }

    /// How many job errors were told.
    pub fn job_errors(&self) -> usize {
        self.told.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every job of the store, waiting out outages; None once stopped.
    async fn scan(&self, stop: &mut watch::Receiver<bool>) -> Option<Vec<JobRow>> {
        if *stop.borrow() {
            return None;
        }
        self.outage
            .wait_out(|| self.store.jobs(), stop, Duration::ZERO)
            .await
            .ok()
    }

    /// Run unfinished jobs (all, or those in `only`) as they appear, each concurrently:
    /// with `until_idle`, until none this worker can run is left; otherwise until `stop`.
    pub async fn work(&self, only: Option<Vec<String>>, until_idle: bool) -> Result<(), Error> {
        let only: Option<HashSet<String>> = only.map(|v| v.into_iter().collect());
        let mut stop = self.stop.subscribe();
        let mut running: JoinSet<(String, Result<JobStatus, Error>)> = JoinSet::new();
        let mut active: HashMap<String, ()> = HashMap::new();
        loop {
            let Some(jobs) = self.scan(&mut stop).await else {
                break;
            };
            for j in jobs {
                let wanted = only.as_ref().is_none_or(|o| o.contains(&j.id));
                if !wanted || j.status.is_terminal() || active.contains_key(&j.id) {
                    continue;
                }
                let runner = match self.routes.runner_for(&j) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        self.tell_job_error(&j.id, &e);
                        continue;
                    }
                };
                active.insert(j.id.clone(), ());
                self.outage.tell(RunnerEvent::Working {
                    job: j.id.clone(),
                    runner: runner.id().to_string(),
                });
                running.spawn(async move {
                    let r = runner.run_job(&j.id).await;
                    (j.id, r)
                });
            }
            if running.is_empty() && until_idle {
                break;
            }
            let scan = sleep(SCAN_EVERY);
            tokio::pin!(scan);
            loop {
                tokio::select! {
                    _ = &mut scan => break,
                    _ = stop.changed() => break,
                    Some(done) = running.join_next() => {
                        if let Ok((id, r)) = done {
                            active.remove(&id);
                            self.ended(&id, r, *stop.borrow());
                        }
                        if running.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        while let Some(done) = running.join_next().await {
            if let Ok((id, r)) = done {
                self.ended(&id, r, true);
            }
        }
        Ok(())
    }

    /// A job's run ended: its error, if any, is told (a store error while stopping is not
    /// the job's).
    fn ended(&self, job: &str, r: Result<JobStatus, Error>, stopping: bool) {
        match r {
            Ok(_) | Err(Error::JobNotFound { .. }) => {}
            Err(Error::Store { .. }) if stopping => {}
            Err(e) => self.tell_job_error(job, &e),
        }
    }

    /// Stop: every runner made stops (what is done is written, what it holds is handed
    /// back) and `work` returns.
    pub async fn stop(&self) -> Result<(), Error> {
        self.stop.send_replace(true);
        let mut first = Ok(());
        for r in self.routes.made() {
            if let Err(e) = r.stop().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
