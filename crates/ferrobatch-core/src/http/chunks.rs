//! What a streamed answer is made of, shared by the providers' formats, the chat client and
//! the stream itself: what one event means ([`Step`]), a provider's reader of its events
//! ([`StreamFormat`]), a streaming request ([`StreamRequest`]), how a stream ended, its
//! tokens, and a client's record of its streams ([`StreamBook`]).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::sse::SseEvent;
use crate::engine::{LatencySummary, LATENCY_BOUNDS};
use crate::error::Error;

/// What one event of a stream is.
#[derive(Debug)]
pub enum Step {
    /// A chunk for the caller.
    Chunk(Value),
    /// The stream's last chunk: the caller gets it, and the stream is complete.
    Last(Value),
    /// Nothing for the caller (a keep-alive `ping`).
    Skip,
    /// The stream is complete (OpenAI's `[DONE]`).
    Done,
}

/// A provider's streamed answer: its events made chunks, and what they add up to.
pub trait StreamFormat: Send {
    /// One event; an error event is an `Err` (the stream fails after what came before).
    fn event(&mut self, event: SseEvent) -> Result<Step, Error>;
    /// The answer the chunks so far add up to, in the provider's non-streaming shape.
    fn response(&self) -> Value;
    /// The (input, output) tokens the server reported, the last report (never a sum).
    fn usage(&self) -> Option<(u64, u64)>;
    /// Characters of text and tool arguments received (for an estimate without usage).
    fn received_chars(&self) -> u64;
}

/// A streaming request as a provider sends it.
pub struct StreamRequest {
    /// The path under the base URL.
    pub path: &'static str,
    /// The body, `"stream": true` (and what else the provider needs) set.
    pub body: Bytes,
    /// The model, for usage.
    pub model: String,
    /// Estimated input tokens.
    pub input_estimate: u64,
    /// Output tokens reserved: `max_tokens`, or [`DEFAULT_OUTPUT_RESERVATION`].
    pub output_reserved: u64,
    /// Whether the transport's limiter reserves the output too (false where the provider
    /// meters output on a budget of its own).
    pub output_on_transport: bool,
}

/// Output tokens reserved for a stream whose request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVATION: u64 = 1024;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamOutcome {
    /// Its end event arrived.
    Completed,
    /// The server or the connection failed it.
    Failed,
    /// Its caller dropped it before the end.
    Cancelled,
}

impl StreamOutcome {
    /// `completed`, `failed` or `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            StreamOutcome::Completed => "completed",
            StreamOutcome::Failed => "failed",
            StreamOutcome::Cancelled => "cancelled",
        }
    }
}

/// A stream's tokens: as the server reported them, or estimated when it did not (a stream
/// cut or dropped before its usage arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamUsage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// True when estimated (input from the request's text, output from the text received).
    pub estimated: bool,
}

/// A client's streams so far: how they ended, time to first chunk, gaps between chunks,
/// tokens streamed.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Streams by how they ended (`completed`, `failed`, `cancelled`).
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// From the request to the first chunk.
    pub time_to_first_chunk: LatencySummary,
    /// Between consecutive chunks.
    pub chunk_gap: LatencySummary,
    /// Output tokens of finished streams (reported, or estimated).
    pub output_tokens: u64,
}

/// Where a client records its streams.
#[derive(Debug)]
pub struct StreamBook {
    inner: Mutex<BookInner>,
}

#[derive(Debug)]
struct BookInner {
    outcomes: std::collections::BTreeMap<&'static str, u64>,
    first: crate::engine::stats::Latency,
    gap: crate::engine::stats::Latency,
    output_tokens: u64,
}

impl Default for StreamBook {
    fn default() -> Self {
        StreamBook {
            inner: Mutex::new(BookInner {
                outcomes: Default::default(),
                first: crate::engine::stats::Latency::with_bounds(LATENCY_BOUNDS.to_vec()),
                gap: crate::engine::stats::Latency::with_bounds(LATENCY_BOUNDS.to_vec()),
                output_tokens: 0,
            }),
        }
    }
}

impl StreamBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream that ended: how, its time to first chunk, its gaps, its output tokens.
    pub fn record(
        &self,
        outcome: StreamOutcome,
        first_chunk: Option<Duration>,
        gaps: impl IntoIterator<Item = Duration>,
        output_tokens: u64,
    ) {
        let mut book = self.lock();
        *book.outcomes.entry(outcome.name()).or_default() += 1;
        if let Some(first) = first_chunk {
            book.first.record(first);
        }
        for gap in gaps {
            book.gap.record(gap);
        }
        book.output_tokens += output_tokens;
    }

    /// The counts now.
    pub fn stats(&self) -> StreamStats {
        let g = self.lock();
        StreamStats {
            outcomes: g.outcomes.clone(),
            time_to_first_chunk: g.first.summary(),
            chunk_gap: g.gap.summary(),
            output_tokens: g.output_tokens,
        }
    }
}
