//! The batch-API route of a [`Runner`]: a job's requests go to the provider's own batch API
//! (half price, within 24 h) in provider batches, each provider batch one provider batch.
//!
//! Each step of a provider batch is written to the store before the network call that follows it:
//! planned (requests set aside) → upload (OpenAI's file id written) → creating (the intent
//! written) → create → created (the batch id written) → poll → harvest → settled. A runner that
//! dies anywhere leaves a provider batch another runner (or this one, restarted) takes over once its
//! heartbeat lapses: a `creating` provider batch is first looked for in the provider's list, and only
//! created again if no batch made for it exists; so a crash between create and record does not
//! pay for a second batch.
//!
//! Harvest reads every line (output and error files, partial results of expired and cancelled
//! batches); a request with no line is retryable. Retryable outcomes go back to pending and
//! into a later provider batch until a request has had `max_attempts`; then its last error is its
//! outcome (with `fallback_online`, they are sent through the online endpoint at once, at
//! full price). OpenAI's `token_limit_exceeded` hands the provider batch back and holds new provider batches off
//! for a while. Costs are counted at batch prices from the usage each line reports, once: a provider batch
//! is settled once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{sleep, Instant};

use super::runner::{is_fatal, Route, Runner, RunnerConfig};
use crate::error::Error;
use crate::jobs::endpoint::{error_json, Endpoint};
use crate::jobs::model::{
    BatchLimits, Claimed, Completion, JobStatus, ProviderBatchRow, ProviderBatchState,
    ProviderBatchUpdate, Settled,
};
use crate::jobs::store::Store;
use crate::providers::batch::{
    custom_id, seq_of, BatchLine, BatchProvider, Phase, Remote, RequestOutcome,
};

/// How long new provider batches wait after a provider said its queue of enqueued tokens is full, in
/// poll intervals.
const TOKEN_LIMIT_WAIT: u32 = 5;

/// The settings and state of a runner's batch-API path.
#[derive(Debug)]
pub struct ProviderBatchRoute {
    /// The provider's batch API.
    pub api: Box<dyn BatchProvider>,
    /// How often each open batch is polled (jittered by ±20%).
    pub poll_interval: Duration,
    /// Attempts a request gets (the first included) before a retryable error is its outcome.
    pub max_attempts: i64,
    /// Most provider batches of one job open at once.
    pub max_open: usize,
    /// Send what a batch did not run (expired, cancelled, ...) through the online endpoint
    /// at once, at full price, instead of into another batch.
    pub fallback_online: bool,
    /// How large one batch may be (at most the provider's limits).
    pub limits: BatchLimits,
    /// Batches this runner asked to cancel.
    cancel_sent: Mutex<HashSet<String>>,
    /// Jobs whose new provider batches wait (token limit) until then.
    hold_until: Mutex<HashMap<String, Instant>>,
}

impl ProviderBatchRoute {
    /// The batch path over `api`; `limits` None takes the provider's.
    pub fn new(
        api: Box<dyn BatchProvider>,
        poll_interval: Duration,
        max_attempts: i64,
        max_open: usize,
        limits: Option<BatchLimits>,
    ) -> ProviderBatchRoute {
        let limits = limits.unwrap_or_else(|| api.limits());
        ProviderBatchRoute {
            api,
            poll_interval,
            max_attempts,
            max_open,
            limits,
            fallback_online: false,
            cancel_sent: Mutex::new(HashSet::new()),
            hold_until: Mutex::new(HashMap::new()),
        }
    }

    /// Refuse settings that cannot work, naming the setting.
    pub fn check(&self, endpoint: &Endpoint) -> Result<(), Error> {
        if self.poll_interval.is_zero() {
            return Err(Error::config("poll_interval", "must be seconds > 0"));
        }
        if self.max_attempts < 1 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if self.max_open == 0 {
            return Err(Error::config("max_open_batches", "must be at least 1"));
        }
        let most = self.api.limits();
        if self.limits.requests == 0 || self.limits.requests > most.requests {
            return Err(Error::config(
                "batch_requests",
                format!("must be 1 to {} for {}", most.requests, self.api.name()),
            ));
        }
        if self.limits.bytes == 0 || self.limits.bytes > most.bytes {
            return Err(Error::config(
                "batch_bytes",
                format!("must be 1 to {} for {}", most.bytes, self.api.name()),
            ));
        }
        if endpoint.path() != self.api.endpoint() {
            return Err(Error::config(
                "client",
                format!(
                    "the {} batch API takes {} requests, not {}",
                    self.api.name(),
                    self.api.endpoint(),
                    endpoint.path()
                ),
            ));
        }
        Ok(())
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self, job_id: &str) -> bool {
        Self::lock(&self.hold_until)
            .get(job_id)
            .is_some_and(|t| Instant::now() < *t)
    }
}

