//! Pre-submit estimates of a job's requests: how many, their input tokens (estimated from the
//! text) and the output tokens they allow at most, per model.

use serde_json::{Map, Value};

/// A pre-submit estimate of some requests of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    /// Requests.
    pub requests: u64,
    /// Estimated input tokens (characters / 4 of the text sent).
    pub input_tokens: u64,
    /// The output tokens the requests allow at most (`max_tokens`); 0 for embeddings.
    pub max_output_tokens: u64,
}

/// Estimates per model of request bodies (JSON texts) bound for `endpoint`; `default_model`
/// for bodies that name none. A body that is not a JSON object counts as nothing.
pub fn estimate<'a>(
    endpoint: &str,
    bodies: impl IntoIterator<Item = &'a str>,
    default_model: &str,
) -> std::collections::BTreeMap<String, Estimate> {
    use crate::limits::estimate::estimate_json_tokens;
    let mut out: std::collections::BTreeMap<String, Estimate> = Default::default();
    for text in bodies {
        let Ok(body) = serde_json::from_str::<Map<String, Value>>(text) else {
            continue;
        };
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(default_model);
        let e = out.entry(model.to_string()).or_default();
        e.requests += 1;
        if endpoint == "/v1/embeddings" {
            e.input_tokens += body.get("input").map_or(0, estimate_json_tokens);
            continue;
        }
        e.input_tokens += ["messages", "system", "tools"]
            .iter()
            .filter_map(|k| body.get(*k))
            .map(estimate_json_tokens)
            .sum::<u64>()
            .max(1);
        e.max_output_tokens += ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
            .unwrap_or(0);
    }
    out
}
