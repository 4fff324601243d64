//! `SqliteStore`: the embedded job store, one SQLite file (WAL mode) shared by the processes of
//! one machine. Each call runs on tokio's blocking pool, never on a runtime thread. Times are
//! this host's clock (every runner of a SQLite store is on this host).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use futures_util::FutureExt;

use super::ledger::{self, progress_of, Tally};
use super::{check_unique, check_version, Store, StoreFuture, SCHEMA_VERSION};
use crate::error::Error;
use crate::jobs::model::{
    BatchLimits, Claimed, Completion, Finished, JobRow, JobStatus, NewJob, NewRequest, Progress,
    ProviderBatchRow, ProviderBatchState, ProviderBatchUpdate, ResultRow, RunnerInfo, Settled,
};

/// The schema: `(version, SQL)`, each moving the store from the version before it.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("migrations/sqlite/0001_jobs_and_requests.sql"),
    ),
    (
        2,
        include_str!("migrations/sqlite/0002_runners_and_results.sql"),
    ),
    (
        3,
        include_str!("migrations/sqlite/0003_provider_batches.sql"),
    ),
];

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Store {
        operation,
        message: e.to_string(),
    }
}

const JOB_COLUMNS: &str =
    "id, name, status, endpoint, settings, input_hash, error, total, created_at, updated_at";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let status: String = r.get(2)?;
    Ok(JobRow {
        id: r.get(0)?,
        name: r.get(1)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        endpoint: r.get(3)?,
        settings: r.get(4)?,
        input_hash: r.get(5)?,
        error: r.get(6)?,
        total: r.get::<_, i64>(7)? as u64,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

/// The embedded store: one connection behind a lock per open store; open one per process
/// (or more: SQLite's locking keeps them consistent).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path`; `":memory:"` keeps it in memory.
    /// Blocking: call it off the runtime threads.
    pub fn open(path: &str) -> Result<SqliteStore, Error> {
        let conn = Connection::open(path).map_err(db("opening the store"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(db("setting the busy timeout"))?;
        if path != ":memory:" {
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(db("switching to WAL mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Store {
                    operation: "switching to WAL mode",
                    message: format!("the journal mode stayed {mode:?}"),
                });
            }
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(db("setting pragmas"))?;
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("migrating"))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db("reading the schema version"))?;
        check_version(version, SCHEMA_VERSION)?;
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
            tx.execute_batch(sql).map_err(db("migrating"))?;
            tx.pragma_update(None, "user_version", v)
                .map_err(db("migrating"))?;
        }
        tx.commit().map_err(db("migrating"))
    }

    /// Run `f` on the blocking pool with the connection.
    fn call<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let me = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&mut me.lock()))
                .await
                .map_err(|e| Error::Store {
                    operation: "running a store call",
                    message: e.to_string(),
                })?
        })
    }
}

fn immediate<'c>(
    conn: &'c mut Connection,
    op: &'static str,
) -> Result<rusqlite::Transaction<'c>, Error> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db(op))
}

fn read_job(conn: &Connection, job_id: &str) -> Result<JobRow, Error> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        [job_id],
        job_row,
    )
    .optional()
    .map_err(db("reading a job"))?
    .ok_or_else(|| Error::JobNotFound {
        job: job_id.to_string(),
    })
}

