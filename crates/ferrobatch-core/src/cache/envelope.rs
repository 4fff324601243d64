//! The envelope every cache entry travels in: a magic, a format version and a checksum before
//! the payload, so that an entry written by another format, cut short or damaged is told
//! apart from an answer.

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 3] = b"FBC";
/// The entry format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const CHECK: usize = 8;
const HEADER: usize = MAGIC.len() + 1 + CHECK;

fn check(payload: &[u8]) -> [u8; CHECK] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&digest[..CHECK]);
    out
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
