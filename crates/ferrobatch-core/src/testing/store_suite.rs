//! The job store test suite: the semantics every store engine must keep, run against SQLite
//! by `cargo test` and against both SQLite and a throwaway PostgreSQL by the Python tests
//! (through `ferrobatch._native._store_suite`). Every case uses its own job and runner ids, so
//! the suite can run again on a store that already holds data.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::jobs::{
    BatchLimits, Completion, Finished, JobStatus, NewJob, NewRequest, ProviderBatchState,
    ProviderBatchUpdate, RunnerInfo, Settled, Store,
};

fn check(ok: bool, what: impl Into<String>) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

macro_rules! eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        check(
            a == b,
            format!(
                "{} == {}: {:?} != {:?}",
                stringify!($a),
                stringify!($b),
                a,
                b
            ),
        )?
    }};
}

fn e(err: Error) -> String {
    err.to_string()
}

struct Case {
    tag: String,
}

impl Case {
    fn job(&self, name: &str) -> String {
        format!("{}_{name}", self.tag)
    }

    fn runner(&self, name: &str, lease: Duration) -> RunnerInfo {
        RunnerInfo {
            id: format!("{}_{name}", self.tag),
            host: "test".into(),
            pid: 1,
            lease,
        }
    }
}

fn reqs(n: usize) -> Vec<NewRequest> {
    (0..n)
        .map(|i| NewRequest {
            id: format!("r{i}"),
            body: format!("{{\"i\": {i}}}"),
        })
        .collect()
}

fn ok(tokens: u64) -> Completion {
    Completion {
        ok: true,
        response: Some("{\"ok\": true}".into()),
        error: None,
        input_tokens: tokens,
        output_tokens: 2,
        cost: Some(0.5),
    }
}

fn failed() -> Completion {
    Completion {
        ok: false,
        response: None,
        error: Some("{\"message\": \"x\"}".into()),
        input_tokens: 0,
        output_tokens: 0,
        cost: None,
    }
}

fn done(job: &str, seq: i64, attempt: i64, outcome: Completion) -> Finished {
    Finished {
        job_id: job.to_string(),
        seq,
        attempt,
        outcome,
    }
}

async fn new_job(s: &dyn Store, id: &str, n: usize, hash: Option<&str>) -> Result<(), String> {
    s.create_job(
        NewJob {
            id: id.to_string(),
            name: Some("suite".into()),
            endpoint: "/v1/chat/completions".into(),
            settings: Some("{}".into()),
            input_hash: hash.map(str::to_string),
        },
        reqs(n),
    )
    .await
    .map_err(e)
}

const LONG: Duration = Duration::from_secs(60);

/// Run every case against `store`; the first failure, named.
pub async fn run(store: Arc<dyn Store>) -> Result<(), String> {
    let s = &*store;
    let tag = format!("t{:08x}", fastrand::u32(..));
    let c = Case { tag };
    let cases: [(&str, Result<(), String>); 10] = [
        ("duplicate ids", duplicate_ids(s, &c).await),
        ("exclusive claims", exclusive_claims(s, &c).await),
        ("takeover and fencing", takeover_and_fencing(s, &c).await),
        (
            "claims need a live lease",
            claims_need_a_live_lease(s, &c).await,
        ),
        ("counters", counters_cancel_reset_results(s, &c).await),
        (
            "release and unregister",
            release_and_unregister(s, &c).await,
        ),
        ("finish and fail", finish_and_fail(s, &c).await),
        ("lookups", lookups(s, &c).await),
        ("provider batches", provider_batches(s, &c).await),
        ("cancelled chunks", cancelled_chunks(s, &c).await),
    ];
    for (name, r) in cases {
        r.map_err(|m| format!("{} store, case {name:?}: {m}", s.engine()))?;
    }
    Ok(())
}

async fn duplicate_ids(s: &dyn Store, c: &Case) -> Result<(), String> {
    let mut r = reqs(3);
    r[2].id = "r0".into();
    let job = c.job("dup");
    let err = s
        .create_job(
            NewJob {
                id: job.clone(),
                endpoint: "/e".into(),
                ..NewJob::default()
            },
            r,
        )
        .await
        .err();
    eq!(
        err,
        Some(Error::DuplicateRequestId {
            id: "r0".into(),
            index: 2,
            first: 0
        })
    );
    check(
        matches!(s.job(job).await, Err(Error::JobNotFound { .. })),
        "nothing written",
    )
}

