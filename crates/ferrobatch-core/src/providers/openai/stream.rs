//! OpenAI-compatible chat streams: `chat.completion.chunk` objects as `data:` events, then
//! `data: [DONE]`. The usage comes in one last chunk with `choices: []` when the request asks
//! for it (`stream_options.include_usage`); some servers (vLLM with continuous usage) send it
//! on every chunk, cumulative: the last one counts. An `error` object in place of a chunk is
//! the server failing the stream.

use serde_json::{json, Map, Value};

use crate::error::{Error, Provider};
use crate::http::chunks::{Step, StreamFormat};
use crate::http::sse::SseEvent;

/// One choice as its deltas add up.
#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    finish_reason: Value,
    /// Tool calls by their `index`.
    tool_calls: Vec<(u64, Map<String, Value>, String)>,
}

/// What an OpenAI-compatible stream adds up to.
#[derive(Debug, Default)]
pub struct ChatChunks {
    id: Value,
    model: Value,
    created: Value,
    system_fingerprint: Value,
    /// Choices by their `index`.
    choices: Vec<(u64, Choice)>,
    usage: Option<Value>,
    chars: u64,
}

fn append(slot: &mut Option<String>, piece: &str) {
    slot.get_or_insert_with(String::new).push_str(piece);
}

impl ChatChunks {
    fn choice(&mut self, index: u64) -> &mut Choice {
        let at = match self.choices.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.choices.push((index, Choice::default()));
                self.choices.len() - 1
            }
        };
        &mut self.choices[at].1
    }

    fn add(&mut self, chunk: &Value) {
        for (field, slot) in [
            ("id", &mut self.id),
            ("model", &mut self.model),
            ("created", &mut self.created),
            ("system_fingerprint", &mut self.system_fingerprint),
        ] {
            if let Some(v) = chunk.get(field).filter(|v| !v.is_null()) {
                *slot = v.clone();
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone()); // cumulative where repeated: the last one counts
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        let mut chars = 0u64;
        for c in choices {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let choice = self.choice(index);
            if let Some(r) = c.get("finish_reason").filter(|r| !r.is_null()) {
                choice.finish_reason = r.clone();
            }
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                choice.role = Some(role.to_string());
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                append(&mut choice.content, text);
                chars += text.chars().count() as u64;
            }
            if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
                append(&mut choice.refusal, text);
                chars += text.chars().count() as u64;
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let at = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let pos = match choice.tool_calls.iter().position(|(i, _, _)| *i == at) {
                    Some(p) => p,
                    None => {
                        choice.tool_calls.push((at, Map::new(), String::new()));
                        choice.tool_calls.len() - 1
                    }
                };
                let (_, fields, arguments) = &mut choice.tool_calls[pos];
                for key in ["id", "type"] {
                    if let Some(v) = call.get(key).filter(|v| !v.is_null()) {
                        fields.insert(key.into(), v.clone());
                    }
                }
                if let Some(f) = call.get("function") {
                    if let Some(name) = f.get("name").and_then(Value::as_str) {
                        fields.insert("name".into(), Value::from(name));
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        arguments.push_str(a);
                        chars += a.chars().count() as u64;
                    }
                }
            }
        }
        self.chars += chars;
    }
}

impl StreamFormat for ChatChunks {
    fn event(&mut self, event: SseEvent) -> Result<Step, Error> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done);
        }
        if data.is_empty() {
            return Ok(Step::Skip);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| Error::ResponseFormat {
            reason: format!("a stream chunk is not JSON: {e}"),
        })?;
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_string);
            return Err(Error::Stream {
                provider: Provider::OpenAi,
                message: text("message").unwrap_or_else(|| err.to_string()),
                code: text("code").or_else(|| text("type")),
            });
        }
        if !chunk.is_object() {
            return Err(Error::ResponseFormat {
                reason: "a stream chunk is not a JSON object".to_string(),
            });
        }
        self.add(&chunk);
        Ok(Step::Chunk(chunk))
    }

    fn response(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, c)| {
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    Value::from(c.role.clone().unwrap_or_else(|| "assistant".into())),
                );
                message.insert(
                    "content".into(),
                    c.content.clone().map_or(Value::Null, Value::from),
                );
                if let Some(r) = &c.refusal {
                    message.insert("refusal".into(), Value::from(r.as_str()));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .iter()
                        .map(|(_, fields, arguments)| {
                            json!({
                                "id": fields.get("id").cloned().unwrap_or(Value::Null),
                                "type": fields.get("type").cloned().unwrap_or(Value::from("function")),
                                "function": {
                                    "name": fields.get("name").cloned().unwrap_or(Value::Null),
                                    "arguments": arguments,
                                },
                            })
                        })
                        .collect();
                    message.insert("tool_calls".into(), Value::from(calls));
                }
                json!({
                    "index": index,
                    "message": message,
                    "finish_reason": c.finish_reason,
                })
            })
            .collect();
        let mut out = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if !self.system_fingerprint.is_null() {
            out["system_fingerprint"] = self.system_fingerprint.clone();
        }
        if let Some(u) = &self.usage {
            out["usage"] = u.clone();
        }
        out
    }

    fn usage(&self) -> Option<(u64, u64)> {
        let u = self.usage.as_ref()?;
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some((n("prompt_tokens"), n("completion_tokens")))
    }

    fn received_chars(&self) -> u64 {
        self.chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut ChatChunks, data: &str) -> Step {
        f.event(SseEvent {
            event: None,
            data: data.into(),
        })
        .unwrap()
    }

    #[test]
    fn chunks_add_up_to_a_completion_and_the_last_usage_counts() {
        let mut f = ChatChunks::default();
        feed(
            &mut f,
            r#"{"id":"c1","model":"m","created":1,"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
        );
        feed(
            &mut f,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#,
        );
        feed(
            &mut f,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
        );
        feed(
            &mut f,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
        );
        assert!(matches!(feed(&mut f, "[DONE]"), Step::Done));
        let r = f.response();
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(r["choices"][0]["message"]["content"], "Hello");
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
        let call = &r["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "t1");
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(f.usage(), Some((5, 7)), "replaced, never summed");
    }

    #[test]
    fn an_error_chunk_is_a_stream_error() {
        let mut f = ChatChunks::default();
        let e = f
            .event(SseEvent {
                event: None,
                data: r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into(),
            })
            .unwrap_err();
        assert!(
            matches!(e, Error::Stream { ref code, .. } if code.as_deref() == Some("server_error"))
        );
    }
}
