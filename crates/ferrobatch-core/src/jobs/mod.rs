//! Batch jobs: the durable [`store`] of jobs, requests, leases and results. The runner that
//! sends the requests lives with the HTTP batchers it drives (in the Python package).

pub mod store;

pub use store::{
    Claimed, Completion, JobRow, JobStatus, NewRequest, Progress, ResultRow, Store, SCHEMA_VERSION,
};