fn status_of(conn: &Connection, job_id: &str) -> Result<JobStatus, Error> {
    let s: Option<String> = conn
        .query_row("SELECT status FROM jobs WHERE id = ?1", [job_id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db("reading a job"))?;
    let s = s.ok_or_else(|| Error::JobNotFound {
        job: job_id.to_string(),
    })?;
    Ok(JobStatus::parse(&s).unwrap_or(JobStatus::Failed))
}

/// Hand back every running request whose runner is gone or whose heartbeat lapsed, and
/// forget such runners.
fn take_over(tx: &rusqlite::Transaction<'_>, at: f64) -> Result<u64, Error> {
    let n = tx
        .execute(
            "UPDATE requests SET status = 'pending', runner = NULL
             WHERE status = 'running'
               AND runner NOT IN (SELECT id FROM runners WHERE heartbeat_at + lease >= ?1)",
            [at],
        )
        .map_err(db("taking over requests"))?;
    tx.execute("DELETE FROM runners WHERE heartbeat_at + lease < ?1", [at])
        .map_err(db("taking over requests"))?;
    Ok(n as u64)
}

/// Whether the runner is registered with a lease that has not lapsed at `at`.
fn live(tx: &rusqlite::Transaction<'_>, runner_id: &str, at: f64) -> Result<bool, Error> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM runners WHERE id = ?1 AND heartbeat_at + lease >= ?2)",
        params![runner_id, at],
        |r| r.get(0),
    )
    .map_err(db("claiming requests"))
}

impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn schema_version(&self) -> StoreFuture<'_, i64> {
        self.call(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(db("reading the schema version"))
        })
    }

    fn create_job(&self, job: NewJob, requests: Vec<NewRequest>) -> StoreFuture<'_, ()> {
        self.call(move |conn| {
            check_unique(&requests)?;
            let tx = immediate(conn, "creating a job")?;
            let at = now();
            tx.execute(
                "INSERT INTO jobs (id, name, status, endpoint, settings, input_hash, total, created_at, updated_at)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?7)",
                params![job.id, job.name, job.endpoint, job.settings, job.input_hash, requests.len() as i64, at],
            )
            .map_err(db("creating a job"))?;
            {
                let mut stmt = tx
                    .prepare(
                        "INSERT INTO requests (job_id, seq, id, body, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                    )
                    .map_err(db("storing requests"))?;
                for (i, r) in requests.iter().enumerate() {
                    stmt.execute(params![job.id, i as i64, r.id, r.body])
                        .map_err(db("storing requests"))?;
                }
            }
            tx.commit().map_err(db("creating a job"))
        })
    }

    fn job(&self, job_id: String) -> StoreFuture<'_, JobRow> {
        self.call(move |c| read_job(c, &job_id))
    }

    fn jobs(&self) -> StoreFuture<'_, Vec<JobRow>> {
        self.call(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at, id"
                ))
                .map_err(db("listing jobs"))?;
            let rows = stmt
                .query_map([], job_row)
                .map_err(db("listing jobs"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("listing jobs"));
            rows
        })
    }

    fn find_by_input(&self, input_hash: String) -> StoreFuture<'_, Option<JobRow>> {
        self.call(move |c| {
            c.query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE input_hash = ?1 ORDER BY created_at DESC LIMIT 1"
                ),
                [input_hash],
                job_row,
            )
            .optional()
            .map_err(db("finding a job"))
        })
    }

    fn set_status(
        &self,
        job_id: String,
        status: JobStatus,
        error: Option<String>,
    ) -> StoreFuture<'_, ()> {
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                    params![job_id, status.as_str(), error, now()],
                )
                .map_err(db("updating a job"))?;
            if n == 0 {
                return Err(Error::JobNotFound { job: job_id });
            }
            Ok(())
        })
    }

    fn start(&self, job_id: String) -> StoreFuture<'_, JobStatus> {
        self.call(move |c| {
            c.execute(
                "UPDATE jobs SET status = 'processing', updated_at = ?2 WHERE id = ?1 AND status = 'pending'",
                params![job_id, now()],
            )
            .map_err(db("starting a job"))?;
            status_of(c, &job_id)
        })
    }

    fn fail(&self, job_id: String, error: String) -> StoreFuture<'_, bool> {
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'failed', error = ?2, updated_at = ?3
                     WHERE id = ?1 AND status IN ('pending', 'processing')",
                    params![job_id, error, now()],
                )
                .map_err(db("failing a job"))?;
            Ok(n == 1)
        })
    }

    fn finish_if_done(&self, job_id: String) -> StoreFuture<'_, JobStatus> {
        self.call(move |c| {
            c.execute(
                "UPDATE jobs SET status = 'completed', updated_at = ?2
                 WHERE id = ?1 AND status = 'processing'
                   AND NOT EXISTS (SELECT 1 FROM requests
                                   WHERE job_id = ?1 AND status IN ('pending', 'running', 'batched'))",
                params![job_id, now()],
            )
            .map_err(db("completing a job"))?;
            status_of(c, &job_id)
        })
    }

    fn register(&self, runner: RunnerInfo) -> StoreFuture<'_, ()> {
        self.call(move |c| {
            let at = now();
            c.execute(
                "INSERT INTO runners (id, host, pid, lease, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![
                    runner.id,
                    runner.host,
                    runner.pid,
                    runner.lease.as_secs_f64(),
                    at
                ],
            )
            .map_err(db("registering a runner"))?;
            Ok(())
        })
    }

    fn heartbeat(&self, runner_id: String) -> StoreFuture<'_, bool> {
        self.call(move |conn| {
            let at = now();
            let tx = immediate(conn, "sending a heartbeat")?;
            // Whether this runner was still alive before this beat.
            let alive = tx
                .execute(
                    "UPDATE runners SET heartbeat_at = ?2 WHERE id = ?1 AND heartbeat_at + lease >= ?2",
                    params![runner_id, at],
                )
                .map_err(db("sending a heartbeat"))?
                == 1;
            take_over(&tx, at)?;
            tx.commit().map_err(db("sending a heartbeat"))?;
            Ok(alive)
        })
    }

    fn runners(&self) -> StoreFuture<'_, Vec<RunnerInfo>> {
        self.call(|c| {
            let mut stmt = c
                .prepare_cached("SELECT id, host, pid, lease FROM runners ORDER BY started_at")
                .map_err(db("listing runners"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(RunnerInfo {
                        id: r.get(0)?,
                        host: r.get(1)?,
                        pid: r.get(2)?,
                        lease: Duration::from_secs_f64(r.get::<_, f64>(3)?.max(0.0)),
                    })
                })
                .map_err(db("listing runners"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("listing runners"));
            rows
        })
    }

    fn unregister(&self, runner_id: String) -> StoreFuture<'_, u64> {
        self.call(move |conn| {
            let tx = immediate(conn, "removing a runner")?;
            let n = tx
                .execute(
                    "UPDATE requests SET status = 'pending', runner = NULL
                     WHERE status = 'running' AND runner = ?1",
                    [&runner_id],
                )
                .map_err(db("removing a runner"))?;
            tx.execute("DELETE FROM runners WHERE id = ?1", [&runner_id])
                .map_err(db("removing a runner"))?;
            tx.execute(
                "UPDATE chunks SET owner = NULL WHERE owner = ?1",
                [&runner_id],
            )
            .map_err(db("removing a runner"))?;
            tx.commit().map_err(db("removing a runner"))?;
            Ok(n as u64)
        })
    }

    fn claim(
        &self,
        job_id: String,
        runner_id: String,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Claimed>> {
        self.call(move |conn| {
            let at = now();
            let tx = immediate(conn, "claiming requests")?;
            // Only a runner registered with a live lease claims (checked in the statement):
            // one whose registration lapsed while it was cut off must register again first.
            let mut claimed = {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE requests SET status = 'running', runner = ?2, attempt = attempt + 1
                         WHERE job_id = ?1 AND seq IN (
                             SELECT seq FROM requests WHERE job_id = ?1 AND status = 'pending'
                               AND EXISTS (SELECT 1 FROM runners
                                           WHERE id = ?2 AND heartbeat_at + lease >= ?4)
                             ORDER BY seq LIMIT ?3)
                         RETURNING seq, id, body, attempt",
                    )
                    .map_err(db("claiming requests"))?;
                let rows = stmt
                    .query_map(params![job_id, runner_id, limit as i64, at], |r| {
                        Ok(Claimed {
                            job_id: job_id.clone(),
                            seq: r.get(0)?,
                            id: r.get(1)?,
                            body: r.get(2)?,
                            attempt: r.get(3)?,
                        })
                    })
                    .map_err(db("claiming requests"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db("claiming requests"))?;
                rows
            };
            if claimed.is_empty() && !live(&tx, &runner_id, at)? {
                return Err(Error::LeaseLost { runner: runner_id });
            }
            tx.commit().map_err(db("claiming requests"))?;
            claimed.sort_by_key(|c| c.seq);
            Ok(claimed)
        })
    }

    fn record(&self, runner_id: String, done: Arc<Vec<Finished>>) -> StoreFuture<'_, u64> {
        self.call(move |conn| {
            let op = "recording results";
            let at = now();
            let tx = immediate(conn, op)?;
            let mut tallies: std::collections::BTreeMap<&str, Tally> = Default::default();
            {
                let mut fence = tx
                    .prepare_cached(
                        "UPDATE requests SET status = ?5, runner = NULL
                         WHERE job_id = ?1 AND seq = ?2 AND status = 'running'
                           AND runner = ?3 AND attempt = ?4",
                    )
                    .map_err(db(op))?;
                let mut insert = tx.prepare_cached(INSERT_RESULT).map_err(db(op))?;
                for f in done.iter() {
                    let o = &f.outcome;
                    let status = if o.ok { "succeeded" } else { "failed" };
                    let n = fence
                        .execute(params![f.job_id, f.seq, runner_id, f.attempt, status])
                        .map_err(db(op))?;
                    if n == 0 {
                        continue;
                    }
                    insert
                        .execute(params![
                            f.job_id,
                            f.seq,
                            f.attempt,
                            runner_id,
                            o.ok,
                            o.response,
                            o.error,
                            o.input_tokens as i64,
                            o.output_tokens as i64,
                            o.cost,
                            at
                        ])
                        .map_err(db(op))?;
                    tallies.entry(f.job_id.as_str()).or_default().add(o);
                }
            }
            for (job, t) in &tallies {
                bump_counters(&tx, job, t, 0, at).map_err(db(op))?;
            }
            tx.commit().map_err(db(op))?;
            Ok(tallies.values().map(Tally::recorded).sum())
        })
    }

    fn release(&self, job_id: String, runner_id: String) -> StoreFuture<'_, u64> {
        self.call(move |c| {
            c.execute(
                "UPDATE requests SET status = 'pending', runner = NULL
                 WHERE job_id = ?1 AND status = 'running' AND runner = ?2",
                params![job_id, runner_id],
            )
            .map(|n| n as u64)
            .map_err(db("releasing requests"))
        })
    }

    fn cancel(&self, job_id: String) -> StoreFuture<'_, u64> {
        self.call(move |conn| {
            let tx = immediate(conn, "cancelling")?;
            let status = status_of(&tx, &job_id)?;
            if matches!(status, JobStatus::Completed | JobStatus::Failed) {
                return Ok(0);
            }
            let at = now();
            let n = tx
                .execute(
                    "UPDATE requests SET status = 'cancelled' WHERE job_id = ?1 AND status = 'pending'",
                    [&job_id],
                )
                .map_err(db("cancelling"))?;
            tx.execute(
                "UPDATE jobs SET status = 'cancelled', cancelled = cancelled + ?2, updated_at = ?3
                 WHERE id = ?1",
                params![job_id, n as i64, at],
            )
            .map_err(db("cancelling"))?;
            tx.commit().map_err(db("cancelling"))?;
            Ok(n as u64)
        })
    }

    fn reset_failed(&self, job_id: String, cancelled: bool) -> StoreFuture<'_, u64> {
        self.call(move |conn| {
            let tx = immediate(conn, "resetting failed requests")?;
            status_of(&tx, &job_id)?;
            let failed = tx
                .execute(
                    "UPDATE requests SET status = 'pending' WHERE job_id = ?1 AND status = 'failed'",
                    [&job_id],
                )
                .map_err(db("resetting failed requests"))?;
            let back = if cancelled {
                tx.execute(
                    "UPDATE requests SET status = 'pending' WHERE job_id = ?1 AND status = 'cancelled'",
                    [&job_id],
                )
                .map_err(db("resetting failed requests"))?
            } else {
                0
            };
            tx.execute(
                "UPDATE jobs SET failed = failed - ?2, cancelled = cancelled - ?3 WHERE id = ?1",
                params![job_id, failed as i64, back as i64],
            )
            .map_err(db("resetting failed requests"))?;
            tx.commit().map_err(db("resetting failed requests"))?;
            Ok((failed + back) as u64)
        })
    }

    fn progress(&self, job_id: String) -> StoreFuture<'_, Progress> {
        self.call(move |c| {
            let row = c
                .query_row(
                    "SELECT total, succeeded, failed, cancelled, input_tokens, output_tokens, cost,
                         (SELECT count(*) FROM requests
                          WHERE job_id = ?1 AND status IN ('running', 'batched'))
                     FROM jobs WHERE id = ?1",
                    [&job_id],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, Option<f64>>(6)?,
                            r.get::<_, i64>(7)?,
                        ))
                    },
                )
                .optional()
                .map_err(db("reading progress"))?
                .ok_or(Error::JobNotFound { job: job_id })?;
            Ok(progress_of(row))
        })
    }

    fn results(&self, job_id: String) -> StoreFuture<'_, Vec<ResultRow>> {
        self.call(move |conn| {
            read_job(conn, &job_id)?;
            let mut stmt = conn
                .prepare(
                    "SELECT q.seq, q.id,
                         CASE q.status WHEN 'batched' THEN 'running' ELSE q.status END,
                         r.response, r.error FROM requests q
                     LEFT JOIN results r ON q.status IN ('succeeded', 'failed')
                         AND r.job_id = q.job_id AND r.seq = q.seq AND r.attempt = q.attempt
                     WHERE q.job_id = ?1 ORDER BY q.seq",
                )
                .map_err(db("reading results"))?;
            let rows = stmt
                .query_map([&job_id], |r| {
                    Ok(ResultRow {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        status: r.get(2)?,
                        response: r.get(3)?,
                        error: r.get(4)?,
                    })
                })
                .map_err(db("reading results"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("reading results"));
            rows
        })
    }

    fn held_by(&self, job_id: String) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.call(move |c| SqliteStore::held(c, &job_id))
    }

    fn claim_provider_batch(
        &self,
        job_id: String,
        runner_id: String,
        provider: String,
        limits: BatchLimits,
    ) -> StoreFuture<'_, Option<(ProviderBatchRow, Vec<Claimed>)>> {
        self.call(move |conn| {
            let op = "setting aside a provider batch";
            let tx = immediate(conn, op)?;
            if !live(&tx, &runner_id, now())? {
                return Err(Error::LeaseLost { runner: runner_id });
            }
            let candidates = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, id, body, attempt FROM requests
                         WHERE job_id = ?1 AND status = 'pending' ORDER BY seq LIMIT ?2",
                    )
                    .map_err(db(op))?;
                let rows = stmt
                    .query_map(params![job_id, limits.requests.max(1) as i64], |r| {
                        Ok(Claimed {
                            job_id: job_id.clone(),
                            seq: r.get(0)?,
                            id: r.get(1)?,
                            body: r.get(2)?,
                            attempt: r.get::<_, i64>(3)? + 1,
                        })
                    })
                    .map_err(db(op))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db(op))?;
                rows
            };
            if candidates.is_empty() {
                return Ok(None);
            }
            let mut taken = candidates;
            taken.truncate(crate::jobs::model::cut(&limits, &taken));
            let at = now();
            let chunk: i64 = tx
                .query_row(
                    "UPDATE jobs SET chunks = chunks + 1 WHERE id = ?1 RETURNING chunks",
                    [&job_id],
                    |r| r.get(0),
                )
                .map_err(db(op))?;
            {
                let mut mark = tx
                    .prepare_cached(
                        "UPDATE requests SET status = 'batched', chunk = ?3, attempt = attempt + 1,
                             runner = NULL
                         WHERE job_id = ?1 AND seq = ?2",
                    )
                    .map_err(db(op))?;
                for c in &taken {
                    mark.execute(params![job_id, c.seq, chunk])
                        .map_err(db(op))?;
                }
            }
            tx.execute(
                "INSERT INTO chunks (job_id, chunk, provider, state, owner, requests, created_at,
                     updated_at)
                 VALUES (?1, ?2, ?3, 'planned', ?4, ?5, ?6, ?6)",
                params![job_id, chunk, provider, runner_id, taken.len() as i64, at],
            )
            .map_err(db(op))?;
            tx.commit().map_err(db(op))?;
            let row = ProviderBatchRow {
                job_id,
                number: chunk,
                provider,
                state: ProviderBatchState::Planned,
                batch_id: None,
                file_id: None,
                remote_status: None,
                requests: taken.len() as u64,
                intent_at: None,
                owner: Some(runner_id),
            };
            Ok(Some((row, taken)))
        })
    }

    fn take_provider_batches(
        &self,
        job_id: String,
        runner_id: String,
    ) -> StoreFuture<'_, Vec<ProviderBatchRow>> {
        self.call(move |conn| {
            let op = "taking provider batches";
            let tx = immediate(conn, op)?;
            tx.execute(
                "UPDATE chunks SET owner = ?2, updated_at = ?3
                 WHERE job_id = ?1 AND state != 'settled'
                   AND (owner IS NULL OR owner = ?2 OR owner NOT IN
                        (SELECT id FROM runners WHERE heartbeat_at + lease >= ?3))",
                params![job_id, runner_id, now()],
            )
            .map_err(db(op))?;
            let rows = read_chunks(&tx, &job_id, Some(&runner_id))?;
            tx.commit().map_err(db(op))?;
            Ok(rows)
        })
    }

    fn provider_batches(&self, job_id: String) -> StoreFuture<'_, Vec<ProviderBatchRow>> {
        self.call(move |conn| read_chunks(conn, &job_id, None))
    }

    fn provider_batch_requests(&self, job_id: String, chunk: i64) -> StoreFuture<'_, Vec<Claimed>> {
        self.call(move |conn| {
            let op = "reading a provider batch";
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, id, body, attempt FROM requests
                     WHERE job_id = ?1 AND chunk = ?2 AND status = 'batched' ORDER BY seq",
                )
                .map_err(db(op))?;
            let rows = stmt
                .query_map(params![job_id, chunk], |r| {
                    Ok(Claimed {
                        job_id: job_id.clone(),
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        body: r.get(2)?,
                        attempt: r.get(3)?,
                    })
                })
                .map_err(db(op))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db(op));
            rows
        })
    }

    fn update_provider_batch(
        &self,
        job_id: String,
        chunk: i64,
        runner_id: String,
        update: ProviderBatchUpdate,
    ) -> StoreFuture<'_, bool> {
        self.call(move |c| {
            let at = now();
            let n = c
                .execute(
                    "UPDATE chunks SET state = ?4, batch_id = COALESCE(?5, batch_id),
                         file_id = COALESCE(?6, file_id),
                         remote_status = COALESCE(?7, remote_status),
                         intent_at = CASE WHEN ?4 = 'creating' THEN COALESCE(intent_at, ?8)
                                          ELSE intent_at END,
                         updated_at = ?8
                     WHERE job_id = ?1 AND chunk = ?2 AND owner = ?3 AND state != 'settled'",
                    params![
                        job_id,
                        chunk,
                        runner_id,
                        update.state.as_str(),
                        update.batch_id,
                        update.file_id,
                        update.remote_status,
                        at
                    ],
                )
                .map_err(db("updating a provider batch"))?;
            Ok(n == 1)
        })
    }

    fn settle_provider_batch(
        &self,
        job_id: String,
        chunk: i64,
        runner_id: String,
        settled: Vec<Settled>,
    ) -> StoreFuture<'_, u64> {
        self.call(move |conn| {
            let op = "settling a provider batch";
            let tx = immediate(conn, op)?;
            let mut steps = SqliteSettle {
                tx: &tx,
                job_id: &job_id,
                chunk,
                runner_id: &runner_id,
                at: now(),
            };
            let n = ledger::settle(&mut steps, &settled)
                .now_or_never()
                .expect("SQLite's steps never wait")?;
            tx.commit().map_err(db(op))?;
            Ok(n)
        })
    }
}

