//! Anthropic's Message Batches: `POST /messages/batches` with the requests inline
//! (`{custom_id, params}`), polled at `GET /messages/batches/{id}` (`processing_status`
//! `in_progress | canceling | ended`; the counts stay 0 until the end), cancelled at
//! `.../cancel`, results streamed as JSONL from `.../results` (`succeeded | errored |
//! canceled | expired`). A batch has no metadata: one whose create call was interrupted is
//! found by its creation time and request count.

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Value};

use crate::error::{Error, Provider};
use crate::http::transport::{Payload, Retry, Transport};
use crate::providers::anthropic::wire::MessageUsage;
use crate::providers::batch::{
    body_with_model, custom_id, jsonl, not_run, rfc3339, status_outcome, BatchBasics, BatchFuture,
    BatchLimits, BatchLine, BatchProvider, BatchSetup, Line, Phase, Remote, RequestOutcome,
};

/// 100,000 requests and 256 MB a batch (a margin kept for the envelope).
/// How often one of its batches is polled by default.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub const LIMITS: BatchLimits = BatchLimits {
    requests: 100_000,
    bytes: 250 * 1024 * 1024,
    line_overhead: 48,
    one_model: false,
};

/// Clock difference allowed between this host and the provider when searching.
const FIND_MARGIN: f64 = 600.0;
/// Most pages of the batch list read while searching.
const FIND_PAGES: usize = 20;

/// The Message Batches API.
#[derive(Debug)]
pub struct AnthropicBatches {
    /// The provider's batch-API facts (from its registry entry).
    pub basics: BatchBasics,
    /// The client's transport (x-api-key, anthropic-version), its usage book at batch prices.
    pub transport: Transport,
    /// The default model, added to bodies without one.
    pub model: String,
}

const API: &str = "the Message Batches API";

fn parse(bytes: &[u8]) -> Result<Value, Error> {
    crate::providers::batch::parse_answer(API, bytes)
}

fn id_of(v: &Value) -> Result<String, Error> {
    crate::providers::batch::text_field(API, v, "id")
}

/// The HTTP status an Anthropic error type stands for.
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// One results line as an outcome.
pub fn line_outcome(line: &Value) -> Option<Line> {
    let id = line.get("custom_id")?.as_str()?.to_string();
    let result = line.get("result")?;
    let outcome = match result.get("type")?.as_str()? {
        "succeeded" => {
            let message = result.get("message").cloned().unwrap_or(Value::Null);
            let u = MessageUsage::of(&message);
            RequestOutcome::Ok {
                input_tokens: u.all_input(),
                output_tokens: u.output_tokens,
                cached: (u.cache_creation_input_tokens, u.cache_read_input_tokens),
                body: message,
            }
        }
        "errored" => {
            let error = result.get("error").cloned().unwrap_or(Value::Null);
            // {"type": "error", "error": {"type", "message"}}, or the inner object alone.
            let kind = error
                .pointer("/error/type")
                .or_else(|| error.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("api_error");
            status_outcome(Provider::Anthropic, status_of(kind), &error)
        }
        "canceled" => not_run(
            Provider::Anthropic,
            "canceled",
            "the batch was canceled before this request ran",
        ),
        "expired" => not_run(
            Provider::Anthropic,
            "expired",
            "the batch expired before this request ran",
        ),
        _ => return None,
    };
    Some((id, outcome))
}

/// A MessageBatch object as a [`Remote`].
pub fn remote(raw: Value) -> Result<Remote, Error> {
    let id = id_of(&raw)?;
    let status = raw
        .get("processing_status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let phase = match status.as_str() {
        "in_progress" => Phase::Running,
        "canceling" => Phase::Cancelling,
        "ended" => Phase::Ended,
        _ => Phase::Unknown,
    };
    let n = |k: &str| {
        raw.pointer(&format!("/request_counts/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    // The counts mean nothing until the batch ends.
    let counts = (phase == Phase::Ended).then(|| {
        let failed = n("errored") + n("canceled") + n("expired");
        (
            n("succeeded"),
            failed,
            n("succeeded") + failed + n("processing"),
        )
    });
    Ok(Remote {
        id,
        status,
        phase,
        counts,
        errors: Vec::new(),
        raw,
    })
}

fn total_of(b: &Value) -> u64 {
    ["processing", "succeeded", "errored", "canceled", "expired"]
        .iter()
        .filter_map(|k| {
            b.pointer(&format!("/request_counts/{k}"))
                .and_then(Value::as_u64)
        })
        .sum()
}

impl AnthropicBatches {
    /// Create the batch with the requests inline; its id.
    pub async fn create(&self, requests: &[BatchLine<'_>]) -> Result<String, Error> {
        let items = requests
            .iter()
            .map(|c| Ok(json!({"custom_id": custom_id(c.seq), "params": body_with_model(c, &self.model)?})))
            .collect::<Result<Vec<Value>, Error>>()?;
        let body = Bytes::from(json!({ "requests": items }).to_string());
        let answer = self
            .transport
            .call(
                Method::POST,
                "/messages/batches",
                Payload::Json(body),
                Retry::NotIfDone,
            )
            .await?;
        id_of(&parse(&answer)?)
    }

    /// The oldest batch holding `requests` requests created since the intent (less a margin
    /// for the clocks), ids in `exclude` left out.
    pub async fn find(
        &self,
        intent_at: f64,
        requests: u64,
        exclude: &[String],
    ) -> Result<Option<String>, Error> {
        let mut after: Option<String> = None;
        let mut found: Option<(f64, String)> = None;
        for _ in 0..FIND_PAGES {
            let path = match &after {
                Some(a) => format!("/messages/batches?limit=100&after_id={a}"),
                None => "/messages/batches?limit=100".to_string(),
            };
            let page = parse(&self.transport.get(&path).await?)?;
            let Some(data) = page.get("data").and_then(Value::as_array) else {
                break;
            };
            let mut older = false;
            for b in data {
                let created = b
                    .get("created_at")
                    .and_then(Value::as_str)
                    .and_then(rfc3339)
                    .unwrap_or(0.0);
                if created < intent_at - FIND_MARGIN {
                    older = true;
                    continue;
                }
                let id = id_of(b)?;
                if total_of(b) == requests
                    && !exclude.contains(&id)
                    && found.as_ref().is_none_or(|(t, _)| created < *t)
                {
                    found = Some((created, id));
                }
            }
            let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            after = page
                .get("last_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            if older || !more || after.is_none() {
                break;
            }
        }
        Ok(found.map(|(_, id)| id))
    }

    /// The batch now.
    pub async fn get(&self, batch_id: &str) -> Result<Remote, Error> {
        let path = format!("/messages/batches/{batch_id}");
        let answer = self.transport.get(&path).await?;
        remote(parse(&answer)?)
    }

    /// Ask for the batch to be cancelled.
    pub async fn cancel(&self, batch_id: &str) -> Result<(), Error> {
        let path = format!("/messages/batches/{batch_id}/cancel");
        self.transport.post_empty(&path).await.map(|_| ())
    }

    /// Every results line of an ended batch.
    pub async fn results(&self, remote: &Remote) -> Result<Vec<Line>, Error> {
        let path = format!("/messages/batches/{}/results", remote.id);
        let bytes = self.transport.get(&path).await?;
        Ok(jsonl(&bytes).filter_map(|l| line_outcome(&l)).collect())
    }
}

impl BatchProvider for AnthropicBatches {
    fn basics(&self) -> &BatchBasics {
        &self.basics
    }
    fn transport(&self) -> &crate::http::Transport {
        &self.transport
    }
    fn endpoint(&self) -> &str {
        "/v1/messages"
    }
    fn default_model(&self) -> &str {
        &self.model
    }
    fn create<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        _file_id: Option<&'a str>,
        requests: &'a [BatchLine<'a>],
    ) -> BatchFuture<'a, String> {
        let _ = (job_id, batch);
        Box::pin(AnthropicBatches::create(self, requests))
    }
    fn find<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        intent_at: f64,
        requests: u64,
        exclude: &'a [String],
    ) -> BatchFuture<'a, Option<String>> {
        let _ = (job_id, batch);
        Box::pin(AnthropicBatches::find(self, intent_at, requests, exclude))
    }
    fn get<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, Remote> {
        Box::pin(AnthropicBatches::get(self, batch_id))
    }
    fn cancel<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, ()> {
        Box::pin(AnthropicBatches::cancel(self, batch_id))
    }
    fn results<'a>(&'a self, remote: &'a Remote) -> BatchFuture<'a, Vec<Line>> {
        Box::pin(AnthropicBatches::results(self, remote))
    }
}

