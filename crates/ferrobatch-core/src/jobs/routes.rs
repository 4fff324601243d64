//! `JobRoutes`: runners made as needed from the jobs' own settings, for a worker that runs
//! any job of a store (`ferrobatch work`). Jobs that one client can send share a runner: every
//! chat (or messages) job of one route; embeddings jobs of one model and size; apart for each
//! way of sending (online, or one provider's batch API).
//!
//! The provider, its key variable and its base URL come from [`crate::providers`]; the key
//! is read from the environment here and never written anywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::endpoint::Endpoint;
use super::model::{BatchLimits, JobRow};
use super::outage::RunnerListener;
use super::run::ProviderBatchRoute;
use super::run::{Runner, RunnerConfig};
use super::store::Store;
use super::worker::Routes;
use crate::cache::{chat_key, embedding_key, Cache};
use crate::error::Error;
use crate::http::embedder::EmbeddingCache;
use crate::http::transport::DEFAULT_MAX_RESPONSE_BYTES;
use crate::http::{ApiKey, ChatCache, ChatSetup, Chatter, Embedder, Price, RetryPolicy, Transport};
use crate::http::{TransportConfig, UsageBook};
use crate::limits::RateLimit;
use crate::providers::openai::wire::{self as openai, EncodingFormat};
use crate::providers::{self, ProviderFacts};

/// How jobs sent through a provider's batch API are run (the `--batch-*` options).
#[derive(Debug, Clone)]
pub struct ProviderBatchOptions {
    /// Whose batch API (default: the job's, else the one the base URL names).
    pub provider: Option<String>,
    /// Seconds between polls (default: the provider's).
    pub poll_interval: Option<Duration>,
    /// Batches a request may go through before a retryable error is its result.
    pub max_attempts: i64,
    /// Provider batches of one job open at once.
    pub max_open: usize,
    /// Most requests of one provider batch (default: the provider's).
    pub requests: Option<usize>,
    /// Most bytes of one provider batch (default: the provider's).
    pub bytes: Option<usize>,
    /// Send what a provider batch did not run online at once.
    pub fallback_online: bool,
}

impl Default for ProviderBatchOptions {
    fn default() -> Self {
        ProviderBatchOptions {
            provider: None,
            poll_interval: None,
            max_attempts: 3,
            max_open: 4,
            requests: None,
            bytes: None,
            fallback_online: false,
        }
    }
}

/// A worker's settings: where requests go and how fast; the same for every job it runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The base URL (else the job's, else the provider's).
    pub base_url: Option<String>,
    /// The variable the key is read from (else the job's, else the provider's).
    pub api_key_env: Option<String>,
    /// The shared rate limit every client of this worker goes through.
    pub limiter: Arc<dyn RateLimit>,
    /// Prices per model, for costs.
    pub prices: BTreeMap<String, Price>,
    /// Most requests in flight per route, and the runners' leases and flushes.
    pub runner: RunnerConfig,
    /// This machine's name.
    pub host: String,
    /// The batch API's options: Some sends every job through its provider's batch API
    /// (`--batch-api`); a job submitted that way goes through it regardless.
    pub batch: Option<ProviderBatchOptions>,
    /// Told what the runners do.
    pub listener: Option<RunnerListener>,
    /// Answers already paid for: requests it holds complete without being sent, and what is
    /// received is stored (online routes; a provider batch sends what it is given).
    pub cache: Option<Arc<Cache>>,
}

/// What a job says about how it is sent, from its stored settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Route {
    endpoint: String,
    /// The embeddings model and size (one client per pair); None for chat.
    embeddings: Option<(Option<String>, Option<u32>)>,
    /// The batch API's provider when the job goes through one.
    batch_provider: Option<String>,
}

/// Runners made as needed from the jobs' settings.
pub struct JobRoutes {
    store: Arc<dyn Store>,
    options: WorkerOptions,
    made: Mutex<HashMap<Route, Arc<Runner>>>,
}

