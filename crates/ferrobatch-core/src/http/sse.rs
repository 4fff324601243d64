//! Server-sent events, as the streaming chat APIs send them: `event:` and `data:` lines, a
//! blank line ending each event, `:` comments (keep-alives) ignored, `\n`, `\r\n` or `\r`
//! line ends. One event may hold at most a bounded number of bytes: a server that never ends
//! an event, or a line, fails the stream instead of growing the client's memory.

use crate::error::Error;

/// The most bytes one event may hold (its lines, before they are joined).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One event: its type (`event:`), and its data lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Bytes in, events out.
#[derive(Debug)]
pub struct SseParser {
    /// An unfinished line.
    line: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// Bytes of the event being read.
    size: usize,
    cap: usize,
}

impl SseParser {
    /// A parser whose events may hold at most `cap` bytes.
    pub fn new(cap: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            size: 0,
            cap,
        }
    }

    /// Feed bytes; the events they complete, in order, into `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), Error> {
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.grow(end)?;
            self.line.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.line);
            self.line(&line, out)?;
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.grow(rest.len())?;
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<(), Error> {
        self.size += n;
        if self.size > self.cap {
            return Err(Error::ResponseFormat {
                reason: format!(
                    "a stream event exceeds {} bytes without ending; the stream was closed",
                    self.cap
                ),
            });
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), Error> {
        if line.is_empty() {
            if self.has_data || self.event.is_some() {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.has_data = false;
            self.size = 0;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let text = std::str::from_utf8(line).map_err(|_| Error::ResponseFormat {
            reason: "a stream line is not UTF-8".to_string(),
        })?;
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields: nothing a chat stream needs
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(text: &str, piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new(MAX_EVENT_BYTES);
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            p.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn events_come_out_whatever_the_pieces_and_line_ends() {
        let text = ": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\n\
                    data: one\r\ndata: two\r\n\r\n\
                    event: ping\rdata: {}\r\rdata: [DONE]\n\n";
        let want = vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "one\ntwo".into(),
            },
            SseEvent {
                event: Some("ping".into()),
                data: "{}".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(parse_in_pieces(text, piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn an_endless_event_or_line_is_an_error_not_memory() {
        let mut p = SseParser::new(64);
        let mut out = Vec::new();
        let long = "data: ".to_string() + &"x".repeat(100);
        assert!(p.feed(long.as_bytes(), &mut out).is_err());
        let mut p = SseParser::new(64);
        let many = "data: xxxxxxxxxx\n".repeat(10);
        assert!(p.feed(many.as_bytes(), &mut out).is_err());
        // Events under the cap, one after another, never add up.
        let mut p = SseParser::new(64);
        let ok = "data: xxxxxxxxxx\n\n".repeat(100);
        p.feed(ok.as_bytes(), &mut out).unwrap();
        assert_eq!(out.len(), 100);
    }
}
