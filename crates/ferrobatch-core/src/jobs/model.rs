//! The values a job store keeps and hands out: jobs, requests, claims, outcomes, progress.

use std::time::Duration;

pub use crate::providers::batch::BatchLimits;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Submitted, not started.
    Pending,
    /// Requests are being sent.
    Processing,
    /// Every request ended (some may carry an error).
    Completed,
    /// A job-level error stopped it (authentication, the server gone too long).
    Failed,
    /// Cancelled: pending requests were never sent.
    Cancelled,
}

impl JobStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status of a stored name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "processing" => JobStatus::Processing,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job can still change by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job to store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewJob {
    /// Its id.
    pub id: String,
    /// The user's name for it.
    pub name: Option<String>,
    /// The API path its requests go to, such as `/v1/chat/completions`.
    pub endpoint: String,
    /// Non-secret settings as JSON text (base URL, model, the name of the key's variable).
    pub settings: Option<String>,
    /// A hash of the input it came from, to find it again on a rerun.
    pub input_hash: Option<String>,
}

/// A request to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    /// The user's id, unique within the job.
    pub id: String,
    /// The request body as JSON text.
    pub body: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Its id.
    pub id: String,
    /// The user's name for it.
    pub name: Option<String>,
    /// Its state.
    pub status: JobStatus,
    /// The API path its requests go to.
    pub endpoint: String,
    /// Non-secret settings as JSON text.
    pub settings: Option<String>,
    /// A hash of the input it came from.
    pub input_hash: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How many requests it holds.
    pub total: u64,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds.
    pub updated_at: f64,
}

/// A runner (one worker process, or one `BatchManager`) as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerInfo {
    /// Its id, unique per run.
    pub id: String,
    /// The host it runs on, for people reading the table.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// How long its requests stay its own without a heartbeat.
    pub lease: Duration,
}

/// A request handed to a runner: it is the runner's until it records an outcome, hands it
/// back, or its heartbeat lapses.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Its job.
    pub job_id: String,
    /// Its position in the job.
    pub seq: i64,
    /// The user's id.
    pub id: String,
    /// The body as JSON text.
    pub body: String,
    /// Which attempt this is (1 for the first). An outcome is recorded only with the
    /// attempt (and runner) of the current claim.
    pub attempt: i64,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Whether it succeeded.
    pub ok: bool,
    /// The response body as JSON text.
    pub response: Option<String>,
    /// The error as JSON text.
    pub error: Option<String>,
    /// Tokens it used.
    pub input_tokens: u64,
    /// Tokens it produced.
    pub output_tokens: u64,
    /// Its cost in USD, when known.
    pub cost: Option<f64>,
}

/// An outcome to record for one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Its job.
    pub job_id: String,
    /// Its position in the job.
    pub seq: i64,
    /// The attempt it ended (from [`Claimed::attempt`]).
    pub attempt: i64,
    /// How it ended.
    pub outcome: Completion,
}

/// Counts of a job's requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Requests in the job.
    pub total: u64,
    /// Not yet claimed.
    pub pending: u64,
    /// Claimed, outcome not yet recorded.
    pub running: u64,
    /// Ended with a response.
    pub succeeded: u64,
    /// Ended with an error.
    pub failed: u64,
    /// Never sent because the job was cancelled.
    pub cancelled: u64,
    /// Input tokens of every recorded outcome.
    pub input_tokens: u64,
    /// Output tokens of every recorded outcome.
    pub output_tokens: u64,
    /// Cost of every recorded outcome, when known.
    pub cost: Option<f64>,
}

/// One request's outcome, in submit order.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Its position in the job.
    pub seq: i64,
    /// The user's id.
    pub id: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The response body as JSON text.
    pub response: Option<String>,
    /// The error as JSON text.
    pub error: Option<String>,
}

/// Where a provider batch (a provider batch of a job's requests) stands in the store. Each step is
/// written before the network call that follows it, so a restart knows what may exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderBatchState {
    /// Its requests are set aside; nothing was sent to the provider.
    Planned,
    /// A create call may have been sent; the provider's id is not known yet (after a crash,
    /// look for the batch before creating another).
    Creating,
    /// The provider's batch exists (`batch_id`).
    Created,
    /// Its results are recorded (or its requests went back to pending).
    Settled,
}

