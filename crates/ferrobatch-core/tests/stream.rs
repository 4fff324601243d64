//! Streamed chat against the crate's fake server: both wire formats, and every scripted
//! fault (a cut before and after the first chunk, an error event, no usage, a slow first
//! chunk, a stall, a caller that drops the stream).

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferrobatch_core::http::{ChatStream, Chatter, StreamClocks};
use ferrobatch_core::providers::anthropic::wire::MessagesClient;
use ferrobatch_core::providers::openai::wire::{Chat, ChatClient};
use ferrobatch_core::testing::{Fault, FaultKind, ServerConfig, StreamFault, TestServer};
use ferrobatch_core::{Error, Provider};
use serde_json::{json, Map, Value};

fn server() -> TestServer {
    let handle = tokio::runtime::Handle::current();
    TestServer::start(&handle, "127.0.0.1", 0, ServerConfig::default()).unwrap()
}

fn openai(server: &TestServer, retries: i64) -> Arc<Chatter> {
    let api = ChatClient {
        chat: Chat { model: "m".into() },
        transport: common::transport(server, retries),
    };
    Arc::new(Chatter::new(Box::new(api)))
}

fn anthropic(server: &TestServer) -> Arc<Chatter> {
    let mut config = ferrobatch_core::http::TransportConfig {
        provider: Provider::Anthropic,
        base_url: format!("{}/v1", server.url()),
        api_key: ferrobatch_core::http::ApiKey::new("k"),
        auth: ferrobatch_core::http::Auth::XApiKey,
        headers: vec![("anthropic-version".into(), "2023-06-01".into())],
        timeout: Duration::from_secs(5),
        max_response_bytes: 1 << 24,
        retry: ferrobatch_core::http::RetryPolicy::new(2, 0.01, 0.02).unwrap(),
        limiter: Arc::new(ferrobatch_core::limits::LocalLimiter::new(None, None).unwrap()),
    };
    config.headers.shrink_to_fit();
    let transport = ferrobatch_core::http::Transport::new(
        config,
        ferrobatch_core::http::UsageBook::new(Default::default()),
    )
    .unwrap();
    let api = MessagesClient {
        model: "claude".into(),
        transport,
        output_limiter: None,
    };
    Arc::new(Chatter::new(Box::new(api)))
}

fn body(text: &str) -> Map<String, Value> {
    let v = json!({"messages": [{"role": "user", "content": text}], "max_tokens": 50});
    v.as_object().unwrap().clone()
}

const CLOCKS: StreamClocks = StreamClocks {
    first_token: Duration::from_secs(5),
    idle: Duration::from_secs(5),
};

async fn drain(s: &mut ChatStream) -> (Vec<Value>, Option<Error>) {
    let mut chunks = Vec::new();
    loop {
        match s.next().await {
            Ok(Some(c)) => chunks.push(c),
            Ok(None) => return (chunks, None),
            Err(e) => return (chunks, Some(e)),
        }
    }
}

fn fault(server: &TestServer, f: StreamFault) {
    server.add_fault(Fault {
        kind: FaultKind::Stream(f),
        times: 1,
        path: None,
    });
}

