//! Job input: the one reader of OpenAI Batch API JSONL files and the one check of a request
//! body per endpoint. The CLI, `BatchManager.submit` and the bindings ask; none checks again.
//!
//! The reader streams the file line by line (a line's JSON lives only while it is checked; the
//! store gets each body as compact JSON text), hashes it as it goes, and names the line of the
//! first problem. Nothing is written before the whole file is checked.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::jobs::model::NewRequest;
use crate::providers;
use crate::providers::gemini::batch::CHAT_FIELDS as GEMINI_CHAT_FIELDS;

/// The endpoints a job's requests may name (the OpenAI Batch API's `url`).
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages"];

/// The embeddings body fields a job honours.
pub const EMBEDDING_FIELDS: [&str; 5] = ["input", "model", "dimensions", "encoding_format", "user"];

/// The embeddings model and size every body of a job must agree with (a body may repeat them,
/// never differ: one job's embeddings go through one client).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingShape {
    /// The model (`None`: the client's default).
    pub model: Option<Value>,
    /// The output size (`None`: the model's own).
    pub dimensions: Option<Value>,
    /// Whose settings they are, for messages: "the client's", "line 1's".
    pub source: String,
}

impl EmbeddingShape {
    /// The shape a body states (its `model` and `dimensions`).
    pub fn of(body: &Map<String, Value>, source: impl Into<String>) -> Self {
        EmbeddingShape {
            model: body.get("model").cloned(),
            dimensions: body.get("dimensions").cloned(),
            source: source.into(),
        }
    }

    /// `Err` naming the field when `body` states another model or size.
    fn check(&self, body: &Map<String, Value>, repeat_optional: bool) -> Result<(), String> {
        for (field, have) in [("model", &self.model), ("dimensions", &self.dimensions)] {
            let stated = body.get(field);
            let differs = match (stated, have) {
                (Some(s), Some(h)) => s != h,
                (Some(_), None) | (None, Some(_)) => !repeat_optional,
                (None, None) => false,
            };
            if differs {
                let show = |v: Option<&Value>| v.map_or("unset".to_string(), Value::to_string);
                return Err(format!(
                    "`{field}` {} differs from {} {}; a job's embeddings use one model and size",
                    show(stated),
                    self.source,
                    show(have.as_ref())
                ));
            }
        }
        Ok(())
    }
}

/// What a job's bodies are checked against besides their endpoint's shape.
#[derive(Debug, Clone, Default)]
pub struct BodyRules {
    /// The job goes through Gemini's Batch Mode: only the chat fields it translates.
    pub gemini_batch: bool,
    /// The embeddings client's model and size.
    pub embeddings: Option<EmbeddingShape>,
}

fn field_list(fields: &[&str]) -> String {
    fields.join(", ")
}

/// The one check of a request body for `endpoint`: `Err` says what is wrong (the caller names
/// the request or line).
pub fn check_body(
    endpoint: &str,
    body: &Map<String, Value>,
    rules: &BodyRules,
) -> Result<(), String> {
    match endpoint {
        "/v1/embeddings" => {
            let unknown: Vec<&str> = body
                .keys()
                .map(String::as_str)
                .filter(|k| !EMBEDDING_FIELDS.contains(k))
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "unsupported embeddings field(s): {} (a job's embeddings take {})",
                    field_list(&unknown),
                    field_list(&EMBEDDING_FIELDS)
                ));
            }
            let ok = match body.get("input") {
                Some(Value::String(_)) => true,
                Some(Value::Array(items)) => {
                    !items.is_empty() && items.iter().all(Value::is_string)
                }
                _ => false,
            };
            if !ok {
                return Err("`input` must be a string or a non-empty list of strings".into());
            }
            if let Some(shape) = &rules.embeddings {
                shape.check(body, true)?;
            }
            Ok(())
        }
        "/v1/chat/completions" | "/v1/messages" => {
            if !matches!(body.get("messages"), Some(Value::Array(_))) {
                return Err("`messages` must be a list".into());
            }
            if endpoint == "/v1/messages" {
                let positive = body
                    .get("max_tokens")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n > 0);
                if !positive {
                    return Err("`max_tokens` must be an integer > 0".into());
                }
            } else if rules.gemini_batch {
                let unknown: Vec<&str> = body
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !GEMINI_CHAT_FIELDS.contains(k))
                    .collect();
                if !unknown.is_empty() {
                    return Err(format!(
                        "field(s) {} have no Gemini batch equivalent; a Gemini batch translates {}",
                        field_list(&unknown),
                        field_list(GEMINI_CHAT_FIELDS)
                    ));
                }
            }
            Ok(())
        }
        other => Err(format!(
            "unsupported endpoint {other:?} (use one of {})",
            field_list(&ENDPOINTS)
        )),
    }
}