async fn exclusive_claims(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("claims");
    new_job(s, &job, 5, None).await?;
    let (a, b) = (c.runner("a", LONG), c.runner("b", LONG));
    s.register(a.clone()).await.map_err(e)?;
    s.register(b.clone()).await.map_err(e)?;
    eq!(
        s.start(job.clone()).await.map_err(e)?,
        JobStatus::Processing
    );
    let ca = s.claim(job.clone(), a.id.clone(), 3).await.map_err(e)?;
    eq!(ca.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    check(ca.iter().all(|x| x.attempt == 1), "first attempts")?;
    eq!(ca[1].id, "r1");
    eq!(ca[1].body, "{\"i\": 1}");
    let cb = s.claim(job.clone(), b.id.clone(), 10).await.map_err(e)?;
    eq!(cb.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![3, 4]);
    check(
        s.claim(job.clone(), b.id.clone(), 10)
            .await
            .map_err(e)?
            .is_empty(),
        "none left",
    )?;
    // Both stay alive: a heartbeat takes nothing over.
    check(s.heartbeat(b.id.clone()).await.map_err(e)?, "b alive")?;
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.running), (0, 5));
    Ok(())
}

async fn takeover_and_fencing(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("takeover");
    new_job(s, &job, 4, None).await?;
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("dying", Duration::from_millis(300));
    let b = c.runner("live", LONG);
    s.register(a.clone()).await.map_err(e)?;
    s.register(b.clone()).await.map_err(e)?;
    let ca = s.claim(job.clone(), a.id.clone(), 3).await.map_err(e)?;
    eq!(ca.len(), 3);
    // A stalls past its lease; B's heartbeat hands A's requests back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    check(s.heartbeat(b.id.clone()).await.map_err(e)?, "b alive")?;
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.running), (4, 0));
    let cb = s.claim(job.clone(), b.id.clone(), 3).await.map_err(e)?;
    eq!(
        cb.iter().map(|x| (x.seq, x.attempt)).collect::<Vec<_>>(),
        vec![(0, 2), (1, 2), (2, 2)]
    );
    // A comes back: it learns it was taken over, and its late outcomes are refused.
    check(
        !s.heartbeat(a.id.clone()).await.map_err(e)?,
        "a was taken over",
    )?;
    let late = vec![done(&job, 0, 1, ok(1)), done(&job, 1, 1, ok(1))];
    eq!(s.record(a.id.clone(), Arc::new(late)).await.map_err(e)?, 0);
    // Even re-registered, A cannot complete B's attempt.
    s.register(a.clone()).await.map_err(e)?;
    let wrong = vec![done(&job, 0, 2, ok(1))];
    eq!(s.record(a.id.clone(), Arc::new(wrong)).await.map_err(e)?, 0);
    // B's group: two kept, one (a repeat) refused.
    let group = vec![
        done(&job, 0, 2, ok(3)),
        done(&job, 1, 2, failed()),
        done(&job, 0, 2, ok(3)),
    ];
    eq!(s.record(b.id.clone(), Arc::new(group)).await.map_err(e)?, 2);
    let again = vec![done(&job, 0, 2, ok(3))];
    eq!(s.record(b.id.clone(), Arc::new(again)).await.map_err(e)?, 0);
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.running, p.succeeded, p.failed), (1, 1, 1, 1));
    eq!((p.input_tokens, p.output_tokens, p.cost), (3, 2, Some(0.5)));
    let r = s.results(job).await.map_err(e)?;
    eq!(r[0].response.as_deref(), Some("{\"ok\": true}"));
    eq!(r[1].error.as_deref(), Some("{\"message\": \"x\"}"));
    eq!(r[2].status, "running");
    Ok(())
}

