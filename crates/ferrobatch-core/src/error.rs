//! The error type of the core layer: every way the engine can refuse or fail an item.
//!
//! Each variant carries structured fields so that the bindings can map it once to a typed
//! Python exception without parsing messages.

use std::fmt;
use std::time::Duration;

/// Why an item ended without being processed because the engine stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The engine was stopped before the item was submitted.
    NotAccepting,
    /// The item was queued or running when a forced stop happened.
    ForceStopped,
    /// The engine was dropped (its owner went away) while the item was queued.
    Dropped,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::NotAccepting => "the batcher is stopped and accepts no new items",
            StopReason::ForceStopped => "the batcher was force-stopped before this item finished",
            StopReason::Dropped => "the batcher was dropped before this item was processed",
        })
    }
}

/// Every error of the core layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The name of the setting, as the user spells it.
        field: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The queue holds `capacity` items and the engine rejects new ones while full.
    #[error("the queue is full ({capacity} items waiting); item rejected")]
    QueueFull {
        /// The configured `max_queue_size`.
        capacity: usize,
    },
    /// The engine stopped; `reason` says when relative to the item's life.
    #[error("{reason}")]
    Stopped {
        /// Why the item was refused or failed.
        reason: StopReason,
    },
    /// The item waited in the queue longer than `item_timeout` and was never dispatched.
    #[error("item was not dispatched within item_timeout={}s", timeout.as_secs_f64())]
    ItemTimeout {
        /// The configured `item_timeout`.
        timeout: Duration,
    },
    /// The batch function returned a different number of results than it got items.
    #[error("the batch function returned {got} results for a batch of {expected} items")]
    BatchSizeMismatch {
        /// How many items the batch held.
        expected: usize,
        /// How many results came back.
        got: usize,
    },
    /// The server answered with an error status (after any retries).
    #[error("{} {status}: {message}", provider_label(*provider))]
    Status {
        /// Which API answered.
        provider: Provider,
        /// The HTTP status.
        status: u16,
        /// The server's error message (the API key redacted).
        message: String,
        /// The response body, truncated to 64 KiB (the API key redacted).
        body: Option<String>,
        /// The server's error code or type, such as `rate_limit_exceeded`.
        code: Option<String>,
        /// The request field the error is about, such as `input[3]`.
        param: Option<String>,
    },
    /// No response within the request timeout (after any retries).
    #[error("the request timed out after {}s", after.as_secs_f64())]
    Timeout {
        /// The configured request timeout.
        after: Duration,
    },
    /// The connection failed or broke before a response (after any retries).
    #[error("connection error: {message}")]
    Connection {
        /// What the HTTP client reported (never holds the API key).
        message: String,
    },
    /// The server reported an error inside a stream it had begun (Anthropic's `error` event,
    /// an OpenAI error chunk).
    #[error("{} stream error: {message}", provider_label(*provider))]
    Stream {
        /// Which API answered.
        provider: Provider,
        /// The server's message (the API key redacted).
        message: String,
        /// The error's type or code, such as `overloaded_error`.
        code: Option<String>,
    },
    /// The server's answer does not have the shape its API documents.
    #[error("malformed response: {reason}")]
    ResponseFormat {
        /// What is wrong with it.
        reason: String,
    },
    /// The server's answer was larger than `max_response_bytes`; the rest was not read.
    #[error("the response body exceeds max_response_bytes={limit}; the rest was not read")]
    ResponseTooLarge {
        /// The configured cap, in bytes.
        limit: usize,
    },
    /// The shared rate limit cannot be consulted (Redis unreachable) and the policy is to
    /// fail rather than limit in process.
    #[error("rate limiter unavailable: {message}")]
    RateLimiterUnavailable {
        /// What failed (never holds a password).
        message: String,
    },
    /// The job store failed (the SQLite file cannot be opened, is locked too long, ...).
    #[error("job store error while {operation}: {message}")]
    Store {
        /// What the store was doing.
        operation: &'static str,
        /// What SQLite reported.
        message: String,
    },
    /// The result cache's store failed (only `clear` and `len` report it: lookups and
    /// writes fall back to sending).
    #[error("result cache error while {operation}: {message}")]
    Cache {
        /// What the cache was doing.
        operation: &'static str,
        /// What the store reported (never holds a password).
        message: String,
    },
    /// Two requests of one job share an id.
    #[error("duplicate request id {id:?}: request {index} repeats request {first}")]
    DuplicateRequestId {
        /// The repeated id.
        id: String,
        /// The position (0-based) of the repeat.
        index: usize,
        /// The position of its first use.
        first: usize,
    },
    /// A runner tried to claim while it held no live registration (its lease lapsed, or
    /// another runner's heartbeat removed it): it must register again before it claims.
    #[error("runner {runner} holds no live registration in the store (its lease lapsed)")]
    LeaseLost {
        /// The runner's id.
        runner: String,
    },
    /// No job has this id in the store.
    #[error("no job {job:?} in the store")]
    JobNotFound {
        /// The id asked for.
        job: String,
    },
    /// A provider's batch API did not run a request, or ran a whole batch into a failure:
    /// `batch_expired`, `batch_cancelled`, `request_timeout`, `missing_output`, a batch that
    /// failed validation (`invalid_json_line`, ...).
    #[error("{} batch: {code}: {message}", provider_label(*provider))]
    ProviderBatch {
        /// Which API's batch.
        provider: Provider,
        /// The provider's code (or ferrobatch's, `missing_output`).
        code: String,
        /// What the provider said.
        message: String,
    },
    /// An item cannot be sent (for example an empty text, which the APIs reject).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong with it.
        reason: String,
    },
}