/// Anthropic's Message Batches beside a Messages client.
pub fn make(setup: &BatchSetup<'_>) -> Result<Box<dyn BatchProvider>, Error> {
    if setup.endpoint != "/v1/messages" {
        return Err(setup.unsupported("messages"));
    }
    Ok(Box::new(AnthropicBatches {
        basics: setup.basics,
        transport: setup.sibling(setup.transport.base_url())?,
        model: setup.model.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_types_and_the_nested_error_shape() {
        let ok = json!({"custom_id": "r0", "result": {"type": "succeeded", "message": {"content": [],
            "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 10}}}});
        assert!(matches!(
            line_outcome(&ok).unwrap().1,
            RequestOutcome::Ok {
                input_tokens: 15,
                output_tokens: 2,
                ..
            }
        ));
        let errored = json!({"custom_id": "r1", "result": {"type": "errored", "error": {"type": "error",
            "error": {"details": null, "type": "invalid_request_error", "message": "Your credit balance is too low"}}}});
        match line_outcome(&errored).unwrap().1 {
            RequestOutcome::Permanent(Error::Status {
                status, message, ..
            }) => {
                assert_eq!(status, 400);
                assert!(message.contains("credit balance"));
            }
            other => panic!("{other:?}"),
        }
        let overloaded = json!({"custom_id": "r2", "result": {"type": "errored", "error": {"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}}});
        assert!(matches!(
            line_outcome(&overloaded).unwrap().1,
            RequestOutcome::Retryable(_)
        ));
        for t in ["canceled", "expired"] {
            let l = json!({"custom_id": "r3", "result": {"type": t}});
            assert!(matches!(
                line_outcome(&l).unwrap().1,
                RequestOutcome::Retryable(Error::ProviderBatch { .. })
            ));
        }
    }

    #[test]
    fn counts_are_withheld_until_the_batch_ends() {
        let running = remote(json!({"id": "msgbatch_1", "processing_status": "in_progress",
            "request_counts": {"processing": 5, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}})).unwrap();
        assert_eq!(running.describe(), "in_progress (processing)");
        let ended = remote(json!({"id": "msgbatch_1", "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": 3, "errored": 1, "canceled": 0, "expired": 1}})).unwrap();
        assert_eq!(ended.counts, Some((3, 2, 5)));
        assert_eq!(
            remote(json!({"id": "x", "processing_status": "paused"}))
                .unwrap()
                .phase,
            Phase::Unknown
        );
    }
}
