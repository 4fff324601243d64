//! The providers' batch APIs on the test server: OpenAI's files and `/v1/batches`,
//! Anthropic's `/v1/messages/batches`, Gemini's `:batchGenerateContent` and `/v1beta/batches`.
//!
//! A batch answers every request when it is created (through the same routes as the online
//! API, so a request gets the same answer either way) and reveals the answers as it moves
//! through its states over `ServerConfig::batch_duration`: the first fifth validating
//! (OpenAI `validating`, Gemini `PENDING`), then running with the counts growing (Anthropic's
//! stay 0 until `ended`), then ended. A cancel takes `cancel_delay` (`cancelling`/`canceling`)
//! and leaves the requests answered by then as partial output. A [`BatchFault`] scripted for
//! the next create changes how that batch ends.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use serde_json::{json, Value};

use super::fake::{fake_reply, fake_tokens};
use super::server::{
    bad_request, json_response, respond, scripted, unauthorized, Api, Body, FaultKind,
    ServerConfig, State, REJECT_MARKER,
};

/// How a scripted batch ends (see [`FaultKind::Batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum BatchFault {
    /// Validation fails: OpenAI `failed` with `errors.data` naming input line 1
    /// (`invalid_json_line`); Gemini `BATCH_STATE_FAILED` with an error.
    FailValidation,
    /// Time runs out after `done` requests: OpenAI `expired` with those in the output file and
    /// `batch_expired` lines for the rest; Anthropic `expired` results for the rest; Gemini
    /// `BATCH_STATE_EXPIRED` with no results at all.
    Expire {
        /// Requests answered before the window closed.
        done: usize,
    },
    /// OpenAI: `completed` with `output_file_id: null`, counts saying every request completed,
    /// and a `status_code: 0` error line for each.
    StatusZero,
    /// OpenAI: `failed` with `token_limit_exceeded` (the organization's enqueued-token queue
    /// is full).
    TokenLimit,
}

struct FakeFile {
    filename: String,
    purpose: String,
    bytes: Bytes,
    created: u64,
}

/// One request's answer: its id, HTTP status and body.
struct Answered {
    id: String,
    status: u16,
    body: Value,
}

struct FakeBatch {
    api: Api,
    id: String,
    created: Instant,
    created_unix: f64,
    endpoint: String,
    input_file_id: Option<String>,
    metadata: Value,
    display_name: String,
    model: String,
    answers: Vec<Answered>,
    fault: Option<BatchFault>,
    cancel_at: Option<Instant>,
    files: Option<(Option<String>, Option<String>)>,
}

/// The batches and files the server holds.
#[derive(Default)]
pub(super) struct Batches {
    files: HashMap<String, FakeFile>,
    batches: Vec<FakeBatch>,
    next: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Failed,
    Expired,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Validating,
    Running(usize),
    Cancelling(usize),
    Ended(End, usize),
}

