//! The HTTP layer's pure parts, shared by every provider: when to retry and how long to wait
//! ([`retry`]), and how requests share a rate budget ([`limiter`]). Nothing here does I/O, so
//! every rule is tested with a synthetic clock.

pub mod limiter;
pub mod retry;

pub use limiter::{estimate_tokens, RateLimiter};
pub use retry::{Failure, RetryPolicy};
