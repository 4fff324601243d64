//! The fake server's streamed chat answers, in both wire formats: OpenAI-compatible
//! `chat.completion.chunk` events then `[DONE]` (the usage chunk only when the request asks
//! for it), and Anthropic's `message_start` ... `message_stop` (with a `ping`), as the real
//! servers send them. [`StreamFault`] scripts what goes wrong: a cut after K chunks, an error
//! event, no usage, a slow first chunk, a stall, a long fast stream. The body is produced as
//! the client reads it, so a client that stops reading stops the server.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};

/// A response body as the server's hyper service sends it.
type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// How a streamed answer goes wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamFault {
    /// The body ends after this many chunks, without the end event (a cut connection).
    CutAfter(usize),
    /// After this many chunks, an error event (Anthropic `overloaded_error`, an OpenAI error
    /// chunk), then the body ends.
    ErrorAfter(usize),
    /// No usage at all (OpenAI: no usage chunk even when asked; Anthropic: no usage fields).
    NoUsage,
    /// The head is sent at once and the first chunk only after this long.
    SlowFirst(Duration),
    /// After this many chunks, silence for this long, then the rest.
    Stall(usize, Duration),
    /// This many chunks of 1 KiB of text each, as fast as the client reads.
    Long(usize),
}

/// Which wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    OpenAi,
    Anthropic,
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    let mut out = String::new();
    if let Some(e) = event {
        out.push_str("event: ");
        out.push_str(e);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
    Bytes::from(out)
}

/// The pieces of text a reply streams as: its words (with their spaces).
fn words(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in reply.chars() {
        word.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The events of a streamed answer, made as they are sent (a long stream is never held
/// whole). `prompt` is the input usage; `id` and `model` go in every chunk.
fn events(
    format: Format,
    body: &Value,
    reply: &str,
    prompt: u64,
    id: &str,
    fault: Option<StreamFault>,
) -> Box<dyn Iterator<Item = Bytes> + Send + Sync> {
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let texts: Box<dyn Iterator<Item = String> + Send + Sync> = match fault {
        Some(StreamFault::Long(n)) => {
            Box::new(std::iter::repeat_n("abcdefghijklmnop".repeat(64), n))
        }
        _ => Box::new(words(reply).into_iter()),
    };
    let completion = match fault {
        Some(StreamFault::Long(n)) => (n as u64) * 256,
        _ => (reply.chars().count() as u64).div_ceil(4).max(1),
    };
    let no_usage = fault == Some(StreamFault::NoUsage);
    let id = id.to_string();
    let (head, pieces, tail): (
        Vec<Bytes>,
        Box<dyn Iterator<Item = Bytes> + Send + Sync>,
        Vec<Bytes>,
    ) = match format {
        Format::OpenAi => {
            let chunk = {
                let (id, model) = (id.clone(), model.clone());
                move |delta: Value, finish: Value| {
                    json!({"id": id, "object": "chat.completion.chunk", "created": 0,
                               "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                }
            };
            let head = vec![sse(
                None,
                &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            )];
            let mut tail = vec![sse(None, &chunk(json!({}), json!("stop")))];
            let asked = body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true);
            if asked && !no_usage {
                tail.push(sse(
                    None,
                    &json!({"id": id, "object": "chat.completion.chunk", "created": 0,
                                "model": model, "choices": [],
                                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                          "total_tokens": prompt + completion}}),
                ));
            }
            let pieces = texts.map(move |t| sse(None, &chunk(json!({"content": t}), Value::Null)));
            (head, Box::new(pieces), tail)
        }
        Format::Anthropic => {
            let start_usage = if no_usage {
                json!({})
            } else {
                json!({"input_tokens": prompt, "output_tokens": 1,
                           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
            };
            let head = vec![
                sse(
                    Some("message_start"),
                    &json!({"type": "message_start", "message": {"id": id, "type": "message",
                                "role": "assistant", "model": model, "content": [],
                                "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
                ),
                sse(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
                ),
                sse(Some("ping"), &json!({"type": "ping"})),
            ];
            let mut delta = json!({"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": null}});
            if !no_usage {
                // Cumulative: the total so far, as the API sends it.
                delta["usage"] = json!({"output_tokens": completion});
            }
            let tail = vec![
                sse(
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": 0}),
                ),
                sse(Some("message_delta"), &delta),
                sse(Some("message_stop"), &json!({"type": "message_stop"})),
            ];
            let pieces = texts.map(|t| {
                sse(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": t}}),
                )
            });
            (head, Box::new(pieces), tail)
        }
    };
    let end = match format {
        Format::OpenAi => Some(Bytes::from_static(b"data: [DONE]\n\n")),
        Format::Anthropic => None,
    };
    let all = head.into_iter().chain(pieces).chain(tail);
    match fault {
        Some(StreamFault::CutAfter(k)) => Box::new(all.take(k)),
        Some(StreamFault::ErrorAfter(k)) => {
            let error = match format {
                Format::OpenAi => sse(
                    None,
                    &json!({"error": {"message": "The server is overloaded; try again later.",
                                      "type": "server_error", "code": "overloaded"}}),
                ),
                Format::Anthropic => sse(
                    Some("error"),
                    &json!({"type": "error", "error": {"type": "overloaded_error",
                                                       "message": "Overloaded"}}),
                ),
            };
            Box::new(all.take(k).chain(std::iter::once(error)))
        }
        _ => Box::new(all.chain(end)),
    }
}

/// A streamed answer: [`events`] sent by [`response`].
pub(super) fn answer(
    format: Format,
    body: &Value,
    reply: &str,
    prompt: u64,
    id: &str,
    fault: Option<StreamFault>,
) -> Response<Body> {
    response(events(format, body, reply, prompt, id, fault), fault)
}

/// A `text/event-stream` response that sends `events` as the client reads them, with the
/// fault's delays.
fn response(
    events: Box<dyn Iterator<Item = Bytes> + Send + Sync>,
    fault: Option<StreamFault>,
) -> Response<Body> {
    let (first_delay, stall) = match fault {
        Some(StreamFault::SlowFirst(d)) => (Some(d), None),
        Some(StreamFault::Stall(k, d)) => (None, Some((k, d))),
        _ => (None, None),
    };
    let stream =
        futures_util::stream::iter(events.enumerate()).then(move |(i, bytes)| async move {
            if i == 0 {
                if let Some(d) = first_delay {
                    tokio::time::sleep(d).await;
                }
            }
            if let Some((k, d)) = stall {
                if i == k {
                    tokio::time::sleep(d).await;
                }
            }
            Ok::<_, std::convert::Infallible>(Frame::data(bytes))
        });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}