/// Settling a provider batch in SQLite (inside one IMMEDIATE transaction).
struct SqliteSettle<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    job_id: &'a str,
    chunk: i64,
    runner_id: &'a str,
    at: f64,
}

const SETTLING: &str = "settling a provider batch";

impl ledger::SettleSteps for SqliteSettle<'_> {
    async fn take_batch(&mut self) -> Result<bool, Error> {
        let n = self
            .tx
            .execute(
                "UPDATE chunks SET state = 'settled', updated_at = ?4
                 WHERE job_id = ?1 AND chunk = ?2 AND owner = ?3 AND state != 'settled'",
                params![self.job_id, self.chunk, self.runner_id, self.at],
            )
            .map_err(db(SETTLING))?;
        Ok(n > 0)
    }

    async fn job_cancelled(&mut self) -> Result<bool, Error> {
        Ok(status_of(self.tx, self.job_id)? == JobStatus::Cancelled)
    }

    async fn record(&mut self, seq: i64, o: &Completion) -> Result<bool, Error> {
        let status = if o.ok { "succeeded" } else { "failed" };
        let attempt: Option<i64> = self
            .tx
            .prepare_cached(
                "UPDATE requests SET status = ?4, chunk = NULL
                 WHERE job_id = ?1 AND seq = ?2 AND chunk = ?3 AND status = 'batched'
                 RETURNING attempt",
            )
            .and_then(|mut fence| {
                fence
                    .query_row(params![self.job_id, seq, self.chunk, status], |r| r.get(0))
                    .optional()
            })
            .map_err(db(SETTLING))?;
        let Some(attempt) = attempt else {
            return Ok(false);
        };
        self.tx
            .prepare_cached(INSERT_RESULT)
            .and_then(|mut insert| {
                insert.execute(params![
                    self.job_id,
                    seq,
                    attempt,
                    self.runner_id,
                    o.ok,
                    o.response,
                    o.error,
                    o.input_tokens as i64,
                    o.output_tokens as i64,
                    o.cost,
                    self.at
                ])
            })
            .map_err(db(SETTLING))?;
        Ok(true)
    }

    async fn hand_back(&mut self, cancelled: bool) -> Result<i64, Error> {
        let n = self
            .tx
            .execute(
                "UPDATE requests SET status = ?3, chunk = NULL
                 WHERE job_id = ?1 AND chunk = ?2 AND status = 'batched'",
                params![
                    self.job_id,
                    self.chunk,
                    if cancelled { "cancelled" } else { "pending" }
                ],
            )
            .map_err(db(SETTLING))?;
        Ok(n as i64)
    }

    async fn count(&mut self, t: &Tally, cancelled: i64) -> Result<(), Error> {
        bump_counters(self.tx, self.job_id, t, cancelled, self.at).map_err(db(SETTLING))?;
        Ok(())
    }
}

