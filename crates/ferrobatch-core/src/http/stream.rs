//! A streamed chat answer, provider-agnostic (its vocabulary in [`super::chunks`]): the request admitted through the client's rate
//! limiter and retried only before anything reached the caller, the server-sent events read
//! only as fast as the caller takes chunks (the socket is the buffer), each event made a
//! chunk by the provider's [`StreamFormat`], two clocks (the first chunk, the gap between
//! chunks), and one settlement when the stream ends however it ends: finished, failed, or
//! dropped by its caller (which closes the connection at once). The provider formats live
//! in `providers/`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::chat::Chatter;
use super::chunks::{Step, StreamFormat, StreamOutcome, StreamRequest, StreamUsage};
use super::retry::Failure;
use super::sse::{SseEvent, SseParser, MAX_EVENT_BYTES};
use crate::error::Error;

/// The two clocks of a stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamClocks {
    /// The longest wait from the request to the first chunk (retries included).
    pub first_token: Duration,
    /// The longest gap between two chunks.
    pub idle: Duration,
}

/// One streamed answer. `next` hands out chunks; dropping it closes the connection.
pub struct ChatStream {
    chatter: Arc<Chatter>,
    request: StreamRequest,
    clocks: StreamClocks,
    response: Option<reqwest::Response>,
    parser: SseParser,
    format: Box<dyn StreamFormat>,
    ready: VecDeque<Value>,
    /// The error to raise once `ready` is empty.
    failed: Option<Error>,
    complete: bool,
    /// The transport holds this stream's tokens, and its usage is not recorded yet.
    held: bool,
    /// A provider budget of its own holds this stream's output reservation.
    output_held: bool,
    /// Counted among the client's streams.
    settled: bool,
    yielded: u64,
    opened: Instant,
    first_chunk: Option<Duration>,
    last_chunk: Option<Instant>,
    /// Gaps waiting to be recorded (recorded once, at the end).
    gaps: Vec<Duration>,
    events: Vec<SseEvent>,
    tried: u32,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("model", &self.request.model)
            .field("yielded", &self.yielded)
            .field("complete", &self.complete)
            .finish()
    }
}

impl ChatStream {
    /// Send `body` as a streaming request through `chatter`: admitted through its limiter,
    /// retried (429 with Retry-After, 5xx, connection errors) until the response begins.
    pub async fn open(
        chatter: Arc<Chatter>,
        body: Map<String, Value>,
        clocks: StreamClocks,
    ) -> Result<ChatStream, Error> {
        let request = chatter.api.stream_request(body)?;
        let format = chatter.api.stream_format();
        let cap = MAX_EVENT_BYTES.min(chatter.api.transport().max_response_bytes());
        let mut stream = ChatStream {
            chatter,
            request,
            clocks,
            response: None,
            parser: SseParser::new(cap),
            format,
            ready: VecDeque::new(),
            failed: None,
            complete: false,
            held: false,
            output_held: false,
            settled: false,
            yielded: 0,
            opened: Instant::now(),
            first_chunk: None,
            last_chunk: None,
            gaps: Vec::new(),
            events: Vec::new(),
            tried: 0,
        };
        if !stream.request.output_on_transport {
            stream
                .chatter
                .api
                .reserve_output(stream.request.output_reserved)
                .await?;
            stream.output_held = true;
        }
        match stream.connect().await {
            Ok(()) => Ok(stream),
            Err(e) => {
                stream.settle(StreamOutcome::Failed);
                Err(e)
            }
        }
    }

    /// Tokens the transport's limiter holds for this stream.
    fn reserved(&self) -> u64 {
        let r = &self.request;
        r.input_estimate
            + if r.output_on_transport {
                r.output_reserved
            } else {
                0
            }
    }

    fn release_output(&self, used: u64) {
        if !self.request.output_on_transport {
            self.chatter
                .api
                .release_output(self.request.output_reserved, used);
        }
    }

    async fn connect(&mut self) -> Result<(), Error> {
        let left = self
            .clocks
            .first_token
            .saturating_sub(self.opened.elapsed());
        let transport = self.chatter.api.transport();
        let response = transport
            .open_stream(
                self.request.path,
                self.request.body.clone(),
                &self.request.model,
                self.reserved(),
                left.max(Duration::from_millis(1)),
            )
            .await?;
        self.held = true;
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !kind.contains("text/event-stream") {
            transport.settle_tokens(self.reserved(), 0);
            transport.usage().record_failure(&self.request.model);
            self.held = false;
            return Err(Error::ResponseFormat {
                reason: format!(
                    "a stream was asked for and the server answered {:?}, not an event stream",
                    if kind.is_empty() {
                        "no content type"
                    } else {
                        &kind
                    }
                ),
            });
        }
        self.response = Some(response);
        Ok(())
    }

