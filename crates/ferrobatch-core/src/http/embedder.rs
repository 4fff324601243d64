//! `Embedder`: one embedding model of one provider (its wire format behind
//! [`EmbeddingApi`]) on its transport, with the provider's caps
//! per request. Used by the embedding batchers (a batch of texts at a time) and by the job
//! runner (one stored request at a time).

use std::sync::Arc;

use super::embed::{embed_all, EmbeddingApi, Vector};
use super::Transport;
use crate::cache::{Cache, Key, KeyBuilder};
use crate::error::Error;
use crate::limits::estimate_tokens;

/// A result cache as one embeddings client uses it: the cache, and the key of this client's
/// requests (provider, endpoint, model, dimensions, encoding), to which each text is added.
#[derive(Debug)]
pub struct EmbeddingCache {
    /// The cache (shared by every client given it).
    pub cache: Arc<Cache>,
    /// This client's key builder.
    pub keys: KeyBuilder,
}

/// A cached vector: the input tokens it used (u32 LE), then its float32s (LE).
fn encode_vector(tokens: u64, v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * v.len());
    out.extend_from_slice(&u32::try_from(tokens).unwrap_or(u32::MAX).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn decode_vector(payload: &[u8]) -> Option<(u64, Vector)> {
    if payload.len() < 8 || (payload.len() - 4) % 4 != 0 {
        return None;
    }
    let tokens = u32::from_le_bytes(payload[..4].try_into().ok()?);
    let v = payload[4..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((u64::from(tokens), v))
}

/// An embedding model, its transport and the caps of one request.
#[derive(Debug)]
pub struct Embedder {
    /// The model and its provider's wire format.
    pub model: Box<dyn EmbeddingApi>,
    /// The HTTP client.
    pub transport: Transport,
    /// Most texts per request.
    pub max_inputs: usize,
    /// Most estimated tokens per request.
    pub max_tokens: u64,
    /// Answers already paid for (None: every text is sent).
    pub cache: Option<EmbeddingCache>,
}

impl Embedder {
    /// The model name.
    pub fn model_name(&self) -> &str {
        self.model.model().trim_start_matches("models/")
    }

    /// The `dimensions` asked for, if any.
    pub fn dimensions(&self) -> Option<u32> {
        self.model.dimensions()
    }

    /// One result per entry: the texts are embedded, the refused entries keep their error.
    pub async fn embed(&self, texts: Vec<Result<String, Error>>) -> Vec<Result<Vector, Error>> {
        self.embed_marked(texts).await.0
    }

    /// [`Embedder::embed`], and for each entry whether the cache answered it.
    pub async fn embed_marked(
        &self,
        texts: Vec<Result<String, Error>>,
    ) -> (Vec<Result<Vector, Error>>, Vec<bool>) {
        let mut cached = vec![false; texts.len()];
        let mut out: Vec<Result<Vector, Error>> = Vec::with_capacity(texts.len());
        let mut sendable = Vec::with_capacity(texts.len());
        let mut at = Vec::with_capacity(texts.len());
        for (i, t) in texts.into_iter().enumerate() {
            match t {
                Ok(text) => {
                    at.push(i);
                    sendable.push(text);
                    out.push(Ok(Vector::new()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        let embedded = match &self.cache {
            None => self
                .send(&sendable)
                .await
                .into_iter()
                .map(|r| (r, false))
                .collect(),
            Some(c) => self.embed_cached(c, &sendable).await,
        };
        for (i, (r, hit)) in at.into_iter().zip(embedded) {
            out[i] = r;
            cached[i] = hit;
        }
        (out, cached)
    }

    async fn send(&self, texts: &[String]) -> Vec<Result<Vector, Error>> {
        let (t, n, k) = (&self.transport, self.max_inputs, self.max_tokens);
        embed_all(&*self.model, t, texts, n, k).await
    }

    /// Look every text up (one round trip), send only the misses, store what came back (one
    /// round trip). Each vector goes back to its own text, marked true if it was a hit.
    async fn embed_cached(
        &self,
        c: &EmbeddingCache,
        texts: &[String],
    ) -> Vec<(Result<Vector, Error>, bool)> {
        let keys: Vec<Key> = texts.iter().map(|t| c.keys.key(t)).collect();
        let found = c.cache.get_many(&keys).await;
        let mut out: Vec<Option<(Result<Vector, Error>, bool)>> =
            (0..texts.len()).map(|_| None).collect();
        let mut missed = Vec::new();
        let (mut hits, mut hit_tokens) = (0u64, 0u64);
        for (i, entry) in found.into_iter().enumerate() {
            match entry.as_deref().and_then(decode_vector) {
                Some((tokens, v)) if !v.is_empty() => {
                    hits += 1;
                    hit_tokens += tokens;
                    out[i] = Some((Ok(v), true));
                }
                _ => missed.push(i),
            }
        }
        if hits > 0 {
            self.transport
                .usage()
                .record_cached(self.model.model(), hits, hit_tokens, 0);
        }
        if !missed.is_empty() {
            let to_send: Vec<String> = missed.iter().map(|&i| texts[i].clone()).collect();
            let sent = self.send(&to_send).await;
            let mut store = Vec::new();
            for (&i, r) in missed.iter().zip(sent) {
                if let Ok(v) = &r {
                    store.push((keys[i], encode_vector(estimate_tokens(&texts[i]), v)));
                }
                out[i] = Some((r, false));
            }
            c.cache.put_many(store).await;
        }
        out.into_iter()
            .map(|r| r.expect("every text was answered or sent"))
            .collect()
    }
}
