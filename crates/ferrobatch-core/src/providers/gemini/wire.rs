//! The Gemini API's `POST {base_url}/models/{model}:batchEmbedContents` (key in the
//! `x-goog-api-key` header): many texts per call, vectors in input order.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::Error;
use crate::http::embed::{EmbeddingApi, Vector};

/// The API's per-call cap on requests in one `batchEmbedContents`.
pub const MAX_INPUTS: usize = 100;

/// The batch embedding endpoint of one Gemini model.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `models/NAME` as the API spells it.
    model_path: String,
    /// `taskType`, such as `RETRIEVAL_DOCUMENT`.
    pub task_type: Option<String>,
    /// `outputDimensionality`.
    pub output_dimensionality: Option<u32>,
    /// `title`, for `RETRIEVAL_DOCUMENT` texts.
    pub title: Option<String>,
}

impl Embeddings {
    /// The endpoint for `model` (`gemini-embedding-001` or `models/gemini-embedding-001`).
    pub fn new(
        model: &str,
        task_type: Option<String>,
        output_dimensionality: Option<u32>,
        title: Option<String>,
    ) -> Self {
        let model_path = if model.starts_with("models/") {
            model.to_string()
        } else {
            format!("models/{model}")
        };
        Embeddings {
            model_path,
            task_type,
            output_dimensionality,
            title,
        }
    }
}

#[derive(Deserialize)]
struct BatchResponse {
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    values: Vec<f32>,
}

impl EmbeddingApi for Embeddings {
    fn model(&self) -> &str {
        self.model_path.trim_start_matches("models/")
    }

    fn dimensions(&self) -> Option<u32> {
        self.output_dimensionality
    }

    fn path(&self) -> String {
        format!("/{}:batchEmbedContents", self.model_path)
    }

    fn body(&self, texts: &[&str]) -> Bytes {
        let requests: Vec<Value> = texts
            .iter()
            .map(|t| {
                let mut r = json!({
                    "model": self.model_path,
                    "content": {"parts": [{"text": t}]},
                });
                if let Some(tt) = &self.task_type {
                    r["taskType"] = Value::from(tt.as_str());
                }
                if let Some(d) = self.output_dimensionality {
                    r["outputDimensionality"] = Value::from(d);
                }
                if let Some(title) = &self.title {
                    r["title"] = Value::from(title.as_str());
                }
                r
            })
            .collect();
        Bytes::from(serde_json::to_vec(&json!({ "requests": requests })).expect("JSON serializes"))
    }

    fn parse(&self, body: &[u8], n: usize) -> Result<(Vec<Vector>, Option<u64>), Error> {
        let resp: BatchResponse =
            serde_json::from_slice(body).map_err(|e| Error::ResponseFormat {
                reason: format!("the batchEmbedContents response is not the documented JSON: {e}"),
            })?;
        if resp.embeddings.len() != n {
            return Err(Error::ResponseFormat {
                reason: format!(
                    "the server returned {} embeddings for {n} inputs",
                    resp.embeddings.len()
                ),
            });
        }
        // The API reports no token usage; the estimate stands.
        Ok((
            resp.embeddings.into_iter().map(|e| e.values).collect(),
            None,
        ))
    }

    fn input_field(&self) -> &'static str {
        "requests"
    }
}

/// Gemini's native embeddings format (`batchEmbedContents`) for `spec`.
pub fn embeddings(
    spec: &crate::http::EmbeddingSpec,
) -> Result<(Box<dyn EmbeddingApi>, usize), Error> {
    let api = Embeddings::new(
        &spec.model,
        spec.task_type.clone(),
        spec.dimensions,
        spec.title.clone(),
    );
    Ok((Box::new(api), MAX_INPUTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_path() {
        let g = Embeddings::new(
            "gemini-embedding-001",
            Some("RETRIEVAL_DOCUMENT".into()),
            Some(768),
            None,
        );
        assert_eq!(g.path(), "/models/gemini-embedding-001:batchEmbedContents");
        assert_eq!(g.model(), "gemini-embedding-001");
        let body: Value = serde_json::from_slice(&g.body(&["a"])).unwrap();
        let r = &body["requests"][0];
        assert_eq!(r["model"], "models/gemini-embedding-001");
        assert_eq!(r["content"]["parts"][0]["text"], "a");
        assert_eq!(r["taskType"], "RETRIEVAL_DOCUMENT");
        assert_eq!(r["outputDimensionality"], 768);
    }

    #[test]
    fn parse_checks_the_count() {
        let g = Embeddings::new("models/m", None, None, None);
        let (v, _) = g
            .parse(br#"{"embeddings":[{"values":[1.0]},{"values":[2.0]}]}"#, 2)
            .unwrap();
        assert_eq!(v, vec![vec![1.0], vec![2.0]]);
        assert!(matches!(
            g.parse(br#"{"embeddings":[]}"#, 1),
            Err(Error::ResponseFormat { .. })
        ));
    }
}