fn unix(t: f64) -> u64 {
    t as u64
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// RFC 3339 (UTC, microseconds) of Unix seconds.
fn rfc3339(t: f64) -> String {
    let secs = t.floor() as i64;
    let micros = ((t - t.floor()) * 1e6) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl FakeBatch {
    fn view(&self, config: &ServerConfig, now: Instant) -> View {
        let n = self.answers.len();
        let total = config.batch_duration.as_secs_f64().max(1e-3);
        let validating = total * 0.2;
        let done_by = |t: Instant| {
            let run = t.saturating_duration_since(self.created).as_secs_f64() - validating;
            ((n as f64) * (run / (total - validating)).clamp(0.0, 1.0)).floor() as usize
        };
        let elapsed = now.saturating_duration_since(self.created).as_secs_f64();
        if let Some(c) = self.cancel_at {
            let done = done_by(c);
            // Gemini cancels at once.
            if self.api != Api::Gemini && now < c + config.cancel_delay {
                return View::Cancelling(done);
            }
            return View::Ended(End::Cancelled, done);
        }
        if elapsed < validating {
            return View::Validating;
        }
        match &self.fault {
            Some(BatchFault::FailValidation | BatchFault::TokenLimit) => {
                return View::Ended(End::Failed, 0)
            }
            Some(BatchFault::Expire { done }) if elapsed >= total => {
                return View::Ended(End::Expired, (*done).min(n))
            }
            _ => {}
        }
        if elapsed < total {
            View::Running(done_by(now))
        } else {
            View::Ended(End::Completed, n)
        }
    }
}

/// Which provider a batch route belongs to, and whether the call creates a batch.
pub(super) fn route(method: &str, path: &str) -> Option<(Api, bool)> {
    let create = method == "POST";
    if path == "/v1/files" || path.starts_with("/v1/files/") {
        Some((Api::OpenAi, false))
    } else if path == "/v1/batches" || path.starts_with("/v1/batches/") {
        Some((Api::OpenAi, create && path == "/v1/batches"))
    } else if path == "/v1/messages/batches" || path.starts_with("/v1/messages/batches/") {
        Some((Api::Anthropic, create && path == "/v1/messages/batches"))
    } else if path.starts_with("/v1beta/models/") && path.ends_with(":batchGenerateContent") {
        Some((Api::Gemini, create))
    } else if path == "/v1beta/batches" || path.starts_with("/v1beta/batches/") {
        Some((Api::Gemini, false))
    } else {
        None
    }
}

fn not_found(config: &ServerConfig, api: Api, what: &str) -> Response<Body> {
    let b = super::server::error_body(config.error_style, api, 404, what, None, None);
    json_response(404, &b, &[])
}

fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Answer a batch API call; None when the path is not one.
#[allow(clippy::too_many_arguments)]
pub(super) async fn handle(
    state: &State,
    config: &ServerConfig,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    raw: &Bytes,
    body: &Value,
    fault: Option<&FaultKind>,
) -> Option<(Option<Response<Body>>, Option<Duration>)> {
    let (api, _) = route(method, path)?;
    let mut hang = None;
    if let Some(answer) = scripted(state, config, api, fault, &mut hang) {
        return Some((answer, None));
    }
    if let Some(answer) = unauthorized(config, api, headers, query) {
        return Some((Some(answer), hang));
    }
    let batch_fault = match fault {
        Some(FaultKind::Batch(f)) => Some(f.clone()),
        _ => None,
    };
    let host = headers
        .iter()
        .find(|(k, _)| k == "host")
        .map_or("127.0.0.1", |(_, v)| v.as_str())
        .to_string();
    let answer = match api {
        Api::OpenAi => {
            openai(
                state,
                config,
                method,
                path,
                query,
                headers,
                raw,
                body,
                batch_fault,
            )
            .await
        }
        Api::Anthropic => {
            anthropic(state, config, method, path, query, &host, body, batch_fault).await
        }
        Api::Gemini => gemini(state, config, method, path, query, body, batch_fault).await,
    };
    Some((Some(answer), hang))
}

fn lock(state: &State) -> std::sync::MutexGuard<'_, Batches> {
    state.batches.lock().unwrap_or_else(|p| p.into_inner())
}

/// The answer of one request through the server's online routes (no faults, limits, keys or
/// latency).
async fn answer(
    state: &State,
    config: &ServerConfig,
    api: Api,
    route: &str,
    body: &Value,
) -> (u16, Value) {
    let quiet = ServerConfig {
        latency: Duration::ZERO,
        api_key: None,
        requests_per_minute: None,
        ..config.clone()
    };
    let inputs = if route == "embeddings" {
        super::server::openai_inputs(body)
    } else {
        Ok(Vec::new())
    };
    let (response, _) = respond(state, &quiet, api, Some(route), body, &[], "", inputs, None);
    let Some(response) = response else {
        return (500, json!({"error": {"message": "no answer"}}));
    };
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Gemini's `generateContent` answer to a `GenerateContentRequest`.
fn generate(request: &Value, model: &str) -> (u16, Value) {
    let last = request
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(|x| x.get("text").and_then(Value::as_str))
                .collect::<String>()
        });
    let Some(last) = last else {
        return (
            400,
            json!({"error": {"code": 400, "message": "contents is not specified", "status": "INVALID_ARGUMENT"}}),
        );
    };
    if last.contains(REJECT_MARKER) {
        return (
            400,
            json!({"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}),
        );
    }
    let prompt: u64 = request["contents"].as_array().map_or(0, |c| {
        c.iter().map(|x| fake_tokens(&x["parts"].to_string())).sum()
    });
    let reply = fake_reply(&last);
    let out = fake_tokens(&reply);
    (
        200,
        json!({
            "candidates": [{"content": {"parts": [{"text": reply}], "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": out,
                              "totalTokenCount": prompt + out},
            "modelVersion": model,
        }),
    )
}

fn next_id(b: &mut Batches, prefix: &str) -> String {
    b.next += 1;
    format!("{prefix}{:024x}", b.next)
}

// ---------------------------------------------------------------------------------------
// OpenAI

async fn upload(
    state: &State,
    config: &ServerConfig,
    headers: &[(String, String)],
    raw: &Bytes,
) -> Response<Body> {
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map_or("", |(_, v)| v.as_str());
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return bad_request(
            config,
            Api::OpenAi,
            "expected a multipart/form-data body",
            None,
        );
    };
    let stream = futures_util::stream::once({
        let raw = raw.clone();
        async move { Ok::<_, std::convert::Infallible>(raw) }
    });
    let mut form = multer::Multipart::new(stream, boundary);
    let (mut purpose, mut file) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().map(str::to_string);
        let Ok(bytes) = field.bytes().await else {
            return bad_request(
                config,
                Api::OpenAi,
                "a multipart field could not be read",
                None,
            );
        };
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" => file = Some((filename.unwrap_or_else(|| "upload".into()), bytes)),
            _ => {}
        }
    }
    let (Some(purpose), Some((filename, bytes))) = (purpose, file) else {
        return bad_request(
            config,
            Api::OpenAi,
            "`file` and `purpose` are required",
            Some("file"),
        );
    };
    let created = unix(now_unix());
    let mut b = lock(state);
    let id = next_id(&mut b, "file-");
    let object = json!({"id": id, "object": "file", "bytes": bytes.len(), "created_at": created,
        "expires_at": created + 30 * 86_400, "filename": filename, "purpose": purpose,
        "status": "processed", "status_details": null});
    b.files.insert(
        id,
        FakeFile {
            filename,
            purpose,
            bytes,
            created,
        },
    );
    json_response(200, &object, &[])
}

fn file_object(id: &str, f: &FakeFile) -> Value {
    json!({"id": id, "object": "file", "bytes": f.bytes.len(), "created_at": f.created,
        "expires_at": f.created + 30 * 86_400, "filename": f.filename, "purpose": f.purpose,
        "status": "processed", "status_details": null})
}

/// The output and error files of an ended OpenAI batch, made the first time they are asked for.
fn openai_files(b: &mut Batches, i: usize, view: View) -> (Option<String>, Option<String>) {
    if let Some(f) = &b.batches[i].files {
        return f.clone();
    }
    let View::Ended(end, done) = view else {
        return (None, None);
    };
    if end == End::Failed {
        b.batches[i].files = Some((None, None));
        return (None, None);
    }
    let batch = &b.batches[i];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for (k, a) in batch.answers.iter().enumerate() {
        let line = if batch.fault == Some(BatchFault::StatusZero) {
            json!({"id": format!("batch_req_{k}"), "custom_id": a.id,
                   "response": {"status_code": 0, "request_id": "", "body": {}}, "error": null})
        } else if k < done {
            json!({"id": format!("batch_req_{k}"), "custom_id": a.id,
                   "response": {"status_code": a.status, "request_id": format!("req_{k}"), "body": a.body},
                   "error": null})
        } else {
            let (code, message) = if end == End::Expired {
                (
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                )
            } else {
                (
                    "batch_cancelled",
                    "This request was cancelled before it could be executed.",
                )
            };
            json!({"id": format!("batch_req_{k}"), "custom_id": a.id, "response": null,
                   "error": {"code": code, "message": message}})
        };
        let ok = line
            .pointer("/response/status_code")
            .and_then(Value::as_u64)
            == Some(200);
        let target = if ok { &mut out } else { &mut err };
        target.extend_from_slice(line.to_string().as_bytes());
        target.push(b'\n');
    }
    let created = unix(now_unix());
    let file = |b: &mut Batches, bytes: Vec<u8>, name: &str| -> Option<String> {
        if bytes.is_empty() {
            return None;
        }
        let id = next_id(b, "file-");
        b.files.insert(
            id.clone(),
            FakeFile {
                filename: name.into(),
                purpose: "batch_output".into(),
                bytes: Bytes::from(bytes),
                created,
            },
        );
        Some(id)
    };
    let output = file(b, out, "batch_output.jsonl");
    let error = file(b, err, "batch_errors.jsonl");
    b.batches[i].files = Some((output.clone(), error.clone()));
    (output, error)
}

fn openai_object(b: &mut Batches, i: usize, config: &ServerConfig, now: Instant) -> Value {
    let view = b.batches[i].view(config, now);
    let (output, error) = openai_files(b, i, view);
    let batch = &b.batches[i];
    let n = batch.answers.len() as u64;
    let ok_by = |done: usize| {
        batch.answers[..done]
            .iter()
            .filter(|a| a.status == 200)
            .count() as u64
    };
    let t = batch.created_unix;
    let (status, completed, failed) = match view {
        View::Validating => ("validating", 0, 0),
        View::Running(d) => (
            if d == batch.answers.len() {
                "finalizing"
            } else {
                "in_progress"
            },
            ok_by(d),
            d as u64 - ok_by(d),
        ),
        View::Cancelling(d) => ("cancelling", ok_by(d), d as u64 - ok_by(d)),
        View::Ended(End::Completed, _) if batch.fault == Some(BatchFault::StatusZero) => {
            ("completed", n, 0)
        }
        View::Ended(End::Completed, d) => ("completed", ok_by(d), d as u64 - ok_by(d)),
        View::Ended(End::Failed, _) => ("failed", 0, 0),
        View::Ended(End::Expired, d) => ("expired", ok_by(d), n - ok_by(d)),
        View::Ended(End::Cancelled, d) => ("cancelled", ok_by(d), n - ok_by(d)),
    };
    let errors = match (&batch.fault, status) {
        (Some(BatchFault::FailValidation), "failed") => json!({"object": "list", "data": [
            {"code": "invalid_json_line", "line": 1, "message": "This line is not parseable as valid JSON.", "param": null}]}),
        (Some(BatchFault::TokenLimit), "failed") => json!({"object": "list", "data": [
            {"code": "token_limit_exceeded", "line": null, "param": null,
             "message": format!("Enqueued token limit reached for {} in organization org-fake. Limit: 2,000,000 enqueued tokens. Please try again once some in_progress batches have been completed.", batch.model)}]}),
        _ => Value::Null,
    };
    let stamp = |on: bool| {
        if on {
            json!(unix(t + 1.0))
        } else {
            Value::Null
        }
    };
    json!({
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "model": batch.model,
        "errors": errors, "input_file_id": batch.input_file_id, "completion_window": "24h",
        "status": status, "output_file_id": output, "error_file_id": error,
        "created_at": unix(t), "in_progress_at": stamp(!matches!(view, View::Validating)),
        "expires_at": unix(t) + 86_400, "finalizing_at": stamp(matches!(view, View::Ended(End::Completed, _))),
        "completed_at": stamp(status == "completed"), "failed_at": stamp(status == "failed"),
        "expired_at": stamp(status == "expired"), "cancelling_at": stamp(batch.cancel_at.is_some()),
        "cancelled_at": stamp(status == "cancelled"),
        "request_counts": {"total": n, "completed": completed, "failed": failed},
        "metadata": batch.metadata,
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    })
}

fn find(b: &Batches, api: Api, id: &str) -> Option<usize> {
    b.batches.iter().position(|x| x.api == api && x.id == id)
}

/// A page of a list, newest first: the items after `after` (an id), at most `limit`.
fn page(b: &Batches, api: Api, after: Option<&str>, limit: usize) -> (Vec<usize>, bool) {
    let mut all: Vec<usize> = (0..b.batches.len())
        .filter(|i| b.batches[*i].api == api)
        .collect();
    all.reverse();
    let start = after
        .and_then(|a| {
            all.iter()
                .position(|i| b.batches[*i].id == a)
                .map(|p| p + 1)
        })
        .unwrap_or(0);
    let rest = &all[start.min(all.len())..];
    let items: Vec<usize> = rest.iter().take(limit).copied().collect();
    (items, rest.len() > limit)
}

#[allow(clippy::too_many_arguments)]
async fn openai(
    state: &State,
    config: &ServerConfig,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    raw: &Bytes,
    body: &Value,
    fault: Option<BatchFault>,
) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let now = Instant::now();
    match (method, parts.as_slice()) {
        ("POST", ["files"]) => upload(state, config, headers, raw).await,
        ("GET", ["files", id]) => match lock(state).files.get(*id) {
            Some(f) => json_response(200, &file_object(id, f), &[]),
            None => not_found(config, Api::OpenAi, &format!("No such File object: {id}")),
        },
        ("GET", ["files", id, "content"]) => match lock(state).files.get(*id) {
            Some(f) => super::server::bytes_response(200, f.bytes.clone(), &[]),
            None => not_found(config, Api::OpenAi, &format!("No such File object: {id}")),
        },
        ("POST", ["batches"]) => openai_create(state, config, body, fault).await,
        ("GET", ["batches"]) => {
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(20usize)
                .clamp(1, 100);
            let mut b = lock(state);
            let (items, more) = page(&b, Api::OpenAi, query_param(query, "after"), limit);
            let data: Vec<Value> = items
                .iter()
                .map(|i| openai_object(&mut b, *i, config, now))
                .collect();
            let first = data.first().map(|d| d["id"].clone());
            let last = data.last().map(|d| d["id"].clone());
            json_response(
                200,
                &json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}),
                &[],
            )
        }
        ("GET", ["batches", id]) => {
            let mut b = lock(state);
            match find(&b, Api::OpenAi, id) {
                Some(i) => json_response(200, &openai_object(&mut b, i, config, now), &[]),
                None => not_found(
                    config,
                    Api::OpenAi,
                    &format!("No batch found with id '{id}'."),
                ),
            }
        }
        ("POST", ["batches", id, "cancel"]) => {
            let mut b = lock(state);
            let Some(i) = find(&b, Api::OpenAi, id) else {
                return not_found(
                    config,
                    Api::OpenAi,
                    &format!("No batch found with id '{id}'."),
                );
            };
            if matches!(b.batches[i].view(config, now), View::Ended(..)) {
                let msg = "Cannot cancel a batch that has already completed.";
                let e = super::server::error_body(
                    config.error_style,
                    Api::OpenAi,
                    409,
                    msg,
                    None,
                    None,
                );
                return json_response(409, &e, &[]);
            }
            b.batches[i].cancel_at.get_or_insert(now);
            json_response(200, &openai_object(&mut b, i, config, now), &[])
        }
        _ => not_found(
            config,
            Api::OpenAi,
            "no such endpoint on the ferrobatch test server",
        ),
    }
}

