//! Running jobs: the runner core ([`runner`]: registration, heartbeats, the recorder, outages,
//! claims, sends) and its two routes, [`online`] (claim → send → record) and
//! [`provider_batch`] (a job's requests through the provider's batch API).

pub mod online;
pub mod provider_batch;
pub mod runner;

pub use online::Online;
pub use provider_batch::ProviderBatchRoute;
pub use runner::{Route, Runner, RunnerConfig};
