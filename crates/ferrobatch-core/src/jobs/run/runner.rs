//! `Runner`, the runner core: works a store's jobs on the tokio runtime along its [`Route`]. It
//! registers, claims, sends through an [`Endpoint`] (at most `concurrency` at once), and hands
//! each outcome to one recorder task that writes them in groups: every `flush_interval` or
//! `flush_max` outcomes, whichever comes first (`flush_interval` zero: one write per outcome).
//!
//! A heartbeat task keeps the runner's claims alive and hands back those of runners whose
//! heartbeat lapsed. If this process dies, what is sent twice is bounded by what it had in
//! flight plus what it had not yet recorded.
//!
//! Job-level failures: an authentication, permission or not-found error fails the job (no
//! other request can succeed), and so do connection failures lasting longer than `patience`
//! with no success in between. Any other failure is that request's own outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OnceCell, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};

use crate::error::Error;
use crate::jobs::endpoint::{error_json, Endpoint, Sent};
use crate::jobs::model::{Claimed, Completion, Finished, JobStatus, RunnerInfo};
use crate::jobs::outage::{Outage, RunnerEvent, RunnerListener};
use crate::jobs::store::Store;

/// How often a runner looks at its jobs' status (for a cancel from elsewhere).
pub(super) const STATUS_EVERY: Duration = Duration::from_millis(250);
/// How long a stopping runner waits for its last outcomes to be written.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(30);

/// A runner's settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How long this runner's claims outlive its last heartbeat (heartbeats go every third).
    pub lease: Duration,
    /// Most requests of one job claimed and not yet answered (outcomes waiting to be written
    /// are bounded by `flush_max` on top).
    pub window: usize,
    /// Most requests in flight at once, over all jobs.
    pub concurrency: usize,
    /// Longest an outcome waits before it is written; zero writes each one on its own.
    pub flush_interval: Duration,
    /// Most outcomes in one write.
    pub flush_max: usize,
    /// How long connection failures to the server may last before the job fails (store
    /// outages are waited out however long they last).
    pub patience: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            lease: Duration::from_secs(60),
            window: 1024,
            concurrency: 256,
            flush_interval: Duration::from_millis(100),
            flush_max: 1000,
            patience: Duration::from_secs(300),
        }
    }
}

impl RunnerConfig {
    /// Refuse settings that cannot work, naming the setting.
    pub fn check(&self) -> Result<(), Error> {
        if self.lease.is_zero() {
            return Err(Error::config("lease_seconds", "must be > 0"));
        }
        if self.window == 0 {
            return Err(Error::config("window", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(Error::config("concurrency", "must be at least 1"));
        }
        if self.flush_max == 0 {
            return Err(Error::config("flush_max", "must be at least 1"));
        }
        Ok(())
    }
}

/// Outcomes of one job handed to the recorder and not yet written.
#[derive(Default)]
pub(super) struct Tracker {
    pub(super) unrecorded: AtomicUsize,
    written: Notify,
}

impl Tracker {
    pub(super) fn held(&self) -> usize {
        self.unrecorded.load(Ordering::Acquire)
    }

    /// Until every outcome handed over is written (or given up on), or `deadline`.
    pub(super) async fn drained(&self, deadline: Option<Instant>) {
        loop {
            let written = self.written.notified();
            if self.held() == 0 {
                return;
            }
            match deadline {
                Some(d) => {
                    if timeout_at(d, written).await.is_err() {
                        return;
                    }
                }
                None => written.await,
            }
        }
    }
}

pub(super) struct Pending {
    pub(super) done: Finished,
    pub(super) tracker: Arc<Tracker>,
}

pub(super) struct Started {
    pub(super) recorder: Mutex<Option<mpsc::Sender<Pending>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub(super) type Sending = Pin<Box<dyn Future<Output = (Claimed, Result<Sent, Error>)> + Send>>;

/// How a runner takes a job: online ([`super::online`]) or through the provider's batch API
/// ([`super::provider_batch`]). The runner core (registration, heartbeats, the recorder,
/// outages, claims and sends) is the same for both.
pub trait Route: Send + Sync + std::fmt::Debug + 'static {
    /// Run one job on `runner` until it is completed, failed or cancelled, or the runner
    /// stops; its status then.
    fn run<'a>(
        &'a self,
        runner: &'a Arc<Runner>,
        job_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<JobStatus, Error>> + Send + 'a>>;
}

/// Works jobs of one store through one endpoint, along one [`Route`].
pub struct Runner {
    pub(super) store: Arc<dyn Store>,
    endpoint: Endpoint,
    route: Arc<dyn Route>,
    pub(super) info: RunnerInfo,
    pub(super) config: RunnerConfig,
    sends: Arc<Semaphore>,
    pub(super) stop: watch::Sender<bool>,
    started: OnceCell<Started>,
    active: AtomicUsize,
    idle: Notify,
    pub(super) last_ok: Mutex<Instant>,
    outage: Arc<Outage>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("id", &self.info.id)
            .field("store", &self.store.engine())
            .field("endpoint", &self.endpoint.path())
            .finish()
    }
}

pub(super) fn is_fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::Status {
            status: 401 | 403 | 404,
            ..
        }
    )
}