/// The insert of one outcome into `results`.
const INSERT_RESULT: &str = "INSERT INTO results (job_id, seq, attempt, runner, ok, response,
         error, input_tokens, output_tokens, cost, finished_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Add a tally (and `cancelled` requests) to a job's counters.
fn bump_counters(
    tx: &rusqlite::Transaction<'_>,
    job_id: &str,
    t: &Tally,
    cancelled: i64,
    at: f64,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE jobs SET succeeded = succeeded + ?2, failed = failed + ?3,
             cancelled = cancelled + ?4, input_tokens = input_tokens + ?5,
             output_tokens = output_tokens + ?6,
             cost = CASE WHEN ?7 IS NULL THEN cost ELSE COALESCE(cost, 0) + ?7 END,
             updated_at = ?8
         WHERE id = ?1",
    )?
    .execute(params![
        job_id,
        t.succeeded,
        t.failed,
        cancelled,
        t.input_tokens,
        t.output_tokens,
        t.cost,
        at
    ])
}

/// The job's provider batches (only those `owner` holds, when given), in order.
fn read_chunks(
    conn: &Connection,
    job_id: &str,
    owner: Option<&str>,
) -> Result<Vec<ProviderBatchRow>, Error> {
    let op = "reading provider batches";
    let mut stmt = conn
        .prepare_cached(
            "SELECT chunk, provider, state, batch_id, file_id, remote_status, requests, intent_at,
                 owner
             FROM chunks WHERE job_id = ?1 AND (?2 IS NULL OR (owner = ?2 AND state != 'settled'))
             ORDER BY chunk",
        )
        .map_err(db(op))?;
    let rows = stmt
        .query_map(params![job_id, owner], |r| {
            Ok(ProviderBatchRow {
                job_id: job_id.to_string(),
                number: r.get(0)?,
                provider: r.get(1)?,
                state: ProviderBatchState::parse(&r.get::<_, String>(2)?),
                batch_id: r.get(3)?,
                file_id: r.get(4)?,
                remote_status: r.get(5)?,
                requests: r.get::<_, i64>(6)? as u64,
                intent_at: r.get(7)?,
                owner: r.get(8)?,
            })
        })
        .map_err(db(op))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db(op));
    rows
}

