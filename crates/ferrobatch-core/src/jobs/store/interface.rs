//! `Store`: the one interface of a job store, and what every engine checks the same way.
//!
//! The semantics every engine keeps (the same test suite runs against each):
//! - A job and all its requests are written in one transaction before `create_job` returns.
//! - A runner registers, then *claims* pending requests; a claim bumps the request's attempt
//!   number. A runner keeps its claims alive with heartbeats; when a runner's heartbeat is
//!   older than its lease, any other runner's heartbeat hands its requests back to pending
//!   (no leader, no separate reaper).
//! - Outcomes are recorded in groups, each fenced by (runner, attempt): an outcome of a claim
//!   that was lost (taken over, handed back, cancelled) is discarded, so every request ends
//!   exactly once. Outcomes go to their own insert-only table; a job's counters (done,
//!   tokens, cost) are kept on its row, so progress costs the same for any job size.
//! - Provider batches: a runner sets aside a *provider batch* of pending requests (they become
//!   `batched`, their attempt bumped, out of reach of claims and takeovers) and owns the
//!   provider batch while its heartbeat lives; each step of the provider batch (planned → creating → created →
//!   settled) is written before the network call that follows it. Settling records outcomes
//!   fenced by the provider batch (a provider batch is settled once) and hands the rest back to pending.
//! - No API key is ever written: request bodies and a job's non-secret settings only.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::Error;
use crate::jobs::model::{
    BatchLimits, Claimed, Finished, JobRow, JobStatus, NewJob, NewRequest, Progress,
    ProviderBatchRow, ProviderBatchUpdate, ResultRow, RunnerInfo, Settled,
};