async fn claims_need_a_live_lease(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("lapsed");
    new_job(s, &job, 4, None).await?;
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("cutoff", Duration::from_millis(300));
    let b = c.runner("other", LONG);
    let lost = |r: Result<Vec<crate::jobs::Claimed>, Error>| matches!(r, Err(Error::LeaseLost { ref runner }) if *runner == a.id);
    // Never registered: refused.
    check(
        lost(s.claim(job.clone(), a.id.clone(), 2).await),
        "an unregistered runner claims nothing",
    )?;
    s.register(a.clone()).await.map_err(e)?;
    s.register(b.clone()).await.map_err(e)?;
    eq!(
        s.claim(job.clone(), a.id.clone(), 1)
            .await
            .map_err(e)?
            .len(),
        1
    );
    // A is cut off past its lease, before anyone removed it: still refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    check(
        lost(s.claim(job.clone(), a.id.clone(), 2).await),
        "a lapsed runner claims nothing",
    )?;
    let limits = BatchLimits {
        requests: 2,
        bytes: 1 << 20,
        line_overhead: 0,
        one_model: false,
    };
    check(
        matches!(
            s.claim_provider_batch(job.clone(), a.id.clone(), "openai".into(), limits)
                .await,
            Err(Error::LeaseLost { .. })
        ),
        "a lapsed runner sets no chunk aside",
    )?;
    // B's heartbeat removes A and hands its request back; B claims everything.
    check(s.heartbeat(b.id.clone()).await.map_err(e)?, "b alive")?;
    eq!(
        s.claim(job.clone(), b.id.clone(), 10)
            .await
            .map_err(e)?
            .len(),
        4
    );
    check(
        lost(s.claim(job.clone(), a.id.clone(), 2).await),
        "a removed runner claims nothing",
    )?;
    // Registered again, A claims what is pending (nothing: B holds it all).
    s.register(a.clone()).await.map_err(e)?;
    eq!(
        s.claim(job.clone(), a.id.clone(), 2)
            .await
            .map_err(e)?
            .len(),
        0
    );
    Ok(())
}

async fn counters_cancel_reset_results(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("counters");
    new_job(s, &job, 4, None).await?;
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("counter", LONG);
    s.register(a.clone()).await.map_err(e)?;
    let cl = s.claim(job.clone(), a.id.clone(), 2).await.map_err(e)?;
    let group = vec![
        done(&job, cl[0].seq, cl[0].attempt, ok(3)),
        done(&job, cl[1].seq, cl[1].attempt, failed()),
    ];
    eq!(s.record(a.id.clone(), Arc::new(group)).await.map_err(e)?, 2);
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.total, p.pending, p.succeeded, p.failed), (4, 2, 1, 1));
    eq!(s.cancel(job.clone()).await.map_err(e)?, 2);
    eq!(
        s.job(job.clone()).await.map_err(e)?.status,
        JobStatus::Cancelled
    );
    check(
        s.claim(job.clone(), a.id.clone(), 10)
            .await
            .map_err(e)?
            .is_empty(),
        "cancelled: nothing to claim",
    )?;
    let r = s.results(job.clone()).await.map_err(e)?;
    let statuses: Vec<&str> = r.iter().map(|x| x.status.as_str()).collect();
    eq!(statuses, ["succeeded", "failed", "cancelled", "cancelled"]);
    eq!(
        r.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        ["r0", "r1", "r2", "r3"]
    );
    eq!(s.reset_failed(job.clone(), false).await.map_err(e)?, 1);
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.failed, p.cancelled), (1, 0, 2));
    eq!(s.reset_failed(job.clone(), true).await.map_err(e)?, 2);
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!(
        (p.pending, p.succeeded, p.failed, p.cancelled),
        (3, 1, 0, 0)
    );
    // A retried request's new outcome replaces the old one in the results.
    s.set_status(job.clone(), JobStatus::Processing, None)
        .await
        .map_err(e)?;
    let cl = s.claim(job.clone(), a.id.clone(), 1).await.map_err(e)?;
    eq!((cl[0].seq, cl[0].attempt), (1, 2));
    let group = vec![done(&job, 1, 2, ok(5))];
    eq!(s.record(a.id.clone(), Arc::new(group)).await.map_err(e)?, 1);
    let r = s.results(job.clone()).await.map_err(e)?;
    eq!(
        (r[1].status.as_str(), r[1].error.is_none()),
        ("succeeded", true)
    );
    eq!(s.progress(job).await.map_err(e)?.input_tokens, 8);
    Ok(())
}