    /// The next chunk as the server sent it; `None` once the stream is complete. After an
    /// error every chunk received before it has been handed out.
    pub async fn next(&mut self) -> Result<Option<Value>, Error> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                self.handed_out();
                return Ok(Some(chunk));
            }
            if let Some(e) = self.failed.take() {
                self.settle(StreamOutcome::Failed);
                return Err(e);
            }
            if self.complete {
                self.settle(StreamOutcome::Completed);
                return Ok(None);
            }
            if self.response.is_none() {
                return Ok(None); // settled and spent
            }
            self.read().await;
        }
    }

    fn handed_out(&mut self) {
        let now = Instant::now();
        match self.last_chunk {
            None => self.first_chunk = Some(now - self.opened),
            Some(t) => self.gaps.push(now - t),
        }
        self.last_chunk = Some(now);
        self.yielded += 1;
    }

    /// Read from the socket until events complete, the stream ends or fails.
    async fn read(&mut self) {
        let (clock, limit) = match self.last_chunk {
            None => (
                self.clocks
                    .first_token
                    .saturating_sub(self.opened.elapsed()),
                self.clocks.first_token,
            ),
            Some(_) => (self.clocks.idle, self.clocks.idle),
        };
        let Some(response) = self.response.as_mut() else {
            return;
        };
        let read = tokio::time::timeout(clock, response.chunk()).await;
        match read {
            Err(_) => self.fail(Error::Timeout { after: limit }),
            Ok(Err(e)) => {
                let message = crate::http::secret::redact(
                    self.chatter.api.transport().api_key(),
                    &format!("the stream broke: {e}"),
                );
                self.cut(Error::Connection { message }).await;
            }
            Ok(Ok(None)) => {
                if !self.complete {
                    let e = Error::Connection {
                        message: "the stream ended before its end event".to_string(),
                    };
                    self.cut(e).await;
                }
            }
            Ok(Ok(Some(bytes))) => self.take_bytes(&bytes),
        }
    }

    /// Parse received bytes into ready chunks (or the stream's end, or its error).
    fn take_bytes(&mut self, bytes: &[u8]) {
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.parser.feed(bytes, &mut events) {
            self.fail(e);
        }
        for event in events.drain(..) {
            if self.complete || self.failed.is_some() {
                break;
            }
            match self.format.event(event) {
                Ok(Step::Chunk(v)) => self.ready.push_back(v),
                Ok(Step::Last(v)) => {
                    self.ready.push_back(v);
                    self.complete = true;
                }
                Ok(Step::Skip) => {}
                Ok(Step::Done) => self.complete = true,
                Err(e) => self.fail(e),
            }
        }
        self.events = events;
        if self.complete {
            self.response = None; // nothing more to read
        }
    }

    /// A broken connection: before anything reached the caller, the request is sent again
    /// (as the retry policy allows); after, the stream fails.
    async fn cut(&mut self, error: Error) {
        let untouched = self.yielded == 0 && self.ready.is_empty();
        let again = untouched
            && self
                .chatter
                .api
                .transport()
                .retry_after_failure(&self.request.model, self.tried, Failure::Connection)
                .await;
        if !again {
            self.fail(error);
            return;
        }
        // Sent again: this attempt's tokens go back, the next attempt is admitted anew.
        self.chatter
            .api
            .transport()
            .settle_tokens(self.reserved(), 0);
        self.held = false;
        self.tried += 1;
        self.parser =
            SseParser::new(MAX_EVENT_BYTES.min(self.chatter.api.transport().max_response_bytes()));
        self.format = self.chatter.api.stream_format();
        if let Err(e) = self.connect().await {
            // The transport counted the failure and gave the tokens back.
            self.fail(e);
        }
    }

    fn fail(&mut self, error: Error) {
        if self.failed.is_none() {
            self.failed = Some(error);
        }
        self.response = None; // closes the connection
    }

    /// The answer so far, in the provider's non-streaming shape (complete once `next` has
    /// returned `None`).
    pub fn response(&self) -> Value {
        self.format.response()
    }

    /// The stream's tokens: reported by the server, or estimated.
    pub fn usage(&self) -> StreamUsage {
        match self.format.usage() {
            Some((input_tokens, output_tokens)) => StreamUsage {
                input_tokens,
                output_tokens,
                estimated: false,
            },
            None => StreamUsage {
                input_tokens: self.request.input_estimate,
                output_tokens: self.format.received_chars().div_ceil(4),
                estimated: true,
            },
        }
    }

    /// Chunks already received and not yet handed out (at most `max`), reading only what
    /// the socket already holds (never waiting): what a caller that just took one chunk can
    /// take in the same step. An error or the end found this way is left for `next`.
    pub fn take_ready(&mut self, max: usize) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            while out.len() < max {
                match self.ready.pop_front() {
                    Some(chunk) => {
                        self.handed_out();
                        out.push(chunk);
                    }
                    None => break,
                }
            }
            if out.len() >= max || !self.read_now() {
                return out;
            }
        }
    }

    /// Read what the socket holds now, without waiting; whether anything was read. Only
    /// after a chunk reached the caller (so a break needs no retry, which would wait).
    fn read_now(&mut self) -> bool {
        use futures_util::FutureExt;
        if self.yielded == 0 || self.complete || self.failed.is_some() {
            return false;
        }
        let Some(response) = self.response.as_mut() else {
            return false;
        };
        let Some(read) = response.chunk().now_or_never() else {
            return false;
        };
        match read {
            Ok(Some(bytes)) => self.take_bytes(&bytes),
            Ok(None) => {
                if !self.complete {
                    self.fail(Error::Connection {
                        message: "the stream ended before its end event".to_string(),
                    });
                }
            }
            Err(e) => {
                let message = crate::http::secret::redact(
                    self.chatter.api.transport().api_key(),
                    &format!("the stream broke: {e}"),
                );
                self.fail(Error::Connection { message });
            }
        }
        true
    }

    /// End the stream now: the connection closes, and it settles from what was received
    /// (cancelled, unless it had already ended). Idempotent.
    pub fn close(&mut self) {
        let outcome = if self.failed.is_some() {
            StreamOutcome::Failed
        } else if self.complete && self.ready.is_empty() {
            StreamOutcome::Completed
        } else {
            StreamOutcome::Cancelled
        };
        self.settle(outcome);
    }

    /// Chunks handed out so far.
    pub fn chunks(&self) -> u64 {
        self.yielded
    }

    /// From the request to the first chunk handed out.
    pub fn time_to_first_chunk(&self) -> Option<Duration> {
        self.first_chunk
    }

    /// Whether the stream ended (completed, failed, or given up).
    pub fn is_finished(&self) -> bool {
        self.settled
    }

    /// Settle once: the limiter corrected to the tokens used, usage and cost recorded, the
    /// stream counted by outcome.
    fn settle(&mut self, outcome: StreamOutcome) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.response = None;
        let u = self.usage();
        if self.held {
            self.held = false;
            self.record(outcome, u);
        }
        if self.output_held {
            self.output_held = false;
            self.release_output(u.output_tokens);
        }
        let gaps = std::mem::take(&mut self.gaps);
        self.chatter
            .streams
            .record(outcome, self.first_chunk, gaps, u.output_tokens);
    }

    /// The limiter corrected to the tokens used; usage and cost recorded.
    fn record(&self, outcome: StreamOutcome, u: StreamUsage) {
        let transport = self.chatter.api.transport();
        let used_on_transport = u.input_tokens
            + if self.request.output_on_transport {
                u.output_tokens
            } else {
                0
            };
        transport.settle_tokens(self.reserved(), used_on_transport);
        let model = &self.request.model;
        let cost = if u.estimated {
            transport
                .usage()
                .cost(model, u.input_tokens, u.output_tokens)
        } else {
            self.chatter.api.cost_of(&self.format.response(), model)
        };
        match outcome {
            StreamOutcome::Completed => transport.usage().record_success_costing(
                model,
                u.input_tokens,
                u.output_tokens,
                cost,
            ),
            _ => transport
                .usage()
                .record_partial(model, u.input_tokens, u.output_tokens, cost),
        }
    }
}

impl Drop for ChatStream {
    /// Dropped before its end: the connection closes (the response is dropped) and the
    /// stream settles from what was received.
    fn drop(&mut self) {
        self.close();
    }
}
