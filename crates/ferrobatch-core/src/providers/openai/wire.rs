//! OpenAI-compatible APIs: `POST {base_url}/embeddings` (many inputs per request, vectors
//! matched by each datum's `index`, base64 float32 by default) and
//! `POST {base_url}/chat/completions` (one request per item, unknown body fields passed
//! through untouched).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::http::chunks::{StreamFormat, StreamRequest, DEFAULT_OUTPUT_RESERVATION};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::http::embed::{decode_base64, EmbeddingApi, Vector};
use crate::http::transport::Transport;
use crate::limits::estimate::estimate_json_tokens;

/// OpenAI's per-request cap on embedding inputs.
pub const MAX_INPUTS: usize = 2048;
/// OpenAI's per-request cap on summed embedding tokens.
pub const MAX_TOKENS: u64 = 300_000;

/// How vectors travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// Base64 of little-endian float32s: a quarter of the JSON and no float parsing.
    Base64,
    /// JSON arrays of numbers.
    Float,
}

/// The embeddings endpoint of one model.
#[derive(Debug)]
pub struct Embeddings {
    /// The model name sent in each request.
    pub model: String,
    /// `dimensions`, for models that can shorten their vectors.
    pub dimensions: Option<u32>,
    /// The format asked for; base64 falls back to floats for a server that refuses it.
    pub encoding: EncodingFormat,
    /// `user`, passed through when set.
    pub user: Option<String>,
    base64_refused: AtomicBool,
}

impl Embeddings {
    /// The endpoint for `model`.
    pub fn new(
        model: String,
        dimensions: Option<u32>,
        encoding: EncodingFormat,
        user: Option<String>,
    ) -> Self {
        Embeddings {
            model,
            dimensions,
            encoding,
            user,
            base64_refused: AtomicBool::new(false),
        }
    }

    fn base64(&self) -> bool {
        self.encoding == EncodingFormat::Base64 && !self.base64_refused.load(Ordering::Relaxed)
    }
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<Datum>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Datum {
    #[serde(default)]
    index: Option<usize>,
    embedding: EmbeddingValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Base64(String),
    Floats(Vec<f32>),
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::ResponseFormat {
        reason: reason.into(),
    }
}

impl EmbeddingApi for Embeddings {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> Option<u32> {
        self.dimensions
    }

    fn path(&self) -> String {
        "/embeddings".to_string()
    }

    fn body(&self, texts: &[&str]) -> Bytes {
        let mut body = Map::new();
        body.insert("model".into(), Value::from(self.model.as_str()));
        body.insert("input".into(), Value::from(texts.to_vec()));
        let format = if self.base64() { "base64" } else { "float" };
        body.insert("encoding_format".into(), Value::from(format));
        if let Some(d) = self.dimensions {
            body.insert("dimensions".into(), Value::from(d));
        }
        if let Some(u) = &self.user {
            body.insert("user".into(), Value::from(u.as_str()));
        }
        Bytes::from(serde_json::to_vec(&body).expect("a JSON map serializes"))
    }

    fn parse(&self, body: &[u8], n: usize) -> Result<(Vec<Vector>, Option<u64>), Error> {
        let resp: EmbeddingResponse = serde_json::from_slice(body).map_err(|e| {
            malformed(format!(
                "the embeddings response is not the documented JSON: {e}"
            ))
        })?;
        if resp.data.len() != n {
            return Err(malformed(format!(
                "the server returned {} embeddings for {n} inputs",
                resp.data.len()
            )));
        }
        let mut out: Vec<Option<Vector>> = (0..n).map(|_| None).collect();
        for (pos, d) in resp.data.into_iter().enumerate() {
            let i = d.index.unwrap_or(pos);
            if i >= n || out[i].is_some() {
                return Err(malformed(format!(
                    "embedding index {i} is out of range or repeated (batch of {n})"
                )));
            }
            out[i] = Some(match d.embedding {
                EmbeddingValue::Base64(s) => decode_base64(&s)?,
                EmbeddingValue::Floats(v) => v,
            });
        }
        let vectors: Vec<Vector> = out
            .into_iter()
            .map(|v| v.expect("n distinct indexes"))
            .collect();
        if let Some(first) = vectors.first() {
            if vectors.iter().any(|v| v.len() != first.len()) {
                return Err(malformed("the embeddings of one response differ in length"));
            }
        }
        Ok((vectors, resp.usage.and_then(|u| u.prompt_tokens)))
    }

    fn input_field(&self) -> &'static str {
        "input"
    }

    fn adapt(&self, error: &Error) -> bool {
        // Some OpenAI-compatible servers accept only float arrays.
        if let Error::Status {
            status: 400 | 422,
            message,
            param,
            ..
        } = error
        {
            let about_format =
                param.as_deref() == Some("encoding_format") || message.contains("encoding_format");
            if self.base64() && about_format {
                self.base64_refused.store(true, Ordering::Relaxed);
                return true;
            }
        }
        false
    }
}

