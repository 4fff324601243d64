//! The server itself: hyper on the caller's tokio runtime, bound to a loopback port.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::fake::{fake_embedding, fake_reply, fake_tokens};

/// An input holding this text is rejected alone with a 400 naming its position
/// (`input[i]` / `requests[i].content`), the way a server rejects one over-long input.
pub const REJECT_MARKER: &str = "ferrobatch:reject";

/// How the server behaves when no fault is scripted.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Added before every answer.
    pub latency: Duration,
    /// Vector length when a request does not ask for one.
    pub dimensions: usize,
    /// Most inputs in one OpenAI-compatible embeddings request (more gets a 400).
    pub max_inputs: usize,
    /// Most requests in one Gemini `batchEmbedContents` call (more gets a 400).
    pub gemini_max_inputs: usize,
    /// When set, requests must carry this key (`Authorization: Bearer` or `x-goog-api-key`);
    /// others get a 401 whose message echoes the key they sent, as some servers do, so tests
    /// can check that clients scrub it.
    pub api_key: Option<String>,
    /// When set, more requests than this within a minute get a 429 with `retry-after-ms`.
    pub requests_per_minute: Option<u32>,
    /// Whether `encoding_format="base64"` is accepted; when false such requests get a 400
    /// about `encoding_format`, as some OpenAI-compatible servers answer.
    pub base64: bool,
    /// How OpenAI-compatible routes word their errors.
    pub error_style: ErrorStyle,
    /// How long a provider batch takes from create to ended (its first fifth validating).
    pub batch_duration: Duration,
    /// How long a cancelled batch stays `cancelling` before it ends.
    pub cancel_delay: Duration,
}

/// How the OpenAI-compatible routes word their errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorStyle {
    /// `{"error": {"message", "type", "param", "code"}}`, as OpenAI answers.
    #[default]
    OpenAi,
    /// As a FastAPI + pydantic server answers: a rejected input is a
    /// `422 {"detail": [{"type", "loc", "msg", "input"}]}` whose `loc` names it
    /// (`["body", "input", "list[constrained-str]", 3]`); other errors are
    /// `{"detail": "text"}`.
    Pydantic,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            latency: Duration::ZERO,
            dimensions: 1536,
            max_inputs: 2048,
            gemini_max_inputs: 100,
            api_key: None,
            requests_per_minute: None,
            base64: true,
            error_style: ErrorStyle::OpenAi,
            batch_duration: Duration::from_millis(200),
            cancel_delay: Duration::from_millis(100),
        }
    }
}

/// What a scripted fault does to the request it hits.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer with this status and an error body in the provider's format; 429s and 5xxs may
    /// carry `retry-after` (seconds), `retry-after-ms`, or Gemini's `RetryInfo.retryDelay`.
    Status {
        /// The HTTP status.
        status: u16,
        /// `retry-after` in seconds.
        retry_after: Option<f64>,
        /// `retry-after-ms`.
        retry_after_ms: Option<u64>,
        /// A Gemini `RetryInfo` detail with this delay, in seconds.
        retry_delay: Option<f64>,
    },
    /// Close the connection without answering.
    Reset,
    /// Answer only after this long (past the client's timeout).
    Hang(Duration),
    /// Answer 200 with a truncated JSON body.
    Malformed,
    /// Answer 200 with one embedding too few (a chat answer without `choices`).
    WrongCount,
    /// Answer with this status and a body that never ends, as a broken or hostile server
    /// might; the server writes as fast as the client reads, until it hangs up.
    Endless(u16),
    /// The next batch created (on a path containing the fault's `path`) ends this way;
    /// other calls pass it by.
    Batch(super::batches::BatchFault),
    /// The next streamed chat answer goes wrong this way; other calls pass it by.
    Stream(super::streams::StreamFault),
}

impl FaultKind {
    fn label(&self) -> String {
        match self {
            FaultKind::Status { status, .. } => format!("status {status}"),
            FaultKind::Reset => "reset".into(),
            FaultKind::Hang(_) => "hang".into(),
            FaultKind::Malformed => "malformed".into(),
            FaultKind::WrongCount => "wrong_count".into(),
            FaultKind::Endless(status) => format!("endless {status}"),
            FaultKind::Batch(f) => format!("batch {f:?}"),
            FaultKind::Stream(f) => format!("stream {f:?}"),
        }
    }
}

