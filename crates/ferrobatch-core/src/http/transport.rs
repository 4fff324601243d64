//! `Transport`: one provider's HTTP client. It POSTs a JSON body to `{base_url}{path}` with
//! the provider's auth header and the user's extra headers, waits for the shared
//! [`LocalLimiter`], retries by the [`RetryPolicy`] (the server's retry hint first), pauses every
//! sharer of the limiter on a 429, and turns every failure into a core [`Error`] with the API
//! key scrubbed from it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use super::retry::{proto_duration, retry_after, Failure, RetryPolicy};
use super::secret::{redact, ApiKey};
use super::usage::UsageBook;
use crate::error::{Error, Provider};
use crate::limits::RateLimit;

/// The most of an error body kept in [`Error::Status`]`.body`.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes of an error body read to parse it.
pub const MAX_ERROR_READ: usize = 1024 * 1024;

/// The default cap on a successful answer's body: far above the largest documented answer
/// (2,048 vectors of 3,072 floats as JSON is about 130 MB), far below what exhausts memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How the key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY` (OpenAI-compatible servers).
    Bearer,
    /// `x-goog-api-key: KEY` (Gemini).
    GoogApiKey,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
}

/// Everything a [`Transport`] needs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Which API this is, for error messages.
    pub provider: Provider,
    /// `https://api.openai.com/v1` and the like; a trailing `/` is ignored.
    pub base_url: String,
    /// The key, if the server needs one.
    pub api_key: Option<ApiKey>,
    /// How the key is sent.
    pub auth: Auth,
    /// Extra headers on every request (organization, project, ...).
    pub headers: Vec<(String, String)>,
    /// The limit on one attempt, connection included.
    pub timeout: Duration,
    /// The most bytes of a successful answer read; a larger one fails with
    /// [`Error::ResponseTooLarge`] as soon as the cap is passed (the rest is not read).
    pub max_response_bytes: usize,
    /// When to retry and how long to wait.
    pub retry: RetryPolicy,
    /// The shared rate budget, in process or in Redis (a private one when the user gives
    /// none, so that a 429 still pauses every request of this client).
    pub limiter: Arc<dyn RateLimit>,
}

/// What a [`Transport::call`] sends.
#[derive(Debug, Clone)]
pub enum Payload {
    /// No body.
    Empty,
    /// A JSON body.
    Json(Bytes),
    /// A `multipart/form-data` body: text fields, then one file.
    Multipart {
        /// `(name, value)` text fields.
        fields: Vec<(String, String)>,
        /// The file part's name (`file`).
        part: String,
        /// The file's name.
        file_name: String,
        /// The file's bytes.
        file: Bytes,
    },
}

/// How a [`Transport::call`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// By the client's policy: the call can be repeated safely.
    Policy,
    /// Only failures that show the server did nothing (a 429, 529 or 503 answer, or a refused
    /// connection); a timeout or another 5xx may hide a request that took effect, so it is
    /// the caller's to find out (creating a paid batch is not idempotent).
    NotIfDone,
}

/// One provider's HTTP client; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Transport {
    client: reqwest::Client,
    config: TransportConfig,
    usage: UsageBook,
}

