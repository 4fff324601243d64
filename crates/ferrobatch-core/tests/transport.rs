//! The transport and the embedding loop against the crate's own fake server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::http::embed::embed_all;
use ferrobatch_core::http::transport::{DEFAULT_MAX_RESPONSE_BYTES, MAX_ERROR_BODY};
use ferrobatch_core::http::{ApiKey, Auth, RetryPolicy, Transport, TransportConfig, UsageBook};
use ferrobatch_core::limits::LocalLimiter;
use ferrobatch_core::providers::openai::wire::{Embeddings, EncodingFormat};
use ferrobatch_core::testing::fake::fake_embedding;
use ferrobatch_core::testing::{
    ErrorStyle, Fault, FaultKind, ServerConfig, TestServer, REJECT_MARKER,
};
use ferrobatch_core::{Error, Provider};

fn transport(server: &TestServer, key: &str, timeout: Duration) -> Transport {
    capped_transport(server, key, timeout, DEFAULT_MAX_RESPONSE_BYTES)
}

fn capped_transport(server: &TestServer, key: &str, timeout: Duration, cap: usize) -> Transport {
    let config = TransportConfig {
        provider: Provider::OpenAi,
        base_url: format!("{}/v1", server.url()),
        api_key: ApiKey::new(key),
        auth: Auth::Bearer,
        headers: Vec::new(),
        timeout,
        max_response_bytes: cap,
        retry: RetryPolicy::new(2, 0.01, 0.02).unwrap(),
        limiter: Arc::new(LocalLimiter::new(None, None).unwrap()),
    };
    Transport::new(config, UsageBook::default()).unwrap()
}

fn server(config: ServerConfig) -> TestServer {
    TestServer::start(&tokio::runtime::Handle::current(), "127.0.0.1", 0, config).unwrap()
}

/// `kind` for the next `times` requests, whatever their path.
fn fault(kind: FaultKind, times: u32) -> Fault {
    Fault {
        kind,
        times,
        path: None,
    }
}

fn status(status: u16, times: u32) -> Fault {
    let kind = FaultKind::Status {
        status,
        retry_after: None,
        retry_after_ms: Some(5),
        retry_delay: None,
    };
    fault(kind, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_every_text_gets_its_own_vector() {
    let srv = server(ServerConfig {
        dimensions: 4,
        ..Default::default()
    });
    srv.add_fault(status(503, 2));
    let t = transport(&srv, "k", Duration::from_secs(5));
    let api = Embeddings::new("m".into(), None, EncodingFormat::Base64, None);
    let texts: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let out = embed_all(&api, &t, &texts, 4, 1_000).await;
    for (r, text) in out.iter().zip(&texts) {
        let v = r.as_ref().unwrap();
        let want = fake_embedding(text, 4);
        assert!(v.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
    }
    let statuses: Vec<u16> = srv.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 2);
    // 10 texts at 4 per request.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3);
    assert_eq!(t.usage().snapshot()["m"].retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_scrubbed_from_an_echoing_401() {
    let srv = server(ServerConfig {
        api_key: Some("right".into()),
        ..Default::default()
    });
    let t = transport(&srv, "sk-wrong-secret", Duration::from_secs(5));
    let err = t
        .post("/embeddings", "{}".into(), "m", 1)
        .await
        .unwrap_err();
    match &err {
        Error::Status {
            status,
            message,
            body,
            ..
        } => {
            assert_eq!(*status, 401);
            assert!(message.contains("***"));
            assert!(!message.contains("sk-wrong-secret"));
            assert!(!body.as_deref().unwrap().contains("sk-wrong-secret"));
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(!format!("{err:?} {err} {t:?}").contains("sk-wrong-secret"));
    assert_eq!(srv.request_count(), 1, "401 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_time_out_and_resets_are_connection_errors() {
    let srv = server(ServerConfig::default());
    let t = transport(&srv, "k", Duration::from_millis(100));
    srv.add_fault(fault(FaultKind::Hang(Duration::from_secs(5)), 3));
    let body = r#"{"input":["a"]}"#;
    let err = t
        .post("/embeddings", body.into(), "m", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    srv.add_fault(fault(FaultKind::Reset, 3));
    let err = t
        .post("/embeddings", body.into(), "m", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert_eq!(srv.request_count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pydantic_errors_isolate_inputs_and_trigger_the_float_fallback() {
    let srv = server(ServerConfig {
        dimensions: 4,
        base64: false,
        error_style: ErrorStyle::Pydantic,
        ..Default::default()
    });
    let t = transport(&srv, "k", Duration::from_secs(5));
    let api = Embeddings::new("m".into(), None, EncodingFormat::Base64, None);
    let texts: Vec<String> = vec!["a".into(), format!("b {REJECT_MARKER}"), "c".into()];
    let out = embed_all(&api, &t, &texts, 16, 1_000).await;
    assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
    match &out[1] {
        Err(Error::Status {
            status: 422,
            message,
            param,
            ..
        }) => {
            assert_eq!(param.as_deref(), Some("input[1]"));
            assert!(message.contains("rejected by the test server"), "{message}");
        }
        other => panic!("expected the 422 for input 1 alone, got {other:?}"),
    }
    // base64 refused (422 on encoding_format), floats asked, input 1 refused, the rest sent.
    let statuses: Vec<u16> = srv.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![422, 422, 200]);
    let u = &t.usage().snapshot()["m"];
    assert_eq!((u.requests, u.retries, u.failed_requests), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_bodies_stop_at_the_cap() {
    let srv = server(ServerConfig::default());
    let t = capped_transport(&srv, "k", Duration::from_secs(10), 1 << 20);
    let send = || t.post("/embeddings", r#"{"input":["a"]}"#.into(), "m", 1);
    srv.add_fault(fault(FaultKind::Endless(200), 1));
    let err = send().await.unwrap_err();
    assert_eq!(err, Error::ResponseTooLarge { limit: 1 << 20 });
    assert_eq!(srv.request_count(), 1, "a body over the cap is not retried");
    // An endless error body is read up to MAX_ERROR_BODY and kept as far as it went.
    srv.add_fault(fault(FaultKind::Endless(400), 1));
    let err = send().await.unwrap_err();
    match err {
        Error::Status {
            status: 400, body, ..
        } => assert_eq!(body.unwrap().len(), MAX_ERROR_BODY),
        other => panic!("expected a 400, got {other:?}"),
    }
    // The client keeps working.
    assert!(send().await.is_ok());
}
