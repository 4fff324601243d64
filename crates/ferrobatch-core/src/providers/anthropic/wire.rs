//! Anthropic's Messages API: `POST {base_url}/messages` (key in `x-api-key`,
//! `anthropic-version: 2023-06-01`), one request per item, unknown body fields passed through.
//! Error bodies (`{"type": "error", "error": {"type", "message"}}`) are parsed by the
//! transport like every provider's; 529 (overloaded) is retried as any 5xx.

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::http::chunks::{StreamFormat, StreamRequest};
use serde_json::{Map, Value};

use std::sync::Arc;

use crate::error::Error;
use crate::http::transport::Transport;
use crate::limits::estimate::estimate_json_tokens;
use crate::limits::RateLimit;

/// The API version this client speaks.
pub const API_VERSION: &str = "2023-06-01";

pub use super::usage::MessageUsage;

/// The Messages endpoint on its transport.
#[derive(Debug)]
pub struct MessagesClient {
    /// The default model, used when a request body names none.
    pub model: String,
    /// The HTTP client (x-api-key auth, the version header among its headers).
    pub transport: Transport,
    /// Anthropic meters output tokens apart from input: when set, this budget is charged
    /// `max_tokens` before each request (the rest refunded from the usage), and the
    /// transport's token budget counts input tokens only.
    pub output_limiter: Option<Arc<dyn RateLimit>>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        reason: reason.into(),
    }
}

impl MessagesClient {
    /// Send one Messages request; the response JSON object as is.
    ///
    /// `body` holds `messages`, `max_tokens` and any other field the API takes (`system`,
    /// `temperature`, `tools`, ...); `model` is added when absent. Streaming is refused.
    pub async fn create(&self, mut body: Map<String, Value>) -> Result<Value, Error> {
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(invalid(
                "stream=True is not taken by create(); use stream() for a streamed answer",
            ));
        }
        let (model, max_tokens) = self.checked(&mut body)?;
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| invalid(format!("the request body cannot be sent as JSON: {e}")))?;
        let est = match &self.output_limiter {
            Some(out) => {
                out.acquire(max_tokens).await?;
                estimate_input(&body)
            }
            None => estimate_input(&body) + max_tokens,
        };
        let refund = |output: u64| {
            if let Some(out) = &self.output_limiter {
                out.settle(max_tokens, output);
            }
        };
        let answer = match self
            .transport
            .post("/messages", Bytes::from(bytes), &model, est)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                refund(0);
                return Err(e);
            }
        };
        let usage = self.transport.usage();
        let value: Value = serde_json::from_slice(&answer).map_err(|e| {
            usage.record_failure(&model);
            Error::ResponseFormat {
                reason: format!("the Messages response is not JSON: {e}"),
            }
        })?;
        if !value.get("content").is_some_and(Value::is_array) {
            usage.record_failure(&model);
            return Err(Error::ResponseFormat {
                reason: "the Messages response has no `content` list".into(),
            });
        }
        let u = MessageUsage::of(&value);
        if self.output_limiter.is_some() {
            self.transport.settle_tokens(est, u.all_input());
            refund(u.output_tokens);
        } else {
            self.transport
                .settle_tokens(est, u.all_input() + u.output_tokens);
        }
        let cost = u.cost(usage, &model);
        usage.record_success_costing(&model, u.all_input(), u.output_tokens, cost);
        Ok(value)
    }
}

impl MessagesClient {
    /// Check a body's `messages`, `max_tokens` and `model` (adding the default model when
    /// absent); the model and `max_tokens`.
    fn checked(&self, body: &mut Map<String, Value>) -> Result<(String, u64), Error> {
        if !body.get("messages").is_some_and(Value::is_array) {
            return Err(invalid("a Messages request needs `messages`: a list"));
        }
        let max_tokens = match body.get("max_tokens") {
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("`max_tokens` must be a positive integer"))?,
            None => return Err(invalid("a Messages request needs `max_tokens`")),
        };
        let model = match body.get("model") {
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err(invalid("`model` must be a string")),
            None => {
                body.insert("model".into(), Value::from(self.model.as_str()));
                self.model.clone()
            }
        };
        Ok((model, max_tokens))
    }
}

impl crate::http::ChatApi for MessagesClient {
    fn model(&self) -> &str {
        &self.model
    }

    fn transport(&self) -> &Transport {
        &self.transport
    }

    fn create(&self, body: Map<String, Value>) -> BoxFuture<'_, Result<Value, Error>> {
        Box::pin(MessagesClient::create(self, body))
    }

    fn usage_of(&self, response: &Value) -> (u64, u64) {
        let u = MessageUsage::of(response);
        (u.all_input(), u.output_tokens)
    }

    fn cost_of(&self, response: &Value, model: &str) -> Option<f64> {
        MessageUsage::of(response).cost(self.transport.usage(), model)
    }

    fn job_path(&self) -> &'static str {
        "/v1/messages"
    }

    fn stream_request(&self, mut body: Map<String, Value>) -> Result<StreamRequest, Error> {
        let (model, max_tokens) = self.checked(&mut body)?;
        body.insert("stream".into(), Value::Bool(true));
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| invalid(format!("the request body cannot be sent as JSON: {e}")))?;
        Ok(StreamRequest {
            path: "/messages",
            body: Bytes::from(bytes),
            model,
            input_estimate: estimate_input(&body),
            output_reserved: max_tokens,
            output_on_transport: self.output_limiter.is_none(),
        })
    }

    fn stream_format(&self) -> Box<dyn StreamFormat> {
        Box::<super::stream::MessageEvents>::default()
    }

    fn reserve_output(&self, tokens: u64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            match &self.output_limiter {
                Some(out) => out.acquire(tokens).await,
                None => Ok(()),
            }
        })
    }

    fn release_output(&self, reserved: u64, used: u64) {
        if let Some(out) = &self.output_limiter {
            out.settle(reserved, used);
        }
    }
}

/// Anthropic's Messages format (`/messages`).
pub fn chat(setup: crate::http::ChatSetup) -> Result<Box<dyn crate::http::ChatApi>, Error> {
    Ok(Box::new(MessagesClient {
        model: setup.model,
        transport: setup.transport,
        output_limiter: setup.output_limiter,
    }))
}

/// Estimated input tokens of a request: the text of `system` and `messages` by the chars/4
/// rule.
pub fn estimate_input(body: &Map<String, Value>) -> u64 {
    let system = body.get("system").map_or(0, estimate_json_tokens);
    let messages = body.get("messages").map_or(0, estimate_json_tokens);
    (system + messages).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_cached_input() {
        let v = serde_json::json!({"usage": {"input_tokens": 5, "output_tokens": 7,
            "cache_creation_input_tokens": 2, "cache_read_input_tokens": 3}});
        let u = MessageUsage::of(&v);
        assert_eq!((u.all_input(), u.output_tokens), (10, 7));
        assert_eq!(
            MessageUsage::of(&serde_json::json!({})),
            MessageUsage::default()
        );
    }

    #[test]
    fn input_estimate_counts_system_and_messages() {
        let body: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "system": "12345678",
            "messages": [{"role": "user", "content": "1234"}]
        }))
        .unwrap();
        // "12345678" (2) + "user" (1) + "1234" (1)
        assert_eq!(estimate_input(&body), 4);
    }
}