impl Transport {
    /// A client for `config`; checks the URL, the headers and the timeout.
    pub fn new(config: TransportConfig, usage: UsageBook) -> Result<Transport, Error> {
        let url = config.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::config("base_url", format!("{e}: {url:?}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::config(
                "base_url",
                format!("must be http:// or https://, got {url:?}"),
            ));
        }
        if config.timeout.is_zero() {
            return Err(Error::config("timeout", "must be seconds > 0"));
        }
        if config.max_response_bytes == 0 {
            return Err(Error::config("max_response_bytes", "must be at least 1"));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::config("headers", format!("{name:?} is not a valid header name"))
            })?;
            let mut v = HeaderValue::from_str(value).map_err(|_| {
                Error::config(
                    "headers",
                    format!("the value of {name:?} is not a valid header value"),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        if let Some(key) = &config.api_key {
            let (name, value) = match config.auth {
                Auth::Bearer => (AUTHORIZATION, format!("Bearer {}", key.expose())),
                Auth::GoogApiKey => (
                    HeaderName::from_static("x-goog-api-key"),
                    key.expose().to_string(),
                ),
                Auth::XApiKey => (
                    HeaderName::from_static("x-api-key"),
                    key.expose().to_string(),
                ),
            };
            let mut v = HeaderValue::from_str(&value)
                .map_err(|_| Error::config("api_key", "holds characters a header cannot carry"))?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("ferrobatch/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| Error::config("http client", e.to_string()))?;
        let config = TransportConfig {
            base_url: url.to_string(),
            ..config
        };
        Ok(Transport {
            client,
            config,
            usage,
        })
    }

    /// The API key requests carry, if any (to redact it from messages).
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.config.api_key.as_ref()
    }

    /// The most bytes one answer may hold.
    pub fn max_response_bytes(&self) -> usize {
        self.config.max_response_bytes
    }

    /// The per-model usage of this client.
    pub fn usage(&self) -> &UsageBook {
        &self.usage
    }

    /// The base URL (never holds the key).
    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    /// The same key, headers and policies on another API of the provider (its batch API on
    /// another base URL, with another auth header); no rate limiter is consulted by
    /// [`Transport::call`]. `usage` is where its costs are counted.
    pub fn sibling(
        &self,
        provider: Provider,
        base_url: &str,
        auth: Auth,
        usage: UsageBook,
    ) -> Result<Transport, Error> {
        let config = TransportConfig {
            provider,
            base_url: base_url.to_string(),
            auth,
            ..self.config.clone()
        };
        Transport::new(config, usage)
    }

    /// Which API this is.
    pub fn provider(&self) -> Provider {
        self.config.provider
    }

    /// Correct the limiter's estimate of a request with the tokens it really used.
    pub fn settle_tokens(&self, estimated: u64, actual: u64) {
        self.config.limiter.settle(estimated, actual);
    }

    /// POST `body` to `{base_url}{path}` with retries; the body of the successful answer, or
    /// the last failure. `model` is where retries and failures are counted; `tokens` is the
    /// request's estimated tokens for the limiter.
    pub async fn post(
        &self,
        path: &str,
        body: Bytes,
        model: &str,
        tokens: u64,
    ) -> Result<Bytes, Error> {
        let url = format!("{}{}", self.config.base_url, path);
        self.admitted(model, tokens, || self.attempt(&url, body.clone()))
            .await
    }

    /// POST `body` to `{base_url}{path}` and hand back the response once its status is a
    /// success, its body unread (a stream). Admission, retries and failure accounting as
    /// [`Transport::post`]; `first_byte` bounds the wait for the response's head (no total
    /// timeout: a stream may run long). The reservation of `tokens` is the caller's to settle.
    pub async fn open_stream(
        &self,
        path: &str,
        body: Bytes,
        model: &str,
        tokens: u64,
        first_byte: Duration,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{}", self.config.base_url, path);
        self.admitted(model, tokens, || async {
            let request = self.client.post(&url).body(body.clone()).send();
            match tokio::time::timeout(first_byte, request).await {
                Err(_) => Err((Failure::Timeout, None, Error::Timeout { after: first_byte })),
                Ok(Err(e)) => Err(self.transport_error(&e)),
                Ok(Ok(response)) if response.status().is_success() => Ok(response),
                Ok(Ok(response)) => Err(self.failed(response).await),
            }
        })
        .await
    }

    /// Run `attempt` through the rate limiter with retries: each attempt is admitted with
    /// `tokens`, a failed one gives them back, a 429 pauses the limiter, and what the retry
    /// policy allows is tried again.
    async fn admitted<T, F, Fut>(
        &self,
        model: &str,
        tokens: u64,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, (Failure, Option<Duration>, Error)>>,
    {
        let mut tried: u32 = 0;
        loop {
            if let Err(e) = self.config.limiter.acquire(tokens).await {
                // The shared limit cannot be consulted and the policy is to fail.
                self.usage.record_failure(model);
                return Err(e);
            }
            let (failure, hint, error) = match attempt().await {
                Ok(out) => return Ok(out),
                Err(f) => f,
            };
            // A failed attempt gives its estimated tokens back (its request slot stays spent).
            self.config.limiter.settle(tokens, 0);
            if let Error::Status { status, .. } = &error {
                self.usage.record_status(model, *status);
            }
            if failure == Failure::Status(429) {
                let pause = hint.unwrap_or_else(|| self.config.retry.step(tried));
                self.config.limiter.pause(pause).await;
            }
            if !self.config.retry.should_retry(tried, failure) {
                self.usage.record_failure(model);
                return Err(error);
            }
            self.usage.record_retry(model);
            let delay = self.config.retry.delay(tried, hint, fastrand::f64());
            tokio::time::sleep(delay).await;
            tried += 1;
        }
    }

    /// Whether another attempt is allowed after `tried` retries failed as `failure`; if so
    /// the retry is counted and its delay slept. For a stream cut before its first chunk.
    pub async fn retry_after_failure(&self, model: &str, tried: u32, failure: Failure) -> bool {
        if !self.config.retry.should_retry(tried, failure) {
            return false;
        }
        self.usage.record_retry(model);
        tokio::time::sleep(self.config.retry.delay(tried, None, fastrand::f64())).await;
        true
    }

    /// Send `payload` to `{base_url}{path}` with `method`, outside the rate limiter (batch
    /// API calls do not spend the online budget), retrying as `retry` allows; the body of the
    /// successful answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        payload: Payload,
        retry: Retry,
    ) -> Result<Bytes, Error> {
        let url = format!("{}{}", self.config.base_url, path);
        let mut attempt: u32 = 0;
        loop {
            let request = self.request(method.clone(), &url, &payload)?;
            let (failure, hint, error) = match self.send(request).await {
                Ok(bytes) => return Ok(bytes),
                Err(f) => f,
            };
            let safe = match retry {
                Retry::Policy => true,
                Retry::NotIfDone => {
                    matches!(failure, Failure::Status(429 | 503 | 529))
                        || matches!(&error, Error::Connection { message } if message.contains("onnection refused"))
                }
            };
            if !safe || !self.config.retry.should_retry(attempt, failure) {
                return Err(error);
            }
            let delay = self.config.retry.delay(attempt, hint, fastrand::f64());
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// GET `{base_url}{path}`, retried by the policy (a read is safe to repeat).
    pub async fn get(&self, path: &str) -> Result<Bytes, Error> {
        self.call(reqwest::Method::GET, path, Payload::Empty, Retry::Policy)
            .await
    }

    /// POST no body to `{base_url}{path}` (a cancel call), retried by the policy.
    pub async fn post_empty(&self, path: &str) -> Result<Bytes, Error> {
        self.call(reqwest::Method::POST, path, Payload::Empty, Retry::Policy)
            .await
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        payload: &Payload,
    ) -> Result<reqwest::RequestBuilder, Error> {
        let builder = self.client.request(method, url);
        Ok(match payload {
            Payload::Empty => builder,
            Payload::Json(b) => builder.body(b.clone()),
            Payload::Multipart {
                fields,
                part,
                file_name,
                file,
            } => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in fields {
                    form = form.text(k.clone(), v.clone());
                }
                let file = reqwest::multipart::Part::stream(file.clone())
                    .file_name(file_name.clone())
                    .mime_str("application/jsonl")
                    .map_err(|e| Error::config("multipart", e.to_string()))?;
                builder.multipart(form.part(part.clone(), file))
            }
        })
    }

    async fn attempt(
        &self,
        url: &str,
        body: Bytes,
    ) -> Result<Bytes, (Failure, Option<Duration>, Error)> {
        self.send(self.client.post(url).body(body)).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, (Failure, Option<Duration>, Error)> {
        let response = request
            .timeout(self.config.timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let cap = self.config.max_response_bytes;
            return match read_capped(response, cap).await {
                Ok((bytes, false)) => Ok(bytes),
                Ok((_, true)) => Err((
                    Failure::TooLarge,
                    None,
                    Error::ResponseTooLarge { limit: cap },
                )),
                Err(e) => Err(self.transport_error(&e)),
            };
        }
        Err(self.failed(response).await)
    }

    /// What a response with an error status means: its failure class, a retry hint, and the
    /// error (its body read up to a bound and parsed in every documented shape).
    async fn failed(&self, response: reqwest::Response) -> (Failure, Option<Duration>, Error) {
        let status = response.status().as_u16();
        // Only a failure needs the headers (for its retry hint).
        let headers = response.headers().clone();
        // At most MAX_ERROR_READ is read, whatever length is declared; a longer body is cut
        // there (and parsed as far as it goes), so an endless error body costs no more than
        // that. Enough for a pydantic 422 echoing a long text in its `input`.
        let (bytes, cut) = match read_prefix(response, MAX_ERROR_READ).await {
            Ok(read) => read,
            Err(e) => return self.transport_error(&e),
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mut hint = retry_after(header, SystemTime::now());
        let parsed = ErrorBody::parse(&bytes, cut);
        if hint.is_none() {
            hint = parsed.retry_delay;
        }
        let key = self.config.api_key.as_ref();
        let message = match parsed.message {
            Some(m) => redact(key, &m),
            None => reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_string(),
        };
        let kept = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
        let body_text = (!kept.is_empty()).then(|| redact(key, &String::from_utf8_lossy(kept)));
        let code = parsed.code.map(|c| redact(key, &c));
        let error = Error::Status {
            provider: self.config.provider,
            status,
            message,
            body: body_text,
            code: code.clone(),
            param: parsed.param.map(|p| redact(key, &p)),
        };
        let failure = super::retry::classify(status, header("x-should-retry"), code.as_deref());
        (failure, hint, error)
    }

    fn transport_error(&self, e: &reqwest::Error) -> (Failure, Option<Duration>, Error) {
        if e.is_timeout() {
            let error = Error::Timeout {
                after: self.config.timeout,
            };
            return (Failure::Timeout, None, error);
        }
        // The error and its causes: "error sending request ...: connection closed before ...".
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        let message = redact(self.config.api_key.as_ref(), &message);
        (Failure::Connection, None, Error::Connection { message })
    }
}

/// A response's body, read chunk by chunk up to `cap` bytes: the bytes (at most `cap`) and
/// whether more followed. A declared `Content-Length` over the cap is refused before reading.
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > cap as u64) {
        return Ok((Bytes::new(), true));
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    while let Some(chunk) = response.chunk().await? {
        let room = cap - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf.freeze(), true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), false))
}

/// The first `cap` bytes of a response's body (however long it says it is) and whether
/// more followed.
async fn read_prefix(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut buf = bytes::BytesMut::with_capacity(
        response
            .content_length()
            .map_or(8 * 1024, |n| (n as usize).min(cap)),
    );
    while let Some(chunk) = response.chunk().await? {
        let room = cap - buf.len();
        if chunk.len() >= room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((
                buf.freeze(),
                chunk.len() > room || response.chunk().await?.is_some(),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), false))
}

/// The parts of an error body the client uses. OpenAI-compatible servers send
/// `{"error": {"message", "type", "param", "code"}}`; Gemini sends
/// `{"error": {"code", "message", "status", "details": [...]}}` where a `RetryInfo` detail
/// carries `retryDelay` and a `BadRequest` detail names fields in `fieldViolations`; servers
/// written with FastAPI send `{"detail": "text"}` or pydantic's validation list
/// `{"detail": [{"type", "loc", "msg", "input"}]}`, whose `loc` becomes the `param`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ErrorBody {
    pub message: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_delay: Option<Duration>,
}

fn as_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The most validation errors of one pydantic `detail` list quoted in a message.
const MAX_DETAIL_ERRORS: usize = 5;

/// A pydantic `loc` as a parameter path: `["body", "input", 1]` is `input[1]`,
/// `["body", "encoding_format"]` is `encoding_format`. The request part (`body`, `query`, ...)
/// and pydantic's type tags (`list[constrained-str]`, `function-after[...]`) are left out.
fn loc_to_param(loc: &[serde_json::Value]) -> Option<String> {
    let mut out = String::new();
    for (i, seg) in loc.iter().enumerate() {
        match seg {
            serde_json::Value::String(s)
                if i == 0
                    && matches!(s.as_str(), "body" | "query" | "path" | "header" | "cookie") => {}
            serde_json::Value::String(s)
                if !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_') =>
            {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(s);
            }
            serde_json::Value::Number(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// FastAPI's `detail`: a text, or pydantic's list of validation errors.
fn parse_detail(detail: &serde_json::Value) -> ErrorBody {
    let Some(list) = detail.as_array() else {
        return ErrorBody {
            message: as_text(detail).or_else(|| Some(detail.to_string())),
            ..Default::default()
        };
    };
    let mut parts = Vec::new();
    let mut param = None;
    let mut code = None;
    for entry in list {
        let loc = entry
            .get("loc")
            .and_then(|l| l.as_array())
            .and_then(|l| loc_to_param(l));
        let msg = entry.get("msg").and_then(as_text).unwrap_or_default();
        if param.is_none() {
            param.clone_from(&loc);
            code = entry.get("type").and_then(as_text);
        }
        if parts.len() < MAX_DETAIL_ERRORS {
            parts.push(match loc {
                Some(l) => format!("{l}: {msg}"),
                None => msg,
            });
        }
    }
    if list.len() > MAX_DETAIL_ERRORS {
        parts.push(format!("and {} more", list.len() - MAX_DETAIL_ERRORS));
    }
    ErrorBody {
        message: (!parts.is_empty()).then(|| parts.join("; ")),
        code,
        param,
        retry_delay: None,
    }
}

/// The first JSON value after the first `"field":` in a body cut short (a pydantic entry
/// puts `type`, `loc` and `msg` before its `input`, which may be the long part).
fn first_field(bytes: &[u8], field: &str) -> Option<serde_json::Value> {
    let key = format!("\"{field}\"");
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes())?;
    let rest = &bytes[at + key.len()..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    serde_json::Deserializer::from_slice(&rest[colon + 1..])
        .into_iter::<serde_json::Value>()
        .next()?
        .ok()
}

/// The first validation error of a FastAPI `detail` list whose body was cut short.
fn salvage_detail(bytes: &[u8]) -> Option<ErrorBody> {
    let head = &bytes[..bytes.len().min(64)];
    let compact: Vec<u8> = head
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !compact.starts_with(b"{\"detail\":[") {
        return None;
    }
    let loc = first_field(bytes, "loc");
    let msg = first_field(bytes, "msg");
    let code = first_field(bytes, "type");
    let mut entry = serde_json::Map::new();
    for (k, v) in [("loc", loc), ("msg", msg), ("type", code)] {
        if let Some(v) = v {
            entry.insert(k.into(), v);
        }
    }
    if entry.is_empty() {
        return None;
    }
    let mut parsed = parse_detail(&serde_json::Value::Array(vec![entry.into()]));
    if let Some(m) = parsed.message.as_mut() {
        m.push_str(" (and possibly more: the error body was too long to read whole)");
    }
    Some(parsed)
}

impl ErrorBody {
    /// The parts of an error body; `cut` when the body was longer than what was read.
    pub(crate) fn parse(bytes: &[u8], cut: bool) -> ErrorBody {
        if cut {
            if let Some(salvaged) = salvage_detail(bytes) {
                return salvaged;
            }
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            if let Some(salvaged) = salvage_detail(bytes) {
                return salvaged;
            }
            let text = String::from_utf8_lossy(bytes).trim().to_string();
            return ErrorBody {
                message: (!text.is_empty()).then(|| text.chars().take(500).collect()),
                ..Default::default()
            };
        };
        if value.get("error").is_none() {
            if let Some(detail) = value.get("detail") {
                return parse_detail(detail);
            }
        }
        let err = value.get("error").unwrap_or(&value);
        let message = match err {
            serde_json::Value::String(s) => Some(s.clone()),
            _ => err.get("message").and_then(as_text),
        };
        // Gemini's `status` ("RESOURCE_EXHAUSTED") says more than its numeric `code`.
        // Anthropic's `details.error_code` ("enforced_spend_limit_reached") says more than
        // its `type` ("rate_limit_error").
        let code = err
            .get("details")
            .and_then(|d| d.get("error_code"))
            .and_then(as_text)
            .or_else(|| {
                ["status", "code", "type"]
                    .iter()
                    .find_map(|k| err.get(*k).and_then(as_text))
            });
        let mut param = err.get("param").and_then(as_text);
        let mut retry_delay = None;
        if let Some(details) = err.get("details").and_then(|d| d.as_array()) {
            for d in details {
                if let Some(delay) = d.get("retryDelay").and_then(|v| v.as_str()) {
                    retry_delay = proto_duration(delay);
                }
                if param.is_none() {
                    param = d
                        .get("fieldViolations")
                        .and_then(|f| f.as_array())
                        .and_then(|f| f.first())
                        .and_then(|f| f.get("field"))
                        .and_then(as_text);
                }
            }
        }
        ErrorBody {
            message,
            code,
            param,
            retry_delay,
        }
    }
}

/// The input position an error's `param` names, such as 3 in `input[3]`, `requests[3].content`
/// or `text.input[3]`, when one of its path components is `field`.
pub(crate) fn param_index(param: &str, field: &str) -> Option<usize> {
    let param = param.trim_start_matches("$.");
    param.match_indices(field).find_map(|(at, _)| {
        let starts_component = at == 0 || param[..at].ends_with('.');
        let rest = &param[at + field.len()..];
        let rest = rest.strip_prefix('[').or_else(|| rest.strip_prefix('.'))?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if !starts_component {
            return None;
        }
        rest[..end].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_bodies() {
        let b = ErrorBody::parse(
            br#"{"error":{"message":"bad input","type":"invalid_request_error","param":"input[2]","code":null}}"#, false);
        assert_eq!(b.message.as_deref(), Some("bad input"));
        assert_eq!(b.code.as_deref(), Some("invalid_request_error"));
        assert_eq!(b.param.as_deref(), Some("input[2]"));
        assert_eq!(b.retry_delay, None);
    }

    #[test]
    fn a_cut_pydantic_detail_still_names_its_field() {
        let huge = "x".repeat(200_000);
        let body = format!(
            r#"{{"detail":[{{"type":"string_too_long","loc":["body","input",1],"msg":"String should have at most 8192 characters","input":"{huge}"}}]}}"#
        );
        let cut = &body.as_bytes()[..MAX_ERROR_BODY];
        let b = ErrorBody::parse(cut, true);
        assert_eq!(b.param.as_deref(), Some("input[1]"));
        assert_eq!(b.code.as_deref(), Some("string_too_long"));
        assert!(b
            .message
            .unwrap()
            .starts_with("input[1]: String should have at most"));
        // Read whole, it parses as usual.
        let b = ErrorBody::parse(body.as_bytes(), false);
        assert_eq!(b.param.as_deref(), Some("input[1]"));
    }

    #[test]
    fn gemini_error_bodies() {
        let b = ErrorBody::parse(
            br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
                {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"},
                {"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"requests[4].content"}]}]}}"#, false);
        assert_eq!(b.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(b.retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(b.param.as_deref(), Some("requests[4].content"));
    }

    #[test]
    fn anthropic_error_bodies() {
        let b = ErrorBody::parse(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#, false);
        assert_eq!(b.message.as_deref(), Some("Overloaded"));
        assert_eq!(b.code.as_deref(), Some("overloaded_error"));
        // A spent monthly cap: the detail's code, which is not retried.
        let b = ErrorBody::parse(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit",
                 "details":{"error_code":"enforced_spend_limit_reached"}}}"#,
            false,
        );
        assert_eq!(b.code.as_deref(), Some("enforced_spend_limit_reached"));
        let f = super::super::retry::classify(429, None, b.code.as_deref());
        assert!(!f.is_retryable());
    }

    #[test]
    fn non_json_bodies_become_the_message() {
        let b = ErrorBody::parse(b"upstream connect error", false);
        assert_eq!(b.message.as_deref(), Some("upstream connect error"));
        assert_eq!(ErrorBody::parse(b"", false).message, None);
    }

    #[test]
    fn param_indexes() {
        assert_eq!(param_index("input[3]", "input"), Some(3));
        assert_eq!(param_index("$.input[12]", "input"), Some(12));
        assert_eq!(param_index("input.7", "input"), Some(7));
        assert_eq!(param_index("requests[4].content", "requests"), Some(4));
        assert_eq!(param_index("input", "input"), None);
        assert_eq!(param_index("model", "input"), None);
        assert_eq!(param_index("inputs[1]", "input"), None);
        assert_eq!(param_index("text.input[1]", "input"), Some(1));
        assert_eq!(param_index("myinput[1]", "input"), None);
    }

    #[test]
    fn pydantic_validation_lists() {
        let b = ErrorBody::parse(
            br#"{"detail":[{"type":"string_too_long","loc":["body","input",1],
                "msg":"String should have at most 10 characters","input":"xxxxxxxxxxxx"}]}"#,
            false,
        );
        assert_eq!(b.param.as_deref(), Some("input[1]"));
        assert_eq!(b.code.as_deref(), Some("string_too_long"));
        assert_eq!(
            b.message.as_deref(),
            Some("input[1]: String should have at most 10 characters")
        );
        // pydantic v2 puts the union member's type tag in the location.
        let b = ErrorBody::parse(
            br#"{"detail":[{"type":"too_long","loc":["body","text","input","list[constrained-str]",1],"msg":"too long"},
                           {"type":"missing","loc":["body","model"],"msg":"Field required"}]}"#, false);
        assert_eq!(b.param.as_deref(), Some("text.input[1]"));
        assert_eq!(param_index(b.param.as_deref().unwrap(), "input"), Some(1));
        assert_eq!(
            b.message.as_deref(),
            Some("text.input[1]: too long; model: Field required")
        );
        let b = ErrorBody::parse(
            br#"{"detail":[{"type":"literal_error","loc":["body","encoding_format"],"msg":"Input should be 'float'"}]}"#, false);
        assert_eq!(b.param.as_deref(), Some("encoding_format"));
    }

    #[test]
    fn pydantic_detail_texts_and_long_lists() {
        let b = ErrorBody::parse(br#"{"detail":"Model not found"}"#, false);
        assert_eq!(b.message.as_deref(), Some("Model not found"));
        assert_eq!(b.param, None);
        let many: Vec<String> = (0..8)
            .map(|i| format!(r#"{{"loc":["body","input",{i}],"msg":"bad"}}"#))
            .collect();
        let body = format!(r#"{{"detail":[{}]}}"#, many.join(","));
        let b = ErrorBody::parse(body.as_bytes(), false);
        assert_eq!(b.param.as_deref(), Some("input[0]"));
        assert!(b
            .message
            .as_deref()
            .unwrap()
            .ends_with("input[4]: bad; and 3 more"));
        // An `error` object wins over a stray `detail`.
        let b = ErrorBody::parse(br#"{"error":{"message":"m"},"detail":"d"}"#, false);
        assert_eq!(b.message.as_deref(), Some("m"));
    }
}