/// A fault for the next `times` requests whose path contains `path` (any path when None).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// How many requests it hits.
    pub times: u32,
    /// A substring of the paths it applies to.
    pub path: Option<String>,
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// The HTTP method.
    pub method: String,
    /// The path, such as `/v1/embeddings`.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// Texts in an embeddings request; 1 for chat.
    pub inputs: usize,
    /// The status answered; 0 when the connection was closed instead.
    pub status: u16,
    /// The scripted fault that hit it.
    pub fault: Option<String>,
    /// Seconds since the server started.
    pub at: f64,
}

pub(super) struct State {
    config: Mutex<ServerConfig>,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<LoggedRequest>>,
    window: Mutex<VecDeque<Instant>>,
    started: Instant,
    counter: std::sync::atomic::AtomicU64,
    pub(super) batches: Mutex<super::batches::Batches>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// The next fault for a request on `path`; batch faults only for a call that creates a
    /// batch (`create`).
    fn take_fault(&self, path: &str, create: bool) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let pos = faults.iter().position(|f| {
            f.path.as_deref().is_none_or(|p| path.contains(p))
                && (create || !matches!(f.kind, FaultKind::Batch(_)))
        })?;
        let f = &mut faults[pos];
        let kind = f.kind.clone();
        f.times = f.times.saturating_sub(1);
        if f.times == 0 {
            faults.remove(pos);
        }
        Some(kind)
    }

    /// Whether a request now is over the per-minute limit; how long until it is not.
    fn over_limit(&self, limit: Option<u32>) -> Option<Duration> {
        let limit = limit? as usize;
        let now = Instant::now();
        let mut w = lock(&self.window);
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            w.pop_front();
        }
        if w.len() >= limit {
            let oldest = *w.front().expect("limit > 0 means a request is there");
            return Some(Duration::from_secs(60).saturating_sub(now.duration_since(oldest)));
        }
        w.push_back(now);
        None
    }
}

/// A running test server; it stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestServer({})", self.url())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    OpenAi,
    Gemini,
    Anthropic,
}

/// The connection is closed without an answer (the service's error makes hyper drop it).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection reset")
    }
}

impl std::error::Error for Reset {}

/// A response body: whole, or streamed without end.
pub(super) type Body = BoxBody<Bytes, std::convert::Infallible>;

type Answer = Result<Response<Body>, Reset>;

impl TestServer {
    /// Bind `host:port` (port 0 picks a free one) and serve on `runtime`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        host: &str,
        port: u16,
        config: ServerConfig,
    ) -> std::io::Result<TestServer> {
        let std_listener = std::net::TcpListener::bind((host, port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State {
            config: Mutex::new(config),
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            window: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            counter: std::sync::atomic::AtomicU64::new(0),
            batches: Mutex::new(Default::default()),
        });
        let (shutdown, stop_rx) = watch::channel(false);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let st = Arc::clone(&state);
        runtime.spawn(accept_loop(listener, st, stop_rx));
        Ok(TestServer {
            addr,
            state,
            shutdown,
        })
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Script a fault; faults apply in the order they were added.
    pub fn add_fault(&self, fault: Fault) {
        if fault.times > 0 {
            lock(&self.state.faults).push_back(fault);
        }
    }

    /// Drop every scripted fault not yet used.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Faults still scripted.
    pub fn pending_faults(&self) -> usize {
        lock(&self.state.faults)
            .iter()
            .map(|f| f.times as usize)
            .sum()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state.log).clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        lock(&self.state.log).clear();
    }

    /// The current configuration.
    pub fn config(&self) -> ServerConfig {
        lock(&self.state.config).clone()
    }

    /// Change the configuration for the requests that follow.
    pub fn set_config(&self, config: ServerConfig) {
        *lock(&self.state.config) = config;
    }

    /// Stop accepting and close every connection (requests in progress are dropped).
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let template = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let st = Arc::clone(&state);
                let mut stop = template.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&st), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

pub(super) fn json_response(status: u16, body: &Value, extra: &[(&str, String)]) -> Response<Body> {
    bytes_response(
        status,
        Bytes::from(serde_json::to_vec(body).expect("JSON serializes")),
        extra,
    )
}

