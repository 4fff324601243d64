//! Cache keys: a SHA-256 over length-prefixed fields, so that no two different requests can
//! share a key by how their fields run together, and nothing readable (no text, no credential)
//! is in it.

use sha2::{Digest, Sha256};

/// A cache key: 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex, as the stores name it.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Builds keys of one kind of request: fixed fields first (`field`), then one key per item.
#[derive(Clone)]
pub struct KeyBuilder {
    base: Sha256,
}

impl KeyBuilder {
    /// A builder for `kind` (say `"embedding"`) in `namespace`.
    pub fn new(kind: &str, namespace: &str) -> KeyBuilder {
        let mut b = KeyBuilder {
            base: Sha256::new(),
        };
        b.push("ferrobatch-cache-key/1");
        b.push(namespace);
        b.push(kind);
        b
    }

    fn push(&mut self, s: &str) {
        self.base.update((s.len() as u64).to_le_bytes());
        self.base.update(s.as_bytes());
    }

    /// Add a field every key of this builder shares.
    #[must_use]
    pub fn field(mut self, name: &str, value: &str) -> KeyBuilder {
        self.push(name);
        self.push(value);
        self
    }

    /// The key of one item.
    pub fn key(&self, item: &str) -> Key {
        let mut h = self.base.clone();
        h.update((item.len() as u64).to_le_bytes());
        h.update(item.as_bytes());
        Key(h.finalize().into())
    }
}

/// A base URL without what could be a credential (user info, query, fragment), for a key.
pub fn strip_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{host}/{}", path.trim_end_matches('/'))
}

impl std::fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBuilder")
    }
}

/// The key builder of a chat client: provider and endpoint (no credentials); each request
/// body (canonical JSON, the model in it) is then one key.
pub fn chat_key(namespace: &str, provider: &str, base_url: &str) -> KeyBuilder {
    KeyBuilder::new("chat", namespace)
        .field("provider", provider)
        .field("endpoint", &strip_credentials(base_url))
}

/// The key builder of an embeddings client: provider, endpoint (no credentials), model,
/// dimensions and encoding; each text is then one key.
pub fn embedding_key(
    namespace: &str,
    provider: &str,
    base_url: &str,
    model: &str,
    dimensions: Option<u32>,
    encoding: &str,
) -> KeyBuilder {
    KeyBuilder::new("embedding", namespace)
        .field("provider", provider)
        .field("endpoint", &strip_credentials(base_url))
        .field("model", model)
        .field(
            "dimensions",
            &dimensions.map_or(String::new(), |d| d.to_string()),
        )
        .field("encoding", encoding)
}