async fn openai_create(
    state: &State,
    config: &ServerConfig,
    body: &Value,
    fault: Option<BatchFault>,
) -> Response<Body> {
    let bad = |msg: &str, param: &str| bad_request(config, Api::OpenAi, msg, Some(param));
    let endpoint = body.get("endpoint").and_then(Value::as_str).unwrap_or("");
    let route = match endpoint {
        "/v1/chat/completions" => "chat",
        "/v1/embeddings" => "embeddings",
        _ => {
            return bad(
                &format!(
                "Invalid endpoint {endpoint:?}; expected /v1/chat/completions or /v1/embeddings"
            ),
                "endpoint",
            )
        }
    };
    if body.get("completion_window").and_then(Value::as_str) != Some("24h") {
        return bad("completion_window must be '24h'", "completion_window");
    }
    let Some(file_id) = body.get("input_file_id").and_then(Value::as_str) else {
        return bad("input_file_id is required", "input_file_id");
    };
    if let Some(m) = body.get("metadata").and_then(Value::as_object) {
        if m.len() > 16
            || m.iter()
                .any(|(k, v)| k.len() > 64 || v.as_str().is_none_or(|s| s.len() > 512))
        {
            return bad(
                "metadata: at most 16 string pairs, keys up to 64 and values up to 512 characters",
                "metadata",
            );
        }
    }
    let Some(bytes) = lock(state).files.get(file_id).map(|f| f.bytes.clone()) else {
        return not_found(
            config,
            Api::OpenAi,
            &format!("No such File object: {file_id}"),
        );
    };
    let mut answers = Vec::new();
    let mut model = String::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let Ok(line) = serde_json::from_slice::<Value>(line) else {
            return bad(&format!("line {}: not valid JSON", n + 1), "input_file_id");
        };
        let id = line
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !seen.insert(id.clone()) {
            return bad(
                &format!("line {}: duplicate custom_id {id:?}", n + 1),
                "input_file_id",
            );
        }
        if line.get("url").and_then(Value::as_str) != Some(endpoint) {
            return bad(
                &format!("line {}: url does not match the batch endpoint", n + 1),
                "input_file_id",
            );
        }
        let req = line.get("body").cloned().unwrap_or(Value::Null);
        let m = req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if n == 0 {
            model = m;
        } else if m != model {
            return bad(
                &format!(
                    "line {}: a batch file holds one model ({model}), got {m}",
                    n + 1
                ),
                "input_file_id",
            );
        }
        let (status, body) = answer(state, config, Api::OpenAi, route, &req).await;
        answers.push(Answered { id, status, body });
    }
    if answers.is_empty() {
        return bad("the input file is empty", "input_file_id");
    }
    let mut b = lock(state);
    let id = next_id(&mut b, "batch_");
    b.batches.push(FakeBatch {
        api: Api::OpenAi,
        id,
        created: Instant::now(),
        created_unix: now_unix(),
        endpoint: endpoint.to_string(),
        input_file_id: Some(file_id.to_string()),
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
        display_name: String::new(),
        model,
        answers,
        fault,
        cancel_at: None,
        files: None,
    });
    let i = b.batches.len() - 1;
    json_response(200, &openai_object(&mut b, i, config, Instant::now()), &[])
}