fn is_connection(e: &Error) -> bool {
    matches!(e, Error::Connection { .. } | Error::Timeout { .. })
}

impl Runner {
    /// A runner with a fresh id taking jobs along `route`; it registers with the store on
    /// its first job.
    pub(super) fn with_route(
        store: Arc<dyn Store>,
        endpoint: Endpoint,
        route: Arc<dyn Route>,
        config: RunnerConfig,
        host: String,
    ) -> Result<Arc<Runner>, Error> {
        config.check()?;
        let id = format!("runner_{:016x}", fastrand::u64(..));
        let info = RunnerInfo {
            id,
            host: crate::jobs::host::identity(&host),
            pid: std::process::id(),
            lease: config.lease,
        };
        Ok(Arc::new(Runner {
            store,
            endpoint,
            route,
            info,
            sends: Arc::new(Semaphore::new(config.concurrency)),
            config,
            stop: watch::channel(false).0,
            started: OnceCell::new(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            last_ok: Mutex::new(Instant::now()),
            outage: Arc::default(),
        }))
    }

    /// Tell `listener` what happens (a takeover, store outages); the first one set stays.
    pub fn listen(&self, listener: RunnerListener) {
        self.outage.listen(listener);
    }

    /// Note a store outage seen outside `retrying` (told once per outage).
    pub(super) fn store_down(&self, e: &Error) {
        self.outage.down(e);
    }

    /// The store answers again (told when it ends an outage).
    pub(super) fn store_up(&self) {
        self.outage.up();
    }

    /// This runner's id in the store.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Whether `stop` was called.
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(super) async fn start(self: &Arc<Self>) -> Result<&Started, Error> {
        self.started
            .get_or_try_init(|| async {
                self.retrying(|| self.store.register(self.info.clone()))
                    .await?;
                self.take_over_the_dead().await?;
                let (tx, rx) = mpsc::channel(self.config.flush_max);
                let recorder = tokio::spawn(record_loop(
                    Arc::clone(&self.store),
                    self.info.id.clone(),
                    rx,
                    self.config.flush_interval,
                    self.config.flush_max,
                    self.stop.subscribe(),
                    Arc::clone(&self.outage),
                ));
                let heart = tokio::spawn(heartbeat_loop(
                    Arc::clone(&self.store),
                    self.info.clone(),
                    self.stop.subscribe(),
                ));
                Ok(Started {
                    recorder: Mutex::new(Some(tx)),
                    tasks: Mutex::new(vec![recorder, heart]),
                })
            })
            .await
    }

    /// Remove the runners registered from this machine in this boot whose process is gone
    /// (a `kill -9`, a crash), handing their requests back at once instead of after their
    /// lease; each one is told.
    async fn take_over_the_dead(&self) -> Result<(), Error> {
        let runners = self.retrying(|| self.store.runners()).await?;
        for r in runners {
            if r.id != self.info.id
                && crate::jobs::host::is_this_boot(&r.host)
                && crate::jobs::host::is_gone(r.pid)
            {
                let requests = self
                    .retrying(|| self.store.unregister(r.id.clone()))
                    .await?;
                self.outage.tell(RunnerEvent::TookOver {
                    runner: r.id,
                    pid: r.pid,
                    requests,
                });
            }
        }
        Ok(())
    }

    /// Retry a store call through outages (a restarted database, a refused connection, a
    /// failover) with backoff for as long as they last, until `stop`; the outage is told
    /// once when it begins and once when it ends.
    pub(super) async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.outage
            .wait_out(call, &mut self.stop.subscribe(), Duration::ZERO)
            .await
    }

    /// Claim up to `limit` pending requests of the job. A runner whose registration lapsed
    /// (cut off from the store for longer than its lease, its requests handed to others)
    /// registers again first: the store refuses claims of a runner without a live lease.
    pub(super) async fn claim(&self, job: &str, limit: usize) -> Result<Vec<Claimed>, Error> {
        loop {
            let me = self.info.id.clone();
            match self
                .retrying(|| self.store.claim(job.to_string(), me.clone(), limit))
                .await
            {
                Err(Error::LeaseLost { .. }) => {
                    self.retrying(|| self.store.register(self.info.clone()))
                        .await?;
                }
                other => return other,
            }
        }
    }