pub(super) fn bytes_response(status: u16, body: Bytes, extra: &[(&str, String)]) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(body).boxed()).expect("a valid response")
}

/// A JSON-looking body that never ends: an opening, then numbers in 64 KiB chunks for as long
/// as the client reads.
fn endless_response(status: u16) -> Response<Body> {
    let opening =
        Bytes::from_static(b"{\"object\":\"list\",\"data\":[{\"index\":0,\"embedding\":[");
    let numbers = Bytes::from("0.0123456789,".repeat(64 * 1024 / 13));
    let chunks = futures_util::stream::iter([opening])
        .chain(futures_util::stream::repeat(numbers))
        .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("a valid response")
}

/// A pydantic `loc` for a parameter the server names: `input[3]` is
/// `["body", "input", "list[constrained-str]", 3]` (the union member's type tag included, as
/// pydantic v2 reports it), `encoding_format` is `["body", "encoding_format"]`.
fn pydantic_loc(param: Option<&str>) -> Value {
    let mut loc = vec![Value::from("body")];
    if let Some(p) = param {
        match p.split_once('[') {
            Some((field, rest)) => {
                loc.push(Value::from(field));
                loc.push(Value::from("list[constrained-str]"));
                if let Ok(i) = rest.trim_end_matches(']').parse::<u64>() {
                    loc.push(Value::from(i));
                }
            }
            None => loc.push(Value::from(p)),
        }
    }
    Value::from(loc)
}

pub(super) fn error_body(
    style: ErrorStyle,
    api: Api,
    status: u16,
    message: &str,
    param: Option<String>,
    retry_delay: Option<f64>,
) -> Value {
    match api {
        Api::OpenAi if style == ErrorStyle::Pydantic => json!({ "detail": message }),
        Api::OpenAi => {
            let kind = match status {
                401 => "invalid_api_key",
                429 => "rate_limit_exceeded",
                s if s >= 500 => "server_error",
                _ => "invalid_request_error",
            };
            json!({"error": {"message": message, "type": kind, "param": param, "code": kind}})
        }
        Api::Gemini => {
            let grpc = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            let mut details = Vec::new();
            if let Some(d) = retry_delay {
                details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{d}s")}));
            }
            if let Some(p) = param {
                details.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": p, "description": message}]}));
            }
            json!({"error": {"code": status, "message": message, "status": grpc, "details": details}})
        }
        Api::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message},
                   "request_id": "req_fake"})
        }
    }
}

/// The texts of an OpenAI-compatible embeddings body, or why they are unusable.
pub(super) fn openai_inputs(body: &Value) -> Result<Vec<String>, String> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "`input` must hold strings".to_string())
            })
            .collect(),
        _ => Err("`input` must be a string or a list of strings".into()),
    }
}

fn gemini_inputs(body: &Value) -> Result<Vec<String>, String> {
    let reqs = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("`requests` must be a list")?;
    reqs.iter()
        .map(|r| {
            let parts = r
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .ok_or("each request needs content.parts")?;
            Ok(parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""))
        })
        .collect()
}

