//! `Embedder`: one embedding model of one provider on its transport, with the provider's caps
//! per request. Used by the embedding batchers (a batch of texts at a time) and by the job
//! runner (one stored request at a time).

use super::embed::{embed_all, EmbeddingApi, Vector};
use super::{gemini, openai, Transport};
use crate::error::Error;

/// Which provider's wire format.
#[derive(Debug)]
pub enum EmbeddingModel {
    /// `POST /embeddings`, OpenAI-compatible.
    OpenAi(openai::Embeddings),
    /// `POST /models/{model}:batchEmbedContents`.
    Gemini(gemini::Embeddings),
}

/// An embedding model, its transport and the caps of one request.
#[derive(Debug)]
pub struct Embedder {
    /// The model and its wire format.
    pub model: EmbeddingModel,
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
        match &self.model {
            EmbeddingModel::OpenAi(a) => a.model(),
            EmbeddingModel::Gemini(a) => a.model(),
        }
        .trim_start_matches("models/")
    }

    /// The `dimensions` asked for, if any.
    pub fn dimensions(&self) -> Option<u32> {
        match &self.model {
            EmbeddingModel::OpenAi(a) => a.dimensions,
            EmbeddingModel::Gemini(a) => a.output_dimensionality,
        }
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
        let embedded = match &self.model {
            EmbeddingModel::OpenAi(a) => embed_all(a, t, &sendable, n, k).await,
            EmbeddingModel::Gemini(a) => embed_all(a, t, &sendable, n, k).await,
        };
        for (i, r) in at.into_iter().zip(embedded) {
            out[i] = r;
        }
        out
    }
}
