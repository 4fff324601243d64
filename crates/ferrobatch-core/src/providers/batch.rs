//! The providers' own batch APIs, which run a job's requests at half price within 24 h, in one
//! vocabulary: [`BatchProvider`] is the one face the batch route sees (create a provider batch
//! from some requests, find one again after a crash, poll, cancel, and read every result line
//! back as an [`RequestOutcome`]); each provider's folder implements it (`openai::batch`: files +
//! `/batches`, `anthropic::batch`: Message Batches, `gemini::batch`: `batchGenerateContent`).
//!
//! Every request goes out under a provider-safe id, `r<seq>` (its position in the job), so the
//! mapping back to the store is the store's own key. Results are matched by that id, never by
//! order; a request with no line at all is retryable (`missing_output`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Provider};
use crate::http::transport::ErrorBody;
use crate::http::{Transport, UsageBook};

/// Where a provider batch is, in one vocabulary for all providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, not yet running (OpenAI `validating`, Gemini `*_PENDING`).
    Validating,
    /// Running (OpenAI `in_progress`/`finalizing`, Anthropic `in_progress`, Gemini `*_RUNNING`).
    Running,
    /// Cancelling (OpenAI `cancelling`, Anthropic `canceling`).
    Cancelling,
    /// Ended, whatever the reason: results (if any) can be read.
    Ended,
    /// A status this code does not know: logged and polled again.
    Unknown,
}

/// A provider batch as the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    /// The provider's id.
    pub id: String,
    /// The provider's own status word.
    pub status: String,
    /// What it means.
    pub phase: Phase,
    /// Requests done so far (succeeded, failed) out of total, when the provider tells.
    pub counts: Option<(u64, u64, u64)>,
    /// Batch-level errors (OpenAI `errors.data`): code, message, 1-based input line.
    pub errors: Vec<(String, String, Option<u64>)>,
    /// The raw object, for reading results.
    pub raw: Value,
}

impl Remote {
    /// `in_progress (120 succeeded, 3 failed of 500)`, `in_progress (processing)`.
    pub fn describe(&self) -> String {
        match self.counts {
            Some((ok, failed, total)) => {
                format!(
                    "{} ({ok} succeeded, {failed} failed of {total})",
                    self.status
                )
            }
            None => format!("{} (processing)", self.status),
        }
    }
}

/// How one request of a provider batch ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// A response: its body, and the tokens the provider reports.
    Ok {
        /// The response body (for Gemini, translated to a chat completion).
        body: Value,
        /// Input tokens (cached ones included).
        input_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// Of the input tokens, those written to and read from a prompt cache (Anthropic).
        cached: (u64, u64),
    },
    /// An error that another attempt would meet again (400-class).
    Permanent(Error),
    /// An error another attempt may not meet (expired, cancelled, 429, 5xx, ...).
    Retryable(Error),
}

/// One result line: the id it was sent under and how it ended.
pub type Line = (String, RequestOutcome);

/// The id a request goes out under.
pub fn custom_id(seq: i64) -> String {
    format!("r{seq}")
}

/// The position a returned id stands for.
pub fn seq_of(custom_id: &str) -> Option<i64> {
    custom_id.strip_prefix('r')?.parse().ok()
}

/// The name a batch is known by at the provider (OpenAI metadata, Gemini display name).
pub fn tag(job_id: &str, number: i64) -> String {
    format!("ferrobatch-{job_id}-{number}")
}

/// A request body as a JSON object with `model` filled in when absent.
pub(crate) fn body_with_model(c: &BatchLine<'_>, model: &str) -> Result<Map<String, Value>, Error> {
    let mut body: Map<String, Value> =
        serde_json::from_str(c.body).map_err(|e| Error::InvalidInput {
            reason: format!(
                "request {:?}: the stored body is not a JSON object: {e}",
                c.id
            ),
        })?;
    if !body.contains_key("model") {
        body.insert("model".into(), Value::from(model));
    }
    Ok(body)
}

