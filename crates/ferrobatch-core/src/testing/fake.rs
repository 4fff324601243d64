//! Fake answers of the test server: deterministic pseudo-embeddings and canned chat replies.
//!
//! These are NOT real embeddings. A vector is a unit-length float32 vector drawn from a
//! pseudo-random stream seeded by a hash of the text (FNV-1a, then splitmix64): the same text
//! always gives the same vector, different texts give unrelated ones, and nothing about
//! meaning is captured.

/// Tokens the fake server reports for a text: one per 4 bytes of UTF-8, at least 1.
pub fn fake_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The fake embedding of `text`: `dims` float32s of unit length, a pure function of the text.
pub fn fake_embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut state = fnv1a(text);
    let mut v: Vec<f32> = (0..dims)
        .map(|_| ((splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect();
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The fake reply to a chat request whose last message says `last`.
pub fn fake_reply(last: &str) -> String {
    let head: String = last.chars().take(200).collect();
    format!("fake reply to: {head}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = fake_embedding("hello", 64);
        assert_eq!(a, fake_embedding("hello", 64));
        assert_ne!(a, fake_embedding("hello!", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
        assert_eq!(fake_embedding("x", 0).len(), 0);
    }

    #[test]
    fn tokens_count_bytes() {
        assert_eq!(fake_tokens(""), 1);
        assert_eq!(fake_tokens("abcde"), 2);
    }
}
