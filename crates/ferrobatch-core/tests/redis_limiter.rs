//! The Redis-shared limiter against a real redis-server of its own on a free loopback port.
//! Without the binary the tests skip, naming the Debian package; with
//! `FERROBATCH_REQUIRE_SERVICES=1` (as CI sets) a missing binary fails them instead.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrobatch_core::limits::{
    LimiterEvent, OnRedisError, RateLimit, RedisLimiter, RedisLimiterConfig,
};
use ferrobatch_core::Error;

struct Redis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_redis(port: u16, dir: &std::path::Path) -> Option<Child> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child)
}

/// A throwaway redis-server, or None (the test skips) when the binary is missing.
fn redis() -> Option<Redis> {
    let dir = std::env::temp_dir().join(format!("ferrobatch-redis-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    match spawn_redis(port, &dir) {
        Some(child) => Some(Redis {
            child,
            port,
            _dir: TempDir(dir),
        }),
        None => {
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                std::env::var_os("FERROBATCH_REQUIRE_SERVICES").is_none(),
                "redis-server is missing (Debian package redis-server) and CI requires it"
            );
            eprintln!("skipped: redis-server not found (install the Debian package redis-server)");
            None
        }
    }
}

type Events = Arc<Mutex<Vec<LimiterEvent>>>;

/// A limiter on bucket `name` with a 1 s burst that falls back to a local share.
fn limiter(port: u16, name: &str, rpm: Option<f64>, tpm: Option<f64>) -> (RedisLimiter, Events) {
    limiter_with(port, name, rpm, tpm, OnRedisError::Local)
}

fn limiter_with(
    port: u16,
    name: &str,
    rpm: Option<f64>,
    tpm: Option<f64>,
    on_error: OnRedisError,
) -> (RedisLimiter, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let l = RedisLimiter::new(
        RedisLimiterConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            name: name.into(),
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            burst: Duration::from_secs(1),
            on_error,
            timeout: Duration::from_millis(300),
        },
        Box::new(move |e| sink.lock().unwrap().push(e.clone())),
    )
    .unwrap();
    (l, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_on_one_bucket_share_one_budget() {
    let Some(r) = redis() else { return };
    // 600/min = one per 100 ms, with 1 s (10 requests) of burst, shared by both.
    let (a, _) = limiter(r.port, "shared", Some(600.0), None);
    let (b, _) = limiter(r.port, "shared", Some(600.0), None);
    let start = Instant::now();
    for i in 0..20 {
        let l = if i % 2 == 0 { &a } else { &b };
        l.acquire(1).await.unwrap();
    }
    let took = start.elapsed();
    // 10 at once, then 10 paced at 100 ms: about 1 s. Two private budgets would take ~0 s.
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(a.live_processes(), 1, "one process, however many limiters");
    // Another bucket is another budget.
    let (c, _) = limiter(r.port, "other", Some(600.0), None);
    let start = Instant::now();
    for _ in 0..10 {
        c.acquire(1).await.unwrap();
    }
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_settle_and_an_oversized_request_waits_for_a_full_bucket() {
    let Some(r) = redis() else { return };
    // 6,000 tokens/min = 100 per second; burst 1 s = 100 tokens.
    let (l, _) = limiter(r.port, "tok", None, Some(6000.0));
    l.acquire(100).await.unwrap();
    // Refund 50 of the estimate: 50 tokens fit again at once.
    l.settle(100, 50);
    let start = Instant::now();
    l.acquire(50).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    // 300 tokens > the burst: admitted once the bucket is full (~1 s), never stuck.
    let start = Instant::now();
    l.acquire(300).await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_every_sharer_then_paces() {
    let Some(r) = redis() else { return };
    let (a, _) = limiter(r.port, "p", Some(600.0), None);
    let (b, _) = limiter(r.port, "p", Some(600.0), None);
    a.pause(Duration::from_millis(400)).await;
    let start = Instant::now();
    b.acquire(1).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(380),
        "{:?}",
        start.elapsed()
    );
    // After the pause, admissions are paced (100 ms apart), not released at once.
    let start = Instant::now();
    for _ in 0..3 {
        b.acquire(1).await.unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_then_recovers_or_fails_by_policy() {
    let Some(mut r) = redis() else { return };
    let (l, events) = limiter(r.port, "down", Some(6000.0), None);
    let (strict, _) = limiter_with(r.port, "down", Some(6000.0), None, OnRedisError::Fail);
    l.acquire(1).await.unwrap();
    let _ = r.child.kill();
    let _ = r.child.wait();
    // Requests keep going, limited in process.
    for _ in 0..5 {
        l.acquire(1).await.unwrap();
    }
    assert!(l.degraded());
    assert!(matches!(
        events.lock().unwrap().first(),
        Some(LimiterEvent::FellBack { live: 1, .. })
    ));
    let err = strict.acquire(1).await.unwrap_err();
    assert!(
        matches!(err, Error::RateLimiterUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not answer"), "{err}");
    // Redis back on the same port: the limiter returns to it within a probe interval.
    r.child = spawn_redis(r.port, &r._dir.0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.degraded() {
        assert!(Instant::now() < deadline, "never went back to Redis");
        l.acquire(1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&LimiterEvent::Recovered)
    );
    assert_eq!(
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, LimiterEvent::FellBack { .. }))
            .count(),
        1,
        "one warning per outage"
    );
}