/// The error of a request whose line carries an HTTP status and an error body.
pub(crate) fn status_outcome(provider: Provider, status: u16, body: &Value) -> RequestOutcome {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let parsed = ErrorBody::parse(&bytes, false);
    let error = Error::Status {
        provider,
        status,
        message: parsed.message.unwrap_or_else(|| format!("status {status}")),
        body: Some(body.to_string()),
        code: parsed.code,
        param: parsed.param,
    };
    if matches!(status, 408 | 409 | 429) || status >= 500 {
        RequestOutcome::Retryable(error)
    } else {
        RequestOutcome::Permanent(error)
    }
}

/// A request the provider did not run.
pub(crate) fn not_run(provider: Provider, code: &str, message: &str) -> RequestOutcome {
    RequestOutcome::Retryable(Error::ProviderBatch {
        provider,
        code: code.to_string(),
        message: message.to_string(),
    })
}

/// Unix seconds of an RFC 3339 time (`2024-08-20T18:37:24.100435Z`, `+02:00` offsets too).
pub fn rfc3339(s: &str) -> Option<f64> {
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "Z"),
    };
    let mut c = clock.splitn(3, ':');
    let (hh, mm): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let ss: f64 = c.next().unwrap_or("0").parse().ok()?;
    let off = match offset {
        "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 - off) as f64 + ss)
}

/// An answer of a batch API (`api` names it in errors: "the Batch API") as JSON.
pub(crate) fn parse_answer(api: &str, bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::ResponseFormat {
        reason: format!("{api} answered with something that is not JSON: {e}"),
    })
}

/// The error of an answer without `what` (such as "an `id`").
pub(crate) fn missing(api: &str, what: &str) -> Error {
    Error::ResponseFormat {
        reason: format!("{api} answered without {what}"),
    }
}

/// A string field of an answer (`id`, `name`), or the error naming it.
pub(crate) fn text_field(api: &str, v: &Value, key: &str) -> Result<String, Error> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| missing(api, &format!("`{key}`")))
}

/// Lines of a JSONL text, each parsed; a line that is not JSON is skipped (its request then
/// has no line and is retried).
pub(crate) fn jsonl(bytes: &[u8]) -> impl Iterator<Item = Value> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .filter_map(|l| serde_json::from_slice(l).ok())
}

/// How large one provider batch may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most requests.
    pub requests: usize,
    /// Most bytes of request bodies plus `line_overhead` per request.
    pub bytes: usize,
    /// Bytes each request adds around its body (the JSONL line's `custom_id`, `url`, ...).
    pub line_overhead: usize,
    /// Whether every request must name the same model (OpenAI: one model per file).
    pub one_model: bool,
}

/// One request going into a provider batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLine<'a> {
    /// Its position in the job: it goes out under [`custom_id`] of it.
    pub seq: i64,
    /// The user's id, for messages.
    pub id: &'a str,
    /// The body as JSON text.
    pub body: &'a str,
}

/// A provider's batch-API facts, as its registry entry states them (handed to its maker, so
/// that no provider restates them).
#[derive(Debug, Clone, Copy)]
pub struct BatchBasics {
    /// `openai`, `anthropic` or `gemini`.
    pub name: &'static str,
    /// Which API its errors come from.
    pub provider: Provider,
    /// The limits of one batch.
    pub limits: BatchLimits,
    /// How often a batch is polled by default.
    pub poll_interval: Duration,
}

/// A boxed future, so that [`BatchProvider`] can be a trait object.
pub type BatchFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A provider's batch API, as the batch route sees it.
pub trait BatchProvider: Send + Sync + std::fmt::Debug {
    /// The provider's batch-API facts (from its registry entry).
    fn basics(&self) -> &BatchBasics;
    /// The transport to its batch routes (usage counted at the batch price).
    fn transport(&self) -> &Transport;
    /// The API path the job's requests have (`/v1/chat/completions`, ...).
    fn endpoint(&self) -> &str;
    /// The model a request that names none is billed as.
    fn default_model(&self) -> &str;

