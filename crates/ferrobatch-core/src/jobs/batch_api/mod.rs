//! The providers' own batch APIs, which run a job's requests at half price within 24 h:
//! [`openai`] (files + `/batches`), [`anthropic`] (Message Batches) and [`gemini`]
//! (`batchGenerateContent`). [`BatchApi`] is the one face the batch runner sees: create a
//! batch from a chunk of requests, find one again after a crash, poll, cancel, and read every
//! result line back as an [`Outcome`].
//!
//! Every request goes out under a provider-safe id, `r<seq>` (its position in the job), so the
//! mapping back to the store is the store's own key. Results are matched by that id, never by
//! order; a request with no line at all is retryable (`missing_output`).

pub mod anthropic;
pub mod gemini;
pub mod openai;

use std::time::Duration;

use serde_json::{Map, Value};

use super::model::{ChunkLimits, Claimed};
use crate::error::{Error, Provider};
use crate::http::transport::ErrorBody;
use crate::http::UsageBook;

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
pub enum Outcome {
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
pub type Line = (String, Outcome);

/// The id a request goes out under.
pub fn custom_id(seq: i64) -> String {
    format!("r{seq}")
}

/// The position a returned id stands for.
pub fn seq_of(custom_id: &str) -> Option<i64> {
    custom_id.strip_prefix('r')?.parse().ok()
}

/// The name a batch is known by at the provider (OpenAI metadata, Gemini display name).
pub fn tag(job_id: &str, chunk: i64) -> String {
    format!("ferrobatch-{job_id}-{chunk}")
}

/// A request body as a JSON object with `model` filled in when absent.
pub(crate) fn body_with_model(c: &Claimed, model: &str) -> Result<Map<String, Value>, Error> {
    let mut body: Map<String, Value> =
        serde_json::from_str(&c.body).map_err(|e| Error::InvalidInput {
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
pub(crate) fn status_outcome(provider: Provider, status: u16, body: &Value) -> Outcome {
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
        Outcome::Retryable(error)
    } else {
        Outcome::Permanent(error)
    }
}

/// A request the provider did not run.
pub(crate) fn not_run(provider: Provider, code: &str, message: &str) -> Outcome {
    Outcome::Retryable(Error::ProviderBatch {
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

/// What a provider's batch API is reached through.
#[derive(Debug)]
pub enum BatchApi {
    /// The OpenAI Batch API.
    OpenAi(openai::OpenAiBatches),
    /// Anthropic's Message Batches.
    Anthropic(anthropic::AnthropicBatches),
    /// Gemini's Batch Mode.
    Gemini(gemini::GeminiBatches),
}

impl BatchApi {
    /// `openai`, `anthropic` or `gemini`.
    pub fn name(&self) -> &'static str {
        match self {
            BatchApi::OpenAi(_) => "openai",
            BatchApi::Anthropic(_) => "anthropic",
            BatchApi::Gemini(_) => "gemini",
        }
    }

    /// The API path the job's requests have (`/v1/chat/completions`, ...).
    pub fn endpoint(&self) -> &str {
        match self {
            BatchApi::OpenAi(a) => &a.endpoint,
            BatchApi::Anthropic(_) => "/v1/messages",
            BatchApi::Gemini(_) => "/v1/chat/completions",
        }
    }

    /// The provider's limits on one batch.
    pub fn limits(&self) -> ChunkLimits {
        match self {
            BatchApi::OpenAi(_) => openai::LIMITS,
            BatchApi::Anthropic(_) => anthropic::LIMITS,
            BatchApi::Gemini(_) => gemini::LIMITS,
        }
    }

    /// How often a batch is polled by default.
    pub fn poll_interval(&self) -> Duration {
        match self {
            BatchApi::OpenAi(_) => openai::POLL_INTERVAL,
            BatchApi::Anthropic(_) => anthropic::POLL_INTERVAL,
            BatchApi::Gemini(_) => gemini::POLL_INTERVAL,
        }
    }

    /// Where costs are counted, at the batch price (half the prices given).
    pub fn usage(&self) -> &UsageBook {
        match self {
            BatchApi::OpenAi(a) => a.transport.usage(),
            BatchApi::Anthropic(a) => a.transport.usage(),
            BatchApi::Gemini(a) => a.transport.usage(),
        }
    }

    /// The model a request is billed as.
    pub fn model_of(&self, c: &Claimed) -> String {
        let default = match self {
            BatchApi::OpenAi(a) => &a.model,
            BatchApi::Anthropic(a) => &a.model,
            BatchApi::Gemini(a) => &a.model,
        };
        serde_json::from_str::<Value>(&c.body)
            .ok()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| default.clone())
    }

    /// Upload what must be uploaded before the create call (OpenAI's input file); its id.
    pub async fn upload(
        &self,
        job_id: &str,
        chunk: i64,
        requests: &[Claimed],
    ) -> Result<Option<String>, Error> {
        match self {
            BatchApi::OpenAi(a) => a.upload(job_id, chunk, requests).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Create the batch (a create call is not repeated on a failure that may hide a batch
    /// that was made); its id.
    pub async fn create(
        &self,
        job_id: &str,
        chunk: i64,
        file_id: Option<&str>,
        requests: &[Claimed],
    ) -> Result<String, Error> {
        match self {
            BatchApi::OpenAi(a) => {
                let file = file_id.ok_or_else(|| Error::InvalidInput {
                    reason: "an OpenAI batch needs its uploaded input file".into(),
                })?;
                a.create(job_id, chunk, file).await
            }
            BatchApi::Anthropic(a) => a.create(requests).await,
            BatchApi::Gemini(a) => a.create(job_id, chunk, requests).await,
        }
    }

    /// The batch a create call for this chunk made, if one did: found in the provider's list
    /// (OpenAI by metadata, Gemini by display name, Anthropic by creation time and count,
    /// leaving out the batches of the job's other chunks, `exclude`).
    pub async fn find(
        &self,
        job_id: &str,
        chunk: i64,
        intent_at: f64,
        requests: u64,
        exclude: &[String],
    ) -> Result<Option<String>, Error> {
        match self {
            BatchApi::OpenAi(a) => a.find(job_id, chunk, intent_at).await,
            BatchApi::Anthropic(a) => a.find(intent_at, requests, exclude).await,
            BatchApi::Gemini(a) => a.find(job_id, chunk).await,
        }
    }

    /// The batch as the provider reports it now.
    pub async fn get(&self, batch_id: &str) -> Result<Remote, Error> {
        match self {
            BatchApi::OpenAi(a) => a.get(batch_id).await,
            BatchApi::Anthropic(a) => a.get(batch_id).await,
            BatchApi::Gemini(a) => a.get(batch_id).await,
        }
    }

    /// Ask the provider to cancel the batch (it ends later, with partial results).
    pub async fn cancel(&self, batch_id: &str) -> Result<(), Error> {
        match self {
            BatchApi::OpenAi(a) => a.cancel(batch_id).await,
            BatchApi::Anthropic(a) => a.cancel(batch_id).await,
            BatchApi::Gemini(a) => a.cancel(batch_id).await,
        }
    }

    /// Every result line of an ended batch: outputs, errors, partial results of an expired
    /// or cancelled one.
    pub async fn results(&self, remote: &Remote) -> Result<Vec<Line>, Error> {
        match self {
            BatchApi::OpenAi(a) => a.results(remote).await,
            BatchApi::Anthropic(a) => a.results(remote).await,
            BatchApi::Gemini(a) => a.results(remote),
        }
    }
}

/// A pre-submit estimate of some requests of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    /// Requests.
    pub requests: u64,
    /// Estimated input tokens (characters / 4 of the text sent).
    pub input_tokens: u64,
    /// The output tokens the requests allow at most (`max_tokens`); 0 for embeddings.
    pub max_output_tokens: u64,
}

/// Estimates per model of request bodies (JSON texts) bound for `endpoint`; `default_model`
/// for bodies that name none. A body that is not a JSON object counts as nothing.
pub fn estimate<'a>(
    endpoint: &str,
    bodies: impl IntoIterator<Item = &'a str>,
    default_model: &str,
) -> std::collections::BTreeMap<String, Estimate> {
    use crate::limits::estimate::estimate_json_tokens;
    let mut out: std::collections::BTreeMap<String, Estimate> = Default::default();
    for text in bodies {
        let Ok(body) = serde_json::from_str::<Map<String, Value>>(text) else {
            continue;
        };
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(default_model);
        let e = out.entry(model.to_string()).or_default();
        e.requests += 1;
        if endpoint == "/v1/embeddings" {
            e.input_tokens += body.get("input").map_or(0, estimate_json_tokens);
            continue;
        }
        e.input_tokens += ["messages", "system", "tools"]
            .iter()
            .filter_map(|k| body.get(*k))
            .map(estimate_json_tokens)
            .sum::<u64>()
            .max(1);
        e.max_output_tokens += ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
            .unwrap_or(0);
    }
    out
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
            Outcome::Permanent(Error::Status { status: 400, .. })
        ));
        for s in [408, 429, 500, 529] {
            assert!(matches!(
                status_outcome(Provider::OpenAi, s, &body),
                Outcome::Retryable(_)
            ));
        }
    }
}
