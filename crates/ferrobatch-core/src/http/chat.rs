//! Chat, provider-agnostic: one provider's chat endpoint behind [`ChatApi`] (the formats live
//! in `providers/`, chosen by the registry), and the [`Chatter`] the chat batchers and
//! clients send request bodies through, answering from a result cache when it was given one.
//!
//! Chat is cached only when a client was given a cache, and then every request is unless it
//! says otherwise. A request's key is its whole body as sent (the default model filled in) in
//! canonical JSON, so key order does not matter and every field counts; errors are never
//! stored.

use std::sync::Arc;

use futures_util::future::{join_all, BoxFuture};
use serde_json::{Map, Value};

use super::chunks::{StreamBook, StreamFormat, StreamRequest};
use super::Transport;
use crate::cache::{Cache, Key, KeyBuilder};
use crate::error::Error;
use crate::limits::RateLimit;

/// What a provider's chat endpoint looks like.
pub trait ChatApi: Send + Sync + std::fmt::Debug {
    /// The model a request gets when its body names none.
    fn model(&self) -> &str;
    /// The HTTP client.
    fn transport(&self) -> &Transport;
    /// Send one request body; the response object as the server sent it.
    fn create(&self, body: Map<String, Value>) -> BoxFuture<'_, Result<Value, Error>>;
    /// The (input, output) tokens a response reports.
    fn usage_of(&self, response: &Value) -> (u64, u64);
    /// What a response cost at the transport's prices for `model` (None: no price).
    fn cost_of(&self, response: &Value, model: &str) -> Option<f64> {
        let (input, output) = self.usage_of(response);
        self.transport().usage().cost(model, input, output)
    }
    /// The OpenAI Batch API `url` its requests have in a job (`/v1/chat/completions`).
    fn job_path(&self) -> &'static str;
    /// A body as a streaming request (`"stream": true` and what else the provider needs),
    /// with its estimates; the body's own mistakes are `InvalidInput`.
    fn stream_request(&self, body: Map<String, Value>) -> Result<StreamRequest, Error>;
    /// A fresh reader of this provider's streamed answers.
    fn stream_format(&self) -> Box<dyn StreamFormat>;
    /// Where the provider meters output apart (`output_on_transport: false`): take
    /// `tokens` from that budget before the stream is sent.
    fn reserve_output(&self, _tokens: u64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    /// Give back what a stream reserved with [`ChatApi::reserve_output`] beyond `used`.
    fn release_output(&self, _reserved: u64, _used: u64) {}
}

/// What a chat client is made of: its default model, its transport and (Anthropic) a budget
/// of output tokens.
pub struct ChatSetup {
    /// The default model.
    pub model: String,
    /// The HTTP client.
    pub transport: Transport,
    /// A budget charged `max_tokens` per request, where the provider meters output apart.
    pub output_limiter: Option<Arc<dyn RateLimit>>,
}

/// A provider's chat format for a setup.
pub type MakeChat = fn(ChatSetup) -> Result<Box<dyn ChatApi>, Error>;

/// A result cache as one chat client uses it.
#[derive(Debug)]
pub struct ChatCache {
    /// The cache (shared by every client given it).
    pub cache: Arc<Cache>,
    /// This client's key builder (provider and endpoint); each body is one key.
    pub keys: KeyBuilder,
}

/// One request of a batch: its body (or why it cannot be sent), and whether the cache may
/// answer it.
pub struct ChatRequest {
    /// The body, or the error the caller gets.
    pub body: Result<Map<String, Value>, Error>,
    /// False for `create(..., cache=False)`: sent, and its answer not stored.
    pub use_cache: bool,
}

/// What became of one request: its answer or error, and whether the cache answered it.
pub struct ChatAnswer {
    /// The response, or why there is none.
    pub result: Result<Value, Error>,
    /// Answered from the cache (nothing was sent or paid).
    pub cached: bool,
}

/// A chat client: a provider's endpoint and, if given, a result cache.
#[derive(Debug)]
pub struct Chatter {
    /// The provider's endpoint.
    pub api: Box<dyn ChatApi>,
    /// Answers already paid for (None: every request is sent).
    pub cache: Option<ChatCache>,
    /// Its streams so far.
    pub streams: StreamBook,
}

/// `value` as canonical JSON: object keys sorted at every depth, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

impl Chatter {
    /// A client without a cache.
    pub fn new(api: Box<dyn ChatApi>) -> Chatter {
        Chatter::with_cache(api, None)
    }

