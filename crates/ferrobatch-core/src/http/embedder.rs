//! `Embedder`: one embedding model of one provider (its wire format behind
//! [`EmbeddingApi`]) on its transport, with the provider's caps
//! per request. Used by the embedding batchers (a batch of texts at a time) and by the job
//! runner (one stored request at a time).

use super::embed::{embed_all, EmbeddingApi, Vector};
use super::Transport;
use crate::error::Error;

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
        let (t, n, k) = (&self.transport, self.max_inputs, self.max_tokens);
        let embedded = embed_all(&*self.model, t, &sendable, n, k).await;
        for (i, r) in at.into_iter().zip(embedded) {
            out[i] = r;
        }
        out
    }
}
