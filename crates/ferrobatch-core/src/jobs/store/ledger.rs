//! The ledger both engines keep the same way: a job's counters ([`Tally`]: what outcomes add to
//! them), its progress (what they say), and the plan of settling a provider batch ([`settle`]:
//! the steps in their one order). Each engine only has its SQL for the steps.

use crate::error::Error;
use crate::jobs::model::{Completion, Progress, Settled};

/// What recorded outcomes add to a job's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Tally {
    pub succeeded: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// `None` while no outcome had a cost (the job's cost stays unknown, not 0).
    pub cost: Option<f64>,
}

impl Tally {
    /// Count one recorded outcome.
    pub fn add(&mut self, o: &Completion) {
        if o.ok {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        self.input_tokens += o.input_tokens as i64;
        self.output_tokens += o.output_tokens as i64;
        if let Some(c) = o.cost {
            self.cost = Some(self.cost.unwrap_or(0.0) + c);
        }
    }

    /// Outcomes counted.
    pub fn recorded(&self) -> u64 {
        (self.succeeded + self.failed) as u64
    }
}

/// Progress from a job's counters: total, succeeded, failed, cancelled, input and output
/// tokens, cost, and how many requests are running now.
pub(super) fn progress_of(row: (i64, i64, i64, i64, i64, i64, Option<f64>, i64)) -> Progress {
    let (total, succeeded, failed, cancelled, input, output, cost, running) = row;
    let u = |v: i64| v.max(0) as u64;
    Progress {
        total: u(total),
        pending: u(total - succeeded - failed - cancelled - running),
        running: u(running),
        succeeded: u(succeeded),
        failed: u(failed),
        cancelled: u(cancelled),
        input_tokens: u(input),
        output_tokens: u(output),
        cost,
    }
}

/// The steps of settling one provider batch, each an engine's SQL inside one transaction.
pub(super) trait SettleSteps {
    /// Mark the batch settled if this runner owns it and it is not settled yet.
    async fn take_batch(&mut self) -> Result<bool, Error>;
    /// Whether the job is cancelled (PostgreSQL locks its row here, against a cancel).
    async fn job_cancelled(&mut self) -> Result<bool, Error>;
    /// Record one request's outcome if it is still set aside in this batch.
    async fn record(&mut self, seq: i64, outcome: &Completion) -> Result<bool, Error>;
    /// Hand the batch's other requests back: pending, or cancelled with the job; how many.
    async fn hand_back(&mut self, cancelled: bool) -> Result<i64, Error>;
    /// Add to the job's counters.
    async fn count(&mut self, tally: &Tally, cancelled: i64) -> Result<(), Error>;
}

/// Settle a provider batch: the batch taken once, each outcome recorded fenced by the batch,
/// the rest handed back, the job's counters bumped. Returns how many outcomes were recorded
/// (0 when the batch was not this runner's to settle).
pub(super) async fn settle(
    steps: &mut impl SettleSteps,
    settled: &[Settled],
) -> Result<u64, Error> {
    if !steps.take_batch().await? {
        return Ok(0);
    }
    let cancelled = steps.job_cancelled().await?;
    let mut tally = Tally::default();
    for s in settled {
        let Some(o) = &s.outcome else { continue };
        if steps.record(s.seq, o).await? {
            tally.add(o);
        }
    }
    let back = steps.hand_back(cancelled).await?;
    steps
        .count(&tally, if cancelled { back } else { 0 })
        .await?;
    Ok(tally.recorded())
}
