//! `Endpoint`: what a job's stored request bodies are sent to (an OpenAI-compatible chat or
//! embeddings client), and how an outcome is written down (response JSON, tokens, cost, or an
//! error object).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::http::{ChatRequest, Chatter, Embedder};
use crate::limits::estimate::estimate_tokens;

/// A response, ready to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The response body as JSON text (the OpenAI Batch API's `response.body`).
    pub response: String,
    /// Tokens the request used.
    pub input_tokens: u64,
    /// Tokens it produced.
    pub output_tokens: u64,
    /// Its cost in USD, when the client has a price for the model.
    pub cost: Option<f64>,
}

impl From<Sent> for crate::jobs::model::Completion {
    /// A successful outcome, as recorded.
    fn from(sent: Sent) -> Self {
        crate::jobs::model::Completion {
            ok: true,
            response: Some(sent.response),
            error: None,
            input_tokens: sent.input_tokens,
            output_tokens: sent.output_tokens,
            cost: sent.cost,
        }
    }
}

/// The client a runner sends a job's requests through.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `/v1/chat/completions` or `/v1/messages` (the provider's format): each body is a
    /// chat request.
    Chat(Arc<Chatter>),
    /// `/v1/embeddings`: each body holds `input` (a text or a list of texts).
    Embeddings(Arc<Embedder>),
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        reason: reason.into(),
    }
}

impl Endpoint {
    /// The OpenAI Batch API `url` its requests have.
    pub fn path(&self) -> &'static str {
        match self {
            Endpoint::Chat(c) => c.api.job_path(),
            Endpoint::Embeddings(_) => "/v1/embeddings",
        }
    }

    /// The client's default model (for bodies that name none).
    pub fn model(&self) -> &str {
        match self {
            Endpoint::Chat(c) => c.api.model(),
            Endpoint::Embeddings(e) => e.model_name(),
        }
    }

    /// The client's HTTP transport.
    pub fn transport(&self) -> &crate::http::Transport {
        match self {
            Endpoint::Chat(c) => c.api.transport(),
            Endpoint::Embeddings(e) => &e.transport,
        }
    }

    /// Send one stored request body (answered from the client's cache when it has one).
    pub async fn send(&self, body: &str) -> Result<Sent, Error> {
        let body: Map<String, Value> = serde_json::from_str(body)
            .map_err(|e| invalid(format!("the stored body is not a JSON object: {e}")))?;
        match self {
            Endpoint::Chat(client) => chat(client, body).await,
            Endpoint::Embeddings(embedder) => embed(embedder, body).await,
        }
    }
}

/// A chat request's outcome. Answered from the cache, it is recorded as the response it
/// was, with its tokens, at no cost (nothing was paid).
async fn chat(client: &Chatter, body: Map<String, Value>) -> Result<Sent, Error> {
    let model = client.model_of(&body).to_string();
    let answer = client
        .answer_many(vec![ChatRequest {
            body: Ok(body),
            use_cache: true,
        }])
        .await
        .pop()
        .expect("one answer per request");
    let value = answer.result?;
    let (input, output) = client.api.usage_of(&value);
    Ok(Sent {
        response: value.to_string(),
        input_tokens: input,
        output_tokens: output,
        cost: if answer.cached {
            Some(0.0)
        } else {
            client.api.cost_of(&value, &model)
        },
    })
}

async fn embed(embedder: &Embedder, body: Map<String, Value>) -> Result<Sent, Error> {
    let texts: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("`input` must be a string or a list of strings"))?,
        _ => {
            return Err(invalid(
                "`input` must be a string or a non-empty list of strings",
            ))
        }
    };
    let each: Vec<u64> = texts.iter().map(|t| estimate_tokens(t).max(1)).collect();
    let tokens: u64 = each.iter().sum();
    let (vectors, cached) = embedder
        .embed_marked(texts.into_iter().map(Ok).collect())
        .await;
    let vectors = vectors.into_iter().collect::<Result<Vec<_>, Error>>()?;
    // What was paid: the texts the cache did not answer.
    let sent: u64 = each
        .iter()
        .zip(&cached)
        .filter(|(_, c)| !**c)
        .map(|(t, _)| t)
        .sum();
    let model = embedder.model_name().to_string();
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    let response = json!({
        "object": "list",
        "data": data,
        "model": body.get("model").cloned().unwrap_or(Value::from(model.as_str())),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(Sent {
        response: response.to_string(),
        input_tokens: tokens,
        output_tokens: 0,
        cost: embedder.transport.usage().cost(&model, sent, 0),
    })
}

/// A failed request's error object: `type` (the Python class name), `message`, and `status`,
/// `code`, `param` when the server gave them (a provider batch's `code` too).
pub fn error_json(e: &Error) -> String {
    let mut out = Map::new();
    out.insert("type".into(), Value::from(e.type_name()));
    out.insert("message".into(), Value::from(e.to_string()));
    if let Error::Status {
        status,
        code,
        param,
        ..
    } = e
    {
        out.insert("status".into(), Value::from(*status));
        if let Some(c) = code {
            out.insert("code".into(), Value::from(c.as_str()));
        }
        if let Some(p) = param {
            out.insert("param".into(), Value::from(p.as_str()));
        }
    }
    if let Error::ProviderBatch { code, .. } = e {
        out.insert("code".into(), Value::from(code.as_str()));
    }
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_objects_carry_type_status_and_code() {
        let e = Error::Status {
            provider: crate::error::Provider::OpenAi,
            status: 400,
            message: "bad".into(),
            body: None,
            code: Some("invalid_value".into()),
            param: None,
        };
        let v: Value = serde_json::from_str(&error_json(&e)).unwrap();
        assert_eq!(v["type"], "BadRequestError");
        assert_eq!(v["status"], 400);
        assert_eq!(v["code"], "invalid_value");
        assert!(v.get("param").is_none());
        let v: Value = serde_json::from_str(&error_json(&Error::Connection {
            message: "refused".into(),
        }))
        .unwrap();
        assert_eq!(v["type"], "APIConnectionError");
        assert_eq!(v["message"], "connection error: refused");
    }
}
