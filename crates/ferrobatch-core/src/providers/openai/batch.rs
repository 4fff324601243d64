//! The OpenAI Batch API: the provider batch's requests as a JSONL file uploaded to `POST /files`
//! (`purpose=batch`), a batch made by `POST /batches` with the job and provider batch in its
//! `metadata`, polled at `GET /batches/{id}`, cancelled at `POST /batches/{id}/cancel`, listed
//! at `GET /batches`; results are the lines of its output and error files
//! (`GET /files/{id}/content`), matched by `custom_id`.

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Value};

use crate::error::{Error, Provider};
use crate::http::transport::{Payload, Retry, Transport};
use crate::providers::batch::{
    body_with_model, custom_id, jsonl, not_run, status_outcome, tag, BatchBasics, BatchFuture,
    BatchLimits, BatchLine, BatchProvider, BatchSetup, Line, Phase, Remote, RequestOutcome,
};

/// 50,000 requests and 200 MB a file (a margin kept for the lines' envelopes), one model.
/// How often one of its batches is polled by default.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub const LIMITS: BatchLimits = BatchLimits {
    requests: 50_000,
    bytes: 190 * 1024 * 1024,
    line_overhead: 96,
    one_model: true,
};

/// How far back the list is searched for a batch whose create call was interrupted.
const FIND_MARGIN: f64 = 3600.0;
/// Most pages of the batch list read while searching.
const FIND_PAGES: usize = 50;

/// The Batch API of an OpenAI-compatible server.
#[derive(Debug)]
pub struct OpenAiBatches {
    /// The provider's batch-API facts (from its registry entry).
    pub basics: BatchBasics,
    /// The client's transport (Bearer auth), its usage book at batch prices.
    pub transport: Transport,
    /// `/v1/chat/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// The default model, added to bodies without one.
    pub model: String,
}

const API: &str = "the Batch API";

fn format_error(what: &str) -> Error {
    crate::providers::batch::missing(API, what)
}

fn parse(bytes: &[u8]) -> Result<Value, Error> {
    crate::providers::batch::parse_answer(API, bytes)
}

fn id_of(v: &Value) -> Result<String, Error> {
    crate::providers::batch::text_field(API, v, "id")
}

/// The tokens an OpenAI response body reports (chat, embeddings or responses).
pub fn usage_of(body: &Value) -> (u64, u64) {
    let u = body.get("usage");
    let n = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| u.and_then(|u| u.get(*k)).and_then(Value::as_u64))
            .unwrap_or(0)
    };
    (
        n(&["prompt_tokens", "input_tokens"]),
        n(&["completion_tokens", "output_tokens"]),
    )
}

/// One output or error file line as an outcome.
pub fn line_outcome(line: &Value) -> Option<Line> {
    let id = line.get("custom_id")?.as_str()?.to_string();
    let outcome = match (line.get("response"), line.get("error")) {
        (Some(resp), _) if resp.is_object() => {
            let status = resp.get("status_code").and_then(Value::as_u64).unwrap_or(0) as u16;
            let body = resp.get("body").cloned().unwrap_or(Value::Null);
            match status {
                200..=299 => {
                    let (input_tokens, output_tokens) = usage_of(&body);
                    RequestOutcome::Ok {
                        body,
                        input_tokens,
                        output_tokens,
                        cached: (0, 0),
                    }
                }
                0 => not_run(
                    Provider::OpenAi,
                    "status_code_0",
                    "the batch returned status_code 0 and no response for this request",
                ),
                s => status_outcome(Provider::OpenAi, s, &body),
            }
        }
        (_, Some(err)) if err.is_object() => {
            let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let code = text("code");
            not_run(
                Provider::OpenAi,
                if code.is_empty() {
                    "batch_error"
                } else {
                    &code
                },
                &text("message"),
            )
        }
        _ => return None,
    };
    Some((id, outcome))
}

/// The phase of an OpenAI batch status.
pub fn phase(status: &str) -> Phase {
    match status {
        "validating" => Phase::Validating,
        "in_progress" | "finalizing" => Phase::Running,
        "cancelling" => Phase::Cancelling,
        "completed" | "failed" | "expired" | "cancelled" => Phase::Ended,
        _ => Phase::Unknown,
    }
}