/// How a job will be sent, as far as its bodies care: through a provider's batch API or not.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// Through a provider's batch API.
    pub batch_api: bool,
    /// The batch provider named by the user (`None`: detected from the endpoint and URL).
    pub provider: Option<String>,
    /// The base URL the job will be sent to, for detection.
    pub base_url: Option<String>,
}

impl Route {
    /// The rules for a job on `endpoint` sent this way.
    pub fn rules(&self, endpoint: &str) -> BodyRules {
        let provider = match &self.provider {
            Some(p) => p.as_str(),
            None => providers::detect(endpoint, self.base_url.as_deref()).name,
        };
        BodyRules {
            gemini_batch: self.batch_api
                && provider == "gemini"
                && endpoint == "/v1/chat/completions",
            embeddings: None,
        }
    }
}

/// A checked JSONL input file, ready to store.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// The endpoint every line names.
    pub endpoint: &'static str,
    /// The requests in file order, bodies as compact JSON text.
    pub requests: Vec<NewRequest>,
    /// SHA-256 of the file's bytes (hex): a rerun of the same file finds its job.
    pub input_hash: String,
    /// The first body's `model`, if it names one.
    pub model: Option<String>,
    /// The first body's `dimensions` (embeddings), if any.
    pub dimensions: Option<u64>,
}

fn line_error(label: &str, line: usize, reason: impl std::fmt::Display) -> Error {
    Error::InvalidInput {
        reason: format!("{label}:{line}: {reason}"),
    }
}

/// Read and check an OpenAI Batch API input file; `label` names it in errors
/// (`label:LINE: what`).
pub fn read_jsonl(path: &Path, label: &str, route: &Route) -> Result<JobInput, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::InvalidInput {
        reason: format!("cannot read {label}: {e}"),
    })?;
    read_lines(BufReader::with_capacity(1 << 16, file), label, route)
}

