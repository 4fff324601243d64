//! A job's results as an OpenAI Batch API output file: one JSON line per request, in submit
//! order, `{"id", "custom_id", "response": {"status_code", "body"} | null, "error" | null}`.
//! Stored response bodies are copied in as they are, never parsed again.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::model::ResultRow;
use crate::error::Error;

#[derive(Serialize)]
struct Line<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<Response<'a>>,
    error: Option<Value>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    body: &'a RawValue,
}

fn io(e: std::io::Error) -> Error {
    Error::Store {
        operation: "writing results",
        message: e.to_string(),
    }
}

/// The output line's `error` of a stored error object (or of a request that never ran).
fn error_object(row: &ResultRow) -> Option<Value> {
    if let Some(text) = &row.error {
        let stored: Map<String, Value> = serde_json::from_str(text).unwrap_or_default();
        let code = stored
            .get("code")
            .filter(|c| !c.is_null())
            .or_else(|| stored.get("type"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut out = Map::new();
        out.insert("code".into(), code);
        out.insert(
            "message".into(),
            stored
                .get("message")
                .cloned()
                .unwrap_or(Value::from(text.as_str())),
        );
        if let Some(status) = stored.get("status").filter(|s| !s.is_null()) {
            out.insert("status_code".into(), status.clone());
        }
        return Some(Value::Object(out));
    }
    if row.response.is_none() {
        let mut out = Map::new();
        out.insert("code".into(), Value::from(row.status.as_str()));
        out.insert(
            "message".into(),
            Value::from(format!("the request was not run ({})", row.status)),
        );
        return Some(Value::Object(out));
    }
    None
}

/// Write every row as one output line.
pub fn write_jsonl(rows: &[ResultRow], out: &mut impl Write) -> Result<(), Error> {
    for row in rows {
        let body = match &row.response {
            Some(text) => {
                Some(
                    serde_json::from_str::<&RawValue>(text).map_err(|e| Error::Store {
                        operation: "writing results",
                        message: format!("the stored response of {:?} is not JSON: {e}", row.id),
                    })?,
                )
            }
            None => None,
        };
        let line = Line {
            id: format!("batch_req_{}", row.seq),
            custom_id: &row.id,
            response: body.map(|body| Response {
                status_code: 200,
                body,
            }),
            error: if row.response.is_some() && row.error.is_none() {
                None
            } else {
                error_object(row)
            },
        };
        let mut text = serde_json::to_string(&line).map_err(|e| io(e.into()))?;
        // Valid JSON, but line breaks to readers that split on every Unicode line break
        // (Python's str.splitlines): escape them, as Python's json.dumps does.
        if text.contains(['\u{2028}', '\u{2029}', '\u{85}']) {
            text = text
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029")
                .replace('\u{85}', "\\u0085");
        }
        out.write_all(text.as_bytes()).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
    }
    Ok(())
}

/// Write the output file at `path` atomically: to a temporary file beside it, then renamed,
/// so a reader never sees half a file.
pub fn write_file(rows: &[ResultRow], path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "results.jsonl".into());
    let tmp = dir.join(format!(".{name}.{:08x}.tmp", fastrand::u32(..)));
    let written = (|| {
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        write_jsonl(rows, &mut w)?;
        w.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, status: &str, response: Option<&str>, error: Option<&str>) -> ResultRow {
        ResultRow {
            seq,
            id: format!("c{seq}"),
            status: status.into(),
            response: response.map(Into::into),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn lines_follow_the_batch_output_format() {
        let rows = [
            row(0, "succeeded", Some("{\"choices\": [1]}"), None),
            row(
                1,
                "failed",
                None,
                Some("{\"type\":\"BadRequestError\",\"message\":\"no\",\"status\":400}"),
            ),
            row(2, "cancelled", None, None),
        ];
        let mut out = Vec::new();
        write_jsonl(&rows, &mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], "batch_req_0");
        assert_eq!(lines[0]["custom_id"], "c0");
        assert_eq!(lines[0]["response"]["status_code"], 200);
        assert_eq!(lines[0]["response"]["body"]["choices"][0], 1);
        assert!(lines[0]["error"].is_null());
        assert!(lines[1]["response"].is_null());
        assert_eq!(
            lines[1]["error"],
            serde_json::json!({"code": "BadRequestError", "message": "no", "status_code": 400})
        );
        assert_eq!(lines[2]["error"]["code"], "cancelled");
        assert_eq!(
            lines[2]["error"]["message"],
            "the request was not run (cancelled)"
        );
        let mut out = Vec::new();
        write_jsonl(
            &[row(0, "succeeded", Some("\"a\u{2028}b\""), None)],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("a\\u2028b") && text.lines().count() == 1);
    }
}