// ---------------------------------------------------------------------------------------
// Anthropic

fn anthropic_object(batch: &FakeBatch, config: &ServerConfig, now: Instant, host: &str) -> Value {
    let view = batch.view(config, now);
    let n = batch.answers.len() as u64;
    let t = batch.created_unix;
    let ok_by = |done: usize| {
        batch.answers[..done]
            .iter()
            .filter(|a| a.status == 200)
            .count() as u64
    };
    let (status, counts) = match view {
        View::Validating | View::Running(_) => (
            "in_progress",
            json!({"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}),
        ),
        View::Cancelling(_) => (
            "canceling",
            json!({"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}),
        ),
        View::Ended(end, d) => {
            let ok = ok_by(d);
            let rest = n - d as u64;
            let (canceled, expired) = match end {
                End::Cancelled => (rest, 0),
                _ => (0, rest),
            };
            (
                "ended",
                json!({"processing": 0, "succeeded": ok, "errored": d as u64 - ok, "canceled": canceled, "expired": expired}),
            )
        }
    };
    let ended = status == "ended";
    json!({
        "id": batch.id, "type": "message_batch", "processing_status": status,
        "request_counts": counts, "created_at": rfc3339(t), "expires_at": rfc3339(t + 86_400.0),
        "ended_at": if ended { json!(rfc3339(t + 1.0)) } else { Value::Null },
        "cancel_initiated_at": if batch.cancel_at.is_some() { json!(rfc3339(t + 0.5)) } else { Value::Null },
        "archived_at": null,
        "results_url": if ended { json!(format!("http://{host}/v1/messages/batches/{}/results", batch.id)) } else { Value::Null },
    })
}

fn anthropic_results(batch: &FakeBatch, view: View) -> Bytes {
    let View::Ended(end, done) = view else {
        return Bytes::new();
    };
    let mut out = Vec::new();
    for (k, a) in batch.answers.iter().enumerate() {
        let result = if k < done && a.status == 200 {
            json!({"type": "succeeded", "message": a.body})
        } else if k < done {
            json!({"type": "errored", "error": a.body})
        } else if end == End::Cancelled {
            json!({"type": "canceled"})
        } else {
            json!({"type": "expired"})
        };
        out.extend_from_slice(
            json!({"custom_id": a.id, "result": result})
                .to_string()
                .as_bytes(),
        );
        out.push(b'\n');
    }
    Bytes::from(out)
}

#[allow(clippy::too_many_arguments)]
async fn anthropic(
    state: &State,
    config: &ServerConfig,
    method: &str,
    path: &str,
    query: &str,
    host: &str,
    body: &Value,
    fault: Option<BatchFault>,
) -> Response<Body> {
    let parts: Vec<&str> = path
        .trim_start_matches("/v1/messages/")
        .split('/')
        .collect();
    let now = Instant::now();
    let missing = |id: &str| {
        not_found(
            config,
            Api::Anthropic,
            &format!("No batch found with id '{id}'"),
        )
    };
    match (method, parts.as_slice()) {
        ("POST", ["batches"]) => anthropic_create(state, config, host, body, fault).await,
        ("GET", ["batches"]) => {
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(20usize)
                .clamp(1, 1000);
            let b = lock(state);
            let (items, more) = page(&b, Api::Anthropic, query_param(query, "after_id"), limit);
            let data: Vec<Value> = items
                .iter()
                .map(|i| anthropic_object(&b.batches[*i], config, now, host))
                .collect();
            let first = data.first().map(|d| d["id"].clone());
            let last = data.last().map(|d| d["id"].clone());
            json_response(
                200,
                &json!({"data": data, "has_more": more, "first_id": first, "last_id": last}),
                &[],
            )
        }
        ("GET", ["batches", id]) => {
            let b = lock(state);
            match find(&b, Api::Anthropic, id) {
                Some(i) => json_response(
                    200,
                    &anthropic_object(&b.batches[i], config, now, host),
                    &[],
                ),
                None => missing(id),
            }
        }
        ("POST", ["batches", id, "cancel"]) => {
            let mut b = lock(state);
            let Some(i) = find(&b, Api::Anthropic, id) else {
                return missing(id);
            };
            if !matches!(b.batches[i].view(config, now), View::Ended(..)) {
                b.batches[i].cancel_at.get_or_insert(now);
            }
            json_response(
                200,
                &anthropic_object(&b.batches[i], config, now, host),
                &[],
            )
        }
        ("GET", ["batches", id, "results"]) => {
            let b = lock(state);
            let Some(i) = find(&b, Api::Anthropic, id) else {
                return missing(id);
            };
            let view = b.batches[i].view(config, now);
            if !matches!(view, View::Ended(..)) {
                let msg = format!("Batch '{id}' has not ended; results are not available yet");
                return bad_request(config, Api::Anthropic, &msg, None);
            }
            let mut r =
                super::server::bytes_response(200, anthropic_results(&b.batches[i], view), &[]);
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/binary"),
            );
            r
        }
        _ => not_found(
            config,
            Api::Anthropic,
            "no such endpoint on the ferrobatch test server",
        ),
    }
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

async fn anthropic_create(
    state: &State,
    config: &ServerConfig,
    host: &str,
    body: &Value,
    fault: Option<BatchFault>,
) -> Response<Body> {
    let bad = |msg: String| bad_request(config, Api::Anthropic, &msg, None);
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return bad("requests: Field required".into());
    };
    if requests.is_empty() || requests.len() > 100_000 {
        return bad(format!(
            "requests: must hold 1 to 100000 items, got {}",
            requests.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut answers = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let id = r.get("custom_id").and_then(Value::as_str).unwrap_or("");
        if id.len() > 64 {
            return bad(format!(
                "requests.{i}.custom_id: String should have at most 64 characters"
            ));
        }
        if !valid_custom_id(id) {
            return bad(format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !seen.insert(id.to_string()) {
            return bad(format!(
                "requests.{i}.custom_id: duplicate custom_id {id:?}"
            ));
        }
        let params = r.get("params").cloned().unwrap_or(Value::Null);
        let (status, body) = answer(state, config, Api::Anthropic, "messages", &params).await;
        answers.push(Answered {
            id: id.to_string(),
            status,
            body,
        });
    }
    let mut b = lock(state);
    let id = next_id(&mut b, "msgbatch_");
    b.batches.push(FakeBatch {
        api: Api::Anthropic,
        id,
        created: Instant::now(),
        created_unix: now_unix(),
        endpoint: "/v1/messages".into(),
        input_file_id: None,
        metadata: Value::Null,
        display_name: String::new(),
        model: String::new(),
        answers,
        fault,
        cancel_at: None,
        files: None,
    });
    let batch = b.batches.last().expect("just pushed");
    json_response(
        200,
        &anthropic_object(batch, config, Instant::now(), host),
        &[],
    )
}

// ---------------------------------------------------------------------------------------
// Gemini

fn gemini_object(batch: &FakeBatch, config: &ServerConfig, now: Instant) -> Value {
    let view = batch.view(config, now);
    let n = batch.answers.len();
    let t = batch.created_unix;
    let ok_by = |done: usize| {
        batch.answers[..done]
            .iter()
            .filter(|a| a.status == 200)
            .count()
    };
    let (state, done) = match view {
        View::Validating => ("BATCH_STATE_PENDING", 0),
        View::Running(d) | View::Cancelling(d) => ("BATCH_STATE_RUNNING", d),
        View::Ended(End::Completed, d) => ("BATCH_STATE_SUCCEEDED", d),
        View::Ended(End::Failed, _) => ("BATCH_STATE_FAILED", 0),
        View::Ended(End::Expired, _) => ("BATCH_STATE_EXPIRED", 0),
        View::Ended(End::Cancelled, _) => ("BATCH_STATE_CANCELLED", 0),
    };
    let ok = ok_by(done);
    // int64 counts travel as JSON strings.
    let stats = json!({"requestCount": n.to_string(), "successfulRequestCount": ok.to_string(),
                       "failedRequestCount": (done - ok).to_string(), "pendingRequestCount": (n - done).to_string()});
    let mut meta = json!({
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": format!("models/{}", batch.model), "displayName": batch.display_name,
        "createTime": rfc3339(t), "updateTime": rfc3339(now_unix()), "batchStats": stats,
        "state": state, "name": batch.id,
    });
    let ended = matches!(view, View::Ended(..));
    if ended {
        meta["endTime"] = json!(rfc3339(now_unix()));
    }
    let mut op = json!({"name": batch.id, "metadata": meta});
    if state == "BATCH_STATE_SUCCEEDED" {
        let items: Vec<Value> = batch
            .answers
            .iter()
            .map(|a| {
                if a.status == 200 {
                    json!({"response": a.body, "metadata": {"key": a.id}})
                } else {
                    json!({"error": {"code": 3, "message": a.body.pointer("/error/message").cloned().unwrap_or(json!("error")),
                                     "status": "INVALID_ARGUMENT"}, "metadata": {"key": a.id}})
                }
            })
            .collect();
        let output = json!({"inlinedResponses": {"inlinedResponses": items}});
        op["metadata"]["output"] = output.clone();
        let mut response = op["metadata"].clone();
        response["@type"] = json!(
            "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
        );
        response["inlinedResponses"] = output["inlinedResponses"].clone();
        op["response"] = response;
    }
    if state == "BATCH_STATE_FAILED" {
        op["error"] = json!({"code": 3, "message": "The batch failed validation: request 1 is not a valid GenerateContentRequest."});
    }
    if ended {
        op["done"] = json!(true);
    }
    op
}

async fn gemini(
    state: &State,
    config: &ServerConfig,
    method: &str,
    path: &str,
    query: &str,
    body: &Value,
    fault: Option<BatchFault>,
) -> Response<Body> {
    let now = Instant::now();
    let rest = path.trim_start_matches("/v1beta/");
    if let Some(model) = rest
        .strip_prefix("models/")
        .and_then(|m| m.strip_suffix(":batchGenerateContent"))
    {
        return gemini_create(state, config, model, body, fault).await;
    }
    let missing = |id: &str| not_found(config, Api::Gemini, &format!("Batch {id} not found."));
    if method == "GET" && rest == "batches" {
        let size = query_param(query, "pageSize")
            .and_then(|l| l.parse().ok())
            .unwrap_or(50usize)
            .clamp(1, 1000);
        let b = lock(state);
        let (items, more) = page(&b, Api::Gemini, query_param(query, "pageToken"), size);
        let ops: Vec<Value> = items
            .iter()
            .map(|i| gemini_object(&b.batches[*i], config, now))
            .collect();
        let mut out = json!({ "operations": ops });
        if more {
            out["nextPageToken"] = json!(items.last().map(|i| b.batches[*i].id.clone()));
        }
        return json_response(200, &out, &[]);
    }
    if let Some(name) = rest.strip_suffix(":cancel") {
        let mut b = lock(state);
        let Some(i) = find(&b, Api::Gemini, name) else {
            return missing(name);
        };
        if !matches!(b.batches[i].view(config, now), View::Ended(..)) {
            b.batches[i].cancel_at.get_or_insert(now);
        }
        return json_response(200, &json!({}), &[]);
    }
    if method == "GET" {
        let b = lock(state);
        return match find(&b, Api::Gemini, rest) {
            Some(i) => json_response(200, &gemini_object(&b.batches[i], config, now), &[]),
            None => missing(rest),
        };
    }
    not_found(
        config,
        Api::Gemini,
        "no such endpoint on the ferrobatch test server",
    )
}

async fn gemini_create(
    state: &State,
    config: &ServerConfig,
    model: &str,
    body: &Value,
    fault: Option<BatchFault>,
) -> Response<Body> {
    let batch = body.get("batch").unwrap_or(body);
    let display = batch
        .get("display_name")
        .or_else(|| batch.get("displayName"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let config_key = batch
        .get("input_config")
        .or_else(|| batch.get("inputConfig"));
    let Some(items) = config_key
        .and_then(|c| c.pointer("/requests/requests"))
        .and_then(Value::as_array)
    else {
        return bad_request(
            config,
            Api::Gemini,
            "batch.input_config.requests.requests is required",
            Some("batch.input_config"),
        );
    };
    let answers = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let key = item
                .pointer("/metadata/key")
                .and_then(Value::as_str)
                .map_or_else(|| i.to_string(), str::to_string);
            let (status, body) = generate(item.get("request").unwrap_or(&Value::Null), model);
            Answered {
                id: key,
                status,
                body,
            }
        })
        .collect();
    let mut b = lock(state);
    b.next += 1;
    let id = format!("batches/{:020x}", b.next);
    b.batches.push(FakeBatch {
        api: Api::Gemini,
        id,
        created: Instant::now(),
        created_unix: now_unix(),
        endpoint: String::new(),
        input_file_id: None,
        metadata: Value::Null,
        display_name: display,
        model: model.to_string(),
        answers,
        fault,
        cancel_at: None,
        files: None,
    });
    let batch = b.batches.last().expect("just pushed");
    json_response(200, &gemini_object(batch, config, Instant::now()), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_the_parser() {
        for t in [0.0, 1_724_179_044.5, 1_900_000_000.25] {
            let s = rfc3339(t);
            let back = crate::providers::batch::rfc3339(&s).unwrap();
            assert!((back - t).abs() < 1e-3, "{s}");
        }
    }
}
