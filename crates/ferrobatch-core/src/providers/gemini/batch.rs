//! Gemini's Batch Mode: a chat-completions job's requests, each translated to a
//! `GenerateContentRequest`, inline in `POST /models/{model}:batchGenerateContent` under the
//! display name of the job and provider batch (found again by it after a crash); the batch is an
//! operation polled at `GET /batches/{id}` (`BATCH_STATE_*`, or the SDK's `JOB_STATE_*`; its
//! counts arrive as JSON strings), cancelled at `POST /batches/{id}:cancel`. Each inline
//! response is translated back to a chat completion, so a job's output has one shape whether
//! it ran online (Gemini's OpenAI-compatible endpoint) or here.

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::error::{Error, Provider};
use crate::http::transport::{Payload, Retry, Transport};
use crate::providers::batch::{
    body_with_model, custom_id, not_run, status_outcome, tag, BatchBasics, BatchFuture,
    BatchLimits, BatchLine, BatchProvider, BatchSetup, Line, Phase, Remote, RequestOutcome,
};

/// Inline requests must stay under 20 MB; one model per batch.
/// How often one of its batches is polled by default.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

pub const LIMITS: BatchLimits = BatchLimits {
    requests: 50_000,
    bytes: 19 * 1024 * 1024,
    line_overhead: 64,
    one_model: true,
};

/// Most pages of the batch list read while searching.
const FIND_PAGES: usize = 20;

/// Gemini's Batch Mode on the Developer API.
#[derive(Debug)]
pub struct GeminiBatches {
    /// The provider's batch-API facts (from its registry entry).
    pub basics: BatchBasics,
    /// A transport on `.../v1beta` with `x-goog-api-key`, its usage book at batch prices.
    pub transport: Transport,
    /// The default model, for bodies without one.
    pub model: String,
}

const API: &str = "the Gemini batch API";

fn parse(bytes: &[u8]) -> Result<Value, Error> {
    crate::providers::batch::parse_answer(API, bytes)
}

fn name_of(v: &Value) -> Result<String, Error> {
    crate::providers::batch::text_field(API, v, "name")
}

/// The chat body fields [`to_gemini`] translates; the bindings refuse others at submit.
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "seed",
    "response_format",
];

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// An OpenAI chat request as a Gemini `GenerateContentRequest`: system messages become the
/// `systemInstruction`, `assistant` turns `model` turns, and the sampling settings the
/// `generationConfig`.
pub fn to_gemini(body: &Map<String, Value>) -> Value {
    let mut system = Vec::new();
    let mut contents = Vec::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let text = text_of(m.get("content").unwrap_or(&Value::Null));
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(json!({ "text": text })),
            Some("assistant") => contents.push(json!({"role": "model", "parts": [{"text": text}]})),
            _ => contents.push(json!({"role": "user", "parts": [{"text": text}]})),
        }
    }
    let mut config = Map::new();
    let mut put = |from: &str, to: &str| {
        if let Some(v) = body.get(from) {
            config.insert(to.into(), v.clone());
        }
    };
    put("max_tokens", "maxOutputTokens");
    put("max_completion_tokens", "maxOutputTokens");
    put("temperature", "temperature");
    put("top_p", "topP");
    put("n", "candidateCount");
    put("seed", "seed");
    match body.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(v @ Value::Array(_)) => {
            config.insert("stopSequences".into(), v.clone());
        }
        _ => {}
    }
    let format = body.get("response_format").and_then(|f| f.get("type"));
    if format.and_then(Value::as_str) == Some("json_object") {
        config.insert("responseMimeType".into(), json!("application/json"));
    }
    let mut out = json!({ "contents": contents });
    if !system.is_empty() {
        out["systemInstruction"] = json!({ "parts": system });
    }
    if !config.is_empty() {
        out["generationConfig"] = Value::Object(config);
    }
    out
}

