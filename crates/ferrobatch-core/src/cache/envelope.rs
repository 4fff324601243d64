//! The envelope every cache entry travels in: a magic, a format version and a checksum before
//! the payload, so that an entry written by another format, cut short or damaged is told
//! apart from an answer.
//!
//! The checksum guards against damage, not against someone who can write the store (the key
//! is what a SHA-256 makes unforgeable): XXH3-64, checked on every hit, costs nanoseconds
//! where a SHA-256 of a 1536-dimension vector costs microseconds.

use xxhash_rust::xxh3::xxh3_64;

const MAGIC: &[u8; 3] = b"FBC";
/// The entry format this build writes and reads (1: a SHA-256 prefix as the checksum).
pub const FORMAT_VERSION: u8 = 2;
const CHECK: usize = 8;
const HEADER: usize = MAGIC.len() + 1 + CHECK;

fn check(payload: &[u8]) -> [u8; CHECK] {
    xxh3_64(payload).to_le_bytes()
}

/// Seal a payload.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&check(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of a sealed entry; None if it is not one of this format, or damaged.
pub fn decode(raw: &[u8]) -> Option<&[u8]> {
    if raw.len() < HEADER || &raw[..3] != MAGIC || raw[3] != FORMAT_VERSION {
        return None;
    }
    let (head, payload) = raw.split_at(HEADER);
    (head[4..] == check(payload)).then_some(payload)
}

/// [`decode`], keeping the entry's own buffer for the payload.
pub fn decode_owned(mut raw: Vec<u8>) -> Option<Vec<u8>> {
    decode(&raw)?;
    raw.drain(..HEADER);
    Some(raw)
}