    /// Run one job until it is completed, failed or cancelled, or until `stop`; its status
    /// then. Requests other runners hold are waited for.
    pub async fn run_job(self: &Arc<Self>, job_id: &str) -> Result<JobStatus, Error> {
        self.active.fetch_add(1, Ordering::AcqRel);
        let route = Arc::clone(&self.route);
        let out = route.run(self, job_id).await;
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
        out
    }

    pub(super) fn send(&self, claimed: Claimed) -> Sending {
        let sends = Arc::clone(&self.sends);
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let result = match sends.acquire_owned().await {
                Ok(_permit) => endpoint.send(&claimed.body).await,
                Err(_) => Err(Error::Stopped {
                    reason: crate::error::StopReason::NotAccepting,
                }),
            };
            (claimed, result)
        })
    }

    /// A request's outcome; fails the job on a job-level error.
    pub(super) async fn outcome(
        &self,
        job: &str,
        result: Result<Sent, Error>,
        ending: &mut bool,
    ) -> Completion {
        let e = match result {
            Ok(sent) => {
                *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                return Completion::from(sent);
            }
            Err(e) => e,
        };
        let reason = if is_fatal(&e) {
            Some(format!("{}: {e}", e.type_name()))
        } else if is_connection(&e)
            && self
                .last_ok
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                > self.config.patience
        {
            Some(format!(
                "the server was unreachable for more than {}s: {e}",
                self.config.patience.as_secs_f64()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            *ending = true;
            let _ = self
                .retrying(|| self.store.fail(job.to_string(), reason.clone()))
                .await;
        }
        Completion {
            ok: false,
            response: None,
            error: Some(error_json(&e)),
            input_tokens: 0,
            output_tokens: 0,
            cost: None,
        }
    }

    /// The OpenAI Batch API `url` of the jobs this runner sends.
    pub fn endpoint_path(&self) -> &'static str {
        self.endpoint.path()
    }

    /// Stop: no more claims; what is in flight is abandoned, what is done is written, and
    /// every request this runner holds goes back to pending for other runners.
    pub async fn stop(&self) -> Result<(), Error> {
        self.stop.send_replace(true);
        loop {
            let idle = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        let Some(started) = self.started.get() else {
            return Ok(());
        };
        let recorder = started
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(recorder);
        let tasks = std::mem::take(&mut *started.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        self.store
            .unregister(self.info.id.clone())
            .await
            .map(|_| ())
    }
}

async fn heartbeat_loop(store: Arc<dyn Store>, info: RunnerInfo, mut stop: watch::Receiver<bool>) {
    let every = (info.lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match store.heartbeat(info.id.clone()).await {
            Ok(true) => {}
            // Taken over while this runner stalled: its claims are gone (their outcomes will
            // be refused); carry on as a fresh registration.
            Ok(false) => {
                let _ = store.register(info.clone()).await;
            }
            Err(_) => {} // the store is unreachable: beat again next time
        }
    }
}

async fn record_loop(
    store: Arc<dyn Store>,
    runner: String,
    mut rx: mpsc::Receiver<Pending>,
    interval: Duration,
    max: usize,
    mut stop: watch::Receiver<bool>,
    outage: Arc<Outage>,
) {
    let mut buf: Vec<Pending> = Vec::with_capacity(max);
    loop {
        match rx.recv().await {
            Some(p) => buf.push(p),
            None => return,
        }
        if !interval.is_zero() {
            let deadline = Instant::now() + interval;
            while buf.len() < max {
                match timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => buf.push(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // Written through outages however long they last (a repeated write is harmless: the
        // fence refuses what was already written). A stopping runner gives up after
        // `STOP_GRACE`: those requests stay claimed by it and go back to pending when its
        // registration is removed.
        let trackers: Vec<Arc<Tracker>> = buf.iter().map(|p| Arc::clone(&p.tracker)).collect();
        let done: Arc<Vec<Finished>> = Arc::new(buf.drain(..).map(|p| p.done).collect());
        let _ = outage
            .wait_out(
                || store.record(runner.clone(), Arc::clone(&done)),
                &mut stop,
                STOP_GRACE,
            )
            .await;
        for t in trackers {
            t.unrecorded.fetch_sub(1, Ordering::AcqRel);
            t.written.notify_waiters();
        }
    }
}
