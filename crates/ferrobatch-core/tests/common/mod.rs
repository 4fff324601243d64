//! What the integration tests share: a client transport to the crate's fake server.

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::http::{ApiKey, Auth, RetryPolicy, Transport, TransportConfig};
use ferrobatch_core::http::{Price, UsageBook};
use ferrobatch_core::limits::LocalLimiter;
use ferrobatch_core::testing::TestServer;
use ferrobatch_core::Provider;

/// An OpenAI-compatible transport to `server` (`{url}/v1`, key `k`), retrying `max_retries`
/// times, with model `m` priced at 1 and 2 USD per 1M input and output tokens.
pub fn transport(server: &TestServer, max_retries: i64) -> Transport {
    let config = TransportConfig {
        provider: Provider::OpenAi,
        base_url: format!("{}/v1", server.url()),
        api_key: ApiKey::new("k"),
        auth: Auth::Bearer,
        headers: Vec::new(),
        timeout: Duration::from_secs(5),
        max_response_bytes: 1 << 24,
        retry: RetryPolicy::new(max_retries, 0.01, 0.02).unwrap(),
        limiter: Arc::new(LocalLimiter::new(None, None).unwrap()),
    };
    let prices = [(
        "m".to_string(),
        Price {
            input: 1.0,
            output: 2.0,
            ..Price::default()
        },
    )];
    Transport::new(config, UsageBook::new(prices.into_iter().collect())).unwrap()
}
