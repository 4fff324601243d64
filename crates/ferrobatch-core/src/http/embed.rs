//! The embedding request loop every provider shares: split a batch into requests within the
//! provider's caps, send them concurrently, hand each text its own vector or error, and keep
//! one rejected input from sinking the others when the server names it.

use std::ops::Range;

use bytes::Bytes;
use futures_util::future::join_all;

use super::transport::{param_index, Transport};
use crate::error::Error;
use crate::limits::estimate::estimate_tokens;

/// One embedding vector.
pub type Vector = Vec<f32>;

/// What a provider's embedding endpoint looks like.
pub trait EmbeddingApi: Send + Sync + std::fmt::Debug {
    /// The model, for usage accounting.
    fn model(&self) -> &str;
    /// The output size asked for, if any.
    fn dimensions(&self) -> Option<u32>;
    /// The path under the base URL.
    fn path(&self) -> String;
    /// The request body for these texts.
    fn body(&self, texts: &[&str]) -> Bytes;
    /// The vectors of a successful answer, in input order, and the input tokens it reports.
    fn parse(&self, body: &[u8], n: usize) -> Result<(Vec<Vector>, Option<u64>), Error>;
    /// The request field an error's `param` names an input by (`input`, `requests`).
    fn input_field(&self) -> &'static str;
    /// Called with a failed request's error before it is handed out: return true to send the
    /// same texts again at once (for example after switching to a format the server accepts).
    fn adapt(&self, _error: &Error) -> bool {
        false
    }
}

/// What an embeddings client asks of a provider's wire format (each provider reads what it
/// has: OpenAI `encoding_format` and `user`, Gemini `task_type` and `title`).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingSpec {
    /// The model.
    pub model: String,
    /// The output size, if any.
    pub dimensions: Option<u32>,
    /// `base64` or `float` (OpenAI).
    pub encoding_format: String,
    /// The task the vectors are for (Gemini).
    pub task_type: Option<String>,
    /// The document title (Gemini).
    pub title: Option<String>,
    /// The end user (OpenAI).
    pub user: Option<String>,
}

/// A provider's embeddings wire format for a spec, and its most inputs per request.
pub type MakeEmbeddings = fn(&EmbeddingSpec) -> Result<(Box<dyn EmbeddingApi>, usize), Error>;

/// Requests within the caps: contiguous ranges of at most `max_inputs` texts and at most
/// `max_tokens` estimated tokens (a text over the token cap goes alone; the server decides).
pub fn split(tokens: &[u64], max_inputs: usize, max_tokens: u64) -> Vec<Range<usize>> {
    let max_inputs = max_inputs.max(1);
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0u64);
    for (i, &t) in tokens.iter().enumerate() {
        let full = i - start == max_inputs || (i > start && sum + t > max_tokens);
        if full {
            out.push(start..i);
            start = i;
            sum = 0;
        }
        sum += t;
    }
    if start < tokens.len() {
        out.push(start..tokens.len());
    }
    out
}