fn setting<'a>(settings: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    settings
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl JobRoutes {
    /// Routes over `store` with `options`.
    pub fn new(store: Arc<dyn Store>, options: WorkerOptions) -> JobRoutes {
        JobRoutes {
            store,
            options,
            made: Mutex::default(),
        }
    }

    /// The base URL given: the worker's, else the job's.
    fn given_base_url<'a>(&'a self, settings: &'a Map<String, Value>) -> Option<&'a str> {
        self.options
            .base_url
            .as_deref()
            .or_else(|| setting(settings, "base_url"))
    }

    /// The key: from `--api-key-env`, else the job's variable, else the provider's (the
    /// registry's rule); the official API without one is a `ConfigError`.
    fn key(
        &self,
        facts: &ProviderFacts,
        base_url: &str,
        settings: &Map<String, Value>,
    ) -> Result<Option<ApiKey>, Error> {
        let named = self
            .options
            .api_key_env
            .as_deref()
            .or_else(|| setting(settings, "api_key_env"));
        let value = match named {
            Some(var) => {
                let value = std::env::var(var).ok().filter(|v| !v.is_empty());
                if value.is_none() && facts.is_official(base_url) {
                    return Err(Error::config(
                        "api_key_env",
                        format!("no API key for {base_url}: {var} is not set"),
                    ));
                }
                value
            }
            None => facts.key(None, base_url, "api_key_env", "pass --api-key-env")?,
        };
        Ok(value.and_then(ApiKey::new))
    }

    fn transport(
        &self,
        wire: &ProviderFacts,
        key_of: &ProviderFacts,
        base_url: String,
        settings: &Map<String, Value>,
        timeout: Duration,
    ) -> Result<Transport, Error> {
        let api_key = self.key(key_of, &base_url, settings)?;
        let config = TransportConfig {
            provider: wire.provider,
            base_url,
            api_key,
            auth: wire.auth,
            headers: wire
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            retry: RetryPolicy::default(),
            limiter: Arc::clone(&self.options.limiter),
        };
        Transport::new(config, UsageBook::new(self.options.prices.clone()))
    }

    /// The client a job's requests are sent through online.
    fn endpoint(&self, job: &JobRow, settings: &Map<String, Value>) -> Result<Endpoint, Error> {
        let wire = providers::wire(&job.endpoint)?;
        let given = self.given_base_url(settings);
        // Whose key: the provider the URL names (Gemini's OpenAI-compatible routes take a
        // Gemini key), else the wire's.
        let key_of = providers::detect(&job.endpoint, given);
        let base_url = wire.base_url(given);
        let model = setting(settings, "model").map(str::to_string);
        let namespace = self
            .options
            .cache
            .as_ref()
            .map(|c| c.config().namespace.clone().unwrap_or_default());
        Ok(match job.endpoint.as_str() {
            "/v1/embeddings" => {
                let dims = settings
                    .get("dimensions")
                    .and_then(Value::as_u64)
                    .map(|d| d as u32);
                let model = model.unwrap_or_else(|| "text-embedding-3-small".into());
                let cache = self.options.cache.as_ref().map(|c| EmbeddingCache {
                    cache: Arc::clone(c),
                    keys: embedding_key(
                        namespace.as_deref().unwrap_or(""),
                        wire.name,
                        &base_url,
                        &model,
                        dims,
                        "base64",
                    ),
                });
                let transport =
                    self.transport(wire, key_of, base_url, settings, Duration::from_secs(60))?;
                Endpoint::Embeddings(Arc::new(Embedder {
                    model: Box::new(openai::Embeddings::new(
                        model,
                        dims,
                        EncodingFormat::Base64,
                        None,
                    )),
                    transport,
                    max_inputs: openai::MAX_INPUTS,
                    max_tokens: openai::MAX_TOKENS,
                    cache,
                }))
            }
            _ => {
                let make = wire.chat.ok_or_else(|| {
                    Error::config(
                        "endpoint",
                        format!("{} has no chat API for {}", wire.name, job.endpoint),
                    )
                })?;
                let cache = self.options.cache.as_ref().map(|c| ChatCache {
                    cache: Arc::clone(c),
                    keys: chat_key(namespace.as_deref().unwrap_or(""), wire.name, &base_url),
                });
                let transport =
                    self.transport(wire, key_of, base_url, settings, Duration::from_secs(600))?;
                let api = make(ChatSetup {
                    model: model.unwrap_or_else(|| "default".into()),
                    transport,
                    output_limiter: None,
                })?;
                Endpoint::Chat(Arc::new(Chatter::with_cache(api, cache)))
            }
        })
    }

    fn route(&self, job: &JobRow, settings: &Map<String, Value>) -> Route {
        let submitted_batched = setting(settings, "via") == Some("batch-api");
        let batch_provider = match (&self.options.batch, submitted_batched) {
            (None, false) => None,
            (opts, _) => Some(
                opts.as_ref()
                    .and_then(|o| o.provider.clone())
                    .or_else(|| setting(settings, "batch_provider").map(str::to_string))
                    .unwrap_or_else(|| {
                        let given = self.given_base_url(settings);
                        providers::detect(&job.endpoint, given).name.to_string()
                    }),
            ),
        };
        let embeddings = (job.endpoint == "/v1/embeddings").then(|| {
            (
                setting(settings, "model").map(str::to_string),
                settings
                    .get("dimensions")
                    .and_then(Value::as_u64)
                    .map(|d| d as u32),
            )
        });
        Route {
            endpoint: job.endpoint.clone(),
            embeddings,
            batch_provider,
        }
    }

    fn make(
        &self,
        job: &JobRow,
        settings: &Map<String, Value>,
        route: &Route,
    ) -> Result<Arc<Runner>, Error> {
        let endpoint = self.endpoint(job, settings)?;
        let o = &self.options;
        let runner = match &route.batch_provider {
            None => Runner::new(
                Arc::clone(&self.store),
                endpoint,
                o.runner.clone(),
                o.host.clone(),
            )?,
            Some(provider) => provider_batch_runner(
                Arc::clone(&self.store),
                endpoint,
                Some(provider),
                &o.batch.clone().unwrap_or_default(),
                o.runner.clone(),
                o.host.clone(),
            )?,
        };
        if let Some(l) = &o.listener {
            runner.listen(Arc::clone(l));
        }
        Ok(runner)
    }
}