async fn release_and_unregister(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("release");
    new_job(s, &job, 4, None).await?;
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("releaser", LONG);
    let b = c.runner("taker", LONG);
    s.register(a.clone()).await.map_err(e)?;
    s.register(b.clone()).await.map_err(e)?;
    eq!(
        s.claim(job.clone(), a.id.clone(), 2)
            .await
            .map_err(e)?
            .len(),
        2
    );
    eq!(s.release(job.clone(), a.id.clone()).await.map_err(e)?, 2);
    eq!(
        s.claim(job.clone(), a.id.clone(), 4)
            .await
            .map_err(e)?
            .len(),
        4
    );
    eq!(s.unregister(a.id.clone()).await.map_err(e)?, 4);
    check(!s.heartbeat(a.id.clone()).await.map_err(e)?, "unregistered")?;
    let cb = s.claim(job.clone(), b.id.clone(), 10).await.map_err(e)?;
    let attempts: Vec<(i64, i64)> = cb.iter().map(|x| (x.seq, x.attempt)).collect();
    eq!(attempts, vec![(0, 3), (1, 3), (2, 2), (3, 2)]);
    Ok(())
}

async fn finish_and_fail(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("finish");
    new_job(s, &job, 2, None).await?;
    // A pending job is not completed by finish_if_done.
    eq!(
        s.finish_if_done(job.clone()).await.map_err(e)?,
        JobStatus::Pending
    );
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("finisher", LONG);
    s.register(a.clone()).await.map_err(e)?;
    let cl = s.claim(job.clone(), a.id.clone(), 2).await.map_err(e)?;
    let one = vec![done(&job, cl[0].seq, cl[0].attempt, ok(1))];
    s.record(a.id.clone(), Arc::new(one)).await.map_err(e)?;
    eq!(
        s.finish_if_done(job.clone()).await.map_err(e)?,
        JobStatus::Processing
    );
    let two = vec![done(&job, cl[1].seq, cl[1].attempt, ok(1))];
    s.record(a.id.clone(), Arc::new(two)).await.map_err(e)?;
    eq!(
        s.finish_if_done(job.clone()).await.map_err(e)?,
        JobStatus::Completed
    );
    check(
        !s.fail(job.clone(), "late".into()).await.map_err(e)?,
        "a completed job does not fail",
    )?;
    eq!(s.cancel(job.clone()).await.map_err(e)?, 0);
    eq!(
        s.job(job.clone()).await.map_err(e)?.status,
        JobStatus::Completed
    );
    let other = c.job("failing");
    new_job(s, &other, 1, None).await?;
    check(
        s.fail(other.clone(), "AuthenticationError: no".into())
            .await
            .map_err(e)?,
        "fails",
    )?;
    let j = s.job(other).await.map_err(e)?;
    eq!(
        (j.status, j.error.as_deref()),
        (JobStatus::Failed, Some("AuthenticationError: no"))
    );
    check(
        matches!(
            s.progress(c.job("missing")).await,
            Err(Error::JobNotFound { .. })
        ),
        "unknown job",
    )
}