/// A batch object as a [`Remote`].
pub fn remote(raw: Value) -> Result<Remote, Error> {
    let id = id_of(&raw)?;
    let status = raw
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| format_error("a `status`"))?
        .to_string();
    let counts = raw.get("request_counts").and_then(|c| {
        let n = |k: &str| c.get(k).and_then(Value::as_u64);
        Some((n("completed")?, n("failed")?, n("total")?))
    });
    let errors = raw
        .pointer("/errors/data")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .map(|e| {
                    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    (
                        text("code"),
                        text("message"),
                        e.get("line").and_then(Value::as_u64),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Remote {
        id,
        phase: phase(&status),
        status,
        counts,
        errors,
        raw,
    })
}

impl OpenAiBatches {
    /// The provider batch's input file, one line per request in submit order.
    pub fn input_file(&self, requests: &[BatchLine<'_>]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for c in requests {
            let line = json!({
                "custom_id": custom_id(c.seq),
                "method": "POST",
                "url": self.endpoint,
                "body": body_with_model(c, &self.model)?,
            });
            serde_json::to_writer(&mut out, &line).map_err(|e| Error::InvalidInput {
                reason: e.to_string(),
            })?;
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Upload the provider batch's input file; its id.
    pub async fn upload(
        &self,
        job_id: &str,
        number: i64,
        requests: &[BatchLine<'_>],
    ) -> Result<String, Error> {
        let file = Bytes::from(self.input_file(requests)?);
        let payload = Payload::Multipart {
            fields: vec![("purpose".into(), "batch".into())],
            part: "file".into(),
            file_name: format!("{}.jsonl", tag(job_id, number)),
            file,
        };
        let answer = self
            .transport
            .call(Method::POST, "/files", payload, Retry::Policy)
            .await?;
        id_of(&parse(&answer)?)
    }

    /// Create the batch over an uploaded file; its id.
    pub async fn create(&self, job_id: &str, number: i64, file_id: &str) -> Result<String, Error> {
        let body = json!({
            "input_file_id": file_id,
            "endpoint": self.endpoint,
            "completion_window": "24h",
            "metadata": {"ferrobatch_job": job_id, "ferrobatch_chunk": number.to_string()},
        });
        let answer = self
            .transport
            .call(
                Method::POST,
                "/batches",
                Payload::Json(Bytes::from(body.to_string())),
                Retry::NotIfDone,
            )
            .await?;
        id_of(&parse(&answer)?)
    }

    /// The batch made for this provider batch, searched newest first back to an hour before the intent.
    pub async fn find(
        &self,
        job_id: &str,
        number: i64,
        intent_at: f64,
    ) -> Result<Option<String>, Error> {
        let number = number.to_string();
        let mut after: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let path = match &after {
                Some(a) => format!("/batches?limit=100&after={a}"),
                None => "/batches?limit=100".to_string(),
            };
            let page = parse(&self.transport.get(&path).await?)?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| format_error("a `data` list"))?;
            let mut older = false;
            for b in data {
                let meta = |k: &str| b.pointer(&format!("/metadata/{k}")).and_then(Value::as_str);
                if meta("ferrobatch_job") == Some(job_id)
                    && meta("ferrobatch_chunk") == Some(number.as_str())
                {
                    return Ok(Some(id_of(b)?));
                }
                let created = b.get("created_at").and_then(Value::as_f64).unwrap_or(0.0);
                older |= created < intent_at - FIND_MARGIN;
            }
            let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            after = data
                .last()
                .and_then(|b| b.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string);
            if older || !more || after.is_none() {
                break;
            }
        }
        Ok(None)
    }

    /// The batch now.
    pub async fn get(&self, batch_id: &str) -> Result<Remote, Error> {
        let answer = self.transport.get(&format!("/batches/{batch_id}")).await?;
        remote(parse(&answer)?)
    }

    /// Ask for the batch to be cancelled.
    pub async fn cancel(&self, batch_id: &str) -> Result<(), Error> {
        self.transport
            .post_empty(&format!("/batches/{batch_id}/cancel"))
            .await
            .map(|_| ())
    }

    /// The lines of the output file and the error file, whatever the status.
    pub async fn results(&self, remote: &Remote) -> Result<Vec<Line>, Error> {
        let mut lines = Vec::new();
        for key in ["output_file_id", "error_file_id"] {
            let Some(file) = remote.raw.get(key).and_then(Value::as_str) else {
                continue;
            };
            let bytes = self
                .transport
                .get(&format!("/files/{file}/content"))
                .await?;
            lines.extend(jsonl(&bytes).filter_map(|l| line_outcome(&l)));
        }
        Ok(lines)
    }
}

impl BatchProvider for OpenAiBatches {
    fn basics(&self) -> &BatchBasics {
        &self.basics
    }
    fn transport(&self) -> &crate::http::Transport {
        &self.transport
    }
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn default_model(&self) -> &str {
        &self.model
    }
    fn upload<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        requests: &'a [BatchLine<'a>],
    ) -> BatchFuture<'a, Option<String>> {
        Box::pin(async move { self.upload(job_id, batch, requests).await.map(Some) })
    }
    fn create<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        file_id: Option<&'a str>,
        _requests: &'a [BatchLine<'a>],
    ) -> BatchFuture<'a, String> {
        Box::pin(async move {
            let file = file_id.ok_or_else(|| Error::InvalidInput {
                reason: "an OpenAI batch needs its uploaded input file".into(),
            })?;
            OpenAiBatches::create(self, job_id, batch, file).await
        })
    }
    fn find<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        intent_at: f64,
        _requests: u64,
        _exclude: &'a [String],
    ) -> BatchFuture<'a, Option<String>> {
        Box::pin(OpenAiBatches::find(self, job_id, batch, intent_at))
    }
    fn get<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, Remote> {
        Box::pin(OpenAiBatches::get(self, batch_id))
    }
    fn cancel<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, ()> {
        Box::pin(OpenAiBatches::cancel(self, batch_id))
    }
    fn results<'a>(&'a self, remote: &'a Remote) -> BatchFuture<'a, Vec<Line>> {
        Box::pin(OpenAiBatches::results(self, remote))
    }
}

