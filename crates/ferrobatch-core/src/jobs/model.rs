//! The values a job store keeps and hands out: jobs, requests, claims, outcomes, progress.

use std::time::Duration;

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