/// What every store call returns: a boxed future (one allocation per call, and calls are
/// per group of requests, never per request).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A job store engine.
pub trait Store: Send + Sync + fmt::Debug {
    /// `"sqlite"` or `"postgresql"`.
    fn engine(&self) -> &'static str;
    /// The schema version of the open store.
    fn schema_version(&self) -> StoreFuture<'_, i64>;
    /// Write a job and every request in one transaction; ids must be unique.
    fn create_job(&self, job: NewJob, requests: Vec<NewRequest>) -> StoreFuture<'_, ()>;
    /// One job (`JobNotFound` for an unknown id).
    fn job(&self, job_id: String) -> StoreFuture<'_, JobRow>;
    /// Every job, oldest first.
    fn jobs(&self) -> StoreFuture<'_, Vec<JobRow>>;
    /// The newest job made from the input with this hash.
    fn find_by_input(&self, input_hash: String) -> StoreFuture<'_, Option<JobRow>>;
    /// Set a job's status (and error) unconditionally.
    fn set_status(
        &self,
        job_id: String,
        status: JobStatus,
        error: Option<String>,
    ) -> StoreFuture<'_, ()>;
    /// Move a pending job to processing; the status it has after.
    fn start(&self, job_id: String) -> StoreFuture<'_, JobStatus>;
    /// Fail a job that is not yet terminal; whether it was failed by this call.
    fn fail(&self, job_id: String, error: String) -> StoreFuture<'_, bool>;
    /// Complete a processing job with nothing pending or running; the status it has after.
    fn finish_if_done(&self, job_id: String) -> StoreFuture<'_, JobStatus>;
    /// Add a runner (or refresh it) with a fresh heartbeat.
    fn register(&self, runner: RunnerInfo) -> StoreFuture<'_, ()>;
    /// Refresh the runner's heartbeat, and hand back every request of a runner whose
    /// heartbeat lapsed (or that is gone). False when this runner itself was taken over: its
    /// claims are lost and it must register again.
    fn heartbeat(&self, runner_id: String) -> StoreFuture<'_, bool>;
    /// Every registered runner (lapsed ones included until a heartbeat removes them).
    fn runners(&self) -> StoreFuture<'_, Vec<RunnerInfo>>;
    /// Hand back the runner's requests and remove it; how many requests went back.
    fn unregister(&self, runner_id: String) -> StoreFuture<'_, u64>;
    /// Claim up to `limit` pending requests of the job, in submit order, for the runner.
    fn claim(
        &self,
        job_id: String,
        runner_id: String,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Claimed>>;
    /// Record outcomes in one transaction; only those whose claim (runner, attempt) still
    /// holds are kept. How many were kept.
    fn record(&self, runner_id: String, done: Arc<Vec<Finished>>) -> StoreFuture<'_, u64>;
    /// Hand back the runner's requests of one job (they become pending); how many.
    fn release(&self, job_id: String, runner_id: String) -> StoreFuture<'_, u64>;
    /// Cancel a job: its pending requests will never be sent; running ones may finish.
    /// How many requests were cancelled (0 for a completed or failed job).
    fn cancel(&self, job_id: String) -> StoreFuture<'_, u64>;
    /// Put failed (and, with `cancelled`, cancelled) requests back to pending; how many.
    fn reset_failed(&self, job_id: String, cancelled: bool) -> StoreFuture<'_, u64>;
    /// Counts, tokens and cost of a job.
    fn progress(&self, job_id: String) -> StoreFuture<'_, Progress>;
    /// Every request's outcome, in submit order.
    fn results(&self, job_id: String) -> StoreFuture<'_, Vec<ResultRow>>;
    /// Set aside the next pending requests of the job that fit `limits` as a new provider batch owned
    /// by the runner (state planned); None when nothing is pending.
    fn claim_provider_batch(
        &self,
        job_id: String,
        runner_id: String,
        provider: String,
        limits: BatchLimits,
    ) -> StoreFuture<'_, Option<(ProviderBatchRow, Vec<Claimed>)>>;
    /// The job's unsettled provider batches that are the runner's now: its own, and those whose owner
    /// is gone or lapsed (taken over by this call).
    fn take_provider_batches(
        &self,
        job_id: String,
        runner_id: String,
    ) -> StoreFuture<'_, Vec<ProviderBatchRow>>;
    /// Every provider batch of the job, in order.
    fn provider_batches(&self, job_id: String) -> StoreFuture<'_, Vec<ProviderBatchRow>>;
    /// The requests a provider batch holds, in submit order.
    fn provider_batch_requests(&self, job_id: String, number: i64)
        -> StoreFuture<'_, Vec<Claimed>>;
    /// Move a provider batch on (`intent_at` is set the first time it becomes creating); false when the
    /// runner no longer owns it or it is settled.
    fn update_provider_batch(
        &self,
        job_id: String,
        number: i64,
        runner_id: String,
        update: ProviderBatchUpdate,
    ) -> StoreFuture<'_, bool>;
    /// Record a provider batch's outcomes and hand back the rest (every request of the provider batch not
    /// settled with an outcome goes back to pending, or to cancelled in a cancelled job), in
    /// one transaction, once: a provider batch already settled or owned by another runner changes
    /// nothing. How many outcomes were recorded.
    fn settle_provider_batch(
        &self,
        job_id: String,
        number: i64,
        runner_id: String,
        settled: Vec<Settled>,
    ) -> StoreFuture<'_, u64>;
    /// How many of the job's requests each runner holds now (claimed, outcome not yet
    /// recorded), by runner id.
    fn held_by(&self, job_id: String) -> StoreFuture<'_, Vec<(String, u64)>>;
}

/// The schema version this code writes, one sequence for both engines (SQLite stores begin at
/// 1, PostgreSQL stores at 2); each engine's migrations end at it.
pub const SCHEMA_VERSION: i64 = 3;

/// Refuse a job whose request ids repeat, naming the first repeat.
pub(crate) fn check_unique(requests: &[NewRequest]) -> Result<(), Error> {
    let mut seen = std::collections::HashMap::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if let Some(first) = seen.insert(r.id.as_str(), i) {
            return Err(Error::DuplicateRequestId {
                id: r.id.clone(),
                index: i,
                first,
            });
        }
    }
    Ok(())
}

/// Refuse a store written by a newer ferrobatch (its schema is `version`; this code writes
/// `supported`).
pub(crate) fn check_version(version: i64, supported: i64) -> Result<(), Error> {
    if version > supported {
        return Err(Error::Store {
            operation: "migrating",
            message: format!(
                "the store has schema version {version}, newer than this ferrobatch ({supported})"
            ),
        });
    }
    Ok(())
}