async fn lookups(s: &dyn Store, c: &Case) -> Result<(), String> {
    let first = c.job("look1");
    let hash = format!("{}-hash", c.tag);
    new_job(s, &first, 1, Some(&hash)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = c.job("look2");
    new_job(s, &second, 1, Some(&hash)).await?;
    eq!(
        s.find_by_input(hash).await.map_err(e)?.map(|j| j.id),
        Some(second.clone())
    );
    eq!(
        s.find_by_input(format!("{}-none", c.tag))
            .await
            .map_err(e)?,
        None
    );
    let ids: Vec<String> = s
        .jobs()
        .await
        .map_err(e)?
        .into_iter()
        .map(|j| j.id)
        .filter(|id| id == &first || id == &second)
        .collect();
    eq!(ids, vec![first.clone(), second]);
    let j = s.job(first).await.map_err(e)?;
    eq!(
        (j.name.as_deref(), j.total, j.settings.as_deref()),
        (Some("suite"), 1, Some("{}"))
    );
    check(
        j.created_at > 1.0e9 && j.updated_at >= j.created_at,
        "times are unix seconds",
    )
}

fn limits(requests: usize, bytes: usize) -> BatchLimits {
    BatchLimits {
        requests,
        bytes,
        line_overhead: 0,
        one_model: false,
    }
}

fn step(state: ProviderBatchState, batch_id: Option<&str>) -> ProviderBatchUpdate {
    ProviderBatchUpdate {
        state,
        batch_id: batch_id.map(str::to_string),
        file_id: None,
        remote_status: None,
    }
}

async fn provider_batches(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("chunks");
    new_job(s, &job, 6, None).await?;
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("batcher", Duration::from_millis(300));
    let b = c.runner("heir", LONG);
    s.register(a.clone()).await.map_err(e)?;
    s.register(b.clone()).await.map_err(e)?;
    let provider = "openai".to_string();
    // By count, then by bytes: each body is 8 bytes, so 17 bytes hold two.
    let (one, r1) = s
        .claim_provider_batch(job.clone(), a.id.clone(), provider.clone(), limits(3, 1000))
        .await
        .map_err(e)?
        .ok_or("a first chunk")?;
    eq!(
        (one.number, one.requests, one.state),
        (1, 3, ProviderBatchState::Planned)
    );
    eq!(
        r1.iter().map(|x| (x.seq, x.attempt)).collect::<Vec<_>>(),
        vec![(0, 1), (1, 1), (2, 1)]
    );
    let (two, r2) = s
        .claim_provider_batch(job.clone(), a.id.clone(), provider.clone(), limits(10, 17))
        .await
        .map_err(e)?
        .ok_or("a second chunk")?;
    eq!((two.number, r2.len()), (2, 2));
    // ProviderBatchRoute requests are nobody's claim, and count as running.
    check(
        s.claim(job.clone(), b.id.clone(), 10)
            .await
            .map_err(e)?
            .len()
            == 1,
        "one left to claim",
    )?;
    s.release(job.clone(), b.id.clone()).await.map_err(e)?;
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.running), (1, 5));
    eq!(
        s.finish_if_done(job.clone()).await.map_err(e)?,
        JobStatus::Processing
    );
    // Each step is fenced by the owner; the intent time is set once.
    check(
        s.update_provider_batch(
            job.clone(),
            1,
            a.id.clone(),
            step(ProviderBatchState::Creating, None),
        )
        .await
        .map_err(e)?,
        "a moves its chunk",
    )?;
    check(
        !s.update_provider_batch(
            job.clone(),
            1,
            b.id.clone(),
            step(ProviderBatchState::Created, Some("x")),
        )
        .await
        .map_err(e)?,
        "b may not",
    )?;
    let before = s.provider_batches(job.clone()).await.map_err(e)?;
    check(before[0].intent_at.is_some(), "the intent is written")?;
    eq!(before[0].state, ProviderBatchState::Creating);
    // B takes nothing while A lives; once A's lease lapses, B takes both provider batches.
    check(
        s.take_provider_batches(job.clone(), b.id.clone())
            .await
            .map_err(e)?
            .is_empty(),
        "a's chunks stay a's",
    )?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    check(s.heartbeat(b.id.clone()).await.map_err(e)?, "b alive")?;
    let taken = s
        .take_provider_batches(job.clone(), b.id.clone())
        .await
        .map_err(e)?;
    eq!(
        taken.iter().map(|x| x.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The heartbeat handed nothing batched back.
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.running), (1, 5));
    check(
        !s.update_provider_batch(
            job.clone(),
            1,
            a.id.clone(),
            step(ProviderBatchState::Created, Some("lost")),
        )
        .await
        .map_err(e)?,
        "a lost it",
    )?;
    check(
        s.update_provider_batch(
            job.clone(),
            1,
            b.id.clone(),
            step(ProviderBatchState::Created, Some("batch_1")),
        )
        .await
        .map_err(e)?,
        "b records the id",
    )?;
    let reqs1 = s.provider_batch_requests(job.clone(), 1).await.map_err(e)?;
    eq!(
        reqs1.iter().map(|x| x.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // Settle: one success, one failure, one back to pending (not mentioned).
    let settled = vec![
        Settled {
            seq: 0,
            outcome: Some(ok(4)),
        },
        Settled {
            seq: 1,
            outcome: Some(failed()),
        },
    ];
    eq!(
        s.settle_provider_batch(job.clone(), 1, a.id.clone(), settled.clone())
            .await
            .map_err(e)?,
        0
    );
    eq!(
        s.settle_provider_batch(job.clone(), 1, b.id.clone(), settled.clone())
            .await
            .map_err(e)?,
        2
    );
    eq!(
        s.settle_provider_batch(job.clone(), 1, b.id.clone(), settled)
            .await
            .map_err(e)?,
        0
    );
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!((p.pending, p.running, p.succeeded, p.failed), (2, 2, 1, 1));
    eq!((p.input_tokens, p.cost), (4, Some(0.5)));
    // The request handed back gets a second attempt in a later provider batch (seq 5's second: b
    // claimed and released it above).
    let (three, r3) = s
        .claim_provider_batch(job.clone(), b.id.clone(), provider, limits(10, 1000))
        .await
        .map_err(e)?
        .ok_or("a third chunk")?;
    eq!(three.number, 3);
    eq!(
        r3.iter().map(|x| (x.seq, x.attempt)).collect::<Vec<_>>(),
        vec![(2, 2), (5, 2)]
    );
    let all = vec![
        Settled {
            seq: 2,
            outcome: Some(ok(1)),
        },
        Settled {
            seq: 5,
            outcome: Some(ok(1)),
        },
    ];
    s.settle_provider_batch(job.clone(), 3, b.id.clone(), all)
        .await
        .map_err(e)?;
    let rest = vec![
        Settled {
            seq: 3,
            outcome: Some(ok(1)),
        },
        Settled {
            seq: 4,
            outcome: Some(ok(1)),
        },
    ];
    s.settle_provider_batch(job.clone(), 2, b.id.clone(), rest)
        .await
        .map_err(e)?;
    eq!(
        s.finish_if_done(job.clone()).await.map_err(e)?,
        JobStatus::Completed
    );
    let r = s.results(job.clone()).await.map_err(e)?;
    eq!(
        r.iter().map(|x| x.status.as_str()).collect::<Vec<_>>(),
        vec![
            "succeeded",
            "failed",
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded"
        ]
    );
    let done = s.provider_batches(job).await.map_err(e)?;
    check(
        done.iter().all(|x| x.state == ProviderBatchState::Settled),
        "every chunk settled",
    )?;
    eq!(done[0].batch_id.as_deref(), Some("batch_1"));
    Ok(())
}

async fn cancelled_chunks(s: &dyn Store, c: &Case) -> Result<(), String> {
    let job = c.job("cancelchunks");
    new_job(s, &job, 4, None).await?;
    s.start(job.clone()).await.map_err(e)?;
    let a = c.runner("canceller", LONG);
    s.register(a.clone()).await.map_err(e)?;
    s.claim_provider_batch(
        job.clone(),
        a.id.clone(),
        "anthropic".into(),
        limits(3, 1000),
    )
    .await
    .map_err(e)?
    .ok_or("a chunk")?;
    eq!(s.cancel(job.clone()).await.map_err(e)?, 1);
    // The provider ran one; the others become cancelled, not pending.
    let settled = vec![
        Settled {
            seq: 0,
            outcome: Some(ok(2)),
        },
        Settled {
            seq: 1,
            outcome: None,
        },
    ];
    eq!(
        s.settle_provider_batch(job.clone(), 1, a.id.clone(), settled)
            .await
            .map_err(e)?,
        1
    );
    let p = s.progress(job.clone()).await.map_err(e)?;
    eq!(
        (p.pending, p.running, p.succeeded, p.cancelled),
        (0, 0, 1, 3)
    );
    // A clean stop leaves no provider batch owned.
    s.unregister(a.id.clone()).await.map_err(e)?;
    check(
        s.provider_batches(job)
            .await
            .map_err(e)?
            .iter()
            .all(|x| x.owner.is_none()),
        "owner cleared",
    )
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_in_memory_and_in_a_file() {
        let mem = crate::jobs::open(":memory:").await.unwrap();
        super::run(mem).await.unwrap();
        let dir = std::env::temp_dir().join(format!("ferrobatch-suite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.db");
        let file = crate::jobs::open(path.to_str().unwrap()).await.unwrap();
        super::run(std::sync::Arc::clone(&file)).await.unwrap();
        // Again, on a store that already holds the first run's data.
        super::run(file).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
