//! Jobs through the providers' batch APIs, against the crate's fake server on 127.0.0.1 and
//! a SQLite store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::http::Chatter;
use ferrobatch_core::http::{Auth, Transport};
use ferrobatch_core::jobs::{
    self, BatchLimits, Endpoint, JobStatus, NewJob, NewRequest, ProviderBatchRoute, Runner,
    RunnerConfig, Store,
};
use ferrobatch_core::providers::batch::BatchProvider;
use ferrobatch_core::providers::openai::batch::OpenAiBatches;
use ferrobatch_core::providers::openai::wire::{Chat, ChatClient};
use ferrobatch_core::testing::{BatchFault, Fault, FaultKind, ServerConfig, TestServer};
use ferrobatch_core::Provider;

fn transport(server: &TestServer) -> Transport {
    common::transport(server, 2)
}

fn runner(server: &TestServer, store: Arc<dyn Store>, per_batch: usize) -> Arc<Runner> {
    let endpoint = Endpoint::Chat(Arc::new(Chatter::new(Box::new(ChatClient {
        chat: Chat { model: "m".into() },
        transport: transport(server),
    }))));
    let t = transport(server);
    let api = Box::new(OpenAiBatches {
        basics: ferrobatch_core::providers::openai::FACTS.batch_basics(),
        transport: t
            .sibling(
                Provider::OpenAi,
                t.base_url(),
                Auth::Bearer,
                t.usage().scaled(0.5),
            )
            .unwrap(),
        endpoint: "/v1/chat/completions".into(),
        model: "m".into(),
    });
    let limits = BatchLimits {
        requests: per_batch,
        ..api.limits()
    };
    let batched = ProviderBatchRoute::new(api, Duration::from_millis(30), 3, 2, Some(limits));
    let config = RunnerConfig {
        lease: Duration::from_secs(10),
        patience: Duration::from_secs(10),
        ..RunnerConfig::default()
    };
    Runner::batched(store, endpoint, batched, config, "test".into()).unwrap()
}

async fn job(store: &dyn Store, id: &str, n: usize) {
    let requests = (0..n)
        .map(|i| NewRequest {
            id: format!("q{i}"),
            body: format!(r#"{{"messages": [{{"role": "user", "content": "item {i}"}}]}}"#),
        })
        .collect();
    let job = NewJob {
        id: id.into(),
        endpoint: "/v1/chat/completions".into(),
        ..NewJob::default()
    };
    store.create_job(job, requests).await.unwrap();
}

fn creates(server: &TestServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/batches")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_as_several_provider_batches_at_half_price() {
    let srv = TestServer::start(
        &tokio::runtime::Handle::current(),
        "127.0.0.1",
        0,
        ServerConfig::default(),
    )
    .unwrap();
    let store = jobs::open(":memory:").await.unwrap();
    job(&*store, "j", 250).await;
    let r = runner(&srv, Arc::clone(&store), 100);
    assert_eq!(r.run_job("j").await.unwrap(), JobStatus::Completed);
    assert_eq!(creates(&srv), 3);
    let p = store.progress("j".into()).await.unwrap();
    assert_eq!((p.succeeded, p.failed), (250, 0));
    let half = (p.input_tokens as f64 * 1.0 + p.output_tokens as f64 * 2.0) / 1e6 / 2.0;
    assert!((p.cost.unwrap() - half).abs() < 1e-12);
    let rows = store.results("j".into()).await.unwrap();
    assert!(rows[7]
        .response
        .as_deref()
        .unwrap()
        .contains("chat.completion"));
    r.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_failed_batches_are_retried_until_the_job_ends() {
    let srv = TestServer::start(
        &tokio::runtime::Handle::current(),
        "127.0.0.1",
        0,
        ServerConfig::default(),
    )
    .unwrap();
    for kind in [
        BatchFault::Expire { done: 10 },
        BatchFault::StatusZero,
        BatchFault::TokenLimit,
    ] {
        srv.add_fault(Fault {
            kind: FaultKind::Batch(kind),
            times: 1,
            path: None,
        });
    }
    let store = jobs::open(":memory:").await.unwrap();
    job(&*store, "j", 40).await;
    let r = runner(&srv, Arc::clone(&store), 40);
    assert_eq!(r.run_job("j").await.unwrap(), JobStatus::Completed);
    let p = store.progress("j".into()).await.unwrap();
    assert_eq!((p.succeeded, p.failed), (40, 0));
    assert_eq!(srv.pending_faults(), 0);
    // expire (10 kept) → 30 again with status 0 → token limit → the 30 at last.
    assert_eq!(creates(&srv), 4);
    r.stop().await.unwrap();
}