fn last_message(body: &Value) -> Option<String> {
    let content = body.get("messages")?.as_array()?.last()?.get("content")?;
    Some(match content {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The fake token count of a request's messages.
fn prompt_tokens(body: &Value) -> u64 {
    body["messages"].as_array().map_or(0, |m| {
        m.iter()
            .map(|x| fake_tokens(&x.get("content").map(Value::to_string).unwrap_or_default()))
            .sum()
    })
}

fn rate_headers(config: &ServerConfig, state: &State) -> Vec<(&'static str, String)> {
    match config.requests_per_minute {
        None => Vec::new(),
        Some(limit) => {
            let used = lock(&state.window).len() as u32;
            vec![
                ("x-ratelimit-limit-requests", limit.to_string()),
                (
                    "x-ratelimit-remaining-requests",
                    limit.saturating_sub(used).to_string(),
                ),
                ("x-ratelimit-reset-requests", "60s".to_string()),
            ]
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Answer {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let raw = req
        .into_body()
        .collect()
        .await
        .map_err(|_| Reset)?
        .to_bytes();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let config = lock(&state.config).clone();
    let batch_route = super::batches::route(&method, &path);
    let fault = state.take_fault(&path, batch_route.is_some_and(|(_, create)| create));
    if batch_route.is_some() {
        let (response, hang) = super::batches::handle(
            &state,
            &config,
            &method,
            &path,
            &query,
            &headers,
            &raw,
            &body,
            fault.as_ref(),
        )
        .await
        .expect("a batch route");
        let status = response.as_ref().map_or(0, |r| r.status().as_u16());
        let logged_body = if body.is_null() && !raw.is_empty() {
            Value::String(format!("<{} bytes>", raw.len()))
        } else {
            body
        };
        lock(&state.log).push(LoggedRequest {
            method,
            path,
            headers,
            body: logged_body,
            inputs: 0,
            status,
            fault: fault.as_ref().map(FaultKind::label),
            at: state.started.elapsed().as_secs_f64(),
        });
        let wait = hang.unwrap_or(config.latency);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        return response.ok_or(Reset);
    }

    let api = if path.starts_with("/v1beta/openai/") {
        Api::OpenAi
    } else if path.starts_with("/v1beta/") {
        Api::Gemini
    } else if path == "/v1/messages" {
        Api::Anthropic
    } else {
        Api::OpenAi
    };
    let route = if method != "POST" {
        None
    } else if path == "/v1/embeddings" {
        Some("embeddings")
    } else if path == "/v1/chat/completions" || path == "/v1beta/openai/chat/completions" {
        // The second: Gemini's OpenAI-compatible route.
        Some("chat")
    } else if path == "/v1/messages" {
        Some("messages")
    } else if path.starts_with("/v1beta/models/") && path.ends_with(":batchEmbedContents") {
        Some("gemini")
    } else {
        None
    };
    let inputs = match route {
        Some("embeddings") => openai_inputs(&body),
        Some("gemini") => gemini_inputs(&body),
        _ => Ok(Vec::new()),
    };
    let n_inputs = match (&inputs, route) {
        (_, Some("chat" | "messages")) => 1,
        (Ok(v), _) => v.len(),
        _ => 0,
    };

    let (response, hang): (Option<Response<Body>>, Option<Duration>) = respond(
        &state,
        &config,
        api,
        route,
        &body,
        &headers,
        &query,
        inputs,
        fault.as_ref(),
    );
    let status = response.as_ref().map_or(0, |r| r.status().as_u16());
    lock(&state.log).push(LoggedRequest {
        method,
        path,
        headers,
        body,
        inputs: n_inputs,
        status,
        fault: fault.as_ref().map(FaultKind::label),
        at: state.started.elapsed().as_secs_f64(),
    });
    let wait = hang.unwrap_or(config.latency);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    response.ok_or(Reset)
}

/// A 400 in the provider's error format.
pub(super) fn bad_request(
    config: &ServerConfig,
    api: Api,
    message: &str,
    param: Option<&str>,
) -> Response<Body> {
    let b = error_body(
        config.error_style,
        api,
        400,
        message,
        param.map(str::to_string),
        None,
    );
    json_response(400, &b, &[])
}

/// The answer a scripted fault makes (`Some(None)`: close the connection); a hang is only
/// noted in `hang`, and the request is answered normally after it.
pub(super) fn scripted(
    state: &State,
    config: &ServerConfig,
    api: Api,
    fault: Option<&FaultKind>,
    hang: &mut Option<Duration>,
) -> Option<Option<Response<Body>>> {
    match fault {
        Some(FaultKind::Reset) => Some(None),
        Some(FaultKind::Status {
            status,
            retry_after,
            retry_after_ms,
            retry_delay,
        }) => {
            let mut extra = rate_headers(config, state);
            if let Some(s) = retry_after {
                extra.push(("retry-after", format!("{s}")));
            }
            if let Some(ms) = retry_after_ms {
                extra.push(("retry-after-ms", ms.to_string()));
            }
            let msg = format!("scripted fault: status {status}");
            let b = error_body(config.error_style, api, *status, &msg, None, *retry_delay);
            Some(Some(json_response(*status, &b, &extra)))
        }
        Some(FaultKind::Endless(status)) => Some(Some(endless_response(*status))),
        Some(FaultKind::Malformed) => Some(Some(bytes_response(
            200,
            Bytes::from_static(b"{\"data\": [{\"index\": 0, \"embed"),
            &[],
        ))),
        Some(FaultKind::Hang(d)) => {
            *hang = Some(*d);
            None
        }
        Some(FaultKind::WrongCount | FaultKind::Batch(_) | FaultKind::Stream(_)) | None => None,
    }
}

/// A 401 when the server wants a key and the request carries another (its message echoes
/// the key sent, as some servers do, so tests can check that clients scrub it).
pub(super) fn unauthorized(
    config: &ServerConfig,
    api: Api,
    headers: &[(String, String)],
    query: &str,
) -> Option<Response<Body>> {
    let expected = config.api_key.as_ref()?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sent = match api {
        Api::OpenAi => header("authorization").map(|v| v.trim_start_matches("Bearer ").to_string()),
        // The key in `x-api-key`, or (newer SDKs) as a bearer token.
        Api::Anthropic => header("x-api-key").map(str::to_string).or_else(|| {
            header("authorization").map(|v| v.trim_start_matches("Bearer ").to_string())
        }),
        Api::Gemini => header("x-goog-api-key").map(str::to_string).or_else(|| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("key="))
                .map(str::to_string)
        }),
    };
    if sent.as_deref() == Some(expected.as_str()) {
        return None;
    }
    let msg = format!("Incorrect API key provided: {}", sent.unwrap_or_default());
    let b = error_body(config.error_style, api, 401, &msg, None, None);
    Some(json_response(401, &b, &[]))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn respond(
    state: &State,
    config: &ServerConfig,
    api: Api,
    route: Option<&str>,
    body: &Value,
    headers: &[(String, String)],
    query: &str,
    inputs: Result<Vec<String>, String>,
    fault: Option<&FaultKind>,
) -> (Option<Response<Body>>, Option<Duration>) {
    let mut hang = None;
    let style = config.error_style;
    if let Some(answer) = scripted(state, config, api, fault, &mut hang) {
        return (answer, None);
    }
    let Some(route) = route else {
        let b = error_body(
            style,
            api,
            404,
            "no such endpoint on the ferrobatch test server",
            None,
            None,
        );
        return (Some(json_response(404, &b, &[])), hang);
    };
    if let Some(answer) = unauthorized(config, api, headers, query) {
        return (Some(answer), hang);
    }
    if let Some(wait) = state.over_limit(config.requests_per_minute) {
        let mut extra = rate_headers(config, state);
        extra.push(("retry-after-ms", wait.as_millis().to_string()));
        let b = error_body(
            style,
            api,
            429,
            "rate limit reached for requests",
            None,
            Some(wait.as_secs_f64()),
        );
        return (Some(json_response(429, &b, &extra)), hang);
    }
    let extra = rate_headers(config, state);
    let bad = |msg: String, param: Option<String>| {
        let answer = if api == Api::OpenAi && style == ErrorStyle::Pydantic {
            let detail = json!([{"type": "value_error", "loc": pydantic_loc(param.as_deref()),
                                 "msg": msg, "input": Value::Null}]);
            json_response(422, &json!({ "detail": detail }), &extra)
        } else {
            json_response(400, &error_body(style, api, 400, &msg, param, None), &extra)
        };
        (Some(answer), hang)
    };
    let wrong_count = fault == Some(&FaultKind::WrongCount);
    let streamed = body.get("stream").and_then(Value::as_bool) == Some(true);
    let stream_fault = match fault {
        Some(FaultKind::Stream(f)) => Some(*f),
        _ => None,
    };
    match route {
        "chat" => {
            if body.get("messages").and_then(Value::as_array).is_none() {
                return bad("`messages` must be a list".into(), Some("messages".into()));
            }
            let last = last_message(body).unwrap_or_default();
            if last.contains(REJECT_MARKER) {
                return bad(
                    "this message was rejected by the test server".into(),
                    Some("messages".into()),
                );
            }
            let reply = fake_reply(&last);
            let prompt = prompt_tokens(body);
            let completion = fake_tokens(&reply);
            let n = state
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if streamed {
                let id = format!("chatcmpl-fake-{n}");
                let format = super::streams::Format::OpenAi;
                let answer =
                    super::streams::answer(format, body, &reply, prompt, &id, stream_fault);
                return (Some(answer), hang);
            }
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut answer = json!({
                "id": format!("chatcmpl-fake-{n}"),
                "object": "chat.completion",
                "created": created,
                "model": body.get("model").cloned().unwrap_or(Value::Null),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            });
            if wrong_count {
                answer.as_object_mut().expect("an object").remove("choices");
            }
            (Some(json_response(200, &answer, &extra)), hang)
        }
        "messages" => {
            if body.get("messages").and_then(Value::as_array).is_none() {
                return bad("messages: Field required".into(), None);
            }
            if body.get("max_tokens").and_then(Value::as_u64).is_none() {
                return bad("max_tokens: Field required".into(), None);
            }
            let last = last_message(body).unwrap_or_default();
            if last.contains(REJECT_MARKER) {
                return bad("this message was rejected by the test server".into(), None);
            }
            let reply = fake_reply(&last);
            let prompt = prompt_tokens(body);
            let n = state
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if streamed {
                let id = format!("msg_fake{n:020}");
                let format = super::streams::Format::Anthropic;
                let answer =
                    super::streams::answer(format, body, &reply, prompt, &id, stream_fault);
                return (Some(answer), hang);
            }
            let mut answer = json!({
                "id": format!("msg_fake{n:020}"),
                "type": "message",
                "role": "assistant",
                "model": body.get("model").cloned().unwrap_or(Value::Null),
                "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": prompt, "output_tokens": fake_tokens(&reply),
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            });
            if wrong_count {
                answer.as_object_mut().expect("an object").remove("content");
            }
            (Some(json_response(200, &answer, &extra)), hang)
        }
        _ => {
            let texts = match inputs {
                Ok(t) => t,
                Err(msg) => {
                    return bad(
                        msg,
                        Some(
                            if route == "gemini" {
                                "requests"
                            } else {
                                "input"
                            }
                            .into(),
                        ),
                    )
                }
            };
            let (cap, field) = if route == "gemini" {
                (config.gemini_max_inputs, "requests")
            } else {
                (config.max_inputs, "input")
            };
            if texts.len() > cap {
                return bad(
                    format!("too many inputs in one request: {} > {cap}", texts.len()),
                    None,
                );
            }
            let param = |i: usize| {
                if route == "gemini" {
                    format!("requests[{i}].content")
                } else {
                    format!("{field}[{i}]")
                }
            };
            if let Some(i) = texts.iter().position(|t| t.is_empty()) {
                return bad(format!("{field}[{i}] is empty"), Some(param(i)));
            }
            if let Some(i) = texts.iter().position(|t| t.contains(REJECT_MARKER)) {
                return bad(
                    format!("{field}[{i}] was rejected by the test server"),
                    Some(param(i)),
                );
            }
            let b64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
            if route == "embeddings" && b64 && !config.base64 {
                return bad(
                    "encoding_format 'base64' is not supported by this server".into(),
                    Some("encoding_format".into()),
                );
            }
            let dims_field = if route == "gemini" {
                "outputDimensionality"
            } else {
                "dimensions"
            };
            let dims = if route == "gemini" {
                body.pointer(&format!("/requests/0/{dims_field}"))
            } else {
                body.get(dims_field)
            }
            .and_then(Value::as_u64)
            .map_or(config.dimensions, |d| d as usize);
            let mut vectors: Vec<Vec<f32>> =
                texts.iter().map(|t| fake_embedding(t, dims)).collect();
            if wrong_count {
                vectors.pop();
            }
            let answer = if route == "gemini" {
                json!({"embeddings": vectors.into_iter().map(|v| json!({"values": v})).collect::<Vec<_>>()})
            } else {
                let tokens: u64 = texts.iter().map(|t| fake_tokens(t)).sum();
                let data: Vec<Value> = vectors
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let embedding = if b64 {
                            let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                        } else {
                            Value::from(v)
                        };
                        json!({"object": "embedding", "index": i, "embedding": embedding})
                    })
                    .collect();
                json!({"object": "list", "data": data, "model": body.get("model").cloned().unwrap_or(Value::Null),
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
            };
            (Some(json_response(200, &answer, &extra)), hang)
        }
    }
}