fn openai_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_adds_up_to_the_whole_answer_with_its_usage() {
    let server = server();
    let chat = openai(&server, 0);
    let mut s = ChatStream::open(Arc::clone(&chat), body("tell me"), CLOCKS)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert!(err.is_none());
    assert!(chunks.len() > 3);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let r = s.response();
    assert_eq!(r["choices"][0]["message"]["content"], openai_text(&chunks));
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let u = s.usage();
    assert!(!u.estimated && u.input_tokens > 0 && u.output_tokens > 0);
    let sent = &server.requests()[0].body;
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    drop(s);
    let usage = chat.api.transport().usage().snapshot();
    assert_eq!(usage["m"].requests, 1);
    assert_eq!(usage["m"].output_tokens, u.output_tokens);
    assert_eq!(chat.streams.stats().outcomes.get("completed"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_takes_the_last_usage_never_a_sum() {
    let server = server();
    let chat = anthropic(&server);
    let mut s = ChatStream::open(Arc::clone(&chat), body("hello there"), CLOCKS)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert!(err.is_none());
    assert!(
        chunks.iter().all(|c| c["type"] != "ping"),
        "pings are skipped"
    );
    assert_eq!(chunks.last().unwrap()["type"], "message_stop");
    let r = s.response();
    let text: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(r["content"][0]["text"], text);
    assert_eq!(r["stop_reason"], "end_turn");
    let reported = chunks
        .iter()
        .find(|c| c["type"] == "message_delta")
        .unwrap()["usage"]["output_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(s.usage().output_tokens, reported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_before_the_first_chunk_is_retried_after_it_fails() {
    let server = server();
    let chat = openai(&server, 2);
    fault(&server, StreamFault::CutAfter(0));
    let mut s = ChatStream::open(Arc::clone(&chat), body("again"), CLOCKS)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert!(err.is_none(), "{err:?}");
    assert!(!chunks.is_empty());
    assert_eq!(
        server.requests().len(),
        2,
        "sent again: nothing had reached the caller"
    );
    drop(s);
    let usage = chat.api.transport().usage().snapshot();
    assert_eq!((usage["m"].requests, usage["m"].retries), (1, 1));

    fault(&server, StreamFault::CutAfter(3));
    let mut s = ChatStream::open(Arc::clone(&chat), body("a longer question here"), CLOCKS)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert_eq!(chunks.len(), 3, "every chunk received is handed out first");
    assert!(matches!(err, Some(Error::Connection { .. })), "{err:?}");
    assert_eq!(server.requests().len(), 3, "never sent again after a chunk");
    assert!(
        s.usage().estimated,
        "no usage arrived: estimated, and said so"
    );
    assert_eq!(s.next().await.unwrap(), None, "then it is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_fails_the_stream_after_the_chunks_before_it() {
    let server = server();
    for chat in [openai(&server, 2), anthropic(&server)] {
        fault(&server, StreamFault::ErrorAfter(2));
        let mut s = ChatStream::open(Arc::clone(&chat), body("some words to say"), CLOCKS)
            .await
            .unwrap();
        let (chunks, err) = drain(&mut s).await;
        assert_eq!(chunks.len(), 2);
        match err {
            Some(Error::Stream { code, .. }) => {
                assert!(matches!(
                    code.as_deref(),
                    Some("overloaded" | "overloaded_error")
                ))
            }
            other => panic!("{other:?}"),
        }
        drop(s);
        assert_eq!(chat.streams.stats().outcomes.get("failed"), Some(&1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usage_the_tokens_are_estimated_and_say_so() {
    let server = server();
    let chat = openai(&server, 0);
    fault(&server, StreamFault::NoUsage);
    let mut s = ChatStream::open(Arc::clone(&chat), body("no usage please"), CLOCKS)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert!(err.is_none() && !chunks.is_empty());
    let u = s.usage();
    assert!(u.estimated && u.input_tokens > 0 && u.output_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_clocks_fail_a_slow_first_chunk_and_a_stall() {
    let server = server();
    let chat = openai(&server, 0);
    let clocks = StreamClocks {
        first_token: Duration::from_millis(200),
        idle: Duration::from_millis(200),
    };
    fault(&server, StreamFault::SlowFirst(Duration::from_secs(2)));
    let t = std::time::Instant::now();
    let mut s = ChatStream::open(Arc::clone(&chat), body("slow"), clocks)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert!(chunks.is_empty());
    assert!(
        matches!(err, Some(Error::Timeout { after }) if after == clocks.first_token),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));

    fault(&server, StreamFault::Stall(3, Duration::from_secs(2)));
    let mut s = ChatStream::open(Arc::clone(&chat), body("one two three four five"), clocks)
        .await
        .unwrap();
    let (chunks, err) = drain(&mut s).await;
    assert_eq!(chunks.len(), 3);
    assert!(
        matches!(err, Some(Error::Timeout { after }) if after == clocks.idle),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_closes_its_connection_and_settles_what_it_got() {
    let server = server();
    let chat = openai(&server, 0);
    fault(&server, StreamFault::Long(100_000)); // ~100 MB if it were all read
    let mut s = ChatStream::open(Arc::clone(&chat), body("long"), CLOCKS)
        .await
        .unwrap();
    for _ in 0..10 {
        s.next().await.unwrap().unwrap();
    }
    drop(s);
    let stats = chat.streams.stats();
    assert_eq!(stats.outcomes.get("cancelled"), Some(&1));
    let usage = chat.api.transport().usage().snapshot();
    assert_eq!(usage["m"].failed_requests, 1);
    assert!(usage["m"].output_tokens > 0, "what was received is counted");
    // The server stops: its next request is answered at once (it is not busy writing).
    let mut again = ChatStream::open(Arc::clone(&chat), body("short"), CLOCKS)
        .await
        .unwrap();
    assert!(drain(&mut again).await.1.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_is_refused_before_anything_is_sent() {
    let server = server();
    let chat = anthropic(&server);
    let mut b = body("x");
    b.remove("max_tokens");
    let e = ChatStream::open(chat, b, CLOCKS).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    assert!(server.requests().is_empty());
}