/// A runner that sends jobs through a provider's batch API (`provider`'s, else the one the
/// client's base URL names) with `opts`.
pub fn provider_batch_runner(
    store: Arc<dyn Store>,
    endpoint: Endpoint,
    provider: Option<&str>,
    opts: &ProviderBatchOptions,
    config: RunnerConfig,
    host: String,
) -> Result<Arc<Runner>, Error> {
    let api = providers::batch_provider(
        endpoint.path(),
        endpoint.transport(),
        endpoint.model().to_string(),
        provider.or(opts.provider.as_deref()),
    )?;
    let most = api.limits();
    let limits = BatchLimits {
        requests: opts.requests.unwrap_or(most.requests),
        bytes: opts.bytes.unwrap_or(most.bytes),
        ..most
    };
    let poll = opts.poll_interval.unwrap_or_else(|| api.poll_interval());
    let mut batched =
        ProviderBatchRoute::new(api, poll, opts.max_attempts, opts.max_open, Some(limits));
    batched.fallback_online = opts.fallback_online;
    Runner::batched(store, endpoint, batched, config, host)
}

impl Routes for JobRoutes {
    fn runner_for(&self, job: &JobRow) -> Result<Option<Arc<Runner>>, Error> {
        let settings: Map<String, Value> = job
            .settings
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let route = self.route(job, &settings);
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = made.get(&route) {
            return Ok(Some(Arc::clone(r)));
        }
        let runner = self.make(job, &settings, &route)?;
        made.insert(route, Arc::clone(&runner));
        Ok(Some(runner))
    }

    fn made(&self) -> Vec<Arc<Runner>> {
        self.made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