/// [`read_jsonl`] over any reader.
pub fn read_lines(mut reader: impl BufRead, label: &str, route: &Route) -> Result<JobInput, Error> {
    let mut hasher = Sha256::new();
    let mut raw = Vec::new();
    let mut offset = 0usize;
    let mut n = 0usize;
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut endpoint: Option<(&'static str, usize)> = None;
    let mut rules = BodyRules::default();
    let mut file_shape: Option<EmbeddingShape> = None;
    let mut requests = Vec::new();
    let (mut model, mut dimensions) = (None, None);
    loop {
        raw.clear();
        let read = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| Error::InvalidInput {
                reason: format!("cannot read {label}: {e}"),
            })?;
        if read == 0 {
            break;
        }
        hasher.update(&raw);
        n += 1;
        let start = offset;
        offset += read;
        // A leading byte-order mark (editors write one) is not part of line 1.
        let bytes = if n == 1 {
            raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&raw)
        } else {
            &raw[..]
        };
        // JSON Lines end at "\n" only: U+2028 and the like may stand unescaped in strings.
        let text = std::str::from_utf8(bytes).map_err(|e| {
            line_error(
                label,
                n,
                format!("not valid UTF-8 (at byte {})", start + e.valid_up_to()),
            )
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| line_error(label, n, format!("not valid JSON ({e})")))?;
        let Value::Object(mut obj) = value else {
            return Err(line_error(label, n, "each line must be a JSON object"));
        };
        let id = match obj.remove("custom_id") {
            Some(Value::String(id)) if !id.is_empty() => id,
            _ => {
                return Err(line_error(
                    label,
                    n,
                    "`custom_id` must be a non-empty string",
                ))
            }
        };
        if let Some(first) = first_line.get(&id) {
            return Err(line_error(
                label,
                n,
                format!("duplicate custom_id {id:?} (first on line {first})"),
            ));
        }
        match obj.get("method") {
            None => {}
            Some(Value::String(m)) if m == "POST" => {}
            Some(other) => {
                return Err(line_error(
                    label,
                    n,
                    format!("unsupported method {other} (only POST)"),
                ))
            }
        }
        let url = obj.get("url").and_then(Value::as_str).unwrap_or_default();
        let Some(url) = ENDPOINTS.iter().copied().find(|e| *e == url) else {
            let shown = obj.get("url").map_or("none".into(), Value::to_string);
            return Err(line_error(
                label,
                n,
                format!(
                    "unsupported url {shown} (use one of {})",
                    field_list(&ENDPOINTS)
                ),
            ));
        };
        match endpoint {
            None => {
                endpoint = Some((url, n));
                rules = route.rules(url);
            }
            Some((first, at)) if first != url => {
                return Err(line_error(
                    label,
                    n,
                    format!(
                        "url {url:?} differs from {first:?} on line {at}; one endpoint per file"
                    ),
                ))
            }
            Some(_) => {}
        }
        let Some(Value::Object(body)) = obj.remove("body") else {
            return Err(line_error(label, n, "`body` must be a JSON object"));
        };
        if requests.is_empty() {
            model = body
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string);
            dimensions = body.get("dimensions").and_then(Value::as_u64);
            if url == "/v1/embeddings" {
                file_shape = Some(EmbeddingShape::of(&body, format!("line {n}'s")));
            }
        }
        if let Some(shape) = &file_shape {
            shape
                .check(&body, false)
                .map_err(|e| line_error(label, n, e))?;
        }
        check_body(url, &body, &rules).map_err(|e| line_error(label, n, e))?;
        first_line.insert(id.clone(), n);
        requests.push(NewRequest {
            id,
            body: Value::Object(body).to_string(),
        });
    }
    let Some((endpoint, _)) = endpoint else {
        return Err(Error::InvalidInput {
            reason: format!("{label}: no requests"),
        });
    };
    Ok(JobInput {
        endpoint,
        requests,
        input_hash: hex(&hasher.finalize()),
        model,
        dimensions,
    })
}

