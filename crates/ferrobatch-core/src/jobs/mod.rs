//! Batch jobs: requests kept in a durable store and worked by runners on any number of hosts.
//!
//! - [`model`]: the values a store keeps (jobs, requests, claims, outcomes, progress);
//! - [`store`]: the one store interface, [`open`] picking an engine from a location, and the
//!   engines: SQLite (one file, one machine) and PostgreSQL (workers on many hosts);
//! - [`input`]: the JSONL reader and the one body check per endpoint;
//! - [`endpoint`]: what a request is sent through, and how its outcome is written down;
//! - [`run`]: the runner core and its routes (online, through a provider's batch API);
//! - [`output`]: results as an OpenAI Batch API output file.

pub mod endpoint;
pub mod estimate;
pub mod host;
pub mod input;
pub mod model;
pub mod outage;
pub mod output;
pub mod routes;
pub mod run;
pub mod store;
pub mod worker;

pub use endpoint::{error_json, Endpoint, Sent};
pub use model::{
    BatchLimits, Claimed, Completion, Finished, JobRow, JobStatus, NewJob, NewRequest, Progress,
    ProviderBatchRow, ProviderBatchState, ProviderBatchUpdate, ResultRow, RunnerInfo, Settled,
};
pub use outage::{RunnerEvent, RunnerListener};
pub use routes::{provider_batch_runner, JobRoutes, ProviderBatchOptions, WorkerOptions};
pub use run::{Online, ProviderBatchRoute, Route, Runner, RunnerConfig};
pub use store::{is_postgres, open, redact, Store, StoreFuture};
pub use worker::{OneRunner, Routes, Worker};