/// Embed every text: one result per text, in order.
pub async fn embed_all<A: EmbeddingApi + ?Sized>(
    api: &A,
    transport: &Transport,
    texts: &[String],
    max_inputs: usize,
    max_tokens: u64,
) -> Vec<Result<Vector, Error>> {
    let tokens: Vec<u64> = texts.iter().map(|t| estimate_tokens(t)).collect();
    let mut results: Vec<Option<Result<Vector, Error>>> = (0..texts.len()).map(|_| None).collect();
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() {
            results[i] = Some(Err(Error::InvalidInput {
                reason: "an empty text cannot be embedded".to_string(),
            }));
        }
    }
    let sendable: Vec<usize> = (0..texts.len()).filter(|&i| results[i].is_none()).collect();
    let send_tokens: Vec<u64> = sendable.iter().map(|&i| tokens[i]).collect();
    let ranges = split(&send_tokens, max_inputs, max_tokens);
    let requests = ranges.into_iter().map(|r| {
        let idx: Vec<usize> = sendable[r].to_vec();
        let tokens = &tokens;
        async move {
            let out = embed_request(api, transport, texts, tokens, idx.clone()).await;
            (idx, out)
        }
    });
    for (idx, out) in join_all(requests).await {
        for (i, r) in idx.into_iter().zip(out) {
            results[i] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every text gets a result"))
        .collect()
}

/// One request's texts (`idx` into `texts`): resend without any input the server rejects by
/// position, until the rest succeed or fail together.
async fn embed_request<A: EmbeddingApi + ?Sized>(
    api: &A,
    transport: &Transport,
    texts: &[String],
    tokens: &[u64],
    idx: Vec<usize>,
) -> Vec<Result<Vector, Error>> {
    let mut out: Vec<Option<Result<Vector, Error>>> = (0..idx.len()).map(|_| None).collect();
    // Positions (into `idx`) still to send.
    let mut pending: Vec<usize> = (0..idx.len()).collect();
    let model = api.model().to_string();
    let mut adapted = false;
    while !pending.is_empty() {
        let batch: Vec<&str> = pending.iter().map(|&p| texts[idx[p]].as_str()).collect();
        let est: u64 = pending.iter().map(|&p| tokens[idx[p]]).sum();
        let answer = transport
            .post(&api.path(), api.body(&batch), &model, est)
            .await;
        let error = match answer.and_then(|body| api.parse(&body, batch.len())) {
            Ok((vectors, reported)) => {
                let used = reported.unwrap_or(est);
                transport.settle_tokens(est, used);
                transport.usage().record_success(&model, used, 0);
                for (&p, v) in pending.iter().zip(vectors) {
                    out[p] = Some(Ok(v));
                }
                break;
            }
            Err(e) => e,
        };
        if let Error::ResponseFormat { .. } = error {
            transport.usage().record_failure(&model);
        }
        if !adapted && api.adapt(&error) {
            // Sent again at once in a form the server takes: a retry, not a failure.
            transport.usage().failure_was_retried(&model);
            adapted = true;
            continue;
        }
        let rejected = match &error {
            Error::Status {
                status: 400 | 422,
                param: Some(param),
                ..
            } => param_index(param, api.input_field()).filter(|&i| i < pending.len()),
            _ => None,
        };
        match rejected {
            Some(i) if pending.len() > 1 => {
                out[pending.remove(i)] = Some(Err(error));
            }
            _ => {
                for &p in &pending {
                    out[p] = Some(Err(error.clone()));
                }
                break;
            }
        }
    }
    out.into_iter()
        .map(|r| r.expect("every input of a request gets a result"))
        .collect()
}

/// Little-endian float32 vectors from base64, as OpenAI's `encoding_format="base64"` sends them.
pub fn decode_base64(text: &str) -> Result<Vector, Error> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| Error::ResponseFormat {
            reason: format!("an embedding is not valid base64: {e}"),
        })?;
    if bytes.len() % 4 != 0 {
        return Err(Error::ResponseFormat {
            reason: format!(
                "a base64 embedding holds {} bytes, not whole float32s",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_both_caps() {
        assert_eq!(split(&[1; 5], 2, 100), vec![0..2, 2..4, 4..5]);
        assert_eq!(split(&[3, 3, 3, 3], 10, 6), vec![0..2, 2..4]);
        // A text over the token cap goes alone.
        assert_eq!(split(&[1, 50, 1], 10, 10), vec![0..1, 1..2, 2..3]);
        assert_eq!(split(&[], 10, 10), Vec::<Range<usize>>::new());
    }

    #[test]
    fn split_covers_every_text_once() {
        let tokens: Vec<u64> = (0..1000).map(|i| (i * 7919 % 97) as u64 + 1).collect();
        let ranges = split(&tokens, 64, 500);
        let mut next = 0;
        for r in &ranges {
            assert_eq!(r.start, next);
            assert!(r.len() <= 64 && !r.is_empty());
            let sum: u64 = tokens[r.clone()].iter().sum();
            assert!(sum <= 500 || r.len() == 1);
            next = r.end;
        }
        assert_eq!(next, 1000);
    }

    #[test]
    fn base64_round_trip() {
        use base64::Engine as _;
        let v = [1.0f32, -0.5, 0.25];
        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(decode_base64(&text).unwrap(), v);
        assert!(matches!(
            decode_base64("AAA"),
            Err(Error::ResponseFormat { .. })
        ));
        assert!(matches!(
            decode_base64("AAAAAAA="),
            Err(Error::ResponseFormat { .. })
        ));
    }
}