/// The chat completions endpoint: one request per item.
#[derive(Debug)]
pub struct Chat {
    /// The default model, used when a request body names none.
    pub model: String,
}

impl Chat {
    /// Send one chat completion request; the response JSON object as is.
    ///
    /// `body` holds `messages` and any other field the server takes; `model` is added when
    /// absent. Streaming is refused (a batcher returns whole responses).
    pub async fn create(
        &self,
        transport: &Transport,
        mut body: Map<String, Value>,
    ) -> Result<Value, Error> {
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(Error::InvalidInput {
                reason: "stream=True is not taken by create(); use stream() for a streamed answer"
                    .to_string(),
            });
        }
        let model = self.model_of(&mut body)?;
        let bytes = serde_json::to_vec(&body).map_err(|e| Error::InvalidInput {
            reason: format!("the request body cannot be sent as JSON: {e}"),
        })?;
        let est = estimate_prompt_tokens(&body);
        let answer = transport
            .post("/chat/completions", Bytes::from(bytes), &model, est)
            .await?;
        let value: Value = serde_json::from_slice(&answer).map_err(|e| {
            transport.usage().record_failure(&model);
            malformed(format!("the chat response is not JSON: {e}"))
        })?;
        if !value.get("choices").is_some_and(Value::is_array) {
            transport.usage().record_failure(&model);
            return Err(malformed("the chat response has no `choices` list"));
        }
        let usage: Usage = value
            .get("usage")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default();
        let input = usage.prompt_tokens.unwrap_or(est);
        transport.settle_tokens(est, input + usage.completion_tokens.unwrap_or(0));
        transport
            .usage()
            .record_success(&model, input, usage.completion_tokens.unwrap_or(0));
        Ok(value)
    }
}

/// The chat endpoint on its transport: what a chat batcher and the job runner send through.
#[derive(Debug)]
pub struct ChatClient {
    /// The endpoint and its default model.
    pub chat: Chat,
    /// The HTTP client.
    pub transport: Transport,
}

impl ChatClient {
    /// Send one chat completion request (see [`Chat::create`]).
    pub async fn create(&self, body: Map<String, Value>) -> Result<Value, Error> {
        self.chat.create(&self.transport, body).await
    }
}

impl Chat {
    /// Check a body's `messages` and `model` (adding the default model when absent); the
    /// model it goes to.
    fn model_of(&self, body: &mut Map<String, Value>) -> Result<String, Error> {
        if !body.contains_key("messages") {
            return Err(Error::InvalidInput {
                reason: "a chat request needs `messages`".to_string(),
            });
        }
        match body.get("model") {
            Some(Value::String(m)) => Ok(m.clone()),
            Some(_) => Err(Error::InvalidInput {
                reason: "`model` must be a string".to_string(),
            }),
            None => {
                body.insert("model".into(), Value::from(self.model.as_str()));
                Ok(self.model.clone())
            }
        }
    }

    /// A body as a streaming request: `"stream": true`, and `stream_options.include_usage`
    /// unless the caller set it (without it the server sends no usage at all).
    pub fn stream_request(&self, mut body: Map<String, Value>) -> Result<StreamRequest, Error> {
        let model = self.model_of(&mut body)?;
        body.insert("stream".into(), Value::Bool(true));
        match body.get_mut("stream_options") {
            Some(Value::Object(o)) => {
                o.entry("include_usage").or_insert(Value::Bool(true));
            }
            Some(Value::Null) | None => {
                body.insert(
                    "stream_options".into(),
                    serde_json::json!({"include_usage": true}),
                );
            }
            Some(_) => {
                return Err(Error::InvalidInput {
                    reason: "`stream_options` must be an object".to_string(),
                })
            }
        }
        let input_estimate = body.get("messages").map_or(0, estimate_json_tokens).max(1);
        let output_reserved = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
            .unwrap_or(DEFAULT_OUTPUT_RESERVATION);
        let bytes = serde_json::to_vec(&body).map_err(|e| Error::InvalidInput {
            reason: format!("the request body cannot be sent as JSON: {e}"),
        })?;
        Ok(StreamRequest {
            path: "/chat/completions",
            body: Bytes::from(bytes),
            model,
            input_estimate,
            output_reserved,
            output_on_transport: true,
        })
    }
}

impl crate::http::ChatApi for ChatClient {
    fn model(&self) -> &str {
        &self.chat.model
    }

    fn transport(&self) -> &Transport {
        &self.transport
    }