/// Which API an HTTP error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// An OpenAI-compatible server.
    OpenAi,
    /// The Gemini API.
    Gemini,
    /// Anthropic's Messages API.
    Anthropic,
}

fn provider_label(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "OpenAI-compatible API error",
        Provider::Gemini => "Gemini API error",
        Provider::Anthropic => "Anthropic API error",
    }
}

/// The class of an error: one per exception class the core can raise. Deliberately *not*
/// `#[non_exhaustive]`: the bindings map it to Python with an exhaustive `match`, so a new
/// kind does not build until it has a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A setting is out of range.
    Config,
    /// The queue is full and the engine rejects.
    QueueFull,
    /// The engine is stopped.
    Stopped,
    /// The item was not dispatched within `item_timeout`.
    ItemTimeout,
    /// The batch function returned the wrong number of results.
    BatchSizeMismatch,
    /// An item cannot be sent as it is.
    InvalidInput,
    /// HTTP 400.
    BadRequest,
    /// HTTP 401.
    Authentication,
    /// HTTP 403.
    PermissionDenied,
    /// HTTP 404.
    NotFound,
    /// HTTP 409.
    Conflict,
    /// HTTP 422.
    UnprocessableEntity,
    /// HTTP 429.
    RateLimit,
    /// HTTP 5xx.
    InternalServer,
    /// Any other error status.
    ApiStatus,
    /// No response within the request timeout.
    ApiTimeout,
    /// The connection failed or broke.
    ApiConnection,
    /// The answer does not have the documented shape.
    ResponseFormat,
    /// The answer exceeds `max_response_bytes`.
    ResponseTooLarge,
    /// The shared rate limit cannot be consulted.
    RateLimiterUnavailable,
    /// The job store failed (or a runner's lease lapsed).
    Store,
    /// Two requests of one job share an id.
    DuplicateRequestId,
    /// No such job.
    JobNotFound,
    /// A provider batch did not run a request.
    ProviderBatch,
    /// The result cache's store failed.
    Cache,
    /// An error the server reported inside a stream.
    Stream,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 26] = [
        ErrorKind::Config,
        ErrorKind::QueueFull,
        ErrorKind::Stopped,
        ErrorKind::ItemTimeout,
        ErrorKind::BatchSizeMismatch,
        ErrorKind::InvalidInput,
        ErrorKind::BadRequest,
        ErrorKind::Authentication,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::UnprocessableEntity,
        ErrorKind::RateLimit,
        ErrorKind::InternalServer,
        ErrorKind::ApiStatus,
        ErrorKind::ApiTimeout,
        ErrorKind::ApiConnection,
        ErrorKind::ResponseFormat,
        ErrorKind::ResponseTooLarge,
        ErrorKind::RateLimiterUnavailable,
        ErrorKind::Store,
        ErrorKind::DuplicateRequestId,
        ErrorKind::JobNotFound,
        ErrorKind::ProviderBatch,
        ErrorKind::Cache,
        ErrorKind::Stream,
    ];

    /// The name of the kind's class in the Python exception tree, which is also the `type` a
    /// job records for a failed request.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Config => "ConfigError",
            ErrorKind::QueueFull => "QueueFullError",
            ErrorKind::Stopped => "BatcherStoppedError",
            ErrorKind::ItemTimeout => "ItemTimeoutError",
            ErrorKind::BatchSizeMismatch => "BatchSizeMismatchError",
            ErrorKind::InvalidInput => "InvalidInputError",
            ErrorKind::BadRequest => "BadRequestError",
            ErrorKind::Authentication => "AuthenticationError",
            ErrorKind::PermissionDenied => "PermissionDeniedError",
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::Conflict => "ConflictError",
            ErrorKind::UnprocessableEntity => "UnprocessableEntityError",
            ErrorKind::RateLimit => "RateLimitError",
            ErrorKind::InternalServer => "InternalServerError",
            ErrorKind::ApiStatus => "APIStatusError",
            ErrorKind::ApiTimeout => "APITimeoutError",
            ErrorKind::ApiConnection => "APIConnectionError",
            ErrorKind::ResponseFormat => "ResponseFormatError",
            ErrorKind::ResponseTooLarge => "ResponseTooLargeError",
            ErrorKind::RateLimiterUnavailable => "RateLimiterUnavailableError",
            ErrorKind::Store => "StoreError",
            ErrorKind::DuplicateRequestId => "DuplicateRequestIdError",
            ErrorKind::JobNotFound => "JobNotFoundError",
            ErrorKind::ProviderBatch => "ProviderBatchError",
            ErrorKind::Cache => "CacheError",
            ErrorKind::Stream => "StreamError",
        }
    }
}

