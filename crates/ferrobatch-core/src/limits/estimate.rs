//! Token estimates: what a request is charged against a tokens-per-minute budget before its
//! usage is known. One token per 4 characters of text (rounded up), the rule of thumb OpenAI
//! documents for English; the response's usage corrects it.

/// Estimated tokens of `text`: its characters divided by 4, rounded up (at least 1 when
/// non-empty).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Estimated tokens of every string inside a JSON value (message lists, content blocks).
pub fn estimate_json_tokens(v: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match v {
        Value::String(s) => estimate_tokens(s),
        Value::Array(a) => a.iter().map(estimate_json_tokens).sum(),
        Value::Object(o) => o.values().map(estimate_json_tokens).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimator_is_a_quarter_of_the_characters() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééééé"), 2, "characters, not bytes");
    }
}