impl Runner {
    /// A runner that sends jobs through the provider's batch API instead of `endpoint`
    /// (whose path the jobs must have).
    pub fn batched(
        store: Arc<dyn Store>,
        endpoint: Endpoint,
        batch: ProviderBatchRoute,
        config: RunnerConfig,
        host: String,
    ) -> Result<Arc<Runner>, Error> {
        batch.check(&endpoint)?;
        Runner::with_route(store, endpoint, Arc::new(batch), config, host)
    }
}

impl Route for ProviderBatchRoute {
    fn run<'a>(
        &'a self,
        runner: &'a Arc<Runner>,
        job_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<JobStatus, Error>> + Send + 'a>>
    {
        Box::pin(async move {
            BatchRun {
                runner,
                batch: self,
            }
            .run(job_id)
            .await
        })
    }
}

/// One job's run along the batch-API route.
struct BatchRun<'a> {
    runner: &'a Arc<Runner>,
    batch: &'a ProviderBatchRoute,
}

impl BatchRun<'_> {
    /// Run one job through the provider's batch API until it ends or the runner stops.
    async fn run(&self, job_id: &str) -> Result<JobStatus, Error> {
        self.runner.start().await?;
        let b = self.batch;
        let job = job_id.to_string();
        let status = self
            .runner
            .retrying(|| self.runner.store.start(job.clone()))
            .await?;
        if matches!(status, JobStatus::Completed | JobStatus::Failed) {
            return Ok(status);
        }
        let mut stop = self.runner.stop.subscribe();
        let mut failing_since: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            match self.batch_step(&job).await {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {
                    failing_since = None;
                    self.runner.store_up();
                }
                Err(e @ Error::JobNotFound { .. }) => return Err(e),
                Err(e) if is_fatal(&e) => {
                    self.runner
                        .retrying(|| self.runner.store.fail(job.clone(), e.to_string()))
                        .await?;
                    return Ok(JobStatus::Failed);
                }
                // The store is down: waited out however long it lasts (told once).
                Err(e @ Error::Store { .. }) => self.runner.store_down(&e),
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.runner.config.patience {
                        self.runner
                            .retrying(|| self.runner.store.fail(job.clone(), e.to_string()))
                            .await?;
                        return Ok(JobStatus::Failed);
                    }
                }
            }
            let wait = b.poll_interval.mul_f64(0.8 + 0.4 * fastrand::f64());
            tokio::select! {
                _ = sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        self.runner
            .retrying(|| self.runner.store.job(job.clone()))
            .await
            .map(|j| j.status)
    }

    /// One look at the job: new provider batches, then each open provider batch moved on. The job's status
    /// when it ended.
    async fn batch_step(&self, job_id: &str) -> Result<Option<JobStatus>, Error> {
        let b = self.batch;
        let me = self.runner.info.id.clone();
        let job = self.runner.store.job(job_id.to_string()).await?;
        if matches!(job.status, JobStatus::Completed | JobStatus::Failed) {
            return Ok(Some(job.status));
        }
        let cancelled = job.status == JobStatus::Cancelled;
        let mut open = self
            .runner
            .store
            .take_provider_batches(job_id.to_string(), me.clone())
            .await?;
        if !cancelled && !b.held(job_id) {
            while open.len() < b.max_open {
                let claimed = match self
                    .runner
                    .store
                    .claim_provider_batch(
                        job_id.to_string(),
                        me.clone(),
                        b.api.name().to_string(),
                        b.limits,
                    )
                    .await
                {
                    // Cut off past its lease: register again, claim on the next step.
                    Err(Error::LeaseLost { .. }) => {
                        self.runner.store.register(self.runner.info.clone()).await?;
                        break;
                    }
                    other => other?,
                };
                match claimed {
                    Some((row, _)) => open.push(row),
                    None => break,
                }
            }
        }
        // One provider batch's trouble does not hold the others up; the first error is reported.
        let mut first_error = None;
        for pb in &open {
            if let Err(e) = self.advance(pb, cancelled).await {
                if is_fatal(&e) {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let status = self.runner.store.finish_if_done(job_id.to_string()).await?;
        if status == JobStatus::Cancelled {
            let left = self
                .runner
                .store
                .provider_batches(job_id.to_string())
                .await?;
            if left.iter().all(|c| c.state == ProviderBatchState::Settled) {
                return Ok(Some(status));
            }
            return Ok(None);
        }
        Ok(status.is_terminal().then_some(status))
    }

    async fn update(
        &self,
        pb: &ProviderBatchRow,
        update: ProviderBatchUpdate,
    ) -> Result<bool, Error> {
        self.runner
            .store
            .update_provider_batch(
                pb.job_id.clone(),
                pb.number,
                self.runner.info.id.clone(),
                update,
            )
            .await
    }

    /// Move one provider batch on as far as it goes now.
    async fn advance(&self, pb: &ProviderBatchRow, cancelled: bool) -> Result<(), Error> {
        let b = self.batch;
        match pb.state {
            ProviderBatchState::Planned | ProviderBatchState::Creating
                if cancelled && pb.batch_id.is_none() =>
            {
                // Nothing may exist yet; if a create was interrupted, find and cancel it.
                if pb.state == ProviderBatchState::Creating {
                    if let Some(id) = self.find(pb).await? {
                        return self.created(pb, id).await;
                    }
                }
                self.settle(pb, Vec::new()).await
            }
            ProviderBatchState::Planned => {
                let requests = self.requests_of(pb).await?;
                if requests.is_empty() {
                    return self.settle(pb, Vec::new()).await;
                }
                let mut file_id = pb.file_id.clone();
                if file_id.is_none() {
                    file_id = b
                        .api
                        .upload(&pb.job_id, pb.number, &lines(&requests))
                        .await?;
                }
                let intent = ProviderBatchUpdate {
                    state: ProviderBatchState::Creating,
                    batch_id: None,
                    file_id: file_id.clone(),
                    remote_status: None,
                };
                if !self.update(pb, intent).await? {
                    return Ok(()); // no longer ours
                }
                self.create(pb, file_id.as_deref(), &requests).await
            }
            ProviderBatchState::Creating => {
                if let Some(id) = self.find(pb).await? {
                    return self.created(pb, id).await;
                }
                let requests = self.requests_of(pb).await?;
                let mut file_id = pb.file_id.clone();
                if file_id.is_none() {
                    file_id = b
                        .api
                        .upload(&pb.job_id, pb.number, &lines(&requests))
                        .await?;
                }
                self.create(pb, file_id.as_deref(), &requests).await
            }
            ProviderBatchState::Created => {
                let id = pb.batch_id.clone().unwrap_or_default();
                let remote = b.api.get(&id).await?;
                if cancelled
                    && matches!(remote.phase, Phase::Validating | Phase::Running)
                    && ProviderBatchRoute::lock(&b.cancel_sent).insert(id.clone())
                {
                    // A failed cancel is asked again after a restart; the batch ends anyway.
                    let _ = b.api.cancel(&id).await;
                }
                let described = remote.describe();
                if pb.remote_status.as_deref() != Some(described.as_str()) {
                    let update = ProviderBatchUpdate {
                        state: ProviderBatchState::Created,
                        batch_id: None,
                        file_id: None,
                        remote_status: Some(described),
                    };
                    if !self.update(pb, update).await? {
                        return Ok(());
                    }
                }
                if remote.phase == Phase::Ended {
                    self.harvest(pb, &remote, cancelled).await?;
                }
                Ok(())
            }
            ProviderBatchState::Settled => Ok(()),
        }
    }

    async fn requests_of(&self, pb: &ProviderBatchRow) -> Result<Vec<Claimed>, Error> {
        self.runner
            .store
            .provider_batch_requests(pb.job_id.clone(), pb.number)
            .await
    }

    /// The provider's batch for a provider batch whose create call may have gone out.
    async fn find(&self, pb: &ProviderBatchRow) -> Result<Option<String>, Error> {
        let others: Vec<String> = self
            .runner
            .store
            .provider_batches(pb.job_id.clone())
            .await?
            .into_iter()
            .filter(|c| c.number != pb.number)
            .filter_map(|c| c.batch_id)
            .collect();
        self.batch
            .api
            .find(
                &pb.job_id,
                pb.number,
                pb.intent_at.unwrap_or(0.0),
                pb.requests,
                &others,
            )
            .await
    }

    async fn created(&self, pb: &ProviderBatchRow, batch_id: String) -> Result<(), Error> {
        let update = ProviderBatchUpdate {
            state: ProviderBatchState::Created,
            batch_id: Some(batch_id),
            file_id: None,
            remote_status: None,
        };
        self.update(pb, update).await.map(|_| ())
    }

    /// Send the create call. A rejection (400-class) ends the provider batch's requests with it; any
    /// other failure leaves the provider batch `creating`, to be looked for before another create.
    async fn create(
        &self,
        pb: &ProviderBatchRow,
        file_id: Option<&str>,
        requests: &[Claimed],
    ) -> Result<(), Error> {
        let b = self.batch;
        match b
            .api
            .create(&pb.job_id, pb.number, file_id, &lines(requests))
            .await
        {
            Ok(id) => self.created(pb, id).await,
            Err(e @ Error::Status { status, .. })
                if (400..500).contains(&status)
                    && !matches!(status, 401 | 403 | 404 | 408 | 409 | 429) =>
            {
                let error = error_json(&e);
                let settled = requests
                    .iter()
                    .map(|c| Settled {
                        seq: c.seq,
                        outcome: Some(failure(error.clone())),
                    })
                    .collect();
                self.settle(pb, settled).await
            }
            Err(e) => Err(e),
        }
    }

    async fn settle(&self, pb: &ProviderBatchRow, settled: Vec<Settled>) -> Result<(), Error> {
        self.runner
            .store
            .settle_provider_batch(
                pb.job_id.clone(),
                pb.number,
                self.runner.info.id.clone(),
                settled,
            )
            .await
            .map(|_| ())
    }

    /// Read every line of an ended batch and settle the provider batch.
    async fn harvest(
        &self,
        pb: &ProviderBatchRow,
        remote: &Remote,
        cancelled: bool,
    ) -> Result<(), Error> {
        let b = self.batch;
        let requests = self.requests_of(pb).await?;
        if remote.errors.iter().any(|e| e.0 == "token_limit_exceeded") {
            let until = Instant::now() + b.poll_interval * TOKEN_LIMIT_WAIT;
            ProviderBatchRoute::lock(&b.hold_until).insert(pb.job_id.clone(), until);
            return self.settle(pb, Vec::new()).await;
        }
        let mut by_seq: HashMap<i64, RequestOutcome> = b
            .api
            .results(remote)
            .await?
            .into_iter()
            .filter_map(|(id, o)| Some((seq_of(&id)?, o)))
            .collect();
        // Batch-level errors: one naming an input line is that request's; one naming none
        // is every request's without a line of its own.
        let mut whole: Option<RequestOutcome> = None;
        for (code, message, line) in &remote.errors {
            let e = Error::ProviderBatch {
                provider: b.api.provider(),
                code: code.clone(),
                message: message.clone(),
            };
            match line.and_then(|l| requests.get((l as usize).checked_sub(1)?)) {
                Some(c) => {
                    by_seq.entry(c.seq).or_insert(RequestOutcome::Permanent(e));
                }
                None => {
                    whole.get_or_insert(RequestOutcome::Retryable(e));
                }
            }
        }
        let usage = b.api.usage();
        let mut stragglers = Vec::new();
        let mut settled: Vec<Settled> = requests
            .iter()
            .filter_map(|c| {
                let outcome = by_seq
                    .remove(&c.seq)
                    .or_else(|| whole.clone())
                    .unwrap_or_else(|| {
                        RequestOutcome::Retryable(Error::ProviderBatch {
                            provider: b.api.provider(),
                            code: "missing_output".into(),
                            message: format!(
                                "batch {} ended ({}) with no output or error line for {}",
                                remote.id,
                                remote.status,
                                custom_id(c.seq)
                            ),
                        })
                    });
                let outcome = match outcome {
                    RequestOutcome::Ok {
                        body,
                        input_tokens,
                        output_tokens,
                        cached: (written, read),
                    } => Some(Completion {
                        ok: true,
                        response: Some(body.to_string()),
                        error: None,
                        input_tokens,
                        output_tokens,
                        cost: usage.cost_cached(
                            &b.api.model_of(&line(c)),
                            input_tokens.saturating_sub(written + read),
                            written,
                            read,
                            output_tokens,
                        ),
                    }),
                    RequestOutcome::Permanent(e) => Some(failure(error_json(&e))),
                    // Cancelled jobs send nothing again: these become cancelled.
                    RequestOutcome::Retryable(_) if cancelled => None,
                    // Sent online now, when the user asked for that.
                    RequestOutcome::Retryable(_) if b.fallback_online => {
                        stragglers.push(c.clone());
                        return None;
                    }
                    RequestOutcome::Retryable(e) if c.attempt >= b.max_attempts => {
                        Some(failure(error_json(&e)))
                    }
                    RequestOutcome::Retryable(_) => None,
                };
                Some(Settled {
                    seq: c.seq,
                    outcome,
                })
            })
            .collect();
        // The stragglers at full price through the online endpoint, `concurrency` at a time.
        let mut online: FuturesUnordered<_> = stragglers
            .into_iter()
            .map(|c| self.runner.send(c))
            .collect();
        while let Some((c, result)) = online.next().await {
            let outcome = match result {
                Ok(sent) => Completion::from(sent),
                Err(e) => failure(error_json(&e)),
            };
            settled.push(Settled {
                seq: c.seq,
                outcome: Some(outcome),
            });
        }
        self.settle(pb, settled).await
    }
}

fn failure(error: String) -> Completion {
    Completion {
        ok: false,
        response: None,
        error: Some(error),
        input_tokens: 0,
        output_tokens: 0,
        cost: None,
    }
}

/// A claimed request as a line of a provider batch.
fn line(c: &Claimed) -> BatchLine<'_> {
    BatchLine {
        seq: c.seq,
        id: &c.id,
        body: &c.body,
    }
}

fn lines(requests: &[Claimed]) -> Vec<BatchLine<'_>> {
    requests.iter().map(line).collect()
}
