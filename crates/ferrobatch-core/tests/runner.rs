//! The job runner against the crate's own fake server on 127.0.0.1 and a SQLite store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::http::Chatter;
use ferrobatch_core::jobs::{
    self, Endpoint, JobStatus, NewJob, NewRequest, Runner, RunnerConfig, Store,
};
use ferrobatch_core::providers::openai::wire::{Chat, ChatClient};
use ferrobatch_core::testing::{Fault, FaultKind, ServerConfig, TestServer};

fn server(latency: Duration) -> TestServer {
    let config = ServerConfig {
        latency,
        ..Default::default()
    };
    TestServer::start(&tokio::runtime::Handle::current(), "127.0.0.1", 0, config).unwrap()
}

fn chat(server: &TestServer) -> Endpoint {
    let transport = common::transport(server, 0);
    Endpoint::Chat(Arc::new(Chatter::new(Box::new(ChatClient {
        chat: Chat { model: "m".into() },
        transport,
    }))))
}

async fn job(store: &dyn Store, id: &str, n: usize) {
    let requests = (0..n)
        .map(|i| NewRequest {
            id: format!("r{i}"),
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

fn config(flush_interval: Duration) -> RunnerConfig {
    RunnerConfig {
        lease: Duration::from_secs(10),
        window: 16,
        concurrency: 8,
        flush_interval,
        flush_max: 50,
        patience: Duration::from_secs(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ends_with_every_outcome_recorded_once() {
    let srv = server(Duration::from_millis(2));
    let store = jobs::open(":memory:").await.unwrap();
    job(&*store, "j", 200).await;
    srv.add_fault(Fault {
        kind: FaultKind::Status {
            status: 400,
            retry_after: None,
            retry_after_ms: None,
            retry_delay: None,
        },
        times: 3,
        path: None,
    });
    for interval in [Duration::from_millis(50), Duration::ZERO] {
        let runner =
            Runner::new(Arc::clone(&store), chat(&srv), config(interval), "h".into()).unwrap();
        if interval.is_zero() {
            job(&*store, "k", 20).await;
            assert_eq!(runner.run_job("k").await.unwrap(), JobStatus::Completed);
        } else {
            assert_eq!(runner.run_job("j").await.unwrap(), JobStatus::Completed);
        }
        runner.stop().await.unwrap();
    }
    let p = store.progress("j".into()).await.unwrap();
    assert_eq!(
        (p.succeeded, p.failed, p.pending, p.running),
        (197, 3, 0, 0)
    );
    assert!(p.input_tokens > 0 && p.output_tokens > 0);
    let cost = (p.input_tokens as f64 + 2.0 * p.output_tokens as f64) / 1e6;
    assert!((p.cost.unwrap() - cost).abs() < 1e-12);
    let results = store.results("j".into()).await.unwrap();
    let failed: Vec<_> = results.iter().filter(|r| r.status == "failed").collect();
    assert_eq!(failed.len(), 3);
    let error: serde_json::Value = serde_json::from_str(failed[0].error.as_ref().unwrap()).unwrap();
    assert_eq!(
        (error["type"].as_str(), error["status"].as_u64()),
        (Some("BadRequestError"), Some(400))
    );
    // 200 + 20 requests, each sent once.
    assert_eq!(srv.request_count(), 220);
    assert_eq!(store.progress("k".into()).await.unwrap().succeeded, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hands_back_what_is_in_flight_and_authentication_fails_the_job() {
    let srv = server(Duration::from_millis(300));
    let store = jobs::open(":memory:").await.unwrap();
    job(&*store, "slow", 50).await;
    let runner = Runner::new(
        Arc::clone(&store),
        chat(&srv),
        config(Duration::from_millis(50)),
        "h".into(),
    )
    .unwrap();
    let running = {
        let r = Arc::clone(&runner);
        tokio::spawn(async move { r.run_job("slow").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.held_by("slow".into()).await.unwrap().len(), 1);
    runner.stop().await.unwrap();
    assert_eq!(running.await.unwrap().unwrap(), JobStatus::Processing);
    let p = store.progress("slow".into()).await.unwrap();
    assert_eq!(
        (p.running, p.pending),
        (0, 50),
        "handed back, none recorded"
    );
    assert!(store.held_by("slow".into()).await.unwrap().is_empty());

    let srv = server(Duration::ZERO);
    srv.add_fault(Fault {
        kind: FaultKind::Status {
            status: 401,
            retry_after: None,
            retry_after_ms: None,
            retry_delay: None,
        },
        times: 100,
        path: None,
    });
    job(&*store, "auth", 30).await;
    let runner = Runner::new(
        Arc::clone(&store),
        chat(&srv),
        config(Duration::ZERO),
        "h".into(),
    )
    .unwrap();
    assert_eq!(runner.run_job("auth").await.unwrap(), JobStatus::Failed);
    let j = store.job("auth".into()).await.unwrap();
    assert!(j.error.unwrap().starts_with("AuthenticationError: "));
    let p = store.progress("auth".into()).await.unwrap();
    assert!(p.failed >= 1 && p.pending > 0 && p.running == 0, "{p:?}");
    runner.stop().await.unwrap();
}
