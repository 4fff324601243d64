//! Anthropic Messages streams: `message_start`, then per content block
//! `content_block_start`/`_delta`/`_stop`, `message_delta` (stop reason and usage), and
//! `message_stop`; `ping` keep-alives anywhere, and an `error` event (`overloaded_error`, ...)
//! failing the stream. Usage is cumulative: `message_start` carries the input (and a first
//! output count), each `message_delta` the totals so far, so every count is replaced by the
//! latest one and never summed.

use serde_json::{json, Map, Value};

use crate::error::{Error, Provider};
use crate::http::chunks::{Step, StreamFormat};
use crate::http::sse::SseEvent;

use super::usage::MessageUsage;

/// One content block as its deltas add up.
#[derive(Debug)]
struct Block {
    index: u64,
    start: Map<String, Value>,
    text: String,
    json: String,
}

/// What a Messages stream adds up to.
#[derive(Debug, Default)]
pub struct MessageEvents {
    message: Map<String, Value>,
    blocks: Vec<Block>,
    stop_reason: Value,
    stop_sequence: Value,
    usage: Map<String, Value>,
    seen_usage: bool,
    chars: u64,
}

impl MessageEvents {
    fn block(&mut self, index: u64) -> Option<&mut Block> {
        self.blocks.iter_mut().find(|b| b.index == index)
    }

    fn take_usage(&mut self, usage: Option<&Value>) {
        if let Some(Value::Object(u)) = usage {
            for (k, v) in u {
                if !v.is_null() {
                    self.usage.insert(k.clone(), v.clone()); // the latest total, never a sum
                }
            }
            self.seen_usage = true;
        }
    }
}

fn malformed(reason: &str) -> Error {
    Error::ResponseFormat {
        reason: format!("a Messages stream event {reason}"),
    }
}

impl StreamFormat for MessageEvents {
    fn event(&mut self, event: SseEvent) -> Result<Step, Error> {
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| malformed(&format!("is not JSON: {e}")))?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("")
            .to_string();
        match kind.as_str() {
            "ping" => return Ok(Step::Skip),
            "error" => {
                let err = value.get("error").unwrap_or(&value);
                let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_string);
                return Err(Error::Stream {
                    provider: Provider::Anthropic,
                    message: text("message").unwrap_or_else(|| err.to_string()),
                    code: text("type"),
                });
            }
            "message_start" => {
                let Some(Value::Object(m)) = value.get("message") else {
                    return Err(malformed("`message_start` has no `message`"));
                };
                self.message = m.clone();
                self.take_usage(m.get("usage"));
            }
            "content_block_start" => {
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let start = match value.get("content_block") {
                    Some(Value::Object(b)) => b.clone(),
                    _ => return Err(malformed("`content_block_start` has no `content_block`")),
                };
                let text = start
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.chars += text.chars().count() as u64;
                self.blocks.push(Block {
                    index,
                    start,
                    text,
                    json: String::new(),
                });
            }
            "content_block_delta" => {
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = value.get("delta").cloned().unwrap_or(Value::Null);
                let Some(block) = self.block(index) else {
                    return Err(malformed("is a delta of a block that never started"));
                };
                let mut chars = 0;
                for key in ["text", "thinking"] {
                    if let Some(t) = delta.get(key).and_then(Value::as_str) {
                        block.text.push_str(t);
                        chars += t.chars().count() as u64;
                    }
                }
                if let Some(j) = delta.get("partial_json").and_then(Value::as_str) {
                    block.json.push_str(j);
                    chars += j.chars().count() as u64;
                }
                self.chars += chars;
            }
            "message_delta" => {
                if let Some(d) = value.get("delta") {
                    if let Some(r) = d.get("stop_reason").filter(|r| !r.is_null()) {
                        self.stop_reason = r.clone();
                    }
                    if let Some(s) = d.get("stop_sequence").filter(|s| !s.is_null()) {
                        self.stop_sequence = s.clone();
                    }
                }
                self.take_usage(value.get("usage"));
            }
            "message_stop" => return Ok(Step::Last(value)),
            _ => {} // content_block_stop, and types added later: passed through
        }
        Ok(Step::Chunk(value))
    }

    fn response(&self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|b| {
                let mut block = b.start.clone();
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        block.insert("text".into(), Value::from(b.text.as_str()));
                    }
                    Some("thinking") => {
                        block.insert("thinking".into(), Value::from(b.text.as_str()));
                    }
                    Some("tool_use") | Some("server_tool_use") if !b.json.is_empty() => {
                        let input = serde_json::from_str(&b.json)
                            .unwrap_or_else(|_| Value::from(b.json.as_str()));
                        block.insert("input".into(), input);
                    }
                    _ => {}
                }
                Value::Object(block)
            })
            .collect();
        let mut out = self.message.clone();
        out.entry("type").or_insert(json!("message"));
        out.entry("role").or_insert(json!("assistant"));
        out.insert("content".into(), Value::from(content));
        out.insert("stop_reason".into(), self.stop_reason.clone());
        out.insert("stop_sequence".into(), self.stop_sequence.clone());
        out.insert("usage".into(), Value::Object(self.usage.clone()));
        Value::Object(out)
    }

    fn usage(&self) -> Option<(u64, u64)> {
        if !self.seen_usage {
            return None;
        }
        let u = MessageUsage::of(&json!({ "usage": self.usage }));
        Some((u.all_input(), u.output_tokens))
    }

    fn received_chars(&self) -> u64 {
        self.chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: Value) -> SseEvent {
        SseEvent {
            event: data["type"].as_str().map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn usage_is_the_latest_total_never_a_sum() {
        let mut f = MessageEvents::default();
        let events = [
            json!({"type":"message_start","message":{"id":"m1","type":"message","role":"assistant","model":"claude","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}),
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            json!({"type":"ping"}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}),
            json!({"type":"content_block_stop","index":0}),
            json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}),
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":"}}),
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"2}"}}),
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":10}}),
            json!({"type":"message_delta","delta":{},"usage":{"output_tokens":15}}),
        ];
        let mut skipped = 0;
        for e in events {
            if matches!(f.event(ev(e)).unwrap(), Step::Skip) {
                skipped += 1;
            }
        }
        assert_eq!(skipped, 1);
        assert!(matches!(
            f.event(ev(json!({"type":"message_stop"}))).unwrap(),
            Step::Last(_)
        ));
        assert_eq!(f.usage(), Some((25, 15)));
        let r = f.response();
        assert_eq!(r["content"][0]["text"], "Hi there");
        assert_eq!(r["content"][1]["input"], json!({"x": 2}));
        assert_eq!(r["stop_reason"], "tool_use");
        assert_eq!(r["usage"]["output_tokens"], 15);
    }

    #[test]
    fn an_error_event_is_a_stream_error() {
        let mut f = MessageEvents::default();
        let e = f
            .event(ev(
                json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            ))
            .unwrap_err();
        assert!(
            matches!(e, Error::Stream { ref code, .. } if code.as_deref() == Some("overloaded_error"))
        );
    }
}