    /// A client answering from `cache` when it has one.
    pub fn with_cache(api: Box<dyn ChatApi>, cache: Option<ChatCache>) -> Chatter {
        Chatter {
            api,
            cache,
            streams: Default::default(),
        }
    }

    /// The model of a body: its own, else the client's default.
    pub fn model_of<'a>(&'a self, body: &'a Map<String, Value>) -> &'a str {
        match body.get("model") {
            Some(Value::String(m)) => m,
            _ => self.api.model(),
        }
    }

    /// The key of a body as it will be sent (the default model filled in).
    fn key(&self, c: &ChatCache, body: &Map<String, Value>) -> Key {
        if body.contains_key("model") {
            return c.keys.key(&canonical_json(&Value::Object(body.clone())));
        }
        let mut sent = body.clone();
        sent.insert("model".into(), Value::from(self.api.model()));
        c.keys.key(&canonical_json(&Value::Object(sent)))
    }

    /// Send every request of a batch concurrently; one result per request, in order. With a
    /// cache: one lookup for the batch, only the misses sent, one write of what came back.
    pub async fn create_many(&self, requests: Vec<ChatRequest>) -> Vec<Result<Value, Error>> {
        self.answer_many(requests)
            .await
            .into_iter()
            .map(|a| a.result)
            .collect()
    }

    /// [`Chatter::create_many`], telling which answers came from the cache.
    pub async fn answer_many(&self, requests: Vec<ChatRequest>) -> Vec<ChatAnswer> {
        let Some(c) = &self.cache else {
            let calls = requests.into_iter().map(|r| async move {
                ChatAnswer {
                    result: match r.body {
                        Ok(body) => self.api.create(body).await,
                        Err(e) => Err(e),
                    },
                    cached: false,
                }
            });
            return join_all(calls).await;
        };
        // The keys of the requests the cache may answer.
        let keys: Vec<Option<Key>> = requests
            .iter()
            .map(|r| match &r.body {
                Ok(body) if r.use_cache => Some(self.key(c, body)),
                _ => None,
            })
            .collect();
        let wanted: Vec<Key> = keys.iter().flatten().copied().collect();
        let mut found = c.cache.get_many(&wanted).await.into_iter();
        let hits: Vec<Option<Value>> = keys
            .iter()
            .map(|k| {
                k.and_then(|_| found.next().flatten())
                    .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
                    .filter(Value::is_object)
            })
            .collect();
        let calls = requests.into_iter().zip(hits).map(|(r, hit)| async move {
            match (r.body, hit) {
                (Err(e), _) => (Err(e), false),
                (Ok(body), Some(answer)) => {
                    let (input, output) = self.api.usage_of(&answer);
                    self.api.transport().usage().record_cached(
                        self.model_of(&body),
                        1,
                        input,
                        output,
                    );
                    (Ok(answer), true)
                }
                (Ok(body), None) => (self.api.create(body).await, false),
            }
        });
        let results = join_all(calls).await;
        let store: Vec<(Key, Vec<u8>)> = results
            .iter()
            .zip(&keys)
            .filter_map(|((r, cached), k)| match (r, k) {
                (Ok(answer), Some(k)) if !*cached => {
                    serde_json::to_vec(answer).ok().map(|bytes| (*k, bytes))
                }
                _ => None,
            })
            .collect();
        c.cache.put_many(store).await;
        results
            .into_iter()
            .map(|(result, cached)| ChatAnswer { result, cached })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_json;

    #[test]
    fn canonical_json_ignores_key_order_and_keeps_every_field() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":"x"}],"x":null}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[1,{"p":"x","q":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"p":"x","q":2}]},"b":1}"#
        );
        let c: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[{"q":2,"p":"x"},1],"x":null}}"#).unwrap();
        assert_ne!(canonical_json(&a), canonical_json(&c), "list order counts");
        let d: serde_json::Value = serde_json::from_str(r#"{"b":1.0,"a":{}}"#).unwrap();
        let e: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{}}"#).unwrap();
        assert_ne!(canonical_json(&d), canonical_json(&e));
        let s: serde_json::Value = serde_json::from_str(r#"{"k\"ey":"é\n"}"#).unwrap();
        assert_eq!(canonical_json(&s), r#"{"k\"ey":"é\n"}"#);
    }
}