impl Error {
    /// The error's kind: the one place a failure is classified.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig { .. } => ErrorKind::Config,
            Error::QueueFull { .. } => ErrorKind::QueueFull,
            Error::Stopped { .. } => ErrorKind::Stopped,
            Error::ItemTimeout { .. } => ErrorKind::ItemTimeout,
            Error::BatchSizeMismatch { .. } => ErrorKind::BatchSizeMismatch,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Status { status, .. } => match status {
                400 => ErrorKind::BadRequest,
                401 => ErrorKind::Authentication,
                403 => ErrorKind::PermissionDenied,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                422 => ErrorKind::UnprocessableEntity,
                429 => ErrorKind::RateLimit,
                500..=599 => ErrorKind::InternalServer,
                _ => ErrorKind::ApiStatus,
            },
            Error::Timeout { .. } => ErrorKind::ApiTimeout,
            Error::Connection { .. } => ErrorKind::ApiConnection,
            Error::ResponseFormat { .. } => ErrorKind::ResponseFormat,
            Error::ResponseTooLarge { .. } => ErrorKind::ResponseTooLarge,
            Error::RateLimiterUnavailable { .. } => ErrorKind::RateLimiterUnavailable,
            Error::Store { .. } | Error::LeaseLost { .. } => ErrorKind::Store,
            Error::DuplicateRequestId { .. } => ErrorKind::DuplicateRequestId,
            Error::JobNotFound { .. } => ErrorKind::JobNotFound,
            Error::ProviderBatch { .. } => ErrorKind::ProviderBatch,
            Error::Cache { .. } => ErrorKind::Cache,
            Error::Stream { .. } => ErrorKind::Stream,
        }
    }

    /// The name of the error's class in the Python exception tree (`BadRequestError`, ...).
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// An [`Error::InvalidConfig`] for the setting `field`.
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_with_its_own_name() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "ALL is in declaration order");
        }
        assert_eq!(ErrorKind::ALL.len(), ErrorKind::Stream as usize + 1);
        let names: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert!(names.iter().all(|n| n.ends_with("Error")));
    }

    #[test]
    fn messages_name_the_problem() {
        let e = Error::BatchSizeMismatch {
            expected: 3,
            got: 2,
        };
        assert_eq!(
            e.to_string(),
            "the batch function returned 2 results for a batch of 3 items"
        );
        let e = Error::ItemTimeout {
            timeout: Duration::from_millis(250),
        };
        assert_eq!(
            e.to_string(),
            "item was not dispatched within item_timeout=0.25s"
        );
        let e = Error::QueueFull { capacity: 8 };
        assert!(e.to_string().contains("8 items"));
        let e = Error::Stopped {
            reason: StopReason::ForceStopped,
        };
        assert!(e.to_string().contains("force-stopped"));
        let e = Error::config("concurrency", "must be -1 or at least 1, got 0");
        assert_eq!(
            e.to_string(),
            "invalid concurrency: must be -1 or at least 1, got 0"
        );
    }
}