impl ProviderBatchState {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderBatchState::Planned => "planned",
            ProviderBatchState::Creating => "creating",
            ProviderBatchState::Created => "created",
            ProviderBatchState::Settled => "settled",
        }
    }

    /// The state of a stored name.
    pub fn parse(s: &str) -> ProviderBatchState {
        match s {
            "planned" => ProviderBatchState::Planned,
            "creating" => ProviderBatchState::Creating,
            "created" => ProviderBatchState::Created,
            _ => ProviderBatchState::Settled,
        }
    }
}

/// How many of `candidates` (in submit order) go into one provider batch within `limits`: as
/// many as fit, at least one (a single request over the byte limit goes alone and the
/// provider judges it).
pub fn cut(limits: &BatchLimits, candidates: &[Claimed]) -> usize {
    let model_of = |c: &Claimed| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&c.body).ok()?;
        v.get("model")?.as_str().map(str::to_string)
    };
    let first_model = if limits.one_model {
        candidates.first().map(model_of)
    } else {
        None
    };
    let mut bytes = 0usize;
    for (i, c) in candidates.iter().enumerate().take(limits.requests.max(1)) {
        bytes += c.body.len() + limits.line_overhead;
        let too_big = i > 0 && bytes > limits.bytes;
        let other_model = i > 0 && first_model.as_ref().is_some_and(|m| &model_of(c) != m);
        if too_big || other_model {
            return i;
        }
    }
    candidates.len().min(limits.requests.max(1))
}

/// A provider batch as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderBatchRow {
    /// Its job.
    pub job_id: String,
    /// Its number within the job (1, 2, ...).
    pub number: i64,
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// Where it stands.
    pub state: ProviderBatchState,
    /// The provider's batch id, once known.
    pub batch_id: Option<String>,
    /// The uploaded input file (OpenAI), once known.
    pub file_id: Option<String>,
    /// The provider's last reported status.
    pub remote_status: Option<String>,
    /// How many requests it holds.
    pub requests: u64,
    /// When the create call was first about to be sent (Unix seconds).
    pub intent_at: Option<f64>,
    /// The runner that looks after it.
    pub owner: Option<String>,
}

/// A change to a provider batch, written only while the runner still owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderBatchUpdate {
    /// Its new state.
    pub state: ProviderBatchState,
    /// The provider's batch id (kept when None).
    pub batch_id: Option<String>,
    /// The uploaded file's id (kept when None).
    pub file_id: Option<String>,
    /// The provider's status (kept when None).
    pub remote_status: Option<String>,
}

/// One request of a provider batch as it was settled: recorded with `outcome`, or (None) handed back
/// to pending for another attempt (cancelled instead when the job is cancelled).
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// Its position in the job.
    pub seq: i64,
    /// Its outcome, or None to try it again.
    pub outcome: Option<Completion>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seq: i64, body: &str) -> Claimed {
        Claimed {
            job_id: "j".into(),
            seq,
            id: format!("r{seq}"),
            body: body.into(),
            attempt: 1,
        }
    }

    #[test]
    fn chunks_are_cut_by_count_bytes_and_model() {
        let a = r#"{"model":"a","x":1}"#; // 19 bytes
        let b = r#"{"model":"b","x":1}"#;
        let limits = BatchLimits {
            requests: 3,
            bytes: 1000,
            line_overhead: 10,
            one_model: false,
        };
        let four: Vec<Claimed> = (0..4).map(|i| req(i, a)).collect();
        assert_eq!(cut(&limits, &four), 3, "by count");
        let bytes = BatchLimits {
            bytes: 60, // two lines of 29
            ..limits
        };
        assert_eq!(cut(&bytes, &four), 2, "by bytes, envelope included");
        let tiny = BatchLimits { bytes: 5, ..limits };
        assert_eq!(
            cut(&tiny, &four),
            1,
            "one request over the limit still goes, alone"
        );
        let mixed = vec![req(0, a), req(1, a), req(2, b)];
        assert_eq!(cut(&limits, &mixed), 3, "models may mix");
        let one_model = BatchLimits {
            one_model: true,
            ..limits
        };
        assert_eq!(cut(&one_model, &mixed), 2, "one model a file");
        assert_eq!(cut(&limits, &[]), 0);
    }
}