/// A `GenerateContentResponse` as an OpenAI chat completion (`created` in Unix seconds); its
/// input and output tokens.
pub fn to_chat(response: &Value, key: &str, model: &str, created: u64) -> (Value, u64, u64) {
    let choices: Vec<Value> = response
        .get("candidates")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let text = text_of(c.pointer("/content/parts").unwrap_or(&Value::Null));
            let finish = match c.get("finishReason").and_then(Value::as_str) {
                Some("STOP") | None => "stop".to_string(),
                Some("MAX_TOKENS") => "length".to_string(),
                Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT") => {
                    "content_filter".to_string()
                }
                Some(other) => other.to_ascii_lowercase(),
            };
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            json!({"index": index, "message": {"role": "assistant", "content": text},
                   "finish_reason": finish})
        })
        .collect();
    let n = |k: &str| {
        response
            .pointer(&format!("/usageMetadata/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let input = n("promptTokenCount");
    let output = n("candidatesTokenCount") + n("thoughtsTokenCount");
    let chat = json!({
        "id": format!("chatcmpl-{}", response.get("responseId").and_then(Value::as_str).unwrap_or(key)),
        "object": "chat.completion",
        "created": created,
        "model": response.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    });
    (chat, input, output)
}

/// The HTTP status of a `google.rpc.Code`.
fn http_status(code: u64) -> u16 {
    match code {
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        1 => 499,
        4 => 504,
        14 => 503,
        _ => 500,
    }
}

/// The state word without its prefix (`BATCH_STATE_RUNNING`, `JOB_STATE_RUNNING`: `RUNNING`).
pub fn phase(state: &str) -> Phase {
    let bare = state
        .strip_prefix("BATCH_STATE_")
        .or_else(|| state.strip_prefix("JOB_STATE_"))
        .unwrap_or(state);
    match bare {
        "PENDING" | "QUEUED" => Phase::Validating,
        "RUNNING" => Phase::Running,
        "SUCCEEDED" | "FAILED" | "CANCELLED" | "EXPIRED" => Phase::Ended,
        _ => Phase::Unknown,
    }
}

/// A count that may come as a number or (int64 in JSON) a string.
fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A batch operation as a [`Remote`].
pub fn remote(raw: Value) -> Result<Remote, Error> {
    let id = name_of(&raw)?;
    let meta = raw.get("metadata").unwrap_or(&raw);
    let status = meta
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let stats = meta.get("batchStats");
    let counts = stats.and_then(|s| {
        let total = count(s.get("requestCount"))?;
        let ok = count(s.get("successfulRequestCount")).unwrap_or(0);
        let failed = count(s.get("failedRequestCount")).unwrap_or(0);
        Some((ok, failed, total))
    });
    let errors = raw
        .get("error")
        .map(|e| {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            vec![("batch_failed".to_string(), msg.to_string(), None)]
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

/// Every inline response of an ended batch as an outcome.
pub fn lines(remote: &Remote, model: &str) -> Vec<Line> {
    let raw = &remote.raw;
    let inlined = raw
        .pointer("/metadata/output/inlinedResponses/inlinedResponses")
        .or_else(|| raw.pointer("/response/inlinedResponses/inlinedResponses"))
        .and_then(Value::as_array);
    let Some(items) = inlined else {
        return Vec::new();
    };
    // When the batch ended, as the chat completions' `created`.
    let meta = raw.get("metadata").unwrap_or(raw);
    let created = ["endTime", "updateTime", "createTime"]
        .iter()
        .find_map(|k| {
            meta.get(*k)
                .and_then(Value::as_str)
                .and_then(crate::providers::batch::rfc3339)
        })
        .unwrap_or(0.0) as u64;
    items
        .iter()
        .filter_map(|item| {
            let key = item.pointer("/metadata/key")?.as_str()?.to_string();
            let outcome = if let Some(e) = item.get("error") {
                let code = e.get("code").and_then(Value::as_u64).unwrap_or(13);
                status_outcome(Provider::Gemini, http_status(code), &json!({ "error": e }))
            } else if let Some(r) = item.get("response") {
                let (body, input_tokens, output_tokens) = to_chat(r, &key, model, created);
                RequestOutcome::Ok {
                    body,
                    input_tokens,
                    output_tokens,
                    cached: (0, 0),
                }
            } else {
                not_run(
                    Provider::Gemini,
                    "missing_output",
                    "an empty inline response",
                )
            };
            Some((key, outcome))
        })
        .collect()
}

impl GeminiBatches {
    /// Create the batch with the translated requests inline; its name (`batches/...`).
    pub async fn create(
        &self,
        job_id: &str,
        number: i64,
        requests: &[BatchLine<'_>],
    ) -> Result<String, Error> {
        let mut model = self.model.clone();
        let mut items = Vec::with_capacity(requests.len());
        for (i, c) in requests.iter().enumerate() {
            let body = body_with_model(c, &self.model)?;
            if i == 0 {
                if let Some(m) = body.get("model").and_then(Value::as_str) {
                    model = m.to_string();
                }
            }
            items.push(json!({"request": to_gemini(&body), "metadata": {"key": custom_id(c.seq)}}));
        }
        let model = model.trim_start_matches("models/");
        let body = json!({"batch": {
            "display_name": tag(job_id, number),
            "input_config": {"requests": {"requests": items}},
        }});
        let answer = self
            .transport
            .call(
                Method::POST,
                &format!("/models/{model}:batchGenerateContent"),
                Payload::Json(Bytes::from(body.to_string())),
                Retry::NotIfDone,
            )
            .await?;
        name_of(&parse(&answer)?)
    }

    /// The batch made for this provider batch, by its display name.
    pub async fn find(&self, job_id: &str, number: i64) -> Result<Option<String>, Error> {
        let want = tag(job_id, number);
        let mut token: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let path = match &token {
                Some(t) => format!("/batches?pageSize=100&pageToken={t}"),
                None => "/batches?pageSize=100".to_string(),
            };
            let page = parse(&self.transport.get(&path).await?)?;
            for op in page
                .get("operations")
                .or_else(|| page.get("batches"))
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
            {
                let meta = op.get("metadata").unwrap_or(op);
                let name = meta
                    .get("displayName")
                    .or_else(|| meta.get("display_name"))
                    .and_then(Value::as_str);
                if name == Some(want.as_str()) {
                    return Ok(Some(name_of(op)?));
                }
            }
            token = page
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(None)
    }

    /// The batch now.
    pub async fn get(&self, name: &str) -> Result<Remote, Error> {
        let answer = self.transport.get(&format!("/{name}")).await?;
        remote(parse(&answer)?)
    }

    /// Ask for the batch to be cancelled.
    pub async fn cancel(&self, name: &str) -> Result<(), Error> {
        self.transport
            .post_empty(&format!("/{name}:cancel"))
            .await
            .map(|_| ())
    }

    /// Every inline response of an ended batch (none for an expired one).
    pub fn results(&self, remote: &Remote) -> Result<Vec<Line>, Error> {
        Ok(lines(remote, &self.model))
    }
}

impl BatchProvider for GeminiBatches {
    fn basics(&self) -> &BatchBasics {
        &self.basics
    }
    fn transport(&self) -> &crate::http::Transport {
        &self.transport
    }
    fn endpoint(&self) -> &str {
        "/v1/chat/completions"
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
        Box::pin(GeminiBatches::create(self, job_id, batch, requests))
    }
    fn find<'a>(
        &'a self,
        job_id: &'a str,
        batch: i64,
        intent_at: f64,
        requests: u64,
        exclude: &'a [String],
    ) -> BatchFuture<'a, Option<String>> {
        let _ = (intent_at, requests, exclude);
        Box::pin(GeminiBatches::find(self, job_id, batch))
    }
    fn get<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, Remote> {
        Box::pin(GeminiBatches::get(self, batch_id))
    }
    fn cancel<'a>(&'a self, batch_id: &'a str) -> BatchFuture<'a, ()> {
        Box::pin(GeminiBatches::cancel(self, batch_id))
    }
    fn results<'a>(&'a self, remote: &'a Remote) -> BatchFuture<'a, Vec<Line>> {
        let lines = GeminiBatches::results(self, remote);
        Box::pin(async move { lines })
    }
}

/// Gemini's Batch Mode beside a chat client on Gemini's OpenAI-compatible routes
/// (`.../v1beta/openai`): the batch routes are the native ones beside them.
pub fn make(setup: &BatchSetup<'_>) -> Result<Box<dyn BatchProvider>, Error> {
    if setup.endpoint != "/v1/chat/completions" {
        return Err(setup.unsupported("chat completions"));
    }
    let base = setup.transport.base_url();
    Ok(Box::new(GeminiBatches {
        basics: setup.basics,
        transport: setup.sibling(base.strip_suffix("/openai").unwrap_or(base))?,
        model: setup.model.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_translate_to_generate_content() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "gemini-2.5-flash",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                         {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "again"}],
            "max_tokens": 20, "temperature": 0.5, "stop": "END"}))
        .unwrap();
        let g = to_gemini(&body);
        assert_eq!(
            g["systemInstruction"],
            json!({"parts": [{"text": "be brief"}]})
        );
        assert_eq!(
            g["contents"][1],
            json!({"role": "model", "parts": [{"text": "hello"}]})
        );
        assert_eq!(g["contents"][0]["parts"][0]["text"], "hi");
        assert_eq!(
            g["generationConfig"],
            json!({"maxOutputTokens": 20, "temperature": 0.5, "stopSequences": ["END"]})
        );
    }

    #[test]
    fn states_counts_and_rows_of_a_succeeded_batch_with_failed_rows() {
        assert_eq!(phase("JOB_STATE_SUCCEEDED"), Phase::Ended);
        assert_eq!(phase("BATCH_STATE_PENDING"), Phase::Validating);
        assert_eq!(phase("BATCH_STATE_PAUSED"), Phase::Unknown);
        let r = remote(json!({"name": "batches/b1", "metadata": {"state": "BATCH_STATE_SUCCEEDED",
            "batchStats": {"requestCount": "2", "successfulRequestCount": "1", "failedRequestCount": "1"},
            "output": {"inlinedResponses": {"inlinedResponses": [
                {"response": {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
                              "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1}},
                 "metadata": {"key": "r0"}},
                {"error": {"code": 3, "message": "Request contains an invalid argument."}, "metadata": {"key": "r1"}}]}}}})).unwrap();
        assert_eq!(r.counts, Some((1, 1, 2)));
        let l = lines(&r, "gemini-2.5-flash");
        match &l[0].1 {
            RequestOutcome::Ok {
                body,
                input_tokens: 4,
                output_tokens: 1,
                ..
            } => {
                assert_eq!(body["choices"][0]["message"]["content"], "ok");
                assert_eq!(body["choices"][0]["finish_reason"], "stop");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            l[1].1,
            RequestOutcome::Permanent(Error::Status { status: 400, .. })
        ));
    }
}