fn hex(digest: &[u8]) -> String {
    let mut out = String::with_capacity(2 * digest.len());
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<JobInput, String> {
        read_lines(text.as_bytes(), "in.jsonl", &Route::default()).map_err(|e| e.to_string())
    }

    fn chat(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[{{"role":"user","content":"hi"}}]}}}}"#
        )
    }

    #[test]
    fn a_good_file_is_read_in_order_with_its_hash() {
        let text = format!("\u{feff}{}\r\n\n{}\n", chat("a"), chat("b"));
        let input = read(&text).unwrap();
        assert_eq!(input.endpoint, "/v1/chat/completions");
        let ids: Vec<_> = input.requests.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(input.model.as_deref(), Some("m"));
        assert_eq!(input.input_hash, hex(&Sha256::digest(text.as_bytes())));
        assert!(input.requests[0]
            .body
            .starts_with(r#"{"model":"m","messages""#));
    }

    #[test]
    fn every_problem_names_its_line() {
        let cases = [
            (format!("{}\n{{not json", chat("a")), "in.jsonl:2: not valid JSON"),
            (format!("{}\n{}", chat("a"), chat("a")), "in.jsonl:2: duplicate custom_id \"a\" (first on line 1)"),
            (chat("a").replace("POST", "GET"), "in.jsonl:1: unsupported method \"GET\""),
            (chat("a").replace("/v1/chat/completions", "/v1/completions"), "in.jsonl:1: unsupported url \"/v1/completions\""),
            ("[1]".into(), "in.jsonl:1: each line must be a JSON object"),
            (r#"{"url":"/v1/embeddings","body":{"input":"t"}}"#.into(), "in.jsonl:1: `custom_id` must be"),
            (r#"{"custom_id":"x","url":"/v1/embeddings","body":{"input":"t","dims":3}}"#.into(), "in.jsonl:1: unsupported embeddings field(s): dims"),
            (r#"{"custom_id":"x","url":"/v1/embeddings","body":{"input":[]}}"#.into(), "in.jsonl:1: `input` must be"),
            (r#"{"custom_id":"x","url":"/v1/messages","body":{"messages":[]}}"#.into(), "in.jsonl:1: `max_tokens` must be an integer > 0"),
            (r#"{"custom_id":"x","url":"/v1/chat/completions","body":{}}"#.into(), "in.jsonl:1: `messages` must be a list"),
            (r#"{"custom_id":"x","url":"/v1/chat/completions","body":[]}"#.into(), "in.jsonl:1: `body` must be a JSON object"),
            (format!("{}\n{}", chat("a"), r#"{"custom_id":"x","url":"/v1/embeddings","body":{"input":"t"}}"#), "in.jsonl:2: url \"/v1/embeddings\" differs"),
            (concat!(r#"{"custom_id":"x","url":"/v1/embeddings","body":{"input":"t","dimensions":4}}"#, "\n",
                     r#"{"custom_id":"y","url":"/v1/embeddings","body":{"input":"t"}}"#).into(), "in.jsonl:2: `dimensions` unset differs from line 1's 4"),
            ("\n \n".into(), "in.jsonl: no requests"),
        ];
        for (text, want) in cases {
            let got = read(&text).unwrap_err();
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
        let bad = [chat("a").as_bytes(), b"\n{\"custom_id\": \"\xff\"}\n"].concat();
        let got = read_lines(&bad[..], "in.jsonl", &Route::default()).unwrap_err();
        assert!(
            got.to_string().contains("in.jsonl:2: not valid UTF-8"),
            "{got}"
        );
    }

    #[test]
    fn gemini_batches_refuse_fields_they_cannot_translate() {
        let route = Route {
            batch_api: true,
            provider: None,
            base_url: Some("https://generativelanguage.googleapis.com/v1beta/openai".into()),
        };
        let line = chat("a").replace(r#""model":"m""#, r#""model":"m","tools":[]"#);
        let got = read_lines(line.as_bytes(), "in", &route).unwrap_err();
        assert!(got
            .to_string()
            .contains("field(s) tools have no Gemini batch equivalent"));
        assert!(read_lines(line.as_bytes(), "in", &Route::default()).is_ok());
    }

    #[test]
    fn a_clients_embedding_shape_may_be_repeated_never_changed() {
        let rules = BodyRules {
            gemini_batch: false,
            embeddings: Some(EmbeddingShape {
                model: Some("e".into()),
                dimensions: Some(4.into()),
                source: "the client's".into(),
            }),
        };
        let body = |v: Value| v.as_object().unwrap().clone();
        assert!(check_body(
            "/v1/embeddings",
            &body(serde_json::json!({"input": "a"})),
            &rules
        )
        .is_ok());
        assert!(check_body(
            "/v1/embeddings",
            &body(serde_json::json!({"input": "a", "model": "e", "dimensions": 4})),
            &rules
        )
        .is_ok());
        let err = check_body(
            "/v1/embeddings",
            &body(serde_json::json!({"input": "a", "dimensions": 8})),
            &rules,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "`dimensions` 8 differs from the client's 4; a job's embeddings use one model and size"
        );
    }
}