    /// `openai`, `anthropic` or `gemini`.
    fn name(&self) -> &'static str {
        self.basics().name
    }
    /// Which API its errors come from.
    fn provider(&self) -> Provider {
        self.basics().provider
    }
    /// The provider's limits on one batch.
    fn limits(&self) -> BatchLimits {
        self.basics().limits
    }
    /// How often a batch is polled by default.
    fn poll_interval(&self) -> Duration {
        self.basics().poll_interval
    }
    /// Where costs are counted, at the batch price.
    fn usage(&self) -> &UsageBook {
        self.transport().usage()
    }
    /// Upload what must be uploaded before the create call (OpenAI's input file); its id.
    fn upload<'a>(
        &'a self,
        _job_id: &'a str,
        _batch: i64,
        _requests: &'a [BatchLine<'a>],
    ) -> BatchFuture<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
    /// Create the provider batch (a create call is not repeated on a failure that may hide a
    /// batch that was made); its id.
    fn create<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        file_id: Option<&'a str>,
        requests: &'a [BatchLine<'a>],
    ) -> BatchFuture<'a, String>;
    /// The provider batch a create call for this one made, if one did: found in the
    /// provider's list (OpenAI by metadata, Gemini by display name, Anthropic by creation time
    /// and count, leaving out the job's other provider batches, `exclude`).
    fn find<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        intent_at: f64,
        requests: u64,
        exclude: &'a [String],
    ) -> BatchFuture<'a, Option<String>>;
    /// The provider batch as the provider reports it now.
    fn get<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, Remote>;
    /// Ask the provider to cancel it (it ends later, with partial results).
    fn cancel<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, ()>;
    /// Every result line of an ended provider batch: outputs, errors, partial results of an
    /// expired or cancelled one.
    fn results<'a>(&'a self, remote: &'a Remote) -> BatchFuture<'a, Vec<Line>>;

    /// The model a request is billed as.
    fn model_of(&self, line: &BatchLine<'_>) -> String {
        serde_json::from_str::<Value>(line.body)
            .ok()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| self.default_model().to_string())
    }
}

/// What a provider's maker gets to build its batch API beside an online client.
#[derive(Debug)]
pub struct BatchSetup<'a> {
    /// The job endpoint (`/v1/chat/completions`, ...).
    pub endpoint: &'a str,
    /// The online client's transport (its base URL, key, limiter, usage).
    pub transport: &'a Transport,
    /// The online client's model.
    pub model: String,
    /// The provider's price factor for batched requests.
    pub price_factor: f64,
    /// The provider's auth.
    pub auth: crate::http::Auth,
    /// The provider's batch-API facts.
    pub basics: BatchBasics,
}

impl BatchSetup<'_> {
    /// A transport to the provider's batch routes at `base`: the same key, limiter and
    /// settings; usage counted at the batch price.
    pub fn sibling(&self, base: &str) -> Result<Transport, Error> {
        self.transport.sibling(
            self.basics.provider,
            base,
            self.auth,
            self.transport.usage().scaled(self.price_factor),
        )
    }

    /// The error for an endpoint this provider's batch API does not take.
    pub fn unsupported(&self, takes: &str) -> Error {
        let name = self.basics.name;
        Error::config(
            "batch_provider",
            format!(
                "no {name:?} batch API for {} requests ({name} batches take {takes})",
                self.endpoint
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_fit_every_provider() {
        assert_eq!(seq_of(&custom_id(123_456)), Some(123_456));
        assert_eq!(seq_of("x1"), None);
        let id = custom_id(i64::MAX);
        assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339("2024-08-20T18:37:24Z"), Some(1_724_179_044.0));
        assert_eq!(rfc3339("2024-08-20T20:37:24+02:00"), Some(1_724_179_044.0));
        let frac = rfc3339("2024-08-20T18:37:24.5Z").unwrap();
        assert!((frac - 1_724_179_044.5).abs() < 1e-6);
        assert_eq!(rfc3339("yesterday"), None);
    }

    #[test]
    fn line_statuses_split_into_permanent_and_retryable() {
        let body =
            serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error"}});
        assert!(matches!(
            status_outcome(Provider::OpenAi, 400, &body),
            RequestOutcome::Permanent(Error::Status { status: 400, .. })
        ));
        for s in [408, 429, 500, 529] {
            assert!(matches!(
                status_outcome(Provider::OpenAi, s, &body),
                RequestOutcome::Retryable(_)
            ));
        }
    }
}