    fn create(&self, body: Map<String, Value>) -> BoxFuture<'_, Result<Value, Error>> {
        Box::pin(ChatClient::create(self, body))
    }

    fn usage_of(&self, response: &Value) -> (u64, u64) {
        let usage: Usage = response
            .get("usage")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default();
        (
            usage.prompt_tokens.unwrap_or(0),
            usage.completion_tokens.unwrap_or(0),
        )
    }

    fn job_path(&self) -> &'static str {
        "/v1/chat/completions"
    }

    fn stream_request(&self, body: Map<String, Value>) -> Result<StreamRequest, Error> {
        self.chat.stream_request(body)
    }

    fn stream_format(&self) -> Box<dyn StreamFormat> {
        Box::<super::stream::ChatChunks>::default()
    }
}

/// The OpenAI-compatible chat format (`/chat/completions`).
pub fn chat(setup: crate::http::ChatSetup) -> Result<Box<dyn crate::http::ChatApi>, Error> {
    if setup.output_limiter.is_some() {
        return Err(Error::config(
            "output_rate_limiter",
            "only Anthropic's Messages API meters output tokens apart from input",
        ));
    }
    Ok(Box::new(ChatClient {
        chat: Chat { model: setup.model },
        transport: setup.transport,
    }))
}

/// Estimated prompt tokens of a chat request: the text of its messages by the chars/4 rule,
/// plus `max_tokens` (or `max_completion_tokens`) when set, since the rate budget counts them.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let prompt = body.get("messages").map_or(0, estimate_json_tokens);
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(0);
    prompt.max(1) + completion
}

/// The OpenAI-compatible embeddings format for `spec`.
pub fn embeddings(
    spec: &crate::http::EmbeddingSpec,
) -> Result<(Box<dyn EmbeddingApi>, usize), Error> {
    let encoding = match spec.encoding_format.as_str() {
        "base64" | "" => EncodingFormat::Base64,
        "float" => EncodingFormat::Float,
        other => {
            return Err(Error::config(
                "encoding_format",
                format!("must be 'base64' or 'float', got {other:?}"),
            ))
        }
    };
    let api = Embeddings::new(
        spec.model.clone(),
        spec.dimensions,
        encoding,
        spec.user.clone(),
    );
    Ok((Box::new(api), MAX_INPUTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Embeddings {
        Embeddings::new("m".into(), Some(8), EncodingFormat::Base64, None)
    }

    #[test]
    fn body_asks_for_base64_and_dimensions() {
        let body: Value = serde_json::from_slice(&api().body(&["a", "b"])).unwrap();
        assert_eq!(body["input"], serde_json::json!(["a", "b"]));
        assert_eq!(body["encoding_format"], "base64");
        assert_eq!(body["dimensions"], 8);
        assert_eq!(body["model"], "m");
    }

    #[test]
    fn vectors_follow_index_not_position() {
        let body = br#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}],
                        "usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        let (v, tokens) = api().parse(body, 2).unwrap();
        assert_eq!(v, vec![vec![1.0], vec![2.0]]);
        assert_eq!(tokens, Some(7));
    }

    #[test]
    fn wrong_counts_and_indexes_are_format_errors() {
        let a = api();
        let two = br#"{"data":[{"index":0,"embedding":[1.0]},{"index":0,"embedding":[1.0]}]}"#;
        assert!(matches!(a.parse(two, 2), Err(Error::ResponseFormat { .. })));
        let one = br#"{"data":[{"index":0,"embedding":[1.0]}]}"#;
        let e = a.parse(one, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed response: the server returned 1 embeddings for 2 inputs"
        );
        assert!(matches!(
            a.parse(b"{not json", 1),
            Err(Error::ResponseFormat { .. })
        ));
        let ragged = br#"{"data":[{"embedding":[1.0]},{"embedding":[1.0, 2.0]}]}"#;
        assert!(matches!(
            a.parse(ragged, 2),
            Err(Error::ResponseFormat { .. })
        ));
    }

    #[test]
    fn a_refused_base64_switches_to_floats_once() {
        let a = api();
        let err = Error::Status {
            provider: crate::error::Provider::OpenAi,
            status: 400,
            message: "unsupported encoding_format".into(),
            body: None,
            code: None,
            param: Some("encoding_format".into()),
        };
        assert!(a.adapt(&err));
        let body: Value = serde_json::from_slice(&a.body(&["x"])).unwrap();
        assert_eq!(body["encoding_format"], "float");
        assert!(!a.adapt(&err));
    }

    #[test]
    fn prompt_estimate_counts_message_text_and_completion_cap() {
        let body: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "messages": [{"role": "user", "content": "12345678"}],
            "max_tokens": 10
        }))
        .unwrap();
        // "user" (1) + "12345678" (2) + 10
        assert_eq!(estimate_prompt_tokens(&body), 13);
    }
}