/// The OpenAI Batch API beside an online client: chat completions, and embeddings of an
/// OpenAI-compatible embeddings client.
pub fn make(setup: &BatchSetup<'_>) -> Result<Box<dyn BatchProvider>, Error> {
    let takes = setup.endpoint == "/v1/chat/completions"
        || (setup.endpoint == "/v1/embeddings" && setup.transport.provider() == Provider::OpenAi);
    if !takes {
        return Err(setup.unsupported("chat completions and OpenAI embeddings"));
    }
    Ok(Box::new(OpenAiBatches {
        basics: setup.basics,
        transport: setup.sibling(setup.transport.base_url())?,
        endpoint: setup.endpoint.to_string(),
        model: setup.model.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_line_shape_has_an_outcome() {
        let ok = json!({"id": "batch_req_1", "custom_id": "r1", "response": {"status_code": 200,
            "request_id": "req", "body": {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}},
            "error": null});
        let (id, o) = line_outcome(&ok).unwrap();
        assert_eq!(id, "r1");
        assert!(matches!(
            o,
            RequestOutcome::Ok {
                input_tokens: 3,
                output_tokens: 4,
                ..
            }
        ));
        let expired = json!({"id": "batch_req_123", "custom_id": "r3", "response": null,
            "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}});
        assert!(matches!(
            line_outcome(&expired).unwrap().1,
            RequestOutcome::Retryable(Error::ProviderBatch { ref code, .. }) if code == "batch_expired"
        ));
        let zero = json!({"custom_id": "r4", "response": {"status_code": 0, "request_id": "", "body": {}}, "error": null});
        assert!(matches!(
            line_outcome(&zero).unwrap().1,
            RequestOutcome::Retryable(_)
        ));
        let bad = json!({"custom_id": "r5", "response": {"status_code": 400, "body": {"error": {"message": "bad model", "type": "invalid_request_error", "code": "model_not_found"}}}});
        match line_outcome(&bad).unwrap().1 {
            RequestOutcome::Permanent(Error::Status {
                status,
                message,
                code,
                ..
            }) => {
                assert_eq!(
                    (status, message.as_str(), code.as_deref()),
                    (400, "bad model", Some("model_not_found"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            line_outcome(&json!({"custom_id": "r6", "response": null, "error": null})).is_none()
        );
    }

    #[test]
    fn statuses_map_to_phases_and_unknown_ones_stay_unknown() {
        assert_eq!(phase("finalizing"), Phase::Running);
        assert_eq!(phase("cancelling"), Phase::Cancelling);
        assert_eq!(phase("expired"), Phase::Ended);
        assert_eq!(phase("paused_for_review"), Phase::Unknown);
        let r = remote(json!({"id": "batch_1", "status": "failed", "request_counts": {"total": 2, "completed": 0, "failed": 0},
            "errors": {"object": "list", "data": [{"code": "invalid_json_line", "line": 1, "message": "no", "param": null}]}})).unwrap();
        assert_eq!(
            r.errors,
            vec![("invalid_json_line".into(), "no".into(), Some(1))]
        );
        assert_eq!(r.describe(), "failed (0 succeeded, 0 failed of 2)");
    }
}