impl SqliteStore {
    fn held(conn: &Connection, job_id: &str) -> Result<Vec<(String, u64)>, Error> {
        let mut stmt = conn
            .prepare(
                "SELECT runner, count(*) FROM requests WHERE job_id = ?1 AND status = 'running'
                 GROUP BY runner ORDER BY runner",
            )
            .map_err(db("counting claims"))?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(db("counting claims"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("counting claims"));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_store_migrates_with_its_outcomes_and_counters() {
        let dir = std::env::temp_dir().join(format!("ferrobatch-mig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v1.db");
        let _ = std::fs::remove_file(&path);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0].1).unwrap();
            c.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO jobs VALUES ('j', 'n', 'processing', '/e', NULL, NULL, NULL, 3, 1, 1);
                 INSERT INTO requests VALUES ('j', 0, 'a', '{}', 'succeeded', NULL, NULL, 1, '{\"x\":1}', NULL, 5, 7, 0.5, 2);
                 INSERT INTO requests VALUES ('j', 1, 'b', '{}', 'running', 'old', 9.0, 1, NULL, NULL, 0, 0, NULL, NULL);
                 INSERT INTO requests VALUES ('j', 2, 'c', '{}', 'failed', NULL, NULL, 2, NULL, '{\"m\":1}', 0, 0, NULL, 3);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(path.to_str().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
            let p = s.progress("j".into()).await.unwrap();
            assert_eq!(
                (p.total, p.pending, p.running, p.succeeded, p.failed),
                (3, 1, 0, 1, 1)
            );
            assert_eq!((p.input_tokens, p.output_tokens, p.cost), (5, 7, Some(0.5)));
            let r = s.results("j".into()).await.unwrap();
            assert_eq!(r[0].response.as_deref(), Some("{\"x\":1}"));
            assert_eq!(r[1].status, "pending");
            assert_eq!(r[2].error.as_deref(), Some("{\"m\":1}"));
            // The interrupted request is claimed again as its second attempt.
            s.register(RunnerInfo {
                id: "r".into(),
                host: "h".into(),
                pid: 1,
                lease: Duration::from_secs(10),
            })
            .await
            .unwrap();
            let c = s.claim("j".into(), "r".into(), 10).await.unwrap();
            assert_eq!((c.len(), c[0].seq, c[0].attempt), (1, 1, 2));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
